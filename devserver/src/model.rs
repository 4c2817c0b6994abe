//! The public data types: dispatch requests, job and worker snapshots,
//! frames for fault injection, and errors.

use std::time::{Duration, SystemTime};

use livekit_protocol::{JobStatus, JobType, UpdateWorkerStatus, WorkerStatus};

/// A job to dispatch, as a room dispatch would create it.
#[derive(Debug, Clone)]
pub struct DispatchRequest {
    /// The room the job is for.
    pub room: String,
    /// Which agent: workers registered with this `agent_name` (empty = default agent).
    pub agent_name: String,
    /// Job metadata handed to the worker.
    pub metadata: String,
    /// The job type; only workers registered with this type are asked.
    pub job_type: JobType,
    /// Force this worker, bypassing its status and load (no other worker is
    /// tried): lets a test see a worker's own refusal.
    pub worker_id: Option<String>,
}

impl DispatchRequest {
    /// A `JT_ROOM` job for `room`, for the default (unnamed) agent, no metadata.
    pub fn room(name: impl Into<String>) -> Self {
        Self {
            room: name.into(),
            agent_name: String::new(),
            metadata: String::new(),
            job_type: JobType::JtRoom,
            worker_id: None,
        }
    }

    /// Targets workers registered with this agent name.
    pub fn agent_name(mut self, name: impl Into<String>) -> Self {
        self.agent_name = name.into();
        self
    }

    /// Sets the job metadata.
    pub fn metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = metadata.into();
        self
    }

    /// Sets the job type.
    pub fn job_type(mut self, job_type: JobType) -> Self {
        self.job_type = job_type;
        self
    }

    /// Sends the job to this worker only, whatever its status and load.
    pub fn to_worker(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = Some(worker_id.into());
        self
    }
}

/// One `update_job` received for a job.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// The status the worker reported.
    pub status: JobStatus,
    /// The error text it sent (empty when none).
    pub error: String,
    /// The worker id of the connection it came on.
    pub worker_id: String,
    /// When the server received it.
    pub at: SystemTime,
}

/// A snapshot of a job's record.
#[derive(Debug, Clone)]
pub struct JobInfo {
    /// The job id (`AJ_…`).
    pub id: String,
    /// The dispatch that created it (`AD_…`).
    pub dispatch_id: String,
    /// The room name.
    pub room: String,
    /// The agent name it was dispatched for.
    pub agent_name: String,
    /// The job metadata.
    pub metadata: String,
    /// The job type.
    pub job_type: JobType,
    /// The worker holding the job: set at assignment, moved by an
    /// `update_job` or `migrate_job` arriving on another connection.
    pub worker_id: Option<String>,
    /// The identity the worker accepted with (empty until accepted).
    pub participant_identity: String,
    /// Current status: PENDING until assigned, RUNNING once assigned, then
    /// what the worker reports until the job ends (SUCCESS/FAILED).
    pub status: JobStatus,
    /// The last error (worker-reported, or why dispatch failed).
    pub error: String,
    /// Every `update_job` received, oldest first (bounded).
    pub updates: Vec<StatusUpdate>,
}

/// A snapshot of a worker connection (current or recently disconnected).
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The worker id given at register (`AW_…`); new on every connection.
    pub id: String,
    /// The registered agent name (empty = default agent).
    pub agent_name: String,
    /// The registered job type.
    pub job_type: JobType,
    /// The registered namespace, if any.
    pub namespace: Option<String>,
    /// The worker's reported version.
    pub version: String,
    /// The last status it reported (AVAILABLE at register).
    pub status: WorkerStatus,
    /// The last load it reported (0 at register).
    pub load: f32,
    /// The job count from its last `update_worker`.
    pub job_count: u32,
    /// Whether the socket is still open.
    pub connected: bool,
    /// How many `update_worker` messages it sent.
    pub update_count: u64,
    /// The last `update_worker` it sent.
    pub last_update: Option<UpdateWorkerStatus>,
    /// Job ids it sent in `migrate_job` (bounded).
    pub migrated_jobs: Vec<String>,
    /// Its availability answers: (job id, available), oldest first (bounded).
    pub availability_answers: Vec<(String, bool)>,
}

/// Bytes to send as one WebSocket frame, as-is (fault injection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    /// A binary frame.
    Binary(Vec<u8>),
    /// A text frame.
    Text(String),
}

/// Why a dispatch did not end in an assignment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// No connected AVAILABLE worker with spare capacity matches the agent
    /// name and job type: start a worker, or wait for one to register.
    #[error("no workers available")]
    NoWorkers,
    /// Every matching worker answered `available: false`.
    #[error("declined by every worker tried: {tried:?}")]
    Declined {
        /// The workers asked, in order.
        tried: Vec<String>,
    },
    /// The worker did not answer availability within `availability_timeout`.
    #[error("worker {worker_id} did not answer availability in time")]
    Timeout {
        /// The worker asked.
        worker_id: String,
    },
    /// The worker's socket closed (or could not be written) while it was asked.
    #[error("worker {worker_id} disconnected during dispatch")]
    WorkerClosed {
        /// The worker asked.
        worker_id: String,
    },
    /// The forced worker (`to_worker`) is not connected.
    #[error("worker {worker_id} is not connected")]
    UnknownWorker {
        /// The requested worker.
        worker_id: String,
    },
    /// The room token could not be minted (e.g. an empty room name).
    #[error("cannot mint the room token: {0}")]
    Token(String),
    /// The dev server has stopped.
    #[error("the dev server has stopped")]
    Stopped,
}

/// Errors of the [`DevServer`](crate::DevServer) control calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevServerError {
    /// No job record with this id (never existed, or evicted).
    #[error("unknown job {0}")]
    UnknownJob(String),
    /// The job has no worker, or has already ended.
    #[error("job {0} is not running on a worker")]
    JobNotRunning(String),
    /// No worker with this id is known.
    #[error("unknown worker {0}")]
    UnknownWorker(String),
    /// The worker is known but its socket is closed.
    #[error("worker {0} is disconnected")]
    WorkerDisconnected(String),
    /// The dev server has stopped.
    #[error("the dev server has stopped")]
    Stopped,
}

/// A `wait_*` condition was not met before its deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("condition not met within {waited:?}")]
pub struct WaitTimeout {
    /// How long was waited.
    pub waited: Duration,
}
