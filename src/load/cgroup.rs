//! The CPU and memory a container may use, read from its cgroup.
//!
//! A worker in a container with 2 CPUs on a 64-core host that measures CPU
//! against 64 cores reports 3% load while it is saturated — the official
//! workers' most common mis-report. The limits come from cgroup v2
//! (`cpu.max`, `memory.max`) or, where only v1 is mounted,
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us` and `memory.limit_in_bytes`.
//! Parsing is pure and tested on fixture files; [`ContainerLimits::detect`]
//! does the reading.

use std::path::{Path, PathBuf};

/// Where cgroup file systems are mounted.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v1 writes "no limit" as a huge number (a page-rounded `i64::MAX`); any
/// memory limit above this is taken as none.
const V1_UNLIMITED_MEMORY: u64 = 1 << 60;

/// What the cgroup allows; `None` where it sets no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ContainerLimits {
    /// CPU quota in cores (1.5 = one and a half cores).
    pub cpu_cores: Option<f64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
}

/// Parses v2 `cpu.max`: `"<quota> <period>"` or `"max <period>"`.
pub(crate) fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period: f64 = fields.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then_some(quota / period)
}

/// Parses v2 `memory.max`: bytes or `"max"`.
pub(crate) fn parse_memory_max(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok().filter(|&bytes| bytes > 0)
}

/// Parses v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` (quota -1: none).
pub(crate) fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// Parses v1 `memory.limit_in_bytes` (a huge value: none).
pub(crate) fn parse_v1_memory(text: &str) -> Option<u64> {
    text.trim()
        .parse()
        .ok()
        .filter(|&bytes: &u64| bytes > 0 && bytes < V1_UNLIMITED_MEMORY)
}

/// The process's cgroup paths, from `/proc/self/cgroup`: the v2 path
/// (`0::/path`) and the v1 path of a controller.
struct ProcCgroup<'a> {
    text: &'a str,
}

impl<'a> ProcCgroup<'a> {
    fn v2(&self) -> &'a str {
        self.text
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .unwrap_or("/")
    }

    fn v1(&self, controller: &str) -> &'a str {
        self.text
            .lines()
            .find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then_some(path)
            })
            .unwrap_or("/")
    }
}

/// Reads the first of `candidates` that exists.
fn read_first(candidates: &[PathBuf]) -> Option<String> {
    candidates
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
}

/// The file under `base/cgroup_path`, falling back to `base` itself: inside
/// a container the cgroup is usually mounted at the root of its namespace.
fn candidates(base: &Path, cgroup_path: &str, file: &str) -> Vec<PathBuf> {
    let nested = base.join(cgroup_path.trim_start_matches('/')).join(file);
    let root = base.join(file);
    if nested == root {
        vec![root]
    } else {
        vec![nested, root]
    }
}

impl ContainerLimits {
    /// The limits of this process's cgroup, or none where cgroups are not
    /// mounted (outside Linux, or no limits set).
    pub fn detect() -> Self {
        let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::read(Path::new(CGROUP_ROOT), &proc_cgroup)
    }

    /// The limits under a cgroup mount at `root`, for a process whose
    /// `/proc/self/cgroup` reads `proc_cgroup`. v2 is used where the root
    /// holds `cpu.max` or `memory.max`; v1 otherwise.
    pub fn read(root: &Path, proc_cgroup: &str) -> Self {
        let paths = ProcCgroup { text: proc_cgroup };
        let v2 = paths.v2();
        let cpu_max = read_first(&candidates(root, v2, "cpu.max"));
        let memory_max = read_first(&candidates(root, v2, "memory.max"));
        if cpu_max.is_some() || memory_max.is_some() {
            return Self {
                cpu_cores: cpu_max.as_deref().and_then(parse_cpu_max),
                memory_bytes: memory_max.as_deref().and_then(parse_memory_max),
            };
        }
        let cpu_dir = root.join("cpu");
        let cpu_path = paths.v1("cpu");
        let quota = read_first(&candidates(&cpu_dir, cpu_path, "cpu.cfs_quota_us"));
        let period = read_first(&candidates(&cpu_dir, cpu_path, "cpu.cfs_period_us"));
        let memory = read_first(&candidates(
            &root.join("memory"),
            paths.v1("memory"),
            "memory.limit_in_bytes",
        ));
        Self {
            cpu_cores: quota.zip(period).and_then(|(q, p)| parse_cfs(&q, &p)),
            memory_bytes: memory.as_deref().and_then(parse_v1_memory),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/load/fixtures")
            .join(name)
    }

    #[test]
    fn v2_limits_from_fixture_files() {
        let limits = ContainerLimits::read(&fixture("v2"), "0::/\n");
        assert_eq!(limits.cpu_cores, Some(1.5));
        assert_eq!(limits.memory_bytes, Some(512 << 20));
    }

    #[test]
    fn v2_without_limits() {
        let limits = ContainerLimits::read(&fixture("v2-unlimited"), "0::/\n");
        assert_eq!(limits, ContainerLimits::default());
    }

    #[test]
    fn v1_limits_from_fixture_files() {
        let proc = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n";
        let limits = ContainerLimits::read(&fixture("v1"), proc);
        assert_eq!(limits.cpu_cores, Some(0.5));
        assert_eq!(limits.memory_bytes, Some(1 << 30));
    }

    #[test]
    fn v1_without_limits() {
        let limits = ContainerLimits::read(&fixture("v1-unlimited"), "");
        assert_eq!(limits, ContainerLimits::default());
    }

    #[test]
    fn no_cgroup_mount_means_no_limits() {
        let limits = ContainerLimits::read(&fixture("does-not-exist"), "0::/x\n");
        assert_eq!(limits, ContainerLimits::default());
    }

    #[test]
    fn parsers_reject_junk() {
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("200000 100000"), Some(2.0));
        assert_eq!(parse_cpu_max("50000"), Some(0.5));
        assert_eq!(parse_cpu_max("abc 100"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("0"), None);
        assert_eq!(parse_memory_max("oops"), None);
        assert_eq!(parse_cfs("-1", "100000"), None);
        assert_eq!(parse_cfs("x", "100000"), None);
        assert_eq!(parse_v1_memory("9223372036854771712"), None);
    }

    #[test]
    fn nested_cgroup_paths_are_preferred_over_the_root() {
        let dir = std::env::temp_dir().join(format!("lkagent-cgroup-{}", std::process::id()));
        let nested = dir.join("kubepods/pod1");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(nested.join("memory.max"), "1048576\n").unwrap();
        let limits = ContainerLimits::read(&dir, "0::/kubepods/pod1\n");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(limits.memory_bytes, Some(1 << 20));
    }
}
