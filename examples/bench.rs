//! The end-to-end benchmark: the dev server and a worker in separate
//! processes over loopback, measured side by side with the floor of the
//! machine (a bare websocket echo) in the same run.
//!
//! ```text
//! cargo run --release --example bench                      # full run (~4 min on 2 cores)
//! cargo run --release --example bench -- --quick --json out.json   # under 2 min
//! ```
//!
//! It measures, in this order:
//! 1. **idle cost**: CPU used by the registered worker over 10 s, and its
//!    resident memory;
//! 2. **concurrency**: its memory with 1,000 then `--jobs` (10,000) jobs
//!    whose handler only awaits cancellation, and how long until all of them
//!    reported RUNNING; then they are terminated;
//! 3. **echo**: the round trip of an availability-sized binary frame through
//!    the dev server's `/dev/echo` websocket — the floor a worker's answer
//!    cannot beat;
//! 4. **availability and job start**: jobs dispatched one at a time; the dev
//!    server times, at the worker's socket, request written → answer read and
//!    assignment sent → RUNNING received (its `/dev/bench/jobs` endpoint);
//! 5. **throughput**: 0 ms jobs dispatched 64 at a time for 10 s, until every
//!    one has its final status;
//! 6. **reconnect**: the dev server drops the connection 20 times, 1.5 s
//!    apart, timing each until the worker has registered again.
//!
//! Memory is the resident set (`VmRSS`) of the worker's process and its
//! descendants; CPU is their on-CPU time (`/proc/<pid>/task/*/schedstat`).
//!
//! Flags: `--quick` (smaller counts, same 10,000 concurrent jobs), `--json
//! PATH`, `--jobs N`, `--only PHASES` (comma list of `idle`, `concurrency`,
//! `echo`, `availability`, `throughput`, `reconnect`), `--server-url URL`
//! (a running dev server; `--api-key`/`--api-secret`, default
//! devkey/secret), `--worker-command CMD` (run this worker instead of
//! lkagent's, through `sh -c`, with `LIVEKIT_URL`, `LIVEKIT_API_KEY`,
//! `LIVEKIT_API_SECRET`, `LIVEKIT_AGENT_NAME` and `BENCH_MAX_JOBS` in its
//! environment: `scripts/compare-official.sh` runs the official Python
//! worker this way). Its jobs must end at once unless their metadata is
//! `idle`, in which case they wait for their termination.
//! `--compare-command CMD` measures lkagent's worker and then CMD through
//! the same dev server, and prints both with their ratios (with `--json`,
//! `{"lkagent": …, "compared": …}`); `--requests N` sets the echo and
//! availability counts. `--help` lists them; a bad flag or value exits
//! with code 2, naming it.
//!
//! The bench re-runs its own executable for the two processes (`--role
//! devserver`, `--role worker`); each exits when its standard input closes,
//! so nothing outlives the bench.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_protocol::{AvailabilityRequest, Job, Room, ServerMessage, server_message};
use lkagent::{JobContext, JobError, JobHandler, Worker, WorkerOptions};
use prost::Message as _;
use serde_json::{Value, json};

/// The agent name the bench dispatches to.
const AGENT: &str = "bench";

const PHASES: [&str; 6] = [
    "idle",
    "concurrency",
    "echo",
    "availability",
    "throughput",
    "reconnect",
];

/// The end-to-end benchmark: a dev server and a worker in separate processes
///
/// Measures, in this order: idle cost (the registered worker's CPU over 10 s
/// and its memory); concurrency (its memory with 1,000 then --jobs jobs, and
/// how long until all of them reported RUNNING); echo (the round trip of an
/// availability-sized frame through the dev server: the floor); availability
/// and job start, timed at the worker's socket; throughput (0 ms jobs, 64 at
/// a time, for 10 s); reconnect (20 dropped connections, each timed until
/// the worker has registered again). A full run takes about 4 minutes on 2
/// cores; build it with --release.
#[derive(Parser)]
#[command(name = "bench", args_override_self = true)]
struct Args {
    /// Which process this is (the bench re-runs itself for the other two).
    #[arg(long, value_enum, default_value_t = Role::Bench, hide = true)]
    role: Role,
    /// Smaller counts (same concurrent jobs): under 2 minutes
    #[arg(long)]
    quick: bool,
    /// Also write the results to this JSON file
    #[arg(long, value_name = "PATH")]
    json: Option<String>,
    /// Concurrent jobs in the concurrency phase
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = positive)]
    jobs: usize,
    /// Run only these phases: idle, concurrency, echo, availability, throughput, reconnect [default: all]
    #[arg(long, value_name = "PHASES", value_delimiter = ',', value_parser = phase)]
    only: Vec<String>,
    /// Echo and availability requests [default: 10000, 2000 with --quick]
    #[arg(long, value_name = "N", value_parser = positive)]
    requests: Option<usize>,
    /// Measure against this running dev server instead of starting one
    #[arg(long, value_name = "URL", help_heading = "Server")]
    server_url: Option<String>,
    /// API key for the dev server and the worker
    #[arg(
        long,
        value_name = "KEY",
        default_value = "devkey",
        help_heading = "Server"
    )]
    api_key: String,
    /// API secret for the dev server and the worker
    #[arg(
        long,
        value_name = "SECRET",
        default_value = "secret",
        help_heading = "Server"
    )]
    api_secret: String,
    /// Run this worker instead of lkagent's, through `sh -c`
    ///
    /// Its environment holds LIVEKIT_URL, LIVEKIT_API_KEY,
    /// LIVEKIT_API_SECRET, LIVEKIT_AGENT_NAME and BENCH_MAX_JOBS. Its jobs
    /// must end at once unless their metadata is `idle`, in which case they
    /// wait for their termination (scripts/compare-official.sh runs the
    /// official Python worker this way).
    #[arg(long, value_name = "CMD", help_heading = "Other workers")]
    worker_command: Option<String>,
    /// Then measure this worker too, through the same dev server, and compare
    ///
    /// Run as --worker-command is; both rows are printed with their ratios,
    /// and --json writes {"lkagent": ..., "compared": ...}.
    #[arg(long, value_name = "CMD", help_heading = "Other workers")]
    compare_command: Option<String>,
    /// `--role worker`: the server to connect to.
    #[arg(long, value_name = "URL", hide = true)]
    url: Option<String>,
    /// `--role worker`: the most jobs at once.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = positive, hide = true)]
    max_jobs: usize,
}

/// Which process this is.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Role {
    /// The bench itself.
    Bench,
    /// The dev server it starts.
    #[value(name = "devserver")]
    DevServer,
    /// lkagent's worker it starts.
    Worker,
}

/// A count of at least 1.
fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// One of [`PHASES`].
fn phase(text: &str) -> Result<String, String> {
    let name = text.trim();
    if PHASES.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!("unknown phase; one of {}", PHASES.join(", ")))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log_default = if args.role == Role::Bench {
        "warn"
    } else {
        "error"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_default)),
        )
        .init();
    let system = actix::System::new();
    let outcome = match args.role {
        Role::DevServer => system.block_on(run_devserver()),
        Role::Worker => system.block_on(run_worker(&args)),
        Role::Bench => system.block_on(run_bench(&args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

/// Resolves when standard input closes: the bench that started this process
/// has ended (or died), so this one ends too.
fn parent_gone() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    rx
}

// ---------------------------------------------------------------------------
// The two processes the bench starts.

async fn run_devserver() -> Result<(), Error> {
    let server = lkagent_devserver::DevServer::start(lkagent_devserver::DevServerConfig {
        bind: "127.0.0.1:0".parse()?,
        // every job of a full run, so none is forgotten while it is awaited
        max_jobs: 200_000,
        ..Default::default()
    })
    .await?;
    println!("listening {}", server.http_url());
    let _ = parent_gone().await;
    server.stop().await;
    Ok(())
}

/// A job that ends at once, or, with the metadata `idle`, awaits its
/// termination: it costs only what lkagent itself costs.
struct BenchAgent;

impl JobHandler for BenchAgent {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        if ctx.metadata() == "idle" {
            ctx.cancelled().await;
        }
        Ok(())
    }
}

async fn run_worker(args: &Args) -> Result<(), Error> {
    let url = args.url.clone().ok_or("--role worker needs --url")?;
    let mut options = WorkerOptions::new(url, &args.api_key, &args.api_secret)
        .agent_name(AGENT)
        .max_jobs(args.max_jobs);
    // The reconnect phase drops the connection every 1.5 s; a registration
    // that lasted 1 s counts as stable, so each drop is timed as the drop of
    // a stable connection (the default needs 30 s: 20 drops would take 10
    // minutes, and every later one would back off further).
    options.reconnect.stable_after = Duration::from_secs(1);
    let worker = Worker::builder(options).handler(BenchAgent).start()?;
    let _ = parent_gone().await;
    worker.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// The bench itself.

/// A child process, killed when the bench ends.
struct Process {
    child: Child,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // the processes it started (a Python worker's job processes) are
        // stopped with it
        let tree = process_tree(self.pid());
        let exited = |child: &mut Child, within: Duration| {
            let deadline = Instant::now() + within;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        };
        // closing stdin asks the bench's own roles to stop; SIGTERM asks any
        // other worker to drain; SIGKILL makes sure
        drop(self.child.stdin.take());
        if !exited(&mut self.child, Duration::from_secs(2)) {
            signal(self.pid(), libc::SIGTERM);
            exited(&mut self.child, Duration::from_secs(10));
        }
        for pid in tree {
            signal(pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) takes any pid and signal; at worst it fails
        unsafe { libc::kill(pid, signal) };
    }
}

fn start_devserver() -> Result<(Process, String), Error> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--role", "devserver"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let process = Process { child };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("listening ")
        .ok_or_else(|| format!("the dev server did not start: {line:?}"))?
        .to_owned();
    Ok((process, url))
}

fn start_worker(
    args: &Args,
    worker_command: Option<&str>,
    ws_url: &str,
    max_jobs: usize,
) -> Result<Process, Error> {
    let mut command = match worker_command {
        Some(shell) => {
            let mut command = Command::new("sh");
            command.args(["-c", shell]);
            command
        }
        None => {
            let mut command = Command::new(std::env::current_exe()?);
            command.args(["--role", "worker", "--url", ws_url]);
            command.args(["--max-jobs", &max_jobs.to_string()]);
            command.args(["--api-key", &args.api_key, "--api-secret", &args.api_secret]);
            command
        }
    };
    let child = command
        .env("LIVEKIT_URL", ws_url)
        .env("LIVEKIT_API_KEY", &args.api_key)
        .env("LIVEKIT_API_SECRET", &args.api_secret)
        .env("LIVEKIT_AGENT_NAME", AGENT)
        .env("BENCH_MAX_JOBS", max_jobs.to_string())
        .stdin(Stdio::piped())
        .spawn()?;
    Ok(Process { child })
}

/// The dev server's bench endpoints, with an admin token.
struct Api {
    client: awc::Client,
    http_url: String,
    token: String,
}

impl Api {
    fn new(http_url: &str, key: &str, secret: &str) -> Result<Self, Error> {
        let token = AccessToken::with_api_key(key, secret)
            .with_ttl(Duration::from_secs(6 * 3600))
            .with_grants(VideoGrants {
                room_admin: true,
                ..Default::default()
            })
            .to_jwt()?;
        Ok(Self {
            client: awc::Client::builder()
                // a pooled connection is let go well before the server's
                // keep-alive (5 s) closes it under a request
                .connector(awc::Connector::new().conn_keep_alive(Duration::from_secs(1)))
                .timeout(Duration::from_secs(600))
                .finish(),
            http_url: http_url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, Error> {
        let mut response = self
            .client
            .post(format!("{}{path}", self.http_url))
            .bearer_auth(&self.token)
            .send_json(&body)
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let value: Value = response.json().limit(1 << 20).await?;
        if !response.status().is_success() {
            return Err(format!("POST {path}: {} {value}", response.status()).into());
        }
        Ok(value)
    }

    /// The bench agent's connected workers, as the dev server knows them.
    async fn bench_workers(&self) -> Result<Vec<Value>, Error> {
        let mut response = self
            .client
            .get(format!("{}/dev/bench/workers", self.http_url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("GET /dev/bench/workers: {e}"))?;
        let list: Vec<Value> = response.json().limit(1 << 20).await?;
        Ok(list
            .into_iter()
            .filter(|w| w["connected"] == true && w["agent_name"] == AGENT)
            .collect())
    }

    async fn connected_workers(&self) -> Result<usize, Error> {
        Ok(self.bench_workers().await?.len())
    }

    /// Waits until the connected bench workers report no jobs (their
    /// `update_worker` job count): what was terminated has ended in the
    /// worker, not only on the server.
    async fn wait_no_jobs(&self, deadline: Duration) -> Result<(), Error> {
        let until = Instant::now() + deadline;
        loop {
            let workers = self.bench_workers().await?;
            if workers.iter().all(|w| w["job_count"] == 0) {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("the worker still reports jobs after {deadline:?}").into());
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The processes of a tree: `pid` and its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut index = 0;
    while index < all.len() {
        let parent = all[index];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) {
            for task in tasks.flatten() {
                let children = std::fs::read_to_string(task.path().join("children"));
                for child in children.unwrap_or_default().split_whitespace() {
                    if let Ok(child) = child.parse() {
                        all.push(child);
                    }
                }
            }
        }
        index += 1;
    }
    all
}

/// A `kB` field of a `/proc` file, summed over the tree.
fn proc_kb(pid: u32, file: &str, field: &str) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/{file}")).ok())
        .filter_map(|text| {
            text.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// Resident memory of the tree, in MB.
fn rss_mb(pid: u32) -> f64 {
    proc_kb(pid, "status", "VmRSS:") as f64 / 1024.0
}

/// Proportional memory of the tree (shared pages split), in MB.
fn pss_mb(pid: u32) -> f64 {
    proc_kb(pid, "smaps_rollup", "Pss:") as f64 / 1024.0
}

/// Nanoseconds on a CPU, every thread of the tree.
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for p in process_tree(pid) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// p50/p99/max/n of a sample set.
fn percentiles(mut samples: Vec<u64>) -> (u64, u64, u64, usize) {
    samples.sort_unstable();
    if samples.is_empty() {
        return (0, 0, 0, 0);
    }
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1], samples.len())
}

/// A frame the size of the dev server's availability requests: the floor
/// is measured on what the worker really receives.
fn availability_sized_frame() -> Vec<u8> {
    #[allow(deprecated)] // the server still fills `namespace`
    let job = Job {
        id: "AJ_aBcDeFgHiJkL".into(),
        dispatch_id: "AD_aBcDeFgHiJkL".into(),
        r#type: 0,
        room: Some(Room {
            sid: "RM_aBcDeFgHiJkL".into(),
            name: "bench-10000".into(),
            ..Default::default()
        }),
        agent_name: AGENT.into(),
        ..Default::default()
    };
    ServerMessage {
        message: Some(server_message::Message::Availability(AvailabilityRequest {
            job: Some(job),
            resuming: false,
        })),
    }
    .encode_to_vec()
}

async fn echo_round_trips(ws_url: &str, count: usize) -> Result<Vec<u64>, Error> {
    let (_, mut socket) = awc::Client::new()
        .ws(format!("{ws_url}/dev/echo"))
        .connect()
        .await
        .map_err(|e| format!("echo: {e}"))?;
    let frame = bytes::Bytes::from(availability_sized_frame());
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + 200 {
        let start = Instant::now();
        socket.send(awc::ws::Message::Binary(frame.clone())).await?;
        loop {
            match socket.next().await {
                Some(Ok(awc::ws::Frame::Binary(_))) => break,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("echo: {e}").into()),
                None => return Err("echo: the socket closed".into()),
            }
        }
        // the first 200 warm the path up
        if i >= 200 {
            samples.push(start.elapsed().as_micros() as u64);
        }
    }
    let _ = socket.send(awc::ws::Message::Close(None)).await;
    Ok(samples)
}

/// What a run measured; `None` where a phase did not run.
#[derive(Default)]
struct Results {
    echo_us: Option<(u64, u64)>,
    availability_us: Option<(u64, u64, u64, usize)>,
    job_start_us: Option<(u64, u64)>,
    throughput: Option<(f64, usize, f64)>,
    rss_idle_mb: Option<f64>,
    pss_idle_mb: Option<f64>,
    idle_cpu_percent: Option<f64>,
    concurrency: Option<Concurrency>,
    reconnect_ms: Option<(f64, f64, usize)>,
}

struct Concurrency {
    jobs: usize,
    rss_1k_mb: Option<f64>,
    rss_mb: f64,
    pss_mb: f64,
    kb_per_job: f64,
    /// Per job, by proportional set size: what a process-per-job worker's
    /// shared pages (counted once per process in RSS) really cost.
    pss_kb_per_job: f64,
    accept_all_s: f64,
    terminate_all_s: f64,
}

fn summary_of(value: &Value) -> (u64, u64, u64, usize) {
    let n = |k: &str| value[k].as_u64().unwrap_or(0);
    (n("p50"), n("p99"), n("max"), n("n") as usize)
}

async fn run_bench(args: &Args) -> Result<(), Error> {
    let (_server, http_url) = match &args.server_url {
        Some(url) => (None, url.replacen("ws", "http", 1)),
        None => {
            let (process, url) = start_devserver()?;
            (Some(process), url)
        }
    };
    let ws_url = http_url.replacen("http", "ws", 1);
    let api = Api::new(&http_url, &args.api_key, &args.api_secret)?;
    let lkagent = measure(args, &api, &ws_url, args.worker_command.as_deref()).await?;
    let lkagent_name = args.worker_command.as_deref().unwrap_or("lkagent");
    print_table(args, lkagent_name, &lkagent);
    let Some(other) = &args.compare_command else {
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&to_json(&lkagent))?)?;
            eprintln!("wrote {path}");
        }
        return Ok(());
    };
    let official = measure(args, &api, &ws_url, Some(other)).await?;
    print_table(args, other, &official);
    print_comparison(&lkagent, &official);
    if let Some(path) = &args.json {
        let both = json!({"lkagent": to_json(&lkagent), "compared": to_json(&official),
                          "compared_command": other});
        std::fs::write(path, serde_json::to_string_pretty(&both)?)?;
        eprintln!("wrote {path}");
    }
    Ok(())
}

/// Starts a worker (lkagent's, or `worker_command`), runs the phases
/// against it, stops it and waits until the dev server has seen it go.
async fn measure(
    args: &Args,
    api: &Api,
    ws_url: &str,
    worker_command: Option<&str>,
) -> Result<Results, Error> {
    let max_jobs = args.jobs + 200;
    let worker = start_worker(args, worker_command, ws_url, max_jobs)?;
    let results = phases(args, api, ws_url, &worker).await;
    // stopping it waits (up to seconds) for the process: off the runtime's
    // thread, which the bench's own HTTP client needs meanwhile
    let _ = actix_rt::task::spawn_blocking(move || drop(worker)).await;
    let started = Instant::now();
    while api.connected_workers().await? > 0 {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the stopped worker is still connected after 30 s".into());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    results
}

async fn phases(args: &Args, api: &Api, ws_url: &str, worker: &Process) -> Result<Results, Error> {
    let pid = worker.pid();
    let started = Instant::now();
    while api.connected_workers().await? == 0 {
        if started.elapsed() > Duration::from_secs(120) {
            return Err("the worker did not register within 2 minutes".into());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "worker (pid {pid}) registered after {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let run = |phase: &str| args.only.is_empty() || args.only.iter().any(|p| p == phase);
    let (mut echo_count, mut dispatch_count, throughput_ms, drops) = if args.quick {
        (2_000, 2_000, 3_000, 20)
    } else {
        (10_000, 10_000, 10_000, 30)
    };
    if let Some(requests) = args.requests {
        (echo_count, dispatch_count) = (requests, requests);
    }
    let mut results = Results::default();

    // start-up work (threads, first samples) is not idle cost
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    results.rss_idle_mb = Some(rss_mb(pid));
    results.pss_idle_mb = Some(pss_mb(pid));
    if run("idle") {
        eprintln!("idle: 10 s");
        let (cpu0, t0) = (cpu_ns(pid), Instant::now());
        actix_rt::time::sleep(Duration::from_secs(10)).await;
        let used = (cpu_ns(pid) - cpu0) as f64 / t0.elapsed().as_nanos() as f64;
        results.idle_cpu_percent = Some(used * 100.0);
    }

    if run("concurrency") {
        let rss_idle = rss_mb(pid);
        results.rss_idle_mb = Some(rss_idle);
        let pss_idle = pss_mb(pid);
        results.pss_idle_mb = Some(pss_idle);
        let idle_processes = process_tree(pid).len();
        let first = args.jobs.min(1_000);
        let mut accept_s = 0.0;
        let mut rss_1k_mb = None;
        for (count, is_first) in [(first, true), (args.jobs - first, false)] {
            if count == 0 {
                continue;
            }
            eprintln!("concurrency: {count} more idle jobs");
            // A worker may decline while busy starting jobs (the official
            // one takes at most its idle processes' worth of offers at
            // once); what it declined is offered again, as a fleet would.
            let round = Instant::now();
            let mut placed = 0;
            let mut empty_rounds = 0;
            while placed < count {
                let answer = api
                    .post(
                        "/dev/bench/jobs",
                        json!({"agent_name": AGENT, "count": count - placed, "concurrency": 64,
                               "metadata": "idle", "wait_running": true}),
                    )
                    .await?;
                let dispatched = answer["dispatched"].as_u64().unwrap_or(0) as usize;
                placed += dispatched;
                if dispatched == 0 {
                    empty_rounds += 1;
                    if empty_rounds > 100 {
                        return Err(
                            format!("concurrency: {placed} of {count} placed: {answer}").into()
                        );
                    }
                    actix_rt::time::sleep(Duration::from_millis(100)).await;
                }
            }
            accept_s += round.elapsed().as_secs_f64();
            // the jobs' first checkpoint flushes and timers settle
            actix_rt::time::sleep(Duration::from_secs(1)).await;
            if is_first && args.jobs > first {
                rss_1k_mb = Some(rss_mb(pid));
            }
        }
        let rss = rss_mb(pid);
        let pss = pss_mb(pid);
        eprintln!("concurrency: terminating");
        let started = Instant::now();
        let answer = api
            .post("/dev/bench/terminate", json!({"agent_name": AGENT}))
            .await?;
        let terminated = answer["terminated"].as_u64().unwrap_or(0);
        if terminated != args.jobs as u64 {
            return Err(
                format!("concurrency: {terminated} of {} jobs terminated", args.jobs).into(),
            );
        }
        // the next phases time a quiet worker: no jobs reported, and no
        // more processes than when idle (a process-per-job worker's job
        // processes have exited)
        api.wait_no_jobs(Duration::from_secs(120)).await?;
        let until = Instant::now() + Duration::from_secs(120);
        while process_tree(pid).len() > idle_processes && Instant::now() < until {
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        let terminate_all_s = started.elapsed().as_secs_f64();
        results.concurrency = Some(Concurrency {
            jobs: args.jobs,
            rss_1k_mb,
            rss_mb: rss,
            pss_mb: pss,
            kb_per_job: (rss - rss_idle) * 1024.0 / args.jobs as f64,
            pss_kb_per_job: (pss - pss_idle) * 1024.0 / args.jobs as f64,
            accept_all_s: accept_s,
            terminate_all_s,
        });
    }

    if run("echo") {
        eprintln!("echo: {echo_count} round trips");
        let (p50, p99, _, _) = percentiles(echo_round_trips(ws_url, echo_count).await?);
        results.echo_us = Some((p50, p99));
    }

    if run("availability") {
        eprintln!("availability: {dispatch_count} jobs, one at a time");
        let answer = api
            .post(
                "/dev/bench/jobs",
                json!({"agent_name": AGENT, "count": dispatch_count, "concurrency": 1,
                       "metadata": "", "wait_final": true}),
            )
            .await?;
        results.availability_us = Some(summary_of(&answer["availability_us"]));
        let (p50, p99, _, _) = summary_of(&answer["job_start_us"]);
        results.job_start_us = Some((p50, p99));
    }

    if run("throughput") {
        eprintln!("throughput: {} s", throughput_ms / 1000);
        let answer = api
            .post(
                "/dev/bench/jobs",
                json!({"agent_name": AGENT, "duration_ms": throughput_ms, "concurrency": 64,
                       "metadata": "", "wait_final": true}),
            )
            .await?;
        let jobs = answer["dispatched"].as_u64().unwrap_or(0) as usize;
        let seconds = answer["done_ms"].as_f64().unwrap_or(f64::MAX) / 1e3;
        results.throughput = Some((jobs as f64 / seconds, jobs, seconds));
    }

    if run("reconnect") {
        eprintln!("reconnect: {drops} drops");
        let answer = api
            .post(
                "/dev/bench/reconnects",
                json!({"agent_name": AGENT, "drops": drops, "interval_ms": 1500}),
            )
            .await?;
        let (p50, p99, _, n) = summary_of(&answer["reconnect_us"]);
        results.reconnect_ms = Some((p50 as f64 / 1e3, p99 as f64 / 1e3, n));
    }

    Ok(results)
}

fn to_json(r: &Results) -> Value {
    let echo_p50 = r.echo_us.map(|e| e.0);
    json!({
        "echo_rtt_us": r.echo_us.map(|(p50, p99)| json!({"p50": p50, "p99": p99})),
        "availability_us": r.availability_us.map(|(p50, p99, max, n)| {
            json!({"p50": p50, "p99": p99, "max": max, "n": n})
        }),
        "availability_vs_echo_p50": match (r.availability_us, echo_p50) {
            (Some(a), Some(e)) if e > 0 => Some(a.0 as f64 / e as f64),
            _ => None,
        },
        "job_start_us": r.job_start_us.map(|(p50, p99)| json!({"p50": p50, "p99": p99})),
        "throughput_jobs_per_s": r.throughput.map(|t| t.0),
        "concurrency": r.concurrency.as_ref().map(|c| json!({
            "jobs": c.jobs,
            "rss_idle_mb": r.rss_idle_mb,
            "rss_mb": c.rss_mb,
            "kb_per_job": c.kb_per_job,
            "accept_all_s": c.accept_all_s,
        })),
        "reconnect_ms": r.reconnect_ms.map(|(p50, p99, n)| json!({"p50": p50, "p99": p99, "n": n})),
        "idle_cpu_percent": r.idle_cpu_percent,
    })
}

/// lkagent's figures beside the compared worker's, with the ratio (the
/// compared worker's figure over lkagent's: above 1, lkagent is ahead).
fn print_comparison(lk: &Results, other: &Results) {
    println!(
        "\n{:<28} {:>14} {:>14} {:>8}",
        "side by side", "lkagent", "compared", "ratio"
    );
    type Measure = fn(&Results) -> Option<f64>;
    let rows: [(&str, &str, Measure); 11] = [
        ("availability p50", "µs", |r| {
            r.availability_us.map(|a| a.0 as f64)
        }),
        ("availability p99", "µs", |r| {
            r.availability_us.map(|a| a.1 as f64)
        }),
        ("job start p50", "µs", |r| {
            r.job_start_us.map(|a| a.0 as f64)
        }),
        ("job start p99", "µs", |r| {
            r.job_start_us.map(|a| a.1 as f64)
        }),
        ("memory idle (RSS)", "MB", |r| r.rss_idle_mb),
        ("memory idle (PSS)", "MB", |r| r.pss_idle_mb),
        ("memory with the jobs (RSS)", "MB", |r| {
            r.concurrency.as_ref().map(|c| c.rss_mb)
        }),
        ("memory with the jobs (PSS)", "MB", |r| {
            r.concurrency.as_ref().map(|c| c.pss_mb)
        }),
        ("memory per job (RSS)", "KB", |r| {
            r.concurrency.as_ref().map(|c| c.kb_per_job)
        }),
        ("memory per job (PSS)", "KB", |r| {
            r.concurrency.as_ref().map(|c| c.pss_kb_per_job)
        }),
        ("time to run them all", "s", |r| {
            r.concurrency.as_ref().map(|c| c.accept_all_s)
        }),
    ];
    for (name, unit, measure) in rows {
        if let (Some(a), Some(b)) = (measure(lk), measure(other)) {
            let ratio = if a > 0.0 { b / a } else { f64::NAN };
            println!(
                "{name:<28} {:>14} {:>14} {ratio:>7.1}×",
                format!("{a:.1} {unit}"),
                format!("{b:.1} {unit}")
            );
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn print_table(args: &Args, worker: &str, r: &Results) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nbench{} — worker: {worker}; {cores} cores",
        if args.quick { " --quick" } else { "" }
    );
    println!("{:<24} {:<44} target", "measure", "result");
    let row = |name: &str, result: String, target: String| {
        println!("{name:<24} {result:<44} {target}");
    };
    if let Some((p50, p99)) = r.echo_us {
        row(
            "echo (the floor)",
            format!("p50 {p50} µs, p99 {p99} µs"),
            String::new(),
        );
    }
    if let Some((p50, p99, max, n)) = r.availability_us {
        let target = match r.echo_us {
            Some((e, _)) if e > 0 => {
                let ratio = p50 as f64 / e as f64;
                format!("p50 ≤ 2× echo: {ratio:.2}× {}", verdict(ratio <= 2.0))
            }
            _ => "p50 ≤ 2× echo".into(),
        };
        row(
            "availability answer",
            format!("p50 {p50} µs, p99 {p99} µs, max {max} µs (n {n})"),
            target,
        );
    }
    if let Some((p50, p99)) = r.job_start_us {
        row(
            "job start",
            format!("p50 {p50} µs, p99 {p99} µs"),
            format!("p99 < 1 ms: {}", verdict(p99 < 1_000)),
        );
    }
    if let Some((rate, jobs, seconds)) = r.throughput {
        row(
            "throughput",
            format!("{rate:.0} jobs/s ({jobs} in {seconds:.1} s)"),
            format!("≥ 5,000/s: {}", verdict(rate >= 5_000.0)),
        );
    }
    if let Some(rss) = r.rss_idle_mb {
        row(
            "memory, idle",
            format!(
                "{rss:.1} MB RSS ({:.1} MB PSS)",
                r.pss_idle_mb.unwrap_or(0.0)
            ),
            String::new(),
        );
    }
    if let Some(c) = &r.concurrency {
        if let Some(rss) = c.rss_1k_mb {
            row(
                "memory, 1,000 jobs",
                format!("{rss:.1} MB RSS"),
                String::new(),
            );
        }
        row(
            &format!("memory, {} jobs", c.jobs),
            format!("{:.1} MB RSS ({:.1} MB PSS)", c.rss_mb, c.pss_mb),
            String::new(),
        );
        row(
            "memory per job",
            format!(
                "{:.1} KB RSS ({:.1} KB PSS)",
                c.kb_per_job, c.pss_kb_per_job
            ),
            format!("< 16 KB: {}", verdict(c.kb_per_job < 16.0)),
        );
        row(
            &format!("{} jobs RUNNING", c.jobs),
            format!(
                "{:.2} s (all terminated in {:.2} s)",
                c.accept_all_s, c.terminate_all_s
            ),
            String::new(),
        );
    }
    if let Some((p50, p99, n)) = r.reconnect_ms {
        row(
            "reconnect",
            format!("p50 {p50:.1} ms, p99 {p99:.1} ms (n {n})"),
            format!("p50 < 300 ms: {}", verdict(p50 < 300.0)),
        );
    }
    if let Some(cpu) = r.idle_cpu_percent {
        row(
            "idle CPU (10 s)",
            format!("{cpu:.3} % of a core"),
            format!("< 0.5 %: {}", verdict(cpu < 0.5)),
        );
    }
}
