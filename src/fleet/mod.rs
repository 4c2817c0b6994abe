//! Work shared by a fleet: a queue of jobs every worker pulls from.
//!
//! Applications put jobs into the fleet's queue without running a worker
//! (`RedisJobQueue::enqueue`, feature `redis`); each worker given the
//! queue ([`WorkerBuilder::fleet_queue`](crate::WorkerBuilder::fleet_queue))
//! pulls from it when it has a free slot and nothing queued of its own, and
//! runs what it pulls like a [`SpawnJob`] of its own, except that the job's
//! checkpoint lives in the fleet's store: if its worker dies, another takes
//! it over like any orphaned job.
//!
//! Delivery is at least once. A pulled item is *taken* (by that worker, for
//! the visibility timeout); it goes back to the queue only if its worker is
//! gone (its heartbeat lapsed) once the timeout has passed and the job never
//! started — a job that started has a record in the store and is covered by
//! takeover instead. The item is acknowledged when the job's record is
//! dropped at its end. Job ids are unique in the fleet's queue: enqueueing
//! an id already queued, taken or running is refused as a duplicate.
//!
//! ## The fleet's view of its load
//!
//! A worker given a [`FleetView`] (`WorkerBuilder::fleet_view`;
//! `RedisFleetView` with the `redis` feature) publishes its load and job
//! counts there at every `WorkerOptions::fleet_view_interval`, each entry
//! lapsing after three intervals unless published again, and reads every
//! live entry back. From them it runs the
//! [`AutoScaler`](crate::scaling::AutoScaler) and exports the replica
//! count the fleet should have as `livekit_agent_recommended_replicas`: a
//! Kubernetes HPA scales on it as an external metric (`deploy/`). Every
//! worker computes it from the same view, so any one of them (or their
//! `max`) will do. It costs two Redis commands per worker per interval, and
//! a read is O(workers).

#[cfg(feature = "redis")]
mod redis;

use std::time::Duration;

#[cfg(feature = "redis")]
pub(crate) use self::redis::scripts as redis_scripts;
#[cfg(feature = "redis")]
pub use self::redis::{RedisFleetView, RedisJobQueue};

/// The most jobs one pull takes, whatever the free slots.
pub const MAX_PULL: usize = 64;

use crate::SpawnJob;
use crate::recovery::{StoreError, StoreFuture};

/// What a worker needs of a fleet's queue (implemented by
/// `RedisJobQueue`; tests may provide their own).
pub trait FleetQueue: Send + Sync + 'static {
    /// Takes up to `max` jobs for `worker`, highest priority first, then
    /// oldest, each hidden from other workers for `visibility`.
    fn pull(&self, worker: &str, max: usize, visibility: Duration) -> StoreFuture<Vec<SpawnJob>>;

    /// Puts a job `worker` took back where it was in the queue (the worker
    /// could not start it); false if `worker` does not hold it taken, or it
    /// started (its record covers it).
    fn release(&self, job_id: &str, worker: &str) -> StoreFuture<bool>;

    /// Drops a job from the queue for good (it cannot run anywhere: the
    /// item is invalid); false if there was none. A job that ran is
    /// acknowledged by dropping its record instead.
    fn acknowledge(&self, job_id: &str) -> StoreFuture<bool>;

    /// Puts back the taken jobs whose worker is gone and whose visibility
    /// timeout has passed, if they never started; their number.
    fn redeliver(&self) -> StoreFuture<usize>;
}

/// One worker's load as the fleet sees it: what it publishes to the
/// [`FleetView`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FleetLoad {
    /// The worker's instance name.
    pub worker: String,
    /// Its reported load, `0.0..=1.0`.
    pub load: f32,
    /// Jobs it holds: queued, starting or running.
    pub jobs: usize,
    /// Jobs it runs at most.
    pub max_jobs: usize,
    /// It drains: on its way out, not counted as a replica.
    pub draining: bool,
}

/// Where a fleet's workers publish their loads and read each other's
/// (implemented by `RedisFleetView`; tests may provide their own).
pub trait FleetView: Send + Sync + 'static {
    /// Publishes `load`; it lapses after `ttl` unless published again.
    fn publish(&self, load: &FleetLoad, ttl: Duration) -> StoreFuture<()>;

    /// Every load published and not lapsed, in no particular order.
    fn loads(&self) -> StoreFuture<Vec<FleetLoad>>;

    /// Withdraws `worker`'s load at once (it stopped).
    fn retire(&self, worker: &str) -> StoreFuture<()>;
}

/// The sample the [`AutoScaler`](crate::scaling::AutoScaler) takes from the
/// fleet's loads: draining workers are leaving and count as neither
/// replicas nor load; their jobs still count.
pub fn fleet_sample(loads: &[FleetLoad]) -> crate::scaling::FleetSample {
    let staying: Vec<f32> = loads
        .iter()
        .filter(|load| !load.draining)
        .map(|load| load.load)
        .collect();
    let jobs = loads.iter().map(|load| load.jobs as u64).sum();
    crate::scaling::FleetSample::from_loads(&staying, jobs)
}

/// How many jobs are in a fleet's queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Waiting to be pulled.
    pub waiting: usize,
    /// Pulled and not yet over (starting, running, or taken over).
    pub taken: usize,
}

/// What `RedisJobQueue::enqueue` did with a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// It waits in the queue under this id.
    Added {
        /// The job's id (made if the job had none).
        job_id: String,
    },
    /// A job with this id is already queued, taken or running in the fleet:
    /// nothing was added.
    Duplicate {
        /// The id.
        job_id: String,
    },
}

/// Why a job could not be enqueued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The job cannot run anywhere (no room, an id with a `|`).
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The queue's store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a job before it goes into a queue: what every worker would refuse
/// is refused at once, to the caller, rather than later in a worker's log.
#[cfg(any(feature = "redis", test))]
pub(crate) fn validate(job: &SpawnJob) -> Result<(), QueueError> {
    if job.room.trim().is_empty() {
        return Err(QueueError::Invalid("the room is required".into()));
    }
    if let Some(id) = &job.id
        && (id.is_empty() || id.contains('|'))
    {
        return Err(QueueError::Invalid(format!(
            "job id {id:?} must be non-empty and without '|'"
        )));
    }
    Ok(())
}

/// Where a priority sorts in the queue: the most urgent first (lowest
/// score), then by enqueue time. A job without a priority queues as
/// normal (the worker's priority calculator is not consulted in the
/// fleet's queue).
#[cfg(any(feature = "redis", test))]
pub(crate) fn rank(priority: Option<crate::JobPriority>) -> u64 {
    use crate::JobPriority::*;
    match priority.unwrap_or_default() {
        Urgent => 0,
        High => 1,
        Normal => 2,
        Low => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobPriority;

    #[test]
    fn draining_workers_are_not_replicas_but_their_jobs_count() {
        let load = |worker: &str, load: f32, jobs: usize, draining: bool| FleetLoad {
            worker: worker.into(),
            load,
            jobs,
            max_jobs: 4,
            draining,
        };
        let sample = fleet_sample(&[
            load("a", 0.5, 2, false),
            load("b", 1.0, 4, false),
            load("c", 0.25, 1, true),
        ]);
        assert_eq!(sample.replicas, 2);
        assert_eq!(sample.mean_load, 0.75);
        assert_eq!(sample.jobs, 7);
        assert_eq!(fleet_sample(&[]).replicas, 0);
    }

    #[test]
    fn urgent_work_sorts_first_and_no_priority_is_normal() {
        let order: Vec<u64> = [
            Some(JobPriority::Urgent),
            Some(JobPriority::High),
            None,
            Some(JobPriority::Low),
        ]
        .into_iter()
        .map(rank)
        .collect();
        assert_eq!(order, [0, 1, 2, 3]);
        assert_eq!(rank(None), rank(Some(JobPriority::Normal)));
    }

    #[test]
    fn jobs_every_worker_would_refuse_are_refused_at_enqueue() {
        assert!(validate(&SpawnJob::new("room")).is_ok());
        assert!(matches!(
            validate(&SpawnJob::new("  ")),
            Err(QueueError::Invalid(_))
        ));
        let mut piped = SpawnJob::new("room");
        piped.id = Some("a|b".into());
        assert!(matches!(validate(&piped), Err(QueueError::Invalid(_))));
    }

    #[test]
    fn a_spawn_job_round_trips_through_json_with_defaults_for_what_is_absent() {
        let mut job =
            SpawnJob::new("room")
                .priority(JobPriority::High)
                .resources(crate::ResourceRequest {
                    memory_mb: 64,
                    cpu_percent: 5.0,
                    jobs: 1,
                });
        job.job_type = livekit_protocol::JobType::JtPublisher;
        job.id = Some("FJ_1".into());
        let text = serde_json::to_string(&job).unwrap();
        assert!(
            text.contains("\"JT_PUBLISHER\"") && text.contains("\"high\""),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<SpawnJob>(&text).unwrap(), job);
        let minimal: SpawnJob = serde_json::from_str(r#"{"room":"r"}"#).unwrap();
        assert_eq!(minimal, SpawnJob::new("r"));
        assert!(serde_json::from_str::<SpawnJob>(r#"{"room":"r","job_type":"JT_NOPE"}"#).is_err());
    }
}
