//! LoadReporterActor: samples, computes the load, and tells the server.
//!
//! On a timer (default 500 ms) it reads CPU and memory, runs the load
//! calculator and marks the report for sending when the [`ReportPolicy`]
//! says it changed enough or the keepalive (default 2.5 s) is due —
//! batching, not flooding. The WorkerActor tells it at once when slots change
//! ([`SlotsChanged`]); it then recomputes from the last resource reading (and
//! the running jobs' start times as last pulled: see [`RunningSince`]), and
//! a flip between AVAILABLE and FULL is marked for sending at once instead of
//! at the next tick. Every computed report goes to the WorkerActor
//! ([`LoadChanged`]), for admission, for `GetLoad`, and — when marked — for
//! the server as `update_worker`. On its own timer it checks the process's
//! memory and open file descriptors against the limits and tells the worker
//! when that changes ([`MemoryChanged`], [`OpenFilesChanged`]).
//!
//! It runs on the worker's background arbiter: the sampling (sysinfo, `/proc`)
//! and the user's load calculator never run on the connection's thread.
//! It owns no job state: slots come from the WorkerActor, resources from the
//! machine. If it dies, the worker starts a new one with the current slots.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, trace, warn};

use super::messages::*;
use super::supervision::Link;
use crate::limits::{ResourceLimiter, UsageState};
use crate::load::system::{ResourceSample, SystemSampler};
use crate::load::{LoadCalculator, LoadMetrics, LoadReport, ReportPolicy, Slots};

/// How many reported loads are kept for `LoadMetrics::recent_loads`.
const RECENT_LOADS: usize = 16;

/// Samples and reports the worker's load.
pub struct LoadReporterActor {
    calculator: Arc<dyn LoadCalculator>,
    threshold: f32,
    policy: ReportPolicy,
    sample_interval: Duration,
    sampler: SystemSampler,
    resources: ResourceSample,
    link: Link,
    limiter: ResourceLimiter,
    budget_ceiling: f32,
    memory_check_interval: Duration,
    memory: UsageState,
    open_files: UsageState,
    metrics: crate::telemetry::WorkerMetrics,
    slots: Slots,
    /// When each running job began, as last pulled from the worker.
    running_since: Vec<Instant>,
    /// The slots changed since the last pull: the next tick pulls again.
    running_stale: bool,
    connected: bool,
    last_sent: Option<(LoadReport, Instant)>,
    recent: VecDeque<f32>,
    calculator_panicked: bool,
}

/// How the reporter is set up.
pub(crate) struct ReporterConfig {
    pub calculator: Arc<dyn LoadCalculator>,
    pub threshold: f32,
    pub policy: ReportPolicy,
    pub sample_interval: Duration,
    pub memory_check_interval: Duration,
    pub limiter: ResourceLimiter,
    /// The share of the budget at which this worker reports full
    /// (`WorkerOptions::accept_below`; 1.0 without one).
    pub budget_ceiling: f32,
    /// Records the sampled CPU and memory.
    pub metrics: crate::telemetry::WorkerMetrics,
    /// The slots now (a restarted reporter starts from the worker's).
    pub slots: Slots,
    /// Registered now.
    pub connected: bool,
    /// The memory state the worker acts on now (a restarted reporter tells
    /// it when that changes, not when it differs from a fresh start).
    pub memory: UsageState,
    /// The open-file state the worker acts on now (likewise).
    pub open_files: UsageState,
}

impl LoadReporterActor {
    pub(crate) fn new(config: ReporterConfig, link: Link) -> Self {
        Self {
            calculator: config.calculator,
            threshold: config.threshold,
            policy: config.policy,
            sample_interval: config.sample_interval,
            sampler: SystemSampler::new(),
            resources: ResourceSample::default(),
            link,
            limiter: config.limiter,
            budget_ceiling: config.budget_ceiling,
            memory_check_interval: config.memory_check_interval,
            memory: config.memory,
            open_files: config.open_files,
            metrics: config.metrics,
            slots: config.slots,
            running_since: Vec::new(),
            running_stale: true,
            connected: config.connected,
            last_sent: None,
            recent: VecDeque::new(),
            calculator_panicked: false,
        }
    }

    fn metrics(&self, now: Instant) -> LoadMetrics {
        LoadMetrics {
            active_jobs: self.slots.active,
            max_jobs: self.slots.max,
            reserved_jobs: self.slots.reserved,
            job_durations: self
                .running_since
                .iter()
                .map(|since| now.saturating_duration_since(*since))
                .collect(),
            process_cpu: self.resources.process_cpu,
            system_cpu: self.resources.system_cpu,
            memory_used: self.resources.memory_used,
            memory_total: self.resources.memory_total,
            recent_loads: self.recent.iter().copied().collect(),
        }
    }

    /// Runs the calculator; a panicking calculator falls back to the job
    /// load rather than taking the reporter down.
    fn compute(&mut self, now: Instant) -> LoadReport {
        let metrics = self.metrics(now);
        let calculator = &self.calculator;
        let load =
            match std::panic::catch_unwind(AssertUnwindSafe(|| calculator.calculate(&metrics))) {
                Ok(load) => load,
                Err(_) => {
                    if !self.calculator_panicked {
                        warn!("the load calculator panicked: reporting the job load instead");
                        self.calculator_panicked = true;
                    }
                    metrics.job_load()
                }
            };
        // the budget may be shared (a pool's workers): however idle this
        // worker's own slots, it is as loaded as the budget it draws from
        let budget = crate::load::budget_load(
            self.limiter.used_share(),
            self.budget_ceiling,
            self.threshold,
        );
        LoadReport::new(self.slots, load.max(budget), self.threshold)
    }

    /// Computes and, if the policy says so (or `force`), sends a report.
    fn report(&mut self, now: Instant, force: bool) {
        let report = self.compute(now);
        self.offer(report, now, force);
    }

    /// Hands a computed report to the worker, marked for the server if the
    /// policy says so (or `force`).
    fn offer(&mut self, report: LoadReport, now: Instant, force: bool) {
        let last = if force {
            None
        } else {
            self.last_sent.as_ref().map(|(r, t)| (r, *t))
        };
        let send = self.connected && self.policy.should_send(last, &report, now);
        self.link.worker().do_send(LoadChanged { report, send });
        if !send {
            return;
        }
        trace!(load = report.load, status = ?report.status, "reporting load");
        self.last_sent = Some((report, now));
        self.recent.push_back(report.load);
        if self.recent.len() > RECENT_LOADS {
            self.recent.pop_front();
        }
    }

    /// Checks the process's memory against the limits; tells the worker when
    /// the state changes. Reads `/proc`, which lives in memory.
    fn check_memory(&mut self) {
        let state = self.limiter.check_memory();
        if state != self.memory {
            self.memory = state;
            self.link.worker().do_send(MemoryChanged(state));
        }
        // the descriptors too: a job's sockets and files count against
        // `max_open_files` (or RLIMIT_NOFILE), and a worker out of them
        // fails every job it would start
        let state = self.limiter.check_open_files();
        if state != self.open_files {
            self.open_files = state;
            self.link.worker().do_send(OpenFilesChanged(state));
        }
    }
}

impl Actor for LoadReporterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        debug!(
            cores = self.sampler.cores(),
            threshold = self.threshold,
            interval = ?self.sample_interval,
            "load reporter started"
        );
        self.resources = self.sampler.sample();
        ctx.run_interval(self.sample_interval, |act, ctx| {
            act.resources = act.sampler.sample();
            act.metrics
                .resources(act.resources.process_cpu, act.resources.memory_used);
            if !act.running_stale {
                return act.report(Instant::now(), false);
            }
            // the list is O(jobs) to build: pulled once a tick at most, and
            // only when the slots changed, never on every slot change
            act.running_stale = false;
            let pull = act.link.worker().send(RunningSince);
            ctx.spawn(
                actix::fut::wrap_future(pull).map(|since, act: &mut Self, _ctx| {
                    if let Ok(since) = since {
                        act.running_since = since;
                    }
                    act.report(Instant::now(), false);
                }),
            );
        });
        ctx.run_interval(self.memory_check_interval, |act, _ctx| act.check_memory());
        if self.connected {
            // a restarted reporter owes the server a report
            self.report(Instant::now(), true);
        }
    }
}

impl Handler<SlotsChanged> for LoadReporterActor {
    type Result = ();

    fn handle(&mut self, msg: SlotsChanged, _ctx: &mut Self::Context) {
        self.slots = msg.slots;
        self.running_stale = true;
        let now = Instant::now();
        let report = self.compute(now);
        let flipped = self
            .last_sent
            .as_ref()
            .is_some_and(|(last, _)| last.status != report.status);
        if flipped {
            // AVAILABLE <-> FULL must not wait for the next tick
            self.offer(report, now, true);
        } else {
            // anything else waits for the tick: batching, not flooding
            self.link.worker().do_send(LoadChanged {
                report,
                send: false,
            });
        }
    }
}

impl Handler<ConnectionChanged> for LoadReporterActor {
    type Result = ();

    fn handle(&mut self, msg: ConnectionChanged, _ctx: &mut Self::Context) {
        self.connected = msg.connected;
        self.last_sent = None;
        if msg.connected {
            // a new registration starts AVAILABLE with load 0 on the server
            self.report(Instant::now(), true);
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<Panic> for LoadReporterActor {
    type Result = ();

    fn handle(&mut self, _msg: Panic, _ctx: &mut Self::Context) {
        panic!("injected fault: the load reporter panics");
    }
}
