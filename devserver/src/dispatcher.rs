//! `Dispatcher`: the one actor that owns the server's state — workers, job
//! records, dispatches in flight — and decides where jobs go.
//!
//! A dispatch is a small state machine driven by messages, never by awaiting
//! inside the actor: [`Dispatch`] creates the job record and asks a worker
//! (`availability`); an [`AvailabilityAnswer`], the availability timer or a
//! [`WorkerGone`] moves it on (next worker, assignment, or failure), and the
//! caller's oneshot gets the outcome. Every state change bumps a
//! `watch` counter so that `DevServer::wait_*` wake up without polling.
//!
//! Everything it holds is bounded: connected workers (`max_workers`),
//! disconnected ones remembered ([`MAX_DISCONNECTED_WORKERS`]), job records
//! (`max_jobs`: a new job evicts the oldest finished record, and is refused
//! when every record is a live job), and, in `rooms`, rooms, dispatches and
//! participants. A job's statuses and claims are taken only from its own
//! connection or a worker that may claim it ([`Standing`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::dev::SendError;
use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, SpawnHandle};
use livekit_protocol::{
    AvailabilityRequest, AvailabilityResponse, Job, JobAssignment, JobRestartPolicy, JobState,
    JobStatus, JobTermination, JobType, ParticipantPermission, Room, ServerMessage, WorkerStatus,
    server_message,
};
use tokio::sync::{oneshot, watch};

use crate::auth::{self, RoomTokenSpec};
use crate::balance;
use crate::faults::{FaultConfig, FaultKind, FaultReport, Faults};
use crate::ids;
use crate::load_history::{self, LoadHistory};
use crate::messages::{
    AvailabilityAnswer, BenchTimings, Deliver, Dispatch, DropConnections, DropWorker, GetCounts,
    GetFaultReport, GetJob, GetOverview, Inject, InjectFrame, JobProgress, JobStatusUpdate, Kill,
    ListJobs, ListWorkers, MigrateJobs, Overview, Progress, Shutdown, SimulateJob, TerminateAll,
    TerminateJob, WorkerGone, WorkerPinged, WorkerRegistered, WorkerStatusUpdate,
};
use crate::model::{
    ApiError, Counts, DevServerError, DispatchError, JobInfo, StatusUpdate, WorkerInfo,
};
use crate::session::Session;

mod rooms;

/// Job records kept by default (`--max-jobs`); a new job evicts the oldest
/// finished one when they are full, and is refused when every one is live.
pub const MAX_JOBS: usize = 10_000;
/// Status updates kept per job (the oldest are dropped).
pub const MAX_JOB_UPDATES: usize = 256;
/// Disconnected workers remembered (the oldest are forgotten).
pub const MAX_DISCONNECTED_WORKERS: usize = 256;
/// Availability answers and migrated job ids kept per worker.
pub const MAX_PER_WORKER_HISTORY: usize = 256;

/// Read-only settings of the dispatcher.
#[derive(Debug)]
pub struct DispatcherConfig {
    /// API keys and secrets (secrets sign room tokens).
    pub keys: Vec<(String, String)>,
    /// How long a worker may take to answer availability.
    pub availability_timeout: Duration,
    /// Validity of minted room tokens.
    pub room_token_ttl: Duration,
    /// How long a disconnected worker's jobs wait to be claimed.
    pub reconnect_grace: Duration,
    /// Attempts per target for restart-on-failure dispatches.
    pub max_job_attempts: u32,
    /// Connected workers at most.
    pub max_workers: usize,
    /// Rooms at most.
    pub max_rooms: usize,
    /// Simulated participants per room at most.
    pub max_participants: usize,
    /// Live dispatches at most.
    pub max_dispatches: usize,
    /// Job records kept (the oldest finished are evicted first).
    pub max_jobs: usize,
    /// Fault mode (see `faults`), if on.
    pub faults: Option<FaultConfig>,
}

struct WorkerEntry {
    info: WorkerInfo,
    api_key: String,
    permissions: Option<ParticipantPermission>,
    session: Option<Addr<Session>>,
    /// Registration order, for stable listings and candidate order.
    seq: u64,
    /// Its reported load over the last minutes (the dashboard's chart).
    load_history: LoadHistory,
}

struct JobRecord {
    info: JobInfo,
    /// The job as sent to workers; its `state` follows the job.
    proto: Job,
    /// Whether a failure after assignment launches the job again.
    policy: JobRestartPolicy,
    /// Any namespace may take it (`DispatchRequest` without a namespace).
    any_namespace: bool,
    /// An assignment was sent (or the worker answered `terminate`): the job
    /// belongs to its dispatch's state from then on, as on the server.
    assigned: bool,
    /// The worker's accepting answer (the agent participant's name,
    /// metadata and attributes).
    accepted: Option<AvailabilityResponse>,
    /// Running while the job's worker is disconnected: the grace period.
    grace: Option<SpawnHandle>,
    /// Who may claim the job once its worker is gone: set at assignment.
    owner: Option<Owner>,
    /// Its worker left and nobody claimed it within the grace period, and
    /// no restart follows: the server no longer follows it (the real one
    /// forgets it), so its record may be evicted like a finished one.
    abandoned: bool,
    /// Launched by a dispatch record of the room side (not by
    /// `DevServer::dispatch` or `simulate_job`): it restarts only while
    /// that record lives.
    from_dispatch: bool,
}

impl JobRecord {
    /// Marks the job ended (SUCCESS or FAILED reached), once.
    fn end(&mut self) {
        self.info.ended_at.get_or_insert_with(SystemTime::now);
    }

    /// SUCCESS or FAILED reached (`ended_at` set): later updates go to
    /// history only.
    fn ended(&self) -> bool {
        self.info.ended_at.is_some()
    }

    /// Whether the record may be evicted to make room: the job is over for
    /// the server. A live job's record is never evicted.
    fn evictable(&self) -> bool {
        self.ended() || self.abandoned
    }
}

/// The API key and agent name of the worker a job was assigned to. A claim
/// must match both, so they never change after the assignment, whichever
/// connection holds the job.
struct Owner {
    api_key: String,
    agent_name: String,
}

/// Why a worker may send a status or `migrate_job` for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// The job is assigned to this very connection.
    Holder,
    /// The job's connection is gone and this worker registered with the
    /// same API key and agent name: it may claim the job (a restarted or
    /// reconnected worker taking back what it still runs).
    Claimant,
}

/// How a job is launched: who asks for it and what happens when it fails.
struct Launch {
    forced: Option<String>,
    reply: Option<oneshot::Sender<Result<JobInfo, DispatchError>>>,
    policy: JobRestartPolicy,
    any_namespace: bool,
    attempt: u32,
    restart_of: Option<String>,
    from_dispatch: bool,
}

impl Launch {
    /// A first launch from a dispatch record: no reply, no forced worker.
    fn dispatched(policy: JobRestartPolicy) -> Self {
        Self {
            forced: None,
            reply: None,
            policy,
            any_namespace: false,
            attempt: 1,
            restart_of: None,
            from_dispatch: true,
        }
    }
}

/// A dispatch waiting for an outcome.
struct Pending {
    tried: Vec<String>,
    /// The worker currently asked, and its availability timer.
    asking: Option<(String, SpawnHandle)>,
    /// `to_worker` / `simulate_job`: only this worker is asked.
    forced: Option<String>,
    reply: Option<oneshot::Sender<Result<JobInfo, DispatchError>>>,
}

/// The owner of all dispatch state. See the module docs.
pub struct Dispatcher {
    config: Arc<DispatcherConfig>,
    workers: HashMap<String, WorkerEntry>,
    worker_seq: u64,
    disconnected: VecDeque<String>,
    jobs: HashMap<String, JobRecord>,
    job_order: VecDeque<String>,
    pending: HashMap<String, Pending>,
    rooms: rooms::Rooms,
    version: watch::Sender<u64>,
    /// Round trips measured from the server's side, for benchmarks.
    timings: Timings,
    /// Fault mode's schedule and ledger, if on.
    faults: Option<Faults>,
}

/// Latencies measured from the server's side (microseconds), kept for a
/// benchmark to read (`BenchTimings`); bounded.
#[derive(Debug, Default)]
pub(crate) struct Timings {
    /// Availability request sent → answer received.
    pub availability: Samples,
    /// Assignment sent → first RUNNING received.
    pub job_start: Samples,
}

/// Latency samples in microseconds, at most [`MAX_SAMPLES`].
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples(pub Vec<u32>);

/// The most samples of one kind kept (8 MB).
const MAX_SAMPLES: usize = 2_000_000;

impl Samples {
    fn record(&mut self, elapsed: Duration) {
        if self.0.len() < MAX_SAMPLES {
            self.0
                .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
        }
    }
}

impl Dispatcher {
    /// A dispatcher that bumps `version` on every state change.
    pub fn new(config: Arc<DispatcherConfig>, version: watch::Sender<u64>) -> Self {
        Self {
            workers: HashMap::new(),
            worker_seq: 0,
            disconnected: VecDeque::new(),
            jobs: HashMap::new(),
            job_order: VecDeque::new(),
            pending: HashMap::new(),
            rooms: rooms::Rooms::default(),
            version,
            timings: Timings::default(),
            faults: config.faults.clone().map(Faults::new),
            config,
        }
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Makes room for `n` more job records: when they would exceed
    /// `max_jobs`, evicts the oldest evictable ones (finished or abandoned).
    /// False, with nothing evicted, if live jobs leave too little room.
    fn admit_jobs(&mut self, n: usize) -> bool {
        let excess = (self.jobs.len() + n).saturating_sub(self.config.max_jobs);
        if excess == 0 {
            return true;
        }
        let victims: Vec<usize> = self
            .job_order
            .iter()
            .enumerate()
            .filter(|(_, id)| self.jobs.get(*id).is_some_and(JobRecord::evictable))
            .map(|(at, _)| at)
            .take(excess)
            .collect();
        if victims.len() < excess {
            return false;
        }
        // from the back, so the earlier positions stay valid
        for at in victims.into_iter().rev() {
            if let Some(id) = self.job_order.remove(at) {
                let evicted = self.jobs.remove(&id);
                if let (Some(faults), Some(record)) = (self.faults.as_mut(), evicted) {
                    faults.evicted(&id, record.ended());
                }
            }
        }
        true
    }

    /// The refusal of a job that finds every record live.
    fn too_many_jobs(&self) -> ApiError {
        ApiError::resource_exhausted(
            DispatchError::TooManyJobs {
                max_jobs: self.config.max_jobs,
            }
            .to_string(),
        )
    }

    /// Creates the record for `job` and starts placing it; false (and the
    /// caller told) if every job record is held by a live job.
    fn start_job(&mut self, job: Job, launch: Launch, ctx: &mut Context<Self>) -> bool {
        if !self.admit_jobs(1) {
            tracing::warn!(
                job_id = job.id,
                max_jobs = self.config.max_jobs,
                "job refused: every job record is held by a live job (--max-jobs)"
            );
            if let Some(reply) = launch.reply {
                let _ = reply.send(Err(DispatchError::TooManyJobs {
                    max_jobs: self.config.max_jobs,
                }));
            }
            return false;
        }
        #[allow(deprecated)] // the server still fills `namespace`
        let namespace = job.namespace.clone();
        let info = JobInfo {
            id: job.id.clone(),
            dispatch_id: job.dispatch_id.clone(),
            room: job
                .room
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            agent_name: job.agent_name.clone(),
            metadata: job.metadata.clone(),
            job_type: JobType::try_from(job.r#type).unwrap_or(JobType::JtRoom),
            worker_id: None,
            participant_identity: String::new(),
            status: JobStatus::JsPending,
            error: String::new(),
            updates: Vec::new(),
            namespace,
            participant: job.participant.as_ref().map(|p| p.identity.clone()),
            attempt: launch.attempt,
            restart_of: launch.restart_of,
            created_at: SystemTime::now(),
            assigned_at: None,
            assigned_to: None,
            ended_at: None,
        };
        let job_id = job.id.clone();
        let policy = if self.faults.is_some() {
            JobRestartPolicy::JrpOnFailure // fault mode restarts what fails
        } else {
            launch.policy
        };
        self.pending.insert(
            job_id.clone(),
            Pending {
                tried: Vec::new(),
                asking: None,
                forced: launch.forced,
                reply: launch.reply,
            },
        );
        self.jobs.insert(
            job_id.clone(),
            JobRecord {
                info,
                proto: job,
                policy,
                any_namespace: launch.any_namespace,
                assigned: false,
                accepted: None,
                grace: None,
                owner: None,
                abandoned: false,
                from_dispatch: launch.from_dispatch,
            },
        );
        self.job_order.push_back(job_id.clone());
        self.changed();
        self.ask_next(&job_id, ctx);
        true
    }

    /// Asks the next worker for `job_id`, or ends the dispatch if none is left.
    fn ask_next(&mut self, job_id: &str, ctx: &mut Context<Self>) {
        let (Some(pending), Some(record)) = (self.pending.get(job_id), self.jobs.get(job_id))
        else {
            return;
        };
        let tried = pending.tried.clone();
        let forced = pending.forced.clone();
        let (agent_name, job_type) = (record.info.agent_name.clone(), record.info.job_type);
        let any_namespace = record.any_namespace;
        let namespace = record.info.namespace.clone();
        let deployment = record.proto.deployment.clone();
        let chosen = match forced {
            Some(forced) if tried.contains(&forced) => {
                return self.finish(job_id, Err(DispatchError::Declined { tried }));
            }
            Some(forced) => match self.workers.get(&forced) {
                Some(w) if w.session.is_some() => {
                    tracing::info!(job_id, worker_id = forced, "dispatch: forced worker");
                    forced
                }
                _ => {
                    return self.finish(
                        job_id,
                        Err(DispatchError::UnknownWorker { worker_id: forced }),
                    );
                }
            },
            None => {
                let mut candidates: Vec<&WorkerEntry> = self
                    .workers
                    .values()
                    .filter(|w| {
                        w.session.is_some()
                            && w.info.agent_name == agent_name
                            && w.info.job_type == job_type
                            && w.info.deployment == deployment
                            && (any_namespace
                                || w.info.namespace.as_deref().unwrap_or_default() == namespace)
                            && w.info.status == WorkerStatus::WsAvailable
                            && balance::weight(w.info.load) > 0.0
                            && !tried.contains(&w.info.id)
                    })
                    .collect();
                candidates.sort_by_key(|w| w.seq);
                let loads: Vec<f32> = candidates.iter().map(|w| w.info.load).collect();
                let Some(index) = balance::pick_weighted(&loads, rand::random::<f64>()) else {
                    tracing::info!(
                        job_id,
                        agent_name,
                        ?tried,
                        "dispatch: no eligible worker left"
                    );
                    // A worker that closed while asked is tried no more; if it
                    // was the last one asked, that is the reason.
                    let last_closed = tried
                        .last()
                        .filter(|w| self.workers.get(*w).is_none_or(|w| w.session.is_none()));
                    let error = match (tried.is_empty(), last_closed) {
                        (true, _) => DispatchError::NoWorkers,
                        (false, Some(w)) => DispatchError::WorkerClosed {
                            worker_id: w.clone(),
                        },
                        (false, None) => DispatchError::Declined { tried },
                    };
                    return self.finish(job_id, Err(error));
                };
                let w = candidates[index];
                tracing::info!(
                    job_id,
                    worker_id = w.info.id,
                    load = w.info.load,
                    candidates = candidates.len(),
                    tried = tried.len(),
                    "dispatch: chose worker (random, weighted by 1 - load, among AVAILABLE untried workers with load < 1)"
                );
                w.info.id.clone()
            }
        };

        let now = unix_nanos();
        let job = {
            let record = self.jobs.get_mut(job_id).expect("checked above");
            record.proto.state = Some(JobState {
                status: JobStatus::JsRunning as i32,
                worker_id: chosen.clone(),
                started_at: now,
                updated_at: now,
                ..Default::default()
            });
            record.proto.clone()
        };
        let request = AvailabilityRequest {
            job: Some(job),
            resuming: false,
        };
        let msg = ServerMessage {
            message: Some(server_message::Message::Availability(request)),
        };
        if !self.deliver(&chosen, msg) {
            // As the server: a closed worker is not an answer; try the next.
            tracing::info!(
                job_id,
                worker_id = chosen,
                "dispatch: worker closed; trying the next"
            );
            if let Some(p) = self.pending.get_mut(job_id) {
                p.tried.push(chosen);
            }
            return self.ask_next(job_id, ctx);
        }
        let timer = {
            let (job_id, worker_id) = (job_id.to_owned(), chosen.clone());
            ctx.run_later(self.config.availability_timeout, move |act, _| {
                act.availability_timed_out(&job_id, &worker_id)
            })
        };
        let pending = self.pending.get_mut(job_id).expect("checked above");
        pending.tried.push(chosen.clone());
        pending.asking = Some((chosen, timer));
    }

    /// Writes to a connected worker; false if it is gone, or so far behind
    /// that its bounded send queue is full (said in the log: to the dispatch
    /// it is a worker that cannot take the message).
    fn deliver(&self, worker_id: &str, msg: ServerMessage) -> bool {
        let Some(session) = self.workers.get(worker_id).and_then(|w| w.session.as_ref()) else {
            return false;
        };
        let repeatable = matches!(
            msg.message,
            Some(server_message::Message::Availability(_) | server_message::Message::Assignment(_))
        );
        let twice = repeatable && self.faults.as_ref().is_some_and(Faults::duplicate);
        let again = twice.then(|| msg.clone());
        match session.try_send(Deliver(msg)) {
            Ok(()) => {
                if let Some(msg) = again {
                    tracing::warn!(worker_id, "fault: sending the same message twice");
                    let _ = session.try_send(Deliver(msg));
                }
                true
            }
            Err(SendError::Full(_)) => {
                tracing::warn!(worker_id, "dispatch: the worker's send queue is full");
                false
            }
            Err(SendError::Closed(_)) => false,
        }
    }

    fn availability_timed_out(&mut self, job_id: &str, worker_id: &str) {
        let asking = self.pending.get(job_id).and_then(|p| p.asking.as_ref());
        if asking.is_some_and(|(w, _)| w == worker_id) {
            tracing::info!(job_id, worker_id, "dispatch: availability timed out");
            self.finish(
                job_id,
                Err(DispatchError::Timeout {
                    worker_id: worker_id.to_owned(),
                }),
            );
        }
    }

    /// Ends a dispatch: updates the record (failed on error) and replies.
    fn finish(&mut self, job_id: &str, outcome: Result<(), DispatchError>) {
        let Some(mut pending) = self.pending.remove(job_id) else {
            return;
        };
        pending.asking = None;
        let result = match (self.jobs.get_mut(job_id), outcome) {
            (Some(record), Ok(())) => Ok(record.info.clone()),
            (Some(record), Err(e)) => {
                record.info.status = JobStatus::JsFailed;
                record.info.error = e.to_string();
                record.end();
                Err(e)
            }
            (None, Ok(())) => Err(DispatchError::Stopped),
            (None, Err(e)) => Err(e),
        };
        if let Some(reply) = pending.reply.take() {
            let _ = reply.send(result);
        }
        self.changed();
    }

    fn accept(
        &mut self,
        job_id: &str,
        worker_id: &str,
        answer: &livekit_protocol::AvailabilityResponse,
    ) {
        let Some(worker) = self.workers.get(worker_id) else {
            return self.finish(
                job_id,
                Err(DispatchError::WorkerClosed {
                    worker_id: worker_id.to_owned(),
                }),
            );
        };
        let Some(secret) = self
            .config
            .keys
            .iter()
            .find(|(k, _)| *k == worker.api_key)
            .map(|(_, s)| s)
        else {
            return self.finish(
                job_id,
                Err(DispatchError::Token("the worker's API key is gone".into())),
            );
        };
        // The server passes the identity through unchanged; the Rust token
        // library refuses an empty identity with roomJoin, so fall back to
        // the official workers' own default.
        let identity = if answer.participant_identity.is_empty() {
            format!("agent-{job_id}")
        } else {
            answer.participant_identity.clone()
        };
        let Some(record) = self.jobs.get_mut(job_id) else {
            return;
        };
        let token = auth::mint_room_token(
            &worker.api_key,
            secret,
            &RoomTokenSpec {
                room: &record.info.room,
                identity: &identity,
                name: &answer.participant_name,
                metadata: &answer.participant_metadata,
                attributes: &answer.participant_attributes,
                agent_name: &worker.info.agent_name,
                permissions: worker.permissions.as_ref(),
                ttl: self.config.room_token_ttl,
            },
        );
        let token = match token {
            Ok(t) => t,
            Err(e) => return self.finish(job_id, Err(DispatchError::Token(e.to_string()))),
        };
        if let Some(state) = record.proto.state.as_mut() {
            state.participant_identity = identity.clone();
        }
        record.assigned = true;
        record.accepted = Some(answer.clone());
        record.owner = Some(Owner {
            api_key: worker.api_key.clone(),
            agent_name: worker.info.agent_name.clone(),
        });
        record.info.worker_id = Some(worker_id.to_owned());
        record.info.participant_identity = identity;
        record.info.status = JobStatus::JsRunning;
        let assignment = JobAssignment {
            job: Some(record.proto.clone()),
            url: None,
            token,
        };
        let msg = ServerMessage {
            message: Some(server_message::Message::Assignment(assignment)),
        };
        if self.deliver(worker_id, msg) {
            tracing::info!(job_id, worker_id, "dispatch: assignment sent");
            if let Some(record) = self.jobs.get_mut(job_id) {
                record.info.assigned_at = Some(SystemTime::now());
                record.info.assigned_to = Some(worker_id.to_owned());
            }
            if let Some(faults) = self.faults.as_mut() {
                faults.assigned(job_id);
            }
            self.finish(job_id, Ok(()));
        } else {
            self.finish(
                job_id,
                Err(DispatchError::WorkerClosed {
                    worker_id: worker_id.to_owned(),
                }),
            );
        }
    }

    /// Sends `termination` to the worker holding the job and ends it as a
    /// success, as the server does for `TERMINATION_REQUESTED`.
    fn terminate(&mut self, job_id: &str, why: &str) -> Result<(), DevServerError> {
        let record = self
            .jobs
            .get(job_id)
            .ok_or_else(|| DevServerError::UnknownJob(job_id.to_owned()))?;
        let worker_id = match (&record.info.worker_id, record.ended()) {
            (Some(w), false) => w.clone(),
            _ => return Err(DevServerError::JobNotRunning(job_id.to_owned())),
        };
        match self.workers.get(&worker_id) {
            None => return Err(DevServerError::UnknownWorker(worker_id)),
            Some(w) if w.session.is_none() => {
                return Err(DevServerError::WorkerDisconnected(worker_id));
            }
            Some(_) => {}
        }
        let termination = JobTermination {
            job_id: job_id.to_owned(),
        };
        let sent = self.deliver(
            &worker_id,
            ServerMessage {
                message: Some(server_message::Message::Termination(termination)),
            },
        );
        if !sent {
            return Err(DevServerError::WorkerDisconnected(worker_id));
        }
        if let Some(record) = self.jobs.get_mut(job_id) {
            record.info.status = JobStatus::JsSuccess;
            record.info.error.clear();
            record.end();
            if let Some(state) = record.proto.state.as_mut() {
                let now = unix_nanos();
                state.status = JobStatus::JsSuccess as i32;
                state.error.clear();
                state.updated_at = now;
                state.ended_at = now;
            }
        }
        tracing::info!(job_id, worker_id, reason = why, "job terminated");
        Ok(())
    }

    /// Ends a job of a deleted dispatch or room: terminates it if it runs,
    /// cancels its placement if it is still being placed. A job whose worker
    /// is away (grace period) just ends as a success.
    fn end_for_deletion(&mut self, job_id: &str, why: &str, ctx: &mut Context<Self>) {
        if self.pending.contains_key(job_id) {
            if let Some((_, timer)) = self.pending.get_mut(job_id).and_then(|p| p.asking.take()) {
                ctx.cancel_future(timer);
            }
            return self.finish(job_id, Err(DispatchError::Cancelled));
        }
        if let Err(e) = self.terminate(job_id, why) {
            tracing::debug!(job_id, error = %e, "no termination sent");
            if let Some(record) = self.jobs.get_mut(job_id).filter(|r| !r.ended()) {
                record.info.status = JobStatus::JsSuccess;
                record.end();
            }
        }
        if let Some(timer) = self.jobs.get_mut(job_id).and_then(|r| r.grace.take()) {
            ctx.cancel_future(timer);
        }
    }

    /// The grace period of a job whose worker disconnected is over and
    /// nobody claimed it.
    fn grace_expired(&mut self, job_id: &str, ctx: &mut Context<Self>) {
        let Some(record) = self.jobs.get_mut(job_id) else {
            return;
        };
        record.grace = None;
        if record.ended() {
            return;
        }
        if record.policy != JobRestartPolicy::JrpOnFailure {
            // The open-source server forgets the worker's jobs and leaves
            // their state as it was; so does the dev server, and its record
            // may go when room is needed.
            tracing::info!(
                job_id,
                "job not claimed within the grace period; no restart policy: left as is"
            );
            record.abandoned = true;
            self.changed();
            return;
        }
        let error = "the worker disconnected and did not claim the job in time";
        tracing::info!(job_id, "job not claimed within the grace period: failed");
        record.info.status = JobStatus::JsFailed;
        record.info.error = error.to_owned();
        record.end();
        if let Some(state) = record.proto.state.as_mut() {
            let now = unix_nanos();
            state.status = JobStatus::JsFailed as i32;
            state.error = error.to_owned();
            state.updated_at = now;
            state.ended_at = now;
        }
        self.maybe_restart(job_id, ctx);
        self.changed();
    }

    /// Launches a failed job again if its restart policy and budget allow.
    fn maybe_restart(&mut self, job_id: &str, ctx: &mut Context<Self>) {
        let Some(record) = self.jobs.get(job_id) else {
            return;
        };
        if record.policy != JobRestartPolicy::JrpOnFailure || !record.assigned {
            return;
        }
        let attempt = record.info.attempt;
        if attempt >= self.config.max_job_attempts {
            tracing::info!(
                job_id,
                attempt,
                max = self.config.max_job_attempts,
                "job failed: restart budget used up, not launching it again"
            );
            return;
        }
        let dispatch_id = record.info.dispatch_id.clone();
        if record.from_dispatch && !self.rooms.has_dispatch(&dispatch_id) {
            tracing::info!(
                job_id,
                dispatch_id,
                "job failed: its dispatch is gone, no restart"
            );
            return;
        }
        let mut job = record.proto.clone();
        job.id = ids::new_id(ids::JOB_PREFIX);
        job.state = None;
        let launch = Launch {
            forced: None,
            reply: None,
            policy: record.policy,
            any_namespace: record.any_namespace,
            attempt: attempt + 1,
            restart_of: Some(job_id.to_owned()),
            from_dispatch: record.from_dispatch,
        };
        tracing::info!(
            job_id,
            new_job_id = job.id,
            dispatch_id,
            attempt = attempt + 1,
            max = self.config.max_job_attempts,
            "job failed: restart policy JRP_ON_FAILURE, launching it again"
        );
        let new_job_id = job.id.clone();
        if self.start_job(job, launch, ctx) {
            self.rooms.add_job(&dispatch_id, &new_job_id);
        }
    }

    /// Whether `worker_id` may send statuses or `migrate_job` for `job_id`:
    /// the connection holding it, or, once that connection is gone, a worker
    /// of the same API key and agent name. Anyone else is refused: one
    /// worker (or key) must not end or take another's jobs.
    fn standing(&self, job_id: &str, worker_id: &str) -> Option<Standing> {
        let record = self.jobs.get(job_id)?;
        let holder = record.info.worker_id.as_deref()?;
        if holder == worker_id {
            return Some(Standing::Holder);
        }
        let holder_gone = self.workers.get(holder).is_none_or(|w| w.session.is_none());
        let claimant = self.workers.get(worker_id)?;
        let same_owner = record.owner.as_ref().is_some_and(|o| {
            o.api_key == claimant.api_key && o.agent_name == claimant.info.agent_name
        });
        (holder_gone && same_owner).then_some(Standing::Claimant)
    }

    /// Logs a status or `migrate_job` refused by [`Self::standing`].
    fn refuse(&self, what: &str, job_id: &str, worker_id: &str) {
        let holder = self
            .jobs
            .get(job_id)
            .and_then(|j| j.info.worker_id.as_deref());
        tracing::warn!(
            job_id,
            worker_id,
            holder,
            "{what} refused: the job is not this worker's (nor claimable by it); ignored"
        );
    }

    /// Registered workers whose socket is open.
    fn connected_workers(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.session.is_some())
            .count()
    }

    /// The session of a connected worker: `UnknownWorker` for an id never
    /// seen (or forgotten), `WorkerDisconnected` for a closed one.
    fn open_session(&self, worker_id: &str) -> Result<&Addr<Session>, DevServerError> {
        self.workers
            .get(worker_id)
            .ok_or_else(|| DevServerError::UnknownWorker(worker_id.to_owned()))?
            .session
            .as_ref()
            .ok_or_else(|| DevServerError::WorkerDisconnected(worker_id.to_owned()))
    }

    /// What the caps bound, counted from the state now.
    fn counts(&self) -> Counts {
        let (rooms, participants, dispatches) = self.rooms.counts();
        Counts {
            workers: self.connected_workers(),
            rooms,
            participants,
            dispatches,
            jobs: self.jobs.len(),
            live_jobs: self.jobs.values().filter(|j| !j.evictable()).count(),
        }
    }

    fn worker_infos(&self) -> Vec<WorkerInfo> {
        let mut entries: Vec<&WorkerEntry> = self.workers.values().collect();
        entries.sort_by_key(|w| w.seq);
        entries.into_iter().map(|w| w.info.clone()).collect()
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(faults) = &self.faults {
            tracing::warn!(
                seed = faults.seed(),
                "fault mode: dropping connections, terminating jobs and repeating messages \
                 at random; the same seed replays the same schedule"
            );
            self.schedule_fault(ctx);
        }
    }
}

impl Dispatcher {
    /// Arms the timer of the next fault of the schedule.
    fn schedule_fault(&mut self, ctx: &mut Context<Self>) {
        let Some(faults) = self.faults.as_mut() else {
            return;
        };
        let fault = faults.next();
        ctx.run_later(fault.after, move |act, ctx| {
            act.fault(fault.kind, fault.pick);
            act.schedule_fault(ctx);
        });
    }

    /// Carries out one fault of the schedule on the candidates of this
    /// moment (in a stable order: registration, then job id).
    fn fault(&mut self, kind: FaultKind, pick: u32) {
        let target = match kind {
            FaultKind::DropConnection => {
                let mut connected: Vec<&WorkerEntry> = self
                    .workers
                    .values()
                    .filter(|w| w.session.is_some())
                    .collect();
                connected.sort_by_key(|w| w.seq);
                let Some(worker) = pick_from(&connected, pick) else {
                    return;
                };
                if let Some(session) = &worker.session {
                    let _ = session.try_send(Kill);
                }
                worker.info.id.clone()
            }
            FaultKind::TerminateJob => {
                let connected = |worker_id: &Option<String>| {
                    worker_id
                        .as_ref()
                        .and_then(|w| self.workers.get(w))
                        .is_some_and(|w| w.session.is_some())
                };
                let mut running: Vec<&String> = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.assigned && !j.ended() && connected(&j.info.worker_id))
                    .map(|(id, _)| id)
                    .collect();
                running.sort();
                let Some(job_id) = pick_from(&running, pick).map(|id| (*id).clone()) else {
                    return;
                };
                if let Err(e) = self.terminate(&job_id, "fault mode") {
                    tracing::debug!(job_id, error = %e, "fault: no termination sent");
                    return;
                }
                self.changed();
                job_id
            }
        };
        let Some(faults) = self.faults.as_mut() else {
            return;
        };
        let number = faults.done(kind);
        tracing::warn!(seed = faults.seed(), number, ?kind, target, "fault");
    }
}

/// The `pick`th of `candidates`, counting round.
fn pick_from<T>(candidates: &[T], pick: u32) -> Option<&T> {
    (!candidates.is_empty()).then(|| &candidates[pick as usize % candidates.len()])
}

impl Handler<Dispatch> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) {
        let request = msg.request;
        #[allow(deprecated)] // the server still fills `namespace`
        let job = Job {
            id: ids::new_id(ids::JOB_PREFIX),
            dispatch_id: ids::new_id(ids::DISPATCH_PREFIX),
            r#type: request.job_type as i32,
            room: Some(Room {
                sid: ids::new_id(ids::ROOM_PREFIX),
                name: request.room,
                ..Default::default()
            }),
            participant: request.participant,
            namespace: request.namespace.clone().unwrap_or_default(),
            metadata: request.metadata,
            agent_name: request.agent_name,
            ..Default::default()
        };
        let launch = Launch {
            forced: request.worker_id,
            reply: Some(msg.reply),
            policy: request.restart_policy,
            any_namespace: request.namespace.is_none(),
            attempt: 1,
            restart_of: None,
            from_dispatch: false,
        };
        self.start_job(job, launch, ctx);
    }
}

impl Handler<SimulateJob> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: SimulateJob, ctx: &mut Context<Self>) {
        let Some(worker) = self.workers.get(&msg.worker_id) else {
            return;
        };
        let Some(room) = msg.request.room else {
            tracing::debug!(
                worker_id = msg.worker_id,
                "simulate_job without a room: ignored"
            );
            return;
        };
        let job_type = if msg.request.participant.is_some() {
            JobType::JtPublisher
        } else {
            JobType::JtRoom
        };
        #[allow(deprecated)] // the server still fills `namespace`
        let job = Job {
            id: ids::new_id(ids::JOB_PREFIX),
            r#type: job_type as i32,
            room: Some(room),
            participant: msg.request.participant,
            namespace: worker.info.namespace.clone().unwrap_or_default(),
            agent_name: worker.info.agent_name.clone(),
            deployment: worker.info.deployment.clone(),
            ..Default::default()
        };
        tracing::info!(
            job_id = job.id,
            worker_id = msg.worker_id,
            "simulate_job: dispatching to the requester"
        );
        let launch = Launch {
            forced: Some(msg.worker_id),
            from_dispatch: false,
            ..Launch::dispatched(JobRestartPolicy::JrpNever)
        };
        self.start_job(job, launch, ctx);
    }
}

impl Handler<AvailabilityAnswer> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: AvailabilityAnswer, ctx: &mut Context<Self>) {
        let AvailabilityAnswer {
            worker_id,
            answer,
            rtt,
        } = msg;
        if let Some(w) = self.workers.get_mut(&worker_id) {
            push_bounded(
                &mut w.info.availability_answers,
                (answer.job_id.clone(), answer.available),
            );
        }
        let job_id = answer.job_id.clone();
        let asked = self.pending.get_mut(&job_id).and_then(|p| {
            if p.asking.as_ref().is_some_and(|(w, _)| *w == worker_id) {
                if let Some(rtt) = rtt {
                    self.timings.availability.record(rtt);
                }
                p.asking.take()
            } else {
                None
            }
        });
        let Some((_, timer)) = asked else {
            tracing::warn!(
                job_id,
                worker_id,
                "availability answer for a job not asked of this worker"
            );
            self.changed();
            return;
        };
        ctx.cancel_future(timer);
        if answer.terminate {
            tracing::info!(
                job_id,
                worker_id,
                "dispatch: worker asked to terminate the job"
            );
            if let Some(record) = self.jobs.get_mut(&job_id) {
                record.info.status = JobStatus::JsSuccess;
                record.end();
                record.assigned = true;
                if let Some(state) = record.proto.state.as_mut() {
                    state.status = JobStatus::JsSuccess as i32;
                    state.ended_at = unix_nanos();
                }
            }
            self.finish(&job_id, Ok(()));
        } else if !answer.available {
            tracing::info!(
                job_id,
                worker_id,
                "dispatch: worker declined; trying the next"
            );
            self.ask_next(&job_id, ctx);
        } else {
            self.accept(&job_id, &worker_id, &answer);
        }
    }
}

impl Handler<WorkerRegistered> for Dispatcher {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: WorkerRegistered, _: &mut Context<Self>) -> Self::Result {
        let connected = self.connected_workers();
        if connected >= self.config.max_workers {
            let why = format!(
                "too many workers: the dev server takes at most {} (--max-workers); try again later",
                self.config.max_workers
            );
            tracing::warn!(
                worker_id = msg.worker_id,
                connected,
                "registration refused: {why}"
            );
            return Err(why);
        }
        let r = msg.request;
        self.worker_seq += 1;
        let info = WorkerInfo {
            id: msg.worker_id.clone(),
            agent_name: r.agent_name,
            job_type: JobType::try_from(r.r#type).unwrap_or(JobType::JtRoom),
            namespace: r.namespace,
            deployment: r.deployment,
            version: r.version,
            protocol: msg.protocol,
            status: WorkerStatus::WsAvailable,
            load: 0.0,
            job_count: 0,
            connected: true,
            registered_at: std::time::SystemTime::now(),
            pings: 0,
            update_count: 0,
            last_update: None,
            migrated_jobs: Vec::new(),
            availability_answers: Vec::new(),
        };
        let entry = WorkerEntry {
            info,
            api_key: msg.api_key,
            permissions: r.allowed_permissions,
            session: Some(msg.session),
            seq: self.worker_seq,
            load_history: LoadHistory::default(),
        };
        self.workers.insert(msg.worker_id, entry);
        self.changed();
        Ok(())
    }
}

impl Handler<WorkerGone> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: WorkerGone, ctx: &mut Context<Self>) {
        let Some(worker) = self.workers.get_mut(&msg.worker_id) else {
            return;
        };
        if !worker.info.connected {
            return;
        }
        worker.info.connected = false;
        worker.session = None;
        self.disconnected.push_back(msg.worker_id.clone());
        while self.disconnected.len() > MAX_DISCONNECTED_WORKERS {
            if let Some(old) = self.disconnected.pop_front() {
                self.workers.remove(&old);
            }
        }
        let asking: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.asking.as_ref().is_some_and(|(w, _)| *w == msg.worker_id))
            .map(|(id, _)| id.clone())
            .collect();
        for job_id in asking {
            if let Some((_, timer)) = self.pending.get_mut(&job_id).and_then(|p| p.asking.take()) {
                ctx.cancel_future(timer);
            }
            tracing::info!(
                job_id,
                worker_id = msg.worker_id,
                "dispatch: worker disconnected while asked; trying the next"
            );
            self.ask_next(&job_id, ctx);
        }
        // Its unfinished jobs wait for a claim before they count as failed.
        let grace = self.config.reconnect_grace;
        let orphans: Vec<String> = self
            .jobs
            .values()
            .filter(|j| {
                j.assigned && !j.ended() && j.info.worker_id.as_deref() == Some(&*msg.worker_id)
            })
            .map(|j| j.info.id.clone())
            .collect();
        for job_id in orphans {
            tracing::info!(
                job_id,
                worker_id = msg.worker_id,
                ?grace,
                "job's worker disconnected: waiting for a claim (migrate_job or update_job)"
            );
            let timer = {
                let job_id = job_id.clone();
                ctx.run_later(grace, move |act, ctx| act.grace_expired(&job_id, ctx))
            };
            if let Some(old) = self
                .jobs
                .get_mut(&job_id)
                .and_then(|record| record.grace.replace(timer))
            {
                ctx.cancel_future(old);
            }
        }
        self.changed();
    }
}

impl Handler<WorkerPinged> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: WorkerPinged, _: &mut Context<Self>) {
        if let Some(worker) = self.workers.get_mut(&msg.worker_id) {
            worker.info.pings += 1;
            self.changed();
        }
    }
}

impl Handler<WorkerStatusUpdate> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: WorkerStatusUpdate, _: &mut Context<Self>) {
        let Some(worker) = self.workers.get_mut(&msg.worker_id) else {
            return;
        };
        let u = &msg.update;
        if let Some(status) = u.status.and_then(|s| WorkerStatus::try_from(s).ok()) {
            worker.info.status = status;
        }
        let load = load_history::bounded(u.load);
        worker.info.load = load;
        worker.load_history.record(SystemTime::now(), load);
        worker.info.job_count = u.job_count;
        worker.info.update_count += 1;
        worker.info.last_update = Some(msg.update);
        self.changed();
    }
}

impl Handler<JobStatusUpdate> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: JobStatusUpdate, ctx: &mut Context<Self>) {
        let u = msg.update;
        if let Some(faults) = self.faults.as_mut() {
            let connection = self.workers.get(&msg.worker_id).map_or(0, |w| w.seq);
            let terminal = [JobStatus::JsSuccess as i32, JobStatus::JsFailed as i32];
            let status = terminal.contains(&u.status).then_some(u.status);
            faults.heard(&u.job_id, connection, status);
        }
        if !self.jobs.contains_key(&u.job_id) {
            tracing::debug!(
                job_id = u.job_id,
                worker_id = msg.worker_id,
                "update for an unknown job: ignored"
            );
            return;
        }
        // A status is accepted from the job's connection, and, once that
        // connection is gone, from a worker that may claim the job: the
        // worker reports on its new connection what ended while it was away
        // (without a `migrate_job` for it, as its job is over).
        let Some(standing) = self.standing(&u.job_id, &msg.worker_id) else {
            return self.refuse("update_job", &u.job_id, &msg.worker_id);
        };
        let record = self.jobs.get_mut(&u.job_id).expect("checked above");
        let status = JobStatus::try_from(u.status).unwrap_or(JobStatus::JsPending);
        if let Some(start) = msg.start {
            self.timings.job_start.record(start);
        }
        if record.info.updates.len() >= MAX_JOB_UPDATES {
            record.info.updates.remove(0);
        }
        record.info.updates.push(StatusUpdate {
            status,
            error: u.error.clone(),
            worker_id: msg.worker_id.clone(),
            at: SystemTime::now(),
        });
        if let Some(timer) = record.grace.take() {
            ctx.cancel_future(timer);
            tracing::info!(
                job_id = u.job_id,
                worker_id = msg.worker_id,
                "job claimed by a status update within the grace period"
            );
        }
        if standing == Standing::Claimant {
            tracing::info!(
                job_id = u.job_id,
                worker_id = msg.worker_id,
                "job re-associated with a new connection"
            );
            record.info.worker_id = Some(msg.worker_id.clone());
            record.abandoned = false;
        }
        // Like the server, an ended job no longer changes state; the
        // update is still kept in the history.
        let mut failed = false;
        if !record.ended() {
            record.info.status = status;
            record.info.error = u.error.clone();
            let ends = matches!(status, JobStatus::JsSuccess | JobStatus::JsFailed);
            if ends {
                record.end();
            }
            failed = status == JobStatus::JsFailed;
            if let Some(state) = record.proto.state.as_mut() {
                let now = unix_nanos();
                state.status = status as i32;
                state.error = u.error;
                state.updated_at = now;
                state.worker_id = msg.worker_id;
                if ends {
                    state.ended_at = now;
                }
            }
        }
        if failed {
            self.maybe_restart(&u.job_id, ctx);
        }
        self.changed();
    }
}

impl Handler<MigrateJobs> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: MigrateJobs, ctx: &mut Context<Self>) {
        let Some(worker) = self.workers.get_mut(&msg.worker_id) else {
            return;
        };
        // What the worker sent, claimed or not (its own history).
        for id in &msg.request.job_ids {
            push_bounded(&mut worker.info.migrated_jobs, id.clone());
            if let Some(faults) = self.faults.as_mut() {
                faults.heard(id, worker.seq, None);
            }
        }
        for id in msg.request.job_ids {
            if !self.jobs.contains_key(&id) {
                tracing::info!(
                    job_id = id,
                    worker_id = msg.worker_id,
                    "migrate_job for an unknown job: ignored"
                );
                continue;
            }
            if self.standing(&id, &msg.worker_id).is_none() {
                self.refuse("migrate_job", &id, &msg.worker_id);
                continue;
            }
            let record = self.jobs.get_mut(&id).expect("checked above");
            if let Some(timer) = record.grace.take() {
                ctx.cancel_future(timer);
            }
            tracing::info!(
                job_id = id,
                worker_id = msg.worker_id,
                ended = record.ended(),
                "migrate_job: job re-associated with the claiming worker"
            );
            record.info.worker_id = Some(msg.worker_id.clone());
            record.abandoned = false;
            if let Some(state) = record.proto.state.as_mut() {
                state.worker_id = msg.worker_id.clone();
            }
        }
        self.changed();
    }
}

impl Handler<TerminateJob> for Dispatcher {
    type Result = Result<(), DevServerError>;

    fn handle(&mut self, msg: TerminateJob, _: &mut Context<Self>) -> Self::Result {
        // As when a dispatch is deleted: the job ends as a success.
        self.terminate(&msg.job_id, "termination requested")?;
        self.changed();
        Ok(())
    }
}

impl Handler<DropConnections> for Dispatcher {
    type Result = usize;

    fn handle(&mut self, _: DropConnections, _: &mut Context<Self>) -> usize {
        self.workers
            .values()
            .filter_map(|w| w.session.as_ref())
            .filter(|s| s.try_send(Kill).is_ok())
            .count()
    }
}

impl Handler<DropWorker> for Dispatcher {
    type Result = Result<(), DevServerError>;

    fn handle(&mut self, msg: DropWorker, _: &mut Context<Self>) -> Self::Result {
        self.open_session(&msg.worker_id)?
            .try_send(Kill)
            .map_err(|_| DevServerError::WorkerDisconnected(msg.worker_id.clone()))?;
        tracing::info!(
            worker_id = msg.worker_id,
            "dropping the worker's connection"
        );
        Ok(())
    }
}

impl Handler<GetOverview> for Dispatcher {
    type Result = actix::MessageResult<GetOverview>;

    fn handle(&mut self, msg: GetOverview, _: &mut Context<Self>) -> Self::Result {
        let mut entries: Vec<&WorkerEntry> = self.workers.values().collect();
        entries.sort_by_key(|w| w.seq);
        let skip = entries.len().saturating_sub(msg.max_workers);
        let workers = entries[skip..]
            .iter()
            .map(|w| {
                // what the dashboard shows, without the per-worker histories
                // it does not
                let info = WorkerInfo {
                    last_update: None,
                    migrated_jobs: Vec::new(),
                    availability_answers: Vec::new(),
                    ..w.info.clone()
                };
                (info, w.load_history.samples().copied().collect())
            })
            .collect();
        let jobs = self
            .job_order
            .iter()
            .rev()
            .filter_map(|id| self.jobs.get(id))
            .take(msg.max_jobs)
            .map(|r| (r.info.clone(), r.abandoned))
            .collect();
        actix::MessageResult(Overview {
            workers,
            rooms: self.rooms.summaries(msg.max_rooms),
            jobs,
            counts: self.counts(),
            fault_mode: self.faults.is_some(),
        })
    }
}

impl Handler<InjectFrame> for Dispatcher {
    type Result = Result<(), DevServerError>;

    fn handle(&mut self, msg: InjectFrame, _: &mut Context<Self>) -> Self::Result {
        self.open_session(&msg.worker_id)?
            .try_send(Inject(msg.frame))
            .map_err(|_| DevServerError::WorkerDisconnected(msg.worker_id))
    }
}

impl Handler<ListWorkers> for Dispatcher {
    type Result = Vec<WorkerInfo>;

    fn handle(&mut self, _: ListWorkers, _: &mut Context<Self>) -> Vec<WorkerInfo> {
        self.worker_infos()
    }
}

impl Handler<ListJobs> for Dispatcher {
    type Result = Vec<JobInfo>;

    fn handle(&mut self, _: ListJobs, _: &mut Context<Self>) -> Vec<JobInfo> {
        self.job_order
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|j| j.info.clone())
            .collect()
    }
}

impl Handler<GetJob> for Dispatcher {
    type Result = Option<JobInfo>;

    fn handle(&mut self, msg: GetJob, _: &mut Context<Self>) -> Option<JobInfo> {
        self.jobs.get(&msg.0).map(|j| j.info.clone())
    }
}

impl Handler<GetCounts> for Dispatcher {
    type Result = actix::MessageResult<GetCounts>;

    fn handle(&mut self, _: GetCounts, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.counts())
    }
}

impl Handler<Shutdown> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        for job_id in self.pending.keys().cloned().collect::<Vec<_>>() {
            self.finish(&job_id, Err(DispatchError::Stopped));
        }
        ctx.stop();
    }
}

impl Handler<BenchTimings> for Dispatcher {
    type Result = actix::MessageResult<BenchTimings>;

    fn handle(&mut self, msg: BenchTimings, _: &mut Context<Self>) -> Self::Result {
        let taken = (
            self.timings.availability.0.clone(),
            self.timings.job_start.0.clone(),
        );
        if msg.reset {
            self.timings = Timings::default();
        }
        actix::MessageResult(taken)
    }
}

impl Handler<JobProgress> for Dispatcher {
    type Result = actix::MessageResult<JobProgress>;

    fn handle(&mut self, msg: JobProgress, _: &mut Context<Self>) -> Self::Result {
        let mut progress = Progress::default();
        for id in msg.0.iter() {
            match self.jobs.get(id) {
                Some(job) if !job.ended() => {
                    // the worker said RUNNING (the record itself is RUNNING
                    // from the assignment on, as on the real server)
                    if job
                        .info
                        .updates
                        .iter()
                        .any(|u| u.status == JobStatus::JsRunning)
                    {
                        progress.started += 1;
                    }
                }
                _ => {
                    progress.started += 1;
                    progress.ended += 1;
                }
            }
        }
        actix::MessageResult(progress)
    }
}

impl Handler<GetFaultReport> for Dispatcher {
    type Result = Option<FaultReport>;

    fn handle(&mut self, _: GetFaultReport, _: &mut Context<Self>) -> Self::Result {
        let faults = self.faults.as_ref()?;
        Some(faults.report(|id| self.jobs.get(id).map(|j| j.ended())))
    }
}

impl Handler<TerminateAll> for Dispatcher {
    type Result = Vec<String>;

    fn handle(&mut self, msg: TerminateAll, _: &mut Context<Self>) -> Vec<String> {
        let ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| !j.ended() && j.assigned && j.info.agent_name == msg.agent_name)
            .map(|(id, _)| id.clone())
            .collect();
        let terminated: Vec<String> = ids
            .into_iter()
            .filter(|id| self.terminate(id, "terminated by the benchmark").is_ok())
            .collect();
        self.changed();
        terminated
    }
}

fn push_bounded<T>(list: &mut Vec<T>, item: T) {
    if list.len() >= MAX_PER_WORKER_HISTORY {
        list.remove(0);
    }
    list.push(item);
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}
