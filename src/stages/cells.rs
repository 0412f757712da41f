//! Column groups every metered table shares: the window's energy ([`Energy`]) and what the GPU
//! meter and the host reported of it ([`Device`]), null where not measured.

use meter::{Metered, WindowEnergy};

engine::table_row! {
    /// The energy of a measuring window, and how it was obtained.
    pub struct Energy {
        /// gross energy of the measured work (J)
        energy_j: Option<f64>,
        /// energy minus idle power × window length (J)
        energy_net_j: Option<f64>,
        /// idle power before/after the window (W)
        idle_power_w: Option<f64>,
        /// counter | sampled | rapl | estimated (null: not measured)
        energy_source: Option<String>,
        /// smallest step the meter resolves (J)
        energy_resolution_j: Option<f64>,
        /// why the energy columns are null
        energy_null_reason: Option<String>,
        /// what measured the energy, and how
        meter: Option<String>,
    }
}

impl Energy {
    pub fn of(e: &WindowEnergy, meter: &Metered) -> Energy {
        Energy {
            energy_j: e.gross_j,
            energy_net_j: e.net_j,
            idle_power_w: e.idle_w,
            energy_source: e.source.map(|s| s.as_str().to_string()),
            energy_resolution_j: e.resolution_j,
            energy_null_reason: e.null_reason.clone(),
            meter: Some(meter.describe()),
        }
    }
}

engine::table_row! {
    /// What only a GPU meter fills (power samples, NVML device state), and the host's share of
    /// the window.
    pub struct Device {
        /// the window's energy from integrated power samples (GPU), beside the counter's (J)
        energy_sampled_j: Option<f64>,
        /// highest sampled power in the window (W)
        peak_power_w: Option<f64>,
        /// GPU memory in use at the window's end (NVML, B)
        gpu_memory_used_bytes: Option<u64>,
        /// highest GPU memory in use during the window (NVML, sampled with the power, B)
        gpu_memory_peak_bytes: Option<u64>,
        /// GPU memory in use at the window's start (B)
        gpu_memory_used_before_bytes: Option<u64>,
        /// SM clock at the window's end
        gpu_sm_clock_mhz: Option<u32>,
        /// memory clock at the window's end
        gpu_mem_clock_mhz: Option<u32>,
        /// GPU temperature at the window's end
        gpu_temperature_c: Option<u32>,
        /// enforced power limit (W)
        gpu_power_limit_w: Option<f64>,
        /// other processes on the GPU at the window's edges: >0 means the energy is not this
        /// work's alone
        gpu_other_processes: Option<usize>,
        /// share of all CPUs' time the hypervisor gave to other guests during the window
        /// (/proc/stat steal, %)
        host_steal_pct: Option<f64>,
        /// times the thread running the work was preempted during the window (involuntary
        /// context switches)
        host_preemptions: Option<u64>,
    }
}

impl Device {
    pub fn of(e: &WindowEnergy) -> Device {
        // Destructured whole: a reading the meter adds is a compile error here until it has a
        // column.
        let meter::GpuState {
            memory_used_bytes,
            memory_peak_bytes,
            sm_clock_mhz,
            mem_clock_mhz,
            temperature_c,
            power_limit_w,
            other_processes,
        } = e.device;
        let meter::HostShare {
            steal_pct,
            preemptions,
        } = e.host;
        Device {
            energy_sampled_j: e.sampled_j,
            peak_power_w: e.peak_power_w,
            gpu_memory_used_bytes: memory_used_bytes,
            gpu_memory_peak_bytes: memory_peak_bytes,
            gpu_memory_used_before_bytes: e.gpu_memory_used_before_bytes,
            gpu_sm_clock_mhz: sm_clock_mhz,
            gpu_mem_clock_mhz: mem_clock_mhz,
            gpu_temperature_c: temperature_c,
            gpu_power_limit_w: power_limit_w,
            gpu_other_processes: other_processes,
            host_steal_pct: steal_pct,
            host_preemptions: preemptions,
        }
    }
}
