//! The NLI scorer's classifier against transformers: a small DeBERTa-v3 sequence classifier with
//! random weights, saved by transformers, and the token ids and logits
//! `DebertaV2ForSequenceClassification` gave on premise / hypothesis pairs
//! (`tools/nli_fixtures.py`), pairs past 512 tokens included.

use candle_core::Device;
use runtime::nli::{MAX_PAIR_TOKENS, Nli};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nli")
        .join(name)
}

fn holds_to_transformers(name: &str) {
    let dir = fixture(name);
    let nli = Nli::load_dir(&dir, &Device::Cpu).unwrap();
    assert_eq!(nli.labels, ["entailment", "neutral", "contradiction"]);
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut truncated = 0;
    for (i, c) in cases.iter().enumerate() {
        let premise = c["premise"].as_str().unwrap();
        let hypothesis = c["hypothesis"].as_str().unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(c["input_ids"].clone()).unwrap();
        assert_eq!(
            nli.encode(premise, hypothesis).unwrap(),
            want_ids,
            "{name} pair {i}: ids"
        );
        truncated += usize::from(want_ids.len() == MAX_PAIR_TOKENS);
        let want: Vec<f32> = serde_json::from_value(c["logits"].clone()).unwrap();
        let got = nli.logits(premise, hypothesis).unwrap();
        assert_eq!(got.len(), 3);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{name} pair {i}: {} tokens, max |Δlogit| {worst:.2e}",
            want_ids.len()
        );
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{name} pair {i}: logits {got:?}, transformers {want:?}"
            );
        }
        let inf = nli.infer(premise, hypothesis).unwrap();
        let best = (0..3).max_by(|&a, &b| want[a].total_cmp(&want[b])).unwrap();
        assert_eq!(inf.label, nli.labels[best], "{name} pair {i}: label");
        assert!((inf.probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    assert!(
        truncated >= 4,
        "{name}: the fixture's long pairs reach the 512-token cut"
    );
}

#[test]
fn a_deberta_v3_classifier_gives_transformers_ids_and_logits() {
    holds_to_transformers("v3");
}

#[test]
fn a_folder_that_is_no_nli_classifier_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let refusal = || {
        format!(
            "{:#}",
            Nli::load_dir(dir.path(), &Device::Cpu).err().unwrap()
        )
    };
    assert!(refusal().contains("no config.json"), "{}", refusal());
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("v3").join(f), dir.path().join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(fixture("v3").join("config.json")).unwrap();
    let cases = [
        (
            cfg.replace("\"deberta-v2\"", "\"llama\""),
            "this one is \"llama\"",
        ),
        (
            cfg.replace("\"entailment\"", "\"LABEL_0\"")
                .replace("\"contradiction\"", "\"LABEL_2\""),
            "names `entailment` and `contradiction`",
        ),
        // DeBERTa-v2-xlarge's convolution layer: refused, not a panic inside candle-transformers.
        (
            cfg.replace("\"hidden_act\"", "\"conv_kernel_size\": 3, \"hidden_act\""),
            "convolution layer",
        ),
    ];
    for (config, reason) in cases {
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let err = refusal();
        assert!(err.contains(reason), "{err}");
    }
}
