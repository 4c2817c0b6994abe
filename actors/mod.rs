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
//! - Jobs: the WorkerActor starts a JobActor per assignment and sends it
//!   `TerminateJob`; the JobActor answers with `JobStarted` and exactly one
//!   `JobExited`.
//!
//! What survives what:
//! - A connection restart keeps the ConnectionActor's fields (options, the
//!   attempt counter) and drops its socket and timers. The WorkerActor and
//!   every JobActor are untouched: jobs keep running, their statuses queue,
//!   and after the next registration the worker sends `migrate_job` for the
//!   running jobs and then the queued statuses, in order.
//! - A handler panic ends only its JobActor (caught, reported FAILED).

mod connection;
mod job;
mod load_reporter;
pub(crate) mod messages;
mod queue;
mod worker;

pub use messages::{
    GetLoad, GetQueueStats, GetState, JobEvent, JobOrigin, JobOutcome, SpawnJob, SpawnOutcome,
    SpawnRefusal, SubscribeJobEvents, WorkerState,
};
pub use worker::{MAX_SUBSCRIBERS, StartError, Worker, WorkerActor, WorkerBuilder};
