//! An hour of a fleet's traffic in a minute: the dev server and 50 real
//! workers (4 job slots each, the job-slot load, one job thread each) take
//! 5,000 jobs that arrive in a ramp, a burst and a decay, with durations
//! from a heavy-tailed (bounded Pareto) distribution. An
//! [`AutoScaler`](lkagent::scaling::AutoScaler) watches the fleet and says
//! what an autoscaler would do.
//!
//! ```text
//! cargo run --release --example fleet_sim                   # 50 workers, 5,000 jobs, ~80 s
//! cargo run --release --example fleet_sim -- --ci           # the CI size (10 workers, 500 jobs)
//! cargo run --release --example fleet_sim -- --svg out.svg  # default: target/fleet_sim.svg
//! ```
//! (`--workers N`, `--jobs N` and `--seed N` change the knobs, of the full
//! size or of `--ci`'s; `--help` lists them.)
//!
//! It reports the jobs placed, refused (and why) and failed; whether any
//! placed job was lost (no final status at the server) or reported twice;
//! the spread of jobs across the workers (coefficient of variation); the
//! busiest worker's peak load, counted by each worker's handler; and the
//! scaler's decisions over time, as a table and as an SVG plot of offered
//! load, jobs running, capacity and recommended replicas.
//!
//! Time is compressed for the scaler: one real second is one simulated
//! minute, so its default cooldowns (1 minute up, 5 down) play out within
//! the run. The 50 workers stay up throughout; the scaler runs beside them
//! on a fleet of its own making: each sample shows it the work the real
//! workers carry (the sum of their loads, their jobs) spread over the
//! replicas it last recommended, as if its decisions had been applied (a
//! fleet really shrunk would refuse more of the work than this shows: the
//! replay does not model that). While the fleet is full, the scaler sees
//! the jobs running, not the ones refused.
//!
//! `tests/fleet_sim.rs` runs [`simulate`] at [`SimConfig::ci`] and asserts
//! that no job is lost and no worker ever runs more than its `max_jobs`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::future::join_all;
use lkagent::demo::{DemoOutcome, DemoPlan, FAIL_TEXT};
use lkagent::proto::JobStatus;
use lkagent::scaling::{AutoScaler, FleetSample, ScaleDecision, ScalingPolicy, Trend};
use lkagent::{GetState, JobContext, JobError, JobHandler, Worker, WorkerOptions};
use lkagent_devserver::{DevServer, DevServerConfig, DispatchError, DispatchRequest};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Simulated time runs this many times faster than real time for the
/// scaler: one real second is one simulated minute.
pub const SIM_SPEED: u32 = 60;

const KEY: &str = "devkey";
const SECRET: &str = "fleet-sim-secret";

/// The ramp runs over the first 40 % of the arrival window, from 20 % of
/// its peak rate up to the peak.
const RAMP_END: f64 = 0.4;
const RAMP_FLOOR: f64 = 0.2;
/// Then the burst, for 8 % of the window at 2.5 times the ramp's peak:
/// more than the fleet can hold, for a moment.
const BURST_END: f64 = 0.48;
const BURST_RATE: f64 = 2.5;
/// Then an exponential decay from the ramp's peak to a tenth of it.
const DECAY_FLOOR: f64 = 0.1;
/// Cells of the grid the arrival profile is inverted on.
const PROFILE_CELLS: usize = 10_000;

/// The longest wait for the workers to register.
const REGISTER_DEADLINE: Duration = Duration::from_secs(30);
/// How long after the last arrival every dispatch must have its answer (a
/// dispatch asks one worker after another, each within the server's
/// availability timeout).
const DISPATCH_SLACK: Duration = Duration::from_secs(20);
/// The dev server's wait for one worker's availability answer (its
/// default is 10 s; a worker answers in well under a millisecond).
const AVAILABILITY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after the last job should have ended its final status must
/// be at the server; later, the job counts as lost.
const FINAL_SLACK: Duration = Duration::from_secs(15);
/// How often the server's job records are read while waiting for final
/// statuses (each read copies every record).
const FINAL_POLL: Duration = Duration::from_millis(250);
/// Room for the plot's legend, in pixels from the right edge.
const LEGEND_WIDTH: i32 = 300;
/// Table rows per arrival window (one per 5 simulated minutes in the full
/// run), besides one for every scale-up or scale-down.
const ROWS_PER_WINDOW: f64 = 12.0;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Workers in the fleet, all up for the whole run.
    pub workers: usize,
    /// Job slots per worker (`max_jobs`): the job-slot load is jobs / slots.
    pub max_jobs: usize,
    /// Jobs that arrive over the window.
    pub jobs: usize,
    /// Real time over which the jobs arrive (ramp, burst, decay).
    pub window: Duration,
    /// How long each job runs.
    pub durations: BoundedPareto,
    /// The share of jobs whose handler fails them on purpose, so the count
    /// of FAILED statuses is checked against what was asked.
    pub fail_share: f64,
    /// How often the workers' states are sampled and the scaler asked.
    pub tick: Duration,
    /// How long sampling goes on after the last job has ended, so the
    /// scaler's scale-downs show.
    pub tail: Duration,
    /// The most dispatches waiting for their answer at once; an arrival
    /// beyond it waits for a place (the lag is reported).
    pub max_in_flight: usize,
    /// Seeds the arrival times, durations and failures: the same seed
    /// gives the same jobs.
    pub seed: u64,
}

impl SimConfig {
    /// 50 workers × 4 slots, 5,000 jobs over 60 s (a simulated hour), each
    /// running 0.4–8 s (0.4–8 simulated minutes), 1 % failing.
    pub fn full() -> Self {
        Self {
            workers: 50,
            max_jobs: 4,
            jobs: 5_000,
            window: Duration::from_secs(60),
            durations: BoundedPareto {
                min: Duration::from_millis(400),
                max: Duration::from_secs(8),
                alpha: 1.5,
            },
            fail_share: 0.01,
            tick: Duration::from_millis(250),
            tail: Duration::from_secs(10),
            max_in_flight: 256,
            seed: 13,
        }
    }

    /// The CI size: 10 workers × 4 slots, 500 shorter jobs over 8 s, 2 %
    /// failing; the same shape relative to the fleet's capacity.
    pub fn ci() -> Self {
        Self {
            workers: 10,
            jobs: 500,
            window: Duration::from_secs(8),
            durations: BoundedPareto {
                min: Duration::from_millis(100),
                max: Duration::from_secs(2),
                alpha: 1.5,
            },
            fail_share: 0.02,
            tail: Duration::from_secs(1),
            ..Self::full()
        }
    }

    /// Jobs the whole fleet runs at once.
    pub fn capacity(&self) -> usize {
        self.workers * self.max_jobs
    }

    /// The scaler's policy: the defaults (aim at 60 %, up above 75 %, down
    /// below 40 %, cooldowns of 1 and 5 minutes, 5 minutes' stabilization),
    /// the jobs counted at `max_jobs` per replica, a trend over 2 minutes,
    /// and room to recommend up to 4× the fleet.
    pub fn policy(&self) -> ScalingPolicy {
        ScalingPolicy {
            min_replicas: 1,
            max_replicas: u32::try_from(self.workers * 4).unwrap_or(u32::MAX),
            jobs_per_replica: Some(u32::try_from(self.max_jobs).unwrap_or(u32::MAX)),
            trend: Some(Trend::default()),
            ..ScalingPolicy::default()
        }
    }
}

/// A Pareto distribution cut to `[min, max]`: most jobs short, a few long.
#[derive(Clone, Copy, Debug)]
pub struct BoundedPareto {
    /// The shortest job.
    pub min: Duration,
    /// The longest job.
    pub max: Duration,
    /// The tail index; smaller is heavier (1.5: a heavy tail, finite mean).
    pub alpha: f64,
}

impl BoundedPareto {
    /// The duration at quantile `u` in `[0, 1)` (the inverse of the CDF).
    pub fn quantile(&self, u: f64) -> Duration {
        let (low, high, alpha) = (self.min.as_secs_f64(), self.max.as_secs_f64(), self.alpha);
        let cut = 1.0 - (low / high).powf(alpha);
        let x = low / (1.0 - u.clamp(0.0, 1.0) * cut).powf(1.0 / alpha);
        Duration::from_secs_f64(x.clamp(low, high))
    }

    /// The mean duration (for `alpha` ≠ 1).
    pub fn mean(&self) -> Duration {
        let (low, high, alpha) = (self.min.as_secs_f64(), self.max.as_secs_f64(), self.alpha);
        let scale = low.powf(alpha) / (1.0 - (low / high).powf(alpha));
        let mean = scale * alpha / (alpha - 1.0) * (low.powf(1.0 - alpha) - high.powf(1.0 - alpha));
        Duration::from_secs_f64(mean)
    }
}

/// One job of the schedule.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// When it is dispatched, from the start of the window.
    pub at: Duration,
    /// How long its handler runs.
    pub duration: Duration,
    /// Its handler fails it on purpose.
    pub fail: bool,
}

/// The arrival rate at `x` (0–1 of the window), relative to the ramp's peak.
fn rate(x: f64) -> f64 {
    if x < RAMP_END {
        RAMP_FLOOR + (1.0 - RAMP_FLOOR) * x / RAMP_END
    } else if x < BURST_END {
        BURST_RATE
    } else {
        let k = (1.0 / DECAY_FLOOR).ln() / (1.0 - BURST_END);
        (-k * (x - BURST_END)).exp()
    }
}

/// Which part of the traffic `x` (0–1 of the window; beyond 1: after the
/// last arrival) falls in.
fn phase(x: f64) -> &'static str {
    match x {
        x if x < RAMP_END => "ramp",
        x if x < BURST_END => "burst",
        x if x <= 1.0 => "decay",
        _ => "after",
    }
}

/// The jobs, in order of arrival: times drawn from the ramp-burst-decay
/// profile (inverted on a grid), durations from the bounded Pareto.
pub fn schedule(config: &SimConfig) -> Vec<Arrival> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    // cumulative[i]: the profile's integral over the first i cells
    let cell = 1.0 / PROFILE_CELLS as f64;
    let mut cumulative = Vec::with_capacity(PROFILE_CELLS + 1);
    cumulative.push(0.0);
    for i in 0..PROFILE_CELLS {
        let last = cumulative[i];
        cumulative.push(last + rate((i as f64 + 0.5) * cell) * cell);
    }
    let total = cumulative[PROFILE_CELLS];
    let mut arrivals: Vec<Arrival> = (0..config.jobs)
        .map(|_| {
            let target = rng.random::<f64>() * total;
            let i = cumulative
                .partition_point(|&c| c <= target)
                .clamp(1, PROFILE_CELLS);
            let within = (target - cumulative[i - 1]) / (cumulative[i] - cumulative[i - 1]);
            let x = (i as f64 - 1.0 + within) * cell;
            Arrival {
                at: config.window.mul_f64(x.clamp(0.0, 1.0)),
                duration: config.durations.quantile(rng.random::<f64>()),
                fail: rng.random::<f64>() < config.fail_share,
            }
        })
        .collect();
    arrivals.sort_by_key(|a| a.at);
    arrivals
}

/// One worker's jobs as its handler sees them: written by the handler on
/// the worker's job thread, read by the simulation.
#[derive(Debug, Default)]
struct Slots {
    running: AtomicUsize,
    peak: AtomicUsize,
    started: AtomicUsize,
}

/// Counts a job as running until dropped, whether the job ends, fails or
/// is terminated.
struct Running<'a>(&'a Slots);

impl<'a> Running<'a> {
    fn enter(slots: &'a Slots) -> Self {
        let now = slots.running.fetch_add(1, Ordering::SeqCst) + 1;
        slots.peak.fetch_max(now, Ordering::SeqCst);
        slots.started.fetch_add(1, Ordering::SeqCst);
        Self(slots)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs for the job's `duration_ms` and ends as its metadata says (the
/// [`DemoPlan`] format), counting itself in its worker's [`Slots`].
struct SimAgent(Arc<Slots>);

impl JobHandler for SimAgent {
    async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
        let plan = DemoPlan::parse(ctx.metadata());
        let _running = Running::enter(&self.0);
        if actix_rt::time::timeout(plan.duration(), ctx.cancelled())
            .await
            .is_ok()
        {
            return Ok(()); // terminated: wind down at once
        }
        match plan.outcome() {
            DemoOutcome::Fail => Err(JobError::failed(FAIL_TEXT)),
            _ => Ok(()),
        }
    }
}

/// The fleet at one tick, and what the scaler made of it.
#[derive(Clone, Debug)]
pub struct Tick {
    /// Real time since the arrival window opened.
    pub real: Duration,
    /// Jobs that would be running had every arrival been placed at once:
    /// the offered load, from the schedule.
    pub offered: usize,
    /// Jobs running on the workers (their own count).
    pub running: usize,
    /// The sum of the workers' loads: the work in replicas' worth.
    pub load_sum: f32,
    /// The highest worker load.
    pub max_load: f32,
    /// The scaler's decision.
    pub decision: ScaleDecision,
}

/// One worker's share of the run.
#[derive(Clone, Debug, Default)]
pub struct WorkerTally {
    /// Its instance id.
    pub name: String,
    /// Jobs the server placed on it.
    pub placed: usize,
    /// Jobs its handler started.
    pub started: usize,
    /// The most jobs its handler ran at once.
    pub peak_running: usize,
    /// The highest load sampled from it.
    pub max_load: f32,
    /// Times it registered (1 unless its connection dropped).
    pub registrations: u64,
}

/// What a run showed.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// What was simulated.
    pub config: SimConfig,
    /// Jobs dispatched.
    pub arrivals: usize,
    /// When each job arrived (real time from the start) and whether it was
    /// placed.
    pub outcomes: Vec<(Duration, bool)>,
    /// Jobs placed on a worker.
    pub placed: usize,
    /// Placed jobs their handler was asked to fail.
    pub placed_to_fail: usize,
    /// Jobs refused, by reason.
    pub refused: BTreeMap<&'static str, usize>,
    /// Dispatches with no answer by their deadline.
    pub unresolved: usize,
    /// Placed jobs that ended in SUCCESS.
    pub succeeded: usize,
    /// Placed jobs that ended in FAILED.
    pub failed: usize,
    /// Placed jobs without a final status at the server by the deadline.
    pub lost: usize,
    /// Placed jobs with more than one final status.
    pub duplicate_finals: usize,
    /// Job ids placed more than once.
    pub duplicate_ids: usize,
    /// The workers, in start order.
    pub workers: Vec<WorkerTally>,
    /// The samples, one per tick.
    pub ticks: Vec<Tick>,
    /// Dispatch latencies (request to assignment or refusal): p50, p99, max.
    pub dispatch_latency: [Duration; 3],
    /// The most an arrival waited past its time for a dispatch place.
    pub max_dispatch_lag: Duration,
    /// From the first arrival until every placed job had its final status.
    pub settled_after: Duration,
    /// The whole run, start-up and shutdown included.
    pub wall: Duration,
}

impl SimReport {
    /// Jobs refused, all reasons.
    pub fn refused_total(&self) -> usize {
        self.refused.values().sum()
    }

    /// Jobs per worker (placed by the server): mean, and the coefficient
    /// of variation (population standard deviation over the mean).
    pub fn spread(&self) -> (f64, f64) {
        let n = self.workers.len().max(1) as f64;
        let mean = self.workers.iter().map(|w| w.placed as f64).sum::<f64>() / n;
        let variance = self
            .workers
            .iter()
            .map(|w| (w.placed as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let cv = if mean > 0.0 {
            variance.sqrt() / mean
        } else {
            0.0
        };
        (mean, cv)
    }

    /// The worker whose handler ran the most jobs at once.
    pub fn busiest(&self) -> Option<&WorkerTally> {
        self.workers.iter().max_by_key(|w| w.peak_running)
    }

    /// The highest replica count recommended, and when (real time).
    pub fn peak_recommendation(&self) -> Option<(u32, Duration)> {
        self.ticks
            .iter()
            .map(|t| (t.decision.replicas(), t.real))
            .max_by_key(|&(replicas, at)| (replicas, std::cmp::Reverse(at)))
    }

    /// What broke the run's invariants, if anything: every job answered,
    /// every placed job started once and ended once (FAILED only as
    /// asked), no worker above its slots.
    pub fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        if self.unresolved > 0 {
            found.push(format!("{} dispatches never answered", self.unresolved));
        }
        if self.placed + self.refused_total() + self.unresolved != self.arrivals {
            found.push("placed + refused + unresolved ≠ arrivals".into());
        }
        if self.lost > 0 {
            found.push(format!("{} placed jobs lost", self.lost));
        }
        if self.duplicate_finals > 0 || self.duplicate_ids > 0 {
            found.push(format!(
                "{} jobs with several final statuses, {} ids placed twice",
                self.duplicate_finals, self.duplicate_ids
            ));
        }
        if self.failed != self.placed_to_fail {
            found.push(format!(
                "{} jobs failed, {} were asked to",
                self.failed, self.placed_to_fail
            ));
        }
        let started: usize = self.workers.iter().map(|w| w.started).sum();
        if started != self.placed {
            found.push(format!("{started} jobs started for {} placed", self.placed));
        }
        for w in &self.workers {
            if w.peak_running > self.config.max_jobs {
                found.push(format!(
                    "{} ran {} jobs at once, above its {} slots",
                    w.name, w.peak_running, self.config.max_jobs
                ));
            }
        }
        found
    }
}

impl SimReport {
    /// One row per twelfth of the arrival window (5 simulated minutes in
    /// the full run) and one at every scale event: the arrivals and
    /// refusals since the row before, the fleet, the scaler's decision.
    fn write_table(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "{:>6} {:<6} {:>7} {:>7} {:>7} {:>7} {:>9}  AutoScaler",
            "t (s)", "phase", "arrived", "refused", "offered", "running", "load max"
        )?;
        // in whole seconds, at least one
        let row_every =
            Duration::from_secs(((c.window.as_secs_f64() / ROWS_PER_WINDOW).round() as u64).max(1));
        let mut next_row = Duration::ZERO;
        let mut outcomes = self.outcomes.iter().peekable();
        for (i, tick) in self.ticks.iter().enumerate() {
            let change = !matches!(tick.decision, ScaleDecision::Hold { .. });
            let last = i + 1 == self.ticks.len();
            if !(change || tick.real >= next_row || last) {
                continue;
            }
            let (mut arrived, mut refused) = (0, 0);
            while let Some((_, placed)) = outcomes.next_if(|(at, _)| *at <= tick.real) {
                arrived += 1;
                refused += usize::from(!placed);
            }
            writeln!(
                f,
                "{:>6.1} {:<6} {:>7} {:>7} {:>7} {:>7} {:>4.2} {:>4.2}  {}",
                tick.real.as_secs_f64(),
                phase(tick.real.as_secs_f64() / c.window.as_secs_f64()),
                arrived,
                refused,
                tick.offered,
                tick.running,
                tick.load_sum / c.workers.max(1) as f32,
                tick.max_load,
                tick.decision
            )?;
            while next_row <= tick.real {
                next_row += row_every;
            }
        }
        writeln!(
            f,
            "(t: real seconds, which the scaler takes for minutes; arrived, refused: since the \
             row before; offered: jobs that would run had every arrival been placed at once; \
             load: mean and max over the workers)"
        )
    }

    /// The totals under the table.
    fn write_summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let reasons: Vec<String> = self
            .refused
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        writeln!(
            f,
            "jobs: {} arrived, {} placed, {} refused ({}), {} unanswered",
            self.arrivals,
            self.placed,
            self.refused_total(),
            if reasons.is_empty() {
                "none".into()
            } else {
                reasons.join(", ")
            },
            self.unresolved
        )?;
        writeln!(
            f,
            "placed jobs: {} succeeded, {} failed ({} were asked to fail), {} lost, \
             {} with a repeated final status",
            self.succeeded, self.failed, self.placed_to_fail, self.lost, self.duplicate_finals
        )?;
        let (mean, cv) = self.spread();
        let (min, max) = self.workers.iter().fold((usize::MAX, 0), |(lo, hi), w| {
            (lo.min(w.placed), hi.max(w.placed))
        });
        writeln!(
            f,
            "spread: jobs per worker min {min}, mean {mean:.1}, max {max}; \
             coefficient of variation {cv:.3}"
        )?;
        if let Some(busiest) = self.busiest() {
            let max_load = self.workers.iter().map(|w| w.max_load).fold(0.0, f32::max);
            let filled = self
                .workers
                .iter()
                .filter(|w| w.peak_running == c.max_jobs)
                .count();
            writeln!(
                f,
                "busiest worker: {} ran at most {} jobs at once, of its {} slots ({filled} of \
                 {} workers filled every slot at some point); highest load sampled {:.2}",
                busiest.name, busiest.peak_running, c.max_jobs, c.workers, max_load
            )?;
        }
        let reconnects: u64 = self
            .workers
            .iter()
            .map(|w| w.registrations.saturating_sub(1))
            .sum();
        let [p50, p99, slowest] = self.dispatch_latency;
        writeln!(
            f,
            "dispatch: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; an arrival waited at most \
             {:.1} ms for a dispatch place; {reconnects} reconnects",
            ms(p50),
            ms(p99),
            ms(slowest),
            ms(self.max_dispatch_lag)
        )?;
        if let Some((peak, at)) = self.peak_recommendation() {
            let events = self
                .ticks
                .iter()
                .filter(|t| !matches!(t.decision, ScaleDecision::Hold { .. }))
                .count();
            writeln!(
                f,
                "AutoScaler: {events} scale events; at most {peak} replicas recommended \
                 (at {:.1} s), against {} workers running",
                at.as_secs_f64(),
                c.workers
            )?;
        }
        write!(
            f,
            "every placed job settled {:.1} s after the window opened; the run took {:.1} s",
            self.settled_after.as_secs_f64(),
            self.wall.as_secs_f64()
        )
    }
}

impl fmt::Display for SimReport {
    /// The set-up, the table, the totals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "fleet: {} workers × {} job slots = {} jobs at once; {} jobs over {} s \
             (ramp, burst at {}× the ramp's peak rate, decay); durations {:?}–{:?}, \
             Pareto α = {}, mean {:.2} s; seed {}",
            c.workers,
            c.max_jobs,
            c.capacity(),
            c.jobs,
            c.window.as_secs(),
            BURST_RATE,
            c.durations.min,
            c.durations.max,
            c.durations.alpha,
            c.durations.mean().as_secs_f64(),
            c.seed
        )?;
        writeln!(
            f,
            "AutoScaler: 1 real second = 1 simulated minute (cooldowns 1 min up, 5 min down); \
             the workers stay up, the scaler's fleet follows its own advice"
        )?;
        writeln!(f)?;
        self.write_table(f)?;
        writeln!(f)?;
        self.write_summary(f)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Why a dispatch did not place its job, in a few words.
fn refusal(error: &DispatchError) -> &'static str {
    match error {
        DispatchError::NoWorkers => "no worker with a free slot",
        DispatchError::Declined { .. } => "declined by every worker asked",
        DispatchError::Timeout { .. } => "availability timed out",
        DispatchError::WorkerClosed { .. } => "worker closed",
        _ => "other",
    }
}

/// How one dispatch ended.
struct Dispatched {
    index: usize,
    /// The job id and the worker it went to, or why it was refused.
    result: Result<(String, Option<String>), DispatchError>,
    latency: Duration,
    lag: Duration,
}

/// Runs the simulation: starts the dev server and the workers, dispatches
/// the schedule, samples the fleet and asks the scaler at every tick,
/// waits for every placed job's final status, stops everything. Every wait
/// has a deadline: what did not happen by then is counted, not waited for.
pub async fn simulate(config: SimConfig) -> SimReport {
    let started = Instant::now();
    let server = DevServer::start(DevServerConfig {
        keys: vec![(KEY.into(), SECRET.into())],
        availability_timeout: AVAILABILITY_TIMEOUT,
        // keep every record, so none is forgotten before it is counted
        max_jobs: config.jobs * 2 + 100,
        ..DevServerConfig::default()
    })
    .await
    .expect("the dev server starts");
    let slots: Vec<Arc<Slots>> = (0..config.workers).map(|_| Arc::default()).collect();
    let workers: Vec<Worker> = slots
        .iter()
        .enumerate()
        .map(|(n, slots)| {
            let mut options = WorkerOptions::new(server.ws_url(), KEY, SECRET);
            options.instance_id = format!("sim-{n:02}");
            options.job_threads = 1;
            options.hook_threads = 1;
            Worker::builder(options)
                .max_jobs(config.max_jobs)
                .handler(SimAgent(slots.clone()))
                .start()
                .expect("a worker starts")
        })
        .collect();
    let worker_ids = registered(&workers).await;

    let arrivals = schedule(&config);
    let t0 = actix_rt::time::Instant::now() + Duration::from_millis(100);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = actix_rt::spawn(sample(workers.clone(), config.clone(), t0, stopped));
    let (dispatched, unresolved) = dispatch_all(&server, &arrivals, &config, t0).await;
    let last_end = arrivals.iter().map(|a| a.at + a.duration).max();
    let finals_due = t0 + last_end.unwrap_or_default() + FINAL_SLACK;
    let finals = wait_finals(&server, &dispatched, finals_due).await;
    let settled_after = t0.elapsed();
    actix_rt::time::sleep(config.tail).await;
    let _ = stop.send(true);
    let (ticks, max_loads, registrations) = sampler.await.expect("the sampler ends");
    join_all(workers.iter().map(|w| w.stop())).await;
    server.stop().await;

    let workers = (0..config.workers)
        .map(|n| WorkerTally {
            name: format!("sim-{n:02}"),
            started: slots[n].started.load(Ordering::SeqCst),
            peak_running: slots[n].peak.load(Ordering::SeqCst),
            max_load: max_loads[n],
            registrations: registrations[n],
            ..WorkerTally::default()
        })
        .collect();
    Observed {
        config,
        arrivals,
        dispatched,
        unresolved,
        worker_ids,
        finals,
        workers,
        ticks,
        settled_after,
        wall: started.elapsed(),
    }
    .report()
}

/// Dispatches every arrival at its time from `t0`, each in a task of its
/// own (at most `max_in_flight` at once), and collects the answers until
/// [`DISPATCH_SLACK`] after the window; answers how many were missing.
async fn dispatch_all(
    server: &DevServer,
    arrivals: &[Arrival],
    config: &SimConfig,
    t0: actix_rt::time::Instant,
) -> (Vec<Dispatched>, usize) {
    let places = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight));
    let mut pending = Vec::with_capacity(arrivals.len());
    for (index, arrival) in arrivals.iter().enumerate() {
        let due = t0 + arrival.at;
        actix_rt::time::sleep_until(due).await;
        let place = places.clone().acquire_owned().await.expect("never closed");
        let lag = due.elapsed();
        let outcome = if arrival.fail { "fail" } else { "success" };
        let request = DispatchRequest::room(format!("sim-{index}")).metadata(format!(
            r#"{{"duration_ms": {}, "outcome": "{outcome}"}}"#,
            arrival.duration.as_millis()
        ));
        let server = server.clone();
        pending.push(actix_rt::spawn(async move {
            let asked = Instant::now();
            let result = server.dispatch(request).await;
            drop(place);
            Dispatched {
                index,
                result: result.map(|job| (job.id, job.worker_id)),
                latency: asked.elapsed(),
                lag,
            }
        }));
    }
    let answers_due = t0 + config.window + DISPATCH_SLACK;
    let mut dispatched = Vec::with_capacity(pending.len());
    let mut unresolved = 0;
    for task in pending {
        match tokio::time::timeout_at(answers_due, task).await {
            Ok(Ok(answer)) => dispatched.push(answer),
            _ => unresolved += 1,
        }
    }
    (dispatched, unresolved)
}

/// Polls the server until every placed job has a final status, or until
/// `due`; answers each placed job's final statuses.
async fn wait_finals(
    server: &DevServer,
    dispatched: &[Dispatched],
    due: actix_rt::time::Instant,
) -> HashMap<String, Vec<JobStatus>> {
    let placed: Vec<&str> = dispatched
        .iter()
        .filter_map(|d| d.result.as_ref().ok().map(|(id, _)| id.as_str()))
        .collect();
    loop {
        let finals = final_statuses(server, &placed).await;
        if finals.values().all(|statuses| !statuses.is_empty())
            || actix_rt::time::Instant::now() >= due
        {
            return finals;
        }
        actix_rt::time::sleep(FINAL_POLL).await;
    }
}

/// What a run observed, before it is summed up.
struct Observed {
    config: SimConfig,
    arrivals: Vec<Arrival>,
    dispatched: Vec<Dispatched>,
    unresolved: usize,
    /// Worker id at the server → index of the worker.
    worker_ids: HashMap<String, usize>,
    /// Each placed job's final statuses.
    finals: HashMap<String, Vec<JobStatus>>,
    /// The workers' own counts; `placed` is filled in by the report.
    workers: Vec<WorkerTally>,
    /// The samples; `offered` is filled in by the report.
    ticks: Vec<Tick>,
    settled_after: Duration,
    wall: Duration,
}

impl Observed {
    fn report(self) -> SimReport {
        let Self {
            config,
            arrivals,
            dispatched,
            mut workers,
            mut ticks,
            ..
        } = self;
        let mut refused = BTreeMap::new();
        let (mut placed, mut placed_to_fail) = (0, 0);
        for d in &dispatched {
            match &d.result {
                Ok((_, worker)) => {
                    placed += 1;
                    placed_to_fail += usize::from(arrivals[d.index].fail);
                    if let Some(&n) = worker.as_ref().and_then(|w| self.worker_ids.get(w)) {
                        workers[n].placed += 1;
                    }
                }
                Err(error) => *refused.entry(refusal(error)).or_default() += 1,
            }
        }
        let (mut succeeded, mut failed, mut lost, mut duplicate_finals) = (0, 0, 0, 0);
        for statuses in self.finals.values() {
            match statuses.as_slice() {
                [] => lost += 1,
                [.., last] => {
                    duplicate_finals += usize::from(statuses.len() > 1);
                    if *last == JobStatus::JsFailed {
                        failed += 1;
                    } else {
                        succeeded += 1;
                    }
                }
            }
        }
        let mut latencies: Vec<Duration> = dispatched.iter().map(|d| d.latency).collect();
        latencies.sort();
        let quantile = |q: f64| {
            let at = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies.get(at).copied().unwrap_or_default()
        };
        let mut outcomes: Vec<(Duration, bool)> = dispatched
            .iter()
            .map(|d| (arrivals[d.index].at, d.result.is_ok()))
            .collect();
        outcomes.sort_by_key(|&(at, _)| at);
        for tick in &mut ticks {
            tick.offered = arrivals
                .iter()
                .filter(|a| a.at <= tick.real && tick.real < a.at + a.duration)
                .count();
        }
        SimReport {
            arrivals: arrivals.len(),
            outcomes,
            placed,
            placed_to_fail,
            refused,
            unresolved: self.unresolved,
            succeeded,
            failed,
            lost,
            duplicate_finals,
            // the map has one entry per distinct id
            duplicate_ids: placed - self.finals.len(),
            workers,
            ticks,
            dispatch_latency: [quantile(0.5), quantile(0.99), quantile(1.0)],
            max_dispatch_lag: dispatched.iter().map(|d| d.lag).max().unwrap_or_default(),
            settled_after: self.settled_after,
            wall: self.wall,
            config,
        }
    }
}

/// Waits until every worker has registered; their worker ids → index.
async fn registered(workers: &[Worker]) -> HashMap<String, usize> {
    let deadline = Instant::now() + REGISTER_DEADLINE;
    loop {
        let states = join_all(workers.iter().map(|w| w.send(GetState))).await;
        let ids: Vec<Option<String>> = states
            .into_iter()
            .map(|s| s.ok().filter(|s| s.connected).and_then(|s| s.worker_id))
            .collect();
        if ids.iter().all(Option::is_some) {
            return ids
                .into_iter()
                .enumerate()
                .map(|(n, id)| (id.expect("checked"), n))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "workers not registered within {REGISTER_DEADLINE:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The final statuses (SUCCESS, FAILED) each placed job has reported, in
/// order; a job without a record counts as having none.
async fn final_statuses(server: &DevServer, placed: &[&str]) -> HashMap<String, Vec<JobStatus>> {
    let mut finals: HashMap<String, Vec<JobStatus>> = placed
        .iter()
        .map(|&id| (id.to_owned(), Vec::new()))
        .collect();
    for job in server.jobs().await {
        if let Some(statuses) = finals.get_mut(&job.id) {
            statuses.extend(
                job.updates
                    .iter()
                    .map(|u| u.status)
                    .filter(|s| matches!(s, JobStatus::JsSuccess | JobStatus::JsFailed)),
            );
        }
    }
    finals
}

/// Samples every worker each tick from `t0` until `stop`, and feeds the
/// scaler; answers the ticks (offered load left at 0, for the caller), and
/// each worker's highest sampled load and registration count.
async fn sample(
    workers: Vec<Worker>,
    config: SimConfig,
    t0: actix_rt::time::Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<Tick>, Vec<f32>, Vec<u64>) {
    let mut scaler = AutoScaler::new(config.policy()).expect("a valid policy");
    // the scaler's fleet starts as deployed
    let deployed = u32::try_from(config.workers).unwrap_or(u32::MAX);
    scaler.resized(Duration::ZERO, deployed);
    let mut ticks = Vec::new();
    let mut max_loads = vec![0.0f32; workers.len()];
    let mut registrations = vec![0; workers.len()];
    let mut interval = actix_rt::time::interval_at(t0, config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !*stop.borrow() {
        interval.tick().await;
        let real = t0.elapsed();
        let states = join_all(workers.iter().map(|w| w.send(GetState))).await;
        let (mut running, mut queued, mut load_sum, mut max_load) = (0, 0, 0.0f32, 0.0f32);
        for (n, state) in states.into_iter().enumerate() {
            let Ok(state) = state else { continue };
            running += state.running_jobs.len();
            queued += state.jobs.queued;
            load_sum += state.load;
            max_load = max_load.max(state.load);
            max_loads[n] = max_loads[n].max(state.load);
            registrations[n] = state.registrations;
        }
        // the measured work, spread over the replicas last recommended
        let replicas = scaler.recommended();
        let sample = FleetSample {
            replicas,
            mean_load: if replicas == 0 {
                0.0
            } else {
                (load_sum / replicas as f32).min(1.0)
            },
            jobs: (running + queued) as u64,
        };
        let decision = scaler.observe(real * SIM_SPEED, sample);
        ticks.push(Tick {
            real,
            offered: 0,
            running,
            load_sum,
            max_load,
            decision,
        });
    }
    (ticks, max_loads, registrations)
}

/// Plots offered load, jobs running and capacity (jobs, left axis) and the
/// recommended replicas (right axis, scaled so that a replica's slots line
/// up with the jobs) against time, as an SVG.
pub fn write_svg(report: &SimReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let slots = report.config.max_jobs.max(1) as f64;
    let capacity = report.config.capacity() as f64;
    let seconds = |t: &Tick| t.real.as_secs_f64();
    let x_max = report.ticks.last().map_or(1.0, seconds).max(1.0);
    let y_max = report
        .ticks
        .iter()
        .map(|t| (t.offered.max(t.running) as f64).max(f64::from(t.decision.replicas()) * slots))
        .fold(capacity, f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let c = &report.config;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} workers × {} slots, {} jobs: ramp, burst, decay",
                c.workers, c.max_jobs, c.jobs
            ),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?
        .set_secondary_coord(0.0..x_max, 0.0..y_max / slots);
    let whole = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .x_desc("time: real seconds = simulated minutes")
        .y_desc("jobs")
        .x_label_formatter(&whole)
        .y_label_formatter(&whole)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("replicas recommended")
        .y_label_formatter(&whole)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;

    // where the traffic's phases begin
    let window = c.window.as_secs_f64();
    for (x, name) in [
        (0.0, "ramp"),
        (RAMP_END, "burst"),
        (BURST_END, "decay"),
        (1.0, "last arrival"),
    ] {
        let x = x * window;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, 0.0), (x, y_max)],
            BLACK.mix(0.25),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            name,
            (x + x_max / 200.0, y_max * 0.98),
            ("sans-serif", 14).into_font().color(&BLACK.mix(0.6)),
        )))?;
    }

    let orange = RGBColor(230, 120, 20);
    let blue = RGBColor(30, 90, 200);
    let green = RGBColor(20, 150, 60);
    let gray = RGBColor(90, 90, 90);
    let legend = |color: RGBColor| {
        move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
    };
    chart
        .draw_series(LineSeries::new(
            report.ticks.iter().map(|t| (seconds(t), t.offered as f64)),
            orange.stroke_width(2),
        ))?
        .label("offered (had every arrival been placed)")
        .legend(legend(orange));
    chart
        .draw_series(LineSeries::new(
            report.ticks.iter().map(|t| (seconds(t), t.running as f64)),
            blue.stroke_width(2),
        ))?
        .label("jobs running")
        .legend(legend(blue));
    chart
        .draw_series(LineSeries::new(
            [(0.0, capacity), (x_max, capacity)],
            gray.stroke_width(2),
        ))?
        .label(format!(
            "capacity ({} workers × {} slots)",
            c.workers, c.max_jobs
        ))
        .legend(legend(gray));
    chart
        .draw_secondary_series(LineSeries::new(
            report
                .ticks
                .iter()
                .map(|t| (seconds(t), f64::from(t.decision.replicas()))),
            green.stroke_width(2),
        ))?
        .label("replicas recommended (right axis)")
        .legend(legend(green));
    let width = i32::try_from(chart.plotting_area().dim_in_pixel().0).unwrap_or(0);
    chart
        .configure_series_labels()
        // top right, below the phase names
        .position(SeriesLabelPosition::Coordinate(width - LEGEND_WIDTH, 28))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// An hour of a fleet's traffic in a minute, and what an autoscaler would do
///
/// The dev server and real workers (4 job slots each) take jobs that arrive
/// in a ramp, a burst and a decay, with heavy-tailed durations; an
/// AutoScaler watches the fleet. Reports the jobs placed, refused and
/// failed, any job lost or reported twice, the spread across the workers,
/// the busiest worker's peak and the scaler's decisions, as a table and as
/// an SVG plot. One real second is one simulated minute. Build it with
/// --release; exits 1 if a job was lost, reported twice or overbooked.
#[derive(Parser)]
#[command(name = "fleet_sim", args_override_self = true)]
struct Args {
    /// The size CI runs: 10 workers, 500 jobs over 8 s
    #[arg(long)]
    ci: bool,
    /// Workers in the fleet [default: 50, 10 with --ci]
    #[arg(long, value_name = "N", value_parser = positive)]
    workers: Option<usize>,
    /// Jobs that arrive over the window [default: 5000, 500 with --ci]
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Seeds the arrivals, durations and failures: the same seed, the same jobs [default: 13]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Where to write the plot
    #[arg(long, value_name = "PATH", default_value = "target/fleet_sim.svg")]
    svg: PathBuf,
}

impl Args {
    /// The simulation these flags ask for: `--ci` or the full size, with
    /// the other flags' overrides.
    fn config(&self) -> SimConfig {
        let mut config = if self.ci {
            SimConfig::ci()
        } else {
            SimConfig::full()
        };
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        if let Some(jobs) = self.jobs {
            config.jobs = jobs;
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        config
    }
}

/// A count of at least 1.
fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

#[actix::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (config, svg) = (args.config(), args.svg);
    let report = simulate(config).await;
    println!("{report}");
    if let Some(dir) = svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut violations = report.violations();
    match write_svg(&report, &svg) {
        Ok(()) => println!("plot: {}", svg.display()),
        Err(err) => violations.push(format!("cannot write {}: {err}", svg.display())),
    }
    for violation in &violations {
        eprintln!("fleet_sim: {violation}");
    }
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
