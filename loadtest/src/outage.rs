//! The outage experiment: a flash sale with the payment gateway down for a window, run once with the worker's
//! circuit breaker and once without, on a fresh embedded pipeline each. Optionally the worker also crashes
//! every so often (aborted, then replaced) and a share of poison messages is mixed in, so one run shows a
//! downstream outage, a restarting worker and malformed messages at once.
//!
//! Every accepted order must end settled or in the dead-letter queue (none lost) and be charged at most once;
//! the ledger and the dead-letter queue are read at the end to check it. The run without the breaker ends with
//! a redrive of its dead-letter queue, which shows the orders were recoverable.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus::{DeadLetters, OutgoingMessage, RedriveOptions};
use hyper::Method;
use loadgen::LoadModel;
use loadgen::client::Target;
use orders::{OrderStatus, PaymentConfig, WireMessage};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use worker::BreakerConfig;

use crate::experiment::{Environment, ExperimentSettings};
use crate::pipeline::{EmbeddedPipeline, PipelineConfig};
use crate::results::{RunResult, TimelinePoint};
use crate::runner::{self, DrainPlan, RunPlan};
use crate::scenario::order_bodies;

/// How many different order bodies a run rotates through.
const ORDER_BODIES: usize = 256;

/// The most dead-lettered messages read back at the end of a run.
const DLQ_READ_LIMIT: usize = 100_000;

/// The experiment's settings, in lab time. `Default` is the documented scenario: the gateway down for two
/// minutes from 30 s into the flash sale, 200 consumers (the sale's 60 orders/s need 180 at 3 s a payment).
#[derive(Debug, Clone, PartialEq)]
pub struct OutageSettings {
    /// When the gateway goes down, from the start of the sale.
    pub starts_after: Duration,
    /// How long it stays down.
    pub lasts: Duration,
    /// Worker consumers: enough to keep up with the sale when the gateway is up.
    pub consumers: usize,
    /// Crash the worker (abort it, then start a new one) this often; `None`: never.
    pub crash_every: Option<Duration>,
    /// Poison messages mixed into the queue, as a share of the sale's orders.
    pub poison_share: f64,
}

impl Default for OutageSettings {
    fn default() -> Self {
        Self {
            starts_after: Duration::from_secs(30),
            lasts: Duration::from_secs(120),
            consumers: 200,
            crash_every: None,
            poison_share: 0.0,
        }
    }
}

/// What one variant of the experiment (with or without the breaker) showed. Times are lab seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutageRun {
    /// `breaker` or `no-breaker`.
    pub variant: String,
    /// The load run's name in `runs` (its timeline CSV).
    pub run: String,
    /// Orders answered 202.
    pub accepted: u64,
    /// Accepted as a share of requests, %.
    pub accepted_pct: f64,
    /// Orders the receiver recorded in the ledger: every 202, and orders whose answer a client timed out on.
    pub recorded: u64,
    /// Recorded orders paid or declined by the end (before any redrive).
    pub settled: u64,
    /// Accepted orders in the dead-letter queue (before any redrive).
    pub dead_lettered: u64,
    /// Accepted orders neither settled nor dead-lettered at the end: must be 0.
    pub lost: u64,
    /// Orders charged more than once: must be 0.
    pub charged_twice: u64,
    /// Poison messages mixed in, and how many of them ended in the dead-letter queue (all, when healthy).
    pub poison_sent: u64,
    /// Poison messages found in the dead-letter queue.
    pub poison_dead_lettered: u64,
    /// Deliveries retried after a transient failure (the workers' `retried`, every incarnation).
    pub retries: u64,
    /// Worker crashes injected.
    pub crashes: u64,
    /// Circuit-breaker state changes, and how often it opened.
    pub breaker_transitions: u64,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Time the breaker spent open or half-open, lab seconds.
    pub breaker_open_s: f64,
    /// Largest backlog sampled.
    pub peak_backlog: u64,
    /// Backlog when the gateway came back.
    pub backlog_at_recovery: Option<u64>,
    /// From the gateway's return until the backlog began to fall, lab seconds: the breaker's wait before its
    /// next probe (at most the max open wait).
    pub detection_s: Option<f64>,
    /// From the gateway's return until the backlog first reached zero, lab seconds.
    pub recovery_s: Option<f64>,
    /// The drain predicted from the backlog at the gateway's return ÷ the net drain rate (consumers ÷ payment
    /// latency, less arrivals if the sale is still on), lab seconds: compare with `recovery_s − detection_s`.
    pub predicted_drain_s: Option<f64>,
    /// After a redrive of the dead-letter queue (the run without the breaker): messages moved back, and how
    /// many of the dead-lettered orders were then settled.
    pub redrive: Option<RedriveOutcome>,
}

/// What a redrive at the end of a run recovered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedriveOutcome {
    /// Messages moved back to the queue (poison included: it returns to the dead-letter queue).
    pub moved: u64,
    /// Dead-lettered orders settled after the redrive.
    pub recovered: u64,
    /// Accepted orders still neither settled nor dead-lettered after the redrive: must be 0.
    pub lost: u64,
    /// Orders charged more than once after the redrive: must be 0.
    pub charged_twice: u64,
}

/// The experiment's report in `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutageReport {
    /// When the gateway went down, lab seconds from the start of the sale.
    pub outage_start_s: f64,
    /// How long it stayed down, lab seconds.
    pub outage_length_s: f64,
    /// Consumers of the worker.
    pub consumers: usize,
    /// The crash interval, lab seconds, when crashes were injected.
    pub crash_every_s: Option<f64>,
    /// Poison share of the sale's orders.
    pub poison_share: f64,
    /// One entry per variant, the breaker first.
    pub runs: Vec<OutageRun>,
}

/// Runs `lab_load` with the gateway outage, with and without the breaker; returns the load runs (for the
/// timelines) and the report.
pub async fn outage_experiment(
    settings: &ExperimentSettings,
    outage: &OutageSettings,
    lab_load: &LoadModel,
    stop: &CancellationToken,
) -> std::io::Result<(Vec<RunResult>, OutageReport)> {
    let mut runs = Vec::new();
    let mut report = OutageReport {
        outage_start_s: outage.starts_after.as_secs_f64(),
        outage_length_s: outage.lasts.as_secs_f64(),
        consumers: outage.consumers,
        crash_every_s: outage.crash_every.map(|every| every.as_secs_f64()),
        poison_share: outage.poison_share,
        runs: Vec::new(),
    };
    for breaker in [true, false] {
        if stop.is_cancelled() {
            break;
        }
        let (result, run) = variant(settings, outage, lab_load, breaker, stop).await?;
        runs.push(result);
        report.runs.push(run);
    }
    Ok((runs, report))
}

/// One variant on a fresh pipeline.
async fn variant(
    settings: &ExperimentSettings,
    outage: &OutageSettings,
    lab_load: &LoadModel,
    breaker: bool,
    stop: &CancellationToken,
) -> std::io::Result<(RunResult, OutageRun)> {
    let Environment::Embedded(lab) = &settings.environment else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the outage experiment switches the embedded gateway off: it runs on the embedded stack only",
        ));
    };
    let scale = settings.time_scale;
    let k = scale.factor();
    let config = PipelineConfig {
        consumers: outage.consumers,
        payment: PaymentConfig { latency: scale.duration(lab.payment.latency), ..lab.payment.clone() },
        sync_timeout: scale.duration(lab.sync_timeout),
        breaker: BreakerConfig { enabled: breaker, ..lab.breaker.clone() },
        timings_scale: k,
        ..lab.clone()
    };
    let name = if breaker { "breaker" } else { "no-breaker" };
    let pipeline = Arc::new(EmbeddedPipeline::start(&config).await?);
    let target = Target::local(pipeline.receiver);
    let plan = RunPlan {
        scenario: format!("outage-{name}"),
        mode: "async".to_owned(),
        spec: target.request(Method::POST, "/orders/async", order_bodies(ORDER_BODIES, 42)),
        target,
        model: scale.load(lab_load),
        sample_every: scale.duration(settings.sample_every).max(Duration::from_millis(10)),
        late_threshold: settings.late_threshold,
        drain: Some(DrainPlan {
            consumers: config.consumers,
            payment_latency: config.payment.latency,
            cap: settings.drain_cap,
        }),
        progress: settings.progress,
    };
    let began = Instant::now();
    let down_at = began + scale.duration(outage.starts_after);
    let up_at = down_at + scale.duration(outage.lasts);
    let done = CancellationToken::new();
    let crashes = Arc::new(AtomicU64::new(0));
    let probes = pipeline.probes();
    // Tasks of their own, so the load generator's busy stretches never delay a fault.
    let crash_every = outage.crash_every.map(|every| scale.duration(every));
    let faults = tokio::spawn(inject_faults(
        Arc::clone(&pipeline),
        crash_every,
        (down_at, up_at),
        done.clone(),
        Arc::clone(&crashes),
    ));
    let poison_sent = poison_count(lab_load, outage.poison_share);
    let sale = scale.load(lab_load).duration();
    let poison = tokio::spawn(send_poison(Arc::clone(&pipeline), poison_sent, sale, done.clone()));
    let result = runner::execute(&plan, &probes, stop).await;
    done.cancel();
    let (_, _) = (faults.await, poison.await);
    let pipeline = Arc::into_inner(pipeline).expect("the fault and poison tasks have ended");

    // However the drain watch ended, the gateway is back before the books are closed.
    sleep_until(up_at).await;
    pipeline.set_gateway_outage(false);
    let settle_cap = settings.drain_cap;
    let mut books = settle(&pipeline, settle_cap, stop).await?;
    let workers = pipeline.worker_history();
    let redrive = if breaker || books.dead_lettered.is_empty() {
        None
    } else {
        let moved = pipeline
            .stack
            .redrive(&RedriveOptions::default(), &|_| {})
            .await
            .map_err(std::io::Error::other)?
            .moved;
        let after = settle(&pipeline, settle_cap, stop).await?;
        let recovered = books.dead_lettered.iter().filter(|id| after.settled.contains(id)).count() as u64;
        let outcome =
            RedriveOutcome { moved, recovered, lost: after.lost, charged_twice: after.charged_twice };
        books.charged_twice = books.charged_twice.max(after.charged_twice);
        Some(outcome)
    };
    pipeline.shutdown().await;

    let outage_end_s = (up_at - began).as_secs_f64();
    let recovery = recovery(&result.timeline, outage_end_s);
    let sale_end_s = scale.load(lab_load).duration().as_secs_f64();
    let drain_per_s = config.consumers as f64 / config.payment.latency.as_secs_f64();
    let arrivals_per_s = if outage_end_s < sale_end_s { open_rate(&scale.load(lab_load)) } else { 0.0 };
    let predicted = recovery.backlog.and_then(|backlog| {
        let net = drain_per_s - arrivals_per_s;
        (net > 0.0).then(|| backlog as f64 / net * k)
    });
    let sum = |pick: fn(&worker::WorkerStats) -> u64| workers.iter().map(pick).sum();
    let run = OutageRun {
        variant: name.to_owned(),
        run: result.name.clone(),
        accepted: result.outcomes.accepted,
        accepted_pct: result.accepted_pct,
        recorded: books.recorded,
        settled: books.settled.len() as u64,
        dead_lettered: books.dead_lettered.len() as u64,
        lost: books.lost,
        charged_twice: books.charged_twice,
        poison_sent,
        poison_dead_lettered: books.poison,
        retries: sum(|stats| stats.retried),
        crashes: crashes.load(Ordering::Relaxed),
        breaker_transitions: sum(|stats| stats.breaker.transitions),
        breaker_opened: sum(|stats| stats.breaker.opened),
        breaker_open_s: workers.iter().map(|stats| stats.breaker.time_open_ms as f64 / 1000.0 * k).sum(),
        peak_backlog: result.queue.map_or(0, |queue| queue.peak_backlog),
        backlog_at_recovery: recovery.backlog,
        detection_s: recovery.falling_after_s.map(|seconds| seconds * k),
        recovery_s: recovery.empty_after_s.map(|seconds| seconds * k),
        predicted_drain_s: predicted,
        redrive,
    };
    Ok((result, run))
}

/// Switches the gateway off and on at the window's edges, and crashes the worker every `crash_every` (real
/// time), until `done`.
async fn inject_faults(
    pipeline: Arc<EmbeddedPipeline>,
    crash_every: Option<Duration>,
    (down_at, up_at): (Instant, Instant),
    done: CancellationToken,
    crashes: Arc<AtomicU64>,
) {
    let mut gateway_down = false;
    let mut gateway_back = false;
    let mut next_crash = crash_every.map(|every| Instant::now() + every);
    loop {
        let next_edge = if !gateway_down { down_at } else { up_at };
        let next = match next_crash {
            Some(crash) if gateway_back || crash < next_edge => crash,
            _ if gateway_back => return done.cancelled().await,
            _ => next_edge,
        };
        tokio::select! {
            () = done.cancelled() => return,
            () = sleep_until(next) => {}
        }
        let now = Instant::now();
        if !gateway_down && now >= down_at {
            gateway_down = true;
            pipeline.set_gateway_outage(true);
            tracing::info!("payment gateway down (simulated outage)");
        } else if gateway_down && !gateway_back && now >= up_at {
            gateway_back = true;
            pipeline.set_gateway_outage(false);
            tracing::info!("payment gateway back");
        }
        if let (Some(crash), Some(every)) = (next_crash, crash_every)
            && now >= crash
        {
            pipeline.crash_worker();
            crashes.fetch_add(1, Ordering::Relaxed);
            tracing::info!("worker crashed (aborted) and replaced");
            next_crash = Some(now + every);
        }
    }
}

/// An open load's arrival rate per second (0 for a closed one, whose rate is not set in advance).
fn open_rate(load: &LoadModel) -> f64 {
    match load {
        LoadModel::Open(open) => open.rate,
        LoadModel::Closed(_) => 0.0,
    }
}

/// Poison messages for `share` of the load's orders.
fn poison_count(lab_load: &LoadModel, share: f64) -> u64 {
    let orders = open_rate(lab_load) * lab_load.duration().as_secs_f64();
    (orders * share).round() as u64
}

/// Sends `count` poison messages straight into the queue (the receiver would refuse them), spread evenly
/// over `over`.
async fn send_poison(pipeline: Arc<EmbeddedPipeline>, count: u64, over: Duration, done: CancellationToken) {
    if count == 0 {
        return;
    }
    let every = over.div_f64(count as f64);
    for n in 0..count {
        if done.is_cancelled() {
            return;
        }
        let body = format!("{{\"poison\": {n}, \"why\": \"not an order\"}}");
        if let Err(error) = pipeline.stack.queue.send(OutgoingMessage::new(body)) {
            tracing::warn!(%error, "could not send a poison message");
        }
        sleep(every).await;
    }
}

/// The books at the end of a run: which accepted orders are settled, which are dead-lettered, what is lost.
struct Books {
    recorded: u64,
    settled: HashSet<uuid::Uuid>,
    dead_lettered: HashSet<uuid::Uuid>,
    poison: u64,
    lost: u64,
    charged_twice: u64,
}

/// Waits (at most `cap`) until every accepted order is settled or dead-lettered, then reads the books from the
/// ledger and the dead-letter queue.
async fn settle(
    pipeline: &EmbeddedPipeline,
    cap: Duration,
    stop: &CancellationToken,
) -> std::io::Result<Books> {
    let give_up = Instant::now() + cap;
    loop {
        let books = books(pipeline).await?;
        if books.lost == 0 || Instant::now() >= give_up || stop.is_cancelled() {
            return Ok(books);
        }
        sleep(Duration::from_millis(50)).await;
    }
}

async fn books(pipeline: &EmbeddedPipeline) -> std::io::Result<Books> {
    let mut dead_lettered = HashSet::new();
    let mut poison = 0;
    for letter in pipeline.stack.list(DLQ_READ_LIMIT).await.map_err(std::io::Error::other)? {
        match WireMessage::parse(&letter.body) {
            Ok(wire) => {
                dead_lettered.insert(wire.order.order_id);
            }
            Err(_) => poison += 1,
        }
    }
    let records = pipeline.ledger.records();
    let settled: HashSet<_> = records
        .iter()
        .filter(|record| matches!(record.status, OrderStatus::Completed | OrderStatus::Declined))
        .map(|record| record.order_id)
        .collect();
    let lost = records
        .iter()
        .filter(|record| !settled.contains(&record.order_id) && !dead_lettered.contains(&record.order_id))
        .count() as u64;
    let charged_twice = records.iter().filter(|record| record.charges > 1).count() as u64;
    Ok(Books { recorded: records.len() as u64, settled, dead_lettered, poison, lost, charged_twice })
}

/// The queue after the gateway came back, read from a run's timeline (real seconds).
#[derive(Debug, PartialEq)]
struct Recovery {
    /// The backlog at the first sample after the gateway's return.
    backlog: Option<u64>,
    /// How long after the return the backlog first fell below that.
    falling_after_s: Option<f64>,
    /// How long after the return the backlog first reached zero.
    empty_after_s: Option<f64>,
}

/// Reads the recovery after `outage_end_s` (real seconds from the start) from `timeline`.
fn recovery(timeline: &[TimelinePoint], outage_end_s: f64) -> Recovery {
    let after: Vec<&TimelinePoint> = timeline.iter().filter(|point| point.t_s >= outage_end_s).collect();
    let backlog = after.first().and_then(|point| point.queue_backlog);
    let first_after = |holds: &dyn Fn(u64) -> bool| {
        after
            .iter()
            .find(|point| point.queue_backlog.is_some_and(holds))
            .map(|point| (point.t_s - outage_end_s).max(0.0))
    };
    Recovery {
        backlog,
        falling_after_s: backlog.and_then(|start| first_after(&|now| now < start)),
        empty_after_s: first_after(&|now| now == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Phase;

    fn point(t_s: f64, backlog: u64) -> TimelinePoint {
        TimelinePoint {
            t_s,
            phase: Phase::Drain,
            users: None,
            sent: 0,
            completed: 0,
            accepted: 0,
            failed: 0,
            rate_per_s: 0.0,
            latency_p50_ms: None,
            latency_p95_ms: None,
            latency_p99_ms: None,
            latency_max_ms: None,
            lag_p99_ms: None,
            queue_visible: Some(backlog),
            queue_in_flight: Some(0),
            queue_backlog: Some(backlog),
            worker_processed: None,
        }
    }

    #[test]
    fn recovery_runs_from_the_gateways_return_to_the_first_empty_queue() {
        let timeline = [
            point(1.0, 500),
            point(2.0, 900),
            point(3.0, 900),
            point(4.0, 400),
            point(5.0, 0),
            point(6.0, 0),
        ];
        let full = Recovery { backlog: Some(900), falling_after_s: Some(2.0), empty_after_s: Some(3.0) };
        assert_eq!(recovery(&timeline, 2.0), full);
        let undrained = Recovery { backlog: Some(900), falling_after_s: Some(2.0), empty_after_s: None };
        assert_eq!(recovery(&timeline[..4], 2.0), undrained, "not yet drained");
    }
}
