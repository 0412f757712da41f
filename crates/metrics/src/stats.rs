//! Summary statistics with honest uncertainty: mean, standard error, percentiles, coefficient of
//! variation, and seeded percentile-bootstrap intervals (plain and paired). Pure functions.

/// splitmix64: a small, seedable generator (the same seed gives the same intervals).
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub const BOOTSTRAP_RESAMPLES: usize = 2000;
pub const BOOTSTRAP_SEED: u64 = 0x5eed_ed9e;

pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample standard deviation (n − 1).
pub fn stdev(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs)?;
    Some((xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt())
}

pub fn std_error(xs: &[f64]) -> Option<f64> {
    stdev(xs).map(|s| s / (xs.len() as f64).sqrt())
}

/// Coefficient of variation (stdev / mean), null for fewer than two values or a zero mean.
pub fn cv(xs: &[f64]) -> Option<f64> {
    let m = mean(xs)?;
    (m != 0.0).then_some(stdev(xs)? / m.abs())
}

/// Percentile by linear interpolation between order statistics (numpy's default), p in 0–100.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let frac = rank - lo as f64;
    // Equal neighbours (infinite ones included: ∞ − ∞ is NaN) need no interpolation.
    Some(if frac == 0.0 || v[lo] == v[hi] {
        v[lo]
    } else {
        v[lo] + (v[hi] - v[lo]) * frac
    })
}

pub fn median(xs: &[f64]) -> Option<f64> {
    percentile(xs, 50.0)
}

/// 95 % percentile-bootstrap interval of `stat` over resamples of `n` indices. Resamples whose
/// statistic is undefined (None or not finite) are dropped; if most are, there is no interval.
pub fn bootstrap(n: usize, stat: impl Fn(&[usize]) -> Option<f64>) -> Option<(f64, f64)> {
    if n < 2 {
        return None;
    }
    let mut rng = Rng(BOOTSTRAP_SEED);
    let mut idx = vec![0usize; n];
    let mut values = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        idx.iter_mut().for_each(|i| *i = rng.below(n));
        if let Some(v) = stat(&idx).filter(|v| v.is_finite()) {
            values.push(v);
        }
    }
    if values.len() < BOOTSTRAP_RESAMPLES / 2 {
        return None;
    }
    Some((percentile(&values, 2.5)?, percentile(&values, 97.5)?))
}

/// 95 % percentile-bootstrap interval of `stat` applied to the medians of independent resamples
/// of each group's repetitions (separate measurements: serving windows, cold loads; the
/// summaries the point estimates use are medians). A group of one value stays fixed; there is
/// no interval unless some group has two or more. Infinite statistics are kept (a break-even
/// that never comes), undefined ones (None, NaN) dropped; if most are, there is no interval.
pub fn repetitions_interval(
    groups: &[&[f64]],
    stat: impl Fn(&[f64]) -> Option<f64>,
) -> Option<(f64, f64)> {
    if groups.iter().any(|g| g.is_empty()) || groups.iter().all(|g| g.len() < 2) {
        return None;
    }
    let mut rng = Rng(BOOTSTRAP_SEED);
    let mut values = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut resample = vec![];
    for _ in 0..BOOTSTRAP_RESAMPLES {
        let mut medians = Vec::with_capacity(groups.len());
        for g in groups {
            resample.clear();
            resample.extend((0..g.len()).map(|_| g[rng.below(g.len())]));
            medians.push(median(&resample)?);
        }
        if let Some(v) = stat(&medians).filter(|v| !v.is_nan()) {
            values.push(v);
        }
    }
    if values.len() < BOOTSTRAP_RESAMPLES / 2 {
        return None;
    }
    Some((percentile(&values, 2.5)?, percentile(&values, 97.5)?))
}

/// Interval of the mean.
pub fn mean_interval(xs: &[f64]) -> Option<(f64, f64)> {
    bootstrap(xs.len(), |idx| {
        mean(&idx.iter().map(|&i| xs[i]).collect::<Vec<_>>())
    })
}

/// Paired interval of mean(a) / mean(b) (a and b scored on the same samples, same order).
pub fn paired_ratio_interval(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.len() != b.len() {
        return None;
    }
    bootstrap(a.len(), |idx| {
        let sa: f64 = idx.iter().map(|&i| a[i]).sum();
        let sb: f64 = idx.iter().map(|&i| b[i]).sum();
        (sb != 0.0).then(|| sa / sb)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_and_percentiles() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean(&xs), Some(5.0));
        let s = stdev(&xs).unwrap();
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert!((std_error(&xs).unwrap() - s / 8f64.sqrt()).abs() < 1e-12);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.5));
        assert_eq!(percentile(&[10.0], 99.0), Some(10.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 90.0), Some(4.6));
        assert_eq!(mean(&[]), None);
        assert_eq!(stdev(&[1.0]), None);
        assert_eq!(cv(&[0.0, 0.0]), None);
        assert!((cv(&[9.0, 11.0]).unwrap() - 2f64.sqrt() / 10.0).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_intervals_cover_and_are_reproducible() {
        let xs: Vec<f64> = (0..50).map(|i| (i % 10) as f64 / 10.0).collect();
        let (lo, hi) = mean_interval(&xs).unwrap();
        let m = mean(&xs).unwrap();
        assert!(lo < m && m < hi, "{lo} {m} {hi}");
        assert!(hi - lo < 0.3);
        assert_eq!(mean_interval(&xs), Some((lo, hi)));
        // Constant data: a degenerate interval at the value.
        assert_eq!(mean_interval(&[0.5; 10]), Some((0.5, 0.5)));
        assert_eq!(mean_interval(&[0.5]), None);
    }

    #[test]
    fn repetition_intervals_resample_each_measurement_apart() {
        let ratio = |m: &[f64]| Some(m[0] / m[1]);
        // Three windows and three loads: the interval spans what their medians can give.
        let (lo, hi) =
            repetitions_interval(&[&[9.0, 10.0, 12.0], &[2.0, 2.0, 2.5]], ratio).unwrap();
        assert!(lo <= 10.0 / 2.0 && 10.0 / 2.0 <= hi, "[{lo}, {hi}]");
        assert!(lo >= 9.0 / 2.5 && hi <= 12.0 / 2.0, "[{lo}, {hi}]");
        // One value per group: nothing to resample.
        assert_eq!(repetitions_interval(&[&[3.0], &[1.0]], ratio), None);
        assert_eq!(repetitions_interval(&[&[3.0, 4.0], &[]], ratio), None);
        // A group of one stays fixed while the other varies.
        let (lo, hi) = repetitions_interval(&[&[4.0, 6.0], &[2.0]], ratio).unwrap();
        assert_eq!((lo, hi), (2.0, 3.0));
        // An infinite statistic (never breaking even) is kept, and an interval can end there.
        let never = |m: &[f64]| Some(if m[0] > 1.0 { f64::INFINITY } else { m[0] });
        let (lo, hi) = repetitions_interval(&[&[0.5, 2.0]], never).unwrap();
        assert_eq!((lo, hi), (0.5, f64::INFINITY));
        assert_eq!(
            percentile(&[1.0, f64::INFINITY, f64::INFINITY], 90.0),
            Some(f64::INFINITY)
        );
    }

    #[test]
    fn paired_ratio_is_tighter_than_unpaired_noise() {
        // b varies a lot between samples, a tracks b closely: the paired ratio stays near 0.9.
        let b: Vec<f64> = (0..40).map(|i| 0.1 + (i % 7) as f64 / 7.0).collect();
        let a: Vec<f64> = b.iter().map(|x| x * 0.9).collect();
        let (lo, hi) = paired_ratio_interval(&a, &b).unwrap();
        assert!(
            (lo - 0.9).abs() < 1e-9 && (hi - 0.9).abs() < 1e-9,
            "{lo} {hi}"
        );
        // A baseline of all zeros has no ratio.
        assert_eq!(paired_ratio_interval(&[1.0, 1.0], &[0.0, 0.0]), None);
        assert_eq!(paired_ratio_interval(&[1.0], &[1.0, 2.0]), None);
    }
}
