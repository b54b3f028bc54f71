//! The embedded SNS topic: fan-out to subscribed queues, raw and enveloped delivery, batch and size limits,
//! fault injection, and the terraform-shaped stack.

use std::time::Duration;

use bus::embedded::{Delivery, EmbeddedQueue, EmbeddedStack, EmbeddedTopic, QueueConfig, StackConfig};
use bus::{BusError, Consumer, MAX_MESSAGE_BYTES, OutgoingMessage, Publisher, ReceivedMessage};
use serde_json::Value;
use tokio::time::advance;

fn queue(name: &str) -> EmbeddedQueue {
    EmbeddedQueue::new(name, QueueConfig::default())
}

async fn receive_one(queue: &EmbeddedQueue) -> ReceivedMessage {
    let mut received = queue.receive(10, Duration::ZERO).await.expect("receive");
    assert_eq!(received.len(), 1, "expected exactly one message");
    received.remove(0)
}

#[tokio::test(start_paused = true)]
async fn raw_delivery_passes_body_and_attributes_through() {
    let topic = EmbeddedTopic::new("orders");
    let queue = queue("orders");
    topic.subscribe(&queue, Delivery::Raw);
    let message = OutgoingMessage::new(r#"{"v":1}"#).with_attribute("schema_version", "1");
    topic.publish(message.clone()).await.unwrap();
    let received = receive_one(&queue).await;
    assert_eq!(received.body, message.body);
    assert_eq!(received.attributes, message.attributes);
}

#[tokio::test(start_paused = true)]
async fn enveloped_delivery_wraps_the_body_in_the_sns_json_envelope() {
    let topic = EmbeddedTopic::new("orders");
    let queue = queue("orders");
    topic.subscribe(&queue, Delivery::Enveloped);
    let body = r#"{"v":1,"order":{"note":"quotes \" and \\ survive"}}"#;
    let id = topic.publish(OutgoingMessage::new(body).with_attribute("schema_version", "1")).await.unwrap();

    let received = receive_one(&queue).await;
    assert!(received.attributes.is_empty(), "without raw delivery the attributes live in the envelope");
    let envelope: Value = serde_json::from_str(&received.body).unwrap();
    assert_eq!(envelope["Type"], "Notification");
    assert_eq!(envelope["MessageId"], id.as_str());
    assert_eq!(envelope["TopicArn"], topic.arn());
    assert!(topic.arn().starts_with("arn:aws:sns:") && topic.arn().ends_with(":orders"));
    assert_eq!(envelope["Subject"], Value::Null);
    assert_eq!(envelope["Message"], body, "the body is carried as a JSON string, unchanged");
    assert_eq!(envelope["SignatureVersion"], "1");
    assert!(envelope["Signature"].is_string());
    assert!(envelope["SigningCertURL"].as_str().unwrap().starts_with("https://"));
    assert!(envelope["UnsubscribeURL"].as_str().unwrap().contains(topic.arn()));
    assert_eq!(envelope["MessageAttributes"]["schema_version"]["Type"], "String");
    assert_eq!(envelope["MessageAttributes"]["schema_version"]["Value"], "1");
    let timestamp = envelope["Timestamp"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(), "{timestamp}");
    assert!(timestamp.ends_with('Z') && timestamp.len() == "2024-01-01T00:00:00.000Z".len(), "{timestamp}");
    let keys: Vec<_> = envelope.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 11, "{keys:?}");
}

#[tokio::test(start_paused = true)]
async fn an_envelope_without_attributes_leaves_the_key_out_like_sns() {
    let topic = EmbeddedTopic::new("orders");
    let queue = queue("orders");
    topic.subscribe(&queue, Delivery::Enveloped);
    topic.publish(OutgoingMessage::new("plain")).await.unwrap();
    let envelope: Value = serde_json::from_str(&receive_one(&queue).await.body).unwrap();
    assert!(envelope.get("MessageAttributes").is_none());
    assert_eq!(envelope["Message"], "plain");
}

#[tokio::test(start_paused = true)]
async fn every_subscribed_queue_gets_its_own_copy() {
    let topic = EmbeddedTopic::new("orders");
    let (raw, enveloped, late) = (queue("raw"), queue("enveloped"), queue("late"));
    topic.subscribe(&raw, Delivery::Raw);
    topic.subscribe(&enveloped, Delivery::Enveloped);
    topic.publish(OutgoingMessage::new("first")).await.unwrap();
    topic.subscribe(&late, Delivery::Raw);
    topic.publish(OutgoingMessage::new("second")).await.unwrap();

    assert_eq!(raw.stats_now().visible, 2);
    assert_eq!(enveloped.stats_now().visible, 2);
    assert_eq!(late.stats_now().visible, 1, "a subscription sees only what is published after it");

    // Consuming one copy leaves the others alone.
    let taken = raw.receive(10, Duration::ZERO).await.unwrap();
    for message in taken {
        raw.delete(message.receipt_handle).await.unwrap();
    }
    assert_eq!(raw.stats_now().backlog(), 0);
    assert_eq!(enveloped.stats_now().visible, 2);
}

#[tokio::test(start_paused = true)]
async fn subscribing_a_queue_twice_keeps_one_subscription() {
    let topic = EmbeddedTopic::new("orders");
    let queue = queue("orders");
    topic.subscribe(&queue, Delivery::Enveloped);
    topic.subscribe(&queue.clone(), Delivery::Raw);
    topic.publish(OutgoingMessage::new("once")).await.unwrap();
    assert_eq!(receive_one(&queue).await.body, "once", "one raw copy");
}

#[tokio::test(start_paused = true)]
async fn publishing_without_subscribers_succeeds() {
    let topic = EmbeddedTopic::new("lonely");
    let first = topic.publish(OutgoingMessage::new("a")).await.unwrap();
    let second = topic.publish(OutgoingMessage::new("b")).await.unwrap();
    assert_ne!(first, second, "message ids are unique");
}

#[tokio::test(start_paused = true)]
async fn publish_refuses_messages_over_256_kib() {
    let topic = EmbeddedTopic::new("orders");
    let queue = queue("orders");
    topic.subscribe(&queue, Delivery::Raw);
    let result = topic.publish(OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES + 1))).await;
    assert_eq!(
        result,
        Err(BusError::MessageTooLarge { size: MAX_MESSAGE_BYTES + 1, limit: MAX_MESSAGE_BYTES })
    );
    topic.publish(OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES))).await.unwrap();
    assert_eq!(queue.stats_now().visible, 1);
}

#[tokio::test(start_paused = true)]
async fn publish_batch_enforces_entry_count_and_total_size() {
    let topic = EmbeddedTopic::new("orders");
    let queue = queue("orders");
    topic.subscribe(&queue, Delivery::Raw);
    assert_eq!(topic.publish_batch(Vec::new()).await, Err(BusError::InvalidBatchSize { len: 0 }));
    let eleven = vec![OutgoingMessage::new("m"); 11];
    assert_eq!(topic.publish_batch(eleven).await, Err(BusError::InvalidBatchSize { len: 11 }));
    let halves = vec![OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES / 2 + 1)); 2];
    assert_eq!(
        topic.publish_batch(halves).await,
        Err(BusError::MessageTooLarge { size: MAX_MESSAGE_BYTES + 2, limit: MAX_MESSAGE_BYTES }),
        "SNS limits the whole batch to 256 KiB"
    );
    assert_eq!(queue.stats_now().visible, 0, "a refused batch publishes nothing");

    let ten: Vec<_> = (0..10).map(|n| OutgoingMessage::new(n.to_string())).collect();
    let results = topic.publish_batch(ten).await.unwrap();
    assert_eq!(results.len(), 10);
    assert!(results.iter().all(Result::is_ok));
    let received = queue.receive(10, Duration::ZERO).await.unwrap();
    let bodies: Vec<_> = received.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, (0..10).map(|n| n.to_string()).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn injected_failures_fail_publishes_and_deliver_nothing() {
    let topic = EmbeddedTopic::new("orders");
    let queue = queue("orders");
    topic.subscribe(&queue, Delivery::Raw);
    let failure = BusError::Timeout;
    topic.inject_failure(Some(failure.clone()));
    assert_eq!(topic.publish(OutgoingMessage::new("m")).await, Err(failure.clone()));
    assert_eq!(topic.publish_batch(vec![OutgoingMessage::new("m")]).await, Err(failure));
    assert_eq!(queue.stats_now().visible, 0);
    topic.inject_failure(None);
    topic.publish(OutgoingMessage::new("m")).await.unwrap();
    assert_eq!(queue.stats_now().visible, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_queue_does_not_lose_what_the_topic_accepted() {
    // SNS retries delivery to SQS; an outage of the consumer side must not drop accepted messages.
    let topic = EmbeddedTopic::new("orders");
    let queue = queue("orders");
    topic.subscribe(&queue, Delivery::Raw);
    queue.inject_failure(Some(BusError::Timeout));
    topic.publish(OutgoingMessage::new("m")).await.unwrap();
    assert_eq!(queue.receive(1, Duration::ZERO).await, Err(BusError::Timeout));
    queue.inject_failure(None);
    assert_eq!(receive_one(&queue).await.body, "m");
}

#[tokio::test(start_paused = true)]
async fn the_stack_is_wired_like_terraform() {
    let config = StackConfig::default();
    assert_eq!(config.visibility_timeout, Duration::from_secs(30));
    assert_eq!(config.max_receive_count, 5);
    assert_eq!(config.retention, Duration::from_secs(4 * 86_400));
    assert_eq!(config.dead_letter_retention, Duration::from_secs(14 * 86_400));

    let stack = EmbeddedStack::new(config);
    let id = stack
        .topic
        .publish(OutgoingMessage::new("order").with_attribute("schema_version", "1"))
        .await
        .unwrap();
    // Raw delivery: the body arrives as published.
    for count in 1..=5 {
        let received = receive_one(&stack.queue).await;
        assert_eq!(received.body, "order");
        assert_eq!(received.attributes.get("schema_version").map(String::as_str), Some("1"));
        assert_eq!(received.receive_count, count);
        advance(config.visibility_timeout).await;
    }
    assert!(stack.queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(stack.queue.stats_now().dead_letter, Some(1));
    let dead = receive_one(&stack.dead_letter).await;
    assert_eq!(dead.body, "order");
    assert_ne!(dead.message_id, id, "SQS ids differ from the SNS publish id");

    // The DLQ keeps messages for 14 days from their first enqueue, the queue for 4.
    stack.topic.publish(OutgoingMessage::new("old")).await.unwrap();
    advance(config.retention).await;
    assert_eq!(stack.queue.stats_now().visible, 0, "expired after 4 days");
    assert_eq!(stack.dead_letter.stats_now().backlog(), 1, "still in the DLQ");
}

/// The embedded bus refuses what SNS and SQS refuse, as the aws adapter does, so local runs see production's
/// answers: a character SQS cannot store, an empty body, a bad attribute name.
#[tokio::test(start_paused = true)]
async fn refuses_what_sns_and_sqs_refuse() {
    let stack = EmbeddedStack::new(StackConfig::default());
    for refused in [
        OutgoingMessage::new("{\"product_id\":\"\u{FFFF}\"}"),
        OutgoingMessage::new(""),
        OutgoingMessage::new("x").with_attribute("AWS.trace", "1"),
    ] {
        let published = stack.topic.publish(refused.clone()).await;
        assert!(matches!(published, Err(BusError::InvalidParameter(_))), "{refused:?}: {published:?}");
        let sent = stack.queue.send(refused.clone());
        assert!(matches!(sent, Err(BusError::InvalidParameter(_))), "{refused:?}: {sent:?}");
    }
    assert_eq!(stack.queue.stats_now().visible, 0, "nothing was delivered");
}
