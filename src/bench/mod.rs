//! `edge-eval bench`: the engine's own benchmark (not a timed test).
//!
//! 1. A pipeline of the paper's size — 72 variants × 5 stages (plus 13 shared inputs) of
//!    `test_stage` — is run once to fill a fresh cache; then `plan` and a no-op `run` (everything
//!    cached) are timed, in-process and as whole `edge-eval` processes.
//! 2. A file of `--hash-mib` MiB is hashed with edge-eval's hasher and, when `b3sum` is on PATH,
//!    with `b3sum`, from a warm page cache.

pub mod train;

use anyhow::{Context, Result, bail};
use engine::cache::{Cache, hash_file, hash_file_plain};
use engine::exec::Status;
use engine::plan::{Planner, State};
use meter::hw::{Hardware, available_threads};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The paper's six models (the published shapes `synthetic(...)` knows, without the test ones).
const MODELS: &[&str] = runtime::synthetic::PAPER_MODELS;

/// The benchmark pipeline: 6 models × 2 methods × 3 precisions × 2 tasks = 72 variants, each
/// with finetune → quantize → {cold_load, evaluate, measure}.
pub fn pipeline_text() -> String {
    let list = |xs: &[&str]| {
        xs.iter()
            .map(|x| format!("\"{x}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"pipeline bench {{ results = "results" }}
for m in [{models}] {{ base[m] = test_stage(emit = m, id = "model") }}
for a in ["lora", "qlora"] {{ method[a] = test_stage(emit = a, id = "method") }}
for q in ["f16", "q8_0", "q4_0"] {{ prec[q] = test_stage(emit = q, id = "precision") }}
for t in ["rag", "summ"] {{ task[t] = test_stage(emit = t, id = "task") }}
for m in [{models}], a in ["lora", "qlora"], q in ["f16", "q8_0", "q4_0"], t in ["rag", "summ"] {{
  ft[m, a, q, t] = test_stage([base[m], method[a], task[t]], emit = "finetune", id = "finetune")
  v[m, a, q, t] = test_stage([ft[m, a, q, t], prec[q]], emit = "quantize", id = "quantize")
  test_stage(v[m, a, q, t], emit = "cold_load", id = "cold_load")
  test_stage([v[m, a, q, t], task[t]], emit = "evaluate", id = "evaluate")
  test_stage([v[m, a, q, t], task[t]], emit = "measure", id = "measure")
}}
"#,
        models = list(MODELS)
    )
}

fn stats(mut xs: Vec<Duration>) -> (f64, f64, f64) {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(xs[0]), ms(xs[xs.len() / 2]), ms(xs[xs.len() - 1]))
}

fn time<T>(repeats: usize, mut f: impl FnMut() -> Result<T>) -> Result<Vec<Duration>> {
    let mut out = vec![];
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed());
    }
    Ok(out)
}

pub fn run(hash_mib: u64, repeats: usize, dir: Option<&Path>) -> Result<i32> {
    let repeats = repeats.max(1);
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.to_path_buf()
        }
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let file = dir.join("bench.eep");
    std::fs::write(&file, pipeline_text())?;
    let cache_dir = dir.join("cache");
    let threads = available_threads();
    let load = || {
        crate::stages::load(&file, &[])
            .map(|(p, _)| p)
            .map_err(|(d, m)| anyhow::anyhow!("{}", d.render(&m)))
    };
    let pipeline = load()?;
    let stages = pipeline.nodes.len();
    println!(
        "engine benchmark: {stages} stage instances (72 variants × 5 stages + 13 inputs), {threads} threads"
    );
    println!(
        "  machine: {}",
        Hardware::detect(threads).fingerprint(spec::Device::Cpu)
    );

    let t = Instant::now();
    let report = crate::study::run_and_report(&pipeline, &cache_dir, &quiet_local(threads))?.report;
    let elapsed = t.elapsed();
    let (ran, shared) = first_run_counts(&report.outcomes)?;
    println!(
        "  first run ({ran} stages ran, {shared} served by an identical stage of the run): {:>9.1} ms",
        elapsed.as_secs_f64() * 1e3
    );

    let cache = Cache::open(&cache_dir)?;
    let hw = Hardware::detect(threads);
    let parse = time(repeats, load)?;
    let plan = time(repeats, || {
        let p = load()?;
        let states = Planner::new(&p, &crate::stages::REGISTRY, &cache, &hw).plan();
        let cached = states
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    State::Done {
                        manifest: Some(_),
                        ..
                    }
                )
            })
            .count();
        if cached != stages {
            bail!("expected every stage cached, {cached} of {stages} are");
        }
        Ok(())
    })?;
    let noop = time(repeats, || {
        let p = load()?;
        let report = crate::study::run_and_report(&p, &cache_dir, &quiet_local(threads))?.report;
        if report
            .outcomes
            .iter()
            .flatten()
            .any(|o| o.status != Status::Cached)
        {
            bail!("the no-op run did work");
        }
        Ok(())
    })?;
    let exe = std::env::current_exe()?;
    let process = time(repeats, || {
        let out = Command::new(&exe)
            .arg("--cache")
            .arg(&cache_dir)
            .args(["run", "--quiet", "--json"])
            .arg(&file)
            .output()?;
        if !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("\"ran\"") {
            bail!(
                "no-op process run did work or failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    })?;
    let row = |name: &str, d: Vec<Duration>| {
        let (min, med, max) = stats(d);
        println!("  {name:<40} min {min:>8.2} ms   median {med:>8.2} ms   max {max:>8.2} ms");
    };
    println!("  ({repeats} repetitions each)");
    row("parse + resolve", parse);
    row("plan (parse + keys + cache lookups)", plan);
    row("no-op run, in process (incl. tables)", noop);
    row("no-op run, whole `edge-eval` process", process);

    if hash_mib > 0 {
        hash_bench(&dir, hash_mib)?;
    }
    Ok(0)
}

/// A clean first run into a fresh cache: every stage ran, or was served by an identical stage
/// (the same cache key) that ran in the same run — the benchmark's fine-tunes do not depend on
/// the precision, so 48 of them share a key with another — and none failed or was skipped.
/// Returns (ran, served by an identical stage).
fn first_run_counts(outcomes: &[Option<engine::exec::Outcome>]) -> Result<(usize, usize)> {
    let outcomes: Vec<&engine::exec::Outcome> = outcomes.iter().flatten().collect();
    let ran_keys: std::collections::HashSet<&str> = outcomes
        .iter()
        .filter(|o| o.status == Status::Ran)
        .filter_map(|o| o.key.as_deref())
        .collect();
    let (mut ran, mut shared, mut other) = (0, 0, vec![]);
    for o in &outcomes {
        match o.status {
            Status::Ran => ran += 1,
            Status::Cached if o.key.as_deref().is_some_and(|k| ran_keys.contains(k)) => shared += 1,
            s => other.push(s.as_str()),
        }
    }
    if !other.is_empty() {
        // Cached from before this run: the folder held a cache already.
        let hint = if other.iter().all(|s| *s == Status::Cached.as_str()) {
            "; use an empty --dir"
        } else {
            ""
        };
        let n = other.len();
        other.sort();
        other.dedup();
        bail!(
            "the benchmark pipeline did not run cleanly into a fresh cache: {n} of {} stages were \
             not run ({}){hint}",
            outcomes.len(),
            other.join(", ")
        );
    }
    Ok((ran, shared))
}

fn hash_bench(dir: &Path, mib: u64) -> Result<()> {
    let path = dir.join("hash.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for chunk in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            f.write_all(&buf)?;
        }
        f.flush()?;
    }
    let bytes = (mib << 20) as f64;
    let ours_digest = hash_file(&path)?; // warms the page cache
    let best = |d: Vec<Duration>| d.into_iter().min().expect("repeats ≥ 1").as_secs_f64();
    let ours = best(time(3, || hash_file(&path))?);
    let plain = best(time(1, || hash_file_plain(&path))?);
    println!("  hashing {mib} MiB (warm page cache, best of 3):");
    println!(
        "    edge-eval (mmap, all cores)     {:>8.0} MiB/s",
        bytes / ours / 1048576.0
    );
    println!(
        "    edge-eval (read, one thread)    {:>8.0} MiB/s",
        bytes / plain / 1048576.0
    );
    let b3 = Command::new("b3sum").arg("--version").output();
    if b3.is_err() {
        println!("    b3sum: not on PATH (cargo install b3sum) — no comparison");
    } else {
        let mut digest = String::new();
        let t = best(time(3, || {
            let out = Command::new("b3sum")
                .arg("--no-names")
                .arg(&path)
                .output()
                .context("b3sum")?;
            digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(())
        })?);
        if digest != ours_digest {
            bail!("b3sum disagrees with edge-eval's digest ({digest} vs {ours_digest})");
        }
        println!(
            "    b3sum                           {:>8.0} MiB/s",
            bytes / t / 1048576.0
        );
        println!("    edge-eval / b3sum speed         {:>8.2}", t / ours);
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// A temporary folder removed on drop.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);
impl TempDir {
    pub(crate) fn new() -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!(
            "edge-eval-bench-{}-{}",
            std::process::id(),
            engine::cache::now_us()
        ));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        engine::cache::remove_tree(&self.0);
    }
}

/// `edge-eval bench-model FILE.gguf`: prompt processing (one forward pass over `prompt` tokens)
/// and generation (`tokens` greedy decode steps from a one-token context, end tokens ignored), as
/// llama-bench's pp/tg tests measure them. Median of `repeats` runs after one warm-up.
/// What `bench-model` measures.
pub struct ModelBench {
    pub prompt: usize,
    pub tokens: usize,
    pub repeats: usize,
    pub batches: Vec<usize>,
    pub device: spec::Device,
    /// Alternating decode runs with and without the meter's sampler (pairs).
    pub meter_overhead: Option<usize>,
    /// Candle's forward pass even where ours would run.
    pub candle: bool,
}

pub fn model(path: &Path, b: &ModelBench) -> Result<i32> {
    let (prompt, tokens, repeats, batches, device) =
        (b.prompt, b.tokens, b.repeats, &b.batches, b.device);
    use candle_core::{D, Tensor};
    use runtime::gguf::Gguf;
    use runtime::llama::{Decode, Kernels, KvCache, Llama};
    let dev = runtime::candle_device(device)?;
    let t = Instant::now();
    let mut g = Gguf::open(path)?;
    let kernels = if b.candle {
        Kernels::Candle
    } else {
        Kernels::Own
    };
    let model = Llama::load_with(&mut g, &dev, kernels)?;
    let load_s = t.elapsed().as_secs_f64();
    let vocab = model.cfg.vocab as u32;
    // A deterministic prompt of ordinary tokens.
    let ids: Vec<u32> = (0..prompt as u32)
        .map(|i| 1000 + (i * 7919) % (vocab.saturating_sub(2000).max(1)))
        .collect();
    // Both end by reading values back to the host, which waits for the device to finish.
    let run_pp = || -> Result<Duration> {
        let mut cache = KvCache::new(model.cfg.n_layer);
        let input = Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?;
        let t = Instant::now();
        model
            .forward_last(&input, &mut cache)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        Ok(t.elapsed())
    };
    let run_tg = |batch: usize| -> Result<Duration> {
        let mut cache = KvCache::new(model.cfg.n_layer);
        let mut next: Vec<u32> = (0..batch).map(|b| ids[b % ids.len().max(1)]).collect();
        let t = Instant::now();
        for _ in 0..tokens {
            let input = Tensor::new(next.as_slice(), &dev)?.unsqueeze(1)?;
            next = model
                .forward_last(&input, &mut cache)?
                .argmax(D::Minus1)?
                .to_vec1()?;
        }
        Ok(t.elapsed())
    };
    // Median, fastest and slowest of the runs after a warm-up.
    let median = |f: &dyn Fn() -> Result<Duration>| -> Result<[Duration; 3]> {
        f()?; // warm-up
        let mut xs: Vec<Duration> = (0..repeats.max(1)).map(|_| f()).collect::<Result<_>>()?;
        xs.sort();
        Ok([xs[xs.len() / 2], xs[0], xs[xs.len() - 1]])
    };
    println!(
        "model {} ({} layers, hidden {}, vocab {}) on {device}",
        path.display(),
        model.cfg.n_layer,
        model.cfg.hidden,
        model.cfg.vocab
    );
    println!(
        "  load {load_s:.2} s, weights resident {:.1} MiB",
        model.weight_bytes as f64 / 1048576.0
    );
    if dev.is_cpu() {
        println!("  threads {}", available_threads());
    }
    println!("  forward pass: {}", model.forward_pass());
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let [pp, fast, slow] = median(&run_pp)?;
    println!(
        "  pp{prompt}: {:>8.1} tok/s   (median of {repeats}; {:.1}–{:.1})",
        rate(prompt, pp),
        rate(prompt, slow),
        rate(prompt, fast)
    );
    for &b in batches {
        let n = b.max(1) * tokens;
        let [tg, fast, slow] = median(&|| run_tg(b.max(1)))?;
        println!(
            "  tg{tokens} batch {b}: {:>8.1} tok/s   ({:.2} ms/step, median of {repeats}; {:.1}–{:.1})",
            rate(n, tg),
            tg.as_secs_f64() * 1000.0 / tokens as f64,
            rate(n, slow),
            rate(n, fast)
        );
    }
    if !dev.is_cpu() && Decode::default_for(&dev) != Decode::PerOp {
        check_decode(&model, &ids, tokens.min(64))?;
    }
    if let Some(pairs) = b.meter_overhead {
        let batch = batches.first().copied().unwrap_or(1).max(1);
        meter_overhead(device, pairs.max(2), &|| run_tg(batch))?;
    }
    Ok(0)
}

/// Greedy decode steps of the device's decode mode (fixed buffers, CUDA graphs) beside op-by-op
/// steps, both fed the op-by-op pass's tokens: how often they pick the same next token, and how
/// far apart their logits are (float order differs; quantized activations can amplify it).
fn check_decode(model: &runtime::llama::Llama, ids: &[u32], steps: usize) -> Result<()> {
    use candle_core::{D, Tensor};
    use runtime::llama::{Decode, KvCache};
    let dev = &model.device;
    let n = model.cfg.n_layer;
    let (mut per_op, mut fixed) = (KvCache::new(n).with_decode(Decode::PerOp), KvCache::new(n));
    let prompt = Tensor::new(&ids[..ids.len().min(16)], dev)?.unsqueeze(0)?;
    let mut a = model.forward_last(&prompt, &mut per_op)?;
    let mut b = model.forward_last(&prompt, &mut fixed)?;
    let (mut agree, mut worst, mut scale, mut kl) = (0, 0f32, 0f32, 0f32);
    for _ in 0..steps {
        let next: Vec<u32> = a.argmax(D::Minus1)?.to_vec1()?;
        agree += usize::from(next == b.argmax(D::Minus1)?.to_vec1::<u32>()?);
        worst = worst.max((&a - &b)?.abs()?.max_all()?.to_scalar()?);
        scale = scale.max(a.abs()?.max_all()?.to_scalar()?);
        let (la, lb) = (
            candle_nn::ops::log_softmax(&a, D::Minus1)?,
            candle_nn::ops::log_softmax(&b, D::Minus1)?,
        );
        let row_kl = (la.exp()? * (&la - &lb)?)?.sum(D::Minus1)?;
        kl = kl.max(row_kl.max_all()?.to_scalar()?);
        let input = Tensor::new(next.as_slice(), dev)?.unsqueeze(1)?;
        a = model.forward_last(&input, &mut per_op)?;
        b = model.forward_last(&input, &mut fixed)?;
    }
    println!(
        "  decode check vs op by op ({steps} greedy steps): same next token {agree}/{steps}, \
         max |Δlogit| {worst:.4} (logits up to {scale:.1}), max KL {kl:.2e} nats"
    );
    Ok(())
}

/// The meter's cost on throughput: `pairs` decode runs with the meter open (its sampling thread
/// running, as in a measurement window) and `pairs` without, in ABBA order so that drift (clocks,
/// temperature) falls on both alike. Reports the mean of the per-pair time ratios and its 95 %
/// interval: the overhead is shown below 1 % only if the whole interval is.
fn meter_overhead(
    device: spec::Device,
    pairs: usize,
    run: &dyn Fn() -> Result<Duration>,
) -> Result<()> {
    let cores = available_threads();
    let interval = Duration::from_millis(20);
    let open = || {
        meter::open(
            "auto",
            device,
            meter::CpuPower::Declared(15.0),
            cores,
            meter::Scope::Process,
            interval,
        )
        .map_err(|e| anyhow::anyhow!("cannot open the meter: {e}"))
    };
    let meter_name = open()?.describe();
    run()?; // warm-up
    let mut ratios = vec![];
    for k in 0..pairs {
        let metered_first = k % 2 == 0;
        let timed = |metered: bool| -> Result<f64> {
            let meter = if metered { Some(open()?) } else { None };
            let t = run()?.as_secs_f64();
            drop(meter);
            Ok(t)
        };
        let (with, without) = if metered_first {
            let w = timed(true)?;
            (w, timed(false)?)
        } else {
            let wo = timed(false)?;
            (timed(true)?, wo)
        };
        ratios.push(with / without - 1.0);
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let sd =
        (ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (ratios.len() - 1) as f64).sqrt();
    let half = 1.96 * sd / (ratios.len() as f64).sqrt();
    println!(
        "  meter overhead ({meter_name}, {pairs} ABBA pairs): decode time {:+.2} % \
         (95 % interval {:+.2} … {:+.2} %; sd of a pair {:.2} %)",
        mean * 100.0,
        (mean - half) * 100.0,
        (mean + half) * 100.0,
        sd * 100.0
    );
    Ok(())
}

/// A local run without progress output.
fn quiet_local(threads: usize) -> engine::exec::RunSettings {
    engine::exec::RunSettings {
        executor: spec::Executor::Local,
        remote_cache: None,
        keep_going: false,
        threads,
        quiet: true,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_benchmark_pipeline_has_the_papers_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bench.eep");
        std::fs::write(&file, super::pipeline_text()).unwrap();
        let (p, _) =
            crate::stages::load(&file, &[]).unwrap_or_else(|(d, m)| panic!("{}", d.render(&m)));
        let count = |prefix: &str| p.nodes.iter().filter(|n| n.id.starts_with(prefix)).count();
        assert_eq!(p.nodes.len(), 72 * 5 + 13);
        for stage in [
            "finetune[",
            "quantize[",
            "cold_load[",
            "evaluate[",
            "measure[",
        ] {
            assert_eq!(count(stage), 72, "{stage}");
        }
    }
}
