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

use crate::state::WorkerState;

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
    })
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
        }
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
