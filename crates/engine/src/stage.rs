//! The contract between the engine and a stage kind. Each kind implements [`Stage`]: its
//! signature (kind, role, output, parameters — what the language checks calls against), whether it
//! measures (then its cache key includes the hardware fingerprint and it gets its device
//! exclusively), its table's columns, and `run`, which receives typed parameters and resolved
//! input artifacts — never syntax. A [`Registry`] is the set of kinds a program offers; the
//! engine finds a node's stage there by kind.
//!
//! Model and task *sources* are stage kinds too: the ones that only point at local files compute
//! their digest at plan time ([`Stage::plan_time`]); the others run and are cached like any stage.

/// The identity part of a [`Stage`] impl: kind, version, role, output and summary.
#[macro_export]
macro_rules! stage_meta {
    ($kind:expr, $version:literal, $role:expr, $out:expr, $summary:literal) => {
        fn kind(&self) -> &'static str {
            $kind
        }
        fn version(&self) -> u32 {
            $version
        }
        fn role(&self) -> $crate::stage::Role {
            $role
        }
        fn output(&self) -> $crate::stage::Output {
            $out
        }
        fn summary(&self) -> &'static str {
            $summary
        }
    };
}

use anyhow::{Context, Result, bail};
pub use lang::{Role, Signature, Signatures};
pub use spec::Output;
use spec::{Device, NodeIdx, ParamSpec, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    /// Output digest: what downstream cache keys contain.
    pub digest: String,
    /// Named files (content-addressed objects, or the user's own files for local sources).
    pub files: BTreeMap<String, PathBuf>,
    /// Structured result (e.g. `{"synthetic": true}`), part of the digest.
    pub record: serde_json::Value,
}

/// Column types of stage tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Str,
    Int,
    Float,
    Bool,
    /// Microseconds since the epoch, UTC (a `Micros` field of a row struct).
    Time,
    /// Names to texts (a `BTreeMap<String, String>` field; a JSON object of strings in a row):
    /// Parquet's map of strings.
    Map,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColType,
    pub doc: &'static str,
}

/// A table column (what `Stage::table` lists).
pub fn col(name: &'static str, ty: ColType, doc: &'static str) -> Column {
    Column { name, ty, doc }
}

pub type Row = serde_json::Map<String, serde_json::Value>;

/// What `run` returns. Files live in the stage's work directory and are moved into the cache.
#[derive(Debug, Default)]
pub struct StageOutput {
    pub files: Vec<(String, PathBuf)>,
    /// What downstream stages consume besides the files (part of the output digest): must be
    /// deterministic for stages whose outputs are deterministic.
    pub record: serde_json::Value,
    /// Rows for this kind's table (timings, measurements); not part of the output digest.
    pub rows: Vec<Row>,
}

/// Progress reporting from inside a stage (drawn as a bar with an ETA when the stage sets a length).
pub trait Progress: Send + Sync {
    fn set_length(&self, n: u64);
    fn set_position(&self, n: u64);
    fn message(&self, msg: &str);
}

/// Everything a stage may use while running.
pub struct StageCtx<'a> {
    pub id: &'a str,
    pub params: &'a BTreeMap<String, Value>,
    pub inputs: &'a BTreeMap<NodeIdx, Artifact>,
    /// Directory relative paths in the stage's parameters are resolved against.
    pub base_dir: &'a Path,
    /// Private scratch directory; files returned in [`StageOutput`] must be inside it.
    pub work_dir: &'a Path,
    /// Kept across interrupted attempts of the same stage (same cache key) and removed once the
    /// result is committed: where a stage saves partial progress to resume from.
    pub resume_dir: &'a Path,
    pub device: Device,
    pub progress: Arc<dyn Progress>,
    pub cancel: &'a AtomicBool,
}

impl StageCtx<'_> {
    pub fn param(&self, name: &str) -> &Value {
        self.params.get(name).unwrap_or(&Value::Null)
    }

    /// The parameters as `T`, a struct deriving `Deserialize` whose fields are (some of) the
    /// parameter names: strings and symbols as `String`, quantities as `f64` in their canonical
    /// unit (J, W, s, B, usd), devices as their name, node references as their index. Defaults
    /// were applied by the resolver from the stage's `ParamSpec`s — the one place they are
    /// written — so a field is an `Option` only for a parameter without a default.
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        typed_params(self.params)
            .with_context(|| format!("the parameters of `{}` (a stage bug)", self.id))
    }

    /// The artifact(s) a node-valued parameter refers to, in order.
    pub fn artifacts(&self, name: &str) -> Vec<&Artifact> {
        let mut nodes = vec![];
        self.param(name).nodes(&mut nodes);
        nodes.iter().filter_map(|n| self.inputs.get(n)).collect()
    }

    /// Errors out when the run was interrupted; call between units of work.
    pub fn check_cancelled(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }
}

/// Parameters as `T` (see [`StageCtx::typed`]).
pub fn typed_params<T: serde::de::DeserializeOwned>(params: &BTreeMap<String, Value>) -> Result<T> {
    let plain: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(k, v)| (k.clone(), v.to_plain_json()))
        .collect();
    serde_json::from_value(serde_json::Value::Object(plain))
        .context("they do not fit the stage's typed form")
}

/// The parameters a resolver would bind when a call gives only what is required: defaults (and
/// settings' fallbacks) applied, node references numbered in order, optional ones null. For
/// tests that a stage's typed parameters fit its `ParamSpec`s.
pub fn default_params(specs: &[ParamSpec]) -> BTreeMap<String, Value> {
    let mut nodes = 0;
    specs
        .iter()
        .map(|p| {
            let v = match &p.default {
                spec::Default::Value(v) | spec::Default::Setting(_, Some(v)) => v.clone(),
                spec::Default::Required => {
                    nodes += 1;
                    Value::Node(nodes - 1)
                }
                spec::Default::Optional | spec::Default::Setting(_, None) => Value::Null,
            };
            (p.name.to_string(), v)
        })
        .collect()
}

/// Plan-time services for sources (file digests are memoised by the cache).
pub trait PlanCtx {
    fn digest_path(&self, path: &Path) -> Result<String>;
}

pub trait Stage: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Bump when the stage's output for the same inputs changes: it invalidates cached results.
    fn version(&self) -> u32;
    fn role(&self) -> Role;
    fn output(&self) -> Output;
    fn summary(&self) -> &'static str;
    fn params(&self) -> Vec<ParamSpec>;
    /// Measuring stages are keyed by hardware and hold their device exclusively.
    fn measuring(&self, _params: &BTreeMap<String, Value>) -> bool {
        false
    }
    /// CPU threads the stage keeps busy (its share of the executor's CPU budget).
    fn threads(&self, _params: &BTreeMap<String, Value>) -> usize {
        1
    }
    /// For sources that only read local files: the artifact, computed at plan time.
    fn plan_time(
        &self,
        _params: &BTreeMap<String, Value>,
        _base_dir: &Path,
        _ctx: &dyn PlanCtx,
    ) -> Option<Result<Artifact>> {
        None
    }
    /// What `plan` shows of the work a run would do (finetune: its training tokens), from the
    /// parameters and the inputs' artifacts known at plan time; None: nothing to show.
    fn work_estimate(
        &self,
        _params: &BTreeMap<String, Value>,
        _inputs: &BTreeMap<NodeIdx, Artifact>,
    ) -> Option<String> {
        None
    }
    /// Columns of this kind's table (`<kind>.parquet`); empty: no table.
    fn table(&self) -> Vec<Column> {
        vec![]
    }
    /// Keys of this kind's rows that are no column of its table: kept in the cache's manifest
    /// for the program's own reading (e.g. per-repetition lists), left out of `<kind>.parquet`.
    /// Any other key that is no column is an error when the table is written.
    fn internal_row_keys(&self) -> &'static [&'static str] {
        &[]
    }
    /// Parameters that change only how the stage's rows are shown, not what it computes (an
    /// estimated energy's declared watts): left out of the cache key, so a change of them reruns
    /// nothing, and applied by [`Stage::present`] to the rows of every run, cached or not.
    fn presentation_params(&self) -> &'static [&'static str] {
        &[]
    }
    /// The rows as this run shows them (tables, metrics), from the rows the stage computed and
    /// the cache holds, given the node's parameters (see `presentation_params`).
    fn present(&self, _params: &BTreeMap<String, Value>, _rows: &mut [Row]) {}
    fn run(&self, ctx: &StageCtx) -> Result<StageOutput>;
    /// What a user needs to know beside a failure of `run` (e.g. how much GPU memory was free
    /// when it ran out); by default the error as it is.
    fn explain_failure(&self, e: anyhow::Error, _ctx: &StageCtx) -> anyhow::Error {
        e
    }
}

/// The `device` parameter of every stage that runs on a device (`pipeline.device` by default).
pub fn device_param() -> ParamSpec {
    ParamSpec::setting(
        "device",
        spec::Ty::Device,
        &["pipeline.device"],
        Some(Value::Device(Device::Cpu)),
        "where the stage runs",
    )
}

/// The stage kinds a program offers, and their signatures for the language.
pub struct Registry {
    stages: Vec<&'static dyn Stage>,
    signatures: Signatures,
}

impl Registry {
    pub fn new(stages: Vec<&'static dyn Stage>) -> Registry {
        let signatures = Signatures::new(
            stages
                .iter()
                .map(|s| Signature {
                    kind: s.kind(),
                    role: s.role(),
                    output: s.output(),
                    summary: s.summary(),
                    params: s.params(),
                })
                .collect(),
        );
        Registry { stages, signatures }
    }

    pub fn all(&self) -> &[&'static dyn Stage] {
        &self.stages
    }

    pub fn get(&self, kind: &str) -> Option<&'static dyn Stage> {
        self.stages.iter().copied().find(|s| s.kind() == kind)
    }

    /// The stage of a node of a pipeline resolved against [`Registry::signatures`].
    pub fn of(&self, node: &lang::Node) -> &'static dyn Stage {
        self.get(node.kind()).unwrap_or_else(|| {
            panic!(
                "stage kind `{}` is not in the registry (engine bug)",
                node.kind()
            )
        })
    }

    /// What the language resolves calls against.
    pub fn signatures(&self) -> &Signatures {
        &self.signatures
    }
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The output digest of a node: blake3 over its files' content digests (by name) and its record.
/// Identical bytes give identical digests, which is what makes early cutoff work. Table rows are
/// not part of it (they hold timings and measurements that differ on every run); whatever a
/// downstream stage consumes must be in the files or the record.
pub fn output_digest(
    file_digests: &BTreeMap<String, String>,
    record: &serde_json::Value,
) -> String {
    let canonical = serde_json::json!({ "files": file_digests, "record": record });
    blake3::hash(canonical.to_string().as_bytes())
        .to_hex()
        .to_string()
}
