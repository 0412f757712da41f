//! Command line: `run` (also `edge-eval FILE`), `check`, `plan`, `explain`, `cache ls|verify|gc`
//! and `bench`. Exit codes: 0 success, 1 a stage failed, 2 the pipeline or the command line is
//! invalid, 130 interrupted.

use crate::stages::{REGISTRY, Role};
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use engine::cache::Cache;
use engine::exec::{self, RunSettings, Status};
use engine::plan::{Planner, State, show_params};
use lang::{self, Pipeline};
use meter::hw::{Hardware, available_threads};
use serde_json::json;
use spec::{Executor, Value};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "edge-eval",
    version,
    about = "Is this LLM worth deploying on this hardware? Declarative, cached, measured studies.",
    after_help = "`edge-eval FILE.eep` is short for `edge-eval run FILE.eep`."
)]
pub struct Cli {
    /// Cache folder (default: ./cache)
    #[arg(long, global = true, env = "EDGE_EVAL_CACHE", default_value = "cache")]
    pub cache: PathBuf,
    /// A cache tier shared by several hosts, behind the local one: file:///shared/folder, or
    /// s3://bucket/prefix (with the `s3` build feature). Misses are pulled from it, results
    /// pushed to it
    #[arg(
        long,
        global = true,
        env = "EDGE_EVAL_REMOTE_CACHE",
        value_name = "URL"
    )]
    pub remote_cache: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct PipelineArgs {
    /// Pipeline file (.eep)
    pub file: PathBuf,
    /// Override a `let` value or a BLOCK.KEY setting, e.g. --set samples=50
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub overrides: Vec<String>,
    /// CPU threads (default: pipeline `threads`, else all cores); part of measuring stages' keys
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where stages run: `local` (this process) or `slurm` (one job per stage; the cache folder
    /// must be mounted by every node). Default: the pipeline's `executor` setting, else local
    #[arg(long, value_parser = ["local", "slurm"])]
    pub executor: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a pipeline: every stage not in the cache runs; tables are written
    Run {
        #[command(flatten)]
        p: PipelineArgs,
        /// Let independent stages finish when one fails
        #[arg(long)]
        keep_going: bool,
        /// Print one JSON object at the end instead of a summary
        #[arg(long)]
        json: bool,
        /// No progress output (errors are still printed)
        #[arg(long, short)]
        quiet: bool,
    },
    /// Parse and resolve a pipeline without running anything
    Check {
        #[command(flatten)]
        p: PipelineArgs,
    },
    /// Show every stage: cached or will run, and why
    Plan {
        #[command(flatten)]
        p: PipelineArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show the key components of one stage and how they differ from its last run
    Explain {
        #[command(flatten)]
        p: PipelineArgs,
        /// Stage id, e.g. quantize[qa,q4_0]
        stage: String,
    },
    /// Print the metrics table of a results folder and rewrite its report.html
    Report {
        /// Results folder (holds metrics.parquet)
        dir: PathBuf,
        /// Metrics to show (default: all five)
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
    },
    /// List the stage kinds and model/task sources, with their parameters
    Stages,
    /// Inspect and maintain the cache
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Run one stage submitted by `run --executor slurm` (what each Slurm job executes)
    ExecStage {
        /// The cache folder the submitting run uses (mounted here)
        cache_dir: PathBuf,
        /// The job: RUN/NODE, as named in the cache's jobs/ folder
        job: String,
    },
    /// A cold load in a fresh process, driven by `cold_load` over stdin/stdout (internal)
    #[command(hide = true)]
    LoadProbe {
        model: PathBuf,
        #[arg(long, default_value = "cpu", value_parser = parse_device)]
        device: spec::Device,
    },
    /// Runtime benchmark of a GGUF model: prompt and generation tokens/s (as llama-bench pp/tg)
    BenchModel {
        /// GGUF file
        model: PathBuf,
        #[arg(long, default_value_t = 128)]
        prompt: usize,
        /// Tokens generated
        #[arg(long = "gen", default_value_t = 128)]
        tokens: usize,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Decode batch sizes (comma-separated): each row generates `--gen` tokens
        #[arg(long, value_delimiter = ',', default_value = "1")]
        batch: Vec<usize>,
        /// cpu or cuda(N) (the latter needs a build with `--features cuda`)
        #[arg(long, default_value = "cpu", value_parser = parse_device)]
        device: spec::Device,
        /// Then decode N times with the energy meter running and N times without, alternating,
        /// and report the meter's cost in tokens/s (with a 95 % interval)
        #[arg(long, value_name = "N")]
        meter_overhead: Option<usize>,
        /// On the CPU, run candle's forward pass and kernels even where edge-eval's own would
        /// run (to compare the two)
        #[arg(long)]
        candle: bool,
    },
    /// Engine benchmark: plan and no-op run of a 72-variant × 5-stage pipeline; file hashing speed
    Bench {
        /// Size of the file hashed, in MiB
        #[arg(long, default_value_t = 1024)]
        hash_mib: u64,
        /// Repetitions of each timing
        #[arg(long, default_value_t = 15)]
        repeats: usize,
        /// Working folder (default: a temporary folder)
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum CacheAction {
    /// List cached stage results
    Ls,
    /// Rehash every object; remove (and report) damaged entries so they are recomputed
    Verify,
    /// Remove objects no cached result references, and stale temporary files
    Gc,
}

/// `edge-eval FILE ...` → `edge-eval run FILE ...`.
pub fn normalize_args(mut args: Vec<String>) -> Vec<String> {
    use clap::CommandFactory;
    // The subcommand names come from clap itself, so a new command cannot be mistaken for a file.
    let cli = Cli::command();
    let commands: Vec<&str> = cli
        .get_subcommands()
        .map(|c| c.get_name())
        .chain(["help"])
        .collect();
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--cache" || a == "--remote-cache" {
            i += 2; // a global flag and its value
        } else if a.starts_with('-') {
            i += 1;
        } else {
            if !commands.contains(&a) {
                args.insert(i, "run".into());
            }
            break;
        }
    }
    args
}

pub fn main() -> i32 {
    let cli = Cli::parse_from(normalize_args(std::env::args().collect()));
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

fn load(p: &PipelineArgs) -> Result<Pipeline, i32> {
    match crate::stages::load(&p.file, &p.overrides) {
        Ok((pipeline, _)) => Ok(pipeline),
        Err((diags, map)) => {
            eprint!("{}", diags.render(&map));
            Err(2)
        }
    }
}

/// `--executor` over the pipeline's `executor` setting; `--executor slurm` keeps the pipeline's
/// `slurm(...)` arguments when it has them.
fn executor_for(p: &Pipeline, flag: Option<&str>) -> Executor {
    let set = match p.setting("pipeline.executor") {
        Some(Value::Executor(e)) => e.clone(),
        _ => Executor::Local,
    };
    match (flag, set) {
        (Some("local"), _) => Executor::Local,
        (Some("slurm"), Executor::Slurm(o)) => Executor::Slurm(o),
        (Some("slurm"), _) => Executor::Slurm(Default::default()),
        (_, set) => set,
    }
}

fn threads_for(p: &Pipeline, flag: Option<usize>) -> usize {
    flag.or_else(|| {
        p.setting("pipeline.threads")
            .and_then(Value::as_i64)
            .map(|t| t as usize)
    })
    .unwrap_or_else(available_threads)
    .max(1)
}

fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Check { p } => {
            let pipeline = match load(&p) {
                Ok(x) => x,
                Err(code) => return Ok(code),
            };
            let stages = pipeline
                .nodes
                .iter()
                .filter(|n| n.role() == Role::Stage)
                .count();
            println!(
                "{}: ok — {} models/tasks, {stages} stages",
                p.file.display(),
                pipeline.nodes.len() - stages
            );
            Ok(0)
        }
        Command::Plan { p, json } => {
            let pipeline = match load(&p) {
                Ok(x) => x,
                Err(code) => return Ok(code),
            };
            let cache = Cache::open_with_remote(&cli.cache, cli.remote_cache.as_deref())?;
            let _lock = cache.lock(false)?;
            let hw = Hardware::detect(threads_for(&pipeline, p.threads));
            let executor = executor_for(&pipeline, p.executor.as_deref());
            let mut planner = Planner::new(&pipeline, &REGISTRY, &cache, &hw);
            planner.measured_elsewhere = executor != Executor::Local;
            let states = planner.plan();
            print_plan(&pipeline, &states, &executor, json);
            Ok(0)
        }
        Command::Explain { p, stage } => {
            let pipeline = match load(&p) {
                Ok(x) => x,
                Err(code) => return Ok(code),
            };
            let cache = Cache::open_with_remote(&cli.cache, cli.remote_cache.as_deref())?;
            let _lock = cache.lock(false)?;
            let hw = Hardware::detect(threads_for(&pipeline, p.threads));
            explain(&pipeline, &cache, &hw, &stage)
        }
        Command::Run {
            p,
            keep_going,
            json,
            quiet,
        } => {
            let pipeline = match load(&p) {
                Ok(x) => x,
                Err(code) => return Ok(code),
            };
            let executor = executor_for(&pipeline, p.executor.as_deref());
            run(
                &pipeline,
                &cli.cache,
                &RunSettings {
                    executor,
                    remote_cache: cli.remote_cache.clone(),
                    keep_going,
                    threads: threads_for(&pipeline, p.threads),
                    quiet: quiet || json,
                },
                json,
            )
        }
        Command::ExecStage { cache_dir, job } => {
            let cache = Cache::open_with_remote(&cache_dir, cli.remote_cache.as_deref())?;
            engine::exec::job::exec_stage(&REGISTRY, &cache, &job)
        }
        Command::LoadProbe { model, device } => {
            crate::stages::load_probe::child(&model, device)?;
            Ok(0)
        }
        Command::Cache { action } => cache_cmd(&cli.cache, action),
        Command::Report { dir, metrics } => report_cmd(&dir, &metrics),
        Command::Stages => {
            print!("{}", describe_stages());
            Ok(0)
        }
        Command::BenchModel {
            model,
            prompt,
            tokens,
            repeats,
            batch,
            device,
            meter_overhead,
            candle,
        } => crate::bench::model(
            &model,
            &crate::bench::ModelBench {
                prompt,
                tokens,
                repeats,
                batches: batch,
                device,
                meter_overhead,
                candle,
            },
        ),
        Command::Bench {
            hash_mib,
            repeats,
            dir,
        } => crate::bench::run(hash_mib, repeats, dir.as_deref()),
    }
}

/// `cpu`, `cuda` or `cuda(N)`.
fn parse_device(s: &str) -> std::result::Result<spec::Device, String> {
    let s = s.trim();
    if s == "cpu" {
        return Ok(spec::Device::Cpu);
    }
    if s == "cuda" {
        return Ok(spec::Device::Cuda(0));
    }
    s.strip_prefix("cuda(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.trim().parse().ok())
        .map(spec::Device::Cuda)
        .ok_or_else(|| format!("`{s}`: expected cpu, cuda or cuda(N)"))
}

/// `edge-eval report DIR`: the metrics table of a finished run, and its HTML page rewritten.
fn report_cmd(dir: &Path, metrics: &[String]) -> Result<i32> {
    let path = dir.join("metrics.parquet");
    if !path.is_file() {
        eprintln!(
            "error: {} does not exist: run a pipeline with `evaluate` or `measure` stages first \
             (its `results` folder holds metrics.parquet)",
            path.display()
        );
        return Ok(2);
    }
    let rows = engine::table::read_rows(&path)?;
    print!("{}", crate::report::terminal_table(&rows, metrics));
    let title = dir
        .file_name()
        .map_or("edge-eval".to_string(), |n| n.to_string_lossy().to_string());
    let page = dir.join("report.html");
    engine::cache::write_atomic_via(
        &dir.join(".report.html.tmp"),
        &page,
        crate::report::html(&title, &rows, metrics).as_bytes(),
    )?;
    eprintln!("wrote {}", page.display());
    Ok(0)
}

/// Runs a pipeline, prints the summary (or JSON) and returns the exit code.
pub fn run(
    pipeline: &Pipeline,
    cache_dir: &Path,
    settings: &RunSettings,
    json: bool,
) -> Result<i32> {
    let crate::study::StudyRun {
        report,
        tables,
        metrics,
    } = crate::study::run(pipeline, cache_dir, settings)?;
    let count = |s: Status| {
        report
            .outcomes
            .iter()
            .flatten()
            .filter(|o| o.status == s)
            .count()
    };
    let failed = count(Status::Failed);
    if json {
        let stages: Vec<_> = report
            .outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().map(|o| (i, o)))
            .map(|(i, o)| {
                json!({
                    "id": pipeline.nodes[i].id,
                    "kind": pipeline.nodes[i].kind(),
                    "status": o.status.as_str(),
                    "seconds": o.seconds,
                    "error": o.error,
                })
            })
            .collect();
        let tables: Vec<String> = tables.iter().map(|t| t.display().to_string()).collect();
        println!("{}", json!({ "stages": stages, "tables": tables }));
    } else {
        eprintln!(
            "{}: {} ran, {} cached, {} failed, {} skipped",
            pipeline.name,
            count(Status::Ran),
            count(Status::Cached),
            failed,
            count(Status::Skipped)
        );
        for (i, o) in report.outcomes.iter().enumerate() {
            if let Some(o) = o.as_ref().filter(|o| o.status == Status::Failed) {
                eprintln!(
                    "  failed {}: {}",
                    pipeline.nodes[i].id,
                    o.error.as_deref().unwrap_or("")
                );
            }
        }
        for t in &tables {
            eprintln!("  wrote {}", t.display());
        }
        if !metrics.is_empty() {
            println!();
            print!(
                "{}",
                crate::report::terminal_table(&metrics, &crate::study::report_metrics(pipeline))
            );
        }
    }
    Ok(if report.interrupted {
        130
    } else if failed > 0 {
        1
    } else {
        0
    })
}

fn is_input(pipeline: &Pipeline, i: usize, state: &State) -> bool {
    pipeline.nodes[i].role() == Role::Source
        && matches!(
            state,
            State::Done { manifest: None, .. } | State::Failed { .. }
        )
}

fn print_plan(pipeline: &Pipeline, states: &[State], executor: &Executor, json: bool) {
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
        let entry = json!({ "id": node.id, "kind": node.kind(), "status": status, "reason": reason, "key": key, "where": runs_on });
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
        let line = format!("  {status:<7} {kind:<10} {id:<width$}  {runs_on}{reason}");
        println!("{}", line.trim_end());
    }
}

fn explain(pipeline: &Pipeline, cache: &Cache, hw: &Hardware, stage: &str) -> Result<i32> {
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
    let node = &pipeline.nodes[i];
    println!(
        "{} ({} v{})",
        node.id,
        node.kind(),
        REGISTRY.of(node).version()
    );
    match &states[i] {
        State::Done {
            manifest: Some(m), ..
        } => {
            println!(
                "status: cached (computed {} on {}, {:.2} s)",
                fmt_time(m.started_us),
                m.provenance.host,
                m.seconds
            )
        }
        State::Done {
            manifest: None,
            artifact,
        } => println!("status: input, ready (output {})", artifact.digest),
        State::Stale { reason, .. } => println!("status: will run — {reason}"),
        State::Blocked { reason } => println!("status: will run — {reason}"),
        State::Failed { error } => println!("status: cannot run — {error}"),
    }
    println!("parameters:");
    for (k, v) in show_params(&pipeline.nodes, node) {
        println!("  {k} = {v}");
    }
    let all_inputs_known = node.deps.iter().all(|d| states[*d].artifact().is_some());
    if !all_inputs_known {
        println!(
            "key: not known yet — it contains the output digests of its inputs, and these are not all computed:"
        );
        for d in &node.deps {
            if states[*d].artifact().is_none() {
                println!(
                    "  {} ({})",
                    pipeline.nodes[*d].id,
                    engine::plan::status_word(&states[*d])
                );
            }
        }
        return Ok(0);
    }
    if node.role() == Role::Source && matches!(states[i], State::Done { manifest: None, .. }) {
        return Ok(0);
    }
    let components = planner.components(node, &states);
    println!("key: {}", components.key());
    println!("key components:");
    println!("  kind = {} v{}", components.kind, components.version);
    for (k, v) in &components.params {
        println!("  {k} = {v}");
    }
    println!(
        "  hardware = {}",
        components
            .hardware
            .as_deref()
            .unwrap_or("(not a measuring stage)")
    );
    match planner.history.get(&node.id) {
        None => println!("last run: none recorded for this stage id"),
        Some(prev) => {
            let before = prev.get("components").and_then(|c| {
                serde_json::from_value::<engine::plan::KeyComponents>(c.clone()).ok()
            });
            match before {
                Some(b) if b == components => println!("last run: same key components"),
                Some(b) => {
                    println!(
                        "last run: key {}; what changed since:",
                        prev["key"].as_str().unwrap_or("?")
                    );
                    for d in engine::plan::diff(&pipeline.nodes, node, &b, &components) {
                        println!("  - {d}");
                    }
                }
                None => println!("last run: record unreadable"),
            }
        }
    }
    Ok(0)
}

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

fn fmt_time(us: i64) -> String {
    let secs = us / 1_000_000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn cache_cmd(dir: &Path, action: CacheAction) -> Result<i32> {
    let cache = Cache::open(dir)?;
    match action {
        CacheAction::Ls => {
            let _lock = cache.lock(false)?;
            let mut ms = cache.manifests();
            ms.sort_by(|a, b| {
                (&a.provenance.pipeline, &a.stage_id).cmp(&(&b.provenance.pipeline, &b.stage_id))
            });
            let mut total = 0u64;
            for m in &ms {
                let bytes: u64 = m.files.values().map(|o| o.size).sum();
                total += bytes;
                println!(
                    "{}  {:<12} {:<40} {:>10}  {}",
                    &m.key[..16],
                    m.kind,
                    format!("{}/{}", m.provenance.pipeline, m.stage_id),
                    human_bytes(bytes),
                    fmt_time(m.started_us)
                );
            }
            println!(
                "{} results, {} of outputs, in {}",
                ms.len(),
                human_bytes(total),
                dir.display()
            );
            Ok(0)
        }
        CacheAction::Verify => {
            let _lock = cache.lock(true)?;
            let r = cache.verify()?;
            for p in &r.problems {
                println!("damaged: {p}");
            }
            println!(
                "verified {} objects and {} results: {} problem{}",
                r.objects,
                r.manifests,
                r.problems.len(),
                if r.problems.len() == 1 { "" } else { "s" }
            );
            Ok(if r.problems.is_empty() { 0 } else { 1 })
        }
        CacheAction::Gc => {
            let _lock = cache.lock(true)?;
            let r = cache.gc()?;
            println!(
                "removed {} unreferenced objects ({}), {} temporary entries, {} stale digest memos, \
                 {} finished batch-run job folders",
                r.objects,
                human_bytes(r.bytes),
                r.temp,
                r.memo,
                r.job_runs
            );
            Ok(0)
        }
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_arguments() {
        use spec::Device;
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert_eq!(parse_device("cuda"), Ok(Device::Cuda(0)));
        assert_eq!(parse_device("cuda(3)"), Ok(Device::Cuda(3)));
        assert!(
            parse_device("gpu")
                .unwrap_err()
                .contains("cpu, cuda or cuda(N)")
        );
        assert!(parse_device("cuda(x)").is_err());
    }

    #[test]
    fn bare_file_means_run() {
        let a = |v: &[&str]| normalize_args(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(a(&["ee", "x.eep"]), ["ee", "run", "x.eep"]);
        assert_eq!(a(&["ee", "plan", "x.eep"]), ["ee", "plan", "x.eep"]);
        assert_eq!(a(&["ee", "report", "out"]), ["ee", "report", "out"]);
        assert_eq!(
            a(&["ee", "bench-model", "m.gguf"]),
            ["ee", "bench-model", "m.gguf"]
        );
        assert_eq!(
            a(&["ee", "--cache", "c", "x.eep"]),
            ["ee", "--cache", "c", "run", "x.eep"]
        );
        assert_eq!(a(&["ee", "--version"]), ["ee", "--version"]);
        assert_eq!(
            a(&["ee", "--remote-cache", "file:///r", "x.eep"]),
            ["ee", "--remote-cache", "file:///r", "run", "x.eep"]
        );
    }

    #[test]
    fn every_kind_is_described_with_its_parameters() {
        let text = describe_stages();
        for s in crate::stages::REGISTRY.all() {
            assert!(
                text.contains(&format!("  {}(...)", s.kind())),
                "{}",
                s.kind()
            );
            for p in s.params() {
                assert!(text.contains(p.doc), "{}.{}", s.kind(), p.name);
            }
        }
    }

    #[test]
    fn time_formatting() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_time(1_795_996_800_000_000), "2026-11-30 00:00:00 UTC");
    }
}
