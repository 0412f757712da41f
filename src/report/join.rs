//! The join: a run's results → one row per variant × task with the five metrics.

use crate::stages::cells::Energy;
use crate::stages::{ColdLoadRow, EvaluateRow, MeasureRow, Row};
use engine::exec::RunReport;
use engine::row::TableRow;
use lang::Pipeline;
use metrics::{Metric, c_tax, ipw, n_break, q_ret, rho_sys};
use serde_json::json;
use spec::{NodeIdx, Value};

/// The rows node `i` stored in this run, read as its table's row type `R` (a group such as
/// [`Energy`] reads from any metered row). Rows that do not read as `R` leave the node out of
/// the report, with a warning.
fn rows_of<R: TableRow>(p: &Pipeline, report: &RunReport, i: NodeIdx) -> Option<Vec<R>> {
    let rows = &report.outcomes.get(i)?.as_ref()?.manifest.as_ref()?.rows;
    match rows.iter().map(R::from_row).collect() {
        Ok(rows) => Some(rows),
        Err(e) => {
            eprintln!(
                "warning: the results of `{}` are left out of the metrics: {e:#}",
                p.nodes[i].id
            );
            None
        }
    }
}

fn node_ref(p: &Pipeline, i: NodeIdx, param: &str) -> Option<NodeIdx> {
    match p.nodes[i].params.get(param) {
        Some(Value::Node(n)) => Some(*n),
        _ => None,
    }
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
                // The stage's last row: quantize has one, finetune's summary comes last.
                let energy = rows_of::<Energy>(p, report, i).and_then(|mut r| r.pop());
                let energy = energy.as_ref();
                match (energy.and_then(|e| e.energy_j), &mut l.train_j) {
                    (Some(e), Some(t)) => *t += e,
                    (None, t) => {
                        *t = None;
                        let why = energy
                            .and_then(|e| e.energy_null_reason.as_deref())
                            .unwrap_or("not computed in this run");
                        l.train_why
                            .get_or_insert(format!("{} energy: {why}", node.id));
                    }
                    _ => {}
                }
                if let Some(s) = energy.and_then(|e| e.energy_source.as_deref()) {
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

fn sample_scores(rows: &[EvaluateRow]) -> Vec<(String, f64)> {
    rows.iter()
        .filter(|r| r.row == "sample")
        .filter_map(|r| Some((r.sample_id.clone()?, r.score?)))
        .collect()
}

/// The summary row of a stage's rows.
fn summary_of<R>(rows: &[R], row: impl Fn(&R) -> &str) -> impl Iterator<Item = &R> {
    rows.iter().filter(move |r| row(r) == "summary")
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
        let eval: Option<Vec<EvaluateRow>> =
            uses(p, "evaluate", m, Some(t)).and_then(|i| rows_of(p, report, i));
        let eval = eval.as_deref();
        let eval_sum = eval.and_then(|r| summary_of(r, |r| &r.row).next());
        let meas: Option<Vec<MeasureRow>> =
            uses(p, "measure", m, Some(t)).and_then(|i| rows_of(p, report, i));
        // The smallest batch measured: single-stream serving, the paper's setting.
        let meas_sum = meas
            .as_deref()
            .and_then(|r| summary_of(r, |r| &r.row).min_by_key(|s| s.batch));
        if eval.is_none() && meas.is_none() {
            // Nothing measured or scored for this pair in this run (failed or interrupted).
            continue;
        }
        let cold: Option<Vec<ColdLoadRow>> =
            uses(p, "cold_load", m, None).and_then(|i| rows_of(p, report, i));
        let cold = cold
            .as_deref()
            .and_then(|r| summary_of(r, |r| &r.row).next());
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
        let synthetic = meas_sum.is_some_and(|s| s.synthetic) || cold.is_some_and(|c| c.synthetic);
        row.insert("synthetic".into(), json!(synthetic));
        let e = |cell: fn(&EvaluateRow) -> Option<f64>| json!(eval_sum.and_then(cell));
        row.insert("score".into(), e(|s| s.score));
        row.insert("score_ci_lo".into(), e(|s| s.score_ci_lo));
        row.insert("score_ci_hi".into(), e(|s| s.score_ci_hi));
        row.insert("kl_mean".into(), e(|s| s.kl_mean));
        row.insert("kl_p99".into(), e(|s| s.kl_p99));
        row.insert("top1_agreement".into(), e(|s| s.top1_agreement));
        row.insert("samples".into(), json!(eval_sum.and_then(|s| s.samples)));
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
                .and_then(|i| rows_of::<EvaluateRow>(p, report, i))
        });
        let qr = match (eval, &base_eval) {
            (Some(v), Some(b)) => q_ret(&sample_scores(v), &sample_scores(b)),
            (None, _) => Metric::null("the variant was not evaluated"),
            (_, None) => Metric::null(format!(
                "no evaluated `{baseline}` baseline of the same model"
            )),
        };
        put(&mut row, "q_ret_pct", &qr, &mut reasons);
        let per_req = meas_sum.and_then(|s| s.energy_per_request_j);
        let per_req_net = meas_sum.and_then(|s| s.energy_per_request_net_j);
        let tps = meas_sum.and_then(|s| s.tokens_per_s);
        row.insert("tokens_per_s".into(), json!(tps));
        row.insert("at_batch".into(), json!(meas_sum.map(|s| s.batch)));
        row.insert("energy_per_request_j".into(), json!(per_req));
        row.insert("energy_per_request_net_j".into(), json!(per_req_net));
        // On a GPU the model's memory is the device memory the load took (NVML); on the CPU the
        // process's RSS growth.
        let resident = cold
            .and_then(|c| c.gpu_resident_bytes.or(c.resident_bytes))
            .map(|b| b as f64);
        let peak = cold.and_then(|c| c.peak_bytes).map(|b| b as f64);
        row.insert(
            "memory_resident_bytes".into(),
            json!(resident.map(|x| x as i64)),
        );
        row.insert("memory_peak_bytes".into(), json!(peak.map(|x| x as i64)));
        let scores: Vec<f64> = eval
            .map(|r| sample_scores(r).into_iter().map(|x| x.1).collect())
            .unwrap_or_default();
        let reps: Vec<f64> = meas_sum
            .map(|s| {
                s.energy_per_request_j_reps
                    .iter()
                    .flatten()
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        let energy_reps = if reps.is_empty() {
            per_req.into_iter().collect()
        } else {
            reps
        };
        put(&mut row, "ipw", &ipw(&scores, &energy_reps), &mut reasons);
        let net: Vec<f64> = per_req_net.into_iter().collect();
        row.insert("ipw_net".into(), json!(ipw(&scores, &net).value));
        put(&mut row, "rho_sys", &rho_sys(tps, resident), &mut reasons);
        row.insert("rho_sys_peak".into(), json!(rho_sys(tps, peak).value));
        let load = cold.and_then(|c| c.energy.energy_j);
        row.insert("load_energy_j".into(), json!(load));
        put(&mut row, "c_tax", &c_tax(load, per_req), &mut reasons);
        row.insert("train_energy_j".into(), json!(lin.train_j));
        let nb = match (&lin.train_why, lin.train_j) {
            (Some(why), _) => Metric::null(why.clone()),
            _ => n_break(lin.train_j, per_req, price, api),
        };
        put(&mut row, "n_break", &nb, &mut reasons);
        let mut sources = lin.sources.clone();
        let measured = [
            ("measure", meas_sum.map(|s| &s.energy)),
            ("cold_load", cold.map(|c| &c.energy)),
        ];
        for (name, energy) in measured {
            if let Some(s) = energy.and_then(|e| e.energy_source.as_deref()) {
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
