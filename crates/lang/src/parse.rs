//! Text → [`ast`] with the pest grammar in `grammar/eep.pest`.
//!
//! Guarantees: never panics and never recurses deeper than [`MAX_NESTING`] (checked on the raw
//! text before pest runs), so hostile input ends in a diagnostic, not a stack overflow.

use super::ast::*;
use super::diag::{Diagnostic, Diagnostics};
use super::source::{FileId, Span};
use pest::Parser;
use pest::iterators::Pair;

#[derive(pest_derive::Parser)]
#[grammar = "../../../grammar/eep.pest"]
struct EepParser;

/// Deepest bracket nesting accepted; real pipelines use 3 or 4.
pub const MAX_NESTING: usize = 64;

/// Parses a whole file. Syntax errors stop at the first one (pest does not recover); errors found
/// while building the tree (bad escapes, integer overflow) are all collected.
pub fn parse_file(file: FileId, text: &str) -> Result<Vec<Item>, Diagnostics> {
    let mut diags = Diagnostics::default();
    if let Some(d) = check_nesting(file, text) {
        diags.push(d);
        return Err(diags);
    }
    pest::set_error_detail(true);
    let pairs = match EepParser::parse(Rule::file, text) {
        Ok(p) => p,
        Err(e) => {
            diags.push(syntax_error(file, text, &e));
            return Err(diags);
        }
    };
    let mut b = Builder {
        file,
        diags: &mut diags,
    };
    let mut items = vec![];
    for pair in pairs
        .into_iter()
        .next()
        .into_iter()
        .flat_map(|p| p.into_inner())
    {
        if pair.as_rule() != Rule::EOI {
            items.push(b.item(pair));
        }
    }
    if diags.is_empty() {
        Ok(items)
    } else {
        Err(diags)
    }
}

/// Parses one expression (the value of a `--set name=value` override).
pub fn parse_expr(file: FileId, text: &str) -> Result<Expr, Diagnostics> {
    let mut diags = Diagnostics::default();
    if let Some(d) = check_nesting(file, text) {
        diags.push(d);
        return Err(diags);
    }
    // Parse as the value of a setting so the same rules apply.
    let wrapped = format!("report {{ x = {text} }}");
    let offset = "report { x = ".len();
    let pairs = EepParser::parse(Rule::file, &wrapped).map_err(|e| {
        let e = e.clone();
        let pos = match e.location {
            pest::error::InputLocation::Pos(p) => p,
            pest::error::InputLocation::Span((s, _)) => s,
        }
        .saturating_sub(offset)
        .min(text.len());
        let span = Span::new(file, pos, (pos + 1).min(text.len()).max(pos));
        let mut ds = Diagnostics::default();
        ds.push(
            Diagnostic::at(span, format!("cannot read `{text}` as a value"), "here").with_hint(
                "values are written as in a pipeline file: 42, 0.5, 12 W, \"text\", name, [a, b]",
            ),
        );
        ds
    })?;
    let mut b = Builder {
        file,
        diags: &mut diags,
    };
    let item = pairs.into_iter().next().and_then(|f| f.into_inner().next());
    let expr = item
        .and_then(|block| block.into_inner().nth(1))
        .and_then(|setting| setting.into_inner().nth(1))
        .map(|e| b.expr(e));
    match expr {
        Some(mut e) if diags.is_empty() => {
            shift(&mut e, -(offset as i64));
            Ok(e)
        }
        _ => {
            if diags.is_empty() {
                diags.push(Diagnostic::error(format!(
                    "cannot read `{text}` as a value"
                )));
            }
            Err(diags)
        }
    }
}

/// Moves every span of an expression by `delta` bytes.
pub fn shift(e: &mut Expr, delta: i64) {
    let sh = |s: &mut Span| {
        s.start = (s.start as i64 + delta) as u32;
        s.end = (s.end as i64 + delta) as u32;
    };
    sh(&mut e.span);
    match &mut e.kind {
        ExprKind::List(xs) => xs.iter_mut().for_each(|x| shift(x, delta)),
        ExprKind::Quantity { unit, .. } => sh(&mut unit.span),
        ExprKind::Index { name, index } => {
            sh(&mut name.span);
            index.iter_mut().for_each(|x| shift(x, delta));
        }
        ExprKind::Call(c) => {
            sh(&mut c.span);
            sh(&mut c.func.span);
            for a in &mut c.args {
                if let Some(n) = &mut a.name {
                    sh(&mut n.span);
                }
                shift(&mut a.value, delta);
            }
        }
        _ => {}
    }
}

fn check_nesting(file: FileId, text: &str) -> Option<Diagnostic> {
    let (mut depth, mut in_str, mut in_comment, mut escaped) = (0usize, false, false, false);
    for (i, c) in text.char_indices() {
        if in_comment {
            in_comment = c != '\n';
        } else if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' | '\n' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                '#' => in_comment = true,
                '"' => in_str = true,
                '[' | '(' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Some(
                            Diagnostic::at(
                                Span::new(file, i, i + 1),
                                format!("brackets nested more than {MAX_NESTING} deep"),
                                "too deep",
                            )
                            .with_hint("flatten the expression; pipelines never need this depth"),
                        );
                    }
                }
                ']' | ')' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
}

fn describe(rule: &Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::ident | Rule::target => "a name",
        Rule::expr | Rule::number | Rule::quantity | Rule::string | Rule::boolean | Rule::list => {
            "a value"
        }
        Rule::index_ref | Rule::call => "a value",
        Rule::call_stmt | Rule::assign_stmt => "a stage call",
        Rule::import_stmt
        | Rule::pipeline_block
        | Rule::settings_block
        | Rule::model_decl
        | Rule::task_decl
        | Rule::let_decl
        | Rule::for_loop => "a declaration or stage call",
        Rule::setting => "a setting `name = value`",
        Rule::binding => "`NAME in LIST`",
        Rule::arg | Rule::kwarg => "an argument",
        Rule::kw_in => "`in`",
        Rule::kw_import
        | Rule::kw_pipeline
        | Rule::kw_model
        | Rule::kw_task
        | Rule::kw_let
        | Rule::kw_for
        | Rule::block_name => "a declaration or stage call",
        Rule::unit | Rule::unit_word => "a unit",
        _ => return None,
    })
}

fn syntax_error(file: FileId, text: &str, e: &pest::error::Error<Rule>) -> Diagnostic {
    let mut pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    // pest records rules, not punctuation, as "positives"; its parse attempts know the
    // punctuation expected further on (a missing `)` is found where the next token starts).
    let mut punctuation: Vec<String> = vec![];
    if let Some(att) = e.parse_attempts()
        && att.max_position > pos
    {
        pos = att.max_position;
        punctuation = att
            .expected_tokens()
            .into_iter()
            .map(|t| t.to_string())
            .filter(|t| [")", "]", "}", ",", "=", "(", "[", "{"].contains(&t.as_str()))
            .map(|t| format!("`{t}`"))
            .collect();
    }
    let pos = super::source::floor_char(text, pos);
    let rest = &text[pos..];
    // The token found: a word, a string start, or one character.
    let found_len = if rest.is_empty() {
        0
    } else {
        let word: usize = rest
            .char_indices()
            .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
            .map(|(i, c)| i + c.len_utf8())
            .last()
            .unwrap_or(0);
        if word > 0 {
            word
        } else {
            rest.chars().next().map(char::len_utf8).unwrap_or(0)
        }
    };
    let found = if rest.is_empty() {
        "end of file".to_string()
    } else {
        let tok = &rest[..found_len];
        if tok.chars().all(|c| !c.is_control()) {
            format!("`{tok}`")
        } else {
            format!("byte 0x{:02x}", tok.as_bytes()[0])
        }
    };
    let span = Span::new(file, pos, pos + found_len);

    // Unterminated string: an odd number of unescaped quotes before the error on its line.
    let line_start = text[..pos].rfind('\n').map(|i| i + 1).unwrap_or(0);
    if let Some(q) = unterminated_string(&text[line_start..]) {
        let at = line_start + q;
        return Diagnostic::at(
            Span::new(file, at, at + 1),
            "unterminated string",
            "this string is never closed",
        )
        .with_hint("close it with `\"` on the same line; write `\\\"` for a quote inside it");
    }

    let mut expected: Vec<&str> = if punctuation.is_empty() {
        match &e.variant {
            pest::error::ErrorVariant::ParsingError { positives, .. } => {
                positives.iter().filter_map(describe).collect()
            }
            pest::error::ErrorVariant::CustomError { .. } => vec![],
        }
    } else {
        punctuation.iter().map(String::as_str).collect()
    };
    expected.sort();
    expected.dedup();
    // What the parser was in the middle of gives the best hint.
    let before = text[..pos].trim_end();
    let hint = if before.ends_with('=') && !rest.is_empty() {
        Some(
            "a value is a number (with an optional unit), a \"string\", true/false, a name, a [list] or a call",
        )
    } else if found.starts_with("`=`") {
        Some(
            "stage results are named as `name = stage(...)` or `name[i, j] = stage(...)`; plain values need `let`",
        )
    } else if rest.starts_with('}')
        || rest.is_empty()
        || expected.contains(&"`)`")
        || expected.contains(&"`]`")
    {
        Some("check that every `(`, `[` and `{` before this point is closed")
    } else {
        None
    };
    let message = if expected.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {}, found {found}", join_or(&expected))
    };
    let mut d = Diagnostic::at(span, message, "unexpected here");
    if let Some(h) = hint {
        d = d.with_hint(h);
    }
    d
}

fn unterminated_string(line: &str) -> Option<usize> {
    let mut open = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match (open, c) {
            (None, '#') => return None,
            (None, '"') => open = Some(i),
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(_), '"') => open = None,
            (Some(_), '\n') => return open,
            _ => {}
        }
    }
    open
}

fn join_or(xs: &[&str]) -> String {
    match xs {
        [] => String::new(),
        [a] => a.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

struct Builder<'d> {
    file: FileId,
    diags: &'d mut Diagnostics,
}

impl Builder<'_> {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn item(&mut self, p: Pair<Rule>) -> Item {
        let rule = p.as_rule();
        let span = self.span(&p);
        let mut inner = p.into_inner();
        match rule {
            Rule::import_stmt => {
                inner.next(); // keyword
                let s = inner.next().expect("grammar: import has a string");
                let sspan = self.span(&s);
                let path = self.string(s);
                Item::Import { path, span: sspan }
            }
            Rule::pipeline_block => {
                let kw = inner.next().expect("grammar: keyword");
                let block = self.ident(kw);
                let name = Some(self.ident(inner.next().expect("grammar: name")));
                let settings = inner.map(|s| self.setting(s)).collect();
                Item::Block {
                    block,
                    name,
                    settings,
                }
            }
            Rule::settings_block => {
                let block = self.ident(inner.next().expect("grammar: block name"));
                let settings = inner.map(|s| self.setting(s)).collect();
                Item::Block {
                    block,
                    name: None,
                    settings,
                }
            }
            Rule::model_decl | Rule::task_decl => {
                inner.next();
                let name = self.ident(inner.next().expect("grammar: name"));
                let source = self.call(inner.next().expect("grammar: call"));
                if rule == Rule::model_decl {
                    Item::Model { name, source }
                } else {
                    Item::Task { name, source }
                }
            }
            Rule::let_decl => {
                inner.next();
                let name = self.ident(inner.next().expect("grammar: name"));
                let value = self.expr(inner.next().expect("grammar: value"));
                Item::Let { name, value }
            }
            Rule::for_loop => {
                inner.next();
                let mut bindings = vec![];
                let mut body = vec![];
                for q in inner {
                    if q.as_rule() == Rule::binding {
                        let mut b = q.into_inner();
                        let name = self.ident(b.next().expect("grammar: name"));
                        b.next(); // `in`
                        let list = self.expr(b.next().expect("grammar: list"));
                        bindings.push((name, list));
                    } else {
                        body.push(self.item(q));
                    }
                }
                Item::For(ForLoop {
                    bindings,
                    body,
                    span,
                })
            }
            Rule::assign_stmt => {
                let t = inner.next().expect("grammar: target");
                let tspan = self.span(&t);
                let mut ti = t.into_inner();
                let name = self.ident(ti.next().expect("grammar: name"));
                let index = ti.map(|e| self.expr(e)).collect();
                let call = self.call(inner.next().expect("grammar: call"));
                Item::Stage {
                    target: Some(Target {
                        name,
                        index,
                        span: tspan,
                    }),
                    call,
                }
            }
            Rule::call_stmt => Item::Stage {
                target: None,
                call: self.call(inner.next().expect("grammar: call")),
            },
            other => unreachable!("grammar: unexpected item {other:?}"),
        }
    }

    fn setting(&mut self, p: Pair<Rule>) -> Setting {
        let mut inner = p.into_inner();
        let key = self.ident(inner.next().expect("grammar: key"));
        let value = self.expr(inner.next().expect("grammar: value"));
        Setting { key, value }
    }

    fn call(&mut self, p: Pair<Rule>) -> Call {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let func = self.ident(inner.next().expect("grammar: function name"));
        let args = inner
            .map(|a| {
                let a = a.into_inner().next().expect("grammar: arg");
                if a.as_rule() == Rule::kwarg {
                    let mut k = a.into_inner();
                    let name = Some(self.ident(k.next().expect("grammar: kw")));
                    let value = self.expr(k.next().expect("grammar: value"));
                    Arg { name, value }
                } else {
                    Arg {
                        name: None,
                        value: self.expr(a),
                    }
                }
            })
            .collect();
        Call { func, args, span }
    }

    fn string(&mut self, p: Pair<Rule>) -> String {
        let span = self.span(&p);
        let body = p.into_inner().next().map(|b| b.as_str()).unwrap_or("");
        let mut out = String::with_capacity(body.len());
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                other => {
                    self.diags.push(
                        Diagnostic::at(
                            span,
                            format!(
                                "unknown escape `\\{}` in string",
                                other.map(String::from).unwrap_or_default()
                            ),
                            "in this string",
                        )
                        .with_hint("the escapes are \\\" \\\\ \\n \\t"),
                    );
                }
            }
        }
        out
    }

    fn number(&mut self, text: &str, span: Span) -> ExprKind {
        let clean = text.replace('_', "");
        if !clean.contains(['.', 'e', 'E']) {
            match clean.parse::<i64>() {
                Ok(i) => return ExprKind::Int(i),
                Err(_) => {
                    self.diags.push(Diagnostic::at(
                        span,
                        "integer out of range",
                        "larger than 9223372036854775807",
                    ));
                    return ExprKind::Int(0);
                }
            }
        }
        match clean.parse::<f64>() {
            Ok(f) if f.is_finite() => ExprKind::Float(f),
            _ => {
                self.diags.push(Diagnostic::at(
                    span,
                    "number out of range",
                    "not a finite number",
                ));
                ExprKind::Float(0.0)
            }
        }
    }

    fn expr(&mut self, p: Pair<Rule>) -> Expr {
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::number => self.number(p.as_str(), span),
            Rule::quantity => {
                let mut inner = p.into_inner();
                let num = inner.next().expect("grammar: number");
                let nspan = self.span(&num);
                let value = match self.number(num.as_str(), nspan) {
                    ExprKind::Int(i) => i as f64,
                    ExprKind::Float(f) => f,
                    _ => 0.0,
                };
                let unit = self.ident(inner.next().expect("grammar: unit"));
                ExprKind::Quantity { value, unit }
            }
            Rule::string => ExprKind::Str(self.string(p)),
            Rule::boolean => ExprKind::Bool(p.as_str() == "true"),
            Rule::list => ExprKind::List(p.into_inner().map(|e| self.expr(e)).collect()),
            Rule::call => ExprKind::Call(self.call(p)),
            Rule::index_ref => {
                let mut inner = p.into_inner();
                let name = self.ident(inner.next().expect("grammar: name"));
                let index = inner.map(|e| self.expr(e)).collect();
                ExprKind::Index { name, index }
            }
            Rule::ident => ExprKind::Name(p.as_str().to_string()),
            other => unreachable!("grammar: unexpected expression {other:?}"),
        };
        Expr { kind, span }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Item> {
        parse_file(FileId(0), text).unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn settings_separated_by_whitespace_and_units() {
        let items = parse(
            "pipeline q { device = cpu  results = \"r\"  seed = 7 }\n\
             economics { electricity = 0.12 usd/kWh api_request = 0.00125 usd cpu_power = 12W }",
        );
        let Item::Block { settings, .. } = &items[1] else {
            panic!()
        };
        assert_eq!(settings.len(), 3);
        match &settings[0].value.kind {
            ExprKind::Quantity { value, unit } => {
                assert_eq!(*value, 0.12);
                assert_eq!(unit.name, "usd/kWh");
            }
            k => panic!("{k:?}"),
        }
        assert!(
            matches!(settings[2].value.kind, ExprKind::Quantity { value, .. } if value == 12.0)
        );
        let Item::Block { settings, .. } = &items[0] else {
            panic!()
        };
        assert!(matches!(settings[2].value.kind, ExprKind::Int(7)));
    }

    #[test]
    fn loops_targets_and_calls() {
        let items = parse(
            "for t in [qa, summ], q in [f16, q4_0] {\n v[t, q] = quantize(tuned[t], q, note = \"x\")\n cold_load(v[t, q], repeats = 3) }",
        );
        let Item::For(f) = &items[0] else { panic!() };
        assert_eq!(f.bindings.len(), 2);
        assert_eq!(f.body.len(), 2);
        let Item::Stage { target, call } = &f.body[0] else {
            panic!()
        };
        assert_eq!(target.as_ref().unwrap().index.len(), 2);
        assert_eq!(call.args.len(), 3);
        assert_eq!(call.args[2].name.as_ref().unwrap().name, "note");
    }

    #[test]
    fn numbers() {
        let items = parse("let a = [15_000, 2e-4, -3, 1.5GB, 100 ms]");
        let Item::Let { value, .. } = &items[0] else {
            panic!()
        };
        let ExprKind::List(xs) = &value.kind else {
            panic!()
        };
        assert!(matches!(xs[0].kind, ExprKind::Int(15000)));
        assert!(matches!(xs[1].kind, ExprKind::Float(f) if f == 2e-4));
        assert!(matches!(xs[2].kind, ExprKind::Int(-3)));
        assert!(matches!(&xs[3].kind, ExprKind::Quantity { unit, .. } if unit.name == "GB"));
        assert!(matches!(&xs[4].kind, ExprKind::Quantity { unit, .. } if unit.name == "ms"));
    }

    #[test]
    fn hostile_inputs_end_in_errors() {
        let deep = "let x = ".to_string() + &"[".repeat(100_000);
        assert!(parse_file(FileId(0), &deep).is_err());
        let garbage: String = (0..5000u32)
            .map(|i| char::from_u32(i * 7919 % 0x7ff + 1).unwrap_or('x'))
            .collect();
        assert!(parse_file(FileId(0), &garbage).is_err());
        let long = format!("let x = \"{}", "a".repeat(10_000_000));
        assert!(parse_file(FileId(0), &long).is_err());
    }

    #[test]
    fn override_values() {
        let e = parse_expr(FileId(0), "[f16, q4_0]").unwrap();
        assert!(matches!(e.kind, ExprKind::List(ref xs) if xs.len() == 2));
        assert_eq!(e.span.start, 0);
        assert!(parse_expr(FileId(0), "[f16,").is_err());
    }
}
