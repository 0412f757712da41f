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

/// `edge-eval explain FILE STAGE`: the stage's state, parameters, cache key and its
/// components, and what changed since its last recorded run; `json` prints the same as one
/// object.
pub(super) fn explain(
    pipeline: &Pipeline,
    cache: &Cache,
    hw: &Hardware,
    stage: &str,
    json: bool,
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
    let e = explanation(pipeline, &planner, &states, i);
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print_explanation(&e);
    }
    Ok(0)
}

/// What `explain` says of stage `i`, as one JSON object (the text form is printed from it).
fn explanation(
    pipeline: &Pipeline,
    planner: &Planner,
    states: &[State],
    i: usize,
) -> serde_json::Value {
    let node = &pipeline.nodes[i];
    let (status, detail, computed) = match &states[i] {
        State::Done {
            manifest: Some(m), ..
        } => (
            "cached",
            None,
            Some(json!({
                "at": fmt_time(m.started_us),
                "host": m.provenance.host,
                "seconds": m.seconds,
            })),
        ),
        State::Done {
            manifest: None,
            artifact,
        } => ("input", Some(format!("output {}", artifact.digest)), None),
        State::Stale { reason, .. } | State::Blocked { reason } => {
            ("will_run", Some(reason.to_string()), None)
        }
        State::Failed { error } => ("cannot_run", Some(error.to_string()), None),
    };
    let params: serde_json::Map<String, serde_json::Value> = show_params(&pipeline.nodes, node)
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    let mut e = json!({
        "id": node.id,
        "kind": node.kind(),
        "version": REGISTRY.of(node).version(),
        "status": status,
        "detail": detail,
        "computed": computed,
        "parameters": params,
        "key": null,
        "pending_inputs": [],
        "key_components": null,
        "last_run": null,
    });
    let pending: Vec<serde_json::Value> = node
        .deps
        .iter()
        .filter(|d| states[**d].artifact().is_none())
        .map(|d| {
            json!({
                "id": pipeline.nodes[*d].id,
                "status": engine::plan::status_word(&states[*d]),
            })
        })
        .collect();
    if !pending.is_empty() {
        e["pending_inputs"] = pending.into();
        return e;
    }
    if node.role() == Role::Source && matches!(states[i], State::Done { manifest: None, .. }) {
        return e;
    }
    let components = planner.components(node, states);
    e["key"] = components.key().into();
    e["key_components"] = serde_json::to_value(&components).expect("components serialize");
    e["last_run"] = match planner.history.get(&node.id) {
        None => json!({ "recorded": false }),
        Some(prev) => {
            let before = prev.get("components").and_then(|c| {
                serde_json::from_value::<engine::plan::KeyComponents>(c.clone()).ok()
            });
            match before {
                Some(b) => json!({
                    "recorded": true,
                    "key": prev["key"],
                    "same": b == components,
                    "changes": engine::plan::diff(&pipeline.nodes, node, &b, &components),
                }),
                None => json!({ "recorded": true, "unreadable": true }),
            }
        }
    };
    e
}

fn print_explanation(e: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "{} ({} v{})",
        text(&e["id"]),
        text(&e["kind"]),
        e["version"]
    );
    let detail = text(&e["detail"]);
    match e["status"].as_str().unwrap_or("") {
        "cached" => {
            let c = &e["computed"];
            println!(
                "status: cached (computed {} on {}, {:.2} s)",
                text(&c["at"]),
                text(&c["host"]),
                c["seconds"].as_f64().unwrap_or(0.0)
            )
        }
        "input" => println!("status: input, ready ({detail})"),
        "will_run" => println!("status: will run — {detail}"),
        _ => println!("status: cannot run — {detail}"),
    }
    println!("parameters:");
    for (k, v) in e["parameters"].as_object().into_iter().flatten() {
        println!("  {k} = {}", text(v));
    }
    if let Some(pending) = e["pending_inputs"].as_array().filter(|p| !p.is_empty()) {
        println!(
            "key: not known yet — it contains the output digests of its inputs, and these are not all computed:"
        );
        for d in pending {
            println!("  {} ({})", text(&d["id"]), text(&d["status"]));
        }
        return;
    }
    let c = &e["key_components"];
    if c.is_null() {
        return;
    }
    println!("key: {}", text(&e["key"]));
    println!("key components:");
    println!("  kind = {} v{}", text(&c["kind"]), c["version"]);
    for (k, v) in c["params"].as_object().into_iter().flatten() {
        println!("  {k} = {v}");
    }
    let hardware = c["hardware"].as_str().unwrap_or("(not a measuring stage)");
    println!("  hardware = {hardware}");
    let last = &e["last_run"];
    if last["recorded"] != true {
        println!("last run: none recorded for this stage id");
    } else if last["unreadable"] == true {
        println!("last run: record unreadable");
    } else if last["same"] == true {
        println!("last run: same key components");
    } else {
        println!("last run: key {}; what changed since:", text(&last["key"]));
        for d in last["changes"].as_array().into_iter().flatten() {
            println!("  - {}", text(d));
        }
    }
}
