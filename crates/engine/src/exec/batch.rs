//! The batch executor: every stage that is not cached becomes a job of a batch scheduler (Slurm
//! today; anything that can run a command with "after these jobs succeed" dependencies fits the
//! [`Scheduler`] trait), all submitted at once with dependencies mirroring the DAG. The jobs run
//! `edge-eval exec-stage` on their nodes (see [`super::job`]) and commit into the cache, which
//! every node mounts; this process follows them (result files, and the scheduler's queue for jobs
//! that end without one), shows progress, and returns the same [`RunReport`] as a local run, so
//! the tables are written exactly as they are locally. Ctrl-C cancels the submitted jobs.

use super::job::{Input, JobFiles, JobResult, JobSpec, job_name};
use super::walk::Walk;
use super::{Outcome, Resources, RunOptions, RunReport, Status};
use crate::cache::{Cache, Lookup, write_atomic_via};
use crate::plan::{Planner, State};
use crate::stage::Registry;
use crate::ui::StageBar;
use anyhow::{Context, Result};
use lang::Pipeline;
use meter::hw::Hardware;
use spec::NodeIdx;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What the executor needs from a batch scheduler.
pub trait Scheduler {
    /// For messages: "Slurm".
    fn name(&self) -> &'static str;
    /// Where a stage with this need runs, in words (for `plan`).
    fn placement(&self, need: &Resources) -> String;
    /// Submits one job (an array when it has several stages); returns each task's id (the one
    /// `after`, `states` and `cancel` take) and the file its output goes to.
    fn submit(&mut self, job: &Submission) -> Result<Vec<(String, PathBuf)>>;
    /// The state of each of these jobs the scheduler still knows about.
    fn states(&mut self, ids: &[String]) -> Result<BTreeMap<String, JobState>>;
    /// Cancels these jobs (queued or running).
    fn cancel(&mut self, ids: &[String]) -> Result<()>;
}

/// One job to submit: a single stage, or an array of alike stages (same resources, same jobs to
/// wait for), whose task `k` runs `command` with the array index `k` in its environment.
pub struct Submission<'a> {
    /// The stages, one per task (for the scheduler's job name).
    pub stage_ids: Vec<&'a str>,
    /// The command every task runs.
    pub command: Vec<String>,
    /// Scheduler ids of the jobs (or array tasks) that must succeed first.
    pub after: Vec<String>,
    pub need: Resources,
    /// Measuring stage: it gets its device (on `cpu`: the node) to itself.
    pub measuring: bool,
    /// Where each task's stdout and stderr should go (a scheduler may choose otherwise and
    /// says so in its answer).
    pub logs: &'a [PathBuf],
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Waiting, with the scheduler's reason (`Resources`, `Dependency`, …).
    Queued(String),
    Running,
    /// Finished, failed, cancelled or timed out: the scheduler's state and reason.
    Ended {
        state: String,
        reason: String,
    },
}

/// The `edge-eval` the jobs run: `EDGE_EVAL_JOB_BINARY` (a path every node can execute), else
/// this very binary (fine where the nodes mount the same filesystem).
pub fn job_binary() -> Result<PathBuf> {
    match std::env::var_os("EDGE_EVAL_JOB_BINARY") {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe().context("cannot find this edge-eval binary"),
    }
}

struct Submitted {
    stage_id: String,
    id: String,
    files: JobFiles,
    bar: Option<Arc<StageBar>>,
    /// Polls in a row in which the scheduler did not list it.
    unlisted: u32,
    done: bool,
}

pub async fn run_scheduled(
    pipeline: &Pipeline,
    stages: &'static Registry,
    cache: &Cache,
    hardware: &Hardware,
    opts: &RunOptions,
    scheduler: &mut dyn Scheduler,
) -> Result<RunReport> {
    let mut planner = Planner::new(pipeline, stages, cache, hardware);
    planner.measured_elsewhere = true;
    let nodes = &pipeline.nodes;
    let mut w = Walk::new(pipeline, opts);
    let run_id = format!(
        "{}-{}",
        crate::cache::now_us() / 1_000_000,
        &crate::cache::unique_suffix()[..8]
    );
    let binary = job_binary()?;
    let root = std::path::absolute(cache.root()).context("cannot make the cache path absolute")?;
    std::fs::create_dir_all(root.join("jobs").join(&run_id))
        .with_context(|| format!("cannot create {}", root.join("jobs").display()))?;

    // 1. Settle what is known; everything else is submitted. Specs first (a job names its
    //    inputs' jobs, `<run>/<node>`, not their scheduler ids).
    let mut to_submit: Vec<NodeIdx> = vec![];
    let mut pending_of: BTreeMap<NodeIdx, Vec<NodeIdx>> = BTreeMap::new();
    for i in w.order() {
        if w.outcomes[i].is_some() {
            continue; // skipped: something upstream failed
        }
        let node = &nodes[i];
        let pending: Vec<NodeIdx> = node
            .deps
            .iter()
            .copied()
            .filter(|d| pending_of.contains_key(d))
            .collect();
        if pending.is_empty() {
            let state = planner.evaluate(i, &w.states);
            if !w.settle(i, state) {
                continue;
            }
        }
        let job = job_name(&run_id, i);
        let files = JobFiles::new(&root, &job)?;
        let spec = JobSpec {
            edge_eval_version: env!("CARGO_PKG_VERSION").into(),
            pipeline: pipeline.name.clone(),
            stage_id: node.id.clone(),
            kind: node.kind().into(),
            params: node.params.clone(),
            deps: node.deps.clone(),
            base_dir: std::path::absolute(&node.base_dir).unwrap_or(node.base_dir.clone()),
            inputs: node
                .deps
                .iter()
                .map(|d| {
                    let input = match (pending_of.contains_key(d), w.states[*d].artifact()) {
                        (true, _) => Input::Job(job_name(&run_id, *d)),
                        (false, Some(a)) => Input::Known(a.clone()),
                        (false, None) => unreachable!("inputs are settled or submitted"),
                    };
                    (*d, input)
                })
                .collect(),
        };
        let tmp = files.spec.with_extension("tmp");
        write_atomic_via(&tmp, &files.spec, &serde_json::to_vec_pretty(&spec)?)?;
        pending_of.insert(i, pending);
        to_submit.push(i);
    }

    if w.stop.is_some() {
        // Nothing is submitted after a failure found while settling: the specs go too.
        let _ = std::fs::remove_dir_all(root.join("jobs").join(&run_id));
    }

    // 2. Submit: stages alike (same resources, same jobs to wait for) as one job array.
    let mut submitted: BTreeMap<NodeIdx, Submitted> = BTreeMap::new();
    if w.stop.is_none() {
        let need_of = |i: NodeIdx| super::need(stages.of(&nodes[i]), &nodes[i]);
        for group in arrays(&to_submit, &pending_of, need_of) {
            let need = need_of(group[0]);
            let list = group
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let command = [binary.display().to_string()]
                .into_iter()
                .chain(
                    cache
                        .remote_url()
                        .map(|url| ["--remote-cache".to_string(), url.to_string()])
                        .into_iter()
                        .flatten(),
                )
                .chain([
                    "exec-stage".into(),
                    root.display().to_string(),
                    format!("{run_id}/{list}"),
                ])
                .collect();
            let mut after: Vec<String> = pending_of[&group[0]]
                .iter()
                .map(|d| submitted[d].id.clone())
                .collect();
            after.sort();
            let logs: Vec<PathBuf> = group
                .iter()
                .map(|&i| JobFiles::new(&root, &job_name(&run_id, i)).map(|f| f.log))
                .collect::<Result<_>>()?;
            let submission = Submission {
                stage_ids: group.iter().map(|&i| nodes[i].id.as_str()).collect(),
                command,
                after,
                need,
                measuring: need.exclusive,
                logs: &logs,
            };
            match scheduler.submit(&submission) {
                Ok(tasks) => {
                    for (&i, (id, log)) in group.iter().zip(tasks) {
                        w.ui.line(&format!(
                            "→ {} submitted as {} job {id}",
                            nodes[i].id,
                            scheduler.name()
                        ));
                        w.states[i] = State::Blocked {
                            reason: format!("{} job {id}", scheduler.name()),
                        };
                        let mut files = JobFiles::new(&root, &job_name(&run_id, i))?;
                        files.log = log;
                        submitted.insert(
                            i,
                            Submitted {
                                stage_id: nodes[i].id.clone(),
                                id,
                                files,
                                bar: None,
                                unlisted: 0,
                                done: false,
                            },
                        );
                    }
                }
                Err(e) => {
                    // Nothing below it can be submitted; what is already queued goes on.
                    let error = format!("cannot submit to {}: {e:#}", scheduler.name());
                    for &i in &group {
                        w.ui.error(&format!("✗ {}: {error}", nodes[i].id));
                        w.outcomes[i] = Some(Outcome::simple(Status::Failed, Some(error.clone())));
                        w.states[i] = State::Failed {
                            error: "not submitted".into(),
                        };
                        w.ui.stage_done(None);
                        w.skip_downstream(i);
                    }
                    w.stop.get_or_insert_with(|| {
                        format!("submitting `{}` failed", nodes[group[0]].id)
                    });
                    break;
                }
            }
        }
    }

    // 3. Follow the jobs until each has a result, has failed, or was cancelled.
    let mut interrupted = false;
    let mut queue_failing = false;
    let poll = poll_interval();
    while submitted.values().any(|s| !s.done) {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = super::interrupt() => {
                interrupted = true;
                let ids: Vec<String> = submitted.values().filter(|s| !s.done).map(|s| s.id.clone()).collect();
                w.ui.error(&format!("interrupt: cancelling {} {} job(s); finished results are kept", ids.len(), scheduler.name()));
                if let Err(e) = scheduler.cancel(&ids) {
                    w.ui.error(&format!("cannot cancel the jobs: {e:#}"));
                }
                for (i, s) in submitted.iter_mut().filter(|(_, s)| !s.done) {
                    s.done = true;
                    w.ui.stage_done(s.bar.take());
                    w.outcomes[*i].get_or_insert_with(|| Outcome::simple(Status::Skipped, Some(format!("interrupted (Ctrl-C or SIGTERM): {} job {} cancelled", scheduler.name(), s.id))));
                }
                break;
            }
        }
        let open: Vec<String> = submitted
            .values()
            .filter(|s| !s.done)
            .map(|s| s.id.clone())
            .collect();
        let queue = match scheduler.states(&open) {
            Ok(q) => {
                queue_failing = false;
                Some(q)
            }
            Err(e) => {
                // Once per outage, not every poll; result files are still read meanwhile.
                if !queue_failing {
                    w.ui.error(&format!(
                        "cannot read the {} queue (retrying): {e:#}",
                        scheduler.name()
                    ));
                }
                queue_failing = true;
                None
            }
        };
        let mut failed_now = vec![];
        for (&i, s) in submitted.iter_mut().filter(|(_, s)| !s.done) {
            let listed = queue.as_ref().and_then(|q| q.get(&s.id));
            if let Some(r) = s.files.read_result() {
                finish(&mut w, i, s, r, cache, &planner);
                if w.outcomes[i]
                    .as_ref()
                    .is_some_and(|o| o.status == Status::Failed)
                {
                    w.skip_downstream(i);
                    failed_now.push(i);
                }
                continue;
            }
            if w.outcomes[i].is_some() {
                // Skipped (an upstream job failed); the scheduler drops it by itself.
                s.done = true;
                continue;
            }
            match listed {
                Some(JobState::Running) if s.bar.is_none() => {
                    s.bar = Some(w.ui.stage_started(&nodes[i].id));
                }
                Some(JobState::Queued(_) | JobState::Running) => s.unlisted = 0,
                Some(JobState::Ended { state, reason }) => {
                    let (state, reason) = (state.clone(), reason.clone());
                    // The result file may have landed between the two reads.
                    if let Some(r) = s.files.read_result() {
                        finish(&mut w, i, s, r, cache, &planner);
                    } else {
                        let why = format!(
                            "{} job {} ended {state} ({reason}) without a result",
                            scheduler.name(),
                            s.id
                        );
                        fail(&mut w, i, s, why);
                    }
                    if w.outcomes[i]
                        .as_ref()
                        .is_some_and(|o| o.status == Status::Failed)
                    {
                        w.skip_downstream(i);
                        failed_now.push(i);
                    }
                }
                None if queue.is_some() => {
                    s.unlisted += 1;
                    if s.unlisted >= 3 && s.files.read_result().is_none() {
                        let why = format!(
                            "{} job {} left the queue without a result",
                            scheduler.name(),
                            s.id
                        );
                        fail(&mut w, i, s, why);
                        w.skip_downstream(i);
                        failed_now.push(i);
                    }
                }
                _ => {}
            }
        }
        for i in failed_now {
            let stopped_before = w.stop.is_some();
            w.failed(i, true);
            if w.stop.is_some() && !stopped_before {
                // Like a local run: what runs finishes, nothing new starts.
                let queued: Vec<(NodeIdx, String)> = submitted
                    .iter()
                    .filter(|(_, s)| !s.done)
                    .filter(|(_, s)| {
                        matches!(
                            queue.as_ref().and_then(|q| q.get(&s.id)),
                            Some(JobState::Queued(_))
                        )
                    })
                    .map(|(i, s)| (*i, s.id.clone()))
                    .collect();
                if !queued.is_empty() {
                    let ids: Vec<String> = queued.iter().map(|(_, id)| id.clone()).collect();
                    if let Err(e) = scheduler.cancel(&ids) {
                        w.ui.error(&format!("cannot cancel queued jobs: {e:#}"));
                    }
                    for (q, _) in queued {
                        let s = submitted.get_mut(&q).expect("listed");
                        s.done = true;
                        let stop = w.stop.clone();
                        w.outcomes[q].get_or_insert_with(|| Outcome::simple(Status::Skipped, stop));
                        w.ui.stage_done(None);
                    }
                }
            }
        }
    }
    w.conclude(&mut planner, interrupted)
}

/// Groups of alike stages, in an order in which every group comes after the groups of the
/// stages it waits for. Stages are alike when they need the same resources and wait for the
/// same jobs; a group's stages then never depend on each other.
fn arrays(
    order: &[NodeIdx],
    pending_of: &BTreeMap<NodeIdx, Vec<NodeIdx>>,
    need_of: impl Fn(NodeIdx) -> Resources,
) -> Vec<Vec<NodeIdx>> {
    let mut groups: Vec<Vec<NodeIdx>> = vec![];
    let mut index: BTreeMap<(String, Vec<NodeIdx>), usize> = BTreeMap::new();
    let mut group_of: BTreeMap<NodeIdx, usize> = BTreeMap::new();
    for &i in order {
        let mut waits = pending_of[&i].clone();
        waits.sort();
        let need = need_of(i);
        let key = (format!("{need:?}"), waits);
        let g = *index.entry(key).or_insert_with(|| {
            groups.push(vec![]);
            groups.len() - 1
        });
        groups[g].push(i);
        group_of.insert(i, g);
    }
    // A group waits for the groups of its stages' inputs (acyclic: see the doc comment).
    let mut waiting: Vec<usize> = vec![0; groups.len()];
    let mut below: Vec<Vec<usize>> = vec![vec![]; groups.len()];
    for (g, members) in groups.iter().enumerate() {
        let ups: std::collections::BTreeSet<usize> = pending_of[&members[0]]
            .iter()
            .map(|d| group_of[d])
            .collect();
        waiting[g] = ups.len();
        for u in ups {
            below[u].push(g);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..groups.len()).filter(|g| waiting[*g] == 0).collect();
    let mut out = vec![];
    while let Some(g) = ready.pop_first() {
        out.push(groups[g].clone());
        for &b in &below[g] {
            waiting[b] -= 1;
            if waiting[b] == 0 {
                ready.insert(b);
            }
        }
    }
    out
}

/// A job's result file is in: its manifest becomes the node's state.
#[allow(clippy::too_many_arguments)]
fn finish(
    w: &mut Walk,
    i: NodeIdx,
    s: &mut Submitted,
    r: JobResult,
    cache: &Cache,
    planner: &Planner,
) {
    let where_ = format!("job {} on {}", s.id, r.host);
    if let Some(e) = r.error {
        return fail(w, i, s, format!("{e} ({where_})"));
    }
    let manifest = match r.key.as_deref().map(|k| cache.lookup(k)) {
        Some(Lookup::Hit(m)) => m,
        _ => {
            let why = format!("{where_} reported success, but its result is not in the cache");
            return fail(w, i, s, why);
        }
    };
    let status = if r.ran { Status::Ran } else { Status::Cached };
    s.done = true;
    w.ui.stage_done(s.bar.take());
    w.ui.line(&format!(
        "✓ {} ({:.1} s, {where_}{})",
        planner.pipeline.nodes[i].id,
        manifest.seconds,
        if r.ran { "" } else { ", found cached" }
    ));
    w.outcomes[i] = Some(Outcome::finished(status, &manifest));
    w.states[i] = State::Done {
        artifact: planner.artifact_of(&manifest),
        manifest: Some(manifest),
    };
}

/// A job failed: its error, with the job id and the tail of its log.
fn fail(w: &mut Walk, i: NodeIdx, s: &mut Submitted, why: String) {
    let tail = log_tail(&s.files.log, 12);
    let error = if tail.is_empty() {
        format!("{why}; log {} is empty", s.files.log.display())
    } else {
        format!(
            "{why}\n  last lines of {}:\n{}",
            s.files.log.display(),
            tail.lines()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    w.ui.error(&format!("✗ {}: {error}", s.stage_id));
    w.outcomes[i] = Some(Outcome::simple(Status::Failed, Some(error.clone())));
    w.states[i] = State::Failed { error };
    s.done = true;
    w.ui.stage_done(s.bar.take());
}

/// The last `n` lines of a file (empty when it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How often the queue and the result files are read (`EDGE_EVAL_POLL_MS`, default 2 s).
fn poll_interval() -> Duration {
    std::env::var("EDGE_EVAL_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::Device;

    #[test]
    fn alike_stages_are_grouped_and_groups_follow_their_inputs() {
        // 0,1: finetunes (nothing to wait for); 2,3: quantize of 0; 4: quantize of 1;
        // 5: a measurement of 2 (exclusive); 6: a CPU stage of 2 (other resources).
        let pending: BTreeMap<NodeIdx, Vec<NodeIdx>> = [
            (0, vec![]),
            (1, vec![]),
            (2, vec![0]),
            (3, vec![0]),
            (4, vec![1]),
            (5, vec![2]),
            (6, vec![2]),
        ]
        .into_iter()
        .collect();
        let need = |i: NodeIdx| Resources {
            threads: 1,
            device: if i == 6 { Device::Cpu } else { Device::Cuda(0) },
            exclusive: i == 5,
        };
        let groups = arrays(&[0, 1, 2, 3, 4, 5, 6], &pending, need);
        assert_eq!(
            groups,
            vec![vec![0, 1], vec![2, 3], vec![4], vec![5], vec![6]]
        );
    }
}
