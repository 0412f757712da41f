//! The measuring and evaluating stages end to end through the binary, on SmolLM2-135M (fetched by
//! `.ci/fetch-models.sh`; skipped locally when absent): quantize → cold_load / evaluate / measure
//! → metrics.parquet and report.html; nulls with reasons when nothing can measure energy; an
//! interrupted evaluation resumes where it stopped.

use engine::table::read_rows;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

fn smollm2() -> Option<PathBuf> {
    common::fetched(
        "EDGE_EVAL_SMOLLM2",
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "",
    )
}

fn tasks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks")
}

fn pipeline(model: &Path, economics: &str, body: &str) -> String {
    format!(
        r#"pipeline life {{ device = cpu  results = "out"  seed = 7 }}
{economics}
hardware {{ idle_window = 50 ms }}
model smol = path("{}")
task qa = jsonl("{}/qa.jsonl", kind = extractive_qa, score = f1, max_tokens = 8)
{body}
report {{ baseline = f16 }}
"#,
        model.display(),
        tasks_dir().display()
    )
}

const ECONOMICS: &str =
    "economics { electricity = 0.12 usd/kWh  api_request = 0.00125 usd  cpu_power = 12 W }";

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-eval"))
        .current_dir(dir)
        .env("EDGE_EVAL_CACHE", dir.join("cache"))
        .args(args)
        .output()
        .unwrap()
}

fn rows(dir: &Path, table: &str) -> Vec<serde_json::Map<String, Value>> {
    read_rows(&dir.join("out").join(format!("{table}.parquet"))).unwrap()
}

fn by<'a>(
    rows: &'a [serde_json::Map<String, Value>],
    key: &str,
    value: &str,
) -> Vec<&'a serde_json::Map<String, Value>> {
    rows.iter()
        .filter(|r| r.get(key).and_then(|v| v.as_str()) == Some(value))
        .collect()
}

#[test]
fn lifecycle_measures_scores_and_reports_the_five_metrics() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
for q in [f16, q8_0] {
  v[q] = quantize(smol, q)
  cold_load(v[q], repeats = 2)
  evaluate(v[q], qa, samples = 4, reference = v[f16])
  measure(v[q], qa, batch = [1, 2], repeats = 2, requests = 2, warmup = 1, min_window = 1 s)
}
report { compare = edge_eval_paper }"#;
    std::fs::write(dir.path().join("p.eep"), pipeline(&model, ECONOMICS, body)).unwrap();
    let out = run(dir.path(), &["run", "p.eep"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The metrics table is printed.
    assert!(
        stdout.contains("Q_ret %") && stdout.contains("v[q8_0]"),
        "{stdout}"
    );

    let cold = rows(dir.path(), "cold_load");
    assert_eq!(cold.len(), 2 * 3, "2 repeats + 1 summary per variant");
    for r in by(&cold, "row", "repeat") {
        assert_eq!(r["energy_source"], "estimated");
        assert!(r["energy_j"].as_f64().unwrap() > 0.0);
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
        // Measured memory: at least the weights as held, and less than 4× them.
        let weights = r["weight_bytes"].as_i64().unwrap();
        let resident = r["resident_bytes"].as_i64().unwrap();
        assert!(resident > weights / 2 && resident < weights * 4, "{r:?}");
    }

    let measure = rows(dir.path(), "measure");
    for r in by(&measure, "row", "repeat") {
        // At least `requests`, in whole batches, as many as the warm-up's timing says fill
        // `min_window` (about: the margin is 10 %, a repetition can be faster than the warm-up);
        // the same in every repetition of a batch size.
        let (n, batch) = (
            r["requests"].as_i64().unwrap(),
            r["batch"].as_i64().unwrap(),
        );
        assert!(n >= 2 && n % batch == 0, "{r:?}");
        assert!(r["seconds"].as_f64().unwrap() >= 0.7, "{r:?}");
        assert!(r["warmup_requests"].as_i64().unwrap() >= 2 * batch, "{r:?}");
        // The host's share in the window is recorded (Linux reports both).
        let steal = r["host_steal_pct"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&steal), "{r:?}");
        assert!(r["host_preemptions"].as_i64().is_some(), "{r:?}");
        let mut same = by(&measure, "row", "repeat")
            .into_iter()
            .filter(|o| o["stage_id"] == r["stage_id"] && o["batch"] == r["batch"]);
        assert!(same.all(|o| o["requests"] == r["requests"]), "{r:?}");
    }
    let summaries = by(&measure, "row", "summary");
    assert_eq!(summaries.len(), 4, "one summary per variant × batch size");
    for s in &summaries {
        // What the row is about, from the pipeline: no parsing of stage ids.
        let precision = s["precision"].as_str().unwrap();
        assert_eq!(
            s["variant"].as_str(),
            Some(format!("v[{precision}]").as_str())
        );
        assert_eq!(
            (s["task"].as_str(), s["device"].as_str()),
            (Some("qa"), Some("cpu"))
        );
        assert_eq!(
            (s["model"].as_str(), s["method"].as_str()),
            (Some("smol"), Some("base"))
        );
        assert!(s["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(s["ttft_ms_p50"].as_f64().unwrap() > 0.0);
        assert!(s["energy_per_request_j"].as_f64().unwrap() > 0.0);
        assert_eq!(s["energy_source"], "estimated");
        assert!(s["meter"].as_str().unwrap().contains("12 W"));
    }

    let eval = rows(dir.path(), "evaluate");
    let samples: Vec<_> = by(&eval, "row", "sample");
    assert_eq!(samples.len(), 8);
    for s in &samples {
        let score = s["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score));
        assert!(!s["prompt_digest"].as_str().unwrap().is_empty());
    }

    let metrics = rows(dir.path(), "metrics");
    assert_eq!(metrics.len(), 2);
    let f16 = by(&metrics, "precision", "f16")[0];
    let q8 = by(&metrics, "precision", "q8_0")[0];
    assert_eq!(f16["q_ret_pct"].as_f64(), Some(100.0));
    // The f16 variant against itself: no divergence; q8_0 diverges a little.
    assert_eq!(f16["kl_mean"].as_f64(), Some(0.0));
    assert_eq!(f16["top1_agreement"].as_f64(), Some(1.0));
    let kl = q8["kl_mean"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 1.0, "kl {kl}");
    for m in [f16, q8] {
        for k in ["ipw", "rho_sys", "c_tax", "n_break", "energy_per_request_j"] {
            let v = m[k].as_f64().unwrap_or_else(|| panic!("{k} null: {m:?}"));
            assert!(v > 0.0 && v.is_finite(), "{k} = {v}");
        }
        // Two cold loads and two serving windows per batch size: intervals around the medians.
        for k in ["rho_sys", "c_tax", "n_break"] {
            let v = m[k].as_f64().unwrap();
            let ci = |end: &str| m[&format!("{k}_ci_{end}")].as_f64().unwrap();
            let (lo, hi) = (ci("lo"), ci("hi"));
            assert!(lo <= v && v <= hi && lo < hi, "{k}: {v} [{lo}, {hi}]");
        }
        // How each stage behind the row had its energy, by stage id: the variant's quantize,
        // its cold load and its measure.
        let sources = m["energy_sources"].as_object().unwrap();
        let variant = m["variant"].as_str().unwrap();
        assert_eq!(
            sources.get(variant),
            Some(&json!("estimated")),
            "{sources:?}"
        );
        for kind in ["measure", "cold_load"] {
            let of_kind = sources.iter().filter(|(id, _)| id.starts_with(kind));
            assert!(
                of_kind.map(|(_, s)| s.as_str()).eq([Some("estimated")]),
                "{sources:?}"
            );
        }
    }
    // Beside the paper: SmolLM2-135M is no Llama or Qwen, so by shape the paper's smallest, and
    // its base model beside the paper's LoRA ones.
    assert!(stdout.contains("beside the EDGE-EVAL paper"), "{stdout}");
    let beside = rows(dir.path(), "paper");
    assert_eq!(beside.len(), metrics.len());
    for b in &beside {
        let precision = if b["variant"] == "v[f16]" {
            "FP16"
        } else {
            "INT8"
        };
        assert_eq!(b["paper_variant"], format!("Llama-1B LoRA rag {precision}"));
        let how = b["matched_by"].as_str().unwrap();
        assert!(
            how.starts_with("by shape: Llama 1B") && how.contains("base beside LoRA"),
            "{how}"
        );
        assert!(b["paper_ipw"].as_f64().unwrap() > 0.0, "{b:?}");
        assert_eq!(
            b["ipw"],
            by(&metrics, "variant", b["variant"].as_str().unwrap())[0]["ipw"]
        );
    }
    pyarrow_reads(&dir.path().join("out"));
    let page = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
    assert!(page.contains("<svg") && page.contains("v[q8_0]"));
    // As a browser renders it: no script or console error, and every part of the page there.
    if let Some((dom, log)) = rendered(&dir.path().join("out/report.html")) {
        for bad in ["Uncaught", ":CONSOLE", "SyntaxError"] {
            assert!(!log.contains(bad), "the browser logged {bad}: {log}");
        }
        assert_eq!(
            dom.matches("<svg").count(),
            3,
            "two frontiers and throughput by batch"
        );
        for part in [
            r#"<dl class="run">"#,
            r#"id="estimated""#,
            r#"id="frontier-energy""#,
            r#"id="frontier-density""#,
            r#"id="throughput""#,
            r#"class="serving""#,
            r#"class="metrics""#,
            r#"class="ci""#,
            r#"class="paper""#,
            "v[q8_0]",
            "Llama-1B LoRA rag INT8",
        ] {
            assert!(dom.contains(part), "{part} is not on the page");
        }
    }

    // A second run computes nothing and rewrites the same metrics.
    let t = Instant::now();
    let again = run(dir.path(), &["run", "p.eep", "--json"]);
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stdout).contains("\"ran\""));
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(rows(dir.path(), "metrics"), metrics);

    // `edge-eval report DIR` prints the same table from metrics.parquet.
    let rep = run(dir.path(), &["report", "out"]);
    assert!(rep.status.success());
    let text = String::from_utf8_lossy(&rep.stdout);
    assert!(
        text.contains("v[f16]") && text.contains("N_break"),
        "{text}"
    );

    // Each run's tables are kept whole in out/runs/ID, the latest linked from out/.
    assert_eq!(
        std::fs::read_dir(dir.path().join("out/runs"))
            .unwrap()
            .count(),
        2
    );
    let cmp = run(dir.path(), &["compare", "out"]);
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(cmp.status.success(), "{text}");
    assert!(
        text.contains("same pipeline file, hardware, edge-eval version and variants"),
        "{text}"
    );
    // The same answers in both runs: every score's paired change is 0 over the 4 records (too
    // few for a verdict).
    let cmp = run(dir.path(), &["compare", "out", "--json"]);
    let cmp: Value = serde_json::from_slice(&cmp.stdout).unwrap();
    let changes = cmp["changes"].as_array().unwrap();
    let scores: Vec<&Value> = changes.iter().filter(|c| c["metric"] == "score").collect();
    assert_eq!(scores.len(), 2, "{cmp}");
    for s in scores {
        let change = s["change"].as_str().unwrap();
        assert_eq!(change, "+0.000, 4 paired", "{s}");
        assert_eq!(s["real"], "too few");
    }
    // Exports of the metrics table.
    let csv = run(dir.path(), &["report", "out", "--format", "csv"]);
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.starts_with("variant,model,method,precision,task,"),
        "{csv}"
    );
    let md = run(dir.path(), &["report", "out", "--format", "md"]);
    assert!(String::from_utf8_lossy(&md.stdout).starts_with("| variant | task | score |"));
}

/// The DOM of an HTML page after headless Chromium loaded it, and what the browser logged; None
/// (skipped with a notice) where no Chromium is installed — under CI it must be
/// (`.ci/run` installs Debian's `chromium`).
fn rendered(page: &Path) -> Option<(String, String)> {
    let browser = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(browser) = browser else {
        assert!(std::env::var_os("CI").is_none(), "CI must install chromium");
        eprintln!("skipping the browser check: no chromium installed");
        return None;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The tables read back with pyarrow with the expected column types (`tests/python`). CI installs
/// pyarrow; locally the check is skipped with a notice when it is missing.
fn pyarrow_reads(results: &Path) {
    let has = Command::new("python3")
        .args(["-c", "import pyarrow"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(std::env::var_os("CI").is_none(), "CI must install pyarrow");
        eprintln!("skipping the pyarrow check: `pip install pyarrow`");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_tables.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(results)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_any_meter_energy_is_null_with_a_reason_never_zero() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
v = quantize(smol, q8_0)
cold_load(v, repeats = 2, isolation = process)
measure(v, qa, repeats = 1, requests = 1, warmup = 0, min_window = 0 s)"#;
    let economics = "economics { electricity = 0.12 usd/kWh  api_request = 0.00125 usd }";
    std::fs::write(dir.path().join("p.eep"), pipeline(&model, economics, body)).unwrap();
    let out = run(dir.path(), &["run", "p.eep"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in ["cold_load", "measure", "quantize"] {
        for r in rows(dir.path(), table) {
            assert!(r["energy_j"].is_null(), "{table}: {r:?}");
            assert!(r["energy_source"].is_null());
            let why = r["energy_null_reason"].as_str().unwrap();
            // A load in a child process is beyond this process's CPU time whatever the watts.
            let cause = if table == "cold_load" {
                "child process"
            } else {
                "cpu_power"
            };
            assert!(why.contains(cause), "{table}: {why}");
        }
    }
    // Each load ran in a fresh child process: its memory is that process's growth, every time.
    for r in by(&rows(dir.path(), "cold_load"), "row", "repeat") {
        assert_eq!(r["isolation"], "process");
        let weights = r["weight_bytes"].as_i64().unwrap();
        let resident = r["resident_bytes"].as_i64().unwrap();
        assert!(resident > weights / 2 && resident < weights * 4, "{r:?}");
        assert!(r["peak_bytes"].as_i64().unwrap() >= resident, "{r:?}");
    }
    // `min_window = 0 s`: exactly the requests asked for.
    assert_eq!(
        by(&rows(dir.path(), "measure"), "row", "repeat")[0]["requests"],
        1
    );
    let m = &rows(dir.path(), "metrics")[0];
    for k in ["ipw", "c_tax", "n_break"] {
        assert!(m[k].is_null(), "{k}: {m:?}");
    }
    // Throughput and memory are still measured, so density is not null.
    assert!(m["rho_sys"].as_f64().unwrap() > 0.0);
    // By metric: what was not measured, and what to declare.
    let reasons = m["null_reasons"].as_object().unwrap();
    assert!(reasons["ipw"].is_string(), "{reasons:?}");
    let why = reasons["n_break"].as_str().unwrap();
    assert!(why.contains("cpu_power"), "{reasons:?}");

    // Declaring the watts afterwards reruns nothing: the estimate was measured per declared
    // watt, and the tables are written at 10 W, then at 20 W — every joule and watt doubled.
    let at = |watts: u32| {
        let economics = format!(
            "economics {{ electricity = 0.12 usd/kWh  api_request = 0.00125 usd  cpu_power = {watts} W }}"
        );
        std::fs::write(dir.path().join("p.eep"), pipeline(&model, &economics, body)).unwrap();
        let out = run(dir.path(), &["run", "p.eep"]);
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{text}");
        for r in rows(dir.path(), "runs") {
            assert_ne!(r["status"], "ran", "{r:?}");
        }
        for r in rows(dir.path(), "cold_load") {
            assert!(r["energy_j"].is_null(), "{r:?}");
        }
        ["measure", "quantize", "metrics"].map(|t| rows(dir.path(), t))
    };
    let (ten, twenty) = (at(10), at(20));
    let energy = |k: &str| k.ends_with("_j") || k.ends_with("_w");
    let mut compared = 0;
    for (t10, t20) in ten[..2].iter().zip(&twenty[..2]) {
        assert_eq!(t10.len(), t20.len());
        for (a, b) in t10.iter().zip(t20) {
            assert_eq!(a["energy_source"], "estimated", "{a:?}");
            assert!(
                a["meter"].as_str().unwrap().contains("declared 10 W"),
                "{a:?}"
            );
            assert!(
                b["meter"].as_str().unwrap().contains("declared 20 W"),
                "{b:?}"
            );
            assert!(a["energy_j"].as_f64().unwrap() > 0.0, "{a:?}");
            for (k, v) in a.iter().filter(|(k, v)| energy(k) && !v.is_null()) {
                let (x, y) = (v.as_f64().unwrap(), b[k].as_f64().unwrap());
                assert!(
                    (y - 2.0 * x).abs() <= 1e-12 * y.abs(),
                    "{k}: {x} at 10 W, {y} at 20 W"
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 10, "{compared} values");
    // The metrics follow: energy per request doubles.
    let (m10, m20) = (&ten[2][0], &twenty[2][0]);
    let k = "energy_per_request_j";
    let (x, y) = (m10[k].as_f64().unwrap(), m20[k].as_f64().unwrap());
    assert!((y - 2.0 * x).abs() < 1e-9 * y, "{k}: {x}, {y}");
}

#[test]
fn an_interrupted_evaluation_resumes_where_it_stopped() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let body = "evaluate(smol, qa, samples = 10, batch = 1)";
    std::fs::write(dir.path().join("p.eep"), pipeline(&model, ECONOMICS, body)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-eval"))
        .current_dir(dir.path())
        .env("EDGE_EVAL_CACHE", dir.path().join("cache"))
        .args(["run", "p.eep", "--quiet"])
        .spawn()
        .unwrap();
    // Wait until some samples are saved, then Ctrl-C.
    let partial = dir.path().join("cache/partial");
    let saved = || -> usize {
        std::fs::read_dir(&partial)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("samples.jsonl")).ok())
            .map(|t| t.lines().count())
            .sum()
    };
    let t = Instant::now();
    while saved() < 2 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = saved();
    assert!(before >= 2, "no progress saved");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let kept = saved();
    assert!((2..10).contains(&kept), "{kept} samples kept");

    let out = run(dir.path(), &["run", "p.eep"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval = rows(dir.path(), "evaluate");
    assert_eq!(by(&eval, "row", "sample").len(), 10);
    // Finished: the resume folder is gone.
    assert_eq!(saved(), 0);

    // The resumed result equals an uninterrupted one.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(
        fresh.path().join("p.eep"),
        pipeline(&model, ECONOMICS, body),
    )
    .unwrap();
    assert!(run(fresh.path(), &["run", "p.eep"]).status.success());
    let scores = |rows: &[serde_json::Map<String, Value>]| -> Vec<(String, String)> {
        by(rows, "row", "sample")
            .iter()
            .map(|r| (r["sample_id"].to_string(), r["output"].to_string()))
            .collect()
    };
    assert_eq!(scores(&eval), scores(&rows(fresh.path(), "evaluate")));
}

#[test]
fn a_judge_model_scores_strictly_and_counts_what_it_cannot_parse() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        r#"task judged = jsonl("{}/chat.jsonl", kind = chat, score = judge, max_tokens = 8)
evaluate(smol, judged, samples = 3, judge = smol)
evaluate(smol, judged, samples = 1, id = "no_judge")"#,
        tasks_dir().display()
    );
    std::fs::write(dir.path().join("p.eep"), pipeline(&model, ECONOMICS, &body)).unwrap();
    let out = run(dir.path(), &["run", "p.eep", "--keep-going"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Without a judge model the stage fails with a message saying how to give one.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("judge = JUDGE_MODEL"), "{stderr}");
    let eval = rows(dir.path(), "evaluate");
    let samples = by(&eval, "row", "sample");
    assert_eq!(samples.len(), 3);
    let mut parsed = 0;
    for s in &samples {
        let reply = s["judge_reply"].as_str().unwrap();
        let score = s["score"].as_f64();
        // A score exists exactly when the reply parses; it is never a default.
        assert_eq!(score, metrics::score::parse_judgement(reply), "{reply:?}");
        parsed += score.is_some() as i64;
    }
    let summary = by(&eval, "row", "summary")[0];
    assert_eq!(summary["samples"].as_i64(), Some(parsed));
    assert_eq!(summary["unscored"].as_i64(), Some(3 - parsed));
}

/// The NLI scorers label (the record's context or document, the answer) with the classifier given
/// as `nli` and score by the label: every sample row's label is what the classifier says of that
/// pair (a small DeBERTa-v3 with random weights: its labels are arbitrary, but they must be the
/// ones of that premise and that output), its score the paper's rule for the label.
#[test]
fn the_nli_scorers_score_each_answer_by_the_classifiers_label_of_its_source() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nli_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/runtime/tests/fixtures/nli/v3");
    let body = format!(
        r#"model nli = path("{}")
task rag = jsonl("{tasks}/qa.jsonl", kind = extractive_qa, score = nli_entail, max_tokens = 8)
task summ = jsonl("{tasks}/summ.jsonl", kind = summarize, score = nli_not_contradict, max_tokens = 8)
evaluate(smol, rag, samples = 4, nli = nli, id = "rag")
evaluate(smol, summ, samples = 4, nli = nli, id = "summ")
evaluate(smol, rag, samples = 1, id = "no_nli")"#,
        nli_dir.display(),
        tasks = tasks_dir().display()
    );
    std::fs::write(dir.path().join("p.eep"), pipeline(&model, ECONOMICS, &body)).unwrap();
    let out = run(dir.path(), &["run", "p.eep", "--keep-going"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Without a classifier the stage fails saying how to give one.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nli = nli"), "{stderr}");

    let nli = runtime::nli::Nli::load_dir(&nli_dir, &candle_core::Device::Cpu).unwrap();
    let mut sources = std::collections::HashMap::new();
    for (file, field, id) in [
        ("qa.jsonl", "context", "id"),
        ("summ.jsonl", "document", "id"),
    ] {
        for line in std::fs::read_to_string(tasks_dir().join(file))
            .unwrap()
            .lines()
        {
            let rec: Value = serde_json::from_str(line).unwrap();
            sources.insert(
                rec[id].as_str().unwrap().to_string(),
                rec[field].as_str().unwrap().to_string(),
            );
        }
    }
    let eval = rows(dir.path(), "evaluate");
    let samples = by(&eval, "row", "sample");
    assert_eq!(samples.len(), 8);
    for s in samples {
        let source = &sources[s["sample_id"].as_str().unwrap()];
        let output = s["output"].as_str().unwrap().trim();
        let label = nli.infer(source, output).unwrap().label;
        assert_eq!(s["nli_label"].as_str(), Some(label.as_str()));
        let scorer = s["scorer"].as_str().unwrap();
        assert_eq!(
            s["score"].as_f64(),
            metrics::score::nli_score(scorer, &label)
        );
        assert!(s["rouge_l"].as_f64().is_some());
    }

    // A chat task has no source to classify against: refused when the run is planned.
    std::fs::write(
        dir.path().join("chat.eep"),
        pipeline(
            &model,
            ECONOMICS,
            &format!(
                r#"task c = jsonl("{}/chat.jsonl", kind = chat, score = nli_entail)
evaluate(smol, c)"#,
                tasks_dir().display()
            ),
        ),
    )
    .unwrap();
    let out = run(dir.path(), &["plan", "chat.eep"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("chat records do not have"), "{text}");
}

/// The quickstart's qa prompts, rendered with SmolLM2's chat template and tokenized by edge-eval,
/// are transformers' `apply_chat_template(…, add_generation_prompt=True, tokenize=True)` of the
/// same messages token for token (fixture written by `tools/chat_fixtures.py --tokens`): the
/// template's default system turn included.
#[test]
fn the_quickstarts_prompts_are_transformers_tokens() {
    let Some(path) = smollm2() else { return };
    let g = runtime::gguf::Gguf::open(&path).unwrap();
    let tok = runtime::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    let default = edge_eval::tasks::Prompting::preset("default", "extractive_qa").unwrap();
    let file = tasks_dir().join("squad-rag.jsonl");
    let samples = edge_eval::tasks::load(&file, "extractive_qa", &default).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/runtime/tests/fixtures/chat/smollm2-quickstart-qa-ids.json");
    let want: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    assert_eq!(want.len(), 20);
    for (s, w) in samples.iter().zip(&want) {
        assert_eq!(s.id, w["id"].as_str().unwrap());
        let ids: Vec<u32> = w["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.chat_ids(&s.messages).unwrap(), ids, "sample {}", s.id);
    }
}
