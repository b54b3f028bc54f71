//! `scale`: the worker-scaling sweep. The flash sale (60 orders/s for 60 lab seconds) against the async
//! endpoint with 1, 5, 20, 100, 200 consumers: processing rate, peak backlog, drain time, worker CPU and RSS,
//! and Little's law's minimum consumers (rate × latency) beside what was measured; printed by
//! [`crate::render::text::scaling`].

use loadgen::LoadModel;
use tokio_util::sync::CancellationToken;

use crate::experiment::{self, Environment, ExperimentSettings, RunRequest};
use crate::results::{QueueReport, ResultsDocument, ScalingPoint};
use crate::scenario::{LAB_PAYMENT_LATENCY, describe_retry_policy, lab_scenarios};

/// The lab's sweep.
pub const DEFAULT_CONSUMERS: [usize; 5] = [1, 5, 20, 100, 200];

/// Runs the flash sale once per consumer count and returns the results document (runs and scaling points).
pub async fn scale(
    settings: &ExperimentSettings,
    consumers: &[usize],
    max_connections: usize,
    quick: bool,
    stop: &CancellationToken,
) -> std::io::Result<ResultsDocument> {
    let settings = &ExperimentSettings {
        environment: settings.environment.with_scaled_worker_clocks(settings.time_scale.factor()),
        ..settings.clone()
    };
    let k = settings.time_scale;
    let mut document = ResultsDocument::new("scale", &settings.environment.describe(), k.factor());
    document.idempotency_keys = settings.idempotency.is_some();
    let flash = lab_scenarios(max_connections, quick)
        .into_iter()
        .find(|s| s.name == "flash-sale-open")
        .expect("a lab scenario");
    let LoadModel::Open(lab_load) = &flash.load else {
        unreachable!("the flash sale is an open-model scenario")
    };
    let lab_latency = match &settings.environment {
        Environment::Embedded(config) => config.payment.latency,
        Environment::Deployed { payment_latency, .. } => *payment_latency,
    };
    if lab_latency != LAB_PAYMENT_LATENCY || k.factor() > 1.0 {
        document.notes.push(format!(
            "Payment latency {} ms at lab speed; time scale K = {}: times ÷ K, rates × K on the run's clock.",
            lab_latency.as_millis(),
            k.factor()
        ));
    }
    document.notes.push(format!(
        "Drains are watched for at most {} s real time, then extrapolated from the measured rate.",
        settings.drain_cap.as_secs()
    ));
    if let Some(policy) = settings.idempotency {
        document.notes.push(format!("Idempotency keys: {}.", describe_retry_policy(&policy, k)));
    }
    let offered = k.rate(lab_load.rate);
    let latency = k.duration(lab_latency);
    let min_consumers = (offered * latency.as_secs_f64()).ceil() as u64;
    for &n in consumers {
        if stop.is_cancelled() {
            break;
        }
        let request = RunRequest {
            scenario: format!("scale-{n}"),
            mode: "async".to_owned(),
            lab_load: flash.load.clone(),
            watch_drain: true,
            consumers: Some(n),
        };
        let outcome = experiment::run(settings, &request, stop).await?;
        let result = &outcome.result;
        let queue = result.queue.unwrap_or(QueueReport {
            peak_backlog: 0,
            peak_at_s: 0.0,
            backlog_at_load_end: 0,
            drain: None,
        });
        let drain = queue.drain;
        let drain_s = drain.map_or(0.0, |d| d.measured_s);
        let processed = result.worker.as_ref().and_then(|w| w.processed).unwrap_or(0);
        document.scaling.push(ScalingPoint {
            consumers: n,
            offered_rate_per_s: offered,
            capacity_per_s: n as f64 / latency.as_secs_f64(),
            processing_rate_per_s: processed as f64 / (result.load_duration_s + drain_s).max(1e-9),
            peak_backlog: queue.peak_backlog,
            drain_s,
            drain_predicted_s: drain.map_or(0.0, |d| d.predicted_s),
            drain_predicted_from_service_time_s: drain.and_then(|d| d.predicted_from_service_time_s),
            service_time_ms: drain.and_then(|d| d.service_time_ms),
            drain_finished: drain.is_none_or(|d| d.finished),
            worker_cpu_cores: outcome.worker_cpu_cores,
            rss_mib: outcome.rss_mib,
            min_consumers_littles_law: min_consumers,
            // Keeping up: when the sale ends, nothing is queued beyond the orders being paid (≤ N in flight,
            // with half as many again allowed for receive batching and sampling).
            kept_up: queue.backlog_at_load_end as f64 <= 1.5 * n as f64,
        });
        document.runs.push(outcome.result);
    }
    Ok(document)
}
