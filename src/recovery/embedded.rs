//! [`EmbeddedStore`]: checkpoints on local disk, in a [redb] database.
//!
//! redb is an embedded, crash-safe, transactional key-value store in pure
//! Rust (copy-on-write B-trees, a checksummed commit). Each operation is one
//! transaction committed with redb's default `Durability::Immediate`: when
//! `put` resolves, the record is on disk and survives `kill -9` of the
//! worker or a power cut.
//!
//! redb's calls block (file I/O and `fsync`), and a blocked actix arbiter
//! stalls every actor on it, the connection included. So none of them runs
//! on the caller's thread: the store owns one dedicated thread that holds
//! the database and applies operations one at a time, in the order the
//! methods were called; the returned futures only wait for a reply on a
//! oneshot channel and can be awaited on any executor. Because the order is
//! the call order, two `put`s of one job can never land the wrong way round.
//!
//! [redb]: https://docs.rs/redb

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use tokio::sync::oneshot;
use tracing::warn;

use super::checkpoint::{Claim, JobCheckpoint};
use super::store::{self, CheckpointStore, Clock, StoreError, StoreFuture};

/// The database file inside the state directory.
pub const DATABASE_FILE: &str = "checkpoints.redb";

/// Job id → the checkpoint as [`JobCheckpoint::encode`] writes it.
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
/// Worker identity → when its heartbeat lapses, in unix milliseconds.
const HEARTBEATS: TableDefinition<&str, u64> = TableDefinition::new("heartbeats");

/// One operation for the store's thread.
type Op = Box<dyn FnOnce(&Database) + Send>;

/// Checkpoints in a redb database on local disk: they survive a restart of
/// the worker and `kill -9`. One worker process per state directory (redb
/// locks the file; a second `open` fails with [`StoreError::Open`]).
///
/// Cheap to clone; clones share the database and its thread. The last one
/// dropped waits for the operations already queued, then closes the file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    clock: Clock,
    ops: Option<mpsc::Sender<Op>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has applied what is
        // queued; joining makes the file free to open again on return.
        drop(self.ops.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens the store in directory `dir` (created if missing), in the file
    /// [`DATABASE_FILE`], creating the database on first use.
    ///
    /// This blocks (it opens, and may repair, the file): call it at start-up,
    /// before the actix System runs actors, or from a blocking task.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let path = dir.join(DATABASE_FILE);
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|err| open_error(Box::new(err)))?;
        let db = Database::create(&path).map_err(|err| open_error(Box::new(err)))?;
        // Create both tables now, so that readers never meet a missing one.
        // The file lock proves no other process has the store open, so every
        // heartbeat in it is a dead process's: cleared, its jobs are orphans
        // at once (a restarted worker resumes them without waiting for the
        // heartbeats to lapse).
        let create = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(CHECKPOINTS)?;
            txn.delete_table(HEARTBEATS)?;
            txn.open_table(HEARTBEATS)?;
            txn.commit()?;
            Ok(())
        };
        create().map_err(|err| open_error(Box::new(err)))?;

        let (ops, queue) = mpsc::channel::<Op>();
        let thread = std::thread::Builder::new()
            .name("lkagent-checkpoints".into())
            .spawn(move || {
                for op in queue {
                    // A panicking operation drops its reply sender (its caller
                    // sees `Closed`) and must not take the store down with it.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| op(&db)));
                }
            })
            .map_err(|err| open_error(Box::new(err)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                clock: store::system_clock(),
                ops: Some(ops),
                thread: Some(thread),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// This store, reading heartbeat expiry by `clock` (for tests). Call it
    /// before cloning the store.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.clock = clock;
        }
        self
    }

    /// Queues `op` for the store's thread now; the future waits for its
    /// result.
    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let (reply, result) = oneshot::channel();
        let queued = self.inner.ops.as_ref().is_some_and(|ops| {
            ops.send(Box::new(move |db: &Database| {
                let _ = reply.send(op(db));
            }))
            .is_ok()
        });
        Box::pin(async move {
            if !queued {
                return Err(StoreError::Closed);
            }
            result.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// Runs `change` in one write transaction, with the time of the call.
    fn write<T: Send + 'static>(
        &self,
        change: impl FnOnce(&redb::WriteTransaction, SystemTime) -> Result<T, StoreError>
        + Send
        + 'static,
    ) -> StoreFuture<T> {
        let now = (self.inner.clock)();
        self.run(move |db| {
            let txn = db.begin_write().map_err(StoreError::backend)?;
            let out = change(&txn, now)?;
            txn.commit().map_err(StoreError::backend)?;
            Ok(out)
        })
    }

    /// Every readable checkpoint from one read snapshot; with `orphaned_at`,
    /// only those whose holder has no heartbeat live at that time.
    fn scan(
        db: &Database,
        orphaned_at: Option<SystemTime>,
    ) -> Result<Vec<JobCheckpoint>, StoreError> {
        let read = || -> Result<_, redb::Error> {
            let txn = db.begin_read()?;
            let heartbeats = txn.open_table(HEARTBEATS)?;
            let mut checkpoints = Vec::new();
            for entry in txn.open_table(CHECKPOINTS)?.iter()? {
                let (key, value) = entry?;
                let checkpoint = match JobCheckpoint::decode(value.value()) {
                    Ok(cp) => cp,
                    Err(err) => {
                        warn!(
                            job_id = key.value(),
                            error = %err,
                            "skipping an unreadable checkpoint"
                        );
                        continue;
                    }
                };
                if let Some(now) = orphaned_at {
                    let beat = heartbeats.get(checkpoint.claim().owner.as_str())?;
                    if store::is_live(beat.map(|b| b.value()), now) {
                        continue;
                    }
                }
                checkpoints.push(checkpoint);
            }
            Ok(checkpoints)
        };
        read().map_err(StoreError::backend)
    }
}

/// The stored record of `job_id` in `txn`, decoded.
fn stored(txn: &redb::WriteTransaction, job_id: &str) -> Result<Option<JobCheckpoint>, StoreError> {
    let table = txn.open_table(CHECKPOINTS).map_err(StoreError::backend)?;
    let bytes = table
        .get(job_id)
        .map_err(StoreError::backend)?
        .map(|value| value.value().to_vec());
    bytes
        .map(|bytes| {
            JobCheckpoint::decode(&bytes).map_err(|source| StoreError::Corrupt {
                job_id: job_id.to_owned(),
                source,
            })
        })
        .transpose()
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl CheckpointStore for EmbeddedStore {
    fn is_durable(&self) -> bool {
        true // on disk: a restarted worker finds it
    }

    fn put(&self, checkpoint: &JobCheckpoint) -> StoreFuture<()> {
        store::single(self.put_many(vec![checkpoint.clone()]))
    }

    fn put_many(
        &self,
        checkpoints: Vec<JobCheckpoint>,
    ) -> StoreFuture<Vec<Result<(), StoreError>>> {
        // one transaction, so one sync to disk for the whole batch
        self.write(move |txn, _| {
            let mut table = txn.open_table(CHECKPOINTS).map_err(StoreError::backend)?;
            let mut results = Vec::with_capacity(checkpoints.len());
            for checkpoint in &checkpoints {
                let job_id = checkpoint.job_id();
                let current = table
                    .get(job_id)
                    .map_err(StoreError::backend)?
                    .map(|value| JobCheckpoint::decode(value.value()));
                let result = match current {
                    Some(Err(source)) => Err(StoreError::Corrupt {
                        job_id: job_id.to_owned(),
                        source,
                    }),
                    Some(Ok(current)) if !store::admits(current.claim(), checkpoint.claim()) => {
                        Err(store::fenced(job_id, current.claim()))
                    }
                    _ => table
                        .insert(job_id, checkpoint.encode().as_slice())
                        .map(drop)
                        .map_err(StoreError::backend),
                };
                results.push(result);
            }
            Ok(results)
        })
    }

    fn get(&self, job_id: &str) -> StoreFuture<Option<JobCheckpoint>> {
        let job_id = job_id.to_owned();
        self.run(move |db| {
            let read = || -> Result<Option<Vec<u8>>, redb::Error> {
                let txn = db.begin_read()?;
                let table = txn.open_table(CHECKPOINTS)?;
                Ok(table
                    .get(job_id.as_str())?
                    .map(|value| value.value().to_vec()))
            };
            read()
                .map_err(StoreError::backend)?
                .map(|bytes| {
                    JobCheckpoint::decode(&bytes)
                        .map_err(|source| StoreError::Corrupt { job_id, source })
                })
                .transpose()
        })
    }

    fn remove(&self, job_id: &str, claim: &Claim) -> StoreFuture<bool> {
        let (job_id, claim) = (job_id.to_owned(), claim.clone());
        self.write(move |txn, _| match stored(txn, &job_id)? {
            None => Ok(false),
            Some(current) if !store::admits(current.claim(), &claim) => {
                Err(store::fenced(&job_id, current.claim()))
            }
            Some(_) => txn
                .open_table(CHECKPOINTS)
                .and_then(|mut table| Ok(table.remove(job_id.as_str())?.is_some()))
                .map_err(StoreError::backend),
        })
    }

    fn list(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        self.run(|db| Self::scan(db, None))
    }

    fn heartbeat(&self, worker: &str, ttl: Duration) -> StoreFuture<()> {
        let worker = worker.to_owned();
        self.write(move |txn, now| {
            txn.open_table(HEARTBEATS)
                .and_then(|mut table| {
                    table.insert(worker.as_str(), store::expiry(now, ttl))?;
                    Ok(())
                })
                .map_err(StoreError::backend)
        })
    }

    fn retire(&self, worker: &str) -> StoreFuture<()> {
        let worker = worker.to_owned();
        self.write(move |txn, _| {
            txn.open_table(HEARTBEATS)
                .and_then(|mut table| {
                    table.remove(worker.as_str())?;
                    Ok(())
                })
                .map_err(StoreError::backend)
        })
    }

    fn list_orphaned(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        let now = (self.inner.clock)();
        self.run(move |db| Self::scan(db, Some(now)))
    }

    fn claim(&self, job_id: &str, worker: &str) -> StoreFuture<Option<JobCheckpoint>> {
        let (job_id, worker) = (job_id.to_owned(), worker.to_owned());
        self.write(move |txn, now| {
            let Some(current) = stored(txn, &job_id)? else {
                return Ok(None);
            };
            let live = {
                let table = txn.open_table(HEARTBEATS).map_err(StoreError::backend)?;
                let beat = table
                    .get(current.claim().owner.as_str())
                    .map_err(StoreError::backend)?
                    .map(|b| b.value());
                store::is_live(beat, now)
            };
            let granted = store::claimed(current, &worker, live);
            if let Some(record) = &granted {
                let bytes = record.encode();
                txn.open_table(CHECKPOINTS)
                    .and_then(|mut table| {
                        table.insert(job_id.as_str(), bytes.as_slice())?;
                        Ok(())
                    })
                    .map_err(StoreError::backend)?;
            }
            Ok(granted)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    use super::*;
    use crate::recovery::checkpoint::tests::{at, job};
    use crate::recovery::store::contract;

    /// Set in the child process of the SIGKILL test: the directory to write
    /// into.
    const CHILD_DIR_ENV: &str = "LKAGENT_RECOVERY_KILL_CHILD_DIR";
    /// How long the SIGKILL test waits for its child to write.
    const CHILD_DEADLINE: Duration = Duration::from_secs(60);

    fn progress(id: &str, done_ms: u64) -> JobCheckpoint {
        let mut cp =
            JobCheckpoint::new(&job(id), format!("agent-{id}"), at(1_000)).with_owner("w1");
        cp.save("done_ms", &done_ms).unwrap();
        cp
    }

    #[actix_rt::test]
    async fn embedded_store_keeps_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        contract::records(store.clone()).await;
        contract::batches(store).await;
    }

    #[actix_rt::test]
    async fn embedded_store_follows_the_ownership_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, ms) = contract::manual_clock();
        let store = EmbeddedStore::open(dir.path()).unwrap().with_clock(clock);
        contract::ownership(Arc::new(store), ms).await;
    }

    #[actix_rt::test]
    async fn embedded_store_lets_one_claimer_win() {
        let dir = tempfile::tempdir().unwrap();
        contract::one_claimer_wins(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
    }

    #[actix_rt::test]
    async fn records_survive_reopening_and_a_dead_processs_heartbeats_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let (clock, ms) = contract::manual_clock();
        {
            let store = EmbeddedStore::open(&state_dir)
                .unwrap()
                .with_clock(clock.clone());
            store.put(&progress("AJ_1", 2_500)).await.unwrap();
            store.put(&progress("AJ_2", 100)).await.unwrap();
            assert!(store.remove("AJ_2", &Claim::new("w1", 0)).await.unwrap());
            store
                .heartbeat("w1", Duration::from_secs(10))
                .await
                .unwrap();
        }
        let store = EmbeddedStore::open(&state_dir).unwrap().with_clock(clock);
        let back = store.get("AJ_1").await.unwrap().expect("durable");
        assert_eq!(back, progress("AJ_1", 2_500));
        assert_eq!(back.load::<u64>("done_ms").unwrap(), Some(2_500));
        assert_eq!(store.list().await.unwrap().len(), 1);
        // the file lock proves w1's process is gone: its job is an orphan at
        // once, not after its heartbeat's 10 s
        ms.store(5_000, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(store.list_orphaned().await.unwrap().len(), 1);
        // a heartbeat taken now lasts as any other
        store
            .heartbeat("w1", Duration::from_secs(10))
            .await
            .unwrap();
        assert!(store.list_orphaned().await.unwrap().is_empty());
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path()).unwrap();
        let err = EmbeddedStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains(DATABASE_FILE), "{err}");
    }

    #[actix_rt::test]
    async fn puts_land_in_call_order_even_when_awaited_late() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let writes: Vec<_> = (0..20).map(|n| store.put(&progress("AJ_1", n))).collect();
        for write in writes.into_iter().rev() {
            write.await.unwrap();
        }
        let last = store.get("AJ_1").await.unwrap().unwrap();
        assert_eq!(last.load::<u64>("done_ms").unwrap(), Some(19));
    }

    #[actix_rt::test]
    async fn an_unreadable_record_is_an_error_for_get_and_skipped_by_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put(&progress("AJ_1", 1)).await.unwrap();
        store
            .run(|db| {
                let txn = db.begin_write().map_err(StoreError::backend)?;
                txn.open_table(CHECKPOINTS)
                    .map_err(StoreError::backend)?
                    .insert("AJ_bad", br#"{"format":99}"#.as_slice())
                    .map_err(StoreError::backend)?;
                txn.commit().map_err(StoreError::backend)
            })
            .await
            .unwrap();
        let err = store.get("AJ_bad").await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { ref job_id, .. } if job_id == "AJ_bad"));
        let listed = store.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].job_id(), "AJ_1");
    }

    /// The child half of the SIGKILL test: writes a checkpoint, says so, and
    /// waits to be killed. Does nothing when run on its own.
    #[test]
    #[ignore = "run as a child process by `a_record_survives_sigkill_of_the_writer`"]
    fn sigkill_child_writer() {
        let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
            return;
        };
        actix_rt::System::new().block_on(async {
            let store = EmbeddedStore::open(&dir).unwrap();
            store.put(&progress("AJ_killed", 4_200)).await.unwrap();
            println!("written");
            loop {
                std::thread::park(); // until SIGKILL
            }
        });
    }

    #[cfg(unix)]
    #[test]
    fn a_record_survives_sigkill_of_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "recovery::embedded::tests::sigkill_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (said, heard) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test <name> ... " on the same line.
                if line.trim_end().ends_with("written") {
                    let _ = said.send(());
                    break;
                }
            }
        });
        let written = heard.recv_timeout(CHILD_DEADLINE);
        child.kill().unwrap(); // SIGKILL on unix: no destructors, no flush
        let status = child.wait().unwrap();
        assert!(written.is_ok(), "the child never wrote its checkpoint");
        assert!(
            !status.success(),
            "the child must have been killed: {status:?}"
        );

        let store = EmbeddedStore::open(dir.path()).unwrap();
        let back = actix_rt::System::new()
            .block_on(store.get("AJ_killed"))
            .unwrap()
            .expect("the record survives kill -9");
        assert_eq!(back.load::<u64>("done_ms").unwrap(), Some(4_200));
    }
}
