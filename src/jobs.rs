//! The job table: every job id the worker knows, and the one place its state
//! is kept.
//!
//! A job enters the table when the server offers it, when the server assigns
//! it without an offer, when the application spawns it, or when the worker
//! resumes it from a checkpoint after a restart; it leaves when its final
//! status is confirmed by the server (or, for a local job, as soon as the
//! status is produced: the server does not know it). In between it is in
//! exactly one [`JobState`]:
//!
//! ```text
//! offered ──assign──► starting ──started──► running
//!    │   └─(no slot)─► queued ──grant──┘        │ (actor crash: back to starting)
//!    │                   │                      │
//!    └─withdraw (gone)   └──────finish──────────┴──► finishing ──confirm──► (gone)
//! ```
//!
//! Everything the rest of the worker counts is derived from the rows here:
//! the slots the load reporter reports, whether a job may start now, whether
//! the queue has room, which jobs `migrate_job` claims after a reconnect,
//! which statuses are still owed to the server. Nothing is kept in step by
//! hand elsewhere.
//!
//! The table also knows whether the worker is registered, so that it can say
//! what to send at once and what waits for [`JobTable::registered`], which
//! hands back, in order, the messages a fresh registration owes the server.
//! Final statuses stay in their rows until [`JobTable::confirm`]: a status
//! written to a socket that died is sent again after the next registration.
//!
//! Pure: time is passed in, nothing here performs I/O. The WorkerActor
//! drives it; the QueueActor keeps the priority order of the queued rows.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use livekit_protocol::{Job, JobStatus, MigrateJobRequest, UpdateJobStatus, worker_message};

use crate::limits::Reservation;
use crate::queue::JobPriority;
use crate::recovery::Checkpoint;

/// True for SUCCESS and FAILED: the statuses that end a job on the server.
pub fn is_final(status: i32) -> bool {
    status == JobStatus::JsSuccess as i32 || status == JobStatus::JsFailed as i32
}

/// Where a job came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobOrigin {
    /// Dispatched by the server: its statuses go to the server.
    Server,
    /// Started by the application with `SpawnJob`: the server does not know
    /// it, so its statuses go only to subscribers.
    Local,
    /// A server job resumed from its checkpoint after the worker restarted:
    /// claimed with `migrate_job`, its statuses go to the server.
    Recovered,
    /// Pulled from the fleet's shared queue (`fleet::RedisJobQueue`), or
    /// taken over from a worker that pulled it: the server does not know
    /// it, so its statuses go only to subscribers; its checkpoint lives in
    /// the fleet's store, and dropping it at the job's end acknowledges the
    /// queue item.
    Fleet,
}

impl JobOrigin {
    /// True when the server knows the job: its statuses are sent there.
    pub fn is_servers(self) -> bool {
        matches!(self, JobOrigin::Server | JobOrigin::Recovered)
    }

    /// True when the job's checkpoint is kept in the worker's store, where
    /// another run (a restart, a takeover) finds it; a local job's lives
    /// only in its actor.
    pub fn keeps_record(self) -> bool {
        !matches!(self, JobOrigin::Local)
    }
}

/// A fresh job id for a job no server named: `prefix` and twelve letters or
/// digits (`LJ_` for a local job, `FJ_` for one of the fleet's queue).
pub(crate) fn fresh_id(prefix: &str) -> String {
    crate::options::random_id(prefix, crate::options::ALPHANUMERIC, 12)
}

/// The state of a job the worker knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// The server offered it. Until `answered`, the handler is deciding; once
    /// answered (available), the worker waits for the assignment. It holds a
    /// slot, or — `over_capacity`, high-priority work taken beyond the slots
    /// — a place in the queue.
    Offered {
        /// The worker said `available: true`.
        answered: bool,
        /// Taken beyond the free slots: it will wait in the queue.
        over_capacity: bool,
        /// Which offer this is: a decision or timeout for an earlier offer
        /// of the same id must not act on this one.
        ticket: u64,
    },
    /// Accepted, waiting in the queue for a slot.
    Queued,
    /// A slot is taken and its JobActor is being started (or restarted after
    /// the actor itself crashed).
    Starting,
    /// Its handler runs.
    Running,
    /// Its final status is produced; the server has not yet confirmed it.
    Finishing,
}

impl JobState {
    /// The lowercase name, for logs, metrics and `/worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Offered { .. } => "offered",
            JobState::Queued => "queued",
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Finishing => "finishing",
        }
    }

    /// True for the states that hold a running slot: starting and running.
    pub fn is_running(self) -> bool {
        matches!(self, JobState::Starting | JobState::Running)
    }
}

/// Everything needed to (re)start a job's actor.
#[derive(Clone)]
pub struct JobSpec {
    /// The job, as assigned (or spawned, or recovered).
    pub job: Arc<Job>,
    /// Where to join the room.
    pub url: String,
    /// The room token. Left out of `Debug`.
    pub token: String,
    /// The participant identity it was accepted under, if known.
    pub identity: Option<String>,
}

impl fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSpec")
            .field("job_id", &self.job.id)
            .field("url", &self.url)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// How far a job's RUNNING status has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunningNote {
    /// Not produced yet: the handler has not started.
    NotYet,
    /// Produced while disconnected: sent after the next registration.
    Owed,
    /// Sent (or the job is local, which the server does not hear about).
    Sent,
}

/// One job's row. The attachment `A` is the driver's own per-job data (the
/// WorkerActor keeps its actor's address there); the table never looks at it.
pub struct JobRow<A> {
    origin: JobOrigin,
    priority: JobPriority,
    room: String,
    state: JobState,
    /// When it entered its current state.
    since: Instant,
    /// Its order of entry into the table, then into `finishing`: queued rows
    /// are rebuilt and final statuses re-sent in this order.
    seq: u64,
    /// How many times the handler was restarted (panic, retryable error).
    restarts: u32,
    running: RunningNote,
    /// The identity an offer was accepted under, until the assignment.
    identity: Option<String>,
    /// The job is being ended from outside (terminated, or the worker shuts
    /// down) with this status: if its actor dies meanwhile, the job ends
    /// with it instead of running again.
    ending: Option<FinalStatus>,
    spec: Option<JobSpec>,
    /// Its checkpoint handle: a recovered job's from its admission, any
    /// other's from its first start; kept while it is live and while its
    /// final status is owed (the record's claim removes the record then).
    checkpoint: Option<Checkpoint>,
    reservation: Option<Reservation>,
    final_status: Option<UpdateJobStatus>,
    /// The driver's data for this job.
    pub attachment: A,
}

impl<A> fmt::Debug for JobRow<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobRow")
            .field("origin", &self.origin)
            .field("priority", &self.priority)
            .field("room", &self.room)
            .field("state", &self.state)
            .field("restarts", &self.restarts)
            .finish_non_exhaustive()
    }
}

impl<A> JobRow<A> {
    /// Where it came from.
    pub fn origin(&self) -> JobOrigin {
        self.origin
    }

    /// Its priority.
    pub fn priority(&self) -> JobPriority {
        self.priority
    }

    /// Its room's name.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Its state.
    pub fn state(&self) -> JobState {
        self.state
    }

    /// When it entered its state.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// How many times its handler was restarted.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// What its actor is started from (absent while it is only offered).
    pub fn spec(&self) -> Option<&JobSpec> {
        self.spec.as_ref()
    }

    /// What it reserved of the resource limits, held until it finishes.
    pub fn reservation(&self) -> Option<&Reservation> {
        self.reservation.as_ref()
    }

    /// Its checkpoint handle, once it has one (see [`JobTable::set_checkpoint`]).
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }
}

/// How many jobs are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Offered by the server, deciding or waiting for the assignment.
    pub offered: usize,
    /// Waiting in the queue for a slot.
    pub queued: usize,
    /// Their actor is starting.
    pub starting: usize,
    /// Their handler runs.
    pub running: usize,
    /// Final status produced, not yet confirmed by the server.
    pub finishing: usize,
}

/// Why a job was not taken into the table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The id is already in the table, in any state.
    #[error("a job with id {0} already exists")]
    Duplicate(String),
    /// Every slot is taken and the queue has no room (or queueing is off).
    #[error("every slot is taken and the queue has no room")]
    AtCapacity,
}

/// Where an admitted or assigned job goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A slot is free: start its actor now (it is `Starting`).
    Start,
    /// No slot: it is `Queued`; put it in the queue at its priority.
    Queue(JobPriority),
}

/// What [`JobTable::assign`] decided.
#[derive(Debug)]
pub enum Assignment {
    /// Start or queue it.
    Placed(Placement),
    /// The job is already past its offer (queued, running, finishing): a
    /// repeated assignment, ignored.
    Duplicate,
    /// It was never offered and no slot is free: it is failed at once.
    Refused(Report),
}

/// What [`JobTable::terminate`] did.
#[derive(Debug)]
pub enum Termination {
    /// It was only offered: the offer is withdrawn (its slot and
    /// reservation freed), no status is owed.
    Withdrawn,
    /// It was queued: it ended without running.
    Ended(Finished),
    /// It is starting or running: its actor must wind it down and report.
    WindDown,
    /// Unknown, or already finishing: nothing to do.
    Ignored,
}

/// A status the table produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The `update_job`.
    pub update: UpdateJobStatus,
    /// Where the job came from (subscribers are told either way).
    pub origin: JobOrigin,
    /// Send it to the server now (its origin is the server's and the worker
    /// is registered); otherwise it waits for the next registration, or, for
    /// a local job, goes nowhere but to subscribers.
    pub send_now: bool,
}

/// What [`JobTable::finish`] did.
#[derive(Debug)]
pub struct Finished {
    /// The final status.
    pub report: Report,
    /// It was queued: take it out of the queue.
    pub was_queued: bool,
    /// How long its handler had been running, if it was.
    pub ran: Option<std::time::Duration>,
    /// The oldest unconfirmed final status had to make room for this one
    /// (the table's bound): that job's status is lost.
    pub evicted: Option<String>,
    /// The checkpoint handle of a job whose row left the table as it
    /// finished (one of no server's): what its record is held by.
    pub checkpoint: Option<Checkpoint>,
}

/// A final status: SUCCESS, or FAILED with an error text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalStatus {
    /// SUCCESS or FAILED.
    pub status: JobStatus,
    /// The error text (empty for SUCCESS).
    pub error: String,
}

impl FinalStatus {
    /// SUCCESS.
    pub fn success() -> Self {
        Self {
            status: JobStatus::JsSuccess,
            error: String::new(),
        }
    }

    /// FAILED with `error`.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            status: JobStatus::JsFailed,
            error: error.into(),
        }
    }

    fn update(&self, job_id: &str) -> UpdateJobStatus {
        UpdateJobStatus {
            job_id: job_id.to_owned(),
            status: self.status as i32,
            error: self.error.clone(),
        }
    }
}

/// A new job for [`JobTable::admit`]: one the application spawned, or one
/// resumed from its checkpoint.
pub struct Admission {
    /// The job id.
    pub id: String,
    /// [`JobOrigin::Local`] or [`JobOrigin::Recovered`].
    pub origin: JobOrigin,
    /// Its place in line.
    pub priority: JobPriority,
    /// Its share of the resource limits, held until it finishes.
    pub reservation: Option<Reservation>,
    /// What its actor is started from.
    pub spec: JobSpec,
    /// The checkpoint a recovered job resumes from.
    pub checkpoint: Option<Checkpoint>,
}

/// The numbers derived from the rows' states, kept as the rows change so
/// that reading them costs nothing however many jobs there are. Every change
/// of a row's state goes through [`Tally::add`] and [`Tally::remove`]; the
/// property tests check that the tally always equals a recount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    counts: JobCounts,
    /// Offers holding a slot (not taken over capacity).
    offered_in_slot: usize,
    /// Offers taken over capacity, on their way to the queue.
    offered_over: usize,
    /// Queued jobs by priority, indexed as [`JobPriority::ALL`].
    queued_by_priority: [usize; 4],
}

impl Tally {
    fn count(&mut self, state: JobState, priority: JobPriority, up: bool) {
        let step = |n: &mut usize| {
            if up {
                *n += 1;
            } else {
                *n -= 1;
            }
        };
        match state {
            JobState::Offered { over_capacity, .. } => {
                step(&mut self.counts.offered);
                step(if over_capacity {
                    &mut self.offered_over
                } else {
                    &mut self.offered_in_slot
                });
            }
            JobState::Queued => {
                step(&mut self.counts.queued);
                step(&mut self.queued_by_priority[priority.index()]);
            }
            JobState::Starting => step(&mut self.counts.starting),
            JobState::Running => step(&mut self.counts.running),
            JobState::Finishing => step(&mut self.counts.finishing),
        }
    }

    fn add(&mut self, state: JobState, priority: JobPriority) {
        self.count(state, priority, true);
    }

    fn remove(&mut self, state: JobState, priority: JobPriority) {
        self.count(state, priority, false);
    }

    fn recount<'a, A: 'a>(rows: impl Iterator<Item = &'a JobRow<A>>) -> Self {
        let mut tally = Tally::default();
        for row in rows {
            tally.add(row.state, row.priority);
        }
        tally
    }
}

/// The job table. See the module docs.
pub struct JobTable<A = ()> {
    rows: HashMap<String, JobRow<A>>,
    tally: Tally,
    max_jobs: usize,
    queue_capacity: usize,
    /// The most unconfirmed final statuses kept; past it the oldest is lost.
    finishing_cap: usize,
    /// Slots granted to "the next queued job" whose answer from the queue is
    /// on its way.
    grants: usize,
    connected: bool,
    next_seq: u64,
    evicted: u64,
    /// Server jobs that ended here and left the table: a repeated offer or
    /// assignment of one (a duplicate on the wire) is not a new job.
    ended: RecentlyEnded,
}

/// Server jobs whose rows left the table, the newest [`RECENTLY_ENDED`]
/// remembered.
#[derive(Debug, Default)]
struct RecentlyEnded {
    order: std::collections::VecDeque<String>,
    ids: std::collections::HashSet<String>,
}

/// How many ended server jobs a worker remembers, to know a repeated offer
/// or assignment of one for what it is. A repeat arrives within moments of
/// the original; this covers thousands of jobs ending in between, for a few
/// tens of kilobytes.
pub const RECENTLY_ENDED: usize = 4096;

impl RecentlyEnded {
    fn note(&mut self, id: &str) {
        if !self.ids.insert(id.to_owned()) {
            return;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > RECENTLY_ENDED
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

/// Moves a row to `state`, keeping the tally in step.
fn move_to<A>(tally: &mut Tally, row: &mut JobRow<A>, state: JobState) {
    tally.remove(row.state, row.priority);
    tally.add(state, row.priority);
    row.state = state;
}

impl<A: Default> JobTable<A> {
    /// Takes a row out of the table, keeping the tally in step.
    fn take(&mut self, id: &str) -> Option<JobRow<A>> {
        let row = self.rows.remove(id)?;
        self.tally.remove(row.state, row.priority);
        Some(row)
    }

    /// An empty table for a worker of `max_jobs` slots and a queue of
    /// `queue_capacity` (0: no queue), not registered.
    pub fn new(max_jobs: usize, queue_capacity: usize) -> Self {
        // every job produces at most one final status, and jobs are bounded
        // by the slots and the queue; the slack covers jobs that end while
        // others start during one outage
        let finishing_cap = max_jobs
            .saturating_add(queue_capacity)
            .saturating_mul(2)
            .saturating_add(64);
        Self {
            rows: HashMap::new(),
            tally: Tally::default(),
            max_jobs,
            queue_capacity,
            finishing_cap,
            grants: 0,
            connected: false,
            next_seq: 0,
            evicted: 0,
            ended: RecentlyEnded::default(),
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn insert(
        &mut self,
        id: &str,
        origin: JobOrigin,
        priority: JobPriority,
        room: String,
        state: JobState,
        now: Instant,
    ) -> &mut JobRow<A> {
        let seq = self.seq();
        let row = JobRow {
            origin,
            priority,
            room,
            state,
            since: now,
            seq,
            restarts: 0,
            running: RunningNote::NotYet,
            identity: None,
            ending: None,
            spec: None,
            checkpoint: None,
            reservation: None,
            final_status: None,
            attachment: A::default(),
        };
        self.tally.add(state, priority);
        self.rows.entry(id.to_owned()).insert_entry(row).into_mut()
    }

    /// The server offers `id`. It takes a slot if one is free and nothing is
    /// queued ahead of it; otherwise, if `may_queue` (high-priority work)
    /// and the queue has room, a place in the queue. The answer's ticket
    /// ties the decision to this offer.
    pub fn offer(
        &mut self,
        id: &str,
        priority: JobPriority,
        room: &str,
        may_queue: bool,
        now: Instant,
    ) -> Result<u64, Refusal> {
        if self.rows.contains_key(id) || self.ended.contains(id) {
            return Err(Refusal::Duplicate(id.to_owned()));
        }
        let over_capacity = self.slots_full();
        if over_capacity && !(may_queue && self.queue_has_room()) {
            return Err(Refusal::AtCapacity);
        }
        let ticket = self.next_seq + 1;
        self.insert(
            id,
            JobOrigin::Server,
            priority,
            room.to_owned(),
            JobState::Offered {
                answered: false,
                over_capacity,
                ticket,
            },
            now,
        );
        Ok(ticket)
    }

    /// The worker said `available: true` to offer `ticket` of `id`, at
    /// `priority`, as participant `identity`, holding `reservation`. False
    /// when that offer is gone (it was withdrawn, or the id was offered again
    /// since).
    pub fn answer(
        &mut self,
        id: &str,
        ticket: u64,
        priority: JobPriority,
        identity: Option<String>,
        reservation: Option<Reservation>,
        now: Instant,
    ) -> bool {
        let Some(row) = self.rows.get_mut(id) else {
            return false;
        };
        match row.state {
            JobState::Offered {
                answered: false,
                over_capacity,
                ticket: current,
            } if current == ticket => {
                move_to(
                    &mut self.tally,
                    row,
                    JobState::Offered {
                        answered: true,
                        over_capacity,
                        ticket,
                    },
                );
                row.priority = priority;
                row.identity = identity;
                row.reservation = reservation;
                row.since = now;
                true
            }
            _ => false,
        }
    }

    /// The offer `ticket` of `id`, if it is still the current one.
    pub fn offer_of(&self, id: &str, ticket: u64) -> Option<&JobRow<A>> {
        self.rows.get(id).filter(|row| {
            matches!(row.state, JobState::Offered { ticket: current, .. } if current == ticket)
        })
    }

    /// Takes back an offer (declined, timed out, terminated before its
    /// assignment, or forgotten by the server with the connection). Its slot
    /// and reservation are freed. `None` unless `id` is offered (and, with a
    /// ticket, that offer).
    pub fn withdraw(&mut self, id: &str, ticket: Option<u64>) -> Option<JobRow<A>> {
        let row = self.rows.get(id)?;
        match row.state {
            JobState::Offered {
                ticket: current, ..
            } if ticket.is_none_or(|t| t == current) => self.take(id),
            _ => None,
        }
    }

    /// Lets go of a job another worker has claimed (the store fenced this
    /// worker's copy): the row leaves the table with no final status — the
    /// new holder reports the job — and its slot and reservation are freed.
    /// `None` unless `id` is starting or running.
    pub fn relinquish(&mut self, id: &str) -> Option<JobRow<A>> {
        match self.rows.get(id)?.state {
            JobState::Starting | JobState::Running => self.take(id),
            _ => None,
        }
    }

    /// The server assigned `id`. An offered job starts in its slot, or — if
    /// it was taken over capacity and no slot has freed since — is queued. A
    /// job never offered starts if a slot is free and is failed otherwise. A
    /// job already past its offer is a duplicate.
    pub fn assign(
        &mut self,
        id: &str,
        spec: JobSpec,
        priority: JobPriority,
        now: Instant,
    ) -> Assignment {
        let can_start = self.can_start();
        let connected = self.connected;
        match self.rows.get_mut(id) {
            Some(row) => match row.state {
                JobState::Offered { over_capacity, .. } => {
                    let mut spec = spec;
                    if spec.identity.is_none() {
                        spec.identity = row.identity.take();
                    }
                    row.spec = Some(spec);
                    row.since = now;
                    let (state, placement) = if !over_capacity || can_start {
                        (JobState::Starting, Placement::Start)
                    } else {
                        (JobState::Queued, Placement::Queue(row.priority))
                    };
                    move_to(&mut self.tally, row, state);
                    Assignment::Placed(placement)
                }
                _ => Assignment::Duplicate,
            },
            None if self.ended.contains(id) => Assignment::Duplicate,
            None => {
                let room = crate::handler::room_name(&spec.job).to_owned();
                if can_start {
                    let row = self.insert(
                        id,
                        JobOrigin::Server,
                        priority,
                        room,
                        JobState::Starting,
                        now,
                    );
                    row.spec = Some(spec);
                    return Assignment::Placed(Placement::Start);
                }
                let status = FinalStatus::failed("the worker is at capacity");
                let row = self.insert(
                    id,
                    JobOrigin::Server,
                    priority,
                    room,
                    JobState::Finishing,
                    now,
                );
                let update = status.update(id);
                row.final_status = Some(update.clone());
                row.running = RunningNote::Sent;
                Assignment::Refused(Report {
                    update,
                    origin: JobOrigin::Server,
                    send_now: connected,
                })
            }
        }
    }

    /// A job the application spawned, or one resumed from its checkpoint:
    /// started if a slot is free, queued if the queue has room, refused
    /// otherwise (the reservation is then dropped).
    pub fn admit(&mut self, admission: Admission, now: Instant) -> Result<Placement, Refusal> {
        let Admission {
            id,
            origin,
            priority,
            reservation,
            spec,
            checkpoint,
        } = admission;
        if self.rows.contains_key(&id) || (origin.is_servers() && self.ended.contains(&id)) {
            return Err(Refusal::Duplicate(id));
        }
        let (state, placement) = if self.can_start() {
            (JobState::Starting, Placement::Start)
        } else if self.queue_has_room() {
            (JobState::Queued, Placement::Queue(priority))
        } else {
            return Err(Refusal::AtCapacity);
        };
        let room = crate::handler::room_name(&spec.job).to_owned();
        let row = self.insert(&id, origin, priority, room, state, now);
        row.spec = Some(spec);
        row.checkpoint = checkpoint;
        row.reservation = reservation;
        Ok(placement)
    }

    /// A job of the server's that the worker will not run (a checkpoint the
    /// recovery handler declined after a restart): it enters the table
    /// already `Finishing` with `status`, so that the server hears of it
    /// after the next registration like any other final status.
    pub fn fail_unstarted(
        &mut self,
        id: &str,
        room: &str,
        status: FinalStatus,
        now: Instant,
    ) -> Result<Report, Refusal> {
        if self.rows.contains_key(id) {
            return Err(Refusal::Duplicate(id.to_owned()));
        }
        let connected = self.connected;
        let update = status.update(id);
        let row = self.insert(
            id,
            JobOrigin::Recovered,
            JobPriority::default(),
            room.to_owned(),
            JobState::Finishing,
            now,
        );
        row.final_status = Some(update.clone());
        row.running = RunningNote::Sent;
        let report = Report {
            update,
            origin: JobOrigin::Recovered,
            send_now: connected,
        };
        self.evict_past_cap();
        Ok(report)
    }

    /// Asks for a slot for the next queued job: true (and the slot is held
    /// for it) when one is free and some queued job has no grant yet. The
    /// queue then names the job; pass its answer to [`end_grant`](Self::end_grant).
    pub fn begin_grant(&mut self) -> bool {
        if self.counts().queued > self.grants && self.can_start() {
            self.grants += 1;
            true
        } else {
            false
        }
    }

    /// The queue's answer to a grant: the job it chose, if any. True when
    /// that job is queued and now takes the slot (it is `Starting`).
    pub fn end_grant(&mut self, id: Option<&str>, now: Instant) -> bool {
        self.grants = self.grants.saturating_sub(1);
        let Some(row) = id.and_then(|id| self.rows.get_mut(id)) else {
            return false;
        };
        if row.state != JobState::Queued {
            return false;
        }
        move_to(&mut self.tally, row, JobState::Starting);
        row.since = now;
        true
    }

    /// The server (or a shutdown) ends `id`, whatever its state: an offer is
    /// withdrawn (it was never assigned: no status is owed), a queued job is
    /// finished with `status` at once (it never runs), a starting or running
    /// job must be wound down by its actor, which then reports its end.
    pub fn terminate(&mut self, id: &str, status: FinalStatus, now: Instant) -> Termination {
        match self.state(id) {
            Some(JobState::Offered { .. }) => match self.withdraw(id, None) {
                Some(_) => Termination::Withdrawn,
                None => Termination::Ignored,
            },
            Some(JobState::Queued) => match self.finish(id, status, now) {
                Some(finished) => Termination::Ended(finished),
                None => Termination::Ignored,
            },
            Some(JobState::Starting | JobState::Running) => {
                if let Some(row) = self.rows.get_mut(id) {
                    // the first reason to end it is the one it ends with
                    row.ending.get_or_insert(status);
                }
                Termination::WindDown
            }
            Some(JobState::Finishing) | None => Termination::Ignored,
        }
    }

    /// The status a job being wound down ends with, if it is being ended.
    pub fn ending(&self, id: &str) -> Option<&FinalStatus> {
        self.rows.get(id)?.ending.as_ref()
    }

    /// The final status of a finishing job, owed to the server until it
    /// confirms it.
    pub fn final_status(&self, id: &str) -> Option<&UpdateJobStatus> {
        self.rows.get(id)?.final_status.as_ref()
    }

    /// A queued job waited longer than the queue allows: it is finished with
    /// `status`. `None` if it is no longer queued.
    pub fn expire(&mut self, id: &str, status: FinalStatus, now: Instant) -> Option<Finished> {
        if self.state(id) != Some(JobState::Queued) {
            return None;
        }
        self.finish(id, status, now)
    }

    /// Gives a job its checkpoint handle (at its first start, or to a
    /// final status re-reported from a record): every actor the job has
    /// runs on it, and its claim removes the record at the job's end.
    pub fn set_checkpoint(&mut self, id: &str, checkpoint: Checkpoint) {
        if let Some(row) = self.rows.get_mut(id) {
            row.checkpoint = Some(checkpoint);
        }
    }

    /// The job's handler started. The first time, its RUNNING status: to
    /// send now, or owed to the next registration.
    pub fn started(&mut self, id: &str, now: Instant) -> Option<Report> {
        let connected = self.connected;
        let row = self.rows.get_mut(id)?;
        if row.state != JobState::Starting {
            return None;
        }
        move_to(&mut self.tally, row, JobState::Running);
        row.since = now;
        if row.running != RunningNote::NotYet {
            return None; // an actor restarted after a crash: RUNNING was said
        }
        let send_now = connected && row.origin.is_servers();
        row.running = if send_now || !row.origin.is_servers() {
            RunningNote::Sent
        } else {
            RunningNote::Owed
        };
        Some(Report {
            update: UpdateJobStatus {
                job_id: id.to_owned(),
                status: JobStatus::JsRunning as i32,
                error: String::new(),
            },
            origin: row.origin,
            send_now,
        })
    }

    /// The job's handler was restarted inside its actor (a panic or a
    /// retryable error); answers how many restarts it has had.
    pub fn restarted(&mut self, id: &str) -> Option<u32> {
        let row = self.rows.get_mut(id)?;
        if !row.state.is_running() {
            return None;
        }
        row.restarts += 1;
        Some(row.restarts)
    }

    /// The job's actor died without producing a final status: the job keeps
    /// its slot and goes back to `Starting` for a new actor. False unless it
    /// was starting or running and not being ended (a job being ended ends:
    /// see [`ending`](Self::ending)).
    pub fn crashed(&mut self, id: &str, now: Instant) -> bool {
        let Some(row) = self.rows.get_mut(id) else {
            return false;
        };
        if !row.state.is_running() || row.ending.is_some() {
            return false;
        }
        move_to(&mut self.tally, row, JobState::Starting);
        row.since = now;
        true
    }

    /// The job ended (from queued, starting or running) with `status`. Its
    /// slot and reservation are freed. A server job's row stays `Finishing`
    /// until the server confirms the status; a local job leaves at once.
    /// `None` when the job is not in one of those states.
    pub fn finish(&mut self, id: &str, status: FinalStatus, now: Instant) -> Option<Finished> {
        let connected = self.connected;
        let seq = self.seq();
        let row = self.rows.get_mut(id)?;
        let was_queued = match row.state {
            JobState::Queued => true,
            JobState::Starting | JobState::Running => false,
            JobState::Offered { .. } | JobState::Finishing => return None,
        };
        let ran =
            (row.state == JobState::Running).then(|| now.saturating_duration_since(row.since));
        let update = status.update(id);
        let origin = row.origin;
        let report = Report {
            update: update.clone(),
            origin,
            send_now: connected && origin.is_servers(),
        };
        if !origin.is_servers() {
            let checkpoint = self.take(id).and_then(|row| row.checkpoint);
            return Some(Finished {
                report,
                was_queued,
                ran,
                evicted: None,
                checkpoint,
            });
        }
        move_to(&mut self.tally, row, JobState::Finishing);
        row.since = now;
        row.seq = seq;
        row.reservation = None;
        row.spec = None;
        row.ending = None;
        row.final_status = Some(update);
        let evicted = self.evict_past_cap();
        Some(Finished {
            report,
            was_queued,
            ran,
            evicted,
            checkpoint: None,
        })
    }

    /// Keeps unconfirmed final statuses within their bound: the oldest goes.
    fn evict_past_cap(&mut self) -> Option<String> {
        if self.counts().finishing <= self.finishing_cap {
            return None;
        }
        let oldest = self
            .rows
            .iter()
            .filter(|(_, row)| row.state == JobState::Finishing)
            .min_by_key(|(_, row)| row.seq)
            .map(|(id, _)| id.clone())?;
        self.take(&oldest);
        self.ended.note(&oldest);
        self.evicted += 1;
        Some(oldest)
    }

    /// The server has read these final statuses: their rows leave the table.
    /// Answers how many did.
    pub fn confirm<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> usize {
        let mut confirmed = 0;
        for id in ids {
            if self
                .rows
                .get(id)
                .is_some_and(|row| row.state == JobState::Finishing)
            {
                self.take(id);
                self.ended.note(id);
                confirmed += 1;
            }
        }
        confirmed
    }

    /// The connection is lost. The server forgets its offers with it: they
    /// are withdrawn (their ids are returned). Statuses wait from now on.
    pub fn disconnected(&mut self) -> Vec<String> {
        self.connected = false;
        let offered: Vec<String> = self
            .rows
            .iter()
            .filter(|(_, row)| matches!(row.state, JobState::Offered { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &offered {
            self.take(id);
        }
        offered
    }

    /// The worker registered. Answers what the new registration owes the
    /// server, in order: `migrate_job` for every job of the server's it
    /// holds (queued, starting, running), then the RUNNING statuses produced
    /// while disconnected, then every final status not yet confirmed, oldest
    /// first.
    pub fn registered(&mut self) -> Vec<worker_message::Message> {
        self.connected = true;
        let mut messages = Vec::new();
        let claimed = self.claimed_ids();
        if !claimed.is_empty() {
            messages.push(worker_message::Message::MigrateJob(MigrateJobRequest {
                job_ids: claimed,
            }));
        }
        let mut owed: Vec<(u64, &String, &mut JobRow<A>)> = self
            .rows
            .iter_mut()
            .filter(|(_, row)| {
                row.origin.is_servers()
                    && (row.running == RunningNote::Owed || row.state == JobState::Finishing)
            })
            .map(|(id, row)| (row.seq, id, row))
            .collect();
        owed.sort_by_key(|(seq, _, _)| *seq);
        let mut finals = Vec::new();
        for (_, id, row) in owed {
            if row.running == RunningNote::Owed {
                row.running = RunningNote::Sent;
                messages.push(worker_message::Message::UpdateJob(UpdateJobStatus {
                    job_id: id.clone(),
                    status: JobStatus::JsRunning as i32,
                    error: String::new(),
                }));
            }
            if let Some(update) = &row.final_status {
                finals.push(worker_message::Message::UpdateJob(update.clone()));
            }
        }
        messages.extend(finals);
        messages
    }

    /// The server's jobs the worker holds (queued, starting, running), for
    /// `migrate_job`, sorted.
    pub fn claimed_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .rows
            .iter()
            .filter(|(_, row)| {
                row.origin.is_servers()
                    && matches!(
                        row.state,
                        JobState::Queued | JobState::Starting | JobState::Running
                    )
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// True while registered (as far as the table was told).
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The row of `id`.
    pub fn get(&self, id: &str) -> Option<&JobRow<A>> {
        self.rows.get(id)
    }

    /// The row of `id`, to change its attachment.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut JobRow<A>> {
        self.rows.get_mut(id)
    }

    /// The state of `id`.
    pub fn state(&self, id: &str) -> Option<JobState> {
        self.rows.get(id).map(|row| row.state)
    }

    /// Every row.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &JobRow<A>)> {
        self.rows.iter().map(|(id, row)| (id.as_str(), row))
    }

    /// The ids in states for which `pred` holds, sorted.
    pub fn ids_where(&self, pred: impl Fn(&JobRow<A>) -> bool) -> Vec<String> {
        let mut ids: Vec<String> = self
            .rows
            .iter()
            .filter(|(_, row)| pred(row))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The queued jobs with their priorities and queueing times, in the
    /// order they were queued: what rebuilds a queue that lost its heap.
    pub fn queued(&self) -> Vec<(String, JobPriority, Instant)> {
        let mut queued: Vec<(u64, String, JobPriority, Instant)> = self
            .rows
            .iter()
            .filter(|(_, row)| row.state == JobState::Queued)
            .map(|(id, row)| (row.seq, id.clone(), row.priority, row.since))
            .collect();
        queued.sort_by_key(|(seq, ..)| *seq);
        queued
            .into_iter()
            .map(|(_, id, priority, since)| (id, priority, since))
            .collect()
    }

    /// Jobs in each state.
    pub fn counts(&self) -> JobCounts {
        self.tally.counts
    }

    /// Queued jobs by priority, indexed as [`JobPriority::ALL`].
    pub fn queued_by_priority(&self) -> [usize; 4] {
        self.tally.queued_by_priority
    }

    /// The slots as the load reporter sees them: running (starting
    /// included), and reserved — offers and queued jobs, each of which will
    /// want a slot.
    pub fn slots(&self) -> crate::load::Slots {
        let counts = self.tally.counts;
        crate::load::Slots {
            active: counts.starting + counts.running,
            reserved: counts.offered + counts.queued,
            max: self.max_jobs,
        }
    }

    /// True when no new offer can have a slot: every slot is running,
    /// promised to an offer, or wanted by a queued job.
    fn slots_full(&self) -> bool {
        self.slots().is_full()
    }

    /// True when a job could start now without taking a slot that is held
    /// for an offer or granted to a queued job.
    pub fn can_start(&self) -> bool {
        let counts = self.tally.counts;
        let claims = counts.starting + counts.running + self.tally.offered_in_slot + self.grants;
        claims < self.max_jobs
    }

    /// True when the queue can take one more job (counting offers taken
    /// over capacity, on their way to it).
    pub fn queue_has_room(&self) -> bool {
        let waiting = self.tally.counts.queued + self.tally.offered_over;
        self.queue_capacity > 0 && waiting < self.queue_capacity
    }

    /// True when the numbers kept as rows change equal a recount of the
    /// rows (for tests: every change of state must go through the tally).
    #[doc(hidden)]
    pub fn tally_is_exact(&self) -> bool {
        Tally::recount(self.rows.values()) == self.tally
    }

    /// Grants to the queue in flight.
    pub fn grants(&self) -> usize {
        self.grants
    }

    /// Jobs in the table, in every state.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the worker knows no job.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Final statuses lost to the bound on unconfirmed ones, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The most jobs running at once.
    pub fn max_jobs(&self) -> usize {
        self.max_jobs
    }
}

#[cfg(test)]
mod tests;
