//! The arbiters jobs run on.

use super::*;

/// The arbiters jobs run on, stopped when the worker goes away.
pub(super) struct JobThreads {
    arbiters: Vec<Arbiter>,
    next: usize,
}

impl JobThreads {
    pub(super) fn new(count: usize) -> Self {
        let count = if count == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            count
        };
        Self {
            arbiters: (0..count).map(|_| Arbiter::new()).collect(),
            next: 0,
        }
    }

    pub(super) fn pick(&mut self) -> ArbiterHandle {
        let handle = self.arbiters[self.next % self.arbiters.len()].handle();
        self.next = self.next.wrapping_add(1);
        handle
    }
}

impl Drop for JobThreads {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}
