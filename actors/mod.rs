//! The actor system: who supervises whom, and which messages flow where.
//!
//! ```text
//! WorkerActor  (supervisor; owns the jobs table, reservations, the outbox)
//! ├── ConnectionActor   under actix's Supervisor: restarted in place, after
//! │                     a backoff delay, on any socket error, close or timeout
//! ├── LoadReporterActor samples every 500 ms, sends update_worker on change
//! ├── QueueActor        accepted jobs waiting for a slot, by priority
//! └── JobActor × N      one per job, spread over the worker's job arbiters
//! ```
//!
//! - Server → worker: the ConnectionActor decodes frames and sends
//!   `Registered`, `Disconnected`, `AvailabilityAsked`, `JobAssigned` and
//!   `TerminationRequested` to the WorkerActor.
//! - Worker → server: the WorkerActor sends `SendToServer` to the connection;
//!   what cannot be written comes back as `Undelivered` and job statuses among
//!   it return to the outbox.
//! - Load: the WorkerActor sends `SlotsChanged` and `ConnectionChanged` to
//!   the LoadReporterActor, which sends `update_worker` through the
//!   connection and the computed report back as `LoadChanged`.
//! - Queue: the WorkerActor sends `Enqueue` when an accepted job finds no
//!   free slot and `TakeNext` when a slot frees; the QueueActor answers, and
//!   hands back `QueuedJobsExpired` for jobs that waited too long.
//! - Jobs: the WorkerActor starts a JobActor per assignment (or local spawn,
//!   or recovered checkpoint) and sends it `TerminateJob`, `Reconnected` and
//!   `MemoryPressure`; the JobActor answers with `JobStarted` and exactly one
//!   `JobExited`.
//!
//! What survives what:
//! - A connection restart keeps the ConnectionActor's fields (options, the
//!   attempt counter) and drops its socket and timers. The WorkerActor and
//!   every JobActor are untouched: jobs keep running, their statuses queue,
//!   and after the next registration the worker sends `migrate_job` for the
//!   running jobs and then the queued statuses, in order, and sends each
//!   server job `Reconnected`: the JobActor asks the recovery handler about
//!   itself, with its own checkpoint, and ends itself (reported FAILED) if
//!   declined. Final statuses the old socket may have swallowed (no pong
//!   since) are among them.
//! - A handler panic or a retryable error restarts the handler inside its
//!   JobActor — the actor, its checkpoint and its slot stay — under the job's
//!   `RestartPolicy` (an OTP-style intensity limit with backoff; actix's own
//!   `Supervisor` has neither, so it is used only for the connection). When
//!   the policy gives up the JobActor ends and the job is reported FAILED.
//! - A worker restart loses every actor; with a durable checkpoint store the
//!   new WorkerActor finds the jobs' checkpoints at start-up and starts a
//!   JobActor for each one the recovery handler accepts.

mod connection;
mod job;
mod load_reporter;
pub(crate) mod messages;
mod queue;
mod supervision;
mod worker;

#[cfg(feature = "fault-injection")]
pub use messages::InjectFault;
pub use messages::{
    GetLoad, GetQueueStats, GetState, JobEvent, JobOrigin, JobOutcome, Shutdown, SpawnJob,
    SpawnOutcome, SpawnRefusal, SubscribeJobEvents, SubscribeWorkerEvents, WorkerEvent,
    WorkerState,
};
pub use worker::{MAX_SUBSCRIBERS, StartError, Worker, WorkerActor, WorkerBuilder};
