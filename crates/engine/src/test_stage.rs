//! `test_stage`: a small, real stage kind for exercising the engine (caching, early cutoff,
//! leases, failures, interruption) without models. Its output file is `emit` followed by the
//! bytes of every input's files, so it behaves like `cat`: identical inputs give identical bytes.
//! `note` changes the cache key but not the output (for early-cutoff tests); `sleep_ms` makes it
//! slow; `fail` makes it fail with that message; `exclusive = true` makes it a measuring stage;
//! `device = cuda(N)` makes a batch scheduler allocate it a GPU (it never touches one).

use crate::row::TableRow;
use crate::stage::{Column, Role, Stage, StageCtx, StageOutput, read};
use anyhow::{Result, bail};
use serde_json::json;
use spec::{Output, ParamSpec, Ty, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub struct TestStage;

crate::table_row! {
    /// What the test stage did (`test_stage.parquet`).
    pub struct TestRow {
        /// size of the output
        bytes: usize,
        /// number of inputs
        inputs: usize,
        /// the emitted text
        emit: String,
        /// CUDA_VISIBLE_DEVICES as the stage saw it (a scheduler's GPU allocation)
        visible_gpus: Option<String>,
    }
}

impl Stage for TestStage {
    crate::stage_meta!(
        "test_stage",
        2,
        Role::Stage,
        Output::Model,
        "engine test stage: concatenates `emit` and its inputs' bytes"
    );
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::optional(
                "input",
                Ty::OneOrList(Box::new(Ty::AnyRef)),
                "inputs to concatenate",
            ),
            ParamSpec::default(
                "emit",
                Ty::Str,
                Value::Str(String::new()),
                "text written first",
            ),
            ParamSpec::optional("note", Ty::Str, "changes the key, not the output"),
            ParamSpec::default(
                "sleep_ms",
                Ty::int(0, 3_600_000),
                Value::Int(0),
                "time to take",
            ),
            ParamSpec::optional("fail", Ty::Str, "fail with this message"),
            ParamSpec::default(
                "exclusive",
                Ty::Bool,
                Value::Bool(false),
                "behave as a measuring stage",
            ),
            ParamSpec::default(
                "threads",
                Ty::int(1, 1024),
                Value::Int(1),
                "CPU threads claimed",
            ),
            crate::stage::device_param(),
        ]
    }
    fn measuring(&self, params: &BTreeMap<String, Value>) -> bool {
        params.get("exclusive").and_then(Value::as_bool) == Some(true)
    }
    fn threads(&self, params: &BTreeMap<String, Value>) -> usize {
        params.get("threads").and_then(Value::as_i64).unwrap_or(1) as usize
    }
    fn table(&self) -> Vec<Column> {
        TestRow::columns()
    }
    fn run(&self, ctx: &StageCtx) -> Result<StageOutput> {
        let sleep = ctx.param("sleep_ms").as_i64().unwrap_or(0) as u64;
        let start = Instant::now();
        let deadline = start + Duration::from_millis(sleep);
        ctx.progress.set_length(sleep.max(1));
        // Write partial output first, so an interrupted run leaves a half-written file behind in
        // its work directory (the cache must never take it as a result).
        let out_path = ctx.work_dir.join("out");
        let mut bytes = ctx.param("emit").as_str().unwrap_or("").as_bytes().to_vec();
        std::fs::write(&out_path, &bytes)?;
        while Instant::now() < deadline {
            ctx.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(10).min(deadline - Instant::now()));
            ctx.progress
                .set_position((start.elapsed().as_millis() as u64).min(sleep));
        }
        if let Some(msg) = ctx.param("fail").as_str() {
            bail!("{msg}");
        }
        let inputs = ctx.artifacts("input");
        for a in &inputs {
            for path in a.files.values() {
                bytes.extend(read(path)?);
            }
        }
        std::fs::write(&out_path, &bytes)?;
        let row = TestRow {
            bytes: bytes.len(),
            inputs: inputs.len(),
            emit: ctx.param("emit").as_str().unwrap_or("").into(),
            visible_gpus: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        };
        Ok(StageOutput {
            files: vec![("out".into(), out_path)],
            record: json!({}),
            rows: vec![row.to_row()],
        })
    }
}
