//! A projection with its adapter as one op: `y = x Wᵀ + s · (drop(x) Aᵀ) Bᵀ` of (x, A, B) for
//! the frozen base `W`, whose backward gives the gradients of x, A and B at once.
//!
//! Written with candle's operations instead (the frozen product, the dropout, two adapter
//! products through transposes, the scaled sum), a projection was ~8 nodes of the autograd graph,
//! and candle's backward gives every node's inputs their gradient through a zero tensor of their
//! size plus the contribution (`GradStore::or_insert`, then `add`): ~6 extra activation-sized
//! buffers written and read per projection, and the dropped input kept for the backward. Here
//! the backward recomputes the dropped input (from the dropout stream) and the small `[n, r]`
//! product, and writes only the three gradients. Used where the fused kernels apply (the
//! dropout is then a stream, nothing to keep) on the CPU ([`applies`]); other passes keep the
//! composite form.

use super::*;
use candle_core::CustomOp3;

/// Whether the pass on `x` takes the op: where the fused kernels apply, on the CPU for now. The
/// op runs on a GPU too (the `against_the_composite` tests of a CUDA build hold it to the
/// composite form there), but it was written in a session without a GPU, so the GPU pass keeps
/// the form its published figures (docs/gpu.md) were measured with until a run on one tests and
/// measures it.
pub(super) fn applies(x: &Tensor) -> bool {
    fused::applies(x) && x.device().is_cpu()
}

pub(super) struct Adapted {
    pub base: Base,
    /// `α / r`.
    pub scale: f64,
    /// The dropout stream and probability (training with dropout only).
    pub dropout: Option<(u64, f64)>,
}

impl Adapted {
    /// `x` `[…, in]` through the projection, with A `[r, in]` and B `[out, r]` (f32).
    pub fn forward(self, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?
            .apply_op3(&a.contiguous()?, &b.contiguous()?, self)?)
    }

    /// The adapter's input: `x` in f32 under the dropout mask.
    fn dropped(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.dropout {
            Some((seed, p)) => fused::dropout(x, seed, p),
            None => x.to_dtype(DType::F32),
        }
    }

    fn compute(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.base.apply(x)?;
        let u = rows_matmul(&self.dropped(x)?, &a.t()?)?;
        let delta = rows_matmul(&u, &b.t()?)?;
        fused::add_scaled(&y, &delta, self.scale)
    }
}

impl CustomOp3 for Adapted {
    fn name(&self) -> &'static str {
        "adapted-projection"
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
        on_cpu(&[(s1, l1), (s2, l2), (s3, l3)], |t| {
            self.compute(&t[0], &t[1], &t[2])
        })
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
        on_cuda(&[(s1, l1), (s2, l2), (s3, l3)], |t| {
            self.compute(&t[0], &t[1], &t[2])
        })
    }
    /// With `gs = s · g` (f32), `d = drop(x)` and `u = d Aᵀ`: `∂x = g W + drop'(gs B A)`,
    /// `∂A = (gs B)ᵀ d`, `∂B = gsᵀ u`.
    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Detached, so that the gradients (kept until the optimizer steps, summed over
        // micro-batches) do not hold the forward's graph behind x alive.
        let (x, a, b) = (&x.detach(), &a.detach(), &b.detach());
        let (rank, inputs) = a.dims2()?;
        let outputs = b.dim(0)?;
        let rows = x.elem_count() / inputs.max(1);
        let d = self.dropped(x)?.reshape((rows, inputs))?;
        let gs = fused::scale_to_f32(g, self.scale)?.reshape((rows, outputs))?;
        let u = d.matmul(&a.t()?)?;
        let gb = gs.matmul(b)?;
        let da = gb.t()?.matmul(&d)?;
        let db = gs.t()?.matmul(&u)?;
        let gd = gb.matmul(a)?.reshape(x.shape())?;
        let gx = match self.dropout {
            Some((seed, p)) => fused::dropout_back(&gd, seed, p, x.dtype())?,
            None => gd.to_dtype(x.dtype())?,
        };
        let dx = (self.base.back(g)? + gx)?;
        debug_assert_eq!(da.dims(), &[rank, inputs]);
        Ok((Some(dx), Some(da), Some(db)))
    }
}
