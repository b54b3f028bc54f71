//! The circuit breaker on the embedded SNS/SQS with a paused clock: an outage longer than every retry the queue
//! allows dead-letters nothing with the breaker and dead-letters orders without it, and an open breaker makes
//! no receive calls.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Call, Observed, Running, config, drain, send_orders, stack, wait_for};
use bus::Consumer;
use ledger::Ledger;
use ledger::embedded::EmbeddedLedger;
use orders::{OrderStatus, OutageWindow};
use tokio::time::{Instant, sleep};
use worker::{BreakerState, WorkerConfig};

const VISIBILITY: Duration = Duration::from_secs(30);
const MAX_RECEIVES: u32 = 5;
const ORDERS: usize = 50;
/// Longer than five receives with the retry backoff between them (5 + 10 + 20 + 40 s at most).
const OUTAGE: Duration = Duration::from_secs(400);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn outage_config(breaker: bool, outage: Duration) -> WorkerConfig {
    let mut config = config(5, Duration::from_secs(1), VISIBILITY);
    config.max_receive_count = MAX_RECEIVES;
    config.breaker.enabled = breaker;
    config.payment.faults.outage = Some(OutageWindow { starts_after: Duration::ZERO, lasts: outage });
    config
}

/// Runs the outage scenario: `count` orders queued before a gateway outage. Returns (settled orders, orders
/// in the DLQ, the worker's stats) once every order is accounted for.
async fn outage(
    breaker: bool,
    count: usize,
    outage: Duration,
) -> (HashSet<uuid::Uuid>, HashSet<uuid::Uuid>, worker::WorkerStats) {
    let stack = stack(VISIBILITY, MAX_RECEIVES);
    let sent: HashSet<_> = send_orders(&stack.queue, count).into_iter().collect();
    let ledger = Arc::new(EmbeddedLedger::default());
    let worker = Running::start_with_ledger(
        outage_config(breaker, outage),
        Arc::new(stack.queue.clone()),
        Arc::clone(&ledger) as Arc<dyn Ledger>,
    );
    let dead_letter = stack.dead_letter.clone();
    let handle = worker.handle.clone();
    wait_for("every order settled or dead-lettered", outage + secs(3_600), || {
        handle.settled() + dead_letter.stats_now().visible == count as u64
    })
    .await;
    wait_for("the deletes", secs(5), || stack.queue.stats_now().backlog() == 0).await;
    let stats = worker.handle.stats();
    worker.shutdown().await;

    let dead: HashSet<_> = drain(&stack.dead_letter)
        .await
        .iter()
        .map(|message| orders::WireMessage::parse(&message.body).expect("an order").order.order_id)
        .collect();
    let mut settled = HashSet::new();
    for id in &sent {
        let record = ledger.get(*id).await.unwrap();
        if let Some(record) = record.filter(|record| record.status == OrderStatus::Completed) {
            assert!(record.charges <= 1, "charged at most once: {record:?}");
            settled.insert(*id);
        }
    }
    assert!(settled.is_disjoint(&dead), "an order is settled or dead-lettered, not both");
    let accounted: HashSet<_> = settled.union(&dead).copied().collect();
    assert_eq!(accounted, sent, "no order lost");
    (settled, dead, stats)
}

#[tokio::test(start_paused = true)]
async fn with_the_breaker_an_outage_longer_than_every_retry_dead_letters_nothing() {
    let started = Instant::now();
    let (settled, dead, stats) = outage(true, ORDERS, OUTAGE).await;
    assert_eq!((settled.len(), dead.len()), (ORDERS, 0), "{stats:?}");
    assert_eq!((stats.dead_lettered, stats.charged), (0, ORDERS as u64), "{stats:?}");
    assert!(started.elapsed() > OUTAGE, "settled only after the outage");
    let breaker = &stats.breaker;
    assert_eq!(breaker.state, BreakerState::Closed, "closed again after recovery: {breaker:?}");
    assert!(breaker.opened >= 3, "opened, and reopened on failed probes: {breaker:?}");
    assert!(breaker.time_open_ms >= 300_000, "open for most of the outage: {breaker:?}");
}

#[tokio::test(start_paused = true)]
async fn an_hour_long_outage_never_spends_an_orders_last_receive() {
    // Three orders, three probes: every half-open receives the same three, so they run out of receives many
    // times over and are requeued as fresh copies each time.
    let (settled, dead, stats) = outage(true, 3, secs(3_600)).await;
    assert_eq!((settled.len(), dead.len(), stats.dead_lettered), (3, 0, 0), "{stats:?}");
    assert!(stats.received > 3 * MAX_RECEIVES as u64, "probed past the receive limit: {stats:?}");
    assert_eq!(stats.charged, 3);
}

#[tokio::test(start_paused = true)]
async fn without_the_breaker_the_same_outage_dead_letters_orders() {
    let (settled, dead, stats) = outage(false, ORDERS, OUTAGE).await;
    assert!(!dead.is_empty(), "the outage outlasts every receive: {stats:?}");
    assert_eq!(stats.dead_lettered, dead.len() as u64);
    assert_eq!(settled.len() + dead.len(), ORDERS);
    assert_eq!(stats.breaker.transitions, 0);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_makes_no_receive_calls_and_half_open_receives_only_the_probes() {
    let stack = stack(VISIBILITY, MAX_RECEIVES);
    send_orders(&stack.queue, ORDERS);
    let observed = Observed::new(stack.queue.clone());
    let worker = Running::start(outage_config(true, OUTAGE), Arc::clone(&observed) as Arc<dyn Consumer>);
    let handle = worker.handle.clone();
    wait_for("the breaker to open", secs(10), || handle.breaker_state() == BreakerState::Open).await;
    let opened_at = Instant::now();
    let receives = |calls: &[(Instant, Call)], after: Instant| -> Vec<usize> {
        calls
            .iter()
            .filter(|(at, _)| *at > after)
            .filter_map(|(_, call)| match call {
                Call::Receive { asked, .. } => Some(*asked),
                _ => None,
            })
            .collect()
    };
    // The first wait is 10 s less up to a fifth of jitter: open for at least 8 s. Fresh orders arrive meanwhile
    // and stay in the queue.
    sleep(secs(1)).await;
    let received = handle.stats().received;
    send_orders(&stack.queue, 10);
    sleep(secs(6)).await;
    assert_eq!(handle.breaker_state(), BreakerState::Open);
    assert!(receives(&observed.calls(), opened_at + secs(1)).is_empty(), "no receive call while open");
    assert_eq!(handle.stats().received, received, "nothing received while open");
    assert!(stack.queue.stats_now().visible >= 10, "the fresh orders wait, visible");

    // Half-open lasts no time here: the probes fail at once (the outage) and the breaker opens again.
    let transitions = handle.stats().breaker.transitions;
    wait_for("half-open", secs(5), || handle.stats().breaker.transitions > transitions).await;
    sleep(secs(1)).await;
    assert!(handle.stats().breaker.opened >= 2, "the failed probes reopened it");
    let probing = receives(&observed.calls(), opened_at);
    assert!(!probing.is_empty(), "half-open probes the gateway");
    assert!(probing.iter().sum::<usize>() <= 3, "only the three probes are received: {probing:?}");
    let stats = handle.stats();
    assert_eq!(stats.dead_lettered, 0);
    assert!(stats.breaker.deferred > 0 || stats.retried > 0, "held orders went back: {stats:?}");
    worker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_started_during_an_outage_probes_first_and_dead_letters_nothing() {
    let stack = stack(VISIBILITY, MAX_RECEIVES);
    send_orders(&stack.queue, 10);
    // Four earlier deliveries each (a worker that crashed over and over): one more failure would be the last.
    for _ in 0..4 {
        let held = stack.queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(held.len(), 10);
        for message in held {
            stack.queue.change_visibility(message.receipt_handle, Duration::ZERO).await.unwrap();
        }
    }
    let mut config = outage_config(true, secs(300));
    config.breaker.start_probing = true;
    let worker = Running::start(config, Arc::new(stack.queue.clone()));
    wait_for("every order paid after the outage", secs(900), || worker.handle.settled() == 10).await;
    let stats = worker.handle.stats();
    assert_eq!((stats.dead_lettered, stats.charged), (0, 10), "{stats:?}");
    assert_eq!(stack.dead_letter.stats_now().backlog(), 0);
    worker.shutdown().await;
}
