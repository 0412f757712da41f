//! `quantize(model, precision)`: a model → a GGUF file of that precision, with the source's
//! metadata (architecture, tokenizer, chat template) carried over so llama.cpp can load it. A
//! Hugging Face folder (llama / qwen2) is converted as llama.cpp's converter does (`runtime::hf`).
//!
//! From a GGUF source this is dequantize → requantize, which is lossy when the source is itself
//! quantized; the row and the record say so in `requantized_from`. From a `synthetic(...)`
//! model, the random weights are generated straight into the target type. The output is byte-identical
//! for the same input and precision, so an unchanged upstream leaves everything below cached.

use super::cells::{Device, Energy};
use super::{Column, Role, Stage, StageCtx, StageOutput};
use anyhow::{Context, Result, bail};
use engine::row::TableRow;
use runtime::gguf::{self, dtype_of, type_name};
use runtime::hf;
use runtime::synthetic;
use serde_json::json;
use spec::{Output, ParamSpec, Ty};

pub struct Quantize;

engine::table_row! {
    /// One conversion (`quantize.parquet`).
    pub struct QuantizeRow {
        /// target precision
        precision: String,
        /// most common tensor type of the input
        source_type: String,
        /// quantized input type when this was dequantize → requantize (lossy), else null
        requantized_from: Option<String>,
        /// random weights: valid for speed, energy and memory, never quality
        synthetic: bool,
        /// parameters (tensor elements)
        params: u64,
        /// bytes of the input: the GGUF file, or all files of a Hugging Face folder (null for
        /// synthetic models, generated in place)
        input_bytes: Option<u64>,
        /// output file size
        output_bytes: u64,
        /// output tensor bits per parameter
        bits_per_weight: f64,
        /// matrices stored in another type (rows not a multiple of the block)
        fallback_tensors: usize,
        /// wall time of the conversion
        seconds: f64,
        groups {
            energy: Energy,
            device: Device,
        }
    }
}

fn is_quantized(t: &str) -> bool {
    !matches!(t, "f32" | "f16" | "bf16")
}

impl Stage for Quantize {
    engine::stage_meta!(
        super::kind::QUANTIZE,
        4,
        Role::Stage,
        Output::Model,
        "convert a model to a precision (GGUF out, metadata kept)"
    );
    super::estimates_presented!();
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("model", Ty::Ref(Output::Model), "model to convert"),
            // Conversion is CPU work (tensor by tensor); it has no device parameter.
            ParamSpec::required("precision", Ty::Enum(super::PRECISIONS), "target precision"),
        ]
        .into_iter()
        .chain(super::meter_params())
        .collect()
    }
    fn table(&self) -> Vec<Column> {
        QuantizeRow::columns()
    }
    fn run(&self, ctx: &StageCtx) -> Result<StageOutput> {
        let precision = ctx.param("precision").as_str().unwrap_or_default();
        let target =
            dtype_of(precision).with_context(|| format!("unknown precision `{precision}`"))?;
        let model = ctx.artifacts("model");
        let Some(model) = model.first() else {
            bail!("quantize received no model (engine bug)")
        };
        let synthetic = model.record.get("synthetic").and_then(|s| s.as_bool()) == Some(true);
        let dst = ctx.work_dir.join("model.gguf");
        // Quantizing is not a measuring stage: it may share the process and the CPU with other
        // stages. An estimate therefore counts this (single-threaded) conversion's own thread,
        // and no idle windows are taken: gross energy of the conversion. A device counter
        // (RAPL) cannot tell stages apart; its row says so through `meter`.
        let mut meter = super::open_meter(ctx, meter::Scope::Thread);
        meter.idle = std::time::Duration::ZERO;
        let ((r, input_bytes), energy) = meter.window(|| {
            let progress = |done: u64, total: u64| {
                ctx.progress.set_length(total);
                ctx.progress.set_position(done);
            };
            let cancelled = || ctx.cancel.load(std::sync::atomic::Ordering::Relaxed);
            let (r, input_bytes) = if synthetic {
                let arch = model
                    .record
                    .get("arch")
                    .and_then(|a| a.as_str())
                    .unwrap_or_default();
                let seed = model
                    .record
                    .get("seed")
                    .and_then(|s| s.as_u64())
                    .unwrap_or(0);
                (
                    synthetic::write_gguf(arch, seed, target, &dst, &progress, &cancelled)?,
                    None,
                )
            } else if let Some(src) = model.files.get("model.gguf") {
                let r = gguf::requantize(src, &dst, target, &progress, &cancelled)?;
                (r, std::fs::metadata(src).map(|m| m.len()).ok())
            } else if let Some(config) = model.files.get("config.json") {
                let dir = config.parent().context("config.json has no folder")?;
                let r = hf::to_gguf(dir, &dst, target, &progress, &cancelled)?;
                let bytes = model
                    .files
                    .values()
                    .filter_map(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum();
                (r, Some(bytes))
            } else {
                bail!(
                    "the model has neither a GGUF file nor a Hugging Face config.json (engine bug?)"
                );
            };
            Ok((r, input_bytes))
        })?;
        let seconds = energy.seconds;
        let requantized_from =
            (!synthetic && is_quantized(r.source_type())).then_some(r.source_type());
        let row = QuantizeRow {
            precision: precision.into(),
            source_type: r.source_type().into(),
            requantized_from: requantized_from.map(str::to_string),
            synthetic,
            params: r.params,
            input_bytes,
            output_bytes: std::fs::metadata(&dst)?.len(),
            bits_per_weight: r.output_tensor_bytes as f64 * 8.0 / r.params.max(1) as f64,
            fallback_tensors: r.fallbacks.len(),
            seconds,
            energy: Energy::of(&energy, &meter),
            device: Device::of(&energy),
        };
        Ok(StageOutput {
            files: vec![("model.gguf".into(), dst)],
            record: json!({
                "format": "gguf",
                "precision": precision,
                "type": type_name(target),
                "requantized_from": requantized_from,
                "synthetic": synthetic,
            }),
            rows: vec![row.to_row()],
        })
    }
}
