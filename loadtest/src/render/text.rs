//! The terminal text printed after each command: a Locust-style summary per run (`run`), the side-by-side
//! tables of `compare`, and the sweep table of `scale`.

use std::fmt::Write as _;

use loadgen::idempotency::IdempotencyCounts;
use loadgen::outcome::FailureKind;

use crate::results::{DrainReport, EtaReport, LoadDescription, Phase, ResultsDocument, RunResult};
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

/// The side-by-side tables, queue timelines and factors, as printed after `compare`. Times and rates are lab
/// time (the run's clock × K, rates ÷ K), beside the lab's published figures; `results.json` keeps the run's
/// clock.
pub fn comparison(document: &ResultsDocument) -> String {
    let k = TimeScale::new(document.time_scale).factor();
    let mut out = String::new();
    let _ = writeln!(out, "\norderflow compare — target: {}", document.target);
    for note in &document.notes {
        let _ = writeln!(out, "  * {note}");
    }
    // Milliseconds on the run's clock, as a lab-speed duration.
    let lab_ms = |ms: f64| duration_words(ms * k / 1000.0);
    for pair in document.runs.chunks(2) {
        let [sync_run, async_run] = pair else { continue };
        let scenario = &sync_run.scenario;
        let labs = [lab_figures(scenario, "sync"), lab_figures(scenario, "async")];
        let _ = writeln!(out, "\n== {scenario} ({}) ==", describe_load(sync_run, k));
        let _ = writeln!(
            out,
            "{:<30}{:>14}{:>14}{:>14}{:>14}",
            "lab time", "sync", "async", "lab sync", "lab async"
        );
        let mut row = |label: &str, ours: [String; 2], lab: [Option<String>; 2]| {
            let lab = lab.map(|v| v.unwrap_or_else(|| "".to_owned()));
            let _ = writeln!(out, "{label:<30}{:>14}{:>14}{:>14}{:>14}", ours[0], ours[1], lab[0], lab[1]);
        };
        let runs = [sync_run, async_run];
        let lab_time = |value: Option<f64>| value.map(|ms| duration_words(ms / 1000.0));
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
        row("latency avg", runs.map(|r| lab_ms(r.latency.mean_ms)), latency(|l| l.avg_ms));
        row("latency min", runs.map(|r| lab_ms(r.latency.min_ms)), [None, None]);
        row("latency p50", runs.map(|r| lab_ms(r.latency.p50_ms)), latency(|l| l.p50_ms));
        row("latency p95", runs.map(|r| lab_ms(r.latency.p95_ms)), latency(|l| l.p95_ms));
        row("latency p99", runs.map(|r| lab_ms(r.latency.p99_ms)), latency(|l| l.p99_ms));
        row("latency max", runs.map(|r| lab_ms(r.latency.max_ms)), latency(|l| l.max_ms));
        if runs.iter().any(|r| r.idempotency.is_some()) {
            let keys = |pick: fn(&IdempotencyCounts) -> u64| {
                runs.map(|r| r.idempotency.as_ref().map_or("".into(), |k| pick(k).to_string()))
            };
            row("retries", keys(|k| k.retries), [None, None]);
            row("replays", keys(|k| k.replays), [None, None]);
            row("duplicate orders created", keys(|k| k.duplicate_orders), [None, None]);
        }
        row("throughput req/s", runs.map(|r| format!("{:.1}", r.throughput_per_s / k)), [None, None]);
        row("accepted/s", runs.map(|r| format!("{:.1}", r.accepted_per_s / k)), [None, None]);
        if async_run.schedule.is_some() {
            row(
                "sent late",
                runs.map(|r| r.schedule.map_or("".into(), |s| s.late.to_string())),
                [None, None],
            );
            row(
                "send lag p99 (run's clock)",
                runs.map(|r| r.schedule.map_or("".into(), |s| format!("{:.2} ms", s.lag.p99_ms))),
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
                    "drain measured",
                    [
                        "".into(),
                        format!(
                            "{}{}",
                            duration_words(drain.measured_s * k),
                            if drain.finished { "" } else { " (capped)" }
                        ),
                    ],
                    [None, lab.and_then(|l| l.drain_s.map(duration_words))],
                );
                if let Some(total) = drain.extrapolated_total_s {
                    row("drain extrapolated", ["".into(), duration_words(total * k)], [None, None]);
                }
                row(
                    "drain, Little (nominal L)",
                    ["".into(), duration_words(drain.predicted_s * k)],
                    [None, None],
                );
                if let Some(predicted) = drain.predicted_from_service_time_s {
                    row(
                        "drain, Little (measured S)",
                        ["".into(), duration_words(predicted * k)],
                        [None, None],
                    );
                }
                if let Some(line) = fidelity_line(&drain, k) {
                    let _ = writeln!(out, "  {line}");
                }
            }
            let _ = writeln!(
                out,
                "  queue backlog over time (lab time → visible + in flight; d = draining): {}",
                backlog_story(async_run, k)
            );
        }
        if let Some(e2e) = async_run.worker.as_ref().and_then(|w| w.end_to_end_ms.as_ref()) {
            let field = |name: &str| e2e.get(name).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
            let _ = writeln!(
                out,
                "  end-to-end (accepted → processed, worker): {} orders, p50 {}, p95 {}, p99 {}, max {}",
                field("count"),
                lab_ms(field("p50")),
                lab_ms(field("p95")),
                lab_ms(field("p99")),
                lab_ms(field("max"))
            );
        }
        if let Some(eta) = &async_run.eta {
            let _ = writeln!(out, "  {}", eta_line(eta, k));
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

/// The compressed clock's fidelity in one line: the service time achieved against the nominal latency, and
/// the drain against both predictions.
pub fn fidelity_line(drain: &DrainReport, k: f64) -> Option<String> {
    let service_ms = drain.service_time_ms?;
    let from_service = drain.predicted_from_service_time_s?;
    let off = |predicted: f64| (drain.total_s() / predicted.max(1e-9) - 1.0) * 100.0;
    Some(format!(
        "service time: {} per order measured vs {} nominal ({:+.1} %: the compressed clock's timer lateness, \
         not queueing); drain {:+.1} % vs Little from the nominal L, {:+.1} % vs Little from the measured S",
        precise(service_ms * k / 1000.0),
        precise(drain.payment_latency_ms * k / 1000.0),
        drain.service_time_inflation_pct.unwrap_or(0.0),
        off(drain.predicted_s),
        off(from_service),
    ))
}

/// Seconds with four significant digits, for service times whose percent matters.
fn precise(seconds: f64) -> String {
    if seconds < 1.0 { format!("{:.2} ms", seconds * 1000.0) } else { format!("{seconds:.3} s") }
}

/// The ETA's measured error in one line.
pub fn eta_line(eta: &EtaReport, k: f64) -> String {
    let pct = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:+.1} %"));
    format!(
        "ETA (GET /orders/{{id}} during the drain, error = (eta − settled) ÷ remaining wait): {} samples, \
         p50 {}, p95 |error| {}, 5th–95th {} … {}; median wait {}; {} lookups without an estimate",
        eta.samples,
        pct(eta.error_p50_pct),
        eta.abs_error_p95_pct.map_or("–".to_owned(), |v| format!("{v:.1} %")),
        pct(eta.error_p5_pct),
        pct(eta.error_p95_pct),
        eta.wait_p50_s.map_or("–".to_owned(), |s| duration_words(s * k)),
        eta.null_etas,
    )
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

/// The load in lab time.
fn describe_load(run: &RunResult, k: f64) -> String {
    match &run.load {
        LoadDescription::Open { rate_per_s, duration_s, .. } => {
            format!("open model, {:.0} req/s for {}", rate_per_s / k, duration_words(duration_s * k))
        }
        LoadDescription::Closed { users, spawn_rate, wait_min_ms, wait_max_ms, duration_s, .. } => format!(
            "{users} users, spawn {:.0}/s, wait {:.0}-{:.0} ms, {}",
            spawn_rate / k,
            wait_min_ms * k,
            wait_max_ms * k,
            duration_words(duration_s * k)
        ),
    }
}

/// About a dozen `time: backlog` samples across the load and the drain, in lab time.
fn backlog_story(run: &RunResult, k: f64) -> String {
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
            format!("{}{mark}: {}", duration_words(p.t_s * k), p.queue_backlog.unwrap_or(0))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

/// Seconds as a duration a person reads at a glance: `0.25 ms`, `12.5 ms`, `450 ms`, `10.0 s`, `3 m 4 s`,
/// `2 h 59 m`.
pub fn duration_words(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    match seconds.abs() {
        s if s < 0.01 => format!("{ms:.2} ms"),
        s if s < 0.1 => format!("{ms:.1} ms"),
        s if s < 1.0 => format!("{ms:.0} ms"),
        s if s < 59.95 => format!("{seconds:.1} s"),
        _ => human(seconds),
    }
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

/// The sweep as a table, as printed after `scale`: rates and times in lab time.
pub fn scaling(document: &ResultsDocument) -> String {
    let k = TimeScale::new(document.time_scale).factor();
    let mut out = format!("\norderflow scale — target: {}\n", document.target);
    for note in &document.notes {
        let _ = writeln!(out, "  * {note}");
    }
    let _ = writeln!(
        out,
        "\n{:>9}{:>11}{:>9}{:>13}{:>7}{:>12}{:>14}{:>14}{:>17}{:>8}{:>8}{:>8}",
        "consumers",
        "offered/s",
        "N/L /s",
        "processed/s",
        "peak",
        "drain",
        "Little (L)",
        "Little (S)",
        "S measured",
        "CPU",
        "RSS MiB",
        "kept up"
    );
    for p in &document.scaling {
        let service = p.service_time_ms.map_or("–".to_owned(), |ms| {
            let nominal_ms = 1000.0 * p.consumers as f64 / p.capacity_per_s.max(1e-9);
            format!("{} {:+.1}%", precise(ms * k / 1000.0), (ms / nominal_ms - 1.0) * 100.0)
        });
        let _ = writeln!(
            out,
            "{:>9}{:>11.1}{:>9.1}{:>13.1}{:>7}{:>12}{:>14}{:>14}{:>17}{:>8}{:>8}{:>8}",
            p.consumers,
            p.offered_rate_per_s / k,
            p.capacity_per_s / k,
            p.processing_rate_per_s / k,
            p.peak_backlog,
            format!("{}{}", duration_words(p.drain_s * k), if p.drain_finished { "" } else { "+" }),
            duration_words(p.drain_predicted_s * k),
            p.drain_predicted_from_service_time_s.map_or("–".to_owned(), |s| duration_words(s * k)),
            service,
            p.worker_cpu_cores.map_or("–".into(), |c| format!("{c:.3}")),
            p.rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
            if p.kept_up { "yes" } else { "no" },
        );
    }
    if let Some(first) = document.scaling.first() {
        let measured_min = document.scaling.iter().find(|p| p.kept_up).map(|p| p.consumers);
        let _ = writeln!(
            out,
            "\nLittle's law: at {:.1} orders/s and {} per payment, at least {} consumers keep up; of this sweep, \
             the fewest that kept up: {}.  (lab: 60/s × 3 s = 180; 200 consumers had no backlog)",
            first.offered_rate_per_s / k,
            duration_words(first.consumers as f64 / first.capacity_per_s * k),
            first.min_consumers_littles_law,
            measured_min.map_or("none".to_owned(), |n| n.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "Times and rates in lab time (the run's clock × K = {k}; results.json keeps the run's clock). Little (L): \
         backlog × nominal payment latency ÷ N; Little (S): with the service time S the consumers achieved — on \
         a compressed clock S runs over L by the timer's lateness, an artifact of the clock, not queueing."
    );
    for run in document.runs.iter().filter(|r| r.eta.is_some()) {
        if let Some(eta) = &run.eta {
            let _ = writeln!(out, "{}: {}", run.name, eta_line(eta, k));
        }
    }
    let _ = writeln!(
        out,
        "(lab drains: 1 → 2.99 h, 5 → 35.2 min, 20 → 8.0 min, 100 → 48 s, 200 → none; '+' = capped)"
    );
    out
}
