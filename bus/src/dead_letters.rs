//! The dead-letter queue's tools: look at what is in it ([`DeadLetters::list`]) and move it all back to the
//! source queue ([`DeadLetters::redrive`]), on the embedded stack and on SQS ([`crate::aws::AwsDeadLetters`]).
//!
//! **Peeking** is a receive that deletes nothing: each message listed is received once more (its receive
//! count in the dead-letter queue goes up by one) and then made visible again at once with a zero visibility
//! change. If the peek is interrupted before that, the messages come back by themselves after the dead-letter
//! queue's visibility timeout (30 s by default).
//!
//! **Redriving** uses SQS's own move task where it exists (`StartMessageMoveTask`, AWS only), and otherwise
//! copies: receive up to ten from the dead-letter queue, send them to the source queue in one batch, delete
//! from the dead-letter queue exactly the entries whose send succeeded. Interrupted at any point, nothing is
//! lost: a message is deleted only after its copy was acknowledged, so the worst case is a message copied
//! twice, which the order ledger makes harmless (an order is charged once). The copy keeps the body and the
//! string attributes but drops [`ATTR_DEAD_LETTER_REASON`](crate::ATTR_DEAD_LETTER_REASON): the message is
//! no longer dead, and a stale reason would mislead the next look at the dead-letter queue if it died again by
//! SQS's own redrive (which sets no reason). SQS's move task keeps every attribute; that is AWS's behaviour.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::embedded::{EmbeddedQueue, EmbeddedStack};
use crate::{
    ATTR_DEAD_LETTER_REASON, BusError, Consumer, EntryResult, MAX_BATCH_ENTRIES, MAX_MESSAGE_BYTES,
    MessageId, OutgoingMessage, Publisher, ReceiptHandle, ReceivedMessage, VisibilityChange,
    check_batch_size,
};

/// One dead-lettered message, as a peek saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The broker's id of the message in the dead-letter queue.
    pub message_id: MessageId,
    /// The body, unchanged.
    pub body: String,
    /// Why a consumer dead-lettered it ([`ATTR_DEAD_LETTER_REASON`]); absent when SQS's own redrive moved it
    /// after too many receives.
    pub reason: Option<String>,
    /// Receives of the message in the dead-letter queue, this peek included (SQS `ApproximateReceiveCount`).
    pub receive_count: u32,
    /// When the message was enqueued: in the dead-letter queue for a message a consumer sent there, in the
    /// source queue for one SQS's redrive moved (a move keeps the original enqueue time).
    pub sent_at: DateTime<Utc>,
    /// How long ago that was, in whole seconds, when the peek saw it.
    pub age_seconds: u64,
    /// Every string attribute, the reason included.
    pub attributes: BTreeMap<String, String>,
}

impl DeadLetter {
    fn from_received(message: ReceivedMessage, now: SystemTime) -> Self {
        DeadLetter {
            reason: message.attributes.get(ATTR_DEAD_LETTER_REASON).cloned(),
            receive_count: message.receive_count,
            sent_at: DateTime::<Utc>::from(message.sent_at),
            age_seconds: now.duration_since(message.sent_at).unwrap_or_default().as_secs(),
            message_id: message.message_id,
            body: message.body,
            attributes: message.attributes,
        }
    }
}

/// How a redrive moved the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedriveMethod {
    /// SQS `StartMessageMoveTask`, watched with `ListMessageMoveTasks` until it finished.
    MoveTask,
    /// Receive from the dead-letter queue, send to the source queue, delete what was sent.
    ReceiveSendDelete,
}

impl std::fmt::Display for RedriveMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedriveMethod::MoveTask => "SQS move task",
            RedriveMethod::ReceiveSendDelete => "receive → send → delete",
        })
    }
}

/// How a redrive goes about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveOptions {
    /// Copy (receive → send → delete) even where SQS's move task is available: to test that path, or to move
    /// messages a move task will not (it only moves out of a queue's own redrive DLQ).
    pub force_fallback: bool,
    /// How long each receive of the copy waits for messages (a short long poll: SQS's short polls may answer
    /// empty while messages are there).
    pub receive_wait: Duration,
    /// How often a move task's progress is read, and how often the copy looks again for messages that are in
    /// flight in the dead-letter queue.
    pub poll_interval: Duration,
    /// How long the copy waits for messages in flight in the dead-letter queue (someone received them, or an
    /// interrupted earlier redrive did) to become visible before it stops and reports them as left behind.
    /// Longer than the dead-letter queue's visibility timeout (30 s) so an interrupted run's batch is moved.
    pub in_flight_wait: Duration,
}

impl Default for RedriveOptions {
    fn default() -> Self {
        Self {
            force_fallback: false,
            receive_wait: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            in_flight_wait: Duration::from_secs(45),
        }
    }
}

/// What happened during a redrive, as it happens (for progress lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RedriveEvent {
    /// SQS's move task could not be used; the copy takes over.
    FallingBack {
        /// Why: the flag, or what the broker answered.
        why: String,
    },
    /// A move task's state, as `ListMessageMoveTasks` reported it.
    MoveTask {
        /// `RUNNING`, `COMPLETED`, `CANCELLING`, `CANCELLED` or `FAILED`.
        status: String,
        /// `ApproximateNumberOfMessagesMoved`.
        moved: u64,
        /// `ApproximateNumberOfMessagesToMove`, when known.
        to_move: Option<u64>,
    },
    /// A batch was sent to the source queue; its deletion from the dead-letter queue comes next.
    Copied {
        /// Entries of this batch sent.
        sent: usize,
        /// Copies sent so far.
        moved: u64,
    },
    /// A batch's copies were deleted from the dead-letter queue.
    Deleted {
        /// Entries deleted.
        deleted: usize,
        /// Entries whose delete failed: they come back after the visibility timeout and are copied again.
        failed: usize,
    },
    /// Nothing visible, but messages in flight in the dead-letter queue: waiting for them.
    WaitingForInFlight {
        /// Messages in flight.
        in_flight: u64,
    },
}

impl std::fmt::Display for RedriveEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedriveEvent::FallingBack { why } => write!(f, "falling back to receive → send → delete: {why}"),
            RedriveEvent::MoveTask { status, moved, to_move: Some(total) } => {
                write!(f, "move task {status}: {moved} of {total} moved")
            }
            RedriveEvent::MoveTask { status, moved, to_move: None } => {
                write!(f, "move task {status}: {moved} moved")
            }
            RedriveEvent::Copied { sent, moved } => {
                write!(f, "sent {sent} to the source queue ({moved} so far)")
            }
            RedriveEvent::Deleted { deleted, failed: 0 } => write!(f, "deleted {deleted} from the DLQ"),
            RedriveEvent::Deleted { deleted, failed } => {
                write!(
                    f,
                    "deleted {deleted} from the DLQ; {failed} deletes failed (they will be copied again)"
                )
            }
            RedriveEvent::WaitingForInFlight { in_flight } => {
                write!(f, "waiting for {in_flight} in-flight DLQ message(s) to become visible")
            }
        }
    }
}

/// What a redrive did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedriveReport {
    /// How the messages were moved.
    pub method: RedriveMethod,
    /// Messages moved to the source queue (for the copy: copies acknowledged, so a message whose delete
    /// failed and that was copied again counts twice).
    pub moved: u64,
    /// Copies whose delete from the dead-letter queue failed (each is copied again later: a duplicate).
    pub delete_failures: u64,
    /// Messages still in the dead-letter queue when the redrive stopped (in flight past
    /// [`RedriveOptions::in_flight_wait`]); 0 when everything was moved.
    pub left_behind: u64,
    /// How long it took, in seconds.
    pub duration_seconds: f64,
}

/// Called with each [`RedriveEvent`]; it runs inside the redrive, so it must be quick.
pub type Progress<'a> = &'a (dyn Fn(&RedriveEvent) + Send + Sync);

/// A source queue and its dead-letter queue, for an operator.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Peeks at up to `max` dead-lettered messages without removing them (see the module docs).
    async fn list(&self, max: usize) -> Result<Vec<DeadLetter>, BusError>;

    /// Moves every dead-lettered message back to the source queue; `progress` hears each step.
    async fn redrive(
        &self,
        options: &RedriveOptions,
        progress: Progress<'_>,
    ) -> Result<RedriveReport, BusError>;
}

/// The embedded stack's queue and dead-letter queue. Peeks and redrives like SQS without a move task: the
/// redrive is always [`RedriveMethod::ReceiveSendDelete`].
#[async_trait]
impl DeadLetters for EmbeddedStack {
    async fn list(&self, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        // The embedded queue answers exactly: no need to wait for messages that are there.
        peek(&self.dead_letter, max, Duration::ZERO).await
    }

    async fn redrive(
        &self,
        options: &RedriveOptions,
        progress: Progress<'_>,
    ) -> Result<RedriveReport, BusError> {
        // The embedded queue answers exactly, so an empty receive means empty: no long poll needed.
        let options = RedriveOptions { receive_wait: Duration::ZERO, ..options.clone() };
        redrive_by_copy(&self.dead_letter, &SendToQueue(self.queue.clone()), &options, progress).await
    }
}

/// Sends straight to an embedded queue (SQS `SendMessageBatch`), for the copy.
struct SendToQueue(EmbeddedQueue);

#[async_trait]
impl Publisher for SendToQueue {
    async fn publish(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
        self.0.send(message)
    }

    async fn publish_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<MessageId>>, BusError> {
        check_batch_size(messages.len())?;
        Ok(messages.into_iter().map(|message| self.0.send(message)).collect())
    }
}

/// Receives up to `max` messages from `dead_letter` (each receive waiting at most `wait`), then makes them
/// visible again at once. See the module docs.
pub(crate) async fn peek(
    dead_letter: &dyn Consumer,
    max: usize,
    wait: Duration,
) -> Result<Vec<DeadLetter>, BusError> {
    let mut seen: Vec<ReceivedMessage> = Vec::new();
    let mut failure = None;
    while seen.len() < max {
        match dead_letter.receive((max - seen.len()).min(MAX_BATCH_ENTRIES), wait).await {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => seen.extend(batch),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    // Hand them back even when a receive failed, so the next look (or the workers' redrive) sees them now.
    let handles: Vec<ReceiptHandle> = seen.iter().map(|message| message.receipt_handle.clone()).collect();
    make_visible(dead_letter, &handles).await;
    if let Some(error) = failure {
        return Err(error);
    }
    let now = SystemTime::now();
    Ok(seen.into_iter().map(|message| DeadLetter::from_received(message, now)).collect())
}

/// Makes deliveries visible again now; a failure only delays them until their visibility timeout, so it is
/// logged, not returned.
async fn make_visible(consumer: &dyn Consumer, handles: &[ReceiptHandle]) {
    for chunk in handles.chunks(MAX_BATCH_ENTRIES) {
        let changes = chunk
            .iter()
            .map(|handle| VisibilityChange { receipt_handle: handle.clone(), timeout: Duration::ZERO })
            .collect();
        match consumer.change_visibility_batch(changes).await {
            Ok(results) => {
                for error in results.into_iter().filter_map(Result::err) {
                    tracing::debug!(%error, "a peeked message stays invisible until its visibility timeout");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "peeked messages stay invisible until their visibility timeout")
            }
        }
    }
}

/// Rounds in a row in which no send of a batch succeeded (every entry failed retryably) before the copy gives
/// up; each round waits [`RedriveOptions::poll_interval`].
const MAX_FAILED_ROUNDS: u32 = 5;

/// The copy: receive → send to `source` → delete the sent entries, until the dead-letter queue is empty (or
/// only holds messages in flight for longer than [`RedriveOptions::in_flight_wait`]).
pub(crate) async fn redrive_by_copy(
    dead_letter: &dyn Consumer,
    source: &dyn Publisher,
    options: &RedriveOptions,
    progress: Progress<'_>,
) -> Result<RedriveReport, BusError> {
    let started = Instant::now();
    let mut report = RedriveReport {
        method: RedriveMethod::ReceiveSendDelete,
        moved: 0,
        delete_failures: 0,
        left_behind: 0,
        duration_seconds: 0.0,
    };
    let mut idle_since: Option<Instant> = None;
    let mut failed_rounds = 0;
    loop {
        let received = dead_letter.receive(MAX_BATCH_ENTRIES, options.receive_wait).await?;
        if received.is_empty() {
            let stats = dead_letter.stats().await?;
            let left = stats.visible + stats.in_flight;
            if left == 0 {
                break;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= options.in_flight_wait {
                report.left_behind = left;
                break;
            }
            progress(&RedriveEvent::WaitingForInFlight { in_flight: stats.in_flight });
            tokio::time::sleep(options.poll_interval).await;
            continue;
        }
        idle_since = None;
        let any_sent = copy_batch(dead_letter, source, received, &mut report, progress).await?;
        if any_sent {
            failed_rounds = 0;
        } else {
            failed_rounds += 1;
            if failed_rounds >= MAX_FAILED_ROUNDS {
                return Err(BusError::Transient {
                    code: "RedriveStalled".into(),
                    message: format!(
                        "{MAX_FAILED_ROUNDS} batches in a row could not be sent to the source queue; \
                         {} moved so far, the rest are still in the dead-letter queue",
                        report.moved
                    ),
                });
            }
            tokio::time::sleep(options.poll_interval).await;
        }
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Copies one received batch to `source` and deletes the entries whose send succeeded; entries that failed
/// are made visible again for the next round. Returns whether any entry was sent; fails on an error that
/// retrying cannot fix (after handling the rest of the batch).
async fn copy_batch(
    dead_letter: &dyn Consumer,
    source: &dyn Publisher,
    received: Vec<ReceivedMessage>,
    report: &mut RedriveReport,
    progress: Progress<'_>,
) -> Result<bool, BusError> {
    let copies: Vec<OutgoingMessage> = received.iter().map(returning_copy).collect();
    let mut sent = Vec::new();
    let mut unsent = Vec::new();
    let mut fatal = None;
    for range in size_groups(&copies) {
        match source.publish_batch(copies[range.clone()].to_vec()).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for i in range {
                    match results.next() {
                        Some(Ok(_)) => sent.push(i),
                        Some(Err(error)) => {
                            if !error.is_retryable() {
                                fatal.get_or_insert(error);
                            }
                            unsent.push(i);
                        }
                        None => unsent.push(i),
                    }
                }
            }
            Err(error) => {
                if !error.is_retryable() {
                    fatal.get_or_insert(error);
                }
                unsent.extend(range);
            }
        }
    }
    report.moved += sent.len() as u64;
    if !sent.is_empty() {
        progress(&RedriveEvent::Copied { sent: sent.len(), moved: report.moved });
        // A caller reacting to the event (stopping the redrive) gets its turn before the delete, even when
        // the delete would not wait for anything (the embedded queue).
        tokio::task::yield_now().await;
        let handles: Vec<ReceiptHandle> = sent.iter().map(|&i| received[i].receipt_handle.clone()).collect();
        let failed = match dead_letter.delete_batch(handles).await {
            Ok(results) => results.iter().filter(|result| result.is_err()).count(),
            Err(error) => {
                tracing::warn!(%error, "deleting copied messages from the DLQ failed; they will be copied again");
                sent.len()
            }
        };
        report.delete_failures += failed as u64;
        progress(&RedriveEvent::Deleted { deleted: sent.len() - failed, failed });
    }
    let unsent: Vec<ReceiptHandle> = unsent.iter().map(|&i| received[i].receipt_handle.clone()).collect();
    make_visible(dead_letter, &unsent).await;
    match fatal {
        Some(error) => Err(error),
        None => Ok(!sent.is_empty()),
    }
}

/// The message to send back: body and attributes, without the dead-letter reason (see the module docs).
fn returning_copy(message: &ReceivedMessage) -> OutgoingMessage {
    let mut copy = OutgoingMessage::new(message.body.clone());
    copy.attributes = message.attributes.clone();
    copy.attributes.remove(ATTR_DEAD_LETTER_REASON);
    copy
}

/// Splits messages into runs that each fit one SendMessageBatch: at most ten entries and
/// [`MAX_MESSAGE_BYTES`] in total.
fn size_groups(messages: &[OutgoingMessage]) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, message) in messages.iter().enumerate() {
        let size = message.size_bytes();
        if i > start && (i - start == MAX_BATCH_ENTRIES || bytes + size > MAX_MESSAGE_BYTES) {
            groups.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < messages.len() {
        groups.push(start..messages.len());
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_entry_and_byte_limits() {
        let small = vec![OutgoingMessage::new("x"); 23];
        assert_eq!(size_groups(&small), vec![0..10, 10..20, 20..23]);
        let big = OutgoingMessage::new("y".repeat(100 * 1024));
        assert_eq!(size_groups(&[big.clone(), big.clone(), big]), vec![0..2, 2..3]);
        assert!(size_groups(&[]).is_empty());
    }

    #[test]
    fn the_copy_drops_the_reason_and_keeps_the_rest() {
        let message = ReceivedMessage {
            message_id: "m".into(),
            receipt_handle: ReceiptHandle("r".into()),
            body: "{}".into(),
            attributes: BTreeMap::from([
                (ATTR_DEAD_LETTER_REASON.to_owned(), "poison".to_owned()),
                (crate::ATTR_SCHEMA_VERSION.to_owned(), "1".to_owned()),
            ]),
            receive_count: 1,
            sent_at: SystemTime::now(),
        };
        let copy = returning_copy(&message);
        assert_eq!(copy.body, "{}");
        assert_eq!(copy.attributes.keys().collect::<Vec<_>>(), [crate::ATTR_SCHEMA_VERSION]);
    }
}
