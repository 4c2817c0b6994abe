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

use super::checkpoint::JobCheckpoint;
use super::store::{self, CheckpointStore, Lease, StoreError, StoreFuture};

/// The database file inside the state directory.
pub const DATABASE_FILE: &str = "checkpoints.redb";

/// Job id → the checkpoint as [`JobCheckpoint::encode`] writes it.
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
/// Job id → (owner, expiry in unix milliseconds).
const LEASES: TableDefinition<&str, (&str, u64)> = TableDefinition::new("leases");

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
        let create = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(CHECKPOINTS)?;
            txn.open_table(LEASES)?;
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
                ops: Some(ops),
                thread: Some(thread),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
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

    /// Applies a lease rule in one transaction; true when it granted a new
    /// lease.
    fn set_lease(
        &self,
        job_id: &str,
        rule: store::LeaseRule,
        owner: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> StoreFuture<bool> {
        let (job_id, owner) = (job_id.to_owned(), owner.to_owned());
        self.with_leases(move |leases| {
            let current = leases.get(job_id.as_str())?.map(|v| lease_of(v.value()));
            Ok(match rule(current.as_ref(), &owner, ttl, now) {
                Some(lease) => {
                    leases.insert(job_id.as_str(), (lease.owner.as_str(), lease.expires_at_ms))?;
                    true
                }
                None => false,
            })
        })
    }

    /// Runs `change` on the lease table in one write transaction.
    fn with_leases<T: Send + 'static>(
        &self,
        change: impl FnOnce(
            &mut redb::Table<'_, &'static str, (&'static str, u64)>,
        ) -> Result<T, redb::Error>
        + Send
        + 'static,
    ) -> StoreFuture<T> {
        self.run(move |db| {
            let write = || -> Result<T, redb::Error> {
                let txn = db.begin_write()?;
                let out = {
                    let mut leases = txn.open_table(LEASES)?;
                    change(&mut leases)?
                };
                txn.commit()?;
                Ok(out)
            };
            write().map_err(StoreError::backend)
        })
    }

    /// Every readable checkpoint from one read snapshot; with `orphaned_at`,
    /// only those without a lease live at that time.
    fn scan(
        db: &Database,
        orphaned_at: Option<SystemTime>,
    ) -> Result<Vec<JobCheckpoint>, StoreError> {
        let read = || -> Result<_, redb::Error> {
            let txn = db.begin_read()?;
            let leases = txn.open_table(LEASES)?;
            let mut checkpoints = Vec::new();
            for entry in txn.open_table(CHECKPOINTS)?.iter()? {
                let (key, value) = entry?;
                if let Some(now) = orphaned_at {
                    let lease = leases.get(key.value())?.map(|v| lease_of(v.value()));
                    if lease.is_some_and(|lease| lease.is_live(now)) {
                        continue;
                    }
                }
                match JobCheckpoint::decode(value.value()) {
                    Ok(cp) => checkpoints.push(cp),
                    Err(err) => warn!(
                        job_id = key.value(),
                        error = %err,
                        "skipping an unreadable checkpoint"
                    ),
                }
            }
            Ok(checkpoints)
        };
        read().map_err(StoreError::backend)
    }
}

fn lease_of((owner, expires_at_ms): (&str, u64)) -> Lease {
    Lease {
        owner: owner.to_owned(),
        expires_at_ms,
    }
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
        let job_id = checkpoint.job_id().to_owned();
        let record = checkpoint.encode();
        self.run(move |db| {
            let write = || -> Result<(), redb::Error> {
                let txn = db.begin_write()?;
                txn.open_table(CHECKPOINTS)?
                    .insert(job_id.as_str(), record.as_slice())?;
                txn.commit()?;
                Ok(())
            };
            write().map_err(StoreError::backend)
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

    fn remove(&self, job_id: &str) -> StoreFuture<bool> {
        let job_id = job_id.to_owned();
        self.run(move |db| {
            let write = || -> Result<bool, redb::Error> {
                let txn = db.begin_write()?;
                let existed = txn
                    .open_table(CHECKPOINTS)?
                    .remove(job_id.as_str())?
                    .is_some();
                txn.open_table(LEASES)?.remove(job_id.as_str())?;
                txn.commit()?;
                Ok(existed)
            };
            write().map_err(StoreError::backend)
        })
    }

    fn list(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        self.run(|db| Self::scan(db, None))
    }

    fn acquire_lease(
        &self,
        job_id: &str,
        owner: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> StoreFuture<bool> {
        self.set_lease(job_id, store::acquire, owner, ttl, now)
    }

    fn renew_lease(
        &self,
        job_id: &str,
        owner: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> StoreFuture<bool> {
        self.set_lease(job_id, store::renew, owner, ttl, now)
    }

    fn release_lease(&self, job_id: &str, owner: &str) -> StoreFuture<bool> {
        let (job_id, owner) = (job_id.to_owned(), owner.to_owned());
        self.with_leases(move |leases| {
            let current = leases.get(job_id.as_str())?.map(|v| lease_of(v.value()));
            let release = store::releases(current.as_ref(), &owner);
            if release {
                leases.remove(job_id.as_str())?;
            }
            Ok(release)
        })
    }

    fn list_orphaned(&self, now: SystemTime) -> StoreFuture<Vec<JobCheckpoint>> {
        self.run(move |db| Self::scan(db, Some(now)))
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
        let mut cp = JobCheckpoint::new(&job(id), format!("agent-{id}"), at(1_000));
        cp.save("done_ms", &done_ms).unwrap();
        cp
    }

    #[actix_rt::test]
    async fn embedded_store_keeps_records() {
        let dir = tempfile::tempdir().unwrap();
        contract::records(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
    }

    #[actix_rt::test]
    async fn embedded_store_follows_the_lease_rules() {
        let dir = tempfile::tempdir().unwrap();
        contract::leases(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
    }

    #[actix_rt::test]
    async fn records_and_leases_survive_closing_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        {
            let store = EmbeddedStore::open(&state_dir).unwrap();
            store.put(&progress("AJ_1", 2_500)).await.unwrap();
            store.put(&progress("AJ_2", 100)).await.unwrap();
            assert!(store.remove("AJ_2").await.unwrap());
            assert!(
                store
                    .acquire_lease("AJ_1", "w1", Duration::from_secs(10), at(0))
                    .await
                    .unwrap()
            );
        }
        let store = EmbeddedStore::open(&state_dir).unwrap();
        let back = store.get("AJ_1").await.unwrap().expect("durable");
        assert_eq!(back, progress("AJ_1", 2_500));
        assert_eq!(back.load::<u64>("done_ms").unwrap(), Some(2_500));
        assert_eq!(store.list().await.unwrap().len(), 1);
        assert!(store.list_orphaned(at(5_000)).await.unwrap().is_empty());
        assert_eq!(store.list_orphaned(at(10_000)).await.unwrap().len(), 1);
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
