//! What a worker needs to know: where the server is, who it is, and its limits.
//!
//! [`WorkerOptions::new`] takes the three things there is no default for (URL,
//! API key, API secret); everything else has a default that suits a fleet and
//! a chainable setter. [`WorkerOptions::from_env`] reads the usual `LIVEKIT_*`
//! variables. Either way, [`WorkerOptions::validate`] runs before a worker
//! starts, and its errors name the variable or option at fault.

use std::collections::BTreeMap;
use std::time::Duration;

use livekit_protocol::JobType;

use crate::auth::{Credentials, ROOM_TOKEN_TTL, SecretProvider, SecretSource};
use crate::backoff::Backoff;
use crate::limits::ResourceLimits;
use crate::protocol;
use crate::queue::{AdmissionPolicy, DEFAULT_QUEUE_CAPACITY, RateLimits};
use crate::reconnect::ReconnectPolicy;
use crate::recovery::RestartPolicy;

/// The environment variable holding the server URL.
pub const ENV_URL: &str = "LIVEKIT_URL";
/// The environment variable holding the API key.
pub const ENV_API_KEY: &str = "LIVEKIT_API_KEY";
/// The environment variable holding the API secret.
pub const ENV_API_SECRET: &str = "LIVEKIT_API_SECRET";
/// The environment variable naming a file that holds the API secret, read
/// again at every connection (instead of [`ENV_API_SECRET`]).
pub const ENV_API_SECRET_FILE: &str = "LIVEKIT_API_SECRET_FILE";
/// The environment variable holding the agent name (optional).
pub const ENV_AGENT_NAME: &str = "LIVEKIT_AGENT_NAME";

/// How long a queued job may wait by default: long enough to ride out a
/// burst, far shorter than the hour a room token lasts.
pub const DEFAULT_QUEUE_MAX_WAIT: Duration = Duration::from_secs(5 * 60);

/// `prefix` and `len` random characters of `alphabet`.
pub(crate) fn random_id(prefix: &str, alphabet: &[u8], len: usize) -> String {
    let suffix: String = (0..len)
        .map(|_| alphabet[rand::random_range(0..alphabet.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// Lowercase letters and digits: worker identities.
pub(crate) const LOWER_ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Letters of both cases and digits: job ids.
pub(crate) const ALPHANUMERIC: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// How many threads run `on_request` hooks by default: two, so that one hook
/// blocking its thread leaves the other for every other offer.
pub const DEFAULT_HOOK_THREADS: usize = 2;

/// A configuration value that is missing or unusable. `name` is the
/// environment variable when the value came from the environment, else the
/// option's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A required value was not given.
    #[error("{name} is not set")]
    Missing {
        /// The variable or option.
        name: &'static str,
    },
    /// A value was given but cannot be used; `reason` says why.
    #[error("{name} is invalid: {reason}")]
    Invalid {
        /// The variable or option.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The default [`WorkerOptions::liveness_ttl`]: a dead worker's jobs are
/// orphaned within 4 s and, with a scan every 4 s, taken over within 8 s —
/// inside the dev server's 10 s restart grace, so a takeover wins over a
/// re-dispatch.
pub const DEFAULT_LIVENESS_TTL: Duration = Duration::from_secs(4);

/// The configuration of one worker.
///
/// `Debug` is safe to log: the secret prints as `[redacted]`.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The LiveKit server, as `http(s)://` or `ws(s)://`.
    pub url: String,
    /// The API key and secret the worker signs its tokens with.
    pub credentials: Credentials,
    /// The agent name; empty means the default agent, which receives rooms
    /// that have no explicit dispatch.
    pub agent_name: String,
    /// Which jobs this worker takes: one per room, per participant, or per
    /// publisher.
    pub job_type: JobType,
    /// An optional namespace that further groups workers on the server.
    pub namespace: Option<String>,
    /// The version string sent at registration.
    pub version: String,
    /// This worker's name for the people who run it: the `worker` label of
    /// its metrics, and in its logs; and its identity in the checkpoint
    /// store, which holds its jobs in its name (see `liveness_ttl`).
    /// Default: `lkw-` and eight random letters or digits, new at every
    /// start (set it to the pod's name to follow one pod across restarts:
    /// a worker restarted under the same identity resumes its own jobs at
    /// once). It must be unique among the workers sharing a store: two live
    /// processes under one identity would take each other's jobs.
    pub instance_id: String,
    /// The most jobs this worker runs at once; at this many it reports FULL
    /// and declines further requests.
    pub max_jobs: usize,
    /// How often the worker sends a protocol ping.
    pub ping_interval: Duration,
    /// How long without a pong (or any frame) before the connection is taken
    /// for dead and re-established.
    pub ping_timeout: Duration,
    /// How long the server may take to answer the registration.
    pub register_timeout: Duration,
    /// How the worker reconnects: exponential backoff with jitter, reset only
    /// by a registration that lasts (30 s); a long delay after a refused
    /// token (60 s); optionally a give-up budget after which the server
    /// counts as unreachable (the worker keeps trying, its health says so).
    pub reconnect: ReconnectPolicy,
    /// How long `on_request` may take before the worker answers
    /// `available: false`; the server gives up waiting after about 3 s.
    pub request_timeout: Duration,
    /// How long a slot stays reserved after answering `available: true`
    /// while the assignment has not arrived.
    pub assignment_timeout: Duration,
    /// How long a terminated job's handler may take to wind down after its
    /// cancellation signal before it is dropped.
    pub termination_grace: Duration,
    /// How a job whose handler panics or returns `JobError::Retryable` is
    /// run again: at most N restarts within a period, with backoff (default
    /// 3 within 60 s, 100 ms doubling). Each job starts with a fresh copy.
    pub restart_policy: RestartPolicy,
    /// The longest `retry_after` honoured; longer requests wait this long.
    pub max_retry_delay: Duration,
    /// How often a job's checkpoint, if changed, is written behind its
    /// handler (`Checkpoint::flush` writes at once).
    pub checkpoint_interval: Duration,
    /// How often a worker given the fleet's queue looks for work there when
    /// it has a free slot and nothing queued (default 250 ms).
    pub fleet_pull_interval: Duration,
    /// How long a job pulled from the fleet's queue stays the puller's
    /// before it may be re-delivered — only if the puller is gone by then
    /// and the job never started (default 30 s).
    pub fleet_visibility: Duration,
    /// How often a worker given a fleet view (`WorkerBuilder::fleet_view`)
    /// publishes its load there and recomputes the fleet's recommended
    /// replica count (default 5 s; a published load lasts three of these).
    pub fleet_view_interval: Duration,
    /// The most accepted jobs waiting for a slot; 0 turns queueing off.
    pub queue_capacity: usize,
    /// A queued job that waits longer than this is failed (default 5 min).
    /// It must be shorter than a room token's lifetime (1 h), or a job could
    /// start with a token that has expired.
    pub queue_max_wait: Duration,
    /// What the worker may use: memory, CPU, jobs, open files (0: no limit).
    pub resource_limits: ResourceLimits,
    /// Limits on accepted jobs, globally and per room; `None`: none.
    pub rate_limits: Option<RateLimits>,
    /// Which priorities are admitted at which load; `None`: the default
    /// headroom around the load threshold.
    pub admission: Option<AdmissionPolicy>,
    /// How often memory is checked against the limits.
    pub memory_check_interval: Duration,
    /// How long the worker's heartbeat in the checkpoint store lasts; it is
    /// renewed every third of it. The jobs of a worker whose heartbeat has
    /// lapsed are orphans another worker of the fleet may claim (the owner
    /// is `instance_id`: set it to keep one identity across restarts).
    pub liveness_ttl: Duration,
    /// How many arbiters (threads) run jobs; 0 means one per core.
    pub job_threads: usize,
    /// How many threads run the handler's `on_request` (at least 1; default
    /// 2). Each offer goes to the one with the fewest decisions in flight,
    /// so a hook that blocks its thread delays no other job's answer.
    pub hook_threads: usize,
    /// How often a child actor (connection, load reporter, queue, a job's
    /// actor) may crash — a panic in the runtime's own code — before the
    /// worker gives up on it (default 5 within 60 s, 100 ms doubling to
    /// 5 s). Past it, the worker shuts down in order (for a job's actor:
    /// that job is reported FAILED).
    pub child_restart_policy: RestartPolicy,
    /// How long a shutdown waits, after the jobs' grace, for the server to
    /// confirm their final statuses (default 5 s).
    pub shutdown_flush_timeout: Duration,
    /// How long the room tokens the worker mints itself (for local jobs and
    /// jobs resumed after a restart) are valid; each is replaced by a fresh
    /// one when three quarters of this have passed (default 1 h, as the
    /// server's own).
    pub room_token_ttl: Duration,
    /// The load at which the worker reports FULL; `None` takes the load
    /// calculator's own default (0.7 for resource-based loads, as in the
    /// official workers; 1.0 for the job-slot load).
    pub load_threshold: Option<f32>,
    /// How often CPU and memory are sampled and the load recomputed.
    pub load_sample_interval: Duration,
    /// The longest gap between two `update_worker` reports; in between, a
    /// report goes out only when the load changed.
    pub load_report_interval: Duration,
    /// Labels for the people who run it (`region`, `zone`, …): added to
    /// every metric series the worker records and shown in `/worker`. At
    /// most [`MAX_LABELS`]; names are Prometheus label names other than
    /// `agent_name` and `worker`.
    pub labels: BTreeMap<String, String>,
    /// Takes the server's offers only while the resource budget (shared by
    /// the workers of a `WorkerPool`) is used below this share,
    /// `0.0..=1.0`; its reported load reaches FULL there. Jobs the
    /// application spawns itself (`SpawnJob`) are its own call and are not
    /// held to it. For a worker that serves a remote
    /// region: it helps only while the machine has room to spare, leaving
    /// the rest to the local region's worker. `None`: up to the whole
    /// budget.
    pub accept_below: Option<f32>,
}

/// The most labels a worker may carry: each one multiplies nothing (one
/// value per worker) but every series repeats them.
pub const MAX_LABELS: usize = 16;

/// The longest label value, in bytes.
const MAX_LABEL_VALUE: usize = 128;

impl WorkerOptions {
    /// Options for the server at `url` with the given key and secret, and
    /// defaults for everything else.
    pub fn new(
        url: impl Into<String>,
        api_key: impl Into<String>,
        api_secret: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            credentials: Credentials::new(api_key, api_secret),
            agent_name: String::new(),
            job_type: JobType::JtRoom,
            namespace: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            instance_id: random_id("lkw-", LOWER_ALPHANUMERIC, 8),
            max_jobs: 100,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(30),
            register_timeout: Duration::from_secs(10),
            reconnect: ReconnectPolicy::default(),
            request_timeout: Duration::from_millis(2500),
            assignment_timeout: Duration::from_millis(7500),
            termination_grace: Duration::from_secs(10),
            restart_policy: RestartPolicy::default(),
            max_retry_delay: Duration::from_secs(300),
            checkpoint_interval: Duration::from_secs(1),
            fleet_pull_interval: Duration::from_millis(250),
            fleet_visibility: Duration::from_secs(30),
            fleet_view_interval: Duration::from_secs(5),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_max_wait: DEFAULT_QUEUE_MAX_WAIT,
            resource_limits: ResourceLimits::default(),
            rate_limits: None,
            admission: None,
            memory_check_interval: Duration::from_secs(1),
            liveness_ttl: DEFAULT_LIVENESS_TTL,
            job_threads: 0,
            hook_threads: DEFAULT_HOOK_THREADS,
            child_restart_policy: RestartPolicy::new(
                5,
                Duration::from_secs(60),
                Backoff {
                    initial: Duration::from_millis(100),
                    max: Duration::from_secs(5),
                    jitter: 0.5,
                },
            ),
            shutdown_flush_timeout: Duration::from_secs(5),
            room_token_ttl: ROOM_TOKEN_TTL,
            load_threshold: None,
            load_sample_interval: Duration::from_millis(500),
            load_report_interval: Duration::from_millis(2500),
            labels: BTreeMap::new(),
            accept_below: None,
        }
    }

    /// Reads `LIVEKIT_URL`, `LIVEKIT_API_KEY`, `LIVEKIT_API_SECRET` (all
    /// required) and `LIVEKIT_AGENT_NAME` (optional) from the environment.
    /// `LIVEKIT_API_SECRET_FILE` may replace `LIVEKIT_API_SECRET`: the file is
    /// read again at every connection, so a rotated secret takes effect at the
    /// next reconnect.
    pub fn from_env() -> Result<Self, OptionsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, OptionsError> {
        let required = |name: &'static str| -> Result<String, OptionsError> {
            match lookup(name) {
                Some(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
                _ => Err(OptionsError::Missing { name }),
            }
        };
        let url = required(ENV_URL)?;
        protocol::agent_url(&url).map_err(|e| OptionsError::Invalid {
            name: ENV_URL,
            reason: e.to_string(),
        })?;
        let key = required(ENV_API_KEY)?;
        let secret_file = lookup(ENV_API_SECRET_FILE).filter(|v| !v.trim().is_empty());
        let secret_given = lookup(ENV_API_SECRET).is_some_and(|v| !v.trim().is_empty());
        let mut options = match secret_file {
            Some(_) if secret_given => {
                return Err(OptionsError::Invalid {
                    name: ENV_API_SECRET_FILE,
                    reason: format!(
                        "set either {ENV_API_SECRET} or {ENV_API_SECRET_FILE}, not both"
                    ),
                });
            }
            Some(path) => Self::new(url, key, "").api_secret_file(path.trim()),
            None => Self::new(url, key, required(ENV_API_SECRET)?),
        };
        if let Some(name) = lookup(ENV_AGENT_NAME) {
            options.agent_name = name.trim().to_owned();
        }
        Ok(options)
    }

    /// Sets the agent name.
    pub fn agent_name(mut self, name: impl Into<String>) -> Self {
        self.agent_name = name.into();
        self
    }

    /// Sets the job type.
    pub fn job_type(mut self, job_type: JobType) -> Self {
        self.job_type = job_type;
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Sets the most jobs run at once.
    pub fn max_jobs(mut self, max_jobs: usize) -> Self {
        self.max_jobs = max_jobs;
        self
    }

    /// Sets the keepalive: a ping every `interval`, dead after `timeout` of
    /// silence.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.ping_interval = interval;
        self.ping_timeout = timeout;
        self
    }

    /// Sets the reconnect backoff (the delays between failed attempts).
    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.reconnect.backoff = backoff;
        self
    }

    /// Reports the server unreachable after this long without a
    /// registration (the worker keeps trying).
    pub fn reconnect_give_up_after(mut self, budget: Duration) -> Self {
        self.reconnect.give_up_after = Some(budget);
        self
    }

    /// Adds a label (`region`, `zone`, …) to every metric series of the
    /// worker and to `/worker`.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }

    /// Takes new jobs only while the shared budget is used below `share`
    /// (see [`accept_below`](Self#structfield.accept_below)).
    pub fn accept_below(mut self, share: f32) -> Self {
        self.accept_below = Some(share);
        self
    }

    /// Sets the load at which the worker reports FULL.
    pub fn load_threshold(mut self, threshold: f32) -> Self {
        self.load_threshold = Some(threshold);
        self
    }

    /// Sets how often the load is sampled and how long reports may be apart.
    pub fn load_intervals(mut self, sample: Duration, report: Duration) -> Self {
        self.load_sample_interval = sample;
        self.load_report_interval = report;
        self
    }

    /// Sets how failed jobs are restarted.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart_policy = policy;
        self
    }

    /// Sets how long a terminated job may take to wind down.
    pub fn termination_grace(mut self, grace: Duration) -> Self {
        self.termination_grace = grace;
        self
    }

    /// Where the API secret comes from (a secret prints redacted).
    pub fn api_secret(&self) -> &SecretSource {
        &self.credentials.api_secret
    }

    /// Reads the API secret from this file at every connection (and every
    /// room token the worker mints), so that a rotated secret takes effect
    /// at the next reconnect without a restart.
    pub fn api_secret_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.credentials.api_secret = SecretSource::File(path.into());
        self
    }

    /// Asks this closure for the API secret at every connection (and every
    /// room token the worker mints).
    pub fn api_secret_provider(
        mut self,
        provider: impl Fn() -> Result<crate::auth::ApiSecret, String> + Send + Sync + 'static,
    ) -> Self {
        let provider: SecretProvider = std::sync::Arc::new(provider);
        self.credentials.api_secret = SecretSource::Provider(provider);
        self
    }

    /// Checks that the options can run a worker.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let invalid = |name, reason: &str| {
            Err(OptionsError::Invalid {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.url.trim().is_empty() {
            return Err(OptionsError::Missing { name: "url" });
        }
        protocol::agent_url(&self.url).map_err(|e| OptionsError::Invalid {
            name: "url",
            reason: e.to_string(),
        })?;
        if self.credentials.api_key.is_empty() {
            return Err(OptionsError::Missing { name: "api_key" });
        }
        if self.credentials.api_secret.is_known_empty() {
            return Err(OptionsError::Missing { name: "api_secret" });
        }
        if self.max_jobs == 0 {
            return invalid("max_jobs", "must be at least 1");
        }
        if self.job_type != JobType::JtRoom
            && self.job_type != JobType::JtPublisher
            && self.job_type != JobType::JtParticipant
        {
            return invalid("job_type", "unknown job type");
        }
        if self.ping_interval.is_zero() || self.ping_timeout <= self.ping_interval {
            return invalid(
                "ping_timeout",
                "the ping interval must be non-zero and shorter than the timeout",
            );
        }
        if let Some(threshold) = self.load_threshold
            && !(threshold > 0.0 && threshold <= 1.0)
        {
            return invalid("load_threshold", "must be above 0 and at most 1");
        }
        if let Some(share) = self.accept_below
            && !(share > 0.0 && share <= 1.0)
        {
            return invalid("accept_below", "must be above 0 and at most 1");
        }
        self.resource_limits
            .validate()
            .map_err(|reason| OptionsError::Invalid {
                name: "resource_limits",
                reason,
            })?;
        validate_labels(&self.labels).map_err(|reason| OptionsError::Invalid {
            name: "labels",
            reason,
        })?;
        self.restart_policy
            .validate()
            .map_err(|reason| OptionsError::Invalid {
                name: "restart_policy",
                reason,
            })?;
        for (name, value) in [
            ("checkpoint_interval", self.checkpoint_interval),
            ("fleet_pull_interval", self.fleet_pull_interval),
            ("fleet_visibility", self.fleet_visibility),
            ("fleet_view_interval", self.fleet_view_interval),
            ("memory_check_interval", self.memory_check_interval),
            ("liveness_ttl", self.liveness_ttl),
            ("load_sample_interval", self.load_sample_interval),
            ("load_report_interval", self.load_report_interval),
            ("register_timeout", self.register_timeout),
            ("request_timeout", self.request_timeout),
            ("assignment_timeout", self.assignment_timeout),
            ("queue_max_wait", self.queue_max_wait),
            ("room_token_ttl", self.room_token_ttl),
            ("shutdown_flush_timeout", self.shutdown_flush_timeout),
        ] {
            if value.is_zero() {
                return invalid(name, "must be non-zero");
            }
        }
        if self.queue_max_wait >= ROOM_TOKEN_TTL {
            return invalid(
                "queue_max_wait",
                "must be shorter than a room token's lifetime (1 h)",
            );
        }
        if self.instance_id.trim().is_empty() {
            return invalid("instance_id", "must not be empty");
        }
        if self.hook_threads == 0 {
            return invalid("hook_threads", "must be at least 1");
        }
        self.child_restart_policy
            .validate()
            .map_err(|reason| OptionsError::Invalid {
                name: "child_restart_policy",
                reason,
            })?;
        self.reconnect
            .validate()
            .map_err(|reason| OptionsError::Invalid {
                name: "reconnect",
                reason,
            })
    }
}

/// Checks labels: Prometheus label names (`[a-zA-Z_][a-zA-Z0-9_]*`, not
/// reserved, not the two every series already has), bounded in count and
/// length.
fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    for (name, value) in labels {
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || name.starts_with("__") {
            return Err(format!("{name:?} is not a Prometheus label name"));
        }
        if name == "agent_name" || name == "worker" {
            return Err(format!("{name:?} is set by the worker itself"));
        }
        if value.len() > MAX_LABEL_VALUE {
            return Err(format!(
                "the value of {name:?} is longer than {MAX_LABEL_VALUE} bytes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const FULL: [(&str, &str); 4] = [
        (ENV_URL, "ws://localhost:7880"),
        (ENV_API_KEY, "devkey"),
        (ENV_API_SECRET, "secret"),
        (ENV_AGENT_NAME, "support-bot"),
    ];

    #[test]
    fn reads_every_variable() {
        let options = WorkerOptions::from_lookup(lookup(&FULL)).unwrap();
        assert_eq!(options.url, "ws://localhost:7880");
        assert_eq!(options.credentials.api_key, "devkey");
        assert_eq!(
            options.api_secret().current().unwrap(),
            crate::auth::ApiSecret::new("secret")
        );
        assert_eq!(options.agent_name, "support-bot");
        options.validate().unwrap();
    }

    #[test]
    fn the_agent_name_is_optional() {
        let options = WorkerOptions::from_lookup(lookup(&FULL[..3])).unwrap();
        assert_eq!(options.agent_name, "");
    }

    #[test]
    fn a_missing_variable_is_named() {
        for missing in [ENV_URL, ENV_API_KEY, ENV_API_SECRET] {
            let vars: Vec<_> = FULL
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            assert_eq!(
                WorkerOptions::from_lookup(lookup(&vars)).unwrap_err(),
                OptionsError::Missing { name: missing }
            );
            let blank: Vec<_> = FULL
                .iter()
                .map(|&(k, v)| if k == missing { (k, "  ") } else { (k, v) })
                .collect();
            assert_eq!(
                WorkerOptions::from_lookup(lookup(&blank)).unwrap_err(),
                OptionsError::Missing { name: missing }
            );
        }
    }

    #[test]
    fn a_malformed_url_is_named() {
        let mut vars = FULL.to_vec();
        vars[0] = (ENV_URL, "ftp://example.com");
        let err = WorkerOptions::from_lookup(lookup(&vars)).unwrap_err();
        assert!(
            matches!(err, OptionsError::Invalid { name: ENV_URL, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("LIVEKIT_URL"));
    }

    #[test]
    fn validate_checks_labels_and_the_budget_share() {
        let base = WorkerOptions::new("ws://h", "k", "s");
        base.clone()
            .label("region", "eu-west")
            .accept_below(0.5)
            .validate()
            .unwrap();
        for bad in ["worker", "agent_name", "1st", "__x", "a-b", ""] {
            let err = base.clone().label(bad, "v").validate().unwrap_err();
            assert!(
                matches!(err, OptionsError::Invalid { name: "labels", .. }),
                "{bad}: {err}"
            );
        }
        let mut nan_cpu = base.clone();
        nan_cpu.resource_limits.max_cpu_percent = f32::NAN;
        assert!(matches!(
            nan_cpu.validate().unwrap_err(),
            OptionsError::Invalid {
                name: "resource_limits",
                ..
            }
        ));
        let long = "x".repeat(MAX_LABEL_VALUE + 1);
        assert!(base.clone().label("zone", long).validate().is_err());
        for bad in [0.0, 1.5, f32::NAN] {
            let err = base.clone().accept_below(bad).validate().unwrap_err();
            assert!(matches!(
                err,
                OptionsError::Invalid {
                    name: "accept_below",
                    ..
                }
            ));
        }
    }

    #[test]
    fn validate_rejects_unusable_limits() {
        let base = WorkerOptions::new("ws://h", "k", "s");
        base.validate().unwrap();
        let err = base.clone().max_jobs(0).validate().unwrap_err();
        assert!(matches!(
            err,
            OptionsError::Invalid {
                name: "max_jobs",
                ..
            }
        ));
        let err = base
            .clone()
            .keepalive(Duration::from_secs(5), Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert!(matches!(
            err,
            OptionsError::Invalid {
                name: "ping_timeout",
                ..
            }
        ));
        let err = WorkerOptions::new("ws://h", "k", "")
            .validate()
            .unwrap_err();
        assert_eq!(err, OptionsError::Missing { name: "api_secret" });
    }

    #[test]
    fn the_secret_may_come_from_a_file_but_not_from_both() {
        let mut vars = FULL.to_vec();
        vars.retain(|(k, _)| *k != ENV_API_SECRET);
        vars.push((ENV_API_SECRET_FILE, "/run/secrets/livekit"));
        let options = WorkerOptions::from_lookup(lookup(&vars)).unwrap();
        assert!(matches!(
            options.api_secret(),
            SecretSource::File(path) if path.as_os_str() == "/run/secrets/livekit"
        ));
        options.validate().unwrap();
        vars.push((ENV_API_SECRET, "secret"));
        let err = WorkerOptions::from_lookup(lookup(&vars)).unwrap_err();
        assert!(
            matches!(
                err,
                OptionsError::Invalid {
                    name: ENV_API_SECRET_FILE,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let options = WorkerOptions::new("ws://h", "devkey", "hunter2-very-secret");
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
