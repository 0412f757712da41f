//! `report.html`: one self-contained page (inline SVG, no JavaScript, works offline) — what ran
//! where (pipeline, digest, version, hardware, date), a banner when energy is estimated, the
//! efficiency frontiers (Pareto points marked, 95 % interval bars, the paper's points with
//! `report { compare = edge_eval_paper }`), serving by load (throughput by batch size, latency
//! percentiles) and the metrics table.

use super::{cell, cell_ci, shown};
use crate::stages::Row;
use std::collections::BTreeMap;

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

/// What the page is made of: the metrics rows and what beside them.
pub struct Page<'a> {
    pub title: &'a str,
    /// `metrics.parquet`'s rows.
    pub rows: &'a [Row],
    /// The metrics the tables show (empty: all).
    pub metrics: &'a [String],
    /// The run's `edge_eval.*` keys (pipeline, digest, version, hardware, written_at_us).
    pub meta: &'a BTreeMap<String, String>,
    /// `measure.parquet`'s rows (its summaries make the serving views).
    pub serving: &'a [Row],
    /// `paper.parquet`'s rows (with `report { compare = edge_eval_paper }`).
    pub paper: &'a [Row],
}

/// A value of a row's column as a number.
fn num(r: &Row, k: &str) -> Option<f64> {
    r.get(k)?.as_f64().filter(|x| x.is_finite())
}

/// Tick values for an axis over `lo..hi`: round numbers (1, 2 or 5 × a power of ten) on a
/// linear axis, powers of ten (with 2 and 5 between when there are few) on a log one.
pub fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    if log {
        let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        let steps: &[f64] = if b - a <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
        let t: Vec<f64> = (a..=b)
            .flat_map(|e| steps.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| *v >= lo * 0.999 && *v <= hi * 1.001)
            .collect();
        // Less than a decade with no 1, 2 or 5 inside (600–900): round numbers as on a linear
        // axis.
        if t.len() >= 2 {
            return t;
        }
        return ticks(lo, hi, false);
    }
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    // i × step as the decimal it is (6 × 0.1 is 0.6000000000000001; 6 / 10 is 0.6).
    let per_unit = (1.0 / step).round();
    (first..=last)
        .map(|i| match step < 1.0 {
            true => i as f64 / per_unit,
            false => i as f64 * step,
        })
        .collect()
}

/// A tick's text: as few digits as the step needs.
fn tick_text(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').to_string()
    }
}

/// One point of a scatter.
struct Point {
    label: String,
    group: String,
    x: f64,
    y: f64,
    /// 95 % intervals, drawn as bars.
    x_ci: Option<(f64, f64)>,
    y_ci: Option<(f64, f64)>,
    /// Pareto-optimal within its group (drawn large and outlined).
    front: bool,
    /// A point of the paper's, not of this run (drawn as a hollow diamond).
    reference: bool,
}

/// The axes of a plot.
struct Axes<'a> {
    x_label: &'a str,
    y_label: &'a str,
    log_x: bool,
    /// The y range (None: from the points).
    y_range: Option<(f64, f64)>,
    /// Join every point of a group (a series), not only its Pareto front.
    series: bool,
}

/// An SVG scatter: full-width (it scales with the page), round ticks, interval bars, a dashed
/// line through each group's front, labels placed where they overlap no other label.
fn scatter(points: &[Point], axes: &Axes, empty: &str) -> String {
    // A log axis has no place for zero or less.
    let points: Vec<&Point> = points.iter().filter(|p| !axes.log_x || p.x > 0.0).collect();
    let (w, h, left, right, top, bottom) = (900.0, 420.0, 70.0, 190.0, 20.0, 56.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" preserveAspectRatio="xMinYMin meet" font-family="sans-serif" font-size="12" role="img">"#
    );
    svg += &format!(r##"<rect width="{w}" height="{h}" fill="#fff"/>"##);
    if points.is_empty() {
        svg += &format!(
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#666">{}</text></svg>"##,
            w / 2.0,
            h / 2.0,
            esc(empty)
        );
        return svg;
    }
    let xs = points.iter().flat_map(|p| {
        let (a, b) = p.x_ci.unwrap_or((p.x, p.x));
        [p.x, a, b]
    });
    let xs: Vec<f64> = xs
        .filter(|v| v.is_finite() && (!axes.log_x || *v > 0.0))
        .collect();
    let (mut xmin, mut xmax) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let tx = |v: f64| if axes.log_x { v.log10() } else { v };
    if xmax <= xmin {
        (xmin, xmax) = if axes.log_x {
            (xmin / 2.0, xmax * 2.0)
        } else {
            (xmin - 1.0, xmax + 1.0)
        };
    }
    let pad = (tx(xmax) - tx(xmin)) * 0.06;
    let (x0, x1) = (tx(xmin) - pad, tx(xmax) + pad);
    let (y0, y1) = axes.y_range.unwrap_or_else(|| {
        let ys: Vec<f64> = points.iter().map(|p| p.y).collect();
        let (a, b) = ys
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
        // One value (or all equal): a range around it, so the ticks are distinct.
        let pad = if b > a {
            (b - a) * 0.08
        } else {
            a.abs().max(1.0) * 0.1
        };
        (a - pad, b + pad)
    });
    let (pw, ph) = (w - left - right, h - top - bottom);
    let sx = |v: f64| left + (tx(v) - x0) / (x1 - x0) * pw;
    let sy = |v: f64| top + ph - (v.clamp(y0, y1) - y0) / (y1 - y0) * ph;
    // Grid and ticks.
    let (bx, by) = (top + ph, left + pw);
    let inv = |t: f64| if axes.log_x { 10f64.powf(t) } else { t };
    for v in ticks(inv(x0), inv(x1), axes.log_x) {
        let x = sx(v);
        svg += &format!(
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bx}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle" fill="#333">{}</text>"##,
            bx + 16.0,
            tick_text(v)
        );
    }
    for v in ticks(y0, y1, false) {
        let y = sy(v);
        svg += &format!(
            r##"<line x1="{left}" y1="{y:.1}" x2="{by}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end" fill="#333">{}</text>"##,
            left - 6.0,
            y + 4.0,
            tick_text(v)
        );
    }
    svg += &format!(
        r##"<line x1="{left}" y1="{bx}" x2="{by}" y2="{bx}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bx}" stroke="#333"/>"##
    );
    svg += &format!(
        r##"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"##,
        left + pw / 2.0,
        h - 12.0,
        esc(axes.x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        esc(axes.y_label)
    );
    let mut groups: Vec<&str> = points.iter().map(|p| p.group.as_str()).collect();
    groups.sort();
    groups.dedup();
    let color = |g: &str| {
        let i = groups.iter().position(|x| *x == g).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    // Each group's front, joined.
    for g in &groups {
        let mut line: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| (p.front || axes.series) && !p.reference && p.group == *g)
            .map(|p| (sx(p.x), sy(p.y)))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        if line.len() > 1 {
            let path: Vec<String> = line.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            svg += &format!(
                r##"<polyline points="{}" fill="none" stroke="{}" stroke-dasharray="4 3"/>"##,
                path.join(" "),
                color(g)
            );
        }
    }
    // Interval bars, then the points over them.
    for p in &points {
        let c = color(&p.group);
        if let Some((lo, hi)) = p.y_ci {
            svg += &format!(
                r##"<line class="ci" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{c}" stroke-width="1.2" opacity="0.7"/>"##,
                sy(lo),
                sy(hi),
                x = sx(p.x)
            );
        }
        if let Some((lo, hi)) = p.x_ci.filter(|(lo, _)| !axes.log_x || *lo > 0.0) {
            svg += &format!(
                r##"<line class="ci" x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{c}" stroke-width="1.2" opacity="0.7"/>"##,
                sx(lo),
                sx(hi.min(inv(x1))),
                y = sy(p.y)
            );
        }
    }
    let mut placed: Vec<(f64, f64, f64, f64)> = vec![];
    for p in &points {
        let (x, y, c) = (sx(p.x), sy(p.y), color(&p.group));
        let title = esc(&format!("{} [{}]", p.label, p.group));
        svg += &if p.reference {
            format!(
                r##"<path class="paper" d="M{x:.1},{:.1} l6,6 l-6,6 l-6,-6 z" fill="#fff" stroke="{c}" stroke-width="2"><title>{title} (paper)</title></path>"##,
                y - 6.0
            )
        } else if p.front {
            format!(
                r##"<circle class="point" cx="{x:.1}" cy="{y:.1}" r="6.5" fill="{c}" stroke="#000" stroke-width="2"><title>{title}</title></circle>"##
            )
        } else {
            format!(
                r##"<circle class="point" cx="{x:.1}" cy="{y:.1}" r="4.5" fill="{c}"><title>{title}</title></circle>"##
            )
        };
        if p.label.is_empty() {
            continue;
        }
        // The label where it overlaps no label placed before (else the first place tried).
        let (lw, lh) = (6.2 * p.label.chars().count() as f64, 11.0);
        let spots = [
            (9.0, -6.0),
            (9.0, 14.0),
            (-9.0 - lw, -6.0),
            (-9.0 - lw, 14.0),
            (-lw / 2.0, -12.0),
            (-lw / 2.0, 22.0),
        ];
        let free = |bx: f64, by: f64| {
            placed.iter().all(|&(px, py, pw, ph)| {
                bx + lw < px || px + pw < bx || by < py - ph || py < by - lh
            }) && bx >= 0.0
                && bx + lw <= w
        };
        let (dx, dy) = spots
            .iter()
            .copied()
            .find(|(dx, dy)| free(x + dx, y + dy))
            .unwrap_or(spots[0]);
        placed.push((x + dx, y + dy, lw, lh));
        svg += &format!(
            r##"<text x="{:.1}" y="{:.1}" fill="#333" font-size="10">{}</text>"##,
            x + dx,
            y + dy,
            esc(&p.label)
        );
    }
    // Legend.
    for (i, g) in groups.iter().enumerate() {
        let ly = top + 16.0 * i as f64 + 6.0;
        svg += &format!(
            r##"<circle cx="{}" cy="{ly}" r="5" fill="{}"/><text x="{}" y="{}">{}</text>"##,
            w - right + 20.0,
            color(g),
            w - right + 30.0,
            ly + 4.0,
            esc(g)
        );
    }
    let mut ly = top + 16.0 * groups.len() as f64 + 10.0;
    if points.iter().any(|p| p.front) {
        svg += &format!(
            r##"<circle cx="{}" cy="{ly}" r="6" fill="#fff" stroke="#000" stroke-width="2"/><text x="{}" y="{}">Pareto-optimal</text>"##,
            w - right + 20.0,
            w - right + 30.0,
            ly + 4.0
        );
        ly += 18.0;
    }
    if points.iter().any(|p| p.reference) {
        svg += &format!(
            r##"<path d="M{},{} l6,6 l-6,6 l-6,-6 z" fill="#fff" stroke="#333" stroke-width="2"/><text x="{}" y="{}">the paper (T4)</text>"##,
            w - right + 20.0,
            ly - 6.0,
            w - right + 30.0,
            ly + 4.0
        );
    }
    svg + "</svg>"
}

/// A row's interval of `base` (`{base}_ci_lo`, `{base}_ci_hi`).
fn ci(r: &Row, base: &str) -> Option<(f64, f64)> {
    Some((
        num(r, &format!("{base}_ci_lo"))?,
        num(r, &format!("{base}_ci_hi"))?,
    ))
}

/// Score (y) against `x` for the run's variants, the front within each task, and the paper's
/// matching points (`paper_x` of its rows, with its score) when it is set beside.
fn frontier(page: &Page, x: &str, paper_x: &str, lower_is_better: bool, axes: &Axes) -> String {
    let mut points: Vec<Point> = page
        .rows
        .iter()
        .filter_map(|r| {
            Some(Point {
                label: cell(r, "variant"),
                group: cell(r, "task"),
                x: num(r, x)?,
                y: num(r, "score")?,
                x_ci: ci(r, x),
                y_ci: ci(r, "score"),
                front: false,
                reference: false,
            })
        })
        .collect();
    let mut groups: Vec<String> = points.iter().map(|p| p.group.clone()).collect();
    groups.sort();
    groups.dedup();
    for g in &groups {
        let idx: Vec<usize> = (0..points.len())
            .filter(|&i| &points[i].group == g)
            .collect();
        let costs: Vec<(f64, f64)> = idx
            .iter()
            .map(|&i| {
                (
                    points[i].y,
                    if lower_is_better {
                        points[i].x
                    } else {
                        -points[i].x
                    },
                )
            })
            .collect();
        for (&i, on) in idx.iter().zip(pareto(&costs)) {
            points[i].front = on;
        }
    }
    for b in page.paper {
        if let (Some(px), Some(ps)) = (num(b, paper_x), num(b, "paper_score")) {
            points.push(Point {
                label: cell(b, "paper_variant"),
                group: cell(b, "task"),
                x: px,
                y: ps,
                x_ci: None,
                y_ci: None,
                front: false,
                reference: true,
            });
        }
    }
    scatter(
        &points,
        axes,
        &format!("no variant has both a score and {}", axes.x_label),
    )
}

/// Throughput (y) by batch size (x, log) of each variant × task: its measure summaries, a line
/// each (named by the variant alone where it served one task).
fn throughput_by_batch(serving: &[Row]) -> String {
    let tasks_of = |variant: &str| {
        let mut tasks: Vec<String> = serving
            .iter()
            .filter(|r| cell(r, "variant") == variant)
            .map(|r| cell(r, "task"))
            .collect();
        tasks.sort();
        tasks.dedup();
        tasks.len()
    };
    let points: Vec<Point> = serving
        .iter()
        .filter(|r| r.get("row").and_then(|v| v.as_str()) == Some("summary"))
        .filter_map(|r| {
            Some(Point {
                // One line per variant × task; the legend names the lines.
                label: String::new(),
                group: match tasks_of(&cell(r, "variant")) {
                    1 => cell(r, "variant"),
                    _ => format!("{} [{}]", cell(r, "variant"), cell(r, "task")),
                },
                x: num(r, "batch")?,
                y: num(r, "tokens_per_s")?,
                x_ci: None,
                y_ci: None,
                front: false,
                reference: false,
            })
        })
        .collect();
    let axes = Axes {
        x_label: "concurrent requests per forward pass (batch, log scale)",
        y_label: "generated tokens/s",
        log_x: true,
        y_range: None,
        series: true,
    };
    scatter(&points, &axes, "no measure stage in this run")
}

/// The serving summaries as a table: throughput and latency percentiles per batch size.
fn latency_table(serving: &[Row]) -> String {
    let cols = [
        ("variant", "variant"),
        ("task", "task"),
        ("batch", "batch"),
        ("tokens_per_s", "tokens/s"),
        ("prompt_tokens_per_s", "prompt tokens/s"),
        ("ttft_ms_p50", "TTFT p50 ms"),
        ("ttft_ms_p90", "TTFT p90 ms"),
        ("ttft_ms_p99", "TTFT p99 ms"),
        ("itl_ms_p50", "ITL p50 ms"),
        ("itl_ms_p99", "ITL p99 ms"),
        ("energy_per_token_j", "J/token"),
    ];
    let rows: Vec<&Row> = serving
        .iter()
        .filter(|r| r.get("row").and_then(|v| v.as_str()) == Some("summary"))
        .collect();
    if rows.is_empty() {
        return "<p>No measure stage in this run.</p>".into();
    }
    let mut t = String::from(r#"<table class="serving"><tr>"#);
    for (_, h) in cols {
        t += &format!("<th>{}</th>", esc(h));
    }
    t += "</tr>";
    for r in rows {
        t += "<tr>";
        for (k, _) in cols {
            t += &format!("<td>{}</td>", esc(&cell(r, k)));
        }
        t += "</tr>";
    }
    t + "</table>"
}

/// The HTML report.
pub fn html(page: &Page) -> String {
    let cols = shown(page.metrics);
    let mut t = String::from(r#"<table class="metrics"><tr>"#);
    for (_, h) in &cols {
        t += &format!("<th>{}</th>", esc(h));
    }
    t += "</tr>";
    for r in page.rows {
        t += "<tr>";
        for (k, _) in &cols {
            t += &format!("<td>{}</td>", esc(&cell_ci(r, k)));
        }
        t += "</tr>";
    }
    t += "</table>";
    let notes: String = page
        .rows
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
    // How each stage behind the rows had its energy (metrics.parquet's energy_sources).
    let by_stage: BTreeMap<&str, &str> = page
        .rows
        .iter()
        .filter_map(|r| r.get("energy_sources").and_then(|v| v.as_object()))
        .flat_map(|m| {
            m.iter()
                .filter_map(|(id, s)| Some((id.as_str(), s.as_str()?)))
        })
        .collect();
    let sources: std::collections::BTreeSet<&str> = by_stage.values().copied().collect();
    let estimated: Vec<&str> = by_stage
        .iter()
        .filter(|(_, s)| **s == "estimated")
        .map(|(id, _)| *id)
        .collect();
    let which = match (estimated.len(), by_stage.len()) {
        (e, all) if e == all => format!("all {all} stages behind these rows"),
        (e, all) if e <= 6 => format!(
            "{e} of the {all} stages behind these rows ({})",
            estimated.join(", ")
        ),
        (e, all) => format!(
            "{e} of the {all} stages behind these rows (energy_sources in metrics.parquet says which)"
        ),
    };
    let banner = if estimated.is_empty() {
        String::new()
    } else {
        format!(
            r#"<p class="banner" id="estimated">Energy is <b>estimated</b>, not measured, for {}: the declared <code>cpu_power</code> × the CPU time the work used (no energy counter was readable). The metrics resting on that energy compare variants with each other, not with figures from a meter.</p>"#,
            esc(&which)
        )
    };
    let meta = |k: &str| page.meta.get(&format!("edge_eval.{k}")).cloned();
    let written = meta("written_at_us")
        .and_then(|us| us.parse::<i64>().ok())
        .map(|us| runtime::chat::strftime("%Y-%m-%d %H:%M UTC", (us.max(0) / 1_000_000) as u64));
    let digest = meta("pipeline_digest").map(|d| d.chars().take(12).collect::<String>());
    let facts = [
        ("pipeline", meta("pipeline")),
        ("pipeline digest", digest),
        ("edge-eval", meta("version")),
        ("hardware", meta("hardware")),
        ("written", written),
    ];
    let run: String = facts
        .iter()
        .map(|(k, v)| {
            format!(
                "<dt>{k}</dt><dd>{}</dd>",
                esc(v.as_deref().unwrap_or("unknown"))
            )
        })
        .collect();
    let paper_note = if page.paper.is_empty() {
        ""
    } else {
        "<p>Hollow diamonds: the EDGE-EVAL paper's matching rows (vLLM on a Tesla T4; paper.parquet says how each was matched).</p>"
    };
    let energy_axes = Axes {
        x_label: "energy per request (J) — lower is better",
        y_label: "score (0–1)",
        log_x: false,
        y_range: Some((0.0, 1.0)),
        series: false,
    };
    let density_axes = Axes {
        x_label: "ρ_sys (tokens/s per GB, log scale) — higher is better",
        y_label: "score (0–1)",
        log_x: true,
        y_range: Some((0.0, 1.0)),
        series: false,
    };
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{t0} — edge-eval report</title>
<style>body{{font-family:sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}}table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){{text-align:left}}dl.run{{display:grid;grid-template-columns:max-content 1fr;gap:2px 1em}}dt{{font-weight:bold}}dd{{margin:0}}.banner{{background:#fff4d6;border:1px solid #e0b100;padding:.6em 1em}}figure{{margin:1em 0}}svg{{display:block;max-width:100%;height:auto}}</style></head>
<body><h1>{t0}: deployment study</h1>
<dl class="run">{run}</dl>
{banner}
<h2>Efficiency frontiers</h2>
<p>Each point is a variant on a task, coloured by task; bars are 95 % intervals. Outlined points are Pareto-optimal within their task (no other variant of that task scores at least as well at lower cost, or higher density); the dashed line joins them. Hover a point for its name.</p>{paper_note}
<figure id="frontier-energy"><figcaption>Score vs energy per request</figcaption>{svg1}</figure>
<figure id="frontier-density"><figcaption>Score vs system density ρ_sys</figcaption>{svg2}</figure>
<h2>Serving by load</h2>
<figure id="throughput"><figcaption>Throughput by batch size</figcaption>{svg3}</figure>
{latency}
<h2>Deployment metrics</h2>{t}
<p>Energy sources: {src}</p>
{notes}
<p>Written by edge-eval {ver}. Every column, with its description, is in metrics.parquet beside this file.</p></body></html>
"#,
        t0 = esc(page.title),
        svg1 = frontier(
            page,
            "energy_per_request_j",
            "paper_energy_per_request_j",
            true,
            &energy_axes
        ),
        svg2 = frontier(page, "rho_sys", "paper_rho_sys", false, &density_axes),
        svg3 = throughput_by_batch(page.serving),
        latency = latency_table(page.serving),
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

    #[test]
    fn the_banner_says_which_stages_energy_is_estimated() {
        let row = |sources: serde_json::Value| {
            serde_json::json!({"variant": "v", "task": "qa", "energy_sources": sources})
                .as_object()
                .unwrap()
                .clone()
        };
        let meta = BTreeMap::new();
        let page = |rows: &[Row]| {
            html(&Page {
                title: "t",
                rows,
                metrics: &[],
                meta: &meta,
                serving: &[],
                paper: &[],
            })
        };
        let mixed = page(&[row(
            serde_json::json!({"measure[v]": "estimated", "v": "counter"}),
        )]);
        assert!(
            mixed.contains("for 1 of the 2 stages behind these rows (measure[v])"),
            "{mixed}"
        );
        let metered = page(&[row(serde_json::json!({"measure[v]": "counter"}))]);
        assert!(!metered.contains(r#"id="estimated""#));
        assert!(
            metered.contains("<dd>unknown</dd>"),
            "missing run facts say so"
        );
    }

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        assert_eq!(ticks(0.0, 1.0, false), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(ticks(3.7, 8.2, false), vec![4.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(ticks(0.013, 0.047, false), vec![0.02, 0.03, 0.04]);
        assert_eq!(ticks(8.0, 9000.0, true), vec![10.0, 100.0, 1000.0]);
        assert_eq!(ticks(11.0, 430.0, true), vec![20.0, 50.0, 100.0, 200.0]);
        assert_eq!(ticks(600.0, 900.0, true), vec![600.0, 700.0, 800.0, 900.0]);
        assert_eq!(tick_text(0.2), "0.2");
        assert_eq!(tick_text(1000.0), "1000");
    }
}
