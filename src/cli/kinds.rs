//! `stages`: every stage kind and source with its parameters.

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
