//! WorkerActor: the supervisor, and the only owner of worker state.
//!
//! It decides — availability answers, job start and end, what to report — and
//! routes: frames arrive from the ConnectionActor as typed messages, jobs run
//! in JobActors, and everything for the server goes back through the
//! connection. While the connection is down, job statuses wait in an
//! [`Outbox`] and go out, in order, after the next registration, preceded by
//! `migrate_job` for the jobs that kept running.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Once};
use std::time::{Instant, SystemTime};

use actix::prelude::*;
use actix::{Supervisor, fut::wrap_future};
use futures_util::FutureExt as _;
use livekit_protocol::{
    AvailabilityResponse, Job, JobStatus, MigrateJobRequest, Room, UpdateJobStatus, worker_message,
};
use tracing::{debug, error, info, warn};

use super::connection::ConnectionActor;
use super::job::{JobActor, JobRules, guard, panic_message};
use super::load_reporter::{LoadReporterActor, ReporterConfig};
use super::messages::*;
use super::queue::QueueActor;
use crate::auth::ROOM_TOKEN_TTL;
use crate::handler::{Decision, DynHandler, JobContext, JobHandler, JobRequest, room_name};
use crate::limits::{Reservation, ResourceLimiter, ResourceLimits, ResourceRequest, UsageState};
use crate::load::{
    DEFAULT_LOAD_EPSILON, DefaultLoadCalculator, LoadCalculator, LoadReport, ReportPolicy, Slots,
};
use crate::options::{OptionsError, WorkerOptions};
use crate::outbox::{Evicted, Outbox};
use crate::queue::{
    AdmissionPolicy, DefaultPriorityCalculator, JobPriority, JobRateLimiter, PriorityCalculator,
    QueueStats, RateLimits,
};
use crate::recovery::{
    Checkpoint, CheckpointStore, DefaultRecovery, JobCheckpoint, MemoryStore, RecoveryError,
    RecoveryHandler,
};

/// Starts workers: `Worker::builder(options).handler(agent).start()`.
pub struct Worker;

impl Worker {
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
    /// `System`. It connects at once and keeps reconnecting until stopped.
    pub fn start(self) -> Result<Addr<WorkerActor>, StartError> {
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
        Ok(WorkerActor::create(|_| WorkerActor::new(parts)))
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

struct RunningJob {
    addr: Addr<JobActor>,
    started_at: Instant,
    origin: JobOrigin,
    /// The job's share of the resource limits, released when it ends.
    _reservation: Option<Reservation>,
}

/// The arbiters jobs run on, stopped when the worker goes away.
struct JobThreads {
    arbiters: Vec<Arbiter>,
    next: usize,
}

impl JobThreads {
    fn new(count: usize) -> Self {
        let count = if count == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            count
        };
        Self {
            arbiters: (0..count).map(|_| Arbiter::new()).collect(),
            next: 0,
        }
    }

    fn pick(&mut self) -> ArbiterHandle {
        let handle = self.arbiters[self.next % self.arbiters.len()].handle();
        self.next = self.next.wrapping_add(1);
        handle
    }
}

impl Drop for JobThreads {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// The worker: see the module docs. Start it with [`Worker::builder`].
pub struct WorkerActor {
    options: Arc<WorkerOptions>,
    handler: Arc<dyn DynHandler>,
    connection: Option<Addr<ConnectionActor>>,
    threads: Option<JobThreads>,
    worker_id: Option<String>,
    registrations: u64,
    jobs: HashMap<String, RunningJob>,
    /// Slots held for jobs being decided on or accepted but not yet assigned,
    /// with the participant identity they were accepted under.
    reserved: HashMap<String, Pending>,
    /// Jobs waiting in the queue (the QueueActor holds them).
    queued: usize,
    /// Slots granted to queued jobs whose `TakeNext` answer is on its way.
    granting: usize,
    queue: Option<Addr<QueueActor>>,
    priorities: Arc<dyn PriorityCalculator>,
    admission: AdmissionPolicy,
    limiter: ResourceLimiter,
    rate_limiter: Option<JobRateLimiter>,
    memory: UsageState,
    outbox: Outbox,
    reporter: Option<Addr<LoadReporterActor>>,
    load_calculator: Arc<dyn LoadCalculator>,
    /// The load at which the worker reports FULL (options, else the
    /// calculator's default), decided once at start.
    threshold: f32,
    /// The latest report computed by the reporter.
    load: LoadReport,
    /// Who hears about job statuses (bounded by [`MAX_SUBSCRIBERS`]).
    subscribers: Vec<Recipient<JobEvent>>,
    /// Where server jobs' checkpoints are kept.
    store: Arc<dyn CheckpointStore>,
    /// Decides which interrupted jobs are resumed at start-up.
    recovery: Arc<dyn RecoveryHandler>,
}

/// The most job-event subscribers a worker keeps: each event is offered to
/// every one of them on the worker's thread.
pub const MAX_SUBSCRIBERS: usize = 64;

/// What a worker is made of, as the builder hands it over.
struct WorkerParts {
    options: Arc<WorkerOptions>,
    handler: Arc<dyn DynHandler>,
    load_calculator: Arc<dyn LoadCalculator>,
    store: Arc<dyn CheckpointStore>,
    recovery: Arc<dyn RecoveryHandler>,
    priorities: Arc<dyn PriorityCalculator>,
    admission: AdmissionPolicy,
    limiter: ResourceLimiter,
    rate_limiter: Option<JobRateLimiter>,
    threshold: f32,
}

/// A slot held for a server job between the availability request and its
/// assignment.
struct Pending {
    /// The identity it was accepted under (None while deciding).
    identity: Option<String>,
    /// Releases the slot if the assignment never comes.
    expiry: Option<SpawnHandle>,
    /// Its priority, from the calculator and then the handler.
    priority: JobPriority,
    /// Its share of the resource limits, once accepted.
    limits: Option<Reservation>,
    /// Accepted beyond the free slots (priority headroom): queued on
    /// assignment.
    over_capacity: bool,
    /// The room, for the per-room rate limit.
    room: String,
}

impl WorkerActor {
    fn new(parts: WorkerParts) -> Self {
        let WorkerParts {
            options,
            handler,
            load_calculator,
            store,
            recovery,
            priorities,
            admission,
            limiter,
            rate_limiter,
            threshold,
        } = parts;
        // each job holds at most one queued status, and jobs are bounded by
        // the slots plus the queue; the slack covers jobs that end while
        // others start
        let jobs_bound = options.max_jobs.saturating_add(options.queue_capacity);
        let outbox = Outbox::new(jobs_bound.saturating_mul(2).saturating_add(64));
        let max_jobs = options.max_jobs;
        Self {
            options,
            handler,
            connection: None,
            threads: None,
            worker_id: None,
            registrations: 0,
            jobs: HashMap::new(),
            reserved: HashMap::new(),
            queued: 0,
            granting: 0,
            queue: None,
            priorities,
            admission,
            limiter,
            rate_limiter,
            memory: UsageState::Ok,
            outbox,
            reporter: None,
            load_calculator,
            threshold,
            subscribers: Vec::new(),
            store,
            recovery,
            load: LoadReport::new(
                Slots {
                    active: 0,
                    reserved: 0,
                    max: max_jobs,
                },
                0.0,
                1.0,
            ),
        }
    }

    fn connected(&self) -> bool {
        self.worker_id.is_some()
    }

    /// Running jobs, and everything that holds a claim on a slot: pending
    /// server jobs, queued jobs, grants in flight.
    fn slots(&self) -> Slots {
        Slots {
            active: self.jobs.len(),
            reserved: self.reserved.len() + self.queued + self.granting,
            max: self.options.max_jobs,
        }
    }

    /// True when a job could start now without taking a slot held for a
    /// pending server job.
    fn can_run_now(&self) -> bool {
        self.jobs.len()
            + self.granting
            + self.reserved.values().filter(|p| !p.over_capacity).count()
            < self.options.max_jobs
    }

    /// True when the queue can take one more job (counting over-capacity
    /// acceptances on their way to it).
    fn queue_has_room(&self) -> bool {
        let on_the_way = self.reserved.values().filter(|p| p.over_capacity).count();
        self.options.queue_capacity > 0 && self.queued + on_the_way < self.options.queue_capacity
    }

    /// The calculator's priority for a job (Normal if it panics).
    fn priority_of(&self, job: &Job) -> JobPriority {
        let priorities = &self.priorities;
        guard("priority calculator", &job.id, || priorities.priority(job)).unwrap_or_default()
    }

    /// The first checks every new job passes, server or local, before
    /// anything is reserved for it: no memory pressure, and a load that
    /// leaves room for its priority.
    fn admissible(&self, priority: JobPriority) -> Result<(), SpawnRefusal> {
        if matches!(self.memory, UsageState::Pressure | UsageState::Exceeded) {
            return Err(SpawnRefusal::MemoryPressure);
        }
        if !self.admission.admits(self.load.load, priority) {
            return Err(SpawnRefusal::Admission(priority));
        }
        Ok(())
    }

    /// The last checks, once the job is to be accepted: its resources fit
    /// the limits, and the rate limits allow one more job (only accepted
    /// jobs count against them). On success, the job's reservation.
    fn reserve(
        &mut self,
        room: &str,
        resources: ResourceRequest,
    ) -> Result<Reservation, SpawnRefusal> {
        let reservation = self
            .limiter
            .reserve(resources)
            .map_err(|e| SpawnRefusal::Resources(e.to_string()))?;
        if let Some(limiter) = &self.rate_limiter {
            limiter
                .check(room)
                .map_err(|e| SpawnRefusal::RateLimited(e.to_string()))?;
        }
        Ok(reservation)
    }

    /// Starts the job if a slot is free, else queues it. Answers the queue
    /// depth when queued.
    fn launch(
        &mut self,
        launch: JobLaunch,
        priority: JobPriority,
        ctx: &mut Context<Self>,
    ) -> Option<usize> {
        if self.can_run_now() {
            self.start_job(launch, ctx);
            return None;
        }
        self.queued += 1;
        let depth = self.queued;
        let Some(queue) = self.queue.clone() else {
            return Some(depth);
        };
        ctx.spawn(wrap_future(queue.send(Enqueue { launch, priority })).map(
            |result, act: &mut Self, _ctx| {
                match result {
                    Ok(Ok(_)) => {}
                    Ok(Err(launch)) => {
                        // counted room, so this means the accounting is off: fail loudly
                        act.queued = act.queued.saturating_sub(1);
                        error!(
                            job_id = launch.job.id,
                            "the queue refused a job it had room for"
                        );
                        act.fail_unstarted(launch, "the job queue is full".into());
                    }
                    Err(err) => error!(%err, "the queue is gone"),
                }
            },
        ));
        self.slots_changed();
        Some(depth)
    }

    /// A slot freed: hand it to the next queued job, if any.
    fn grant_slot(&mut self, ctx: &mut Context<Self>) {
        if self.queued == 0 || !self.can_run_now() {
            return;
        }
        let Some(queue) = self.queue.clone() else {
            return;
        };
        self.granting += 1;
        ctx.spawn(
            wrap_future(queue.send(TakeNext)).map(|result, act: &mut Self, ctx| {
                act.granting -= 1;
                if let Ok(Some(launch)) = result {
                    act.queued = act.queued.saturating_sub(1);
                    info!(job_id = launch.job.id, "starting a queued job");
                    act.start_job(launch, ctx);
                    act.grant_slot(ctx);
                } else {
                    act.slots_changed();
                }
            }),
        );
    }

    /// Checks memory against the limits; tells every running job when the
    /// state changes, and forgets rooms the rate limiter no longer needs.
    /// The reads are of procfs, which lives in memory: they cannot stall the
    /// arbiter on a disk.
    fn check_resources(&mut self) {
        let state = self.limiter.check_memory();
        if state != self.memory {
            match state {
                UsageState::Pressure | UsageState::Exceeded => {
                    warn!(?state, "memory pressure: telling jobs, admitting none")
                }
                _ => info!(?state, "memory pressure over"),
            }
            self.memory = state;
            for job in self.jobs.values() {
                job.addr.do_send(MemoryPressure(state));
            }
        }
        if let Some(limiter) = &self.rate_limiter {
            limiter.retain_recent();
        }
    }

    /// Reports a job that never ran as FAILED (to the server if it is the
    /// server's, to subscribers either way).
    fn fail_unstarted(&mut self, launch: JobLaunch, error: String) {
        self.report_job(
            UpdateJobStatus {
                job_id: launch.job.id,
                status: JobStatus::JsFailed as i32,
                error,
            },
            launch.origin,
        );
    }

    fn send(&self, messages: Vec<worker_message::Message>) {
        if let Some(connection) = &self.connection {
            connection.do_send(SendToServer(messages));
        }
    }

    /// Sends a job status now, or queues it until the next registration.
    fn report_job(&mut self, update: UpdateJobStatus, origin: JobOrigin) {
        self.publish(&update, origin);
        if origin == JobOrigin::Local {
            return; // the server does not know local jobs
        }
        if self.connected() {
            self.send(vec![worker_message::Message::UpdateJob(update)]);
        } else {
            let job_id = update.job_id.clone();
            log_eviction(self.outbox.push(update));
            debug!(
                job_id,
                queued = self.outbox.len(),
                "status queued until reconnect"
            );
        }
    }

    /// Offers a status to every subscriber; one with a full mailbox misses
    /// it, one that has gone away is dropped.
    fn publish(&mut self, update: &UpdateJobStatus, origin: JobOrigin) {
        let event = JobEvent {
            job_id: update.job_id.clone(),
            status: JobStatus::try_from(update.status).unwrap_or(JobStatus::JsFailed),
            error: update.error.clone(),
            origin,
        };
        self.subscribers
            .retain(|subscriber| match subscriber.try_send(event.clone()) {
                Ok(()) => true,
                Err(SendError::Full(_)) => {
                    warn!(
                        job_id = event.job_id,
                        "a job-event subscriber is full: event dropped"
                    );
                    true
                }
                Err(SendError::Closed(_)) => false,
            });
    }

    /// Tells the reporter that slots changed, so that it can recompute and
    /// send a flip to FULL or back at once.
    fn slots_changed(&self) {
        if let Some(reporter) = &self.reporter {
            reporter.do_send(SlotsChanged {
                slots: self.slots(),
                running_since: self.jobs.values().map(|job| job.started_at).collect(),
            });
        }
    }

    fn answer(&mut self, job_id: &str, accepted: Option<&crate::handler::Participant>) {
        let response = match accepted {
            Some(participant) => AvailabilityResponse {
                job_id: job_id.to_owned(),
                available: true,
                participant_identity: participant.identity.clone(),
                participant_name: participant.name.clone(),
                participant_metadata: participant.metadata.clone(),
                participant_attributes: participant.attributes.clone(),
                ..Default::default()
            },
            None => AvailabilityResponse {
                job_id: job_id.to_owned(),
                available: false,
                ..Default::default()
            },
        };
        self.send(vec![worker_message::Message::Availability(response)]);
    }

    fn release(&mut self, job_id: &str, ctx: &mut Context<Self>) {
        if let Some(reservation) = self.reserved.remove(job_id) {
            if let Some(handle) = reservation.expiry {
                ctx.cancel_future(handle);
            }
            self.slots_changed();
            self.grant_slot(ctx); // a queued job may take the slot it held
        }
    }

    fn on_decision(&mut self, job_id: String, decision: Decision, ctx: &mut Context<Self>) {
        let Some(pending) = self.reserved.get(&job_id) else {
            return; // released meanwhile (terminated, or the worker stopped)
        };
        let acceptance = match decision {
            Decision::Accept(acceptance) => acceptance,
            Decision::Reject { reason } => {
                info!(job_id, reason, "declining job");
                self.answer(&job_id, None);
                self.release(&job_id, ctx);
                return;
            }
        };
        let priority = acceptance.priority.unwrap_or(pending.priority);
        let room = pending.room.clone();
        let limits = match self.reserve(&room, acceptance.resources.unwrap_or_default()) {
            Ok(limits) => limits,
            Err(reason) => {
                info!(job_id, %reason, "declining job");
                self.answer(&job_id, None);
                self.release(&job_id, ctx);
                return;
            }
        };
        let participant = acceptance.participant;
        info!(job_id, identity = participant.identity, %priority, "accepting job");
        self.answer(&job_id, Some(&participant));
        let timeout = self.options.assignment_timeout;
        let id = job_id.clone();
        let expiry = ctx.run_later(timeout, move |act, ctx| {
            if act.reserved.contains_key(&id) {
                warn!(
                    job_id = id,
                    ?timeout,
                    "no assignment after accepting: releasing the slot"
                );
                act.release(&id, ctx);
            }
        });
        if let Some(pending) = self.reserved.get_mut(&job_id) {
            pending.identity = Some(participant.identity);
            pending.expiry = Some(expiry);
            pending.priority = priority;
            pending.limits = Some(limits);
        }
    }

    fn start_job(&mut self, launch: JobLaunch, ctx: &mut Context<Self>) {
        let JobLaunch {
            job,
            url,
            token,
            identity,
            origin,
            recovered,
            reservation,
        } = launch;
        let job_id = job.id.clone();
        let mut context = JobContext::new(job, url, token);
        if let Some(identity) = identity {
            context = context.with_identity(&identity);
        }
        let is_recovered = recovered.is_some();
        let checkpoint = recovered.unwrap_or_else(|| {
            let record = JobCheckpoint::new(
                context.job(),
                context.participant_identity(),
                SystemTime::now(),
            );
            match origin {
                // the server can re-dispatch its jobs: keep them where a
                // restarted worker finds them
                JobOrigin::Server => Checkpoint::new(record, self.store.clone()),
                // nobody would claim a local job after a restart
                JobOrigin::Local => Checkpoint::in_memory(record),
            }
        });
        let context = context.with_checkpoint(checkpoint, is_recovered);
        let handler = self.handler.clone();
        let worker = ctx.address();
        let rules = JobRules {
            grace: self.options.termination_grace,
            restart_policy: self.options.restart_policy.clone(),
            max_retry_delay: self.options.max_retry_delay,
            checkpoint_interval: self.options.checkpoint_interval,
            recovery: self.recovery.clone(),
        };
        let threads = self
            .threads
            .get_or_insert_with(|| JobThreads::new(self.options.job_threads));
        let addr = JobActor::start_in_arbiter(&threads.pick(), move |_| {
            JobActor::new(context, handler, worker, rules)
        });
        self.jobs.insert(
            job_id,
            RunningJob {
                addr,
                started_at: Instant::now(),
                origin,
                _reservation: reservation,
            },
        );
        self.slots_changed();
    }

    /// The running jobs the server knows, for `migrate_job`.
    fn server_job_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.origin == JobOrigin::Server)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Resumes the jobs a previous run of the worker left in the store, as
    /// the recovery handler allows; reports the others FAILED and forgets
    /// them.
    fn recover(&mut self, checkpoints: Vec<JobCheckpoint>, ctx: &mut Context<Self>) {
        let mut resumed = Vec::new();
        for record in checkpoints {
            let job_id = record.job_id().to_owned();
            if self.jobs.contains_key(&job_id) {
                continue;
            }
            match self.resume(record, ctx) {
                Ok(()) => resumed.push(job_id),
                Err(error) => {
                    let recovery = &self.recovery;
                    guard("on_recovery_failed", &job_id, || {
                        recovery.on_recovery_failed(&job_id, &error)
                    });
                    self.forget(&job_id, ctx);
                    self.report_job(
                        UpdateJobStatus {
                            job_id,
                            status: JobStatus::JsFailed as i32,
                            error: format!("not recovered after a worker restart: {error}"),
                        },
                        JobOrigin::Server,
                    );
                }
            }
        }
        if !resumed.is_empty() {
            info!(jobs = resumed.len(), "resumed jobs from their checkpoints");
            if self.connected() {
                self.send(vec![worker_message::Message::MigrateJob(
                    MigrateJobRequest { job_ids: resumed },
                )]);
            } // else: the next registration claims every running job
        }
    }

    fn resume(
        &mut self,
        record: JobCheckpoint,
        ctx: &mut Context<Self>,
    ) -> Result<(), RecoveryError> {
        let recovery = &self.recovery;
        let job_id = record.job_id().to_owned();
        let accepted = guard("on_recovery_attempt", &job_id, || {
            recovery.on_recovery_attempt(&job_id, &record)
        })
        .ok_or_else(|| RecoveryError::Resume("on_recovery_attempt panicked".into()))?;
        if !accepted {
            return Err(RecoveryError::Declined);
        }
        let job = record.job().map_err(RecoveryError::Checkpoint)?;
        let identity = record.participant_identity().to_owned();
        let token = self
            .options
            .credentials
            .room_token(record.room_name(), &identity, ROOM_TOKEN_TTL)
            .map_err(|e| RecoveryError::Resume(e.to_string()))?;
        let checkpoint = Checkpoint::new(record, self.store.clone());
        checkpoint.next_attempt();
        info!(
            job_id,
            attempt = checkpoint.attempt(),
            "resuming a job after a restart"
        );
        let url = self.options.url.clone();
        let launch = JobLaunch {
            job,
            url,
            token,
            identity: Some(identity),
            origin: JobOrigin::Server,
            recovered: Some(checkpoint),
            reservation: None,
        };
        // the JobActor calls on_recovered once it runs
        self.start_job(launch, ctx);
        Ok(())
    }

    /// After a reconnect, has every server job ask the recovery handler
    /// whether it stays (`on_recovered`) or ends (`on_recovery_failed`,
    /// reported FAILED). Each job asks about itself, with its own state.
    fn recover_after_reconnect(&self) {
        for job in self
            .jobs
            .values()
            .filter(|job| job.origin == JobOrigin::Server)
        {
            job.addr.do_send(Reconnected);
        }
    }

    /// Removes a job's checkpoint from the store.
    fn forget(&self, job_id: &str, ctx: &mut Context<Self>) {
        let id = job_id.to_owned();
        ctx.spawn(wrap_future(self.store.remove(job_id)).map(
            move |result, _act: &mut Self, _ctx| {
                if let Err(err) = result {
                    warn!(job_id = id, %err, "could not remove the checkpoint");
                }
            },
        ));
    }
}

fn log_eviction(evicted: Evicted) {
    match evicted {
        Evicted::None => {}
        Evicted::Running(job_id) => warn!(job_id, "outbox full: dropped a queued RUNNING status"),
        Evicted::Terminal(job_id) => error!(job_id, "outbox full: dropped a queued final status"),
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(
            url = self.options.url,
            agent_name = self.options.agent_name,
            max_jobs = self.options.max_jobs,
            "worker starting"
        );
        let options = self.options.clone();
        let me = ctx.address();
        let connection = Supervisor::start(move |_| ConnectionActor::new(options, me));
        let me = ctx.address();
        let (capacity, max_wait) = (self.options.queue_capacity, self.options.queue_max_wait);
        self.queue = Some(QueueActor::create(move |_| {
            QueueActor::new(capacity, max_wait, me)
        }));
        ctx.run_interval(self.options.memory_check_interval, |act, _ctx| {
            act.check_resources()
        });
        ctx.spawn(
            wrap_future(self.store.list()).map(|result, act: &mut Self, ctx| match result {
                Ok(checkpoints) if !checkpoints.is_empty() => act.recover(checkpoints, ctx),
                Ok(_) => {}
                Err(err) => error!(%err, "cannot read the checkpoint store: no job is resumed"),
            }),
        );
        let config = ReporterConfig {
            calculator: self.load_calculator.clone(),
            threshold: self.threshold,
            policy: ReportPolicy {
                epsilon: DEFAULT_LOAD_EPSILON,
                keepalive: self.options.load_report_interval,
            },
            sample_interval: self.options.load_sample_interval,
            max_jobs: self.options.max_jobs,
        };
        let worker = ctx.address();
        let reporter_connection = connection.clone();
        self.reporter = Some(LoadReporterActor::create(move |_| {
            LoadReporterActor::new(config, reporter_connection, worker)
        }));
        self.connection = Some(connection);
    }
}

impl Handler<Registered> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Registered, _ctx: &mut Self::Context) {
        self.registrations += 1;
        self.worker_id = Some(msg.worker_id);
        if let Some(info) = &msg.server_info {
            debug!(version = info.version, region = info.region, "server info");
        }
        if self.registrations > 1 {
            self.recover_after_reconnect();
        }
        let mut messages = Vec::new();
        let job_ids = self.server_job_ids();
        if !job_ids.is_empty() {
            // after a reconnect, or for jobs resumed after a restart
            info!(jobs = job_ids.len(), "claiming running jobs");
            messages.push(worker_message::Message::MigrateJob(MigrateJobRequest {
                job_ids,
            }));
        }
        let queued = self.outbox.drain();
        if !queued.is_empty() {
            info!(
                statuses = queued.len(),
                "flushing statuses queued during the outage"
            );
        }
        messages.extend(queued.into_iter().map(worker_message::Message::UpdateJob));
        if !messages.is_empty() {
            self.send(messages);
        }
        if let Some(reporter) = &self.reporter {
            reporter.do_send(ConnectionChanged { connected: true });
        }
    }
}

impl Handler<Disconnected> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Disconnected, ctx: &mut Self::Context) {
        warn!(
            reason = msg.reason,
            running = self.jobs.len(),
            "disconnected from the server; jobs keep running"
        );
        self.worker_id = None;
        if let Some(reporter) = &self.reporter {
            reporter.do_send(ConnectionChanged { connected: false });
        }
        // the server forgot its offers with the connection
        let pending: Vec<String> = self.reserved.keys().cloned().collect();
        for job_id in pending {
            self.release(&job_id, ctx);
        }
    }
}

impl Handler<Undelivered> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Undelivered, _ctx: &mut Self::Context) {
        let statuses: Vec<UpdateJobStatus> = msg
            .0
            .into_iter()
            .filter_map(|message| match message {
                worker_message::Message::UpdateJob(update) => Some(update),
                _ => None, // loads are recomputed, answers are moot after a disconnect
            })
            .collect();
        if statuses.is_empty() {
            return;
        }
        if self.connected() {
            // the connection came back before the bounce reached us
            self.send(
                statuses
                    .into_iter()
                    .map(worker_message::Message::UpdateJob)
                    .collect(),
            );
        } else {
            for evicted in self.outbox.requeue(statuses) {
                log_eviction(evicted);
            }
        }
    }
}

impl Handler<AvailabilityAsked> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: AvailabilityAsked, ctx: &mut Self::Context) {
        let job_id = msg.job.id.clone();
        if self.jobs.contains_key(&job_id) || self.reserved.contains_key(&job_id) {
            warn!(
                job_id,
                "availability asked twice for the same job: declining the repeat"
            );
            self.answer(&job_id, None);
            return;
        }
        let priority = self.priority_of(&msg.job);
        // beyond the free slots only high-priority work is taken, and only
        // as far as the queue has room
        let over_capacity = self.slots().is_full();
        if over_capacity && (priority < JobPriority::High || !self.queue_has_room()) {
            info!(job_id, %priority, load = self.load.load, "declining job: at capacity");
            self.answer(&job_id, None);
            self.slots_changed();
            return;
        }
        if let Err(reason) = self.admissible(priority) {
            info!(job_id, %reason, "declining job");
            self.answer(&job_id, None);
            return;
        }
        // reserve before deciding, so a burst of requests cannot overbook
        self.reserved.insert(
            job_id.clone(),
            Pending {
                identity: None,
                expiry: None,
                priority,
                limits: None,
                over_capacity,
                room: room_name(&msg.job).to_owned(),
            },
        );
        self.slots_changed();
        let request = JobRequest::new(msg.job, msg.resuming);
        let decide = AssertUnwindSafe(self.handler.clone().on_request(request)).catch_unwind();
        let timeout = self.options.request_timeout;
        let decide = async move { actix_rt::time::timeout(timeout, decide).await };
        ctx.spawn(wrap_future(decide).map(move |result, act: &mut Self, ctx| {
            let decision = match result {
                Ok(Ok(decision)) => decision,
                Ok(Err(panic)) => {
                    Decision::reject(format!("on_request panicked: {}", panic_message(&*panic)))
                }
                Err(_) => Decision::reject(format!("on_request took longer than {timeout:?}")),
            };
            act.on_decision(job_id, decision, ctx);
        }));
    }
}

impl Handler<JobAssigned> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobAssigned, ctx: &mut Self::Context) {
        let job_id = msg.job.id.clone();
        if self.jobs.contains_key(&job_id) {
            warn!(job_id, "ignoring a second assignment of a running job");
            return;
        }
        let (identity, priority, reservation) = match self.reserved.remove(&job_id) {
            Some(pending) => {
                if let Some(handle) = pending.expiry {
                    ctx.cancel_future(handle);
                }
                (pending.identity, pending.priority, pending.limits)
            }
            None if self.slots().is_full() => {
                warn!(
                    job_id,
                    "assigned a job that was not accepted, at capacity: failing it"
                );
                self.report_job(
                    UpdateJobStatus {
                        job_id,
                        status: JobStatus::JsFailed as i32,
                        error: "worker at capacity".into(),
                    },
                    JobOrigin::Server,
                );
                return;
            }
            None => {
                info!(
                    job_id,
                    "assigned a job that was not offered first: running it"
                );
                (None, self.priority_of(&msg.job), None)
            }
        };
        let url = msg
            .url
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| self.options.url.clone());
        info!(job_id, "job assigned");
        let launch = JobLaunch {
            job: msg.job,
            url,
            token: msg.token,
            identity,
            origin: JobOrigin::Server,
            recovered: None,
            reservation,
        };
        self.launch(launch, priority, ctx);
    }
}

impl Handler<JobStarted> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobStarted, _ctx: &mut Self::Context) {
        let Some(origin) = self.jobs.get(&msg.job_id).map(|job| job.origin) else {
            return;
        };
        self.report_job(
            UpdateJobStatus {
                job_id: msg.job_id,
                status: JobStatus::JsRunning as i32,
                error: String::new(),
            },
            origin,
        );
    }
}

impl Handler<JobExited> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobExited, ctx: &mut Self::Context) {
        let Some(job) = self.jobs.remove(&msg.job_id) else {
            return;
        };
        match &msg.outcome {
            JobOutcome::Succeeded | JobOutcome::Terminated => {
                info!(job_id = msg.job_id, outcome = ?msg.outcome, "job ended")
            }
            JobOutcome::Failed(_) | JobOutcome::Panicked(_) => {
                warn!(job_id = msg.job_id, outcome = ?msg.outcome, "job failed")
            }
        }
        if job.origin == JobOrigin::Server {
            self.forget(&msg.job_id, ctx);
        }
        self.report_job(msg.outcome.to_update(&msg.job_id), job.origin);
        drop(job); // releases its resources before the next job takes them
        self.slots_changed();
        self.grant_slot(ctx);
    }
}

impl Handler<TerminationRequested> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: TerminationRequested, ctx: &mut Self::Context) {
        if let Some(job) = self.jobs.get(&msg.job_id) {
            job.addr.do_send(TerminateJob);
        } else if self.reserved.contains_key(&msg.job_id) {
            info!(
                job_id = msg.job_id,
                "terminated before assignment: releasing the slot"
            );
            self.release(&msg.job_id, ctx);
        } else {
            debug!(job_id = msg.job_id, "termination for an unknown job");
        }
    }
}

impl Handler<GetState> for WorkerActor {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _msg: GetState, _ctx: &mut Self::Context) -> Self::Result {
        let report = self.load;
        let mut running_jobs: Vec<String> = self.jobs.keys().cloned().collect();
        running_jobs.sort();
        MessageResult(WorkerState {
            worker_id: self.worker_id.clone(),
            connected: self.connected(),
            registrations: self.registrations,
            running_jobs,
            reserved: self.reserved.len(),
            status: report.status,
            load: report.load,
            outbox: self.outbox.len(),
            queued: self.queued,
        })
    }
}

impl Handler<LoadChanged> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: LoadChanged, _ctx: &mut Self::Context) {
        self.load = msg.report;
    }
}

impl Handler<GetLoad> for WorkerActor {
    type Result = MessageResult<GetLoad>;

    fn handle(&mut self, _msg: GetLoad, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.load)
    }
}

impl Handler<SubscribeJobEvents> for WorkerActor {
    type Result = bool;

    fn handle(&mut self, msg: SubscribeJobEvents, _ctx: &mut Self::Context) -> bool {
        self.subscribers.retain(|s| s.connected());
        if self.subscribers.len() >= MAX_SUBSCRIBERS {
            warn!(
                max = MAX_SUBSCRIBERS,
                "refusing a job-event subscriber: too many"
            );
            return false;
        }
        self.subscribers.push(msg.0);
        true
    }
}

impl Handler<SpawnJob> for WorkerActor {
    type Result = MessageResult<SpawnJob>;

    fn handle(&mut self, msg: SpawnJob, ctx: &mut Self::Context) -> Self::Result {
        let refuse = |reason| MessageResult(SpawnOutcome::Refused { reason });
        if msg.room.trim().is_empty() {
            return refuse(SpawnRefusal::Invalid("the room is required".into()));
        }
        let job_id = msg.id.unwrap_or_else(local_job_id);
        if self.jobs.contains_key(&job_id) || self.reserved.contains_key(&job_id) {
            return refuse(SpawnRefusal::Duplicate(job_id));
        }
        if !self.can_run_now() && !self.queue_has_room() {
            return refuse(SpawnRefusal::AtCapacity);
        }
        let job = Job {
            id: job_id.clone(),
            r#type: msg.job_type as i32,
            room: Some(Room {
                name: msg.room,
                ..Default::default()
            }),
            metadata: msg.metadata,
            agent_name: self.options.agent_name.clone(),
            ..Default::default()
        };
        let priority = msg.priority.unwrap_or_else(|| self.priority_of(&job));
        let room = room_name(&job).to_owned();
        // no load-based admission here: a server offer can go to another
        // worker, a local job has nowhere else to go, so it queues instead
        if matches!(self.memory, UsageState::Pressure | UsageState::Exceeded) {
            return refuse(SpawnRefusal::MemoryPressure);
        }
        let reservation = match self.reserve(&room, msg.resources.unwrap_or_default()) {
            Ok(reservation) => reservation,
            Err(reason) => return refuse(reason),
        };
        let identity = msg.identity.unwrap_or_else(|| format!("agent-{job_id}"));
        let token = match self
            .options
            .credentials
            .room_token(&room, &identity, ROOM_TOKEN_TTL)
        {
            Ok(token) => token,
            Err(err) => return refuse(SpawnRefusal::Token(err.to_string())),
        };
        let launch = JobLaunch {
            job,
            url: self.options.url.clone(),
            token,
            identity: Some(identity),
            origin: JobOrigin::Local,
            recovered: None,
            reservation: Some(reservation),
        };
        MessageResult(match self.launch(launch, priority, ctx) {
            None => {
                info!(job_id, %priority, "started a local job");
                SpawnOutcome::Started { job_id }
            }
            Some(depth) => {
                info!(job_id, %priority, depth, "queued a local job");
                SpawnOutcome::Queued { job_id, depth }
            }
        })
    }
}

impl Handler<QueuedJobsExpired> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: QueuedJobsExpired, _ctx: &mut Self::Context) {
        self.queued = self.queued.saturating_sub(msg.launches.len());
        for launch in msg.launches {
            let error = format!("waited longer than {:?} in the job queue", msg.max_wait);
            warn!(job_id = launch.job.id, error, "failing a queued job");
            self.fail_unstarted(launch, error);
        }
        self.slots_changed();
    }
}

impl Handler<GetQueueStats> for WorkerActor {
    type Result = ResponseFuture<QueueStats>;

    fn handle(&mut self, msg: GetQueueStats, _ctx: &mut Self::Context) -> Self::Result {
        let queue = self.queue.clone();
        Box::pin(async move {
            match queue {
                Some(queue) => queue.send(msg).await.unwrap_or_default(),
                None => QueueStats::default(),
            }
        })
    }
}

/// A fresh id for a local job: `LJ_` and twelve letters or digits.
fn local_job_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..12)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("LJ_{suffix}")
}
