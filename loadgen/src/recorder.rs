//! Recording measurements from many lanes at once, and turning them into per-interval timelines and totals.
//!
//! Lanes record into a few mutex-protected shards (a lane always uses the same shard, so locks are almost
//! never contended); a sampler takes every shard's interval data once per tick and merges it into the run's
//! totals and timeline. Latencies are HDR histograms in microseconds with 3 significant digits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::idempotency::{IdempotencyCounts, Keyed};
use crate::outcome::{Outcome, OutcomeCounts};

/// Highest value the histograms hold, in microseconds: an hour. Larger values are clamped to it.
const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;

/// A histogram of durations in microseconds, 1 µs to an hour, 3 significant digits (0.1% precision).
pub fn duration_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 3).expect("static bounds are valid")
}

/// Records a duration into a microsecond histogram, clamping instead of failing.
pub fn record_duration(histogram: &mut Histogram<u64>, duration: Duration) {
    let micros = (duration.as_micros() as u64).clamp(1, HISTOGRAM_MAX_MICROS);
    histogram.saturating_record(micros);
}

/// Everything recorded during one sampling interval (or, merged, during a whole run).
#[derive(Debug, Clone)]
pub struct Measurements {
    /// Requests handed to a connection.
    pub sent: u64,
    /// Sent later than the late threshold after their intended time (open model only).
    pub late: u64,
    /// Outcomes of finished requests.
    pub outcomes: OutcomeCounts,
    /// Latency of every finished request, failures included (as Locust reports it).
    pub latency: Histogram<u64>,
    /// Latency of accepted requests only.
    pub accepted_latency: Histogram<u64>,
    /// Scheduling lag: how long after its intended time each request was sent (open model only).
    pub lag: Histogram<u64>,
    /// Retries, replays and duplicate orders of keyed requests (all zero without idempotency keys).
    pub idempotency: IdempotencyCounts,
}

impl Default for Measurements {
    fn default() -> Self {
        Measurements {
            sent: 0,
            late: 0,
            outcomes: OutcomeCounts::default(),
            latency: duration_histogram(),
            accepted_latency: duration_histogram(),
            lag: duration_histogram(),
            idempotency: IdempotencyCounts::default(),
        }
    }
}

impl Measurements {
    /// Adds another interval's data into this one.
    pub fn merge(&mut self, other: &Measurements) {
        self.sent += other.sent;
        self.late += other.late;
        self.outcomes.merge(&other.outcomes);
        // Same bounds everywhere, so adding cannot fail.
        self.latency.add(&other.latency).expect("same bounds");
        self.accepted_latency.add(&other.accepted_latency).expect("same bounds");
        self.lag.add(&other.lag).expect("same bounds");
        self.idempotency.merge(&other.idempotency);
    }

    /// One finished request.
    #[inline]
    fn record(&mut self, latency: Duration, outcome: Outcome, lag: Option<Duration>) {
        self.outcomes.add(outcome);
        record_duration(&mut self.latency, latency);
        if outcome == Outcome::Accepted {
            record_duration(&mut self.accepted_latency, latency);
        }
        if let Some(lag) = lag {
            record_duration(&mut self.lag, lag);
        }
    }

    fn reset(&mut self) {
        self.sent = 0;
        self.late = 0;
        self.outcomes = OutcomeCounts::default();
        self.latency.reset();
        self.accepted_latency.reset();
        self.lag.reset();
        self.idempotency = IdempotencyCounts::default();
    }
}

/// The shared recording surface for lanes and users. Cheap to record into from many tasks: a send is two
/// relaxed atomic adds, an answer one uncontended lock.
#[derive(Debug)]
pub struct Recorder {
    shards: Box<[Shard]>,
    late_threshold: Duration,
}

#[derive(Debug, Default)]
struct Shard {
    sent: AtomicU64,
    late: AtomicU64,
    finished: Mutex<Measurements>,
}

impl Recorder {
    /// A recorder with one shard per two cores (at least 4), counting sends later than `late_threshold` as
    /// late.
    pub fn new(late_threshold: Duration) -> Recorder {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let shards = (0..(cores * 2).max(4)).map(|_| Shard::default()).collect();
        Recorder { shards, late_threshold }
    }

    /// The lag above which a send counts as late.
    pub fn late_threshold(&self) -> Duration {
        self.late_threshold
    }

    fn shard(&self, lane: usize) -> &Shard {
        &self.shards[lane % self.shards.len()]
    }

    /// A request was handed to a connection `lag` after its intended time (`None`: no intended time, as in
    /// the closed model). The lag itself is recorded with the answer, in [`Recorder::finished`].
    pub fn sent(&self, lane: usize, lag: Option<Duration>) {
        let shard = self.shard(lane);
        shard.sent.fetch_add(1, Ordering::Relaxed);
        if lag.is_some_and(|lag| lag > self.late_threshold) {
            shard.late.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request finished with `outcome` after `latency` (from its intended time in the open model, from its
    /// send in the closed model); `lag` is its scheduling lag, when it was sent with one.
    pub fn finished(&self, lane: usize, latency: Duration, outcome: Outcome, lag: Option<Duration>) {
        let mut data = self.shard(lane).finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        data.record(latency, outcome, lag);
    }

    /// A keyed request finished (see [`Recorder::finished`]); its latency covers all its attempts.
    pub fn finished_keyed(&self, lane: usize, latency: Duration, keyed: &Keyed, lag: Option<Duration>) {
        let mut data = self.shard(lane).finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        data.record(latency, keyed.outcome, lag);
        data.idempotency.add(keyed);
    }

    /// Takes (and clears) everything recorded since the previous call.
    pub fn take_interval(&self) -> Measurements {
        let mut interval = Measurements::default();
        for shard in &self.shards {
            interval.sent += shard.sent.swap(0, Ordering::Relaxed);
            interval.late += shard.late.swap(0, Ordering::Relaxed);
            let mut data = shard.finished.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            interval.merge(&data);
            data.reset();
        }
        interval
    }
}

/// A latency distribution in milliseconds, as printed in tables and written to JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of values.
    pub count: u64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Smallest value.
    pub min_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a microsecond histogram (all zeros when it is empty).
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            min_ms: ms(histogram.min()),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::FailureKind;

    #[test]
    fn intervals_are_taken_once_and_merge_across_shards() {
        let recorder = Recorder::new(Duration::from_millis(1));
        for lane in 0..100 {
            let lag = Duration::from_micros(if lane < 10 { 5_000 } else { 10 });
            recorder.sent(lane, Some(lag));
            recorder.finished(lane, Duration::from_millis(lane as u64 + 1), Outcome::Accepted, Some(lag));
        }
        recorder.finished(0, Duration::from_secs(10), Outcome::Failed(FailureKind::Timeout), None);
        let interval = recorder.take_interval();
        assert_eq!((interval.sent, interval.late), (100, 10));
        assert_eq!((interval.outcomes.accepted, interval.outcomes.timeout), (100, 1));
        assert_eq!((interval.accepted_latency.len(), interval.lag.len()), (100, 100));
        let summary = LatencySummary::of(&interval.latency);
        assert_eq!(summary.count, 101);
        assert!((summary.p50_ms - 51.0).abs() < 0.1, "{summary:?}");
        assert!((summary.max_ms - 10_000.0).abs() < 10.0, "{summary:?}");
        assert_eq!(recorder.take_interval().outcomes.total(), 0, "taking clears");
    }
}
