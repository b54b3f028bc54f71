//! What the worker counts and measures, for `/stats` (JSON) and `/metrics` (Prometheus).
//!
//! Every count lives in an atomic (for `/stats`) and in a `metrics` counter (for Prometheus). Metric handles
//! are taken once, when the worker is built, from the recorder installed then (the binary's global one, or a
//! test's local one): the hot path pays an atomic add, not a registry lookup. Latencies go to HDR histograms, which give exact
//! percentiles in constant memory.

use service_shell::prometheus::{Buckets, MetricName, bucket_sets};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A snapshot of the worker, as served by `GET /stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// `per-consumer` or `shared`.
    pub gate_mode: String,
    /// Payments each gate takes at once: 1 per consumer's gate, or the shared gate's slots.
    pub gate_slots: usize,
    /// Processing slots (orders processed concurrently).
    pub consumers: usize,
    /// Long-polling receivers feeding the slots.
    pub pollers: usize,
    /// Messages received (every delivery counts, redeliveries included).
    pub received: u64,
    /// Orders paid.
    pub completed: u64,
    /// Orders the payment processor declined (a business outcome; the message is deleted).
    pub declined: u64,
    /// Messages left for a later redelivery: transient payment failures, and duplicates of an order still in
    /// progress.
    pub retried: u64,
    /// Messages moved to the dead-letter queue by the worker (poison, or out of retries), reason attached:
    /// final failures.
    pub dead_lettered: u64,
    /// Of those, poison: messages that could never be processed (unparseable or invalid), dead-lettered at once.
    pub poison: u64,
    /// Redeliveries of an already settled order: deleted without charging again.
    pub duplicates: u64,
    /// Messages made visible again at shutdown because their payment could not finish in time.
    pub released: u64,
    /// Visibility extensions of messages whose processing outlasted the visibility timeout.
    pub heartbeats: u64,
    /// Receive calls that returned messages. `received / receives` is the average batch: SQS bills per call.
    pub receives: u64,
    /// Receives that failed (broker errors); each is followed by a backoff.
    pub poll_errors: u64,
    /// Deletes that failed for good; the message will be redelivered, and deduplicated if still remembered.
    pub delete_failures: u64,
    /// Visibility changes that failed for good.
    pub visibility_failures: u64,
    /// Payments charged by this worker's gates (approved or declined): each order should count once.
    pub charged: u64,
    /// Deliveries of an order another worker holds a live claim on: left for later, not charged.
    pub claimed_elsewhere: u64,
    /// Orders whose payment was already recorded by an earlier attempt (a crash after charging): settled
    /// with that payment, nothing charged.
    pub replayed_payments: u64,
    /// Ledger calls that failed (throttling, outage); the message is retried after a backoff, never charged
    /// without a claim.
    pub ledger_errors: u64,
    /// Messages being processed right now.
    pub in_flight: usize,
    /// Processing slots not processing a message.
    pub free_slots: usize,
    /// `in_flight / consumers`: how busy the slots are.
    pub utilization: f64,
    /// Orders settled (completed or declined) per second, over the last ten seconds.
    pub processing_rate: f64,
    /// Time from the receiver's acceptance (`accepted_at`) to settlement, in milliseconds.
    pub end_to_end_ms: LatencySummary,
    /// Time from receipt of the message to settlement, in milliseconds (gate wait included).
    pub processing_ms: LatencySummary,
    /// Whether the worker is shutting down (no longer polling).
    pub draining: bool,
    /// The circuit breaker around the payment gateway.
    pub breaker: crate::BreakerStats,
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// A count, kept both for `/stats` and for Prometheus.
pub(crate) struct Tally {
    value: AtomicU64,
    metric: metrics::Counter,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Self { value: AtomicU64::new(0), metric: metrics::counter!(name) }
    }

    pub(crate) fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.metric.increment(n);
    }

    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A latency distribution, kept both as an HDR histogram (for `/stats`) and as a Prometheus histogram.
pub(crate) struct Latency {
    histogram: Mutex<Histogram<u64>>,
    metric: metrics::Histogram,
}

impl Latency {
    fn new(name: &'static str) -> Self {
        // Microseconds from 1 µs to one day, three significant digits: about 200 KB, exact enough for p99.
        let histogram = Histogram::new_with_bounds(1, 86_400_000_000, 3).expect("valid histogram bounds");
        Self { histogram: Mutex::new(histogram), metric: metrics::histogram!(name) }
    }

    pub(crate) fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        lock(&self.histogram).saturating_record(micros.max(1));
        self.metric.record(elapsed.as_secs_f64());
    }

    fn summary(&self) -> LatencySummary {
        let histogram = lock(&self.histogram);
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p95: ms(histogram.value_at_quantile(0.95)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// Prometheus metric names, for the bucket configuration and for dashboards.
pub mod metric_names {
    /// Histogram (seconds): receipt to settlement.
    pub const PROCESSING_SECONDS: &str = "worker_processing_seconds";
    /// Histogram (seconds): the receiver's acceptance to settlement.
    pub const END_TO_END_SECONDS: &str = "worker_end_to_end_seconds";
}

/// The buckets of the worker's histograms, for [`service_shell::prometheus::install`] in every process that
/// hosts a worker: processing from a fast payment to minutes of retries, end to end up to a four-hour backlog.
pub const METRIC_BUCKETS: &[Buckets] = &[
    Buckets {
        metric: MetricName::Exact(metric_names::PROCESSING_SECONDS),
        bounds: bucket_sets::PROCESSING_SECONDS,
    },
    Buckets {
        metric: MetricName::Exact(metric_names::END_TO_END_SECONDS),
        bounds: bucket_sets::END_TO_END_SECONDS,
    },
];

/// Everything the worker counts.
pub(crate) struct Stats {
    pub(crate) received: Tally,
    pub(crate) completed: Tally,
    pub(crate) declined: Tally,
    pub(crate) retried: Tally,
    pub(crate) dead_lettered: Tally,
    pub(crate) poison: Tally,
    pub(crate) duplicates: Tally,
    pub(crate) released: Tally,
    pub(crate) heartbeats: Tally,
    pub(crate) receives: Tally,
    pub(crate) poll_errors: Tally,
    pub(crate) claimed_elsewhere: Tally,
    pub(crate) replayed_payments: Tally,
    pub(crate) ledger_errors: Tally,
    /// Plain atomics: the batchers count into them, and `/stats` reads them.
    pub(crate) delete_failures: std::sync::Arc<AtomicU64>,
    pub(crate) visibility_failures: std::sync::Arc<AtomicU64>,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) processing: Latency,
    pub(crate) end_to_end: Latency,
    pub(crate) gauges: Gauges,
    rate: Mutex<RateWindow>,
}

/// Prometheus gauges, set from a [`WorkerStats`] snapshot when `/metrics` is scraped (the hot path never
/// touches them).
pub(crate) struct Gauges {
    consumers: metrics::Gauge,
    in_flight: metrics::Gauge,
    free_slots: metrics::Gauge,
    utilization: metrics::Gauge,
    processing_rate: metrics::Gauge,
    charged: metrics::Gauge,
}

impl Gauges {
    fn new() -> Self {
        Self {
            consumers: metrics::gauge!("worker_consumers"),
            in_flight: metrics::gauge!("worker_in_flight"),
            free_slots: metrics::gauge!("worker_free_slots"),
            utilization: metrics::gauge!("worker_utilization"),
            processing_rate: metrics::gauge!("worker_processing_rate"),
            charged: metrics::gauge!("worker_payments_charged"),
        }
    }

    pub(crate) fn publish(&self, stats: &WorkerStats) {
        self.consumers.set(stats.consumers as f64);
        self.in_flight.set(stats.in_flight as f64);
        self.free_slots.set(stats.free_slots as f64);
        self.utilization.set(stats.utilization);
        self.processing_rate.set(stats.processing_rate);
        self.charged.set(stats.charged as f64);
    }
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            received: Tally::new("worker_messages_received_total"),
            completed: Tally::new("worker_orders_completed_total"),
            declined: Tally::new("worker_orders_declined_total"),
            retried: Tally::new("worker_messages_retried_total"),
            dead_lettered: Tally::new("worker_messages_dead_lettered_total"),
            poison: Tally::new("worker_poison_messages_total"),
            duplicates: Tally::new("worker_duplicates_total"),
            released: Tally::new("worker_messages_released_total"),
            heartbeats: Tally::new("worker_visibility_extensions_total"),
            receives: Tally::new("worker_receives_total"),
            poll_errors: Tally::new("worker_poll_errors_total"),
            claimed_elsewhere: Tally::new("worker_claimed_elsewhere_total"),
            replayed_payments: Tally::new("worker_replayed_payments_total"),
            ledger_errors: Tally::new("worker_ledger_errors_total"),
            delete_failures: Default::default(),
            visibility_failures: Default::default(),
            in_flight: AtomicUsize::new(0),
            processing: Latency::new(metric_names::PROCESSING_SECONDS),
            end_to_end: Latency::new(metric_names::END_TO_END_SECONDS),
            gauges: Gauges::new(),
            rate: Mutex::new(RateWindow::default()),
        }
    }

    /// Orders settled so far.
    pub(crate) fn settled(&self) -> u64 {
        self.completed.get() + self.declined.get()
    }

    /// Records the settled count now, for the processing rate. Called once a second.
    pub(crate) fn sample_rate(&self) {
        lock(&self.rate).push(Instant::now(), self.settled());
    }

    pub(crate) fn processing_rate(&self) -> f64 {
        lock(&self.rate).per_second()
    }

    pub(crate) fn processing_summary(&self) -> LatencySummary {
        self.processing.summary()
    }

    pub(crate) fn end_to_end_summary(&self) -> LatencySummary {
        self.end_to_end.summary()
    }
}

/// The last few (time, settled) samples: rate = Δsettled / Δtime.
#[derive(Default)]
struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    const SAMPLES: usize = 11; // ten one-second intervals

    fn push(&mut self, at: Instant, settled: u64) {
        if self.samples.len() == Self::SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, settled));
    }

    fn per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => (n1 - n0) as f64 / (*t1 - *t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_are_in_milliseconds() {
        let latency = Latency::new("test_latency_seconds");
        for ms in 1..=100 {
            latency.record(Duration::from_millis(ms));
        }
        let summary = latency.summary();
        assert_eq!(summary.count, 100);
        assert!((summary.p50 - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.p99 - 99.0).abs() < 0.1, "{summary:?}");
        assert!((summary.max - 100.0).abs() < 0.1, "{summary:?}");
    }

    #[test]
    fn rate_is_the_slope_over_the_window() {
        let mut window = RateWindow::default();
        let start = Instant::now();
        assert_eq!(window.per_second(), 0.0);
        for second in 0..20u64 {
            window.push(start + Duration::from_secs(second), second * 7);
        }
        assert!((window.per_second() - 7.0).abs() < 1e-9);
        assert_eq!(window.samples.len(), RateWindow::SAMPLES);
    }
}
