//! `lkagent-devserver`: a local stand-in for the agent-dispatch side of a
//! LiveKit server, for developing and testing agent workers over loopback.
//!
//! Workers connect to `ws://HOST:PORT/agent` with a LiveKit access token
//! carrying the `agent` grant, register, and receive jobs created through
//! the Twirp APIs the official server SDKs call (`AgentDispatchService`,
//! `RoomService`, on the same port), through the development endpoints that
//! simulate participants, or directly through a [`DevServer`] handle. The server
//! follows the open-source LiveKit server's worker protocol; it shares nothing
//! with the `lkagent` crate but `livekit-protocol`, so each side checks the
//! other honestly.
//!
//! # Map
//! - [`config`](DevServerConfig): where to listen, keys, timers, and the
//!   caps on workers, rooms, participants, dispatches and job records.
//! - `model`: the public snapshots and errors ([`JobInfo`], [`WorkerInfo`],
//!   [`DispatchRequest`], [`DispatchError`], …).
//! - Pure logic, tested with plain `#[test]`s:
//!   `ids` (`AW_`/`AJ_`/`AD_` ids), `balance` (weighted choice by `1 - load`),
//!   `auth` (key lists, token checks, room-token minting).
//! - Actors: `session` (one per worker socket: frames, the register
//!   handshake, pings) and `dispatcher` (the one owner of workers, jobs,
//!   placements in flight, restarts and grace periods; its `rooms` part keeps
//!   rooms, dispatches and participants and turns them into jobs), talking
//!   only through the typed messages in `messages`.
//! - [`dashboard`]: the page at `/dashboard`, its API and its live event
//!   stream.
//! - `faults`: fault mode for soak tests ([`FaultConfig`], [`FaultReport`]).
//! - `twirp`: the HTTP APIs (Twirp in protobuf or JSON, grants, Twirp
//!   errors) and the `/dev/…` participant endpoints.
//! - `server`: the [`DevServer`] handle: starts actix-web, relays calls to the
//!   dispatcher, and waits on its state-change counter.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use lkagent_devserver::{DevServer, DevServerConfig, DispatchRequest};
//! let server = DevServer::start(DevServerConfig::default()).await?;
//! // point a worker at server.ws_url() with devkey/secret, then:
//! let job = server.dispatch(DispatchRequest::room("demo")).await?;
//! println!("assigned {} to {:?}", job.id, job.worker_id);
//! # Ok(()) }
//! ```

mod auth;
mod balance;
mod bench;
mod config;
pub mod dashboard;
mod dispatcher;
mod faults;
mod ids;
mod load_history;
mod messages;
mod model;
mod server;
mod session;
mod twirp;

pub use auth::{AGENT_NAME_ATTRIBUTE, KeyParseError, parse_keys};
pub use config::{
    DEFAULT_AVAILABILITY_TIMEOUT, DEFAULT_MAX_DISPATCHES, DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_JOB_ATTEMPTS, DEFAULT_MAX_PARTICIPANTS, DEFAULT_MAX_ROOMS, DEFAULT_MAX_WORKERS,
    DEFAULT_PING_INTERVAL, DEFAULT_RECONNECT_GRACE, DEFAULT_REGISTER_TIMEOUT,
    DEFAULT_ROOM_TOKEN_TTL, DEV_KEY, DevServerConfig,
};
pub use dispatcher::{MAX_JOB_UPDATES, MAX_JOBS};
pub use faults::{FaultConfig, FaultCounts, FaultReport, MAX_REPORTED_IDS};
pub use model::{
    ApiError, Counts, DevServerError, DispatchError, DispatchRequest, JobInfo, RawFrame,
    StatusUpdate, WaitTimeout, WorkerInfo,
};
pub use server::DevServer;
pub use twirp::MAX_BODY_SIZE;

/// The official LiveKit Rust server SDK (`livekit-api`, with its `services`
/// Twirp clients), re-exported so that a test embedding the dev server can
/// drive it the way an application drives a real server.
pub use livekit_api as official_api;

/// The decoders of network input, reachable for the fuzz tests
/// (`devserver/tests/fuzz.rs`): not an API, and may change at any time.
#[doc(hidden)]
pub mod decoders {
    pub use crate::auth::{extract_token, verify};
    pub use crate::session::{Format as FrameFormat, decode_worker_frame};
    pub use crate::twirp::{Format as BodyFormat, JoinBody, decode as decode_body};
}

/// The protocol types this crate speaks, re-exported for convenience.
pub use livekit_protocol::{JobRestartPolicy, JobStatus, JobType, WorkerStatus};
