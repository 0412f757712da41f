//! The model runtime: reading and writing model files (GGUF today), and — as issue #3 continues —
//! tokenizers, the forward pass and generation. It knows models, not the cache.

pub mod gguf;
