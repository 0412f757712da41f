//! Process memory and CPU time from the kernel: resident set (VmRSS), its peak (VmHWM, which
//! [`reset_peak`] restarts), and the process's CPU time.

use anyhow::{Context, Result};

fn status_kib(field: &str) -> Result<u64> {
    let text =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("/proc/self/status has no {field}"))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("unreadable {field} line: {line}"))
}

/// Bytes resident now.
pub fn rss_bytes() -> Result<u64> {
    Ok(status_kib("VmRSS:")? * 1024)
}

/// Peak resident bytes since the process started or since [`reset_peak`].
pub fn peak_rss_bytes() -> Result<u64> {
    Ok(status_kib("VmHWM:")? * 1024)
}

/// Restarts the peak-RSS mark at the current RSS (`/proc/self/clear_refs`, value 5). Returns
/// false where the kernel refuses, in which case the peak is the process's lifetime peak.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Hands memory the allocator keeps after frees back to the kernel (glibc `malloc_trim`), so an
/// RSS difference around a load measures the load, not what an earlier model left behind.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// While held, memory the process frees stays with the allocator for its next allocations
/// instead of going back to the kernel (glibc: the trim threshold raised to 2 GiB, allocations
/// up to 32 MiB served from the heap rather than mappings of their own); dropping it restores
/// glibc's static defaults and returns what is free ([`release_free_memory`]). A training step
/// frees and allocates gigabytes of activations: returned and faulted in again, the kernel's page
/// clearing made SmolLM2-135M LoRA steps on 2 cores ~20 % slower (docs/cpu.md). Peak RSS is
/// unchanged by it (kept memory is reused, not added to).
pub struct KeepFreedMemory(());

impl KeepFreedMemory {
    pub fn new() -> KeepFreedMemory {
        set_thresholds(i32::MAX, 32 << 20);
        KeepFreedMemory(())
    }
}

impl Default for KeepFreedMemory {
    fn default() -> KeepFreedMemory {
        KeepFreedMemory::new()
    }
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        set_thresholds(128 << 10, 128 << 10);
        release_free_memory();
    }
}

#[cfg_attr(not(target_env = "gnu"), allow(unused_variables))]
fn set_thresholds(trim: i32, mmap: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning parameters.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
    }
}

fn cpu_clock(scope: super::Scope) -> libc::clockid_t {
    match scope {
        super::Scope::Process => libc::CLOCK_PROCESS_CPUTIME_ID,
        super::Scope::Thread => libc::CLOCK_THREAD_CPUTIME_ID,
    }
}

/// CPU seconds (user + system) used by the whole process or by the calling thread. An error
/// (the clock unreadable) is returned, never a made-up 0.
pub fn cpu_seconds(scope: super::Scope) -> Result<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer it is given.
    let rc = unsafe { libc::clock_gettime(cpu_clock(scope), &mut ts) };
    anyhow::ensure!(rc == 0, "the CPU-time clock cannot be read");
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// Resolution of that clock in seconds (`clock_getres`).
pub fn cpu_clock_resolution(scope: super::Scope) -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes one timespec into the pointer it is given.
    let rc = unsafe { libc::clock_getres(cpu_clock(scope), &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_grows_with_touched_pages_and_peak_resets() {
        let before = rss_bytes().unwrap();
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        let during = rss_bytes().unwrap();
        assert!(during >= before + (48 << 20), "{before} → {during}");
        assert!(peak_rss_bytes().unwrap() >= during);
        drop(v);
        if reset_peak() {
            assert!(peak_rss_bytes().unwrap() < during);
        }
    }
}
