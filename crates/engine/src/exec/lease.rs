//! Resource leases: a CPU-thread budget and per-device holds. A measuring stage holds its device
//! exclusively (on `cpu` that means the whole CPU budget), so nothing pollutes its figures; any
//! stage on a GPU holds it alone (see `try_acquire`).

use spec::Device;
use std::collections::HashMap;

/// What one stage needs to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub threads: usize,
    pub device: Device,
    pub exclusive: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Hold {
    exclusive: bool,
    shared: usize,
}

#[derive(Debug)]
pub struct Leases {
    total: usize,
    free: usize,
    devices: HashMap<Device, Hold>,
}

impl Leases {
    pub fn new(threads: usize) -> Leases {
        let total = threads.max(1);
        Leases {
            total,
            free: total,
            devices: HashMap::new(),
        }
    }

    /// Threads actually taken for a need (a stage asking for more than the budget gets it all).
    fn threads(&self, need: &Resources) -> usize {
        if need.exclusive && need.device == Device::Cpu {
            self.total
        } else {
            need.threads.clamp(1, self.total)
        }
    }

    pub fn try_acquire(&mut self, need: &Resources) -> bool {
        let threads = self.threads(need);
        let hold = self.devices.get(&need.device).copied().unwrap_or_default();
        // A GPU runs one stage at a time: candle's quantized products keep one scratch buffer
        // per device that every thread's stream writes (two stages at once could read each
        // other's activations), and captured decode graphs rely on that buffer never moving
        // (runtime/llama/decode.rs), which another model's first products could do.
        let one_at_a_time = need.exclusive || matches!(need.device, Device::Cuda(_));
        let device_ok = if one_at_a_time {
            !hold.exclusive && hold.shared == 0
        } else {
            !hold.exclusive
        };
        if threads > self.free || !device_ok {
            return false;
        }
        self.free -= threads;
        let h = self.devices.entry(need.device).or_default();
        if need.exclusive {
            h.exclusive = true;
        } else {
            h.shared += 1;
        }
        true
    }

    pub fn release(&mut self, need: &Resources) {
        self.free = (self.free + self.threads(need)).min(self.total);
        if let Some(h) = self.devices.get_mut(&need.device) {
            if need.exclusive {
                h.exclusive = false;
            } else {
                h.shared = h.shared.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(threads: usize, device: Device, exclusive: bool) -> Resources {
        Resources {
            threads,
            device,
            exclusive,
        }
    }

    #[test]
    fn cpu_budget_is_shared() {
        let mut l = Leases::new(2);
        let a = need(1, Device::Cpu, false);
        assert!(l.try_acquire(&a));
        assert!(l.try_acquire(&a));
        assert!(!l.try_acquire(&a), "budget of 2 threads is used up");
        l.release(&a);
        assert!(l.try_acquire(&a));
    }

    #[test]
    fn measuring_on_cpu_waits_for_an_idle_machine_and_blocks_everything() {
        let mut l = Leases::new(4);
        let small = need(1, Device::Cpu, false);
        let measure = need(1, Device::Cpu, true);
        assert!(l.try_acquire(&small));
        assert!(!l.try_acquire(&measure), "another stage is running");
        l.release(&small);
        assert!(l.try_acquire(&measure));
        assert!(
            !l.try_acquire(&small),
            "nothing runs beside a CPU measurement"
        );
        assert!(!l.try_acquire(&need(1, Device::Cuda(0), false)));
        l.release(&measure);
        assert!(l.try_acquire(&small));
    }

    #[test]
    fn gpus_are_leased_by_index() {
        let mut l = Leases::new(8);
        let m0 = need(1, Device::Cuda(0), true);
        let m1 = need(1, Device::Cuda(1), true);
        let use0 = need(1, Device::Cuda(0), false);
        assert!(l.try_acquire(&m0));
        assert!(l.try_acquire(&m1), "a second GPU measures in parallel");
        assert!(!l.try_acquire(&use0), "GPU 0 is held exclusively");
        assert!(!l.try_acquire(&m0));
        l.release(&m0);
        assert!(l.try_acquire(&use0));
        assert!(!l.try_acquire(&use0), "stages take a GPU one at a time");
        assert!(!l.try_acquire(&m0), "measuring needs the GPU to itself");
        assert!(l.try_acquire(&need(1, Device::Cpu, false)));
        l.release(&use0);
        assert!(l.try_acquire(&use0), "free again");
    }
}
