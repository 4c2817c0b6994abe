//! QueueActor: the priority order of the jobs waiting for a slot.
//!
//! It owns the [`JobQueue`] heap of job ids — highest priority first, FIFO
//! within a priority, bounded — and nothing else: a queued job is a row of
//! the WorkerActor's job table like any other, and the worker decides when a
//! slot is free. The worker enqueues a job it placed in the queue, asks for
//! the next one ([`TakeNext`]) when a slot frees, and takes out one that
//! ended while waiting ([`Dequeue`]). On a timer the queue hands back the jobs
//! that waited longer than the maximum wait ([`QueuedJobsExpired`]).
//!
//! If it dies, the worker starts a new one and enqueues the table's queued
//! rows again, in their order and with their original queueing times.

use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, warn};

use super::messages::*;
use super::supervision::Link;
use crate::queue::JobQueue;

/// How often the queue looks for jobs that waited too long, at most.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// Holds the order of the queued jobs.
pub struct QueueActor {
    queue: JobQueue<String>,
    max_wait: Duration,
    link: Link,
}

impl QueueActor {
    pub(crate) fn new(capacity: usize, max_wait: Duration, link: Link) -> Self {
        Self {
            queue: JobQueue::new(capacity),
            max_wait,
            link,
        }
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // check often enough that no job waits much past its limit
        let max_wait = self.max_wait;
        let every = (max_wait / 4).clamp(Duration::from_millis(10), EXPIRY_CHECK);
        ctx.run_interval(every, move |act, _ctx| {
            let expired = act.queue.expire(Instant::now(), max_wait);
            if !expired.is_empty() {
                warn!(
                    jobs = expired.len(),
                    ?max_wait,
                    "queued jobs waited too long"
                );
                act.link.worker().do_send(QueuedJobsExpired {
                    job_ids: expired,
                    max_wait,
                });
            }
        });
    }
}

impl Handler<Enqueue> for QueueActor {
    type Result = bool;

    fn handle(&mut self, msg: Enqueue, _ctx: &mut Self::Context) -> bool {
        let Enqueue {
            job_id,
            priority,
            since,
        } = msg;
        match self.queue.push(job_id, priority, since) {
            Ok(()) => {
                debug!(%priority, depth = self.queue.len(), "job queued");
                true
            }
            Err(full) => {
                warn!(job_id = full.item, "the queue is full");
                false
            }
        }
    }
}

impl Handler<TakeNext> for QueueActor {
    type Result = Option<String>;

    fn handle(&mut self, _msg: TakeNext, _ctx: &mut Self::Context) -> Self::Result {
        self.queue.pop()
    }
}

impl Handler<Dequeue> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: Dequeue, _ctx: &mut Self::Context) {
        self.queue.remove(|id| *id == msg.job_id);
    }
}

impl Handler<GetQueueStats> for QueueActor {
    type Result = MessageResult<GetQueueStats>;

    fn handle(&mut self, _msg: GetQueueStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.queue.stats(Instant::now()))
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<Panic> for QueueActor {
    type Result = ();

    fn handle(&mut self, _msg: Panic, _ctx: &mut Self::Context) {
        panic!("injected fault: the queue actor panics");
    }
}
