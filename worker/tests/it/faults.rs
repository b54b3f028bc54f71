//! The worker under faults, on the embedded SNS/SQS with a paused clock: crashes, gateway outages, poison,
//! shutdown under load, duplicates, broker errors, slot accounting and the visibility heartbeat.
//!
//! "Nothing lost" is checked the same way everywhere: every message sent is settled and deleted, or in the
//! dead-letter queue, or still in the queue and visible.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Call, Observed, Running, config, drain, order_body, send_orders, stack, wait_for};
use bus::embedded::{Delivery, EmbeddedTopic};
use bus::{ATTR_DEAD_LETTER_REASON, BusError, Consumer, OutgoingMessage, Publisher};
use orders::OutageWindow;
use tokio::time::{Instant, sleep};
use worker::{GateMode, Worker, WorkerConfig, WorkerError};

const SECOND: Duration = Duration::from_secs(1);
const VISIBILITY: Duration = Duration::from_secs(30);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// 1. A consumer dies mid-payment.
#[tokio::test(start_paused = true)]
async fn a_worker_killed_mid_payment_loses_nothing() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 3);
    let first = Running::start(config(3, secs(3), VISIBILITY), Arc::new(stack.queue.clone()));
    wait_for("three payments in progress", SECOND, || first.handle.in_flight() == 3).await;
    sleep(SECOND).await;
    let first_handle = first.handle.clone();
    let killed_at = Instant::now();
    first.kill().await;

    assert_eq!(first_handle.charged(), 0, "killed before any payment finished");
    let depth = stack.queue.stats_now();
    assert_eq!((depth.visible, depth.in_flight), (0, 3), "the messages are hidden, not lost");

    let second = Running::start(config(3, secs(3), VISIBILITY), Arc::new(stack.queue.clone()));
    wait_for("the second worker settles all three", secs(60), || second.handle.settled() == 3).await;
    assert!(
        killed_at.elapsed() >= VISIBILITY - secs(1),
        "redelivered only once the visibility timeout ran out, after {:?}",
        killed_at.elapsed()
    );
    wait_for("the deletes", SECOND, || stack.queue.stats_now().backlog() == 0).await;
    assert_eq!(second.handle.charged(), 3);
    assert_eq!(first_handle.charged(), 0, "the killed worker's payments died with it");
    assert_eq!(stack.dead_letter.stats_now().backlog(), 0);
    second.shutdown().await;
}

// 2. A payment-gateway outage.
#[tokio::test(start_paused = true)]
async fn a_gateway_outage_loses_nothing_and_dead_letters_the_exhausted_with_their_reason() {
    let stack = stack(VISIBILITY, 5);
    let mut config = config(5, SECOND, VISIBILITY);
    // Without the circuit breaker (tests/it/breaker.rs has the outage with it): retries and dead-lettering.
    config.breaker.enabled = false;
    config.payment.faults.outage = Some(OutageWindow { starts_after: Duration::ZERO, lasts: secs(100) });
    // Received at t = 0: retried after backoffs of at most 5 + 10 + 20 + 40 s, so their fifth and last allowed
    // receive fails at t <= 75 s, inside the outage.
    let exhausted: HashSet<_> = send_orders(&stack.queue, 10).into_iter().collect();
    let worker = Running::start(config, Arc::new(stack.queue.clone()));
    sleep(secs(80)).await;
    // Received at t = 80 s: backoffs of at least 2.5 + 5 + 10 + 20 s put their fifth receive after the outage.
    let survivors = send_orders(&stack.queue, 10);

    wait_for("the survivors to be paid", secs(300), || worker.handle.settled() == 10).await;
    wait_for("the deletes", SECOND, || stack.queue.stats_now().backlog() == 0).await;
    let stats = worker.handle.stats();
    assert_eq!((stats.completed, stats.dead_lettered, stats.charged), (10, 10, 10), "{stats:?}");
    assert!(stats.retried >= 10 * 4, "every exhausted message was retried four times: {stats:?}");

    let dead = drain(&stack.dead_letter).await;
    assert_eq!(dead.len(), 10);
    for message in &dead {
        let order = orders::WireMessage::parse(&message.body).expect("the original body, unchanged");
        assert!(exhausted.contains(&order.order.order_id), "only the exhausted ones are dead-lettered");
        assert!(!survivors.contains(&order.order.order_id));
        let reason = &message.attributes[ATTR_DEAD_LETTER_REASON];
        assert!(reason.contains("payment gateway unavailable") && reason.contains("5"), "{reason}");
    }
    worker.shutdown().await;
}

// 2b. Transient failures rely on visibility and redrive: without the worker's own dead-lettering, the queue's
// redrive policy still moves exhausted messages to the DLQ.
#[tokio::test(start_paused = true)]
async fn without_the_workers_dead_lettering_the_redrive_policy_is_the_backstop() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 5);
    let mut config = config(5, SECOND, VISIBILITY);
    config.max_receive_count = 0;
    config.breaker.enabled = false;
    config.payment.faults.outage = Some(OutageWindow { starts_after: Duration::ZERO, lasts: secs(10_000) });
    let worker = Running::start(config, Arc::new(stack.queue.clone()));
    wait_for("the redrive to move all five", secs(600), || stack.dead_letter.stats_now().visible == 5).await;
    let stats = worker.handle.stats();
    assert_eq!(
        (stats.dead_lettered, stats.charged, stats.retried),
        (0, 0, 25),
        "five receives each: {stats:?}"
    );
    assert_eq!(stack.queue.stats_now().backlog(), 0);
    worker.shutdown().await;
}

// 3. Poison in a healthy stream.
#[tokio::test(start_paused = true)]
async fn poison_is_dead_lettered_without_slowing_the_stream() {
    let clean = settle_stream(0).await;
    let poisoned = settle_stream(20).await;
    assert!(
        poisoned <= clean + clean / 50,
        "100 orders took {clean:?} alone and {poisoned:?} among 20 poison messages"
    );
}

/// Sends 100 good orders (half raw, half in the SNS envelope) with `poison` bad messages spread among them,
/// runs 10 consumers at 1 s per payment, and returns how long the good ones took. Checks the dead letters.
async fn settle_stream(poison: usize) -> Duration {
    let stack = stack(VISIBILITY, 5);
    let enveloping = EmbeddedTopic::new("enveloped");
    enveloping.subscribe(&stack.queue, Delivery::Enveloped);
    let (_, valid) = order_body();
    let mut wrong_total: serde_json::Value = serde_json::from_str(&valid).unwrap();
    wrong_total["order"]["total"] = "0.01".into();
    let mut future_version: serde_json::Value = serde_json::from_str(&valid).unwrap();
    future_version["v"] = 2.into();
    let bad = [
        "not json".to_string(),
        "{}".to_string(),
        wrong_total.to_string(),
        future_version.to_string(),
        r#"{"Type":"SubscriptionConfirmation","Message":"confirm me","Token":"t"}"#.to_string(),
    ];
    let mut sent_poison = HashSet::new();
    for i in 0..100 {
        let (_, body) = order_body();
        if i % 2 == 0 {
            stack.queue.send(OutgoingMessage::new(body)).unwrap();
        } else {
            enveloping.publish(OutgoingMessage::new(body)).await.unwrap();
        }
        if poison > 0 && i % (100 / poison) == 0 {
            let body = format!("{} ", bad[sent_poison.len() % bad.len()]); // distinct bodies
            let body = body.repeat(sent_poison.len() + 1);
            stack.queue.send(OutgoingMessage::new(body.clone()).with_attribute("origin", "test")).unwrap();
            sent_poison.insert(body);
        }
    }
    assert_eq!(sent_poison.len(), poison);

    let started = Instant::now();
    let worker = Running::start(config(10, SECOND, VISIBILITY), Arc::new(stack.queue.clone()));
    wait_for("100 orders settled", secs(60), || worker.handle.settled() == 100).await;
    let took = started.elapsed();
    wait_for("the poison dead-lettered", SECOND, || worker.handle.stats().dead_lettered == poison as u64)
        .await;
    wait_for("the deletes", SECOND, || stack.queue.stats_now().backlog() == 0).await;

    let dead = drain(&stack.dead_letter).await;
    assert_eq!(dead.len(), poison);
    for message in dead {
        assert!(sent_poison.contains(&message.body), "the original body is kept");
        assert_eq!(message.attributes["origin"], "test", "original attributes are kept");
        assert!(message.attributes[ATTR_DEAD_LETTER_REASON].starts_with("poison message: "));
    }
    assert_eq!(worker.handle.charged(), 100);
    worker.shutdown().await;
    took
}

// 4. Shutdown in the middle of a load.
#[tokio::test(start_paused = true)]
async fn shutdown_lets_in_flight_payments_finish_and_leaves_the_rest_visible() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 50);
    let worker = Running::start(config(10, secs(3), VISIBILITY), Arc::new(stack.queue.clone()));
    wait_for("ten payments in progress", SECOND, || worker.handle.in_flight() == 10).await;
    sleep(SECOND).await;
    let handle = worker.handle.clone();
    let stopping = Instant::now();
    worker.shutdown().await;

    assert!(stopping.elapsed() < secs(3), "only the in-flight payments were waited for");
    let stats = handle.stats();
    assert_eq!(
        (stats.completed, stats.charged, stats.released, stats.in_flight),
        (10, 10, 0, 0),
        "{stats:?}"
    );
    let depth = stack.queue.stats_now();
    assert_eq!((depth.visible, depth.in_flight), (40, 0), "the ten are deleted, the forty untouched");
}

#[tokio::test(start_paused = true)]
async fn shutdown_past_its_deadline_releases_unfinished_messages_at_once() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 50);
    let mut config = config(10, secs(10), VISIBILITY);
    config.shutdown_deadline = SECOND;
    let worker = Running::start(config.clone(), Arc::new(stack.queue.clone()));
    wait_for("ten payments in progress", SECOND, || worker.handle.in_flight() == 10).await;
    let handle = worker.handle.clone();
    let stopping = Instant::now();
    worker.shutdown().await;

    assert!(stopping.elapsed() < secs(2), "stopped soon after the deadline: {:?}", stopping.elapsed());
    let stats = handle.stats();
    assert_eq!((stats.settled(), stats.charged, stats.released), (0, 0, 10), "{stats:?}");
    let depth = stack.queue.stats_now();
    assert_eq!((depth.visible, depth.in_flight), (50, 0), "released messages are visible at once");

    let next = Running::start(config, Arc::new(stack.queue.clone()));
    wait_for("the next worker settles all fifty", secs(60), || next.handle.settled() == 50).await;
    wait_for("the deletes", SECOND, || stack.queue.stats_now().backlog() == 0).await;
    next.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_a_shared_gate_releases_the_orders_still_waiting_for_it() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 50);
    let mut config = config(10, SECOND, VISIBILITY);
    config.gate_mode = GateMode::Shared { slots: 1 };
    config.shutdown_deadline = Duration::from_millis(3_500);
    let worker = Running::start(config, Arc::new(stack.queue.clone()));
    sleep(Duration::from_millis(250)).await;
    let handle = worker.handle.clone();
    worker.shutdown().await;

    // Payments finish at 1, 2 and 3 s; the fourth is cut off by the deadline at 3.75 s.
    let stats = handle.stats();
    assert_eq!((stats.completed, stats.charged, stats.released), (3, 3, 7), "{stats:?}");
    let depth = stack.queue.stats_now();
    assert_eq!((depth.visible, depth.in_flight), (47, 0));
}

// 5. The same order delivered twice.
#[tokio::test(start_paused = true)]
async fn an_order_delivered_twice_in_a_row_is_charged_once() {
    let stack = stack(VISIBILITY, 5);
    let (_, body) = order_body();
    stack.queue.send(OutgoingMessage::new(body.clone())).unwrap();
    stack.queue.send(OutgoingMessage::new(body)).unwrap();
    let worker = Running::start(config(1, SECOND, VISIBILITY), Arc::new(stack.queue.clone()));
    wait_for("both deliveries handled", secs(10), || worker.handle.stats().duplicates == 1).await;
    wait_for("the deletes", SECOND, || stack.queue.stats_now().backlog() == 0).await;
    let stats = worker.handle.stats();
    assert_eq!((stats.completed, stats.charged, stats.duplicates), (1, 1, 1), "{stats:?}");
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_order_delivered_twice_at_once_is_charged_once() {
    let stack = stack(VISIBILITY, 5);
    let (_, body) = order_body();
    stack.queue.send(OutgoingMessage::new(body.clone())).unwrap();
    stack.queue.send(OutgoingMessage::new(body)).unwrap();
    let worker = Running::start(config(2, SECOND, VISIBILITY), Arc::new(stack.queue.clone()));
    wait_for("both deliveries handled", secs(30), || worker.handle.stats().duplicates == 1).await;
    wait_for("the deletes", SECOND, || stack.queue.stats_now().backlog() == 0).await;
    let stats = worker.handle.stats();
    assert_eq!((stats.completed, stats.charged, stats.duplicates), (1, 1, 1), "{stats:?}");
    assert_eq!(stats.retried, 1, "the copy that arrived while the first was paid was postponed once");
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_order_redelivered_after_a_lost_delete_is_charged_once() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 1);
    let observed = Observed::new(stack.queue.clone());
    *observed.failing_deletes.lock().unwrap() =
        Some(BusError::Fatal { code: "AccessDenied".into(), message: "simulated".into() });
    let worker = Running::start(config(1, SECOND, VISIBILITY), observed.clone());
    wait_for("the failed delete reported", secs(5), || worker.handle.stats().delete_failures == 1).await;
    *observed.failing_deletes.lock().unwrap() = None;
    wait_for("the redelivery recognised", secs(60), || worker.handle.stats().duplicates == 1).await;
    wait_for("the deletes", SECOND, || stack.queue.stats_now().backlog() == 0).await;
    let stats = worker.handle.stats();
    assert_eq!((stats.received, stats.completed, stats.charged), (2, 1, 1), "{stats:?}");
    worker.shutdown().await;
}

// Never more received than free slots.
#[tokio::test(start_paused = true)]
async fn never_receives_more_messages_than_free_slots() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 50);
    let observed = Observed::new(stack.queue.clone());
    let mut config = config(5, secs(10), VISIBILITY);
    config.pollers = 3;
    let worker = Running::start(config, observed.clone());

    // Sample between waves' edges (payments end at multiples of 10 s, deletes flush 10 ms later).
    sleep(Duration::from_millis(50)).await;
    for step in 0..1_000 {
        let depth = stack.queue.stats_now();
        assert!(worker.handle.in_flight() <= 5, "step {step}");
        assert!(depth.in_flight <= 5, "step {step}: {depth:?} received beyond the five slots");
        if step == 50 {
            assert_eq!(worker.handle.stats().received, 5, "at 5 s: one wave received, not more");
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(worker.handle.settled(), 50);
    for (_, call) in observed.calls() {
        if let Call::Receive { asked, got } = call {
            assert!(asked <= 5 && got <= asked, "asked {asked}, got {got}");
        }
    }
    worker.shutdown().await;
}

// Gate modes.
#[tokio::test(start_paused = true)]
async fn a_shared_gate_caps_throughput_and_per_consumer_gates_scale() {
    let per_consumer = settled_after(GateMode::PerConsumer, secs(10)).await;
    let shared = settled_after(GateMode::Shared { slots: 2 }, secs(10)).await;
    assert_eq!(per_consumer, 100, "ten consumers with their own gates: 10 orders/s");
    assert_eq!(shared, 20, "ten consumers sharing two slots: 2 orders/s");
}

/// Ten consumers at 1 s per payment, 100 orders: how many are settled after `after` (plus a hair). Also
/// checks that waiting for a shared gate longer than the visibility timeout causes no redelivery.
async fn settled_after(mode: GateMode, after: Duration) -> u64 {
    let visibility = secs(5);
    let stack = stack(visibility, 5);
    send_orders(&stack.queue, 100);
    let mut config = config(10, SECOND, visibility);
    config.gate_mode = mode;
    let worker = Running::start(config, Arc::new(stack.queue.clone()));
    sleep(after + Duration::from_millis(100)).await;
    let settled = worker.handle.settled();
    wait_for("everything", secs(100), || worker.handle.settled() == 100).await;
    let stats = worker.handle.stats();
    assert_eq!((stats.received, stats.duplicates, stats.charged), (100, 0, 100), "no redelivery: {stats:?}");
    worker.shutdown().await;
    settled
}

// Broker errors.
#[tokio::test(start_paused = true)]
async fn receive_errors_back_off_and_recover_without_loss() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 20);
    stack.queue.inject_failure(Some(BusError::Transient {
        code: "ThrottlingException".into(),
        message: "slow down".into(),
    }));
    let worker = Running::start(config(5, SECOND, VISIBILITY), Arc::new(stack.queue.clone()));
    sleep(secs(30)).await;
    let errors = worker.handle.stats().poll_errors;
    assert!((5..=15).contains(&errors), "{errors} receives in 30 s: exponential backoff, no hot loop");
    stack.queue.inject_failure(None);

    wait_for("recovery", secs(60), || worker.handle.settled() == 20).await;
    wait_for("the deletes", SECOND, || stack.queue.stats_now().backlog() == 0).await;
    assert_eq!(worker.handle.charged(), 20);
    assert_eq!(stack.dead_letter.stats_now().backlog(), 0);
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn delete_errors_are_retried_until_they_succeed() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 10);
    let worker = Running::start(config(10, SECOND, VISIBILITY), Arc::new(stack.queue.clone()));
    sleep(Duration::from_millis(500)).await;
    stack
        .queue
        .inject_failure(Some(BusError::Transient { code: "InternalError".into(), message: "oops".into() }));
    sleep(Duration::from_millis(800)).await; // the payments end at 1 s and their deletes fail for 0.3 s
    stack.queue.inject_failure(None);
    wait_for("the deletes", secs(5), || stack.queue.stats_now().backlog() == 0).await;
    let stats = worker.handle.stats();
    assert_eq!((stats.completed, stats.received, stats.delete_failures), (10, 10, 0), "{stats:?}");
    worker.shutdown().await;
}

// The visibility heartbeat.
#[tokio::test(start_paused = true)]
async fn the_heartbeat_keeps_a_long_payment_from_being_redelivered() {
    let visibility = secs(3);
    let stack = stack(visibility, 5);
    send_orders(&stack.queue, 1);
    let observed = Observed::new(stack.queue.clone());
    let worker = Running::start(config(1, secs(10), visibility), observed.clone());
    let started = Instant::now();
    for check in [secs(4), secs(7), Duration::from_millis(9_500)] {
        tokio::time::sleep_until(started + check).await;
        let stolen = stack.queue.receive(10, Duration::ZERO).await.unwrap();
        assert!(stolen.is_empty(), "at {check:?} another consumer could take the message");
    }
    wait_for("the long payment", secs(5), || worker.handle.settled() == 1).await;
    wait_for("the delete", SECOND, || stack.queue.stats_now().backlog() == 0).await;
    let stats = worker.handle.stats();
    assert_eq!((stats.received, stats.charged), (1, 1));
    assert!(stats.heartbeats >= 4, "extended every 2 s over 10 s: {stats:?}");

    let calls = observed.calls();
    let deleted_at = calls.iter().position(|(_, call)| matches!(call, Call::Delete(_))).expect("a delete");
    assert!(
        !calls[deleted_at..].iter().any(|(_, call)| matches!(call, Call::ChangeVisibility(..))),
        "no visibility change after the delete: {calls:?}"
    );
    worker.shutdown().await;
}

/// The worst case of a shutdown: payments that outlast the drain deadline, a broker that never answers a
/// release or a delete. `run` still returns within `worst_case_shutdown`, the budget the container's stop
/// timeout is derived from (and the default fits ECS's 30 s only with the stop timeout `terraform/` sets).
#[tokio::test(start_paused = true)]
async fn a_shutdown_with_a_stalled_broker_ends_within_its_worst_case() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 4);
    let observed = Observed::new(stack.queue.clone());
    let config = WorkerConfig { shutdown_deadline: secs(2), ..config(3, secs(60), VISIBILITY) };
    let budget = config.worst_case_shutdown();
    assert_eq!(budget, secs(2 + 3 + 5));
    assert_eq!(
        WorkerConfig::default().worst_case_shutdown(),
        secs(33),
        "over ECS's default 30 s stop timeout"
    );
    let worker = Running::start(config, observed.clone());
    wait_for("three payments under way", secs(5), || worker.handle.stats().in_flight == 3).await;
    observed.stalled_extensions.store(true, std::sync::atomic::Ordering::SeqCst);
    *observed.failing_deletes.lock().unwrap() =
        Some(BusError::Transient { code: "InternalError".into(), message: "deletes are down".into() });
    let started = Instant::now();
    worker.shutdown().await;
    let took = started.elapsed();
    assert!(took <= budget, "the shutdown took {took:?}, over its worst case {budget:?}");
    assert!(took >= secs(2), "it waited out the drain deadline: {took:?}");
}

/// A delete that keeps failing after the payment is retried for as long as the message stays hidden, not just
/// for the batcher's usual second and a half: the broker's five-second trouble passes and nothing is redelivered.
#[tokio::test(start_paused = true)]
async fn a_settled_orders_delete_is_retried_while_its_message_is_hidden() {
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 1);
    let observed = Observed::new(stack.queue.clone());
    *observed.failing_deletes.lock().unwrap() =
        Some(BusError::Transient { code: "InternalError".into(), message: "deletes are down".into() });
    let worker = Running::start(config(1, SECOND, VISIBILITY), observed.clone());
    wait_for("the payment", secs(5), || worker.handle.settled() == 1).await;
    sleep(secs(5)).await;
    *observed.failing_deletes.lock().unwrap() = None;
    wait_for("the delete", secs(10), || stack.queue.stats_now().backlog() == 0).await;
    let deletes = observed.calls().iter().filter(|(_, call)| matches!(call, Call::Delete(_))).count();
    assert!(deletes > 5, "tried past the batcher's usual five sends: {deletes}");
    let stats = worker.handle.stats();
    assert_eq!((stats.received, stats.charged, stats.delete_failures), (1, 1, 0), "{stats:?}");
    worker.shutdown().await;
}

/// A transient failure of an extension is retried while the message is still hidden, instead of ending the
/// heartbeat: the message is never shown to another consumer during the payment.
#[tokio::test(start_paused = true)]
async fn the_heartbeat_retries_a_failed_extension_while_the_message_is_hidden() {
    let visibility = secs(30);
    let stack = stack(visibility, 5);
    send_orders(&stack.queue, 1);
    let observed = Observed::new(stack.queue.clone());
    *observed.failing_extensions.lock().unwrap() =
        Some(BusError::Transient { code: "InternalError".into(), message: "extensions are down".into() });
    let worker = Running::start(config(1, secs(40), visibility), observed.clone());
    let started = Instant::now();
    tokio::time::sleep_until(started + secs(22)).await;
    *observed.failing_extensions.lock().unwrap() = None;
    for check in [secs(31), secs(35), secs(39)] {
        tokio::time::sleep_until(started + check).await;
        let stolen = stack.queue.receive(10, Duration::ZERO).await.unwrap();
        assert!(stolen.is_empty(), "at {check:?} another consumer could take the message");
    }
    wait_for("the long payment", secs(5), || worker.handle.settled() == 1).await;
    let stats = worker.handle.stats();
    assert_eq!((stats.received, stats.charged), (1, 1), "{stats:?}");
    assert!(stats.heartbeats >= 1, "an extension got through once the failure passed: {stats:?}");
    worker.shutdown().await;
}

/// An extension call that never answers does not hold the payment up: the payment finishes on time, each call
/// is bounded, and the message is deleted.
#[tokio::test(start_paused = true)]
async fn a_stalled_extension_does_not_hold_up_the_payment() {
    let visibility = secs(3);
    let stack = stack(visibility, 5);
    send_orders(&stack.queue, 1);
    let observed = Observed::new(stack.queue.clone());
    observed.stalled_extensions.store(true, std::sync::atomic::Ordering::SeqCst);
    let worker = Running::start(config(1, secs(10), visibility), observed.clone());
    let started = Instant::now();
    wait_for("the payment", secs(15), || worker.handle.settled() == 1).await;
    assert!(
        started.elapsed() < Duration::from_millis(10_600),
        "settled {:?} after the receive",
        started.elapsed()
    );
    assert_eq!(worker.handle.stats().charged, 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn an_invalid_config_is_refused() {
    let stack = stack(VISIBILITY, 5);
    let worker = Worker::new(
        WorkerConfig { consumers: 0, ..WorkerConfig::default() },
        Arc::new(stack.queue.clone()),
        Arc::new(ledger::embedded::EmbeddedLedger::default()),
    );
    let outcome = worker.run(std::future::pending()).await;
    assert!(matches!(outcome, Err(WorkerError::InvalidConfig(_))), "{outcome:?}");
}

trait Settled {
    fn settled(&self) -> u64;
}

impl Settled for worker::WorkerStats {
    fn settled(&self) -> u64 {
        self.completed + self.declined
    }
}
