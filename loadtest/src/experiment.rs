//! Where an experiment's runs go — a fresh embedded pipeline per run, or a deployed stack — and how one run of
//! a lab scenario is set up on a time scale.

use std::time::{Duration, Instant};

use hyper::Method;
use loadgen::LoadModel;
use loadgen::client::Target;
use loadgen::idempotency::RetryPolicy;
use orders::PaymentConfig;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{self, EmbeddedPipeline, PipelineConfig};
use crate::probe::Probes;
use crate::results::RunResult;
use crate::runner::{self, DrainPlan, RunPlan};
use crate::scenario::{TimeScale, order_bodies};

/// How many different order bodies a run rotates through.
const ORDER_BODIES: usize = 256;

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
            let result = runner::execute(&plan, &pipeline.probes(), stop).await;
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
