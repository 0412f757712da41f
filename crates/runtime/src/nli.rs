//! Natural-language inference, the paper's primary scorer for its rag and summ tasks: a
//! DeBERTa-v3 (or DeBERTa-v2 without the convolution layer) sequence classifier
//! (candle-transformers' model) from a Hugging Face folder
//! (`config.json`, `*.safetensors`, `tokenizer.json`), run on (premise, hypothesis) pairs
//! tokenized as transformers' `tokenizer(premise, hypothesis, truncation=True, max_length=512)`
//! does: the pair template of `tokenizer.json`, the longer side cut first until the pair fits.
//! The label a pair gets is the argmax of the logits, named by the folder's `id2label`.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::debertav2::{Config, DebertaV2SeqClassificationModel};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokenizers::{PostProcessor, TruncationDirection};

/// The paper's truncation of a pair (`max_length=512`).
pub const MAX_PAIR_TOKENS: usize = 512;

/// An NLI classifier and its tokenizer.
pub struct Nli {
    model: DebertaV2SeqClassificationModel,
    tokenizer: tokenizers::Tokenizer,
    /// Label names by class index, lower case (`entailment`, `neutral`, `contradiction`).
    pub labels: Vec<String>,
    device: Device,
}

/// What the classifier says of one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// The argmax class's name (lower case).
    pub label: String,
    /// Softmax of the logits, by class index.
    pub probs: Vec<f32>,
}

impl Nli {
    /// Loads the classifier from a model folder's files (file name → path, as a model artifact
    /// lists them) onto `device`.
    pub fn load(files: &BTreeMap<String, PathBuf>, device: &Device) -> Result<Nli> {
        let file = |name: &str| {
            files.get(name).with_context(|| {
                format!(
                    "the NLI model has no {name}: it must be a Hugging Face folder of a DeBERTa-v2/v3 \
                     sequence classifier (config.json, model.safetensors, tokenizer.json); a folder \
                     without tokenizer.json gets one from transformers: \
                     AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)"
                )
            })
        };
        let config_path = file("config.json")?;
        let text = std::fs::read_to_string(config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", config_path.display()))?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str());
        if model_type != Some("deberta-v2") {
            bail!(
                "{}: the NLI scorer runs DeBERTa-v2/v3 classifiers (model_type \"deberta-v2\"), \
                 this one is {}",
                config_path.display(),
                model_type.map_or("of no model_type".into(), |t| format!("\"{t}\""))
            );
        }
        if raw
            .get("conv_kernel_size")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            > 0
        {
            bail!(
                "{}: DeBERTa-v2 models with a convolution layer (conv_kernel_size, as \
                 deberta-v2-xlarge) cannot be run: candle-transformers' DeBERTa does not \
                 implement it. DeBERTa-v3 classifiers (the paper's) have none",
                config_path.display()
            );
        }
        let config: Config = serde_json::from_value(raw)
            .with_context(|| format!("{}: not a DeBERTa-v2 config", config_path.display()))?;
        let labels =
            labels(&config).with_context(|| format!("{}: `id2label`", config_path.display()))?;
        let mut weights: Vec<&PathBuf> = files
            .iter()
            .filter(|(n, _)| n.ends_with(".safetensors"))
            .map(|(_, p)| p)
            .collect();
        weights.sort();
        if weights.is_empty() {
            bail!(
                "the NLI model has no *.safetensors weights (a pytorch_model.bin folder is \
                 converted by transformers: model.save_pretrained(DIR, safe_serialization=True))"
            );
        }
        // SAFETY: the files are memory-mapped read-only; they belong to a model folder that is
        // not written while a stage reads it.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, device)? };
        let model = DebertaV2SeqClassificationModel::load(vb.pp("deberta"), &config, None)
            .context("loading the NLI classifier's weights")?;
        let tok_path = file("tokenizer.json")?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(tok_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        // Truncation is done here (`encode`), as transformers does it.
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokenizer.with_padding(None);
        Ok(Nli {
            model,
            tokenizer,
            labels,
            device: device.clone(),
        })
    }

    /// Loads the classifier from a folder.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Nli> {
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let e = e?;
            files.insert(e.file_name().to_string_lossy().to_string(), e.path());
        }
        Nli::load(&files, device)
    }

    /// The pair's token ids, as transformers gives them: an empty hypothesis (a model that
    /// answered nothing) is no second sequence there, so the premise is encoded alone.
    pub fn encode(&self, premise: &str, hypothesis: &str) -> Result<Vec<u32>> {
        Ok(self.encode_typed(premise, hypothesis)?.0)
    }

    /// The pair's token ids and token type ids (0 for the premise, 1 for the hypothesis, as the
    /// pair template of tokenizer.json says).
    fn encode_typed(&self, premise: &str, hypothesis: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let err = |e: tokenizers::Error| anyhow::anyhow!("tokenizing an NLI pair: {e}");
        let mut a = self.tokenizer.encode(premise, false).map_err(err)?;
        let mut b = match hypothesis.is_empty() {
            true => None,
            false => Some(self.tokenizer.encode(hypothesis, false).map_err(err)?),
        };
        let added = self
            .tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(b.is_some()));
        let budget = MAX_PAIR_TOKENS.saturating_sub(added);
        let (na, nb) = truncated_lengths(a.len(), b.as_ref().map_or(0, |b| b.len()), budget);
        a.truncate(na, 0, TruncationDirection::Right);
        if let Some(b) = &mut b {
            b.truncate(nb, 0, TruncationDirection::Right);
        }
        let enc = self.tokenizer.post_process(a, b, true).map_err(err)?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// The classifier's logits for a pair.
    pub fn logits(&self, premise: &str, hypothesis: &str) -> Result<Vec<f32>> {
        let (ids, types) = self.encode_typed(premise, hypothesis)?;
        let n = ids.len();
        let input = Tensor::from_vec(ids, (1, n), &self.device)?;
        // Used by configs with token-type embeddings (type_vocab_size > 0), as transformers.
        let types = Tensor::from_vec(types, (1, n), &self.device)?;
        let logits = self.model.forward(&input, Some(types), None)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?)
    }

    /// The label and class probabilities of a pair.
    pub fn infer(&self, premise: &str, hypothesis: &str) -> Result<Inference> {
        let logits = self.logits(premise, hypothesis)?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        // The first of equal maxima, as torch.argmax.
        let best = logits
            .iter()
            .position(|&l| l == max)
            .context("the NLI classifier returned no logits")?;
        Ok(Inference {
            label: self.labels[best].clone(),
            probs: exp.iter().map(|e| e / sum).collect(),
        })
    }
}

/// The lengths a pair of `a` and `b` tokens is cut to so that it fits `budget` (the pair's length
/// less the special tokens), as transformers' `truncation=True` ("longest_first") cuts it: the
/// longer side alone while the shorter fits in half, else half each, the odd token to the
/// longer side (the second on a tie). (The `tokenizers` crate 0.23.2 gives the odd token to the
/// shorter side, unlike the Python package transformers runs.)
fn truncated_lengths(a: usize, b: usize, budget: usize) -> (usize, usize) {
    if a + b <= budget {
        return (a, b);
    }
    let short = a.min(b);
    let (short, long) = if short <= budget / 2 {
        (short, budget - short)
    } else {
        (budget / 2, budget - budget / 2)
    };
    if a > b { (long, short) } else { (short, long) }
}

/// Class names by index from `id2label`, lower case; every index from 0 has one, and NLI needs
/// an `entailment` and a `contradiction` class.
fn labels(config: &Config) -> Result<Vec<String>> {
    let map = config
        .id2label
        .as_ref()
        .context("the config has no id2label: NLI needs its classes named")?;
    let labels = (0..map.len() as u32)
        .map(|i| {
            map.get(&i)
                .map(|l| l.to_lowercase())
                .with_context(|| format!("class {i} has no name"))
        })
        .collect::<Result<Vec<_>>>()?;
    for needed in ["entailment", "contradiction"] {
        if !labels.iter().any(|l| l == needed) {
            bail!(
                "the classes are {}: an NLI classifier names `entailment` and `contradiction`",
                labels.join(", ")
            );
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::truncated_lengths;

    #[test]
    fn pairs_are_cut_longest_first_as_transformers_cuts_them() {
        assert_eq!(truncated_lengths(10, 5, 20), (10, 5));
        // Only the longer side while the shorter fits in half.
        assert_eq!(truncated_lengths(3493, 6, 509), (503, 6));
        assert_eq!(truncated_lengths(6, 3493, 509), (6, 503));
        // Both past half: half each, the odd token to the longer side.
        assert_eq!(truncated_lengths(3493, 2994, 509), (255, 254));
        assert_eq!(truncated_lengths(2994, 3493, 509), (254, 255));
        assert_eq!(truncated_lengths(300, 300, 509), (254, 255));
        assert_eq!(truncated_lengths(300, 300, 508), (254, 254));
    }
}
