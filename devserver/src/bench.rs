//! Benchmark endpoints: the server's side of `examples/bench.rs` in the
//! lkagent crate, timed where the server stands.
//!
//! - `POST /dev/bench/jobs` `{"agent_name", "count"?, "duration_ms"?,
//!   "concurrency", "metadata", "wait_running", "wait_final"}`: dispatches
//!   `count` jobs (or as many as it can for `duration_ms`), at most
//!   `concurrency` placements at once, optionally waits until every one has
//!   reported RUNNING and until every one has a final status, and answers
//!   how long each took and the latencies the server measured: the
//!   availability round trip (request written → answer read) and the job
//!   start (assignment written → RUNNING read), in microseconds, timed by
//!   the worker's session at its socket.
//! - `POST /dev/bench/terminate` `{"agent_name"}`: terminates every running
//!   job of that agent (ended on the server once the termination is
//!   written, as the real server does) and answers how many.
//! - `POST /dev/bench/reconnects` `{"agent_name", "drops", "interval_ms"}`:
//!   drops the worker's connection `drops` times, `interval_ms` apart, each
//!   time timing how long until a worker of that agent has registered again.
//! - `GET /dev/bench/workers`: the workers, in brief.
//! - `GET /dev/echo`: a websocket that sends back every binary frame — the
//!   floor a worker's round trip is measured against.
//!
//! All but the echo want a token with the `roomAdmin` grant.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::{Actor, StreamHandler};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use crate::messages::{
    BenchTimings, Dispatch, DropConnections, JobProgress, ListWorkers, TerminateAll,
};
use crate::model::{ApiError, DispatchRequest};
use crate::server::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::twirp::endpoint;
    cfg.service(endpoint("/dev/bench/jobs", web::post().to(jobs)))
        .service(endpoint("/dev/bench/terminate", web::post().to(terminate)))
        .service(endpoint(
            "/dev/bench/reconnects",
            web::post().to(reconnects),
        ))
        .service(endpoint("/dev/bench/workers", web::get().to(workers)))
        .service(endpoint("/dev/echo", web::get().to(echo)));
}

/// The most a single wait may last: a benchmark that stalls fails loudly.
const BENCH_DEADLINE: Duration = Duration::from_secs(300);
/// The most jobs one request dispatches.
const MAX_COUNT: usize = 1_000_000;
/// The most placements in flight at once.
const MAX_CONCURRENCY: usize = 1024;
/// The longest a timed run may last.
const MAX_DURATION_MS: u64 = 600_000;
/// The most connection drops one request makes.
const MAX_DROPS: usize = 1000;
/// The longest pause between two drops.
const MAX_INTERVAL_MS: u64 = 60_000;

/// p50, p99, max and count of a set of samples.
#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    /// The median.
    pub p50: u32,
    /// The 99th percentile.
    pub p99: u32,
    /// The largest.
    pub max: u32,
    /// How many.
    pub n: usize,
}

/// Summarises `samples` (sorted here).
pub fn summary(mut samples: Vec<u32>) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| -> u32 {
        if samples.is_empty() {
            return 0;
        }
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index.min(samples.len() - 1)]
    };
    Summary {
        p50: at(0.5),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or(0),
        n: samples.len(),
    }
}

/// A request the endpoint refuses, and why.
fn invalid(why: &str) -> HttpResponse {
    crate::twirp::error_response(&ApiError::invalid_argument(why))
}

/// A run that did not finish within [`BENCH_DEADLINE`].
fn stalled(what: &str) -> HttpResponse {
    let why = format!("{what} within {BENCH_DEADLINE:?}");
    crate::twirp::error_response(&ApiError::internal(&why))
}

/// Allows a token with the `roomAdmin` grant.
fn authorized(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let claims = crate::twirp::claims(req, state)?;
    if claims.video.room_admin {
        Ok(())
    } else {
        Err(ApiError::unauthenticated("permission denied"))
    }
}

#[derive(Deserialize)]
struct JobsBody {
    #[serde(default)]
    agent_name: String,
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(default = "one")]
    concurrency: usize,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    wait_running: bool,
    #[serde(default)]
    wait_final: bool,
}

fn one() -> usize {
    1
}

async fn jobs(
    req: HttpRequest,
    body: web::Json<JobsBody>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(denied) = authorized(&req, &state) {
        return crate::twirp::error_response(&denied);
    }
    let body = body.into_inner();
    if body.count.is_none() && body.duration_ms.is_none() {
        return invalid("give a count or a duration_ms");
    }
    if body.count.is_some_and(|c| c > MAX_COUNT) {
        return invalid(&format!("count is at most {MAX_COUNT}"));
    }
    if body.duration_ms.is_some_and(|d| d > MAX_DURATION_MS) {
        return invalid(&format!("duration_ms is at most {MAX_DURATION_MS}"));
    }
    if !(1..=MAX_CONCURRENCY).contains(&body.concurrency) {
        return invalid(&format!("concurrency is 1 to {MAX_CONCURRENCY}"));
    }
    let dispatcher = state.dispatcher.clone();
    let _ = dispatcher.send(BenchTimings { reset: true }).await;
    let start = Instant::now();
    let until = body.duration_ms.map(|ms| start + Duration::from_millis(ms));
    let limit = body.count.unwrap_or(usize::MAX);
    let issued = Rc::new(Cell::new(0usize));
    let ids = Rc::new(RefCell::new(Vec::new()));
    let refused = Rc::new(Cell::new(0usize));
    let placers = (0..body.concurrency).map(|_| {
        let (dispatcher, issued, ids, refused) = (
            dispatcher.clone(),
            issued.clone(),
            ids.clone(),
            refused.clone(),
        );
        let (agent_name, metadata) = (body.agent_name.clone(), body.metadata.clone());
        async move {
            loop {
                if issued.get() >= limit || until.is_some_and(|u| Instant::now() >= u) {
                    return;
                }
                issued.set(issued.get() + 1);
                let (reply, outcome) = oneshot::channel();
                let request = DispatchRequest::room(format!("bench-{}", issued.get()))
                    .agent_name(agent_name.clone())
                    .metadata(metadata.clone());
                if dispatcher.send(Dispatch { request, reply }).await.is_err() {
                    return;
                }
                match outcome.await {
                    Ok(Ok(job)) => ids.borrow_mut().push(job.id),
                    _ => refused.set(refused.get() + 1),
                }
            }
        }
    });
    futures_util::future::join_all(placers).await;
    let accept_ms = start.elapsed().as_secs_f64() * 1e3;
    let ids = ids.take();
    let mut running_ms = None;
    let mut done_ms = None;
    if body.wait_running {
        if !wait_for(&dispatcher, &ids, |p| p.started).await {
            return stalled("not every job reported RUNNING");
        }
        running_ms = Some(start.elapsed().as_secs_f64() * 1e3);
    }
    if body.wait_final {
        if !wait_for(&dispatcher, &ids, |p| p.ended).await {
            return stalled("not every job ended");
        }
        done_ms = Some(start.elapsed().as_secs_f64() * 1e3);
    }
    let (availability, job_start) = dispatcher
        .send(BenchTimings { reset: false })
        .await
        .unwrap_or_default();
    HttpResponse::Ok().json(json!({
        "dispatched": ids.len(),
        "refused": refused.get(),
        "accept_ms": accept_ms,
        "running_ms": running_ms,
        "done_ms": done_ms,
        "availability_us": summary(availability),
        "job_start_us": summary(job_start),
    }))
}

#[derive(Deserialize)]
struct AgentBody {
    #[serde(default)]
    agent_name: String,
    #[serde(default)]
    drops: usize,
    #[serde(default)]
    interval_ms: u64,
}

async fn terminate(
    req: HttpRequest,
    body: web::Json<AgentBody>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(denied) = authorized(&req, &state) {
        return crate::twirp::error_response(&denied);
    }
    let start = Instant::now();
    let ids = state
        .dispatcher
        .send(TerminateAll {
            agent_name: body.agent_name.clone(),
        })
        .await
        .unwrap_or_default();
    // ended on the server as soon as the termination is written, as the
    // real server does; the worker's side shows in its job count
    HttpResponse::Ok().json(json!({
        "terminated": ids.len(),
        "done_ms": start.elapsed().as_secs_f64() * 1e3,
    }))
}

/// Waits until `count` of the progress of `ids` covers them all; false if
/// [`BENCH_DEADLINE`] passes first.
async fn wait_for(
    dispatcher: &actix::Addr<crate::dispatcher::Dispatcher>,
    ids: &[String],
    count: impl Fn(crate::messages::Progress) -> usize,
) -> bool {
    let ids: std::sync::Arc<[String]> = ids.into();
    let deadline = Instant::now() + BENCH_DEADLINE;
    loop {
        let progress = dispatcher
            .send(JobProgress(ids.clone()))
            .await
            .unwrap_or_default();
        if count(progress) >= ids.len() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The connected workers of `agent_name`, by id.
async fn connected(state: &AppState, agent_name: &str) -> Vec<String> {
    state
        .dispatcher
        .send(ListWorkers)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|w| w.connected && w.agent_name == agent_name)
        .map(|w| w.id)
        .collect()
}

async fn reconnects(
    req: HttpRequest,
    body: web::Json<AgentBody>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(denied) = authorized(&req, &state) {
        return crate::twirp::error_response(&denied);
    }
    if body.drops > MAX_DROPS {
        return invalid(&format!("drops is at most {MAX_DROPS}"));
    }
    if body.interval_ms > MAX_INTERVAL_MS {
        return invalid(&format!("interval_ms is at most {MAX_INTERVAL_MS}"));
    }
    let mut samples = Vec::new();
    for drop in 0..body.drops {
        if drop > 0 {
            actix_rt::time::sleep(Duration::from_millis(body.interval_ms)).await;
        }
        let before = connected(&state, &body.agent_name).await;
        if before.is_empty() {
            return invalid("no connected worker of that agent");
        }
        let _ = state.dispatcher.send(DropConnections).await;
        let start = Instant::now();
        loop {
            let now = connected(&state, &body.agent_name).await;
            if now.iter().any(|id| !before.contains(id)) {
                break;
            }
            if start.elapsed() > BENCH_DEADLINE {
                return stalled("no worker registered again");
            }
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    HttpResponse::Ok().json(json!({ "reconnect_us": summary(samples) }))
}

async fn workers(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(denied) = authorized(&req, &state) {
        return crate::twirp::error_response(&denied);
    }
    let list: Vec<_> = state
        .dispatcher
        .send(ListWorkers)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|w| {
            json!({
                "id": w.id,
                "agent_name": w.agent_name,
                "connected": w.connected,
                "job_count": w.job_count,
                "load": w.load,
            })
        })
        .collect();
    HttpResponse::Ok().json(list)
}

/// Sends back every binary frame.
struct Echo;

impl Actor for Echo {
    type Context = ws::WebsocketContext<Self>;
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Echo {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Binary(bytes)) => ctx.binary(bytes),
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                actix::ActorContext::stop(ctx);
            }
            Ok(_) => {}
            Err(_) => actix::ActorContext::stop(ctx),
        }
    }
}

async fn echo(req: HttpRequest, stream: web::Payload) -> Result<HttpResponse, actix_web::Error> {
    ws::start(Echo, &req, stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_set() {
        let s = summary((1..=100).collect());
        assert_eq!((s.p50, s.p99, s.max, s.n), (51, 99, 100, 100));
        assert_eq!(
            summary(Vec::new()),
            Summary {
                p50: 0,
                p99: 0,
                max: 0,
                n: 0
            }
        );
        assert_eq!(summary(vec![7]).p99, 7);
    }
}
