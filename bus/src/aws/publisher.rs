//! [`Publisher`] over SNS.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};

use super::batch::{EntryAnswers, FailedEntry, match_entries};
use super::error::{Call, from_sdk_error};
use crate::check_message;
use crate::{
    BusError, EntryResult, MAX_BATCH_ENTRIES, MAX_MESSAGE_BYTES, MessageId, OutgoingMessage, Publisher,
    check_batch_size,
};

/// Publishes to one SNS topic.
///
/// Needs `sns:Publish` on the topic (PublishBatch is authorised by the same action). Cheap to clone: the SDK
/// client shares one connection pool.
#[derive(Debug, Clone)]
pub struct AwsPublisher {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl AwsPublisher {
    /// A publisher to `topic_arn` using `config` (see [`super::config_from_env`]).
    pub fn new(config: &SdkConfig, topic_arn: impl Into<String>) -> Self {
        Self { client: aws_sdk_sns::Client::new(config), topic_arn: topic_arn.into() }
    }

    /// The topic this publisher publishes to.
    pub fn topic_arn(&self) -> &str {
        &self.topic_arn
    }

    fn call(&self) -> Call<'_> {
        Call::new("sns:Publish", &self.topic_arn)
    }

    /// One Publish call for an already checked message.
    async fn publish_checked(&self, message: &OutgoingMessage) -> Result<MessageId, BusError> {
        let output = self
            .client
            .publish()
            .topic_arn(&self.topic_arn)
            .message(&message.body)
            .set_message_attributes(sns_attributes(&message.attributes)?)
            .send()
            .await
            .map_err(|error| from_sdk_error(error, self.call()))?;
        output.message_id().map(str::to_owned).ok_or_else(|| {
            BusError::IncompleteResponse("SNS acknowledged a publish without a message id".into())
        })
    }

    /// Sends the entries at `indices` in one call: Publish for one entry, PublishBatch for more.
    async fn send(
        &self,
        messages: &[OutgoingMessage],
        indices: &[usize],
    ) -> Result<Vec<(usize, EntryResult<MessageId>)>, BusError> {
        if let [only] = indices {
            return Ok(vec![(*only, Ok(self.publish_checked(&messages[*only]).await?))]);
        }
        let entries = indices
            .iter()
            .map(|&i| {
                PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(&messages[i].body)
                    .set_message_attributes(sns_attributes(&messages[i].attributes)?)
                    .build()
                    .map_err(|error| BusError::InvalidParameter(error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .publish_batch()
            .topic_arn(&self.topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await
            .map_err(|error| from_sdk_error(error, self.call()))?;
        let succeeded = output
            .successful()
            .iter()
            .filter_map(|entry| Some((entry.id()?, entry.message_id()?.to_owned())));
        let failed = output.failed().iter().map(|entry| FailedEntry {
            id: entry.id(),
            code: entry.code(),
            message: entry.message(),
            sender_fault: entry.sender_fault(),
        });
        Ok(match_entries(indices, succeeded, failed, self.call()))
    }
}

#[async_trait]
impl Publisher for AwsPublisher {
    async fn publish(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
        check_message(&message)?;
        self.publish_checked(&message).await
    }

    /// Entries that break an SNS limit fail alone without being sent; the rest go out once, in as few
    /// PublishBatch calls as SNS's limits allow (normally one). Entries SNS fails without it being the sender's
    /// fault come back retryable, for the caller to send again.
    async fn publish_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<MessageId>>, BusError> {
        check_batch_size(messages.len())?;
        let mut batch = EntryAnswers::new(messages.len());
        for (i, message) in messages.iter().enumerate() {
            if let Err(error) = check_message(message) {
                batch.record(i, Err(error));
            }
        }
        for call in pack(&messages, &batch.unanswered()) {
            match self.send(&messages, &call).await {
                Ok(results) => results.into_iter().for_each(|(i, result)| batch.record(i, result)),
                Err(error) => batch.record_call_failure(&call, error),
            }
        }
        batch.finish()
    }
}

/// Splits `indices` into calls of at most [`MAX_BATCH_ENTRIES`] entries and [`MAX_MESSAGE_BYTES`] in total
/// (SNS's PublishBatch limits), keeping their order.
fn pack(messages: &[OutgoingMessage], indices: &[usize]) -> Vec<Vec<usize>> {
    let mut calls: Vec<Vec<usize>> = Vec::new();
    let mut call_bytes = 0;
    for &i in indices {
        let size = messages[i].size_bytes();
        match calls.last_mut() {
            Some(call) if call.len() < MAX_BATCH_ENTRIES && call_bytes + size <= MAX_MESSAGE_BYTES => {
                call.push(i);
                call_bytes += size;
            }
            _ => {
                calls.push(vec![i]);
                call_bytes = size;
            }
        }
    }
    calls
}

/// String attributes in SNS's form; SNS forwards them as SQS message attributes (raw delivery) or inside the
/// envelope's `MessageAttributes`.
fn sns_attributes(
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

    fn sized(bytes: usize) -> OutgoingMessage {
        OutgoingMessage::new("x".repeat(bytes))
    }

    #[test]
    fn packs_ten_small_messages_into_one_call() {
        let messages: Vec<_> = (0..10).map(|_| sized(500)).collect();
        assert_eq!(pack(&messages, &(0..10).collect::<Vec<_>>()), vec![(0..10).collect::<Vec<_>>()]);
    }

    #[test]
    fn splits_calls_at_the_total_size_limit_keeping_order() {
        let messages = vec![sized(100 * 1024), sized(100 * 1024), sized(100 * 1024), sized(10)];
        assert_eq!(pack(&messages, &[0, 1, 2, 3]), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(pack(&messages, &[0, 2]), vec![vec![0, 2]]);
    }

    #[test]
    fn attributes_are_sns_strings() {
        let message = OutgoingMessage::new("x").with_attribute(crate::ATTR_SCHEMA_VERSION, "1");
        let attributes = sns_attributes(&message.attributes).unwrap().unwrap();
        let value = &attributes[crate::ATTR_SCHEMA_VERSION];
        assert_eq!((value.data_type(), value.string_value()), ("String", Some("1")));
        assert_eq!(sns_attributes(&BTreeMap::new()).unwrap(), None);
    }

    #[tokio::test]
    async fn publishes_each_entry_once_and_reports_what_the_answer_left_out() {
        use crate::aws::scripted_endpoint::ScriptedEndpoint;
        // Entry 0 published, entry 1 failed by SNS (not the sender's fault), entry 2 missing from the answer.
        let answer = "<PublishBatchResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><PublishBatchResult>\
            <Successful><member><Id>0</Id><MessageId>m-0</MessageId></member></Successful>\
            <Failed><member><Id>1</Id><Code>InternalError</Code><SenderFault>false</SenderFault></member></Failed>\
            </PublishBatchResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></PublishBatchResponse>";
        let sns = ScriptedEndpoint::start("text/xml", answer.into()).await;
        let publisher = AwsPublisher::new(&sns.config().await, "arn:aws:sns:us-east-1:123456789012:orders");
        let messages = (0..3).map(|i| OutgoingMessage::new(format!("order {i}"))).collect();
        let results = publisher.publish_batch(messages).await.unwrap();
        assert_eq!(results[0], Ok("m-0".to_owned()));
        assert!(
            matches!(&results[1], Err(BusError::Transient { code, .. }) if code == "InternalError"),
            "{:?}",
            results[1]
        );
        assert!(matches!(&results[2], Err(BusError::IncompleteResponse(_))), "{:?}", results[2]);
        let requests = sns.requests();
        assert_eq!(requests.len(), 1, "failed entries are the caller's to resend: {requests:?}");
        assert!(requests[0].contains("Action=PublishBatch"), "{}", requests[0]);
    }
}
