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
    }

    /// A builder for a worker with these options.
    pub fn builder(options: WorkerOptions) -> WorkerBuilder {
        WorkerBuilder {
            options,
            handler: None,
            load_calculator: None,
            store: None,
            recovery: None,
            priorities: None,
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
}

/// Configures and starts a worker.
pub struct WorkerBuilder {
    options: WorkerOptions,
    handler: Option<Arc<dyn DynHandler>>,
    load_calculator: Option<Arc<dyn LoadCalculator>>,
    store: Option<Arc<dyn CheckpointStore>>,
    recovery: Option<Arc<dyn RecoveryHandler>>,
    priorities: Option<Arc<dyn PriorityCalculator>>,
}

impl WorkerBuilder {
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
        let limiter = ResourceLimiter::new(self.options.resource_limits);
        let parts = WorkerParts {
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
            recovery: self
                .recovery
                .unwrap_or_else(|| Arc::new(DefaultRecovery::default())),
        };
        Ok(Worker {
            addr: WorkerActor::create(|_| WorkerActor::new(parts)),
        })
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
