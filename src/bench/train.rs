//! `edge-eval bench-train MODEL`: the trainer's speed, energy and memory on a fixed shape —
//! micro-batches of `--batch` random sequences of `--seq` tokens, the loss over every position
//! after the first (as a causal-LM trainer with `labels = input_ids`) — measured the way
//! `benches/peft_train.py` measures PyTorch + PEFT on the same shape and settings, so the two can
//! run side by side in one sitting (`benches/train_vs_peft.sh`). Not a timed test.
//!
//! `--warmup` steps run first, outside the measuring window (kernel compilation, the allocator's
//! first growth); then `--steps` optimizer steps run inside one window of the energy meter, with
//! an idle baseline before and after.

use crate::stages::cells::{Device, Energy};
use anyhow::{Result, bail};
use candle_core::quantized::GgmlDType;
use engine::row::TableRow;
use meter::{Scope, memory};
use runtime::lora::{self, Example, LoraConfig, TrainOptions, Trainable};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The settings of one `bench-train` run (the command's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct TrainBench {
    #[arg(long, default_value = "lora", value_parser = ["lora", "qlora"])]
    pub method: String,
    /// QLoRA's 4-bit base
    #[arg(long, default_value = "nf4", value_parser = ["nf4", "gguf"])]
    pub quant: String,
    /// The frozen base's and the activations' dtype (auto: bf16 on a GPU, f32 on the CPU)
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "bf16"])]
    pub dtype: String,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f64,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Sequences per micro-batch
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Measured optimizer steps
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Steps run before the measured ones (not measured)
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long)]
    pub checkpointing: bool,
    /// cpu or cuda(N) (the latter needs a build with `--features cuda`)
    #[arg(long, default_value = "cpu")]
    pub device: spec::Device,
    /// Declared CPU power (W), for an estimate where no energy counter is readable
    #[arg(long)]
    pub cpu_power: Option<f64>,
    /// Idle baseline before and after the measured steps (s)
    #[arg(long, default_value_t = 1.0)]
    pub idle: f64,
    /// One JSON object on stdout instead of the summary
    #[arg(long)]
    pub json: bool,
    /// Also time the phases of each step (forward, head loss, recompute, backward, optimizer),
    /// waiting for the device at the end of each; the totals are `phases` (s)
    #[arg(long)]
    pub profile: bool,
}

/// `n` sequences of `len` deterministic random ids below `vocab`, the loss on every position
/// after the first.
pub fn random_examples(n: usize, len: usize, vocab: usize) -> Vec<Example> {
    let mut ids = crate::stages::SyntheticIds::new(vocab);
    (0..n)
        .map(|_| Example {
            ids: ids.take(len * 4)[..len].to_vec(),
            answer_from: 1,
        })
        .collect()
}

pub fn train(model: &str, b: &TrainBench) -> Result<i32> {
    let name = model_name(model);
    if b.seq < 2 {
        bail!("--seq must be at least 2 (the loss needs a next token)");
    }
    if b.batch == 0 || b.grad_accum == 0 || b.steps == 0 {
        bail!("--batch, --grad-accum and --steps must be at least 1");
    }
    if !(0.0..=60.0).contains(&b.idle) {
        bail!("--idle must be between 0 and 60 seconds");
    }
    let dev = runtime::candle_device(b.device)?;
    let dtype = lora::pass_dtype(&b.dtype, dev.is_cpu())?;
    let tmp;
    let path: PathBuf = if Path::new(model).is_file() {
        model.into()
    } else if runtime::synthetic::arch(model).is_some() {
        tmp = super::TempDir::new()?;
        let p = tmp.0.join("model.gguf");
        eprintln!("bench-train: writing random weights of `{model}` (f16)");
        runtime::synthetic::write_gguf(model, 1, GgmlDType::F16, &p, &|_, _| {}, &|| false)?;
        p
    } else {
        bail!(
            "`{model}` is neither a GGUF file nor a synthetic architecture (one of: {})",
            runtime::synthetic::ARCH_NAMES.join(", ")
        );
    };
    let cfg = LoraConfig {
        rank: b.rank,
        alpha: b.alpha,
        dropout: b.dropout,
        targets: lora::TARGETS.iter().map(|t| t.0.to_string()).collect(),
        qlora: b.method == "qlora",
        nf4: b.quant == "nf4",
        dtype,
        seed: 1,
    };
    let model = Trainable::load_on(&path, cfg, &dev)?;
    if b.seq > model.cfg.context {
        bail!(
            "--seq {} is longer than the model's context ({})",
            b.seq,
            model.cfg.context
        );
    }
    let per_step = b.batch * b.grad_accum;
    let examples = random_examples(per_step * 4, b.seq, model.cfg.vocab);
    let opts = |steps| TrainOptions {
        lr: b.lr,
        steps,
        batch: b.batch,
        grad_accum: b.grad_accum,
        checkpointing: b.checkpointing,
        profile: b.profile,
    };
    let keep = memory::KeepFreedMemory::new();
    if b.warmup > 0 {
        lora::train(&model, &examples, &opts(b.warmup), &mut |_| Ok(()))?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meter = meter::open(
        "auto",
        b.device,
        b.cpu_power
            .map_or(meter::CpuPower::Undeclared, meter::CpuPower::Declared),
        cores,
        Scope::Process,
        Duration::from_millis(20),
    );
    let mut meter = meter::Metered::new(meter, Duration::from_secs_f64(b.idle));
    memory::release_free_memory();
    memory::reset_peak();
    let (logs, e) = meter.window(|| {
        lora::train(&model, &examples, &opts(b.steps), &mut |l| {
            if !b.json {
                eprintln!(
                    "  step {:>3}  loss {:.4}  {:.3} s",
                    l.step, l.loss, l.seconds
                );
            }
            Ok(())
        })
    })?;
    let peak_rss = memory::peak_rss_bytes().ok();
    drop(keep);
    let tokens: usize = logs.iter().map(|l| l.tokens).sum();
    let mut phases = serde_json::Map::new();
    for (name, t) in logs.iter().flat_map(|l| &l.phases) {
        let sum = phases
            .get(*name)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
            + t;
        phases.insert(name.to_string(), json!(sum));
    }
    let per_token = |j: Option<f64>| j.map(|j| j / tokens as f64);
    let mut step_s: Vec<f64> = logs.iter().map(|l| l.seconds).collect();
    step_s.sort_by(f64::total_cmp);
    let mut out = serde_json::Map::new();
    let settings = json!({
        "engine": "edge-eval",
        "model": name,
        "method": b.method,
        "quant": if b.method == "qlora" { Some(&b.quant) } else { None },
        "dtype": format!("{dtype:?}").to_lowercase(),
        "device": b.device.to_string(),
        "batch": b.batch,
        "seq": b.seq,
        "grad_accum": b.grad_accum,
        "checkpointing": b.checkpointing,
        "rank": b.rank,
        "alpha": b.alpha,
        "dropout": b.dropout,
        "lr": b.lr,
        "steps": b.steps,
        "warmup": b.warmup,
        "trainable_params": model.trainable_params(),
        "base_bytes": model.base_bytes,
        "seconds": e.seconds,
        "tokens": tokens,
        "tokens_per_s": tokens as f64 / e.seconds,
        "step_s_median": step_s.get(step_s.len() / 2),
        "j_per_token": per_token(e.gross_j),
        "j_per_token_net": per_token(e.net_j),
        "first_loss": logs.first().map(|l| l.loss),
        "last_loss": logs.last().map(|l| l.loss),
        "peak_rss_bytes": peak_rss,
        "meter": meter.describe(),
        "phases": b.profile.then_some(phases),
    });
    if let serde_json::Value::Object(m) = settings {
        out.extend(m);
    }
    out.extend(Energy::of(&e, &meter).to_row());
    out.extend(Device::of(&e).to_row());
    if b.json {
        println!("{}", serde_json::Value::Object(out));
    } else {
        print_summary(&out);
    }
    Ok(0)
}

fn model_name(s: &str) -> String {
    Path::new(s)
        .file_name()
        .map_or_else(|| s.to_string(), |n| n.to_string_lossy().to_string())
}

fn print_summary(o: &serde_json::Map<String, serde_json::Value>) {
    let f = |k: &str| o.get(k).and_then(serde_json::Value::as_f64);
    let s = |k: &str| match o.get(k) {
        Some(serde_json::Value::String(v)) => v.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    println!(
        "bench-train {} {} ({}), batch {} × {} tokens, accum {}, checkpointing {}, on {}",
        s("model"),
        s("method"),
        s("dtype"),
        s("batch"),
        s("seq"),
        s("grad_accum"),
        s("checkpointing"),
        s("device")
    );
    println!(
        "  {:.0} tokens/s over {} steps ({:.2} s; median step {:.3} s)",
        f("tokens_per_s").unwrap_or(f64::NAN),
        s("steps"),
        f("seconds").unwrap_or(f64::NAN),
        f("step_s_median").unwrap_or(f64::NAN)
    );
    match f("j_per_token") {
        Some(j) => match f("j_per_token_net") {
            Some(net) => println!(
                "  {j:.4} J/token gross, {net:.4} net ({})",
                s("energy_source")
            ),
            None => println!(
                "  {j:.4} J/token gross ({}; no net figure without an idle window)",
                s("energy_source")
            ),
        },
        None => println!("  energy: none ({})", s("energy_null_reason")),
    }
    if let Some(serde_json::Value::Object(phases)) = o.get("phases") {
        let total: f64 = phases.values().filter_map(serde_json::Value::as_f64).sum();
        for (name, t) in phases {
            let t = t.as_f64().unwrap_or(0.0);
            println!("  {:>5.1} %  {t:>7.3} s  {name}", 100.0 * t / total);
        }
    }
    if let Some(p) = f("gpu_memory_peak_bytes") {
        println!("  GPU memory peak {:.2} GB (NVML, device-wide)", p / 1e9);
    }
    println!(
        "  peak RSS {:.2} GB; frozen base {:.2} GB; loss {:.4} → {:.4}",
        f("peak_rss_bytes").unwrap_or(f64::NAN) / 1e9,
        f("base_bytes").unwrap_or(f64::NAN) / 1e9,
        f("first_loss").unwrap_or(f64::NAN),
        f("last_loss").unwrap_or(f64::NAN)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_examples_have_the_asked_shape_and_ids_below_the_vocabulary() {
        let ex = random_examples(6, 40, 97);
        assert_eq!(ex.len(), 6);
        assert!(ex.iter().all(|e| e.ids.len() == 40 && e.answer_from == 1));
        assert!(ex.iter().flat_map(|e| &e.ids).all(|&i| i < 97));
        // Different sequences, not one repeated.
        assert_ne!(ex[0].ids, ex[1].ids);
    }
}
