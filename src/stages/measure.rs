//! `measure`: load and warm-up outside the windows, then one window per batch size ×
//! repetition that serves at least `requests` and lasts at least `min_window`; latency
//! percentiles, energy per request and per token.

use super::cells::{Device, Energy};
use super::measuring::{cv, median, median_count, summary_energy, summary_samples};
use super::{Column, Role, Stage, StageCtx, StageOutput};
use anyhow::{Result, bail};
use engine::row::TableRow;
use meter::{WindowEnergy, memory};
use metrics::stats;
use runtime::generate::{GenOptions, Generation, generate_batch, generate_batch_ids};
use serde_json::json;
use spec::{Dim, Output, ParamSpec, Ty, Value};

/// `measure`'s parameters as `run` reads them (defaults: [`Measure::params`]).
#[derive(Debug, serde::Deserialize)]
struct Params {
    batch: Vec<usize>,
    repeats: usize,
    requests: usize,
    /// Seconds.
    min_window: f64,
    warmup: usize,
    max_tokens: Option<usize>,
    fixed_length: bool,
}

pub struct Measure;

engine::table_row! {
    /// One window (`row = "repeat"`), or the summary of a batch size's windows
    /// (`measure.parquet`).
    pub struct MeasureRow {
        /// repeat | summary (per batch size)
        row: String,
        /// repetition (null in summaries)
        repeat: Option<usize>,
        /// requests per forward pass
        batch: usize,
        /// requests served in the window (at least `requests`; more to fill `min_window`)
        requests: usize,
        /// requests served at this batch size before its windows
        warmup_requests: usize,
        /// the warm-up ended with two batches agreeing on tokens/s within 5 % (false: it
        /// stopped at its limit of 10 batches, or `warmup = 0`)
        warmup_stable: bool,
        /// end tokens ignored
        fixed_length: bool,
        /// what was sent: the task's prompts, or random ids for a model without tokenizer
        prompts: String,
        /// generation budget per request
        max_tokens: usize,
        /// prompt tokens in the window
        prompt_tokens: Option<usize>,
        /// generated tokens (the model's own tokenizer)
        output_tokens: Option<usize>,
        /// window length (s)
        seconds: Option<f64>,
        /// generated tokens / window seconds; summary: median
        tokens_per_s: Option<f64>,
        /// coefficient of variation over repetitions
        tokens_per_s_cv: Option<f64>,
        /// prompt tokens / time to the first token of each batch
        prompt_tokens_per_s: Option<f64>,
        /// time to first token, mean (ms)
        ttft_ms_mean: Option<f64>,
        /// time to first token, p50 (ms)
        ttft_ms_p50: Option<f64>,
        /// time to first token, p90 (ms)
        ttft_ms_p90: Option<f64>,
        /// time to first token, p99 (ms)
        ttft_ms_p99: Option<f64>,
        /// inter-token latency, mean (ms)
        itl_ms_mean: Option<f64>,
        /// inter-token latency, p50 (ms)
        itl_ms_p50: Option<f64>,
        /// inter-token latency, p90 (ms)
        itl_ms_p90: Option<f64>,
        /// inter-token latency, p99 (ms)
        itl_ms_p99: Option<f64>,
        /// gross energy / requests (J)
        energy_per_request_j: Option<f64>,
        /// coefficient of variation over repetitions
        energy_per_request_j_cv: Option<f64>,
        /// net energy / requests (J)
        energy_per_request_net_j: Option<f64>,
        /// gross energy / generated tokens (J)
        energy_per_token_j: Option<f64>,
        /// gross energy / window seconds (W)
        avg_power_w: Option<f64>,
        /// peak process RSS in the window (B)
        peak_rss_bytes: Option<u64>,
        /// random weights
        synthetic: bool,
        /// which forward pass served the requests (CPU kernels; on a GPU, how decode steps
        /// ran: op by op, fixed buffers, CUDA graphs)
        forward_pass: String,
        internal {
            /// Summaries: each repetition's energy per request, for the join's intervals on
            /// IPW (`report/join.rs`).
            energy_per_request_j_reps: Vec<Option<f64>>,
        }
        groups {
            energy: Energy,
            device: Device,
        }
    }
}
impl Stage for Measure {
    engine::stage_meta!(
        super::kind::MEASURE,
        7,
        Role::Stage,
        Output::Record,
        "throughput, latency, energy and memory of serving a task"
    );
    super::estimates_presented!();
    fn params(&self) -> Vec<ParamSpec> {
        let p = vec![
            ParamSpec::required("model", Ty::Ref(Output::Model), "model to measure"),
            ParamSpec::required(
                "task",
                Ty::Ref(Output::Task),
                "task whose prompts are served",
            ),
            ParamSpec::default(
                "batch",
                Ty::OneOrList(Box::new(Ty::int(1, 4096))),
                Value::List(vec![Value::Int(1)]),
                "batch sizes (concurrent requests per forward pass), swept",
            ),
            ParamSpec::default(
                "repeats",
                Ty::int(1, 1000),
                Value::Int(5),
                "repetitions per batch size",
            ),
            ParamSpec::default(
                "requests",
                Ty::int(1, 1_000_000),
                Value::Int(8),
                "requests per repetition at least (the task's prompts in order, cycled)",
            ),
            ParamSpec::default(
                "min_window",
                Ty::Quantity(Dim::Time),
                Value::Quantity {
                    value: 2.0,
                    dim: Dim::Time,
                },
                "windows last about this long at least: more requests than `requests` (whole \
                 batches, prompts still cycled) when the warm-up's timing says they are needed, \
                 the same number in every repetition of a batch size; energy meters step (NVML \
                 every 100 ms), so short windows are coarse; 0 s serves exactly `requests`",
            ),
            ParamSpec::default(
                "warmup",
                Ty::int(0, 1_000_000),
                Value::Int(2),
                "warm-up before each batch size's windows, outside them: at least this many \
                 requests (whole batches), then batches until two in a row agree on tokens/s \
                 within 5 % (at most 10 batches); 0: none, and windows serve exactly `requests` \
                 (nothing timed to size them by `min_window`)",
            ),
            ParamSpec::optional(
                "max_tokens",
                Ty::int(1, 65536),
                "generation budget (default: the task's)",
            ),
            ParamSpec::default(
                "fixed_length",
                Ty::Bool,
                Value::Bool(false),
                "generate exactly max_tokens per request, ignoring end tokens (equal work)",
            ),
        ];
        super::metered_on_a_device(p)
    }
    super::holds_the_machine!();
    fn internal_row_keys(&self) -> &'static [&'static str] {
        MeasureRow::INTERNAL
    }
    fn table(&self) -> Vec<Column> {
        MeasureRow::columns()
    }
    fn explain_failure(&self, e: anyhow::Error, ctx: &StageCtx) -> anyhow::Error {
        super::explain_model_failure(e, ctx)
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput> {
        let dev = runtime::candle_device(ctx.device)?;
        let path = super::model_gguf(ctx, "model")?;
        let task = super::task_info(ctx, "task")?;
        let samples = task.load(&task.eval)?;
        let p: Params = ctx.typed()?;
        let mut batches = p.batch.clone();
        if batches.is_empty() {
            batches.push(1);
        }
        let (repeats, requests, warmup, fixed) = (p.repeats, p.requests, p.warmup, p.fixed_length);
        let max_tokens = p.max_tokens.unwrap_or(task.max_tokens);
        let synthetic = super::is_synthetic(ctx, "model");

        // Loading and warm-up happen before any window opens.
        let (model, tok) = runtime::load_model_on(&path, &dev)?;
        let mut prompts = vec![];
        let mut ids_of = super::SyntheticIds::new(model.cfg.vocab);
        for s in &samples {
            let ids = match &tok {
                Some(tok) => task.prompt_ids(tok, &s.messages)?,
                // No tokenizer (synthetic weights): random ids of the prompt's size, so the work
                // per request is of the task's size.
                None => ids_of.take(s.messages.iter().map(|m| m.content.len()).sum()),
            };
            if ids.len() + max_tokens > model.cfg.context {
                bail!(
                    "sample `{}` needs {} prompt + {max_tokens} generated tokens, more than the \
                     model's context of {}; lower max_tokens or shorten the record",
                    s.id,
                    ids.len(),
                    model.cfg.context
                );
            }
            prompts.push(ids);
        }
        let opts = GenOptions {
            max_tokens,
            ignore_eos: fixed,
            ..Default::default()
        };
        let min_window = p.min_window;
        // Serves `n` requests from prompt `start` on (cycled), `batch` at a time: the generations
        // and each batch's prefill time (its earliest first token).
        let serve = |start: usize, n: usize, batch: usize| -> Result<(Vec<Generation>, Vec<f64>)> {
            let mut out = vec![];
            let mut prefills = vec![];
            let ids: Vec<Vec<u32>> = (start..start + n)
                .map(|i| prompts[i % prompts.len()].clone())
                .collect();
            for chunk in ids.chunks(batch) {
                ctx.check_cancelled()?;
                let gens = match &tok {
                    Some(tok) => generate_batch(&model, tok, chunk, &opts)?,
                    None => generate_batch_ids(&model, chunk, &opts)?,
                };
                if let Some(t) = gens.iter().filter_map(|g| g.time_to_first_token()).min() {
                    prefills.push(t.as_secs_f64());
                }
                out.extend(gens);
            }
            Ok((out, prefills))
        };
        let mut meter = super::open_meter(ctx, meter::Scope::Process);
        ctx.progress.set_length((batches.len() * repeats) as u64);
        let mut rows = vec![];
        let mut done = 0;
        for &batch in &batches {
            ctx.progress.message(&format!("batch {batch}, warming up"));
            let warm = warm_up(batch, warmup, |n| {
                let t = std::time::Instant::now();
                let (gens, _) = serve(0, n, batch)?;
                let tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
                Ok((tokens, t.elapsed().as_secs_f64()))
            })?;
            // Every repetition of this batch size serves the same requests (equal work); enough of
            // them for the window to last about `min_window`, as timed in the warm-up.
            let n = window_requests(requests, batch, min_window, warm.batch_seconds);
            let mut reps = vec![];
            for r in 0..repeats {
                ctx.progress
                    .message(&format!("batch {batch}, repetition {}", r + 1));
                memory::reset_peak();
                let ((gens, prefills), energy) = meter.window(|| serve(warmup, n, batch))?;
                let mut row = MeasureRow {
                    row: "repeat".into(),
                    repeat: Some(r),
                    batch,
                    warmup_requests: warm.requests,
                    warmup_stable: warm.stable,
                    peak_rss_bytes: memory::peak_rss_bytes().ok(),
                    fixed_length: fixed,
                    prompts: if tok.is_some() {
                        "task prompts, chat template"
                    } else {
                        "random ids of the prompts' length ≈ characters / 4 (no tokenizer)"
                    }
                    .into(),
                    max_tokens,
                    synthetic,
                    forward_pass: model.forward_pass().into(),
                    energy: Energy::of(&energy, &meter),
                    device: Device::of(&energy),
                    ..Default::default()
                };
                request_stats(&gens, &prefills, &energy, &mut row);
                reps.push(row);
                done += 1;
                ctx.progress.set_position(done);
            }
            let summary = summary_row(&reps, &meter);
            rows.extend(reps);
            rows.push(summary);
        }
        Ok(StageOutput {
            files: vec![],
            record: json!({ "measured": "measure" }),
            rows: rows.iter().map(TableRow::to_row).collect(),
        })
    }
}

/// The warm-up before a batch size's windows.
#[derive(Debug, PartialEq)]
struct WarmUp {
    requests: usize,
    /// Two consecutive batches agreed on tokens/s within [`STABLE`].
    stable: bool,
    /// Seconds of the last batch served (None: none was).
    batch_seconds: Option<f64>,
}

/// Relative difference of tokens/s between two warm-up batches taken as stable.
const STABLE: f64 = 0.05;
const MAX_WARMUP_BATCHES: usize = 10;

/// Serves whole batches (`serve(batch)` → generated tokens, seconds) until at least `warmup`
/// requests are done and two batches in a row agree on tokens/s within [`STABLE`], or
/// [`MAX_WARMUP_BATCHES`] were served. `warmup = 0` serves nothing.
fn warm_up(
    batch: usize,
    warmup: usize,
    mut serve: impl FnMut(usize) -> Result<(usize, f64)>,
) -> Result<WarmUp> {
    let mut w = WarmUp {
        requests: 0,
        stable: false,
        batch_seconds: None,
    };
    if warmup == 0 {
        return Ok(w);
    }
    let mut last_rate: Option<f64> = None;
    for _ in 0..MAX_WARMUP_BATCHES {
        let (tokens, seconds) = serve(batch)?;
        w.requests += batch;
        w.batch_seconds = Some(seconds);
        let rate = tokens as f64 / seconds.max(1e-9);
        let agrees = last_rate.is_some_and(|l| (rate / l - 1.0).abs() <= STABLE);
        if agrees && w.requests >= warmup {
            w.stable = true;
            break;
        }
        last_rate = Some(rate);
    }
    Ok(w)
}

/// Requests per window: `requests`, or more — whole batches — so that at the warm-up's
/// `batch_seconds` per batch the window lasts `min_window` (with a 10 % margin).
fn window_requests(
    requests: usize,
    batch: usize,
    min_window: f64,
    batch_seconds: Option<f64>,
) -> usize {
    match batch_seconds.filter(|&s| s > 0.0 && min_window > 0.0) {
        Some(s) => requests.max((min_window * 1.1 / s).ceil() as usize * batch),
        None => requests,
    }
}

/// Latency, throughput and energy-per-unit cells of one repetition.
fn request_stats(
    gens: &[Generation],
    prefills: &[f64],
    energy: &WindowEnergy,
    row: &mut MeasureRow,
) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let ttft: Vec<f64> = gens
        .iter()
        .filter_map(|g| g.time_to_first_token().map(ms))
        .collect();
    let itl: Vec<f64> = gens
        .iter()
        .flat_map(|g| g.token_times.windows(2).map(|w| ms(w[1] - w[0])))
        .collect();
    let output: usize = gens.iter().map(|g| g.tokens.len()).sum();
    let prompt: usize = gens.iter().map(|g| g.prompt_tokens).sum();
    let prefill: f64 = prefills.iter().sum();
    let n = gens.len();
    let pct = |xs: &[f64], p: f64| stats::percentile(xs, p);
    let per = |e: Option<f64>, d: usize| e.filter(|_| d > 0).map(|e| e / d as f64);
    *row = MeasureRow {
        requests: n,
        prompt_tokens: Some(prompt),
        output_tokens: Some(output),
        seconds: Some(energy.seconds),
        tokens_per_s: Some(output as f64 / energy.seconds),
        prompt_tokens_per_s: (prefill > 0.0).then(|| prompt as f64 / prefill),
        ttft_ms_mean: stats::mean(&ttft),
        ttft_ms_p50: pct(&ttft, 50.0),
        ttft_ms_p90: pct(&ttft, 90.0),
        ttft_ms_p99: pct(&ttft, 99.0),
        itl_ms_mean: stats::mean(&itl),
        itl_ms_p50: pct(&itl, 50.0),
        itl_ms_p90: pct(&itl, 90.0),
        itl_ms_p99: pct(&itl, 99.0),
        energy_per_request_j: per(energy.gross_j, n),
        energy_per_request_net_j: per(energy.net_j, n),
        energy_per_token_j: per(energy.gross_j, output),
        avg_power_w: energy.gross_j.map(|e| e / energy.seconds),
        ..std::mem::take(row)
    };
}

/// A batch size's summary: medians of its repetitions (and the spread of tokens/s and energy
/// per request), what they shared, and each repetition's energy per request.
fn summary_row(reps: &[MeasureRow], meter: &meter::Metered) -> MeasureRow {
    let first = &reps[0];
    let m = |cell: fn(&MeasureRow) -> Option<f64>| median(reps, cell);
    MeasureRow {
        row: "summary".into(),
        repeat: None,
        prompts: first.prompts.clone(),
        forward_pass: first.forward_pass.clone(),
        seconds: m(|r| r.seconds),
        tokens_per_s: m(|r| r.tokens_per_s),
        tokens_per_s_cv: cv(reps, |r| r.tokens_per_s),
        prompt_tokens_per_s: m(|r| r.prompt_tokens_per_s),
        output_tokens: median_count(reps, |r| r.output_tokens),
        prompt_tokens: median_count(reps, |r| r.prompt_tokens),
        ttft_ms_mean: m(|r| r.ttft_ms_mean),
        ttft_ms_p50: m(|r| r.ttft_ms_p50),
        ttft_ms_p90: m(|r| r.ttft_ms_p90),
        ttft_ms_p99: m(|r| r.ttft_ms_p99),
        itl_ms_mean: m(|r| r.itl_ms_mean),
        itl_ms_p50: m(|r| r.itl_ms_p50),
        itl_ms_p90: m(|r| r.itl_ms_p90),
        itl_ms_p99: m(|r| r.itl_ms_p99),
        energy_per_request_j: m(|r| r.energy_per_request_j),
        energy_per_request_j_cv: cv(reps, |r| r.energy_per_request_j),
        energy_per_request_net_j: m(|r| r.energy_per_request_net_j),
        energy_per_token_j: m(|r| r.energy_per_token_j),
        avg_power_w: m(|r| r.avg_power_w),
        peak_rss_bytes: median_count(reps, |r| r.peak_rss_bytes),
        energy: summary_energy(reps, |r| &r.energy, meter),
        device: Device {
            gpu_memory_used_bytes: median_count(reps, |r| r.device.gpu_memory_used_bytes),
            gpu_other_processes: median_count(reps, |r| r.device.gpu_other_processes),
            ..summary_samples(reps, |r| &r.device)
        },
        energy_per_request_j_reps: reps.iter().map(|r| r.energy_per_request_j).collect(),
        // What every repetition of the batch size shares.
        ..first.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_parameters_fit_the_declared_ones_and_their_defaults() {
        let params = engine::stage::default_params(&Measure.params());
        let p: Params = engine::stage::typed_params(&params).unwrap();
        assert_eq!(
            (p.batch.as_slice(), p.repeats, p.requests, p.warmup),
            (&[1][..], 5, 8, 2)
        );
        assert_eq!(
            (p.min_window, p.max_tokens, p.fixed_length),
            (2.0, None, false)
        );
    }

    /// A scripted server: the i-th batch takes `secs[i]` seconds (cycled) for 64 tokens per
    /// request.
    fn server(secs: &[f64]) -> impl FnMut(usize) -> Result<(usize, f64)> + '_ {
        let mut i = 0;
        move |batch| {
            i += 1;
            Ok((64 * batch, secs[(i - 1) % secs.len()]))
        }
    }

    #[test]
    fn warm_up_runs_until_two_batches_agree() {
        // 1.0 s, 0.6 s (40 % faster), 0.5 s (20 %), 0.49 s (2 %): stable at the fourth batch.
        let w = warm_up(8, 2, server(&[1.0, 0.6, 0.5, 0.49, 0.49])).unwrap();
        assert_eq!(
            w,
            WarmUp {
                requests: 32,
                stable: true,
                batch_seconds: Some(0.49)
            }
        );
        // At least `warmup` requests even when the first two batches already agree.
        let w = warm_up(1, 5, server(&[0.5])).unwrap();
        assert_eq!((w.requests, w.stable), (5, true));
        // Never stable: stops at its limit and says so.
        let w = warm_up(1, 1, server(&[1.0, 2.0])).unwrap();
        assert_eq!((w.requests, w.stable), (MAX_WARMUP_BATCHES, false));
        // `warmup = 0`: nothing served, nothing timed.
        let w = warm_up(4, 0, |_| -> Result<(usize, f64)> { panic!("served") }).unwrap();
        assert_eq!(w.batch_seconds, None);
    }

    #[test]
    fn windows_are_sized_in_whole_batches_to_last_min_window() {
        // 0.3 s per batch of 8: 2 s × 1.1 / 0.3 = 7.3 → 8 batches, 64 requests.
        assert_eq!(window_requests(16, 8, 2.0, Some(0.3)), 64);
        // Already long enough: `requests` as asked.
        assert_eq!(window_requests(16, 8, 2.0, Some(1.0)), 24);
        assert_eq!(window_requests(40, 8, 2.0, Some(1.0)), 40);
        // No window minimum, or nothing timed: exactly `requests`.
        assert_eq!(window_requests(16, 8, 0.0, Some(0.3)), 16);
        assert_eq!(window_requests(16, 8, 2.0, None), 16);
    }
}
