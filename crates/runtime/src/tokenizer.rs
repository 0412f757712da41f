//! Tokenizers built from the vocabulary embedded in a GGUF file — gpt2-style byte-level BPE with
//! the HF `tokenizers` crate, SentencePiece (`llama` model: Llama 2, Gemma) with [`super::spm`] —
//! and the model's chat template ([`super::chat`]) for chat-shaped prompts.
//!
//! Pre-tokenization follows llama.cpp's per-model `tokenizer.ggml.pre` types that are known here;
//! an unknown type is an error, not a silent approximation.

use super::gguf::Gguf;
use anyhow::{Context, Result, bail};
use tokenizers::SplitDelimiterBehavior;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

/// Llama 3's splitting expression (numbers in groups of up to three digits).
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: the same with single digits.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub use super::chat::{ChatTemplate, Message};

enum Backend {
    Bpe {
        /// Recognises special tokens written in the text (for chat prompts).
        inner: Box<HfTokenizer>,
        /// The same without special-token matching.
        plain: Box<HfTokenizer>,
    },
    Spm(Box<super::spm::Spm>),
}

pub struct Tokenizer {
    backend: Backend,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end generation (eos, and end-of-turn tokens of the chat format).
    pub stop_ids: Vec<u32>,
    /// The chat template, or why there is none (no template, or one that does not compile).
    pub chat: std::result::Result<ChatTemplate, String>,
    pub add_bos: bool,
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let meta = &g.content.metadata;
        let model = g
            .metadata_str("tokenizer.ggml.model")
            .context("the GGUF has no tokenizer (tokenizer.ggml.model)")?;
        if model == "llama" {
            return Tokenizer::spm_from_gguf(g);
        }
        if model != "gpt2" {
            bail!(
                "tokenizer type `{model}` is not supported yet (supported: gpt2-style byte-level \
                 BPE, SentencePiece `llama`)"
            );
        }
        let pre = g.metadata_str("tokenizer.ggml.pre").unwrap_or("default");
        let tokens = meta
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .context("the GGUF tokenizer has no tokenizer.ggml.tokens")?;
        let tokens: Vec<String> = tokens
            .iter()
            .map(|t| t.to_string().cloned().unwrap_or_default())
            .collect();
        let merges: Vec<(String, String)> = meta
            .get("tokenizer.ggml.merges")
            .and_then(|v| v.to_vec().ok())
            .context("the GGUF tokenizer has no tokenizer.ggml.merges")?
            .iter()
            .filter_map(|m| m.to_string().ok())
            .filter_map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        let types: Vec<i64> = meta
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| {
                v.iter()
                    .map(|x| x.to_i32().map(i64::from).unwrap_or(1))
                    .collect()
            })
            .unwrap_or_default();
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        // Llama 3 takes a whole pre-token from the vocabulary when it is there, before merging
        // (llama.cpp's `ignore_merges`, HF's `"ignore_merges": true`).
        let ignore_merges = matches!(pre, "llama-bpe" | "llama3");
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the BPE tokenizer: {e}"))?;
        let mut inner = HfTokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        // The splitting expressions of llama.cpp's `tokenizer.ggml.pre` types.
        let split = |re: &str| -> Result<Sequence> {
            let split = Split::new(
                SplitPattern::Regex(re.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow::anyhow!("pre-tokenizer expression: {e}"))?;
            Ok(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ]))
        };
        match pre {
            // Digits one by one, then the GPT-2 expression.
            "smollm" | "starcoder" | "refact" => {
                inner.with_pre_tokenizer(Some(Sequence::new(vec![
                    Digits::new(true).into(),
                    byte_level.into(),
                ])));
            }
            "gpt2" | "gpt-2" | "default" => {
                inner.with_pre_tokenizer(Some(byte_level));
            }
            "llama-bpe" | "llama3" => {
                inner.with_pre_tokenizer(Some(split(LLAMA3_SPLIT)?));
            }
            "qwen2" => {
                inner.with_pre_tokenizer(Some(split(QWEN2_SPLIT)?));
            }
            other => bail!(
                "pre-tokenizer `{other}` is not supported yet (supported: smollm, starcoder, refact, gpt-2, llama-bpe, qwen2)"
            ),
        }
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let plain = inner.clone();
        // Control (3) and user-defined (4) tokens are matched whole, never split.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter().chain(std::iter::repeat(&1)))
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner
            .add_special_tokens(special)
            .map_err(|e| anyhow::anyhow!("cannot register special tokens: {e}"))?;
        Ok(Tokenizer::finish(
            g,
            &tokens,
            Backend::Bpe {
                inner: Box::new(inner),
                plain: Box::new(plain),
            },
            false,
        ))
    }

    /// A SentencePiece vocabulary (scores instead of merges; BOS added by default).
    fn spm_from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let meta = &g.content.metadata;
        let list = |k: &str| {
            meta.get(k)
                .and_then(|v| v.to_vec().ok())
                .with_context(|| format!("the GGUF tokenizer has no {k}"))
        };
        let tokens: Vec<String> = list("tokenizer.ggml.tokens")?
            .iter()
            .map(|t| t.to_string().cloned().unwrap_or_default())
            .collect();
        let scores: Vec<f32> = list("tokenizer.ggml.scores")?
            .iter()
            .map(|x| x.to_f32().unwrap_or(0.0))
            .collect();
        let types: Vec<i32> = list("tokenizer.ggml.token_type")
            .map(|v| v.iter().map(|x| x.to_i32().unwrap_or(1)).collect())
            .unwrap_or_default();
        let unk = meta
            .get("tokenizer.ggml.unknown_token_id")
            .and_then(|v| v.to_u32().ok());
        let add_space_prefix = meta
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(true);
        let spm = super::spm::Spm::new(tokens.clone(), scores, types, unk, add_space_prefix)
            .with_context(|| format!("{}: tokenizer", g.path.display()))?;
        Ok(Tokenizer::finish(
            g,
            &tokens,
            Backend::Spm(Box::new(spm)),
            true,
        ))
    }

    /// End tokens, BOS, chat format: the same for every vocabulary type.
    fn finish(g: &Gguf, tokens: &[String], backend: Backend, add_bos_default: bool) -> Tokenizer {
        let meta = &g.content.metadata;
        let id = |k: &str| meta.get(k).and_then(|v| v.to_u32().ok());
        let mut stop_ids: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
        for end in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"] {
            if let Some(i) = tokens.iter().position(|t| t == end) {
                stop_ids.push(i as u32);
            }
        }
        stop_ids.sort();
        stop_ids.dedup();
        let arch = g.metadata_str("general.architecture").unwrap_or("");
        let text_of = |k: &str| {
            id(k)
                .and_then(|i| tokens.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        let (bos, eos) = (
            text_of("tokenizer.ggml.bos_token_id"),
            text_of("tokenizer.ggml.eos_token_id"),
        );
        let chat = match g.metadata_str("tokenizer.chat_template") {
            Some(t) => ChatTemplate::new(t, &bos, &eos).map_err(|e| format!("{e:#}")),
            // Gemma GGUFs often carry no template; the family has one format.
            None if arch.starts_with("gemma") => {
                ChatTemplate::new(super::chat::GEMMA_FALLBACK, &bos, &eos)
                    .map_err(|e| format!("{e:#}"))
            }
            None => Err("the model has no chat template".to_string()),
        };
        Tokenizer {
            backend,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            stop_ids,
            chat,
            add_bos: meta
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(add_bos_default),
        }
    }

    /// Token ids of `text` (special tokens written in the text are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = match &self.backend {
            Backend::Bpe { inner, .. } => inner
                .encode(text, false)
                .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
                .get_ids()
                .to_vec(),
            Backend::Spm(spm) => spm.encode(text, true),
        };
        if self.add_bos
            && let Some(b) = self.bos
        {
            ids.insert(0, b);
        }
        Ok(ids)
    }

    /// Token ids of plain `text`: no BOS, special-token names in the text are ordinary text
    /// (llama.cpp's `tokenize(text, add_special = false, parse_special = false)`).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Bpe { plain, .. } => Ok(plain
                .encode(text, false)
                .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
                .get_ids()
                .to_vec()),
            Backend::Spm(spm) => Ok(spm.encode(text, false)),
        }
    }

    /// The tokenizer as a Hugging Face tokenizer.json (byte-level BPE vocabularies).
    pub fn to_json(&self) -> Result<String> {
        match &self.backend {
            Backend::Bpe { plain, .. } => plain
                .to_string(true)
                .map_err(|e| anyhow::anyhow!("tokenizer: {e}")),
            Backend::Spm(_) => {
                bail!("a SentencePiece vocabulary is not exported as tokenizer.json here")
            }
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.backend {
            Backend::Bpe { inner, .. } => inner
                .decode(ids, true)
                .map_err(|e| anyhow::anyhow!("tokenizer: {e}")),
            Backend::Spm(spm) => Ok(spm.decode(ids, true)),
        }
    }

    /// The token that closes an assistant turn in the chat template (`<|im_end|>`,
    /// `<|eot_id|>`, `<end_of_turn>`): the first token the template writes after an assistant
    /// turn's content, when it is a special token. What a fine-tuned answer ends with so the
    /// model learns to stop.
    pub fn end_of_turn(&self) -> Option<u32> {
        let after = self.chat.as_ref().ok()?.after_assistant().ok()?;
        let first = *self.encode_chat(&after).ok()?.first()?;
        let special = self.decode(&[first]).ok()?.is_empty();
        special.then_some(first)
    }

    /// A chat prompt rendered with the model's template, ending where the assistant's reply
    /// starts.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String> {
        match &self.chat {
            Ok(chat) => chat.render(messages, true),
            Err(why) => bail!("cannot build a chat prompt: {why}"),
        }
    }

    /// The token ids of a chat prompt ([`Tokenizer::chat_prompt`]), as transformers'
    /// `apply_chat_template(…, tokenize=True)` gives them: special tokens in the rendered text
    /// parsed, nothing added (a BOS only where the template writes one).
    pub fn chat_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.chat_ids_with(messages, &[])
    }

    /// [`Tokenizer::chat_ids`] with further template variables (a pinned `date_string`).
    pub fn chat_ids_with(
        &self,
        messages: &[Message],
        variables: &[(&str, &str)],
    ) -> Result<Vec<u32>> {
        let text = match &self.chat {
            Ok(chat) => chat.render_with(messages, true, variables)?,
            Err(why) => bail!("cannot build a chat prompt: {why}"),
        };
        self.encode_chat(&text)
    }

    /// `text` with special tokens parsed and no BOS added.
    fn encode_chat(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Bpe { inner, .. } => Ok(inner
                .encode(text, false)
                .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
                .get_ids()
                .to_vec()),
            Backend::Spm(spm) => Ok(spm.encode(text, true)),
        }
    }
}
