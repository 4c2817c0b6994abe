//! Shared set-up for the integration tests: a dev server on an ephemeral
//! loopback port, a worker pointed at it, and waiting with deadlines.
#![allow(dead_code)] // each test file uses its own subset

use std::time::{Duration, Instant};

use actix::Addr;
use lkagent::{Backoff, GetState, JobHandler, Worker, WorkerActor, WorkerOptions, WorkerState};
use lkagent_devserver::{DevServer, DevServerConfig, JobInfo};

/// The API key every test uses.
pub const KEY: &str = "devkey";
/// The API secret every test uses; distinctive so a leak is easy to find.
pub const SECRET: &str = "s3cr3t-Value-that-must-never-print";
/// The longest any single condition is waited for.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Starts a dev server on 127.0.0.1 with an ephemeral port. With `RUST_LOG`
/// set, the test's logs go to its output.
pub async fn devserver() -> DevServer {
    devserver_with(DevServerConfig::default()).await
}

/// Starts a dev server with this configuration (the test keys are set).
pub async fn devserver_with(config: DevServerConfig) -> DevServer {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    DevServer::start(DevServerConfig {
        keys: vec![(KEY.into(), SECRET.into())],
        ..config
    })
    .await
    .expect("dev server starts")
}

/// Options for a worker of the dev server, with quick reconnects and a brisk
/// keepalive: every test then also checks that pongs keep a healthy
/// connection up (a broken keepalive shows as unexpected reconnects).
pub fn options(server: &DevServer) -> WorkerOptions {
    WorkerOptions::new(server.ws_url(), KEY, SECRET)
        .max_jobs(10)
        .keepalive(Duration::from_millis(100), Duration::from_millis(1000))
        .reconnect(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            jitter: 0.5,
        })
}

/// Starts a worker with these options and handler.
pub fn worker(options: WorkerOptions, handler: impl JobHandler) -> Worker {
    Worker::builder(options)
        .handler(handler)
        .start()
        .expect("worker starts")
}

/// Polls the worker's state until `pred` holds, or panics at the deadline.
pub async fn wait_worker(
    worker: &Addr<WorkerActor>,
    what: &str,
    pred: impl Fn(&WorkerState) -> bool,
) -> WorkerState {
    let start = Instant::now();
    loop {
        let state = worker.send(GetState).await.expect("worker alive");
        if pred(&state) {
            return state;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; last state {state:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the worker is registered and returns its worker id.
pub async fn registered(worker: &Addr<WorkerActor>) -> String {
    wait_worker(worker, "registration", |s| s.connected)
        .await
        .worker_id
        .expect("registered worker has an id")
}

/// Waits until the job's record satisfies `pred`.
pub async fn wait_job(
    server: &DevServer,
    job_id: &str,
    what: &str,
    pred: impl Fn(&JobInfo) -> bool,
) -> JobInfo {
    match server.wait_job(job_id, DEADLINE, pred).await {
        Ok(job) => job,
        Err(err) => panic!("{what}: {err}; job is {:?}", server.job(job_id).await),
    }
}

/// Waits until the job has reported a final status (SUCCESS or FAILED).
pub async fn wait_final(server: &DevServer, job_id: &str) -> JobInfo {
    wait_job(server, job_id, "a final status", |job| {
        job.updates.iter().any(|u| is_final(u.status))
    })
    .await
}

/// True for SUCCESS and FAILED.
pub fn is_final(status: lkagent::proto::JobStatus) -> bool {
    matches!(
        status,
        lkagent::proto::JobStatus::JsSuccess | lkagent::proto::JobStatus::JsFailed
    )
}

/// The statuses a job's worker reported, in order.
pub fn statuses(job: &JobInfo) -> Vec<lkagent::proto::JobStatus> {
    job.updates.iter().map(|u| u.status).collect()
}

/// Dispatches a 10 ms demo job and waits for it to end in SUCCESS: proof that
/// the worker is serving.
pub async fn serve_quick_job(server: &DevServer, room: &str) -> JobInfo {
    let job = server
        .dispatch(lkagent_devserver::DispatchRequest::room(room).metadata(r#"{"duration_ms": 10}"#))
        .await
        .expect("dispatched");
    let done = wait_final(server, &job.id).await;
    assert_eq!(
        done.updates.last().map(|u| u.status),
        Some(lkagent::proto::JobStatus::JsSuccess),
        "{done:?}"
    );
    job
}

/// An actor that subscribes to a worker's job events and keeps them, for
/// tests that watch job statuses from the application's side.
pub struct EventLog {
    events: Vec<lkagent::JobEvent>,
}

impl EventLog {
    /// Starts a log subscribed to `worker`.
    pub async fn start(worker: &Addr<WorkerActor>) -> Addr<EventLog> {
        use actix::Actor as _;
        let log = EventLog { events: Vec::new() }.start();
        let subscribed = worker
            .send(lkagent::SubscribeJobEvents(log.clone().recipient()))
            .await
            .expect("worker alive");
        assert!(subscribed, "the worker took the subscription");
        log
    }
}

impl actix::Actor for EventLog {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
    }
}

impl actix::Handler<lkagent::JobEvent> for EventLog {
    type Result = ();
    fn handle(&mut self, event: lkagent::JobEvent, _ctx: &mut Self::Context) {
        self.events.push(event);
    }
}

/// Every event logged so far.
#[derive(actix::Message)]
#[rtype(result = "Vec<lkagent::JobEvent>")]
pub struct Events;

impl actix::Handler<Events> for EventLog {
    type Result = actix::MessageResult<Events>;
    fn handle(&mut self, _msg: Events, _ctx: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.events.clone())
    }
}

/// Waits until the log holds events satisfying `pred`, and returns them.
pub async fn wait_events(
    log: &Addr<EventLog>,
    what: &str,
    pred: impl Fn(&[lkagent::JobEvent]) -> bool,
) -> Vec<lkagent::JobEvent> {
    let start = Instant::now();
    loop {
        let events = log.send(Events).await.expect("log alive");
        if pred(&events) {
            return events;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; events {events:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `done` holds (state a test's handler records), polling, or
/// panics at the deadline naming `what`.
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An actor that subscribes to a worker's own events and keeps them with the
/// moment each arrived.
pub struct WorkerWatch {
    events: Vec<(Instant, lkagent::WorkerEvent)>,
}

impl WorkerWatch {
    /// Starts a watch subscribed to `worker`.
    pub async fn start(worker: &Addr<WorkerActor>) -> Addr<WorkerWatch> {
        use actix::Actor as _;
        let watch = WorkerWatch { events: Vec::new() }.start();
        let subscribed = worker
            .send(lkagent::SubscribeWorkerEvents(watch.clone().recipient()))
            .await
            .expect("worker alive");
        assert!(subscribed, "the worker took the subscription");
        watch
    }
}

impl actix::Actor for WorkerWatch {
    type Context = actix::Context<Self>;
}

impl actix::Handler<lkagent::WorkerEvent> for WorkerWatch {
    type Result = ();
    fn handle(&mut self, event: lkagent::WorkerEvent, _ctx: &mut Self::Context) {
        self.events.push((Instant::now(), event));
    }
}

/// Every worker event seen so far, with when it arrived.
#[derive(actix::Message)]
#[rtype(result = "Vec<(Instant, lkagent::WorkerEvent)>")]
pub struct Seen;

impl actix::Handler<Seen> for WorkerWatch {
    type Result = actix::MessageResult<Seen>;
    fn handle(&mut self, _msg: Seen, _ctx: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.events.clone())
    }
}

/// Waits until the watch holds events satisfying `pred`, and returns them.
pub async fn wait_seen(
    watch: &Addr<WorkerWatch>,
    what: &str,
    pred: impl Fn(&[(Instant, lkagent::WorkerEvent)]) -> bool,
) -> Vec<(Instant, lkagent::WorkerEvent)> {
    let start = Instant::now();
    loop {
        let events = watch.send(Seen).await.expect("watch alive");
        if pred(&events) {
            return events;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; events {events:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}
