//! [`DevServerConfig`]: where to listen, which keys to accept, and the timers.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The server's register deadline (`RegisterTimeout` in `pkg/agent/worker.go`).
pub const DEFAULT_REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server waits for an availability answer (`AssignJobTimeout`).
pub const DEFAULT_AVAILABILITY_TIMEOUT: Duration = Duration::from_secs(10);
/// WebSocket Ping period of the server's signal connection.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// The server closes the socket on an inbound frame above this.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 2 << 20;
/// Validity of the room token sent with an assignment (`BuildAgentToken`).
pub const DEFAULT_ROOM_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How long a disconnected worker's jobs wait to be claimed (by `migrate_job`
/// or an `update_job` on a new connection) before they count as failed.
pub const DEFAULT_RECONNECT_GRACE: Duration = Duration::from_secs(10);
/// Attempts per job target (the first one included) for dispatches with
/// `restart_policy = JRP_ON_FAILURE`.
pub const DEFAULT_MAX_JOB_ATTEMPTS: u32 = 3;
/// Connected workers at most (`--max-workers`): far above a development
/// fleet, low enough that a runaway reconnect loop cannot exhaust the server.
pub const DEFAULT_MAX_WORKERS: usize = 1_000;
/// Rooms at most (`--max-rooms`).
pub const DEFAULT_MAX_ROOMS: usize = 10_000;
/// Simulated participants per room at most (`--max-participants`).
pub const DEFAULT_MAX_PARTICIPANTS: usize = 1_000;
/// Live dispatches at most (`--max-dispatches`): two per room at the room
/// cap (every room has its default dispatch, most have one named one).
pub const DEFAULT_MAX_DISPATCHES: usize = 20_000;
/// The well-known local development key pair (`livekit-server --dev`).
pub const DEV_KEY: (&str, &str) = ("devkey", "secret");

/// Configuration of a [`DevServer`](crate::DevServer).
#[derive(Clone)]
pub struct DevServerConfig {
    /// Address to listen on; the default `127.0.0.1:0` picks a free port.
    pub bind: SocketAddr,
    /// Accepted API keys and their secrets; default `[("devkey", "secret")]`.
    pub keys: Vec<(String, String)>,
    /// A connection that has not registered within this is closed.
    pub register_timeout: Duration,
    /// How long a worker may take to answer an availability request.
    pub availability_timeout: Duration,
    /// Period of the server's WebSocket Ping frames.
    pub ping_interval: Duration,
    /// Inbound frames larger than this close the connection (2 MiB).
    pub max_frame_size: usize,
    /// Validity of the room tokens minted for assignments (1 h).
    pub room_token_ttl: Duration,
    /// Whether protocol `WorkerPing`s get a `WorkerPong` (default true). Set
    /// false to play a server that has hung while its socket stays open:
    /// a worker must notice through its own keepalive.
    pub answer_pings: bool,
    /// Close every worker connection right after answering its registration
    /// (default false): plays a server that accepts workers and then drops
    /// them, to test that a fleet does not reconnect in a storm.
    pub drop_after_register: bool,
    /// A disconnected worker's unfinished jobs stay its own for this long: a
    /// worker that registers again with the same API key and agent name and
    /// claims them (`migrate_job`, or a status for them) keeps them. After
    /// it, they count as failed and restart-on-failure dispatches launch
    /// them again (default 10 s).
    pub reconnect_grace: Duration,
    /// Attempts per job target, the first included, for dispatches whose
    /// `restart_policy` is `JRP_ON_FAILURE` (default 3).
    pub max_job_attempts: u32,
    /// Connected (registered) workers at most: a worker registering beyond
    /// it is closed with code 1013 "try again later" (default
    /// [`DEFAULT_MAX_WORKERS`]).
    pub max_workers: usize,
    /// Rooms at most: creating one more (CreateRoom, a dispatch or a
    /// participant for a missing room) is `resource_exhausted` (default
    /// [`DEFAULT_MAX_ROOMS`]).
    pub max_rooms: usize,
    /// Simulated participants per room at most; one more is
    /// `resource_exhausted` (default [`DEFAULT_MAX_PARTICIPANTS`]).
    pub max_participants: usize,
    /// Live dispatches at most, all rooms together (a deleted dispatch is
    /// forgotten); one more is `resource_exhausted` (default
    /// [`DEFAULT_MAX_DISPATCHES`]).
    pub max_dispatches: usize,
    /// Job records kept. A new job evicts the oldest finished one (or one
    /// whose worker left and never claimed it) when the records are full; a
    /// live job is never evicted, so with every record live a new job is
    /// refused (`resource_exhausted`, [`DispatchError::TooManyJobs`]).
    /// Default [`MAX_JOBS`](crate::MAX_JOBS); raise it to hold more jobs
    /// running at once, as a benchmark does.
    ///
    /// [`DispatchError::TooManyJobs`]: crate::DispatchError::TooManyJobs
    pub max_jobs: usize,
    /// Listen beyond loopback with the well-known [`DEV_KEY`] all the same.
    /// Off by default: anyone who can reach the port knows that secret, so
    /// [`DevServer::start`](crate::DevServer::start) refuses it.
    pub insecure: bool,
    /// Fault mode for soak tests (off by default): drops connections,
    /// terminates jobs and repeats messages at random moments drawn from a
    /// seed. See [`FaultConfig`](crate::FaultConfig).
    pub faults: Option<crate::FaultConfig>,
}

impl DevServerConfig {
    /// Why this configuration must not start: listening beyond loopback
    /// while [`DEV_KEY`] (whose secret everyone knows) is accepted, unless
    /// [`insecure`](Self::insecure) says so.
    pub fn refusal(&self) -> Option<String> {
        let public = !self.bind.ip().is_loopback();
        let dev_key = self
            .keys
            .iter()
            .any(|(key, secret)| (key.as_str(), secret.as_str()) == DEV_KEY);
        (public && dev_key && !self.insecure).then(|| {
            format!(
                "refusing to listen on {} with the default key {}:{} that anyone can use: \
                 set your own keys (--keys, LIVEKIT_KEYS), or pass --insecure",
                self.bind.ip(),
                DEV_KEY.0,
                DEV_KEY.1
            )
        })
    }
}

impl Default for DevServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            keys: vec![(DEV_KEY.0.to_owned(), DEV_KEY.1.to_owned())],
            register_timeout: DEFAULT_REGISTER_TIMEOUT,
            availability_timeout: DEFAULT_AVAILABILITY_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            room_token_ttl: DEFAULT_ROOM_TOKEN_TTL,
            answer_pings: true,
            drop_after_register: false,
            reconnect_grace: DEFAULT_RECONNECT_GRACE,
            max_job_attempts: DEFAULT_MAX_JOB_ATTEMPTS,
            max_workers: DEFAULT_MAX_WORKERS,
            max_rooms: DEFAULT_MAX_ROOMS,
            max_participants: DEFAULT_MAX_PARTICIPANTS,
            max_dispatches: DEFAULT_MAX_DISPATCHES,
            max_jobs: crate::MAX_JOBS,
            insecure: false,
            faults: None,
        }
    }
}

impl fmt::Debug for DevServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never print: only the key names.
        let keys: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("DevServerConfig")
            .field("bind", &self.bind)
            .field("keys", &keys)
            .field("register_timeout", &self.register_timeout)
            .field("availability_timeout", &self.availability_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("max_frame_size", &self.max_frame_size)
            .field("room_token_ttl", &self.room_token_ttl)
            .field("answer_pings", &self.answer_pings)
            .field("drop_after_register", &self.drop_after_register)
            .field("reconnect_grace", &self.reconnect_grace)
            .field("max_job_attempts", &self.max_job_attempts)
            .field("max_workers", &self.max_workers)
            .field("max_rooms", &self.max_rooms)
            .field("max_participants", &self.max_participants)
            .field("max_dispatches", &self.max_dispatches)
            .field("max_jobs", &self.max_jobs)
            .field("insecure", &self.insecure)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_key_is_refused_beyond_loopback_unless_insecure() {
        let public = DevServerConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 7880)),
            ..DevServerConfig::default()
        };
        let why = public.refusal().expect("refused");
        assert!(
            why.contains("--insecure") && why.contains("0.0.0.0"),
            "{why}"
        );
        let insecure = DevServerConfig {
            insecure: true,
            ..public.clone()
        };
        assert_eq!(insecure.refusal(), None);
        let own_keys = DevServerConfig {
            keys: vec![("prod".into(), "a-long-secret".into())],
            ..public.clone()
        };
        assert_eq!(own_keys.refusal(), None);
        assert_eq!(
            DevServerConfig::default().refusal(),
            None,
            "loopback is fine"
        );
        let ipv6_loopback = DevServerConfig {
            bind: "[::1]:7880".parse().unwrap(),
            ..DevServerConfig::default()
        };
        assert_eq!(ipv6_loopback.refusal(), None);
    }

    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let mut config = DevServerConfig::default();
        config.keys.push(("k2".into(), "hunter2".into()));
        let text = format!("{config:?}");
        assert!(text.contains("devkey") && text.contains("k2"));
        assert!(!text.contains("secret") && !text.contains("hunter2"));
    }
}
