//! The user's side of a job: the [`JobHandler`] trait and what it is given.
//!
//! The server offers a job ([`JobRequest`]); the handler decides whether to
//! take it ([`Decision`]) and under which participant identity; once the job
//! is assigned, [`JobHandler::on_job`] does the work with a [`JobContext`]
//! that holds the room's URL and token and a cancellation signal. The runtime
//! reports the outcome to the server: the handler returning `Ok` is SUCCESS,
//! an error or a panic is FAILED with its text.
//!
//! The trait uses `async fn`s, so an implementation reads like plain async
//! code; the runtime boxes the futures behind [`DynHandler`] so that one
//! worker can hold any handler without being generic over it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use std::time::SystemTime;

use livekit_protocol::{Job, JobType, ParticipantInfo};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::connections::ConnectionPool;
use crate::limits::{ResourceRequest, UsageState};
use crate::queue::JobPriority;
use crate::recovery::{Checkpoint, JobCheckpoint};

/// A job's room name, empty if the job names no room.
pub(crate) fn room_name(job: &Job) -> &str {
    job.room.as_ref().map_or("", |room| room.name.as_str())
}

/// A job the server offers this worker.
#[derive(Clone, Debug)]
pub struct JobRequest {
    job: Job,
    resuming: bool,
}

impl JobRequest {
    /// Wraps the server's offer.
    pub fn new(job: Job, resuming: bool) -> Self {
        Self { job, resuming }
    }

    /// The job as the server describes it.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The job id (`AJ_…`).
    pub fn id(&self) -> &str {
        &self.job.id
    }

    /// The room's name, empty if the server sent no room.
    pub fn room_name(&self) -> &str {
        room_name(&self.job)
    }

    /// The dispatch's metadata, as given to the server (often JSON).
    pub fn metadata(&self) -> &str {
        &self.job.metadata
    }

    /// Room, participant or publisher job.
    pub fn job_type(&self) -> JobType {
        JobType::try_from(self.job.r#type).unwrap_or(JobType::JtRoom)
    }

    /// The participant a participant or publisher job is about.
    pub fn participant(&self) -> Option<&ParticipantInfo> {
        self.job.participant.as_ref()
    }

    /// True when the server moves a job that another worker started.
    pub fn resuming(&self) -> bool {
        self.resuming
    }
}

/// How the agent appears in the room when it accepts a job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Participant {
    /// The participant identity the room token is minted for.
    pub identity: String,
    /// The display name.
    pub name: String,
    /// Participant metadata.
    pub metadata: String,
    /// Participant attributes (the server adds `lk.agent_name`).
    pub attributes: HashMap<String, String>,
}

/// What accepting a job involves: who joins, how urgent it is, and what it
/// will use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Acceptance {
    /// How the agent appears in the room.
    pub participant: Participant,
    /// The job's priority; `None`: the worker's priority calculator decides
    /// (by default from `"priority"` in the metadata).
    pub priority: Option<JobPriority>,
    /// What the job expects to use, reserved from the worker's resource
    /// limits before the server is told yes; `None`: one job slot.
    pub resources: Option<ResourceRequest>,
}

/// The answer to a [`JobRequest`].
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Take the job.
    Accept(Acceptance),
    /// Decline; the server offers the job to another worker. The reason is
    /// logged, not sent.
    Reject {
        /// Why, for the worker's log.
        reason: String,
    },
}

impl Decision {
    /// Accept with the default identity `agent-<job id>`.
    pub fn accept(request: &JobRequest) -> Self {
        Self::accept_as(Participant {
            identity: format!("agent-{}", request.id()),
            ..Participant::default()
        })
    }

    /// Accept as the given participant.
    pub fn accept_as(participant: Participant) -> Self {
        Self::Accept(Acceptance {
            participant,
            ..Acceptance::default()
        })
    }

    /// Sets the priority of an acceptance (a rejection stays one).
    pub fn with_priority(mut self, priority: JobPriority) -> Self {
        if let Self::Accept(acceptance) = &mut self {
            acceptance.priority = Some(priority);
        }
        self
    }

    /// Declares what an accepted job will use (a rejection stays one).
    pub fn with_resources(mut self, resources: ResourceRequest) -> Self {
        if let Self::Accept(acceptance) = &mut self {
            acceptance.resources = Some(resources);
        }
        self
    }

    /// Decline, saying why in the worker's log.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject {
            reason: reason.into(),
        }
    }
}

/// Why a job ended without success. Its text is what the server records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The job failed; the text says why.
    #[error("{0}")]
    Failed(String),
    /// The job failed for a reason that may pass (a rate-limited API, a
    /// service restarting): run it again after `retry_after`, up to the
    /// worker's retry bound, without reporting FAILED in between.
    #[error("{reason} (retryable after {retry_after:?})")]
    Retryable {
        /// Why, reported if the retries run out.
        reason: String,
        /// How long to wait before the next attempt.
        retry_after: std::time::Duration,
    },
}

impl JobError {
    /// A failure with the given text.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::Failed(reason.into())
    }

    /// A failure worth another attempt after `retry_after`.
    pub fn retryable(reason: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self::Retryable {
            reason: reason.into(),
            retry_after,
        }
    }
}

impl From<String> for JobError {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

impl From<&str> for JobError {
    fn from(reason: &str) -> Self {
        Self::Failed(reason.to_owned())
    }
}

/// Everything a running job needs.
///
/// Clones share the cancellation signal and the room token. `Debug` leaves
/// the room token out.
#[derive(Clone)]
pub struct JobContext {
    job: Arc<Job>,
    url: String,
    /// The current room token; replaced before it expires for the tokens the
    /// worker mints itself.
    token: Arc<watch::Sender<String>>,
    participant_identity: String,
    cancel: CancellationToken,
    attempt: u32,
    checkpoint: Checkpoint,
    recovered: bool,
    /// The worker's pool; `None`: the process-wide one, looked up (and
    /// built) only when a handler asks for it.
    connections: Option<ConnectionPool>,
}

impl JobContext {
    /// Builds a context. The runtime does this for assigned jobs; tests of a
    /// handler can do it too.
    pub fn new(job: Job, url: impl Into<String>, token: impl Into<String>) -> Self {
        let participant_identity = job
            .state
            .as_ref()
            .map(|state| state.participant_identity.clone())
            .unwrap_or_default();
        let checkpoint = Checkpoint::in_memory(JobCheckpoint::new(
            &job,
            participant_identity.clone(),
            SystemTime::now(),
        ));
        Self {
            job: Arc::new(job),
            url: url.into(),
            token: Arc::new(watch::Sender::new(token.into())),
            participant_identity,
            cancel: CancellationToken::new(),
            attempt: 1,
            checkpoint,
            recovered: false,
            connections: None,
        }
    }

    /// Uses this pool (the worker's) for [`connections`](Self::connections).
    pub(crate) fn with_connections(mut self, connections: ConnectionPool) -> Self {
        self.connections = Some(connections);
        self
    }

    /// Connections to the services the job streams to (an STT or TTS
    /// websocket, an LLM's HTTP API), shared by every job of the worker —
    /// and by default of every worker in the process — so that jobs reuse
    /// warm connections instead of each opening its own. Outside a worker
    /// (a context built with [`new`](Self::new)), the process-wide
    /// [`ConnectionPool::shared`].
    pub fn connections(&self) -> &ConnectionPool {
        self.connections
            .as_ref()
            .unwrap_or_else(|| ConnectionPool::shared())
    }

    /// Uses this checkpoint (the runtime's, kept in its store) and takes the
    /// attempt number from it.
    pub(crate) fn with_checkpoint(mut self, checkpoint: Checkpoint, recovered: bool) -> Self {
        self.attempt = checkpoint.attempt();
        self.checkpoint = checkpoint;
        self.recovered = recovered;
        self
    }

    /// The job's checkpoint: save progress here, and read it back after a
    /// restart.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// True when this run is not the first: the handler panicked or failed
    /// retryably before, or the worker restarted. Read the checkpoint to see
    /// where the last run got to.
    pub fn is_restart(&self) -> bool {
        self.attempt > 1
    }

    /// True when the job was resumed after the worker process restarted.
    pub fn is_recovered(&self) -> bool {
        self.recovered
    }

    /// Which run of the handler this is: 1 for the first, 2 after one retry.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The context for the next attempt (same job, token, cancellation and
    /// checkpoint), counted in the checkpoint.
    pub(crate) fn next_attempt(&self) -> Self {
        Self {
            attempt: self.checkpoint.next_attempt(),
            ..self.clone()
        }
    }

    pub(crate) fn with_identity(mut self, identity: &str) -> Self {
        if self.participant_identity.is_empty() {
            self.participant_identity = identity.to_owned();
        }
        self
    }

    /// The job as the server assigned it.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// The job id.
    pub fn id(&self) -> &str {
        &self.job.id
    }

    /// The room's name.
    pub fn room_name(&self) -> &str {
        room_name(&self.job)
    }

    /// The dispatch's metadata.
    pub fn metadata(&self) -> &str {
        &self.job.metadata
    }

    /// The participant a participant or publisher job is about.
    pub fn participant(&self) -> Option<&ParticipantInfo> {
        self.job.participant.as_ref()
    }

    /// The URL to join the room at (the server's own URL unless the
    /// assignment named another).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The room token minted for this job's participant identity, as it is
    /// now. For tokens the worker mints itself (local jobs, jobs resumed
    /// after a restart) a fresh one replaces it before it expires: read it
    /// again when (re)joining, or [`watch_token`](Self::watch_token).
    pub fn token(&self) -> String {
        self.token.borrow().clone()
    }

    /// Follows the room token: [`TokenWatch::changed`] resolves with each new
    /// token, so a handler can pass it on to its room connection.
    pub fn watch_token(&self) -> TokenWatch {
        TokenWatch(self.token.subscribe())
    }

    /// Replaces the room token (the runtime's refresh).
    pub(crate) fn set_token(&self, token: String) {
        self.token.send_replace(token);
    }

    /// The identity the agent joins the room as.
    pub fn participant_identity(&self) -> &str {
        &self.participant_identity
    }

    /// True once the job has been asked to stop (a termination from the
    /// server or the worker shutting down).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the job is asked to stop: `select!` on it beside the
    /// work, and return soon after.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub(crate) fn cancel(&self) {
        self.cancel.cancel()
    }
}

/// A job's room token over time, from [`JobContext::watch_token`].
pub struct TokenWatch(watch::Receiver<String>);

impl TokenWatch {
    /// Resolves with the next token. Only tokens the worker mints itself
    /// are replaced (local jobs, jobs resumed after a restart); for a job
    /// the server assigned, and once a job has ended, no new token comes —
    /// watch [`JobContext::cancelled`] beside it. `None` once the job's
    /// actor and every clone of its context are gone.
    pub async fn changed(&mut self) -> Option<String> {
        self.0.changed().await.ok()?;
        Some(self.0.borrow_and_update().clone())
    }

    /// The token now.
    pub fn current(&self) -> String {
        self.0.borrow().clone()
    }
}

impl fmt::Debug for TokenWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenWatch([redacted])")
    }
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("job_id", &self.job.id)
            .field("room", &self.room_name())
            .field("url", &self.url)
            .field("participant_identity", &self.participant_identity)
            .field("attempt", &self.attempt)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// What an agent does. One value serves every job of a worker, so it is
/// `Send + Sync` and per-job state lives in `on_job`'s future.
///
/// ```
/// use lkagent::{JobContext, JobError, JobHandler};
///
/// struct Echo;
///
/// impl JobHandler for Echo {
///     async fn on_job(&self, ctx: JobContext) -> Result<(), JobError> {
///         tracing::info!(room = ctx.room_name(), "joined");
///         ctx.cancelled().await; // run until the server ends the job
///         Ok(())
///     }
/// }
/// ```
pub trait JobHandler: Send + Sync + 'static {
    /// Decides whether to take an offered job. The default accepts with
    /// identity `agent-<job id>`. The server waits only about 3 s for the
    /// answer; past the worker's `request_timeout` it declines.
    fn on_request(&self, request: &JobRequest) -> impl Future<Output = Decision> + Send {
        std::future::ready(Decision::accept(request))
    }

    /// Does the job. Returning `Ok` reports SUCCESS; an error or a panic
    /// reports FAILED with its text. Watch [`JobContext::cancelled`] to stop
    /// early when the job is terminated.
    fn on_job(&self, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;

    /// Called once when the server terminates the job, right after its
    /// cancellation signal fires. Keep it quick: it runs on the job's thread.
    fn on_terminated(&self, job: &Job) {
        let _ = job;
    }

    /// Called on each running job when the worker's memory crosses its soft
    /// limit (`UsageState::Pressure`) or its limit (`Exceeded`), and again
    /// with `Ok` when it falls back. Shed what can be shed (caches, buffers).
    /// While under pressure the worker accepts no new jobs.
    fn on_memory_pressure(&self, job: &Job, state: UsageState) {
        let _ = (job, state);
    }
}

/// A boxed future, as the runtime stores handler calls.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// [`JobHandler`] with boxed futures, so that the runtime can hold any handler
/// as `Arc<dyn DynHandler>`. Implemented for every `JobHandler`.
pub trait DynHandler: Send + Sync + 'static {
    /// See [`JobHandler::on_request`].
    fn on_request(self: Arc<Self>, request: JobRequest) -> BoxFuture<Decision>;
    /// See [`JobHandler::on_job`].
    fn on_job(self: Arc<Self>, ctx: JobContext) -> BoxFuture<Result<(), JobError>>;
    /// See [`JobHandler::on_terminated`].
    fn on_terminated(&self, job: &Job);
    /// See [`JobHandler::on_memory_pressure`].
    fn on_memory_pressure(&self, job: &Job, state: UsageState);
}

impl<H: JobHandler> DynHandler for H {
    fn on_request(self: Arc<Self>, request: JobRequest) -> BoxFuture<Decision> {
        Box::pin(async move { JobHandler::on_request(&*self, &request).await })
    }

    fn on_job(self: Arc<Self>, ctx: JobContext) -> BoxFuture<Result<(), JobError>> {
        Box::pin(async move { JobHandler::on_job(&*self, ctx).await })
    }

    fn on_terminated(&self, job: &Job) {
        JobHandler::on_terminated(self, job)
    }

    fn on_memory_pressure(&self, job: &Job, state: UsageState) {
        JobHandler::on_memory_pressure(self, job, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livekit_protocol::Room;

    fn job(id: &str) -> Job {
        Job {
            id: id.into(),
            room: Some(Room {
                name: "lobby".into(),
                ..Default::default()
            }),
            metadata: r#"{"k":1}"#.into(),
            ..Default::default()
        }
    }

    #[test]
    fn default_acceptance_uses_the_job_id_as_identity() {
        let request = JobRequest::new(job("AJ_abc"), false);
        match Decision::accept(&request).with_priority(JobPriority::High) {
            Decision::Accept(a) => {
                assert_eq!(a.participant.identity, "agent-AJ_abc");
                assert_eq!(a.priority, Some(JobPriority::High));
                assert_eq!(a.resources, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            Decision::reject("no").with_priority(JobPriority::Urgent),
            Decision::reject("no")
        );
        assert_eq!(request.room_name(), "lobby");
        assert_eq!(request.metadata(), r#"{"k":1}"#);
    }

    #[test]
    fn context_debug_leaves_the_token_out() {
        let ctx = JobContext::new(job("AJ_1"), "ws://h", "eyJ-room-token-value");
        let shown = format!("{ctx:?}");
        assert!(!shown.contains("eyJ-room-token-value"), "{shown}");
        assert!(shown.contains("AJ_1"));
    }

    #[test]
    fn a_new_token_reaches_every_clone_and_watcher() {
        let ctx = JobContext::new(job("AJ_1"), "ws://h", "first");
        let clone = ctx.clone();
        let mut watch = clone.watch_token();
        assert_eq!(watch.current(), "first");
        ctx.set_token("second".into());
        assert_eq!(clone.token(), "second");
        let next = futures_util::FutureExt::now_or_never(watch.changed());
        assert_eq!(next, Some(Some("second".to_owned())));
        assert!(!format!("{watch:?}").contains("second"));
    }

    #[test]
    fn a_context_outside_a_worker_uses_the_process_wide_pool() {
        let ctx = JobContext::new(job("AJ_1"), "ws://h", "t");
        assert!(std::ptr::eq(ctx.connections(), ConnectionPool::shared()));
        let own = ConnectionPool::new(Default::default()).unwrap();
        let ctx = ctx.with_connections(own);
        assert!(!std::ptr::eq(ctx.connections(), ConnectionPool::shared()));
        assert!(!std::ptr::eq(
            ctx.next_attempt().connections(),
            ConnectionPool::shared()
        ));
    }

    #[test]
    fn cancellation_is_shared_by_clones() {
        let ctx = JobContext::new(job("AJ_1"), "ws://h", "t");
        let clone = ctx.clone();
        assert!(!clone.is_cancelled());
        ctx.cancel();
        assert!(clone.is_cancelled());
    }
}
