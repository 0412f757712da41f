//! The join: a run's results → one row per variant × task with the five metrics.

use super::MetricsRow;
use crate::stages::cells::Energy;
use crate::stages::kind::{COLD_LOAD, EVALUATE, FINETUNE, MEASURE, QUANTIZE};
use crate::stages::{ColdLoadRow, EvaluateRow, MeasureRow};
use engine::exec::RunReport;
use engine::row::{Extended, TableRow};
use engine::stage::{ColType, Column};
use engine::table::NodeLabels;
use lang::Pipeline;
use metrics::{
    Metric, c_tax, differs_from_baseline, ipw, n_break, q_ret, retention_verdict, rho_sys, stats,
};
use serde_json::json;
use spec::{NodeIdx, Value};
use std::collections::BTreeMap;

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
    /// How the energy of each stage of the lineage was obtained, by stage id.
    sources: BTreeMap<String, String>,
}

fn lineage(p: &Pipeline, report: &RunReport, mut i: NodeIdx) -> Lineage {
    let mut l = Lineage {
        source: String::new(),
        method: "base".into(),
        precision: "source".into(),
        quantized_from: None,
        train_j: Some(0.0),
        train_why: None,
        sources: BTreeMap::new(),
    };
    for _ in 0..64 {
        let node = &p.nodes[i];
        match node.kind() {
            QUANTIZE | FINETUNE => {
                if node.kind() == QUANTIZE && l.quantized_from.is_none() {
                    l.precision = node
                        .params
                        .get("precision")
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    l.quantized_from = node_ref(p, i, "model");
                }
                if node.kind() == FINETUNE {
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
                    l.sources.insert(node.id.clone(), s.to_string());
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

const fn label(name: &'static str, doc: &'static str) -> Column {
    Column {
        name,
        ty: ColType::Str,
        doc,
    }
}

/// The columns every stage table gets besides its own (`engine::table::NodeLabels`): which
/// variant a row is about, what it was made from, the task and the device — from the resolved
/// pipeline, so nobody has to parse stage ids.
pub const LABEL_COLUMNS: [Column; 6] = [
    label(
        "variant",
        "the model the row is about: the stage's `model` input, or the model a quantize / finetune row produced (its node id names the variant)",
    ),
    label("model", "the source model it was made from"),
    label("method", "base | lora | qlora"),
    label(
        "precision",
        "the precision it was quantized to (source: not quantized)",
    ),
    label("task", "the task the stage used (null: none)"),
    label("device", "where the stage ran: cpu | cuda(N)"),
];

/// The label columns' values of every stage node of the pipeline.
pub fn labels(p: &Pipeline, report: &RunReport) -> NodeLabels {
    let mut of = BTreeMap::new();
    for (i, n) in p.nodes.iter().enumerate() {
        if n.role() != lang::Role::Stage {
            continue;
        }
        let subject = match n.kind() {
            QUANTIZE | FINETUNE => Some(i),
            _ => node_ref(p, i, "model"),
        };
        let mut row = crate::stages::Row::new();
        if let Some(m) = subject {
            let lin = lineage(p, report, m);
            row.insert("variant".into(), json!(p.nodes[m].id));
            row.insert("model".into(), json!(lin.source));
            row.insert("method".into(), json!(lin.method));
            row.insert("precision".into(), json!(lin.precision));
        }
        if let Some(t) = node_ref(p, i, "task") {
            let task = &p.nodes[t].id;
            row.insert(
                "task".into(),
                json!(task.split_once(':').map_or(task.as_str(), |x| x.1)),
            );
        }
        row.insert("device".into(), json!(n.device().to_string()));
        of.insert(i, row);
    }
    NodeLabels {
        columns: LABEL_COLUMNS.to_vec(),
        of,
    }
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

/// A repetition cell's values, when every repetition has one (else none: the summary's median
/// is null then too).
fn complete(cells: impl Iterator<Item = Option<f64>>) -> Vec<f64> {
    cells.collect::<Option<Vec<f64>>>().unwrap_or_default()
}

/// A metric's value as its column stores it (infinity included).
fn value(m: &Metric) -> Option<Extended> {
    m.value.map(Extended)
}

/// One metrics row per variant × task of the run.
pub fn compute(p: &Pipeline, report: &RunReport) -> Vec<MetricsRow> {
    let baseline = p
        .setting("report.baseline")
        .and_then(Value::as_str)
        .unwrap_or("f16");
    let retention = p
        .setting("report.retention")
        .and_then(Value::as_f64)
        .unwrap_or(99.0);
    let price = p.setting("economics.electricity").and_then(Value::as_f64);
    let api = p.setting("economics.api_request").and_then(Value::as_f64);
    let mut subjects: Vec<(NodeIdx, NodeIdx)> = vec![];
    for (i, n) in p.nodes.iter().enumerate() {
        if matches!(n.kind(), EVALUATE | MEASURE)
            && let (Some(m), Some(t)) = (node_ref(p, i, "model"), node_ref(p, i, "task"))
            && !subjects.contains(&(m, t))
        {
            subjects.push((m, t));
        }
    }
    let mut out = vec![];
    for (m, t) in subjects {
        let lin = lineage(p, report, m);
        let eval_node = uses(p, EVALUATE, m, Some(t));
        let eval: Option<Vec<EvaluateRow>> = eval_node.and_then(|i| rows_of(p, report, i));
        let eval = eval.as_deref();
        let eval_sum = eval.and_then(|r| summary_of(r, |r| &r.row).next());
        let meas_node = uses(p, MEASURE, m, Some(t));
        let meas: Option<Vec<MeasureRow>> = meas_node.and_then(|i| rows_of(p, report, i));
        // The smallest batch measured: single-stream serving, the paper's setting.
        let meas_sum = meas
            .as_deref()
            .and_then(|r| summary_of(r, |r| &r.row).min_by_key(|s| s.batch));
        if eval.is_none() && meas.is_none() {
            // Nothing measured or scored for this pair in this run (failed or interrupted).
            continue;
        }
        let cold_node = uses(p, COLD_LOAD, m, None);
        let loads: Option<Vec<ColdLoadRow>> = cold_node.and_then(|i| rows_of(p, report, i));
        let cold = loads
            .as_deref()
            .and_then(|r| summary_of(r, |r| &r.row).next());
        let synthetic = meas_sum.is_some_and(|s| s.synthetic) || cold.is_some_and(|c| c.synthetic);
        // Q_ret against the baseline sibling.
        let base_eval = lin.quantized_from.and_then(|up| {
            (0..p.nodes.len())
                .find(|&i| {
                    p.nodes[i].kind() == QUANTIZE
                        && node_ref(p, i, "model") == Some(up)
                        && p.nodes[i].params.get("precision").and_then(Value::as_str)
                            == Some(baseline)
                })
                .and_then(|b| uses(p, EVALUATE, b, Some(t)))
                .and_then(|i| rows_of::<EvaluateRow>(p, report, i))
        });
        let qr = match (eval, &base_eval) {
            (Some(v), Some(b)) => q_ret(&sample_scores(v), &sample_scores(b)),
            (None, _) => Metric::null("the variant was not evaluated"),
            (_, None) => Metric::null(format!(
                "no evaluated `{baseline}` baseline of the same model"
            )),
        };
        let per_req = meas_sum.and_then(|s| s.energy_per_request_j);
        let per_req_net = meas_sum.and_then(|s| s.energy_per_request_net_j);
        let tps = meas_sum.and_then(|s| s.tokens_per_s);
        // On a GPU the model's memory is the device memory the load took (NVML); on the CPU the
        // process's RSS growth.
        let resident = cold.and_then(|c| c.gpu_resident_bytes.or(c.resident_bytes));
        let peak = cold.and_then(|c| c.peak_bytes).map(|b| b as i64);
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
        let ip = ipw(&scores, &energy_reps);
        let net: Vec<f64> = per_req_net.into_iter().collect();
        // The repetitions behind the summaries' medians: the serving windows at the batch the
        // figures are of, and the cold loads.
        let windows: Vec<&MeasureRow> = meas
            .iter()
            .flatten()
            .filter(|r| r.row == "repeat" && Some(r.batch) == meas_sum.map(|s| s.batch))
            .collect();
        let tps_reps = complete(windows.iter().map(|r| r.tokens_per_s));
        let req_reps = complete(windows.iter().map(|r| r.energy_per_request_j));
        let load_rows: Vec<&ColdLoadRow> = loads
            .iter()
            .flatten()
            .filter(|r| r.row == "repeat")
            .collect();
        // The memory ρ_sys divides by stays the summary's: on a GPU it is the largest load's
        // (later loads in one process add little), so its repetitions are no sample of it.
        let memory: Vec<f64> = resident.map(|b| b as f64).into_iter().collect();
        let load_reps = complete(load_rows.iter().map(|c| c.energy.energy_j));
        let with_reps = |m: Metric, groups: &[&[f64]], f: &dyn Fn(&[f64]) -> Metric| match m.value {
            Some(_) => {
                let ci = stats::repetitions_interval(groups, |x| f(x).value);
                m.with_interval(ci)
            }
            None => m,
        };
        let rho = with_reps(
            rho_sys(tps, resident.map(|b| b as f64)),
            &[&tps_reps, &memory],
            &|x| rho_sys(Some(x[0]), Some(x[1])),
        );
        let load = cold.and_then(|c| c.energy.energy_j);
        let tax = with_reps(c_tax(load, per_req), &[&load_reps, &req_reps], &|x| {
            c_tax(Some(x[0]), Some(x[1]))
        });
        let nb = match (&lin.train_why, lin.train_j) {
            (Some(why), _) => Metric::null(why.clone()),
            _ => with_reps(
                n_break(lin.train_j, per_req, price, api),
                &[&req_reps],
                &|x| n_break(lin.train_j, Some(x[0]), price, api),
            ),
        };
        let mut sources = lin.sources.clone();
        let measured = [
            (meas_node, meas_sum.map(|s| &s.energy)),
            (cold_node, cold.map(|c| &c.energy)),
        ];
        for (node, energy) in measured {
            if let (Some(i), Some(s)) = (node, energy.and_then(|e| e.energy_source.as_deref())) {
                sources.insert(p.nodes[i].id.clone(), s.to_string());
            }
        }
        let reasons: BTreeMap<String, String> = [
            ("q_ret_pct", &qr),
            ("ipw", &ip),
            ("rho_sys", &rho),
            ("c_tax", &tax),
            ("n_break", &nb),
        ]
        .iter()
        .filter_map(|(name, m)| Some((name.to_string(), m.null_reason.clone()?)))
        .collect();
        let e = |cell: fn(&EvaluateRow) -> Option<f64>| eval_sum.and_then(cell);
        let row = MetricsRow {
            variant: p.nodes[m].id.clone(),
            model: lin.source,
            method: lin.method,
            precision: lin.precision,
            task: p.nodes[t]
                .id
                .split_once(':')
                .map_or("", |x| x.1)
                .to_string(),
            device: p.nodes[m].device().to_string(),
            synthetic,
            score: e(|s| s.score),
            score_ci_lo: e(|s| s.score_ci_lo),
            score_ci_hi: e(|s| s.score_ci_hi),
            rouge_l: e(|s| s.rouge_l),
            samples: eval_sum.and_then(|s| s.samples),
            evaluate_stage: eval_node
                .filter(|_| eval.is_some())
                .map(|i| p.nodes[i].id.clone()),
            q_ret_pct: value(&qr),
            q_ret_ci_lo: qr.lo,
            q_ret_ci_hi: qr.hi,
            q_ret_threshold_pct: qr.value.map(|_| retention),
            q_ret_verdict: retention_verdict(&qr, retention).map(str::to_string),
            q_ret_differs: differs_from_baseline(&qr).map(str::to_string),
            kl_mean: e(|s| s.kl_mean),
            kl_p99: e(|s| s.kl_p99),
            top1_agreement: e(|s| s.top1_agreement),
            tokens_per_s: tps,
            at_batch: meas_sum.map(|s| s.batch),
            energy_per_request_j: per_req,
            energy_per_request_net_j: per_req_net,
            memory_resident_bytes: resident,
            memory_peak_bytes: peak,
            ipw: value(&ip),
            ipw_ci_lo: ip.lo,
            ipw_ci_hi: ip.hi,
            ipw_net: ipw(&scores, &net).value,
            rho_sys: value(&rho),
            rho_sys_ci_lo: rho.lo,
            rho_sys_ci_hi: rho.hi,
            rho_sys_peak: rho_sys(tps, peak.map(|b| b as f64)).value,
            load_energy_j: load,
            c_tax: value(&tax),
            c_tax_ci_lo: tax.lo,
            c_tax_ci_hi: tax.hi,
            train_energy_j: lin.train_j,
            n_break: value(&nb),
            n_break_ci_lo: nb.lo.map(Extended),
            n_break_ci_hi: nb.hi.map(Extended),
            energy_sources: sources,
            null_reasons: (!reasons.is_empty()).then_some(reasons),
        };
        out.push(row);
    }
    out
}
