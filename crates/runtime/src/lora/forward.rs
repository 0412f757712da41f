//! The batched trainable pass: a right-padded micro-batch as one `[rows, len]` tensor, the
//! blocks one after another ([`Trainable::layer`]), the loss over the answer tokens only, and the
//! backward with or without gradient checkpointing.
//!
//! Padding, not packing: a row's padding sits after its last token, so the causal mask alone
//! keeps every real position from seeing it, RoPE positions start at 0 in every row, and pad
//! positions are simply left out of the loss. Length-bucketed batches ([`super::train`]) keep the
//! padding small; packing would need a per-sequence block-diagonal mask for the same result.

use super::*;
use candle_core::backprop::GradStore;

/// A right-padded micro-batch, ready for the pass.
pub struct Batch {
    pub rows: usize,
    /// Padded length.
    pub len: usize,
    /// `rows × len` ids, padding with id 0.
    ids: Vec<u32>,
    /// Flat positions (`row · len + i`) whose logits predict a loss token, `[n]` u32.
    positions: Tensor,
    /// The tokens they predict, `[n, 1]` u32.
    targets: Tensor,
    /// Each position's weight in the loss, `[n]` f32.
    weights: Tensor,
    /// Tokens forwarded, padding excluded.
    pub tokens: usize,
}

/// What every block of one pass shares.
struct Pass {
    rows: usize,
    len: usize,
    train: bool,
    /// Dropout stream of the pass; each block derives its own from it, so that a recomputed
    /// block (checkpointing) draws the same masks.
    seed: u64,
    rope: (Tensor, Tensor),
    local_rope: Option<(Tensor, Tensor)>,
}

/// A block's dropout masks, in the order its adapters draw them.
enum Draws {
    /// No dropout (inference, or p = 0).
    None,
    /// Without the fused kernels (an f16 pass, or bf16 on the CPU): uniform draws for every
    /// mask of the block, and how many are used.
    Uniform(Tensor, usize),
    /// With them: each mask is drawn inside the fused kernel from its own counter-based stream
    /// (`fused::keep`): the block's seed and the mask's number.
    Hashed(u64, u64),
}

/// An adapter input's dropout.
enum Drop {
    None,
    /// f32, kept entries scaled by 1/(1-p).
    Mask(Tensor),
    /// The fused kernel's stream.
    Stream(u64),
}

impl Draws {
    /// The next mask, for an input of `shape`.
    fn next(&mut self, shape: &Shape, p: f64) -> Result<Drop> {
        Ok(match self {
            Draws::None => Drop::None,
            Draws::Uniform(u, used) => {
                let n = shape.elem_count();
                let keep = u.narrow(0, *used, n)?.reshape(shape)?.ge(p)?;
                *used += n;
                Drop::Mask((keep.to_dtype(DType::F32)? * (1.0 / (1.0 - p)))?)
            }
            Draws::Hashed(seed, k) => {
                *k += 1;
                Drop::Stream(splitmix(*seed ^ *k))
            }
        })
    }
}

impl Trainable {
    /// A micro-batch of `examples`; each row's loss is the mean over its answer tokens, scaled
    /// by `scale` (1 / the sequences of the optimizer step, so the step's loss is the mean of
    /// its sequences' losses).
    pub fn batch(&self, examples: &[&Example], scale: f64) -> Result<Batch> {
        let len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        if examples.is_empty() || len == 0 {
            bail!("an empty training batch");
        }
        if len > self.cfg.context {
            bail!(
                "sequence of {len} tokens exceeds the model's context of {}",
                self.cfg.context
            );
        }
        let (mut ids, mut positions, mut targets, mut weights) = (vec![], vec![], vec![], vec![]);
        let mut tokens = 0;
        for (r, ex) in examples.iter().enumerate() {
            let n = ex.ids.len().saturating_sub(ex.answer_from);
            if ex.answer_from == 0 || n == 0 {
                bail!("a training example needs a prompt and at least one answer token");
            }
            if let Some(id) = ex.ids.iter().find(|&&id| id as usize >= self.cfg.vocab) {
                bail!("token id {id} is outside the vocabulary");
            }
            tokens += ex.ids.len();
            ids.extend(&ex.ids);
            ids.resize((r + 1) * len, 0);
            // Position i - 1 predicts token i.
            for i in ex.answer_from..ex.ids.len() {
                positions.push((r * len + i - 1) as u32);
                targets.push(ex.ids[i]);
                weights.push((scale / n as f64) as f32);
            }
        }
        let n = positions.len();
        let dev = &self.device;
        Ok(Batch {
            rows: examples.len(),
            len,
            ids,
            positions: Tensor::from_vec(positions, n, dev)?,
            targets: Tensor::from_vec(targets, (n, 1), dev)?,
            weights: Tensor::from_vec(weights, n, dev)?,
            tokens,
        })
    }

    fn pass(&self, rows: usize, len: usize, train: bool, seed: u64) -> Result<Pass> {
        let narrow = |(cos, sin): &(Tensor, Tensor)| -> Result<(Tensor, Tensor)> {
            Ok((cos.narrow(0, 0, len)?, sin.narrow(0, 0, len)?))
        };
        Ok(Pass {
            rows,
            len,
            train,
            seed,
            rope: narrow(&(self.cos.clone(), self.sin.clone()))?,
            local_rope: self.local_rope.as_ref().map(narrow).transpose()?,
        })
    }

    /// `[rows, len, hidden]` in the pass's dtype.
    fn embed(&self, ids: &[u32], rows: usize, len: usize) -> Result<Tensor> {
        let x = match &self.embed {
            Embed::Host(e) => e.lookup(ids)?.to_device(&self.device)?,
            Embed::Device(t) => {
                t.index_select(&Tensor::from_slice(ids, ids.len(), &self.device)?, 0)?
            }
        };
        let mut x = x.reshape((rows, len, self.cfg.hidden))?;
        if self.cfg.gemma.is_some() {
            x = (x * (self.cfg.hidden as f64).sqrt())?;
        }
        Ok(x.to_dtype(self.dtype)?)
    }

    /// The dropout draws of block `i` (training with dropout only), from the block's own
    /// stream, so that a recomputed block (checkpointing) gets the same masks. With the fused
    /// kernels nothing is drawn ahead: the kernel hashes each element's index (on a GPU, cuRAND's
    /// re-seeding, once per block, cost 14 ms of a 0.48 s Llama-3.2-1B step on an H200, and its
    /// masks 5 more kernels per adapter; on the CPU the draws and masks were ~4 GB of a
    /// SmolLM2-135M step at 4 × 256). Without them, one uniform number per adapter input element
    /// of the block, drawn at once.
    fn block_draws(&self, i: usize, pass: &Pass) -> Result<Draws> {
        if !pass.train || self.lora.dropout <= 0.0 {
            return Ok(Draws::None);
        }
        let seed = splitmix(pass.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if fused::takes(&self.device, self.dtype) {
            return Ok(Draws::Hashed(seed, 0));
        }
        let mut per_token = 0;
        for p in self.layers[i].proj.iter().filter(|p| p.lora.is_some()) {
            per_token += p.base.dims()?.0;
        }
        let n = per_token * pass.rows * pass.len;
        let u = if self.device.is_cpu() {
            let mut s = seed;
            let u: Vec<f32> = (0..n)
                .map(|_| {
                    s = splitmix(s);
                    ((s >> 11) as f64 / (1u64 << 53) as f64) as f32
                })
                .collect();
            Tensor::from_vec(u, n, &self.device)?
        } else {
            // A GPU without the fused kernels (an f16 pass).
            self.device.set_seed(seed)?;
            Tensor::rand(0f32, 1f32, n, &self.device)?
        };
        Ok(Draws::Uniform(u, 0))
    }

    /// `x` through projection `p` and its adapter: one [`adapted::Adapted`] op where it applies
    /// ([`adapted::applies`]), else the composite form (the frozen product, the masked input, the two
    /// adapter products, the scaled sum).
    fn project(&self, p: &Proj, x: &Tensor, draws: &mut Draws) -> Result<Tensor> {
        let Some((a, b)) = &p.lora else {
            return p.base.forward(x);
        };
        let (a, b) = (a.as_tensor(), b.as_tensor());
        let drop = draws.next(x.shape(), self.lora.dropout)?;
        let stream = match drop {
            Drop::None => Some(None),
            Drop::Stream(seed) => Some(Some((seed, self.lora.dropout))),
            Drop::Mask(_) => None,
        };
        if let Some(dropout) = stream.filter(|_| adapted::applies(x)) {
            let op = adapted::Adapted {
                base: p.base.clone(),
                scale: self.lora.scale(),
                dropout,
            };
            return op.forward(x, a, b);
        }
        let y = p.base.forward(x)?;
        // Adapters in f32 (as PEFT keeps them under a 16-bit base).
        let xf = match drop {
            Drop::None => x.to_dtype(DType::F32)?,
            Drop::Mask(mask) => (x.to_dtype(DType::F32)? * mask)?,
            Drop::Stream(seed) => fused::dropout(x, seed, self.lora.dropout)?,
        };
        let delta = frozen::rows_matmul(&xf, &a.t()?)?;
        let delta = frozen::rows_matmul(&delta, &b.t()?)?;
        add_scaled(&y, &delta, self.lora.scale())
    }

    /// Block `i` on `x` `[rows, len, hidden]`.
    fn layer(&self, i: usize, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let c = &self.cfg;
        let l = &self.layers[i];
        let (b, t) = (pass.rows, pass.len);
        let mut draws = self.block_draws(i, pass)?;
        let window = c.window(i);
        let (cos, sin) = match (&pass.local_rope, window) {
            (Some(r), Some(_)) => r,
            _ => &pass.rope,
        };
        let h = rms_norm(x, &l.attn_norm, c.eps)?;
        let mut q = self.project(&l.proj[0], &h, &mut draws)?;
        let mut k = self.project(&l.proj[1], &h, &mut draws)?;
        let mut v = self.project(&l.proj[2], &h, &mut draws)?;
        if let Some([bq, bk, bv]) = &l.bias {
            q = q.broadcast_add(&bq.to_dtype(self.dtype)?)?;
            k = k.broadcast_add(&bk.to_dtype(self.dtype)?)?;
            v = v.broadcast_add(&bv.to_dtype(self.dtype)?)?;
        }
        // `[b, t, n·d]` → `[b, t, n, d]`, normed per head (Gemma 3's q / k norms).
        let heads = |x: Tensor, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let x = x.reshape((b, t, n, c.head_dim))?;
            match norm {
                Some(w) => rms_norm(&x, w, c.eps),
                None => Ok(x),
            }
        };
        let (qn, kn) = match &l.extra {
            Some([qn, kn, _, _]) => (Some(qn), Some(kn)),
            None => (None, None),
        };
        let interleaved = !c.neox_rope();
        // `[b, n, t, d]`.
        let q = rope_heads(&heads(q, c.n_head, qn)?, cos, sin, interleaved)?;
        let k = rope_heads(&heads(k, c.n_kv_head, kn)?, cos, sin, interleaved)?;
        let v = heads(v, c.n_kv_head, None)?.transpose(1, 2)?.contiguous()?;
        // Grouped-query attention without copies of k and v: the `rep` query heads of a kv
        // head are adjacent, so q as `[b, kv, rep · t, d]` meets that head's k and v in one
        // batched product, and the scores are `[b, n, t, t]` in memory.
        let (kv, rep) = (c.n_kv_head, c.n_head / c.n_kv_head);
        let q = q.reshape((b, kv, rep * t, c.head_dim))?;
        // Scores softmaxed in f32, whatever the pass's dtype.
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let scores = q.matmul(&k.t()?)?.reshape((b, c.n_head, t, t))?;
        let y = attention_softmax(&scores, scale, window)?
            .reshape((b, kv, rep * t, t))?
            .matmul(&v)?
            .reshape((b, c.n_head, t, c.head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, c.q_dim()))?;
        let mut y = self.project(&l.proj[3], &y, &mut draws)?;
        if let Some([_, _, post_attn, _]) = &l.extra {
            y = rms_norm(&y, post_attn, c.eps)?;
        }
        let x = (x + y)?;
        let h = rms_norm(&x, &l.ffn_norm, c.eps)?;
        let gate = self.project(&l.proj[4], &h, &mut draws)?;
        let up = self.project(&l.proj[5], &h, &mut draws)?;
        let act = if c.gemma.is_some() {
            (gate.gelu()? * up)?
        } else {
            swiglu(&gate, &up)?
        };
        let mut y = self.project(&l.proj[6], &act, &mut draws)?;
        if let Some([_, _, _, post_ffw]) = &l.extra {
            y = rms_norm(&y, post_ffw, c.eps)?;
        }
        Ok((x + y)?)
    }

    /// The weighted answer-token cross-entropy from the last block's output `x`: only the
    /// positions in the loss go through the final norm and the output head ([`HeadLoss`]);
    /// `grad_ahead` for a loss that will be differentiated.
    fn head_loss(&self, x: &Tensor, b: &Batch, grad_ahead: bool) -> Result<Tensor> {
        let h = x
            .reshape((b.rows * b.len, self.cfg.hidden))?
            .index_select(&b.positions, 0)?;
        let h = rms_norm(&h, &self.norm, self.cfg.eps)?;
        let op = HeadLoss::new(
            self.head.clone(),
            b.targets.clone(),
            b.weights.clone(),
            self.head_chunk,
            fused::applies(&h),
            // On the CPU for now: see `adapted::applies` (the same holds for this change).
            grad_ahead && h.device().is_cpu(),
        );
        Ok(h.contiguous()?.apply_op1(op)?)
    }

    /// The batch's loss with the whole graph kept for backward; `seed` drives dropout.
    pub fn batch_loss(&self, b: &Batch, train: bool, seed: u64) -> Result<Tensor> {
        self.pass_loss(b, train, seed, false)
    }

    fn pass_loss(&self, b: &Batch, train: bool, seed: u64, grad_ahead: bool) -> Result<Tensor> {
        let pass = self.pass(b.rows, b.len, train, seed)?;
        let mut x = self.embed(&b.ids, b.rows, b.len)?;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, &pass)?;
        }
        self.head_loss(&x, b, grad_ahead)
    }

    /// The batch's loss and the gradients of the adapters (training mode). With
    /// `checkpointing`, only each block's input is kept through the forward; the backward
    /// recomputes one block at a time (with the same dropout masks) and backpropagates the
    /// gradient arriving at its output through it — one block's activations at a time instead
    /// of all of them, for one more forward.
    pub fn loss_and_grads(
        &self,
        b: &Batch,
        seed: u64,
        checkpointing: bool,
        prof: &mut Profiler,
    ) -> Result<(f64, GradStore)> {
        if !checkpointing {
            let loss = self.pass_loss(b, true, seed, true)?;
            let value = loss.to_scalar::<f32>()? as f64;
            prof.mark("forward")?;
            let grads = loss.backward()?;
            prof.mark("backward")?;
            return Ok((value, grads));
        }
        let pass = self.pass(b.rows, b.len, true, seed)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = self.embed(&b.ids, b.rows, b.len)?;
        prof.mark("embed")?;
        for i in 0..self.layers.len() {
            let y = self.layer(i, &x, &pass)?.detach();
            inputs.push(x);
            x = y;
        }
        prof.mark("forward")?;
        let top = Var::from_tensor(&x)?;
        let loss = self.head_loss(top.as_tensor(), b, true)?;
        let value = loss.to_scalar::<f32>()? as f64;
        let mut grads = loss.backward()?;
        prof.mark("head loss and its backward")?;
        let Some(mut g) = grads.remove(top.as_tensor()) else {
            bail!("checkpointing: no gradient reached the last block");
        };
        for i in (0..self.layers.len()).rev() {
            // The first block's input is the embedding: nothing upstream needs its gradient.
            let input = if i == 0 {
                None
            } else {
                Some(Var::from_tensor(&inputs[i])?)
            };
            let x = input.as_ref().map_or(&inputs[0], |v| v.as_tensor());
            let y = self.layer(i, x, &pass)?;
            prof.mark("recompute")?;
            // d(Σ y ⊙ g)/dy = g: backpropagates g through the recomputed block.
            let local = (y * &g)?.sum_all()?.backward()?;
            prof.mark("backward")?;
            for (a, b) in self.layers[i].proj.iter().filter_map(|p| p.lora.as_ref()) {
                for v in [a, b] {
                    if let Some(gv) = local.get(v.as_tensor()) {
                        grads.insert(v.as_tensor(), gv.clone());
                    }
                }
            }
            if let Some(input) = &input {
                match local.get(input.as_tensor()) {
                    Some(gi) => g = gi.clone(),
                    None => bail!("checkpointing: no gradient reached block {i}'s input"),
                }
            }
        }
        Ok((value, grads))
    }

    /// Final normalised hidden states `[t, hidden]` of one sequence (no KV cache).
    pub fn hidden(&self, ids: &[u32], train: bool) -> Result<Tensor> {
        let t = ids.len();
        if t > self.cfg.context {
            bail!(
                "sequence of {t} tokens exceeds the model's context of {}",
                self.cfg.context
            );
        }
        let pass = self.pass(1, t, train, self.lora.seed)?;
        let mut x = self.embed(ids, 1, t)?;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, &pass)?;
        }
        rms_norm(&x.squeeze(0)?, &self.norm, self.cfg.eps)
    }

    /// Logits `[t, vocab]` f32 (inference mode: no dropout).
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(self
            .head
            .forward(&self.hidden(ids, false)?)?
            .to_dtype(DType::F32)?)
    }

    /// Mean cross-entropy of one example's answer tokens (positions `answer_from..`).
    pub fn loss(&self, ex: &Example, train: bool) -> Result<Tensor> {
        self.batch_loss(&self.batch(&[ex], 1.0)?, train, self.lora.seed)
    }
}
