//! The model runtime: GGUF files (reading, requantizing), tokenizers, the llama forward pass and
//! generation. It knows models, not the cache.

pub mod generate;
pub mod gguf;
pub mod hf;
pub mod llama;
pub mod lora;
pub mod synthetic;
pub mod tokenizer;

/// Opens a GGUF model file: the forward pass and its tokenizer.
pub fn load_gguf(path: &std::path::Path) -> anyhow::Result<(llama::Llama, tokenizer::Tok)> {
    let mut g = gguf::Gguf::open(path)?;
    let tok = tokenizer::Tok::from_gguf(&g)?;
    let model = llama::Llama::load(&mut g)?;
    Ok((model, tok))
}
