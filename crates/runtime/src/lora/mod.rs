//! LoRA / QLoRA training over a GGUF llama/qwen2 model, with a forward pass written with
//! differentiable candle operations (candle's fused rms_norm, softmax, rope and QMatMul record no
//! gradient) and, on a GPU, the fused kernels of [`fused`] (each with its backward) in place of
//! their chains. It matches the inference forward of [`crate::llama`] (tested).
//!
//! - LoRA: frozen base matrices dequantized to the pass's dtype (f32 on the CPU, bf16 on a GPU
//!   by default); `y = x Wᵀ + (α/r) · B A dropout(x)`, the adapters in f32.
//! - QLoRA: frozen base matrices kept 4-bit — bitsandbytes' NF4 ([`nf4`]), or GGUF blocks (the
//!   file's own 4-bit type when it is one, else Q4_0); the output head stays in the file's type —
//!   behind [`Frozen`], a custom op whose forward multiplies by `W` dequantized for the call (or
//!   candle's quantized matmul on f32) and whose backward is `grad · dequantize(W)` (recomputed,
//!   not kept, so the base stays 4-bit in memory).
//!
//! Adapters: A `[r, in]` (uniform ±1/√in, as PEFT's Kaiming init), B `[out, r]` zeros, trained
//! with AdamW; the loss is the mean cross-entropy of the answer tokens only. Outputs: PEFT-named
//! tensors (q/k rows un-permuted to Hugging Face layout) and a merged GGUF (`W + (α/r) B A`).

use super::gguf::{Gguf, type_name};
use super::llama::{Config, Embedding, local_rope_tables, read_config, rope_tables};
use anyhow::{Result, bail};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Module, Shape, Tensor, Var};
use std::path::Path;
use std::sync::Arc;

#[macro_use]
mod frozen;
mod adapted;
mod forward;
mod fused;
pub mod nf4;
mod ops;
mod train;

pub use forward::Batch;
use frozen::*;
use ops::*;
pub use train::{Profiler, StepLog, TrainOptions, schedule, steps_per_epoch, train};

/// The projections adapters can target, with their GGUF and PEFT names.
pub const TARGETS: &[(&str, &str, &str)] = &[
    ("q", "attn_q", "self_attn.q_proj"),
    ("k", "attn_k", "self_attn.k_proj"),
    ("v", "attn_v", "self_attn.v_proj"),
    ("o", "attn_output", "self_attn.o_proj"),
    ("gate", "ffn_gate", "mlp.gate_proj"),
    ("up", "ffn_up", "mlp.up_proj"),
    ("down", "ffn_down", "mlp.down_proj"),
];

#[derive(Debug, Clone)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Short names from [`TARGETS`] (`q`, `k`, …).
    pub targets: Vec<String>,
    /// QLoRA: keep the base 4-bit.
    pub qlora: bool,
    /// QLoRA's 4-bit format: bitsandbytes' NF4 (`true`), or GGUF blocks (the file's own 4-bit
    /// type, else Q4_0).
    pub nf4: bool,
    /// The pass's dtype: f32, or bf16 / f16 (a 16-bit base and activations; adapters, their
    /// gradients and AdamW state stay f32).
    pub dtype: DType,
    pub seed: u64,
}

/// The pass's dtype for a `dtype` choice: `auto` is bf16 on a GPU (as PEFT with a bf16 base) and
/// f32 on the CPU (where our f32 kernels are faster).
pub fn pass_dtype(choice: &str, cpu: bool) -> Result<DType> {
    Ok(match (choice, cpu) {
        ("f32", _) | ("auto", true) => DType::F32,
        ("bf16", _) | ("auto", false) => DType::BF16,
        (other, _) => bail!("unknown dtype `{other}`: use auto, f32 or bf16"),
    })
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

struct Proj {
    base: Base,
    /// QLoRA re-quantized the file's matrix to 4 bits for training: the merge must start from
    /// that base, not the file's.
    requantized: bool,
    /// (A `[r, in]`, B `[out, r]`).
    lora: Option<(Var, Var)>,
}

struct TLayer {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    bias: Option<[Tensor; 3]>,
    /// Gemma 3: q / k norms, post-attention and post-FFN norms.
    extra: Option<[Tensor; 4]>,
    /// In [`TARGETS`] order.
    proj: Vec<Proj>,
}

/// The token embedding table.
enum Embed {
    /// In its GGUF type on the host.
    Host(Embedding),
    /// `[vocab, hidden]` in the pass's dtype on the pass's device.
    Device(Tensor),
}

/// A model with LoRA adapters, trainable.
pub struct Trainable {
    pub cfg: Config,
    pub lora: LoraConfig,
    embed: Embed,
    layers: Vec<TLayer>,
    norm: Tensor,
    head: Base,
    /// Rows of the output head's logits computed at a time in the loss ([`HeadLoss`]).
    head_chunk: usize,
    cos: Tensor,
    sin: Tensor,
    /// RoPE tables of Gemma 3's local layers.
    local_rope: Option<(Tensor, Tensor)>,
    /// The pass's dtype ([`LoraConfig::dtype`]).
    dtype: DType,
    /// Frozen bytes held (base matrices as held, embedding, norms).
    pub base_bytes: u64,
    pub device: Device,
    /// The GGUF the base came from (the merge reads it again).
    path: std::path::PathBuf,
}

/// `Wᵀ` of a file's matrix, dense in `dtype` on `device`.
fn dense_t(q: &QTensor, dtype: DType, device: &Device) -> Result<Base> {
    let w = q
        .dequantize(&Device::Cpu)?
        .t()?
        .contiguous()?
        .to_dtype(dtype)?;
    Ok(Base::Dense(Arc::new(w.to_device(device)?)))
}

/// Uniform in ±`bound`, deterministic from `seed` and `name`.
fn uniform(seed: u64, name: &str, n: usize, bound: f32) -> Vec<f32> {
    let mut s = blake3::hash(format!("{seed}:{name}").as_bytes()).as_bytes()[..8]
        .iter()
        .fold(0u64, |a, b| (a << 8) | u64::from(*b));
    (0..n)
        .map(|_| {
            s = splitmix(s);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
        })
        .collect()
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A training sequence: the loss covers the tokens from `answer_from` on.
#[derive(Debug, Clone)]
pub struct Example {
    pub ids: Vec<u32>,
    pub answer_from: usize,
}

impl Trainable {
    /// Loads `path` with fresh adapters, on the CPU.
    pub fn load(path: &Path, lora: LoraConfig) -> Result<Trainable> {
        Trainable::load_on(path, lora, &Device::Cpu)
    }

    /// Loads `path` with fresh adapters onto `device` (frozen matrices, norms, adapters, and on
    /// a GPU the embedding table in the pass's dtype, as PEFT holds it; on the CPU the table
    /// stays in its GGUF type and rows are dequantized per sequence).
    pub fn load_on(path: &Path, lora: LoraConfig, device: &Device) -> Result<Trainable> {
        for t in &lora.targets {
            if !TARGETS.iter().any(|(n, _, _)| n == t) {
                bail!("unknown LoRA target `{t}`");
            }
        }
        let mut g = Gguf::open(path)?;
        let cfg = read_config(&g)?;
        let mut base_bytes = 0u64;
        // The matrix as held, and whether QLoRA re-quantized it.
        let mut matrix = |g: &mut Gguf, name: &str| -> Result<(Base, bool)> {
            let q = g.tensor(name)?;
            let mut requantized = false;
            let b = if lora.qlora && lora.nf4 {
                let w = q.dequantize(&Device::Cpu)?;
                Base::Nf4(Arc::new(nf4::Nf4::quantize(&w)?.to_device(device)?))
            } else if lora.qlora {
                let q = if is_4bit(q.dtype()) {
                    q
                } else if q.shape().dims()[1].is_multiple_of(32) {
                    requantized = true;
                    QTensor::quantize(&q.dequantize(&Device::Cpu)?, GgmlDType::Q4_0)?
                } else {
                    bail!(
                        "`{name}`: rows of {} cannot be held in 4-bit blocks of 32",
                        q.shape().dims()[1]
                    )
                };
                Base::Quant(Arc::new(on_device(q, device)?))
            } else {
                dense_t(&q, lora.dtype, device)?
            };
            // The merge must start from the base the adapter learned on.
            requantized |= lora.qlora && lora.nf4;
            base_bytes += b.bytes();
            Ok((b, requantized))
        };
        let dense = |g: &mut Gguf, name: &str| -> Result<Tensor> {
            Ok(g.tensor(name)?
                .dequantize(&Device::Cpu)?
                .to_device(device)?)
        };
        let mut layers = vec![];
        for i in 0..cfg.n_layer {
            let w = |s: &str| format!("blk.{i}.{s}.weight");
            let mut proj = vec![];
            for (short, gguf_name, _) in TARGETS {
                let (base, requantized) = matrix(&mut g, &w(gguf_name))?;
                let lora_vars = if lora.targets.iter().any(|t| t == short) {
                    let (in_dim, out_dim) = base.dims()?;
                    let a = uniform(
                        lora.seed,
                        &format!("{i}.{short}.A"),
                        lora.rank * in_dim,
                        1.0 / (in_dim as f32).sqrt(),
                    );
                    let a = Var::from_tensor(&Tensor::from_vec(a, (lora.rank, in_dim), device)?)?;
                    let b = Var::zeros((out_dim, lora.rank), DType::F32, device)?;
                    Some((a, b))
                } else {
                    None
                };
                proj.push(Proj {
                    base,
                    requantized,
                    lora: lora_vars,
                });
            }
            let bias = if cfg.family == "qwen2" {
                let b = |s: &str| format!("blk.{i}.{s}.bias");
                Some([
                    dense(&mut g, &b("attn_q"))?,
                    dense(&mut g, &b("attn_k"))?,
                    dense(&mut g, &b("attn_v"))?,
                ])
            } else {
                None
            };
            let extra = if cfg.gemma.is_some() {
                Some([
                    dense(&mut g, &w("attn_q_norm"))?,
                    dense(&mut g, &w("attn_k_norm"))?,
                    dense(&mut g, &w("post_attention_norm"))?,
                    dense(&mut g, &w("post_ffw_norm"))?,
                ])
            } else {
                None
            };
            layers.push(TLayer {
                extra,
                attn_norm: dense(&mut g, &w("attn_norm"))?,
                ffn_norm: dense(&mut g, &w("ffn_norm"))?,
                bias,
                proj,
            });
        }
        let norm = dense(&mut g, "output_norm.weight")?;
        let head_name = if g.content.tensor_infos.contains_key("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        // QLoRA quantizes the blocks' projections only; the output head stays as the file has
        // it (as bitsandbytes keeps lm_head in 16 bits).
        let head = match g.tensor_type(head_name) {
            Some(t)
                if lora.qlora
                    && !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) =>
            {
                let q = on_device(g.tensor(head_name)?, device)?;
                base_bytes += q.storage_size_in_bytes() as u64;
                Base::Quant(Arc::new(q))
            }
            Some(_) if lora.qlora => {
                let b = dense_t(&g.tensor(head_name)?, lora.dtype, device)?;
                base_bytes += b.bytes();
                b
            }
            _ => matrix(&mut g, head_name)?.0,
        };
        let embed_q = Arc::new(g.tensor("token_embd.weight")?);
        let embed = if device.is_cpu() {
            base_bytes += embed_q.storage_size_in_bytes() as u64;
            Embed::Host(Embedding::new(embed_q)?)
        } else {
            // Row lookups on the host (a dequantized row each, then the copy over): with the
            // fused kernels in, a 1B step's forward took 67 ms against its recompute's 31.
            let t = embed_q
                .dequantize(&Device::Cpu)?
                .to_dtype(lora.dtype)?
                .to_device(device)?;
            base_bytes += (t.elem_count() * t.dtype().size_in_bytes()) as u64;
            Embed::Device(t)
        };
        let (cos, sin) = rope_tables(&cfg)?;
        let (cos, sin) = (cos.to_device(device)?, sin.to_device(device)?);
        let local_rope = match local_rope_tables(&cfg)? {
            Some((c, s)) => Some((c.to_device(device)?, s.to_device(device)?)),
            None => None,
        };
        let head_chunk = HeadLoss::rows_per_chunk(cfg.vocab);
        Ok(Trainable {
            path: path.to_path_buf(),
            local_rope,
            device: device.clone(),
            dtype: lora.dtype,
            cfg,
            lora,
            embed,
            layers,
            norm,
            head_chunk,
            head,
            cos,
            sin,
            base_bytes,
        })
    }

    /// The trainable variables (A, B of every adapted projection).
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|l| l.proj.iter())
            .filter_map(|p| p.lora.as_ref())
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect()
    }

    pub fn trainable_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// What the merge adds to the file's matrices, GGUF name → `[out, in]` (GGUF layout):
    /// `(α/r) · B A` per adapted matrix, plus, where QLoRA trained against a re-quantized
    /// matrix, the difference between that base and the file's, so that the merged model is the
    /// base the adapter learned on plus the adapter.
    pub fn deltas(&self) -> Result<Vec<(String, Tensor)>> {
        let mut file = None;
        let mut out = vec![];
        for (i, l) in self.layers.iter().enumerate() {
            for ((_, gguf_name, _), p) in TARGETS.iter().zip(&l.proj) {
                let name = format!("blk.{i}.{gguf_name}.weight");
                let mut d = match &p.lora {
                    Some((a, b)) => {
                        Some((b.as_tensor().matmul(a.as_tensor())? * self.lora.scale())?)
                    }
                    None => None,
                };
                if p.requantized {
                    let g = match &mut file {
                        Some(g) => g,
                        None => file.insert(Gguf::open(&self.path)?),
                    };
                    let trained = p.base.weight()?;
                    let original = g.tensor(&name)?.dequantize(&Device::Cpu)?;
                    let shift = (trained - original)?.to_device(&self.device)?;
                    d = Some(match d {
                        Some(d) => (d + shift)?,
                        None => shift,
                    });
                }
                if let Some(d) = d {
                    out.push((name, d.to_device(&Device::Cpu)?));
                }
            }
        }
        Ok(out)
    }

    /// Adapter tensors under PEFT's names, in Hugging Face layout (llama q/k rows un-permuted).
    pub fn peft_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        for (i, l) in self.layers.iter().enumerate() {
            for ((short, _, hf), p) in TARGETS.iter().zip(&l.proj) {
                if let Some((a, b)) = &p.lora {
                    let mut b = b.as_tensor().to_device(&Device::Cpu)?;
                    if self.cfg.family == "llama" && (*short == "q" || *short == "k") {
                        let heads = if *short == "q" {
                            self.cfg.n_head
                        } else {
                            self.cfg.n_kv_head
                        };
                        b = super::hf::unpermute_qk(&b, heads)?;
                    }
                    let p = format!("base_model.model.model.layers.{i}.{hf}");
                    out.push((
                        format!("{p}.lora_A.weight"),
                        a.as_tensor().to_device(&Device::Cpu)?,
                    ));
                    out.push((format!("{p}.lora_B.weight"), b));
                }
            }
        }
        Ok(out)
    }

    /// PEFT's adapter_config.json.
    pub fn peft_config(&self, base_model: &str) -> serde_json::Value {
        let modules: Vec<&str> = TARGETS
            .iter()
            .filter(|(s, _, _)| self.lora.targets.iter().any(|t| t == s))
            .map(|(_, _, hf)| hf.rsplit('.').next().unwrap_or(hf))
            .collect();
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.lora.rank,
            "lora_alpha": self.lora.alpha,
            "lora_dropout": self.lora.dropout,
            "target_modules": modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::{KvCache, Llama};
    use crate::test_util::max_diff;

    #[test]
    fn the_pass_dtype_is_bf16_on_a_gpu_and_f32_on_the_cpu_unless_chosen() {
        assert_eq!(pass_dtype("auto", true).unwrap(), DType::F32);
        assert_eq!(pass_dtype("auto", false).unwrap(), DType::BF16);
        assert_eq!(pass_dtype("bf16", true).unwrap(), DType::BF16);
        assert_eq!(pass_dtype("f32", false).unwrap(), DType::F32);
        assert!(pass_dtype("f8", true).is_err());
    }

    fn tiny(arch: &str, ty: GgmlDType) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        crate::synthetic::write_gguf(arch, 3, ty, &p, &|_, _| {}, &|| false).unwrap();
        (d, p)
    }

    fn cfg(qlora: bool) -> LoraConfig {
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: TARGETS.iter().map(|t| t.0.to_string()).collect(),
            qlora,
            nf4: false,
            dtype: DType::F32,
            seed: 1,
        }
    }

    fn ids() -> Vec<u32> {
        vec![5, 17, 300, 2, 999, 41, 7, 7, 128, 64]
    }

    fn inference_logits(path: &Path, ids: &[u32]) -> Tensor {
        let mut g = Gguf::open(path).unwrap();
        let m = Llama::load(&mut g).unwrap();
        let t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
        m.forward(&t, &mut KvCache::new(m.cfg.n_layer))
            .unwrap()
            .squeeze(0)
            .unwrap()
    }

    #[test]
    fn trainable_forward_matches_the_inference_forward() {
        for arch in ["llama-tiny", "qwen2-tiny"] {
            let (_d, p) = tiny(arch, GgmlDType::F32);
            let m = Trainable::load(&p, cfg(false)).unwrap();
            // B = 0: the adapters add nothing yet.
            let d = max_diff(&m.logits(&ids()).unwrap(), &inference_logits(&p, &ids()));
            assert!(d < 1e-3, "{arch}: {d}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (_d, p) = tiny("llama-tiny", GgmlDType::F32);
        let m = Trainable::load(&p, cfg(false)).unwrap();
        // Give B non-zero values so gradients reach A too.
        for v in m.vars() {
            let n = v.elem_count();
            let vals = uniform(9, &format!("{:?}", v.id()), n, 0.05);
            v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        let ex = Example {
            ids: ids(),
            answer_from: 6,
        };
        let grads = m.loss(&ex, false).unwrap().backward().unwrap();
        let loss_at = || m.loss(&ex, false).unwrap().to_scalar::<f32>().unwrap() as f64;
        let vars = m.vars();
        let mut checked = 0;
        // A of q in layer 0, B of down in layer 1: a few coordinates each.
        for v in [&vars[0], &vars[vars.len() - 1]] {
            let g: Vec<f32> = grads
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let base: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for &i in &[0usize, 7, base.len() / 2] {
                let eps = 1e-2f32;
                let mut plus = base.clone();
                plus[i] += eps;
                v.set(&Tensor::from_vec(plus, v.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let lp = loss_at();
                let mut minus = base.clone();
                minus[i] -= eps;
                v.set(&Tensor::from_vec(minus, v.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let lm = loss_at();
                v.set(&Tensor::from_vec(base.clone(), v.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let numeric = (lp - lm) / (2.0 * eps as f64);
                let analytic = g[i] as f64;
                let tol = 2e-3 + 0.05 * numeric.abs().max(analytic.abs());
                assert!(
                    (numeric - analytic).abs() < tol,
                    "coord {i}: numeric {numeric} vs analytic {analytic}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 6);
    }

    fn fit(qlora: bool, ty: GgmlDType) -> Vec<StepLog> {
        let (_d, p) = tiny("llama-tiny", ty);
        let m = Trainable::load(&p, cfg(qlora)).unwrap();
        let examples = vec![
            Example {
                ids: vec![1, 2, 3, 4, 10, 11, 12],
                answer_from: 4,
            },
            Example {
                ids: vec![9, 8, 7, 10, 11, 12],
                answer_from: 3,
            },
        ];
        let o = TrainOptions {
            lr: 1e-2,
            steps: 12,
            batch: 2,
            grad_accum: 1,
            checkpointing: false,
            profile: false,
        };
        train(&m, &examples, &o, &mut |_| Ok(())).unwrap()
    }

    #[test]
    fn a_few_steps_reduce_the_loss() {
        let logs = fit(false, GgmlDType::F32);
        let (first, last) = (logs[0].loss, logs.last().unwrap().loss);
        assert!(last < first * 0.7, "{first} → {last}");
    }

    #[test]
    fn qlora_trains_with_a_4bit_base() {
        let (_d, p) = tiny("llama-tiny", GgmlDType::F32);
        let q = Trainable::load(&p, cfg(true)).unwrap();
        let dense = Trainable::load(&p, cfg(false)).unwrap();
        // Block matrices at ~4.5 bits per weight instead of 32 (the f32 embedding and the output
        // head stay as the file has them in both).
        assert!(
            q.base_bytes * 2 < dense.base_bytes,
            "{} vs {}",
            q.base_bytes,
            dense.base_bytes
        );
        let logs = fit(true, GgmlDType::F32);
        let (first, last) = (logs[0].loss, logs.last().unwrap().loss);
        assert!(last < first * 0.7, "{first} → {last}");
    }

    /// A tiny f32 model with non-zero adapters, merged: (logits of the trainable model, logits
    /// of the merged GGUF, logits of the untouched file).
    fn adapt_and_merge(qlora: bool) -> (Tensor, Tensor, Tensor) {
        let (d, p) = tiny("llama-tiny", GgmlDType::F32);
        let m = Trainable::load(&p, cfg(qlora)).unwrap();
        for v in m.vars() {
            let vals = uniform(5, &format!("{:?}", v.id()), v.elem_count(), 0.05);
            v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        let merged = d.path().join("merged.gguf");
        let deltas = m.deltas().unwrap().into_iter().collect();
        crate::gguf::requantize_with(&p, &merged, GgmlDType::F32, &deltas, &|_, _| {}, &|| false)
            .unwrap();
        (
            m.logits(&ids()).unwrap(),
            inference_logits(&merged, &ids()),
            inference_logits(&p, &ids()),
        )
    }

    #[test]
    fn merged_model_equals_base_plus_adapter() {
        let (adapted, merged, base) = adapt_and_merge(false);
        let diff = max_diff(&adapted, &merged);
        assert!(diff < 1e-3, "{diff}");
        // And the adapters changed something.
        assert!(max_diff(&adapted, &base) > 1e-2);
    }

    /// QLoRA on a file that is not 4-bit trains against a re-quantized base; the merged model
    /// must be that base plus the adapter, not the file plus the adapter.
    #[test]
    fn merged_qlora_model_equals_its_trained_base_plus_adapter() {
        let (adapted, merged, _) = adapt_and_merge(true);
        // The 4-bit forward quantizes activations to 8 bits: close, not equal.
        let diff = max_diff(&adapted, &merged);
        let scale = max_diff(&adapted, &adapted.zeros_like().unwrap());
        assert!(diff < 0.02 * scale, "{diff} vs logits up to {scale}");
    }

    #[test]
    fn peft_names_and_shapes() {
        let (_d, p) = tiny("llama-tiny", GgmlDType::F32);
        let m = Trainable::load(&p, cfg(false)).unwrap();
        let t = m.peft_tensors().unwrap();
        assert_eq!(t.len(), 2 * 7 * 2);
        let get = |n: &str| {
            t.iter()
                .find(|(k, _)| k == n)
                .unwrap_or_else(|| panic!("{n}"))
                .1
                .dims()
                .to_vec()
        };
        // hidden 256, 2 KV heads × 64, ffn 512, rank 4.
        assert_eq!(
            get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            [4, 256]
        );
        assert_eq!(
            get("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"),
            [128, 4]
        );
        assert_eq!(
            get("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"),
            [4, 512]
        );
        assert_eq!(
            get("base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"),
            [512, 4]
        );
        let c = m.peft_config("smol");
        assert_eq!(c["peft_type"], "LORA");
        assert_eq!(c["target_modules"].as_array().unwrap().len(), 7);
        assert_eq!(c["target_modules"][0], "q_proj");
    }

    fn examples() -> Vec<Example> {
        vec![
            Example {
                ids: vec![1, 2, 3, 4, 10, 11, 12],
                answer_from: 4,
            },
            Example {
                ids: vec![9, 8, 10, 11],
                answer_from: 2,
            },
            Example {
                ids: vec![5, 6, 7, 8, 9, 10, 11, 12, 13],
                answer_from: 7,
            },
        ]
    }

    /// Sets every adapter to small seeded values (B non-zero, so gradients reach A).
    fn perturb(m: &Trainable, seed: u64) {
        for v in m.vars() {
            let vals = uniform(seed, &format!("{:?}", v.id()), v.elem_count(), 0.05);
            v.set(&Tensor::from_vec(vals, v.shape(), &m.device).unwrap())
                .unwrap();
        }
    }

    fn scalar(t: &Tensor) -> f64 {
        t.to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn the_batched_loss_is_the_mean_of_the_sequences_losses() {
        for arch in ["llama-tiny", "qwen2-tiny"] {
            let (_d, p) = tiny(arch, GgmlDType::F32);
            let m = Trainable::load(&p, cfg(false)).unwrap();
            perturb(&m, 3);
            let ex = examples();
            let each: Vec<f64> = ex
                .iter()
                .map(|e| scalar(&m.loss(e, false).unwrap()))
                .collect();
            let refs: Vec<&Example> = ex.iter().collect();
            let b = m.batch(&refs, 1.0 / 3.0).unwrap();
            assert_eq!((b.rows, b.len, b.tokens), (3, 9, 20));
            let batched = scalar(&m.batch_loss(&b, false, 0).unwrap());
            let mean = each.iter().sum::<f64>() / 3.0;
            assert!(
                (batched - mean).abs() < 1e-4 * mean,
                "{arch}: {batched} vs {mean}"
            );
        }
    }

    fn grads_of(m: &Trainable, b: &Batch, checkpointing: bool) -> (f64, Vec<Vec<f32>>) {
        let (loss, g) = m
            .loss_and_grads(b, 42, checkpointing, &mut Profiler::new(None))
            .unwrap();
        let gs = m
            .vars()
            .iter()
            .map(|v| {
                g.get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        (loss, gs)
    }

    fn max_gap(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, f32) {
        let gap = a
            .iter()
            .zip(b)
            .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()));
        let size = a.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        (gap.fold(0f32, f32::max), size)
    }

    /// Recomputing blocks in the backward (with the same dropout masks) gives the gradients of
    /// the whole graph.
    #[test]
    fn checkpointing_gives_the_same_gradients() {
        let (_d, p) = tiny("llama-tiny", GgmlDType::F32);
        let mut c = cfg(false);
        c.dropout = 0.1;
        let m = Trainable::load(&p, c).unwrap();
        perturb(&m, 4);
        let ex = examples();
        let b = m.batch(&ex.iter().collect::<Vec<_>>(), 1.0 / 3.0).unwrap();
        let (l1, g1) = grads_of(&m, &b, false);
        let (l2, g2) = grads_of(&m, &b, true);
        assert!((l1 - l2).abs() < 1e-6, "{l1} vs {l2}");
        let (gap, size) = max_gap(&g1, &g2);
        assert!(size > 0.0 && gap < 1e-5 * size.max(1.0), "{gap} of {size}");
    }

    /// A batch of 3 and 3 micro-batches of 1 accumulated train the same adapters.
    #[test]
    fn a_batch_and_accumulated_micro_batches_train_alike() {
        let (_d, p) = tiny("llama-tiny", GgmlDType::F32);
        let run = |batch, grad_accum| {
            let m = Trainable::load(&p, cfg(false)).unwrap();
            let o = TrainOptions {
                lr: 1e-2,
                steps: 4,
                batch,
                grad_accum,
                checkpointing: false,
                profile: false,
            };
            let logs = train(&m, &examples(), &o, &mut |_| Ok(())).unwrap();
            let losses: Vec<f64> = logs.iter().map(|l| l.loss).collect();
            (losses, logs[0].tokens, m)
        };
        let (batched, tokens, m1) = run(3, 1);
        let (accumulated, tokens_acc, m2) = run(1, 3);
        assert_eq!((tokens, tokens_acc), (20, 20));
        for (a, b) in batched.iter().zip(&accumulated) {
            assert!(
                (a - b).abs() < 1e-4 * a.abs(),
                "{batched:?} vs {accumulated:?}"
            );
        }
        assert!(batched[3] < batched[0], "{batched:?}");
        let w = |m: &Trainable| -> Vec<Vec<f32>> {
            m.vars()
                .iter()
                .map(|v| v.flatten_all().unwrap().to_vec1().unwrap())
                .collect()
        };
        let (gap, size) = max_gap(&w(&m1), &w(&m2));
        assert!(gap < 1e-4 * size, "{gap} of {size}");
    }

    #[test]
    fn an_epoch_sees_every_example_once_in_length_buckets() {
        let lengths = [5, 9, 3, 7, 7, 2, 8];
        let s = schedule(&lengths, 3, 1);
        let mut seen: Vec<usize> = s.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        // Sorted by length, cut in threes: {2,3,5} {7,7,8} {9}.
        let mut sets: Vec<Vec<usize>> = s
            .iter()
            .map(|b| {
                let mut l: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
                l.sort();
                l
            })
            .collect();
        sets.sort();
        assert_eq!(sets, vec![vec![2, 3, 5], vec![7, 7, 8], vec![9]]);
        assert_eq!(steps_per_epoch(7, 3, 2), 2);
        assert_ne!(
            schedule(&lengths, 1, 1),
            schedule(&lengths, 1, 2),
            "seeded order"
        );
    }

    /// A 16-bit pass (bf16 base and activations, f32 adapters) stays close to the f32 one.
    #[test]
    fn a_bf16_pass_is_close_to_the_f32_pass() {
        let (_d, p) = tiny("llama-tiny", GgmlDType::F32);
        let f32m = Trainable::load(&p, cfg(false)).unwrap();
        let mut c = cfg(false);
        c.dtype = DType::BF16;
        let bf = Trainable::load(&p, c).unwrap();
        assert!(bf.base_bytes < f32m.base_bytes);
        let (a, b) = (f32m.logits(&ids()).unwrap(), bf.logits(&ids()).unwrap());
        let scale = max_diff(&a, &a.zeros_like().unwrap());
        let d = max_diff(&a, &b);
        assert!(d < 0.05 * scale, "{d} vs logits up to {scale}");
        let ex = &examples()[0];
        let (la, lb) = (
            scalar(&f32m.loss(ex, false).unwrap()),
            scalar(&bf.loss(ex, false).unwrap()),
        );
        assert!((la - lb).abs() < 0.05 * la, "{la} vs {lb}");
    }

    #[test]
    fn qlora_on_an_nf4_base_trains_and_merges_to_its_base_plus_adapter() {
        let (d, p) = tiny("llama-tiny", GgmlDType::F32);
        let mut c = cfg(true);
        c.nf4 = true;
        let m = Trainable::load(&p, c.clone()).unwrap();
        let dense = Trainable::load(&p, cfg(false)).unwrap();
        assert!(m.base_bytes * 2 < dense.base_bytes);
        perturb(&m, 5);
        let merged = d.path().join("merged.gguf");
        let deltas = m.deltas().unwrap().into_iter().collect();
        crate::gguf::requantize_with(&p, &merged, GgmlDType::F32, &deltas, &|_, _| {}, &|| false)
            .unwrap();
        let adapted = m.logits(&ids()).unwrap();
        let diff = max_diff(&adapted, &inference_logits(&merged, &ids()));
        let scale = max_diff(&adapted, &adapted.zeros_like().unwrap());
        assert!(
            diff < 1e-3 * scale.max(1.0),
            "{diff} vs logits up to {scale}"
        );
        let m = Trainable::load(&p, c).unwrap();
        let o = TrainOptions {
            lr: 1e-2,
            steps: 12,
            batch: 2,
            grad_accum: 1,
            checkpointing: true,
            profile: false,
        };
        let logs = train(&m, &examples()[..2], &o, &mut |_| Ok(())).unwrap();
        let (first, last) = (logs[0].loss, logs.last().unwrap().loss);
        assert!(last < first * 0.7, "{first} → {last}");
    }

    #[test]
    fn nan_loss_is_an_error() {
        let (_d, p) = tiny("llama-tiny", GgmlDType::F32);
        let m = Trainable::load(&p, cfg(false)).unwrap();
        let ex = vec![Example {
            ids: vec![1, 2, 3],
            answer_from: 1,
        }];
        let o = TrainOptions {
            lr: 1e30,
            steps: 5,
            batch: 1,
            grad_accum: 1,
            checkpointing: false,
            profile: false,
        };
        let e = train(&m, &ex, &o, &mut |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("loss became"), "{e}");
    }

    /// The whole pass on a GPU (fused kernels) against the CPU's (candle's operations), f32,
    /// with and without checkpointing: the same loss and adapter gradients.
    #[cfg(feature = "cuda")]
    #[test]
    fn the_gpu_pass_gives_the_cpus_loss_and_gradients() {
        let gpu = Device::new_cuda(0).unwrap();
        for arch in ["llama-tiny", "qwen2-tiny"] {
            let (_d, p) = tiny(arch, GgmlDType::F32);
            let cpu = Trainable::load(&p, cfg(false)).unwrap();
            let on_gpu = Trainable::load_on(&p, cfg(false), &gpu).unwrap();
            let a = Example {
                ids: ids(),
                answer_from: 3,
            };
            let b = Example {
                ids: ids()[..7].to_vec(),
                answer_from: 2,
            };
            for checkpointing in [false, true] {
                let run = |m: &Trainable| {
                    let batch = m.batch(&[&a, &b], 0.5).unwrap();
                    let mut prof = Profiler::new(None);
                    m.loss_and_grads(&batch, 3, checkpointing, &mut prof)
                        .unwrap()
                };
                let ((lc, gc), (lg, gg)) = (run(&cpu), run(&on_gpu));
                assert!((lc - lg).abs() < 1e-4, "{arch}: loss {lc} vs {lg}");
                for (vc, vg) in cpu.vars().iter().zip(on_gpu.vars()) {
                    let (Some(c), Some(g)) = (gc.get(vc.as_tensor()), gg.get(vg.as_tensor()))
                    else {
                        panic!("{arch}: a gradient is missing");
                    };
                    let d = max_diff(&g.to_device(&Device::Cpu).unwrap(), c);
                    assert!(
                        d < 1e-4,
                        "{arch} checkpointing {checkpointing}: gradients differ by {d}"
                    );
                }
            }
        }
    }
}
