//! The frozen base: [`Frozen`], a custom op holding a base matrix (f32 for LoRA, 4-bit for
//! QLoRA) whose forward is a matmul and whose backward gives the gradient of the input only
//! (`grad · W`, dequantized on the fly for 4-bit).

use super::*;

/// A frozen base matrix.
#[derive(Clone)]
pub(super) enum Base {
    /// `Wᵀ` `[in, out]`, f32.
    Dense(Arc<Tensor>),
    /// `W` `[out, in]` in a GGUF quantized type.
    Quant(Arc<QTensor>),
}

/// `x · Wᵀ` for a frozen `W`, as a custom op so that autograd computes the gradient of `x` only
/// (`grad · W`): candle's own matmul backward would also compute — and keep until the step ends —
/// a full-size gradient for every frozen matrix. For a quantized `W` the forward is candle's
/// quantized matmul and the backward dequantizes `W` on the fly (QLoRA), so it stays 4-bit.
pub(super) struct Frozen(Base);

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }
    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = crate::cpu::contiguous_f32(storage, layout, self.name())?;
        let x = Tensor::from_slice(data, layout.shape(), &Device::Cpu)?;
        let y = self.0.apply(&x)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1()?), shape))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda::CudaStorageSlice;
        use candle_core::op::BackpropOp;
        use candle_core::{Storage, bail};
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("frozen-linear takes a contiguous input");
        };
        // `try_clone` copies the whole buffer: wrap it as a 1-d tensor, then take the layout's
        // window of it.
        let all = storage.try_clone(layout)?;
        let n = match &all.slice {
            CudaStorageSlice::F32(s) => s.len(),
            _ => bail!("frozen-linear takes f32 input"),
        };
        let x = Tensor::from_storage(Storage::Cuda(all), n, BackpropOp::none(), false)
            .narrow(0, start, end - start)?
            .reshape(layout.shape())?;
        let y = self.0.apply(&x)?.contiguous()?;
        let shape = y.shape().clone();
        let (st, l) = y.storage_and_layout();
        match &*st {
            Storage::Cuda(c) if l.start_offset() == 0 => Ok((c.try_clone(l)?, shape)),
            _ => bail!("frozen-linear: unexpected output storage"),
        }
    }
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = match &self.0 {
            Base::Dense(wt) => grad.broadcast_matmul(&wt.t()?)?,
            Base::Quant(q) => grad.broadcast_matmul(&q.dequantize(grad.device())?)?,
        };
        Ok(Some(g))
    }
}

impl Base {
    /// `x · Wᵀ` without autograd (the op's forward).
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Base::Dense(wt) => x.broadcast_matmul(wt),
            Base::Quant(q) => QMatMul::QTensor(q.clone()).forward(x),
        }
    }
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1(Frozen(self.clone()))?)
    }
    pub(super) fn bytes(&self) -> u64 {
        match self {
            Base::Dense(t) => (t.elem_count() * 4) as u64,
            Base::Quant(q) => q.storage_size_in_bytes() as u64,
        }
    }
}

/// A quantized matrix moved to `device` (its blocks copied as they are).
pub(super) fn on_device(q: QTensor, device: &Device) -> Result<QTensor> {
    if device.is_cpu() {
        return Ok(q);
    }
    let dims = q.shape().dims().to_vec();
    Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
        q.dtype(),
        &q.data()?,
        dims,
        device,
    )?)
}

pub(super) fn is_4bit(t: GgmlDType) -> bool {
    matches!(type_name(t), "q4_0" | "q4_1" | "q4_k")
}
