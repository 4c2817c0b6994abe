//! Recovery: jobs resumed from the checkpoint store at start-up, and the
//! recovery handler asked about running jobs after a reconnect.

use super::*;

impl WorkerActor {
    /// Resumes the jobs a previous run of the worker left in the store, as
    /// the recovery handler allows; reports the others FAILED and forgets
    /// them.
    pub(super) fn recover(&mut self, checkpoints: Vec<JobCheckpoint>, ctx: &mut Context<Self>) {
        let mut resumed = Vec::new();
        for record in checkpoints {
            let job_id = record.job_id().to_owned();
            if self.jobs.contains_key(&job_id) {
                continue;
            }
            match self.resume(record, ctx) {
                Ok(()) => resumed.push(job_id),
                Err(error) => {
                    let recovery = &self.recovery;
                    guard("on_recovery_failed", &job_id, || {
                        recovery.on_recovery_failed(&job_id, &error)
                    });
                    self.forget(&job_id, ctx);
                    self.report_job(
                        UpdateJobStatus {
                            job_id,
                            status: JobStatus::JsFailed as i32,
                            error: format!("not recovered after a worker restart: {error}"),
                        },
                        JobOrigin::Server,
                    );
                }
            }
        }
        if !resumed.is_empty() {
            info!(jobs = resumed.len(), "resumed jobs from their checkpoints");
            if self.connected() {
                self.send(vec![worker_message::Message::MigrateJob(
                    MigrateJobRequest { job_ids: resumed },
                )]);
            } // else: the next registration claims every running job
        }
    }

    pub(super) fn resume(
        &mut self,
        record: JobCheckpoint,
        ctx: &mut Context<Self>,
    ) -> Result<(), RecoveryError> {
        let recovery = &self.recovery;
        let job_id = record.job_id().to_owned();
        let accepted = guard("on_recovery_attempt", &job_id, || {
            recovery.on_recovery_attempt(&job_id, &record)
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
            .room_token(record.room_name(), &identity, ROOM_TOKEN_TTL)
            .map_err(|e| RecoveryError::Resume(e.to_string()))?;
        let checkpoint = Checkpoint::new(record, self.store.clone());
        checkpoint.next_attempt();
        info!(
            job_id,
            attempt = checkpoint.attempt(),
            "resuming a job after a restart"
        );
        let url = self.options.url.clone();
        let launch = JobLaunch {
            job,
            url,
            token,
            identity: Some(identity),
            origin: JobOrigin::Server,
            recovered: Some(checkpoint),
            reservation: None,
        };
        // the JobActor calls on_recovered once it runs
        self.start_job(launch, ctx);
        Ok(())
    }

    /// After a reconnect, has every server job ask the recovery handler
    /// whether it stays (`on_recovered`) or ends (`on_recovery_failed`,
    /// reported FAILED). Each job asks about itself, with its own state.
    pub(super) fn recover_after_reconnect(&self) {
        for job in self
            .jobs
            .values()
            .filter(|job| job.origin == JobOrigin::Server)
        {
            job.addr.do_send(Reconnected);
        }
    }

    /// Removes a job's checkpoint from the store.
    pub(super) fn forget(&self, job_id: &str, ctx: &mut Context<Self>) {
        let id = job_id.to_owned();
        ctx.spawn(wrap_future(self.store.remove(job_id)).map(
            move |result, _act: &mut Self, _ctx| {
                if let Err(err) = result {
                    warn!(job_id = id, %err, "could not remove the checkpoint");
                }
            },
        ));
    }
}
