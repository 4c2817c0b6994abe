//! Supervision: a job crashes and resumes from its checkpoint.
//!
//! A transcriber job works through ten segments, checkpointing after each.
//! On its first run it panics at segment 4. The runtime catches the panic,
//! waits out the restart backoff and runs the handler again with the same
//! checkpoint; the second run picks up at segment 4 and finishes. The server
//! sees RUNNING, then SUCCESS — no FAILED in between. Runs in-process against
//! an embedded dev server, no set-up (`RUST_LOG=info` shows the worker's
//! logs):
//!
//! ```text
//! cargo run --example supervision
//! ```

use std::time::Duration;

use clap::Parser;
use lkagent::proto::JobStatus;
use lkagent::{GetState, JobContext, JobError, JobHandler, Worker, WorkerOptions};
use lkagent_devserver::{DevServer, DevServerConfig, DispatchRequest};

/// A job crashes and resumes from its checkpoint
///
/// A transcriber panics at segment 4 of 10; the runtime runs it again from
/// its last checkpoint, against an embedded dev server. RUST_LOG=info shows
/// the worker's logs.
#[derive(Parser)]
#[command(name = "supervision")]
struct Args {}

const SEGMENTS: u32 = 10;
const CRASH_AT: u32 = 4;

struct Transcriber;

impl JobHandler for Transcriber {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let checkpoint = ctx.checkpoint();
        let done: u32 = checkpoint.load("segments_done").ok().flatten().unwrap_or(0);
        if ctx.is_restart() {
            println!(
                "  attempt {}: resuming from the checkpoint at segment {}",
                ctx.attempt(),
                done + 1
            );
        } else {
            println!("  attempt 1: starting at segment 1");
        }
        for segment in done + 1..=SEGMENTS {
            if segment == CRASH_AT && ctx.attempt() == 1 {
                println!("  attempt 1: segment {segment}: the audio decoder panics");
                panic!("decoder crashed on segment {segment}");
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
            checkpoint
                .save("segments_done", &segment)
                .map_err(|e| JobError::failed(e.to_string()))?;
            checkpoint
                .flush()
                .await
                .map_err(|e| JobError::failed(e.to_string()))?;
            println!(
                "  attempt {}: segment {segment} transcribed and checkpointed",
                ctx.attempt()
            );
        }
        Ok(())
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    // the panic is caught and handled; keep the default hook's report short
    std::panic::set_hook(Box::new(|info| println!("  (caught: {info})")));
    let server = DevServer::start(DevServerConfig::default()).await?;
    let (key, secret) = DevServerConfig::default().keys[0].clone();
    let worker = Worker::builder(WorkerOptions::new(server.ws_url(), key, secret))
        .handler(Transcriber)
        .start()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !worker.send(GetState).await?.connected {
        if std::time::Instant::now() > deadline {
            return Err("the worker did not register within 10 s".into());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }

    let job = server.dispatch(DispatchRequest::room("meeting")).await?;
    println!("dispatched {} (the handler will crash once)", job.id);
    let done = server
        .wait_job(&job.id, Duration::from_secs(20), |j| {
            j.updates
                .iter()
                .any(|u| matches!(u.status, JobStatus::JsSuccess | JobStatus::JsFailed))
        })
        .await?;
    let statuses: Vec<&str> = done
        .updates
        .iter()
        .map(|u| u.status.as_str_name())
        .collect();
    println!("the server saw: {}", statuses.join(" -> "));
    server.stop().await;
    Ok(())
}
