//! The trainable pass's elementwise operations: the fused kernels ([`fused`]) where they apply
//! (f32 or bf16 on a GPU, f32 on the CPU), else their composite forms ([`composite`]) written
//! with candle's differentiable operations (candle's own fused rms_norm, softmax and rope record
//! no gradient) — also the reference the fused kernels are tested against.

use super::*;

/// RMS norm computed in f32 (as Hugging Face's), returned in `x`'s dtype; `w` is f32.
pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::applies(x) {
        return fused::rms_norm(x, w, eps);
    }
    composite::rms_norm(x, w, eps)
}

/// Attention probabilities `softmax(x · scale + mask)` over the last dimension of scores
/// `[rows, heads, t, t]`, the mask causal (a sliding `window` also hides keys `window` or more
/// behind), keeping only its output for the backward.
pub(super) fn attention_softmax(x: &Tensor, scale: f64, window: Option<usize>) -> Result<Tensor> {
    if fused::applies(x) {
        return fused::softmax_causal(x, x.dim(D::Minus1)?, window, scale);
    }
    composite::attention_softmax(x, scale, window)
}

/// RoPE on heads `x` `[b, t, h, head_dim]`, returned transposed to `[b, h, t, head_dim]`, with
/// `cos`/`sin` `[t, head_dim/2]` f32: interleaved pairs (llama, whose q/k rows are permuted at
/// conversion) or halves (qwen2).
pub(super) fn rope_heads(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> Result<Tensor> {
    if fused::applies(x) {
        return fused::rope_heads(x, cos, sin, interleaved);
    }
    composite::rope_heads(x, cos, sin, interleaved)
}

/// `silu(gate) ⊙ up`.
pub(super) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused::applies(gate) {
        return fused::swiglu(gate, up);
    }
    Ok((gate.silu()? * up)?)
}

/// The base's output `y` plus `s ·` the adapter's f32 delta `d`, in `y`'s dtype.
pub(super) fn add_scaled(y: &Tensor, d: &Tensor, s: f64) -> Result<Tensor> {
    if fused::applies(y) {
        return Ok(fused::add_scaled(y, d, s)?);
    }
    Ok((y + (d * s)?.to_dtype(y.dtype())?)?)
}

/// The composite forms: candle's differentiable operations.
pub(super) mod composite {
    use super::*;

    /// [`super::rms_norm`].
    pub(in super::super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?
            .broadcast_mul(w)?
            .to_dtype(dtype)?)
    }

    /// [`super::attention_softmax`] as one op whose graph keeps only its output: the forward in
    /// f32 through candle's fused softmax with the mask added ([`causal_mask`]), returned in
    /// `x`'s dtype, and the backward `scale · y ⊙ (g − Σ g ⊙ y)` in f32. Written with the
    /// differentiable operations instead, the scores' f32 copy, the masked and shifted scores and
    /// their exponentials were all kept for the backward — 5 f32 tensors of `[rows, heads, t, t]`
    /// per block.
    pub(in super::super) fn attention_softmax(
        x: &Tensor,
        scale: f64,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let t = x.dim(D::Minus1)?;
        Ok(x.contiguous()?.apply_op1(AttentionSoftmax {
            scale,
            mask: causal_mask(t, window, x.device())?,
        })?)
    }

    /// [`super::rope_heads`].
    pub(in super::super) fn rope_heads(
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        interleaved: bool,
    ) -> Result<Tensor> {
        let x = x.transpose(1, 2)?.contiguous()?;
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        rope(&x, &cos, &sin, interleaved)
    }
}

/// `[t, t]` f32: 0 where query `i` sees key `j` (`j ≤ i`, and `j + window > i` with a window),
/// −∞ elsewhere.
pub(super) fn causal_mask(t: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t * t)
        .map(|k| {
            let (i, j) = (k / t, k % t);
            if j > i || window.is_some_and(|w| j + w <= i) {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(m, (t, t), device)?)
}

struct AttentionSoftmax {
    scale: f64,
    /// `[t, t]` f32, 0 or -inf.
    mask: Tensor,
}

impl TensorOp for AttentionSoftmax {
    fn name(&self) -> &'static str {
        "attention-softmax"
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let z = (x.to_dtype(DType::F32)? * self.scale)?.broadcast_add(&self.mask)?;
        candle_nn::ops::softmax_last_dim(&z)?.to_dtype(x.dtype())
    }
}

impl CustomOp1 for AttentionSoftmax {
    tensor_op_forwards!();
    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (y, g) = (y.to_dtype(DType::F32)?, g.to_dtype(DType::F32)?);
        let gy = (&g * &y)?;
        let dx = (y * g.broadcast_sub(&gy.sum_keepdim(D::Minus1)?)?)?;
        Ok(Some((dx * self.scale)?.to_dtype(x.dtype())?))
    }
}

/// (The loss computes it inside [`super::frozen::HeadLoss`]; the tests hold that op to this.)
#[cfg(test)]
pub(super) fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// RoPE on `[…, t, head_dim]` with `cos`/`sin` `[t, head_dim/2]` (in `x`'s dtype).
pub(super) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let last = dims.len() - 1;
    let d = dims[last];
    if interleaved {
        let mut pairs = dims.clone();
        pairs[last] = d / 2;
        pairs.push(2);
        let x = x.reshape(pairs)?;
        let x0 = x.narrow(last + 1, 0, 1)?.squeeze(last + 1)?;
        let x1 = x.narrow(last + 1, 1, 1)?.squeeze(last + 1)?;
        let a = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let b = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
        Ok(Tensor::stack(&[a, b], last + 1)?.reshape(dims)?)
    } else {
        let x0 = x.narrow(last, 0, d / 2)?;
        let x1 = x.narrow(last, d / 2, d / 2)?;
        let a = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let b = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
        Ok(Tensor::cat(&[a, b], last)?)
    }
}
