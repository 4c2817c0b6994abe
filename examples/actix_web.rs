//! An actix-web application that starts agent jobs from an HTTP endpoint.
//!
//! The worker is an actor in the same process; the endpoint sends it
//! `SpawnJob` and answers with the outcome. With `LIVEKIT_URL`,
//! `LIVEKIT_API_KEY` and `LIVEKIT_API_SECRET` set the worker also serves a
//! LiveKit server; without them it starts an embedded dev server.
//!
//! ```text
//! cargo run --example actix_web
//! curl -X POST 'http://127.0.0.1:8080/jobs?room=support-1&duration_ms=2000'
//! curl http://127.0.0.1:8080/jobs
//! ```

use actix::Addr;
use actix_web::{App, HttpResponse, HttpServer, web};
use lkagent::demo::DemoAgent;
use lkagent::{GetState, SpawnJob, SpawnOutcome, Worker, WorkerActor, WorkerOptions};
use lkagent_devserver::{DevServer, DevServerConfig};
use serde::Deserialize;

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
    let addr = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:8080".into());
    println!(
        "POST http://{addr}/jobs?room=NAME to start a job; GET http://{addr}/jobs to list them"
    );
    HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(worker.clone()))
            .route("/jobs", web::post().to(start_job))
            .route("/jobs", web::get().to(list_jobs))
    })
    .bind(addr)?
    .run()
    .await?;
    Ok(())
}
