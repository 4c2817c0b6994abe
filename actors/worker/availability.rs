//! Availability: the answer to the server's offers, and the slots held for them.

use super::*;

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
        Ok(())
    }

    /// The last checks, once the job is to be accepted: its resources fit
    /// the limits, and the rate limits allow one more job (only accepted
    /// jobs count against them). On success, the job's reservation.
    pub(super) fn reserve(
        &mut self,
        room: &str,
        resources: ResourceRequest,
    ) -> Result<Reservation, SpawnRefusal> {
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

    pub(super) fn answer(&mut self, job_id: &str, accepted: Option<&crate::handler::Participant>) {
        let response = match accepted {
            Some(participant) => AvailabilityResponse {
                job_id: job_id.to_owned(),
                available: true,
                participant_identity: participant.identity.clone(),
                participant_name: participant.name.clone(),
                participant_metadata: participant.metadata.clone(),
                participant_attributes: participant.attributes.clone(),
                ..Default::default()
            },
            None => AvailabilityResponse {
                job_id: job_id.to_owned(),
                available: false,
                ..Default::default()
            },
        };
        self.send(vec![worker_message::Message::Availability(response)]);
    }

    pub(super) fn release(&mut self, job_id: &str, ctx: &mut Context<Self>) {
        if let Some(reservation) = self.reserved.remove(job_id) {
            if let Some(handle) = reservation.expiry {
                ctx.cancel_future(handle);
            }
            self.slots_changed();
            self.grant_slot(ctx); // a queued job may take the slot it held
        }
    }

    pub(super) fn on_decision(
        &mut self,
        job_id: String,
        decision: Decision,
        ctx: &mut Context<Self>,
    ) {
        let Some(pending) = self.reserved.get(&job_id) else {
            return; // released meanwhile (terminated, or the worker stopped)
        };
        let acceptance = match decision {
            Decision::Accept(acceptance) => acceptance,
            Decision::Reject { reason } => {
                info!(job_id, reason, "declining job");
                self.answer(&job_id, None);
                self.release(&job_id, ctx);
                return;
            }
        };
        let priority = acceptance.priority.unwrap_or(pending.priority);
        let room = pending.room.clone();
        let limits = match self.reserve(&room, acceptance.resources.unwrap_or_default()) {
            Ok(limits) => limits,
            Err(reason) => {
                info!(job_id, %reason, "declining job");
                self.answer(&job_id, None);
                self.release(&job_id, ctx);
                return;
            }
        };
        let participant = acceptance.participant;
        info!(job_id, identity = participant.identity, %priority, "accepting job");
        self.answer(&job_id, Some(&participant));
        let timeout = self.options.assignment_timeout;
        let id = job_id.clone();
        let expiry = ctx.run_later(timeout, move |act, ctx| {
            if act.reserved.contains_key(&id) {
                warn!(
                    job_id = id,
                    ?timeout,
                    "no assignment after accepting: releasing the slot"
                );
                act.release(&id, ctx);
            }
        });
        if let Some(pending) = self.reserved.get_mut(&job_id) {
            pending.identity = Some(participant.identity);
            pending.expiry = Some(expiry);
            pending.priority = priority;
            pending.limits = Some(limits);
        }
    }
}

impl Handler<AvailabilityAsked> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: AvailabilityAsked, ctx: &mut Self::Context) {
        let job_id = msg.job.id.clone();
        if self.jobs.contains_key(&job_id) || self.reserved.contains_key(&job_id) {
            warn!(
                job_id,
                "availability asked twice for the same job: declining the repeat"
            );
            self.answer(&job_id, None);
            return;
        }
        let priority = self.priority_of(&msg.job);
        // beyond the free slots only high-priority work is taken, and only
        // as far as the queue has room
        let over_capacity = self.slots().is_full();
        if over_capacity && (priority < JobPriority::High || !self.queue_has_room()) {
            info!(job_id, %priority, load = self.load.load, "declining job: at capacity");
            self.answer(&job_id, None);
            self.slots_changed();
            return;
        }
        if let Err(reason) = self.admissible(priority) {
            info!(job_id, %reason, "declining job");
            self.answer(&job_id, None);
            return;
        }
        // reserve before deciding, so a burst of requests cannot overbook
        self.reserved.insert(
            job_id.clone(),
            Pending {
                identity: None,
                expiry: None,
                priority,
                limits: None,
                over_capacity,
                room: room_name(&msg.job).to_owned(),
            },
        );
        self.slots_changed();
        let request = JobRequest::new(msg.job, msg.resuming);
        let decide = AssertUnwindSafe(self.handler.clone().on_request(request)).catch_unwind();
        let timeout = self.options.request_timeout;
        let decide = async move { actix_rt::time::timeout(timeout, decide).await };
        ctx.spawn(wrap_future(decide).map(move |result, act: &mut Self, ctx| {
            let decision = match result {
                Ok(Ok(decision)) => decision,
                Ok(Err(panic)) => {
                    Decision::reject(format!("on_request panicked: {}", panic_message(&*panic)))
                }
                Err(_) => Decision::reject(format!("on_request took longer than {timeout:?}")),
            };
            act.on_decision(job_id, decision, ctx);
        }));
    }
}
