//! Jobs that survive: checkpoints, where they are kept, restart limits, and
//! recovery decisions.
//!
//! All of it is plain logic that reads no clock (time is passed in); the
//! actors drive it:
//! - [`JobCheckpoint`] (`checkpoint`): a job's identity, the job as first
//!   assigned, and the handler's typed state, with a bound on its size and a
//!   versioned record for the stores.
//! - [`CheckpointStore`] (`store`): the async, object-safe store trait, with
//!   one ownership design for every store — a heartbeat per worker, a
//!   holder and a fencing token per record ([`Claim`]), atomic claims of
//!   orphans; [`MemoryStore`] (the default) beside it, and [`EmbeddedStore`]
//!   (`embedded`) on local disk with redb, whose blocking calls run on a
//!   thread of its own behind a bounded write queue that merges each job's
//!   writes and commits them in groups; with the feature `redis`, `RedisCheckpointStore`
//!   (`redis`), which a fleet shares.
//! - [`Checkpoint`] (`handle`): the handler's handle on its job's record:
//!   cheap saves, written behind, durable after `flush().await`.
//! - [`RestartPolicy`] (`restart`): at most N restarts within a period, with
//!   backoff, as an OTP supervisor would.
//! - [`RecoveryHandler`] (`handler`): the user's say over which interrupted
//!   jobs are resumed; [`DefaultRecovery`] resumes recent ones.

mod checkpoint;
mod embedded;
mod handle;
mod handler;
pub(crate) mod health;
#[cfg(feature = "redis")]
pub(crate) mod redis;
mod restart;
pub(crate) mod store;

pub use checkpoint::{
    CHECKPOINT_FORMAT, CheckpointError, Claim, FinalRecord, JobCheckpoint, MAX_STATE_BYTES,
};
pub use embedded::{DATABASE_FILE, EmbeddedStore};
pub use handle::Checkpoint;
pub use handler::{DefaultRecovery, RecoveryError, RecoveryHandler};
#[cfg(feature = "redis")]
pub use redis::{DEFAULT_PREFIX as DEFAULT_REDIS_PREFIX, RedisCheckpointStore};
pub use restart::{RestartDecision, RestartPolicy};
pub use store::{CheckpointStore, MemoryStore, StoreError, StoreFuture};
