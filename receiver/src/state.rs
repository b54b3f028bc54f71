//! What every request shares: the config, the micro-batcher, the order ledger, the payment gate, admission limits
//! and counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus::Publisher;
use chrono::{DateTime, Utc};
use ledger::idempotency::IdempotencyKeys;
use ledger::registry::{WorkerEntry, WorkerRegistry};
use ledger::{Ledger, OrderRecord, Store};
use metrics_exporter_prometheus::PrometheusHandle;
use orders::PaymentGate;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::Config;
use crate::batcher::{BatcherSettings, PublishBatcher};
use crate::error::ApiError;
use crate::records::{self, Operation};
use crate::request_metrics::RequestMetrics;

/// The receiver's shared state. Cheap to clone (an `Arc` inside).
#[derive(Clone, Debug)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    batcher: PublishBatcher,
    ledger: Arc<dyn Store>,
    /// Tasks marking the records of unaccepted orders failed; the shutdown waits for them.
    background: TaskTracker,
    gate: PaymentGate,
    metrics: Option<PrometheusHandle>,
    request_metrics: RequestMetrics,
    started: std::time::Instant,
    async_admission: Admission,
    sync_admission: Admission,
    counters: Counters,
    fleet: FleetCache,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("batcher", &self.batcher)
            .field("background", &self.background)
            .field("async_admission", &self.async_admission)
            .field("sync_admission", &self.sync_admission)
            .finish_non_exhaustive()
    }
}

/// The last read of the worker registry, shared by every lookup until it is
/// [`fleet_refresh`](crate::Config::fleet_refresh) old. One lookup refreshes it; the others meanwhile answer
/// from the previous read (or wait for the first).
#[derive(Default)]
struct FleetCache {
    last: std::sync::Mutex<Option<(Instant, Arc<[WorkerEntry]>)>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl FleetCache {
    /// The cached fleet while it is fresh (`stale_ok`: whatever is cached).
    /// The cached fleet while it is younger than `refresh` (`None`: whatever is cached).
    fn cached(&self, refresh: Option<Duration>) -> Option<Arc<[WorkerEntry]>> {
        let last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (read_at, fleet) = last.as_ref()?;
        refresh.is_none_or(|refresh| read_at.elapsed() < refresh).then(|| Arc::clone(fleet))
    }

    async fn fleet(
        &self,
        registry: &dyn WorkerRegistry,
        timeout: Duration,
        refresh: Duration,
    ) -> Arc<[WorkerEntry]> {
        if let Some(fresh) = self.cached(Some(refresh)) {
            return fresh;
        }
        let _refreshing = match self.refreshing.try_lock() {
            Ok(guard) => guard,
            Err(_) => match self.cached(None) {
                Some(stale) => return stale,
                None => self.refreshing.lock().await,
            },
        };
        if let Some(fresh) = self.cached(Some(refresh)) {
            return fresh;
        }
        let fleet: Arc<[WorkerEntry]> =
            match records::call(Operation::Fleet, timeout, registry.fleet(Utc::now())).await {
                Ok(fleet) => fleet.into(),
                Err(error) => {
                    // Retried after `refresh`: until then ETAs come from the previous read, if any.
                    tracing::warn!(%error, "the worker registry could not be read; ETAs use the last read");
                    self.cached(None).unwrap_or_else(|| Arc::from(Vec::new()))
                }
            };
        *self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some((Instant::now(), Arc::clone(&fleet)));
        fleet
    }
}

/// A concurrency limit that sheds instead of queueing: a request either gets a permit at once or a 503.
#[derive(Debug)]
struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Admission {
    fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self { permits: Arc::new(Semaphore::new(limit)), limit }
    }

    fn in_flight(&self) -> u64 {
        (self.limit - self.permits.available_permits()) as u64
    }
}

/// Request outcomes, counted once each.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) async_accepted: AtomicU64,
    pub(crate) async_failed: AtomicU64,
    pub(crate) async_ledger_failures: AtomicU64,
    pub(crate) async_abandon_failures: AtomicU64,
    pub(crate) async_invalid: AtomicU64,
    pub(crate) async_shed: AtomicU64,
    pub(crate) sync_completed: AtomicU64,
    pub(crate) sync_declined: AtomicU64,
    pub(crate) sync_timed_out: AtomicU64,
    pub(crate) sync_unavailable: AtomicU64,
    pub(crate) sync_invalid: AtomicU64,
    pub(crate) sync_shed: AtomicU64,
    pub(crate) sync_abandoned: AtomicU64,
}

/// Which order endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Async,
    Sync,
}

impl AppState {
    /// Builds the state and starts the micro-batcher publishing to `publisher`. Must be called within a tokio
    /// runtime. `ledger` holds one record per accepted order: written before each publish, so that
    /// `GET /orders/{id}` finds an order as soon as its 202 is sent. `metrics` is the handle of the Prometheus
    /// recorder the binary installed; `None` disables `/metrics`.
    pub fn new(
        config: Config,
        publisher: Arc<dyn Publisher>,
        ledger: Arc<dyn Store>,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let batcher = PublishBatcher::start(
            publisher,
            BatcherSettings {
                linger: config.batch_linger,
                max_in_flight: config.max_batches_in_flight,
                publish_timeout: config.publish_timeout,
                queue_capacity: config.max_async_in_flight,
            },
        );
        Self {
            shared: Arc::new(Shared {
                gate: PaymentGate::new(config.sync_gate()),
                async_admission: Admission::new(config.max_async_in_flight),
                sync_admission: Admission::new(config.max_sync_in_flight),
                batcher,
                ledger,
                background: TaskTracker::new(),
                metrics,
                request_metrics: RequestMetrics::new(),
                started: std::time::Instant::now(),
                counters: Counters::default(),
                fleet: FleetCache::default(),
                config,
            }),
        }
    }

    /// The configuration the receiver runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The micro-batcher that publishes accepted orders.
    pub(crate) fn batcher(&self) -> &PublishBatcher {
        &self.shared.batcher
    }

    /// The order ledger: written by `POST /orders/async`, read by `GET /orders/{id}`.
    pub fn ledger(&self) -> &dyn Ledger {
        &*self.shared.ledger
    }

    /// When `order` will probably be settled ([`ledger::eta::estimate`]), from the worker registry read at
    /// most once per [`fleet_refresh`](crate::Config::fleet_refresh); `None` once it is settled, or when the fleet gives no estimate. A
    /// settled order costs no registry read.
    pub(crate) async fn eta(&self, order: &OrderRecord) -> Option<DateTime<Utc>> {
        if order.is_settled() {
            return None;
        }
        let registry = self.shared.ledger.registry()?;
        let config = self.config();
        let fleet = self.shared.fleet.fleet(registry, config.ledger_timeout, config.fleet_refresh).await;
        ledger::eta::estimate(order, &fleet, Utc::now())
    }

    /// The idempotency keys of the order endpoints, in the same store.
    pub(crate) fn keys(&self) -> &dyn IdempotencyKeys {
        &*self.shared.ledger
    }

    /// Where the records of unaccepted orders are marked failed, off the request path.
    pub(crate) fn background(&self) -> &TaskTracker {
        &self.shared.background
    }

    /// Waits, until `deadline` at the latest, for the records of unaccepted orders to be marked failed, and
    /// says whether all were. Call once no request can start any more (after the server stopped).
    pub(crate) async fn finish_background(&self, deadline: Instant) -> bool {
        self.shared.background.close();
        tokio::time::timeout_at(deadline, self.shared.background.wait()).await.is_ok()
    }

    /// Counts an unaccepted order whose record could not be marked failed.
    pub(crate) fn count_abandon_failure(&self) {
        self.shared.counters.async_abandon_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("receiver_unaccepted_left_pending_total").increment(1);
    }

    /// The process-wide payment gate behind `POST /orders/sync`.
    pub fn gate(&self) -> &PaymentGate {
        &self.shared.gate
    }

    pub(crate) fn metrics(&self) -> Option<&PrometheusHandle> {
        self.shared.metrics.as_ref()
    }

    pub(crate) fn request_metrics(&self) -> &RequestMetrics {
        &self.shared.request_metrics
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Lets a request in if its endpoint is under its concurrency limit; otherwise a fast 503 with
    /// `Retry-After`. The permit is held until the response is ready (or the client goes away).
    pub(crate) fn admit(&self, endpoint: Endpoint) -> Result<OwnedSemaphorePermit, ApiError> {
        let (admission, shed) = match endpoint {
            Endpoint::Async => (&self.shared.async_admission, &self.shared.counters.async_shed),
            Endpoint::Sync => (&self.shared.sync_admission, &self.shared.counters.sync_shed),
        };
        admission.permits.clone().try_acquire_owned().map_err(|_| {
            shed.fetch_add(1, Ordering::Relaxed);
            ApiError::unavailable(
                "overloaded",
                format!(
                    "the receiver is at its limit of {} concurrent requests; retry later",
                    admission.limit
                ),
                self.shared.config.retry_after,
            )
        })
    }

    /// A snapshot of the counters, as served by `GET /stats`.
    pub fn stats(&self) -> ReceiverStats {
        let shared = &*self.shared;
        let counters = &shared.counters;
        let publish = shared.batcher.counters();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let async_in_flight = shared.async_admission.in_flight();
        let sync_in_flight = shared.sync_admission.in_flight();
        ReceiverStats {
            mode: shared.config.mode.clone(),
            uptime_seconds: shared.started.elapsed().as_secs_f64(),
            in_flight: async_in_flight + sync_in_flight,
            async_orders: AsyncStats {
                accepted: load(&counters.async_accepted),
                published: load(&publish.published),
                failed: load(&counters.async_failed),
                ledger_failures: load(&counters.async_ledger_failures),
                abandon_failures: load(&counters.async_abandon_failures),
                invalid: load(&counters.async_invalid),
                shed: load(&counters.async_shed),
                in_flight: async_in_flight,
                publish_calls: load(&publish.calls),
                publish_failures: load(&publish.failed),
                abandoned: load(&publish.abandoned),
            },
            sync_orders: SyncStats {
                completed: load(&counters.sync_completed),
                declined: load(&counters.sync_declined),
                timed_out: load(&counters.sync_timed_out),
                unavailable: load(&counters.sync_unavailable),
                invalid: load(&counters.sync_invalid),
                shed: load(&counters.sync_shed),
                abandoned: load(&counters.sync_abandoned),
                in_flight: sync_in_flight,
                gate_waiting: shared.gate.waiting() as u64,
                gate_busy: shared.gate.busy() as u64,
                gate_slots: shared.gate.slots() as u64,
            },
        }
    }
}

/// What `GET /stats` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiverStats {
    /// The bus orders are published to (`embedded` or `aws`), from [`Config::mode`].
    pub mode: String,
    /// Seconds since the state was created.
    pub uptime_seconds: f64,
    /// Order requests being handled right now, both endpoints.
    pub in_flight: u64,
    /// `POST /orders/async`.
    #[serde(rename = "async")]
    pub async_orders: AsyncStats,
    /// `POST /orders/sync`.
    #[serde(rename = "sync")]
    pub sync_orders: SyncStats,
}

/// Counters of `POST /orders/async` and its publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncStats {
    /// Answered 202: published and acknowledged.
    pub accepted: u64,
    /// Messages the broker acknowledged. Can exceed `accepted` when a client left before its answer.
    pub published: u64,
    /// Answered 503 because the publish failed or timed out (the order's record is then marked failed).
    pub failed: u64,
    /// Answered 503 with `ledger_unavailable` because the order's record could not be written (the ledger
    /// failed or timed out, or the id was taken): nothing was published.
    pub ledger_failures: u64,
    /// Orders not accepted whose record could not be marked failed, even after retries: each stays `pending`
    /// until its record expires. Logged at error level with the order id.
    pub abandon_failures: u64,
    /// Answered 400, 413, 415 or 422.
    pub invalid: u64,
    /// Answered 503 at once because the endpoint was at its concurrency limit.
    pub shed: u64,
    /// Being handled right now.
    pub in_flight: u64,
    /// Publish calls made, resends of failed entries included.
    pub publish_calls: u64,
    /// Messages the broker refused or whose call failed or timed out.
    pub publish_failures: u64,
    /// Messages dropped unsent because their client had already gone.
    pub abandoned: u64,
}

/// Counters of `POST /orders/sync` and its payment gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStats {
    /// Answered 200: paid.
    pub completed: u64,
    /// Answered 402: the payment was declined.
    pub declined: u64,
    /// Answered 504: no payment slot within the sync timeout.
    pub timed_out: u64,
    /// Answered 503: the payment gateway failed.
    pub unavailable: u64,
    /// Answered 400, 413, 415 or 422.
    pub invalid: u64,
    /// Answered 503 at once because the endpoint was at its concurrency limit.
    pub shed: u64,
    /// Never answered: the client went away first (a client timeout at or under the sync timeout does this).
    /// Its payment left the gate with it, before any decision, so nothing was charged.
    pub abandoned: u64,
    /// Being handled right now (most of them waiting for the gate).
    pub in_flight: u64,
    /// Payments waiting for a gate slot right now.
    pub gate_waiting: u64,
    /// Gate slots taking a payment right now.
    pub gate_busy: u64,
    /// Gate slots in all.
    pub gate_slots: u64,
}
