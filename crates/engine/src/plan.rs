//! Planning: for each node, its cache key and whether it is cached, and why not.
//!
//! A stage's key is blake3 over its [`KeyComponents`]: kind, implementation version, canonical
//! parameters in which every reference to another node is replaced by that node's OUTPUT digest,
//! and — for measuring stages — the hardware fingerprint. A key is therefore only known once all
//! upstream outputs are known: a stage below one that will run is "blocked" until then, and if
//! the upstream reproduces identical bytes, the stage below turns out cached (early cutoff).

use crate::cache::{Cache, Lookup, Manifest};
use crate::stage::{Artifact, PlanCtx, Registry, Role, Stage};
use lang::{Node, Pipeline};
use meter::hw::Hardware;
use serde::{Deserialize, Serialize};
use spec::{NodeIdx, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Everything a stage's cache key is computed from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyComponents {
    pub kind: String,
    pub version: u32,
    pub params: BTreeMap<String, serde_json::Value>,
    pub hardware: Option<String>,
}

impl KeyComponents {
    pub fn key(&self) -> String {
        let text = serde_json::to_string(self).expect("components serialize");
        blake3::hash(text.as_bytes()).to_hex().to_string()
    }
}

/// What is known about one node at some point of planning or running.
#[derive(Debug, Clone)]
pub enum State {
    /// Output known: a local source, or a cache hit.
    Done {
        artifact: Artifact,
        manifest: Option<Box<Manifest>>,
    },
    /// Key known, no usable result: it must run.
    Stale {
        components: KeyComponents,
        key: String,
        reason: String,
    },
    /// Waiting for upstream outputs (reason names the first one).
    Blocked { reason: String },
    /// Cannot run (a source is missing, or a stage failed).
    Failed { error: String },
}

impl State {
    pub fn artifact(&self) -> Option<&Artifact> {
        match self {
            State::Done { artifact, .. } => Some(artifact),
            _ => None,
        }
    }
}

/// The key components of `node` given its inputs' output digests (its parameters but those that
/// only change how its rows are shown, [`Stage::presentation_params`]); a measuring stage's
/// include the fingerprint of the hardware behind `device` (on this host).
pub fn key_components(
    stage: &dyn Stage,
    node: &Node,
    hardware: &Hardware,
    device: spec::Device,
    digest_of: &dyn Fn(NodeIdx) -> String,
) -> KeyComponents {
    let params = node
        .params
        .iter()
        .filter(|(k, _)| !stage.presentation_params().contains(&k.as_str()))
        .map(|(k, v)| {
            let json = v.to_json(&|n| serde_json::json!({ "digest": digest_of(n) }));
            (k.clone(), json)
        })
        .collect();
    let hardware = stage
        .measuring(&node.params)
        .then(|| hardware.fingerprint(device));
    KeyComponents {
        kind: node.kind().to_string(),
        version: stage.version(),
        params,
        hardware,
    }
}

/// What a cached result hands downstream: its output digest, its objects' paths, its record.
pub fn artifact_of(cache: &Cache, m: &Manifest) -> Artifact {
    Artifact {
        digest: m.output_digest.clone(),
        files: m
            .files
            .iter()
            .map(|(n, o)| (n.clone(), cache.object_path(&o.digest)))
            .collect(),
        record: m.record.clone(),
    }
}

/// Plans nodes against one cache and machine.
pub struct Planner<'a> {
    pub pipeline: &'a Pipeline,
    pub stages: &'static Registry,
    pub cache: &'a Cache,
    pub hardware: &'a Hardware,
    /// Per stage id: `{"key": …, "components": …}` at its last run.
    pub history: BTreeMap<String, serde_json::Value>,
    /// Stages run on other hosts (a batch scheduler's nodes): a measuring stage's key holds the
    /// fingerprint of the node that measured it, which this host cannot know in advance. Its
    /// last measurement (from the history) counts as cached when everything else in its key is
    /// unchanged; otherwise the job computes the key on its node.
    pub measured_elsewhere: bool,
}

impl PlanCtx for Cache {
    fn digest_path(&self, path: &Path) -> anyhow::Result<String> {
        self.digest_file(path)
    }
}

impl<'a> Planner<'a> {
    pub fn new(
        pipeline: &'a Pipeline,
        stages: &'static Registry,
        cache: &'a Cache,
        hardware: &'a Hardware,
    ) -> Planner<'a> {
        Planner {
            pipeline,
            stages,
            cache,
            hardware,
            history: cache.history(&pipeline.name),
            measured_elsewhere: false,
        }
    }

    /// Node indices in dependency order (the resolver has rejected cycles).
    pub fn order(&self) -> Vec<NodeIdx> {
        let mut g = petgraph::graph::DiGraph::<(), ()>::new();
        let ix: Vec<_> = self.pipeline.nodes.iter().map(|_| g.add_node(())).collect();
        for (i, n) in self.pipeline.nodes.iter().enumerate() {
            for d in &n.deps {
                g.add_edge(ix[*d], ix[i], ());
            }
        }
        petgraph::algo::toposort(&g, None)
            .expect("the resolver rejects cycles")
            .into_iter()
            .map(|n| n.index())
            .collect()
    }

    /// Components of a node whose inputs are all known.
    pub fn components(&self, node: &Node, states: &[State]) -> KeyComponents {
        key_components(
            self.stages.of(node),
            node,
            self.hardware,
            node.device(),
            &|n| {
                states[n]
                    .artifact()
                    .map(|a| a.digest.clone())
                    .unwrap_or_default()
            },
        )
    }

    /// The state of node `i` given the states of everything upstream of it.
    pub fn evaluate(&self, i: NodeIdx, states: &[State]) -> State {
        let node = &self.pipeline.nodes[i];
        for d in &node.deps {
            match &states[*d] {
                State::Done { .. } => {}
                State::Failed { error: up_error } => {
                    let up = &self.pipeline.nodes[*d];
                    let error = if up.role() == Role::Source && up.deps.is_empty() {
                        format!("input `{}` is unavailable", up.id)
                    } else if up_error.starts_with("input `") {
                        // Blocked by the same missing input: name it, not the stage between.
                        up_error.clone()
                    } else {
                        format!("upstream `{}` failed", up.id)
                    };
                    return State::Failed { error };
                }
                _ => {
                    return State::Blocked {
                        reason: format!("upstream `{}` will run", self.pipeline.nodes[*d].id),
                    };
                }
            }
        }
        if let Some(result) =
            self.stages
                .of(node)
                .plan_time(&node.params, &node.base_dir, self.cache)
        {
            return match result {
                Ok(artifact) => State::Done {
                    artifact,
                    manifest: None,
                },
                Err(e) => State::Failed {
                    error: format!("{e:#}"),
                },
            };
        }
        let components = self.components(node, states);
        let key = components.key();
        if let Some(m) = self.measured_on_another_host(node, &components) {
            return State::Done {
                artifact: self.artifact_of(&m),
                manifest: Some(m),
            };
        }
        match self.cache.lookup(&key) {
            Lookup::Hit(m) => State::Done {
                artifact: self.artifact_of(&m),
                manifest: Some(m),
            },
            Lookup::Miss => State::Stale {
                reason: self.reason(node, &components, &key),
                components,
                key,
            },
            Lookup::Broken(why) => State::Stale {
                reason: format!("cached entry unusable ({why})"),
                components,
                key,
            },
        }
    }

    /// With `measured_elsewhere`: the last result of this measuring stage, if it differs from
    /// `now` only in the hardware it was measured on.
    fn measured_on_another_host(&self, node: &Node, now: &KeyComponents) -> Option<Box<Manifest>> {
        if !self.measured_elsewhere || now.hardware.is_none() {
            return None;
        }
        let last = self.history.get(&node.id)?;
        let before: KeyComponents = serde_json::from_value(last.get("components")?.clone()).ok()?;
        let same_work = KeyComponents {
            hardware: now.hardware.clone(),
            ..before
        } == *now;
        match self.cache.lookup(last.get("key")?.as_str()?) {
            Lookup::Hit(m) if same_work => Some(m),
            _ => None,
        }
    }

    pub fn artifact_of(&self, m: &Manifest) -> Artifact {
        artifact_of(self.cache, m)
    }

    /// Plans every node without running anything.
    pub fn plan(&self) -> Vec<State> {
        let mut states = vec![
            State::Blocked {
                reason: String::new()
            };
            self.pipeline.nodes.len()
        ];
        for i in self.order() {
            states[i] = self.evaluate(i, &states);
        }
        states
    }

    /// Why a stage with these components is not cached, relative to its last recorded run.
    pub fn reason(&self, node: &Node, now: &KeyComponents, key: &str) -> String {
        let Some(prev) = self.history.get(&node.id) else {
            return "never run".into();
        };
        if prev.get("key").and_then(|k| k.as_str()) == Some(key) {
            return "same key as the last run, but its result is no longer in the cache".into();
        }
        let Some(before) = prev
            .get("components")
            .and_then(|c| serde_json::from_value::<KeyComponents>(c.clone()).ok())
        else {
            return "never run".into();
        };
        let diffs = diff(&self.pipeline.nodes, node, &before, now);
        if diffs.is_empty() {
            "key changed".into()
        } else {
            diffs.join("; ")
        }
    }

    /// Records the components of the stages whose key is known, for later `plan` reasons.
    pub fn record_history(&mut self, states: &[State]) -> anyhow::Result<()> {
        let mut changed = false;
        for (node, state) in self.pipeline.nodes.iter().zip(states) {
            let (key, components) = match state {
                State::Done {
                    manifest: Some(m), ..
                } => (m.key.clone(), m.components.clone()),
                _ => continue,
            };
            let entry = serde_json::json!({ "key": key, "components": components });
            if self.history.get(&node.id) != Some(&entry) {
                self.history.insert(node.id.clone(), entry);
                changed = true;
            }
        }
        if changed {
            self.cache
                .save_history(&self.pipeline.name, &self.history)?;
        }
        Ok(())
    }
}

fn short(v: &serde_json::Value) -> String {
    match v.get("digest").and_then(|d| d.as_str()) {
        Some(d) => format!("output {}", &d[..12.min(d.len())]),
        None => {
            let s = v.to_string();
            if s.chars().count() > 60 {
                format!("{}…", s.chars().take(60).collect::<String>())
            } else {
                s
            }
        }
    }
}

/// Human-readable differences between two sets of key components.
pub fn diff(
    nodes: &[Node],
    node: &Node,
    before: &KeyComponents,
    now: &KeyComponents,
) -> Vec<String> {
    let mut out = vec![];
    if before.kind != now.kind || before.version != now.version {
        out.push(format!(
            "implementation changed ({} v{} → {} v{})",
            before.kind, before.version, now.kind, now.version
        ));
    }
    let keys: std::collections::BTreeSet<&String> =
        before.params.keys().chain(now.params.keys()).collect();
    for k in keys {
        match (before.params.get(k), now.params.get(k)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                let mut refs = vec![];
                if let Some(v) = node.params.get(k) {
                    v.nodes(&mut refs);
                }
                if !refs.is_empty() {
                    let names: Vec<String> =
                        refs.iter().map(|r| format!("`{}`", nodes[*r].id)).collect();
                    out.push(format!(
                        "input `{k}` changed ({} produced different output)",
                        names.join(", ")
                    ));
                } else {
                    out.push(format!("`{k}` changed: {} → {}", short(a), short(b)));
                }
            }
            (None, Some(b)) => out.push(format!("`{k}` added: {}", short(b))),
            (Some(a), None) => out.push(format!("`{k}` removed (was {})", short(a))),
            (None, None) => {}
        }
    }
    if before.hardware != now.hardware {
        out.push(format!(
            "hardware changed: {} → {}",
            before.hardware.as_deref().unwrap_or("none"),
            now.hardware.as_deref().unwrap_or("none")
        ));
    }
    out
}

/// Shorthand used by CLI output.
pub fn status_word(state: &State) -> &'static str {
    match state {
        State::Done {
            manifest: Some(_), ..
        } => "cached",
        State::Done { manifest: None, .. } => "ready",
        State::Stale { .. } | State::Blocked { .. } => "stale",
        State::Failed { .. } => "missing",
    }
}

/// Parameters as shown to users (node references by id).
pub fn show_params(nodes: &[Node], node: &Node) -> Vec<(String, String)> {
    node.params
        .iter()
        .map(|(k, v)| (k.clone(), show_value(nodes, v)))
        .collect()
}

fn show_value(nodes: &[Node], v: &Value) -> String {
    match v {
        Value::Node(n) => nodes[*n].id.clone(),
        Value::List(xs) => format!(
            "[{}]",
            xs.iter()
                .map(|x| show_value(nodes, x))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}
