//! [`CheckpointStore`]: where checkpoints live between runs, and who owns
//! which job.
//!
//! The trait is object-safe (`Arc<dyn CheckpointStore>`) and every method
//! returns a boxed `'static` future, so an actor can hand it to
//! `ctx.spawn` without borrowing from itself. Arguments are copied (a
//! checkpoint is encoded) when the method is called, not when the future is
//! first polled: the record written is the one passed in.
//!
//! Leases say which worker runs a job. A worker acquires one before it
//! starts (or resumes) a job and renews it well within its TTL; a worker that
//! dies stops renewing, its leases expire, and [`list_orphaned`] shows the
//! jobs another worker may take over by acquiring their lease. Times are
//! passed in as wall-clock `SystemTime`s, because leases are compared across
//! processes and hosts; an [`Instant`](std::time::Instant) means nothing
//! outside the process that took it.
//!
//! [`list_orphaned`]: CheckpointStore::list_orphaned

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::checkpoint::{CheckpointError, JobCheckpoint, unix_millis};

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
}

impl StoreError {
    /// Wraps a backend error.
    pub(crate) fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(err))
    }
}

/// Where checkpoints are kept, and which worker holds each job's lease.
///
/// Implementations: [`MemoryStore`] (the default; survives a handler panic
/// and a reconnect, not a restart) and
/// [`EmbeddedStore`](super::EmbeddedStore) (on local disk; survives a
/// restart and `kill -9`). A redis store will add leases that other workers
/// see.
pub trait CheckpointStore: Send + Sync + 'static {
    /// Writes `checkpoint`, replacing the job's previous one. Once the future
    /// resolves `Ok`, the record is as durable as the store makes it.
    fn put(&self, checkpoint: &JobCheckpoint) -> StoreFuture<()>;

    /// The job's checkpoint, if it has one.
    fn get(&self, job_id: &str) -> StoreFuture<Option<JobCheckpoint>>;

    /// Deletes the job's checkpoint and lease (the job is over); true if
    /// there was a checkpoint.
    fn remove(&self, job_id: &str) -> StoreFuture<bool>;

    /// Every checkpoint, ordered by job id: what a restarted worker scans.
    /// A record that cannot be read is logged and left out (and left in the
    /// store), so that one damaged record does not block every other
    /// recovery.
    fn list(&self) -> StoreFuture<Vec<JobCheckpoint>>;

    /// Takes the job's lease for `owner` until `now + ttl`. Granted (true)
    /// if no one holds it, if its holder let it expire, or if `owner` holds it
    /// already (then it is extended); false if another owner holds a live one.
    fn acquire_lease(
        &self,
        job_id: &str,
        owner: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> StoreFuture<bool>;

    /// Extends `owner`'s live lease to `now + ttl`. False if the lease has
    /// expired or belongs to someone else: the job may have been taken over,
    /// and the caller should stop it (or try `acquire_lease` again).
    fn renew_lease(
        &self,
        job_id: &str,
        owner: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> StoreFuture<bool>;

    /// Gives up `owner`'s lease on the job; true if `owner` held it (live or
    /// expired). Someone else's lease is left alone.
    fn release_lease(&self, job_id: &str, owner: &str) -> StoreFuture<bool>;

    /// The checkpoints no one holds a live lease on as of `now` (the lease
    /// expired, or there never was one): jobs whose worker is gone. A worker
    /// that writes a checkpoint takes the lease first, so that its own
    /// running jobs never show up here.
    fn list_orphaned(&self, now: SystemTime) -> StoreFuture<Vec<JobCheckpoint>>;

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
    fn get(&self, job_id: &str) -> StoreFuture<Option<JobCheckpoint>> {
        (**self).get(job_id)
    }
    fn remove(&self, job_id: &str) -> StoreFuture<bool> {
        (**self).remove(job_id)
    }
    fn list(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        (**self).list()
    }
    fn acquire_lease(
        &self,
        job_id: &str,
        owner: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> StoreFuture<bool> {
        (**self).acquire_lease(job_id, owner, ttl, now)
    }
    fn renew_lease(
        &self,
        job_id: &str,
        owner: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> StoreFuture<bool> {
        (**self).renew_lease(job_id, owner, ttl, now)
    }
    fn release_lease(&self, job_id: &str, owner: &str) -> StoreFuture<bool> {
        (**self).release_lease(job_id, owner)
    }
    fn list_orphaned(&self, now: SystemTime) -> StoreFuture<Vec<JobCheckpoint>> {
        (**self).list_orphaned(now)
    }
    fn is_durable(&self) -> bool {
        (**self).is_durable()
    }
}

/// A job's lease: who holds it, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    /// The holder (a worker id).
    pub owner: String,
    /// Unix milliseconds at which it lapses.
    pub expires_at_ms: u64,
}

impl Lease {
    fn until(owner: &str, ttl: Duration, now: SystemTime) -> Self {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Self {
            owner: owner.to_owned(),
            expires_at_ms: unix_millis(now).saturating_add(ttl_ms),
        }
    }

    /// Live leases are those that have not reached their expiry.
    pub fn is_live(&self, now: SystemTime) -> bool {
        unix_millis(now) < self.expires_at_ms
    }
}

/// The lease rules, shared by every store so they cannot drift apart: the
/// new lease if `acquire_lease` is granted.
pub(crate) fn acquire(
    current: Option<&Lease>,
    owner: &str,
    ttl: Duration,
    now: SystemTime,
) -> Option<Lease> {
    match current {
        Some(lease) if lease.owner != owner && lease.is_live(now) => None,
        _ => Some(Lease::until(owner, ttl, now)),
    }
}

/// The new lease if `renew_lease` is granted.
pub(crate) fn renew(
    current: Option<&Lease>,
    owner: &str,
    ttl: Duration,
    now: SystemTime,
) -> Option<Lease> {
    match current {
        Some(lease) if lease.owner == owner && lease.is_live(now) => {
            Some(Lease::until(owner, ttl, now))
        }
        _ => None,
    }
}

/// A lease rule: [`acquire`] or [`renew`].
pub(crate) type LeaseRule = fn(Option<&Lease>, &str, Duration, SystemTime) -> Option<Lease>;

/// True if `release_lease` should delete `current`.
pub(crate) fn releases(current: Option<&Lease>, owner: &str) -> bool {
    current.is_some_and(|lease| lease.owner == owner)
}

/// Checkpoints in memory: the default store. It keeps a job's checkpoint
/// through a handler panic and a reconnect, and loses everything when the
/// process ends. Operations complete at once.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    checkpoints: BTreeMap<String, JobCheckpoint>,
    leases: BTreeMap<String, Lease>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T: Send + 'static>(&self, op: impl FnOnce(&mut Memory) -> T) -> StoreFuture<T> {
        // A panic while holding the lock cannot leave the maps half-changed:
        // each operation is a single insert or remove.
        let mut memory = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let out = op(&mut memory);
        Box::pin(std::future::ready(Ok(out)))
    }

    /// Applies a lease rule; true when it granted a new lease.
    fn set_lease(
        &self,
        job_id: &str,
        rule: LeaseRule,
        owner: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> StoreFuture<bool> {
        self.with(|m| match rule(m.leases.get(job_id), owner, ttl, now) {
            Some(lease) => {
                m.leases.insert(job_id.to_owned(), lease);
                true
            }
            None => false,
        })
    }
}

impl CheckpointStore for MemoryStore {
    fn put(&self, checkpoint: &JobCheckpoint) -> StoreFuture<()> {
        let checkpoint = checkpoint.clone();
        self.with(move |m| {
            m.checkpoints
                .insert(checkpoint.job_id().to_owned(), checkpoint);
        })
    }

    fn get(&self, job_id: &str) -> StoreFuture<Option<JobCheckpoint>> {
        self.with(|m| m.checkpoints.get(job_id).cloned())
    }

    fn remove(&self, job_id: &str) -> StoreFuture<bool> {
        self.with(|m| {
            m.leases.remove(job_id);
            m.checkpoints.remove(job_id).is_some()
        })
    }

    fn list(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        self.with(|m| m.checkpoints.values().cloned().collect())
    }

    fn acquire_lease(
        &self,
        job_id: &str,
        owner: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> StoreFuture<bool> {
        self.set_lease(job_id, acquire, owner, ttl, now)
    }

    fn renew_lease(
        &self,
        job_id: &str,
        owner: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> StoreFuture<bool> {
        self.set_lease(job_id, renew, owner, ttl, now)
    }

    fn release_lease(&self, job_id: &str, owner: &str) -> StoreFuture<bool> {
        self.with(|m| {
            let release = releases(m.leases.get(job_id), owner);
            if release {
                m.leases.remove(job_id);
            }
            release
        })
    }

    fn list_orphaned(&self, now: SystemTime) -> StoreFuture<Vec<JobCheckpoint>> {
        self.with(|m| {
            m.checkpoints
                .values()
                .filter(|cp| !m.leases.get(cp.job_id()).is_some_and(|l| l.is_live(now)))
                .cloned()
                .collect()
        })
    }
}

/// Behaviour every store must show; run against each implementation.
#[cfg(test)]
pub(crate) mod contract {
    use std::sync::Arc;

    use super::*;
    use crate::recovery::checkpoint::tests::{at, job};

    const TTL: Duration = Duration::from_secs(10);

    fn checkpoint(id: &str, turns: u32) -> JobCheckpoint {
        let mut cp = JobCheckpoint::new(&job(id), format!("agent-{id}"), at(1_000));
        cp.save("turns", &turns).unwrap();
        cp
    }

    /// put / get / list / remove.
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
        assert!(store.remove("AJ_1").await.unwrap());
        assert!(!store.remove("AJ_1").await.unwrap());
        assert_eq!(store.get("AJ_1").await.unwrap(), None);
        assert_eq!(store.list().await.unwrap().len(), 1);
    }

    /// acquire / renew / release / list_orphaned on simulated time.
    pub(crate) async fn leases(store: Arc<dyn CheckpointStore>) {
        store.put(&checkpoint("AJ_1", 1)).await.unwrap();
        store.put(&checkpoint("AJ_2", 1)).await.unwrap();
        // Never leased: orphaned.
        assert_eq!(store.list_orphaned(at(0)).await.unwrap().len(), 2);

        assert!(store.acquire_lease("AJ_1", "w1", TTL, at(0)).await.unwrap());
        assert!(
            !store
                .acquire_lease("AJ_1", "w2", TTL, at(5_000))
                .await
                .unwrap()
        );
        let orphaned = store.list_orphaned(at(5_000)).await.unwrap();
        assert_eq!(orphaned.len(), 1);
        assert_eq!(orphaned[0].job_id(), "AJ_2");

        // Renewed in time: still w1's at 14 s.
        assert!(
            store
                .renew_lease("AJ_1", "w1", TTL, at(9_000))
                .await
                .unwrap()
        );
        assert!(
            !store
                .renew_lease("AJ_1", "w2", TTL, at(9_000))
                .await
                .unwrap()
        );
        assert!(
            !store
                .acquire_lease("AJ_1", "w2", TTL, at(14_000))
                .await
                .unwrap()
        );

        // Not renewed: lapses at 19 s, shows as orphaned, and w2 takes it over.
        assert_eq!(store.list_orphaned(at(19_000)).await.unwrap().len(), 2);
        assert!(
            !store
                .renew_lease("AJ_1", "w1", TTL, at(19_000))
                .await
                .unwrap()
        );
        assert!(
            store
                .acquire_lease("AJ_1", "w2", TTL, at(19_000))
                .await
                .unwrap()
        );
        assert!(!store.release_lease("AJ_1", "w1").await.unwrap());
        assert!(
            store
                .renew_lease("AJ_1", "w2", TTL, at(20_000))
                .await
                .unwrap()
        );

        // Re-acquiring one's own lease extends it; releasing frees it at once.
        assert!(
            store
                .acquire_lease("AJ_1", "w2", TTL, at(25_000))
                .await
                .unwrap()
        );
        assert!(store.release_lease("AJ_1", "w2").await.unwrap());
        assert!(
            store
                .acquire_lease("AJ_1", "w3", TTL, at(26_000))
                .await
                .unwrap()
        );

        // Removing the job drops its lease too.
        assert!(store.remove("AJ_1").await.unwrap());
        assert!(
            store
                .acquire_lease("AJ_1", "w4", TTL, at(27_000))
                .await
                .unwrap()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::recovery::checkpoint::tests::at;

    #[actix_rt::test]
    async fn memory_store_keeps_records() {
        contract::records(Arc::new(MemoryStore::new())).await;
    }

    #[actix_rt::test]
    async fn memory_store_follows_the_lease_rules() {
        contract::leases(Arc::new(MemoryStore::new())).await;
    }

    #[test]
    fn a_lease_lapses_exactly_at_its_expiry() {
        let lease = acquire(None, "w1", Duration::from_secs(1), at(0)).unwrap();
        assert!(lease.is_live(at(999)));
        assert!(!lease.is_live(at(1_000)));
        assert!(renew(Some(&lease), "w1", Duration::from_secs(1), at(1_000)).is_none());
        assert!(acquire(Some(&lease), "w2", Duration::from_secs(1), at(1_000)).is_some());
    }
}
