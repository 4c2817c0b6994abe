//! [`AdmissionPolicy`]: priority-aware admission near the load threshold.
//!
//! Without priorities a worker takes a job while its load is below the
//! threshold and declines it from there on — the same rule that turns its
//! status FULL. With them, each priority gets a *headroom* added to the
//! threshold: urgent work is still admitted a little above it, low-priority
//! work yields a little below it. So when the fleet is busy, the last
//! capacity goes to the jobs that matter most instead of to whichever came
//! first.
//!
//! This is only the load rule. Exact job slots (`max_jobs`), the resource
//! limiter and the rate limits are checked separately and are never
//! overridden by a priority.

use super::priority::JobPriority;
use crate::load::DEFAULT_LOAD_THRESHOLD;

/// Default headroom per priority, indexed as [`JobPriority::ALL`]:
/// - Low −0.10: background work stops a little early, leaving the last
///   tenth of the capacity to work someone waits for;
/// - Normal 0: an unmarked job is admitted exactly as without priorities,
///   and in step with the FULL status, so turning priorities on changes
///   nothing for it;
/// - High +0.10 and Urgent +0.25: admitted while the load is up to that far
///   above the threshold — enough for a burst of urgent jobs, not so much
///   that a worker at its limit is pushed over it.
pub const DEFAULT_HEADROOM: [f32; 4] = [-0.10, 0.0, 0.10, 0.25];

/// Whether a job is admitted at a given load, by its priority.
///
/// A job of priority `p` is admitted when
/// `load < threshold + headroom(p)`; at or above that, it is declined.
/// `load` is the worker's current load before the job is added, clamped to
/// `0..=1` (NaN counts as 0) exactly as the reported load is; with the
/// default Normal headroom of 0 a Normal job is therefore declined exactly
/// when the worker reports FULL. A headroom may be negative (the priority
/// yields before the threshold). A limit at or above 1 admits that priority
/// at any load, leaving the decision to the slots and the resource limiter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmissionPolicy {
    /// The load at which a Normal job is declined: the worker's FULL
    /// threshold, in `0..=1`.
    pub threshold: f32,
    /// Extra load allowed above `threshold`, per priority (indexed as
    /// [`JobPriority::ALL`]; negative: less).
    headroom: [f32; 4],
}

impl Default for AdmissionPolicy {
    /// [`DEFAULT_LOAD_THRESHOLD`] (0.7) with [`DEFAULT_HEADROOM`].
    fn default() -> Self {
        Self::new(DEFAULT_LOAD_THRESHOLD)
    }
}

impl AdmissionPolicy {
    /// `threshold` with [`DEFAULT_HEADROOM`]. Pass the worker's own FULL
    /// threshold, so that Normal jobs are admitted in step with the status.
    pub fn new(threshold: f32) -> Self {
        Self {
            threshold,
            headroom: DEFAULT_HEADROOM,
        }
    }

    /// Sets the headroom of one priority.
    pub fn with_headroom(mut self, priority: JobPriority, headroom: f32) -> Self {
        self.headroom[priority.index()] = headroom;
        self
    }

    /// The headroom of `priority`.
    pub fn headroom(&self, priority: JobPriority) -> f32 {
        self.headroom[priority.index()]
    }

    /// The load from which `priority` is declined: `threshold + headroom`.
    pub fn limit(&self, priority: JobPriority) -> f32 {
        self.threshold + self.headroom(priority)
    }

    /// True when a job of `priority` is admitted at `load`.
    pub fn admits(&self, load: f32, priority: JobPriority) -> bool {
        let load = if load.is_nan() {
            0.0
        } else {
            load.clamp(0.0, 1.0)
        };
        load < self.limit(priority)
    }

    /// Checks the bounds; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err("the admission threshold must be above 0 and at most 1".into());
        }
        for priority in JobPriority::ALL {
            let headroom = self.headroom(priority);
            if !(-1.0..=1.0).contains(&headroom) {
                return Err(format!("the {priority} headroom must be between -1 and 1"));
            }
        }
        if !self.headroom.is_sorted() {
            return Err("a higher priority must not have less headroom than a lower one".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobPriority::*;

    #[test]
    fn near_the_threshold_higher_priorities_are_still_admitted() {
        let policy = AdmissionPolicy::default();
        assert_eq!(policy.threshold, 0.7);
        policy.validate().unwrap();

        // well below: everyone
        assert!(JobPriority::ALL.iter().all(|&p| policy.admits(0.3, p)));
        // just below the threshold: low yields, the rest are admitted
        assert!(!policy.admits(0.65, Low));
        assert!(policy.admits(0.65, Normal));
        // at the threshold: normal declined (as the status turns FULL)
        assert!(!policy.admits(0.7, Normal));
        assert!(policy.admits(0.7, High));
        assert!(policy.admits(0.7, Urgent));
        // further above: only urgent
        assert!(!policy.admits(0.85, High));
        assert!(policy.admits(0.85, Urgent));
        // past the urgent limit: nobody
        assert!(JobPriority::ALL.iter().all(|&p| !policy.admits(0.96, p)));
    }

    #[test]
    fn the_limit_is_exclusive() {
        let policy = AdmissionPolicy::new(0.5)
            .with_headroom(Low, 0.0)
            .with_headroom(Urgent, 0.5);
        assert_eq!(policy.limit(Low), 0.5);
        assert!(policy.admits(0.49, Low));
        assert!(!policy.admits(0.5, Low));
        // a limit of 1 admits at any load: slots and limits decide
        assert_eq!(policy.limit(Urgent), 1.0);
        assert!(!policy.admits(1.0, Urgent));
        assert!(policy.admits(0.999, Urgent));
        let always = policy.with_headroom(Urgent, 0.6);
        assert!(always.admits(1.0, Urgent));
        assert!(always.admits(7.0, Urgent), "loads are clamped to 1");
    }

    #[test]
    fn a_nan_load_counts_as_idle_like_the_reported_load() {
        let policy = AdmissionPolicy::default();
        assert!(policy.admits(f32::NAN, Normal));
        assert!(policy.admits(-1.0, Low));
    }

    #[test]
    fn validation_rejects_inverted_or_out_of_range_headroom() {
        assert!(AdmissionPolicy::new(0.0).validate().is_err());
        assert!(AdmissionPolicy::new(1.2).validate().is_err());
        assert!(AdmissionPolicy::new(1.0).validate().is_ok());
        let inverted = AdmissionPolicy::default().with_headroom(Low, 0.3);
        assert!(inverted.validate().unwrap_err().contains("higher priority"));
        let huge = AdmissionPolicy::default().with_headroom(Urgent, 2.0);
        assert!(huge.validate().unwrap_err().contains("urgent headroom"));
    }
}
