//! From a run's results to the answers: one row per variant × task with the five deployment
//! metrics (`metrics.parquet`), a terminal table, and a self-contained HTML report with the
//! efficiency frontier (inline SVG, no JavaScript, works offline).
//!
//! The join: every model node that an `evaluate` or `measure` stage used is a variant; with a
//! task it is a row. Its lineage (the `model` parameters upstream: `quantize`, `finetune`, the
//! source) gives the identifying columns and the energy spent producing it; its baseline is the
//! `quantize` of the same upstream model at the `report { baseline = ... }` precision.
//!
//! [`join`] makes the rows, [`terminal`] prints them, [`html`] draws the page; with
//! `report { compare = edge_eval_paper }`, [`beside`] sets each row beside the paper's.

pub mod beside;
pub mod compare;
pub mod export;
mod html;
mod join;
mod terminal;

pub use html::{Page, html, pareto, ticks};
pub use join::{LABEL_COLUMNS, compute, labels};
pub use terminal::terminal_table;

use crate::stages::Row;
use engine::row::{Extended, TableRow};
use std::collections::BTreeMap;

engine::table_row! {
    /// One variant × task with the five deployment metrics (`metrics.parquet`). A metric that
    /// cannot be computed is null, and `null_reasons` says why.
    pub struct MetricsRow {
        /// the model node evaluated or measured (its id names the variant)
        variant: String,
        /// the source model it was made from
        model: String,
        /// base | lora | qlora
        method: String,
        /// the precision it was quantized to (source: not quantized)
        precision: String,
        /// the task
        task: String,
        /// where it ran
        device: String,
        /// random weights: speed, energy and memory only
        synthetic: bool,
        /// mean score (0–1) over the evaluated samples
        score: Option<f64>,
        /// 95 % bootstrap interval of the score, low
        score_ci_lo: Option<f64>,
        /// 95 % bootstrap interval of the score, high
        score_ci_hi: Option<f64>,
        /// secondary score: mean ROUGE-L F1 of the outputs against the references (0–1)
        rouge_l: Option<f64>,
        /// samples scored
        samples: Option<usize>,
        /// the `evaluate` stage the score is of (its sample rows in evaluate.parquet have this
        /// stage_id: what `edge-eval compare` pairs two runs' samples by)
        evaluate_stage: Option<String>,
        /// quantization fidelity Q_ret: score retained against the baseline precision of the
        /// same model, on the samples both scored (%)
        q_ret_pct: Option<Extended>,
        /// 95 % interval of Q_ret, low
        q_ret_ci_lo: Option<f64>,
        /// 95 % interval of Q_ret, high
        q_ret_ci_hi: Option<f64>,
        /// the Q_ret (%) the verdict tests (`report { retention = … }`, default 99)
        q_ret_threshold_pct: Option<f64>,
        /// retains at least q_ret_threshold_pct of the baseline's score at 95 % confidence:
        /// yes (interval at or above), no (below), undetermined (straddles it: more samples
        /// would tell)
        q_ret_verdict: Option<String>,
        /// whether the score differs from the baseline's at 95 % confidence: yes (Q_ret's
        /// paired interval excludes 100 %), no (it covers 100 %: the samples cannot tell them
        /// apart)
        q_ret_differs: Option<String>,
        /// mean KL against the reference model over answer positions (nats)
        kl_mean: Option<f64>,
        /// 99th percentile of the per-position KL (nats)
        kl_p99: Option<f64>,
        /// fraction of answer positions where the reference's top token is the variant's
        top1_agreement: Option<f64>,
        /// generated tokens per second at the smallest batch measured
        tokens_per_s: Option<f64>,
        /// the batch size the serving figures are of
        at_batch: Option<usize>,
        /// gross energy per request (J)
        energy_per_request_j: Option<f64>,
        /// net energy per request: idle power subtracted (J)
        energy_per_request_net_j: Option<f64>,
        /// the model's memory as loaded: GPU memory the load took, else RSS growth (B)
        memory_resident_bytes: Option<i64>,
        /// peak RSS growth during the load (B)
        memory_peak_bytes: Option<i64>,
        /// intelligence per watt: score / energy per request (1/J)
        ipw: Option<Extended>,
        /// 95 % interval of IPW, low
        ipw_ci_lo: Option<f64>,
        /// 95 % interval of IPW, high
        ipw_ci_hi: Option<f64>,
        /// IPW on net energy per request (1/J)
        ipw_net: Option<f64>,
        /// system density ρ_sys: tokens/s per GB of resident model memory
        rho_sys: Option<Extended>,
        /// 95 % interval of ρ_sys over the serving windows' repetitions (the memory as
        /// measured), low
        rho_sys_ci_lo: Option<f64>,
        /// 95 % interval of ρ_sys, high
        rho_sys_ci_hi: Option<f64>,
        /// ρ_sys on the peak memory of the load
        rho_sys_peak: Option<f64>,
        /// energy of a cold load (J)
        load_energy_j: Option<f64>,
        /// cold-start tax C_tax: a cold load's energy in requests' worth
        c_tax: Option<Extended>,
        /// 95 % interval of C_tax over the cold loads' and serving windows' repetitions, low
        c_tax_ci_lo: Option<f64>,
        /// 95 % interval of C_tax, high
        c_tax_ci_hi: Option<f64>,
        /// energy that produced the variant: fine-tuning and quantization (J)
        train_energy_j: Option<f64>,
        /// economic break-even N_break: requests after which serving locally has paid for its
        /// training against the API (inf: never)
        n_break: Option<Extended>,
        /// 95 % interval of N_break over the serving windows' repetitions (the training energy
        /// is one measurement), low
        n_break_ci_lo: Option<Extended>,
        /// 95 % interval of N_break, high (inf: some resamples never break even)
        n_break_ci_hi: Option<Extended>,
        /// how each energy figure was obtained, by stage: counter | sampled | rapl | estimated
        energy_sources: BTreeMap<String, String>,
        /// why the null metrics are null, by metric
        null_reasons: Option<BTreeMap<String, String>>,
    }
}

/// Writes `metrics.parquet`, with `paper` rows `paper.parquet`, and `report.html` into `dir`
/// (the run's folder, its stage tables already there); returns their paths.
pub fn write(
    dir: &std::path::Path,
    title: &str,
    rows: &[Row],
    metrics: &[String],
    meta: &BTreeMap<String, String>,
    paper: &[beside::BesideRow],
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut t = engine::table::Table::of(&MetricsRow::columns());
    for r in rows {
        t.push(r)?;
    }
    let pq = dir.join("metrics.parquet");
    engine::table::write_parquet(&pq, &t.finish()?, meta)?;
    let mut written = vec![pq];
    if !paper.is_empty() {
        written.push(beside::write(dir, paper, meta)?);
    }
    written.push(write_page(dir, title, metrics)?);
    Ok(written)
}

/// (Re)writes `report.html` of a run's folder from the tables in it (metrics.parquet, and
/// measure.parquet and paper.parquet where the run has them).
pub fn write_page(
    dir: &std::path::Path,
    title: &str,
    metrics: &[String],
) -> anyhow::Result<std::path::PathBuf> {
    let table = |name: &str| -> anyhow::Result<Vec<Row>> {
        let path = dir.join(name);
        match path.is_file() {
            true => engine::table::read_rows(&path),
            false => Ok(vec![]),
        }
    };
    let rows = table("metrics.parquet")?;
    let meta = engine::table::read_metadata(&dir.join("metrics.parquet"))?;
    let (serving, paper) = (table("measure.parquet")?, table("paper.parquet")?);
    let page = Page {
        title,
        rows: &rows,
        metrics,
        meta: &meta,
        serving: &serving,
        paper: &paper,
    };
    let path = dir.join("report.html");
    engine::cache::write_atomic_via(&dir.join(".report.html.tmp"), &path, html(&page).as_bytes())?;
    Ok(path)
}

// ---------------------------------------------------------------- cells, as both views show them

/// Rows of cells as left-aligned columns two spaces apart, a line each (the first row is the
/// header).
pub(super) fn aligned(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(x, w)| format!("{x:<w$}", w = *w))
            .collect();
        out += line.join("  ").trim_end();
        out += "\n";
    }
    out
}

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
        // A map column (null_reasons, energy_sources): `name: text; …`.
        Some(serde_json::Value::Object(o)) => o
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("null")))
            .collect::<Vec<_>>()
            .join("; "),
        _ => "null".into(),
    }
}

/// A cell with its 95 % interval when the row has one (`score`, `q_ret_pct`, `ipw`, `rho_sys`,
/// `c_tax`, `n_break`).
pub(super) fn cell_ci(row: &Row, k: &str) -> String {
    let base = k.trim_end_matches("_pct");
    let (lo, hi) = (format!("{base}_ci_lo"), format!("{base}_ci_hi"));
    let known = |k: &str| row.get(k).is_some_and(|v| !v.is_null());
    let v = cell(row, k);
    if known(&lo) && known(&hi) && v != "null" {
        format!("{v} [{}, {}]", cell(row, &lo), cell(row, &hi))
    } else {
        v
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
            if m == "q_ret" {
                cols.push(("q_ret_verdict", "retained?"));
                cols.push(("q_ret_differs", "differs?"));
            }
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
            json!({"ipw": "energy per request is null"}),
        );
        let t = terminal_table(&[r.clone()], &["n_break".into(), "ipw".into()]);
        assert!(t.contains("∞"), "{t}");
        assert!(t.contains("null"), "{t}");
        assert!(t.contains("ipw: energy per request is null"), "{t}");
        let meta = BTreeMap::new();
        let page = html(&Page {
            title: "quick<start>",
            rows: &[r],
            metrics: &[],
            meta: &meta,
            serving: &[],
            paper: &[],
        });
        assert!(page.contains("quick&lt;start&gt;"));
        assert!(page.contains("<svg") && !page.contains("<script"));
    }
}
