//! Integration tests of the engine through the real binary: caching, early cutoff, file
//! digests, failures, interruption by SIGKILL, locking, cache maintenance and the tables.

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(pipeline: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.gguf"), b"weights v1").unwrap();
        std::fs::write(dir.path().join("p.eep"), pipeline).unwrap();
        Env { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_edge-eval"));
        c.current_dir(self.dir.path())
            .env("EDGE_EVAL_CACHE", self.path("cache"));
        c
    }

    fn exec(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `run --json` → (exit code, id → status).
    fn run(&self, extra: &[&str]) -> (i32, BTreeMap<String, String>, Value) {
        let mut args = vec!["run", "p.eep", "--json"];
        args.extend_from_slice(extra);
        let out = self.exec(&args);
        let json = common::run_json(&out);
        let statuses = common::statuses(&json);
        (out.status.code().unwrap_or(-1), statuses, json)
    }

    fn plan(&self, extra: &[&str]) -> Value {
        let mut args = vec!["plan", "p.eep", "--json"];
        args.extend_from_slice(extra);
        let out = self.exec(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn with(statuses: &BTreeMap<String, String>, status: &str) -> Vec<String> {
    statuses
        .iter()
        .filter(|(_, s)| *s == status)
        .map(|(id, _)| id.clone())
        .collect()
}

const CHAIN: &str = r#"
pipeline chain { results = "out" }
model m = path("model.gguf")
let flavour = "plain"
let upstream_note = "n1"
for b in ["x", "y"] {
  base[b] = test_stage(m, emit = b, note = upstream_note)
  test_stage(base[b], emit = flavour, id = "derived")
}
other = test_stage(emit = "independent")
"#;

#[test]
fn second_run_of_an_unchanged_pipeline_runs_nothing() {
    let env = Env::new(CHAIN);
    let (code, first, _) = env.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(first.len(), 5);
    assert_eq!(with(&first, "ran").len(), 5);
    let (code, second, _) = env.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(with(&second, "cached").len(), 5, "{second:?}");
    let plan = env.plan(&[]);
    assert!(
        plan["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "cached")
    );
}

#[test]
fn editing_one_parameter_reruns_exactly_the_dependent_stages() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    let plan = env.plan(&["--set", "flavour=\"spicy\""]);
    let stale: Vec<&str> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "stale")
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(stale, ["derived[x]", "derived[y]"]);
    let reason = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "derived[x]")
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("`emit` changed") && reason.contains("spicy"),
        "{reason}"
    );
    let (_, st, _) = env.run(&["--set", "flavour=\"spicy\""]);
    assert_eq!(with(&st, "ran"), ["derived[x]", "derived[y]"]);
    assert_eq!(with(&st, "cached"), ["base[x]", "base[y]", "other"]);
}

#[test]
fn touching_a_file_without_changing_its_bytes_reruns_nothing() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    let f = std::fs::File::options()
        .write(true)
        .open(env.path("model.gguf"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let (_, st, _) = env.run(&[]);
    assert_eq!(with(&st, "cached").len(), 5, "{st:?}");
}

#[test]
fn changing_a_model_file_reruns_everything_downstream_of_it() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    std::fs::write(env.path("model.gguf"), b"weights v2").unwrap();
    let plan = env.plan(&[]);
    let reason = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "base[x]")
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("input `input` changed") && reason.contains("model:m"),
        "{reason}"
    );
    let (_, st, _) = env.run(&[]);
    assert_eq!(
        with(&st, "ran"),
        ["base[x]", "base[y]", "derived[x]", "derived[y]"]
    );
    assert_eq!(with(&st, "cached"), ["other"]);
}

#[test]
fn an_upstream_rerun_with_identical_output_leaves_downstream_cached() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    // `note` changes the key of base[*] but not the bytes they produce.
    let (_, st, _) = env.run(&["--set", "upstream_note=\"n2\""]);
    assert_eq!(with(&st, "ran"), ["base[x]", "base[y]"]);
    assert_eq!(with(&st, "cached"), ["derived[x]", "derived[y]", "other"]);
}

#[test]
fn a_run_killed_mid_stage_leaves_nothing_that_is_read_as_valid() {
    let env = Env::new(
        r#"
pipeline killed { results = "out" }
model m = path("model.gguf")
slow = test_stage(m, emit = "slow", sleep_ms = 2500)
after = test_stage(slow, emit = "after")
"#,
    );
    let mut child = env.cmd().args(["run", "p.eep", "--quiet"]).spawn().unwrap();
    // Wait until the slow stage has written its partial output in a work folder.
    let tmp = env.path("cache/tmp");
    let t0 = Instant::now();
    loop {
        let partial = std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("out").exists());
        if partial {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the stage never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let plan = env.plan(&[]);
    for s in plan["stages"].as_array().unwrap() {
        assert_eq!(s["status"], "stale", "{s}");
    }
    let verify = env.exec(&["cache", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let (code, st, _) = env.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(with(&st, "ran"), ["after", "slow"]);
}

#[test]
fn ctrl_c_stops_cleanly_and_keeps_finished_results() {
    interrupt_stops_cleanly_and_keeps_finished_results("-INT");
}

#[test]
fn sigterm_stops_like_ctrl_c_and_writes_the_tables() {
    interrupt_stops_cleanly_and_keeps_finished_results("-TERM");
}

fn interrupt_stops_cleanly_and_keeps_finished_results(signal: &str) {
    let env = Env::new(
        r#"
pipeline interrupted { results = "out" }
fast = test_stage(emit = "fast")
slow = test_stage(fast, emit = "slow", sleep_ms = 60000)
after = test_stage(slow, emit = "after")
"#,
    );
    let mut child = env.cmd().args(["run", "p.eep", "--quiet"]).spawn().unwrap();
    let t0 = Instant::now();
    while files_under(&env.path("cache/actions")).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "`fast` never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let t1 = Instant::now();
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(130));
    assert!(
        t1.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        t1.elapsed()
    );
    let plan = env.plan(&[]);
    let status_of = |id: &str| {
        plan["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status_of("fast"), "cached");
    assert_eq!(status_of("slow"), "stale");
    assert_eq!(status_of("after"), "stale");
    let runs = read_table(&env.path("out/runs.parquet"));
    let slow = runs.iter().find(|r| r["stage_id"] == "slow").unwrap();
    assert_eq!(slow["status"], "failed");
    assert!(slow["error"].as_str().unwrap().contains("interrupted"));
    assert_eq!(
        runs.iter().find(|r| r["stage_id"] == "after").unwrap()["status"],
        "skipped"
    );
}

#[test]
fn failures_stop_the_run_unless_keep_going() {
    let pipeline = r#"
pipeline failing { results = "out" threads = 1 }
bad = test_stage(emit = "a", fail = "boom: disk on fire")
good = test_stage(emit = "b")
child = test_stage(bad, emit = "c")
"#;
    let env = Env::new(pipeline);
    let (code, st, json) = env.run(&[]);
    assert_eq!(code, 1);
    assert_eq!(st["bad"], "failed");
    assert_eq!(st["good"], "skipped");
    assert_eq!(st["child"], "skipped");
    let bad = json["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "bad")
        .unwrap()
        .clone();
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("boom: disk on fire")
    );

    let (code, st, json) = env.run(&["--keep-going"]);
    assert_eq!(code, 1);
    assert_eq!(st["bad"], "failed");
    assert_eq!(st["good"], "ran");
    assert_eq!(st["child"], "skipped");
    let child = json["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "child")
        .unwrap()
        .clone();
    assert!(
        child["error"]
            .as_str()
            .unwrap()
            .contains("upstream `bad` failed")
    );
    // The failure is recorded in runs.parquet.
    let runs = read_table(&env.path("out/runs.parquet"));
    let row = runs.iter().find(|r| r["stage_id"] == "bad").unwrap();
    assert_eq!(row["status"], "failed");
    assert!(row["error"].as_str().unwrap().contains("boom"));
}

#[test]
fn measuring_stages_run_alone() {
    let env = Env::new(
        r#"
pipeline leases { results = "out" threads = 4 }
for i in ["1", "2", "3"] {
  test_stage(emit = i, sleep_ms = 300, id = "work")
  test_stage(emit = i, sleep_ms = 300, exclusive = true, id = "measure")
}
"#,
    );
    let (code, st, _) = env.run(&[]);
    assert_eq!(code, 0, "{st:?}");
    let runs = read_table(&env.path("out/runs.parquet"));
    let span = |r: &BTreeMap<String, Value>| {
        (
            r["started_at"].as_i64().unwrap(),
            r["finished_at"].as_i64().unwrap(),
        )
    };
    for m in runs
        .iter()
        .filter(|r| r["stage_id"].as_str().unwrap().starts_with("measure"))
    {
        let (ms, mf) = span(m);
        for other in runs.iter().filter(|r| r["stage_id"] != m["stage_id"]) {
            let (os, of) = span(other);
            assert!(
                of <= ms || os >= mf,
                "{} overlapped {}",
                other["stage_id"],
                m["stage_id"]
            );
        }
    }
    // the three `work` stages did overlap each other (4 threads)
    let work: Vec<_> = runs
        .iter()
        .filter(|r| r["stage_id"].as_str().unwrap().starts_with("work"))
        .map(span)
        .collect();
    let overlapping = work
        .iter()
        .any(|a| work.iter().any(|b| a != b && a.0 < b.1 && b.0 < a.1));
    assert!(
        overlapping,
        "independent stages should run in parallel: {work:?}"
    );
}

#[test]
fn tables_have_rows_and_provenance_metadata() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    let (_, _, json) = env.run(&[]);
    let tables: Vec<&str> = json["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tables.len(), 2);
    let runs = read_table(&env.path("out/runs.parquet"));
    assert_eq!(runs.len(), 5);
    assert!(
        runs.iter()
            .all(|r| r["status"] == "cached" && r["cache_key"].as_str().unwrap().len() == 64)
    );
    assert!(
        runs.iter()
            .all(|r| r["computed_at"].as_i64().is_some() && r["seconds"].is_null())
    );
    let kinds = read_table(&env.path("out/test_stage.parquet"));
    assert_eq!(kinds.len(), 5);
    let derived = kinds
        .iter()
        .find(|r| r["stage_id"] == "derived[x]")
        .unwrap();
    assert_eq!(derived["emit"], "plain");
    // "plain" + "x" + "weights v1"
    assert_eq!(derived["bytes"], 5 + 1 + 10);
    let file = std::fs::File::open(env.path("out/runs.parquet")).unwrap();
    let b = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let kv = b.metadata().file_metadata().key_value_metadata().unwrap();
    let keys: Vec<&str> = kv.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "edge_eval.pipeline_digest",
        "edge_eval.version",
        "edge_eval.hardware",
    ] {
        assert!(keys.contains(&k), "{keys:?}");
    }
    // Every column of the run table and of a stage table says what it holds.
    for table in ["runs", "test_stage"] {
        let file = std::fs::File::open(env.path(&format!("out/{table}.parquet"))).unwrap();
        let schema = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .schema()
            .clone();
        for f in schema.fields() {
            let doc = f.metadata().get("description");
            assert!(doc.is_some_and(|d| !d.is_empty()), "{table}.{}", f.name());
        }
    }
}

#[test]
fn verify_removes_damaged_entries_and_gc_drops_unreferenced_objects() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    let objects = files_under(&env.path("cache/objects"));
    assert!(!objects.is_empty());
    // Damage one object.
    let victim = &objects[0];
    let mut perms = std::fs::metadata(victim).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(victim, perms).unwrap();
    std::fs::write(victim, b"bit rot").unwrap();
    let out = env.exec(&["cache", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("damaged"), "{text}");
    let (_, st, _) = env.run(&[]);
    assert!(
        !with(&st, "ran").is_empty(),
        "damaged entries are recomputed: {st:?}"
    );
    assert_eq!(env.exec(&["cache", "verify"]).status.code(), Some(0));

    // Drop every manifest: gc removes all objects.
    std::fs::remove_dir_all(env.path("cache/actions")).unwrap();
    std::fs::create_dir_all(env.path("cache/actions")).unwrap();
    let out = env.exec(&["cache", "gc"]);
    assert!(out.status.success());
    assert!(files_under(&env.path("cache/objects")).is_empty());
}

#[test]
fn concurrent_runs_on_one_cache_are_safe() {
    let env = Env::new(
        r#"
pipeline concurrent { results = "out" }
for i in ["1", "2", "3", "4"] { test_stage(emit = i, sleep_ms = 200) }
"#,
    );
    let spawn = || {
        env.cmd()
            .args(["run", "p.eep", "--json", "--quiet"])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert!(a.status.success() && b.status.success());
    let ran = |o: &Output| {
        String::from_utf8_lossy(&o.stdout)
            .matches("\"ran\"")
            .count()
    };
    assert_eq!(
        ran(&a) + ran(&b),
        4,
        "each stage ran exactly once across both runs"
    );
}

#[test]
fn explain_shows_key_components_and_what_changed() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    let sweet = [
        "explain",
        "p.eep",
        "derived[x]",
        "--set",
        "flavour=\"sweet\"",
    ];
    let out = env.exec(&sweet);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("status: will run"), "{text}");
    assert!(text.contains("emit = \"sweet\""), "{text}");
    assert!(
        text.contains("`emit` changed: \"plain\" → \"sweet\""),
        "{text}"
    );
    // The same, as one JSON object.
    let out = env.exec(&[&sweet[..], &["--json"]].concat());
    assert!(out.status.success());
    let e: Value = serde_json::from_slice(&out.stdout).expect("explain --json prints JSON");
    assert_eq!(e["id"], "derived[x]");
    assert_eq!(e["status"], "will_run");
    assert_eq!(e["parameters"]["emit"], "\"sweet\"");
    assert_eq!(e["key_components"]["params"]["emit"], "sweet");
    assert_eq!(e["key"].as_str().map(str::len), Some(64));
    assert_eq!(e["last_run"]["same"], false);
    let changes = e["last_run"]["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c == "`emit` changed: \"plain\" → \"sweet\""),
        "{changes:?}"
    );
    // Unchanged: the last run's components, same key.
    let out = env.exec(&["explain", "p.eep", "derived[x]", "--json"]);
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (e["status"].as_str(), e["last_run"]["same"].as_bool()),
        (Some("cached"), Some(true))
    );
    assert!(e["computed"]["seconds"].is_number());
    let out = env.exec(&["explain", "p.eep", "derived[z]"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `derived[x]`?"));
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Reads a Parquet table into JSON-like rows (as `engine::table::read_rows` reads them:
/// timestamps as µs, maps as objects).
fn read_table(path: &Path) -> Vec<BTreeMap<String, Value>> {
    engine::table::read_rows(path)
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().collect())
        .collect()
}

/// The object files the cached result of stage `id` names (from its manifest).
fn objects_of(env: &Env, id: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    for m in files_under(&env.path("cache/actions")) {
        let m: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
        if m["stage_id"] == id {
            for o in m["files"].as_object().unwrap().values() {
                let d = o["digest"].as_str().unwrap();
                out.push(env.path("cache/objects").join(&d[..2]).join(d));
            }
        }
    }
    assert!(!out.is_empty(), "no objects for {id}");
    out
}

/// Rewrites an object in place (objects are read-only), keeping or changing its size.
fn damage(object: &Path, truncate: bool) {
    let mut perms = std::fs::metadata(object).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(object, perms).unwrap();
    let mut bytes = std::fs::read(object).unwrap();
    if truncate {
        bytes.truncate(bytes.len() / 2);
    } else {
        bytes[0] ^= 0x01;
    }
    std::fs::write(object, bytes).unwrap();
}

fn intact(object: &Path) -> bool {
    let name = object.file_name().unwrap().to_string_lossy().to_string();
    blake3::hash(&std::fs::read(object).unwrap())
        .to_hex()
        .as_str()
        == name
}

#[test]
fn a_truncated_object_is_replaced_by_the_recomputation() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    let object = objects_of(&env, "base[x]").remove(0);
    damage(&object, true);
    let (code, st, _) = env.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(with(&st, "ran"), vec!["base[x]"], "{st:?}");
    assert!(
        intact(&object),
        "the recomputation replaced the damaged object"
    );
    let (_, st, _) = env.run(&[]);
    assert!(
        with(&st, "ran").is_empty(),
        "repaired once, cached after: {st:?}"
    );
}

#[test]
fn a_same_size_corruption_is_a_miss_not_a_hit() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    let object = objects_of(&env, "base[x]").remove(0);
    damage(&object, false);
    let (code, st, _) = env.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(with(&st, "ran"), vec!["base[x]"], "{st:?}");
    assert!(intact(&object));
    // Its output is the same bytes again, so what consumed it stays cached (early cutoff).
    assert_eq!(st["derived[x]"], "cached");
}

#[test]
fn verify_removes_the_results_computed_from_a_damaged_object() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    damage(&objects_of(&env, "base[x]")[0], false);
    let out = env.exec(&["cache", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("base[x]"), "{text}");
    assert!(
        text.contains("derived[x]") && text.contains("computed from"),
        "what consumed the damaged output goes too, and says why: {text}"
    );
    assert!(
        !text.contains("base[y]") && !text.contains(" other ("),
        "{text}"
    );
    let (_, st, _) = env.run(&[]);
    let mut ran = with(&st, "ran");
    ran.sort();
    assert_eq!(ran, vec!["base[x]", "derived[x]"], "{st:?}");
    assert_eq!(env.exec(&["cache", "verify"]).status.code(), Some(0));
}

#[test]
fn a_crashed_runs_work_folders_are_reclaimed_by_the_next_run() {
    let env = Env::new(CHAIN);
    env.run(&[]);
    let stale = env.path("cache/tmp/work-crashed");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("half.bin"), b"half").unwrap();
    env.run(&[]);
    assert!(!stale.exists(), "the next run holding the lock removed it");
}

/// The README's `edge-eval bench` runs cleanly from a fresh folder: the stages that share a key
/// with another (the fine-tunes do not depend on the precision) are served by it in the same run,
/// which is not a failure; a reused folder is refused with the fix.
#[test]
fn the_engine_benchmark_runs_from_a_fresh_folder() {
    let env = Env::new("");
    let bench = |dir: &str| {
        env.exec(&[
            "bench",
            "--hash-mib",
            "1",
            "--repeats",
            "1",
            "--dir",
            env.path(dir).to_str().unwrap(),
        ])
    };
    let out = bench("b");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("first run (325 stages ran, 48 served by an identical stage of the run)"),
        "{stdout}"
    );
    for line in [
        "plan (parse + keys + cache lookups)",
        "no-op run, whole `edge-eval` process",
    ] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
    let again = bench("b");
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("use an empty --dir"), "{err}");
}
