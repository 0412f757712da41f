//! Tables: Arrow columns written as Parquet (atomically: temp file, fsync, rename).
//!
//! `runs.parquet` has one row per stage instance of a run; `<kind>.parquet` has the rows each
//! stage kind produced (cached results included, so a table always describes the whole study).
//! Every file carries key-value metadata: pipeline name and digest, edge-eval version, hardware.

use crate::exec::{Outcome, RunReport};
use crate::row::{Micros, TableRow};
use crate::stage::{ColType, Column, Registry, Row};
use anyhow::{Context, Result};
use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use lang::Pipeline;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One column being built.
enum Builder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Time(TimestampMicrosecondBuilder),
    Map(Box<MapBuilder<StringBuilder, StringBuilder>>),
}

fn map_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::new(None, StringBuilder::new(), StringBuilder::new())
}

/// A table assembled row by row from JSON-like cells, typed by its declared columns.
pub struct Table {
    fields: Vec<Field>,
    builders: Vec<Builder>,
}

#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str,
    Int,
    Float,
    Bool,
    /// Microseconds since the epoch, UTC.
    Time,
    /// Strings to strings.
    Map,
}

impl From<ColType> for Ty {
    fn from(c: ColType) -> Ty {
        match c {
            ColType::Str => Ty::Str,
            ColType::Int => Ty::Int,
            ColType::Float => Ty::Float,
            ColType::Bool => Ty::Bool,
            ColType::Time => Ty::Time,
            ColType::Map => Ty::Map,
        }
    }
}

impl Table {
    /// Attaches `doc` to column `name` as the field's `description` metadata (what the column
    /// holds, with its unit), which Parquet readers show with the schema.
    pub fn describe(&mut self, name: &str, doc: &str) {
        if let Some(f) = self.fields.iter_mut().find(|f| f.name() == name) {
            let meta = std::collections::HashMap::from([("description".into(), doc.into())]);
            *f = f.clone().with_metadata(meta);
        }
    }

    /// A table of declared columns, each described by its documentation.
    pub fn of(columns: &[Column]) -> Table {
        let cols: Vec<(&str, Ty)> = columns.iter().map(|c| (c.name, Ty::from(c.ty))).collect();
        let mut t = Table::new(&cols);
        for c in columns {
            t.describe(c.name, c.doc);
        }
        t
    }

    pub fn new(columns: &[(&str, Ty)]) -> Table {
        let mut fields = vec![];
        let mut builders = vec![];
        for (name, ty) in columns {
            let (dt, b) = match ty {
                Ty::Str => (DataType::Utf8, Builder::Str(StringBuilder::new())),
                Ty::Int => (DataType::Int64, Builder::Int(Int64Builder::new())),
                Ty::Float => (DataType::Float64, Builder::Float(Float64Builder::new())),
                Ty::Bool => (DataType::Boolean, Builder::Bool(BooleanBuilder::new())),
                Ty::Time => (
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    Builder::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
                ),
                // The type exactly as the builder makes it (its entry fields' names, nullability).
                Ty::Map => (
                    map_builder().finish().data_type().clone(),
                    Builder::Map(Box::new(map_builder())),
                ),
            };
            fields.push(Field::new(*name, dt, true));
            builders.push(b);
        }
        Table { fields, builders }
    }

    /// Appends a row; cells are looked up by column name, absent or JSON null → null. A cell of
    /// the wrong type, or a key that is no column (a misspelt or undeclared one, which would
    /// otherwise leave its column all null), is an error naming it: a stage bug, never silently
    /// a null.
    pub fn push(&mut self, row: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
        use serde_json::Value as J;
        if let Some(k) = row
            .keys()
            .find(|k| !self.fields.iter().any(|f| f.name() == k.as_str()))
        {
            anyhow::bail!("`{k}` is not a column of this table (declare it, or fix its spelling)");
        }
        // Check every cell first: a rejected row must not leave the columns uneven.
        for (field, b) in self.fields.iter().zip(&self.builders) {
            let cell = row.get(field.name()).unwrap_or(&J::Null);
            let ok = match (b, cell) {
                (_, J::Null) => true,
                (Builder::Str(_), J::String(_)) => true,
                (Builder::Int(_) | Builder::Time(_), J::Number(n)) => n.as_i64().is_some(),
                (Builder::Float(_), J::Number(_)) => true,
                (Builder::Float(_), J::String(s)) => float_word(s).is_some(),
                (Builder::Bool(_), J::Bool(_)) => true,
                (Builder::Map(_), J::Object(o)) => o.values().all(J::is_string),
                _ => false,
            };
            anyhow::ensure!(
                ok,
                "column `{}`: cannot store {cell} as {}",
                field.name(),
                field.data_type()
            );
        }
        for (field, b) in self.fields.iter().zip(&mut self.builders) {
            let cell = row.get(field.name()).unwrap_or(&J::Null);
            match b {
                Builder::Str(b) => b.append_option(cell.as_str()),
                Builder::Int(b) => b.append_option(cell.as_i64()),
                Builder::Time(b) => b.append_option(cell.as_i64()),
                Builder::Float(b) => {
                    b.append_option(cell.as_f64().or_else(|| cell.as_str().and_then(float_word)))
                }
                Builder::Bool(b) => b.append_option(cell.as_bool()),
                Builder::Map(b) => {
                    if let Some(o) = cell.as_object() {
                        for (k, v) in o {
                            b.keys().append_value(k);
                            b.values().append_option(v.as_str());
                        }
                    }
                    b.append(cell.is_object())?;
                }
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Str(b) => Arc::new(b.finish()),
                    Builder::Int(b) => Arc::new(b.finish()),
                    Builder::Float(b) => Arc::new(b.finish()),
                    Builder::Bool(b) => Arc::new(b.finish()),
                    Builder::Time(b) => Arc::new(b.finish()),
                    Builder::Map(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(self.fields)),
            arrays,
        )?)
    }
}

/// JSON has no infinity: rows spell it "inf" / "-inf" (e.g. N_break when local serving never
/// breaks even) and the table stores the float.
fn float_word(s: &str) -> Option<f64> {
    match s {
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// Writes a batch to `path` as Parquet with key-value metadata, atomically.
pub fn write_parquet(
    path: &Path,
    batch: &RecordBatch,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(
            metadata
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .collect(),
        ))
        .build();
    {
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        // The metadata on the Arrow schema too, where pyarrow's `read_schema(p).metadata` and
        // `read_table(p).schema.metadata` look (DuckDB and polars read the footer's).
        let schema = Arc::new(
            batch.schema().as_ref().clone().with_metadata(
                metadata
                    .clone()
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            ),
        );
        let batch = batch.clone().with_schema(schema.clone())?;
        let mut w = ArrowWriter::try_new(file, schema, Some(props))?;
        w.write(&batch)?;
        let file = w.into_inner()?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

crate::table_row! {
    /// One stage instance of a run (`runs.parquet`).
    pub struct RunRow {
        /// the pipeline's name
        pipeline: String,
        /// the stage's id in the pipeline
        stage_id: String,
        /// the stage kind
        kind: String,
        /// ran | cached | failed | skipped
        status: String,
        /// why the stage failed (null otherwise)
        error: Option<String>,
        /// the stage's cache key
        cache_key: Option<String>,
        /// the digest of the stage's output (what downstream keys contain)
        output_digest: Option<String>,
        /// where the stage runs
        device: String,
        /// whether the stage measures (then it held its device alone)
        measuring: bool,
        /// when this run started the stage (or found it cached)
        started_at: Option<Micros>,
        /// when this run finished with the stage
        finished_at: Option<Micros>,
        /// seconds this run spent on the stage
        seconds: Option<f64>,
        /// when the result was computed (earlier than started_at for a cached result)
        computed_at: Option<Micros>,
        /// seconds the computation took
        computed_seconds: Option<f64>,
        /// the host that computed the result
        computed_on: Option<String>,
        /// the edge-eval version that computed the result
        computed_by_version: Option<String>,
        /// the hardware in the key of a measuring stage, by part (cpu, threads; gpuN, driver)
        hardware: Option<BTreeMap<String, String>>,
    }
}

fn outcome_row(p: &Pipeline, stages: &Registry, i: usize, o: &Outcome) -> RunRow {
    let node = &p.nodes[i];
    let m = o.manifest.as_deref();
    RunRow {
        pipeline: p.name.clone(),
        stage_id: node.id.clone(),
        kind: node.kind().into(),
        status: o.status.as_str().into(),
        error: o.error.clone(),
        cache_key: o.key.clone(),
        output_digest: m.map(|m| m.output_digest.clone()),
        device: node.device().to_string(),
        measuring: stages.of(node).measuring(&node.params),
        started_at: o.started_us.map(Micros),
        finished_at: o.finished_us.map(Micros),
        seconds: o.seconds,
        computed_at: m.map(|m| Micros(m.started_us)),
        computed_seconds: m.map(|m| m.seconds),
        computed_on: m.map(|m| m.provenance.host.clone()),
        computed_by_version: m.map(|m| m.provenance.edge_eval_version.clone()),
        hardware: m
            .and_then(|m| m.components.get("hardware"))
            .and_then(|h| h.as_str())
            .map(meter::hw::fingerprint_parts),
    }
}

/// Key-value metadata every table of a run carries.
pub fn run_metadata(p: &Pipeline, hardware: &str) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    meta.insert("edge_eval.pipeline".to_string(), p.name.clone());
    meta.insert(
        "edge_eval.pipeline_digest".to_string(),
        p.source_digest.clone(),
    );
    meta.insert(
        "edge_eval.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    meta.insert("edge_eval.hardware".to_string(), hardware.to_string());
    // When the run's tables were written: microseconds since the epoch, UTC.
    meta.insert(
        "edge_eval.written_at_us".to_string(),
        crate::cache::now_us().to_string(),
    );
    meta
}

/// The key-value metadata of a Parquet file's footer (the `edge_eval.*` keys of a run table).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a Parquet file", path.display()))?;
    Ok(reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .filter(|kv| kv.key != "ARROW:schema")
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
        .collect())
}

/// Reads a Parquet file back into JSON rows (string, integer, float, boolean, timestamp and
/// string-map columns — timestamps as microseconds, maps as objects; infinities as "inf"), e.g.
/// `metrics.parquet` for `edge-eval report`. Columns of other types read as null.
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    use arrow_array::{
        BooleanArray, Float64Array, Int64Array, MapArray, StringArray, TimestampMicrosecondArray,
    };
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a Parquet file", path.display()))?
        .build()?;
    let mut rows = vec![];
    for batch in reader {
        let batch = batch?;
        let schema = batch.schema();
        for r in 0..batch.num_rows() {
            let mut row = Row::new();
            for (c, field) in schema.fields().iter().enumerate() {
                let col = batch.column(c);
                let v = if col.is_null(r) {
                    serde_json::Value::Null
                } else if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                    serde_json::json!(a.value(r))
                } else if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
                    serde_json::json!(a.value(r))
                } else if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
                    let x = a.value(r);
                    match x {
                        f64::INFINITY => serde_json::json!("inf"),
                        f64::NEG_INFINITY => serde_json::json!("-inf"),
                        x => serde_json::json!(x),
                    }
                } else if let Some(a) = col.as_any().downcast_ref::<BooleanArray>() {
                    serde_json::json!(a.value(r))
                } else if let Some(a) = col.as_any().downcast_ref::<TimestampMicrosecondArray>() {
                    serde_json::json!(a.value(r))
                } else if let Some(a) = col.as_any().downcast_ref::<MapArray>() {
                    let entries = a.value(r);
                    let text = |i: usize| {
                        entries
                            .column(i)
                            .as_any()
                            .downcast_ref::<StringArray>()
                            .map(|s| (0..s.len()).map(|j| s.is_valid(j).then(|| s.value(j))))
                    };
                    match (text(0), text(1)) {
                        (Some(keys), Some(values)) => serde_json::Value::Object(
                            keys.zip(values)
                                .filter_map(|(k, v)| Some((k?.to_string(), serde_json::json!(v))))
                                .collect(),
                        ),
                        _ => serde_json::Value::Null,
                    }
                } else {
                    serde_json::Value::Null
                };
                row.insert(field.name().clone(), v);
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The columns that lead every `<kind>.parquet`: which stage of the run the row is of.
const KEYS: [Column; 3] = [
    Column {
        name: "stage_id",
        ty: ColType::Str,
        doc: "the stage's id in the pipeline",
    },
    Column {
        name: "cache_key",
        ty: ColType::Str,
        doc: "the stage's cache key",
    },
    Column {
        name: "status",
        ty: ColType::Str,
        doc: "ran | cached (this run)",
    },
];

/// Columns that say what each stage row is about, filled by the caller per node (the layer
/// above knows what a model's lineage is: the engine does not): every stage table gets them
/// after its keys, unless it has a column of the same name itself.
#[derive(Default)]
pub struct NodeLabels {
    pub columns: Vec<Column>,
    /// Per node index, the values of some of `columns`.
    pub of: BTreeMap<usize, Row>,
}

/// Writes `runs.parquet` and one `<kind>.parquet` per kind with rows into `dir`; returns the
/// paths.
pub fn write_run_tables(
    dir: &Path,
    p: &Pipeline,
    stages: &Registry,
    report: &RunReport,
    hardware: &str,
    labels: &NodeLabels,
) -> Result<Vec<PathBuf>> {
    let meta = run_metadata(p, hardware);
    let mut written = vec![];

    let mut runs = Table::of(&RunRow::columns());
    let mut per_kind: BTreeMap<&str, (Vec<Column>, Vec<Row>)> = BTreeMap::new();
    for (i, o) in report.outcomes.iter().enumerate() {
        let Some(o) = o else { continue };
        runs.push(&outcome_row(p, stages, i, o).to_row())?;
        let node = &p.nodes[i];
        let stage = stages.of(node);
        let columns = stage.table();
        if let (Some(m), false) = (&o.manifest, columns.is_empty()) {
            let own: Vec<&str> = columns.iter().map(|c| c.name).collect();
            let label_columns: Vec<Column> = labels
                .columns
                .iter()
                .filter(|c| !own.contains(&c.name))
                .copied()
                .collect();
            let entry = per_kind
                .entry(node.kind())
                .or_insert_with(|| ([label_columns.as_slice(), &columns].concat(), vec![]));
            for r in &m.rows {
                let mut row = r.clone();
                row.retain(|k, _| !stage.internal_row_keys().contains(&k.as_str()));
                for (k, v) in labels.of.get(&i).into_iter().flatten() {
                    if label_columns.iter().any(|c| c.name == k) {
                        row.insert(k.clone(), v.clone());
                    }
                }
                row.insert("stage_id".into(), serde_json::json!(node.id));
                row.insert("cache_key".into(), serde_json::json!(m.key));
                row.insert("status".into(), serde_json::json!(o.status.as_str()));
                entry.1.push(row);
            }
        }
    }
    let path = dir.join("runs.parquet");
    write_parquet(&path, &runs.finish()?, &meta)?;
    written.push(path);

    for (kind, (columns, rows)) in per_kind {
        let mut t = Table::of(&[KEYS.as_slice(), &columns].concat());
        for r in &rows {
            t.push(r).with_context(|| format!("table {kind}"))?;
        }
        let path = dir.join(format!("{kind}.parquet"));
        write_parquet(&path, &t.finish()?, &meta)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn typed_rows_round_trip_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Table::new(&[
            ("a", Ty::Str),
            ("n", Ty::Int),
            ("x", Ty::Float),
            ("t", Ty::Time),
        ]);
        let row = |v: serde_json::Value| v.as_object().unwrap().clone();
        t.push(&row(
            serde_json::json!({"a": "one", "n": 1, "x": 0.5, "t": 1_700_000_000_000_000i64}),
        ))
        .unwrap();
        t.push(&row(serde_json::json!({"a": null, "x": 2})))
            .unwrap();
        assert!(t.push(&row(serde_json::json!({"n": "nope"}))).is_err());
        // A misspelt key is refused, not written as an all-null column `n` beside it.
        let e = t.push(&row(serde_json::json!({"nn": 1}))).unwrap_err();
        assert!(e.to_string().contains("`nn` is not a column"), "{e}");
        let path = dir.path().join("t.parquet");
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        write_parquet(&path, &t.finish().unwrap(), &meta).unwrap();
        let b =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        let kv = b
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .clone();
        assert!(
            kv.iter()
                .any(|e| e.key == "k" && e.value.as_deref() == Some("v"))
        );
        let batch = b.build().unwrap().next().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(1).null_count(), 1);
    }

    #[test]
    fn rows_read_back_with_infinity_and_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Table::new(&[("x", Ty::Float), ("t", Ty::Time), ("s", Ty::Str)]);
        let row = |v: serde_json::Value| v.as_object().unwrap().clone();
        t.push(&row(serde_json::json!({"x": "inf", "t": 17, "s": "a"})))
            .unwrap();
        t.push(&row(serde_json::json!({"x": 0.25}))).unwrap();
        assert!(t.push(&row(serde_json::json!({"x": "many"}))).is_err());
        let path = dir.path().join("r.parquet");
        write_parquet(&path, &t.finish().unwrap(), &BTreeMap::new()).unwrap();
        let rows = read_rows(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["x"], "inf");
        assert_eq!(rows[0]["t"], 17);
        assert_eq!(rows[1]["x"], 0.25);
        assert!(rows[1]["s"].is_null());
    }

    #[test]
    fn string_maps_read_back_as_objects_and_null_stays_null() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Table::new(&[("why", Ty::Map), ("n", Ty::Int)]);
        let row = |v: serde_json::Value| v.as_object().unwrap().clone();
        let reasons = serde_json::json!({"ipw": "energy is null", "c_tax": "no load"});
        t.push(&row(serde_json::json!({"why": reasons, "n": 1})))
            .unwrap();
        t.push(&row(serde_json::json!({"n": 2}))).unwrap();
        t.push(&row(serde_json::json!({"why": {}, "n": 3})))
            .unwrap();
        // A map of anything but texts is a stage bug, named.
        let e = t
            .push(&row(serde_json::json!({"why": {"ipw": 1}})))
            .unwrap_err();
        assert!(e.to_string().contains("column `why`"), "{e}");
        let path = dir.path().join("m.parquet");
        write_parquet(&path, &t.finish().unwrap(), &BTreeMap::new()).unwrap();
        let rows = read_rows(&path).unwrap();
        assert_eq!(rows[0]["why"], reasons);
        assert!(rows[1]["why"].is_null());
        assert_eq!(rows[2]["why"], serde_json::json!({}));
        assert_eq!(rows[2]["n"], 3);
    }
}
