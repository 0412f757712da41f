//! Loop expansion (the cartesian product of a `for`'s variables), stage ids, named results.

use super::*;

impl Resolver {
    pub(super) fn expand_all(&mut self) {
        let items = std::mem::take(&mut self.items);
        let mut env = vec![];
        self.expand(&items, &mut env);
        self.items = items;
    }

    pub(super) fn expand(&mut self, items: &[Item], env: &mut Vec<(String, Untyped, Span)>) {
        for item in items {
            if self.nodes.len() > MAX_STAGES {
                return;
            }
            match item {
                Item::For(f) => self.expand_for(f, 0, env),
                Item::Stage { target, call } => self.add_stage(target.as_ref(), call, env),
                _ => {}
            }
        }
    }

    pub(super) fn expand_for(
        &mut self,
        f: &ForLoop,
        binding: usize,
        env: &mut Vec<(String, Untyped, Span)>,
    ) {
        let Some((var, list)) = f.bindings.get(binding) else {
            self.expand(&f.body, env);
            return;
        };
        if let Some((_, span)) = self.globals.get(&var.name) {
            self.diags.push(
                Diagnostic::at(
                    var.span,
                    format!(
                        "loop variable `{}` hides a declaration of the same name",
                        var.name
                    ),
                    "rename this variable",
                )
                .with_secondary(*span, "declared here"),
            );
            return;
        }
        if env.iter().any(|(n, _, _)| *n == var.name)
            || f.bindings[..binding]
                .iter()
                .any(|(v, _)| v.name == var.name)
        {
            self.diags.push(Diagnostic::at(
                var.span,
                format!(
                    "loop variable `{}` is already bound by an enclosing loop",
                    var.name
                ),
                "rename this variable",
            ));
            return;
        }
        let values = match self.eval(list, env) {
            Ok(Untyped::List(xs)) => xs,
            Ok(other) => {
                self.diags.push(
                    Diagnostic::at(
                        list.span,
                        format!("`for` needs a list, found {}", raw_noun(&other)),
                        "not a list",
                    )
                    .with_hint(format!("write `for {} in [a, b, c]`", var.name)),
                );
                return;
            }
            Err(d) => {
                self.diags.push(d);
                return;
            }
        };
        for (value, span) in values {
            if self.nodes.len() > MAX_STAGES {
                self.diags.push(Diagnostic::at(
                    f.span,
                    format!("this pipeline expands to more than {MAX_STAGES} stages"),
                    "in this loop",
                ));
                return;
            }
            env.push((var.name.clone(), value, span));
            self.expand_for(f, binding + 1, env);
            env.pop();
        }
    }

    pub(super) fn label(&self, raw: &Untyped) -> String {
        match raw {
            Untyped::Str(s) | Untyped::Word(s) => s.clone(),
            Untyped::Int(i) => i.to_string(),
            Untyped::Float(f) => f.to_string(),
            Untyped::Bool(b) => b.to_string(),
            Untyped::Quantity(v, u) => format!("{v}{}", u.name),
            Untyped::Node(n) => {
                let id = &self.nodes[*n].id;
                id.split_once(':')
                    .map(|(_, n)| n.to_string())
                    .unwrap_or_else(|| id.clone())
            }
            Untyped::List(xs) => format!(
                "[{}]",
                xs.iter()
                    .map(|(x, _)| self.label(x))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Untyped::Call(f, xs) => format!(
                "{f}({})",
                xs.iter()
                    .map(|(n, x, _)| match n {
                        Some(n) => format!("{}={}", n.name, self.label(x)),
                        None => self.label(x),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    pub(super) fn add_stage(
        &mut self,
        target: Option<&Target>,
        call: &Call,
        env: &[(String, Untyped, Span)],
    ) {
        let signatures = self.signatures;
        let stage = match signatures.get(&call.func.name) {
            Some(s) if s.role == Role::Stage => s,
            found => {
                let kinds: Vec<&str> = signatures
                    .iter()
                    .filter(|s| s.role == Role::Stage)
                    .map(|s| s.kind)
                    .collect();
                let mut d = Diagnostic::at(
                    call.func.span,
                    format!("unknown stage `{}`", call.func.name),
                    "not a stage",
                )
                .suggest(&call.func.name, kinds.iter().copied());
                d = if let Some(s) = found {
                    d.with_hint(format!(
                        "`{}` declares a {}: write `{} NAME = {}(...)`",
                        s.kind,
                        s.output.noun(),
                        s.output.noun(),
                        s.kind
                    ))
                } else {
                    d.with_hint(format!("stages: {}", kinds.join(", ")))
                };
                self.diags.push(d);
                return;
            }
        };
        // `id = "name"` replaces the kind in the instance id.
        let mut base = stage.kind.to_string();
        for a in &call.args {
            if a.name.as_ref().is_some_and(|n| n.name == "id") {
                match &a.value.kind {
                    ExprKind::Str(s) if !s.is_empty() && !s.contains(['[', ']', ':']) => {
                        base = s.clone()
                    }
                    _ => self.diags.push(
                        Diagnostic::at(
                            a.value.span,
                            "`id` must be a non-empty string without `[`, `]` or `:`",
                            "invalid id",
                        )
                        .with_hint("e.g. id = \"requant\""),
                    ),
                }
            }
        }
        // Ids: a named result is `name[its index]`; an unnamed call is `kind[loop values]`.
        let target_key = match target {
            Some(t) => match self.index_labels(&t.index, env) {
                Some(key) => Some(key),
                None => return,
            },
            None => None,
        };
        let labels: Vec<String> = match (target, &target_key) {
            (Some(t), Some(key)) if base == stage.kind => {
                base = t.name.name.clone();
                key.clone()
            }
            _ => env.iter().map(|(_, v, _)| self.label(v)).collect(),
        };
        let id = if labels.is_empty() {
            base
        } else {
            format!("{base}[{}]", labels.join(","))
        };
        let idx = self.nodes.len();
        if let Some(first) = self.ids.get(&id) {
            self.diags.push(
                Diagnostic::at(
                    call.span,
                    format!("two stages get the id `{id}`"),
                    "second stage with this id",
                )
                .with_secondary(*first, "first one")
                .with_hint(format!(
                    "name one result (`x[…] = {kind}(...)` gets the id `x[…]`) or give it an explicit id: `{kind}(..., id = \"other\")`",
                    kind = stage.kind
                )),
            );
            return;
        }
        self.ids.insert(id.clone(), call.span);
        if let (Some(t), Some(key)) = (target, target_key)
            && !self.register_target(t, key, idx)
        {
            return;
        }
        self.nodes.push(Node {
            id,
            sig: stage,
            params: BTreeMap::new(),
            deps: vec![],
            span: call.span,
            base_dir: base_dir_of(&self.map, call.span.file),
        });
        self.pending.push(Pending {
            node: idx,
            call: call.clone(),
            env: env.to_vec(),
        });
    }

    /// Labels of index expressions (`v[t, q]` → `["qa", "f16"]`); a diagnostic on error.
    pub(super) fn index_labels(
        &mut self,
        index: &[Expr],
        env: &[(String, Untyped, Span)],
    ) -> Option<Vec<String>> {
        let mut labels = vec![];
        for e in index {
            match self.eval(e, env) {
                Ok(r) => labels.push(self.label(&r)),
                Err(d) => {
                    self.diags.push(d);
                    return None;
                }
            }
        }
        Some(labels)
    }

    pub(super) fn register_target(&mut self, t: &Target, key: Vec<String>, idx: NodeIdx) -> bool {
        if let Some((_, span)) = self.globals.get(&t.name.name) {
            self.diags.push(
                Diagnostic::at(
                    t.name.span,
                    format!("`{}` is already declared", t.name.name),
                    "stage result with a declared name",
                )
                .with_secondary(*span, "declared here")
                .with_hint("give the stage result another name"),
            );
            return false;
        }
        let table = self
            .targets
            .entry(t.name.name.clone())
            .or_insert_with(|| TargetTable {
                arity: key.len(),
                first: t.span,
                entries: BTreeMap::new(),
            });
        if table.arity != key.len() {
            let (arity, first) = (table.arity, table.first);
            self.diags.push(
                Diagnostic::at(
                    t.span,
                    format!(
                        "`{}` is used with {} indices here but {} before",
                        t.name.name,
                        key.len(),
                        arity
                    ),
                    "different number of indices",
                )
                .with_secondary(first, "first assigned here"),
            );
            return false;
        }
        if let Some(prev) = table.entries.insert(key.clone(), idx) {
            table.entries.insert(key.clone(), prev);
            let shown = if key.is_empty() {
                t.name.name.clone()
            } else {
                format!("{}[{}]", t.name.name, key.join(", "))
            };
            let first = self.nodes[prev].span;
            self.diags.push(
                Diagnostic::at(
                    t.span,
                    format!("`{shown}` is assigned twice"),
                    "assigned again here",
                )
                .with_secondary(first, "first assigned by this stage")
                .with_hint(
                    "index the result by every loop variable that changes it, e.g. `v[t, q] = ...`",
                ),
            );
            return false;
        }
        true
    }
}
