//! Connections shared by jobs: the [`ConnectionPool`] a job reaches through
//! [`JobContext::connections`](crate::JobContext::connections).
//!
//! An agent's jobs stream to the same few services: an STT or TTS
//! provider's websocket, an LLM's HTTP API. A process per job opens its own
//! connection to each — TCP, TLS and the websocket upgrade, several round
//! trips before the first byte of audio. Jobs that are actors in one process
//! can share a few warm ones instead:
//!
//! - **Websockets** are checked out ([`ConnectionPool::websocket`]) and go
//!   back to the pool when the [`PooledWebSocket`] is dropped. Only its
//!   holder can use one, so no two jobs ever share a connection at once.
//!   Idle connections are kept per URL (a websocket endpoint's path and
//!   query choose the model or the language); the caps count per host
//!   (`max_per_host`) and in all (`max_total`). A checkout reuses an idle
//!   connection to the same URL if it is still healthy, else opens one under
//!   the caps, else closes an idle connection to another URL that holds the
//!   cap, else waits for one to come back — until `checkout_timeout`, then
//!   [`PoolError::Exhausted`].
//! - **Health**: before an idle connection is handed out again, what it has
//!   received is read without waiting (a Close, the end of the stream, an
//!   error or a message nobody asked for: it is dropped and the next one
//!   tried), the socket is asked whether the peer has hung up, and a
//!   connection idle longer than `ping_after_idle` must answer a Ping within
//!   `ping_timeout`. A connection the server closed is not handed out.
//! - **Idle timeout**: a connection idle for `idle_timeout` is closed (a
//!   Close frame, then the socket), by a reaper task that runs while idle
//!   connections exist, and on every checkout.
//! - **HTTP** goes through one shared `reqwest::Client`
//!   ([`ConnectionPool::http`]) that keeps connections alive per host; send
//!   with [`ConnectionPool::send`].
//! - **One I/O thread per pool.** Jobs run on several arbiters, and workers
//!   of one process come and go (a `WorkerPool` restarts, removes, scales
//!   them). A socket is driven by the runtime that opened it, so the pool
//!   opens every websocket, runs its reaper, and sends every HTTP request
//!   ([`ConnectionPool::send`]) on a thread of its own: a connection
//!   outlives the job, the arbiter and the worker that first used it, and a
//!   job that blocks its thread stalls no other job's connection.
//!
//! The bookkeeping — what the caps allow, which idle connection to take,
//! to close to make room, or to expire — is a pure ledger that takes `now`
//! as an argument and is tested on plain values; [`ConnectionPool`] does the
//! I/O around it.
//!
//! URLs to STT and TTS providers often carry an API key in their query.
//! The pool's errors, logs and `Debug` show a connection's
//! `scheme://host:port` only. A `reqwest::Error` shows its URL: log
//! `err.without_url()` when the query holds a secret.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::options::OptionsError;

/// The HTTP client [`ConnectionPool::http`] hands out, re-exported so that
/// an application names the same version.
pub use reqwest;
/// The websocket protocol crate ([`Message`], `IntoClientRequest`,
/// `ClientRequestBuilder`), re-exported so that an application names the
/// same version.
pub use tokio_tungstenite::tungstenite;

/// A websocket connection as the pool holds it: plain or TLS over TCP.
pub type WebSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A Close frame is a courtesy: a peer that has not taken it within this is
/// dropped anyway, and the close runs in the background, so it delays no
/// job.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The payload of the pool's health-check Ping: tells its Pong from one a
/// job's own Ping asked for.
const PING_PAYLOAD: &[u8] = b"lkagent-pool-health";

/// Request headers the websocket handshake generates itself (the key is
/// random per request): left out when deciding whether two checkouts asked
/// for the same connection.
const HANDSHAKE_HEADERS: [&str; 5] = [
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
];

/// How the pool sizes, keeps and checks its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionPoolOptions {
    /// Websocket connections open to one host (`scheme://host:port`) at
    /// once: idle, in use, and being opened. Providers cap concurrent
    /// streams per API key; keep this under theirs. Default 8.
    pub max_per_host: usize,
    /// Websocket connections open at once, to all hosts. Default 64.
    pub max_total: usize,
    /// How long a connection may sit idle before it is closed. Default 60 s:
    /// long enough to carry a connection from one job to the next, short
    /// enough to close before most providers' own idle limits do.
    pub idle_timeout: Duration,
    /// How long a checkout waits for a connection to come free when the
    /// caps are reached, before [`PoolError::Exhausted`]. Zero: fail at once.
    /// Default 5 s.
    pub checkout_timeout: Duration,
    /// How long opening a connection (TCP, TLS, the upgrade) may take.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// A connection idle longer than this must answer a Ping before it is
    /// handed out again: a middlebox may have dropped a quiet connection
    /// without either end hearing of it. Zero: ping every time. Default 10 s.
    pub ping_after_idle: Duration,
    /// How long that Ping's Pong may take; no answer, and the connection is
    /// dropped. Default 2 s.
    pub ping_timeout: Duration,
}

impl Default for ConnectionPoolOptions {
    fn default() -> Self {
        Self {
            max_per_host: 8,
            max_total: 64,
            idle_timeout: Duration::from_secs(60),
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            ping_after_idle: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(2),
        }
    }
}

impl ConnectionPoolOptions {
    /// Checks the options; the error names the field that is wrong.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let invalid = |name, reason: &str| {
            Err(OptionsError::Invalid {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.max_per_host == 0 {
            return invalid("max_per_host", "must be at least 1");
        }
        if self.max_total == 0 {
            return invalid("max_total", "must be at least 1");
        }
        if self.idle_timeout.is_zero() {
            return invalid(
                "idle_timeout",
                "must be above zero: no connection would ever be reused",
            );
        }
        if self.connect_timeout.is_zero() {
            return invalid(
                "connect_timeout",
                "must be above zero: no connection could open",
            );
        }
        if self.ping_timeout.is_zero() {
            return invalid(
                "ping_timeout",
                "must be above zero: no idle connection could pass its check",
            );
        }
        Ok(())
    }
}

/// Why a checkout gave no connection. Its text names the host as
/// `scheme://host:port`, never the URL's path or query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The URL (or request) cannot be used for a websocket.
    #[error("not a usable websocket URL: {reason}")]
    InvalidUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// Every connection the caps allow is in use, and none came free within
    /// `checkout_timeout`.
    #[error(
        "no websocket connection to {host} came free within {waited:?}: {cap} reached, {in_use} in use \
         to that host; raise ConnectionPoolOptions::{cap}, or drop each PooledWebSocket as soon as its \
         job is done with it"
    )]
    Exhausted {
        /// The host, as `scheme://host:port`.
        host: String,
        /// How long the checkout waited.
        waited: Duration,
        /// Connections to that host in use when it gave up.
        in_use: usize,
        /// The cap that was reached: `"max_per_host"` or `"max_total"`.
        cap: &'static str,
    },
    /// The connection could not be opened: the host refused it, TLS failed,
    /// or the server answered the upgrade with an error (a 401: check the
    /// credentials).
    #[error("cannot open a websocket to {host}: {reason}")]
    Connect {
        /// The host, as `scheme://host:port`.
        host: String,
        /// Why, with the URL's path and query left out.
        reason: String,
    },
    /// Opening the connection took longer than `connect_timeout`.
    #[error(
        "opening a websocket to {host} took longer than {timeout:?}: check that the host is reachable, \
         or raise ConnectionPoolOptions::connect_timeout"
    )]
    ConnectTimeout {
        /// The host, as `scheme://host:port`.
        host: String,
        /// The limit that passed.
        timeout: Duration,
    },
}

/// What the pool holds and has done: a snapshot of [`ConnectionPool::stats`].
/// The counters count since the pool was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Websocket connections idle in the pool now.
    pub idle: usize,
    /// Checked out now (or being checked before a checkout).
    pub in_use: usize,
    /// Being opened now.
    pub connecting: usize,
    /// Checkouts waiting for a connection to come free now.
    pub waiting: usize,
    /// Connections opened.
    pub opened: u64,
    /// Checkouts served by an idle connection.
    pub reused: u64,
    /// Closed after sitting idle for `idle_timeout`.
    pub closed_idle: u64,
    /// Idle connections closed to make room under a cap for another URL.
    pub evicted: u64,
    /// Dropped as unusable: failed the health check, errored, closed, or
    /// given up by their holder ([`PooledWebSocket::discard`]).
    pub discarded: u64,
}

/// Connections to the external services jobs stream to, shared by every job
/// that holds a clone: websockets checked out and returned, and one HTTP
/// client. See the [module docs](self).
///
/// ```no_run
/// use futures_util::{SinkExt, StreamExt};
/// use lkagent::connections::tungstenite::Message;
/// use lkagent::{JobContext, JobError};
///
/// async fn transcribe(ctx: &JobContext) -> Result<(), JobError> {
///     let mut stt = ctx
///         .connections()
///         .websocket("wss://stt.example.com/v1/listen?model=fast")
///         .await
///         .map_err(|e| JobError::failed(e.to_string()))?;
///     stt.send(Message::text("hello")).await.map_err(|e| JobError::failed(e.to_string()))?;
///     let _answer = stt.next().await;
///     Ok(()) // dropping `stt` gives the connection back to the pool
/// }
/// ```
///
/// Clones share one pool. Its state sits behind `Arc<Mutex<_>>`, like
/// [`ResourceLimiter`](crate::limits::ResourceLimiter)'s and for the same
/// reason: a [`PooledWebSocket`] lives with its job on whichever arbiter runs
/// it, and goes back to the pool the moment it is dropped — when the job is
/// done with it, fails, is cancelled or unwinds from a panic — synchronously,
/// so that the next checkout sees it. A message to an actor could be lost
/// with a stopping arbiter. The lock guards a few map updates, never an
/// await or I/O: connections are opened, checked and closed outside it.
#[derive(Clone)]
pub struct ConnectionPool {
    shared: Arc<Shared>,
}

/// What every clone of a pool shares.
struct Shared {
    options: ConnectionPoolOptions,
    /// The pool's I/O thread: connections are opened (and so driven), idle
    /// ones reaped and HTTP requests sent there.
    io: Io,
    /// TLS for both kinds of connection: ring and the webpki roots, so that
    /// no process-wide crypto provider is needed.
    tls: Arc<rustls::ClientConfig>,
    http: reqwest::Client,
    state: Mutex<State>,
    /// Wakes the checkouts waiting for room: a connection came back or
    /// closed, or a place under the caps was given up.
    room: Notify,
}

struct State {
    ledger: Ledger<WebSocket>,
    /// A reaper task runs (see `reap`).
    reaper: bool,
}

impl ConnectionPool {
    /// A pool with these options; the error names an invalid one.
    pub fn new(options: ConnectionPoolOptions) -> Result<Self, OptionsError> {
        options.validate()?;
        let tls = Arc::new(tls_config());
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .pool_idle_timeout(options.idle_timeout)
            .pool_max_idle_per_host(options.max_per_host)
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|err| OptionsError::Invalid {
                name: "ConnectionPoolOptions",
                reason: format!("the HTTP client cannot be built: {err}"),
            })?;
        let ledger = Ledger::new(options.max_per_host, options.max_total);
        let io = Io::start().map_err(|err| OptionsError::Invalid {
            name: "ConnectionPoolOptions",
            reason: format!("the pool's I/O thread cannot start: {err}"),
        })?;
        Ok(Self {
            shared: Arc::new(Shared {
                io,
                options,
                tls,
                http,
                state: Mutex::new(State {
                    ledger,
                    reaper: false,
                }),
                room: Notify::new(),
            }),
        })
    }

    /// The process-wide pool, with the default options, built on first use:
    /// every worker in the process shares it unless given its own
    /// (`WorkerBuilder::connection_pool`), so their jobs share warm
    /// connections too. Clone it to keep a handle.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<ConnectionPool> = OnceLock::new();
        SHARED.get_or_init(|| {
            Self::new(ConnectionPoolOptions::default()).expect("the default options are valid")
        })
    }

    /// The pool's options.
    pub fn options(&self) -> &ConnectionPoolOptions {
        &self.shared.options
    }

    /// What the pool holds now, and has done since it was built.
    pub fn stats(&self) -> ConnectionStats {
        self.shared.lock().ledger.stats()
    }

    /// The shared HTTP client: connections kept alive per host, for up to
    /// `idle_timeout`, at most `max_per_host` of them idle per host. Build
    /// requests with it and send them with [`send`](Self::send): a request
    /// sent directly opens its connection on the caller's arbiter, which
    /// stops with its worker (and breaks the requests of other workers'
    /// jobs that reuse it).
    pub fn http(&self) -> &reqwest::Client {
        &self.shared.http
    }

    /// Sends a request built with [`http`](Self::http) on the pool's I/O
    /// thread, so that its connection outlives this job's arbiter and
    /// worker; the response (and its body) is read from the caller as
    /// usual. Its error shows the URL: log `err.without_url()` if the
    /// query holds a secret.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        match self.shared.io.handle.spawn(request.send()).await {
            Ok(answer) => answer,
            // the I/O thread lives as long as the pool, which `self` holds:
            // only a panic inside reqwest ends the task early
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }

    /// A websocket connection to `url` (`ws://` or `wss://`), reused if an
    /// idle healthy one to the same URL exists, else opened. Drop the
    /// [`PooledWebSocket`] to give it back. Waits up to `checkout_timeout`
    /// when the caps are reached.
    pub async fn websocket(&self, url: &str) -> Result<PooledWebSocket, PoolError> {
        self.websocket_request(url).await
    }

    /// Like [`websocket`](Self::websocket), for a request that carries
    /// headers (an `Authorization`, a subprotocol): build it with
    /// `tungstenite::ClientRequestBuilder`, or `url.into_client_request()`
    /// and then add headers. Only a checkout with the same URL and the same
    /// headers reuses the connection, so one caller's credentials never
    /// serve another's.
    pub async fn websocket_request(
        &self,
        request: impl IntoClientRequest,
    ) -> Result<PooledWebSocket, PoolError> {
        let request = request
            .into_client_request()
            .map_err(|err| PoolError::InvalidUrl {
                reason: err.to_string(),
            })?;
        let key = Arc::new(Key::of(&request)?);
        let started = Instant::now();
        let deadline = started + self.shared.options.checkout_timeout;
        let mut waiting = None;
        loop {
            // listening before looking, so a connection given back between
            // the look and the wait still wakes this checkout
            let room = self.shared.room.notified();
            let mut room = std::pin::pin!(room);
            room.as_mut().enable();
            let now = Instant::now();
            let (step, expired) = {
                let mut state = self.shared.lock();
                let expired = state.ledger.expire(now, self.shared.options.idle_timeout);
                (state.ledger.checkout(&key), expired)
            };
            if !expired.is_empty() {
                self.shared.room.notify_waiters();
                close_later(
                    &self.shared.io,
                    expired.into_iter().map(|idle| idle.conn).collect(),
                );
            }
            match step {
                Step::Check(idle) => {
                    let claim = Claim::new(&self.shared, &key, Claimed::Checking);
                    let mut conn = idle.conn;
                    if self.healthy(&mut conn, now - idle.since).await {
                        return Ok(claim.hand_out(conn));
                    }
                    tracing::debug!(host = %key.host, "an idle websocket failed its check: dropped");
                    // the claim, dropped, counts it discarded; try the next
                }
                Step::Open => {
                    let claim = Claim::new(&self.shared, &key, Claimed::Opening);
                    return self.open(request, claim).await;
                }
                Step::Evict(idle) => {
                    let claim = Claim::new(&self.shared, &key, Claimed::Opening);
                    tracing::debug!(host = %key.host, "closing an idle websocket to another URL to make room");
                    close_later(&self.shared.io, vec![idle.conn]);
                    return self.open(request, claim).await;
                }
                Step::Wait { in_use, cap } => {
                    if now >= deadline {
                        return Err(PoolError::Exhausted {
                            host: key.host.to_string(),
                            waited: now - started,
                            in_use,
                            cap,
                        });
                    }
                    waiting.get_or_insert_with(|| Waiting::new(&self.shared));
                    let _ = tokio::time::timeout_at(deadline.into(), room).await;
                }
            }
        }
    }

    /// Opens a connection for `claim`'s place under the caps.
    async fn open(&self, request: Request, claim: Claim) -> Result<PooledWebSocket, PoolError> {
        let key = Arc::clone(&claim.key);
        let connector = Connector::Rustls(Arc::clone(&self.shared.tls));
        // TCP_NODELAY: jobs send small frames (audio chunks, short texts)
        // and wait for the answer
        let connecting =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector));
        let timeout = self.shared.options.connect_timeout;
        // opened on the pool's I/O thread, whose runtime then drives it
        let opened = self
            .shared
            .io
            .handle
            .spawn(tokio::time::timeout(timeout, connecting))
            .await;
        let opened = match opened {
            Ok(opened) => opened,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Ok(Err(WsError::AlreadyClosed)),
        };
        match opened {
            Ok(Ok((ws, _response))) => {
                tracing::debug!(host = %key.host, "opened a websocket");
                Ok(claim.hand_out(ws))
            }
            Ok(Err(err)) => Err(PoolError::Connect {
                host: key.host.to_string(),
                reason: key.redact(&err.to_string()),
            }),
            Err(_) => Err(PoolError::ConnectTimeout {
                host: key.host.to_string(),
                timeout,
            }),
        }
    }

    /// True when an idle connection may be handed out again (see the module
    /// docs).
    async fn healthy(&self, ws: &mut WebSocket, idle_for: Duration) -> bool {
        let options = &self.shared.options;
        match look(ws) {
            Look::Gone => false,
            Look::Unread => answers_ping(ws, options.ping_timeout).await,
            Look::Quiet if idle_for >= options.ping_after_idle => {
                answers_ping(ws, options.ping_timeout).await
            }
            Look::Quiet => true,
        }
    }
}

impl fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("ConnectionPool")
            .field("options", &self.shared.options)
            .field("hosts", &state.ledger.hosts())
            .field("stats", &state.ledger.stats())
            .finish()
    }
}

impl Shared {
    /// Locks the state, recovering from poisoning: every update is a few
    /// plain stores that a panic cannot leave half done, and a connection
    /// dropped during that same unwind must still be able to go back.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the reaper on the pool's I/O thread.
    fn start_reaper(self: &Arc<Self>) {
        let guard = ReaperGuard {
            pool: Arc::downgrade(self),
            armed: true,
        };
        drop(self.io.handle.spawn(reap(guard)));
    }
}

/// Closes connections idle for `idle_timeout`, sleeping until the next one
/// is due, and ends when none is left (a connection given back starts it
/// again). It holds the pool only weakly, so it ends with the pool too.
async fn reap(mut guard: ReaperGuard) {
    loop {
        let Some(shared) = guard.pool.upgrade() else {
            return;
        };
        let idle_timeout = shared.options.idle_timeout;
        let (expired, next) = {
            let mut state = shared.lock();
            let expired = state.ledger.expire(Instant::now(), idle_timeout);
            let next = state.ledger.next_expiry(idle_timeout);
            if next.is_none() {
                // decided under the lock that a return checks: no gap in
                // which a connection comes back and no reaper is running
                state.reaper = false;
                guard.armed = false;
            }
            (expired, next)
        };
        if !expired.is_empty() {
            tracing::debug!(closed = expired.len(), "closing idle websockets");
            shared.room.notify_waiters();
        }
        drop(shared);
        close_all(expired.into_iter().map(|idle| idle.conn).collect()).await;
        let Some(next) = next else {
            return;
        };
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Clears the pool's reaper flag if its task is dropped before it ends on
/// its own (its runtime stopped), so that the next return starts another.
struct ReaperGuard {
    pool: Weak<Shared>,
    armed: bool,
}

impl Drop for ReaperGuard {
    fn drop(&mut self) {
        if self.armed
            && let Some(shared) = self.pool.upgrade()
        {
            shared.lock().reaper = false;
        }
    }
}

/// Closes connections in the background, on the pool's I/O thread.
fn close_later(io: &Io, conns: Vec<WebSocket>) {
    if conns.is_empty() {
        return;
    }
    drop(io.handle.spawn(close_all(conns)));
}

/// A thread running a runtime of the pool's own, until the pool is dropped.
struct Io {
    handle: Handle,
    /// Dropped with the pool: the thread's runtime then stops.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Io {
    fn start() -> std::io::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("lkagent-connections".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        let _ = ready.send(Ok(runtime.handle().clone()));
                        // runs the pool's connections until the pool is gone
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(err) => {
                        let _ = ready.send(Err(err));
                    }
                }
            })?;
        let handle = started
            .recv()
            .map_err(|_| std::io::Error::other("the I/O thread ended at once"))??;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }
}

/// Sends each connection a Close frame, then drops it.
async fn close_all(conns: Vec<WebSocket>) {
    futures_util::future::join_all(conns.into_iter().map(|mut ws| async move {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
    }))
    .await;
}

/// What a look at an idle connection, without waiting, found.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    /// Nothing arrived while it was idle.
    Quiet,
    /// The socket holds bytes the runtime has not reported yet: read them
    /// (a Ping answered) before trusting the connection.
    Unread,
    /// Closed, failed, or holding a message nobody asked for.
    Gone,
}

/// Reads what an idle connection has received, without waiting: Pings and
/// Pongs are fine (the stream answers Pings itself); the end of the stream,
/// an error, a Close or a data message is not. Then asks the socket itself:
/// the runtime learns that a socket is readable only when its driver turns,
/// which may lag behind the kernel — and behind a server's close.
fn look(ws: &mut WebSocket) -> Look {
    loop {
        match ws.next().now_or_never() {
            None => break,
            Some(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Some(_) => return Look::Gone,
        }
    }
    peek(ws.get_ref().get_ref())
}

/// Whether the socket has unread bytes or was closed by the peer, from the
/// kernel, without reading (the socket is non-blocking).
fn peek(socket: &TcpStream) -> Look {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    match socket2::SockRef::from(socket).peek(&mut byte) {
        Ok(0) => Look::Gone,
        Ok(_) => Look::Unread,
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Look::Quiet,
        Err(_) => Look::Gone,
    }
}

/// Sends a Ping and waits up to `within` for its Pong.
async fn answers_ping(ws: &mut WebSocket, within: Duration) -> bool {
    let exchange = async {
        ws.send(Message::Ping(Bytes::from_static(PING_PAYLOAD)))
            .await
            .ok()?;
        loop {
            match ws.next().await? {
                Ok(Message::Pong(payload)) if payload.as_ref() == PING_PAYLOAD => return Some(()),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                _ => return None,
            }
        }
    };
    matches!(tokio::time::timeout(within, exchange).await, Ok(Some(())))
}

/// rustls with ring and the webpki roots, as awc uses for the worker's own
/// connection.
fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A websocket connection checked out of a [`ConnectionPool`]: it
/// dereferences to the [`WebSocket`] stream, and goes back to the pool when
/// dropped.
///
/// Use it through its own `Stream` and `Sink` (`next()`, `send()`), which
/// notice an error, a Close or the end of the stream: such a connection is
/// not given back. Give it back between exchanges — with no answer still
/// due, nothing half sent — or [`discard`](Self::discard) it: a message that
/// arrives after it went back makes it fail the next checkout's check, but
/// one still on its way then would reach the next job.
pub struct PooledWebSocket {
    /// Present until dropped.
    ws: Option<WebSocket>,
    key: Arc<Key>,
    shared: Arc<Shared>,
    /// False once it errored, closed or was discarded: dropped, not given
    /// back.
    reusable: bool,
    /// A message was queued and not yet flushed.
    unflushed: bool,
}

impl PooledWebSocket {
    /// Closes the connection instead of giving it back (a protocol state the
    /// next job must not inherit, an exchange cut short).
    pub fn discard(mut self) {
        self.reusable = false;
    }

    /// The host it is connected to, as `scheme://host:port`.
    pub fn host(&self) -> &str {
        &self.key.host
    }

    fn stream(&mut self) -> Pin<&mut WebSocket> {
        Pin::new(self.ws.as_mut().expect("present until dropped"))
    }

    /// Notes an error: the connection is not given back.
    fn watch<T>(&mut self, result: Result<T, WsError>) -> Result<T, WsError> {
        if result.is_err() {
            self.reusable = false;
        }
        result
    }
}

impl Deref for PooledWebSocket {
    type Target = WebSocket;

    fn deref(&self) -> &WebSocket {
        self.ws.as_ref().expect("present until dropped")
    }
}

impl DerefMut for PooledWebSocket {
    fn deref_mut(&mut self) -> &mut WebSocket {
        self.ws.as_mut().expect("present until dropped")
    }
}

impl Stream for PooledWebSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = ready!(this.stream().poll_next(cx));
        if !matches!(
            item,
            Some(Ok(Message::Text(_)
                | Message::Binary(_)
                | Message::Ping(_)
                | Message::Pong(_)))
        ) {
            this.reusable = false; // the end, an error, or a Close
        }
        Poll::Ready(item)
    }
}

impl Sink<Message> for PooledWebSocket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        let result = ready!(this.stream().poll_ready(cx));
        Poll::Ready(this.watch(result))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        let this = self.get_mut();
        if matches!(item, Message::Close(_)) {
            this.reusable = false;
        }
        this.unflushed = true;
        let result = this.stream().start_send(item);
        this.watch(result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        let result = ready!(this.stream().poll_flush(cx));
        if result.is_ok() {
            this.unflushed = false;
        }
        Poll::Ready(this.watch(result))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        this.reusable = false;
        this.stream().poll_close(cx)
    }
}

impl Drop for PooledWebSocket {
    fn drop(&mut self) {
        let Some(ws) = self.ws.take() else {
            return;
        };
        if self.reusable && !self.unflushed {
            let start_reaper = {
                let mut state = self.shared.lock();
                state
                    .ledger
                    .give_back(Arc::clone(&self.key), ws, Instant::now());
                !std::mem::replace(&mut state.reaper, true)
            };
            if start_reaper {
                self.shared.start_reaper();
            }
        } else {
            self.shared.lock().ledger.discard(&self.key.host);
            tracing::debug!(host = %self.key.host, "a websocket was not given back: closed");
            close_later(&self.shared.io, vec![ws]);
        }
        self.shared.room.notify_waiters();
    }
}

impl fmt::Debug for PooledWebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledWebSocket")
            .field("host", &self.key.host)
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

/// Which place under the caps a checkout under way holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claimed {
    /// A connection being opened.
    Opening,
    /// An idle connection being checked.
    Checking,
}

/// A place under the caps held by a checkout under way: given back if the
/// checkout ends without a connection (an error, a failed check, or the
/// caller dropped its future).
struct Claim {
    shared: Arc<Shared>,
    key: Arc<Key>,
    claimed: Claimed,
    held: bool,
}

impl Claim {
    fn new(shared: &Arc<Shared>, key: &Arc<Key>, claimed: Claimed) -> Self {
        Self {
            shared: Arc::clone(shared),
            key: Arc::clone(key),
            claimed,
            held: true,
        }
    }

    /// The checkout succeeded with `ws`.
    fn hand_out(mut self, ws: WebSocket) -> PooledWebSocket {
        self.held = false;
        {
            let mut state = self.shared.lock();
            match self.claimed {
                Claimed::Opening => state.ledger.opened(&self.key.host),
                Claimed::Checking => state.ledger.reused(),
            }
        }
        PooledWebSocket {
            ws: Some(ws),
            key: Arc::clone(&self.key),
            shared: Arc::clone(&self.shared),
            reusable: true,
            unflushed: false,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        {
            let mut state = self.shared.lock();
            match self.claimed {
                Claimed::Opening => state.ledger.open_failed(&self.key.host),
                Claimed::Checking => state.ledger.discard(&self.key.host),
            }
        }
        self.shared.room.notify_waiters();
    }
}

/// Counts a checkout as waiting while it lives.
struct Waiting(Arc<Shared>);

impl Waiting {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.lock().ledger.waiting += 1;
        Self(Arc::clone(shared))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.ledger.waiting = state.ledger.waiting.saturating_sub(1);
    }
}

/// What a checkout asked for: only a checkout for the same key reuses an
/// idle connection. Never printed whole: the URL may carry a secret.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    /// The full URL, path and query included: they choose the model, the
    /// language, the account.
    url: String,
    /// The headers the caller set (an `Authorization`, a subprotocol),
    /// sorted.
    headers: Vec<(String, Vec<u8>)>,
    /// `scheme://host:port`: what the caps count by, and what errors and
    /// logs show.
    host: Arc<str>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Key {
    fn of(request: &Request) -> Result<Self, PoolError> {
        let uri = request.uri();
        let invalid = |reason: &str| PoolError::InvalidUrl {
            reason: reason.to_owned(),
        };
        let (scheme, default_port) = match uri.scheme_str() {
            Some("ws") => ("ws", 80),
            Some("wss") => ("wss", 443),
            _ => return Err(invalid("the scheme must be ws:// or wss://")),
        };
        let host = uri
            .host()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| invalid("it names no host"))?;
        let port = uri.port_u16().unwrap_or(default_port);
        let mut headers: Vec<_> = request
            .headers()
            .iter()
            .filter(|(name, _)| !HANDSHAKE_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        headers.sort();
        Ok(Self {
            url: uri.to_string(),
            headers,
            host: format!("{scheme}://{}:{port}", host.to_ascii_lowercase()).into(),
        })
    }

    /// `text` (an error's) with the URL shown as its host only, and its
    /// query, wherever it appears, as `[redacted]`.
    fn redact(&self, text: &str) -> String {
        let text = text.replace(&self.url, &self.host);
        match self.url.split_once('?') {
            Some((_, query)) if !query.is_empty() => text.replace(query, "[redacted]"),
            _ => text,
        }
    }
}

/// An idle connection, and since when.
struct Idle<C> {
    conn: C,
    since: Instant,
}

/// What a checkout does next, as the ledger decides.
enum Step<C> {
    /// Check this idle connection (counted in use meanwhile).
    Check(Idle<C>),
    /// Open a connection (counted as connecting meanwhile).
    Open,
    /// Close this idle connection to another URL, and open one in its place.
    Evict(Idle<C>),
    /// The caps are reached: wait for room.
    Wait {
        /// Connections to this host in use now.
        in_use: usize,
        /// The option whose cap was reached.
        cap: &'static str,
    },
}

/// Connections out of the idle set, for one host.
#[derive(Clone, Copy, Debug, Default)]
struct Busy {
    in_use: usize,
    connecting: usize,
}

/// The pool's bookkeeping, with no I/O and no clock (`now` is passed in):
/// what is idle, in use and being opened, per host; what the caps allow. The
/// one owner of these counts: idle ones are counted off the idle set, never
/// kept apart. Generic over the connection so that it is tested with plain
/// values.
struct Ledger<C> {
    max_per_host: usize,
    max_total: usize,
    /// Idle connections by what they were opened for, in the order they
    /// came back: the last is the warmest, the first the next to expire.
    idle: HashMap<Arc<Key>, Vec<Idle<C>>>,
    /// Connections out of the idle set, per host; hosts with none are
    /// removed.
    busy: HashMap<Arc<str>, Busy>,
    /// Checkouts waiting for room.
    waiting: usize,
    opened: u64,
    reused: u64,
    closed_idle: u64,
    evicted: u64,
    discarded: u64,
}

impl<C> Ledger<C> {
    fn new(max_per_host: usize, max_total: usize) -> Self {
        Self {
            max_per_host,
            max_total,
            idle: HashMap::new(),
            busy: HashMap::new(),
            waiting: 0,
            opened: 0,
            reused: 0,
            closed_idle: 0,
            evicted: 0,
            discarded: 0,
        }
    }

    fn idle_to(&self, host: &str) -> usize {
        self.idle
            .iter()
            .filter(|(key, _)| &*key.host == host)
            .map(|(_, list)| list.len())
            .sum()
    }

    fn busy_to(&self, host: &str) -> Busy {
        self.busy.get(host).copied().unwrap_or_default()
    }

    fn open_to(&self, host: &str) -> usize {
        let busy = self.busy_to(host);
        self.idle_to(host) + busy.in_use + busy.connecting
    }

    fn total(&self) -> usize {
        let idle: usize = self.idle.values().map(Vec::len).sum();
        let busy: usize = self
            .busy
            .values()
            .map(|busy| busy.in_use + busy.connecting)
            .sum();
        idle + busy
    }

    /// Changes one host's busy counts, removing the host when it has none.
    fn update(&mut self, host: &Arc<str>, change: impl FnOnce(&mut Busy)) {
        let busy = self.busy.entry(Arc::clone(host)).or_default();
        change(busy);
        if busy.in_use == 0 && busy.connecting == 0 {
            self.busy.remove(host);
        }
    }

    /// Decides a checkout for `key`: the warmest idle connection to the same
    /// key; else a new one under both caps; else room made by closing the
    /// oldest idle connection to another key that holds the cap reached (of
    /// the same host when the host's cap is the one); else wait.
    fn checkout(&mut self, key: &Arc<Key>) -> Step<C> {
        if let Some(list) = self.idle.get_mut(key)
            && let Some(idle) = list.pop()
        {
            if list.is_empty() {
                self.idle.remove(key);
            }
            self.update(&key.host, |busy| busy.in_use += 1);
            return Step::Check(idle);
        }
        let host_full = self.open_to(&key.host) >= self.max_per_host;
        if !host_full && self.total() < self.max_total {
            self.update(&key.host, |busy| busy.connecting += 1);
            return Step::Open;
        }
        let victim = self
            .idle
            .iter()
            .filter(|(other, _)| !host_full || other.host == key.host)
            .filter_map(|(other, list)| Some((other, list.first()?.since)))
            .min_by_key(|(_, since)| *since)
            .map(|(other, _)| Arc::clone(other));
        if let Some(victim) = victim {
            let list = self.idle.get_mut(&victim).expect("the victim's list");
            let idle = list.remove(0);
            if list.is_empty() {
                self.idle.remove(&victim);
            }
            self.evicted += 1;
            self.update(&key.host, |busy| busy.connecting += 1);
            return Step::Evict(idle);
        }
        Step::Wait {
            in_use: self.busy_to(&key.host).in_use,
            cap: if host_full {
                "max_per_host"
            } else {
                "max_total"
            },
        }
    }

    /// A checked idle connection was handed out.
    fn reused(&mut self) {
        self.reused += 1;
    }

    /// A connection being opened was opened, and handed out.
    fn opened(&mut self, host: &Arc<str>) {
        self.opened += 1;
        self.update(host, |busy| {
            busy.connecting -= 1;
            busy.in_use += 1;
        });
    }

    /// A connection being opened was not.
    fn open_failed(&mut self, host: &Arc<str>) {
        self.update(host, |busy| busy.connecting -= 1);
    }

    /// A connection in use went back to the idle set.
    fn give_back(&mut self, key: Arc<Key>, conn: C, now: Instant) {
        self.update(&key.host, |busy| busy.in_use -= 1);
        self.idle
            .entry(key)
            .or_default()
            .push(Idle { conn, since: now });
    }

    /// A connection in use (or being checked) was dropped.
    fn discard(&mut self, host: &Arc<str>) {
        self.discarded += 1;
        self.update(host, |busy| busy.in_use -= 1);
    }

    /// Takes out the connections idle for `idle_timeout` or longer at
    /// `now`, to be closed.
    fn expire(&mut self, now: Instant, idle_timeout: Duration) -> Vec<Idle<C>> {
        let mut expired = Vec::new();
        self.idle.retain(|_, list| {
            // oldest first: the expired ones are a prefix
            let due = list
                .iter()
                .take_while(|idle| now.saturating_duration_since(idle.since) >= idle_timeout)
                .count();
            expired.extend(list.drain(..due));
            !list.is_empty()
        });
        self.closed_idle += expired.len() as u64;
        expired
    }

    /// When the next idle connection is due to expire, if any is idle.
    fn next_expiry(&self, idle_timeout: Duration) -> Option<Instant> {
        self.idle
            .values()
            .filter_map(|list| list.first())
            .map(|idle| idle.since + idle_timeout)
            .min()
    }

    fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            idle: self.idle.values().map(Vec::len).sum(),
            in_use: self.busy.values().map(|busy| busy.in_use).sum(),
            connecting: self.busy.values().map(|busy| busy.connecting).sum(),
            waiting: self.waiting,
            opened: self.opened,
            reused: self.reused,
            closed_idle: self.closed_idle,
            evicted: self.evicted,
            discarded: self.discarded,
        }
    }

    /// Per host, what is open: for `Debug`, which shows hosts, never URLs.
    fn hosts(&self) -> BTreeMap<&str, String> {
        let mut hosts: BTreeMap<&str, String> = BTreeMap::new();
        let names = self
            .idle
            .keys()
            .map(|key| &*key.host)
            .chain(self.busy.keys().map(|host| &**host));
        for host in names {
            let busy = self.busy_to(host);
            hosts.entry(host).or_insert_with(|| {
                format!(
                    "{} idle, {} in use, {} connecting",
                    self.idle_to(host),
                    busy.in_use,
                    busy.connecting
                )
            });
        }
        hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(url: &str) -> Arc<Key> {
        Arc::new(Key::of(&url.into_client_request().expect("a request")).expect("a key"))
    }

    fn new_ledger(max_per_host: usize, max_total: usize) -> Ledger<u32> {
        Ledger::new(max_per_host, max_total)
    }

    /// Opens a connection in the ledger and returns it to the idle set at
    /// `at`.
    fn open_idle(ledger: &mut Ledger<u32>, key: &Arc<Key>, conn: u32, at: Instant) {
        assert!(matches!(ledger.checkout(key), Step::Open));
        ledger.opened(&key.host);
        ledger.give_back(Arc::clone(key), conn, at);
    }

    #[test]
    fn options_default_are_valid_and_zero_caps_are_named() {
        assert_eq!(ConnectionPoolOptions::default().validate(), Ok(()));
        for (options, field) in [
            (
                ConnectionPoolOptions {
                    max_per_host: 0,
                    ..Default::default()
                },
                "max_per_host",
            ),
            (
                ConnectionPoolOptions {
                    max_total: 0,
                    ..Default::default()
                },
                "max_total",
            ),
            (
                ConnectionPoolOptions {
                    idle_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "idle_timeout",
            ),
            (
                ConnectionPoolOptions {
                    connect_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "connect_timeout",
            ),
            (
                ConnectionPoolOptions {
                    ping_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "ping_timeout",
            ),
        ] {
            match options.validate() {
                Err(OptionsError::Invalid { name, .. }) => assert_eq!(name, field),
                other => panic!("{field}: {other:?}"),
            }
            let err = ConnectionPool::new(options).expect_err(field);
            assert!(err.to_string().contains(field), "{err}");
        }
        // no wait and a ping at every reuse are choices, not mistakes
        let eager = ConnectionPoolOptions {
            checkout_timeout: Duration::ZERO,
            ping_after_idle: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(eager.validate(), Ok(()));
    }

    #[test]
    fn the_host_key_is_scheme_host_and_port() {
        assert_eq!(
            &*key("wss://STT.example.com/v1/listen?key=abc").host,
            "wss://stt.example.com:443"
        );
        assert_eq!(&*key("ws://127.0.0.1:9000/").host, "ws://127.0.0.1:9000");
        assert_eq!(&*key("ws://user:pw@h/x").host, "ws://h:80");
        assert_eq!(&*key("ws://[::1]:81/x").host, "ws://[::1]:81");
        // the URL keys idle connections; the host counts the caps
        assert_ne!(key("ws://h/a"), key("ws://h/b"));
        assert_eq!(key("ws://h/a").host, key("ws://h/b").host);
        for bad in ["http://h/x", "ftp://h", "/just/a/path"] {
            let err = bad
                .into_client_request()
                .map_err(|e| PoolError::InvalidUrl {
                    reason: e.to_string(),
                })
                .and_then(|request| Key::of(&request));
            assert!(
                matches!(err, Err(PoolError::InvalidUrl { .. })),
                "{bad}: accepted"
            );
        }
    }

    #[test]
    fn the_handshake_headers_are_not_part_of_the_key_but_the_callers_are() {
        let plain = key("wss://h/v1");
        // a second request has another random Sec-WebSocket-Key: same key
        assert!(plain == key("wss://h/v1"));
        let with_auth = |token: &str| {
            let mut request = "wss://h/v1".into_client_request().unwrap();
            request
                .headers_mut()
                .insert("authorization", token.parse().unwrap());
            Arc::new(Key::of(&request).unwrap())
        };
        assert!(with_auth("Bearer a") == with_auth("Bearer a"));
        assert!(with_auth("Bearer a") != with_auth("Bearer b"));
        assert!(with_auth("Bearer a") != plain);
    }

    #[test]
    fn errors_and_debug_never_show_the_query() {
        let secret = "api_key=sk-very-secret-123";
        let key = key(&format!("wss://tts.example.com/v1/stream?{secret}"));
        let exhausted = PoolError::Exhausted {
            host: key.host.to_string(),
            waited: Duration::from_millis(200),
            in_use: 3,
            cap: "max_per_host",
        };
        let connect = PoolError::Connect {
            host: key.host.to_string(),
            reason: key.redact(&format!(
                "Unable to connect to {} (token {secret})",
                key.url
            )),
        };
        for shown in [
            exhausted.to_string(),
            format!("{exhausted:?}"),
            connect.to_string(),
            format!("{connect:?}"),
        ] {
            assert!(!shown.contains("sk-very-secret"), "{shown}");
            assert!(!shown.contains("/v1/stream"), "{shown}");
            assert!(shown.contains("wss://tts.example.com:443"), "{shown}");
        }
        assert!(exhausted.to_string().contains("max_per_host"));

        let mut ledger = new_ledger(2, 4);
        open_idle(&mut ledger, &key, 1, Instant::now());
        let hosts = format!("{:?}", ledger.hosts());
        assert!(!hosts.contains("secret"), "{hosts}");
        assert!(hosts.contains("1 idle, 0 in use"), "{hosts}");
        let pool = ConnectionPool::new(Default::default()).unwrap();
        assert!(!format!("{pool:?}").contains("secret"));
    }

    #[test]
    fn reuse_takes_the_warmest_idle_connection_of_the_same_url() {
        let t0 = Instant::now();
        let mut ledger = new_ledger(4, 8);
        let a = key("ws://h/a");
        let b = key("ws://h/b");
        for _ in 0..2 {
            assert!(matches!(ledger.checkout(&a), Step::Open));
            ledger.opened(&a.host);
        }
        ledger.give_back(Arc::clone(&a), 1, t0);
        ledger.give_back(Arc::clone(&a), 2, t0 + Duration::from_secs(1));
        match ledger.checkout(&a) {
            Step::Check(idle) => assert_eq!(idle.conn, 2),
            _ => panic!("not reused"),
        }
        ledger.reused();
        // another URL of the same host does not get `a`'s connection
        assert!(matches!(ledger.checkout(&b), Step::Open));
        let stats = ledger.stats();
        assert_eq!((stats.idle, stats.in_use, stats.connecting), (1, 1, 1));
        assert_eq!((stats.opened, stats.reused), (2, 1));
    }

    #[test]
    fn the_caps_count_idle_in_use_and_connecting() {
        let mut ledger = new_ledger(2, 3);
        let a = key("ws://h1/a");
        let other_host = key("ws://h2/a");
        assert!(matches!(ledger.checkout(&a), Step::Open)); // connecting
        assert!(matches!(ledger.checkout(&a), Step::Open));
        ledger.opened(&a.host); // one in use, one connecting: the host is full
        match ledger.checkout(&a) {
            Step::Wait { in_use, cap } => assert_eq!((in_use, cap), (1, "max_per_host")),
            _ => panic!("over the host's cap"),
        }
        assert!(matches!(ledger.checkout(&other_host), Step::Open));
        // three open in all: the total cap binds for every host
        assert!(matches!(
            ledger.checkout(&key("ws://h3/")),
            Step::Wait {
                in_use: 0,
                cap: "max_total"
            }
        ));
        ledger.open_failed(&a.host);
        assert!(matches!(ledger.checkout(&a), Step::Open));
    }

    #[test]
    fn an_idle_connection_of_another_url_makes_room_under_the_cap_that_binds() {
        let t0 = Instant::now();
        let a = key("ws://h1/a");
        let b = key("ws://h1/b");
        let elsewhere = key("ws://h2/x");

        // the host's cap binds: only an idle connection of that host helps
        let mut ledger = new_ledger(1, 10);
        open_idle(&mut ledger, &elsewhere, 9, t0);
        open_idle(&mut ledger, &a, 1, t0 + Duration::from_secs(1));
        match ledger.checkout(&b) {
            Step::Evict(idle) => assert_eq!(idle.conn, 1),
            _ => panic!("no room made"),
        }
        ledger.opened(&b.host);
        let stats = ledger.stats();
        assert_eq!((stats.idle, stats.in_use, stats.evicted), (1, 1, 1));
        // nothing idle of that host any more: wait (h2's idle one is no help)
        assert!(matches!(ledger.checkout(&a), Step::Wait { .. }));

        // the total cap binds: the oldest idle connection of any URL goes
        let mut ledger = new_ledger(5, 2);
        open_idle(&mut ledger, &elsewhere, 9, t0);
        open_idle(&mut ledger, &a, 1, t0 + Duration::from_secs(1));
        match ledger.checkout(&b) {
            Step::Evict(idle) => assert_eq!(idle.conn, 9),
            _ => panic!("no room made"),
        }
    }

    #[test]
    fn idle_connections_expire_oldest_first_on_simulated_time() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(60);
        let mut ledger = new_ledger(4, 8);
        let a = key("ws://h/a");
        let b = key("ws://h/b");
        assert_eq!(ledger.next_expiry(timeout), None);
        for key in [&a, &b, &a] {
            assert!(matches!(ledger.checkout(key), Step::Open));
            ledger.opened(&key.host);
        }
        ledger.give_back(Arc::clone(&a), 1, t0);
        ledger.give_back(Arc::clone(&b), 2, t0 + Duration::from_secs(10));
        ledger.give_back(Arc::clone(&a), 3, t0 + Duration::from_secs(20));
        assert_eq!(ledger.next_expiry(timeout), Some(t0 + timeout));
        assert!(
            ledger
                .expire(t0 + Duration::from_secs(59), timeout)
                .is_empty()
        );
        let expired = ledger.expire(t0 + Duration::from_secs(70), timeout);
        let mut closed: Vec<_> = expired.iter().map(|idle| idle.conn).collect();
        closed.sort();
        assert_eq!(closed, [1, 2]);
        assert_eq!(
            ledger.next_expiry(timeout),
            Some(t0 + Duration::from_secs(80))
        );
        let stats = ledger.stats();
        assert_eq!((stats.idle, stats.closed_idle), (1, 2));
        ledger.expire(t0 + Duration::from_secs(80), timeout);
        assert_eq!(ledger.next_expiry(timeout), None);
        assert!(ledger.hosts().is_empty());
    }

    #[test]
    fn a_failed_check_or_a_discard_frees_the_place() {
        let mut ledger = new_ledger(1, 1);
        let a = key("ws://h/a");
        open_idle(&mut ledger, &a, 1, Instant::now());
        assert!(matches!(ledger.checkout(&a), Step::Check(_)));
        // being checked, it holds the cap
        assert!(matches!(ledger.checkout(&a), Step::Wait { in_use: 1, .. }));
        ledger.discard(&a.host);
        assert!(matches!(ledger.checkout(&a), Step::Open));
        let stats = ledger.stats();
        assert_eq!((stats.discarded, stats.in_use, stats.connecting), (1, 0, 1));
    }
}
