//! [`JobRateLimiter`]: how fast the worker accepts jobs, overall and per
//! room.
//!
//! A worker that just came up, or whose neighbours just went down, is
//! offered jobs as fast as the server can send them; starting them all at
//! once overloads the handler's upstreams (speech APIs, LLMs) before the
//! load reflects it. The global limit smooths that. The per-room limit stops
//! one room from churning through agents (a client that reconnects in a
//! loop, a misconfigured dispatch). A refusal surfaces as
//! `available: false`, so the server offers the job elsewhere.
//!
//! Both are GCRA limiters from the `governor` crate: a burst of up to
//! `jobs`, refilled at a steady `jobs` per `per` (one every `per / jobs`). The per-room state is keyed by room name; keys whose
//! state has fully replenished carry no information and are dropped by
//! [`JobRateLimiter::retain_recent`] (call it from a periodic timer), and
//! the number of rooms tracked at once is bounded by `max_rooms`.
//!
//! The clock is a type parameter so tests drive it with governor's
//! `FakeRelativeClock` instead of sleeping.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// The default bound on rooms tracked at once. Each costs under a hundred
/// bytes; ten thousand rooms within one replenish period is far past what
/// one worker is dispatched, so reaching it means a flood, not traffic.
pub const DEFAULT_MAX_ROOMS: usize = 10_000;

/// A rate of `jobs` per `per`: up to `jobs` at once after a quiet spell
/// (the burst), then one more every `per / jobs` — a sustained `jobs` per
/// `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Jobs per `per`, and the largest burst.
    pub jobs: u32,
    /// The period the `jobs` are spread over.
    pub per: Duration,
}

impl RateLimit {
    /// At most `jobs` per second.
    pub fn per_second(jobs: u32) -> Self {
        Self {
            jobs,
            per: Duration::from_secs(1),
        }
    }

    /// At most `jobs` per minute.
    pub fn per_minute(jobs: u32) -> Self {
        Self {
            jobs,
            per: Duration::from_secs(60),
        }
    }

    fn quota(self) -> Result<Quota, InvalidRateLimit> {
        let jobs = NonZeroU32::new(self.jobs).ok_or(InvalidRateLimit::ZeroJobs)?;
        Quota::with_period(self.per / self.jobs)
            .map(|quota| quota.allow_burst(jobs))
            .ok_or(InvalidRateLimit::ZeroWindow)
    }
}

/// Which rates the worker accepts jobs at; `None`: no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Jobs accepted by the whole worker.
    pub global: Option<RateLimit>,
    /// Jobs accepted for any one room.
    pub per_room: Option<RateLimit>,
    /// The most rooms tracked at once (see [`RateLimited::TooManyRooms`]).
    pub max_rooms: usize,
}

impl Default for RateLimits {
    /// No limits; [`DEFAULT_MAX_ROOMS`].
    fn default() -> Self {
        Self {
            global: None,
            per_room: None,
            max_rooms: DEFAULT_MAX_ROOMS,
        }
    }
}

/// A [`RateLimit`] that cannot be enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRateLimit {
    /// `jobs` is 0, which would refuse every job: leave the limit out
    /// (`None`) for no limit, or stop the worker.
    #[error("a rate limit must allow at least one job")]
    ZeroJobs,
    /// `per` is shorter than a nanosecond per job.
    #[error("a rate limit's window must be longer than zero")]
    ZeroWindow,
}

/// A job refused by a rate limit: say `available: false` and let the server
/// offer it elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateLimited {
    /// The worker's overall rate is used up.
    #[error("the worker accepts no more jobs for now (global rate limit); next in {retry_after:?}")]
    Global {
        /// When the next job would be accepted.
        retry_after: Duration,
    },
    /// This room's rate is used up.
    #[error(
        "room {room:?} accepts no more jobs for now (per-room rate limit); next in {retry_after:?}"
    )]
    Room {
        /// The room.
        room: String,
        /// When its next job would be accepted.
        retry_after: Duration,
    },
    /// `max_rooms` rooms are tracked even after dropping the ones with
    /// nothing left to remember: a flood of new rooms. Every job is refused,
    /// for tracked rooms too, until some rooms are forgotten (see
    /// [`JobRateLimiter::retain_recent`]) — memory stays bounded.
    #[error("too many rooms rate-limited at once ({tracked}); refusing until some replenish")]
    TooManyRooms {
        /// Rooms tracked.
        tracked: usize,
    },
}

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Keyed<C> =
    RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The global and per-room limits on accepted jobs. See the module docs.
///
/// Checks are internally synchronised (governor's lock-free cell and a
/// locked map), so `check` takes `&self`; one instance belongs to one
/// worker.
pub struct JobRateLimiter<C: Clock = DefaultClock> {
    global: Option<Direct<C>>,
    per_room: Option<Keyed<C>>,
    max_rooms: usize,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for JobRateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRateLimiter")
            .field("global", &self.global.is_some())
            .field("per_room", &self.per_room.is_some())
            .field("max_rooms", &self.max_rooms)
            .finish_non_exhaustive()
    }
}

impl JobRateLimiter {
    /// Limits on the real (monotonic) clock.
    pub fn new(limits: RateLimits) -> Result<Self, InvalidRateLimit> {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> JobRateLimiter<C> {
    /// Limits on the given clock; tests pass a
    /// `governor::clock::FakeRelativeClock` and advance it.
    pub fn with_clock(limits: RateLimits, clock: C) -> Result<Self, InvalidRateLimit> {
        let global = limits
            .global
            .map(|limit| {
                Ok::<_, InvalidRateLimit>(RateLimiter::direct_with_clock(
                    limit.quota()?,
                    clock.clone(),
                ))
            })
            .transpose()?;
        let per_room = limits
            .per_room
            .map(|limit| {
                Ok::<_, InvalidRateLimit>(RateLimiter::new(
                    limit.quota()?,
                    DefaultKeyedStateStore::default(),
                    clock.clone(),
                ))
            })
            .transpose()?;
        Ok(Self {
            global,
            per_room,
            max_rooms: limits.max_rooms,
            clock,
        })
    }

    /// Counts one job accepted for `room`, or says which limit refuses it.
    ///
    /// The room's limit is checked first, so a room that floods is refused
    /// without spending the global budget; a job the room allows but the
    /// global limit refuses has spent one of the room's jobs (governor
    /// cannot take a check back) — harmless, as that room was busy anyway.
    /// Jobs without a room (local jobs may have none) share the room `""`.
    pub fn check(&self, room: &str) -> Result<(), RateLimited> {
        if let Some(per_room) = &self.per_room {
            if per_room.len() >= self.max_rooms {
                per_room.retain_recent();
                if per_room.len() >= self.max_rooms {
                    return Err(RateLimited::TooManyRooms {
                        tracked: per_room.len(),
                    });
                }
            }
            per_room
                .check_key(&room.to_owned())
                .map_err(|not_until| RateLimited::Room {
                    room: room.to_owned(),
                    retry_after: not_until.wait_time_from(self.clock.now()),
                })?;
        }
        if let Some(global) = &self.global {
            global.check().map_err(|not_until| RateLimited::Global {
                retry_after: not_until.wait_time_from(self.clock.now()),
            })?;
        }
        Ok(())
    }

    /// Forgets the rooms whose state is that of a room never seen: governor
    /// drops a room one replenish interval (`per / jobs`) after it has fully
    /// replenished. Call it from a timer, e.g. every minute, so that memory
    /// follows the rooms seen recently, not all rooms ever.
    pub fn retain_recent(&self) {
        if let Some(per_room) = &self.per_room {
            per_room.retain_recent();
            per_room.shrink_to_fit();
        }
    }

    /// Rooms whose state is kept now.
    pub fn tracked_rooms(&self) -> usize {
        self.per_room.as_ref().map_or(0, |per_room| per_room.len())
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(limits: RateLimits) -> (JobRateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            JobRateLimiter::with_clock(limits, clock.clone()).unwrap(),
            clock,
        )
    }

    #[test]
    fn no_limits_accept_everything() {
        let (limiter, _) = limiter(RateLimits::default());
        for _ in 0..10_000 {
            limiter.check("room").unwrap();
        }
        assert_eq!(limiter.tracked_rooms(), 0);
    }

    #[test]
    fn the_global_limit_refuses_past_its_burst_and_replenishes_with_time() {
        let (limiter, clock) = limiter(RateLimits {
            global: Some(RateLimit::per_second(2)),
            ..RateLimits::default()
        });
        limiter.check("a").unwrap();
        limiter.check("b").unwrap();
        assert_eq!(
            limiter.check("c"),
            Err(RateLimited::Global {
                retry_after: Duration::from_millis(500)
            })
        );
        clock.advance(Duration::from_millis(499));
        assert!(limiter.check("c").is_err());
        clock.advance(Duration::from_millis(1));
        limiter.check("c").unwrap();
        assert!(limiter.check("d").is_err());
        // a full window later the whole burst is back
        clock.advance(Duration::from_secs(1));
        limiter.check("d").unwrap();
        limiter.check("e").unwrap();
        assert!(limiter.check("f").is_err());
    }

    #[test]
    fn the_room_limit_is_per_room() {
        let (limiter, clock) = limiter(RateLimits {
            per_room: Some(RateLimit::per_minute(1)),
            ..RateLimits::default()
        });
        limiter.check("busy").unwrap();
        let refused = limiter.check("busy").unwrap_err();
        assert_eq!(
            refused,
            RateLimited::Room {
                room: "busy".into(),
                retry_after: Duration::from_secs(60)
            }
        );
        assert!(refused.to_string().contains("\"busy\""));
        limiter.check("quiet").unwrap();
        clock.advance(Duration::from_secs(60));
        limiter.check("busy").unwrap();
    }

    #[test]
    fn a_room_refusal_does_not_spend_the_global_budget() {
        let (limiter, _) = limiter(RateLimits {
            global: Some(RateLimit::per_minute(2)),
            per_room: Some(RateLimit::per_minute(1)),
            ..RateLimits::default()
        });
        limiter.check("a").unwrap();
        for _ in 0..5 {
            assert!(matches!(limiter.check("a"), Err(RateLimited::Room { .. })));
        }
        limiter.check("b").unwrap();
        assert!(matches!(
            limiter.check("c"),
            Err(RateLimited::Global { .. })
        ));
    }

    #[test]
    fn rooms_are_forgotten_once_replenished_and_bounded() {
        let (limiter, clock) = limiter(RateLimits {
            per_room: Some(RateLimit::per_second(1)),
            max_rooms: 3,
            ..RateLimits::default()
        });
        for room in ["a", "b", "c"] {
            limiter.check(room).unwrap();
        }
        assert_eq!(limiter.tracked_rooms(), 3);
        // all three still limited: a fourth room is one too many
        assert_eq!(
            limiter.check("d"),
            Err(RateLimited::TooManyRooms { tracked: 3 })
        );
        // replenished, but governor keeps a key one more interval
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check("d").is_err());
        // then the bound makes room by itself
        clock.advance(Duration::from_secs(1));
        limiter.check("d").unwrap();
        assert_eq!(limiter.tracked_rooms(), 1);
        // and the periodic housekeeping empties the map
        clock.advance(Duration::from_secs(2));
        limiter.retain_recent();
        assert_eq!(limiter.tracked_rooms(), 0);
    }

    #[test]
    fn a_zero_limit_is_a_configuration_error() {
        let zero_jobs = RateLimits {
            global: Some(RateLimit::per_second(0)),
            ..RateLimits::default()
        };
        assert_eq!(
            JobRateLimiter::new(zero_jobs).err(),
            Some(InvalidRateLimit::ZeroJobs)
        );
        let zero_window = RateLimits {
            per_room: Some(RateLimit {
                jobs: 5,
                per: Duration::ZERO,
            }),
            ..RateLimits::default()
        };
        assert_eq!(
            JobRateLimiter::new(zero_window).err(),
            Some(InvalidRateLimit::ZeroWindow)
        );
        assert!(JobRateLimiter::new(RateLimits::default()).is_ok());
    }
}
