//! Task records and prompts. Three record formats, the paper's:
//! - `extractive_qa` (SQuAD): `id`, `title`, `context`, `question`, `answers{text[], answer_start[]}`;
//! - `summarize` (XSum): `document`, `summary`, `id`;
//! - `chat` (UltraChat): `prompt`, `prompt_id`, `messages[{role, content}]`; the last assistant
//!   turn is the reference and the conversation before it is the input.
//!
//! Every kind has one prompt template ([`template`]); the rendered messages go through the model's
//! chat template. The template text is part of the evaluating stages' cache keys through
//! [`TEMPLATE_VERSION`] and the template strings themselves.

use anyhow::{Context, Result, bail};
use runtime::tokenizer::Message;
use serde_json::Value as J;
use std::path::Path;

/// Bump when a template below, or how prompts are rendered, changes (the templates are also
/// hashed into keys by their text). 2: the model's chat template is executed as Jinja
/// (`runtime::chat`), with its default system turn, instead of recognised by pattern.
pub const TEMPLATE_VERSION: u32 = 2;

const QA_TEMPLATE: &str = "Answer the question using a short phrase copied from the context.\n\nContext: {context}\n\nQuestion: {question}";
const SUMM_TEMPLATE: &str = "Summarize the following article in one sentence.\n\n{document}";

/// The template texts, for cache keys.
pub fn template(kind: &str) -> &'static str {
    match kind {
        "extractive_qa" => QA_TEMPLATE,
        "summarize" => SUMM_TEMPLATE,
        _ => "{messages}",
    }
}

/// One evaluation or training item.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    /// The conversation sent to the model (rendered with its chat template).
    pub messages: Vec<Message>,
    /// Acceptable answers (the first is the training target).
    pub references: Vec<String>,
}

fn field<'a>(rec: &'a J, name: &str, file: &Path, line: usize) -> Result<&'a str> {
    rec.get(name).and_then(J::as_str).with_context(|| {
        format!(
            "{}:{line}: the record has no string field `{name}`",
            file.display()
        )
    })
}

fn user(content: String) -> Message {
    Message {
        role: "user".into(),
        content,
    }
}

/// Parses one record of `kind`.
pub fn sample(kind: &str, rec: &J, file: &Path, line: usize) -> Result<Sample> {
    let at = |what: &str| format!("{}:{line}: {what}", file.display());
    match kind {
        "extractive_qa" => {
            let context = field(rec, "context", file, line)?;
            let question = field(rec, "question", file, line)?;
            let answers: Vec<String> = rec
                .get("answers")
                .and_then(|a| a.get("text"))
                .and_then(J::as_array)
                .with_context(|| at("the record has no `answers.text` list (SQuAD format)"))?
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            if answers.is_empty() {
                bail!(at("`answers.text` is empty: nothing to score against"));
            }
            Ok(Sample {
                id: field(rec, "id", file, line)?.to_string(),
                messages: vec![user(
                    QA_TEMPLATE
                        .replace("{context}", context)
                        .replace("{question}", question),
                )],
                references: answers,
            })
        }
        "summarize" => {
            let id = match rec.get("id") {
                Some(J::String(s)) => s.clone(),
                Some(J::Number(n)) => n.to_string(),
                _ => bail!(at("the record has no `id` (XSum format)")),
            };
            Ok(Sample {
                id,
                messages: vec![user(
                    SUMM_TEMPLATE.replace("{document}", field(rec, "document", file, line)?),
                )],
                references: vec![field(rec, "summary", file, line)?.to_string()],
            })
        }
        "chat" => {
            let msgs = rec
                .get("messages")
                .and_then(J::as_array)
                .with_context(|| at("the record has no `messages` list (UltraChat format)"))?;
            let mut messages = vec![];
            for m in msgs {
                let role = m.get("role").and_then(J::as_str);
                let content = m.get("content").and_then(J::as_str);
                let (Some(role), Some(content)) = (role, content) else {
                    bail!(at("a message lacks `role` or `content`"));
                };
                messages.push(Message {
                    role: role.to_string(),
                    content: content.to_string(),
                });
            }
            let Some(last) = messages.iter().rposition(|m| m.role == "assistant") else {
                bail!(at("the conversation has no assistant turn to score"));
            };
            let reference = messages[last].content.clone();
            messages.truncate(last);
            if messages.is_empty() {
                bail!(at("the conversation has nothing before the assistant turn"));
            }
            Ok(Sample {
                id: field(rec, "prompt_id", file, line)?.to_string(),
                messages,
                references: vec![reference],
            })
        }
        other => bail!("unknown task kind `{other}`"),
    }
}

/// Reads every record of a JSON Lines file (blank lines skipped). Errors name file and line.
pub fn load(path: &Path, kind: &str) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read task data {}", path.display()))?;
    parse(&text, path, kind)
}

/// The records of JSON Lines `text` read from `path` (named in errors): every line a record of
/// `kind`, ids unique, at least one record.
pub fn parse(text: &str, path: &Path, kind: &str) -> Result<Vec<Sample>> {
    let mut out = vec![];
    let mut ids = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: J = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON record", path.display(), i + 1))?;
        let s = sample(kind, &rec, path, i + 1)?;
        if !ids.insert(s.id.clone()) {
            bail!(
                "{}:{}: sample id `{}` appears twice (ids pair samples across variants)",
                path.display(),
                i + 1,
                s.id
            );
        }
        out.push(s);
    }
    if out.is_empty() {
        bail!("{} holds no records", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn three_formats() {
        let p = Path::new("t.jsonl");
        let qa = sample(
            "extractive_qa",
            &json!({"id": "a", "title": "t", "context": "C", "question": "Q?",
                    "answers": {"text": ["x", "y"], "answer_start": [0, 0]}}),
            p,
            1,
        )
        .unwrap();
        assert_eq!(qa.references, vec!["x", "y"]);
        assert!(qa.messages[0].content.contains("Context: C"));
        assert!(qa.messages[0].content.ends_with("Question: Q?"));
        let s = sample(
            "summarize",
            &json!({"document": "D", "summary": "S", "id": 35232142}),
            p,
            1,
        )
        .unwrap();
        assert_eq!(s.id, "35232142");
        assert_eq!(s.references, vec!["S"]);
        let c = sample(
            "chat",
            &json!({"prompt": "hi", "prompt_id": "p", "messages": [
                {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "more"}, {"role": "assistant", "content": "sure"}]}),
            p,
            1,
        )
        .unwrap();
        assert_eq!(c.references, vec!["sure"]);
        assert_eq!(c.messages.len(), 3);
        assert_eq!(c.messages[2].content, "more");
    }

    #[test]
    fn bad_records_name_file_line_and_field() {
        let p = Path::new("data/qa.jsonl");
        let e = sample("extractive_qa", &json!({"id": "a", "context": "c"}), p, 7)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data/qa.jsonl:7") && e.contains("`question`"),
            "{e}"
        );
        let e = sample(
            "chat",
            &json!({"prompt_id": "p", "messages": [{"role": "user", "content": "x"}]}),
            p,
            2,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no assistant turn"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.jsonl");
        std::fs::write(
            &f,
            "{\"document\": \"d\", \"summary\": \"s\", \"id\": 1}\n\nnot json\n",
        )
        .unwrap();
        let e = format!("{:#}", load(&f, "summarize").unwrap_err());
        assert!(e.contains("x.jsonl:3: not a JSON record"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        assert!(
            load(&f, "summarize")
                .unwrap_err()
                .to_string()
                .contains("no records")
        );
    }
}
