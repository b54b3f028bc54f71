//! `compare`: the classic experiment. The synchronous design against the asynchronous one under the lab's
//! scenarios, run one after the other, each pair with its improvement factors; printed by
//! [`crate::render::text::comparison`] as Locust-style tables beside the lab's published figures.

use tokio_util::sync::CancellationToken;

use crate::experiment::{self, Environment, ExperimentSettings, RunRequest};
use crate::results::{Comparison, ResultsDocument, RunResult};
use crate::scenario::{describe_retry_policy, lab_scenarios};

/// Runs every lab scenario against the sync and the async endpoint and returns the results document.
pub async fn compare(
    settings: &ExperimentSettings,
    max_connections: usize,
    quick: bool,
    stop: &CancellationToken,
) -> std::io::Result<ResultsDocument> {
    let settings = &ExperimentSettings {
        environment: settings.environment.with_scaled_worker_clocks(settings.time_scale.factor()),
        ..settings.clone()
    };
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
            lab.payment.latency.as_millis(),
            lab.payment.decline_rate * 100.0,
            lab.sync_timeout.as_millis()
        ));
    }
    if k > 1.0 {
        notes.push(format!(
            "Time-scaled run, K = {k}: payment latency, timeouts, waits and durations are divided by {k}, rates \
             multiplied by {k}, and the worker's own clocks (visibility timeout, backoffs, registry heartbeats) \
             with them. Counts (requests, backlog) are the lab's. The tables show lab time: every time measured on \
             the fast clock × {k}, every rate ÷ {k}, beside the original lab's figures; results.json keeps the \
             fast-clock figures. The async answer's own time (a 202 after a publish) is machine time, not \
             compressed: × {k} overstates it."
        ));
    }
    notes.push(
        "The lab's normal-traffic sync figures (147 requests in 30 s, 95% paid, ~3 s each) imply its payments ran \
         concurrently; this sync baseline holds a single payment slot (1 order per payment time), so five users \
         already queue for it and some time out. Its flash-sale collapse is the lab's."
            .to_owned(),
    );
    if let Some(policy) = settings.idempotency {
        notes.push(format!(
            "Async runs: {}. Sync runs send no keys.",
            describe_retry_policy(&policy, settings.time_scale)
        ));
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
