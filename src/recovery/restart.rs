//! [`RestartPolicy`]: whether, and when, a failed job runs again.
//!
//! As in an OTP supervisor, a job may be restarted at most `max_restarts`
//! times within any `period` (the restart *intensity*); one more failure in
//! that window means the fault is not passing, and the job gives up — FAILED
//! with its last error — instead of crashing in a loop. Unlike OTP, restarts
//! are spaced by an exponential [`Backoff`], so a job that fails because a
//! service it calls is down does not hammer it. The exponent counts only the
//! restarts still inside the window: a job that failed once an hour ago
//! restarts as quickly as one that never failed.
//!
//! The policy reads no clock: the caller passes `now`, and tests drive it on
//! simulated time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;

/// What to do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Run the job again after `after`.
    Restart {
        /// How long to wait first.
        after: Duration,
        /// Which restart this is over the policy's life: 1 for the first.
        attempt: u32,
    },
    /// Too many failures within the period: report the job FAILED.
    GiveUp,
}

/// Restart limits for one job: at most `max_restarts` within `period`, with
/// a backoff between restarts. One value per job; it remembers the job's
/// recent restarts.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    max_restarts: u32,
    period: Duration,
    backoff: Backoff,
    /// When the restarts still inside the window happened, oldest first; at
    /// most `max_restarts` long.
    recent: VecDeque<Instant>,
    /// Restarts granted over the policy's life.
    restarts: u32,
    /// Set once the policy gives up; it stays given up.
    gave_up: bool,
}

impl RestartPolicy {
    /// The default intensity: 3 restarts. Enough to ride out a transient
    /// fault (a dropped upstream connection, one bad input), few enough that
    /// a job that crashes on every run is reported within seconds.
    pub const DEFAULT_MAX_RESTARTS: u32 = 3;

    /// The default period: 60 s, several times the longest default backoff
    /// (10 s), so the limit sees a crash loop whatever its pace.
    pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);

    /// At most `max_restarts` restarts within any `period`, spaced by
    /// `backoff`. `max_restarts = 0` never restarts.
    pub fn new(max_restarts: u32, period: Duration, backoff: Backoff) -> Self {
        Self {
            max_restarts,
            period,
            backoff,
            recent: VecDeque::with_capacity(max_restarts.min(64) as usize),
            restarts: 0,
            gave_up: false,
        }
    }

    /// Never restarts: the first failure is final.
    pub fn never() -> Self {
        Self::new(0, Duration::ZERO, Backoff::default())
    }

    /// Checks the bounds; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_restarts > 0 && self.period.is_zero() {
            return Err("the restart period must be non-zero when restarts are allowed".into());
        }
        self.backoff.validate()
    }

    /// The limit on restarts within the period.
    pub fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    /// The window the limit applies to.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How many restarts the policy has granted.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Decides about a failure at `now`, with the backoff's full delay (no
    /// jitter). See [`on_failure_jittered`](Self::on_failure_jittered).
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        self.on_failure_jittered(now, 0.0)
    }

    /// Decides about a failure at `now`. `sample` is a uniform random number
    /// in `0.0..1.0` for the backoff's jitter (`rand::random()` in the
    /// runtime, a constant in tests), so that jobs that failed together do
    /// not restart in lockstep.
    pub fn on_failure_jittered(&mut self, now: Instant, sample: f64) -> RestartDecision {
        if self.gave_up {
            return RestartDecision::GiveUp;
        }
        while let Some(&oldest) = self.recent.front() {
            if now.saturating_duration_since(oldest) >= self.period {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        let in_window = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        if in_window >= self.max_restarts {
            self.gave_up = true;
            self.recent.clear();
            return RestartDecision::GiveUp;
        }
        let after = self.backoff.delay(in_window, sample);
        self.recent.push_back(now);
        self.restarts = self.restarts.saturating_add(1);
        RestartDecision::Restart {
            after,
            attempt: self.restarts,
        }
    }
}

impl Default for RestartPolicy {
    /// [`DEFAULT_MAX_RESTARTS`](Self::DEFAULT_MAX_RESTARTS) within
    /// [`DEFAULT_PERIOD`](Self::DEFAULT_PERIOD), with the default backoff
    /// (100 ms doubling to 10 s).
    fn default() -> Self {
        Self::new(
            Self::DEFAULT_MAX_RESTARTS,
            Self::DEFAULT_PERIOD,
            Backoff::default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn steady() -> Backoff {
        Backoff {
            jitter: 0.0,
            ..Backoff::default()
        }
    }

    fn restart(after: u64, attempt: u32) -> RestartDecision {
        RestartDecision::Restart {
            after: ms(after),
            attempt,
        }
    }

    #[test]
    fn restarts_back_off_then_give_up_past_the_intensity() {
        let t0 = Instant::now();
        let mut policy = RestartPolicy::new(3, Duration::from_secs(60), steady());
        assert_eq!(policy.on_failure(t0), restart(100, 1));
        assert_eq!(policy.on_failure(t0 + ms(200)), restart(200, 2));
        assert_eq!(policy.on_failure(t0 + ms(500)), restart(400, 3));
        assert_eq!(policy.on_failure(t0 + ms(1_000)), RestartDecision::GiveUp);
        assert_eq!(policy.restarts(), 3);
    }

    #[test]
    fn giving_up_is_final() {
        let t0 = Instant::now();
        let mut policy = RestartPolicy::new(1, Duration::from_secs(10), steady());
        assert_eq!(policy.on_failure(t0), restart(100, 1));
        assert_eq!(policy.on_failure(t0 + ms(1)), RestartDecision::GiveUp);
        assert_eq!(
            policy.on_failure(t0 + Duration::from_secs(3_600)),
            RestartDecision::GiveUp
        );
    }

    #[test]
    fn failures_outside_the_period_are_forgotten() {
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        let mut policy = RestartPolicy::new(2, period, steady());
        assert_eq!(policy.on_failure(t0), restart(100, 1));
        assert_eq!(policy.on_failure(t0 + ms(5_000)), restart(200, 2));
        // The first restart leaves the window exactly one period later.
        assert_eq!(policy.on_failure(t0 + period), restart(200, 3));
        // Quiet for a period: the backoff starts over.
        assert_eq!(policy.on_failure(t0 + ms(40_000)), restart(100, 4));
        assert_eq!(policy.on_failure(t0 + ms(40_001)), restart(200, 5));
        assert_eq!(policy.on_failure(t0 + ms(40_002)), RestartDecision::GiveUp);
    }

    #[test]
    fn a_steady_crash_loop_slower_than_the_period_never_gives_up() {
        let t0 = Instant::now();
        let mut policy = RestartPolicy::new(1, Duration::from_secs(1), steady());
        for n in 0..100u32 {
            let decision = policy.on_failure(t0 + Duration::from_secs(u64::from(n)));
            assert_eq!(decision, restart(100, n + 1));
        }
    }

    #[test]
    fn jitter_shortens_the_delay_by_at_most_its_fraction() {
        let t0 = Instant::now();
        let mut policy = RestartPolicy::default();
        match policy.on_failure_jittered(t0, 1.0) {
            RestartDecision::Restart { after, .. } => assert_eq!(after, ms(50)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn zero_restarts_gives_up_at_once_and_validation_catches_nonsense() {
        let mut never = RestartPolicy::never();
        assert_eq!(never.on_failure(Instant::now()), RestartDecision::GiveUp);
        assert!(never.validate().is_ok());
        assert!(RestartPolicy::default().validate().is_ok());
        assert!(
            RestartPolicy::new(3, Duration::ZERO, Backoff::default())
                .validate()
                .is_err()
        );
    }
}
