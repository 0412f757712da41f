//! `finetune(model, task, method = lora | qlora, ...)`: LoRA or QLoRA training on the task's
//! train split (`runtime::lora`), measured through the meter: the training loop and the merge
//! are separate windows, both counted in the energy that produced the variant (N_break's
//! C_train). Outputs the adapter (PEFT-named safetensors + adapter_config.json) and the merged
//! model (`model.gguf`, f16), which downstream stages take like any model.
//!
//! Nothing is written to the cache unless the whole run succeeds: an empty or malformed train
//! split, a sequence longer than `max_seq` or the context, or a NaN loss is an error.

use super::cells::{Device, Energy};
use super::device_param;
use super::{Column, Role, Stage, StageCtx, StageOutput};
use anyhow::{Context, Result, bail};
use candle_core::quantized::GgmlDType;
use engine::row::TableRow;
use meter::{Scope, memory};
use runtime::lora::{self, Example, LoraConfig, TrainOptions, Trainable};
use serde_json::json;
use spec::{Output, ParamSpec, Ty, Value};
use std::collections::BTreeMap;

pub struct Finetune;

engine::table_row! {
    /// One optimizer step (`row = "step"`), or the summary of the training
    /// (`finetune.parquet`).
    pub struct FinetuneRow {
        /// step | summary
        row: String,
        /// optimizer step (null in the summary)
        step: Option<usize>,
        /// mean answer-token cross-entropy; summary: mean of the last k steps
        loss: Option<f64>,
        /// summary: mean loss of the first k steps
        first_loss: Option<f64>,
        /// step time; summary: the training loop (s)
        seconds: f64,
        /// tokens forwarded (padding excluded)
        tokens: usize,
        /// positions forwarded, padding included (rows × padded length)
        padded_tokens: usize,
        /// training tokens per second
        tokens_per_s: Option<f64>,
        /// lora | qlora
        method: Option<String>,
        /// LoRA rank
        rank: Option<usize>,
        /// optimizer steps
        steps: Option<usize>,
        /// training rows used
        rows: Option<usize>,
        /// adapter parameters
        trainable_params: Option<usize>,
        /// frozen weights as held in memory (B)
        base_bytes: Option<u64>,
        /// peak process RSS while training (B)
        peak_rss_bytes: Option<u64>,
        /// merging the adapter into the base (s)
        merge_seconds: Option<f64>,
        /// energy of the training loop (J); on the summary, energy_j = this + energy_merge_j
        /// (C_train of N_break) and energy_net_j likewise
        energy_train_j: Option<f64>,
        /// energy of the merge (J), by the stage's meter: the merge runs on the host, so on a
        /// GPU this is the board's (near-idle) energy meanwhile
        energy_merge_j: Option<f64>,
        /// random weights (random ids of the rows' size)
        synthetic: Option<bool>,
        groups {
            energy: Energy,
            device: Device,
        }
    }
}

/// `finetune`'s parameters as `run` reads them (defaults: [`Finetune::params`]).
#[derive(Debug, serde::Deserialize)]
struct Params {
    method: String,
    rank: usize,
    alpha: f64,
    dropout: f64,
    lr: f64,
    epochs: Option<usize>,
    steps: Option<usize>,
    rows: Option<usize>,
    batch: usize,
    grad_accum: usize,
    max_seq: usize,
    seed: u64,
    targets: Vec<String>,
    dtype: String,
    quant: String,
    checkpointing: bool,
}

impl Stage for Finetune {
    engine::stage_meta!(
        super::kind::FINETUNE,
        8,
        Role::Stage,
        Output::Model,
        "LoRA / QLoRA fine-tuning on a task's train split"
    );
    super::estimates_presented!();
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("model", Ty::Ref(Output::Model), "base model"),
            ParamSpec::required(
                "task",
                Ty::Ref(Output::Task),
                "task whose train split is used",
            ),
            ParamSpec::default(
                "method",
                Ty::Enum(&["lora", "qlora"]),
                Value::Symbol("lora".into()),
                "adaptation method",
            ),
            ParamSpec::default("rank", Ty::int(1, 4096), Value::Int(16), "LoRA rank r"),
            ParamSpec::default(
                "alpha",
                Ty::float(0.0, 1e6),
                Value::Float(16.0),
                "LoRA alpha",
            ),
            ParamSpec::default(
                "dropout",
                Ty::float(0.0, 0.99),
                Value::Float(0.05),
                "LoRA dropout",
            ),
            ParamSpec::default(
                "lr",
                Ty::float(0.0, 10.0),
                Value::Float(2e-4),
                "learning rate",
            ),
            ParamSpec::optional("epochs", Ty::int(1, 1000), "epochs over the train rows"),
            ParamSpec::optional(
                "steps",
                Ty::int(1, 10_000_000),
                "optimizer steps (instead of epochs)",
            ),
            ParamSpec::optional("rows", Ty::int(1, i64::MAX), "train rows used"),
            ParamSpec::default("batch", Ty::int(1, 4096), Value::Int(1), "batch size"),
            ParamSpec::default(
                "grad_accum",
                Ty::int(1, 4096),
                Value::Int(1),
                "gradient accumulation steps",
            ),
            ParamSpec::default(
                "max_seq",
                Ty::int(8, 1 << 20),
                Value::Int(512),
                "max sequence length",
            ),
            ParamSpec::setting(
                "seed",
                Ty::int(0, i64::MAX),
                &["pipeline.seed"],
                Some(Value::Int(0)),
                "seed",
            ),
            ParamSpec::default(
                "dtype",
                Ty::Enum(&["auto", "f32", "bf16"]),
                Value::Symbol("auto".into()),
                "dtype of the frozen base and the activations: bf16 (auto on a GPU, as PEFT with \
                 a bf16 base) or f32 (auto on the CPU, where our f32 kernels are faster); the \
                 adapters, their gradients and AdamW state are f32 either way",
            ),
            ParamSpec::default(
                "quant",
                Ty::Enum(&["nf4", "gguf"]),
                Value::Symbol("nf4".into()),
                "QLoRA's 4-bit base: nf4 (bitsandbytes' NormalFloat4, blocks of 64, double-quantized \
                 scales) or gguf (the file's own 4-bit type, q4_0 / q4_1 / q4_k, else q4_0)",
            ),
            ParamSpec::default(
                "checkpointing",
                Ty::Bool,
                Value::Bool(false),
                "gradient checkpointing: keep only each block's input and recompute the block in \
                 the backward (less memory, about one more forward per step)",
            ),
            ParamSpec::default(
                "targets",
                Ty::List(Box::new(Ty::Enum(&[
                    "q", "k", "v", "o", "gate", "up", "down",
                ]))),
                Value::List(
                    ["q", "k", "v", "o", "gate", "up", "down"]
                        .iter()
                        .map(|s| Value::Symbol(s.to_string()))
                        .collect(),
                ),
                "projections that get adapters",
            ),
            device_param(),
        ]
        .into_iter()
        .chain(super::meter_params())
        .collect()
    }
    super::holds_the_machine!();
    fn table(&self) -> Vec<Column> {
        FinetuneRow::columns()
    }
    fn work_estimate(
        &self,
        params: &BTreeMap<String, Value>,
        inputs: &BTreeMap<spec::NodeIdx, engine::stage::Artifact>,
    ) -> Option<String> {
        let mut nodes = vec![];
        params.get("task")?.nodes(&mut nodes);
        let task = inputs.get(nodes.first()?)?;
        let kind = task.record.get("kind")?.as_str()?;
        let prompting = crate::tasks::Prompting::from_json(task.record.get("prompting"));
        let samples = crate::tasks::load(task.files.get("train")?, kind, &prompting).ok()?;
        let p: Params = engine::stage::typed_params(params).ok()?;
        let chars: Vec<usize> = samples
            .iter()
            .map(|s| {
                s.messages.iter().map(|m| m.content.len()).sum::<usize>()
                    + s.references.first().map_or(0, String::len)
            })
            .collect();
        Some(TrainEstimate::new(&chars, &p).describe())
    }
    fn explain_failure(&self, e: anyhow::Error, ctx: &StageCtx) -> anyhow::Error {
        super::explain_model_failure(e, ctx)
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput> {
        let dev = runtime::candle_device(ctx.device)?;
        let path = super::model_gguf(ctx, "model")?;
        let task = super::task_info(ctx, "task")?;
        let Some(train_file) = &task.train else {
            bail!(
                "the task has no train split: add `train = \"FILE.jsonl\"` to its jsonl(...) declaration"
            );
        };
        let p: Params = ctx.typed()?;
        let method = p.method.clone();
        let mut samples = task.load(train_file)?;
        if let Some(n) = p.rows {
            samples.truncate(n);
        }
        let dtype = lora::pass_dtype(&p.dtype, dev.is_cpu())?;
        let cfg = LoraConfig {
            rank: p.rank,
            alpha: p.alpha,
            dropout: p.dropout,
            targets: p.targets.clone(),
            qlora: p.method == "qlora",
            nf4: p.quant == "nf4",
            dtype,
            seed: p.seed,
        };
        let (batch, accum, max_seq) = (p.batch, p.grad_accum, p.max_seq);
        let per_epoch = lora::steps_per_epoch(samples.len(), batch, accum);
        let steps = match p.steps {
            Some(s) => s,
            None => p.epochs.unwrap_or(1) * per_epoch,
        };

        ctx.progress.message("loading the base model");
        let synthetic = super::is_synthetic(ctx, "model");
        let tok = if synthetic {
            None
        } else {
            Some(runtime::tokenizer::Tokenizer::from_gguf(
                &runtime::gguf::Gguf::open(&path)?,
            )?)
        };
        let model = Trainable::load_on(&path, cfg.clone(), &dev)?;
        let mut ids_of = super::SyntheticIds::new(model.cfg.vocab);
        let mut examples = vec![];
        for s in &samples {
            let (prompt, ids) = match &tok {
                Some(tok) => {
                    let prompt = task.prompt_ids(tok, &s.messages)?;
                    let mut ids = prompt.clone();
                    ids.extend(tok.encode_plain(&s.references[0])?);
                    ids.extend(task.answer_end(tok));
                    (prompt, ids)
                }
                // Random weights have no tokenizer: random ids of the row's size, so that the
                // work (and the time, energy and memory it takes) is of the task's size.
                None => {
                    let chars: usize = s.messages.iter().map(|m| m.content.len()).sum();
                    let prompt = ids_of.take(chars);
                    let mut ids = prompt.clone();
                    ids.extend(ids_of.take(s.references[0].len()));
                    (prompt, ids)
                }
            };
            let limit = max_seq.min(model.cfg.context);
            if ids.len() > limit {
                bail!(
                    "{}: training row `{}` is {} tokens, more than max_seq = {max_seq} (the \
                     model's context is {}); raise max_seq or shorten the record",
                    train_file.display(),
                    s.id,
                    ids.len(),
                    model.cfg.context
                );
            }
            examples.push(Example {
                ids,
                answer_from: prompt.len(),
            });
        }

        let opts = TrainOptions {
            lr: p.lr,
            steps,
            batch,
            grad_accum: accum,
            checkpointing: p.checkpointing,
            profile: false,
        };
        let mut meter = super::open_meter(ctx, Scope::Process);
        ctx.progress.set_length(steps as u64);
        ctx.progress
            .message(&format!("{method}, {} rows", examples.len()));
        memory::release_free_memory();
        memory::reset_peak();
        let keep = memory::KeepFreedMemory::new();
        let (logs, train_e) = meter.window(|| {
            lora::train(&model, &examples, &opts, &mut |log| {
                ctx.progress.set_position(log.step as u64);
                ctx.progress.message(&format!("loss {:.4}", log.loss));
                ctx.check_cancelled()
            })
        })?;
        let peak = memory::peak_rss_bytes().ok();
        drop(keep);

        ctx.progress.message("merging the adapter");
        let merged = ctx.work_dir.join("model.gguf");
        let deltas = model.deltas()?.into_iter().collect();
        let cancelled = || ctx.cancel.load(std::sync::atomic::Ordering::Relaxed);
        let (_, merge_e) = meter.window(|| {
            runtime::gguf::requantize_with(
                &path,
                &merged,
                GgmlDType::F16,
                &deltas,
                &|_, _| {},
                &cancelled,
            )
        })?;

        let adapter = ctx.work_dir.join("adapter_model.safetensors");
        let tensors: std::collections::HashMap<String, candle_core::Tensor> =
            model.peft_tensors()?.into_iter().collect();
        candle_core::safetensors::save(&tensors, &adapter)
            .with_context(|| format!("cannot write {}", adapter.display()))?;
        let config = ctx.work_dir.join("adapter_config.json");
        let base_name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        std::fs::write(
            &config,
            serde_json::to_string_pretty(&model.peft_config(&base_name))?,
        )?;

        let mut rows: Vec<FinetuneRow> = logs
            .iter()
            .map(|l| FinetuneRow {
                row: "step".into(),
                step: Some(l.step),
                loss: Some(l.loss),
                seconds: l.seconds,
                tokens: l.tokens,
                padded_tokens: l.padded,
                tokens_per_s: Some(l.tokens as f64 / l.seconds),
                ..Default::default()
            })
            .collect();
        let tokens: usize = logs.iter().map(|l| l.tokens).sum();
        let padded: usize = logs.iter().map(|l| l.padded).sum();
        // Step losses are of different rows: compare the mean of the first and the last `k` steps
        // (an epoch, or a quarter of the run when it is shorter than two epochs).
        let k = (steps / 2).min(per_epoch).max(1);
        let mean =
            |ls: &[lora::StepLog]| ls.iter().map(|l| l.loss).sum::<f64>() / ls.len().max(1) as f64;
        let sum = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b);
        let train_energy = Energy::of(&train_e, &meter);
        rows.push(FinetuneRow {
            row: "summary".into(),
            step: None,
            loss: Some(mean(&logs[logs.len().saturating_sub(k)..])),
            first_loss: Some(mean(&logs[..k.min(logs.len())])),
            seconds: train_e.seconds,
            tokens,
            padded_tokens: padded,
            tokens_per_s: Some(tokens as f64 / train_e.seconds),
            method: Some(method.to_string()),
            rank: Some(cfg.rank),
            steps: Some(steps),
            rows: Some(examples.len()),
            trainable_params: Some(model.trainable_params()),
            base_bytes: Some(model.base_bytes),
            peak_rss_bytes: peak,
            merge_seconds: Some(merge_e.seconds),
            energy_train_j: train_e.gross_j,
            energy_merge_j: merge_e.gross_j,
            synthetic: Some(synthetic),
            energy: Energy {
                energy_j: sum(train_e.gross_j, merge_e.gross_j),
                energy_net_j: sum(train_e.net_j, merge_e.net_j),
                ..train_energy
            },
            device: Device::of(&train_e),
        });
        let rows = rows.iter().map(TableRow::to_row).collect();
        Ok(StageOutput {
            files: vec![
                ("model.gguf".into(), merged),
                ("adapter_model.safetensors".into(), adapter),
                ("adapter_config.json".into(), config),
            ],
            record: json!({ "format": "gguf", "precision": "f16", "adapted": method }),
            rows,
        })
    }
}

/// `plan`'s estimate of a fine-tune's size: rows used × their mean length × epochs, lengths at
/// 4 characters a token (English text under a BPE vocabulary; the tokenizer is not loaded at
/// plan time).
#[derive(Debug, PartialEq)]
struct TrainEstimate {
    rows: usize,
    mean_tokens: usize,
    /// Epochs over the rows (fractional when `steps` is given).
    epochs: f64,
}

impl TrainEstimate {
    const CHARS_PER_TOKEN: usize = 4;

    fn new(chars: &[usize], p: &Params) -> TrainEstimate {
        let rows = p.rows.map_or(chars.len(), |r| r.min(chars.len()));
        let total: usize = chars[..rows].iter().sum();
        let per_epoch = lora::steps_per_epoch(rows, p.batch, p.grad_accum).max(1);
        let epochs = match p.steps {
            Some(s) => s as f64 / per_epoch as f64,
            None => p.epochs.unwrap_or(1) as f64,
        };
        TrainEstimate {
            rows,
            mean_tokens: total / rows.max(1) / Self::CHARS_PER_TOKEN,
            epochs,
        }
    }

    fn tokens(&self) -> f64 {
        (self.rows * self.mean_tokens) as f64 * self.epochs
    }

    fn describe(&self) -> String {
        let t = self.tokens();
        let tokens = if t >= 1e6 {
            format!("{:.1} M", t / 1e6)
        } else if t >= 1e3 {
            format!("{:.1} k", t / 1e3)
        } else {
            format!("{t:.0}")
        };
        format!(
            "~{tokens} training tokens ({} rows × ~{} tokens × {} epoch{}; 4 characters a token)",
            self.rows,
            self.mean_tokens,
            if self.epochs.fract() == 0.0 {
                format!("{}", self.epochs)
            } else {
                format!("{:.2}", self.epochs)
            },
            if self.epochs == 1.0 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_parameters_fit_the_declared_ones_and_their_defaults() {
        let mut params = engine::stage::default_params(&Finetune.params());
        let p: Params = engine::stage::typed_params(&params).unwrap();
        assert_eq!(
            (p.method.as_str(), p.rank, p.batch, p.max_seq),
            ("lora", 16, 1, 512)
        );
        assert_eq!((p.alpha, p.dropout, p.lr), (16.0, 0.05, 2e-4));
        assert_eq!(p.targets.len(), 7);
        assert_eq!((p.steps, p.epochs, p.rows), (None, None, None));
        assert_eq!(
            (p.dtype.as_str(), p.quant.as_str(), p.checkpointing),
            ("auto", "nf4", false)
        );
        params.insert("steps".into(), Value::Int(40));
        params.insert("method".into(), Value::Symbol("qlora".into()));
        let p: Params = engine::stage::typed_params(&params).unwrap();
        assert_eq!((p.steps, p.method.as_str()), (Some(40), "qlora"));
        // plan's estimate: 10 rows of 400 characters, batch 1: 100 tokens a row.
        let chars = vec![400; 10];
        let p: Params =
            engine::stage::typed_params(&engine::stage::default_params(&Finetune.params()))
                .unwrap();
        let e = TrainEstimate::new(&chars, &p);
        assert_eq!((e.rows, e.mean_tokens, e.epochs), (10, 100, 1.0));
        assert_eq!(
            e.describe(),
            "~1.0 k training tokens (10 rows × ~100 tokens × 1 epoch; 4 characters a token)"
        );
        let mut q = engine::stage::default_params(&Finetune.params());
        q.insert("rows".into(), Value::Int(4));
        q.insert("batch".into(), Value::Int(2));
        q.insert("steps".into(), Value::Int(5));
        let p: Params = engine::stage::typed_params(&q).unwrap();
        // 4 rows in batches of 2: 2 steps an epoch, so 5 steps are 2.5 epochs of 400 tokens.
        let e = TrainEstimate::new(&chars, &p);
        assert_eq!((e.rows, e.epochs, e.tokens()), (4, 2.5, 1000.0));
        // A parameter of the wrong type is an error, not a default.
        params.insert("rank".into(), Value::Str("sixteen".into()));
        assert!(engine::stage::typed_params::<Params>(&params).is_err());
    }
}
