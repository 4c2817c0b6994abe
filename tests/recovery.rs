//! Jobs that survive: a handler panic (restart from the checkpoint), a
//! worker process killed with SIGKILL (resume from a durable checkpoint), and
//! the recovery handler's say over which jobs come back. (A job surviving a
//! dropped connection, its final status delivered once after the reconnect,
//! is in `tests/worker.rs`.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lkagent::proto::{self, JobStatus};
use lkagent::recovery::{
    CheckpointStore, EmbeddedStore, JobCheckpoint, MemoryStore, RecoveryError, RecoveryHandler,
};
use lkagent::{JobContext, JobError, JobHandler, Worker};
use lkagent_devserver::{DevServer, DispatchRequest};

/// What a handler saw in its context, run by run.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    attempt: u32,
    restart: bool,
    recovered: bool,
    stage: Option<String>,
}

/// Saves its stage, then panics on the first run; later runs read the stage
/// back and succeed.
#[derive(Clone, Default)]
struct PanicsOnce {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// When set, a run that finds a saved stage waits for a permit first.
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl JobHandler for PanicsOnce {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let stage = ctx.checkpoint().load::<String>("stage").unwrap();
        self.seen.lock().unwrap().push(Seen {
            attempt: ctx.attempt(),
            restart: ctx.is_restart(),
            recovered: ctx.is_recovered(),
            stage: stage.clone(),
        });
        if stage.is_none() {
            ctx.checkpoint()
                .save("stage", "greeted the caller")
                .unwrap();
            panic!("lost the audio device");
        }
        if let Some(gate) = &self.gate {
            let _permit = gate.acquire().await;
        }
        Ok(())
    }
}

#[actix_rt::test]
async fn a_handler_that_panics_once_resumes_from_its_checkpoint_and_succeeds() {
    let server = devserver().await;
    let handler = PanicsOnce::default();
    let worker = worker(options(&server), handler.clone());
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    let done = wait_final(&server, &job.id).await;
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess],
        "no FAILED in between"
    );
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            Seen {
                attempt: 1,
                restart: false,
                recovered: false,
                stage: None
            },
            Seen {
                attempt: 2,
                restart: true,
                recovered: false,
                stage: Some("greeted the caller".into())
            },
        ]
    );
}

/// Records what the recovery hooks were told.
#[derive(Clone)]
struct Recorder {
    accept: bool,
    failed: Arc<Mutex<Vec<String>>>,
    recovered: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn new(accept: bool) -> Self {
        Self {
            accept,
            failed: Arc::default(),
            recovered: Arc::default(),
        }
    }
}

impl RecoveryHandler for Recorder {
    fn on_recovery_attempt(&self, _job_id: &str, _checkpoint: &JobCheckpoint) -> bool {
        self.accept
    }

    fn on_recovered(&self, job: &proto::Job, _ctx: &JobContext) {
        self.recovered.lock().unwrap().push(job.id.clone());
    }

    fn on_recovery_failed(&self, job_id: &str, error: &RecoveryError) {
        self.failed
            .lock()
            .unwrap()
            .push(format!("{job_id}: {error}"));
    }
}

/// Runs until the test ends: stands for a worker that died mid-job.
struct Forever;

impl JobHandler for Forever {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        ctx.cancelled().await;
        Ok(())
    }
}

/// A checkpoint as a worker that died mid-job would have left it: its
/// worker (`gone`) dies holding the job.
async fn orphaned(server: &DevServer, store: &Arc<MemoryStore>) -> String {
    let gone = Doomed::start(server, options(server).agent_name("gone"), Forever).await;
    let job_id = orphaned_checkpoint(server, store, "r").await;
    gone.kill(server).await;
    job_id
}

#[actix_rt::test]
async fn a_refused_recovery_is_reported_and_not_resumed() {
    let server = devserver().await;
    let store = Arc::new(MemoryStore::new());
    let job_id = orphaned(&server, &store).await;
    let recorder = Recorder::new(false);
    let handler = PanicsOnce::default();
    let worker = Worker::builder(options(&server).agent_name("gone"))
        .checkpoint_store(store.clone())
        .recovery_handler(recorder.clone())
        .handler(handler.clone())
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;

    let job = wait_job(&server, &job_id, "the refusal reported", |j| {
        j.updates.iter().any(|u| u.worker_id == worker_id)
    })
    .await;
    let update = job
        .updates
        .iter()
        .find(|u| u.worker_id == worker_id)
        .unwrap();
    assert_eq!(update.status, JobStatus::JsFailed);
    assert!(update.error.contains("not recovered"), "{}", update.error);
    let failed = recorder.failed.lock().unwrap().clone();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].starts_with(&job_id), "{failed:?}");
    assert!(recorder.recovered.lock().unwrap().is_empty());
    assert!(
        handler.seen.lock().unwrap().is_empty(),
        "the handler never ran"
    );
    assert!(
        worker
            .send(lkagent::GetState)
            .await
            .unwrap()
            .running_jobs
            .is_empty()
    );
    assert!(
        store.get(&job_id).await.unwrap().is_none(),
        "the checkpoint was removed"
    );
}

#[actix_rt::test]
async fn an_accepted_recovery_resumes_with_the_saved_state_and_is_claimed() {
    let server = devserver().await;
    let store = Arc::new(MemoryStore::new());
    let job_id = orphaned(&server, &store).await;
    let recorder = Recorder::new(true);
    // the resumed job runs until the test has seen it claimed
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = PanicsOnce {
        gate: Some(gate.clone()),
        ..Default::default()
    };
    let worker = Worker::builder(options(&server).agent_name("gone"))
        .checkpoint_store(store.clone())
        .recovery_handler(recorder.clone())
        .handler(handler.clone())
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == worker_id && w.migrated_jobs.contains(&job_id))
        })
        .await
        .expect("the resumed job is claimed with migrate_job");
    gate.add_permits(1);
    let job = wait_job(&server, &job_id, "SUCCESS from the new worker", |j| {
        j.updates
            .iter()
            .any(|u| u.worker_id == worker_id && u.status == JobStatus::JsSuccess)
    })
    .await;
    assert_eq!(
        job.updates.iter().filter(|u| is_final(u.status)).count(),
        1,
        "{:?}",
        job.updates
    );
    assert_eq!(
        *recorder.recovered.lock().unwrap(),
        std::slice::from_ref(&job_id)
    );
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [Seen {
            attempt: 2,
            restart: true,
            recovered: true,
            stage: Some("greeted the caller".into())
        }]
    );
    wait_worker(&worker, "the job to end", |s| s.running_jobs.is_empty()).await;
    let start = Instant::now();
    while store.get(&job_id).await.unwrap().is_some() {
        assert!(
            start.elapsed() < DEADLINE,
            "the checkpoint is never removed"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The example worker's flags for a checkpoint store in `dir`.
fn state_args(dir: &std::path::Path) -> Vec<String> {
    vec!["--state-dir".into(), dir.display().to_string()]
}

#[actix_rt::test]
async fn a_worker_killed_mid_job_resumes_it_from_its_checkpoint_after_a_restart() {
    let server = devserver().await;
    let state_dir = tempfile::tempdir().unwrap();

    let (first, first_id) =
        ChildWorker::spawn_registered(&server, &state_args(state_dir.path())).await;
    let job = server
        .dispatch(DispatchRequest::room("r").metadata(r#"{"duration_ms": 4000}"#))
        .await
        .unwrap();
    // durable progress of at least a second, then SIGKILL
    let before_kill = first.wait_progress("progress checkpointed", 1000);
    drop(first);
    server
        .wait_workers(DEADLINE, |ws| ws.iter().all(|w| !w.connected))
        .await
        .expect("the killed worker's connection ends");

    let second = ChildWorker::spawn(&server, &state_args(state_dir.path()));
    let resumed_at = second.wait_progress("resuming from checkpoint", before_kill);
    assert!(resumed_at < 4000, "resumed at {resumed_at} ms");
    let workers = server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.connected && w.migrated_jobs.contains(&job.id))
        })
        .await
        .expect("the restarted worker claims the job");
    let second_id = workers.iter().find(|w| w.connected).unwrap().id.clone();
    assert_ne!(first_id, second_id);

    let done = wait_job(&server, &job.id, "SUCCESS after the restart", |j| {
        j.updates.iter().any(|u| is_final(u.status))
    })
    .await;
    let last = done.updates.last().unwrap();
    assert_eq!(last.status, JobStatus::JsSuccess);
    assert_eq!(last.worker_id, second_id);
    assert_eq!(
        done.updates.iter().filter(|u| is_final(u.status)).count(),
        1
    );
}

#[actix_rt::test]
async fn after_a_reconnect_the_recovery_handler_keeps_or_ends_running_jobs() {
    for accept in [true, false] {
        let server = devserver().await;
        let recorder = Recorder::new(accept);
        let worker = Worker::builder(options(&server))
            .recovery_handler(recorder.clone())
            .handler(Forever)
            .start()
            .unwrap();
        registered(&worker).await;
        let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
        wait_job(&server, &job.id, "RUNNING", |j| {
            statuses(j).contains(&JobStatus::JsRunning)
        })
        .await;
        server.drop_connections().await;
        let state = wait_worker(&worker, "the reconnect", |s| {
            s.connected && s.registrations == 2
        })
        .await;
        let second_id = state.worker_id.unwrap();
        if accept {
            // the job asks about itself, just after the registration
            eventually("on_recovered", || {
                !recorder.recovered.lock().unwrap().is_empty()
            })
            .await;
            assert_eq!(
                *recorder.recovered.lock().unwrap(),
                std::slice::from_ref(&job.id)
            );
            assert!(recorder.failed.lock().unwrap().is_empty());
            let workers = server
                .wait_workers(DEADLINE, |ws| {
                    ws.iter()
                        .any(|w| w.id == second_id && w.migrated_jobs.contains(&job.id))
                })
                .await
                .expect("the kept job is claimed");
            assert!(!workers.is_empty());
            assert_eq!(state.running_jobs, std::slice::from_ref(&job.id));
        } else {
            let done = wait_final(&server, &job.id).await;
            let last = done.updates.last().unwrap();
            assert_eq!(last.status, JobStatus::JsFailed);
            assert!(last.error.contains("not recovered"), "{}", last.error);
            assert_eq!(last.worker_id, second_id);
            let failed = recorder.failed.lock().unwrap().clone();
            assert_eq!(failed.len(), 1, "{failed:?}");
            assert!(recorder.recovered.lock().unwrap().is_empty());
            wait_worker(&worker, "the declined job to end", |s| {
                s.running_jobs.is_empty()
            })
            .await;
        }
    }
}

#[actix_rt::test]
async fn a_final_status_the_server_never_confirmed_survives_sigkill_and_is_reported_again() {
    // a server that reads everything but never answers a ping: no final
    // status is ever confirmed, so it stays in the job's record
    let server = devserver_with(lkagent_devserver::DevServerConfig {
        answer_pings: false,
        ..Default::default()
    })
    .await;
    let state_dir = tempfile::tempdir().unwrap();
    let (first, first_id) =
        ChildWorker::spawn_registered(&server, &state_args(state_dir.path())).await;
    let job = server
        .dispatch(DispatchRequest::room("r").metadata(r#"{"duration_ms": 200}"#))
        .await
        .unwrap();
    wait_job(&server, &job.id, "SUCCESS from the first worker", |j| {
        j.updates
            .iter()
            .any(|u| u.worker_id == first_id && u.status == JobStatus::JsSuccess)
    })
    .await;
    drop(first); // SIGKILL, before any confirmation

    let second = ChildWorker::spawn(&server, &state_args(state_dir.path()));
    let done = wait_job(
        &server,
        &job.id,
        "SUCCESS again from the next worker",
        |j| {
            j.updates
                .iter()
                .any(|u| u.worker_id != first_id && u.status == JobStatus::JsSuccess)
        },
    )
    .await;
    let again: Vec<JobStatus> = done
        .updates
        .iter()
        .filter(|u| u.worker_id != first_id)
        .map(|u| u.status)
        .collect();
    assert_eq!(
        again,
        [JobStatus::JsSuccess],
        "reported again, not run again: {:?}",
        done.updates
    );
    drop(second);
}

/// Saves a counter every 10 ms until terminated.
struct Counting;

impl JobHandler for Counting {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        for turn in 1u64.. {
            ctx.checkpoint().save("turn", &turn).expect("saves");
            tokio::select! {
                _ = ctx.cancelled() => break,
                _ = actix_rt::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        Ok(())
    }
}

#[actix_rt::test]
async fn a_local_jobs_checkpoint_never_reaches_the_workers_store() {
    let server = devserver().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let mut options = options(&server);
    options.checkpoint_interval = Duration::from_millis(50);
    let worker = Worker::builder(options)
        .checkpoint_store(store.clone())
        .handler(Counting)
        .start()
        .unwrap();
    registered(&worker).await;
    let local = match worker
        .send(lkagent::SpawnJob::new("local-room"))
        .await
        .unwrap()
    {
        lkagent::SpawnOutcome::Started { job_id } => job_id,
        other => panic!("{other:?}"),
    };
    let dispatched = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    wait_worker(&worker, "both running", |s| s.jobs.running == 2).await;
    // the server's job is written behind, interval after interval, while
    // the local job saves as often
    wait_until(
        "the server job's progress written behind",
        || store.get(&dispatched.id),
        |got| {
            matches!(got, Ok(Some(record))
                if record.load::<u64>("turn").unwrap().unwrap_or(0) > 20)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        store.get(&local).await.unwrap(),
        None,
        "nobody would claim a local job: its record is not the store's"
    );
    worker.stop().await;
}
