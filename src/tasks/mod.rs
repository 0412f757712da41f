//! Task records and prompts. Three record formats, the paper's:
//! - `extractive_qa` (SQuAD): `id`, `title`, `context`, `question`, `answers{text[], answer_start[]}`;
//! - `summarize` (XSum): `document`, `summary`, `id`;
//! - `chat` (UltraChat): `prompt`, `prompt_id`, `messages[{role, content}]`; the last assistant
//!   turn is the reference and the conversation before it is the input.
//!
//! A task's [`Prompting`] makes each record a conversation: the user turn from a template with the
//! record's fields (the kind's default [`template`], a task's own `prompt = "…"`, or the paper's
//! preset), an optional system turn, and whether the model's chat template renders it (else the
//! text is a completion prompt). The prompting is part of the task's digest, so every stage that
//! prompts a model reruns when it changes; [`TEMPLATE_VERSION`] covers how prompts are rendered.

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

/// The default prompt template of a kind (`{messages}`: a chat record's conversation as it is).
pub fn template(kind: &str) -> &'static str {
    match kind {
        "extractive_qa" => QA_TEMPLATE,
        "summarize" => SUMM_TEMPLATE,
        _ => "{messages}",
    }
}

/// The record fields a kind's prompt template may name (`chat`: `user`, the conversation's last
/// user turn).
pub fn fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "extractive_qa" => &["context", "question", "title"],
        "summarize" => &["document"],
        _ => &["user"],
    }
}

/// How a task's records become prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompting {
    /// The user turn, `{field}` placeholders filled from the record ([`fields`]); `None`: the
    /// kind's default ([`template`]; a chat record's whole conversation).
    pub template: Option<String>,
    /// A system turn put before the conversation (with the chat template), or before the text
    /// followed by a blank line (without it).
    pub system: Option<String>,
    /// Render the turns with the model's chat template; else the text is sent as it is, a
    /// completion prompt (what the paper's vLLM runs did).
    pub chat_template: bool,
    /// The `date_string` the chat template sees (Llama 3.2's "Today Date"); `None`: the
    /// template's own choice, which for Llama 3.2 is today's date (`strftime_now`), as in
    /// transformers.
    pub date: Option<String>,
}

/// The system prompts of the paper's `run_inference.py`, by kind.
const PAPER_SYSTEM: [(&str, &str); 3] = [
    (
        "extractive_qa",
        "You are a factual assistant. Use ONLY the provided context to answer the question.",
    ),
    (
        "summarize",
        "Write exactly one sentence that summarizes the most important event.",
    ),
    ("chat", "You are a helpful AI assistant."),
];

impl Prompting {
    /// A named preset: `default` (the kind's template through the model's chat template) or
    /// `paper` (the EDGE-EVAL paper's completion prompts, no chat template: `{system}\n\nContext:
    /// {context}\n\nQuestion: {question}\n\nAnswer:`, `… Article: {document}\n\nSummary:`, `…
    /// User: {user}\n\nAssistant:`).
    pub fn preset(name: &str, kind: &str) -> Result<Prompting> {
        Ok(match name {
            "default" => Prompting {
                template: None,
                system: None,
                chat_template: true,
                date: None,
            },
            "paper" => {
                let body = match kind {
                    "extractive_qa" => "Context: {context}\n\nQuestion: {question}\n\nAnswer:",
                    "summarize" => "Article: {document}\n\nSummary:",
                    _ => "User: {user}\n\nAssistant:",
                };
                let system = PAPER_SYSTEM
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or("", |(_, s)| s);
                Prompting {
                    template: Some(body.into()),
                    system: Some(system.into()),
                    chat_template: false,
                    date: None,
                }
            }
            other => bail!("unknown prompt preset `{other}` (known: default, paper)"),
        })
    }

    /// Every `{placeholder}` of the template is a field of `kind`'s records.
    pub fn check(&self, kind: &str) -> Result<()> {
        let Some(t) = &self.template else {
            return Ok(());
        };
        let known = fields(kind);
        let mut rest = t.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                break;
            };
            let name = &after[..close];
            if !known.contains(&name) {
                bail!(
                    "the prompt names `{{{name}}}`, which {kind} records do not have (fields: {})",
                    known
                        .iter()
                        .map(|f| format!("{{{f}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            rest = &after[close + 1..];
        }
        Ok(())
    }

    /// The user turn of a record whose fields are `values`, from the task's template or
    /// `default`.
    /// In one pass over the template, so that a record's text holding `{question}` is not
    /// substituted into.
    fn user_turn(&self, default: &str, values: &[(&str, &str)]) -> String {
        let template = self.template.as_deref().unwrap_or(default);
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let value = after.find('}').and_then(|close| {
                Some((close, values.iter().find(|(k, _)| *k == &after[..close])?))
            });
            match value {
                Some((close, (_, v))) => {
                    out.push_str(v);
                    rest = &after[close + 1..];
                }
                None => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The conversation a sample sends: the system turn (if any) and `turns`.
    fn conversation(&self, turns: Vec<Message>) -> Vec<Message> {
        match &self.system {
            Some(sys) if turns.first().is_none_or(|m| m.role != "system") => {
                let mut out = vec![Message::new("system", sys)];
                out.extend(turns);
                out
            }
            _ => turns,
        }
    }

    /// As recorded in the task's artifact (and so in every prompting stage's key).
    pub fn to_json(&self) -> J {
        let mut j = serde_json::json!({
            "template": self.template,
            "system": self.system,
            "chat_template": self.chat_template,
        });
        // Only when set, so that tasks without one keep their digests.
        if let Some(d) = &self.date {
            j["date"] = J::from(d.as_str());
        }
        j
    }

    /// [`Prompting::to_json`] read back (absent: the default).
    pub fn from_json(j: Option<&J>) -> Prompting {
        let s = |k: &str| {
            j.and_then(|j| j.get(k))
                .and_then(J::as_str)
                .map(str::to_string)
        };
        Prompting {
            template: s("template"),
            system: s("system"),
            chat_template: j
                .and_then(|j| j.get("chat_template"))
                .and_then(J::as_bool)
                .unwrap_or(true),
            date: s("date"),
        }
    }

    /// The completion prompt of a conversation (without the chat template): its turns' texts,
    /// one blank line apart.
    pub fn completion_text(messages: &[Message]) -> String {
        messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
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
    /// The text an answer must be faithful to, the NLI scorers' premise: a qa record's
    /// context, a summarize record's document (none for chat).
    pub source: Option<String>,
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

/// Parses one record of `kind` into the sample `prompting` makes of it.
pub fn sample(
    kind: &str,
    prompting: &Prompting,
    rec: &J,
    file: &Path,
    line: usize,
) -> Result<Sample> {
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
            let title = rec.get("title").and_then(J::as_str).unwrap_or("");
            let values = [
                ("context", context),
                ("question", question),
                ("title", title),
            ];
            Ok(Sample {
                id: field(rec, "id", file, line)?.to_string(),
                messages: prompting
                    .conversation(vec![user(prompting.user_turn(QA_TEMPLATE, &values))]),
                references: answers,
                source: Some(context.to_string()),
            })
        }
        "summarize" => {
            let id = match rec.get("id") {
                Some(J::String(s)) => s.clone(),
                Some(J::Number(n)) => n.to_string(),
                _ => bail!(at("the record has no `id` (XSum format)")),
            };
            let document = field(rec, "document", file, line)?;
            let values = [("document", document)];
            Ok(Sample {
                id,
                messages: prompting
                    .conversation(vec![user(prompting.user_turn(SUMM_TEMPLATE, &values))]),
                references: vec![field(rec, "summary", file, line)?.to_string()],
                source: Some(document.to_string()),
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
            // With a template (or without the chat template, where turns cannot be told apart),
            // the prompt is made of the last user turn, as the paper's.
            if prompting.template.is_some() || !prompting.chat_template {
                let Some(last_user) = messages.iter().rev().find(|m| m.role == "user") else {
                    bail!(at(
                        "the conversation has no user turn before the scored answer"
                    ));
                };
                let values = [("user", last_user.content.as_str())];
                messages = vec![user(prompting.user_turn("{user}", &values))];
            }
            Ok(Sample {
                id: field(rec, "prompt_id", file, line)?.to_string(),
                messages: prompting.conversation(messages),
                references: vec![reference],
                source: None,
            })
        }
        other => bail!("unknown task kind `{other}`"),
    }
}

/// Reads every record of a JSON Lines file (blank lines skipped). Errors name file and line.
pub fn load(path: &Path, kind: &str, prompting: &Prompting) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read task data {}", path.display()))?;
    parse(&text, path, kind, prompting)
}

/// The records of JSON Lines `text` read from `path` (named in errors): every line a record of
/// `kind`, ids unique, at least one record.
pub fn parse(text: &str, path: &Path, kind: &str, prompting: &Prompting) -> Result<Vec<Sample>> {
    let mut out = vec![];
    let mut ids = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: J = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON record", path.display(), i + 1))?;
        let s = sample(kind, prompting, &rec, path, i + 1)?;
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

    fn default(kind: &str) -> Prompting {
        Prompting::preset("default", kind).unwrap()
    }

    #[test]
    fn prompts_come_from_the_tasks_template_system_turn_and_preset() {
        let p = Path::new("t.jsonl");
        let rec = json!({"id": "a", "title": "T", "context": "C", "question": "Q?",
                         "answers": {"text": ["x"], "answer_start": [0]}});
        let own = Prompting {
            template: Some("{title}: {question} ({context})".into()),
            system: Some("Be brief.".into()),
            chat_template: true,
            date: None,
        };
        own.check("extractive_qa").unwrap();
        let s = sample("extractive_qa", &own, &rec, p, 1).unwrap();
        assert_eq!(
            s.messages,
            vec![
                Message::new("system", "Be brief."),
                Message::new("user", "T: Q? (C)")
            ]
        );
        let paper = Prompting::preset("paper", "extractive_qa").unwrap();
        assert!(!paper.chat_template);
        let s = sample("extractive_qa", &paper, &rec, p, 1).unwrap();
        assert_eq!(
            Prompting::completion_text(&s.messages),
            "You are a factual assistant. Use ONLY the provided context to answer the question.\n\n\
             Context: C\n\nQuestion: Q?\n\nAnswer:"
        );
        let chat = json!({"prompt_id": "p", "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "more"}, {"role": "assistant", "content": "sure"}]});
        let s = sample(
            "chat",
            &Prompting::preset("paper", "chat").unwrap(),
            &chat,
            p,
            1,
        )
        .unwrap();
        assert_eq!(s.messages[1].content, "User: more\n\nAssistant:");
        let typo = Prompting {
            template: Some("{contxt}".into()),
            ..default("extractive_qa")
        };
        let e = typo.check("extractive_qa").unwrap_err().to_string();
        assert!(
            e.contains("`{contxt}`") && e.contains("{context}, {question}, {title}"),
            "{e}"
        );
        assert!(Prompting::preset("fancy", "chat").is_err());
        // A pinned date is recorded (and so keyed); without one the record is as before.
        assert!(own.to_json().get("date").is_none());
        let dated = Prompting {
            date: Some("26 Jul 2024".into()),
            ..own
        };
        assert_eq!(Prompting::from_json(Some(&dated.to_json())), dated);
    }

    #[test]
    fn three_formats() {
        let p = Path::new("t.jsonl");
        let qa = sample(
            "extractive_qa",
            &default("extractive_qa"),
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
            &default("summarize"),
            &json!({"document": "D", "summary": "S", "id": 35232142}),
            p,
            1,
        )
        .unwrap();
        assert_eq!(s.id, "35232142");
        assert_eq!(s.references, vec!["S"]);
        let c = sample(
            "chat",
            &default("chat"),
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
        let e = sample(
            "extractive_qa",
            &default("extractive_qa"),
            &json!({"id": "a", "context": "c"}),
            p,
            7,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("data/qa.jsonl:7") && e.contains("`question`"),
            "{e}"
        );
        let e = sample(
            "chat",
            &default("chat"),
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
        let e = format!(
            "{:#}",
            load(&f, "summarize", &default("summarize")).unwrap_err()
        );
        assert!(e.contains("x.jsonl:3: not a JSON record"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        assert!(
            load(&f, "summarize", &default("summarize"))
                .unwrap_err()
                .to_string()
                .contains("no records")
        );
    }
}
