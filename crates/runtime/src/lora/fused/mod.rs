//! The trainable pass's fused operations: each replaces a chain of candle's elementwise
//! operations (one read and write of the whole activation per link, with broadcast indexing) by
//! one kernel, and its backward by one more — CUDA kernels (`kernels.cu`, launched by `cuda.rs`)
//! on a GPU, the same formulas in Rust (`cpu.rs`) on the CPU. On a Llama-3.2-1B step at 4 × 512
//! tokens on an H200, candle's elementwise kernels took 435 of the step's 487 ms of GPU time and
//! its matrix products 52 (ncu, docs/gpu.md); on the CPU (SmolLM2-135M, 4 × 256) the chains'
//! fresh buffers and dropout masks were most of a 10.6 GB peak and of the step's time
//! (docs/cpu.md).
//!
//! They run on f32 and bf16 CUDA tensors and f32 CPU tensors ([`applies`]); other passes (f16,
//! or bf16 on the CPU) keep the composite forms written with candle's differentiable operations
//! (`ops.rs`), which are also what the tests below hold every fused op to, in value and gradient
//! (on the CPU in every test run; on a GPU in the `on_gpu` tests, with `--features cuda`).
//!
//! - [`softmax_causal`]: attention probabilities with the causal (and sliding-window) mask and the
//!   score scale applied inside, in the scores' dtype.
//! - [`rms_norm`]; [`dropout`]: an adapter's input widened to f32 under a dropout mask drawn from
//!   a counter-based hash (`cpu::keep`), so nothing is stored for the backward and a recomputed
//!   block (checkpointing) draws the same mask; [`add_scaled`]: the base's output plus the scaled
//!   adapter delta, rounded once; [`swiglu`]; [`rope_heads`]: RoPE fused with the
//!   `[b, t, h, d]` → `[b, h, t, d]` transpose; [`nf4_dequantize`] (QLoRA's base); the head's
//!   [`cross_entropy`]; [`adamw`].

use super::*;
use candle_core::{CustomOp2, CustomOp3};

/// Whether `x` takes the fused kernels ([`takes`]).
pub(super) fn applies(x: &Tensor) -> bool {
    takes(x.device(), x.dtype())
}

/// Whether tensors of `dtype` on `device` take the fused kernels: f32 or bf16 on a GPU (in a
/// build with `--features cuda`), f32 on the CPU.
pub(super) fn takes(device: &Device, dtype: DType) -> bool {
    match device {
        Device::Cpu => dtype == DType::F32,
        _ => {
            cfg!(feature = "cuda") && device.is_cuda() && matches!(dtype, DType::F32 | DType::BF16)
        }
    }
}

/// `softmax(x · scale)` over the last dimension (`t` keys) of scores laid out
/// `[…, t queries, t keys]`, causal, with a sliding `window` if given; 0 at hidden keys.
pub(super) fn softmax_causal(
    x: &Tensor,
    t: usize,
    window: Option<usize>,
    scale: f64,
) -> Result<Tensor> {
    let k = Kind::Softmax {
        t: t as u32,
        window: window.unwrap_or(0) as u32,
        scale: scale as f32,
    };
    Ok(x.contiguous()?.apply_op1(Op(k))?)
}

/// RMS norm over the last dimension, `w` f32, in `x`'s dtype (arithmetic in f32).
pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let k = Kind::RmsNorm {
        n: x.dim(D::Minus1)? as u32,
        eps: eps as f32,
    };
    Ok(x.contiguous()?.apply_op2(&w.contiguous()?, Op(k))?)
}

/// `x` widened to f32 with dropout `p` from stream `seed` (kept entries scaled by 1 / (1 − p)).
pub(super) fn dropout(x: &Tensor, seed: u64, p: f64) -> candle_core::Result<Tensor> {
    let k = Kind::Dropout { seed, p: p as f32 };
    x.contiguous()?.apply_op1(Op(k))
}

/// The gradient of [`dropout`]: the same mask on `g` (f32), in `dtype` (no gradient).
pub(super) fn dropout_back(
    g: &Tensor,
    seed: u64,
    p: f64,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let p = p as f32;
    Op::no_grad1(Kind::DropoutBack { seed, p, dtype }, g)
}

/// `y + s · d` in `y`'s dtype, `d` f32.
pub(super) fn add_scaled(y: &Tensor, d: &Tensor, s: f64) -> candle_core::Result<Tensor> {
    let k = Kind::AddScaled { s: s as f32 };
    y.contiguous()?.apply_op2(&d.contiguous()?, Op(k))
}

/// `s · g` widened to f32 (no gradient).
pub(super) fn scale_to_f32(g: &Tensor, s: f64) -> candle_core::Result<Tensor> {
    Op::no_grad1(Kind::ScaleToF32 { s: s as f32 }, g)
}

/// `silu(gate) ⊙ up`.
pub(super) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate
        .contiguous()?
        .apply_op2(&up.contiguous()?, Op(Kind::Swiglu))?)
}

/// RoPE on `x` `[b, t, h, d]`, returned as `[b, h, t, d]`; `cos`/`sin` `[t, d/2]` f32.
pub(super) fn rope_heads(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> Result<Tensor> {
    let (_, t, h, d) = x.dims4()?;
    let k = Kind::Rope {
        t: t as u32,
        h: h as u32,
        d: d as u32,
        interleaved,
        inverse: false,
    };
    Ok(x.contiguous()?.apply_op3(cos, sin, Op(k))?)
}

/// An NF4 matrix of `n` elements dequantized to `dtype` (no gradient): `packed` u8 (two per byte,
/// high nibble first), `scales` f32 (one per block of 64).
pub(super) fn nf4_dequantize(
    packed: &Tensor,
    scales: &Tensor,
    n: usize,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    Op::no_grad2(Kind::Nf4 { n: n as u32, dtype }, packed, scales)
}

/// The weighted cross-entropy `wᵢ (logsumexp(logitsᵢ) − logitsᵢ[tᵢ])` of each row of `logits`
/// `[n, vocab]` (f32 `[n]`), `targets` `[n]` or `[n, 1]` u32, `weights` `[n]` f32; no gradient
/// (the head's op computes it with [`cross_entropy_back`]).
pub(super) fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let k = Kind::CrossEntropy {
        v: logits.dim(D::Minus1)? as u32,
    };
    Op::no_grad3(k, logits, targets, weights)
}

/// The gradient of [`cross_entropy`] with respect to the logits, in their dtype, for `wg` =
/// the weights times the loss's upstream gradient: `wgᵢ (softmax(logitsᵢ) − onehot(tᵢ))`.
pub(super) fn cross_entropy_back(
    logits: &Tensor,
    targets: &Tensor,
    wg: &Tensor,
) -> candle_core::Result<Tensor> {
    let k = Kind::CrossEntropyBack {
        v: logits.dim(D::Minus1)? as u32,
    };
    Op::no_grad3(k, logits, targets, wg)
}

/// One fused kernel (and its scalar arguments); the forwards' backwards are kinds too.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
enum Kind {
    /// scores → probabilities.
    Softmax { t: u32, window: u32, scale: f32 },
    /// (probabilities, their gradient) → the scores' gradient.
    SoftmaxBack { t: u32, scale: f32 },
    /// (x, w) → y.
    RmsNorm { n: u32, eps: f32 },
    /// (x, w, gradient of y) → gradient of x.
    RmsNormBack { n: u32, eps: f32 },
    /// x → f32.
    Dropout { seed: u64, p: f32 },
    /// gradient (f32) → gradient of x (`dtype`).
    DropoutBack { seed: u64, p: f32, dtype: DType },
    /// (y, d f32) → y + s · d.
    AddScaled { s: f32 },
    /// g → s · g in f32.
    ScaleToF32 { s: f32 },
    /// (gate, up) → silu(gate) ⊙ up.
    Swiglu,
    /// (gate, up, gradient) → `[2, …]`: the gradients of gate and up.
    SwigluBack,
    /// (x, cos, sin) → rotated and transposed (`inverse`: the backward, transposed back).
    Rope {
        t: u32,
        h: u32,
        d: u32,
        interleaved: bool,
        inverse: bool,
    },
    /// (packed, scales) → `dtype` `[n]`.
    Nf4 { n: u32, dtype: DType },
    /// (logits, targets, weights) → f32 `[rows]`.
    CrossEntropy { v: u32 },
    /// (logits, targets, weights · upstream gradient) → the logits' gradient.
    CrossEntropyBack { v: u32 },
    /// (parameter, gradient, `[2, …]` m and v) → `[3, …]`: m, v and the parameter, stepped.
    AdamW(AdamWStep),
}

/// One AdamW step's scalars (`bc1`, `bc2`: the bias corrections 1 − β^step).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(super) struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub bc1: f32,
    pub bc2: f32,
}

/// One AdamW step of the f32 parameter `p` with gradient `g` and state `mv` (`[2, …]`: m, v):
/// `[3, …]`, the new m, v and parameter, in one kernel (candle_nn's AdamW runs 12 kernels per
/// tensor).
pub(super) fn adamw(p: &Tensor, g: &Tensor, mv: &Tensor, step: AdamWStep) -> Result<Tensor> {
    Ok(Op::no_grad3(Kind::AdamW(step), p, g, mv)?)
}

/// What a kernel produces: the element type it runs in (`t`), its output's dtype and shape.
struct Output {
    t: DType,
    dtype: DType,
    shape: Shape,
}

/// Checks the inputs of kernel `k` (each one's dtype and layout) against what it reads — the
/// kernels read raw buffers, so each input must have the kernel's dtype (the first input's, or
/// a fixed one) and size — and says what it produces. Both devices' launches start here.
fn plan(k: Kind, ins: &[(DType, &Layout)]) -> candle_core::Result<Output> {
    let first = ins[0].1.shape();
    let n = first.elem_count();
    let dt = ins[0].0;
    let rows = |v: u32| n / v.max(1) as usize;
    // (dtype, elements; `true`: exactly, `false`: at least).
    let want: Vec<(DType, usize, bool)> = match k {
        Kind::Softmax { .. } | Kind::Dropout { .. } | Kind::ScaleToF32 { .. } => {
            vec![(dt, n, true)]
        }
        Kind::DropoutBack { .. } => vec![(DType::F32, n, true)],
        Kind::SoftmaxBack { .. } | Kind::Swiglu => vec![(dt, n, true); 2],
        Kind::SwigluBack => vec![(dt, n, true); 3],
        Kind::RmsNorm { n: w, .. } => vec![(dt, n, true), (DType::F32, w as usize, true)],
        Kind::RmsNormBack { n: w, .. } => {
            vec![(dt, n, true), (DType::F32, w as usize, true), (dt, n, true)]
        }
        Kind::AddScaled { .. } => vec![(dt, n, true), (DType::F32, n, true)],
        Kind::Rope { t: len, d, .. } => {
            let table = (DType::F32, (len * d / 2) as usize, false);
            vec![(dt, n, true), table, table]
        }
        Kind::Nf4 { n: e, .. } => vec![
            (DType::U8, (e as usize).div_ceil(2), false),
            (DType::F32, (e as usize).div_ceil(64), false),
        ],
        Kind::CrossEntropy { v } | Kind::CrossEntropyBack { v } => vec![
            (dt, n, true),
            (DType::U32, rows(v), true),
            (DType::F32, rows(v), true),
        ],
        Kind::AdamW(_) => vec![
            (DType::F32, n, true),
            (DType::F32, n, true),
            (DType::F32, 2 * n, true),
        ],
    };
    if want.len() != ins.len() {
        candle_core::bail!("{k:?} takes {} inputs, not {}", want.len(), ins.len());
    }
    for (i, ((got_dtype, l), (dtype, count, exact))) in ins.iter().zip(want).enumerate() {
        let got = l.shape().elem_count();
        if *got_dtype != dtype || (exact && got != count) || got < count {
            candle_core::bail!(
                "{k:?}: input {i} is {got_dtype:?} × {got}, the kernel reads {dtype:?} × {count}"
            );
        }
    }
    let row_of = |cols: u32| -> candle_core::Result<()> {
        if !n.is_multiple_of(cols.max(1) as usize) {
            candle_core::bail!("{k:?}: {n} elements are not rows of {cols}");
        }
        Ok(())
    };
    let with_lead = |lead: usize| {
        let mut dims = vec![lead];
        dims.extend(first.dims());
        Shape::from(dims)
    };
    let (t, dtype, shape) = match k {
        Kind::Softmax { t, .. } | Kind::SoftmaxBack { t, .. } => {
            row_of(t)?;
            (dt, dt, first.clone())
        }
        Kind::RmsNorm { n, .. } | Kind::RmsNormBack { n, .. } => {
            row_of(n)?;
            (dt, dt, first.clone())
        }
        Kind::Dropout { .. } | Kind::ScaleToF32 { .. } => (dt, DType::F32, first.clone()),
        Kind::DropoutBack { dtype, .. } => (dtype, dtype, first.clone()),
        Kind::AddScaled { .. } | Kind::Swiglu => (dt, dt, first.clone()),
        Kind::SwigluBack => (dt, dt, with_lead(2)),
        Kind::Rope {
            t, h, d, inverse, ..
        } => {
            let Ok([b, d0, d1, d2]) = <[usize; 4]>::try_from(first.dims()) else {
                candle_core::bail!("RoPE takes [b, t, h, d] or [b, h, t, d]");
            };
            let (lead, next) = if inverse { (h, t) } else { (t, h) };
            if (d0, d1, d2) != (lead as usize, next as usize, d as usize) || d % 2 != 0 {
                candle_core::bail!(
                    "RoPE: {first:?} is not [b, {lead}, {next}, {d}] (t {t}, h {h}, d even)"
                );
            }
            (dt, dt, Shape::from((b, d1, d0, d2)))
        }
        Kind::Nf4 { n, dtype } => (dtype, dtype, Shape::from(n as usize)),
        Kind::CrossEntropy { v } => {
            row_of(v)?;
            (dt, DType::F32, Shape::from(rows(v)))
        }
        Kind::CrossEntropyBack { v } => {
            row_of(v)?;
            (dt, dt, first.clone())
        }
        Kind::AdamW(_) => (dt, dt, with_lead(3)),
    };
    // Indices are 32-bit: with grid-stride steps of at most 2^28 and outputs of up to 3× the
    // input, every index stays below 2^32 (the dropout streams are indexed by u32 too).
    if shape.elem_count().max(n) > i32::MAX as usize {
        candle_core::bail!("a fused kernel takes fewer than 2^31 elements");
    }
    Ok(Output { t, dtype, shape })
}

struct Op(Kind);

impl Op {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::Softmax { .. } => "softmax_causal_fwd",
            Kind::SoftmaxBack { .. } => "softmax_bwd",
            Kind::RmsNorm { .. } => "rms_norm_fwd",
            Kind::RmsNormBack { .. } => "rms_norm_bwd",
            Kind::Dropout { .. } => "dropout_fwd",
            Kind::DropoutBack { .. } => "dropout_bwd",
            Kind::AddScaled { .. } => "add_scaled",
            Kind::ScaleToF32 { .. } => "scale_to_f32",
            Kind::Swiglu => "swiglu_fwd",
            Kind::SwigluBack => "swiglu_bwd",
            Kind::Rope { .. } => "rope",
            Kind::Nf4 { .. } => "nf4_dequantize",
            Kind::AdamW(_) => "adamw",
            Kind::CrossEntropy { .. } => "cross_entropy_fwd",
            Kind::CrossEntropyBack { .. } => "cross_entropy_bwd",
        }
    }

    /// Kernel `k` on contiguous inputs, recording no gradient (a backward's kernels, and the
    /// forward-only ones).
    fn no_grad1(k: Kind, a: &Tensor) -> candle_core::Result<Tensor> {
        a.contiguous()?.apply_op1_no_bwd(&Op(k))
    }
    fn no_grad2(k: Kind, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &Op(k))
    }
    fn no_grad3(k: Kind, a: &Tensor, b: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
        a.contiguous()?
            .apply_op3_no_bwd(&b.contiguous()?, &c.contiguous()?, &Op(k))
    }
}

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        Op::name(self)
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu::launch(self.0, &[(s, l)])
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::launch(self.0, &[(s, l)])
    }
    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(match self.0 {
            Kind::Softmax { t, scale, .. } => Op::no_grad2(Kind::SoftmaxBack { t, scale }, y, g)?,
            Kind::Dropout { seed, p } => dropout_back(g, seed, p as f64, x.dtype())?,
            k => candle_core::bail!("{k:?} has no backward"),
        }))
    }
}

impl CustomOp2 for Op {
    fn name(&self) -> &'static str {
        Op::name(self)
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu::launch(self.0, &[(s1, l1), (s2, l2)])
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::launch(self.0, &[(s1, l1), (s2, l2)])
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok(match self.0 {
            Kind::RmsNorm { n, eps } => (
                Some(Op::no_grad3(Kind::RmsNormBack { n, eps }, a, b, g)?),
                None,
            ),
            Kind::AddScaled { s } => (Some(g.clone()), Some(scale_to_f32(g, s as f64)?)),
            Kind::Swiglu => {
                let d = Op::no_grad3(Kind::SwigluBack, a, b, g)?;
                (Some(d.get(0)?), Some(d.get(1)?))
            }
            k => candle_core::bail!("{k:?} has no backward"),
        })
    }
}

impl CustomOp3 for Op {
    fn name(&self) -> &'static str {
        Op::name(self)
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu::launch(self.0, &[(s1, l1), (s2, l2), (s3, l3)])
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::launch(self.0, &[(s1, l1), (s2, l2), (s3, l3)])
    }
    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match self.0 {
            Kind::Rope {
                t,
                h,
                d,
                interleaved,
                inverse,
            } => {
                let back = Kind::Rope {
                    t,
                    h,
                    d,
                    interleaved,
                    inverse: !inverse,
                };
                Ok((Some(Op::no_grad3(back, g, cos, sin)?), None, None))
            }
            k => candle_core::bail!("{k:?} has no backward"),
        }
    }
}

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;

#[cfg(test)]
mod tests {
    use super::cpu::keep;
    use super::*;

    #[test]
    fn dropout_keeps_each_element_with_probability_one_minus_p_independently_of_its_neighbours() {
        let n = 200_000u32;
        for p in [0.05f32, 0.5] {
            let kept: Vec<bool> = (0..n).map(|i| keep(7, i, p)).collect();
            let rate = kept.iter().filter(|&&k| k).count() as f64 / n as f64;
            assert!(
                (rate - (1.0 - p as f64)).abs() < 0.005,
                "p {p}: kept {rate}"
            );
            // Pairs of neighbours are kept together as often as independence says.
            let both = kept.windows(2).filter(|w| w[0] && w[1]).count() as f64 / (n - 1) as f64;
            let want = (1.0 - p as f64).powi(2);
            assert!((both - want).abs() < 0.005, "p {p}: pairs {both} vs {want}");
        }
        // Another stream draws other masks.
        let differ = (0..1000).filter(|&i| keep(7, i, 0.5) != keep(8, i, 0.5));
        assert!(differ.count() > 400);
    }

    /// Each fused op against its composite form (candle's differentiable operations, on the CPU
    /// in f32) on the same inputs: the value, and the gradient of `Σ y ⊙ r` for a random `r`
    /// with respect to every activation input — on the CPU in f32, and with `--features cuda` on
    /// a GPU in f32 and bf16 too.
    mod against_the_composite {
        use super::super::ops::{self, composite};
        use super::*;
        use crate::test_util::max_diff;

        /// An input: its values, and whether it is an activation (in the pass's dtype, with a
        /// gradient), a frozen weight (in the pass's dtype, none) or a table (f32, none).
        struct In(Tensor, Role);

        #[derive(Clone, Copy, PartialEq)]
        enum Role {
            Act,
            Weight,
            Table,
        }

        fn act(dims: &[usize], seed: u64) -> In {
            In(random(dims, seed), Role::Act)
        }
        fn table(t: Tensor) -> In {
            In(t, Role::Table)
        }
        fn random(dims: &[usize], seed: u64) -> Tensor {
            let n: usize = dims.iter().product();
            let mut s = seed;
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    s = splitmix(s);
                    (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
                })
                .collect();
            Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
        }

        /// Relative to the reference's largest magnitude.
        fn rel(got: &Tensor, want: &Tensor) -> f32 {
            let got = got
                .to_device(&Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            max_diff(&got, want) / scale.max(1.0)
        }

        /// The devices and dtypes the fused kernels run in, with the tolerance of each.
        fn targets() -> Vec<(Device, DType, f32)> {
            let mut t = vec![(Device::Cpu, DType::F32, 1e-5)];
            if cfg!(feature = "cuda") {
                let gpu = Device::new_cuda(0).expect("a GPU for the tests of a CUDA build");
                t.push((gpu.clone(), DType::F32, 1e-5));
                t.push((gpu, DType::BF16, 2e-2));
            }
            t
        }

        type F<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

        fn check(name: &str, ins: Vec<In>, fused: F, composite: F) {
            let run = |f: F, dev: &Device, dtype: DType| -> (Tensor, Vec<Option<Tensor>>) {
                let vars: Vec<(Var, bool)> = ins
                    .iter()
                    .map(|In(t, role)| {
                        let t = t.to_device(dev).unwrap();
                        let t = match role {
                            Role::Table => t,
                            _ => t.to_dtype(dtype).unwrap(),
                        };
                        (Var::from_tensor(&t).unwrap(), *role == Role::Act)
                    })
                    .collect();
                let ts: Vec<Tensor> = vars.iter().map(|(v, _)| v.as_tensor().clone()).collect();
                let y = f(&ts).unwrap();
                let r = random(y.dims(), 99).to_device(dev).unwrap();
                let grads = (y.to_dtype(DType::F32).unwrap() * r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let g = vars
                    .iter()
                    .map(|(v, a)| a.then(|| grads.get(v.as_tensor()).unwrap().clone()))
                    .collect();
                (y, g)
            };
            let (want, want_g) = run(composite, &Device::Cpu, DType::F32);
            for (dev, dtype, tol) in targets() {
                let at = format!("{name} on {dev:?} in {dtype:?}");
                assert!(takes(&dev, dtype), "{at}: the fused kernels do not apply");
                let (got, got_g) = run(fused, &dev, dtype);
                assert_eq!(got.dims(), want.dims(), "{at}");
                let d = rel(&got, &want);
                assert!(d < tol, "{at}: values differ by {d}");
                for (i, (g, w)) in got_g.iter().zip(&want_g).enumerate() {
                    if let (Some(g), Some(w)) = (g, w) {
                        let d = rel(g, w);
                        assert!(d < tol * 2.0, "{at}: gradient {i} differs by {d}");
                    }
                }
            }
        }

        #[test]
        fn the_causal_softmax_matches_the_composite() {
            for (t, window) in [(37, None), (64, Some(5)), (300, None)] {
                check(
                    &format!("softmax t {t} window {window:?}"),
                    vec![act(&[2, 3, t, t], t as u64)],
                    &|x| ops::attention_softmax(&x[0], 0.125, window),
                    &|x| composite::attention_softmax(&x[0], 0.125, window),
                );
            }
        }

        #[test]
        fn rms_norm_matches_the_composite() {
            for n in [64, 576, 2048] {
                check(
                    &format!("rms norm {n}"),
                    vec![act(&[3, 5, n], 1), table(random(&[n], 2))],
                    &|x| ops::rms_norm(&x[0], &x[1], 1e-5),
                    &|x| composite::rms_norm(&x[0], &x[1], 1e-5),
                );
            }
        }

        #[test]
        fn rope_with_the_head_transpose_matches_the_composite() {
            let (t, half) = (11, 8);
            let angle = |k: usize| {
                (0..t * half).map(move |i| ((i / half) as f32) * 0.3 / (1 + i % half + k) as f32)
            };
            let cos = Tensor::from_vec(angle(0).map(f32::cos).collect(), (t, half), &Device::Cpu)
                .unwrap();
            let sin = Tensor::from_vec(angle(0).map(f32::sin).collect(), (t, half), &Device::Cpu)
                .unwrap();
            for interleaved in [true, false] {
                check(
                    &format!("rope interleaved {interleaved}"),
                    vec![
                        act(&[2, t, 3, 2 * half], 5),
                        table(cos.clone()),
                        table(sin.clone()),
                    ],
                    &|x| ops::rope_heads(&x[0], &x[1], &x[2], interleaved),
                    &|x| composite::rope_heads(&x[0], &x[1], &x[2], interleaved),
                );
            }
        }

        #[test]
        fn swiglu_and_the_adapter_sum_match_the_composite() {
            check(
                "swiglu",
                vec![act(&[4, 300], 1), act(&[4, 300], 2)],
                &|x| ops::swiglu(&x[0], &x[1]),
                &|x| Ok((x[0].silu()? * &x[1])?),
            );
            // `d` is the adapter's f32 delta: an f32 input with a gradient.
            let d = random(&[4, 300], 3);
            check(
                "add scaled",
                vec![act(&[4, 300], 4), In(d, Role::Act)],
                &|x| ops::add_scaled(&x[0], &x[1].to_dtype(DType::F32)?, 0.5),
                &|x| Ok((&x[0] + (x[1].to_dtype(DType::F32)? * 0.5)?)?),
            );
        }

        #[test]
        fn dropout_draws_the_masks_of_its_stream() {
            let (seed, p) = (42u64, 0.25);
            let n = 5000;
            let keep: Vec<f32> = (0..n as u32)
                .map(|i| {
                    if keep(seed, i, p as f32) {
                        1.0 / (1.0 - p as f32)
                    } else {
                        0.0
                    }
                })
                .collect();
            let keep = Tensor::from_vec(keep, (50, 100), &Device::Cpu).unwrap();
            check(
                "dropout",
                vec![act(&[50, 100], 9)],
                &|x| Ok(fused::dropout(&x[0], seed, p)?),
                &|x| Ok((x[0].to_dtype(DType::F32)? * &keep)?),
            );
        }

        #[test]
        fn an_adapted_projection_matches_the_composite() {
            let (rows, inputs, outputs, rank) = (37, 48, 40, 4);
            let (seed, p, s) = (5u64, 0.2, 2.0);
            let keep: Vec<f32> = (0..(rows * inputs) as u32)
                .map(|i| {
                    if keep(seed, i, p as f32) {
                        1.0 / (1.0 - p as f32)
                    } else {
                        0.0
                    }
                })
                .collect();
            let keep = Tensor::from_vec(keep, (rows, inputs), &Device::Cpu).unwrap();
            for dropout in [None, Some((seed, p))] {
                // x, A `[r, in]`, B `[out, r]` (f32 adapters, with gradients), Wᵀ `[in, out]`.
                let ins = || {
                    vec![
                        act(&[rows, inputs], 1),
                        In(random(&[rank, inputs], 2), Role::Act),
                        In(random(&[outputs, rank], 3), Role::Act),
                        In(random(&[inputs, outputs], 4), Role::Weight),
                    ]
                };
                let f32s = |x: &[Tensor]| -> Result<Vec<Tensor>> {
                    Ok(vec![x[1].to_dtype(DType::F32)?, x[2].to_dtype(DType::F32)?])
                };
                check(
                    &format!("adapted projection, dropout {dropout:?}"),
                    ins(),
                    &|x| {
                        let ab = f32s(x)?;
                        let op = adapted::Adapted {
                            base: Base::Dense(Arc::new(x[3].clone())),
                            scale: s,
                            dropout,
                        };
                        op.forward(&x[0], &ab[0], &ab[1])
                    },
                    &|x| {
                        let ab = f32s(x)?;
                        let mut d = x[0].to_dtype(DType::F32)?;
                        if dropout.is_some() {
                            d = (d * &keep)?;
                        }
                        let delta = d.matmul(&ab[0].t()?)?.matmul(&ab[1].t()?)?;
                        Ok((x[0].matmul(&x[3])? + (delta * s)?)?)
                    },
                );
            }
        }

        #[test]
        fn the_head_and_cross_entropy_match_the_composite() {
            let (n, hidden, vocab) = (300, 64, 1000);
            let t: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 5) % vocab as u32).collect();
            let w: Vec<f32> = (0..n).map(|i| 0.01 + 0.001 * i as f32).collect();
            let targets = Tensor::from_vec(t, (n, 1), &Device::Cpu).unwrap();
            let weights = Tensor::from_vec(w, n, &Device::Cpu).unwrap();
            let wt = In(random(&[hidden, vocab], 7), Role::Weight);
            // Chunks of 128 rows: the last one partial.
            let head = |fused: bool| {
                let (targets, weights) = (targets.clone(), weights.clone());
                move |x: &[Tensor]| -> Result<Tensor> {
                    let dev = x[0].device();
                    Ok(x[0].apply_op1(HeadLoss::new(
                        Base::Dense(Arc::new(x[1].clone())),
                        targets.to_device(dev)?,
                        weights.to_device(dev)?,
                        128,
                        fused,
                        fused,
                    ))?)
                }
            };
            check(
                "head loss",
                vec![act(&[n, hidden], 8), wt],
                &head(true),
                &head(false),
            );
        }

        #[test]
        fn nf4_dequantizes_in_the_kernel_as_in_the_composite() {
            let w = random(&[97, 200], 3);
            let host = nf4::Nf4::quantize(&w)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap();
            let want = host.composite_dequantize(DType::F32).unwrap();
            for (dev, dtype, _) in targets() {
                let on = nf4::Nf4::quantize(&w).unwrap().to_device(&dev).unwrap();
                let got = on.dequantize(dtype).unwrap();
                let tol = if dtype == DType::F32 { 1e-7 } else { 1e-2 };
                assert!(rel(&got, &want) < tol, "{dev:?} {dtype:?}");
            }
        }
    }
}
