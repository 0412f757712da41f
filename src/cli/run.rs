//! `run`: the pipeline executed, then the outcome printed (counts, failures, the metrics
//! table; `--json`); `report DIR` prints the metrics of a finished run again.

use super::*;

/// `edge-eval report DIR`: the metrics table of a finished run, and its HTML page rewritten.
pub(super) fn report_cmd(dir: &Path, metrics: &[String]) -> Result<i32> {
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
    print!("{}", crate::report::terminal_table(&rows, metrics));
    let title = dir
        .file_name()
        .map_or("edge-eval".to_string(), |n| n.to_string_lossy().to_string());
    let page = dir.join("report.html");
    engine::cache::write_atomic_via(
        &dir.join(".report.html.tmp"),
        &page,
        crate::report::html(&title, &rows, metrics).as_bytes(),
    )?;
    eprintln!("wrote {}", page.display());
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
            let table =
                crate::report::terminal_table(&metrics, &crate::study::report_metrics(pipeline));
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
