//! [`Consumer`] over SQS.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName,
};

use super::batch::{EntryAnswers, FailedEntry, match_entries};
use super::error::{Call, from_sdk_error};
use crate::check_message;
use crate::{
    BusError, Consumer, EntryResult, MAX_BATCH_ENTRIES, MAX_DELAY, MAX_VISIBILITY, MAX_WAIT, MessageId,
    OutgoingMessage, QueueStats, ReceiptHandle, ReceivedMessage, VisibilityChange, check_batch_size,
};

/// Longest an SQS call may take before the connection is treated as hung. A long poll answers within
/// [`MAX_WAIT`] (20 s); ten more seconds cover a slow network. Applied only when the configuration sets no
/// attempt timeout of its own.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(MAX_WAIT.as_secs() + 10);

/// Consumes one SQS queue and knows its dead-letter queue.
///
/// Needs, on the queue: `sqs:ReceiveMessage`, `sqs:DeleteMessage`, `sqs:ChangeMessageVisibility`,
/// `sqs:GetQueueAttributes`; on the dead-letter queue: `sqs:SendMessage` and `sqs:GetQueueAttributes`.
/// Cheap to clone: the SDK client shares one connection pool.
///
/// [`Consumer::stats`] leaves `oldest_age` empty: SQS has no API for the age of the oldest message (it is the
/// CloudWatch metric `ApproximateAgeOfOldestMessage`, published once a minute), and receiving a message to
/// look at its timestamp would hide it from the workers.
#[derive(Debug, Clone)]
pub struct AwsConsumer {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_url: Option<String>,
}

impl AwsConsumer {
    /// A consumer of `queue_url` using `config` (see [`super::config_from_env`]), without a dead-letter queue
    /// until [`AwsConsumer::with_dead_letter_queue`] names one.
    pub fn new(config: &SdkConfig, queue_url: impl Into<String>) -> Self {
        let timeouts = config.timeout_config().cloned().unwrap_or_else(|| TimeoutConfig::builder().build());
        let mut sqs = aws_sdk_sqs::config::Builder::from(config);
        if timeouts.operation_attempt_timeout().is_none() {
            sqs =
                sqs.timeout_config(timeouts.to_builder().operation_attempt_timeout(ATTEMPT_TIMEOUT).build());
        }
        Self {
            client: aws_sdk_sqs::Client::from_conf(sqs.build()),
            queue_url: queue_url.into(),
            dead_letter_url: None,
        }
    }

    /// Names the dead-letter queue that [`Consumer::send_to_dead_letter`] sends to and [`Consumer::stats`]
    /// reports on; normally the queue's redrive target, so poison messages and expired retries end up together.
    pub fn with_dead_letter_queue(mut self, dead_letter_url: impl Into<String>) -> Self {
        self.dead_letter_url = Some(dead_letter_url.into());
        self
    }

    /// The queue consumed.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The SDK client, shared with the dead-letter tools.
    pub(crate) fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    /// The dead-letter queue, if one was named.
    pub fn dead_letter_url(&self) -> Option<&str> {
        self.dead_letter_url.as_deref()
    }

    /// Visible and in-flight message counts of a queue.
    async fn depth(&self, queue_url: &str) -> Result<(u64, u64), BusError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|error| from_sdk_error(error, Call::new("sqs:GetQueueAttributes", queue_url)))?;
        let count = |name: &QueueAttributeName| -> Result<u64, BusError> {
            let value = output.attributes().and_then(|attributes| attributes.get(name));
            value.and_then(|value| value.parse().ok()).ok_or_else(|| {
                BusError::IncompleteResponse(format!(
                    "GetQueueAttributes on {queue_url} answered {name}={value:?}"
                ))
            })
        };
        Ok((
            count(&QueueAttributeName::ApproximateNumberOfMessages)?,
            count(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
        ))
    }
}

#[async_trait]
impl Consumer for AwsConsumer {
    /// SQS waits whole seconds: `wait` is rounded up (zero is a short poll, which may miss messages that are
    /// there; the workers always long-poll).
    async fn receive(&self, max_messages: usize, wait: Duration) -> Result<Vec<ReceivedMessage>, BusError> {
        if !(1..=MAX_BATCH_ENTRIES).contains(&max_messages) {
            return Err(BusError::InvalidParameter(format!(
                "max_messages must be 1 to {MAX_BATCH_ENTRIES}, not {max_messages}"
            )));
        }
        if wait > MAX_WAIT {
            return Err(BusError::InvalidParameter(format!(
                "wait must be at most {MAX_WAIT:?}, not {wait:?}"
            )));
        }
        let wait_seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max_messages as i32)
            .wait_time_seconds(wait_seconds as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|error| from_sdk_error(error, Call::new("sqs:ReceiveMessage", &self.queue_url)))?;
        Ok(output.messages().iter().filter_map(received).collect())
    }

    /// Each handle is sent once; entries SQS fails without it being the sender's fault come back retryable.
    async fn delete_batch(&self, handles: Vec<ReceiptHandle>) -> Result<Vec<EntryResult<()>>, BusError> {
        check_batch_size(handles.len())?;
        let call = Call::new("sqs:DeleteMessage", &self.queue_url);
        let mut batch = EntryAnswers::new(handles.len());
        for (i, handle) in handles.iter().enumerate() {
            if handle.0.is_empty() {
                batch.record(i, Err(BusError::ReceiptHandleInvalid("empty receipt handle".into())));
            }
        }
        let indices = batch.unanswered();
        if indices.is_empty() {
            return batch.finish();
        }
        let entries = indices
            .iter()
            .map(|&i| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&handles[i].0)
                    .build()
                    .map_err(|error| BusError::InvalidParameter(error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sent =
            self.client.delete_message_batch().queue_url(&self.queue_url).set_entries(Some(entries)).send();
        match sent.await {
            Ok(output) => {
                let succeeded = output.successful().iter().map(|entry| (entry.id(), ()));
                let failed = output.failed().iter().map(failed_entry);
                for (i, result) in match_entries(&indices, succeeded, failed, call) {
                    batch.record(i, result);
                }
            }
            Err(error) => batch.record_call_failure(&indices, from_sdk_error(error, call)),
        }
        batch.finish()
    }

    /// Timeouts are rounded up to whole seconds, as SQS counts them. Each change is sent once; entries SQS fails
    /// without it being the sender's fault come back retryable.
    async fn change_visibility_batch(
        &self,
        changes: Vec<VisibilityChange>,
    ) -> Result<Vec<EntryResult<()>>, BusError> {
        check_batch_size(changes.len())?;
        let call = Call::new("sqs:ChangeMessageVisibility", &self.queue_url);
        let mut batch = EntryAnswers::new(changes.len());
        for (i, change) in changes.iter().enumerate() {
            if change.timeout > MAX_VISIBILITY {
                let message = format!("visibility timeout {:?} is over SQS's 12 hours", change.timeout);
                batch.record(i, Err(BusError::InvalidParameter(message)));
            } else if change.receipt_handle.0.is_empty() {
                batch.record(i, Err(BusError::ReceiptHandleInvalid("empty receipt handle".into())));
            }
        }
        let indices = batch.unanswered();
        if indices.is_empty() {
            return batch.finish();
        }
        let entries = indices
            .iter()
            .map(|&i| {
                let timeout = changes[i].timeout;
                let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&changes[i].receipt_handle.0)
                    .visibility_timeout(seconds as i32)
                    .build()
                    .map_err(|error| BusError::InvalidParameter(error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sent = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send();
        match sent.await {
            Ok(output) => {
                let succeeded = output.successful().iter().map(|entry| (entry.id(), ()));
                let failed = output.failed().iter().map(failed_entry);
                for (i, result) in match_entries(&indices, succeeded, failed, call) {
                    batch.record(i, result);
                }
            }
            Err(error) => batch.record_call_failure(&indices, from_sdk_error(error, call)),
        }
        batch.finish()
    }

    async fn send_to_dead_letter(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
        let Some(dead_letter_url) = &self.dead_letter_url else {
            return Err(BusError::Fatal {
                code: "NoDeadLetterQueue".into(),
                message: format!(
                    "the consumer of {} was started without a dead-letter queue; set --dlq-url / ORDERS_DLQ_URL",
                    self.queue_url
                ),
            });
        };
        check_message(&message)?;
        let output = self
            .client
            .send_message()
            .queue_url(dead_letter_url)
            .message_body(message.body)
            .set_message_attributes(sqs_attributes(&message.attributes)?)
            .send()
            .await
            .map_err(|error| from_sdk_error(error, Call::new("sqs:SendMessage", dead_letter_url)))?;
        output.message_id().map(str::to_owned).ok_or_else(|| {
            BusError::IncompleteResponse("SQS acknowledged a send without a message id".into())
        })
    }

    /// SendMessage to the consumed queue with `DelaySeconds`: `delay` clamped to [`MAX_DELAY`] (900 s) and
    /// rounded up to whole seconds, as SQS counts them. Needs `sqs:SendMessage` on the queue.
    async fn requeue(&self, message: OutgoingMessage, delay: Duration) -> Result<MessageId, BusError> {
        check_message(&message)?;
        let delay = delay.min(MAX_DELAY);
        let delay_seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        let output = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(message.body)
            .set_message_attributes(sqs_attributes(&message.attributes)?)
            .delay_seconds(delay_seconds as i32)
            .send()
            .await
            .map_err(|error| from_sdk_error(error, Call::new("sqs:SendMessage", &self.queue_url)))?;
        output.message_id().map(str::to_owned).ok_or_else(|| {
            BusError::IncompleteResponse("SQS acknowledged a send without a message id".into())
        })
    }

    /// Two GetQueueAttributes calls (queue and dead-letter queue), made concurrently. The dead-letter depth
    /// counts its in-flight messages too: someone inspecting the DLQ does not make it empty.
    async fn stats(&self) -> Result<QueueStats, BusError> {
        let dead_letter = async {
            match &self.dead_letter_url {
                Some(url) => self.depth(url).await.map(|(visible, in_flight)| Some(visible + in_flight)),
                None => Ok(None),
            }
        };
        let (queue, dead_letter) = tokio::join!(self.depth(&self.queue_url), dead_letter);
        let (visible, in_flight) = queue?;
        Ok(QueueStats { visible, in_flight, oldest_age: None, dead_letter: dead_letter? })
    }
}

pub(crate) fn failed_entry(entry: &aws_sdk_sqs::types::BatchResultErrorEntry) -> FailedEntry<'_> {
    FailedEntry {
        id: entry.id(),
        code: entry.code(),
        message: entry.message(),
        sender_fault: entry.sender_fault(),
    }
}

/// Converts an SQS message. A message without an id or receipt handle cannot be acknowledged; SQS never sends
/// one, so it is logged and skipped (it reappears after its visibility timeout if it was real).
fn received(message: &Message) -> Option<ReceivedMessage> {
    let (Some(message_id), Some(receipt_handle)) = (message.message_id(), message.receipt_handle()) else {
        tracing::warn!(?message, "SQS returned a message without an id or receipt handle; skipped");
        return None;
    };
    let system = |name: MessageSystemAttributeName| message.attributes().and_then(|all| all.get(&name));
    let receive_count =
        system(MessageSystemAttributeName::ApproximateReceiveCount).and_then(|count| count.parse().ok());
    let sent_at = system(MessageSystemAttributeName::SentTimestamp)
        .and_then(|millis| millis.parse().ok())
        .map(|millis| UNIX_EPOCH + Duration::from_millis(millis));
    let attributes: BTreeMap<String, String> = message
        .message_attributes()
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| Some((name.clone(), value.string_value()?.to_owned())))
        .collect();
    Some(ReceivedMessage {
        message_id: message_id.to_owned(),
        receipt_handle: ReceiptHandle(receipt_handle.to_owned()),
        body: message.body().unwrap_or_default().to_owned(),
        attributes,
        // Both are requested on every receive; the fallbacks only guard against a broker that ignores that.
        receive_count: receive_count.unwrap_or(1),
        sent_at: sent_at.unwrap_or_else(SystemTime::now),
    })
}

/// String attributes in SQS's form.
pub(crate) fn sqs_attributes(
    attributes: &BTreeMap<String, String>,
) -> Result<Option<HashMap<String, MessageAttributeValue>>, BusError> {
    if attributes.is_empty() {
        return Ok(None);
    }
    attributes
        .iter()
        .map(|(name, value)| {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|error| BusError::InvalidParameter(error.to_string()))?;
            Ok((name.clone(), value))
        })
        .collect::<Result<HashMap<_, _>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_an_sqs_message_with_its_system_attributes() {
        let message = Message::builder()
            .message_id("m-1")
            .receipt_handle("r-1")
            .body("{}")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "3")
            .attributes(MessageSystemAttributeName::SentTimestamp, "1700000000123")
            .message_attributes(
                crate::ATTR_SCHEMA_VERSION,
                MessageAttributeValue::builder().data_type("String").string_value("1").build().unwrap(),
            )
            .build();
        let received = received(&message).unwrap();
        assert_eq!(received.message_id, "m-1");
        assert_eq!(received.receipt_handle, ReceiptHandle("r-1".into()));
        assert_eq!(received.receive_count, 3);
        assert_eq!(received.sent_at, UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        assert_eq!(received.attributes.get(crate::ATTR_SCHEMA_VERSION).map(String::as_str), Some("1"));
    }

    #[test]
    fn skips_a_message_that_cannot_be_acknowledged() {
        assert_eq!(received(&Message::builder().message_id("m").body("{}").build()), None);
    }

    #[tokio::test]
    async fn sends_each_entry_once_and_reports_what_the_answer_left_out() {
        use crate::aws::scripted_endpoint::ScriptedEndpoint;
        // Entry 0 deleted, entry 1 failed by SQS (not the sender's fault), entry 2 missing from the answer.
        let answer = r#"{"Successful":[{"Id":"0"}],"Failed":[{"Id":"1","Code":"InternalError","SenderFault":false,"Message":"try again"}]}"#;
        let sqs = ScriptedEndpoint::start("application/x-amz-json-1.0", answer.into()).await;
        let consumer = AwsConsumer::new(&sqs.config().await, format!("{}/123456789012/orders", sqs.url));
        let handles = (0..3).map(|i| ReceiptHandle(format!("r-{i}"))).collect();
        let results = consumer.delete_batch(handles).await.unwrap();
        assert_eq!(results[0], Ok(()));
        assert!(
            matches!(&results[1], Err(BusError::Transient { code, .. }) if code == "InternalError"),
            "{:?}",
            results[1]
        );
        assert!(matches!(&results[2], Err(BusError::IncompleteResponse(_))), "{:?}", results[2]);
        assert!(results[1..].iter().all(|result| result.as_ref().is_err_and(BusError::is_retryable)));
        let requests = sqs.requests();
        assert_eq!(requests.len(), 1, "failed entries are the caller's to resend: {requests:?}");
        assert!(requests[0].contains("r-1") && requests[0].contains("r-2"), "{}", requests[0]);
    }
}
