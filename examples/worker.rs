//! A worker for any LiveKit server, running the demo agent.
//!
//! Configured from `LIVEKIT_URL`, `LIVEKIT_API_KEY`, `LIVEKIT_API_SECRET` and
//! `LIVEKIT_AGENT_NAME`; flags `--max-jobs N` (default 100) and
//! `--agent-name NAME` override. Each job follows its metadata JSON:
//! `{"duration_ms": 1000, "outcome": "success" | "fail" | "panic"}`, and
//! checkpoints the time it has run. With `--state-dir DIR` the checkpoints
//! are kept on disk: a worker killed mid-job and started again with the same
//! directory resumes the job where it was. With `--redis URL` (or
//! `REDIS_URL`; built with the feature `redis`) instead, they are kept in
//! Redis and the worker is one of a fleet: when a worker dies, another
//! takes its jobs over once its heartbeat lapses (`--redis-prefix` names
//! the fleet; `--worker-id ID` keeps one identity across restarts;
//! `--liveness-ms MS` sets how long a heartbeat lasts, default 4 s).
//!
//! Operating it: `--http ADDR` serves `/`, `/ready`, `/worker` and
//! `/metrics` (off unless given); SIGTERM (or Ctrl-C) drains it — new jobs
//! declined, running ones finish for up to `--drain-timeout SECS` (default
//! 600) — and it exits 0 after a clean drain; a second signal stops it at
//! once (it exits 1 if it had to cut jobs, or its supervision gave up).
//! `--give-up-after SECS` turns `/` to 503 after that long without reaching
//! the server. `--idle` makes every job wait for its termination, doing
//! nothing (for load tests). Logs follow `RUST_LOG` (default `info`).
//! `--help` lists it all; a bad flag or value exits with code 2.
//!
//! ```text
//! cargo run -p lkagent-devserver &        # or any LiveKit server
//! LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \
//!     cargo run --example worker -- --max-jobs 20 --http 127.0.0.1:8081
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use lkagent::demo::DemoAgent;
use lkagent::recovery::EmbeddedStore;
use lkagent::{DEFAULT_LIVENESS_TTL, JobContext, JobError, JobHandler, Worker, WorkerOptions};

/// What `--help` says about the environment, which `WorkerOptions::from_env`
/// reads.
const ENVIRONMENT: &str = "Environment:
  LIVEKIT_URL              the server's URL (required)
  LIVEKIT_API_KEY          API key (required)
  LIVEKIT_API_SECRET       API secret (required), or LIVEKIT_API_SECRET_FILE: a file
                           holding it, read again at every connection
  LIVEKIT_AGENT_NAME       agent name to register (default: none)
  RUST_LOG                 log filter (default: info)

SIGTERM or Ctrl-C drains: new jobs are declined, running ones finish for up to
--drain-timeout, and the worker exits 0 after a clean drain; a second signal stops it at once.";

/// A worker for any LiveKit server, running the demo agent
///
/// Each job follows its metadata JSON: {"duration_ms": 1000, "outcome":
/// "success" | "fail" | "panic"}, and checkpoints the time it has run. With
/// --state-dir the checkpoints are kept on disk, so a worker killed mid-job
/// and started again resumes it; with --redis the worker is one of a fleet,
/// whose other workers take its jobs over when it dies.
#[derive(Parser)]
#[command(name = "worker", args_override_self = true, after_help = ENVIRONMENT)]
struct Args {
    /// Most jobs at once
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = positive)]
    max_jobs: usize,
    /// Agent name to register [default: LIVEKIT_AGENT_NAME's, or none]
    #[arg(long, value_name = "NAME")]
    agent_name: Option<String>,
    /// Keep the checkpoints in this directory, to resume jobs after a restart
    #[arg(long, value_name = "DIR", help_heading = "Checkpoints")]
    state_dir: Option<PathBuf>,
    /// Keep the checkpoints in Redis and join its fleet (feature `redis`)
    ///
    /// When a worker of the fleet dies, another takes its jobs over once
    /// its heartbeat lapses. Exclusive with --state-dir.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Checkpoints"
    )]
    redis: Option<String>,
    /// Key prefix that names the fleet in Redis [default: none]
    #[arg(long, value_name = "PREFIX", help_heading = "Checkpoints")]
    redis_prefix: Option<String>,
    /// Identity of this worker, kept across restarts [default: a random one]
    #[arg(long, value_name = "ID", help_heading = "Checkpoints")]
    worker_id: Option<String>,
    /// How long a heartbeat lasts, in milliseconds, from 30
    #[arg(
        long = "liveness-ms",
        value_name = "MS",
        default_value_t = DEFAULT_LIVENESS_TTL.as_millis() as u64,
        value_parser = at_least::<30>,
        help_heading = "Checkpoints"
    )]
    liveness_ms: u64,
    /// Serve /, /ready, /worker and /metrics on this address [default: off]
    #[arg(long, value_name = "ADDR", help_heading = "Operating")]
    http: Option<String>,
    /// Longest a drain waits for running jobs, in seconds
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 600,
        help_heading = "Operating"
    )]
    drain_timeout: u64,
    /// Turn / to 503 after this long without reaching the server [default: never]
    #[arg(
        long,
        value_name = "SECS",
        value_parser = at_least::<1>,
        help_heading = "Operating"
    )]
    give_up_after: Option<u64>,
    /// Make every job wait for its termination, doing nothing (for load tests)
    #[arg(long)]
    idle: bool,
}

/// A count of at least 1.
fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// A whole number of at least `MIN`.
fn at_least<const MIN: u64>(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n < MIN => Err(format!("must be at least {MIN}")),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

/// Does nothing until its job is terminated: jobs that cost only their
/// actor, for load tests.
struct Idle;

impl JobHandler for Idle {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        ctx.cancelled().await;
        Ok(())
    }
}

#[actix::main]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    // an empty REDIS_URL is no Redis
    args.redis = args.redis.filter(|url| !url.is_empty());
    if args.state_dir.is_some() && args.redis.is_some() {
        Args::command()
            .error(
                ErrorKind::ArgumentConflict,
                "--state-dir and --redis (or REDIS_URL) are exclusive: pick one store",
            )
            .exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut options = match WorkerOptions::from_env() {
        Ok(options) => options,
        Err(err) => Args::command()
            .error(ErrorKind::MissingRequiredArgument, err)
            .exit(),
    };
    if let Some(name) = args.agent_name {
        options.agent_name = name;
    }
    if let Some(id) = &args.worker_id {
        options.instance_id = id.clone();
    }
    options.liveness_ttl = Duration::from_millis(args.liveness_ms);
    if let Some(secs) = args.give_up_after {
        options = options.reconnect_give_up_after(Duration::from_secs(secs));
    }
    let mut builder = Worker::builder(options).max_jobs(args.max_jobs);
    builder = if args.idle {
        builder.handler(Idle)
    } else {
        builder.handler(DemoAgent)
    };
    if let Some(addr) = &args.http {
        builder = builder.http(addr.clone());
    }
    if let Some(dir) = &args.state_dir {
        match EmbeddedStore::open(dir) {
            Ok(store) => builder = builder.checkpoint_store(store),
            Err(err) => {
                eprintln!("error: --state-dir {}: {err}", dir.display());
                return ExitCode::from(2);
            }
        }
    }
    if let Some(url) = &args.redis {
        let prefix = args.redis_prefix.as_deref().unwrap_or_default();
        builder = match redis_store(url, prefix).await {
            Ok(store) => builder.checkpoint_store(store),
            Err(err) => {
                eprintln!("error: --redis: {err}");
                return ExitCode::from(2);
            }
        };
    }
    let worker = match builder.start() {
        Ok(worker) => worker,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = worker.http_addr() {
        tracing::info!(%addr, "operator endpoints: /, /ready, /worker, /metrics");
    }
    // SIGTERM drains (a deploy waits for the calls), a second signal stops
    match worker
        .drain_on_signals(Duration::from_secs(args.drain_timeout))
        .await
    {
        Ok(Some(exit)) if exit.is_clean() => ExitCode::SUCCESS,
        Ok(exit) => {
            eprintln!("stopped: {exit:?}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: cannot wait for signals: {err}");
            worker.stop().await;
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "redis")]
async fn redis_store(
    url: &str,
    prefix: &str,
) -> Result<lkagent::recovery::RedisCheckpointStore, String> {
    lkagent::recovery::RedisCheckpointStore::connect(url, prefix)
        .await
        .map_err(|err| err.to_string())
}

#[cfg(not(feature = "redis"))]
async fn redis_store(_url: &str, _prefix: &str) -> Result<EmbeddedStore, String> {
    Err("this build has no Redis support: build with `--features redis`".into())
}
