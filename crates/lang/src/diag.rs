//! Diagnostics: an error with a primary span, optional secondary spans and hints, rendered as
//!
//! ```text
//! error: unknown model `llama1b`
//!   --> study.eep:12:22
//!    |
//! 12 |   tuned[t] = finetune(llama1b, t)
//!    |                       ^^^^^^^ not a declared model
//!    = hint: did you mean `llama_1b`?
//! ```
//!
//! Rendering never fails and never prints more than a window of a long line, so a 10 MB line
//! still gives a short message.

use super::source::{SourceMap, Span, floor_char};
use std::fmt::Write;

#[derive(Debug, Clone)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub message: String,
    pub primary: Option<Label>,
    pub secondary: Vec<Label>,
    pub hints: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            primary: None,
            secondary: vec![],
            hints: vec![],
        }
    }

    /// An error at `span` with a short label under the underline.
    pub fn at(span: Span, message: impl Into<String>, label: impl Into<String>) -> Diagnostic {
        Diagnostic::error(message).with_primary(span, label)
    }

    pub fn with_primary(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.primary = Some(Label {
            span,
            text: text.into(),
        });
        self
    }

    pub fn with_secondary(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.secondary.push(Label {
            span,
            text: text.into(),
        });
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hints.push(hint.into());
        self
    }

    /// Adds "did you mean `x`?" when one of `candidates` is close to `word`.
    pub fn suggest<'a>(
        self,
        word: &str,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> Diagnostic {
        match did_you_mean(word, candidates) {
            Some(s) => self.with_hint(format!("did you mean `{s}`?")),
            None => self,
        }
    }

    fn sort_key(&self) -> (u32, u32) {
        self.primary
            .as_ref()
            .map(|l| (l.span.file.0, l.span.start))
            .unwrap_or((u32::MAX, 0))
    }

    pub fn render(&self, map: &SourceMap) -> String {
        let mut out = format!("error: {}\n", self.message);
        let labels: Vec<&Label> = self.primary.iter().chain(&self.secondary).collect();
        let gutter = labels
            .iter()
            .map(|l| {
                let f = map.get(l.span.file);
                f.line_col(l.span.start as usize).0.to_string().len()
            })
            .max()
            .unwrap_or(1);
        let pad = " ".repeat(gutter);
        for (i, label) in labels.iter().enumerate() {
            let f = map.get(label.span.file);
            let (line, col) = f.line_col(label.span.start as usize);
            let arrow = if i == 0 { "-->" } else { ":::" };
            let _ = writeln!(out, "{pad}{arrow} {}:{line}:{col}", f.name);
            let _ = writeln!(out, "{pad} |");
            let text = f.line_text(line);
            let line_start = f.line_start(line);
            let start = label.span.start as usize - line_start;
            let end = (label.span.end as usize)
                .saturating_sub(line_start)
                .min(text.len());
            let (shown, ustart, ulen) = window(text, start, end.max(start));
            let _ = writeln!(out, "{:>gutter$} | {}", line, shown);
            let marker = if i == 0 { "^" } else { "-" };
            let underline = format!("{}{}", " ".repeat(ustart), marker.repeat(ulen.max(1)));
            if label.text.is_empty() {
                let _ = writeln!(out, "{pad} | {underline}");
            } else {
                let _ = writeln!(out, "{pad} | {underline} {}", label.text);
            }
        }
        for hint in &self.hints {
            if labels.is_empty() {
                let _ = writeln!(out, "  = hint: {hint}");
            } else {
                let _ = writeln!(out, "{pad} = hint: {hint}");
            }
        }
        out
    }
}

/// Shows at most ~100 characters of a line around `[start, end)` (byte offsets), replacing tabs by
/// spaces and control characters by `?`. Returns the shown text and the underline's char offset
/// and length.
fn window(text: &str, start: usize, end: usize) -> (String, usize, usize) {
    const MAX: usize = 100;
    let start = floor_char(text, start);
    let end = floor_char(text, end);
    let before: Vec<char> = text[..start].chars().collect();
    let inside: Vec<char> = text[start..end].chars().collect();
    let after_len = text[end..].chars().count();
    let clean = |c: char| {
        if c == '\t' {
            ' '
        } else if c.is_control() {
            '?'
        } else {
            c
        }
    };
    let mut shown = String::new();
    let lead = if before.len() > MAX / 2 {
        shown.push('…');
        before.len() - MAX / 2
    } else {
        0
    };
    shown.extend(before[lead..].iter().copied().map(clean));
    let ustart = shown.chars().count();
    let ulen_full = inside.len();
    let ulen = ulen_full.min(MAX);
    shown.extend(inside[..ulen].iter().copied().map(clean));
    if ulen < ulen_full {
        shown.push('…');
    } else {
        let tail: String = text[end..].chars().take(MAX / 2).map(clean).collect();
        shown.push_str(&tail);
        if after_len > MAX / 2 {
            shown.push('…');
        }
    }
    (shown.trim_end().to_string(), ustart, ulen)
}

/// A set of diagnostics from one pass, kept in source order; each one once.
#[derive(Debug, Default)]
pub struct Diagnostics {
    list: Vec<Diagnostic>,
    /// What is in `list`, for deduplication in constant time.
    seen: std::collections::HashSet<String>,
}

/// Most diagnostics rendered; the rest are counted ("and N more").
pub const MAX_SHOWN: usize = 50;

impl Diagnostics {
    /// Adds `d` unless the same diagnostic is already there (a mistake inside a loop body is
    /// reported once, not once per iteration).
    pub fn push(&mut self, d: Diagnostic) {
        if self.seen.insert(format!("{d:?}")) {
            self.list.push(d);
        }
    }
    pub fn extend(&mut self, other: Diagnostics) {
        for d in other.list {
            self.push(d);
        }
    }
    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.list
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// The first [`MAX_SHOWN`] diagnostics in source order, then how many more there are.
    pub fn render(&self, map: &SourceMap) -> String {
        let mut ds: Vec<&Diagnostic> = self.list.iter().collect();
        ds.sort_by_key(|d| d.sort_key());
        let mut out = String::new();
        for d in ds.iter().take(MAX_SHOWN) {
            out.push_str(&d.render(map));
            out.push('\n');
        }
        let n = self.list.len();
        if n > MAX_SHOWN {
            let _ = writeln!(out, "… and {} more errors", n - MAX_SHOWN);
        }
        let _ = writeln!(
            out,
            "{n} error{} found; nothing was run",
            if n == 1 { "" } else { "s" }
        );
        out
    }
}

/// Levenshtein distance on chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a distance that scales with the word length (or a candidate that
/// equals the word once `_`/`-` and case are ignored).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let norm = |s: &str| s.to_lowercase().replace(['_', '-', '.'], "");
    let w = norm(word);
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| {
            let d = if norm(c) == w {
                0
            } else {
                edit_distance(word, c)
            };
            (d, c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, c.len()))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            did_you_mean("llama1b", ["llama_1b", "qwen"]),
            Some("llama_1b")
        );
        assert_eq!(
            did_you_mean("quantise", ["quantize", "measure"]),
            Some("quantize")
        );
        assert_eq!(did_you_mean("zzz", ["quantize", "measure"]), None);
    }

    #[test]
    fn long_lines_are_windowed() {
        let mut map = SourceMap::default();
        let line = format!("{}BAD{}", "a".repeat(10_000), "b".repeat(10_000));
        let id = map.add("x.eep".into(), None, line);
        let d = Diagnostic::at(Span::new(id, 10_000, 10_003), "bad", "here");
        let text = d.render(&map);
        assert!(text.len() < 400, "{text}");
        assert!(text.contains("BAD"));
        let caret_line = text.lines().find(|l| l.contains("^^^")).unwrap();
        let src_line = text.lines().find(|l| l.contains("BAD")).unwrap();
        assert_eq!(
            caret_line
                .find('^')
                .map(|i| caret_line[..i].chars().count()),
            src_line.find("BAD").map(|i| src_line[..i].chars().count())
        );
    }
}
