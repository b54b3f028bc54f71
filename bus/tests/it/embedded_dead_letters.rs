//! `Consumer::requeue` on the embedded queue (delayed sends) and the dead-letter tools on the embedded stack:
//! peeking, and redriving by receive → send → delete, interrupted or not. Paused clock.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use bus::embedded::{EmbeddedQueue, EmbeddedStack, StackConfig};
use bus::{
    ATTR_DEAD_LETTER_REASON, ATTR_SCHEMA_VERSION, Consumer, DeadLetters, MAX_DELAY, OutgoingMessage,
    ReceivedMessage, RedriveEvent, RedriveMethod, RedriveOptions,
};
use tokio::time::{Instant, advance};

const SECOND: Duration = Duration::from_secs(1);

fn stack(max_receive_count: u32) -> EmbeddedStack {
    EmbeddedStack::new(StackConfig { max_receive_count, ..StackConfig::default() })
}

fn order(n: usize) -> OutgoingMessage {
    OutgoingMessage::new(format!(r#"{{"order":{n}}}"#)).with_attribute(ATTR_SCHEMA_VERSION, "1")
}

async fn receive_now(queue: &EmbeddedQueue) -> Vec<ReceivedMessage> {
    queue.receive(10, Duration::ZERO).await.expect("receive")
}

async fn drain(queue: &EmbeddedQueue) -> Vec<ReceivedMessage> {
    let mut all = Vec::new();
    loop {
        let batch = receive_now(queue).await;
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// Dead-letters `count` orders the way the worker does: a copy with a reason, sent to the DLQ.
async fn dead_letter_orders(stack: &EmbeddedStack, count: usize) {
    for n in 0..count {
        let message = order(n).with_attribute(ATTR_DEAD_LETTER_REASON, format!("poison {n}"));
        stack.queue.send_to_dead_letter(message).await.expect("send to the DLQ");
    }
}

#[tokio::test(start_paused = true)]
async fn a_requeued_copy_stays_invisible_for_the_delay_then_starts_counting_again() {
    let stack = stack(5);
    stack.queue.send(order(1)).unwrap();
    for _ in 0..4 {
        let [message] = receive_now(&stack.queue).await.try_into().unwrap();
        stack.queue.change_visibility(message.receipt_handle, Duration::ZERO).await.unwrap();
    }
    let [original] = receive_now(&stack.queue).await.try_into().unwrap();
    assert_eq!(original.receive_count, 5, "the last receive before the DLQ");

    let copy = OutgoingMessage { body: original.body.clone(), attributes: original.attributes.clone() };
    let copy_id = stack.queue.requeue(copy, 10 * SECOND).await.expect("requeue");
    stack.queue.delete(original.receipt_handle).await.unwrap();
    assert_ne!(copy_id, original.message_id, "a fresh message");

    assert!(receive_now(&stack.queue).await.is_empty(), "invisible at once");
    advance(10 * SECOND - Duration::from_millis(1)).await;
    assert!(receive_now(&stack.queue).await.is_empty(), "invisible until the delay is over");
    assert_eq!(stack.queue.stats_now().backlog(), 1, "but counted as work to do");
    advance(Duration::from_millis(1)).await;
    let [again] = receive_now(&stack.queue).await.try_into().unwrap();
    assert_eq!((again.message_id.as_str(), again.receive_count), (copy_id.as_str(), 1));
    assert_eq!((again.body, again.attributes), (original.body, original.attributes));
    assert_eq!(stack.dead_letter.stats_now().backlog(), 0, "never dead-lettered");
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_wakes_when_a_delay_ends_and_delays_are_clamped_to_15_minutes() {
    let queue = EmbeddedQueue::new("orders", Default::default());
    let polling = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let received = queue.receive(1, Duration::from_secs(20)).await.unwrap();
            (Instant::now(), received)
        })
    };
    tokio::task::yield_now().await;
    let started = Instant::now();
    queue.requeue(order(1), 3 * SECOND).await.unwrap();
    let (woke, received) = polling.await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(woke - started, 3 * SECOND, "woken when the delay ended, not at the end of its wait");

    queue.delete(received[0].receipt_handle.clone()).await.unwrap();
    queue.requeue(order(2), Duration::from_secs(3600)).await.unwrap();
    advance(MAX_DELAY - SECOND).await;
    assert!(receive_now(&queue).await.is_empty());
    advance(SECOND).await;
    assert_eq!(receive_now(&queue).await.len(), 1, "an hour's delay is 15 minutes, as on SQS");
}

#[tokio::test(start_paused = true)]
async fn list_shows_reasons_and_receive_counts_and_leaves_everything_visible() {
    let stack = stack(1);
    dead_letter_orders(&stack, 3).await;
    // One more the way SQS's redrive moves it: received once, visibility over, moved on the next receive.
    stack.queue.send(order(99)).unwrap();
    let [first] = receive_now(&stack.queue).await.try_into().unwrap();
    stack.queue.change_visibility(first.receipt_handle, Duration::ZERO).await.unwrap();
    assert!(receive_now(&stack.queue).await.is_empty(), "moved to the DLQ instead");
    advance(7 * SECOND).await;

    let listed = stack.list(10).await.expect("list");
    assert_eq!(listed.len(), 4);
    let reasons: BTreeSet<_> = listed.iter().map(|letter| letter.reason.clone()).collect();
    let expected: BTreeSet<_> =
        [None, Some("poison 0".into()), Some("poison 1".into()), Some("poison 2".into())].into();
    assert_eq!(reasons, expected, "SQS's own redrive sets no reason");
    assert!(listed.iter().all(|letter| letter.receive_count == 1), "{listed:?}");
    assert!(listed.iter().all(|letter| letter.age_seconds <= 7), "{listed:?}");
    let stats = stack.dead_letter.stats_now();
    assert_eq!((stats.visible, stats.in_flight), (4, 0), "a peek hands them back at once");

    let again = stack.list(2).await.expect("list");
    assert_eq!(again.len(), 2, "bounded by max");
    assert!(again.iter().all(|letter| letter.receive_count == 2), "each peek is a receive: {again:?}");
}

#[tokio::test(start_paused = true)]
async fn redrive_moves_every_message_back_without_its_reason() {
    let stack = stack(5);
    dead_letter_orders(&stack, 25).await;
    let events = Mutex::new(Vec::new());
    let report = stack
        .redrive(&RedriveOptions::default(), &|event| events.lock().unwrap().push(event.clone()))
        .await
        .expect("redrive");
    assert_eq!((report.method, report.moved, report.left_behind), (RedriveMethod::ReceiveSendDelete, 25, 0));
    assert_eq!(stack.dead_letter.stats_now().backlog(), 0, "none left behind");
    let back = drain(&stack.queue).await;
    let bodies: BTreeSet<_> = back.iter().map(|message| message.body.clone()).collect();
    assert_eq!(bodies, (0..25).map(|n| order(n).body).collect());
    assert!(back.iter().all(|message| !message.attributes.contains_key(ATTR_DEAD_LETTER_REASON)));
    assert!(back.iter().all(|message| message.attributes.get(ATTR_SCHEMA_VERSION).is_some_and(|v| v == "1")));
    let copied =
        events.lock().unwrap().iter().filter(|event| matches!(event, RedriveEvent::Copied { .. })).count();
    assert_eq!(copied, 3, "batches of at most ten");
}

#[tokio::test(start_paused = true)]
async fn a_redrive_interrupted_between_send_and_delete_loses_nothing() {
    let stack = stack(5);
    dead_letter_orders(&stack, 25).await;
    let copied = tokio::sync::Notify::new();
    let options = RedriveOptions::default();
    let on_event = |event: &RedriveEvent| {
        if matches!(event, RedriveEvent::Copied { .. }) {
            copied.notify_one();
        }
    };
    let redrive = stack.redrive(&options, &on_event);
    tokio::select! {
        biased;
        () = copied.notified() => {}
        report = redrive => panic!("the redrive should have been interrupted: {report:?}"),
    }
    // The first batch is in the source queue and still (in flight) in the DLQ.
    assert_eq!(stack.queue.stats_now().visible, 10);
    let dlq = stack.dead_letter.stats_now();
    assert_eq!((dlq.visible, dlq.in_flight), (15, 10));

    let report = stack.redrive(&RedriveOptions::default(), &|_| {}).await.expect("second redrive");
    assert_eq!((report.moved, report.left_behind), (25, 0), "it waited for the interrupted batch");
    assert_eq!(stack.dead_letter.stats_now().backlog(), 0);
    let back = drain(&stack.queue).await;
    assert_eq!(back.len(), 35, "the interrupted batch twice: harmless");
    let bodies: BTreeSet<_> = back.iter().map(|message| message.body.clone()).collect();
    assert_eq!(bodies.len(), 25, "every message at least once");
}

#[tokio::test(start_paused = true)]
async fn a_redrive_gives_up_on_messages_held_in_flight_past_its_wait() {
    let stack = stack(5);
    dead_letter_orders(&stack, 2).await;
    let held = receive_now(&stack.dead_letter).await;
    stack
        .dead_letter
        .change_visibility(held[0].receipt_handle.clone(), Duration::from_secs(600))
        .await
        .unwrap();
    stack.dead_letter.change_visibility(held[1].receipt_handle.clone(), Duration::ZERO).await.unwrap();
    let options = RedriveOptions { in_flight_wait: Duration::from_secs(45), ..RedriveOptions::default() };
    let report = stack.redrive(&options, &|_| {}).await.expect("redrive");
    assert_eq!((report.moved, report.left_behind), (1, 1), "{report:?}");
}
