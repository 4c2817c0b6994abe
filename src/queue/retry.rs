//! [`RetryPolicy`]: when a job that failed with a retryable error runs
//! again.
//!
//! A handler that fails with `JobError::Retryable { retry_after, .. }` knows
//! why it failed (a rate-limited API, a service restarting) and how long to
//! wait. The policy honours that wait, but bounds both how long (a handler
//! asking for an hour holds a room that long) and how often (a fault that
//! never passes must end as FAILED, not loop forever). It is a pure
//! function of the attempt; the job actor owns the timer.
//!
//! This is distinct from the restart policy for crashes (`RestartPolicy`):
//! a retryable failure is the handler asking for a retry, a crash is not.

use std::time::Duration;

/// How often and how late a retryable failure is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first run: 3 means at most four runs in all;
    /// 0 never retries.
    pub max_retries: u32,
    /// The longest wait honoured; a longer `retry_after` waits this long.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The default retry bound: three retries ride out a brief outage of
    /// a service the handler calls, and a job that can never succeed is
    /// reported FAILED within minutes.
    pub const DEFAULT_MAX_RETRIES: u32 = 3;

    /// The default longest wait: 5 minutes, the longest a room is usually
    /// worth holding for its agent to come back.
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(300);

    /// Never retries: the first failure is final.
    pub fn never() -> Self {
        Self {
            max_retries: 0,
            max_delay: Duration::ZERO,
        }
    }

    /// The wait before the next run, after run number `attempt` (1 for the
    /// first run, as `JobContext::attempt` counts) failed asking for
    /// `retry_after`: `retry_after` capped at `max_delay`. `None` when the
    /// retries are used up — report the job FAILED.
    pub fn next(&self, attempt: u32, retry_after: Duration) -> Option<Duration> {
        // runs so far minus the first: the retries already made
        let retries_made = attempt.saturating_sub(1);
        (retries_made < self.max_retries).then(|| retry_after.min(self.max_delay))
    }
}

impl Default for RetryPolicy {
    /// [`DEFAULT_MAX_RETRIES`](Self::DEFAULT_MAX_RETRIES) within
    /// [`DEFAULT_MAX_DELAY`](Self::DEFAULT_MAX_DELAY).
    fn default() -> Self {
        Self {
            max_retries: Self::DEFAULT_MAX_RETRIES,
            max_delay: Self::DEFAULT_MAX_DELAY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_up_to_the_bound_then_gives_up() {
        let policy = RetryPolicy::default();
        let wait = Duration::from_secs(2);
        assert_eq!(policy.next(1, wait), Some(wait));
        assert_eq!(policy.next(2, wait), Some(wait));
        assert_eq!(policy.next(3, wait), Some(wait));
        // the fourth run was the third retry: no more
        assert_eq!(policy.next(4, wait), None);
        assert_eq!(policy.next(u32::MAX, wait), None);
    }

    #[test]
    fn the_wait_is_capped() {
        let policy = RetryPolicy {
            max_retries: 1,
            max_delay: Duration::from_secs(10),
        };
        assert_eq!(
            policy.next(1, Duration::from_secs(3600)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(policy.next(1, Duration::ZERO), Some(Duration::ZERO));
    }

    #[test]
    fn never_retries_and_attempt_zero_counts_as_the_first_run() {
        assert_eq!(RetryPolicy::never().next(1, Duration::ZERO), None);
        let once = RetryPolicy {
            max_retries: 1,
            ..RetryPolicy::default()
        };
        assert!(once.next(0, Duration::from_secs(1)).is_some());
        assert!(once.next(2, Duration::from_secs(1)).is_none());
    }
}
