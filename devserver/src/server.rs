//! [`DevServer`]: the handle. It binds the listener, runs the actix-web
//! server (`GET /` health, `GET /agent` WebSocket upgrade with the token check)
//! and talks to the [`Dispatcher`] only through messages.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::{Actor, Addr, MailboxError};
use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use actix_web_actors::ws;
use livekit_protocol::{ServerInfo, server_info};
use tokio::sync::{oneshot, watch};

use crate::auth;
use crate::config::DevServerConfig;
use crate::dispatcher::{Dispatcher, DispatcherConfig};
use crate::ids;
use crate::messages::{
    Dispatch, DropConnections, DropWorker, GetCounts, GetFaultReport, GetJob, InjectFrame,
    ListJobs, ListWorkers, Shutdown, TerminateJob,
};
use crate::model::{
    Counts, DevServerError, DispatchError, DispatchRequest, JobInfo, RawFrame, WaitTimeout,
    WorkerInfo,
};
use crate::session::{Session, SessionConfig};

/// The signal protocol version the server reports (`types.CurrentProtocol`).
const SIGNAL_PROTOCOL: i32 = 16;
/// The agent protocol version the server speaks (`agent.CurrentProtocol`).
const AGENT_PROTOCOL: i32 = 1;
/// Region reported in `ServerInfo`.
const REGION: &str = "local";
/// HTTP worker threads: a dev server needs one.
const HTTP_WORKERS: usize = 1;
/// Seconds the HTTP server waits for connections on stop.
const SHUTDOWN_TIMEOUT_SECS: u64 = 1;
/// After a session ends, actix-http waits this long for the peer to close
/// before dropping the socket; kept short so a dropped connection is seen
/// as dropped at once (the default is 1 s).
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_millis(20);

/// What the HTTP handlers share (read-only).
pub(crate) struct AppState {
    pub(crate) dispatcher: Addr<Dispatcher>,
    pub(crate) keys: Arc<Vec<(String, String)>>,
    session: Arc<SessionConfig>,
    max_frame_size: usize,
    /// Worker connections refused for their token, since start.
    refused: Arc<AtomicU64>,
    /// The dashboard's state-change feed and stream bound.
    pub(crate) dashboard: crate::dashboard::Dashboard,
}

#[derive(serde::Deserialize)]
struct AgentQuery {
    access_token: Option<String>,
    protocol: Option<String>,
}

/// A running dev server: a cheap, cloneable handle.
#[derive(Clone)]
pub struct DevServer {
    inner: Arc<Inner>,
}

struct Inner {
    refused: Arc<AtomicU64>,
    addr: SocketAddr,
    dispatcher: Addr<Dispatcher>,
    server: ServerHandle,
    version: watch::Receiver<u64>,
    key_names: Vec<String>,
    /// The keys, to mint the dashboard link (never printed by `Debug`).
    keys: Arc<Vec<(String, String)>>,
}

impl fmt::Debug for DevServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevServer")
            .field("addr", &self.inner.addr)
            .field("keys", &self.inner.key_names)
            .finish_non_exhaustive()
    }
}

impl DevServer {
    /// Binds `config.bind`, starts the HTTP server and the dispatcher, and
    /// returns once listening. Call it inside a running actix System (e.g.
    /// `#[actix_rt::test]`); the dispatcher lives on the caller's arbiter.
    pub async fn start(config: DevServerConfig) -> io::Result<DevServer> {
        if config.keys.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no API keys configured",
            ));
        }
        if let Some(why) = config.refusal() {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
        }
        if let Some(faults) = &config.faults {
            faults
                .validate()
                .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
        }
        let listener = std::net::TcpListener::bind(config.bind)?;
        let addr = listener.local_addr()?;
        let (version_tx, version_rx) = watch::channel(0u64);
        let keys = Arc::new(config.keys.clone());
        let dispatcher = Dispatcher::new(
            Arc::new(DispatcherConfig {
                keys: config.keys.clone(),
                availability_timeout: config.availability_timeout,
                room_token_ttl: config.room_token_ttl,
                reconnect_grace: config.reconnect_grace,
                max_job_attempts: config.max_job_attempts.max(1),
                max_workers: config.max_workers,
                max_rooms: config.max_rooms,
                max_participants: config.max_participants,
                max_dispatches: config.max_dispatches,
                max_jobs: config.max_jobs,
                faults: config.faults.clone(),
            }),
            version_tx,
        )
        .start();
        let session = Arc::new(SessionConfig {
            register_timeout: config.register_timeout,
            ping_interval: config.ping_interval,
            server_info: ServerInfo {
                edition: server_info::Edition::Standard as i32,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                protocol: SIGNAL_PROTOCOL,
                agent_protocol: AGENT_PROTOCOL,
                region: REGION.to_owned(),
                node_id: ids::new_id(ids::NODE_PREFIX),
                ..Default::default()
            },
            answer_pings: config.answer_pings,
            drop_after_register: config.drop_after_register,
        });
        let refused = Arc::new(AtomicU64::new(0));
        let state = web::Data::new(AppState {
            dispatcher: dispatcher.clone(),
            keys,
            session,
            max_frame_size: config.max_frame_size,
            refused: refused.clone(),
            dashboard: crate::dashboard::Dashboard::new(version_rx.clone()),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(crate::twirp::json_config())
                .route("/", web::get().to(health))
                .route("/agent", web::get().to(agent_socket))
                .configure(crate::twirp::configure)
                .configure(crate::bench::configure)
                .configure(crate::dashboard::configure)
                .default_service(web::to(crate::twirp::no_route))
        })
        .workers(HTTP_WORKERS)
        // small frames answered at once: without it a frame written while the
        // peer's delayed ACK is pending waits ~40 ms (Nagle). The Go server
        // sets TCP_NODELAY on every connection; the stand-in must too
        .tcp_nodelay(true)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
        .on_connect(keep_socket)
        .listen(listener)?
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        tracing::info!(%addr, "dev server listening");
        Ok(DevServer {
            inner: Arc::new(Inner {
                refused,
                addr,
                dispatcher,
                server: handle,
                version: version_rx,
                key_names: config.keys.iter().map(|(k, _)| k.clone()).collect(),
                keys: Arc::new(config.keys),
            }),
        })
    }

    /// How many worker connections were refused for their token (HTTP 401)
    /// since the server started.
    pub fn refused_connections(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://HOST:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// `ws://HOST:PORT`: what a worker uses as `LIVEKIT_URL`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.inner.addr)
    }

    /// Creates a job and places it as the server does. Resolves once an
    /// assignment was sent (the assigned job), once the worker answered
    /// `terminate: true` (the job, ended as SUCCESS), or when it could not be
    /// placed.
    pub async fn dispatch(&self, request: DispatchRequest) -> Result<JobInfo, DispatchError> {
        let (reply, outcome) = oneshot::channel();
        self.inner
            .dispatcher
            .send(Dispatch { request, reply })
            .await
            .map_err(|_| DispatchError::Stopped)?;
        outcome.await.map_err(|_| DispatchError::Stopped)?
    }

    /// Sends `termination` to the worker holding the job and ends the job as
    /// SUCCESS (what the server does when the dispatch is deleted).
    pub async fn terminate_job(&self, job_id: &str) -> Result<(), DevServerError> {
        self.inner
            .dispatcher
            .send(TerminateJob {
                job_id: job_id.to_owned(),
            })
            .await
            .map_err(stopped)?
    }

    /// Fault mode's ledger and counts so far (`None` when fault mode is
    /// off): see [`FaultReport`](crate::FaultReport).
    pub async fn fault_report(&self) -> Option<crate::FaultReport> {
        self.inner
            .dispatcher
            .send(GetFaultReport)
            .await
            .ok()
            .flatten()
    }

    /// The dashboard's address with a token of the first key in it, valid
    /// for a day: what the binary prints at start. The token is a
    /// credential: show it to whoever may use the dashboard, log it nowhere.
    pub fn dashboard_url(&self) -> String {
        format!(
            "{}/dashboard?token={}",
            self.http_url(),
            self.dashboard_token()
        )
    }

    /// A token that opens the dashboard and its API (`Authorization:
    /// Bearer`), signed with the first key, valid for a day.
    pub fn dashboard_token(&self) -> String {
        let (key, secret) = &self.inner.keys[0];
        // minting fails only for an empty identity with a room grant; the
        // dashboard token has neither
        crate::auth::mint_dashboard_token(key, secret, crate::dashboard::LINK_TTL)
            .expect("a dashboard token is always mintable")
    }

    /// Abruptly closes one worker's socket (no close frame), as fault mode
    /// does: the worker sees a lost connection.
    pub async fn drop_worker(&self, worker_id: &str) -> Result<(), DevServerError> {
        self.inner
            .dispatcher
            .send(DropWorker {
                worker_id: worker_id.to_owned(),
            })
            .await
            .map_err(stopped)?
    }

    /// Abruptly closes every registered worker's socket (no close frame);
    /// returns how many.
    pub async fn drop_connections(&self) -> usize {
        self.inner
            .dispatcher
            .send(DropConnections)
            .await
            .unwrap_or(0)
    }

    /// Sends these exact bytes to the worker as one frame (no size limit).
    pub async fn inject_frame(
        &self,
        worker_id: &str,
        frame: RawFrame,
    ) -> Result<(), DevServerError> {
        self.inner
            .dispatcher
            .send(InjectFrame {
                worker_id: worker_id.to_owned(),
                frame,
            })
            .await
            .map_err(stopped)?
    }

    /// Connected and recently disconnected workers, in registration order.
    pub async fn workers(&self) -> Vec<WorkerInfo> {
        self.inner
            .dispatcher
            .send(ListWorkers)
            .await
            .unwrap_or_default()
    }

    /// All job records, oldest first.
    pub async fn jobs(&self) -> Vec<JobInfo> {
        self.inner
            .dispatcher
            .send(ListJobs)
            .await
            .unwrap_or_default()
    }

    /// One job record.
    pub async fn job(&self, id: &str) -> Option<JobInfo> {
        self.inner
            .dispatcher
            .send(GetJob(id.to_owned()))
            .await
            .ok()
            .flatten()
    }

    /// How many workers, rooms, participants, dispatches and job records
    /// the server holds now: what its caps bound.
    pub async fn counts(&self) -> Counts {
        self.inner
            .dispatcher
            .send(GetCounts)
            .await
            .unwrap_or_default()
    }

    /// Waits until the job exists and `pred` holds for it, re-checking on
    /// every state change, for at most `timeout`.
    pub async fn wait_job(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&JobInfo) -> bool,
    ) -> Result<JobInfo, WaitTimeout> {
        self.wait_for(timeout, || async { self.job(id).await.filter(|j| pred(j)) })
            .await
    }

    /// Waits until `pred` holds for the worker list, re-checking on every
    /// state change, for at most `timeout`.
    pub async fn wait_workers(
        &self,
        timeout: Duration,
        pred: impl Fn(&[WorkerInfo]) -> bool,
    ) -> Result<Vec<WorkerInfo>, WaitTimeout> {
        self.wait_for(timeout, || async {
            let workers = self.workers().await;
            pred(&workers).then_some(workers)
        })
        .await
    }

    /// Waits until `pred` holds for the job list (oldest first),
    /// re-checking on every state change, for at most `timeout`.
    pub async fn wait_jobs(
        &self,
        timeout: Duration,
        pred: impl Fn(&[JobInfo]) -> bool,
    ) -> Result<Vec<JobInfo>, WaitTimeout> {
        self.wait_for(timeout, || async {
            let jobs = self.jobs().await;
            pred(&jobs).then_some(jobs)
        })
        .await
    }

    /// Waits until `pred` holds for the [`counts`](Self::counts),
    /// re-checking on every state change, for at most `timeout`.
    pub async fn wait_counts(
        &self,
        timeout: Duration,
        pred: impl Fn(&Counts) -> bool,
    ) -> Result<Counts, WaitTimeout> {
        self.wait_for(timeout, || async {
            let counts = self.counts().await;
            pred(&counts).then_some(counts)
        })
        .await
    }

    async fn wait_for<T, F, Fut>(&self, timeout: Duration, check: F) -> Result<T, WaitTimeout>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut version = self.inner.version.clone();
        loop {
            // Mark the current version seen before looking, so a change made
            // while we look wakes the next wait.
            version.borrow_and_update();
            if let Some(found) = check().await {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the dispatcher is gone and nothing will change.
                Ok(Err(_)) | Err(_) => return Err(WaitTimeout { waited: timeout }),
            }
        }
    }

    /// Stops the HTTP server (dropping every connection) and the dispatcher;
    /// dispatches in flight fail with `Stopped`.
    pub async fn stop(&self) {
        self.inner.server.stop(false).await;
        let _ = self.inner.dispatcher.send(Shutdown).await;
    }
}

fn stopped(_: MailboxError) -> DevServerError {
    DevServerError::Stopped
}

/// A duplicate handle of a connection's TCP socket, kept in the connection's
/// data so that `drop_connections` can shut the socket down abruptly: ending
/// the websocket stream alone leaves actix-http waiting on the client, and the
/// client would only notice at its next write.
struct ConnSocket(std::os::fd::OwnedFd);

fn keep_socket(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsFd as _;
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        match tcp.as_fd().try_clone_to_owned() {
            Ok(fd) => {
                data.insert(ConnSocket(fd));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep a handle on the socket: drop_connections will be graceful")
            }
        }
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().body("OK")
}

/// `GET /agent`: checks the token, then upgrades to a [`Session`].
async fn agent_socket(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return Ok(HttpResponse::NotFound().finish());
    }
    let query = web::Query::<AgentQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or(AgentQuery {
            access_token: None,
            protocol: None,
        });
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let api_key = match auth::extract_token(authorization, query.access_token.as_deref()) {
        None => Err(auth::AuthError::Missing),
        Some(token) => auth::authorize(token, &state.keys),
    };
    let api_key = match api_key {
        Ok(key) => key,
        Err(e) => {
            // The reason only: never the token.
            tracing::info!(peer = ?req.peer_addr(), reason = %e, "worker connection refused");
            state.refused.fetch_add(1, Ordering::Relaxed);
            return Ok(HttpResponse::Unauthorized().body("permission denied"));
        }
    };
    let protocol = query
        .protocol
        .and_then(|p| p.parse().ok())
        .unwrap_or(AGENT_PROTOCOL);
    let socket = req
        .conn_data::<ConnSocket>()
        .and_then(|socket| socket.0.try_clone().ok())
        .map(std::net::TcpStream::from);
    let session = Session::new(
        state.dispatcher.clone(),
        state.session.clone(),
        api_key,
        protocol,
        socket,
    );
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(state.max_frame_size)
        .start()
}
