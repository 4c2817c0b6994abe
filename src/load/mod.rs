//! What the worker tells the server about how busy it is.
//!
//! The server sends jobs in proportion to `1 - load` and skips a worker that
//! reports FULL, so these numbers steer the whole fleet. A worker that reports
//! late or wrong is overloaded in bursts. This module holds the pure parts:
//!
//! - [`LoadMetrics`]: one sample of everything a load can be computed from.
//! - [`LoadCalculator`] and the built-in calculators: [`DefaultLoadCalculator`]
//!   (job slots), [`CpuMemoryLoadCalculator`] (jobs, CPU and memory relative to
//!   the container's limits) and [`PredictiveLoadCalculator`] (a short
//!   forecast over any of them). Any closure `Fn(&LoadMetrics) -> f32` is one
//!   too.
//! - [`Slots`]: the worker's exact slot count, which admission trusts over
//!   any sampled load: a slot is reserved before `available: true` is sent.
//! - [`ReportPolicy`]: when a new sample is worth an `update_worker`.
//!
//! Reading the machine (sysinfo and cgroups) lives in `system` and `cgroup`;
//! the actor that samples on a timer is `actors/load_reporter.rs`.

pub mod cgroup;
pub mod system;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use livekit_protocol::WorkerStatus;

/// The load at which a worker turns FULL by default, as in the official
/// workers: the server stops preferring a node above it anyway.
pub const DEFAULT_LOAD_THRESHOLD: f32 = 0.7;

/// How far a new load must move from the last reported one to be reported
/// before the keepalive: smaller wobbles would only flood the server.
pub const DEFAULT_LOAD_EPSILON: f32 = 0.05;

/// One sample of what a load is computed from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadMetrics {
    /// Jobs running now.
    pub active_jobs: usize,
    /// The most jobs the worker runs at once (0: no maximum).
    pub max_jobs: usize,
    /// Slots reserved for jobs accepted (or being decided) but not yet
    /// running.
    pub reserved_jobs: usize,
    /// How long each running job has run.
    pub job_durations: Vec<Duration>,
    /// This process's CPU use as a fraction of the CPU it may use: the
    /// container's quota where a cgroup sets one, else all cores (0..=1).
    pub process_cpu: f32,
    /// The whole machine's CPU use as a fraction (0..=1).
    pub system_cpu: f32,
    /// Memory used: this process's resident size, in bytes.
    pub memory_used: u64,
    /// Memory available to it: the container's limit where a cgroup sets
    /// one, else the machine's total, in bytes.
    pub memory_total: u64,
    /// The loads reported most recently, oldest first.
    pub recent_loads: Vec<f32>,
}

impl LoadMetrics {
    /// Jobs running or reserved over the maximum, in 0..=1; without a
    /// maximum, `n / (n + 10)`: a gentle curve that approaches 1.
    pub fn job_load(&self) -> f32 {
        let jobs = (self.active_jobs + self.reserved_jobs) as f32;
        let load = if self.max_jobs == 0 {
            jobs / (jobs + UNBOUNDED_HALF_LOAD_JOBS)
        } else {
            jobs / self.max_jobs as f32
        };
        clamp01(load)
    }

    /// Memory used over memory available, in 0..=1 (0 when unknown).
    pub fn memory_load(&self) -> f32 {
        if self.memory_total == 0 {
            0.0
        } else {
            clamp01(self.memory_used as f32 / self.memory_total as f32)
        }
    }
}

/// With no job maximum, the job count at which the default load is 0.5.
const UNBOUNDED_HALF_LOAD_JOBS: f32 = 10.0;

fn clamp01(value: f32) -> f32 {
    if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    }
}

/// Turns a sample into a load in 0..=1. Implemented by the calculators here
/// and by any `Fn(&LoadMetrics) -> f32` closure. A result outside 0..=1 (or
/// NaN) is clamped by the reporter.
pub trait LoadCalculator: Send + Sync + 'static {
    /// The load for this sample.
    fn calculate(&self, metrics: &LoadMetrics) -> f32;

    /// The load at which the worker reports FULL when the options do not set
    /// one. Loads measured from resources are noisy and default to
    /// [`DEFAULT_LOAD_THRESHOLD`]; an exact count of job slots defaults to 1.0,
    /// so that `max_jobs` means what it says.
    fn default_threshold(&self) -> f32 {
        DEFAULT_LOAD_THRESHOLD
    }
}

impl<F> LoadCalculator for F
where
    F: Fn(&LoadMetrics) -> f32 + Send + Sync + 'static,
{
    fn calculate(&self, metrics: &LoadMetrics) -> f32 {
        self(metrics)
    }
}

/// Load as the share of job slots in use (running plus reserved); FULL when
/// every slot is taken.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultLoadCalculator;

impl LoadCalculator for DefaultLoadCalculator {
    fn calculate(&self, metrics: &LoadMetrics) -> f32 {
        metrics.job_load()
    }

    fn default_threshold(&self) -> f32 {
        1.0
    }
}

/// A weighted mix of job slots, CPU and memory, each relative to what this
/// worker may use (the container's CPU quota and memory limit where cgroups
/// set them). Weights are normalised, so they need not sum to 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuMemoryLoadCalculator {
    /// Weight of the job-slot load.
    pub job_weight: f32,
    /// Weight of this process's CPU use.
    pub cpu_weight: f32,
    /// Weight of memory use.
    pub memory_weight: f32,
}

impl Default for CpuMemoryLoadCalculator {
    /// 0.4 jobs, 0.3 CPU, 0.3 memory.
    fn default() -> Self {
        Self {
            job_weight: 0.4,
            cpu_weight: 0.3,
            memory_weight: 0.3,
        }
    }
}

impl LoadCalculator for CpuMemoryLoadCalculator {
    fn calculate(&self, metrics: &LoadMetrics) -> f32 {
        let weights = [self.job_weight, self.cpu_weight, self.memory_weight].map(|w| w.max(0.0));
        let total: f32 = weights.iter().sum();
        if total == 0.0 {
            return metrics.job_load();
        }
        let parts = [
            metrics.job_load(),
            clamp01(metrics.process_cpu),
            metrics.memory_load(),
        ];
        let mixed: f32 = weights.iter().zip(parts).map(|(w, p)| w * p).sum();
        clamp01(mixed / total)
    }
}

/// Forecasts a base calculator's load a short way ahead from its recent
/// trend (least squares over the last `window` samples) and reports the
/// higher of now and the forecast, so the worker turns FULL before a ramp
/// reaches the limit but never under-reports on the way down.
///
/// It keeps the base calculator's own recent values (not the reported loads,
/// which would feed its forecasts back into themselves), so one instance
/// serves one worker.
pub struct PredictiveLoadCalculator<C> {
    base: C,
    window: usize,
    horizon: f32,
    history: Mutex<VecDeque<f32>>,
}

impl<C: LoadCalculator> PredictiveLoadCalculator<C> {
    /// Forecasts `base` from its last `window` samples (at least 2), looking
    /// [`DEFAULT_HORIZON_SAMPLES`] samples ahead.
    pub fn new(base: C, window: usize) -> Self {
        Self {
            base,
            window: window.max(2),
            horizon: DEFAULT_HORIZON_SAMPLES,
            history: Mutex::new(VecDeque::new()),
        }
    }

    /// Looks this many samples ahead instead.
    pub fn horizon(mut self, samples: f32) -> Self {
        self.horizon = samples.max(0.0);
        self
    }
}

/// How many samples ahead the forecast looks by default: 2 s at the default
/// 500 ms sampling, about the time the server takes to notice a report.
pub const DEFAULT_HORIZON_SAMPLES: f32 = 4.0;

impl<C: LoadCalculator> LoadCalculator for PredictiveLoadCalculator<C> {
    fn calculate(&self, metrics: &LoadMetrics) -> f32 {
        let now = clamp01(self.base.calculate(metrics));
        // a poisoned lock only means a panic elsewhere mid-update: the
        // history is still a list of numbers
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.push_back(now);
        while history.len() > self.window {
            history.pop_front();
        }
        let slope = least_squares_slope(history.make_contiguous());
        clamp01(now.max(now + slope * self.horizon))
    }

    fn default_threshold(&self) -> f32 {
        self.base.default_threshold()
    }
}

/// The slope of the least-squares line through `values` at x = 0, 1, 2, ...
/// (0 for fewer than two values).
pub fn least_squares_slope(values: &[f32]) -> f32 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    let n_f = n as f32;
    let mean_x = (n_f - 1.0) / 2.0;
    let mean_y = values.iter().sum::<f32>() / n_f;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in values.iter().enumerate() {
        let dx = i as f32 - mean_x;
        num += dx * (y - mean_y);
        den += dx * dx;
    }
    if den == 0.0 { 0.0 } else { num / den }
}

/// The worker's slots at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slots {
    /// Jobs running now.
    pub active: usize,
    /// Slots promised to jobs that were accepted (or are being decided on)
    /// but have not been assigned yet.
    pub reserved: usize,
    /// The most jobs the worker runs at once.
    pub max: usize,
}

impl Slots {
    /// True when no further job can be accepted: every slot is running or
    /// reserved. Reservations count, so that a burst of requests between two
    /// samples cannot be accepted beyond capacity.
    pub fn is_full(&self) -> bool {
        self.active + self.reserved >= self.max
    }

    /// The slots neither running nor reserved.
    pub fn free(&self) -> usize {
        self.max.saturating_sub(self.active + self.reserved)
    }
}

/// One `update_worker` report, before its sequence number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadReport {
    /// AVAILABLE or FULL.
    pub status: WorkerStatus,
    /// 0.0 (idle) to 1.0 (saturated).
    pub load: f32,
    /// Jobs running now.
    pub job_count: u32,
}

impl LoadReport {
    /// The report for a computed load: FULL when every slot is taken or the
    /// load has reached the threshold.
    pub fn new(slots: Slots, load: f32, threshold: f32) -> Self {
        let load = clamp01(load);
        let full = slots.is_full() || load >= threshold;
        Self {
            status: if full {
                WorkerStatus::WsFull
            } else {
                WorkerStatus::WsAvailable
            },
            load,
            job_count: u32::try_from(slots.active).unwrap_or(u32::MAX),
        }
    }
}

/// When a new sample is worth an `update_worker`: batching, not flooding,
/// but never late with a flip between AVAILABLE and FULL. See
/// [`ReportPolicy::should_send`] for the exact rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReportPolicy {
    /// A load change larger than this is reported before the keepalive.
    pub epsilon: f32,
    /// A report is repeated at least this often, changed or not.
    pub keepalive: Duration,
}

impl Default for ReportPolicy {
    /// Epsilon 0.05, keepalive 2.5 s (the official workers' report period).
    fn default() -> Self {
        Self {
            epsilon: DEFAULT_LOAD_EPSILON,
            keepalive: Duration::from_millis(2500),
        }
    }
}

impl ReportPolicy {
    /// Whether `next` should be sent now, given what was last sent and when:
    /// always when nothing was sent yet or the status changed; when the load
    /// moved by more than `epsilon` or the job count changed; and when
    /// `keepalive` has passed since the last send.
    pub fn should_send(
        &self,
        last: Option<(&LoadReport, Instant)>,
        next: &LoadReport,
        now: Instant,
    ) -> bool {
        let Some((last, sent_at)) = last else {
            return true;
        };
        last.status != next.status
            || (next.load - last.load).abs() > self.epsilon
            || last.job_count != next.job_count
            || now.saturating_duration_since(sent_at) >= self.keepalive
    }
}

/// The least load a worker reports for the budget it draws from (a
/// `ResourceLimiter`, shared by the workers of a pool): the share in use
/// (`used_share`) against the share this worker may fill (`ceiling`, 1.0 or
/// its `accept_below`), mapped onto `threshold`, so the worker turns FULL
/// exactly when that share is used up — not earlier for a resource-based
/// threshold of 0.7 — and a job another worker starts raises its load in
/// proportion.
pub fn budget_load(used_share: f32, ceiling: f32, threshold: f32) -> f32 {
    // a NaN or non-positive ceiling is no budget to report
    if ceiling.is_nan() || ceiling <= 0.0 {
        return 0.0;
    }
    clamp01(used_share / ceiling) * clamp01(threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_reaches_full_exactly_at_its_ceiling() {
        let slots = Slots {
            active: 0,
            reserved: 0,
            max: 10,
        };
        // the job-slot threshold: the share itself
        assert_eq!(budget_load(0.5, 1.0, 1.0), 0.5);
        let full = LoadReport::new(slots, budget_load(1.0, 1.0, 1.0), 1.0);
        assert_eq!(full.status, WorkerStatus::WsFull);
        // a resource threshold of 0.7: half the budget is half the way
        let half = LoadReport::new(slots, budget_load(0.5, 1.0, 0.7), 0.7);
        assert_eq!(half.status, WorkerStatus::WsAvailable);
        assert!((half.load - 0.35).abs() < 1e-6);
        let full = LoadReport::new(slots, budget_load(1.0, 1.0, 0.7), 0.7);
        assert_eq!(full.status, WorkerStatus::WsFull);
        // a remote region's worker at 0.5: full at half the budget
        let remote = LoadReport::new(slots, budget_load(0.5, 0.5, 0.7), 0.7);
        assert_eq!(remote.status, WorkerStatus::WsFull);
        let below = LoadReport::new(slots, budget_load(0.49, 0.5, 0.7), 0.7);
        assert_eq!(below.status, WorkerStatus::WsAvailable);
        assert_eq!(budget_load(0.5, 0.0, 1.0), 0.0);
        assert_eq!(budget_load(0.0, 1.0, 1.0), 0.0);
    }

    fn metrics(active: usize, max: usize) -> LoadMetrics {
        LoadMetrics {
            active_jobs: active,
            max_jobs: max,
            ..Default::default()
        }
    }

    #[test]
    fn default_load_is_slots_in_use_over_capacity() {
        assert_eq!(DefaultLoadCalculator.calculate(&metrics(3, 4)), 0.75);
        let reserved = LoadMetrics {
            reserved_jobs: 1,
            ..metrics(3, 4)
        };
        assert_eq!(DefaultLoadCalculator.calculate(&reserved), 1.0);
        assert_eq!(DefaultLoadCalculator.calculate(&metrics(8, 4)), 1.0);
        assert_eq!(DefaultLoadCalculator.default_threshold(), 1.0);
    }

    #[test]
    fn without_a_maximum_the_default_load_approaches_one_gently() {
        let loads: Vec<f32> = [0, 1, 10, 100, 10_000]
            .iter()
            .map(|&n| DefaultLoadCalculator.calculate(&metrics(n, 0)))
            .collect();
        assert_eq!(loads[0], 0.0);
        assert_eq!(loads[2], 0.5);
        assert!(loads.windows(2).all(|w| w[0] < w[1]), "{loads:?}");
        assert!(loads[4] < 1.0 && loads[4] > 0.99, "{loads:?}");
    }

    #[test]
    fn cpu_memory_mixes_by_weight() {
        let m = LoadMetrics {
            process_cpu: 1.0,
            memory_used: 1,
            memory_total: 4,
            ..metrics(1, 2)
        };
        let calc = CpuMemoryLoadCalculator::default();
        // 0.4 * 0.5 + 0.3 * 1.0 + 0.3 * 0.25
        assert!((calc.calculate(&m) - 0.575).abs() < 1e-6);
        let cpu_only = CpuMemoryLoadCalculator {
            job_weight: 0.0,
            cpu_weight: 2.0,
            memory_weight: 0.0,
        };
        assert_eq!(cpu_only.calculate(&m), 1.0);
        assert_eq!(calc.default_threshold(), DEFAULT_LOAD_THRESHOLD);
    }

    #[test]
    fn cpu_memory_clamps_wild_samples_and_survives_zero_weights() {
        let m = LoadMetrics {
            process_cpu: 7.0,
            memory_used: 10,
            memory_total: 0,
            ..metrics(0, 2)
        };
        let load = CpuMemoryLoadCalculator::default().calculate(&m);
        assert!((load - 0.3).abs() < 1e-6, "{load}");
        let none = CpuMemoryLoadCalculator {
            job_weight: 0.0,
            cpu_weight: 0.0,
            memory_weight: 0.0,
        };
        assert_eq!(none.calculate(&metrics(1, 2)), 0.5);
    }

    #[test]
    fn slope_of_a_line_is_exact() {
        assert_eq!(least_squares_slope(&[]), 0.0);
        assert_eq!(least_squares_slope(&[0.4]), 0.0);
        assert!((least_squares_slope(&[0.1, 0.2, 0.3, 0.4]) - 0.1).abs() < 1e-6);
        assert!((least_squares_slope(&[0.5, 0.4, 0.3]) + 0.1).abs() < 1e-6);
        assert_eq!(least_squares_slope(&[0.3, 0.3, 0.3]), 0.0);
    }

    #[test]
    fn predictive_runs_ahead_of_a_ramp_and_never_below_now() {
        let calc = PredictiveLoadCalculator::new(|m: &LoadMetrics| m.process_cpu, 5);
        let ramp = [0.1, 0.2, 0.3, 0.4, 0.5];
        let mut out = Vec::new();
        for cpu in ramp {
            out.push(calc.calculate(&LoadMetrics {
                process_cpu: cpu,
                ..Default::default()
            }));
        }
        // slope 0.1 per sample, four samples ahead
        assert!((out[4] - 0.9).abs() < 1e-5, "{out:?}");
        assert!(
            out[4] >= DEFAULT_LOAD_THRESHOLD,
            "FULL before the ramp gets there"
        );
        // falling: reports the present, not the optimistic forecast
        let falling = PredictiveLoadCalculator::new(|m: &LoadMetrics| m.process_cpu, 3);
        let mut last = 0.0;
        for cpu in [0.9, 0.6, 0.3] {
            last = falling.calculate(&LoadMetrics {
                process_cpu: cpu,
                ..Default::default()
            });
        }
        assert!((last - 0.3).abs() < 1e-6, "{last}");
    }

    #[test]
    fn predictive_is_clamped_and_forgets_beyond_its_window() {
        let calc = PredictiveLoadCalculator::new(|m: &LoadMetrics| m.process_cpu, 2);
        for cpu in [0.0, 0.9] {
            let load = calc.calculate(&LoadMetrics {
                process_cpu: cpu,
                ..Default::default()
            });
            assert!(load <= 1.0);
        }
        // the window holds only [0.9, 0.9]: flat, so no trend remains
        let flat = calc.calculate(&LoadMetrics {
            process_cpu: 0.9,
            ..Default::default()
        });
        assert!((flat - 0.9).abs() < 1e-6, "{flat}");
    }

    #[test]
    fn closures_are_calculators() {
        let calc = |m: &LoadMetrics| m.active_jobs as f32 / 100.0;
        assert_eq!(calc.calculate(&metrics(25, 0)), 0.25);
    }

    #[test]
    fn full_when_slots_are_taken_or_the_threshold_is_reached() {
        let free = Slots {
            active: 1,
            reserved: 0,
            max: 4,
        };
        assert_eq!(
            LoadReport::new(free, 0.2, 0.7).status,
            WorkerStatus::WsAvailable
        );
        assert_eq!(LoadReport::new(free, 0.7, 0.7).status, WorkerStatus::WsFull);
        let taken = Slots {
            active: 3,
            reserved: 1,
            max: 4,
        };
        let report = LoadReport::new(taken, 0.1, 0.7);
        assert_eq!(report.status, WorkerStatus::WsFull);
        assert_eq!(report.job_count, 3);
        assert_eq!(LoadReport::new(free, f32::NAN, 0.7).load, 0.0);
    }

    fn report(load: f32, jobs: u32, status: WorkerStatus) -> LoadReport {
        LoadReport {
            status,
            load,
            job_count: jobs,
        }
    }

    #[test]
    fn reports_go_out_on_flips_and_real_changes_only() {
        let policy = ReportPolicy::default();
        let t0 = Instant::now();
        let sent = report(0.30, 3, WorkerStatus::WsAvailable);
        let last = Some((&sent, t0));
        let soon = t0 + Duration::from_millis(500);
        assert!(policy.should_send(None, &sent, t0));
        assert!(!policy.should_send(last, &report(0.33, 3, WorkerStatus::WsAvailable), soon));
        assert!(policy.should_send(last, &report(0.36, 3, WorkerStatus::WsAvailable), soon));
        assert!(policy.should_send(last, &report(0.30, 4, WorkerStatus::WsAvailable), soon));
        assert!(policy.should_send(last, &report(0.30, 3, WorkerStatus::WsFull), soon));
        let later = t0 + Duration::from_millis(2500);
        assert!(policy.should_send(last, &report(0.30, 3, WorkerStatus::WsAvailable), later));
    }

    #[test]
    fn a_steady_minute_costs_a_report_per_keepalive() {
        // 120 samples of a noisy but steady load, 500 ms apart
        let policy = ReportPolicy::default();
        let calc = CpuMemoryLoadCalculator::default();
        let slots = Slots {
            active: 5,
            reserved: 0,
            max: 10,
        };
        let start = Instant::now();
        let mut last: Option<(LoadReport, Instant)> = None;
        let mut sent = 0;
        for i in 0..120u32 {
            let now = start + Duration::from_millis(500) * i;
            let noise = if i % 2 == 0 { 0.02 } else { -0.02 };
            let m = LoadMetrics {
                active_jobs: 5,
                max_jobs: 10,
                process_cpu: 0.4 + noise,
                memory_used: 300,
                memory_total: 1000,
                ..Default::default()
            };
            let next = LoadReport::new(slots, calc.calculate(&m), 0.7);
            if policy.should_send(last.as_ref().map(|(r, t)| (r, *t)), &next, now) {
                sent += 1;
                last = Some((next, now));
            }
        }
        // one at the start, then one per 2.5 s keepalive: 24 in the minute
        assert_eq!(sent, 24, "sent {sent} of 120 samples");
    }
}
