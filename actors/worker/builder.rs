//! The builder (options, handler and plug-ins in, a running worker out) and
//! the [`Worker`] handle it gives back.

use std::ops::Deref;
use std::sync::Once;

use super::*;
use crate::handler::JobHandler;
use crate::limits::ResourceLimits;
use crate::load::DefaultLoadCalculator;
use crate::options::OptionsError;
use crate::queue::{DefaultPriorityCalculator, RateLimits};
use crate::recovery::{DefaultRecovery, MemoryStore};

/// A running worker: `Worker::builder(options).handler(agent).start()?`.
///
/// It dereferences to the worker's `Addr<WorkerActor>`, so every message
/// (`SpawnJob`, `GetState`, `Shutdown`, …) is sent with `worker.send(..)`,
/// and it adds [`stop`](Self::stop). Clones address the same worker;
/// dropping them does not stop it.
#[derive(Clone, Debug)]
pub struct Worker {
    addr: Addr<WorkerActor>,
    /// Where its HTTP endpoints listen, if it serves them.
    http: Option<std::net::SocketAddr>,
    /// How it ended, once it has.
    exit: tokio::sync::watch::Receiver<Option<WorkerExit>>,
}

impl Deref for Worker {
    type Target = Addr<WorkerActor>;

    fn deref(&self) -> &Addr<WorkerActor> {
        &self.addr
    }
}

impl From<Worker> for Addr<WorkerActor> {
    fn from(worker: Worker) -> Self {
        worker.addr
    }
}

impl Worker {
    /// The worker's actor address.
    pub fn addr(&self) -> Addr<WorkerActor> {
        self.addr.clone()
    }

    /// Stops the worker in order (see [`Shutdown`]) and resolves when it has
    /// stopped; at once if it already has.
    pub async fn stop(&self) {
        // an error only means the worker is gone already
        let _ = self.addr.send(Shutdown).await;
        // the answer comes as it stops; gone is when the actor is dropped
        self.stopped().await;
    }

    /// Drains the worker (see [`Drain`]): its jobs finish, for up to
    /// `timeout`, then it stops. Resolves when it has stopped.
    pub async fn drain(&self, timeout: std::time::Duration) {
        let _ = self.addr.send(Drain::with_timeout(timeout)).await;
        self.stopped().await;
    }

    /// What a deployment wants on SIGTERM (or SIGINT, Ctrl-C): the first
    /// signal drains the worker for up to `timeout`; a second one cuts the
    /// drain short and stops it at once (its jobs are terminated and
    /// reported). Resolves when the worker has stopped, by a signal or
    /// otherwise.
    pub async fn drain_on_signals(
        &self,
        timeout: std::time::Duration,
    ) -> std::io::Result<Option<WorkerExit>> {
        use futures_util::future::{Either, select};
        let mut signals = Signals::new()?;
        let stopped = Box::pin(self.stopped());
        let stopped = match select(Box::pin(signals.next()), stopped).await {
            Either::Left((signal, stopped)) => {
                tracing::info!(signal, ?timeout, "draining the worker");
                let addr = self.addr.clone();
                actix_rt::spawn(async move {
                    let _ = addr.send(Drain::with_timeout(timeout)).await;
                });
                stopped
            }
            Either::Right((exit, _)) => return Ok(exit),
        };
        match select(Box::pin(signals.next()), stopped).await {
            Either::Left((signal, stopped)) => {
                tracing::warn!(signal, "second signal: stopping now");
                let _ = self.addr.send(Shutdown).await;
                Ok(stopped.await)
            }
            Either::Right((exit, _)) => Ok(exit),
        }
    }

    /// Resolves once the worker has stopped, with how it ended (`None` if
    /// it died without stopping in order: a panic in its own code).
    pub async fn stopped(&self) -> Option<WorkerExit> {
        let mut exit = self.exit.clone();
        // the sender lives as long as the actor: closed means gone
        while exit.changed().await.is_ok() {}
        exit.borrow().clone()
    }

    /// Where the worker's HTTP endpoints listen (`WorkerBuilder::http`):
    /// the bound address, with the port chosen if `:0` was asked for.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http
    }

    /// A builder for a worker with these options.
    pub fn builder(options: WorkerOptions) -> WorkerBuilder {
        WorkerBuilder {
            options,
            handler: None,
            load_calculator: None,
            store: None,
            fleet: None,
            fleet_view: None,
            recovery: None,
            priorities: None,
            shutdown_hooks: Default::default(),
            http: None,
            limiter: None,
            connections: None,
        }
    }
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An option is missing or invalid; the error names it.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// No handler was given: call `.handler(...)`.
    #[error("no job handler: call .handler(...) before .start()")]
    NoHandler,
    /// The HTTP endpoints could not listen on the address given.
    #[error("cannot serve the HTTP endpoints on {addr}: {source}")]
    Http {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Configures and starts a worker.
pub struct WorkerBuilder {
    options: WorkerOptions,
    handler: Option<Arc<dyn DynHandler>>,
    load_calculator: Option<Arc<dyn LoadCalculator>>,
    store: Option<Arc<dyn CheckpointStore>>,
    fleet: Option<Arc<dyn crate::fleet::FleetQueue>>,
    fleet_view: Option<(
        Arc<dyn crate::fleet::FleetView>,
        crate::scaling::ScalingPolicy,
    )>,
    recovery: Option<Arc<dyn RecoveryHandler>>,
    priorities: Option<Arc<dyn PriorityCalculator>>,
    shutdown_hooks: crate::shutdown::ShutdownHooks,
    http: Option<String>,
    limiter: Option<ResourceLimiter>,
    connections: Option<crate::connections::ConnectionPool>,
}

impl WorkerBuilder {
    /// Runs `hook` in `phase` of the worker's shutdown (see
    /// [`ShutdownHook`](crate::ShutdownHook)).
    pub fn on_shutdown(
        mut self,
        phase: crate::shutdown::ShutdownPhase,
        hook: crate::shutdown::ShutdownHook,
    ) -> Self {
        self.shutdown_hooks.add(phase, hook);
        self
    }

    /// Reads the API secret from this file at every connection (and every
    /// room token the worker mints): a rotated secret takes effect at the
    /// next reconnect. See [`WorkerOptions::api_secret_file`].
    pub fn api_secret_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.options = self.options.api_secret_file(path);
        self
    }

    /// Asks this closure for the API secret at every connection (and every
    /// room token the worker mints). Keep it quick: it runs on the worker's
    /// thread. See [`WorkerOptions::api_secret_provider`].
    pub fn api_secret_provider(
        mut self,
        provider: impl Fn() -> Result<crate::auth::ApiSecret, String> + Send + Sync + 'static,
    ) -> Self {
        self.options = self.options.api_secret_provider(provider);
        self
    }

    /// Serves the operator's endpoints (`/`, `/ready`, `/worker`,
    /// `/metrics`; see [`crate::http`]) on `addr` (`host:port`; port 0 picks
    /// a free one, see [`Worker::http_addr`]). They outlive the worker: once
    /// it has stopped, `/` answers 503.
    #[cfg(feature = "http")]
    pub fn http(mut self, addr: impl Into<String>) -> Self {
        self.http = Some(addr.into());
        self
    }

    /// Sets the agent name (empty: the default agent).
    pub fn agent_name(mut self, name: impl Into<String>) -> Self {
        self.options.agent_name = name.into();
        self
    }

    /// Sets the job type.
    pub fn job_type(mut self, job_type: livekit_protocol::JobType) -> Self {
        self.options.job_type = job_type;
        self
    }

    /// Sets the most jobs run at once.
    pub fn max_jobs(mut self, max_jobs: usize) -> Self {
        self.options.max_jobs = max_jobs;
        self
    }

    /// Sets how the load is computed (default: [`DefaultLoadCalculator`], the
    /// share of job slots in use). Any `Fn(&LoadMetrics) -> f32` works too.
    pub fn load_calculator(mut self, calculator: impl LoadCalculator) -> Self {
        self.load_calculator = Some(Arc::new(calculator));
        self
    }

    /// Sets the load at which the worker reports FULL (default: the
    /// calculator's own, 0.7 for resource-based loads, 1.0 for job slots).
    pub fn load_threshold(mut self, threshold: f32) -> Self {
        self.options.load_threshold = Some(threshold);
        self
    }

    /// Keeps server jobs' checkpoints in this store (default: in memory,
    /// which survives handler panics and reconnects but not a restart). An
    /// [`EmbeddedStore`](crate::recovery::EmbeddedStore) survives `kill -9`: at start-up
    /// the worker resumes the jobs it finds there.
    pub fn checkpoint_store(mut self, store: impl CheckpointStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Pulls jobs from the fleet's queue (see [`crate::fleet`]) whenever a
    /// slot is free and nothing of the worker's own waits. The queue must
    /// belong to the same fleet as the checkpoint store (for Redis: the
    /// same URL and prefix, e.g. `RedisJobQueue::of_store`): a pulled
    /// job's record lives there, and dropping it acknowledges the job.
    pub fn fleet_queue(mut self, queue: impl crate::fleet::FleetQueue) -> Self {
        self.fleet = Some(Arc::new(queue));
        self
    }

    /// Publishes the worker's load to the fleet's view and, from every
    /// worker's there, computes the replica count the fleet should have
    /// under `policy`: exported as `livekit_agent_recommended_replicas` for
    /// an HPA or KEDA (see [`crate::fleet`] and `deploy/`).
    pub fn fleet_view(
        mut self,
        view: impl crate::fleet::FleetView,
        policy: crate::scaling::ScalingPolicy,
    ) -> Self {
        self.fleet_view = Some((Arc::new(view), policy));
        self
    }

    /// Decides which interrupted jobs are resumed at start-up (default:
    /// [`DefaultRecovery`], jobs whose checkpoint is under 5 minutes old).
    pub fn recovery_handler(mut self, handler: impl RecoveryHandler) -> Self {
        self.recovery = Some(Arc::new(handler));
        self
    }

    /// Decides job priorities (default: [`DefaultPriorityCalculator`],
    /// `"priority"` in the metadata, else Normal). A handler's
    /// `Decision::with_priority` overrides it.
    pub fn priority_calculator(mut self, calculator: impl PriorityCalculator) -> Self {
        self.priorities = Some(Arc::new(calculator));
        self
    }

    /// Sets the resource limits jobs reserve from.
    pub fn resource_limits(mut self, limits: ResourceLimits) -> Self {
        self.options.resource_limits = limits;
        self
    }

    /// Reserves from this budget instead of one of its own (its limits
    /// replace `resource_limits`): workers given clones of one limiter share
    /// the budget, and each reports at least the load of the whole budget
    /// in use. A `WorkerPool` gives its workers its own.
    pub fn resource_limiter(mut self, limiter: ResourceLimiter) -> Self {
        self.options.resource_limits = limiter.limits();
        self.limiter = Some(limiter);
        self
    }

    /// Adds a label (`region`, `zone`, …) to every metric series of the
    /// worker and to `/worker` (see [`WorkerOptions::labels`]).
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options = self.options.label(name, value);
        self
    }

    /// Takes new jobs only while the (shared) budget is used below `share`
    /// (see [`WorkerOptions::accept_below`]).
    pub fn accept_below(mut self, share: f32) -> Self {
        self.options = self.options.accept_below(share);
        self
    }

    /// The instance name the worker will have.
    pub(crate) fn instance_id(&self) -> &str {
        &self.options.instance_id
    }

    /// Appends `suffix` to the instance name (a pool's scaled workers, built
    /// by one factory, each get their own).
    pub(crate) fn instance_suffix(mut self, suffix: &str) -> Self {
        self.options.instance_id.push_str(suffix);
        self
    }

    /// Drops the HTTP endpoints asked for: a pool serves its workers' own.
    pub(crate) fn without_http(mut self) -> Self {
        self.http = None;
        self
    }

    /// Sets the rate limits on accepted jobs.
    pub fn rate_limits(mut self, limits: RateLimits) -> Self {
        self.options.rate_limits = Some(limits);
        self
    }

    /// Sets which priorities are admitted at which load.
    pub fn admission(mut self, policy: AdmissionPolicy) -> Self {
        self.options.admission = Some(policy);
        self
    }

    /// Gives the worker's jobs this pool for
    /// [`JobContext::connections`](crate::JobContext::connections) (default:
    /// [`ConnectionPool::shared`](crate::ConnectionPool::shared), one pool
    /// for every worker in the process). Give several workers clones of one
    /// pool to share it among them only.
    pub fn connection_pool(mut self, pool: crate::connections::ConnectionPool) -> Self {
        self.connections = Some(pool);
        self
    }

    /// Sets the handler that runs every job.
    pub fn handler<H: JobHandler>(mut self, handler: H) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Validates the options and starts the worker inside the current actix
    /// `System`. It connects at once and keeps reconnecting until stopped
    /// ([`Worker::stop`]).
    pub fn start(self) -> Result<Worker, StartError> {
        self.options.validate()?;
        let handler = self.handler.ok_or(StartError::NoHandler)?;
        install_crypto_provider();
        let calculator = self
            .load_calculator
            .unwrap_or_else(|| Arc::new(DefaultLoadCalculator));
        let threshold = self
            .options
            .load_threshold
            .unwrap_or_else(|| calculator.default_threshold());
        let admission = self
            .options
            .admission
            .unwrap_or_else(|| AdmissionPolicy::new(threshold));
        let rate_limiter = match self.options.rate_limits {
            Some(limits) => {
                Some(
                    JobRateLimiter::new(limits).map_err(|e| OptionsError::Invalid {
                        name: "rate_limits",
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let scaling = match self.fleet_view {
            Some((view, policy)) => {
                let scaler =
                    crate::scaling::AutoScaler::new(policy).map_err(|e| OptionsError::Invalid {
                        name: "scaling_policy",
                        reason: e.to_string(),
                    })?;
                Some(super::scaling::FleetScaling::new(view, scaler))
            }
            None => None,
        };
        let limiter = self
            .limiter
            .unwrap_or_else(|| ResourceLimiter::new(self.options.resource_limits));
        let http_listener = match &self.http {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr.as_str()).map_err(|source| StartError::Http {
                    addr: addr.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let (exit, exit_watch) = tokio::sync::watch::channel(None);
        let parts = WorkerParts {
            exit,
            shutdown_hooks: self.shutdown_hooks,
            priorities: self
                .priorities
                .unwrap_or_else(|| Arc::new(DefaultPriorityCalculator::default())),
            admission,
            limiter,
            rate_limiter,
            threshold,
            options: Arc::new(self.options),
            handler,
            load_calculator: calculator,
            store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
            fleet: self.fleet,
            scaling,
            recovery: self
                .recovery
                .unwrap_or_else(|| Arc::new(DefaultRecovery::default())),
            connections: self
                .connections
                .unwrap_or_else(|| crate::connections::ConnectionPool::shared().clone()),
        };
        let mut worker = Worker {
            addr: WorkerActor::create(|_| WorkerActor::new(parts)),
            http: None,
            exit: exit_watch,
        };
        if let Some(listener) = http_listener {
            worker.http =
                Some(
                    serve_http(listener, worker.clone()).map_err(|source| StartError::Http {
                        addr: self.http.unwrap_or_default(),
                        source,
                    })?,
                );
        }
        Ok(worker)
    }
}

/// rustls needs a process-wide crypto provider before awc builds its TLS
/// config; install ring's unless the application installed one already.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Serves the operator's endpoints for `worker` on `listener`, on actix-web's
/// own threads (one worker thread: these are probes and scrapes).
#[cfg(feature = "http")]
fn serve_http(
    listener: std::net::TcpListener,
    worker: Worker,
) -> std::io::Result<std::net::SocketAddr> {
    crate::http::serve(listener, crate::http::configure(worker))
}

#[cfg(not(feature = "http"))]
fn serve_http(
    _listener: std::net::TcpListener,
    _worker: Worker,
) -> std::io::Result<std::net::SocketAddr> {
    Err(std::io::Error::other("built without the `http` feature"))
}

#[cfg(feature = "http")]
impl crate::http::StateSource for Worker {
    fn state(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<crate::WorkerState>>>> {
        let addr = self.addr.clone();
        // a worker that cannot answer a probe within this is not healthy
        let answer = addr
            .send(GetState)
            .timeout(std::time::Duration::from_secs(2));
        Box::pin(async move { answer.await.ok() })
    }
}

/// SIGTERM and SIGINT, as one stream of signal names.
struct Signals {
    #[cfg(unix)]
    term: actix_rt::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            term: actix_rt::signal::unix::signal(actix_rt::signal::unix::SignalKind::terminate())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            use futures_util::future::{Either, select};
            let term = Box::pin(self.term.recv());
            let int = Box::pin(actix_rt::signal::ctrl_c());
            match select(term, int).await {
                Either::Left(_) => "SIGTERM",
                Either::Right(_) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = actix_rt::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}
