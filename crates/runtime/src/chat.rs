//! A model's chat template executed as Jinja (minijinja), the way transformers'
//! `apply_chat_template` runs it: blocks trimmed (`trim_blocks`, `lstrip_blocks`), loop controls,
//! Python's string and dict methods (`.strip()`, `.startswith()`, `.items()`…), the globals
//! Hugging Face templates call (`raise_exception`, `strftime_now`), a `tojson` that writes
//! Python's `json.dumps` (`", "` and `": "` separators, non-ASCII kept), and `bos_token` /
//! `eos_token` as the tokenizer's strings. The rendered text is tokenized with special tokens
//! parsed and nothing added (transformers tokenizes it with `add_special_tokens=False`): a BOS
//! comes from the template's `{{ bos_token }}` or not at all.

use anyhow::{Context, Result};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

/// A chat message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template and the special-token strings it is rendered with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
    /// Further variables the template reads (e.g. Llama 3's `date_string`, which it otherwise
    /// takes from `strftime_now`: today's date).
    pub variables: Vec<(String, String)>,
}

/// Gemma's chat format, for Gemma GGUF files that carry no template (llama.cpp also applies its
/// own Gemma format to them): text turns as Gemma 3's published template renders them (the
/// fixture test holds the two together), written here.
pub const GEMMA_FALLBACK: &str = "{{ bos_token }}\
{%- set prefix = '' -%}\
{%- if messages and messages[0].role == 'system' -%}\
{%- set prefix = messages[0].content + '\n\n' -%}\
{%- set messages = messages[1:] -%}\
{%- endif -%}\
{%- for m in messages -%}\
{{ '<start_of_turn>' + ('model' if m.role == 'assistant' else m.role) + '\n' }}\
{{- (prefix if loop.first else '') + (m.content | trim) + '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif -%}";

impl ChatTemplate {
    /// A template, checked to compile.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let source = without_generation_tags(source);
        environment()
            .template_from_str(&source)
            .map_err(|e| anyhow::anyhow!("the chat template does not compile: {e:#}"))?;
        Ok(ChatTemplate {
            source,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            variables: vec![],
        })
    }

    /// The template with variable `name` set to `value` for every rendering.
    pub fn with_variable(mut self, name: &str, value: &str) -> ChatTemplate {
        self.variables.push((name.into(), value.into()));
        self
    }

    /// `messages` rendered; with `add_generation_prompt`, ending where the assistant's reply
    /// starts.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &[])
    }

    /// [`ChatTemplate::render`] with further variables for this rendering (after the
    /// template's own, so they win).
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        variables: &[(&str, &str)],
    ) -> Result<String> {
        let env = environment();
        let t = env
            .template_from_str(&self.source)
            .map_err(|e| anyhow::anyhow!("the chat template does not compile: {e:#}"))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_iter([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
        ];
        for (k, v) in &self.variables {
            ctx.push((k, Value::from(v.as_str())));
        }
        for (k, v) in variables {
            ctx.push((k, Value::from(*v)));
        }
        let ctx = Value::from_iter(ctx);
        t.render(ctx)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("rendering the model's chat template")
    }

    /// The text the template writes right after an assistant turn's content (`<|im_end|>\n`,
    /// `<|eot_id|>`, `<end_of_turn>\n`): where a fine-tuned answer's end-of-turn token comes
    /// from.
    pub fn after_assistant(&self) -> Result<String> {
        const MARK: &str = "\u{1}EDGE_EVAL_ANSWER\u{1}";
        let text = self.render(
            &[Message::new("user", "q"), Message::new("assistant", MARK)],
            false,
        )?;
        let at = text
            .find(MARK)
            .context("the chat template drops the assistant's turn")?;
        Ok(text[at + MARK.len()..].to_string())
    }
}

/// `source` with transformers' `{% generation %}` … `{% endgeneration %}` tags (which mark the
/// assistant's tokens for `return_assistant_tokens_mask`, rendering their content as it is) as
/// `{% if true %}` … `{% endif %}`, whitespace control kept: minijinja has no such tag.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    // Each `{%` is looked at on its own (one inside a string literal is just text), and only a
    // whole `{%[-+] generation [-+]%}` or `endgeneration` tag is rewritten.
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        match generation_tag(tag) {
            Some((rewritten, len)) => {
                out.push_str(&rewritten);
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `tag` (starting at `{%`) as `{% if true %}` / `{% endif %}` with its whitespace control, and
/// the length it spans, when it is a `generation` or `endgeneration` tag.
fn generation_tag(tag: &str) -> Option<(String, usize)> {
    let inner = &tag[2..];
    let (lead, body) = match inner.strip_prefix(['-', '+']) {
        Some(b) => (&inner[..1], b),
        None => ("", inner),
    };
    let trimmed = body.trim_start();
    let (word, after) = if let Some(a) = trimmed.strip_prefix("endgeneration") {
        ("endif", a)
    } else if let Some(a) = trimmed.strip_prefix("generation") {
        ("if true", a)
    } else {
        return None;
    };
    let after_ws = after.trim_start();
    let (trail, close) = match after_ws.strip_prefix(['-', '+']) {
        Some(c) => (&after_ws[..1], c),
        None => ("", after_ws),
    };
    // Anything else before `%}` (`generations`, arguments) is no such tag.
    let end = close.strip_prefix("%}")?;
    Some((
        format!("{{%{lead} {word} {trail}%}}"),
        tag.len() - end.len(),
    ))
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
    env.add_filter("tojson", tojson);
    env
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(v: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    python_json(&v, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// `v` as Python's `json.dumps` writes it (maps in their order, `", "` / `": "` separators, or
/// one item per line with `indent`).
fn python_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    use minijinja::value::ValueKind as K;
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    let quoted = |s: &str| serde_json::Value::String(s.into()).to_string();
    match v.kind() {
        K::Seq | K::Iterable | K::Map => {
            let map = v.kind() == K::Map;
            let items: Vec<Value> = v.try_iter()?.collect();
            let (open, close) = if map { ('{', '}') } else { ('[', ']') };
            out.push(open);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                if map {
                    out.push_str(&quoted(&item.to_string()));
                    out.push_str(": ");
                    python_json(&v.get_item(item)?, indent, depth + 1, out)?;
                } else {
                    python_json(item, indent, depth + 1, out)?;
                }
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(close);
        }
        K::String => out.push_str(&quoted(v.as_str().unwrap_or_default())),
        K::None | K::Undefined => out.push_str("null"),
        K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        _ => out.push_str(&v.to_string()),
    }
    Ok(())
}

/// The current UTC time in a `strftime` format (`%d %b %Y` in Llama 3's templates): `%Y %y %m
/// %B %b %d %e %A %a %H %M %S %j %%`, and `%-d`/`%-m` without padding.
fn strftime_now(fmt: &str) -> Result<String, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(strftime(fmt, secs))
}

/// `secs` since the Unix epoch (UTC) in a Python `strftime` format (the directives of
/// [`strftime_now`]); also what the command line prints times with.
pub fn strftime(fmt: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil(days);
    let yday = days - civil_days(y, 1, 1) + 1;
    let (hh, mm, ss) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    let weekday = DAYS[(days.rem_euclid(7)) as usize];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut it = fmt.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = it.peek() == Some(&'-');
        if unpadded {
            it.next();
        }
        let num = |v: i64| {
            if unpadded {
                v.to_string()
            } else {
                format!("{v:02}")
            }
        };
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('m') => out.push_str(&num(m)),
            Some('d') => out.push_str(&num(d)),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&num(hh as i64)),
            Some('M') => out.push_str(&num(mm as i64)),
            Some('S') => out.push_str(&num(ss as i64)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month, day) (the proleptic Gregorian calendar).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn civil_days(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_python_strftime() {
        // 2024-07-26 12:34:56 UTC, a Friday, day 208.
        let t = 1_721_997_296;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %-d, %y %H:%M:%S %j %%", t),
            "Friday July 26, 24 12:34:56 208 %"
        );
        assert_eq!(strftime("%m/%-m", 0), "01/1");
        for days in [0, 59, 60, 365, 10_957, 19_782, -1] {
            let (y, m, d) = civil(days);
            assert_eq!(civil_days(y, m, d), days);
        }
    }

    #[test]
    fn generation_tags_render_their_content_as_transformers_does() {
        let t = ChatTemplate::new(
            "{%- for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}\
             {%- generation -%} {{ m.content }} {%- endgeneration %}{% else %}{{ m.content }}\
             {% endif %}\n{% endfor %}{% if '%}' %}.{% endif %}",
            "",
            "",
        )
        .unwrap();
        let text = t
            .render(
                &[Message::new("user", "q"), Message::new("assistant", "a")],
                false,
            )
            .unwrap();
        // transformers' render_jinja_template gives the same (trim_blocks drops the newline
        // after each `{% endif %}`).
        assert_eq!(text, "user: qassistant: a.");
        assert_eq!(
            without_generation_tags("{% generation %}x{%+ endgeneration +%}{{ '{%' }}"),
            "{% if true %}x{%+ endif +%}{{ '{%' }}"
        );
        // A `{%` inside a string before a tag does not hide the tag.
        assert_eq!(
            without_generation_tags("{{ '{%' }}{%- generation -%}y{% endgeneration %}"),
            "{{ '{%' }}{%- if true -%}y{% endif %}"
        );
        assert_eq!(
            without_generation_tags("{% set generations = 1 %}"),
            "{% set generations = 1 %}"
        );
    }

    #[test]
    fn tojson_writes_pythons_json_dumps() {
        let t = ChatTemplate::new(
            "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}",
            "",
            "",
        )
        .unwrap();
        let out = t.render(&[Message::new("user", "é \"q\"")], false).unwrap();
        assert_eq!(
            out,
            "[{\"role\": \"user\", \"content\": \"é \\\"q\\\"\"}]|{\n  \"role\": \"user\",\n  \"content\": \"é \\\"q\\\"\"\n}"
        );
    }

    #[test]
    fn templates_raise_and_use_python_methods() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}{{ messages[0].content.strip().upper() }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", " hi ")], false).unwrap(),
            "HI"
        );
        let err = t.render(&[Message::new("system", "x")], false).unwrap_err();
        assert!(format!("{err:#}").contains("user first"), "{err:#}");
        assert!(ChatTemplate::new("{% if %}", "", "").is_err());
    }
}
