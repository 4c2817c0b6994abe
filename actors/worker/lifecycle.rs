//! A job's life: assignment, start (now, or through the queue when a slot
//! frees), end, termination, expiry in the queue.

use std::time::{Instant, SystemTime};

use actix::fut::wrap_future;
use tracing::{debug, error, info, warn};

use super::*;
use crate::handler::JobContext;
use crate::jobs::{Assignment, FinalStatus, Finished, JobSpec, Placement, Termination};
use crate::recovery::{Checkpoint, JobCheckpoint};

impl WorkerActor {
    /// Starts or queues a job the table has just placed.
    pub(super) fn place(&mut self, job_id: &str, placement: Placement, ctx: &mut Context<Self>) {
        let state = match placement {
            Placement::Start => "starting",
            Placement::Queue(_) => "queued",
        };
        self.job_event(job_id, state);
        match placement {
            Placement::Start => self.start_job(job_id, false, ctx),
            Placement::Queue(priority) => self.enqueue(job_id, priority, Instant::now()),
        }
        self.slots_changed();
    }

    /// Hands a queued job to the queue, which keeps the priority order.
    pub(super) fn enqueue(&self, job_id: &str, priority: JobPriority, since: Instant) {
        if let Some(queue) = &self.queue.addr {
            queue.do_send(Enqueue {
                job_id: job_id.to_owned(),
                priority,
                since,
            });
        } // else: the queue is being restarted, and is rebuilt from the table
    }

    /// A slot may have freed: grant it to the next queued jobs, as many as
    /// there are free slots.
    pub(super) fn grant(&mut self, ctx: &mut Context<Self>) {
        // every path that frees a slot comes here: a stop waiting for the
        // jobs to end learns of it too
        self.shutdown_progress(ctx);
        let Some(queue) = self.queue.addr.clone() else {
            return; // granted again once the queue is back
        };
        while self.table.begin_grant() {
            ctx.spawn(
                wrap_future(queue.send(TakeNext)).map(|answer, act: &mut Self, ctx| {
                    let next = answer.ok().flatten();
                    if act.table.end_grant(next.as_deref(), Instant::now()) {
                        let job_id = next.expect("a granted job has an id");
                        info!(job_id, "starting a queued job");
                        act.job_event(&job_id, "starting");
                        act.start_job(&job_id, false, ctx);
                        act.slots_changed();
                    } else if let Some(stale) = next {
                        debug!(job_id = stale, "the queue named a job that no longer waits");
                    }
                    act.grant(ctx);
                }),
            );
        }
    }

    /// Starts the actor of a job the table has in `Starting`, on the job's
    /// checkpoint handle: a recovered job's (resumed), the one its crashed
    /// actor ran on (`restart`: its next attempt), or a fresh one.
    pub(super) fn start_job(&mut self, job_id: &str, restart: bool, ctx: &mut Context<Self>) {
        let generation = self.generation();
        let Some(row) = self.table.get(job_id) else {
            return;
        };
        let Some(spec) = row.spec().cloned() else {
            error!(job_id, "a job to start without its assignment");
            return;
        };
        let origin = row.origin();
        let JobSpec {
            job,
            url,
            mut token,
            identity,
        } = spec;
        // a token the worker minted itself (local and recovered jobs) is
        // minted afresh as the job starts, however long it queued, and kept
        // fresh while it runs
        let refresh = match (&identity, origin) {
            (
                Some(identity),
                crate::jobs::JobOrigin::Local
                | crate::jobs::JobOrigin::Recovered
                | crate::jobs::JobOrigin::Fleet,
            ) => {
                let refresh = super::super::job::TokenRefresh {
                    credentials: self.options.credentials.clone(),
                    room: crate::handler::room_name(&job).to_owned(),
                    identity: identity.clone(),
                    ttl: self.options.room_token_ttl,
                };
                match refresh
                    .credentials
                    .room_token(&refresh.room, &refresh.identity, refresh.ttl)
                {
                    Ok(fresh) => token = fresh,
                    Err(err) => {
                        warn!(job_id, %err, "cannot mint a fresh room token: using the first")
                    }
                }
                Some(refresh)
            }
            _ => None,
        };
        let mut context =
            JobContext::new((*job).clone(), url, token).with_connections(self.connections.clone());
        if let Some(identity) = identity {
            context = context.with_identity(&identity);
        }
        let held = row.checkpoint().cloned();
        let is_recovered = held.is_some() && !restart;
        if restart && let Some(checkpoint) = &held {
            checkpoint.next_attempt();
        }
        let checkpoint = held.unwrap_or_else(|| {
            let record = JobCheckpoint::new(
                context.job(),
                context.participant_identity(),
                SystemTime::now(),
            )
            .with_owner(&self.options.instance_id);
            if origin.keeps_record() {
                // the server can re-dispatch its jobs, and the fleet's queue
                // re-deliver its own: keep them where a restarted worker (or
                // one taking over) finds them
                let record = if origin == crate::jobs::JobOrigin::Fleet {
                    record.with_fleet_queue()
                } else {
                    record
                };
                Checkpoint::new(record, self.store.clone())
            } else {
                // nobody would claim a local job after a restart
                Checkpoint::in_memory(record)
            }
        });
        self.table.set_checkpoint(job_id, checkpoint.clone());
        let context = context.with_checkpoint(checkpoint, is_recovered);
        let span = self.job_span(job_id).unwrap_or_else(tracing::Span::none);
        span.record("attempt", context.attempt());
        let handler = self.handler.clone();
        let link = super::super::supervision::Link::new(
            ctx.address(),
            Child::Job(job_id.to_owned()),
            generation,
        );
        let rules = super::super::job::JobRules {
            grace: self.options.termination_grace,
            restart_policy: self.options.restart_policy.clone(),
            max_retry_delay: self.options.max_retry_delay,
            recovery: self.recovery.clone(),
            metrics: self.metrics.clone(),
        };
        let addr = JobActor::start_in_arbiter(&self.threads.job(), move |_| {
            JobActor::new(context, handler, link, rules, refresh, span)
        });
        if let Some(row) = self.table.get_mut(job_id) {
            row.attachment.addr = Some(addr);
            row.attachment.generation = generation;
        }
    }

    /// Sends a status the table produced: to subscribers always, to the
    /// server when the table says so now (otherwise it waits in the table
    /// for the next registration).
    pub(super) fn deliver(&mut self, report: crate::jobs::Report) {
        self.publish(&report.update, report.origin);
        if report.send_now {
            self.send(vec![livekit_protocol::worker_message::Message::UpdateJob(
                report.update,
            )]);
        } else if report.origin.is_servers() {
            debug!(
                job_id = report.update.job_id,
                "status kept until the next registration"
            );
        }
    }

    /// A job ended, from whatever state (every ending comes here): report
    /// it, take it out of the queue if it waited there, settle its record,
    /// and give its slot to the next queued job.
    pub(super) fn finished(&mut self, job_id: &str, done: Finished, ctx: &mut Context<Self>) {
        if let Some(row) = self.table.get_mut(job_id) {
            // an actor still winding down (the shutdown's deadline cut it)
            // is no longer this job's
            row.attachment.addr = None;
        }
        if done.was_queued
            && let Some(queue) = &self.queue.addr
        {
            queue.do_send(Dequeue {
                job_id: job_id.to_owned(),
            });
        }
        if let Some(lost) = done.evicted {
            error!(
                job_id = lost,
                "too many unconfirmed final statuses: dropped the oldest"
            );
            self.metrics.outbox_eviction();
        }
        let success = done.report.update.status == livekit_protocol::JobStatus::JsSuccess as i32;
        self.metrics.ended(success, done.ran);
        self.job_event(job_id, if success { "succeeded" } else { "failed" });
        // a server job's record (its final status in it) stays until the
        // server confirms the status (see `Confirmed`); a fleet job's is
        // settled now, no server confirming it
        if done.report.origin == crate::jobs::JobOrigin::Fleet {
            self.fleet_job_ended(job_id, done.checkpoint.as_ref(), ctx);
        }
        self.deliver(done.report);
        self.slots_changed();
        self.grant(ctx);
        self.shutdown_progress(ctx);
    }

    /// Ends a job now with `status`, from whatever live state it is in.
    pub(super) fn end_job(&mut self, job_id: &str, status: FinalStatus, ctx: &mut Context<Self>) {
        if let Some(done) = self.table.finish(job_id, status, Instant::now()) {
            self.finished(job_id, done, ctx);
        }
    }

    /// Terminates a job for `why` (the server, or the shutdown): an offer is
    /// withdrawn, a queued job ends at once, a running one is wound down by
    /// its actor.
    pub(super) fn terminate(&mut self, job_id: &str, why: TerminateJob, ctx: &mut Context<Self>) {
        let status = match &why {
            TerminateJob::Server => FinalStatus::success(),
            TerminateJob::Shutdown(reason) => FinalStatus::failed(reason.clone()),
        };
        let by_server = matches!(why, TerminateJob::Server);
        let known = self
            .table
            .get(job_id)
            .is_some_and(|row| !matches!(row.state(), crate::jobs::JobState::Finishing));
        if by_server && known {
            self.metrics.terminated();
            self.job_event(job_id, "terminated");
        }
        match self.table.terminate(job_id, status.clone(), Instant::now()) {
            Termination::Withdrawn => {
                info!(job_id, "terminated before assignment: releasing the slot");
                self.slots_changed();
                self.grant(ctx);
            }
            Termination::Ended(done) => {
                info!(job_id, "terminated while queued: it never runs");
                self.finished(job_id, done, ctx);
            }
            Termination::WindDown => {
                let addr = self
                    .table
                    .get(job_id)
                    .and_then(|row| row.attachment.addr.clone());
                match addr {
                    Some(addr) => addr.do_send(why),
                    // its actor crashed and waits to be restarted: nothing runs
                    None => self.end_job(job_id, status, ctx),
                }
            }
            Termination::Ignored => debug!(job_id, "termination for an unknown or ended job"),
        }
    }
}

impl Handler<JobAssigned> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobAssigned, ctx: &mut Self::Context) {
        let job_id = msg.job.id.clone();
        let url = msg
            .url
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| self.options.url.clone());
        let priority = self.priority_of(&msg.job);
        let spec = JobSpec {
            job: Arc::new(msg.job),
            url,
            token: msg.token,
            identity: None,
        };
        match self.table.assign(&job_id, spec, priority, Instant::now()) {
            Assignment::Placed(placement) => {
                info!(job_id, "job assigned");
                if let Some(reason) = self.cut_reason() {
                    // assigned while shutting down: it never runs, and the
                    // server hears so
                    let status = FinalStatus::failed(reason);
                    return self.end_job(&job_id, status, ctx);
                }
                self.place(&job_id, placement, ctx);
            }
            Assignment::Duplicate => {
                // nothing more is sent: a final status still owed goes out
                // until the server confirms it (again after a reconnect), so
                // a repeat of it here would only reach the server twice
                warn!(
                    job_id,
                    "ignoring a repeated assignment of a job the worker has or had"
                );
            }
            Assignment::Refused(report) => {
                warn!(
                    job_id,
                    "assigned a job that was not offered, at capacity: failing it"
                );
                self.metrics.ended(false, None);
                self.deliver(report);
            }
        }
    }
}

impl Handler<JobStarted> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobStarted, _ctx: &mut Self::Context) {
        if !self.is_current_job(&msg.job_id, msg.generation) {
            return;
        }
        if let Some(report) = self.table.started(&msg.job_id, Instant::now()) {
            self.metrics.started();
            self.job_event(&msg.job_id, "running");
            self.deliver(report);
        }
        self.slots_changed();
    }
}

impl Handler<JobLost> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobLost, ctx: &mut Self::Context) {
        if !self.is_current_job(&msg.job_id, msg.generation) {
            return;
        }
        if self.table.relinquish(&msg.job_id).is_some() {
            warn!(
                job_id = msg.job_id,
                holder = msg.holder,
                "the job was taken over by another worker: let go without a status"
            );
            self.job_event(&msg.job_id, "taken over");
            self.slots_changed();
            self.grant(ctx);
            self.shutdown_progress(ctx);
        }
    }
}

impl Handler<JobRestarted> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobRestarted, _ctx: &mut Self::Context) {
        if self.is_current_job(&msg.job_id, msg.generation)
            && let Some(restarts) = self.table.restarted(&msg.job_id)
        {
            debug!(job_id = msg.job_id, restarts, "the job's handler restarts");
            self.metrics.restarted();
            self.job_event(&msg.job_id, "restarting");
        }
    }
}

impl Handler<JobExited> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobExited, ctx: &mut Self::Context) {
        if !self.is_current_job(&msg.job_id, msg.generation) {
            return;
        }
        match &msg.outcome {
            JobOutcome::Succeeded | JobOutcome::Terminated => {
                info!(job_id = msg.job_id, outcome = ?msg.outcome, "job ended")
            }
            JobOutcome::Failed(_) | JobOutcome::Panicked(_) | JobOutcome::Stopped(_) => {
                warn!(job_id = msg.job_id, outcome = ?msg.outcome, "job failed")
            }
        }
        if let Some(row) = self.table.get_mut(&msg.job_id) {
            row.attachment.addr = None;
        }
        self.end_job(&msg.job_id, msg.outcome.final_status(), ctx);
    }
}

impl Handler<TerminationRequested> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: TerminationRequested, ctx: &mut Self::Context) {
        self.terminate(&msg.job_id, TerminateJob::Server, ctx);
    }
}

impl Handler<QueuedJobsExpired> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: QueuedJobsExpired, ctx: &mut Self::Context) {
        for job_id in msg.job_ids {
            let error = format!("waited longer than {:?} in the job queue", msg.max_wait);
            warn!(job_id, error, "failing a queued job");
            if let Some(done) =
                self.table
                    .expire(&job_id, FinalStatus::failed(error), Instant::now())
            {
                self.finished(&job_id, done, ctx);
            }
        }
    }
}

impl WorkerActor {
    /// True when `generation` is the live actor of `job_id`.
    pub(super) fn is_current_job(&self, job_id: &str, generation: u64) -> bool {
        self.table.get(job_id).is_some_and(|row| {
            row.attachment.addr.is_some() && row.attachment.generation == generation
        })
    }
}
