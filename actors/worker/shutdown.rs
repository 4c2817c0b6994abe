//! Stopping in order: a drain (jobs finish, up to a timeout) or a shutdown
//! (jobs are terminated at once), with the application's hooks in between.
//!
//! ```text
//! BeforeDrain hooks → Jobs ──(none left)──► AfterJobs hooks → Flushing → Closing → Cleanup hooks → stop
//!                       │ drain: jobs run on, new work declined; at the drain timeout, or a
//!                       │ Shutdown, the rest is cut (terminated, FAILED with the reason)
//!                       └ shutdown: every job is cut at once
//! ```
//!
//! From the first step the server is told the worker drains (FULL,
//! `draining: true`) and new offers and local jobs are declined. Jobs cut by
//! a drain's timeout keep their checkpoint in a durable store, so the next
//! start resumes them. Every wait is bounded: the jobs' grace plus
//! `shutdown_flush_timeout` once jobs are cut, each hook by its timeout, the
//! close by [`CLOSE_GRACE`]; what a deadline finds still running is reported
//! FAILED before the socket closes.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::*;
use crate::jobs::{FinalStatus, JobState};
use crate::shutdown::{ShutdownHook, ShutdownPhase};
use crate::telemetry::DeclineReason;

/// How long a closing connection may take to send its close frame before
/// the worker stops anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How the worker was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// Let jobs finish, cutting what still runs after this long.
    Drain(Duration),
    /// Terminate jobs now.
    Now,
}

/// Where a stop is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Running the BeforeDrain hooks.
    BeforeDrain,
    /// Waiting for the jobs to end (draining, or cut).
    Jobs,
    /// Running the AfterJobs hooks.
    AfterJobs,
    /// Waiting for the server to confirm the last statuses.
    Flushing,
    /// The connection has been told to close.
    Closing,
    /// Running the Cleanup hooks.
    Cleanup,
}

/// A worker stopping.
pub(super) struct Stopping {
    /// Why: the FAILED reason of every job it cuts.
    reason: String,
    /// Who waits for the end (answered when the actor is dropped).
    waiters: Vec<oneshot::Sender<()>>,
    step: Step,
    /// Jobs are terminated (a shutdown, or a drain past its timeout); until
    /// then a drain lets them run.
    cutting: bool,
    /// Jobs cut by a drain's timeout keep their checkpoint (a durable store
    /// resumes them at the next start).
    keep_cut_checkpoints: bool,
    /// The jobs the cut ended.
    cut: HashSet<String>,
    /// How it was asked to stop.
    stop: Stop,
    /// The hooks of the current phase still to run.
    hooks: VecDeque<ShutdownHook>,
    /// Numbers each hook run, so a late completion is not mistaken for the
    /// current one's.
    hook_seq: u64,
    /// The thread the current hook runs on (stopped once it is done).
    hook_thread: Option<Arbiter>,
}

impl WorkerActor {
    /// Why the worker is cutting its jobs, if it is (a shutdown, or a drain
    /// past its timeout). While a drain only waits, jobs run on normally.
    pub(super) fn cut_reason(&self) -> Option<String> {
        match &self.phase {
            Phase::Stopping(stopping) if stopping.cutting => Some(stopping.reason.clone()),
            _ => None,
        }
    }

    /// True while the worker drains without cutting yet.
    pub(super) fn draining(&self) -> bool {
        matches!(&self.phase, Phase::Stopping(stopping) if !stopping.cutting)
    }

    pub(super) fn closing(&self) -> bool {
        matches!(
            &self.phase,
            Phase::Stopping(stopping) if matches!(stopping.step, Step::Closing | Step::Cleanup)
        )
    }

    /// True when a job that ended keeps its record for another run: the
    /// stop cut it, and it is a job of the fleet's queue (another worker of
    /// the fleet resumes it, however the stop was asked for) or the cut
    /// keeps checkpoints (a drain's, with a durable store: the next start
    /// resumes it).
    pub(super) fn keeps_record(&self, job_id: &str, origin: crate::jobs::JobOrigin) -> bool {
        matches!(&self.phase, Phase::Stopping(stopping)
            if stopping.cut.contains(job_id)
                && (origin == crate::jobs::JobOrigin::Fleet || stopping.keep_cut_checkpoints))
    }

    /// Begins to stop (see [`Drain`] and [`Shutdown`]); `waiter` hears when
    /// the worker has stopped. Asked again, a shutdown cuts a drain short.
    pub(super) fn begin_stop(
        &mut self,
        stop: Stop,
        reason: String,
        waiter: Option<oneshot::Sender<()>>,
        ctx: &mut Context<Self>,
    ) {
        if let Phase::Stopping(stopping) = &mut self.phase {
            stopping.waiters.extend(waiter);
            if stop == Stop::Now && !stopping.cutting {
                // a drain cut short (a second signal): what it cuts keeps its
                // checkpoint in a durable store, as at the drain's timeout
                let keep = matches!(stopping.stop, Stop::Drain(_)) && self.store.is_durable();
                stopping.reason = format!("{reason} (the drain was cut short)");
                stopping.stop = Stop::Now;
                if stopping.step != Step::BeforeDrain {
                    self.cut(keep, ctx);
                }
            }
            return;
        }
        info!(reason, ?stop, "stopping");
        self.phase = Phase::Stopping(Stopping {
            reason,
            waiters: waiter.into_iter().collect(),
            step: Step::BeforeDrain,
            cutting: false,
            keep_cut_checkpoints: false,
            cut: HashSet::new(),
            stop,
            hooks: VecDeque::new(),
            hook_seq: 0,
            hook_thread: None,
        });
        self.notify(WorkerEvent::ShuttingDown);
        self.metrics.draining(true);
        // the server stops choosing this worker
        if self.connected() {
            self.report_load(self.load);
        }
        // offers still being decided are declined now; those already
        // accepted keep their slot for their assignment
        for job_id in self.table.ids_where(|_| true) {
            if let Some(JobState::Offered {
                answered: false, ..
            }) = self.table.state(&job_id)
            {
                self.answer(&job_id, None);
                if let Some(row) = self.table.withdraw(&job_id, None) {
                    self.metrics
                        .declined(DeclineReason::Draining, row.since().elapsed());
                }
            }
        }
        if let Stop::Drain(timeout) = stop {
            ctx.run_later(timeout, move |act, ctx| {
                if act.draining() {
                    warn!(?timeout, "the drain timed out: cutting the jobs left");
                    if let Phase::Stopping(stopping) = &mut act.phase {
                        stopping.reason = format!("cut by the drain timeout ({timeout:?})");
                    }
                    let durable = act.store.is_durable();
                    act.cut(durable, ctx);
                }
            });
        }
        // an immediate stop cuts the jobs once the BeforeDrain hooks have run
        self.slots_changed();
        self.grant(ctx);
        self.run_hooks(ShutdownPhase::BeforeDrain, ctx);
    }

    /// Terminates every job still held, FAILED with the stop's reason (their
    /// `on_terminated` hooks run), and arms the deadline after which what is
    /// still running is failed without waiting.
    fn cut(&mut self, keep_checkpoints: bool, ctx: &mut Context<Self>) {
        let Phase::Stopping(stopping) = &mut self.phase else {
            return;
        };
        if stopping.cutting {
            return;
        }
        stopping.cutting = true;
        stopping.keep_cut_checkpoints = keep_checkpoints;
        let reason = stopping.reason.clone();
        let held = self.table.ids_where(|row| {
            matches!(
                row.state(),
                JobState::Queued | JobState::Starting | JobState::Running
            )
        });
        if let Phase::Stopping(stopping) = &mut self.phase {
            stopping.cut.extend(held.iter().cloned());
        }
        for job_id in held {
            self.terminate(&job_id, TerminateJob::Shutdown(reason.clone()), ctx);
        }
        // bounded: the handlers' grace, then the statuses' delivery; the
        // steps after it keep their order (each hook has its own timeout)
        let deadline = self.options.termination_grace + self.options.shutdown_flush_timeout;
        ctx.run_later(deadline, |act, ctx| {
            act.fail_what_is_left(ctx);
            act.shutdown_progress(ctx);
        });
        self.shutdown_progress(ctx);
    }

    /// The shutdown's deadline passed: every job still held — a handler that
    /// ignored its cancellation and blocked its thread past the grace, an
    /// offer whose assignment never came — ends now, FAILED, so that each
    /// still gets its one final status before the socket closes.
    fn fail_what_is_left(&mut self, ctx: &mut Context<Self>) {
        let Some(reason) = self.cut_reason() else {
            return;
        };
        let now = Instant::now();
        for job_id in self.table.ids_where(|_| true) {
            match self.table.state(&job_id) {
                Some(JobState::Offered { .. }) => {
                    self.table.withdraw(&job_id, None);
                }
                Some(JobState::Queued | JobState::Starting | JobState::Running) => {
                    warn!(job_id, "still running at the shutdown deadline: failing it");
                    let status = FinalStatus::failed(format!(
                        "{reason} (the job did not stop within the shutdown deadline)"
                    ));
                    if let Some(done) = self.table.finish(&job_id, status, now) {
                        self.finished(&job_id, done, ctx);
                    }
                }
                _ => {}
            }
        }
    }

    /// Moves the stop on when its current step is done: no job held any
    /// more (then the AfterJobs hooks), every status confirmed (then the
    /// close).
    pub(super) fn shutdown_progress(&mut self, ctx: &mut Context<Self>) {
        let Phase::Stopping(stopping) = &self.phase else {
            return;
        };
        match stopping.step {
            Step::Jobs => {
                let counts = self.table.counts();
                if counts.offered + counts.queued + counts.starting + counts.running == 0 {
                    self.run_hooks(ShutdownPhase::AfterJobs, ctx);
                }
            }
            Step::Flushing => {
                let owed = self.table.iter().any(|(_, row)| {
                    row.state() == JobState::Finishing && row.origin().is_servers()
                });
                let can_deliver =
                    self.supervision_failure.is_none() || self.connection.addr.is_some();
                if !owed || !can_deliver {
                    self.close(ctx);
                }
            }
            _ => {}
        }
    }

    /// Runs the hooks of `phase` one after the other, then the next step.
    fn run_hooks(&mut self, phase: ShutdownPhase, ctx: &mut Context<Self>) {
        let hooks = self.shutdown_hooks.take(phase);
        let Phase::Stopping(stopping) = &mut self.phase else {
            return;
        };
        stopping.step = match phase {
            ShutdownPhase::BeforeDrain => Step::BeforeDrain,
            ShutdownPhase::AfterJobs => Step::AfterJobs,
            ShutdownPhase::Cleanup => Step::Cleanup,
        };
        stopping.hooks = hooks.into();
        self.next_hook(ctx);
    }

    /// Starts the next hook of the current phase, or moves on to the next
    /// step when there is none.
    fn next_hook(&mut self, ctx: &mut Context<Self>) {
        let Phase::Stopping(stopping) = &mut self.phase else {
            return;
        };
        if let Some(done) = stopping.hook_thread.take() {
            // its loop ends once the hook returns (at once, if it has)
            done.stop();
        }
        let Some(hook) = stopping.hooks.pop_front() else {
            return self.after_hooks(ctx);
        };
        stopping.hook_seq += 1;
        let seq = stopping.hook_seq;
        let ShutdownHook {
            name, timeout, run, ..
        } = hook;
        info!(hook = name, "running a shutdown hook");
        let worker = ctx.address();
        let hook_name = name.clone();
        // user code, on a thread of its own: never the worker's or the
        // socket's, and a hook that blocks its thread past its timeout
        // leaves the next hooks a free one
        let arbiter = Arbiter::new();
        let spawned = arbiter.spawn(async move {
            let result = AssertUnwindSafe(async move { run().await })
                .catch_unwind()
                .await;
            if result.is_err() {
                error!(hook = hook_name, "a shutdown hook panicked");
            }
            worker.do_send(HookDone { seq });
        });
        stopping.hook_thread = Some(arbiter);
        if !spawned {
            warn!(hook = name, "no thread for the shutdown hook: skipping it");
            return self.next_hook(ctx);
        }
        ctx.run_later(timeout, move |act, ctx| {
            if act.current_hook(seq) {
                warn!(
                    hook = name,
                    ?timeout,
                    "a shutdown hook took too long: cut off"
                );
                act.next_hook(ctx);
            }
        });
    }

    fn current_hook(&self, seq: u64) -> bool {
        matches!(&self.phase, Phase::Stopping(stopping) if stopping.hook_seq == seq)
    }

    /// The hooks of a phase are done: the next step.
    fn after_hooks(&mut self, ctx: &mut Context<Self>) {
        let Phase::Stopping(stopping) = &mut self.phase else {
            return;
        };
        match stopping.step {
            Step::BeforeDrain => {
                stopping.step = Step::Jobs;
                if stopping.stop == Stop::Now {
                    let keep = false;
                    self.cut(keep, ctx);
                }
                self.shutdown_progress(ctx);
            }
            Step::AfterJobs => {
                stopping.step = Step::Flushing;
                // the confirmations get their own bound
                let flush = self.options.shutdown_flush_timeout;
                ctx.run_later(flush, |act, ctx| {
                    if matches!(&act.phase, Phase::Stopping(s) if s.step == Step::Flushing) {
                        act.close(ctx);
                    }
                });
                self.shutdown_progress(ctx);
            }
            Step::Cleanup => self.finish_stop(ctx),
            Step::Jobs | Step::Flushing | Step::Closing => {}
        }
    }

    /// Closes the connection (only once the last statuses are flushed, or
    /// their time is up); the Cleanup hooks follow its end.
    fn close(&mut self, ctx: &mut Context<Self>) {
        let Phase::Stopping(stopping) = &mut self.phase else {
            return;
        };
        if stopping.step != Step::Flushing {
            return;
        }
        stopping.step = Step::Closing;
        let lost = self.table.counts().finishing;
        if lost > 0 {
            warn!(
                statuses = lost,
                "closing with final statuses the server has not confirmed"
            );
        }
        match &self.connection.addr {
            Some(connection) => {
                connection.do_send(CloseConnection);
                ctx.run_later(CLOSE_GRACE, |act, ctx| act.closed(ctx));
            }
            None => self.closed(ctx),
        }
    }

    /// The connection is closed (or its grace is over): the Cleanup hooks.
    pub(super) fn closed(&mut self, ctx: &mut Context<Self>) {
        if matches!(&self.phase, Phase::Stopping(stopping) if stopping.step == Step::Closing) {
            self.run_hooks(ShutdownPhase::Cleanup, ctx);
        }
    }

    /// The end: every child and thread stops with the actor (see `Drop`).
    fn finish_stop(&mut self, ctx: &mut Context<Self>) {
        if ctx.state().stopping() {
            return;
        }
        if let Phase::Stopping(stopping) = &self.phase {
            let exit = WorkerExit {
                reason: stopping.reason.clone(),
                supervision_failure: self.supervision_failure.clone(),
                jobs_cut: stopping.cut.len(),
            };
            info!(?exit, "worker stopped");
            self.exit.send_replace(Some(exit));
        }
        ctx.stop();
    }
}

impl Drop for WorkerActor {
    fn drop(&mut self) {
        // however the worker ends (in order, or by a panic in its own code),
        // its threads stop, and with them every child: no connection is
        // left registered that would never take a job
        self.threads.stop();
        if let Phase::Stopping(stopping) = &mut self.phase {
            for waiter in stopping.waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Handler<HookDone> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: HookDone, ctx: &mut Self::Context) {
        if self.current_hook(msg.seq) {
            self.next_hook(ctx);
        }
    }
}

impl Handler<Shutdown> for WorkerActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.begin_stop(Stop::Now, "the worker shut down".into(), Some(tx), ctx);
        Box::pin(async move {
            // an error only means the worker is gone: stopped all the same
            let _ = rx.await;
        })
    }
}

impl Handler<Drain> for WorkerActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.begin_stop(
            Stop::Drain(msg.timeout),
            "the worker drained".into(),
            Some(tx),
            ctx,
        );
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
