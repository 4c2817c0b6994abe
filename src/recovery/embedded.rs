//! [`EmbeddedStore`]: checkpoints on local disk, in a [redb] database.
//!
//! redb is an embedded, crash-safe, transactional key-value store in pure
//! Rust (copy-on-write B-trees, a checksummed commit). Commits use redb's
//! default `Durability::Immediate`: when a call resolves `Ok`, what it wrote
//! is on disk and survives `kill -9` of the worker or a power cut.
//!
//! redb's calls block (file I/O and `fsync`), and a blocked actix arbiter
//! stalls every actor on it, the connection included. So none of them runs
//! on the caller's thread: the store owns one thread that holds the
//! database, each method hands its operation to the store's write queue and
//! returns a future that only waits for the answer on a oneshot channel
//! (any executor can await it).
//!
//! # The write queue
//!
//! - **Call order.** Operations take effect in the order the methods were
//!   called, however late their futures are awaited: two writes of one job
//!   never land the wrong way round, a removal after a put wins, and so does
//!   a put after a removal. A read sees every write called before it.
//! - **Group commit.** The thread takes everything queued at once and
//!   applies it in one write transaction: one commit, one `fsync`, however
//!   many jobs wrote. Reads in the group read that transaction at their
//!   place in the order. Every answer waits for the commit; if the commit
//!   fails, every operation of the group fails with its error (none of them
//!   landed). A group of reads only commits nothing.
//! - **Merging.** A job's puts and removals called one after another under
//!   the same claim share one place in the queue: a later put replaces the
//!   record waiting there, a removal drops it, and only the job's last write
//!   goes to disk. Every caller is still answered, after that commit, with
//!   what its own call would have answered had each been applied in turn: a
//!   put that was replaced resolves `Ok` (or `Fenced`, like the put that
//!   replaced it: they carry the same claim). A read or a claim of the job,
//!   a listing, or a write under another claim ends the merging; a write
//!   after it takes a new place.
//! - **A bound.** At most 1024 places are taken at a time (queued, or in
//!   the group being written): that caps a group commit and the work the
//!   store has taken on. A call that needs a place when there is none waits
//!   in line for one, behind the calls made before it (so call order holds),
//!   and the store's thread lets it in as groups commit, whether or not its
//!   future is being polled: the caller's future simply resolves later; no
//!   thread blocks, and nothing is refused or dropped. A job's final write
//!   (its record with the final status, or its removal) waits like any other
//!   and lands. A batch larger than the bound goes in as room frees.
//!   A call waiting in line is its caller's: dropping its future withdraws
//!   it (nobody is left to hear the answer), so the line holds no more than
//!   callers are waiting for. A call that has a place is written whatever
//!   becomes of its future.
//! - **Closing.** Dropping the last clone of the store never blocks the
//!   caller: the thread writes what is queued and waiting in line, then
//!   closes the file and ends. An [`EmbeddedStore::open`] of the same file in
//!   this process waits for that first (opening blocks anyway), so a new
//!   store can be opened where the last one was dropped, as before.
//!
//! [redb]: https://docs.rs/redb

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use redb::{Database, ReadableTable as _, TableDefinition, WriteTransaction};
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

/// The most places taken in the write queue at once: a group commit holds
/// at most this many operations, and the store at most this many records
/// waiting to be written (a record is at most `MAX_STATE_BYTES` of state,
/// usually far less). Under the worker's write-behind a place is a job, so a
/// worker with thousands of jobs writes an interval in a few groups.
const MAX_PENDING: usize = 1024;

/// Store threads of this process whose last handle is gone, by database
/// file: an `open` of that file waits for its predecessor to write what it
/// was given and close the file.
static CLOSING: Mutex<Vec<(PathBuf, JoinHandle<()>)>> = Mutex::new(Vec::new());

/// Checkpoints in a redb database on local disk: they survive a restart of
/// the worker and `kill -9`. One worker process per state directory (redb
/// locks the file; a second `open` while the first store is in use fails
/// with [`StoreError::Open`]).
///
/// Writes go through a bounded queue that merges a job's writes and commits
/// them in groups (see the module docs). Cheap to clone; clones share the
/// database and its thread. Dropping the last one does not wait: the thread
/// finishes the writes it was given, then closes the file; opening the same
/// directory again in this process waits for that.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The file's canonical path: the key in [`CLOSING`].
    canonical: PathBuf,
    clock: Clock,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The thread ends by itself once it has written what it was given;
        // an `open` of the same file waits for it, so no caller here does
        // (this may run on an actix arbiter).
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let mut closing = CLOSING.lock().unwrap_or_else(PoisonError::into_inner);
            closing.retain(|(_, thread)| !thread.is_finished());
            closing.push((self.canonical.clone(), thread));
        }
    }
}

/// What the callers and the store's thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the thread: something was queued, or the last handle went.
    work: Condvar,
    /// The most places taken at once.
    bound: usize,
    /// Called on the thread before each commit: a slow disk, in tests
    /// (only they open a store with one).
    before_commit: Option<CommitHook>,
    /// How many groups were committed.
    commits: AtomicU64,
}

/// What a test runs before each commit.
type CommitHook = Arc<dyn Fn() + Send + Sync>;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // every change to the queue is made whole under the lock; nothing in
        // it panics halfway
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The write queue: what the thread writes next, and the calls waiting for
/// a place.
#[derive(Default)]
struct Queue {
    /// Queued for the next group, in call order.
    items: Vec<Item>,
    /// Job id → the index in `items` of its record writes that a later
    /// write under the same claim may still join.
    open: HashMap<String, usize>,
    /// Places taken: queued items, and those of the group being written.
    pending: usize,
    /// Calls waiting for a place, in call order.
    line: VecDeque<Waiting>,
    next_ticket: u64,
    /// The last handle is gone: the thread ends once nothing is queued or
    /// waiting.
    closed: bool,
    /// The thread has ended: nothing will be written.
    ended: bool,
    /// The most places ever taken at once.
    most_pending: usize,
}

/// A call's operations still waiting for places.
struct Waiting {
    ticket: u64,
    entries: VecDeque<Entry>,
}

/// One operation, as a call hands it to the queue.
enum Entry {
    /// A job's record written or removed, under `claim`.
    Record {
        job_id: String,
        claim: Claim,
        write: RecordWrite,
    },
    /// Any other operation.
    Op(Op),
}

/// A put or a removal, with where its answer goes.
enum RecordWrite {
    Put(Box<JobCheckpoint>, Reply<()>),
    Remove(Reply<bool>),
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Sends an applied operation's answer once its group's commit is known:
/// given the commit's failure, if it failed.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// An operation other than a record write: applied in the group's
/// transaction (or told why there is none), answered after the commit.
struct Op {
    /// Which records it reads or changes: their writes stop merging at it.
    touches: Touches,
    /// Whether it changes the database.
    writes: bool,
    run: Run,
}

/// An [`Op`]'s work: given the group's transaction (or why there is none),
/// it returns its answer.
type Run = Box<dyn FnOnce(Result<&WriteTransaction, &str>) -> Answer + Send>;

/// The records an operation reads or changes.
enum Touches {
    Nothing,
    Job(String),
    All,
}

/// A place in the queue.
enum Item {
    Record(Record),
    Op(Op),
}

/// A job's record writes called one after another under one claim,
/// applied as one.
struct Record {
    job_id: String,
    claim: Claim,
    /// What the record becomes: the last put's checkpoint, or `None` when
    /// the last write removes it.
    last: Option<Box<JobCheckpoint>>,
    /// The callers, in call order.
    callers: Vec<Caller>,
}

enum Caller {
    Put(Reply<()>),
    Remove(Reply<bool>),
}

/// What applying a job's record writes found.
enum Verdict {
    /// The record was absent or held by the writes' claim: they took
    /// effect. Whether there was one before them.
    Applied { existed: bool },
    /// Another claim holds the record: every write is refused.
    Fenced(Claim),
    /// The stored record is unreadable (its bytes).
    Corrupt(Vec<u8>),
}

impl Queue {
    /// Takes `entry` now if it joins its job's waiting writes or a place is
    /// free; hands it back otherwise.
    fn offer(&mut self, entry: Entry, bound: usize) -> Option<Entry> {
        match entry {
            Entry::Record {
                job_id,
                claim,
                write,
            } => {
                if let Some(&at) = self.open.get(&job_id)
                    && let Some(Item::Record(record)) = self.items.get_mut(at)
                    && record.claim == claim
                {
                    record.push(write);
                    return None;
                }
                if self.pending >= bound {
                    return Some(Entry::Record {
                        job_id,
                        claim,
                        write,
                    });
                }
                self.open.insert(job_id.clone(), self.items.len());
                let mut record = Record {
                    job_id,
                    claim,
                    last: None,
                    callers: Vec::new(),
                };
                record.push(write);
                self.items.push(Item::Record(record));
            }
            Entry::Op(op) => {
                if self.pending >= bound {
                    return Some(Entry::Op(op));
                }
                match &op.touches {
                    Touches::Nothing => {}
                    Touches::Job(job_id) => {
                        self.open.remove(job_id);
                    }
                    Touches::All => self.open.clear(),
                }
                self.items.push(Item::Op(op));
            }
        }
        self.pending += 1;
        self.most_pending = self.most_pending.max(self.pending);
        None
    }

    /// Queues a call's operations in order: as many as fit now, unless
    /// calls made earlier wait; the rest wait in line, under the ticket
    /// returned.
    fn enqueue(&mut self, entries: Vec<Entry>, bound: usize) -> Option<u64> {
        let mut entries = VecDeque::from(entries);
        if self.line.is_empty() {
            while let Some(entry) = entries.pop_front() {
                if let Some(back) = self.offer(entry, bound) {
                    entries.push_front(back);
                    break;
                }
            }
        }
        if entries.is_empty() {
            return None;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.line.push_back(Waiting { ticket, entries });
        Some(ticket)
    }

    /// Lets in the calls waiting in line, oldest first, as far as places
    /// allow.
    fn let_in(&mut self, bound: usize) {
        while let Some(mut head) = self.line.pop_front() {
            while let Some(entry) = head.entries.pop_front() {
                if let Some(back) = self.offer(entry, bound) {
                    head.entries.push_front(back);
                    self.line.push_front(head);
                    return;
                }
            }
        }
    }

    /// The next group: everything queued.
    fn take(&mut self) -> Vec<Item> {
        self.open.clear();
        std::mem::take(&mut self.items)
    }
}

impl Record {
    fn push(&mut self, write: RecordWrite) {
        match write {
            RecordWrite::Put(checkpoint, reply) => {
                self.last = Some(checkpoint);
                self.callers.push(Caller::Put(reply));
            }
            RecordWrite::Remove(reply) => {
                self.last = None;
                self.callers.push(Caller::Remove(reply));
            }
        }
    }

    /// Checks the claim once for all the writes (they share it, and none of
    /// them changes who holds the record) and leaves the last one's record.
    fn apply(&self, txn: &WriteTransaction) -> Result<Verdict, redb::Error> {
        let mut table = txn.open_table(CHECKPOINTS)?;
        let job_id = self.job_id.as_str();
        let current = table.get(job_id)?.map(|value| value.value().to_vec());
        let existed = match current {
            None => false,
            Some(bytes) => match JobCheckpoint::decode(&bytes) {
                Err(_) => return Ok(Verdict::Corrupt(bytes)),
                Ok(stored) if !store::admits(stored.claim(), &self.claim) => {
                    return Ok(Verdict::Fenced(stored.claim().clone()));
                }
                Ok(_) => true,
            },
        };
        match &self.last {
            Some(checkpoint) => {
                table.insert(job_id, checkpoint.encode().as_slice())?;
            }
            None => {
                table.remove(job_id)?;
            }
        }
        Ok(Verdict::Applied { existed })
    }

    /// The answers to send once the commit is known: each caller's, as if
    /// its write had been applied alone, in turn.
    fn answers(self, verdict: Result<Verdict, String>) -> Answer {
        Box::new(move |commit_failed| {
            let job_id = self.job_id;
            // the same for every caller: they share the claim
            let refusal = || match (commit_failed, &verdict) {
                (Some(failure), _) => Some(failed(failure)),
                (None, Err(failure)) => Some(failed(failure)),
                (None, Ok(Verdict::Fenced(holder))) => Some(store::fenced(&job_id, holder)),
                (None, Ok(Verdict::Corrupt(bytes))) => Some(corrupt(&job_id, bytes)),
                (None, Ok(Verdict::Applied { .. })) => None,
            };
            let mut exists = matches!(verdict, Ok(Verdict::Applied { existed: true }));
            for caller in self.callers {
                match caller {
                    Caller::Put(reply) => {
                        let _ = reply.send(refusal().map_or(Ok(()), Err));
                        exists = true;
                    }
                    Caller::Remove(reply) => {
                        let _ = reply.send(refusal().map_or(Ok(exists), Err));
                        exists = false;
                    }
                }
            }
        })
    }
}

impl Item {
    fn writes(&self) -> bool {
        match self {
            Item::Record(_) => true,
            Item::Op(op) => op.writes,
        }
    }

    /// Applies the item in the group's transaction (or learns why there is
    /// none) and returns its answers.
    fn apply(self, txn: Result<&WriteTransaction, &str>) -> Answer {
        match self {
            Item::Record(record) => {
                let verdict = match txn {
                    Ok(txn) => record.apply(txn).map_err(|err| err.to_string()),
                    Err(failure) => Err(failure.to_owned()),
                };
                record.answers(verdict)
            }
            Item::Op(op) => (op.run)(txn),
        }
    }
}

/// A store failure, from its message (a group's failure is every
/// operation's in it).
fn failed(failure: &str) -> StoreError {
    StoreError::backend(std::io::Error::other(failure.to_owned()))
}

/// The error for an unreadable stored record.
fn corrupt(job_id: &str, bytes: &[u8]) -> StoreError {
    match JobCheckpoint::decode(bytes) {
        Err(source) => StoreError::Corrupt {
            job_id: job_id.to_owned(),
            source,
        },
        Ok(_) => failed("the stored record changed while it was read"),
    }
}

/// The store's thread: takes everything queued, writes it as one group,
/// lets in what waits in line, until the last handle is gone and nothing is
/// left.
fn serve(shared: &Shared, db: &Database) {
    let mut queue = shared.lock();
    loop {
        if queue.items.is_empty() {
            if queue.closed && queue.line.is_empty() {
                return;
            }
            queue = shared
                .work
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let group = queue.take();
        drop(queue);
        let places = group.len();
        let (answers, commit_failed) = write_group(shared, db, group);
        // the places are free before anyone hears back: a caller that has
        // its answer finds the queue without it
        queue = shared.lock();
        queue.pending -= places;
        queue.let_in(shared.bound);
        drop(queue);
        for answer in answers {
            answer(commit_failed.as_deref());
        }
        queue = shared.lock();
    }
}

/// Applies `group` in one write transaction and commits it once (aborts it
/// if nothing in it writes); returns its answers and why the commit failed,
/// if it did.
fn write_group(shared: &Shared, db: &Database, group: Vec<Item>) -> (Vec<Answer>, Option<String>) {
    let writes = group.iter().any(Item::writes);
    let txn = db.begin_write().map_err(|err| err.to_string());
    let answers: Vec<Answer> = group
        .into_iter()
        .filter_map(|item| {
            let txn = txn.as_ref().map_err(String::as_str);
            // A panicking operation drops its replies (its callers see
            // `Closed`) and must not take the group down with it.
            std::panic::catch_unwind(AssertUnwindSafe(|| item.apply(txn))).ok()
        })
        .collect();
    let commit_failed = match txn {
        Err(_) => None, // each operation was told already
        Ok(txn) if writes => commit(shared, txn),
        Ok(txn) => {
            if let Err(err) = txn.abort() {
                warn!(%err, "could not end a read-only checkpoint transaction");
            }
            None
        }
    };
    (answers, commit_failed)
}

/// Commits a group; why it failed, if it did.
fn commit(shared: &Shared, txn: WriteTransaction) -> Option<String> {
    if let Some(before) = &shared.before_commit {
        before();
    }
    shared.commits.fetch_add(1, Ordering::SeqCst);
    match std::panic::catch_unwind(AssertUnwindSafe(|| txn.commit())) {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(err.to_string()),
        Err(_) => Some("the commit panicked".to_owned()),
    }
}

/// Marks the queue ended when the thread ends, however it ends: a later
/// call is answered `Closed` at once instead of waiting forever.
struct Ended<'a>(&'a Shared);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.ended = true;
        // their replies go with them: `Closed`
        queue.items.clear();
        queue.line.clear();
    }
}

/// Withdraws a call's operations still waiting in line when its future is
/// dropped (nobody is left to hear their answers).
struct InLine {
    shared: Arc<Shared>,
    ticket: u64,
}

impl Drop for InLine {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        let before = queue.line.len();
        queue.line.retain(|waiting| waiting.ticket != self.ticket);
        if queue.line.len() != before {
            // the calls behind it may fit now (a write joining its job's
            // place needs none), and a closed store may be done
            queue.let_in(self.shared.bound);
            drop(queue);
            self.shared.work.notify_one();
        }
    }
}

/// How a store is opened: the defaults, or a test's.
struct Tuning {
    bound: usize,
    before_commit: Option<CommitHook>,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            bound: MAX_PENDING,
            before_commit: None,
        }
    }
}

impl EmbeddedStore {
    /// Opens the store in directory `dir` (created if missing), in the file
    /// [`DATABASE_FILE`], creating the database on first use.
    ///
    /// This blocks (it opens, and may repair, the file; and if a store of
    /// this process on the same file was dropped and is still writing what
    /// it was given, it waits for that to finish): call it at start-up,
    /// before the actix System runs actors, or from a blocking task.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_tuned(dir.as_ref(), Tuning::default())
    }

    fn open_tuned(dir: &Path, tuning: Tuning) -> Result<Self, StoreError> {
        let path = dir.join(DATABASE_FILE);
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|err| open_error(Box::new(err)))?;
        let canonical = std::fs::canonicalize(dir)
            .map_err(|err| open_error(Box::new(err)))?
            .join(DATABASE_FILE);
        wait_for_predecessor(&canonical);
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

        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            work: Condvar::new(),
            bound: tuning.bound.max(1),
            before_commit: tuning.before_commit,
            commits: AtomicU64::new(0),
        });
        let thread = std::thread::Builder::new()
            .name("lkagent-checkpoints".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    let _ended = Ended(&shared);
                    serve(&shared, &db);
                    drop(db); // the file is free once the thread has ended
                }
            })
            .map_err(|err| open_error(Box::new(err)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                canonical,
                clock: store::system_clock(),
                shared,
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

    /// Hands `entries` to the queue now, in order; what does not fit waits
    /// in line, withdrawn if the returned guard is dropped first.
    fn submit(&self, entries: Vec<Entry>) -> Option<InLine> {
        let shared = &self.inner.shared;
        let mut queue = shared.lock();
        if queue.ended {
            return None; // the replies go with the entries: `Closed`
        }
        let ticket = queue.enqueue(entries, shared.bound);
        drop(queue);
        shared.work.notify_one();
        ticket.map(|ticket| InLine {
            shared: shared.clone(),
            ticket,
        })
    }

    /// Queues `run` for the group's transaction now; the future waits for
    /// its answer, which comes after the commit.
    fn op<T: Send + 'static>(
        &self,
        touches: Touches,
        writes: bool,
        run: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let (reply, answer) = oneshot::channel();
        let run = Box::new(move |txn: Result<&WriteTransaction, &str>| -> Answer {
            let out = txn.map_err(failed).and_then(run);
            Box::new(move |commit_failed: Option<&str>| {
                let _ = reply.send(match commit_failed {
                    Some(failure) => Err(failed(failure)),
                    None => out,
                });
            })
        });
        let in_line = self.submit(vec![Entry::Op(Op {
            touches,
            writes,
            run,
        })]);
        Box::pin(async move {
            let _in_line = in_line;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    /// Every readable checkpoint, read in `txn`; with `orphaned_at`, only
    /// those whose holder has no heartbeat live at that time.
    fn scan(
        txn: &WriteTransaction,
        orphaned_at: Option<SystemTime>,
    ) -> Result<Vec<JobCheckpoint>, StoreError> {
        let read = || -> Result<_, redb::Error> {
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

    /// Places taken in the queue now.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.inner.shared.lock().pending
    }

    /// The most places ever taken at once.
    #[cfg(test)]
    fn most_pending(&self) -> usize {
        self.inner.shared.lock().most_pending
    }

    /// Calls waiting in line for a place.
    #[cfg(test)]
    fn in_line(&self) -> usize {
        self.inner.shared.lock().line.len()
    }

    /// Groups committed so far.
    #[cfg(test)]
    fn commits(&self) -> u64 {
        self.inner.shared.commits.load(Ordering::SeqCst)
    }
}

/// Waits until the thread of a dropped store of this process on the same
/// file (if any) has written what it was given and closed the file.
fn wait_for_predecessor(canonical: &Path) {
    let predecessors: Vec<JoinHandle<()>> = {
        let mut closing = CLOSING.lock().unwrap_or_else(PoisonError::into_inner);
        let (same, others) = std::mem::take(&mut *closing)
            .into_iter()
            .partition(|(path, _)| path == canonical);
        *closing = others;
        same.into_iter().map(|(_, thread)| thread).collect()
    };
    for thread in predecessors {
        let _ = thread.join();
    }
}

/// The stored record of `job_id` in `txn`, decoded.
fn stored(txn: &WriteTransaction, job_id: &str) -> Result<Option<JobCheckpoint>, StoreError> {
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
        // each record takes its job's place in the queue (or joins it); the
        // group commit makes the whole batch one sync to disk, or a few when
        // it is larger than the bound
        let (entries, answers): (Vec<_>, Vec<_>) = checkpoints
            .into_iter()
            .map(|checkpoint| {
                let (reply, answer) = oneshot::channel();
                let entry = Entry::Record {
                    job_id: checkpoint.job_id().to_owned(),
                    claim: checkpoint.claim().clone(),
                    write: RecordWrite::Put(Box::new(checkpoint), reply),
                };
                (entry, answer)
            })
            .unzip();
        let in_line = if entries.is_empty() {
            None
        } else {
            self.submit(entries)
        };
        Box::pin(async move {
            let _in_line = in_line;
            let mut results = Vec::with_capacity(answers.len());
            for answer in answers {
                results.push(answer.await.unwrap_or(Err(StoreError::Closed)));
            }
            Ok(results)
        })
    }

    fn get(&self, job_id: &str) -> StoreFuture<Option<JobCheckpoint>> {
        let job_id = job_id.to_owned();
        self.op(Touches::Job(job_id.clone()), false, move |txn| {
            stored(txn, &job_id)
        })
    }

    fn remove(&self, job_id: &str, claim: &Claim) -> StoreFuture<bool> {
        let (reply, answer) = oneshot::channel();
        let in_line = self.submit(vec![Entry::Record {
            job_id: job_id.to_owned(),
            claim: claim.clone(),
            write: RecordWrite::Remove(reply),
        }]);
        Box::pin(async move {
            let _in_line = in_line;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn list(&self) -> StoreFuture<Vec<JobCheckpoint>> {
        self.op(Touches::All, false, |txn| Self::scan(txn, None))
    }

    fn heartbeat(&self, worker: &str, ttl: Duration) -> StoreFuture<()> {
        let worker = worker.to_owned();
        let now = (self.inner.clock)();
        self.op(Touches::Nothing, true, move |txn| {
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
        self.op(Touches::Nothing, true, move |txn| {
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
        self.op(Touches::All, false, move |txn| Self::scan(txn, Some(now)))
    }

    fn claim(&self, job_id: &str, worker: &str) -> StoreFuture<Option<JobCheckpoint>> {
        let (job_id, worker) = (job_id.to_owned(), worker.to_owned());
        let now = (self.inner.clock)();
        self.op(Touches::Job(job_id.clone()), true, move |txn| {
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
    use std::sync::mpsc;

    use futures_util::FutureExt as _;

    use super::*;
    use crate::recovery::FinalRecord;
    use crate::recovery::checkpoint::tests::{at, job};
    use crate::recovery::store::contract;

    /// Set in the child process of the SIGKILL test: the directory to write
    /// into.
    const CHILD_DIR_ENV: &str = "LKAGENT_RECOVERY_KILL_CHILD_DIR";
    /// How long the SIGKILL test waits for its child to write.
    const CHILD_DEADLINE: Duration = Duration::from_secs(60);

    /// How long a test waits for the store's thread to get somewhere.
    const DEADLINE: Duration = Duration::from_secs(20);

    fn progress(id: &str, done_ms: u64) -> JobCheckpoint {
        let mut cp =
            JobCheckpoint::new(&job(id), format!("agent-{id}"), at(1_000)).with_owner("w1");
        cp.save("done_ms", &done_ms).unwrap();
        cp
    }

    /// The call's answer, which must come within the deadline.
    async fn answered<T>(call: StoreFuture<T>) -> Result<T, StoreError> {
        actix_rt::time::timeout(DEADLINE, call)
            .await
            .expect("the call was never answered")
    }

    fn done_ms(record: &JobCheckpoint) -> Option<u64> {
        record.load::<u64>("done_ms").unwrap()
    }

    /// The claim `progress` writes under.
    fn w1() -> Claim {
        Claim::new("w1", 0)
    }

    /// A slow disk: every commit waits at the gate until the test opens it
    /// (then, optionally, `delay` more), and the test can wait until
    /// commits have reached it.
    #[derive(Default)]
    struct Gate {
        state: Mutex<GateState>,
        changed: Condvar,
    }

    #[derive(Default)]
    struct GateState {
        open: bool,
        arrived: usize,
    }

    impl Gate {
        /// A store in `dir` whose commits go through this gate, then wait
        /// `delay`, with `bound` places in its queue.
        fn store(self: &Arc<Self>, dir: &Path, bound: usize, delay: Duration) -> EmbeddedStore {
            let gate = self.clone();
            let before_commit: CommitHook = Arc::new(move || {
                gate.pass();
                std::thread::sleep(delay); // the slow disk itself, not a test's wait
            });
            let tuning = Tuning {
                bound,
                before_commit: Some(before_commit),
            };
            EmbeddedStore::open_tuned(dir, tuning).unwrap()
        }

        fn pass(&self) {
            let mut state = self.state.lock().unwrap();
            state.arrived += 1;
            self.changed.notify_all();
            while !state.open {
                state = self.changed.wait(state).unwrap();
            }
        }

        fn open(&self) {
            self.state.lock().unwrap().open = true;
            self.changed.notify_all();
        }

        /// Waits until `n` commits have reached the gate.
        fn wait_arrived(&self, n: usize) {
            let state = self.state.lock().unwrap();
            let (state, wait) = self
                .changed
                .wait_timeout_while(state, DEADLINE, |state| state.arrived < n)
                .unwrap();
            assert!(
                !wait.timed_out(),
                "{} of {n} commits reached the disk",
                state.arrived
            );
        }
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
    async fn a_jobs_writes_in_a_row_collapse_into_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let store = gate.store(dir.path(), MAX_PENDING, Duration::ZERO);
        let first = store.put(&progress("AJ_1", 0));
        gate.wait_arrived(1); // the first write is on its way to disk
        let mut rest: Vec<_> = (1..=999).map(|n| store.put(&progress("AJ_1", n))).collect();
        assert_eq!(store.pending(), 2, "999 writes of one job share one place");
        assert_eq!(store.in_line(), 0);
        assert!(
            (&mut rest[0]).now_or_never().is_none(),
            "a replaced write is answered when the one that replaced it commits"
        );
        gate.open();
        answered(first).await.unwrap();
        for write in rest {
            answered(write).await.unwrap();
        }
        assert_eq!(
            store.commits(),
            2,
            "one commit for the first, one for the rest"
        );
        let last = store.get("AJ_1").await.unwrap().unwrap();
        assert_eq!(done_ms(&last), Some(999));
        assert_eq!(store.commits(), 2, "a read commits nothing");
        assert_eq!(store.pending(), 0);
    }

    #[actix_rt::test]
    async fn merged_writes_answer_as_if_applied_in_turn_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let store = gate.store(dir.path(), MAX_PENDING, Duration::ZERO);
        let first = store.put(&progress("AJ_x", 1));
        gate.wait_arrived(1);
        // all of these go to disk in the next group, in one commit
        let removed = store.remove("AJ_x", &w1()); // the first put landed before it
        let put_back = store.put(&progress("AJ_x", 2));
        let removed_again = store.remove("AJ_x", &w1());
        let removed_nothing = store.remove("AJ_x", &w1());
        let put_after_delete = store.put(&progress("AJ_x", 3));

        let y = store.put(&progress("AJ_y", 1));
        let mut other = progress("AJ_y", 2);
        other.set_claim(Claim::new("w2", 1));
        let y_other = store.put(&other); // another claim: its own place, refused
        let y_removed = store.remove("AJ_y", &w1()); // a delete after a put

        let z_nothing = store.remove("AJ_z", &w1());
        let z = store.put(&progress("AJ_z", 7));
        assert_eq!(
            store.pending(),
            6,
            "the first write's group, then x, y ×3, z"
        );

        gate.open();
        answered(first).await.unwrap();
        assert!(answered(removed).await.unwrap());
        answered(put_back).await.unwrap();
        assert!(answered(removed_again).await.unwrap());
        assert!(!answered(removed_nothing).await.unwrap());
        answered(put_after_delete).await.unwrap();
        answered(y).await.unwrap();
        assert!(
            matches!(answered(y_other).await, Err(StoreError::Fenced { ref holder, fence: 0, .. }) if holder == "w1"),
            "the write under another claim is refused, as it would have been alone"
        );
        assert!(answered(y_removed).await.unwrap());
        assert!(!answered(z_nothing).await.unwrap());
        answered(z).await.unwrap();
        assert_eq!(store.commits(), 2);

        let x = store
            .get("AJ_x")
            .await
            .unwrap()
            .expect("a put after a delete wins");
        assert_eq!(done_ms(&x), Some(3));
        assert_eq!(
            store.get("AJ_y").await.unwrap(),
            None,
            "a delete after a put wins"
        );
        let z = store.get("AJ_z").await.unwrap().unwrap();
        assert_eq!(done_ms(&z), Some(7));
    }

    #[actix_rt::test]
    async fn a_slow_disk_keeps_the_queue_within_its_bound_and_loses_no_final_write() {
        const BOUND: usize = 8;
        const JOBS: u64 = 64;
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let store = gate.store(dir.path(), BOUND, Duration::from_millis(2));
        let id = |job: u64| format!("AJ_{job}");
        let mut puts = Vec::new();
        let mut removals = Vec::new();
        // round by round over every job: three progress writes, then each
        // job's final write (its removal, or its record with a final
        // status); a tenth of the jobs are written again after removal
        for round in 1..=3 {
            for job in 0..JOBS {
                puts.push(store.put(&progress(&id(job), round)));
            }
        }
        for job in 0..JOBS {
            if job % 2 == 0 {
                removals.push(store.remove(&id(job), &w1()));
            } else {
                let mut last = progress(&id(job), 4);
                last.set_final_status(FinalRecord {
                    status: 3,
                    error: String::new(),
                });
                puts.push(store.put(&last));
            }
        }
        for job in (0..JOBS).step_by(10) {
            puts.push(store.put(&progress(&id(job), 5)));
        }
        assert_eq!(store.pending(), BOUND, "full while the disk holds");
        assert!(store.in_line() > 0, "the rest wait for room");

        gate.open();
        // awaited last to first: a call waiting in line is let in by the
        // store, not by its caller polling it
        for removal in removals.into_iter().rev() {
            assert!(
                answered(removal).await.unwrap(),
                "each removal found its record"
            );
        }
        for put in puts.into_iter().rev() {
            answered(put).await.unwrap();
        }
        assert_eq!(store.most_pending(), BOUND, "never more than the bound");
        assert_eq!(store.in_line(), 0);
        for job in 0..JOBS {
            let record = store.get(&id(job)).await.unwrap();
            match (job % 10 == 0, job % 2 == 0) {
                (true, _) => assert_eq!(record.as_ref().and_then(done_ms), Some(5), "{job}"),
                (false, true) => assert_eq!(record, None, "job {job} was removed"),
                (false, false) => {
                    let record = record.expect("the final record");
                    assert_eq!(done_ms(&record), Some(4), "{job}");
                    assert!(record.final_status().is_some(), "{job}");
                }
            }
        }
    }

    #[actix_rt::test]
    async fn a_call_waiting_in_line_is_withdrawn_when_its_future_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let store = gate.store(dir.path(), 2, Duration::ZERO);
        let first = store.put(&progress("AJ_a", 1));
        gate.wait_arrived(1);
        let queued = store.put(&progress("AJ_c", 1)); // the second place
        let waiting = store.put(&progress("AJ_b", 1));
        // could join AJ_c's place, but waits behind AJ_b: call order
        let behind = store.put(&progress("AJ_c", 2));
        assert_eq!(store.in_line(), 2);
        drop(waiting);
        assert_eq!(store.in_line(), 0, "AJ_c's second write joined its place");
        assert_eq!(store.pending(), 2);
        gate.open();
        answered(first).await.unwrap();
        answered(queued).await.unwrap();
        answered(behind).await.unwrap();
        assert_eq!(store.get("AJ_b").await.unwrap(), None, "withdrawn");
        let c = store.get("AJ_c").await.unwrap().unwrap();
        assert_eq!(done_ms(&c), Some(2));
    }

    #[actix_rt::test]
    async fn dropping_the_store_does_not_wait_for_the_disk_and_what_it_was_given_still_lands() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let store = gate.store(dir.path(), 2, Duration::ZERO);
        let first = store.put(&progress("AJ_1", 1));
        gate.wait_arrived(1);
        let calls = vec![
            store.put(&progress("AJ_2", 2)),
            store.put(&progress("AJ_3", 3)), // waits in line: the bound is 2
            store.put(&progress("AJ_1", 4)),
        ];
        let removal = store.remove("AJ_2", &w1());
        assert!(store.in_line() > 0);

        // the last handle goes while a commit is held at the gate
        let (dropped, returned) = mpsc::channel();
        std::thread::spawn(move || {
            drop(store);
            let _ = dropped.send(());
        });
        returned
            .recv_timeout(DEADLINE)
            .expect("dropping the store returns while its disk is busy");

        // opening the same file waits for the dropped store to finish
        let (opened, reopened) = mpsc::channel();
        let path = dir.path().to_owned();
        std::thread::spawn(move || {
            let _ = opened.send(EmbeddedStore::open(path));
        });
        assert!(
            matches!(
                reopened.recv_timeout(Duration::from_millis(200)),
                Err(mpsc::RecvTimeoutError::Timeout)
            ),
            "the file is still the dropped store's"
        );
        gate.open();
        let store = reopened.recv_timeout(DEADLINE).unwrap().unwrap();
        answered(first).await.unwrap();
        for call in calls {
            answered(call).await.unwrap();
        }
        assert!(answered(removal).await.unwrap());
        let one = store.get("AJ_1").await.unwrap().unwrap();
        assert_eq!(done_ms(&one), Some(4));
        assert_eq!(store.get("AJ_2").await.unwrap(), None, "the removal landed");
        let three = store.get("AJ_3").await.unwrap().unwrap();
        assert_eq!(done_ms(&three), Some(3));
    }

    #[actix_rt::test]
    async fn an_unreadable_record_is_an_error_for_get_and_skipped_by_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put(&progress("AJ_1", 1)).await.unwrap();
        store
            .op(Touches::All, true, |txn| {
                txn.open_table(CHECKPOINTS)
                    .map_err(StoreError::backend)?
                    .insert("AJ_bad", br#"{"format":99}"#.as_slice())
                    .map_err(StoreError::backend)?;
                Ok(())
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
