//! The micro-batcher: coalesces concurrent publishes into batch calls, each request keeping its own result.
//!
//! - When no publish call is in flight and none is queued, a request publishes its message itself with one
//!   `Publish` call: an idle receiver adds no latency and no hand-off.
//! - Otherwise it hands the message to the batching task (a channel, and a oneshot for the answer). While calls
//!   are in flight the task fills the next batch for up to `linger`, or until it holds [`MAX_BATCH_ENTRIES`]
//!   messages or [`MAX_MESSAGE_BYTES`] of them (SNS limits a batch's total size too), then sends it with
//!   `PublishBatch` (`Publish` when alone), at most `max_in_flight` calls at once.
//! - Each request gets its own entry's result, so a partial batch failure fails only its own requests.
//! - Entries the broker fails on their own with a retryable error (SNS's `SenderFault=false`) are sent again,
//!   at most [`ENTRY_ATTEMPTS`] times in all, within the call's publish timeout. This is the one layer that
//!   resends entries: the bus adapters send each entry once, so this budget is the real one. A call that
//!   fails as a whole is not repeated here: the AWS SDK has already retried it (throttling, 5xx, timeouts),
//!   and the request's own deadline leaves no room for more.
//!
//! Messages whose request has already gone (client disconnected, or its publish timeout passed) are dropped
//! before sending: nobody was told they were accepted, so nobody is owed their publication.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus::{BusError, MAX_BATCH_ENTRIES, MAX_MESSAGE_BYTES, MessageId, OutgoingMessage, Publisher};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many times a message is sent at most (the first time included) when the broker fails its entry on its
/// own, retryably. Three, with [`FIRST_RESEND_BACKOFF`] doubling between, rides out a momentary internal
/// error in 0.3 s, well inside the publish timeout a client waits for.
const ENTRY_ATTEMPTS: u32 = 3;

/// Pause before the first resend of failed entries; doubles before each further one.
const FIRST_RESEND_BACKOFF: Duration = Duration::from_millis(100);

/// Why a publish did not get acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PublishError {
    /// The broker refused the message or the call failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// No acknowledgement within the publish timeout; the message may still be published.
    #[error("the broker did not acknowledge the publish within {0:?}")]
    TimedOut(Duration),
    /// The receiver is shutting down and takes no new publishes.
    #[error("the receiver is shutting down")]
    ShuttingDown,
}

/// How the batcher batches; see [`crate::Config`] for the meaning of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatcherSettings {
    /// How long a partial batch may wait for company while other calls are in flight.
    pub linger: Duration,
    /// Publish calls in flight at once.
    pub max_in_flight: usize,
    /// How long one request waits for its acknowledgement.
    pub publish_timeout: Duration,
    /// Capacity of the channel into the batcher. Callers bound their own concurrency, so this only needs to be
    /// at least that bound for `publish` never to wait for room.
    pub queue_capacity: usize,
}

/// Counters kept by the batcher, read by `/stats`.
#[derive(Debug, Default)]
pub(crate) struct PublishCounters {
    /// Messages the broker acknowledged.
    pub published: AtomicU64,
    /// Messages the broker refused, or whose call failed or timed out.
    pub failed: AtomicU64,
    /// Publish calls made (`Publish` and `PublishBatch` alike), resends of failed entries included.
    pub calls: AtomicU64,
    /// Messages dropped unsent because their request had already gone.
    pub abandoned: AtomicU64,
}

/// The handle requests publish through. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PublishBatcher {
    broker: Arc<Broker>,
    sender: mpsc::Sender<Pending>,
    publish_timeout: Duration,
    closing: CancellationToken,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for PublishBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishBatcher")
            .field("publish_timeout", &self.publish_timeout)
            .finish_non_exhaustive()
    }
}

/// One message waiting for a publish call, and where to send its result.
struct Pending {
    message: OutgoingMessage,
    size: usize,
    reply: oneshot::Sender<Result<MessageId, BusError>>,
}

impl PublishBatcher {
    /// Starts the batching task on the current tokio runtime.
    pub(crate) fn start(publisher: Arc<dyn Publisher>, settings: BatcherSettings) -> Self {
        let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
        let max_in_flight = settings.max_in_flight.max(1);
        let broker = Arc::new(Broker {
            publisher,
            call_timeout: settings.publish_timeout,
            calls: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            counters: PublishCounters::default(),
        });
        let closing = CancellationToken::new();
        let task = BatchTask {
            broker: broker.clone(),
            receiver,
            carried: None,
            linger: settings.linger,
            closing: closing.clone(),
        };
        let task = tokio::spawn(task.run());
        Self {
            broker,
            sender,
            publish_timeout: settings.publish_timeout,
            closing,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Publishes one message and waits for the broker's acknowledgement of it, at most the publish timeout.
    pub(crate) async fn publish(&self, message: OutgoingMessage) -> Result<MessageId, PublishError> {
        if self.closing.is_cancelled() {
            return Err(PublishError::ShuttingDown);
        }
        let acknowledged = tokio::time::timeout(self.publish_timeout, async {
            match self.idle_call_slot() {
                // The slot is held for the duration of the call, so others see a call in flight and batch.
                Some(_slot) => self
                    .broker
                    .call(vec![message])
                    .await
                    .pop()
                    .expect("one result per message")
                    .map_err(Into::into),
                None => self.through_the_task(message).await,
            }
        })
        .await;
        acknowledged.unwrap_or(Err(PublishError::TimedOut(self.publish_timeout)))
    }

    /// A call slot, if nothing is in flight or queued: then there is nothing to batch with.
    fn idle_call_slot(&self) -> Option<OwnedSemaphorePermit> {
        let nothing_queued = self.sender.capacity() == self.sender.max_capacity();
        if self.broker.idle() && nothing_queued {
            self.broker.calls.clone().try_acquire_owned().ok()
        } else {
            None
        }
    }

    async fn through_the_task(&self, message: OutgoingMessage) -> Result<MessageId, PublishError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { size: message.size_bytes(), message, reply };
        self.sender.send(pending).await.map_err(|_| PublishError::ShuttingDown)?;
        // The task answers every message it takes; a dropped reply means it stopped mid-way.
        answer.await.map_err(|_| PublishError::ShuttingDown)?.map_err(PublishError::Bus)
    }

    /// The batcher's counters.
    pub(crate) fn counters(&self) -> &PublishCounters {
        &self.broker.counters
    }

    /// Stops taking new messages, publishes everything already queued, and waits for every call in flight,
    /// for at most `deadline`. Returns whether everything was flushed in time.
    pub(crate) async fn close(&self, deadline: Instant) -> bool {
        self.closing.cancel();
        let Some(task) = self.task.lock().await.take() else { return true };
        matches!(tokio::time::timeout_at(deadline, task).await, Ok(Ok(())))
    }
}

/// Makes publish calls, at most `max_in_flight` at once, and accounts for them.
struct Broker {
    publisher: Arc<dyn Publisher>,
    call_timeout: Duration,
    /// One permit per publish call in flight.
    calls: Arc<Semaphore>,
    max_in_flight: usize,
    counters: PublishCounters,
}

impl Broker {
    fn idle(&self) -> bool {
        self.calls.available_permits() == self.max_in_flight
    }

    /// Publishes a batch's messages and answers each of its requests with its own entry's result.
    async fn send_batch(self: Arc<Self>, mut batch: Vec<Pending>, _call: OwnedSemaphorePermit) {
        let before = batch.len();
        batch.retain(|pending| !pending.reply.is_closed());
        let abandoned = before - batch.len();
        if abandoned > 0 {
            self.counters.abandoned.fetch_add(abandoned as u64, Ordering::Relaxed);
        }
        if batch.is_empty() {
            return;
        }
        let (messages, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|pending| (pending.message, pending.reply)).unzip();
        let results = self.call(messages).await;
        for (reply, result) in replies.into_iter().zip(results) {
            // The request may have given up meanwhile; its answer then has nowhere to go.
            let _ = reply.send(result);
        }
    }

    /// Publishes `messages` (one broker call, then resends of the entries the broker failed on their own, see
    /// [`ENTRY_ATTEMPTS`]), all within the publish timeout. Always one result per message, in order. Counts and
    /// measures the whole.
    async fn call(&self, messages: Vec<OutgoingMessage>) -> Vec<Result<MessageId, BusError>> {
        let entries = messages.len();
        let started = Instant::now();
        let results = self.send_with_resends(messages, started + self.call_timeout).await;
        let elapsed = started.elapsed();

        let failed = results.iter().filter(|result| result.is_err()).count();
        self.counters.published.fetch_add((entries - failed) as u64, Ordering::Relaxed);
        self.counters.failed.fetch_add(failed as u64, Ordering::Relaxed);
        let outcome = match failed {
            0 => "ok",
            n if n == entries => "failed",
            _ => "partial",
        };
        metrics::histogram!("receiver_publish_batch_size").record(entries as f64);
        metrics::histogram!("receiver_publish_duration_seconds", "outcome" => outcome)
            .record(elapsed.as_secs_f64());
        if let Some(Err(error)) = results.iter().find(|result| result.is_err()) {
            tracing::warn!(entries, failed, %error, "publish to the bus failed");
        }
        results
    }

    /// Sends every message once, then resends the entries that failed on their own retryably, after a backoff,
    /// while attempts remain and the next one can start before `deadline`. An entry not resent keeps the
    /// broker's last answer for it; one whose call was cut by the deadline gets [`BusError::Timeout`].
    async fn send_with_resends(
        &self,
        messages: Vec<OutgoingMessage>,
        deadline: Instant,
    ) -> Vec<Result<MessageId, BusError>> {
        // A lone message goes out with `Publish`, whose failure is the whole call's: it is never resent, so no
        // copy of it is kept.
        if let [_] = messages.as_slice() {
            return self.send(messages, deadline).await.unwrap_or_else(|error| vec![Err(error)]);
        }
        let mut results: Vec<Option<Result<MessageId, BusError>>> = vec![None; messages.len()];
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        for attempt in 0..ENTRY_ATTEMPTS {
            if attempt > 0 {
                let resume = Instant::now() + FIRST_RESEND_BACKOFF * 2u32.pow(attempt - 1);
                if resume >= deadline {
                    break;
                }
                tokio::time::sleep_until(resume).await;
            }
            let batch = pending.iter().map(|&i| messages[i].clone()).collect();
            let answers = match self.send(batch, deadline).await {
                Ok(answers) => answers,
                Err(error) => {
                    for &i in &pending {
                        results[i] = Some(Err(error.clone()));
                    }
                    break;
                }
            };
            let mut resend = Vec::new();
            for (i, answer) in pending.into_iter().zip(answers) {
                if matches!(&answer, Err(error) if error.is_retryable()) {
                    resend.push(i);
                }
                results[i] = Some(answer);
            }
            pending = resend;
            if pending.is_empty() {
                break;
            }
        }
        results.into_iter().map(|result| result.expect("every message is sent at least once")).collect()
    }

    /// One broker call: `Publish` for a lone message, `PublishBatch` otherwise. `Ok` holds one result per
    /// message, in order; `Err` is a failure of the whole call (after the SDK's own retries), a batch answer
    /// with the wrong number of results, or no answer by `deadline`.
    async fn send(
        &self,
        mut messages: Vec<OutgoingMessage>,
        deadline: Instant,
    ) -> Result<Vec<Result<MessageId, BusError>>, BusError> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let entries = messages.len();
        if let [_] = messages.as_slice() {
            let message = messages.pop().expect("one message");
            let published = tokio::time::timeout_at(deadline, self.publisher.publish(message)).await;
            return published.unwrap_or(Err(BusError::Timeout)).map(|id| vec![Ok(id)]);
        }
        match tokio::time::timeout_at(deadline, self.publisher.publish_batch(messages)).await {
            Ok(Ok(results)) if results.len() == entries => Ok(results),
            Ok(Ok(results)) => Err(BusError::IncompleteResponse(format!(
                "{entries} entries published, {} results",
                results.len()
            ))),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(BusError::Timeout),
        }
    }
}

/// The batching task's state.
struct BatchTask {
    broker: Arc<Broker>,
    receiver: mpsc::Receiver<Pending>,
    /// A message that did not fit in the previous batch's byte budget; it starts the next batch.
    carried: Option<Pending>,
    linger: Duration,
    closing: CancellationToken,
}

impl BatchTask {
    async fn run(mut self) {
        while let Some(first) = self.next_message().await {
            let batch = self.fill(first).await;
            let call =
                self.broker.calls.clone().acquire_owned().await.expect("the call semaphore is never closed");
            let mut send = Box::pin(self.broker.clone().send_batch(batch, call));
            // Poll the call once here: a broker that answers at once (the embedded one) is done without a task
            // switch; one that has to wait (SNS over the network) continues on a task of its own.
            if std::future::poll_fn(|cx| std::task::Poll::Ready(send.as_mut().poll(cx))).await.is_pending() {
                tokio::spawn(send);
            }
        }
        // Closed and drained: wait for the calls still in flight, so `close` returns only once all are answered.
        let all = u32::try_from(self.broker.max_in_flight).unwrap_or(u32::MAX);
        let _ = self.broker.calls.acquire_many(all).await;
    }

    /// The next message to start a batch with, or `None` once closed and drained.
    async fn next_message(&mut self) -> Option<Pending> {
        if let Some(carried) = self.carried.take() {
            return Some(carried);
        }
        if !self.closing.is_cancelled() {
            tokio::select! {
                biased;
                message = self.receiver.recv() => return message,
                () = self.closing.cancelled() => {}
            }
        }
        // Closing: no new messages from now on; the ones already queued are still received, then `None`.
        self.receiver.close();
        self.receiver.recv().await
    }

    /// Adds to `first` whatever is queued, lingering for more only while calls are in flight.
    async fn fill(&mut self, first: Pending) -> Vec<Pending> {
        let linger_until = Instant::now() + self.linger;
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_ENTRIES {
            let next = match self.receiver.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Empty)
                    if !self.broker.idle() && !self.closing.is_cancelled() =>
                {
                    tokio::select! {
                        next = self.receiver.recv() => match next {
                            Some(next) => next,
                            None => break,
                        },
                        () = tokio::time::sleep_until(linger_until) => break,
                    }
                }
                Err(_) => break,
            };
            if bytes + next.size > MAX_MESSAGE_BYTES {
                self.carried = Some(next);
                break;
            }
            bytes += next.size;
            batch.push(next);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use bus::EntryResult;

    /// Records the entry count and total size of every call; each call takes 10 ms.
    #[derive(Default)]
    struct SizeRecorder {
        calls: std::sync::Mutex<Vec<(usize, usize)>>,
    }

    impl SizeRecorder {
        async fn record(&self, messages: &[OutgoingMessage]) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let bytes = messages.iter().map(OutgoingMessage::size_bytes).sum();
            self.calls.lock().unwrap().push((messages.len(), bytes));
        }
    }

    #[async_trait]
    impl Publisher for SizeRecorder {
        async fn publish(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
            self.record(std::slice::from_ref(&message)).await;
            Ok("id".into())
        }

        async fn publish_batch(
            &self,
            messages: Vec<OutgoingMessage>,
        ) -> Result<Vec<EntryResult<MessageId>>, BusError> {
            self.record(&messages).await;
            Ok(messages.iter().map(|_| Ok("id".into())).collect())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_respect_the_total_size_limit() {
        let recorder = Arc::new(SizeRecorder::default());
        let settings = BatcherSettings {
            linger: Duration::from_millis(50),
            max_in_flight: 1,
            publish_timeout: Duration::from_secs(5),
            queue_capacity: 64,
        };
        let batcher = PublishBatcher::start(recorder.clone(), settings);
        // 100 KiB each: two fit in SNS's 256 KiB per batch, three do not.
        let publishes: Vec<_> = (0..7)
            .map(|_| {
                let batcher = batcher.clone();
                tokio::spawn(
                    async move { batcher.publish(OutgoingMessage::new("x".repeat(100 * 1024))).await },
                )
            })
            .collect();
        for publish in publishes {
            assert_eq!(publish.await.unwrap(), Ok("id".to_owned()));
        }
        let calls = recorder.calls.lock().unwrap().clone();
        assert_eq!(calls.iter().map(|(entries, _)| entries).sum::<usize>(), 7);
        assert!(calls.iter().all(|&(_, bytes)| bytes <= MAX_MESSAGE_BYTES), "{calls:?}");
        assert!(calls.iter().any(|&(entries, _)| entries == 2), "still batched: {calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn close_flushes_queued_messages_then_refuses_new_ones() {
        let recorder = Arc::new(SizeRecorder::default());
        let settings = BatcherSettings {
            linger: Duration::from_millis(2),
            max_in_flight: 1,
            publish_timeout: Duration::from_secs(5),
            queue_capacity: 64,
        };
        let batcher = PublishBatcher::start(recorder.clone(), settings);
        let publishes: Vec<_> = (0..25)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.publish(OutgoingMessage::new(format!("order {i}"))).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(batcher.close(Instant::now() + Duration::from_secs(1)).await, "flushed within the deadline");
        for publish in publishes {
            assert!(publish.await.unwrap().is_ok());
        }
        assert_eq!(recorder.calls.lock().unwrap().iter().map(|(entries, _)| entries).sum::<usize>(), 25);
        assert_eq!(batcher.publish(OutgoingMessage::new("late")).await, Err(PublishError::ShuttingDown));
    }

    /// Answers each message by its body: `ok`, `bad` (refused for good), `down…` (always failing retryably),
    /// `flaky` (failing retryably the first time). Records every call.
    #[derive(Default)]
    struct ByBody {
        /// Each call: whether it was `PublishBatch`, and the bodies sent.
        calls: std::sync::Mutex<Vec<(bool, Vec<String>)>>,
        flaky_failed: std::sync::Mutex<bool>,
        /// Every `PublishBatch` fails as a whole with this.
        batch_failure: Option<BusError>,
        /// `PublishBatch` answers with one result too few.
        short_answers: bool,
        /// Calls from this one on (counting from 0) never answer.
        hang_from: Option<usize>,
    }

    impl ByBody {
        async fn answer(&self, batch: bool, messages: &[OutgoingMessage]) -> Vec<EntryResult<MessageId>> {
            let call = {
                let mut calls = self.calls.lock().unwrap();
                calls.push((batch, messages.iter().map(|m| m.body.clone()).collect()));
                calls.len() - 1
            };
            if self.hang_from.is_some_and(|from| call >= from) {
                std::future::pending::<()>().await;
            }
            let transient = || BusError::Transient { code: "InternalError".into(), message: "again".into() };
            messages
                .iter()
                .map(|message| match message.body.as_str() {
                    "bad" => Err(BusError::InvalidParameter("refused".into())),
                    body if body.starts_with("down") => Err(transient()),
                    "flaky" if !std::mem::replace(&mut *self.flaky_failed.lock().unwrap(), true) => {
                        Err(transient())
                    }
                    body => Ok(format!("id-{body}")),
                })
                .collect()
        }

        fn calls(&self) -> Vec<(bool, Vec<String>)> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Publisher for ByBody {
        async fn publish(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
            self.answer(false, std::slice::from_ref(&message)).await.pop().expect("one result")
        }

        async fn publish_batch(
            &self,
            messages: Vec<OutgoingMessage>,
        ) -> Result<Vec<EntryResult<MessageId>>, BusError> {
            let mut results = self.answer(true, &messages).await;
            if let Some(failure) = &self.batch_failure {
                return Err(failure.clone());
            }
            if self.short_answers {
                results.pop();
            }
            Ok(results)
        }
    }

    fn broker_over(publisher: ByBody, call_timeout: Duration) -> (Arc<ByBody>, Broker) {
        let publisher = Arc::new(publisher);
        let broker = Broker {
            publisher: publisher.clone(),
            call_timeout,
            calls: Arc::new(Semaphore::new(1)),
            max_in_flight: 1,
            counters: PublishCounters::default(),
        };
        (publisher, broker)
    }

    fn messages(bodies: &[&str]) -> Vec<OutgoingMessage> {
        bodies.iter().map(|body| OutgoingMessage::new(*body)).collect()
    }

    fn bodies(bodies: &[&str]) -> Vec<String> {
        bodies.iter().map(|body| (*body).to_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn resends_only_entries_failed_retryably_then_gives_up() {
        let (publisher, broker) = broker_over(ByBody::default(), Duration::from_secs(5));
        let started = Instant::now();
        let results = broker.call(messages(&["ok", "bad", "down", "down too", "flaky"])).await;
        assert_eq!(results[0], Ok("id-ok".to_owned()));
        assert!(matches!(results[1], Err(BusError::InvalidParameter(_))), "{:?}", results[1]);
        for down in &results[2..4] {
            assert!(
                matches!(down, Err(BusError::Transient { code, .. }) if code == "InternalError"),
                "{down:?}"
            );
        }
        assert_eq!(results[4], Ok("id-flaky".to_owned()), "a resend that succeeds replaces the error");
        // The whole budget: three sends of the failing entries (the bus adapter sends each entry once), after
        // 100 and 200 ms.
        let expected = vec![
            (true, bodies(&["ok", "bad", "down", "down too", "flaky"])),
            (true, bodies(&["down", "down too", "flaky"])),
            (true, bodies(&["down", "down too"])),
        ];
        assert_eq!(publisher.calls(), expected);
        assert_eq!(expected.len() as u32, ENTRY_ATTEMPTS);
        assert_eq!(started.elapsed(), FIRST_RESEND_BACKOFF * 3);
        let counters = &broker.counters;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        assert_eq!((count(&counters.published), count(&counters.failed), count(&counters.calls)), (2, 3, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_entry_is_resent_with_publish_whose_failure_is_final() {
        let (publisher, broker) = broker_over(ByBody::default(), Duration::from_secs(5));
        let results = broker.call(messages(&["ok", "down"])).await;
        assert_eq!(results[0], Ok("id-ok".to_owned()));
        assert!(matches!(&results[1], Err(BusError::Transient { .. })), "{:?}", results[1]);
        // Publish fails as a whole call, which the SDK has already retried: not repeated here.
        assert_eq!(publisher.calls(), vec![(true, bodies(&["ok", "down"])), (false, bodies(&["down"]))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_failing_as_a_whole_is_not_repeated() {
        let failure = BusError::Transient { code: "Throttling".into(), message: "slow down".into() };
        let (publisher, broker) = broker_over(
            ByBody { batch_failure: Some(failure.clone()), ..ByBody::default() },
            Duration::from_secs(5),
        );
        assert_eq!(broker.call(messages(&["ok", "down"])).await, vec![Err(failure.clone()), Err(failure)]);
        assert_eq!(publisher.calls().len(), 1, "the SDK already retried the whole call");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_with_missing_results_fails_every_entry_as_incomplete() {
        let (publisher, broker) =
            broker_over(ByBody { short_answers: true, ..ByBody::default() }, Duration::from_secs(5));
        let results = broker.call(messages(&["ok", "ok"])).await;
        assert!(results.iter().all(|r| matches!(r, Err(BusError::IncompleteResponse(_)))), "{results:?}");
        assert_eq!(publisher.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn resends_stop_at_the_publish_timeout() {
        // The second resend would start at 300 ms: past the timeout, so the broker's answer stands.
        let (publisher, broker) = broker_over(ByBody::default(), Duration::from_millis(250));
        let results = broker.call(messages(&["ok", "down", "down too"])).await;
        assert_eq!(results[0], Ok("id-ok".to_owned()));
        assert!(matches!(&results[1], Err(BusError::Transient { .. })), "{:?}", results[1]);
        assert_eq!(publisher.calls().len(), 2);

        // A resend cut by the timeout: its outcome is unknown; the entries already acknowledged stay so.
        let (_, broker) =
            broker_over(ByBody { hang_from: Some(1), ..ByBody::default() }, Duration::from_millis(250));
        let started = Instant::now();
        let results = broker.call(messages(&["ok", "down"])).await;
        assert_eq!(results, vec![Ok("id-ok".to_owned()), Err(BusError::Timeout)]);
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }
}
