//! Golden tests of diagnostic text: every `tests/diagnostics/NAME.eep` with a `NAME.stderr` is
//! checked with `edge-eval check NAME.eep` (plus the lines of `NAME.args`, if any) from inside
//! that folder; the exit code must be 2 and stderr must equal `NAME.stderr` exactly.
//! `UPDATE_GOLDEN=1 cargo test --test diagnostics` rewrites the expected files.

use std::path::Path;
use std::process::Command;

#[test]
fn golden_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diagnostics");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "eep").then(|| p.file_stem().unwrap().to_string_lossy().to_string())
        })
        .filter(|n| update || dir.join(format!("{n}.stderr")).exists())
        .filter(|n| n != "import_cycle_b")
        .collect();
    names.sort();
    assert!(
        names.len() >= 15,
        "expected at least 15 golden cases, found {}",
        names.len()
    );
    let mut failures = vec![];
    for name in &names {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-eval"));
        cmd.current_dir(&dir)
            .arg("check")
            .arg(format!("{name}.eep"));
        if let Ok(args) = std::fs::read_to_string(dir.join(format!("{name}.args"))) {
            cmd.args(args.lines().filter(|l| !l.is_empty()));
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let expected_path = dir.join(format!("{name}.stderr"));
        if update {
            std::fs::write(&expected_path, &stderr).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap();
        if out.status.code() != Some(2) {
            failures.push(format!(
                "{name}: exit code {:?}, expected 2",
                out.status.code()
            ));
        }
        if stderr != expected {
            failures.push(format!(
                "{name}: stderr differs\n--- expected\n{expected}--- got\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
