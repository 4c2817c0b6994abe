//! How many worker replicas a fleet should run: the [`AutoScaler`], a pure
//! scaling policy.
//!
//! An operator (a Kubernetes controller, a script over a cloud API) samples
//! the fleet now and then — the replicas' loads and the jobs they run — and
//! asks the scaler whether to scale up, scale down or hold. The scaler never
//! reads a clock and never touches the fleet: time is a [`Duration`] since
//! any fixed origin of the caller's clock, passed in, so the tests run it on
//! simulated time.
//!
//! ## The desired count
//!
//! Loads are 0.0–1.0 per worker, so a fleet of `replicas` at `mean_load`
//! carries `replicas × mean_load` replicas' worth of work. At
//! [`ScalingPolicy::target_load`] per replica that needs (the Kubernetes
//! HPA's formula)
//!
//! ```text
//! desired = ceil(replicas × mean_load / target_load)
//! ```
//!
//! With [`ScalingPolicy::jobs_per_replica`] set, the jobs need
//! `ceil(jobs / (jobs_per_replica × target_load))` replicas too and the
//! larger count wins, so a fleet scaled to zero, with no load to report,
//! still comes up for its jobs. The count is clamped to
//! `[min_replicas, max_replicas]`.
//!
//! ## When the count changes
//!
//! Followed at every sample, the formula would move the count at every
//! wobble of the load. The scaler compares the fleet's *utilization* — the
//! mean load, or the larger of it and `jobs / (replicas × jobs_per_replica)`
//! — with two thresholds:
//! - above [`ScalingPolicy::scale_up_threshold`]: up to the desired count
//!   (at most [`ScalingPolicy::max_step_up`] more), once
//!   [`ScalingPolicy::up_cooldown`] has passed since the last scale event;
//! - below [`ScalingPolicy::scale_down_threshold`]: down, once
//!   [`ScalingPolicy::down_cooldown`] has passed since the last scale event,
//!   and only to the *highest* count desired over the last
//!   [`ScalingPolicy::stabilization`] (the HPA's downscale stabilization):
//!   a dip shorter than that window sheds nothing;
//! - in between: hold. This band is the hysteresis. The target lies inside
//!   it, and a change lands the fleet at or just under the target, so the
//!   next sample does not undo it, and a load wandering inside the band
//!   never moves the count.
//!
//! Scale-ups are quick and scale-downs slow on purpose: too few replicas
//! refuse jobs, too many only cost money. A scaler that has just started
//! knows nothing of the fleet's past, so it watches for one down cooldown
//! before its first scale-down. The bounds come before all of that: a fleet
//! below `min_replicas` comes up to it at once and one above `max_replicas`
//! goes down to it at once, whatever the cooldowns.
//!
//! ## Trend
//!
//! With [`ScalingPolicy::trend`], the scaler fits a least-squares line to
//! the fleet's total load (`replicas × mean_load`) over the trend window and
//! extrapolates it `horizon` ahead, like the predictive load calculator does
//! for one worker. The effective mean is the larger of the mean now and the
//! forecast (at most 1.0), so a steep ramp scales up before it crosses the
//! threshold, while a falling trend never sheds replicas sooner than the
//! load itself says. The line goes through the *total* load because a
//! scale-down doubles the mean of a halved fleet overnight: fitted to the
//! mean, that jump would read as a ramp and scale straight back up. A
//! sudden step up of the work does read as a ramp until it leaves the
//! window: the trend may add replicas ahead of a load that has already
//! stopped rising.
//!
//! ## Feeding it
//!
//! Count replicas still starting with a load of 0 (as the HPA does) and
//! leave out those draining: then a scale-up in progress is neither undone
//! nor repeated. Apply `Up`/`Down` by setting the fleet's count to `to`;
//! `Hold` carries the count the fleet has.
//!
//! ```rust
//! use std::time::Duration;
//! use lkagent::scaling::{AutoScaler, FleetSample, ScaleDecision, ScalingPolicy};
//!
//! let mut scaler = AutoScaler::new(ScalingPolicy { min_replicas: 2, ..ScalingPolicy::default() })?;
//! // Three replicas at 90 %: 2.7 replicas' worth of work; at 60 % each
//! // that needs ceil(2.7 / 0.6) = 5 replicas.
//! let decision = scaler.observe(Duration::ZERO, FleetSample::from_loads(&[0.9, 0.9, 0.9], 12));
//! assert_eq!(decision, ScaleDecision::Up { from: 3, to: 5 });
//! // The same work over five replicas: 54 % each, inside the band.
//! let decision = scaler.observe(Duration::from_secs(15), FleetSample::from_loads(&[0.54; 5], 12));
//! assert_eq!(decision.replicas(), 5);
//! assert_eq!(scaler.recommended(), 5);
//! # Ok::<(), lkagent::scaling::ScalingError>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// The most samples the scaler keeps, whatever its windows: memory stays
/// bounded even if it is fed far faster than its windows need.
pub const MAX_HISTORY: usize = 1024;

/// Samples closer together than the longest window divided by this are
/// merged into one history entry, so the history covers the whole window in
/// about this many entries, half of [`MAX_HISTORY`]: fast sampling never
/// pushes the start of the stabilization window out of the buffer.
const ENTRIES_PER_WINDOW: u32 = 512;

/// The fewest samples a trend is fitted to: a line through two points is
/// only the noise between them.
const MIN_TREND_SAMPLES: usize = 3;

/// Replicas' worth of float noise ignored when rounding the desired count
/// up: a mean of f32 loads exactly at the target must not add a replica.
const ROUNDING_SLACK: f64 = 1e-4;

/// When and how far the fleet scales. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalingPolicy {
    /// The fewest replicas, whatever the load (0 allows scaling to zero).
    pub min_replicas: u32,
    /// The most replicas, whatever the load (at least 1).
    pub max_replicas: u32,
    /// The load per replica the desired count aims for, in (0, 1].
    pub target_load: f32,
    /// A utilization above this scales up; at least `target_load`.
    pub scale_up_threshold: f32,
    /// A utilization below this may scale down; at most `target_load`, and
    /// below `scale_up_threshold` (the gap is the hysteresis band).
    pub scale_down_threshold: f32,
    /// The least time from a scale event to the next scale-up.
    pub up_cooldown: Duration,
    /// The least time from a scale event (or the first sample) to the next
    /// scale-down.
    pub down_cooldown: Duration,
    /// A scale-down goes only to the highest count desired over this window,
    /// so a brief dip does not shed replicas.
    pub stabilization: Duration,
    /// The most replicas one scale-up adds (`None`: no limit), for fleets
    /// whose new replicas are costly to start all at once.
    pub max_step_up: Option<u32>,
    /// Jobs one replica runs at full load: set, the jobs drive the count
    /// too (`ceil(jobs / (jobs_per_replica × target_load))`).
    pub jobs_per_replica: Option<u32>,
    /// Scales up ahead of a rising load (`None`: on the load now only).
    pub trend: Option<Trend>,
}

impl Default for ScalingPolicy {
    /// 1 to 10 replicas aiming at 60 % load, up above 75 %, down below 40 %;
    /// up at most once a minute, down at most once per 5 minutes with a
    /// 5 minute stabilization window; no step limit, no jobs term, no trend.
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 10,
            target_load: 0.6,
            scale_up_threshold: 0.75,
            scale_down_threshold: 0.4,
            up_cooldown: Duration::from_secs(60),
            down_cooldown: Duration::from_secs(300),
            stabilization: Duration::from_secs(300),
            max_step_up: None,
            jobs_per_replica: None,
            trend: None,
        }
    }
}

impl ScalingPolicy {
    /// Checks the bounds; the error names the first field out of range.
    pub fn validate(&self) -> Result<(), ScalingError> {
        let bad = |field, reason| Err(ScalingError::InvalidPolicy { field, reason });
        let (target, up, down) = (
            self.target_load,
            self.scale_up_threshold,
            self.scale_down_threshold,
        );
        if self.max_replicas == 0 {
            return bad("max_replicas", "must be at least 1");
        }
        if self.min_replicas > self.max_replicas {
            return bad("min_replicas", "must not exceed max_replicas");
        }
        if target.is_nan() || target <= 0.0 || target > 1.0 {
            return bad("target_load", "must be in (0, 1]");
        }
        // above the target, a scale-up always adds at least one replica
        if !up.is_finite() || up < target {
            return bad(
                "scale_up_threshold",
                "must be finite and at least target_load",
            );
        }
        if down.is_nan() || down < 0.0 || down > target {
            return bad("scale_down_threshold", "must be in [0, target_load]");
        }
        if down >= up {
            return bad("scale_down_threshold", "must be below scale_up_threshold");
        }
        if self.max_step_up == Some(0) {
            return bad("max_step_up", "must be at least 1 (None: no limit)");
        }
        if self.jobs_per_replica == Some(0) {
            return bad("jobs_per_replica", "must be at least 1");
        }
        if self.trend.is_some_and(|t| t.window.is_zero()) {
            return bad("trend.window", "must be non-zero");
        }
        Ok(())
    }

    /// How long the scaler keeps samples: the longest of its windows.
    fn memory(&self) -> Duration {
        self.trend
            .map_or(Duration::ZERO, |t| t.window)
            .max(self.stabilization)
    }
}

/// The predictive term: the total load's least-squares slope over `window`,
/// extrapolated `horizon` ahead. It only scales up earlier, never down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trend {
    /// How far back the line is fitted; it needs at least 3 samples over
    /// half of it, so a burst of samples does not extrapolate its noise.
    pub window: Duration,
    /// How far ahead the line is read: about the time a new replica takes
    /// to start taking jobs.
    pub horizon: Duration,
}

impl Default for Trend {
    /// A line over the last 2 minutes read 1 minute ahead.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(120),
            horizon: Duration::from_secs(60),
        }
    }
}

/// A policy out of range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScalingError {
    /// `field` of the [`ScalingPolicy`] is wrong, as `reason` says.
    InvalidPolicy {
        /// The field, as spelled in [`ScalingPolicy`].
        field: &'static str,
        /// What it must be.
        reason: &'static str,
    },
}

impl fmt::Display for ScalingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidPolicy { field, reason } => {
                write!(f, "invalid scaling policy: {field} {reason}")
            }
        }
    }
}

impl std::error::Error for ScalingError {}

/// The fleet at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FleetSample {
    /// Replicas in the fleet, counting those still starting (at load 0).
    pub replicas: u32,
    /// Their mean load, 0.0–1.0 (NaN counts as 0; out of range is clamped).
    pub mean_load: f32,
    /// Jobs running or waiting in the fleet (used with `jobs_per_replica`).
    pub jobs: u64,
}

impl FleetSample {
    /// The fleet from each replica's load: as many replicas as loads, their
    /// mean (0 for none), each load clamped to 0.0–1.0 and NaN counted as 0.
    pub fn from_loads(loads: &[f32], jobs: u64) -> Self {
        let sum: f64 = loads.iter().map(|&l| f64::from(clean_load(l))).sum();
        let mean_load = if loads.is_empty() {
            0.0
        } else {
            (sum / loads.len() as f64) as f32
        };
        let replicas = u32::try_from(loads.len()).unwrap_or(u32::MAX);
        Self {
            replicas,
            mean_load,
            jobs,
        }
    }

    /// The load cleaned, and none claimed for a fleet of none.
    fn sanitized(self) -> Self {
        let mean_load = if self.replicas == 0 {
            0.0
        } else {
            clean_load(self.mean_load)
        };
        Self { mean_load, ..self }
    }

    /// The fleet's work in replicas' worth.
    fn total_load(&self) -> f64 {
        f64::from(self.replicas) * f64::from(self.mean_load)
    }
}

/// A load in 0.0–1.0, NaN as 0: a worker that cannot say is not counted busy.
fn clean_load(load: f32) -> f32 {
    if load.is_nan() {
        0.0
    } else {
        load.clamp(0.0, 1.0)
    }
}

/// What the fleet should do after a sample. [`replicas`](Self::replicas) is
/// the count it should have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleDecision {
    /// Grow from `from` to `to` replicas.
    Up {
        /// The count now.
        from: u32,
        /// The count to set.
        to: u32,
    },
    /// Shrink from `from` to `to` replicas (drain the others).
    Down {
        /// The count now.
        from: u32,
        /// The count to set.
        to: u32,
    },
    /// Keep `replicas`, for `reason`.
    Hold {
        /// The count now, and still.
        replicas: u32,
        /// Why nothing changes.
        reason: HoldReason,
    },
}

impl ScaleDecision {
    /// The count recommended: `to`, or the count held.
    pub fn replicas(&self) -> u32 {
        match *self {
            Self::Up { to, .. } | Self::Down { to, .. } => to,
            Self::Hold { replicas, .. } => replicas,
        }
    }
}

impl fmt::Display for ScaleDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Up { from, to } => write!(f, "up {from} -> {to}"),
            Self::Down { from, to } => write!(f, "down {from} -> {to}"),
            Self::Hold { replicas, reason } => write!(f, "hold {replicas} ({})", reason.as_str()),
        }
    }
}

/// Why a [`ScaleDecision::Hold`] changes nothing, for logs and plots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// The utilization is between the thresholds: the hysteresis band.
    WithinBand,
    /// Outside the band, but the formula asks for the count the fleet has
    /// (one replica at 30 % still needs one).
    AtDesired,
    /// A change is due, but the cooldown since the last scale event (or,
    /// for a scale-down, since the first sample) has not passed.
    Cooldown,
    /// A scale-down is due, but a count at least the fleet's was desired
    /// within the stabilization window.
    Stabilizing,
    /// A change is due, but the fleet is at `min_replicas` or `max_replicas`.
    AtBound,
}

impl HoldReason {
    /// A short snake_case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WithinBand => "within_band",
            Self::AtDesired => "at_desired",
            Self::Cooldown => "cooldown",
            Self::Stabilizing => "stabilizing",
            Self::AtBound => "at_bound",
        }
    }
}

/// One remembered sample and the count it desired.
#[derive(Clone, Copy, Debug)]
struct Entry {
    at: Duration,
    sample: FleetSample,
    desired: u32,
}

/// The scaling policy at work on one fleet's samples. See the module docs.
#[derive(Clone, Debug)]
pub struct AutoScaler {
    policy: ScalingPolicy,
    /// Samples over the longest window, oldest first, at most [`MAX_HISTORY`].
    history: VecDeque<Entry>,
    /// When the count last changed: a decision of ours, or [`Self::resized`].
    last_scale: Option<Duration>,
    /// The first sample's time: a scale-down waits a down cooldown from it.
    first_seen: Option<Duration>,
    /// The latest time seen, so time never goes backwards.
    latest: Option<Duration>,
    recommended: u32,
}

impl AutoScaler {
    /// A scaler for `policy`, refused if the policy does not validate.
    pub fn new(policy: ScalingPolicy) -> Result<Self, ScalingError> {
        policy.validate()?;
        Ok(Self {
            policy,
            history: VecDeque::new(),
            last_scale: None,
            first_seen: None,
            latest: None,
            recommended: policy.min_replicas,
        })
    }

    /// The policy it applies.
    pub fn policy(&self) -> &ScalingPolicy {
        &self.policy
    }

    /// Feeds the fleet as sampled at `now` and decides. Time must not go
    /// backwards: a `now` before the latest one seen is taken as that
    /// latest time. An `Up` or `Down` counts as a scale event at `now`
    /// whether or not the caller applies it.
    pub fn observe(&mut self, now: Duration, sample: FleetSample) -> ScaleDecision {
        let now = self.clock(now);
        self.first_seen.get_or_insert(now);
        let sample = sample.sanitized();
        let mean = self.effective_mean(now, &sample);
        let (utilization, desired) = self.need(sample.replicas, mean, sample.jobs);
        self.remember(Entry {
            at: now,
            sample,
            desired,
        });
        let decision = self.decide(now, sample.replicas, utilization, desired);
        if !matches!(decision, ScaleDecision::Hold { .. }) {
            self.last_scale = Some(now);
        }
        self.recommended = decision.replicas();
        decision
    }

    /// The last recommendation ([`ScaleDecision::replicas`]), or the count
    /// given to [`resized`](Self::resized) since; `min_replicas` before any.
    pub fn recommended(&self) -> u32 {
        self.recommended
    }

    /// Tells the scaler the fleet changed to `replicas` at `now` by other
    /// means than its decisions (a manual scale, a rollout), or when a
    /// decision actually took effect: the cooldowns start again from `now`,
    /// so the scaler does not fight the change at once. Optional: the next
    /// sample's count is the truth either way.
    pub fn resized(&mut self, now: Duration, replicas: u32) {
        self.last_scale = Some(self.clock(now));
        self.recommended = replicas;
    }

    /// `now`, held at the latest time seen if it went backwards.
    fn clock(&mut self, now: Duration) -> Duration {
        let now = self.latest.map_or(now, |latest| latest.max(now));
        self.latest = Some(now);
        now
    }

    /// The mean load, raised to the trend's forecast when it is higher.
    fn effective_mean(&self, now: Duration, sample: &FleetSample) -> f32 {
        let Some(trend) = self.policy.trend else {
            return sample.mean_load;
        };
        if sample.replicas == 0 {
            return 0.0;
        }
        let total = sample.total_load();
        let Some(slope) = self.total_load_slope(now, total, trend.window) else {
            return sample.mean_load;
        };
        let forecast = (total + slope * trend.horizon.as_secs_f64()) / f64::from(sample.replicas);
        sample.mean_load.max(forecast.min(1.0) as f32)
    }

    /// The least-squares slope (per second) of the total load over the
    /// window ending with `total` at `now`; `None` with too few samples.
    fn total_load_slope(&self, now: Duration, total: f64, window: Duration) -> Option<f64> {
        let since = now.saturating_sub(window);
        let points = || {
            let past = self.history.iter().filter(move |e| e.at >= since);
            past.map(|e| (e.at, e.sample.total_load()))
                .chain(std::iter::once((now, total)))
        };
        let (count, first) = (points().count(), points().next()?.0);
        if count < MIN_TREND_SAMPLES || now.saturating_sub(first) < window / 2 {
            return None;
        }
        let x = |at: Duration| at.saturating_sub(first).as_secs_f64();
        let mean_x = points().map(|(at, _)| x(at)).sum::<f64>() / count as f64;
        let mean_y = points().map(|(_, y)| y).sum::<f64>() / count as f64;
        let (mut num, mut den) = (0.0, 0.0);
        for (at, y) in points() {
            let dx = x(at) - mean_x;
            num += dx * (y - mean_y);
            den += dx * dx;
        }
        (den > 0.0).then(|| num / den)
    }

    /// The utilization compared with the thresholds, and the desired count
    /// (clamped to the bounds).
    fn need(&self, replicas: u32, mean: f32, jobs: u64) -> (f64, u32) {
        let p = &self.policy;
        let (n, target) = (f64::from(replicas), f64::from(p.target_load));
        let mut needed = n * f64::from(mean) / target;
        let mut utilization = f64::from(mean);
        if let Some(per) = p.jobs_per_replica {
            let per = f64::from(per);
            needed = needed.max(jobs as f64 / (per * target));
            // jobs with no replica to run them: as overloaded as it gets
            let jobs_utilization = match (replicas, jobs) {
                (0, 0) => 0.0,
                (0, _) => f64::INFINITY,
                _ => jobs as f64 / (n * per),
            };
            utilization = utilization.max(jobs_utilization);
        }
        let desired = (needed - ROUNDING_SLACK)
            .ceil()
            .clamp(0.0, f64::from(p.max_replicas)) as u32;
        (utilization, desired.max(p.min_replicas))
    }

    /// Adds a sample, merged into the newest entry if it is closer than the
    /// spacing the windows need, and forgets what no window covers.
    fn remember(&mut self, entry: Entry) {
        let memory = self.policy.memory();
        let spacing = memory / ENTRIES_PER_WINDOW;
        match self.history.back_mut() {
            // the newest sample stands for the entry; the highest desired
            // count is kept, so stabilization stays on the safe side
            Some(last) if entry.at.saturating_sub(last.at) < spacing => {
                last.sample = entry.sample;
                last.desired = last.desired.max(entry.desired);
            }
            _ => self.history.push_back(entry),
        }
        let since = entry.at.saturating_sub(memory);
        while self.history.front().is_some_and(|e| e.at < since) || self.history.len() > MAX_HISTORY
        {
            self.history.pop_front();
        }
    }

    /// The bounds first, then up above the band, down below it, else hold.
    fn decide(&self, now: Duration, current: u32, utilization: f64, desired: u32) -> ScaleDecision {
        let p = &self.policy;
        if current > p.max_replicas {
            return ScaleDecision::Down {
                from: current,
                to: p.max_replicas,
            };
        }
        let above = utilization > f64::from(p.scale_up_threshold);
        if current < p.min_replicas {
            // the floor comes at once; more only if a scale-up is due anyway
            let due = if above {
                self.scale_up(now, current, desired).replicas()
            } else {
                current
            };
            return ScaleDecision::Up {
                from: current,
                to: due.max(p.min_replicas),
            };
        }
        if above {
            self.scale_up(now, current, desired)
        } else if utilization < f64::from(p.scale_down_threshold) {
            self.scale_down(now, current, desired)
        } else {
            hold(current, HoldReason::WithinBand)
        }
    }

    /// With the load above the band: up to `desired`, step-limited, if the
    /// up cooldown has passed.
    fn scale_up(&self, now: Duration, current: u32, desired: u32) -> ScaleDecision {
        let p = &self.policy;
        if current >= p.max_replicas {
            hold(current, HoldReason::AtBound)
        } else if desired <= current {
            hold(current, HoldReason::AtDesired)
        } else if !cooled(now, self.last_scale, p.up_cooldown) {
            hold(current, HoldReason::Cooldown)
        } else {
            let limit = p
                .max_step_up
                .map_or(u32::MAX, |step| current.saturating_add(step));
            ScaleDecision::Up {
                from: current,
                to: desired.min(limit),
            }
        }
    }

    /// With the load below the band: down to the highest count desired over
    /// the stabilization window, if the down cooldown has passed.
    fn scale_down(&self, now: Duration, current: u32, desired: u32) -> ScaleDecision {
        let p = &self.policy;
        // a new scaler does not know when the fleet last changed: it counts
        // from its first sample
        let since_event = self.last_scale.or(self.first_seen);
        if current <= p.min_replicas {
            return hold(current, HoldReason::AtBound);
        }
        if desired >= current {
            return hold(current, HoldReason::AtDesired);
        }
        if !cooled(now, since_event, p.down_cooldown) {
            return hold(current, HoldReason::Cooldown);
        }
        let since = now.saturating_sub(p.stabilization);
        let window = self.history.iter().filter(|e| e.at >= since);
        let floor = window.map(|e| e.desired).fold(desired, u32::max);
        if floor >= current {
            hold(current, HoldReason::Stabilizing)
        } else {
            ScaleDecision::Down {
                from: current,
                to: floor,
            }
        }
    }
}

/// A [`ScaleDecision::Hold`], shorter.
fn hold(replicas: u32, reason: HoldReason) -> ScaleDecision {
    ScaleDecision::Hold { replicas, reason }
}

/// True if `cooldown` has passed since `event` (or there was none).
fn cooled(now: Duration, event: Option<Duration>, cooldown: Duration) -> bool {
    event.is_none_or(|at| now.saturating_sub(at) >= cooldown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ScaleDecision::{Down, Hold, Up};

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn fleet(replicas: u32, mean_load: f32) -> FleetSample {
        FleetSample {
            replicas,
            mean_load,
            jobs: 0,
        }
    }

    fn scaler(policy: ScalingPolicy) -> AutoScaler {
        AutoScaler::new(policy).unwrap()
    }

    /// A simulated fleet that applies every decision at once; its demand
    /// (replicas' worth of work) spreads evenly over its replicas.
    struct Sim {
        scaler: AutoScaler,
        replicas: u32,
        now: Duration,
        step: Duration,
        log: Vec<(Duration, ScaleDecision)>,
    }

    impl Sim {
        fn new(policy: ScalingPolicy, replicas: u32) -> Self {
            Self {
                scaler: scaler(policy),
                replicas,
                now: Duration::ZERO,
                step: secs(15),
                log: Vec::new(),
            }
        }

        /// Runs `demand` for `length` of simulated time.
        fn run(&mut self, length: Duration, demand: impl Fn(Duration) -> f32) -> &mut Self {
            let end = self.now + length;
            while self.now < end {
                let mean = if self.replicas == 0 {
                    0.0
                } else {
                    demand(self.now) / self.replicas as f32
                };
                let decision = self
                    .scaler
                    .observe(self.now, fleet(self.replicas, mean.min(1.0)));
                self.replicas = decision.replicas();
                self.log.push((self.now, decision));
                self.now += self.step;
            }
            self
        }

        fn changes(&self) -> Vec<(Duration, ScaleDecision)> {
            self.log
                .iter()
                .copied()
                .filter(|(_, d)| !matches!(d, Hold { .. }))
                .collect()
        }
    }

    #[test]
    fn defaults_validate_and_bad_configs_are_refused_naming_the_field() {
        assert_eq!(ScalingPolicy::default().validate(), Ok(()));
        let d = ScalingPolicy::default();
        let cases = [
            (
                "max_replicas",
                ScalingPolicy {
                    min_replicas: 0,
                    max_replicas: 0,
                    ..d
                },
            ),
            (
                "min_replicas",
                ScalingPolicy {
                    min_replicas: 11,
                    ..d
                },
            ),
            (
                "target_load",
                ScalingPolicy {
                    target_load: 0.0,
                    ..d
                },
            ),
            (
                "target_load",
                ScalingPolicy {
                    target_load: f32::NAN,
                    ..d
                },
            ),
            (
                "target_load",
                ScalingPolicy {
                    target_load: 1.5,
                    scale_up_threshold: 2.0,
                    ..d
                },
            ),
            (
                "scale_up_threshold",
                ScalingPolicy {
                    scale_up_threshold: 0.5,
                    ..d
                },
            ),
            (
                "scale_up_threshold",
                ScalingPolicy {
                    scale_up_threshold: f32::INFINITY,
                    ..d
                },
            ),
            (
                "scale_down_threshold",
                ScalingPolicy {
                    scale_down_threshold: -0.1,
                    ..d
                },
            ),
            (
                "scale_down_threshold",
                ScalingPolicy {
                    scale_down_threshold: 0.7,
                    ..d
                },
            ),
            (
                "scale_down_threshold",
                ScalingPolicy {
                    scale_down_threshold: 0.6,
                    scale_up_threshold: 0.6,
                    ..d
                },
            ),
            (
                "max_step_up",
                ScalingPolicy {
                    max_step_up: Some(0),
                    ..d
                },
            ),
            (
                "jobs_per_replica",
                ScalingPolicy {
                    jobs_per_replica: Some(0),
                    ..d
                },
            ),
            (
                "trend.window",
                ScalingPolicy {
                    trend: Some(Trend {
                        window: Duration::ZERO,
                        ..Trend::default()
                    }),
                    ..d
                },
            ),
        ];
        for (field, policy) in cases {
            let err = AutoScaler::new(policy).unwrap_err();
            assert!(
                matches!(err, ScalingError::InvalidPolicy { field: f, .. } if f == field),
                "{field}: {err}"
            );
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn scales_up_when_above_the_threshold_and_not_at_it() {
        let mut s = scaler(ScalingPolicy::default());
        assert_eq!(
            s.observe(secs(0), fleet(2, 0.75)),
            hold(2, HoldReason::WithinBand)
        );
        // 1.8 replicas' worth at 60 % each: 3
        assert_eq!(s.observe(secs(1), fleet(2, 0.9)), Up { from: 2, to: 3 });
        assert_eq!(s.recommended(), 3);
    }

    #[test]
    fn no_scale_up_within_the_up_cooldown_then_up_after() {
        let mut s = scaler(ScalingPolicy::default());
        assert_eq!(s.observe(secs(0), fleet(2, 0.9)), Up { from: 2, to: 3 });
        assert_eq!(
            s.observe(secs(30), fleet(3, 0.9)),
            hold(3, HoldReason::Cooldown)
        );
        assert_eq!(
            s.observe(secs(59), fleet(3, 0.9)),
            hold(3, HoldReason::Cooldown)
        );
        assert_eq!(s.observe(secs(60), fleet(3, 0.9)), Up { from: 3, to: 5 });
    }

    #[test]
    fn a_load_oscillating_inside_the_band_never_changes_the_count() {
        let mut s = scaler(ScalingPolicy::default());
        for i in 0..240 {
            let load = if i % 2 == 0 { 0.5 } else { 0.7 };
            assert_eq!(
                s.observe(secs(i * 15), fleet(4, load)),
                hold(4, HoldReason::WithinBand)
            );
        }
    }

    #[test]
    fn a_load_exactly_at_the_target_desires_the_count_it_has() {
        let mut s = scaler(ScalingPolicy::default());
        s.observe(secs(0), fleet(4, 0.6));
        assert_eq!(s.history.back().unwrap().desired, 4);
        // nor does a mean one float step above it: that is rounding noise
        s.observe(secs(1), fleet(4, f32::from_bits(0.6f32.to_bits() + 1)));
        assert_eq!(s.history.back().unwrap().desired, 4);
        // below the band, but 0.7 replicas' worth still needs two
        assert_eq!(
            s.observe(secs(1), fleet(2, 0.35)),
            hold(2, HoldReason::AtDesired)
        );
    }

    #[test]
    fn a_dip_shorter_than_the_stabilization_window_does_not_scale_down() {
        let mut sim = Sim::new(ScalingPolicy::default(), 4);
        sim.run(secs(600), |_| 2.4)
            .run(secs(240), |_| 0.7)
            .run(secs(600), |_| 2.4);
        assert_eq!(sim.changes(), []);
        assert!(
            sim.log
                .iter()
                .any(|(_, d)| *d == hold(4, HoldReason::Stabilizing))
        );
    }

    #[test]
    fn a_sustained_low_load_scales_down_once_after_the_window() {
        let mut sim = Sim::new(ScalingPolicy::default(), 4);
        sim.run(secs(600), |_| 2.4).run(secs(1800), |_| 0.7);
        // the last sample desiring 4 was at 585 s: it leaves the window at 885 s
        assert_eq!(sim.changes(), [(secs(900), Down { from: 4, to: 2 })]);
    }

    #[test]
    fn a_scale_down_waits_for_the_down_cooldown_after_any_scale_event() {
        let policy = ScalingPolicy {
            stabilization: Duration::ZERO,
            ..ScalingPolicy::default()
        };
        let mut sim = Sim::new(policy, 2);
        sim.run(secs(15), |_| 1.8).run(secs(600), |_| 0.3);
        assert_eq!(
            sim.changes(),
            [
                (secs(0), Up { from: 2, to: 3 }),
                (secs(300), Down { from: 3, to: 1 })
            ]
        );
        assert!(
            sim.log[1..20]
                .iter()
                .all(|(_, d)| *d == hold(3, HoldReason::Cooldown))
        );
    }

    #[test]
    fn a_new_scaler_watches_one_down_cooldown_before_scaling_down() {
        let policy = ScalingPolicy {
            stabilization: Duration::ZERO,
            ..ScalingPolicy::default()
        };
        let mut s = scaler(policy);
        assert_eq!(
            s.observe(secs(1000), fleet(4, 0.1)),
            hold(4, HoldReason::Cooldown)
        );
        assert_eq!(
            s.observe(secs(1300), fleet(4, 0.1)),
            Down { from: 4, to: 1 }
        );
    }

    #[test]
    fn the_count_stays_within_the_bounds() {
        let policy = ScalingPolicy {
            min_replicas: 2,
            max_replicas: 5,
            ..ScalingPolicy::default()
        };
        let mut idle = Sim::new(policy, 3);
        idle.run(secs(7200), |_| 0.0);
        assert!(idle.log.iter().all(|(_, d)| d.replicas() >= 2));
        assert_eq!(idle.log.last().unwrap().1, hold(2, HoldReason::AtBound));
        let mut busy = Sim::new(policy, 2);
        busy.run(secs(3600), |_| 100.0);
        assert!(busy.log.iter().all(|(_, d)| d.replicas() <= 5));
        assert_eq!(busy.log.last().unwrap().1, hold(5, HoldReason::AtBound));
    }

    #[test]
    fn out_of_bounds_fleets_are_brought_back_at_once_whatever_the_cooldowns() {
        let policy = ScalingPolicy {
            min_replicas: 2,
            max_replicas: 5,
            ..ScalingPolicy::default()
        };
        let mut s = scaler(policy);
        assert_eq!(s.observe(secs(0), fleet(2, 0.9)), Up { from: 2, to: 3 });
        assert_eq!(s.observe(secs(1), fleet(1, 0.5)), Up { from: 1, to: 2 });
        assert_eq!(s.observe(secs(2), fleet(7, 0.5)), Down { from: 7, to: 5 });
        assert_eq!(s.observe(secs(3), fleet(0, 0.0)), Up { from: 0, to: 2 });
    }

    #[test]
    fn max_step_up_limits_each_scale_up() {
        let mut s = scaler(ScalingPolicy {
            max_step_up: Some(2),
            ..ScalingPolicy::default()
        });
        assert_eq!(s.observe(secs(0), fleet(4, 1.0)), Up { from: 4, to: 6 });
        assert_eq!(s.observe(secs(60), fleet(6, 1.0)), Up { from: 6, to: 8 });
        assert_eq!(s.observe(secs(120), fleet(8, 0.8)), Up { from: 8, to: 10 });
    }

    #[test]
    fn jobs_drive_the_count_with_jobs_per_replica() {
        let policy = ScalingPolicy {
            jobs_per_replica: Some(4),
            ..ScalingPolicy::default()
        };
        let mut s = scaler(policy);
        // a light load, but 10 jobs at 2.4 per replica need 5 replicas
        let sample = FleetSample {
            replicas: 2,
            mean_load: 0.3,
            jobs: 10,
        };
        assert_eq!(s.observe(secs(0), sample), Up { from: 2, to: 5 });
        // 12 jobs over 5 replicas is 60 %: no scale-down on the low load
        let sample = FleetSample {
            replicas: 5,
            mean_load: 0.1,
            jobs: 12,
        };
        assert_eq!(
            s.observe(secs(1000), sample),
            hold(5, HoldReason::WithinBand)
        );
    }

    #[test]
    fn jobs_bring_a_fleet_up_from_zero_and_nothing_at_all_means_min_replicas() {
        let to_zero = ScalingPolicy {
            min_replicas: 0,
            jobs_per_replica: Some(4),
            ..ScalingPolicy::default()
        };
        let mut s = scaler(to_zero);
        assert_eq!(
            s.observe(
                secs(0),
                FleetSample {
                    replicas: 0,
                    mean_load: 0.9,
                    jobs: 10
                }
            ),
            Up { from: 0, to: 5 }
        );
        let mut s = scaler(to_zero);
        assert_eq!(
            s.observe(secs(0), FleetSample::default()),
            hold(0, HoldReason::AtBound)
        );
        let mut s = scaler(ScalingPolicy::default());
        assert_eq!(s.recommended(), 1);
        assert_eq!(
            s.observe(secs(0), FleetSample::from_loads(&[], 0)),
            Up { from: 0, to: 1 }
        );
    }

    /// When a fleet of 4 at a load rising 0.25 % a second first scales up.
    fn first_scale_up_on_a_ramp(trend: Option<Trend>) -> Duration {
        let mut s = scaler(ScalingPolicy {
            trend,
            ..ScalingPolicy::default()
        });
        (0..100)
            .map(|i| secs(i * 10))
            .find(|&t| {
                matches!(
                    s.observe(t, fleet(4, 0.405 + 0.0025 * t.as_secs_f32())),
                    Up { .. }
                )
            })
            .unwrap()
    }

    #[test]
    fn the_trend_scales_up_earlier_on_a_ramp() {
        let plain = first_scale_up_on_a_ramp(None);
        let ahead = first_scale_up_on_a_ramp(Some(Trend::default()));
        // the 60 s horizon sees 0.15 more load: 60 s sooner, give or take a sample
        assert_eq!(plain, secs(140));
        assert!(ahead + secs(50) <= plain, "{ahead:?} vs {plain:?}");
    }

    #[test]
    fn a_falling_trend_does_not_scale_down_faster() {
        let declining = |t: Duration| (4.8 - 0.004 * t.as_secs_f32()).max(0.0);
        let run = |trend| {
            let mut sim = Sim::new(
                ScalingPolicy {
                    trend,
                    ..ScalingPolicy::default()
                },
                8,
            );
            sim.run(secs(3600), declining);
            sim.log
        };
        let plain = run(None);
        assert!(plain.iter().any(|(_, d)| matches!(d, Down { .. })));
        assert_eq!(run(Some(Trend::default())), plain);
    }

    #[test]
    fn a_scale_down_does_not_read_as_a_rising_trend() {
        // a long horizon: a line fitted to the mean would scale straight back up
        let trend = Trend {
            window: secs(120),
            horizon: secs(120),
        };
        let policy = ScalingPolicy {
            trend: Some(trend),
            ..ScalingPolicy::default()
        };
        let mut sim = Sim::new(policy, 8);
        sim.run(secs(3600), |_| 1.0);
        // the mean quadruples from 1/8 to 1/2, the work stays the same
        assert_eq!(sim.changes(), [(secs(300), Down { from: 8, to: 2 })]);
    }

    #[test]
    fn the_trend_waits_for_enough_samples_over_its_window() {
        let policy = ScalingPolicy {
            trend: Some(Trend::default()),
            ..ScalingPolicy::default()
        };
        let mut s = scaler(policy);
        // a steep rise, but over 2 samples, then 3 within 20 s of a 120 s window
        assert_eq!(
            s.observe(secs(0), fleet(4, 0.45)),
            hold(4, HoldReason::WithinBand)
        );
        assert_eq!(
            s.observe(secs(10), fleet(4, 0.5)),
            hold(4, HoldReason::WithinBand)
        );
        assert_eq!(
            s.observe(secs(20), fleet(4, 0.6)),
            hold(4, HoldReason::WithinBand)
        );
        assert!(matches!(s.observe(secs(60), fleet(4, 0.7)), Up { .. }));
    }

    #[test]
    fn resized_restarts_the_cooldowns() {
        let mut s = scaler(ScalingPolicy::default());
        s.observe(secs(0), fleet(2, 0.5));
        s.resized(secs(10), 4);
        assert_eq!(s.recommended(), 4);
        assert_eq!(
            s.observe(secs(20), fleet(4, 0.9)),
            hold(4, HoldReason::Cooldown)
        );
        assert_eq!(s.observe(secs(70), fleet(4, 0.9)), Up { from: 4, to: 6 });
    }

    #[test]
    fn time_going_backwards_does_not_panic_and_counts_as_the_latest_time() {
        let policy = ScalingPolicy {
            trend: Some(Trend::default()),
            ..ScalingPolicy::default()
        };
        let mut s = scaler(policy);
        assert_eq!(s.observe(secs(100), fleet(2, 0.9)), Up { from: 2, to: 3 });
        // taken at 100 s: within the cooldown
        assert_eq!(
            s.observe(secs(50), fleet(3, 0.9)),
            hold(3, HoldReason::Cooldown)
        );
        s.resized(Duration::ZERO, 3);
        for _ in 0..5 {
            s.observe(Duration::ZERO, fleet(3, 0.5));
        }
        // the resize counted at 100 s too
        assert_eq!(s.observe(secs(160), fleet(3, 0.9)), Up { from: 3, to: 5 });
    }

    #[test]
    fn nan_and_out_of_range_loads_are_cleaned() {
        let sample = FleetSample::from_loads(&[f32::NAN, 0.5, -1.0, 2.0], 3);
        assert_eq!(
            sample,
            FleetSample {
                replicas: 4,
                mean_load: 0.375,
                jobs: 3
            }
        );
        let no_waiting = ScalingPolicy {
            up_cooldown: Duration::ZERO,
            down_cooldown: Duration::ZERO,
            stabilization: Duration::ZERO,
            ..ScalingPolicy::default()
        };
        let mut s = scaler(no_waiting);
        assert_eq!(
            s.observe(secs(0), fleet(3, f32::NAN)),
            Down { from: 3, to: 1 }
        );
        assert_eq!(
            s.observe(secs(1), fleet(1, f32::INFINITY)),
            Up { from: 1, to: 2 }
        );
    }

    #[test]
    fn the_history_stays_bounded_and_still_covers_the_window_under_fast_sampling() {
        let mut sim = Sim::new(ScalingPolicy::default(), 4);
        sim.step = Duration::from_millis(100);
        sim.run(secs(600), |_| 2.4);
        assert!(sim.scaler.history.len() <= ENTRIES_PER_WINDOW as usize + 1);
        sim.run(secs(240), |_| 0.7).run(secs(300), |_| 2.4);
        assert!(sim.scaler.history.len() <= MAX_HISTORY);
        assert_eq!(sim.changes(), []);

        let mut s = scaler(ScalingPolicy::default());
        for _ in 0..5000 {
            s.observe(secs(5), fleet(4, 0.5));
        }
        assert!(s.history.len() <= MAX_HISTORY);
    }

    #[test]
    fn decisions_print_for_logs() {
        assert_eq!(Up { from: 2, to: 4 }.to_string(), "up 2 -> 4");
        assert_eq!(
            hold(3, HoldReason::Stabilizing).to_string(),
            "hold 3 (stabilizing)"
        );
    }
}
