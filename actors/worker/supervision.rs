//! Supervision: starting the long-lived children, hearing of their exits,
//! and restarting them (the connection under the reconnect policy, a crash
//! under the child restart limit); past the limit, the worker shuts down in
//! order (`shutdown.rs`).

use std::time::Instant;

use tracing::{error, info, warn};

use super::super::load_reporter::ReporterConfig;
use super::super::supervision::Link;
use super::shutdown::Stop;
use super::*;
use crate::load::ReportPolicy;
use crate::reconnect::ConnectionEnd;
use crate::recovery::RestartDecision;

impl WorkerActor {
    pub(super) fn start_connection(&mut self, ctx: &mut Context<Self>) {
        if self.connection.addr.is_some() || self.closing() {
            return;
        }
        if self.connection.generation > 0 {
            self.metrics.reconnect();
        }
        let generation = self.generation();
        let link = Link::new(ctx.address(), Child::Connection, generation);
        let options = self.options.clone();
        // a fresh token for every attempt, signed with the secret as it is
        // now (a rotated secret file takes effect here)
        let token = options
            .credentials
            .worker_token(crate::auth::WORKER_TOKEN_TTL)
            .map_err(|e| format!("cannot mint the worker token: {e}"));
        let addr = ConnectionActor::start_in_arbiter(&self.threads.connection(), move |_| {
            ConnectionActor::new(options, link, token)
        });
        self.connection.started(addr, generation);
    }

    /// Starts the queue and fills it again from the table's queued rows (a
    /// restarted queue has lost its heap), then grants free slots.
    pub(super) fn start_queue(&mut self, ctx: &mut Context<Self>) {
        let generation = self.generation();
        let link = Link::new(ctx.address(), Child::Queue, generation);
        let (capacity, max_wait) = (self.options.queue_capacity, self.options.queue_max_wait);
        let addr = QueueActor::start_in_arbiter(&self.threads.background(), move |_| {
            QueueActor::new(capacity, max_wait, link)
        });
        self.queue.started(addr, generation);
        for (job_id, priority, since) in self.table.queued() {
            self.enqueue(&job_id, priority, since);
        }
        self.grant(ctx);
    }

    /// Starts the load reporter from the current slots and connection.
    pub(super) fn start_reporter(&mut self, ctx: &mut Context<Self>) {
        let generation = self.generation();
        let link = Link::new(ctx.address(), Child::Reporter, generation);
        let config = ReporterConfig {
            calculator: self.load_calculator.clone(),
            threshold: self.threshold,
            policy: ReportPolicy {
                epsilon: crate::load::DEFAULT_LOAD_EPSILON,
                keepalive: self.options.load_report_interval,
            },
            sample_interval: self.options.load_sample_interval,
            memory_check_interval: self.options.memory_check_interval,
            limiter: self.limiter.clone(),
            budget_ceiling: self.options.accept_below.unwrap_or(1.0),
            metrics: self.metrics.clone(),
            slots: self.slots(),
            connected: self.connected(),
            memory: self.memory,
            open_files: self.open_files,
        };
        let addr = LoadReporterActor::start_in_arbiter(&self.threads.background(), move |_| {
            LoadReporterActor::new(config, link)
        });
        self.reporter.started(addr, generation);
        self.slots_changed();
    }

    /// The connection ended: forget what the server forgot with it, then
    /// connect again after the reconnect policy's delay (or the crash
    /// limit's, if it panicked).
    fn connection_exited(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.connection.addr = None;
        let was_registered = self.worker_id.take().is_some();
        self.reported_status = None;
        let reason = msg.reason.unwrap_or_else(|| {
            ConnectionExit::Failed(if msg.panicked {
                "the connection actor panicked".into()
            } else {
                "the connection actor stopped".into()
            })
        });
        self.metrics.connected(false);
        if was_registered {
            warn!(
                %reason,
                running = self.table.counts().running,
                "disconnected from the server; jobs keep running"
            );
            // the server forgot its offers with the connection
            if !self.table.disconnected().is_empty() {
                self.slots_changed();
                self.grant(ctx);
            }
            if let Some(reporter) = &self.reporter.addr {
                reporter.do_send(ConnectionChanged { connected: false });
            }
            self.notify(WorkerEvent::Disconnected {
                reason: reason.to_string(),
            });
        }
        if self.closing() {
            return self.closed(ctx);
        }
        let delay = if msg.panicked {
            self.reconnect.lost(now);
            match self.connection.crashed(now) {
                RestartDecision::Restart { after, .. } => {
                    warn!(?after, "the connection actor panicked: restarting it");
                    ctx.run_later(after, |act, ctx| {
                        act.start_connection(ctx);
                        act.notify(WorkerEvent::ChildRestarted {
                            child: Child::Connection.to_string(),
                            panicked: true,
                        });
                    });
                    return;
                }
                RestartDecision::GiveUp => {
                    return self.supervision_failed(&Child::Connection, ctx);
                }
            }
        } else {
            let end = match &reason {
                ConnectionExit::Unauthorized(_) => ConnectionEnd::Unauthorized,
                _ if was_registered => ConnectionEnd::Lost,
                _ => ConnectionEnd::Failed,
            };
            self.reconnect.ended(end, now, rand::random::<f64>())
        };
        match &reason {
            ConnectionExit::Unauthorized(why) => {
                error!(
                    reason = why,
                    retry_in = ?delay,
                    "the server refused the worker's token: check the API key and secret"
                );
                self.notify(WorkerEvent::Unauthorized {
                    reason: why.clone(),
                });
            }
            _ if !was_registered => {
                warn!(%reason, retry_in = ?delay, attempt = self.reconnect.failures(), "could not connect to the server")
            }
            _ => info!(retry_in = ?delay, "reconnecting"),
        }
        self.connection_error = Some(reason.to_string());
        if self.reconnect.give_up_now(now) {
            let down_for = self.reconnect.down_for(now);
            error!(?down_for, %reason, "the server is unreachable: reporting it, and still trying");
            self.notify(WorkerEvent::Unreachable {
                reason: reason.to_string(),
            });
        }
        ctx.run_later(delay, |act, ctx| act.start_connection(ctx));
    }

    /// A reporter or queue stopped, which they do only by crashing: restart
    /// it after the crash limit's delay, or give up.
    fn child_crashed(&mut self, child: Child, panicked: bool, ctx: &mut Context<Self>) {
        if self.closing() {
            // no restarts once the worker is closing: the child is simply gone
            match child {
                Child::Reporter => self.reporter.addr = None,
                Child::Queue => self.queue.addr = None,
                _ => {}
            }
            return;
        }
        let now = Instant::now();
        let decision = match child {
            Child::Reporter => self.reporter.crashed(now),
            Child::Queue => self.queue.crashed(now),
            _ => return,
        };
        match decision {
            RestartDecision::Restart { after, .. } => {
                warn!(%child, panicked, ?after, "a child actor stopped: restarting it");
                ctx.run_later(after, move |act, ctx| {
                    if act.closing() {
                        return;
                    }
                    match child {
                        Child::Reporter => act.start_reporter(ctx),
                        Child::Queue => act.start_queue(ctx),
                        _ => return,
                    }
                    act.notify(WorkerEvent::ChildRestarted {
                        child: child.to_string(),
                        panicked,
                    });
                });
            }
            RestartDecision::GiveUp => self.supervision_failed(&child, ctx),
        }
    }

    /// A child crashed past its restart limit: the worker shuts down in
    /// order rather than limp on without it.
    fn supervision_failed(&mut self, child: &Child, ctx: &mut Context<Self>) {
        let policy = &self.options.child_restart_policy;
        let reason = format!(
            "the {child} crashed more than {} times within {:?}",
            policy.max_restarts(),
            policy.period()
        );
        error!(reason, "supervision gave up: shutting down");
        self.supervision_failure = Some(reason.clone());
        self.notify(WorkerEvent::SupervisionGaveUp {
            reason: reason.clone(),
        });
        self.begin_stop(
            Stop::Now,
            format!("the worker shut down: {reason}"),
            None,
            ctx,
        );
    }
}

impl Handler<ChildExited> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Self::Context) {
        match msg.child.clone() {
            Child::Connection if self.connection.is_current(msg.generation) => {
                self.connection_exited(msg, ctx)
            }
            Child::Reporter if self.reporter.is_current(msg.generation) => {
                self.child_crashed(Child::Reporter, msg.panicked, ctx)
            }
            Child::Queue if self.queue.is_current(msg.generation) => {
                self.child_crashed(Child::Queue, msg.panicked, ctx)
            }
            Child::Job(job_id) if self.is_current_job(&job_id, msg.generation) => {
                self.job_actor_crashed(&job_id, ctx)
            }
            _ => {} // an incarnation already replaced, or a job that ended
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectFault> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: InjectFault, _ctx: &mut Self::Context) {
        match msg {
            InjectFault::Worker => panic!("injected fault: the worker actor panics"),
            InjectFault::Connection => {
                if let Some(addr) = &self.connection.addr {
                    addr.do_send(Panic);
                }
            }
            InjectFault::Reporter => {
                if let Some(addr) = &self.reporter.addr {
                    addr.do_send(Panic);
                }
            }
            InjectFault::Queue => {
                if let Some(addr) = &self.queue.addr {
                    addr.do_send(Panic);
                }
            }
            InjectFault::Job(job_id) => {
                if let Some(addr) = self
                    .table
                    .get(&job_id)
                    .and_then(|row| row.attachment.addr.as_ref())
                {
                    addr.do_send(Panic);
                }
            }
        }
    }
}
