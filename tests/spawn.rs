//! Local jobs by message: `SpawnJob` from another actor runs a job through
//! the same handler and supervision as a dispatched one, its statuses reach
//! subscribers (and not the server, which does not know it), and bad or
//! excess requests are refused with a reason.

mod common;

use actix::prelude::*;
use common::*;
use lkagent::demo::{DemoAgent, FAIL_TEXT};
use lkagent::proto::JobStatus;
use lkagent::{GetState, JobOrigin, SpawnJob, SpawnOutcome, SpawnRefusal, WorkerActor};

/// An application actor that starts jobs on a worker, the way an actix app
/// embedding lkagent would.
struct App {
    worker: Addr<WorkerActor>,
}

impl Actor for App {
    type Context = Context<Self>;
}

/// Asks the app to start a job on its worker.
#[derive(Message)]
#[rtype(result = "SpawnOutcome")]
struct Start(SpawnJob);

impl Handler<Start> for App {
    type Result = ResponseFuture<SpawnOutcome>;

    fn handle(&mut self, msg: Start, _ctx: &mut Self::Context) -> Self::Result {
        let worker = self.worker.clone();
        Box::pin(async move { worker.send(msg.0).await.expect("worker alive") })
    }
}

/// Waits until the log holds `count` events of `job_id`, and returns them.
async fn events_of(
    log: &Addr<EventLog>,
    job_id: &str,
    count: usize,
) -> Vec<(JobStatus, String, JobOrigin)> {
    let events = wait_events(log, job_id, |events| {
        events.iter().filter(|e| e.job_id == job_id).count() >= count
    })
    .await;
    events
        .into_iter()
        .filter(|e| e.job_id == job_id)
        .map(|e| (e.status, e.error, e.origin))
        .collect()
}

fn started(outcome: SpawnOutcome) -> String {
    match outcome {
        SpawnOutcome::Started { job_id } => job_id,
        other => panic!("not started: {other:?}"),
    }
}

#[actix_rt::test]
async fn spawn_job_from_another_actor_runs_end_to_end() {
    let server = devserver().await;
    let worker = worker(options(&server), DemoAgent);
    registered(&worker).await;
    let log = EventLog::start(&worker).await;
    let app = App {
        worker: worker.addr(),
    }
    .start();

    let ok = started(
        app.send(Start(
            SpawnJob::new("support-7").metadata(r#"{"duration_ms": 50}"#),
        ))
        .await
        .unwrap(),
    );
    assert!(ok.starts_with("LJ_"), "{ok}");
    let failing = started(
        app.send(Start(
            SpawnJob::new("support-8")
                .id("my-job-1")
                .metadata(r#"{"duration_ms": 10, "outcome": "fail"}"#),
        ))
        .await
        .unwrap(),
    );
    assert_eq!(failing, "my-job-1");

    let events = events_of(&log, &ok, 2).await;
    assert_eq!(
        events,
        [
            (JobStatus::JsRunning, String::new(), JobOrigin::Local),
            (JobStatus::JsSuccess, String::new(), JobOrigin::Local),
        ]
    );
    let events = events_of(&log, &failing, 2).await;
    assert_eq!(
        events[1],
        (JobStatus::JsFailed, FAIL_TEXT.to_owned(), JobOrigin::Local)
    );

    // the server never heard of them, but server jobs reach subscribers too
    assert!(server.job(&ok).await.is_none());
    let dispatched = serve_quick_job(&server, "r").await;
    let events = events_of(&log, &dispatched.id, 2).await;
    assert!(
        events
            .iter()
            .all(|(_, _, origin)| *origin == JobOrigin::Server),
        "{events:?}"
    );
}

#[actix_rt::test]
async fn bad_and_excess_spawns_are_refused_with_a_reason() {
    let server = devserver().await;
    let mut options = options(&server).max_jobs(1);
    options.queue_capacity = 0; // no queue: a busy worker refuses
    let worker = worker(options, DemoAgent);
    registered(&worker).await;

    let refused = |outcome| match outcome {
        SpawnOutcome::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    };
    assert!(matches!(
        refused(worker.send(SpawnJob::new("  ")).await.unwrap()),
        SpawnRefusal::Invalid(_)
    ));
    let long = SpawnJob::new("r")
        .id("long")
        .metadata(r#"{"duration_ms": 60000}"#);
    started(worker.send(long.clone()).await.unwrap());
    assert_eq!(
        refused(worker.send(long).await.unwrap()),
        SpawnRefusal::Duplicate("long".into())
    );
    assert_eq!(
        refused(worker.send(SpawnJob::new("other")).await.unwrap()),
        SpawnRefusal::AtCapacity
    );
    let state = worker.send(GetState).await.unwrap();
    assert_eq!(state.running_jobs, ["long"]);
}
