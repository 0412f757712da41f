//! Hardware fingerprint: what measuring stages are keyed by (a measurement taken on one machine
//! is not a cache hit on another). Read from /proc without any driver library.

use spec::Device;
use std::fs;

#[derive(Debug, Clone)]
pub struct Hardware {
    pub cpu_model: String,
    pub threads: usize,
    /// (model name, driver version) per GPU index, as the kernel driver reports them.
    pub gpus: Vec<(String, String)>,
}

impl Hardware {
    /// Reads the machine; `threads` is the CPU budget the run uses.
    pub fn detect(threads: usize) -> Hardware {
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let driver = fs::read_to_string("/proc/driver/nvidia/version")
            .ok()
            .and_then(|t| {
                t.lines().next().and_then(|l| {
                    l.split_whitespace()
                        .find(|w| {
                            w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.')
                        })
                        .map(str::to_string)
                })
            })
            .unwrap_or_default();
        // Sorted by PCI bus id, which is the CUDA device order with CUDA_DEVICE_ORDER=PCI_BUS_ID.
        let gpus: Vec<(String, String)> = fs::read_dir("/proc/driver/nvidia/gpus")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let info = fs::read_to_string(e.path().join("information")).ok()?;
                let model = info
                    .lines()
                    .find(|l| l.starts_with("Model:"))?
                    .trim_start_matches("Model:")
                    .trim()
                    .to_string();
                Some((e.file_name().to_string_lossy().to_string(), model))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(bus, model)| (bus, (model, driver.clone())))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_values()
            .collect();
        Hardware {
            cpu_model,
            threads,
            gpus,
        }
    }

    /// The fingerprint string for stages that run on `device`.
    pub fn fingerprint(&self, device: Device) -> String {
        let cpu = format!("cpu={}; threads={}", self.cpu_model, self.threads);
        match device {
            Device::Cpu => cpu,
            Device::Cuda(i) => match self.gpus.get(physical_gpu(i) as usize) {
                Some((name, driver)) => format!("gpu{i}={name}; driver={driver}; {cpu}"),
                None => format!("gpu{i}=absent; {cpu}"),
            },
        }
    }
}

/// The parts of a [`Hardware::fingerprint`] (`cpu`, `threads`; on a GPU `gpuN`, `driver`): its
/// `name=value` pairs, `; `-separated (a part without `=` is kept under its position).
pub fn fingerprint_parts(fingerprint: &str) -> std::collections::BTreeMap<String, String> {
    fingerprint
        .split("; ")
        .enumerate()
        .map(|(i, part)| match part.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (format!("part{i}"), part.to_string()),
        })
        .collect()
}

/// The driver's (NVML's, /proc's) index of the GPU that CUDA calls `cuda(i)` in this process:
/// CUDA numbers only the devices `CUDA_VISIBLE_DEVICES` lists (as a Slurm job's allocation sets
/// it), NVML numbers them all. Without the variable, or with entries that are not indices
/// (UUIDs), the two agree.
pub fn physical_gpu(i: u32) -> u32 {
    visible_gpus(std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref())
        .and_then(|v| v.get(i as usize).copied())
        .unwrap_or(i)
}

fn visible_gpus(var: Option<&str>) -> Option<Vec<u32>> {
    let var = var?.trim();
    if var.is_empty() {
        return None;
    }
    var.split(',').map(|x| x.trim().parse().ok()).collect()
}

#[cfg(test)]
#[test]
fn cuda_visible_devices_maps_cuda_indices_to_driver_indices() {
    assert_eq!(visible_gpus(Some("2,3")), Some(vec![2, 3]));
    assert_eq!(visible_gpus(Some("GPU-8f3a…")), None);
    assert_eq!(visible_gpus(Some("")), None);
    assert_eq!(visible_gpus(None), None);
}

#[cfg(test)]
#[test]
fn a_fingerprint_reads_back_as_its_parts() {
    let hw = Hardware {
        cpu_model: "AMD EPYC 7B13".into(),
        threads: 2,
        gpus: vec![("NVIDIA H200".into(), "580.1".into())],
    };
    let parts = |d| fingerprint_parts(&hw.fingerprint(d));
    let cpu = parts(Device::Cpu);
    assert_eq!(cpu.len(), 2);
    assert_eq!(
        (cpu["cpu"].as_str(), cpu["threads"].as_str()),
        ("AMD EPYC 7B13", "2")
    );
    let gpu = parts(Device::Cuda(0));
    assert_eq!(
        (gpu["gpu0"].as_str(), gpu["driver"].as_str()),
        ("NVIDIA H200", "580.1")
    );
    assert_eq!(gpu["cpu"], "AMD EPYC 7B13");
}

/// Number of CPU threads available to this process.
pub fn available_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
