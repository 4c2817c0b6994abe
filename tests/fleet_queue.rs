//! The fleet's queue (feature `redis`): an application enqueues through a
//! client of its own, workers pull when they have free slots, every job
//! runs once, and a job whose worker stops mid-run is taken over from its
//! checkpoint and acknowledged when it ends.
//!
//! `cargo test --workspace --features lkagent/redis`; needs `redis-server`.
#![cfg(feature = "redis")]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use lkagent::fleet::{Enqueued, QueueDepth, RedisJobQueue};
use lkagent::recovery::RedisCheckpointStore;
use lkagent::{JobContext, JobError, JobHandler, JobOrigin, SpawnJob, Worker};

/// Runs each job briefly, noting who ran what and how many at once.
#[derive(Clone, Default)]
struct Tally {
    worker: String,
    runs: Arc<Mutex<Vec<(String, String)>>>,
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl JobHandler for Tally {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.runs
            .lock()
            .unwrap()
            .push((self.worker.clone(), ctx.id().to_owned()));
        actix_rt::time::sleep(Duration::from_millis(30)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Waits until the fleet's queue holds nothing, waiting or taken.
async fn drained(client: &RedisJobQueue, what: &str) {
    wait_until(
        what,
        || client.depth(),
        |depth| matches!(depth, Ok(d) if *d == QueueDepth::default()),
    )
    .await
    .unwrap();
}

async fn fleet_worker(
    server: &lkagent_devserver::DevServer,
    redis: &TestRedis,
    prefix: &str,
    name: &str,
    handler: impl JobHandler,
    max_jobs: usize,
) -> Worker {
    let store = RedisCheckpointStore::connect(&redis.url, prefix)
        .await
        .unwrap();
    let mut options = options(server).max_jobs(max_jobs);
    options.instance_id = name.to_owned();
    options.liveness_ttl = Duration::from_millis(600);
    options.fleet_pull_interval = Duration::from_millis(50);
    let worker = Worker::builder(options)
        .fleet_queue(RedisJobQueue::of_store(&store))
        .checkpoint_store(store)
        .handler(handler)
        .start()
        .unwrap();
    registered(&worker).await;
    worker
}

#[actix_rt::test]
async fn two_workers_share_the_queue_within_their_slots_and_run_every_job_once() {
    let redis = TestRedis::start();
    let server = devserver().await;
    let runs: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let tally = |name: &str| Tally {
        worker: name.to_owned(),
        runs: runs.clone(),
        ..Default::default()
    };
    let (a, b) = (tally("qa"), tally("qb"));
    let wa = fleet_worker(&server, &redis, "share", "qa", a.clone(), 2).await;
    let wb = fleet_worker(&server, &redis, "share", "qb", b.clone(), 3).await;

    // the application's own client: no worker in it
    let client = RedisJobQueue::connect(&redis.url, "share").await.unwrap();
    let mut ids = Vec::new();
    for n in 0..40 {
        match client.enqueue(SpawnJob::new(format!("room-{n}"))).await {
            Ok(Enqueued::Added { job_id }) => ids.push(job_id),
            other => panic!("{other:?}"),
        }
    }
    eventually("every job ran", || runs.lock().unwrap().len() >= 40).await;
    drained(&client, "every item acknowledged").await;

    let runs = runs.lock().unwrap().clone();
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, id) in &runs {
        *times.entry(id.as_str()).or_default() += 1;
    }
    ids.sort();
    assert_eq!(times.keys().copied().collect::<Vec<_>>(), ids);
    assert!(times.values().all(|&n| n == 1), "{times:?}");
    for worker in ["qa", "qb"] {
        assert!(
            runs.iter().any(|(w, _)| w == worker),
            "{worker} pulled nothing"
        );
    }
    assert!(a.most.load(Ordering::SeqCst) <= 2, "qa ran past its slots");
    assert!(b.most.load(Ordering::SeqCst) <= 3, "qb ran past its slots");
    wa.stop().await;
    wb.stop().await;
}

/// Saves its progress and holds until terminated; a recovered or restarted
/// run reads the progress back and finishes.
#[derive(Clone, Default)]
struct Resumable {
    recovered_with: Arc<Mutex<Vec<Option<u32>>>>,
}

impl JobHandler for Resumable {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        if ctx.is_recovered() || ctx.is_restart() {
            let progress = ctx.checkpoint().load::<u32>("progress").unwrap();
            self.recovered_with.lock().unwrap().push(progress);
            return Ok(());
        }
        ctx.checkpoint().save("progress", &7u32).unwrap();
        ctx.checkpoint()
            .flush()
            .await
            .map_err(|e| JobError::failed(e.to_string()))?;
        ctx.cancelled().await;
        Ok(())
    }
}

#[actix_rt::test]
async fn a_fleet_job_cut_by_its_workers_shutdown_is_taken_over_and_then_acknowledged() {
    let redis = TestRedis::start();
    let server = devserver().await;
    let handler = Resumable::default();
    let first = fleet_worker(&server, &redis, "takeover", "qa", handler.clone(), 1).await;
    let client = RedisJobQueue::connect(&redis.url, "takeover")
        .await
        .unwrap();
    let Enqueued::Added { job_id } = client.enqueue(SpawnJob::new("room")).await.unwrap() else {
        panic!("added");
    };
    wait_worker(&first, "the job running", |s| s.jobs.running == 1).await;
    let store = RedisCheckpointStore::connect(&redis.url, "takeover")
        .await
        .unwrap();
    wait_until(
        "the progress saved",
        || lkagent::recovery::CheckpointStore::get(&store, &job_id),
        |got| matches!(got, Ok(Some(r)) if r.load::<u32>("progress").unwrap() == Some(7)),
    )
    .await
    .unwrap();

    // the other worker is up, its slot free, the queue empty
    let second = fleet_worker(&server, &redis, "takeover", "qb", handler.clone(), 1).await;
    let events = EventLog::start(&second.addr()).await;
    // cut by a shutdown: the record stays (a durable store), the worker
    // retires, and the job is an orphan at once, for the next scan
    first.stop().await;
    eventually("resumed from its checkpoint", || {
        *handler.recovered_with.lock().unwrap() == [Some(7)]
    })
    .await;
    let end = final_event(&events, &job_id).await;
    assert_eq!(end.origin, JobOrigin::Fleet);
    assert_eq!(end.status, lkagent::proto::JobStatus::JsSuccess);
    let claimed_from_server = server
        .workers()
        .await
        .iter()
        .any(|w| w.migrated_jobs.contains(&job_id));
    assert!(
        !claimed_from_server,
        "no migrate_job for a job of no server's"
    );
    drained(&client, "the item acknowledged with the record").await;
    assert_eq!(
        client
            .enqueue({
                let mut again = SpawnJob::new("room");
                again.id = Some(job_id.clone());
                again
            })
            .await
            .unwrap(),
        Enqueued::Added { job_id },
        "the id is free again once the job is over"
    );
    second.stop().await;
}

#[actix_rt::test]
async fn a_fleet_jobs_crashed_actor_restarts_from_the_jobs_checkpoint() {
    let redis = TestRedis::start();
    let server = devserver().await;
    let handler = Resumable::default();
    let worker = fleet_worker(&server, &redis, "crash", "qa", handler.clone(), 1).await;
    let events = EventLog::start(&worker.addr()).await;
    let client = RedisJobQueue::connect(&redis.url, "crash").await.unwrap();
    let Enqueued::Added { job_id } = client.enqueue(SpawnJob::new("room")).await.unwrap() else {
        panic!("added");
    };
    let store = RedisCheckpointStore::connect(&redis.url, "crash")
        .await
        .unwrap();
    wait_until(
        "the progress saved",
        || lkagent::recovery::CheckpointStore::get(&store, &job_id),
        |got| matches!(got, Ok(Some(r)) if r.load::<u32>("progress").unwrap() == Some(7)),
    )
    .await
    .unwrap();

    worker
        .send(lkagent::InjectFault::Job(job_id.clone()))
        .await
        .unwrap();
    eventually("restarted from its checkpoint", || {
        *handler.recovered_with.lock().unwrap() == [Some(7)]
    })
    .await;
    let end = final_event(&events, &job_id).await;
    assert_eq!(
        (end.origin, end.status),
        (JobOrigin::Fleet, lkagent::proto::JobStatus::JsSuccess)
    );
    drained(&client, "the item acknowledged").await;
    worker.stop().await;
}
