//! Tokenizers built from the vocabulary embedded in a GGUF file — gpt2-style byte-level BPE with
//! the HF `tokenizers` crate, SentencePiece (`llama` model: Llama 2, Gemma) with [`super::spm`] —
//! and the model's chat format applied for chat-shaped prompts.
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

/// A chat message.
#[derive(Debug, Clone)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Chat formats recognised from a model's Jinja chat template.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatFormat {
    /// `<|im_start|>role\ncontent<|im_end|>\n`; `default_system` is the system turn the template
    /// inserts when the conversation has none.
    ChatMl { default_system: Option<String> },
    /// Llama 3: `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`.
    Llama3,
    /// Gemma: `<start_of_turn>user\ncontent<end_of_turn>\n`, the assistant's role is `model`, a
    /// system message is put at the head of the first user turn.
    Gemma,
}

impl ChatFormat {
    /// Recognises the template's format (the Jinja itself is not executed).
    pub fn from_template(template: &str) -> Result<ChatFormat> {
        if template.contains("<|im_start|>") {
            let marker = "<|im_start|>system\\n";
            let default_system = template.find(marker).and_then(|i| {
                let rest = &template[i + marker.len()..];
                rest.find("<|im_end|>")
                    .map(|j| rest[..j].replace("\\n", "\n"))
            });
            Ok(ChatFormat::ChatMl { default_system })
        } else if template.contains("<|start_header_id|>") {
            Ok(ChatFormat::Llama3)
        } else if template.contains("<start_of_turn>") {
            Ok(ChatFormat::Gemma)
        } else {
            bail!("unsupported chat template (known: ChatML, Llama 3, Gemma)")
        }
    }

    /// The prompt text for `messages`, ending where the assistant's reply starts.
    pub fn render(&self, messages: &[Message]) -> String {
        let mut out = String::new();
        match self {
            ChatFormat::ChatMl { default_system } => {
                if let (Some(sys), Some(first)) = (default_system, messages.first())
                    && first.role != "system"
                {
                    out.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                for m in messages {
                    out.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role, m.content
                    ));
                }
                out.push_str("<|im_start|>assistant\n");
            }
            ChatFormat::Llama3 => {
                out.push_str("<|begin_of_text|>");
                for m in messages {
                    out.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        m.content.trim()
                    ));
                }
                out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
            }
            ChatFormat::Gemma => {
                // The BOS the template starts with is added by the tokenizer (add_bos_token).
                let mut system = None;
                for m in messages {
                    if m.role == "system" {
                        system = Some(m.content.trim());
                        continue;
                    }
                    let role = if m.role == "assistant" {
                        "model"
                    } else {
                        &m.role
                    };
                    out.push_str(&format!("<start_of_turn>{role}\n"));
                    if let Some(sys) = system.take() {
                        out.push_str(&format!("{sys}\n\n"));
                    }
                    out.push_str(&format!("{}<end_of_turn>\n", m.content.trim()));
                }
                out.push_str("<start_of_turn>model\n");
            }
        }
        out
    }
}

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
    /// Tokens that end generation (eos, and end-of-turn tokens of the chat format).
    pub stop_ids: Vec<u32>,
    /// The chat format, or why there is none (no template, or one not recognised).
    pub chat: std::result::Result<ChatFormat, String>,
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
        let chat = match g.metadata_str("tokenizer.chat_template") {
            Some(t) => ChatFormat::from_template(t).map_err(|e| e.to_string()),
            // Gemma GGUFs often carry no template; the family has one format.
            None if arch.starts_with("gemma") => Ok(ChatFormat::Gemma),
            None => Err("the model has no chat template".to_string()),
        };
        Tokenizer {
            backend,
            bos: id("tokenizer.ggml.bos_token_id"),
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

    fn token_to_id(&self, t: &str) -> Option<u32> {
        match &self.backend {
            Backend::Bpe { inner, .. } => inner.token_to_id(t),
            Backend::Spm(spm) => spm.token_to_id(t),
        }
    }

    /// The token that closes an assistant turn in the chat format (`<|im_end|>`, `<|eot_id|>`):
    /// what a fine-tuned answer ends with so the model learns to stop.
    pub fn end_of_turn(&self) -> Option<u32> {
        let t = match self.chat.as_ref().ok()? {
            ChatFormat::ChatMl { .. } => "<|im_end|>",
            ChatFormat::Llama3 => "<|eot_id|>",
            ChatFormat::Gemma => "<end_of_turn>",
        };
        self.token_to_id(t)
    }

    /// A chat prompt rendered with the model's template.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String> {
        match &self.chat {
            Ok(chat) => Ok(chat.render(messages)),
            Err(why) => bail!("cannot build a chat prompt: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_template_with_default_system_turn() {
        let t = "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are Smol<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role']}}";
        let f = ChatFormat::from_template(t).unwrap();
        assert_eq!(
            f,
            ChatFormat::ChatMl {
                default_system: Some("You are Smol".into())
            }
        );
        let p = f.render(&[Message {
            role: "user".into(),
            content: "Hi".into(),
        }]);
        assert_eq!(
            p,
            "<|im_start|>system\nYou are Smol<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(ChatFormat::from_template("{{ messages }}").is_err());
    }
}
