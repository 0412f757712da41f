//! The training loop: AdamW over the adapters, gradient accumulation, a NaN check, per-step logs.

use super::*;

/// Optimizer settings of a training run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub lr: f64,
    pub steps: usize,
    /// Sequences per micro-batch (processed one after another; their gradients are summed).
    pub batch: usize,
    pub grad_accum: usize,
}

/// One optimizer step.
#[derive(Debug, Clone)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub seconds: f64,
    /// Tokens forwarded in the step (prompt and answer).
    pub tokens: usize,
}

/// AdamW (β 0.9 / 0.999, no weight decay, as PEFT's defaults under the HF Trainer) over the
/// adapters: each step averages the loss of `batch × grad_accum` examples, taken in order and
/// cycled. `on_step` sees every step (progress, cancellation); a NaN or infinite loss stops the
/// run with an error.
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
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: o.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let per_step = o.batch.max(1) * o.grad_accum.max(1);
    let mut logs = vec![];
    let mut next = 0usize;
    for step in 0..o.steps {
        let t0 = std::time::Instant::now();
        let mut total: Option<candle_core::backprop::GradStore> = None;
        let (mut loss_sum, mut tokens) = (0.0, 0usize);
        for _ in 0..per_step {
            let ex = &examples[next % examples.len()];
            next += 1;
            let loss = (m.loss(ex, true)? / per_step as f64)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                bail!(
                    "the loss became {value} at step {} (learning rate {} too high?): nothing is kept",
                    step + 1,
                    o.lr
                );
            }
            loss_sum += value;
            tokens += ex.ids.len();
            let grads = loss.backward()?;
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
        if let Some(g) = &total {
            opt.step(g)?;
        }
        let log = StepLog {
            step: step + 1,
            loss: loss_sum,
            seconds: t0.elapsed().as_secs_f64(),
            tokens,
        };
        on_step(&log)?;
        logs.push(log);
    }
    Ok(logs)
}
