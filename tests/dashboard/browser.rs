//! A headless Chromium driven over WebDriver, for tests of pages a person
//! would look at.
//!
//! [`Browser::start`] runs Debian's `chromedriver` on a loopback port of
//! its choosing (`--port=0`, read back from its first lines: no race for a
//! port), waits until its `/status` says ready, and opens a session on a
//! headless Chromium with a fresh profile. The browser's console is
//! recorded (`goog:loggingPrefs`), so [`Browser::console_errors`] can fail a
//! test on any error a page logged or threw, during its load too.
//!
//! A page that names no icon gets Chromium's request for `/favicon.ico`,
//! and a 404 there is a console error too (source `network`), logged a
//! little after the load: pages under test declare their icon (e.g.
//! `<link rel="icon" href="data:,">`).
//!
//! Cleanup does not depend on the test passing: chromedriver leads a process
//! group of its own, and dropping the [`Browser`] (at the end of a test, or
//! while a failing one unwinds) kills that whole group, Chromium's processes
//! included, and removes the profile. [`Browser::close`] ends the session
//! politely first.
//!
//! Meant for `#[actix_rt::test]`s (the readiness probe uses awc, on the
//! test's actix runtime; fantoccini runs on its tokio runtime).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them); `CHROMEDRIVER` and `CHROME_BIN` name other binaries.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// The viewport a session starts with, in CSS pixels (and screenshot
/// pixels: the device scale factor is forced to 1).
pub const WINDOW: (u32, u32) = (1400, 1000);
/// How much larger a headless Chromium's window is than its viewport (in
/// Chromium 148: tabs and toolbar, though not shown, take 139 px).
const FRAME: (u32, u32) = (0, 139);
/// How long chromedriver may take to say it is ready.
const DRIVER_DEADLINE: Duration = Duration::from_secs(20);
/// How long opening the session (starting Chromium) may take, and a page's
/// load.
const SESSION_DEADLINE: Duration = Duration::from_secs(30);
/// How long the console log may take to catch up with the page.
const LOG_DEADLINE: Duration = Duration::from_secs(5);
/// How often the waits look again.
pub const POLL: Duration = Duration::from_millis(25);
/// At most this much of chromedriver's (and Chromium's) output is kept, for
/// the message of a failed start.
const OUTPUT_KEPT: usize = 64 * 1024;

/// A headless Chromium session under a chromedriver of its own.
pub struct Browser {
    client: Client,
    // Dropped in this order: the driver (its process group killed) before
    // the directory that it and its Chromium were writing.
    driver: Driver,
    _scratch: tempfile::TempDir,
}

/// One entry of the browser's console log, as chromedriver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleEntry {
    /// `SEVERE` (console.error, an uncaught exception, a failed load),
    /// `WARNING`, `INFO` or `DEBUG`.
    pub level: String,
    /// `console-api`, `javascript` (uncaught), `network`, ...
    pub source: String,
    /// Where it came from and what it said, e.g.
    /// `http://127.0.0.1:4321/ 5:16 "boom"`.
    pub message: String,
}

/// A wait that ran out of time: what was waited for and what was seen last.
#[derive(Debug)]
pub struct WaitTimeout {
    /// The CSS selector.
    pub selector: String,
    /// What the text should have been.
    pub wanted: String,
    /// The element's text at the last look; `None` if it was never found.
    pub last_text: Option<String>,
    /// The error of the last look, if it failed.
    pub last_error: Option<String>,
    /// How long it waited.
    pub timeout: Duration,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "waited {:?} for `{}` to show {}; ",
            self.timeout, self.selector, self.wanted
        )?;
        match (&self.last_text, &self.last_error) {
            (Some(text), _) => write!(f, "it last showed {text:?}"),
            (None, Some(error)) => write!(f, "never found it (last error: {error})"),
            (None, None) => write!(f, "never found it"),
        }
    }
}

impl std::error::Error for WaitTimeout {}

impl Browser {
    /// Starts chromedriver and opens a session on a headless Chromium, or
    /// panics saying what is missing or what went wrong.
    pub async fn start() -> Browser {
        let chromedriver = find_binary("CHROMEDRIVER", &["chromedriver", "/usr/bin/chromedriver"]);
        let chromium = find_binary("CHROME_BIN", &["/usr/bin/chromium", "chromium"]);
        let (Some(chromedriver), Some(chromium)) = (chromedriver, chromium) else {
            panic!(
                "the browser tests need Chromium and its chromedriver: \
                 `apt-get install chromium chromium-driver` (Debian's packages, \
                 what .ci/run installs), or set CHROMEDRIVER and CHROME_BIN \
                 to their paths"
            );
        };
        let started = Instant::now();
        // Chromium's profile, and the TMPDIR of chromedriver and Chromium
        // (their scoped dirs, shared memory files): removed with the Browser
        // however it ends, where SIGKILL would leave them in /tmp.
        let scratch = tempfile::tempdir().expect("a temporary directory");
        let profile = scratch.path().join("profile");
        let tmp = scratch.path().join("tmp");
        std::fs::create_dir(&tmp).expect("a TMPDIR for the browser");
        let (driver, port) = Driver::spawn(&chromedriver, &tmp).await;
        let base = format!("http://127.0.0.1:{port}");
        driver.wait_ready(&base, started + DRIVER_DEADLINE).await;

        let (width, height) = WINDOW;
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // as root (CI) Chromium refuses to start sandboxed
                    "--no-sandbox",
                    // /dev/shm is small in containers
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    // the viewport's size if the frame is what it is
                    // in Chromium 148; if not, set_viewport_size below
                    // corrects it
                    format!(
                        "--window-size={},{}",
                        width + FRAME.0,
                        height + FRAME.1
                    ),
                    "--force-device-scale-factor=1",
                    "--hide-scrollbars",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-extensions",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            // every console message, so console_errors can read them
            "goog:loggingPrefs": { "browser": "ALL" },
            // a page that never loads fails its goto in time (default 300 s)
            "timeouts": { "pageLoad": SESSION_DEADLINE.as_millis() as u64 },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(capabilities);
        let client = match tokio::time::timeout(SESSION_DEADLINE, builder.connect(&base)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!(
                "chromedriver could not start Chromium ({}): {e}\n{}",
                chromium.display(),
                driver.output()
            ),
            Err(_) => panic!(
                "Chromium did not start within {SESSION_DEADLINE:?}\n{}",
                driver.output()
            ),
        };
        let browser = Browser {
            client,
            driver,
            _scratch: scratch,
        };
        browser.set_viewport_size(width, height).await;
        browser
    }

    /// The WebDriver client, for everything else (clicks, forms, scripts).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// chromedriver's process id, which is also the id of the process group
    /// that Chromium's processes are in.
    pub fn process_group(&self) -> i32 {
        self.driver.pgid()
    }

    /// Opens `url` and waits for its load event, or panics.
    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            panic!("the browser could not open {url}: {e}");
        }
    }

    /// Waits up to `timeout` for an element matching the CSS `selector`.
    pub async fn wait_for(&self, selector: &str, timeout: Duration) -> Result<Element, CmdError> {
        self.client
            .wait()
            .at_most(timeout)
            .every(POLL)
            .for_element(Locator::Css(selector))
            .await
    }

    /// Waits up to `timeout` until the (first) element matching `selector`
    /// shows exactly the text `expected`; returns it.
    pub async fn wait_for_text(
        &self,
        selector: &str,
        expected: &str,
        timeout: Duration,
    ) -> Result<String, WaitTimeout> {
        self.wait_for_text_where(
            selector,
            &format!("{expected:?}"),
            |t| t == expected,
            timeout,
        )
        .await
    }

    /// Waits up to `timeout` until the (first) element matching `selector`
    /// shows a text that `matches`; returns that text. The element is looked
    /// up afresh at each look, so a page may replace it meanwhile.
    pub async fn wait_for_text_matching(
        &self,
        selector: &str,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, WaitTimeout> {
        self.wait_for_text_where(selector, "a text that matches", matches, timeout)
            .await
    }

    async fn wait_for_text_where(
        &self,
        selector: &str,
        wanted: &str,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, WaitTimeout> {
        let deadline = Instant::now() + timeout;
        let mut last_text = None;
        let mut last_error = None;
        loop {
            let text = match self.client.find(Locator::Css(selector)).await {
                Ok(element) => element.text().await,
                Err(e) => Err(e),
            };
            match text {
                Ok(text) if matches(&text) => return Ok(text),
                Ok(text) => last_text = Some(text),
                Err(e) => last_error = Some(e.to_string()),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitTimeout {
                    selector: selector.to_owned(),
                    wanted: wanted.to_owned(),
                    last_text,
                    last_error,
                    timeout,
                });
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }

    /// The console's entries since the last call of this or of
    /// [`console_errors`](Self::console_errors) (chromedriver hands each
    /// entry out once), of every level.
    ///
    /// chromedriver can answer before it has the page's last messages (a
    /// `goto` may return a few ms before the errors of that load reach it),
    /// so this first logs a marker of its own through the page and reads
    /// until the marker is there: the page's earlier messages precede it.
    pub async fn console_entries(&self) -> Vec<ConsoleEntry> {
        static MARKERS: AtomicU64 = AtomicU64::new(0);
        // (ends in a non-digit: marker 1 is not a part of marker 10)
        let marker = format!(
            "browser-harness-log-marker-{}-end",
            MARKERS.fetch_add(1, Ordering::Relaxed)
        );
        // without a document to log through (a dialog open, say), the log
        // is read as it is
        let marked = self
            .client
            .execute("console.debug(arguments[0]);", vec![json!(marker)])
            .await
            .is_ok();
        let deadline = Instant::now() + LOG_DEADLINE;
        let mut entries = Vec::new();
        loop {
            entries.extend(self.read_log().await);
            if !marked {
                return entries;
            }
            if let Some(at) = entries.iter().position(|e| e.message.contains(&marker)) {
                entries.remove(at);
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "the console log did not catch up within {LOG_DEADLINE:?}: {entries:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// What chromedriver has of the console log now.
    async fn read_log(&self) -> Vec<ConsoleEntry> {
        let entries = match self.client.issue_cmd(BrowserLog).await {
            Ok(entries) => entries,
            Err(e) => panic!("chromedriver's browser log: {e}"),
        };
        let Value::Array(entries) = entries else {
            panic!("chromedriver's browser log is not a list: {entries}");
        };
        let field = |entry: &Value, name: &str| {
            entry
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        entries
            .iter()
            .map(|entry| ConsoleEntry {
                level: field(entry, "level"),
                source: field(entry, "source"),
                message: field(entry, "message"),
            })
            .collect()
    }

    /// The console's errors since the last call of this or of
    /// [`console_entries`](Self::console_entries): `console.error`s,
    /// uncaught exceptions and failed loads (level `SEVERE`), as messages.
    pub async fn console_errors(&self) -> Vec<String> {
        self.console_entries()
            .await
            .into_iter()
            .filter(|entry| entry.level == "SEVERE")
            .map(|entry| entry.message)
            .collect()
    }

    /// A PNG of the viewport.
    pub async fn screenshot_png(&self) -> Vec<u8> {
        match self.client.screenshot().await {
            Ok(png) => png,
            Err(e) => panic!("the browser took no screenshot: {e}"),
        }
    }

    /// Resizes the window (outer size, in CSS pixels). The viewport is
    /// smaller: headless Chromium still counts a window's tabs and toolbar
    /// ([`FRAME`]); see [`set_viewport_size`](Self::set_viewport_size).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        if let Err(e) = self.client.set_window_size(width, height).await {
            panic!("the browser window was not resized to {width}x{height}: {e}");
        }
    }

    /// Resizes the window so that the viewport (what a page lays out in and
    /// a screenshot shows) is `width` x `height` CSS pixels. A started
    /// browser's is [`WINDOW`].
    pub async fn set_viewport_size(&self, width: u32, height: u32) {
        let sizes = self
            .client
            .execute(
                "return [window.innerWidth, window.innerHeight, \
                         window.outerWidth, window.outerHeight];",
                vec![],
            )
            .await;
        let sizes = sizes.ok().and_then(|sizes| {
            let size = |i: usize| -> Option<u32> { sizes.get(i)?.as_u64()?.try_into().ok() };
            Some([size(0)?, size(1)?, size(2)?, size(3)?])
        });
        let Some([inner_width, inner_height, outer_width, outer_height]) = sizes else {
            panic!("the browser did not tell its window's size");
        };
        // a resize takes a second or two: not when it is not needed
        if (inner_width, inner_height) != (width, height) {
            self.set_window_size(
                width + outer_width.saturating_sub(inner_width),
                height + outer_height.saturating_sub(inner_height),
            )
            .await;
        }
    }

    /// Ends the session (Chromium quits), then stops chromedriver.
    pub async fn close(self) {
        // the session's end is best effort: dropping kills whatever is left
        let _ = self.client.clone().close().await;
    }
}

/// chromedriver, leader of its own process group; dropping it kills the
/// group (Chromium's processes are in it) and reaps chromedriver.
struct Driver {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Driver {
    /// Spawns chromedriver on a port of its choosing, and returns it with
    /// that port once it has said it.
    async fn spawn(binary: &Path, tmp: &Path) -> (Driver, u16) {
        let mut command = Command::new(binary);
        command
            .arg("--port=0")
            .env("TMPDIR", tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // chromedriver gets SIGKILL if the thread that started it ends
        // without dropping the Driver (the test process killed outright).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => panic!(
                "{} did not start: {e} (install Debian's chromium-driver, or set CHROMEDRIVER)",
                binary.display()
            ),
        };
        let output = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let driver = Driver { child, output };

        // Both pipes are drained for as long as they are open (a full pipe
        // would stall chromedriver), into `output`; the port is read from
        // "ChromeDriver was started successfully on port N."
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let kept = driver.output.clone();
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .split_once("started successfully on port ")
                    .and_then(|(_, rest)| rest.trim_end_matches('.').trim().parse::<u16>().ok())
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port);
                }
                keep(&kept, &line);
            }
        });
        let kept = driver.output.clone();
        std::thread::spawn(move || {
            let mut stderr = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(stderr.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                keep(&kept, String::from_utf8_lossy(&line).trim_end());
                line.clear();
            }
            // drain anything without a final newline
            let _ = stderr.read_to_end(&mut line);
        });

        match tokio::time::timeout(DRIVER_DEADLINE, port_rx).await {
            Ok(Ok(port)) => (driver, port),
            Ok(Err(_)) => panic!(
                "{} exited without naming its port:\n{}",
                binary.display(),
                driver.output()
            ),
            Err(_) => panic!(
                "{} named no port within {DRIVER_DEADLINE:?}:\n{}",
                binary.display(),
                driver.output()
            ),
        }
    }

    /// Polls `GET /status` until it says ready, or panics at `deadline`.
    async fn wait_ready(&self, base: &str, deadline: Instant) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(1))
            .finish();
        loop {
            let last = match client.get(format!("{base}/status")).send().await {
                Ok(mut response) => match response.body().await {
                    Ok(body) => {
                        let status: Value = serde_json::from_slice(&body).unwrap_or_default();
                        if status["value"]["ready"] == json!(true) {
                            return;
                        }
                        String::from_utf8_lossy(&body).into_owned()
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                panic!(
                    "chromedriver at {base} was not ready in time (last: {last}):\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn pgid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What chromedriver (and Chromium) printed, for a failure's message.
    fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: a plain syscall. The group's id is chromedriver's pid,
        // which stays ours until it is reaped below, so no other group can
        // have it.
        unsafe {
            libc::kill(-self.pgid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Appends a line to the kept output, dropping its oldest part past
/// [`OUTPUT_KEPT`].
fn keep(output: &Mutex<String>, line: &str) {
    let Ok(mut output) = output.lock() else {
        return;
    };
    output.push_str(line);
    output.push('\n');
    if output.len() > OUTPUT_KEPT {
        let mut cut = output.len() - OUTPUT_KEPT;
        while !output.is_char_boundary(cut) {
            cut += 1;
        }
        output.drain(..cut);
    }
}

/// The binary named by the environment variable `var`, else the first of
/// `candidates` found: a path as it is, a bare name on the PATH. A variable
/// naming nothing executable is an error of its own.
fn find_binary(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(value) = std::env::var_os(var) {
        let path = PathBuf::from(value);
        assert!(
            is_executable(&path),
            "{var}={} is not an executable file",
            path.display()
        );
        return Some(path);
    }
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|dirs| std::env::split_paths(&dirs).collect())
        .unwrap_or_default();
    candidates.iter().find_map(|candidate| {
        if candidate.contains('/') {
            Some(PathBuf::from(candidate)).filter(|path| is_executable(path))
        } else {
            dirs.iter()
                .map(|dir| dir.join(candidate))
                .find(|path| is_executable(path))
        }
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// chromedriver's console log of the session (`POST /session/{id}/se/log`
/// with `{"type": "browser"}`): the entries since the last ask. Not in the
/// W3C spec, so not in fantoccini; chromedriver serves it in W3C mode.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}
