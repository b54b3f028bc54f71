//! The aws adapter against moto server, a real third-party SNS/SQS implementation, through the real SDK.
//!
//! Run with `scripts/test.sh` (it starts moto and sets `MOTO_ENDPOINT`). Tests run in parallel against one
//! moto, so each creates its own uniquely named topic and queues instead of resetting the server. moto is slow
//! (about 100 messages/s), so every test moves a handful of messages.

use std::time::{Duration, Instant, SystemTime};

use bus::aws::provision::{ProvisionSpec, Provisioned, provision, teardown};
use bus::aws::{AwsConsumer, AwsPublisher, SdkConfig, config_for_emulator};
use bus::{
    ATTR_DEAD_LETTER_REASON, ATTR_SCHEMA_VERSION, BusError, Consumer, MAX_MESSAGE_BYTES, OutgoingMessage,
    Publisher, ReceiptHandle, ReceivedMessage,
};

const NEEDS_MOTO: &str = "MOTO_ENDPOINT is not set: these tests need a moto server; run scripts/test.sh";

async fn moto() -> SdkConfig {
    let endpoint = std::env::var("MOTO_ENDPOINT").expect(NEEDS_MOTO);
    config_for_emulator(&endpoint).await
}

/// A prefix no other test (or earlier run against the same moto) uses.
fn unique(test: &str) -> String {
    format!("{test}-{}", uuid::Uuid::new_v4().simple())
}

/// A provisioned stack with a publisher and a consumer (that knows its dead-letter queue).
struct Stack {
    config: SdkConfig,
    provisioned: Provisioned,
    publisher: AwsPublisher,
    consumer: AwsConsumer,
}

impl Stack {
    async fn new(test: &str, adjust: impl FnOnce(&mut ProvisionSpec)) -> Stack {
        let config = moto().await;
        let mut spec = ProvisionSpec::named(&unique(test));
        adjust(&mut spec);
        let provisioned = provision(&config, &spec).await.expect("provisioning against moto");
        let publisher = AwsPublisher::new(&config, &provisioned.topic_arn);
        let consumer = AwsConsumer::new(&config, &provisioned.queue_url)
            .with_dead_letter_queue(&provisioned.dead_letter_url);
        Stack { config, provisioned, publisher, consumer }
    }

    fn dead_letter_consumer(&self) -> AwsConsumer {
        AwsConsumer::new(&self.config, &self.provisioned.dead_letter_url)
    }
}

fn order(n: u32) -> OutgoingMessage {
    OutgoingMessage::new(format!(r#"{{"v":1,"order":{n}}}"#)).with_attribute(ATTR_SCHEMA_VERSION, "1")
}

/// Receives until `count` messages arrived (or 30 s passed: moto is slow on a loaded machine), with short
/// long-polls.
async fn receive_exactly(consumer: &AwsConsumer, count: usize) -> Vec<ReceivedMessage> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received = Vec::new();
    while received.len() < count && Instant::now() < deadline {
        let wanted = (count - received.len()).min(10);
        received.extend(consumer.receive(wanted, Duration::from_secs(1)).await.expect("receive"));
    }
    assert_eq!(received.len(), count, "messages received");
    received
}

async fn assert_empty(consumer: &AwsConsumer) {
    let stats = consumer.stats().await.expect("stats");
    assert_eq!((stats.visible, stats.in_flight), (0, 0), "{stats:?}");
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn raw_fan_out_delivers_the_body_and_the_schema_version() {
    let stack = Stack::new("raw", |_| {}).await;
    let before = SystemTime::now() - Duration::from_secs(5);
    let message_id = stack.publisher.publish(order(1)).await.expect("publish");

    let [message] = receive_exactly(&stack.consumer, 1).await.try_into().unwrap();
    assert_eq!(message.body, r#"{"v":1,"order":1}"#, "raw delivery passes the body unchanged");
    assert_eq!(message.attributes.get(ATTR_SCHEMA_VERSION).map(String::as_str), Some("1"));
    assert_eq!(message.receive_count, 1);
    assert!(message.sent_at >= before && message.sent_at <= SystemTime::now() + Duration::from_secs(5));
    assert!(!message_id.is_empty());

    stack.consumer.delete(message.receipt_handle).await.expect("delete");
    assert_empty(&stack.consumer).await;
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn enveloped_fan_out_wraps_the_body_in_the_sns_envelope() {
    let stack = Stack::new("envelope", |_| {}).await;
    // A second queue subscribed without raw delivery receives SNS's JSON envelope.
    let sqs = aws_sdk_sqs::Client::new(&stack.config);
    let sns = aws_sdk_sns::Client::new(&stack.config);
    let queue_url =
        sqs.create_queue().queue_name(unique("enveloped")).send().await.unwrap().queue_url.unwrap();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    sns.subscribe()
        .topic_arn(&stack.provisioned.topic_arn)
        .protocol("sqs")
        .endpoint(queue_arn)
        .send()
        .await
        .expect("subscribe without raw delivery");
    let enveloped = AwsConsumer::new(&stack.config, &queue_url);

    let message_id = stack.publisher.publish(order(2)).await.expect("publish");

    let [message] = receive_exactly(&enveloped, 1).await.try_into().unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&message.body).expect("the envelope is JSON");
    assert_eq!(envelope["Type"], "Notification");
    assert_eq!(envelope["MessageId"], message_id.as_str());
    assert_eq!(envelope["TopicArn"], stack.provisioned.topic_arn.as_str());
    assert_eq!(envelope["Message"], r#"{"v":1,"order":2}"#);
    assert_eq!(envelope["MessageAttributes"][ATTR_SCHEMA_VERSION]["Value"], "1");
    // The raw subscription got the same message, unwrapped.
    let [raw] = receive_exactly(&stack.consumer, 1).await.try_into().unwrap();
    assert_eq!(raw.body, r#"{"v":1,"order":2}"#);
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn publish_batch_fails_an_oversized_entry_alone() {
    let stack = Stack::new("partial", |_| {}).await;
    let oversized = OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES + 1));
    let results =
        stack.publisher.publish_batch(vec![order(1), oversized, order(3)]).await.expect("batch call");

    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(matches!(results[1], Err(BusError::MessageTooLarge { .. })), "{:?}", results[1]);
    assert!(results[2].is_ok(), "{:?}", results[2]);
    let mut bodies: Vec<_> = receive_exactly(&stack.consumer, 2).await.into_iter().map(|m| m.body).collect();
    bodies.sort();
    assert_eq!(bodies, [r#"{"v":1,"order":1}"#, r#"{"v":1,"order":3}"#]);
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn publish_batch_over_256_kib_in_total_is_split_and_all_delivered() {
    let stack = Stack::new("split", |_| {}).await;
    let big = |n: u32| OutgoingMessage::new(format!("{n}{}", "x".repeat(100 * 1024)));
    let results = stack.publisher.publish_batch((0..4).map(big).collect()).await.expect("batch call");

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let received = receive_exactly(&stack.consumer, 4).await;
    let mut firsts: Vec<_> = received.iter().map(|m| m.body.chars().next().unwrap()).collect();
    firsts.sort();
    assert_eq!(firsts, ['0', '1', '2', '3']);
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn long_poll_waits_and_returns_as_soon_as_a_message_arrives() {
    let stack = Stack::new("longpoll", |_| {}).await;

    let started = Instant::now();
    let empty = stack.consumer.receive(10, Duration::from_secs(2)).await.expect("receive");
    assert!(empty.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "an empty long poll waits: {:?}",
        started.elapsed()
    );

    let publisher = stack.publisher.clone();
    let publishing = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        publisher.publish(order(7)).await
    });
    let started = Instant::now();
    let received = stack.consumer.receive(10, Duration::from_secs(15)).await.expect("receive");
    let waited = started.elapsed();
    publishing.await.unwrap().expect("publish");
    assert_eq!(received.len(), 1);
    assert!(waited >= Duration::from_millis(900), "it waited for the message: {waited:?}");
    assert!(waited < Duration::from_secs(8), "it woke on arrival, not at the end of the wait: {waited:?}");
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn visibility_extension_keeps_a_message_hidden_and_zero_releases_it() {
    // The extension must reach moto within the queue's timeout: 4 s leaves room for a slow moto.
    let stack = Stack::new("visibility", |spec| spec.visibility_timeout = Duration::from_secs(4)).await;
    stack.publisher.publish(order(1)).await.expect("publish");
    let [first] = receive_exactly(&stack.consumer, 1).await.try_into().unwrap();

    stack
        .consumer
        .change_visibility(first.receipt_handle.clone(), Duration::from_secs(30))
        .await
        .expect("extend");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = stack.consumer.receive(10, Duration::ZERO).await.expect("receive");
    assert!(during.is_empty(), "past the queue's 4 s timeout the extension still hides it: {during:?}");

    stack.consumer.change_visibility(first.receipt_handle, Duration::ZERO).await.expect("release");
    let [again] = receive_exactly(&stack.consumer, 1).await.try_into().unwrap();
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.receive_count, 2);
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn a_message_moves_to_the_dead_letter_queue_after_max_receive_count() {
    let stack = Stack::new("redrive", |spec| {
        spec.visibility_timeout = Duration::from_secs(1);
        spec.max_receive_count = 2;
    })
    .await;
    stack.publisher.publish(order(9)).await.expect("publish");

    let mut last_handle = None;
    for expected_count in 1..=2 {
        let [message] = receive_exactly(&stack.consumer, 1).await.try_into().unwrap();
        assert_eq!(message.receive_count, expected_count);
        last_handle = Some(message.receipt_handle);
        tokio::time::sleep(Duration::from_millis(1200)).await; // let the visibility timeout lapse
    }
    // The third receive finds the message over its limit and moves it instead of delivering it.
    assert!(stack.consumer.receive(10, Duration::from_secs(1)).await.expect("receive").is_empty());
    let [dead] = receive_exactly(&stack.dead_letter_consumer(), 1).await.try_into().unwrap();
    assert_eq!(dead.body, r#"{"v":1,"order":9}"#);
    assert_eq!(dead.attributes.get(ATTR_SCHEMA_VERSION).map(String::as_str), Some("1"));

    let stale = stack.consumer.delete(last_handle.unwrap()).await;
    assert!(matches!(stale, Err(BusError::ReceiptHandleInvalid(_))), "{stale:?}");
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn batch_delete_reports_an_invalid_handle_alone() {
    let stack = Stack::new("delete", |_| {}).await;
    let published = stack.publisher.publish_batch(vec![order(1), order(2)]).await.expect("publish");
    assert!(published.iter().all(Result::is_ok));
    let received = receive_exactly(&stack.consumer, 2).await;

    let handles = vec![
        received[0].receipt_handle.clone(),
        ReceiptHandle("AQEBstale-handle-from-nowhere".into()),
        received[1].receipt_handle.clone(),
    ];
    let results = stack.consumer.delete_batch(handles).await.expect("batch call");
    assert_eq!(results[0], Ok(()));
    match &results[1] {
        Err(BusError::ReceiptHandleInvalid(detail)) => {
            assert!(detail.contains("ReceiptHandleIsInvalid"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(results[2], Ok(()));
    assert_empty(&stack.consumer).await;
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn stats_count_visible_in_flight_and_dead_letters() {
    let stack = Stack::new("stats", |_| {}).await;
    let published = stack.publisher.publish_batch((1..=3).map(order).collect()).await.expect("publish");
    assert!(published.iter().all(Result::is_ok));

    let stats = stack.consumer.stats().await.expect("stats");
    assert_eq!((stats.visible, stats.in_flight, stats.dead_letter), (3, 0, Some(0)));
    assert_eq!(stats.oldest_age, None, "SQS has no oldest-age attribute");

    let [poison] = receive_exactly(&stack.consumer, 1).await.try_into().unwrap();
    let stats = stack.consumer.stats().await.expect("stats");
    assert_eq!((stats.visible, stats.in_flight), (2, 1));

    let dead =
        OutgoingMessage::new(poison.body.clone()).with_attribute(ATTR_DEAD_LETTER_REASON, "unparseable");
    stack.consumer.send_to_dead_letter(dead).await.expect("send to the DLQ");
    stack.consumer.delete(poison.receipt_handle).await.expect("delete the original");
    let stats = stack.consumer.stats().await.expect("stats");
    assert_eq!((stats.visible, stats.in_flight, stats.dead_letter), (2, 0, Some(1)));

    let [parked] = receive_exactly(&stack.dead_letter_consumer(), 1).await.try_into().unwrap();
    assert_eq!(parked.body, poison.body);
    assert_eq!(parked.attributes.get(ATTR_DEAD_LETTER_REASON).map(String::as_str), Some("unparseable"));
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn a_missing_queue_is_fatal_and_says_what_to_check() {
    let config = moto().await;
    let endpoint = std::env::var("MOTO_ENDPOINT").expect(NEEDS_MOTO);
    let url = format!("{endpoint}/123456789012/{}", unique("missing"));
    let error = AwsConsumer::new(&config, &url).stats().await.expect_err("the queue does not exist");
    let BusError::Fatal { code, message } = &error else { panic!("{error:?}") };
    assert!(code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist"), "{code}");
    assert!(message.contains(&url) && message.contains("AWS_ENDPOINT_URL"), "{message}");
    assert!(!error.is_retryable());

    let topic = format!("arn:aws:sns:us-east-1:123456789012:{}", unique("missing"));
    let error = AwsPublisher::new(&config, &topic).publish(order(1)).await.expect_err("no such topic");
    assert!(matches!(&error, BusError::Fatal { code, .. } if code == "NotFound"), "{error:?}");
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn provisioning_is_idempotent_converges_and_tears_down() {
    let config = moto().await;
    let spec = ProvisionSpec::named(&unique("provision"));
    let first = provision(&config, &spec).await.expect("first run");
    let second = provision(&config, &spec).await.expect("second run");
    assert_eq!(first, second, "a second run finds the same resources");

    let sns = aws_sdk_sns::Client::new(&config);
    let subscriptions = sns.list_subscriptions_by_topic().topic_arn(&first.topic_arn).send().await.unwrap();
    assert_eq!(subscriptions.subscriptions().len(), 1, "no duplicate subscription");
    let raw =
        sns.get_subscription_attributes().subscription_arn(&first.subscription_arn).send().await.unwrap();
    assert_eq!(raw.attributes().unwrap().get("RawMessageDelivery").map(String::as_str), Some("true"));
    // What SNS cannot deliver goes to the subscription's own dead-letter queue, which only the topic may fill.
    let redrive =
        raw.attributes().unwrap().get("RedrivePolicy").expect("the subscription has a redrive policy");
    let undelivered = queue_attributes(&config, &first.undelivered_url).await;
    let redrive: serde_json::Value = serde_json::from_str(redrive).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], undelivered("QueueArn").as_str());
    let policy: serde_json::Value = serde_json::from_str(&undelivered("Policy")).unwrap();
    assert_eq!(policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"], first.topic_arn.as_str());

    let attributes = queue_attributes(&config, &first.queue_url).await;
    assert_eq!(attributes("VisibilityTimeout"), "30");
    assert_eq!(attributes("MessageRetentionPeriod"), "345600");
    assert_eq!(attributes("ReceiveMessageWaitTimeSeconds"), "20");
    let redrive: serde_json::Value = serde_json::from_str(&attributes("RedrivePolicy")).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], first.dead_letter_arn.as_str());
    assert_eq!(redrive["maxReceiveCount"].to_string(), "5");
    let policy: serde_json::Value = serde_json::from_str(&attributes("Policy")).unwrap();
    assert_eq!(policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"], first.topic_arn.as_str());
    assert_eq!(policy["Statement"][0]["Resource"], first.queue_arn.as_str());
    let dead_letter = queue_attributes(&config, &first.dead_letter_url).await;
    assert_eq!(dead_letter("MessageRetentionPeriod"), "1209600");

    // A changed spec converges the existing queue instead of failing on "queue already exists".
    let shorter = ProvisionSpec { visibility_timeout: Duration::from_secs(5), ..spec.clone() };
    assert_eq!(provision(&config, &shorter).await.expect("converging run"), first);
    assert_eq!(queue_attributes(&config, &first.queue_url).await("VisibilityTimeout"), "5");

    let mut deleted = teardown(&config, &spec).await.expect("teardown");
    deleted.sort();
    let mut expected = vec![
        first.subscription_arn.clone(),
        first.topic_arn.clone(),
        first.queue_url.clone(),
        first.dead_letter_url.clone(),
        first.undelivered_url.clone(),
    ];
    expected.sort();
    assert_eq!(deleted, expected);
    assert_eq!(teardown(&config, &spec).await.expect("second teardown"), Vec::<String>::new());
}

/// The queue's attributes, as a lookup that panics on a missing one.
async fn queue_attributes(config: &SdkConfig, queue_url: &str) -> impl Fn(&str) -> String {
    let output = aws_sdk_sqs::Client::new(config)
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes");
    let attributes = output.attributes.unwrap_or_default();
    move |name: &str| {
        let key = aws_sdk_sqs::types::QueueAttributeName::from(name);
        attributes
            .get(&key)
            .cloned()
            .unwrap_or_else(|| panic!("queue attribute {name} missing: {attributes:?}"))
    }
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn a_requeued_copy_is_delayed_and_starts_counting_again() {
    let stack = Stack::new("requeue", |_| {}).await;
    stack.publisher.publish(order(7)).await.expect("publish");
    let [original] = receive_exactly(&stack.consumer, 1).await.try_into().unwrap();
    let copy = OutgoingMessage { body: original.body.clone(), attributes: original.attributes.clone() };
    let sent = Instant::now();
    let copy_id = stack.consumer.requeue(copy, Duration::from_secs(4)).await.expect("requeue");
    stack.consumer.delete(original.receipt_handle).await.expect("delete the original");
    assert_ne!(copy_id, original.message_id);

    let early = stack.consumer.receive(10, Duration::from_secs(1)).await.expect("receive");
    if sent.elapsed() < Duration::from_secs(4) {
        assert!(early.is_empty(), "delivered before its delay: {early:?}");
    }
    let [again] = receive_exactly(&stack.consumer, 1).await.try_into().unwrap();
    assert!(sent.elapsed() >= Duration::from_secs(4), "not before DelaySeconds");
    assert_eq!((again.message_id.as_str(), again.receive_count), (copy_id.as_str(), 1));
    assert_eq!((again.body, again.attributes), (original.body, original.attributes));
    stack.consumer.delete(again.receipt_handle).await.expect("delete");
    assert_empty(&stack.consumer).await;
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn list_peeks_at_dead_letters_and_hands_them_back() {
    use bus::DeadLetters as _;
    let stack = Stack::new("dlq-list", |_| {}).await;
    for n in 0..3 {
        let poison = order(n).with_attribute(ATTR_DEAD_LETTER_REASON, format!("poison {n}"));
        stack.consumer.send_to_dead_letter(poison).await.expect("dead-letter");
    }
    let tools = bus::aws::AwsDeadLetters::new(
        &stack.config,
        &stack.provisioned.queue_url,
        &stack.provisioned.dead_letter_url,
    );
    let listed = tools.list(10).await.expect("list");
    let mut reasons: Vec<_> = listed.iter().filter_map(|letter| letter.reason.clone()).collect();
    reasons.sort();
    assert_eq!(reasons, ["poison 0", "poison 1", "poison 2"]);
    assert!(listed.iter().all(|letter| letter.receive_count == 1 && letter.age_seconds < 60), "{listed:?}");
    let again = tools.list(2).await.expect("list again");
    assert_eq!(again.len(), 2, "visible again at once, and bounded by max");
    assert!(again.iter().all(|letter| letter.receive_count == 2), "{again:?}");
    let dead_letter = stack.dead_letter_consumer().stats().await.expect("stats");
    assert_eq!((dead_letter.visible, dead_letter.in_flight), (3, 0), "{dead_letter:?}");
}
