//! Stage kinds. Each kind is one module implementing [`Stage`]: its parameters (checked by the
//! resolver), whether it measures (then its cache key includes the hardware fingerprint and it
//! gets its device exclusively), and `run`, which receives typed parameters and resolved input
//! artifacts — never syntax.
//!
//! Model and task *sources* (`path`, `hf`, `pip`, `synthetic`, `jsonl`) are stage kinds too:
//! the ones that only point at local files compute their digest at plan time
//! ([`Stage::plan_time`]); `pip` downloads, so it runs and is cached like any stage.

/// `measuring` and `threads` of a stage that measures and holds its whole device (on `cpu`: the
/// machine) alone while it runs.
macro_rules! holds_the_machine {
    () => {
        fn measuring(&self, _: &std::collections::BTreeMap<String, spec::Value>) -> bool {
            true
        }
        fn threads(&self, _: &std::collections::BTreeMap<String, spec::Value>) -> usize {
            usize::MAX
        }
    };
}
use holds_the_machine;

/// `presentation_params` and `present` of a stage with an energy meter: an estimate's declared
/// watts are applied when rows are shown ([`present_estimates`]), not in the cache key.
macro_rules! estimates_presented {
    () => {
        fn presentation_params(&self) -> &'static [&'static str] {
            super::METER_PRESENTATION
        }
        fn present(
            &self,
            params: &std::collections::BTreeMap<String, spec::Value>,
            rows: &mut [super::Row],
        ) {
            super::present_estimates(params, rows)
        }
    };
}
use estimates_presented;

pub mod cells;

/// The names of the stage kinds that other parts of the program look for (the report's join).
pub mod kind {
    pub const QUANTIZE: &str = "quantize";
    pub const FINETUNE: &str = "finetune";
    pub const EVALUATE: &str = "evaluate";
    pub const MEASURE: &str = "measure";
    pub const COLD_LOAD: &str = "cold_load";
}
mod cold_load;
mod evaluate;
mod finetune;
pub mod load_probe;
mod measure;
mod measuring;
mod quantize;
pub use cold_load::ColdLoadRow;
pub use evaluate::EvaluateRow;
pub use finetune::FinetuneRow;
pub use measure::MeasureRow;
pub use quantize::QuantizeRow;
pub use spec::PRECISIONS;
mod sources;

use anyhow::{Context, Result, bail};
pub use engine::stage::*;
pub use spec::resolve_path;
use spec::{Device, ParamSpec, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;

/// Every stage kind and source edge-eval offers.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    Registry::new(vec![
        &sources::PathSource,
        &sources::HfSource,
        &sources::PipSource,
        &sources::SyntheticSource,
        &sources::JsonlTask,
        &quantize::Quantize,
        &finetune::Finetune,
        &cold_load::ColdLoad,
        &evaluate::Evaluate,
        &measure::Measure,
        &engine::test_stage::TestStage,
    ])
});

/// Loads, checks and expands a pipeline file against [`REGISTRY`].
pub fn load(
    path: &std::path::Path,
    overrides: &[String],
) -> Result<
    (lang::Pipeline, lang::source::SourceMap),
    (lang::diag::Diagnostics, lang::source::SourceMap),
> {
    lang::load(path, overrides, REGISTRY.signatures())
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

/// The files of the model folder behind `param` (name → path): what a classifier that is no
/// GGUF (the NLI scorer's) is loaded from.
pub fn model_files(ctx: &StageCtx, param: &str) -> Result<BTreeMap<String, PathBuf>> {
    let Some(model) = ctx.artifacts(param).into_iter().next() else {
        bail!("no `{param}` model was given (engine bug)")
    };
    if model.files.contains_key("model.gguf") {
        bail!(
            "`{param}` is a GGUF file: give the Hugging Face folder of the classifier \
             (`path(\"DIR\")` or `hf(\"ORG/NAME\")`), whose config.json, tokenizer.json and \
             safetensors weights it is loaded from"
        );
    }
    Ok(model.files.clone())
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
    let e = runtime::mark_out_of_memory(e);
    if e.downcast_ref::<runtime::OutOfMemory>().is_none() {
        return e;
    }
    e.context(oom_message(
        i,
        meter::nvml::memory(meter::hw::physical_gpu(i)),
        model_bytes,
    ))
}

/// [`Stage::explain_failure`] of the stages that place a model (`model`) on a device.
pub fn explain_model_failure(e: anyhow::Error, ctx: &StageCtx) -> anyhow::Error {
    let model_bytes = ctx.artifacts("model").first().map(|a| {
        a.files
            .values()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    });
    explain_gpu_oom(e, ctx.device, model_bytes)
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

/// A metered stage's own parameters, then the meter's ([`meter_params`]) and `device`.
pub fn metered_on_a_device(mut own: Vec<ParamSpec>) -> Vec<ParamSpec> {
    own.extend(meter_params());
    own.push(device_param());
    own
}

/// Parameters every energy-metered stage takes from the pipeline's `hardware`/`economics` blocks.
pub fn meter_params() -> Vec<ParamSpec> {
    use spec::{Dim, Ty};
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

/// The meter parameters that only change how rows are shown: an estimate is measured per
/// declared watt ([`open_meter`]) and multiplied by `cpu_power` when a run's tables are written
/// ([`present_estimates`]), so the declared watts are in no cache key.
pub const METER_PRESENTATION: &[&str] = &["cpu_power"];

/// The meter the stage's parameters ask for (see [`meter_params`]); an estimate counts the CPU
/// time of `scope`, per declared watt ([`present_estimates`] applies the watts).
pub fn open_meter(ctx: &StageCtx, scope: meter::Scope) -> meter::Metered {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meter = meter::open(
        ctx.param("meter").as_str().unwrap_or("auto"),
        ctx.device,
        meter::CpuPower::PerWatt,
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
    meter::Metered::new(meter, std::time::Duration::from_secs_f64(idle))
}

/// Whether a column holds joules or watts (its name ends `_j`, `_w`, or `_j_reps` for the
/// per-repetition lists): an estimate's value there is per declared watt until presented.
/// A unit test below checks that every metered table's J and W columns are so named.
pub fn scales_with_power(column: &str) -> bool {
    column.ends_with("_j") || column.ends_with("_w") || column.ends_with("_j_reps")
}

/// A metered stage's rows as shown: in each row whose energy is an estimate, the joules and
/// watts (per declared watt as measured, [`open_meter`]) multiplied by the pipeline's
/// `cpu_power`, and the meter's description given the watts; with no `cpu_power` declared,
/// those columns are null with the reason.
pub fn present_estimates(params: &BTreeMap<String, Value>, rows: &mut [Row]) {
    use serde_json::Value as J;
    let watts = params.get("cpu_power").and_then(Value::as_f64);
    for row in rows {
        if row.get("energy_source").and_then(J::as_str) != Some(meter::Source::Estimated.as_str()) {
            continue;
        }
        let scale = |v: &mut J| match (v.as_f64(), watts) {
            (Some(x), Some(w)) => *v = serde_json::json!(x * w),
            _ => *v = J::Null,
        };
        for (_, v) in row.iter_mut().filter(|(k, _)| scales_with_power(k)) {
            match v {
                J::Array(xs) => xs.iter_mut().for_each(scale),
                v => scale(v),
            }
        }
        match watts {
            Some(w) => {
                if let Some(J::String(m)) = row.get_mut("meter") {
                    *m = m.replacen(meter::PER_DECLARED_WATT, &format!("{w} W"), 1);
                }
            }
            None => {
                // The meter's own words say why no counter measured (e.g. RAPL's error).
                let why = match row.remove("meter") {
                    Some(J::String(m)) => format!("{} — {m}", meter::NO_COUNTER_NO_POWER),
                    _ => meter::NO_COUNTER_NO_POWER.to_string(),
                };
                row.insert("energy_source".into(), J::Null);
                row.insert("energy_null_reason".into(), why.into());
            }
        }
    }
}

/// The task artifact behind `param`: its kind, scorer, generation budget, prompting and record
/// files.
pub struct TaskInfo {
    pub kind: String,
    pub scorer: String,
    pub max_tokens: usize,
    pub prompting: crate::tasks::Prompting,
    pub eval: PathBuf,
    pub train: Option<PathBuf>,
}

impl TaskInfo {
    /// The records of `file` as samples of this task.
    pub fn load(&self, file: &std::path::Path) -> Result<Vec<crate::tasks::Sample>> {
        crate::tasks::load(file, &self.kind, &self.prompting)
    }

    /// The token ids of a sample's prompt: through the model's chat template, or its completion
    /// text as it is (with a BOS where the tokenizer adds one).
    pub fn prompt_ids(
        &self,
        tok: &runtime::tokenizer::Tokenizer,
        messages: &[runtime::tokenizer::Message],
    ) -> Result<Vec<u32>> {
        if self.prompting.chat_template {
            tok.chat_ids_with(messages, &self.template_vars())
        } else {
            tok.encode(&crate::tasks::Prompting::completion_text(messages))
        }
    }

    /// The chat-template variables the task pins (its `date` as `date_string`), for every
    /// prompt rendered for it: the evaluated model's and a judge's.
    pub fn template_vars(&self) -> Vec<(&'static str, &str)> {
        self.prompting
            .date
            .as_deref()
            .map(|d| vec![("date_string", d)])
            .unwrap_or_default()
    }

    /// The token a trained answer ends with: the chat template's end of turn, or the end of
    /// text for a completion prompt.
    pub fn answer_end(&self, tok: &runtime::tokenizer::Tokenizer) -> Option<u32> {
        if self.prompting.chat_template {
            tok.end_of_turn()
        } else {
            tok.eos
        }
    }
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
        prompting: crate::tasks::Prompting::from_json(t.record.get("prompting")),
        eval: t
            .files
            .get("eval")
            .cloned()
            .context("the task has no records")?,
        train: t.files.get("train").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::SyntheticIds;

    /// Every joule and watt column of a stage whose estimates are presented is named so that
    /// `present_estimates` scales it, and every column so named holds joules or watts: a new
    /// energy column cannot be left per declared watt in the tables.
    #[test]
    fn the_presented_energy_columns_are_exactly_the_joule_and_watt_ones() {
        let unit = |doc: &str| ["(J)", "(J,", "(J;", "(W)"].iter().any(|u| doc.contains(u));
        let mut seen = 0;
        for stage in super::REGISTRY.all() {
            if !stage.presentation_params().contains(&"cpu_power") {
                continue;
            }
            for c in stage.table() {
                assert_eq!(
                    super::scales_with_power(c.name),
                    unit(c.doc),
                    "{}.{}: {:?}",
                    stage.kind(),
                    c.name,
                    c.doc
                );
                seen += usize::from(unit(c.doc));
            }
        }
        assert!(seen > 20, "{seen} energy columns");
    }

    #[test]
    fn an_estimate_is_presented_at_the_declared_watts_or_null_with_the_reason() {
        use serde_json::json;
        let row = |source: &str| {
            json!({
                "energy_source": source,
                "energy_j": 2.0,
                "energy_per_request_j_reps": [1.0, null],
                "idle_power_w": 0.5,
                "energy_j_cv": 0.1,
                "tokens_per_s": 7.0,
                "meter": format!("estimated: declared {} × process CPU time", meter::PER_DECLARED_WATT),
            })
            .as_object()
            .unwrap()
            .clone()
        };
        let watts = |w: Option<f64>| {
            w.map(|w| {
                [(
                    "cpu_power".to_string(),
                    spec::Value::Quantity {
                        value: w,
                        dim: spec::Dim::Power,
                    },
                )]
                .into_iter()
                .collect()
            })
            .unwrap_or_default()
        };
        let mut rows = vec![row("estimated"), row("rapl")];
        super::present_estimates(&watts(Some(12.0)), &mut rows);
        assert_eq!(rows[0]["energy_j"], 24.0);
        assert_eq!(rows[0]["energy_per_request_j_reps"], json!([12.0, null]));
        assert_eq!(rows[0]["idle_power_w"], 6.0);
        assert_eq!(rows[0]["energy_j_cv"], 0.1, "a ratio is no energy");
        assert_eq!(rows[0]["tokens_per_s"], 7.0);
        assert_eq!(
            rows[0]["meter"],
            "estimated: declared 12 W × process CPU time"
        );
        assert_eq!(rows[1], row("rapl"), "a counter's row is as measured");
        let mut rows = vec![row("estimated")];
        super::present_estimates(&watts(None), &mut rows);
        assert!(rows[0]["energy_j"].is_null() && rows[0]["energy_source"].is_null());
        assert!(rows[0]["energy_per_request_j_reps"][0].is_null());
        let why = rows[0]["energy_null_reason"].as_str().unwrap();
        assert!(why.contains("cpu_power"), "{why}");
    }

    #[test]
    fn gpu_out_of_memory_says_what_is_free_and_what_was_placed() {
        use spec::Device;
        let oom = || anyhow::anyhow!("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")");
        let e = super::explain_gpu_oom(oom(), Device::Cuda(1), Some(3 << 30));
        let text = format!("{e:#}");
        assert!(text.starts_with("GPU 1 ran out of memory ("), "{text}");
        assert!(
            e.downcast_ref::<runtime::OutOfMemory>().is_some(),
            "callers can branch on the type"
        );
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
