//! Running it in production: the HTTP endpoints follow the worker's health,
//! registration and drain; `/worker` and `/metrics` reflect its jobs; a drain
//! waits for jobs or cuts them at its timeout (keeping their checkpoints in a
//! durable store); shutdown hooks run in order and a hanging one is cut off.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use lkagent::demo::DemoAgent;
use lkagent::proto::{self, JobStatus};
use lkagent::recovery::{CheckpointStore, EmbeddedStore};
use lkagent::{
    JobContext, JobError, JobHandler, ShutdownHook, ShutdownPhase, Worker, WorkerOptions,
};
use lkagent_devserver::{DevServer, DevServerConfig, DispatchError, DispatchRequest};

/// GETs `path` from the worker's endpoints: the status and the body.
async fn get(worker: &Worker, path: &str) -> (u16, String) {
    http_get(worker.http_addr().expect("the worker serves HTTP"), path).await
}

/// Waits until `path` answers `status`; the last body.
async fn wait_status(worker: &Worker, path: &str, status: u16) -> String {
    let start = std::time::Instant::now();
    loop {
        let (code, body) = get(worker, path).await;
        if code == status {
            return body;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{path} still answers {code} ({body}), not {status}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The samples of the Prometheus text whose name is `name` and whose labels
/// include `labels`, as (their labels, value).
fn samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name).then(|| (rest.trim_end_matches('}').to_owned(), value))
        })
        .filter(|(series_labels, _)| {
            labels
                .iter()
                .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(series_labels, value)| (series_labels, value.parse().expect("a number")))
        .collect()
}

/// The one value of `name` for this worker's instance.
fn value(text: &str, name: &str, instance: &str) -> f64 {
    let found = samples(text, name, &[("worker", instance)]);
    assert_eq!(found.len(), 1, "{name} for {instance}: {found:?}\n{text}");
    found[0].1
}

fn with_http(options: WorkerOptions) -> lkagent::WorkerBuilder {
    Worker::builder(options).http("127.0.0.1:0")
}

#[actix_rt::test]
async fn liveness_turns_503_when_the_server_stays_unreachable_and_200_when_it_returns() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let options = WorkerOptions::new(format!("ws://{port}"), KEY, SECRET)
        .keepalive(Duration::from_millis(100), Duration::from_millis(1000))
        .reconnect(lkagent::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            jitter: 0.0,
        })
        .reconnect_give_up_after(Duration::from_millis(400));
    let worker = with_http(options).handler(DemoAgent).start().unwrap();
    // not registered yet, but not given up either: live, not ready
    let (code, _) = get(&worker, "/ready").await;
    assert_eq!(code, 503);
    let body = wait_status(&worker, "/", 503).await;
    assert!(body.contains("unreachable"), "{body}");

    let server = DevServer::start(DevServerConfig {
        bind: port,
        keys: vec![(KEY.into(), SECRET.into())],
        ..Default::default()
    })
    .await
    .unwrap();
    wait_status(&worker, "/", 200).await;
    wait_status(&worker, "/ready", 200).await;
    serve_quick_job(&server, "back").await;
}

#[actix_rt::test]
async fn ready_follows_registration_and_drain_while_live_stays_200() {
    let server = devserver().await;
    let worker = with_http(options(&server))
        .handler(DemoAgent)
        .start()
        .unwrap();
    registered(&worker).await;
    wait_status(&worker, "/ready", 200).await;
    let job = server
        .dispatch(DispatchRequest::room("r").metadata(r#"{"duration_ms": 60000}"#))
        .await
        .unwrap();
    wait_worker(&worker, "the job", |s| s.running_jobs.len() == 1).await;

    let draining = worker.clone();
    let drain = actix_rt::spawn(async move { draining.drain(Duration::from_secs(60)).await });
    let body = wait_status(&worker, "/ready", 503).await;
    assert!(body.contains("draining"), "{body}");
    assert_eq!(
        get(&worker, "/").await.0,
        200,
        "a drain is not a liveness failure"
    );
    let (_, json) = get(&worker, "/worker").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["draining"], true, "{json}");
    assert_eq!(json["status"], "full", "a draining worker is FULL: {json}");
    server.terminate_job(&job.id).await.unwrap();
    drain.await.unwrap();
    assert_eq!(get(&worker, "/").await.0, 503, "the worker has stopped");
}

/// Runs until the test releases it (or it is cancelled).
#[derive(Clone)]
struct Held(Arc<tokio::sync::Semaphore>);

impl JobHandler for Held {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        use futures_util::future::{Either, select};
        let permit = Box::pin(self.0.acquire());
        match select(permit, Box::pin(ctx.cancelled())).await {
            Either::Left((permit, _)) => permit.expect("open").forget(),
            Either::Right(_) => {}
        }
        Ok(())
    }
}

#[actix_rt::test]
async fn worker_and_metrics_reflect_a_running_job_then_its_end() {
    let server = devserver().await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let mut options = options(&server).agent_name("metered");
    options.instance_id = "metrics-test-worker".into();
    let worker = with_http(options)
        .handler(Held(release.clone()))
        .start()
        .unwrap();
    let worker_id = registered(&worker).await;
    let job = server
        .dispatch(DispatchRequest::room("r").agent_name("metered"))
        .await
        .unwrap();
    wait_job(&server, &job.id, "RUNNING", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;

    let (code, json) = get(&worker, "/worker").await;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["agent_name"], "metered");
    assert_eq!(json["worker_type"], "JT_ROOM");
    assert_eq!(json["worker_id"], worker_id.as_str());
    assert_eq!(json["active_jobs"], 1);
    assert_eq!(json["jobs"]["running"], 1);
    assert_eq!(json["sdk_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["connected"], true);

    let me = "metrics-test-worker";
    let (code, text) = get(&worker, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(value(&text, "livekit_agent_active_jobs", me), 1.0);
    assert_eq!(value(&text, "livekit_agent_jobs_offered_total", me), 1.0);
    assert_eq!(value(&text, "livekit_agent_jobs_accepted_total", me), 1.0);
    assert_eq!(value(&text, "livekit_agent_jobs_started_total", me), 1.0);
    assert_eq!(value(&text, "livekit_agent_connected", me), 1.0);
    assert_eq!(
        value(&text, "livekit_agent_availability_answer_seconds_count", me),
        1.0
    );
    let labels = samples(&text, "livekit_agent_active_jobs", &[("worker", me)]);
    assert!(
        labels[0].0.contains(r#"agent_name="metered""#),
        "{labels:?}"
    );

    release.add_permits(1);
    wait_final(&server, &job.id).await;
    let start = std::time::Instant::now();
    loop {
        let (_, text) = get(&worker, "/metrics").await;
        let completed = samples(
            &text,
            "livekit_agent_jobs_completed_total",
            &[("worker", me)],
        );
        if completed.first().is_some_and(|(_, v)| *v == 1.0) {
            assert_eq!(value(&text, "livekit_agent_active_jobs", me), 0.0);
            assert_eq!(
                value(&text, "livekit_agent_job_duration_seconds_count", me),
                1.0
            );
            assert!(
                samples(&text, "livekit_agent_jobs_failed_total", &[("worker", me)]).is_empty()
            );
            if value(&text, "livekit_agent_outbox_depth", me) == 0.0 {
                break; // the server confirmed the final status
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the completion is never counted:\n{text}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_drain_waits_for_a_running_job_reports_success_and_stops() {
    let server = devserver().await;
    let worker = worker(options(&server), DemoAgent);
    let worker_id = registered(&worker).await;
    let job = server
        .dispatch(DispatchRequest::room("r").metadata(r#"{"duration_ms": 2000}"#))
        .await
        .unwrap();
    wait_worker(&worker, "the job", |s| s.running_jobs.len() == 1).await;

    let draining = worker.clone();
    let drain = actix_rt::spawn(async move { draining.drain(Duration::from_secs(30)).await });
    // the server is told, and new work is declined meanwhile
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter()
                .any(|w| w.id == worker_id && w.last_update.is_some_and(|u| u.draining))
        })
        .await
        .expect("draining reported");
    let refused = server
        .dispatch(DispatchRequest::room("new").to_worker(worker_id.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, DispatchError::Declined { .. }),
        "{refused:?}"
    );
    let state = worker.send(lkagent::GetState).await.unwrap();
    assert!(state.draining && state.running_jobs.len() == 1, "{state:?}");

    drain.await.unwrap();
    assert!(!worker.connected(), "stopped after the drain");
    let done = server.job(&job.id).await.unwrap();
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess],
        "the job finished on its own"
    );
}

/// Checkpoints its progress, then runs until cancelled; counts its
/// `on_terminated` calls and records whether it ran as a recovered job.
#[derive(Clone, Default)]
struct Long {
    terminated: Arc<AtomicUsize>,
    recovered: Arc<Mutex<Vec<bool>>>,
}

impl JobHandler for Long {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        self.recovered.lock().unwrap().push(ctx.is_recovered());
        if ctx.is_recovered() {
            return Ok(());
        }
        ctx.checkpoint().save("progress", &1u32).unwrap();
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

#[actix_rt::test]
async fn a_drain_past_its_timeout_terminates_the_job_reports_failed_and_keeps_its_checkpoint() {
    let server = devserver().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let handler = Long::default();
    let worker = Worker::builder(options(&server))
        .checkpoint_store(store.clone())
        .handler(handler.clone())
        .start()
        .unwrap();
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    eventually("the job checkpointed", || {
        handler.recovered.lock().unwrap().len() == 1
    })
    .await;
    wait_worker(&worker, "running", |s| s.jobs.running == 1).await;

    worker.drain(Duration::from_millis(300)).await;
    assert_eq!(
        handler.terminated.load(Ordering::SeqCst),
        1,
        "on_terminated ran"
    );
    let done = wait_final(&server, &job.id).await;
    let last = done.updates.last().unwrap();
    assert_eq!(last.status, JobStatus::JsFailed);
    assert!(last.error.contains("drain timeout"), "{}", last.error);
    assert!(
        store.get(&job.id).await.unwrap().is_some(),
        "the checkpoint stays for the next start"
    );

    // the next start resumes it
    let next = Worker::builder(options(&server))
        .checkpoint_store(store.clone())
        .handler(handler.clone())
        .start()
        .unwrap();
    let next_id = registered(&next).await;
    eventually("the job resumed", || {
        *handler.recovered.lock().unwrap() == [false, true]
    })
    .await;
    wait_job(&server, &job.id, "SUCCESS from the next worker", |j| {
        j.updates
            .iter()
            .any(|u| u.worker_id == next_id && u.status == JobStatus::JsSuccess)
    })
    .await;
}

#[actix_rt::test]
async fn shutdown_hooks_run_in_order_and_a_hanging_or_panicking_one_does_not_hold_it_up() {
    let server = devserver().await;
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = |name: &'static str| {
        let ran = ran.clone();
        move || async move { ran.lock().unwrap().push(name.to_owned()) }
    };
    let hang = {
        let ran = ran.clone();
        move || async move {
            ran.lock().unwrap().push("hang".to_owned());
            std::future::pending::<()>().await
        }
    };
    let worker = Worker::builder(options(&server))
        .on_shutdown(
            ShutdownPhase::Cleanup,
            ShutdownHook::new("cleanup", log("cleanup")),
        )
        .on_shutdown(
            ShutdownPhase::BeforeDrain,
            ShutdownHook::new("second", log("second")).order(2),
        )
        .on_shutdown(
            ShutdownPhase::BeforeDrain,
            ShutdownHook::new("hang", hang)
                .order(1)
                .timeout(Duration::from_millis(200)),
        )
        .on_shutdown(
            ShutdownPhase::BeforeDrain,
            ShutdownHook::new("first", log("first")).order(0),
        )
        .on_shutdown(
            ShutdownPhase::AfterJobs,
            ShutdownHook::new("panics", || async { panic!("a hook panics") }),
        )
        .on_shutdown(
            ShutdownPhase::AfterJobs,
            ShutdownHook::new("after", log("after")),
        )
        .handler(DemoAgent)
        .start()
        .unwrap();
    registered(&worker).await;
    let started = std::time::Instant::now();
    worker.stop().await;
    assert_eq!(
        *ran.lock().unwrap(),
        ["first", "hang", "second", "after", "cleanup"]
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!worker.connected());
}

#[actix_rt::test]
async fn the_example_worker_drains_on_sigterm_and_exits_0() {
    let server = devserver().await;
    let mut child = std::process::Command::new(example_worker())
        .args(["--drain-timeout", "30", "--http", "127.0.0.1:0"])
        .env("LIVEKIT_URL", server.ws_url())
        .env("LIVEKIT_API_KEY", KEY)
        .env("LIVEKIT_API_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the example worker starts");
    server
        .wait_workers(DEADLINE, |ws| ws.iter().any(|w| w.connected))
        .await
        .expect("it registers");
    let job = server
        .dispatch(DispatchRequest::room("r").metadata(r#"{"duration_ms": 1000}"#))
        .await
        .unwrap();
    wait_job(&server, &job.id, "RUNNING", |j| {
        statuses(j).contains(&JobStatus::JsRunning)
    })
    .await;
    // SAFETY: kill only sends a signal to the child we spawned
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < DEADLINE, "the worker never exited");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let done = server.job(&job.id).await.unwrap();
    assert_eq!(
        statuses(&done),
        [JobStatus::JsRunning, JobStatus::JsSuccess],
        "the running job finished before the exit"
    );
}

/// Blocks its thread once cancelled (a careless handler), for 2 s.
struct Careless;

impl JobHandler for Careless {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        ctx.cancelled().await;
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    }
}

#[actix_rt::test]
async fn after_the_shutdown_deadline_the_after_jobs_and_cleanup_hooks_still_run_in_order() {
    let server = devserver().await;
    let ran: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let log = |name: &'static str| {
        let ran = ran.clone();
        move || async move { ran.lock().unwrap().push(name) }
    };
    let mut options = options(&server).termination_grace(Duration::from_millis(100));
    options.shutdown_flush_timeout = Duration::from_millis(200);
    let worker = Worker::builder(options)
        .on_shutdown(ShutdownPhase::AfterJobs, ShutdownHook::new("a1", log("a1")))
        .on_shutdown(ShutdownPhase::AfterJobs, ShutdownHook::new("a2", log("a2")))
        .on_shutdown(ShutdownPhase::Cleanup, ShutdownHook::new("c", log("c")))
        .handler(Careless)
        .start()
        .unwrap();
    registered(&worker).await;
    let job = server.dispatch(DispatchRequest::room("r")).await.unwrap();
    wait_worker(&worker, "running", |s| s.jobs.running == 1).await;
    worker.stop().await;
    assert_eq!(*ran.lock().unwrap(), ["a1", "a2", "c"]);
    let done = wait_final(&server, &job.id).await;
    assert!(
        done.updates.last().unwrap().error.contains("did not stop"),
        "{:?}",
        done.updates
    );
}

#[actix_rt::test]
async fn a_drain_ends_when_an_accepted_offer_lapses_without_its_assignment() {
    let server = devserver().await;
    let mut options = options(&server);
    options.assignment_timeout = Duration::from_millis(300);
    let worker = worker(options, DemoAgent);
    let worker_id = registered(&worker).await;
    // an offer the worker accepts, whose assignment never comes
    inject_offer(&server, &worker_id, room_job("AJ_never_assigned", "r")).await;
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| {
                w.availability_answers
                    .contains(&("AJ_never_assigned".to_owned(), true))
            })
        })
        .await
        .expect("accepted");
    let started = std::time::Instant::now();
    // far longer than the test's deadline: only the lapse can end it in time
    worker.drain(Duration::from_secs(600)).await;
    assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
    let exit = worker.stopped().await.expect("stopped in order");
    assert!(exit.is_clean(), "{exit:?}");
}

#[actix_rt::test]
async fn during_a_drain_a_crashed_queue_is_restarted_and_queued_jobs_still_run() {
    let server = devserver().await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let worker = worker(options(&server).max_jobs(1), Held(release.clone()));
    registered(&worker).await;
    let log = EventLog::start(&worker).await;
    for id in ["first", "queued"] {
        worker
            .send(lkagent::SpawnJob::new("r").id(id))
            .await
            .unwrap();
    }
    wait_worker(&worker, "one running, one queued", |s| {
        s.jobs.running == 1 && s.queued == 1
    })
    .await;
    let draining = worker.clone();
    let drain = actix_rt::spawn(async move { draining.drain(Duration::from_secs(600)).await });
    wait_worker(&worker, "draining", |s| s.draining).await;
    worker.send(lkagent::InjectFault::Queue).await.unwrap();
    release.add_permits(2);
    let events = wait_events(&log, "both jobs to succeed", |events| {
        ["first", "queued"].iter().all(|id| {
            events
                .iter()
                .any(|e| e.job_id == *id && e.status == JobStatus::JsSuccess)
        })
    })
    .await;
    assert!(!events.is_empty());
    drain.await.unwrap();
    let exit = worker.stopped().await.expect("stopped in order");
    assert!(exit.is_clean(), "nothing was cut: {exit:?}");
}
