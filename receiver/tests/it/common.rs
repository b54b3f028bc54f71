//! Shared by the integration tests: a receiver on a free port (with an embedded ledger), a client, order
//! bodies, a scriptable publisher, and an embedded ledger behind hooks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus::{BusError, EntryResult, MessageId, OutgoingMessage, Publisher};
use chrono::{DateTime, Utc};
use ledger::embedded::EmbeddedLedger;
use ledger::idempotency::{IdempotencyKeys, KeyBegin, KeyRequest, StoredResponse};
use ledger::registry::{WorkerEntry, WorkerRegistry};
use ledger::{
    ChargeRecord, Claim, ClaimRequest, Ledger, LedgerError, NewOrder, OrderRecord, PaymentRecord, Settle,
    Settlement, Store,
};
use receiver::{AppState, Config};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A receiver serving on 127.0.0.1 at a free port.
pub struct TestServer {
    pub address: SocketAddr,
    /// The admin port: `/stats`, `/metrics`.
    pub admin_address: SocketAddr,
    pub state: AppState,
    /// The records of the receiver's ledger, to look at or make fail.
    pub ledger: Arc<EmbeddedLedger>,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// With a fresh embedded ledger.
    pub async fn start(config: Config, publisher: Arc<dyn Publisher>) -> Self {
        let ledger = Arc::new(EmbeddedLedger::default());
        Self::start_with_ledger(config, publisher, ledger.clone(), ledger).await
    }

    /// The receiver talks to `port`, which keeps its records in `ledger` (the same ledger, or a wrapper).
    pub async fn start_with_ledger(
        config: Config,
        publisher: Arc<dyn Publisher>,
        ledger: Arc<EmbeddedLedger>,
        port: Arc<dyn Store>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let address = listener.local_addr().unwrap();
        let state = AppState::new(config, publisher, port, None);
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let admin_address = admin_listener.local_addr().unwrap();
        // Served until the test's runtime ends.
        tokio::spawn(receiver::serve_admin(admin_listener, state.clone(), std::future::pending()));
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(receiver::run(listener, state.clone(), async move {
            let _ = signal.await;
        }));
        Self { address, admin_address, state, ledger, shutdown: Some(shutdown), server }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Sends the shutdown signal (as SIGTERM would in the binary).
    pub fn signal_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// GETs `path` from the admin port.
    pub async fn admin_get(&self, client: &reqwest::Client, path: &str) -> Answer {
        Answer::read(
            client.get(format!("http://{}{path}", self.admin_address)).send().await.expect("answers"),
        )
        .await
    }

    pub async fn get(&self, client: &reqwest::Client, path: &str) -> Answer {
        Answer::read(client.get(self.url(path)).send().await.expect("the receiver answers")).await
    }

    pub async fn post_order(&self, client: &reqwest::Client, endpoint: &str, body: &str) -> Answer {
        let response = client
            .post(self.url(endpoint))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("the receiver answers");
        Answer::read(response).await
    }
}

/// A response, read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    pub allow: Option<String>,
    pub request_id: String,
    pub json: serde_json::Value,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Self {
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        let content_type = header("content-type");
        let retry_after = header("retry-after");
        let allow = header("allow");
        // Every answer, whatever its status, names its request.
        let request_id = header("x-request-id").expect("every answer carries an x-request-id");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
        Self { status, content_type, retry_after, allow, request_id, json }
    }

    /// `error.code` of an error answer, checking the error shape on the way.
    pub fn error_code(&self) -> &str {
        let error = &self.json["error"];
        assert!(error["message"].is_string(), "error without a message: {}", self.json);
        error["code"].as_str().unwrap_or_else(|| panic!("not the error shape: {}", self.json))
    }
}

/// A client that opens a fresh connection per request (no idle pool), so a paused clock never ages an idle
/// keep-alive connection into a server-side timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

/// A valid order body for `customer_id`: 2 × 49.99 + 1 × 0.10 = 100.08.
pub fn order(customer_id: u64) -> String {
    format!(
        r#"{{"customer_id": {customer_id}, "items": [
            {{"product_id": "PROD-001", "quantity": 2, "price": 49.99}},
            {{"product_id": "PROD-002", "quantity": 1, "price": 0.10}}]}}"#
    )
}

/// Waits (polling, on whatever clock the test runs) until `condition` holds, failing after `attempts` tries.
pub async fn eventually(what: &str, attempts: usize, mut condition: impl FnMut() -> bool) {
    for _ in 0..attempts {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

/// A publisher whose calls can be held and made to fail for chosen messages; it records every
/// call's messages.
pub struct ScriptedPublisher {
    /// Calls wait until this is true.
    open: watch::Sender<bool>,
    fails: fn(&OutgoingMessage) -> bool,
    calls: Mutex<Vec<Vec<OutgoingMessage>>>,
    started: AtomicUsize,
    /// `publish_batch` calls with a single message (the batcher should use `publish` for those).
    lone_batches: AtomicUsize,
    ids: AtomicU64,
}

impl ScriptedPublisher {
    pub fn new() -> Self {
        Self {
            open: watch::Sender::new(true),
            fails: |_| false,
            calls: Mutex::new(Vec::new()),
            started: AtomicUsize::new(0),
            lone_batches: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
        }
    }

    /// Messages for which `fails` is true are refused (per entry in a batch).
    pub fn failing(mut self, fails: fn(&OutgoingMessage) -> bool) -> Self {
        self.fails = fails;
        self
    }

    /// Calls wait until [`release`](Self::release).
    pub fn held(self) -> Self {
        self.open.send_replace(false);
        self
    }

    pub fn release(&self) {
        self.open.send_replace(true);
    }

    /// Calls begun so far (including held ones).
    pub fn calls_started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    /// The messages of each completed call, in completion order.
    pub fn calls(&self) -> Vec<Vec<OutgoingMessage>> {
        self.calls.lock().unwrap().clone()
    }

    pub fn lone_batches(&self) -> usize {
        self.lone_batches.load(Ordering::SeqCst)
    }

    pub fn batch_sizes(&self) -> Vec<usize> {
        self.calls().iter().map(Vec::len).collect()
    }

    async fn perform(&self, messages: Vec<OutgoingMessage>) -> Vec<EntryResult<MessageId>> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.subscribe();
        open.wait_for(|open| *open).await.expect("the publisher outlives its calls");
        let results = messages
            .iter()
            .map(|message| {
                if (self.fails)(message) {
                    Err(BusError::Transient { code: "Scripted".into(), message: "chosen to fail".into() })
                } else {
                    Ok(format!("id-{}", self.ids.fetch_add(1, Ordering::SeqCst)))
                }
            })
            .collect();
        self.calls.lock().unwrap().push(messages);
        results
    }
}

#[async_trait]
impl Publisher for ScriptedPublisher {
    async fn publish(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
        self.perform(vec![message]).await.pop().expect("one result")
    }

    async fn publish_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<MessageId>>, BusError> {
        bus::check_batch_size(messages.len())?;
        if messages.len() == 1 {
            self.lone_batches.fetch_add(1, Ordering::SeqCst);
        }
        Ok(self.perform(messages).await)
    }
}

/// The embedded ledger behind a test's hooks: counts reads of the worker registry and `abandon` calls, and can
/// fail the first few abandons. Everything else is forwarded unchanged.
pub struct HookedLedger {
    pub inner: Arc<EmbeddedLedger>,
    /// Reads of the worker registry (`fleet`).
    pub fleet_reads: AtomicU32,
    /// Calls of `abandon`, failed ones included.
    pub abandon_calls: AtomicU32,
    /// The error the next abandons fail with, and how many more fail.
    abandon_failure: Option<(LedgerError, AtomicU32)>,
}

impl HookedLedger {
    pub fn new(inner: Arc<EmbeddedLedger>) -> Self {
        Self {
            inner,
            fleet_reads: AtomicU32::new(0),
            abandon_calls: AtomicU32::new(0),
            abandon_failure: None,
        }
    }

    /// The first `failures` abandons fail with `error`.
    pub fn failing_abandons(self, error: LedgerError, failures: u32) -> Self {
        Self { abandon_failure: Some((error, AtomicU32::new(failures))), ..self }
    }
}

#[async_trait]
impl WorkerRegistry for HookedLedger {
    async fn heartbeat(&self, entry: &WorkerEntry) -> Result<(), LedgerError> {
        self.inner.registry().expect("a registry").heartbeat(entry).await
    }

    async fn fleet(&self, now: DateTime<Utc>) -> Result<Vec<WorkerEntry>, LedgerError> {
        self.fleet_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.registry().expect("a registry").fleet(now).await
    }
}

#[async_trait]
impl IdempotencyKeys for HookedLedger {
    async fn begin(&self, request: &KeyRequest) -> Result<KeyBegin, LedgerError> {
        self.inner.begin(request).await
    }

    async fn complete(
        &self,
        key: &str,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<(), LedgerError> {
        self.inner.complete(key, response, retention).await
    }

    async fn unlock(&self, key: &str) -> Result<(), LedgerError> {
        self.inner.unlock(key).await
    }

    async fn forget(&self, key: &str) -> Result<(), LedgerError> {
        self.inner.forget(key).await
    }
}

#[async_trait]
impl Ledger for HookedLedger {
    async fn create(&self, order: &NewOrder) -> Result<bool, LedgerError> {
        self.inner.create(order).await
    }

    async fn get(&self, order_id: Uuid) -> Result<Option<OrderRecord>, LedgerError> {
        self.inner.get(order_id).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, LedgerError> {
        self.inner.claim(request).await
    }

    async fn record_charge(
        &self,
        order_id: Uuid,
        payment: &PaymentRecord,
    ) -> Result<ChargeRecord, LedgerError> {
        self.inner.record_charge(order_id, payment).await
    }

    async fn settle(
        &self,
        order_id: Uuid,
        token: u32,
        worker: &str,
        settlement: &Settlement,
    ) -> Result<Settle, LedgerError> {
        self.inner.settle(order_id, token, worker, settlement).await
    }

    async fn release(&self, order_id: Uuid, token: u32, reason: &str) -> Result<bool, LedgerError> {
        self.inner.release(order_id, token, reason).await
    }

    async fn abandon(&self, order_id: Uuid, reason: &str) -> Result<bool, LedgerError> {
        self.abandon_calls.fetch_add(1, Ordering::SeqCst);
        if let Some((error, left)) = &self.abandon_failure
            && left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Err(error.clone());
        }
        self.inner.abandon(order_id, reason).await
    }

    fn registry(&self) -> Option<&dyn WorkerRegistry> {
        Some(self)
    }
}
