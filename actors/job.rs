//! JobActor: one per assigned job, running the user's handler.
//!
//! It lives on one of the worker's job arbiters, so a handler that hogs its
//! thread slows other jobs on that thread but never the connection. It runs
//! `on_job` under `catch_unwind`: a panic becomes a failure, not an unwound
//! arbiter.
//!
//! Supervision: a handler that panics or returns `JobError::Retryable` is run
//! again under the job's [`RestartPolicy`] (at most N restarts within a
//! period, with backoff; a retryable error waits its own `retry_after`,
//! capped), with the same [`Checkpoint`]: `JobContext::attempt` and
//! `is_restart` tell the handler, and the checkpoint holds what it saved
//! before. No FAILED is reported between attempts; when the policy gives up,
//! the job is FAILED with the last error. The actor writes the checkpoint
//! to the store when the job starts, on each restart, when it is stopped
//! for a shutdown, and with the final status at its end; in between the
//! worker writes it behind the handler, every job's in one batch per
//! interval (a refusal by the fence comes back as [`CheckpointRefused`]).
//!
//! On termination (by the server, or by the worker shutting down) it fires
//! the job's cancellation signal, calls `on_terminated` once, and gives the
//! handler a grace period to return. It sends at most one [`JobExited`]; if
//! the actor dies without one (a panic in its own code), its [`Link`] tells
//! the worker, which starts a new actor for the job from its stored
//! checkpoint, under a restart limit, or reports it FAILED.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use futures_util::FutureExt as _;
use tracing::Instrument as _;
use tracing::{debug, info, warn};

use super::messages::*;
use super::supervision::Link;
use crate::handler::{DynHandler, JobContext, JobError};
use crate::recovery::{RecoveryError, RecoveryHandler, RestartDecision, RestartPolicy};

/// How jobs are run: the bounds that are the same for every job.
#[derive(Clone)]
pub(crate) struct JobRules {
    /// How long a terminated handler may take to return.
    pub grace: Duration,
    /// The restart policy each job starts with (cloned per job).
    pub restart_policy: RestartPolicy,
    /// The longest wait a retryable error may ask for.
    pub max_retry_delay: Duration,
    /// Asked about the job when it is recovered (read-only, shared).
    pub recovery: Arc<dyn RecoveryHandler>,
    /// Counts checkpoint writes.
    pub metrics: crate::telemetry::WorkerMetrics,
}

/// How a room token the worker minted itself is kept fresh: a new one for
/// the same room and identity every three quarters of its lifetime.
pub(crate) struct TokenRefresh {
    /// Signs the new tokens (the secret is read from its source each time).
    pub credentials: crate::auth::Credentials,
    /// The room.
    pub room: String,
    /// The identity.
    pub identity: String,
    /// How long each token is valid.
    pub ttl: Duration,
}

/// Runs one job.
pub struct JobActor {
    context: JobContext,
    handler: Arc<dyn DynHandler>,
    link: Link,
    rules: JobRules,
    policy: RestartPolicy,
    /// Set once the job is being ended from outside (terminated by the
    /// server, or declined after a reconnect): the outcome it will report,
    /// whatever the handler returns.
    ending: Option<JobOutcome>,
    /// Set once the job began to exit (its last write is in flight, or it
    /// let the job go): nothing starts or ends it again.
    exited: bool,
    /// Set while a restart is waiting for its delay.
    restart_pending: bool,
    /// Keeps a worker-minted room token fresh.
    refresh: Option<TokenRefresh>,
    /// The job's span: the handler runs in it.
    span: tracing::Span,
}

/// How a run of the handler failed, for the restart decision.
enum Failure {
    Retryable {
        reason: String,
        retry_after: Duration,
    },
    Panicked(String),
}

impl JobActor {
    pub(crate) fn new(
        context: JobContext,
        handler: Arc<dyn DynHandler>,
        link: Link,
        rules: JobRules,
        refresh: Option<TokenRefresh>,
        span: tracing::Span,
    ) -> Self {
        let policy = rules.restart_policy.clone();
        Self {
            context,
            handler,
            link,
            rules,
            policy,
            ending: None,
            exited: false,
            restart_pending: false,
            refresh,
            span,
        }
    }

    /// The job is over (or stopped by its worker): its last write goes to
    /// the store, then the worker hears of it. Once only; the actor keeps
    /// taking messages meanwhile (a write of the record the worker's batch
    /// has in flight waits its turn, which a blocked context could not give
    /// it).
    fn exit(&mut self, outcome: JobOutcome, ctx: &mut Context<Self>) {
        if self.exited {
            return;
        }
        self.exited = true;
        let write = if matches!(outcome, JobOutcome::Stopped(_)) {
            // stopped by its worker (a shutdown, a drain's cut): it may be
            // resumed, so no final status goes into its record, only what
            // the handler saved last
            self.context.checkpoint().write()
        } else {
            // the final status goes into the record before the worker hears
            // of it, so that it is durable before it can be reported
            let status = outcome.final_status();
            self.context
                .checkpoint()
                .record_final(crate::recovery::FinalRecord {
                    status: status.status as i32,
                    error: status.error,
                })
        };
        ctx.spawn(actix::fut::wrap_future(write).map(
            move |result, act: &mut Self, ctx| match result {
                Ok(()) => act.exited_with(outcome, ctx),
                Err(crate::recovery::StoreError::Fenced { holder, fence, .. }) => {
                    // another worker holds the job: it reports, not this one
                    act.let_go(holder, fence, ctx);
                }
                Err(err) => {
                    // the status still goes to the server; only a restart
                    // before its confirmation would miss it
                    warn!(job_id = act.context.id(), %err, "could not write the job's last record");
                    act.exited_with(outcome, ctx);
                }
            },
        ));
    }

    /// Tells the worker how the job ended, and stops.
    fn exited_with(&mut self, outcome: JobOutcome, ctx: &mut Context<Self>) {
        self.link.worker().do_send(JobExited {
            job_id: self.context.id().to_owned(),
            outcome,
            generation: self.link.generation(),
        });
        ctx.stop();
    }

    /// Writes the checkpoint without waiting; a failure is logged and the
    /// record stays dirty for the next write.
    fn write_checkpoint(&self, ctx: &mut Context<Self>) {
        let job_id = self.context.id().to_owned();
        let write = self.context.checkpoint().write();
        ctx.spawn(
            actix::fut::wrap_future(write).map(move |result, act: &mut Self, ctx| {
                act.rules.metrics.checkpoint_written(result.is_ok());
                match result {
                    Ok(()) => {}
                    Err(crate::recovery::StoreError::Fenced { holder, fence, .. }) => {
                        act.refused(holder, fence, ctx)
                    }
                    Err(err) => warn!(job_id, %err, "could not write the checkpoint"),
                }
            }),
        );
    }

    /// A write other than the job's last was refused by its fence: the job
    /// is let go, unless it is already exiting (its last write, refused
    /// too, lets it go).
    fn refused(&mut self, holder: String, fence: u64, ctx: &mut Context<Self>) {
        if !self.exited {
            self.exited = true;
            self.let_go(holder, fence, ctx);
        }
    }

    /// Another worker claimed the job: this copy stops at once, reports no
    /// status and leaves the record alone (a partition or a long pause
    /// outlasted this worker's heartbeat).
    fn let_go(&mut self, holder: String, fence: u64, ctx: &mut Context<Self>) {
        warn!(
            job_id = self.context.id(),
            holder, fence, "another worker holds the job now: stopping this copy"
        );
        self.link.worker().do_send(JobLost {
            job_id: self.context.id().to_owned(),
            generation: self.link.generation(),
            holder,
        });
        ctx.stop();
    }

    /// Runs the handler once, under `catch_unwind`.
    fn run_attempt(&mut self, ctx: &mut Context<Self>) {
        self.span.record("attempt", self.context.attempt());
        let run = AssertUnwindSafe(
            self.handler
                .clone()
                .on_job(self.context.clone())
                .instrument(self.span.clone()),
        )
        .catch_unwind();
        ctx.spawn(
            actix::fut::wrap_future(run).map(|result, act: &mut Self, ctx| {
                if let Some(outcome) = act.ending.clone() {
                    return act.exit(ending_outcome(outcome, &result), ctx);
                }
                let failure = match result {
                    Ok(Ok(())) => return act.exit(JobOutcome::Succeeded, ctx),
                    Ok(Err(JobError::Failed(reason))) => {
                        return act.exit(JobOutcome::Failed(reason), ctx);
                    }
                    Ok(Err(JobError::Retryable {
                        reason,
                        retry_after,
                    })) => Failure::Retryable {
                        reason,
                        retry_after,
                    },
                    Err(panic) => Failure::Panicked(panic_message(&*panic)),
                };
                act.restart_or_give_up(failure, ctx);
            }),
        );
    }

    fn restart_or_give_up(&mut self, failure: Failure, ctx: &mut Context<Self>) {
        let attempt = self.context.attempt();
        let after = match self
            .policy
            .on_failure_jittered(Instant::now(), rand::random::<f64>())
        {
            RestartDecision::Restart { after, .. } => after,
            RestartDecision::GiveUp => {
                let outcome = match failure {
                    Failure::Retryable { reason, .. } => {
                        JobOutcome::Failed(format!("{reason} (gave up after {attempt} attempts)"))
                    }
                    Failure::Panicked(message) => JobOutcome::Panicked(format!(
                        "{message} (gave up after {attempt} attempts)"
                    )),
                };
                return self.exit(outcome, ctx);
            }
        };
        let (reason, delay) = match failure {
            Failure::Retryable {
                reason,
                retry_after,
            } => (reason, retry_after.min(self.rules.max_retry_delay)),
            Failure::Panicked(message) => (format!("handler panicked: {message}"), after),
        };
        info!(
            job_id = self.context.id(),
            attempt,
            ?delay,
            reason,
            "restarting the job"
        );
        self.restart_pending = true;
        self.link.worker().do_send(JobRestarted {
            job_id: self.context.id().to_owned(),
            generation: self.link.generation(),
        });
        ctx.run_later(delay, |act, ctx| {
            if act.exited {
                // ended while it waited: the restart is not made
                return;
            }
            act.restart_pending = false;
            act.context = act.context.next_attempt();
            act.write_checkpoint(ctx);
            act.run_attempt(ctx);
        });
    }
}

impl Actor for JobActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.link.worker().do_send(JobStarted {
            job_id: self.context.id().to_owned(),
            generation: self.link.generation(),
        });
        // the record exists in the store from the start, so a worker that
        // dies before the first save still finds the job
        self.write_checkpoint(ctx);
        if self.context.is_recovered() {
            let (recovery, context) = (&self.rules.recovery, &self.context);
            guard("on_recovered", context.id(), || {
                recovery.on_recovered(context.job(), context)
            });
        }
        if let Some(refresh) = &self.refresh {
            ctx.run_later(refresh.ttl.mul_f64(0.75), |act, ctx| act.refresh_token(ctx));
        }
        self.run_attempt(ctx);
    }
}

impl JobActor {
    /// Mints a fresh room token for the same room and identity and hands it
    /// to the handler, then schedules the next at three quarters of its
    /// life. A failure (the secret's source is down) keeps the old token and
    /// tries again soon — a twentieth of the lifetime — while it still lives.
    fn refresh_token(&mut self, ctx: &mut Context<Self>) {
        let Some(refresh) = &self.refresh else {
            return;
        };
        let next = match refresh.credentials.room_token(
            &refresh.room,
            &refresh.identity,
            refresh.ttl,
        ) {
            Ok(token) => {
                debug!(job_id = self.context.id(), "room token refreshed");
                self.context.set_token(token);
                refresh.ttl.mul_f64(0.75)
            }
            Err(err) => {
                warn!(job_id = self.context.id(), %err, "cannot refresh the room token: retrying");
                refresh.ttl / 20
            }
        };
        ctx.run_later(next, |act, ctx| act.refresh_token(ctx));
    }

    /// Ends the job from outside: cancels it and gives the handler the grace
    /// period to return; it then reports `outcome`.
    fn wind_down(&mut self, outcome: JobOutcome, ctx: &mut Context<Self>) {
        self.ending = Some(outcome.clone());
        self.context.cancel();
        if self.restart_pending {
            // nothing runs: the pending restart is simply not made
            self.exit(outcome, ctx);
            return;
        }
        ctx.run_later(self.rules.grace, move |act, ctx| {
            warn!(
                job_id = act.context.id(),
                grace = ?act.rules.grace,
                "the handler did not return after being cancelled: dropping it"
            );
            act.exit(outcome, ctx);
        });
    }
}

impl Handler<TerminateJob> for JobActor {
    type Result = ();

    fn handle(&mut self, msg: TerminateJob, ctx: &mut Self::Context) {
        if self.ending.is_some() || self.exited {
            return;
        }
        let outcome = match msg {
            TerminateJob::Server => {
                info!(job_id = self.context.id(), "job terminated by the server");
                JobOutcome::Terminated
            }
            TerminateJob::Shutdown(reason) => {
                info!(
                    job_id = self.context.id(),
                    reason, "job stopped: the worker is shutting down"
                );
                JobOutcome::Stopped(reason)
            }
        };
        self.context.cancel();
        let (handler, job) = (&self.handler, self.context.job());
        guard("on_terminated", &job.id, || handler.on_terminated(job));
        self.wind_down(outcome, ctx);
    }
}

impl Handler<CheckpointRefused> for JobActor {
    type Result = ();

    fn handle(&mut self, msg: CheckpointRefused, ctx: &mut Self::Context) {
        self.refused(msg.holder, msg.fence, ctx);
    }
}

impl Handler<Reconnected> for JobActor {
    type Result = ();

    fn handle(&mut self, _msg: Reconnected, ctx: &mut Self::Context) {
        if self.ending.is_some() || self.exited {
            return;
        }
        let (recovery, context) = (self.rules.recovery.clone(), &self.context);
        let job_id = context.id().to_owned();
        // the job is alive right now: its state is as fresh as it gets
        let mut snapshot = context.checkpoint().snapshot();
        snapshot.touch(SystemTime::now());
        let keep = guard("on_recovery_attempt", &job_id, || {
            recovery.on_recovery_attempt(&job_id, &snapshot)
        })
        .unwrap_or(true);
        if keep {
            guard("on_recovered", &job_id, || {
                recovery.on_recovered(context.job(), context)
            });
            return;
        }
        guard("on_recovery_failed", &job_id, || {
            recovery.on_recovery_failed(&job_id, &RecoveryError::Declined)
        });
        info!(
            job_id,
            "the recovery handler declined the job after a reconnect: ending it"
        );
        self.wind_down(
            JobOutcome::Failed(
                "not recovered after a reconnect: the recovery handler declined it".into(),
            ),
            ctx,
        );
    }
}

impl Handler<MemoryPressure> for JobActor {
    type Result = ();

    fn handle(&mut self, msg: MemoryPressure, _ctx: &mut Self::Context) {
        if self.exited {
            return; // its handler is done
        }
        let (handler, job) = (&self.handler, self.context.job());
        guard("on_memory_pressure", &job.id, || {
            handler.on_memory_pressure(job, msg.0)
        });
    }
}

/// Runs one of the user's hooks for a job; a panic in it is logged and
/// becomes `None`, never an unwound arbiter.
/// How a job being ended from outside ends, once its handler has returned
/// `result`: a job the server terminated is a success if its handler
/// returned `Ok` (the dispatch was deleted: there was nothing left to do),
/// but one whose handler failed or panicked on its way out ends FAILED with
/// that error, not as a success that hides it. A job stopped by the
/// worker's shutdown keeps that reason.
fn ending_outcome(
    outcome: JobOutcome,
    result: &Result<Result<(), JobError>, Box<dyn Any + Send>>,
) -> JobOutcome {
    match (outcome, result) {
        (JobOutcome::Terminated, Ok(Err(JobError::Failed(reason)))) => {
            JobOutcome::Failed(reason.clone())
        }
        (JobOutcome::Terminated, Ok(Err(JobError::Retryable { reason, .. }))) => {
            JobOutcome::Failed(reason.clone())
        }
        (JobOutcome::Terminated, Err(panic)) => JobOutcome::Panicked(panic_message(&**panic)),
        (outcome, _) => outcome,
    }
}

pub(crate) fn guard<T>(hook: &str, job_id: &str, call: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(value) => Some(value),
        Err(panic) => {
            warn!(
                job_id,
                hook,
                panic = panic_message(&*panic),
                "a handler hook panicked"
            );
            None
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a format string).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<Panic> for JobActor {
    type Result = ();

    fn handle(&mut self, _msg: Panic, _ctx: &mut Self::Context) {
        panic!("injected fault: the job actor panics");
    }
}
