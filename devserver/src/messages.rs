//! Every message between the actors and from the [`DevServer`](crate::DevServer)
//! handle, in one place: one struct per intent.
//!
//! ```text
//! DevServer handle ──Dispatch/TerminateJob/…──▶ Dispatcher ──Deliver/Inject/Kill──▶ Session × N
//!                                                    ▲                                  │
//!                                                    └──WorkerRegistered/WorkerGone/…───┘
//! ```

use actix::{Addr, Message};
use livekit_protocol::{
    AgentDispatch, AvailabilityResponse, CreateAgentDispatchRequest, CreateRoomRequest,
    DeleteAgentDispatchRequest, DeleteRoomRequest, ListAgentDispatchRequest,
    ListParticipantsRequest, ListRoomsRequest, MigrateJobRequest, ParticipantInfo,
    RegisterWorkerRequest, Room, ServerMessage, SimulateJobRequest, UpdateJobStatus,
    UpdateWorkerStatus,
};
use tokio::sync::oneshot;

use crate::load_history::LoadSample;
use crate::model::{
    ApiError, Counts, DevServerError, DispatchError, DispatchRequest, JobInfo, RawFrame, WorkerInfo,
};
use crate::session::Session;

// ---- handle → dispatcher -------------------------------------------------

/// Create a job and place it; the outcome goes to `reply` once an assignment
/// was sent or the job could not be placed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    /// What to dispatch.
    pub request: DispatchRequest,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<JobInfo, DispatchError>>,
}

/// Send `termination` to the job's worker and end the job as success.
#[derive(Message)]
#[rtype(result = "Result<(), DevServerError>")]
pub struct TerminateJob {
    /// The job to end.
    pub job_id: String,
}

/// Abruptly closes one worker's socket (no close frame), as fault mode's
/// dropped connections do.
#[derive(Message)]
#[rtype(result = "Result<(), DevServerError>")]
pub struct DropWorker {
    /// The worker whose connection goes.
    pub worker_id: String,
}

/// The dashboard's bounded view of the whole server.
#[derive(Message)]
#[rtype(result = "Overview")]
pub struct GetOverview {
    /// Workers listed at most (the most recently registered).
    pub max_workers: usize,
    /// Rooms listed at most (the most recently created).
    pub max_rooms: usize,
    /// Job records listed at most (the most recently created).
    pub max_jobs: usize,
}

/// The answer to [`GetOverview`].
#[derive(Debug, Clone, Default)]
pub struct Overview {
    /// Workers with their load over the last minutes, in registration order
    /// (without their per-worker histories: `last_update`, migrated jobs,
    /// availability answers).
    pub workers: Vec<(WorkerInfo, Vec<LoadSample>)>,
    /// Rooms, newest first.
    pub rooms: Vec<RoomSummary>,
    /// Job records, newest first, each with whether it was abandoned (its
    /// worker left, nobody claimed it in time, and no restart follows).
    pub jobs: Vec<(JobInfo, bool)>,
    /// Everything the server holds, counted (not only what is listed).
    pub counts: Counts,
    /// Whether fault mode is on.
    pub fault_mode: bool,
}

/// A room as the dashboard lists it.
#[derive(Debug, Clone)]
pub struct RoomSummary {
    /// The room name.
    pub name: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Simulated participants: identity and whether they published.
    pub participants: Vec<(String, bool)>,
    /// Live dispatches, oldest first.
    pub dispatches: Vec<DispatchSummary>,
}

/// A dispatch as the dashboard lists it.
#[derive(Debug, Clone)]
pub struct DispatchSummary {
    /// `AD_…`.
    pub id: String,
    /// The agent it dispatches.
    pub agent_name: String,
    /// Its job metadata.
    pub metadata: String,
    /// Jobs launched for it, restarts included, oldest first.
    pub job_ids: Vec<String>,
}

/// Abruptly close every worker socket; answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct DropConnections;

/// Send raw bytes to one worker.
#[derive(Message)]
#[rtype(result = "Result<(), DevServerError>")]
pub struct InjectFrame {
    /// The target worker.
    pub worker_id: String,
    /// The frame, sent as-is.
    pub frame: RawFrame,
}

/// Snapshot of all known workers.
#[derive(Message)]
#[rtype(result = "Vec<WorkerInfo>")]
pub struct ListWorkers;

/// Snapshot of all job records.
#[derive(Message)]
#[rtype(result = "Vec<JobInfo>")]
pub struct ListJobs;

/// Fault mode's report (`None` when fault mode is off).
#[derive(Message)]
#[rtype(result = "Option<crate::faults::FaultReport>")]
pub struct GetFaultReport;

/// Snapshot of one job record.
#[derive(Message)]
#[rtype(result = "Option<JobInfo>")]
pub struct GetJob(pub String);

/// How many of each capped thing the dispatcher holds.
#[derive(Message)]
#[rtype(result = "Counts")]
pub struct GetCounts;

/// Stop the dispatcher (after the HTTP server has stopped).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

// ---- session → dispatcher ------------------------------------------------

/// A connection asks to register as `worker_id`; the session answers the
/// worker once this is accepted, or closes with the refusal's reason (the
/// workers cap).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct WorkerRegistered {
    /// The id the session handed out.
    pub worker_id: String,
    /// The API key the connection authenticated with (signs its room tokens).
    pub api_key: String,
    /// The register request as received.
    pub request: RegisterWorkerRequest,
    /// The agent protocol version of the connection.
    pub protocol: i32,
    /// The session, to write to the worker.
    pub session: Addr<Session>,
}

/// A registered connection ended (either side).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerGone {
    /// The worker whose socket ended.
    pub worker_id: String,
}

/// A worker answered an availability request.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AvailabilityAnswer {
    /// Who answered.
    pub worker_id: String,
    /// The answer.
    pub answer: AvailabilityResponse,
    /// From the request's write to this answer's read, at the worker's
    /// socket, if the session timed it.
    pub rtt: Option<std::time::Duration>,
}

/// A registered worker sent a protocol ping (answered by its session).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerPinged {
    /// Who sent it.
    pub worker_id: String,
}

/// A worker sent `update_worker`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerStatusUpdate {
    /// Who sent it.
    pub worker_id: String,
    /// What it sent.
    pub update: UpdateWorkerStatus,
}

/// A worker sent `update_job`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobStatusUpdate {
    /// Who sent it.
    pub worker_id: String,
    /// What it sent.
    pub update: UpdateJobStatus,
    /// For a RUNNING update: from the assignment's write to this update's
    /// read, at the worker's socket, if the session timed it.
    pub start: Option<std::time::Duration>,
}

/// A worker sent `migrate_job`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MigrateJobs {
    /// Who sent it.
    pub worker_id: String,
    /// What it sent.
    pub request: MigrateJobRequest,
}

/// A worker sent `simulate_job`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SimulateJob {
    /// Who sent it (and gets the job).
    pub worker_id: String,
    /// What it sent.
    pub request: SimulateJobRequest,
}

// ---- dispatcher → session ------------------------------------------------

/// Write a server message in the format of the worker's last frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub ServerMessage);

/// Write these exact bytes as one frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inject(pub RawFrame);

/// Drop the socket without a close frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kill;

// ---- Twirp and development endpoints → dispatcher -------------------------

/// `RoomService.CreateRoom`: the room (existing or new); a new room gets its
/// dispatches (`agents`, or the default one) at once.
#[derive(Message)]
#[rtype(result = "Result<Room, ApiError>")]
pub struct CreateRoom(pub CreateRoomRequest);

/// `RoomService.ListRooms`: every room, or those named.
#[derive(Message)]
#[rtype(result = "Vec<Room>")]
pub struct ListRooms(pub ListRoomsRequest);

/// `RoomService.DeleteRoom`: ends the room's jobs and forgets it.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct DeleteRoom(pub DeleteRoomRequest);

/// `RoomService.ListParticipants`: simulated participants and the agent
/// participants of running jobs.
#[derive(Message)]
#[rtype(result = "Result<Vec<ParticipantInfo>, ApiError>")]
pub struct ListParticipants(pub ListParticipantsRequest);

/// `AgentDispatchService.CreateDispatch` (the room is created if missing).
#[derive(Message)]
#[rtype(result = "Result<AgentDispatch, ApiError>")]
pub struct CreateDispatch(pub CreateAgentDispatchRequest);

/// `AgentDispatchService.DeleteDispatch`: terminates its jobs (success).
#[derive(Message)]
#[rtype(result = "Result<AgentDispatch, ApiError>")]
pub struct DeleteDispatch(pub DeleteAgentDispatchRequest);

/// `AgentDispatchService.ListDispatch`: the room's dispatches and their jobs.
#[derive(Message)]
#[rtype(result = "Result<Vec<AgentDispatch>, ApiError>")]
pub struct ListDispatch(pub ListAgentDispatchRequest);

/// Development: a participant joins `room` (created if missing); with
/// `publish`, it also publishes its first track.
#[derive(Message)]
#[rtype(result = "Result<ParticipantInfo, ApiError>")]
pub struct JoinParticipant {
    /// The room.
    pub room: String,
    /// Who joins (identity required; kind AGENT never triggers jobs).
    pub participant: ParticipantInfo,
    /// Publish a first track right away.
    pub publish: bool,
}

/// Development: a joined participant publishes its first track.
#[derive(Message)]
#[rtype(result = "Result<ParticipantInfo, ApiError>")]
pub struct PublishTrack {
    /// The room.
    pub room: String,
    /// The participant's identity.
    pub identity: String,
}

/// The latencies measured so far (availability round trips, job starts, in
/// microseconds); with `reset`, they start afresh.
#[derive(Message)]
#[rtype(result = "(Vec<u32>, Vec<u32>)")]
pub struct BenchTimings {
    /// Clear them after reading.
    pub reset: bool,
}

/// How far these jobs have got: how many have started (a RUNNING arrived,
/// or they ended) and how many have ended (or are no longer known).
#[derive(Message)]
#[rtype(result = "Progress")]
pub struct JobProgress(pub std::sync::Arc<[String]>);

/// The answer to [`JobProgress`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    /// Jobs that reported RUNNING, or ended.
    pub started: usize,
    /// Jobs with a final status, or no longer known.
    pub ended: usize,
}

/// Terminates every assigned, unfinished job of this agent; answers the ids
/// whose termination reached the worker's send queue.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct TerminateAll {
    /// The agent name whose jobs end.
    pub agent_name: String,
}
