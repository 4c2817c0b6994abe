//! Every job the worker knows is a row of one table: a queued job behaves like
//! any other (a termination ends it at once, a reconnect claims it, a repeated
//! offer or assignment is refused), and jobs resumed after a restart go through
//! admission like new ones (slots, reservations, the queue).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use futures_util::future::{Either, select};
use lkagent::limits::ResourceLimits;
use lkagent::proto::{self, JobStatus};
use lkagent::recovery::MemoryStore;
use lkagent::{Decision, JobContext, JobError, JobHandler, JobRequest, Worker};
use lkagent_devserver::{DispatchError, DispatchRequest};

/// Declares the memory a job needs (`{"memory_mb": N}` in its metadata),
/// records which jobs started and how many ran at once, and runs each job
/// until it is cancelled or the test hands it a permit.
#[derive(Clone)]
struct Probe {
    started: Arc<Mutex<Vec<String>>>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    finish: Arc<tokio::sync::Semaphore>,
}

impl Probe {
    fn new() -> Self {
        Self {
            started: Arc::default(),
            running: Arc::default(),
            peak: Arc::default(),
            finish: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }

    fn started(&self) -> Vec<String> {
        self.started.lock().unwrap().clone()
    }
}

impl JobHandler for Probe {
    async fn on_request(&self, request: &JobRequest) -> Decision {
        Decision::accept(request).with_resources(memory_request(request.metadata()))
    }

    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        self.started.lock().unwrap().push(ctx.id().to_owned());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let permit = Box::pin(self.finish.acquire());
        let cancelled = Box::pin(ctx.cancelled());
        if let Either::Left((Ok(permit), _)) = select(permit, cancelled).await {
            permit.forget();
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

fn urgent(room: &str, memory_mb: u64, worker_id: &str) -> DispatchRequest {
    DispatchRequest::room(room)
        .metadata(format!(
            r#"{{"priority": "urgent", "memory_mb": {memory_mb}}}"#
        ))
        .to_worker(worker_id)
}

#[actix_rt::test]
async fn a_queued_job_terminated_ends_at_once_frees_its_reservation_and_never_runs() {
    let server = devserver().await;
    let probe = Probe::new();
    let worker = Worker::builder(options(&server).max_jobs(1))
        .resource_limits(ResourceLimits {
            max_memory_mb: 300,
            ..ResourceLimits::default()
        })
        .handler(probe.clone())
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    let busy = server
        .dispatch(DispatchRequest::room("busy").metadata(r#"{"memory_mb": 100}"#))
        .await
        .unwrap();
    wait_worker(&worker, "the busy job", |s| {
        s.running_jobs == [busy.id.clone()]
    })
    .await;
    let queued = server
        .dispatch(urgent("q", 200, &worker_id))
        .await
        .expect("urgent work is queued while every slot is busy");
    wait_worker(&worker, "the job queued", |s| s.queued == 1).await;
    // 100 + 200 of 300 MiB are held: one more MiB-hungry job does not fit
    let refused = server
        .dispatch(urgent("r", 100, &worker_id))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, DispatchError::Declined { .. }),
        "{refused:?}"
    );

    server.terminate_job(&queued.id).await.unwrap();
    let done = wait_final(&server, &queued.id).await;
    assert_eq!(
        statuses(&done),
        [JobStatus::JsSuccess],
        "ended without running"
    );
    let state = wait_worker(&worker, "the queue emptied", |s| s.queued == 0).await;
    assert_eq!(state.running_jobs, std::slice::from_ref(&busy.id));

    // its 200 MiB are free again: a job that needs them is taken
    let again = server
        .dispatch(urgent("again", 200, &worker_id))
        .await
        .expect("the terminated job's reservation was released");
    server.terminate_job(&busy.id).await.unwrap();
    wait_job(&server, &again.id, "the next queued job running", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;
    assert_eq!(
        probe.started(),
        [busy.id.clone(), again.id.clone()],
        "the terminated job never ran"
    );
}

#[actix_rt::test]
async fn after_a_reconnect_migrate_job_claims_queued_jobs_with_running_ones() {
    let server = devserver().await;
    let probe = Probe::new();
    let worker = worker(options(&server).max_jobs(1), probe.clone());
    let worker_id = registered(&worker).await;
    let busy = server
        .dispatch(DispatchRequest::room("busy"))
        .await
        .unwrap();
    wait_worker(&worker, "the busy job", |s| s.running_jobs.len() == 1).await;
    let queued = server.dispatch(urgent("q", 0, &worker_id)).await.unwrap();
    wait_worker(&worker, "the job queued", |s| s.queued == 1).await;

    server.drop_connections().await;
    let state = wait_worker(&worker, "the reconnect", |s| {
        s.connected && s.registrations == 2
    })
    .await;
    let second = state.worker_id.unwrap();
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| {
                w.id == second
                    && w.migrated_jobs.contains(&busy.id)
                    && w.migrated_jobs.contains(&queued.id)
            })
        })
        .await
        .expect("both jobs claimed on the new connection");

    // the queued job still runs when a slot frees, and reports from there
    server.terminate_job(&busy.id).await.unwrap();
    wait_job(&server, &queued.id, "the queued job running", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;
    probe.finish.add_permits(1);
    let done = wait_final(&server, &queued.id).await;
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess]
    );
    assert!(done.updates.iter().all(|u| u.worker_id == second));
}

#[actix_rt::test]
async fn a_repeated_offer_or_assignment_of_a_queued_job_is_refused() {
    let server = devserver().await;
    let probe = Probe::new();
    let worker = worker(options(&server).max_jobs(1), probe.clone());
    let worker_id = registered(&worker).await;
    let busy = server
        .dispatch(DispatchRequest::room("busy"))
        .await
        .unwrap();
    wait_worker(&worker, "the busy job", |s| s.running_jobs.len() == 1).await;
    let queued = server.dispatch(urgent("q", 0, &worker_id)).await.unwrap();
    wait_worker(&worker, "the job queued", |s| s.queued == 1).await;

    let job = proto::Job {
        metadata: r#"{"priority": "urgent"}"#.into(),
        ..room_job(&queued.id, "q")
    };
    inject_offer(&server, &worker_id, job.clone()).await;
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| {
                w.id == worker_id && w.availability_answers.contains(&(queued.id.clone(), false))
            })
        })
        .await
        .expect("the repeated offer is declined");
    for job in [job, room_job(&busy.id, "busy")] {
        inject_assignment(&server, &worker_id, job).await;
    }
    handled_so_far(&server, &worker_id).await;
    let state = worker.send(lkagent::GetState).await.unwrap();
    assert_eq!(state.queued, 1, "{state:?}");
    assert_eq!(state.running_jobs, std::slice::from_ref(&busy.id));
    assert_eq!(
        probe.started(),
        std::slice::from_ref(&busy.id),
        "nothing started twice"
    );

    server.terminate_job(&busy.id).await.unwrap();
    wait_job(&server, &queued.id, "the queued job running", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;
    probe.finish.add_permits(1);
    let done = wait_final(&server, &queued.id).await;
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess]
    );
    assert_eq!(probe.started(), [busy.id.clone(), queued.id.clone()]);
}

#[actix_rt::test]
async fn a_repeated_assignment_of_a_job_that_ended_runs_nothing_and_reports_nothing_again() {
    let server = devserver().await;
    let probe = Probe::new();
    let worker = worker(options(&server).max_jobs(2), probe.clone());
    let worker_id = registered(&worker).await;
    let job = server
        .dispatch(DispatchRequest::room("once"))
        .await
        .unwrap();
    probe.finish.add_permits(1);
    wait_final(&server, &job.id).await;
    // the server confirmed the final: the job has left the worker's table
    wait_worker(&worker, "the final confirmed", |s| {
        s.outbox == 0 && s.running_jobs.is_empty()
    })
    .await;

    // the same assignment again (a duplicate on the wire), twice
    for _ in 0..2 {
        inject_assignment(&server, &worker_id, room_job(&job.id, "once")).await;
    }
    handled_so_far(&server, &worker_id).await;
    assert_eq!(probe.started(), std::slice::from_ref(&job.id), "ran once");
    let state = worker.send(lkagent::GetState).await.unwrap();
    assert!(state.running_jobs.is_empty(), "{state:?}");
    assert_eq!(state.outbox, 0, "no final owed again: {state:?}");
    let record = server.job(&job.id).await.unwrap();
    assert_eq!(
        statuses(&record),
        [JobStatus::JsRunning, JobStatus::JsSuccess],
        "one RUNNING, one final"
    );
}

#[actix_rt::test]
async fn jobs_recovered_past_capacity_wait_in_the_queue_or_are_refused_when_it_is_full() {
    let server = devserver().await;
    let gone = Doomed::start(
        &server,
        options(&server).agent_name("gone").max_jobs(5),
        Probe::new(),
    )
    .await;
    let store = Arc::new(MemoryStore::new());
    let mut orphans = Vec::new();
    for room in ["a", "b", "c"] {
        orphans.push(orphaned_checkpoint(&server, &store, room).await);
    }
    // `gone` dies holding the jobs; a worker of the same agent claims them
    // with migrate_job
    gone.kill(&server).await;

    let probe = Probe::new();
    let mut options = options(&server).agent_name("gone").max_jobs(1);
    options.queue_capacity = 1;
    let worker = Worker::builder(options)
        .checkpoint_store(store.clone())
        .handler(probe.clone())
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    let state = wait_worker(&worker, "one running, one queued", |s| {
        s.jobs.running == 1 && s.jobs.queued == 1
    })
    .await;
    assert_eq!(state.running_jobs.len(), 1);

    // the third did not fit: refused, and the server hears so
    let finals = |j: &lkagent_devserver::JobInfo| {
        j.updates
            .iter()
            .filter(|u| u.worker_id == worker_id && is_final(u.status))
            .map(|u| (u.status, u.error.clone()))
            .collect::<Vec<_>>()
    };
    let jobs = server
        .wait_jobs(DEADLINE, |jobs| {
            jobs.iter()
                .any(|j| orphans.contains(&j.id) && !finals(j).is_empty())
        })
        .await
        .expect("the refused job's status reaches the server");
    let refused: Vec<_> = jobs
        .iter()
        .filter(|j| orphans.contains(&j.id) && !finals(j).is_empty())
        .map(|j| (j.id.clone(), finals(j)))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (refused_id, statuses) = &refused[0];
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].0, JobStatus::JsFailed);
    assert!(statuses[0].1.contains("no capacity"), "{}", statuses[0].1);
    assert!(!probe.started().contains(refused_id));

    // the other two run one after the other, never together
    probe.finish.add_permits(2);
    for id in orphans.iter().filter(|id| *id != refused_id) {
        let done = wait_job(&server, id, "SUCCESS after recovery", |j| {
            finals(j).iter().any(|(s, _)| *s == JobStatus::JsSuccess)
        })
        .await;
        assert_eq!(finals(&done).len(), 1, "{:?}", done.updates);
    }
    assert_eq!(
        probe.peak.load(Ordering::SeqCst),
        1,
        "never more than max_jobs"
    );
    wait_worker(&worker, "all done", |s| {
        s.running_jobs.is_empty() && s.queued == 0
    })
    .await;
}

#[actix_rt::test]
async fn a_recovered_job_that_expires_in_the_queue_has_its_record_removed() {
    use lkagent::recovery::CheckpointStore as _;
    let server = devserver().await;
    let gone = Doomed::start(&server, options(&server).agent_name("gone"), Probe::new()).await;
    let store = Arc::new(MemoryStore::new());
    let mut orphans = Vec::new();
    for room in ["a", "b"] {
        orphans.push(orphaned_checkpoint(&server, &store, room).await);
    }
    gone.kill(&server).await;

    let probe = Probe::new();
    let mut options = options(&server).agent_name("gone").max_jobs(1);
    options.queue_max_wait = std::time::Duration::from_millis(200);
    let worker = Worker::builder(options)
        .checkpoint_store(store.clone())
        .handler(probe.clone())
        .start()
        .unwrap();
    registered(&worker).await;
    let state = wait_worker(&worker, "one running, one queued", |s| {
        s.jobs.running == 1 && s.jobs.queued == 1
    })
    .await;
    let running = state.running_jobs[0].clone();
    let queued = orphans.iter().find(|id| **id != running).unwrap().clone();

    // the queued one expires: FAILED, and once the server confirms, its
    // record goes (under the claim this worker took at recovery)
    let done = wait_final(&server, &queued).await;
    assert_eq!(done.status, JobStatus::JsFailed, "{done:?}");
    wait_until(
        "the expired job's record removed",
        || store.get(&queued),
        |got| matches!(got, Ok(None)),
    )
    .await
    .unwrap();
    assert!(
        store.get(&running).await.unwrap().is_some(),
        "the running job keeps its record"
    );
    probe.finish.add_permits(1);
    wait_final(&server, &running).await;
    worker.stop().await;
}
