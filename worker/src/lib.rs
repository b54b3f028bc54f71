//! The worker: takes orders off the queue and through the payment gate, N at a time.
//!
//! ```text
//!             reserve k ≤ 10 free slots          one task per message
//!  pollers ────────────────────────▶ receive(k) ───────────────────▶ slot: parse ─▶ dedupe ─▶ pay (heartbeat)
//!  (a few, 20 s long polls)                                                  │
//!      settled ─▶ delete (batched ≤ 10) · transient ─▶ visibility backoff · poison ─▶ DLQ with reason
//! ```
//!
//! Polling is decoupled from processing, as in Spring Cloud AWS SQS and Shoryuken: a few long-polling
//! receivers feed `consumers` processing slots and never receive more messages than there are free slots, so
//! no message sits received-but-waiting while its visibility timeout runs out.
//!
//! Delivery is at least once, and the worker is built for it: settled orders are deleted, everything else
//! returns to the queue (after a backoff, or at once at shutdown), and poison goes to the dead-letter queue
//! with its reason. No order is charged twice, across any number of worker processes and crashes: each order
//! is claimed in the [order ledger](ledger) before payment (a lease and a fencing token), the payment gateway
//! records its one charge per order there, and the settle is conditional on the claim's token. A bounded
//! window of recently settled orders is a cheap first filter in front of the ledger, nothing more.
//!
//! Entry points: [`Worker::new`], [`Worker::handle`], [`Worker::run`]; [`http_app`] and [`serve_http`] for the
//! operational HTTP port.

mod batcher;
mod breaker;
mod config;
mod dedupe;
mod http;
mod poller;
mod process;
mod registry;
mod slots;
mod spawner;
mod stats;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus::Consumer;
use ledger::Ledger;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use breaker::{BreakerConfig, BreakerState, BreakerStats};
pub use config::{
    AUTO_POLLERS_MAX, Backoff, BreakerArgs, GateArgs, GateMode, GateModeArg, WorkerArgs, WorkerConfig,
    default_worker_id,
};
pub use http::{http_app, serve_http};
pub use stats::{LatencySummary, METRIC_BUCKETS, WorkerStats, metric_names};

use crate::batcher::{BatchSettings, Batcher};
use crate::breaker::Breaker;
use crate::dedupe::RecentOrders;
use crate::process::Processor;
use crate::slots::Slots;
use crate::spawner::Spawner;
use crate::stats::Stats;

/// After the shutdown deadline, how long releasing the unfinished messages may take.
const RELEASE_GRACE: Duration = Duration::from_secs(3);

/// How long the final flush of deletes and visibility changes may take: an entry's retries pause 1.5 s in all,
/// plus the calls themselves.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

impl WorkerConfig {
    /// The longest a shutdown can take, from the signal to [`Worker::run`] returning, whatever the broker does:
    /// the drain deadline, then the release of unfinished messages, then the final flush of deletes and
    /// visibility changes, each bounded. A container's stop timeout must exceed it (`terraform/` derives it).
    pub fn worst_case_shutdown(&self) -> Duration {
        self.shutdown_deadline + RELEASE_GRACE + FLUSH_GRACE
    }
}

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration would make the worker misbehave.
    #[error("invalid worker configuration: {0}")]
    InvalidConfig(String),
}

/// State shared by the running worker and its handles.
pub(crate) struct Shared {
    pub(crate) config: WorkerConfig,
    pub(crate) slots: Arc<Slots>,
    pub(crate) stats: Stats,
    pub(crate) recent: RecentOrders,
    pub(crate) draining: AtomicBool,
    pub(crate) ledger: Arc<dyn Ledger>,
    /// What the settle path records for the worker registry's entry.
    pub(crate) progress: registry::Progress,
    pub(crate) breaker: Arc<Breaker>,
    /// A test's crash point: processing that reaches it stops there for good.
    pub(crate) freeze: std::sync::OnceLock<(CrashPoint, Arc<Notify>)>,
}

/// A point in processing one order where a test can freeze the worker and then kill it, to check that a
/// crash there neither loses the order nor charges it twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The order is claimed; the gateway has not been called.
    BeforeCharge,
    /// The gateway charged and recorded the payment; the status is not written.
    AfterCharge,
    /// The status is written; the message is not deleted.
    AfterSettle,
}

/// A worker, built and ready to [`run`](Worker::run).
pub struct Worker {
    shared: Arc<Shared>,
    consumer: Arc<dyn Consumer>,
}

/// A cheap, cloneable view of a worker, for HTTP handlers, tests and the load tool.
#[derive(Clone)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
}

impl Worker {
    /// Builds a worker consuming from `consumer` and claiming orders in `ledger`: its slots and payment gates
    /// (the gates' outage windows count from here). Install a `metrics` recorder before this if Prometheus
    /// metrics are wanted.
    pub fn new(config: WorkerConfig, consumer: Arc<dyn Consumer>, ledger: Arc<dyn Ledger>) -> Self {
        let slots = Arc::new(Slots::new(config.consumers, config.gate_mode, &config.payment));
        let shared = Shared {
            recent: RecentOrders::new(config.dedupe_capacity),
            slots,
            stats: Stats::new(),
            draining: AtomicBool::new(false),
            ledger,
            progress: registry::Progress::default(),
            breaker: Breaker::new(config.breaker.clone()),
            freeze: std::sync::OnceLock::new(),
            config,
        };
        Self { shared: Arc::new(shared), consumer }
    }

    /// A handle for stats and control, valid before, during and after [`run`](Worker::run).
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle { shared: Arc::clone(&self.shared) }
    }

    /// Consumes until `shutdown` completes, then shuts down gracefully: stops polling at once (cancelling
    /// pending long polls), lets in-flight payments finish until the shutdown deadline, releases the messages
    /// of those still unfinished (visibility 0, so another worker takes them at once), flushes deletes and
    /// visibility changes, and returns. (On SQS, a long poll cancelled while its answer is on the wire may
    /// already have taken messages; they are not lost, but return only after their visibility timeout.)
    ///
    /// Dropping this future instead (an aborted task) is a crash in miniature: pollers and batchers stop where
    /// they are, payments are dropped unfinished, nothing more is deleted or released (beyond a step already
    /// under way, as with a real crash), and the queue redelivers the unfinished messages after their
    /// visibility timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), WorkerError> {
        let Worker { shared, consumer } = self;
        let config = &shared.config;
        config.validate().map_err(WorkerError::InvalidConfig)?;

        let kill = CancellationToken::new();
        let _kill_on_drop = kill.clone().drop_guard();
        let background = Spawner::killable(kill.clone());
        let processing = Spawner::self_stopping();
        let polling = Spawner::killable(kill.clone());

        let settings = BatchSettings::new(config.batch_flush_interval);
        let stats = &shared.stats;
        let (deleter, deleting) =
            Batcher::new(Arc::clone(&consumer), settings, stats.delete_failures.clone());
        let (visibility, changing) =
            Batcher::new(Arc::clone(&consumer), settings, stats.visibility_failures.clone());
        background.spawn(deleting);
        background.spawn(changing);
        let stop_sampling = CancellationToken::new();
        background.spawn(sample_rate(Arc::clone(&shared), stop_sampling.clone()));
        // The registry entry's `breaker` field: what to call for the breaker's state (`None`: not reported).
        background.spawn(registry::heartbeat(Arc::clone(&shared), stop_sampling.clone()));

        let processor = Arc::new(Processor {
            shared: Arc::clone(&shared),
            consumer,
            deleter,
            visibility,
            abandon: kill.child_token(),
            kill: kill.clone(),
        });
        let stop_polling = CancellationToken::new();
        let pollers = config.effective_pollers();
        for poller in 0..pollers {
            let (stop, processor, processing) =
                (stop_polling.clone(), Arc::clone(&processor), processing.clone());
            polling.spawn(async move {
                stop.run_until_cancelled(poller::poll(processor, processing, poller)).await;
            });
        }
        tracing::info!(
            consumers = config.consumers,
            gate_mode = config.gate_mode.name(),
            gate_slots = config.gate_mode.slots_per_gate(),
            pollers,
            payment_latency = ?config.payment.latency,
            "worker started"
        );

        shutdown.await;
        shared.draining.store(true, Ordering::Relaxed);
        stop_polling.cancel();
        polling.wait().await;
        tracing::info!(
            in_flight = processing.len(),
            deadline = ?config.shutdown_deadline,
            "shutting down: polling stopped, letting in-flight payments finish"
        );
        if tokio::time::timeout(config.shutdown_deadline, processing.wait()).await.is_err() {
            tracing::warn!(
                unfinished = processing.len(),
                "shutdown deadline passed; releasing unfinished messages"
            );
            processor.abandon.cancel();
            if tokio::time::timeout(RELEASE_GRACE, processing.wait()).await.is_err() {
                tracing::error!(
                    stuck = processing.len(),
                    "some messages could not be released; they return after their visibility timeout"
                );
            }
        }
        // The last batcher senders go with the processor: the batchers flush what is left and stop.
        drop(processor);
        stop_sampling.cancel();
        if tokio::time::timeout(FLUSH_GRACE, background.wait()).await.is_err() {
            tracing::error!("final flush of deletes and visibility changes did not finish in time");
        }
        let stats = WorkerHandle { shared: Arc::clone(&shared) }.stats();
        tracing::info!(
            received = stats.received,
            completed = stats.completed,
            declined = stats.declined,
            retried = stats.retried,
            dead_lettered = stats.dead_lettered,
            released = stats.released,
            delete_failures = stats.delete_failures,
            "worker stopped"
        );
        Ok(())
    }
}

/// Samples the settled count once a second for the processing rate.
async fn sample_rate(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stop.run_until_cancelled(async {
        loop {
            ticks.tick().await;
            shared.stats.sample_rate();
        }
    })
    .await;
}

impl WorkerHandle {
    /// A snapshot of counts, gauges and latency percentiles (the JSON of `GET /stats`).
    pub fn stats(&self) -> WorkerStats {
        let shared = &*self.shared;
        let (config, stats) = (&shared.config, &shared.stats);
        let consumers = shared.slots.capacity();
        let in_flight = stats.in_flight.load(Ordering::Relaxed).min(consumers);
        WorkerStats {
            gate_mode: config.gate_mode.name().into(),
            gate_slots: config.gate_mode.slots_per_gate(),
            consumers,
            pollers: config.effective_pollers(),
            received: stats.received.get(),
            completed: stats.completed.get(),
            declined: stats.declined.get(),
            retried: stats.retried.get(),
            dead_lettered: stats.dead_lettered.get(),
            poison: stats.poison.get(),
            duplicates: stats.duplicates.get(),
            released: stats.released.get(),
            heartbeats: stats.heartbeats.get(),
            receives: stats.receives.get(),
            poll_errors: stats.poll_errors.get(),
            delete_failures: stats.delete_failures.load(Ordering::Relaxed),
            visibility_failures: stats.visibility_failures.load(Ordering::Relaxed),
            charged: self.charged(),
            claimed_elsewhere: stats.claimed_elsewhere.get(),
            replayed_payments: stats.replayed_payments.get(),
            ledger_errors: stats.ledger_errors.get(),
            in_flight,
            free_slots: consumers - in_flight,
            utilization: if consumers == 0 { 0.0 } else { in_flight as f64 / consumers as f64 },
            processing_rate: stats.processing_rate(),
            end_to_end_ms: stats.end_to_end_summary(),
            processing_ms: stats.processing_summary(),
            draining: self.is_draining(),
            breaker: shared.breaker.stats(),
        }
    }

    /// Sets the Prometheus gauges from a fresh snapshot (done at scrape time, so the hot path never does it).
    pub(crate) fn publish_gauges(&self) {
        self.shared.stats.gauges.publish(&self.stats());
    }

    /// Orders settled (completed or declined) so far: a cheap progress counter for benchmarks and tests.
    pub fn settled(&self) -> u64 {
        self.shared.stats.settled()
    }

    /// Messages being processed right now (never more than the consumers).
    pub fn in_flight(&self) -> usize {
        self.shared.stats.in_flight.load(Ordering::Relaxed)
    }

    /// Payments charged by this worker's gates (approved or declined).
    pub fn charged(&self) -> u64 {
        self.shared.slots.gates().iter().map(orders::PaymentGate::charged).sum()
    }

    /// Turns a simulated payment-gateway outage on or off for every gate, for experiments and tests.
    pub fn set_gateway_outage(&self, on: bool) {
        self.shared.slots.gates().iter().for_each(|gate| gate.set_outage(on));
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.shared.breaker.state()
    }

    /// Whether the worker has begun shutting down.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// The worker's configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// For crash tests: the first order whose processing reaches `point` stops there for good, and the
    /// returned `Notify` is notified; abort the worker's task then to crash it there. Set once per worker.
    pub fn freeze_at(&self, point: CrashPoint) -> Arc<Notify> {
        let reached = Arc::new(Notify::new());
        let _ = self.shared.freeze.set((point, Arc::clone(&reached)));
        Arc::clone(&self.shared.freeze.get().expect("just set").1)
    }
}
