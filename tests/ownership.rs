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
    eventually("the record removed", || {
        futures_util::FutureExt::now_or_never(store.get(&job.id))
            .is_some_and(|got| matches!(got, Ok(None)))
    })
    .await;
    assert_eq!(*handler.first_runs.lock().unwrap(), 1, "b never ran it");
    b.stop().await;
    c.stop().await;
}
