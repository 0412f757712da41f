//! The metrics table as a file for other tools: markdown (the cells the terminal shows), CSV
//! and JSON (every column of metrics.parquet, values as stored).

use super::{MetricsRow, cell_ci, shown};
use crate::stages::Row;
use engine::row::TableRow;

/// A markdown table of the shown columns, as the terminal table's cells.
pub fn markdown(rows: &[Row], metrics: &[String]) -> String {
    let cols = shown(metrics);
    let esc = |s: String| s.replace('|', "\\|");
    let mut out = format!(
        "| {} |\n|{}\n",
        cols.iter().map(|(_, h)| *h).collect::<Vec<_>>().join(" | "),
        "---|".repeat(cols.len())
    );
    for r in rows {
        let cells: Vec<String> = cols.iter().map(|(k, _)| esc(cell_ci(r, k))).collect();
        out += &format!("| {} |\n", cells.join(" | "));
    }
    out
}

/// CSV of every metrics.parquet column, in its order (RFC 4180 quoting; null is empty).
pub fn csv(rows: &[Row]) -> String {
    let cols: Vec<String> = MetricsRow::columns()
        .into_iter()
        .map(|c| c.name.to_string())
        .collect();
    let field = |v: Option<&serde_json::Value>| -> String {
        let s = match v {
            None | Some(serde_json::Value::Null) => return String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = cols.join(",") + "\n";
    for r in rows {
        let line: Vec<String> = cols.iter().map(|c| field(r.get(c))).collect();
        out += &(line.join(",") + "\n");
    }
    out
}

/// The rows as a JSON array of objects (every column).
pub fn json(rows: &[Row]) -> String {
    serde_json::to_string_pretty(rows).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exports_quote_and_keep_every_column() {
        let mut r = Row::new();
        r.insert("variant".into(), json!("v[qa,q4_0]"));
        r.insert("task".into(), json!("qa"));
        r.insert("score".into(), json!(0.5));
        r.insert("score_ci_lo".into(), json!(0.25));
        r.insert("score_ci_hi".into(), json!(0.75));
        r.insert(
            "null_reasons".into(),
            json!({"ipw": "energy per request is null"}),
        );
        let text = csv(std::slice::from_ref(&r));
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header.len(), MetricsRow::columns().len());
        let row = lines.next().unwrap();
        assert!(row.starts_with("\"v[qa,q4_0]\","), "{row}");
        assert!(row.contains(",0.5,0.25,0.75,"), "{row}");
        let md = markdown(std::slice::from_ref(&r), &["q_ret".into()]);
        assert!(
            md.starts_with("| variant | task | score | Q_ret % |"),
            "{md}"
        );
        assert!(
            md.contains("| v[qa,q4_0] | qa | 0.500 [0.250, 0.750] | null |"),
            "{md}"
        );
        let back: Vec<Row> = serde_json::from_str(&json(&[r.clone()])).unwrap();
        assert_eq!(back, vec![r]);
    }
}
