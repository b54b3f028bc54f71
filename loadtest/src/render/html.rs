//! The self-contained HTML report: summary tables and SVG charts drawn with plotters, inlined so the file
//! opens offline (no scripts, no external assets).

use std::fmt::Write as _;

use loadgen::outcome::FailureKind;
use plotters::prelude::*;

use crate::results::{Phase, ResultsDocument, RunResult, ScalingPoint, TimelinePoint};

/// Charts with more points than this are thinned (keeping each stretch's highest value, so peaks survive):
/// an SVG with tens of thousands of vertices is slow to open and no clearer.
const MAX_CHART_POINTS: usize = 1500;

const WIDTH: u32 = 860;
const HEIGHT: u32 = 300;

/// A named series of (x, y) points.
struct Series {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Renders the whole report for a results document.
pub fn report(document: &ResultsDocument) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>orderflow loadtest: {command}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0;font-size:14px}}td,th{{border:1px solid #ccc;padding:3px 8px;\
         text-align:right}}th:first-child,td:first-child{{text-align:left}}h2{{margin-top:2em}}\
         .note{{background:#f6f6e8;padding:.5em 1em;border-left:4px solid #cc9}}</style></head><body>\
         <h1>orderflow loadtest: {command}</h1><p>Target: <b>{target}</b> · time scale K = {scale} · \
         {created} · loadtest {version} · schema <code>{schema}</code></p>",
        command = escape(&document.command),
        target = escape(&document.target),
        scale = document.time_scale,
        created = document.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        version = escape(&document.tool_version),
        schema = escape(&document.schema),
    );
    for note in &document.notes {
        let _ = write!(html, "<p class=\"note\">{}</p>", escape(note));
    }
    html.push_str(&runs_table(&document.runs));
    if !document.comparisons.is_empty() {
        html.push_str(
            "<h2>Sync vs async</h2><table><tr><th>scenario</th><th>accepted % gain (points)</th>\
            <th>accepted ×</th><th>accepted/s ×</th><th>p50 faster ×</th><th>p99 faster ×</th></tr>",
        );
        for comparison in &document.comparisons {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{:+.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&comparison.scenario),
                comparison.accepted_pct_gain,
                factor(comparison.accepted_factor),
                factor(comparison.accepted_rate_factor),
                factor(comparison.p50_speedup),
                factor(comparison.p99_speedup),
            );
        }
        html.push_str("</table>");
    }
    if !document.scaling.is_empty() {
        html.push_str(&scaling_section(document));
    }
    html.push_str(&super::autoscale::html_section(document));
    html.push_str(&super::outage::html_section(document));
    for run in &document.runs {
        html.push_str(&run_section(run));
    }
    html.push_str("</body></html>\n");
    html
}

fn factor(value: Option<f64>) -> String {
    value.map_or_else(|| "∞ (sync: 0)".to_owned(), |v| format!("{v:.1}"))
}

fn runs_table(runs: &[RunResult]) -> String {
    let mut html = String::from("<h2>Runs</h2><table><tr><th>run</th><th>requests</th><th>accepted %</th>");
    for kind in FailureKind::ALL {
        let _ = write!(html, "<th>{}</th>", kind.name());
    }
    html.push_str(
        "<th>avg ms</th><th>min</th><th>p50</th><th>p95</th><th>p99</th><th>max</th><th>req/s</th>\
         <th>peak queue</th><th>drain s (measured / Little)</th></tr>",
    );
    for run in runs {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td>",
            escape(&run.name),
            run.outcomes.total(),
            run.accepted_pct
        );
        for kind in FailureKind::ALL {
            let _ = write!(html, "<td>{}</td>", run.outcomes.failures_of(kind));
        }
        let l = &run.latency;
        let _ = write!(
            html,
            "<td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td>",
            l.mean_ms, l.min_ms, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, run.throughput_per_s
        );
        let (peak, drain) = match &run.queue {
            Some(queue) => (
                queue.peak_backlog.to_string(),
                queue.drain.map_or("–".to_owned(), |d| {
                    format!(
                        "{:.2}{} / {:.2}",
                        d.measured_s,
                        if d.finished { "" } else { " (capped)" },
                        d.predicted_s
                    )
                }),
            ),
            None => ("–".to_owned(), "–".to_owned()),
        };
        let _ = write!(html, "<td>{peak}</td><td>{drain}</td></tr>");
    }
    html.push_str("</table>");
    html
}

fn run_section(run: &RunResult) -> String {
    let mut html = format!("<h2>{}</h2>", escape(&run.name));
    let load: Vec<&TimelinePoint> = run.timeline.iter().filter(|p| p.phase == Phase::Load).collect();
    let latency = |name: &str, color: RGBColor, pick: fn(&TimelinePoint) -> Option<f64>| Series {
        name: name.to_owned(),
        color,
        points: load.iter().filter_map(|p| pick(p).map(|y| (p.t_s, y))).collect(),
    };
    html.push_str(&line_chart(
        "Latency percentiles over time",
        "ms",
        &[
            latency("p50", BLUE, |p| p.latency_p50_ms),
            latency("p95", RGBColor(230, 140, 0), |p| p.latency_p95_ms),
            latency("p99", RED, |p| p.latency_p99_ms),
        ],
        None,
    ));
    html.push_str(&line_chart(
        "Throughput (answers per second)",
        "req/s",
        &[Series {
            name: "answered/s".into(),
            color: RGBColor(0, 130, 60),
            points: load.iter().map(|p| (p.t_s, p.rate_per_s)).collect(),
        }],
        None,
    ));
    if run.timeline.iter().any(|p| p.queue_backlog.is_some()) {
        let queue = |name: &str, color: RGBColor, pick: fn(&TimelinePoint) -> Option<u64>| Series {
            name: name.to_owned(),
            color,
            points: run.timeline.iter().filter_map(|p| pick(p).map(|y| (p.t_s, y as f64))).collect(),
        };
        html.push_str(&line_chart(
            "Queue depth (dashed line: end of the load; the drain follows)",
            "messages",
            &[
                queue("backlog (visible + in flight)", RED, |p| p.queue_backlog),
                queue("visible", BLUE, |p| p.queue_visible),
                queue("in flight", RGBColor(0, 130, 60), |p| p.queue_in_flight),
            ],
            Some(run.load_duration_s),
        ));
    }
    html
}

fn scaling_section(document: &ResultsDocument) -> String {
    let mut html = String::from(
        "<h2>Worker scaling</h2><table><tr><th>consumers N</th><th>offered/s</th><th>N/L capacity/s</th>\
         <th>processing/s</th><th>peak backlog</th><th>drain s</th><th>Little drain s</th><th>worker CPU cores</th>\
         <th>RSS MiB</th><th>Little min N</th></tr>",
    );
    for point in &document.scaling {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{:.2}{}</td><td>{:.2}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            point.consumers,
            point.offered_rate_per_s,
            point.capacity_per_s,
            point.processing_rate_per_s,
            point.peak_backlog,
            point.drain_s,
            if point.drain_finished { "" } else { " (capped)" },
            point.drain_predicted_s,
            point.worker_cpu_cores.map_or("–".into(), |c| format!("{c:.2}")),
            point.rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
            point.min_consumers_littles_law,
        );
    }
    html.push_str("</table>");
    let xy = |pick: fn(&ScalingPoint) -> f64| -> Vec<(f64, f64)> {
        document.scaling.iter().map(|p| (p.consumers as f64, pick(p))).collect()
    };
    html.push_str(&line_chart_x(
        "Processing rate vs consumers N (N/L is the ideal)",
        "consumers N",
        "orders/s",
        &[
            Series { name: "measured".into(), color: BLUE, points: xy(|p| p.processing_rate_per_s) },
            Series {
                name: "N / L (capped at the offered rate)".into(),
                color: RGBColor(150, 150, 150),
                points: xy(|p| p.capacity_per_s.min(p.offered_rate_per_s)),
            },
        ],
        None,
    ));
    html.push_str(&line_chart_x(
        "Peak backlog vs consumers N",
        "consumers N",
        "messages",
        &[Series { name: "peak backlog".into(), color: RED, points: xy(|p| p.peak_backlog as f64) }],
        None,
    ));
    html.push_str(&line_chart_x(
        "Drain time vs consumers N",
        "consumers N",
        "seconds",
        &[
            Series { name: "drain (measured)".into(), color: BLUE, points: xy(|p| p.drain_s) },
            Series {
                name: "Little's law: backlog × L ÷ N".into(),
                color: RGBColor(150, 150, 150),
                points: xy(|p| p.drain_predicted_s),
            },
        ],
        None,
    ));
    html
}

fn line_chart(title: &str, y_label: &str, series: &[Series], marker_x: Option<f64>) -> String {
    line_chart_x(title, "seconds since start", y_label, series, marker_x)
}

/// Draws a line chart as an inline SVG string; an empty chart says so instead.
fn line_chart_x(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    marker_x: Option<f64>,
) -> String {
    let thinned: Vec<Series> = series
        .iter()
        .map(|s| Series { name: s.name.clone(), color: s.color, points: thin(&s.points) })
        .filter(|s| !s.points.is_empty())
        .collect();
    if thinned.is_empty() {
        return format!("<p><i>{}: no data</i></p>", escape(title));
    }
    let all = thinned.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_max) = (marker_x.unwrap_or(0.0), 0.0f64);
    let mut x_min = f64::INFINITY;
    for &(x, y) in all {
        x_max = x_max.max(x);
        x_min = x_min.min(x);
        y_max = y_max.max(y);
    }
    let x_min = x_min.min(0.0);
    let x_max = if x_max > x_min { x_max } else { x_min + 1.0 };
    let y_max = if y_max > 0.0 { y_max * 1.08 } else { 1.0 };
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).light_line_style(WHITE.mix(0.0)).draw()?;
        for s in &thinned {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        if let Some(x) = marker_x {
            chart.draw_series(DashedLineSeries::new(
                vec![(x, 0.0), (x, y_max)],
                6,
                4,
                BLACK.stroke_width(1),
            ))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    })();
    match drawn {
        Ok(()) => format!("<div>{svg}</div>"),
        Err(error) => {
            format!("<p><i>{}: chart failed: {}</i></p>", escape(title), escape(&error.to_string()))
        }
    }
}

/// Reduces a series to at most [`MAX_CHART_POINTS`] points, keeping the highest point of each stretch.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_CHART_POINTS {
        return points.to_vec();
    }
    let stretch = points.len().div_ceil(MAX_CHART_POINTS);
    points
        .chunks(stretch)
        .filter_map(|chunk| chunk.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)))
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A named series for [`series_chart`]: its name, RGB colour and (x, y) points.
pub(super) struct ChartSeries {
    pub(super) name: String,
    pub(super) rgb: (u8, u8, u8),
    pub(super) points: Vec<(f64, f64)>,
}

/// A line chart for another report section (see [`super::autoscale`]), with a dashed vertical line at
/// `marker_x` when given.
pub(super) fn series_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[ChartSeries],
    marker_x: Option<f64>,
) -> String {
    let series: Vec<Series> = series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            color: RGBColor(s.rgb.0, s.rgb.1, s.rgb.2),
            points: s.points.clone(),
        })
        .collect();
    line_chart_x(title, x_label, y_label, &series, marker_x)
}

/// Text escaped for HTML, for another report section.
pub(super) fn escape_text(text: &str) -> String {
    escape(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_peaks_and_bounds_the_size() {
        let mut points: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, 1.0)).collect();
        points[4321].1 = 99.0;
        let thinned = thin(&points);
        assert!(thinned.len() <= MAX_CHART_POINTS);
        assert!(thinned.contains(&(4321.0, 99.0)));
    }

    #[test]
    fn charts_are_inline_svg() {
        let svg = line_chart(
            "t",
            "ms",
            &[Series { name: "p50".into(), color: BLUE, points: vec![(0.0, 1.0), (1.0, 2.0)] }],
            Some(0.5),
        );
        assert!(svg.contains("<svg") && svg.contains("p50"), "{svg}");
        assert!(line_chart("empty", "ms", &[], None).contains("no data"));
    }
}
