//! A study run: the engine executes the pipeline, then its tables and the join of its results
//! into the five metrics (`metrics.parquet`, `report.html`) are written.

use crate::stages::{REGISTRY, Row};
use anyhow::Result;
use engine::exec::{self, RunSettings};
use lang::Pipeline;
use meter::hw::Hardware;
use spec::Value;
use std::path::{Path, PathBuf};

/// What a run produced: the per-stage report, the files written, and the metrics rows.
pub struct StudyRun {
    pub report: exec::RunReport,
    pub tables: Vec<PathBuf>,
    pub metrics: Vec<Row>,
}

/// Runs a pipeline (history recorded), then writes its run tables and its metrics into a run
/// folder of its own (`results::new_run`), published as the results folder's latest.
pub fn run_and_report(pipeline: &Pipeline, cache_dir: &Path, s: &RunSettings) -> Result<StudyRun> {
    let report = exec::execute(pipeline, &REGISTRY, cache_dir, s)?;
    let fingerprint = Hardware::detect(s.threads).fingerprint(spec::Device::Cpu);
    let results = pipeline.results_dir();
    let run_dir = crate::results::new_run(&results)?;
    let labels = crate::report::labels(pipeline, &report);
    let mut tables = engine::table::write_run_tables(
        &run_dir,
        pipeline,
        &REGISTRY,
        &report,
        &fingerprint,
        &labels,
    )?;
    // As rows: the views show any table's rows, `edge-eval report` those read back from Parquet.
    let metrics: Vec<Row> = crate::report::compute(pipeline, &report)
        .iter()
        .map(engine::row::TableRow::to_row)
        .collect();
    if !metrics.is_empty() {
        let meta = engine::table::run_metadata(pipeline, &fingerprint);
        tables.extend(crate::report::write(
            &run_dir,
            &pipeline.name,
            &metrics,
            &report_metrics(pipeline),
            &meta,
        )?);
    }
    crate::results::publish(&results, &run_dir)?;
    Ok(StudyRun {
        report,
        tables,
        metrics,
    })
}

/// The metrics the pipeline's `report { metrics = [...] }` shows (empty: all).
pub fn report_metrics(p: &Pipeline) -> Vec<String> {
    match p.setting("report.metrics") {
        Some(Value::List(xs)) => xs
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}
