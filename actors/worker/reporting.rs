//! Reporting: job statuses to subscribers (the server's side is in
//! `lifecycle::deliver`), registration and what it owes the server, the
//! server's confirmations, the load, the state snapshots asked for, and the
//! worker's own events.

use livekit_protocol::{JobStatus, UpdateJobStatus};
use tracing::{debug, info, warn};

use super::*;
use crate::jobs::JobState;

impl WorkerActor {
    /// Offers a status to every subscriber; one with a full mailbox misses
    /// it, one that has gone away is dropped.
    pub(super) fn publish(&mut self, update: &UpdateJobStatus, origin: crate::jobs::JobOrigin) {
        let event = JobEvent {
            job_id: update.job_id.clone(),
            status: JobStatus::try_from(update.status).unwrap_or(JobStatus::JsFailed),
            error: update.error.clone(),
            origin,
        };
        offer_all(&mut self.subscribers, event, "job");
    }

    /// Offers a worker event to every watcher.
    pub(super) fn notify(&mut self, event: WorkerEvent) {
        offer_all(&mut self.watchers, event, "worker");
    }
}

/// Offers `event` to every recipient with `try_send`: one with a full
/// mailbox misses it, one that has gone away is dropped.
fn offer_all<M>(recipients: &mut Vec<Recipient<M>>, event: M, kind: &str)
where
    M: Message<Result = ()> + Clone + Send + std::fmt::Debug + 'static,
{
    recipients.retain(|recipient| match recipient.try_send(event.clone()) {
        Ok(()) => true,
        Err(SendError::Full(_)) => {
            warn!(kind, ?event, "an event subscriber is full: event dropped");
            true
        }
        Err(SendError::Closed(_)) => false,
    });
}

impl Handler<Registered> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Registered, _ctx: &mut Self::Context) {
        if !self.connection.is_current(msg.generation) {
            return; // an old connection's registration, overtaken
        }
        self.registrations += 1;
        self.metrics.connected(true);
        self.span.record("worker_id", msg.worker_id.as_str());
        self.reconnect.registered(std::time::Instant::now());
        self.connection_error = None;
        self.worker_id = Some(msg.worker_id.clone());
        if let Some(info) = &msg.server_info {
            debug!(version = info.version, region = info.region, "server info");
        }
        // the claims of jobs still held, then every status owed, in order
        let owed = self.table.registered();
        if !owed.is_empty() {
            info!(
                messages = owed.len(),
                "claiming jobs and sending owed statuses"
            );
        }
        self.send(owed);
        // a new registration starts AVAILABLE on the server: FULL at once if
        // not, and draining if it drains
        if self.shutting_down() {
            self.report_load(self.load);
        }
        self.slots_changed();
        if self.registrations > 1 {
            self.recover_after_reconnect();
        }
        if let Some(reporter) = &self.reporter.addr {
            reporter.do_send(ConnectionChanged { connected: true });
        }
        self.notify(WorkerEvent::Registered {
            worker_id: msg.worker_id,
        });
    }
}

impl Handler<Confirmed> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Confirmed, ctx: &mut Self::Context) {
        // the records of server jobs whose final status the server has now
        // read are dropped (a drain's cut keeps them for the next start)
        let records: Vec<(String, crate::recovery::Claim)> = msg
            .job_ids
            .iter()
            .filter_map(|id| {
                let row = self.table.get(id)?;
                let record = row.checkpoint()?;
                (row.state() == crate::jobs::JobState::Finishing
                    && row.origin().is_servers()
                    && !self.keeps_record(id, row.origin()))
                .then(|| (id.clone(), record.claim()))
            })
            .collect();
        let confirmed = self.table.confirm(msg.job_ids.iter().map(String::as_str));
        for (id, claim) in records {
            if self.table.get(&id).is_none() {
                self.forget(&id, claim, ctx);
            }
        }
        debug!(confirmed, "the server confirmed final statuses");
        self.metrics
            .jobs(&self.table.counts(), self.table.queued_by_priority());
        self.shutdown_progress(ctx);
    }
}

impl Handler<LoadChanged> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: LoadChanged, _ctx: &mut Self::Context) {
        // the reporter may have computed this from slots that have changed
        // since (the worker's own flip to FULL must not be undone by it)
        let mut report = LoadReport::new(self.slots(), msg.report.load, self.threshold);
        if self.shutting_down() {
            report.status = livekit_protocol::WorkerStatus::WsFull;
        }
        self.load = report;
        self.metrics.load(
            report.load,
            report.status == livekit_protocol::WorkerStatus::WsFull,
        );
        if msg.send && self.connected() {
            self.report_load(report);
        }
    }
}

impl Handler<MemoryChanged> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: MemoryChanged, _ctx: &mut Self::Context) {
        let state = msg.0;
        if state == self.memory {
            return;
        }
        match state {
            UsageState::Pressure | UsageState::Exceeded => {
                warn!(?state, "memory pressure: telling jobs, admitting none")
            }
            _ => info!(?state, "memory pressure over"),
        }
        self.memory = state;
        for (_, row) in self.table.iter() {
            if let Some(addr) = &row.attachment.addr {
                addr.do_send(MemoryPressure(state));
            }
        }
    }
}

impl Handler<OpenFilesChanged> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: OpenFilesChanged, _ctx: &mut Self::Context) {
        let state = msg.0;
        match state {
            UsageState::Pressure | UsageState::Exceeded => {
                warn!(?state, "near the open-file limit: admitting no job")
            }
            _ => info!(?state, "open files back under the limit"),
        }
        self.open_files = state;
    }
}

impl Handler<GetState> for WorkerActor {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _msg: GetState, _ctx: &mut Self::Context) -> Self::Result {
        let report = self.load;
        let jobs = self.table.counts();
        MessageResult(WorkerState {
            worker_id: self.worker_id.clone(),
            connected: self.connected(),
            registrations: self.registrations,
            running_jobs: self.table.ids_where(|row| row.state().is_running()),
            jobs,
            reserved: jobs.offered,
            status: report.status,
            load: report.load,
            outbox: self
                .table
                .iter()
                .filter(|(_, row)| row.state() == JobState::Finishing && row.origin().is_servers())
                .count(),
            lost_statuses: self.table.evicted(),
            queued: jobs.queued,
            reconnect_failures: self.reconnect.failures(),
            connection_error: self.connection_error.clone(),
            unreachable: self.reconnect.is_unreachable(),
            supervision_failure: self.supervision_failure.clone(),
            draining: self.draining(),
            shutting_down: self.shutting_down(),
            store_error: self.store_health.error().map(str::to_owned),
            agent_name: self.options.agent_name.clone(),
            job_type: self.options.job_type,
            instance_id: self.options.instance_id.clone(),
            labels: self.options.labels.clone(),
            recommended_replicas: self.scaling.as_ref().and_then(|s| s.recommended),
        })
    }
}

impl Handler<GetLoad> for WorkerActor {
    type Result = MessageResult<GetLoad>;

    fn handle(&mut self, _msg: GetLoad, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.load)
    }
}

impl Handler<RunningSince> for WorkerActor {
    type Result = MessageResult<RunningSince>;

    fn handle(&mut self, _msg: RunningSince, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.table
                .iter()
                .filter(|(_, row)| row.state().is_running())
                .map(|(_, row)| row.since())
                .collect(),
        )
    }
}

impl Handler<GetQueueStats> for WorkerActor {
    type Result = ResponseFuture<crate::queue::QueueStats>;

    fn handle(&mut self, msg: GetQueueStats, _ctx: &mut Self::Context) -> Self::Result {
        let queue = self.queue.addr.clone();
        Box::pin(async move {
            match queue {
                Some(queue) => queue.send(msg).await.unwrap_or_default(),
                None => crate::queue::QueueStats::default(),
            }
        })
    }
}

impl Handler<SubscribeJobEvents> for WorkerActor {
    type Result = bool;

    fn handle(&mut self, msg: SubscribeJobEvents, _ctx: &mut Self::Context) -> bool {
        subscribe(&mut self.subscribers, msg.0, "job")
    }
}

impl Handler<SubscribeWorkerEvents> for WorkerActor {
    type Result = bool;

    fn handle(&mut self, msg: SubscribeWorkerEvents, _ctx: &mut Self::Context) -> bool {
        subscribe(&mut self.watchers, msg.0, "worker")
    }
}

/// Adds a subscriber, unless there are [`MAX_SUBSCRIBERS`] already.
fn subscribe<M>(recipients: &mut Vec<Recipient<M>>, recipient: Recipient<M>, kind: &str) -> bool
where
    M: Message + Send,
    M::Result: Send,
{
    recipients.retain(|s| s.connected());
    if recipients.len() >= MAX_SUBSCRIBERS {
        warn!(
            kind,
            max = MAX_SUBSCRIBERS,
            "refusing an event subscriber: too many"
        );
        return false;
    }
    recipients.push(recipient);
    true
}
