//! The EDGE-EVAL paper's published results (`reference/edge-eval-paper/`, embedded in the
//! binary): its five metric tables recomputed from its raw tables (serving, training energy,
//! quality) with its formulas — through edge-eval's own metric functions — and held to the
//! tables it published; its headline claims set against what its own files say; and N_break in
//! edge-eval's definition (the merge and quantize energy counted), which its files allow.
//! `edge-eval paper` prints them; `docs/paper-comparison.md` discusses them.

pub mod csv;

use anyhow::{Context, Result, bail};
use csv::Table;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

macro_rules! files {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../reference/edge-eval-paper/", $name)))),*]
    };
}

/// The paper's files, as committed.
const FILES: &[(&str, &str)] = files!(
    "vllm_inference_metrics_tesla_t4_dual.csv",
    "training_energy_log_llama.csv",
    "training_energy_log_qwen.csv",
    "merging_quantization_energy_llama.csv",
    "merging_quantization_energy_qwen.csv",
    "final_36_variants_report_llama.csv",
    "final_36_variants_report_qwen.csv",
    "q_ret.csv",
    "n_break.csv",
    "ipw.csv",
    "rho_sys.csv",
    "c_tax.csv",
);

/// The paper's electricity price (USD per kWh, its `COST_PER_KWH`).
pub const ELECTRICITY_USD_PER_KWH: f64 = 0.12;
/// The paper's API price of a request: GPT-4o, 500 tokens at $2.50 per million.
pub const API_USD_PER_REQUEST: f64 = 500.0 / 1000.0 * 0.0025;

/// The model sizes (GB) the paper divides throughput by for ρ_sys, by size label and precision
/// (its `MODEL_SIZES_GB`: parameters × bytes per weight, not a measurement).
const SIZE_GB: &[(&str, &str, f64)] = &[
    ("1B", "FP16", 2.0),
    ("1B", "INT8", 1.0),
    ("1B", "INT4", 0.625),
    ("3B", "FP16", 6.0),
    ("3B", "INT8", 3.0),
    ("3B", "INT4", 1.875),
    ("7B", "FP16", 14.0),
    ("7B", "INT8", 7.0),
    ("7B", "INT4", 4.375),
];

/// The five metrics, by edge-eval's names.
pub const METRICS: [&str; 5] = ["q_ret", "n_break", "ipw", "rho_sys", "c_tax"];

const FAMILIES: [(&str, &str); 2] = [("Llama", "llama"), ("Qwen", "qwen")];

/// A variant as the paper names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Variant {
    pub family: String,
    pub size: String,
    pub method: String,
    pub task: String,
    pub quantization: String,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{} {} {} {}",
            self.family, self.size, self.method, self.task, self.quantization
        )
    }
}

/// One variant's value of a metric.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub variant: Variant,
    /// The paper's model id of the variant.
    pub model: String,
    /// The metric (N_break may be +∞).
    pub value: f64,
}

/// The variant of row `i` of a published metric table (its Family … Quantization columns).
fn published_variant(t: &Table, i: usize) -> Result<Variant> {
    Ok(Variant {
        family: t.str(i, "Family")?.into(),
        size: t.str(i, "Size")?.into(),
        method: t.str(i, "Method")?.into(),
        task: t.str(i, "Task")?.into(),
        quantization: t.str(i, "Quantization")?.into(),
    })
}

/// The paper's files, read.
pub struct Paper {
    tables: BTreeMap<String, Table>,
}

impl Paper {
    /// The files embedded in the binary (`reference/edge-eval-paper/`).
    pub fn embedded() -> Result<Paper> {
        let mut tables = BTreeMap::new();
        for (name, text) in FILES {
            tables.insert(name.to_string(), Table::parse(name, text)?);
        }
        Ok(Paper { tables })
    }

    /// The same files from a folder (another copy of the paper's `results/`).
    pub fn from_dir(dir: &Path) -> Result<Paper> {
        let mut tables = BTreeMap::new();
        for (name, _) in FILES {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            tables.insert(
                name.to_string(),
                Table::parse(&path.display().to_string(), &text)?,
            );
        }
        Ok(Paper { tables })
    }

    fn table(&self, name: &str) -> &Table {
        &self.tables[name]
    }

    /// The serving rows of one family: (variant, model id, energy per request J, throughput,
    /// load time s, average power W).
    fn serving(&self, family: &str) -> Result<Vec<Serving>> {
        let t = self.table("vllm_inference_metrics_tesla_t4_dual.csv");
        let mut out = vec![];
        for i in 0..t.rows.len() {
            if !t.str(i, "Family")?.eq_ignore_ascii_case(family) {
                continue;
            }
            out.push(Serving {
                variant: Variant {
                    family: family.into(),
                    size: t.str(i, "Size")?.into(),
                    method: t.str(i, "Method")?.into(),
                    task: t.str(i, "Task")?.into(),
                    quantization: t.str(i, "Quantization")?.into(),
                },
                model: t.str(i, "Model_ID")?.into(),
                per_request_j: t.num(i, "Energy_Total_J")? / t.num(i, "Num_Samples")?,
                throughput: t.num(i, "Overall_Throughput")?,
                load_s: t.num(i, "Model_Load_Time")?,
                power_w: t.num(i, "Power_Avg_W")?,
            });
        }
        Ok(out)
    }

    /// The quality rows of one family: (variant parsed from the model id, id, primary score).
    fn quality(&self, family: &str, file: &str) -> Result<Vec<(Variant, String, f64)>> {
        let t = self.table(&format!("final_36_variants_report_{file}.csv"));
        (0..t.rows.len())
            .map(|i| {
                let model = t.str(i, "Model")?;
                Ok((
                    parse_model(family, model),
                    model.to_string(),
                    t.num(i, "Primary_Average")?,
                ))
            })
            .collect()
    }

    /// Training energy (J) by (size, method, task) of one family.
    fn training(&self, file: &str) -> Result<BTreeMap<(String, String, String), f64>> {
        let t = self.table(&format!("training_energy_log_{file}.csv"));
        let mut out = BTreeMap::new();
        for i in 0..t.rows.len() {
            let method = t
                .str(i, "Method")?
                .replace("_FP16", "")
                .replace("_INT4", "");
            let key = (
                t.str(i, "Size")?.to_string(),
                method,
                t.str(i, "Task")?.to_string(),
            );
            // The paper takes the first row of a combination.
            out.entry(key).or_insert(t.num(i, "Joules")?);
        }
        Ok(out)
    }

    /// A metric recomputed from the raw tables with the paper's formulas.
    pub fn recompute(&self, metric: &str) -> Result<Vec<Row>> {
        self.compute(metric, false)
    }

    /// N_break as edge-eval defines it: C_train counts all the energy that produced the variant
    /// (training, and the merge and the quantization logged in `merging_quantization_energy_*`),
    /// where the paper counts the training only.
    pub fn n_break_with_production(&self) -> Result<Vec<Row>> {
        self.compute("n_break", true)
    }

    fn compute(&self, metric: &str, with_production: bool) -> Result<Vec<Row>> {
        let mut rows = vec![];
        for (family, file) in FAMILIES {
            let serving = self.serving(family)?;
            let served = |v: &Variant| serving.iter().find(|s| &s.variant == v);
            match metric {
                "q_ret" => {
                    let quality = self.quality(family, file)?;
                    for (v, model, score) in &quality {
                        if v.quantization != "INT8" && v.quantization != "INT4" {
                            continue;
                        }
                        let fp16 = Variant {
                            quantization: "FP16".into(),
                            ..v.clone()
                        };
                        let Some((_, _, base)) = quality.iter().find(|(b, _, _)| *b == fp16) else {
                            continue;
                        };
                        let one = |s: f64| [("mean".to_string(), s)];
                        if let Some(q) = metrics::q_ret(&one(*score), &one(*base)).value {
                            rows.push(row(v, model, q));
                        }
                    }
                }
                "ipw" => {
                    for (v, model, score) in self.quality(family, file)? {
                        let Some(s) = served(&v) else { continue };
                        // Chat is judged 1–10 in the paper; rag and summ are 0–1.
                        let norm = if v.task == "chat" {
                            score / 10.0
                        } else {
                            score
                        };
                        if let Some(x) = metrics::ipw(&[norm], &[s.per_request_j]).value {
                            rows.push(row(&v, &model, x));
                        }
                    }
                }
                "n_break" => {
                    let training = self.training(file)?;
                    let production = self.production(file)?;
                    for s in &serving {
                        let v = &s.variant;
                        let key = (v.size.clone(), v.method.clone(), v.task.clone());
                        let Some(train) = training.get(&key) else {
                            continue;
                        };
                        let extra = if with_production {
                            let Some(e) = production.get(&s.model) else {
                                bail!("no merge / quantize energy is logged for {}", s.model)
                            };
                            *e
                        } else {
                            0.0
                        };
                        let n = metrics::n_break(
                            Some(train + extra),
                            Some(s.per_request_j),
                            Some(ELECTRICITY_USD_PER_KWH),
                            Some(API_USD_PER_REQUEST),
                        );
                        if let Some(x) = n.value {
                            rows.push(row(v, &s.model, x));
                        }
                    }
                }
                "rho_sys" => {
                    for s in &serving {
                        let v = &s.variant;
                        let Some((_, _, gb)) = SIZE_GB
                            .iter()
                            .find(|(z, q, _)| *z == v.size && *q == v.quantization)
                        else {
                            continue;
                        };
                        if let Some(x) = metrics::rho_sys(Some(s.throughput), Some(gb * 1e9)).value
                        {
                            rows.push(row(v, &s.model, x));
                        }
                    }
                }
                "c_tax" => {
                    for s in &serving {
                        let load_j = s.load_s * s.power_w;
                        if let Some(x) = metrics::c_tax(Some(load_j), Some(s.per_request_j)).value {
                            rows.push(row(&s.variant, &s.model, x));
                        }
                    }
                }
                other => bail!("unknown metric `{other}` (known: {})", METRICS.join(", ")),
            }
        }
        rows.sort_by(|a, b| a.variant.cmp(&b.variant));
        Ok(rows)
    }

    /// Merge + quantize energy (J) of each variant by model id: a LoRA variant's merge (logged
    /// on its FP16 row) plus its own quantization; a merged QLoRA model's merge.
    fn production(&self, file: &str) -> Result<BTreeMap<String, f64>> {
        let t = self.table(&format!("merging_quantization_energy_{file}.csv"));
        let mut merge: BTreeMap<String, f64> = BTreeMap::new();
        let mut by_repo = vec![];
        for i in 0..t.rows.len() {
            let adapter = t.str(i, "Adapter_Name")?.to_string();
            let joules = t.num(i, "Total_Joules")?;
            if t.str(i, "Operation")? == "MERGE" {
                merge.insert(adapter.clone(), joules);
            }
            by_repo.push((
                t.str(i, "HF_Repo")?.to_string(),
                adapter,
                t.str(i, "Operation")?.to_string(),
                joules,
            ));
        }
        let mut out = BTreeMap::new();
        for (repo, adapter, op, joules) in by_repo {
            let merged = merge.get(&adapter).copied().unwrap_or(0.0);
            let total = if op == "MERGE" {
                joules
            } else {
                merged + joules
            };
            out.insert(repo, total);
        }
        Ok(out)
    }

    /// The metric as the paper published it.
    pub fn published(&self, metric: &str) -> Result<Vec<Row>> {
        let (file, column) = match metric {
            "q_ret" => ("q_ret.csv", "Q_ret_%"),
            "n_break" => ("n_break.csv", "N_break"),
            "ipw" => ("ipw.csv", "IPW"),
            "rho_sys" => ("rho_sys.csv", "rho_sys_tokens_s_per_GB"),
            "c_tax" => ("c_tax.csv", "C_tax"),
            other => bail!("unknown metric `{other}` (known: {})", METRICS.join(", ")),
        };
        let t = self.table(file);
        let mut rows = (0..t.rows.len())
            .map(|i| {
                Ok(Row {
                    variant: published_variant(t, i)?,
                    model: t.str(i, "Model_Name")?.into(),
                    value: t.num(i, column)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        rows.sort_by(|a, b| a.variant.cmp(&b.variant));
        Ok(rows)
    }

    /// Per variant, the normalised score (0–1) and the energy per request (J) that its IPW
    /// divides (`ipw.csv`): where it stands on a score-vs-energy frontier.
    pub fn score_and_energy(&self) -> Result<BTreeMap<Variant, (f64, f64)>> {
        let t = self.table("ipw.csv");
        (0..t.rows.len())
            .map(|i| {
                let at = (
                    t.num(i, "Normalized_Score_0_1")?,
                    t.num(i, "Energy_per_Req_J")?,
                );
                Ok((published_variant(t, i)?, at))
            })
            .collect()
    }

    /// How a recomputed metric table compares with the published one.
    pub fn agreement(&self, metric: &str) -> Result<Agreement> {
        let recomputed = self.recompute(metric)?;
        let published = self.published(metric)?;
        let mut max_rel_err = 0f64;
        let mut unmatched = vec![];
        for p in &published {
            match recomputed.iter().find(|r| r.variant == p.variant) {
                Some(r) => max_rel_err = max_rel_err.max(relative_error(r.value, p.value)),
                None => unmatched.push(p.variant.clone()),
            }
        }
        let extra = recomputed
            .iter()
            .filter(|r| !published.iter().any(|p| p.variant == r.variant))
            .map(|r| r.variant.clone())
            .collect();
        Ok(Agreement {
            metric: metric.into(),
            published: published.len(),
            recomputed: recomputed.len(),
            max_rel_err,
            unmatched,
            extra,
        })
    }

    /// The paper's headline claims against its own files.
    pub fn claims(&self) -> Result<Vec<Claim>> {
        let n_break = self.recompute("n_break")?;
        let rho = self.recompute("rho_sys")?;
        let is =
            |r: &&Row, size: &str, q: &str| r.variant.size == size && r.variant.quantization == q;
        let values = |rows: &[Row], f: &dyn Fn(&&Row) -> bool| -> Vec<f64> {
            rows.iter().filter(f).map(|r| r.value).collect()
        };
        let mut claims = vec![];

        let llama_1b_int4 = values(&n_break, &|r| {
            r.variant.family == "Llama" && is(r, "1B", "INT4")
        });
        claims.push(Claim {
            claim: "N_break: Llama-1B at INT4 breaks even in 14 requests (median)",
            files_say: format!(
                "its {} rows (LoRA and QLoRA × 3 tasks): mean {:.1}, median {:.1} requests",
                llama_1b_int4.len(),
                mean(&llama_1b_int4),
                median(&llama_1b_int4)
            ),
        });

        let all = values(&rho, &|r| is(r, "1B", "INT4"));
        let task_range = |task: &str| {
            let v = values(&rho, &|r| is(r, "1B", "INT4") && r.variant.task == task);
            format!("{task} {:.0}–{:.0}", min(&v), max(&v))
        };
        claims.push(Claim {
            claim: "ρ_sys: 1B models at INT4 exceed 6,900 tokens/s/GB",
            files_say: format!(
                "the mean of its {} rows is {:.0}; per task {}, {}, {} (family × method rows)",
                all.len(),
                mean(&all),
                task_range("rag"),
                task_range("summ"),
                task_range("chat")
            ),
        });

        let fp16_7b = values(&rho, &|r| is(r, "7B", "FP16"));
        claims.push(Claim {
            claim: "ρ_sys of a 1B model at INT4 is about 3–4× that of a 7B model at FP16",
            files_say: format!(
                "mean {:.0} against {:.1} tokens/s/GB: {:.0}×",
                mean(&all),
                mean(&fp16_7b),
                mean(&all) / mean(&fp16_7b)
            ),
        });

        let mut summed = vec![];
        let mut per_task = vec![];
        for (family, file) in FAMILIES {
            let t = self.training(file)?;
            for size in ["1B", "3B", "7B"] {
                let mut lora = 0.0;
                let mut qlora = 0.0;
                for task in ["rag", "summ", "chat"] {
                    let get = |m: &str| t.get(&(size.into(), m.into(), task.into())).copied();
                    if let (Some(l), Some(q)) = (get("LoRA"), get("QLoRA")) {
                        lora += l;
                        qlora += q;
                        per_task.push((q / l, format!("{family}-{size} {task}")));
                    }
                }
                if lora > 0.0 {
                    summed.push((qlora / lora, format!("{family}-{size}")));
                }
            }
        }
        let top = |v: &[(f64, String)]| {
            v.iter()
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(x, w)| format!("{x:.1}× ({w})"))
                .unwrap_or_default()
        };
        claims.push(Claim {
            claim: "QLoRA costs up to 7× the adaptation energy of LoRA",
            files_say: format!(
                "summed over the three tasks at most {}; per task up to {}",
                top(&summed),
                top(&per_task)
            ),
        });
        Ok(claims)
    }
}

struct Serving {
    variant: Variant,
    model: String,
    per_request_j: f64,
    throughput: f64,
    load_s: f64,
    power_w: f64,
}

fn row(v: &Variant, model: &str, value: f64) -> Row {
    Row {
        variant: v.clone(),
        model: model.into(),
        value,
    }
}

/// A quality row's variant from its model id, by the paper's rules (`extract_model_components`:
/// the size from `-1B_`, the method from `QLoRA` in the name, the task from `_rag-` …, the
/// precision from the suffix, `-MERGED` being INT4).
fn parse_model(family: &str, model: &str) -> Variant {
    let name = model.rsplit('/').next().unwrap_or(model);
    let size = ["1B", "3B", "7B"]
        .into_iter()
        .find(|s| name.contains(&format!("-{s}_")) || name.contains(&format!("_{s}_")))
        .unwrap_or("");
    let method = if name.contains("QLoRA") {
        "QLoRA"
    } else {
        "LoRA"
    };
    let lower = name.to_lowercase();
    let task = ["rag", "summ", "chat"]
        .into_iter()
        .find(|t| name.contains(&format!("_{t}-")) || lower.contains(&format!("_{t}")))
        .unwrap_or("");
    let quantization = [
        ("-MERGED", "INT4"),
        ("-INT8", "INT8"),
        ("-INT4", "INT4"),
        ("-FP16", "FP16"),
    ]
    .into_iter()
    .find(|(suffix, _)| name.ends_with(suffix))
    .map_or("Unknown", |(_, q)| q);
    Variant {
        family: family.into(),
        size: size.into(),
        method: method.into(),
        task: task.into(),
        quantization: quantization.into(),
    }
}

/// |a − b| / |b|; 0 when both are the same infinity, +∞ when only one is infinite or either is
/// not a number (so that it can never pass for agreement).
fn relative_error(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else if a.is_infinite() || b.is_infinite() || a.is_nan() || b.is_nan() {
        f64::INFINITY
    } else {
        (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
    }
}

fn mean(v: &[f64]) -> f64 {
    metrics::stats::mean(v).unwrap_or(f64::NAN)
}

fn median(v: &[f64]) -> f64 {
    metrics::stats::median(v).unwrap_or(f64::NAN)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// A recomputed metric table beside the published one.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    pub metric: String,
    /// Rows of the published table.
    pub published: usize,
    /// Rows recomputed.
    pub recomputed: usize,
    /// The largest |recomputed − published| / |published| over the published rows.
    pub max_rel_err: f64,
    /// Published rows not recomputed.
    pub unmatched: Vec<Variant>,
    /// Recomputed rows the paper did not publish.
    pub extra: Vec<Variant>,
}

/// A headline claim and what the paper's own files say of it.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    pub claim: &'static str,
    pub files_say: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_parse_as_the_papers_script_parses_them() {
        let v = parse_model("Llama", "EkcupKadakChai/Llama-3B_QLoRA_INT4_rag-MERGED");
        assert_eq!(
            (
                v.size.as_str(),
                v.method.as_str(),
                v.task.as_str(),
                v.quantization.as_str()
            ),
            ("3B", "QLoRA", "rag", "INT4")
        );
        let v = parse_model("Qwen", "aclnlp/Qwen-7B_LoRA_FP16_summ-INT8");
        assert_eq!(
            (v.size.as_str(), v.task.as_str(), v.quantization.as_str()),
            ("7B", "summ", "INT8")
        );
    }

    #[test]
    fn relative_errors_treat_equal_infinities_as_agreement() {
        assert_eq!(relative_error(f64::INFINITY, f64::INFINITY), 0.0);
        assert_eq!(relative_error(1.0, f64::INFINITY), f64::INFINITY);
        assert_eq!(relative_error(f64::NAN, 1.0), f64::INFINITY);
        assert_eq!(relative_error(1.0, f64::NAN), f64::INFINITY);
        assert!((relative_error(1.0 + 1e-12, 1.0) - 1e-12).abs() < 1e-15);
    }
}
