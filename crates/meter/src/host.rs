//! What the host did during a measuring window, beside the meter's figures: the share of CPU
//! time the hypervisor gave to other guests (`steal`, from `/proc/stat`) and how often the
//! measuring thread was preempted (`nonvoluntary_ctxt_switches` of `/proc/thread-self/status`).
//! On a lent VM a GPU decode step is mostly host work (kernel launches), so a window slowed by
//! the host shows here; both are null where the kernel does not report them.

/// The host counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostSample {
    /// (steal, total) CPU ticks over all CPUs since boot.
    ticks: Option<(u64, u64)>,
    /// Involuntary context switches of the calling thread.
    preemptions: Option<u64>,
}

impl HostSample {
    pub fn take() -> HostSample {
        HostSample {
            ticks: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|t| cpu_ticks(&t)),
            preemptions: std::fs::read_to_string("/proc/thread-self/status")
                .ok()
                .and_then(|t| preemptions(&t)),
        }
    }

    /// What the host did between `self` and `later`.
    pub fn since(&self, later: &HostSample) -> HostShare {
        let steal_pct = match (self.ticks, later.ticks) {
            (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
                Some(100.0 * s1.saturating_sub(s0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        let preemptions = self
            .preemptions
            .zip(later.preemptions)
            .map(|(a, b)| b.saturating_sub(a));
        HostShare {
            steal_pct,
            preemptions,
        }
    }
}

/// The host's share of a window: null where the kernel does not report a counter.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostShare {
    /// Percent of all CPUs' time stolen by the hypervisor.
    pub steal_pct: Option<f64>,
    /// Times the thread that took both samples was preempted.
    pub preemptions: Option<u64>,
}

/// (steal, total) from `/proc/stat`'s aggregate `cpu` line: user nice system idle iowait irq
/// softirq steal (guest time is already inside user).
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    (v.len() == 8).then(|| (v[7], v.iter().sum()))
}

fn preemptions(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_and_preemptions_between_two_samples() {
        let stat = |steal: u64, idle: u64| {
            format!("cpu  100 0 50 {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
        };
        let a = HostSample {
            ticks: cpu_ticks(&stat(10, 1000)),
            preemptions: preemptions(
                "voluntary_ctxt_switches:\t9\nnonvoluntary_ctxt_switches:\t4\n",
            ),
        };
        assert_eq!(a.ticks, Some((10, 1160)));
        let b = HostSample {
            ticks: cpu_ticks(&stat(40, 1270)),
            preemptions: Some(11),
        };
        let share = a.since(&b);
        // 30 of the 300 ticks that passed were stolen.
        assert_eq!(share.steal_pct, Some(10.0));
        assert_eq!(share.preemptions, Some(7));
        // Unreadable counters give nulls, not zeros.
        let none = HostSample {
            ticks: cpu_ticks("intr 5\n"),
            preemptions: preemptions(""),
        };
        let share = none.since(&b);
        assert_eq!(share.steal_pct, None);
        assert_eq!(share.preemptions, None);
        // A real sample on this machine reads (Linux).
        let now = HostSample::take();
        assert!(now.ticks.is_some() && now.preemptions.is_some(), "{now:?}");
    }
}
