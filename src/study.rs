//! A study run: the engine executes the pipeline, then its tables and the join of its results
//! into the five metrics (`metrics.parquet`, `report.html`) are written.

use crate::stages::{REGISTRY, Row};
use anyhow::Result;
use engine::exec::{self, RunSettings};
use lang::Pipeline;
use meter::hw::Hardware;
use spec::Value;
use std::path::{Path, PathBuf};

/// `report { compare = … }`: the EDGE-EVAL paper's Tesla T4 study.
pub const PAPER: &str = "edge_eval_paper";

/// What a run produced: the per-stage report, the files written, the metrics rows, and with
/// `report { compare = edge_eval_paper }` each of them beside the paper's.
pub struct StudyRun {
    pub report: exec::RunReport,
    pub tables: Vec<PathBuf>,
    pub metrics: Vec<Row>,
    pub beside: Vec<crate::report::beside::BesideRow>,
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
    let computed = crate::report::compute(pipeline, &report);
    let metrics: Vec<Row> = computed.iter().map(engine::row::TableRow::to_row).collect();
    let beside = match pipeline.setting("report.compare").and_then(Value::as_str) {
        Some(PAPER) => {
            let paper = crate::paper::Paper::embedded()?;
            crate::report::beside::beside(pipeline, &computed, &paper)?
        }
        _ => vec![],
    };
    if !metrics.is_empty() {
        let meta = engine::table::run_metadata(pipeline, &fingerprint);
        tables.extend(crate::report::write(
            &run_dir,
            &pipeline.name,
            &metrics,
            &report_metrics(pipeline),
            &meta,
            &beside,
        )?);
    }
    crate::results::publish(&results, &run_dir)?;
    Ok(StudyRun {
        report,
        tables,
        metrics,
        beside,
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
