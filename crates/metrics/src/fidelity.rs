//! Token-level fidelity of a variant against a reference model on the same token sequence, as
//! llama.cpp's perplexity tool reports it: KL divergence of the next-token distributions
//! KL(P_ref ‖ P_variant) per position (nats), its mean and 99th percentile, and top-1 agreement.

/// log-softmax of one row of logits, in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&x| x as f64 - lse).collect()
}

/// KL(P_ref ‖ P_var) in nats for one position, from raw logits.
pub fn kl_divergence(reference: &[f32], variant: &[f32]) -> f64 {
    let lp = log_softmax(reference);
    let lq = log_softmax(variant);
    lp.iter()
        .zip(&lq)
        .map(|(p, q)| {
            if p.is_finite() {
                p.exp() * (p - q)
            } else {
                0.0
            }
        })
        .sum::<f64>()
        .max(0.0)
}

fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

/// Accumulates positions across samples.
#[derive(Debug, Default, Clone)]
pub struct Fidelity {
    pub kl: Vec<f64>,
    pub top1_same: usize,
}

impl Fidelity {
    pub fn add(&mut self, reference: &[f32], variant: &[f32]) {
        self.kl.push(kl_divergence(reference, variant));
        if argmax(reference) == argmax(variant) {
            self.top1_same += 1;
        }
    }
    pub fn positions(&self) -> usize {
        self.kl.len()
    }
    pub fn mean_kl(&self) -> Option<f64> {
        super::stats::mean(&self.kl)
    }
    pub fn p99_kl(&self) -> Option<f64> {
        super::stats::percentile(&self.kl, 99.0)
    }
    /// Fraction (0–1) of positions where both models' most likely token is the same.
    pub fn top1_agreement(&self) -> Option<f64> {
        (!self.kl.is_empty()).then(|| self.top1_same as f64 / self.kl.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_by_hand() {
        // Identical distributions (up to a shift of the logits): 0.
        assert!(kl_divergence(&[1.0, 2.0, 3.0], &[11.0, 12.0, 13.0]).abs() < 1e-12);
        // P = (0.5, 0.5), Q = (0.9, 0.1) (logits ln 9, 0): KL = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1).
        let q = [9f32.ln(), 0.0];
        let expect = 0.5 * (0.5f64 / 0.9).ln() + 0.5 * (0.5f64 / 0.1).ln();
        let kl = kl_divergence(&[0.0, 0.0], &q);
        assert!((kl - expect).abs() < 1e-6, "{kl} vs {expect}");
        // Asymmetric.
        assert!((kl_divergence(&q, &[0.0, 0.0]) - kl).abs() > 1e-3);
        // A token the reference rules out contributes nothing.
        assert!(kl_divergence(&[f32::NEG_INFINITY, 0.0], &[0.0, 0.0]).is_finite());
    }

    #[test]
    fn agreement_and_percentiles() {
        let mut f = Fidelity::default();
        f.add(&[0.0, 1.0], &[0.0, 2.0]);
        f.add(&[0.0, 1.0], &[3.0, 0.0]);
        assert_eq!(f.positions(), 2);
        assert_eq!(f.top1_agreement(), Some(0.5));
        assert!(f.p99_kl().unwrap() > f.mean_kl().unwrap());
        assert_eq!(Fidelity::default().top1_agreement(), None);
    }
}
