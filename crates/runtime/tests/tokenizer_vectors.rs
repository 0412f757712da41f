//! The tokenizer agrees token for token with llama.cpp's reference vectors: the vocab-only
//! `ggml-vocab-*.gguf` files with their `.inp` / `.out` test texts, vendored in the
//! llama-cpp-python source distribution and fetched by `.ci/fetch-models.sh` into
//! `~/.cache/edge-eval/llama-vocab` (not committed: third-party files). Families: byte-level BPE
//! (gpt-2, starcoder, refact, llama-bpe, qwen2) and SentencePiece (llama-spm).

use runtime::gguf::Gguf;
use runtime::tokenizer::Tokenizer;
use std::path::PathBuf;

#[path = "../../../tests/common/mod.rs"]
mod common;

fn vocab_dir() -> Option<PathBuf> {
    common::fetched(
        "EDGE_EVAL_LLAMA_VOCAB",
        "llama-vocab",
        "ggml-vocab-gpt-2.gguf",
    )
}

/// (input, expected ids) pairs of one family.
fn cases(dir: &std::path::Path, family: &str) -> Vec<(String, Vec<u32>)> {
    let base = dir.join(format!("ggml-vocab-{family}.gguf"));
    let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).unwrap();
    let inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let outputs: Vec<&str> = out.lines().collect();
    let inputs = &inputs[..outputs.len()];
    inputs
        .iter()
        .zip(outputs)
        .map(|(i, o)| {
            (
                i.to_string(),
                o.split_whitespace().map(|t| t.parse().unwrap()).collect(),
            )
        })
        .collect()
}

fn check(family: &str) {
    let Some(dir) = vocab_dir() else { return };
    let g = Gguf::open(&dir.join(format!("ggml-vocab-{family}.gguf"))).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{family}: {e:#}"));
    let cases = cases(&dir, family);
    assert!(cases.len() > 20, "{family}: only {} cases", cases.len());
    let mut failures = vec![];
    for (text, want) in &cases {
        let got = tok.encode_plain(text).unwrap();
        if &got != want {
            failures.push(format!("{text:?}\n   want {want:?}\n   got  {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{family}: {} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn gpt2() {
    check("gpt-2");
}

#[test]
fn starcoder() {
    check("starcoder");
}

#[test]
fn refact() {
    check("refact");
}

#[test]
fn llama3() {
    check("llama-bpe");
}

#[test]
fn qwen2() {
    check("qwen2");
}

/// SentencePiece (Llama 2's vocabulary: scores, byte fallback, space prefix).
#[test]
fn llama_spm() {
    check("llama-spm");
}
