//! The metrics table as the terminal shows it after a run (and `edge-eval report`).

use super::{cell, cell_ci, shown};
use crate::stages::Row;

/// A plain-text table of the metrics.
pub fn terminal_table(rows: &[Row], metrics: &[String]) -> String {
    let cols = shown(metrics);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|(k, _)| cell_ci(r, k)).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, h))| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |xs: Vec<String>| {
        xs.iter()
            .zip(&widths)
            .map(|(x, w)| format!("{x:<w$}", w = *w))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(cols.iter().map(|(_, h)| h.to_string()).collect()) + "\n";
    for c in cells {
        out += &(line(c) + "\n");
    }
    out += "[lo, hi]: 95 % bootstrap intervals; energy sources are in metrics.parquet\n";
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.get("null_reasons")
                .and_then(|v| v.as_str())
                .map(|why| format!("  {} [{}]: {why}", cell(r, "variant"), cell(r, "task")))
        })
        .collect();
    if !notes.is_empty() {
        out += "null metrics:\n";
        out += &notes.join("\n");
        out += "\n";
    }
    out
}
