//! Every message that crosses an actor boundary, in one place.
//!
//! Grouped by direction. Messages between the runtime's own actors are
//! crate-private; the ones an application sends to a worker are public.

use actix::prelude::*;
use livekit_protocol::{Job, ServerInfo, UpdateJobStatus, WorkerStatus, worker_message};

use crate::limits::{Reservation, ResourceRequest, UsageState};
use crate::load::LoadReport;
use crate::queue::{JobPriority, QueueStats};

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
}

/// A registered connection was lost. Jobs go on; statuses queue until the
/// next [`Registered`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Disconnected {
    /// Why, for the log.
    pub reason: String,
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

/// Messages the connection could not put on the wire (it was down). Job
/// statuses among them go back to the outbox.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Undelivered(pub Vec<worker_message::Message>);

// ---------------------------------------------------------------------------
// WorkerActor → ConnectionActor

/// Put these messages on the wire, in order, if registered; otherwise they
/// come back as [`Undelivered`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SendToServer(pub Vec<worker_message::Message>);

// ---------------------------------------------------------------------------
// JobActor → WorkerActor

/// A job's handler has started.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct JobStarted {
    /// The job.
    pub job_id: String,
}

/// A job has ended; exactly one per job.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct JobExited {
    /// The job.
    pub job_id: String,
    /// How it ended.
    pub outcome: JobOutcome,
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
    /// The server terminated the job and the handler wound down (or its grace
    /// period ran out).
    Terminated,
}

impl JobOutcome {
    /// The `update_job` that reports this outcome.
    pub fn to_update(&self, job_id: &str) -> UpdateJobStatus {
        use livekit_protocol::JobStatus;
        let (status, error) = match self {
            JobOutcome::Succeeded | JobOutcome::Terminated => (JobStatus::JsSuccess, String::new()),
            JobOutcome::Failed(text) => (JobStatus::JsFailed, text.clone()),
            JobOutcome::Panicked(text) => {
                (JobStatus::JsFailed, format!("handler panicked: {text}"))
            }
        };
        UpdateJobStatus {
            job_id: job_id.to_owned(),
            status: status as i32,
            error: crate::truncate_utf8(error, MAX_ERROR_TEXT),
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

/// The server terminated this job: cancel it, call `on_terminated` once.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct TerminateJob;

// ---------------------------------------------------------------------------
// WorkerActor ↔ QueueActor

/// Everything needed to start a job.
pub(crate) struct JobLaunch {
    /// The job.
    pub job: Job,
    /// Where to join the room.
    pub url: String,
    /// The room token.
    pub token: String,
    /// The identity it was accepted under, if known.
    pub identity: Option<String>,
    /// Server or local.
    pub origin: JobOrigin,
    /// The checkpoint of a job resumed after a restart.
    pub recovered: Option<crate::recovery::Checkpoint>,
    /// Its share of the resource limits, released when the job ends.
    pub reservation: Option<Reservation>,
}

/// Queue this job until a slot frees; answers the queue depth, or the job
/// back when the queue is full.
#[derive(Message)]
#[rtype(result = "Result<usize, JobLaunch>")]
pub(crate) struct Enqueue {
    /// The job.
    pub launch: JobLaunch,
    /// Its place in line.
    pub priority: JobPriority,
}

/// A slot is free: the highest-priority queued job, if any.
#[derive(Message)]
#[rtype(result = "Option<JobLaunch>")]
pub(crate) struct TakeNext;

/// Queued jobs that waited longer than the queue's maximum wait: they are
/// failed, not started.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct QueuedJobsExpired {
    /// The jobs.
    pub launches: Vec<JobLaunch>,
    /// The maximum wait they exceeded.
    pub max_wait: std::time::Duration,
}

/// Asks a worker (which asks its queue) for the queue's depth per priority
/// and oldest wait.
#[derive(Message, Debug, Default)]
#[rtype(result = "QueueStats")]
pub struct GetQueueStats;

// ---------------------------------------------------------------------------
// WorkerActor → JobActor (resources)

/// The worker's memory state changed: tell the handler.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct MemoryPressure(pub UsageState);

// ---------------------------------------------------------------------------
// WorkerActor ↔ LoadReporterActor

/// The worker's slots changed (a reservation, a start, an end): recompute at
/// once, so a flip to FULL or back goes out without waiting for a tick.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SlotsChanged {
    /// The slots now.
    pub slots: crate::load::Slots,
    /// When each running job started.
    pub running_since: Vec<std::time::Instant>,
}

/// The worker registered (true) or lost its connection (false).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ConnectionChanged {
    /// Registered now.
    pub connected: bool,
}

/// The latest computed load, for admission and `GetLoad`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct LoadChanged {
    /// The report as computed (sent or not).
    pub report: LoadReport,
}

// ---------------------------------------------------------------------------
// Application → WorkerActor

/// Asks a worker for its current load: the last computed report (status,
/// load, running jobs), whether or not it has been sent yet.
#[derive(Message, Debug, Default)]
#[rtype(result = "LoadReport")]
pub struct GetLoad;

/// Where a job came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOrigin {
    /// Dispatched by the server: its statuses go to the server.
    Server,
    /// Started by the application with [`SpawnJob`]: the server does not
    /// know it, so its statuses go only to subscribers.
    Local,
}

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
#[derive(Message, Clone, Debug)]
#[rtype(result = "SpawnOutcome")]
pub struct SpawnJob {
    /// The job id; `None` makes one (`LJ_…`).
    pub id: Option<String>,
    /// Room, participant or publisher job.
    pub job_type: livekit_protocol::JobType,
    /// The room to join (required).
    pub room: String,
    /// Metadata for the handler.
    pub metadata: String,
    /// The participant identity to join as; `None`: `agent-<job id>`.
    pub identity: Option<String>,
    /// The job's priority; `None`: the worker's priority calculator decides.
    pub priority: Option<JobPriority>,
    /// What the job will use; `None`: one job slot.
    pub resources: Option<ResourceRequest>,
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
}

/// Asks a worker for a snapshot of its state.
#[derive(Message, Debug, Default)]
#[rtype(result = "WorkerState")]
pub struct GetState;

/// A snapshot of a worker, as answered to [`GetState`].
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerState {
    /// The id of the current registration, if registered now.
    pub worker_id: Option<String>,
    /// True while registered with the server.
    pub connected: bool,
    /// How many times the worker has registered (1 + reconnects).
    pub registrations: u64,
    /// The ids of the jobs running now.
    pub running_jobs: Vec<String>,
    /// Slots reserved for accepted jobs that have not been assigned yet.
    pub reserved: usize,
    /// The status last reported.
    pub status: WorkerStatus,
    /// The load last reported.
    pub load: f32,
    /// Job statuses waiting for a connection.
    pub outbox: usize,
    /// Accepted jobs waiting in the queue for a slot.
    pub queued: usize,
}
