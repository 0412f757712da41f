//! Argument binding against each stage's `ParamSpec`s, and the dependency-cycle check.

use super::*;

impl Resolver {
    pub(super) fn bind_all(&mut self) {
        for (idx, call) in std::mem::take(&mut self.sources) {
            self.bind(idx, &call, &[]);
        }
        for p in std::mem::take(&mut self.pending) {
            self.bind(p.node, &p.call, &p.env);
        }
    }

    pub(super) fn bind(&mut self, idx: NodeIdx, call: &Call, env: &[(String, Untyped, Span)]) {
        let stage = self.nodes[idx].sig;
        let kind = stage.kind;
        let specs = &stage.params;
        let signature = || {
            format!(
                "{kind}({})",
                specs.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
            )
        };
        let mut given: BTreeMap<&str, &Expr> = BTreeMap::new();
        let mut positional = 0;
        // Parameters that default to a pipeline setting (device, seed, cpu_power, …) are given
        // by name only: positions stop before the first of them.
        let positional_max = specs
            .iter()
            .take_while(|p| !matches!(p.default, spec::Default::Setting(..)))
            .count();
        for a in &call.args {
            match &a.name {
                None => {
                    let Some(spec) = specs
                        .get(positional)
                        .filter(|_| positional < positional_max)
                    else {
                        self.diags.push(
                            Diagnostic::at(
                                a.value.span,
                                format!(
                                    "too many arguments for `{kind}`: it takes at most \
                                     {positional_max} without names"
                                ),
                                "extra argument",
                            )
                            .with_hint(format!("the parameters are {}", signature())),
                        );
                        positional += 1;
                        continue;
                    };
                    positional += 1;
                    given.insert(spec.name, &a.value);
                }
                Some(n) if n.name == "id" && stage.role == Role::Stage => {}
                Some(n) => {
                    let Some(spec) = specs.iter().find(|p| p.name == n.name) else {
                        self.diags.push(
                            Diagnostic::at(
                                n.span,
                                format!("`{kind}` has no parameter `{}`", n.name),
                                "unknown parameter",
                            )
                            .suggest(&n.name, specs.iter().map(|p| p.name))
                            .with_hint(format!("the parameters are {}", signature())),
                        );
                        continue;
                    };
                    if given.insert(spec.name, &a.value).is_some() {
                        self.diags.push(Diagnostic::at(
                            n.span,
                            format!("argument `{}` is given twice", n.name),
                            "given again here",
                        ));
                    }
                }
            }
        }
        let mut params = BTreeMap::new();
        for spec in specs {
            if let Some(e) = given.get(spec.name) {
                if let Some(v) = self.typed(e, env, spec, kind) {
                    params.insert(spec.name.to_string(), v);
                }
                continue;
            }
            match &spec.default {
                Default::Required => self.diags.push(
                    Diagnostic::at(
                        call.span,
                        format!("`{kind}` needs the argument `{}` ({})", spec.name, spec.doc),
                        format!("`{}` missing", spec.name),
                    )
                    .with_hint(format!("the parameters are {}", signature())),
                ),
                Default::Optional => {}
                Default::Value(v) => {
                    params.insert(spec.name.to_string(), v.clone());
                }
                Default::Setting(keys, fallback) => {
                    if let Some(v) = keys
                        .iter()
                        .find_map(|k| self.setting_values.get(*k))
                        .or(fallback.as_ref())
                    {
                        params.insert(spec.name.to_string(), v.clone());
                    }
                }
            }
        }
        let mut deps = vec![];
        for v in params.values() {
            v.nodes(&mut deps);
        }
        let mut seen = HashSet::new();
        deps.retain(|d| seen.insert(*d));
        let node = &mut self.nodes[idx];
        node.params = params;
        node.deps = deps;
    }

    pub(super) fn check_cycles(&mut self) {
        let mut g = petgraph::graph::DiGraph::<NodeIdx, ()>::new();
        let ix: Vec<_> = (0..self.nodes.len()).map(|i| g.add_node(i)).collect();
        for (i, n) in self.nodes.iter().enumerate() {
            for d in &n.deps {
                g.add_edge(ix[*d], ix[i], ());
            }
        }
        for scc in petgraph::algo::tarjan_scc(&g) {
            let self_loop = scc.len() == 1 && self.nodes[g[scc[0]]].deps.contains(&g[scc[0]]);
            if scc.len() < 2 && !self_loop {
                continue;
            }
            let mut members: Vec<NodeIdx> = scc.iter().map(|x| g[*x]).collect();
            members.sort();
            let names: Vec<&str> = members.iter().map(|m| self.nodes[*m].id.as_str()).collect();
            let mut d = Diagnostic::at(
                self.nodes[members[0]].span,
                format!("dependency cycle: {} → {}", names.join(" → "), names[0]),
                "this stage depends on itself through the cycle",
            );
            for m in &members[1..] {
                d = d.with_secondary(self.nodes[*m].span, "part of the cycle");
            }
            self.diags.push(d.with_hint(
                "a stage cannot use its own output; check which result each call refers to",
            ));
        }
    }
}
