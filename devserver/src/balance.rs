//! Choosing a worker for a job: random, weighted by spare capacity.
//!
//! The LiveKit server picks among AVAILABLE workers with `load < 1` that have
//! not been tried yet for this job, with probability proportional to
//! `1 - load`. The caller filters; this module only does the arithmetic, with
//! the random sample passed in so it can be tested.

/// The weight of a worker reporting `load`: its spare capacity, or none.
pub fn weight(load: f32) -> f64 {
    if load.is_finite() && load < 1.0 {
        (1.0 - f64::from(load.max(0.0))).max(0.0)
    } else {
        0.0
    }
}

/// Picks an index into `loads`, weighted by [`weight`], using `sample` in
/// `[0, 1)`. `None` when no worker has spare capacity.
pub fn pick_weighted(loads: &[f32], sample: f64) -> Option<usize> {
    let weights: Vec<f64> = loads.iter().copied().map(weight).collect();
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let target = sample.clamp(0.0, 1.0) * total;
    let mut acc = 0.0;
    let mut last_positive = None;
    for (i, w) in weights.iter().enumerate() {
        if *w <= 0.0 {
            continue;
        }
        last_positive = Some(i);
        acc += w;
        if target < acc {
            return Some(i);
        }
    }
    // `sample` at the very top of the range, or rounding: the last candidate.
    last_positive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_or_full_gives_none() {
        assert_eq!(pick_weighted(&[], 0.5), None);
        assert_eq!(pick_weighted(&[1.0, 1.5], 0.5), None);
        assert_eq!(pick_weighted(&[f32::NAN], 0.5), None);
    }

    #[test]
    fn weights_follow_spare_capacity() {
        // weights 1.0 and 0.5: [0, 2/3) -> 0, [2/3, 1) -> 1
        assert_eq!(pick_weighted(&[0.0, 0.5], 0.0), Some(0));
        assert_eq!(pick_weighted(&[0.0, 0.5], 0.66), Some(0));
        assert_eq!(pick_weighted(&[0.0, 0.5], 0.67), Some(1));
        assert_eq!(pick_weighted(&[0.0, 0.5], 0.999_999), Some(1));
        assert_eq!(pick_weighted(&[0.0, 0.5], 1.0), Some(1));
    }

    #[test]
    fn full_workers_are_skipped() {
        assert_eq!(pick_weighted(&[1.0, 0.2, 1.0], 0.0), Some(1));
        assert_eq!(pick_weighted(&[1.0, 0.2, 1.0], 0.99), Some(1));
    }

    /// A seeded source of samples in `[0, 1)` (splitmix64): the statistics
    /// below are the same on every run.
    fn samples(seed: u64) -> impl Iterator<Item = f64> {
        let mut state = seed;
        std::iter::repeat_with(move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        })
    }

    #[test]
    fn over_many_jobs_spare_capacity_sets_the_share() {
        // loads 0.2, 0.8 and FULL (1.0): weights 0.8, 0.2, 0 -> 80 % / 20 % / 0
        let mut counts = [0usize; 3];
        for sample in samples(7).take(10_000) {
            counts[pick_weighted(&[0.2, 0.8, 1.0], sample).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!((7_700..=8_300).contains(&counts[0]), "{counts:?}");
        assert!((1_700..=2_300).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn negative_load_counts_as_idle() {
        assert_eq!(weight(-3.0), 1.0);
        assert_eq!(weight(0.25), 0.75);
    }
}
