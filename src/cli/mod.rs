//! Command line: `run` (also `edge-eval FILE`), `check`, `plan`, `explain`, `cache ls|verify|gc`
//! and `bench`. Exit codes: 0 success, 1 a stage failed or the command could not finish, 2 the
//! pipeline or the command line is invalid, 130 interrupted (Ctrl-C or SIGTERM).

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
        /// Print one JSON object (the counts, or each error with its place and hints)
        #[arg(long)]
        json: bool,
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
        /// Print one JSON object: status, parameters, key, key components, last run's changes
        #[arg(long)]
        json: bool,
    },
    /// Print the metrics table of a results folder's latest run (or of a run folder,
    /// RESULTS/runs/ID) and rewrite its report.html; or export it
    Report {
        /// Results folder (its latest run), or one run's folder
        dir: PathBuf,
        /// Metrics to show (default: all five)
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
        /// table: the terminal table (and report.html rewritten); md: the same cells as a
        /// markdown table; csv, json: every column of metrics.parquet
        #[arg(long, default_value = "table", value_parser = ["table", "md", "csv", "json"])]
        format: String,
    },
    /// Two runs side by side: what differs (pipeline file, hardware, version, variants) and per
    /// variant × task each metric, the change and whether it is real (paired over the records
    /// both scored)
    Compare {
        /// A results folder (its latest run) or a run folder (RESULTS/runs/ID); with one
        /// argument, a results folder: its two latest runs
        a: PathBuf,
        /// The run compared with A
        b: Option<PathBuf>,
        /// Print JSON instead
        #[arg(long)]
        json: bool,
    },
    /// List the stage kinds and model/task sources, with their parameters
    Stages {
        /// Print JSON instead
        #[arg(long)]
        json: bool,
    },
    /// The EDGE-EVAL paper's five metric tables recomputed from its raw result files and held
    /// to the published ones; its headline claims against its own files (docs/paper-comparison.md)
    Paper {
        /// A folder with the paper's result files (default: the copy built into edge-eval,
        /// reference/edge-eval-paper)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print one recomputed table beside the published values: q_ret, n_break, ipw,
        /// rho_sys or c_tax
        #[arg(long)]
        table: Option<String>,
        /// Print JSON instead
        #[arg(long)]
        json: bool,
    },
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
        #[arg(long, default_value = "cpu")]
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
        #[arg(long, default_value = "cpu")]
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
    /// Trainer benchmark: LoRA / QLoRA steps on random sequences of a fixed shape (tokens/s,
    /// J/token, peak memory), as `benches/peft_train.py` measures PyTorch + PEFT
    BenchTrain {
        /// A GGUF file, or a synthetic architecture (`edge-eval stages` lists them)
        model: String,
        #[command(flatten)]
        settings: crate::bench::train::TrainBench,
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
    Ls {
        /// Print JSON instead
        #[arg(long)]
        json: bool,
    },
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
    let mut args = vec![];
    for a in std::env::args_os() {
        match a.into_string() {
            Ok(a) => args.push(a),
            Err(bad) => {
                eprintln!(
                    "error: the argument {:?} is not valid UTF-8: file names and values must be",
                    bad.to_string_lossy()
                );
                return 2;
            }
        }
    }
    let cli = Cli::parse_from(normalize_args(args));
    // A closed stdout (`edge-eval stages | head -1`) ends a command that only prints quietly, as
    // it does other command-line tools, instead of a panic in `println!`; so do the benchmarks,
    // whose only product is what they print. Commands that keep results (a run, a job, a load
    // probe) handle a broken pipe as an error instead, after the results are kept.
    if matches!(
        cli.command,
        Command::Check { .. }
            | Command::Plan { .. }
            | Command::Explain { .. }
            | Command::Report { .. }
            | Command::Stages { .. }
            | Command::Paper { .. }
            | Command::Compare { .. }
            | Command::Cache { .. }
            | Command::Bench { .. }
            | Command::BenchModel { .. }
            | Command::BenchTrain { .. }
    ) {
        // SAFETY: single-threaded here.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match dispatch(cli) {
        Ok(code) => code,
        // An invalid pipeline or command line is 2; anything else that stops a command (a cache
        // or a table that cannot be written) is 1.
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<engine::InvalidInput>().is_some() {
                2
            } else {
                1
            }
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
/// What `plan` and `explain` look at: the pipeline, the cache (held shared) and this host's
/// hardware; `Err(code)` when the pipeline is invalid (its diagnostics are printed).
fn read_only(
    cache_dir: &Path,
    remote: Option<&str>,
    p: &PipelineArgs,
) -> Result<Result<(Pipeline, Cache, engine::cache::CacheLock, Hardware), i32>> {
    let pipeline = match load(p) {
        Ok(x) => x,
        Err(code) => return Ok(Err(code)),
    };
    let cache = Cache::open_with_remote(cache_dir, remote)?;
    let lock = cache.lock(false)?;
    let hw = Hardware::detect(threads_for(&pipeline, p.threads));
    Ok(Ok((pipeline, cache, lock, hw)))
}

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
        Command::Check { p, json: true } => kinds::check_json(&p),
        Command::Check { p, json: false } => {
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
            let (pipeline, cache, _lock, hw) =
                match read_only(&cli.cache, cli.remote_cache.as_deref(), &p)? {
                    Ok(x) => x,
                    Err(code) => return Ok(code),
                };
            let executor = executor_for(&pipeline, p.executor.as_deref());
            let mut planner = Planner::new(&pipeline, &REGISTRY, &cache, &hw);
            planner.measured_elsewhere = executor != Executor::Local;
            let states = planner.plan();
            print_plan(&pipeline, &states, &executor, json);
            Ok(0)
        }
        Command::Explain { p, stage, json } => {
            let (pipeline, cache, _lock, hw) =
                match read_only(&cli.cache, cli.remote_cache.as_deref(), &p)? {
                    Ok(x) => x,
                    Err(code) => return Ok(code),
                };
            explain(&pipeline, &cache, &hw, &stage, json)
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
        Command::Report {
            dir,
            metrics,
            format,
        } => report_cmd(&dir, &metrics, &format),
        Command::Stages { json } => {
            match json {
                true => println!("{}", serde_json::to_string_pretty(&kinds::stages_json())?),
                false => print!("{}", describe_stages()),
            }
            Ok(0)
        }
        Command::Compare { a, b, json } => run::compare_cmd(&a, b.as_deref(), json),
        Command::Paper { dir, table, json } => {
            paper::paper_cmd(dir.as_deref(), table.as_deref(), json)
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
        Command::BenchTrain { model, settings } => crate::bench::train::train(&model, &settings),
        Command::Bench {
            hash_mib,
            repeats,
            dir,
        } => crate::bench::run(hash_mib, repeats, dir.as_deref()),
    }
}

/// `cpu`, `cuda` or `cuda(N)`.
mod cache;
mod kinds;
mod paper;
mod plan;
mod run;

use cache::{cache_cmd, fmt_time};
pub use kinds::describe_stages;
use plan::{explain, print_plan};
use run::report_cmd;
pub use run::run;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_arguments() {
        use spec::Device;
        let parse = |s: &str| s.parse::<Device>();
        assert_eq!(parse("cpu"), Ok(Device::Cpu));
        assert_eq!(parse("cuda"), Ok(Device::Cuda(0)));
        assert_eq!(parse("cuda(3)"), Ok(Device::Cuda(3)));
        assert!(parse("gpu").unwrap_err().contains("cpu, cuda or cuda(N)"));
        assert!(parse("cuda(x)").is_err());
        // The command line takes them (clap through FromStr).
        let cli = Cli::try_parse_from(["ee", "bench-train", "llama-tiny", "--device", "cuda(2)"]);
        match cli.map(|c| c.command) {
            Ok(Command::BenchTrain { settings, .. }) => {
                assert_eq!(settings.device, Device::Cuda(2))
            }
            Ok(_) => panic!("bench-train parsed as another command"),
            Err(e) => panic!("bench-train --device cuda(2): {e}"),
        }
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
