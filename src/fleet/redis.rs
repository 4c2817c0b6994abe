//! [`RedisJobQueue`]: the fleet's queue on Redis, next to the fleet's
//! checkpoints (the keys are listed in `recovery/redis.rs`; all share the
//! fleet's hash tag, so every script below touches one slot).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Enqueued, FleetQueue, MAX_PULL, QueueDepth, QueueError};
use crate::SpawnJob;
use crate::recovery::{RedisCheckpointStore, StoreError, StoreFuture};

/// The most taken items one re-delivery pass looks at.
const REDELIVER_BATCH: usize = 1000;

/// Milliseconds by Redis's clock, in a script.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS queue, items, claims; ARGV id, rank, item. 1 added, 0 duplicate.
/// The score is the rank in the high bits (2^44 ms is 557 years), then the
/// enqueue time.
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return 0
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) * 17592186044416 + now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"
    ))
});

/// KEYS queue, items, processing, taken; ARGV worker, max, visibility ms.
/// The items taken, in queue order.
static PULL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r"
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[2])
local out = {}
for i = 1, #popped, 2 do
  local id = popped[i]
  local item = redis.call('HGET', KEYS[2], id)
  if item then
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), id)
    redis.call('HSET', KEYS[4], id, popped[i + 1] .. '|' .. ARGV[1])
    out[#out + 1] = item
  end
end
return out
"
    ))
});

/// KEYS queue, processing, taken; ARGV id. 1 put back, 0 not taken.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local taken = redis.call('HGET', KEYS[3], ARGV[1])
if not taken then return 0 end
local bar = string.find(taken, '|', 1, true)
redis.call('ZADD', KEYS[1], string.sub(taken, 1, bar - 1), ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
",
    )
});

/// KEYS queue, items, processing, taken; ARGV id. 1 dropped, 0 absent.
static ACKNOWLEDGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
",
    )
});

/// KEYS queue, processing, taken, claims; ARGV heartbeat key prefix, batch.
/// The number of items put back.
static REDELIVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for _, id in ipairs(due) do
  local taken = redis.call('HGET', KEYS[3], id)
  if not taken then
    redis.call('ZREM', KEYS[2], id)
  elseif redis.call('HEXISTS', KEYS[4], id) == 1 then
    -- it started: its record is covered by takeover, and its end drops the item
    redis.call('ZREM', KEYS[2], id)
  else
    local bar = string.find(taken, '|', 1, true)
    local worker = string.sub(taken, bar + 1)
    if redis.call('EXISTS', ARGV[1] .. worker) == 0 then
      redis.call('ZREM', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
      redis.call('ZADD', KEYS[1], string.sub(taken, 1, bar - 1), id)
      n = n + 1
    end
  end
end
return n
"
    ))
});

/// The fleet's queue on Redis (feature `redis`): see the [module
/// docs](super) for its delivery guarantees.
///
/// Applications enqueue with a queue of their own
/// ([`connect`](Self::connect)); a worker shares its checkpoint store's
/// connection ([`of_store`](Self::of_store)), and must use the same prefix
/// as the store: the queue's acknowledgement is the dropping of a job's
/// record in that store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisJobQueue {
    store: RedisCheckpointStore,
}

impl RedisJobQueue {
    /// Connects to the queue of the fleet under `prefix` at `url` (the
    /// store's URL forms; an empty prefix is the default one).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Ok(Self::of_store(
            &RedisCheckpointStore::connect(url, prefix).await?,
        ))
    }

    /// The queue of the fleet `store` belongs to, on its connection.
    pub fn of_store(store: &RedisCheckpointStore) -> Self {
        Self {
            store: store.clone(),
        }
    }

    /// Adds `job` to the queue (an id is made if it has none: `FJ_…`),
    /// unless a job with its id is already queued, taken or running in the
    /// fleet. Sorted by priority (none counts as normal), then by the time
    /// Redis received it.
    pub async fn enqueue(&self, mut job: SpawnJob) -> Result<Enqueued, QueueError> {
        super::validate(&job)?;
        let job_id = job
            .id
            .get_or_insert_with(|| crate::jobs::fresh_id("FJ_"))
            .clone();
        let rank = super::rank(job.priority);
        let item = serde_json::to_string(&job).map_err(StoreError::backend)?;
        let id = job_id.clone();
        let added: i64 = self
            .store
            .run(move |mut conn| async move {
                ENQUEUE
                    .key(&conn.keys.queue)
                    .key(&conn.keys.queue_items)
                    .key(&conn.keys.claims)
                    .arg(&id)
                    .arg(rank)
                    .arg(item)
                    .invoke_async(&mut conn.connection)
                    .await
                    .map_err(StoreError::backend)
            })
            .await?;
        Ok(if added == 1 {
            Enqueued::Added { job_id }
        } else {
            Enqueued::Duplicate { job_id }
        })
    }

    /// How many jobs wait, and how many are taken.
    pub async fn depth(&self) -> Result<QueueDepth, StoreError> {
        let (waiting, items): (usize, usize) = self
            .store
            .run(|mut conn| async move {
                redis::pipe()
                    .zcard(&conn.keys.queue)
                    .hlen(&conn.keys.queue_items)
                    .query_async(&mut conn.connection)
                    .await
                    .map_err(StoreError::backend)
            })
            .await?;
        Ok(QueueDepth {
            waiting,
            taken: items.saturating_sub(waiting),
        })
    }
}

impl FleetQueue for RedisJobQueue {
    fn pull(&self, worker: &str, max: usize, visibility: Duration) -> StoreFuture<Vec<SpawnJob>> {
        let worker = worker.to_owned();
        let max = max.min(MAX_PULL);
        let visibility_ms = u64::try_from(visibility.as_millis()).unwrap_or(u64::MAX);
        self.store.run(move |mut conn| async move {
            if max == 0 {
                return Ok(Vec::new());
            }
            let items: Vec<Vec<u8>> = PULL
                .key(&conn.keys.queue)
                .key(&conn.keys.queue_items)
                .key(&conn.keys.queue_processing)
                .key(&conn.keys.queue_taken)
                .arg(&worker)
                .arg(max)
                .arg(visibility_ms)
                .invoke_async(&mut conn.connection)
                .await
                .map_err(StoreError::backend)?;
            Ok(items
                .iter()
                .filter_map(|bytes| match serde_json::from_slice::<SpawnJob>(bytes) {
                    Ok(job) => Some(job),
                    Err(err) => {
                        // written by something else: left taken, and
                        // re-delivered to no one once this worker is gone
                        tracing::error!(%err, "an unreadable item in the fleet's queue");
                        None
                    }
                })
                .collect())
        })
    }

    fn release(&self, job_id: &str) -> StoreFuture<bool> {
        let id = job_id.to_owned();
        self.store.run(move |mut conn| async move {
            let released: i64 = RELEASE
                .key(&conn.keys.queue)
                .key(&conn.keys.queue_processing)
                .key(&conn.keys.queue_taken)
                .arg(&id)
                .invoke_async(&mut conn.connection)
                .await
                .map_err(StoreError::backend)?;
            Ok(released == 1)
        })
    }

    fn acknowledge(&self, job_id: &str) -> StoreFuture<bool> {
        let id = job_id.to_owned();
        self.store.run(move |mut conn| async move {
            let dropped: i64 = ACKNOWLEDGE
                .key(&conn.keys.queue)
                .key(&conn.keys.queue_items)
                .key(&conn.keys.queue_processing)
                .key(&conn.keys.queue_taken)
                .arg(&id)
                .invoke_async(&mut conn.connection)
                .await
                .map_err(StoreError::backend)?;
            Ok(dropped == 1)
        })
    }

    fn redeliver(&self) -> StoreFuture<usize> {
        self.store.run(|mut conn| async move {
            REDELIVER
                .key(&conn.keys.queue)
                .key(&conn.keys.queue_processing)
                .key(&conn.keys.queue_taken)
                .key(&conn.keys.claims)
                .arg(&conn.keys.heartbeat_prefix)
                .arg(REDELIVER_BATCH)
                .invoke_async(&mut conn.connection)
                .await
                .map_err(StoreError::backend)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::JobPriority;
    use crate::recovery::redis::TestRedis;
    use crate::recovery::{CheckpointStore as _, Claim, JobCheckpoint};

    async fn fleet(redis: &TestRedis, prefix: &str) -> (RedisCheckpointStore, RedisJobQueue) {
        let store = RedisCheckpointStore::connect(&redis.url, prefix)
            .await
            .unwrap();
        let queue = RedisJobQueue::of_store(&store);
        (store, queue)
    }

    fn job(id: &str, priority: Option<JobPriority>) -> SpawnJob {
        let mut job = SpawnJob::new(format!("room-{id}"));
        job.id = Some(id.into());
        job.priority = priority;
        job
    }

    fn ids(jobs: &[SpawnJob]) -> Vec<&str> {
        jobs.iter().map(|j| j.id.as_deref().unwrap()).collect()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[actix_rt::test]
    async fn jobs_come_out_by_priority_then_by_enqueue_time() {
        let redis = TestRedis::start();
        let (_, queue) = fleet(&redis, "order").await;
        for (id, priority) in [
            ("FJ_1", Some(JobPriority::Low)),
            ("FJ_2", None),
            ("FJ_3", Some(JobPriority::Urgent)),
            ("FJ_4", Some(JobPriority::High)),
            ("FJ_5", Some(JobPriority::Normal)),
            ("FJ_6", Some(JobPriority::Urgent)),
        ] {
            let added = queue.enqueue(job(id, priority)).await.unwrap();
            assert_eq!(added, Enqueued::Added { job_id: id.into() });
        }
        assert_eq!(
            queue.depth().await.unwrap(),
            QueueDepth {
                waiting: 6,
                taken: 0
            }
        );
        let first = queue.pull("w1", 4, MINUTE).await.unwrap();
        assert_eq!(ids(&first), ["FJ_3", "FJ_6", "FJ_4", "FJ_2"]);
        assert_eq!(
            first[2],
            job("FJ_4", Some(JobPriority::High)),
            "the whole job"
        );
        let rest = queue.pull("w2", 10, MINUTE).await.unwrap();
        assert_eq!(ids(&rest), ["FJ_5", "FJ_1"]);
        assert!(queue.pull("w2", 10, MINUTE).await.unwrap().is_empty());
        assert_eq!(
            queue.depth().await.unwrap(),
            QueueDepth {
                waiting: 0,
                taken: 6
            }
        );

        // a job given back goes back to its place, ahead of later ones
        queue
            .enqueue(job("FJ_7", Some(JobPriority::High)))
            .await
            .unwrap();
        assert!(queue.release("FJ_4").await.unwrap());
        assert!(!queue.release("FJ_4").await.unwrap(), "no longer taken");
        let again = queue.pull("w2", 10, MINUTE).await.unwrap();
        assert_eq!(ids(&again), ["FJ_4", "FJ_7"]);

        // a made id, and a clear refusal of what no worker could run
        let Enqueued::Added { job_id } = queue.enqueue(SpawnJob::new("r")).await.unwrap() else {
            panic!("added");
        };
        assert!(job_id.starts_with("FJ_") && job_id.len() == 15, "{job_id}");
        assert!(matches!(
            queue.enqueue(SpawnJob::new("")).await,
            Err(QueueError::Invalid(_))
        ));
    }

    #[actix_rt::test]
    async fn a_job_id_is_enqueued_once_while_queued_taken_or_running() {
        let redis = TestRedis::start();
        let (store, queue) = fleet(&redis, "dupes").await;
        let dup = |id: &str| Enqueued::Duplicate { job_id: id.into() };
        queue.enqueue(job("FJ_1", None)).await.unwrap();
        assert_eq!(queue.enqueue(job("FJ_1", None)).await.unwrap(), dup("FJ_1"));
        queue.pull("w1", 1, MINUTE).await.unwrap();
        assert_eq!(queue.enqueue(job("FJ_1", None)).await.unwrap(), dup("FJ_1"));

        // running: its record is in the fleet's store; dropping the record
        // acknowledges the item, and the id is free again
        let record = JobCheckpoint::new(
            &livekit_protocol::Job {
                id: "FJ_1".into(),
                ..Default::default()
            },
            "agent-FJ_1",
            std::time::SystemTime::now(),
        )
        .with_owner("w1")
        .with_fleet_queue();
        store.put(&record).await.unwrap();
        assert!(
            queue
                .acknowledge("FJ_9")
                .await
                .is_ok_and(|dropped| !dropped)
        );
        assert!(store.remove("FJ_1", &Claim::new("w1", 0)).await.unwrap());
        assert_eq!(queue.depth().await.unwrap(), QueueDepth::default());
        assert_eq!(
            queue.enqueue(job("FJ_1", None)).await.unwrap(),
            Enqueued::Added {
                job_id: "FJ_1".into()
            }
        );
        // a job id with a record of the server's is refused too
        let server_job = JobCheckpoint::new(
            &livekit_protocol::Job {
                id: "AJ_1".into(),
                ..Default::default()
            },
            "agent-AJ_1",
            std::time::SystemTime::now(),
        )
        .with_owner("w1");
        store.put(&server_job).await.unwrap();
        assert_eq!(queue.enqueue(job("AJ_1", None)).await.unwrap(), dup("AJ_1"));
    }

    #[actix_rt::test]
    async fn a_vanished_workers_unstarted_jobs_come_back_after_the_visibility_timeout() {
        let redis = TestRedis::start();
        let (store, queue) = fleet(&redis, "redeliver").await;
        store.heartbeat("w1", MINUTE).await.unwrap();
        for id in ["FJ_1", "FJ_2"] {
            queue.enqueue(job(id, None)).await.unwrap();
        }
        let visibility = Duration::from_millis(200);
        let taken = queue.pull("w1", 2, visibility).await.unwrap();
        assert_eq!(taken.len(), 2);
        let pulled_at = Instant::now();
        // FJ_2 started: its record covers it (takeover, not re-delivery)
        let record = JobCheckpoint::new(
            &livekit_protocol::Job {
                id: "FJ_2".into(),
                ..Default::default()
            },
            "agent-FJ_2",
            std::time::SystemTime::now(),
        )
        .with_owner("w1")
        .with_fleet_queue();
        store.put(&record).await.unwrap();

        assert_eq!(queue.redeliver().await.unwrap(), 0, "w1 is alive");
        // past the visibility timeout, w1 still alive: still its
        while pulled_at.elapsed() < visibility * 2 {
            actix_rt::time::sleep(visibility / 4).await;
        }
        assert_eq!(queue.redeliver().await.unwrap(), 0, "w1 is still alive");
        store.retire("w1").await.unwrap();
        assert_eq!(
            queue.redeliver().await.unwrap(),
            1,
            "only the unstarted one"
        );
        let again = queue.pull("w2", 10, MINUTE).await.unwrap();
        assert_eq!(ids(&again), ["FJ_1"]);
        assert_eq!(queue.redeliver().await.unwrap(), 0);
        assert_eq!(
            queue.depth().await.unwrap(),
            QueueDepth {
                waiting: 0,
                taken: 2
            }
        );
    }
}
