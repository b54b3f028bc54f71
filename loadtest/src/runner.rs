//! Running one load against one endpoint: the load itself, a sampler building the timeline (requests, latency,
//! queue depth, worker progress), the live progress line, and — when asked — watching the queue drain after
//! the load ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bus::QueueStats;
use chrono::Utc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use loadgen::client::{RequestSpec, Target};
use loadgen::recorder::{LatencySummary, Measurements, Recorder};
use loadgen::{LoadEnd, LoadModel};

use crate::probe::Probes;
use crate::progress::LiveProgress;
use crate::render;
use crate::results::{
    DrainReport, LoadDescription, Phase, QueueReport, RunResult, ScheduleReport, TimelinePoint,
};

/// After the load, keep watching the queue until it is empty (or the cap passes), and predict the drain with
/// Little's law from the consumers and the payment latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    /// Consumers working the queue (N).
    pub consumers: usize,
    /// Payment latency per order (L): the queue drains at N ÷ L.
    pub payment_latency: Duration,
    /// Stop watching after this long, and extrapolate the rest from the measured rate.
    pub cap: Duration,
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Scenario name (`normal`, `flash-sale-open`, ...).
    pub scenario: String,
    /// `sync` or `async`.
    pub mode: String,
    /// Where requests go.
    pub target: Target,
    /// What requests look like.
    pub spec: RequestSpec,
    /// How load is applied.
    pub model: LoadModel,
    /// Timeline resolution.
    pub sample_every: Duration,
    /// Open model: sends later than this after their intended time are counted as late.
    pub late_threshold: Duration,
    /// Watch the drain after the load.
    pub drain: Option<DrainPlan>,
    /// Draw the live progress bar.
    pub progress: bool,
}

impl RunPlan {
    /// `scenario/mode`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.scenario, self.mode)
    }
}

/// The timeline being built, and the run's totals.
struct Sampler {
    start: Instant,
    last: Instant,
    totals: Measurements,
    points: Vec<TimelinePoint>,
    peak: Option<(u64, f64)>,
}

impl Sampler {
    fn new(start: Instant) -> Sampler {
        Sampler { start, last: start, totals: Measurements::default(), points: Vec::new(), peak: None }
    }

    fn push(
        &mut self,
        phase: Phase,
        interval: Measurements,
        users: Option<u64>,
        queue: Option<QueueStats>,
        worker_processed: Option<u64>,
    ) -> &TimelinePoint {
        let now = Instant::now();
        let seconds = now.duration_since(self.last).as_secs_f64().max(1e-9);
        self.last = now;
        let t_s = now.duration_since(self.start).as_secs_f64();
        let percentile = |q: f64| {
            (!interval.latency.is_empty()).then(|| interval.latency.value_at_quantile(q) as f64 / 1000.0)
        };
        if let Some(stats) = queue
            && self.peak.is_none_or(|(peak, _)| stats.backlog() > peak)
        {
            self.peak = Some((stats.backlog(), t_s));
        }
        let completed = interval.outcomes.total();
        self.points.push(TimelinePoint {
            t_s,
            phase,
            users,
            sent: interval.sent,
            completed,
            accepted: interval.outcomes.accepted,
            failed: interval.outcomes.failed(),
            rate_per_s: completed as f64 / seconds,
            latency_p50_ms: percentile(0.50),
            latency_p95_ms: percentile(0.95),
            latency_p99_ms: percentile(0.99),
            latency_max_ms: (!interval.latency.is_empty()).then(|| interval.latency.max() as f64 / 1000.0),
            lag_p99_ms: (!interval.lag.is_empty())
                .then(|| interval.lag.value_at_quantile(0.99) as f64 / 1000.0),
            queue_visible: queue.map(|q| q.visible),
            queue_in_flight: queue.map(|q| q.in_flight),
            queue_backlog: queue.map(|q| q.backlog()),
            worker_processed,
        });
        self.totals.merge(&interval);
        self.points.last().expect("just pushed")
    }
}

/// Runs one plan to the end and returns its results (the timeline included).
pub async fn execute(plan: &RunPlan, probes: &Probes, stop: &CancellationToken) -> RunResult {
    let started_at = Utc::now();
    let recorder = Arc::new(Recorder::new(plan.late_threshold));
    let active_users = Arc::new(AtomicUsize::new(0));
    let progress = LiveProgress::new(plan.progress, &plan.name(), plan.model.duration());
    let start = Instant::now();
    let mut sampler = Sampler::new(start);

    let load = {
        let recorder = Arc::clone(&recorder);
        let active_users = Arc::clone(&active_users);
        let (target, spec, model, stop): (Target, RequestSpec, LoadModel, CancellationToken) =
            (plan.target.clone(), plan.spec.clone(), plan.model.clone(), stop.clone());
        async move { model.run(&target, &spec, recorder, active_users, stop).await }
    };
    let users = |model: &LoadModel| {
        matches!(model, LoadModel::Closed(_)).then(|| active_users.load(Ordering::Relaxed) as u64)
    };
    tokio::pin!(load);
    let mut ticker = tokio::time::interval(plan.sample_every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let load_end = loop {
        tokio::select! {
            end = &mut load => break end,
            _ = ticker.tick() => {
                let queue = probes.queue_stats().await;
                let worker = probes.worker_stats().await.and_then(|w| w.processed);
                let point = sampler.push(Phase::Load, recorder.take_interval(), users(&plan.model), queue, worker);
                progress.update(start.elapsed(), point);
            }
        }
    };
    let load_duration = start.elapsed();
    let queue_at_end = probes.queue_stats().await;
    let worker_at_end = probes.worker_stats().await;
    sampler.push(
        Phase::Load,
        recorder.take_interval(),
        users(&plan.model),
        queue_at_end,
        worker_at_end.as_ref().and_then(|w| w.processed),
    );

    let drain = match (plan.drain, queue_at_end) {
        (Some(drain), Some(at_end)) if !stop.is_cancelled() => {
            Some(watch_drain(drain, at_end, probes, &mut sampler, &progress, plan.sample_every, stop).await)
        }
        _ => None,
    };
    let worker = match drain {
        Some(_) => probes.worker_stats().await,
        None => worker_at_end,
    };

    let totals = &sampler.totals;
    let outcomes = totals.outcomes;
    let seconds = load_duration.as_secs_f64().max(1e-9);
    let (schedule, abandoned) = match load_end {
        LoadEnd::Open(run) => (
            Some(ScheduleReport {
                scheduled: run.scheduled,
                connections: run.connections,
                late: totals.late,
                late_threshold_ms: plan.late_threshold.as_secs_f64() * 1000.0,
                lag: LatencySummary::of(&totals.lag),
            }),
            0,
        ),
        LoadEnd::Closed(run) => (None, run.abandoned),
    };
    let result = RunResult {
        name: plan.name(),
        scenario: plan.scenario.clone(),
        mode: plan.mode.clone(),
        path: plan.spec.path().to_owned(),
        load: LoadDescription::of(&plan.model),
        started_at,
        load_duration_s: load_duration.as_secs_f64(),
        sent: totals.sent,
        abandoned,
        outcomes,
        accepted_pct: outcomes.accepted_pct(),
        throughput_per_s: outcomes.total() as f64 / seconds,
        accepted_per_s: outcomes.accepted as f64 / seconds,
        latency: LatencySummary::of(&totals.latency),
        accepted_latency: LatencySummary::of(&totals.accepted_latency),
        idempotency: plan.spec.idempotency().map(|_| totals.idempotency),
        schedule,
        queue: queue_at_end.map(|at_end| {
            let (peak_backlog, peak_at_s) =
                sampler.peak.unwrap_or((at_end.backlog(), load_duration.as_secs_f64()));
            QueueReport { peak_backlog, peak_at_s, backlog_at_load_end: at_end.backlog(), drain }
        }),
        worker,
        eta: None,
        timeline_csv: render::csv::file_name(&plan.name()),
        timeline: std::mem::take(&mut sampler.points),
    };
    progress.finish(&format!(
        "{} requests, {:.1}% accepted, p50 {:.1} ms, p99 {:.1} ms",
        outcomes.total(),
        result.accepted_pct,
        result.latency.p50_ms,
        result.latency.p99_ms
    ));
    result
}

/// Samples the queue until its backlog reaches zero or the cap passes.
async fn watch_drain(
    plan: DrainPlan,
    at_end: QueueStats,
    probes: &Probes,
    sampler: &mut Sampler,
    progress: &LiveProgress,
    sample_every: Duration,
    stop: &CancellationToken,
) -> DrainReport {
    let backlog = at_end.backlog();
    let predicted_s = backlog as f64 * plan.payment_latency.as_secs_f64() / plan.consumers.max(1) as f64;
    progress.extend(Duration::from_secs_f64(predicted_s));
    let began = Instant::now();
    let mut remaining = backlog;
    let mut ticker = tokio::time::interval(sample_every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    while remaining > 0 && began.elapsed() < plan.cap && !stop.is_cancelled() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        let Some(stats) = probes.queue_stats().await else { continue };
        remaining = stats.backlog();
        let worker = probes.worker_stats().await.and_then(|w| w.processed);
        let elapsed = sampler.start.elapsed();
        let point = sampler.push(Phase::Drain, Measurements::default(), None, Some(stats), worker);
        progress.update(elapsed, point);
    }
    let measured_s = began.elapsed().as_secs_f64();
    let processed = backlog.saturating_sub(remaining);
    let processing_rate_per_s = processed as f64 / measured_s.max(1e-9);
    DrainReport {
        finished: remaining == 0,
        measured_s,
        predicted_s,
        consumers: plan.consumers,
        payment_latency_ms: plan.payment_latency.as_secs_f64() * 1000.0,
        remaining,
        processing_rate_per_s,
        extrapolated_total_s: (remaining > 0 && processing_rate_per_s > 0.0)
            .then(|| measured_s + remaining as f64 / processing_rate_per_s),
        service_time_ms: None,
        predicted_from_service_time_s: None,
        service_time_inflation_pct: None,
    }
}
