//! The frozen base: [`Frozen`], a custom op holding a base matrix (dense in the pass's dtype for
//! LoRA; 4-bit GGUF blocks or NF4 for QLoRA) whose forward is a matmul and whose backward gives
//! the gradient of the input only (`grad · W`, dequantized on the fly for 4-bit); and
//! [`HeadLoss`], the output head and the cross-entropy as one chunked op.

use super::nf4::Nf4;
use super::*;
use candle_core::Storage;
use candle_core::op::BackpropOp;

/// A frozen base matrix.
#[derive(Clone)]
pub(super) enum Base {
    /// `Wᵀ` `[in, out]`, in the pass's dtype.
    Dense(Arc<Tensor>),
    /// `W` `[out, in]` in a GGUF quantized type.
    Quant(Arc<QTensor>),
    /// `W` `[out, in]` in bitsandbytes' NF4 layout.
    Nf4(Arc<Nf4>),
}

/// `x · Wᵀ` for a frozen `W`, as a custom op so that autograd computes the gradient of `x` only
/// (`grad · W`): candle's own matmul backward would also compute — and keep until the step ends —
/// a full-size gradient for every frozen matrix. A 4-bit `W` stays 4-bit: the forward is candle's
/// quantized matmul (f32 on the CPU) or a matmul with `W` dequantized for the call, and the
/// backward dequantizes it again (QLoRA; bitsandbytes does the same).
pub(super) struct Frozen(Base);

/// The tensor a custom op's input storage holds (a view of a copy of its buffer).
pub(super) fn wrap(storage: Storage, layout: &Layout) -> candle_core::Result<Tensor> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("a custom op takes a contiguous input");
    };
    // The buffer holds at least `end` elements.
    Tensor::from_storage(storage, end, BackpropOp::none(), false)
        .narrow(0, start, end - start)?
        .reshape(layout.shape())
}

/// The storage a custom op returns for `y`.
fn unwrap_cpu(y: Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let y = fresh(y)?;
    let shape = y.shape().clone();
    let (st, _) = y.storage_and_layout();
    match &*st {
        Storage::Cpu(c) => Ok((c.clone(), shape.clone())),
        _ => candle_core::bail!("a custom op's CPU forward produced a tensor off the CPU"),
    }
}

/// `y` in storage of its own, contiguous from offset 0.
fn fresh(y: Tensor) -> candle_core::Result<Tensor> {
    let y = y.contiguous()?;
    if y.layout().start_offset() == 0 && y.layout().is_contiguous() {
        Ok(y)
    } else {
        y.affine(1.0, 0.0)
    }
}

#[cfg(feature = "cuda")]
fn unwrap_cuda(y: Tensor) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    let y = fresh(y)?;
    let shape = y.shape().clone();
    let (st, l) = y.storage_and_layout();
    match &*st {
        Storage::Cuda(c) => Ok((c.try_clone(l)?, shape.clone())),
        _ => candle_core::bail!("a custom op's CUDA forward produced a tensor off the GPU"),
    }
}

/// What a custom op with a tensor-level forward runs on either device.
pub(super) trait TensorOp {
    fn name(&self) -> &'static str;
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}

pub(super) fn cpu_fwd<T: TensorOp + ?Sized>(
    op: &T,
    storage: &CpuStorage,
    layout: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    on_cpu(&[(storage, layout)], |x| op.forward(&x[0]))
}

/// Runs the tensor-level forward `f` of a custom op on its CPU inputs (each copied into a
/// tensor: candle lends a custom op its inputs' storage only).
pub(super) fn on_cpu(
    ins: &[(&CpuStorage, &Layout)],
    f: impl FnOnce(&[Tensor]) -> candle_core::Result<Tensor>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let ts = ins
        .iter()
        .map(|(s, l)| wrap(Storage::Cpu((*s).clone()), l))
        .collect::<candle_core::Result<Vec<_>>>()?;
    unwrap_cpu(f(&ts)?)
}

#[cfg(feature = "cuda")]
pub(super) fn cuda_fwd<T: TensorOp + ?Sized>(
    op: &T,
    storage: &candle_core::CudaStorage,
    layout: &Layout,
) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    on_cuda(&[(storage, layout)], |x| op.forward(&x[0]))
}

/// [`on_cpu`] on a GPU.
#[cfg(feature = "cuda")]
pub(super) fn on_cuda(
    ins: &[(&candle_core::CudaStorage, &Layout)],
    f: impl FnOnce(&[Tensor]) -> candle_core::Result<Tensor>,
) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    // `try_clone` copies the whole buffer; `wrap` takes the layout's window of it.
    let ts = ins
        .iter()
        .map(|(s, l)| wrap(Storage::Cuda(s.try_clone(l)?), l))
        .collect::<candle_core::Result<Vec<_>>>()?;
    unwrap_cuda(f(&ts)?)
}

/// Implements `CustomOp1`'s forwards for a [`TensorOp`].
macro_rules! tensor_op_forwards {
    () => {
        fn name(&self) -> &'static str {
            TensorOp::name(self)
        }
        fn cpu_fwd(
            &self,
            storage: &CpuStorage,
            layout: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            cpu_fwd(self, storage, layout)
        }
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            storage: &candle_core::CudaStorage,
            layout: &Layout,
        ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
            cuda_fwd(self, storage, layout)
        }
    };
}

impl TensorOp for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.apply(x)
    }
}

impl CustomOp1 for Frozen {
    tensor_op_forwards!();
    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.0.back(grad)?))
    }
}

/// The weighted cross-entropy `-Σ wᵢ log softmax(hᵢ Wᵀ)[tᵢ]` of final hidden states `h`
/// `[n, hidden]` through the frozen output head, computed `chunk` rows at a time, as a custom op
/// whose gradient is `∂/∂logitsᵢ = wᵢ (pᵢ − onehot(tᵢ))`, then `· W`. Only one chunk's logits
/// exist at a time: unfused, Llama-3's 128k-vocabulary logits of 4 × 512 positions are 1 GB in
/// f32, and log-softmax and its backward keep several of them. A loss that will be
/// differentiated ([`HeadLoss::grad_ahead`]) computes the gradient of `h` in the forward, from
/// the chunk's logits at hand, and keeps it (`[n, hidden]`, small) for the backward, which only
/// scales it by the upstream gradient; otherwise the backward recomputes each chunk's logits.
pub(super) struct HeadLoss {
    pub head: Base,
    /// `[n, 1]` u32.
    pub targets: Tensor,
    /// `[n]` f32.
    pub weights: Tensor,
    pub chunk: usize,
    /// The fused cross-entropy kernels ([`super::fused::cross_entropy`]) instead of the
    /// composite form.
    pub fused: bool,
    /// Compute the gradient during the forward (one head product per chunk instead of two).
    pub grad_ahead: bool,
    /// The gradient of `h` for an upstream gradient of 1, computed ahead.
    ahead: std::sync::Mutex<Option<Tensor>>,
}

impl HeadLoss {
    pub fn new(
        head: Base,
        targets: Tensor,
        weights: Tensor,
        chunk: usize,
        fused: bool,
        grad_ahead: bool,
    ) -> HeadLoss {
        HeadLoss {
            head,
            targets,
            weights,
            chunk,
            fused,
            grad_ahead,
            ahead: std::sync::Mutex::new(None),
        }
    }

    /// Rows per chunk for a vocabulary of `vocab`: about 256 MB of f32 logits.
    pub fn rows_per_chunk(vocab: usize) -> usize {
        ((64 << 20) / vocab.max(1)).max(1)
    }

    fn chunks(&self, n: usize) -> impl Iterator<Item = (usize, usize)> + use<> {
        let c = self.chunk.max(1);
        (0..n.div_ceil(c)).map(move |k| (k * c, c.min(n - k * c)))
    }

    /// The loss of the chunk of rows `s .. s + l` with its `logits` (as the head gives them).
    fn chunk_loss(&self, logits: &Tensor, s: usize, l: usize) -> candle_core::Result<Tensor> {
        let (t, w) = (self.targets.narrow(0, s, l)?, self.weights.narrow(0, s, l)?);
        if self.fused {
            return super::fused::cross_entropy(logits, &t, &w)?.sum_all();
        }
        let logits = logits.to_dtype(DType::F32)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let picked = shifted.gather(&t, 1)?.sub(&lse)?.squeeze(1)?;
        picked.mul(&w)?.sum_all()?.neg()
    }

    /// The gradient of the chunk's loss, times `g` (`[1]` f32), with respect to its rows of `h`.
    fn chunk_grad(
        &self,
        logits: &Tensor,
        s: usize,
        l: usize,
        g: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let t = self.targets.narrow(0, s, l)?;
        let wg = self.weights.narrow(0, s, l)?.broadcast_mul(g)?;
        let d = if self.fused {
            super::fused::cross_entropy_back(logits, &t, &wg)?
        } else {
            let p = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
            let wg = wg.unsqueeze(1)?;
            // wᵢ pᵢ, minus wᵢ at the target.
            p.broadcast_mul(&wg)?
                .scatter_add(&t, &wg.neg()?, 1)?
                .to_dtype(logits.dtype())?
        };
        self.head.back(&d)
    }
}

impl TensorOp for HeadLoss {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }
    fn forward(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let mut total = Tensor::zeros((), DType::F32, h.device())?;
        let one = Tensor::ones(1, DType::F32, h.device())?;
        let mut grads = vec![];
        for (s, l) in self.chunks(h.dim(0)?) {
            let logits = self.head.apply(&h.narrow(0, s, l)?)?;
            total = (total + self.chunk_loss(&logits, s, l)?)?;
            if self.grad_ahead {
                grads.push(self.chunk_grad(&logits, s, l, &one)?);
            }
        }
        if self.grad_ahead {
            let dh = Tensor::cat(&grads, 0)?;
            *self.ahead.lock().unwrap_or_else(|e| e.into_inner()) = Some(dh);
        }
        Ok(total)
    }
}

impl CustomOp1 for HeadLoss {
    tensor_op_forwards!();
    fn bwd(&self, h: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad.to_dtype(DType::F32)?.reshape(1)?;
        let ahead = self.ahead.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(dh) = ahead {
            return Ok(Some(dh.broadcast_mul(&g.to_dtype(dh.dtype())?)?));
        }
        let mut parts = vec![];
        for (s, l) in self.chunks(h.dim(0)?) {
            let logits = self.head.apply(&h.narrow(0, s, l)?)?;
            parts.push(self.chunk_grad(&logits, s, l, &g)?);
        }
        Ok(Some(Tensor::cat(&parts, 0)?))
    }
}

/// `x · m` for `x` `[…, k]` and `m` `[k, n]` as one 2-d matmul over all leading positions.
pub(super) fn rows_matmul(x: &Tensor, m: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let k = dims[dims.len() - 1];
    let rows = x.elem_count() / k.max(1);
    let mut out = dims.to_vec();
    *out.last_mut().expect("a matrix has dimensions") = m.dim(1)?;
    x.reshape((rows, k))?.matmul(m)?.reshape(out)
}

impl Base {
    /// `x · Wᵀ` without autograd (the op's forward).
    pub(super) fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Base::Dense(wt) => rows_matmul(x, wt),
            // candle's quantized matmul takes f32 activations.
            Base::Quant(q) if x.dtype() == DType::F32 => QMatMul::QTensor(q.clone()).forward(x),
            Base::Quant(q) => rows_matmul(x, &q.dequantize(x.device())?.to_dtype(x.dtype())?.t()?),
            Base::Nf4(q) => rows_matmul(x, &q.dequantize(x.dtype())?.t()?),
        }
    }
    /// `grad · W`: the gradient of `x · Wᵀ` with respect to `x` (a 4-bit `W` dequantized for it).
    pub(super) fn back(&self, grad: &Tensor) -> candle_core::Result<Tensor> {
        let w = match self {
            Base::Dense(wt) => wt.t()?,
            Base::Quant(q) => q.dequantize(grad.device())?.to_dtype(grad.dtype())?,
            Base::Nf4(q) => q.dequantize(grad.dtype())?,
        };
        rows_matmul(grad, &w)
    }
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1(Frozen(self.clone()))?)
    }
    pub(super) fn bytes(&self) -> u64 {
        match self {
            Base::Dense(t) => (t.elem_count() * t.dtype().size_in_bytes()) as u64,
            Base::Quant(q) => q.storage_size_in_bytes() as u64,
            Base::Nf4(q) => q.bytes(),
        }
    }
    /// `(in, out)`.
    pub(super) fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Base::Dense(wt) => wt.dims2()?,
            Base::Quant(q) => {
                let (o, i) = q.shape().dims2()?;
                (i, o)
            }
            Base::Nf4(q) => (q.cols, q.rows),
        })
    }
    /// `W` `[out, in]` f32 on the CPU, as the pass sees it.
    pub(super) fn weight(&self) -> Result<Tensor> {
        Ok(match self {
            Base::Dense(wt) => wt.t()?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            Base::Quant(q) => q.dequantize(&Device::Cpu)?,
            Base::Nf4(q) => q.dequantize(DType::F32)?.to_device(&Device::Cpu)?,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked op gives the unfused loss and the same gradient of `h`, whatever the chunk,
    /// fused or composite, with the gradient computed ahead or in the backward.
    #[test]
    fn the_chunked_head_loss_equals_the_unfused_one_in_value_and_gradient() {
        let dev = Device::Cpu;
        let (n, hidden, vocab) = (7, 12, 50);
        let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, hidden), &dev).unwrap()).unwrap();
        let wt = Tensor::randn(0f32, 0.5, (hidden, vocab), &dev).unwrap();
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 13 + 5) % vocab as u32).collect();
        let targets = Tensor::from_vec(t, (n, 1), &dev).unwrap();
        let w: Vec<f32> = (0..n).map(|i| 0.1 + 0.05 * i as f32).collect();
        let weights = Tensor::from_vec(w, n, &dev).unwrap();
        let unfused = (log_softmax(&h.as_tensor().matmul(&wt).unwrap())
            .unwrap()
            .gather(&targets, 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .mul(&weights)
            .unwrap()
            .sum_all()
            .unwrap()
            * -1.0)
            .unwrap();
        let want_grad = unfused
            .backward()
            .unwrap()
            .get(h.as_tensor())
            .unwrap()
            .clone();
        let want = unfused.to_scalar::<f32>().unwrap();
        let ways = [(false, false), (false, true), (true, false), (true, true)];
        for (chunk, (fused, grad_ahead)) in [1, 3, 7, 100]
            .into_iter()
            .flat_map(|c| ways.map(|w| (c, w)))
        {
            let op = HeadLoss::new(
                Base::Dense(Arc::new(wt.clone())),
                targets.clone(),
                weights.clone(),
                chunk,
                fused,
                grad_ahead,
            );
            let loss = h.as_tensor().apply_op1(op).unwrap();
            let got = loss.to_scalar::<f32>().unwrap();
            let chunk = format!("chunk {chunk}, fused {fused}, gradient ahead {grad_ahead}");
            assert!((got - want).abs() < 1e-5, "{chunk}: {got} vs {want}");
            let grad = loss.backward().unwrap().get(h.as_tensor()).unwrap().clone();
            let diff = (grad - &want_grad)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "{chunk}: gradients differ by {diff}");
        }
    }
}
