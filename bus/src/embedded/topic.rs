//! An in-process SNS topic: every publish is copied to each subscribed queue, raw or in the SNS JSON envelope.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::queue::message_id;
use crate::{
    BusError, EntryResult, MAX_MESSAGE_BYTES, MessageId, OutgoingMessage, Publisher, check_batch_size,
};

/// The account and region in the ARNs the embedded topic makes up (the ones moto and LocalStack use).
const ARN_PREFIX: &str = "arn:aws:sns:us-east-1:000000000000";

/// How a subscription hands messages to its queue (the SNS `RawMessageDelivery` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The queue gets the published body unchanged, and the message attributes as SQS message attributes.
    Raw,
    /// The queue gets the SNS JSON envelope (`"Type": "Notification"`, the body in `"Message"`, the attributes
    /// in `"MessageAttributes"`), and no SQS message attributes: what SNS does without raw delivery.
    Enveloped,
}

/// An in-process SNS standard topic. Cloning gives another handle to the same topic.
#[derive(Clone)]
pub struct EmbeddedTopic {
    shared: Arc<TopicShared>,
}

struct TopicShared {
    name: String,
    arn: String,
    /// Random per topic; part of message ids.
    tag: u64,
    next_seq: AtomicU64,
    /// Read on every publish, written only by `subscribe` and `inject_failure`.
    state: RwLock<TopicState>,
}

struct TopicState {
    subscriptions: Vec<Subscription>,
    /// While set, every publish fails with this error.
    failure: Option<BusError>,
}

struct Subscription {
    queue: super::EmbeddedQueue,
    delivery: Delivery,
    arn: String,
}

impl EmbeddedTopic {
    /// Creates a topic with no subscriptions (publishes to it succeed and reach nobody, as on SNS).
    pub fn new(name: &str) -> Self {
        Self {
            shared: Arc::new(TopicShared {
                name: name.to_owned(),
                arn: format!("{ARN_PREFIX}:{name}"),
                tag: Uuid::new_v4().as_u64_pair().0,
                next_seq: AtomicU64::new(1),
                state: RwLock::new(TopicState { subscriptions: Vec::new(), failure: None }),
            }),
        }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The topic's ARN, as it appears in the envelope's `TopicArn`.
    pub fn arn(&self) -> &str {
        &self.shared.arn
    }

    /// Subscribes a queue: from now on every publish is copied to it. Like SNS, subscribing a queue that is
    /// already subscribed keeps the one subscription (here with the new delivery mode) instead of adding a
    /// second copy.
    pub fn subscribe(&self, queue: &super::EmbeddedQueue, delivery: Delivery) {
        let mut state = self.shared.state.write().unwrap_or_else(PoisonError::into_inner);
        match state.subscriptions.iter_mut().find(|subscription| subscription.queue.is_same_queue(queue)) {
            Some(existing) => existing.delivery = delivery,
            None => {
                let arn = format!("{}:{}", self.shared.arn, Uuid::new_v4());
                state.subscriptions.push(Subscription { queue: queue.clone(), delivery, arn });
            }
        }
    }

    /// Makes every publish fail with `failure` until called again with `None`; for testing how publishers cope
    /// with broker errors.
    pub fn inject_failure(&self, failure: Option<BusError>) {
        self.shared.state.write().unwrap_or_else(PoisonError::into_inner).failure = failure;
    }

    /// Publishes one message that has passed the checks, to every subscription.
    fn fan_out(&self, state: &TopicState, message: OutgoingMessage) -> MessageId {
        let id =
            message_id(self.shared.tag, self.shared.next_seq.fetch_add(1, Ordering::Relaxed)).to_string();
        let sent_at = SystemTime::now();
        let Some((last, others)) = state.subscriptions.split_last() else { return id };
        for subscription in others {
            self.deliver(subscription, &id, message.clone(), sent_at);
        }
        // The last subscription takes the message itself: with one raw subscriber nothing is copied.
        self.deliver(last, &id, message, sent_at);
        id
    }

    fn deliver(&self, subscription: &Subscription, id: &str, message: OutgoingMessage, sent_at: SystemTime) {
        match subscription.delivery {
            Delivery::Raw => subscription.queue.deliver(message.body, message.attributes, sent_at),
            Delivery::Enveloped => {
                let envelope = envelope(&self.shared.arn, &subscription.arn, id, &message, sent_at);
                subscription.queue.deliver(envelope, BTreeMap::new(), sent_at);
            }
        }
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, TopicState> {
        self.shared.state.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for EmbeddedTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedTopic").field("arn", &self.shared.arn).finish_non_exhaustive()
    }
}

fn check_failure(state: &TopicState) -> Result<(), BusError> {
    match &state.failure {
        Some(failure) => Err(failure.clone()),
        None => Ok(()),
    }
}

#[async_trait]
impl Publisher for EmbeddedTopic {
    async fn publish(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
        let state = self.read_state();
        check_failure(&state)?;
        crate::check_message(&message)?;
        Ok(self.fan_out(&state, message))
    }

    async fn publish_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<MessageId>>, BusError> {
        let state = self.read_state();
        check_failure(&state)?;
        check_batch_size(messages.len())?;
        // SNS rejects the whole batch (BatchRequestTooLong) when the entries together are over the limit, which
        // also covers any single entry over it.
        let total: usize = messages.iter().map(OutgoingMessage::size_bytes).sum();
        if total > MAX_MESSAGE_BYTES {
            return Err(BusError::MessageTooLarge { size: total, limit: MAX_MESSAGE_BYTES });
        }
        Ok(messages.into_iter().map(|message| Ok(self.fan_out(&state, message))).collect())
    }
}

/// The SNS JSON envelope delivered to a subscription without raw delivery.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope<'a> {
    r#type: &'static str,
    message_id: &'a str,
    topic_arn: &'a str,
    subject: Option<&'a str>,
    message: &'a str,
    timestamp: String,
    signature_version: &'static str,
    signature: &'static str,
    #[serde(rename = "SigningCertURL")]
    signing_cert_url: &'static str,
    #[serde(rename = "UnsubscribeURL")]
    unsubscribe_url: String,
    /// SNS leaves the key out when there are no attributes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    message_attributes: BTreeMap<&'a str, EnvelopeAttribute<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EnvelopeAttribute<'a> {
    r#type: &'static str,
    value: &'a str,
}

/// Wraps a message the way SNS does for a subscription without raw delivery. The signature is a placeholder:
/// nothing in-process can verify it, and consumers here do not.
fn envelope(
    topic_arn: &str,
    subscription_arn: &str,
    message_id: &str,
    message: &OutgoingMessage,
    sent_at: SystemTime,
) -> String {
    let envelope = Envelope {
        r#type: "Notification",
        message_id,
        topic_arn,
        subject: None,
        message: &message.body,
        timestamp: DateTime::<Utc>::from(sent_at).to_rfc3339_opts(SecondsFormat::Millis, true),
        signature_version: "1",
        signature: "EMBEDDED",
        signing_cert_url: "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-embedded.pem",
        unsubscribe_url: format!(
            "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={subscription_arn}"
        ),
        message_attributes: message
            .attributes
            .iter()
            .map(|(name, value)| (name.as_str(), EnvelopeAttribute { r#type: "String", value }))
            .collect(),
    };
    serde_json::to_string(&envelope).expect("an envelope of strings always serializes")
}
