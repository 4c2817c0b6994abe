//! The operator's endpoints, on actix-web (cargo feature `http`, on by
//! default):
//!
//! - `GET /` — liveness, as the official workers answer it: 200 while the
//!   worker is sound; 503 once it has given up reaching the server (its
//!   give-up budget), once its supervision gave up, or once it has stopped.
//!   Draining is not a liveness failure: a pod must not be killed mid-drain.
//! - `GET /ready` — 200 only while registered and not draining.
//! - `GET /worker` — the worker as JSON: the official workers' keys
//!   (`agent_name`, `worker_type`, `worker_load`, `active_jobs`,
//!   `sdk_version`, `project_type`) and lkagent's own.
//! - `GET /metrics` — Prometheus text (lkagent's recorder; see
//!   [`telemetry`](crate::telemetry)).
//!
//! `WorkerBuilder::http(addr)` serves them on their own; [`configure`]
//! mounts them in an application's own `App`. What each endpoint answers is
//! decided by the pure functions here ([`liveness`], [`readiness`],
//! [`worker_json`]), from a [`WorkerState`].

use std::future::Future;
use std::pin::Pin;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::state::{MemberStatus, PoolState, WorkerState};

/// A way to ask a worker for its state; `None` once it has stopped.
/// Implemented for `Worker` (and any clonable closure returning such a
/// future).
pub trait StateSource: Clone + Send + 'static {
    /// The worker's state now.
    fn state(&self) -> Pin<Box<dyn Future<Output = Option<WorkerState>>>>;
}

/// Mounts `/`, `/ready`, `/worker` and `/metrics` for `worker`:
/// `App::new().configure(lkagent::http::configure(worker.clone()))`.
/// Installs lkagent's Prometheus recorder, unless the application installed
/// one of its own first (then `/metrics` says so, with 501).
pub fn configure<S: StateSource>(worker: S) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    let _ = crate::telemetry::prometheus();
    move |config: &mut web::ServiceConfig| {
        config
            .app_data(web::Data::new(worker))
            .route("/", web::get().to(live::<S>))
            .route("/ready", web::get().to(ready::<S>))
            .route("/worker", web::get().to(info::<S>))
            .route("/metrics", web::get().to(metrics));
    }
}

/// Serves the endpoints `configure` mounts (a worker's or a pool's) on
/// `listener`, on actix-web's own thread (one worker thread: these are
/// probes and scrapes); the bound address.
pub(crate) fn serve<C>(
    listener: std::net::TcpListener,
    configure: C,
) -> std::io::Result<std::net::SocketAddr>
where
    C: FnOnce(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let addr = listener.local_addr()?;
    let server =
        actix_web::HttpServer::new(move || actix_web::App::new().configure(configure.clone()))
            .workers(1)
            .disable_signals()
            .listen(listener)?
            .run();
    actix_rt::spawn(server);
    tracing::info!(%addr, "serving /, /ready, /worker and /metrics");
    Ok(addr)
}

/// What `GET /` answers: 200 and `OK`, or 503 and why.
pub fn liveness(state: Option<&WorkerState>) -> (u16, String) {
    match state {
        None => (503, "the worker has stopped, or does not answer".into()),
        Some(state) => {
            if let Some(failure) = &state.supervision_failure {
                (503, format!("supervision gave up: {failure}"))
            } else if state.unreachable {
                let why = state
                    .connection_error
                    .as_deref()
                    .unwrap_or("no registration");
                (503, format!("the server is unreachable: {why}"))
            } else {
                (200, "OK".into())
            }
        }
    }
}

/// What `GET /ready` answers: 200 only while registered and not draining.
pub fn readiness(state: Option<&WorkerState>) -> (u16, String) {
    match state {
        Some(state) if state.connected && !state.draining && !state.shutting_down => {
            (200, "ready".into())
        }
        Some(state) if state.draining || state.shutting_down => (503, "draining".into()),
        Some(_) => (503, "not registered".into()),
        None => (503, "the worker has stopped".into()),
    }
}

/// What `GET /worker` answers.
pub fn worker_json(state: &WorkerState) -> serde_json::Value {
    let worker_type = match state.job_type {
        livekit_protocol::JobType::JtRoom => "JT_ROOM",
        livekit_protocol::JobType::JtPublisher => "JT_PUBLISHER",
        livekit_protocol::JobType::JtParticipant => "JT_PARTICIPANT",
    };
    let status = match state.status {
        livekit_protocol::WorkerStatus::WsAvailable => "available",
        livekit_protocol::WorkerStatus::WsFull => "full",
    };
    let jobs = state.jobs;
    json!({
        // the official workers' keys
        "agent_name": state.agent_name,
        "worker_type": worker_type,
        "worker_load": state.load,
        "active_jobs": jobs.starting + jobs.running,
        "sdk_version": env!("CARGO_PKG_VERSION"),
        "project_type": "rust",
        // lkagent's own
        "worker_id": state.worker_id,
        "instance_id": state.instance_id,
        "labels": state.labels,
        "status": status,
        "draining": state.draining || state.shutting_down,
        "connected": state.connected,
        "queued_jobs": jobs.queued,
        "jobs": {
            "offered": jobs.offered,
            "queued": jobs.queued,
            "starting": jobs.starting,
            "running": jobs.running,
            "finishing": jobs.finishing,
        },
        "running_jobs": state.running_jobs,
        "registrations": state.registrations,
        "reconnect_failures": state.reconnect_failures,
        "connection_error": state.connection_error,
        "unreachable": state.unreachable,
        "supervision_failure": state.supervision_failure,
        "store_error": state.store_error,
        "recommended_replicas": state.recommended_replicas,
    })
}

/// A way to ask a `WorkerPool` for its state; `None` once it has stopped.
/// Implemented for `Pool`.
pub trait PoolStateSource: Clone + Send + 'static {
    /// The pool's state now.
    fn state(&self) -> Pin<Box<dyn Future<Output = Option<PoolState>>>>;
}

/// Mounts `/`, `/ready`, `/worker` and `/metrics` for a pool of workers
/// (`WorkerPoolBuilder::http` serves them on their own).
pub fn configure_pool<S: PoolStateSource>(pool: S) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    let _ = crate::telemetry::prometheus();
    move |config: &mut web::ServiceConfig| {
        config
            .app_data(web::Data::new(pool))
            .route("/", web::get().to(pool_live::<S>))
            .route("/ready", web::get().to(pool_ready::<S>))
            .route("/worker", web::get().to(pool_info::<S>))
            .route("/metrics", web::get().to(metrics));
    }
}

/// What a pool's `GET /` answers: 200 while every worker is live or being
/// restarted; 503 once one has failed past its restart policy, or answers
/// 503 itself (see [`liveness`]), or the pool has stopped.
pub fn pool_liveness(state: Option<&PoolState>) -> (u16, String) {
    let Some(state) = state else {
        return (503, "the pool has stopped, or does not answer".into());
    };
    for member in &state.members {
        if let MemberStatus::Failed(why) = &member.status {
            return (503, format!("worker {}: {why}", member.name));
        }
        if let Some(worker) = &member.worker {
            let (code, why) = liveness(Some(worker));
            if code != 200 {
                return (code, format!("worker {}: {why}", member.name));
            }
        }
    }
    (200, "OK".into())
}

/// What a pool's `GET /ready` answers: 200 while every worker that stays
/// (not draining out of the pool) is ready, and there is one.
pub fn pool_readiness(state: Option<&PoolState>) -> (u16, String) {
    let Some(state) = state else {
        return (503, "the pool has stopped".into());
    };
    if state.stopping {
        return (503, "draining".into());
    }
    let mut staying = state
        .members
        .iter()
        .filter(|member| member.status != MemberStatus::Draining)
        .peekable();
    if staying.peek().is_none() {
        return (503, "no workers".into());
    }
    for member in staying {
        let (code, why) = match member.status {
            MemberStatus::Running => readiness(member.worker.as_ref()),
            _ => (503, "not running".into()),
        };
        if code != 200 {
            return (code, format!("worker {}: {why}", member.name));
        }
    }
    (200, "ready".into())
}

/// What a pool's `GET /worker` answers: each worker's [`worker_json`] with
/// its name, labels, status and restarts, and the shared budget.
pub fn pool_json(state: &PoolState) -> serde_json::Value {
    let workers: Vec<_> = state
        .members
        .iter()
        .map(|member| {
            let status = match &member.status {
                MemberStatus::Running => "running",
                MemberStatus::Restarting => "restarting",
                MemberStatus::Draining => "draining",
                MemberStatus::Failed(_) => "failed",
            };
            let failure = match &member.status {
                MemberStatus::Failed(why) => Some(why.as_str()),
                _ => None,
            };
            json!({
                "name": member.name,
                "labels": member.labels,
                "status": status,
                "failure": failure,
                "restarts": member.restarts,
                "worker": member.worker.as_ref().map(worker_json),
            })
        })
        .collect();
    let active: usize = state
        .members
        .iter()
        .filter_map(|member| member.worker.as_ref())
        .map(|worker| worker.jobs.starting + worker.jobs.running)
        .sum();
    let budget = &state.budget;
    json!({
        "workers": workers,
        "active_jobs": active,
        "stopping": state.stopping,
        "budget": {
            "max_jobs": budget.limits.max_jobs,
            "max_memory_mb": budget.limits.max_memory_mb,
            "max_cpu_percent": budget.limits.max_cpu_percent,
            "jobs_in_use": budget.in_use.jobs,
            "memory_mb_in_use": budget.in_use.memory_mb,
            "cpu_percent_in_use": budget.in_use.cpu_percent,
            "used_share": budget.used_share,
        },
    })
}

async fn pool_live<S: PoolStateSource>(pool: web::Data<S>) -> HttpResponse {
    respond(pool_liveness(pool.state().await.as_ref()))
}

async fn pool_ready<S: PoolStateSource>(pool: web::Data<S>) -> HttpResponse {
    respond(pool_readiness(pool.state().await.as_ref()))
}

async fn pool_info<S: PoolStateSource>(pool: web::Data<S>) -> HttpResponse {
    match pool.state().await {
        Some(state) => HttpResponse::Ok().json(pool_json(&state)),
        None => respond((503, "the pool has stopped".into())),
    }
}

fn respond((status, body): (u16, String)) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body)
}

async fn live<S: StateSource>(worker: web::Data<S>) -> HttpResponse {
    respond(liveness(worker.state().await.as_ref()))
}

async fn ready<S: StateSource>(worker: web::Data<S>) -> HttpResponse {
    respond(readiness(worker.state().await.as_ref()))
}

async fn info<S: StateSource>(worker: web::Data<S>) -> HttpResponse {
    match worker.state().await {
        Some(state) => HttpResponse::Ok().json(worker_json(&state)),
        None => respond((503, "the worker has stopped".into())),
    }
}

async fn metrics() -> HttpResponse {
    match crate::telemetry::prometheus() {
        Ok(handle) => {
            handle.run_upkeep();
            HttpResponse::Ok()
                .content_type("text/plain; version=0.0.4; charset=utf-8")
                .body(handle.render())
        }
        Err(why) => respond((501, why.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobCounts;

    fn state() -> WorkerState {
        WorkerState {
            agent_name: "support".into(),
            job_type: livekit_protocol::JobType::JtRoom,
            instance_id: "lkw-1".into(),
            labels: [("region".to_owned(), "eu-west".to_owned())].into(),
            worker_id: Some("AW_1".into()),
            connected: true,
            registrations: 1,
            running_jobs: vec!["AJ_1".into()],
            jobs: JobCounts {
                running: 1,
                queued: 2,
                ..JobCounts::default()
            },
            reserved: 0,
            status: livekit_protocol::WorkerStatus::WsAvailable,
            load: 0.25,
            outbox: 0,
            lost_statuses: 0,
            queued: 2,
            reconnect_failures: 0,
            connection_error: None,
            unreachable: false,
            supervision_failure: None,
            draining: false,
            shutting_down: false,
            store_error: None,
            recommended_replicas: None,
        }
    }

    fn pool(statuses: &[(MemberStatus, Option<WorkerState>)]) -> PoolState {
        PoolState {
            members: statuses
                .iter()
                .enumerate()
                .map(|(n, (status, worker))| crate::state::MemberState {
                    name: format!("w{n}"),
                    labels: Default::default(),
                    status: status.clone(),
                    restarts: 0,
                    worker: worker.clone(),
                })
                .collect(),
            budget: crate::state::BudgetState {
                limits: crate::limits::ResourceLimits {
                    max_jobs: 4,
                    ..Default::default()
                },
                in_use: crate::limits::ResourceRequest::default(),
                used_share: 0.25,
            },
            stopping: false,
        }
    }

    #[test]
    fn a_pool_is_live_while_restarting_and_not_once_a_worker_failed() {
        let up = pool(&[
            (MemberStatus::Running, Some(state())),
            (MemberStatus::Restarting, None),
        ]);
        assert_eq!(pool_liveness(Some(&up)).0, 200);
        let failed = pool(&[
            (MemberStatus::Running, Some(state())),
            (MemberStatus::Failed("stopped 4 times in 60 s".into()), None),
        ]);
        let (code, why) = pool_liveness(Some(&failed));
        assert_eq!(code, 503);
        assert!(why.contains("w1") && why.contains("4 times"), "{why}");
        let unreachable = WorkerState {
            unreachable: true,
            ..state()
        };
        let down = pool(&[(MemberStatus::Running, Some(unreachable))]);
        assert_eq!(pool_liveness(Some(&down)).0, 503);
        assert_eq!(pool_liveness(None).0, 503);
    }

    #[test]
    fn a_pool_is_ready_when_every_staying_worker_is() {
        let ready = pool(&[
            (MemberStatus::Running, Some(state())),
            (MemberStatus::Draining, None),
        ]);
        assert_eq!(pool_readiness(Some(&ready)).0, 200);
        let restarting = pool(&[
            (MemberStatus::Running, Some(state())),
            (MemberStatus::Restarting, None),
        ]);
        assert_eq!(pool_readiness(Some(&restarting)).0, 503);
        assert_eq!(pool_readiness(Some(&pool(&[]))).0, 503);
        let stopping = PoolState {
            stopping: true,
            ..ready
        };
        assert_eq!(pool_readiness(Some(&stopping)), (503, "draining".into()));
    }

    #[test]
    fn the_pools_json_has_each_worker_and_the_budget() {
        let json = pool_json(&pool(&[(MemberStatus::Running, Some(state()))]));
        assert_eq!(json["workers"][0]["name"], "w0");
        assert_eq!(json["workers"][0]["status"], "running");
        assert_eq!(json["workers"][0]["worker"]["labels"]["region"], "eu-west");
        assert_eq!(json["active_jobs"], 1);
        assert_eq!(json["budget"]["max_jobs"], 4);
        assert_eq!(json["budget"]["used_share"], 0.25);
    }

    #[test]
    fn live_until_unreachable_or_given_up_and_draining_is_still_live() {
        let healthy = state();
        assert_eq!(liveness(Some(&healthy)).0, 200);
        let draining = WorkerState {
            draining: true,
            connected: false,
            ..state()
        };
        assert_eq!(liveness(Some(&draining)).0, 200, "a drain is not a failure");
        let unreachable = WorkerState {
            unreachable: true,
            connection_error: Some("connection refused".into()),
            ..state()
        };
        let (code, body) = liveness(Some(&unreachable));
        assert_eq!(code, 503);
        assert!(body.contains("connection refused"), "{body}");
        let gave_up = WorkerState {
            supervision_failure: Some("the queue crashed".into()),
            ..state()
        };
        assert_eq!(liveness(Some(&gave_up)).0, 503);
        assert_eq!(liveness(None).0, 503);
    }

    #[test]
    fn ready_only_while_registered_and_not_draining() {
        assert_eq!(readiness(Some(&state())).0, 200);
        for not_ready in [
            WorkerState {
                connected: false,
                ..state()
            },
            WorkerState {
                draining: true,
                ..state()
            },
            WorkerState {
                shutting_down: true,
                ..state()
            },
        ] {
            assert_eq!(readiness(Some(&not_ready)).0, 503, "{not_ready:?}");
        }
        assert_eq!(readiness(None).0, 503);
    }

    #[test]
    fn the_worker_json_has_the_official_keys_and_ours() {
        let json = worker_json(&state());
        for key in [
            "agent_name",
            "worker_type",
            "worker_load",
            "active_jobs",
            "sdk_version",
            "project_type",
            "worker_id",
            "status",
            "draining",
            "connected",
            "queued_jobs",
            "jobs",
        ] {
            assert!(json.get(key).is_some(), "missing {key}: {json}");
        }
        assert_eq!(json["worker_type"], "JT_ROOM");
        assert_eq!(json["active_jobs"], 1);
        assert_eq!(json["jobs"]["queued"], 2);
        assert_eq!(json["sdk_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(json["status"], "available");
    }
}
