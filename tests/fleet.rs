//! A fleet on Redis (feature `redis`): workers in their own processes share
//! one Redis; one is killed with SIGKILL mid-job, and another takes the job
//! over once the dead worker's heartbeat lapses, resumes it from its
//! checkpoint, and finishes it — one final status in all.
//!
//! `cargo test --workspace --features lkagent/redis`; needs `redis-server`.
#![cfg(feature = "redis")]

mod common;

use common::*;
use lkagent::proto::JobStatus;
use lkagent_devserver::DispatchRequest;

fn fleet_args(redis: &TestRedis, id: &str) -> Vec<String> {
    [
        "--redis",
        &redis.url,
        "--redis-prefix",
        "fleet-test",
        "--worker-id",
        id,
        "--liveness-ms",
        "600",
    ]
    .map(String::from)
    .to_vec()
}

#[actix_rt::test]
async fn a_killed_workers_job_is_taken_over_and_finished_from_its_checkpoint() {
    let redis = TestRedis::start();
    let server = devserver().await;

    let (first, first_id) =
        ChildWorker::spawn_registered(&server, &fleet_args(&redis, "worker-a")).await;
    let job = server
        .dispatch(DispatchRequest::room("r").metadata(r#"{"duration_ms": 4000}"#))
        .await
        .unwrap();
    let before_kill = first.wait_progress("progress checkpointed", 1000);

    // b joins the fleet while a is alive: it leaves a's job alone, and a
    // goes on checkpointing it
    let (second, _) = ChildWorker::spawn_registered(&server, &fleet_args(&redis, "worker-b")).await;
    let before_kill = first.wait_progress("progress checkpointed", before_kill + 300);
    drop(first); // SIGKILL

    // a's heartbeat lapses (600 ms); b's next scan claims the job
    let resumed_at = second.wait_progress("resuming from checkpoint", before_kill);
    assert!(resumed_at < 4000, "resumed at {resumed_at} ms");
    let workers = server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.connected && w.migrated_jobs.contains(&job.id))
        })
        .await
        .expect("b claims the job with migrate_job");
    let second_id = workers
        .iter()
        .find(|w| w.connected && w.migrated_jobs.contains(&job.id))
        .unwrap()
        .id
        .clone();
    assert_ne!(first_id, second_id);

    let done = wait_job(&server, &job.id, "SUCCESS from b", |j| {
        j.updates.iter().any(|u| is_final(u.status))
    })
    .await;
    let last = done.updates.last().unwrap();
    assert_eq!(
        (last.status, &last.worker_id),
        (JobStatus::JsSuccess, &second_id)
    );
    assert_eq!(
        done.updates.iter().filter(|u| is_final(u.status)).count(),
        1,
        "{:?}",
        done.updates
    );
}

/// Awaits its termination, saving nothing.
struct Quiet;

impl lkagent::JobHandler for Quiet {
    async fn on_job(&self, ctx: lkagent::JobContext) -> Result<(), lkagent::JobError> {
        ctx.cancelled().await;
        Ok(())
    }
}

/// Runs one command on Redis at `url`, on a connection of its own.
fn redis_query<T: redis::FromRedisValue>(url: &str, command: &redis::Cmd) -> T {
    let mut connection = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("connects");
    command.query(&mut connection).expect("Redis answers")
}

/// Calls Redis has served so far, from `INFO commandstats`: of every
/// command, or of the one named.
fn calls(url: &str, command: Option<&str>) -> u64 {
    let info: String = redis_query(url, redis::cmd("INFO").arg("commandstats"));
    info.lines()
        .filter(|line| command.is_none_or(|c| line.starts_with(&format!("cmdstat_{c}:"))))
        .filter_map(|line| line.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// How many records the fleet's store under `prefix` holds.
fn records(url: &str, prefix: &str) -> u64 {
    redis_query(url, redis::cmd("HLEN").arg(format!("{{{prefix}}}:claims")))
}

/// Dispatches `count` jobs, a hundred at a time (the worker's decision
/// threads bound how many offers it weighs at once).
async fn dispatch_many(server: &lkagent_devserver::DevServer, count: usize) {
    for batch in 0..count.div_ceil(100) {
        let placed = futures_util::future::join_all(
            (0..100.min(count - batch * 100))
                .map(|n| server.dispatch(DispatchRequest::room(format!("room-{batch}-{n}")))),
        )
        .await;
        let refused: Vec<_> = placed.iter().filter_map(|p| p.as_ref().err()).collect();
        assert!(refused.is_empty(), "{refused:?}");
    }
}

#[actix_rt::test]
async fn a_thousand_jobs_checkpoints_are_written_in_a_few_batched_scripts_per_interval() {
    let redis = TestRedis::start();
    let server = devserver().await;
    let store = lkagent::recovery::RedisCheckpointStore::connect(&redis.url, "batched")
        .await
        .unwrap();
    let interval = std::time::Duration::from_millis(250);
    let mut options = options(&server).max_jobs(1000);
    options.checkpoint_interval = interval;
    let worker = lkagent::Worker::builder(options)
        .checkpoint_store(store.clone())
        .handler(Steady::default())
        .start()
        .unwrap();
    registered(&worker).await;
    dispatch_many(&server, 1000).await;
    wait_worker(&worker, "1,000 jobs running", |s| s.jobs.running == 1000).await;
    // the jobs' first checkpoints (one write each, as they start) are in:
    // from here on only the batched write-behind writes
    let url = redis.url.clone();
    eventually("the first checkpoints landed", || {
        records(&url, "batched") == 1000
    })
    .await;
    let progress = |store: lkagent::recovery::RedisCheckpointStore| async move {
        use lkagent::recovery::CheckpointStore as _;
        let records = store.list().await.unwrap();
        assert_eq!(records.len(), 1000);
        records
            .iter()
            .map(|r| r.load::<u64>("turn").unwrap().unwrap_or(0))
            .min()
            .unwrap()
    };
    let before = calls(&redis.url, Some("evalsha"));
    let least_before = progress(store.clone()).await;
    let window = std::time::Instant::now();
    actix_rt::time::sleep(std::time::Duration::from_secs(1)).await;
    let scripts = calls(&redis.url, Some("evalsha")) - before;
    let intervals = window.elapsed().as_secs_f64() / interval.as_secs_f64();
    // every job saved many times over the window, and every record moved
    let least_after = progress(store).await;
    assert!(
        least_after > least_before,
        "the least advanced record went from {least_before} to {least_after}"
    );
    // ceil(1,000 / 256) = 4 scripts a batch, one batch an interval (plus
    // one interval's slack at the window's edges)
    let most = 4.0 * (intervals + 1.0);
    assert!(
        scripts as f64 <= most,
        "{scripts} scripts in {intervals:.1} intervals with 1,000 jobs saving"
    );
    worker.stop().await;
}

#[actix_rt::test]
async fn a_worker_with_a_thousand_jobs_stays_alive_with_a_few_commands_per_interval() {
    let redis = TestRedis::start();
    let server = devserver().await;
    let store = lkagent::recovery::RedisCheckpointStore::connect(&redis.url, "thousand")
        .await
        .unwrap();
    let mut options = options(&server).max_jobs(1000);
    options.liveness_ttl = std::time::Duration::from_millis(300);
    let worker = lkagent::Worker::builder(options)
        .checkpoint_store(store)
        .handler(Quiet)
        .start()
        .unwrap();
    registered(&worker).await;
    dispatch_many(&server, 1000).await;
    wait_worker(&worker, "1,000 jobs running", |s| s.jobs.running == 1000).await;
    // each job writes its first checkpoint once as it starts; then only the
    // worker's own upkeep is left
    let url = redis.url.clone();
    eventually("the first checkpoints landed", || {
        records(&url, "thousand") == 1000
    })
    .await;

    // over a second: ten heartbeats (every 100 ms) and three orphan scans
    // (every 300 ms, three commands each) — whatever the number of jobs
    let before = calls(&redis.url, None);
    let window = std::time::Instant::now();
    actix_rt::time::sleep(std::time::Duration::from_secs(1)).await;
    let served = calls(&redis.url, None) - before - 1; // less this INFO
    let seconds = window.elapsed().as_secs_f64();
    assert!(
        served as f64 <= 40.0 * seconds,
        "{served} commands in {seconds:.2} s with 1,000 jobs"
    );
    assert!(served >= 5, "the heartbeat is renewed: {served} commands");
    worker.stop().await;
}

/// Saves a counter every 20 ms until terminated, noting its progress where
/// the test can read it.
#[derive(Clone, Default)]
struct Steady {
    turns: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl lkagent::JobHandler for Steady {
    async fn on_job(&self, ctx: lkagent::JobContext) -> Result<(), lkagent::JobError> {
        let mut turn = 0u64;
        loop {
            turn += 1;
            ctx.checkpoint().save("turn", &turn).expect("saves");
            self.turns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::select! {
                _ = ctx.cancelled() => return Ok(()),
                _ = actix_rt::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
        }
    }
}

#[actix_rt::test]
async fn jobs_ride_out_redis_going_down_and_every_status_is_delivered() {
    use std::sync::atomic::Ordering;
    let mut redis = TestRedis::start_persistent();
    let server = devserver().await;
    let store = lkagent::recovery::RedisCheckpointStore::connect(&redis.url, "outage")
        .await
        .unwrap();
    let mut options = options(&server);
    options.checkpoint_interval = std::time::Duration::from_millis(100);
    let handler = Steady::default();
    let worker = lkagent::Worker::builder(options)
        .checkpoint_store(store)
        .handler(handler.clone())
        .start()
        .unwrap();
    registered(&worker).await;
    let mut jobs = Vec::new();
    for n in 0..4 {
        let job = server
            .dispatch(DispatchRequest::room(format!("outage-{n}")))
            .await
            .unwrap();
        jobs.push(job.id);
    }
    wait_worker(&worker, "4 jobs running", |s| s.jobs.running == 4).await;
    let url = redis.url.clone();
    eventually("the records landed", || records(&url, "outage") == 4).await;

    let stored_turn = |url: &str, id: &str| -> u64 {
        let bytes: Vec<u8> =
            redis_query(url, redis::cmd("HGET").arg("{outage}:checkpoints").arg(id));
        let record = lkagent::recovery::JobCheckpoint::decode(&bytes).expect("a record");
        record.load::<u64>("turn").unwrap().unwrap_or(0)
    };
    let turn_before = stored_turn(&redis.url, &jobs[3]);
    redis.kill();
    let down = wait_worker(&worker, "the store's error reported", |s| {
        s.store_error.is_some()
    })
    .await;
    assert_eq!(down.jobs.running, 4, "the jobs go on: {down:?}");
    let before = handler.turns.load(Ordering::SeqCst);
    eventually("the handlers keep running", || {
        handler.turns.load(Ordering::SeqCst) > before + 8
    })
    .await;
    // two end while Redis is down: their statuses reach the server anyway
    for id in &jobs[..2] {
        server.terminate_job(id).await.unwrap();
    }
    for id in &jobs[..2] {
        let done = wait_final(&server, id).await;
        assert_eq!(done.status, JobStatus::JsSuccess, "{done:?}");
    }

    redis.restart();
    wait_worker(&worker, "the store answers again", |s| {
        s.store_error.is_none()
    })
    .await;
    for id in &jobs[2..] {
        let kept: bool = redis_query(
            &redis.url,
            redis::cmd("HEXISTS").arg("{outage}:claims").arg(id),
        );
        assert!(
            kept,
            "the running job {id} kept its record through the outage"
        );
    }
    // the write-behind resumed: the stored progress moved on past where
    // the outage found it (the handler saved ~50 turns a second meanwhile)
    let url = redis.url.clone();
    let resumed_id = jobs[3].clone();
    eventually("checkpoint writes resumed", || {
        stored_turn(&url, &resumed_id) > turn_before + 50
    })
    .await;
    for id in &jobs[2..] {
        server.terminate_job(id).await.unwrap();
    }
    for id in &jobs {
        let done = wait_final(&server, id).await;
        let finals = statuses(&done).into_iter().filter(|s| is_final(*s)).count();
        assert_eq!(finals, 1, "one final status each: {done:?}");
    }
    // the removals that failed in the outage were retried
    let url = redis.url.clone();
    eventually("every record removed", || records(&url, "outage") == 0).await;
    worker.stop().await;
}
