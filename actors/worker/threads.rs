//! The arbiters (threads) a worker's children run on, stopped with it.
//!
//! - one for the connection, where no user code ever runs, so a handler
//!   that blocks cannot delay a pong or a status;
//! - one in the background for the load reporter (sampling, `/proc`, the
//!   user's load calculator) and the queue;
//! - a few for the handler's `on_request` hooks: each offer's decision runs on
//!   the one with the fewest decisions in flight, so one hook that blocks
//!   its thread does not hold up the answers for other jobs (shutdown hooks
//!   get a thread of their own each, in `shutdown.rs`);
//! - one per core (or as configured) for the JobActors.
//!
//! Dropping `Threads` stops every one of them, and every actor on them: a
//! worker that dies leaves no child behind that would go on answering the
//! server.

use actix::prelude::*;

/// The most `on_request` decisions waiting on one hook thread. A decision
/// is normally over in microseconds; this many in flight means the hook
/// blocks, and a further offer is declined at once rather than queued
/// behind it without bound.
pub(super) const MAX_DECISIONS_PER_HOOK_THREAD: usize = 256;

pub(super) struct Threads {
    connection: Arbiter,
    background: Arbiter,
    /// The hook arbiters, with the decisions in flight on each.
    hooks: Vec<(Arbiter, usize)>,
    jobs: Vec<Arbiter>,
    next_job: usize,
}

impl Threads {
    /// `jobs` job arbiters (0: one per core) and `hooks` hook arbiters (at
    /// least one).
    pub(super) fn new(jobs: usize, hooks: usize) -> Self {
        let jobs = if jobs == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            jobs
        };
        Self {
            connection: Arbiter::new(),
            background: Arbiter::new(),
            hooks: (0..hooks.max(1)).map(|_| (Arbiter::new(), 0)).collect(),
            jobs: (0..jobs).map(|_| Arbiter::new()).collect(),
            next_job: 0,
        }
    }

    /// The connection's arbiter.
    pub(super) fn connection(&self) -> ArbiterHandle {
        self.connection.handle()
    }

    /// The background arbiter.
    pub(super) fn background(&self) -> ArbiterHandle {
        self.background.handle()
    }

    /// The next job arbiter, round robin.
    pub(super) fn job(&mut self) -> ArbiterHandle {
        let handle = self.jobs[self.next_job % self.jobs.len()].handle();
        self.next_job = self.next_job.wrapping_add(1);
        handle
    }

    /// The hook arbiter with the fewest decisions in flight, counted as one
    /// more until [`hook_done`](Self::hook_done); `None` when every one has
    /// [`MAX_DECISIONS_PER_HOOK_THREAD`].
    pub(super) fn hook(&mut self) -> Option<(usize, ArbiterHandle)> {
        let (index, (arbiter, in_flight)) = self
            .hooks
            .iter_mut()
            .enumerate()
            .min_by_key(|(_, (_, in_flight))| *in_flight)?;
        if *in_flight >= MAX_DECISIONS_PER_HOOK_THREAD {
            return None;
        }
        *in_flight += 1;
        Some((index, arbiter.handle()))
    }

    /// A decision on hook arbiter `index` has finished.
    pub(super) fn hook_done(&mut self, index: usize) {
        if let Some((_, in_flight)) = self.hooks.get_mut(index) {
            *in_flight = in_flight.saturating_sub(1);
        }
    }
}

impl Threads {
    /// Stops every arbiter, and every actor on them.
    pub(super) fn stop(&self) {
        self.connection.stop();
        self.background.stop();
        for (arbiter, _) in &self.hooks {
            arbiter.stop();
        }
        for arbiter in &self.jobs {
            arbiter.stop();
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop();
    }
}
