//! # lkagent
//!
//! An actor-model runtime, on actix, for LiveKit agent workers. A worker
//! connects to a LiveKit server, registers, reports its load, answers the
//! server's availability requests, and runs one job per dispatched room (or
//! participant, or publisher) — here each job is an actor, not a process.
//!
//! ## The map
//!
//! The pure core, no actors, tested with plain `#[test]`s:
//! - `protocol`: frames ↔ typed messages, the 2 MiB limit, the `/agent` URL.
//! - `auth`: credentials and the short-lived tokens minted per connection;
//!   the secret never prints.
//! - `options`: [`WorkerOptions`], from code or from `LIVEKIT_*`.
//! - `handler`: what a user writes — [`JobHandler`], [`JobRequest`],
//!   [`Decision`], [`JobContext`].
//! - `backoff`: reconnect delays; `outbox`: statuses kept through an outage.
//! - `load`: [`LoadMetrics`], the [`LoadCalculator`]s (job slots,
//!   CPU/memory against the container's cgroup limits, predictive), and the
//!   [`ReportPolicy`] that batches `update_worker`.
//! - `queue`: [`JobPriority`] and the [`PriorityCalculator`], the bounded
//!   [`JobQueue`], the [`AdmissionPolicy`] (priority headroom around the load
//!   threshold) and the [`JobRateLimiter`].
//! - `limits`: [`ResourceLimits`] and the [`ResourceLimiter`] whose
//!   [`Reservation`]s jobs hold; memory and open-file checks.
//! - `recovery`: [`JobCheckpoint`] and the handler's [`Checkpoint`], the
//!   [`CheckpointStore`]s ([`MemoryStore`], [`EmbeddedStore`]), the
//!   [`RestartPolicy`], the [`RecoveryHandler`], the
//!   [`PartialMessageBuffer`].
//! - `demo`: a demo agent driven by job metadata, for examples and tests.
//!
//! The actors (`actors/`, wired in here), which call into the core and do
//! the I/O: [`WorkerActor`] supervises a `ConnectionActor` (the websocket), a
//! `LoadReporterActor` (samples and reports the load), a `QueueActor`
//! (accepted jobs waiting for a slot) and one `JobActor` per job. Start one
//! with [`Worker::builder`].
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

mod auth;
mod backoff;
pub mod demo;
mod handler;
mod limits;
mod load;
mod options;
mod outbox;
pub mod protocol;
mod queue;
mod recovery;

#[path = "../actors/mod.rs"]
mod actors;

pub use actors::{
    GetLoad, GetQueueStats, GetState, JobEvent, JobOrigin, JobOutcome, MAX_SUBSCRIBERS, SpawnJob,
    SpawnOutcome, SpawnRefusal, StartError, SubscribeJobEvents, Worker, WorkerActor, WorkerBuilder,
    WorkerState,
};
pub use auth::{ApiSecret, AuthError, Credentials};
pub use backoff::Backoff;
pub use handler::{
    Acceptance, Decision, DynHandler, JobContext, JobError, JobHandler, JobRequest, Participant,
};
pub use limits::{
    AvailableResources, LimitError, PRESSURE_PERCENT, Reservation, ResourceLimiter, ResourceLimits,
    ResourceRequest, UsageState, usage_state,
};
pub use load::cgroup::ContainerLimits;
pub use load::system::{ResourceSample, SystemSampler};
pub use load::{
    CpuMemoryLoadCalculator, DEFAULT_HORIZON_SAMPLES, DEFAULT_LOAD_THRESHOLD,
    DefaultLoadCalculator, LoadCalculator, LoadMetrics, LoadReport, PredictiveLoadCalculator,
    ReportPolicy, Slots,
};
pub use options::{
    ENV_AGENT_NAME, ENV_API_KEY, ENV_API_SECRET, ENV_URL, OptionsError, WorkerOptions,
};
pub use outbox::{Evicted, Outbox};
pub use queue::{
    AdmissionPolicy, DEFAULT_HEADROOM, DEFAULT_MAX_ROOMS, DEFAULT_QUEUE_CAPACITY,
    DefaultPriorityCalculator, InvalidRateLimit, JobPriority, JobQueue, JobRateLimiter,
    PRIORITY_METADATA_KEY, ParsePriorityError, PriorityCalculator, QueueFull, QueueStats, Queued,
    RateLimit, RateLimited, RateLimits,
};
pub use recovery::{
    CHECKPOINT_FORMAT, Checkpoint, CheckpointError, CheckpointStore, CompleteMessage,
    DATABASE_FILE, DefaultRecovery, EmbeddedStore, JobCheckpoint, MAX_STATE_BYTES, MemoryStore,
    PartialError, PartialMessageBuffer, RecoveryError, RecoveryHandler, RestartDecision,
    RestartPolicy, StoreError, StoreFuture,
};

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
