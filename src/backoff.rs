//! Exponential backoff with jitter, as a pure function of the attempt number.
//!
//! Reconnects use it: the first retry comes quickly (a server restart or a
//! load balancer hiccup heals in milliseconds), later ones spread out to the
//! cap, and jitter keeps a fleet of workers that lost the same server from
//! reconnecting in lockstep. The caller supplies the random sample, so tests
//! need no randomness.

use std::time::Duration;

/// Delays between attempts: `initial * 2^attempt`, capped at `max`, of which a
/// random fraction up to `jitter` is taken off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// The fraction of each delay that is random, in `0.0..=1.0`: with 0.5 a
    /// delay `d` becomes something in `d/2..=d`.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 100 ms, doubling to a cap of 10 s, half of it random.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry), given
    /// a uniform random `sample` in `0.0..1.0`.
    pub fn delay(&self, attempt: u32, sample: f64) -> Duration {
        let doubled = self
            .initial
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max);
        let base = doubled.min(self.max);
        let sample = sample.clamp(0.0, 1.0);
        base.mul_f64(1.0 - self.jitter * sample)
    }

    /// Checks the bounds; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial.is_zero() {
            return Err("the initial delay must be non-zero".into());
        }
        if self.max < self.initial {
            return Err("the cap must not be below the initial delay".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err("jitter must be between 0 and 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_initial_delay_up_to_the_cap() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let delays: Vec<u128> = (0..10).map(|n| b.delay(n, 0.7).as_millis()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(10));
    }

    #[test]
    fn jitter_takes_off_at_most_its_fraction() {
        let b = Backoff::default();
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(800));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(400));
        let mid = b.delay(3, 0.5);
        assert!(mid > Duration::from_millis(400) && mid < Duration::from_millis(800));
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert!(Backoff::default().validate().is_ok());
        let zero = Backoff {
            initial: Duration::ZERO,
            ..Backoff::default()
        };
        assert!(zero.validate().is_err());
        let inverted = Backoff {
            max: Duration::from_millis(10),
            ..Backoff::default()
        };
        assert!(inverted.validate().is_err());
        let wild = Backoff {
            jitter: 1.5,
            ..Backoff::default()
        };
        assert!(wild.validate().is_err());
    }
}
