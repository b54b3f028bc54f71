//! The live dashboard: a web page on loopback, served by the load tool (never by the receiver), that follows
//! the pipeline through Server-Sent Events. It shows what Sidekiq's web UI, Bull Board, the RabbitMQ
//! management UI and Flower all show, in this pipeline's terms: the backlog (visible, in flight, DLQ, oldest
//! message), the rates (accepted, settled by outcome, retries; sync paid against timeouts), end-to-end latency,
//! the registered workers and the fleet against Little's law, an order lookup with its ETA, and the DLQ with a
//! redrive button (the same routes as `up`'s control API, [`crate::commands::dlq::control_router`]).
//!
//! - [`live`]: the embedded pipelines of this process, which [`crate::pipeline::EmbeddedPipeline::start`]
//!   publishes, so one dashboard follows every fresh pipeline an experiment starts.
//! - `sampler`: one snapshot per tick, rates over the last second, a bounded chart history.
//! - `server`: the page (`page.html`, self-contained: no CDN, nothing fetched from the internet), the event
//!   stream, the order lookup and the DLQ routes.
//!
//! The server and the sampler run on a thread of their own (named [`THREAD_PREFIX`]`N`, with its own
//! single-threaded runtime) so the dashboard's CPU can be measured apart from what it watches
//! ([`Dashboard::cpu_time`]); the page shows it too.

pub mod live;
mod sampler;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use live::Follow;

use crate::probe::WorkerUrl;
use sampler::{DeployedProbes, Sampler, Watched};
use server::{Lookup, Shared, WatchedDeadLetters};

/// The dashboard's loopback port unless `--dashboard-port` says otherwise: beside `up`'s receiver (8080),
/// worker (8081), control API (8082) and the receiver's admin port (9090).
pub const DEFAULT_PORT: u16 = 8090;

/// How often the embedded pipeline is sampled (100 ms: ten updates a second, the most a page needs).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

/// How often a deployed stack is sampled (1 s): each sample is an SQS call, a DynamoDB read and an HTTP call.
pub const DEPLOYED_INTERVAL: Duration = Duration::from_secs(1);

/// Prefix of the dashboard thread's name; each dashboard adds its number (`orderflow-ui0`). Linux keeps 15
/// bytes of a thread name.
pub const THREAD_PREFIX: &str = "orderflow-ui";

/// How long [`Dashboard::shutdown`] waits for the server to close its connections.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// What a dashboard watches.
#[derive(Debug, Clone)]
pub enum Source {
    /// An embedded pipeline of this process.
    Embedded(Follow),
    /// A deployed stack.
    Deployed(DeployedStack),
}

/// A deployed stack's addresses; each one given lights up its panels.
#[derive(Debug, Clone, Default)]
pub struct DeployedStack {
    /// The receiver's base URL: order lookups when no table is given.
    pub target: Option<String>,
    /// The orders queue (SQS): the backlog.
    pub queue_url: Option<String>,
    /// Its dead-letter queue (SQS): the DLQ's list and redrive (with `queue_url`).
    pub dlq_url: Option<String>,
    /// The ledger's DynamoDB table: the worker registry, and order lookups with their ETA.
    pub table: Option<String>,
    /// A worker's base URL: its `/stats` (settled counts, end-to-end latency).
    pub worker_url: Option<String>,
}

/// How a dashboard runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DashboardConfig {
    /// Loopback port (0: any free port).
    pub port: u16,
    /// Time between two samples.
    pub interval: Duration,
}

/// A running dashboard. Stop it with [`Dashboard::shutdown`]; dropping it stops it too, without waiting.
pub struct Dashboard {
    address: SocketAddr,
    stop: CancellationToken,
    done: Option<oneshot::Receiver<()>>,
    thread: String,
    started: Instant,
}

impl Dashboard {
    /// Binds the port (errors come back here) and starts the server and the sampler on their own thread.
    pub fn start(source: Source, config: DashboardConfig) -> std::io::Result<Dashboard> {
        static DASHBOARDS: AtomicU32 = AtomicU32::new(0);
        let listener = std::net::TcpListener::bind(("127.0.0.1", config.port))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let thread = format!("{THREAD_PREFIX}{}", DASHBOARDS.fetch_add(1, Ordering::Relaxed));
        let runtime =
            tokio::runtime::Builder::new_current_thread().thread_name(&thread).enable_all().build()?;
        let stop = CancellationToken::new();
        let (finished, done) = oneshot::channel();
        let serving = serve(listener, source, config.interval, stop.clone(), thread.clone());
        std::thread::Builder::new().name(thread.clone()).spawn(move || {
            runtime.block_on(serving);
            drop(runtime);
            let _ = finished.send(());
        })?;
        Ok(Dashboard { address, stop, done: Some(done), thread, started: Instant::now() })
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// The address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// CPU time the dashboard's thread used so far (Linux; `None` elsewhere).
    pub fn cpu_time(&self) -> Option<Duration> {
        crate::pipeline::thread_cpu_time(&self.thread)
    }

    /// Wall time since the dashboard started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the sampler, ends the event streams and waits (a few seconds at most) for the server to close.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, done).await;
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The dashboard's thread: the server and the sampler until `stop`.
async fn serve(
    listener: std::net::TcpListener,
    source: Source,
    interval: Duration,
    stop: CancellationToken,
    thread: String,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "the dashboard cannot listen");
            return;
        }
    };
    let (watched, lookup, dead_letters) = match source {
        Source::Embedded(follow) => (
            Watched::Embedded(follow),
            Lookup::Embedded(follow),
            WatchedDeadLetters { embedded: Some(follow), aws: None },
        ),
        Source::Deployed(stack) => deployed(stack).await,
    };
    let sampler = Sampler::new(watched, interval);
    let (publish, latest) = watch::channel(Arc::<str>::from("null"));
    let clients = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Shared {
        latest,
        history: sampler.history(),
        clients: Arc::clone(&clients),
        lookup,
        stop: stop.clone(),
    });
    let app = server::router(shared, Arc::new(dead_letters));
    let serving = async {
        let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        if let Err(error) = server.await {
            tracing::warn!(%error, "the dashboard's server stopped with an error");
        }
    };
    tokio::join!(sample(sampler, publish, clients, interval, stop.clone(), thread), serving);
}

/// Samples every `interval` while a page watches, once a second otherwise (the history keeps going), and
/// publishes each snapshot's JSON.
async fn sample(
    mut sampler: Sampler,
    publish: watch::Sender<Arc<str>>,
    clients: Arc<AtomicUsize>,
    interval: Duration,
    stop: CancellationToken,
    thread: String,
) {
    let per_second = (Duration::from_secs(1).as_nanos() / interval.as_nanos().max(1)).max(1);
    let idle_every = u64::try_from(per_second).unwrap_or(1);
    // The CPU figure is read from /proc every 5 s: cheap enough, and what a person can read anyway.
    let cpu_every = idle_every * 5;
    let started = Instant::now();
    let mut cpu_percent = None;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for tick in 0u64.. {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if clients.load(Ordering::Relaxed) == 0 && !tick.is_multiple_of(idle_every) {
            continue;
        }
        if tick.is_multiple_of(cpu_every) && tick > 0 {
            cpu_percent = crate::pipeline::thread_cpu_time(&thread)
                .map(|cpu| 100.0 * cpu.as_secs_f64() / started.elapsed().as_secs_f64());
        }
        let snapshot = tokio::select! {
            () = stop.cancelled() => return,
            snapshot = sampler.tick(cpu_percent) => snapshot,
        };
        match serde_json::to_string(&snapshot) {
            Ok(json) => {
                publish.send_replace(json.into());
            }
            Err(error) => tracing::warn!(%error, "a dashboard snapshot did not serialize"),
        }
    }
}

/// The probes, order lookup and DLQ of a deployed stack, from whichever addresses were given.
async fn deployed(stack: DeployedStack) -> (Watched, Lookup, WatchedDeadLetters) {
    let sdk = match stack.queue_url.is_some() || stack.table.is_some() {
        true => Some(bus::aws::config_from_env().await),
        false => None,
    };
    let queue = match (&sdk, &stack.queue_url) {
        (Some(sdk), Some(url)) => {
            Some(Arc::new(bus::aws::AwsConsumer::new(sdk, url.clone())) as Arc<dyn bus::Consumer>)
        }
        _ => None,
    };
    let ledger = match (&sdk, &stack.table) {
        (Some(sdk), Some(table)) => {
            Some(Arc::new(ledger::dynamodb::DynamoLedger::new(sdk, table.clone(), ledger::DEFAULT_RETENTION))
                as Arc<dyn ledger::Ledger>)
        }
        _ => None,
    };
    let aws = match (&sdk, &stack.queue_url, &stack.dlq_url) {
        (Some(sdk), Some(queue), Some(dlq)) => {
            Some(bus::aws::AwsDeadLetters::new(sdk, queue.clone(), dlq.clone()))
        }
        _ => None,
    };
    let worker = match &stack.worker_url {
        Some(url) => match loadgen::client::Target::resolve(url).await {
            Ok(target) => Some(Arc::new(WorkerUrl::new(&target)) as Arc<dyn crate::probe::WorkerStatsSource>),
            Err(error) => {
                tracing::warn!(%error, url, "the worker's URL does not resolve: no worker stats");
                None
            }
        },
        None => None,
    };
    let lookup = match (&ledger, &stack.target) {
        (Some(ledger), _) => Lookup::Ledger(Arc::clone(ledger)),
        (None, Some(target)) => Lookup::Forward { base: target.clone(), http: reqwest::Client::new() },
        (None, None) => Lookup::Unavailable,
    };
    let probes = DeployedProbes { target: stack.target.clone(), queue, worker, ledger };
    (Watched::Deployed(probes), lookup, WatchedDeadLetters { embedded: None, aws })
}
