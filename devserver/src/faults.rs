//! Fault mode: the dev server as an unreliable network and an impatient
//! server, for soak tests of a worker (`examples/soak.rs` in the lkagent
//! crate).
//!
//! With [`FaultConfig`] set, the dispatcher, on a schedule drawn from the
//! seed, at random moments (on average one per
//! [`interval`](FaultConfig::interval)) either drops one connected worker's
//! socket (no close frame) or terminates one running job; it sends each
//! availability request and assignment a second time with
//! [`duplicate_chance`](FaultConfig::duplicate_chance); and it launches every
//! job with `JRP_ON_FAILURE`, so a failed job is restarted as a new job.
//! Every fault is logged (at `warn`, with the seed and its number) and the
//! seed is logged at start: the same seed replays the same schedule — the
//! same moments, kinds and picks (a pick is an index into the candidates
//! of that moment, so which job it lands on still depends on timing).
//!
//! Fault mode keeps a ledger of every job it assigned — whether a worker
//! acknowledged it (any status or claim), how many terminal statuses
//! workers sent for it, whether it ended on the server — so that a soak can
//! check, at the end, that nothing was lost or reported twice
//! ([`FaultReport`], from `DevServer::fault_report`). The ledger holds one
//! small entry per assigned job for the server's life: fault mode is for
//! bounded runs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

/// The most job ids a [`FaultReport`] lists per finding.
pub const MAX_REPORTED_IDS: usize = 20;

/// Fault mode's settings. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Seeds the schedule and the duplicate coin; logged at start.
    pub seed: u64,
    /// Mean time between faults at random moments (each gap is drawn
    /// uniformly from half to one and a half of it).
    pub interval: Duration,
    /// Chance, in `0.0..=1.0`, that an availability request or an
    /// assignment is sent twice.
    pub duplicate_chance: f64,
}

impl FaultConfig {
    /// Fault mode with `seed`, a fault every 200 ms on average, and one in
    /// twenty availability requests and assignments sent twice.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            interval: Duration::from_millis(200),
            duplicate_chance: 0.05,
        }
    }

    /// Why this configuration cannot run, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("the fault interval must be above zero".into());
        }
        if !(0.0..=1.0).contains(&self.duplicate_chance) {
            return Err(format!(
                "the duplicate chance must be within 0..=1, not {}",
                self.duplicate_chance
            ));
        }
        Ok(())
    }
}

/// A fault at a random moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// Drop one connected worker's socket.
    DropConnection,
    /// Terminate one running job.
    TerminateJob,
}

/// The next fault of the schedule: when (after the previous one), what, and
/// which of the candidates of that moment (an index, taken modulo their
/// number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) after: Duration,
    pub(crate) kind: FaultKind,
    pub(crate) pick: u32,
}

/// What fault mode saw of one assigned job.
#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// A worker sent a status for it or claimed it.
    acknowledged: bool,
    /// Terminal statuses (SUCCESS or FAILED) workers sent for it.
    finals: u32,
    /// The first one: on which connection (the worker's registration
    /// number) and which status.
    first_final: Option<(u64, i32)>,
    /// A terminal status came again on the same connection, or with
    /// another status: a job reported twice.
    repeated: bool,
    /// The same terminal status came again on a later connection: sent
    /// again after a reconnect because the server's confirmation (the pong
    /// after it) was lost with the old connection. The protocol has no
    /// acknowledgement, so a worker that never loses a status must do so;
    /// the server ignores it (the job is gone by then).
    redelivered: bool,
    /// It ended on the server, as far as known when its record was evicted.
    ended: bool,
}

/// The dispatcher's fault state: the schedule, the duplicate coin, the
/// counts and the ledger. Owned by the dispatcher.
pub(crate) struct Faults {
    config: FaultConfig,
    schedule: StdRng,
    /// Drawn from while delivering, which only borrows the dispatcher.
    coin: RefCell<StdRng>,
    counts: FaultCounts,
    duplicates: RefCell<u64>,
    ledger: HashMap<String, Entry>,
}

impl Faults {
    pub(crate) fn new(config: FaultConfig) -> Self {
        Self {
            schedule: StdRng::seed_from_u64(config.seed),
            // a stream of its own, so that how many messages were sent does
            // not shift the schedule
            coin: RefCell::new(StdRng::seed_from_u64(config.seed ^ 0x9e37_79b9_7f4a_7c15)),
            config,
            counts: FaultCounts::default(),
            duplicates: RefCell::new(0),
            ledger: HashMap::new(),
        }
    }

    pub(crate) fn seed(&self) -> u64 {
        self.config.seed
    }

    /// The next fault of the schedule.
    pub(crate) fn next(&mut self) -> Fault {
        let mean = self.config.interval.as_secs_f64();
        let after = Duration::from_secs_f64(self.schedule.random_range(0.5 * mean..1.5 * mean));
        let kind = if self.schedule.random_bool(0.5) {
            FaultKind::DropConnection
        } else {
            FaultKind::TerminateJob
        };
        Fault {
            after,
            kind,
            pick: self.schedule.random(),
        }
    }

    /// Notes that a fault was carried out.
    pub(crate) fn done(&mut self, kind: FaultKind) -> u64 {
        match kind {
            FaultKind::DropConnection => self.counts.dropped_connections += 1,
            FaultKind::TerminateJob => self.counts.terminated_jobs += 1,
        }
        self.counts.dropped_connections + self.counts.terminated_jobs
    }

    /// Whether to send this message a second time (and counts it if so).
    pub(crate) fn duplicate(&self) -> bool {
        let twice = self
            .coin
            .borrow_mut()
            .random_bool(self.config.duplicate_chance);
        if twice {
            *self.duplicates.borrow_mut() += 1;
        }
        twice
    }

    /// An assignment of `job_id` was sent.
    pub(crate) fn assigned(&mut self, job_id: &str) {
        self.ledger.entry(job_id.to_owned()).or_default();
    }

    /// A worker, on the connection numbered `connection`, sent a status
    /// for `job_id` (`terminal`: SUCCESS or FAILED, with `status`) or
    /// claimed it (`status: None`).
    pub(crate) fn heard(&mut self, job_id: &str, connection: u64, terminal: Option<i32>) {
        let Some(entry) = self.ledger.get_mut(job_id) else {
            return;
        };
        entry.acknowledged = true;
        let Some(status) = terminal else {
            return;
        };
        entry.finals += 1;
        match entry.first_final {
            None => entry.first_final = Some((connection, status)),
            Some((first, same)) if first != connection && same == status => {
                entry.redelivered = true
            }
            Some(_) => entry.repeated = true,
        }
    }

    /// The record of `job_id` is being forgotten, `ended` or not.
    pub(crate) fn evicted(&mut self, job_id: &str, ended: bool) {
        if let Some(entry) = self.ledger.get_mut(job_id) {
            entry.ended = ended;
        }
    }

    /// The report, with `ended` telling whether a job whose record is still
    /// kept has ended (`None`: no record, use what eviction noted).
    pub(crate) fn report(&self, ended: impl Fn(&str) -> Option<bool>) -> FaultReport {
        let mut report = FaultReport {
            seed: self.config.seed,
            counts: FaultCounts {
                duplicated_messages: *self.duplicates.borrow(),
                ..self.counts
            },
            ..FaultReport::default()
        };
        let mut ids: Vec<&String> = self.ledger.keys().collect();
        ids.sort(); // a stable report
        for id in ids {
            let entry = self.ledger[id];
            report.assigned += 1;
            report.acknowledged += usize::from(entry.acknowledged);
            report.finals += u64::from(entry.finals);
            report.redelivered_finals += usize::from(entry.redelivered && !entry.repeated);
            if !ended(id).unwrap_or(entry.ended) {
                note(&mut report.unended, &mut report.unended_count, id);
            }
            if entry.repeated {
                note(
                    &mut report.repeated_finals,
                    &mut report.repeated_finals_count,
                    id,
                );
            }
            if entry.acknowledged && entry.finals == 0 {
                note(
                    &mut report.missing_finals,
                    &mut report.missing_finals_count,
                    id,
                );
            }
        }
        report
    }
}

fn note(ids: &mut Vec<String>, count: &mut usize, id: &str) {
    *count += 1;
    if ids.len() < MAX_REPORTED_IDS {
        ids.push(id.to_owned());
    }
}

/// How many faults fault mode made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// Worker sockets dropped.
    pub dropped_connections: u64,
    /// Running jobs terminated.
    pub terminated_jobs: u64,
    /// Availability requests and assignments sent twice.
    pub duplicated_messages: u64,
}

/// What fault mode's ledger says about the jobs it assigned. A sound worker
/// leaves, once it is idle and its statuses are sent, `unended`,
/// `repeated_finals` and `missing_finals` empty. Each list holds at most
/// [`MAX_REPORTED_IDS`] ids; its `_count` says how many there are.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct FaultReport {
    /// The seed that replays this run's schedule.
    pub seed: u64,
    /// The faults made.
    pub counts: FaultCounts,
    /// Jobs assigned (restarts are jobs of their own).
    pub assigned: usize,
    /// Assigned jobs a worker sent a status for or claimed.
    pub acknowledged: usize,
    /// Terminal statuses workers sent for assigned jobs, in all.
    pub finals: u64,
    /// Assigned jobs not ended on the server.
    pub unended: Vec<String>,
    /// How many jobs `unended` stands for.
    pub unended_count: usize,
    /// Jobs reported twice: a second terminal status on the same
    /// connection, or a different one.
    pub repeated_finals: Vec<String>,
    /// How many jobs `repeated_finals` stands for.
    pub repeated_finals_count: usize,
    /// Acknowledged jobs without a terminal status from any worker.
    pub missing_finals: Vec<String>,
    /// How many jobs `missing_finals` stands for.
    pub missing_finals_count: usize,
    /// Jobs whose same terminal status came again on a later connection:
    /// re-sent after a reconnect because the confirmation of the first was
    /// lost with the old connection (the protocol has no acknowledgement;
    /// the server ignores the repeat). Not a fault of the worker's, but
    /// counted: it should be rare.
    pub redelivered_finals: usize,
}

impl FaultReport {
    /// Whether every assigned job ended, and every acknowledged one with
    /// exactly one terminal status from its worker.
    pub fn is_clean(&self) -> bool {
        self.unended_count == 0 && self.repeated_finals_count == 0 && self.missing_finals_count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_schedule() {
        let schedule = |seed| {
            let mut faults = Faults::new(FaultConfig::new(seed));
            (0..50).map(|_| faults.next()).collect::<Vec<_>>()
        };
        assert_eq!(schedule(7), schedule(7));
        assert_ne!(schedule(7), schedule(8));
        let faults = schedule(7);
        assert!(faults.iter().any(|f| f.kind == FaultKind::DropConnection));
        assert!(faults.iter().any(|f| f.kind == FaultKind::TerminateJob));
        let mean = FaultConfig::new(7).interval;
        assert!(
            faults
                .iter()
                .all(|f| f.after >= mean / 2 && f.after <= mean * 3 / 2)
        );
    }

    #[test]
    fn the_ledger_finds_lost_repeated_and_missing_finals() {
        let mut faults = Faults::new(FaultConfig::new(1));
        for id in ["AJ_ok", "AJ_twice", "AJ_silent", "AJ_unended", "AJ_evicted"] {
            faults.assigned(id);
        }
        const SUCCESS: Option<i32> = Some(1);
        const FAILED: Option<i32> = Some(2);
        faults.heard("AJ_ok", 1, None);
        faults.heard("AJ_ok", 1, SUCCESS);
        faults.heard("AJ_twice", 1, SUCCESS);
        faults.heard("AJ_twice", 1, SUCCESS);
        faults.heard("AJ_silent", 1, None);
        faults.heard("AJ_evicted", 1, SUCCESS);
        faults.evicted("AJ_evicted", true);
        faults.heard("AJ_unknown", 1, SUCCESS); // never assigned: not counted
        // the same final again after a reconnect: a redelivery
        faults.assigned("AJ_again");
        faults.heard("AJ_again", 1, FAILED);
        faults.heard("AJ_again", 2, FAILED);
        // another final after a reconnect: reported twice
        faults.assigned("AJ_changed");
        faults.heard("AJ_changed", 1, SUCCESS);
        faults.heard("AJ_changed", 2, FAILED);
        let report = faults.report(|id| match id {
            "AJ_unended" => Some(false),
            "AJ_evicted" => None,
            _ => Some(true),
        });
        assert_eq!(report.assigned, 7);
        assert_eq!(report.acknowledged, 6);
        assert_eq!(report.finals, 8);
        assert_eq!(report.unended, ["AJ_unended"]);
        assert_eq!(report.repeated_finals, ["AJ_changed", "AJ_twice"]);
        assert_eq!(report.redelivered_finals, 1);
        assert_eq!(report.missing_finals, ["AJ_silent"]);
        assert!(!report.is_clean());
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut config = FaultConfig::new(1);
        assert!(config.validate().is_ok());
        config.duplicate_chance = 1.5;
        assert!(config.validate().unwrap_err().contains("1.5"));
        config.duplicate_chance = 0.1;
        config.interval = Duration::ZERO;
        assert!(config.validate().is_err());
    }
}
