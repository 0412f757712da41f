//! From a run's results to the answers: one row per variant × task with the five deployment
//! metrics (`metrics.parquet`), a terminal table, and a self-contained HTML report with the
//! efficiency frontier (inline SVG, no JavaScript, works offline).
//!
//! The join: every model node that an `evaluate` or `measure` stage used is a variant; with a
//! task it is a row. Its lineage (the `model` parameters upstream: `quantize`, `finetune`, the
//! source) gives the identifying columns and the energy spent producing it; its baseline is the
//! `quantize` of the same upstream model at the `report { baseline = ... }` precision.

use crate::stages::Row;
use engine::exec::RunReport;
use engine::table::Ty;
use lang::Pipeline;
use metrics::{Metric, c_tax, ipw, n_break, q_ret, rho_sys};
use serde_json::json;
use spec::{NodeIdx, Value};
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

fn manifest_rows(report: &RunReport, i: NodeIdx) -> Option<&[Row]> {
    report
        .outcomes
        .get(i)?
        .as_ref()?
        .manifest
        .as_ref()
        .map(|m| m.rows.as_slice())
}

fn node_ref(p: &Pipeline, i: NodeIdx, param: &str) -> Option<NodeIdx> {
    match p.nodes[i].params.get(param) {
        Some(Value::Node(n)) => Some(*n),
        _ => None,
    }
}

fn summary(rows: &[Row]) -> impl Iterator<Item = &Row> {
    rows.iter()
        .filter(|r| r.get("row").and_then(|v| v.as_str()) == Some("summary"))
}

fn f(row: Option<&Row>, k: &str) -> Option<f64> {
    row?.get(k)?.as_f64()
}

/// What produced a variant: names and the energy of every stage on the way.
struct Lineage {
    source: String,
    method: String,
    precision: String,
    /// The `quantize` node's input, to find the baseline sibling.
    quantized_from: Option<NodeIdx>,
    train_j: Option<f64>,
    train_why: Option<String>,
    sources: Vec<String>,
}

fn lineage(p: &Pipeline, report: &RunReport, mut i: NodeIdx) -> Lineage {
    let mut l = Lineage {
        source: String::new(),
        method: "base".into(),
        precision: "source".into(),
        quantized_from: None,
        train_j: Some(0.0),
        train_why: None,
        sources: vec![],
    };
    for _ in 0..64 {
        let node = &p.nodes[i];
        match node.kind() {
            "quantize" | "finetune" => {
                if node.kind() == "quantize" && l.quantized_from.is_none() {
                    l.precision = node
                        .params
                        .get("precision")
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    l.quantized_from = node_ref(p, i, "model");
                }
                if node.kind() == "finetune" {
                    l.method = node
                        .params
                        .get("method")
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                }
                let row = manifest_rows(report, i).and_then(|r| r.last());
                match (f(row, "energy_j"), &mut l.train_j) {
                    (Some(e), Some(t)) => *t += e,
                    (None, t) => {
                        *t = None;
                        let why = row
                            .and_then(|r| r.get("energy_null_reason"))
                            .and_then(|v| v.as_str())
                            .unwrap_or("not computed in this run");
                        l.train_why
                            .get_or_insert(format!("{} energy: {why}", node.id));
                    }
                    _ => {}
                }
                if let Some(s) = row
                    .and_then(|r| r.get("energy_source"))
                    .and_then(|v| v.as_str())
                {
                    l.sources.push(format!("{}={s}", node.kind()));
                }
                match node_ref(p, i, "model") {
                    Some(up) => i = up,
                    None => break,
                }
            }
            _ => {
                l.source = node
                    .id
                    .split_once(':')
                    .map_or(node.id.as_str(), |x| x.1)
                    .to_string();
                break;
            }
        }
    }
    l
}

/// Stage nodes of `kind` using model `m` (and task `t`, when given).
fn uses(p: &Pipeline, kind: &str, m: NodeIdx, t: Option<NodeIdx>) -> Option<NodeIdx> {
    (0..p.nodes.len()).find(|&i| {
        p.nodes[i].kind() == kind
            && node_ref(p, i, "model") == Some(m)
            && (t.is_none() || node_ref(p, i, "task") == t)
    })
}

fn sample_scores(rows: &[Row]) -> Vec<(String, f64)> {
    rows.iter()
        .filter(|r| r.get("row").and_then(|v| v.as_str()) == Some("sample"))
        .filter_map(|r| {
            Some((
                r.get("sample_id")?.as_str()?.to_string(),
                r.get("score")?.as_f64()?,
            ))
        })
        .collect()
}

fn put(row: &mut Row, name: &str, m: &Metric, reasons: &mut Vec<String>) {
    let v = match m.value {
        Some(x) if x.is_infinite() => json!("inf"),
        x => json!(x),
    };
    row.insert(name.into(), v);
    if m.lo.is_some() {
        let base = name.trim_end_matches("_pct");
        row.insert(format!("{base}_ci_lo"), json!(m.lo));
        row.insert(format!("{base}_ci_hi"), json!(m.hi));
    }
    if let Some(why) = &m.null_reason {
        reasons.push(format!("{name}: {why}"));
    }
}

/// One metrics row per variant × task of the run.
pub fn compute(p: &Pipeline, report: &RunReport) -> Vec<Row> {
    let baseline = p
        .setting("report.baseline")
        .and_then(Value::as_str)
        .unwrap_or("f16");
    let price = p.setting("economics.electricity").and_then(Value::as_f64);
    let api = p.setting("economics.api_request").and_then(Value::as_f64);
    let mut subjects: Vec<(NodeIdx, NodeIdx)> = vec![];
    for (i, n) in p.nodes.iter().enumerate() {
        if matches!(n.kind(), "evaluate" | "measure")
            && let (Some(m), Some(t)) = (node_ref(p, i, "model"), node_ref(p, i, "task"))
            && !subjects.contains(&(m, t))
        {
            subjects.push((m, t));
        }
    }
    let mut out = vec![];
    for (m, t) in subjects {
        let lin = lineage(p, report, m);
        let eval = uses(p, "evaluate", m, Some(t)).and_then(|i| manifest_rows(report, i));
        let eval_sum = eval.and_then(|r| summary(r).next());
        let meas = uses(p, "measure", m, Some(t)).and_then(|i| manifest_rows(report, i));
        // The smallest batch measured: single-stream serving, the paper's setting.
        let meas_sum = meas.and_then(|r| {
            summary(r).min_by_key(|s| s.get("batch").and_then(|b| b.as_i64()).unwrap_or(i64::MAX))
        });
        if eval.is_none() && meas.is_none() {
            // Nothing measured or scored for this pair in this run (failed or interrupted).
            continue;
        }
        let cold = uses(p, "cold_load", m, None)
            .and_then(|i| manifest_rows(report, i))
            .and_then(|r| summary(r).next());
        let mut reasons = vec![];
        let mut row = Row::new();
        row.insert("variant".into(), json!(p.nodes[m].id));
        row.insert("model".into(), json!(lin.source));
        row.insert("method".into(), json!(lin.method));
        row.insert("precision".into(), json!(lin.precision));
        row.insert(
            "task".into(),
            json!(p.nodes[t].id.split_once(':').map_or("", |x| x.1)),
        );
        row.insert("device".into(), json!(p.nodes[m].device().to_string()));
        let synthetic = [meas_sum, cold]
            .iter()
            .any(|r| r.and_then(|r| r.get("synthetic")).and_then(|v| v.as_bool()) == Some(true));
        row.insert("synthetic".into(), json!(synthetic));
        for k in [
            "score",
            "score_ci_lo",
            "score_ci_hi",
            "kl_mean",
            "kl_p99",
            "top1_agreement",
        ] {
            row.insert(k.into(), json!(f(eval_sum, k)));
        }
        row.insert(
            "samples".into(),
            json!(eval_sum.and_then(|s| s.get("samples")).cloned()),
        );
        // Q_ret against the baseline sibling.
        let base_eval = lin.quantized_from.and_then(|up| {
            (0..p.nodes.len())
                .find(|&i| {
                    p.nodes[i].kind() == "quantize"
                        && node_ref(p, i, "model") == Some(up)
                        && p.nodes[i].params.get("precision").and_then(Value::as_str)
                            == Some(baseline)
                })
                .and_then(|b| uses(p, "evaluate", b, Some(t)))
                .and_then(|i| manifest_rows(report, i))
        });
        let qr = match (eval, base_eval) {
            (Some(v), Some(b)) => q_ret(&sample_scores(v), &sample_scores(b)),
            (None, _) => Metric::null("the variant was not evaluated"),
            (_, None) => Metric::null(format!(
                "no evaluated `{baseline}` baseline of the same model"
            )),
        };
        put(&mut row, "q_ret_pct", &qr, &mut reasons);
        let per_req = f(meas_sum, "energy_per_request_j");
        let tps = f(meas_sum, "tokens_per_s");
        row.insert("tokens_per_s".into(), json!(tps));
        row.insert(
            "at_batch".into(),
            json!(meas_sum.and_then(|s| s.get("batch")).cloned()),
        );
        row.insert("energy_per_request_j".into(), json!(per_req));
        row.insert(
            "energy_per_request_net_j".into(),
            json!(f(meas_sum, "energy_per_request_net_j")),
        );
        // On a GPU the model's memory is the device memory the load took (NVML); on the CPU the
        // process's RSS growth.
        let resident = f(cold, "gpu_resident_bytes").or(f(cold, "resident_bytes"));
        let peak = f(cold, "peak_bytes");
        row.insert(
            "memory_resident_bytes".into(),
            json!(resident.map(|x| x as i64)),
        );
        row.insert("memory_peak_bytes".into(), json!(peak.map(|x| x as i64)));
        let scores: Vec<f64> = eval
            .map(|r| sample_scores(r).into_iter().map(|x| x.1).collect())
            .unwrap_or_default();
        let reps: Vec<f64> = meas_sum
            .and_then(|s| s.get("energy_per_request_j_reps"))
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        let energy_reps = if reps.is_empty() {
            per_req.into_iter().collect()
        } else {
            reps
        };
        put(&mut row, "ipw", &ipw(&scores, &energy_reps), &mut reasons);
        let net: Vec<f64> = f(meas_sum, "energy_per_request_net_j")
            .into_iter()
            .collect();
        row.insert("ipw_net".into(), json!(ipw(&scores, &net).value));
        put(&mut row, "rho_sys", &rho_sys(tps, resident), &mut reasons);
        row.insert("rho_sys_peak".into(), json!(rho_sys(tps, peak).value));
        let load = f(cold, "energy_j");
        row.insert("load_energy_j".into(), json!(load));
        put(&mut row, "c_tax", &c_tax(load, per_req), &mut reasons);
        row.insert("train_energy_j".into(), json!(lin.train_j));
        let nb = match (&lin.train_why, lin.train_j) {
            (Some(why), _) => Metric::null(why.clone()),
            _ => n_break(lin.train_j, per_req, price, api),
        };
        put(&mut row, "n_break", &nb, &mut reasons);
        let mut sources = lin.sources.clone();
        for (name, r) in [("measure", meas_sum), ("cold_load", cold)] {
            if let Some(s) = r
                .and_then(|r| r.get("energy_source"))
                .and_then(|v| v.as_str())
            {
                sources.push(format!("{name}={s}"));
            }
        }
        row.insert("energy_sources".into(), json!(sources.join(", ")));
        row.insert(
            "null_reasons".into(),
            json!((!reasons.is_empty()).then(|| reasons.join("; "))),
        );
        out.push(row);
    }
    out
}

/// Indices of the points no other point dominates: (score higher is better, cost lower is
/// better). Ties are kept.
pub fn pareto(points: &[(f64, f64)]) -> Vec<bool> {
    points
        .iter()
        .map(|&(s, c)| {
            !points
                .iter()
                .any(|&(s2, c2)| s2 >= s && c2 <= c && (s2 > s || c2 < c))
        })
        .collect()
}

fn cell(row: &Row, k: &str) -> String {
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
fn cell_ci(row: &Row, k: &str) -> String {
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
fn shown(metrics: &[String]) -> Vec<(&'static str, &'static str)> {
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

/// A plain-text table of the metrics.
pub fn terminal_table(rows: &[Row], metrics: &[String]) -> String {
    let cols = shown(metrics);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|(k, _)| cell_ci(r, k)).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, h))| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |xs: Vec<String>| {
        xs.iter()
            .zip(&widths)
            .map(|(x, w)| format!("{x:<w$}", w = *w))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(cols.iter().map(|(_, h)| h.to_string()).collect()) + "\n";
    for c in cells {
        out += &(line(c) + "\n");
    }
    out += "[lo, hi]: 95 % bootstrap intervals; energy sources are in metrics.parquet\n";
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.get("null_reasons")
                .and_then(|v| v.as_str())
                .map(|why| format!("  {} [{}]: {why}", cell(r, "variant"), cell(r, "task")))
        })
        .collect();
    if !notes.is_empty() {
        out += "null metrics:\n";
        out += &notes.join("\n");
        out += "\n";
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PALETTE: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// An SVG scatter of score (y) against `x`, one colour per task. Scores of different tasks are
/// not comparable, so the Pareto front is computed within each task: its points are drawn large
/// and outlined, joined by a dashed line.
fn frontier_svg(rows: &[Row], x: &str, x_label: &str, lower_is_better: bool) -> String {
    // (label, task, x, score)
    let pts: Vec<(String, String, f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            Some((
                cell(r, "variant"),
                cell(r, "task"),
                r.get(x)?.as_f64()?,
                r.get("score")?.as_f64()?,
            ))
        })
        .collect();
    let (w, h, left, right, top, bottom) = (700.0, 420.0, 60.0, 170.0, 30.0, 60.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    svg += &format!(r##"<rect width="{w}" height="{h}" fill="#fff"/>"##);
    if pts.is_empty() {
        svg += &format!(
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#666">no variant has both a score and {}</text></svg>"##,
            w / 2.0,
            h / 2.0,
            esc(x_label)
        );
        return svg;
    }
    let mut tasks: Vec<String> = pts.iter().map(|p| p.1.clone()).collect();
    tasks.dedup();
    tasks.sort();
    tasks.dedup();
    let mut front = vec![false; pts.len()];
    for t in &tasks {
        let idx: Vec<usize> = (0..pts.len()).filter(|&i| &pts[i].1 == t).collect();
        let costs: Vec<(f64, f64)> = idx
            .iter()
            .map(|&i| (pts[i].3, if lower_is_better { pts[i].2 } else { -pts[i].2 }))
            .collect();
        for (&i, on) in idx.iter().zip(pareto(&costs)) {
            front[i] = on;
        }
    }
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.2), b.max(p.2)));
    let (xmin, xmax) = if xmax > xmin {
        (xmin, xmax)
    } else {
        (xmin - 1.0, xmax + 1.0)
    };
    let pad = (xmax - xmin) * 0.06;
    let (xmin, xmax) = (xmin - pad, xmax + pad);
    let sx = |v: f64| left + (v - xmin) / (xmax - xmin) * (w - left - right);
    let sy = |v: f64| h - bottom - v.clamp(0.0, 1.0) * (h - top - bottom);
    svg += &format!(
        r##"<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="#333"/>"##,
        y0 = h - bottom,
        x1 = w - right
    );
    for k in 0..=4 {
        let v = k as f64 / 4.0;
        svg += &format!(
            r##"<line x1="{left}" y1="{y}" x2="{x1}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end" fill="#333">{v:.2}</text>"##,
            left - 6.0,
            sy(v) + 4.0,
            x1 = w - right,
            y = sy(v)
        );
        let xv = xmin + (xmax - xmin) * v;
        svg += &format!(
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#333">{}</text>"##,
            sx(xv),
            h - bottom + 16.0,
            short_number(xv)
        );
    }
    svg += &format!(
        r##"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">score (0–1)</text>"##,
        left + (w - left - right) / 2.0,
        h - 18.0,
        esc(x_label),
        h / 2.0,
        h / 2.0
    );
    for (ti, t) in tasks.iter().enumerate() {
        let color = PALETTE[ti % PALETTE.len()];
        let mut line: Vec<(f64, f64)> = (0..pts.len())
            .filter(|&i| front[i] && &pts[i].1 == t)
            .map(|i| (sx(pts[i].2), sy(pts[i].3)))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        if line.len() > 1 {
            let path: Vec<String> = line.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            svg += &format!(
                r##"<polyline points="{}" fill="none" stroke="{color}" stroke-dasharray="4 3"/>"##,
                path.join(" ")
            );
        }
        // Legend.
        let ly = top + 14.0 * ti as f64;
        svg += &format!(
            r##"<circle cx="{}" cy="{ly}" r="5" fill="{color}"/><text x="{}" y="{}">task {}</text>"##,
            w - right + 16.0,
            w - right + 26.0,
            ly + 4.0,
            esc(t)
        );
    }
    let ly = top + 14.0 * tasks.len() as f64 + 6.0;
    svg += &format!(
        r##"<circle cx="{}" cy="{ly}" r="6" fill="#fff" stroke="#000" stroke-width="2"/><text x="{}" y="{}">Pareto-optimal</text>"##,
        w - right + 16.0,
        w - right + 26.0,
        ly + 4.0
    );
    for (i, (label, task, xv, s)) in pts.iter().enumerate() {
        let ti = tasks.iter().position(|t| t == task).unwrap_or(0);
        let color = PALETTE[ti % PALETTE.len()];
        let (r, stroke) = if front[i] {
            (6.5, r##" stroke="#000" stroke-width="2""##)
        } else {
            (4.5, "")
        };
        svg += &format!(
            r##"<circle cx="{:.1}" cy="{:.1}" r="{r}" fill="{color}"{stroke}><title>{}</title></circle><text x="{:.1}" y="{:.1}" fill="#333" font-size="10">{}</text>"##,
            sx(*xv),
            sy(*s),
            esc(&format!("{label} [{task}]")),
            sx(*xv) + 8.0,
            sy(*s) - 7.0 - 10.0 * (i % 2) as f64,
            esc(label)
        );
    }
    svg + "</svg>"
}

/// Axis numbers: few significant digits.
fn short_number(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The HTML report: both frontiers and the full metrics table.
pub fn html(title: &str, rows: &[Row], metrics: &[String]) -> String {
    let cols = shown(metrics);
    let mut t = String::from("<table><tr>");
    for (_, h) in &cols {
        t += &format!("<th>{}</th>", esc(h));
    }
    t += "</tr>";
    for r in rows {
        t += "<tr>";
        for (k, _) in &cols {
            t += &format!("<td>{}</td>", esc(&cell_ci(r, k)));
        }
        t += "</tr>";
    }
    t += "</table>";
    let notes: String = rows
        .iter()
        .filter_map(|r| {
            Some(format!(
                "<li><b>{} [{}]</b>: {}</li>",
                esc(&cell(r, "variant")),
                esc(&cell(r, "task")),
                esc(r.get("null_reasons")?.as_str()?)
            ))
        })
        .collect();
    let sources: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|r| {
            r.get("energy_sources")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .collect();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{t0} — edge-eval report</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}.plots{{display:flex;flex-wrap:wrap;gap:1em}}</style></head>
<body><h1>{t0}: efficiency frontier</h1>
<p>Each point is a variant on a task, coloured by task. Outlined points are Pareto-optimal within their task (no other variant of that task scores at least as well at lower cost, or higher density); the dashed line joins them. Hover a point for its name.</p>
<div class="plots"><div><h2>Score vs energy per request</h2>{svg1}</div><div><h2>Score vs system density ρ_sys</h2>{svg2}</div></div>
<h2>Deployment metrics</h2>{t}
<p>Energy sources: {src}</p>
{notes}
<p>Written by edge-eval {ver}. The full table, with intervals, is metrics.parquet beside this file.</p></body></html>
"#,
        t0 = esc(title),
        svg1 = frontier_svg(
            rows,
            "energy_per_request_j",
            "energy per request (J) — lower is better",
            true
        ),
        svg2 = frontier_svg(
            rows,
            "rho_sys",
            "ρ_sys (tokens/s per GB) — higher is better",
            false
        ),
        src = esc(&sources.into_iter().collect::<Vec<_>>().join(" | ")),
        notes = if notes.is_empty() {
            String::new()
        } else {
            format!("<h3>Null metrics</h3><ul>{notes}</ul>")
        },
        ver = env!("CARGO_PKG_VERSION"),
    )
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front() {
        // (score, cost)
        let pts = [(0.9, 10.0), (0.8, 5.0), (0.7, 6.0), (0.9, 12.0), (0.5, 1.0)];
        assert_eq!(pareto(&pts), vec![true, true, false, false, true]);
        assert_eq!(pareto(&[(0.5, 1.0), (0.5, 1.0)]), vec![true, true]);
    }

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
