//! What a worker tells the people who run it: metrics and traces.
//!
//! **Metrics** go through the [`metrics`] facade, so an application can send
//! them wherever it already sends its own; lkagent installs a Prometheus
//! recorder ([`prometheus`]) for `/metrics` unless the application installed
//! a recorder first. Every name starts with [`PREFIX`] and extends the names
//! agent fleets already chart (`livekit_agent_jobs_started_total`,
//! `livekit_agent_active_jobs`, `livekit_agent_worker_load`, …), so existing
//! dashboards keep working. Every series carries two labels: `agent_name`,
//! and `worker`, the worker's instance name — a process that runs several
//! workers (a pool, or a test binary) keeps their numbers apart, although the
//! facade's recorder is global. [`names`] lists them all.
//!
//! **Traces**: each worker has a span (`worker`, with its agent name and
//! instance) and each job a span under it (`job`, with the job id, room and
//! attempt) in which its handler runs; every state change is an event. With
//! the cargo feature `otel`, the `otel` module exports them over OTLP.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Label, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::jobs::JobCounts;
use crate::queue::JobPriority;

#[cfg(feature = "otel")]
pub mod otel;

/// The prefix of every metric name.
pub const PREFIX: &str = "livekit_agent_";

/// Every metric a worker records, by name.
pub mod names {
    /// Offers (availability requests) received.
    pub const JOBS_OFFERED: &str = "livekit_agent_jobs_offered_total";
    /// Offers answered `available: true`.
    pub const JOBS_ACCEPTED: &str = "livekit_agent_jobs_accepted_total";
    /// Offers (and local jobs) declined, by `reason`.
    pub const JOBS_DECLINED: &str = "livekit_agent_jobs_declined_total";
    /// Jobs whose handler started (once per job, restarts not counted).
    pub const JOBS_STARTED: &str = "livekit_agent_jobs_started_total";
    /// Jobs that ended with SUCCESS.
    pub const JOBS_COMPLETED: &str = "livekit_agent_jobs_completed_total";
    /// Jobs that ended with FAILED.
    pub const JOBS_FAILED: &str = "livekit_agent_jobs_failed_total";
    /// Handler restarts (panics, retryable errors) and job actors restarted
    /// after a crash.
    pub const JOBS_RESTARTED: &str = "livekit_agent_jobs_restarted_total";
    /// Jobs resumed from their checkpoint after a worker restart.
    pub const JOBS_RECOVERED: &str = "livekit_agent_jobs_recovered_total";
    /// Jobs terminated by the server.
    pub const JOBS_TERMINATED: &str = "livekit_agent_jobs_terminated_total";
    /// Jobs running now (their actor starting or running).
    pub const ACTIVE_JOBS: &str = "livekit_agent_active_jobs";
    /// Jobs waiting in the queue now, by `priority`.
    pub const QUEUED_JOBS: &str = "livekit_agent_queued_jobs";
    /// The load last computed, 0 to 1.
    pub const WORKER_LOAD: &str = "livekit_agent_worker_load";
    /// The replica count the fleet should have, from the fleet's view and
    /// the AutoScaler (only with `WorkerBuilder::fleet_view`): an HPA's
    /// external metric.
    pub const RECOMMENDED_REPLICAS: &str = "livekit_agent_recommended_replicas";
    /// 1 while the worker reports FULL, else 0.
    pub const WORKER_FULL: &str = "livekit_agent_worker_full";
    /// 1 while the worker drains (or shuts down), else 0.
    pub const WORKER_DRAINING: &str = "livekit_agent_worker_draining";
    /// 1 while registered with the server, else 0.
    pub const CONNECTED: &str = "livekit_agent_connected";
    /// Connections made after the first one.
    pub const RECONNECTS: &str = "livekit_agent_reconnects_total";
    /// Final statuses the server has not confirmed yet.
    pub const OUTBOX_DEPTH: &str = "livekit_agent_outbox_depth";
    /// Final statuses lost to the bound on unconfirmed ones.
    pub const OUTBOX_EVICTIONS: &str = "livekit_agent_outbox_evictions_total";
    /// Checkpoint writes to the store, by `result` (`ok` or `error`).
    pub const CHECKPOINT_WRITES: &str = "livekit_agent_checkpoint_writes_total";
    /// How long offers took to answer, in seconds.
    pub const AVAILABILITY_SECONDS: &str = "livekit_agent_availability_answer_seconds";
    /// How long jobs ran, from their handler's start to their end, in seconds.
    pub const JOB_DURATION_SECONDS: &str = "livekit_agent_job_duration_seconds";
    /// The process's CPU use as last sampled, as a share of the CPU it may
    /// use (its cgroup quota, or the machine): 0 to 1.
    pub const PROCESS_CPU: &str = "livekit_agent_process_cpu_ratio";
    /// The memory in use as last sampled, in bytes.
    pub const MEMORY_BYTES: &str = "livekit_agent_memory_used_bytes";
}

/// Buckets for answer latencies: 100 µs to 2.5 s (the server waits ~3 s).
const ANSWER_BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5];

/// Buckets for job durations: a second to a few hours.
const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The Prometheus handle if lkagent's recorder has been installed (by
/// [`prometheus`]), without installing it.
pub fn installed() -> Option<&'static PrometheusHandle> {
    PROMETHEUS.get().and_then(Option::as_ref)
}

/// The process's Prometheus handle: installs lkagent's recorder as the
/// global one the first time it is asked. `Err` when the application
/// installed another recorder first: metrics then go to that one, and
/// `/metrics` says so instead of rendering.
pub fn prometheus() -> Result<&'static PrometheusHandle, &'static str> {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::AVAILABILITY_SECONDS.into()),
                    &ANSWER_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::JOB_DURATION_SECONDS.into()),
                        &DURATION_BUCKETS,
                    )
                })
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
        .ok_or("another metrics recorder is installed: lkagent's metrics go to it")
}

/// Describes every metric once, for the `# HELP` lines.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(names::JOBS_OFFERED, "offers received");
    describe_counter!(names::JOBS_ACCEPTED, "offers accepted");
    describe_counter!(
        names::JOBS_DECLINED,
        "offers and local jobs declined, by reason"
    );
    describe_counter!(names::JOBS_STARTED, "jobs whose handler started");
    describe_counter!(names::JOBS_COMPLETED, "jobs ended with SUCCESS");
    describe_counter!(names::JOBS_FAILED, "jobs ended with FAILED");
    describe_counter!(names::JOBS_RESTARTED, "handler or job actor restarts");
    describe_counter!(names::JOBS_RECOVERED, "jobs resumed after a worker restart");
    describe_counter!(names::JOBS_TERMINATED, "jobs terminated by the server");
    describe_gauge!(names::ACTIVE_JOBS, "jobs running now");
    describe_gauge!(names::QUEUED_JOBS, "jobs waiting in the queue, by priority");
    describe_gauge!(names::WORKER_LOAD, "the load last computed, 0 to 1");
    describe_gauge!(
        names::RECOMMENDED_REPLICAS,
        "the replica count the fleet should have (AutoScaler over the fleet's view)"
    );
    describe_gauge!(names::WORKER_FULL, "1 while the worker reports FULL");
    describe_gauge!(names::WORKER_DRAINING, "1 while the worker drains");
    describe_gauge!(names::CONNECTED, "1 while registered with the server");
    describe_counter!(names::RECONNECTS, "connections after the first");
    describe_gauge!(names::OUTBOX_DEPTH, "final statuses not yet confirmed");
    describe_counter!(names::OUTBOX_EVICTIONS, "final statuses lost to the bound");
    describe_counter!(names::CHECKPOINT_WRITES, "checkpoint writes, by result");
    describe_histogram!(
        names::AVAILABILITY_SECONDS,
        Unit::Seconds,
        "time to answer an offer"
    );
    describe_histogram!(names::JOB_DURATION_SECONDS, Unit::Seconds, "job run time");
    describe_gauge!(names::PROCESS_CPU, "process CPU, share of what it may use");
    describe_gauge!(names::MEMORY_BYTES, Unit::Bytes, "memory in use");
}

/// Why an offer or a local job was declined, as the `reason` label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclineReason {
    /// Every slot taken and no room in the queue (or not urgent enough).
    AtCapacity,
    /// The load leaves no room for its priority.
    Admission,
    /// Under memory pressure.
    Memory,
    /// The job is already known.
    Duplicate,
    /// The handler's `on_request` rejected it (or panicked).
    Handler,
    /// `on_request` took too long, or every hook thread is busy.
    Timeout,
    /// Its resources do not fit the limits.
    Resources,
    /// A rate limit refused it.
    RateLimited,
    /// The worker drains or shuts down.
    Draining,
}

impl DeclineReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineReason::AtCapacity => "at_capacity",
            DeclineReason::Admission => "admission",
            DeclineReason::Memory => "memory",
            DeclineReason::Duplicate => "duplicate",
            DeclineReason::Handler => "handler",
            DeclineReason::Timeout => "timeout",
            DeclineReason::Resources => "resources",
            DeclineReason::RateLimited => "rate_limited",
            DeclineReason::Draining => "draining",
        }
    }
}

/// Records one worker's metrics, under its labels. Cheap to clone; every
/// call is a facade call (a no-op without a recorder).
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    labels: Arc<[Label]>,
}

impl WorkerMetrics {
    /// Metrics for the worker `instance` of agent `agent_name`.
    pub fn new(agent_name: &str, instance: &str) -> Self {
        Self::labelled(agent_name, instance, &Default::default())
    }

    /// Metrics for the worker `instance` of agent `agent_name`, every series
    /// also carrying `labels` (a pool member's `region`, `zone`, …).
    pub fn labelled(
        agent_name: &str,
        instance: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        let mut all = vec![
            Label::new("agent_name", agent_name.to_owned()),
            Label::new("worker", instance.to_owned()),
        ];
        all.extend(
            labels
                .iter()
                .map(|(name, value)| Label::new(name.clone(), value.clone())),
        );
        Self { labels: all.into() }
    }

    fn labels(&self) -> Vec<Label> {
        self.labels.to_vec()
    }

    fn with(&self, key: &'static str, value: &'static str) -> Vec<Label> {
        let mut labels = self.labels();
        labels.push(Label::new(key, value));
        labels
    }

    /// The worker has stopped: its gauges drop to what a stopped worker
    /// holds (no jobs, no load, not connected), so a series left behind — a
    /// pool's removed worker, an old incarnation — does not go on counting
    /// in a sum or an average across the fleet.
    pub fn stopped(&self) {
        self.jobs(&JobCounts::default(), [0; 4]);
        self.load(0.0, false);
        self.connected(false);
    }

    /// The replica count the fleet should have, as this worker computed it
    /// from the fleet's view.
    pub fn recommended_replicas(&self, replicas: u32) {
        gauge!(names::RECOMMENDED_REPLICAS, self.labels()).set(f64::from(replicas));
    }

    /// An offer arrived.
    pub fn offered(&self) {
        counter!(names::JOBS_OFFERED, self.labels()).increment(1);
    }

    /// An offer was accepted, `after` it arrived.
    pub fn accepted(&self, after: Duration) {
        counter!(names::JOBS_ACCEPTED, self.labels()).increment(1);
        histogram!(names::AVAILABILITY_SECONDS, self.labels()).record(after.as_secs_f64());
    }

    /// An offer (or a local job) was declined, `after` it arrived.
    pub fn declined(&self, reason: DeclineReason, after: Duration) {
        counter!(names::JOBS_DECLINED, self.with("reason", reason.as_str())).increment(1);
        histogram!(names::AVAILABILITY_SECONDS, self.labels()).record(after.as_secs_f64());
    }

    /// A job's handler started for the first time.
    pub fn started(&self) {
        counter!(names::JOBS_STARTED, self.labels()).increment(1);
    }

    /// A job ended, with SUCCESS or not, after running `ran` (`None`: it
    /// never ran).
    pub fn ended(&self, success: bool, ran: Option<Duration>) {
        let name = if success {
            names::JOBS_COMPLETED
        } else {
            names::JOBS_FAILED
        };
        counter!(name, self.labels()).increment(1);
        if let Some(ran) = ran {
            histogram!(names::JOB_DURATION_SECONDS, self.labels()).record(ran.as_secs_f64());
        }
    }

    /// A job's handler (or its actor) was restarted.
    pub fn restarted(&self) {
        counter!(names::JOBS_RESTARTED, self.labels()).increment(1);
    }

    /// A job was resumed from its checkpoint after a worker restart.
    pub fn recovered(&self) {
        counter!(names::JOBS_RECOVERED, self.labels()).increment(1);
    }

    /// The server terminated a job.
    pub fn terminated(&self) {
        counter!(names::JOBS_TERMINATED, self.labels()).increment(1);
    }

    /// The jobs in each state now, and the queued ones by priority.
    pub fn jobs(&self, counts: &JobCounts, queued: [usize; 4]) {
        gauge!(names::ACTIVE_JOBS, self.labels()).set((counts.starting + counts.running) as f64);
        gauge!(names::OUTBOX_DEPTH, self.labels()).set(counts.finishing as f64);
        for priority in JobPriority::ALL {
            gauge!(names::QUEUED_JOBS, self.with("priority", priority.as_str()))
                .set(queued[priority.index()] as f64);
        }
    }

    /// The load just computed, and whether the worker is FULL.
    pub fn load(&self, load: f32, full: bool) {
        gauge!(names::WORKER_LOAD, self.labels()).set(f64::from(load));
        gauge!(names::WORKER_FULL, self.labels()).set(if full { 1.0 } else { 0.0 });
    }

    /// The worker drains (or not).
    pub fn draining(&self, draining: bool) {
        gauge!(names::WORKER_DRAINING, self.labels()).set(if draining { 1.0 } else { 0.0 });
    }

    /// The worker registered (or lost its registration).
    pub fn connected(&self, connected: bool) {
        gauge!(names::CONNECTED, self.labels()).set(if connected { 1.0 } else { 0.0 });
    }

    /// A connection after the first one is being made.
    pub fn reconnect(&self) {
        counter!(names::RECONNECTS, self.labels()).increment(1);
    }

    /// An unconfirmed final status was lost to the bound.
    pub fn outbox_eviction(&self) {
        counter!(names::OUTBOX_EVICTIONS, self.labels()).increment(1);
    }

    /// A checkpoint was written (or the write failed).
    pub fn checkpoint_written(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        counter!(names::CHECKPOINT_WRITES, self.with("result", result)).increment(1);
    }

    /// CPU (a share of what the process may use, 0 to 1) and memory (in
    /// bytes) as sampled.
    pub fn resources(&self, cpu: f32, memory_bytes: u64) {
        gauge!(names::PROCESS_CPU, self.labels()).set(f64::from(cpu));
        gauge!(names::MEMORY_BYTES, self.labels()).set(memory_bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_the_prefix_and_prometheus_suffixes() {
        let all = [
            names::JOBS_OFFERED,
            names::JOBS_ACCEPTED,
            names::JOBS_DECLINED,
            names::JOBS_STARTED,
            names::JOBS_COMPLETED,
            names::JOBS_FAILED,
            names::JOBS_RESTARTED,
            names::JOBS_RECOVERED,
            names::JOBS_TERMINATED,
            names::RECONNECTS,
            names::OUTBOX_EVICTIONS,
            names::CHECKPOINT_WRITES,
        ];
        for name in all {
            assert!(
                name.starts_with(PREFIX) && name.ends_with("_total"),
                "{name}"
            );
        }
        for name in [names::AVAILABILITY_SECONDS, names::JOB_DURATION_SECONDS] {
            assert!(name.ends_with("_seconds"), "{name}");
        }
    }

    #[test]
    fn a_workers_own_labels_are_on_every_series() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let labels = [("region".to_owned(), "eu-west".to_owned())].into();
        metrics::with_local_recorder(&recorder, || {
            WorkerMetrics::labelled("support", "w-1", &labels).offered();
        });
        let text = handle.render();
        assert!(
            text.contains(
                r#"livekit_agent_jobs_offered_total{agent_name="support",worker="w-1",region="eu-west"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn recorded_metrics_carry_the_worker_labels() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let metrics = WorkerMetrics::new("support", "w-1");
            metrics.offered();
            metrics.declined(DeclineReason::AtCapacity, Duration::from_millis(1));
            metrics.jobs(
                &JobCounts {
                    running: 2,
                    queued: 1,
                    ..JobCounts::default()
                },
                [0, 0, 1, 0],
            );
        });
        let text = handle.render();
        assert!(
            text.contains(
                r#"livekit_agent_jobs_offered_total{agent_name="support",worker="w-1"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"reason="at_capacity""#), "{text}");
        assert!(
            text.contains(
                r#"livekit_agent_queued_jobs{agent_name="support",worker="w-1",priority="high"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"livekit_agent_active_jobs{agent_name="support",worker="w-1"} 2"#),
            "{text}"
        );
    }
}
