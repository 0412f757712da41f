//! The Slurm executor against a real one-node Slurm cluster (slurmctld + slurmd + munged from
//! Debian's packages, started by `tests/slurm/start-cluster.sh` with 8 CPUs and two fake GPUs).
//! Needs root and `apt-get install slurm-wlm munge`; `.ci/run` provides both. Elsewhere the test
//! says why it skips (and fails under CI=true, so CI cannot pass without running it).

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Option<Cluster> {
        let root = unsafe { libc::geteuid() } == 0;
        let installed = Command::new("sh")
            .args(["-c", "command -v slurmctld && command -v munged"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !(root && installed) {
            let why = if root {
                "Slurm is not installed (apt-get install -y slurm-wlm munge)"
            } else {
                "starting a Slurm cluster needs root"
            };
            assert!(std::env::var("CI").is_err(), "under CI: {why}");
            eprintln!("skipping: {why}");
            return None;
        }
        // The guard exists first, so whatever start-cluster did start is stopped even if it fails.
        let cluster = Cluster {
            dir: dir.to_path_buf(),
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/start-cluster.sh");
        let out = Command::new("bash").arg(script).arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "start-cluster failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/stop-cluster.sh");
        let _ = Command::new("bash").arg(script).arg(&self.dir).status();
    }
}

struct Run {
    code: i32,
    stages: BTreeMap<String, Value>,
    stderr: String,
}

fn run(dir: &Path, cluster: &Cluster, file: &str, extra: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-eval"))
        .current_dir(dir)
        .env("SLURM_CONF", cluster.dir.join("slurm.conf"))
        .env("EDGE_EVAL_CACHE", dir.join("cache"))
        .env("EDGE_EVAL_POLL_MS", "300")
        .args(["run", file, "--json"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = common::run_json(&out);
    let stages = json["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s.clone()))
        .collect();
    Run {
        code: out.status.code().unwrap_or(-1),
        stages,
        stderr,
    }
}

const PIPELINE: &str = r#"
pipeline slurm_study {
  results = "out"
  executor = slurm(gpus_per_stage = 1, time = "00:10:00")
}
for x in ["a", "b", "c", "d", "e"] {
  gpu[x] = test_stage(emit = x, sleep_ms = 2500, device = cuda(0))
}
test_stage([gpu["a"], gpu["b"]], emit = "ab", id = "joined")
test_stage([gpu["c"], gpu["d"]], emit = "cd", exclusive = true, device = cuda(1), id = "measured")
"#;

const FAILING: &str = r#"
pipeline slurm_failing { results = "out-failing"  executor = slurm }
broken = test_stage(emit = "x", fail = "boom on purpose", device = cuda(0))
test_stage(broken, emit = "y", id = "after")
test_stage(emit = "independent", id = "fine")
"#;

#[test]
fn stages_run_as_slurm_jobs_sharing_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(cluster) = Cluster::start(&tmp.path().join("cluster")) else {
        return;
    };
    let dir = tmp.path();
    std::fs::write(dir.join("p.eep"), PIPELINE).unwrap();

    // `plan` says where each stage would run.
    let plan = Command::new(env!("CARGO_BIN_EXE_edge-eval"))
        .current_dir(dir)
        .env("EDGE_EVAL_CACHE", dir.join("cache"))
        .args(["plan", "p.eep"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.contains("[slurm (1 CPU, 1 GPU)]"), "{plan}");

    let first = run(dir, &cluster, "p.eep", &[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stages.len(), 7);
    for (id, s) in &first.stages {
        assert_eq!(s["status"], "ran", "{id}: {s}");
    }
    // Every stage was a job: submitted (a spec), and its result file names the job that ran it.
    let job_files = |suffix: &str| {
        common::files_under(&dir.join("cache/jobs"))
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect::<Vec<_>>()
    };
    assert_eq!(job_files(".spec.json").len(), 7);

    let results: Vec<Value> = job_files(".result.json")
        .into_iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    assert_eq!(results.len(), 7);
    assert!(
        results
            .iter()
            .all(|r| r["scheduler_job"].is_string() && r["ran"] == true)
    );

    // Timings and GPUs from the tables the run wrote, as a local run writes them.
    let runs = engine::table::read_rows(&dir.join("out/runs.parquet")).unwrap();
    let span = |id: &str| {
        let r = runs.iter().find(|r| r["stage_id"] == id).unwrap();
        (
            r["started_at"].as_i64().unwrap(),
            r["finished_at"].as_i64().unwrap(),
        )
    };
    // Dependencies honoured: each stage started after its inputs finished.
    for (stage, inputs) in [
        ("joined", ["gpu[a]", "gpu[b]"]),
        ("measured", ["gpu[c]", "gpu[d]"]),
    ] {
        for input in inputs {
            assert!(
                span(stage).0 >= span(input).1,
                "{stage} started before {input} ended"
            );
        }
    }
    // Never more than two GPU stages at once (two GPUs), and the two got different GPUs.
    let gpu_ids = ["gpu[a]", "gpu[b]", "gpu[c]", "gpu[d]", "gpu[e]", "measured"];
    let rows = engine::table::read_rows(&dir.join("out/test_stage.parquet")).unwrap();
    let gpu_of = |id: &str| {
        rows.iter().find(|r| r["stage_id"] == id).unwrap()["visible_gpus"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut most = 0;
    for a in gpu_ids {
        let (start, _) = span(a);
        let running: Vec<&str> = gpu_ids
            .into_iter()
            .filter(|b| span(b).0 <= start && start < span(b).1)
            .collect();
        most = most.max(running.len());
        if let [x, y] = running[..] {
            assert_ne!(gpu_of(x), gpu_of(y), "{x} and {y} shared a GPU");
        }
    }
    assert_eq!(
        most, 2,
        "GPU stages at once: {most} (two GPUs, enough CPUs for more)"
    );
    assert!(
        gpu_ids
            .iter()
            .all(|id| ["0", "1"].contains(&gpu_of(id).as_str()))
    );

    // The results are in the shared cache: a second run submits nothing.
    let second = run(dir, &cluster, "p.eep", &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.stages.values().all(|s| s["status"] == "cached"));
    assert_eq!(
        job_files(".spec.json").len(),
        7,
        "the second run submitted jobs"
    );

    // A failing job: its id and log tail in the error, its dependent cancelled by Slurm and
    // reported as skipped, the independent stage still done (--keep-going).
    std::fs::write(dir.join("failing.eep"), FAILING).unwrap();
    let failed = run(dir, &cluster, "failing.eep", &["--keep-going"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    let broken = &failed.stages["broken"];
    assert_eq!(broken["status"], "failed");
    let error = broken["error"].as_str().unwrap();
    assert!(error.contains("boom on purpose"), "{error}");
    let job = regex_job_id(error).unwrap_or_else(|| panic!("no job id in: {error}"));
    assert!(error.contains("last lines of"), "{error}");
    assert!(!job.is_empty());
    assert_eq!(failed.stages["after"]["status"], "skipped");
    assert_eq!(failed.stages["fine"]["status"], "ran");
}

/// The Slurm job id in "… (job 12 on host)".
fn regex_job_id(text: &str) -> Option<String> {
    let rest = &text[text.find("(job ")? + 5..];
    let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!id.is_empty()).then_some(id)
}
