//! The worker's entry in the ledger's worker registry: a background task rewrites it every
//! [`registry_interval`](crate::WorkerConfig::registry_interval), so the fleet (and the order ETAs computed
//! from it, see [`ledger::eta`]) knows who consumes, how fast and how far through the backlog.
//!
//! The settle path records only what the entry needs, in a few atomics ([`Progress::record`]): no lock, no
//! write per order. The task turns them into the entry's measures over the last minute: the settle rate, the
//! mean service time, and the frontier's speed. A failed heartbeat is logged and tried again next tick; the
//! worker never stops for it. On a graceful shutdown (as soon as the worker drains) the entry is rewritten to
//! expire at once; a crashed worker drops out after its timeout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger::registry::{Frontier, MISSED_HEARTBEATS, WorkerEntry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// The span the entry's rate, service time and frontier speed are measured over.
const WINDOW: Duration = Duration::from_secs(60);

/// What the settle path records for the registry: three atomics, updated once per settled order.
#[derive(Debug)]
pub(crate) struct Progress {
    /// The newest `accepted_at` (epoch ms) among the settled orders; `i64::MIN` before the first.
    frontier_accepted_ms: AtomicI64,
    /// When the order that set the frontier was settled (epoch ms).
    frontier_settled_ms: AtomicI64,
    /// Receipt-to-settlement time of the settled orders, summed (µs): the service time's numerator.
    busy_micros: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            frontier_accepted_ms: AtomicI64::new(i64::MIN),
            frontier_settled_ms: AtomicI64::new(i64::MIN),
            busy_micros: AtomicU64::new(0),
        }
    }
}

impl Progress {
    /// Records a settled order accepted at `accepted_at`, settled `end_to_end` after it, `processing` after its
    /// message was received.
    pub(crate) fn record(&self, accepted_at: DateTime<Utc>, end_to_end: Duration, processing: Duration) {
        let micros = u64::try_from(processing.as_micros()).unwrap_or(u64::MAX);
        self.busy_micros.fetch_add(micros, Ordering::Relaxed);
        let accepted_ms = accepted_at.timestamp_millis();
        if self.frontier_accepted_ms.fetch_max(accepted_ms, Ordering::Relaxed) < accepted_ms {
            let settled_ms =
                accepted_ms.saturating_add(i64::try_from(end_to_end.as_millis()).unwrap_or(i64::MAX));
            // Two orders raising the frontier at once may store their settle times out of order: a few ms.
            self.frontier_settled_ms.store(settled_ms, Ordering::Relaxed);
        }
    }

    /// The frontier as (accepted ms, settled ms), once an order settled.
    fn frontier(&self) -> Option<(i64, i64)> {
        let accepted = self.frontier_accepted_ms.load(Ordering::Relaxed);
        let settled = self.frontier_settled_ms.load(Ordering::Relaxed);
        (accepted != i64::MIN && settled != i64::MIN).then_some((accepted, settled))
    }
}

/// One heartbeat's reading of the counters.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    settled: u64,
    busy_micros: u64,
    frontier: Option<(i64, i64)>,
}

/// The readings of the last minute, and the last frontier speed measured.
#[derive(Debug, Default)]
struct Window {
    samples: VecDeque<Sample>,
    speed: Option<f64>,
}

/// The entry's measures over the window.
#[derive(Debug, PartialEq)]
struct Measures {
    rate: f64,
    service_time: Option<f64>,
    frontier: Option<Frontier>,
}

impl Window {
    /// Adds `now`'s reading and measures against the oldest one within [`WINDOW`].
    fn measure(&mut self, now: Sample) -> Measures {
        while self.samples.len() > 1 && self.samples[1].at + WINDOW <= now.at {
            self.samples.pop_front();
        }
        let oldest = self.samples.front().copied().unwrap_or(now);
        self.samples.push_back(now);
        let elapsed = (now.at - oldest.at).as_secs_f64();
        let settled = now.settled.saturating_sub(oldest.settled);
        let rate = if elapsed > 0.0 { settled as f64 / elapsed } else { 0.0 };
        let busy = now.busy_micros.saturating_sub(oldest.busy_micros);
        let service_time = (settled > 0).then(|| busy as f64 / 1e6 / settled as f64);
        // The oldest frontier in the window against the newest: their slope, if the frontier moved.
        let first = self.samples.iter().find_map(|sample| sample.frontier);
        if let (Some((f0, s0)), Some((f1, s1))) = (first, now.frontier)
            && s1 > s0
        {
            self.speed = Some((f1 - f0) as f64 / (s1 - s0) as f64);
        }
        let frontier = now.frontier.and_then(|(accepted, settled)| {
            Some(Frontier {
                accepted_at: DateTime::from_timestamp_millis(accepted)?,
                settled_at: DateTime::from_timestamp_millis(settled)?,
                speed: self.speed,
            })
        });
        Measures { rate, service_time, frontier }
    }
}

/// Heartbeats the worker's entry every `registry_interval` until `stop` is cancelled or the worker drains,
/// then writes it gone. Returns at once if the ledger keeps no registry.
pub(crate) async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let ledger = Arc::clone(&shared.ledger);
    let Some(registry) = ledger.registry() else {
        tracing::debug!("the ledger keeps no worker registry; not registering");
        return;
    };
    let config = &shared.config;
    let started_at = Utc::now();
    let mut window = Window::default();
    let read = || Sample {
        at: Instant::now(),
        settled: shared.stats.settled(),
        busy_micros: shared.progress.busy_micros.load(Ordering::Relaxed),
        frontier: shared.progress.frontier(),
    };
    window.measure(read());
    let mut ticks = tokio::time::interval(config.registry_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        if stop.run_until_cancelled(ticks.tick()).await.is_none() || shared.draining.load(Ordering::Relaxed) {
            break;
        }
        let measures = window.measure(read());
        let entry = WorkerEntry {
            worker_id: config.worker_id.clone(),
            consumers: u32::try_from(config.consumers).unwrap_or(u32::MAX),
            gate_mode: config.gate_mode.name().to_owned(),
            // `closed`, `open` or `half-open`; none for a worker running without a breaker.
            breaker: shared.config.breaker.enabled.then(|| shared.breaker.state().name().to_owned()),
            rate: measures.rate,
            settled: shared.stats.settled(),
            service_time: measures.service_time,
            frontier: measures.frontier,
            started_at,
            last_seen: Utc::now(),
            timeout: config.registry_interval.saturating_mul(MISSED_HEARTBEATS),
        };
        match registry.heartbeat(&entry).await {
            Ok(()) => tracing::trace!(rate = entry.rate, "heartbeat written to the worker registry"),
            Err(error) => tracing::warn!(%error, "worker registry heartbeat failed; trying again next tick"),
        }
        last = Some(entry);
    }
    if let Some(entry) = last {
        match registry.heartbeat(&entry.departed(Utc::now())).await {
            Ok(()) => tracing::info!("left the worker registry"),
            Err(error) => tracing::warn!(%error, "could not leave the worker registry; the entry times out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start: Instant, second: u64, settled: u64, frontier: Option<(i64, i64)>) -> Sample {
        Sample { at: start + Duration::from_secs(second), settled, busy_micros: settled * 200_000, frontier }
    }

    #[test]
    fn rate_service_time_and_frontier_speed_are_measured_over_the_last_minute() {
        let start = Instant::now();
        let mut window = Window::default();
        let first = window.measure(sample(start, 0, 0, None));
        assert_eq!(first, Measures { rate: 0.0, service_time: None, frontier: None });

        // 5 orders/s of 0.2 s each; the frontier moves 1 s of acceptance per 2 s: speed 0.5.
        let mut measures = first;
        for second in (5..=100).step_by(5) {
            let frontier = Some((second as i64 * 500, second as i64 * 1000));
            measures = window.measure(sample(start, second, second * 5, frontier));
        }
        assert!((measures.rate - 5.0).abs() < 1e-9, "{measures:?}");
        assert!((measures.service_time.unwrap() - 0.2).abs() < 1e-9, "{measures:?}");
        let frontier = measures.frontier.unwrap();
        assert_eq!(frontier.accepted_at.timestamp_millis(), 50_000);
        assert!((frontier.speed.unwrap() - 0.5).abs() < 1e-9, "{frontier:?}");
        assert!(
            window.samples.len() <= 14,
            "a minute of samples is kept, not more: {}",
            window.samples.len()
        );

        // Idle for two minutes: no rate, and the frontier keeps its last speed.
        for second in (105..=220).step_by(5) {
            measures = window.measure(sample(start, second, 500, Some((50_000, 100_000))));
        }
        assert_eq!(measures.rate, 0.0);
        assert_eq!(measures.service_time, None);
        assert!((measures.frontier.unwrap().speed.unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_frontier_is_the_newest_settled_acceptance() {
        let progress = Progress::default();
        assert_eq!(progress.frontier(), None);
        let at = |ms| DateTime::from_timestamp_millis(ms).unwrap();
        progress.record(at(10_000), Duration::from_millis(500), Duration::from_millis(100));
        progress.record(at(9_000), Duration::from_millis(3_000), Duration::from_millis(300));
        assert_eq!(progress.frontier(), Some((10_000, 10_500)), "an older order does not move it back");
        progress.record(at(11_000), Duration::from_millis(200), Duration::from_millis(100));
        assert_eq!(progress.frontier(), Some((11_000, 11_200)));
        assert_eq!(progress.busy_micros.load(Ordering::Relaxed), 500_000);
    }
}
