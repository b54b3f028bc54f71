//! The dashboard's sampler: one snapshot of the pipeline per tick, its rates over the last second, and a
//! bounded history of chart points for pages that connect late.
//!
//! Everything read here is a counter or a gauge that the pipeline keeps anyway (queue depth, the receiver's and
//! the worker's counters, the worker registry): a tick costs a few lock-and-copy reads, never a scan of the
//! orders, so sampling does not disturb what it measures.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus::{Consumer, QueueStats};
use chrono::{DateTime, Utc};
use ledger::Ledger;
use ledger::registry::WorkerEntry;
use serde::Serialize;
use worker::WorkerStats;

use crate::dashboard::live::{self, Follow};
use crate::probe::WorkerStatsSource;

/// How long a deployed probe (SQS, DynamoDB, a worker's `/stats`) may take before its part of the snapshot is
/// left empty: the tick must not stall behind a slow call.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Rates are measured over this span (1 s): short enough to follow a burst, long enough to smooth ticks.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// One chart point per this span (500 ms), whatever the tick: bounds the history by time, not by tick rate.
pub(crate) const POINT_EVERY: Duration = Duration::from_millis(500);

/// Chart points kept for late joiners (600: five minutes at one point per 500 ms). The page keeps as many.
pub(crate) const HISTORY_POINTS: usize = 600;

/// What the dashboard watches.
pub(crate) enum Watched {
    /// An embedded pipeline of this process (see [`live`]).
    Embedded(Follow),
    /// A deployed stack, through whichever probes were given.
    Deployed(DeployedProbes),
}

/// The probes of a deployed stack; any may be missing, and its panel then says so.
pub(crate) struct DeployedProbes {
    /// The receiver's base URL (order lookups without a table), or a description.
    pub(crate) target: Option<String>,
    /// The orders queue (SQS).
    pub(crate) queue: Option<Arc<dyn Consumer>>,
    /// A worker's `/stats`.
    pub(crate) worker: Option<Arc<dyn WorkerStatsSource>>,
    /// The ledger's table: the worker registry and order lookups.
    pub(crate) ledger: Option<Arc<dyn Ledger>>,
}

/// Cumulative counters; `None` where the source does not report one (a deployed receiver's counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Counters {
    accepted: Option<u64>,
    completed: Option<u64>,
    declined: Option<u64>,
    failed: Option<u64>,
    retried: Option<u64>,
    sync_paid: Option<u64>,
    sync_timeouts: Option<u64>,
}

impl Counters {
    fn settled(&self) -> Option<u64> {
        Some(self.completed? + self.declined.unwrap_or(0) + self.failed.unwrap_or(0))
    }
}

/// Per-second rates of [`Counters`] over the last [`RATE_WINDOW`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Rates {
    accepted: Option<f64>,
    settled: Option<f64>,
    completed: Option<f64>,
    declined: Option<f64>,
    failed: Option<f64>,
    retried: Option<f64>,
    sync_paid: Option<f64>,
    sync_timeouts: Option<f64>,
}

/// The queue.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Backlog {
    visible: u64,
    in_flight: u64,
    dlq: Option<u64>,
    oldest_age_s: Option<f64>,
}

/// End-to-end latency (accepted → settled) as the worker measures it, since it started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Latency {
    count: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One row of the workers panel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct WorkerRow {
    id: String,
    consumers: u32,
    /// Consumers processing an order now: exact for this process's running worker, else rate × service time
    /// (Little's law) and `busy_estimated`.
    busy: Option<f64>,
    busy_estimated: bool,
    rate: f64,
    settled: u64,
    service_time_s: Option<f64>,
    gate_mode: String,
    breaker: Option<String>,
    last_seen_s: f64,
}

/// The fleet against the load: Little's law L = λ·W says how many consumers keep up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Fleet {
    workers: usize,
    consumers: u64,
    /// Orders settled per second, summed over the registry's entries (their last minute).
    rate: f64,
    /// Mean service time (receipt → settled), weighted by rate.
    service_time_s: Option<f64>,
    /// Orders per second the fleet can settle: consumers ÷ service time.
    capacity: Option<f64>,
    /// Orders arriving per second (accepted/s).
    arrival: Option<f64>,
    /// Consumers needed to keep up: arrival × service time.
    needed_consumers: Option<f64>,
}

/// What one tick saw: the JSON every page receives.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Snapshot {
    /// Epoch milliseconds.
    pub(crate) at_ms: i64,
    /// What is watched: `embedded pipeline #3`, a target URL.
    source: String,
    /// Whether there is a pipeline to watch right now (an experiment between two runs has none).
    pub(crate) live: bool,
    backlog: Option<Backlog>,
    totals: Counters,
    rates: Rates,
    latency: Option<Latency>,
    /// Whether sync orders are being answered (a sync load runs): the page shows paid/s against timeouts/s.
    sync_active: bool,
    workers: Vec<WorkerRow>,
    fleet: Fleet,
    /// The dashboard's own CPU use, percent of one core, over its life so far.
    pub(crate) dashboard_cpu_percent: Option<f64>,
    /// Sampling interval, milliseconds.
    interval_ms: u64,
}

/// One chart point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Point {
    t: i64,
    visible: Option<u64>,
    in_flight: Option<u64>,
    dlq: Option<u64>,
    accepted: Option<f64>,
    settled: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
}

impl Point {
    fn of(snapshot: &Snapshot) -> Point {
        Point {
            t: snapshot.at_ms,
            visible: snapshot.backlog.map(|b| b.visible),
            in_flight: snapshot.backlog.map(|b| b.in_flight),
            dlq: snapshot.backlog.and_then(|b| b.dlq),
            accepted: snapshot.rates.accepted,
            settled: snapshot.rates.settled,
            p50: snapshot.latency.map(|l| l.p50_ms),
            p99: snapshot.latency.map(|l| l.p99_ms),
        }
    }
}

/// The sampler's memory between ticks: the counters of the last second and the chart history.
pub(crate) struct Sampler {
    watched: Watched,
    interval: Duration,
    window: VecDeque<(Instant, Counters)>,
    epoch: Option<u64>,
    history: Arc<Mutex<VecDeque<Point>>>,
    last_point: Option<Instant>,
}

impl Sampler {
    pub(crate) fn new(watched: Watched, interval: Duration) -> Sampler {
        Sampler {
            watched,
            interval,
            window: VecDeque::new(),
            epoch: None,
            history: Arc::new(Mutex::new(VecDeque::with_capacity(HISTORY_POINTS))),
            last_point: None,
        }
    }

    /// The chart history, oldest first, shared with the page's route.
    pub(crate) fn history(&self) -> Arc<Mutex<VecDeque<Point>>> {
        Arc::clone(&self.history)
    }

    /// Takes one snapshot now.
    pub(crate) async fn tick(&mut self, dashboard_cpu_percent: Option<f64>) -> Snapshot {
        self.tick_at(Instant::now(), dashboard_cpu_percent).await
    }

    async fn tick_at(&mut self, now: Instant, dashboard_cpu_percent: Option<f64>) -> Snapshot {
        let (epoch, mut snapshot) = match &self.watched {
            Watched::Embedded(follow) => match live::current(*follow) {
                Some(pipeline) => (pipeline.id, embedded(&pipeline).await),
                None => (0, Snapshot::empty("embedded pipeline (none running: waiting for the next)".into())),
            },
            Watched::Deployed(probes) => (0, deployed(probes).await),
        };
        self.restart_rates_on(epoch);
        snapshot.interval_ms = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        snapshot.dashboard_cpu_percent = dashboard_cpu_percent;
        snapshot.rates = self.rates(now, snapshot.totals);
        snapshot.sync_active = snapshot.rates.sync_paid.unwrap_or(0.0) > 0.0
            || snapshot.rates.sync_timeouts.unwrap_or(0.0) > 0.0;
        let arrival = snapshot.rates.accepted;
        snapshot.fleet.arrival = arrival;
        snapshot.fleet.needed_consumers =
            arrival.zip(snapshot.fleet.service_time_s).map(|(lambda, service)| lambda * service);
        if self.last_point.is_none_or(|last| now.duration_since(last) >= POINT_EVERY) {
            self.last_point = Some(now);
            let mut history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if history.len() == HISTORY_POINTS {
                history.pop_front();
            }
            history.push_back(Point::of(&snapshot));
        }
        snapshot
    }

    /// A new pipeline restarts every counter at zero: its rates start afresh.
    fn restart_rates_on(&mut self, epoch: u64) {
        if self.epoch != Some(epoch) {
            self.epoch = Some(epoch);
            self.window.clear();
        }
    }

    fn rates(&mut self, now: Instant, counters: Counters) -> Rates {
        self.window.push_back((now, counters));
        while self.window.len() > 2 && now.duration_since(self.window[1].0) >= RATE_WINDOW {
            self.window.pop_front();
        }
        let (Some((from_at, from)), Some((to_at, to))) = (self.window.front(), self.window.back()) else {
            return Rates::default();
        };
        let seconds = to_at.duration_since(*from_at).as_secs_f64();
        if seconds <= 0.0 {
            return Rates::default();
        }
        // A counter that went down belongs to a replaced worker (a crash): no rate for this window.
        let per_second = |from: Option<u64>, to: Option<u64>| Some(to?.checked_sub(from?)? as f64 / seconds);
        Rates {
            accepted: per_second(from.accepted, to.accepted),
            settled: per_second(from.settled(), to.settled()),
            completed: per_second(from.completed, to.completed),
            declined: per_second(from.declined, to.declined),
            failed: per_second(from.failed, to.failed),
            retried: per_second(from.retried, to.retried),
            sync_paid: per_second(from.sync_paid, to.sync_paid),
            sync_timeouts: per_second(from.sync_timeouts, to.sync_timeouts),
        }
    }
}

impl Snapshot {
    fn empty(source: String) -> Snapshot {
        Snapshot {
            at_ms: Utc::now().timestamp_millis(),
            source,
            live: false,
            backlog: None,
            totals: Counters::default(),
            rates: Rates::default(),
            latency: None,
            sync_active: false,
            workers: Vec::new(),
            fleet: Fleet::default(),
            dashboard_cpu_percent: None,
            interval_ms: 0,
        }
    }
}

async fn embedded(pipeline: &live::LivePipeline) -> Snapshot {
    let mut snapshot = Snapshot::empty(format!("embedded pipeline #{}", pipeline.id));
    snapshot.live = true;
    snapshot.backlog = Some(backlog(pipeline.stack.queue.stats_now()));
    let receiver = pipeline.receiver_state.stats();
    let handle = (pipeline.worker)();
    let stats = handle.stats();
    snapshot.totals = Counters {
        accepted: Some(receiver.async_orders.accepted),
        sync_paid: Some(receiver.sync_orders.completed),
        sync_timeouts: Some(receiver.sync_orders.timed_out),
        ..worker_counters(&stats)
    };
    snapshot.latency = latency(&stats);
    let now = pipeline.ledger.now();
    let fleet = match pipeline.ledger.registry() {
        Some(registry) => registry.fleet(now).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let running = Running {
        id: handle.config().worker_id.as_str(),
        busy: stats.in_flight,
        rate: stats.processing_rate,
        settled: stats.completed + stats.declined,
    };
    (snapshot.workers, snapshot.fleet) = workers(fleet, now, Some(running), measured_service_time(&stats));
    snapshot
}

async fn deployed(probes: &DeployedProbes) -> Snapshot {
    let mut snapshot = Snapshot::empty(probes.target.clone().unwrap_or_else(|| "deployed stack".into()));
    snapshot.live = true;
    let queue = async {
        let queue = probes.queue.as_ref()?;
        tokio::time::timeout(PROBE_TIMEOUT, queue.stats()).await.ok()?.ok()
    };
    let stats = async {
        let worker = probes.worker.as_ref()?;
        let raw = tokio::time::timeout(PROBE_TIMEOUT, worker.stats()).await.ok()??;
        serde_json::from_value::<WorkerStats>(raw).ok()
    };
    let now = Utc::now();
    let fleet = async {
        let registry = probes.ledger.as_ref()?.registry()?;
        tokio::time::timeout(PROBE_TIMEOUT, registry.fleet(now)).await.ok()?.ok()
    };
    let (queue, stats, fleet) = tokio::join!(queue, stats, fleet);
    snapshot.backlog = queue.map(backlog);
    if let Some(stats) = &stats {
        snapshot.totals = worker_counters(stats);
        snapshot.latency = latency(stats);
    }
    let service_time = stats.as_ref().and_then(measured_service_time);
    (snapshot.workers, snapshot.fleet) = workers(fleet.unwrap_or_default(), now, None, service_time);
    snapshot
}

fn backlog(stats: QueueStats) -> Backlog {
    Backlog {
        visible: stats.visible,
        in_flight: stats.in_flight,
        dlq: stats.dead_letter,
        oldest_age_s: stats.oldest_age.map(|age| age.as_secs_f64()),
    }
}

/// The worker's counters: settled orders by outcome, retries, and final failures (dead-lettered).
fn worker_counters(stats: &WorkerStats) -> Counters {
    Counters {
        completed: Some(stats.completed),
        declined: Some(stats.declined),
        failed: Some(stats.dead_lettered),
        retried: Some(stats.retried),
        ..Counters::default()
    }
}

fn latency(stats: &WorkerStats) -> Option<Latency> {
    let summary = stats.end_to_end_ms;
    (summary.count > 0).then_some(Latency { count: summary.count, p50_ms: summary.p50, p99_ms: summary.p99 })
}

/// The worker's median processing time, in seconds: the service time when the registry has none yet.
fn measured_service_time(stats: &WorkerStats) -> Option<f64> {
    (stats.processing_ms.count > 0).then_some(stats.processing_ms.p50 / 1000.0)
}

/// This process's running worker, read live rather than from its last heartbeat (up to 5 s old).
#[derive(Debug, Clone, Copy)]
struct Running<'a> {
    id: &'a str,
    /// Consumers processing an order now.
    busy: usize,
    /// Orders settled per second over its last ten seconds.
    rate: f64,
    /// Orders settled since it started.
    settled: u64,
}

/// The workers panel's rows, oldest worker first, and the fleet's totals. `running` is this process's running
/// worker, whose row is exact and live.
fn workers(
    mut entries: Vec<WorkerEntry>,
    now: DateTime<Utc>,
    running: Option<Running<'_>>,
    fallback_service_time: Option<f64>,
) -> (Vec<WorkerRow>, Fleet) {
    entries.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.worker_id.cmp(&b.worker_id)));
    for entry in &mut entries {
        if let Some(live) = running.filter(|live| live.id == entry.worker_id) {
            (entry.rate, entry.settled) = (live.rate, live.settled);
        }
    }
    let rows: Vec<WorkerRow> = entries
        .iter()
        .map(|entry| {
            let exact = running.filter(|live| live.id == entry.worker_id).map(|live| live.busy as f64);
            let estimated = entry.service_time.map(|service| entry.rate * service);
            WorkerRow {
                id: entry.worker_id.clone(),
                consumers: entry.consumers,
                busy: exact.or(estimated).map(|busy| busy.min(f64::from(entry.consumers))),
                busy_estimated: exact.is_none(),
                rate: entry.rate,
                settled: entry.settled,
                service_time_s: entry.service_time,
                gate_mode: entry.gate_mode.clone(),
                breaker: entry.breaker.clone(),
                last_seen_s: (now - entry.last_seen).num_milliseconds().max(0) as f64 / 1000.0,
            }
        })
        .collect();
    let rate: f64 = entries.iter().map(|entry| entry.rate.max(0.0)).sum();
    let timed: Vec<(f64, f64)> =
        entries.iter().filter_map(|entry| Some((entry.rate.max(0.0), entry.service_time?))).collect();
    let weights: f64 = timed.iter().map(|(rate, _)| rate).sum();
    let registry_service_time = if timed.is_empty() {
        None
    } else if weights > 0.0 {
        Some(timed.iter().map(|(rate, service)| rate * service).sum::<f64>() / weights)
    } else {
        Some(timed.iter().map(|(_, service)| service).sum::<f64>() / timed.len() as f64)
    };
    let service_time_s = registry_service_time.or(fallback_service_time).filter(|s| *s > 0.0);
    let consumers: u64 = entries.iter().map(|entry| u64::from(entry.consumers)).sum();
    let fleet = Fleet {
        workers: entries.len(),
        consumers,
        rate,
        service_time_s,
        capacity: service_time_s.map(|service| consumers as f64 / service),
        arrival: None,
        needed_consumers: None,
    };
    (rows, fleet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, consumers: u32, rate: f64, service_time: Option<f64>) -> WorkerEntry {
        let now = Utc::now();
        WorkerEntry {
            worker_id: id.into(),
            consumers,
            gate_mode: "per-consumer".into(),
            breaker: Some("closed".into()),
            rate,
            settled: 10,
            service_time,
            frontier: None,
            started_at: now,
            last_seen: now,
            timeout: Duration::from_secs(15),
        }
    }

    #[test]
    fn the_fleet_weighs_service_times_by_rate_and_estimates_busy_consumers() {
        let entries = vec![entry("a", 10, 3.0, Some(2.0)), entry("b", 10, 1.0, Some(4.0))];
        let running = Running { id: "b", busy: 7, rate: 1.0, settled: 10 };
        let (rows, fleet) = workers(entries, Utc::now(), Some(running), None);
        assert_eq!(fleet.consumers, 20);
        assert_eq!(fleet.rate, 4.0);
        assert_eq!(fleet.service_time_s, Some(2.5), "(3·2 + 1·4) ÷ 4");
        assert_eq!(fleet.capacity, Some(8.0));
        let a = rows.iter().find(|row| row.id == "a").unwrap();
        assert_eq!((a.busy, a.busy_estimated), (Some(6.0), true), "Little's law: 3/s × 2 s");
        let b = rows.iter().find(|row| row.id == "b").unwrap();
        assert_eq!((b.busy, b.busy_estimated), (Some(7.0), false), "the running worker's own count");
    }

    #[tokio::test]
    async fn the_history_keeps_one_point_per_half_second_and_at_most_five_minutes() {
        let nowhere = Follow::Receiver("127.0.0.1:9".parse().unwrap());
        let mut sampler = Sampler::new(Watched::Embedded(nowhere), Duration::from_millis(100));
        let start = Instant::now();
        for tick in 0..12_000u64 {
            let snapshot = sampler.tick_at(start + Duration::from_millis(tick * 100), None).await;
            assert!(!snapshot.live, "no pipeline listens there");
        }
        let history = sampler.history();
        let history = history.lock().unwrap();
        assert_eq!(history.len(), HISTORY_POINTS, "20 minutes of ticks, five minutes kept");
        let times: Vec<i64> = history.iter().map(|point| point.t).collect();
        assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "oldest first");
    }

    #[test]
    fn rates_come_from_the_last_second_and_skip_a_reset_counter() {
        let mut sampler = Sampler::new(Watched::Embedded(Follow::Newest), Duration::from_millis(100));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let counters = |accepted: u64, completed: u64| Counters {
            accepted: Some(accepted),
            completed: Some(completed),
            ..Counters::default()
        };
        assert_eq!(sampler.rates(at(0), counters(0, 0)).accepted, None, "one sample is no rate");
        for step in 1..=20u64 {
            sampler.rates(at(step * 100), counters(step * 10, step * 5));
        }
        let rates = sampler.rates(at(2100), counters(210, 105));
        assert!((rates.accepted.unwrap() - 100.0).abs() < 1e-9, "{rates:?}");
        assert!((rates.settled.unwrap() - 50.0).abs() < 1e-9, "{rates:?}");
        assert_eq!(sampler.window.len(), 11, "one second of 100 ms ticks, bounded");
        let after_crash = sampler.rates(at(2200), counters(220, 0));
        assert_eq!(after_crash.completed, None, "a counter that went down gives no rate");
        assert!(after_crash.accepted.is_some());
    }
}
