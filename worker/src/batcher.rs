//! Batching deletes and visibility changes into calls of up to ten entries.
//!
//! One DeleteMessageBatch replaces ten DeleteMessage calls: a tenth of the requests (SQS bills per request)
//! and of the round trips. An entry waits at most the flush interval for others to join it. Batch calls
//! succeed or fail per entry; entries that fail transiently are retried with backoff, and entries that still
//! fail are reported (logged, counted, and answered to whoever waits), never silently dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus::{BusError, Consumer, EntryResult, MAX_BATCH_ENTRIES, ReceiptHandle, VisibilityChange};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::task::TaskTracker;

use crate::Backoff;

/// A batch call's outcome: one result per entry, or a failure of the whole call.
pub(crate) type BatchResult = Result<Vec<EntryResult<()>>, BusError>;

/// An entry type with its batch call.
pub(crate) trait BatchEntry: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// The SQS action, for logs.
    const ACTION: &'static str;

    /// Makes the batch call.
    fn call(
        consumer: Arc<dyn Consumer>,
        batch: Vec<Self>,
    ) -> Pin<Box<dyn Future<Output = BatchResult> + Send>>;
}

impl BatchEntry for ReceiptHandle {
    const ACTION: &'static str = "DeleteMessageBatch";

    fn call(
        consumer: Arc<dyn Consumer>,
        batch: Vec<Self>,
    ) -> Pin<Box<dyn Future<Output = BatchResult> + Send>> {
        Box::pin(async move { consumer.delete_batch(batch).await })
    }
}

impl BatchEntry for VisibilityChange {
    const ACTION: &'static str = "ChangeMessageVisibilityBatch";

    fn call(
        consumer: Arc<dyn Consumer>,
        batch: Vec<Self>,
    ) -> Pin<Box<dyn Future<Output = BatchResult> + Send>> {
        Box::pin(async move { consumer.change_visibility_batch(batch).await })
    }
}

/// How a batcher flushes and retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchSettings {
    /// Longest wait of an entry for a full batch.
    pub(crate) flush_interval: Duration,
    /// Retries of a transiently failing entry, after its first attempt.
    pub(crate) retries: u32,
    /// Pause before each retry.
    pub(crate) retry_backoff: Backoff,
    /// Batch calls in flight at once: enough to keep up with thousands of messages a second when each call
    /// takes a network round trip, few enough not to flood the broker.
    pub(crate) concurrent_calls: usize,
}

impl BatchSettings {
    /// Retries add up to about three seconds, so a shutdown's final flush stays well inside ECS's stop timeout.
    pub(crate) fn new(flush_interval: Duration) -> Self {
        Self {
            flush_interval,
            retries: 4,
            retry_backoff: Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2) },
            concurrent_calls: 64,
        }
    }
}

struct Request<E> {
    entry: E,
    reply: Option<oneshot::Sender<Result<(), BusError>>>,
}

/// The sending side of a batcher: cheap to clone. The batcher flushes everything submitted and stops once
/// every clone is dropped.
pub(crate) struct Batcher<E> {
    requests: mpsc::UnboundedSender<Request<E>>,
}

impl<E> Clone for Batcher<E> {
    fn clone(&self) -> Self {
        Self { requests: self.requests.clone() }
    }
}

impl<E: BatchEntry> Batcher<E> {
    /// Starts a batcher over `consumer`. Returns it and the future that does the work; run that future (it
    /// ends after the last [`Batcher`] clone is dropped and every entry has been answered). `failures` counts
    /// entries that failed for good.
    pub(crate) fn new(
        consumer: Arc<dyn Consumer>,
        settings: BatchSettings,
        failures: Arc<AtomicU64>,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (requests, incoming) = mpsc::unbounded_channel();
        (Self { requests }, flush_loop(incoming, consumer, settings, failures))
    }

    /// Queues an entry; its outcome is logged and counted by the batcher.
    pub(crate) fn submit(&self, entry: E) {
        self.send(Request { entry, reply: None });
    }

    /// Queues an entry and waits for its outcome.
    pub(crate) async fn submit_and_wait(&self, entry: E) -> Result<(), BusError> {
        let (reply, outcome) = oneshot::channel();
        self.send(Request { entry, reply: Some(reply) });
        outcome.await.unwrap_or_else(|_| Err(stopped()))
    }

    fn send(&self, request: Request<E>) {
        if let Err(mpsc::error::SendError(request)) = self.requests.send(request) {
            // Only possible when the worker was killed mid-flight: nothing is lost, the message returns
            // after its visibility timeout.
            tracing::warn!(action = E::ACTION, entry = ?request.entry, "batcher stopped; entry not sent");
            if let Some(reply) = request.reply {
                let _ = reply.send(Err(stopped()));
            }
        }
    }
}

fn stopped() -> BusError {
    BusError::Transient { code: "WorkerStopping".into(), message: "the batcher has stopped".into() }
}

async fn flush_loop<E: BatchEntry>(
    mut incoming: mpsc::UnboundedReceiver<Request<E>>,
    consumer: Arc<dyn Consumer>,
    settings: BatchSettings,
    failures: Arc<AtomicU64>,
) {
    let calls = TaskTracker::new();
    let call_slots = Arc::new(Semaphore::new(settings.concurrent_calls));
    let mut batch = Vec::with_capacity(MAX_BATCH_ENTRIES);
    loop {
        if incoming.recv_many(&mut batch, MAX_BATCH_ENTRIES).await == 0 {
            break; // every sender is gone and everything submitted has been taken
        }
        let flush_at = Instant::now() + settings.flush_interval;
        while batch.len() < MAX_BATCH_ENTRIES {
            let room = MAX_BATCH_ENTRIES - batch.len();
            tokio::select! {
                received = incoming.recv_many(&mut batch, room) => if received == 0 { break },
                () = sleep_until(flush_at) => break,
            }
        }
        let call_slot = Arc::clone(&call_slots).acquire_owned().await.expect("never closed");
        let full = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH_ENTRIES));
        let (consumer, failures) = (Arc::clone(&consumer), Arc::clone(&failures));
        calls.spawn(async move {
            send_with_retries(consumer, full, settings, &failures).await;
            drop(call_slot);
        });
    }
    calls.close();
    calls.wait().await;
}

async fn send_with_retries<E: BatchEntry>(
    consumer: Arc<dyn Consumer>,
    mut pending: Vec<Request<E>>,
    settings: BatchSettings,
    failures: &AtomicU64,
) {
    for attempt in 0..=settings.retries {
        let last_attempt = attempt == settings.retries;
        let entries = pending.iter().map(|request| request.entry.clone()).collect();
        let results = match E::call(Arc::clone(&consumer), entries).await {
            Ok(results) if results.len() == pending.len() => results,
            Ok(results) => {
                let message = format!("{} results for {} entries", results.len(), pending.len());
                vec![Err(BusError::Transient { code: "BatchResultMismatch".into(), message }); pending.len()]
            }
            Err(error) => vec![Err(error); pending.len()],
        };
        let mut retry = Vec::new();
        for (request, result) in pending.into_iter().zip(results) {
            match result {
                Err(error) if error.is_retryable() && !last_attempt => retry.push(request),
                Err(error) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(action = E::ACTION, entry = ?request.entry, %error, "batch entry failed");
                    answer(request, Err(error));
                }
                Ok(()) => answer(request, Ok(())),
            }
        }
        if retry.is_empty() {
            return;
        }
        pending = retry;
        sleep(settings.retry_backoff.delay(attempt)).await;
    }
}

fn answer<E>(request: Request<E>, outcome: Result<(), BusError>) {
    if let Some(reply) = request.reply {
        let _ = reply.send(outcome); // the waiter may have gone (cancelled); the outcome is already logged
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bus::{OutgoingMessage, QueueStats, ReceivedMessage};

    use super::*;

    /// Records delete batches; fails the entries and calls it is told to.
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<Vec<String>>>,
        /// Handles that fail transiently on their first attempt.
        flaky: Mutex<Vec<String>>,
        /// Handles that always fail for good.
        stale: Vec<String>,
    }

    #[async_trait::async_trait]
    impl Consumer for Recorder {
        async fn receive(&self, _: usize, _: Duration) -> Result<Vec<ReceivedMessage>, BusError> {
            unreachable!()
        }
        async fn delete_batch(&self, handles: Vec<ReceiptHandle>) -> Result<Vec<EntryResult<()>>, BusError> {
            self.batches.lock().unwrap().push(handles.iter().map(|h| h.0.clone()).collect());
            let mut flaky = self.flaky.lock().unwrap();
            Ok(handles
                .into_iter()
                .map(|handle| {
                    if self.stale.contains(&handle.0) {
                        Err(BusError::ReceiptHandleInvalid(handle.0))
                    } else if let Some(at) = flaky.iter().position(|h| *h == handle.0) {
                        flaky.remove(at);
                        Err(BusError::Transient { code: "InternalError".into(), message: "try again".into() })
                    } else {
                        Ok(())
                    }
                })
                .collect())
        }
        async fn change_visibility_batch(
            &self,
            _: Vec<VisibilityChange>,
        ) -> Result<Vec<EntryResult<()>>, BusError> {
            unreachable!()
        }
        async fn send_to_dead_letter(&self, _: OutgoingMessage) -> Result<String, BusError> {
            unreachable!()
        }
        async fn stats(&self) -> Result<QueueStats, BusError> {
            unreachable!()
        }
    }

    fn handle(i: usize) -> ReceiptHandle {
        ReceiptHandle(format!("h{i}"))
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_size_and_by_timer_retries_and_reports() {
        let recorder = Arc::new(Recorder {
            flaky: Mutex::new(vec!["h3".into()]),
            stale: vec!["h7".into()],
            ..Recorder::default()
        });
        let failures = Arc::new(AtomicU64::new(0));
        let (deleter, work) = Batcher::<ReceiptHandle>::new(
            recorder.clone(),
            BatchSettings::new(Duration::from_millis(10)),
            failures.clone(),
        );
        let work = tokio::spawn(work);
        for i in 0..23 {
            deleter.submit(handle(i));
        }
        let stale = deleter.submit_and_wait(handle(7)).await;
        assert!(matches!(stale, Err(BusError::ReceiptHandleInvalid(_))), "{stale:?}");
        let started = Instant::now();
        deleter.submit_and_wait(handle(100)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(10), "a lone entry waits for the flush timer");
        drop(deleter);
        work.await.unwrap();

        let batches = recorder.batches.lock().unwrap().clone();
        assert!(batches.iter().all(|batch| (1..=10).contains(&batch.len())), "{batches:?}");
        assert_eq!(&batches[0].len(), &10, "a full batch goes at once");
        let sent: Vec<&String> = batches.iter().flatten().collect();
        assert_eq!(sent.iter().filter(|h| **h == "h3").count(), 2, "the flaky entry was retried once");
        for i in (0..23).chain([100]) {
            assert!(sent.contains(&&format!("h{i}")), "h{i} was sent");
        }
        assert_eq!(failures.load(Ordering::Relaxed), 2, "the stale handle, twice, was reported");
    }
}
