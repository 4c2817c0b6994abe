//! JobActor: one per assigned job, running the user's handler.
//!
//! It lives on one of the worker's job arbiters, so a handler that hogs its
//! thread slows other jobs on that thread but never the connection. It runs
//! `on_job` under `catch_unwind`: a panic becomes an outcome, not an unwound
//! arbiter. On termination it fires the job's cancellation signal, calls
//! `on_terminated` once, and gives the handler a grace period to return.
//! A handler that fails with `JobError::Retryable` runs again after its
//! `retry_after` (capped), up to the worker's retry bound, without a FAILED
//! in between; `JobContext::attempt` tells the handler which run it is.
//! Whatever happens, it sends exactly one [`JobExited`] to the worker —
//! `stopped()` sends one if nothing else did (the arbiter shutting down).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::FutureExt as _;
use tracing::{info, warn};

use super::messages::*;
use super::worker::WorkerActor;
use crate::handler::{DynHandler, JobContext, JobError};

/// How a job is run: the bounds that do not change per job.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JobRules {
    /// How long a terminated handler may take to return.
    pub grace: Duration,
    /// How many times a retryable failure is run again.
    pub max_retries: u32,
    /// The longest wait before a retry.
    pub max_retry_delay: Duration,
}

/// Runs one job.
pub struct JobActor {
    context: JobContext,
    handler: Arc<dyn DynHandler>,
    worker: Addr<WorkerActor>,
    rules: JobRules,
    terminated: bool,
    exited: bool,
    /// Set while a retry is waiting for its delay.
    retry_pending: bool,
}

impl JobActor {
    pub(crate) fn new(
        context: JobContext,
        handler: Arc<dyn DynHandler>,
        worker: Addr<WorkerActor>,
        rules: JobRules,
    ) -> Self {
        Self {
            context,
            handler,
            worker,
            rules,
            terminated: false,
            exited: false,
            retry_pending: false,
        }
    }

    /// Runs the handler once, under `catch_unwind`.
    fn run_attempt(&mut self, ctx: &mut Context<Self>) {
        let run =
            AssertUnwindSafe(self.handler.clone().on_job(self.context.clone())).catch_unwind();
        ctx.spawn(
            actix::fut::wrap_future(run).map(|result, act: &mut Self, ctx| {
                let outcome = match result {
                    _ if act.terminated => JobOutcome::Terminated,
                    Ok(Ok(())) => JobOutcome::Succeeded,
                    Ok(Err(JobError::Retryable {
                        reason,
                        retry_after,
                    })) => {
                        let attempt = act.context.attempt();
                        if attempt <= act.rules.max_retries {
                            let delay = retry_after.min(act.rules.max_retry_delay);
                            info!(
                                job_id = act.context.id(),
                                attempt,
                                ?delay,
                                reason,
                                "retrying the job"
                            );
                            act.retry_pending = true;
                            ctx.run_later(delay, |act, ctx| {
                                act.retry_pending = false;
                                act.context = act.context.next_attempt();
                                act.run_attempt(ctx);
                            });
                            return;
                        }
                        JobOutcome::Failed(format!("{reason} (gave up after {attempt} attempts)"))
                    }
                    Ok(Err(err)) => JobOutcome::Failed(err.to_string()),
                    Err(panic) => JobOutcome::Panicked(panic_message(&*panic)),
                };
                act.exit(outcome, ctx);
            }),
        );
    }

    fn exit(&mut self, outcome: JobOutcome, ctx: &mut Context<Self>) {
        if !self.exited {
            self.exited = true;
            self.worker.do_send(JobExited {
                job_id: self.context.id().to_owned(),
                outcome,
            });
        }
        ctx.stop();
    }
}

impl Actor for JobActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.worker.do_send(JobStarted {
            job_id: self.context.id().to_owned(),
        });
        self.run_attempt(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if !self.exited {
            self.exited = true;
            self.worker.do_send(JobExited {
                job_id: self.context.id().to_owned(),
                outcome: if self.terminated {
                    JobOutcome::Terminated
                } else {
                    JobOutcome::Failed("the job was stopped before its handler finished".into())
                },
            });
        }
    }
}

impl Handler<TerminateJob> for JobActor {
    type Result = ();

    fn handle(&mut self, _msg: TerminateJob, ctx: &mut Self::Context) {
        if self.terminated {
            return;
        }
        self.terminated = true;
        info!(job_id = self.context.id(), "job terminated by the server");
        self.context.cancel();
        let handler = &self.handler;
        let job = self.context.job();
        if let Err(panic) =
            std::panic::catch_unwind(AssertUnwindSafe(|| handler.on_terminated(job)))
        {
            warn!(
                job_id = job.id,
                panic = panic_message(&*panic),
                "on_terminated panicked"
            );
        }
        if self.retry_pending {
            // nothing runs: the pending retry is simply not made
            self.exit(JobOutcome::Terminated, ctx);
            return;
        }
        ctx.run_later(self.rules.grace, |act, ctx| {
            warn!(
                job_id = act.context.id(),
                grace = ?act.rules.grace,
                "the handler did not return after termination: dropping it"
            );
            act.exit(JobOutcome::Terminated, ctx);
        });
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
