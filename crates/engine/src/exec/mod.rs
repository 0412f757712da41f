//! The executor: runs a planned pipeline on tokio. Stages whose inputs are known are looked up in
//! the cache; misses run on blocking threads within the CPU budget and device leases; results are
//! committed atomically as they finish, so an interrupted or failing run keeps everything that
//! completed.

pub mod batch;
pub mod job;
mod lease;
pub mod slurm;
mod walk;

pub use lease::{Leases, Resources};

use crate::cache::{Cache, Manifest, Provenance, now_us};
use crate::plan::{KeyComponents, Planner, State};
use crate::stage::{Artifact, Progress, Registry, Stage, StageCtx, output_digest};
use anyhow::{Context, Result, bail};
use lang::Pipeline;
use meter::hw::Hardware;
use spec::NodeIdx;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;
use walk::Walk;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Cached,
    Ran,
    Failed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::Ran => "ran",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// Outcome of one node in a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    pub key: Option<String>,
    pub started_us: Option<i64>,
    pub finished_us: Option<i64>,
    pub seconds: Option<f64>,
    /// Error chain (failed) or why it did not run (skipped).
    pub error: Option<String>,
    pub manifest: Option<Box<Manifest>>,
}

impl Outcome {
    fn simple(status: Status, error: Option<String>) -> Outcome {
        Outcome {
            status,
            key: None,
            started_us: None,
            finished_us: None,
            seconds: None,
            error,
            manifest: None,
        }
    }

    /// A stage that finished in this run (ran, or was found computed meanwhile).
    fn finished(status: Status, m: &Manifest) -> Outcome {
        Outcome {
            status,
            key: Some(m.key.clone()),
            started_us: Some(m.started_us),
            finished_us: Some(m.finished_us),
            seconds: Some(m.seconds),
            error: None,
            manifest: Some(Box::new(m.clone())),
        }
    }
}

pub struct RunOptions {
    pub keep_going: bool,
    pub threads: usize,
    pub quiet: bool,
}

pub struct RunReport {
    /// Per node; `None` for local inputs resolved at plan time (files, synthetic models).
    pub outcomes: Vec<Option<Outcome>>,
    pub interrupted: bool,
    pub states: Vec<State>,
}

struct Finished {
    node: NodeIdx,
    need: Resources,
    started_us: i64,
    result: Result<Computed>,
}

/// Runs every node of the pipeline and records the key history. Returns when all nodes are
/// finished, failed or skipped; an error only if the history cannot be written.
pub async fn run_local(
    pipeline: &Pipeline,
    stages: &'static Registry,
    cache: &Cache,
    hardware: &Hardware,
    opts: &RunOptions,
) -> Result<RunReport> {
    let mut planner = Planner::new(pipeline, stages, cache, hardware);
    let nodes = &pipeline.nodes;
    let mut w = Walk::new(pipeline, opts);
    let mut runnable: BTreeSet<NodeIdx> = BTreeSet::new();
    let mut leases = Leases::new(opts.threads);
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
    let mut bars: BTreeMap<NodeIdx, Arc<crate::ui::StageBar>> = BTreeMap::new();
    let mut running = 0usize;
    let mut interrupted = false;
    let provenance = Provenance {
        edge_eval_version: env!("CARGO_PKG_VERSION").into(),
        host: crate::cache::hostname(),
        hardware: hardware.fingerprint(spec::Device::Cpu),
        pipeline: pipeline.name.clone(),
    };

    loop {
        // 1. Settle every node whose inputs are known: plan-time sources and cache hits finish
        //    here; misses become runnable.
        while let Some(i) = w.pop_ready() {
            let state = planner.evaluate(i, &w.states);
            debug_assert!(
                !matches!(state, State::Blocked { .. }),
                "all inputs were known"
            );
            if w.settle(i, state) {
                runnable.insert(i);
            }
        }

        // 2. Launch what the leases allow, in declaration order: first stages that share their
        //    device, then measuring ones. A measurement starts once its device has drained (on
        //    `cpu`: once nothing else runs), so it never shares the machine, and the shared work
        //    is not held up behind it.
        if w.stop.is_none() {
            let needs: Vec<(NodeIdx, Resources)> = runnable
                .iter()
                .map(|&i| (i, need(stages.of(&nodes[i]), &nodes[i])))
                .collect();
            let shared = needs.iter().filter(|(_, n)| !n.exclusive);
            let exclusive = needs.iter().filter(|(_, n)| n.exclusive);
            for &(i, need) in shared.chain(exclusive) {
                let node = &nodes[i];
                if !leases.try_acquire(&need) {
                    continue;
                }
                runnable.remove(&i);
                let State::Stale {
                    components, key, ..
                } = &w.states[i]
                else {
                    unreachable!("runnable nodes are stale")
                };
                let bar = w.ui.stage_started(&node.id);
                bars.insert(i, bar.clone());
                let job = StageJob {
                    stage: stages.of(node),
                    node: node.clone(),
                    device: node.device(),
                    inputs: node
                        .deps
                        .iter()
                        .filter_map(|d| w.states[*d].artifact().map(|a| (*d, a.clone())))
                        .collect(),
                    components: components.clone(),
                    key: key.clone(),
                    cache: cache.clone(),
                    provenance: provenance.clone(),
                    cancel: cancel.clone(),
                    progress: bar,
                };
                let tx = tx.clone();
                running += 1;
                tokio::task::spawn_blocking(move || {
                    let started_us = now_us();
                    let result = job.execute();
                    let _ = tx.send(Finished {
                        node: i,
                        need,
                        started_us,
                        result,
                    });
                });
            }
        }

        if running == 0 {
            break;
        }

        // 3. Wait for a stage to finish, or for Ctrl-C.
        let finished = tokio::select! {
            f = rx.recv() => f,
            _ = interrupt() => {
                if interrupted {
                    w.ui.error("second interrupt: exiting now (finished results are already in the cache)");
                    std::process::exit(130);
                }
                interrupted = true;
                cancel.store(true, Ordering::Relaxed);
                w.stop.get_or_insert_with(|| "interrupted (Ctrl-C or SIGTERM)".into());
                w.ui.error("interrupt: stopping running stages; results already finished are kept (Ctrl-C again to exit at once)");
                None
            }
        };
        let Some(f) = finished else { continue };
        running -= 1;
        leases.release(&f.need);
        let i = f.node;
        let finished_us = now_us();
        match f.result {
            Ok(c) => {
                let status = match c {
                    Computed::Ran(_) => Status::Ran,
                    Computed::Cached(_) => Status::Cached,
                };
                let m = c.into_manifest();
                w.ui.line(&format!("✓ {} ({:.1} s)", nodes[i].id, m.seconds));
                let artifact = planner.artifact_of(&m);
                w.outcomes[i] = Some(Outcome::finished(status, &m));
                w.states[i] = State::Done {
                    artifact,
                    manifest: Some(Box::new(m)),
                };
                w.release(i);
            }
            Err(e) => {
                let error = if cancel.load(Ordering::Relaxed) {
                    "interrupted (Ctrl-C or SIGTERM)".to_string()
                } else {
                    format!("{e:#}")
                };
                w.ui.error(&format!("✗ {}: {error}", nodes[i].id));
                let key = match &w.states[i] {
                    State::Stale { key, .. } => Some(key.clone()),
                    _ => None,
                };
                w.outcomes[i] = Some(Outcome {
                    status: Status::Failed,
                    key,
                    started_us: Some(f.started_us),
                    finished_us: Some(finished_us),
                    seconds: Some((finished_us - f.started_us) as f64 / 1e6),
                    error: Some(error.clone()),
                    manifest: None,
                });
                w.states[i] = State::Failed { error };
                w.failed(i, true);
            }
        }
        w.ui.stage_done(bars.remove(&i));
    }
    w.conclude(&mut planner, interrupted)
}

/// Where a stage would run under `executor`, in words (for `plan`).
pub fn placement(executor: &spec::Executor, stage: &dyn Stage, node: &lang::Node) -> String {
    let need = need(stage, node);
    match executor {
        spec::Executor::Local => format!(
            "here, {}{}",
            need.device,
            if need.exclusive { " (alone)" } else { "" }
        ),
        spec::Executor::Slurm(o) => {
            use batch::Scheduler;
            slurm::Slurm { options: o.clone() }.placement(&need)
        }
    }
}

/// Ctrl-C (SIGINT) or SIGTERM (a service manager, `kill`, a scheduler's cancel): both stop a run
/// the same way — running stages are cancelled, finished results and the tables are kept.
pub(crate) async fn interrupt() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// What a node holds while it runs: CPU threads, its device, and whether alone.
pub(crate) fn need(stage: &dyn Stage, node: &lang::Node) -> Resources {
    Resources {
        threads: stage.threads(&node.params),
        device: node.device(),
        exclusive: stage.measuring(&node.params),
    }
}

/// How a stage's result came to be.
pub enum Computed {
    Ran(Manifest),
    /// Found in the cache once the stage lock was ours: another run sharing the cache (on this
    /// host or another) computed it meanwhile.
    Cached(Manifest),
}

impl Computed {
    pub fn manifest(&self) -> &Manifest {
        match self {
            Computed::Ran(m) | Computed::Cached(m) => m,
        }
    }
    pub fn into_manifest(self) -> Manifest {
        match self {
            Computed::Ran(m) | Computed::Cached(m) => m,
        }
    }
}

/// One stage execution, owned by a blocking thread (local executor) or by `exec-stage` (a
/// scheduler's job).
pub(crate) struct StageJob {
    pub stage: &'static dyn Stage,
    pub node: lang::Node,
    /// Where it runs (the node's device, renumbered inside a scheduler's allocation).
    pub device: spec::Device,
    pub inputs: BTreeMap<NodeIdx, Artifact>,
    pub components: KeyComponents,
    pub key: String,
    pub cache: Cache,
    pub provenance: Provenance,
    pub cancel: Arc<AtomicBool>,
    pub progress: Arc<dyn Progress>,
}

impl StageJob {
    /// Takes the stage lock, then runs the stage unless its result appeared meanwhile.
    pub fn execute(self) -> Result<Computed> {
        let _lock = self.cache.lock_stage(&self.key, |o| {
            self.progress.message(&format!(
                "waiting: the same stage is being computed by {}",
                o.describe()
            ))
        })?;
        if let crate::cache::Lookup::Hit(m) = self.cache.lookup(&self.key) {
            return Ok(Computed::Cached(*m));
        }
        let work = self.cache.work_dir()?;
        let resume = self.cache.resume_dir(&self.key)?;
        let result = self.execute_in(&work, &resume);
        crate::cache::remove_tree(&work);
        if result.is_ok() {
            crate::cache::remove_tree(&resume);
        } else {
            // Kept only when the stage saved progress in it (removing a non-empty folder fails).
            let _ = std::fs::remove_dir(&resume);
        }
        result.map(Computed::Ran)
    }

    fn execute_in(&self, work: &std::path::Path, resume: &std::path::Path) -> Result<Manifest> {
        let ctx = StageCtx {
            id: &self.node.id,
            params: &self.node.params,
            inputs: &self.inputs,
            base_dir: &self.node.base_dir,
            work_dir: work,
            resume_dir: resume,
            device: self.device,
            progress: self.progress.clone(),
            cancel: &self.cancel,
        };
        let started_us = now_us();
        let t0 = Instant::now();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stage.run(&ctx)))
            .map_err(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                anyhow::anyhow!(
                    "the `{}` stage crashed: {msg} (this is a bug in edge-eval)",
                    self.node.kind()
                )
            })?
            .map_err(|e| self.stage.explain_failure(e, &ctx))?;
        let seconds = t0.elapsed().as_secs_f64();
        let mut files = BTreeMap::new();
        for (name, path) in &out.files {
            if !path.starts_with(work) {
                bail!(
                    "stage `{}` returned a file outside its work folder: {}",
                    self.node.id,
                    path.display()
                );
            }
            let obj = self
                .cache
                .put_file(path)
                .with_context(|| format!("cannot store output `{name}`"))?;
            files.insert(name.clone(), obj);
        }
        let digests = files
            .iter()
            .map(|(n, o)| (n.clone(), o.digest.clone()))
            .collect();
        let manifest = Manifest {
            key: self.key.clone(),
            kind: self.node.kind().into(),
            stage_id: self.node.id.clone(),
            components: serde_json::to_value(&self.components)?,
            output_digest: output_digest(&digests, &out.record),
            files,
            record: out.record,
            rows: out.rows,
            started_us,
            finished_us: now_us(),
            seconds,
            provenance: self.provenance.clone(),
        };
        self.cache.put_manifest(&manifest)?;
        Ok(manifest)
    }
}

/// How to run a pipeline.
pub struct RunSettings {
    pub executor: spec::Executor,
    /// `--remote-cache`.
    pub remote_cache: Option<String>,
    pub keep_going: bool,
    pub threads: usize,
    /// No progress output.
    pub quiet: bool,
}

/// Runs `pipeline` with the executor `s` names, against the cache at `cache_dir` (and its remote
/// tier): takes the cache lock, starts the async runtime, returns the report.
pub fn execute(
    pipeline: &Pipeline,
    stages: &'static Registry,
    cache_dir: &std::path::Path,
    s: &RunSettings,
) -> Result<RunReport> {
    use spec::Executor;
    let cache = Cache::open_with_remote(cache_dir, s.remote_cache.as_deref())?;
    // A local run has the cache to itself; a batch run shares it with its own jobs (which take
    // it shared on their nodes) and with other hosts' runs.
    let _lock = cache.lock(s.executor == Executor::Local)?;
    if s.executor == Executor::Local {
        cache.reclaim_tmp();
    }
    let hw = Hardware::detect(s.threads);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(s.threads.max(1) + 1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let opts = RunOptions {
        keep_going: s.keep_going,
        threads: s.threads,
        quiet: s.quiet,
    };
    let mut report = match &s.executor {
        Executor::Local => rt.block_on(run_local(pipeline, stages, &cache, &hw, &opts)),
        Executor::Slurm(o) => {
            let mut slurm = slurm::Slurm::connect(o.clone())?;
            rt.block_on(batch::run_scheduled(
                pipeline, stages, &cache, &hw, &opts, &mut slurm,
            ))
        }
    }?;
    present(pipeline, stages, &mut report);
    Ok(report)
}

/// Each outcome's rows as this run shows them ([`Stage::present`]): the cache keeps what the
/// stages computed, the report (tables, metrics) what this pipeline's presentation parameters
/// make of it.
pub fn present(pipeline: &Pipeline, stages: &Registry, report: &mut RunReport) {
    for (node, outcome) in pipeline.nodes.iter().zip(&mut report.outcomes) {
        if let Some(m) = outcome.as_mut().and_then(|o| o.manifest.as_mut()) {
            stages.of(node).present(&node.params, &mut m.rows);
        }
    }
}
