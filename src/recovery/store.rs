//! [`CheckpointStore`]: where checkpoints live between runs, and who owns
//! which job.
//!
//! The trait is object-safe (`Arc<dyn CheckpointStore>`) and every method
//! returns a boxed `'static` future, so an actor can hand it to
//! `ctx.spawn` without borrowing from itself. Arguments are copied (a
//! checkpoint is encoded) when the method is called, not when the future is
//! first polled: the record written is the one passed in.
//!
//! Ownership is one design for every store, sized for thousands of jobs per
//! worker:
//! - **Liveness** is one heartbeat per worker identity, with a TTL, renewed
//!   by the worker ([`heartbeat`]) — not a lease per job, so what it costs
//!   grows with workers, not jobs. A worker that stops in order retires its
//!   heartbeat ([`retire`]).
//! - **Ownership** is in each record: its [`Claim`] names the holder and a
//!   fencing token. A record whose holder has no live heartbeat is
//!   orphaned ([`list_orphaned`]); [`claim`] moves it to a new holder
//!   atomically, raising the fence, so that exactly one claimer wins.
//! - **Fencing**: [`put`] and [`remove`] succeed only for the claim the
//!   record holds; a holder that lost the job is refused with
//!   [`StoreError::Fenced`] and must stop its copy without touching the
//!   record.
//!
//! Whose clock counts: the store's. Heartbeat expiry is decided where the
//! heartbeats are kept (a shared store's server; the process's clock for
//! the local stores, replaceable in tests with `with_clock`), never by
//! comparing two workers' clocks.
//!
//! [`heartbeat`]: CheckpointStore::heartbeat
//! [`retire`]: CheckpointStore::retire
//! [`list_orphaned`]: CheckpointStore::list_orphaned
//! [`claim`]: CheckpointStore::claim
//! [`put`]: CheckpointStore::put
//! [`remove`]: CheckpointStore::remove

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::checkpoint::{CheckpointError, Claim, JobCheckpoint, unix_millis};

/// What every [`CheckpointStore`] method returns: a boxed future that owns
/// its arguments.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be opened at the given path (a missing parent, no
    /// permission, or another process already has it open: one worker per
    /// state directory).
    #[error("could not open the checkpoint store at {path}: {source}")]
    Open {
        /// The database file.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backing database failed to read or write (a full disk, an I/O
    /// error); the operation did not take effect.
    #[error("checkpoint store failure: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored record could not be read back (written by a newer version,
    /// or damaged).
    #[error("the checkpoint of job {job_id} cannot be read: {source}")]
    Corrupt {
        /// The job whose record is unreadable.
        job_id: String,
        /// Why it is unreadable.
        #[source]
        source: CheckpointError,
    },
    /// The store no longer accepts operations (its thread stopped).
    #[error("the checkpoint store is closed")]
    Closed,
    /// The write or delete came from a claim the job's record no longer
    /// holds: another worker has claimed the job. The caller lost it and
    /// must stop its copy without reporting a status.
    #[error("job {job_id} is held by {holder:?} (fence {fence}): the write was refused")]
    Fenced {
        /// The job.
        job_id: String,
        /// Its holder now.
        holder: String,
        /// The holder's fence.
        fence: u64,
    },
}

impl StoreError {
    /// Wraps a backend error.
    pub(crate) fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(err))
    }
}

/// Where checkpoints are kept, and which worker holds each job (see the
/// module docs for the ownership design every store follows).
///
/// Implementations: [`MemoryStore`] (the default; survives a handler panic
/// and a reconnect, not a restart) and
/// [`EmbeddedStore`](super::EmbeddedStore) (on local disk; survives a
/// restart and `kill -9`).
pub trait CheckpointStore: Send + Sync + 'static {
    /// Writes `checkpoint`, replacing the job's previous one, if the record
    /// is absent or holds the checkpoint's own [`claim`](JobCheckpoint::claim);
    /// else [`StoreError::Fenced`]. Once the future resolves `Ok`, the record
    /// is as durable as the store makes it.
    fn put(&self, checkpoint: &JobCheckpoint) -> StoreFuture<()>;

    /// Writes many checkpoints, each as [`put`](Self::put) would, in as few
    /// round trips as the store can (the worker's write-behind hands it
    /// every dirty checkpoint of an interval at once). The answer holds one
    /// result per checkpoint, in order; an `Err` for the whole batch means
    /// none is known to have landed. The default writes them one by one.
    fn put_many(
        &self,
        checkpoints: Vec<JobCheckpoint>,
    ) -> StoreFuture<Vec<Result<(), StoreError>>> {
        let puts: Vec<_> = checkpoints.iter().map(|cp| self.put(cp)).collect();
        Box::pin(async move {
            let mut results = Vec::with_capacity(puts.len());
            for put in puts {
                results.push(put.await);
            }
            Ok(results)
        })
    }

    /// The job's checkpoint, if it has one.
    fn get(&self, job_id: &str) -> StoreFuture<Option<JobCheckpoint>>;

    /// Deletes the job's checkpoint (the job is over) if the record holds
    /// `claim`; true if there was one, [`StoreError::Fenced`] if another
    /// claim holds it.
    fn remove(&self, job_id: &str, claim: &Claim) -> StoreFuture<bool>;

    /// Every checkpoint, ordered by job id. A record that cannot be read is
    /// logged and left out (and left in the store), so that one damaged
    /// record does not block every other recovery.
    fn list(&self) -> StoreFuture<Vec<JobCheckpoint>>;

    /// Says worker `worker` is alive for `ttl` from now (by the store's
    /// clock). A worker renews well within the TTL; one call covers all of
    /// its jobs.
    fn heartbeat(&self, worker: &str, ttl: Duration) -> StoreFuture<()>;

    /// Withdraws `worker`'s heartbeat (it stopped in order): whatever it
    /// still holds is orphaned at once.
    fn retire(&self, worker: &str) -> StoreFuture<()>;

    /// The checkpoints whose holder has no live heartbeat (it died, retired,
    /// or the record is held by no one), ordered by job id: jobs another
    /// worker may take over with [`claim`](Self::claim).
    fn list_orphaned(&self) -> StoreFuture<Vec<JobCheckpoint>>;

    /// Moves the job to `worker`, atomically: granted if the record is
    /// orphaned or already `worker`'s (a restart under the same identity).
    /// The granted record is held by `worker` at the next fence, and is
    /// returned; `None` if there is no record or another live worker holds
    /// it. Of many workers claiming one orphan at once, exactly one wins.
    fn claim(&self, job_id: &str, worker: &str) -> StoreFuture<Option<JobCheckpoint>>;

    /// True when what the store holds outlives the process (on disk, or in
    /// a server): a checkpoint left there is found by the next start. A
    /// drain that cuts jobs keeps their checkpoints only in such a store.
    fn is_durable(&self) -> bool {
        false
    }
}

/// A shared store is a store: hand the worker an `Arc` and keep a clone to
/// look inside (tests, admin endpoints).
impl<S: CheckpointStore> CheckpointStore for std::sync::Arc<S> {
    fn put(&self, checkpoint: &JobCheckpoint) -> StoreFuture<()> {
        (**self).put(checkpoint)
    }
    fn put_many(
        &self,
        checkpoints: Vec<JobCheckpoint>,
    ) -> StoreFuture<Vec<Result<(), StoreError>>> {
        (**self).put_many(checkpoints)
    }
    fn get(&self, job_id: &str) -> StoreFuture<Option<JobCheckpoint>> {
        (**self).get(job_id)
    }
    fn remove(&self, job_id: &str, claim: &Claim) -> StoreFuture<bool> {
        (**self).remove(job_id, claim)
    }
    fn list(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        (**self).list()
    }
    fn heartbeat(&self, worker: &str, ttl: Duration) -> StoreFuture<()> {
        (**self).heartbeat(worker, ttl)
    }
    fn retire(&self, worker: &str) -> StoreFuture<()> {
        (**self).retire(worker)
    }
    fn list_orphaned(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        (**self).list_orphaned()
    }
    fn claim(&self, job_id: &str, worker: &str) -> StoreFuture<Option<JobCheckpoint>> {
        (**self).claim(job_id, worker)
    }
    fn is_durable(&self) -> bool {
        (**self).is_durable()
    }
}

/// The clock a local store reads heartbeat expiry by.
pub type Clock = std::sync::Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The process's wall clock.
pub(crate) fn system_clock() -> Clock {
    std::sync::Arc::new(SystemTime::now)
}

// The ownership rules, shared by the local stores so they cannot drift
// apart (a server-side store states the same rules in its own language and
// passes the same contract tests).

/// The one answer of a batch of one: what a store whose `put` is its
/// `put_many` answers.
pub(crate) fn single(batch: StoreFuture<Vec<Result<(), StoreError>>>) -> StoreFuture<()> {
    Box::pin(async move {
        batch.await?.pop().unwrap_or_else(|| {
            Err(StoreError::backend(std::io::Error::other(
                "no answer for the record",
            )))
        })
    })
}

/// The same failure for each of `count` records of a batch: the batch's
/// error stands for every record in it.
pub(crate) fn each_failed(count: usize, error: &str) -> Vec<Result<(), StoreError>> {
    (0..count)
        .map(|_| Err(StoreError::backend(std::io::Error::other(error.to_owned()))))
        .collect()
}

/// Whether a write or delete by `writer` may touch a record held by
/// `stored`: only the very claim the record holds may.
pub(crate) fn admits(stored: &Claim, writer: &Claim) -> bool {
    stored == writer
}

/// Unix milliseconds at which a heartbeat for `ttl` from `now` lapses.
pub(crate) fn expiry(now: SystemTime, ttl: Duration) -> u64 {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    unix_millis(now).saturating_add(ttl_ms)
}

/// Whether a heartbeat that lapses at `expires_at_ms` is live at `now`.
pub(crate) fn is_live(expires_at_ms: Option<u64>, now: SystemTime) -> bool {
    expires_at_ms.is_some_and(|at| unix_millis(now) < at)
}

/// The record `worker`'s claim makes of `record`, if granted: orphaned
/// (`holder_live` false) or already `worker`'s.
pub(crate) fn claimed(
    mut record: JobCheckpoint,
    worker: &str,
    holder_live: bool,
) -> Option<JobCheckpoint> {
    let holder = &record.claim().owner;
    if holder_live && holder != worker {
        return None;
    }
    let fence = record.claim().fence.saturating_add(1);
    record.set_claim(Claim::new(worker, fence));
    Some(record)
}

/// The refusal of a fenced write.
pub(crate) fn fenced(job_id: &str, stored: &Claim) -> StoreError {
    StoreError::Fenced {
        job_id: job_id.to_owned(),
        holder: stored.owner.clone(),
        fence: stored.fence,
    }
}

/// Checkpoints in memory: the default store. It keeps a job's checkpoint
/// through a handler panic and a reconnect, and loses everything when the
/// process ends. Operations complete at once.
pub struct MemoryStore {
    inner: Mutex<Memory>,
    clock: Clock,
}

#[derive(Debug, Default)]
struct Memory {
    checkpoints: BTreeMap<String, JobCheckpoint>,
    /// Worker identity → when its heartbeat lapses (unix milliseconds).
    heartbeats: BTreeMap<String, u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            clock: system_clock(),
        }
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// This store, reading heartbeat expiry by `clock` (for tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn with<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Memory, SystemTime) -> Result<T, StoreError>,
    ) -> StoreFuture<T> {
        // A panic while holding the lock cannot leave the maps half-changed:
        // each operation is a single insert or remove.
        let now = (self.clock)();
        let mut memory = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let out = op(&mut memory, now);
        Box::pin(std::future::ready(out))
    }
}

impl Memory {
    fn holder_live(&self, record: &JobCheckpoint, now: SystemTime) -> bool {
        is_live(self.heartbeats.get(&record.claim().owner).copied(), now)
    }
}

impl CheckpointStore for MemoryStore {
    fn put(&self, checkpoint: &JobCheckpoint) -> StoreFuture<()> {
        let checkpoint = checkpoint.clone();
        self.with(move |m, _| {
            if let Some(stored) = m.checkpoints.get(checkpoint.job_id())
                && !admits(stored.claim(), checkpoint.claim())
            {
                return Err(fenced(checkpoint.job_id(), stored.claim()));
            }
            m.checkpoints
                .insert(checkpoint.job_id().to_owned(), checkpoint);
            Ok(())
        })
    }

    fn get(&self, job_id: &str) -> StoreFuture<Option<JobCheckpoint>> {
        self.with(|m, _| Ok(m.checkpoints.get(job_id).cloned()))
    }

    fn remove(&self, job_id: &str, claim: &Claim) -> StoreFuture<bool> {
        self.with(|m, _| match m.checkpoints.get(job_id) {
            None => Ok(false),
            Some(stored) if !admits(stored.claim(), claim) => Err(fenced(job_id, stored.claim())),
            Some(_) => Ok(m.checkpoints.remove(job_id).is_some()),
        })
    }

    fn list(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        self.with(|m, _| Ok(m.checkpoints.values().cloned().collect()))
    }

    fn heartbeat(&self, worker: &str, ttl: Duration) -> StoreFuture<()> {
        self.with(|m, now| {
            m.heartbeats.insert(worker.to_owned(), expiry(now, ttl));
            Ok(())
        })
    }

    fn retire(&self, worker: &str) -> StoreFuture<()> {
        self.with(|m, _| {
            m.heartbeats.remove(worker);
            Ok(())
        })
    }

    fn list_orphaned(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        self.with(|m, now| {
            Ok(m.checkpoints
                .values()
                .filter(|cp| !m.holder_live(cp, now))
                .cloned()
                .collect())
        })
    }

    fn claim(&self, job_id: &str, worker: &str) -> StoreFuture<Option<JobCheckpoint>> {
        self.with(|m, now| {
            let Some(record) = m.checkpoints.get(job_id) else {
                return Ok(None);
            };
            let live = m.holder_live(record, now);
            let granted = claimed(record.clone(), worker, live);
            if let Some(record) = &granted {
                m.checkpoints.insert(job_id.to_owned(), record.clone());
            }
            Ok(granted)
        })
    }
}

/// Behaviour every store must show; run against each implementation.
#[cfg(test)]
pub(crate) mod contract {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::recovery::checkpoint::tests::{at, job};

    const TTL: Duration = Duration::from_secs(10);

    fn checkpoint(id: &str, turns: u32) -> JobCheckpoint {
        let mut cp =
            JobCheckpoint::new(&job(id), format!("agent-{id}"), at(1_000)).with_owner("w1");
        cp.save("turns", &turns).unwrap();
        cp
    }

    /// A clock the test moves by hand: unix milliseconds.
    pub(crate) fn manual_clock() -> (Clock, Arc<AtomicU64>) {
        let ms = Arc::new(AtomicU64::new(0));
        let read = ms.clone();
        (Arc::new(move || at(read.load(Ordering::SeqCst))), ms)
    }

    /// put / get / list / remove by the holder.
    pub(crate) async fn records(store: Arc<dyn CheckpointStore>) {
        assert_eq!(store.get("AJ_1").await.unwrap(), None);
        store.put(&checkpoint("AJ_2", 1)).await.unwrap();
        store.put(&checkpoint("AJ_1", 1)).await.unwrap();
        store.put(&checkpoint("AJ_1", 2)).await.unwrap();
        let got = store.get("AJ_1").await.unwrap().expect("stored");
        assert_eq!(got, checkpoint("AJ_1", 2));
        let ids: Vec<String> = store
            .list()
            .await
            .unwrap()
            .iter()
            .map(|cp| cp.job_id().to_owned())
            .collect();
        assert_eq!(ids, ["AJ_1", "AJ_2"]);
        let w1 = Claim::new("w1", 0);
        assert!(store.remove("AJ_1", &w1).await.unwrap());
        assert!(!store.remove("AJ_1", &w1).await.unwrap());
        assert_eq!(store.get("AJ_1").await.unwrap(), None);
        assert_eq!(store.list().await.unwrap().len(), 1);
        assert!(store.remove("AJ_2", &w1).await.unwrap());
    }

    /// `put_many`: one result per record, in order; a fenced record is
    /// refused alone, the others land.
    pub(crate) async fn batches(store: Arc<dyn CheckpointStore>) {
        store.heartbeat("w2", TTL).await.unwrap();
        store.put(&checkpoint("AJ_b1", 0)).await.unwrap();
        store
            .claim("AJ_b1", "w2")
            .await
            .unwrap()
            .expect("w1 never beat");
        let batch: Vec<JobCheckpoint> = (0..600)
            .map(|n| checkpoint(&format!("AJ_b{n}"), n))
            .collect();
        let results = store.put_many(batch).await.unwrap();
        assert_eq!(results.len(), 600);
        for (n, result) in results.iter().enumerate() {
            if n == 1 {
                assert!(
                    matches!(result, Err(StoreError::Fenced { holder, fence: 1, .. }) if holder == "w2"),
                    "{result:?}"
                );
            } else {
                assert!(result.is_ok(), "record {n}: {result:?}");
            }
        }
        let stored = store.get("AJ_b599").await.unwrap().expect("landed");
        assert_eq!(stored.load::<u32>("turns").unwrap(), Some(599));
        let held = store.get("AJ_b1").await.unwrap().unwrap();
        assert_eq!(held.load::<u32>("turns").unwrap(), Some(0), "untouched");
        assert!(store.put_many(Vec::new()).await.unwrap().is_empty());
        assert_eq!(store.list().await.unwrap().len(), 600);
    }

    /// Heartbeats, orphans, claims and fences, on the store's clock at
    /// `ms` (unix milliseconds, moved by the test).
    pub(crate) async fn ownership(store: Arc<dyn CheckpointStore>, ms: Arc<AtomicU64>) {
        let set = |t: u64| ms.store(t, Ordering::SeqCst);
        set(0);
        store.put(&checkpoint("AJ_1", 1)).await.unwrap();
        let mut unheld = checkpoint("AJ_2", 1);
        unheld.set_claim(Claim::default());
        store.put(&unheld).await.unwrap();
        // w1 has never beaten: both are orphans
        assert_eq!(store.list_orphaned().await.unwrap().len(), 2);

        store.heartbeat("w1", TTL).await.unwrap();
        let orphaned = store.list_orphaned().await.unwrap();
        assert_eq!(orphaned.len(), 1, "held by no one");
        assert_eq!(orphaned[0].job_id(), "AJ_2");
        assert_eq!(
            store.claim("AJ_1", "w2").await.unwrap(),
            None,
            "w1 is alive"
        );
        assert_eq!(store.claim("AJ_9", "w2").await.unwrap(), None, "no record");

        // renewed in time: still alive at 14 s; lapses at 19 s
        set(9_000);
        store.heartbeat("w1", TTL).await.unwrap();
        set(14_000);
        assert_eq!(store.claim("AJ_1", "w2").await.unwrap(), None);
        set(19_000);
        assert_eq!(store.list_orphaned().await.unwrap().len(), 2);

        // w2 claims: the fence rises, and w1's writes are refused from now on
        let taken = store.claim("AJ_1", "w2").await.unwrap().expect("orphaned");
        assert_eq!(taken.claim(), &Claim::new("w2", 1));
        assert_eq!(taken.load::<u32>("turns").unwrap(), Some(1), "state kept");
        assert_eq!(
            store.get("AJ_1").await.unwrap().unwrap().claim(),
            taken.claim()
        );
        let stale = checkpoint("AJ_1", 5);
        assert!(matches!(
            store.put(&stale).await,
            Err(StoreError::Fenced { ref holder, fence: 1, .. }) if holder == "w2"
        ));
        assert!(matches!(
            store.remove("AJ_1", &Claim::new("w1", 0)).await,
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(
            store.get("AJ_1").await.unwrap().unwrap(),
            taken,
            "untouched"
        );

        // the new holder writes; a worker claiming its own job again (a
        // restart under the same identity) is granted while alive
        store.heartbeat("w2", TTL).await.unwrap();
        let mut progress = taken.clone();
        progress.save("turns", &6u32).unwrap();
        store.put(&progress).await.unwrap();
        assert_eq!(
            store.claim("AJ_1", "w3").await.unwrap(),
            None,
            "w2 is alive"
        );
        let again = store.claim("AJ_1", "w2").await.unwrap().expect("its own");
        assert_eq!(again.claim(), &Claim::new("w2", 2));
        assert!(matches!(
            store.put(&progress).await,
            Err(StoreError::Fenced { .. })
        ));

        // retiring orphans at once
        store.retire("w2").await.unwrap();
        let orphaned: Vec<String> = store
            .list_orphaned()
            .await
            .unwrap()
            .iter()
            .map(|cp| cp.job_id().to_owned())
            .collect();
        assert_eq!(orphaned, ["AJ_1", "AJ_2"]);
        assert!(store.remove("AJ_1", again.claim()).await.unwrap());
    }

    /// Many live claimers of one orphan at once: exactly one wins.
    pub(crate) async fn one_claimer_wins(store: Arc<dyn CheckpointStore>) {
        for w in 0..8 {
            store.heartbeat(&format!("racer{w}"), TTL).await.unwrap();
        }
        for round in 0..20 {
            let id = format!("AJ_race{round}");
            store.put(&checkpoint(&id, 1)).await.unwrap();
            let claims: Vec<_> = (0..8)
                .map(|w| store.claim(&id, &format!("racer{w}")))
                .collect();
            let won: Vec<JobCheckpoint> = futures_util::future::join_all(claims)
                .await
                .into_iter()
                .filter_map(|r| r.unwrap())
                .collect();
            assert_eq!(won.len(), 1, "round {round}: {won:?}");
            assert_eq!(won[0].claim().fence, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[actix_rt::test]
    async fn memory_store_keeps_records() {
        contract::records(Arc::new(MemoryStore::new())).await;
        contract::batches(Arc::new(MemoryStore::new())).await;
    }

    #[actix_rt::test]
    async fn memory_store_follows_the_ownership_rules() {
        let (clock, ms) = contract::manual_clock();
        contract::ownership(Arc::new(MemoryStore::new().with_clock(clock)), ms).await;
    }

    #[actix_rt::test]
    async fn memory_store_lets_one_claimer_win() {
        contract::one_claimer_wins(Arc::new(MemoryStore::new())).await;
    }

    #[test]
    fn a_heartbeat_lapses_exactly_at_its_expiry() {
        use crate::recovery::checkpoint::tests::at;
        let until = expiry(at(0), Duration::from_secs(1));
        assert!(is_live(Some(until), at(999)));
        assert!(!is_live(Some(until), at(1_000)));
        assert!(!is_live(None, at(0)));
    }
}
