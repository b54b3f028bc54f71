//! The process-wide Prometheus recorder: installed once, with the histogram buckets each service names, and kept
//! drained by an upkeep thread.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// How often the upkeep thread folds recorded samples into the histograms.
///
/// Why a thread and why every second: the recorder keeps every sample until upkeep; at 70,000 requests/s, five
/// seconds of them took tens of milliseconds to fold, and on a runtime worker that pause landed in the request
/// latency tail (p99 at 10,000 orders/s went from ~3 ms to 12–23 ms in receiver/benches/http.rs). On its own
/// thread the OS preempts it instead, and memory stays flat when nobody scrapes `/metrics`.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Which histograms a bucket set applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricName {
    /// Exactly this metric.
    Exact(&'static str),
    /// Every metric with this prefix.
    Prefix(&'static str),
}

/// The buckets of one histogram (or family): a service lists these next to the metrics it records, so every
/// process that hosts the service (its binary, a bench, the load tool's in-process stack) exports the same
/// histograms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Buckets {
    /// The histogram(s).
    pub metric: MetricName,
    /// Upper bounds, ascending.
    pub bounds: &'static [f64],
}

/// Bucket sets shared by several services' histograms, named by what they measure.
pub mod bucket_sets {
    /// Request and call latencies, 0.5 ms to 30 s: an HTTP answer or a broker call.
    pub const CALL_SECONDS: &[f64] =
        &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    /// One order's processing, a fast payment to five minutes of retries.
    pub const PROCESSING_SECONDS: &[f64] =
        &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 30.0, 60.0, 300.0];
    /// Accepted to settled: a second when idle, hours when a flash sale's backlog drains.
    pub const END_TO_END_SECONDS: &[f64] =
        &[0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0];
    /// Entries in one SNS/SQS batch call (1 to 10).
    pub const BATCH_ENTRIES: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
}

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A bucket set was empty, or another recorder is already installed in this process.
    #[error("installing the Prometheus recorder: {0}")]
    Recorder(#[from] BuildError),
    /// The upkeep thread could not start; without it the recorder's memory grows until scraped.
    #[error("starting the metrics upkeep thread: {0}")]
    Upkeep(#[from] std::io::Error),
}

/// A recorder builder with `buckets` (histograms not named get summaries): what [`install`] installs, and what a
/// test builds a thread-local recorder from, so both export the same histograms.
pub fn builder(buckets: &[Buckets]) -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for set in buckets {
        let matcher = match set.metric {
            MetricName::Exact(name) => Matcher::Full(name.into()),
            MetricName::Prefix(prefix) => Matcher::Prefix(prefix.into()),
        };
        builder = builder.set_buckets_for_metric(matcher, set.bounds)?;
    }
    Ok(builder)
}

/// Installs this process's Prometheus recorder with `buckets` (see [`builder`]) and starts its upkeep thread. A
/// process has one recorder: a second call fails.
pub fn install(buckets: &[Buckets]) -> Result<PrometheusHandle, InstallError> {
    let handle = builder(buckets)?.install_recorder()?;
    let upkeep = handle.clone();
    std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        }
    })?;
    Ok(handle)
}

/// The recorder of a process that hosts services in-process (the load tool, benches): installed with `buckets`
/// by the first call, shared by every later one. `None` (logged once) if it could not be installed; the
/// services then serve an empty `/metrics`.
pub fn shared(buckets: &[Buckets]) -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match install(buckets) {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(%error, "no Prometheus recorder; /metrics will be empty");
                None
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test owns the process's recorder: a second install in this test binary would fail.
    #[test]
    fn named_histograms_get_their_buckets_and_a_second_recorder_is_refused() {
        let handle = install(&[
            Buckets {
                metric: MetricName::Exact("shell_test_call_seconds"),
                bounds: bucket_sets::CALL_SECONDS,
            },
            Buckets { metric: MetricName::Prefix("shell_test_batch_"), bounds: bucket_sets::BATCH_ENTRIES },
        ])
        .expect("first install");
        metrics::histogram!("shell_test_call_seconds").record(0.003);
        metrics::histogram!("shell_test_batch_entries").record(7.0);
        metrics::histogram!("shell_test_unnamed_seconds").record(1.0);
        let text = handle.render();
        assert!(text.contains(r#"shell_test_call_seconds_bucket{le="0.0025"} 0"#), "{text}");
        assert!(text.contains(r#"shell_test_call_seconds_bucket{le="0.005"} 1"#), "{text}");
        assert!(text.contains(r#"shell_test_batch_entries_bucket{le="7"} 1"#), "{text}");
        assert!(text.contains(r#"shell_test_unnamed_seconds{quantile="0.5"}"#), "a summary: {text}");
        assert!(matches!(install(&[]), Err(InstallError::Recorder(_))));
    }
}
