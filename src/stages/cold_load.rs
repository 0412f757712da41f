//! `cold_load`: the file evicted from the page cache, then load + one forward pass inside the
//! window; RSS growth and peak; on a GPU each load in a fresh child process (`load_probe.rs`).

use super::cells::{Device, Energy};
use super::measuring::{cv, median, median_count, summary_energy, summary_samples};
use super::{Column, Role, Stage, StageCtx, StageOutput};
use anyhow::Result;
use engine::row::TableRow;
use meter::{memory, pagecache};
use serde_json::json;
use spec::{Output, ParamSpec, Ty, Value};
use std::path::Path;

/// `cold_load`'s parameters as `run` reads them (defaults: [`ColdLoad::params`]).
#[derive(Debug, serde::Deserialize)]
struct Params {
    repeats: usize,
    cache_state: String,
    isolation: String,
}

pub struct ColdLoad;

engine::table_row! {
    /// One load (`row = "repeat"`), or the summary of a stage's loads (`cold_load.parquet`).
    pub struct ColdLoadRow {
        /// repeat | summary
        row: String,
        /// repetition (null in the summary)
        repeat: Option<usize>,
        /// cold | warm (as requested)
        cache_state: String,
        /// fraction of the file in the page cache when the load started (cold: after eviction)
        page_cache_before: Option<f64>,
        /// set when eviction did not empty the page cache, with the reason
        eviction_note: Option<String>,
        /// load + first forward pass (s); summary: median
        seconds: Option<f64>,
        /// coefficient of variation
        seconds_cv: Option<f64>,
        /// size of the model file (B)
        file_bytes: u64,
        /// bytes the loaded weights occupy as held in memory (B)
        weight_bytes: u64,
        /// measured: process RSS after the load minus before (B)
        resident_bytes: Option<i64>,
        /// measured: peak RSS during the load minus RSS before (B)
        peak_bytes: Option<u64>,
        /// measured on a GPU: device memory in use after the load minus before (NVML, B). With
        /// isolation = process the load is a fresh process's first (its CUDA context opened
        /// before); in this process, candle's allocator reuses freed memory, so loads after the
        /// first show little growth and the summary is the largest
        gpu_resident_bytes: Option<i64>,
        /// process (each load in a fresh child process) | none (in this process)
        isolation: String,
        /// random weights
        synthetic: bool,
        /// coefficient of variation
        energy_j_cv: Option<f64>,
        /// coefficient of variation
        energy_net_j_cv: Option<f64>,
        groups {
            energy: Energy,
            device: Device,
        }
    }
}
impl Stage for ColdLoad {
    engine::stage_meta!(
        super::kind::COLD_LOAD,
        6,
        Role::Stage,
        Output::Record,
        "time and energy from nothing in memory to the first token"
    );
    super::estimates_presented!();
    fn params(&self) -> Vec<ParamSpec> {
        let p = vec![
            ParamSpec::required("model", Ty::Ref(Output::Model), "model to load"),
            ParamSpec::default("repeats", Ty::int(1, 1000), Value::Int(3), "repetitions"),
            ParamSpec::default(
                "cache_state",
                Ty::Enum(&["cold", "warm"]),
                Value::Symbol("cold".into()),
                "cold: the model file is evicted from the page cache before each load",
            ),
            ParamSpec::default(
                "isolation",
                Ty::Enum(&["auto", "process", "none"]),
                Value::Symbol("auto".into()),
                "process: each load in a fresh child process (a device allocator keeps what an \
                 earlier load freed, so only a fresh process measures a GPU model's memory); \
                 none: in this process; auto: process on a GPU, none on the CPU",
            ),
        ];
        super::metered_on_a_device(p)
    }
    super::holds_the_machine!();
    fn table(&self) -> Vec<Column> {
        ColdLoadRow::columns()
    }
    fn explain_failure(&self, e: anyhow::Error, ctx: &StageCtx) -> anyhow::Error {
        super::explain_model_failure(e, ctx)
    }

    fn run(&self, ctx: &StageCtx) -> Result<StageOutput> {
        let path = super::model_gguf(ctx, "model")?;
        let p: Params = ctx.typed()?;
        let cold = p.cache_state == "cold";
        let repeats = p.repeats;
        let mut meter = super::open_meter(ctx, meter::Scope::Process);
        let file_bytes = std::fs::metadata(&path)?.len();
        ctx.progress.set_length(repeats as u64);
        let isolated = match p.isolation.as_str() {
            "process" => true,
            "none" => false,
            _ => ctx.device != spec::Device::Cpu,
        };
        // Isolated loads open the device in their child; this process needs it only otherwise.
        let dev = match isolated {
            true => None,
            false => Some(runtime::candle_device(ctx.device)?),
        };
        let mut rows = vec![];
        for r in 0..repeats {
            ctx.check_cancelled()?;
            let (fraction, note) = prepare_page_cache(&path, cold);
            let (load, mut energy) = if isolated {
                let mut probe = super::load_probe::Probe::spawn(&path, ctx.device)?;
                let (loaded, energy) = meter.window(|| probe.load())?;
                (Load::child(&probe.ready, &loaded), energy)
            } else {
                memory::release_free_memory();
                let rss0 = memory::rss_bytes()?;
                let peak_reset = memory::reset_peak();
                let dev = dev.as_ref().expect("opened for in-process loads");
                let (model, energy) = meter.window(|| {
                    let (model, tok) = runtime::load_model_on(&path, dev)?;
                    runtime::generate::first_token(&model, tok.as_ref())?;
                    Ok(model)
                })?;
                // Read with the model still held.
                let load = Load::here(model.weight_bytes, rss0, peak_reset)?;
                drop(model);
                (load, energy)
            };
            if isolated && meter.source() == Some(meter::Source::Estimated) {
                energy = meter::WindowEnergy {
                    device: energy.device,
                    host: energy.host,
                    gpu_memory_used_before_bytes: energy.gpu_memory_used_before_bytes,
                    ..meter::WindowEnergy::unmeasured(
                        energy.seconds,
                        "the estimate counts this process's CPU time, but the load ran in a \
                         child process (isolation = process): use isolation = none on the CPU",
                    )
                };
            }
            let device = Device::of(&energy);
            rows.push(ColdLoadRow {
                row: "repeat".into(),
                repeat: Some(r),
                cache_state: p.cache_state.clone(),
                page_cache_before: fraction,
                eviction_note: note,
                seconds: Some(energy.seconds),
                file_bytes,
                weight_bytes: load.weight_bytes,
                resident_bytes: Some(load.resident_bytes),
                peak_bytes: load.peak_bytes,
                gpu_resident_bytes: device
                    .gpu_memory_used_bytes
                    .zip(device.gpu_memory_used_before_bytes)
                    .map(|(a, b)| a as i64 - b as i64),
                isolation: if isolated { "process" } else { "none" }.into(),
                synthetic: super::is_synthetic(ctx, "model"),
                energy: Energy::of(&energy, &meter),
                device,
                ..Default::default()
            });
            ctx.progress.set_position(r as u64 + 1);
        }
        let first = &rows[0];
        let summary = ColdLoadRow {
            row: "summary".into(),
            repeat: None,
            cache_state: first.cache_state.clone(),
            page_cache_before: median(&rows, |r| r.page_cache_before),
            eviction_note: None,
            seconds: median(&rows, |r| r.seconds),
            seconds_cv: cv(&rows, |r| r.seconds),
            file_bytes,
            weight_bytes: first.weight_bytes,
            resident_bytes: median_count(&rows, |r| r.resident_bytes),
            peak_bytes: median_count(&rows, |r| r.peak_bytes),
            // candle's CUDA allocator keeps freed device memory for reuse, so only the first
            // load of the stage grows the device's used memory: the summary takes the largest.
            gpu_resident_bytes: rows.iter().filter_map(|r| r.gpu_resident_bytes).max(),
            isolation: first.isolation.clone(),
            synthetic: first.synthetic,
            energy_j_cv: cv(&rows, |r| r.energy.energy_j),
            energy_net_j_cv: cv(&rows, |r| r.energy.energy_net_j),
            energy: summary_energy(&rows, |r| &r.energy, &meter),
            device: summary_samples(&rows, |r| &r.device),
        };
        rows.push(summary);
        let rows = rows.iter().map(TableRow::to_row).collect();
        Ok(StageOutput {
            files: vec![],
            record: json!({ "measured": "cold_load" }),
            rows,
        })
    }
}

/// Host memory of one load: the weights as held, RSS growth and peak over the RSS before.
struct Load {
    weight_bytes: u64,
    /// Signed: a process that shrank during the load is a measurement too, not a 0.
    resident_bytes: i64,
    /// None where the peak mark could not be reset (it would be the process's lifetime peak).
    peak_bytes: Option<u64>,
}

impl Load {
    /// A load in this process: `rss0` before it, the peak mark reset then (or not).
    fn here(weight_bytes: u64, rss0: u64, peak_reset: bool) -> Result<Load> {
        let rss1 = memory::rss_bytes()?;
        let peak = memory::peak_rss_bytes()?;
        Ok(Load {
            weight_bytes,
            resident_bytes: rss1 as i64 - rss0 as i64,
            peak_bytes: peak_reset.then(|| peak.saturating_sub(rss0)),
        })
    }

    /// A load in a child process, from what it reported before and after.
    fn child(ready: &super::load_probe::Ready, l: &super::load_probe::Loaded) -> Load {
        Load {
            weight_bytes: l.weight_bytes,
            resident_bytes: l.rss_bytes as i64 - ready.rss_bytes as i64,
            peak_bytes: l.peak_rss_bytes.map(|p| p.saturating_sub(ready.rss_bytes)),
        }
    }
}

/// Evicts (cold) or warms (warm) the file's pages; returns the resident fraction and a note when
/// the requested state could not be reached.
fn prepare_page_cache(path: &Path, cold: bool) -> (Option<f64>, Option<String>) {
    if cold {
        if let Err(e) = pagecache::evict(path) {
            return (None, Some(format!("eviction impossible: {e:#}")));
        }
    } else if let Err(e) = std::fs::read(path) {
        return (None, Some(format!("cannot pre-read the file: {e}")));
    }
    match pagecache::resident_fraction(path) {
        Ok(f) if cold && f > 0.01 => (
            Some(f),
            Some(format!(
                "{:.0} % of the file stayed in the page cache after eviction (filesystem keeps it)",
                f * 100.0
            )),
        ),
        Ok(f) => (Some(f), None),
        Err(e) => (None, Some(format!("page cache state unknown: {e:#}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_parameters_fit_the_declared_ones_and_their_defaults() {
        let params = engine::stage::default_params(&ColdLoad.params());
        let p: Params = engine::stage::typed_params(&params).unwrap();
        assert_eq!(
            (p.repeats, p.cache_state.as_str(), p.isolation.as_str()),
            (3, "cold", "auto")
        );
    }
}
