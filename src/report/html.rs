//! `report.html`: the efficiency frontiers (inline SVG, Pareto points marked) and the metrics
//! table, one self-contained page (no JavaScript, works offline).

use super::{cell, cell_ci, shown};
use crate::stages::Row;

/// Indices of the points no other point dominates: (score higher is better, cost lower is
/// better). Ties are kept.
pub fn pareto(points: &[(f64, f64)]) -> Vec<bool> {
    points
        .iter()
        .map(|&(s, c)| {
            !points
                .iter()
                .any(|&(s2, c2)| s2 >= s && c2 <= c && (s2 > s || c2 < c))
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PALETTE: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// An SVG scatter of score (y) against `x`, one colour per task. Scores of different tasks are
/// not comparable, so the Pareto front is computed within each task: its points are drawn large
/// and outlined, joined by a dashed line.
fn frontier_svg(rows: &[Row], x: &str, x_label: &str, lower_is_better: bool) -> String {
    // (label, task, x, score)
    let pts: Vec<(String, String, f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            Some((
                cell(r, "variant"),
                cell(r, "task"),
                r.get(x)?.as_f64()?,
                r.get("score")?.as_f64()?,
            ))
        })
        .collect();
    let (w, h, left, right, top, bottom) = (700.0, 420.0, 60.0, 170.0, 30.0, 60.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    svg += &format!(r##"<rect width="{w}" height="{h}" fill="#fff"/>"##);
    if pts.is_empty() {
        svg += &format!(
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#666">no variant has both a score and {}</text></svg>"##,
            w / 2.0,
            h / 2.0,
            esc(x_label)
        );
        return svg;
    }
    let mut tasks: Vec<String> = pts.iter().map(|p| p.1.clone()).collect();
    tasks.dedup();
    tasks.sort();
    tasks.dedup();
    let mut front = vec![false; pts.len()];
    for t in &tasks {
        let idx: Vec<usize> = (0..pts.len()).filter(|&i| &pts[i].1 == t).collect();
        let costs: Vec<(f64, f64)> = idx
            .iter()
            .map(|&i| (pts[i].3, if lower_is_better { pts[i].2 } else { -pts[i].2 }))
            .collect();
        for (&i, on) in idx.iter().zip(pareto(&costs)) {
            front[i] = on;
        }
    }
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.2), b.max(p.2)));
    let (xmin, xmax) = if xmax > xmin {
        (xmin, xmax)
    } else {
        (xmin - 1.0, xmax + 1.0)
    };
    let pad = (xmax - xmin) * 0.06;
    let (xmin, xmax) = (xmin - pad, xmax + pad);
    let sx = |v: f64| left + (v - xmin) / (xmax - xmin) * (w - left - right);
    let sy = |v: f64| h - bottom - v.clamp(0.0, 1.0) * (h - top - bottom);
    svg += &format!(
        r##"<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="#333"/>"##,
        y0 = h - bottom,
        x1 = w - right
    );
    for k in 0..=4 {
        let v = k as f64 / 4.0;
        svg += &format!(
            r##"<line x1="{left}" y1="{y}" x2="{x1}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end" fill="#333">{v:.2}</text>"##,
            left - 6.0,
            sy(v) + 4.0,
            x1 = w - right,
            y = sy(v)
        );
        let xv = xmin + (xmax - xmin) * v;
        svg += &format!(
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#333">{}</text>"##,
            sx(xv),
            h - bottom + 16.0,
            short_number(xv)
        );
    }
    svg += &format!(
        r##"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">score (0–1)</text>"##,
        left + (w - left - right) / 2.0,
        h - 18.0,
        esc(x_label),
        h / 2.0,
        h / 2.0
    );
    for (ti, t) in tasks.iter().enumerate() {
        let color = PALETTE[ti % PALETTE.len()];
        let mut line: Vec<(f64, f64)> = (0..pts.len())
            .filter(|&i| front[i] && &pts[i].1 == t)
            .map(|i| (sx(pts[i].2), sy(pts[i].3)))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        if line.len() > 1 {
            let path: Vec<String> = line.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            svg += &format!(
                r##"<polyline points="{}" fill="none" stroke="{color}" stroke-dasharray="4 3"/>"##,
                path.join(" ")
            );
        }
        // Legend.
        let ly = top + 14.0 * ti as f64;
        svg += &format!(
            r##"<circle cx="{}" cy="{ly}" r="5" fill="{color}"/><text x="{}" y="{}">task {}</text>"##,
            w - right + 16.0,
            w - right + 26.0,
            ly + 4.0,
            esc(t)
        );
    }
    let ly = top + 14.0 * tasks.len() as f64 + 6.0;
    svg += &format!(
        r##"<circle cx="{}" cy="{ly}" r="6" fill="#fff" stroke="#000" stroke-width="2"/><text x="{}" y="{}">Pareto-optimal</text>"##,
        w - right + 16.0,
        w - right + 26.0,
        ly + 4.0
    );
    for (i, (label, task, xv, s)) in pts.iter().enumerate() {
        let ti = tasks.iter().position(|t| t == task).unwrap_or(0);
        let color = PALETTE[ti % PALETTE.len()];
        let (r, stroke) = if front[i] {
            (6.5, r##" stroke="#000" stroke-width="2""##)
        } else {
            (4.5, "")
        };
        svg += &format!(
            r##"<circle cx="{:.1}" cy="{:.1}" r="{r}" fill="{color}"{stroke}><title>{}</title></circle><text x="{:.1}" y="{:.1}" fill="#333" font-size="10">{}</text>"##,
            sx(*xv),
            sy(*s),
            esc(&format!("{label} [{task}]")),
            sx(*xv) + 8.0,
            sy(*s) - 7.0 - 10.0 * (i % 2) as f64,
            esc(label)
        );
    }
    svg + "</svg>"
}

/// Axis numbers: few significant digits.
fn short_number(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The HTML report: both frontiers and the full metrics table.
pub fn html(title: &str, rows: &[Row], metrics: &[String]) -> String {
    let cols = shown(metrics);
    let mut t = String::from("<table><tr>");
    for (_, h) in &cols {
        t += &format!("<th>{}</th>", esc(h));
    }
    t += "</tr>";
    for r in rows {
        t += "<tr>";
        for (k, _) in &cols {
            t += &format!("<td>{}</td>", esc(&cell_ci(r, k)));
        }
        t += "</tr>";
    }
    t += "</table>";
    let notes: String = rows
        .iter()
        .filter_map(|r| {
            r.get("null_reasons").filter(|v| !v.is_null())?;
            Some(format!(
                "<li><b>{} [{}]</b>: {}</li>",
                esc(&cell(r, "variant")),
                esc(&cell(r, "task")),
                esc(&cell(r, "null_reasons"))
            ))
        })
        .collect();
    // How the energy figures were obtained, over every stage of every row.
    let sources: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r.get("energy_sources").and_then(|v| v.as_object()))
        .flat_map(|m| m.values().filter_map(|v| v.as_str().map(str::to_string)))
        .collect();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{t0} — edge-eval report</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}.plots{{display:flex;flex-wrap:wrap;gap:1em}}</style></head>
<body><h1>{t0}: efficiency frontier</h1>
<p>Each point is a variant on a task, coloured by task. Outlined points are Pareto-optimal within their task (no other variant of that task scores at least as well at lower cost, or higher density); the dashed line joins them. Hover a point for its name.</p>
<div class="plots"><div><h2>Score vs energy per request</h2>{svg1}</div><div><h2>Score vs system density ρ_sys</h2>{svg2}</div></div>
<h2>Deployment metrics</h2>{t}
<p>Energy sources: {src}</p>
{notes}
<p>Written by edge-eval {ver}. The full table, with intervals, is metrics.parquet beside this file.</p></body></html>
"#,
        t0 = esc(title),
        svg1 = frontier_svg(
            rows,
            "energy_per_request_j",
            "energy per request (J) — lower is better",
            true
        ),
        svg2 = frontier_svg(
            rows,
            "rho_sys",
            "ρ_sys (tokens/s per GB) — higher is better",
            false
        ),
        src = esc(&sources.into_iter().collect::<Vec<_>>().join(" | ")),
        notes = if notes.is_empty() {
            String::new()
        } else {
            format!("<h3>Null metrics</h3><ul>{notes}</ul>")
        },
        ver = env!("CARGO_PKG_VERSION"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front() {
        // (score, cost)
        let pts = [(0.9, 10.0), (0.8, 5.0), (0.7, 6.0), (0.9, 12.0), (0.5, 1.0)];
        assert_eq!(pareto(&pts), vec![true, true, false, false, true]);
        assert_eq!(pareto(&[(0.5, 1.0), (0.5, 1.0)]), vec![true, true]);
    }
}
