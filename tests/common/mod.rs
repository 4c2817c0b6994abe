//! Shared set-up for the integration tests: a dev server on an ephemeral
//! loopback port, a worker pointed at it, and waiting with deadlines.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
    let fetch = || async { worker.send(GetState).await.expect("worker alive") };
    wait_until(what, fetch, pred).await
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

/// An actor that keeps every event it receives, with when it arrived: the
/// application's view of a worker, for tests that watch job events
/// ([`EventLog`]) or the worker's own events ([`WorkerWatch`]).
pub struct Log<M> {
    events: Vec<(Instant, M)>,
}

/// A log of a worker's job events.
pub type EventLog = Log<lkagent::JobEvent>;
/// A log of a worker's own events.
pub type WorkerWatch = Log<lkagent::WorkerEvent>;

impl EventLog {
    /// Starts a log subscribed to `worker`'s job events.
    pub async fn start(worker: &Addr<WorkerActor>) -> Addr<EventLog> {
        use actix::Actor as _;
        let log = Log::default().start();
        let subscribed = worker
            .send(lkagent::SubscribeJobEvents(log.clone().recipient()))
            .await
            .expect("worker alive");
        assert!(subscribed, "the worker took the subscription");
        log
    }
}

impl WorkerWatch {
    /// Starts a log subscribed to `worker`'s own events.
    pub async fn start(worker: &Addr<WorkerActor>) -> Addr<WorkerWatch> {
        use actix::Actor as _;
        let log = Log::default().start();
        let subscribed = worker
            .send(lkagent::SubscribeWorkerEvents(log.clone().recipient()))
            .await
            .expect("worker alive");
        assert!(subscribed, "the worker took the subscription");
        log
    }
}

impl<M> Default for Log<M> {
    fn default() -> Self {
        Self { events: Vec::new() }
    }
}

impl<M: Unpin + 'static> actix::Actor for Log<M> {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
    }
}

impl<M> actix::Handler<M> for Log<M>
where
    M: actix::Message<Result = ()> + Unpin + 'static,
{
    type Result = ();
    fn handle(&mut self, event: M, _ctx: &mut Self::Context) {
        self.events.push((Instant::now(), event));
    }
}

/// Every event logged so far.
pub struct Events;

impl actix::Message for Events {
    type Result = Vec<lkagent::JobEvent>;
}

impl actix::Handler<Events> for EventLog {
    type Result = actix::MessageResult<Events>;
    fn handle(&mut self, _msg: Events, _ctx: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.events.iter().map(|(_, e)| e.clone()).collect())
    }
}

/// Every worker event seen so far, with when it arrived.
pub struct Seen;

impl actix::Message for Seen {
    type Result = Vec<(Instant, lkagent::WorkerEvent)>;
}

impl actix::Handler<Seen> for WorkerWatch {
    type Result = actix::MessageResult<Seen>;
    fn handle(&mut self, _msg: Seen, _ctx: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.events.clone())
    }
}

/// Polls `fetch` until `pred` holds of what it answers, or panics at the
/// deadline naming `what`.
pub async fn wait_until<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    fetch: impl Fn() -> F,
    pred: impl Fn(&T) -> bool,
) -> T {
    let start = Instant::now();
    loop {
        let found = fetch().await;
        if pred(&found) {
            return found;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; last seen {found:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the log holds job events satisfying `pred`, and returns them.
pub async fn wait_events(
    log: &Addr<EventLog>,
    what: &str,
    pred: impl Fn(&[lkagent::JobEvent]) -> bool,
) -> Vec<lkagent::JobEvent> {
    let fetch = || async { log.send(Events).await.expect("log alive") };
    wait_until(what, fetch, |events: &Vec<_>| pred(events)).await
}

/// Waits until the watch holds worker events satisfying `pred`, and returns
/// them.
pub async fn wait_seen(
    watch: &Addr<WorkerWatch>,
    what: &str,
    pred: impl Fn(&[(Instant, lkagent::WorkerEvent)]) -> bool,
) -> Vec<(Instant, lkagent::WorkerEvent)> {
    let fetch = || async { watch.send(Seen).await.expect("watch alive") };
    wait_until(what, fetch, |events: &Vec<_>| pred(events)).await
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

/// What a job declares it needs, from `{"memory_mb": N}` in its metadata
/// (anything else: one slot, no memory).
pub fn memory_request(metadata: &str) -> lkagent::ResourceRequest {
    let memory_mb = serde_json::from_str::<serde_json::Value>(metadata)
        .ok()
        .and_then(|v| v["memory_mb"].as_u64())
        .unwrap_or(0);
    lkagent::ResourceRequest {
        memory_mb,
        ..lkagent::ResourceRequest::default()
    }
}

/// A checkpoint as a worker that died mid-job would have left it: the job,
/// dispatched in `room` to the agent `gone` (a worker registered under that
/// name must be running), and some saved state, put in `store`.
pub async fn orphaned_checkpoint(
    server: &DevServer,
    store: &lkagent::recovery::MemoryStore,
    room: &str,
) -> String {
    use lkagent::recovery::CheckpointStore as _;
    let job = server
        .dispatch(lkagent_devserver::DispatchRequest::room(room).agent_name("gone"))
        .await
        .unwrap();
    let assigned = lkagent::proto::Job {
        id: job.id.clone(),
        room: Some(lkagent::proto::Room {
            name: room.into(),
            ..Default::default()
        }),
        agent_name: "gone".into(),
        ..Default::default()
    };
    let mut record = lkagent::recovery::JobCheckpoint::new(
        &assigned,
        format!("agent-{}", job.id),
        std::time::SystemTime::now(),
    );
    record.save("stage", "greeted the caller").unwrap();
    store.put(&record).await.unwrap();
    job.id
}

/// Sends the worker an availability request for `job`, as the server would.
pub async fn inject_offer(server: &DevServer, worker_id: &str, job: lkagent::proto::Job) {
    use lkagent::proto::{AvailabilityRequest, server_message::Message};
    let offer = lkagent::protocol::encode_server(Message::Availability(AvailabilityRequest {
        job: Some(job),
        resuming: false,
    }));
    server
        .inject_frame(worker_id, lkagent_devserver::RawFrame::Binary(offer))
        .await
        .unwrap();
}

/// Sends the worker an assignment of `job`, as the server would.
pub async fn inject_assignment(server: &DevServer, worker_id: &str, job: lkagent::proto::Job) {
    use lkagent::proto::{JobAssignment, server_message::Message};
    let assignment = lkagent::protocol::encode_server(Message::Assignment(JobAssignment {
        job: Some(job),
        token: "a-token".into(),
        ..Default::default()
    }));
    server
        .inject_frame(worker_id, lkagent_devserver::RawFrame::Binary(assignment))
        .await
        .unwrap();
}

/// Waits until the worker has handled every frame injected before: it
/// handles frames in order, so once an offer sent after them is answered,
/// they have been handled.
pub async fn handled_so_far(server: &DevServer, worker_id: &str) {
    inject_offer(server, worker_id, room_job("AJ_barrier", "b")).await;
    server
        .wait_workers(DEADLINE, |ws| {
            ws.iter().any(|w| {
                w.id == worker_id
                    && w.availability_answers
                        .iter()
                        .any(|(id, _)| id == "AJ_barrier")
            })
        })
        .await
        .expect("the offer after the injected frames is answered");
}

/// A room job with this id, as the server would describe it.
pub fn room_job(id: &str, room: &str) -> lkagent::proto::Job {
    lkagent::proto::Job {
        id: id.into(),
        room: Some(lkagent::proto::Room {
            name: room.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The example worker binary, built by `cargo test` beside the test binary.
pub fn example_worker() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join("examples").join("worker");
    assert!(
        path.exists(),
        "{} is missing: run the tests with cargo test",
        path.display()
    );
    path
}

/// A child worker process, its log lines arriving on a channel.
pub struct ChildWorker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildWorker {
    /// Starts `examples/worker.rs` for `server` with `args` besides
    /// `--max-jobs 5`; it is killed (SIGKILL) when dropped.
    pub fn spawn(server: &DevServer, args: &[String]) -> Self {
        let mut child = Command::new(example_worker())
            .args(["--max-jobs", "5"])
            .args(args)
            .env("LIVEKIT_URL", server.ws_url())
            .env("LIVEKIT_API_KEY", KEY)
            .env("LIVEKIT_API_SECRET", SECRET)
            .env("RUST_LOG", "info,lkagent::demo=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the example worker starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Starts the child (see [`spawn`](Self::spawn)) and waits until it has
    /// registered with `server`: the child and its worker id.
    pub async fn spawn_registered(server: &DevServer, args: &[String]) -> (Self, String) {
        let known: Vec<String> = server.workers().await.into_iter().map(|w| w.id).collect();
        let child = Self::spawn(server, args);
        let workers = server
            .wait_workers(DEADLINE, |ws| {
                ws.iter().any(|w| w.connected && !known.contains(&w.id))
            })
            .await
            .expect("the child registers");
        let id = workers
            .into_iter()
            .find(|w| w.connected && !known.contains(&w.id))
            .map(|w| w.id)
            .unwrap();
        (child, id)
    }

    /// Waits for a log line containing `needle` whose `progress_ms` is at
    /// least `min`, and returns that value.
    pub fn wait_progress(&self, needle: &str, min: u64) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                let tail = seen[seen.len().saturating_sub(20)..].join("\n");
                panic!("no {needle:?} line with progress_ms >= {min}; the child said:\n{tail}");
            };
            seen.push(line.clone());
            if line.contains(needle)
                && let Some(progress) = progress_ms(&line)
                && progress >= min
            {
                return progress;
            }
        }
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn progress_ms(line: &str) -> Option<u64> {
    let rest = &line[line.find("progress_ms=")? + "progress_ms=".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A `redis-server` of its own for a test, on a free loopback port, without
/// persistence; killed when dropped. Needs the `redis-server` binary
/// (`apt-get install redis-server`).
pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    /// With persistence: the directory of its append-only file.
    dir: Option<tempfile::TempDir>,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
}

impl TestRedis {
    /// Starts it and waits until it answers `PING`, or panics at the
    /// deadline.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// Starts one that writes every change to an append-only file before
    /// answering (`appendfsync always`), so that it comes back from
    /// [`kill`](Self::kill) and [`restart`](Self::restart) with its data.
    pub fn start_persistent() -> Self {
        Self::launch(Some(tempfile::tempdir().expect("a temporary directory")))
    }

    fn launch(dir: Option<tempfile::TempDir>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self {
            child: None,
            port,
            dir,
            url: format!("redis://127.0.0.1:{port}"),
        };
        redis.restart();
        redis
    }

    /// Kills it with SIGKILL (what it persisted stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        match &self.dir {
            Some(dir) => command
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ])
                .arg("--dir")
                .arg(dir.path()),
            None => command.args(["--save", "", "--appendonly", "no"]),
        };
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        let start = Instant::now();
        while !pong(self.port) {
            assert!(start.elapsed() < DEADLINE, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// True if Redis on `port` answers `PING` with `+PONG`.
fn pong(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 5];
    socket.write_all(b"PING\r\n").is_ok()
        && socket.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG"
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GETs `path` from the HTTP endpoints at `addr`: the status and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut response = awc::Client::new()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("the endpoint answers");
    let body = response.body().await.expect("a body");
    (
        response.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Waits until the log holds `job_id`'s final event (SUCCESS or FAILED),
/// and returns the first one.
pub async fn final_event(log: &Addr<EventLog>, job_id: &str) -> lkagent::JobEvent {
    let is_end = |e: &lkagent::JobEvent| e.job_id == job_id && is_final(e.status);
    let events = wait_events(log, "the job's end", |seen| seen.iter().any(is_end)).await;
    events.into_iter().find(is_end).expect("waited for it")
}

/// A scaling policy that follows the load at every sample — no cooldowns,
/// no stabilization — so a test sees a decision follow its cause: a target
/// of 0.5, up above 0.7, down below 0.3, between 1 and `max_replicas`.
pub fn eager_policy(max_replicas: u32) -> lkagent::scaling::ScalingPolicy {
    lkagent::scaling::ScalingPolicy {
        min_replicas: 1,
        max_replicas,
        target_load: 0.5,
        scale_up_threshold: 0.7,
        scale_down_threshold: 0.3,
        up_cooldown: Duration::ZERO,
        down_cooldown: Duration::ZERO,
        stabilization: Duration::ZERO,
        ..Default::default()
    }
}

/// A worker on an actix System of its own thread, to be killed as a crashed
/// process dies: [`Doomed::kill`] stops that System, so the worker's
/// connection just ends and it sends nothing more — no final statuses, no
/// reconnect.
pub struct Doomed {
    system: actix_rt::System,
    id: String,
}

impl Doomed {
    /// Starts a worker with these options and handler on a thread of its
    /// own and waits until the server has it registered.
    pub async fn start(
        server: &DevServer,
        options: WorkerOptions,
        handler: impl JobHandler,
    ) -> Doomed {
        let (said, heard) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let worker = worker(options, handler);
                let id = registered(&worker).await;
                let _ = said.send((actix_rt::System::current(), id));
                std::mem::forget(worker); // lives until the System stops
            });
            let _ = system.run();
        });
        let (system, id) = heard.await.expect("the doomed worker registers");
        server
            .wait_workers(DEADLINE, |ws| ws.iter().any(|w| w.id == id && w.connected))
            .await
            .expect("the server has the doomed worker");
        Doomed { system, id }
    }

    /// Kills the worker and waits until the server has seen its connection
    /// end.
    pub async fn kill(self, server: &DevServer) {
        self.system.stop();
        server
            .wait_workers(DEADLINE, |ws| {
                ws.iter().any(|w| w.id == self.id && !w.connected)
            })
            .await
            .expect("the doomed worker's connection ends");
    }
}
