//! Every message that crosses an actor boundary, in one place.
//!
//! Grouped by direction. Messages between the runtime's own actors are
//! crate-private; the ones an application sends to a worker are public.

use actix::prelude::*;
use livekit_protocol::{Job, ServerInfo, worker_message};

use crate::jobs::FinalStatus;
pub use crate::jobs::JobOrigin;
use crate::limits::{ResourceRequest, UsageState};
use crate::load::LoadReport;
use crate::queue::{JobPriority, QueueStats};
pub use crate::state::WorkerState;

// ---------------------------------------------------------------------------
// Supervision: every child → WorkerActor

/// Which child of the WorkerActor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Child {
    /// The ConnectionActor.
    Connection,
    /// The LoadReporterActor.
    Reporter,
    /// The QueueActor.
    Queue,
    /// The JobActor of this job.
    Job(String),
}

impl std::fmt::Display for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Child::Connection => f.write_str("connection"),
            Child::Reporter => f.write_str("load reporter"),
            Child::Queue => f.write_str("queue"),
            Child::Job(id) => write!(f, "job {id}"),
        }
    }
}

/// A child stopped, for whatever reason: sent by the child's [`Link`]
/// (`actors/supervision.rs`) when the actor is dropped, so a panic in the
/// child's own code reports too. The parent decides what happens next.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ChildExited {
    /// Which child.
    pub child: Child,
    /// Which incarnation of it: an exit of one the worker has replaced
    /// since is ignored.
    pub generation: u64,
    /// The child was unwinding from a panic.
    pub panicked: bool,
    /// Why the connection ended, when it says (the other children stop
    /// only when told, or by a panic).
    pub reason: Option<ConnectionExit>,
}

/// Why a ConnectionActor ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConnectionExit {
    /// The connection could not be made, or the server did not answer the
    /// registration.
    Failed(String),
    /// The server refused the token (HTTP 401 or 403).
    Unauthorized(String),
    /// A registered connection was lost (socket error, close, silence,
    /// a malformed frame, the server going away).
    Lost(String),
    /// The worker closed it.
    Closed,
}

impl std::fmt::Display for ConnectionExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionExit::Failed(why) => write!(f, "could not connect: {why}"),
            ConnectionExit::Unauthorized(why) => write!(f, "the server refused the token: {why}"),
            ConnectionExit::Lost(why) => write!(f, "connection lost: {why}"),
            ConnectionExit::Closed => f.write_str("closed by the worker"),
        }
    }
}

// ---------------------------------------------------------------------------
// ConnectionActor → WorkerActor

/// The server accepted the registration; the connection is live.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Registered {
    /// The id the server gave this registration (`AW_…`, new on every one).
    pub worker_id: String,
    /// The server's description of itself.
    pub server_info: Option<ServerInfo>,
    /// The connection's incarnation.
    pub generation: u64,
}

/// The server has provably read these final statuses (the pong to a ping
/// written after them came back).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Confirmed {
    /// Their jobs.
    pub job_ids: Vec<String>,
}

/// The server asks whether this worker takes a job.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct AvailabilityAsked {
    /// The job on offer.
    pub job: Job,
    /// True when the job moves from another worker.
    pub resuming: bool,
}

/// The server assigned an accepted job.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct JobAssigned {
    /// The job.
    pub job: Job,
    /// Where to join the room, if not the server's own URL.
    pub url: Option<String>,
    /// The room token for the accepted participant identity.
    pub token: String,
}

/// The server ended a job (its dispatch was deleted, or the agent left).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct TerminationRequested {
    /// The job to end.
    pub job_id: String,
}

// ---------------------------------------------------------------------------
// WorkerActor → ConnectionActor

/// Put these messages on the wire, in order, if registered; otherwise they
/// are dropped: what matters (job statuses) stays in the job table until
/// the server confirms it, and is sent again after the next registration.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SendToServer(pub Vec<worker_message::Message>);

/// Close the connection for good (a close frame, then stop).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct CloseConnection;

// ---------------------------------------------------------------------------
// Hook threads → WorkerActor

/// The handler's `on_request` answered (or panicked).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Decided {
    /// The job offered.
    pub job_id: String,
    /// Which offer of it.
    pub ticket: u64,
    /// The decision, or the panic's message.
    pub decision: Result<crate::handler::Decision, String>,
    /// The hook thread it ran on, now free again.
    pub thread: usize,
}

/// A shutdown hook finished (or panicked).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct HookDone {
    /// Which hook run.
    pub seq: u64,
}

// ---------------------------------------------------------------------------
// JobActor → WorkerActor

/// The checkpoint store refused a job's write: another worker has claimed
/// the job (its fence moved on). The JobActor has stopped its copy; the
/// worker lets the job go without reporting a status — the new holder
/// reports it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct JobLost {
    /// The job.
    pub job_id: String,
    /// The actor's incarnation.
    pub generation: u64,
    /// Who holds it now.
    pub holder: String,
}

/// A job's handler has started.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct JobStarted {
    /// The job.
    pub job_id: String,
    /// The actor's incarnation.
    pub generation: u64,
}

/// A job's handler was restarted inside its actor (a panic or a retryable
/// error, under the job's restart policy).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct JobRestarted {
    /// The job.
    pub job_id: String,
    /// The actor's incarnation.
    pub generation: u64,
}

/// A job has ended; at most one per actor (an actor that dies without it
/// is reported by its link instead).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct JobExited {
    /// The job.
    pub job_id: String,
    /// How it ended.
    pub outcome: JobOutcome,
    /// The actor's incarnation.
    pub generation: u64,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// The handler returned `Ok`.
    Succeeded,
    /// The handler returned an error, with its text.
    Failed(String),
    /// The handler panicked, with the panic's message.
    Panicked(String),
    /// The server terminated the job and the handler wound down with `Ok`
    /// (or its grace period ran out); a handler that returned an error or
    /// panicked on its way out ends `Failed` or `Panicked` instead.
    Terminated,
    /// The worker stopped the job (it is shutting down), with why.
    Stopped(String),
}

impl JobOutcome {
    /// The final status that reports this outcome: SUCCESS for a job that
    /// succeeded or was terminated by the server, FAILED with the error
    /// otherwise (bounded: a handler's error can be arbitrarily long, a
    /// frame cannot).
    pub fn final_status(&self) -> FinalStatus {
        let failed = |text: String| FinalStatus::failed(crate::truncate_utf8(text, MAX_ERROR_TEXT));
        match self {
            JobOutcome::Succeeded | JobOutcome::Terminated => FinalStatus::success(),
            JobOutcome::Failed(text) | JobOutcome::Stopped(text) => failed(text.clone()),
            JobOutcome::Panicked(text) => failed(format!("handler panicked: {text}")),
        }
    }
}

/// The longest error text sent to the server; a handler's error can be
/// arbitrarily long, a frame cannot.
pub(crate) const MAX_ERROR_TEXT: usize = 16 * 1024;

// ---------------------------------------------------------------------------
// WorkerActor → JobActor

/// The worker registered again after losing its connection: ask the
/// recovery handler whether to keep this job (`on_recovered`) or end it
/// (`on_recovery_failed`, reported FAILED).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Reconnected;

/// The worker's write-behind of this job's checkpoint was refused by its
/// fence: another worker claimed the job. The copy stops at once, reporting
/// no status.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct CheckpointRefused {
    /// The job's holder now.
    pub holder: String,
    /// The holder's fence.
    pub fence: u64,
}

/// End this job: cancel it, call `on_terminated` once, give the handler its
/// grace period.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) enum TerminateJob {
    /// The server terminated it: reported as it ends (SUCCESS, unless the
    /// handler fails).
    Server,
    /// The worker is shutting down: reported FAILED with this reason.
    Shutdown(String),
}

/// The worker's memory state changed: tell the handler.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct MemoryPressure(pub UsageState);

// ---------------------------------------------------------------------------
// WorkerActor ↔ QueueActor

/// Queue this job until a slot frees (the job table has checked there is
/// room); false if the queue is full after all.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub(crate) struct Enqueue {
    /// The job.
    pub job_id: String,
    /// Its place in line.
    pub priority: JobPriority,
    /// When it was queued (kept when a restarted queue is rebuilt, so its
    /// wait counts from the first time).
    pub since: std::time::Instant,
}

/// A slot is free: the highest-priority queued job, if any.
#[derive(Message, Debug)]
#[rtype(result = "Option<String>")]
pub(crate) struct TakeNext;

/// This job no longer waits (it was terminated, or the worker stops).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Dequeue {
    /// The job.
    pub job_id: String,
}

/// Queued jobs that waited longer than the queue's maximum wait: they are
/// failed, not started.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct QueuedJobsExpired {
    /// The jobs.
    pub job_ids: Vec<String>,
    /// The maximum wait they exceeded.
    pub max_wait: std::time::Duration,
}

/// Asks a worker (which asks its queue) for the queue's depth per priority
/// and oldest wait.
#[derive(Message, Debug, Default)]
#[rtype(result = "QueueStats")]
pub struct GetQueueStats;

// ---------------------------------------------------------------------------
// WorkerActor ↔ LoadReporterActor

/// The worker's slots changed (a reservation, a start, an end): recompute at
/// once, so a flip to FULL or back goes out without waiting for a tick.
/// O(1) to build, whatever the number of jobs: when the running jobs began
/// is pulled with [`RunningSince`] at most once a tick.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SlotsChanged {
    /// The slots now.
    pub slots: crate::load::Slots,
}

/// Asks the worker when each of its running jobs began (for the load
/// calculator's `job_durations`). The reporter asks at most once per
/// sampling tick, and only after the slots changed: this walks every job.
#[derive(Message, Debug)]
#[rtype(result = "Vec<std::time::Instant>")]
pub(crate) struct RunningSince;

/// The worker registered (true) or lost its connection (false).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ConnectionChanged {
    /// Registered now.
    pub connected: bool,
}

/// The latest computed load, for admission and `GetLoad`; with `send`, the
/// reporter's policy says it is worth an `update_worker`, which the worker
/// sends if it is registered.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct LoadChanged {
    /// The report as computed.
    pub report: LoadReport,
    /// Send it to the server.
    pub send: bool,
}

/// The process's memory crossed a limit, or fell back below it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct MemoryChanged(pub UsageState);

/// The process's open file descriptors crossed their limit
/// (`max_open_files` or `RLIMIT_NOFILE`), or fell back below it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct OpenFilesChanged(pub UsageState);

// ---------------------------------------------------------------------------
// WorkerActor → any child, for tests only

/// Panic in the child's own code (not in a user hook), to prove that the
/// worker notices and restarts it.
#[cfg(feature = "fault-injection")]
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Panic;

// ---------------------------------------------------------------------------
// Application → WorkerActor

/// Asks a worker for its current load: the last computed report (status,
/// load, running jobs), whether or not it has been sent yet.
#[derive(Message, Debug, Default)]
#[rtype(result = "LoadReport")]
pub struct GetLoad;

/// A job's status changed: RUNNING when its handler starts, then SUCCESS or
/// FAILED. Sent to every subscriber ([`SubscribeJobEvents`]).
#[derive(Message, Clone, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct JobEvent {
    /// The job.
    pub job_id: String,
    /// Its new status.
    pub status: livekit_protocol::JobStatus,
    /// The error text of a FAILED job.
    pub error: String,
    /// Server or local.
    pub origin: JobOrigin,
}

/// Subscribes a recipient to every [`JobEvent`]. Events are offered with
/// `try_send`: a subscriber whose mailbox is full misses them (and the worker
/// logs it), so give a busy subscriber a large enough mailbox. Answers false
/// when the worker already has its maximum of subscribers.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct SubscribeJobEvents(pub Recipient<JobEvent>);

/// Starts a job that no server dispatched: same handler, supervision and
/// events as a dispatched one. The worker mints the room token itself.
///
/// A serde type, so that it can wait in the fleet's queue
/// (`fleet::RedisJobQueue`): the job type is written by its protocol name
/// (`"JT_ROOM"`), absent fields take their defaults.
#[derive(Message, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[rtype(result = "SpawnOutcome")]
pub struct SpawnJob {
    /// The job id; `None` makes one (`LJ_…`).
    #[serde(default)]
    pub id: Option<String>,
    /// Room, participant or publisher job.
    #[serde(default = "room_job")]
    pub job_type: livekit_protocol::JobType,
    /// The room to join (required).
    pub room: String,
    /// Metadata for the handler.
    #[serde(default)]
    pub metadata: String,
    /// The participant identity to join as; `None`: `agent-<job id>`.
    #[serde(default)]
    pub identity: Option<String>,
    /// The job's priority; `None`: the worker's priority calculator decides.
    #[serde(default)]
    pub priority: Option<JobPriority>,
    /// What the job will use; `None`: one job slot.
    #[serde(default)]
    pub resources: Option<ResourceRequest>,
}

fn room_job() -> livekit_protocol::JobType {
    livekit_protocol::JobType::JtRoom
}

impl SpawnJob {
    /// A room job for `room` with no metadata.
    pub fn new(room: impl Into<String>) -> Self {
        Self {
            id: None,
            job_type: livekit_protocol::JobType::JtRoom,
            room: room.into(),
            metadata: String::new(),
            identity: None,
            priority: None,
            resources: None,
        }
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: JobPriority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Declares what the job will use.
    pub fn resources(mut self, resources: ResourceRequest) -> Self {
        self.resources = Some(resources);
        self
    }

    /// Sets the job id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the metadata.
    pub fn metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = metadata.into();
        self
    }

    /// Sets the job type.
    pub fn job_type(mut self, job_type: livekit_protocol::JobType) -> Self {
        self.job_type = job_type;
        self
    }

    /// Sets the participant identity.
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }
}

/// The answer to [`SpawnJob`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpawnOutcome {
    /// The job is running.
    Started {
        /// Its id.
        job_id: String,
    },
    /// Every slot is busy: the job waits in the queue and starts, in
    /// priority order, when one frees.
    Queued {
        /// Its id.
        job_id: String,
        /// Jobs waiting now, this one included.
        depth: usize,
    },
    /// The job was not started; the reason says why.
    Refused {
        /// Why.
        reason: SpawnRefusal,
    },
}

/// Why a [`SpawnJob`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpawnRefusal {
    /// The request cannot run: the text says what to fix.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A job with this id is already running or reserved.
    #[error("a job with id {0} already exists")]
    Duplicate(String),
    /// Every slot is taken and the queue is full (or queueing is off): try
    /// again when a job ends.
    #[error("the worker is at capacity and its queue is full")]
    AtCapacity,
    /// The load leaves no room for a job of this priority.
    #[error("the load leaves no room for a {0} priority job")]
    Admission(JobPriority),
    /// A rate limit refused it; the text says which and when to retry.
    #[error("{0}")]
    RateLimited(String),
    /// The declared resources do not fit the worker's limits now.
    #[error("{0}")]
    Resources(String),
    /// The worker is under memory pressure and takes no new jobs.
    #[error("the worker is under memory pressure")]
    MemoryPressure,
    /// The room token could not be minted.
    #[error("cannot mint the room token: {0}")]
    Token(String),
    /// The worker is shutting down and takes no new jobs.
    #[error("the worker is shutting down")]
    ShuttingDown,
}

/// Asks a worker for a snapshot of its state.
#[derive(Message, Debug, Default)]
#[rtype(result = "WorkerState")]
pub struct GetState;

/// Stops a worker in order: new offers are declined, queued jobs are failed,
/// running jobs are terminated (their `on_terminated` hooks run, FAILED with
/// the reason that the worker shut down), their statuses are delivered (as
/// long as the connection allows, bounded by `shutdown_flush_timeout`), then
/// the socket is closed and every actor and thread of the worker stops.
/// Answers once all of it is done.
#[derive(Message, Debug, Default, Clone, Copy)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Drains a worker: it tells the server it drains (FULL, `draining: true`),
/// declines every new offer and local job, and lets its running and queued
/// jobs finish; after `timeout` it terminates what still runs (their
/// `on_terminated` hooks run; they are reported FAILED "cut by the drain
/// timeout", and with a durable checkpoint store their checkpoints stay, so
/// the next start resumes them). Then it stops as [`Shutdown`] does. Answers
/// once stopped. A [`Shutdown`] sent meanwhile cuts the drain short.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Drain {
    /// How long the jobs may take to finish.
    pub timeout: std::time::Duration,
}

impl Drain {
    /// A drain that lets jobs finish for up to `timeout`.
    pub fn with_timeout(timeout: std::time::Duration) -> Self {
        Self { timeout }
    }
}

/// How a worker ended, as its handle learns it ([`Worker::stopped`](crate::Worker::stopped)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerExit {
    /// Why it stopped: drained, shut down, cut short, or why supervision gave
    /// up.
    pub reason: String,
    /// Supervision gave up (a child crashed past its restart limit).
    pub supervision_failure: Option<String>,
    /// Jobs the stop cut (terminated, reported FAILED) rather than let finish.
    pub jobs_cut: usize,
}

impl WorkerExit {
    /// True for a stop that let every job finish and was not forced by a
    /// failure: what a drained pod exits 0 for.
    pub fn is_clean(&self) -> bool {
        self.supervision_failure.is_none() && self.jobs_cut == 0
    }
}

/// Something that happened to the worker itself (not to one job).
#[derive(Message, Clone, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum WorkerEvent {
    /// The server accepted a registration.
    Registered {
        /// The id it gave.
        worker_id: String,
    },
    /// The registered connection ended; the worker reconnects.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The server refused the worker's token (a wrong key or secret):
    /// retried on a long delay in case the credentials are being rotated.
    Unauthorized {
        /// What the server said.
        reason: String,
    },
    /// No registration for longer than the give-up budget: the server
    /// counts as unreachable (the worker keeps trying).
    Unreachable {
        /// The last reason a connection failed.
        reason: String,
    },
    /// A child actor stopped unexpectedly and was restarted.
    ChildRestarted {
        /// Which (`connection`, `load reporter`, `queue`, `job <id>`).
        child: String,
        /// It panicked.
        panicked: bool,
    },
    /// A child crashed past its restart limit: the worker shuts down.
    SupervisionGaveUp {
        /// Which child, and how often it crashed.
        reason: String,
    },
    /// The worker began to shut down.
    ShuttingDown,
}

/// Subscribes a recipient to every [`WorkerEvent`], offered with `try_send`
/// like job events. Answers false when the worker has its maximum of
/// subscribers.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct SubscribeWorkerEvents(pub Recipient<WorkerEvent>);

/// Test-only fault injection (cargo feature `fault-injection`): makes the
/// named actor panic in its own code.
#[cfg(feature = "fault-injection")]
#[derive(Message, Clone, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum InjectFault {
    /// The WorkerActor itself.
    Worker,
    /// The ConnectionActor.
    Connection,
    /// The LoadReporterActor.
    Reporter,
    /// The QueueActor.
    Queue,
    /// The JobActor of this job.
    Job(String),
}

// ---------------------------------------------------------------------------
// An application → WorkerPool (`pool.rs`); the pool also takes `Shutdown`
// and `Drain`, for all its workers.

/// Adds a worker to a running pool. Answers once it has started (it then
/// connects and registers on its own); a name already in the pool is
/// refused.
#[derive(Message)]
#[rtype(result = "Result<(), super::pool::PoolError>")]
pub struct AddWorker(pub super::pool::PoolMember);

/// Removes a worker from a pool: it drains — takes no new job, lets its
/// jobs finish for up to `timeout`, then cuts what still runs — and leaves
/// the pool. Answers once it has stopped.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), super::pool::PoolError>")]
pub struct RemoveWorker {
    /// The worker's name in the pool.
    pub name: String,
    /// How long its jobs may take to finish.
    pub timeout: std::time::Duration,
}

/// Asks a pool for its workers' states (each asked with `GetState`) and its
/// budget.
#[derive(Message, Debug, Default)]
#[rtype(result = "crate::state::PoolState")]
pub struct GetPoolState;

/// Asks a pool for the handle of its worker of this name (the current
/// incarnation; `None` while it restarts, or if there is none), to send it
/// messages of its own (`SpawnJob`, …).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Option<crate::Worker>")]
pub struct GetPoolWorker(pub String);
