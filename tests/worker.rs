//! The worker end to end against the dev server over loopback: register,
//! accept, run, report; failures, panics, termination, capacity, a dropped
//! connection, hostile frames, and authentication.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use lkagent::demo::{DemoAgent, FAIL_TEXT, PANIC_TEXT};
use lkagent::proto::{self, JobStatus, WorkerStatus};
use lkagent::{JobContext, JobError, JobHandler};
use lkagent_devserver::{DispatchError, DispatchRequest, RawFrame};

fn demo_job(room: &str, metadata: &str) -> DispatchRequest {
    DispatchRequest::room(room).metadata(metadata)
}

#[actix_rt::test]
async fn registers_with_its_agent_name() {
    let server = devserver().await;
    let worker = worker(options(&server).agent_name("support-bot"), DemoAgent);
    let worker_id = registered(&worker).await;
    assert!(worker_id.starts_with("AW_"), "{worker_id}");
    let workers = server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| w.id == worker_id && w.connected)
        })
        .await
        .expect("the server sees the worker");
    let seen = workers.iter().find(|w| w.id == worker_id).unwrap();
    assert_eq!(seen.agent_name, "support-bot");
    assert_eq!(seen.job_type, proto::JobType::JtRoom);
    assert_eq!(seen.status, WorkerStatus::WsAvailable);
}

#[actix_rt::test]
async fn a_dispatched_job_runs_and_reports_running_then_success() {
    let server = devserver().await;
    let worker = worker(options(&server), DemoAgent);
    let worker_id = registered(&worker).await;
    let job = server
        .dispatch(demo_job("lobby", r#"{"duration_ms": 100}"#))
        .await
        .expect("dispatched");
    assert_eq!(job.worker_id.as_deref(), Some(worker_id.as_str()));
    assert_eq!(job.participant_identity, format!("agent-{}", job.id));
    let done = wait_final(&server, &job.id).await;
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess]
    );
    assert!(done.updates.iter().all(|u| u.error.is_empty()));
    wait_worker(&worker, "the job to leave the table", |s| {
        s.running_jobs.is_empty()
    })
    .await;
}

#[actix_rt::test]
async fn a_failing_handler_reports_failed_with_its_text() {
    let server = devserver().await;
    let worker = worker(options(&server), DemoAgent);
    registered(&worker).await;
    let job = server
        .dispatch(demo_job("r", r#"{"duration_ms": 10, "outcome": "fail"}"#))
        .await
        .unwrap();
    let done = wait_final(&server, &job.id).await;
    let last = done.updates.last().unwrap();
    assert_eq!(last.status, JobStatus::JsFailed);
    assert_eq!(last.error, FAIL_TEXT);
}

#[actix_rt::test]
async fn a_panicking_handler_fails_its_job_and_the_worker_serves_on() {
    let server = devserver().await;
    let worker = worker(options(&server), DemoAgent);
    let worker_id = registered(&worker).await;
    let job = server
        .dispatch(demo_job("r", r#"{"duration_ms": 10, "outcome": "panic"}"#))
        .await
        .unwrap();
    let done = wait_final(&server, &job.id).await;
    let last = done.updates.last().unwrap();
    assert_eq!(last.status, JobStatus::JsFailed);
    assert!(last.error.contains(PANIC_TEXT), "{}", last.error);

    serve_quick_job(&server, "r2").await;
    // the same connection served both: the panic did not touch it
    let state = wait_worker(&worker, "idle", |s| s.running_jobs.is_empty()).await;
    assert_eq!(state.worker_id.as_deref(), Some(worker_id.as_str()));
    assert_eq!(state.registrations, 1);
}

/// Runs until cancelled, counting `on_terminated` calls.
#[derive(Clone, Default)]
struct UntilTerminated {
    terminated: Arc<AtomicUsize>,
    saw_cancel: Arc<AtomicUsize>,
}

impl JobHandler for UntilTerminated {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        ctx.cancelled().await;
        self.saw_cancel.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn on_terminated(&self, _job: &proto::Job) {
        self.terminated.fetch_add(1, Ordering::SeqCst);
    }
}

#[actix_rt::test]
async fn termination_cancels_the_job_and_calls_on_terminated_once() {
    let server = devserver().await;
    let handler = UntilTerminated::default();
    let worker = worker(options(&server), handler.clone());
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    wait_job(&server, &job.id, "RUNNING", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;

    server.terminate_job(&job.id).await.unwrap();
    wait_worker(&worker, "the terminated job to end", |s| {
        s.running_jobs.is_empty()
    })
    .await;
    assert_eq!(handler.terminated.load(Ordering::SeqCst), 1);
    assert_eq!(handler.saw_cancel.load(Ordering::SeqCst), 1);
    let done = wait_final(&server, &job.id).await;
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess]
    );

    // a repeated termination of the ended job changes nothing
    let _ = server.terminate_job(&job.id).await;
    let state = wait_worker(&worker, "still idle", |s| s.running_jobs.is_empty()).await;
    assert!(state.connected);
    assert_eq!(handler.terminated.load(Ordering::SeqCst), 1);
}

#[actix_rt::test]
async fn a_full_worker_answers_unavailable_and_reports_full() {
    let server = devserver().await;
    let worker = worker(options(&server).max_jobs(1), DemoAgent);
    let worker_id = registered(&worker).await;
    let long = server
        .dispatch(demo_job("busy", r#"{"duration_ms": 60000}"#))
        .await
        .unwrap();
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == worker_id && w.status == WorkerStatus::WsFull && w.load == 1.0)
        })
        .await
        .expect("the server sees FULL with load 1");

    // the server itself no longer picks a FULL worker
    assert_eq!(
        server
            .dispatch(DispatchRequest::room("other"))
            .await
            .unwrap_err(),
        DispatchError::NoWorkers
    );
    // asked anyway, the worker declines by itself
    let refused = server
        .dispatch(DispatchRequest::room("forced").to_worker(worker_id.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        DispatchError::Declined {
            tried: vec![worker_id.clone()]
        }
    );

    // when the job ends the worker is AVAILABLE again and takes work
    server.terminate_job(&long.id).await.unwrap();
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| {
                w.id == worker_id && w.status == WorkerStatus::WsAvailable && w.job_count == 0
            })
        })
        .await
        .expect("AVAILABLE after the job ends");
    serve_quick_job(&server, "next").await;
}

#[actix_rt::test]
async fn a_job_survives_a_dropped_connection_and_reports_once_on_the_new_one() {
    let server = devserver().await;
    let worker = worker(options(&server), DemoAgent);
    let first_id = registered(&worker).await;
    let job = server
        .dispatch(demo_job("r", r#"{"duration_ms": 1500}"#))
        .await
        .unwrap();
    wait_job(&server, &job.id, "RUNNING", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;

    assert_eq!(server.drop_connections().await, 1);
    let state = wait_worker(&worker, "a new registration", |s| {
        s.connected && s.registrations == 2
    })
    .await;
    let second_id = state.worker_id.unwrap();
    assert_ne!(first_id, second_id, "a reconnect gets a new worker id");
    assert_eq!(
        state.running_jobs,
        std::slice::from_ref(&job.id),
        "the job kept running: {:?}",
        server.job(&job.id).await
    );

    // the new connection claims the running job
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == second_id && w.migrated_jobs.contains(&job.id))
        })
        .await
        .expect("migrate_job on the new connection");

    let done = wait_final(&server, &job.id).await;
    let last = done.updates.last().unwrap();
    assert_eq!(last.status, JobStatus::JsSuccess);
    assert_eq!(
        last.worker_id, second_id,
        "the final status came on the new connection"
    );

    // a later job's final status proves every earlier message has arrived:
    // the first job still has exactly one final status
    let later = server
        .dispatch(demo_job("r2", r#"{"duration_ms": 10}"#))
        .await
        .unwrap();
    wait_final(&server, &later.id).await;
    let job = server.job(&job.id).await.unwrap();
    assert_eq!(
        job.updates.iter().filter(|u| is_final(u.status)).count(),
        1,
        "{:?}",
        job.updates
    );
}

#[actix_rt::test]
async fn statuses_of_a_job_that_ends_during_an_outage_are_delivered_after_it() {
    let server = devserver().await;
    // slow reconnects, so the job ends while the worker is disconnected
    let worker = worker(
        options(&server).reconnect(lkagent::Backoff {
            initial: std::time::Duration::from_millis(800),
            max: std::time::Duration::from_millis(800),
            jitter: 0.0,
        }),
        DemoAgent,
    );
    registered(&worker).await;
    let job = server
        .dispatch(demo_job("r", r#"{"duration_ms": 200}"#))
        .await
        .unwrap();
    wait_job(&server, &job.id, "RUNNING", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;
    server.drop_connections().await;
    // observed while disconnected: the job ended and its status waits
    let outage = wait_worker(&worker, "the job to end offline", |s| {
        !s.connected && s.running_jobs.is_empty()
    })
    .await;
    assert_eq!(outage.outbox, 1, "{outage:?}");

    let state = wait_worker(&worker, "reconnect", |s| {
        s.connected && s.registrations == 2
    })
    .await;
    let done = wait_final(&server, &job.id).await;
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess]
    );
    assert_eq!(done.updates[1].worker_id, state.worker_id.unwrap());
    assert_eq!(
        wait_worker(&worker, "outbox flushed", |s| s.outbox == 0)
            .await
            .outbox,
        0
    );
}

#[actix_rt::test]
async fn a_server_that_stops_answering_pings_is_left_for_a_new_connection() {
    let server = devserver_with(lkagent_devserver::DevServerConfig {
        answer_pings: false,
        ..Default::default()
    })
    .await;
    let worker = worker(options(&server), DemoAgent);
    let first = registered(&worker).await;
    // no pong within the 1 s timeout: the worker gives up on the connection
    // and registers anew
    let state = wait_worker(&worker, "a re-registration", |s| {
        s.connected && s.registrations >= 2
    })
    .await;
    assert_ne!(state.worker_id.unwrap(), first);
    let workers = server.workers().await;
    assert!(
        workers.iter().any(|w| w.id == first && !w.connected),
        "{workers:?}"
    );
}

#[actix_rt::test]
async fn a_fragmented_message_is_reassembled_and_an_oversized_one_renews_the_connection() {
    let server = devserver().await;
    let worker = worker(options(&server), DemoAgent);
    let worker_id = registered(&worker).await;
    let job = server
        .dispatch(demo_job("r", r#"{"duration_ms": 60000}"#))
        .await
        .unwrap();
    wait_worker(&worker, "the job", |s| s.running_jobs.len() == 1).await;

    // a termination in three fragments, with pings between them
    let frame = lkagent::protocol::encode_server(proto::server_message::Message::Termination(
        proto::JobTermination {
            job_id: job.id.clone(),
        },
    ));
    let (a, rest) = frame.split_at(2);
    let (b, c) = rest.split_at(rest.len() / 2);
    server
        .inject_frame(
            &worker_id,
            RawFrame::Fragmented(vec![a.to_vec(), b.to_vec(), c.to_vec()]),
        )
        .await
        .unwrap();
    wait_worker(&worker, "the reassembled termination", |s| {
        s.running_jobs.is_empty()
    })
    .await;
    assert_eq!(
        wait_final(&server, &job.id)
            .await
            .updates
            .last()
            .unwrap()
            .status,
        JobStatus::JsSuccess
    );

    // an assignment of 3 MiB in 1 MiB fragments: over the bound, a protocol
    // error — the connection is renewed rather than the job lost in silence
    let mut oversized = room_job("AJ_oversized", "big");
    oversized.metadata = "x".repeat(3 << 20);
    let frame = lkagent::protocol::encode_server(proto::server_message::Message::Assignment(
        proto::JobAssignment {
            job: Some(oversized),
            ..Default::default()
        },
    ));
    let fragments = frame.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    server
        .inject_frame(&worker_id, RawFrame::Fragmented(fragments))
        .await
        .unwrap();
    let state = wait_worker(&worker, "a new connection", |s| {
        s.connected && s.registrations == 2
    })
    .await;
    assert_ne!(state.worker_id.as_deref(), Some(worker_id.as_str()));
    serve_quick_job(&server, "after").await;
}

#[actix_rt::test]
async fn hostile_frames_do_not_stop_the_worker() {
    let server = devserver().await;
    let worker = worker(options(&server), DemoAgent);
    let mut worker_id = registered(&worker).await;

    // an empty message is harmless: ignored, same connection
    server
        .inject_frame(&worker_id, RawFrame::Binary(Vec::new()))
        .await
        .unwrap();
    serve_quick_job(&server, "a").await;
    assert_eq!(
        registered(&worker).await,
        worker_id,
        "an empty frame keeps the connection"
    );

    // garbage and an oversized frame break the stream: reconnect, then serve
    let garbage = RawFrame::Binary(vec![0xff, 0xff, 0xff, 0xff, 0x0f]);
    let huge = RawFrame::Binary(vec![0x0a; 3 << 20]);
    for (registrations, frame) in [(2, garbage), (3, huge)] {
        server.inject_frame(&worker_id, frame).await.unwrap();
        let state = wait_worker(&worker, "reconnect after a bad frame", |s| {
            s.connected && s.registrations == registrations
        })
        .await;
        assert_ne!(state.worker_id.as_deref(), Some(worker_id.as_str()));
        worker_id = state.worker_id.unwrap();
        let job = serve_quick_job(&server, "b").await;
        assert_eq!(job.worker_id.as_deref(), Some(worker_id.as_str()));
    }
}

#[actix_rt::test]
async fn a_worker_with_the_wrong_secret_is_refused_and_never_registers() {
    let server = devserver().await;
    let bad = lkagent::WorkerOptions::new(server.ws_url(), KEY, "not-the-secret");
    let worker = worker(bad, DemoAgent);
    // the connection actor keeps retrying; meanwhile no worker registers
    let good = worker_for_comparison(&server).await;
    let workers = server.workers().await;
    assert_eq!(
        workers.iter().filter(|w| w.connected).count(),
        1,
        "{workers:?}"
    );
    assert_eq!(workers[0].id, good);
    let state = worker.send(lkagent::GetState).await.unwrap();
    assert!(!state.connected);
    assert_eq!(state.registrations, 0);
}

async fn worker_for_comparison(server: &lkagent_devserver::DevServer) -> String {
    let good = worker(options(server), DemoAgent);
    registered(&good).await
}

#[actix_rt::test]
async fn the_dev_server_answers_a_bad_token_with_401() {
    let _ = rustls::crypto::ring::default_provider().install_default(); // awc's TLS config needs one
    let server = devserver().await;
    let url = lkagent::protocol::agent_url(&server.ws_url()).unwrap();
    let forged = lkagent::auth::Credentials::new(KEY, "wrong-secret")
        .worker_token(std::time::Duration::from_secs(60))
        .unwrap();
    for token in [None, Some(forged.as_str()), Some("not-a-jwt")] {
        let mut request = awc::Client::new().ws(url.as_str());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        match request.connect().await {
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                assert_eq!(status.as_u16(), 401, "token {token:?}")
            }
            Err(other) => panic!("unexpected error for {token:?}: {other}"),
            Ok(_) => panic!("token {token:?} was accepted"),
        }
    }
}

/// Runs until cancelled, then fails on its way out (a stream that broke as
/// it was torn down) — or, for a room named `clean`, returns `Ok`.
struct FailsOnTheWayOut;

impl JobHandler for FailsOnTheWayOut {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        ctx.cancelled().await;
        if ctx.room_name() == "clean" {
            Ok(())
        } else {
            Err(JobError::failed("the transcript could not be flushed"))
        }
    }
}

#[actix_rt::test]
async fn a_terminated_job_whose_handler_fails_is_failed_with_its_error() {
    let server = devserver().await;
    let worker = worker(options(&server), FailsOnTheWayOut);
    registered(&worker).await;
    let log = EventLog::start(&worker).await;
    let mut ids = Vec::new();
    for room in ["broken", "clean"] {
        let job = server.dispatch(DispatchRequest::room(room)).await.unwrap();
        ids.push(job.id.clone());
        wait_worker(&worker, "the job running", |s| {
            s.running_jobs.contains(&job.id)
        })
        .await;
        server.terminate_job(&job.id).await.unwrap();
    }
    let final_of = |events: &[lkagent::JobEvent], id: &str| {
        events
            .iter()
            .filter(|e| e.job_id == id && is_final(e.status))
            .map(|e| (e.status, e.error.clone()))
            .collect::<Vec<_>>()
    };
    let events = wait_events(&log, "both final", |events| {
        ids.iter().all(|id| !final_of(events, id).is_empty())
    })
    .await;
    assert_eq!(
        final_of(&events, &ids[0]),
        [(
            JobStatus::JsFailed,
            "the transcript could not be flushed".to_owned()
        )],
        "the handler's error is reported, once"
    );
    assert_eq!(
        final_of(&events, &ids[1]),
        [(JobStatus::JsSuccess, String::new())],
        "a handler that returns Ok after a termination succeeded"
    );
}
