//! WorkerActor: the supervisor, and the only owner of worker state.
//!
//! It decides — availability answers, job start and end, what to report — and
//! routes: frames arrive from the ConnectionActor as typed messages, jobs run
//! in JobActors, and everything for the server goes back through the
//! connection. While the connection is down, job statuses wait in an
//! [`Outbox`] and go out, in order, after the next registration, preceded by
//! `migrate_job` for the jobs that kept running.

mod availability;
mod builder;
mod lifecycle;
mod local;
mod recovery;
mod reporting;
mod threads;

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

pub use builder::{StartError, Worker, WorkerBuilder};
use threads::JobThreads;

struct RunningJob {
    addr: Addr<JobActor>,
    started_at: Instant,
    origin: JobOrigin,
    /// The job's share of the resource limits, released when it ends.
    _reservation: Option<Reservation>,
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
