//! Who holds a job in a shared checkpoint store: a worker starting beside a
//! live one leaves its jobs alone; once that worker is gone its kept job is
//! an orphan, and the next worker to start claims it — once, at the next
//! fence — and finishes it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use lkagent::proto::JobStatus;
use lkagent::recovery::{CheckpointStore, Claim, EmbeddedStore};
use lkagent::{JobContext, JobError, JobHandler, Worker};
use lkagent_devserver::DispatchRequest;

/// Checkpoints, then runs until cancelled; a resumed run records the
/// claim its checkpoint is held by, and succeeds.
#[derive(Clone, Default)]
struct Held {
    resumed_under: Arc<Mutex<Vec<Claim>>>,
    first_runs: Arc<Mutex<usize>>,
}

impl JobHandler for Held {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        if ctx.is_recovered() {
            let claim = ctx.checkpoint().snapshot().claim().clone();
            self.resumed_under.lock().unwrap().push(claim);
            return Ok(());
        }
        *self.first_runs.lock().unwrap() += 1;
        ctx.checkpoint().save("progress", &1u32).unwrap();
        ctx.checkpoint()
            .flush()
            .await
            .map_err(|e| JobError::failed(e.to_string()))?;
        ctx.cancelled().await;
        Ok(())
    }
}

fn named(server: &lkagent_devserver::DevServer, id: &str) -> lkagent::WorkerOptions {
    let mut options = options(server);
    options.instance_id = id.into();
    options
}

#[actix_rt::test]
async fn only_a_gone_workers_job_is_claimed_and_by_one_worker() {
    let server = devserver().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let handler = Held::default();
    let start = |id: &str| {
        Worker::builder(named(&server, id))
            .checkpoint_store(store.clone())
            .handler(handler.clone())
            .start()
            .unwrap()
    };

    let a = start("worker-a");
    registered(&a).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    eventually("the job checkpointed", || {
        *handler.first_runs.lock().unwrap() == 1
    })
    .await;
    let record = store.get(&job.id).await.unwrap().expect("flushed");
    assert_eq!(record.claim(), &Claim::new("worker-a", 0));

    // b starts while a is alive: a's job is not an orphan, b leaves it
    let b = start("worker-b");
    registered(&b).await;

    // a is cut by a drain: its checkpoint stays, and its heartbeat goes
    // with it, so the job is an orphan at once
    a.drain(Duration::from_millis(200)).await;
    let orphans = store.list_orphaned().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");

    // c starts and claims it; the one claim made is c's, at fence 1 (had b
    // claimed it at its start, c's would be at fence 2)
    let c = start("worker-c");
    let c_id = registered(&c).await;
    eventually("the job resumed", || {
        !handler.resumed_under.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        *handler.resumed_under.lock().unwrap(),
        [Claim::new("worker-c", 1)]
    );
    wait_job(&server, &job.id, "SUCCESS from c", |j| {
        j.updates
            .iter()
            .any(|u| u.worker_id == c_id && u.status == JobStatus::JsSuccess)
    })
    .await;
    // the record goes with the job's end, removed under c's claim
    wait_until(
        "the record removed",
        || store.get(&job.id),
        |got| matches!(got, Ok(None)),
    )
    .await
    .unwrap();
    assert_eq!(*handler.first_runs.lock().unwrap(), 1, "b never ran it");
    b.stop().await;
    c.stop().await;
}

/// Saves a growing counter every 20 ms until cancelled; records whether
/// its run was cancelled.
#[derive(Clone, Default)]
struct Counting {
    cancelled: Arc<Mutex<bool>>,
}

impl JobHandler for Counting {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let mut n = 0u32;
        loop {
            n += 1;
            ctx.checkpoint().save("n", &n).unwrap();
            tokio::select! {
                () = ctx.cancelled() => {
                    *self.cancelled.lock().unwrap() = true;
                    return Ok(());
                }
                () = actix_rt::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}

#[actix_rt::test]
async fn a_worker_whose_job_was_claimed_away_stops_its_copy_without_a_status() {
    let server = devserver().await;
    let store = Arc::new(lkagent::recovery::MemoryStore::new());
    let mut options = named(&server, "worker-a");
    options.checkpoint_interval = Duration::from_millis(50);
    let worker = Worker::builder(options)
        .checkpoint_store(store.clone())
        .handler(Counting::default())
        .start()
        .unwrap();
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    wait_worker(&worker, "running", |s| s.jobs.running == 1).await;

    // a partition: a's heartbeat lapses as far as the store knows, and b
    // claims the job
    store.retire("worker-a").await.unwrap();
    let taken = store
        .claim(&job.id, "worker-b")
        .await
        .unwrap()
        .expect("orphaned");
    assert_eq!(taken.claim(), &Claim::new("worker-b", 1));

    // a's next write is refused: it lets the job go, with no status
    wait_worker(&worker, "the job let go", |s| {
        s.jobs.running == 0 && s.running_jobs.is_empty()
    })
    .await;
    let record = store.get(&job.id).await.unwrap().expect("left alone");
    assert_eq!(record, taken, "a wrote nothing after the claim");
    no_final_status_from(worker, &server, &job.id).await;
}

/// Runs until the test lets it end, then succeeds; saves nothing, so its
/// only write after the start is its final status.
#[derive(Clone, Default)]
struct Released {
    release: Arc<tokio::sync::Notify>,
}

impl JobHandler for Released {
    async fn on_job(&self, _ctx: JobContext) -> Result<(), JobError> {
        self.release.notified().await;
        Ok(())
    }
}

#[actix_rt::test]
async fn a_job_claimed_away_while_it_ends_records_and_reports_no_status() {
    let server = devserver().await;
    let store = Arc::new(lkagent::recovery::MemoryStore::new());
    let handler = Released::default();
    let worker = Worker::builder(named(&server, "worker-a"))
        .checkpoint_store(store.clone())
        .handler(handler.clone())
        .start()
        .unwrap();
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    wait_worker(&worker, "running", |s| s.jobs.running == 1).await;
    let first = store.get(&job.id).await.unwrap().expect("written at start");
    assert_eq!(first.claim(), &Claim::new("worker-a", 0));

    store.retire("worker-a").await.unwrap();
    let taken = store
        .claim(&job.id, "worker-b")
        .await
        .unwrap()
        .expect("orphaned");

    // the handler returns: the job's final write is refused, so a lets the
    // job go instead of finishing it
    handler.release.notify_one();
    wait_worker(&worker, "the job let go", |s| {
        s.jobs.running == 0 && s.jobs.finishing == 0 && s.running_jobs.is_empty()
    })
    .await;
    let record = store.get(&job.id).await.unwrap().expect("left alone");
    assert_eq!(record, taken, "no final status written over b's claim");
    assert!(record.final_status().is_none());
    no_final_status_from(worker, &server, &job.id).await;
}

/// Stops `worker` (its socket closes after whatever it sent, and the dev
/// server reads a session's frames in order), then checks that the server
/// heard no final status for `job_id`.
async fn no_final_status_from(worker: Worker, server: &lkagent_devserver::DevServer, job_id: &str) {
    worker.stop().await;
    let seen = server.job(job_id).await.unwrap();
    assert!(
        !seen.updates.iter().any(|u| is_final(u.status)),
        "no final status from a: {:?}",
        seen.updates
    );
}
