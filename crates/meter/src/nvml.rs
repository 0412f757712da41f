//! NVIDIA GPU energy through NVML (loaded at run time: without the driver, opening fails with
//! "no NVML" and the stage reports energy as null with that reason).
//!
//! Primary source: the board's energy counter (`total_energy_consumption`, millijoules since the
//! driver loaded, Volta and later). A background thread also samples power every
//! `sample_interval` (default 20 ms) and integrates it (trapezoids): that gives the peak power of
//! each window, a second energy figure to compare the counter with, and the energy itself where
//! the counter is not supported (`Source::Sampled`). It reads the instantaneous power field
//! (`NVML_FI_DEV_POWER_INSTANT`) where the driver has it: `nvmlDeviceGetPowerUsage` is a one-second
//! moving average on Ampere and later, which lags every change of load by up to a second and so
//! under-reads short busy windows. The same thread records the peak of GPU memory in use.

use super::{GpuState, Meter, Source};
use anyhow::{Context, Result};
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Samples {
    joules: f64,
    last: Option<(Instant, f64)>,
    peak_w: f64,
    peak_memory: Option<u64>,
    count: u64,
    error: Option<String>,
    /// The samples are instantaneous power (else the driver's 1 s average).
    instant: bool,
}

/// `NVML_FI_DEV_POWER_INSTANT` (nvml.h): current power in mW, not averaged.
const POWER_INSTANT: u32 = 186;

/// Instantaneous power in mW, where the driver reports it.
fn instant_power(dev: &nvml_wrapper::Device) -> Option<u32> {
    use nvml_wrapper::enums::device::SampleValue;
    use nvml_wrapper::struct_wrappers::device::FieldValueSample;
    use nvml_wrapper::structs::device::FieldId;
    let mut v = dev.field_values_for(&[FieldId(POWER_INSTANT)]).ok()?;
    let FieldValueSample { value, .. } = v.pop()?.ok()?;
    match value.ok()? {
        SampleValue::U32(mw) => Some(mw),
        SampleValue::U64(mw) => u32::try_from(mw).ok(),
        _ => None,
    }
}

/// Power in mW: the instantaneous field where `instant` (the driver has it), else the 1 s average.
fn power_mw(dev: &nvml_wrapper::Device, instant: bool) -> Result<u32, String> {
    if instant {
        instant_power(dev).ok_or_else(|| "no instantaneous power reading".to_string())
    } else {
        dev.power_usage().map_err(|e| e.to_string())
    }
}

pub struct NvmlMeter {
    nvml: Arc<Nvml>,
    index: u32,
    name: String,
    /// Counter value (mJ) when opened; None: the counter is not supported, samples are used.
    counter_start: Option<u64>,
    interval: Duration,
    samples: Arc<Mutex<Samples>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// (free, total) bytes of GPU `index`'s memory now, if NVML can say.
pub fn memory(index: u32) -> Option<(u64, u64)> {
    let nvml = Nvml::init().ok()?;
    let m = nvml.device_by_index(index).ok()?.memory_info().ok()?;
    Some((m.free, m.total))
}

impl NvmlMeter {
    pub fn open(index: u32, interval: Duration) -> Result<NvmlMeter> {
        let nvml = Arc::new(Nvml::init().map_err(|e| {
            anyhow::anyhow!("no NVML (the NVIDIA driver's management library): {e}")
        })?);
        let (name, counter_start) = {
            let dev = nvml
                .device_by_index(index)
                .with_context(|| format!("NVML has no GPU {index}"))?;
            (
                dev.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                dev.total_energy_consumption().ok(),
            )
        };
        let samples = Arc::new(Mutex::new(Samples::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (nvml, samples, stop) = (nvml.clone(), samples.clone(), stop.clone());
            std::thread::Builder::new()
                .name("nvml-sampler".into())
                .spawn(move || sample_loop(&nvml, index, interval, &samples, &stop))?
        };
        Ok(NvmlMeter {
            nvml,
            index,
            name,
            counter_start,
            interval,
            samples,
            stop,
            thread: Some(thread),
        })
    }
}

fn sample_loop(
    nvml: &Nvml,
    index: u32,
    interval: Duration,
    samples: &Mutex<Samples>,
    stop: &AtomicBool,
) {
    let dev = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(e) => {
            samples.lock().unwrap().error = Some(e.to_string());
            return;
        }
    };
    let instant = instant_power(&dev).is_some_and(|mw| mw > 0);
    samples.lock().unwrap().instant = instant;
    while !stop.load(Ordering::Relaxed) {
        let reading = power_mw(&dev, instant);
        let now = Instant::now();
        let memory = dev.memory_info().ok().map(|m| m.used);
        {
            let mut s = samples.lock().unwrap();
            s.peak_memory = s.peak_memory.max(memory);
            match reading {
                Ok(mw) => {
                    let w = mw as f64 / 1000.0;
                    if let Some((t, lw)) = s.last {
                        s.joules += (w + lw) / 2.0 * now.duration_since(t).as_secs_f64();
                    }
                    s.last = Some((now, w));
                    s.peak_w = s.peak_w.max(w);
                    s.count += 1;
                }
                Err(e) => s.error = Some(e),
            }
        }
        std::thread::sleep(interval);
    }
}

impl Drop for NvmlMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Meter for NvmlMeter {
    fn source(&self) -> Source {
        if self.counter_start.is_some() {
            Source::Counter
        } else {
            Source::Sampled
        }
    }
    fn resolution_j(&self) -> f64 {
        if self.counter_start.is_some() {
            1e-3
        } else {
            // One sample interval at the peak power seen: the most one missed sample can hide.
            self.samples.lock().unwrap().peak_w * self.interval.as_secs_f64()
        }
    }
    fn describe(&self) -> String {
        let how = if self.counter_start.is_some() {
            "NVML energy counter"
        } else {
            "NVML power samples integrated (no energy counter on this GPU)"
        };
        let kind = if self.samples.lock().unwrap().instant {
            "instantaneous"
        } else {
            "1 s averaged"
        };
        format!(
            "{how}: GPU {} ({}), {kind} power sampled every {} ms",
            self.index,
            self.name,
            self.interval.as_millis()
        )
    }
    fn joules(&mut self) -> Result<f64> {
        match self.counter_start {
            Some(start) => {
                let dev = self.nvml.device_by_index(self.index)?;
                let now = dev.total_energy_consumption()?;
                Ok(now.saturating_sub(start) as f64 / 1000.0)
            }
            None => self.sampled_joules().context("no power samples"),
        }
    }
    fn joules_at_step(&mut self) -> Result<(f64, Instant)> {
        let Some(start) = self.counter_start else {
            return Ok((self.joules()?, Instant::now()));
        };
        let dev = self.nvml.device_by_index(self.index)?;
        let first = dev.total_energy_consumption()?;
        // The counter steps about every 100 ms; one that has not moved for half a second is read
        // as it is.
        let deadline = Instant::now() + Duration::from_millis(500);
        let (now, at) = loop {
            let v = dev.total_energy_consumption()?;
            let at = Instant::now();
            if v != first || at > deadline {
                break (v, at);
            }
            std::thread::sleep(Duration::from_micros(250));
        };
        Ok((now.saturating_sub(start) as f64 / 1000.0, at))
    }
    fn power_w(&mut self) -> Option<f64> {
        let dev = self.nvml.device_by_index(self.index).ok()?;
        let instant = self.samples.lock().unwrap().instant;
        power_mw(&dev, instant).ok().map(|mw| mw as f64 / 1000.0)
    }
    fn sampled_joules(&mut self) -> Option<f64> {
        let s = self.samples.lock().unwrap();
        // Up to now: the last sample's power held since it was taken.
        let (t, w) = s.last?;
        (s.count > 1 && s.error.is_none()).then(|| s.joules + w * t.elapsed().as_secs_f64())
    }
    fn take_peak_power_w(&mut self) -> Option<f64> {
        let mut s = self.samples.lock().unwrap();
        let peak = (s.count > 0).then_some(s.peak_w);
        s.peak_w = s.last.map_or(0.0, |l| l.1);
        s.peak_memory = None;
        peak
    }
    fn snapshot(&mut self) -> GpuState {
        let Ok(dev) = self.nvml.device_by_index(self.index) else {
            return GpuState::default();
        };
        let used = dev.memory_info().ok().map(|i| i.used);
        let me = std::process::id();
        GpuState {
            memory_used_bytes: used,
            // The sampler's peak since the window opened (take_peak_power_w), at least what is
            // in use now.
            memory_peak_bytes: self.samples.lock().unwrap().peak_memory.max(used),
            sm_clock_mhz: dev.clock_info(Clock::SM).ok(),
            mem_clock_mhz: dev.clock_info(Clock::Memory).ok(),
            temperature_c: dev.temperature(TemperatureSensor::Gpu).ok(),
            power_limit_w: dev.enforced_power_limit().ok().map(|mw| mw as f64 / 1000.0),
            other_processes: dev
                .running_compute_processes()
                .ok()
                .map(|ps| ps.iter().filter(|p| p.pid != me).count()),
        }
    }
}
