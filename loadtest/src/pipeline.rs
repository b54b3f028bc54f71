//! The whole order pipeline in one process, on the embedded bus: the receiver on a loopback port, the
//! embedded SNS topic → SQS queue (+ DLQ), the embedded order ledger they share, and the worker with its
//! consumers on a runtime of its own.
//!
//! The worker gets its own single-threaded runtime (threads named [`WORKER_THREAD_PREFIX`]`N`) so that its CPU time
//! can be measured apart from the receiver's and the generator's, and so that, like the lab's quarter-vCPU
//! task, it has one core's worth of threads at most.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bus::embedded::{EmbeddedStack, StackConfig};
use ledger::Ledger;
use ledger::embedded::EmbeddedLedger;
use metrics_exporter_prometheus::PrometheusHandle;
use orders::PaymentConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::{BreakerConfig, GateMode, Worker, WorkerConfig, WorkerHandle};

use crate::probe::{Probes, WorkerStatsSource};

/// Prefix of the worker runtime's thread names; each pipeline adds its own number (`orderflow-w3`), so a run's
/// CPU time is its own worker's even while an earlier pipeline's threads are still winding down. Linux keeps 15
/// bytes of a thread name.
pub const WORKER_THREAD_PREFIX: &str = "orderflow-w";

/// How the embedded pipeline is configured: the knobs of the experiment. `Default` is what the deployed
/// services run with when given no flags (one consumer, 3 s payments, 5 % declines, 10 s sync timeout).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Worker consumers (orders processed at once).
    pub consumers: usize,
    /// Per-consumer gates (throughput N ÷ L) or one shared gate.
    pub gate_mode: GateMode,
    /// The simulated payment processor of the sync endpoint's gate (one slot) and of the worker's gates.
    pub payment: PaymentConfig,
    /// How long the sync endpoint waits for the payment slot before answering 504.
    pub sync_timeout: Duration,
    /// Loopback port for the receiver (0: any free port).
    pub receiver_port: u16,
    /// Loopback port for the receiver's admin routes, `/stats` and `/metrics` (`None`: not served).
    pub receiver_admin_port: Option<u16>,
    /// Loopback port for the worker's `/health`, `/stats`, `/metrics` (`None`: not served).
    pub worker_port: Option<u16>,
    /// The worker's circuit breaker, in lab time.
    pub breaker: BreakerConfig,
    /// K for the queue's and the worker's own clocks: the visibility timeout, retry and poll backoffs, the
    /// breaker's waits, the worker registry's heartbeat interval and the receiver's registry reads are divided
    /// by it. 1 keeps the deployed
    /// values; time-scaled experiments set the run's time scale (order ETAs need heartbeats on the run's clock).
    pub timings_scale: f64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let worker = WorkerConfig::default();
        PipelineConfig {
            consumers: worker.consumers,
            gate_mode: worker.gate_mode,
            payment: worker.payment,
            sync_timeout: receiver::Config::default().sync_timeout,
            receiver_port: 0,
            receiver_admin_port: None,
            worker_port: None,
            breaker: worker.breaker,
            timings_scale: 1.0,
        }
    }
}

/// The Prometheus recorder of this process, with the receiver's and the worker's histogram buckets, installed
/// on first use (a process can have only one).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    service_shell::prometheus::shared(&[receiver::METRIC_BUCKETS, worker::METRIC_BUCKETS].concat())
}

/// A running embedded pipeline. Stop it with [`EmbeddedPipeline::shutdown`].
pub struct EmbeddedPipeline {
    /// The receiver's address (`http://{receiver}/orders/async`).
    pub receiver: SocketAddr,
    /// The receiver's admin address (`/stats`, `/metrics`), when served.
    pub receiver_admin: Option<SocketAddr>,
    /// The worker's HTTP address, when served.
    pub worker_http: Option<SocketAddr>,
    /// The topic, queue and DLQ.
    pub stack: EmbeddedStack,
    /// The order ledger the receiver writes and the worker claims in.
    pub ledger: Arc<EmbeddedLedger>,
    worker: Arc<Mutex<RunningWorker>>,
    worker_config: WorkerConfig,
    gateway_outage: AtomicBool,
    stop: CancellationToken,
    receiver_task: JoinHandle<std::io::Result<()>>,
    worker_runtime: tokio::runtime::Runtime,
    worker_threads: String,
}

/// The worker process of the pipeline, and the ones that crashed before it.
struct RunningWorker {
    handle: WorkerHandle,
    /// `None` once taken by shutdown.
    task: Option<JoinHandle<()>>,
    /// The crashed workers' stats as they stood when each crashed.
    crashed: Vec<worker::WorkerStats>,
}

/// The worker's configuration for a pipeline: the deployed defaults with the pipeline's gates and payment, and
/// its own clocks compressed by `timings_scale`. Extra workers on the same stack (a simulated fleet) use it too.
pub fn worker_config(config: &PipelineConfig) -> WorkerConfig {
    let defaults = WorkerConfig::default();
    let k = config.timings_scale.max(1.0);
    let scaled = |backoff: worker::Backoff| worker::Backoff {
        base: backoff.base.div_f64(k),
        max: backoff.max.div_f64(k),
    };
    WorkerConfig {
        consumers: config.consumers,
        gate_mode: config.gate_mode,
        payment: config.payment.clone(),
        shutdown_deadline: Duration::from_secs(2),
        visibility_timeout: defaults.visibility_timeout.div_f64(k),
        retry_backoff: scaled(defaults.retry_backoff),
        poll_backoff: scaled(defaults.poll_backoff),
        breaker: BreakerConfig {
            open_wait: config.breaker.open_wait.div_f64(k),
            max_open_wait: config.breaker.max_open_wait.div_f64(k),
            ..config.breaker.clone()
        },
        registry_interval: defaults.registry_interval.div_f64(k),
        ..defaults
    }
}

impl EmbeddedPipeline {
    /// Builds the stack and starts the receiver and the worker. Must be called within a tokio runtime.
    pub async fn start(config: &PipelineConfig) -> std::io::Result<EmbeddedPipeline> {
        let metrics = metrics_handle();
        let worker_config = worker_config(config);
        let stack = EmbeddedStack::new(StackConfig {
            visibility_timeout: worker_config.visibility_timeout,
            ..StackConfig::default()
        });
        let ledger = Arc::new(EmbeddedLedger::default());
        let stop = CancellationToken::new();

        let receiver_config = receiver::Config {
            sync_timeout: config.sync_timeout,
            payment: config.payment.clone(),
            payment_slots: 1,
            shutdown_deadline: Duration::from_secs(2),
            // ETAs read the worker registry on the run's clock, as the workers heartbeat on it.
            fleet_refresh: receiver::Config::default().fleet_refresh.div_f64(config.timings_scale.max(1.0)),
            ..receiver::Config::default()
        };
        let listener = TcpListener::bind(("127.0.0.1", config.receiver_port)).await?;
        let receiver = listener.local_addr()?;
        let state = receiver::AppState::new(
            receiver_config,
            Arc::new(stack.topic.clone()),
            Arc::clone(&ledger) as Arc<dyn ledger::Store>,
            metrics.clone(),
        );
        let receiver_admin = match config.receiver_admin_port {
            Some(port) => {
                let admin_listener = TcpListener::bind(("127.0.0.1", port)).await?;
                let address = admin_listener.local_addr()?;
                let (state, stop) = (state.clone(), stop.clone());
                tokio::spawn(async move {
                    if let Err(error) =
                        receiver::serve_admin(admin_listener, state, stop.cancelled_owned()).await
                    {
                        tracing::error!(%error, "receiver admin server failed");
                    }
                });
                Some(address)
            }
            None => None,
        };
        let dashboard_state = state.clone();
        let receiver_task = tokio::spawn(receiver::run(listener, state, stop.clone().cancelled_owned()));

        static PIPELINES: AtomicU32 = AtomicU32::new(0);
        let worker_threads = format!("{WORKER_THREAD_PREFIX}{}", PIPELINES.fetch_add(1, Ordering::Relaxed));
        let worker_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(worker_threads.as_str())
            .enable_all()
            .build()?;
        let worker = {
            let _inside = worker_runtime.enter();
            Worker::new(
                worker_config.clone(),
                Arc::new(stack.queue.clone()),
                Arc::clone(&ledger) as Arc<dyn Ledger>,
            )
        };
        let handle = worker.handle();
        let worker_http = match config.worker_port {
            Some(port) => {
                let listener = TcpListener::bind(("127.0.0.1", port)).await?;
                let addr = listener.local_addr()?;
                let (handle, metrics, stop) = (handle.clone(), metrics.clone(), stop.clone());
                tokio::spawn(async move {
                    if let Err(error) =
                        worker::serve_http(listener, handle, metrics, stop.cancelled_owned()).await
                    {
                        tracing::error!(%error, "worker HTTP server failed");
                    }
                });
                Some(addr)
            }
            None => None,
        };
        let task = spawn_worker(&worker_runtime, worker, &stop);
        let worker = Arc::new(Mutex::new(RunningWorker { handle, task: Some(task), crashed: Vec::new() }));
        let running = Arc::clone(&worker);
        crate::dashboard::live::publish(crate::dashboard::live::LivePipeline {
            id: 0,
            receiver,
            receiver_state: dashboard_state,
            stack: stack.clone(),
            ledger: Arc::clone(&ledger),
            worker: Arc::new(move || lock(&running).handle.clone()),
            stopped: stop.clone(),
        });
        Ok(EmbeddedPipeline {
            receiver,
            receiver_admin,
            worker_http,
            stack,
            ledger,
            worker,
            worker_config,
            gateway_outage: AtomicBool::new(false),
            stop,
            receiver_task,
            worker_runtime,
            worker_threads,
        })
    }

    /// Crashes the worker, as a killed process would (its task is aborted: no graceful stop, no release of its
    /// messages), and starts a new one on the same queue and ledger, in the gateway state of its predecessor.
    /// Its HTTP port (if served) keeps showing the crashed one.
    pub fn crash_worker(&self) {
        let worker = {
            let _inside = self.worker_runtime.enter();
            Worker::new(
                WorkerConfig { worker_id: worker::default_worker_id(), ..self.worker_config.clone() },
                Arc::new(self.stack.queue.clone()),
                Arc::clone(&self.ledger) as Arc<dyn Ledger>,
            )
        };
        let handle = worker.handle();
        handle.set_gateway_outage(self.gateway_outage.load(Ordering::Relaxed));
        let task = spawn_worker(&self.worker_runtime, worker, &self.stop);
        let mut running = lock(&self.worker);
        if let Some(crashing) = running.task.replace(task) {
            crashing.abort();
        }
        let crashed = std::mem::replace(&mut running.handle, handle);
        running.crashed.push(crashed.stats());
    }

    /// Turns the simulated payment-gateway outage on or off, for this worker and any that replaces it.
    pub fn set_gateway_outage(&self, on: bool) {
        self.gateway_outage.store(on, Ordering::Relaxed);
        lock(&self.worker).handle.set_gateway_outage(on);
    }

    /// The stats of every worker this pipeline ran: the crashed ones as they stood at their crash, first, and
    /// the running one's now, last.
    pub fn worker_history(&self) -> Vec<worker::WorkerStats> {
        let running = lock(&self.worker);
        running.crashed.iter().cloned().chain([running.handle.stats()]).collect()
    }

    /// CPU time used so far by this pipeline's worker runtime (Linux; `None` elsewhere or when unreadable).
    pub fn worker_cpu_time(&self) -> Option<Duration> {
        thread_cpu_time(&self.worker_threads)
    }

    /// The running worker's handle (stats, outage switch).
    pub fn worker(&self) -> WorkerHandle {
        lock(&self.worker).handle.clone()
    }

    /// Probes reading the embedded queue and the in-process worker (whichever is running).
    pub fn probes(&self) -> Probes {
        Probes {
            queue: Some(Arc::new(self.stack.queue.clone())),
            worker: Some(Arc::new(InProcessWorker(Arc::clone(&self.worker)))),
        }
    }

    /// Stops the receiver and the worker gracefully (each within its shutdown deadline) and waits for both.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Ok(Err(error)) = self.receiver_task.await {
            tracing::warn!(%error, "receiver stopped with an error");
        }
        let task = lock(&self.worker).task.take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.worker_runtime.shutdown_background();
    }
}

/// Runs `worker` on the pipeline's worker runtime until `stop`.
fn spawn_worker(
    runtime: &tokio::runtime::Runtime,
    worker: Worker,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let stop = stop.clone();
    runtime.spawn(async move {
        if let Err(error) = worker.run(stop.cancelled_owned()).await {
            tracing::error!(%error, "worker stopped with an error");
        }
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running worker's stats straight from its handle, as the same JSON `/stats` serves.
struct InProcessWorker(Arc<Mutex<RunningWorker>>);

#[async_trait]
impl WorkerStatsSource for InProcessWorker {
    async fn stats(&self) -> Option<serde_json::Value> {
        let handle = lock(&self.0).handle.clone();
        serde_json::to_value(handle.stats()).ok()
    }
}

/// CPU time (user + system) of this process's threads named `name`, from `/proc`.
pub(crate) fn thread_cpu_time(name: &str) -> Option<Duration> {
    // Linux reports thread times in clock ticks of USER_HZ, which is 100 on every Linux ABI.
    const TICKS_PER_SECOND: u64 = 100;
    let mut ticks = 0u64;
    let mut found = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else { continue };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        // Fields after the parenthesised name: state is field 3, utime 14 and stime 15 (1-based).
        let after_name = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let user: u64 = fields.get(11)?.parse().ok()?;
        let system: u64 = fields.get(12)?.parse().ok()?;
        ticks += user + system;
        found = true;
    }
    found.then(|| Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// Resident memory of this process now, in MiB (Linux; `None` elsewhere).
pub fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
