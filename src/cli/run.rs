//! `run`: the pipeline executed, then the outcome printed (counts, failures, the metrics
//! table; `--json`); `report DIR` prints the metrics of a finished run again.

use super::*;

/// `edge-eval report DIR`: the metrics table of a finished run, and its HTML page rewritten.
pub(super) fn report_cmd(dir: &Path, metrics: &[String], format: &str) -> Result<i32> {
    let title = crate::results::title(dir);
    let dir = &crate::results::resolve(dir);
    let path = dir.join("metrics.parquet");
    if !path.is_file() {
        eprintln!(
            "error: {} does not exist: run a pipeline with `evaluate` or `measure` stages first \
             (its `results` folder holds metrics.parquet)",
            path.display()
        );
        return Ok(2);
    }
    let rows = engine::table::read_rows(&path)?;
    let export = match format {
        "md" => Some(crate::report::export::markdown(&rows, metrics)),
        "csv" => Some(crate::report::export::csv(&rows)),
        "json" => Some(crate::report::export::json(&rows)),
        _ => None,
    };
    if let Some(text) = export {
        print_out(&text)?;
        return Ok(0);
    }
    print!("{}", crate::report::terminal_table(&rows, metrics));
    let page = crate::report::write_page(dir, &title, metrics)?;
    eprintln!("wrote {}", page.display());
    Ok(0)
}

/// `edge-eval compare A [B]`: two runs' metrics side by side.
pub(super) fn compare_cmd(a: &Path, b: Option<&Path>, json: bool) -> Result<i32> {
    let (a, b) = match b {
        Some(b) => (crate::results::resolve(a), crate::results::resolve(b)),
        None => {
            let ids = crate::results::runs(a);
            if ids.len() < 2 {
                return Err(engine::InvalidInput(format!(
                    "{} holds {} run(s): compare needs two (give two folders, or a results \
                     folder with at least two runs in runs/)",
                    a.display(),
                    ids.len()
                ))
                .into());
            }
            let run = |id: &String| a.join(crate::results::RUNS).join(id);
            (run(&ids[ids.len() - 2]), run(&ids[ids.len() - 1]))
        }
    };
    let side = |dir: &Path| -> Result<crate::report::compare::Side> {
        let metrics = dir.join("metrics.parquet");
        if !metrics.is_file() {
            return Err(engine::InvalidInput(format!(
                "{} does not exist: compare reads the metrics of two runs",
                metrics.display()
            ))
            .into());
        }
        let evaluate = dir.join("evaluate.parquet");
        Ok(crate::report::compare::Side {
            label: dir.display().to_string(),
            meta: engine::table::read_metadata(&metrics)?,
            metrics: engine::table::read_rows(&metrics)?,
            evaluate: match evaluate.is_file() {
                true => engine::table::read_rows(&evaluate)?,
                false => vec![],
            },
        })
    };
    let (a, b) = (side(&a)?, side(&b)?);
    if json {
        let out = json!({
            "a": a.label,
            "b": b.label,
            "differences": crate::report::compare::differences(&a, &b),
            "changes": crate::report::compare::changes(&a, &b),
        });
        print_out(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
    } else {
        print_out(&crate::report::compare::text(&a, &b))?;
    }
    Ok(0)
}

/// Runs a pipeline, prints the summary (or JSON) and returns the exit code.
pub fn run(
    pipeline: &Pipeline,
    cache_dir: &Path,
    settings: &RunSettings,
    json: bool,
) -> Result<i32> {
    let crate::study::StudyRun {
        report,
        tables,
        metrics,
        beside,
    } = crate::study::run_and_report(pipeline, cache_dir, settings)?;
    let count = |s: Status| {
        report
            .outcomes
            .iter()
            .flatten()
            .filter(|o| o.status == s)
            .count()
    };
    let failed = count(Status::Failed);
    let code = if report.interrupted {
        130
    } else if failed > 0 {
        1
    } else {
        0
    };
    // The result could not be printed: said on stderr; the run's own code stays (at least 1).
    let unprinted = |e: anyhow::Error| -> Result<i32> {
        eprintln!("error: {e:#}");
        Ok(code.max(1))
    };
    if json {
        let stages: Vec<_> = report
            .outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().map(|o| (i, o)))
            .map(|(i, o)| {
                json!({
                    "id": pipeline.nodes[i].id,
                    "kind": pipeline.nodes[i].kind(),
                    "status": o.status.as_str(),
                    "seconds": o.seconds,
                    "error": o.error,
                })
            })
            .collect();
        let tables: Vec<String> = tables.iter().map(|t| t.display().to_string()).collect();
        if let Err(e) = print_out(&format!(
            "{}\n",
            json!({ "stages": stages, "tables": tables })
        )) {
            return unprinted(e);
        }
    } else {
        eprintln!(
            "{}: {} ran, {} cached, {} failed, {} skipped",
            pipeline.name,
            count(Status::Ran),
            count(Status::Cached),
            failed,
            count(Status::Skipped)
        );
        for (i, o) in report.outcomes.iter().enumerate() {
            if let Some(o) = o.as_ref().filter(|o| o.status == Status::Failed) {
                eprintln!(
                    "  failed {}: {}",
                    pipeline.nodes[i].id,
                    o.error.as_deref().unwrap_or("")
                );
            }
        }
        for t in &tables {
            eprintln!("  wrote {}", t.display());
        }
        if !metrics.is_empty() {
            let mut table =
                crate::report::terminal_table(&metrics, &crate::study::report_metrics(pipeline));
            if !beside.is_empty() {
                table += &format!("\n{}", crate::report::beside::terminal(&beside));
            }
            if let Err(e) = print_out(&format!("\n{table}")) {
                return unprinted(e);
            }
        }
    }
    Ok(code)
}

/// A run's result on stdout. The run keeps SIGPIPE ignored (a closed pipe must not kill it while
/// it writes its tables), so a stdout closed by the reader is an error that says where the
/// results are, not a panic.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| {
            anyhow::anyhow!(
                "could not print the run's result ({e}): the stages that finished are in the \
                 cache and the tables were written; `edge-eval report DIR` prints the metrics again"
            )
        })
}
