//! Declarations: `model` / `task` sources, `let` values, global names.

use super::*;

impl Resolver {
    pub(super) fn declare_global(&mut self, name: &Ident, g: Global, what: &str) -> bool {
        if let Some((_, first)) = self.globals.get(&name.name) {
            self.diags.push(
                Diagnostic::at(
                    name.span,
                    format!("`{}` is declared twice", name.name),
                    format!("second {what} named `{}`", name.name),
                )
                .with_secondary(*first, "first declared here")
                .with_hint(
                    "models, tasks and `let` values share one namespace; rename one of them",
                ),
            );
            return false;
        }
        self.globals.insert(name.name.clone(), (g, name.span));
        true
    }

    pub(super) fn declare(&mut self) {
        let items = std::mem::take(&mut self.items);
        for item in &items {
            match item {
                Item::Block {
                    block,
                    name,
                    settings,
                } => {
                    if let Some(n) = name {
                        if let Some(first) = self.pipeline_span {
                            self.diags.push(
                                Diagnostic::at(
                                    n.span,
                                    "a second `pipeline` block",
                                    "second pipeline",
                                )
                                .with_secondary(first, "first declared here")
                                .with_hint(
                                    "one pipeline per run; imported files should not declare one",
                                ),
                            );
                        } else {
                            self.pipeline_name = Some(n.name.clone());
                            self.pipeline_span = Some(n.span);
                        }
                    }
                    let schema =
                        block_schema(&block.name).expect("grammar only allows known blocks");
                    for s in settings {
                        let Some(_) = schema.iter().find(|p| p.name == s.key.name) else {
                            self.diags.push(
                                Diagnostic::at(
                                    s.key.span,
                                    format!("unknown setting `{}` in `{}`", s.key.name, block.name),
                                    "not a setting of this block",
                                )
                                .suggest(&s.key.name, schema.iter().map(|p| p.name))
                                .with_hint(format!(
                                    "`{}` accepts: {}",
                                    block.name,
                                    schema.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                                )),
                            );
                            continue;
                        };
                        let key = format!("{}.{}", block.name, s.key.name);
                        if let Some((_, first)) = self.setting_exprs.get(&key) {
                            self.diags.push(
                                Diagnostic::at(
                                    s.key.span,
                                    format!("setting `{key}` is set twice"),
                                    "set again here",
                                )
                                .with_secondary(*first, "first set here"),
                            );
                            continue;
                        }
                        self.setting_exprs
                            .insert(key, (s.value.clone(), s.key.span));
                    }
                }
                Item::Model { name, source } | Item::Task { name, source } => {
                    let is_model = matches!(item, Item::Model { .. });
                    let what = if is_model { "model" } else { "task" };
                    let want = if is_model {
                        Output::Model
                    } else {
                        Output::Task
                    };
                    // The name stands for the node pushed below, so an unknown source declares
                    // nothing (found by fuzzing: the name then pointed at the next node, or past
                    // the last one).
                    let Some(sig) = self.source_kind(source, want) else {
                        continue;
                    };
                    let idx = self.nodes.len();
                    if !self.declare_global(name, Global::Node(idx), what) {
                        continue;
                    }
                    self.nodes.push(Node {
                        id: format!("{what}:{}", name.name),
                        sig,
                        params: BTreeMap::new(),
                        deps: vec![],
                        span: name.span,
                        base_dir: base_dir_of(&self.map, name.span.file),
                    });
                    self.sources.push((idx, source.clone()));
                }
                Item::Let { name, value } => {
                    let idx = self.lets.len();
                    if self.declare_global(name, Global::Let(idx), "`let` value") {
                        self.lets.push(LetDecl {
                            name: name.clone(),
                            value: value.clone(),
                        });
                    }
                }
                Item::For(_) | Item::Stage { .. } => {}
                Item::Import { .. } => unreachable!("imports are inlined while loading"),
            }
        }
        self.items = items;
    }

    pub(super) fn source_kind(&mut self, call: &Call, want: Output) -> Option<&'static Signature> {
        let signatures = self.signatures;
        let sources: Vec<&'static Signature> = signatures
            .iter()
            .filter(|s| s.role == Role::Source && s.output == want)
            .collect();
        match sources.iter().find(|s| s.kind == call.func.name) {
            Some(s) => Some(*s),
            None => {
                let names: Vec<&str> = sources.iter().map(|s| s.kind).collect();
                let noun = want.noun();
                let mut d = Diagnostic::at(
                    call.func.span,
                    format!("unknown {noun} source `{}`", call.func.name),
                    format!("not a {noun} source"),
                )
                .suggest(&call.func.name, names.iter().copied());
                if signatures
                    .get(&call.func.name)
                    .is_some_and(|s| s.role == Role::Stage)
                {
                    d = d.with_hint(format!(
                        "`{}` is a stage: write `NAME = {}(...)` as a statement, not a {noun} declaration",
                        call.func.name, call.func.name
                    ));
                } else {
                    d = d.with_hint(format!("{noun} sources: {}", names.join(", ")));
                }
                self.diags.push(d);
                None
            }
        }
    }
}
