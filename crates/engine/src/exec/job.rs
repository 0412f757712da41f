//! A stage run as a batch-scheduler job: the spec the submitting `edge-eval run` writes into the
//! shared cache, and `edge-eval exec-stage CACHE JOB`, which runs it on the allocated node.
//!
//! A stage's cache key contains its inputs' OUTPUT digests (early cutoff), so the key of a stage
//! below one that has not run yet is unknown when the whole DAG is submitted. A job is therefore
//! named by its run and node (`<run>/<node>`), not by its key: its spec holds the stage (kind,
//! parameters, folder) and, per input, either the input's output (known at submission) or the
//! job that produces it. On the node, `exec-stage` reads those jobs' results, computes the key
//! there (with that node's hardware fingerprint for a measuring stage), takes the stage lock,
//! finds the result cached or runs the stage, commits it to the cache, and writes its own result
//! file. Layout under the cache:
//!
//! ```text
//! jobs/<run>/<node>.spec.json     written by the submitter before `sbatch`
//! jobs/<run>/<node>.result.json   written by the job at its end (ok + key, or the error)
//! jobs/<run>/<node>.log           the job's stdout and stderr (the scheduler writes it)
//! ```

use super::{Computed, StageJob};
use crate::cache::{Cache, Lookup, Provenance, now_us, write_atomic_via};
use crate::plan::{artifact_of, key_components};
use crate::stage::Registry;
use crate::stage::{Artifact, Progress};
use anyhow::{Context, Result, bail};
use lang::Node;
use meter::hw::Hardware;
use serde::{Deserialize, Serialize};
use spec::{Device, NodeIdx, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Everything a node needs to run one stage of a pipeline it never parsed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub edge_eval_version: String,
    pub pipeline: String,
    pub stage_id: String,
    pub kind: String,
    pub params: BTreeMap<String, Value>,
    pub deps: Vec<NodeIdx>,
    pub base_dir: PathBuf,
    /// Per dependency: its output when known at submission, else the job that produces it.
    pub inputs: BTreeMap<NodeIdx, Input>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Input {
    Known(Artifact),
    Job(String),
}

/// What a job leaves for the submitter (and for the jobs below it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    /// The stage's cache key, when the job got as far as computing it.
    pub key: Option<String>,
    /// Ran here (false: found in the cache, e.g. computed meanwhile by another run).
    pub ran: bool,
    /// The error chain of a failed job.
    pub error: Option<String>,
    pub host: String,
    pub scheduler_job: Option<String>,
    pub finished_us: i64,
}

/// Where a job's files live: `jobs/<run>/<node>.*`.
pub struct JobFiles {
    pub spec: PathBuf,
    pub result: PathBuf,
    pub log: PathBuf,
}

impl JobFiles {
    pub fn new(cache_root: &Path, job: &str) -> Result<JobFiles> {
        let valid = job.split_once('/').is_some_and(|(run, node)| {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            ok(run) && ok(node)
        });
        if !valid {
            bail!("`{job}` is not a job name (expected RUN/NODE, as `edge-eval run` submits it)");
        }
        let base = cache_root.join("jobs").join(job);
        Ok(JobFiles {
            spec: base.with_extension("spec.json"),
            result: base.with_extension("result.json"),
            log: base.with_extension("log"),
        })
    }

    pub fn read_result(&self) -> Option<JobResult> {
        serde_json::from_slice(&std::fs::read(&self.result).ok()?).ok()
    }
}

/// The job name of node `i` of run `run`.
pub fn job_name(run: &str, i: NodeIdx) -> String {
    format!("{run}/{i}")
}

/// The device a stage uses inside a scheduler's allocation: the job sees only the GPUs it was
/// given (`CUDA_VISIBLE_DEVICES`), numbered from 0, whatever index the pipeline wrote.
pub fn device_in_allocation(device: Device) -> Device {
    let allocated = ["SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
    match device {
        Device::Cuda(_) if allocated => Device::Cuda(0),
        d => d,
    }
}

/// The scheduler's id of this job as the submitter knows it: `ARRAY_TASK` for an array task.
fn scheduler_job() -> Option<String> {
    let var = |v: &str| std::env::var(v).ok();
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(a), Some(t)) => Some(format!("{a}_{t}")),
        _ => var("SLURM_JOB_ID"),
    }
}

/// The array index the scheduler puts in the environment (`SLURM_ARRAY_TASK_ID`; Kubernetes'
/// indexed jobs: `JOB_COMPLETION_INDEX`), if any.
fn array_index() -> Option<String> {
    ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
}

/// `RUN/3,7,9` (a job array's command) → the task's own `RUN/N`, by the array `index` (see
/// [`array_index`]). A plain `RUN/N` is returned as it is.
fn array_task(job: &str, index: Option<&str>) -> Result<String> {
    let Some((run, list)) = job.split_once('/').filter(|(_, l)| l.contains(',')) else {
        return Ok(job.to_string());
    };
    let index = index.with_context(|| {
        format!("`{job}` names several stages, but no array index is set (SLURM_ARRAY_TASK_ID)")
    })?;
    let k: usize = index
        .trim()
        .parse()
        .with_context(|| format!("array index `{index}` is not a number"))?;
    let node = list
        .split(',')
        .nth(k)
        .with_context(|| format!("array index {k} is past the stages of `{job}`"))?;
    Ok(format!("{run}/{node}"))
}

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERMINATED.store(true, Ordering::Relaxed);
}

/// `edge-eval exec-stage CACHE JOB`: runs one submitted stage here. Returns the exit code: 0 when
/// the result is in the cache, 1 when the stage failed (the error is in the result file too).
pub fn exec_stage(stages: &'static Registry, cache: &Cache, job: &str) -> Result<i32> {
    let job = &array_task(job, array_index().as_deref())?;
    let files = JobFiles::new(cache.root(), job)?;
    let spec: JobSpec = serde_json::from_slice(
        &std::fs::read(&files.spec)
            .with_context(|| format!("cannot read the job spec {}", files.spec.display()))?,
    )
    .with_context(|| format!("{} is not a job spec", files.spec.display()))?;
    // The scheduler's cancel (scancel) sends SIGTERM, then SIGKILL: stop the stage cleanly.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
    }
    let _reader = cache.lock(false)?;
    let mut key = None;
    let outcome = run_spec(stages, cache, &spec, job, &mut key);
    let result = JobResult {
        key,
        ran: matches!(outcome, Ok(Computed::Ran(_))),
        error: outcome.as_ref().err().map(|e| format!("{e:#}")),
        host: crate::cache::hostname(),
        scheduler_job: scheduler_job(),
        finished_us: now_us(),
    };
    let tmp = files
        .result
        .with_extension(format!("tmp-{}", crate::cache::unique_suffix()));
    write_atomic_via(&tmp, &files.result, &serde_json::to_vec_pretty(&result)?)?;
    match outcome {
        Ok(c) => {
            let m = c.manifest();
            eprintln!(
                "{} `{}`: {} (key {})",
                if matches!(c, Computed::Ran(_)) {
                    "ran"
                } else {
                    "found cached"
                },
                spec.stage_id,
                if m.seconds > 0.0 {
                    format!("{:.1} s", m.seconds)
                } else {
                    String::new()
                },
                &m.key[..12]
            );
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: stage `{}` failed: {e:#}", spec.stage_id);
            Ok(1)
        }
    }
}

fn run_spec(
    stages: &'static Registry,
    cache: &Cache,
    spec: &JobSpec,
    job: &str,
    key: &mut Option<String>,
) -> Result<Computed> {
    if spec.edge_eval_version != env!("CARGO_PKG_VERSION") {
        bail!(
            "the job was submitted by edge-eval {} but this node runs {}: install the same \
             version on the nodes (or point the executor at the submitting binary)",
            spec.edge_eval_version,
            env!("CARGO_PKG_VERSION")
        );
    }
    let stage = stages
        .get(&spec.kind)
        .with_context(|| format!("this edge-eval has no stage kind `{}`", spec.kind))?;
    let run = job.split_once('/').map_or(job, |(r, _)| r);
    let mut inputs = BTreeMap::new();
    for (&i, input) in &spec.inputs {
        let artifact = match input {
            Input::Known(a) => a.clone(),
            Input::Job(upstream) => upstream_artifact(cache, run, upstream)?,
        };
        inputs.insert(i, artifact);
    }
    let signature = stages
        .signatures()
        .get(&spec.kind)
        .expect("a registry's signatures name its stages");
    let node = Node::new(
        spec.stage_id.clone(),
        signature,
        spec.params.clone(),
        spec.deps.clone(),
        spec.base_dir.clone(),
    );
    let device = device_in_allocation(node.device());
    let threads = meter::hw::available_threads();
    let hardware = Hardware::detect(threads);
    let digest_of = |n: NodeIdx| inputs.get(&n).map(|a| a.digest.clone()).unwrap_or_default();
    let components = key_components(stage, &node, &hardware, device, &digest_of);
    let k = components.key();
    *key = Some(k.clone());
    if let Lookup::Hit(m) = cache.lookup(&k) {
        return Ok(Computed::Cached(*m));
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let watcher = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            while !cancel.load(Ordering::Relaxed) {
                if TERMINATED.load(Ordering::Relaxed) {
                    eprintln!("terminated: stopping the stage (nothing half-done is committed)");
                    cancel.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let out = StageJob {
        stage,
        node,
        device,
        inputs,
        components,
        key: k,
        cache: cache.clone(),
        provenance: Provenance {
            edge_eval_version: env!("CARGO_PKG_VERSION").into(),
            host: crate::cache::hostname(),
            hardware: hardware.fingerprint(device),
            pipeline: spec.pipeline.clone(),
        },
        cancel: cancel.clone(),
        progress: Arc::new(LogProgress::default()),
    }
    .execute();
    cancel.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    out
}

/// The output of the job `upstream` of the same run, from its result file and the cache.
fn upstream_artifact(cache: &Cache, run: &str, upstream: &str) -> Result<Artifact> {
    let files = JobFiles::new(cache.root(), upstream)?;
    let r = files.read_result().with_context(|| {
        format!(
            "input job {upstream} of run {run} left no result in {} (did it run?)",
            files.result.display()
        )
    })?;
    let key = match (&r.error, &r.key) {
        (None, Some(k)) => k,
        (Some(e), _) => bail!("input job {upstream} failed: {e}"),
        (None, None) => bail!("input job {upstream} recorded no key"),
    };
    match cache.lookup(key) {
        Lookup::Hit(m) => Ok(artifact_of(cache, &m)),
        Lookup::Miss => bail!("the result of input job {upstream} (key {key}) is not in the cache"),
        Lookup::Broken(why) => bail!("the result of input job {upstream} is unusable: {why}"),
    }
}

/// Progress as plain lines in the job's log: every tenth of the way, and each message.
#[derive(Default)]
struct LogProgress {
    length: AtomicU64,
    shown: AtomicU64,
}

impl Progress for LogProgress {
    fn set_length(&self, n: u64) {
        self.length.store(n, Ordering::Relaxed);
    }
    fn set_position(&self, n: u64) {
        let len = self.length.load(Ordering::Relaxed);
        if len == 0 {
            return;
        }
        let tenth = n.min(len) * 10 / len;
        if self.shown.fetch_max(tenth, Ordering::Relaxed) < tenth {
            eprintln!("progress: {}% ({n}/{len})", tenth * 10);
        }
    }
    fn message(&self, msg: &str) {
        eprintln!("{msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_checked_before_they_become_paths() {
        let root = Path::new("/c");
        let f = JobFiles::new(root, "20261126-ab12/7").unwrap();
        assert_eq!(f.spec, Path::new("/c/jobs/20261126-ab12/7.spec.json"));
        assert_eq!(f.log, Path::new("/c/jobs/20261126-ab12/7.log"));
        for bad in [
            "7",
            "../x/7",
            "run/../../7",
            "run/",
            "/7",
            "run/7/8",
            "run/3,7",
        ] {
            assert!(JobFiles::new(root, bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn an_array_task_picks_its_stage_by_its_index() {
        assert_eq!(array_task("r/7", None).unwrap(), "r/7");
        assert_eq!(array_task("r/3,7,9", Some("2")).unwrap(), "r/9");
        assert!(array_task("r/3,7,9", Some("3")).is_err(), "past the list");
        assert!(array_task("r/3,7,9", Some("x")).is_err(), "not a number");
        assert!(array_task("r/3,7,9", None).is_err(), "no index set");
    }
}
