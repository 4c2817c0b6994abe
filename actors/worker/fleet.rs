//! The fleet's queue: a worker given one (`WorkerBuilder::fleet_queue`)
//! pulls jobs when a slot is free and nothing of its own waits, admits each
//! through the job table like a `SpawnJob` (origin `Fleet`), and puts back
//! what it cannot start. Its orphan scan also re-delivers the items of
//! workers that vanished before starting them.

use actix::fut::wrap_future;
use tracing::{error, info, warn};

use super::*;
use crate::jobs::JobOrigin;

impl WorkerActor {
    /// Pulls as many jobs as there are free slots (at most
    /// `fleet::MAX_PULL`), one pull at a time; none while stopping, under
    /// memory pressure, or while jobs of the worker's own wait.
    pub(super) fn pull_from_fleet(&mut self, ctx: &mut Context<Self>) {
        let Some(queue) = &self.fleet else {
            return;
        };
        if self.fleet_pull_pending
            || self.shutting_down()
            || matches!(self.memory, UsageState::Pressure | UsageState::Exceeded)
            || self.table.counts().queued > 0
        {
            return;
        }
        let slots = self.slots();
        let free = slots.free();
        if free == 0 {
            return;
        }
        self.fleet_pull_pending = true;
        let pull = queue.pull(
            &self.options.instance_id,
            free,
            self.options.fleet_visibility,
        );
        ctx.spawn(wrap_future(pull).map(move |pulled, act: &mut Self, ctx| {
            act.fleet_pull_pending = false;
            match pulled {
                Ok(jobs) => {
                    let full = jobs.len() == free.min(crate::fleet::MAX_PULL);
                    for job in jobs {
                        act.admit_pulled(job, ctx);
                    }
                    if full {
                        // more may wait: pull again now rather than at the
                        // next interval
                        act.pull_from_fleet(ctx);
                    }
                }
                Err(err) => warn!(%err, "cannot pull from the fleet's queue"),
            }
        }));
    }

    /// Admits one pulled job; what cannot start here goes back to the queue
    /// (a slot taken meanwhile, a token that cannot be minted now), what can
    /// start nowhere is dropped from it with an error.
    fn admit_pulled(&mut self, job: SpawnJob, ctx: &mut Context<Self>) {
        let Some(job_id) = job.id.clone() else {
            error!("a job from the fleet's queue without an id: ignored");
            return;
        };
        let Some(queue) = self.fleet.clone() else {
            return;
        };
        match self.spawn_job(job, JobOrigin::Fleet, ctx) {
            SpawnOutcome::Started { .. } | SpawnOutcome::Queued { .. } => {}
            SpawnOutcome::Refused {
                reason: SpawnRefusal::Duplicate(_),
            } => {
                // it runs here already (re-delivered while this worker still
                // had it): its end acknowledges it
                info!(
                    job_id,
                    "a job from the fleet's queue that runs here already"
                );
            }
            SpawnOutcome::Refused {
                reason: SpawnRefusal::Invalid(why),
            } => {
                error!(job_id, why, "an invalid job in the fleet's queue: dropped");
                self.settle_item(queue.acknowledge(&job_id), job_id, ctx);
            }
            SpawnOutcome::Refused { reason } => {
                info!(
                    job_id,
                    ?reason,
                    "cannot start a job from the fleet's queue: put back"
                );
                let release = queue.release(&job_id, &self.options.instance_id);
                self.settle_item(release, job_id, ctx);
            }
        }
    }

    /// A fleet job ended here, in whatever state: its terminal status went
    /// to subscribers. If the worker's stop cut it, it goes on elsewhere —
    /// its record stays for a taker, or, if it never had one (it waited in
    /// the local queue), its item goes back to the fleet's queue. Otherwise
    /// it is over: dropping its record acknowledges its item, and an item
    /// without a record is acknowledged directly.
    pub(super) fn fleet_job_ended(
        &mut self,
        job_id: &str,
        checkpoint: Option<&crate::recovery::Checkpoint>,
        ctx: &mut Context<Self>,
    ) {
        let goes_on = self.keeps_record(job_id, JobOrigin::Fleet);
        if let Some(checkpoint) = checkpoint {
            if !goes_on {
                self.forget(job_id, checkpoint.claim(), ctx);
            }
            return;
        }
        let Some(queue) = self.fleet.clone() else {
            return;
        };
        let answer = if goes_on {
            info!(job_id, "a fleet job cut before it started here: put back");
            queue.release(job_id, &self.options.instance_id)
        } else {
            queue.acknowledge(job_id)
        };
        self.settle_item(answer, job_id.to_owned(), ctx);
    }

    /// Puts back the fleet's items whose worker vanished before starting
    /// them (with the orphan scan).
    pub(super) fn redeliver_fleet_items(&mut self, ctx: &mut Context<Self>) {
        let Some(queue) = &self.fleet else {
            return;
        };
        ctx.spawn(wrap_future(queue.redeliver()).map(
            |result, _act: &mut Self, _ctx| match result {
                Ok(0) => {}
                Ok(items) => info!(
                    items,
                    "re-delivered jobs of a vanished worker in the fleet's queue"
                ),
                Err(err) => warn!(%err, "cannot re-deliver the fleet queue's items"),
            },
        ));
    }

    fn settle_item(
        &mut self,
        answer: crate::recovery::StoreFuture<bool>,
        job_id: String,
        ctx: &mut Context<Self>,
    ) {
        ctx.spawn(
            wrap_future(answer).map(move |result, _act: &mut Self, _ctx| {
                if let Err(err) = result {
                    // left taken: re-delivered once this worker is gone
                    warn!(job_id, %err, "cannot hand a job back to the fleet's queue");
                }
            }),
        );
    }
}
