//! The outage experiment as terminal text and as a report section: the two variants side by side, and the
//! backlog of each over time with the outage window drawn in.

use std::fmt::Write as _;

use super::html::{ChartSeries, escape_text, series_chart};
use crate::outage::{OutageReport, OutageRun};
use crate::results::ResultsDocument;

/// One row of the side-by-side table: a label and each variant's value.
fn rows(report: &OutageReport) -> Vec<(&'static str, Vec<String>)> {
    let each = |pick: &dyn Fn(&OutageRun) -> String| report.runs.iter().map(pick).collect::<Vec<_>>();
    let seconds = |value: Option<f64>| value.map_or_else(|| "–".to_owned(), |s| format!("{s:.0} s"));
    vec![
        ("accepted", each(&|r| format!("{} ({:.1} %)", r.accepted, r.accepted_pct))),
        ("orders in the ledger (202s and timed-out answers)", each(&|r| r.recorded.to_string())),
        ("settled (paid or declined)", each(&|r| r.settled.to_string())),
        ("orders dead-lettered", each(&|r| r.dead_lettered.to_string())),
        ("lost (must be 0)", each(&|r| r.lost.to_string())),
        ("charged twice (must be 0)", each(&|r| r.charged_twice.to_string())),
        ("poison sent / in the DLQ", each(&|r| format!("{} / {}", r.poison_sent, r.poison_dead_lettered))),
        ("retries", each(&|r| r.retries.to_string())),
        ("worker crashes", each(&|r| r.crashes.to_string())),
        (
            "breaker transitions (opened)",
            each(&|r| format!("{} ({})", r.breaker_transitions, r.breaker_opened)),
        ),
        ("breaker open", each(&|r| format!("{:.0} s", r.breaker_open_s))),
        ("peak backlog", each(&|r| r.peak_backlog.to_string())),
        (
            "backlog when the gateway came back",
            each(&|r| r.backlog_at_recovery.map_or("–".into(), |b| b.to_string())),
        ),
        ("recovery: until the backlog falls (breaker probe)", each(&|r| seconds(r.detection_s))),
        ("recovery: until the queue is empty", each(&|r| seconds(r.recovery_s))),
        (
            "drain: measured / predicted (backlog ÷ rate)",
            each(&|r| {
                let measured = r.recovery_s.zip(r.detection_s).map(|(all, wait)| all - wait);
                format!("{} / {}", seconds(measured), seconds(r.predicted_drain_s))
            }),
        ),
        (
            "after a DLQ redrive: moved / recovered / lost",
            each(&|r| {
                r.redrive
                    .as_ref()
                    .map_or("–".to_owned(), |d| format!("{} / {} / {}", d.moved, d.recovered, d.lost))
            }),
        ),
    ]
}

/// The terminal summary of an `outage` document.
pub fn text(document: &ResultsDocument) -> String {
    let Some(report) = &document.outage else { return String::new() };
    let mut out = String::new();
    for note in &document.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(
        out,
        "\nPayment gateway down from {:.0} s for {:.0} s (lab time), {} consumers\n",
        report.outage_start_s, report.outage_length_s, report.consumers
    );
    let _ = write!(out, "{:<46}", "");
    for run in &report.runs {
        let _ = write!(out, "{:>24}", run.variant);
    }
    out.push('\n');
    for (label, values) in rows(report) {
        let _ = write!(out, "{label:<46}");
        for value in values {
            let _ = write!(out, "{value:>24}");
        }
        out.push('\n');
    }
    if let [with, without, ..] = report.runs.as_slice() {
        let _ = writeln!(
            out,
            "\nThe breaker kept {} orders out of the dead-letter queue ({} with it, {} without).",
            without.dead_lettered.saturating_sub(with.dead_lettered),
            with.dead_lettered,
            without.dead_lettered
        );
    }
    out
}

/// The report section of an `outage` document (empty for other commands).
pub fn html_section(document: &ResultsDocument) -> String {
    let Some(report) = &document.outage else { return String::new() };
    let k = document.time_scale;
    let mut html =
        String::from("<h2>Payment-gateway outage: circuit breaker on and off</h2><table><tr><th></th>");
    for run in &report.runs {
        let _ = write!(html, "<th>{}</th>", escape_text(&run.variant));
    }
    html.push_str("</tr>");
    for (label, values) in rows(report) {
        let _ = write!(html, "<tr><td>{}</td>", escape_text(label));
        for value in values {
            let _ = write!(html, "<td>{}</td>", escape_text(&value));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    const COLOURS: [(u8, u8, u8); 2] = [(31, 119, 180), (214, 39, 40)];
    let mut series: Vec<ChartSeries> = report
        .runs
        .iter()
        .zip(COLOURS.iter().cycle())
        .filter_map(|(outage_run, &rgb)| {
            let run = document.runs.iter().find(|run| run.name == outage_run.run)?;
            let points = run
                .timeline
                .iter()
                .filter_map(|p| p.queue_backlog.map(|backlog| (p.t_s * k / 60.0, backlog as f64)))
                .collect();
            Some(ChartSeries { name: outage_run.variant.clone(), rgb, points })
        })
        .collect();
    let peak = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let (start, end) =
        (report.outage_start_s / 60.0, (report.outage_start_s + report.outage_length_s) / 60.0);
    series.push(ChartSeries {
        name: "gateway down".to_owned(),
        rgb: (120, 120, 120),
        points: vec![(start, 0.0), (start, peak), (end, peak), (end, 0.0)],
    });
    html.push_str(&series_chart(
        "Backlog (visible + in flight); the grey box is the outage",
        "lab minutes since the sale began",
        "messages",
        &series,
        None,
    ));
    html.push_str(
        "<p>With the breaker the backlog waits in the queue through the outage and drains once the gateway is \
         back; without it the orders cycle through their receives and leave for the dead-letter queue.</p>",
    );
    html
}
