//! # lkagent
//!
//! An actor-model runtime, on actix, for LiveKit agent workers. A worker
//! connects to a LiveKit server, registers, reports its load, answers the
//! server's availability requests, and runs one job per dispatched room (or
//! participant, or publisher) — here each job is an actor, not a process.
//!
//! ## The map
//!
//! The crate root holds what an agent author needs: [`Worker`] and its
//! builder, [`WorkerOptions`], the [`JobHandler`] trait and what it is given
//! and answers ([`JobRequest`], [`Decision`], [`JobContext`], [`JobError`]),
//! job priorities and resource requests, and the messages an application
//! sends a worker ([`SpawnJob`], [`GetState`], …). The rest lives in public
//! modules named after their concepts, all of them pure logic with no actors,
//! tested with plain `#[test]`s:
//! - [`protocol`]: frames ↔ typed messages, the 2 MiB limit, the `/agent`
//!   URL, and fragmented messages put back together.
//! - [`auth`]: credentials and the short-lived tokens minted per connection;
//!   the secret never prints.
//! - `options`: [`WorkerOptions`], from code or from `LIVEKIT_*`;
//!   [`Backoff`] for reconnect and restart delays.
//! - [`reconnect`]: when to connect again after a connection ends (backoff
//!   reset only by a registration that lasts, a long delay after a refused
//!   token) and when to call the server unreachable.
//! - `handler`: what a user writes — [`JobHandler`], [`JobRequest`],
//!   [`Decision`], [`JobContext`].
//! - [`jobs`]: the job table — every job id the worker knows and its state
//!   (offered, queued, starting, running, finishing); slots, reservations
//!   and what a registration owes the server are derived from it.
//! - [`load`]: `LoadMetrics`, the `LoadCalculator`s (job slots, CPU/memory
//!   against the container's cgroup limits, predictive), and the
//!   `ReportPolicy` that batches `update_worker`.
//! - [`queue`]: [`JobPriority`] and the `PriorityCalculator`, the bounded
//!   `JobQueue`, the `AdmissionPolicy` (priority headroom around the load
//!   threshold) and the `JobRateLimiter`.
//! - [`limits`]: `ResourceLimits` and the `ResourceLimiter` whose
//!   `Reservation`s jobs hold ([`ResourceRequest`] is what a job asks for);
//!   memory and open-file checks.
//! - [`recovery`]: `JobCheckpoint` and the handler's `Checkpoint`, the
//!   `CheckpointStore`s (`MemoryStore`, `EmbeddedStore`), the
//!   `RestartPolicy`, the `RecoveryHandler`.
//! - [`scaling`]: the [`AutoScaler`](scaling::AutoScaler), a pure policy
//!   that turns a fleet's loads and job counts into a replica count (up,
//!   down or hold, with thresholds, cooldowns, stabilization and a trend).
//! - [`connections`]: the [`ConnectionPool`] jobs reach through
//!   [`JobContext::connections`] — websockets to STT/TTS providers checked
//!   out and returned under per-host and total caps, health-checked before
//!   reuse and closed when idle; one shared HTTP client. It does its own
//!   I/O (no actors), around a pure ledger of what the caps allow.
//! - [`demo`]: a demo agent driven by job metadata, for examples and tests.
//!
//! The actors (`actors/`, wired in here), which call into the core and do
//! the I/O: [`WorkerActor`] supervises a `ConnectionActor` (the websocket), a
//! `LoadReporterActor` (samples and reports the load), a `QueueActor`
//! (accepted jobs waiting for a slot) and one `JobActor` per job. Start one
//! with [`Worker::builder`]. A [`WorkerPool`] runs several workers in one
//! process — one per server, region or agent name, each with its labels and
//! [`Routing`] — restarting any that stops, on one shared budget.
//!
//! ```no_run
//! use lkagent::{JobContext, JobError, JobHandler, Worker, WorkerOptions};
//!
//! struct Agent;
//!
//! impl JobHandler for Agent {
//!     async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
//!         ctx.cancelled().await;
//!         Ok(())
//!     }
//! }
//!
//! #[actix::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let _worker = Worker::builder(WorkerOptions::from_env()?)
//!         .max_jobs(500)
//!         .handler(Agent)
//!         .start()?;
//!     actix_rt::signal::ctrl_c().await?;
//!     Ok(())
//! }
//! ```

pub mod auth;
mod backoff;
pub mod connections;
mod deadlines;
pub mod demo;
pub mod fleet;
mod handler;
#[cfg(feature = "http")]
pub mod http;
pub mod jobs;
pub mod limits;
pub mod load;
mod options;
pub mod protocol;
pub mod queue;
pub mod reconnect;
pub mod recovery;
pub mod scaling;
mod shutdown;
mod state;
pub mod telemetry;

#[path = "../actors/mod.rs"]
mod actors;

#[cfg(feature = "fault-injection")]
pub use actors::InjectFault;
pub use actors::{
    AddWorker, Drain, GetLoad, GetPoolState, GetPoolWorker, GetQueueStats, GetState, JobEvent,
    JobOrigin, JobOutcome, MAX_SUBSCRIBERS, Pool, PoolError, PoolMember, RemoveWorker, Routing,
    ScaledGroup, Shutdown, SpawnJob, SpawnOutcome, SpawnRefusal, StartError, SubscribeJobEvents,
    SubscribeWorkerEvents, Worker, WorkerActor, WorkerBuilder, WorkerEvent, WorkerExit, WorkerPool,
    WorkerPoolBuilder, WorkerState,
};
pub use backoff::Backoff;
pub use connections::ConnectionPool;
pub use handler::{
    Acceptance, Decision, DynHandler, JobContext, JobError, JobHandler, JobRequest, Participant,
    TokenWatch,
};
pub use limits::ResourceRequest;
pub use options::{
    DEFAULT_HOOK_THREADS, DEFAULT_LIVENESS_TTL, DEFAULT_QUEUE_MAX_WAIT, ENV_AGENT_NAME,
    ENV_API_KEY, ENV_API_SECRET, ENV_API_SECRET_FILE, ENV_URL, MAX_LABELS, OptionsError,
    WorkerOptions,
};
pub use queue::JobPriority;
pub use reconnect::ReconnectPolicy;
pub use shutdown::{DEFAULT_HOOK_TIMEOUT, ShutdownHook, ShutdownPhase};
pub use state::{BudgetState, MemberState, MemberStatus, PoolState};

/// The LiveKit protocol types the public API speaks in.
pub use livekit_protocol as proto;

/// Cuts `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(super::truncate_utf8("héllo".into(), 2), "h");
        assert_eq!(super::truncate_utf8("héllo".into(), 3), "hé");
        assert_eq!(super::truncate_utf8("abc".into(), 10), "abc");
    }
}
