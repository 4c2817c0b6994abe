//! Load reporting against the dev server: race-free admission in a burst,
//! FULL and AVAILABLE sent at once, batching over a steady period, custom
//! and resource-based calculators, and reservations that expire.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use lkagent::load::{CpuMemoryLoadCalculator, LoadMetrics};
use lkagent::proto::WorkerStatus;
use lkagent::{Decision, GetLoad, JobContext, JobError, JobHandler, JobRequest, Worker};
use lkagent_devserver::{DevServerConfig, DispatchError, DispatchRequest};

/// Runs until the server terminates the job.
struct UntilTerminated;

impl JobHandler for UntilTerminated {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        ctx.cancelled().await;
        Ok(())
    }
}

/// A tick so long that only the immediate path can deliver a report within
/// a test's deadline.
const NEVER: Duration = Duration::from_secs(600);

#[actix_rt::test]
async fn a_burst_of_fifty_requests_accepts_exactly_max_jobs_and_full_goes_out_at_once() {
    let server = devserver().await;
    let worker = worker(
        options(&server).max_jobs(10).load_intervals(NEVER, NEVER),
        UntilTerminated,
    );
    let worker_id = registered(&worker).await;
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| w.id == worker_id && w.update_count >= 1)
        })
        .await
        .expect("the registration's first report");

    let burst = (0..50).map(|i| {
        server.dispatch(DispatchRequest::room(format!("room-{i}")).to_worker(worker_id.clone()))
    });
    let results = join_all(burst).await;
    let accepted: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(accepted.len(), 10, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, DispatchError::Declined { .. })),
        "{results:?}"
    );
    let workers = server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == worker_id && w.status == WorkerStatus::WsFull)
        })
        .await
        .expect("FULL reached the server without waiting for a tick");
    let seen = workers.iter().find(|w| w.id == worker_id).unwrap();
    assert_eq!(
        seen.availability_answers
            .iter()
            .filter(|(_, yes)| *yes)
            .count(),
        10
    );
    let load = worker.send(GetLoad).await.unwrap();
    assert_eq!(load.status, WorkerStatus::WsFull);

    // a job ends: AVAILABLE again, also without a tick
    server.terminate_job(&accepted[0].id).await.unwrap();
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == worker_id && w.status == WorkerStatus::WsAvailable)
        })
        .await
        .expect("AVAILABLE reached the server when the job ended");
}

#[actix_rt::test]
async fn the_server_sees_full_before_the_answer_that_took_the_last_slot() {
    let server = devserver().await;
    // a slow calculator keeps the load reporter busy: the flip to FULL must
    // not wait for it
    let worker = Worker::builder(options(&server).max_jobs(1))
        .load_calculator(|m: &LoadMetrics| {
            std::thread::sleep(Duration::from_millis(100));
            m.job_load()
        })
        .handler(UntilTerminated)
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    for round in 0..5 {
        server
            .wait_workers(DEADLINE, |ws| {
                ws.iter()
                    .any(|w| w.id == worker_id && w.status == WorkerStatus::WsAvailable)
            })
            .await
            .expect("AVAILABLE");
        let job = server
            .dispatch(DispatchRequest::room(format!("r{round}")))
            .await
            .unwrap();
        // FULL went out before the answer: the very next dispatch finds no
        // worker, instead of being offered to a full one and declined
        let next = server
            .dispatch(DispatchRequest::room(format!("next{round}")))
            .await
            .unwrap_err();
        assert_eq!(next, DispatchError::NoWorkers, "round {round}");
        server.terminate_job(&job.id).await.unwrap();
    }
}

#[actix_rt::test]
async fn a_steady_load_is_reported_at_the_keepalive_not_at_every_sample() {
    let server = devserver().await;
    // a load that wobbles by 0.02 at every sample: within epsilon
    let samples = Arc::new(AtomicUsize::new(0));
    let counter = samples.clone();
    let wobble = move |_: &LoadMetrics| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        0.30 + 0.02 * (n % 2) as f32
    };
    let keepalive = Duration::from_millis(300);
    let worker =
        Worker::builder(options(&server).load_intervals(Duration::from_millis(20), keepalive))
            .load_calculator(wobble)
            .handler(UntilTerminated)
            .start()
            .unwrap();
    let worker_id = registered(&worker).await;
    let start = Instant::now();
    let samples_at_start = samples.load(Ordering::SeqCst);
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| w.id == worker_id && w.update_count >= 4)
        })
        .await
        .expect("keepalive reports");
    let elapsed = start.elapsed();
    let sampled = samples.load(Ordering::SeqCst) - samples_at_start;
    // the first report goes out at registration; three more took three
    // keepalive periods, while the load was sampled many times over
    assert!(
        elapsed >= keepalive * 3 - Duration::from_millis(50),
        "{elapsed:?}"
    );
    assert!(sampled >= 20, "only {sampled} samples in {elapsed:?}");
    let last = server
        .workers()
        .await
        .into_iter()
        .find(|w| w.id == worker_id)
        .unwrap();
    let update = last.last_update.unwrap();
    assert!((0.29..=0.33).contains(&update.load), "{update:?}");
    assert_eq!(last.status, WorkerStatus::WsAvailable);
}

#[actix_rt::test]
async fn a_custom_calculator_at_its_threshold_makes_the_worker_full() {
    let server = devserver().await;
    let worker = Worker::builder(options(&server))
        .load_calculator(|_: &LoadMetrics| 0.8)
        .handler(UntilTerminated)
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == worker_id && w.status == WorkerStatus::WsFull && w.load == 0.8)
        })
        .await
        .expect("FULL at 0.8 with the default 0.7 threshold");
    let refused = server
        .dispatch(DispatchRequest::room("r").to_worker(worker_id.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        DispatchError::Declined {
            tried: vec![worker_id]
        }
    );

    // the same load under a higher threshold is AVAILABLE and takes jobs
    let relaxed = Worker::builder(options(&server).agent_name("relaxed"))
        .load_calculator(|_: &LoadMetrics| 0.8)
        .load_threshold(0.9)
        .handler(UntilTerminated)
        .start()
        .unwrap();
    registered(&relaxed).await;
    let job = server
        .dispatch(DispatchRequest::room("r").agent_name("relaxed"))
        .await
        .expect("AVAILABLE below its threshold");
    assert_eq!(job.agent_name, "relaxed");
}

#[actix_rt::test]
async fn the_cpu_memory_calculator_reports_a_real_load() {
    let server = devserver().await;
    let worker = Worker::builder(
        options(&server).load_intervals(Duration::from_millis(50), Duration::from_millis(200)),
    )
    .load_calculator(CpuMemoryLoadCalculator::default())
    .handler(UntilTerminated)
    .start()
    .unwrap();
    let worker_id = registered(&worker).await;
    // this process holds memory, so the memory part is above zero
    let workers = server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == worker_id && w.update_count >= 2 && w.load > 0.0)
        })
        .await
        .expect("a non-zero resource load");
    let seen = workers.iter().find(|w| w.id == worker_id).unwrap();
    assert!(seen.load < 1.0, "{seen:?}");
    let load = worker.send(GetLoad).await.unwrap();
    assert!(load.load > 0.0 && load.load <= 1.0, "{load:?}");
}

/// Accepts, but only after the server has stopped waiting.
struct SlowToDecide;

impl JobHandler for SlowToDecide {
    async fn on_request(&self, request: &JobRequest) -> Decision {
        actix_rt::time::sleep(Duration::from_millis(400)).await;
        Decision::accept(request)
    }

    async fn on_job(&self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[actix_rt::test]
async fn a_reservation_without_an_assignment_is_released_after_its_deadline() {
    let server = devserver_with(DevServerConfig {
        availability_timeout: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let mut options = options(&server).max_jobs(1);
    options.assignment_timeout = Duration::from_millis(300);
    let worker = worker(options, SlowToDecide);
    let worker_id = registered(&worker).await;
    let err = server
        .dispatch(DispatchRequest::room("r").to_worker(worker_id.clone()))
        .await
        .unwrap_err();
    assert_eq!(err, DispatchError::Timeout { worker_id });
    // the slot is held while deciding and after the late accept...
    wait_worker(&worker, "the reservation", |s| s.reserved == 1).await;
    // ...then released when no assignment comes
    let state = wait_worker(&worker, "the release", |s| s.reserved == 0).await;
    assert!(state.running_jobs.is_empty());
    assert_eq!(
        worker.send(GetLoad).await.unwrap().status,
        WorkerStatus::WsAvailable
    );
}
