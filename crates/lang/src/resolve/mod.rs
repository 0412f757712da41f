//! Resolution: files (with imports) → declarations → `--set` overrides → loop expansion →
//! argument binding against each stage's [`ParamSpec`]s → cycle check. The result is a
//! [`Pipeline`]: a flat list of nodes (models, tasks, stage instances) with typed, canonical
//! parameters and stable ids such as `quantize[qa,q4_0]`.
//!
//! Errors are collected, not thrown: one pass reports every problem it can find.
//!
//! One `Resolver` holds the state; each pass is an `impl Resolver` of its own file:
//! `files.rs`, `declare.rs`, `settings.rs`, `expand.rs`, `eval.rs`, `bind.rs`.

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

mod bind;
mod declare;
mod eval;
mod expand;
mod files;
mod settings;

pub use settings::block_schema;

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
    r.resolve(path, overrides)
}

/// [`load`] of a main file given as text (named `name`, as if it were in the current folder;
/// its imports are read from disk). For editors and fuzzing: no file has to be written.
pub fn load_text(
    name: &str,
    text: &str,
    overrides: &[String],
    signatures: &'static Signatures,
) -> Result<(Pipeline, SourceMap), (Diagnostics, SourceMap)> {
    let mut r = Resolver::new(signatures);
    let path = std::env::current_dir().unwrap_or_default().join(name);
    r.add_file(name.to_string(), path.clone(), text.as_bytes().to_vec());
    r.resolve(&path, overrides)
}

impl Resolver {
    /// Every pass after the files are read; the pipeline, or every diagnostic found.
    fn resolve(
        self,
        path: &Path,
        overrides: &[String],
    ) -> Result<(Pipeline, SourceMap), (Diagnostics, SourceMap)> {
        let mut r = self;
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
}

/// An evaluated but not yet typed expression.
#[derive(Debug, Clone)]
enum Untyped {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Quantity(f64, Ident),
    /// A bare word bound to nothing: a symbol such as `q4_0` (or a typo).
    Word(String),
    Node(NodeIdx),
    List(Vec<(Untyped, Span)>),
    /// `f(positional…, name = value…)`: each argument with its name, if it has one. (One list,
    /// so that `Untyped` stays small: the resolver recurses through it.)
    Call(String, Vec<(Option<Ident>, Untyped, Span)>),
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
    env: Vec<(String, Untyped, Span)>,
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
    let_cache: HashMap<usize, Untyped>,
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

fn raw_noun(raw: &Untyped) -> String {
    match raw {
        Untyped::Str(s) => format!("the string \"{s}\""),
        Untyped::Int(i) => format!("the integer {i}"),
        Untyped::Float(f) => format!("the number {f}"),
        Untyped::Bool(b) => format!("`{b}`"),
        Untyped::Quantity(v, u) => format!("the quantity {v} {}", u.name),
        Untyped::Word(w) => format!("the name `{w}`"),
        Untyped::Node(_) => "a stage result".into(),
        Untyped::List(_) => "a list".into(),
        Untyped::Call(f, ..) => format!("a call to `{f}`"),
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
