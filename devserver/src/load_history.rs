//! A worker's reported load over the last minutes, for the dashboard's
//! chart: at most one sample per [`SAMPLE_PERIOD`] (a burst of updates keeps
//! its last value), none older than [`WINDOW`], so a worker holds at most
//! `WINDOW / SAMPLE_PERIOD` samples however often it reports.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// The span of history kept.
pub const WINDOW: Duration = Duration::from_secs(180);
/// The shortest time between two samples.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// Samples kept at most.
pub const MAX_SAMPLES: usize = (WINDOW.as_secs() / SAMPLE_PERIOD.as_secs()) as usize;

/// One reported load and when it was received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSample {
    /// When the update arrived.
    pub at: SystemTime,
    /// The load it reported (0 to 1).
    pub load: f32,
}

/// A reported load as the server takes it: within 0..=1, and 0 for one
/// the protocol cannot mean (NaN, infinite), so that the balancer and the
/// dashboard never read nonsense.
pub fn bounded(load: f32) -> f32 {
    if load.is_finite() {
        load.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The samples of one worker, oldest first.
#[derive(Debug, Default, Clone)]
pub struct LoadHistory {
    samples: VecDeque<LoadSample>,
}

impl LoadHistory {
    /// Records a load (already [`bounded`]) reported at `at`: a new sample
    /// when the last one is at least [`SAMPLE_PERIOD`] older, else it
    /// replaces the last one; samples older than [`WINDOW`] go.
    pub fn record(&mut self, at: SystemTime, load: f32) {
        match self.samples.back_mut() {
            Some(last) if at.duration_since(last.at).unwrap_or_default() < SAMPLE_PERIOD => {
                last.load = load;
            }
            _ => self.samples.push_back(LoadSample { at, load }),
        }
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|s| at.duration_since(s.at).unwrap_or_default() > WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &LoadSample> {
        self.samples.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn loads(h: &LoadHistory) -> Vec<(u64, f32)> {
        h.samples()
            .map(|s| {
                let ms = s.at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
                (ms.as_millis() as u64, s.load)
            })
            .collect()
    }

    #[test]
    fn a_burst_within_a_period_keeps_its_last_value() {
        let mut h = LoadHistory::default();
        h.record(t(0), 0.1);
        h.record(t(300), 0.2);
        h.record(t(900), 0.3);
        h.record(t(1000), 0.4);
        assert_eq!(loads(&h), vec![(0, 0.3), (1000, 0.4)]);
    }

    #[test]
    fn samples_older_than_the_window_go() {
        let mut h = LoadHistory::default();
        h.record(t(0), 0.5);
        h.record(t(10_000), 0.6);
        h.record(t(10_000 + WINDOW.as_millis() as u64), 0.7);
        assert_eq!(loads(&h).first(), Some(&(10_000, 0.6)));
        assert_eq!(h.samples().count(), 2);
    }

    #[test]
    fn steady_reports_are_bounded_by_max_samples() {
        let mut h = LoadHistory::default();
        for i in 0..(3 * MAX_SAMPLES as u64) {
            h.record(t(i * 1000), 0.5);
        }
        assert_eq!(h.samples().count(), MAX_SAMPLES);
    }

    #[test]
    fn loads_out_of_range_are_clamped() {
        let mut h = LoadHistory::default();
        h.record(t(0), bounded(7.0));
        h.record(t(2000), bounded(-1.0));
        h.record(t(4000), bounded(f32::NAN));
        assert_eq!(loads(&h), vec![(0, 1.0), (2000, 0.0), (4000, 0.0)]);
    }
}
