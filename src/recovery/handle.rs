//! [`Checkpoint`]: a running job's checkpoint, as its handler sees it.
//!
//! Saving is cheap — it changes the record in memory and marks it dirty —
//! and the worker writes every job's dirty record behind, on an interval,
//! in one batch ([`CheckpointStore::put_many`]). A handler that needs a
//! save to be durable now calls [`Checkpoint::flush`]: when it returns
//! `Ok`, the store has it. One write of a record is in flight at a time, so
//! writes land in the order they were made whatever the store does with
//! concurrent ones: a late batch never overwrites a newer flush or the
//! job's final status. The record is shared by the handler (any thread it
//! likes), the job's actor (its writes at start, restart and end) and the
//! worker (its table row holds the handle, to write it behind and to remove
//! the record by its claim) through one mutex held only for a copy or a
//! small edit, never across an await. It is one job's state, whose every
//! write takes its turn; what the worker and the actor tell each other
//! about it still goes by message (`CheckpointRefused`, `JobExited`).

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
    /// The store refused a write: another worker holds the job now (its
    /// holder and fence). No further write is attempted; each is answered
    /// with the same refusal.
    fenced: std::sync::OnceLock<(String, u64)>,
    /// The job's final status is in the record: only that write (and its
    /// retries) may still go out, never a write-behind after it.
    sealed: AtomicBool,
    /// Held by the write in flight: writes of this record go one at a time.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// A dirty record taken for a batch write, holding the record's turn until
/// the batch's answer is settled.
pub(crate) struct TakenWrite {
    /// The stamped copy to write.
    pub record: JobCheckpoint,
    checkpoint: Checkpoint,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl TakenWrite {
    /// Applies the store's answer for this record (marks it dirty again
    /// after a failure, fenced after a refusal) and gives up the turn.
    pub(crate) fn settle(self, result: &Result<(), StoreError>) {
        self.checkpoint.settle(result);
    }
}

impl Checkpoint {
    /// A handle on `record`, kept in `store`.
    pub fn new(record: JobCheckpoint, store: Arc<dyn CheckpointStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                record: Mutex::new(record),
                store,
                dirty: AtomicBool::new(false),
                fenced: std::sync::OnceLock::new(),
                sealed: AtomicBool::new(false),
                turn: Arc::default(),
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

    /// Stamps and writes the record once the write before it (if any) is
    /// answered; on failure it stays dirty for the next write-behind. A
    /// sealed record is written only by the final write.
    pub(crate) fn write(&self) -> StoreFuture<()> {
        self.write_turn(false)
    }

    fn write_turn(&self, is_final: bool) -> StoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let _turn = this.inner.turn.clone().lock_owned().await;
            if let Some(refusal) = this.refusal() {
                return Err(refusal);
            }
            if !is_final && this.inner.sealed.load(Ordering::Acquire) {
                return Ok(());
            }
            this.inner.dirty.store(false, Ordering::Release);
            let put = this.inner.store.put(&this.stamped());
            let result = put.await;
            this.settle(&result);
            result
        })
    }

    /// A stamped copy of the record.
    fn stamped(&self) -> JobCheckpoint {
        let mut record = self.record();
        record.touch(SystemTime::now());
        record.clone()
    }

    /// Applies a write's answer.
    fn settle(&self, result: &Result<(), StoreError>) {
        match result {
            Ok(()) => {}
            Err(StoreError::Fenced { holder, fence, .. }) => {
                let _ = self.inner.fenced.set((holder.clone(), *fence));
            }
            Err(_) => self.inner.dirty.store(true, Ordering::Release),
        }
    }

    /// The record, stamped, if anything was saved since the last write and
    /// no write of it is in flight (and it is neither fenced nor sealed): for
    /// the worker's batch. The record's turn is held until the batch's
    /// answer is settled.
    pub(crate) fn take_dirty(&self) -> Option<TakenWrite> {
        if !self.inner.dirty.load(Ordering::Acquire)
            || self.is_fenced()
            || self.inner.sealed.load(Ordering::Acquire)
        {
            return None;
        }
        let turn = self.inner.turn.clone().try_lock_owned().ok()?;
        self.inner.dirty.store(false, Ordering::Release);
        Some(TakenWrite {
            record: self.stamped(),
            checkpoint: self.clone(),
            _turn: turn,
        })
    }

    /// True once the store refused a write of this record: another worker
    /// claimed the job.
    pub(crate) fn is_fenced(&self) -> bool {
        self.inner.fenced.get().is_some()
    }

    /// The store's refusal, once it refused a write of this record.
    fn refusal(&self) -> Option<StoreError> {
        let (holder, fence) = self.inner.fenced.get()?;
        Some(StoreError::Fenced {
            job_id: self.record().job_id().to_owned(),
            holder: holder.clone(),
            fence: *fence,
        })
    }

    /// The claim the record is held by (what removing it must present).
    pub(crate) fn claim(&self) -> super::Claim {
        self.record().claim().clone()
    }

    /// Records the job's final status in its record and writes it: a
    /// worker that restarts before the server confirmed the status finds
    /// it there and reports it again rather than running the job.
    pub(crate) fn record_final(&self, status: super::FinalRecord) -> StoreFuture<()> {
        self.record().set_final_status(status);
        self.inner.sealed.store(true, Ordering::Release);
        self.write_turn(true)
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
        assert!(cp.take_dirty().is_none(), "nothing new to write");
        cp.save("progress_ms", &1500u64).unwrap();
        let taken = cp.take_dirty().expect("dirty");
        assert_eq!(taken.record.load::<u64>("progress_ms").unwrap(), Some(1500));
        assert!(cp.take_dirty().is_none(), "taken");
        taken.settle(&Err(StoreError::Closed));
        assert!(cp.take_dirty().is_some(), "dirty again after a failure");
    }

    #[test]
    fn a_write_waits_for_the_batch_in_flight_and_nothing_follows_the_final_one() {
        let store = Arc::new(MemoryStore::new());
        let cp = Checkpoint::new(
            JobCheckpoint::new(&job(), "agent-AJ_1", SystemTime::now()),
            store.clone(),
        );
        cp.save("turn", &1u32).unwrap();
        let taken = cp.take_dirty().expect("dirty");
        cp.save("turn", &2u32).unwrap();
        assert!(cp.take_dirty().is_none(), "one write in flight at a time");
        actix_rt::System::new().block_on(async {
            let flushing = cp.clone();
            let flush = actix_rt::spawn(async move { flushing.flush().await });
            actix_rt::task::yield_now().await;
            assert!(!flush.is_finished(), "the flush waits for its turn");
            // the older batch lands first, then the flush over it
            let old = store.put(&taken.record).await;
            taken.settle(&old);
            flush.await.unwrap().unwrap();
        });
        let stored = block_on(store.get("AJ_1")).unwrap().unwrap();
        assert_eq!(stored.load::<u32>("turn").unwrap(), Some(2));

        block_on(cp.record_final(crate::recovery::FinalRecord {
            status: 3,
            error: String::new(),
        }))
        .unwrap();
        cp.save("turn", &3u32).unwrap();
        assert!(cp.take_dirty().is_none(), "sealed");
        block_on(cp.flush()).unwrap();
        let stored = block_on(store.get("AJ_1")).unwrap().unwrap();
        assert_eq!(
            stored.load::<u32>("turn").unwrap(),
            Some(2),
            "the final write is the last"
        );
        assert!(stored.final_status().is_some());
    }

    #[test]
    fn once_refused_every_write_answers_the_refusal() {
        let store = Arc::new(MemoryStore::new());
        let record = JobCheckpoint::new(&job(), "agent-AJ_1", SystemTime::now());
        let mut held = record.clone();
        held.set_claim(crate::recovery::Claim::new("w2", 1));
        block_on(store.put(&held)).unwrap();
        let cp = Checkpoint::new(record.with_owner("w1"), store.clone());
        cp.save("turn", &1u32).unwrap();
        let fenced = |result: Result<(), StoreError>| matches!(result, Err(StoreError::Fenced { ref holder, fence: 1, .. }) if holder == "w2");
        assert!(fenced(block_on(cp.flush())), "the store refuses");
        assert!(cp.take_dirty().is_none(), "no write-behind after it");
        assert!(fenced(block_on(cp.flush())), "a flush is refused, not Ok");
        let last = cp.record_final(crate::recovery::FinalRecord {
            status: 3,
            error: String::new(),
        });
        assert!(fenced(block_on(last)), "so is the final write");
        assert_eq!(block_on(store.get("AJ_1")).unwrap().unwrap(), held);
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
