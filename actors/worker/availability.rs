//! Availability: the answer to the server's offers, and the slots held for
//! them.
//!
//! An offer passes the cheap checks here (memory, the load against its
//! priority's headroom), takes its slot in the job table at once — so a
//! burst of offers cannot overbook — and goes to the handler's `on_request`
//! on a hook thread. The answer comes back as [`Decided`]; past
//! `request_timeout` the worker declines on its own. An accepted job holds
//! its slot and reservation until the assignment comes, or
//! `assignment_timeout` passes.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures_util::FutureExt as _;
use livekit_protocol::worker_message;
use tracing::{debug, info, warn};

use super::*;
use crate::handler::{Decision, JobRequest, Participant, room_name};
use crate::jobs::{JobState, Refusal};
use crate::limits::{Reservation, ResourceRequest};
use crate::telemetry::DeclineReason;

impl WorkerActor {
    /// The first checks every new job passes, server or local, before
    /// anything is reserved for it: no memory pressure, and a load that
    /// leaves room for its priority.
    pub(super) fn admissible(&self, priority: JobPriority) -> Result<(), SpawnRefusal> {
        if matches!(self.memory, UsageState::Pressure | UsageState::Exceeded) {
            return Err(SpawnRefusal::MemoryPressure);
        }
        if !self.admission.admits(self.load.load, priority) {
            return Err(SpawnRefusal::Admission(priority));
        }
        if let Some(ceiling) = self.options.accept_below {
            let used = self.limiter.used_share();
            if used >= ceiling {
                return Err(SpawnRefusal::Resources(format!(
                    "the shared budget is {:.0}% used; this worker takes jobs only below {:.0}%",
                    used * 100.0,
                    ceiling * 100.0
                )));
            }
        }
        Ok(())
    }

    /// The last checks, once the job is to be accepted: the process is not
    /// near its open-file limit, the job's resources fit the limits, and the
    /// rate limits allow one more job (only accepted jobs count against
    /// them). On success, the job's reservation.
    pub(super) fn reserve(
        &mut self,
        room: &str,
        resources: ResourceRequest,
    ) -> Result<Reservation, SpawnRefusal> {
        if matches!(self.open_files, UsageState::Pressure | UsageState::Exceeded) {
            return Err(SpawnRefusal::Resources(
                "the process is near its open-file limit (max_open_files or RLIMIT_NOFILE)".into(),
            ));
        }
        let reservation = self
            .limiter
            .reserve(resources)
            .map_err(|e| SpawnRefusal::Resources(e.to_string()))?;
        if let Some(limiter) = &self.rate_limiter {
            limiter
                .check(room)
                .map_err(|e| SpawnRefusal::RateLimited(e.to_string()))?;
        }
        Ok(reservation)
    }

    pub(super) fn answer(&self, job_id: &str, accepted: Option<&Participant>) {
        let answer = crate::protocol::availability_answer(job_id, accepted);
        self.send(vec![worker_message::Message::Availability(answer)]);
    }

    /// Declines offer `ticket` of `job_id` for `reason` and frees what it
    /// held.
    fn decline(
        &mut self,
        job_id: &str,
        ticket: u64,
        reason: DeclineReason,
        ctx: &mut Context<Self>,
    ) {
        self.answer(job_id, None);
        if let Some(offered) = self.table.offer_of(job_id, ticket).map(|row| row.since()) {
            self.metrics.declined(reason, offered.elapsed());
            self.job_event(job_id, "declined");
        }
        if self.table.withdraw(job_id, Some(ticket)).is_some() {
            self.slots_changed();
            self.grant(ctx); // a queued job may take the slot it held
        }
    }

    /// Runs the handler's `on_request` for an offer on a hook thread; the
    /// decision comes back as [`Decided`].
    fn ask_handler(&mut self, request: JobRequest, ticket: u64, ctx: &mut Context<Self>) {
        let job_id = request.id().to_owned();
        let Some((thread, arbiter)) = self.threads.hook() else {
            warn!(job_id, "every on_request hook thread is blocked: declining");
            return self.decline(&job_id, ticket, DeclineReason::Timeout, ctx);
        };
        let decide = AssertUnwindSafe(self.handler.clone().on_request(request)).catch_unwind();
        let worker = ctx.address();
        let id = job_id.clone();
        let spawned = arbiter.spawn(async move {
            let decision = decide
                .await
                .map_err(|panic| super::super::job::panic_message(&*panic));
            worker.do_send(Decided {
                job_id: id,
                ticket,
                decision,
                thread,
            });
        });
        if !spawned {
            // the hook thread is gone (the worker is stopping)
            self.threads.hook_done(thread);
            self.decline(&job_id, ticket, DeclineReason::Draining, ctx);
            return;
        }
        // the worker's own clock, not the hook's: a hook that blocks its
        // thread cannot stop this from firing
        let deadline = Instant::now() + self.options.request_timeout;
        self.time_out_at(deadline, OfferTimeout::Decision { job_id, ticket }, ctx);
    }

    /// Arms `timeout` at `deadline`: one timer stands for every offer's,
    /// set for the earliest.
    fn time_out_at(&mut self, deadline: Instant, timeout: OfferTimeout, ctx: &mut Context<Self>) {
        if self.timeouts.push(deadline, timeout) {
            if let Some(timer) = self.timeout_timer.take() {
                ctx.cancel_future(timer);
            }
            self.arm_timeouts(ctx);
        }
    }

    fn arm_timeouts(&mut self, ctx: &mut Context<Self>) {
        let Some(next) = self.timeouts.next() else {
            return;
        };
        let after = next.saturating_duration_since(Instant::now());
        let timer = ctx.run_later(after, |act, ctx| {
            act.timeout_timer = None;
            let now = Instant::now();
            while let Some(timeout) = act.timeouts.pop_due(now) {
                act.timed_out(timeout, ctx);
            }
            act.arm_timeouts(ctx);
        });
        self.timeout_timer = Some(timer);
    }

    /// An offer's timeout is due: acts if the offer still waits for what
    /// it guards.
    fn timed_out(&mut self, timeout: OfferTimeout, ctx: &mut Context<Self>) {
        match timeout {
            OfferTimeout::Decision { job_id, ticket } => {
                let deciding = self.table.offer_of(&job_id, ticket).is_some_and(|row| {
                    matches!(
                        row.state(),
                        JobState::Offered {
                            answered: false,
                            ..
                        }
                    )
                });
                if deciding {
                    let timeout = self.options.request_timeout;
                    warn!(job_id, ?timeout, "on_request took too long: declining");
                    self.decline(&job_id, ticket, DeclineReason::Timeout, ctx);
                }
            }
            OfferTimeout::Assignment { job_id, ticket } => {
                if self.table.offer_of(&job_id, ticket).is_some() {
                    let timeout = self.options.assignment_timeout;
                    warn!(
                        job_id,
                        ?timeout,
                        "no assignment after accepting: releasing the slot"
                    );
                    if self.table.withdraw(&job_id, Some(ticket)).is_some() {
                        self.slots_changed();
                        self.grant(ctx);
                    }
                }
            }
        }
    }
}

/// What an offer waits for, past which the worker stops waiting.
#[derive(Debug)]
pub(super) enum OfferTimeout {
    /// The handler's `on_request` decision (`request_timeout`): declined.
    Decision {
        /// The job offered.
        job_id: String,
        /// Which offer of it.
        ticket: u64,
    },
    /// The assignment of an accepted offer (`assignment_timeout`): its
    /// slot released.
    Assignment {
        /// The job accepted.
        job_id: String,
        /// Which offer of it.
        ticket: u64,
    },
}

impl Handler<AvailabilityAsked> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: AvailabilityAsked, ctx: &mut Self::Context) {
        let job_id = msg.job.id.clone();
        let asked = Instant::now();
        self.metrics.offered();
        let refuse = |act: &mut Self, reason: DeclineReason| {
            act.metrics.declined(reason, asked.elapsed());
            act.answer(&job_id, None);
        };
        if self.shutting_down() {
            info!(job_id, "declining job: the worker is shutting down");
            return refuse(self, DeclineReason::Draining);
        }
        let priority = self.priority_of(&msg.job);
        if let Err(reason) = self.admissible(priority) {
            info!(job_id, %reason, "declining job");
            return refuse(self, decline_reason(&reason));
        }
        // beyond the free slots only high-priority work is taken, and only
        // as far as the queue has room; the slot (or place) is taken now, so
        // a burst of offers cannot overbook
        let room = room_name(&msg.job).to_owned();
        let may_queue = priority >= JobPriority::High;
        let ticket = match self
            .table
            .offer(&job_id, priority, &room, may_queue, Instant::now())
        {
            Ok(ticket) => ticket,
            Err(Refusal::Duplicate(_)) => {
                warn!(
                    job_id,
                    "availability asked for a job the worker already has: declining the repeat"
                );
                return refuse(self, DeclineReason::Duplicate);
            }
            Err(Refusal::AtCapacity) => {
                info!(job_id, %priority, load = self.load.load, "declining job: at capacity");
                refuse(self, DeclineReason::AtCapacity);
                self.slots_changed();
                return;
            }
        };
        self.job_event(&job_id, "offered");
        self.slots_changed();
        self.ask_handler(JobRequest::new(msg.job, msg.resuming), ticket, ctx);
    }
}

impl Handler<Decided> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Decided, ctx: &mut Self::Context) {
        self.threads.hook_done(msg.thread);
        let Decided {
            job_id,
            ticket,
            decision,
            ..
        } = msg;
        let Some(row) = self.table.offer_of(&job_id, ticket) else {
            debug!(job_id, "a decision for an offer that is gone");
            return;
        };
        let JobState::Offered {
            answered: false,
            over_capacity,
            ..
        } = row.state()
        else {
            return;
        };
        let (calculated, room, offered_at) = (row.priority(), row.room().to_owned(), row.since());
        let acceptance = match decision {
            Ok(Decision::Accept(acceptance)) => acceptance,
            Ok(Decision::Reject { reason }) => {
                info!(job_id, reason, "declining job");
                return self.decline(&job_id, ticket, DeclineReason::Handler, ctx);
            }
            Err(panic) => {
                warn!(job_id, panic, "on_request panicked: declining");
                return self.decline(&job_id, ticket, DeclineReason::Handler, ctx);
            }
        };
        if self.shutting_down() {
            return self.decline(&job_id, ticket, DeclineReason::Draining, ctx);
        }
        let priority = acceptance.priority.unwrap_or(calculated);
        if over_capacity && priority < JobPriority::High {
            info!(job_id, %priority, "declining job: at capacity");
            return self.decline(&job_id, ticket, DeclineReason::AtCapacity, ctx);
        }
        let reservation = match self.reserve(&room, acceptance.resources.unwrap_or_default()) {
            Ok(reservation) => reservation,
            Err(reason) => {
                info!(job_id, %reason, "declining job");
                return self.decline(&job_id, ticket, decline_reason(&reason), ctx);
            }
        };
        let participant = acceptance.participant;
        info!(job_id, identity = participant.identity, %priority, "accepting job");
        self.metrics.accepted(offered_at.elapsed());
        self.job_event(&job_id, "accepted");
        self.table.answer(
            &job_id,
            ticket,
            priority,
            Some(participant.identity.clone()),
            Some(reservation),
            Instant::now(),
        );
        self.answer(&job_id, Some(&participant));
        let deadline = Instant::now() + self.options.assignment_timeout;
        self.time_out_at(deadline, OfferTimeout::Assignment { job_id, ticket }, ctx);
    }
}

/// The metrics' name for why admission refused a job.
pub(super) fn decline_reason(refusal: &SpawnRefusal) -> DeclineReason {
    match refusal {
        SpawnRefusal::Admission(_) => DeclineReason::Admission,
        SpawnRefusal::MemoryPressure => DeclineReason::Memory,
        SpawnRefusal::Resources(_) => DeclineReason::Resources,
        SpawnRefusal::RateLimited(_) => DeclineReason::RateLimited,
        SpawnRefusal::Duplicate(_) => DeclineReason::Duplicate,
        SpawnRefusal::ShuttingDown => DeclineReason::Draining,
        SpawnRefusal::AtCapacity | SpawnRefusal::Invalid(_) | SpawnRefusal::Token(_) => {
            DeclineReason::AtCapacity
        }
    }
}
