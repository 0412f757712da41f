//! Resolution: files (with imports) → declarations → `--set` overrides → loop expansion →
//! argument binding against each stage's [`ParamSpec`]s → cycle check. The result is a
//! [`Pipeline`]: a flat list of nodes (models, tasks, stage instances) with typed, canonical
//! parameters and stable ids such as `quantize[qa,q4_0]`.
//!
//! Errors are collected, not thrown: one pass reports every problem it can find.

use super::ast::*;
use super::diag::{Diagnostic, Diagnostics, did_you_mean};
use super::parse::{parse_expr, parse_file, shift};
use super::source::{FileId, SourceMap, Span};
use crate::signature::{Role, Signature, Signatures};
use spec::{
    Default, Device, Executor, NodeIdx, Output, ParamSpec, SlurmOptions, Ty, Value, lookup_unit,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Largest file read (a pipeline is a few KB; this only stops accidents).
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Deepest chain of `let` values referring to each other, and of nested imports.
const MAX_LET_DEPTH: usize = 256;
const MAX_IMPORT_DEPTH: usize = 64;
/// Most stage instances one pipeline may expand to.
pub const MAX_STAGES: usize = 100_000;

/// One node of the pipeline graph.
#[derive(Clone)]
pub struct Node {
    pub id: String,
    sig: &'static Signature,
    pub params: BTreeMap<String, Value>,
    /// Nodes referenced by `params`, in first-use order, without repeats.
    pub deps: Vec<NodeIdx>,
    pub span: Span,
    /// Folder of the file the node was written in (relative paths resolve against it).
    pub base_dir: PathBuf,
}

impl Node {
    /// A node outside a resolved pipeline (a batch job rebuilds its one node from the job spec).
    pub fn new(
        id: String,
        sig: &'static Signature,
        params: BTreeMap<String, Value>,
        deps: Vec<NodeIdx>,
        base_dir: PathBuf,
    ) -> Node {
        Node {
            id,
            sig,
            params,
            deps,
            span: Span::default(),
            base_dir,
        }
    }
    pub fn kind(&self) -> &'static str {
        self.sig.kind
    }
    pub fn role(&self) -> Role {
        self.sig.role
    }
    pub fn output(&self) -> Output {
        self.sig.output
    }
    pub fn device(&self) -> Device {
        match self.params.get("device") {
            Some(Value::Device(d)) => *d,
            _ => Device::Cpu,
        }
    }
}

/// A resolved pipeline.
pub struct Pipeline {
    pub name: String,
    /// blake3 over the text of every file read (main file, imports, overrides).
    pub source_digest: String,
    pub main_file: PathBuf,
    /// `block.key` → value, defaults applied.
    pub settings: BTreeMap<String, Value>,
    pub nodes: Vec<Node>,
}

impl Pipeline {
    pub fn setting(&self, key: &str) -> Option<&Value> {
        self.settings.get(key)
    }

    /// Where tables are written: `pipeline { results = ... }` (relative to the pipeline file),
    /// else `results/<name>` in the current directory.
    pub fn results_dir(&self) -> PathBuf {
        match self.setting("pipeline.results").and_then(Value::as_str) {
            Some(r) => {
                let base = self.main_file.parent().unwrap_or(Path::new("."));
                spec::resolve_path(base, r)
            }
            None => PathBuf::from("results").join(&self.name),
        }
    }

    pub fn node_index(&self, id: &str) -> Option<NodeIdx> {
        self.nodes.iter().position(|n| n.id == id)
    }
}

/// Settings each block accepts.
pub fn block_schema(block: &str) -> Option<Vec<ParamSpec>> {
    use spec::Dim;
    Some(match block {
        "pipeline" => vec![
            ParamSpec::default(
                "device",
                Ty::Device,
                Value::Device(Device::Cpu),
                "default device of every stage",
            ),
            ParamSpec::optional("results", Ty::Str, "folder for the Parquet tables"),
            ParamSpec::default("seed", Ty::int(0, i64::MAX), Value::Int(0), "default seed"),
            ParamSpec::optional(
                "threads",
                Ty::int(1, 4096),
                "CPU threads the executor may use",
            ),
            ParamSpec::default(
                "executor",
                Ty::Executor,
                Value::Executor(Executor::Local),
                "where stages run: `local` or `slurm(partition = …, gpus_per_stage = 1, time = …)`",
            ),
        ],
        "economics" => vec![
            ParamSpec::optional(
                "electricity",
                Ty::Quantity(Dim::EnergyPrice),
                "electricity price",
            ),
            ParamSpec::optional(
                "api_request",
                Ty::Quantity(Dim::Money),
                "hosted-API cost of one request",
            ),
            ParamSpec::optional(
                "cpu_power",
                Ty::Quantity(Dim::Power),
                "declared CPU power (estimated energy)",
            ),
            ParamSpec::optional(
                "gpu_power",
                Ty::Quantity(Dim::Power),
                "declared GPU power (estimated energy)",
            ),
        ],
        "hardware" => vec![
            ParamSpec::optional(
                "cpu_power",
                Ty::Quantity(Dim::Power),
                "declared CPU power (estimated energy)",
            ),
            ParamSpec::default(
                "meter",
                Ty::Enum(&["auto", "nvml", "rapl", "estimated"]),
                Value::Symbol("auto".into()),
                "energy meter",
            ),
            ParamSpec::optional(
                "idle_window",
                Ty::Quantity(Dim::Time),
                "idle baseline window",
            ),
            ParamSpec::optional(
                "sample_interval",
                Ty::Quantity(Dim::Time),
                "power sampling interval",
            ),
        ],
        "report" => vec![
            ParamSpec::optional(
                "baseline",
                Ty::Enum(spec::PRECISIONS),
                "reference precision for q_ret",
            ),
            ParamSpec::optional(
                "metrics",
                Ty::List(Box::new(Ty::Enum(&[
                    "n_break", "ipw", "rho_sys", "c_tax", "q_ret",
                ]))),
                "metrics reported",
            ),
        ],
        _ => return None,
    })
}

/// Loads, checks and expands a pipeline file. On failure, the diagnostics and the source map to
/// render them with.
pub fn load(
    path: &Path,
    overrides: &[String],
    signatures: &'static Signatures,
) -> Result<(Pipeline, SourceMap), (Diagnostics, SourceMap)> {
    let mut r = Resolver::new(signatures);
    let display = path.display().to_string();
    r.load_file(path, display, None);
    if !r.diags.is_empty() {
        return Err((r.diags, r.map));
    }
    r.declare();
    r.apply_overrides(overrides);
    r.settings();
    r.expand_all();
    r.bind_all();
    if r.diags.is_empty() {
        r.check_cycles();
    }
    if !r.diags.is_empty() {
        return Err((r.diags, r.map));
    }
    let mut hasher = blake3::Hasher::new();
    for (_, f) in r.map.files() {
        hasher.update(f.name.as_bytes());
        hasher.update(&[0]);
        hasher.update(f.text.as_bytes());
        hasher.update(&[0]);
    }
    let name = r.pipeline_name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "pipeline".into())
    });
    let pipeline = Pipeline {
        name,
        source_digest: hasher.finalize().to_hex().to_string(),
        main_file: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        settings: r.setting_values,
        nodes: r.nodes,
    };
    Ok((pipeline, r.map))
}

/// An evaluated but not yet typed expression.
#[derive(Debug, Clone)]
enum Raw {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Quantity(f64, Ident),
    /// A bare word bound to nothing: a symbol such as `q4_0` (or a typo).
    Word(String),
    Node(NodeIdx),
    List(Vec<(Raw, Span)>),
    /// `f(positional…, name = value…)`: each argument with its name, if it has one. (One list,
    /// so that `Raw` stays small: the resolver recurses through it.)
    Call(String, Vec<(Option<Ident>, Raw, Span)>),
}

/// What a global name stands for.
#[derive(Debug, Clone, Copy)]
enum Global {
    Node(NodeIdx),
    Let(usize),
}

struct LetDecl {
    name: Ident,
    value: Expr,
}

/// A named stage result: `name` or `name[i, j]`.
struct TargetTable {
    arity: usize,
    first: Span,
    entries: BTreeMap<Vec<String>, NodeIdx>,
}

/// A stage call expanded with its loop environment, waiting for argument binding.
struct Pending {
    node: NodeIdx,
    call: Call,
    env: Vec<(String, Raw, Span)>,
}

struct Resolver {
    signatures: &'static Signatures,
    map: SourceMap,
    diags: Diagnostics,
    items: Vec<Item>,
    import_stack: Vec<PathBuf>,
    imported: HashSet<PathBuf>,
    pipeline_name: Option<String>,
    pipeline_span: Option<Span>,
    /// `block.key` → (expr, span of the key).
    setting_exprs: BTreeMap<String, (Expr, Span)>,
    setting_values: BTreeMap<String, Value>,
    globals: HashMap<String, (Global, Span)>,
    lets: Vec<LetDecl>,
    let_cache: HashMap<usize, Raw>,
    let_active: HashSet<usize>,
    targets: HashMap<String, TargetTable>,
    nodes: Vec<Node>,
    /// Source declarations (node index, call) waiting for binding.
    sources: Vec<(NodeIdx, Call)>,
    pending: Vec<Pending>,
    ids: HashMap<String, Span>,
}

impl Resolver {
    fn new(signatures: &'static Signatures) -> Resolver {
        Resolver {
            signatures,
            map: SourceMap::default(),
            diags: Diagnostics::default(),
            items: vec![],
            import_stack: vec![],
            imported: HashSet::new(),
            pipeline_name: None,
            pipeline_span: None,
            setting_exprs: BTreeMap::new(),
            setting_values: BTreeMap::new(),
            globals: HashMap::new(),
            lets: vec![],
            let_cache: HashMap::new(),
            let_active: HashSet::new(),
            targets: HashMap::new(),
            nodes: vec![],
            sources: vec![],
            pending: vec![],
            ids: HashMap::new(),
        }
    }
}

fn base_dir_of(map: &SourceMap, file: FileId) -> PathBuf {
    map.get(file).base_dir()
}

impl Resolver {
    // ---------------------------------------------------------------- files and imports

    fn load_file(&mut self, path: &Path, display: String, from: Option<Span>) {
        let canonical = match std::fs::canonicalize(path) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("cannot open {display}: {e}");
                self.diags.push(match from {
                    Some(span) => Diagnostic::at(span, msg, "imported here")
                        .with_hint("import paths are relative to the importing file's folder"),
                    None => Diagnostic::error(msg),
                });
                return;
            }
        };
        if let Some(pos) = self.import_stack.iter().position(|p| *p == canonical) {
            let mut chain: Vec<String> = self.import_stack[pos..]
                .iter()
                .map(|p| {
                    self.map
                        .find_path(p)
                        .map(|id| self.map.get(id).name.clone())
                        .unwrap_or_else(|| p.display().to_string())
                })
                .collect();
            chain.push(display.clone());
            let span = from.expect("the main file cannot be on the import stack");
            self.diags.push(
                Diagnostic::at(
                    span,
                    format!("import cycle: {}", chain.join(" → ")),
                    "this import closes the cycle",
                )
                .with_hint("move what both files need into a third file that imports neither"),
            );
            return;
        }
        if self.import_stack.len() >= MAX_IMPORT_DEPTH {
            let span = from.expect("the main file is at depth 0");
            self.diags.push(Diagnostic::at(
                span,
                format!("imports nested more than {MAX_IMPORT_DEPTH} deep"),
                "too deep",
            ));
            return;
        }
        if !self.imported.insert(canonical.clone()) {
            return; // already included (diamond imports are fine)
        }
        let meta = std::fs::metadata(&canonical);
        if let Ok(m) = &meta {
            if m.len() > MAX_FILE_BYTES {
                let msg = format!(
                    "{display} is {} bytes; pipeline files are limited to {MAX_FILE_BYTES}",
                    m.len()
                );
                self.diags.push(match from {
                    Some(span) => Diagnostic::at(span, msg, "imported here"),
                    None => Diagnostic::error(msg),
                });
                return;
            }
            if m.is_dir() {
                let msg = format!("{display} is a folder, not a pipeline file");
                self.diags.push(match from {
                    Some(span) => Diagnostic::at(span, msg, "imported here"),
                    None => Diagnostic::error(msg),
                });
                return;
            }
        }
        let bytes = match std::fs::read(&canonical) {
            Ok(b) => b,
            Err(e) => {
                self.diags
                    .push(Diagnostic::error(format!("cannot read {display}: {e}")));
                return;
            }
        };
        let (text, bad_utf8) = match String::from_utf8(bytes) {
            Ok(t) => (t, None),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                (String::from_utf8_lossy(e.as_bytes()).into_owned(), Some(at))
            }
        };
        let id = self.map.add(display.clone(), Some(canonical.clone()), text);
        if let Some(at) = bad_utf8 {
            self.diags.push(
                Diagnostic::at(
                    Span::new(id, at, at + 1),
                    format!("{display} is not UTF-8 text"),
                    "invalid byte here",
                )
                .with_hint("pipeline files are UTF-8 text; is this the right file?"),
            );
            return;
        }
        let text = self.map.get(id).text.clone();
        let items = match parse_file(id, &text) {
            Ok(items) => items,
            Err(ds) => {
                self.diags.0.extend(ds.0);
                return;
            }
        };
        self.import_stack.push(canonical);
        let display_dir = Path::new(&display)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for item in items {
            if let Item::Import { path: ipath, span } = &item {
                let target = base_dir_of(&self.map, id).join(ipath);
                let shown = display_dir.join(ipath).display().to_string();
                self.load_file(&target, shown, Some(*span));
            } else {
                self.items.push(item);
            }
        }
        self.import_stack.pop();
    }

    // ---------------------------------------------------------------- declarations

    fn declare_global(&mut self, name: &Ident, g: Global, what: &str) -> bool {
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

    fn declare(&mut self) {
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
                    let idx = self.nodes.len();
                    if !self.declare_global(name, Global::Node(idx), what) {
                        continue;
                    }
                    let want = if is_model {
                        Output::Model
                    } else {
                        Output::Task
                    };
                    let Some(sig) = self.source_kind(source, want) else {
                        continue;
                    };
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

    fn source_kind(&mut self, call: &Call, want: Output) -> Option<&'static Signature> {
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

    // ---------------------------------------------------------------- overrides and settings

    fn apply_overrides(&mut self, overrides: &[String]) {
        for text in overrides {
            let file = self.map.add("--set".into(), None, text.clone());
            let Some(eq) = text.find('=') else {
                self.diags.push(
                    Diagnostic::at(
                        Span::new(file, 0, text.len()),
                        format!("--set `{text}` has no `=`"),
                        "expected NAME=VALUE",
                    )
                    .with_hint(
                        "e.g. --set samples=50 or --set economics.electricity=\"0.15 usd/kWh\"",
                    ),
                );
                continue;
            };
            let name = text[..eq].trim();
            let name_span = Span::new(file, 0, eq);
            let mut expr = match parse_expr(file, &text[eq + 1..]) {
                Ok(e) => e,
                Err(ds) => {
                    for mut d in ds.0 {
                        if let Some(p) = &mut d.primary {
                            p.span.start += eq as u32 + 1;
                            p.span.end += eq as u32 + 1;
                        }
                        self.diags.push(d);
                    }
                    continue;
                }
            };
            shift(&mut expr, eq as i64 + 1);
            if let Some((block, key)) = name.split_once('.') {
                let Some(schema) = block_schema(block) else {
                    self.diags.push(
                        Diagnostic::at(
                            name_span,
                            format!("unknown block `{block}` in --set"),
                            "no such block",
                        )
                        .suggest(block, ["pipeline", "economics", "hardware", "report"])
                        .with_hint(
                            "settings are named BLOCK.KEY: pipeline, economics, hardware or report",
                        ),
                    );
                    continue;
                };
                if !schema.iter().any(|p| p.name == key) {
                    self.diags.push(
                        Diagnostic::at(
                            name_span,
                            format!("unknown setting `{name}` in --set"),
                            "no such setting",
                        )
                        .suggest(key, schema.iter().map(|p| p.name))
                        .with_hint(format!(
                            "`{block}` accepts: {}",
                            schema.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                        )),
                    );
                    continue;
                }
                self.setting_exprs
                    .insert(name.to_string(), (expr, name_span));
            } else {
                match self.globals.get(name) {
                    Some((Global::Let(i), _)) => self.lets[*i].value = expr,
                    _ => {
                        let lets: Vec<&str> =
                            self.lets.iter().map(|l| l.name.name.as_str()).collect();
                        self.diags.push(
                            Diagnostic::at(
                                name_span,
                                format!("--set `{name}`: no `let {name}` in the pipeline"),
                                "nothing to override",
                            )
                            .suggest(name, lets.iter().copied())
                            .with_hint(if lets.is_empty() {
                                "only `let` values and BLOCK.KEY settings can be overridden"
                                    .to_string()
                            } else {
                                format!("overridable values: {}", lets.join(", "))
                            }),
                        );
                    }
                }
            }
        }
    }

    fn settings(&mut self) {
        for block in ["pipeline", "economics", "hardware", "report"] {
            for spec in block_schema(block).expect("known block") {
                let key = format!("{block}.{}", spec.name);
                if let Some((expr, _)) = self.setting_exprs.get(&key).cloned() {
                    if let Some(v) = self.typed(&expr, &[], &spec, block) {
                        self.setting_values.insert(key, v);
                    }
                } else if let Default::Value(v) = &spec.default {
                    self.setting_values.insert(key, v.clone());
                }
            }
        }
    }

    // ---------------------------------------------------------------- expansion

    fn expand_all(&mut self) {
        let items = std::mem::take(&mut self.items);
        let mut env = vec![];
        self.expand(&items, &mut env);
        self.items = items;
    }

    fn expand(&mut self, items: &[Item], env: &mut Vec<(String, Raw, Span)>) {
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

    fn expand_for(&mut self, f: &ForLoop, binding: usize, env: &mut Vec<(String, Raw, Span)>) {
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
            Ok(Raw::List(xs)) => xs,
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

    fn label(&self, raw: &Raw) -> String {
        match raw {
            Raw::Str(s) | Raw::Word(s) => s.clone(),
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => f.to_string(),
            Raw::Bool(b) => b.to_string(),
            Raw::Quantity(v, u) => format!("{v}{}", u.name),
            Raw::Node(n) => {
                let id = &self.nodes[*n].id;
                id.split_once(':')
                    .map(|(_, n)| n.to_string())
                    .unwrap_or_else(|| id.clone())
            }
            Raw::List(xs) => format!(
                "[{}]",
                xs.iter()
                    .map(|(x, _)| self.label(x))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Raw::Call(f, xs) => format!(
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

    fn add_stage(&mut self, target: Option<&Target>, call: &Call, env: &[(String, Raw, Span)]) {
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
    fn index_labels(&mut self, index: &[Expr], env: &[(String, Raw, Span)]) -> Option<Vec<String>> {
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

    fn register_target(&mut self, t: &Target, key: Vec<String>, idx: NodeIdx) -> bool {
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

    // ---------------------------------------------------------------- expressions

    fn eval(&mut self, e: &Expr, env: &[(String, Raw, Span)]) -> Result<Raw, Diagnostic> {
        Ok(match &e.kind {
            ExprKind::Str(s) => Raw::Str(s.clone()),
            ExprKind::Int(i) => Raw::Int(*i),
            ExprKind::Float(f) => Raw::Float(*f),
            ExprKind::Bool(b) => Raw::Bool(*b),
            ExprKind::Quantity { value, unit } => Raw::Quantity(*value, unit.clone()),
            ExprKind::List(xs) => {
                let mut out = vec![];
                for x in xs {
                    out.push((self.eval(x, env)?, x.span));
                }
                Raw::List(out)
            }
            ExprKind::Call(c) => {
                let mut out = vec![];
                for a in &c.args {
                    out.push((a.name.clone(), self.eval(&a.value, env)?, a.value.span));
                }
                Raw::Call(c.func.name.clone(), out)
            }
            ExprKind::Name(name) => {
                if let Some((_, v, _)) = env.iter().rev().find(|(n, _, _)| n == name) {
                    return Ok(v.clone());
                }
                match self.globals.get(name).map(|(g, _)| *g) {
                    Some(Global::Node(i)) => Raw::Node(i),
                    Some(Global::Let(i)) => self.eval_let(i, e.span)?,
                    None => match self.targets.get(name) {
                        Some(t) if t.arity == 0 => {
                            Raw::Node(*t.entries.values().next().expect("registered"))
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
                        None => Raw::Word(name.clone()),
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
                    Some(i) => Raw::Node(*i),
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

    fn eval_let(&mut self, i: usize, use_span: Span) -> Result<Raw, Diagnostic> {
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
    fn typed(
        &mut self,
        e: &Expr,
        env: &[(String, Raw, Span)],
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
    fn slurm_options(
        &self,
        named: &[(Option<Ident>, Raw, Span)],
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

    fn coerce(
        &self,
        raw: &Raw,
        span: Span,
        ty: &Ty,
        param: &str,
        owner: &str,
    ) -> Result<Value, Diagnostic> {
        let mismatch = |found: &Raw| {
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
            (Ty::Str, Raw::Str(s)) => Value::Str(s.clone()),
            (Ty::Int { min, max }, Raw::Int(i)) => {
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
            (Ty::Float { min, max }, Raw::Int(_) | Raw::Float(_)) => {
                let f = match raw {
                    Raw::Int(i) => *i as f64,
                    Raw::Float(f) => *f,
                    _ => unreachable!(),
                };
                if f < *min || f > *max {
                    return Err(range_error(span, param, owner, f, *min, *max));
                }
                Value::Float(f)
            }
            (Ty::Bool, Raw::Bool(b)) => Value::Bool(*b),
            (Ty::Quantity(dim), Raw::Quantity(v, unit)) => match lookup_unit(&unit.name) {
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
            (Ty::Quantity(dim), Raw::Int(_) | Raw::Float(_)) => {
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
            (Ty::Enum(options), Raw::Node(n))
                if options.contains(&self.nodes[*n].id.rsplit(':').next().unwrap_or_default()) =>
            {
                let id = &self.nodes[*n].id;
                Value::Symbol(id.rsplit(':').next().unwrap_or(id).to_string())
            }
            (Ty::Enum(options), Raw::Word(w) | Raw::Str(w)) => {
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
            (Ty::Executor, Raw::Word(w)) if w == "local" => Value::Executor(Executor::Local),
            (Ty::Executor, Raw::Word(w)) if w == "slurm" => {
                Value::Executor(Executor::Slurm(SlurmOptions::default()))
            }
            (Ty::Executor, Raw::Call(f, args)) if f == "slurm" => {
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
            (Ty::Executor, Raw::Word(w) | Raw::Call(w, ..)) => {
                return Err(Diagnostic::at(
                    span,
                    format!("unknown executor `{w}`"),
                    "not an executor",
                )
                .suggest(w, ["local", "slurm"])
                .with_hint("executors are `local` (this process) and `slurm(...)`"));
            }
            (Ty::Device, Raw::Word(w)) if w == "cpu" => Value::Device(Device::Cpu),
            (Ty::Device, Raw::Word(w)) if w == "cuda" => Value::Device(Device::Cuda(0)),
            (Ty::Device, Raw::Call(f, args)) if f == "cuda" => match args.as_slice() {
                [(None, Raw::Int(i), _)] if (0..=i64::from(u16::MAX)).contains(i) => {
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
            (Ty::Device, Raw::Word(w)) => {
                return Err(
                    Diagnostic::at(span, format!("unknown device `{w}`"), "not a device")
                        .suggest(w, ["cpu", "cuda"])
                        .with_hint("devices are `cpu` and `cuda(N)`"),
                );
            }
            (Ty::Ref(want), Raw::Node(n)) => {
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
            (Ty::AnyRef, Raw::Node(n)) => Value::Node(*n),
            (Ty::Ref(want), Raw::Word(w)) => {
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
            (Ty::AnyRef, Raw::Word(w)) => {
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
            (Ty::List(t), Raw::List(xs)) | (Ty::OneOrList(t), Raw::List(xs)) => {
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

    fn noun(&self, raw: &Raw) -> String {
        match raw {
            Raw::Node(n) => format!(
                "the {} `{}`",
                self.nodes[*n].output().noun(),
                self.nodes[*n].id
            ),
            other => raw_noun(other),
        }
    }

    // ---------------------------------------------------------------- binding

    fn bind_all(&mut self) {
        for (idx, call) in std::mem::take(&mut self.sources) {
            self.bind(idx, &call, &[]);
        }
        for p in std::mem::take(&mut self.pending) {
            self.bind(p.node, &p.call, &p.env);
        }
    }

    fn bind(&mut self, idx: NodeIdx, call: &Call, env: &[(String, Raw, Span)]) {
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

    fn check_cycles(&mut self) {
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

fn raw_noun(raw: &Raw) -> String {
    match raw {
        Raw::Str(s) => format!("the string \"{s}\""),
        Raw::Int(i) => format!("the integer {i}"),
        Raw::Float(f) => format!("the number {f}"),
        Raw::Bool(b) => format!("`{b}`"),
        Raw::Quantity(v, u) => format!("the quantity {v} {}", u.name),
        Raw::Word(w) => format!("the name `{w}`"),
        Raw::Node(_) => "a stage result".into(),
        Raw::List(_) => "a list".into(),
        Raw::Call(f, ..) => format!("a call to `{f}`"),
    }
}

fn range_error(span: Span, param: &str, owner: &str, got: f64, min: f64, max: f64) -> Diagnostic {
    let bound = |x: f64| {
        if x.abs() >= 9e15 {
            "∞".to_string()
        } else {
            x.to_string()
        }
    };
    Diagnostic::at(
        span,
        format!(
            "`{param}` of `{owner}` must be between {} and {}, found {got}",
            bound(min),
            bound(max)
        ),
        "out of range",
    )
}

/// Renders a did-you-mean for CLI-level lookups (stage ids).
pub fn suggest_id<'a>(word: &str, ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    did_you_mean(word, ids)
}
