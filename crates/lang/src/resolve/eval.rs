//! Expressions: evaluation in a loop environment, `let` values, typing and coercion against a parameter's `Ty`.

use super::*;

impl Resolver {
    pub(super) fn eval(
        &mut self,
        e: &Expr,
        env: &[(String, Untyped, Span)],
    ) -> Result<Untyped, Diagnostic> {
        Ok(match &e.kind {
            ExprKind::Str(s) => Untyped::Str(s.clone()),
            ExprKind::Int(i) => Untyped::Int(*i),
            ExprKind::Float(f) => Untyped::Float(*f),
            ExprKind::Bool(b) => Untyped::Bool(*b),
            ExprKind::Quantity { value, unit } => Untyped::Quantity(*value, unit.clone()),
            ExprKind::List(xs) => {
                let mut out = vec![];
                for x in xs {
                    out.push((self.eval(x, env)?, x.span));
                }
                Untyped::List(out)
            }
            ExprKind::Call(c) => {
                let mut out = vec![];
                for a in &c.args {
                    out.push((a.name.clone(), self.eval(&a.value, env)?, a.value.span));
                }
                Untyped::Call(c.func.name.clone(), out)
            }
            ExprKind::Name(name) => {
                if let Some((_, v, _)) = env.iter().rev().find(|(n, _, _)| n == name) {
                    return Ok(v.clone());
                }
                match self.globals.get(name).map(|(g, _)| *g) {
                    Some(Global::Node(i)) => Untyped::Node(i),
                    Some(Global::Let(i)) => self.eval_let(i, e.span)?,
                    None => match self.targets.get(name) {
                        Some(t) if t.arity == 0 => {
                            Untyped::Node(*t.entries.values().next().expect("registered"))
                        }
                        Some(t) => {
                            return Err(Diagnostic::at(
                                e.span,
                                format!(
                                    "`{name}` is indexed: write `{name}[…]` with {} indices",
                                    t.arity
                                ),
                                "missing index",
                            )
                            .with_secondary(t.first, "assigned here"));
                        }
                        None => Untyped::Word(name.clone()),
                    },
                }
            }
            ExprKind::Index { name, index } => {
                let mut key = vec![];
                for x in index {
                    let r = self.eval(x, env)?;
                    key.push(self.label(&r));
                }
                let Some(t) = self.targets.get(&name.name) else {
                    let known: Vec<&str> = self.targets.keys().map(String::as_str).collect();
                    return Err(Diagnostic::at(
                        name.span,
                        format!("unknown stage result `{}`", name.name),
                        "never assigned",
                    )
                    .suggest(&name.name, known.iter().copied())
                    .with_hint("assign it first: `NAME[i] = stage(...)`"));
                };
                if t.arity != key.len() {
                    return Err(Diagnostic::at(
                        e.span,
                        format!(
                            "`{}` takes {} indices, found {}",
                            name.name,
                            t.arity,
                            key.len()
                        ),
                        "wrong number of indices",
                    )
                    .with_secondary(t.first, "assigned here"));
                }
                match t.entries.get(&key) {
                    Some(i) => Untyped::Node(*i),
                    None => {
                        let known: Vec<String> = t
                            .entries
                            .keys()
                            .take(6)
                            .map(|k| format!("[{}]", k.join(", ")))
                            .collect();
                        return Err(Diagnostic::at(
                            e.span,
                            format!(
                                "no `{}[{}]`: that index was never assigned",
                                name.name,
                                key.join(", ")
                            ),
                            "not assigned",
                        )
                        .with_secondary(t.first, "assigned here")
                        .with_hint(format!(
                            "`{}` has {}{}",
                            name.name,
                            known.join(" "),
                            if t.entries.len() > 6 { " …" } else { "" }
                        )));
                    }
                }
            }
        })
    }

    pub(super) fn eval_let(&mut self, i: usize, use_span: Span) -> Result<Untyped, Diagnostic> {
        if let Some(v) = self.let_cache.get(&i) {
            return Ok(v.clone());
        }
        if self.let_active.len() >= MAX_LET_DEPTH {
            return Err(Diagnostic::at(
                use_span,
                format!("`let` values refer to each other more than {MAX_LET_DEPTH} deep"),
                "too deep",
            )
            .with_hint("write the value directly"));
        }
        if !self.let_active.insert(i) {
            return Err(Diagnostic::at(
                use_span,
                format!("`{}` is defined in terms of itself", self.lets[i].name.name),
                "cyclic `let`",
            )
            .with_secondary(self.lets[i].name.span, "defined here"));
        }
        let value = self.lets[i].value.clone();
        let r = self.eval(&value, &[]);
        self.let_active.remove(&i);
        let r = r?;
        self.let_cache.insert(i, r.clone());
        Ok(r)
    }

    /// Evaluates and types one argument; pushes a diagnostic and returns None on error.
    pub(super) fn typed(
        &mut self,
        e: &Expr,
        env: &[(String, Untyped, Span)],
        spec: &ParamSpec,
        owner: &str,
    ) -> Option<Value> {
        let raw = match self.eval(e, env) {
            Ok(r) => r,
            Err(d) => {
                self.diags.push(d);
                return None;
            }
        };
        match self.coerce(&raw, e.span, &spec.ty, spec.name, owner) {
            Ok(v) => Some(v),
            Err(d) => {
                self.diags.push(d);
                None
            }
        }
    }

    /// `slurm(...)`'s named arguments, each checked like a parameter.
    /// (Called with named arguments only.)
    #[inline(never)]
    pub(super) fn slurm_options(
        &self,
        named: &[(Option<Ident>, Untyped, Span)],
    ) -> Result<SlurmOptions, Diagnostic> {
        let schema = [
            ParamSpec::optional("partition", Ty::Str, "Slurm partition"),
            ParamSpec::optional("gpus_per_stage", Ty::int(0, 64), "GPUs per GPU stage"),
            ParamSpec::optional("cpus_per_stage", Ty::int(1, 4096), "CPUs per stage"),
            ParamSpec::optional("time", Ty::Str, "time limit per job"),
            ParamSpec::optional("account", Ty::Str, "Slurm account"),
            ParamSpec::optional(
                "sbatch_args",
                Ty::List(Box::new(Ty::Str)),
                "sbatch arguments",
            ),
        ];
        let mut o = SlurmOptions::default();
        let mut seen = std::collections::BTreeSet::new();
        for (name, raw, span) in named {
            let Some(name) = name else { continue };
            let Some(spec) = schema.iter().find(|p| p.name == name.name) else {
                return Err(Diagnostic::at(
                    name.span,
                    format!("`slurm` has no argument `{}`", name.name),
                    "unknown argument",
                )
                .suggest(&name.name, schema.iter().map(|p| p.name))
                .with_hint(
                    "slurm's arguments: partition, gpus_per_stage, cpus_per_stage, time, account, sbatch_args",
                ));
            };
            if !seen.insert(spec.name) {
                return Err(Diagnostic::at(
                    name.span,
                    format!("`{}` is given twice", name.name),
                    "repeated argument",
                ));
            }
            let v = self.coerce(raw, *span, &spec.ty, spec.name, "slurm")?;
            let text = || v.as_str().map(str::to_string);
            match spec.name {
                "partition" => o.partition = text(),
                "gpus_per_stage" => o.gpus_per_stage = v.as_i64().unwrap_or(1) as u32,
                "cpus_per_stage" => o.cpus_per_stage = v.as_i64().unwrap_or(4) as u32,
                "time" => {
                    let t = text().unwrap_or_default();
                    let ok = !t.is_empty()
                        && t.chars()
                            .all(|c| c.is_ascii_digit() || c == ':' || c == '-');
                    if !ok {
                        return Err(Diagnostic::at(
                            *span,
                            format!("`{t}` is not a Slurm time limit"),
                            "invalid time",
                        )
                        .with_hint("Slurm's forms: \"MM\", \"HH:MM:SS\", \"D-HH:MM:SS\""));
                    }
                    o.time = Some(t);
                }
                "account" => o.account = text(),
                _ => {
                    if let Value::List(xs) = &v {
                        o.sbatch_args = xs
                            .iter()
                            .filter_map(|x| x.as_str())
                            .map(str::to_string)
                            .collect();
                    }
                }
            }
        }
        Ok(o)
    }

    pub(super) fn coerce(
        &self,
        raw: &Untyped,
        span: Span,
        ty: &Ty,
        param: &str,
        owner: &str,
    ) -> Result<Value, Diagnostic> {
        let mismatch = |found: &Untyped| {
            Diagnostic::at(
                span,
                format!(
                    "wrong type for `{param}` of `{owner}`: expected {}, found {}",
                    ty.describe(),
                    self.noun(found)
                ),
                format!("expected {}", ty.describe()),
            )
        };
        Ok(match (ty, raw) {
            (Ty::Str, Untyped::Str(s)) => Value::Str(s.clone()),
            (Ty::Text(format), Untyped::Str(s)) => {
                if let Err((what, fix)) = format.check(s) {
                    return Err(Diagnostic::at(
                        span,
                        format!("`{param}` of `{owner}`: {what}"),
                        format!("expected {}", format.describe()),
                    )
                    .with_hint(fix));
                }
                Value::Str(s.clone())
            }
            (Ty::Int { min, max }, Untyped::Int(i)) => {
                if i < min || i > max {
                    return Err(range_error(
                        span,
                        param,
                        owner,
                        *i as f64,
                        *min as f64,
                        *max as f64,
                    ));
                }
                Value::Int(*i)
            }
            (Ty::Float { min, max }, Untyped::Int(_) | Untyped::Float(_)) => {
                let f = match raw {
                    Untyped::Int(i) => *i as f64,
                    Untyped::Float(f) => *f,
                    _ => unreachable!(),
                };
                if f < *min || f > *max {
                    return Err(range_error(span, param, owner, f, *min, *max));
                }
                Value::Float(f)
            }
            (Ty::Bool, Untyped::Bool(b)) => Value::Bool(*b),
            (Ty::Quantity(_), Untyped::Quantity(v, unit)) if *v < 0.0 => {
                return Err(Diagnostic::at(
                    span,
                    format!(
                        "`{param}` of `{owner}` cannot be negative: {v} {}",
                        unit.name
                    ),
                    "a negative quantity",
                )
                .with_hint("durations, powers, energies, sizes and prices are zero or more"));
            }
            (Ty::Quantity(dim), Untyped::Quantity(v, unit)) => match lookup_unit(&unit.name) {
                Some((d, factor)) if d == *dim => Value::Quantity {
                    value: v * factor,
                    dim: *dim,
                },
                Some((d, _)) => {
                    return Err(Diagnostic::at(
                        unit.span,
                        format!(
                            "wrong unit for `{param}` of `{owner}`: `{}` measures {}, but `{param}` is {}",
                            unit.name,
                            d.name(),
                            dim.name()
                        ),
                        format!("expected {}", dim.examples()),
                    ));
                }
                None => {
                    let candidates = spec::UNITS
                        .iter()
                        .filter(|(_, d, _)| d == dim)
                        .map(|(u, _, _)| *u);
                    return Err(Diagnostic::at(
                        unit.span,
                        format!("unknown unit `{}`", unit.name),
                        "not a unit",
                    )
                    .suggest(&unit.name, candidates)
                    .with_hint(format!(
                        "`{param}` is {}: write it in {}",
                        dim.name(),
                        dim.examples()
                    )));
                }
            },
            (Ty::Quantity(dim), Untyped::Int(_) | Untyped::Float(_)) => {
                return Err(Diagnostic::at(
                    span,
                    format!("`{param}` of `{owner}` needs a unit"),
                    "number without a unit",
                )
                .with_hint(format!(
                    "{} is written with a unit: {}",
                    dim.name(),
                    dim.examples()
                )));
            }
            // A model, task or stage named like one of the options (`task chat = …` and
            // `kind = chat`): a node is never a valid value here, so the option is meant.
            (Ty::Enum(options), Untyped::Node(n))
                if options.contains(&self.nodes[*n].id.rsplit(':').next().unwrap_or_default()) =>
            {
                let id = &self.nodes[*n].id;
                Value::Symbol(id.rsplit(':').next().unwrap_or(id).to_string())
            }
            (Ty::Enum(options), Untyped::Word(w) | Untyped::Str(w)) => {
                if !options.contains(&w.as_str()) {
                    return Err(Diagnostic::at(
                        span,
                        format!("`{w}` is not a valid `{param}` for `{owner}`"),
                        "unknown value",
                    )
                    .suggest(w, options.iter().copied())
                    .with_hint(format!("`{param}` is one of: {}", options.join(", "))));
                }
                Value::Symbol(w.clone())
            }
            (Ty::Executor, Untyped::Word(w)) if w == "local" => Value::Executor(Executor::Local),
            (Ty::Executor, Untyped::Word(w)) if w == "slurm" => {
                Value::Executor(Executor::Slurm(SlurmOptions::default()))
            }
            (Ty::Executor, Untyped::Call(f, args)) if f == "slurm" => {
                if let Some((_, _, s)) = args.iter().find(|(n, _, _)| n.is_none()) {
                    return Err(Diagnostic::at(
                        *s,
                        "`slurm(...)` takes named arguments only",
                        "unnamed argument",
                    )
                    .with_hint(
                        "e.g. slurm(partition = \"gpu\", gpus_per_stage = 1, time = \"04:00:00\")",
                    ));
                }
                Value::Executor(Executor::Slurm(self.slurm_options(args)?))
            }
            (Ty::Executor, Untyped::Word(w) | Untyped::Call(w, ..)) => {
                return Err(Diagnostic::at(
                    span,
                    format!("unknown executor `{w}`"),
                    "not an executor",
                )
                .suggest(w, ["local", "slurm"])
                .with_hint("executors are `local` (this process) and `slurm(...)`"));
            }
            (Ty::Device, Untyped::Word(w)) if w == "cpu" => Value::Device(Device::Cpu),
            (Ty::Device, Untyped::Word(w)) if w == "cuda" => Value::Device(Device::Cuda(0)),
            (Ty::Device, Untyped::Call(f, args)) if f == "cuda" => match args.as_slice() {
                [(None, Untyped::Int(i), _)] if (0..=i64::from(u16::MAX)).contains(i) => {
                    Value::Device(Device::Cuda(*i as u32))
                }
                _ => {
                    return Err(Diagnostic::at(
                        span,
                        "`cuda(...)` takes one GPU index",
                        "invalid device",
                    )
                    .with_hint("e.g. device = cuda(0)"));
                }
            },
            (Ty::Device, Untyped::Word(w)) => {
                return Err(
                    Diagnostic::at(span, format!("unknown device `{w}`"), "not a device")
                        .suggest(w, ["cpu", "cuda"])
                        .with_hint("devices are `cpu` and `cuda(N)`"),
                );
            }
            (Ty::Ref(want), Untyped::Node(n)) => {
                let got = self.nodes[*n].output();
                if got != *want {
                    return Err(Diagnostic::at(
                        span,
                        format!(
                            "wrong type for `{param}` of `{owner}`: expected a {}, found the {} `{}`",
                            want.noun(),
                            got.noun(),
                            self.nodes[*n].id
                        ),
                        format!("a {}, not a {}", got.noun(), want.noun()),
                    ));
                }
                Value::Node(*n)
            }
            (Ty::AnyRef, Untyped::Node(n)) => Value::Node(*n),
            (Ty::Ref(want), Untyped::Word(w)) => {
                let candidates: Vec<&str> = self
                    .globals
                    .iter()
                    .filter(|(_, (g, _))| matches!(g, Global::Node(i) if self.nodes[*i].output() == *want))
                    .map(|(n, _)| n.as_str())
                    .chain(self.targets.keys().map(String::as_str))
                    .collect();
                let noun = want.noun();
                return Err(Diagnostic::at(
                    span,
                    format!("unknown {noun} `{w}`"),
                    format!("not a declared {noun}"),
                )
                .suggest(w, candidates.iter().copied())
                .with_hint(format!("declare it first: `{noun} {w} = ...`")));
            }
            (Ty::AnyRef, Untyped::Word(w)) => {
                let candidates: Vec<&str> = self
                    .globals
                    .keys()
                    .map(String::as_str)
                    .chain(self.targets.keys().map(String::as_str))
                    .collect();
                return Err(
                    Diagnostic::at(span, format!("unknown name `{w}`"), "not declared")
                        .suggest(w, candidates.iter().copied()),
                );
            }
            (Ty::List(t), Untyped::List(xs)) | (Ty::OneOrList(t), Untyped::List(xs)) => {
                let mut out = vec![];
                for (x, s) in xs {
                    out.push(self.coerce(x, *s, t, param, owner)?);
                }
                Value::List(out)
            }
            (Ty::OneOrList(t), one) => Value::List(vec![self.coerce(one, span, t, param, owner)?]),
            (_, found) => return Err(mismatch(found)),
        })
    }

    pub(super) fn noun(&self, raw: &Untyped) -> String {
        match raw {
            Untyped::Node(n) => format!(
                "the {} `{}`",
                self.nodes[*n].output().noun(),
                self.nodes[*n].id
            ),
            other => raw_noun(other),
        }
    }
}
