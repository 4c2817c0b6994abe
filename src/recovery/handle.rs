//! [`Checkpoint`]: a running job's checkpoint, as its handler sees it.
//!
//! Saving is cheap — it changes the record in memory and marks it dirty —
//! and the runtime writes dirty records behind, on an interval. A handler
//! that needs a save to be durable now calls [`Checkpoint::flush`]: when it
//! returns `Ok`, the store has it. The record is shared between the handler
//! (any thread it likes) and its JobActor through one mutex held only for a
//! copy or a small edit, never across an await: a handle on one job's state,
//! not state shared between actors.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::checkpoint::{CheckpointError, JobCheckpoint};
use super::store::{CheckpointStore, MemoryStore, StoreError, StoreFuture};

/// A job's checkpoint: typed state that survives a handler panic and, with a
/// durable store, a worker restart. Clones share the record.
#[derive(Clone)]
pub struct Checkpoint {
    inner: Arc<Inner>,
}

struct Inner {
    record: Mutex<JobCheckpoint>,
    store: Arc<dyn CheckpointStore>,
    dirty: AtomicBool,
    /// The store refused a write: another worker holds the job now. No
    /// further write is attempted.
    fenced: AtomicBool,
}

impl Checkpoint {
    /// A handle on `record`, kept in `store`.
    pub fn new(record: JobCheckpoint, store: Arc<dyn CheckpointStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                record: Mutex::new(record),
                store,
                dirty: AtomicBool::new(false),
                fenced: AtomicBool::new(false),
            }),
        }
    }

    /// A handle kept only in memory (for handler tests).
    pub fn in_memory(record: JobCheckpoint) -> Self {
        Self::new(record, Arc::new(MemoryStore::new()))
    }

    fn record(&self) -> MutexGuard<'_, JobCheckpoint> {
        // a panic while holding the lock cannot leave a half-made edit: each
        // edit is one call on the record
        self.inner.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Saves `value` under `key` (in memory now, in the store soon).
    pub fn save<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), CheckpointError> {
        self.record().save(key, value)?;
        self.inner.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// The value saved under `key`, if any.
    pub fn load<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CheckpointError> {
        self.record().load(key)
    }

    /// Which run of the job this is: 1 at first, then one more per restart
    /// (after a panic, a retryable error, or a worker restart).
    pub fn attempt(&self) -> u32 {
        self.record().attempt()
    }

    /// Writes the checkpoint to the store; when this returns `Ok`, it is
    /// durable (as durable as the store).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write().await
    }

    /// A copy of the record as it is now.
    pub fn snapshot(&self) -> JobCheckpoint {
        self.record().clone()
    }

    /// Stamps and writes the record; on failure it stays dirty for the next
    /// write-behind.
    pub(crate) fn write(&self) -> StoreFuture<()> {
        self.inner.dirty.store(false, Ordering::Release);
        let snapshot = {
            let mut record = self.record();
            record.touch(SystemTime::now());
            record.clone()
        };
        let inner = self.inner.clone();
        let put = inner.store.put(&snapshot);
        Box::pin(async move {
            let result = put.await;
            match &result {
                Ok(()) => {}
                Err(StoreError::Fenced { .. }) => inner.fenced.store(true, Ordering::Release),
                Err(_) => inner.dirty.store(true, Ordering::Release),
            }
            result
        })
    }

    /// Writes the record if anything was saved since the last write (and
    /// the store has not refused this holder).
    pub(crate) fn write_if_dirty(&self) -> Option<StoreFuture<()>> {
        (self.inner.dirty.load(Ordering::Acquire) && !self.is_fenced()).then(|| self.write())
    }

    /// True once the store refused a write of this record: another worker
    /// claimed the job.
    pub(crate) fn is_fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::Acquire)
    }

    /// Records the job's final status in its record and writes it: a
    /// worker that restarts before the server confirmed the status finds
    /// it there and reports it again rather than running the job.
    pub(crate) fn record_final(&self, status: super::FinalRecord) -> StoreFuture<()> {
        self.record().set_final_status(status);
        self.write()
    }

    /// Counts a new run of the job and returns its number.
    pub(crate) fn next_attempt(&self) -> u32 {
        let attempt = self.record().next_attempt(SystemTime::now());
        self.inner.dirty.store(true, Ordering::Release);
        attempt
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // sizes and identity only: saved values may be private
        f.debug_tuple("Checkpoint").field(&*self.record()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livekit_protocol::Job;

    fn job() -> Job {
        Job {
            id: "AJ_1".into(),
            ..Default::default()
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        actix_rt::System::new().block_on(f)
    }

    #[test]
    fn saves_stay_in_memory_until_flushed() {
        let store = Arc::new(MemoryStore::new());
        let cp = Checkpoint::new(
            JobCheckpoint::new(&job(), "agent-AJ_1", SystemTime::now()),
            store.clone(),
        );
        cp.save("progress_ms", &1200u64).unwrap();
        assert_eq!(cp.load::<u64>("progress_ms").unwrap(), Some(1200));
        assert!(
            block_on(store.get("AJ_1")).unwrap().is_none(),
            "written behind, not at once"
        );
        block_on(cp.flush()).unwrap();
        let stored = block_on(store.get("AJ_1")).unwrap().unwrap();
        assert_eq!(stored.load::<u64>("progress_ms").unwrap(), Some(1200));
        assert!(cp.write_if_dirty().is_none(), "nothing new to write");
        cp.save("progress_ms", &1500u64).unwrap();
        assert!(cp.write_if_dirty().is_some());
    }

    #[test]
    fn attempts_count_up_and_clones_share_the_record() {
        let cp = Checkpoint::in_memory(JobCheckpoint::new(&job(), "a", SystemTime::now()));
        let other = cp.clone();
        assert_eq!(cp.attempt(), 1);
        assert_eq!(other.next_attempt(), 2);
        assert_eq!(cp.attempt(), 2);
    }

    #[test]
    fn debug_shows_no_values() {
        let cp = Checkpoint::in_memory(JobCheckpoint::new(&job(), "a", SystemTime::now()));
        cp.save("secret", "hunter2-in-state").unwrap();
        assert!(!format!("{cp:?}").contains("hunter2"));
    }
}
