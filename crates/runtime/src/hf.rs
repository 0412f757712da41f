//! Hugging Face model folders (config.json, *.safetensors with an optional index, tokenizer.json,
//! tokenizer_config.json) → GGUF, for the `llama` and `qwen2` architectures, as llama.cpp's
//! converter writes them: tensor names mapped, llama q/k rows permuted for interleaved RoPE,
//! tokenizer vocabulary, merges, token types, special ids, pre-tokenizer type and chat template in
//! the metadata. Everything downstream (runtime, quantize) then reads GGUF only.

use super::gguf::{ArchMeta, Requantized, write_file};
use anyhow::{Context, Result, bail};
use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::{DType, Device, Tensor};
use serde_json::Value as J;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The fields of config.json the conversion needs.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub family: &'static str,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub layers: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub eps: f64,
    pub rope_theta: f64,
    pub context: usize,
    pub tied: bool,
}

fn read_json(path: &Path) -> Result<J> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub fn read_config(dir: &Path) -> Result<HfConfig> {
    let path = dir.join("config.json");
    let c = read_json(&path)?;
    let arch = c["architectures"][0].as_str().unwrap_or("");
    let family = match arch {
        "LlamaForCausalLM" => "llama",
        "Qwen2ForCausalLM" => "qwen2",
        other => bail!(
            "{}: architecture `{other}` is not supported (supported: LlamaForCausalLM, Qwen2ForCausalLM)",
            path.display()
        ),
    };
    let n = |k: &str| -> Result<usize> {
        c[k].as_u64()
            .map(|x| x as usize)
            .with_context(|| format!("{}: `{k}` is missing or not a number", path.display()))
    };
    let heads = n("num_attention_heads")?;
    Ok(HfConfig {
        family,
        hidden: n("hidden_size")?,
        heads,
        kv_heads: n("num_key_value_heads").unwrap_or(heads),
        layers: n("num_hidden_layers")?,
        ffn: n("intermediate_size")?,
        vocab: n("vocab_size")?,
        eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-5),
        rope_theta: c["rope_theta"].as_f64().unwrap_or(10_000.0),
        context: n("max_position_embeddings").unwrap_or(4096),
        tied: c["tie_word_embeddings"].as_bool().unwrap_or(false),
    })
}

/// The safetensors files of a folder: those named by model.safetensors.index.json, else all.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index.exists() {
        let j = read_json(&index)?;
        let map = j["weight_map"]
            .as_object()
            .with_context(|| format!("{}: no weight_map", index.display()))?;
        let mut names: Vec<&str> = map.values().filter_map(J::as_str).collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|n| dir.join(n)).collect()
    } else {
        std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect()
    };
    files.sort();
    if files.is_empty() {
        bail!("{} has no *.safetensors weights", dir.display());
    }
    Ok(files)
}

/// HF tensor name → GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    if hf == "model.embed_tokens.weight" {
        return Some("token_embd.weight".into());
    }
    if hf == "model.norm.weight" {
        return Some("output_norm.weight".into());
    }
    if hf == "lm_head.weight" {
        return Some("output.weight".into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let name = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}.{kind}"))
}

/// llama.cpp's q/k row permutation for llama (HF's rotate-half layout → interleaved pairs):
/// rows viewed as (heads, 2, head_dim/2) are swapped to (heads, head_dim/2, 2).
pub fn permute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    Ok(w.reshape((heads, 2, rows / heads / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The inverse of [`permute_qk`] (GGUF layout → HF layout).
pub fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    Ok(w.reshape((heads, rows / heads / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// GGUF tokenizer metadata from tokenizer.json and tokenizer_config.json.
fn tokenizer_metadata(dir: &Path, vocab_size: usize) -> Result<Vec<(String, gguf_file::Value)>> {
    use gguf_file::Value as V;
    let path = dir.join("tokenizer.json");
    let t = read_json(&path)?;
    if t["model"]["type"].as_str() != Some("BPE") {
        bail!("{}: only BPE tokenizers are supported", path.display());
    }
    let vocab = t["model"]["vocab"]
        .as_object()
        .with_context(|| format!("{}: no model.vocab", path.display()))?;
    let mut tokens: BTreeMap<usize, (String, i32)> = vocab
        .iter()
        .filter_map(|(tok, id)| id.as_u64().map(|id| (id as usize, (tok.clone(), 1))))
        .collect();
    for a in t["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) {
            let ty = if a["special"].as_bool() == Some(true) {
                3
            } else {
                4
            };
            tokens.insert(id as usize, (content.to_string(), ty));
        }
    }
    let n = vocab_size.max(tokens.keys().next_back().map(|k| k + 1).unwrap_or(0));
    let (mut names, mut types) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (name, ty) = tokens
            .remove(&i)
            .unwrap_or_else(|| (format!("[PAD{i}]"), 5));
        names.push(V::String(name));
        types.push(V::I32(ty));
    }
    let merges: Vec<V> = t["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            J::String(s) => Some(s.clone()),
            J::Array(pair) => Some(format!(
                "{} {}",
                pair.first()?.as_str()?,
                pair.get(1)?.as_str()?
            )),
            _ => None,
        })
        .map(V::String)
        .collect();
    let pre = pre_type(&t["pre_tokenizer"])
        .with_context(|| format!("{}: unrecognised pre-tokenizer", path.display()))?;
    let config = read_json(&dir.join("tokenizer_config.json")).unwrap_or(J::Null);
    let id_of = |field: &str| -> Option<u32> {
        let v = &config[field];
        let s = v.as_str().or_else(|| v["content"].as_str())?;
        names
            .iter()
            .position(|n| matches!(n, V::String(x) if x == s))
            .map(|i| i as u32)
    };
    let mut meta = vec![
        ("tokenizer.ggml.model".to_string(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), V::String(pre.into())),
        ("tokenizer.ggml.merges".to_string(), V::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            V::Bool(config["add_bos_token"].as_bool().unwrap_or(false)),
        ),
    ];
    if let Some(id) = id_of("bos_token") {
        meta.push(("tokenizer.ggml.bos_token_id".into(), V::U32(id)));
    }
    if let Some(id) = id_of("eos_token") {
        meta.push(("tokenizer.ggml.eos_token_id".into(), V::U32(id)));
    }
    if let Some(tpl) = chat_template(dir, &config)? {
        meta.push(("tokenizer.chat_template".into(), V::String(tpl)));
    }
    meta.push(("tokenizer.ggml.tokens".to_string(), V::Array(names)));
    meta.push(("tokenizer.ggml.token_type".to_string(), V::Array(types)));
    Ok(meta)
}

/// The folder's chat template, as transformers finds it: `chat_template.jinja` (what current
/// transformers saves), else tokenizer_config.json's `chat_template` — a string, or a list of
/// named templates of which the `default` one.
fn chat_template(dir: &Path, config: &J) -> Result<Option<String>> {
    let file = dir.join("chat_template.jinja");
    if file.is_file() {
        let t = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        return Ok(Some(t));
    }
    Ok(match &config["chat_template"] {
        J::String(t) => Some(t.clone()),
        J::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    })
}

/// llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer.
fn pre_type(p: &J) -> Option<&'static str> {
    let parts: Vec<&J> = match p["type"].as_str()? {
        "Sequence" => p["pretokenizers"].as_array()?.iter().collect(),
        _ => vec![p],
    };
    let kinds: Vec<&str> = parts.iter().filter_map(|x| x["type"].as_str()).collect();
    let regex = parts
        .iter()
        .find_map(|x| x["pattern"]["Regex"].as_str())
        .unwrap_or("");
    match kinds.as_slice() {
        ["ByteLevel"] => Some("gpt2"),
        ["Digits", "ByteLevel"] => Some("smollm"),
        ["Split", "ByteLevel"] if regex.contains("\\p{N}{1,3}") => Some("llama-bpe"),
        ["Split", "ByteLevel"] if regex.contains("\\p{N}|") => Some("qwen2"),
        _ => None,
    }
}

/// Converts a Hugging Face folder to a GGUF of type `target`.
pub fn to_gguf(
    dir: &Path,
    dst: &Path,
    target: GgmlDType,
    progress: &dyn Fn(u64, u64),
    cancelled: &dyn Fn() -> bool,
) -> Result<Requantized> {
    let cfg = read_config(dir)?;
    let files = weight_files(dir)?;
    // SAFETY: the weight files are memory-mapped read-only for the duration of this function;
    // like every safetensors reader we rely on nobody truncating them meanwhile.
    let st =
        unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot read the safetensors weights: {e}",
                dir.display()
            )
        })?;
    let mut names: Vec<(String, String)> = st
        .tensors()
        .into_iter()
        .filter_map(|(hf, _)| gguf_name(&hf).map(|g| (g, hf)))
        .filter(|(g, _)| !(cfg.tied && g == "output.weight"))
        .collect();
    names.sort();
    let mut report = Requantized::new(target);
    report.find_head(names.iter().map(|(g, _)| g.as_str()));
    let mut out = Vec::with_capacity(names.len());
    for (i, (gname, hf)) in names.iter().enumerate() {
        if cancelled() {
            bail!("interrupted");
        }
        let t = st
            .load(hf, &Device::Cpu)
            .map_err(|e| anyhow::anyhow!("{}: tensor `{hf}`: {e}", dir.display()))?;
        let dtype = match t.dtype() {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            other => bail!(
                "{}: tensor `{hf}` has dtype {other:?} (supported: f32, f16, bf16)",
                dir.display()
            ),
        };
        report.input(
            dtype,
            t.elem_count(),
            t.elem_count() * t.dtype().size_in_bytes(),
        );
        let mut t = t.to_dtype(DType::F32)?;
        if cfg.family == "llama" {
            if gname.ends_with("attn_q.weight") {
                t = permute_qk(&t, cfg.heads)?;
            } else if gname.ends_with("attn_k.weight") {
                t = permute_qk(&t, cfg.kv_heads)?;
            }
        }
        out.push((gname.clone(), report.encode(gname, &t)?));
        progress(i as u64 + 1, names.len() as u64);
    }
    let mut meta = ArchMeta {
        family: cfg.family,
        layers: cfg.layers,
        context: cfg.context,
        hidden: cfg.hidden,
        ffn: cfg.ffn,
        heads: cfg.heads,
        kv_heads: cfg.kv_heads,
        eps: cfg.eps as f32,
        rope_base: cfg.rope_theta as f32,
        vocab: cfg.vocab,
    }
    .metadata();
    meta.extend(tokenizer_metadata(dir, cfg.vocab)?);
    write_file(dst, meta, target, &out)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' places: chat_template.jinja first, then tokenizer_config.json's string or
    /// its list's `default` entry.
    #[test]
    fn the_chat_template_is_found_where_transformers_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let named = serde_json::json!({"chat_template": [
            {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
        assert_eq!(
            chat_template(dir.path(), &named).unwrap().as_deref(),
            Some("D")
        );
        let plain = serde_json::json!({"chat_template": "S"});
        assert_eq!(
            chat_template(dir.path(), &plain).unwrap().as_deref(),
            Some("S")
        );
        assert_eq!(chat_template(dir.path(), &J::Null).unwrap(), None);
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        assert_eq!(
            chat_template(dir.path(), &plain).unwrap().as_deref(),
            Some("J")
        );
    }

    #[test]
    fn qk_permutation_matches_llama_cpp_and_inverts() {
        // 1 head, head_dim 4, 1 column: rows [a0 a1 b0 b1] (rotate-half halves a, b) become
        // interleaved pairs [a0 b0 a1 b1], as llama.cpp's `permute` does.
        let w = Tensor::new(&[[0f32], [1.], [2.], [3.]], &Device::Cpu).unwrap();
        let p: Vec<f32> = permute_qk(&w, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(p, [0., 2., 1., 3.]);
        let w = Tensor::arange(0f32, 48., &Device::Cpu)
            .unwrap()
            .reshape((12, 4))
            .unwrap();
        let back = unpermute_qk(&permute_qk(&w, 3).unwrap(), 3).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn names_map_like_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.weight").unwrap(),
            "blk.3.attn_q.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.k_proj.bias").unwrap(),
            "blk.0.attn_k.bias"
        );
        assert_eq!(
            gguf_name("model.layers.11.post_attention_layernorm.weight").unwrap(),
            "blk.11.ffn_norm.weight"
        );
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.rotary_emb.inv_freq").is_none());
    }
}
