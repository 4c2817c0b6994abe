//! The chaos soak: a worker runs many short jobs through a dev server in
//! fault mode, which drops its connection, terminates its jobs and repeats
//! availability requests and assignments at random moments drawn from a
//! seed, and restarts every job that fails.
//!
//! The dev server runs in this process; the worker runs in a child process
//! of its own (this program again, with `--worker`), so that the memory
//! measured is the worker's alone. At the end the soak checks, from the
//! server's ledger ([`FaultReport`]) and the worker's own count:
//! - every job the server assigned ended on the server, and each one the
//!   worker acknowledged got exactly one terminal status from it;
//! - no job ran twice at once in the worker;
//! - no final status was lost to the worker's bounded outbox;
//! - the worker's resident memory after the run is within
//!   [`SoakConfig::max_growth`] of its memory after the warm-up.
//!
//! A failing run prints its seed; `--seed` replays the same fault schedule.
//! `--help` lists the flags.
//!
//! ```text
//! cargo run --release --example soak                         # 100,000 jobs
//! cargo run --release --example soak -- --jobs 5000 --seed 42
//! RUST_LOG=warn cargo run --release --example soak           # see each fault
//! ```
//!
//! `tests/soak.rs` runs this very code at CI size ([`SoakConfig::ci`]).

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use lkagent::{
    Backoff, GetState, JobContext, JobError, JobHandler, ReconnectPolicy, Worker, WorkerOptions,
};
use lkagent_devserver::{
    DevServer, DevServerConfig, DispatchRequest, FaultConfig, FaultReport, JobInfo, JobStatus,
    WorkerStatus,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The agent name the soak's worker registers.
const AGENT: &str = "soak";
/// Environment of the worker process: the server's URL, key and secret (the
/// secret in the environment, not on the command line).
const URL_ENV: &str = "LKAGENT_SOAK_URL";
const KEY_ENV: &str = "LKAGENT_SOAK_KEY";
const SECRET_ENV: &str = "LKAGENT_SOAK_SECRET";
/// Environment of the worker process: its `max_jobs`.
const MAX_JOBS_ENV: &str = "LKAGENT_SOAK_MAX_JOBS";
/// Marks the worker's lines on its stdout (a test harness may print before
/// them on the same line).
const MARK: &str = "SOAK ";
/// The most times one job is dispatched again after finding no worker.
const MAX_REDISPATCH: u32 = 10_000;
/// The longest any one wait of the soak may last: a stall fails loudly.
const STALL: Duration = Duration::from_secs(120);

/// The size and the faults of a soak.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Jobs to run, the warm-up included.
    pub jobs: usize,
    /// Jobs run before the first memory reading.
    pub warmup: usize,
    /// Dispatches in flight at once (each waits for its job to end).
    pub concurrency: usize,
    /// The worker's `max_jobs`.
    pub max_jobs: usize,
    /// Seeds the fault schedule and the jobs' plans.
    pub seed: u64,
    /// Mean time between faults at random moments.
    pub fault_interval: Duration,
    /// Chance that an availability request or assignment is sent twice.
    pub duplicate_chance: f64,
    /// Chance that a job's handler fails (and the server restarts it).
    pub fail_chance: f64,
    /// The longest a job runs (each runs 1 ms to this, from the seed).
    pub max_job_ms: u64,
    /// How much the worker's resident memory may grow from the warm-up to
    /// the end.
    pub max_growth: u64,
}

impl SoakConfig {
    /// The full soak: 100,000 jobs.
    pub fn full(seed: u64) -> Self {
        Self {
            jobs: 100_000,
            warmup: 10_000,
            concurrency: 32,
            max_jobs: 64,
            seed,
            fault_interval: Duration::from_millis(250),
            duplicate_chance: 0.02,
            fail_chance: 0.02,
            max_job_ms: 10,
            max_growth: 4 << 20,
        }
    }

    /// The size CI runs: 5,000 jobs.
    pub fn ci(seed: u64) -> Self {
        Self {
            jobs: 5_000,
            warmup: 1_000,
            ..Self::full(seed)
        }
    }
}

/// What a soak saw.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// The settings it ran with.
    pub config: SoakConfig,
    /// The server's ledger and fault counts.
    pub faults: FaultReport,
    /// Dispatches that found no worker (while it was away or full) and were
    /// made again.
    pub redispatched: u64,
    /// The worker's handler runs, restarts included.
    pub handler_runs: u64,
    /// Times a job's handler started while the same job ran.
    pub overlaps: u64,
    /// Final statuses the worker lost to its outbox bound.
    pub lost_statuses: u64,
    /// The worker's registrations (1 + reconnects).
    pub registrations: u64,
    /// The worker's resident memory after the warm-up, in bytes.
    pub rss_warm: u64,
    /// The worker's resident memory after the run, in bytes.
    pub rss_end: u64,
    /// How long the run took.
    pub elapsed: Duration,
}

impl SoakReport {
    /// What went wrong; empty for a sound run.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let f = &self.faults;
        if f.unended_count > 0 {
            problems.push(format!(
                "{} assigned jobs never ended on the server, e.g. {:?}",
                f.unended_count, f.unended
            ));
        }
        if f.repeated_finals_count > 0 {
            problems.push(format!(
                "{} jobs got more than one terminal status, e.g. {:?}",
                f.repeated_finals_count, f.repeated_finals
            ));
        }
        if f.missing_finals_count > 0 {
            problems.push(format!(
                "{} acknowledged jobs got no terminal status, e.g. {:?}",
                f.missing_finals_count, f.missing_finals
            ));
        }
        if self.overlaps > 0 {
            problems.push(format!("{} times a job ran twice at once", self.overlaps));
        }
        if self.lost_statuses > 0 {
            problems.push(format!(
                "{} final statuses lost to the outbox bound",
                self.lost_statuses
            ));
        }
        let growth = self.rss_end.saturating_sub(self.rss_warm);
        if growth > self.config.max_growth {
            problems.push(format!(
                "the worker's memory grew by {} KiB after the warm-up (at most {} KiB)",
                growth >> 10,
                self.config.max_growth >> 10
            ));
        }
        problems
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.faults.counts;
        writeln!(
            f,
            "soak (seed {}): {} jobs asked, {} assigned (restarts included), {} handler runs in {:.1?}",
            self.config.seed,
            self.config.jobs,
            self.faults.assigned,
            self.handler_runs,
            self.elapsed
        )?;
        writeln!(
            f,
            "  faults: {} connections dropped ({} registrations), {} jobs terminated, \
             {} messages sent twice; {} dispatches made again",
            c.dropped_connections,
            self.registrations,
            c.terminated_jobs,
            c.duplicated_messages,
            self.redispatched
        )?;
        writeln!(
            f,
            "  finals: {} for {} acknowledged jobs; unended {}, repeated {}, missing {}, \
             re-sent after a lost confirmation {}; overlaps {}, lost {}",
            self.faults.finals,
            self.faults.acknowledged,
            self.faults.unended_count,
            self.faults.repeated_finals_count,
            self.faults.missing_finals_count,
            self.faults.redelivered_finals,
            self.overlaps,
            self.lost_statuses
        )?;
        write!(
            f,
            "  worker memory: {} KiB after warm-up, {} KiB at the end",
            self.rss_warm >> 10,
            self.rss_end >> 10
        )
    }
}

/// Runs a soak, with the worker in the process `worker` starts (this
/// program with `--worker`, or a test binary's child test).
pub async fn soak(
    config: SoakConfig,
    mut worker: Command,
) -> Result<SoakReport, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let server = DevServer::start(DevServerConfig {
        faults: Some(FaultConfig {
            seed: config.seed,
            interval: config.fault_interval,
            duplicate_chance: config.duplicate_chance,
        }),
        // a dropped worker is back within milliseconds; what it did not
        // claim by then it never got
        reconnect_grace: Duration::from_secs(2),
        availability_timeout: Duration::from_secs(2),
        max_job_attempts: 3,
        ..DevServerConfig::default()
    })
    .await?;
    let (key, secret) = DevServerConfig::default().keys[0].clone();
    let mut child = WorkerProcess::spawn(
        worker
            .env(URL_ENV, server.ws_url())
            .env(KEY_ENV, key)
            .env(SECRET_ENV, secret)
            .env(MAX_JOBS_ENV, config.max_jobs.to_string()),
    )?;
    child.expect("ready").await?;

    let redispatched = Rc::new(Cell::new(0u64));
    run_jobs(&server, &config, 0..config.warmup, &redispatched).await?;
    settle(&server).await?;
    let warm = child.mark().await?;
    run_jobs(&server, &config, config.warmup..config.jobs, &redispatched).await?;
    settle(&server).await?;
    let end = child.mark().await?;
    // the worker has sent every final status; the server reads them in turn
    let deadline = Instant::now() + STALL;
    let faults = loop {
        let report = server.fault_report().await.ok_or("fault mode is off")?;
        if report.is_clean() || Instant::now() > deadline {
            break report;
        }
        // polled: the ledger is not part of what `wait_jobs` watches
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    child.quit().await?;
    server.stop().await;
    Ok(SoakReport {
        config,
        faults,
        redispatched: redispatched.get(),
        handler_runs: end.runs,
        overlaps: end.overlaps,
        lost_statuses: end.lost,
        registrations: end.registrations,
        rss_warm: warm.rss,
        rss_end: end.rss,
        elapsed: started.elapsed(),
    })
}

/// Dispatches the jobs numbered `range`, `concurrency` at a time, each
/// dispatch waiting for its job to end before the next.
async fn run_jobs(
    server: &DevServer,
    config: &SoakConfig,
    range: std::ops::Range<usize>,
    redispatched: &Rc<Cell<u64>>,
) -> Result<(), String> {
    let next = Rc::new(Cell::new(range.start));
    let mut lanes = Vec::new();
    for _ in 0..config.concurrency {
        let (server, config, next, end) = (server.clone(), config.clone(), next.clone(), range.end);
        let redispatched = redispatched.clone();
        lanes.push(actix_rt::spawn(async move {
            loop {
                let n = next.get();
                if n >= end {
                    return Ok(());
                }
                next.set(n + 1);
                run_one(&server, &config, n, &redispatched).await?;
            }
        }) as actix_rt::task::JoinHandle<Result<(), String>>);
    }
    for lane in lanes {
        lane.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Dispatches job `n` until a worker takes it, then waits for it to end.
async fn run_one(
    server: &DevServer,
    config: &SoakConfig,
    n: usize,
    redispatched: &Cell<u64>,
) -> Result<(), String> {
    let mut plan = StdRng::seed_from_u64(config.seed ^ (n as u64).wrapping_mul(0x2545_f491));
    let metadata = format!(
        r#"{{"ms":{},"fail":{}}}"#,
        plan.random_range(1..=config.max_job_ms),
        plan.random_bool(config.fail_chance)
    );
    let request = DispatchRequest::room(format!("soak-{n}"))
        .agent_name(AGENT)
        .metadata(metadata);
    for _ in 0..MAX_REDISPATCH {
        match server.dispatch(request.clone()).await {
            Ok(job) => {
                let ended = server.wait_job(&job.id, STALL, is_ended).await;
                // a record already evicted has ended (only ended ones are)
                return match ended {
                    Ok(_) => Ok(()),
                    Err(_) if server.job(&job.id).await.is_none() => Ok(()),
                    Err(_) => Err(format!("job {} did not end within {STALL:?}", job.id)),
                };
            }
            Err(_) => {
                // away or full: wait until it is back and has room
                redispatched.set(redispatched.get() + 1);
                server
                    .wait_workers(STALL, |workers| {
                        workers
                            .iter()
                            .any(|w| w.connected && w.status == WorkerStatus::WsAvailable)
                    })
                    .await
                    .map_err(|_| format!("no worker came back within {STALL:?}"))?;
            }
        }
    }
    Err(format!("job {n} found no worker {MAX_REDISPATCH} times"))
}

fn is_ended(job: &JobInfo) -> bool {
    matches!(job.status, JobStatus::JsSuccess | JobStatus::JsFailed)
}

/// Waits until every job the server knows has ended (restarts included).
async fn settle(server: &DevServer) -> Result<(), String> {
    server
        .wait_jobs(STALL, |jobs| jobs.iter().all(is_ended))
        .await
        .map(drop)
        .map_err(|_| format!("jobs still open after {STALL:?}"))
}

/// The worker process, driven over its stdin and stdout.
struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::sync::mpsc::Receiver<String>,
}

/// The worker's reading at a `mark`.
struct Mark {
    rss: u64,
    runs: u64,
    overlaps: u64,
    lost: u64,
    registrations: u64,
}

impl WorkerProcess {
    fn spawn(command: &mut Command) -> std::io::Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (said, lines) = tokio::sync::mpsc::channel(16);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(MARK)
                    && said
                        .blocking_send(line[at + MARK.len()..].to_owned())
                        .is_err()
                {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    /// The worker's next line, which must start with `word`. Awaited, not
    /// blocked on: the server runs on this thread too.
    async fn expect(&mut self, word: &str) -> Result<String, String> {
        match actix_rt::time::timeout(STALL, self.lines.recv()).await {
            Ok(Some(line)) if line.starts_with(word) => Ok(line),
            Ok(Some(line)) => Err(format!("the worker said {line:?}, not {word}")),
            Ok(None) => Err(format!("the worker ended before saying {word}")),
            Err(_) => Err(format!("the worker did not say {word} within {STALL:?}")),
        }
    }

    /// Asks the worker to wait until idle and read its memory and counts.
    async fn mark(&mut self) -> Result<Mark, String> {
        writeln!(self.stdin, "mark").map_err(|e| e.to_string())?;
        let line = self.expect("mark").await?;
        let field = |name: &str| -> Result<u64, String> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no {name} in {line:?}"))
        };
        Ok(Mark {
            rss: field("rss")?,
            runs: field("runs")?,
            overlaps: field("overlaps")?,
            lost: field("lost")?,
            registrations: field("registrations")?,
        })
    }

    async fn quit(mut self) -> Result<(), String> {
        writeln!(self.stdin, "quit").map_err(|e| e.to_string())?;
        self.expect("bye").await?;
        let status = self.child.wait().map_err(|e| e.to_string())?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("the worker exited with {status}"))
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // a soak that failed half-way leaves no worker behind
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The worker's half: runs a worker against the soak's server and answers
/// `mark` (wait until idle; print memory and counts) and `quit` on stdin.
pub fn worker_process() -> Result<(), Box<dyn std::error::Error>> {
    let WorkerEnv {
        url,
        key,
        secret,
        max_jobs,
    } = WorkerEnv::try_parse_from(std::iter::empty::<String>())?;
    let (commands, mut heard) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if commands.blocking_send(line).is_err() {
                break;
            }
        }
    });
    actix_rt::System::new().block_on(async move {
        let tally = Arc::new(Tally::default());
        let mut options = WorkerOptions::new(url, key, secret).agent_name(AGENT);
        // back within milliseconds of each drop, however many there were
        options.reconnect = ReconnectPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
                jitter: 0.5,
            },
            stable_after: Duration::from_millis(500),
            ..ReconnectPolicy::default()
        };
        let worker = Worker::builder(options)
            .max_jobs(max_jobs)
            .handler(SoakAgent(tally.clone()))
            .start()?;
        say("ready");
        while let Some(command) = heard.recv().await {
            match command.trim() {
                "mark" => {
                    let deadline = Instant::now() + STALL;
                    let state = loop {
                        let state = worker.send(GetState).await?;
                        let j = &state.jobs;
                        let busy = j.offered + j.queued + j.starting + j.running + j.finishing;
                        if state.connected && busy == 0 && state.outbox == 0 {
                            break state;
                        }
                        if Instant::now() > deadline {
                            return Err(format!("the worker is not idle: {state:?}").into());
                        }
                        actix_rt::time::sleep(Duration::from_millis(10)).await;
                    };
                    say(&format!(
                        "mark rss={} runs={} overlaps={} lost={} registrations={}",
                        resident_memory(),
                        tally.runs.load(Ordering::Relaxed),
                        tally.overlaps.load(Ordering::Relaxed),
                        state.lost_statuses,
                        state.registrations
                    ));
                }
                "quit" => break,
                other => return Err(format!("unknown command {other:?}").into()),
            }
        }
        worker.stop().await;
        say("bye");
        Ok(())
    })
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{MARK}{line}");
    let _ = out.flush();
}

/// This process's resident memory in bytes (Linux: `/proc/self/statm`).
fn resident_memory() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The worker's own count: handler runs, and jobs that started while they
/// ran already.
#[derive(Default)]
struct Tally {
    running: Mutex<HashSet<String>>,
    runs: AtomicU64,
    overlaps: AtomicU64,
}

/// Leaves the running set however the handler ends.
struct Running<'a>(&'a Tally, String);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.lock().unwrap().remove(&self.1);
    }
}

/// Runs for the job's `ms`, then fails if its plan says so; a termination
/// ends it at once.
struct SoakAgent(Arc<Tally>);

impl JobHandler for SoakAgent {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let tally = &*self.0;
        tally.runs.fetch_add(1, Ordering::Relaxed);
        if !tally.running.lock().unwrap().insert(ctx.id().to_owned()) {
            tally.overlaps.fetch_add(1, Ordering::Relaxed);
            return Err(JobError::failed("already running"));
        }
        let _running = Running(tally, ctx.id().to_owned());
        let plan: serde_json::Value = serde_json::from_str(ctx.metadata()).unwrap_or_default();
        let ms = plan["ms"].as_u64().unwrap_or(1);
        if actix_rt::time::timeout(Duration::from_millis(ms), ctx.cancelled())
            .await
            .is_ok()
        {
            return Ok(()); // terminated
        }
        if plan["fail"].as_bool() == Some(true) {
            return Err(JobError::failed("the plan says fail"));
        }
        Ok(())
    }
}

/// The worker process's settings, which the soak gives it in its
/// environment (the secret there, not on the command line). Each value is
/// named after its variable, so that an error names the variable. No
/// `Debug`: it holds the secret.
#[derive(Parser)]
#[command(name = "soak --worker", no_binary_name = true)]
struct WorkerEnv {
    /// The soak's dev server.
    #[arg(long, env = URL_ENV, value_name = URL_ENV)]
    url: String,
    /// The API key.
    #[arg(long, env = KEY_ENV, value_name = KEY_ENV)]
    key: String,
    /// The API secret.
    #[arg(long, env = SECRET_ENV, hide_env_values = true, value_name = SECRET_ENV)]
    secret: String,
    /// The worker's `max_jobs`.
    #[arg(long, env = MAX_JOBS_ENV, value_name = MAX_JOBS_ENV)]
    max_jobs: usize,
}

/// The chaos soak: a worker under a dev server in fault mode, checked for loss and leaks
///
/// The dev server, in this process, drops the worker's connection,
/// terminates its jobs, repeats availability requests and assignments at
/// random moments drawn from the seed, and restarts every job that fails;
/// the worker runs in a child process. At the end the soak checks that every
/// assigned job ended, each acknowledged one with exactly one terminal
/// status; that no job ran twice at once; that no final status was lost; and
/// that the worker's memory stayed put after the warm-up. It exits 1 on a
/// problem and prints the flags that replay the run. Logs follow RUST_LOG
/// (default error; warn shows each fault). Build it with --release.
#[derive(Parser)]
#[command(name = "soak", args_override_self = true)]
struct Args {
    /// Jobs to run, a tenth of them the warm-up [default: 100000]
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Seeds the fault schedule and the jobs; the same seed replays a run [default: random]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Run as the soak's worker process: the soak starts it itself.
    #[arg(long, hide = true)]
    worker: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.worker {
        return match worker_process() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("soak worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    actix_rt::System::new().block_on(run(args))
}

/// The soak's own half: runs, and prints the report.
async fn run(args: Args) -> ExitCode {
    let seed = args
        .seed
        .unwrap_or_else(|| rand::random::<u64>() % 1_000_000);
    let mut config = SoakConfig::full(seed);
    if let Some(jobs) = args.jobs {
        config.jobs = jobs;
        config.warmup = (jobs / 10).max(1);
    }
    println!("soak: {} jobs, seed {seed}", config.jobs);
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut worker = Command::new(exe);
    worker.arg("--worker");
    match soak(config, worker).await {
        Ok(report) => {
            println!("{report}");
            let problems = report.problems();
            for problem in &problems {
                println!("PROBLEM: {problem}");
            }
            if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                println!(
                    "replay with: cargo run --release --example soak -- --jobs {} --seed {}",
                    report.config.jobs, report.config.seed
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("soak (seed {seed}) failed: {e}");
            ExitCode::FAILURE
        }
    }
}
