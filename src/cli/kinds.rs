//! `stages`: every stage kind and source with its parameters; `check --json`.

use super::*;

/// Every kind a pipeline can use, with its parameters (what `edge-eval stages` prints).
pub fn describe_stages() -> String {
    use spec::Default as D;
    let mut out = String::new();
    for (title, role) in [
        ("Model and task sources", Role::Source),
        ("Stages", Role::Stage),
    ] {
        out.push_str(&format!("{title}:\n"));
        for s in crate::stages::REGISTRY
            .all()
            .iter()
            .filter(|s| s.role() == role)
        {
            let measuring = if s.measuring(&Default::default()) {
                " [measuring]"
            } else {
                ""
            };
            out.push_str(&format!(
                "\n  {}(...) → {}{measuring}: {}\n",
                s.kind(),
                s.output().noun(),
                s.summary()
            ));
            for p in s.params() {
                let default = match &p.default {
                    D::Required => "required".to_string(),
                    D::Optional => "optional".to_string(),
                    D::Value(v) => format!("default {v}"),
                    D::Setting(keys, v) => format!(
                        "default: setting {}{}",
                        keys.join(" or "),
                        v.as_ref()
                            .map(|v| format!(", else {v}"))
                            .unwrap_or_default()
                    ),
                };
                out.push_str(&format!(
                    "      {:<12} {} — {} ({default})\n",
                    p.name,
                    p.ty.describe(),
                    p.doc
                ));
            }
        }
        out.push('\n');
    }
    out
}

/// `edge-eval stages --json`: every kind with its role, result and parameters.
pub fn stages_json() -> serde_json::Value {
    use spec::Default as D;
    let kinds: Vec<serde_json::Value> = crate::stages::REGISTRY
        .all()
        .iter()
        .map(|s| {
            let params: Vec<serde_json::Value> = s
                .params()
                .iter()
                .map(|p| {
                    let (default, setting) = match &p.default {
                        D::Required => ("required".to_string(), None),
                        D::Optional => ("optional".to_string(), None),
                        D::Value(v) => (v.to_string(), None),
                        D::Setting(keys, v) => (
                            v.as_ref().map_or("optional".into(), |v| v.to_string()),
                            Some(keys.to_vec()),
                        ),
                    };
                    json!({
                        "name": p.name,
                        "type": p.ty.describe(),
                        "default": default,
                        "from_setting": setting,
                        "doc": p.doc,
                    })
                })
                .collect();
            json!({
                "kind": s.kind(),
                "role": if s.role() == Role::Source { "source" } else { "stage" },
                "result": s.output().noun(),
                "measuring": s.measuring(&Default::default()),
                "summary": s.summary(),
                "params": params,
            })
        })
        .collect();
    json!(kinds)
}

/// `edge-eval check --json`: the counts of a valid pipeline, or each error with its place; exit
/// code 2 for an invalid one, as without `--json`.
pub(super) fn check_json(p: &PipelineArgs) -> Result<i32> {
    let file = p.file.display().to_string();
    match crate::stages::load(&p.file, &p.overrides) {
        Ok((pipeline, _)) => {
            let stages = pipeline
                .nodes
                .iter()
                .filter(|n| n.role() == Role::Stage)
                .count();
            let out = json!({
                "file": file,
                "ok": true,
                "models_and_tasks": pipeline.nodes.len() - stages,
                "stages": stages,
            });
            println!("{out}");
            Ok(0)
        }
        Err((diags, map)) => {
            let errors: Vec<serde_json::Value> = diags
                .into_vec()
                .iter()
                .map(|d| {
                    let at = d.primary.as_ref().map(|l| {
                        let f = map.get(l.span.file);
                        let (line, col) = f.line_col(l.span.start as usize);
                        json!({ "file": f.name, "line": line, "col": col, "label": l.text })
                    });
                    json!({ "message": d.message, "at": at, "hints": d.hints })
                })
                .collect();
            println!("{}", json!({ "file": file, "ok": false, "errors": errors }));
            Ok(2)
        }
    }
}
