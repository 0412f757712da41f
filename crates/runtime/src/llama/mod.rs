//! The llama architecture (SmolLM2, Llama 3.x), its qwen2 variant (Qwen2.5) and Gemma 3 over GGUF
//! weights, with a forward pass of our own: batched input, full-sequence logits (for perplexity
//! and KL), and a KV cache. Matrix weights stay in their GGUF type. On the CPU, models whose
//! matrices (head included) are all Q4_0 / Q4_1 / Q8_0 / Q6_K / F16 run entirely on our code
//! ([`super::cpu::forward`]: kernels, attention, norms); others are written with candle's ops and
//! quantized kernels (`QMatMul`) here. On a GPU, always candle's ops; f16 / bf16 matrices are
//! held in their own type and multiplied densely ([`Matrix`]).

use super::cpu::{self, CpuMat};
use super::gguf::Gguf;
use super::model::Layer;
pub use super::model::{Config, Gemma};
use anyhow::{Context, Result, bail};
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};
use std::sync::Arc;

mod config;
mod kv;
mod weights;

pub(crate) use config::{local_rope_tables, read_config, rope_tables};
pub use kv::KvCache;
use kv::cache_append;
use weights::CandleLayer;
pub(crate) use weights::{Embedding, Matrix};

mod decode;
pub use decode::Decode;

pub struct Llama {
    pub cfg: Config,
    embed: Embedding,
    body: Pass,
    /// Bytes the weights occupy as loaded: matrices as held (our CPU kernels keep the file's
    /// bytes; candle may widen, e.g. f32), the embedding in its GGUF type (plus the head's own
    /// copy when tied), norms in f32.
    pub weight_bytes: u64,
    /// Where the matrices, norms and KV cache live (the embedding table stays in host memory;
    /// looked-up rows are moved).
    pub device: Device,
    /// Decode buffers of finished generations, reused by the next ones ([`decode`]).
    decode_pool: decode::Pool,
}

/// The layers, final norm and head, with the forward pass that runs them.
enum Pass {
    /// Through candle's ops (GPUs; CPU models with matrix types we have no kernels for).
    Candle(CandlePass),
    /// Our own CPU forward pass ([`cpu::forward`]).
    Cpu(cpu::forward::Model),
}

struct CandlePass {
    layers: Vec<CandleLayer>,
    norm: Tensor,
    head: Matrix,
    cos: Tensor,
    sin: Tensor,
    /// RoPE tables of the local layers (Gemma 3).
    local_rope: Option<(Tensor, Tensor)>,
}

/// The forward pass of a model on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// Our own ([`cpu::forward`]) when every matrix is Q4_0, Q4_1, Q8_0, Q6_K or F16; candle's
    /// otherwise.
    Own,
    /// Candle's ops and quantized kernels throughout.
    Candle,
}

impl Llama {
    pub fn load(g: &mut Gguf) -> Result<Llama> {
        Llama::load_on(g, &Device::Cpu)
    }

    /// Loads the weights onto `device`. On a GPU, quantized matrices use candle's CUDA quantized
    /// kernels and f16/f32 matrices are held dense (f32), which `weight_bytes` counts.
    pub fn load_on(g: &mut Gguf, device: &Device) -> Result<Llama> {
        Llama::load_with(g, device, Kernels::Own)
    }

    /// As [`Llama::load_on`], choosing the CPU forward pass: `Kernels::Candle` keeps candle's
    /// ops throughout (to compare the two).
    pub fn load_with(g: &mut Gguf, device: &Device, kernels: Kernels) -> Result<Llama> {
        let cfg = read_config(g)?;
        let Config {
            n_layer,
            hidden,
            ref family,
            ..
        } = cfg;
        let arch = family.clone();
        let mut weight_bytes = 0u64;
        let head_name = match g.content.tensor_infos.contains_key("output.weight") {
            true => "output.weight",
            false => "token_embd.weight",
        };
        // Our CPU kernels only when every matrix has them: candle's quantized matmul runs on a
        // spinning thread pool of its own, and two such pools on the same cores slowed a file
        // mixing Q8_0 and Q4_K to a fifth of its speed.
        const MATRICES: [&str; 7] = [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ];
        let own_kernels = device.is_cpu()
            && kernels == Kernels::Own
            && (0..n_layer)
                .flat_map(|i| MATRICES.map(|m| format!("blk.{i}.{m}.weight")))
                .chain([head_name.to_string()])
                .all(|n| {
                    matches!(
                        g.tensor_type(&n),
                        Some(
                            GgmlDType::Q4_0
                                | GgmlDType::Q4_1
                                | GgmlDType::Q8_0
                                | GgmlDType::Q6K
                                | GgmlDType::F16
                        )
                    )
                });
        let mut qmat = |g: &mut Gguf, name: &str| -> Result<Matrix> {
            let half = matches!(g.tensor_type(name), Some(GgmlDType::F16 | GgmlDType::BF16));
            let m = if half && !device.is_cpu() {
                // Dequantized on the host (candle's CUDA dequantize has no bf16 kernel), moved
                // over in the file's own type.
                let q = g.tensor(name)?;
                let dt = if q.dtype() == GgmlDType::BF16 {
                    DType::BF16
                } else {
                    DType::F16
                };
                Matrix::Half(
                    q.dequantize(&Device::Cpu)?
                        .to_dtype(dt)?
                        .to_device(device)?,
                )
            } else {
                let q = g.tensor_on(name, device)?;
                let ours = match own_kernels {
                    true => CpuMat::from_qtensor(&q).with_context(|| format!("tensor `{name}`"))?,
                    false => None,
                };
                // f16 matrices stay f16 and go through the quantized kernels (f16 dot products)
                // on the CPU; candle's default would hold them as f32, doubling the bytes read.
                match ours {
                    Some(m) => Matrix::Cpu(m),
                    None if q.dtype() == GgmlDType::F16 => Matrix::Q(QMatMul::QTensor(Arc::new(q))),
                    None => Matrix::Q(
                        QMatMul::from_qtensor(q)
                            .map_err(|e| anyhow::anyhow!("tensor `{name}`: {e}"))?,
                    ),
                }
            };
            weight_bytes += m.resident_bytes();
            Ok(m)
        };
        let dense = |g: &mut Gguf, name: &str| -> Result<Tensor> {
            let t = g.tensor(name)?;
            Ok(t.dequantize(&Device::Cpu)?.to_device(device)?)
        };
        let embed_q = Arc::new(g.tensor("token_embd.weight")?);
        let (_, ehidden) = embed_q.shape().dims2()?;
        if ehidden != hidden {
            bail!(
                "token_embd.weight has width {ehidden}, but llama.embedding_length says {hidden}"
            );
        }
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let bias = if arch == "qwen2" {
                let b = |s: &str| format!("blk.{i}.{s}.bias");
                Some([
                    dense(g, &b("attn_q"))?,
                    dense(g, &b("attn_k"))?,
                    dense(g, &b("attn_v"))?,
                ])
            } else {
                None
            };
            let extra = if cfg.gemma.is_some() {
                Some([
                    dense(g, &p("attn_q_norm"))?,
                    dense(g, &p("attn_k_norm"))?,
                    dense(g, &p("post_attention_norm"))?,
                    dense(g, &p("post_ffw_norm"))?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                extra,
                attn_norm: dense(g, &p("attn_norm"))?,
                q: qmat(g, &p("attn_q"))?,
                k: qmat(g, &p("attn_k"))?,
                v: qmat(g, &p("attn_v"))?,
                bias,
                o: qmat(g, &p("attn_output"))?,
                ffn_norm: dense(g, &p("ffn_norm"))?,
                gate: qmat(g, &p("ffn_gate"))?,
                up: qmat(g, &p("ffn_up"))?,
                down: qmat(g, &p("ffn_down"))?,
            });
        }
        let norm = dense(g, "output_norm.weight")?;
        // Tied embeddings: no `output.weight`, the embedding matrix is the head. The head gets
        // its own copy (sharing the embedding's QTensor slows candle's decoding: docs/cpu.md,
        // "Design notes"); both copies are counted in `weight_bytes`.
        let head = qmat(g, head_name)?;
        weight_bytes += embed_q.storage_size_in_bytes() as u64;
        weight_bytes += ((2 * n_layer + 1) * hidden * 4) as u64; // norms
        if cfg.gemma.is_some() {
            weight_bytes += (n_layer * (2 * cfg.head_dim + 2 * hidden) * 4) as u64;
        }
        let embed = Embedding::new(embed_q)?;
        let body = if own_kernels {
            let rope = |(cos, sin): (Tensor, Tensor)| -> Result<cpu::forward::Rope> {
                Ok(cpu::forward::Rope {
                    cos: cos.flatten_all()?.to_vec1()?,
                    sin: sin.flatten_all()?.to_vec1()?,
                })
            };
            Pass::Cpu(cpu::forward::Model {
                layers: layers
                    .into_iter()
                    .map(Layer::into_cpu)
                    .collect::<Result<_>>()?,
                norm: norm.to_vec1()?,
                head: match head {
                    Matrix::Cpu(h) => h,
                    _ => bail!("the output head has no CPU kernel"),
                },
                rope: rope(rope_tables(&cfg)?)?,
                local_rope: local_rope_tables(&cfg)?.map(rope).transpose()?,
            })
        } else {
            let (cos, sin) = rope_tables(&cfg)?;
            let local_rope = match local_rope_tables(&cfg)? {
                Some((c, s)) => Some((c.to_device(device)?, s.to_device(device)?)),
                None => None,
            };
            Pass::Candle(CandlePass {
                layers,
                norm,
                head,
                cos: cos.to_device(device)?,
                sin: sin.to_device(device)?,
                local_rope,
            })
        };
        Ok(Llama {
            device: device.clone(),
            cfg,
            embed,
            body,
            weight_bytes,
            decode_pool: decode::Pool::default(),
        })
    }

    /// Logits for every position of `ids` (`[batch, tokens]`, u32), continuing from `cache`.
    /// Returns `[batch, tokens, vocab]` f32.
    pub fn forward(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        match &self.body {
            Pass::Candle(body) => match self.fixed_step(body, ids, cache)? {
                Some(logits) => Ok(logits),
                None => Ok(body.head.forward(&self.hidden(body, ids, cache)?)?),
            },
            Pass::Cpu(m) => {
                let (h, b, t) = self.cpu_hidden(m, ids, cache)?;
                let logits = m.logits(&h, b * t);
                let vocab = logits.len() / (b * t).max(1);
                Ok(Tensor::from_vec(logits, (b, t, vocab), &Device::Cpu)?)
            }
        }
    }

    /// Logits of the last position only: `[batch, vocab]` (the head runs on that position only).
    pub fn forward_last(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        Ok(self.forward_tail(ids, cache, 1)?.squeeze(1)?)
    }

    /// Logits `[batch, n, vocab]` of the last `n` positions, `n` clamped to 1..=tokens (the head
    /// computed for those only).
    pub fn forward_tail(&self, ids: &Tensor, cache: &mut KvCache, n: usize) -> Result<Tensor> {
        match &self.body {
            Pass::Candle(body) => {
                if let Some(logits) = self.fixed_step(body, ids, cache)? {
                    return Ok(logits);
                }
                let x = self.hidden(body, ids, cache)?;
                let t = x.dim(1)?;
                let n = n.clamp(1, t);
                Ok(body.head.forward(&x.narrow(1, t - n, n)?.contiguous()?)?)
            }
            Pass::Cpu(m) => {
                let (h, b, t) = self.cpu_hidden(m, ids, cache)?;
                let width = self.cfg.hidden;
                let n = n.clamp(1, t);
                let tail: Vec<f32> = (0..b)
                    .flat_map(|r| &h[(r * t + t - n) * width..(r * t + t) * width])
                    .copied()
                    .collect();
                let logits = m.logits(&tail, b * n);
                let vocab = logits.len() / (b * n).max(1);
                Ok(Tensor::from_vec(logits, (b, n, vocab), &Device::Cpu)?)
            }
        }
    }

    /// How the model runs, for result rows: our CPU pass, or candle's with decode steps op by
    /// op, over fixed buffers, or replayed as CUDA graphs (saying so if capturing failed).
    pub fn forward_pass(&self) -> &'static str {
        match (&self.body, Decode::default_for(&self.device)) {
            (Pass::Cpu(_), _) => "edge-eval CPU kernels",
            (Pass::Candle(_), Decode::PerOp) => "candle, decode op by op",
            (Pass::Candle(_), Decode::Fixed) => "candle, decode on fixed buffers",
            (Pass::Candle(_), Decode::Graph) if self.decode_pool.capture_failed() => {
                "candle, decode on fixed buffers (CUDA graph capture failed)"
            }
            (Pass::Candle(_), Decode::Graph) => {
                "candle, decode as CUDA graphs (batches over 8 rows on fixed buffers)"
            }
        }
    }

    /// Which forward pass runs the model: ours ([`cpu::forward`]) or candle's.
    pub fn kernels(&self) -> Kernels {
        match self.body {
            Pass::Cpu(_) => Kernels::Own,
            Pass::Candle(_) => Kernels::Candle,
        }
    }

    /// Rejects input the cache cannot take: past the context, or a batch the cache was not
    /// padded for.
    fn check_input(&self, b: usize, t: usize, cache: &KvCache) -> Result<()> {
        if cache.len + t > self.cfg.context {
            bail!(
                "sequence of {} tokens exceeds the model's context of {}",
                cache.len + t,
                self.cfg.context
            );
        }
        if cache.pads.iter().any(|p| *p > 0) && cache.pads.len() != b {
            bail!(
                "the cache was made for {} rows, the input has {b}",
                cache.pads.len()
            );
        }
        Ok(())
    }

    /// The CPU forward pass: final normalised hidden states `[batch · tokens, hidden]`.
    fn cpu_hidden(
        &self,
        m: &cpu::forward::Model,
        ids: &Tensor,
        cache: &mut KvCache,
    ) -> Result<(Vec<f32>, usize, usize)> {
        let (b, t) = ids.dims2()?;
        self.check_input(b, t, cache)?;
        let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let x: Vec<f32> = self.embed.lookup(&flat)?.flatten_all()?.to_vec1()?;
        let step = cpu::forward::Step {
            b,
            t,
            pos: cache.len,
            pads: &cache.pads,
        };
        let h = m.hidden(&self.cfg, x, &step, &mut cache.cpu)?;
        cache.len += t;
        Ok((h, b, t))
    }

    /// The embeddings of `ids` (`[batch, tokens]`) on the model's device, `[batch, tokens,
    /// hidden]` (scaled by √hidden for Gemma).
    fn embed_on_device(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let x = self
            .embed
            .lookup(&flat)?
            .to_device(&self.device)?
            .reshape((b, t, self.cfg.hidden))?;
        Ok(match self.cfg.gemma {
            Some(_) => (x * (self.cfg.hidden as f64).sqrt())?,
            None => x,
        })
    }

    /// A decode step over fixed buffers ([`decode`]) when `ids` is one token per row and the
    /// cache's mode asks for it: the logits `[batch, 1, vocab]`.
    fn fixed_step(
        &self,
        body: &CandlePass,
        ids: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Option<Tensor>> {
        let (b, t) = ids.dims2()?;
        let mode = cache
            .decode
            .unwrap_or_else(|| Decode::default_for(&self.device));
        if t != 1 || mode == Decode::PerOp {
            return Ok(None);
        }
        self.check_input(b, t, cache)?;
        Ok(Some(decode::step(self, body, ids, cache, mode)?))
    }

    /// The final normalised hidden states `[batch, tokens, hidden]`.
    fn hidden(&self, body: &CandlePass, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.check_input(b, t, cache)?;
        if let Some(fixed) = &cache.fixed {
            cache.layers = fixed.layers(cache.len)?;
            cache.release_fixed();
        }
        let pos = cache.len;
        let c = &self.cfg;
        let mut x = self.embed_on_device(ids)?;
        let tables = |(cos, sin): &(Tensor, Tensor)| -> Result<(Tensor, Tensor)> {
            Ok((cos.narrow(0, pos, t)?, sin.narrow(0, pos, t)?))
        };
        let global_rope = tables(&(body.cos.clone(), body.sin.clone()))?;
        let local_rope = body.local_rope.as_ref().map(tables).transpose()?;
        // Additive mask [batch or 1, 1, t, pos + t]: causal, plus each row's left padding.
        let padded = cache.pads.iter().any(|p| *p > 0);
        let total = pos + t;
        let make_mask = |window: Option<usize>| -> Result<Option<Tensor>> {
            let windowed = window.is_some_and(|w| total > w);
            if t == 1 && !padded && !windowed {
                return Ok(None);
            }
            let rows = if padded { b } else { 1 };
            let m = mask_values(&cache.pads, rows, pos, t, total, window);
            Ok(Some(Tensor::from_vec(
                m,
                (rows, 1, t, total),
                &self.device,
            )?))
        };
        let mask = make_mask(None)?;
        let local_mask = match c.gemma.as_ref() {
            Some(g) => make_mask(Some(g.window))?,
            None => None,
        };
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let rep = c.n_head / c.n_kv_head;
        for (i, (layer, slot)) in body.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let local = c.window(i).is_some();
            let rope = match (&local_rope, local) {
                (Some((cos, sin)), true) => (cos, sin),
                _ => (&global_rope.0, &global_rope.1),
            };
            let mask = if local { &local_mask } else { &mask };
            x = block(c, layer, x, rope, |q, k, v| {
                let (k, v) = cache_append(slot, &k, &v, pos)?;
                let (k, v) = if rep > 1 {
                    let expand = |x: &Tensor| -> Result<Tensor> {
                        Ok(x.unsqueeze(2)?
                            .expand((b, c.n_kv_head, rep, total, c.head_dim))?
                            .reshape((b, c.n_head, total, c.head_dim))?)
                    };
                    (expand(&k)?, expand(&v)?)
                } else {
                    (k, v)
                };
                let mut att = (q.matmul(&k.t()?)? * scale)?;
                if let Some(m) = mask {
                    att = att.broadcast_add(m)?;
                }
                let att = candle_nn::ops::softmax_last_dim(&att)?;
                Ok(att
                    .matmul(&v)?
                    .transpose(1, 2)?
                    .reshape((b, t, c.q_dim()))?)
            })?;
        }
        cache.len += t;
        Ok(candle_nn::ops::rms_norm(&x, &body.norm, c.eps as f32)?)
    }
}

/// Index of the largest value of a `[vocab]` row.
pub fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?)
}

/// One transformer block on `x` (`[batch, tokens, hidden]`): attention's input side (norm, q / k /
/// v, biases, Gemma's q / k norms, RoPE with the rows `rope` of the tokens' positions), then
/// `attend(q, k, v)` — q `[b, heads, t, head]`, k and v `[b, kv heads, t, head]`, contiguous —
/// which stores k / v and returns the heads' outputs `[b, t, heads · head]`; then the output
/// projection, the residuals and the feed-forward part.
fn block(
    c: &Config,
    layer: &CandleLayer,
    x: Tensor,
    (cos, sin): (&Tensor, &Tensor),
    attend: impl FnOnce(Tensor, Tensor, Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.eps as f32)?;
    let (mut q, mut k, mut v) = (
        layer.q.forward(&h)?,
        layer.k.forward(&h)?,
        layer.v.forward(&h)?,
    );
    if let Some([bq, bk, bv]) = &layer.bias {
        q = q.broadcast_add(bq)?;
        k = k.broadcast_add(bk)?;
        v = v.broadcast_add(bv)?;
    }
    let mut q = q.reshape((b, t, c.n_head, c.head_dim))?;
    let mut k = k.reshape((b, t, c.n_kv_head, c.head_dim))?;
    if let Some([qn, kn, _, _]) = &layer.extra {
        q = candle_nn::ops::rms_norm(&q, qn, c.eps as f32)?;
        k = candle_nn::ops::rms_norm(&k, kn, c.eps as f32)?;
    }
    let q = q.transpose(1, 2)?.contiguous()?;
    let k = k.transpose(1, 2)?.contiguous()?;
    let v = v
        .reshape((b, t, c.n_kv_head, c.head_dim))?
        .transpose(1, 2)?
        .contiguous()?;
    let (q, k) = if c.neox_rope() {
        (
            candle_nn::rotary_emb::rope(&q, cos, sin)?,
            candle_nn::rotary_emb::rope(&k, cos, sin)?,
        )
    } else {
        (
            candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
            candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
        )
    };
    let mut y = layer.o.forward(&attend(q, k, v)?)?;
    if let Some([_, _, post_attn, _]) = &layer.extra {
        y = candle_nn::ops::rms_norm(&y, post_attn, c.eps as f32)?;
    }
    let x = (x + y)?;
    let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, c.eps as f32)?;
    let gate = layer.gate.forward(&h)?;
    let gate = if c.gemma.is_some() {
        gate.gelu()?
    } else {
        candle_nn::ops::silu(&gate)?
    };
    let mut y = layer.down.forward(&(gate * layer.up.forward(&h)?)?)?;
    if let Some([_, _, _, post_ffw]) = &layer.extra {
        y = candle_nn::ops::rms_norm(&y, post_ffw, c.eps as f32)?;
    }
    Ok((x + y)?)
}

/// An additive attention mask, `rows × t × cols` values (row-major): query `i` of a row sits at
/// position `pos + i` and sees key `j` when `j` is not after it, not in the row's left padding
/// (`pads[row]`; none when `pads` is shorter) and, for a sliding-window layer, less than `window`
/// positions back. Columns past `pos + t` are hidden (a fixed-size cache's unfilled positions).
/// A padding position still sees itself, so its (unused) values stay finite and cannot turn real
/// rows into NaN through 0 × NaN.
fn mask_values(
    pads: &[usize],
    rows: usize,
    pos: usize,
    t: usize,
    cols: usize,
    window: Option<usize>,
) -> Vec<f32> {
    let mut m = Vec::with_capacity(rows * t * cols);
    for r in 0..rows {
        let pad = pads.get(r).copied().unwrap_or(0);
        for q in pos..pos + t {
            m.extend((0..cols).map(|j| {
                let outside = window.is_some_and(|w| j + w <= q);
                if j > q || outside || (j < pad && j != q) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            }));
        }
    }
    m
}
