//! Two runs side by side (`edge-eval compare A B`): what differs between them (the pipeline
//! file, the hardware, the edge-eval version, the variants), then per variant × task each metric
//! in both runs, the change, and whether it is real. A score's change is paired: the two runs'
//! samples of the same records, a bootstrap interval of the mean difference; real when it
//! excludes 0 (with at least [`MIN_PAIRS`] records). Metrics with an interval in both runs
//! (Q_ret, IPW) count as really changed when the two intervals do not overlap (a conservative
//! reading: overlapping intervals say only that these runs cannot show it); the others have none.

use super::{aligned, cell, cell_ci};
use crate::stages::Row;
use serde::Serialize;
use std::collections::BTreeMap;

/// One run's side: its metrics rows, its evaluate.parquet rows and its tables' metadata.
pub struct Side {
    pub label: String,
    pub metrics: Vec<Row>,
    pub evaluate: Vec<Row>,
    pub meta: BTreeMap<String, String>,
}

/// Fewer paired records than this give no verdict on a score's change.
pub const MIN_PAIRS: usize = 5;

/// One metric of one variant × task in both runs.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub variant: String,
    pub task: String,
    pub metric: String,
    pub a: String,
    pub b: String,
    /// B − A: a score's paired difference with its interval, else the relative change (%)
    pub change: String,
    /// yes | no (a score's paired interval covers 0) | overlap (the two intervals overlap) |
    /// too few (fewer than MIN_PAIRS paired records) | "" (nothing to tell it by)
    pub real: String,
}

/// What differs between the runs, as lines.
pub fn differences(a: &Side, b: &Side) -> Vec<String> {
    let mut out = vec![];
    for key in ["pipeline", "pipeline_digest", "version", "hardware"] {
        let k = format!("edge_eval.{key}");
        let (x, y) = (a.meta.get(&k), b.meta.get(&k));
        if x != y {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(none)".into());
            out.push(format!("{key}: {} → {}", show(x), show(y)));
        }
    }
    let ids = |s: &Side| -> Vec<(String, String)> { s.metrics.iter().map(key).collect() };
    let (ia, ib) = (ids(a), ids(b));
    for (k, only, other) in [(&ia, &a.label, &ib), (&ib, &b.label, &ia)] {
        for id in k.iter().filter(|id| !other.contains(id)) {
            out.push(format!("only in {only}: {} [{}]", id.0, id.1));
        }
    }
    out
}

fn key(r: &Row) -> (String, String) {
    (cell(r, "variant"), cell(r, "task"))
}

/// The per-metric changes of every variant × task both runs have.
pub fn changes(a: &Side, b: &Side) -> Vec<Change> {
    let mut out = vec![];
    for ra in &a.metrics {
        let Some(rb) = b.metrics.iter().find(|r| key(r) == key(ra)) else {
            continue;
        };
        let (variant, task) = key(ra);
        let change = |metric: &str, change: String, real: &str| Change {
            variant: variant.clone(),
            task: task.clone(),
            metric: metric.into(),
            a: cell_ci(ra, metric),
            b: cell_ci(rb, metric),
            change,
            real: real.into(),
        };
        // The score: paired over the records both runs scored.
        let (delta, real) = match paired_scores(a, ra, b, rb) {
            Some(pairs) if !pairs.is_empty() => {
                let d: Vec<f64> = pairs.iter().map(|(x, y)| y - x).collect();
                let m = metrics::stats::mean(&d).unwrap_or(0.0);
                match metrics::stats::mean_interval(&d).filter(|_| d.len() >= MIN_PAIRS) {
                    Some((lo, hi)) => (
                        format!("{m:+.3} [{lo:+.3}, {hi:+.3}], {} paired", d.len()),
                        if lo > 0.0 || hi < 0.0 { "yes" } else { "no" },
                    ),
                    None => (format!("{m:+.3}, {} paired", d.len()), "too few"),
                }
            }
            // No records scored in both runs: the relative change of the means, no verdict.
            _ => (relative(ra, rb, "score"), ""),
        };
        if ra.get("score").is_some_and(|v| !v.is_null())
            || rb.get("score").is_some_and(|v| !v.is_null())
        {
            out.push(change("score", delta, real));
        }
        for metric in [
            "q_ret_pct",
            "ipw",
            "rho_sys",
            "c_tax",
            "n_break",
            "energy_per_request_j",
            "tokens_per_s",
        ] {
            if cell(ra, metric) == "null" && cell(rb, metric) == "null" {
                continue;
            }
            let real = match (interval(ra, metric), interval(rb, metric)) {
                (Some((lo_a, hi_a)), Some((lo_b, hi_b))) => {
                    if hi_a < lo_b || hi_b < lo_a {
                        "yes"
                    } else {
                        "overlap"
                    }
                }
                _ => "",
            };
            out.push(change(metric, relative(ra, rb, metric), real));
        }
    }
    out
}

/// The two runs' scores of the records both scored, from their evaluate stages' sample rows.
fn paired_scores(a: &Side, ra: &Row, b: &Side, rb: &Row) -> Option<Vec<(f64, f64)>> {
    let samples = |s: &Side, r: &Row| -> Option<BTreeMap<String, f64>> {
        let stage = r.get("evaluate_stage")?.as_str()?;
        Some(
            s.evaluate
                .iter()
                .filter(|e| {
                    e.get("stage_id").and_then(|v| v.as_str()) == Some(stage)
                        && e.get("row").and_then(|v| v.as_str()) == Some("sample")
                })
                .filter_map(|e| {
                    Some((
                        e.get("sample_id")?.as_str()?.to_string(),
                        e.get("score")?.as_f64()?,
                    ))
                })
                .collect(),
        )
    };
    let (sa, sb) = (samples(a, ra)?, samples(b, rb)?);
    Some(
        sa.iter()
            .filter_map(|(id, x)| sb.get(id).map(|y| (*x, *y)))
            .collect(),
    )
}

fn interval(r: &Row, metric: &str) -> Option<(f64, f64)> {
    let base = metric.trim_end_matches("_pct");
    // An end may be infinite (N_break's: some resamples never break even), stored as "inf".
    let end = |k: String| {
        let v = r.get(&k)?;
        v.as_f64().or_else(|| {
            serde_json::from_value::<engine::row::Extended>(v.clone())
                .ok()
                .map(|e| e.0)
        })
    };
    Some((end(format!("{base}_ci_lo"))?, end(format!("{base}_ci_hi"))?))
}

/// B's value relative to A's, in %.
fn relative(a: &Row, b: &Row, metric: &str) -> String {
    let num = |r: &Row| r.get(metric).and_then(|v| v.as_f64());
    match (num(a), num(b)) {
        (Some(x), Some(y)) if x != 0.0 && x.is_finite() && y.is_finite() => {
            format!("{:+.1} %", (y - x) / x.abs() * 100.0)
        }
        (Some(x), Some(y)) if x == y => "0".into(),
        _ => String::new(),
    }
}

/// The comparison as the terminal shows it.
pub fn text(a: &Side, b: &Side) -> String {
    let mut out = format!("A = {}\nB = {}\n", a.label, b.label);
    let diffs = differences(a, b);
    if diffs.is_empty() {
        out += "same pipeline file, hardware, edge-eval version and variants\n";
    } else {
        for d in diffs {
            out += &format!("  {d}\n");
        }
    }
    let mut rows = vec![
        ["variant", "task", "metric", "A", "B", "B − A", "real?"]
            .map(String::from)
            .to_vec(),
    ];
    rows.extend(
        changes(a, b)
            .into_iter()
            .map(|c| vec![c.variant, c.task, c.metric, c.a, c.b, c.change, c.real]),
    );
    out += "\n";
    out += &aligned(&rows);
    out += "score: B − A over the records both runs scored, 95 % paired bootstrap interval (real: it \
            excludes 0; too few: under 5 records); Q_ret, IPW: real when the two runs' 95 % \
            intervals do not overlap (overlap: these runs cannot show a change); others: relative \
            change (%), no interval\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn side(label: &str, score: f64, sample_scores: &[f64], ipw: (f64, f64, f64)) -> Side {
        let mut m = Row::new();
        m.insert("variant".into(), json!("v[qa,q4_0]"));
        m.insert("task".into(), json!("qa"));
        m.insert("score".into(), json!(score));
        m.insert("evaluate_stage".into(), json!("evaluate[qa,q4_0]"));
        m.insert("ipw".into(), json!(ipw.1));
        m.insert("ipw_ci_lo".into(), json!(ipw.0));
        m.insert("ipw_ci_hi".into(), json!(ipw.2));
        let evaluate = sample_scores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut r = Row::new();
                r.insert("stage_id".into(), json!("evaluate[qa,q4_0]"));
                r.insert("row".into(), json!("sample"));
                r.insert("sample_id".into(), json!(format!("s{i}")));
                r.insert("score".into(), json!(s));
                r
            })
            .collect();
        Side {
            label: label.into(),
            metrics: vec![m],
            evaluate,
            meta: BTreeMap::from([("edge_eval.hardware".into(), format!("hw-{label}"))]),
        }
    }

    #[test]
    fn a_paired_change_is_real_when_its_interval_excludes_zero() {
        // Every record gains 0.5 in B: the paired interval is [0.5, 0.5].
        let a = side("a", 0.25, &[0.0, 0.5, 0.0, 0.5, 0.0, 0.5], (1.0, 2.0, 3.0));
        let b = side("b", 0.75, &[0.5, 1.0, 0.5, 1.0, 0.5, 1.0], (4.0, 5.0, 6.0));
        let c = changes(&a, &b);
        let score = c.iter().find(|c| c.metric == "score").unwrap();
        assert_eq!(score.real, "yes", "{score:?}");
        assert!(
            score
                .change
                .starts_with("+0.500 [+0.500, +0.500], 6 paired"),
            "{score:?}"
        );
        let ipw = c.iter().find(|c| c.metric == "ipw").unwrap();
        assert_eq!(
            (ipw.change.as_str(), ipw.real.as_str()),
            ("+150.0 %", "yes")
        );
        // Gains and losses that cancel: no real change; overlapping intervals: overlap.
        let b = side("b", 0.25, &[0.5, 0.0, 0.5, 0.0, 0.5, 0.0], (1.5, 2.5, 3.5));
        let c = changes(&a, &b);
        assert_eq!(c.iter().find(|c| c.metric == "score").unwrap().real, "no");
        assert_eq!(
            c.iter().find(|c| c.metric == "ipw").unwrap().real,
            "overlap"
        );
        assert_eq!(differences(&a, &b), ["hardware: hw-a → hw-b"]);
        // Too few records for a verdict.
        let few = side("b", 0.75, &[0.5, 1.0, 0.5, 1.0], (1.5, 2.5, 3.5));
        let short = side("a", 0.25, &[0.0, 0.5, 0.0, 0.5], (1.0, 2.0, 3.0));
        let c = changes(&short, &few);
        assert_eq!(
            c.iter().find(|c| c.metric == "score").unwrap().real,
            "too few"
        );
        assert!(text(&a, &b).contains("v[qa,q4_0]  qa    score"));
    }
}
