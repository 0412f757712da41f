//! What the measuring stages share: `cold_load` (nothing in memory → first token can be
//! produced, `cold_load.rs`) and `measure` (a serving benchmark on a task's prompts,
//! `measure.rs`). Both hold their device alone (the executor's leases), run every repetition
//! inside a [`meter::Metered::window`] that contains only the work measured, and write one row
//! per repetition plus summary rows (`row = "summary"`) with medians and spread.

use super::Row;
use meter::Metered;
use metrics::stats;
use serde_json::json;

pub(super) fn base_row(kind: &str, repeat: Option<usize>, meter: &Metered) -> Row {
    let mut row = Row::new();
    row.insert("row".into(), json!(kind));
    row.insert("repeat".into(), json!(repeat));
    row.insert("meter".into(), json!(meter.describe()));
    row
}

/// The summary cell of a per-repetition column: its median, and with `cv` (for the columns
/// whose `<col>_cv` the stage's table declares) its coefficient of variation.
pub(super) fn summarise(rows: &[Row], col: &str, cv: bool, out: &mut Row) {
    let xs: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.get(col).and_then(|v| v.as_f64()))
        .collect();
    // A column that is null in any repetition is null in the summary (never a partial median).
    let complete = xs.len() == rows.len();
    let med = complete.then(|| stats::median(&xs)).flatten();
    // Counts (bytes, tokens) stay integers: the median of an even count is rounded.
    let integral = rows
        .iter()
        .all(|r| r.get(col).is_some_and(|v| v.is_i64() || v.is_u64()));
    if integral {
        out.insert(col.into(), json!(med.map(|m| m.round() as i64)));
    } else {
        out.insert(col.into(), json!(med));
    }
    if cv {
        out.insert(
            format!("{col}_cv"),
            json!(complete.then(|| stats::cv(&xs)).flatten()),
        );
    }
}

/// Copies the energy source / reason of the repetitions into a summary row.
pub(super) fn summary_energy_labels(rows: &[Row], out: &mut Row) {
    for k in ["energy_source", "energy_resolution_j", "energy_null_reason"] {
        if let Some(v) = rows.iter().find_map(|r| r.get(k).filter(|v| !v.is_null())) {
            out.insert(k.into(), v.clone());
        }
    }
}
