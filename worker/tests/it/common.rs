//! Helpers shared by the worker's integration tests: orders, an embedded stack, a running worker, and a
//! consumer wrapper that records every port call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bus::embedded::{EmbeddedQueue, EmbeddedStack, StackConfig};
use bus::{
    BusError, Consumer, EntryResult, MessageId, OutgoingMessage, QueueStats, ReceiptHandle, ReceivedMessage,
    VisibilityChange,
};
use chrono::Utc;
use ledger::Ledger;
use ledger::embedded::EmbeddedLedger;
use orders::{Order, OrderRequest, PaymentConfig, WireMessage};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;
use worker::{Worker, WorkerConfig, WorkerError, WorkerHandle};

/// A fresh, valid order message body and its order id.
pub fn order_body() -> (Uuid, String) {
    let request = OrderRequest::from_json(
        br#"{"customer_id": 42, "items": [{"product_id": "PROD-001", "quantity": 2, "price": 49.99}]}"#,
    )
    .expect("valid request");
    let order = Order::new(request);
    (order.order_id, WireMessage::new(order, Utc::now()).to_json())
}

/// Sends `count` fresh orders to the queue; returns their ids.
pub fn send_orders(queue: &EmbeddedQueue, count: usize) -> Vec<Uuid> {
    (0..count)
        .map(|_| {
            let (id, body) = order_body();
            queue.send(OutgoingMessage::new(body)).expect("send");
            id
        })
        .collect()
}

/// The production stack (topic -> queue -> DLQ) with the given visibility timeout and redrive count.
pub fn stack(visibility: Duration, max_receive_count: u32) -> EmbeddedStack {
    EmbeddedStack::new(StackConfig {
        visibility_timeout: visibility,
        max_receive_count,
        ..StackConfig::default()
    })
}

/// A worker config: `consumers` per-consumer gates of `latency`, no declines (so every settled order counts
/// as completed), visibility matching `stack`, and a breaker that starts closed (these tests count receives
/// and slots from the first batch; a probing start is the breaker's own test).
pub fn config(consumers: usize, latency: Duration, visibility: Duration) -> WorkerConfig {
    let defaults = WorkerConfig::default();
    WorkerConfig {
        consumers,
        payment: PaymentConfig { latency, decline_rate: 0.0, ..PaymentConfig::default() },
        visibility_timeout: visibility,
        breaker: worker::BreakerConfig { start_probing: false, ..defaults.breaker.clone() },
        ..defaults
    }
}

/// A worker running in its own task.
pub struct Running {
    pub handle: WorkerHandle,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), WorkerError>>,
}

impl Running {
    /// A worker with a ledger of its own (as if it were the only worker process).
    pub fn start(config: WorkerConfig, consumer: Arc<dyn Consumer>) -> Self {
        Self::start_with_ledger(config, consumer, Arc::new(EmbeddedLedger::default()))
    }

    /// A worker sharing `ledger` with others (other worker processes, in miniature).
    pub fn start_with_ledger(
        config: WorkerConfig,
        consumer: Arc<dyn Consumer>,
        ledger: Arc<dyn Ledger>,
    ) -> Self {
        let worker = Worker::new(config, consumer, ledger);
        let handle = worker.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        Self { handle, stop: Some(stop), task }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("worker task").expect("worker run");
    }

    /// Kills the worker mid-flight, as a crash would: its task is aborted.
    pub async fn kill(self) {
        self.task.abort();
        let outcome = self.task.await;
        assert!(outcome.is_err_and(|error| error.is_cancelled()), "the worker was aborted");
    }
}

/// Polls `condition` every 10 ms (of tokio time) until it holds, failing the test after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < give_up, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Takes every visible message off a queue (e.g. to inspect a DLQ).
pub async fn drain(queue: &EmbeddedQueue) -> Vec<ReceivedMessage> {
    let mut all = Vec::new();
    loop {
        let batch = queue.receive(10, Duration::ZERO).await.expect("receive");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// One port call, as [`Observed`] saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Receive { asked: usize, got: usize },
    Delete(ReceiptHandle),
    ChangeVisibility(ReceiptHandle, Duration),
    DeadLetter,
    Requeue(Duration),
}

/// A consumer that forwards to an embedded queue, records every call (with its tokio time), and can fail
/// deletes on demand.
pub struct Observed {
    pub inner: EmbeddedQueue,
    pub calls: Mutex<Vec<(Instant, Call)>>,
    /// While set, every delete entry fails with this error.
    pub failing_deletes: Mutex<Option<BusError>>,
    /// While set, every visibility change entry fails with this error.
    pub failing_extensions: Mutex<Option<BusError>>,
    /// While set, a visibility change call never answers.
    pub stalled_extensions: std::sync::atomic::AtomicBool,
}

impl Observed {
    pub fn new(inner: EmbeddedQueue) -> Arc<Self> {
        Arc::new(Self {
            inner,
            calls: Mutex::new(Vec::new()),
            failing_deletes: Mutex::new(None),
            failing_extensions: Mutex::new(None),
            stalled_extensions: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn calls(&self) -> Vec<(Instant, Call)> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push((Instant::now(), call));
    }
}

#[async_trait]
impl Consumer for Observed {
    async fn receive(&self, max_messages: usize, wait: Duration) -> Result<Vec<ReceivedMessage>, BusError> {
        let received = self.inner.receive(max_messages, wait).await;
        let got = received.as_ref().map_or(0, Vec::len);
        self.record(Call::Receive { asked: max_messages, got });
        received
    }

    async fn delete_batch(&self, handles: Vec<ReceiptHandle>) -> Result<Vec<EntryResult<()>>, BusError> {
        for handle in &handles {
            self.record(Call::Delete(handle.clone()));
        }
        let failing = self.failing_deletes.lock().unwrap().clone();
        match failing {
            Some(error) => Ok(vec![Err(error); handles.len()]),
            None => self.inner.delete_batch(handles).await,
        }
    }

    async fn change_visibility_batch(
        &self,
        changes: Vec<VisibilityChange>,
    ) -> Result<Vec<EntryResult<()>>, BusError> {
        for change in &changes {
            self.record(Call::ChangeVisibility(change.receipt_handle.clone(), change.timeout));
        }
        if self.stalled_extensions.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let failing = self.failing_extensions.lock().unwrap().clone();
        match failing {
            Some(error) => Ok(vec![Err(error); changes.len()]),
            None => self.inner.change_visibility_batch(changes).await,
        }
    }

    async fn send_to_dead_letter(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
        self.record(Call::DeadLetter);
        self.inner.send_to_dead_letter(message).await
    }

    async fn stats(&self) -> Result<QueueStats, BusError> {
        self.inner.stats().await
    }

    async fn requeue(&self, message: OutgoingMessage, delay: Duration) -> Result<MessageId, BusError> {
        self.record(Call::Requeue(delay));
        self.inner.requeue(message, delay).await
    }
}
