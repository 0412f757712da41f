//! Generation: greedy or seeded sampling (temperature, top-p), stop on end tokens and stop
//! strings, with a timestamp per token so the measuring stages can derive time to first token and
//! inter-token latency.

use super::llama::{KvCache, Llama, argmax};
use super::tokenizer::Tokenizer;
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
    /// Generate exactly `max_tokens` tokens, never stopping on an end token (equal work for
    /// every variant when measuring).
    pub ignore_eos: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: vec![],
            ignore_eos: false,
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

/// Generates continuations of several prompts at once (one batched forward per step). Prompts of
/// different lengths are left-padded and masked; each row stops on its own, and the batch steps
/// until every row has stopped. Token times are per row, from the common start.
pub fn generate_batch(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    opts: &GenOptions,
) -> Result<Vec<Generation>> {
    Ok(generate_inner(model, Some(tok), prompts, &[], opts)?.0)
}

/// The most logits [`generate_batch_scoring`] holds for a batch's continuations at once.
const SHARED_LOGITS: usize = 1 << 28;

/// The logits over one continuation: one vector per token, the `i`-th predicting token `i`.
pub type Scored = Vec<Vec<f32>>;

/// [`generate_batch`], and the model's teacher-forced logits over a given continuation of each
/// prompt (`continuations[r]` after `prompts[r]`; row `r` gets `continuations[r].len()` vectors,
/// the `i`-th predicting `continuations[r][i]`), computed in the same pass over the prompts:
/// the continuations ride along in the prompts' forward pass and the cache is then cut back to
/// the prompts, so scoring a reference answer costs its own tokens only. The logits and the
/// generations are those that separate passes give (each row's products do not depend on the
/// positions after it). A batch whose longest prompt plus longest continuation would not fit
/// the context, or whose logits would be too many to hold, scores each continuation in a pass
/// of its own instead.
pub fn generate_batch_scoring(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    continuations: &[Vec<u32>],
    opts: &GenOptions,
) -> Result<(Vec<Generation>, Vec<Scored>)> {
    anyhow::ensure!(
        continuations.len() == prompts.len(),
        "one continuation per prompt"
    );
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let fed = fed_tokens(continuations);
    // The batch's logits over the continuations, padded to the longest, are held at once: past
    // SHARED_LOGITS values (1 GiB of f32: a 128k vocabulary × 4 rows × 500 tokens) each
    // continuation gets a pass of its own instead.
    let logits = prompts.len() * (fed + 1) * model.cfg.vocab;
    if longest + fed <= model.cfg.context && logits <= SHARED_LOGITS {
        return generate_inner(model, Some(tok), prompts, continuations, opts);
    }
    let mut scored = vec![];
    for (p, c) in prompts.iter().zip(continuations) {
        scored.push(continuation_logits(model, p, c)?);
    }
    Ok((
        generate_inner(model, Some(tok), prompts, &[], opts)?.0,
        scored,
    ))
}

/// The positions the longest continuation adds to a batch's prompt pass: all its tokens but the
/// last, which predicts nothing asked for.
fn fed_tokens(continuations: &[Vec<u32>]) -> usize {
    continuations
        .iter()
        .map(|c| c.len().saturating_sub(1))
        .max()
        .unwrap_or(0)
}

/// The logits predicting each token of `continuation` after `prompt`, in a pass of their own
/// (the head on those positions only).
pub fn continuation_logits(model: &Llama, prompt: &[u32], continuation: &[u32]) -> Result<Scored> {
    anyhow::ensure!(!prompt.is_empty(), "empty prompt");
    let n = continuation.len();
    if n == 0 {
        return Ok(vec![]);
    }
    let ids: Vec<u32> = prompt
        .iter()
        .chain(&continuation[..n - 1])
        .copied()
        .collect();
    let len = ids.len();
    let t = Tensor::from_vec(ids, (1, len), &Device::Cpu)?;
    let logits = model.forward_tail(&t, &mut KvCache::new(model.cfg.n_layer), n)?;
    Ok(logits
        .squeeze(0)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2()?)
}

/// [`generate_batch`] for a model without a tokenizer (synthetic weights): no end tokens, no
/// stop strings, no text — token ids and their timestamps only.
pub fn generate_batch_ids(
    model: &Llama,
    prompts: &[Vec<u32>],
    opts: &GenOptions,
) -> Result<Vec<Generation>> {
    Ok(generate_inner(model, None, prompts, &[], opts)?.0)
}

/// Generation from `prompts`; with `continuations` (one per prompt, or none), the logits over
/// them from the prompts' pass ([`generate_batch_scoring`]; the caller checked the context).
fn generate_inner(
    model: &Llama,
    tok: Option<&Tokenizer>,
    prompts: &[Vec<u32>],
    continuations: &[Vec<u32>],
    opts: &GenOptions,
) -> Result<(Vec<Generation>, Vec<Scored>)> {
    let no_stops = vec![];
    let stop_ids = tok.map_or(&no_stops, |t| &t.stop_ids);
    anyhow::ensure!(
        !prompts.is_empty() && prompts.iter().all(|p| !p.is_empty()),
        "empty prompt"
    );
    let start = Instant::now();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    // Each continuation but its last token (which predicts nothing asked for) follows its
    // prompt, right-padded with its row's last token: no position before it sees the padding.
    let fed = fed_tokens(continuations);
    let width = longest + fed;
    let mut flat = Vec::with_capacity(prompts.len() * width);
    for (r, (p, pad)) in prompts.iter().zip(&pads).enumerate() {
        flat.extend(std::iter::repeat_n(p[0], *pad));
        flat.extend_from_slice(p);
        let c = continuations
            .get(r)
            .map_or(&[][..], |c| &c[..c.len().saturating_sub(1)]);
        flat.extend_from_slice(c);
        let last = flat.last().copied().expect("non-empty prompt");
        flat.extend(std::iter::repeat_n(last, fed - c.len()));
    }
    let b = prompts.len();
    let mut cache = KvCache::with_padding(model.cfg.n_layer, pads);
    let mut rngs: Vec<Rng> = (0..b as u64)
        .map(|r| Rng(opts.seed.wrapping_add(r)))
        .collect();
    // Logits from the prompts' last position on: generation starts from the first; the
    // continuations' are the rest.
    let tail = model.forward_tail(
        &Tensor::from_vec(flat, (b, width), &Device::Cpu)?,
        &mut cache,
        fed + 1,
    )?;
    let mut logits = tail.narrow(1, 0, 1)?.squeeze(1)?;
    let mut scored: Vec<Scored> = vec![];
    if !continuations.is_empty() {
        let rows: Vec<Scored> = tail.to_dtype(candle_core::DType::F32)?.to_vec3()?;
        for (mut row, c) in rows.into_iter().zip(continuations) {
            row.truncate(c.len());
            scored.push(row);
        }
        cache.truncate(longest)?;
    }
    let mut outs: Vec<Generation> = prompts
        .iter()
        .map(|p| Generation {
            prompt_tokens: p.len(),
            tokens: vec![],
            text: String::new(),
            token_times: vec![],
            stop: StopReason::MaxTokens,
        })
        .collect();
    let mut done = vec![false; b];
    let mut last: Vec<u32> = prompts
        .iter()
        .map(|p| *p.last().expect("non-empty"))
        .collect();
    for _ in 0..opts.max_tokens {
        for r in 0..b {
            if done[r] {
                continue;
            }
            let next = sample(&logits.get(r)?, opts, &mut rngs[r])?;
            let out = &mut outs[r];
            out.token_times.push(start.elapsed());
            if !opts.ignore_eos && stop_ids.contains(&next) {
                out.stop = StopReason::EndToken;
                done[r] = true;
                continue;
            }
            out.tokens.push(next);
            last[r] = next;
            if let (false, Some(tok)) = (opts.stop.is_empty(), tok) {
                let text = tok.decode(&out.tokens)?;
                if let Some(cut) = opts.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                    out.text = text[..cut].to_string();
                    out.stop = StopReason::StopString;
                    done[r] = true;
                }
            }
            if out.tokens.len() == opts.max_tokens {
                done[r] = true;
            }
        }
        if done.iter().all(|d| *d) || cache.len + 1 >= model.cfg.context {
            break;
        }
        // Finished rows keep stepping with their last token; their outputs are ignored.
        logits = model.forward_last(
            &Tensor::from_vec(last.clone(), (b, 1), &Device::Cpu)?,
            &mut cache,
        )?;
    }
    for out in &mut outs {
        if let (true, Some(tok)) = (out.stop != StopReason::StopString, tok) {
            out.text = tok.decode(&out.tokens)?;
        }
    }
    Ok((outs, scored))
}

/// Generates a continuation of `prompt` (token ids).
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &GenOptions,
) -> Result<Generation> {
    let mut out = generate_batch(model, tok, &[prompt.to_vec()], opts)?;
    Ok(out.remove(0))
}

/// One forward pass on a single token (the tokenizer's BOS, or the first token of "Hello"):
/// what a cold load must include before the model can produce its first token.
pub fn first_token(model: &Llama, tok: Option<&Tokenizer>) -> Result<u32> {
    let id = match tok {
        Some(t) => match t.bos {
            Some(b) => b,
            None => *t
                .encode("Hello")?
                .first()
                .ok_or_else(|| anyhow::anyhow!("empty tokenization"))?,
        },
        // A synthetic model has no tokenizer: any id does.
        None => 1,
    };
    let ids = candle_core::Tensor::from_vec(vec![id], (1, 1), &candle_core::Device::Cpu)?;
    // A one-token prompt through the prompt pass: decode buffers and CUDA graphs are made by
    // the first decode step of serving (`measure`), not by loading.
    let mut cache = KvCache::new(model.cfg.n_layer).with_decode(crate::llama::Decode::PerOp);
    let logits = model.forward_last(&ids, &mut cache)?;
    crate::llama::argmax(&logits.get(0)?)
}
