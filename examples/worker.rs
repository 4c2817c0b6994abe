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
//! `--liveness-ms MS` sets how long a heartbeat lasts, default 6 s).
//!
//! Operating it: `--http ADDR` serves `/`, `/ready`, `/worker` and
//! `/metrics` (off unless given); SIGTERM (or Ctrl-C) drains it — new jobs
//! declined, running ones finish for up to `--drain-timeout SECS` (default
//! 600) — and it exits 0 after a clean drain; a second signal stops it at
//! once (it exits 1 if it had to cut jobs, or its supervision gave up).
//! `--give-up-after SECS` turns `/` to 503 after that long without reaching
//! the server. `--idle` makes every job wait for its termination, doing
//! nothing (for load tests). Logs follow `RUST_LOG` (default `info`).
//!
//! ```text
//! cargo run -p lkagent-devserver &        # or any LiveKit server
//! LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \
//!     cargo run --example worker -- --max-jobs 20 --http 127.0.0.1:8081
//! ```

use std::process::ExitCode;
use std::time::Duration;

use lkagent::demo::DemoAgent;
use lkagent::recovery::EmbeddedStore;
use lkagent::{JobContext, JobError, JobHandler, Worker, WorkerOptions};

const USAGE: &str = "usage: worker [--max-jobs N] [--agent-name NAME] [--worker-id ID]
              [--state-dir DIR | --redis URL [--redis-prefix PREFIX]] [--liveness-ms MS]
              [--http ADDR] [--drain-timeout SECS] [--give-up-after SECS] [--idle]
environment: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET or LIVEKIT_API_SECRET_FILE
             (required), LIVEKIT_AGENT_NAME, REDIS_URL, RUST_LOG";

/// The flags, parsed.
struct Args {
    max_jobs: usize,
    agent_name: Option<String>,
    state_dir: Option<String>,
    redis: Option<String>,
    redis_prefix: String,
    worker_id: Option<String>,
    liveness: Option<Duration>,
    http: Option<String>,
    drain_timeout: Duration,
    give_up_after: Option<Duration>,
    idle: bool,
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

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        max_jobs: 100,
        agent_name: None,
        state_dir: None,
        redis: std::env::var("REDIS_URL")
            .ok()
            .filter(|url| !url.is_empty()),
        redis_prefix: String::new(),
        worker_id: None,
        liveness: None,
        http: None,
        drain_timeout: Duration::from_secs(600),
        give_up_after: None,
        idle: false,
    };
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--max-jobs" => {
                let text = value("--max-jobs")?;
                parsed.max_jobs =
                    text.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("--max-jobs must be a positive number, not {text:?}")
                    })?;
            }
            "--agent-name" => parsed.agent_name = Some(value("--agent-name")?),
            "--state-dir" => parsed.state_dir = Some(value("--state-dir")?),
            "--redis" => parsed.redis = Some(value("--redis")?),
            "--redis-prefix" => parsed.redis_prefix = value("--redis-prefix")?,
            "--worker-id" => parsed.worker_id = Some(value("--worker-id")?),
            "--liveness-ms" => {
                let text = value("--liveness-ms")?;
                let ms: u64 = text.parse().ok().filter(|ms| *ms >= 30).ok_or_else(|| {
                    format!("--liveness-ms must be a number of milliseconds from 30, not {text:?}")
                })?;
                parsed.liveness = Some(Duration::from_millis(ms));
            }
            "--http" => parsed.http = Some(value("--http")?),
            "--drain-timeout" => {
                let text = value("--drain-timeout")?;
                let secs: u64 = text.parse().map_err(|_| {
                    format!("--drain-timeout must be a number of seconds, not {text:?}")
                })?;
                parsed.drain_timeout = Duration::from_secs(secs);
            }
            "--give-up-after" => {
                let text = value("--give-up-after")?;
                let secs: u64 = text.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("--give-up-after must be a positive number of seconds, not {text:?}")
                })?;
                parsed.give_up_after = Some(Duration::from_secs(secs));
            }
            "--idle" => parsed.idle = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if parsed.state_dir.is_some() && parsed.redis.is_some() {
        return Err("--state-dir and --redis (or REDIS_URL) are exclusive: pick one store".into());
    }
    Ok(parsed)
}

#[actix::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut options = match WorkerOptions::from_env() {
        Ok(options) => options,
        Err(err) => {
            eprintln!("error: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(name) = args.agent_name {
        options.agent_name = name;
    }
    if let Some(id) = &args.worker_id {
        options.instance_id = id.clone();
    }
    if let Some(ttl) = args.liveness {
        options.liveness_ttl = ttl;
    }
    if let Some(budget) = args.give_up_after {
        options = options.reconnect_give_up_after(budget);
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
                eprintln!("error: --state-dir {dir}: {err}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(url) = &args.redis {
        builder = match redis_store(url, &args.redis_prefix).await {
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
    match worker.drain_on_signals(args.drain_timeout).await {
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
