//! Synthetic models: random weights with the exact shapes of published architectures, generated
//! deterministically from (architecture, seed, tensor name) and written as GGUF in the requested
//! type. Valid for speed, energy and memory — never for quality (no tokenizer; every record says
//! `synthetic = true`).

use super::gguf::{ArchMeta, Requantized, write_file};
use anyhow::{Result, bail};
use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::{Device, Tensor};
use std::path::Path;

/// Shape of a decoder-only transformer.
#[derive(Debug, Clone, Copy)]
pub struct Arch {
    pub name: &'static str,
    /// GGUF `general.architecture`.
    pub family: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub tied_embeddings: bool,
    pub qkv_bias: bool,
    pub rope_base: f32,
    pub context: usize,
}

/// Published configurations (config.json of each model), plus `qwen2-tiny` and `llama-tiny` for
/// tests and demos.
pub const ARCHS: &[Arch] = &[
    Arch {
        name: "llama-3.2-1b",
        family: "llama",
        layers: 16,
        hidden: 2048,
        heads: 32,
        kv_heads: 8,
        ffn: 8192,
        vocab: 128256,
        tied_embeddings: true,
        qkv_bias: false,
        rope_base: 500000.0,
        context: 131072,
    },
    Arch {
        name: "llama-3.2-3b",
        family: "llama",
        layers: 28,
        hidden: 3072,
        heads: 24,
        kv_heads: 8,
        ffn: 8192,
        vocab: 128256,
        tied_embeddings: true,
        qkv_bias: false,
        rope_base: 500000.0,
        context: 131072,
    },
    Arch {
        name: "llama-3.1-8b",
        family: "llama",
        layers: 32,
        hidden: 4096,
        heads: 32,
        kv_heads: 8,
        ffn: 14336,
        vocab: 128256,
        tied_embeddings: false,
        qkv_bias: false,
        rope_base: 500000.0,
        context: 131072,
    },
    Arch {
        name: "qwen2.5-1.5b",
        family: "qwen2",
        layers: 28,
        hidden: 1536,
        heads: 12,
        kv_heads: 2,
        ffn: 8960,
        vocab: 151936,
        tied_embeddings: true,
        qkv_bias: true,
        rope_base: 1000000.0,
        context: 32768,
    },
    Arch {
        name: "qwen2.5-3b",
        family: "qwen2",
        layers: 36,
        hidden: 2048,
        heads: 16,
        kv_heads: 2,
        ffn: 11008,
        vocab: 151936,
        tied_embeddings: true,
        qkv_bias: true,
        rope_base: 1000000.0,
        context: 32768,
    },
    Arch {
        name: "qwen2.5-7b",
        family: "qwen2",
        layers: 28,
        hidden: 3584,
        heads: 28,
        kv_heads: 4,
        ffn: 18944,
        vocab: 152064,
        tied_embeddings: false,
        qkv_bias: true,
        rope_base: 1000000.0,
        context: 32768,
    },
    // SmolLM2-135M (Hugging Face's config.json), the shape of the quickstart's model: for
    // `bench-train` and GPU runs where the real file cannot travel.
    Arch {
        name: "smollm2-135m",
        family: "llama",
        layers: 30,
        hidden: 576,
        heads: 9,
        kv_heads: 3,
        ffn: 1536,
        vocab: 49152,
        tied_embeddings: true,
        qkv_bias: false,
        rope_base: 100000.0,
        context: 8192,
    },
    Arch {
        name: "qwen2-tiny",
        family: "qwen2",
        layers: 2,
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        ffn: 512,
        vocab: 1024,
        tied_embeddings: true,
        qkv_bias: true,
        rope_base: 1000000.0,
        context: 2048,
    },
    Arch {
        name: "llama-tiny",
        family: "llama",
        layers: 2,
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        ffn: 512,
        vocab: 1024,
        tied_embeddings: true,
        qkv_bias: false,
        rope_base: 10000.0,
        context: 2048,
    },
];

/// The six models of the EDGE-EVAL study (the first entries of [`ARCH_NAMES`]).
pub const PAPER_MODELS: &[&str] = ARCH_NAMES.split_at(6).0;

/// The names of [`ARCHS`], as the language's `synthetic(...)` accepts them.
pub const ARCH_NAMES: &[&str] = &[
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3.1-8b",
    "qwen2.5-1.5b",
    "qwen2.5-3b",
    "qwen2.5-7b",
    "smollm2-135m",
    "qwen2-tiny",
    "llama-tiny",
];

pub fn arch(name: &str) -> Option<&'static Arch> {
    ARCHS.iter().find(|a| a.name == name)
}

/// GGUF tensor names and shapes (`[rows, row length]`, as candle stores them) of an architecture.
pub fn tensors(a: &Arch) -> Vec<(String, Vec<usize>)> {
    let head_dim = a.hidden / a.heads;
    let kv = a.kv_heads * head_dim;
    let mut out = vec![("token_embd.weight".to_string(), vec![a.vocab, a.hidden])];
    for i in 0..a.layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        out.push((p("attn_norm.weight"), vec![a.hidden]));
        out.push((p("attn_q.weight"), vec![a.hidden, a.hidden]));
        out.push((p("attn_k.weight"), vec![kv, a.hidden]));
        out.push((p("attn_v.weight"), vec![kv, a.hidden]));
        if a.qkv_bias {
            out.push((p("attn_q.bias"), vec![a.hidden]));
            out.push((p("attn_k.bias"), vec![kv]));
            out.push((p("attn_v.bias"), vec![kv]));
        }
        out.push((p("attn_output.weight"), vec![a.hidden, a.hidden]));
        out.push((p("ffn_norm.weight"), vec![a.hidden]));
        out.push((p("ffn_gate.weight"), vec![a.ffn, a.hidden]));
        out.push((p("ffn_up.weight"), vec![a.ffn, a.hidden]));
        out.push((p("ffn_down.weight"), vec![a.hidden, a.ffn]));
    }
    out.push(("output_norm.weight".to_string(), vec![a.hidden]));
    if !a.tied_embeddings {
        out.push(("output.weight".to_string(), vec![a.vocab, a.hidden]));
    }
    out
}

/// Deterministic values for one tensor: norms are 1, everything else uniform in ±`scale` with
/// `scale` ≈ 1/√fan_in so activations stay finite through the layers.
fn values(seed: u64, name: &str, dims: &[usize]) -> Vec<f32> {
    let n: usize = dims.iter().product();
    if name.contains("_norm") {
        return vec![1.0; n];
    }
    if name.ends_with(".bias") {
        return vec![0.01; n];
    }
    let fan_in = *dims.last().unwrap_or(&1) as f32;
    let scale = 1.0 / fan_in.sqrt();
    let mut x = blake3::hash(format!("{seed}:{name}").as_bytes()).as_bytes()[..8]
        .iter()
        .fold(0u64, |a, b| (a << 8) | u64::from(*b))
        | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Writes `arch` with weights from `seed` as a GGUF of type `target` at `dst`.
pub fn write_gguf(
    arch_name: &str,
    seed: u64,
    target: GgmlDType,
    dst: &Path,
    progress: &dyn Fn(u64, u64),
    cancelled: &dyn Fn() -> bool,
) -> Result<Requantized> {
    let Some(a) = arch(arch_name) else {
        bail!("unknown synthetic architecture `{arch_name}`")
    };
    let specs = tensors(a);
    let mut report = Requantized::new(target);
    report.find_head(specs.iter().map(|(n, _)| n.as_str()));
    let mut qtensors = Vec::with_capacity(specs.len());
    for (i, (name, dims)) in specs.iter().enumerate() {
        if cancelled() {
            bail!("interrupted");
        }
        let v = values(seed, name, dims);
        report.input("f32", v.len(), v.len() * 4);
        let t = Tensor::from_vec(v, dims.as_slice(), &Device::Cpu)?;
        qtensors.push((name.clone(), report.encode(name, &t)?));
        progress(i as u64 + 1, specs.len() as u64);
    }
    let mut meta = ArchMeta {
        family: a.family,
        layers: a.layers,
        context: a.context,
        hidden: a.hidden,
        ffn: a.ffn,
        heads: a.heads,
        kv_heads: a.kv_heads,
        eps: 1e-5,
        rope_base: a.rope_base,
        vocab: a.vocab,
    }
    .metadata();
    meta.push((
        "general.name".into(),
        gguf_file::Value::String(format!("synthetic {} seed {seed}", a.name)),
    ));
    meta.push(("edge_eval.synthetic".into(), gguf_file::Value::Bool(true)));
    write_file(dst, meta, target, &qtensors)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;
    use crate::llama::{KvCache, Llama};

    #[test]
    fn names_match_the_table() {
        assert_eq!(ARCHS.iter().map(|a| a.name).collect::<Vec<_>>(), ARCH_NAMES);
    }

    #[test]
    fn published_shapes_have_the_published_sizes() {
        let params = |n: &str| {
            tensors(arch(n).unwrap())
                .iter()
                .map(|(_, d)| d.iter().product::<usize>() as u64)
                .sum::<u64>()
        };
        // Parameter counts from the model cards (rounded): 1.24 B, 3.21 B, 8.03 B, 1.54 B, 3.09 B,
        // 7.62 B, 135 M.
        for (n, want) in [
            ("llama-3.2-1b", 1.24e9),
            ("llama-3.2-3b", 3.21e9),
            ("llama-3.1-8b", 8.03e9),
            ("qwen2.5-1.5b", 1.54e9),
            ("qwen2.5-3b", 3.09e9),
            ("qwen2.5-7b", 7.62e9),
            ("smollm2-135m", 1.35e8),
        ] {
            let got = params(n) as f64;
            assert!(
                (got / want - 1.0).abs() < 0.01,
                "{n}: {got} parameters, model card says {want}"
            );
        }
    }

    #[test]
    fn tiny_qwen2_runs_and_its_cache_matches_the_full_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.gguf");
        write_gguf("qwen2-tiny", 3, GgmlDType::F16, &path, &|_, _| {}, &|| {
            false
        })
        .unwrap();
        let m = Llama::load(&mut Gguf::open(&path).unwrap()).unwrap();
        assert_eq!(m.cfg.family, "qwen2");
        let ids = [3u32, 17, 99, 512, 7];
        let full = m
            .forward(
                &Tensor::new(&[ids], &Device::Cpu).unwrap(),
                &mut KvCache::new(m.cfg.n_layer),
            )
            .unwrap()
            .squeeze(0)
            .unwrap();
        let mut cache = KvCache::new(m.cfg.n_layer);
        for (i, id) in ids.iter().enumerate() {
            let step = m
                .forward_last(&Tensor::new(&[[*id]], &Device::Cpu).unwrap(), &mut cache)
                .unwrap()
                .squeeze(0)
                .unwrap();
            let diff: f32 = (step - full.get(i).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-3, "position {i}: {diff}");
        }
    }

    #[test]
    fn tiny_synthetic_model_is_deterministic_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a.gguf"),
            dir.path().join("b.gguf"),
            dir.path().join("c.gguf"),
        );
        let none = |_: u64, _: u64| {};
        let r = write_gguf("llama-tiny", 1, GgmlDType::Q8_0, &a, &none, &|| false).unwrap();
        write_gguf("llama-tiny", 1, GgmlDType::Q8_0, &b, &none, &|| false).unwrap();
        write_gguf("llama-tiny", 2, GgmlDType::Q8_0, &c, &none, &|| false).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
        assert!(r.fallbacks.is_empty());
        let mut g = Gguf::open(&a).unwrap();
        let m = Llama::load(&mut g).unwrap();
        let ids = Tensor::new(&[[1u32, 5, 9, 300]], &Device::Cpu).unwrap();
        let logits = m.forward(&ids, &mut KvCache::new(m.cfg.n_layer)).unwrap();
        assert_eq!(logits.dims(), &[1, 4, 1024]);
        let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
        assert!(v.iter().any(|x| *x != 0.0));
    }
}
