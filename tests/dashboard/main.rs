//! Browser tests: pages a person looks at, in a headless Chromium.
//!
//! [`browser::Browser`] is the harness: a chromedriver and a headless
//! Chromium of the test's own, killed with their whole process group when
//! it is dropped. The tests here prove the harness itself against a tiny
//! page server of their own: it reports what a page logs or throws to its
//! console (during its load too), its waits see text that a script sets
//! later and give up at their deadline, and its screenshots are PNGs of the
//! viewport's size. Few tests, each with one browser (a start is ~1 s).
//!
//! `page`: the dev server's dashboard itself, against a real worker.
//!
//! `cargo test --test dashboard`; needs Debian's `chromium` and
//! `chromium-driver` (or `CHROME_BIN` and `CHROMEDRIVER`).

mod browser;
#[path = "../common/mod.rs"]
mod common;
mod page;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use browser::{Browser, WINDOW};
use fantoccini::Locator;

/// The longest a condition that should come is waited for.
const DEADLINE: Duration = Duration::from_secs(10);

/// The harness's test pages, by path.
const PAGES: &[(&str, &str)] = &[
    (
        "/clean",
        r#"<!doctype html><link rel="icon" href="data:,"><title>clean</title>
<p id="greeting">hello</p>
<script>console.log("only information"); console.warn("only a warning");</script>"#,
    ),
    (
        "/boom",
        r#"<!doctype html><link rel="icon" href="data:,"><title>boom</title>
<script>console.error("boom");</script>
<p id="greeting">logged an error</p>"#,
    ),
    (
        "/kaboom",
        r#"<!doctype html><link rel="icon" href="data:,"><title>kaboom</title>
<p id="greeting">threw</p>
<script>throw new Error("kaboom");</script>"#,
    ),
    (
        "/broken",
        r#"<!doctype html><link rel="icon" href="data:,"><title>broken</title>
<img src="/missing.png" alt="missing">"#,
    ),
    (
        "/later",
        r#"<!doctype html><link rel="icon" href="data:,"><title>later</title>
<p id="status">loading</p>
<button id="go" onclick="document.getElementById('clicked').textContent = 'clicked'">go</button>
<p id="clicked"></p>
<script>
  // the test calls these when it has seen the page as loaded
  function readyIn(ms) {
    setTimeout(() => { document.getElementById("status").textContent = "ready"; }, ms);
  }
  function errorIn(ms) {
    setTimeout(() => { console.error("late error"); document.body.dataset.done = "yes"; }, ms);
  }
</script>"#,
    ),
];

/// A page server on an ephemeral loopback port: [`PAGES`], and 404s.
fn serve_pages() -> (SocketAddr, actix_web::dev::ServerHandle) {
    let server = HttpServer::new(|| {
        let mut app = App::new();
        for &(path, body) in PAGES {
            app = app.route(
                path,
                web::get().to(move || async move {
                    HttpResponse::Ok()
                        .content_type("text/html; charset=utf-8")
                        .body(body)
                }),
            );
        }
        app
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("a loopback port");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (addr, handle)
}

/// Waits until no live process is left in the process group `pgid` (its
/// processes may take a moment to die after SIGKILL; zombies waiting for
/// their reaper do not count), or panics at the deadline.
async fn wait_group_gone(pgid: i32) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let alive = live_members(pgid);
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the browser's processes outlived it: {alive:?}"
        );
        tokio::time::sleep(browser::POLL).await;
    }
}

/// The processes of group `pgid` that are not zombies: `(pid, name)`.
fn live_members(pgid: i32) -> Vec<(String, String)> {
    let mut alive = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (name) state ppid pgrp ...; the name may hold spaces
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            let name = head.split_once('(').map(|(_, n)| n).unwrap_or_default();
            alive.push((
                entry.file_name().to_string_lossy().into_owned(),
                name.into(),
            ));
        }
    }
    alive
}

/// The console: errors logged or thrown during a page's load are reported
/// (each once), so is a resource that failed to load; information and
/// warnings are not errors, a clean page has none, and an error logged
/// after the load is reported once it happened. Closing the browser leaves
/// no process of it behind.
#[actix_rt::test]
async fn console_errors_are_caught_during_and_after_load() {
    let (addr, server) = serve_pages();
    let browser = Browser::start().await;

    browser.goto(&format!("http://{addr}/clean")).await;
    let clean = browser.console_entries().await;
    assert!(
        clean.iter().all(|entry| entry.level != "SEVERE"),
        "a clean page has no console errors: {clean:?}"
    );
    assert!(
        clean
            .iter()
            .any(|entry| entry.message.contains("only information")),
        "the log is read at all: {clean:?}"
    );

    browser.goto(&format!("http://{addr}/boom")).await;
    let errors = browser.console_errors().await;
    assert!(
        errors.len() == 1 && errors[0].contains("boom"),
        "console.error during the load: {errors:?}"
    );
    assert_eq!(
        browser.console_errors().await,
        Vec::<String>::new(),
        "each error is reported once"
    );

    browser.goto(&format!("http://{addr}/kaboom")).await;
    let errors = browser.console_errors().await;
    assert!(
        errors.len() == 1 && errors[0].contains("Uncaught Error: kaboom"),
        "an uncaught exception during the load: {errors:?}"
    );

    browser.goto(&format!("http://{addr}/broken")).await;
    let errors = browser.console_errors().await;
    assert!(
        errors.len() == 1 && errors[0].contains("/missing.png") && errors[0].contains("404"),
        "a resource that failed to load: {errors:?}"
    );

    browser.goto(&format!("http://{addr}/later")).await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser
        .client()
        .execute("errorIn(100);", vec![])
        .await
        .expect("the page's script");
    browser
        .wait_for("body[data-done='yes']", DEADLINE)
        .await
        .expect("the page's late script runs");
    let errors = browser.console_errors().await;
    assert!(
        errors.len() == 1 && errors[0].contains("late error"),
        "an error logged after the load: {errors:?}"
    );

    let pgid = browser.process_group();
    assert!(!live_members(pgid).is_empty(), "the group is the browser's");
    browser.close().await;
    wait_group_gone(pgid).await;
    server.stop(false).await;
}

/// The waits see text that a script sets after the load (or a click
/// through the client) and give up at their deadline with what they saw;
/// screenshots are PNGs of the viewport's size, also after a resize.
/// Dropping the browser without closing it (as a failing test does) kills
/// all of its processes.
#[actix_rt::test]
async fn waits_and_screenshots() {
    let (addr, server) = serve_pages();
    let browser = Browser::start().await;
    browser.goto(&format!("http://{addr}/later")).await;

    let status = browser
        .wait_for("#status", DEADLINE)
        .await
        .expect("#status");
    assert_eq!(status.text().await.expect("its text"), "loading");
    let asked = Instant::now();
    browser
        .client()
        .execute("readyIn(200);", vec![])
        .await
        .expect("the page's script");
    let text = browser
        .wait_for_text("#status", "ready", DEADLINE)
        .await
        .expect("the script sets it");
    assert_eq!(text, "ready");
    assert!(
        asked.elapsed() >= Duration::from_millis(200),
        "it waited for the script"
    );
    let text = browser
        .wait_for_text_matching("#status", |t| t.starts_with("rea"), DEADLINE)
        .await
        .expect("it matches");
    assert_eq!(text, "ready");

    browser
        .client()
        .find(Locator::Css("#go"))
        .await
        .expect("the button")
        .click()
        .await
        .expect("a click");
    browser
        .wait_for_text("#clicked", "clicked", DEADLINE)
        .await
        .expect("the click is handled");

    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let never = browser
        .wait_for_text("#status", "never", timeout)
        .await
        .expect_err("that text never comes");
    let waited = started.elapsed();
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(2),
        "it gave up at its deadline: after {waited:?}"
    );
    assert_eq!(never.last_text.as_deref(), Some("ready"), "{never}");
    let missing = browser
        .wait_for_text("#missing", "anything", timeout)
        .await
        .expect_err("no such element");
    assert_eq!(missing.last_text, None, "{missing}");
    let started = Instant::now();
    browser
        .wait_for("#missing", timeout)
        .await
        .expect_err("no such element");
    assert!(started.elapsed() < timeout + Duration::from_secs(2));

    let png = browser.screenshot_png().await;
    assert_eq!(png_size(&png), WINDOW, "a PNG of the viewport");
    browser.set_viewport_size(800, 600).await;
    let png = browser.screenshot_png().await;
    assert_eq!(png_size(&png), (800, 600), "a PNG of the resized viewport");
    browser.set_window_size(700, 500).await;
    let (width, height) = png_size(&browser.screenshot_png().await);
    assert!(
        width == 700 && height < 500 && height > 300,
        "the window holds the viewport: {width}x{height}"
    );

    let pgid = browser.process_group();
    drop(browser);
    wait_group_gone(pgid).await;
    server.stop(false).await;
}

/// A PNG's width and height, from its IHDR chunk (which the format puts
/// first, right after the signature); panics if it is no PNG.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 1000, "a PNG of some size: {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "the PNG signature");
    assert_eq!(&png[12..16], b"IHDR", "the IHDR chunk first");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    (be(16), be(20))
}
