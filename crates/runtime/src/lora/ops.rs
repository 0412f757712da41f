//! The differentiable operations the trainable forward is written with (candle's fused ones
//! record no gradient): RMS norm, softmax with a detached max, log-softmax, RoPE by narrow/cat.

use super::*;

pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)?)
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

/// RoPE on `[heads, t, head_dim]` with `cos`/`sin` `[t, head_dim/2]`: interleaved pairs (llama,
/// whose q/k rows are permuted at conversion) or halves (qwen2).
pub(super) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let (h, t, d) = x.dims3()?;
    if interleaved {
        let x = x.reshape((h, t, d / 2, 2))?;
        let x0 = x.narrow(3, 0, 1)?.squeeze(3)?;
        let x1 = x.narrow(3, 1, 1)?.squeeze(3)?;
        let a = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let b = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
        Ok(Tensor::stack(&[a, b], 3)?.reshape((h, t, d))?)
    } else {
        let x0 = x.narrow(2, 0, d / 2)?;
        let x1 = x.narrow(2, d / 2, d / 2)?;
        let a = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
        let b = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
        Ok(Tensor::cat(&[a, b], 2)?)
    }
}
