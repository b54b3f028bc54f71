//! The terminal text printed after each command: a Locust-style summary per run (`run`), the side-by-side
//! tables of `compare`, and the sweep table of `scale`.

use std::fmt::Write as _;

use loadgen::idempotency::IdempotencyCounts;
use loadgen::outcome::FailureKind;

use crate::results::{LoadDescription, Phase, ResultsDocument, RunResult};
use crate::scenario::{LabFigures, TimeScale, lab_figures};

/// A short Locust-style summary of each run, as printed after `run`.
pub fn runs(document: &ResultsDocument) -> String {
    let mut out = String::new();
    for run in &document.runs {
        let l = &run.latency;
        out.push_str(&format!(
            "\n{} → {}\n  requests {}  accepted {:.1}%  failures: {}\n  latency ms: avg {:.1}  min {:.1}  p50 {:.1}  p95 {:.1}  \
             p99 {:.1}  max {:.1}\n  throughput {:.1} req/s ({:.1} accepted/s)\n",
            run.name,
            run.path,
            run.outcomes.total(),
            run.accepted_pct,
            FailureKind::ALL
                .iter()
                .map(|&k| format!("{} {}", k.name(), run.outcomes.failures_of(k)))
                .collect::<Vec<_>>()
                .join(", "),
            l.mean_ms,
            l.min_ms,
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.max_ms,
            run.throughput_per_s,
            run.accepted_per_s
        ));
        if let Some(keys) = run.idempotency {
            out.push_str(&format!(
                "  idempotency keys: {} keyed requests, {} retries, {} replays, {} duplicate orders created{}\n",
                keys.keyed_requests,
                keys.retries,
                keys.replays,
                keys.duplicate_orders,
                if keys.duplicate_orders > 0 { " (the server created orders twice)" } else { "" }
            ));
        }
        if let Some(schedule) = run.schedule {
            out.push_str(&format!(
                "  schedule: {} sent late (> {} ms), lag p99 {:.3} ms, {} connections\n",
                schedule.late, schedule.late_threshold_ms, schedule.lag.p99_ms, schedule.connections
            ));
        }
        if let Some(queue) = run.queue {
            out.push_str(&format!(
                "  queue: peak backlog {}, {} at load end",
                queue.peak_backlog, queue.backlog_at_load_end
            ));
            if let Some(drain) = queue.drain {
                out.push_str(&format!(
                    ", drain {:.2} s{} (Little's law {:.2} s)",
                    drain.measured_s,
                    if drain.finished { "" } else { " capped" },
                    drain.predicted_s
                ));
            }
            out.push('\n');
        }
    }
    out
}

/// The side-by-side tables, queue timelines and factors, as printed after `compare`.
pub fn comparison(document: &ResultsDocument) -> String {
    let scale = TimeScale::new(document.time_scale);
    let mut out = String::new();
    let _ = writeln!(out, "\norderflow compare — target: {}", document.target);
    for note in &document.notes {
        let _ = writeln!(out, "  * {note}");
    }
    for pair in document.runs.chunks(2) {
        let [sync_run, async_run] = pair else { continue };
        let scenario = &sync_run.scenario;
        let labs = [lab_figures(scenario, "sync"), lab_figures(scenario, "async")];
        let _ = writeln!(out, "\n== {scenario} ({}) ==", describe_load(sync_run));
        let _ = writeln!(out, "{:<28}{:>14}{:>14}{:>14}{:>14}", "", "sync", "async", "lab sync", "lab async");
        let mut row = |label: &str, ours: [String; 2], lab: [Option<String>; 2]| {
            let lab = lab.map(|v| v.unwrap_or_else(|| "".to_owned()));
            let _ = writeln!(out, "{label:<28}{:>14}{:>14}{:>14}{:>14}", ours[0], ours[1], lab[0], lab[1]);
        };
        let runs = [sync_run, async_run];
        let lab_time = |value: Option<f64>| value.map(|ms| format!("{:.1}", ms / scale.factor()));
        row(
            "requests",
            runs.map(|r| r.outcomes.total().to_string()),
            labs.map(|l| l.map(|l| l.requests.to_string())),
        );
        row(
            "accepted %",
            runs.map(|r| format!("{:.1}", r.accepted_pct)),
            labs.map(|l| l.map(|l| format!("{:.1}", l.accepted_pct))),
        );
        for kind in FailureKind::ALL {
            row(
                &format!("  {}", failure_label(kind)),
                runs.map(|r| r.outcomes.failures_of(kind).to_string()),
                [None, None],
            );
        }
        let latency = |pick: fn(&LabFigures) -> Option<f64>| labs.map(|l| lab_time(l.and_then(|l| pick(&l))));
        row("avg ms", runs.map(|r| format!("{:.1}", r.latency.mean_ms)), latency(|l| l.avg_ms));
        row("min ms", runs.map(|r| format!("{:.1}", r.latency.min_ms)), [None, None]);
        row("p50 ms", runs.map(|r| format!("{:.1}", r.latency.p50_ms)), latency(|l| l.p50_ms));
        row("p95 ms", runs.map(|r| format!("{:.1}", r.latency.p95_ms)), latency(|l| l.p95_ms));
        row("p99 ms", runs.map(|r| format!("{:.1}", r.latency.p99_ms)), latency(|l| l.p99_ms));
        row("max ms", runs.map(|r| format!("{:.1}", r.latency.max_ms)), latency(|l| l.max_ms));
        if runs.iter().any(|r| r.idempotency.is_some()) {
            let keys = |pick: fn(&IdempotencyCounts) -> u64| {
                runs.map(|r| r.idempotency.as_ref().map_or("".into(), |k| pick(k).to_string()))
            };
            row("retries", keys(|k| k.retries), [None, None]);
            row("replays", keys(|k| k.replays), [None, None]);
            row("duplicate orders created", keys(|k| k.duplicate_orders), [None, None]);
        }
        row("throughput req/s", runs.map(|r| format!("{:.1}", r.throughput_per_s)), [None, None]);
        row("accepted/s", runs.map(|r| format!("{:.1}", r.accepted_per_s)), [None, None]);
        if async_run.schedule.is_some() {
            row(
                "sent late",
                runs.map(|r| r.schedule.map_or("".into(), |s| s.late.to_string())),
                [None, None],
            );
            row(
                "send lag p99 ms",
                runs.map(|r| r.schedule.map_or("".into(), |s| format!("{:.2}", s.lag.p99_ms))),
                [None, None],
            );
        }
        if let Some(queue) = async_run.queue {
            let lab = labs[1];
            row(
                "queue: peak backlog",
                ["".into(), queue.peak_backlog.to_string()],
                [None, lab.and_then(|l| l.peak_backlog.map(|p| p.to_string()))],
            );
            row(
                "queue: backlog at load end",
                ["".into(), queue.backlog_at_load_end.to_string()],
                [None, None],
            );
            if let Some(drain) = queue.drain {
                row(
                    "drain measured s",
                    [
                        "".into(),
                        format!("{:.2}{}", drain.measured_s, if drain.finished { "" } else { " (capped)" }),
                    ],
                    [None, lab.and_then(|l| l.drain_s.map(|s| format!("{:.1}", s / scale.factor())))],
                );
                row(
                    "drain predicted s (Little)",
                    ["".into(), format!("{:.2}", drain.predicted_s)],
                    [None, None],
                );
                if let Some(total) = drain.extrapolated_total_s {
                    row("drain extrapolated s", ["".into(), format!("{total:.1}")], [None, None]);
                }
                if scale.factor() > 1.0 {
                    let at_lab_speed =
                        drain.extrapolated_total_s.unwrap_or(drain.measured_s) * scale.factor();
                    row(
                        "drain at lab speed",
                        ["".into(), human(at_lab_speed)],
                        [None, Some("2 h 59 m".into())],
                    );
                }
            }
            let _ = writeln!(
                out,
                "  queue backlog over time (s → visible + in flight): {}",
                backlog_story(async_run)
            );
        }
        if let Some(e2e) = async_run.worker.as_ref().and_then(|w| w.end_to_end_ms.as_ref()) {
            let field = |name: &str| e2e.get(name).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
            let _ = writeln!(
                out,
                "  end-to-end (accepted → processed, worker): {} orders, p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                field("count"),
                field("p50"),
                field("p95"),
                field("p99"),
                field("max")
            );
        }
        if let Some(comparison) = document.comparisons.iter().find(|c| &c.scenario == scenario) {
            let times =
                |v: Option<f64>| v.map_or("∞ (sync accepted none)".to_owned(), |v| format!("{v:.1}×"));
            let _ = writeln!(
                out,
                "  improvement: accepted {:+.1} points ({} as many orders), answers {} faster at p50, {} at p99",
                comparison.accepted_pct_gain,
                times(comparison.accepted_factor),
                times(comparison.p50_speedup),
                times(comparison.p99_speedup),
            );
        }
    }
    out
}

fn failure_label(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Timeout => "timeout (incl. 504)",
        FailureKind::Shed => "shed (503)",
        FailureKind::Declined => "declined (402)",
        FailureKind::ServerError => "other 5xx",
        FailureKind::ClientError => "4xx / unexpected",
        FailureKind::Transport => "connection errors",
        FailureKind::NotSent => "not sent in time",
    }
}

fn describe_load(run: &RunResult) -> String {
    match &run.load {
        LoadDescription::Open { rate_per_s, duration_s, .. } => {
            format!("open model, {rate_per_s:.0} req/s for {duration_s:.2} s")
        }
        LoadDescription::Closed { users, spawn_rate, wait_min_ms, wait_max_ms, duration_s, .. } => {
            format!(
                "{users} users, spawn {spawn_rate:.0}/s, wait {wait_min_ms:.1}-{wait_max_ms:.1} ms, {duration_s:.2} s"
            )
        }
    }
}

/// About a dozen `time: backlog` samples across the load and the drain.
fn backlog_story(run: &RunResult) -> String {
    let points: Vec<_> = run.timeline.iter().filter(|p| p.queue_backlog.is_some()).collect();
    if points.is_empty() {
        return "not observed".to_owned();
    }
    let step = points.len().div_ceil(12).max(1);
    let mut picked: Vec<_> = points.iter().step_by(step).collect();
    if let Some(last) = points.last()
        && picked.last().is_none_or(|p| !std::ptr::eq(**p, *last))
    {
        picked.push(last);
    }
    picked
        .iter()
        .map(|p| {
            let mark = if p.phase == Phase::Drain { "d" } else { "" };
            format!("{:.2}{mark}:{}", p.t_s, p.queue_backlog.unwrap_or(0))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

/// Seconds as `2 h 59 m`, `35 m 12 s` or `48 s`.
pub fn human(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} m {} s", s / 60, s % 60),
        _ => format!("{} h {} m", s / 3600, (s % 3600) / 60),
    }
}

/// The sweep as a table, as printed after `scale`.
pub fn scaling(document: &ResultsDocument) -> String {
    let k = TimeScale::new(document.time_scale);
    let mut out = format!("\norderflow scale — target: {}\n", document.target);
    for note in &document.notes {
        let _ = writeln!(out, "  * {note}");
    }
    let _ = writeln!(
        out,
        "\n{:>9}{:>12}{:>12}{:>14}{:>12}{:>14}{:>14}{:>16}{:>10}{:>9}{:>9}",
        "consumers",
        "offered/s",
        "N/L /s",
        "processed/s",
        "peak",
        "drain s",
        "Little s",
        "lab-speed drain",
        "CPU",
        "RSS MiB",
        "kept up"
    );
    for p in &document.scaling {
        let _ = writeln!(
            out,
            "{:>9}{:>12.1}{:>12.1}{:>14.1}{:>12}{:>14}{:>14.2}{:>16}{:>10}{:>9}{:>9}",
            p.consumers,
            p.offered_rate_per_s,
            p.capacity_per_s,
            p.processing_rate_per_s,
            p.peak_backlog,
            format!("{:.2}{}", p.drain_s, if p.drain_finished { "" } else { "+" }),
            p.drain_predicted_s,
            human(p.drain_s * k.factor()),
            p.worker_cpu_cores.map_or("–".into(), |c| format!("{c:.3}")),
            p.rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
            if p.kept_up { "yes" } else { "no" },
        );
    }
    if let Some(first) = document.scaling.first() {
        let measured_min = document.scaling.iter().find(|p| p.kept_up).map(|p| p.consumers);
        let _ = writeln!(
            out,
            "\nLittle's law: at {:.1} orders/s and {:.1} ms per payment, at least {} consumers keep up; of this sweep, \
             the fewest that kept up: {}.  (lab: 60/s × 3 s = 180; 200 consumers had no backlog)",
            first.offered_rate_per_s,
            1000.0 * first.consumers as f64 / first.capacity_per_s,
            first.min_consumers_littles_law,
            measured_min.map_or("none".to_owned(), |n| n.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "(lab drains: 1 → 2.99 h, 5 → 35.2 min, 20 → 8.0 min, 100 → 48 s, 200 → none; '+' = capped)"
    );
    out
}
