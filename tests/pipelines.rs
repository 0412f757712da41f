//! The pipelines and examples the project ships: every one resolves, and the paper's study plans
//! its 72 variants anywhere, naming what is missing.

use std::path::Path;
use std::process::Command;

fn edge_eval(args: &[&str], hf_home: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-eval"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn every_shipped_pipeline_and_example_resolves() {
    let empty = tempfile::tempdir().unwrap();
    let mut files = vec![];
    for dir in ["pipelines", "examples"] {
        for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "eep") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 9, "{files:?}");
    for f in files {
        let (code, text) = edge_eval(&["check", f.to_str().unwrap()], empty.path());
        assert_eq!(code, 0, "{}: {text}", f.display());
    }
}

#[test]
fn the_paper_study_plans_72_variants_and_names_missing_inputs() {
    let empty = tempfile::tempdir().unwrap();
    let (code, text) = edge_eval(&["plan", "pipelines/t4-frontier.eep"], empty.path());
    assert_eq!(code, 0, "{text}");
    let first = text.lines().next().unwrap();
    assert!(
        first.contains("325 stages") && first.contains("10 missing"),
        "{first}"
    );
    let count = |kind: &str| {
        text.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(kind))
            .count()
    };
    // 6 models × 3 tasks × (LoRA at 3 precisions + merged QLoRA).
    for kind in ["cold_load", "evaluate", "measure"] {
        assert_eq!(count(kind), 72, "{kind}");
    }
    // The variants and the judge.
    assert_eq!(count("quantize"), 73);
    assert_eq!(count("finetune"), 36);
    // Each missing input says how to provide it.
    assert!(text.contains("huggingface-cli download Qwen/Qwen2.5-7B-Instruct"));
    assert!(text.contains(
        "huggingface-cli download MoritzLaurer/DeBERTa-v3-large-mnli-fever-anli-ling-wanli"
    ));
    assert!(text.contains("rag_eval_gold.jsonl does not exist"));
    // A blocked stage names the missing input behind it, not the stage in between.
    assert!(text.contains("blocked: input `model:llama8b` is unavailable"));
}

#[test]
fn plan_shows_each_finetunes_estimated_training_tokens() {
    let empty = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (code, text) = edge_eval(
        &[
            "--cache",
            cache.path().to_str().unwrap(),
            "plan",
            "pipelines/quickstart.eep",
            "--json",
        ],
        empty.path(),
    );
    assert_eq!(code, 0, "{text}");
    let plan: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let stages = plan["stages"].as_array().unwrap();
    let tuned: Vec<&serde_json::Value> =
        stages.iter().filter(|s| s["kind"] == "finetune").collect();
    assert_eq!(tuned.len(), 2);
    // The quickstart tunes 24 steps, batch 1: 2.4 epochs of qa's 10 train rows, 3 of summ's 8.
    for (t, rows, epochs) in [(tuned[0], 10, "2.40"), (tuned[1], 8, "3")] {
        let work = t["work"].as_str().unwrap_or_default();
        assert!(
            work.starts_with('~')
                && work.contains(&format!("training tokens ({rows} rows × ~"))
                && work.contains(&format!("× {epochs} epochs")),
            "{}: {work}",
            t["id"]
        );
    }
    // Other stages have nothing to estimate.
    assert!(
        stages
            .iter()
            .filter(|s| s["kind"] == "quantize")
            .all(|s| s["work"].is_null())
    );
}

#[test]
fn the_executor_setting_resolves_to_slurm_options_and_set_overrides_it() {
    use spec::{Executor, SlurmOptions, Value};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.eep");
    std::fs::write(
        &file,
        r#"pipeline p {
  executor = slurm(partition = "gpu", gpus_per_stage = 2, time = "1-00:00:00",
                   sbatch_args = ["--qos=short"])
}
test_stage(emit = "x")
"#,
    )
    .unwrap();
    let executor = |overrides: &[String]| {
        let (p, _) =
            edge_eval::stages::load(&file, overrides).unwrap_or_else(|_| panic!("invalid"));
        match p.setting("pipeline.executor") {
            Some(Value::Executor(e)) => e.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        executor(&[]),
        Executor::Slurm(SlurmOptions {
            partition: Some("gpu".into()),
            gpus_per_stage: 2,
            cpus_per_stage: 4,
            time: Some("1-00:00:00".into()),
            account: None,
            sbatch_args: vec!["--qos=short".into()],
        })
    );
    assert_eq!(
        executor(&["pipeline.executor=local".into()]),
        Executor::Local
    );
    assert_eq!(
        executor(&["pipeline.executor=slurm(time = \"30\")".into()]),
        Executor::Slurm(SlurmOptions {
            time: Some("30".into()),
            ..SlurmOptions::default()
        })
    );
}

/// A task's prompt is checked against its kind's fields at plan time, and is part of every
/// prompting stage's key: another prompt, system turn or chat-template choice reruns them.
#[test]
fn a_tasks_prompt_is_checked_and_keys_the_stages_that_prompt_with_it() {
    let empty = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tasks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks/squad-rag.jsonl");
    let plan = |extra: &str| {
        let file = dir.path().join("p.eep");
        std::fs::write(
            &file,
            format!(
                "pipeline p {{ device = cpu  results = \"out\" }}\n\
                 model m = synthetic(\"smollm2-135m\", seed = 1)\n\
                 task qa = jsonl(\"{}\", kind = extractive_qa, score = f1{extra})\n\
                 evaluate(m, qa, samples = 2)\n",
                tasks.display()
            ),
        )
        .unwrap();
        let cache = dir.path().join("cache");
        edge_eval(
            &[
                "--cache",
                cache.to_str().unwrap(),
                "plan",
                file.to_str().unwrap(),
                "--json",
            ],
            empty.path(),
        )
    };
    let key = |extra: &str| -> String {
        let (code, text) = plan(extra);
        assert_eq!(code, 0, "{extra}: {text}");
        let plan: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let stages = plan["stages"].as_array().unwrap();
        let eval = stages.iter().find(|s| s["kind"] == "evaluate").unwrap();
        eval["key"].as_str().unwrap_or_default().to_string()
    };
    let base = key("");
    assert!(!base.is_empty());
    assert_eq!(key(", prompts = default"), base);
    let own = key(", prompt = \"Q: {question}\\nC: {context}\"");
    assert_ne!(own, base);
    assert_ne!(
        key(", prompt = \"Q: {question}\\nC: {context}\", system = \"Be brief.\""),
        own
    );
    assert_ne!(key(", chat_template = false"), base);
    assert_ne!(key(", prompts = paper"), base);
    // Like a missing file, the task is an unavailable input that says why, and what it blocks.
    let (code, text) = plan(", prompt = \"{contxt}: {question}\"");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("`{contxt}`") && text.contains("{context}, {question}, {title}"),
        "{text}"
    );
}

#[test]
fn check_stages_and_cache_ls_speak_json() {
    let empty = tempfile::tempdir().unwrap();
    let (code, text) = edge_eval(
        &["check", "pipelines/quickstart.eep", "--json"],
        empty.path(),
    );
    assert_eq!(code, 0, "{text}");
    let ok: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (ok["ok"].as_bool(), ok["stages"].as_u64()),
        (Some(true), Some(26))
    );

    let (code, text) = edge_eval(
        &["check", "tests/diagnostics/unknown_parameter.eep", "--json"],
        empty.path(),
    );
    assert_eq!(code, 2, "{text}");
    let bad: serde_json::Value = serde_json::from_str(&text).unwrap();
    let e = &bad["errors"][0];
    assert_eq!(e["message"], "`evaluate` has no parameter `sample`");
    assert_eq!(
        (e["at"]["line"].as_u64(), e["at"]["col"].as_u64()),
        (Some(3), Some(17))
    );
    assert_eq!(e["hints"][0], "did you mean `samples`?");

    let (code, text) = edge_eval(&["stages", "--json"], empty.path());
    assert_eq!(code, 0);
    let kinds: serde_json::Value = serde_json::from_str(&text).unwrap();
    let evaluate = kinds
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "evaluate")
        .unwrap();
    assert_eq!(evaluate["role"], "stage");
    assert!(
        evaluate["params"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "nli")
    );

    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let (code, text) = edge_eval(&["--cache", cache, "cache", "ls", "--json"], empty.path());
    assert_eq!((code, text.trim()), (0, "[]"));
}
