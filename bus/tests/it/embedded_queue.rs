//! SQS semantics of the embedded queue: visibility, receipt handles, receive counts, redrive, retention, limits,
//! stats and fault injection. Timing tests run on a paused tokio clock.

use std::time::Duration;

use bus::embedded::{EmbeddedQueue, QueueConfig, Redrive};
use bus::{
    BusError, Consumer, MAX_MESSAGE_BYTES, MAX_VISIBILITY, MAX_WAIT, OutgoingMessage, QueueStats,
    ReceiptHandle, ReceivedMessage, VisibilityChange,
};
use tokio::time::advance;

const VISIBILITY: Duration = Duration::from_secs(30);

fn queue() -> EmbeddedQueue {
    EmbeddedQueue::new("orders", QueueConfig::default())
}

/// A queue redriving to a fresh dead-letter queue after `max_receive_count` receives.
fn queue_with_dlq(max_receive_count: u32) -> (EmbeddedQueue, EmbeddedQueue) {
    let dead_letter = EmbeddedQueue::new("orders-dlq", QueueConfig::default());
    let queue = EmbeddedQueue::new(
        "orders",
        QueueConfig {
            redrive: Some(Redrive { dead_letter: dead_letter.clone(), max_receive_count }),
            ..QueueConfig::default()
        },
    );
    (queue, dead_letter)
}

async fn receive_now(queue: &EmbeddedQueue) -> Vec<ReceivedMessage> {
    queue.receive(10, Duration::ZERO).await.expect("receive")
}

async fn receive_one(queue: &EmbeddedQueue) -> ReceivedMessage {
    let mut received = queue.receive(1, Duration::ZERO).await.expect("receive");
    assert_eq!(received.len(), 1, "expected one visible message");
    received.remove(0)
}

fn depth(queue: &EmbeddedQueue) -> (u64, u64) {
    let stats = queue.stats_now();
    (stats.visible, stats.in_flight)
}

fn assert_invalid_handle<T: std::fmt::Debug>(result: Result<T, BusError>) {
    assert!(
        matches!(result, Err(BusError::ReceiptHandleInvalid(_))),
        "expected ReceiptHandleInvalid, got {result:?}"
    );
}

fn assert_invalid_parameter<T: std::fmt::Debug>(result: Result<T, BusError>) {
    assert!(
        matches!(result, Err(BusError::InvalidParameter(_))),
        "expected InvalidParameter, got {result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_sent_message_is_received_with_its_body_attributes_and_ids() {
    let queue = queue();
    let id = queue.send(OutgoingMessage::new("hello").with_attribute("schema_version", "1")).unwrap();
    let received = receive_one(&queue).await;
    assert_eq!(received.message_id, id);
    assert_eq!(received.body, "hello");
    assert_eq!(received.attributes.get("schema_version").map(String::as_str), Some("1"));
    assert_eq!(received.receive_count, 1);
    assert!(received.sent_at <= std::time::SystemTime::now());
}

#[tokio::test(start_paused = true)]
async fn a_received_message_is_invisible_until_its_visibility_timeout_passes() {
    let queue = queue();
    queue.send(OutgoingMessage::new("m")).unwrap();
    let first = receive_one(&queue).await;
    assert_eq!(depth(&queue), (0, 1));

    advance(VISIBILITY - Duration::from_millis(1)).await;
    assert!(receive_now(&queue).await.is_empty(), "still invisible just before the timeout");

    advance(Duration::from_millis(1)).await;
    assert_eq!(depth(&queue), (1, 0));
    let second = receive_one(&queue).await;
    assert_eq!(second.message_id, first.message_id);
    assert_eq!(second.receive_count, 2, "every receive counts");
    assert_ne!(second.receipt_handle, first.receipt_handle, "every receive gets a new handle");
}

#[tokio::test(start_paused = true)]
async fn deleting_removes_the_message_for_good() {
    let queue = queue();
    queue.send(OutgoingMessage::new("m")).unwrap();
    let received = receive_one(&queue).await;
    queue.delete(received.receipt_handle.clone()).await.unwrap();
    assert_eq!(depth(&queue), (0, 0));
    advance(VISIBILITY * 2).await;
    assert!(receive_now(&queue).await.is_empty());
    assert_invalid_handle(queue.delete(received.receipt_handle).await);
}

#[tokio::test(start_paused = true)]
async fn a_stale_handle_neither_deletes_nor_extends_the_redelivered_copy() {
    let queue = queue();
    queue.send(OutgoingMessage::new("m")).unwrap();
    let first = receive_one(&queue).await;
    advance(VISIBILITY).await;
    let second = receive_one(&queue).await;

    assert_invalid_handle(queue.delete(first.receipt_handle.clone()).await);
    assert_invalid_handle(queue.change_visibility(first.receipt_handle.clone(), Duration::ZERO).await);
    assert_eq!(depth(&queue), (0, 1), "the redelivered copy is untouched and still in flight");

    // The current handle still works.
    queue.delete(second.receipt_handle).await.unwrap();
    assert_eq!(depth(&queue), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_latest_handle_still_deletes_after_the_timeout_if_nobody_received_it_again() {
    let queue = queue();
    queue.send(OutgoingMessage::new("m")).unwrap();
    let received = receive_one(&queue).await;
    advance(VISIBILITY).await;
    assert_eq!(depth(&queue), (1, 0));
    queue.delete(received.receipt_handle).await.unwrap();
    assert_eq!(depth(&queue), (0, 0));
    assert!(receive_now(&queue).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_handle_of_a_deleted_message_does_not_touch_a_later_one() {
    // The later message takes over the deleted one's storage and has the same receive count: the handle must
    // still not match it.
    let queue = queue();
    queue.send(OutgoingMessage::new("first")).unwrap();
    let first = receive_one(&queue).await;
    queue.delete(first.receipt_handle.clone()).await.unwrap();
    queue.send(OutgoingMessage::new("second")).unwrap();
    let second = receive_one(&queue).await;
    assert_eq!(second.receive_count, first.receive_count);
    assert_invalid_handle(queue.delete(first.receipt_handle.clone()).await);
    assert_invalid_handle(queue.change_visibility(first.receipt_handle, Duration::ZERO).await);
    assert_eq!(depth(&queue), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn handles_from_another_queue_or_made_up_are_rejected() {
    let (a, b) = (queue(), queue());
    a.send(OutgoingMessage::new("m")).unwrap();
    b.send(OutgoingMessage::new("m")).unwrap();
    let from_a = receive_one(&a).await;
    assert_invalid_handle(b.delete(from_a.receipt_handle.clone()).await);
    assert_invalid_handle(b.delete(ReceiptHandle("garbage".into())).await);
    assert_invalid_handle(b.delete(ReceiptHandle(String::new())).await);
    assert_eq!(depth(&b), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn change_visibility_extends_and_returns_messages() {
    let queue = queue();
    queue.send(OutgoingMessage::new("m")).unwrap();
    let received = receive_one(&queue).await;

    // Extending counts from the call, not from the receive.
    advance(Duration::from_secs(20)).await;
    queue.change_visibility(received.receipt_handle.clone(), Duration::from_secs(60)).await.unwrap();
    advance(Duration::from_secs(59)).await;
    assert!(receive_now(&queue).await.is_empty());
    advance(Duration::from_secs(1)).await;
    let again = receive_one(&queue).await;
    assert_eq!(again.receive_count, 2);

    // Zero makes it visible at once (a consumer giving a message back).
    queue.change_visibility(again.receipt_handle.clone(), Duration::ZERO).await.unwrap();
    assert_eq!(depth(&queue), (1, 0));
    assert_eq!(receive_one(&queue).await.receive_count, 3);

    // Changing a message that is visible again is refused.
    assert_invalid_handle(queue.change_visibility(again.receipt_handle, Duration::from_secs(5)).await);
}

#[tokio::test(start_paused = true)]
async fn visibility_is_capped_at_twelve_hours() {
    let queue = queue();
    queue.send(OutgoingMessage::new("m")).unwrap();
    let received = receive_one(&queue).await;
    let handle = received.receipt_handle;
    assert_invalid_parameter(
        queue.change_visibility(handle.clone(), MAX_VISIBILITY + Duration::from_secs(1)).await,
    );
    queue.change_visibility(handle.clone(), MAX_VISIBILITY - Duration::from_secs(10)).await.unwrap();
    // 12 h in total since the receive, like SQS: 10 s in, a further 12 h would pass it.
    advance(Duration::from_secs(10)).await;
    assert_invalid_parameter(queue.change_visibility(handle.clone(), MAX_VISIBILITY).await);
    queue.change_visibility(handle, MAX_VISIBILITY - Duration::from_secs(10)).await.unwrap();
}

#[test]
#[should_panic(expected = "over the SQS maximum")]
fn a_queue_visibility_over_twelve_hours_is_a_programming_error() {
    EmbeddedQueue::new(
        "q",
        QueueConfig { visibility_timeout: MAX_VISIBILITY + Duration::from_secs(1), ..QueueConfig::default() },
    );
}

#[tokio::test(start_paused = true)]
async fn a_message_goes_to_the_dead_letter_queue_on_the_receive_after_max_receive_count() {
    let (queue, dead_letter) = queue_with_dlq(3);
    let id = queue.send(OutgoingMessage::new("poison").with_attribute("a", "1")).unwrap();
    for expected_count in 1..=3 {
        let received = receive_one(&queue).await;
        assert_eq!(received.receive_count, expected_count);
        advance(VISIBILITY).await;
    }
    assert_eq!(queue.stats_now().dead_letter, Some(0), "not moved until the next receive");

    // The fourth receive moves it instead of delivering it.
    assert!(receive_now(&queue).await.is_empty());
    assert_eq!(depth(&queue), (0, 0));
    assert_eq!(queue.stats_now().dead_letter, Some(1));

    let dead = receive_one(&dead_letter).await;
    assert_eq!(dead.message_id, id, "a moved message keeps its id");
    assert_eq!(dead.body, "poison");
    assert_eq!(dead.attributes.get("a").map(String::as_str), Some("1"));
}

#[tokio::test(start_paused = true)]
async fn redrive_skips_over_received_messages_and_still_fills_the_batch() {
    let (queue, dead_letter) = queue_with_dlq(1);
    queue.send(OutgoingMessage::new("old")).unwrap();
    receive_one(&queue).await;
    advance(VISIBILITY).await;
    queue.send(OutgoingMessage::new("new")).unwrap();
    let received = receive_now(&queue).await;
    let bodies: Vec<_> = received.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["new"]);
    assert_eq!(depth(&dead_letter), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_moved_message_keeps_its_enqueue_time_for_retention_and_age() {
    let dead_letter = EmbeddedQueue::new(
        "dlq",
        QueueConfig { retention: Duration::from_secs(100), ..QueueConfig::default() },
    );
    let queue = EmbeddedQueue::new(
        "q",
        QueueConfig {
            redrive: Some(Redrive { dead_letter: dead_letter.clone(), max_receive_count: 1 }),
            ..QueueConfig::default()
        },
    );
    queue.send(OutgoingMessage::new("m")).unwrap();
    receive_one(&queue).await;
    advance(Duration::from_secs(60)).await;
    dead_letter.send(OutgoingMessage::new("younger")).unwrap();
    assert!(receive_now(&queue).await.is_empty(), "moved, not delivered");
    assert_eq!(dead_letter.stats_now().oldest_age, Some(Duration::from_secs(60)));
    advance(Duration::from_secs(40)).await;
    assert_eq!(depth(&dead_letter), (1, 0), "the moved message expired 100 s after its first enqueue");
    assert_eq!(receive_one(&dead_letter).await.body, "younger");
}

#[tokio::test(start_paused = true)]
async fn send_to_dead_letter_goes_to_the_redrive_target() {
    let (queue, dead_letter) = queue_with_dlq(5);
    let message = OutgoingMessage::new("bad").with_attribute(bus::ATTR_DEAD_LETTER_REASON, "unparseable");
    queue.send_to_dead_letter(message.clone()).await.unwrap();
    assert_eq!(depth(&queue), (0, 0));
    let dead = receive_one(&dead_letter).await;
    assert_eq!(dead.body, "bad");
    assert_eq!(dead.attributes, message.attributes);
}

#[tokio::test(start_paused = true)]
async fn send_to_dead_letter_without_a_redrive_policy_is_an_error() {
    let result = queue().send_to_dead_letter(OutgoingMessage::new("bad")).await;
    assert!(
        matches!(&result, Err(BusError::Fatal { code, .. }) if code == "NoDeadLetterQueue"),
        "{result:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn messages_past_retention_vanish_whether_visible_or_in_flight() {
    let queue =
        EmbeddedQueue::new("q", QueueConfig { retention: Duration::from_secs(60), ..QueueConfig::default() });
    queue.send(OutgoingMessage::new("in flight")).unwrap();
    let received = receive_one(&queue).await;
    queue.send(OutgoingMessage::new("visible")).unwrap();
    advance(Duration::from_secs(10)).await;
    queue.send(OutgoingMessage::new("young")).unwrap();

    advance(Duration::from_secs(50)).await;
    assert_eq!(depth(&queue), (1, 0), "the first two are 60 s old and gone");
    assert_invalid_handle(queue.delete(received.receipt_handle).await);
    assert_eq!(receive_one(&queue).await.body, "young");
}

#[tokio::test(start_paused = true)]
async fn stats_count_visible_in_flight_oldest_age_and_dead_letters() {
    let (queue, dead_letter) = queue_with_dlq(5);
    assert_eq!(
        queue.stats_now(),
        QueueStats { visible: 0, in_flight: 0, oldest_age: None, dead_letter: Some(0) }
    );
    queue.send(OutgoingMessage::new("a")).unwrap();
    advance(Duration::from_secs(5)).await;
    queue.send(OutgoingMessage::new("b")).unwrap();
    queue.send(OutgoingMessage::new("c")).unwrap();
    receive_one(&queue).await;
    dead_letter.send(OutgoingMessage::new("d")).unwrap();
    advance(Duration::from_secs(2)).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        stats,
        QueueStats {
            visible: 2,
            in_flight: 1,
            oldest_age: Some(Duration::from_secs(7)),
            dead_letter: Some(1)
        }
    );
    assert_eq!(stats.backlog(), 3);
    assert_eq!(dead_letter.stats_now().dead_letter, None, "the DLQ has no DLQ of its own");
}

#[tokio::test(start_paused = true)]
async fn receive_validates_its_parameters() {
    let queue = queue();
    assert_invalid_parameter(queue.receive(0, Duration::ZERO).await);
    assert_invalid_parameter(queue.receive(11, Duration::ZERO).await);
    assert_invalid_parameter(queue.receive(1, MAX_WAIT + Duration::from_millis(1)).await);
    queue.send(OutgoingMessage::new("m")).unwrap();
    assert_eq!(queue.receive(10, MAX_WAIT).await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn receive_returns_at_most_max_messages_oldest_first() {
    let queue = queue();
    for n in 0..25 {
        queue.send(OutgoingMessage::new(n.to_string())).unwrap();
    }
    let first = receive_now(&queue).await;
    assert_eq!(first.len(), 10);
    assert_eq!(first[0].body, "0");
    assert_eq!(queue.receive(3, Duration::ZERO).await.unwrap().len(), 3);
    assert_eq!(depth(&queue), (12, 13));
}

#[tokio::test(start_paused = true)]
async fn batch_calls_enforce_one_to_ten_entries() {
    let queue = queue();
    let too_many = vec![ReceiptHandle("x".into()); 11];
    assert_eq!(queue.delete_batch(too_many).await, Err(BusError::InvalidBatchSize { len: 11 }));
    assert_eq!(queue.delete_batch(Vec::new()).await, Err(BusError::InvalidBatchSize { len: 0 }));
    let change = VisibilityChange { receipt_handle: ReceiptHandle("x".into()), timeout: Duration::ZERO };
    assert_eq!(
        queue.change_visibility_batch(vec![change.clone(); 11]).await,
        Err(BusError::InvalidBatchSize { len: 11 })
    );
    assert_eq!(queue.change_visibility_batch(Vec::new()).await, Err(BusError::InvalidBatchSize { len: 0 }));
}

#[tokio::test(start_paused = true)]
async fn batch_entries_succeed_or_fail_on_their_own() {
    let queue = queue();
    queue.send(OutgoingMessage::new("a")).unwrap();
    queue.send(OutgoingMessage::new("b")).unwrap();
    let received = receive_now(&queue).await;
    let handles = vec![
        received[0].receipt_handle.clone(),
        ReceiptHandle("bogus".into()),
        received[1].receipt_handle.clone(),
        received[1].receipt_handle.clone(),
    ];
    let results = queue.delete_batch(handles).await.unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(BusError::ReceiptHandleInvalid(_))));
    assert!(results[2].is_ok());
    assert!(matches!(results[3], Err(BusError::ReceiptHandleInvalid(_))), "already deleted by entry 2");
    assert_eq!(depth(&queue), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn messages_over_256_kib_are_refused_with_their_size() {
    let queue = queue();
    let at_limit = OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES - 10)).with_attribute("k", "abc");
    assert_eq!(at_limit.size_bytes(), MAX_MESSAGE_BYTES);
    queue.send(at_limit).unwrap();

    let over = OutgoingMessage::new("x".repeat(MAX_MESSAGE_BYTES + 1));
    let error = queue.send(over).unwrap_err();
    assert_eq!(error, BusError::MessageTooLarge { size: MAX_MESSAGE_BYTES + 1, limit: MAX_MESSAGE_BYTES });
    assert!(error.to_string().contains("262145 bytes"), "{error}");
    assert_eq!(depth(&queue), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn injected_failures_fail_every_port_call_and_keep_the_messages() {
    let (queue, dead_letter) = queue_with_dlq(5);
    queue.send(OutgoingMessage::new("m")).unwrap();
    let received = receive_one(&queue).await;
    let failure = BusError::Transient { code: "ServiceUnavailable".into(), message: "injected".into() };
    queue.inject_failure(Some(failure.clone()));

    assert_eq!(queue.receive(1, Duration::from_secs(5)).await, Err(failure.clone()));
    assert_eq!(queue.delete(received.receipt_handle.clone()).await, Err(failure.clone()));
    assert_eq!(
        queue.change_visibility(received.receipt_handle.clone(), Duration::ZERO).await,
        Err(failure.clone())
    );
    assert_eq!(queue.send_to_dead_letter(OutgoingMessage::new("x")).await, Err(failure.clone()));
    assert_eq!(queue.stats().await, Err(failure.clone()));
    assert_eq!(queue.send(OutgoingMessage::new("x")), Err(failure.clone()));
    assert_eq!(depth(&queue), (0, 1), "stats_now bypasses the fault; nothing was lost");
    assert_eq!(depth(&dead_letter), (0, 0));

    queue.inject_failure(None);
    queue.delete(received.receipt_handle).await.unwrap();
    assert_eq!(depth(&queue), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_failing_dead_letter_queue_fails_send_to_dead_letter() {
    let (queue, dead_letter) = queue_with_dlq(5);
    let failure = BusError::Fatal { code: "AccessDenied".into(), message: "injected".into() };
    dead_letter.inject_failure(Some(failure.clone()));
    assert_eq!(queue.send_to_dead_letter(OutgoingMessage::new("x")).await, Err(failure));
}

#[tokio::test(start_paused = true)]
async fn clones_are_handles_to_the_same_queue() {
    let queue = queue();
    let other = queue.clone();
    queue.send(OutgoingMessage::new("m")).unwrap();
    assert_eq!(receive_one(&other).await.body, "m");
    assert_eq!(queue.name(), "orders");
    assert!(format!("{queue:?}").contains("orders"));
}
