//! Decode steps over a fixed-size KV cache, replayed on a GPU as one CUDA graph per step (why:
//! docs/gpu.md, "Decode steps as CUDA graphs" — candle's per-op steps are host-bound).
//!
//! The rule that makes a step capturable: every decode step is the same ops on the same buffers.
//! - The KV cache holds `cap` positions per layer; the new position is scattered in (its index
//!   read from a device tensor). A full cache doubles, and the graph is captured again.
//! - Attention runs over all `cap` positions behind an additive mask hiding the unfilled, padded
//!   and out-of-window ones.
//! - Whatever depends on the position (the token's embedding, its RoPE rows, the masks, the
//!   scatter index) is copied into a fixed buffer before the step.
//!
//! One eager step (loads every kernel, fills candle's launch-parameter cache), one captured step,
//! then one graph launch per token. A finished generation's buffers, graph included, go back to
//! the model's [`Pool`] for the next generation of as many rows (the new prompt's keys and values
//! are copied in; stale positions stay masked). Graphs only up to `GRAPH_ROWS` rows; larger
//! batches run the fixed buffers eagerly.
//!
//! `EDGE_EVAL_CUDA_GRAPHS=0` keeps candle's per-op pass with a growing cache (for comparisons);
//! `EDGE_EVAL_CUDA_GRAPHS=eager` runs the fixed-size steps without capturing them. On the CPU the
//! fixed-size steps are only used when asked for ([`KvCache::with_decode`]): tests compare them
//! with the per-op pass there.

use super::{CandlePass, Config, KvCache, Llama, block, mask_values};
use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How decode steps (one token per row) of candle's pass run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decode {
    /// Op by op, the KV cache grown by each step.
    PerOp,
    /// The same ops on fixed buffers, run eagerly.
    Fixed,
    /// Fixed buffers, captured as a CUDA graph and replayed (on the CPU: as `Fixed`).
    Graph,
}

impl Decode {
    /// The default for a device: graphs on a GPU (unless `EDGE_EVAL_CUDA_GRAPHS` says `0` or
    /// `eager`), op by op on the CPU.
    pub fn default_for(device: &Device) -> Decode {
        if device.is_cpu() {
            return Decode::PerOp;
        }
        match std::env::var("EDGE_EVAL_CUDA_GRAPHS").as_deref() {
            Ok("0") => Decode::PerOp,
            Ok("eager") => Decode::Fixed,
            _ => Decode::Graph,
        }
    }
}

/// Positions a fixed cache is first made for, and the multiple its size is rounded up to (small
/// in unit tests, so that they cross it).
const CHUNK: usize = if cfg!(test) { 8 } else { 256 };

/// A model's fixed buffers of finished generations (at most [`Pool::KEEP`]), waiting for the
/// next ones, and whether capturing one of its decode steps as a graph has failed.
#[derive(Clone, Default)]
pub(super) struct Pool {
    free: Arc<Mutex<Vec<Fixed>>>,
    capture_failed: Arc<AtomicBool>,
}

impl Pool {
    const KEEP: usize = 2;

    /// The smallest pooled buffers for `b` rows holding at least `need` positions.
    fn take(&self, b: usize, need: usize) -> Option<Fixed> {
        let mut pool = self.free.lock().ok()?;
        let i = (0..pool.len())
            .filter(|&i| pool[i].b == b && pool[i].cap >= need)
            .min_by_key(|&i| pool[i].cap)?;
        Some(pool.swap_remove(i))
    }

    /// Keeps `f` for a later generation (the oldest is dropped past [`Pool::KEEP`]).
    pub(super) fn put(&self, f: Fixed) {
        if let Ok(mut pool) = self.free.lock() {
            pool.push(f);
            if pool.len() > Self::KEEP {
                pool.remove(0);
            }
        }
    }

    /// Whether a decode step of this model failed to be captured (its steps then run eagerly).
    pub(super) fn capture_failed(&self) -> bool {
        self.capture_failed.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.lock().map_or(0, |p| p.len())
    }
}

/// The fixed buffers of decode steps for `b` rows and up to `cap` positions.
pub(super) struct Fixed {
    b: usize,
    cap: usize,
    /// Per layer, K and V `[b, kv heads, cap, head size]`; positions from `len` on are zeros.
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// The step's input embeddings `[b, 1, hidden]`.
    x: Tensor,
    /// RoPE rows of the step's position `[1, rotary / 2]` (and the local layers' for Gemma 3).
    rope: (Tensor, Tensor),
    local_rope: Option<(Tensor, Tensor)>,
    /// Additive masks `[b, 1, 1, cap]` (global layers, Gemma's sliding-window layers).
    mask: Tensor,
    local_mask: Option<Tensor>,
    /// The position, as the scatter index of the new K / V `[b, kv heads, 1, head size]`.
    index: Tensor,
    /// The step's output `[b, 1, vocab]`.
    logits: Tensor,
    #[cfg(feature = "cuda")]
    graph: Graph,
}

#[cfg(feature = "cuda")]
enum Graph {
    /// The next step runs eagerly (loading kernels, caching launch parameters).
    Warm,
    /// The next step is captured.
    Capture,
    Replay(candle_core::cuda_backend::cudarc::driver::CudaGraph),
    /// Capturing failed: every step runs eagerly.
    Off,
}

impl Fixed {
    /// Buffers for `b` rows and `cap` positions, holding the first `len` positions of the per-op
    /// pass's cache `layers`.
    fn new(
        c: &Config,
        body: &CandlePass,
        dev: &Device,
        b: usize,
        len: usize,
        cap: usize,
        layers: &[Option<(Tensor, Tensor)>],
    ) -> Result<Fixed> {
        let kv_shape = (b, c.n_kv_head, cap, c.head_dim);
        let zeros = || Tensor::zeros(kv_shape, DType::F32, dev);
        let k = layers
            .iter()
            .map(|_| zeros())
            .collect::<candle_core::Result<_>>()?;
        let v = layers
            .iter()
            .map(|_| zeros())
            .collect::<candle_core::Result<_>>()?;
        let rope_pair = |table: &Tensor| -> Result<(Tensor, Tensor)> {
            let shape = (1, table.dim(1)?);
            Ok((
                Tensor::zeros(shape, DType::F32, dev)?,
                Tensor::zeros(shape, DType::F32, dev)?,
            ))
        };
        let mask = || Tensor::zeros((b, 1, 1, cap), DType::F32, dev);
        Ok(Fixed {
            b,
            cap,
            k,
            v,
            x: Tensor::zeros((b, 1, c.hidden), DType::F32, dev)?,
            rope: rope_pair(&body.cos)?,
            local_rope: body
                .local_rope
                .as_ref()
                .map(|(cos, _)| rope_pair(cos))
                .transpose()?,
            mask: mask()?,
            local_mask: c.gemma.as_ref().map(|_| mask()).transpose()?,
            index: Tensor::zeros((b, c.n_kv_head, 1, c.head_dim), DType::U32, dev)?,
            logits: Tensor::zeros((b, 1, c.vocab), DType::F32, dev)?,
            #[cfg(feature = "cuda")]
            graph: Graph::Warm,
        })
        .and_then(|f| f.load(layers, len).map(|()| f))
    }

    /// Copies the first `len` positions of the per-op pass's cache `layers` in (positions from
    /// `len` on keep whatever they held: the masks hide them until a step writes them).
    fn load(&self, layers: &[Option<(Tensor, Tensor)>], len: usize) -> Result<()> {
        for ((kb, vb), slot) in self.k.iter().zip(&self.v).zip(layers) {
            if let (Some((pk, pv)), true) = (slot, len > 0) {
                kb.slice_set(&pk.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                vb.slice_set(&pv.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
        }
        Ok(())
    }

    /// The first `len` positions as the per-op pass's cache (for a step of several tokens).
    pub(super) fn layers(&self, len: usize) -> Result<Vec<Option<(Tensor, Tensor)>>> {
        self.k
            .iter()
            .zip(&self.v)
            .map(|(k, v)| match len {
                0 => Ok(None),
                _ => Ok(Some((
                    k.narrow(2, 0, len)?.contiguous()?,
                    v.narrow(2, 0, len)?.contiguous()?,
                ))),
            })
            .collect()
    }

    /// Copies the step's inputs into the fixed buffers: embeddings `x` of position `pos`.
    fn set_inputs(
        &self,
        c: &Config,
        body: &CandlePass,
        x: &Tensor,
        pos: usize,
        pads: &[usize],
    ) -> Result<()> {
        let dev = x.device();
        self.x.slice_set(x, 0, 0)?;
        let rows = |(cos, sin): &(Tensor, Tensor), (dc, ds): &(Tensor, Tensor)| -> Result<()> {
            dc.slice_set(&cos.narrow(0, pos, 1)?, 0, 0)?;
            ds.slice_set(&sin.narrow(0, pos, 1)?, 0, 0)?;
            Ok(())
        };
        rows(&(body.cos.clone(), body.sin.clone()), &self.rope)?;
        if let (Some(table), Some(bufs)) = (&body.local_rope, &self.local_rope) {
            rows(table, bufs)?;
        }
        let (b, cap) = (self.b, self.cap);
        let set_mask = |buf: &Tensor, window: Option<usize>| -> Result<()> {
            let m = mask_values(pads, b, pos, 1, cap, window);
            Ok(buf.slice_set(&Tensor::from_vec(m, (b, 1, 1, cap), dev)?, 0, 0)?)
        };
        set_mask(&self.mask, None)?;
        if let (Some(buf), Some(g)) = (&self.local_mask, &c.gemma) {
            set_mask(buf, Some(g.window))?;
        }
        let n = self.index.elem_count();
        let index = Tensor::from_vec(vec![pos as u32; n], self.index.shape(), dev)?;
        Ok(self.index.slice_set(&index, 0, 0)?)
    }

    /// One decode step on the fixed buffers: the same ops, on the same buffers, every time.
    fn run(&self, c: &Config, body: &CandlePass) -> Result<()> {
        let (b, kv, d) = (self.b, c.n_kv_head, c.head_dim);
        let rep = c.n_head / kv;
        let scale = 1.0 / (d as f64).sqrt();
        let mut x = self.x.clone();
        for (i, layer) in body.layers.iter().enumerate() {
            let local = c.window(i).is_some();
            let (cos, sin) = match (&self.local_rope, local) {
                (Some(r), true) => r,
                _ => &self.rope,
            };
            let mask = match (&self.local_mask, local) {
                (Some(m), true) => m,
                _ => &self.mask,
            };
            let (kc, vc) = (&self.k[i], &self.v[i]);
            x = block(c, layer, x, (cos, sin), |q, k, v| {
                kc.scatter_set(&self.index, &k, 2)?;
                vc.scatter_set(&self.index, &v, 2)?;
                // One query per row: a kv head's `rep` query heads are the rows of one product
                // with its keys (grouped-query attention without copying K / V per head).
                let q = q.reshape((b, kv, rep, d))?;
                let att = (q.matmul(&kc.t()?)? * scale)?.broadcast_add(mask)?;
                let att = candle_nn::ops::softmax_last_dim(&att)?;
                Ok(att.matmul(vc)?.reshape((b, 1, c.q_dim()))?)
            })?;
        }
        let x = candle_nn::ops::rms_norm(&x, &body.norm, c.eps as f32)?;
        use candle_core::Module;
        self.logits.slice_set(&body.head.forward(&x)?, 0, 0)?;
        Ok(())
    }

    /// Runs the step whose inputs are set: replaying its graph, capturing it (a failure is
    /// recorded in `capture_failed`), or eagerly.
    fn execute(
        &mut self,
        c: &Config,
        body: &CandlePass,
        mode: Decode,
        capture_failed: &AtomicBool,
    ) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let (Decode::Graph, Device::Cuda(dev), true) =
            (mode, self.x.device(), self.b <= GRAPH_ROWS)
        {
            let dev = dev.clone();
            return self.execute_graph(c, body, &dev, capture_failed);
        }
        let _ = (mode, capture_failed);
        self.run(c, body)
    }

    #[cfg(feature = "cuda")]
    fn execute_graph(
        &mut self,
        c: &Config,
        body: &CandlePass,
        dev: &candle_core::CudaDevice,
        capture_failed: &AtomicBool,
    ) -> Result<()> {
        match std::mem::replace(&mut self.graph, Graph::Off) {
            Graph::Replay(g) => {
                g.launch()?;
                self.graph = Graph::Replay(g);
            }
            Graph::Warm => {
                reserve_scratch(body, self.x.device())?;
                let _cache = dev.enable_cuda_graph_htod_cache();
                self.run(c, body)?;
                self.graph = Graph::Capture;
            }
            Graph::Capture => {
                let captured = {
                    let _cache = dev.enable_cuda_graph_htod_cache();
                    capture(dev, || self.run(c, body))
                };
                match captured {
                    Ok(g) => {
                        g.launch()?;
                        self.graph = Graph::Replay(g);
                    }
                    Err(e) => {
                        if !capture_failed.swap(true, Ordering::Relaxed) {
                            eprintln!(
                                "note: decode steps run without CUDA graphs (capturing one \
                                 failed: {e:#})"
                            );
                        }
                        self.run(c, body)?;
                    }
                }
            }
            Graph::Off => self.run(c, body)?,
        }
        Ok(())
    }

    /// Doubles the positions held (at least to `need`, at most `context`).
    fn grow(&mut self, c: &Config, body: &CandlePass, need: usize) -> Result<()> {
        let cap = (2 * self.cap)
            .max(need.next_multiple_of(CHUNK))
            .min(c.context);
        let dev = self.x.device().clone();
        let layers: Vec<_> = std::mem::take(&mut self.k)
            .into_iter()
            .zip(std::mem::take(&mut self.v))
            .map(Some)
            .collect();
        *self = Fixed::new(c, body, &dev, self.b, self.cap, cap, &layers)?;
        Ok(())
    }
}

/// Rows up to which decode steps are captured as graphs. candle's quantized products of up to 8
/// rows quantize their input into one scratch buffer per device (more rows: other buffers, which
/// prompts grow without bound); a graph keeps the buffer's address, so it must never be
/// reallocated while a graph that uses it lives (see [`reserve_scratch`]).
#[cfg(feature = "cuda")]
const GRAPH_ROWS: usize = 8;

/// Grows candle's scratch buffer of products of up to 8 rows (it only ever grows) to the most
/// this model can ask of it: 8 rows of its widest quantized matrix input. Later products of this
/// model then never move it from under a captured graph.
#[cfg(feature = "cuda")]
fn reserve_scratch(body: &CandlePass, dev: &Device) -> Result<()> {
    use candle_core::Module;
    use candle_core::quantized::QMatMul;
    let widest = body
        .layers
        .iter()
        .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
        .chain([&body.head])
        .filter_map(|m| match m {
            super::Matrix::Q(QMatMul::QTensor(q)) => Some((q.shape().dims2().ok()?.1, m)),
            _ => None,
        })
        .max_by_key(|(width, _)| *width);
    if let Some((width, m)) = widest {
        m.forward(&Tensor::zeros((GRAPH_ROWS, 1, width), DType::F32, dev)?)?;
    }
    Ok(())
}

/// Captures what `run` launches on the device's stream as a graph (nothing runs meanwhile).
#[cfg(feature = "cuda")]
fn capture(
    dev: &candle_core::CudaDevice,
    run: impl FnOnce() -> Result<()>,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaGraph> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let stream = dev.cuda_stream();
    // Relaxed: candle may look up a loaded kernel or the allocator's pool while capturing.
    stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)?;
    let ran = run();
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    ran?;
    graph?.ok_or_else(|| anyhow::anyhow!("capturing a decode step gave no graph"))
}

/// A decode step (`ids` `[b, 1]`) through the fixed buffers of `cache`, made or grown as needed;
/// the per-op pass's cache moves into them. Returns the logits `[b, 1, vocab]`.
pub(super) fn step(
    model: &Llama,
    body: &CandlePass,
    ids: &Tensor,
    cache: &mut KvCache,
    mode: Decode,
) -> Result<Tensor> {
    let c = &model.cfg;
    let b = ids.dim(0)?;
    let pos = cache.len;
    let x = model.embed_on_device(ids)?;
    let need = pos + 1;
    match cache.fixed.as_mut() {
        Some(f) if f.b != b => bail!("the cache holds {} rows, the input has {b}", f.b),
        Some(f) if f.cap < need => f.grow(c, body, need)?,
        Some(_) => {}
        None => {
            let f = match model.decode_pool.take(b, need) {
                Some(f) => {
                    f.load(&cache.layers, pos)?;
                    f
                }
                None => {
                    let cap = need.next_multiple_of(CHUNK).min(c.context);
                    Fixed::new(c, body, &model.device, b, pos, cap, &cache.layers)?
                }
            };
            cache.layers.iter_mut().for_each(|slot| *slot = None);
            cache.fixed = Some(f);
            cache.pool = Some(model.decode_pool.clone());
        }
    }
    let f = cache.fixed.as_mut().expect("made above");
    f.set_inputs(c, body, &x, pos, &cache.pads)?;
    f.execute(c, body, mode, &model.decode_pool.capture_failed)?;
    cache.len += 1;
    // A copy: the buffer is overwritten by the next step.
    Ok(f.logits.copy()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;
    use crate::llama::Kernels;
    use crate::synthetic::write_gguf;
    use crate::test_util::max_diff;
    use candle_core::quantized::GgmlDType;

    /// Fixed-buffer decode steps give the per-op pass's logits on tiny llama (GQA) and qwen2
    /// (biases, NeoX RoPE) models: after a left-padded prompt, across the cache's growth (8 → 16
    /// positions), after a two-token step in between (the cache moved back) and on again.
    #[test]
    fn fixed_steps_match_the_per_op_pass() {
        let dir = tempfile::tempdir().unwrap();
        for arch in ["llama-tiny", "qwen2-tiny"] {
            let path = dir.path().join(format!("{arch}.gguf"));
            write_gguf(arch, 5, GgmlDType::Q8_0, &path, &|_, _| {}, &|| false).unwrap();
            let mut g = Gguf::open(&path).unwrap();
            let model = Llama::load_with(&mut g, &Device::Cpu, Kernels::Candle).unwrap();
            let n = model.cfg.n_layer;
            let cache = |mode| KvCache::with_padding(n, vec![0, 2]).with_decode(mode);
            let (mut per_op, mut fixed) = (cache(Decode::PerOp), cache(Decode::Fixed));
            let prompt =
                Tensor::new(&[[5u32, 9, 300, 7, 11], [1, 1, 40, 41, 42]], &Device::Cpu).unwrap();
            let a = model.forward_last(&prompt, &mut per_op).unwrap();
            let b = model.forward_last(&prompt, &mut fixed).unwrap();
            assert_eq!(
                max_diff(&a, &b),
                0.0,
                "{arch}: the prompt runs the same pass"
            );
            let scale: f32 = a.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            for step in 0..14u32 {
                let ids = if step == 6 {
                    Tensor::new(&[[step + 3, 8], [step + 70, 9]], &Device::Cpu)
                } else {
                    Tensor::new(&[[step + 3], [step + 70]], &Device::Cpu)
                }
                .unwrap();
                let a = model.forward_last(&ids, &mut per_op).unwrap();
                let b = model.forward_last(&ids, &mut fixed).unwrap();
                assert_eq!(a.dims(), b.dims());
                let d = max_diff(&a, &b);
                assert!(d < 1e-4 * scale, "{arch} step {step}: Δ {d}, scale {scale}");
                assert_eq!(
                    fixed.fixed.is_some(),
                    step != 6,
                    "{arch} step {step}: decode steps use the fixed buffers"
                );
            }
            assert_eq!((per_op.len, fixed.len), (20, 20));
            assert_eq!(
                fixed.fixed.as_ref().map(|f| f.cap),
                Some(32),
                "{arch}: grown twice"
            );
            // A dropped cache hands its buffers to the model; the next generation of two rows
            // takes them, stale keys and values of the first one included, and still matches.
            drop((per_op, fixed));
            assert_eq!(model.decode_pool.len(), 1, "{arch}");
            let pads = vec![1, 0];
            let (mut per_op, mut fixed) = (
                KvCache::with_padding(n, pads.clone()).with_decode(Decode::PerOp),
                KvCache::with_padding(n, pads).with_decode(Decode::Fixed),
            );
            let prompt = Tensor::new(&[[1u32, 60, 61], [17, 18, 19]], &Device::Cpu).unwrap();
            model.forward_last(&prompt, &mut per_op).unwrap();
            model.forward_last(&prompt, &mut fixed).unwrap();
            for step in 0..4u32 {
                let ids = Tensor::new(&[[step + 500], [step + 600]], &Device::Cpu).unwrap();
                let a = model.forward_last(&ids, &mut per_op).unwrap();
                let b = model.forward_last(&ids, &mut fixed).unwrap();
                let d = max_diff(&a, &b);
                assert!(d < 1e-4 * scale, "{arch} reused, step {step}: Δ {d}");
            }
            assert_eq!(model.decode_pool.len(), 0, "{arch}: the buffers are in use");
            assert_eq!(
                fixed.fixed.as_ref().map(|f| f.cap),
                Some(32),
                "{arch}: reused"
            );
        }
    }

    /// A full fixed cache stops at the model's context like the per-op pass.
    #[test]
    fn the_context_still_bounds_fixed_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llama.gguf");
        write_gguf("llama-tiny", 1, GgmlDType::Q8_0, &path, &|_, _| {}, &|| {
            false
        })
        .unwrap();
        let mut g = Gguf::open(&path).unwrap();
        let mut model = Llama::load_with(&mut g, &Device::Cpu, Kernels::Candle).unwrap();
        model.cfg.context = 12;
        let mut cache = KvCache::new(model.cfg.n_layer).with_decode(Decode::Fixed);
        let one = Tensor::new(&[[4u32]], &Device::Cpu).unwrap();
        for _ in 0..12 {
            model.forward_last(&one, &mut cache).unwrap();
        }
        assert_eq!(cache.fixed.as_ref().map(|f| f.cap), Some(12));
        let err = model.forward_last(&one, &mut cache).unwrap_err();
        assert!(
            err.to_string()
                .contains("exceeds the model's context of 12"),
            "{err}"
        );
    }
}
