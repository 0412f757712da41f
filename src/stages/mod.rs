//! Stage kinds. Each kind is one module implementing [`Stage`]: its parameters (checked by the
//! resolver), whether it measures (then its cache key includes the hardware fingerprint and it
//! gets its device exclusively), and `run`, which receives typed parameters and resolved input
//! artifacts — never syntax.
//!
//! Model and task *sources* (`path`, `hf`, `pip`, `synthetic`, `jsonl`) are stage kinds too:
//! the ones that only point at local files compute their digest at plan time
//! ([`Stage::plan_time`]); `pip` downloads, so it runs and is cached like any stage.

/// The identity part of a [`Stage`] impl: kind, version, role, output and summary.
macro_rules! stage_meta {
    ($kind:literal, $version:literal, $role:expr, $out:expr, $summary:literal) => {
        fn kind(&self) -> &'static str {
            $kind
        }
        fn version(&self) -> u32 {
            $version
        }
        fn role(&self) -> Role {
            $role
        }
        fn output(&self) -> Output {
            $out
        }
        fn summary(&self) -> &'static str {
            $summary
        }
    };
}

mod evaluate;
mod finetune;
mod lifecycle;
pub mod load_probe;
mod measuring;
mod quantize;
pub use lifecycle::PRECISIONS;
mod sources;
mod test_stage;

use crate::spec::{Device, NodeIdx, Output, ParamSpec, Value};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where a kind may be used in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `model NAME = kind(...)` or `task NAME = kind(...)`.
    Source,
    /// A stage call statement.
    Stage,
}

/// What one node hands to the nodes that use it.
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
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColType,
    pub doc: &'static str,
}

/// A table column (what `Stage::table` lists).
pub(crate) fn col(name: &'static str, ty: ColType, doc: &'static str) -> Column {
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
    /// Columns of this kind's table (`<kind>.parquet`); empty: no table.
    fn table(&self) -> Vec<Column> {
        vec![]
    }
    fn run(&self, ctx: &StageCtx) -> Result<StageOutput>;
}

static REGISTRY: &[&dyn Stage] = &[
    &sources::PathSource,
    &sources::HfSource,
    &sources::PipSource,
    &sources::SyntheticSource,
    &sources::JsonlTask,
    &quantize::Quantize,
    &finetune::Finetune,
    &measuring::ColdLoad,
    &evaluate::Evaluate,
    &measuring::Measure,
    &test_stage::TestStage,
];

pub fn all() -> &'static [&'static dyn Stage] {
    REGISTRY
}

pub fn get(kind: &str) -> Option<&'static dyn Stage> {
    REGISTRY.iter().copied().find(|s| s.kind() == kind)
}

/// Resolves a path parameter against the pipeline file's directory, removing `.` and `..`
/// lexically (so messages show `/repo/results`, not `/repo/pipelines/../results`).
pub fn resolve_path(base_dir: &Path, p: &str) -> PathBuf {
    use std::path::Component;
    let joined = base_dir.join(p);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
#[test]
fn paths_resolve_against_the_pipeline_folder() {
    assert_eq!(
        resolve_path(Path::new("/r/pipelines"), "../tasks/qa.jsonl"),
        Path::new("/r/tasks/qa.jsonl")
    );
    assert_eq!(
        resolve_path(Path::new("/r/p"), "/abs/x"),
        Path::new("/abs/x")
    );
    assert_eq!(resolve_path(Path::new("rel"), "../../x"), Path::new("../x"));
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

/// The GGUF file of a model artifact, or an error saying how to get one.
pub fn model_gguf(ctx: &StageCtx, param: &str) -> Result<PathBuf> {
    let Some(model) = ctx.artifacts(param).into_iter().next() else {
        bail!("no `{param}` model was given (engine bug)")
    };
    if let Some(p) = model.files.get("model.gguf") {
        return Ok(p.clone());
    }
    if model.record.get("synthetic").and_then(|s| s.as_bool()) == Some(true) {
        bail!(
            "a synthetic model has no weights until it is generated: pass it through \
             `quantize(MODEL, f16)` (or another precision) first"
        );
    }
    bail!(
        "the runtime loads GGUF files; convert this Hugging Face folder with `quantize(MODEL, f16)` first"
    )
}

/// Whether the model artifact behind `param` holds random (synthetic) weights.
pub fn is_synthetic(ctx: &StageCtx, param: &str) -> bool {
    ctx.artifacts(param)
        .first()
        .and_then(|a| a.record.get("synthetic"))
        .and_then(|s| s.as_bool())
        == Some(true)
}

/// A stage's error, with what a user needs when it is the GPU running out of memory: how much
/// the GPU has free now (NVML) and how large the model's files are (what the stage was placing).
pub fn explain_gpu_oom(
    e: anyhow::Error,
    device: Device,
    model_bytes: Option<u64>,
) -> anyhow::Error {
    let Device::Cuda(i) = device else { return e };
    let text = format!("{e:#}").to_lowercase();
    if !text.contains("out of memory") && !text.contains("out_of_memory") {
        return e;
    }
    e.context(oom_message(
        i,
        crate::meter::nvml::memory(crate::hw::physical_gpu(i)),
        model_bytes,
    ))
}

fn oom_message(gpu: u32, memory: Option<(u64, u64)>, model_bytes: Option<u64>) -> String {
    let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
    let free = match memory {
        Some((free, total)) => format!("{} free of {} now", gib(free), gib(total)),
        None => "free memory unknown (NVML unavailable)".into(),
    };
    let model = model_bytes.map_or(String::new(), |b| {
        format!("; the model's files: {}", gib(b))
    });
    format!(
        "GPU {gpu} ran out of memory ({free}{model}): free the GPU, choose a smaller precision or \
         batch, or another GPU (device = cuda(N)); with --keep-going the other stages go on"
    )
}

/// Token ids for a model without a tokenizer (synthetic weights): deterministic random ids, about
/// one per four characters of the text they stand for (at least 8), so that the work is of the
/// task's size.
pub struct SyntheticIds {
    vocab: u64,
    state: u64,
}

impl SyntheticIds {
    pub fn new(vocab: usize) -> SyntheticIds {
        SyntheticIds {
            vocab: vocab.max(1) as u64,
            state: 0x5eed,
        }
    }

    /// Ids standing for `chars` characters of text.
    pub fn take(&mut self, chars: usize) -> Vec<u32> {
        (0..(chars / 4).max(8))
            .map(|_| {
                self.state = self
                    .state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.state >> 33) % self.vocab) as u32
            })
            .collect()
    }
}

/// Parameters every energy-metered stage takes from the pipeline's `hardware`/`economics` blocks.
pub fn meter_params() -> Vec<ParamSpec> {
    use crate::spec::{Dim, Ty};
    vec![
        ParamSpec::setting(
            "cpu_power",
            Ty::Quantity(Dim::Power),
            &["hardware.cpu_power", "economics.cpu_power"],
            None,
            "declared CPU power for estimated energy",
        ),
        ParamSpec::setting(
            "meter",
            Ty::Enum(&["auto", "nvml", "rapl", "estimated"]),
            &["hardware.meter"],
            Some(Value::Symbol("auto".into())),
            "energy meter",
        ),
        ParamSpec::setting(
            "idle_window",
            Ty::Quantity(Dim::Time),
            &["hardware.idle_window"],
            Some(Value::Quantity {
                value: 0.5,
                dim: Dim::Time,
            }),
            "idle baseline measured before and after each window",
        ),
        ParamSpec::setting(
            "sample_interval",
            Ty::Quantity(Dim::Time),
            &["hardware.sample_interval"],
            Some(Value::Quantity {
                value: 0.02,
                dim: Dim::Time,
            }),
            "GPU power sampling period",
        ),
    ]
}

/// The meter the stage's parameters ask for (see [`meter_params`]); an estimate counts the CPU
/// time of `scope`.
pub fn open_meter(ctx: &StageCtx, scope: crate::meter::Scope) -> crate::meter::Metered {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meter = crate::meter::open(
        ctx.param("meter").as_str().unwrap_or("auto"),
        ctx.device,
        ctx.param("cpu_power").as_f64(),
        cores,
        scope,
        std::time::Duration::from_secs_f64(
            ctx.param("sample_interval")
                .as_f64()
                .unwrap_or(0.02)
                .clamp(0.001, 10.0),
        ),
    );
    let idle = ctx.param("idle_window").as_f64().unwrap_or(0.0).max(0.0);
    crate::meter::Metered::new(meter, std::time::Duration::from_secs_f64(idle))
}

/// The task artifact behind `param`: its kind, scorer, generation budget and record files.
pub struct TaskInfo {
    pub kind: String,
    pub scorer: String,
    pub max_tokens: usize,
    pub eval: PathBuf,
    pub train: Option<PathBuf>,
}

pub fn task_info(ctx: &StageCtx, param: &str) -> Result<TaskInfo> {
    let Some(t) = ctx.artifacts(param).into_iter().next() else {
        bail!("no `{param}` task was given (engine bug)")
    };
    let s = |k: &str| {
        t.record
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Ok(TaskInfo {
        kind: s("kind"),
        scorer: s("score"),
        max_tokens: t
            .record
            .get("max_tokens")
            .and_then(|v| v.as_u64())
            .unwrap_or(64) as usize,
        eval: t
            .files
            .get("eval")
            .cloned()
            .context("the task has no records")?,
        train: t.files.get("train").cloned(),
    })
}

/// The energy columns of every metered row (what [`crate::meter::WindowEnergy::columns`] writes,
/// without the GPU ones).
pub(crate) fn energy_columns() -> Vec<Column> {
    vec![
        col(
            "energy_j",
            ColType::Float,
            "gross energy of the measured work (J)",
        ),
        col(
            "energy_net_j",
            ColType::Float,
            "energy minus idle power × window length (J)",
        ),
        col(
            "idle_power_w",
            ColType::Float,
            "idle power before/after the window (W)",
        ),
        col(
            "energy_source",
            ColType::Str,
            "counter | sampled | rapl | estimated (null: not measured)",
        ),
        col(
            "energy_resolution_j",
            ColType::Float,
            "smallest step the meter resolves (J)",
        ),
        col(
            "energy_null_reason",
            ColType::Str,
            "why the energy columns are null",
        ),
        col("meter", ColType::Str, "what measured the energy, and how"),
    ]
}

/// The columns only a GPU meter fills (power samples, NVML device state), for measuring stages.
pub(crate) fn gpu_columns() -> Vec<Column> {
    vec![
        col(
            "energy_sampled_j",
            ColType::Float,
            "the window's energy from integrated power samples (GPU), beside the counter's",
        ),
        col(
            "peak_power_w",
            ColType::Float,
            "highest sampled power in the window (W)",
        ),
        col(
            "gpu_memory_used_bytes",
            ColType::Int,
            "GPU memory in use at the window's end (NVML, B)",
        ),
        col(
            "gpu_memory_peak_bytes",
            ColType::Int,
            "highest GPU memory in use during the window (NVML, sampled with the power, B)",
        ),
        col(
            "gpu_memory_used_before_bytes",
            ColType::Int,
            "GPU memory in use at the window's start (B)",
        ),
        col(
            "gpu_sm_clock_mhz",
            ColType::Int,
            "SM clock at the window's end",
        ),
        col(
            "gpu_mem_clock_mhz",
            ColType::Int,
            "memory clock at the window's end",
        ),
        col(
            "gpu_temperature_c",
            ColType::Int,
            "GPU temperature at the window's end",
        ),
        col(
            "gpu_power_limit_w",
            ColType::Float,
            "enforced power limit (W)",
        ),
        col(
            "gpu_other_processes",
            ColType::Int,
            "other processes on the GPU at the window's edges: >0 means the energy is not this work's alone",
        ),
        col(
            "host_steal_pct",
            ColType::Float,
            "share of all CPUs' time the hypervisor gave to other guests during the window (/proc/stat steal, %)",
        ),
        col(
            "host_preemptions",
            ColType::Int,
            "times the thread running the work was preempted during the window (involuntary context switches)",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::SyntheticIds;

    #[test]
    fn gpu_out_of_memory_says_what_is_free_and_what_was_placed() {
        use crate::spec::Device;
        let oom = || anyhow::anyhow!("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")");
        let e = super::explain_gpu_oom(oom(), Device::Cuda(1), Some(3 << 30));
        let text = format!("{e:#}");
        assert!(text.starts_with("GPU 1 ran out of memory ("), "{text}");
        assert!(text.contains("the model's files: 3.00 GiB"), "{text}");
        assert!(
            text.contains("CUDA_ERROR_OUT_OF_MEMORY"),
            "the cause is kept: {text}"
        );
        let m = super::oom_message(0, Some((1 << 30, 80 << 30)), None);
        assert!(m.contains("1.00 GiB free of 80.00 GiB now"), "{m}");
        // Other errors, and CPU stages, are left as they are.
        let other = super::explain_gpu_oom(anyhow::anyhow!("bad file"), Device::Cuda(0), None);
        assert_eq!(format!("{other:#}"), "bad file");
        let cpu = super::explain_gpu_oom(oom(), Device::Cpu, None);
        assert!(!format!("{cpu:#}").contains("GPU"));
    }

    #[test]
    fn synthetic_ids_stand_for_text_of_the_given_size() {
        let mut a = SyntheticIds::new(1000);
        let x = a.take(400);
        assert_eq!(x.len(), 100);
        assert!(x.iter().all(|i| *i < 1000));
        assert_eq!(a.take(3).len(), 8, "at least 8 ids");
        // Deterministic from the start, different along the stream.
        let mut b = SyntheticIds::new(1000);
        assert_eq!(b.take(400), x);
        assert_ne!(b.take(400), x);
    }
}
