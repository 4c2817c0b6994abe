//! Reading this process's CPU and memory, relative to what it may use.
//!
//! `sysinfo` reads the numbers; the container's cgroup limits (see `cgroup`)
//! say what they are relative to. Kept apart from the pure calculators, and
//! cheap enough for a 500 ms timer: one process and the global CPU counters
//! are refreshed, nothing else.

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::cgroup::ContainerLimits;

/// One reading of the machine, already relative to the container's limits.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResourceSample {
    /// This process's CPU over the CPU it may use (0..=1).
    pub process_cpu: f32,
    /// The machine's CPU use (0..=1).
    pub system_cpu: f32,
    /// This process's resident memory, in bytes.
    pub memory_used: u64,
    /// The memory it may use, in bytes.
    pub memory_total: u64,
}

/// Samples CPU and memory; keep one per worker (CPU use is measured between
/// two consecutive samples).
pub struct SystemSampler {
    /// `None` where sysinfo does not support the platform: samples are zero.
    system: Option<System>,
    pid: Option<Pid>,
    cores: f64,
    memory_limit: Option<u64>,
}

impl SystemSampler {
    /// A sampler for this process, with the cgroup limits read once.
    pub fn new() -> Self {
        let limits = ContainerLimits::detect();
        let host_cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cores = limits
            .cpu_cores
            .map_or(host_cores, |quota| quota.min(host_cores));
        Self {
            system: System::new().ok(),
            pid: sysinfo::get_current_pid().ok(),
            cores: cores.max(0.01),
            memory_limit: limits.memory_bytes,
        }
    }

    /// How many cores this process may use (its cgroup quota, else all).
    pub fn cores(&self) -> f64 {
        self.cores
    }

    /// Takes a reading.
    pub fn sample(&mut self) -> ResourceSample {
        let Some(system) = self.system.as_mut() else {
            return ResourceSample::default();
        };
        system.refresh_cpu_usage();
        system.refresh_memory();
        let (mut process_cpu, mut memory_used) = (0.0, 0);
        if let Some(pid) = self.pid {
            system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
            if let Some(process) = system.process(pid) {
                // sysinfo gives percent of one core
                process_cpu = (f64::from(process.cpu_usage()) / 100.0 / self.cores) as f32;
                memory_used = process.memory();
            }
        }
        let host_memory = system.total_memory();
        let memory_total = match self.memory_limit {
            Some(limit) if host_memory > 0 => limit.min(host_memory),
            Some(limit) => limit,
            None => host_memory,
        };
        ResourceSample {
            process_cpu: process_cpu.clamp(0.0, 1.0),
            system_cpu: (system.global_cpu_usage() / 100.0).clamp(0.0, 1.0),
            memory_used,
            memory_total,
        }
    }
}

impl Default for SystemSampler {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_of_this_process_is_plausible() {
        let mut sampler = SystemSampler::new();
        let first = sampler.sample();
        // burn a little CPU so the second reading has something to measure
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let second = sampler.sample();
        for s in [first, second] {
            assert!(s.memory_used > 0, "{s:?}");
            assert!(s.memory_total >= s.memory_used, "{s:?}");
            assert!((0.0..=1.0).contains(&s.process_cpu), "{s:?}");
            assert!((0.0..=1.0).contains(&s.system_cpu), "{s:?}");
        }
        assert!(sampler.cores() > 0.0);
    }
}
