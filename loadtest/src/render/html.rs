//! The self-contained HTML report: a headline figure (sync against async), summary tables and SVG charts drawn
//! with plotters, inlined so the file opens offline (no scripts, no external assets). Time-scaled runs are
//! drawn on lab time (the run's clock × K, rates ÷ K) and say so; `results.json` keeps the run's clock.
//!
//! Stable hooks for tests and readers: the headline figure is `#headline`, each run's section
//! `section.run#run-<scenario>-<mode>` with its charts as `figure.run-chart`.

use std::fmt::Write as _;

use loadgen::outcome::FailureKind;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::render::text::duration_words;
use crate::results::{Phase, ResultsDocument, RunResult, ScalingPoint, TimelinePoint};

/// Charts with more points than this are thinned (keeping each stretch's highest value, so peaks survive):
/// an SVG with tens of thousands of vertices is slow to open and no clearer.
const MAX_CHART_POINTS: usize = 1500;

/// A full-width chart's size in pixels (it scales with the page: the SVG has a viewBox).
const WIDTH: u32 = 1150;
const HEIGHT: u32 = 320;
/// A half-width chart's width, for two side by side.
const HALF_WIDTH: u32 = 570;

/// Sync's and async's colours, the same in every chart.
const SYNC_COLOR: RGBColor = RGBColor(214, 69, 65);
const ASYNC_COLOR: RGBColor = RGBColor(38, 110, 190);
/// One colour per consumer count in the scaling chart.
const PALETTE: [RGBColor; 8] = [
    RGBColor(214, 69, 65),
    RGBColor(230, 140, 0),
    RGBColor(0, 140, 70),
    RGBColor(38, 110, 190),
    RGBColor(130, 70, 180),
    RGBColor(120, 120, 120),
    RGBColor(0, 150, 160),
    RGBColor(180, 60, 130),
];

/// How lab time is written on an axis: seconds, minutes or hours, whichever keeps the numbers small.
#[derive(Debug, Clone, Copy)]
struct TimeAxis {
    /// Lab seconds per unit.
    unit_s: f64,
    /// The axis description.
    label: &'static str,
}

impl TimeAxis {
    /// The unit for an axis reaching `max_lab_s` lab seconds.
    fn for_span(max_lab_s: f64) -> TimeAxis {
        if max_lab_s > 2.0 * 3600.0 {
            TimeAxis { unit_s: 3600.0, label: "lab time since start, hours" }
        } else if max_lab_s > 120.0 {
            TimeAxis { unit_s: 60.0, label: "lab time since start, minutes" }
        } else {
            TimeAxis { unit_s: 1.0, label: "lab time since start, seconds" }
        }
    }
}

/// Lab-time latencies in ms or s, whichever keeps the numbers readable.
fn latency_unit(max_lab_ms: f64) -> (f64, &'static str) {
    if max_lab_ms > 2000.0 { (1000.0, "latency at lab speed, s") } else { (1.0, "latency at lab speed, ms") }
}

/// A named series of (x, y) points; an unnamed one stays out of the legend.
struct Series {
    name: String,
    color: RGBColor,
    /// Drawn dashed (predictions).
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// Renders the whole report for a results document.
pub fn report(document: &ResultsDocument) -> String {
    let k = document.time_scale.max(1.0);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>orderflow loadtest: {command}</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <style>body{{font-family:system-ui,sans-serif;margin:0 auto;padding:16px 24px;max-width:1180px;\
         color:#222;line-height:1.4}}\
         table{{border-collapse:collapse;margin:.6em 0;font-size:13px;width:100%}}\
         td,th{{border:1px solid #d4d4d4;padding:3px 6px;text-align:right;vertical-align:top}}\
         td{{white-space:nowrap}}\
         th{{background:#f3f3f3;font-weight:600}}th:first-child,td:first-child{{text-align:left}}\
         td.fail{{text-align:left;font-size:12px;color:#555;white-space:normal}}h2{{margin:1.6em 0 .4em;font-size:20px}}\
         figure{{margin:.6em 0}}figure svg{{width:100%;height:auto;display:block}}\
         figcaption{{font-size:13px;color:#555;margin-top:2px}}\
         .pair{{display:grid;grid-template-columns:1fr 1fr;gap:10px}}\
         .note{{background:#f6f6e8;padding:.4em .8em;border-left:4px solid #cc9;font-size:13px;margin:.3em 0}}\
         .clock{{font-weight:600}}</style></head><body>\
         <h1>orderflow loadtest: {command}</h1><p>Target: <b>{target}</b> · time scale K = {scale} · \
         {created} · loadtest {version} · schema <code>{schema}</code></p>",
        command = escape(&document.command),
        target = escape(&document.target),
        scale = document.time_scale,
        created = document.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        version = escape(&document.tool_version),
        schema = escape(&document.schema),
    );
    if k > 1.0 {
        let _ = write!(
            html,
            "<p class=\"clock\">Charts and tables are in lab time: the run's clock × {k} (rates ÷ {k}). \
             results.json keeps the fast-clock figures.</p>"
        );
    }
    if !document.comparisons.is_empty() {
        html.push_str(&headline(document, k));
    }
    for note in &document.notes {
        let _ = write!(html, "<p class=\"note\">{}</p>", escape(note));
    }
    html.push_str(&runs_table(&document.runs, k));
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
        html.push_str(&scaling_section(document, k));
    }
    html.push_str(&super::autoscale::html_section(document));
    html.push_str(&super::outage::html_section(document));
    for run in &document.runs {
        html.push_str(&run_section(run, k));
    }
    html.push_str("</body></html>\n");
    html
}

/// A chart in a figure with its one-line caption.
fn figure(id: Option<&str>, class: &str, svg: String, caption: &str) -> String {
    let id = id.map_or(String::new(), |id| format!(" id=\"{}\"", escape(id)));
    format!("<figure{id} class=\"{class}\">{svg}<figcaption>{}</figcaption></figure>", escape(caption))
}

/// The headline figure: for each scenario, sync against async — accepted % and latency (p50 bars, p99
/// whiskers) on a log axis, side by side.
fn headline(document: &ResultsDocument, k: f64) -> String {
    let pairs: Vec<(&RunResult, &RunResult)> = document
        .runs
        .chunks(2)
        .filter_map(|pair| match pair {
            [sync_run, async_run] if sync_run.mode == "sync" && async_run.mode == "async" => {
                Some((sync_run, async_run))
            }
            _ => None,
        })
        .collect();
    if pairs.is_empty() {
        return String::new();
    }
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let n = pairs.len() as f64;
        let label_style =
            ("sans-serif", 14).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
        let value_style =
            ("sans-serif", 12).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
        let bar = |i: usize, mode: usize| {
            let x = i as f64 + if mode == 0 { 0.12 } else { 0.52 };
            (x, x + 0.36)
        };
        // Accepted %.
        let mut chart = ChartBuilder::on(&left)
            .caption("Accepted %", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(24)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..n, 0.0..132.0)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_desc("scenario")
            .y_desc("% of requests accepted")
            .y_labels(7)
            .y_label_formatter(&|v| if *v <= 100.0 { format!("{v:.0}") } else { String::new() })
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, (sync_run, async_run)) in pairs.iter().enumerate() {
            for (mode, run, color) in [(0, sync_run, SYNC_COLOR), (1, async_run, ASYNC_COLOR)] {
                let (x0, x1) = bar(i, mode);
                chart.draw_series([Rectangle::new([(x0, 0.0), (x1, run.accepted_pct)], color.filled())])?;
                chart.draw_series([Text::new(
                    format!("{:.1}%", run.accepted_pct),
                    ((x0 + x1) / 2.0, run.accepted_pct + 1.0),
                    value_style.clone(),
                )])?;
            }
            chart.draw_series([Text::new(
                sync_run.scenario.clone(),
                (i as f64 + 0.5, 116.0),
                label_style.clone(),
            )])?;
        }
        // The legend: a coloured key above the bars.
        let key = ("sans-serif", 14).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        for (slot, (name, color)) in
            [("■ sync", SYNC_COLOR), ("■ async", ASYNC_COLOR)].into_iter().enumerate()
        {
            chart.draw_series([Text::new(
                name,
                (0.05 + 0.35 * slot as f64, 127.0),
                TextStyle { color: color.to_backend_color(), ..key.clone() },
            )])?;
        }
        // Latency, log axis, lab speed.
        let lab_ms = |ms: f64| (ms * k).max(0.01);
        let values: Vec<f64> = pairs
            .iter()
            .flat_map(|(s, a)| [s.latency.p50_ms, s.latency.p99_ms, a.latency.p50_ms, a.latency.p99_ms])
            .map(lab_ms)
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min) / 3.0;
        let hi = values.iter().copied().fold(0.0, f64::max) * 6.0;
        let mut chart = ChartBuilder::on(&right)
            .caption("Latency at lab speed: p50 bar, p99 whisker (log axis)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(24)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_desc("scenario")
            .y_desc("ms (log)")
            .y_label_formatter(&|v| duration_words(*v / 1000.0))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, (sync_run, async_run)) in pairs.iter().enumerate() {
            for (mode, run, color) in [(0, sync_run, SYNC_COLOR), (1, async_run, ASYNC_COLOR)] {
                let (x0, x1) = bar(i, mode);
                let (p50, p99) = (lab_ms(run.latency.p50_ms), lab_ms(run.latency.p99_ms));
                chart.draw_series([Rectangle::new([(x0, lo), (x1, p50)], color.mix(0.85).filled())])?;
                let middle = (x0 + x1) / 2.0;
                chart.draw_series([PathElement::new(
                    vec![(middle, p50), (middle, p99)],
                    BLACK.stroke_width(1),
                )])?;
                chart.draw_series([PathElement::new(
                    vec![(middle - 0.08, p99), (middle + 0.08, p99)],
                    BLACK.stroke_width(2),
                )])?;
                chart.draw_series([Text::new(
                    duration_words(p50 / 1000.0),
                    (middle, p99 * 1.25),
                    value_style.clone(),
                )])?;
            }
            chart.draw_series([Text::new(
                sync_run.scenario.clone(),
                (i as f64 + 0.5, hi / 1.15),
                label_style.clone(),
            )])?;
        }
        root.present()?;
        Ok(())
    })();
    let svg = match drawn {
        Ok(()) => svg,
        Err(error) => format!("<p><i>headline chart failed: {}</i></p>", escape(&error.to_string())),
    };
    format!(
        "<h2>Sync against async</h2>{}",
        figure(
            Some("headline"),
            "chart headline",
            svg,
            "Notice: under both flash sales the synchronous endpoint accepts almost nothing and answers in \
             seconds, while the asynchronous one accepts every order and answers orders of magnitude sooner \
             (bar labels: p50; whiskers: p99).",
        )
    )
}

fn factor(value: Option<f64>) -> String {
    value.map_or_else(|| "∞ (sync: 0)".to_owned(), |v| format!("{v:.1}"))
}

fn runs_table(runs: &[RunResult], k: f64) -> String {
    let mut html = String::from(
        "<h2>Runs</h2><table><tr><th>run</th><th>requests</th><th>accepted %</th><th>failures</th>\
         <th>avg</th><th>p50</th><th>p95</th><th>p99</th><th>max</th><th>req/s</th><th>peak queue</th>\
         <th>drain measured</th><th>Little (nominal L)</th><th>Little (measured S)</th></tr>",
    );
    let lab_ms = |ms: f64| duration_words(ms * k / 1000.0);
    for run in runs {
        let failures: Vec<String> = FailureKind::ALL
            .iter()
            .filter(|&&kind| run.outcomes.failures_of(kind) > 0)
            .map(|&kind| format!("{} {}", kind.name(), run.outcomes.failures_of(kind)))
            .collect();
        let l = &run.latency;
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td class=\"fail\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{:.1}</td>",
            escape(&run.name),
            run.outcomes.total(),
            run.accepted_pct,
            if failures.is_empty() { "–".to_owned() } else { escape(&failures.join(", ")) },
            lab_ms(l.mean_ms),
            lab_ms(l.p50_ms),
            lab_ms(l.p95_ms),
            lab_ms(l.p99_ms),
            lab_ms(l.max_ms),
            run.throughput_per_s / k
        );
        let dash = || "–".to_owned();
        let (peak, measured, nominal, from_service) = match &run.queue {
            Some(queue) => (
                queue.peak_backlog.to_string(),
                queue.drain.map_or_else(dash, |d| {
                    format!(
                        "{}{}",
                        duration_words(d.total_s() * k),
                        if d.finished { "" } else { " (extrapolated)" }
                    )
                }),
                queue.drain.map_or_else(dash, |d| duration_words(d.predicted_s * k)),
                queue
                    .drain
                    .and_then(|d| d.predicted_from_service_time_s)
                    .map_or_else(dash, |s| duration_words(s * k)),
            ),
            None => (dash(), dash(), dash(), dash()),
        };
        let _ =
            write!(html, "<td>{peak}</td><td>{measured}</td><td>{nominal}</td><td>{from_service}</td></tr>");
    }
    html.push_str("</table>");
    for run in runs {
        if let Some(drain) = run.queue.and_then(|q| q.drain)
            && let Some(line) = super::text::fidelity_line(&drain, k)
        {
            let _ = write!(html, "<p class=\"note\">{}: {}</p>", escape(&run.name), escape(&line));
        }
        if let Some(eta) = &run.eta {
            let _ = write!(
                html,
                "<p class=\"note\">{}: {}</p>",
                escape(&run.name),
                escape(&super::text::eta_line(eta, k))
            );
        }
    }
    html
}

/// `flash-sale-open/async` → `run-flash-sale-open-async`: the id of a run's section.
pub fn run_section_id(run_name: &str) -> String {
    let stem: String =
        run_name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    format!("run-{stem}")
}

fn run_section(run: &RunResult, k: f64) -> String {
    let mut html =
        format!("<section class=\"run\" id=\"{}\"><h2>{}</h2>", run_section_id(&run.name), escape(&run.name));
    let axis = TimeAxis::for_span(run.timeline.last().map_or(0.0, |p| p.t_s) * k);
    let x = |t_s: f64| t_s * k / axis.unit_s;
    let load: Vec<&TimelinePoint> = run.timeline.iter().filter(|p| p.phase == Phase::Load).collect();
    let max_ms = load.iter().filter_map(|p| p.latency_p99_ms).fold(0.0, f64::max) * k;
    let (ms_per_unit, latency_label) = latency_unit(max_ms);
    let latency = |name: &str, color: RGBColor, pick: fn(&TimelinePoint) -> Option<f64>| Series {
        name: name.to_owned(),
        color,
        dashed: false,
        points: load.iter().filter_map(|p| pick(p).map(|y| (x(p.t_s), y * k / ms_per_unit))).collect(),
    };
    let latency_chart = chart_svg(&Chart {
        title: "Latency percentiles over time",
        x_label: axis.label,
        y_label: latency_label,
        width: HALF_WIDTH,
        series: &[
            latency("p50", BLUE, |p| p.latency_p50_ms),
            latency("p95", RGBColor(230, 140, 0), |p| p.latency_p95_ms),
            latency("p99", RED, |p| p.latency_p99_ms),
        ],
        marker_x: None,
        log_x: false,
    });
    let throughput_chart = chart_svg(&Chart {
        title: "Throughput",
        x_label: axis.label,
        y_label: "answers per lab second",
        width: HALF_WIDTH,
        series: &[Series {
            name: "answered/s".into(),
            color: RGBColor(0, 130, 60),
            dashed: false,
            points: load.iter().map(|p| (x(p.t_s), p.rate_per_s / k)).collect(),
        }],
        marker_x: None,
        log_x: false,
    });
    let latency_caption = if run.mode == "sync" {
        "Notice: sync answers wait for the one payment slot, so latency climbs to the timeout as the queue of clients grows."
    } else {
        "Notice: async answers come back as soon as the order is published, whatever the backlog."
    };
    let _ = write!(
        html,
        "<div class=\"pair\">{}{}</div>",
        figure(None, "chart run-chart", latency_chart, latency_caption),
        figure(
            None,
            "chart run-chart",
            throughput_chart,
            "Notice: answers per second follow the offered load only while the endpoint keeps up."
        )
    );
    // The sync endpoint never touches the queue: its chart would be a flat zero.
    if run.mode != "sync" && run.timeline.iter().any(|p| p.queue_backlog.is_some()) {
        let queue = |name: &str, color: RGBColor, pick: fn(&TimelinePoint) -> Option<u64>| Series {
            name: name.to_owned(),
            color,
            dashed: false,
            points: run.timeline.iter().filter_map(|p| pick(p).map(|y| (x(p.t_s), y as f64))).collect(),
        };
        let mut series = vec![
            queue("backlog (visible + in flight)", RED, |p| p.queue_backlog),
            queue("visible", BLUE, |p| p.queue_visible),
            queue("in flight", RGBColor(0, 130, 60), |p| p.queue_in_flight),
        ];
        if let Some(queue) = run.queue
            && let Some(drain) = queue.drain
        {
            series.push(Series {
                name: "Little's law (nominal L)".into(),
                color: RGBColor(110, 110, 110),
                dashed: true,
                points: vec![
                    (x(run.load_duration_s), queue.backlog_at_load_end as f64),
                    (x(run.load_duration_s + drain.predicted_s), 0.0),
                ],
            });
        }
        let svg = chart_svg(&Chart {
            title: "Queue depth (dotted vertical line: end of the load; the drain follows)",
            x_label: axis.label,
            y_label: "messages",
            width: WIDTH,
            series: &series,
            marker_x: Some(x(run.load_duration_s)),
            log_x: false,
        });
        html.push_str(&figure(
            None,
            "chart run-chart",
            svg,
            "Notice: the backlog grows while orders arrive faster than the consumers pay them, then falls at N ÷ L \
             along Little's law's line.",
        ));
    }
    html.push_str("</section>");
    html
}

fn scaling_section(document: &ResultsDocument, k: f64) -> String {
    let mut html = String::from(
        "<h2>Worker scaling</h2><table><tr><th>consumers N</th><th>offered/s</th><th>N/L capacity/s</th>\
         <th>processing/s</th><th>peak backlog</th><th>drain</th><th>Little (nominal L)</th>\
         <th>Little (measured S)</th><th>S measured</th><th>worker CPU cores</th><th>RSS MiB</th>\
         <th>Little min N</th></tr>",
    );
    for point in &document.scaling {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            point.consumers,
            point.offered_rate_per_s / k,
            point.capacity_per_s / k,
            point.processing_rate_per_s / k,
            point.peak_backlog,
            duration_words(point.drain_s * k),
            if point.drain_finished { "" } else { " (capped)" },
            duration_words(point.drain_predicted_s * k),
            point.drain_predicted_from_service_time_s.map_or("–".into(), |s| duration_words(s * k)),
            point.service_time_ms.map_or("–".into(), |ms| duration_words(ms * k / 1000.0)),
            point.worker_cpu_cores.map_or("–".into(), |c| format!("{c:.2}")),
            point.rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
            point.min_consumers_littles_law,
        );
    }
    html.push_str("</table>");
    html.push_str(&backlog_per_consumers(document, k));
    let xy = |pick: fn(&ScalingPoint) -> f64| -> Vec<(f64, f64)> {
        document.scaling.iter().map(|p| (p.consumers as f64, pick(p))).collect()
    };
    let rate_chart = chart_svg(&Chart {
        title: "Processing rate vs consumers N",
        x_label: "consumers N",
        y_label: "orders per lab second",
        width: HALF_WIDTH,
        series: &[
            Series {
                name: "measured".into(),
                color: BLUE,
                dashed: false,
                points: xy(|p| p.processing_rate_per_s).into_iter().map(|(n, r)| (n, r / k)).collect(),
            },
            Series {
                name: "N / L (capped at the offered rate)".into(),
                color: RGBColor(150, 150, 150),
                dashed: true,
                points: xy(|p| p.capacity_per_s.min(p.offered_rate_per_s))
                    .into_iter()
                    .map(|(n, r)| (n, r / k))
                    .collect(),
            },
        ],
        marker_x: None,
        log_x: false,
    });
    let peak_chart = chart_svg(&Chart {
        title: "Peak backlog vs consumers N",
        x_label: "consumers N",
        y_label: "messages",
        width: HALF_WIDTH,
        series: &[Series {
            name: "peak backlog".into(),
            color: RED,
            dashed: false,
            points: xy(|p| p.peak_backlog as f64),
        }],
        marker_x: None,
        log_x: false,
    });
    let _ = write!(
        html,
        "<div class=\"pair\">{}{}</div>",
        figure(
            None,
            "chart",
            rate_chart,
            "Notice: the rate grows with N until it meets the offered rate; past that, more consumers only idle."
        ),
        figure(
            None,
            "chart",
            peak_chart,
            "Notice: the backlog vanishes once N ÷ L reaches the arrival rate (Little's law: 60/s × 3 s = 180)."
        )
    );
    html
}

/// Every consumer count's backlog over lab time in one chart, with Little's-law drains as dashed lines.
fn backlog_per_consumers(document: &ResultsDocument, k: f64) -> String {
    let runs: Vec<&RunResult> = document.runs.iter().filter(|r| r.queue.is_some()).collect();
    let end_lab_s = runs
        .iter()
        .flat_map(|r| {
            let predicted = r.queue.and_then(|q| q.drain).map_or(0.0, |d| r.load_duration_s + d.predicted_s);
            [r.timeline.last().map_or(0.0, |p| p.t_s), predicted]
        })
        .fold(0.0, f64::max)
        * k;
    let axis = TimeAxis::for_span(end_lab_s);
    let x = |t_s: f64| (t_s * k / axis.unit_s).max(1.0 / axis.unit_s);
    let mut series = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let consumers = run.queue.and_then(|q| q.drain).map_or(0, |d| d.consumers);
        series.push(Series {
            name: format!("N = {consumers}"),
            color,
            dashed: false,
            points: run
                .timeline
                .iter()
                .filter_map(|p| p.queue_backlog.map(|b| (x(p.t_s), b as f64)))
                .collect(),
        });
        if let Some(queue) = run.queue
            && let Some(drain) = queue.drain
        {
            series.push(Series {
                name: String::new(),
                color,
                dashed: true,
                points: vec![
                    (x(run.load_duration_s), queue.backlog_at_load_end as f64),
                    (x(run.load_duration_s + drain.predicted_s), 0.0),
                ],
            });
        }
    }
    let svg = chart_svg(&Chart {
        title: "Backlog and drain for every consumer count (dashed: Little's law, backlog × L ÷ N)",
        x_label: match axis.unit_s {
            u if u >= 3600.0 => "lab time since the sale began, hours (log axis)",
            u if u >= 60.0 => "lab time since the sale began, minutes (log axis)",
            _ => "lab time since the sale began, seconds (log axis)",
        },
        y_label: "messages (visible + in flight)",
        width: WIDTH,
        series: &series,
        marker_x: None,
        log_x: true,
    });
    figure(
        Some("scaling-backlog"),
        "chart",
        svg,
        "Notice: each drain ends where its dashed Little's-law line meets zero; the time axis is logarithmic so \
         that a three-hour drain and a three-second one both show.",
    )
}

/// What a line chart shows.
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    width: u32,
    series: &'a [Series],
    /// A dotted vertical line here (e.g. the end of the load).
    marker_x: Option<f64>,
    /// A logarithmic x axis (positive x only).
    log_x: bool,
}

/// Draws a full-width line chart as an inline SVG string; an empty chart says so instead.
fn line_chart_x(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    marker_x: Option<f64>,
) -> String {
    format!(
        "<div>{}</div>",
        chart_svg(&Chart { title, x_label, y_label, width: WIDTH, series, marker_x, log_x: false })
    )
}

/// Draws a line chart as an inline SVG string; an empty chart says so instead.
fn chart_svg(spec: &Chart<'_>) -> String {
    let thinned: Vec<Series> = spec
        .series
        .iter()
        .map(|s| Series { name: s.name.clone(), color: s.color, dashed: s.dashed, points: thin(&s.points) })
        .filter(|s| !s.points.is_empty())
        .collect();
    if thinned.is_empty() {
        return format!("<p><i>{}: no data</i></p>", escape(spec.title));
    }
    let all = thinned.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_max) = (spec.marker_x.unwrap_or(0.0), 0.0f64);
    let mut x_min = f64::INFINITY;
    for &(x, y) in all {
        x_max = x_max.max(x);
        x_min = x_min.min(x);
        y_max = y_max.max(y);
    }
    let x_min = if spec.log_x { x_min.max(1e-6) } else { x_min.min(0.0) };
    let x_max = if x_max > x_min { x_max } else { x_min + 1.0 };
    let y_max = if y_max > 0.0 { y_max * 1.08 } else { 1.0 };
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (spec.width, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let builder = |root| {
            let mut builder = ChartBuilder::on(root);
            builder
                .caption(spec.title, ("sans-serif", 17))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(64);
            builder
        };
        if spec.log_x {
            let mut chart = builder(&root).build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max)?;
            chart
                .configure_mesh()
                .x_desc(spec.x_label)
                .y_desc(spec.y_label)
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            draw_lines(&mut chart, &thinned, spec.marker_x, y_max)?;
        } else {
            let mut chart = builder(&root).build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
            chart
                .configure_mesh()
                .x_desc(spec.x_label)
                .y_desc(spec.y_label)
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            draw_lines(&mut chart, &thinned, spec.marker_x, y_max)?;
        }
        root.present()?;
        Ok(())
    })();
    match drawn {
        Ok(()) => svg,
        Err(error) => {
            format!("<p><i>{}: chart failed: {}</i></p>", escape(spec.title), escape(&error.to_string()))
        }
    }
}

/// The series (dashed ones dashed; unnamed ones left out of the legend), the marker, and the legend.
fn draw_lines<'a, DB: DrawingBackend + 'a, X: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    series: &[Series],
    marker_x: Option<f64>,
    y_max: f64,
) -> Result<(), String> {
    let failed = |error: DrawingAreaErrorKind<DB::ErrorType>| error.to_string();
    for s in series {
        let color = s.color;
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), 8, 5, color.stroke_width(2)))
        } else {
            chart.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
        }
        .map_err(failed)?;
        if !s.name.is_empty() {
            let length = if s.dashed { 8 } else { 18 };
            drawn
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + length, y)], color.stroke_width(2)));
        }
    }
    if let Some(x) = marker_x {
        chart
            .draw_series(DashedLineSeries::new(vec![(x, 0.0), (x, y_max)], 3, 4, BLACK.stroke_width(1)))
            .map_err(failed)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(failed)?;
    Ok(())
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
            dashed: false,
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
        let svg = line_chart_x(
            "t",
            "s",
            "ms",
            &[Series {
                name: "p50".into(),
                color: BLUE,
                dashed: false,
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            }],
            Some(0.5),
        );
        assert!(svg.contains("<svg") && svg.contains("p50"), "{svg}");
        assert!(line_chart_x("empty", "s", "ms", &[], None).contains("no data"));
    }
}
