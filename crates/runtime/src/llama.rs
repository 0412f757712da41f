//! The llama architecture (SmolLM2, Llama 3.x), its qwen2 variant (Qwen2.5) and Gemma 3 over GGUF
//! weights, with a forward pass of our own: batched input, full-sequence logits (for perplexity
//! and KL), and a KV cache. Matrix weights stay in their GGUF type. On the CPU, models whose
//! matrices (head included) are all Q4_0 / Q4_1 / Q8_0 / Q6_K / F16 run entirely on our code
//! ([`super::cpu::forward`]: kernels, attention, norms); others are written with candle's ops and
//! quantized kernels (`QMatMul`) here. On a GPU, always candle's ops; f16 / bf16 matrices are
//! held in their own type and multiplied densely ([`Mat`]).

use super::cpu::{self, CpuMat};
use super::gguf::Gguf;
use super::model::Layer;
pub use super::model::{Config, Gemma};
use anyhow::{Context, Result, bail};
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};
use std::sync::Arc;

/// One transformer block of candle's pass: candle's matrices and tensors.
type CandleLayer = Layer<Mat, Tensor>;

impl CandleLayer {
    /// The layer for the CPU forward pass: every matrix must be one of ours.
    fn into_cpu(self) -> Result<Layer<CpuMat, Vec<f32>>> {
        let m = |m: Mat| match m {
            Mat::Cpu(m) => Ok(m),
            _ => bail!("a matrix without CPU kernels reached the CPU forward pass"),
        };
        let v = |t: Tensor| -> Result<Vec<f32>> { Ok(t.to_vec1()?) };
        Ok(Layer {
            attn_norm: v(self.attn_norm)?,
            q: m(self.q)?,
            k: m(self.k)?,
            v: m(self.v)?,
            bias: vectors(self.bias)?,
            extra: vectors(self.extra)?,
            o: m(self.o)?,
            ffn_norm: v(self.ffn_norm)?,
            gate: m(self.gate)?,
            up: m(self.up)?,
            down: m(self.down)?,
        })
    }
}

fn vectors<const N: usize>(ts: Option<[Tensor; N]>) -> Result<Option<[Vec<f32>; N]>> {
    let Some(ts) = ts else { return Ok(None) };
    let v = ts
        .into_iter()
        .map(|t| t.to_vec1())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Some(v.try_into().expect("N tensors give N vectors")))
}

/// Token embeddings kept in their GGUF type; rows are dequantized on lookup (a Llama-3 vocabulary
/// in f32 would be 1 GB).
pub(crate) struct Embedding {
    q: Arc<QTensor>,
    hidden: usize,
    row_bytes: usize,
}

impl Embedding {
    pub(crate) fn new(q: Arc<QTensor>) -> Result<Embedding> {
        let (_, hidden) = q.shape().dims2()?;
        let t = q.dtype();
        Ok(Embedding {
            row_bytes: hidden / t.block_size() * t.type_size(),
            hidden,
            q,
        })
    }

    /// `[ids.len(), hidden]` f32.
    pub(crate) fn lookup(&self, ids: &[u32]) -> Result<Tensor> {
        let data = self.q.data()?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            let start = *id as usize * self.row_bytes;
            let Some(row) = data.get(start..start + self.row_bytes) else {
                bail!("token id {id} is outside the vocabulary");
            };
            let q = qtensor_from_ggml(self.q.dtype(), row, vec![1, self.hidden], &Device::Cpu)?;
            rows.push(q.dequantize(&Device::Cpu)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}

/// A weight matrix as held for inference.
pub(crate) enum Mat {
    /// Q4_0 / Q4_1 / Q8_0 / Q6_K / F16 on the CPU, when every matrix of the model is one of
    /// these: our own kernels; the layers are then moved into [`cpu::forward::Model`].
    Cpu(CpuMat),
    /// Through candle's quantized matmul (other GGUF block types; f16 on the CPU; f32; GPUs).
    Q(QMatMul),
    /// `W` `[out, in]` in f16 or bf16 on a GPU: activations are converted to the weight's type
    /// for the product (cuBLAS half GEMM) and back. candle's `QMatMul` would hold f16 as f32 and
    /// has no bf16 path: twice the bytes read per token.
    Half(Tensor),
}

impl Mat {
    /// Bytes the matrix occupies once loaded.
    fn resident_bytes(&self) -> u64 {
        match self {
            Mat::Cpu(m) => m.resident_bytes(),
            Mat::Q(QMatMul::QTensor(q)) => q.storage_size_in_bytes() as u64,
            Mat::Q(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) | Mat::Half(t) => {
                (t.elem_count() * t.dtype().size_in_bytes()) as u64
            }
        }
    }
}

impl Module for Mat {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Mat::Cpu(m) => m.forward(x),
            Mat::Q(m) => m.forward(x),
            Mat::Half(w) => {
                let wt = match *x.dims() {
                    [b1, b2, _, _] => w.broadcast_left((b1, b2))?.t()?,
                    [b, _, _] => w.broadcast_left(b)?.t()?,
                    _ => w.t()?,
                };
                x.to_dtype(w.dtype())?.matmul(&wt)?.to_dtype(x.dtype())
            }
        }
    }
}

mod decode;
pub use decode::Decode;

pub struct Llama {
    pub cfg: Config,
    embed: Embedding,
    body: Body,
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
enum Body {
    /// Through candle's ops (GPUs; CPU models with matrix types we have no kernels for).
    Candle(CandleBody),
    /// Our own CPU forward pass ([`cpu::forward`]).
    Cpu(cpu::forward::Model),
}

struct CandleBody {
    layers: Vec<CandleLayer>,
    norm: Tensor,
    head: Mat,
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

/// Keys and values of the positions seen so far, per layer.
pub struct KvCache {
    /// Candle's pass: per layer, K and V `[batch, kv heads, positions, head size]`. On the CPU,
    /// buffers whose first `len` positions are filled and whose capacity doubles when full, so a
    /// decode step writes its own position instead of copying the whole cache; on a GPU, exactly
    /// `len` positions, extended with `cat` (see [`cache_append`]) — until decode steps move
    /// them into `fixed`.
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// The cache of the CPU forward pass ([`cpu::forward`]), used instead of `layers`.
    cpu: cpu::forward::Cache,
    /// Candle's pass, once decoding over fixed buffers ([`decode`]): the cache is there, not in
    /// `layers`.
    fixed: Option<decode::Fixed>,
    /// How decode steps run; `None`: the device's default ([`Decode::default_for`]).
    decode: Option<Decode>,
    /// Where `fixed` goes back to when the cache is dropped: the model's pool.
    pool: Option<decode::Pool>,
    pub len: usize,
    /// Left padding of each batch row: keys before it are never attended to.
    pads: Vec<usize>,
}

impl KvCache {
    pub fn new(n_layer: usize) -> KvCache {
        KvCache::with_padding(n_layer, vec![])
    }

    /// A cache for a batch whose rows are left-padded by `pads[row]` positions (prompts of
    /// different lengths). Relative positions inside each row are unchanged, so RoPE is exact.
    pub fn with_padding(n_layer: usize, pads: Vec<usize>) -> KvCache {
        KvCache {
            layers: vec![None; n_layer],
            cpu: cpu::forward::Cache::default(),
            fixed: None,
            decode: None,
            pool: None,
            len: 0,
            pads,
        }
    }

    /// Hands fixed decode buffers (see `fixed`) back to the model's pool.
    fn release_fixed(&mut self) {
        if let (Some(f), Some(pool)) = (self.fixed.take(), &self.pool) {
            pool.put(f);
        }
    }

    /// The cache with decode steps of candle's pass run as `mode` says, whatever the device.
    pub fn with_decode(mut self, mode: Decode) -> KvCache {
        self.decode = Some(mode);
        self
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        self.release_fixed();
    }
}

/// Appends `k`, `v` (`[b, kv, t, d]`, contiguous) at positions `pos..pos + t` of a layer's cache
/// and returns its first `pos + t` positions: on the CPU written into the layer's buffer (grown
/// when full) and returned as views, no copy; on a GPU by `cat`.
fn cache_append(
    slot: &mut Option<(Tensor, Tensor)>,
    k: &Tensor,
    v: &Tensor,
    pos: usize,
) -> Result<(Tensor, Tensor)> {
    if !k.device().is_cpu() {
        // On a GPU the cache is one tensor extended with `cat` (candle's CUDA matmul is only
        // relied on with contiguous operands here, and a buffer's filled part would have to be
        // copied contiguous every step anyway; decode tokens/s on an H200 was the same either
        // way, within run-to-run spread).
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, k], 2)?, Tensor::cat(&[&pv, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        *slot = Some((k.clone(), v.clone()));
        return Ok((k, v));
    }
    let (b, kv, t, d) = k.dims4()?;
    let total = pos + t;
    let cap = slot.as_ref().map_or(0, |(k, _)| k.dim(2).unwrap_or(0));
    if total > cap {
        let cap = total.next_power_of_two().max(64);
        let grow = |old: Option<&Tensor>| -> Result<Tensor> {
            let buf = Tensor::zeros((b, kv, cap, d), k.dtype(), k.device())?;
            if let Some(old) = old.filter(|_| pos > 0) {
                buf.slice_set(&old.narrow(2, 0, pos)?.contiguous()?, 2, 0)?;
            }
            Ok(buf)
        };
        let old = slot.take();
        *slot = Some((
            grow(old.as_ref().map(|(k, _)| k))?,
            grow(old.as_ref().map(|(_, v)| v))?,
        ));
    }
    let (kb, vb) = slot.as_ref().expect("allocated above");
    kb.slice_set(k, 2, pos)?;
    vb.slice_set(v, 2, pos)?;
    Ok((kb.narrow(2, 0, total)?, vb.narrow(2, 0, total)?))
}

/// The architecture read from a GGUF's metadata (`vocab` from the embedding's shape).
pub(crate) fn read_config(g: &Gguf) -> Result<Config> {
    let arch = g
        .metadata_str("general.architecture")
        .unwrap_or("?")
        .to_string();
    if !matches!(arch.as_str(), "llama" | "qwen2" | "gemma3") {
        bail!(
            "architecture `{arch}` is not supported by this runtime yet (supported: llama, \
             qwen2, gemma3)"
        );
    }
    let meta = &g.content.metadata;
    let get = |k: &str| -> Result<u32> {
        meta.get(&format!("{arch}.{k}"))
            .and_then(|v| v.to_u32().ok())
            .with_context(|| format!("the GGUF lacks {arch}.{k}"))
    };
    let hidden = get("embedding_length")? as usize;
    let n_head = get("attention.head_count")? as usize;
    let n_kv_head = get("attention.head_count_kv").unwrap_or(n_head as u32) as usize;
    let n_layer = get("block_count")? as usize;
    let context = get("context_length").unwrap_or(4096) as usize;
    let eps = meta
        .get(&format!("{arch}.attention.layer_norm_rms_epsilon"))
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(1e-5) as f64;
    let rope_base = meta
        .get(&format!("{arch}.rope.freq_base"))
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(10_000.0);
    if n_head == 0
        || n_kv_head == 0
        || !n_head.is_multiple_of(n_kv_head)
        || (meta.get(&format!("{arch}.attention.key_length")).is_none()
            && !hidden.is_multiple_of(n_head))
    {
        bail!(
            "inconsistent attention shape: {n_head} heads, {n_kv_head} KV heads, hidden {hidden}"
        );
    }
    let head_dim = get("attention.key_length").map_or(hidden / n_head, |d| d as usize);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        bail!("head size {head_dim} cannot take RoPE");
    }
    let gemma = (arch == "gemma3").then(|| Gemma {
        window: get("attention.sliding_window").map_or(512, |w| w as usize),
        pattern: 6,
        rope_base_local: 10_000.0,
    });
    let vocab = g
        .content
        .tensor_infos
        .get("token_embd.weight")
        .context("the GGUF has no token_embd.weight")?
        .shape
        .dims()[0];
    Ok(Config {
        n_layer,
        n_head,
        n_kv_head,
        hidden,
        head_dim,
        vocab,
        eps,
        rope_base,
        context,
        family: arch,
        gemma,
    })
}

/// RoPE angle tables `[context, head_dim / 2]`: (cos, sin).
pub(crate) fn rope_tables(c: &Config) -> Result<(Tensor, Tensor)> {
    rope_tables_with(c, c.rope_base)
}

/// RoPE tables for the local layers (Gemma 3), if the model has any.
pub(crate) fn local_rope_tables(c: &Config) -> Result<Option<(Tensor, Tensor)>> {
    c.gemma
        .as_ref()
        .map(|g| rope_tables_with(c, g.rope_base_local))
        .transpose()
}

fn rope_tables_with(c: &Config, base: f32) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..c.head_dim / 2)
        .map(|i| 1.0 / base.powf(2.0 * i as f32 / c.head_dim as f32))
        .collect();
    let inv = Tensor::new(inv.as_slice(), &Device::Cpu)?;
    let pos = Tensor::arange(0u32, c.context as u32, &Device::Cpu)?.to_dtype(DType::F32)?;
    let freqs = pos.unsqueeze(1)?.broadcast_mul(&inv.unsqueeze(0)?)?;
    Ok((freqs.cos()?, freqs.sin()?))
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
        let mut qmat = |g: &mut Gguf, name: &str| -> Result<Mat> {
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
                Mat::Half(
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
                    Some(m) => Mat::Cpu(m),
                    None if q.dtype() == GgmlDType::F16 => Mat::Q(QMatMul::QTensor(Arc::new(q))),
                    None => Mat::Q(
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
        // its own copy: sharing the embedding's QTensor made decoding ~25 % slower (measured on
        // SmolLM2 Q4_0: 93 vs 120 tok/s), presumably candle's repacked-weight cache; both copies
        // are counted in `weight_bytes`.
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
            Body::Cpu(cpu::forward::Model {
                layers: layers
                    .into_iter()
                    .map(Layer::into_cpu)
                    .collect::<Result<_>>()?,
                norm: norm.to_vec1()?,
                head: match head {
                    Mat::Cpu(h) => h,
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
            Body::Candle(CandleBody {
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
            Body::Candle(body) => match self.fixed_step(body, ids, cache)? {
                Some(logits) => Ok(logits),
                None => Ok(body.head.forward(&self.hidden(body, ids, cache)?)?),
            },
            Body::Cpu(m) => {
                let (h, b, t) = self.cpu_hidden(m, ids, cache)?;
                let logits = m.logits(&h, b * t);
                let vocab = logits.len() / (b * t).max(1);
                Ok(Tensor::from_vec(logits, (b, t, vocab), &Device::Cpu)?)
            }
        }
    }

    /// Logits of the last position only: `[batch, vocab]` (the head runs on that position only).
    pub fn forward_last(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        match &self.body {
            Body::Candle(body) => {
                if let Some(logits) = self.fixed_step(body, ids, cache)? {
                    return Ok(logits.squeeze(1)?);
                }
                let x = self.hidden(body, ids, cache)?;
                let t = x.dim(1)?;
                Ok(body
                    .head
                    .forward(&x.narrow(1, t - 1, 1)?.contiguous()?)?
                    .squeeze(1)?)
            }
            Body::Cpu(m) => {
                let (h, b, t) = self.cpu_hidden(m, ids, cache)?;
                let n = self.cfg.hidden;
                let last: Vec<f32> = (0..b)
                    .flat_map(|r| &h[(r * t + t - 1) * n..(r * t + t) * n])
                    .copied()
                    .collect();
                let logits = m.logits(&last, b);
                let vocab = logits.len() / b.max(1);
                Ok(Tensor::from_vec(logits, (b, vocab), &Device::Cpu)?)
            }
        }
    }

    /// How the model runs, for result rows: our CPU pass, or candle's with decode steps op by
    /// op, over fixed buffers, or replayed as CUDA graphs (saying so if capturing failed).
    pub fn forward_pass(&self) -> &'static str {
        match (&self.body, Decode::default_for(&self.device)) {
            (Body::Cpu(_), _) => "edge-eval CPU kernels",
            (Body::Candle(_), Decode::PerOp) => "candle, decode op by op",
            (Body::Candle(_), Decode::Fixed) => "candle, decode on fixed buffers",
            (Body::Candle(_), Decode::Graph) if self.decode_pool.capture_failed() => {
                "candle, decode on fixed buffers (CUDA graph capture failed)"
            }
            (Body::Candle(_), Decode::Graph) => {
                "candle, decode as CUDA graphs (batches over 8 rows on fixed buffers)"
            }
        }
    }

    /// Which forward pass runs the model: ours ([`cpu::forward`]) or candle's.
    pub fn kernels(&self) -> Kernels {
        match self.body {
            Body::Cpu(_) => Kernels::Own,
            Body::Candle(_) => Kernels::Candle,
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
        body: &CandleBody,
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
    fn hidden(&self, body: &CandleBody, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
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
