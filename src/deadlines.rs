//! Many timeouts behind one timer.
//!
//! An actix actor's context polls every timer it holds each time the actor
//! wakes, so an actor that arms one timer per offer pays for all of them on
//! every message: at a few thousand offers a second with timeouts of
//! seconds, tens of thousands of timers, and the worker's thread spent
//! polling them (the benchmark's profile showed exactly that). The worker
//! keeps its offers' timeouts here instead and arms one timer, for the
//! earliest.
//!
//! Entries are not removed when what they guard resolves early: the
//! handler of a due entry checks whether it still applies, as a timer
//! closure would. So the queue holds at most the entries pushed within the
//! longest timeout — bounded by the offer rate times that timeout.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

/// Keys due at instants, earliest first; equal instants in push order.
#[derive(Debug)]
pub(crate) struct Deadlines<K> {
    heap: BinaryHeap<Reverse<Entry<K>>>,
    pushed: u64,
}

#[derive(Debug)]
struct Entry<K> {
    at: Instant,
    seq: u64,
    key: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<K> Eq for Entry<K> {}

impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K> Ord for Entry<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<K> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            heap: BinaryHeap::new(),
            pushed: 0,
        }
    }
}

impl<K> Deadlines<K> {
    /// Adds `key`, due at `at`. True when it is now the earliest entry, so
    /// the one timer must be armed again, sooner.
    pub(crate) fn push(&mut self, at: Instant, key: K) -> bool {
        let earliest = self.next().is_none_or(|next| at < next);
        self.pushed += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.pushed,
            key,
        }));
        earliest
    }

    /// When the earliest entry is due.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(entry)| entry.at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<K> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(entry)| entry.key)
    }

    /// How many entries wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn entries_come_out_earliest_first_and_only_when_due() {
        let base = Instant::now();
        let mut deadlines = Deadlines::default();
        assert!(deadlines.push(at(base, 30), "c"));
        assert!(deadlines.push(at(base, 10), "a"), "earlier: re-arm");
        assert!(
            !deadlines.push(at(base, 20), "b"),
            "later: the timer stands"
        );
        assert_eq!(deadlines.next(), Some(at(base, 10)));
        assert_eq!(deadlines.pop_due(at(base, 5)), None);
        assert_eq!(deadlines.pop_due(at(base, 25)), Some("a"));
        assert_eq!(deadlines.pop_due(at(base, 25)), Some("b"));
        assert_eq!(deadlines.pop_due(at(base, 25)), None);
        assert_eq!(deadlines.len(), 1);
        assert_eq!(deadlines.pop_due(at(base, 30)), Some("c"));
        assert_eq!(deadlines.next(), None);
        assert_eq!(deadlines.pop_due(at(base, 99)), None);
    }

    #[test]
    fn equal_instants_keep_push_order() {
        let base = Instant::now();
        let mut deadlines = Deadlines::default();
        for key in 0..100 {
            deadlines.push(at(base, 10), key);
        }
        let out: Vec<i32> = std::iter::from_fn(|| deadlines.pop_due(at(base, 10))).collect();
        assert_eq!(out, (0..100).collect::<Vec<_>>());
    }
}
