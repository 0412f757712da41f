//! What both forward passes share: a model's configuration ([`Config`], read from the GGUF by
//! `llama::read_config`) and the shape of one transformer block's weights ([`Layer`]).

#[derive(Debug, Clone)]
pub struct Config {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub hidden: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f64,
    pub rope_base: f32,
    pub context: usize,
    /// GGUF architecture: `llama` (interleaved RoPE, q/k permuted at conversion), `qwen2`
    /// (NeoX RoPE on halves, q/k/v biases) or `gemma3` (see [`Gemma`]).
    pub family: String,
    pub gemma: Option<Gemma>,
}

/// What Gemma 3 adds to the llama block: embeddings scaled by √hidden; per-head RMS norms of q
/// and k; RMS norms after attention and after the FFN (before each residual add); GELU (tanh)
/// gating; NeoX RoPE; local layers with sliding-window attention and RoPE base 10 000, every
/// `pattern`-th layer global (full attention, the file's RoPE base). Norm weights in the GGUF
/// already include Gemma's `1 +` (llama.cpp's converter adds it).
#[derive(Debug, Clone)]
pub struct Gemma {
    pub window: usize,
    pub pattern: usize,
    pub rope_base_local: f32,
}

impl Config {
    /// Width of the query projection (heads × head size; not always `hidden`).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// A sliding-window (local) layer, and its window.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.gemma
            .as_ref()
            .filter(|g| !(layer + 1).is_multiple_of(g.pattern))
            .map(|g| g.window)
    }

    /// RoPE on halves (NeoX) rather than interleaved pairs.
    pub fn neox_rope(&self) -> bool {
        self.family != "llama"
    }
}

/// One transformer block's weights: matrices `M`, vectors (norms, biases) `V` — candle's
/// matrices and tensors (`llama.rs`), or for the CPU pass (`cpu/forward.rs`) our matrices and `f32`
/// vectors.
pub(crate) struct Layer<M, V> {
    pub attn_norm: V,
    pub q: M,
    pub k: M,
    pub v: M,
    /// q, k, v biases (qwen2).
    pub bias: Option<[V; 3]>,
    /// Gemma 3's q / k norms and post-attention / post-FFN norms.
    pub extra: Option<[V; 4]>,
    pub o: M,
    pub ffn_norm: V,
    pub gate: M,
    pub up: M,
    pub down: M,
}
