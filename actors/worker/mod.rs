//! WorkerActor: the supervisor, and the only owner of worker state.
//!
//! It decides — availability answers, job start and end, what to report —
//! and routes: frames arrive from the ConnectionActor as typed messages, jobs
//! run in JobActors, and everything for the server goes back through the
//! connection. Every job it knows is a row of its [`JobTable`]; slots,
//! reservations, the queue's room and what a new registration owes the
//! server are all read off that table.
//!
//! It supervises every child (see `actors/mod.rs` for the tree): each holds a
//! [`Link`](super::supervision::Link) that reports its exit, and the worker
//! restarts it under a restart limit, rebuilding its state from the table, or
//! shuts down in order past the limit.
//!
//! The files of this folder, by concern:
//! - `builder`: [`Worker`] and [`WorkerBuilder`];
//! - `threads`: the arbiters the children run on;
//! - `availability`: offers, the handler's decisions, reservations;
//! - `lifecycle`: assignment, start, the queue's grants, end, termination;
//! - `recovery`: jobs resumed at start-up, after a reconnect, after their
//!   actor crashed;
//! - `local`: `SpawnJob`;
//! - `reporting`: statuses, registration, load, state snapshots, events;
//! - `supervision`: child exits and restarts, reconnects;
//! - `shutdown`: drain and shutdown, with the application's hooks.

mod availability;
mod builder;
mod fleet;
mod lifecycle;
mod local;
mod recovery;
mod reporting;
mod scaling;
mod shutdown;
mod supervision;
mod threads;

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tracing::{info, warn};

use super::connection::ConnectionActor;
use super::job::{JobActor, guard};
use super::load_reporter::LoadReporterActor;
use super::messages::*;
use super::queue::QueueActor;
use super::supervision::ChildSlot;
use crate::handler::DynHandler;
use crate::jobs::JobTable;
use crate::limits::{ResourceLimiter, UsageState};
use crate::load::{LoadCalculator, LoadReport, Slots};
use crate::options::WorkerOptions;
use crate::queue::{AdmissionPolicy, JobPriority, JobRateLimiter, PriorityCalculator};
use crate::reconnect::Reconnect;
use crate::recovery::{CheckpointStore, RecoveryHandler, RestartPolicy};

pub use builder::{StartError, Worker, WorkerBuilder};
use threads::Threads;

/// The most job-event (and worker-event) subscribers a worker keeps: each
/// event is offered to every one of them on the worker's thread.
pub const MAX_SUBSCRIBERS: usize = 64;

/// The worker's data on one job: its actor, that actor's crash limit, and
/// the job's tracing span.
#[derive(Default)]
pub(crate) struct JobLink {
    /// The job's span (under the worker's): its handler runs in it, and
    /// every change of the job's state is an event in it.
    span: Option<tracing::Span>,
    /// The live actor, if one runs.
    addr: Option<Addr<JobActor>>,
    /// The live (or last) actor's incarnation.
    generation: u64,
    /// Limits restarts of the job's actor after it crashed (created at the
    /// first crash).
    crashes: Option<RestartPolicy>,
}

/// Where the worker is in its life.
enum Phase {
    /// Taking jobs.
    Serving,
    /// Draining or shutting down: see `shutdown.rs`.
    Stopping(shutdown::Stopping),
}

/// The worker: see the module docs. Start it with [`Worker::builder`].
pub struct WorkerActor {
    options: Arc<WorkerOptions>,
    handler: Arc<dyn DynHandler>,
    /// Every job the worker knows: the one owner of job state.
    table: JobTable<JobLink>,
    threads: Threads,
    connection: ChildSlot<ConnectionActor>,
    reporter: ChildSlot<LoadReporterActor>,
    queue: ChildSlot<QueueActor>,
    /// Numbers every child incarnation, so stale exits are recognised.
    next_generation: u64,
    reconnect: Reconnect,
    worker_id: Option<String>,
    registrations: u64,
    /// Why the last connection attempt failed, while not registered.
    connection_error: Option<String>,
    priorities: Arc<dyn PriorityCalculator>,
    admission: AdmissionPolicy,
    limiter: ResourceLimiter,
    rate_limiter: Option<JobRateLimiter>,
    memory: UsageState,
    /// The open-file state last reported: at pressure no job is admitted.
    open_files: UsageState,
    load_calculator: Arc<dyn LoadCalculator>,
    /// The load at which the worker reports FULL (options, else the
    /// calculator's default), decided once at start.
    threshold: f32,
    /// The latest report computed by the reporter.
    load: LoadReport,
    /// The sequence number of the last `update_worker` sent; it survives
    /// reconnects and reporter restarts.
    load_seq: u64,
    /// The status the server was last told on this connection.
    reported_status: Option<livekit_protocol::WorkerStatus>,
    /// Who hears about job statuses (bounded by [`MAX_SUBSCRIBERS`]).
    subscribers: Vec<Recipient<JobEvent>>,
    /// Who hears about the worker itself (bounded by [`MAX_SUBSCRIBERS`]).
    watchers: Vec<Recipient<WorkerEvent>>,
    /// Where server jobs' checkpoints are kept.
    store: Arc<dyn CheckpointStore>,
    /// Decides which interrupted jobs are resumed.
    recovery: Arc<dyn RecoveryHandler>,
    phase: Phase,
    /// Why supervision gave up, if it did.
    supervision_failure: Option<String>,
    /// Records this worker's metrics, under its labels.
    metrics: crate::telemetry::WorkerMetrics,
    /// The worker's span: every job's span is a child of it.
    span: tracing::Span,
    /// The application's steps in a shutdown, by phase.
    shutdown_hooks: crate::shutdown::ShutdownHooks,
    /// How the worker ended, for its handles (set as it stops; dropped with
    /// the actor, which tells them it is gone).
    exit: tokio::sync::watch::Sender<Option<WorkerExit>>,
    /// The offers' timeouts, behind one timer (see `availability.rs`).
    timeouts: crate::deadlines::Deadlines<availability::OfferTimeout>,
    /// The one timer, armed for the earliest of `timeouts`.
    timeout_timer: Option<SpawnHandle>,
    /// A heartbeat to the checkpoint store is in flight (one at a time).
    heartbeat_pending: bool,
    /// A write-behind batch is in flight: the next waits for its answer.
    write_behind_pending: bool,
    /// The fleet's queue, if the worker pulls from one (`fleet.rs`).
    fleet: Option<Arc<dyn crate::fleet::FleetQueue>>,
    /// A pull from the fleet's queue is in flight (one at a time).
    fleet_pull_pending: bool,
    /// How the checkpoint store has answered lately.
    store_health: crate::recovery::health::StoreHealth,
    /// A scan for orphaned jobs is in flight (one at a time).
    orphan_scan_pending: bool,
    /// The fleet's view and the scaling decision, if given one
    /// (`scaling.rs`).
    scaling: Option<scaling::FleetScaling>,
    /// The connections its jobs share (`JobContext::connections`).
    connections: crate::connections::ConnectionPool,
}

/// What a worker is made of, as the builder hands it over.
struct WorkerParts {
    exit: tokio::sync::watch::Sender<Option<WorkerExit>>,
    shutdown_hooks: crate::shutdown::ShutdownHooks,
    options: Arc<WorkerOptions>,
    handler: Arc<dyn DynHandler>,
    load_calculator: Arc<dyn LoadCalculator>,
    store: Arc<dyn CheckpointStore>,
    fleet: Option<Arc<dyn crate::fleet::FleetQueue>>,
    scaling: Option<scaling::FleetScaling>,
    recovery: Arc<dyn RecoveryHandler>,
    priorities: Arc<dyn PriorityCalculator>,
    admission: AdmissionPolicy,
    limiter: ResourceLimiter,
    rate_limiter: Option<JobRateLimiter>,
    threshold: f32,
    connections: crate::connections::ConnectionPool,
}

impl WorkerActor {
    fn new(parts: WorkerParts) -> Self {
        let WorkerParts {
            exit,
            shutdown_hooks,
            options,
            handler,
            load_calculator,
            store,
            fleet,
            scaling,
            recovery,
            priorities,
            admission,
            limiter,
            rate_limiter,
            threshold,
            connections,
        } = parts;
        let table = JobTable::new(options.max_jobs, options.queue_capacity);
        let load = LoadReport::new(table.slots(), 0.0, 1.0);
        let child_policy = options.child_restart_policy.clone();
        let metrics = crate::telemetry::WorkerMetrics::labelled(
            &options.agent_name,
            &options.instance_id,
            &options.labels,
        );
        let span = tracing::info_span!(
            "worker",
            agent_name = options.agent_name.as_str(),
            instance = options.instance_id.as_str(),
            worker_id = tracing::field::Empty,
        );
        Self {
            exit,
            shutdown_hooks,
            metrics,
            span,
            threads: Threads::new(options.job_threads, options.hook_threads),
            reconnect: Reconnect::new(options.reconnect, Instant::now()),
            options,
            handler,
            table,
            connection: ChildSlot::new(child_policy.clone()),
            reporter: ChildSlot::new(child_policy.clone()),
            queue: ChildSlot::new(child_policy),
            next_generation: 0,
            timeouts: Default::default(),
            timeout_timer: None,
            heartbeat_pending: false,
            write_behind_pending: false,
            orphan_scan_pending: false,
            worker_id: None,
            registrations: 0,
            connection_error: None,
            priorities,
            admission,
            limiter,
            rate_limiter,
            memory: UsageState::Ok,
            open_files: UsageState::Ok,
            load_calculator,
            threshold,
            load,
            load_seq: 0,
            reported_status: None,
            subscribers: Vec::new(),
            watchers: Vec::new(),
            store,
            fleet,
            scaling,
            fleet_pull_pending: false,
            store_health: Default::default(),
            recovery,
            phase: Phase::Serving,
            supervision_failure: None,
            connections,
        }
    }

    fn connected(&self) -> bool {
        self.worker_id.is_some()
    }

    fn shutting_down(&self) -> bool {
        matches!(self.phase, Phase::Stopping(_))
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// The calculator's priority for a job (Normal if it panics).
    fn priority_of(&self, job: &livekit_protocol::Job) -> JobPriority {
        let priorities = &self.priorities;
        guard("priority calculator", &job.id, || priorities.priority(job)).unwrap_or_default()
    }

    /// Puts messages on the wire (if registered: the connection drops what it
    /// cannot send, and the table keeps what must not be lost).
    fn send(&self, messages: Vec<livekit_protocol::worker_message::Message>) {
        if messages.is_empty() {
            return;
        }
        if let Some(connection) = &self.connection.addr {
            connection.do_send(SendToServer(messages));
        }
    }

    /// Tells the reporter that slots changed, so that it can recompute and
    /// send a flip to FULL or back at once. A flip to FULL because every slot
    /// is taken goes out from here, before anything else the worker sends
    /// next — above all before an `available: true` for the offer that took
    /// the last slot — so the server can never see a full worker as
    /// available.
    fn slots_changed(&mut self) {
        let slots = self.slots();
        self.metrics
            .jobs(&self.table.counts(), self.table.queued_by_priority());
        if slots.is_full()
            && self.connected()
            && self.reported_status != Some(livekit_protocol::WorkerStatus::WsFull)
        {
            let full = LoadReport::new(
                slots,
                self.load.load.max(slots_load(&slots)),
                self.threshold,
            );
            self.report_load(full);
        }
        if let Some(reporter) = &self.reporter.addr {
            reporter.do_send(SlotsChanged {
                slots: self.slots(),
            });
        }
    }

    fn slots(&self) -> Slots {
        self.table.slots()
    }

    /// Sends `update_worker` for `report`, with the next sequence number. A
    /// worker shutting down says FULL and draining, whatever its load.
    fn report_load(&mut self, mut report: LoadReport) {
        if self.shutting_down() {
            report.status = livekit_protocol::WorkerStatus::WsFull;
        }
        self.metrics.load(
            report.load,
            report.status == livekit_protocol::WorkerStatus::WsFull,
        );
        self.load_seq += 1;
        self.reported_status = Some(report.status);
        self.send(vec![
            livekit_protocol::worker_message::Message::UpdateWorker(
                livekit_protocol::UpdateWorkerStatus {
                    status: Some(report.status as i32),
                    load: report.load,
                    job_count: report.job_count,
                    draining: self.shutting_down(),
                    seq: self.load_seq,
                },
            ),
        ]);
    }
}

impl WorkerActor {
    /// The span of `job_id`, made (as a child of the worker's) the first time
    /// it is asked for.
    fn job_span(&mut self, job_id: &str) -> Option<tracing::Span> {
        let worker = self.span.clone();
        let row = self.table.get_mut(job_id)?;
        let room = row.room().to_owned();
        let origin = format!("{:?}", row.origin()).to_lowercase();
        let span = row.attachment.span.get_or_insert_with(|| {
            tracing::info_span!(
                parent: &worker,
                "job",
                job_id,
                room,
                origin,
                attempt = tracing::field::Empty,
            )
        });
        Some(span.clone())
    }

    /// An event in the job's span: its state changed.
    fn job_event(&mut self, job_id: &str, state: &'static str) {
        if let Some(span) = self.job_span(job_id) {
            tracing::info!(parent: &span, job_id, state, "job state changed");
        }
    }
}

/// The share of the slots in use, the least load a full worker reports.
fn slots_load(slots: &Slots) -> f32 {
    if slots.max == 0 {
        return 0.0;
    }
    ((slots.active + slots.reserved) as f32 / slots.max as f32).min(1.0)
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(
            parent: &self.span,
            url = self.options.url,
            agent_name = self.options.agent_name,
            instance = self.options.instance_id,
            max_jobs = self.options.max_jobs,
            "worker starting"
        );
        self.metrics.connected(false);
        self.metrics.draining(false);
        self.start_connection(ctx);
        self.start_queue(ctx);
        self.start_reporter(ctx);
        ctx.run_interval(self.options.memory_check_interval, |act, _ctx| {
            if let Some(limiter) = &act.rate_limiter {
                limiter.retain_recent();
            }
            // histograms buffer samples until the recorder's upkeep
            if let Some(prometheus) = crate::telemetry::installed() {
                prometheus.run_upkeep();
            }
        });
        self.heartbeat(ctx);
        ctx.run_interval(self.options.liveness_ttl / 3, |act, ctx| act.heartbeat(ctx));
        ctx.run_interval(self.options.checkpoint_interval, |act, ctx| {
            act.write_behind(ctx)
        });
        self.recover_at_start(ctx);
        // takeover: the orphans of workers that died since, as often as a
        // heartbeat can lapse
        ctx.run_interval(self.options.liveness_ttl, |act, ctx| {
            act.take_over_orphans(ctx);
            act.redeliver_fleet_items(ctx);
        });
        if self.fleet.is_some() {
            ctx.run_interval(self.options.fleet_pull_interval, |act, ctx| {
                act.pull_from_fleet(ctx)
            });
        }
        if self.scaling.is_some() {
            ctx.run_interval(self.options.fleet_view_interval, |act, ctx| {
                act.fleet_view_round(ctx)
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // kept trivial: dropping the threads (with the actor) stops every
        // child still running on them
        warn_if_jobs_left(&self.table);
        self.metrics.stopped();
        self.retire_from_fleet_view();
        // whatever it still holds (checkpoints a drain kept) is an orphan
        // for the fleet at once, not when the heartbeat lapses; the store
        // takes the call now, the reply is not waited for
        let retire = self.store.retire(&self.options.instance_id);
        actix_rt::spawn(async move {
            if let Err(err) = retire.await {
                warn!(%err, "could not withdraw the worker's heartbeat");
            }
        });
    }
}

/// Logs jobs a stopping worker leaves behind (only a worker that died, not
/// one that shut down in order, has any).
fn warn_if_jobs_left(table: &JobTable<JobLink>) {
    let counts = table.counts();
    if counts.starting + counts.running + counts.queued > 0 {
        warn!(?counts, "the worker stopped with jobs in its table");
    }
}
