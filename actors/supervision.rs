//! The link between a child actor and the WorkerActor, OTP-style.
//!
//! actix does not catch a panic in a handler: the actor's task unwinds and
//! the actor is dropped (its `stopping`/`stopped` may or may not run). So
//! every child holds a [`Link`] as a field, whose `Drop` does one thing that
//! cannot fail — it queues a [`ChildExited`] for the worker — and the worker's
//! policy decides what happens next. Whatever ends the child (a deliberate
//! stop, a socket failure, a panic in its own code, its arbiter shutting
//! down), the worker hears of it exactly once per incarnation.

use std::time::Instant;

use actix::prelude::*;

use super::messages::{Child, ChildExited, ConnectionExit};
use super::worker::WorkerActor;
use crate::recovery::{RestartDecision, RestartPolicy};

/// Held by a child; tells the worker when the child is dropped.
pub(crate) struct Link {
    worker: Addr<WorkerActor>,
    child: Child,
    generation: u64,
    reason: Option<ConnectionExit>,
}

impl Link {
    /// A link for incarnation `generation` of `child`.
    pub(crate) fn new(worker: Addr<WorkerActor>, child: Child, generation: u64) -> Self {
        Self {
            worker,
            child,
            generation,
            reason: None,
        }
    }

    /// Says why the child is about to stop (the first reason given wins).
    pub(crate) fn set_reason(&mut self, reason: ConnectionExit) {
        self.reason.get_or_insert(reason);
    }

    /// The worker this child reports to.
    pub(crate) fn worker(&self) -> &Addr<WorkerActor> {
        &self.worker
    }

    /// This incarnation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // queueing a message cannot panic; a worker that is gone just does
        // not receive it
        self.worker.do_send(ChildExited {
            child: self.child.clone(),
            generation: self.generation,
            panicked: std::thread::panicking(),
            reason: self.reason.take(),
        });
    }
}

/// The WorkerActor's side of one long-lived child (connection, reporter,
/// queue): its address, its incarnation, and its restart intensity.
pub(crate) struct ChildSlot<A: Actor> {
    /// The live incarnation, if any.
    pub addr: Option<Addr<A>>,
    /// The live (or last) incarnation's number.
    pub generation: u64,
    crashes: RestartPolicy,
}

impl<A: Actor> ChildSlot<A> {
    /// An empty slot whose crashes are limited by `policy`.
    pub(crate) fn new(policy: RestartPolicy) -> Self {
        Self {
            addr: None,
            generation: 0,
            crashes: policy,
        }
    }

    /// Records a new incarnation.
    pub(crate) fn started(&mut self, addr: Addr<A>, generation: u64) {
        self.addr = Some(addr);
        self.generation = generation;
    }

    /// True when `generation` is the live incarnation (an exit of an older
    /// one is stale).
    pub(crate) fn is_current(&self, generation: u64) -> bool {
        self.addr.is_some() && self.generation == generation
    }

    /// The child crashed at `now`: restart it (after a delay) or give up.
    pub(crate) fn crashed(&mut self, now: Instant) -> RestartDecision {
        self.addr = None;
        self.crashes.on_failure_jittered(now, rand::random::<f64>())
    }
}
