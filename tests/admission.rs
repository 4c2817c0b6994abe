//! What a worker takes on and in what order: the priority queue, queue
//! expiry, urgent work beyond capacity, resource reservations, rate limits,
//! priority-aware admission near the threshold, and memory pressure.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use lkagent::demo::DemoAgent;
use lkagent::limits::{ResourceLimits, UsageState};
use lkagent::load::LoadMetrics;
use lkagent::proto::{self, JobStatus};
use lkagent::queue::{RateLimit, RateLimits};
use lkagent::{
    Decision, GetQueueStats, JobContext, JobError, JobEvent, JobHandler, JobPriority, JobRequest,
    SpawnJob, SpawnOutcome, SpawnRefusal, Worker,
};
use lkagent_devserver::{DispatchError, DispatchRequest};

fn running_order(events: &[JobEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.status == JobStatus::JsRunning)
        .map(|e| e.job_id.clone())
        .collect()
}

#[actix_rt::test]
async fn queued_jobs_start_by_priority_then_in_arrival_order() {
    let server = devserver().await;
    let worker = worker(options(&server).max_jobs(1), DemoAgent);
    registered(&worker).await;
    let log = EventLog::start(&worker).await;

    let busy = worker
        .send(
            SpawnJob::new("r")
                .id("busy")
                .metadata(r#"{"duration_ms": 300}"#),
        )
        .await
        .unwrap();
    assert_eq!(
        busy,
        SpawnOutcome::Started {
            job_id: "busy".into()
        }
    );
    let quick = r#"{"duration_ms": 10}"#;
    for (depth, (id, priority)) in [
        ("low", JobPriority::Low),
        ("urgent", JobPriority::Urgent),
        ("normal", JobPriority::Normal),
        ("urgent-2", JobPriority::Urgent),
    ]
    .into_iter()
    .enumerate()
    {
        let outcome = worker
            .send(SpawnJob::new("r").id(id).metadata(quick).priority(priority))
            .await
            .unwrap();
        assert_eq!(
            outcome,
            SpawnOutcome::Queued {
                job_id: id.into(),
                depth: depth + 1
            }
        );
    }
    let stats = worker.send(GetQueueStats).await.unwrap();
    assert_eq!(stats.total(), 4);
    assert_eq!(stats.depth(JobPriority::Urgent), 2);
    assert_eq!(stats.depth(JobPriority::Low), 1);

    let events = wait_events(&log, "every job to run", |events| {
        running_order(events).len() == 5
    })
    .await;
    assert_eq!(
        running_order(&events),
        ["busy", "urgent", "urgent-2", "normal", "low"]
    );
    let state = wait_worker(&worker, "an empty queue", |s| {
        s.queued == 0 && s.running_jobs.is_empty()
    })
    .await;
    assert_eq!(state.queued, 0);
}

#[actix_rt::test]
async fn a_job_that_waits_too_long_in_the_queue_fails_with_a_clear_error() {
    let server = devserver().await;
    let mut options = options(&server).max_jobs(1);
    options.queue_max_wait = Duration::from_millis(100);
    let worker = worker(options, DemoAgent);
    registered(&worker).await;
    let log = EventLog::start(&worker).await;
    worker
        .send(
            SpawnJob::new("r")
                .id("busy")
                .metadata(r#"{"duration_ms": 5000}"#),
        )
        .await
        .unwrap();
    let queued = worker.send(SpawnJob::new("r").id("late")).await.unwrap();
    assert!(matches!(queued, SpawnOutcome::Queued { .. }), "{queued:?}");
    let events = wait_events(&log, "the expiry", |events| {
        events.iter().any(|e| e.job_id == "late")
    })
    .await;
    let late: Vec<_> = events.iter().filter(|e| e.job_id == "late").collect();
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].status, JobStatus::JsFailed);
    assert!(
        late[0].error.contains("waited longer than"),
        "{}",
        late[0].error
    );
    assert_eq!(worker.send(lkagent::GetState).await.unwrap().queued, 0);
}

/// Runs until terminated.
struct UntilTerminated;

impl JobHandler for UntilTerminated {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        ctx.cancelled().await;
        Ok(())
    }
}

#[actix_rt::test]
async fn urgent_server_work_is_taken_beyond_capacity_and_queued() {
    let server = devserver().await;
    let worker = worker(options(&server).max_jobs(1), UntilTerminated);
    let worker_id = registered(&worker).await;
    let busy = server
        .dispatch(DispatchRequest::room("busy"))
        .await
        .unwrap();
    wait_worker(&worker, "the busy job", |s| s.running_jobs.len() == 1).await;

    let normal = server
        .dispatch(DispatchRequest::room("n").to_worker(worker_id.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(normal, DispatchError::Declined { .. }),
        "{normal:?}"
    );
    let urgent = server
        .dispatch(
            DispatchRequest::room("u")
                .metadata(r#"{"priority": "urgent"}"#)
                .to_worker(worker_id.clone()),
        )
        .await
        .expect("urgent work is taken while full");
    let state = wait_worker(&worker, "the urgent job queued", |s| s.queued == 1).await;
    assert_eq!(state.running_jobs, std::slice::from_ref(&busy.id));

    server.terminate_job(&busy.id).await.unwrap();
    wait_job(&server, &urgent.id, "the urgent job running", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;
    let state = wait_worker(&worker, "the urgent job started", |s| {
        s.running_jobs == [urgent.id.clone()]
    })
    .await;
    assert_eq!(state.queued, 0);
}

/// Declares the memory its jobs need from the metadata ({"memory_mb": N}).
struct Hungry;

impl JobHandler for Hungry {
    async fn on_request(&self, request: &JobRequest) -> Decision {
        Decision::accept(request).with_resources(memory_request(request.metadata()))
    }

    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        ctx.cancelled().await;
        Ok(())
    }
}

#[actix_rt::test]
async fn a_job_that_does_not_fit_the_memory_budget_is_declined() {
    let server = devserver().await;
    let worker = Worker::builder(options(&server))
        .resource_limits(ResourceLimits {
            max_memory_mb: 256,
            ..ResourceLimits::default()
        })
        .handler(Hungry)
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    let needs = |mb: u64| {
        DispatchRequest::room(format!("room-{mb}"))
            .metadata(format!(r#"{{"memory_mb": {mb}}}"#))
            .to_worker(worker_id.clone())
    };
    let too_big = server.dispatch(needs(512)).await.unwrap_err();
    assert_eq!(
        too_big,
        DispatchError::Declined {
            tried: vec![worker_id.clone()]
        }
    );
    let first = server
        .dispatch(needs(200))
        .await
        .expect("200 of 256 MiB fits");
    let second = server.dispatch(needs(200)).await.unwrap_err();
    assert!(
        matches!(second, DispatchError::Declined { .. }),
        "only 56 MiB are left"
    );

    // the reservation is released when the job ends
    server.terminate_job(&first.id).await.unwrap();
    wait_worker(&worker, "the job to end", |s| s.running_jobs.is_empty()).await;
    server
        .dispatch(needs(200))
        .await
        .expect("the budget is free again");
}

#[actix_rt::test]
async fn the_per_room_rate_limit_declines_a_second_job_for_the_same_room() {
    let server = devserver().await;
    let worker = Worker::builder(options(&server))
        .rate_limits(RateLimits {
            per_room: Some(RateLimit::per_minute(1)),
            ..RateLimits::default()
        })
        .handler(UntilTerminated)
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    server
        .dispatch(DispatchRequest::room("lobby"))
        .await
        .expect("the first job");
    let again = server
        .dispatch(DispatchRequest::room("lobby").to_worker(worker_id.clone()))
        .await
        .unwrap_err();
    assert!(matches!(again, DispatchError::Declined { .. }), "{again:?}");
    server
        .dispatch(DispatchRequest::room("kitchen"))
        .await
        .expect("another room");
    let spawned = worker.send(SpawnJob::new("lobby")).await.unwrap();
    assert!(
        matches!(
            spawned,
            SpawnOutcome::Refused {
                reason: SpawnRefusal::RateLimited(_)
            }
        ),
        "{spawned:?}"
    );
}

#[actix_rt::test]
async fn near_the_threshold_low_priority_is_declined_and_normal_accepted() {
    let server = devserver().await;
    // 0.65: under the 0.7 threshold, inside Low's 0.1 margin
    let worker = Worker::builder(options(&server))
        .load_calculator(|_: &LoadMetrics| 0.65)
        .handler(UntilTerminated)
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    wait_worker(&worker, "the computed load", |s| s.load == 0.65).await;
    let low = server
        .dispatch(
            DispatchRequest::room("l")
                .metadata(r#"{"priority": "low"}"#)
                .to_worker(worker_id.clone()),
        )
        .await
        .unwrap_err();
    assert!(matches!(low, DispatchError::Declined { .. }), "{low:?}");
    server
        .dispatch(DispatchRequest::room("n").to_worker(worker_id.clone()))
        .await
        .expect("a normal job is admitted below the threshold");
}

/// Records what memory-pressure notices its jobs got.
#[derive(Clone, Default)]
struct PressureAware {
    notices: Arc<Mutex<Vec<(String, UsageState)>>>,
}

impl JobHandler for PressureAware {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        ctx.cancelled().await;
        Ok(())
    }

    fn on_memory_pressure(&self, job: &proto::Job, state: UsageState) {
        self.notices.lock().unwrap().push((job.id.clone(), state));
    }
}

#[actix_rt::test]
async fn memory_over_the_limit_reaches_running_jobs_and_stops_admissions() {
    let server = devserver().await;
    let handler = PressureAware::default();
    let mut options = options(&server);
    // this process uses far more than 1 MiB: the first check finds it over
    options.memory_check_interval = Duration::from_millis(500);
    let worker = Worker::builder(options)
        .resource_limits(ResourceLimits {
            max_memory_mb: 1,
            ..ResourceLimits::default()
        })
        .handler(handler.clone())
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    let running = worker.send(SpawnJob::new("r").id("running")).await.unwrap();
    assert_eq!(
        running,
        SpawnOutcome::Started {
            job_id: "running".into()
        }
    );

    eventually("a memory notice to reach the job", || {
        !handler.notices.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        handler.notices.lock().unwrap().clone(),
        [("running".to_owned(), UsageState::Exceeded)]
    );
    let refused = worker.send(SpawnJob::new("r2")).await.unwrap();
    assert_eq!(
        refused,
        SpawnOutcome::Refused {
            reason: SpawnRefusal::MemoryPressure
        }
    );
    let declined = server
        .dispatch(DispatchRequest::room("r3").to_worker(worker_id))
        .await
        .unwrap_err();
    assert!(
        matches!(declined, DispatchError::Declined { .. }),
        "{declined:?}"
    );
}

#[actix_rt::test]
async fn a_worker_at_its_open_file_limit_admits_no_job() {
    let server = devserver().await;
    let mut options = options(&server);
    options.memory_check_interval = Duration::from_millis(100);
    // this process has far more than one descriptor open: the first check
    // finds it over the limit
    let worker = Worker::builder(options)
        .resource_limits(ResourceLimits {
            max_open_files: 1,
            ..ResourceLimits::default()
        })
        .handler(lkagent::demo::DemoAgent)
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    let refused = wait_until(
        "a refusal for the open files",
        || async {
            worker
                .send(SpawnJob::new("r").metadata(r#"{"duration_ms": 1}"#))
                .await
                .unwrap()
        },
        |outcome| matches!(outcome, SpawnOutcome::Refused { .. }),
    )
    .await;
    let SpawnOutcome::Refused {
        reason: SpawnRefusal::Resources(why),
    } = refused
    else {
        panic!("{refused:?}");
    };
    assert!(why.contains("open-file limit"), "{why}");
    let declined = server
        .dispatch(DispatchRequest::room("r2").to_worker(worker_id))
        .await
        .unwrap_err();
    assert!(
        matches!(declined, DispatchError::Declined { .. }),
        "{declined:?}"
    );
}
