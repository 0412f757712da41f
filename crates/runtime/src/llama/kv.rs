//! [`KvCache`]: per layer either candle's buffers (doubling on the CPU, `cat` on a GPU), the
//! fixed buffers of `decode.rs` for decode steps on a GPU, or our CPU pass's own cache.

use super::*;

/// Keys and values of the positions seen so far, per layer.
pub struct KvCache {
    /// Candle's pass: per layer, K and V `[batch, kv heads, positions, head size]`. On the CPU,
    /// buffers whose first `len` positions are filled and whose capacity doubles when full, so a
    /// decode step writes its own position instead of copying the whole cache; on a GPU, exactly
    /// `len` positions, extended with `cat` (see [`cache_append`]) — until decode steps move
    /// them into `fixed`.
    pub(super) layers: Vec<Option<(Tensor, Tensor)>>,
    /// The cache of the CPU forward pass ([`cpu::forward`]), used instead of `layers`.
    pub(super) cpu: cpu::forward::Cache,
    /// Candle's pass, once decoding over fixed buffers ([`decode`]): the cache is there, not in
    /// `layers`.
    pub(super) fixed: Option<decode::Fixed>,
    /// How decode steps run; `None`: the device's default ([`Decode::default_for`]).
    pub(super) decode: Option<Decode>,
    /// Where `fixed` goes back to when the cache is dropped: the model's pool.
    pub(super) pool: Option<decode::Pool>,
    pub len: usize,
    /// Left padding of each batch row: keys before it are never attended to.
    pub(super) pads: Vec<usize>,
}

impl KvCache {
    pub fn new(n_layer: usize) -> KvCache {
        KvCache::with_padding(n_layer, vec![])
    }

    /// A cache for a batch whose rows are left-padded by `pads[row]` positions (prompts of
    /// different lengths). Relative positions inside each row are unchanged, so RoPE is exact.
    pub fn with_padding(n_layer: usize, pads: Vec<usize>) -> KvCache {
        KvCache {
            layers: vec![None; n_layer],
            cpu: cpu::forward::Cache::default(),
            fixed: None,
            decode: None,
            pool: None,
            len: 0,
            pads,
        }
    }

    /// Hands fixed decode buffers (see `fixed`) back to the model's pool.
    pub(super) fn release_fixed(&mut self) {
        if let (Some(f), Some(pool)) = (self.fixed.take(), &self.pool) {
            pool.put(f);
        }
    }

    /// Forgets the positions from `len` on, as if only the first `len` had been seen (a
    /// continuation scored after a prompt, then generation from the prompt).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        if self.fixed.is_some() {
            bail!("a cache in fixed decode buffers cannot be cut back");
        }
        self.cpu.truncate(self.len, len);
        for (k, v) in self.layers.iter_mut().flatten() {
            // CPU buffers are read up to `len` only; a GPU cache is exactly its positions.
            if !k.device().is_cpu() {
                *k = k.narrow(2, 0, len)?;
                *v = v.narrow(2, 0, len)?;
            }
        }
        self.len = len;
        Ok(())
    }

    /// The cache with decode steps of candle's pass run as `mode` says, whatever the device.
    pub fn with_decode(mut self, mode: Decode) -> KvCache {
        self.decode = Some(mode);
        self
    }
}

impl Drop for KvCache {
    fn drop(&mut self) {
        self.release_fixed();
    }
}

/// Appends `k`, `v` (`[b, kv, t, d]`, contiguous) at positions `pos..pos + t` of a layer's cache
/// and returns its first `pos + t` positions: on the CPU written into the layer's buffer (grown
/// when full) and returned as views, no copy; on a GPU by `cat`.
pub(super) fn cache_append(
    slot: &mut Option<(Tensor, Tensor)>,
    k: &Tensor,
    v: &Tensor,
    pos: usize,
) -> Result<(Tensor, Tensor)> {
    if !k.device().is_cpu() {
        // On a GPU the cache is one tensor extended with `cat`: candle's CUDA matmul is only
        // relied on with contiguous operands here, and a buffer's filled part would have to be
        // copied contiguous every step anyway (docs/gpu.md, "Design notes").
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, k], 2)?, Tensor::cat(&[&pv, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        *slot = Some((k.clone(), v.clone()));
        return Ok((k, v));
    }
    let (b, kv, t, d) = k.dims4()?;
    let total = pos + t;
    let cap = slot.as_ref().map_or(0, |(k, _)| k.dim(2).unwrap_or(0));
    if total > cap {
        let cap = total.next_power_of_two().max(64);
        let grow = |old: Option<&Tensor>| -> Result<Tensor> {
            let buf = Tensor::zeros((b, kv, cap, d), k.dtype(), k.device())?;
            if let Some(old) = old.filter(|_| pos > 0) {
                buf.slice_set(&old.narrow(2, 0, pos)?.contiguous()?, 2, 0)?;
            }
            Ok(buf)
        };
        let old = slot.take();
        *slot = Some((
            grow(old.as_ref().map(|(k, _)| k))?,
            grow(old.as_ref().map(|(_, v)| v))?,
        ));
    }
    let (kb, vb) = slot.as_ref().expect("allocated above");
    kb.slice_set(k, 2, pos)?;
    vb.slice_set(v, 2, pos)?;
    Ok((kb.narrow(2, 0, total)?, vb.narrow(2, 0, total)?))
}
