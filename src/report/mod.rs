//! From a run's results to the answers: one row per variant × task with the five deployment
//! metrics (`metrics.parquet`), a terminal table, and a self-contained HTML report with the
//! efficiency frontier (inline SVG, no JavaScript, works offline).
//!
//! The join: every model node that an `evaluate` or `measure` stage used is a variant; with a
//! task it is a row. Its lineage (the `model` parameters upstream: `quantize`, `finetune`, the
//! source) gives the identifying columns and the energy spent producing it; its baseline is the
//! `quantize` of the same upstream model at the `report { baseline = ... }` precision.
//!
//! [`join`] makes the rows, [`terminal`] prints them, [`html`] draws the page.

mod html;
mod join;
mod terminal;

pub use html::{html, pareto};
pub use join::compute;
pub use terminal::terminal_table;

use crate::stages::Row;
use engine::table::Ty;
use std::collections::BTreeMap;

/// Columns of `metrics.parquet`, in order.
pub const COLUMNS: &[(&str, Ty)] = &[
    ("variant", Ty::Str),
    ("model", Ty::Str),
    ("method", Ty::Str),
    ("precision", Ty::Str),
    ("task", Ty::Str),
    ("device", Ty::Str),
    ("synthetic", Ty::Bool),
    ("score", Ty::Float),
    ("score_ci_lo", Ty::Float),
    ("score_ci_hi", Ty::Float),
    ("samples", Ty::Int),
    ("q_ret_pct", Ty::Float),
    ("q_ret_ci_lo", Ty::Float),
    ("q_ret_ci_hi", Ty::Float),
    ("kl_mean", Ty::Float),
    ("kl_p99", Ty::Float),
    ("top1_agreement", Ty::Float),
    ("tokens_per_s", Ty::Float),
    ("at_batch", Ty::Int),
    ("energy_per_request_j", Ty::Float),
    ("energy_per_request_net_j", Ty::Float),
    ("memory_resident_bytes", Ty::Int),
    ("memory_peak_bytes", Ty::Int),
    ("ipw", Ty::Float),
    ("ipw_ci_lo", Ty::Float),
    ("ipw_ci_hi", Ty::Float),
    ("ipw_net", Ty::Float),
    ("rho_sys", Ty::Float),
    ("rho_sys_peak", Ty::Float),
    ("load_energy_j", Ty::Float),
    ("c_tax", Ty::Float),
    ("train_energy_j", Ty::Float),
    ("n_break", Ty::Float),
    ("energy_sources", Ty::Str),
    ("null_reasons", Ty::Str),
];

/// Writes `metrics.parquet` and `report.html` into `dir`; returns their paths.
pub fn write(
    dir: &std::path::Path,
    title: &str,
    rows: &[Row],
    metrics: &[String],
    meta: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut t = engine::table::Table::new(COLUMNS);
    for r in rows {
        t.push(r)?;
    }
    let pq = dir.join("metrics.parquet");
    engine::table::write_parquet(&pq, &t.finish()?, meta)?;
    let page = dir.join("report.html");
    engine::cache::write_atomic_via(
        &dir.join(".report.html.tmp"),
        &page,
        html(title, rows, metrics).as_bytes(),
    )?;
    Ok(vec![pq, page])
}

// ---------------------------------------------------------------- cells, as both views show them

/// A value as a table cell: numbers to 3 significant places, `inf` as ∞, null as "null".
pub(super) fn cell(row: &Row, k: &str) -> String {
    match row.get(k) {
        Some(serde_json::Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.abs() >= 1e5 || (x != 0.0 && x.abs() < 1e-3) {
                format!("{x:.3e}")
            } else if x.fract() == 0.0 && x.abs() < 1e5 {
                format!("{x:.0}")
            } else {
                format!("{x:.3}")
            }
        }
        Some(serde_json::Value::String(s)) if s == "inf" => "∞".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Bool(b)) => b.to_string(),
        _ => "null".into(),
    }
}

/// A cell with its 95 % interval when the row has one (`score`, `q_ret_pct`, `ipw`).
pub(super) fn cell_ci(row: &Row, k: &str) -> String {
    let base = k.trim_end_matches("_pct");
    let lo = row.get(&format!("{base}_ci_lo")).and_then(|v| v.as_f64());
    let hi = row.get(&format!("{base}_ci_hi")).and_then(|v| v.as_f64());
    let v = cell(row, k);
    match (lo, hi) {
        (Some(lo), Some(hi)) if v != "null" => {
            let mut r = Row::new();
            r.insert("lo".into(), serde_json::json!(lo));
            r.insert("hi".into(), serde_json::json!(hi));
            format!("{v} [{}, {}]", cell(&r, "lo"), cell(&r, "hi"))
        }
        _ => v,
    }
}

/// The columns the terminal and HTML tables show for the chosen metrics.
pub(super) fn shown(metrics: &[String]) -> Vec<(&'static str, &'static str)> {
    let mut cols = vec![("variant", "variant"), ("task", "task"), ("score", "score")];
    let all = [
        ("q_ret", ("q_ret_pct", "Q_ret %")),
        ("ipw", ("ipw", "IPW 1/J")),
        ("rho_sys", ("rho_sys", "ρ_sys tok/s/GB")),
        ("c_tax", ("c_tax", "C_tax")),
        ("n_break", ("n_break", "N_break req")),
    ];
    for (m, c) in all {
        if metrics.is_empty() || metrics.iter().any(|x| x == m) {
            cols.push(c);
        }
    }
    cols.push(("energy_per_request_j", "J/request"));
    cols
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_show_infinity_and_nulls() {
        let mut r = Row::new();
        r.insert("variant".into(), json!("v[qa,q4_0]"));
        r.insert("task".into(), json!("qa"));
        r.insert("score".into(), json!(0.5));
        r.insert("n_break".into(), json!("inf"));
        r.insert(
            "null_reasons".into(),
            json!("ipw: energy per request is null"),
        );
        let t = terminal_table(&[r.clone()], &["n_break".into(), "ipw".into()]);
        assert!(t.contains("∞"), "{t}");
        assert!(t.contains("null"), "{t}");
        assert!(t.contains("energy per request is null"), "{t}");
        let page = html("quick<start>", &[r], &[]);
        assert!(page.contains("quick&lt;start&gt;"));
        assert!(page.contains("<svg") && !page.contains("<script"));
    }
}
