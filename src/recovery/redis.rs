//! [`RedisCheckpointStore`]: checkpoints and ownership a fleet shares, on
//! Redis (feature `redis`).
//!
//! The layout, under a key prefix per fleet (`lkagent` by default), every
//! key with the same hash tag `{prefix}` so that each script touches one
//! hash slot (Redis Cluster places a fleet on one node; fleets spread over
//! the cluster by prefix):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{prefix}:checkpoints` | hash | job id → the record ([`JobCheckpoint::encode`]) |
//! | `{prefix}:claims` | hash | job id → `fence|owner`, the authority on who holds the job |
//! | `{prefix}:heartbeat:<worker>` | string, with a TTL | present while the worker is alive |
//! | `{prefix}:queue` | sorted set | the fleet queue's waiting job ids, by priority then enqueue time |
//! | `{prefix}:queue:items` | hash | job id → the queued job, from enqueue to its end |
//! | `{prefix}:queue:processing` | sorted set | taken job ids, by the end of their visibility timeout |
//! | `{prefix}:queue:taken` | hash | taken job id → `score|worker` |
//! | `{prefix}:loads` | hash | worker → `expiry-ms|load` (the fleet's view, `fleet::RedisFleetView`); lapsed entries are dropped as they are read |
//!
//! Whose clock counts: Redis's. A heartbeat is `SET … PX ttl`, and it is
//! live exactly while Redis still has the key; no worker's clock is read.
//!
//! Writes, deletes and claims are Lua scripts, so each is atomic: a write or
//! delete checks the claim it carries against `claims`; a claim reads the
//! holder's heartbeat and raises the fence in one step, so of many claimers
//! exactly one wins.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands as _, Script};

use super::checkpoint::{Claim, JobCheckpoint};
use super::store::{CheckpointStore, StoreError, StoreFuture};

/// The key prefix when none is given.
pub const DEFAULT_PREFIX: &str = "lkagent";

/// `put_many` (and `put`, a batch of one): KEYS claims, checkpoints; ARGV
/// job id, `fence|owner`, record, for each job in turn. Returns, per job,
/// `1`, or the claim that holds it when that is another.
static PUT_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i = 1, #ARGV, 3 do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held and held ~= ARGV[i + 1] then
    out[#out + 1] = held
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    out[#out + 1] = 1
  end
end
return out
",
    )
});

/// The most records one `put_many` script call writes: a batch larger than
/// this is split into several calls, sent together on the connection (one
/// round trip's wait), so that no single script holds Redis for long.
pub const RECORDS_PER_SCRIPT: usize = 256;

/// `remove`: KEYS claims, checkpoints, then the queue's items, processing
/// and taken; ARGV job id, `fence|owner`. Returns `{1}` removed, `{2}`
/// absent, `{0, held}` fenced. The job is over: if it came from the fleet's
/// queue, its item goes too (the acknowledgement), in the same step.
///
/// With no record (its writes failed, say in an outage), the item still
/// goes if the same owner took it.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then
  local taken = redis.call('HGET', KEYS[5], ARGV[1])
  local owner = string.sub(ARGV[2], string.find(ARGV[2], '|', 1, true) + 1)
  if taken and string.sub(taken, string.find(taken, '|', 1, true) + 1) == owner then
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('ZREM', KEYS[4], ARGV[1])
    redis.call('HDEL', KEYS[5], ARGV[1])
  end
  return {2}
end
if held ~= ARGV[2] then return {0, held} end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return {1}
",
    )
});

/// `claim`: KEYS claims, checkpoints; ARGV job id, claimer, heartbeat key
/// prefix. Returns `{new fence, record}` when granted, `{}` otherwise.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return {} end
local bar = string.find(held, '|', 1, true)
local fence = tonumber(string.sub(held, 1, bar - 1))
local owner = string.sub(held, bar + 1)
if owner ~= ARGV[2] and owner ~= '' and redis.call('EXISTS', ARGV[3] .. owner) == 1 then
  return {}
end
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then return {} end
fence = fence + 1
redis.call('HSET', KEYS[1], ARGV[1], tostring(fence) .. '|' .. ARGV[2])
return {fence, record}
",
    )
});

/// Checkpoints and ownership on Redis, shared by every worker of a fleet
/// that uses the same prefix (see the module docs for the layout).
///
/// Cheap to clone: clones share one multiplexed connection, which
/// reconnects by itself after Redis restarts or the network drops (an
/// operation during the outage fails with [`StoreError::Backend`]; the
/// worker retries its writes and heartbeats at their next interval).
#[derive(Clone)]
pub struct RedisCheckpointStore {
    keys: Keys,
    ops: tokio::sync::mpsc::Sender<Op>,
}

/// The most operations queued for the store's thread; past it an operation
/// fails at once (and is retried by its caller at its next interval).
pub const MAX_QUEUED_OPERATIONS: usize = 100_000;

/// One operation for the store's thread.
type Op =
    Box<dyn FnOnce(Conn) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// The connection and the scripts, living on the store's thread.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) connection: ConnectionManager,
    pub(crate) keys: Keys,
}

/// The fleet's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    pub claims: String,
    pub checkpoints: String,
    pub heartbeat_prefix: String,
    /// The fleet's queue (`fleet::RedisJobQueue`): waiting job ids by
    /// priority, then enqueue time.
    pub queue: String,
    /// Job id → the queued `SpawnJob` (JSON), from enqueue to its end.
    pub queue_items: String,
    /// Taken job ids by the end of their visibility timeout.
    pub queue_processing: String,
    /// Taken job id → `score|worker` (its place in the queue if it goes
    /// back, and who took it).
    pub queue_taken: String,
    /// Worker → `expiry-ms|FleetLoad JSON` (`fleet::RedisFleetView`).
    pub loads: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        let tag = format!("{{{prefix}}}");
        Self {
            claims: format!("{tag}:claims"),
            checkpoints: format!("{tag}:checkpoints"),
            heartbeat_prefix: format!("{tag}:heartbeat:"),
            queue: format!("{tag}:queue"),
            queue_items: format!("{tag}:queue:items"),
            queue_processing: format!("{tag}:queue:processing"),
            queue_taken: format!("{tag}:queue:taken"),
            loads: format!("{tag}:loads"),
        }
    }

    pub(crate) fn heartbeat(&self, worker: &str) -> String {
        format!("{}{worker}", self.heartbeat_prefix)
    }

    /// The keys every queue script takes, in order (`fleet/redis.rs`).
    pub(crate) fn queue_keys(&self) -> [&str; 5] {
        [
            &self.queue,
            &self.queue_items,
            &self.queue_processing,
            &self.queue_taken,
            &self.claims,
        ]
    }
}

impl std::fmt::Debug for RedisCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the URL may carry a password: not shown
        f.debug_struct("RedisCheckpointStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl RedisCheckpointStore {
    /// Connects to Redis at `url` (`redis://host:port/db`, or `rediss://`
    /// for TLS when the redis crate is built with it) and keeps the fleet's
    /// keys under `prefix` ([`DEFAULT_PREFIX`] if empty).
    ///
    /// The connection lives on a thread of the store's own, with its own
    /// runtime, which every operation is handed to: whichever thread (and
    /// actix arbiter) calls the store, the connection is driven by one that
    /// is never blocked by a caller. The thread ends when the last clone of
    /// the store is dropped.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        let (ops, mut queue) = tokio::sync::mpsc::channel::<Op>(MAX_QUEUED_OPERATIONS);
        let (ready, opened) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("lkagent-redis".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready.send(Err(StoreError::backend(err)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let conn = match Conn::open(&url, &prefix).await {
                        Ok(conn) => conn,
                        Err(err) => {
                            let _ = ready.send(Err(err));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(conn.keys.clone()));
                    let mut running = tokio::task::JoinSet::new();
                    loop {
                        tokio::select! {
                            op = queue.recv() => match op {
                                Some(op) => {
                                    running.spawn(op(conn.clone()));
                                }
                                None => break,
                            },
                            Some(_) = running.join_next(), if !running.is_empty() => {}
                        }
                    }
                    // the last clone is gone: what it asked for still
                    // completes (a stopping worker's retire), within the
                    // operations' own deadline
                    let drain = async { while running.join_next().await.is_some() {} };
                    let _ = tokio::time::timeout(OPERATION_DEADLINE, drain).await;
                });
            })
            .map_err(StoreError::backend)?;
        drop(spawned); // detached: it ends with the channel
        let keys = opened.await.map_err(|_| StoreError::Closed)??;
        Ok(Self { keys, ops })
    }

    /// The fleet's keys.
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Hands `op` to the store's thread; its answer comes back bounded by
    /// [`OPERATION_DEADLINE`].
    pub(crate) fn run<T, F, Fut>(&self, op: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Op = Box::new(move |conn| {
            Box::pin(async move {
                let _ = reply.send(op(conn).await);
            })
        });
        let queued = self.ops.try_send(job);
        bounded(async move {
            queued.map_err(|err| match err {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    StoreError::backend(std::io::Error::other("too many Redis operations queued"))
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }
}

impl Conn {
    async fn open(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let prefix = if prefix.is_empty() {
            DEFAULT_PREFIX
        } else {
            prefix
        };
        if prefix.contains(['{', '}']) {
            return Err(StoreError::backend(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the Redis key prefix must not contain braces (it becomes the hash tag)",
            )));
        }
        let client = redis::Client::open(url).map_err(StoreError::backend)?;
        // no per-request response timeout in the client: under load a burst
        // of writes outlasting it failed again and again (a thousand jobs'
        // first checkpoints on a busy 2-core machine); the whole operation
        // is bounded by OPERATION_DEADLINE instead
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let mut connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(StoreError::backend)?;
        // loaded once now, rather than by a burst of first calls that each
        // miss (`NOSCRIPT`) and load it again; after a Redis restart the
        // client loads them on the first miss
        let queue_scripts = crate::fleet::redis_scripts();
        for script in [&*PUT_MANY, &*REMOVE, &*CLAIM]
            .into_iter()
            .chain(queue_scripts)
        {
            script
                .load_async(&mut connection)
                .await
                .map_err(StoreError::backend)?;
        }
        Ok(Self {
            connection,
            keys: Keys::new(prefix),
        })
    }

    /// The orphans, in three round trips whatever the fleet's size: the
    /// claims (small), one `EXISTS` per distinct holder (pipelined), and the
    /// records of the orphans only — a worker's periodic scan does not read
    /// every job's checkpoint.
    async fn orphans(mut self) -> Result<Vec<JobCheckpoint>, StoreError> {
        let claims: Vec<(String, String)> = self
            .connection
            .hgetall(&self.keys.claims)
            .await
            .map_err(StoreError::backend)?;
        let claims: Vec<(String, Claim)> = claims
            .into_iter()
            .filter_map(|(job, held)| parse_claim(&held).map(|c| (job, c)))
            .collect();
        let mut owners: Vec<&str> = claims
            .iter()
            .map(|(_, c)| c.owner.as_str())
            .filter(|o| !o.is_empty())
            .collect();
        owners.sort_unstable();
        owners.dedup();
        let mut live = std::collections::HashSet::new();
        if !owners.is_empty() {
            let mut pipe = redis::pipe();
            for owner in &owners {
                pipe.exists(self.keys.heartbeat(owner));
            }
            let alive: Vec<bool> = pipe
                .query_async(&mut self.connection)
                .await
                .map_err(StoreError::backend)?;
            live.extend(
                owners
                    .iter()
                    .zip(alive)
                    .filter(|(_, alive)| *alive)
                    .map(|(o, _)| o.to_string()),
            );
        }
        let orphans: Vec<(String, Claim)> = claims
            .into_iter()
            .filter(|(_, c)| !live.contains(&c.owner))
            .collect();
        if orphans.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = orphans.iter().map(|(id, _)| id.as_str()).collect();
        let records: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(&self.keys.checkpoints)
            .arg(&ids)
            .query_async(&mut self.connection)
            .await
            .map_err(StoreError::backend)?;
        let found = orphans
            .into_iter()
            .zip(records)
            .filter_map(|((job_id, claim), bytes)| Some((job_id, claim, bytes?)));
        Ok(decoded(found))
    }

    /// Every record with its claim, from one pipelined round trip.
    async fn scan(mut self) -> Result<Vec<JobCheckpoint>, StoreError> {
        let (claims, records): (Vec<(String, String)>, Vec<Entry>) = redis::pipe()
            .hgetall(&self.keys.claims)
            .hgetall(&self.keys.checkpoints)
            .query_async(&mut self.connection)
            .await
            .map_err(StoreError::backend)?;
        let claims: std::collections::HashMap<String, Claim> = claims
            .into_iter()
            .filter_map(|(job, held)| parse_claim(&held).map(|c| (job, c)))
            .collect();
        let found = records.into_iter().filter_map(|(job_id, bytes)| {
            let claim = claims.get(&job_id)?.clone();
            Some((job_id, claim, bytes))
        });
        Ok(decoded(found))
    }
}

/// The longest any one store operation may take: past it the caller gets
/// an error (and retries at its next interval) instead of waiting on a
/// request that may never be answered (Redis hung, a connection being
/// re-established). The client's own response timeout covers a request it
/// sent; this covers the whole operation.
pub const OPERATION_DEADLINE: Duration = Duration::from_secs(5);

/// `operation`, failed with [`StoreError::Backend`] past
/// [`OPERATION_DEADLINE`].
fn bounded<T: Send + 'static>(
    operation: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> StoreFuture<T> {
    Box::pin(async move {
        tokio::time::timeout(OPERATION_DEADLINE, operation)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::backend(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer from Redis within {OPERATION_DEADLINE:?}"),
                )))
            })
    })
}

/// The readable records among `found` (job id, claim, bytes), each under its
/// claim, ordered by job id; an unreadable one is logged and left out.
fn decoded(found: impl Iterator<Item = (String, Claim, Vec<u8>)>) -> Vec<JobCheckpoint> {
    let mut out: Vec<JobCheckpoint> = found
        .filter_map(
            |(job_id, claim, bytes)| match JobCheckpoint::decode(&bytes) {
                Ok(mut record) => {
                    record.set_claim(claim);
                    Some(record)
                }
                Err(err) => {
                    tracing::warn!(job_id, error = %err, "skipping an unreadable checkpoint");
                    None
                }
            },
        )
        .collect();
    out.sort_by(|a, b| a.job_id().cmp(b.job_id()));
    out
}

/// A job id and its stored record.
type Entry = (String, Vec<u8>);

/// `fence|owner`, as the claims hash holds it.
fn claim_text(claim: &Claim) -> String {
    format!("{}|{}", claim.fence, claim.owner)
}

fn parse_claim(text: &str) -> Option<Claim> {
    let (fence, owner) = text.split_once('|')?;
    Some(Claim::new(owner, fence.parse().ok()?))
}

/// The refusal of a write to a job held as `held` (`fence|owner`).
fn fenced(job_id: &str, held: &redis::Value) -> StoreError {
    super::store::fenced(job_id, &parse_claim(&string_of(held)).unwrap_or_default())
}

impl CheckpointStore for RedisCheckpointStore {
    fn is_durable(&self) -> bool {
        true // in a server: another process (or this one, restarted) finds it
    }

    fn put(&self, checkpoint: &JobCheckpoint) -> StoreFuture<()> {
        super::store::single(self.put_many(vec![checkpoint.clone()]))
    }

    fn put_many(
        &self,
        checkpoints: Vec<JobCheckpoint>,
    ) -> StoreFuture<Vec<Result<(), StoreError>>> {
        // encoded on the store's thread, not the caller's
        self.run(move |this| async move {
            let calls = checkpoints.chunks(RECORDS_PER_SCRIPT).map(|chunk| {
                let mut invocation = PUT_MANY.key(&this.keys.claims);
                invocation.key(&this.keys.checkpoints);
                for checkpoint in chunk {
                    invocation
                        .arg(checkpoint.job_id())
                        .arg(claim_text(checkpoint.claim()))
                        .arg(checkpoint.encode());
                }
                let mut connection = this.connection.clone();
                async move {
                    invocation
                        .invoke_async::<Vec<redis::Value>>(&mut connection)
                        .await
                }
            });
            // the calls go out together on the multiplexed connection
            let answers = futures_util::future::join_all(calls).await;
            let mut results = Vec::with_capacity(checkpoints.len());
            for (chunk, answer) in checkpoints.chunks(RECORDS_PER_SCRIPT).zip(answers) {
                match answer {
                    Ok(answer) if answer.len() == chunk.len() => {
                        results.extend(chunk.iter().zip(answer).map(|(cp, value)| match value {
                            redis::Value::Int(1) => Ok(()),
                            held => Err(fenced(cp.job_id(), &held)),
                        }));
                    }
                    Ok(answer) => results.extend(super::store::each_failed(
                        chunk.len(),
                        &unexpected(&answer).to_string(),
                    )),
                    Err(err) => {
                        results.extend(super::store::each_failed(chunk.len(), &err.to_string()))
                    }
                }
            }
            Ok(results)
        })
    }

    fn get(&self, job_id: &str) -> StoreFuture<Option<JobCheckpoint>> {
        let job_id = job_id.to_owned();
        self.run(move |mut this| async move {
            let (held, bytes): (Option<String>, Option<Vec<u8>>) = redis::pipe()
                .hget(&this.keys.claims, &job_id)
                .hget(&this.keys.checkpoints, &job_id)
                .query_async(&mut this.connection)
                .await
                .map_err(StoreError::backend)?;
            let (Some(held), Some(bytes)) = (held, bytes) else {
                return Ok(None);
            };
            let mut record = JobCheckpoint::decode(&bytes)
                .map_err(|source| StoreError::Corrupt { job_id, source })?;
            record.set_claim(parse_claim(&held).unwrap_or_default());
            Ok(Some(record))
        })
    }

    fn remove(&self, job_id: &str, claim: &Claim) -> StoreFuture<bool> {
        let job_id = job_id.to_owned();
        let claim = claim_text(claim);
        self.run(move |mut this| async move {
            let answer: Vec<redis::Value> = REMOVE
                .key(&this.keys.claims)
                .key(&this.keys.checkpoints)
                .key(&this.keys.queue_items)
                .key(&this.keys.queue_processing)
                .key(&this.keys.queue_taken)
                .arg(&job_id)
                .arg(&claim)
                .invoke_async(&mut this.connection)
                .await
                .map_err(StoreError::backend)?;
            match answer.as_slice() {
                [redis::Value::Int(1)] => Ok(true),
                [redis::Value::Int(2)] => Ok(false),
                [_, held] => Err(fenced(&job_id, held)),
                other => Err(unexpected(other)),
            }
        })
    }

    fn list(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        self.run(|this| this.scan())
    }

    fn heartbeat(&self, worker: &str, ttl: Duration) -> StoreFuture<()> {
        let key = self.keys.heartbeat(worker);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(move |mut this| async move {
            this.connection
                .pset_ex::<_, _, ()>(key, 1, ttl_ms)
                .await
                .map_err(StoreError::backend)
        })
    }

    fn retire(&self, worker: &str) -> StoreFuture<()> {
        let key = self.keys.heartbeat(worker);
        self.run(move |mut this| async move {
            this.connection
                .del::<_, ()>(key)
                .await
                .map_err(StoreError::backend)
        })
    }

    fn list_orphaned(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        self.run(|this| this.orphans())
    }

    fn claim(&self, job_id: &str, worker: &str) -> StoreFuture<Option<JobCheckpoint>> {
        let (job_id, worker) = (job_id.to_owned(), worker.to_owned());
        self.run(move |mut this| async move {
            let answer: Vec<redis::Value> = CLAIM
                .key(&this.keys.claims)
                .key(&this.keys.checkpoints)
                .arg(&job_id)
                .arg(&worker)
                .arg(&this.keys.heartbeat_prefix)
                .invoke_async(&mut this.connection)
                .await
                .map_err(StoreError::backend)?;
            match answer.as_slice() {
                [] => Ok(None),
                [redis::Value::Int(fence), redis::Value::BulkString(bytes)] => {
                    let mut record = JobCheckpoint::decode(bytes)
                        .map_err(|source| StoreError::Corrupt { job_id, source })?;
                    record.set_claim(Claim::new(worker, u64::try_from(*fence).unwrap_or(0)));
                    Ok(Some(record))
                }
                other => Err(unexpected(other)),
            }
        })
    }
}

fn string_of(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::SimpleString(text) => text.clone(),
        other => format!("{other:?}"),
    }
}

fn unexpected(answer: &[redis::Value]) -> StoreError {
    StoreError::backend(std::io::Error::other(format!(
        "unexpected answer from a Redis script: {answer:?}"
    )))
}

/// A `redis-server` of its own for a test, on a free loopback port, without
/// persistence; killed when dropped.
#[cfg(test)]
pub(crate) struct TestRedis {
    child: std::process::Child,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
}

#[cfg(test)]
impl TestRedis {
    /// Starts it and waits (up to 10 s) until it answers.
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ping = redis::Client::open(server.url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return server;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer: {ping:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::recovery::checkpoint::tests::{at, job};
    use crate::recovery::store::contract;

    async fn store(redis: &TestRedis, prefix: &str) -> Arc<dyn CheckpointStore> {
        Arc::new(
            RedisCheckpointStore::connect(&redis.url, prefix)
                .await
                .unwrap(),
        )
    }

    #[actix_rt::test]
    async fn redis_store_keeps_records() {
        let redis = TestRedis::start();
        contract::records(store(&redis, "records").await).await;
        contract::batches(store(&redis, "batches").await).await;
    }

    #[actix_rt::test]
    async fn redis_store_lets_exactly_one_of_many_racing_claimers_win() {
        let redis = TestRedis::start();
        // separate connections, so the claims really race in Redis
        let stores: Vec<Arc<dyn CheckpointStore>> = vec![
            store(&redis, "race").await,
            store(&redis, "race").await,
            store(&redis, "race").await,
        ];
        contract::one_claimer_wins(stores[0].clone()).await;
        // every racer is a live worker: the winner's claim holds
        for n in 0..12 {
            let beat = stores[0].heartbeat(&format!("racer{n}"), Duration::from_secs(60));
            beat.await.unwrap();
        }
        for round in 0..50 {
            let id = format!("AJ_many{round}");
            let cp = JobCheckpoint::new(&job(&id), "a", at(0)).with_owner("gone");
            stores[0].put(&cp).await.unwrap();
            let claims: Vec<_> = (0..12)
                .map(|n| stores[n % 3].claim(&id, &format!("racer{n}")))
                .collect();
            let won: Vec<_> = futures_util::future::join_all(claims)
                .await
                .into_iter()
                .filter_map(|r| r.unwrap())
                .collect();
            assert_eq!(won.len(), 1, "round {round}: {won:?}");
        }
    }

    #[actix_rt::test]
    async fn a_lapsed_heartbeat_orphans_and_a_claim_fences_the_old_holder() {
        let redis = TestRedis::start();
        let store = store(&redis, "fleet").await;
        let mut cp = JobCheckpoint::new(&job("AJ_1"), "a", at(0)).with_owner("w1");
        cp.save("turns", &1u32).unwrap();
        store.put(&cp).await.unwrap();
        store
            .heartbeat("w1", Duration::from_millis(300))
            .await
            .unwrap();
        assert!(store.list_orphaned().await.unwrap().is_empty());
        assert_eq!(
            store.claim("AJ_1", "w2").await.unwrap(),
            None,
            "w1 is alive"
        );

        // Redis's clock lapses the heartbeat
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.list_orphaned().await.unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never orphaned");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        store
            .heartbeat("w2", Duration::from_secs(10))
            .await
            .unwrap();
        let taken = store.claim("AJ_1", "w2").await.unwrap().expect("orphaned");
        assert_eq!(taken.claim(), &Claim::new("w2", 1));
        assert_eq!(taken.load::<u32>("turns").unwrap(), Some(1));
        assert!(matches!(
            store.put(&cp).await,
            Err(StoreError::Fenced { ref holder, fence: 1, .. }) if holder == "w2"
        ));
        assert!(matches!(
            store.remove("AJ_1", cp.claim()).await,
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(
            store.get("AJ_1").await.unwrap().unwrap().claim(),
            taken.claim()
        );
        store.retire("w2").await.unwrap();
        assert_eq!(
            store.list_orphaned().await.unwrap().len(),
            1,
            "retired: orphaned at once"
        );
        assert!(store.remove("AJ_1", taken.claim()).await.unwrap());
    }

    #[test]
    fn every_key_of_a_fleet_shares_one_hash_tag() {
        let keys = Keys::new("fleet-a");
        let tag = |key: &str| {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            key[open + 1..close].to_owned()
        };
        for key in [
            keys.claims.clone(),
            keys.checkpoints.clone(),
            keys.heartbeat("lkw-1"),
            keys.heartbeat("a{b}"),
            keys.queue.clone(),
            keys.queue_items.clone(),
            keys.queue_processing.clone(),
            keys.queue_taken.clone(),
            keys.loads.clone(),
        ] {
            assert_eq!(tag(&key), "fleet-a", "{key}");
        }
        assert_ne!(Keys::new("fleet-b").claims, keys.claims);
    }

    #[test]
    fn claims_read_back_as_written() {
        let claim = Claim::new("lkw-x|y", 42);
        assert_eq!(parse_claim(&claim_text(&claim)), Some(claim));
        assert_eq!(parse_claim("garbage"), None);
    }
}
