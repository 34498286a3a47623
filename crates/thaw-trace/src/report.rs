//! Reports: a self-contained HTML page with inline SVG plots, and plain-text tables.
//!
//! Plots are drawn by plotters' SVG backend without any font crate: plotters estimates text
//! extents itself and the SVG names a generic `sans-serif` family, so nothing here needs system
//! fonts or fontconfig, and the page renders in any browser offline.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::analyze::{AnalysisReport, CategoryReport, Dist};
use crate::event::format_rfc3339_us;
use crate::files::summary::{FilesSummary, ReadyBy};
use crate::sim::{fmt_bytes, SimReport};

/// Plot size in pixels.
const W: u32 = 640;
const H: u32 = 400;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// How to print axis values.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Bytes,
    Seconds,
    Count,
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => human_bytes(v),
        Unit::Seconds => human_seconds(v),
        Unit::Count => {
            if v >= 1e6 {
                format!("{:.1}M", v / 1e6)
            } else if v >= 1e3 {
                format!("{:.1}k", v / 1e3)
            } else {
                format!("{v:.0}")
            }
        }
    }
}

/// Bytes in binary units with 3 significant digits (`1.5 MiB`, `977 KiB`).
pub fn human_bytes(v: f64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = v;
    let mut i = 0;
    while x >= 1024.0 && i < U.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    let digits = if i == 0 || x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    let mut n = format!("{x:.digits$}");
    if n.contains('.') {
        n = n.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{n} {}", U[i])
}

/// Seconds as s, min, h or d.
pub fn human_seconds(v: f64) -> String {
    if v < 1e-3 {
        format!("{:.0} µs", v * 1e6)
    } else if v < 1.0 {
        format!("{:.1} ms", v * 1e3)
    } else if v < 120.0 {
        format!("{v:.1} s")
    } else if v < 7200.0 {
        format!("{:.1} min", v / 60.0)
    } else if v < 172_800.0 {
        format!("{:.1} h", v / 3600.0)
    } else {
        format!("{:.1} d", v / 86_400.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot draw plot {title:?}: {why}")]
    Plot { title: String, why: String },
}

fn plot_err<E: std::fmt::Debug>(title: &str) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Plot {
        title: title.to_string(),
        why: format!("{e:?}"),
    }
}

/// Draws the legend and writes the plot out.
fn finish<'a, 'b: 'a>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>,
    root: &DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    legend: SeriesLabelPosition,
    title: &str,
) -> Result<(), ReportError> {
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err(title))?;
    root.present().map_err(plot_err(title))
}

/// One line of a CDF plot.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(u64, f64)],
}

/// A CDF plot (x on a log scale) as an SVG document.
pub fn cdf_svg(
    title: &str,
    x_label: &str,
    unit: Unit,
    series: &[Series],
) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(title))?;
        // The x axis is linear over log_b(value), labelled with b^tick: powers of two for bytes
        // (1 MiB, 2 MiB, ...), of ten otherwise, so ticks land on round values.
        let base: f64 = if matches!(unit, Unit::Bytes) {
            2.0
        } else {
            10.0
        };
        let to_axis = move |v: f64| v.max(1.0).log(base);
        let values = || series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let xmax = values().max().unwrap_or(1).max(2) as f64;
        let xmin = values().filter(|&v| v > 0).min().unwrap_or(1).max(1) as f64;
        let (lo, hi) = (to_axis(xmin).floor(), to_axis(xmax).ceil());
        let hi = if hi <= lo { lo + 1.0 } else { hi };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(52)
            .build_cartesian_2d(lo..hi, 0f64..1.0)
            .map_err(plot_err(title))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("share (CDF)")
            .x_labels(10)
            .x_label_formatter(&|v| fmt_value(base.powf(*v), unit))
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_err(title))?;
        for (i, s) in series.iter().enumerate() {
            if s.points.is_empty() {
                continue;
            }
            let color = COLORS[i % COLORS.len()];
            // A step line: each point holds its share until the next value.
            let mut pts = Vec::with_capacity(s.points.len() * 2);
            let mut prev = 0.0;
            for &(x, y) in s.points {
                let x = to_axis(x as f64);
                pts.push((x, prev));
                pts.push((x, y));
                prev = y;
            }
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(plot_err(title))?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        finish(&mut chart, &root, SeriesLabelPosition::LowerRight, title)?;
    }
    Ok(svg)
}

/// Miss-ratio curves: for each policy, the miss ratio (or byte miss ratio)
/// over the cache size; two-tier runs are placed at their total size (fast + slow).
pub fn mrc_svg(sim: &SimReport, bytes: bool) -> Result<String, ReportError> {
    let title = if bytes {
        "byte miss ratio over cache size"
    } else {
        "miss ratio over cache size"
    };
    let mut policies: Vec<&str> = Vec::new();
    for r in &sim.runs {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(title))?;
        // x: log2 of the total cache size, labelled in bytes (powers of two are round sizes).
        let sizes: Vec<f64> = sim
            .runs
            .iter()
            .map(|r| (r.fast_bytes + r.slow_bytes) as f64)
            .filter(|&s| s > 0.0)
            .map(f64::log2)
            .collect();
        let lo = sizes.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = sizes.iter().copied().fold(0.0, f64::max);
        let (lo, hi) = if lo.is_finite() {
            (lo.floor() - 0.5, hi.ceil() + 0.5)
        } else {
            (0.0, 1.0)
        };
        let ymax = sim
            .runs
            .iter()
            .map(|r| {
                if bytes {
                    r.byte_miss_ratio
                } else {
                    r.miss_ratio
                }
            })
            .fold(0.0, f64::max)
            .clamp(0.01, 1.0)
            * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(52)
            .build_cartesian_2d(lo..hi, 0f64..ymax)
            .map_err(plot_err(title))?;
        chart
            .configure_mesh()
            .x_desc("cache size")
            .y_desc(if bytes {
                "byte miss ratio"
            } else {
                "miss ratio"
            })
            .x_label_formatter(&|v| human_bytes(v.exp2()))
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_err(title))?;
        for (i, p) in policies.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut pts: Vec<(f64, f64)> = sim
                .runs
                .iter()
                .filter(|r| r.policy == *p)
                .map(|r| {
                    (
                        ((r.fast_bytes + r.slow_bytes) as f64).max(1.0).log2(),
                        if bytes {
                            r.byte_miss_ratio
                        } else {
                            r.miss_ratio
                        },
                    )
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err(title))?
                .label(*p)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|pt| Circle::new(pt, 3, color.filled())))
                .map_err(plot_err(title))?;
        }
        finish(&mut chart, &root, SeriesLabelPosition::UpperRight, title)?;
    }
    Ok(svg)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The CDF plots of the report: (title, x label, unit, accessor).
type Metric = (
    &'static str,
    &'static str,
    Unit,
    fn(&CategoryReport) -> &Dist,
);

const METRICS: [Metric; 8] = [
    (
        "layer pull sizes",
        "bytes per layer GET",
        Unit::Bytes,
        |c| &c.layer_pull_size,
    ),
    (
        "image pull sizes",
        "bytes per image pull",
        Unit::Bytes,
        |c| &c.image_pull_size,
    ),
    ("pulls per image", "pulls", Unit::Count, |c| {
        &c.pulls_per_image
    }),
    ("pulls per layer", "pulls", Unit::Count, |c| {
        &c.pulls_per_layer
    }),
    (
        "interval between pulls of an image",
        "seconds",
        Unit::Seconds,
        |c| &c.pull_interval_s,
    ),
    (
        "active duration (first to last pull)",
        "seconds",
        Unit::Seconds,
        |c| &c.active_duration_s,
    ),
    ("push to first pull", "seconds", Unit::Seconds, |c| {
        &c.push_to_first_pull_s
    }),
    ("distinct clients per image", "clients", Unit::Count, |c| {
        &c.clients_per_image
    }),
];

/// The HTML report: analysis, and simulation results when given.
pub fn html(
    a: &AnalysisReport,
    sim: Option<&SimReport>,
    title: &str,
) -> Result<String, ReportError> {
    page(Some(a), sim, None, title)
}

/// The HTML report of any of: a trace's analysis, simulation results, a file-access recording.
pub fn page(
    a: Option<&AnalysisReport>,
    sim: Option<&SimReport>,
    files: Option<&FilesSummary>,
    title: &str,
) -> Result<String, ReportError> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;color:#222;max-width:1400px}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}\
         .plots{{display:flex;flex-wrap:wrap;gap:12px}}.plots>div{{border:1px solid #ddd}}\
         .note{{color:#555;font-size:90%}}</style></head><body>\n<h1>{t}</h1>\n",
        t = esc(title)
    );
    if let Some(a) = a {
        analysis_html(&mut h, a)?;
    }
    if let Some(s) = sim {
        h.push_str("<h2>Simulation</h2>\n<div class=\"plots\">");
        let _ = writeln!(
            h,
            "<div>{}</div><div>{}</div></div>",
            strip_xml_decl(&mrc_svg(s, false)?),
            strip_xml_decl(&mrc_svg(s, true)?)
        );
        h.push_str("<pre>");
        h.push_str(&esc(&sim_table(s)));
        h.push_str("</pre>\n");
    }
    if let Some(f) = files {
        files_html(&mut h, f)?;
    }
    if let Some(a) = a.filter(|a| !a.read.samples.is_empty()) {
        h.push_str("<h2>Malformed records (first few)</h2><ul>");
        for m in &a.read.samples {
            let _ = write!(h, "<li>{}</li>", esc(&m.to_string()));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

/// The analysis sections: summary, per-category table, distributions, associations.
fn analysis_html(h: &mut String, a: &AnalysisReport) -> Result<(), ReportError> {
    let span_s = a.last_us.saturating_sub(a.first_us) as f64 / 1e6;
    let _ = writeln!(
        h,
        "<h2>Summary</h2><table><tr><th>figure</th><th>value</th></tr>\
         <tr><td>requests</td><td>{}</td></tr><tr><td>first request</td><td>{}</td></tr>\
         <tr><td>span</td><td>{}</td></tr><tr><td>GET / HEAD / PUT / POST / PATCH / DELETE</td><td>{} / {} / {} / {} / {} / {}</td></tr>\
         <tr><td>put:get ratio</td><td>{:.4}</td></tr><tr><td>distinct clients</td><td>{}</td></tr>\
         <tr><td>repositories</td><td>{}</td></tr><tr><td>malformed records</td><td>{}</td></tr></table>",
        a.requests,
        if a.requests > 0 { format_rfc3339_us(a.first_us) } else { "-".into() },
        human_seconds(span_s),
        a.methods.get,
        a.methods.head,
        a.methods.put,
        a.methods.post,
        a.methods.patch,
        a.methods.delete,
        a.put_get_ratio,
        a.clients,
        a.repositories,
        a.read.malformed
    );
    h.push_str("<h2>Per category</h2><table><tr><th>category</th><th>requests</th><th>image pulls</th><th>images</th><th>layers</th>\
                <th>put:get</th><th>median image pull</th><th>p99 image pull</th><th>median layer</th><th>median pulls/image</th>\
                <th>p99 pulls/image</th><th>median active duration</th></tr>\n");
    for c in &a.categories {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.name),
            c.requests,
            c.image_pulls,
            c.images,
            c.layers,
            c.put_get_ratio,
            human_bytes(c.image_pull_size.p50 as f64),
            human_bytes(c.image_pull_size.p99 as f64),
            human_bytes(c.layer_size.p50 as f64),
            c.pulls_per_image.p50,
            c.pulls_per_image.p99,
            human_seconds(c.active_duration_s.p50 as f64)
        );
    }
    h.push_str("</table>\n<h2>Distributions</h2><div class=\"plots\">\n");
    for (title, xl, unit, get) in METRICS {
        let series: Vec<Series> = a
            .categories
            .iter()
            .map(|c| Series {
                name: &c.name,
                points: &get(c).cdf,
            })
            .collect();
        let svg = cdf_svg(title, xl, unit, &series)?;
        let _ = writeln!(h, "<div>{}</div>", strip_xml_decl(&svg));
    }
    let _ = writeln!(
        h,
        "</div><p class=\"note\">Quantiles and CDF points come from log-bucketed histograms (values within ±{:.1}%); counts are exact.{}</p>",
        a.quantile_relative_error * 100.0,
        if a.truncated_objects > 0 {
            format!(" {} objects exceeded the tracking limits and are missing from per-object figures.", a.truncated_objects)
        } else {
            String::new()
        }
    );
    let ac = &a.config.assoc;
    let _ = write!(
        h,
        "<h2>Associated images</h2><p class=\"note\">B is associated with A when B is pulled within {} after more than {:.0}% of \
         A's pulls, for A pulled more than {} times ({}). {} pairs found{}.</p>\n<table><tr><th>#</th><th>A</th><th>B</th>\
         <th>pulls of A</th><th>followed by B</th><th>share</th></tr>\n",
        human_seconds(ac.window_us as f64 / 1e6),
        ac.share * 100.0,
        ac.min_pulls,
        if ac.same_client { "same client" } else { "registry-wide" },
        a.associations_found,
        if a.association_pulls_skipped > 0 {
            format!("; {} pulls past the pull-log limit were left out", a.association_pulls_skipped)        } else {
            String::new()
        }
    );
    for (i, p) in a.associations.iter().enumerate() {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td></tr>",
            i + 1,
            esc(&p.a),
            esc(&p.b),
            p.a_pulls,
            p.followed,
            p.share * 100.0
        );
    }
    h.push_str("</table>\n");
    Ok(())
}

/// A layer id short enough for an axis or a table: `sha256:` and 12 hex digits, or the tail
/// of a directory path.
pub fn short_layer(id: &str) -> String {
    if let Some(hex) = id.strip_prefix("sha256:") {
        return format!("sha256:{}", &hex[..hex.len().min(12)]);
    }
    let n = id.chars().count();
    if n <= 28 {
        id.to_string()
    } else {
        format!("…{}", id.chars().skip(n - 27).collect::<String>())
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.1}%", v * 100.0))
}

fn opt_num(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn opt_bytes(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| human_bytes(v as f64))
}

fn ready_text(r: &ReadyBy) -> String {
    match r {
        ReadyBy::Exit { code: Some(c), .. } => format!("command exited with status {c}"),
        ReadyBy::Exit { signal: Some(s), .. } => format!("command killed by signal {s}"),
        ReadyBy::Exit { .. } => "command exited".into(),
        ReadyBy::Port { port } => format!("port {port} accepted a connection"),
        ReadyBy::Log { line } => format!("log line {line:?}"),
        ReadyBy::Unknown => "unknown (summarised from records)".into(),
    }
}

/// Per layer: (label, share of files, share of bytes). With the image inventory the shares are
/// of the layer's own files and bytes; without it (records alone), of everything accessed.
fn layer_shares(s: &FilesSummary) -> (Vec<(String, f64, f64)>, bool) {
    let of_layer = s.layers.iter().all(|l| l.file_share.is_some() && l.byte_share.is_some());
    let rows = s
        .layers
        .iter()
        .map(|l| {
            if of_layer {
                (short_layer(&l.id), l.file_share.unwrap_or(0.0), l.byte_share.unwrap_or(0.0))
            } else {
                let f = l.accessed_files as f64 / s.accessed_files.max(1) as f64;
                let b = l.accessed_bytes as f64 / s.accessed_bytes.max(1) as f64;
                (short_layer(&l.id), f, b)
            }
        })
        .collect();
    (rows, of_layer)
}

/// Grouped bars: per layer, the share of files and the share of bytes accessed.
pub fn layer_bars_svg(s: &FilesSummary) -> Result<String, ReportError> {
    let (rows, of_layer) = layer_shares(s);
    let title = if of_layer { "accessed share of each layer (files, bytes)" } else { "where accessed files come from (files, bytes)" };
    let n = rows.len().max(1);
    let ymax = rows.iter().map(|r| r.1.max(r.2)).fold(0.0, f64::max).clamp(0.05, 1.0) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(title))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(52)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
            .map_err(plot_err(title))?;
        let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        chart
            .configure_mesh()
            .x_desc(if of_layer { "layer (base first)" } else { "layer" })
            .y_desc("share accessed")
            .x_labels(n)
            .x_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .disable_x_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_err(title))?;
        for (k, name) in ["files", "bytes"].into_iter().enumerate() {
            let color = COLORS[k];
            let bars = rows.iter().enumerate().map(move |(i, r)| {
                let v = if k == 0 { r.1 } else { r.2 };
                let x0 = i as f64 - 0.38 + k as f64 * 0.38;
                Rectangle::new([(x0, 0.0), (x0 + 0.36, v)], color.filled())
            });
            chart
                .draw_series(bars)
                .map_err(plot_err(title))?
                .label(name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        finish(&mut chart, &root, SeriesLabelPosition::UpperRight, title)?;
    }
    Ok(svg)
}

/// Cumulative bytes accessed (files read or executed, whole sizes) over the time of each file's
/// first access after the container started.
pub fn cumulative_bytes_svg(s: &FilesSummary) -> Result<String, ReportError> {
    let title = "cumulative bytes accessed over first-access time";
    let mut pts = vec![(0.0, 0.0)];
    let mut total = 0u64;
    for f in s.files.iter().filter(|f| f.layer.is_some() && f.bytes > 0) {
        let t = f.first_us as f64 / 1e3;
        pts.push((t, total as f64));
        total += f.bytes;
        pts.push((t, total as f64));
    }
    let xmax = pts.last().map_or(1.0, |p| p.0).max(s.duration_us as f64 / 1e3).max(1.0);
    pts.push((xmax, total as f64));
    let ymax = (total as f64).max(1.0) * 1.08;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(title))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(plot_err(title))?;
        chart
            .configure_mesh()
            .x_desc("ms after the container's process started")
            .y_desc("bytes accessed")
            .y_label_formatter(&|v| human_bytes(*v))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(plot_err(title))?;
        chart.draw_series(LineSeries::new(pts, COLORS[0].stroke_width(2))).map_err(plot_err(title))?;
        root.present().map_err(plot_err(title))?;
    }
    Ok(svg)
}

/// Hot files shown in the HTML report.
const HTML_HOT_FILES: usize = 200;

/// The headline figures of a recording, as (label, value) rows for the HTML and text reports.
fn files_figures(s: &FilesSummary) -> Vec<(&'static str, String)> {
    vec![
        ("image", s.image.clone()),
        ("command", s.command.join(" ")),
        ("runtime", s.runtime.clone()),
        ("ready", ready_text(&s.ready)),
        ("start to ready", human_seconds(s.duration_us as f64 / 1e6)),
        ("files accessed / in the image", format!("{} / {} ({})", s.accessed_files, opt_num(s.image_files), pct(s.file_share))),
        ("files read or executed", s.read_files.to_string()),
        (
            "bytes accessed / in the image",
            format!("{} / {} ({})", human_bytes(s.accessed_bytes as f64), opt_bytes(s.image_bytes), pct(s.byte_share)),
        ),
        ("files written by the container", s.written_files.to_string()),
        ("events (lost to overflow, without a path)", format!("{} ({}, {})", s.events, s.overflows, s.unmapped)),
    ]
}

fn files_html(h: &mut String, s: &FilesSummary) -> Result<(), ReportError> {
    let _ = write!(h, "<h2>File accesses: {}</h2><table><tr><th>figure</th><th>value</th></tr>", esc(&s.image));
    for (k, v) in files_figures(s).iter().skip(1) {
        let _ = write!(h, "<tr><td>{k}</td><td>{}</td></tr>", esc(v));
    }
    h.push_str("</table>\n");
    let _ = writeln!(h, "<p class=\"note\">{}</p>", esc(&s.definition));
    let _ = writeln!(
        h,
        "<div class=\"plots\"><div>{}</div><div>{}</div></div>",
        strip_xml_decl(&layer_bars_svg(s)?),
        strip_xml_decl(&cumulative_bytes_svg(s)?)
    );
    h.push_str("<h3>Layers (base first)</h3><table><tr><th>layer</th><th>files</th><th>bytes</th><th>files accessed</th><th>bytes accessed</th><th>file share</th><th>byte share</th></tr>\n");
    for l in &s.layers {
        let _ = writeln!(
            h,
            "<tr><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&l.id),
            esc(&short_layer(&l.id)),
            opt_num(l.files),
            opt_bytes(l.bytes),
            l.accessed_files,
            human_bytes(l.accessed_bytes as f64),
            pct(l.file_share),
            pct(l.byte_share)
        );
    }
    let _ = writeln!(
        h,
        "</table><h3>Hot files (by first access{})</h3><table><tr><th>path</th><th>layer</th><th>first access</th><th>opened</th><th>executed</th><th>reads</th><th>size</th><th>bytes</th></tr>",
        if s.files.len() > HTML_HOT_FILES { format!("; the first {HTML_HOT_FILES} of {}", s.files.len()) } else { String::new() }
    );
    for f in s.files.iter().take(HTML_HOT_FILES) {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&f.path),
            esc(&f.layer.as_deref().map_or_else(|| "written by the container".to_string(), short_layer)),
            human_seconds(f.first_us as f64 / 1e6),
            f.opened,
            f.executed,
            f.reads,
            human_bytes(f.size as f64),
            human_bytes(f.bytes as f64)
        );
    }
    h.push_str("</table>\n");
    Ok(())
}

/// A file-access recording as terminal tables: totals, layers, the first `top` hot files.
pub fn files_table(s: &FilesSummary, top: usize) -> String {
    let mut out = String::new();
    for (k, v) in files_figures(s) {
        let _ = writeln!(out, "{k}: {v}");
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .layers
        .iter()
        .map(|l| {
            vec![
                short_layer(&l.id),
                opt_num(l.files),
                opt_bytes(l.bytes),
                l.accessed_files.to_string(),
                human_bytes(l.accessed_bytes as f64),
                pct(l.file_share),
                pct(l.byte_share),
            ]
        })
        .collect();
    out += &text_table(&["layer (base first)", "files", "bytes", "accessed", "acc. bytes", "file share", "byte share"], &rows);
    let rows: Vec<Vec<String>> = s
        .files
        .iter()
        .take(top)
        .map(|f| {
            vec![
                f.path.clone(),
                f.layer.as_deref().map_or_else(|| "(container)".to_string(), short_layer),
                format!("{:.1} ms", f.first_us as f64 / 1e3),
                f.opened.to_string(),
                f.executed.to_string(),
                f.reads.to_string(),
                human_bytes(f.bytes as f64),
            ]
        })
        .collect();
    let _ = writeln!(out, "\nhot files, by first access ({} of {}):", rows.len(), s.files.len());
    out += &text_table(&["path", "layer", "first", "opened", "exec", "reads", "bytes"], &rows);
    out += "\nbytes accessed = whole size of each file read or executed (an upper bound: fanotify reports no offsets and no page faults of mmapped files)\n";
    out
}

fn strip_xml_decl(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

/// Renders rows as an aligned text table (first column left-aligned, the rest right-aligned).
pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    out.push_str(&line(
        w.iter()
            .map(|&n| "-".repeat(n))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The analysis' main figures as a terminal table.
pub fn analysis_table(a: &AnalysisReport) -> String {
    let rows: Vec<Vec<String>> = a
        .categories
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.requests.to_string(),
                c.image_pulls.to_string(),
                c.images.to_string(),
                c.layers.to_string(),
                format!("{:.4}", c.put_get_ratio),
                human_bytes(c.image_pull_size.p50 as f64),
                human_bytes(c.layer_size.p50 as f64),
                format!("{}/{}", c.pulls_per_image.p50, c.pulls_per_image.p99),
                human_seconds(c.pull_interval_s.p50 as f64),
                human_seconds(c.active_duration_s.p50 as f64),
            ]
        })
        .collect();
    let mut out = format!(
        "{} requests over {}, put:get {:.4}, {} clients, {} repositories, {} malformed\n\n",
        a.requests,
        human_seconds(a.last_us.saturating_sub(a.first_us) as f64 / 1e6),
        a.put_get_ratio,
        a.clients,
        a.repositories,
        a.read.malformed
    );
    out += &text_table(
        &[
            "category",
            "requests",
            "pulls",
            "images",
            "layers",
            "put:get",
            "med pull",
            "med layer",
            "pulls/img p50/p99",
            "med interval",
            "med active",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "\nassociated pairs: {} (top {} below)",
        a.associations_found,
        a.associations.len().min(10)
    );
    for p in a.associations.iter().take(10) {
        let _ = writeln!(
            out,
            "  {} -> {}  {}/{} ({:.1}%)",
            p.a,
            p.b,
            p.followed,
            p.a_pulls,
            p.share * 100.0
        );
    }
    out
}

/// Simulation results as a terminal table.
pub fn sim_table(s: &SimReport) -> String {
    let with_lat = s.runs.iter().any(|r| r.latency.is_some());
    let two_tier = s.runs.iter().any(|r| r.slow_bytes > 0);
    let mut header = vec![
        "policy",
        "cache",
        "requests",
        "misses",
        "miss bytes",
        "miss ratio",
        "byte miss ratio",
    ];
    if two_tier {
        header.extend(["fast hit", "slow hit", "demotions"]);
    }
    header.extend(["evictions", "prefetch hits"]);
    if with_lat {
        header.extend(["avg pull", "p99 pull"]);
    }
    let rows: Vec<Vec<String>> = s
        .runs
        .iter()
        .map(|r| {
            let st = &r.stats;
            let mut row = vec![
                r.policy.clone(),
                if r.slow_bytes > 0 {
                    format!("{}+{}", fmt_bytes(r.fast_bytes), fmt_bytes(r.slow_bytes))
                } else {
                    fmt_bytes(r.fast_bytes)
                },
                st.requests.to_string(),
                st.misses.to_string(),
                human_bytes(st.miss_bytes as f64),
                format!("{:.4}", r.miss_ratio),
                format!("{:.4}", r.byte_miss_ratio),
            ];
            if two_tier {
                row.push(format!("{:.4}", r.tier_hit_ratio[0]));
                row.push(format!("{:.4}", r.tier_hit_ratio[1]));
                row.push(st.demotions.to_string());
            }
            row.push(st.evictions.to_string());
            row.push(st.prefetch_hits.to_string());
            if with_lat {
                match &r.latency {
                    Some(l) => {
                        row.push(human_seconds(l.avg_pull_us / 1e6));
                        row.push(human_seconds(l.p99_pull_us as f64 / 1e6));
                    }
                    None => row.extend(["-".to_string(), "-".to_string()]),
                }
            }
            row
        })
        .collect();
    let mut out = text_table(&header, &rows);
    for sk in &s.skipped {
        let _ = writeln!(out, "skipped: {sk}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{analyze, AnalyzeConfig};
    use crate::category::CategoryMap;

    #[test]
    fn report_renders_every_section() {
        let params = crate::gen::GenParams {
            requests: 20_000,
            duration_s: 86_400.0,
            seed: 2,
            ..Default::default()
        };
        let mut out = Vec::new();
        crate::gen::generate(&params, crate::read::TraceFormat::Thaw, &mut out).unwrap();
        let input: Box<dyn std::io::BufRead + Send> = Box::new(std::io::Cursor::new(out));
        let mut src = crate::read::ThawReader::from_bufread(
            input,
            std::path::Path::new("g"),
            Default::default(),
        );
        let a = analyze(
            &mut src,
            AnalyzeConfig::default(),
            CategoryMap::by_namespace(),
            &mut |_| {},
        )
        .unwrap();
        let page = html(&a, None, "test <report>").unwrap();
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("test &lt;report&gt;"));
        assert_eq!(page.matches("<svg").count(), METRICS.len());
        assert!(
            !page.contains("<?xml"),
            "svg documents are inlined without their declaration"
        );
        // every category appears as a plotted series label
        for c in ["web", "ml", "iot"] {
            assert!(
                page.contains(&format!(">{c}</text>")) || page.contains(&format!(">{c}<")),
                "{c}"
            );
        }
        // no external resources: a self-contained page
        assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
        let t = analysis_table(&a);
        assert!(t.contains("web") && t.contains("put:get"));
    }

    #[test]
    fn file_access_section_renders_charts_and_tables() {
        use crate::files::summary::{Aggregator, ImageFacts};
        use thaw_record::{FileAccessRecord, FileOp};
        let base = format!("sha256:{}", "b".repeat(64));
        let mut agg = Aggregator::new(Some(0));
        for (ts, path, op, size, layer) in [
            (100, "/bin/busybox", FileOp::OpenExec, 1000, Some(base.as_str())),
            (300, "/data/a.txt", FileOp::Access, 50, Some("top")),
            (400, "/tmp/<new>", FileOp::Open, 5, None),
        ] {
            agg.add(&FileAccessRecord {
                v: 1,
                ts_us: ts,
                image: "img".into(),
                path: path.into(),
                op,
                size,
                layer: layer.map(String::from),
                pid: None,
            });
        }
        let facts = ImageFacts {
            image: "oci:/x:latest".into(),
            layers: vec![(base.clone(), 300, 5000), ("top".into(), 2, 80)],
            total_files: 302,
            total_bytes: 5080,
            ..Default::default()
        };
        let s = agg.finish(Some(&facts), ReadyBy::Exit { code: Some(0), signal: None }, 500);
        let page = page(None, None, Some(&s), "files").unwrap();
        assert_eq!(page.matches("<svg").count(), 2);
        assert!(page.contains("/data/a.txt") && page.contains("&lt;new&gt;"), "paths escaped");
        assert!(page.contains("written by the container"));
        assert!(page.contains("upper bound"), "the definition of bytes is on the page");
        assert!(page.contains("sha256:bbbbbbbbbbbb"), "layer ids shortened on axes and tables");
        assert!(!page.contains("<h2>Summary</h2>"), "no analysis section without a trace");
        let t = files_table(&s, 10);
        assert!(t.contains("/bin/busybox") && t.contains("files accessed / in the image: 2 / 302"), "{t}");
        assert!(t.find("/bin/busybox").unwrap() < t.find("/data/a.txt").unwrap(), "first access order");
    }

    #[test]
    fn tables_align() {
        let t = text_table(
            &["a", "bb"],
            &[
                vec!["xxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "a    bb");
        assert_eq!(lines[2], "xxx   1");
        assert_eq!(lines[3], "y    22");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(1000.0 * 1024.0), "1000 KiB");
        assert_eq!(human_bytes(9.77 * 1024.0), "9.77 KiB");
        assert_eq!(human_bytes(1048576.0), "1 MiB");
        assert_eq!(human_seconds(90.0), "90.0 s");
        assert_eq!(human_seconds(3.0 * 86_400.0), "3.0 d");
    }
}
