//! The fused kernels on the CPU, in f32: the formulas of `kernels.cu`, a chunk of rows (or of
//! elements) per task on rayon's pool — the threads candle's matrix products run on, so that no
//! other pool's threads spin beside them (the runtime's decode pool, [`crate::cpu::pool`], cost
//! 8 % of a training step spinning between kernels on 2 cores). On the CPU the
//! trainer's time went less to arithmetic than to memory: each link of a chain of candle's
//! operations wrote a fresh activation-sized buffer (SmolLM2-135M LoRA at 4 × 256 tokens: peak
//! RSS 10.6 GB, ~40 % of the step in the kernel clearing newly faulted pages), and the dropout
//! masks alone were ~4 GB of it.

use super::{Kind, Output, plan};
use crate::cpu::forward::dot;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Shape};
use rayon::prelude::*;

type R<T> = candle_core::Result<T>;

/// Runs kernel `k` on `ins`: its output's storage and shape.
pub(super) fn launch(k: Kind, ins: &[(&CpuStorage, &Layout)]) -> R<(CpuStorage, Shape)> {
    let typed: Vec<(DType, &Layout)> = ins.iter().map(|(s, l)| (s.dtype(), *l)).collect();
    let Output { t, dtype, shape } = plan(k, &typed)?;
    if t != DType::F32 || dtype != DType::F32 {
        candle_core::bail!(
            "the CPU's fused kernels run in f32, not {t:?} (that pass uses candle's operations)"
        );
    }
    let f = |i: usize| f32s(ins[i]);
    if let Kind::CrossEntropy { v } | Kind::CrossEntropyBack { v } = k
        && let Some(t) = u32s(ins[1])?.iter().find(|&&t| t >= v)
    {
        candle_core::bail!("{k:?}: target {t} is outside the vocabulary of {v}");
    }
    let n = ins[0].1.shape().elem_count();
    let mut out = vec![0f32; shape.elem_count()];
    match k {
        Kind::Softmax { t, window, scale } => {
            let (x, t, window) = (f(0)?, t as usize, window as usize);
            par_rows(vec![&mut out], t, t, &|first, o| {
                for (r, y) in o[0].chunks_exact_mut(t).enumerate() {
                    let i = (first + r) % t;
                    let lo = if window > 0 && i + 1 > window {
                        i + 1 - window
                    } else {
                        0
                    };
                    let row = &x[(first + r) * t..][lo..=i];
                    let y = &mut y[lo..=i];
                    // scale > 0: the largest scaled score is the largest score, scaled.
                    let m = max(row) * scale;
                    for (y, &v) in y.iter_mut().zip(row) {
                        *y = exp(v * scale - m);
                    }
                    let inv = 1.0 / sum(y);
                    y.iter_mut().for_each(|y| *y *= inv);
                }
            });
        }
        Kind::SoftmaxBack { t, scale } => {
            let (y, g, t) = (f(0)?, f(1)?, t as usize);
            par_rows(vec![&mut out], t, t, &|first, o| {
                for (r, dx) in o[0].chunks_exact_mut(t).enumerate() {
                    let at = (first + r) * t;
                    let (y, g) = (&y[at..at + t], &g[at..at + t]);
                    let d = dot(g, y);
                    for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                        *dx = scale * y * (g - d);
                    }
                }
            });
        }
        Kind::RmsNorm { n, eps } => {
            let (x, w, n) = (f(0)?, f(1)?, n as usize);
            par_rows(vec![&mut out], n, n, &|first, o| {
                for (r, y) in o[0].chunks_exact_mut(n).enumerate() {
                    let x = &x[(first + r) * n..][..n];
                    let s = 1.0 / (dot(x, x) / n as f32 + eps).sqrt();
                    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                        *y = x * s * w;
                    }
                }
            });
        }
        Kind::RmsNormBack { n, eps } => {
            let (x, w, g, n) = (f(0)?, f(1)?, f(2)?, n as usize);
            par_rows(vec![&mut out], n, n, &|first, o| {
                let mut gw = vec![0f32; n];
                for (r, dx) in o[0].chunks_exact_mut(n).enumerate() {
                    let at = (first + r) * n;
                    let (x, g) = (&x[at..at + n], &g[at..at + n]);
                    for ((gw, &g), &w) in gw.iter_mut().zip(g).zip(w) {
                        *gw = g * w;
                    }
                    let s = 1.0 / (dot(x, x) / n as f32 + eps).sqrt();
                    let c = s * s * s * dot(&gw, x) / n as f32;
                    for ((dx, &gw), &x) in dx.iter_mut().zip(&gw).zip(x) {
                        *dx = s * gw - x * c;
                    }
                }
            });
        }
        Kind::Dropout { seed, p } | Kind::DropoutBack { seed, p, .. } => {
            let (x, s) = (f(0)?, 1.0 / (1.0 - p));
            par_rows(vec![&mut out], 1, 1, &|first, o| {
                for (i, (y, &x)) in o[0].iter_mut().zip(&x[first..]).enumerate() {
                    if keep(seed, (first + i) as u32, p) {
                        *y = x * s;
                    }
                }
            });
        }
        Kind::AddScaled { s } => {
            let (y, d) = (f(0)?, f(1)?);
            par_rows(vec![&mut out], 1, 1, &|first, o| {
                for ((o, &y), &d) in o[0].iter_mut().zip(&y[first..]).zip(&d[first..]) {
                    *o = y + s * d;
                }
            });
        }
        Kind::ScaleToF32 { s } => {
            let g = f(0)?;
            par_rows(vec![&mut out], 1, 1, &|first, o| {
                for (o, &g) in o[0].iter_mut().zip(&g[first..]) {
                    *o = s * g;
                }
            });
        }
        Kind::Swiglu => {
            let (gate, up) = (f(0)?, f(1)?);
            par_rows(vec![&mut out], 1, 1, &|first, o| {
                let (gate, up) = (&gate[first..], &up[first..]);
                for ((o, &a), &u) in o[0].iter_mut().zip(gate).zip(up) {
                    *o = a / (1.0 + exp(-a)) * u;
                }
            });
        }
        Kind::SwigluBack => {
            let (gate, up, g) = (f(0)?, f(1)?, f(2)?);
            let (d_gate, d_up) = out.split_at_mut(n);
            par_rows(vec![d_gate, d_up], 1, 1, &|first, o| {
                let [dg, du] = o else {
                    unreachable!("two outputs")
                };
                let it = gate[first..].iter().zip(&up[first..]).zip(&g[first..]);
                for ((dg, du), ((&a, &u), &g)) in dg.iter_mut().zip(du.iter_mut()).zip(it) {
                    let sg = 1.0 / (1.0 + exp(-a));
                    *dg = g * u * sg * (1.0 + a * (1.0 - sg));
                    *du = g * a * sg;
                }
            });
        }
        Kind::Rope {
            t,
            h,
            d,
            interleaved,
            inverse,
        } => {
            let (x, cos, sin) = (f(0)?, f(1)?, f(2)?);
            let (t, h, d) = (t as usize, h as usize, d as usize);
            let half = d / 2;
            par_rows(vec![&mut out], d, d, &|first, o| {
                for (r, y) in o[0].chunks_exact_mut(d).enumerate() {
                    // The output row's batch, head and position, and its input row.
                    let row = first + r;
                    let (pos, src) = if inverse {
                        let (b, pos, head) = (row / (t * h), (row / h) % t, row % h);
                        (pos, (b * h + head) * t + pos)
                    } else {
                        let (b, head, pos) = (row / (h * t), (row / t) % h, row % t);
                        (pos, (b * t + pos) * h + head)
                    };
                    let x = &x[src * d..][..d];
                    let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
                    let sign = if inverse { -1.0 } else { 1.0 };
                    for k in 0..half {
                        let (p0, p1) = if interleaved {
                            (2 * k, 2 * k + 1)
                        } else {
                            (k, k + half)
                        };
                        let (c, s) = (c[k], sign * s[k]);
                        let (x0, x1) = (x[p0], x[p1]);
                        y[p0] = x0 * c - x1 * s;
                        y[p1] = x0 * s + x1 * c;
                    }
                }
            });
        }
        Kind::Nf4 { .. } => {
            let (packed, scales) = (u8s(ins[0])?, f(1)?);
            let code = crate::lora::nf4::CODE;
            par_rows(vec![&mut out], 64, 64, &|first, o| {
                for (i, y) in o[0].iter_mut().enumerate() {
                    let i = first * 64 + i;
                    let byte = packed[i / 2];
                    let q = if i % 2 == 1 { byte & 15 } else { byte >> 4 };
                    *y = code[q as usize] * scales[i / 64];
                }
            });
        }
        Kind::CrossEntropy { v } => {
            let (logits, targets, w, v) = (f(0)?, u32s(ins[1])?, f(2)?, v as usize);
            par_rows(vec![&mut out], 1, v, &|first, o| {
                for (r, loss) in o[0].iter_mut().enumerate() {
                    let row = first + r;
                    let l = &logits[row * v..][..v];
                    *loss = w[row] * (log_sum_exp(l) - l[targets[row] as usize]);
                }
            });
        }
        Kind::CrossEntropyBack { v } => {
            let (logits, targets, wg, v) = (f(0)?, u32s(ins[1])?, f(2)?, v as usize);
            par_rows(vec![&mut out], v, v, &|first, o| {
                for (r, d) in o[0].chunks_exact_mut(v).enumerate() {
                    let row = first + r;
                    let l = &logits[row * v..][..v];
                    let (lse, g) = (log_sum_exp(l), wg[row]);
                    for (d, &x) in d.iter_mut().zip(l) {
                        *d = g * exp(x - lse);
                    }
                    d[targets[row] as usize] -= g;
                }
            });
        }
        Kind::AdamW(a) => {
            let (p, g, mv) = (f(0)?, f(1)?, f(2)?);
            let (m, rest) = out.split_at_mut(n);
            let (v, p_out) = rest.split_at_mut(n);
            par_rows(vec![m, v, p_out], 1, 1, &|first, o| {
                let [m, v, po] = o else {
                    unreachable!("three outputs")
                };
                for i in 0..m.len() {
                    let at = first + i;
                    let gi = g[at];
                    m[i] = a.beta1 * mv[at] + (1.0 - a.beta1) * gi;
                    v[i] = a.beta2 * mv[n + at] + (1.0 - a.beta2) * gi * gi;
                    po[i] = p[at] * (1.0 - a.lr * a.weight_decay)
                        - a.lr * (m[i] / a.bc1) / ((v[i] / a.bc2).sqrt() + a.eps);
                }
            });
        }
    }
    Ok((CpuStorage::F32(out), shape))
}

/// The f32 values of a contiguous input.
fn f32s<'a>((s, l): (&'a CpuStorage, &Layout)) -> R<&'a [f32]> {
    crate::cpu::contiguous_f32(s, l, "a fused kernel")
}

fn u8s<'a>((s, l): (&'a CpuStorage, &Layout)) -> R<&'a [u8]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U8(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("a fused kernel takes contiguous u8 input here"),
    }
}

fn u32s<'a>((s, l): (&'a CpuStorage, &Layout)) -> R<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("a fused kernel takes contiguous u32 input here"),
    }
}

/// Elements of work a task gets at least (a few µs of it).
const GRAIN: usize = 1 << 14;

/// Cuts each of `parts` (equally long outputs, rows of `width` elements, each row `cost`
/// elements of work) at the same rows and runs `f(first row, the chunks)` for every chunk in
/// parallel; each task writes only its own chunks.
fn par_rows(
    parts: Vec<&mut [f32]>,
    width: usize,
    cost: usize,
    f: &(dyn Fn(usize, &mut [&mut [f32]]) + Sync),
) {
    let rows = parts[0].len() / width.max(1);
    let threads = rayon::current_num_threads();
    let per = GRAIN
        .div_ceil(cost.max(1))
        .min(rows.div_ceil(threads))
        .max(1);
    let mut iters: Vec<_> = parts
        .into_iter()
        .map(|p| p.chunks_mut(per * width.max(1)))
        .collect();
    let mut tasks = vec![];
    loop {
        let c: Vec<&mut [f32]> = iters.iter_mut().filter_map(Iterator::next).collect();
        if c.is_empty() {
            break;
        }
        tasks.push(c);
    }
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut c)| f(i * per, &mut c));
}

/// Element `i` of dropout stream `seed` is kept (probability 1 − p): splitmix64's output for
/// index `i`, its top 24 bits as a uniform number in [0, 1), compared with `p` (as `keep` in
/// kernels.cu).
pub(in crate::lora) fn keep(seed: u64, i: u32, p: f32) -> bool {
    let mut z = seed.wrapping_add(u64::from(i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / 16_777_216.0) >= p
}

/// `e^x` to about 2 ulp, in a form the compiler vectorises (libm's `expf` is a call per
/// element): `2^n · p(r)` with `n = ⌊x log₂e⌉`, `r = x − n ln 2` (in two parts), `p` the degree-6
/// Taylor polynomial; 0 below −87.3 (e^x is subnormal there), capped at e^88.3, NaN stays NaN.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.clamp(-87.3, 88.3);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let y = p * f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < -87.3 { 0.0 } else { y }
}

/// `log Σ e^x`, 0-weight for −∞ entries.
fn log_sum_exp(x: &[f32]) -> f32 {
    let m = max(x);
    if m == f32::NEG_INFINITY {
        return m;
    }
    let mut acc = [0f32; 8];
    let c = x.chunks_exact(8);
    let tail: f32 = c.remainder().iter().map(|&v| exp(v - m)).sum();
    for v in c {
        for l in 0..8 {
            acc[l] += exp(v[l] - m);
        }
    }
    m + (acc.iter().sum::<f32>() + tail).ln()
}

/// Σ x, eight lanes.
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let c = x.chunks_exact(8);
    let tail: f32 = c.remainder().iter().sum();
    for v in c {
        for l in 0..8 {
            acc[l] += v[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest of `x` (−∞ for none; a NaN gives NaN).
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let c = x.chunks_exact(8);
    let mut m = f32::NEG_INFINITY;
    let mut nan = false;
    for &v in c.remainder() {
        nan |= v.is_nan();
        m = if v > m { v } else { m };
    }
    for v in c {
        for l in 0..8 {
            nan |= v[l].is_nan();
            acc[l] = if v[l] > acc[l] { v[l] } else { acc[l] };
        }
    }
    if nan {
        return f32::NAN;
    }
    acc.iter().fold(m, |a, &b| if b > a { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectorised_exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn reductions_match_their_plain_forms() {
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.01 - 0.3)
            .collect();
        for len in [0, 1, 7, 8, 9, 37] {
            let v = &x[..len];
            let want_max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(v), want_max, "len {len}");
            assert!((sum(v) - v.iter().sum::<f32>()).abs() < 1e-5, "len {len}");
        }
        assert!(max(&[1.0, f32::NAN, 2.0]).is_nan());
        let lse = log_sum_exp(&x);
        let want = x.iter().map(|v| (v - 0.7f32).exp()).sum::<f32>().ln() + 0.7;
        assert!((lse - want).abs() < 1e-5);
    }
}
