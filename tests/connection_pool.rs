//! Connections shared by jobs: the `ConnectionPool` against a local
//! websocket echo server — 50 jobs of a real worker through 5 connections,
//! never two jobs on one at once; idle connections closed after the idle
//! timeout; a connection the server closed never handed out; exhaustion
//! answered at its deadline, a waiter served when a connection comes back;
//! room made under a cap; no secret from a URL in an error; keep-alive on the
//! shared HTTP client.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::{Either, select};
use futures_util::{SinkExt, StreamExt};
use lkagent::connections::tungstenite::Message;
use lkagent::connections::{ConnectionPoolOptions, PoolError, PooledWebSocket};
use lkagent::proto::JobStatus;
use lkagent::{ConnectionPool, JobContext, JobError, JobHandler, SpawnJob, SpawnOutcome, Worker};
use tokio::sync::watch;

/// What the echo server saw.
#[derive(Clone, Debug, Default)]
struct Record {
    /// Connections accepted.
    opened: usize,
    /// Connections ended (by either side), their socket dropped.
    closed: usize,
    /// The most jobs seen on one connection at once: a job's messages
    /// run from its first to its `done`, and another job's message in
    /// between counts two.
    max_jobs_at_once: usize,
    /// Every job that sent a message.
    jobs: BTreeSet<String>,
}

/// What the server does to its open connections on command.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Closes them: a Close frame, then the socket.
    Close,
    /// Drops their sockets: the client sees the TCP connection end.
    Drop,
    /// Stops reading them, as a connection a middlebox dropped silently.
    Silence,
}

/// A websocket echo server on 127.0.0.1, inside the test's actix system: it
/// echoes text messages (`<job> <seq>`, the last `<job> done`), records its
/// connections and the jobs on each, and breaks its open connections on
/// command (see [`Fault`]).
struct EchoServer {
    addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    faults: watch::Sender<Option<Fault>>,
}

impl EchoServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let (faults, _) = watch::channel(None);
        let server = Self {
            addr,
            record: Arc::clone(&record),
            faults: faults.clone(),
        };
        actix_rt::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                let faults = faults.subscribe();
                actix_rt::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(socket).await else {
                        return;
                    };
                    record.lock().unwrap().opened += 1;
                    echo(ws, &record, faults).await; // the socket is dropped here
                    record.lock().unwrap().closed += 1;
                });
            }
        });
        server
    }

    /// A URL of this server with this path and query.
    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    fn record(&self) -> Record {
        self.record.lock().unwrap().clone()
    }

    /// Does `fault` to every connection open now.
    fn fault_all(&self, fault: Fault) {
        self.faults.send_replace(Some(fault));
    }

    /// Waits until the server has seen `closed` connections end.
    async fn wait_closed(&self, closed: usize) -> Record {
        let what = format!("{closed} connections closed at the server");
        wait_until(&what, || async { self.record() }, |r| r.closed >= closed).await
    }
}

/// Echoes one connection until it ends or a fault is ordered.
async fn echo(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    record: &Mutex<Record>,
    mut faults: watch::Receiver<Option<Fault>>,
) {
    let mut owner: Option<String> = None;
    loop {
        let next = select(Box::pin(ws.next()), Box::pin(faults.changed())).await;
        let message = match next {
            Either::Left((Some(Ok(message)), _)) => message,
            Either::Left(_) => return, // ended by the client, or failed
            Either::Right(_) => {
                drop(next);
                let fault = *faults.borrow();
                match fault {
                    Some(Fault::Close) => drop(ws.close(None).await),
                    Some(Fault::Silence) => std::future::pending().await,
                    Some(Fault::Drop) | None => {}
                }
                return;
            }
        };
        match message {
            Message::Text(text) => {
                let (job, seq) = text.as_str().split_once(' ').unwrap_or((text.as_str(), ""));
                {
                    let mut record = record.lock().unwrap();
                    let at_once = match &owner {
                        Some(current) if current != job => 2,
                        _ => 1,
                    };
                    record.max_jobs_at_once = record.max_jobs_at_once.max(at_once);
                    record.jobs.insert(job.to_owned());
                }
                owner = (seq != "done").then(|| job.to_owned());
                if ws.send(Message::Text(text)).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            _ => {} // Pings are answered by the stream itself
        }
    }
}

/// Sends `text` and expects exactly it back.
async fn round_trip(ws: &mut PooledWebSocket, text: &str) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send {text}: {e}"))?;
    match ws.next().await {
        Some(Ok(Message::Text(echoed))) if echoed.as_str() == text => Ok(()),
        other => Err(format!("sent {text}, got {other:?}")),
    }
}

fn pool(options: ConnectionPoolOptions) -> ConnectionPool {
    ConnectionPool::new(options).expect("valid options")
}

/// Messages each job sends before its `done`.
const MESSAGES: usize = 5;

/// A job that checks out a connection from its context, sends its own id
/// with a sequence number and expects each echo to be its own: a connection
/// shared with another job would cross the echoes.
struct EchoJob {
    url: String,
}

impl JobHandler for EchoJob {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let mut ws = ctx
            .connections()
            .websocket(&self.url)
            .await
            .map_err(|e| JobError::failed(e.to_string()))?;
        for seq in 0..MESSAGES {
            round_trip(&mut ws, &format!("{} {seq}", ctx.id())).await?;
        }
        round_trip(&mut ws, &format!("{} done", ctx.id())).await?;
        Ok(()) // the connection goes back as `ws` is dropped
    }
}

#[actix_rt::test]
async fn fifty_jobs_share_five_connections_one_job_at_a_time() {
    const JOBS: usize = 50;
    let echo = EchoServer::start().await;
    let connections = pool(ConnectionPoolOptions {
        max_per_host: 5,
        checkout_timeout: Duration::from_secs(10),
        ..Default::default()
    });
    let server = devserver().await;
    let mut options = options(&server).max_jobs(JOBS);
    options.job_threads = 4; // connections opened on one arbiter, used on others
    let worker = Worker::builder(options)
        .handler(EchoJob {
            url: echo.url("/v1/stt?model=fast"),
        })
        .connection_pool(connections.clone())
        .start()
        .expect("worker starts");
    registered(&worker).await;
    let log = EventLog::start(&worker).await;

    for n in 0..JOBS {
        let outcome = worker
            .send(SpawnJob::new(format!("room-{n}")).id(format!("job-{n:02}")))
            .await
            .unwrap();
        assert!(
            matches!(outcome, SpawnOutcome::Started { .. }),
            "{outcome:?}"
        );
    }
    let events = wait_events(&log, "every job's final status", |events| {
        events.iter().filter(|e| is_final(e.status)).count() == JOBS
    })
    .await;
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.status == JobStatus::JsFailed)
        .map(|e| (&e.job_id, &e.error))
        .collect();
    assert!(failed.is_empty(), "failed jobs: {failed:?}");

    let record = echo.record();
    assert_eq!(record.jobs.len(), JOBS, "{record:?}");
    assert_eq!(record.max_jobs_at_once, 1, "two jobs on one connection");
    assert!(record.opened <= 5, "{} connections opened", record.opened);
    let stats = connections.stats();
    assert_eq!(stats.opened as usize, record.opened, "{stats:?}");
    assert_eq!(stats.opened + stats.reused, JOBS as u64, "{stats:?}");
    assert_eq!((stats.in_use, stats.discarded), (0, 0), "{stats:?}");
    assert_eq!(stats.idle, record.opened, "{stats:?}");
    worker.stop().await;
}

#[actix_rt::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let idle_timeout = Duration::from_millis(300);
    let echo = EchoServer::start().await;
    let pool = pool(ConnectionPoolOptions {
        idle_timeout,
        ..Default::default()
    });
    let mut first = pool.websocket(&echo.url("/a")).await.unwrap();
    let mut second = pool.websocket(&echo.url("/a")).await.unwrap();
    round_trip(&mut first, "job-1 0").await.unwrap();
    round_trip(&mut second, "job-2 0").await.unwrap();
    let returned = Instant::now();
    drop((first, second));
    assert_eq!(pool.stats().idle, 2);

    let record = echo.wait_closed(2).await;
    let after = returned.elapsed();
    assert!(
        after >= idle_timeout,
        "closed after {after:?}, sooner than {idle_timeout:?}"
    );
    assert_eq!((record.opened, record.closed), (2, 2));
    let stats = pool.stats();
    assert_eq!((stats.idle, stats.closed_idle), (0, 2), "{stats:?}");

    // the reaper ended with the last idle connection; it starts again
    let mut again = pool.websocket(&echo.url("/a")).await.unwrap();
    round_trip(&mut again, "job-3 0").await.unwrap();
    drop(again);
    echo.wait_closed(3).await;
    assert_eq!(pool.stats().closed_idle, 3);
}

#[actix_rt::test]
async fn a_connection_the_server_closed_is_never_handed_out() {
    let echo = EchoServer::start().await;
    // the default ping_after_idle (10 s): no Ping, so the passive checks
    // alone must notice
    let pool = pool(ConnectionPoolOptions::default());
    let url = echo.url("/tts");
    for (round, how) in [Fault::Close, Fault::Drop].into_iter().enumerate() {
        let mut ws = pool.websocket(&url).await.unwrap();
        round_trip(&mut ws, "job-1 0").await.unwrap();
        drop(ws);
        assert_eq!(pool.stats().idle, 1);

        echo.fault_all(how);
        echo.wait_closed(2 * round + 1).await;

        let mut fresh = pool.websocket(&url).await.unwrap();
        round_trip(&mut fresh, "job-2 0").await.unwrap();
        let stats = pool.stats();
        // each round: the closed one discarded, then the fresh one
        let round = round as u64;
        assert_eq!(stats.discarded, 2 * round + 1, "{how:?}: {stats:?}");
        assert_eq!(stats.opened, 2 * round + 2, "{how:?}: {stats:?}");
        assert_eq!(stats.reused, 0, "{how:?}: {stats:?}");
        fresh.discard(); // the next round starts from an empty pool
        echo.wait_closed(2 * round as usize + 2).await;
        assert_eq!(pool.stats().idle, 0);
    }
}

#[actix_rt::test]
async fn an_idle_connection_must_answer_a_ping_after_ping_after_idle() {
    let echo = EchoServer::start().await;
    let ping_timeout = Duration::from_millis(200);
    let pool = pool(ConnectionPoolOptions {
        ping_after_idle: Duration::ZERO, // every reuse is pinged
        ping_timeout,
        ..Default::default()
    });
    let url = echo.url("/llm");
    let mut ws = pool.websocket(&url).await.unwrap();
    round_trip(&mut ws, "job-1 done").await.unwrap();
    drop(ws);
    // a healthy connection answers, and is reused
    let mut ws = pool.websocket(&url).await.unwrap();
    round_trip(&mut ws, "job-2 done").await.unwrap();
    drop(ws);
    assert_eq!((pool.stats().opened, pool.stats().reused), (1, 1));

    // one whose far end went silent does not, and is replaced
    echo.fault_all(Fault::Silence);
    let started = Instant::now();
    let mut ws = pool.websocket(&url).await.unwrap();
    let took = started.elapsed();
    round_trip(&mut ws, "job-3 done").await.unwrap();
    assert!(took >= ping_timeout, "replaced after {took:?}");
    let stats = pool.stats();
    assert_eq!(
        (stats.opened, stats.reused, stats.discarded),
        (2, 1, 1),
        "{stats:?}"
    );
}

/// The server on a thread of its own, for a test that must block its own
/// thread.
fn echo_server_on_its_own_thread() -> EchoServer {
    let (sent, server) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            sent.send(EchoServer::start().await).unwrap();
            std::future::pending::<()>().await
        })
    });
    server.recv().expect("the echo server starts")
}

#[actix_rt::test]
async fn a_close_the_runtime_has_not_noticed_yet_is_caught_at_the_socket() {
    let echo = echo_server_on_its_own_thread();
    let pool = pool(ConnectionPoolOptions::default());
    let url = echo.url("/tts");
    for (round, how) in [Fault::Drop, Fault::Close].into_iter().enumerate() {
        let mut ws = pool.websocket(&url).await.unwrap();
        round_trip(&mut ws, "job-1 0").await.unwrap();
        drop(ws);

        echo.fault_all(how);
        // blocking this thread on purpose: its runtime must not turn its I/O
        // driver between the server's close and the checkout, so the
        // stream cannot know of the close yet — only the socket does
        let deadline = Instant::now() + DEADLINE;
        while echo.record().closed < 2 * round + 1 {
            assert!(Instant::now() < deadline, "the server never closed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut fresh = pool.websocket(&url).await.unwrap();
        round_trip(&mut fresh, "job-2 0").await.unwrap();
        let stats = pool.stats();
        assert_eq!(stats.reused, 0, "{how:?}: {stats:?}");
        fresh.discard();
        echo.wait_closed(2 * round + 2).await;
    }
}

#[actix_rt::test]
async fn exhaustion_is_answered_at_its_deadline_with_what_to_do() {
    let checkout_timeout = Duration::from_millis(200);
    let echo = EchoServer::start().await;
    let pool = pool(ConnectionPoolOptions {
        max_per_host: 1,
        max_total: 2,
        checkout_timeout,
        ..Default::default()
    });
    let _held = pool.websocket(&echo.url("/a")).await.unwrap();

    // the host's cap: the same URL, and another URL of that host
    for path in ["/a", "/b"] {
        let started = Instant::now();
        let err = pool.websocket(&echo.url(path)).await.unwrap_err();
        let waited = started.elapsed();
        assert!(
            matches!(
                err,
                PoolError::Exhausted {
                    in_use: 1,
                    cap: "max_per_host",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(waited >= checkout_timeout, "gave up after {waited:?}");
        assert!(waited < Duration::from_secs(5), "gave up after {waited:?}");
        let text = err.to_string();
        assert!(text.contains("max_per_host"), "{text}");
        assert!(text.contains(&format!("ws://{}", echo.addr)), "{text}");
    }

    // the total cap: "localhost" is another host than 127.0.0.1
    let other_host = format!("ws://localhost:{}/a", echo.addr.port());
    let _second = pool.websocket(&other_host).await.unwrap();
    let third_host = format!("ws://127.0.0.2:{}/a", echo.addr.port());
    let err = pool.websocket(&third_host).await.unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::Exhausted {
                in_use: 0,
                cap: "max_total",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("ConnectionPoolOptions::max_total"),
        "{err}"
    );
    assert_eq!(pool.stats().waiting, 0);
}

#[actix_rt::test]
async fn a_waiter_gets_the_connection_given_back_before_its_deadline() {
    let echo = EchoServer::start().await;
    let pool = pool(ConnectionPoolOptions {
        max_per_host: 1,
        checkout_timeout: Duration::from_secs(5),
        ..Default::default()
    });
    let url = echo.url("/a");
    let mut held = pool.websocket(&url).await.unwrap();
    round_trip(&mut held, "job-1 done").await.unwrap();

    let waiter = actix_rt::spawn({
        let pool = pool.clone();
        let url = url.clone();
        async move {
            let started = Instant::now();
            let mut ws = pool.websocket(&url).await.map_err(|e| e.to_string())?;
            let waited = started.elapsed();
            round_trip(&mut ws, "job-2 done").await?;
            Ok::<_, String>(waited)
        }
    });
    wait_until(
        "a checkout waiting",
        || async { pool.stats() },
        |s| s.waiting == 1,
    )
    .await;
    drop(held);
    let waited = waiter.await.unwrap().expect("the waiter got a connection");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let stats = pool.stats();
    assert_eq!(
        (stats.opened, stats.reused, stats.waiting),
        (1, 1, 0),
        "{stats:?}"
    );
    assert_eq!(echo.record().max_jobs_at_once, 1);
}

#[actix_rt::test]
async fn a_connection_outlives_the_arbiter_that_opened_it() {
    let echo = EchoServer::start().await;
    let pool = pool(ConnectionPoolOptions::default());
    let url = echo.url("/a");
    // a job on another arbiter opens one, uses it and gives it back; then
    // its arbiter stops (its worker was removed from a pool)
    let arbiter = actix_rt::Arbiter::new();
    let (done, used) = tokio::sync::oneshot::channel();
    let (on_arbiter, first_url) = (pool.clone(), url.clone());
    arbiter.spawn(async move {
        let mut ws = on_arbiter.websocket(&first_url).await.unwrap();
        let _ = done.send(round_trip(&mut ws, "job-1 done").await);
    });
    used.await.unwrap().expect("the first job's round trip");
    arbiter.stop();
    arbiter.join().unwrap();
    wait_until("given back", || async { pool.stats() }, |s| s.idle == 1).await;

    // the next job, here, gets that very connection, and it works
    let mut ws = pool.websocket(&url).await.unwrap();
    round_trip(&mut ws, "job-2 done").await.unwrap();
    let stats = pool.stats();
    assert_eq!((stats.opened, stats.reused), (1, 1), "{stats:?}");
    assert_eq!(echo.record().opened, 1);
}

#[actix_rt::test]
async fn an_idle_connection_to_another_url_makes_room_under_the_cap() {
    let echo = EchoServer::start().await;
    let pool = pool(ConnectionPoolOptions {
        max_per_host: 1,
        checkout_timeout: Duration::ZERO,
        ..Default::default()
    });
    let mut a = pool.websocket(&echo.url("/stt?lang=en")).await.unwrap();
    round_trip(&mut a, "job-1 done").await.unwrap();
    drop(a);
    // the other URL gets a connection of its own, the idle one is closed
    let mut b = pool.websocket(&echo.url("/stt?lang=fr")).await.unwrap();
    round_trip(&mut b, "job-2 done").await.unwrap();
    let record = echo.wait_closed(1).await;
    assert_eq!(record.opened, 2);
    let stats = pool.stats();
    assert_eq!(
        (stats.evicted, stats.in_use, stats.idle),
        (1, 1, 0),
        "{stats:?}"
    );
}

#[actix_rt::test]
async fn a_discarded_or_closed_connection_is_not_given_back() {
    let echo = EchoServer::start().await;
    let pool = pool(ConnectionPoolOptions::default());
    let url = echo.url("/a");
    let mut ws = pool.websocket(&url).await.unwrap();
    round_trip(&mut ws, "job-1 0").await.unwrap();
    ws.discard();
    echo.wait_closed(1).await;

    // a job that closes the stream itself
    let mut ws = pool.websocket(&url).await.unwrap();
    ws.send(Message::Close(None)).await.unwrap();
    drop(ws);
    echo.wait_closed(2).await;
    let stats = pool.stats();
    assert_eq!(
        (stats.idle, stats.discarded, stats.opened),
        (0, 2, 2),
        "{stats:?}"
    );
}

#[actix_rt::test]
async fn no_secret_from_a_url_reaches_an_error_or_the_pool_s_debug() {
    const SECRET: &str = "sk-live-0123456789";
    let echo = EchoServer::start().await;
    let pool = pool(ConnectionPoolOptions::default());
    let ws = pool
        .websocket(&echo.url(&format!("/v1/listen?api_key={SECRET}")))
        .await
        .unwrap();
    let shown = format!("{pool:?} {ws:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!shown.contains("/v1/listen"), "{shown}");

    // a port nobody listens on: the connect error
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = pool
        .websocket(&format!("ws://127.0.0.1:{port}/v1?api_key={SECRET}"))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Connect { .. }), "{err:?}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains(&format!("ws://127.0.0.1:{port}")), "{shown}");
    }
    let err = pool
        .websocket(&format!("http://127.0.0.1:{port}/v1?api_key={SECRET}"))
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::InvalidUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains(SECRET), "{err}");
}

#[actix_rt::test]
async fn http_requests_share_a_kept_alive_connection() {
    use actix_web::{App, HttpRequest, HttpServer, web};
    let peers = Arc::new(Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new({
        let peers = Arc::clone(&peers);
        move || {
            let peers = Arc::clone(&peers);
            App::new().route(
                "/v1/complete",
                web::post().to(move |request: HttpRequest, prompt: String| {
                    let peers = Arc::clone(&peers);
                    async move {
                        peers.lock().unwrap().push(request.peer_addr().unwrap());
                        format!("done: {prompt}")
                    }
                }),
            )
        }
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);

    let pool = pool(ConnectionPoolOptions::default());
    let ask = move |pool: ConnectionPool| async move {
        let request = pool
            .http()
            .post(format!("http://{addr}/v1/complete"))
            .body("prompt");
        let answer = pool.send(request).await.unwrap();
        answer.text().await.unwrap()
    };
    // the first request comes from a job's arbiter that then stops (its
    // worker went away): the connection it opened lives on, on the pool's
    // own thread, for the requests after it
    let arbiter = actix_rt::Arbiter::new();
    let (answered, first) = tokio::sync::oneshot::channel();
    let on_arbiter = pool.clone();
    arbiter.spawn(async move {
        let _ = answered.send(ask(on_arbiter).await);
    });
    assert_eq!(first.await.unwrap(), "done: prompt");
    arbiter.stop();
    arbiter.join().unwrap();
    for _ in 0..9 {
        assert_eq!(ask(pool.clone()).await, "done: prompt");
    }
    let peers: BTreeSet<_> = peers.lock().unwrap().iter().copied().collect();
    assert_eq!(peers.len(), 1, "one connection for ten requests: {peers:?}");
    handle.stop(false).await;
}
