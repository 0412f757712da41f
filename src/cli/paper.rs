//! `edge-eval paper`: the paper's metric tables recomputed from its raw files and held to the
//! published ones, its claims against its own files (`crate::paper`).

use crate::paper::{METRICS, Paper};
use anyhow::Result;
use std::path::Path;

/// Relative error within which a recomputed table counts as the published one.
const AGREES: f64 = 1e-9;

pub(super) fn paper_cmd(dir: Option<&Path>, table: Option<&str>, json: bool) -> Result<i32> {
    let paper = match dir {
        Some(d) => Paper::from_dir(d)?,
        None => Paper::embedded()?,
    };
    if let Some(metric) = table {
        if !METRICS.contains(&metric) {
            return Err(engine::InvalidInput(format!(
                "--table {metric}: the metrics are {}",
                METRICS.join(", ")
            ))
            .into());
        }
        return print_table(&paper, metric, json);
    }
    let agreements = METRICS
        .iter()
        .map(|m| paper.agreement(m))
        .collect::<Result<Vec<_>>>()?;
    let all_agree = agreements
        .iter()
        .all(|a| a.max_rel_err < AGREES && a.unmatched.is_empty() && a.extra.is_empty());
    let claims = paper.claims()?;
    let (ours, theirs) = (
        paper.n_break_with_production()?,
        paper.recompute("n_break")?,
    );
    let ratios: Vec<f64> = ours
        .iter()
        .filter_map(|a| {
            let b = theirs.iter().find(|b| b.variant == a.variant)?;
            (b.value.is_finite() && b.value > 0.0).then(|| a.value / b.value)
        })
        .collect();
    if json {
        let out = serde_json::json!({
            "agreement": agreements,
            "claims": claims,
            "n_break_with_production": ours,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(if all_agree { 0 } else { 1 });
    }
    println!(
        "The EDGE-EVAL paper (arXiv 2604.19342): its five metric tables recomputed from its raw result\n\
         files (vLLM serving on 2× T4, training energy, quality) with its formulas, through\n\
         edge-eval's metric functions, against the tables it published:"
    );
    for a in &agreements {
        let mut line = format!(
            "  {:<8} {} of {} published rows, max relative error {:.1e}",
            a.metric,
            a.published - a.unmatched.len(),
            a.published,
            a.max_rel_err
        );
        if !a.unmatched.is_empty() || !a.extra.is_empty() {
            line += &format!(
                " ({} not recomputed, {} not published)",
                a.unmatched.len(),
                a.extra.len()
            );
        }
        println!("{line}");
    }
    if let Some(median) = metrics::stats::median(&ratios) {
        println!(
            "\nN_break as edge-eval defines it (the merge and quantize energy counted as well as the\n\
             training): {} variants, {:.2}–{:.2}× the paper's figure (median {median:.2}×).",
            ratios.len(),
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
    }
    println!(
        "Not in the paper's files, so not recomputable in edge-eval's definitions: measured model\n\
         memory (its ρ_sys divides by a table of sizes by parameter count and precision) and a\n\
         metered load energy (its C_tax multiplies the load time by the average serving power)."
    );
    println!("\nIts headline claims against its own files:");
    for c in &claims {
        println!("  - {}\n    its files: {}", c.claim, c.files_say);
    }
    if !all_agree {
        eprintln!("some recomputed table differs from the published one by more than {AGREES:e}");
    }
    Ok(if all_agree { 0 } else { 1 })
}

fn print_table(paper: &Paper, metric: &str, json: bool) -> Result<i32> {
    let recomputed = paper.recompute(metric)?;
    let published = paper.published(metric)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&recomputed)?);
        return Ok(0);
    }
    println!("| family | size | method | task | precision | model | {metric} | published |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &recomputed {
        let v = &r.variant;
        let p = published
            .iter()
            .find(|p| p.variant == r.variant)
            .map_or("—".to_string(), |p| format!("{}", p.value));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {p} |",
            v.family, v.size, v.method, v.task, v.quantization, r.model, r.value
        );
    }
    Ok(0)
}
