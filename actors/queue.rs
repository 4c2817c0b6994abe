//! QueueActor: accepted jobs waiting for a slot.
//!
//! It owns the [`JobQueue`] heap — highest priority first, FIFO within a
//! priority, bounded — and nothing else. The WorkerActor owns the slots: it
//! enqueues a job it accepted when no slot is free, and asks for the next
//! one ([`TakeNext`]) whenever a slot frees. On a timer the queue fails the
//! jobs that waited longer than the maximum wait, handing them back to the
//! worker ([`QueuedJobsExpired`]) to report.

use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, warn};

use super::messages::*;
use super::worker::WorkerActor;
use crate::queue::JobQueue;

/// How often the queue looks for jobs that waited too long, at most.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// Holds accepted jobs until a slot frees.
pub struct QueueActor {
    queue: JobQueue<JobLaunch>,
    max_wait: Option<Duration>,
    worker: Addr<WorkerActor>,
}

impl QueueActor {
    pub(crate) fn new(
        capacity: usize,
        max_wait: Option<Duration>,
        worker: Addr<WorkerActor>,
    ) -> Self {
        Self {
            queue: JobQueue::new(capacity),
            max_wait,
            worker,
        }
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(max_wait) = self.max_wait {
            // check often enough that no job waits much past its limit
            let every = (max_wait / 4).clamp(Duration::from_millis(10), EXPIRY_CHECK);
            ctx.run_interval(every, move |act, _ctx| {
                let expired = act.queue.expire(Instant::now(), max_wait);
                if !expired.is_empty() {
                    warn!(
                        jobs = expired.len(),
                        ?max_wait,
                        "queued jobs waited too long"
                    );
                    act.worker.do_send(QueuedJobsExpired {
                        launches: expired,
                        max_wait,
                    });
                }
            });
        }
    }
}

impl Handler<Enqueue> for QueueActor {
    type Result = Result<usize, JobLaunch>;

    fn handle(&mut self, msg: Enqueue, _ctx: &mut Self::Context) -> Self::Result {
        let job_id = msg.launch.job.id.clone();
        match self.queue.push(msg.launch, msg.priority, Instant::now()) {
            Ok(()) => {
                debug!(job_id, priority = %msg.priority, depth = self.queue.len(), "job queued");
                Ok(self.queue.len())
            }
            Err(full) => Err(full.into_inner()),
        }
    }
}

impl Handler<TakeNext> for QueueActor {
    type Result = Option<JobLaunch>;

    fn handle(&mut self, _msg: TakeNext, _ctx: &mut Self::Context) -> Self::Result {
        self.queue.pop()
    }
}

impl Handler<GetQueueStats> for QueueActor {
    type Result = MessageResult<GetQueueStats>;

    fn handle(&mut self, _msg: GetQueueStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.queue.stats(Instant::now()))
    }
}
