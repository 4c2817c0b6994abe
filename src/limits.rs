//! Resource limits: a budget that jobs reserve from, and checks of the
//! process's real memory and open files.
//!
//! Two different questions, answered separately:
//!
//! - **Can this job fit?** A handler declares what a job expects to use
//!   ([`ResourceRequest`]); the worker [`reserve`](ResourceLimiter::reserve)s
//!   it from the budget ([`ResourceLimits`]) before saying `available: true`,
//!   and the [`Reservation`] gives the share back when it is dropped — when
//!   the job ends, however it ends. Declared, not measured: a budget that
//!   waited for a job to actually grow would admit ten jobs into the room
//!   for one.
//! - **Is the process in trouble now?** [`ResourceLimiter::check_memory`]
//!   compares the process's resident memory with the memory limit (and the
//!   container's, which the OOM killer enforces),
//!   [`ResourceLimiter::check_open_files`] the descriptors open with
//!   `RLIMIT_NOFILE`. Above a soft limit ([`PRESSURE_PERCENT`]) the answer is
//!   [`UsageState::Pressure`]: stop admitting, tell running jobs to shed.
//!
//! Readings are Linux-first (`/proc/self/status`, `/proc/self/fd`); where
//! they cannot be made the answer is [`UsageState::Unknown`], never a guess.
//! The decisions are pure functions of the readings ([`usage_state`]) and are
//! tested on numbers.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::load::cgroup::ContainerLimits;

/// The soft limit, in percent of a limit: from here on the state is
/// [`UsageState::Pressure`]. 90% leaves the last tenth to finish the jobs
/// that are running — a job's memory grows while it runs — before the hard
/// limit (or the OOM killer) is reached.
pub const PRESSURE_PERCENT: u64 = 90;

/// Bytes in a MiB: the limits are in MiB ("mb"), the readings in bytes.
const MIB: u64 = 1 << 20;

/// CPU is counted in thousandths of a percent inside the budget, so that
/// reserving and releasing fractional percents adds up exactly (no float
/// drift leaving a budget slightly "used" after every job ended).
const CPU_UNITS_PER_PERCENT: f32 = 1000.0;

/// What the worker may use. `0` means *no limit* for every field (as for
/// `max_jobs` elsewhere), so `ResourceLimits::default()` limits nothing and
/// `ResourceLimits { max_memory_mb: 2048, ..Default::default() }` limits
/// memory only.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResourceLimits {
    /// Memory, in MiB: the budget jobs reserve from, and the hard limit for
    /// [`ResourceLimiter::check_memory`] (the container's limit applies too).
    pub max_memory_mb: u64,
    /// CPU, in percent of one core as `top` shows it (400: four cores). A
    /// budget for reservations only: the measured CPU is the load
    /// calculator's business.
    pub max_cpu_percent: f32,
    /// Jobs holding a reservation at once. The worker's `max_jobs` slots are
    /// counted apart; this one caps jobs by what they declared.
    pub max_jobs: usize,
    /// Open file descriptors, for [`ResourceLimiter::check_open_files`]; the
    /// process's `RLIMIT_NOFILE` applies too. The worker checks them with
    /// its memory, and admits no new job at or above 90 % of the smaller.
    pub max_open_files: u64,
}

impl ResourceLimits {
    /// The memory limit in force, in bytes: the smaller of `max_memory_mb`
    /// and the container's limit; `None` when neither is set.
    pub fn memory_limit_bytes(&self, container_bytes: Option<u64>) -> Option<u64> {
        smaller(
            nonzero(self.max_memory_mb).map(|mb| mb.saturating_mul(MIB)),
            container_bytes,
        )
    }

    /// The open-file limit in force: the smaller of `max_open_files` and the
    /// process's `RLIMIT_NOFILE` soft limit; `None` when neither is set.
    pub fn open_files_limit(&self, rlimit_nofile: Option<u64>) -> Option<u64> {
        smaller(nonzero(self.max_open_files), rlimit_nofile)
    }

    /// Checks the bounds; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.max_cpu_percent.is_finite() && self.max_cpu_percent >= 0.0) {
            return Err("max_cpu_percent must be 0 (no limit) or a positive number".into());
        }
        Ok(())
    }
}

fn nonzero(value: u64) -> Option<u64> {
    (value != 0).then_some(value)
}

fn smaller(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What one job expects to use, declared by its handler. Serde fields are
/// the struct's; a missing one takes its default.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ResourceRequest {
    /// Memory, in MiB.
    pub memory_mb: u64,
    /// CPU, in percent of one core.
    pub cpu_percent: f32,
    /// Job slots, usually 1.
    pub jobs: usize,
}

impl Default for ResourceRequest {
    /// One job, declaring no memory or CPU: what a handler that declares
    /// nothing reserves, so that `max_jobs` still counts it.
    fn default() -> Self {
        Self {
            memory_mb: 0,
            cpu_percent: 0.0,
            jobs: 1,
        }
    }
}

/// A request that does not fit the budget now. Each variant says how much
/// is free, so the log tells whether the job could ever fit.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum LimitError {
    /// Not enough of `max_memory_mb` is free.
    #[error(
        "{requested_mb} MiB of memory requested, {available_mb} MiB free: wait for jobs to end, or raise max_memory_mb"
    )]
    Memory {
        /// What the job asked for.
        requested_mb: u64,
        /// What is free now.
        available_mb: u64,
    },
    /// Not enough of `max_cpu_percent` is free.
    #[error(
        "{requested_percent}% CPU requested, {available_percent}% free: wait for jobs to end, or raise max_cpu_percent"
    )]
    Cpu {
        /// What the job asked for.
        requested_percent: f32,
        /// What is free now.
        available_percent: f32,
    },
    /// Not enough of `max_jobs` is free.
    #[error(
        "{requested} job slots requested, {available} free: wait for jobs to end, or raise max_jobs"
    )]
    Jobs {
        /// What the job asked for.
        requested: usize,
        /// What is free now.
        available: usize,
    },
}

/// What is free in the budget now; `None` for a resource without a limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AvailableResources {
    /// Free memory, in MiB.
    pub memory_mb: Option<u64>,
    /// Free CPU, in percent of one core.
    pub cpu_percent: Option<f32>,
    /// Free job slots.
    pub jobs: Option<usize>,
}

/// How close a measured resource is to its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageState {
    /// Below the soft limit, or no limit set.
    Ok,
    /// At or above the soft limit ([`PRESSURE_PERCENT`] of the limit): stop
    /// admitting jobs, ask running ones to shed.
    Pressure,
    /// At or above the limit.
    Exceeded,
    /// A limit is set but the usage cannot be read on this platform.
    Unknown,
}

/// The state of a resource using `used` of `limit` (`None`: no limit, or
/// unreadable). Pure: the checks read the numbers, this decides.
pub fn usage_state(used: Option<u64>, limit: Option<u64>) -> UsageState {
    let Some(limit) = limit else {
        return UsageState::Ok;
    };
    let Some(used) = used else {
        return UsageState::Unknown;
    };
    if used >= limit {
        UsageState::Exceeded
    } else if u128::from(used) * 100 >= u128::from(limit) * u128::from(PRESSURE_PERCENT) {
        UsageState::Pressure
    } else {
        UsageState::Ok
    }
}

/// A share of the budget, in the budget's exact units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Share {
    memory_mb: u64,
    cpu_units: u64,
    jobs: usize,
}

impl Share {
    fn of(request: &ResourceRequest) -> Self {
        Self {
            memory_mb: request.memory_mb,
            cpu_units: cpu_units(request.cpu_percent),
            jobs: request.jobs,
        }
    }
}

/// Percent to budget units, rounded up so a reservation never takes less
/// than it asked; negative or NaN is nothing.
fn cpu_units(percent: f32) -> u64 {
    if percent.is_nan() || percent <= 0.0 {
        0
    } else {
        (percent * CPU_UNITS_PER_PERCENT).ceil() as u64
    }
}

fn cpu_percent(units: u64) -> f32 {
    units as f32 / CPU_UNITS_PER_PERCENT
}

/// The limits and what reservations hold of them.
#[derive(Debug)]
struct Budget {
    limits: ResourceLimits,
    used: Share,
}

impl Budget {
    /// Free memory, CPU units and jobs; `None` where unlimited.
    fn free(&self) -> (Option<u64>, Option<u64>, Option<usize>) {
        let limits = &self.limits;
        (
            nonzero(limits.max_memory_mb).map(|max| max.saturating_sub(self.used.memory_mb)),
            nonzero(cpu_units(limits.max_cpu_percent))
                .map(|max| max.saturating_sub(self.used.cpu_units)),
            (limits.max_jobs != 0).then(|| limits.max_jobs.saturating_sub(self.used.jobs)),
        )
    }

    /// The largest share of a limited resource in use, `0.0..=1.0`; `0.0`
    /// when nothing is limited.
    fn used_share(&self) -> f32 {
        let limits = &self.limits;
        let share = |used: f64, max: f64| if max > 0.0 { (used / max) as f32 } else { 0.0 };
        share(self.used.memory_mb as f64, limits.max_memory_mb as f64)
            .max(share(
                self.used.cpu_units as f64,
                cpu_units(limits.max_cpu_percent) as f64,
            ))
            .max(share(self.used.jobs as f64, limits.max_jobs as f64))
            .min(1.0)
    }

    fn take(&mut self, request: &ResourceRequest) -> Result<Share, LimitError> {
        let share = Share::of(request);
        let (memory, cpu, jobs) = self.free();
        if let Some(free) = memory.filter(|&free| share.memory_mb > free) {
            return Err(LimitError::Memory {
                requested_mb: share.memory_mb,
                available_mb: free,
            });
        }
        if let Some(free) = cpu.filter(|&free| share.cpu_units > free) {
            return Err(LimitError::Cpu {
                requested_percent: request.cpu_percent,
                available_percent: cpu_percent(free),
            });
        }
        if let Some(free) = jobs.filter(|&free| share.jobs > free) {
            return Err(LimitError::Jobs {
                requested: share.jobs,
                available: free,
            });
        }
        // saturating: requests are the handler's numbers, and an overflow
        // here would panic in the worker's own code
        self.used.memory_mb = self.used.memory_mb.saturating_add(share.memory_mb);
        self.used.cpu_units = self.used.cpu_units.saturating_add(share.cpu_units);
        self.used.jobs = self.used.jobs.saturating_add(share.jobs);
        Ok(share)
    }

    fn give_back(&mut self, share: Share) {
        self.used.memory_mb = self.used.memory_mb.saturating_sub(share.memory_mb);
        self.used.cpu_units = self.used.cpu_units.saturating_sub(share.cpu_units);
        self.used.jobs = self.used.jobs.saturating_sub(share.jobs);
    }
}

/// The worker's resource budget: jobs [`reserve`](Self::reserve) from it and
/// give back on drop; plus the real memory and open-file checks.
///
/// Clones share one budget. It is the one place in lkagent where state sits
/// behind `Arc<Mutex<_>>`, on purpose: a [`Reservation`] lives with its job
/// on whichever arbiter runs it, and must give its share back the moment it
/// is dropped — when the job ends, is cancelled, or unwinds from a panic —
/// synchronously, so that the very next availability answer sees the freed
/// budget. A message could be lost with a stopping actor or arrive after
/// that answer. The lock guards a few additions, never an await or I/O, and
/// a poisoned lock is recovered (the numbers stay consistent: every update
/// is a handful of plain stores).
#[derive(Clone, Debug)]
pub struct ResourceLimiter {
    budget: Arc<Mutex<Budget>>,
}

impl Default for ResourceLimiter {
    /// No limits.
    fn default() -> Self {
        Self::new(ResourceLimits::default())
    }
}

impl ResourceLimiter {
    /// A budget of `limits`, nothing reserved.
    pub fn new(limits: ResourceLimits) -> Self {
        Self {
            budget: Arc::new(Mutex::new(Budget {
                limits,
                used: Share::default(),
            })),
        }
    }

    fn budget(&self) -> MutexGuard<'_, Budget> {
        lock(&self.budget)
    }

    /// The limits.
    pub fn limits(&self) -> ResourceLimits {
        self.budget().limits
    }

    /// Takes `request` out of the budget, or says which resource is short
    /// and how much of it is free. Either all of it is reserved or nothing.
    pub fn reserve(&self, request: ResourceRequest) -> Result<Reservation, LimitError> {
        let share = self.budget().take(&request)?;
        Ok(Reservation {
            budget: Arc::clone(&self.budget),
            share,
            request,
        })
    }

    /// What is free now.
    pub fn available(&self) -> AvailableResources {
        let (memory_mb, cpu, jobs) = self.budget().free();
        AvailableResources {
            memory_mb,
            cpu_percent: cpu.map(cpu_percent),
            jobs,
        }
    }

    /// How full the budget is: the largest share of any limited resource
    /// (memory, CPU, jobs) the live reservations hold, `0.0..=1.0`; `0.0`
    /// when nothing is limited. Workers sharing one limiter (a
    /// `WorkerPool`) report at least this load, so a job started by one
    /// leaves visibly less room for the others.
    pub fn used_share(&self) -> f32 {
        self.budget().used_share()
    }

    /// What the live reservations hold, in all.
    pub fn in_use(&self) -> ResourceRequest {
        let used = self.budget().used;
        ResourceRequest {
            memory_mb: used.memory_mb,
            cpu_percent: cpu_percent(used.cpu_units),
            jobs: used.jobs,
        }
    }

    /// The process's resident memory against the memory limit in force
    /// ([`ResourceLimits::memory_limit_bytes`]: the configured one or the
    /// container's, whichever is smaller). Reads `/proc`: call it from a
    /// timer, not per message.
    pub fn check_memory(&self) -> UsageState {
        let limit = self.limits().memory_limit_bytes(container_memory_bytes());
        usage_state(resident_memory_bytes(), limit)
    }

    /// The descriptors this process has open against the open-file limit in
    /// force ([`ResourceLimits::open_files_limit`]: the configured one or
    /// `RLIMIT_NOFILE`, whichever is smaller). Reads `/proc`: call it from a
    /// timer, not per message.
    pub fn check_open_files(&self) -> UsageState {
        let limit = self.limits().open_files_limit(nofile_soft_limit());
        usage_state(open_file_count(), limit)
    }
}

/// Locks the budget, recovering from poisoning: a panic while it was held
/// cannot have left it half-updated in a way that matters (see
/// [`ResourceLimiter`]), and a reservation dropped during that same unwind
/// must still be able to give back.
fn lock(budget: &Mutex<Budget>) -> MutexGuard<'_, Budget> {
    budget
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A share of the budget held by one job; given back when dropped, also
/// during a panic's unwind. Keep it with the job, drop it when the job ends.
#[derive(Debug)]
#[must_use = "the reservation is given back as soon as it is dropped"]
pub struct Reservation {
    budget: Arc<Mutex<Budget>>,
    share: Share,
    request: ResourceRequest,
}

impl Reservation {
    /// What was reserved.
    pub fn request(&self) -> ResourceRequest {
        self.request
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.budget).give_back(self.share);
    }
}

/// This process's resident set size in bytes (`VmRSS` in
/// `/proc/self/status`); `None` where it cannot be read.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

/// `VmRSS:    12345 kB` → bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    let mut fields = line.split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// The container's memory limit, read once: it is set when the container
/// starts, and the cgroup files are not worth re-reading on every check.
fn container_memory_bytes() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| ContainerLimits::detect().memory_bytes)
}

/// Descriptors open in this process: the entries of `/proc/self/fd`, less
/// the one the listing itself holds open. `None` where it cannot be read.
fn open_file_count() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    let count = entries.filter(|entry| entry.is_ok()).count() as u64;
    Some(count.saturating_sub(1))
}

/// The soft `RLIMIT_NOFILE`: what `open` fails beyond. `None` when unlimited
/// or not a Unix.
#[cfg(unix)]
fn nofile_soft_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which is valid and
    // exclusively borrowed for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    #[allow(
        clippy::useless_conversion,
        reason = "rlim_t is u32 on some 32-bit Unixes"
    )]
    u64::try_from(limit.rlim_cur).ok()
}

#[cfg(not(unix))]
fn nofile_soft_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;

    fn limiter(memory_mb: u64, cpu: f32, jobs: usize) -> ResourceLimiter {
        ResourceLimiter::new(ResourceLimits {
            max_memory_mb: memory_mb,
            max_cpu_percent: cpu,
            max_jobs: jobs,
            ..ResourceLimits::default()
        })
    }

    fn request(memory_mb: u64, cpu_percent: f32) -> ResourceRequest {
        ResourceRequest {
            memory_mb,
            cpu_percent,
            jobs: 1,
        }
    }

    #[test]
    fn no_limits_reserve_anything() {
        let limiter = ResourceLimiter::default();
        let _big = limiter.reserve(request(u64::MAX / 2, 1e6)).unwrap();
        let _more = limiter.reserve(request(u64::MAX / 2, 1e6)).unwrap();
        let free = limiter.available();
        assert_eq!(free.memory_mb, None);
        assert_eq!(free.cpu_percent, None);
        assert_eq!(free.jobs, None);
        assert_eq!(limiter.in_use().jobs, 2);
    }

    #[test]
    fn the_used_share_is_the_fullest_limited_resource() {
        assert_eq!(ResourceLimiter::default().used_share(), 0.0);
        let limiter = limiter(1000, 0.0, 4);
        let a = limiter.reserve(request(100, 50.0)).unwrap();
        // 1 of 4 jobs beats 100 of 1000 MiB; CPU is unlimited
        assert_eq!(limiter.used_share(), 0.25);
        let b = limiter.reserve(request(800, 0.0)).unwrap();
        assert_eq!(limiter.used_share(), 0.9);
        drop((a, b));
        assert_eq!(limiter.used_share(), 0.0);
    }

    #[test]
    fn huge_requests_without_limits_saturate_rather_than_overflow() {
        let limiter = ResourceLimiter::default();
        let huge = ResourceRequest {
            memory_mb: u64::MAX,
            cpu_percent: f32::MAX,
            jobs: usize::MAX,
        };
        let a = limiter.reserve(huge).unwrap();
        let b = limiter.reserve(huge).unwrap();
        assert_eq!(limiter.in_use().jobs, usize::MAX);
        drop((a, b));
        assert_eq!(limiter.in_use().jobs, 0);
    }

    #[test]
    fn refuses_past_the_budget_and_says_what_is_free() {
        let limiter = limiter(1024, 0.0, 0);
        let first = limiter.reserve(request(768, 0.0)).unwrap();
        assert_eq!(limiter.available().memory_mb, Some(256));
        let err = limiter.reserve(request(512, 0.0)).unwrap_err();
        assert_eq!(
            err,
            LimitError::Memory {
                requested_mb: 512,
                available_mb: 256
            }
        );
        assert!(err.to_string().contains("256 MiB free"));
        // a refusal takes nothing
        assert_eq!(limiter.in_use().memory_mb, 768);
        let second = limiter.reserve(request(256, 0.0)).unwrap();
        assert_eq!(limiter.available().memory_mb, Some(0));
        drop((first, second));
        assert_eq!(limiter.available().memory_mb, Some(1024));
    }

    #[test]
    fn each_resource_is_checked() {
        let limiter = limiter(0, 150.0, 2);
        let a = limiter.reserve(request(10_000, 100.0)).unwrap();
        assert_eq!(
            limiter.reserve(request(0, 60.0)).unwrap_err(),
            LimitError::Cpu {
                requested_percent: 60.0,
                available_percent: 50.0
            }
        );
        let b = limiter.reserve(request(0, 50.0)).unwrap();
        assert_eq!(
            limiter.reserve(request(0, 0.0)).unwrap_err(),
            LimitError::Jobs {
                requested: 1,
                available: 0
            }
        );
        drop(a);
        assert_eq!(limiter.available().jobs, Some(1));
        assert_eq!(limiter.available().cpu_percent, Some(100.0));
        drop(b);
        assert_eq!(
            limiter.in_use(),
            ResourceRequest {
                jobs: 0,
                ..ResourceRequest::default()
            }
        );
    }

    #[test]
    fn fractional_cpu_adds_up_exactly() {
        let limiter = limiter(0, 100.0, 0);
        let thirds: Vec<_> = (0..2)
            .map(|_| limiter.reserve(request(0, 100.0 / 3.0)).unwrap())
            .collect();
        drop(thirds);
        assert_eq!(limiter.available().cpu_percent, Some(100.0));
        assert_eq!(limiter.in_use().cpu_percent, 0.0);
    }

    #[test]
    fn a_reservation_is_released_when_its_job_panics() {
        let limiter = limiter(100, 0.0, 1);
        let shared = limiter.clone();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let _held = shared.reserve(request(100, 0.0)).unwrap();
            assert_eq!(shared.available().memory_mb, Some(0));
            panic!("the handler crashed");
        }));
        assert!(result.is_err());
        assert_eq!(limiter.available().memory_mb, Some(100));
        assert_eq!(limiter.available().jobs, Some(1));
    }

    #[test]
    fn a_poisoned_budget_still_releases_and_reserves() {
        let limiter = limiter(100, 0.0, 0);
        let held = limiter.reserve(request(60, 0.0)).unwrap();
        let budget = Arc::clone(&limiter.budget);
        // poison the lock: a panic while it is held
        let _ = std::thread::spawn(move || {
            let _guard = budget.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(limiter.budget.is_poisoned());
        drop(held);
        assert_eq!(limiter.available().memory_mb, Some(100));
        let _again = limiter.reserve(request(100, 0.0)).unwrap();
    }

    #[test]
    fn a_reservation_is_released_from_another_thread() {
        let limiter = limiter(0, 0.0, 1);
        let held = limiter.reserve(ResourceRequest::default()).unwrap();
        assert_eq!(held.request().jobs, 1);
        assert!(limiter.reserve(ResourceRequest::default()).is_err());
        std::thread::spawn(move || drop(held)).join().unwrap();
        assert!(limiter.reserve(ResourceRequest::default()).is_ok());
    }

    #[test]
    fn usage_states_around_the_soft_and_hard_limits() {
        assert_eq!(usage_state(Some(10), None), UsageState::Ok);
        assert_eq!(usage_state(None, None), UsageState::Ok);
        assert_eq!(usage_state(None, Some(100)), UsageState::Unknown);
        assert_eq!(usage_state(Some(89), Some(100)), UsageState::Ok);
        assert_eq!(usage_state(Some(90), Some(100)), UsageState::Pressure);
        assert_eq!(usage_state(Some(99), Some(100)), UsageState::Pressure);
        assert_eq!(usage_state(Some(100), Some(100)), UsageState::Exceeded);
        assert_eq!(
            usage_state(Some(u64::MAX), Some(u64::MAX - 1)),
            UsageState::Exceeded
        );
        assert_eq!(
            usage_state(Some(u64::MAX - 1), Some(u64::MAX)),
            UsageState::Pressure
        );
    }

    #[test]
    fn the_smaller_of_the_configured_and_the_container_limit_applies() {
        let limits = ResourceLimits {
            max_memory_mb: 2048,
            max_open_files: 500,
            ..ResourceLimits::default()
        };
        assert_eq!(limits.memory_limit_bytes(None), Some(2048 * MIB));
        assert_eq!(limits.memory_limit_bytes(Some(MIB)), Some(MIB));
        assert_eq!(
            ResourceLimits::default().memory_limit_bytes(Some(MIB)),
            Some(MIB)
        );
        assert_eq!(ResourceLimits::default().memory_limit_bytes(None), None);
        assert_eq!(limits.open_files_limit(Some(1024)), Some(500));
        assert_eq!(limits.open_files_limit(Some(100)), Some(100));
        assert_eq!(ResourceLimits::default().open_files_limit(None), None);
        // 1.9 GiB resident under a 2 GiB limit: pressure
        let rss = 1946 * MIB;
        assert_eq!(
            usage_state(Some(rss), limits.memory_limit_bytes(None)),
            UsageState::Pressure
        );
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tlkagent\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn validation_rejects_a_bad_cpu_limit() {
        assert!(ResourceLimits::default().validate().is_ok());
        for cpu in [-1.0, f32::NAN, f32::INFINITY] {
            let limits = ResourceLimits {
                max_cpu_percent: cpu,
                ..ResourceLimits::default()
            };
            assert!(limits.validate().is_err());
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_the_real_process_on_linux() {
        let rss = resident_memory_bytes().expect("VmRSS on Linux");
        assert!(rss > 0);
        let open = open_file_count().expect("/proc/self/fd on Linux");
        // stdin/out/err at least, unless the harness closed them
        assert!(open > 0);
        let nofile = nofile_soft_limit();
        if let Some(limit) = nofile {
            assert!(limit >= open);
        }

        // a limit far below the real RSS is exceeded, one far above is fine
        let tight = ResourceLimiter::new(ResourceLimits {
            max_memory_mb: 1,
            ..ResourceLimits::default()
        });
        assert_eq!(tight.check_memory(), UsageState::Exceeded);
        let files = ResourceLimiter::new(ResourceLimits {
            max_open_files: 1,
            ..ResourceLimits::default()
        });
        assert_eq!(files.check_open_files(), UsageState::Exceeded);
        let roomy = ResourceLimiter::new(ResourceLimits {
            max_open_files: 1 << 40,
            ..ResourceLimits::default()
        });
        // RLIMIT_NOFILE still applies, and a test process is far from it
        assert_eq!(roomy.check_open_files(), UsageState::Ok);
    }
}
