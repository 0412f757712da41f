//! Energy meters and measurement windows.
//!
//! A [`Meter`] reports cumulative joules since it was opened (monotone: counter wrap-around is
//! handled inside the meter). [`Metered::window`] wraps the work being measured: an idle baseline
//! before and after, a reading at the window's edges, and the gross and idle-subtracted (net)
//! energy. Anything the work does before or after the closure (loading, warm-up) is outside the
//! window by construction.
//!
//! Implementations: RAPL (`/sys/class/powercap`, package + DRAM, wrap-safe) and an estimate
//! (declared watts × the process's CPU time). A GPU counter (NVML) plugs in behind the same trait.
//! When no meter can be had, every energy figure is null with the reason, never 0.

pub mod host;
pub use host::HostShare;
pub mod hw;
pub mod memory;
pub mod nvml;
pub mod pagecache;
mod rapl;

use anyhow::Result;
use std::time::{Duration, Instant};

pub use nvml::NvmlMeter;
pub use rapl::Rapl;

/// How an energy figure was obtained; every energy column is accompanied by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A hardware energy counter (NVML `total_energy_consumption`).
    Counter,
    /// Integrated timestamped power samples.
    Sampled,
    /// CPU package/DRAM energy counters (RAPL).
    Rapl,
    /// Declared watts × measured busy time: an estimate, not a measurement.
    Estimated,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Counter => "counter",
            Source::Sampled => "sampled",
            Source::Rapl => "rapl",
            Source::Estimated => "estimated",
        }
    }
}

/// A source of cumulative energy readings.
pub trait Meter: Send {
    fn source(&self) -> Source;
    /// Smallest energy step the meter can tell apart, in joules.
    fn resolution_j(&self) -> f64;
    /// One line saying what is measured and how (goes into every row).
    fn describe(&self) -> String;
    /// Joules since the meter was opened (monotone).
    fn joules(&mut self) -> Result<f64>;
    /// A reading that belongs to the instant returned with it. A meter that updates in steps
    /// (NVML's counter: about every 100 ms, so a plain read can be up to a step stale at either
    /// edge of a window) waits for its next step; the default is a plain read, now.
    fn joules_at_step(&mut self) -> Result<(f64, Instant)> {
        Ok((self.joules()?, Instant::now()))
    }
    /// Power now, in watts, where the meter can read it (used for the short stretch between the
    /// end of the work and the meter's next step, which [`Metered::window`] subtracts).
    fn power_w(&mut self) -> Option<f64> {
        None
    }
    /// Joules integrated from timestamped power samples, where the meter samples (a second
    /// figure beside a counter, to compare with).
    fn sampled_joules(&mut self) -> Option<f64> {
        None
    }
    /// The highest sampled power since the last call (then restarts; so does the memory peak
    /// a GPU meter reports as `memory_peak_bytes` in [`Meter::snapshot`]).
    fn take_peak_power_w(&mut self) -> Option<f64> {
        None
    }
    /// Device state worth recording with each window; all empty for CPU meters.
    fn snapshot(&mut self) -> GpuState {
        GpuState::default()
    }
}

/// A GPU's state at one instant (NVML), each reading None where it could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuState {
    pub memory_used_bytes: Option<u64>,
    /// The highest memory in use the sampler saw since the window opened (at least `used`).
    pub memory_peak_bytes: Option<u64>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_limit_w: Option<f64>,
    /// Compute processes on the GPU other than this one.
    pub other_processes: Option<usize>,
}

/// Whose CPU time an estimate counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every thread of the process: right for measuring stages, which run alone.
    Process,
    /// The calling thread only: for single-threaded work that shares the process with others.
    Thread,
}

/// What an estimate multiplies the CPU time by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CpuPower {
    /// The declared power of the whole CPU (W).
    Declared(f64),
    /// One watt: the joules are per declared watt, multiplied by the declared power when the
    /// results are shown (so a change of it reruns nothing); the meter's description says
    /// [`PER_DECLARED_WATT`] where the watts go.
    PerWatt,
    /// None declared: no estimate.
    Undeclared,
}

/// What an estimate per watt ([`CpuPower::PerWatt`]) says in its description where a declared
/// estimate says its watts.
pub const PER_DECLARED_WATT: &str = "cpu_power";

/// Why energy is null where no counter is readable and no power is declared.
pub const NO_COUNTER_NO_POWER: &str = "no energy counter is readable here and no `cpu_power` \
     is declared (set `hardware { cpu_power = 15 W }` for an estimate)";

/// Declared watts × the CPU time used, over the share of the machine it could use:
/// `cpu_power` is the declared power of the whole CPU when all `cores` are busy (None: per
/// declared watt, see [`CpuPower::PerWatt`]).
pub struct Estimated {
    pub cpu_power_w: Option<f64>,
    pub cores: usize,
    scope: Scope,
    start: f64,
    /// Why no counter measures instead (in the description).
    no_counter: String,
}

impl Estimated {
    pub fn new(cpu_power_w: Option<f64>, cores: usize, scope: Scope) -> Result<Estimated> {
        Ok(Estimated {
            cpu_power_w,
            cores: cores.max(1),
            scope,
            start: memory::cpu_seconds(scope)?,
            no_counter: "no energy counter on this machine".into(),
        })
    }

    /// The estimate, saying why no counter was had (e.g. RAPL's error).
    pub fn because(mut self, no_counter: String) -> Estimated {
        self.no_counter = no_counter;
        self
    }

    fn watts(&self) -> f64 {
        self.cpu_power_w.unwrap_or(1.0)
    }
}

impl Meter for Estimated {
    fn source(&self) -> Source {
        Source::Estimated
    }
    fn resolution_j(&self) -> f64 {
        // The CPU-time clock's step at the declared power; the estimate's real error (declared
        // watts vs what the chip draws) is far larger, which the `estimated` label says.
        let step = memory::cpu_clock_resolution(self.scope).unwrap_or(1e-6);
        self.watts() * step / self.cores as f64
    }
    fn describe(&self) -> String {
        let whose = match self.scope {
            Scope::Process => "process",
            Scope::Thread => "thread",
        };
        let watts = match self.cpu_power_w {
            Some(w) => format!("{w} W"),
            None => PER_DECLARED_WATT.to_string(),
        };
        format!(
            "estimated: declared {watts} × {whose} CPU time / {} cores ({})",
            self.cores, self.no_counter
        )
    }
    fn joules(&mut self) -> Result<f64> {
        let busy = memory::cpu_seconds(self.scope)? - self.start;
        Ok(self.watts() * busy / self.cores as f64)
    }
}

/// The energy of one measuring window. `gross_j`/`net_j` are null exactly when `null_reason` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowEnergy {
    pub seconds: f64,
    pub gross_j: Option<f64>,
    /// Gross minus idle power × seconds.
    pub net_j: Option<f64>,
    /// Mean power of the idle windows before and after.
    pub idle_w: Option<f64>,
    pub source: Option<Source>,
    pub resolution_j: Option<f64>,
    pub null_reason: Option<String>,
    /// The same window from power samples, where the meter samples.
    pub sampled_j: Option<f64>,
    pub peak_power_w: Option<f64>,
    /// Device state at the end of the window (see [`Meter::snapshot`]), except
    /// `other_processes`: the most seen at either edge.
    pub device: GpuState,
    /// GPU memory in use when the window opened.
    pub gpu_memory_used_before_bytes: Option<u64>,
    /// What the host did during the window.
    pub host: host::HostShare,
}

impl WindowEnergy {
    /// A window with no energy figure, and why.
    pub fn unmeasured(seconds: f64, why: &str) -> WindowEnergy {
        WindowEnergy {
            seconds,
            gross_j: None,
            net_j: None,
            idle_w: None,
            source: None,
            resolution_j: None,
            null_reason: Some(why.to_string()),
            sampled_j: None,
            peak_power_w: None,
            device: GpuState::default(),
            gpu_memory_used_before_bytes: None,
            host: host::HostShare::default(),
        }
    }

    /// Other processes were on the device at an edge of the window: its energy is not this
    /// work's alone.
    pub fn contended(&self) -> bool {
        self.device.other_processes.is_some_and(|n| n > 0)
    }
}

/// Idle power: the meter's joules over a quiet interval, between two of its steps.
fn idle_power(meter: &mut dyn Meter, idle: Duration) -> Result<f64> {
    let (e0, t0) = meter.joules_at_step()?;
    std::thread::sleep(idle);
    let (e1, t1) = meter.joules_at_step()?;
    Ok((e1 - e0) / t1.duration_since(t0).as_secs_f64())
}

/// A meter (or the reason there is none) and the idle window used around each measurement.
pub struct Metered {
    meter: Result<Box<dyn Meter>, String>,
    pub idle: Duration,
}

impl Metered {
    pub fn new(meter: Result<Box<dyn Meter>, String>, idle: Duration) -> Metered {
        Metered { meter, idle }
    }

    /// Where the energy figures come from; None when there is no meter.
    pub fn source(&self) -> Option<Source> {
        self.meter.as_ref().ok().map(|m| m.source())
    }

    /// What is measured and how, or why nothing is.
    pub fn describe(&self) -> String {
        match &self.meter {
            Ok(m) => m.describe(),
            Err(why) => format!("none: {why}"),
        }
    }

    /// Runs `work` inside a measuring window: idle baseline, reading, work, reading, idle
    /// baseline. The work's own error is returned as is; a meter error makes the energy null
    /// with its reason and keeps the work's result.
    pub fn window<T>(&mut self, work: impl FnOnce() -> Result<T>) -> Result<(T, WindowEnergy)> {
        let meter = match &mut self.meter {
            Ok(m) => m,
            Err(why) => {
                let why = why.clone();
                let t0 = Instant::now();
                let out = work()?;
                return Ok((
                    out,
                    WindowEnergy::unmeasured(t0.elapsed().as_secs_f64(), &why),
                ));
            }
        };
        let idle = self.idle;
        let before = (!idle.is_zero()).then(|| idle_power(meter.as_mut(), idle));
        let snap0 = meter.snapshot();
        meter.take_peak_power_w();
        // The work starts right after a step of the meter and the window's reading is taken at
        // the first step after it ends, less the energy of that short tail (power read at both
        // of its ends): no edge is off by up to a step of the meter.
        let start = meter.joules_at_step().map(|r| r.0);
        let sampled0 = meter.sampled_joules();
        let host0 = host::HostSample::take();
        let t0 = Instant::now();
        let out = work()?;
        let t1 = Instant::now();
        let host1 = host::HostSample::take();
        let seconds = t1.duration_since(t0).as_secs_f64();
        let sampled1 = meter.sampled_joules();
        let tail_w0 = meter.power_w();
        let end = meter.joules_at_step().map(|(e, at)| {
            let tail_s = at.saturating_duration_since(t1).as_secs_f64();
            match tail_w0.zip(meter.power_w()) {
                Some((a, b)) => e - (a + b) / 2.0 * tail_s,
                None => e,
            }
        });
        let peak = meter.take_peak_power_w();
        let mut device = meter.snapshot();
        let after = (!idle.is_zero()).then(|| idle_power(meter.as_mut(), idle));
        device.other_processes = snap0.other_processes.max(device.other_processes);
        let edges = |e: WindowEnergy| WindowEnergy {
            device,
            gpu_memory_used_before_bytes: snap0.memory_used_bytes,
            host: host0.since(&host1),
            ..e
        };
        let energy = match (start, end) {
            // No device draws nothing: a reading that did not move means the meter updates less
            // often than the window lasted (NVML's counter steps every few tens of ms), not 0 J.
            (Ok(s), Ok(e)) if e - s <= 0.0 => edges(WindowEnergy::unmeasured(
                seconds,
                &format!(
                    "the meter did not advance during this {seconds:.3} s window (it updates \
                     less often): measure a longer window (more requests or repetitions)"
                ),
            )),
            (Ok(s), Ok(e)) => {
                let idle_w = match (before, after) {
                    (Some(Ok(b)), Some(Ok(a))) => Some((b + a) / 2.0),
                    _ => None,
                };
                edges(WindowEnergy {
                    gross_j: Some(e - s),
                    net_j: idle_w.map(|w| e - s - w * seconds),
                    idle_w,
                    source: Some(meter.source()),
                    resolution_j: Some(meter.resolution_j()),
                    null_reason: None,
                    sampled_j: sampled0.zip(sampled1).map(|(a, b)| b - a),
                    peak_power_w: peak,
                    ..WindowEnergy::unmeasured(seconds, "")
                })
            }
            (Err(e), _) | (_, Err(e)) => edges(WindowEnergy::unmeasured(
                seconds,
                &format!("meter read failed: {e:#}"),
            )),
        };
        Ok((out, energy))
    }
}

/// Which meter to use: `choice` is the pipeline's `hardware.meter` (auto, rapl, estimated, nvml);
/// `scope` says whose CPU time an estimate counts (counters measure the whole device);
/// `sample_interval` is the GPU power sampling period.
pub fn open(
    choice: &str,
    device: spec::Device,
    cpu_power: CpuPower,
    cores: usize,
    scope: Scope,
    sample_interval: Duration,
) -> Result<Box<dyn Meter>, String> {
    let estimated = |no_counter: Option<String>| {
        let watts = match cpu_power {
            CpuPower::Declared(w) => Some(w),
            CpuPower::PerWatt => None,
            CpuPower::Undeclared => return Err(NO_COUNTER_NO_POWER.to_string()),
        };
        Estimated::new(watts, cores, scope)
            .map(|e| match no_counter {
                Some(why) => e.because(why),
                None => e,
            })
            .map(|e| Box::new(e) as Box<dyn Meter>)
            .map_err(|e| format!("{e:#}"))
    };
    if let spec::Device::Cuda(i) = device {
        return match choice {
            "auto" | "nvml" => NvmlMeter::open(crate::hw::physical_gpu(i), sample_interval)
                .map(|m| Box::new(m) as Box<dyn Meter>)
                .map_err(|e| format!("{e:#}")),
            other => Err(format!(
                "meter `{other}` measures the CPU, but this stage runs on cuda({i}): use \
                 `meter = auto` or `nvml`"
            )),
        };
    }
    match choice {
        "nvml" => Err("`meter = nvml` measures a GPU, but this stage runs on the CPU".into()),
        "rapl" => Rapl::open_system().map(|r| Box::new(r) as Box<dyn Meter>),
        "estimated" => estimated(None),
        _ => match Rapl::open_system() {
            Ok(r) => Ok(Box::new(r)),
            Err(rapl_why) => estimated(Some(format!("no energy counter: RAPL: {rapl_why}")))
                .map_err(|e| format!("{e}; RAPL: {rapl_why}")),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Readings a scripted meter returns in order (an `Err` is a failed read).
    type Script = Arc<Mutex<Vec<Result<f64, String>>>>;

    /// A scripted meter: returns the queued readings in order, or an error when told to.
    pub struct Scripted(pub Script);
    impl Meter for Scripted {
        fn source(&self) -> Source {
            Source::Counter
        }
        fn resolution_j(&self) -> f64 {
            0.001
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
        fn joules(&mut self) -> Result<f64> {
            let mut q = self.0.lock().unwrap();
            anyhow::ensure!(!q.is_empty(), "script exhausted");
            q.remove(0).map_err(anyhow::Error::msg)
        }
    }

    fn scripted(readings: Vec<Result<f64, String>>) -> (Metered, Script) {
        let q = Arc::new(Mutex::new(readings));
        let m = Metered::new(Ok(Box::new(Scripted(q.clone()))), Duration::from_millis(20));
        (m, q)
    }

    #[test]
    fn window_subtracts_idle_power_and_keeps_the_work_inside() {
        // idle before: 0 → 0.2 J over ~20 ms (≈10 W); window 100 → 150 J; idle after 150 → 150.2.
        let (mut m, q) = scripted(vec![
            Ok(0.0),
            Ok(0.2),
            Ok(100.0),
            Ok(150.0),
            Ok(150.0),
            Ok(150.2),
        ]);
        let (v, e) = m
            .window(|| {
                // The work runs between the 3rd and 4th reading, never during an idle window.
                assert_eq!(q.lock().unwrap().len(), 3);
                std::thread::sleep(Duration::from_millis(50));
                Ok(7)
            })
            .unwrap();
        assert_eq!(v, 7);
        assert_eq!(e.gross_j, Some(50.0));
        let idle = e.idle_w.unwrap();
        assert!(idle > 3.0 && idle <= 10.0, "{idle}");
        let net = e.net_j.unwrap();
        assert!((net - (50.0 - idle * e.seconds)).abs() < 1e-9);
        assert!(net < 50.0);
        assert_eq!(e.source, Some(Source::Counter));
        assert!(e.null_reason.is_none());
    }

    #[test]
    fn a_failed_reading_makes_energy_null_with_a_reason_and_keeps_the_result() {
        let (mut m, _) = scripted(vec![
            Ok(0.0),
            Ok(0.1),
            Ok(10.0),
            Err("device lost".into()),
            Ok(0.0),
            Ok(0.1),
        ]);
        let (v, e) = m.window(|| Ok("kept")).unwrap();
        assert_eq!(v, "kept");
        assert_eq!(e.gross_j, None);
        assert_eq!(e.net_j, None);
        assert!(e.null_reason.unwrap().contains("device lost"));
    }

    #[test]
    fn a_counter_that_did_not_move_is_null_not_zero() {
        let (mut m, _) = scripted(vec![
            Ok(0.0),
            Ok(0.1),
            Ok(10.0),
            Ok(10.0),
            Ok(10.0),
            Ok(10.1),
        ]);
        let (_, e) = m.window(|| Ok(())).unwrap();
        assert_eq!(e.gross_j, None);
        assert_eq!(e.net_j, None);
        assert!(e.null_reason.unwrap().contains("did not advance"));
    }

    /// A meter that, like NVML's counter, updates in steps: constant `watts`, readings that move
    /// only every `step`.
    struct Stepping {
        t0: Instant,
        watts: f64,
        step: Duration,
    }
    impl Stepping {
        fn steps(&self) -> u32 {
            (self.t0.elapsed().as_secs_f64() / self.step.as_secs_f64()) as u32
        }
    }
    impl Meter for Stepping {
        fn source(&self) -> Source {
            Source::Counter
        }
        fn resolution_j(&self) -> f64 {
            self.watts * self.step.as_secs_f64()
        }
        fn describe(&self) -> String {
            "stepping".into()
        }
        fn joules(&mut self) -> Result<f64> {
            Ok(self.steps() as f64 * self.resolution_j())
        }
        fn joules_at_step(&mut self) -> Result<(f64, Instant)> {
            let first = self.steps();
            while self.steps() == first {
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok((self.joules()?, Instant::now()))
        }
        fn power_w(&mut self) -> Option<f64> {
            Some(self.watts)
        }
    }

    #[test]
    fn windows_read_a_stepping_meter_at_its_steps() {
        let meter = Stepping {
            t0: Instant::now(),
            watts: 100.0,
            step: Duration::from_millis(40),
        };
        let mut m = Metered::new(Ok(Box::new(meter)), Duration::from_millis(200));
        for work_ms in [10, 55, 130] {
            let (_, e) = m
                .window(|| {
                    std::thread::sleep(Duration::from_millis(work_ms));
                    Ok(())
                })
                .unwrap();
            // Plain reads at the edges would be off by a step (4 J) or read nothing at all (a
            // 1 J error at least for these lengths); aligned to the steps, less the tail after
            // the work, the window is off only by how late a step was noticed (0.2 ms polling;
            // 1 J would take 10 ms of lateness on a loaded machine).
            let gross = e.gross_j.unwrap();
            assert!(
                (gross - 100.0 * e.seconds).abs() < 1.0,
                "{work_ms} ms: {gross} J in {} s",
                e.seconds
            );
            // Idle power between two steps ≥ 200 ms apart: a few ms of lateness is a few %.
            assert!((e.idle_w.unwrap() - 100.0).abs() < 4.0, "{:?}", e.idle_w);
        }
    }

    #[test]
    fn no_meter_means_null_energy_never_zero() {
        let mut m = Metered::new(Err("no counter".into()), Duration::ZERO);
        let (_, e) = m.window(|| Ok(())).unwrap();
        assert_eq!(e.gross_j, None);
        assert_eq!(e.null_reason.as_deref(), Some("no counter"));
        assert_eq!(e.net_j, None);
        assert_eq!(e.source, None);
    }

    #[test]
    fn idle_subtraction_failure_leaves_gross_and_nulls_net() {
        let (mut m, _) = scripted(vec![Err("busy".into()), Ok(5.0), Ok(9.0), Ok(9.0), Ok(9.1)]);
        let (_, e) = m.window(|| Ok(())).unwrap();
        assert_eq!(e.gross_j, Some(4.0));
        assert_eq!(e.net_j, None);
        assert_eq!(e.idle_w, None);
    }

    /// Keeps this thread busy until it has used `d` of CPU time (wall time would depend on how
    /// loaded the machine is).
    fn spin(d: Duration) {
        let now = || memory::cpu_seconds(Scope::Thread).unwrap();
        let start = now();
        let mut x = 0u64;
        while now() - start < d.as_secs_f64() {
            for _ in 0..1000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
        }
        std::hint::black_box(x);
    }

    #[test]
    fn estimated_meter_counts_busy_cpu_time() {
        // Thread scope: other tests running in this process do not disturb the figures.
        let mut m = Estimated::new(Some(10.0), 2, Scope::Thread).unwrap();
        let e0 = m.joules().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let idle = m.joules().unwrap() - e0;
        spin(Duration::from_millis(200));
        let busy = m.joules().unwrap() - e0 - idle;
        // 0.2 CPU-seconds on one of two cores at 10 W = 1 J; sleeping costs (almost) nothing.
        assert!(idle < 0.01, "idle {idle}");
        assert!(busy > 0.99 && busy < 1.1, "busy {busy}");
        assert_eq!(m.source(), Source::Estimated);
        // Process scope counts every thread: at least the 0.2 s another thread spins.
        let mut p = Estimated::new(Some(10.0), 2, Scope::Process).unwrap();
        let p0 = p.joules().unwrap();
        std::thread::spawn(|| spin(Duration::from_millis(200)))
            .join()
            .unwrap();
        assert!(p.joules().unwrap() - p0 > 0.99);
    }

    #[test]
    fn an_estimate_per_watt_is_the_declared_estimate_over_its_watts() {
        let per_watt = Estimated::new(None, 2, Scope::Thread).unwrap();
        let declared = Estimated::new(Some(12.0), 2, Scope::Thread).unwrap();
        assert_eq!(
            declared.resolution_j() / per_watt.resolution_j(),
            12.0,
            "the clock step, in joules per declared watt"
        );
        let d = per_watt.describe();
        assert!(
            d.contains(&format!("declared {PER_DECLARED_WATT} ×")),
            "{d}"
        );
        assert!(declared.describe().contains("declared 12 W ×"));
    }

    #[test]
    fn meter_choice_says_why_when_nothing_can_be_had() {
        let cpu = spec::Device::Cpu;
        let ms = Duration::from_millis(20);
        let err = open(
            "estimated",
            cpu,
            CpuPower::Undeclared,
            2,
            Scope::Process,
            ms,
        )
        .err()
        .unwrap();
        assert!(err.contains("cpu_power"), "{err}");
        assert!(
            open(
                "estimated",
                cpu,
                CpuPower::Declared(12.0),
                2,
                Scope::Process,
                ms
            )
            .is_ok()
        );
        let e = open("nvml", cpu, CpuPower::Declared(12.0), 2, Scope::Process, ms)
            .err()
            .unwrap();
        assert!(e.contains("GPU"), "{e}");
        let gpu = spec::Device::Cuda(0);
        let e = open("rapl", gpu, CpuPower::Declared(12.0), 2, Scope::Process, ms)
            .err()
            .unwrap();
        assert!(e.contains("cuda(0)"), "{e}");
        // On a machine without the NVIDIA driver, a GPU stage's meter says "no NVML".
        if !std::path::Path::new("/proc/driver/nvidia").exists() {
            let e = open("auto", gpu, CpuPower::Undeclared, 2, Scope::Process, ms)
                .err()
                .unwrap();
            assert!(e.contains("no NVML"), "{e}");
        }
    }

    #[test]
    fn thread_scope_ignores_other_threads() {
        let mut m = Estimated::new(Some(10.0), 1, Scope::Thread).unwrap();
        let e0 = m.joules().unwrap();
        std::thread::spawn(|| spin(Duration::from_millis(150)))
            .join()
            .unwrap();
        // 150 ms of another thread's work: not this thread's energy.
        assert!(m.joules().unwrap() - e0 < 0.2);
    }
}
