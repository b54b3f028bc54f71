//! Where an experiment's runs go — a fresh embedded pipeline per run, or a deployed stack — and how one run of
//! a lab scenario is set up on a time scale.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hyper::Method;
use ledger::embedded::EmbeddedLedger;
use ledger::registry::WorkerRegistry;
use loadgen::LoadModel;
use loadgen::client::Connection;
use loadgen::client::Target;
use loadgen::idempotency::RetryPolicy;
use orders::{OrderStatus, PaymentConfig};
use tokio_util::sync::CancellationToken;

use crate::pipeline::{self, EmbeddedPipeline, PipelineConfig};
use crate::probe::Probes;
use crate::results::{EtaReport, RunResult};
use crate::runner::{self, DrainPlan, RunPlan};
use crate::scenario::{TimeScale, order_bodies};

/// How many different order bodies a run rotates through.
const ORDER_BODIES: usize = 256;

/// How often, in lab time, a watched drain asks the receiver for one unsettled order's `eta`: often enough
/// for a few hundred samples in a lab drain of minutes, rarely enough to cost nothing.
const ETA_SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// The system under test.
#[derive(Clone)]
pub enum Environment {
    /// A fresh in-process pipeline for every run; its settings are in lab time and get time-scaled.
    Embedded(PipelineConfig),
    /// A deployed stack (real time only).
    Deployed {
        /// The receiver (e.g. the load balancer's URL).
        target: Target,
        /// Its queue and worker, when given.
        probes: Probes,
        /// Consumers the deployed worker runs (for Little's-law predictions).
        consumers: usize,
        /// Payment latency the deployed services use (for Little's-law predictions).
        payment_latency: Duration,
    },
}

impl Environment {
    /// This environment with the embedded worker's and queue's own clocks (visibility timeout, backoffs, the
    /// registry's heartbeats) on time scale `k`, so that order ETAs, built from heartbeats, keep pace with the
    /// run. Without failures the other timings only act on stalls; a deployed stack is returned unchanged.
    pub fn with_scaled_worker_clocks(&self, k: f64) -> Environment {
        match self {
            Environment::Embedded(config) => {
                Environment::Embedded(PipelineConfig { timings_scale: k, ..config.clone() })
            }
            deployed => deployed.clone(),
        }
    }

    /// `embedded` or the target URL.
    pub fn describe(&self) -> String {
        match self {
            Environment::Embedded(_) => "embedded".to_owned(),
            Environment::Deployed { target, .. } => target.url().to_owned(),
        }
    }
}

/// Settings shared by every run of an experiment.
#[derive(Clone)]
pub struct ExperimentSettings {
    /// The system under test.
    pub environment: Environment,
    /// K: payment latency ÷ K, rates × K, durations ÷ K (embedded only).
    pub time_scale: TimeScale,
    /// Stop watching a drain after this long (real time) and extrapolate the rest.
    pub drain_cap: Duration,
    /// Open model: sends later than this are counted as late.
    pub late_threshold: Duration,
    /// Timeline resolution in lab time (1 s: the lab's per-second charts; time-scaled like everything else).
    pub sample_every: Duration,
    /// Draw live progress bars.
    pub progress: bool,
    /// Send a fresh idempotency key with every order and retry with it as this policy says (in lab time:
    /// time-scaled with the rest). `None`: plain requests, never retried.
    pub idempotency: Option<RetryPolicy>,
}

/// One run to make: a scenario's load in lab time against one endpoint.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Scenario name.
    pub scenario: String,
    /// `sync` or `async`.
    pub mode: String,
    /// The load, in lab time.
    pub lab_load: LoadModel,
    /// Watch the queue drain afterwards.
    pub watch_drain: bool,
    /// Consumers for this run (overrides the environment's, for the scaling sweep).
    pub consumers: Option<usize>,
}

/// A run's results plus what was measured around it.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The results.
    pub result: RunResult,
    /// Worker CPU time ÷ wall time over the run and drain, in cores (embedded, Linux).
    pub worker_cpu_cores: Option<f64>,
    /// Resident memory of the whole process (receiver, worker, queue and generator) after the run, MiB
    /// (embedded, Linux).
    pub rss_mib: Option<f64>,
}

/// Makes one run: starts a fresh embedded pipeline (or uses the deployed stack), applies the time-scaled load,
/// watches the drain if asked, and stops the pipeline.
pub async fn run(
    settings: &ExperimentSettings,
    request: &RunRequest,
    stop: &CancellationToken,
) -> std::io::Result<RunOutcome> {
    let scale = settings.time_scale;
    let path = if request.mode == "sync" { "/orders/sync" } else { "/orders/async" };
    // Below 10 ms the sampling itself (queue and worker probes) would start to cost.
    let sample_every = scale.duration(settings.sample_every).max(Duration::from_millis(10));
    let plan = |target: Target, consumers: usize, payment_latency: Duration| RunPlan {
        scenario: request.scenario.clone(),
        mode: request.mode.clone(),
        spec: {
            let spec = target.request(Method::POST, path, order_bodies(ORDER_BODIES, 42));
            match settings.idempotency {
                Some(policy) => spec.with_idempotency_keys(policy.time_scaled(scale.factor())),
                None => spec,
            }
        },
        target,
        model: scale.load(&request.lab_load),
        sample_every,
        late_threshold: settings.late_threshold,
        drain: request.watch_drain.then_some(DrainPlan {
            consumers,
            payment_latency,
            cap: settings.drain_cap,
        }),
        progress: settings.progress,
    };
    match &settings.environment {
        Environment::Embedded(lab) => {
            let config = PipelineConfig {
                consumers: request.consumers.unwrap_or(lab.consumers),
                payment: PaymentConfig {
                    latency: scale.duration(lab.payment.latency),
                    ..lab.payment.clone()
                },
                sync_timeout: scale.duration(lab.sync_timeout),
                ..lab.clone()
            };
            // The worker's threads are new with each pipeline, so their CPU time is this run's (start included).
            let began = Instant::now();
            let pipeline = EmbeddedPipeline::start(&config).await?;
            let plan = plan(Target::local(pipeline.receiver), config.consumers, config.payment.latency);
            let etas = (plan.drain.is_some() && request.mode == "async").then(|| {
                let sampler = EtaSampler {
                    ledger: Arc::clone(&pipeline.ledger),
                    receiver: pipeline.receiver,
                    after: plan.model.duration(),
                    every: scale.duration(ETA_SAMPLE_EVERY),
                    stop: stop.child_token(),
                };
                let done = sampler.stop.clone();
                (tokio::spawn(sampler.run()), done)
            });
            let mut result = runner::execute(&plan, &pipeline.probes(), stop).await;
            if let Some((task, done)) = etas {
                done.cancel();
                if let Ok(samples) = task.await {
                    result.eta = Some(samples.report(&pipeline.ledger));
                }
            }
            if let Some(service_ms) = mean_service_time_ms(&pipeline.ledger).await
                && let Some(drain) = result.queue.as_mut().and_then(|queue| queue.drain.as_mut())
            {
                *drain = drain.with_service_time(service_ms);
            }
            let worker_cpu_cores =
                pipeline.worker_cpu_time().map(|cpu| cpu.as_secs_f64() / began.elapsed().as_secs_f64());
            let rss_mib = pipeline::resident_mib();
            pipeline.shutdown().await;
            Ok(RunOutcome { result, worker_cpu_cores, rss_mib })
        }
        Environment::Deployed { target, probes, consumers, payment_latency } => {
            let plan = plan(target.clone(), request.consumers.unwrap_or(*consumers), *payment_latency);
            let result = runner::execute(&plan, probes, stop).await;
            Ok(RunOutcome { result, worker_cpu_cores: None, rss_mib: None })
        }
    }
}

/// The consumers' mean service time (receipt to settlement) over the worker's last minute, ms: the worker sums
/// every settled order's processing time and count, and heartbeats their ratio into the ledger's registry.
/// That is an exact mean of every order, where the `/stats` histogram only gives percentiles, and
/// consumers × drain ÷ orders would only restate the measured drain.
async fn mean_service_time_ms(ledger: &EmbeddedLedger) -> Option<f64> {
    let fleet = ledger.fleet(Utc::now()).await.ok()?;
    let (sum, settled) = fleet
        .iter()
        .filter_map(|entry| Some((entry.service_time? * entry.rate, entry.rate)))
        .fold((0.0, 0.0), |(sum, weight), (value, rate)| (sum + value, weight + rate));
    (settled > 0.0).then(|| sum / settled * 1000.0)
}

/// Asks the receiver for random unsettled orders' `eta` while a queue drains.
struct EtaSampler {
    ledger: Arc<EmbeddedLedger>,
    receiver: SocketAddr,
    /// When the drain begins: the load's length on the run's clock.
    after: Duration,
    every: Duration,
    stop: CancellationToken,
}

/// What the sampler collected: (order, asked at, eta) per estimate, and the lookups that gave none.
struct EtaSamples {
    estimates: Vec<(uuid::Uuid, DateTime<Utc>, DateTime<Utc>)>,
    null_etas: usize,
}

impl EtaSampler {
    async fn run(self) -> EtaSamples {
        let mut samples = EtaSamples { estimates: Vec::new(), null_etas: 0 };
        tokio::select! {
            _ = tokio::time::sleep(self.after) => {}
            _ = self.stop.cancelled() => return samples,
        }
        // The backlog when the load ended, oldest first: the queue is worked roughly in that order, so orders
        // before the last one found settled are skipped.
        let mut backlog: Vec<_> = self
            .ledger
            .records()
            .into_iter()
            .filter(|record| matches!(record.status, OrderStatus::Pending | OrderStatus::Processing))
            .map(|record| (record.accepted_at, record.order_id))
            .collect();
        backlog.sort();
        let target = Target::local(self.receiver);
        let mut connection = Connection::new(self.receiver);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut first_unsettled = 0;
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while first_unsettled < backlog.len() {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.stop.cancelled() => break,
            }
            // A few tries per tick: a pick may have settled since.
            for _ in 0..4 {
                if first_unsettled >= backlog.len() {
                    break;
                }
                let index = rng.usize(first_unsettled..backlog.len());
                let order_id = backlog[index].1;
                let request =
                    target.request(Method::GET, &format!("/orders/{order_id}"), Vec::new()).build(0);
                let asked_at = Utc::now();
                let Ok((status, body)) = connection.fetch(request, Duration::from_secs(2)).await else {
                    break;
                };
                let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&body) else { break };
                if !status.is_success() {
                    break;
                }
                let pending = matches!(answer["status"].as_str(), Some("pending" | "processing"));
                if !pending {
                    first_unsettled = first_unsettled.max(index + 1);
                    continue;
                }
                match answer["eta"].as_str().and_then(|eta| DateTime::parse_from_rfc3339(eta).ok()) {
                    Some(eta) => samples.estimates.push((order_id, asked_at, eta.with_timezone(&Utc))),
                    None => samples.null_etas += 1,
                }
                break;
            }
        }
        samples
    }
}

impl EtaSamples {
    /// Each estimate against the time its order settled (the ledger record's last write).
    fn report(&self, ledger: &EmbeddedLedger) -> EtaReport {
        let settled: HashMap<uuid::Uuid, DateTime<Utc>> = ledger
            .records()
            .into_iter()
            .filter(|record| matches!(record.status, OrderStatus::Completed | OrderStatus::Declined))
            .map(|record| (record.order_id, record.updated_at))
            .collect();
        let mut errors = Vec::new();
        let mut unsettled = 0;
        for (order_id, asked_at, eta) in &self.estimates {
            let Some(&actual) = settled.get(order_id) else {
                unsettled += 1;
                continue;
            };
            let wait = (actual - *asked_at).as_seconds_f64();
            if wait > 0.0 {
                errors.push(((*eta - actual).as_seconds_f64() / wait, wait));
            }
        }
        EtaReport::of(&errors, self.null_etas, unsettled)
    }
}
