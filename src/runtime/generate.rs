//! Generation: greedy or seeded sampling (temperature, top-p), stop on end tokens and stop
//! strings, with a timestamp per token so the measuring stages can derive time to first token and
//! inter-token latency.

use super::llama::{KvCache, Llama, argmax};
use super::tokenizer::Tok;
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    pub stop: Vec<String>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndToken,
    StopString,
    MaxTokens,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    /// Time from the start (before the prompt's forward pass) to each generated token.
    pub token_times: Vec<Duration>,
    pub stop: StopReason,
}

impl Generation {
    pub fn time_to_first_token(&self) -> Option<Duration> {
        self.token_times.first().copied()
    }
}

/// A small deterministic generator for sampling (splitmix64).
struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn sample(logits: &Tensor, opts: &GenOptions, rng: &mut Rng) -> Result<u32> {
    if opts.temperature <= 0.0 {
        return argmax(logits);
    }
    let l: Vec<f32> = logits.to_vec1()?;
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<(usize, f64)> = l
        .iter()
        .enumerate()
        .map(|(i, x)| (i, (((x - max) as f64) / opts.temperature).exp()))
        .collect();
    let sum: f64 = p.iter().map(|(_, x)| x).sum();
    p.iter_mut().for_each(|(_, x)| *x /= sum);
    p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut cut = p.len();
    for (i, (_, x)) in p.iter().enumerate() {
        kept += x;
        if kept >= opts.top_p {
            cut = i + 1;
            break;
        }
    }
    let p = &p[..cut];
    let total: f64 = p.iter().map(|(_, x)| x).sum();
    let mut r = rng.next_f64() * total;
    for (i, x) in p {
        r -= x;
        if r <= 0.0 {
            return Ok(*i as u32);
        }
    }
    Ok(p.last().map(|(i, _)| *i as u32).unwrap_or(0))
}

/// Generates a continuation of `prompt` (token ids).
pub fn generate(model: &Llama, tok: &Tok, prompt: &[u32], opts: &GenOptions) -> Result<Generation> {
    anyhow::ensure!(!prompt.is_empty(), "empty prompt");
    let start = Instant::now();
    let mut cache = KvCache::new(model.cfg.n_layer);
    let mut rng = Rng(opts.seed);
    let input = Tensor::new(prompt, &Device::Cpu)?.unsqueeze(0)?;
    let mut logits = model.forward_last(&input, &mut cache)?.squeeze(0)?;
    let mut out = Generation {
        prompt_tokens: prompt.len(),
        tokens: vec![],
        text: String::new(),
        token_times: vec![],
        stop: StopReason::MaxTokens,
    };
    while out.tokens.len() < opts.max_tokens {
        let next = sample(&logits, opts, &mut rng)?;
        out.token_times.push(start.elapsed());
        if tok.stop_ids.contains(&next) {
            out.stop = StopReason::EndToken;
            break;
        }
        out.tokens.push(next);
        if !opts.stop.is_empty() {
            let text = tok.decode(&out.tokens)?;
            if let Some(cut) = opts.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                out.text = text[..cut].to_string();
                out.stop = StopReason::StopString;
                return Ok(out);
            }
        }
        if out.tokens.len() == opts.max_tokens || cache.len + 1 >= model.cfg.context {
            break;
        }
        let input = Tensor::new(&[next], &Device::Cpu)?.unsqueeze(0)?;
        logits = model.forward_last(&input, &mut cache)?.squeeze(0)?;
    }
    out.text = tok.decode(&out.tokens)?;
    Ok(out)
}
