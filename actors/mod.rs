//! The actor system: who supervises whom, which messages flow where, and
//! what survives what.
//!
//! ```text
//! WorkerPool   (optional, `pool.rs`: several workers — servers, regions,
//! │             agent names — one budget; restarts a worker that stops)
//! WorkerActor  (supervisor; owns the job table — every job and its state —
//! │             the reconnect state and the child restart limits)
//! ├── ConnectionActor   one per connection, on its own arbiter (no user code
//! │                     there); restarted by the worker after the reconnect
//! │                     policy's delay whenever the socket ends
//! ├── LoadReporterActor on the background arbiter: samples, computes the
//! │                     load, checks memory
//! ├── QueueActor        on the background arbiter: the priority order of the
//! │                     queued jobs (their ids; the rows are the table's)
//! └── JobActor × N      one per running job, spread over the job arbiters
//!     (the handler's on_request runs on separate hook arbiters)
//! ```
//!
//! Supervision is the worker's: every child holds a `Link` (`supervision.rs`)
//! whose `Drop` sends `ChildExited { child, generation, panicked, reason }`,
//! so a child that stops for any reason — a socket error, being told to, a
//! panic in its own code — is reported exactly once per incarnation, and
//! exits of incarnations already replaced are ignored.
//!
//! - **Connection**: it stops whenever its socket ends, saying why. The
//!   worker forgets the server's offers (the server forgot them too) and
//!   starts a new connection after the delay `src/reconnect.rs` decides:
//!   exponential backoff, reset only by a registration that lasted 30 s; a
//!   long delay after a refused token; "unreachable" past the give-up
//!   budget. A panic counts against the child restart limit instead.
//! - **Load reporter, queue**: they stop only by crashing. Each is restarted
//!   under the child restart limit (`WorkerOptions::child_restart_policy`:
//!   an intensity within a period, with backoff) and rebuilt from the table:
//!   the reporter from the current slots, the queue by re-enqueueing the
//!   table's queued rows in order with their original queueing times.
//! - **Job actors**: one that dies without reporting its end gets a new
//!   actor on the job's checkpoint handle (kept in its table row: what the
//!   handler saved last, whatever the job's origin), as its next attempt,
//!   under the same limit counted per job; past it the job is reported
//!   FAILED. A job that was being ended (terminated, or the shutdown) ends
//!   with the status it was ending with instead of running again. Either way
//!   the job ends with exactly one final status.
//! - **Past a limit** (connection, reporter, queue) the worker shuts down in
//!   order rather than limp on without the child.
//! - **The worker itself**: if it stops — shut down, or a panic in its own
//!   code — dropping it stops every arbiter above, and every child with them:
//!   no connection is left registered that would never take a job.
//! - **A pool's worker** (`pool.rs`): the pool watches each worker's end.
//!   One that stops without being removed is built again from its factory
//!   after its `RestartPolicy`'s backoff (a new incarnation: a new
//!   registration; with a durable store and the same instance name it
//!   resumes the jobs the last one held); past the limit it is marked
//!   failed and the pool's liveness fails. A removed worker drains and
//!   leaves. The workers share the pool's `ResourceLimiter`, and each
//!   reports at least the load of the whole budget in use.
//!
//! Messages (all in `messages.rs`):
//! - Server → worker: the ConnectionActor decodes frames and sends
//!   `Registered`, `AvailabilityAsked`, `JobAssigned`, `TerminationRequested`,
//!   and `Confirmed` once a pong proves the server read final statuses.
//! - Worker → server: `SendToServer` to the connection. Nothing bounces back:
//!   what must not be lost (final statuses) stays in the table, `Finishing`,
//!   until `Confirmed`, and a new registration sends again whatever is owed
//!   (`JobTable::registered`: `migrate_job`, then owed statuses in order).
//! - Decisions: `on_request` runs on a hook arbiter and answers `Decided`;
//!   the worker declines on its own clock if it is late (one timer for all
//!   offers' timeouts: `src/deadlines.rs`).
//! - Load: the worker sends `SlotsChanged` and `ConnectionChanged` to the
//!   reporter, which answers `LoadChanged` (marked when worth an
//!   `update_worker`, which the worker sends) and `MemoryChanged`, and asks
//!   `RunningSince` (the running jobs' start times) at most once a tick.
//! - Queue: `Enqueue`, `TakeNext` (when a slot frees), `Dequeue` (a queued
//!   job ended); `QueuedJobsExpired` back.
//! - Checkpoints: each job's handle is in its table row (the one owner of
//!   the record's claim); the worker writes every dirty one of a job kept
//!   in its store behind, in one batch per interval (`put_many`), and tells
//!   a job whose write its fence refused (`CheckpointRefused`). Every way a
//!   job ends goes through `finished`, which settles a fleet job's record;
//!   a server job's goes when the server confirms its status. A
//!   failing store is noted once (`GetState::store_error`) and its writes
//!   back off; failed record removals are retried.
//! - Fleet queue (`worker/fleet.rs`): with one configured, the worker pulls
//!   jobs when a slot is free and admits them through the table like a
//!   `SpawnJob` (origin `Fleet`); no actor of its own.
//! - Jobs: the worker sends `TerminateJob` (by the server, or for a
//!   shutdown), `Reconnected` and `MemoryPressure`; the JobActor answers
//!   `JobStarted`, `JobRestarted` (its handler restarted under the job's
//!   `RestartPolicy`) and at most one `JobExited`.
//!
//! What survives what:
//! - A lost connection: every job keeps running; queued jobs stay queued;
//!   offers are withdrawn. After the next registration the worker claims its
//!   jobs (`migrate_job`), sends what it owes, and asks the recovery handler
//!   about each running job of the server's whose actor is up
//!   (`Reconnected`).
//! - A handler panic or a retryable error: restarted inside its JobActor —
//!   the actor, its checkpoint and its slot stay — under the job's
//!   `RestartPolicy`; FAILED only when the policy gives up.
//! - A worker restart: with a durable checkpoint store the new worker finds
//!   the jobs' checkpoints and admits each one the recovery handler accepts,
//!   like a new job: a slot if one is free, else the queue, else FAILED.
//! - `Drain` and `Shutdown` (`worker/shutdown.rs`): the server is told the
//!   worker drains (FULL); offers not yet answered are declined; the
//!   application's BeforeDrain hooks run (on a thread each, bounded by their
//!   timeouts; `HookDone` reports them); then a drain lets running and
//!   queued jobs finish — children are still restarted meanwhile — while a
//!   shutdown, a drain past its timeout, or a second signal cuts them:
//!   queued jobs FAILED, running jobs terminated (their hooks run) and
//!   reported FAILED, an accepted offer failed if its assignment comes. Once
//!   no job is held the AfterJobs hooks run, the server confirms the last
//!   statuses (bounded by the flush timeout), the socket closes, the Cleanup
//!   hooks run and everything stops. Once jobs are cut, the grace plus the
//!   flush timeout bound the wait: what still runs then is reported FAILED
//!   first.

mod connection;
mod job;
mod load_reporter;
pub(crate) mod messages;
mod pool;
mod queue;
mod supervision;
mod worker;

#[cfg(feature = "fault-injection")]
pub use messages::InjectFault;
pub use messages::{
    AddWorker, Drain, GetLoad, GetPoolState, GetPoolWorker, GetQueueStats, GetState, JobEvent,
    JobOrigin, JobOutcome, RemoveWorker, Shutdown, SpawnJob, SpawnOutcome, SpawnRefusal,
    SubscribeJobEvents, SubscribeWorkerEvents, WorkerEvent, WorkerExit, WorkerState,
};
pub use pool::{Pool, PoolError, PoolMember, Routing, ScaledGroup, WorkerPool, WorkerPoolBuilder};
pub use worker::{MAX_SUBSCRIBERS, StartError, Worker, WorkerActor, WorkerBuilder};
