//! [`StoreHealth`]: how the checkpoint store has answered lately, for the
//! worker's backoff and its report (`WorkerState::store_error`).

use std::time::{Duration, Instant};

/// The most write-behind intervals skipped after failures: writes are
/// retried at least every this many intervals plus one while the store is
/// down.
pub(crate) const MAX_SKIPPED_INTERVALS: u32 = 15;

/// Failures and successes of the store, in order. A failure is logged when
/// the store begins to fail, not at every retry; a success after failures
/// says for how long it failed.
#[derive(Debug, Default)]
pub(crate) struct StoreHealth {
    /// Consecutive failed operations.
    failures: u32,
    /// When the current run of failures began.
    since: Option<Instant>,
    /// The last failure's text, while failing.
    last_error: Option<String>,
    /// Write-behind intervals still to skip before the next attempt.
    skip: u32,
}

impl StoreHealth {
    /// Notes a failure; true if the store was healthy until now (worth a
    /// warning; later failures are quieter).
    pub(crate) fn failed(&mut self, error: impl Into<String>, now: Instant) -> bool {
        let first = self.failures == 0;
        self.failures = self.failures.saturating_add(1);
        self.since.get_or_insert(now);
        self.last_error = Some(error.into());
        // 1, 3, 7, 15 intervals skipped: retries back off, bounded
        self.skip = (1u32 << self.failures.min(4)) - 1;
        debug_assert!(self.skip <= MAX_SKIPPED_INTERVALS);
        first
    }

    /// Notes a success; how long the store had been failing, if it was.
    pub(crate) fn succeeded(&mut self, now: Instant) -> Option<Duration> {
        let outage = self.since.map(|since| now.saturating_duration_since(since));
        *self = Self::default();
        outage
    }

    /// Whether the write-behind tries this interval (a failing store is
    /// tried less often).
    pub(crate) fn attempt_now(&mut self) -> bool {
        if self.skip == 0 {
            return true;
        }
        self.skip -= 1;
        false
    }

    /// The last failure, while the store fails.
    pub(crate) fn error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_the_writes_and_a_success_clears_them() {
        let t0 = Instant::now();
        let mut health = StoreHealth::default();
        assert!(health.attempt_now());
        assert_eq!(health.error(), None);
        assert!(health.failed("refused", t0), "the first failure is news");
        assert!(!health.failed("refused again", t0), "the second is not");
        assert_eq!(health.error(), Some("refused again"));
        // two failures: three intervals skipped, then an attempt
        let attempts: Vec<bool> = (0..4).map(|_| health.attempt_now()).collect();
        assert_eq!(attempts, [false, false, false, true]);
        for _ in 0..10 {
            health.failed("down", t0);
        }
        let skipped = (0..40).take_while(|_| !health.attempt_now()).count() as u32;
        assert_eq!(skipped, MAX_SKIPPED_INTERVALS, "bounded");
        let outage = health.succeeded(t0 + Duration::from_secs(3));
        assert_eq!(outage, Some(Duration::from_secs(3)));
        assert_eq!(health.error(), None);
        assert!(health.attempt_now());
        assert_eq!(health.succeeded(t0), None, "no outage to report");
    }
}
