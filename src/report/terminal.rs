//! The metrics table as the terminal shows it after a run (and `edge-eval report`).

use super::{aligned, cell, cell_ci, shown};
use crate::stages::Row;

/// A plain-text table of the metrics.
pub fn terminal_table(rows: &[Row], metrics: &[String]) -> String {
    let cols = shown(metrics);
    let mut cells: Vec<Vec<String>> = vec![cols.iter().map(|(_, h)| h.to_string()).collect()];
    cells.extend(
        rows.iter()
            .map(|r| cols.iter().map(|(k, _)| cell_ci(r, k)).collect()),
    );
    let mut out = aligned(&cells);
    out += "[lo, hi]: 95 % bootstrap intervals; energy sources are in metrics.parquet\n";
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.get("null_reasons").filter(|v| !v.is_null()).map(|_| {
                let why = cell(r, "null_reasons");
                format!("  {} [{}]: {why}", cell(r, "variant"), cell(r, "task"))
            })
        })
        .collect();
    if !notes.is_empty() {
        out += "null metrics:\n";
        out += &notes.join("\n");
        out += "\n";
    }
    out
}
