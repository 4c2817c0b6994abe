//! The public data types: dispatch requests, job and worker snapshots,
//! frames for fault injection, and errors.

use std::time::{Duration, SystemTime};

use livekit_protocol::{
    JobRestartPolicy, JobStatus, JobType, ParticipantInfo, UpdateWorkerStatus, WorkerStatus,
};

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
    /// Only workers registered with this namespace; `None` = any namespace.
    pub namespace: Option<String>,
    /// For participant and publisher jobs: the participant.
    pub participant: Option<ParticipantInfo>,
    /// `JRP_NEVER` by default here (one job, as the open-source server);
    /// `JRP_ON_FAILURE` launches the job again when it fails after assignment
    /// or its worker disconnects without claiming it back.
    pub restart_policy: JobRestartPolicy,
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
            namespace: None,
            participant: None,
            restart_policy: JobRestartPolicy::JrpNever,
        }
    }

    /// Only workers registered with this namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The participant of a participant or publisher job.
    pub fn participant(mut self, participant: ParticipantInfo) -> Self {
        self.participant = Some(participant);
        self
    }

    /// Sets the restart policy (see the field).
    pub fn restart_policy(mut self, policy: JobRestartPolicy) -> Self {
        self.restart_policy = policy;
        self
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
    /// The namespace it was launched for (empty = default).
    pub namespace: String,
    /// The participant identity of a participant or publisher job.
    pub participant: Option<String>,
    /// 1 for the first launch; restarts of the same target count up.
    pub attempt: u32,
    /// The job this one restarts, if it is a restart.
    pub restart_of: Option<String>,
    /// When the server created the job (PENDING from then on).
    pub created_at: SystemTime,
    /// When the assignment was sent.
    pub assigned_at: Option<SystemTime>,
    /// The worker the assignment was sent to (`worker_id` moves to a worker
    /// that claims the job later; this does not).
    pub assigned_to: Option<String>,
    /// When the job reached SUCCESS or FAILED.
    pub ended_at: Option<SystemTime>,
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
    /// The registered deployment (empty = the default one).
    pub deployment: String,
    /// The worker's reported version.
    pub version: String,
    /// The agent protocol version it connected with (the `protocol` query
    /// parameter; 1 when absent).
    pub protocol: i32,
    /// The last status it reported (AVAILABLE at register).
    pub status: WorkerStatus,
    /// The last load it reported (0 at register).
    pub load: f32,
    /// The job count from its last `update_worker`.
    pub job_count: u32,
    /// Whether the socket is still open.
    pub connected: bool,
    /// When it registered.
    pub registered_at: SystemTime,
    /// Protocol pings it sent after registering (each answered with a pong
    /// unless `answer_pings` is off).
    pub pings: u64,
    /// How many `update_worker` messages it sent.
    pub update_count: u64,
    /// The last `update_worker` it sent.
    pub last_update: Option<UpdateWorkerStatus>,
    /// Job ids it sent in `migrate_job` (bounded).
    pub migrated_jobs: Vec<String>,
    /// Its availability answers: (job id, available), oldest first (bounded).
    pub availability_answers: Vec<(String, bool)>,
}

/// How many of each capped thing the server holds now (see the `max_*`
/// fields of [`DevServerConfig`](crate::DevServerConfig)), counted from its
/// state when asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Registered workers whose socket is open.
    pub workers: usize,
    /// Rooms.
    pub rooms: usize,
    /// Simulated participants, all rooms together.
    pub participants: usize,
    /// Dispatch records (deleted dispatches are forgotten).
    pub dispatches: usize,
    /// Job records, finished ones included.
    pub jobs: usize,
    /// Job records that may not be evicted: jobs neither ended nor
    /// abandoned (their worker left and nobody claimed them in time).
    pub live_jobs: usize,
}

/// Bytes to send as one WebSocket frame, as-is (fault injection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    /// A binary frame.
    Binary(Vec<u8>),
    /// A text frame.
    Text(String),
    /// One binary message split into these fragments (a first frame, then
    /// continuation frames), with a WebSocket Ping between every two: a
    /// worker must reassemble it and answer the pings meanwhile.
    Fragmented(Vec<Vec<u8>>),
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
    /// The job's dispatch or room was deleted before it was placed.
    #[error("the dispatch or its room was deleted")]
    Cancelled,
    /// Every job record is held by a live job (`max_jobs`): wait for jobs to
    /// end, or raise the cap.
    #[error("too many live jobs: the dev server holds at most {max_jobs} (--max-jobs)")]
    TooManyJobs {
        /// The cap on job records.
        max_jobs: usize,
    },
    /// The dev server has stopped.
    #[error("the dev server has stopped")]
    Stopped,
}

/// A Twirp error: what the APIs answer when a call cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {msg}")]
pub struct ApiError {
    /// The Twirp code (`not_found`, `invalid_argument`, `unauthenticated`, …).
    pub code: &'static str,
    /// A message for a person.
    pub msg: String,
}

impl ApiError {
    /// `not_found` (HTTP 404).
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self {
            code: "not_found",
            msg: msg.into(),
        }
    }

    /// `invalid_argument` (HTTP 400).
    pub fn invalid_argument(msg: impl Into<String>) -> Self {
        Self {
            code: "invalid_argument",
            msg: msg.into(),
        }
    }

    /// `malformed` (HTTP 400): the body does not decode.
    pub fn malformed(msg: impl Into<String>) -> Self {
        Self {
            code: "malformed",
            msg: msg.into(),
        }
    }

    /// `bad_route` (HTTP 404): no such path, method or content type.
    pub fn bad_route(msg: impl Into<String>) -> Self {
        Self {
            code: "bad_route",
            msg: msg.into(),
        }
    }

    /// `already_exists` (HTTP 409).
    pub fn already_exists(msg: impl Into<String>) -> Self {
        Self {
            code: "already_exists",
            msg: msg.into(),
        }
    }

    /// `failed_precondition` (HTTP 412): the call does not fit the state of
    /// what it names (a job that is not running, a worker not connected).
    pub fn failed_precondition(msg: impl Into<String>) -> Self {
        Self {
            code: "failed_precondition",
            msg: msg.into(),
        }
    }

    /// `unauthenticated` (HTTP 401): what the server answers for a missing or
    /// bad token and for a token without the needed grant.
    pub fn unauthenticated(msg: impl Into<String>) -> Self {
        Self {
            code: "unauthenticated",
            msg: msg.into(),
        }
    }

    /// `resource_exhausted` (HTTP 429): one of the dev server's caps is
    /// reached; the message names it.
    pub fn resource_exhausted(msg: impl Into<String>) -> Self {
        Self {
            code: "resource_exhausted",
            msg: msg.into(),
        }
    }

    /// `internal` (HTTP 500): the dev server is stopping.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self {
            code: "internal",
            msg: msg.into(),
        }
    }

    /// The HTTP status Twirp maps the code to.
    pub fn http_status(&self) -> u16 {
        match self.code {
            "invalid_argument" | "malformed" | "out_of_range" => 400,
            "unauthenticated" => 401,
            "permission_denied" => 403,
            "not_found" | "bad_route" => 404,
            "already_exists" | "aborted" => 409,
            "failed_precondition" => 412,
            "resource_exhausted" => 429,
            "unimplemented" => 501,
            "unavailable" => 503,
            _ => 500,
        }
    }
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

/// A control call's error as the APIs answer it (the dashboard's terminate
/// and drop): an unknown id is `not_found`, a job or worker in no state for
/// it `failed_precondition`.
impl From<DevServerError> for ApiError {
    fn from(e: DevServerError) -> Self {
        match e {
            DevServerError::UnknownJob(_) | DevServerError::UnknownWorker(_) => {
                ApiError::not_found(e.to_string())
            }
            DevServerError::JobNotRunning(_) | DevServerError::WorkerDisconnected(_) => {
                ApiError::failed_precondition(e.to_string())
            }
            DevServerError::Stopped => ApiError::internal(e.to_string()),
        }
    }
}

/// A `wait_*` condition was not met before its deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("condition not met within {waited:?}")]
pub struct WaitTimeout {
    /// How long was waited.
    pub waited: Duration,
}
