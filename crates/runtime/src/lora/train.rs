//! The training loop: length-bucketed micro-batches, gradient accumulation, AdamW over the
//! adapters, a NaN check, per-step logs.

use super::*;

/// Optimizer settings of a training run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub lr: f64,
    /// Optimizer steps; [`steps_per_epoch`] of them cover every example once.
    pub steps: usize,
    /// Sequences per micro-batch, forwarded as one tensor.
    pub batch: usize,
    /// Micro-batches per optimizer step (their gradients are summed).
    pub grad_accum: usize,
    /// Keep only each block's input through the forward and recompute blocks in the backward.
    pub checkpointing: bool,
    /// Time the phases of every step ([`StepLog::phases`]), waiting for the device at the end
    /// of each (which costs some speed).
    pub profile: bool,
}

/// Where a step's time goes: each [`Profiler::mark`] waits for the device and adds the time
/// since the previous mark to a phase. Disabled, it does nothing.
pub struct Profiler {
    device: Option<Device>,
    last: std::time::Instant,
    pub phases: Vec<(&'static str, f64)>,
}

impl Profiler {
    pub fn new(device: Option<&Device>) -> Profiler {
        Profiler {
            device: device.cloned(),
            last: std::time::Instant::now(),
            phases: vec![],
        }
    }

    /// Ends phase `name` (a phase marked again accumulates).
    pub fn mark(&mut self, name: &'static str) -> Result<()> {
        let Some(dev) = &self.device else {
            return Ok(());
        };
        dev.synchronize()?;
        let now = std::time::Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        match self.phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += dt,
            None => self.phases.push((name, dt)),
        }
        Ok(())
    }
}

/// One optimizer step.
#[derive(Debug, Clone)]
pub struct StepLog {
    pub step: usize,
    /// Mean of the step's sequences' losses (each the mean over its answer tokens).
    pub loss: f64,
    pub seconds: f64,
    /// Tokens forwarded in the step (prompt and answer, padding excluded).
    pub tokens: usize,
    /// Padded positions forwarded (rows × padded length, summed over micro-batches).
    pub padded: usize,
    /// Seconds per phase, with [`TrainOptions::profile`].
    pub phases: Vec<(&'static str, f64)>,
}

/// The micro-batches of one epoch, as indices into the examples: examples sorted by length
/// (ties by index) and cut into batches of `batch`, so that a batch's rows have similar lengths
/// and little padding; the batches' order is shuffled by `seed` (each epoch its own), so that
/// training does not run from the shortest to the longest.
pub fn schedule(lengths: &[usize], batch: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut batches: Vec<Vec<usize>> = order.chunks(batch.max(1)).map(<[_]>::to_vec).collect();
    let mut s = seed ^ 0x5eed;
    for i in (1..batches.len()).rev() {
        s = splitmix(s);
        batches.swap(i, (s % (i as u64 + 1)) as usize);
    }
    batches
}

/// Optimizer steps in one epoch over `n` examples.
pub fn steps_per_epoch(n: usize, batch: usize, grad_accum: usize) -> usize {
    n.div_ceil(batch.max(1)).div_ceil(grad_accum.max(1))
}

/// AdamW (β 0.9 / 0.999, no weight decay, as PEFT's defaults under the HF Trainer) over the
/// adapters. Step `s` of an epoch takes micro-batches `s·grad_accum …` of that epoch's
/// [`schedule`] (the last step of an epoch may take fewer), so [`steps_per_epoch`] steps see
/// every example exactly once; more steps start further epochs. `on_step` sees every step
/// (progress, cancellation); a NaN or infinite loss stops the run with an error.
pub fn train(
    m: &Trainable,
    examples: &[Example],
    o: &TrainOptions,
    on_step: &mut dyn FnMut(&StepLog) -> Result<()>,
) -> Result<Vec<StepLog>> {
    use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
    if examples.is_empty() {
        bail!("no training examples");
    }
    let vars = m.vars();
    if vars.is_empty() {
        bail!("no adapter targets: nothing to train");
    }
    let params = ParamsAdamW {
        lr: o.lr,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = if fused::applies(vars[0].as_tensor()) {
        Adam::Fused(FusedAdamW::new(vars.clone(), params))
    } else {
        Adam::Candle(AdamW::new(vars.clone(), params)?)
    };
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let accum = o.grad_accum.max(1);
    let per_epoch = steps_per_epoch(examples.len(), o.batch, accum);
    let mut epoch_batches = (usize::MAX, vec![]);
    let mut logs = vec![];
    for step in 0..o.steps {
        let t0 = std::time::Instant::now();
        let mut prof = Profiler::new(o.profile.then_some(&m.device));
        let epoch = step / per_epoch;
        if epoch_batches.0 != epoch {
            epoch_batches = (
                epoch,
                schedule(&lengths, o.batch, m.lora.seed + epoch as u64),
            );
        }
        let first = (step % per_epoch) * accum;
        let micro = &epoch_batches.1[first..(first + accum).min(epoch_batches.1.len())];
        let sequences: usize = micro.iter().map(Vec::len).sum();
        let mut total: Option<candle_core::backprop::GradStore> = None;
        let (mut loss_sum, mut tokens, mut padded) = (0.0, 0usize, 0usize);
        for (k, rows) in micro.iter().enumerate() {
            let chosen: Vec<&Example> = rows.iter().map(|&i| &examples[i]).collect();
            let batch = m.batch(&chosen, 1.0 / sequences as f64)?;
            prof.mark("batch")?;
            let seed = splitmix(m.lora.seed ^ ((step as u64) << 20) ^ k as u64);
            let (value, grads) = m.loss_and_grads(&batch, seed, o.checkpointing, &mut prof)?;
            if !value.is_finite() {
                bail!(
                    "the loss became {value} at step {} (learning rate {} too high?): nothing is kept",
                    step + 1,
                    o.lr
                );
            }
            loss_sum += value;
            tokens += batch.tokens;
            padded += batch.rows * batch.len;
            match &mut total {
                None => total = Some(grads),
                Some(acc) => {
                    for v in &vars {
                        if let Some(g) = grads.get(v.as_tensor()) {
                            let sum = match acc.get(v.as_tensor()) {
                                Some(prev) => (prev + g)?,
                                None => g.clone(),
                            };
                            acc.insert(v.as_tensor(), sum);
                        }
                    }
                }
            }
        }
        prof.mark("accumulate")?;
        if let Some(g) = &total {
            match &mut opt {
                Adam::Candle(a) => a.step(g)?,
                Adam::Fused(a) => a.step(g)?,
            }
        }
        prof.mark("optimizer")?;
        let log = StepLog {
            step: step + 1,
            loss: loss_sum,
            seconds: t0.elapsed().as_secs_f64(),
            tokens,
            padded,
            phases: prof.phases,
        };
        on_step(&log)?;
        logs.push(log);
    }
    Ok(logs)
}

enum Adam {
    Candle(candle_nn::optim::AdamW),
    Fused(FusedAdamW),
}

/// candle_nn's AdamW with each tensor's step as one fused kernel ([`fused::adamw`]), where the
/// fused kernels apply: candle's 12 kernels per tensor, over the 224 adapter tensors of
/// Llama-3.2-1B, took 25 ms of a step on an H200, bound by their launches.
struct FusedAdamW {
    vars: Vec<Var>,
    /// Per variable, m and v as one `[2, …]` tensor (zeros before the first step).
    state: Vec<Option<Tensor>>,
    params: candle_nn::optim::ParamsAdamW,
    step: i32,
}

impl FusedAdamW {
    fn new(vars: Vec<Var>, params: candle_nn::optim::ParamsAdamW) -> FusedAdamW {
        let state = vec![None; vars.len()];
        FusedAdamW {
            vars,
            state,
            params,
            step: 0,
        }
    }

    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        self.step += 1;
        let p = &self.params;
        let step = fused::AdamWStep {
            lr: p.lr as f32,
            beta1: p.beta1 as f32,
            beta2: p.beta2 as f32,
            eps: p.eps as f32,
            weight_decay: p.weight_decay as f32,
            bc1: (1.0 - p.beta1.powi(self.step)) as f32,
            bc2: (1.0 - p.beta2.powi(self.step)) as f32,
        };
        for (var, state) in self.vars.iter().zip(&mut self.state) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let mv = match state.take() {
                Some(mv) => mv,
                None => {
                    let mut dims = vec![2];
                    dims.extend(var.dims());
                    Tensor::zeros(dims, DType::F32, var.device())?
                }
            };
            let out = fused::adamw(var.as_tensor(), g, &mv, step)?;
            *state = Some(out.narrow(0, 0, 2)?);
            var.set(&out.get(2)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};

    /// Three steps of the fused AdamW move the parameters as candle_nn's AdamW does, on the CPU
    /// (and on a GPU in a build with `--features cuda`).
    #[test]
    fn the_fused_adamw_steps_as_candles() {
        let mut devices = vec![Device::Cpu];
        if cfg!(feature = "cuda") {
            devices.push(Device::new_cuda(0).expect("a GPU for the tests of a CUDA build"));
        }
        for dev in devices {
            let init = Tensor::randn(0f32, 1.0, (16, 300), &dev).unwrap();
            let (a, b) = (
                Var::from_tensor(&init).unwrap(),
                Var::from_tensor(&init).unwrap(),
            );
            let params = ParamsAdamW {
                lr: 1e-2,
                weight_decay: 0.1,
                ..Default::default()
            };
            let mut candle = AdamW::new(vec![a.clone()], params.clone()).unwrap();
            let mut ours = FusedAdamW::new(vec![b.clone()], params);
            for k in 0..3 {
                let target = Tensor::randn(0f32, 1.0, (16, 300), &dev).unwrap();
                let loss = |v: &Var| {
                    ((v.as_tensor() - &target).unwrap().sqr().unwrap() * (k + 1) as f64)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                };
                candle.step(&loss(&a).backward().unwrap()).unwrap();
                ours.step(&loss(&b).backward().unwrap()).unwrap();
                let d = crate::test_util::max_diff(a.as_tensor(), b.as_tensor());
                assert!(
                    d < 1e-5,
                    "{dev:?}, step {}: parameters differ by {d}",
                    k + 1
                );
            }
        }
    }
}
