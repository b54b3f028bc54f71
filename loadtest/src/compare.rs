//! `compare`: the classic experiment. The synchronous design against the asynchronous one under the lab's
//! scenarios, printed as Locust-style tables side by side with the lab's published figures, the queue's
//! backlog over time and its drain (measured, and predicted by Little's law), and the improvement factors.

use std::fmt::Write as _;

use tokio_util::sync::CancellationToken;

use crate::experiment::{self, Environment, ExperimentSettings, RunRequest};
use crate::idempotency::IdempotencyCounts;
use crate::outcome::FailureKind;
use crate::results::{Comparison, Phase, ResultsDocument, RunResult};
use crate::scenario::{LabFigures, TimeScale, lab_figures, lab_scenarios};

/// Runs every lab scenario against the sync and the async endpoint and returns the results document.
pub async fn compare(
    settings: &ExperimentSettings,
    max_connections: usize,
    quick: bool,
    stop: &CancellationToken,
) -> std::io::Result<ResultsDocument> {
    let mut document =
        ResultsDocument::new("compare", &settings.environment.describe(), settings.time_scale.factor());
    document.idempotency_keys = settings.idempotency.is_some();
    document.notes = notes(settings, quick);
    // Idempotency keys go with the async runs only: the sync runs stay the lab's plain client.
    let sync_settings = ExperimentSettings { idempotency: None, ..settings.clone() };
    for scenario in lab_scenarios(max_connections, quick) {
        for mode in ["sync", "async"] {
            if stop.is_cancelled() {
                return Ok(document);
            }
            let run_settings = if mode == "sync" { &sync_settings } else { settings };
            let request = RunRequest {
                scenario: scenario.name.to_owned(),
                mode: mode.to_owned(),
                lab_load: scenario.load.clone(),
                watch_drain: scenario.watch_drain && mode == "async",
                consumers: None,
            };
            let outcome = experiment::run(run_settings, &request, stop).await?;
            document.runs.push(outcome.result);
        }
        let runs = &document.runs[document.runs.len() - 2..];
        document.comparisons.push(improvement(scenario.name, &runs[0], &runs[1]));
    }
    Ok(document)
}

/// What a reader must know to read the figures.
fn notes(settings: &ExperimentSettings, quick: bool) -> Vec<String> {
    let k = settings.time_scale.factor();
    let mut notes = Vec::new();
    if let Environment::Embedded(lab) = &settings.environment {
        notes.push(format!(
            "Embedded pipeline in one process (receiver, embedded SNS→SQS, worker with {} consumer(s)), lab defaults: \
             {} ms payment, 1 sync payment slot, {:.0}% declines, {} ms sync timeout.",
            lab.consumers,
            lab.payment_latency.as_millis(),
            lab.decline_rate * 100.0,
            lab.sync_timeout.as_millis()
        ));
    }
    if k > 1.0 {
        notes.push(format!(
            "Time-scaled run, K = {k}: payment latency, timeouts, waits and durations are divided by {k}, rates \
             multiplied by {k}. Counts (requests, backlog) are the lab's; every time and rate below is what was \
             measured on the fast clock. The 'lab' columns are the original lab's published figures on the same \
             clock (times ÷ {k}, rates × {k}); at lab speed, multiply our times by {k}."
        ));
    }
    notes.push(
        "The lab's normal-traffic sync figures (147 requests in 30 s, 95% paid, ~3 s each) imply its payments ran \
         concurrently; this sync baseline holds a single payment slot (1 order per payment time), so five users \
         already queue for it and some time out. Its flash-sale collapse is the lab's."
            .to_owned(),
    );
    if let Some(policy) = settings.idempotency {
        notes.push(format!("Async runs: {}. Sync runs send no keys.", policy.describe(settings.time_scale)));
    }
    if quick {
        notes.push("Quick preset: every scenario shortened to 10 lab seconds (CI).".to_owned());
    }
    notes.push(format!(
        "Only the open-model flash sale's async run watches the drain (capped at {} s real time; beyond it the rest \
         is extrapolated from the measured rate). Other async runs report their backlog at the end.",
        settings.drain_cap.as_secs()
    ));
    notes
}

/// Improvement factors of `async_run` over `sync_run`.
pub fn improvement(scenario: &str, sync_run: &RunResult, async_run: &RunResult) -> Comparison {
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    Comparison {
        scenario: scenario.to_owned(),
        accepted_pct_gain: async_run.accepted_pct - sync_run.accepted_pct,
        accepted_factor: ratio(async_run.outcomes.accepted as f64, sync_run.outcomes.accepted as f64),
        accepted_rate_factor: ratio(async_run.accepted_per_s, sync_run.accepted_per_s),
        p50_speedup: ratio(sync_run.latency.p50_ms, async_run.latency.p50_ms),
        p99_speedup: ratio(sync_run.latency.p99_ms, async_run.latency.p99_ms),
    }
}

/// The side-by-side tables, queue timelines and factors, as printed after `compare`.
pub fn render(document: &ResultsDocument) -> String {
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
        crate::results::LoadDescription::Open { rate_per_s, duration_s, .. } => {
            format!("open model, {rate_per_s:.0} req/s for {duration_s:.2} s")
        }
        crate::results::LoadDescription::Closed {
            users,
            spawn_rate,
            wait_min_ms,
            wait_max_ms,
            duration_s,
            ..
        } => {
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
