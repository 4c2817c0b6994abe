//! A job's life: assignment, start (now or through the queue), end, termination.

use super::*;

impl WorkerActor {
    /// Starts the job if a slot is free, else queues it. Answers the queue
    /// depth when queued.
    pub(super) fn launch(
        &mut self,
        launch: JobLaunch,
        priority: JobPriority,
        ctx: &mut Context<Self>,
    ) -> Option<usize> {
        if self.can_run_now() {
            self.start_job(launch, ctx);
            return None;
        }
        self.queued += 1;
        let depth = self.queued;
        let Some(queue) = self.queue.clone() else {
            return Some(depth);
        };
        ctx.spawn(wrap_future(queue.send(Enqueue { launch, priority })).map(
            |result, act: &mut Self, _ctx| {
                match result {
                    Ok(Ok(_)) => {}
                    Ok(Err(launch)) => {
                        // counted room, so this means the accounting is off: fail loudly
                        act.queued = act.queued.saturating_sub(1);
                        error!(
                            job_id = launch.job.id,
                            "the queue refused a job it had room for"
                        );
                        act.fail_unstarted(launch, "the job queue is full".into());
                    }
                    Err(err) => error!(%err, "the queue is gone"),
                }
            },
        ));
        self.slots_changed();
        Some(depth)
    }

    /// A slot freed: hand it to the next queued job, if any.
    pub(super) fn grant_slot(&mut self, ctx: &mut Context<Self>) {
        if self.queued == 0 || !self.can_run_now() {
            return;
        }
        let Some(queue) = self.queue.clone() else {
            return;
        };
        self.granting += 1;
        ctx.spawn(
            wrap_future(queue.send(TakeNext)).map(|result, act: &mut Self, ctx| {
                act.granting -= 1;
                if let Ok(Some(launch)) = result {
                    act.queued = act.queued.saturating_sub(1);
                    info!(job_id = launch.job.id, "starting a queued job");
                    act.start_job(launch, ctx);
                    act.grant_slot(ctx);
                } else {
                    act.slots_changed();
                }
            }),
        );
    }

    /// Checks memory against the limits; tells every running job when the
    /// state changes, and forgets rooms the rate limiter no longer needs.
    /// The reads are of procfs, which lives in memory: they cannot stall the
    /// arbiter on a disk.
    pub(super) fn check_resources(&mut self) {
        let state = self.limiter.check_memory();
        if state != self.memory {
            match state {
                UsageState::Pressure | UsageState::Exceeded => {
                    warn!(?state, "memory pressure: telling jobs, admitting none")
                }
                _ => info!(?state, "memory pressure over"),
            }
            self.memory = state;
            for job in self.jobs.values() {
                job.addr.do_send(MemoryPressure(state));
            }
        }
        if let Some(limiter) = &self.rate_limiter {
            limiter.retain_recent();
        }
    }

    /// Reports a job that never ran as FAILED (to the server if it is the
    /// server's, to subscribers either way).
    pub(super) fn fail_unstarted(&mut self, launch: JobLaunch, error: String) {
        self.report_job(
            UpdateJobStatus {
                job_id: launch.job.id,
                status: JobStatus::JsFailed as i32,
                error,
            },
            launch.origin,
        );
    }

    pub(super) fn start_job(&mut self, launch: JobLaunch, ctx: &mut Context<Self>) {
        let JobLaunch {
            job,
            url,
            token,
            identity,
            origin,
            recovered,
            reservation,
        } = launch;
        let job_id = job.id.clone();
        let mut context = JobContext::new(job, url, token);
        if let Some(identity) = identity {
            context = context.with_identity(&identity);
        }
        let is_recovered = recovered.is_some();
        let checkpoint = recovered.unwrap_or_else(|| {
            let record = JobCheckpoint::new(
                context.job(),
                context.participant_identity(),
                SystemTime::now(),
            );
            match origin {
                // the server can re-dispatch its jobs: keep them where a
                // restarted worker finds them
                JobOrigin::Server => Checkpoint::new(record, self.store.clone()),
                // nobody would claim a local job after a restart
                JobOrigin::Local => Checkpoint::in_memory(record),
            }
        });
        let context = context.with_checkpoint(checkpoint, is_recovered);
        let handler = self.handler.clone();
        let worker = ctx.address();
        let rules = JobRules {
            grace: self.options.termination_grace,
            restart_policy: self.options.restart_policy.clone(),
            max_retry_delay: self.options.max_retry_delay,
            checkpoint_interval: self.options.checkpoint_interval,
            recovery: self.recovery.clone(),
        };
        let threads = self
            .threads
            .get_or_insert_with(|| JobThreads::new(self.options.job_threads));
        let addr = JobActor::start_in_arbiter(&threads.pick(), move |_| {
            JobActor::new(context, handler, worker, rules)
        });
        self.jobs.insert(
            job_id,
            RunningJob {
                addr,
                started_at: Instant::now(),
                origin,
                _reservation: reservation,
            },
        );
        self.slots_changed();
    }
}

impl Handler<JobAssigned> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobAssigned, ctx: &mut Self::Context) {
        let job_id = msg.job.id.clone();
        if self.jobs.contains_key(&job_id) {
            warn!(job_id, "ignoring a second assignment of a running job");
            return;
        }
        let (identity, priority, reservation) = match self.reserved.remove(&job_id) {
            Some(pending) => {
                if let Some(handle) = pending.expiry {
                    ctx.cancel_future(handle);
                }
                (pending.identity, pending.priority, pending.limits)
            }
            None if self.slots().is_full() => {
                warn!(
                    job_id,
                    "assigned a job that was not accepted, at capacity: failing it"
                );
                self.report_job(
                    UpdateJobStatus {
                        job_id,
                        status: JobStatus::JsFailed as i32,
                        error: "worker at capacity".into(),
                    },
                    JobOrigin::Server,
                );
                return;
            }
            None => {
                info!(
                    job_id,
                    "assigned a job that was not offered first: running it"
                );
                (None, self.priority_of(&msg.job), None)
            }
        };
        let url = msg
            .url
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| self.options.url.clone());
        info!(job_id, "job assigned");
        let launch = JobLaunch {
            job: msg.job,
            url,
            token: msg.token,
            identity,
            origin: JobOrigin::Server,
            recovered: None,
            reservation,
        };
        self.launch(launch, priority, ctx);
    }
}

impl Handler<JobStarted> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobStarted, _ctx: &mut Self::Context) {
        let Some(origin) = self.jobs.get(&msg.job_id).map(|job| job.origin) else {
            return;
        };
        self.report_job(
            UpdateJobStatus {
                job_id: msg.job_id,
                status: JobStatus::JsRunning as i32,
                error: String::new(),
            },
            origin,
        );
    }
}

impl Handler<JobExited> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: JobExited, ctx: &mut Self::Context) {
        let Some(job) = self.jobs.remove(&msg.job_id) else {
            return;
        };
        match &msg.outcome {
            JobOutcome::Succeeded | JobOutcome::Terminated => {
                info!(job_id = msg.job_id, outcome = ?msg.outcome, "job ended")
            }
            JobOutcome::Failed(_) | JobOutcome::Panicked(_) => {
                warn!(job_id = msg.job_id, outcome = ?msg.outcome, "job failed")
            }
        }
        if job.origin == JobOrigin::Server {
            self.forget(&msg.job_id, ctx);
        }
        self.report_job(msg.outcome.to_update(&msg.job_id), job.origin);
        drop(job); // releases its resources before the next job takes them
        self.slots_changed();
        self.grant_slot(ctx);
    }
}

impl Handler<TerminationRequested> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: TerminationRequested, ctx: &mut Self::Context) {
        if let Some(job) = self.jobs.get(&msg.job_id) {
            job.addr.do_send(TerminateJob);
        } else if self.reserved.contains_key(&msg.job_id) {
            info!(
                job_id = msg.job_id,
                "terminated before assignment: releasing the slot"
            );
            self.release(&msg.job_id, ctx);
        } else {
            debug!(job_id = msg.job_id, "termination for an unknown job");
        }
    }
}

impl Handler<QueuedJobsExpired> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: QueuedJobsExpired, _ctx: &mut Self::Context) {
        self.queued = self.queued.saturating_sub(msg.launches.len());
        for launch in msg.launches {
            let error = format!("waited longer than {:?} in the job queue", msg.max_wait);
            warn!(job_id = launch.job.id, error, "failing a queued job");
            self.fail_unstarted(launch, error);
        }
        self.slots_changed();
    }
}
