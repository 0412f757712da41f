//! The model runtime: GGUF files (reading, requantizing), tokenizers, the llama forward pass and
//! generation. It knows models, not the cache.

pub mod generate;
pub mod gguf;
pub mod hf;
pub mod llama;
pub mod synthetic;
pub mod tokenizer;
