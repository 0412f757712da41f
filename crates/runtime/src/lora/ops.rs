//! The differentiable operations the trainable forward is written with (candle's fused ones
//! record no gradient): RMS norm, log-softmax with a detached max, RoPE by narrow/cat;
//! and the attention softmax as one custom op (forward fused, backward by its formula).

use super::*;

/// RMS norm computed in f32 (as Hugging Face's), returned in `x`'s dtype; `w` is f32. One fused
/// kernel on a GPU.
pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::on_gpu(x) {
        return fused::rms_norm(x, w, eps);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?
        .broadcast_mul(w)?
        .to_dtype(dtype)?)
}

/// Attention probabilities `softmax(x · scale + mask)` over the last dimension of scores
/// `[rows, heads, t, t]`, the mask causal (a sliding `window` also hides keys `window` or more
/// behind), as one op whose graph keeps only its output. On a GPU one fused kernel each way, the
/// mask applied inside; on the CPU the forward is in f32 through candle's fused softmax with the
/// mask added ([`causal_mask`]), returned in `x`'s dtype, and the backward
/// `scale · y ⊙ (g − Σ g ⊙ y)` in f32. Written with the differentiable operations instead, the
/// scores' f32 copy, the masked and shifted scores and their exponentials were all kept for the
/// backward — 5 f32 tensors of `[rows, heads, t, t]` per block.
pub(super) fn attention_softmax(x: &Tensor, scale: f64, window: Option<usize>) -> Result<Tensor> {
    let t = x.dim(D::Minus1)?;
    if fused::on_gpu(x) {
        return fused::softmax_causal(x, t, window, scale);
    }
    Ok(x.contiguous()?.apply_op1(AttentionSoftmax {
        scale,
        mask: causal_mask(t, window, x.device())?,
    })?)
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

/// RoPE on heads `x` `[b, t, h, head_dim]`, returned transposed to `[b, h, t, head_dim]`, with
/// `cos`/`sin` `[t, head_dim/2]` f32: interleaved pairs (llama, whose q/k rows are permuted at
/// conversion) or halves (qwen2). One fused kernel each way on a GPU.
pub(super) fn rope_heads(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    interleaved: bool,
) -> Result<Tensor> {
    if fused::on_gpu(x) {
        return fused::rope_heads(x, cos, sin, interleaved);
    }
    let x = x.transpose(1, 2)?.contiguous()?;
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    rope(&x, &cos, &sin, interleaved)
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
