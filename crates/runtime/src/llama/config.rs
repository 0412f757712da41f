//! The architecture from a GGUF's metadata, and the RoPE tables.

use super::*;

/// The architecture read from a GGUF's metadata (`vocab` from the embedding's shape).
pub(crate) fn read_config(g: &Gguf) -> Result<Config> {
    let arch = g
        .metadata_str("general.architecture")
        .unwrap_or("?")
        .to_string();
    if !matches!(arch.as_str(), "llama" | "qwen2" | "gemma3") {
        bail!(
            "architecture `{arch}` is not supported by this runtime yet (supported: llama, \
             qwen2, gemma3)"
        );
    }
    let meta = &g.content.metadata;
    let get = |k: &str| -> Result<u32> {
        meta.get(&format!("{arch}.{k}"))
            .and_then(|v| v.to_u32().ok())
            .with_context(|| format!("the GGUF lacks {arch}.{k}"))
    };
    let hidden = get("embedding_length")? as usize;
    let n_head = get("attention.head_count")? as usize;
    let n_kv_head = get("attention.head_count_kv").unwrap_or(n_head as u32) as usize;
    let n_layer = get("block_count")? as usize;
    let context = get("context_length").unwrap_or(4096) as usize;
    let eps = meta
        .get(&format!("{arch}.attention.layer_norm_rms_epsilon"))
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(1e-5) as f64;
    let rope_base = meta
        .get(&format!("{arch}.rope.freq_base"))
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(10_000.0);
    if n_head == 0
        || n_kv_head == 0
        || !n_head.is_multiple_of(n_kv_head)
        || (meta.get(&format!("{arch}.attention.key_length")).is_none()
            && !hidden.is_multiple_of(n_head))
    {
        bail!(
            "inconsistent attention shape: {n_head} heads, {n_kv_head} KV heads, hidden {hidden}"
        );
    }
    let head_dim = get("attention.key_length").map_or(hidden / n_head, |d| d as usize);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        bail!("head size {head_dim} cannot take RoPE");
    }
    let gemma = (arch == "gemma3").then(|| Gemma {
        window: get("attention.sliding_window").map_or(512, |w| w as usize),
        pattern: 6,
        rope_base_local: 10_000.0,
    });
    let vocab = g
        .content
        .tensor_infos
        .get("token_embd.weight")
        .context("the GGUF has no token_embd.weight")?
        .shape
        .dims()[0];
    Ok(Config {
        n_layer,
        n_head,
        n_kv_head,
        hidden,
        head_dim,
        vocab,
        eps,
        rope_base,
        context,
        family: arch,
        gemma,
    })
}

/// RoPE angle tables `[context, head_dim / 2]`: (cos, sin).
pub(crate) fn rope_tables(c: &Config) -> Result<(Tensor, Tensor)> {
    rope_tables_with(c, c.rope_base)
}

/// RoPE tables for the local layers (Gemma 3), if the model has any.
pub(crate) fn local_rope_tables(c: &Config) -> Result<Option<(Tensor, Tensor)>> {
    c.gemma
        .as_ref()
        .map(|g| rope_tables_with(c, g.rope_base_local))
        .transpose()
}

pub(super) fn rope_tables_with(c: &Config, base: f32) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..c.head_dim / 2)
        .map(|i| 1.0 / base.powf(2.0 * i as f32 / c.head_dim as f32))
        .collect();
    let inv = Tensor::new(inv.as_slice(), &Device::Cpu)?;
    let pos = Tensor::arange(0u32, c.context as u32, &Device::Cpu)?.to_dtype(DType::F32)?;
    let freqs = pos.unsqueeze(1)?.broadcast_mul(&inv.unsqueeze(0)?)?;
    Ok((freqs.cos()?, freqs.sin()?))
}
