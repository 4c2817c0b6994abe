//! Reporting: job statuses to the server and to subscribers, the connection's
//! comings and goings, the load, and the state snapshots asked for.

use super::*;

impl WorkerActor {
    pub(super) fn send(&self, messages: Vec<worker_message::Message>) {
        if let Some(connection) = &self.connection {
            connection.do_send(SendToServer(messages));
        }
    }

    /// Sends a job status now, or queues it until the next registration.
    pub(super) fn report_job(&mut self, update: UpdateJobStatus, origin: JobOrigin) {
        self.publish(&update, origin);
        if origin == JobOrigin::Local {
            return; // the server does not know local jobs
        }
        if self.connected() {
            self.send(vec![worker_message::Message::UpdateJob(update)]);
        } else {
            let job_id = update.job_id.clone();
            log_eviction(self.outbox.push(update));
            debug!(
                job_id,
                queued = self.outbox.len(),
                "status queued until reconnect"
            );
        }
    }

    /// Offers a status to every subscriber; one with a full mailbox misses
    /// it, one that has gone away is dropped.
    pub(super) fn publish(&mut self, update: &UpdateJobStatus, origin: JobOrigin) {
        let event = JobEvent {
            job_id: update.job_id.clone(),
            status: JobStatus::try_from(update.status).unwrap_or(JobStatus::JsFailed),
            error: update.error.clone(),
            origin,
        };
        self.subscribers
            .retain(|subscriber| match subscriber.try_send(event.clone()) {
                Ok(()) => true,
                Err(SendError::Full(_)) => {
                    warn!(
                        job_id = event.job_id,
                        "a job-event subscriber is full: event dropped"
                    );
                    true
                }
                Err(SendError::Closed(_)) => false,
            });
    }

    /// Tells the reporter that slots changed, so that it can recompute and
    /// send a flip to FULL or back at once.
    pub(super) fn slots_changed(&self) {
        if let Some(reporter) = &self.reporter {
            reporter.do_send(SlotsChanged {
                slots: self.slots(),
                running_since: self.jobs.values().map(|job| job.started_at).collect(),
            });
        }
    }

    /// The running jobs the server knows, for `migrate_job`.
    pub(super) fn server_job_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.origin == JobOrigin::Server)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

fn log_eviction(evicted: Evicted) {
    match evicted {
        Evicted::None => {}
        Evicted::Running(job_id) => warn!(job_id, "outbox full: dropped a queued RUNNING status"),
        Evicted::Terminal(job_id) => error!(job_id, "outbox full: dropped a queued final status"),
    }
}

impl Handler<Registered> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Registered, _ctx: &mut Self::Context) {
        self.registrations += 1;
        self.worker_id = Some(msg.worker_id);
        if let Some(info) = &msg.server_info {
            debug!(version = info.version, region = info.region, "server info");
        }
        if self.registrations > 1 {
            self.recover_after_reconnect();
        }
        let mut messages = Vec::new();
        let job_ids = self.server_job_ids();
        if !job_ids.is_empty() {
            // after a reconnect, or for jobs resumed after a restart
            info!(jobs = job_ids.len(), "claiming running jobs");
            messages.push(worker_message::Message::MigrateJob(MigrateJobRequest {
                job_ids,
            }));
        }
        let queued = self.outbox.drain();
        if !queued.is_empty() {
            info!(
                statuses = queued.len(),
                "flushing statuses queued during the outage"
            );
        }
        messages.extend(queued.into_iter().map(worker_message::Message::UpdateJob));
        if !messages.is_empty() {
            self.send(messages);
        }
        if let Some(reporter) = &self.reporter {
            reporter.do_send(ConnectionChanged { connected: true });
        }
    }
}

impl Handler<Disconnected> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Disconnected, ctx: &mut Self::Context) {
        warn!(
            reason = msg.reason,
            running = self.jobs.len(),
            "disconnected from the server; jobs keep running"
        );
        self.worker_id = None;
        if let Some(reporter) = &self.reporter {
            reporter.do_send(ConnectionChanged { connected: false });
        }
        // the server forgot its offers with the connection
        let pending: Vec<String> = self.reserved.keys().cloned().collect();
        for job_id in pending {
            self.release(&job_id, ctx);
        }
    }
}

impl Handler<Undelivered> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Undelivered, _ctx: &mut Self::Context) {
        let statuses: Vec<UpdateJobStatus> = msg
            .0
            .into_iter()
            .filter_map(|message| match message {
                worker_message::Message::UpdateJob(update) => Some(update),
                _ => None, // loads are recomputed, answers are moot after a disconnect
            })
            .collect();
        if statuses.is_empty() {
            return;
        }
        if self.connected() {
            // the connection came back before the bounce reached us
            self.send(
                statuses
                    .into_iter()
                    .map(worker_message::Message::UpdateJob)
                    .collect(),
            );
        } else {
            for evicted in self.outbox.requeue(statuses) {
                log_eviction(evicted);
            }
        }
    }
}

impl Handler<GetState> for WorkerActor {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _msg: GetState, _ctx: &mut Self::Context) -> Self::Result {
        let report = self.load;
        let mut running_jobs: Vec<String> = self.jobs.keys().cloned().collect();
        running_jobs.sort();
        MessageResult(WorkerState {
            worker_id: self.worker_id.clone(),
            connected: self.connected(),
            registrations: self.registrations,
            running_jobs,
            reserved: self.reserved.len(),
            status: report.status,
            load: report.load,
            outbox: self.outbox.len(),
            queued: self.queued,
        })
    }
}

impl Handler<LoadChanged> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: LoadChanged, _ctx: &mut Self::Context) {
        self.load = msg.report;
    }
}

impl Handler<GetLoad> for WorkerActor {
    type Result = MessageResult<GetLoad>;

    fn handle(&mut self, _msg: GetLoad, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.load)
    }
}

impl Handler<SubscribeJobEvents> for WorkerActor {
    type Result = bool;

    fn handle(&mut self, msg: SubscribeJobEvents, _ctx: &mut Self::Context) -> bool {
        self.subscribers.retain(|s| s.connected());
        if self.subscribers.len() >= MAX_SUBSCRIBERS {
            warn!(
                max = MAX_SUBSCRIBERS,
                "refusing a job-event subscriber: too many"
            );
            return false;
        }
        self.subscribers.push(msg.0);
        true
    }
}

impl Handler<GetQueueStats> for WorkerActor {
    type Result = ResponseFuture<QueueStats>;

    fn handle(&mut self, msg: GetQueueStats, _ctx: &mut Self::Context) -> Self::Result {
        let queue = self.queue.clone();
        Box::pin(async move {
            match queue {
                Some(queue) => queue.send(msg).await.unwrap_or_default(),
                None => QueueStats::default(),
            }
        })
    }
}
