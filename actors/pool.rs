//! WorkerPool: several workers in one process — one per LiveKit server,
//! region or agent name — under one supervisor and one budget.
//!
//! ```text
//! WorkerPool   (supervisor of workers; owns the shared ResourceLimiter)
//! ├── WorkerActor "eu-west"  (its own options, labels and routing)
//! ├── WorkerActor "us-east"
//! └── …
//! ```
//!
//! - **Built from factories.** A worker's builder owns its handler and is not
//!   `Clone`, so each member is a [`PoolMember`]: a name, a factory that
//!   makes a fresh builder, labels and a [`Routing`]. The pool gives every
//!   builder it makes the pool's [`ResourceLimiter`] (one budget for the
//!   process: its `max_jobs` is the process-wide job budget), the member's
//!   labels, and its routing as `accept_below`.
//! - **Supervised.** The pool watches each worker's end
//!   ([`Worker::stopped`](crate::Worker::stopped)). A worker that stops
//!   without being removed — a panic in its own code, its supervision giving
//!   up, a `Shutdown` sent to it directly — is started again from its
//!   factory after its [`RestartPolicy`]'s backoff; past the policy's limit
//!   it is marked failed (the pool's `/` answers 503) and left stopped.
//!   A worker that stopped in order ended each of its jobs with one final
//!   status; one that died (a panic in its own code) left its jobs to
//!   recovery: with a durable store and the same instance name, the new
//!   incarnation resumes them, else the server fails them.
//! - **Changed at run time.** [`AddWorker`] starts a member; [`RemoveWorker`]
//!   drains it — no new job, its jobs finish (up to the timeout) — and it
//!   leaves once stopped. `Drain` and `Shutdown` go to every worker, and
//!   the pool stops once they all have.
//! - **Observed.** [`GetPoolState`] asks every worker for its state
//!   (loads, jobs) and adds the budget; the pool's HTTP endpoints
//!   (`WorkerPoolBuilder::http`) serve it ([`crate::http::configure_pool`]).
//!
//! The pool holds no job state: each worker owns its own jobs; the budget
//! is the limiter's (the one deliberate shared state, see
//! [`ResourceLimiter`]).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, error, info, warn};

use super::messages::*;
use super::worker::{StartError, Worker, WorkerBuilder};
use crate::Backoff;
use crate::limits::{ResourceLimiter, ResourceLimits};
use crate::recovery::{RestartDecision, RestartPolicy};
use crate::state::{BudgetState, MemberState, MemberStatus, PoolState};

/// How long a worker may take to answer the pool's `GetState`: one that
/// cannot answer a probe within this is shown without its state.
const STATE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a pool's worker takes jobs, when the process serves several regions
/// (or servers) from one budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Routing {
    /// Takes jobs as long as the shared budget has room: the local region's
    /// worker.
    Preferred,
    /// Takes the server's offers only while the shared budget is used below
    /// this share (`0.0..=1.0`), and reports FULL from there: a remote
    /// region's worker, which helps while the machine has room to spare and
    /// leaves the rest to the local one. (A `SpawnJob` sent to it is the
    /// application's own call and is not held to it.)
    BelowLoad(f32),
}

/// One worker of a pool: its name, how to build it, its labels, its routing
/// and its restart policy.
pub struct PoolMember {
    name: String,
    factory: Box<dyn Fn() -> WorkerBuilder + Send>,
    labels: BTreeMap<String, String>,
    routing: Routing,
    restart: RestartPolicy,
    /// The scaled group it belongs to (its index in the pool), if any.
    group: Option<usize>,
}

impl std::fmt::Debug for PoolMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMember")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("routing", &self.routing)
            .finish_non_exhaustive()
    }
}

impl PoolMember {
    /// The default restart limit: 5 stops within 60 s, 100 ms doubling to
    /// 5 s between them — rides out a crash or two, and a worker that
    /// cannot stay up is marked failed within a minute.
    pub fn default_restart_policy() -> RestartPolicy {
        RestartPolicy::new(
            5,
            Duration::from_secs(60),
            Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
                jitter: 0.5,
            },
        )
    }

    /// A member named `name` (unique in its pool), built by `factory` at
    /// every start: `|| Worker::builder(options.clone()).handler(Agent)`.
    /// The factory's HTTP endpoints, if any, are dropped: the pool serves
    /// its workers' own.
    pub fn new(
        name: impl Into<String>,
        factory: impl Fn() -> WorkerBuilder + Send + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            factory: Box::new(factory),
            labels: BTreeMap::new(),
            routing: Routing::Preferred,
            restart: Self::default_restart_policy(),
            group: None,
        }
    }

    /// Adds a label (`region`, `zone`, …) to the worker's metrics and to
    /// the pool's `/worker`.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }

    /// Sets how the worker takes jobs (default [`Routing::Preferred`]).
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// Sets how often the worker may stop before the pool stops restarting
    /// it (default [`default_restart_policy`](Self::default_restart_policy)).
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes a builder and starts a worker from it, on the pool's budget,
    /// unless its instance name is `taken` (another member's: the `worker`
    /// label of the metrics and the identity in a checkpoint store must be
    /// unique). Answers the worker and its instance name.
    fn launch(
        &self,
        limiter: &ResourceLimiter,
        taken: impl Fn(&str) -> Option<String>,
    ) -> Result<(Worker, String), PoolError> {
        let made = std::panic::catch_unwind(AssertUnwindSafe(|| (self.factory)()));
        let mut builder = made
            .map_err(|panic| PoolError::FactoryPanicked {
                name: self.name.clone(),
                message: super::job::panic_message(&*panic),
            })?
            .without_http()
            .resource_limiter(limiter.clone());
        for (name, value) in &self.labels {
            builder = builder.label(name, value);
        }
        if let Routing::BelowLoad(share) = self.routing {
            builder = builder.accept_below(share);
        }
        let instance = builder.instance_id().to_owned();
        if let Some(other) = taken(&instance) {
            return Err(PoolError::SameInstance {
                name: self.name.clone(),
                other,
                instance,
            });
        }
        let worker = builder.start().map_err(|source| PoolError::Start {
            name: self.name.clone(),
            source,
        })?;
        Ok((worker, instance))
    }
}

/// Why a pool, or a change to it, failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Names identify workers in the pool: pick another.
    #[error("a worker named {0:?} is already in the pool")]
    Duplicate(String),
    /// No worker of that name is in the pool.
    #[error("no worker named {0:?} in the pool")]
    Unknown(String),
    /// A worker's builder refused to start; the source says why.
    #[error("worker {name:?} could not start: {source}")]
    Start {
        /// The worker's name.
        name: String,
        /// Why.
        source: StartError,
    },
    /// A worker's factory panicked.
    #[error("the factory of worker {name:?} panicked: {message}")]
    FactoryPanicked {
        /// The worker's name.
        name: String,
        /// The panic's message.
        message: String,
    },
    /// A pool option is invalid; the text says what to fix.
    #[error("invalid pool option {name}: {reason}")]
    Invalid {
        /// The option.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP endpoints could not listen on the address given.
    #[error("cannot serve the pool's HTTP endpoints on {addr}: {source}")]
    Http {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Two workers of the pool have one instance name (options cloned from
    /// one `WorkerOptions` share its random one): give each its own
    /// `WorkerOptions::instance_id`.
    #[error(
        "worker {name:?} has the instance name {instance:?} of worker {other:?}: give each its own WorkerOptions::instance_id"
    )]
    SameInstance {
        /// The worker refused.
        name: String,
        /// The worker that has the name.
        other: String,
        /// The instance name.
        instance: String,
    },
    /// The pool is stopping and takes no new worker.
    #[error("the pool is stopping")]
    Stopping,
}

/// Configures and starts a [`WorkerPool`].
#[derive(Debug, Default)]
pub struct WorkerPoolBuilder {
    members: Vec<PoolMember>,
    groups: Vec<ScaledGroup>,
    limits: ResourceLimits,
    http: Option<String>,
}

impl WorkerPoolBuilder {
    /// Adds a group of like workers whose number the pool scales itself
    /// (see [`ScaledGroup`]): `min_replicas` of them start with the pool.
    pub fn scaled(mut self, group: ScaledGroup) -> Self {
        self.groups.push(group);
        self
    }

    /// Adds a worker.
    pub fn worker(mut self, member: PoolMember) -> Self {
        self.members.push(member);
        self
    }

    /// Sets the process-wide job budget: the most jobs all the workers run
    /// together (each worker's own `max_jobs` still bounds it alone).
    pub fn max_jobs(mut self, jobs: usize) -> Self {
        self.limits.max_jobs = jobs;
        self
    }

    /// Sets the budget the workers share (memory, CPU, jobs; 0: no limit).
    pub fn resource_limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves the pool's endpoints (`/`, `/ready`, `/worker`, `/metrics`;
    /// see [`crate::http::configure_pool`]) on `addr`.
    #[cfg(feature = "http")]
    pub fn http(mut self, addr: impl Into<String>) -> Self {
        self.http = Some(addr.into());
        self
    }

    /// Starts every worker, then the pool, in the current actix `System`. If
    /// one worker cannot start, the ones started are stopped and the error
    /// says which and why.
    pub fn start(self) -> Result<Pool, PoolError> {
        self.limits
            .validate()
            .map_err(|reason| PoolError::Invalid {
                name: "resource_limits",
                reason,
            })?;
        let limiter = ResourceLimiter::new(self.limits);
        let listener = match &self.http {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr.as_str()).map_err(|source| PoolError::Http {
                    addr: addr.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        let mut groups = Vec::new();
        let mut planned = self.members;
        for spec in self.groups {
            let index = groups.len();
            let mut group = Group::new(spec)?;
            for _ in 0..group.scaler.policy().min_replicas {
                planned.push(group.next_member(index));
            }
            groups.push(group);
        }
        let mut members = BTreeMap::new();
        let mut started = Vec::new();
        for member in planned {
            let launched = check(&member)
                .and_then(|()| match members.contains_key(&member.name) {
                    true => Err(PoolError::Duplicate(member.name.clone())),
                    false => Ok(()),
                })
                .and_then(|()| member.launch(&limiter, |id| instance_of(&members, id, "")));
            match launched {
                Ok((worker, instance)) => {
                    started.push(worker.clone());
                    members.insert(member.name.clone(), Member::new(member, worker, instance));
                }
                Err(err) => {
                    for worker in started {
                        worker.do_send(Shutdown);
                    }
                    return Err(err);
                }
            }
        }
        let (exit, exit_watch) = tokio::sync::watch::channel(());
        let addr = WorkerPool {
            limiter,
            members,
            groups,
            stopping: false,
            _exit: exit,
        }
        .start();
        let mut pool = Pool {
            addr,
            http: None,
            exit: exit_watch,
        };
        if let Some(listener) = listener {
            pool.http =
                Some(
                    serve_http(listener, pool.clone()).map_err(|source| PoolError::Http {
                        addr: self.http.unwrap_or_default(),
                        source,
                    })?,
                );
        }
        Ok(pool)
    }
}

/// The name of the member (other than `except`) whose instance name is
/// `instance`.
fn instance_of(members: &BTreeMap<String, Member>, instance: &str, except: &str) -> Option<String> {
    members
        .iter()
        .find(|(name, member)| name.as_str() != except && member.instance == instance)
        .map(|(name, _)| name.clone())
}

/// A number for a new incarnation, unique in the process: a timer or an
/// exit of an incarnation already replaced — or of a member removed and
/// added again under its name — never matches the current one.
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Checks a member's own settings.
fn check(member: &PoolMember) -> Result<(), PoolError> {
    if member.name.trim().is_empty() {
        return Err(PoolError::Invalid {
            name: "name",
            reason: "a pool's worker needs a name".into(),
        });
    }
    if let Routing::BelowLoad(share) = member.routing
        && !(share > 0.0 && share <= 1.0)
    {
        return Err(PoolError::Invalid {
            name: "routing",
            reason: format!("BelowLoad({share}) must be above 0 and at most 1"),
        });
    }
    member
        .restart
        .validate()
        .map_err(|reason| PoolError::Invalid {
            name: "restart_policy",
            reason,
        })
}

/// A running pool: `WorkerPool::builder().worker(..).start()?`. It
/// dereferences to the pool's address (send it [`AddWorker`],
/// [`RemoveWorker`], [`GetPoolState`], `Drain`, `Shutdown`).
#[derive(Clone, Debug)]
pub struct Pool {
    addr: Addr<WorkerPool>,
    http: Option<std::net::SocketAddr>,
    exit: tokio::sync::watch::Receiver<()>,
}

impl std::ops::Deref for Pool {
    type Target = Addr<WorkerPool>;

    fn deref(&self) -> &Addr<WorkerPool> {
        &self.addr
    }
}

impl Pool {
    /// Shuts every worker down (see `Shutdown`) and resolves once the pool
    /// has stopped.
    pub async fn stop(&self) {
        let _ = self.addr.send(Shutdown).await;
        self.stopped().await;
    }

    /// Drains every worker for up to `timeout` and resolves once the pool
    /// has stopped.
    pub async fn drain(&self, timeout: Duration) {
        let _ = self.addr.send(Drain::with_timeout(timeout)).await;
        self.stopped().await;
    }

    /// Resolves once the pool has stopped (all its workers first).
    pub async fn stopped(&self) {
        let mut exit = self.exit.clone();
        while exit.changed().await.is_ok() {}
    }

    /// Where the pool's HTTP endpoints listen, if it serves them.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http
    }
}

/// One worker as the pool holds it.
struct Member {
    spec: PoolMember,
    /// The running incarnation; `None` while restarting or failed.
    worker: Option<Worker>,
    /// Counts incarnations: the end of one already replaced is ignored.
    generation: u64,
    status: MemberStatus,
    /// The instance name of its last incarnation.
    instance: String,
}

impl Member {
    fn new(spec: PoolMember, worker: Worker, instance: String) -> Self {
        Self {
            spec,
            worker: Some(worker),
            generation: next_generation(),
            status: MemberStatus::Running,
            instance,
        }
    }
}

/// The pool actor: supervises its workers and owns their shared budget.
pub struct WorkerPool {
    limiter: ResourceLimiter,
    members: BTreeMap<String, Member>,
    /// The groups the pool scales itself, by index.
    groups: Vec<Group>,
    stopping: bool,
    /// Dropped with the actor: how [`Pool::stopped`] learns it has.
    _exit: tokio::sync::watch::Sender<()>,
}

impl WorkerPool {
    /// A builder for a pool.
    pub fn builder() -> WorkerPoolBuilder {
        WorkerPoolBuilder::default()
    }

    /// Watches the end of `name`'s current incarnation.
    fn watch(&self, name: &str, ctx: &mut Context<Self>) {
        let Some(member) = self.members.get(name) else {
            return;
        };
        let Some(worker) = member.worker.clone() else {
            return;
        };
        let (name, generation) = (name.to_owned(), member.generation);
        ctx.spawn(
            async move { worker.stopped().await }
                .into_actor(self)
                .map(move |exit, act, ctx| act.ended(&name, generation, exit, ctx)),
        );
    }

    /// Incarnation `generation` of `name` has stopped.
    fn ended(
        &mut self,
        name: &str,
        generation: u64,
        exit: Option<WorkerExit>,
        ctx: &mut Context<Self>,
    ) {
        let Some(member) = self.members.get_mut(name) else {
            return;
        };
        if member.generation != generation {
            return;
        }
        member.worker = None;
        if self.stopping || member.status == MemberStatus::Draining {
            info!(worker = name, "pool worker stopped");
            self.members.remove(name);
            return self.stop_if_empty(ctx);
        }
        let why = match &exit {
            Some(exit) => exit.reason.clone(),
            None => "it died without stopping in order (a panic in its own code)".into(),
        };
        self.failed(name, why, ctx);
    }

    /// `name` stopped, or could not start, for `why`: starts it again after
    /// its policy's backoff, or marks it failed past the limit.
    fn failed(&mut self, name: &str, why: String, ctx: &mut Context<Self>) {
        let Some(member) = self.members.get_mut(name) else {
            return;
        };
        match member
            .spec
            .restart
            .on_failure_jittered(Instant::now(), rand::random())
        {
            RestartDecision::Restart { after, attempt } => {
                warn!(worker = name, %why, ?after, attempt, "pool worker stopped: restarting it");
                member.status = MemberStatus::Restarting;
                let (name, generation) = (name.to_owned(), member.generation);
                ctx.run_later(after, move |act, ctx| act.restart(&name, generation, ctx));
            }
            RestartDecision::GiveUp => {
                let limit = &member.spec.restart;
                let failure = format!(
                    "stopped more than {} times within {:?}; last: {why}",
                    limit.max_restarts(),
                    limit.period()
                );
                error!(worker = name, %failure, "pool worker failed: not restarting it");
                member.status = MemberStatus::Failed(failure);
            }
        }
    }

    /// Starts a new incarnation of `name`, unless it was removed or
    /// replaced meanwhile.
    fn restart(&mut self, name: &str, generation: u64, ctx: &mut Context<Self>) {
        let Some(member) = self.members.get(name) else {
            return;
        };
        if member.generation != generation || member.status != MemberStatus::Restarting {
            return;
        }
        if self.stopping {
            self.members.remove(name);
            return self.stop_if_empty(ctx);
        }
        let launched = member
            .spec
            .launch(&self.limiter, |id| instance_of(&self.members, id, name));
        let Some(member) = self.members.get_mut(name) else {
            return;
        };
        member.generation = next_generation();
        match launched {
            Ok((worker, instance)) => {
                member.instance = instance;
                info!(
                    worker = name,
                    generation = member.generation,
                    "pool worker restarted"
                );
                member.worker = Some(worker);
                member.status = MemberStatus::Running;
                self.watch(name, ctx);
            }
            Err(err) => self.failed(name, err.to_string(), ctx),
        }
    }

    /// Starts `member` and adds it to the pool.
    fn add(&mut self, member: PoolMember, ctx: &mut Context<Self>) -> Result<(), PoolError> {
        check(&member)?;
        if self.members.contains_key(&member.name) {
            return Err(PoolError::Duplicate(member.name));
        }
        let (worker, instance) =
            member.launch(&self.limiter, |id| instance_of(&self.members, id, ""))?;
        let name = member.name.clone();
        info!(worker = name, "worker added to the pool");
        self.members
            .insert(name.clone(), Member::new(member, worker, instance));
        self.watch(&name, ctx);
        Ok(())
    }

    fn stop_if_empty(&mut self, ctx: &mut Context<Self>) {
        if self.stopping && self.members.is_empty() {
            ctx.stop();
        }
    }

    /// Stops every worker with `message` (a `Shutdown` or a `Drain`); the
    /// pool stops once they all have.
    fn stop_all<M>(&mut self, message: M, ctx: &mut Context<Self>)
    where
        M: Message<Result = ()> + Send + Clone + 'static,
        super::worker::WorkerActor: Handler<M>,
    {
        self.stopping = true;
        // members between incarnations have nothing to stop
        self.members.retain(|_, member| member.worker.is_some());
        for member in self.members.values() {
            if let Some(worker) = &member.worker {
                worker.do_send(message.clone());
            }
        }
        self.stop_if_empty(ctx);
    }
}

impl Actor for WorkerPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let names: Vec<String> = self.members.keys().cloned().collect();
        for name in &names {
            self.watch(name, ctx);
        }
        for (index, group) in self.groups.iter().enumerate() {
            ctx.run_interval(group.spec.interval, move |act, ctx| act.scale(index, ctx));
        }
        info!(workers = names.len(), "worker pool started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        info!("worker pool stopped");
    }
}

impl Handler<AddWorker> for WorkerPool {
    type Result = Result<(), PoolError>;

    fn handle(&mut self, AddWorker(member): AddWorker, ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Err(PoolError::Stopping);
        }
        self.add(member, ctx)
    }
}

impl Handler<RemoveWorker> for WorkerPool {
    type Result = ResponseFuture<Result<(), PoolError>>;

    fn handle(&mut self, msg: RemoveWorker, ctx: &mut Self::Context) -> Self::Result {
        let Some(member) = self.members.get_mut(&msg.name) else {
            return Box::pin(async move { Err(PoolError::Unknown(msg.name)) });
        };
        if member.worker.is_none() {
            // restarting or failed: nothing runs, it just leaves
            self.members.remove(&msg.name);
            self.stop_if_empty(ctx);
            return Box::pin(async { Ok(()) });
        }
        let Some(worker) = self.drain_member(&msg.name, msg.timeout) else {
            return Box::pin(async { Ok(()) });
        };
        Box::pin(async move {
            worker.stopped().await;
            Ok(())
        })
    }
}

impl Handler<GetPoolState> for WorkerPool {
    type Result = ResponseFuture<PoolState>;

    fn handle(&mut self, _msg: GetPoolState, _ctx: &mut Self::Context) -> Self::Result {
        let asks: Vec<_> = self
            .members
            .iter()
            .map(|(name, member)| {
                let shown = MemberState {
                    name: name.clone(),
                    labels: member.spec.labels.clone(),
                    status: member.status.clone(),
                    restarts: member.spec.restart.restarts(),
                    worker: None,
                };
                let ask = member
                    .worker
                    .as_ref()
                    .map(|worker| worker.send(GetState).timeout(STATE_TIMEOUT));
                (shown, ask)
            })
            .collect();
        let budget = BudgetState {
            limits: self.limiter.limits(),
            in_use: self.limiter.in_use(),
            used_share: self.limiter.used_share(),
        };
        let stopping = self.stopping;
        Box::pin(async move {
            // asked all at once: one slow worker costs its timeout, not N
            let members = futures_util::future::join_all(asks.into_iter().map(
                |(mut shown, ask)| async move {
                    if let Some(ask) = ask {
                        shown.worker = ask.await.ok();
                    }
                    shown
                },
            ))
            .await;
            PoolState {
                members,
                budget,
                stopping,
            }
        })
    }
}

impl Handler<GetPoolWorker> for WorkerPool {
    type Result = Option<Worker>;

    fn handle(&mut self, msg: GetPoolWorker, _ctx: &mut Self::Context) -> Self::Result {
        self.members.get(&msg.0)?.worker.clone()
    }
}

impl Handler<Shutdown> for WorkerPool {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) {
        info!("shutting the worker pool down");
        self.stop_all(msg, ctx);
    }
}

impl Handler<Drain> for WorkerPool {
    type Result = ();

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) {
        info!(timeout = ?msg.timeout, "draining the worker pool");
        self.stop_all(msg, ctx);
    }
}

// ---------------------------------------------------------------------------
// Scaling in process: a group of like workers whose number the pool decides

/// A group of like workers — e.g. several connections to one server for
/// one agent — whose number the pool decides itself with the
/// [`AutoScaler`](crate::scaling::AutoScaler): at every `interval` it asks
/// the group's workers for their loads and jobs, and starts workers
/// (`{prefix}-1`, `{prefix}-2`, …, each built by `factory(n)`, its instance
/// name suffixed with `-n`) or drains the least busy, between the policy's
/// `min_replicas` and `max_replicas`. The pool's budget bounds them
/// together like any of its workers.
pub struct ScaledGroup {
    prefix: String,
    factory: Arc<dyn Fn(usize) -> WorkerBuilder + Send + Sync>,
    policy: crate::scaling::ScalingPolicy,
    interval: Duration,
    drain_timeout: Duration,
    labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for ScaledGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaledGroup")
            .field("prefix", &self.prefix)
            .field("policy", &self.policy)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl ScaledGroup {
    /// How often the group is sampled by default.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

    /// How long a worker the group sheds may take to finish its jobs, by
    /// default (as a pod's drain).
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

    /// A group whose workers are named `{prefix}-n` and built by
    /// `factory(n)`, scaled under `policy`.
    pub fn new(
        prefix: impl Into<String>,
        policy: crate::scaling::ScalingPolicy,
        factory: impl Fn(usize) -> WorkerBuilder + Send + Sync + 'static,
    ) -> Self {
        Self {
            prefix: prefix.into(),
            factory: Arc::new(factory),
            policy,
            interval: Self::DEFAULT_INTERVAL,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
            labels: BTreeMap::new(),
        }
    }

    /// Sets how often the group is sampled and decided on.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets how long a shed worker's jobs may take to finish.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Adds a label to every worker of the group.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }
}

/// A scaled group as the pool holds it.
struct Group {
    spec: ScaledGroup,
    scaler: crate::scaling::AutoScaler,
    /// The scaler's clock starts here.
    since: Instant,
    /// The number the next worker gets.
    next: usize,
    /// A sampling round is in flight.
    pending: bool,
}

impl Group {
    fn new(spec: ScaledGroup) -> Result<Self, PoolError> {
        if spec.interval.is_zero() {
            return Err(PoolError::Invalid {
                name: "interval",
                reason: format!("group {:?}: must be non-zero", spec.prefix),
            });
        }
        let scaler =
            crate::scaling::AutoScaler::new(spec.policy).map_err(|e| PoolError::Invalid {
                name: "scaling_policy",
                reason: format!("group {:?}: {e}", spec.prefix),
            })?;
        Ok(Self {
            spec,
            scaler,
            since: Instant::now(),
            next: 1,
            pending: false,
        })
    }

    /// The group's next worker, as a member of group `index`.
    fn next_member(&mut self, index: usize) -> PoolMember {
        let n = self.next;
        self.next += 1;
        let factory = self.spec.factory.clone();
        let mut member = PoolMember::new(format!("{}-{n}", self.spec.prefix), move || {
            factory(n).instance_suffix(&format!("-{n}"))
        });
        member.labels = self.spec.labels.clone();
        member.group = Some(index);
        member
    }
}

impl WorkerPool {
    /// One round for group `index`: sample its workers, decide, apply.
    fn scale(&mut self, index: usize, ctx: &mut Context<Self>) {
        if self.stopping || self.groups[index].pending {
            return;
        }
        // replicas are the group's workers running or coming back, not
        // those draining out
        let asks: Vec<_> = self
            .members
            .iter()
            .filter(|(_, member)| {
                member.spec.group == Some(index)
                    && matches!(
                        member.status,
                        MemberStatus::Running | MemberStatus::Restarting
                    )
            })
            .map(|(name, member)| {
                let ask = member
                    .worker
                    .as_ref()
                    .map(|worker| worker.send(GetState).timeout(STATE_TIMEOUT));
                let name = name.clone();
                async move {
                    let state = match ask {
                        Some(ask) => ask.await.ok(),
                        None => None,
                    };
                    (name, state)
                }
            })
            .collect();
        self.groups[index].pending = true;
        ctx.spawn(
            futures_util::future::join_all(asks)
                .into_actor(self)
                .map(move |states, act, ctx| act.apply_scaling(index, states, ctx)),
        );
    }

    /// Decides for group `index` on its workers' `states` and applies it.
    fn apply_scaling(
        &mut self,
        index: usize,
        states: Vec<(String, Option<WorkerState>)>,
        ctx: &mut Context<Self>,
    ) {
        let group = &mut self.groups[index];
        group.pending = false;
        if self.stopping {
            return;
        }
        // a worker that does not answer (restarting) counts, idle
        let loads: Vec<f32> = states
            .iter()
            .map(|(_, state)| state.as_ref().map_or(0.0, |s| s.load))
            .collect();
        let busy = |state: &Option<WorkerState>| {
            state
                .as_ref()
                .map_or(0, |s| s.jobs.starting + s.jobs.running + s.jobs.queued)
        };
        let jobs = states.iter().map(|(_, state)| busy(state) as u64).sum();
        let sample = crate::scaling::FleetSample::from_loads(&loads, jobs);
        let decision = group.scaler.observe(group.since.elapsed(), sample);
        let prefix = group.spec.prefix.clone();
        match decision {
            crate::scaling::ScaleDecision::Up { from, to } => {
                // more workers cannot help while the budget they would
                // share is used up, nor while the group's workers fail
                // (each new one would fail too, and pile up)
                if self.limiter.used_share() >= 1.0 {
                    return debug!(group = prefix, %decision, "the budget is full: not scaling up");
                }
                if self.members.values().any(|member| {
                    member.spec.group == Some(index)
                        && matches!(member.status, MemberStatus::Failed(_))
                }) {
                    return warn!(group = prefix, %decision, "a worker of the group failed: not scaling up");
                }
                info!(group = prefix, %decision, "scaling the group up");
                for _ in from..to {
                    let member = self.groups[index].next_member(index);
                    if let Err(err) = self.add(member, ctx) {
                        warn!(group = prefix, %err, "cannot start a worker for the group");
                    }
                }
            }
            crate::scaling::ScaleDecision::Down { from, to } => {
                info!(group = prefix, %decision, "scaling the group down");
                let timeout = self.groups[index].spec.drain_timeout;
                // only workers that run can drain; one restarting is not
                // picked (it would come back)
                let mut idlest: Vec<_> = states
                    .iter()
                    .filter(|(name, _)| {
                        self.members.get(name).is_some_and(|member| {
                            member.status == MemberStatus::Running && member.worker.is_some()
                        })
                    })
                    .collect();
                idlest.sort_by_key(|(name, state)| (busy(state), std::cmp::Reverse(name.clone())));
                for (name, _) in idlest.into_iter().take((from - to) as usize) {
                    self.drain_member(name, timeout);
                }
            }
            crate::scaling::ScaleDecision::Hold { .. } => {}
        }
    }

    /// Drains `name` out of the pool; the handle of the worker draining.
    fn drain_member(&mut self, name: &str, timeout: Duration) -> Option<Worker> {
        let member = self.members.get_mut(name)?;
        let worker = member.worker.clone()?;
        info!(
            worker = name,
            ?timeout,
            "removing a worker from the pool: draining it"
        );
        member.status = MemberStatus::Draining;
        worker.do_send(Drain::with_timeout(timeout));
        Some(worker)
    }
}

/// Serves the pool's endpoints on `listener`.
#[cfg(feature = "http")]
fn serve_http(
    listener: std::net::TcpListener,
    pool: Pool,
) -> std::io::Result<std::net::SocketAddr> {
    crate::http::serve(listener, crate::http::configure_pool(pool))
}

#[cfg(not(feature = "http"))]
fn serve_http(
    _listener: std::net::TcpListener,
    _pool: Pool,
) -> std::io::Result<std::net::SocketAddr> {
    Err(std::io::Error::other("built without the `http` feature"))
}

#[cfg(feature = "http")]
impl crate::http::PoolStateSource for Pool {
    fn state(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<PoolState>>>> {
        // each worker is asked within STATE_TIMEOUT; the pool answers after
        let answer = self
            .addr
            .send(GetPoolState)
            .timeout(STATE_TIMEOUT + Duration::from_secs(1));
        Box::pin(async move { answer.await.ok() })
    }
}
