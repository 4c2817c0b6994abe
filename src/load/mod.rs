//! What the worker tells the server about how busy it is.
//!
//! The server sends jobs in proportion to `1 - load` and skips a worker that
//! reports FULL, so these numbers steer the whole fleet. For now the load is
//! the share of job slots in use; pluggable calculators (CPU, memory,
//! predictive) come with the load reporter.

use livekit_protocol::WorkerStatus;

/// The worker's slots at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slots {
    /// Jobs running now.
    pub active: usize,
    /// Slots promised to jobs that were accepted (or are being decided on)
    /// but have not been assigned yet.
    pub reserved: usize,
    /// The most jobs the worker runs at once.
    pub max: usize,
}

/// One `update_worker` report, before its sequence number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadReport {
    /// AVAILABLE or FULL.
    pub status: WorkerStatus,
    /// 0.0 (idle) to 1.0 (every slot running).
    pub load: f32,
    /// Jobs running now.
    pub job_count: u32,
}

impl Slots {
    /// True when no further job can be accepted: every slot is running or
    /// reserved. Reservations count, so that a burst of requests between two
    /// reports cannot be accepted beyond capacity.
    pub fn is_full(&self) -> bool {
        self.active + self.reserved >= self.max
    }

    /// The report for these slots: load is running jobs over the maximum, and
    /// the status is FULL as soon as the slots are taken.
    pub fn report(&self) -> LoadReport {
        let load = if self.max == 0 {
            1.0
        } else {
            (self.active as f32 / self.max as f32).min(1.0)
        };
        LoadReport {
            status: if self.is_full() {
                WorkerStatus::WsFull
            } else {
                WorkerStatus::WsAvailable
            },
            load,
            job_count: u32::try_from(self.active).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_running_jobs_over_capacity() {
        let report = Slots {
            active: 3,
            reserved: 0,
            max: 4,
        }
        .report();
        assert_eq!(report.load, 0.75);
        assert_eq!(report.job_count, 3);
        assert_eq!(report.status, WorkerStatus::WsAvailable);
    }

    #[test]
    fn reserved_slots_make_the_worker_full() {
        let slots = Slots {
            active: 3,
            reserved: 1,
            max: 4,
        };
        assert!(slots.is_full());
        assert_eq!(slots.report().status, WorkerStatus::WsFull);
        assert_eq!(slots.report().load, 0.75);
    }

    #[test]
    fn no_capacity_is_full() {
        let report = Slots {
            active: 0,
            reserved: 0,
            max: 0,
        }
        .report();
        assert_eq!(report.status, WorkerStatus::WsFull);
        assert_eq!(report.load, 1.0);
    }
}
