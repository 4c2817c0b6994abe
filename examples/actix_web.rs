//! An actix-web application that starts agent jobs from an HTTP endpoint.
//!
//! The worker is an actor in the same process; the endpoint sends it
//! `SpawnJob` and answers with the outcome. With `LIVEKIT_URL`,
//! `LIVEKIT_API_KEY` and `LIVEKIT_API_SECRET` set the worker also serves a
//! LiveKit server; without them it starts an embedded dev server. The same
//! app mounts the worker's own endpoints (`lkagent::http::configure`):
//! liveness at `/`, readiness at `/ready`, `/worker` and `/metrics`. Ctrl-C
//! (or SIGTERM) drains the worker, then stops the app. Logs follow
//! `RUST_LOG` (default `info`). It listens on `--bind ADDR` (or `BIND`,
//! default `127.0.0.1:8080`).
//!
//! ```text
//! cargo run --example actix_web
//! curl -X POST 'http://127.0.0.1:8080/jobs?room=support-1&duration_ms=2000'
//! curl http://127.0.0.1:8080/jobs
//! curl http://127.0.0.1:8080/metrics
//! ```

use std::time::Duration;

use actix::Addr;
use actix_web::{App, HttpResponse, HttpServer, web};
use clap::Parser;
use lkagent::demo::DemoAgent;
use lkagent::{GetState, SpawnJob, SpawnOutcome, Worker, WorkerActor, WorkerOptions};
use lkagent_devserver::{DevServer, DevServerConfig};
use serde::Deserialize;

/// An actix-web app that starts agent jobs from an HTTP endpoint
///
/// POST /jobs?room=NAME[&duration_ms=MS][&outcome=success|fail|panic]
/// starts a job, GET /jobs lists them; the same app serves the worker's
/// own /, /ready, /worker and /metrics. With LIVEKIT_URL, LIVEKIT_API_KEY
/// and LIVEKIT_API_SECRET set the worker also serves that LiveKit server;
/// without them it starts an embedded dev server. Ctrl-C or SIGTERM drains
/// the worker, then stops the app. Logs follow RUST_LOG (default info).
#[derive(Parser)]
#[command(name = "actix_web")]
struct Args {
    /// Address the app listens on
    #[arg(
        long,
        env = "BIND",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    bind: String,
}

/// The query of `POST /jobs`.
#[derive(Deserialize)]
struct NewJob {
    room: String,
    duration_ms: Option<u64>,
    outcome: Option<String>,
}

/// `POST /jobs?room=..[&duration_ms=..][&outcome=success|fail|panic]`
async fn start_job(
    worker: web::Data<Addr<WorkerActor>>,
    query: web::Query<NewJob>,
) -> HttpResponse {
    let plan = serde_json::json!({
        "duration_ms": query.duration_ms.unwrap_or(1000),
        "outcome": query.outcome.as_deref().unwrap_or("success"),
    });
    let spawn = SpawnJob::new(query.room.clone()).metadata(plan.to_string());
    match worker.send(spawn).await {
        Ok(SpawnOutcome::Started { job_id }) => {
            HttpResponse::Accepted().json(serde_json::json!({ "job_id": job_id }))
        }
        Ok(SpawnOutcome::Queued { job_id, depth }) => {
            HttpResponse::Accepted().json(serde_json::json!({ "job_id": job_id, "queued": depth }))
        }
        Ok(SpawnOutcome::Refused { reason }) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "refused": reason.to_string() })),
        Err(err) => HttpResponse::InternalServerError().body(err.to_string()),
    }
}

/// `GET /jobs`: what the worker runs now.
async fn list_jobs(worker: web::Data<Addr<WorkerActor>>) -> HttpResponse {
    match worker.send(GetState).await {
        Ok(state) => HttpResponse::Ok().json(serde_json::json!({
            "connected": state.connected,
            "running": state.running_jobs,
            "load": state.load,
        })),
        Err(err) => HttpResponse::InternalServerError().body(err.to_string()),
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = Args::parse().bind;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // keep the embedded dev server alive as long as the app
    let mut _devserver: Option<DevServer> = None;
    let options = match WorkerOptions::from_env() {
        Ok(options) => options,
        Err(_) => {
            let server = DevServer::start(DevServerConfig::default()).await?;
            let (key, secret) = DevServerConfig::default().keys[0].clone();
            println!(
                "no LIVEKIT_URL: using an embedded dev server at {}",
                server.ws_url()
            );
            let options = WorkerOptions::new(server.ws_url(), key, secret);
            _devserver = Some(server);
            options
        }
    };
    let worker = Worker::builder(options)
        .max_jobs(50)
        .handler(DemoAgent)
        .start()?;
    println!(
        "POST http://{addr}/jobs?room=NAME to start a job; GET http://{addr}/jobs to list them"
    );
    println!("the worker's own endpoints: http://{addr}/ /ready /worker /metrics");
    let app_worker = worker.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(app_worker.addr()))
            .route("/jobs", web::post().to(start_job))
            .route("/jobs", web::get().to(list_jobs))
            // liveness, readiness, /worker and /metrics, in this same app
            .configure(lkagent::http::configure(app_worker.clone()))
    })
    .disable_signals()
    .bind(addr)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    // Ctrl-C or SIGTERM drains the worker (a second one stops it), then the app
    worker.drain_on_signals(Duration::from_secs(600)).await?;
    handle.stop(true).await;
    Ok(())
}
