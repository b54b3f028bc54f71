//! Batching deletes and visibility changes into calls of up to ten entries.
//!
//! One DeleteMessageBatch replaces ten DeleteMessage calls: a tenth of the requests (SQS bills per request)
//! and of the round trips. An entry waits at most the flush interval for others to join it. Batch calls
//! succeed or fail per entry; entries that fail retryably are retried with backoff, and entries that still
//! fail are reported (logged, counted, and answered to whoever waits), never silently dropped.
//!
//! This batcher is the one layer that retries the worker's batch entries: the bus adapters send each entry
//! once per call (see [`bus::Publisher::publish_batch`]). Here is where a retry can be weighed: the budget
//! ([`BatchSettings`]) is set against the worker's shutdown (the final flush must end within its flush grace)
//! and against the visibility timeout (a delete or visibility change retried past it only meets a stale
//! receipt handle, so the budget stays far below it), and it applies the same way whichever adapter is
//! underneath, the embedded bus included.

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
    /// Retries of an entry that failed retryably ([`BusError::is_retryable`]), alone or with its whole call,
    /// after its first attempt: an entry is sent at most `1 + retries` times, and nothing below resends it
    /// except the AWS SDK, which retries a whole call that failed (throttling, 5xx, timeouts: by default up to
    /// three requests on the wire per attempt here) before the batcher sees the failure.
    pub(crate) retries: u32,
    /// Pause before each retry.
    pub(crate) retry_backoff: Backoff,
    /// Batch calls in flight at once: enough to keep up with thousands of messages a second when each call
    /// takes a network round trip, few enough not to flood the broker.
    pub(crate) concurrent_calls: usize,
}

impl BatchSettings {
    /// Four retries, five sends in all, with pauses of at most 0.1, 0.2, 0.4 and 0.8 s (1.5 s in total, plus
    /// the calls themselves): a shutdown's final flush stays well inside ECS's stop timeout, and a whole second
    /// and a half of broker trouble is ridden out.
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
    /// Retry past [`BatchSettings::retries`] while a try can start before this.
    retry_until: Option<Instant>,
}

impl<E> Request<E> {
    /// Whether a retryable failure on try `attempt` (0 for the first) is tried again at `next_try`.
    fn may_retry(&self, attempt: u32, settings: &BatchSettings, next_try: Instant) -> bool {
        attempt < settings.retries || self.retry_until.is_some_and(|until| next_try < until)
    }
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
        self.send(Request { entry, reply: None, retry_until: None });
    }

    /// Queues an entry whose retryable failures are retried past the usual budget, for as long as the next try
    /// would start before `until` (a settled message's delete, while the message is still hidden: SQS accepts
    /// its receipt handle until then). Its outcome is logged and counted by the batcher.
    pub(crate) fn submit_until(&self, entry: E, until: Instant) {
        self.send(Request { entry, reply: None, retry_until: Some(until) });
    }

    /// Queues an entry and waits for its outcome.
    pub(crate) async fn submit_and_wait(&self, entry: E) -> Result<(), BusError> {
        let (reply, outcome) = oneshot::channel();
        self.send(Request { entry, reply: Some(reply), retry_until: None });
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

/// The answer to an entry the batcher can no longer send.
fn stopped() -> BusError {
    BusError::StoppedBeforeSending
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
    for attempt in 0.. {
        let pause = settings.retry_backoff.delay(attempt);
        let entries = pending.iter().map(|request| request.entry.clone()).collect();
        let results = match E::call(Arc::clone(&consumer), entries).await {
            Ok(results) if results.len() == pending.len() => results,
            Ok(results) => {
                let detail = format!("{} results for {} entries", results.len(), pending.len());
                vec![Err(BusError::IncompleteResponse(detail)); pending.len()]
            }
            Err(error) => vec![Err(error); pending.len()],
        };
        let next_try = Instant::now() + pause;
        let mut retry = Vec::new();
        for (request, result) in pending.into_iter().zip(results) {
            match result {
                Err(error) if error.is_retryable() && request.may_retry(attempt, &settings, next_try) => {
                    retry.push(request)
                }
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
        sleep(pause).await;
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
        /// Handles that always fail transiently.
        down: Vec<String>,
        /// Calls still to be answered with one result too few.
        short_answers: Mutex<u32>,
    }

    #[async_trait::async_trait]
    impl Consumer for Recorder {
        async fn receive(&self, _: usize, _: Duration) -> Result<Vec<ReceivedMessage>, BusError> {
            unreachable!()
        }
        async fn delete_batch(&self, handles: Vec<ReceiptHandle>) -> Result<Vec<EntryResult<()>>, BusError> {
            self.batches.lock().unwrap().push(handles.iter().map(|h| h.0.clone()).collect());
            let mut flaky = self.flaky.lock().unwrap();
            let mut results: Vec<_> = handles
                .into_iter()
                .map(|handle| {
                    if self.stale.contains(&handle.0) {
                        Err(BusError::ReceiptHandleInvalid(handle.0))
                    } else if self.down.contains(&handle.0) {
                        Err(BusError::Transient { code: "InternalError".into(), message: "down".into() })
                    } else if let Some(at) = flaky.iter().position(|h| *h == handle.0) {
                        flaky.remove(at);
                        Err(BusError::Transient { code: "InternalError".into(), message: "try again".into() })
                    } else {
                        Ok(())
                    }
                })
                .collect();
            let mut short_answers = self.short_answers.lock().unwrap();
            if *short_answers > 0 {
                *short_answers -= 1;
                results.pop();
            }
            Ok(results)
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

    fn sent(recorder: &Recorder) -> Vec<Vec<String>> {
        recorder.batches.lock().unwrap().clone()
    }

    fn names(handles: &[&str]) -> Vec<String> {
        handles.iter().map(|h| (*h).to_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_retryable_entries_then_gives_up() {
        let recorder = Arc::new(Recorder {
            flaky: Mutex::new(names(&["h3"])),
            stale: names(&["h1"]),
            down: names(&["h2"]),
            ..Recorder::default()
        });
        let failures = Arc::new(AtomicU64::new(0));
        let settings = BatchSettings::new(Duration::from_millis(10));
        let (deleter, work) = Batcher::<ReceiptHandle>::new(recorder.clone(), settings, failures.clone());
        let work = tokio::spawn(work);
        let started = Instant::now();
        let (ok, stale, down, flaky) = tokio::join!(
            deleter.submit_and_wait(handle(0)),
            deleter.submit_and_wait(handle(1)),
            deleter.submit_and_wait(handle(2)),
            deleter.submit_and_wait(handle(3)),
        );
        let took = started.elapsed();
        drop(deleter);
        work.await.unwrap();

        assert_eq!(ok, Ok(()));
        assert!(matches!(stale, Err(BusError::ReceiptHandleInvalid(_))), "{stale:?}");
        assert!(
            matches!(&down, Err(BusError::Transient { code, .. }) if code == "InternalError"),
            "{down:?}"
        );
        assert_eq!(flaky, Ok(()), "a retry that succeeds replaces the error");
        // The whole budget: one send and four retries of the failing entry, nothing more (the bus adapters do
        // not resend entries), with pauses of 50-100, 100-200, 200-400 and 400-800 ms (jittered) between.
        let mut expected = vec![names(&["h0", "h1", "h2", "h3"]), names(&["h2", "h3"])];
        expected.extend(std::iter::repeat_n(names(&["h2"]), 3));
        assert_eq!(sent(&recorder), expected);
        assert_eq!(expected.len() as u32, 1 + settings.retries);
        let (least, most) = (Duration::from_millis(10 + 750), Duration::from_millis(10 + 1_500));
        assert!(took >= least && took <= most, "{took:?}");
        assert_eq!(failures.load(Ordering::Relaxed), 2, "the stale and the down handle");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_misses_entries_is_retried_then_reported_incomplete() {
        let recorder = Arc::new(Recorder { short_answers: Mutex::new(1), ..Recorder::default() });
        let failures = Arc::new(AtomicU64::new(0));
        let settings = BatchSettings::new(Duration::from_millis(10));
        let (deleter, work) = Batcher::<ReceiptHandle>::new(recorder.clone(), settings, failures.clone());
        let work = tokio::spawn(work);
        let (first, second) =
            tokio::join!(deleter.submit_and_wait(handle(0)), deleter.submit_and_wait(handle(1)));
        assert_eq!((first, second), (Ok(()), Ok(())), "retried whole after the short answer");
        assert_eq!(sent(&recorder), vec![names(&["h0", "h1"]); 2]);

        *recorder.short_answers.lock().unwrap() = u32::MAX;
        let lost = deleter.submit_and_wait(handle(2)).await;
        assert!(matches!(lost, Err(BusError::IncompleteResponse(_))), "{lost:?}");
        assert_eq!(sent(&recorder).len() as u32, 2 + 1 + settings.retries);
        assert_eq!(failures.load(Ordering::Relaxed), 1);
        drop(deleter);
        work.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn entries_a_stopped_batcher_never_sent_are_answered_as_such() {
        let recorder = Arc::new(Recorder::default());
        let failures = Arc::new(AtomicU64::new(0));
        let settings = BatchSettings::new(Duration::from_millis(10));

        // Killed while an entry waits for company: the entry is dropped unsent.
        let (deleter, work) = Batcher::<ReceiptHandle>::new(recorder.clone(), settings, failures.clone());
        let work = tokio::spawn(work);
        let waiting = tokio::spawn({
            let deleter = deleter.clone();
            async move { deleter.submit_and_wait(handle(1)).await }
        });
        sleep(Duration::from_millis(5)).await;
        work.abort();
        assert_eq!(waiting.await.unwrap(), Err(BusError::StoppedBeforeSending));

        // Submitted after the batcher is gone.
        assert_eq!(deleter.submit_and_wait(handle(2)).await, Err(BusError::StoppedBeforeSending));
        assert!(sent(&recorder).is_empty(), "nothing reached the broker");
        assert_eq!(failures.load(Ordering::Relaxed), 0, "not a broker failure");
    }
}
