//! [`RecoveryHandler`]: the user's say over which interrupted jobs come back.
//!
//! The worker consults it on every recovery path — a job resumed after a
//! reconnect, a job found in the durable store after a restart, an orphaned
//! job taken over from another worker: `on_recovery_attempt` decides,
//! `on_recovered` hears of a job that is running again, and
//! `on_recovery_failed` of one that is not (refused, too old, unreadable),
//! which the worker then cleans up and reports. [`DefaultRecovery`] resumes
//! jobs whose checkpoint is recent.

use std::time::{Duration, SystemTime};

use livekit_protocol::Job;
use tracing::warn;

use super::checkpoint::{CheckpointError, JobCheckpoint};
use super::store::StoreError;
use crate::handler::JobContext;

/// Why an interrupted job was not resumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The recovery handler declined the job.
    #[error("the recovery handler declined the job")]
    Declined,
    /// The checkpoint is older than the handler accepts: the room has most
    /// likely moved on. Raise `max_age` to resume older jobs.
    #[error("the checkpoint is {age:?} old, over the {max_age:?} limit")]
    TooOld {
        /// Time since the checkpoint was last written.
        age: Duration,
        /// The limit it exceeds.
        max_age: Duration,
    },
    /// The checkpoint cannot be read (a damaged record, an unknown format).
    #[error("the checkpoint cannot be used: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The store failed while the job was being recovered.
    #[error("the checkpoint store failed: {0}")]
    Store(#[from] StoreError),
    /// The worker could not resume the job (no room token could be minted,
    /// the job could not be started); the text says why.
    #[error("the job could not be resumed: {0}")]
    Resume(String),
}

/// Decides which interrupted jobs are resumed, and hears how it went.
///
/// Object-safe, held as `Arc<dyn RecoveryHandler>`. The methods are called
/// on the worker's thread: keep them quick, and do no blocking I/O in them.
pub trait RecoveryHandler: Send + Sync + 'static {
    /// Whether to resume `job_id` from `checkpoint`. True resumes it; false
    /// gives it up (then `on_recovery_failed` is called with
    /// [`RecoveryError::Declined`]).
    fn on_recovery_attempt(&self, job_id: &str, checkpoint: &JobCheckpoint) -> bool;

    /// The job is running again, with `ctx` (whose checkpoint and attempt
    /// tell the handler where it left off). The default does nothing.
    fn on_recovered(&self, job: &Job, ctx: &JobContext) {
        let _ = (job, ctx);
    }

    /// The job will not be resumed, for `error`; its checkpoint is removed
    /// and the server told. The default logs a warning.
    fn on_recovery_failed(&self, job_id: &str, error: &RecoveryError) {
        warn!(job_id, %error, "job not recovered");
    }
}

/// Resumes every job whose checkpoint was written within `max_age`.
///
/// The age runs from the checkpoint's last write, not from the job's start:
/// a call that has gone on for an hour and lost its worker a second ago is
/// worth resuming; one whose worker went quiet ten minutes ago is not (its
/// room has most likely emptied and closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultRecovery {
    /// The oldest checkpoint that is still resumed.
    pub max_age: Duration,
}

impl DefaultRecovery {
    /// The default `max_age`: 5 minutes, LiveKit's default `empty_timeout`,
    /// after which a room nobody is left in is closed by the server.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

    /// Resumes checkpoints written within `max_age`.
    pub fn new(max_age: Duration) -> Self {
        Self { max_age }
    }

    /// The decision, as of `now`: `Ok` to resume, or why not. A checkpoint
    /// stamped in `now`'s future (a skewed clock) counts as fresh.
    pub fn decide(&self, checkpoint: &JobCheckpoint, now: SystemTime) -> Result<(), RecoveryError> {
        let age = checkpoint.age(now);
        if age > self.max_age {
            return Err(RecoveryError::TooOld {
                age,
                max_age: self.max_age,
            });
        }
        Ok(())
    }
}

impl Default for DefaultRecovery {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_AGE)
    }
}

impl RecoveryHandler for DefaultRecovery {
    fn on_recovery_attempt(&self, job_id: &str, checkpoint: &JobCheckpoint) -> bool {
        match self.decide(checkpoint, SystemTime::now()) {
            Ok(()) => true,
            Err(error) => {
                warn!(job_id, %error, "not resuming the job");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::recovery::checkpoint::tests::{at, job};

    fn checkpoint_written_at(ms: u64) -> JobCheckpoint {
        let mut cp = JobCheckpoint::new(&job("AJ_1"), "a", at(0));
        cp.touch(at(ms));
        cp
    }

    #[test]
    fn recent_checkpoints_are_resumed_and_old_ones_are_not() {
        let policy = DefaultRecovery::new(Duration::from_secs(60));
        let cp = checkpoint_written_at(100_000);
        assert!(policy.decide(&cp, at(100_000)).is_ok());
        assert!(policy.decide(&cp, at(160_000)).is_ok(), "exactly max_age");
        match policy.decide(&cp, at(160_001)) {
            Err(RecoveryError::TooOld { age, max_age }) => {
                assert_eq!(age, Duration::from_millis(60_001));
                assert_eq!(max_age, Duration::from_secs(60));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn age_runs_from_the_last_write_not_the_start() {
        let policy = DefaultRecovery::new(Duration::from_secs(60));
        // Started an hour before, written a second before.
        let cp = checkpoint_written_at(3_600_000);
        assert_eq!(cp.created_at_ms(), 0);
        assert!(policy.decide(&cp, at(3_601_000)).is_ok());
    }

    #[test]
    fn a_checkpoint_from_the_future_is_fresh() {
        let policy = DefaultRecovery::new(Duration::ZERO);
        assert!(
            policy
                .decide(&checkpoint_written_at(5_000), at(1_000))
                .is_ok()
        );
    }

    #[test]
    fn the_default_recovers_a_fresh_checkpoint_through_the_trait() {
        let handler: Arc<dyn RecoveryHandler> = Arc::new(DefaultRecovery::default());
        let mut fresh = JobCheckpoint::new(&job("AJ_1"), "a", SystemTime::now());
        assert!(handler.on_recovery_attempt("AJ_1", &fresh));
        fresh.touch(SystemTime::UNIX_EPOCH);
        assert!(!handler.on_recovery_attempt("AJ_1", &fresh));
    }

    #[test]
    fn a_custom_handler_overrides_only_what_it_needs() {
        #[derive(Default)]
        struct Refuser {
            failed: Mutex<Vec<String>>,
        }
        impl RecoveryHandler for Refuser {
            fn on_recovery_attempt(&self, _: &str, _: &JobCheckpoint) -> bool {
                false
            }
            fn on_recovery_failed(&self, job_id: &str, error: &RecoveryError) {
                self.failed
                    .lock()
                    .unwrap()
                    .push(format!("{job_id}: {error}"));
            }
        }
        let refuser = Refuser::default();
        let cp = checkpoint_written_at(0);
        assert!(!refuser.on_recovery_attempt("AJ_1", &cp));
        refuser.on_recovery_failed("AJ_1", &RecoveryError::Declined);
        assert_eq!(
            *refuser.failed.lock().unwrap(),
            ["AJ_1: the recovery handler declined the job"]
        );
        let ctx = JobContext::new(job("AJ_1"), "ws://h", "t");
        refuser.on_recovered(&job("AJ_1"), &ctx); // the default: nothing
    }
}
