//! Creates the messaging resources of `terraform/` against any SNS/SQS endpoint, for local emulators (moto,
//! LocalStack) and tests: the orders topic, the orders queue with its redrive policy, the dead-letter queue that
//! only that queue may redrive into, the queue policy letting only that topic send, and the raw-delivery
//! subscription.
//!
//! [`provision`] is idempotent: running it again finds the same resources (and converges their attributes to
//! the spec), so `loadtest infra up` can be run before every session. The KMS key that encrypts the topic on
//! AWS is not created here (emulators do not need it); the queues use SQS-managed encryption, as on AWS.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::json;

use super::error::{Call, from_sdk_error};
use crate::{BusError, MAX_VISIBILITY, MAX_WAIT, QueueSettings};

/// What to create. The settings default to [`QueueSettings::default`], which `terraform/variables.tf` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionSpec {
    /// SNS topic the receiver publishes orders to.
    pub topic_name: String,
    /// SQS queue the workers consume.
    pub queue_name: String,
    /// SQS queue that receives messages received too often (redrive) and poison messages.
    pub dead_letter_queue_name: String,
    /// SQS queue where SNS puts a message it could not deliver to the orders queue after its retries (the
    /// subscription's redrive policy): an order answered 202 is never dropped by the SNS → SQS hop.
    pub undelivered_queue_name: String,
    /// How long a received message stays invisible (SQS default 30 s); tests shorten it to see redelivery.
    pub visibility_timeout: Duration,
    /// How long an unprocessed order is kept (4 days, enough to survive a long weekend of worker outage).
    pub retention: Duration,
    /// The queue's default long-poll wait (20 s, the maximum: fewer empty receives, lower cost).
    pub receive_wait: Duration,
    /// How long dead letters are kept (14 days, the maximum: a moved message keeps its original enqueue
    /// time, so the DLQ must keep messages longer than the queue did).
    pub dead_letter_retention: Duration,
    /// Deliveries after which SQS moves a message to the dead-letter queue (5: rides out a few crashes or
    /// gateway outages, yet parks a poison message within minutes).
    pub max_receive_count: u32,
}

impl ProvisionSpec {
    /// The stack named like Terraform's `var.name`: topic and queue `{prefix}-orders`, dead-letter queue
    /// `{prefix}-orders-dlq`, with the default settings.
    pub fn named(prefix: &str) -> Self {
        let settings = QueueSettings::default();
        Self {
            topic_name: format!("{prefix}-orders"),
            queue_name: format!("{prefix}-orders"),
            dead_letter_queue_name: format!("{prefix}-orders-dlq"),
            undelivered_queue_name: format!("{prefix}-orders-undelivered"),
            visibility_timeout: settings.visibility_timeout,
            retention: settings.retention,
            receive_wait: MAX_WAIT,
            dead_letter_retention: settings.dead_letter_retention,
            max_receive_count: settings.max_receive_count,
        }
    }

    /// Checks the values against SQS's limits before anything is created.
    fn check(&self) -> Result<(), BusError> {
        const MIN_RETENTION: Duration = Duration::from_secs(60);
        const MAX_RETENTION: Duration = Duration::from_secs(14 * 24 * 60 * 60);
        let problems = [
            (self.visibility_timeout > MAX_VISIBILITY, "visibility_timeout must be at most 12 hours"),
            (self.receive_wait > MAX_WAIT, "receive_wait must be at most 20 seconds"),
            (
                !(MIN_RETENTION..=MAX_RETENTION).contains(&self.retention),
                "retention must be 1 minute to 14 days",
            ),
            (
                !(MIN_RETENTION..=MAX_RETENTION).contains(&self.dead_letter_retention),
                "dead_letter_retention must be 1 minute to 14 days",
            ),
            (!(1..=1000).contains(&self.max_receive_count), "max_receive_count must be 1 to 1000"),
            (
                self.dead_letter_retention <= self.retention,
                "dead_letter_retention must exceed retention: a message moved to the DLQ keeps its original \
                 enqueue time",
            ),
        ];
        match problems.iter().find(|(broken, _)| *broken) {
            Some((_, problem)) => Err(BusError::InvalidParameter((*problem).into())),
            None => Ok(()),
        }
    }
}

impl Default for ProvisionSpec {
    /// `ProvisionSpec::named("orderflow")`, Terraform's default name.
    fn default() -> Self {
        Self::named("orderflow")
    }
}

/// What [`provision`] created or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The topic's ARN (the receiver's `ORDERS_TOPIC_ARN`).
    pub topic_arn: String,
    /// The queue's URL (the worker's `ORDERS_QUEUE_URL`).
    pub queue_url: String,
    /// The queue's ARN (the subscription endpoint and the queue policy's resource).
    pub queue_arn: String,
    /// The dead-letter queue's URL (the worker's `ORDERS_DLQ_URL`).
    pub dead_letter_url: String,
    /// The dead-letter queue's ARN (the redrive target).
    pub dead_letter_arn: String,
    /// The topic-to-queue subscription.
    pub subscription_arn: String,
    /// The subscription's dead-letter queue (messages SNS could not deliver).
    pub undelivered_url: String,
}

impl Provisioned {
    /// The settings the binaries read, one `NAME=value` line each, ready to paste into a shell or `.env`.
    pub fn env_lines(&self) -> String {
        let mut lines = String::new();
        for (name, value) in [
            ("ORDERS_TOPIC_ARN", &self.topic_arn),
            ("ORDERS_QUEUE_URL", &self.queue_url),
            ("ORDERS_DLQ_URL", &self.dead_letter_url),
        ] {
            let _ = writeln!(lines, "{name}={value}");
        }
        lines
    }
}

/// Creates (or finds) the topic, the dead-letter queue, the queue, their policies, the subscription and its own
/// dead-letter queue for what SNS cannot deliver.
///
/// Needs `sns:CreateTopic`, `sns:ListSubscriptionsByTopic`, `sns:Subscribe`, `sns:SetSubscriptionAttributes`,
/// `sqs:CreateQueue`, `sqs:GetQueueUrl`, `sqs:GetQueueAttributes`, `sqs:SetQueueAttributes`.
pub async fn provision(config: &SdkConfig, spec: &ProvisionSpec) -> Result<Provisioned, BusError> {
    spec.check()?;
    let sns = aws_sdk_sns::Client::new(config);
    let sqs = aws_sdk_sqs::Client::new(config);

    let topic_arn = sns
        .create_topic()
        .name(&spec.topic_name)
        .send()
        .await
        .map_err(|error| from_sdk_error(error, Call::new("sns:CreateTopic", &spec.topic_name)))?
        .topic_arn
        .ok_or_else(|| missing("CreateTopic", "TopicArn"))?;

    let dead_letter_url = ensure_queue(
        &sqs,
        &spec.dead_letter_queue_name,
        HashMap::from([
            (QueueAttributeName::MessageRetentionPeriod, seconds(spec.dead_letter_retention)),
            (QueueAttributeName::SqsManagedSseEnabled, "true".into()),
        ]),
    )
    .await?;
    let dead_letter_arn = queue_arn(&sqs, &dead_letter_url).await?;

    // What SNS cannot deliver after its retries (a queue policy edited by hand, a key it may not use) goes here
    // instead of being discarded; only the orders topic may send to it.
    let undelivered_url = ensure_queue(
        &sqs,
        &spec.undelivered_queue_name,
        HashMap::from([
            (QueueAttributeName::MessageRetentionPeriod, seconds(spec.dead_letter_retention)),
            (QueueAttributeName::SqsManagedSseEnabled, "true".into()),
        ]),
    )
    .await?;
    let undelivered_arn = queue_arn(&sqs, &undelivered_url).await?;
    let undelivered_policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "OrdersTopicDeadLettersUndelivered",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": undelivered_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": topic_arn } },
        }],
    });
    set_queue_attribute(&sqs, &undelivered_url, QueueAttributeName::Policy, undelivered_policy.to_string())
        .await?;

    let redrive_policy =
        json!({ "deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": spec.max_receive_count });
    let queue_url = ensure_queue(
        &sqs,
        &spec.queue_name,
        HashMap::from([
            (QueueAttributeName::VisibilityTimeout, seconds(spec.visibility_timeout)),
            (QueueAttributeName::MessageRetentionPeriod, seconds(spec.retention)),
            (QueueAttributeName::ReceiveMessageWaitTimeSeconds, seconds(spec.receive_wait)),
            (QueueAttributeName::RedrivePolicy, redrive_policy.to_string()),
            (QueueAttributeName::SqsManagedSseEnabled, "true".into()),
        ]),
    )
    .await?;
    let queue_arn = queue_arn(&sqs, &queue_url).await?;

    // Only the orders topic may send to the queue; the policy needs the queue's ARN, hence a second call.
    let queue_policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "OrdersTopicDeliversToOrdersQueue",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": topic_arn } },
        }],
    });
    set_queue_attribute(&sqs, &queue_url, QueueAttributeName::Policy, queue_policy.to_string()).await?;
    // Only the orders queue may redrive into the dead-letter queue.
    let redrive_allow = json!({ "redrivePermission": "byQueue", "sourceQueueArns": [queue_arn] });
    set_queue_attribute(
        &sqs,
        &dead_letter_url,
        QueueAttributeName::RedriveAllowPolicy,
        redrive_allow.to_string(),
    )
    .await?;

    let subscription_arn = ensure_raw_subscription(&sns, &topic_arn, &queue_arn).await?;
    sns.set_subscription_attributes()
        .subscription_arn(&subscription_arn)
        .attribute_name("RedrivePolicy")
        .attribute_value(json!({ "deadLetterTargetArn": undelivered_arn }).to_string())
        .send()
        .await
        .map_err(|error| {
            from_sdk_error(error, Call::new("sns:SetSubscriptionAttributes", &subscription_arn))
        })?;
    Ok(Provisioned {
        topic_arn,
        queue_url,
        queue_arn,
        dead_letter_url,
        dead_letter_arn,
        subscription_arn,
        undelivered_url,
    })
}

/// Deletes what [`provision`] creates, skipping whatever is already gone; returns the ARNs and URLs deleted.
///
/// Needs `sns:ListTopics`, `sns:ListSubscriptionsByTopic`, `sns:Unsubscribe`, `sns:DeleteTopic`,
/// `sqs:GetQueueUrl`, `sqs:GetQueueAttributes`, `sqs:DeleteQueue`. On AWS a deleted queue's name cannot be
/// reused for 60 seconds.
pub async fn teardown(config: &SdkConfig, spec: &ProvisionSpec) -> Result<Vec<String>, BusError> {
    let sns = aws_sdk_sns::Client::new(config);
    let sqs = aws_sdk_sqs::Client::new(config);
    let mut deleted = Vec::new();

    let queue_url = existing_queue_url(&sqs, &spec.queue_name).await?;
    if let Some(topic_arn) = find_topic(&sns, &spec.topic_name).await? {
        if let Some(queue_url) = &queue_url {
            let queue_arn = queue_arn(&sqs, queue_url).await?;
            if let Some(subscription_arn) = find_subscription(&sns, &topic_arn, &queue_arn).await? {
                sns.unsubscribe().subscription_arn(&subscription_arn).send().await.map_err(|error| {
                    from_sdk_error(error, Call::new("sns:Unsubscribe", &subscription_arn))
                })?;
                deleted.push(subscription_arn);
            }
        }
        sns.delete_topic()
            .topic_arn(&topic_arn)
            .send()
            .await
            .map_err(|error| from_sdk_error(error, Call::new("sns:DeleteTopic", &topic_arn)))?;
        deleted.push(topic_arn);
    }
    let dead_letter_url = existing_queue_url(&sqs, &spec.dead_letter_queue_name).await?;
    let undelivered_url = existing_queue_url(&sqs, &spec.undelivered_queue_name).await?;
    for url in [queue_url, dead_letter_url, undelivered_url].into_iter().flatten() {
        match sqs.delete_queue().queue_url(&url).send().await {
            Ok(_) => deleted.push(url),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_queue_does_not_exist()) => {}
            Err(error) => return Err(from_sdk_error(error, Call::new("sqs:DeleteQueue", &url))),
        }
    }
    Ok(deleted)
}

fn seconds(duration: Duration) -> String {
    duration.as_secs().to_string()
}

fn missing(operation: &str, field: &str) -> BusError {
    BusError::IncompleteResponse(format!("{operation} answered without {field}"))
}

/// Creates a queue, or finds it. CreateQueue is idempotent when the attributes match; when an earlier run
/// created the queue with other values, SQS refuses (`QueueAlreadyExists`) and the queue is converged with
/// SetQueueAttributes instead.
async fn ensure_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: HashMap<QueueAttributeName, String>,
) -> Result<String, BusError> {
    let created = sqs.create_queue().queue_name(name).set_attributes(Some(attributes.clone())).send().await;
    match created {
        Ok(output) => output.queue_url.ok_or_else(|| missing("CreateQueue", "QueueUrl")),
        Err(error) if error.as_service_error().is_some_and(|e| e.is_queue_name_exists()) => {
            let url =
                existing_queue_url(sqs, name).await?.ok_or_else(|| missing("GetQueueUrl", "QueueUrl"))?;
            sqs.set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(attributes))
                .send()
                .await
                .map_err(|error| from_sdk_error(error, Call::new("sqs:SetQueueAttributes", &url)))?;
            Ok(url)
        }
        Err(error) => Err(from_sdk_error(error, Call::new("sqs:CreateQueue", name))),
    }
}

async fn existing_queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<Option<String>, BusError> {
    match sqs.get_queue_url().queue_name(name).send().await {
        Ok(output) => Ok(output.queue_url),
        Err(error) if error.as_service_error().is_some_and(|e| e.is_queue_does_not_exist()) => Ok(None),
        Err(error) => Err(from_sdk_error(error, Call::new("sqs:GetQueueUrl", name))),
    }
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<String, BusError> {
    let output = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|error| from_sdk_error(error, Call::new("sqs:GetQueueAttributes", queue_url)))?;
    output
        .attributes()
        .and_then(|attributes| attributes.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| missing("GetQueueAttributes", "QueueArn"))
}

async fn set_queue_attribute(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    name: QueueAttributeName,
    value: String,
) -> Result<(), BusError> {
    sqs.set_queue_attributes()
        .queue_url(queue_url)
        .attributes(name, value)
        .send()
        .await
        .map_err(|error| from_sdk_error(error, Call::new("sqs:SetQueueAttributes", queue_url)))?;
    Ok(())
}

/// The queue's subscription to the topic with raw message delivery (the body arrives as published, without
/// SNS's JSON envelope), found before created so that runs never add a second one.
async fn ensure_raw_subscription(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    queue_arn: &str,
) -> Result<String, BusError> {
    if let Some(subscription_arn) = find_subscription(sns, topic_arn, queue_arn).await? {
        sns.set_subscription_attributes()
            .subscription_arn(&subscription_arn)
            .attribute_name("RawMessageDelivery")
            .attribute_value("true")
            .send()
            .await
            .map_err(|error| {
                from_sdk_error(error, Call::new("sns:SetSubscriptionAttributes", &subscription_arn))
            })?;
        return Ok(subscription_arn);
    }
    sns.subscribe()
        .topic_arn(topic_arn)
        .protocol("sqs")
        .endpoint(queue_arn)
        .attributes("RawMessageDelivery", "true")
        .return_subscription_arn(true)
        .send()
        .await
        .map_err(|error| from_sdk_error(error, Call::new("sns:Subscribe", topic_arn)))?
        .subscription_arn
        .ok_or_else(|| missing("Subscribe", "SubscriptionArn"))
}

async fn find_subscription(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    queue_arn: &str,
) -> Result<Option<String>, BusError> {
    let mut next_token = None;
    loop {
        let page = sns
            .list_subscriptions_by_topic()
            .topic_arn(topic_arn)
            .set_next_token(next_token)
            .send()
            .await
            .map_err(|error| from_sdk_error(error, Call::new("sns:ListSubscriptionsByTopic", topic_arn)))?;
        let found = page.subscriptions().iter().find(|subscription| {
            subscription.protocol() == Some("sqs") && subscription.endpoint() == Some(queue_arn)
        });
        if let Some(subscription_arn) = found.and_then(|subscription| subscription.subscription_arn()) {
            return Ok(Some(subscription_arn.to_owned()));
        }
        match page.next_token {
            Some(token) => next_token = Some(token),
            None => return Ok(None),
        }
    }
}

async fn find_topic(sns: &aws_sdk_sns::Client, name: &str) -> Result<Option<String>, BusError> {
    let mut next_token = None;
    loop {
        let page = sns
            .list_topics()
            .set_next_token(next_token)
            .send()
            .await
            .map_err(|error| from_sdk_error(error, Call::new("sns:ListTopics", name)))?;
        let found = page
            .topics()
            .iter()
            .filter_map(|topic| topic.topic_arn())
            .find(|arn| arn.rsplit(':').next() == Some(name));
        if let Some(arn) = found {
            return Ok(Some(arn.to_owned()));
        }
        match page.next_token {
            Some(token) => next_token = Some(token),
            None => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_terraform() {
        let spec = ProvisionSpec::default();
        assert_eq!(
            (spec.topic_name.as_str(), spec.queue_name.as_str(), spec.dead_letter_queue_name.as_str()),
            ("orderflow-orders", "orderflow-orders", "orderflow-orders-dlq")
        );
        assert_eq!(spec.visibility_timeout, Duration::from_secs(30));
        assert_eq!(spec.retention, Duration::from_secs(345_600));
        assert_eq!(spec.receive_wait, Duration::from_secs(20));
        assert_eq!(spec.dead_letter_retention, Duration::from_secs(1_209_600));
        assert_eq!(spec.check(), Ok(()));
    }

    #[test]
    fn rejects_values_sqs_would_refuse() {
        let spec = ProvisionSpec { max_receive_count: 0, ..ProvisionSpec::default() };
        assert!(matches!(spec.check(), Err(BusError::InvalidParameter(_))));
        let spec = ProvisionSpec { receive_wait: Duration::from_secs(21), ..ProvisionSpec::default() };
        assert!(matches!(spec.check(), Err(BusError::InvalidParameter(_))));
        let spec =
            ProvisionSpec { dead_letter_retention: Duration::from_secs(345_600), ..ProvisionSpec::default() };
        assert!(matches!(spec.check(), Err(BusError::InvalidParameter(_))));
    }

    #[test]
    fn env_lines_name_what_the_binaries_read() {
        let provisioned = Provisioned {
            topic_arn: "arn:t".into(),
            queue_url: "http://q".into(),
            queue_arn: "arn:q".into(),
            dead_letter_url: "http://dlq".into(),
            dead_letter_arn: "arn:dlq".into(),
            subscription_arn: "arn:s".into(),
            undelivered_url: "http://undelivered".into(),
        };
        assert_eq!(
            provisioned.env_lines(),
            "ORDERS_TOPIC_ARN=arn:t\nORDERS_QUEUE_URL=http://q\nORDERS_DLQ_URL=http://dlq\n"
        );
    }
}
