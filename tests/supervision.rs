//! Every child of the WorkerActor is supervised: a panic in its own code (not
//! in a user hook) is noticed, the child restarted and its state rebuilt from
//! the job table; past the restart limit the worker shuts down in order. A
//! worker can be stopped, and a worker that dies leaves nothing behind that
//! answers the server. The panics are injected with the test-only
//! `InjectFault` (cargo feature `fault-injection`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lkagent::proto::{self, JobStatus, WorkerStatus};
use lkagent::recovery::RestartPolicy;
use lkagent::{
    Backoff, GetQueueStats, InjectFault, JobContext, JobError, JobHandler, JobPriority, SpawnJob,
    SpawnOutcome, WorkerEvent,
};
use lkagent_devserver::DispatchRequest;

/// One run of a job: its attempt, and the stage its checkpoint held.
type Run = (u32, Option<String>);

/// Runs until cancelled; counts `on_terminated` calls and runs; saves a
/// stage to its checkpoint (flushed) and records what each run found there.
#[derive(Clone, Default)]
struct Steady {
    terminated: Arc<AtomicUsize>,
    runs: Arc<Mutex<Vec<Run>>>,
}

impl JobHandler for Steady {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let stage = ctx.checkpoint().load::<String>("stage").unwrap();
        self.runs.lock().unwrap().push((ctx.attempt(), stage));
        ctx.checkpoint().save("stage", "greeted").unwrap();
        ctx.checkpoint()
            .flush()
            .await
            .map_err(|e| JobError::failed(e.to_string()))?;
        ctx.cancelled().await;
        Ok(())
    }

    fn on_terminated(&self, _job: &proto::Job) {
        self.terminated.fetch_add(1, Ordering::SeqCst);
    }
}

impl Steady {
    fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }
}

/// Jobs whose metadata is `"gate"` wait for a permit; the others end at once.
#[derive(Clone)]
struct Gated(Arc<tokio::sync::Semaphore>);

impl JobHandler for Gated {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        if ctx.metadata() == "gate" {
            self.0.acquire().await.expect("open").forget();
        }
        Ok(())
    }
}

fn restarted(events: &[(Instant, WorkerEvent)], which: &str) -> usize {
    events
        .iter()
        .filter(|(_, e)| {
            matches!(e, WorkerEvent::ChildRestarted { child, panicked: true } if child == which)
        })
        .count()
}

#[actix_rt::test]
async fn a_panicking_connection_is_restarted_and_jobs_go_on() {
    let server = devserver().await;
    let handler = Steady::default();
    let worker = worker(options(&server), handler.clone());
    let watch = WorkerWatch::start(&worker).await;
    let first = registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    wait_job(&server, &job.id, "RUNNING", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;

    worker.send(InjectFault::Connection).await.unwrap();
    wait_seen(&watch, "the connection restarted", |e| {
        restarted(e, "connection") == 1
    })
    .await;
    let state = wait_worker(&worker, "a new registration", |s| {
        s.connected && s.registrations == 2
    })
    .await;
    let second = state.worker_id.unwrap();
    assert_ne!(first, second);
    assert_eq!(
        state.running_jobs,
        std::slice::from_ref(&job.id),
        "the job kept running"
    );
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == second && w.migrated_jobs.contains(&job.id))
        })
        .await
        .expect("the job is claimed on the new connection");
    assert_eq!(handler.runs().len(), 1, "the job itself never restarted");
    server.terminate_job(&job.id).await.unwrap();
    let done = wait_final(&server, &job.id).await;
    assert_eq!(done.updates.last().unwrap().worker_id, second);
}

#[actix_rt::test]
async fn a_panicking_load_reporter_is_restarted_and_the_server_hears_the_load_again() {
    let server = devserver().await;
    let worker = worker(options(&server).max_jobs(1), Steady::default());
    let watch = WorkerWatch::start(&worker).await;
    let worker_id = registered(&worker).await;

    worker.send(InjectFault::Reporter).await.unwrap();
    wait_seen(&watch, "the reporter restarted", |e| {
        restarted(e, "load reporter") == 1
    })
    .await;
    // a job fills the only slot: the new reporter sends the flip to FULL
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == worker_id && w.status == WorkerStatus::WsFull)
        })
        .await
        .expect("FULL reported by the restarted reporter");
    server.terminate_job(&job.id).await.unwrap();
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == worker_id && w.status == WorkerStatus::WsAvailable)
        })
        .await
        .expect("AVAILABLE again");
    assert_eq!(
        registered(&worker).await,
        worker_id,
        "the connection was not touched"
    );
}

#[actix_rt::test]
async fn a_panicking_queue_is_rebuilt_from_the_job_table() {
    let server = devserver().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let worker = worker(options(&server).max_jobs(1), Gated(gate.clone()));
    let watch = WorkerWatch::start(&worker).await;
    registered(&worker).await;
    let log = EventLog::start(&worker).await;
    let busy = worker
        .send(SpawnJob::new("r").id("busy").metadata("gate"))
        .await
        .unwrap();
    assert!(matches!(busy, SpawnOutcome::Started { .. }), "{busy:?}");
    for (id, priority) in [("low", JobPriority::Low), ("urgent", JobPriority::Urgent)] {
        let queued = worker
            .send(SpawnJob::new("r").id(id).priority(priority))
            .await
            .unwrap();
        assert!(matches!(queued, SpawnOutcome::Queued { .. }), "{queued:?}");
    }

    worker.send(InjectFault::Queue).await.unwrap();
    wait_seen(&watch, "the queue restarted", |e| {
        restarted(e, "queue") == 1
    })
    .await;
    let stats = worker.send(GetQueueStats).await.unwrap();
    assert_eq!(stats.total(), 2, "both queued jobs are back in the queue");

    // the queued jobs still run, in priority order, when the slot frees
    gate.add_permits(1);
    let events = wait_events(&log, "the queued jobs to run", |events| {
        ["urgent", "low"].iter().all(|id| {
            events
                .iter()
                .any(|e| e.job_id == *id && e.status == JobStatus::JsSuccess)
        })
    })
    .await;
    let running: Vec<&str> = events
        .iter()
        .filter(|e| e.status == JobStatus::JsRunning && e.job_id != "busy")
        .map(|e| e.job_id.as_str())
        .collect();
    assert_eq!(running, ["urgent", "low"]);
}

#[actix_rt::test]
async fn a_panicking_job_actor_restarts_the_job_from_its_stored_checkpoint() {
    let server = devserver().await;
    let handler = Steady::default();
    let worker = worker(options(&server), handler.clone());
    let watch = WorkerWatch::start(&worker).await;
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    eventually("the first run saved its stage", || {
        !handler.runs().is_empty()
    })
    .await;
    // the save was flushed before the handler went on waiting
    wait_worker(&worker, "running", |s| s.jobs.running == 1).await;

    worker.send(InjectFault::Job(job.id.clone())).await.unwrap();
    wait_seen(&watch, "the job's actor restarted", |e| {
        restarted(e, &format!("job {}", job.id)) == 1
    })
    .await;
    eventually("a second run", || handler.runs().len() == 2).await;
    assert_eq!(
        handler.runs(),
        [(1, None), (2, Some("greeted".to_owned()))],
        "the new actor resumed from the stored checkpoint"
    );
    server.terminate_job(&job.id).await.unwrap();
    let done = wait_final(&server, &job.id).await;
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess],
        "one RUNNING, one final status"
    );
}

fn one_restart() -> RestartPolicy {
    RestartPolicy::new(
        1,
        Duration::from_secs(60),
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(10),
            jitter: 0.0,
        },
    )
}

#[actix_rt::test]
async fn a_job_actor_that_keeps_crashing_fails_its_job_once() {
    let server = devserver().await;
    let handler = Steady::default();
    let mut options = options(&server);
    options.child_restart_policy = one_restart();
    let worker = worker(options, handler.clone());
    let watch = WorkerWatch::start(&worker).await;
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    eventually("the first run", || handler.runs().len() == 1).await;
    worker.send(InjectFault::Job(job.id.clone())).await.unwrap();
    wait_seen(&watch, "one restart", |e| {
        restarted(e, &format!("job {}", job.id)) == 1
    })
    .await;
    eventually("the second run", || handler.runs().len() == 2).await;
    worker.send(InjectFault::Job(job.id.clone())).await.unwrap();
    let done = wait_final(&server, &job.id).await;
    let last = done.updates.last().unwrap();
    assert_eq!(last.status, JobStatus::JsFailed);
    assert!(last.error.contains("crashed"), "{}", last.error);
    assert_eq!(
        done.updates.iter().filter(|u| is_final(u.status)).count(),
        1
    );
    let state = wait_worker(&worker, "the job gone", |s| s.running_jobs.is_empty()).await;
    assert!(state.connected, "one job's crashes do not stop the worker");
    assert_eq!(state.supervision_failure, None);
}

#[actix_rt::test]
async fn past_the_restart_limit_the_worker_shuts_down_in_order() {
    let server = devserver().await;
    let handler = Steady::default();
    let mut options = options(&server);
    options.child_restart_policy = one_restart();
    let worker = worker(options, handler.clone());
    let watch = WorkerWatch::start(&worker).await;
    let worker_id = registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    eventually("the job runs", || handler.runs().len() == 1).await;

    worker.send(InjectFault::Reporter).await.unwrap();
    wait_seen(&watch, "one restart", |e| {
        restarted(e, "load reporter") == 1
    })
    .await;
    worker.send(InjectFault::Reporter).await.unwrap();
    wait_seen(&watch, "supervision giving up", |e| {
        e.iter()
            .any(|(_, e)| matches!(e, WorkerEvent::SupervisionGaveUp { reason } if reason.contains("load reporter")))
    })
    .await;
    // in order: the job is terminated with its hook and reported, then the
    // connection closes and the worker stops
    let done = wait_final(&server, &job.id).await;
    let last = done.updates.last().unwrap();
    assert_eq!(last.status, JobStatus::JsFailed);
    assert!(last.error.contains("shut down"), "{}", last.error);
    assert_eq!(handler.terminated.load(Ordering::SeqCst), 1);
    server
        .wait_workers(DEADLINE, |ws| ws.iter().all(|w| !w.connected))
        .await
        .expect("the connection closes");
    eventually("the worker actor to stop", || !worker.connected()).await;
    let state = server.workers().await;
    assert!(state.iter().any(|w| w.id == worker_id), "{state:?}");
}

#[actix_rt::test]
async fn stop_terminates_jobs_delivers_their_statuses_and_stops_every_actor() {
    let server = devserver().await;
    let handler = Steady::default();
    let worker = worker(options(&server).max_jobs(1), handler.clone());
    registered(&worker).await;
    let log = EventLog::start(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    eventually("the job runs", || handler.runs().len() == 1).await;
    let queued = worker
        .send(SpawnJob::new("local").id("waiting"))
        .await
        .unwrap();
    assert!(matches!(queued, SpawnOutcome::Queued { .. }), "{queued:?}");

    let started = Instant::now();
    worker.stop().await;
    assert!(started.elapsed() < DEADLINE);
    assert!(!worker.connected(), "the worker actor has stopped");
    assert_eq!(
        handler.terminated.load(Ordering::SeqCst),
        1,
        "on_terminated ran once"
    );

    // the server job's status was delivered before the socket closed
    let done = server.job(&job.id).await.unwrap();
    let last = done.updates.last().unwrap();
    assert_eq!(last.status, JobStatus::JsFailed);
    assert!(last.error.contains("shut down"), "{}", last.error);
    let workers = server
        .wait_workers(DEADLINE, |ws| ws.iter().all(|w| !w.connected))
        .await
        .expect("the connection is closed");
    let last = workers[0].last_update.expect("load reported");
    assert!(last.draining, "the server was told it drains: {last:?}");
    assert_eq!(last.status, Some(WorkerStatus::WsFull as i32));
    let events = log.send(Events).await.unwrap();
    let waiting: Vec<_> = events.iter().filter(|e| e.job_id == "waiting").collect();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0].status, JobStatus::JsFailed);
    // stopping again is harmless
    worker.stop().await;
}

#[actix_rt::test]
async fn a_worker_that_dies_leaves_no_child_answering_the_server() {
    let server = devserver().await;
    let worker = worker(options(&server), Steady::default());
    let worker_id = registered(&worker).await;
    let _ = worker.send(InjectFault::Worker).await; // it dies handling this
    eventually("the worker actor to be gone", || !worker.connected()).await;
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| w.id == worker_id && !w.connected)
        })
        .await
        .expect("the server sees the connection end");
    // nothing reconnects: the reconnect backoff here is at most 500 ms, so a
    // connection left behind would have registered again within this
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let workers = server.workers().await;
    assert!(workers.iter().all(|w| !w.connected), "{workers:?}");
    assert_eq!(workers.len(), 1, "no new registration: {workers:?}");
}

/// Ignores its cancellation: after the server terminates the job, or the
/// worker stops, it goes on — politely waiting, or blocking its thread.
#[derive(Clone, Default)]
struct Stubborn {
    terminated: Arc<AtomicUsize>,
    runs: Arc<AtomicUsize>,
    block_thread: bool,
}

impl JobHandler for Stubborn {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        ctx.cancelled().await;
        if self.block_thread {
            std::thread::sleep(Duration::from_secs(3));
        } else {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    fn on_terminated(&self, _job: &proto::Job) {
        self.terminated.fetch_add(1, Ordering::SeqCst);
    }
}

#[actix_rt::test]
async fn a_job_whose_actor_crashes_while_being_terminated_ends_and_does_not_run_again() {
    let server = devserver().await;
    let handler = Stubborn::default();
    let worker = worker(options(&server), handler.clone());
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    eventually("the job runs", || handler.runs.load(Ordering::SeqCst) == 1).await;
    server.terminate_job(&job.id).await.unwrap();
    eventually("on_terminated", || {
        handler.terminated.load(Ordering::SeqCst) == 1
    })
    .await;
    // the handler ignores the cancellation; its actor dies meanwhile
    worker.send(InjectFault::Job(job.id.clone())).await.unwrap();
    let done = wait_final(&server, &job.id).await;
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess],
        "ended as the server asked, once"
    );
    wait_worker(&worker, "the job gone", |s| s.running_jobs.is_empty()).await;
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1, "it never ran again");
}

#[actix_rt::test]
async fn a_job_that_outlives_the_shutdown_deadline_is_failed_before_the_socket_closes() {
    let server = devserver().await;
    let handler = Stubborn {
        block_thread: true,
        ..Stubborn::default()
    };
    let mut options = options(&server).termination_grace(Duration::from_millis(200));
    options.shutdown_flush_timeout = Duration::from_millis(300);
    let worker = worker(options, handler.clone());
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    eventually("the job runs", || handler.runs.load(Ordering::SeqCst) == 1).await;

    // its handler blocks its thread once cancelled: its actor's own grace
    // timer cannot fire, the worker's deadline does
    worker.stop().await;
    // written before the close frame: the server reads it (it cannot confirm
    // it any more, the socket closes right after)
    let done = wait_final(&server, &job.id).await;
    let last = done.updates.last().unwrap();
    assert_eq!(last.status, JobStatus::JsFailed, "{:?}", done.updates);
    assert!(
        last.error
            .contains("did not stop within the shutdown deadline"),
        "{}",
        last.error
    );
    assert_eq!(
        done.updates.iter().filter(|u| is_final(u.status)).count(),
        1
    );
}
