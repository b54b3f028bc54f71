//! The results a command writes: `results.json` (one documented schema, [`SCHEMA`]; see
//! `loadtest/RESULTS.md`), one CSV timeline per run, and `report.html`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use loadgen::LoadModel;
use loadgen::idempotency::IdempotencyCounts;
use loadgen::outcome::OutcomeCounts;
use loadgen::recorder::LatencySummary;

use crate::probe::WorkerSnapshot;
use crate::render;

/// The schema identifier written in every `results.json`; bumped on any incompatible change.
pub const SCHEMA: &str = "orderflow-loadtest-results/1";

/// The whole `results.json` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultsDocument {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The loadtest version that wrote it.
    pub tool_version: String,
    /// `run`, `compare` or `scale`.
    pub command: String,
    /// When the command started.
    pub created_at: DateTime<Utc>,
    /// `embedded` (the in-process stack) or the target URL.
    pub target: String,
    /// Time compression factor K: payment latency ÷ K, rates × K, durations ÷ K. 1 means real time.
    pub time_scale: f64,
    /// Whether orders carried idempotency keys and were retried with them (`--idempotency-keys`); which runs
    /// did says each run's `idempotency`. Absent in documents written before it existed, hence the default.
    #[serde(default)]
    pub idempotency_keys: bool,
    /// Plain-language notes about how to read the figures (time scale, drain caps, ...).
    pub notes: Vec<String>,
    /// Every load run, in the order they ran.
    pub runs: Vec<RunResult>,
    /// Sync-vs-async improvement factors (`compare` only).
    pub comparisons: Vec<Comparison>,
    /// The worker-scaling sweep (`scale` only).
    pub scaling: Vec<ScalingPoint>,
    /// The autoscaling simulation's settings and one result per policy (`autoscale` only; absent in
    /// documents written before it existed).
    #[serde(default)]
    pub autoscale: Option<AutoscaleReport>,
    /// The outage experiment, with and without the circuit breaker (`outage` only; absent in documents written
    /// before it existed).
    #[serde(default)]
    pub outage: Option<crate::outage::OutageReport>,
}

impl ResultsDocument {
    /// An empty document for `command` against `target`.
    pub fn new(command: &str, target: &str, time_scale: f64) -> ResultsDocument {
        ResultsDocument {
            schema: SCHEMA.to_owned(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            command: command.to_owned(),
            created_at: Utc::now(),
            target: target.to_owned(),
            time_scale,
            idempotency_keys: false,
            notes: Vec::new(),
            runs: Vec::new(),
            comparisons: Vec::new(),
            scaling: Vec::new(),
            autoscale: None,
            outage: None,
        }
    }
}

/// The load a run applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum LoadDescription {
    /// Constant arrival rate.
    Open {
        /// Requests per second.
        rate_per_s: f64,
        /// Scheduling duration in seconds.
        duration_s: f64,
        /// Most requests in flight allowed.
        max_connections: usize,
        /// Request timeout in milliseconds.
        timeout_ms: f64,
    },
    /// Locust-style users.
    Closed {
        /// Concurrent users.
        users: usize,
        /// Users started per second.
        spawn_rate: f64,
        /// Shortest pause between requests, ms.
        wait_min_ms: f64,
        /// Longest pause between requests, ms.
        wait_max_ms: f64,
        /// Run time in seconds.
        duration_s: f64,
        /// Request timeout in milliseconds.
        timeout_ms: f64,
    },
}

impl LoadDescription {
    /// The load `model` applies, as written to results.
    pub fn of(model: &LoadModel) -> LoadDescription {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        match model {
            LoadModel::Open(load) => LoadDescription::Open {
                rate_per_s: load.rate,
                duration_s: load.duration.as_secs_f64(),
                max_connections: load.max_connections,
                timeout_ms: ms(load.timeout),
            },
            LoadModel::Closed(load) => LoadDescription::Closed {
                users: load.users,
                spawn_rate: load.spawn_rate,
                wait_min_ms: ms(load.wait.min),
                wait_max_ms: ms(load.wait.max),
                duration_s: load.duration.as_secs_f64(),
                timeout_ms: ms(load.timeout),
            },
        }
    }
}

/// One load run against one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// `scenario/endpoint-kind`, e.g. `flash-sale-open/async`.
    pub name: String,
    /// The scenario (`normal`, `flash-sale-open`, `flash-sale-users`, or `custom`).
    pub scenario: String,
    /// `sync` or `async`.
    pub mode: String,
    /// The request path, e.g. `/orders/async`.
    pub path: String,
    /// The load applied.
    pub load: LoadDescription,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// Seconds from the first request to the last answer (the load phase; the drain is extra).
    pub load_duration_s: f64,
    /// Requests handed to a connection.
    pub sent: u64,
    /// Requests in flight when a closed-model run ended, dropped unanswered (not in `outcomes`).
    pub abandoned: u64,
    /// Outcomes: `accepted` plus one count per failure kind.
    pub outcomes: OutcomeCounts,
    /// Accepted as a percentage of all outcomes.
    pub accepted_pct: f64,
    /// Answered (or failed) requests per second over the load phase.
    pub throughput_per_s: f64,
    /// Accepted requests per second over the load phase.
    pub accepted_per_s: f64,
    /// Latency of every request, failures included (open model: from the intended send time).
    pub latency: LatencySummary,
    /// Latency of accepted requests only.
    pub accepted_latency: LatencySummary,
    /// Retries, replays and duplicate orders, when the run's requests carried idempotency keys (`None`
    /// otherwise, and in documents written before keys existed).
    #[serde(default)]
    pub idempotency: Option<IdempotencyCounts>,
    /// Open model only: how well the generator kept its schedule.
    pub schedule: Option<ScheduleReport>,
    /// Queue depth and drain, when the queue could be observed.
    pub queue: Option<QueueReport>,
    /// The worker's `/stats` at the end of the run (end-to-end latency lives here), when observable.
    pub worker: Option<WorkerSnapshot>,
    /// How well `GET /orders/{id}`'s `eta` predicted when sampled orders settled, when it was measured (the
    /// embedded pipeline's watched drains; `None` otherwise, and in documents written before it existed).
    #[serde(default)]
    pub eta: Option<EtaReport>,
    /// The timeline CSV's file name, in the same directory.
    pub timeline_csv: String,
    /// The timeline itself (written to CSV, not to JSON).
    #[serde(skip)]
    pub timeline: Vec<TimelinePoint>,
}

/// How well the open model kept its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScheduleReport {
    /// Requests in the schedule (rate × duration).
    pub scheduled: u64,
    /// Connections the generator opened (its peak concurrency).
    pub connections: usize,
    /// Requests sent later than `late_threshold_ms` after their intended time.
    pub late: u64,
    /// The lateness threshold in milliseconds.
    pub late_threshold_ms: f64,
    /// Scheduling lag: actual send time − intended send time.
    pub lag: LatencySummary,
}

/// The queue's story during and after a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueueReport {
    /// Largest backlog (visible + in flight) sampled.
    pub peak_backlog: u64,
    /// Seconds from the run's start to that peak.
    pub peak_at_s: f64,
    /// Backlog when the load phase ended.
    pub backlog_at_load_end: u64,
    /// The drain after the load, when it was watched.
    pub drain: Option<DrainReport>,
}

/// How long the backlog took to clear after the load ended, measured and predicted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Whether the backlog reached zero before the cap.
    pub finished: bool,
    /// Seconds from the end of the load to an empty queue (or to the cap, when not finished).
    pub measured_s: f64,
    /// Little's law: backlog at load end × payment latency ÷ consumers.
    pub predicted_s: f64,
    /// Consumers assumed by the prediction.
    pub consumers: usize,
    /// Payment latency assumed by the prediction, ms.
    pub payment_latency_ms: f64,
    /// Backlog left when watching stopped (0 when finished).
    pub remaining: u64,
    /// Messages processed per second while draining (backlog decrease ÷ time).
    pub processing_rate_per_s: f64,
    /// When not finished: the time the rest would take at the measured processing rate, seconds.
    pub extrapolated_total_s: Option<f64>,
    /// The mean service time the consumers achieved (receipt to settlement, averaged over the worker's last
    /// minute of settled orders), ms on the run's clock; `None` when it could not be read.
    #[serde(default)]
    pub service_time_ms: Option<f64>,
    /// Little's law again, from the measured service time: `predicted_s × service_time_ms ÷
    /// payment_latency_ms`, seconds.
    #[serde(default)]
    pub predicted_from_service_time_s: Option<f64>,
    /// How much longer the achieved service time is than the nominal payment latency, percent. On a
    /// compressed clock this is mostly the timer's lateness per payment: an artifact of the clock, not
    /// queueing.
    #[serde(default)]
    pub service_time_inflation_pct: Option<f64>,
}

impl DrainReport {
    /// This report with the consumers' measured mean service time and the prediction made from it.
    pub fn with_service_time(self, service_time_ms: f64) -> DrainReport {
        let ratio = service_time_ms / self.payment_latency_ms.max(1e-9);
        DrainReport {
            service_time_ms: Some(service_time_ms),
            predicted_from_service_time_s: Some(self.predicted_s * ratio),
            service_time_inflation_pct: Some((ratio - 1.0) * 100.0),
            ..self
        }
    }

    /// The drain's length to compare with predictions: the extrapolated total when capped, else measured.
    pub fn total_s(&self) -> f64 {
        self.extrapolated_total_s.unwrap_or(self.measured_s)
    }
}

/// The error of the order ETAs `GET /orders/{id}` gave while a queue drained: orders picked at random from
/// the unsettled backlog, asked for their `eta`, and later looked up for when they really settled. Each
/// sample's error is `(eta − settled) ÷ (settled − asked)`: positive means too late, relative to the wait
/// that remained. Relative errors are the same on any clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtaReport {
    /// Lookups that returned an `eta` for an order that then settled (the samples below).
    pub samples: usize,
    /// Lookups of a pending or processing order that returned `eta: null` (no estimate yet).
    pub null_etas: usize,
    /// Sampled orders that had not settled when the run ended (left out).
    pub unsettled: usize,
    /// Median signed error, percent of the remaining wait.
    pub error_p50_pct: Option<f64>,
    /// 5th percentile of the signed error, percent (the earliest estimates).
    pub error_p5_pct: Option<f64>,
    /// 95th percentile of the signed error, percent (the latest estimates).
    pub error_p95_pct: Option<f64>,
    /// 95th percentile of the absolute error, percent: 95 % of the estimates were at least this close.
    pub abs_error_p95_pct: Option<f64>,
    /// Median remaining wait of the samples (asked → settled), seconds on the run's clock.
    pub wait_p50_s: Option<f64>,
}

impl EtaReport {
    /// Summarises `(relative error, remaining wait s)` pairs.
    pub fn of(samples: &[(f64, f64)], null_etas: usize, unsettled: usize) -> EtaReport {
        let sorted = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values
        };
        let errors = sorted(samples.iter().map(|s| s.0 * 100.0).collect());
        let absolute = sorted(errors.iter().map(|e| e.abs()).collect());
        let waits = sorted(samples.iter().map(|s| s.1).collect());
        EtaReport {
            samples: samples.len(),
            null_etas,
            unsettled,
            error_p50_pct: quantile(&errors, 0.50),
            error_p5_pct: quantile(&errors, 0.05),
            error_p95_pct: quantile(&errors, 0.95),
            abs_error_p95_pct: quantile(&absolute, 0.95),
            wait_p50_s: quantile(&waits, 0.50),
        }
    }
}

/// The nearest-rank quantile `q` of sorted `values`.
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let last = values.len().checked_sub(1)?;
    values.get(((q * values.len() as f64).ceil() as usize).saturating_sub(1).min(last)).copied()
}

/// Sync-vs-async improvement factors for one scenario (async ÷ sync unless said otherwise).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// The scenario compared.
    pub scenario: String,
    /// Accepted %: async − sync, in percentage points.
    pub accepted_pct_gain: f64,
    /// Accepted requests: async ÷ sync (infinite when sync accepted none: written as null).
    pub accepted_factor: Option<f64>,
    /// Accepted per second: async ÷ sync.
    pub accepted_rate_factor: Option<f64>,
    /// Median latency: sync ÷ async (how many times faster the answer is).
    pub p50_speedup: Option<f64>,
    /// 99th-percentile latency: sync ÷ async.
    pub p99_speedup: Option<f64>,
}

/// One point of the worker-scaling sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalingPoint {
    /// Consumers (N).
    pub consumers: usize,
    /// Offered rate during the flash sale, orders/s.
    pub offered_rate_per_s: f64,
    /// N ÷ L: the processing rate the consumers can sustain.
    pub capacity_per_s: f64,
    /// Measured processing rate (orders processed ÷ time, while there was work).
    pub processing_rate_per_s: f64,
    /// Largest backlog sampled.
    pub peak_backlog: u64,
    /// Drain after the load, measured (seconds; time to the cap when not finished).
    pub drain_s: f64,
    /// Little's-law drain prediction from the nominal payment latency, seconds.
    pub drain_predicted_s: f64,
    /// Little's-law drain prediction from the service time the consumers achieved, seconds (see
    /// [`DrainReport::predicted_from_service_time_s`]).
    #[serde(default)]
    pub drain_predicted_from_service_time_s: Option<f64>,
    /// The achieved mean service time, ms (see [`DrainReport::service_time_ms`]).
    #[serde(default)]
    pub service_time_ms: Option<f64>,
    /// Whether the drain finished before the cap.
    pub drain_finished: bool,
    /// Worker CPU time ÷ wall time over the run (cores), when measurable.
    pub worker_cpu_cores: Option<f64>,
    /// Peak resident memory of the process hosting the worker, MiB, when measurable.
    pub rss_mib: Option<f64>,
    /// Little's law: the fewest consumers that keep up, rate × latency.
    pub min_consumers_littles_law: u64,
    /// Whether the consumers kept up: at the end of the sale the backlog was no more than the orders being
    /// paid (at most 1.5 × N).
    pub kept_up: bool,
}

/// `autoscale`: the simulated worker fleet's settings, the Terraform variables they correspond to, and one
/// result per scaling policy. Times are lab time (`*_lab_s`: the run's clock × K), since scaling is about
/// minutes of the real service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoscaleReport {
    /// The fleet and policy settings, lab time.
    pub settings: AutoscaleSettingsReport,
    /// The `terraform/variables.tf` variables these settings correspond to, in `-var` form.
    pub terraform: Vec<TerraformVariable>,
    /// One result per policy, in the order they ran.
    pub policies: Vec<PolicyResult>,
}

/// The simulation's settings, lab time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleSettingsReport {
    /// Consumers per task.
    pub consumers_per_task: usize,
    /// Payment latency, seconds (one order's processing time).
    pub payment_latency_s: f64,
    /// Fewest tasks.
    pub min_tasks: usize,
    /// Most tasks.
    pub max_tasks: usize,
    /// Acceptable queueing latency, seconds.
    pub acceptable_latency_s: f64,
    /// Backlog-per-task target: acceptable latency × consumers ÷ payment latency.
    pub backlog_per_task_target: f64,
    /// The CPU policy's target, percent.
    pub cpu_target_percent: f64,
    /// Scale-out cooldown, seconds.
    pub scale_out_cooldown_s: f64,
    /// Scale-in cooldown, seconds.
    pub scale_in_cooldown_s: f64,
    /// One datapoint per this many seconds.
    pub metric_period_s: f64,
    /// Seconds from a datapoint's end to the policy seeing it.
    pub metric_delay_s: f64,
    /// Datapoints above the target before a scale-out.
    pub scale_out_datapoints: usize,
    /// Datapoints below 90 % of the target before a scale-in.
    pub scale_in_datapoints: usize,
    /// Seconds from a scale-out to the new task taking orders.
    pub startup_delay_s: f64,
    /// Seconds the simulation watches after the queue drained (unless back at the minimum sooner).
    pub after_drain_s: f64,
}

/// One Terraform variable and the value that reproduces a setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TerraformVariable {
    /// The variable's name in `terraform/variables.tf`.
    pub name: String,
    /// Its value.
    pub value: f64,
}

/// What one scaling policy did with the load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyResult {
    /// `backlog-per-task` or `cpu`.
    pub policy: String,
    /// What the policy tracks, in words.
    pub metric: String,
    /// The metric's target value (orders per task, or percent).
    pub target: f64,
    /// The name of the load run (in `runs`) this policy's fleet drained.
    pub run: String,
    /// Most tasks running at once.
    pub peak_tasks: usize,
    /// When that many first ran, lab seconds since the load began.
    pub peak_tasks_at_lab_s: f64,
    /// Largest backlog (visible + in flight) sampled.
    pub peak_backlog: u64,
    /// When, lab seconds since the load began.
    pub peak_backlog_at_lab_s: f64,
    /// The oldest message's greatest age (CloudWatch `ApproximateAgeOfOldestMessage`), lab seconds.
    pub oldest_message_age_lab_s: f64,
    /// When the load ended, lab seconds.
    pub load_end_lab_s: f64,
    /// Whether the queue drained before the watch ended.
    pub drained: bool,
    /// From the end of the load to an empty queue, lab seconds (`None`: it did not drain).
    pub drain_lab_s: Option<f64>,
    /// Tasks × minutes over the whole watch, starting and stopping tasks included (Fargate bills from the
    /// image pull to the stop): the cost.
    pub task_minutes: f64,
    /// How long the watch lasted, lab seconds since the load began.
    pub observed_lab_s: f64,
    /// Whether the fleet was back at its minimum when the watch ended (else task-minutes stop short of it).
    pub ended_at_min: bool,
    /// Orders the receiver accepted.
    pub accepted: u64,
    /// Orders the fleet settled (paid or declined).
    pub processed: u64,
    /// Messages in the dead-letter queue at the end.
    pub dead_lettered: u64,
    /// Every change of the desired task count.
    pub decisions: Vec<ScalingDecision>,
    /// The fleet timeline CSV's file name, in the same directory.
    pub timeline_csv: String,
    /// The fleet timeline (written to CSV, not to JSON).
    #[serde(skip)]
    pub timeline: Vec<FleetPoint>,
}

/// A change of the desired task count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalingDecision {
    /// When the datapoint that caused it arrived, lab seconds.
    pub at_lab_s: f64,
    /// That datapoint's value.
    pub metric: f64,
    /// Desired tasks before.
    pub from_tasks: usize,
    /// Desired tasks after.
    pub to_tasks: usize,
}

/// One row of a fleet timeline CSV. Lab time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetPoint {
    /// Lab seconds since the load began.
    pub t_lab_s: f64,
    /// Load, or drain (after the load).
    pub phase: Phase,
    /// Tasks the policy wants.
    pub desired_tasks: usize,
    /// Tasks starting (not yet taking orders).
    pub starting_tasks: usize,
    /// Tasks taking orders.
    pub running_tasks: usize,
    /// Tasks shutting down after a scale-in.
    pub stopping_tasks: usize,
    /// Messages waiting.
    pub queue_visible: u64,
    /// Messages being processed.
    pub queue_in_flight: u64,
    /// Visible + in flight.
    pub queue_backlog: u64,
    /// The oldest message's age, lab seconds (empty when the queue is).
    pub oldest_age_lab_s: Option<f64>,
    /// Busy consumers of the running tasks over their consumers, percent (the CPU policy's metric).
    pub cpu_percent: f64,
    /// Orders the fleet has settled so far.
    pub processed: u64,
}

/// Whether a timeline row belongs to the load or to the drain after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Requests are being sent.
    Load,
    /// The load has ended; the queue is being watched until empty.
    Drain,
}

/// One row of a timeline CSV: what happened during one sampling interval. Empty cells: not measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the run started, at the end of the interval.
    pub t_s: f64,
    /// Load or drain.
    pub phase: Phase,
    /// Users running (closed model).
    pub users: Option<u64>,
    /// Requests sent during the interval.
    pub sent: u64,
    /// Requests finished during the interval.
    pub completed: u64,
    /// Of which accepted.
    pub accepted: u64,
    /// Of which failed.
    pub failed: u64,
    /// Finished requests per second during the interval.
    pub rate_per_s: f64,
    /// Median latency of requests finished during the interval, ms.
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub latency_p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub latency_p99_ms: Option<f64>,
    /// Maximum, ms.
    pub latency_max_ms: Option<f64>,
    /// 99th percentile of the scheduling lag, ms (open model).
    pub lag_p99_ms: Option<f64>,
    /// Messages waiting in the queue.
    pub queue_visible: Option<u64>,
    /// Messages being processed.
    pub queue_in_flight: Option<u64>,
    /// Visible + in flight: the true backlog.
    pub queue_backlog: Option<u64>,
    /// Orders the worker has processed since it started (cumulative).
    pub worker_processed: Option<u64>,
}

/// Writes `results.json`, one CSV per run and `report.html` into `dir` (created if needed); returns the
/// paths written.
pub fn write_all(dir: &Path, document: &ResultsDocument, report_html: &str) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for run in &document.runs {
        let path = dir.join(&run.timeline_csv);
        render::csv::write_timeline(&path, &run.timeline)?;
        written.push(path);
    }
    for policy in document.autoscale.iter().flat_map(|report| &report.policies) {
        let path = dir.join(&policy.timeline_csv);
        render::autoscale::write_fleet_timeline(&path, &policy.timeline)?;
        written.push(path);
    }
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(document)?)?;
    written.push(json);
    let html = dir.join("report.html");
    std::fs::write(&html, report_html)?;
    written.push(html);
    Ok(written)
}
