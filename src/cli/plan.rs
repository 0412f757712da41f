//! `plan` (every stage: cached or will run, why, and where) and `explain STAGE` (its key and
//! what changed since the last run).

use super::*;

pub(super) fn is_input(pipeline: &Pipeline, i: usize, state: &State) -> bool {
    pipeline.nodes[i].role() == Role::Source
        && matches!(
            state,
            State::Done { manifest: None, .. } | State::Failed { .. }
        )
}

pub(super) fn print_plan(pipeline: &Pipeline, states: &[State], executor: &Executor, json: bool) {
    let mut inputs = vec![];
    let mut stages = vec![];
    for (i, (node, state)) in pipeline.nodes.iter().zip(states).enumerate() {
        let (status, reason, key) = match state {
            State::Done {
                manifest: Some(m), ..
            } => ("cached", String::new(), Some(m.key.clone())),
            State::Done { manifest: None, .. } => ("ready", String::new(), None),
            State::Stale { reason, key, .. } => ("stale", reason.clone(), Some(key.clone())),
            State::Blocked { reason } => ("stale", reason.clone(), None),
            State::Failed { error } if is_input(pipeline, i, state) => {
                ("missing", error.clone(), None)
            }
            State::Failed { error } => ("stale", format!("blocked: {error}"), None),
        };
        let runs_on =
            (status == "stale").then(|| exec::placement(executor, REGISTRY.of(node), node));
        let inputs_known: std::collections::BTreeMap<usize, engine::stage::Artifact> = node
            .deps
            .iter()
            .filter_map(|&d| Some((d, states[d].artifact()?.clone())))
            .collect();
        let work = REGISTRY.of(node).work_estimate(&node.params, &inputs_known);
        let entry = json!({ "id": node.id, "kind": node.kind(), "status": status, "reason": reason, "key": key, "where": runs_on, "work": work });
        if is_input(pipeline, i, state) {
            inputs.push(entry);
        } else {
            stages.push(entry);
        }
    }
    if json {
        println!(
            "{}",
            json!({ "pipeline": pipeline.name, "inputs": inputs, "stages": stages })
        );
        return;
    }
    let n = |list: &[serde_json::Value], s: &str| list.iter().filter(|e| e["status"] == s).count();
    println!(
        "{}: {} stages — {} cached, {} will run; {} inputs — {} ready, {} missing",
        pipeline.name,
        stages.len(),
        n(&stages, "cached"),
        n(&stages, "stale"),
        inputs.len(),
        n(&inputs, "ready"),
        n(&inputs, "missing"),
    );
    let width = pipeline
        .nodes
        .iter()
        .map(|n| n.id.chars().count())
        .max()
        .unwrap_or(0)
        .min(48);
    for e in inputs.iter().chain(&stages) {
        let status = match e["status"].as_str().unwrap_or("") {
            "stale" => "run",
            s => s,
        };
        let id = e["id"].as_str().unwrap_or("");
        let kind = e["kind"].as_str().unwrap_or("");
        let reason = e["reason"].as_str().unwrap_or("");
        let runs_on = e["where"]
            .as_str()
            .map(|w| format!("[{w}] "))
            .unwrap_or_default();
        let work = e["work"]
            .as_str()
            .map(|w| format!("{w}; "))
            .unwrap_or_default();
        let line = format!("  {status:<7} {kind:<10} {id:<width$}  {runs_on}{work}{reason}");
        println!("{}", line.trim_end());
    }
}

pub(super) fn explain(
    pipeline: &Pipeline,
    cache: &Cache,
    hw: &Hardware,
    stage: &str,
) -> Result<i32> {
    let Some(i) = pipeline.node_index(stage) else {
        let hint = lang::resolve::suggest_id(stage, pipeline.nodes.iter().map(|n| n.id.as_str()))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        eprintln!("error: no stage `{stage}` in {}{hint}", pipeline.name);
        eprintln!("  = hint: `edge-eval plan FILE` lists every stage id");
        return Ok(2);
    };
    let planner = Planner::new(pipeline, &REGISTRY, cache, hw);
    let states = planner.plan();
    let node = &pipeline.nodes[i];
    println!(
        "{} ({} v{})",
        node.id,
        node.kind(),
        REGISTRY.of(node).version()
    );
    match &states[i] {
        State::Done {
            manifest: Some(m), ..
        } => {
            println!(
                "status: cached (computed {} on {}, {:.2} s)",
                fmt_time(m.started_us),
                m.provenance.host,
                m.seconds
            )
        }
        State::Done {
            manifest: None,
            artifact,
        } => println!("status: input, ready (output {})", artifact.digest),
        State::Stale { reason, .. } => println!("status: will run — {reason}"),
        State::Blocked { reason } => println!("status: will run — {reason}"),
        State::Failed { error } => println!("status: cannot run — {error}"),
    }
    println!("parameters:");
    for (k, v) in show_params(&pipeline.nodes, node) {
        println!("  {k} = {v}");
    }
    let all_inputs_known = node.deps.iter().all(|d| states[*d].artifact().is_some());
    if !all_inputs_known {
        println!(
            "key: not known yet — it contains the output digests of its inputs, and these are not all computed:"
        );
        for d in &node.deps {
            if states[*d].artifact().is_none() {
                println!(
                    "  {} ({})",
                    pipeline.nodes[*d].id,
                    engine::plan::status_word(&states[*d])
                );
            }
        }
        return Ok(0);
    }
    if node.role() == Role::Source && matches!(states[i], State::Done { manifest: None, .. }) {
        return Ok(0);
    }
    let components = planner.components(node, &states);
    println!("key: {}", components.key());
    println!("key components:");
    println!("  kind = {} v{}", components.kind, components.version);
    for (k, v) in &components.params {
        println!("  {k} = {v}");
    }
    println!(
        "  hardware = {}",
        components
            .hardware
            .as_deref()
            .unwrap_or("(not a measuring stage)")
    );
    match planner.history.get(&node.id) {
        None => println!("last run: none recorded for this stage id"),
        Some(prev) => {
            let before = prev.get("components").and_then(|c| {
                serde_json::from_value::<engine::plan::KeyComponents>(c.clone()).ok()
            });
            match before {
                Some(b) if b == components => println!("last run: same key components"),
                Some(b) => {
                    println!(
                        "last run: key {}; what changed since:",
                        prev["key"].as_str().unwrap_or("?")
                    );
                    for d in engine::plan::diff(&pipeline.nodes, node, &b, &components) {
                        println!("  - {d}");
                    }
                }
                None => println!("last run: record unreadable"),
            }
        }
    }
    Ok(0)
}
