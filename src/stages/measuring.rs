//! What the measuring stages share: `cold_load` (nothing in memory → first token can be
//! produced, `cold_load.rs`) and `measure` (a serving benchmark on a task's prompts,
//! `measure.rs`). Both hold their device alone (the executor's leases), run every repetition
//! inside a [`meter::Metered::window`] that contains only the work measured, and write one row
//! per repetition plus summary rows (`row = "summary"`) with medians and spread.
//!
//! A summary cell of a per-repetition cell is its median ([`median`]; counts stay counts,
//! [`median_count`]), null when any repetition lacks it: never a partial median.

use super::cells::{Device, Energy};
use meter::Metered;
use metrics::stats;

/// The repetitions' values of a cell, when every repetition has one.
fn complete<R>(reps: &[R], cell: impl Fn(&R) -> Option<f64>) -> Option<Vec<f64>> {
    reps.iter().map(cell).collect()
}

/// The median of a per-repetition cell.
pub(super) fn median<R>(reps: &[R], cell: impl Fn(&R) -> Option<f64>) -> Option<f64> {
    complete(reps, cell).and_then(|xs| stats::median(&xs))
}

/// The coefficient of variation of a per-repetition cell.
pub(super) fn cv<R>(reps: &[R], cell: impl Fn(&R) -> Option<f64>) -> Option<f64> {
    complete(reps, cell).and_then(|xs| stats::cv(&xs))
}

/// A count (bytes, tokens) that a median keeps a count: the median of an even number of them
/// is rounded.
pub(super) trait Count: Copy {
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
}

macro_rules! counts {
    ($($t:ty),*) => {
        $(impl Count for $t {
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn from_f64(x: f64) -> Self {
                x.round() as $t
            }
        })*
    };
}
counts!(u64, i64, usize);

/// The median of a per-repetition count.
pub(super) fn median_count<R, T: Count>(reps: &[R], cell: impl Fn(&R) -> Option<T>) -> Option<T> {
    median(reps, |r| cell(r).map(T::to_f64)).map(T::from_f64)
}

/// A summary's energy cells: medians of the repetitions' figures; source, resolution and null
/// reason from the first repetition that has them.
pub(super) fn summary_energy<R>(reps: &[R], e: impl Fn(&R) -> &Energy, meter: &Metered) -> Energy {
    Energy {
        energy_j: median(reps, |r| e(r).energy_j),
        energy_net_j: median(reps, |r| e(r).energy_net_j),
        idle_power_w: median(reps, |r| e(r).idle_power_w),
        energy_source: reps.iter().find_map(|r| e(r).energy_source.clone()),
        energy_resolution_j: reps.iter().find_map(|r| e(r).energy_resolution_j),
        energy_null_reason: reps.iter().find_map(|r| e(r).energy_null_reason.clone()),
        meter: Some(meter.describe()),
    }
}

/// A summary's power-sample cells (medians); the device state of single windows stays out.
pub(super) fn summary_samples<R>(reps: &[R], d: impl Fn(&R) -> &Device) -> Device {
    Device {
        energy_sampled_j: median(reps, |r| d(r).energy_sampled_j),
        peak_power_w: median(reps, |r| d(r).peak_power_w),
        ..Device::default()
    }
}
