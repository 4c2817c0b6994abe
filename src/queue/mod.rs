//! What the worker takes on, and in what order: the pure parts of admission
//! and queueing.
//!
//! When the server offers a job, or an application sends a local one, the
//! worker decides in steps, each a pure piece here:
//!
//! 1. its priority — [`PriorityCalculator`] ([`DefaultPriorityCalculator`]
//!    reads `"priority"` from the metadata), unless the handler sets one;
//! 2. whether the load leaves room for that priority — [`AdmissionPolicy`]:
//!    near the threshold urgent work is still admitted, low work declined;
//! 3. whether the rate limits allow it — [`JobRateLimiter`], global and per
//!    room;
//! 4. once accepted, if no slot is free, it waits in the [`JobQueue`]:
//!    highest priority first, FIFO within a priority, bounded, expiring
//!    jobs that waited too long;
//! 5. if it fails asking to be retried, the job's `RestartPolicy` (in
//!    `recovery`) says when, or that it is time to give up.
//!
//! Resource budgets (the other source of slots) are in `limits`. The
//! `QueueActor` in `actors/` owns these values and does the timing; nothing
//! here reads the clock except through a clock the caller passes.

mod admission;
mod heap;
mod priority;
mod rate;

pub use admission::{AdmissionPolicy, DEFAULT_HEADROOM};
pub use heap::{DEFAULT_QUEUE_CAPACITY, JobQueue, QueueFull, QueueStats, Queued};
pub use priority::{
    DefaultPriorityCalculator, JobPriority, PRIORITY_METADATA_KEY, ParsePriorityError,
    PriorityCalculator,
};
pub use rate::{
    DEFAULT_MAX_ROOMS, InvalidRateLimit, JobRateLimiter, RateLimit, RateLimited, RateLimits,
};
