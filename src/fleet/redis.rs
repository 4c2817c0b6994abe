//! [`RedisJobQueue`]: the fleet's queue on Redis, next to the fleet's
//! checkpoints (the keys are listed in `recovery/redis.rs`; all share the
//! fleet's hash tag, so every script below touches one slot).

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, ToRedisArgs as _};

use super::{Enqueued, FleetLoad, FleetQueue, FleetView, MAX_PULL, QueueDepth, QueueError};
use crate::SpawnJob;
use crate::recovery::{RedisCheckpointStore, StoreError, StoreFuture};

/// The most taken items one re-delivery pass looks at.
const REDELIVER_BATCH: usize = 1000;

/// Milliseconds by Redis's clock, in a script.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

// Every queue script takes the same KEYS, in this order (`Keys::queue_keys`):
// 1 queue, 2 items, 3 processing, 4 taken, 5 claims.

/// ARGV id, rank, item. 1 added, 0 duplicate. The score is the rank in the
/// high bits (2^44 ms is 557 years), then the enqueue time.
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then
  return 0
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) * 17592186044416 + now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"
    ))
});

/// ARGV worker, max, visibility ms. The items taken, in queue order, as id
/// and item pairs.
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
    out[#out + 1] = id
    out[#out + 1] = item
  end
end
return out
"
    ))
});

/// ARGV id, worker. 1 put back at its place; 0 if that worker does not
/// hold it taken, or it started (a record covers it: takeover, not the
/// queue).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local taken = redis.call('HGET', KEYS[4], ARGV[1])
if not taken then return 0 end
local bar = string.find(taken, '|', 1, true)
if string.sub(taken, bar + 1) ~= ARGV[2] or redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then
  return 0
end
redis.call('ZADD', KEYS[1], string.sub(taken, 1, bar - 1), ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
",
    )
});

/// ARGV id. 1 dropped, 0 absent.
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

/// ARGV heartbeat key prefix, batch. The number of items put back.
static REDELIVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for _, id in ipairs(due) do
  local taken = redis.call('HGET', KEYS[4], id)
  if not taken then
    redis.call('ZREM', KEYS[3], id)
  elseif redis.call('HEXISTS', KEYS[5], id) == 1 then
    -- it started: its record is covered by takeover, and its end drops the item
    redis.call('ZREM', KEYS[3], id)
  else
    local bar = string.find(taken, '|', 1, true)
    local worker = string.sub(taken, bar + 1)
    if redis.call('EXISTS', ARGV[1] .. worker) == 0 then
      redis.call('ZREM', KEYS[3], id)
      redis.call('HDEL', KEYS[4], id)
      redis.call('ZADD', KEYS[1], string.sub(taken, 1, bar - 1), id)
      n = n + 1
    end
  end
end
return n
"
    ))
});

/// The queue's scripts, for the store to load when it connects.
pub(crate) fn scripts() -> [&'static Script; 7] {
    [
        &ENQUEUE,
        &PULL,
        &RELEASE,
        &ACKNOWLEDGE,
        &REDELIVER,
        &PUBLISH_LOAD,
        &LIVE_LOADS,
    ]
}

/// KEYS loads; ARGV worker, ttl in ms, the load (JSON). Stamped with its
/// expiry by Redis's clock, so every worker judges lapses by one clock.
static PUBLISH_LOAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r"
redis.call('HSET', KEYS[1], ARGV[1], (now + tonumber(ARGV[2])) .. '|' .. ARGV[3])
return 1
"
    ))
});

/// KEYS loads. The loads not lapsed; the lapsed ones are dropped.
static LIVE_LOADS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r"
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local entry = all[i + 1]
  local sep = string.find(entry, '|', 1, true)
  local expiry = sep and tonumber(string.sub(entry, 1, sep - 1))
  if expiry and expiry > now then
    table.insert(live, string.sub(entry, sep + 1))
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
"
    ))
});

/// The fleet's view of its workers' loads on Redis (feature `redis`; see
/// the [module docs](super)): one hash, each entry stamped with its expiry
/// by Redis's clock. A worker shares its checkpoint store's connection
/// ([`of_store`](Self::of_store)). Cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisFleetView {
    store: RedisCheckpointStore,
}

impl RedisFleetView {
    /// The view of the fleet `store` belongs to, on its connection.
    pub fn of_store(store: &RedisCheckpointStore) -> Self {
        Self {
            store: store.clone(),
        }
    }

    /// Connects to the view of the fleet under `prefix` at `url`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Ok(Self::of_store(
            &RedisCheckpointStore::connect(url, prefix).await?,
        ))
    }
}

impl FleetView for RedisFleetView {
    fn publish(&self, load: &FleetLoad, ttl: Duration) -> StoreFuture<()> {
        let worker = load.worker.clone();
        let entry = match serde_json::to_string(load) {
            Ok(entry) => entry,
            Err(err) => return Box::pin(std::future::ready(Err(StoreError::backend(err)))),
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.store.run(move |mut conn| async move {
            PUBLISH_LOAD
                .key(&conn.keys.loads)
                .arg(worker)
                .arg(ttl_ms)
                .arg(entry)
                .invoke_async::<i64>(&mut conn.connection)
                .await
                .map(drop)
                .map_err(StoreError::backend)
        })
    }

    fn loads(&self) -> StoreFuture<Vec<FleetLoad>> {
        let entries = self.store.run(|mut conn| async move {
            LIVE_LOADS
                .key(&conn.keys.loads)
                .invoke_async::<Vec<String>>(&mut conn.connection)
                .await
                .map_err(StoreError::backend)
        });
        Box::pin(async move {
            Ok(entries
                .await?
                .iter()
                // an entry something else wrote is not a worker's load
                .filter_map(|entry| serde_json::from_str(entry).ok())
                .collect())
        })
    }

    fn retire(&self, worker: &str) -> StoreFuture<()> {
        let worker = worker.to_owned();
        self.store.run(move |mut conn| async move {
            redis::cmd("HDEL")
                .arg(&conn.keys.loads)
                .arg(worker)
                .query_async::<i64>(&mut conn.connection)
                .await
                .map(drop)
                .map_err(StoreError::backend)
        })
    }
}

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
        let added: i64 = self
            .invoke(
                &ENQUEUE,
                [
                    job_id.to_redis_args(),
                    rank.to_redis_args(),
                    item.to_redis_args(),
                ],
            )
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

impl RedisJobQueue {
    /// Runs a queue script with the queue's keys and `args`.
    fn invoke<T: redis::FromRedisValue + Send + 'static, const N: usize>(
        &self,
        script: &'static Script,
        args: [Vec<Vec<u8>>; N],
    ) -> StoreFuture<T> {
        self.store.run(move |mut conn| async move {
            let mut invocation = script.prepare_invoke();
            for key in conn.keys.queue_keys() {
                invocation.key(key);
            }
            for arg in args.iter().flatten() {
                invocation.arg(arg.as_slice());
            }
            invocation
                .invoke_async(&mut conn.connection)
                .await
                .map_err(StoreError::backend)
        })
    }
}

impl FleetQueue for RedisJobQueue {
    fn pull(&self, worker: &str, max: usize, visibility: Duration) -> StoreFuture<Vec<SpawnJob>> {
        let max = max.min(MAX_PULL);
        if max == 0 {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        let visibility_ms = u64::try_from(visibility.as_millis()).unwrap_or(u64::MAX);
        let pulled = self.invoke::<Vec<(String, Vec<u8>)>, 3>(
            &PULL,
            [
                worker.to_redis_args(),
                max.to_redis_args(),
                visibility_ms.to_redis_args(),
            ],
        );
        let queue = self.clone();
        Box::pin(async move {
            let mut jobs = Vec::new();
            for (id, item) in pulled.await? {
                match serde_json::from_slice::<SpawnJob>(&item) {
                    Ok(job) => jobs.push(job),
                    Err(err) => {
                        // written by something else: no worker can run it,
                        // and re-delivering it would only go round forever
                        tracing::error!(job_id = id, %err, "an unreadable item in the fleet's queue: dropped");
                        queue.acknowledge(&id).await?;
                    }
                }
            }
            Ok(jobs)
        })
    }

    fn release(&self, job_id: &str, worker: &str) -> StoreFuture<bool> {
        let released =
            self.invoke::<i64, 2>(&RELEASE, [job_id.to_redis_args(), worker.to_redis_args()]);
        Box::pin(async move { Ok(released.await? == 1) })
    }

    fn acknowledge(&self, job_id: &str) -> StoreFuture<bool> {
        let dropped = self.invoke::<i64, 1>(&ACKNOWLEDGE, [job_id.to_redis_args()]);
        Box::pin(async move { Ok(dropped.await? == 1) })
    }

    fn redeliver(&self) -> StoreFuture<usize> {
        let prefix = self.store.keys().heartbeat_prefix.clone();
        self.invoke(
            &REDELIVER,
            [prefix.to_redis_args(), REDELIVER_BATCH.to_redis_args()],
        )
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
        assert!(!queue.release("FJ_4", "w2").await.unwrap(), "not w2's");
        assert!(queue.release("FJ_4", "w1").await.unwrap());
        assert!(
            !queue.release("FJ_4", "w1").await.unwrap(),
            "no longer taken"
        );
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

    #[actix_rt::test]
    async fn an_item_is_acknowledged_by_its_takers_record_removal_even_without_a_record() {
        let redis = TestRedis::start();
        let (store, queue) = fleet(&redis, "norecord").await;
        for id in ["FJ_1", "FJ_2"] {
            queue.enqueue(job(id, None)).await.unwrap();
        }
        queue.pull("w1", 2, MINUTE).await.unwrap();
        // the job's writes all failed (an outage): no record, yet its end
        // drops the item it took
        assert!(!store.remove("FJ_1", &Claim::new("w1", 0)).await.unwrap());
        // another's removal leaves w1's item alone
        assert!(!store.remove("FJ_2", &Claim::new("w2", 0)).await.unwrap());
        assert_eq!(
            queue.depth().await.unwrap(),
            QueueDepth {
                waiting: 0,
                taken: 1
            }
        );
    }

    #[actix_rt::test]
    async fn an_unreadable_item_is_dropped_rather_than_passed_round() {
        let redis = TestRedis::start();
        let (_, queue) = fleet(&redis, "garbage").await;
        let mut connection = redis::Client::open(redis.url.as_str())
            .and_then(|c| c.get_connection())
            .unwrap();
        redis::pipe()
            .zadd("{garbage}:queue", "FJ_bad", 0)
            .hset("{garbage}:queue:items", "FJ_bad", "not a job")
            .query::<()>(&mut connection)
            .unwrap();
        queue.enqueue(job("FJ_good", None)).await.unwrap();
        let pulled = queue.pull("w1", 10, MINUTE).await.unwrap();
        assert_eq!(ids(&pulled), ["FJ_good"]);
        assert_eq!(
            queue.depth().await.unwrap(),
            QueueDepth {
                waiting: 0,
                taken: 1
            },
            "the unreadable one is gone"
        );
    }
}
