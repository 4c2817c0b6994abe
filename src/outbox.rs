//! Job statuses waiting for a connection.
//!
//! While the worker is disconnected its jobs go on, start and end; their
//! `update_job` messages wait here, in order, and are sent after the next
//! registration. The outbox is bounded without losing what matters: a job's
//! terminal status supersedes its own queued RUNNING (the server only needs
//! the end), so each job holds at most one entry, and the number of jobs is
//! itself bounded by the worker's capacity. Past the hard capacity the oldest
//! RUNNING entry goes first; a terminal status is dropped only if the outbox
//! holds nothing else, and the caller is told so it can log it loudly.
//! Worker load is not queued here: the latest load is recomputed after the
//! reconnect instead.

use std::collections::VecDeque;

use livekit_protocol::{JobStatus, UpdateJobStatus};

/// What a push had to give up to stay within capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evicted {
    /// Nothing: the common case.
    None,
    /// A queued RUNNING status of this job was dropped to make room.
    Running(String),
    /// A queued terminal status of this job was dropped: the outbox was full
    /// of terminal statuses. The caller should log this as an error.
    Terminal(String),
}

/// An ordered, bounded queue of job statuses.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<UpdateJobStatus>,
    capacity: usize,
}

/// True for SUCCESS and FAILED: the statuses that end a job on the server.
pub fn is_terminal(status: i32) -> bool {
    status == JobStatus::JsSuccess as i32 || status == JobStatus::JsFailed as i32
}

impl Outbox {
    /// An outbox holding at most `capacity` statuses (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a status behind the others.
    pub fn push(&mut self, update: UpdateJobStatus) -> Evicted {
        if is_terminal(update.status) {
            // the end of a job makes its queued progress irrelevant
            self.queue
                .retain(|queued| queued.job_id != update.job_id || is_terminal(queued.status));
        }
        let evicted = if self.queue.len() >= self.capacity {
            self.evict_one()
        } else {
            Evicted::None
        };
        self.queue.push_back(update);
        evicted
    }

    /// Puts statuses that could not be delivered back at the front, in their
    /// order, ahead of anything queued since. A RUNNING status whose job has
    /// since queued its end is dropped as superseded.
    pub fn requeue(&mut self, updates: Vec<UpdateJobStatus>) -> Vec<Evicted> {
        for update in updates.into_iter().rev() {
            let superseded = !is_terminal(update.status)
                && self
                    .queue
                    .iter()
                    .any(|queued| queued.job_id == update.job_id && is_terminal(queued.status));
            if !superseded {
                self.queue.push_front(update);
            }
        }
        let mut evicted = Vec::new();
        while self.queue.len() > self.capacity {
            evicted.push(self.evict_one());
        }
        evicted
    }

    /// Drops the oldest RUNNING status, or the oldest of all if every one is
    /// terminal.
    fn evict_one(&mut self) -> Evicted {
        let running = self
            .queue
            .iter()
            .position(|queued| !is_terminal(queued.status));
        match self.queue.remove(running.unwrap_or(0)) {
            Some(dropped) if running.is_some() => Evicted::Running(dropped.job_id),
            Some(dropped) => Evicted::Terminal(dropped.job_id),
            None => Evicted::None,
        }
    }

    /// Takes every queued status, oldest first.
    pub fn drain(&mut self) -> Vec<UpdateJobStatus> {
        self.queue.drain(..).collect()
    }

    /// How many statuses wait.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing waits.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(job: &str, status: JobStatus) -> UpdateJobStatus {
        UpdateJobStatus {
            job_id: job.into(),
            status: status as i32,
            error: String::new(),
        }
    }

    fn ids(updates: &[UpdateJobStatus]) -> Vec<(String, i32)> {
        updates
            .iter()
            .map(|u| (u.job_id.clone(), u.status))
            .collect()
    }

    #[test]
    fn keeps_order() {
        let mut outbox = Outbox::new(10);
        outbox.push(status("a", JobStatus::JsRunning));
        outbox.push(status("b", JobStatus::JsRunning));
        outbox.push(status("b", JobStatus::JsFailed));
        outbox.push(status("c", JobStatus::JsSuccess));
        assert_eq!(
            ids(&outbox.drain()),
            vec![
                ("a".into(), JobStatus::JsRunning as i32),
                ("b".into(), JobStatus::JsFailed as i32),
                ("c".into(), JobStatus::JsSuccess as i32),
            ]
        );
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_terminal_status_supersedes_the_jobs_running_status() {
        let mut outbox = Outbox::new(10);
        outbox.push(status("a", JobStatus::JsRunning));
        outbox.push(status("a", JobStatus::JsSuccess));
        assert_eq!(outbox.len(), 1);
        assert_eq!(ids(&outbox.drain())[0].1, JobStatus::JsSuccess as i32);
    }

    #[test]
    fn undelivered_statuses_go_back_in_front_unless_superseded() {
        let mut outbox = Outbox::new(10);
        outbox.push(status("a", JobStatus::JsSuccess));
        outbox.requeue(vec![
            status("a", JobStatus::JsRunning),
            status("b", JobStatus::JsRunning),
            status("c", JobStatus::JsFailed),
        ]);
        assert_eq!(
            ids(&outbox.drain()),
            vec![
                ("b".into(), JobStatus::JsRunning as i32),
                ("c".into(), JobStatus::JsFailed as i32),
                ("a".into(), JobStatus::JsSuccess as i32),
            ]
        );
    }

    #[test]
    fn when_full_running_statuses_go_before_terminal_ones() {
        let mut outbox = Outbox::new(2);
        outbox.push(status("a", JobStatus::JsSuccess));
        outbox.push(status("b", JobStatus::JsRunning));
        assert_eq!(
            outbox.push(status("c", JobStatus::JsFailed)),
            Evicted::Running("b".into())
        );
        assert_eq!(
            outbox.push(status("d", JobStatus::JsSuccess)),
            Evicted::Terminal("a".into())
        );
        let kept = ids(&outbox.drain());
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].0, "c");
        assert_eq!(kept[1].0, "d");
    }
}
