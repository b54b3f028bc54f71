//! How an order travels: a topic that orders are published to, and a queue that workers consume from.
//!
//! The *port* ([`Publisher`] and [`Consumer`]) is the only thing the receiver and the worker know about. Two
//! adapters implement it:
//!
//! - [`embedded`]: an in-process SNS topic fanning out to in-process SQS-like queues with real SQS semantics
//!   (visibility timeout, receipt handles, receive counts, redrive to a dead-letter queue, long polling,
//!   retention, size and batch limits). It is the default for local runs, tests and experiments, and it runs on
//!   tokio time so tests can `tokio::time::pause()`.
//! - [`aws`]: the same port over `aws-sdk-sns` / `aws-sdk-sqs`, plus provisioning of the topic and queues for
//!   local emulators.
//!
//! The port speaks SQS's vocabulary on purpose: at-least-once delivery, batches of at most
//! [`MAX_BATCH_ENTRIES`], per-entry results for batch calls, receipt handles that go stale on redelivery. Code
//! written against it behaves the same on the embedded bus and on AWS.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub mod aws;
pub mod dead_letters;
pub mod embedded;
mod message_rules;

pub use dead_letters::{DeadLetter, DeadLetters, RedriveEvent, RedriveMethod, RedriveOptions, RedriveReport};

pub use message_rules::{check_message, is_sqs_character};

/// SQS and SNS accept at most ten entries per batch call (PublishBatch, ReceiveMessage, DeleteMessageBatch,
/// ChangeMessageVisibilityBatch).
pub const MAX_BATCH_ENTRIES: usize = 10;

/// The largest message body plus attributes that SNS and SQS accept: 256 KiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The orders queue's settings as `terraform/` deploys them, defined once: the embedded stack runs with them,
/// `aws::provision` creates them on an emulator, and the worker's defaults assume them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// How long a received order stays invisible before another consumer may take it (SQS default 30 s). It
    /// must exceed the time to process one order, or orders are processed twice.
    pub visibility_timeout: Duration,
    /// How many receives an order gets before it is moved to the dead-letter queue (5): enough to ride out
    /// transient failures, few enough that a poison message does not cycle for long.
    pub max_receive_count: u32,
    /// How long an unprocessed order is kept (4 days, the SQS default: a long weekend of worker outage).
    pub retention: Duration,
    /// How long a dead-lettered order is kept (14 days, the SQS maximum). Longer than `retention` because a
    /// moved message keeps its original enqueue time, and an operator needs time to look at it.
    pub dead_letter_retention: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: 5,
            retention: Duration::from_secs(4 * 24 * 60 * 60),
            dead_letter_retention: Duration::from_secs(14 * 24 * 60 * 60),
        }
    }
}

/// SQS caps a long poll at 20 seconds.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// SQS caps a visibility timeout at 12 hours.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// SQS caps a message's delivery delay (`DelaySeconds`) at 15 minutes; [`Consumer::requeue`] clamps to it.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

/// Message attribute naming the wire schema version of the body, so consumers can route or reject by version
/// without parsing the body.
pub const ATTR_SCHEMA_VERSION: &str = "schema_version";

/// Message attribute recording why a message was moved to the dead-letter queue by a consumer (poison messages).
pub const ATTR_DEAD_LETTER_REASON: &str = "dead_letter_reason";

/// A message to publish: a body and string attributes (SNS/SQS message attributes of type `String`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingMessage {
    /// The message body, passed through unchanged (raw delivery) or wrapped in the SNS JSON envelope.
    pub body: String,
    /// String message attributes; ordered so that sizes and envelopes are deterministic.
    pub attributes: BTreeMap<String, String>,
}

impl OutgoingMessage {
    /// A message with a body and no attributes.
    pub fn new(body: impl Into<String>) -> Self {
        Self { body: body.into(), attributes: BTreeMap::new() }
    }

    /// Adds a string attribute.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Size as SNS/SQS count it against [`MAX_MESSAGE_BYTES`]: body plus attribute names, types and values.
    pub fn size_bytes(&self) -> usize {
        const ATTRIBUTE_TYPE: usize = "String".len();
        self.body.len()
            + self.attributes.iter().map(|(k, v)| k.len() + ATTRIBUTE_TYPE + v.len()).sum::<usize>()
    }
}

/// The broker's identifier of a published or received message.
pub type MessageId = String;

/// An opaque token proving one particular receive of a message. Deleting or changing visibility needs it; a
/// handle from an earlier receive goes stale once the message has been delivered again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReceiptHandle(pub String);

impl std::fmt::Display for ReceiptHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One delivery of a message from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The broker's id of the message; the same on every redelivery.
    pub message_id: MessageId,
    /// The token for deleting or extending this delivery.
    pub receipt_handle: ReceiptHandle,
    /// The body as delivered (raw, or the SNS JSON envelope when the subscription is not raw).
    pub body: String,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
    /// How many times the message has been received, this delivery included (SQS `ApproximateReceiveCount`).
    pub receive_count: u32,
    /// When the message was first enqueued (SQS `SentTimestamp`).
    pub sent_at: SystemTime,
}

/// A visibility change for one delivery, as an entry of [`Consumer::change_visibility_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityChange {
    /// The delivery to change.
    pub receipt_handle: ReceiptHandle,
    /// How long from now the message stays invisible; zero makes it visible at once.
    pub timeout: Duration,
}

/// A snapshot of a queue's depth, for load tests, `/stats` and autoscaling decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// Messages waiting to be received (SQS `ApproximateNumberOfMessages`).
    pub visible: u64,
    /// Messages received and not yet deleted or returned (SQS `ApproximateNumberOfMessagesNotVisible`).
    pub in_flight: u64,
    /// Age of the oldest message still in the queue, if any (CloudWatch `ApproximateAgeOfOldestMessage`).
    pub oldest_age: Option<Duration>,
    /// Messages in the dead-letter queue, when the queue has one and it is known.
    pub dead_letter: Option<u64>,
}

impl QueueStats {
    /// The true backlog: what is waiting plus what is being worked on.
    pub fn backlog(&self) -> u64 {
        self.visible + self.in_flight
    }
}

/// What can go wrong talking to a broker. Every variant says whether retrying can help ([`BusError::is_retryable`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The message is over [`MAX_MESSAGE_BYTES`].
    #[error("message is {size} bytes; SNS/SQS accept at most {limit}")]
    MessageTooLarge {
        /// The message's size in bytes.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// A batch call had no entries or more than [`MAX_BATCH_ENTRIES`].
    #[error("a batch must have 1 to {max} entries; this one has {len}", max = MAX_BATCH_ENTRIES)]
    InvalidBatchSize {
        /// The number of entries given.
        len: usize,
    },
    /// The receipt handle is malformed, or stale (the message was delivered again, deleted, or expired).
    #[error("receipt handle is invalid or stale: {0}")]
    ReceiptHandleInvalid(String),
    /// A parameter is outside what the broker accepts (wait time, visibility timeout, max messages, ...).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// The broker did not answer in time; the operation may or may not have taken effect.
    #[error("broker call timed out")]
    Timeout,
    /// A passing failure the broker reported (throttling, 5xx), or a connection that failed on the way to it:
    /// retrying later can succeed.
    #[error("transient broker error {code}: {message}")]
    Transient {
        /// The broker's error code (e.g. AWS `ThrottlingException`), kept for logs and metrics; when the broker
        /// could not be reached or its answer could not be read, the SDK's name for that (`DispatchFailure`,
        /// `ResponseError`).
        code: String,
        /// What the broker said.
        message: String,
    },
    /// A failure the broker reported that retrying will not fix (access denied, missing queue): an operator
    /// must act.
    #[error("broker refused {code}: {message}")]
    Fatal {
        /// The broker's error code (e.g. AWS `AccessDenied`), kept for logs and metrics.
        code: String,
        /// What the broker said, and what to do about it.
        message: String,
    },
    /// The broker answered, but its answer did not account for everything asked: an entry of a batch call is in
    /// neither its successful nor its failed list, a batch came back with a different number of results than
    /// entries, or a field the port needs (a message id, a queue attribute, a URL) is missing.
    ///
    /// Whether the request took effect is unknown (an unanswered publish may have been published). Retryable:
    /// asking again can get a whole answer, at the cost of a possible duplicate, which at-least-once consumers
    /// handle anyway.
    #[error("the broker's answer was incomplete: {0}")]
    IncompleteResponse(String),
    /// The sender the entry was handed to (a caller's batcher) stopped before making the call that would carry
    /// it: the broker never saw the entry. Happens only while a service shuts down or is killed.
    ///
    /// Retryable in the sense of [`BusError::is_retryable`]: nothing happened, so the same request can succeed
    /// later through a sender that runs. The stopping sender itself does not retry it; a delete or visibility
    /// change left undone is made good by the queue, which shows the message again after its visibility timeout.
    #[error("not sent: the sender stopped before calling the broker")]
    StoppedBeforeSending,
}

impl BusError {
    /// Whether the same call may succeed if tried again later: a timeout, a transient broker error, an
    /// incomplete answer, or an entry whose sender stopped before sending it.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BusError::Timeout
                | BusError::Transient { .. }
                | BusError::IncompleteResponse(_)
                | BusError::StoppedBeforeSending
        )
    }
}

/// The result of one entry of a batch call: each entry succeeds or fails on its own.
pub type EntryResult<T> = Result<T, BusError>;

/// Publishes messages to a topic (SNS in production, the embedded topic locally).
///
/// A successful return means the broker acknowledged the message: it is durably on its way to every
/// subscribed queue. That acknowledgement is what allows the receiver to answer `202 Accepted`.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message.
    async fn publish(&self, message: OutgoingMessage) -> Result<MessageId, BusError>;

    /// Publishes 1 to [`MAX_BATCH_ENTRIES`] messages in one call. The outer error means the whole call failed;
    /// otherwise the result has one entry per message, in order, each succeeding or failing on its own.
    ///
    /// Adapters send each entry once: an entry that failed retryably ([`BusError::is_retryable`]) is the
    /// caller's to send again, so that a caller's retry budget is the real one. (An SDK below an adapter may
    /// still repeat a whole call that failed; see [`aws`].)
    async fn publish_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<MessageId>>, BusError>;
}

/// Consumes one queue (SQS in production, an embedded queue locally), and knows its dead-letter queue.
#[async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// Receives up to `max_messages` (1 to [`MAX_BATCH_ENTRIES`]), waiting up to `wait` (at most [`MAX_WAIT`])
    /// for the first to arrive; returns early as soon as any are available. Each received message becomes
    /// invisible for the queue's visibility timeout.
    async fn receive(&self, max_messages: usize, wait: Duration) -> Result<Vec<ReceivedMessage>, BusError>;

    /// Deletes 1 to [`MAX_BATCH_ENTRIES`] deliveries; one result per handle, in order. Like every batch call of
    /// the port, each entry is sent once (see [`Publisher::publish_batch`]).
    async fn delete_batch(&self, handles: Vec<ReceiptHandle>) -> Result<Vec<EntryResult<()>>, BusError>;

    /// Changes the visibility of 1 to [`MAX_BATCH_ENTRIES`] deliveries; one result per entry, in order, each
    /// entry sent once.
    async fn change_visibility_batch(
        &self,
        changes: Vec<VisibilityChange>,
    ) -> Result<Vec<EntryResult<()>>, BusError>;

    /// Sends a message straight to this queue's dead-letter queue (used for poison messages, with
    /// [`ATTR_DEAD_LETTER_REASON`] set). The caller still deletes the original delivery.
    async fn send_to_dead_letter(&self, message: OutgoingMessage) -> Result<MessageId, BusError>;

    /// The queue's current depth.
    async fn stats(&self) -> Result<QueueStats, BusError>;

    /// Sends a fresh copy of `message` to this consumer's own queue (SQS `SendMessage` with `DelaySeconds`),
    /// invisible for `delay`, so its receive count starts again at 0. A consumer hands back a message whose
    /// receives are nearly used up for a reason that is not the message's fault (a payment outage) without
    /// dead-lettering it; the caller still deletes the original delivery.
    ///
    /// `delay` is clamped to [`MAX_DELAY`] (15 minutes, SQS's limit). The copy gets a new message id and
    /// enqueue time. The default refuses, for consumers that cannot send to their own queue (wrappers and
    /// test doubles); both adapters implement it.
    async fn requeue(&self, message: OutgoingMessage, delay: Duration) -> Result<MessageId, BusError> {
        let _ = (message, delay);
        Err(BusError::Fatal {
            code: "RequeueUnsupported".into(),
            message: "this consumer cannot send to its own queue".into(),
        })
    }

    /// Deletes one delivery.
    async fn delete(&self, handle: ReceiptHandle) -> Result<(), BusError> {
        single(self.delete_batch(vec![handle]).await?)
    }

    /// Changes the visibility of one delivery.
    async fn change_visibility(&self, handle: ReceiptHandle, timeout: Duration) -> Result<(), BusError> {
        single(
            self.change_visibility_batch(vec![VisibilityChange { receipt_handle: handle, timeout }]).await?,
        )
    }
}

/// Unwraps the one entry of a one-entry batch result.
fn single<T>(mut results: Vec<EntryResult<T>>) -> Result<T, BusError> {
    match (results.pop(), results.is_empty()) {
        (Some(result), true) => result,
        _ => Err(BusError::IncompleteResponse(
            "a one-entry batch came back with a different number of results".into(),
        )),
    }
}

/// Checks a batch's entry count against SQS/SNS limits, before any call is made.
pub fn check_batch_size(len: usize) -> Result<(), BusError> {
    if (1..=MAX_BATCH_ENTRIES).contains(&len) { Ok(()) } else { Err(BusError::InvalidBatchSize { len }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_entry_batch_must_come_back_with_one_result() {
        assert_eq!(single(vec![Ok(7)]), Ok(7));
        for results in [vec![], vec![Ok(1), Ok(2)]] {
            let error = single(results).unwrap_err();
            assert!(matches!(error, BusError::IncompleteResponse(_)), "{error:?}");
            assert!(error.is_retryable());
        }
    }

    #[test]
    fn local_conditions_keep_their_retry_decision() {
        assert!(BusError::StoppedBeforeSending.is_retryable());
        assert!(BusError::IncompleteResponse("entry 3 unanswered".into()).is_retryable());
        assert!(BusError::Timeout.is_retryable());
        assert!(BusError::Transient { code: "Throttling".into(), message: String::new() }.is_retryable());
        assert!(!BusError::Fatal { code: "AccessDenied".into(), message: String::new() }.is_retryable());
        assert!(!BusError::ReceiptHandleInvalid("stale".into()).is_retryable());
    }
}
