//! The graph walk both executors share: who waits for whom, each node's state and outcome, how a
//! failure propagates (its dependents are skipped; without `--keep-going` the run stops), and
//! the end of a run. The local executor releases a node's dependents as it finishes; the batch
//! executor walks the whole graph up front ([`Walk::order`]), because the scheduler holds the
//! dependencies.

use super::{Outcome, RunOptions, RunReport, Status};
use crate::plan::{Planner, State};
use crate::ui::Ui;
use anyhow::Result;
use lang::Pipeline;
use spec::NodeIdx;
use std::collections::BTreeSet;

pub(crate) struct Walk<'a> {
    pipeline: &'a Pipeline,
    /// Per node, the nodes that take it as an input.
    pub dependents: Vec<Vec<NodeIdx>>,
    /// Per node, how many of its inputs are not yet settled.
    waiting: Vec<usize>,
    /// Nodes whose inputs are all settled, not yet taken.
    ready: BTreeSet<NodeIdx>,
    pub states: Vec<State>,
    pub outcomes: Vec<Option<Outcome>>,
    /// Why nothing new starts (a failure without `--keep-going`, an interrupt).
    pub stop: Option<String>,
    keep_going: bool,
    pub ui: Ui,
}

fn release(
    dependents: &[Vec<NodeIdx>],
    waiting: &mut [usize],
    ready: &mut BTreeSet<NodeIdx>,
    i: NodeIdx,
) {
    for &d in &dependents[i] {
        waiting[d] -= 1;
        if waiting[d] == 0 {
            ready.insert(d);
        }
    }
}

impl<'a> Walk<'a> {
    pub fn new(pipeline: &'a Pipeline, opts: &RunOptions) -> Walk<'a> {
        let nodes = &pipeline.nodes;
        let n = nodes.len();
        let mut dependents: Vec<Vec<NodeIdx>> = vec![vec![]; n];
        for (i, node) in nodes.iter().enumerate() {
            for d in &node.deps {
                dependents[*d].push(i);
            }
        }
        let waiting: Vec<usize> = nodes.iter().map(|x| x.deps.len()).collect();
        Walk {
            pipeline,
            ready: (0..n).filter(|i| waiting[*i] == 0).collect(),
            waiting,
            dependents,
            states: vec![
                State::Blocked {
                    reason: "not reached".into()
                };
                n
            ],
            outcomes: vec![None; n],
            stop: None,
            keep_going: opts.keep_going,
            ui: Ui::new(n as u64, opts.quiet),
        }
    }

    /// The next node whose inputs are all settled (lowest index first).
    pub fn pop_ready(&mut self) -> Option<NodeIdx> {
        self.ready.pop_first()
    }

    /// Node `i` is settled: its dependents wait for one input less.
    pub fn release(&mut self, i: NodeIdx) {
        release(&self.dependents, &mut self.waiting, &mut self.ready, i);
    }

    /// Every node after its inputs, lowest index first among the ready ones (the whole walk at
    /// once, for an executor that submits everything up front; the live walk is untouched).
    pub fn order(&self) -> Vec<NodeIdx> {
        let (mut waiting, mut ready) = (self.waiting.clone(), self.ready.clone());
        let mut order = vec![];
        while let Some(i) = ready.pop_first() {
            order.push(i);
            release(&self.dependents, &mut waiting, &mut ready, i);
        }
        order
    }

    /// Records what the planner found for node `i` without running anything: a cache hit or a
    /// plan-time source is done (and releases its dependents), a failure propagates. Returns
    /// whether the node must run (its state is `Stale`).
    pub fn settle(&mut self, i: NodeIdx, state: State) -> bool {
        let stale = match &state {
            State::Done { manifest, .. } => {
                if let Some(m) = manifest {
                    self.outcomes[i] = Some(Outcome {
                        key: Some(m.key.clone()),
                        manifest: Some(m.clone()),
                        ..Outcome::simple(Status::Cached, None)
                    });
                }
                self.ui.stage_done(None);
                self.release(i);
                false
            }
            State::Stale { .. } => true,
            State::Failed { error } => {
                let error = error.clone();
                self.ui
                    .error(&format!("✗ {}: {error}", self.pipeline.nodes[i].id));
                self.outcomes[i] = Some(Outcome::simple(Status::Failed, Some(error)));
                self.ui.stage_done(None);
                self.failed(i, false);
                false
            }
            // Inputs still to come (the batch executor settles what it can before submitting).
            State::Blocked { .. } => false,
        };
        self.states[i] = state;
        stale
    }

    /// Node `i` failed (its outcome is recorded): everything downstream is skipped, and without
    /// `--keep-going` the run stops (`hint`: say how to go on).
    pub fn failed(&mut self, i: NodeIdx, hint: bool) {
        self.skip_downstream(i);
        if !self.keep_going && self.stop.is_none() {
            let id = &self.pipeline.nodes[i].id;
            self.stop = Some(if hint {
                format!(
                    "run stopped after `{id}` failed (use --keep-going to continue independent stages)"
                )
            } else {
                format!("run stopped after `{id}` failed")
            });
        }
    }

    /// Every node downstream of `failed` that has no outcome yet is skipped, with the reason.
    pub fn skip_downstream(&mut self, failed: NodeIdx) {
        let mut stack = self.dependents[failed].clone();
        while let Some(d) = stack.pop() {
            if self.outcomes[d].is_none() {
                self.outcomes[d] = Some(Outcome::simple(
                    Status::Skipped,
                    Some(format!(
                        "upstream `{}` failed",
                        self.pipeline.nodes[failed].id
                    )),
                ));
                self.ui.stage_done(None);
                stack.extend(self.dependents[d].iter().copied());
            }
        }
    }

    /// The end of a run: everything not reached was skipped (with the reason), and what ran or
    /// was found cached becomes the history `plan` explains reruns against.
    pub fn conclude(mut self, planner: &mut Planner, interrupted: bool) -> Result<RunReport> {
        self.ui.finish();
        let why = self.stop.unwrap_or_else(|| "not reached".into());
        for (i, o) in self.outcomes.iter_mut().enumerate() {
            let reached = matches!(self.states[i], State::Done { .. } | State::Failed { .. });
            if o.is_none() && !reached {
                *o = Some(Outcome::simple(Status::Skipped, Some(why.clone())));
            }
        }
        planner.record_history(&self.states)?;
        Ok(RunReport {
            outcomes: self.outcomes,
            interrupted,
            states: self.states,
        })
    }
}
