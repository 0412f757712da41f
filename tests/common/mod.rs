//! Helpers shared by the integration tests: fetched third-party files, tensors, folders.

use candle_core::Tensor;
use std::path::PathBuf;

/// A file or folder fetched by `.ci/fetch-models.sh`: `$env_var`, else `~/.cache/edge-eval/REL`
/// (a folder is present when it holds `probe`; pass "" for a file).
/// Absent: under CI that is a failure; locally the test is skipped with a notice (`None`).
#[allow(dead_code)] // not every test binary uses it
pub fn fetched(env_var: &str, rel: &str, probe: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/edge-eval").join(rel)
        });
    let present = if probe.is_empty() {
        path.exists()
    } else {
        path.join(probe).exists()
    };
    if present {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing: .ci/fetch-models.sh should have fetched it",
        path.display()
    );
    eprintln!(
        "skipping: {} not found (run .ci/fetch-models.sh)",
        path.display()
    );
    None
}

/// Largest absolute elementwise difference of two tensors of one shape.
#[allow(dead_code)] // not every test binary uses it
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Every file under `dir`, recursively (empty when it does not exist).
#[allow(dead_code)] // not every test binary uses it
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The JSON object `edge-eval run --json` printed last, or a panic showing what it printed.
#[allow(dead_code)] // not every test binary uses it
pub fn run_json(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): stdout={stdout} stderr={}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Stage id → status, from what `edge-eval run --json` printed.
#[allow(dead_code)] // not every test binary uses it
pub fn statuses(json: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    json["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
