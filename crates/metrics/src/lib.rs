//! The five deployment metrics of the EDGE-EVAL paper, as pure functions over measured inputs,
//! each with its interval where one exists. A metric whose input is null is null, and says which
//! input was missing; N_break is +∞ (stated) when serving locally costs at least the API price.
//!
//! | metric  | definition |
//! |---------|------------|
//! | Q_ret   | mean score(variant) / mean score(baseline) × 100 %, paired by sample id |
//! | IPW     | mean score (0–1) / energy per request (J) |
//! | ρ_sys   | generated tokens/s / measured model memory (GB, 10⁹ bytes) |
//! | C_tax   | load energy (J) / energy per request (J) |
//! | N_break | C_train / (C_api − C_local), C = energy × electricity price |

pub mod fidelity;
pub mod score;
pub mod stats;

use stats::{Rng, mean};

/// A metric's value with its 95 % interval, or why it is null.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub value: Option<f64>,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub null_reason: Option<String>,
}

impl Metric {
    pub fn null(why: impl Into<String>) -> Metric {
        Metric {
            value: None,
            lo: None,
            hi: None,
            null_reason: Some(why.into()),
        }
    }
    pub fn point(v: f64) -> Metric {
        Metric {
            value: Some(v),
            lo: None,
            hi: None,
            null_reason: None,
        }
    }
    /// The metric with a 95 % interval (none: as it is).
    pub fn with_interval(mut self, ci: Option<(f64, f64)>) -> Metric {
        if let Some((lo, hi)) = ci {
            self.lo = Some(lo);
            self.hi = Some(hi);
        }
        self
    }
}

/// Unwraps an input or returns the metric as null naming it.
macro_rules! need {
    ($e:expr, $what:expr) => {
        match $e {
            Some(v) => v,
            None => return Metric::null(format!("{} is null", $what)),
        }
    };
}

/// Q_ret: `variant` and `baseline` are (sample id, score); only ids present in both count.
pub fn q_ret(variant: &[(String, f64)], baseline: &[(String, f64)]) -> Metric {
    let base: std::collections::HashMap<&str, f64> =
        baseline.iter().map(|(id, s)| (id.as_str(), *s)).collect();
    let (a, b): (Vec<f64>, Vec<f64>) = variant
        .iter()
        .filter_map(|(id, s)| base.get(id.as_str()).map(|b| (*s, *b)))
        .unzip();
    if a.is_empty() {
        return Metric::null("no samples shared with the baseline");
    }
    let mb = mean(&b).unwrap_or(0.0);
    if mb == 0.0 {
        return Metric::null("the baseline scores 0 on the shared samples");
    }
    let ci = stats::paired_ratio_interval(&a, &b).map(|(l, h)| (l * 100.0, h * 100.0));
    Metric::point(mean(&a).unwrap_or(0.0) / mb * 100.0).with_interval(ci)
}

/// Whether a variant retains at least `threshold` % of its baseline's score at 95 % confidence
/// (MLPerf's accuracy targets are 99 % and 99.9 % of the reference): `yes` when Q_ret's interval
/// lies at or above the threshold, `no` when it lies below, `undetermined` when it straddles it
/// (more samples would tell) or there is no interval; `None` when Q_ret is null.
pub fn retention_verdict(q_ret: &Metric, threshold: f64) -> Option<&'static str> {
    q_ret.value?;
    Some(match (q_ret.lo, q_ret.hi) {
        (Some(lo), _) if lo >= threshold => "yes",
        (_, Some(hi)) if hi < threshold => "no",
        _ => "undetermined",
    })
}

/// Whether a variant's score differs from its baseline's at 95 % confidence: `yes` when Q_ret's
/// paired interval excludes 100 % (the difference is real), `no` when it covers 100 % (the
/// samples cannot tell them apart); `None` without an interval.
pub fn differs_from_baseline(q_ret: &Metric) -> Option<&'static str> {
    q_ret.value?;
    let (lo, hi) = (q_ret.lo?, q_ret.hi?);
    Some(if lo > 100.0 || hi < 100.0 {
        "yes"
    } else {
        "no"
    })
}

/// Interval of mean(a) / mean(b) with a and b resampled independently (two separate
/// experiments: per-sample scores and per-repetition energies).
fn independent_ratio_interval(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.len() < 2 || b.is_empty() {
        return None;
    }
    let mut rng = Rng(stats::BOOTSTRAP_SEED);
    let mut values = vec![];
    for _ in 0..stats::BOOTSTRAP_RESAMPLES {
        let sa: f64 = (0..a.len()).map(|_| a[rng.below(a.len())]).sum::<f64>() / a.len() as f64;
        let sb: f64 = (0..b.len()).map(|_| b[rng.below(b.len())]).sum::<f64>() / b.len() as f64;
        if sb > 0.0 {
            values.push(sa / sb);
        }
    }
    if values.len() < stats::BOOTSTRAP_RESAMPLES / 2 {
        return None;
    }
    Some((
        stats::percentile(&values, 2.5)?,
        stats::percentile(&values, 97.5)?,
    ))
}

/// IPW: scores (0–1, per sample) / energy per request (J, per repetition).
pub fn ipw(scores: &[f64], energy_per_request: &[f64]) -> Metric {
    let s = need!(mean(scores), "the task score");
    let e = need!(mean(energy_per_request), "energy per request");
    if e <= 0.0 {
        return Metric::null("energy per request is not positive (below the meter's resolution?)");
    }
    Metric::point(s / e).with_interval(independent_ratio_interval(scores, energy_per_request))
}

/// ρ_sys: tokens/s per GB of measured model memory.
pub fn rho_sys(tokens_per_s: Option<f64>, memory_bytes: Option<f64>) -> Metric {
    let t = need!(tokens_per_s, "throughput");
    let m = need!(memory_bytes, "measured model memory");
    if m <= 0.0 {
        return Metric::null("measured model memory is not positive");
    }
    Metric::point(t / (m / 1e9))
}

/// C_tax: load energy over energy per request.
pub fn c_tax(load_j: Option<f64>, per_request_j: Option<f64>) -> Metric {
    let l = need!(load_j, "load energy");
    let r = need!(per_request_j, "energy per request");
    if r <= 0.0 {
        return Metric::null("energy per request is not positive");
    }
    Metric::point(l / r)
}

/// N_break in requests: C_train / (C_api − C_local). +∞ when C_local ≥ C_api (never breaks even).
pub fn n_break(
    train_j: Option<f64>,
    per_request_j: Option<f64>,
    usd_per_kwh: Option<f64>,
    api_usd: Option<f64>,
) -> Metric {
    let price = need!(usd_per_kwh, "the electricity price (economics.electricity)");
    let api = need!(api_usd, "the API price per request (economics.api_request)");
    let train = need!(train_j, "the energy spent producing the variant");
    let req = need!(per_request_j, "energy per request");
    let c_train = train / 3.6e6 * price;
    let c_local = req / 3.6e6 * price;
    if c_local >= api {
        return Metric::point(f64::INFINITY);
    }
    Metric::point(c_train / (api - c_local))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(xs: &[f64]) -> Vec<(String, f64)> {
        xs.iter()
            .enumerate()
            .map(|(i, s)| (format!("s{i}"), *s))
            .collect()
    }

    #[test]
    fn the_retention_verdict_reads_the_interval_against_the_threshold() {
        let q = |lo, v, hi| Metric::point(v).with_interval(Some((lo, hi)));
        assert_eq!(retention_verdict(&q(99.2, 100.0, 101.0), 99.0), Some("yes"));
        assert_eq!(
            retention_verdict(&q(99.2, 100.0, 101.0), 99.9),
            Some("undetermined")
        );
        assert_eq!(retention_verdict(&q(90.0, 95.0, 98.9), 99.0), Some("no"));
        assert_eq!(
            retention_verdict(&Metric::point(100.0), 99.0),
            Some("undetermined")
        );
        assert_eq!(retention_verdict(&Metric::null("x"), 99.0), None);
    }

    #[test]
    fn a_difference_from_the_baseline_is_real_when_the_interval_excludes_100() {
        let q = |lo, v, hi| Metric::point(v).with_interval(Some((lo, hi)));
        assert_eq!(differs_from_baseline(&q(81.0, 90.0, 99.5)), Some("yes"));
        assert_eq!(differs_from_baseline(&q(100.5, 104.0, 108.0)), Some("yes"));
        assert_eq!(differs_from_baseline(&q(64.3, 81.7, 100.0)), Some("no"));
        assert_eq!(differs_from_baseline(&Metric::point(95.0)), None);
        assert_eq!(differs_from_baseline(&Metric::null("x")), None);
    }

    #[test]
    fn q_ret_pairs_by_id() {
        let base = ids(&[1.0, 0.5, 0.5, 1.0]);
        let var = ids(&[1.0, 0.5, 0.0, 1.0]);
        let m = q_ret(&var, &base);
        assert!((m.value.unwrap() - 2.5 / 3.0 * 100.0).abs() < 1e-9);
        assert!(m.lo.unwrap() <= m.value.unwrap() && m.value.unwrap() <= m.hi.unwrap());
        // An extra sample in the variant that the baseline lacks is ignored.
        let mut var2 = var.clone();
        var2.push(("zz".into(), 0.0));
        assert_eq!(q_ret(&var2, &base).value, m.value);
        assert!(
            q_ret(&var, &ids(&[0.0, 0.0, 0.0, 0.0]))
                .null_reason
                .unwrap()
                .contains("scores 0")
        );
        assert!(q_ret(&[("x".into(), 1.0)], &base).value.is_none());
    }

    #[test]
    fn ipw_and_its_interval() {
        let m = ipw(&[0.5, 0.7, 0.6], &[2.0, 2.0]);
        assert!((m.value.unwrap() - 0.3).abs() < 1e-12);
        let (lo, hi) = (m.lo.unwrap(), m.hi.unwrap());
        assert!(lo <= 0.3 && 0.3 <= hi && lo >= 0.25 && hi <= 0.35);
        assert!(
            ipw(&[0.5], &[])
                .null_reason
                .unwrap()
                .contains("energy per request")
        );
        assert!(ipw(&[], &[1.0]).null_reason.unwrap().contains("score"));
        assert!(ipw(&[0.5], &[0.0]).value.is_none());
    }

    #[test]
    fn rho_c_tax_by_hand() {
        assert_eq!(rho_sys(Some(50.0), Some(250e6)).value, Some(200.0));
        assert!(
            rho_sys(None, Some(1.0))
                .null_reason
                .unwrap()
                .contains("throughput")
        );
        assert!(
            rho_sys(Some(1.0), None)
                .null_reason
                .unwrap()
                .contains("memory")
        );
        assert_eq!(c_tax(Some(30.0), Some(1.5)).value, Some(20.0));
        assert!(c_tax(None, Some(1.0)).value.is_none());
    }

    #[test]
    fn n_break_by_hand_infinity_and_nulls() {
        // 3.6 MJ = 1 kWh → C_train 0.12 usd; 360 J/request → 0.0001 kWh → C_local 1.2e-5 usd.
        let m = n_break(Some(3.6e6), Some(360.0), Some(0.12), Some(0.00125));
        let expect = 0.12 / (0.00125 - 1.2e-5);
        assert!((m.value.unwrap() - expect).abs() < 1e-9, "{m:?}");
        // Local cost at or above the API price: never breaks even.
        let inf = n_break(Some(1.0), Some(3.6e6), Some(0.12), Some(0.00125));
        assert_eq!(inf.value, Some(f64::INFINITY));
        // Null inputs name what is missing.
        let m = n_break(None, Some(1.0), Some(0.12), Some(0.00125));
        assert!(m.null_reason.unwrap().contains("producing the variant"));
        let m = n_break(Some(1.0), Some(1.0), None, Some(0.00125));
        assert!(m.null_reason.unwrap().contains("electricity"));
    }
}
