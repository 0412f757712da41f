//! Chat templates rendered by `runtime::chat` against transformers' own rendering of the same
//! templates (fixtures written by `tools/chat_fixtures.py`): SmolLM2's and Qwen2's templates from
//! their GGUF files, Llama 3.2's and Gemma 3's as published.

use runtime::chat::{ChatTemplate, GEMMA_FALLBACK, Message};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/chat/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn messages(case: &Value) -> Vec<Message> {
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

/// Every case of fixture `name` rendered with `source` (the fixture's own template if `None`).
fn check(name: &str, source: Option<&str>) {
    let f = fixture(name);
    let s = |k: &str| f[k].as_str().unwrap();
    let mut t = ChatTemplate::new(
        source.unwrap_or(s("template")),
        s("bos_token"),
        s("eos_token"),
    )
    .unwrap();
    for (k, v) in f["variables"].as_object().unwrap() {
        t = t.with_variable(k, v.as_str().unwrap());
    }
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 8, "{name}: {} cases", cases.len());
    for (i, case) in cases.iter().enumerate() {
        let generation = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&messages(case), generation).unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap(), "{name}, case {i}");
    }
}

#[test]
fn smollm2s_template_renders_as_transformers_does_with_its_default_system_turn() {
    check("smollm2", None);
    let f = fixture("smollm2");
    let first = f["cases"][0]["rendered"].as_str().unwrap();
    assert!(
        first.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{first}"
    );
}

#[test]
fn qwen2s_template_renders_as_transformers_does() {
    check("qwen2", None);
}

#[test]
fn llama_3_2s_template_renders_as_transformers_does() {
    check("llama-3.2", None);
    // A task's pinned date is the "Today Date" the template writes.
    let f = fixture("llama-3.2");
    let t = ChatTemplate::new(f["template"].as_str().unwrap(), "", "").unwrap();
    let msgs = [Message::new("user", "hi")];
    let text = t
        .render_with(&msgs, true, &[("date_string", "01 Jan 2030")])
        .unwrap();
    assert!(text.contains("Today Date: 01 Jan 2030\n"), "{text}");
}

#[test]
fn gemma_3s_template_renders_as_transformers_does() {
    check("gemma-3", None);
}

/// The format used for Gemma files without a template renders text turns as Gemma 3's.
#[test]
fn the_gemma_fallback_renders_as_gemma_3s_template() {
    check("gemma-3", Some(GEMMA_FALLBACK));
}

#[test]
fn the_end_of_turn_text_comes_from_the_template() {
    let f = fixture("llama-3.2");
    let t = ChatTemplate::new(
        f["template"].as_str().unwrap(),
        "<|begin_of_text|>",
        "<|eot_id|>",
    )
    .unwrap();
    assert_eq!(t.after_assistant().unwrap(), "<|eot_id|>");
    let t = ChatTemplate::new(GEMMA_FALLBACK, "<bos>", "<eos>").unwrap();
    assert_eq!(t.after_assistant().unwrap(), "<end_of_turn>\n");
}
