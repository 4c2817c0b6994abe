//! When to connect again after a connection ends, and when to call the server
//! unreachable.
//!
//! A plain exponential [`Backoff`] on the failed attempts is not enough for
//! a fleet: a server that accepts the registration and then drops the socket
//! (an overloaded node, a proxy with a short idle timeout) would reset the
//! count at every registration and get a reconnect every few milliseconds
//! from every worker. Here a registration counts as a success only once it
//! has lasted [`ReconnectPolicy::stable_after`]; a connection lost sooner
//! backs off like a failed connect. A refused token (HTTP 401/403, a wrong
//! key or secret) will not heal by itself in milliseconds: it is retried on
//! the long [`ReconnectPolicy::unauthorized_retry`] delay, in case the
//! credentials are being rotated. And a worker that has not been registered
//! for [`ReconnectPolicy::give_up_after`] says so: it keeps trying, but its
//! health turns bad, so that an orchestrator can replace it.
//!
//! Pure: time and the random sample are passed in.

use std::time::{Duration, Instant};

use crate::backoff::Backoff;

/// How the worker reconnects. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReconnectPolicy {
    /// Delays between attempts that fail.
    pub backoff: Backoff,
    /// A registration that lasts this long resets the backoff; one lost
    /// sooner counts as a failed attempt.
    pub stable_after: Duration,
    /// The least delay after the server refused the worker's token.
    pub unauthorized_retry: Duration,
    /// Not registered for this long: the server counts as unreachable
    /// (`None`: never give up).
    pub give_up_after: Option<Duration>,
}

impl Default for ReconnectPolicy {
    /// [`Backoff::default`] (100 ms to 10 s), stable after 30 s, 60 s after a
    /// refused token, never give up.
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            stable_after: Duration::from_secs(30),
            unauthorized_retry: Duration::from_secs(60),
            give_up_after: None,
        }
    }
}

impl ReconnectPolicy {
    /// Checks the bounds; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.backoff.validate()?;
        if self.unauthorized_retry.is_zero() {
            return Err("the retry delay after a refused token must be non-zero".into());
        }
        if self.give_up_after.is_some_and(|d| d.is_zero()) {
            return Err("the give-up budget must be non-zero".into());
        }
        Ok(())
    }
}

/// Why a connection ended, as far as reconnecting is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The connection attempt failed, or the server did not answer the
    /// registration.
    Failed,
    /// The server refused the token (HTTP 401 or 403).
    Unauthorized,
    /// A registered connection was lost.
    Lost,
}

/// The reconnect state of one worker.
#[derive(Clone, Debug)]
pub struct Reconnect {
    policy: ReconnectPolicy,
    /// Consecutive failures: attempts that failed and registrations that
    /// did not last.
    failures: u32,
    /// When the current registration began, while registered.
    registered_at: Option<Instant>,
    /// Since when the worker has not been registered.
    down_since: Instant,
    /// The server was declared unreachable (reported once per outage).
    unreachable: bool,
}

impl Reconnect {
    /// A worker starting at `now`, not registered yet.
    pub fn new(policy: ReconnectPolicy, now: Instant) -> Self {
        Self {
            policy,
            failures: 0,
            registered_at: None,
            down_since: now,
            unreachable: false,
        }
    }

    /// The worker registered at `now`.
    pub fn registered(&mut self, now: Instant) {
        self.registered_at = Some(now);
        self.unreachable = false;
    }

    /// The connection ended at `now` for `end`: the delay before the next
    /// attempt, given a uniform random `sample` in `0.0..1.0`.
    pub fn ended(&mut self, end: ConnectionEnd, now: Instant, sample: f64) -> Duration {
        if let Some(since) = self.lost(now)
            && now.saturating_duration_since(since) >= self.policy.stable_after
        {
            self.failures = 0;
        }
        let delay = self.policy.backoff.delay(self.failures, sample);
        self.failures = self.failures.saturating_add(1);
        match end {
            ConnectionEnd::Unauthorized => delay.max(self.policy.unauthorized_retry),
            ConnectionEnd::Failed | ConnectionEnd::Lost => delay,
        }
    }

    /// The connection ended at `now` without a say on the delay (the caller
    /// has its own, e.g. after a crash): the outage starts now. Answers when
    /// the registration that ended began, if there was one.
    pub fn lost(&mut self, now: Instant) -> Option<Instant> {
        let since = self.registered_at.take()?;
        self.down_since = now;
        Some(since)
    }

    /// Consecutive failures so far (0 after a stable registration).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// True when registered.
    pub fn is_registered(&self) -> bool {
        self.registered_at.is_some()
    }

    /// True once, when the worker has been without a registration for the
    /// give-up budget at `now`; again only after a registration in between.
    pub fn give_up_now(&mut self, now: Instant) -> bool {
        let Some(budget) = self.policy.give_up_after else {
            return false;
        };
        if self.unreachable
            || self.registered_at.is_some()
            || now.saturating_duration_since(self.down_since) < budget
        {
            return false;
        }
        self.unreachable = true;
        true
    }

    /// True while the server counts as unreachable.
    pub fn is_unreachable(&self) -> bool {
        self.unreachable
    }

    /// How long the worker has been without a registration at `now` (zero
    /// while registered).
    pub fn down_for(&self, now: Instant) -> Duration {
        if self.registered_at.is_some() {
            Duration::ZERO
        } else {
            now.saturating_duration_since(self.down_since)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
                jitter: 0.0,
            },
            give_up_after: Some(Duration::from_secs(60)),
            ..ReconnectPolicy::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn failed_attempts_back_off_exponentially() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(policy(), t0);
        let delays: Vec<Duration> = (0..5)
            .map(|_| r.ended(ConnectionEnd::Failed, t0, 0.3))
            .collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(800), ms(1600)]);
        assert_eq!(r.failures(), 5);
    }

    #[test]
    fn a_registration_dropped_at_once_backs_off_like_a_failure() {
        // the storm: register, dropped 50 ms later, again and again
        let t0 = Instant::now();
        let mut r = Reconnect::new(policy(), t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..5 {
            r.registered(now);
            now += ms(50);
            let delay = r.ended(ConnectionEnd::Lost, now, 0.0);
            delays.push(delay);
            now += delay;
        }
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(800), ms(1600)]);
    }

    #[test]
    fn a_stable_registration_resets_the_backoff() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(policy(), t0);
        for _ in 0..4 {
            r.ended(ConnectionEnd::Failed, t0, 0.0);
        }
        r.registered(t0);
        let after = t0 + Duration::from_secs(30);
        assert_eq!(r.ended(ConnectionEnd::Lost, after, 0.0), ms(100));
        assert_eq!(r.ended(ConnectionEnd::Failed, after, 0.0), ms(200));
    }

    #[test]
    fn a_refused_token_waits_the_long_delay() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(policy(), t0);
        assert_eq!(
            r.ended(ConnectionEnd::Unauthorized, t0, 0.0),
            Duration::from_secs(60)
        );
        assert_eq!(r.ended(ConnectionEnd::Failed, t0, 0.0), ms(200));
    }

    #[test]
    fn the_server_is_unreachable_once_per_outage_past_the_budget() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(policy(), t0);
        assert!(!r.give_up_now(t0 + Duration::from_secs(59)));
        assert!(r.give_up_now(t0 + Duration::from_secs(60)));
        assert!(r.is_unreachable());
        assert!(!r.give_up_now(t0 + Duration::from_secs(90)), "said once");
        let back = t0 + Duration::from_secs(100);
        r.registered(back);
        assert!(!r.is_unreachable());
        assert_eq!(r.down_for(back), Duration::ZERO);
        let lost = back + Duration::from_secs(10);
        r.ended(ConnectionEnd::Lost, lost, 0.0);
        assert!(!r.give_up_now(lost + Duration::from_secs(59)));
        assert!(r.give_up_now(lost + Duration::from_secs(60)));
        let never = ReconnectPolicy::default();
        let mut r = Reconnect::new(never, t0);
        assert!(!r.give_up_now(t0 + Duration::from_secs(1_000_000)));
    }

    #[test]
    fn an_outage_counts_from_the_loss_however_the_delay_is_decided() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(policy(), t0);
        r.registered(t0);
        let lost = t0 + Duration::from_secs(100);
        assert_eq!(r.lost(lost), Some(t0));
        assert!(!r.is_registered());
        assert_eq!(r.down_for(lost + ms(5)), ms(5));
        assert!(r.give_up_now(lost + Duration::from_secs(60)));
        assert_eq!(r.lost(lost), None, "only a registration can be lost");
    }

    #[test]
    fn validation_names_the_bad_value() {
        assert!(ReconnectPolicy::default().validate().is_ok());
        let zero = ReconnectPolicy {
            give_up_after: Some(Duration::ZERO),
            ..ReconnectPolicy::default()
        };
        assert!(zero.validate().unwrap_err().contains("give-up"));
    }
}
