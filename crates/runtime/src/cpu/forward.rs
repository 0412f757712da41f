//! The whole forward pass on the CPU, for models whose matrices all have kernels here (Q4_0,
//! Q4_1, Q8_0, Q6_K, F16): plain `f32` buffers from the embedding to the last norm, no candle op
//! in between.
//!
//! Through candle, a decode step of SmolLM2-135M was ~20 small ops per layer (norms, RoPE, GQA
//! copies of the KV cache, attention products, softmax, allocation), each run on the calling
//! thread while the pool's other threads spun: about a third of the step. Here a layer is two
//! norms, four pool runs of products (q, k and v together; o; gate and up together; down), and
//! attention over the cache in place, split over the pool by (row, head).
//!
//! Every position is computed by the same code whether it comes in a prompt or alone in a decode
//! step, and each row's products do not depend on the rows beside it ([`super::products`]):
//! cached decoding, batched rows and a full pass give bit-identical logits. A left-padded row's
//! positions count from its first real token (its RoPE angles and the keys it sees are those of
//! the row alone), so a padded batch generates bit for bit what each prompt generates alone.

use super::{CpuMat, SyncPtr, pool, products};
use crate::model::{Config, Layer};
use anyhow::{Result, bail};

/// RoPE angles: cos and sin of position × frequency, `[context, head_dim / 2]`.
pub(crate) struct Rope {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

/// The weights, as [`Layer`]s of [`CpuMat`]s and `f32` vectors.
pub(crate) struct Model {
    pub layers: Vec<Layer<CpuMat, Vec<f32>>>,
    pub norm: Vec<f32>,
    pub head: CpuMat,
    pub rope: Rope,
    /// Gemma 3's local layers' RoPE.
    pub local_rope: Option<Rope>,
}

/// Keys and values of the positions seen so far: per layer, per (batch row, KV head), positions
/// × head size values (appended in place; a decode step writes one position).
#[derive(Default)]
pub struct Cache {
    k: Vec<Vec<Vec<f32>>>,
    v: Vec<Vec<Vec<f32>>>,
}

impl Cache {
    /// Keeps the first `len` of the `held` positions of every (row, KV head).
    pub(crate) fn truncate(&mut self, held: usize, len: usize) {
        for per_head in self.k.iter_mut().chain(self.v.iter_mut()).flatten() {
            // `held` positions × head size values.
            let d = per_head.len() / held.max(1);
            per_head.truncate(len * d);
        }
    }
}

/// One forward call: `b` rows of `t` new positions starting at `pos`; `pads[r]` positions of
/// left padding in row `r` (empty: none).
pub(crate) struct Step<'a> {
    pub b: usize,
    pub t: usize,
    pub pos: usize,
    pub pads: &'a [usize],
}

impl Model {
    /// The final normalised hidden states `[b·t, hidden]` of the embedded input `x` (`[b·t,
    /// hidden]`), keys and values appended to `cache`.
    pub fn hidden(
        &self,
        c: &Config,
        mut x: Vec<f32>,
        s: &Step,
        cache: &mut Cache,
    ) -> Result<Vec<f32>> {
        let rows = s.b * s.t;
        if cache.k.is_empty() {
            let empty = || vec![vec![Vec::new(); s.b * c.n_kv_head]; c.n_layer];
            (cache.k, cache.v) = (empty(), empty());
        } else if cache.k[0].len() != s.b * c.n_kv_head {
            bail!(
                "the cache holds {} rows, the input has {}",
                cache.k[0].len() / c.n_kv_head,
                s.b
            );
        }
        if c.gemma.is_some() {
            let scale = (c.hidden as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        let (qd, kd) = (c.q_dim(), c.n_kv_head * c.head_dim);
        for (i, l) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &l.attn_norm, c.eps);
            let [mut q, mut k, mut v] = take(products(&[&l.q, &l.k, &l.v], &h, rows));
            if let Some([bq, bk, bv]) = &l.bias {
                add_rows(&mut q, bq);
                add_rows(&mut k, bk);
                add_rows(&mut v, bv);
            }
            append(&mut cache.v[i], &v, s, c);
            if let Some([qn, kn, _, _]) = &l.extra {
                q = rms_norm(&q, qn, c.eps);
                k = rms_norm(&k, kn, c.eps);
            }
            let rope = match (&self.local_rope, c.window(i)) {
                (Some(r), Some(_)) => r,
                _ => &self.rope,
            };
            for r in 0..rows {
                // Positions count from the row's first real token, so a padded row is computed
                // exactly as it would be alone.
                let pad = s.pads.get(r / s.t).copied().unwrap_or(0);
                let p = (s.pos + r % s.t).saturating_sub(pad);
                rotate(c, rope, p, &mut q[r * qd..(r + 1) * qd]);
                rotate(c, rope, p, &mut k[r * kd..(r + 1) * kd]);
            }
            append(&mut cache.k[i], &k, s, c);
            let y = attention(c, &q, &cache.k[i], &cache.v[i], s, c.window(i));
            let [mut y] = take(products(&[&l.o], &y, rows));
            if let Some([_, _, post, _]) = &l.extra {
                y = rms_norm(&y, post, c.eps);
            }
            add(&mut x, &y);
            let h = rms_norm(&x, &l.ffn_norm, c.eps);
            let [gate, up] = take(products(&[&l.gate, &l.up], &h, rows));
            let act: Vec<f32> = match c.gemma {
                Some(_) => gate.iter().zip(&up).map(|(g, u)| gelu(*g) * u).collect(),
                None => gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect(),
            };
            let [mut y] = take(products(&[&l.down], &act, rows));
            if let Some([_, _, _, post]) = &l.extra {
                y = rms_norm(&y, post, c.eps);
            }
            add(&mut x, &y);
        }
        Ok(rms_norm(&x, &self.norm, c.eps))
    }

    /// Logits `[rows, vocab]` of hidden states `h` (`[rows, hidden]`).
    pub fn logits(&self, h: &[f32], rows: usize) -> Vec<f32> {
        let [l] = take(products(&[&self.head], h, rows));
        l
    }
}

/// The `N` outputs of [`products`].
fn take<const N: usize>(v: Vec<Vec<f32>>) -> [Vec<f32>; N] {
    v.try_into().expect("one output per matrix")
}

/// Appends the new positions of `new` (`[b·t, kv heads × head size]`) to each (row, KV head)
/// of a layer's cache.
fn append(slot: &mut [Vec<f32>], new: &[f32], s: &Step, c: &Config) {
    let (d, kv) = (c.head_dim, c.n_kv_head);
    for r in 0..s.b {
        for h in 0..kv {
            let dst = &mut slot[r * kv + h];
            for i in 0..s.t {
                let at = (r * s.t + i) * kv * d + h * d;
                dst.extend_from_slice(&new[at..at + d]);
            }
        }
    }
}

/// Each row of `x` divided by its root mean square (plus `eps`), times `w` (`x`'s width is a
/// multiple of `w`'s: per-head norms take a row of heads).
fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let n = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(n) {
        let sum2: f32 = row.iter().map(|v| v * v).sum();
        let scale = 1.0 / (sum2 / n as f32 + eps as f32).sqrt();
        out.extend(row.iter().zip(w).map(|(v, w)| v * scale * w));
    }
    out
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// Adds `bias` to every row of `x`.
fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add(row, bias);
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`).
fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// RoPE of every head of one row at position `p`: interleaved pairs (llama's GGUF layout) or
/// halves (NeoX: qwen2, Gemma 3).
fn rotate(c: &Config, rope: &Rope, p: usize, row: &mut [f32]) {
    let half = c.head_dim / 2;
    let (cos, sin) = (
        &rope.cos[p * half..(p + 1) * half],
        &rope.sin[p * half..(p + 1) * half],
    );
    for head in row.chunks_exact_mut(c.head_dim) {
        for i in 0..half {
            let (a, b) = if c.neox_rope() {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos[i] - x1 * sin[i];
            head[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

/// Attention of every new position over the cache: `[b·t, heads × head size]`. A position `q`
/// of row `r` sees keys `j ≤ q` that are not left padding (a padding position sees only
/// itself, so its unused values stay finite) and, in a sliding-window layer, `j > q − window`.
/// Tasks are (row, head) pairs on the pool.
fn attention(
    c: &Config,
    q: &[f32],
    keys: &[Vec<f32>],
    values: &[Vec<f32>],
    s: &Step,
    window: Option<usize>,
) -> Vec<f32> {
    let (d, qd) = (c.head_dim, c.q_dim());
    let rep = c.n_head / c.n_kv_head;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; s.b * s.t * qd];
    let ptr = SyncPtr(out.as_mut_ptr());
    let task = |task: usize| {
        let (r, h) = (task / c.n_head, task % c.n_head);
        let kvh = r * c.n_kv_head + h / rep;
        let (k, v) = (&keys[kvh], &values[kvh]);
        let pad = s.pads.get(r).copied().unwrap_or(0);
        let mut scores = Vec::with_capacity(s.pos + s.t);
        for i in 0..s.t {
            let qp = s.pos + i;
            let lo = if qp < pad {
                qp
            } else {
                let window_lo = window.map_or(0, |w| (qp + 1).saturating_sub(w));
                pad.max(window_lo)
            };
            let at = (r * s.t + i) * qd + h * d;
            let qv = &q[at..at + d];
            scores.clear();
            scores.extend((lo..=qp).map(|j| dot(qv, &k[j * d..(j + 1) * d]) * scale));
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            // SAFETY: task (r, h) alone writes row r·t + i's columns h·d .. (h + 1)·d, and
            // `pool.run` returns only when every task has finished.
            let y = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(at), d) };
            for (j, p) in (lo..=qp).zip(&scores) {
                axpy(y, p / sum, &v[j * d..(j + 1) * d]);
            }
        }
    };
    pool::pool().run(s.b * c.n_head, &task);
    out
}

/// `a · b`, eight lanes (vectorised where the CPU allows; the same sums in the same order
/// either way).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::kernels::avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let lo: [f32; 4] = std::array::from_fn(|l| acc[l] + acc[l + 4]);
    (lo[0] + lo[2]) + (lo[1] + lo[3]) + tail
}

/// `y += a · x`.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::kernels::avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { axpy_avx2(y, a, x) };
    }
    axpy_lanes(y, a, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_lanes(y, a, x)
}

#[inline(always)]
fn axpy_lanes(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

#[cfg(test)]
mod tests {
    use crate::gguf::Gguf;
    use crate::llama::{Kernels, KvCache, Llama};
    use crate::synthetic::write_gguf;
    use crate::test_util::max_diff;
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Tensor};

    /// On tiny synthetic llama and qwen2 models (GQA, qwen2's biases and NeoX RoPE; q8_0, f16,
    /// q4_0 with a q6_k head), our CPU
    /// forward pass gives candle's logits for a left-padded batch and the cached steps after it;
    /// with two layers the different float order stays far below a logit's scale.
    #[test]
    fn matches_candles_forward_pass() {
        let dir = tempfile::tempdir().unwrap();
        for (arch, dtype) in [
            ("llama-tiny", GgmlDType::Q8_0),
            ("qwen2-tiny", GgmlDType::Q8_0),
            ("llama-tiny", GgmlDType::F16),
            // q4_0 matrices, the head in q6_k (its rows are whole super-blocks).
            ("llama-tiny", GgmlDType::Q4_0),
        ] {
            let path = dir.path().join(format!("{arch}-{dtype:?}.gguf"));
            write_gguf(arch, 5, dtype, &path, &|_, _| {}, &|| false).unwrap();
            let load = |k| Llama::load_with(&mut Gguf::open(&path).unwrap(), &Device::Cpu, k);
            let (ours, theirs) = (load(Kernels::Own).unwrap(), load(Kernels::Candle).unwrap());
            assert_eq!(
                (ours.kernels(), theirs.kernels()),
                (Kernels::Own, Kernels::Candle)
            );
            let n = ours.cfg.n_layer;
            let mut caches = [0, 1].map(|_| KvCache::with_padding(n, vec![0, 2]));
            let ids = [[5u32, 9, 300, 7, 11], [1, 1, 40, 41, 42]];
            let mut x = Tensor::new(&ids, &Device::Cpu).unwrap();
            let [c0, c1] = &mut caches;
            let full0 = ours.forward(&x, c0).unwrap();
            let full1 = theirs.forward(&x, c1).unwrap();
            let scale: f32 = full1.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            // Rows 0 and 1; padding positions (row 1, 0..2) see only themselves in both.
            let d = max_diff(&full0, &full1);
            assert!(
                d < 0.05 * scale,
                "{arch} {dtype:?}: prompt Δ {d}, scale {scale}"
            );
            for step in 0..3u32 {
                x = Tensor::new(&[[step + 3], [step + 70]], &Device::Cpu).unwrap();
                let (a, b) = (
                    ours.forward_last(&x, c0).unwrap(),
                    theirs.forward_last(&x, c1).unwrap(),
                );
                let d = max_diff(&a, &b);
                assert!(d < 0.05 * scale, "{arch} {dtype:?} step {step}: Δ {d}");
            }
        }
    }

    /// A row of a padded batch gives, bit for bit, the logits of the same prompt alone.
    #[test]
    fn a_padded_row_equals_the_row_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.gguf");
        write_gguf("llama-tiny", 2, GgmlDType::Q8_0, &path, &|_, _| {}, &|| {
            false
        })
        .unwrap();
        let m = Llama::load(&mut Gguf::open(&path).unwrap()).unwrap();
        assert_eq!(m.kernels(), Kernels::Own);
        let batch = Tensor::new(&[[5u32, 9, 300, 7], [2, 2, 2, 40]], &Device::Cpu).unwrap();
        let mut cb = KvCache::with_padding(m.cfg.n_layer, vec![0, 3]);
        let all = m.forward_last(&batch, &mut cb).unwrap();
        let mut ca = KvCache::new(m.cfg.n_layer);
        let alone = m
            .forward_last(&Tensor::new(&[[40u32]], &Device::Cpu).unwrap(), &mut ca)
            .unwrap();
        assert_eq!(max_diff(&all.get(1).unwrap(), &alone.get(0).unwrap()), 0.0);
        let next = Tensor::new(&[[8u32], [9]], &Device::Cpu).unwrap();
        let all = m.forward_last(&next, &mut cb).unwrap();
        let alone = m
            .forward_last(&Tensor::new(&[[9u32]], &Device::Cpu).unwrap(), &mut ca)
            .unwrap();
        assert_eq!(max_diff(&all.get(1).unwrap(), &alone.get(0).unwrap()), 0.0);
    }

    /// Attention against a direct f64 computation from the definition: GQA (4 heads on 2 KV
    /// heads), a left-padded row, a sliding window, a prompt continuing a cache.
    #[test]
    fn attention_follows_the_masks() {
        use super::{Cache, Step, append, attention};
        use crate::model::{Config, Gemma};
        let c = Config {
            n_layer: 1,
            n_head: 4,
            n_kv_head: 2,
            hidden: 32,
            head_dim: 8,
            vocab: 10,
            eps: 1e-6,
            rope_base: 10_000.0,
            context: 64,
            family: "gemma3".into(),
            gemma: Some(Gemma {
                window: 3,
                pattern: 2,
                rope_base_local: 10_000.0,
            }),
        };
        let val = |i: usize| ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
        let (b, pads) = (2, [0usize, 2]);
        let mut cache = Cache {
            k: vec![vec![Vec::new(); b * 2]],
            v: vec![vec![Vec::new(); b * 2]],
        };
        let (kd, qd) = (16, 32);
        // Positions 0..3 first, then 3..6; layer 0 is local (window 3), pattern 2.
        for (pos, t) in [(0, 3), (3, 3)] {
            let s = Step {
                b,
                t,
                pos,
                pads: &pads,
            };
            let k: Vec<f32> = (0..b * t * kd).map(|i| val(i + 31 * pos)).collect();
            let v: Vec<f32> = (0..b * t * kd).map(|i| val(i + 57 * pos + 5)).collect();
            let q: Vec<f32> = (0..b * t * qd).map(|i| val(i + 13 * pos + 11)).collect();
            append(&mut cache.k[0], &k, &s, &c);
            append(&mut cache.v[0], &v, &s, &c);
            let got = attention(&c, &q, &cache.k[0], &cache.v[0], &s, Some(3));
            for r in 0..b {
                for i in 0..t {
                    let qp = pos + i;
                    for h in 0..4 {
                        let kv = &cache.k[0][r * 2 + h / 2];
                        let vv = &cache.v[0][r * 2 + h / 2];
                        let qv = &q[(r * t + i) * qd + h * 8..][..8];
                        let seen: Vec<usize> = (0..=qp)
                            .filter(|&j| j == qp || (j >= pads[r] && qp >= pads[r] && j + 3 > qp))
                            .collect();
                        let w: Vec<f64> = seen
                            .iter()
                            .map(|&j| {
                                let d: f64 =
                                    (0..8).map(|e| qv[e] as f64 * kv[j * 8 + e] as f64).sum();
                                (d / 8f64.sqrt()).exp()
                            })
                            .collect();
                        let total: f64 = w.iter().sum();
                        for e in 0..8 {
                            let want: f64 = seen
                                .iter()
                                .zip(&w)
                                .map(|(&j, w)| w / total * vv[j * 8 + e] as f64)
                                .sum();
                            let y = got[(r * t + i) * qd + h * 8 + e] as f64;
                            assert!((y - want).abs() < 1e-5, "row {r} pos {qp} head {h}");
                        }
                    }
                }
            }
        }
    }
}
