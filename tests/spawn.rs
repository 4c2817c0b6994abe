//! Local jobs by message: `SpawnJob` from another actor runs a job through
//! the same handler and supervision as a dispatched one, its statuses reach
//! subscribers (and not the server, which does not know it), and bad or
//! excess requests are refused with a reason.

mod common;

use std::time::Duration;

use actix::prelude::*;
use common::*;
use lkagent::demo::{DemoAgent, FAIL_TEXT};
use lkagent::proto::JobStatus;
use lkagent::{
    GetState, JobEvent, JobOrigin, SpawnJob, SpawnOutcome, SpawnRefusal, SubscribeJobEvents,
    WorkerActor,
};

/// An application actor that starts jobs on a worker and keeps the events it
/// hears, the way an actix app embedding lkagent would.
struct App {
    worker: Addr<WorkerActor>,
    events: Vec<JobEvent>,
}

impl Actor for App {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        self.worker
            .do_send(SubscribeJobEvents(ctx.address().recipient()));
    }
}

impl Handler<JobEvent> for App {
    type Result = ();

    fn handle(&mut self, event: JobEvent, _ctx: &mut Self::Context) {
        self.events.push(event);
    }
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

/// The events the app has heard for a job.
#[derive(Message)]
#[rtype(result = "Vec<(JobStatus, String, JobOrigin)>")]
struct EventsOf(String);

impl Handler<EventsOf> for App {
    type Result = MessageResult<EventsOf>;

    fn handle(&mut self, msg: EventsOf, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.events
                .iter()
                .filter(|e| e.job_id == msg.0)
                .map(|e| (e.status, e.error.clone(), e.origin))
                .collect(),
        )
    }
}

async fn wait_events(
    app: &Addr<App>,
    job_id: &str,
    count: usize,
) -> Vec<(JobStatus, String, JobOrigin)> {
    let start = std::time::Instant::now();
    loop {
        let events = app.send(EventsOf(job_id.to_owned())).await.unwrap();
        if events.len() >= count {
            return events;
        }
        assert!(start.elapsed() < DEADLINE, "{job_id}: only {events:?}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
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
    let app = App {
        worker: worker.clone(),
        events: Vec::new(),
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

    let events = wait_events(&app, &ok, 2).await;
    assert_eq!(
        events,
        [
            (JobStatus::JsRunning, String::new(), JobOrigin::Local),
            (JobStatus::JsSuccess, String::new(), JobOrigin::Local),
        ]
    );
    let events = wait_events(&app, &failing, 2).await;
    assert_eq!(
        events[1],
        (JobStatus::JsFailed, FAIL_TEXT.to_owned(), JobOrigin::Local)
    );

    // the server never heard of them, but server jobs reach subscribers too
    assert!(server.job(&ok).await.is_none());
    let dispatched = serve_quick_job(&server, "r").await;
    let events = wait_events(&app, &dispatched.id, 2).await;
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
