//! The paper's five metric tables recompute from its raw result files (reference/edge-eval-paper)
//! with its formulas and edge-eval's metric functions, to within 1e-9 of the tables it published,
//! row for row; its headline claims come out of its files as docs/paper-comparison.md says.

use edge_eval::paper::{METRICS, Paper};
use std::process::Command;

#[test]
fn the_papers_metric_tables_recompute_from_its_raw_files() {
    let paper = Paper::embedded().unwrap();
    for (metric, rows) in METRICS.iter().zip([36, 72, 72, 72, 72]) {
        let a = paper.agreement(metric).unwrap();
        assert_eq!((a.published, a.recomputed), (rows, rows), "{metric}");
        assert!(
            a.unmatched.is_empty() && a.extra.is_empty(),
            "{metric}: {a:?}"
        );
        assert!(a.max_rel_err < 1e-9, "{metric}: {a:?}");
    }
}

#[test]
fn the_papers_claims_are_read_from_its_files() {
    let claims = Paper::embedded().unwrap().claims().unwrap();
    let said = |start: &str| {
        claims
            .iter()
            .find(|c| c.claim.starts_with(start))
            .map(|c| c.files_say.clone())
            .unwrap()
    };
    assert!(said("N_break").contains("6 rows (LoRA and QLoRA × 3 tasks): mean 13.8, median 11.8"));
    assert!(
        said("ρ_sys: 1B").contains("mean of its 12 rows is 6936"),
        "{}",
        said("ρ_sys: 1B")
    );
    assert!(
        said("ρ_sys of a 1B").contains("105×"),
        "{}",
        said("ρ_sys of a 1B")
    );
    let q = said("QLoRA");
    assert!(
        q.contains("at most 7.2× (Qwen-1B)") && q.contains("up to 14.9× (Qwen-1B summ)"),
        "{q}"
    );
}

#[test]
fn counting_merge_and_quantize_energy_raises_every_break_even() {
    let paper = Paper::embedded().unwrap();
    let ours = paper.n_break_with_production().unwrap();
    let theirs = paper.recompute("n_break").unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a.variant, b.variant);
        assert!(
            a.value > b.value,
            "{}: {} vs {}",
            a.variant,
            a.value,
            b.value
        );
    }
}

#[test]
fn the_paper_command_prints_the_agreement_and_a_table() {
    let bin = env!("CARGO_BIN_EXE_edge-eval");
    let out = Command::new(bin).arg("paper").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("q_ret    36 of 36 published rows"), "{text}");
    let out = Command::new(bin)
        .args(["paper", "--table", "c_tax"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2 + 72, "{text}");
    let out = Command::new(bin)
        .args(["paper", "--table", "tax"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the metrics are q_ret"));
    // Another copy of the files, e.g. the paper's repository checked out: read from the folder.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args(["paper", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
