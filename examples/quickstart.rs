//! The quickstart: a dev server and a worker in one process, no set-up.
//!
//! It starts `lkagent-devserver` on a free loopback port, starts a worker
//! running the demo agent against it, dispatches a handful of jobs — some
//! succeed, one fails, one panics — prints their progress as it happens, and
//! ends with a summary.
//!
//! It prints the dev server's dashboard link first: open it to watch the
//! jobs move; `--stay` keeps the server and the worker up after the summary
//! (until Ctrl-C) to look around and dispatch more from the page.
//!
//! ```text
//! cargo run --example quickstart
//! cargo run --example quickstart -- --stay        # keep the dashboard up
//! RUST_LOG=info cargo run --example quickstart   # with the worker's logs
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use lkagent::demo::DemoAgent;
use lkagent::proto::JobStatus;
use lkagent::{GetState, Worker, WorkerOptions};
use lkagent_devserver::{DevServer, DevServerConfig, DispatchError, DispatchRequest};

/// The jobs to dispatch: room name and the demo agent's plan.
const JOBS: [(&str, &str); 6] = [
    ("support-1", r#"{"duration_ms": 600}"#),
    ("support-2", r#"{"duration_ms": 1200}"#),
    ("sales-1", r#"{"duration_ms": 300, "outcome": "fail"}"#),
    ("support-3", r#"{"duration_ms": 900}"#),
    ("flaky-1", r#"{"duration_ms": 400, "outcome": "panic"}"#),
    ("support-4", r#"{"duration_ms": 200}"#),
];

/// The quickstart: a dev server and a worker in one process, no set-up
///
/// Dispatches a handful of jobs to the demo agent (some succeed, one fails,
/// one panics), prints their progress and a summary. RUST_LOG=info shows the
/// worker's logs.
#[derive(Parser)]
#[command(name = "quickstart")]
struct Args {
    /// Keep the dev server, its dashboard and the worker up after the
    /// summary, until Ctrl-C
    #[arg(long)]
    stay: bool,
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    // a handler panic is caught and reported; keep its note to one line
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        println!("  (a handler panicked: {message:?}; lkagent caught it and restarts the job)");
    }));

    let server = DevServer::start(DevServerConfig::default()).await?;
    println!("dev server listening on {}", server.ws_url());
    println!("watch the jobs move on its dashboard (--stay keeps it up after the summary):");
    println!("  {}", server.dashboard_url());
    let (key, secret) = DevServerConfig::default().keys[0].clone();
    let worker = Worker::builder(WorkerOptions::new(server.ws_url(), key, secret))
        .max_jobs(4)
        .handler(DemoAgent)
        .start()?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let worker_id = loop {
        if let Some(id) = worker.send(GetState).await?.worker_id {
            break id;
        }
        if Instant::now() > deadline {
            return Err("the worker did not register within 10 s".into());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    println!("worker registered as {worker_id} (max 4 jobs at once)");

    // dispatch in the background; the worker takes 4 at once and then reports
    // FULL, and as the server does not queue, a job that finds no worker is
    // dispatched again when a slot frees
    let dispatcher = server.clone();
    let done = Rc::new(Cell::new(None));
    let done_in_task = done.clone();
    actix_rt::spawn(async move {
        let mut dispatched = 0;
        for (room, plan) in JOBS {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match dispatcher
                    .dispatch(DispatchRequest::room(room).metadata(plan))
                    .await
                {
                    Ok(job) => {
                        println!("dispatched {} to room {room:<10} plan {plan}", job.id);
                        dispatched += 1;
                        break;
                    }
                    Err(DispatchError::NoWorkers) if Instant::now() < deadline => {
                        actix_rt::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(err) => {
                        println!("could not dispatch room {room}: {err}");
                        break;
                    }
                }
            }
        }
        done_in_task.set(Some(dispatched));
    });

    // follow every job's statuses as the server records them
    let mut printed: HashMap<String, usize> = HashMap::new();
    let mut finals: HashMap<String, JobStatus> = HashMap::new();
    let mut dispatched = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        dispatched = done.get();
        for job in server.jobs().await {
            let seen = printed.entry(job.id.clone()).or_default();
            for update in &job.updates[*seen..] {
                let error = if update.error.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", update.error)
                };
                println!(
                    "  {}  {:<10} {}{error}",
                    job.id,
                    job.room,
                    update.status.as_str_name()
                );
                if matches!(update.status, JobStatus::JsSuccess | JobStatus::JsFailed) {
                    finals.insert(job.id.clone(), update.status);
                }
            }
            *seen = job.updates.len();
        }
        if dispatched.is_some_and(|n| finals.len() >= n) {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    let state = worker.send(GetState).await?;
    let dispatched = dispatched.unwrap_or(0);
    let succeeded = finals
        .values()
        .filter(|s| **s == JobStatus::JsSuccess)
        .count();
    let failed = finals.len() - succeeded;
    println!("\nsummary: {dispatched} jobs dispatched, {succeeded} succeeded, {failed} failed");
    println!(
        "worker {}: still {}, {} jobs running",
        state.worker_id.as_deref().unwrap_or("-"),
        if state.connected {
            "connected"
        } else {
            "disconnected"
        },
        state.running_jobs.len()
    );
    if args.stay {
        println!(
            "\nstill serving: the dashboard is at {} (Ctrl-C to stop)",
            server.dashboard_url()
        );
        actix_rt::signal::ctrl_c().await?;
    }
    worker.stop().await;
    server.stop().await;
    if dispatched < JOBS.len() || finals.len() < dispatched {
        return Err("some jobs did not finish within 30 s".into());
    }
    Ok(())
}
