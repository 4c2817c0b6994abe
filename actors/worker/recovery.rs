//! Recovery: jobs resumed from the checkpoint store at start-up (through
//! admission, like any new job), the recovery handler asked about running
//! jobs after a reconnect, jobs whose actor crashed restarted on their
//! checkpoint, the batched write-behind, and the store's health.

use std::time::Instant;

use actix::fut::wrap_future;
use livekit_protocol::{MigrateJobRequest, worker_message};
use tracing::{debug, error, info, warn};

use super::*;
use crate::jobs::{Admission, FinalStatus, JobSpec, JobState, Placement, Refusal};
use crate::limits::ResourceRequest;
use crate::recovery::{Checkpoint, JobCheckpoint, RecoveryError, RestartDecision};

/// How many times a record's removal is tried before it is left (a restart
/// then re-reports the job's final status once more).
const FORGET_ATTEMPTS: u32 = 10;
/// The waits between tries of a removal: 250 ms doubling to 15 s.
const FORGET_BACKOFF: crate::Backoff = crate::Backoff {
    initial: std::time::Duration::from_millis(250),
    max: std::time::Duration::from_secs(15),
    jitter: 0.5,
};

impl WorkerActor {
    /// Reads the checkpoint store and resumes what a previous run of this
    /// worker (the same `instance_id`) left there, and the orphans of
    /// workers that are gone: each claimed first, so that a job is resumed
    /// by exactly one worker.
    pub(super) fn recover_at_start(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let me = self.options.instance_id.clone();
        let scan = async move {
            let orphaned = store.list_orphaned().await?;
            let own = store.list().await?;
            let mut ids: Vec<String> = orphaned
                .iter()
                .chain(own.iter().filter(|cp| cp.claim().owner == me))
                .map(|cp| cp.job_id().to_owned())
                .collect();
            ids.sort();
            ids.dedup();
            Ok::<_, crate::recovery::StoreError>(ids)
        };
        ctx.spawn(
            wrap_future(scan).map(|result, act: &mut Self, ctx| match result {
                Ok(ids) => act.claim_for_recovery(ids, ctx),
                Err(err) => error!(%err, "cannot read the checkpoint store: no job is resumed"),
            }),
        );
    }

    /// Looks for jobs whose worker is gone (its heartbeat lapsed) and claims
    /// as many as this worker has free slots for; one scan at a time, none
    /// while stopping.
    pub(super) fn take_over_orphans(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down() || self.orphan_scan_pending {
            return;
        }
        let slots = self.slots();
        let free = slots.free();
        if free == 0 {
            return;
        }
        self.orphan_scan_pending = true;
        let scan = self.store.list_orphaned();
        ctx.spawn(wrap_future(scan).map(move |result, act: &mut Self, ctx| {
            act.orphan_scan_pending = false;
            match result {
                Ok(orphans) if !orphans.is_empty() => {
                    let ids = orphans
                        .iter()
                        .map(|cp| cp.job_id().to_owned())
                        .take(free)
                        .collect();
                    info!(orphans = orphans.len(), free, "taking over orphaned jobs");
                    act.claim_for_recovery(ids, ctx);
                }
                Ok(_) => {}
                Err(err) => warn!(%err, "cannot scan the checkpoint store for orphaned jobs"),
            }
        }));
    }

    /// Claims the scanned records of jobs this worker does not already run
    /// (a job that started since the worker did writes its record under
    /// this worker's identity; claiming it would fence its own running
    /// copy), then resumes what it won.
    fn claim_for_recovery(&mut self, ids: Vec<String>, ctx: &mut Context<Self>) {
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| self.table.get(id).is_none())
            .collect();
        if ids.is_empty() {
            return;
        }
        let store = self.store.clone();
        let me = self.options.instance_id.clone();
        let claim_all = async move {
            let mut claimed = Vec::new();
            for id in ids {
                // another worker may win it between the scan and the claim;
                // a failure ends the round, keeping what was won (those jobs
                // are this worker's now, and only it will run them)
                match store.claim(&id, &me).await {
                    Ok(Some(record)) => claimed.push(record),
                    Ok(None) => {}
                    Err(err) => {
                        error!(%err, "cannot claim from the checkpoint store: the rest waits for the next scan");
                        break;
                    }
                }
            }
            claimed
        };
        ctx.spawn(wrap_future(claim_all).map(|claimed, act: &mut Self, ctx| {
            if !claimed.is_empty() {
                act.recover(claimed, ctx)
            }
        }));
    }

    /// Renews this worker's heartbeat in the checkpoint store (one call for
    /// all its jobs; one in flight at a time).
    pub(super) fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.heartbeat_pending {
            return;
        }
        self.heartbeat_pending = true;
        let beat = self
            .store
            .heartbeat(&self.options.instance_id, self.options.liveness_ttl);
        ctx.spawn(wrap_future(beat).map(|result, act: &mut Self, _ctx| {
            act.heartbeat_pending = false;
            // retried at the next third of the TTL, however long the store
            // fails: one command, and the lease depends on it
            match result {
                Ok(()) => act.store_ok(),
                Err(err) => {
                    act.store_failed(&err);
                    debug!(%err, "could not renew the worker's heartbeat in the checkpoint store");
                }
            }
        }));
    }

    /// Writes every live job's dirty checkpoint in one batch
    /// (`CheckpointStore::put_many`: a handful of round trips for thousands
    /// of jobs, rather than one each); one batch at a time. A job whose
    /// write was refused by its fence is told, and lets go of the job. A
    /// local job's handle is not the store's: it is never written here.
    pub(super) fn write_behind(&mut self, ctx: &mut Context<Self>) {
        if self.write_behind_pending || !self.store_health.attempt_now() {
            return;
        }
        let taken: Vec<_> = self
            .table
            .iter()
            .filter(|(_, row)| row.origin().keeps_record() && row.state().is_running())
            .filter_map(|(_, row)| {
                let write = row.checkpoint()?.take_dirty()?;
                Some((row.attachment.addr.clone(), write))
            })
            .collect();
        if taken.is_empty() {
            return;
        }
        self.write_behind_pending = true;
        let records = taken.iter().map(|(_, w)| w.record.clone()).collect();
        let batch = self.store.put_many(records);
        ctx.spawn(wrap_future(batch).map(move |answer, act: &mut Self, _ctx| {
            act.write_behind_pending = false;
            let results = match answer {
                Ok(results) if results.len() == taken.len() => results,
                Ok(results) => crate::recovery::store::each_failed(
                    taken.len(),
                    &format!("{} answers for {} records", results.len(), taken.len()),
                ),
                Err(err) => crate::recovery::store::each_failed(taken.len(), &err.to_string()),
            };
            let mut failed = 0usize;
            let mut first_error = None;
            for ((addr, write), result) in taken.into_iter().zip(results) {
                act.metrics.checkpoint_written(result.is_ok());
                match &result {
                    Ok(()) => {}
                    Err(crate::recovery::StoreError::Fenced { holder, fence, .. }) => {
                        if let Some(addr) = addr {
                            addr.do_send(CheckpointRefused {
                                holder: holder.clone(),
                                fence: *fence,
                            });
                        }
                    }
                    Err(err) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| err.to_string());
                    }
                }
                write.settle(&result);
            }
            match first_error {
                Some(err) => {
                    debug!(
                        failed,
                        err, "could not write checkpoints: retrying with backoff"
                    );
                    act.store_failed(&err);
                }
                None => act.store_ok(),
            }
        }));
    }

    /// Resumes the jobs a previous run of the worker left in the store, as
    /// the recovery handler allows and capacity permits (past the free slots
    /// they wait in the queue at their priority); reports the others FAILED
    /// and forgets them.
    fn recover(&mut self, checkpoints: Vec<JobCheckpoint>, ctx: &mut Context<Self>) {
        if self.shutting_down() {
            // the checkpoints stay for the next start
            info!(jobs = checkpoints.len(), "shutting down: no job is resumed");
            return;
        }
        let mut resumed = Vec::new();
        for record in checkpoints {
            let job_id = record.job_id().to_owned();
            if self.table.get(&job_id).is_some() {
                continue;
            }
            let room = record.room_name().to_owned();
            let claim = record.claim().clone();
            if record.is_from_fleet_queue() && record.final_status().is_some() {
                // a job of the fleet's queue that had ended: no server waits
                // for its status; dropping the record acknowledges it
                info!(job_id, "dropping the record of a fleet job that had ended");
                self.forget(&job_id, claim, ctx);
                continue;
            }
            if let Some(done) = record.final_status().cloned() {
                // it ended before the server confirmed its status: report
                // the status again, never run the job again
                let status = FinalStatus {
                    status: livekit_protocol::JobStatus::try_from(done.status)
                        .unwrap_or(livekit_protocol::JobStatus::JsFailed),
                    error: done.error,
                };
                match self
                    .table
                    .fail_unstarted(&job_id, &room, status, Instant::now())
                {
                    Ok(report) => {
                        info!(
                            job_id,
                            "re-reporting the final status of a job that had ended"
                        );
                        // its record, removed once the server confirms
                        let record = Checkpoint::new(record, self.store.clone());
                        self.table.set_checkpoint(&job_id, record);
                        self.deliver(report);
                    }
                    Err(err) => warn!(job_id, %err, "cannot re-report the final status"),
                }
                continue;
            }
            let from_fleet = record.is_from_fleet_queue();
            match self.resume(&record) {
                Ok(placement) => {
                    if !from_fleet {
                        // only the server's jobs are claimed from the server
                        resumed.push(job_id.clone());
                    }
                    self.metrics.recovered();
                    self.place(&job_id, placement, ctx);
                }
                Err(error) => {
                    let recovery = &self.recovery;
                    guard("on_recovery_failed", &job_id, || {
                        recovery.on_recovery_failed(&job_id, &error)
                    });
                    if from_fleet {
                        // no server knows it: it is over, and so is its item
                        warn!(job_id, %error, "a fleet job not recovered: dropped");
                        self.forget(&job_id, claim, ctx);
                        continue;
                    }
                    let status = FinalStatus::failed(format!(
                        "not recovered after a worker restart: {error}"
                    ));
                    match self
                        .table
                        .fail_unstarted(&job_id, &room, status, Instant::now())
                    {
                        Ok(report) => {
                            // its record goes once the server confirms
                            let record = Checkpoint::new(record, self.store.clone());
                            self.table.set_checkpoint(&job_id, record);
                            self.metrics.ended(false, None);
                            self.deliver(report);
                        }
                        Err(err) => warn!(job_id, %err, "cannot record the refusal"),
                    }
                }
            }
        }
        if !resumed.is_empty() {
            info!(jobs = resumed.len(), "resumed jobs from their checkpoints");
            if self.connected() {
                self.send(vec![worker_message::Message::MigrateJob(
                    MigrateJobRequest { job_ids: resumed },
                )]);
            } // else: the next registration claims them with the others
        }
    }

    /// Asks the recovery handler about one checkpoint and, if it agrees,
    /// admits the job through the table with a fresh room token for the same
    /// identity. The JobActor calls `on_recovered` once it runs.
    fn resume(&mut self, record: &JobCheckpoint) -> Result<Placement, RecoveryError> {
        let recovery = &self.recovery;
        let job_id = record.job_id().to_owned();
        let accepted = guard("on_recovery_attempt", &job_id, || {
            recovery.on_recovery_attempt(&job_id, record)
        })
        .ok_or_else(|| RecoveryError::Resume("on_recovery_attempt panicked".into()))?;
        if !accepted {
            return Err(RecoveryError::Declined);
        }
        let job = record.job().map_err(RecoveryError::Checkpoint)?;
        let identity = record.participant_identity().to_owned();
        let token = self
            .options
            .credentials
            .room_token(record.room_name(), &identity, self.options.room_token_ttl)
            .map_err(|e| RecoveryError::Resume(e.to_string()))?;
        // a recovered job takes a slot and a reservation like any other; the
        // rate limits are for new work, not for work already accepted once
        let reservation = self
            .limiter
            .reserve(ResourceRequest::default())
            .map_err(|e| RecoveryError::Resume(e.to_string()))?;
        let priority = self.priority_of(&job);
        // a job of the fleet's queue stays one: no server knows it
        let origin = if record.is_from_fleet_queue() {
            crate::jobs::JobOrigin::Fleet
        } else {
            crate::jobs::JobOrigin::Recovered
        };
        let checkpoint = Checkpoint::new(record.clone(), self.store.clone());
        checkpoint.next_attempt();
        let admission = Admission {
            id: job_id.clone(),
            origin,
            priority,
            reservation: Some(reservation),
            spec: JobSpec {
                url: self.options.url.clone(),
                token,
                identity: Some(identity),
                job: Arc::new(job),
            },
            checkpoint: Some(checkpoint),
        };
        let placement =
            self.table
                .admit(admission, Instant::now())
                .map_err(|refusal| match refusal {
                    Refusal::AtCapacity => RecoveryError::Resume(
                        "no capacity: every slot is taken and the queue is full".into(),
                    ),
                    Refusal::Duplicate(id) => {
                        RecoveryError::Resume(format!("{id} is already known"))
                    }
                })?;
        info!(job_id, ?placement, %priority, "resuming a job after a restart");
        Ok(placement)
    }

    /// After a reconnect, has every job of the server's ask the recovery
    /// handler whether it stays (`on_recovered`) or ends
    /// (`on_recovery_failed`, reported FAILED). Each job asks about itself,
    /// with its own state.
    pub(super) fn recover_after_reconnect(&self) {
        for (_, row) in self.table.iter() {
            if row.origin().is_servers()
                && row.state().is_running()
                && let Some(addr) = &row.attachment.addr
            {
                addr.do_send(Reconnected);
            }
        }
    }

    /// A job's actor died without reporting an end (a panic in its own
    /// code): start a new one on the job's checkpoint handle (in its table
    /// row: what the handler saved last, written or not), under the job's
    /// crash limit, or report the job FAILED past it.
    pub(super) fn job_actor_crashed(&mut self, job_id: &str, ctx: &mut Context<Self>) {
        let policy = self.options.child_restart_policy.clone();
        let Some(row) = self.table.get_mut(job_id) else {
            return;
        };
        row.attachment.addr = None;
        let decision = row
            .attachment
            .crashes
            .get_or_insert(policy)
            .on_failure_jittered(Instant::now(), rand::random::<f64>());
        if let Some(status) = self.table.ending(job_id).cloned() {
            // it was being ended (terminated, or the shutdown): it ends now
            warn!(job_id, "the job's actor died while the job was being ended");
            return self.end_job(job_id, status, ctx);
        }
        if let Some(reason) = self.cut_reason() {
            return self.end_job(job_id, FinalStatus::failed(reason), ctx);
        }
        let after = match decision {
            RestartDecision::Restart { after, .. } => after,
            RestartDecision::GiveUp => {
                error!(job_id, "the job's actor keeps crashing: failing the job");
                let status = FinalStatus::failed("the job's actor crashed repeatedly");
                return self.end_job(job_id, status, ctx);
            }
        };
        warn!(
            job_id,
            ?after,
            "the job's actor crashed: starting a new one"
        );
        self.table.crashed(job_id, Instant::now());
        let id = job_id.to_owned();
        ctx.run_later(after, move |act, ctx| {
            let waiting = act.table.get(&id).is_some_and(|row| {
                row.state() == JobState::Starting && row.attachment.addr.is_none()
            });
            if !waiting {
                return; // terminated meanwhile
            }
            act.restart_job(&id, ctx);
        });
    }

    /// Starts the new actor of a job whose actor crashed.
    fn restart_job(&mut self, job_id: &str, ctx: &mut Context<Self>) {
        self.metrics.restarted();
        self.job_event(job_id, "restarting");
        self.start_job(job_id, true, ctx);
        self.notify(WorkerEvent::ChildRestarted {
            child: Child::Job(job_id.to_owned()).to_string(),
            panicked: true,
        });
    }

    /// Removes a job's checkpoint from the store, as the holder of `claim`.
    /// A failed removal (the store is down) is retried with backoff, at
    /// most `FORGET_ATTEMPTS` times: a record left behind would only make a
    /// restarted worker report the job's final status once more.
    pub(super) fn forget(
        &mut self,
        job_id: &str,
        claim: crate::recovery::Claim,
        ctx: &mut Context<Self>,
    ) {
        self.forget_attempt(job_id.to_owned(), claim, 1, ctx);
    }

    fn forget_attempt(
        &mut self,
        id: String,
        claim: crate::recovery::Claim,
        attempt: u32,
        ctx: &mut Context<Self>,
    ) {
        let remove = self.store.remove(&id, &claim);
        ctx.spawn(
            wrap_future(remove).map(move |result, act: &mut Self, ctx| match result {
                Ok(_) => act.store_ok(),
                // another worker holds the record now: not this one's to drop
                Err(crate::recovery::StoreError::Fenced { .. }) => {}
                Err(err) => {
                    act.store_failed(&err);
                    if attempt >= FORGET_ATTEMPTS {
                        warn!(job_id = id, %err, attempt, "could not remove the checkpoint: giving up");
                        return;
                    }
                    let delay = FORGET_BACKOFF.delay(attempt - 1, rand::random());
                    ctx.run_later(delay, move |act, ctx| {
                        act.forget_attempt(id, claim, attempt + 1, ctx)
                    });
                }
            }),
        );
    }

    /// The store answered: clears its error, saying how long it failed.
    pub(super) fn store_ok(&mut self) {
        if let Some(outage) = self.store_health.succeeded(Instant::now()) {
            info!(?outage, "the checkpoint store answers again");
        }
    }

    /// The store failed: noted for `GetState` and the write-behind's
    /// backoff; warned about when it begins.
    pub(super) fn store_failed(&mut self, err: &dyn std::fmt::Display) {
        if self.store_health.failed(err.to_string(), Instant::now()) {
            warn!(%err, "the checkpoint store fails: jobs keep running, writes are retried with backoff");
        }
    }
}
