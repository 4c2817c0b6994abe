//! [`JobQueue`]: the jobs accepted but not yet started, in the order they
//! will start.
//!
//! A binary heap keyed on (priority, arrival): the most urgent job leaves
//! first, and among jobs of one priority the one that came first — a
//! sequence number, not the arrival time, breaks ties, so two jobs pushed at
//! the same `now` still leave in push order. The queue is bounded: past its
//! capacity `push` hands the job back instead of growing without limit while
//! the worker is saturated. Time is passed in (`now`), never read, so waits
//! and expiry are tested on simulated time.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::priority::JobPriority;

/// The default capacity of a [`JobQueue`]. A queued job holds a room
/// waiting for its agent: a thousand is minutes of backlog for a busy
/// worker, beyond which the job is better offered to another worker than
/// kept waiting here.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1000;

/// The queue was full: the job was not queued and is handed back.
#[derive(Debug, thiserror::Error)]
#[error(
    "the job queue is full ({capacity} jobs waiting): decline the job, or raise the queue capacity"
)]
pub struct QueueFull<T> {
    /// The job that was not queued, returned to the caller.
    pub item: T,
    /// The queue's capacity.
    pub capacity: usize,
}

impl<T> QueueFull<T> {
    /// The job that was not queued.
    pub fn into_inner(self) -> T {
        self.item
    }
}

/// A job taken out of the queue, with what the queue knew about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued<T> {
    /// The job.
    pub item: T,
    /// The priority it was queued with.
    pub priority: JobPriority,
    /// The `now` it was pushed at: the wait is `now - enqueued_at`.
    pub enqueued_at: Instant,
}

/// How full the queue is, for metrics and `/worker`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs waiting per priority, indexed as [`JobPriority::ALL`].
    depth: [usize; 4],
    /// How long the job that has waited longest has waited; `None` when the
    /// queue is empty.
    pub oldest_wait: Option<Duration>,
}

impl QueueStats {
    /// Jobs of this priority waiting.
    pub fn depth(&self, priority: JobPriority) -> usize {
        self.depth[priority.index()]
    }

    /// Jobs waiting in all.
    pub fn total(&self) -> usize {
        self.depth.iter().sum()
    }
}

/// One heap entry. Ordered so that the heap's maximum is the next to leave:
/// higher priority first, then lower sequence number (earlier push).
#[derive(Debug)]
struct Entry<T> {
    priority: JobPriority,
    seq: u64,
    enqueued_at: Instant,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl<T> From<Entry<T>> for Queued<T> {
    fn from(entry: Entry<T>) -> Self {
        Self {
            item: entry.item,
            priority: entry.priority,
            enqueued_at: entry.enqueued_at,
        }
    }
}

/// A bounded priority queue: highest priority first, first in first out
/// within a priority. See the module docs.
#[derive(Debug)]
pub struct JobQueue<T> {
    heap: BinaryHeap<Entry<T>>,
    capacity: usize,
    /// The next push's sequence number; a `u64` does not wrap in practice.
    next_seq: u64,
}

impl<T> Default for JobQueue<T> {
    /// An empty queue of [`DEFAULT_QUEUE_CAPACITY`].
    fn default() -> Self {
        Self::new(DEFAULT_QUEUE_CAPACITY)
    }
}

impl<T> JobQueue<T> {
    /// An empty queue holding at most `capacity` jobs (0: every push is
    /// refused, which turns queueing off).
    pub fn new(capacity: usize) -> Self {
        Self {
            heap: BinaryHeap::with_capacity(capacity.min(DEFAULT_QUEUE_CAPACITY)),
            capacity,
            next_seq: 0,
        }
    }

    /// Queues `item` at `priority`, pushed at `now`. Past the capacity the
    /// item is handed back in the error.
    pub fn push(
        &mut self,
        item: T,
        priority: JobPriority,
        now: Instant,
    ) -> Result<(), QueueFull<T>> {
        if self.heap.len() >= self.capacity {
            return Err(QueueFull {
                item,
                capacity: self.capacity,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry {
            priority,
            seq,
            enqueued_at: now,
            item,
        });
        Ok(())
    }

    /// Takes out the next job to start: the highest priority, the earliest
    /// pushed among those.
    pub fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|entry| entry.item)
    }

    /// Like [`pop`](Self::pop), with the job's priority and push time (for
    /// the wait-time metric).
    pub fn pop_entry(&mut self) -> Option<Queued<T>> {
        self.heap.pop().map(Queued::from)
    }

    /// The priority of the job [`pop`](Self::pop) would return.
    pub fn peek_priority(&self) -> Option<JobPriority> {
        self.heap.peek().map(|entry| entry.priority)
    }

    /// Takes out every job that has waited longer than `max_wait` at `now`,
    /// the longest-waiting first, so the caller can fail them. A job that
    /// has waited exactly `max_wait` stays.
    pub fn expire(&mut self, now: Instant, max_wait: Duration) -> Vec<T> {
        let waited_too_long =
            |entry: &Entry<T>| now.saturating_duration_since(entry.enqueued_at) > max_wait;
        // the common case, nothing expired, costs one scan and no rebuild
        if !self.heap.iter().any(waited_too_long) {
            return Vec::new();
        }
        let (mut expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap)
            .into_iter()
            .partition(waited_too_long);
        self.heap = BinaryHeap::from(kept);
        expired.sort_by_key(|entry| (entry.enqueued_at, entry.seq));
        expired.into_iter().map(|entry| entry.item).collect()
    }

    /// Takes out every job for which `matches` is true (a cancelled job,
    /// found by its id), in the order they would have started.
    pub fn remove(&mut self, mut matches: impl FnMut(&T) -> bool) -> Vec<T> {
        if !self.heap.iter().any(|entry| matches(&entry.item)) {
            return Vec::new();
        }
        let (removed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap)
            .into_iter()
            .partition(|entry| matches(&entry.item));
        self.heap = BinaryHeap::from(kept);
        let mut removed = BinaryHeap::from(removed);
        std::iter::from_fn(|| removed.pop().map(|entry| entry.item)).collect()
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no job is waiting.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The most jobs the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// True when the next push would be refused.
    pub fn is_full(&self) -> bool {
        self.heap.len() >= self.capacity
    }

    /// Depth per priority and the longest wait, at `now`.
    pub fn stats(&self, now: Instant) -> QueueStats {
        let mut stats = QueueStats::default();
        for entry in &self.heap {
            stats.depth[entry.priority.index()] += 1;
            let wait = now.saturating_duration_since(entry.enqueued_at);
            stats.oldest_wait = Some(stats.oldest_wait.map_or(wait, |w| w.max(wait)));
        }
        stats
    }

    /// The queued jobs, in no particular order (for `/worker` listings).
    pub fn iter(&self) -> impl Iterator<Item = (&T, JobPriority)> {
        self.heap.iter().map(|entry| (&entry.item, entry.priority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobPriority::*;

    fn drain<T>(queue: &mut JobQueue<T>) -> Vec<T> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn highest_priority_first_then_first_in_first_out() {
        let t0 = Instant::now();
        let mut queue = JobQueue::default();
        let pushes = [
            ("low-1", Low),
            ("normal-1", Normal),
            ("urgent-1", Urgent),
            ("low-2", Low),
            ("high-1", High),
            ("normal-2", Normal),
            ("urgent-2", Urgent),
            ("high-2", High),
        ];
        for (name, priority) in pushes {
            // all at the same instant: the sequence number breaks the tie
            queue.push(name, priority, t0).unwrap();
        }
        assert_eq!(queue.peek_priority(), Some(Urgent));
        assert_eq!(
            drain(&mut queue),
            [
                "urgent-1", "urgent-2", "high-1", "high-2", "normal-1", "normal-2", "low-1",
                "low-2"
            ]
        );
        assert!(queue.pop().is_none());
    }

    #[test]
    fn a_job_queued_later_with_a_higher_priority_overtakes() {
        let t0 = Instant::now();
        let mut queue = JobQueue::default();
        queue.push("low", Low, t0).unwrap();
        queue
            .push("urgent", Urgent, t0 + Duration::from_secs(5))
            .unwrap();
        queue
            .push("normal", Normal, t0 + Duration::from_secs(9))
            .unwrap();
        let first = queue.pop_entry().unwrap();
        assert_eq!(first.item, "urgent");
        assert_eq!(first.priority, Urgent);
        assert_eq!(first.enqueued_at, t0 + Duration::from_secs(5));
        assert_eq!(drain(&mut queue), ["normal", "low"]);
    }

    #[test]
    fn past_capacity_the_job_is_handed_back() {
        let t0 = Instant::now();
        let mut queue = JobQueue::new(2);
        queue.push(1, Low, t0).unwrap();
        queue.push(2, Low, t0).unwrap();
        assert!(queue.is_full());
        let err = queue.push(3, Urgent, t0).unwrap_err();
        assert_eq!(err.capacity, 2);
        assert!(err.to_string().contains("full (2 jobs waiting)"));
        assert_eq!(err.into_inner(), 3);
        assert_eq!(queue.len(), 2);
        queue.pop();
        queue.push(3, Urgent, t0).unwrap();
        assert_eq!(queue.pop(), Some(3));
    }

    #[test]
    fn the_default_capacity_is_a_thousand() {
        let t0 = Instant::now();
        let mut queue = JobQueue::default();
        for i in 0..DEFAULT_QUEUE_CAPACITY {
            queue.push(i, Normal, t0).unwrap();
        }
        assert_eq!(queue.capacity(), 1000);
        assert!(queue.push(usize::MAX, Urgent, t0).is_err());
    }

    #[test]
    fn a_zero_capacity_queue_refuses_everything() {
        let mut queue = JobQueue::new(0);
        assert!(queue.push((), Urgent, Instant::now()).is_err());
        assert!(queue.is_empty());
    }

    #[test]
    fn expiry_takes_out_jobs_older_than_the_maximum_oldest_first() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut queue = JobQueue::default();
        queue.push("urgent-old", Urgent, t0 + secs(2)).unwrap();
        queue.push("low-oldest", Low, t0).unwrap();
        queue.push("normal-exact", Normal, t0 + secs(5)).unwrap();
        queue.push("high-new", High, t0 + secs(20)).unwrap();

        let now = t0 + secs(35);
        assert!(queue.expire(t0 + secs(10), secs(30)).is_empty());
        // waits: low 35 s, urgent 33 s, normal exactly 30 s, high 15 s
        assert_eq!(queue.expire(now, secs(30)), ["low-oldest", "urgent-old"]);
        assert_eq!(queue.len(), 2);
        assert_eq!(drain(&mut queue), ["high-new", "normal-exact"]);
    }

    #[test]
    fn expiry_of_same_instant_jobs_keeps_push_order() {
        let t0 = Instant::now();
        let mut queue = JobQueue::default();
        queue.push("a", Low, t0).unwrap();
        queue.push("b", Urgent, t0).unwrap();
        queue.push("c", Normal, t0).unwrap();
        let later = t0 + Duration::from_secs(2);
        assert_eq!(queue.expire(later, Duration::from_secs(1)), ["a", "b", "c"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn remove_takes_out_a_cancelled_job_and_keeps_the_order() {
        let t0 = Instant::now();
        let mut queue = JobQueue::default();
        for (id, priority) in [(1, Low), (2, High), (3, Normal), (4, High), (5, Urgent)] {
            queue.push(id, priority, t0).unwrap();
        }
        assert_eq!(queue.remove(|&id| id == 3), [3]);
        assert!(queue.remove(|&id| id == 42).is_empty());
        assert_eq!(queue.remove(|&id| id % 2 == 0), [2, 4]);
        assert_eq!(drain(&mut queue), [5, 1]);
    }

    #[test]
    fn stats_count_each_priority_and_the_longest_wait() {
        let t0 = Instant::now();
        let mut queue = JobQueue::default();
        assert_eq!(queue.stats(t0), QueueStats::default());
        assert_eq!(queue.stats(t0).oldest_wait, None);

        queue.push("a", High, t0 + Duration::from_secs(3)).unwrap();
        queue.push("b", Low, t0 + Duration::from_secs(1)).unwrap();
        queue.push("c", High, t0 + Duration::from_secs(4)).unwrap();
        let stats = queue.stats(t0 + Duration::from_secs(10));
        assert_eq!(stats.depth(High), 2);
        assert_eq!(stats.depth(Low), 1);
        assert_eq!(stats.depth(Normal), 0);
        assert_eq!(stats.depth(Urgent), 0);
        assert_eq!(stats.total(), 3);
        assert_eq!(stats.oldest_wait, Some(Duration::from_secs(9)));
        // a `now` before a push counts as no wait, not a panic
        assert_eq!(queue.stats(t0).oldest_wait, Some(Duration::ZERO));
        assert_eq!(queue.iter().count(), 3);
    }
}
