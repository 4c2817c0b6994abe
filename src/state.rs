//! [`WorkerState`]: a snapshot of a worker, plain data.

use livekit_protocol::{JobType, WorkerStatus};

use crate::jobs::JobCounts;

/// A snapshot of a worker, as answered to `GetState`: what the operator's
/// endpoints (`/`, `/ready`, `/worker`) and the tests read.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerState {
    /// The agent name it registers under (empty: the default agent).
    pub agent_name: String,
    /// Room, participant or publisher jobs.
    pub job_type: JobType,
    /// Its instance name (the `worker` label of its metrics).
    pub instance_id: String,
    /// Its labels (`region`, `zone`, …: `WorkerOptions::labels`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The id of the current registration, if registered now.
    pub worker_id: Option<String>,
    /// True while registered with the server.
    pub connected: bool,
    /// How many times the worker has registered (1 + reconnects).
    pub registrations: u64,
    /// The ids of the jobs running now (their actor starting or running),
    /// sorted.
    pub running_jobs: Vec<String>,
    /// Jobs in each state of the job table.
    pub jobs: JobCounts,
    /// Slots held for offered jobs (deciding, or accepted and waiting for
    /// their assignment).
    pub reserved: usize,
    /// The status last computed.
    pub status: WorkerStatus,
    /// The load last computed.
    pub load: f32,
    /// Final statuses the server has not confirmed yet (they are sent again
    /// after a reconnect).
    pub outbox: usize,
    /// Final statuses lost to the bound on unconfirmed ones, since start.
    pub lost_statuses: u64,
    /// Accepted jobs waiting in the queue for a slot.
    pub queued: usize,
    /// Consecutive failed connection attempts (and registrations that did
    /// not last); 0 after a stable registration.
    pub reconnect_failures: u32,
    /// Why the last connection attempt failed, while not registered (a
    /// refused token says so here).
    pub connection_error: Option<String>,
    /// The worker has been unable to reach the server for longer than its
    /// give-up budget (`WorkerOptions::reconnect`); it keeps trying.
    pub unreachable: bool,
    /// Why supervision gave up, if it did: a child crashed past its restart
    /// limit and the worker shut down.
    pub supervision_failure: Option<String>,
    /// The worker drains: it takes no new job and lets its jobs finish.
    pub draining: bool,
    /// The worker is shutting down (after a drain, or at once).
    pub shutting_down: bool,
    /// Why the checkpoint store failed last, while it fails (Redis down, a
    /// full disk): jobs keep running, and checkpoint writes and heartbeats
    /// are retried with backoff. `None` once an operation succeeds.
    pub store_error: Option<String>,
    /// The replica count the fleet should have, as this worker last
    /// computed it from the fleet's view (`WorkerBuilder::fleet_view`);
    /// `None` without one, or before the first round.
    pub recommended_replicas: Option<u32>,
}

/// A snapshot of a `WorkerPool`, as answered to `GetPoolState`: its
/// workers and the budget they share. What the pool's `/`, `/ready` and
/// `/worker` read.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolState {
    /// Every worker the pool holds, by name.
    pub members: Vec<MemberState>,
    /// The budget the workers share.
    pub budget: BudgetState,
    /// The pool is stopping: its workers drain or shut down.
    pub stopping: bool,
}

/// One worker of a pool.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberState {
    /// Its name in the pool.
    pub name: String,
    /// Its labels (`region`, `zone`, …).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where it is in its life.
    pub status: MemberStatus,
    /// How many times the pool has started it again after it stopped.
    pub restarts: u32,
    /// Its current incarnation's state; `None` while it is being restarted,
    /// or if it did not answer in time.
    pub worker: Option<WorkerState>,
}

/// Where a pool's worker is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberStatus {
    /// Running (registered or connecting).
    Running,
    /// It stopped; a new incarnation starts after its restart policy's
    /// backoff.
    Restarting,
    /// Removed from the pool: it drains, then leaves.
    Draining,
    /// It stopped more often than its restart policy allows; the pool no
    /// longer restarts it (the pool's liveness fails).
    Failed(String),
}

/// The budget a pool's workers share.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetState {
    /// The limits (`max_jobs` is the process-wide job budget).
    pub limits: crate::limits::ResourceLimits,
    /// What the live reservations hold, in all.
    pub in_use: crate::limits::ResourceRequest,
    /// The fullest limited resource's share in use, `0.0..=1.0`.
    pub used_share: f32,
}
