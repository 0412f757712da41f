//! The differentiable operations the trainable forward is written with (candle's fused ones
//! record no gradient): RMS norm, softmax with a detached max, log-softmax, RoPE by narrow/cat.

use super::*;

/// RMS norm computed in f32 (as Hugging Face's), returned in `x`'s dtype; `w` is f32.
pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?
        .broadcast_mul(w)?
        .to_dtype(dtype)?)
}

/// Softmax over the last dimension from differentiable operations (max detached).
pub(super) fn softmax(x: &Tensor) -> Result<Tensor> {
    let e = x
        .broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?
        .exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

pub(super) fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// RoPE on `[…, t, head_dim]` with `cos`/`sin` `[t, head_dim/2]` (in `x`'s dtype): interleaved
/// pairs (llama, whose q/k rows are permuted at conversion) or halves (qwen2).
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
