//! At most one charge per order across worker processes, through the order ledger: workers that share a bus and
//! a ledger but nothing else (no dedupe window, no gates), as separate processes would. Paused clock.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{Observed, Running, config, order_body, stack, wait_for};
use bus::{BusError, OutgoingMessage};
use ledger::embedded::EmbeddedLedger;
use ledger::{Ledger, LedgerError, OrderRecord};
use orders::OrderStatus;
use uuid::Uuid;
use worker::CrashPoint;

const SECOND: Duration = Duration::from_secs(1);
const VISIBILITY: Duration = Duration::from_secs(30);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

async fn record(ledger: &EmbeddedLedger, order_id: Uuid) -> OrderRecord {
    ledger.get(order_id).await.expect("ledger").expect("the order has a record")
}

// Two workers receive the same order at once (a duplicate delivery, and a visibility timeout shorter than
// the payment, so the copy comes back while the first is still paying): one charge.
#[tokio::test(start_paused = true)]
async fn two_workers_receiving_one_order_at_once_charge_it_once() {
    let visibility = secs(2);
    let stack = stack(visibility, 10);
    let ledger = Arc::new(EmbeddedLedger::default());
    let (order_id, body) = order_body();
    stack.queue.send(OutgoingMessage::new(body.clone())).unwrap();
    stack.queue.send(OutgoingMessage::new(body)).unwrap();
    let mut slow = config(1, secs(5), visibility);
    slow.worker_id = "a".into();
    let mut other = slow.clone();
    other.worker_id = "b".into();
    let a = Running::start_with_ledger(slow, Arc::new(stack.queue.clone()), ledger.clone());
    let b = Running::start_with_ledger(other, Arc::new(stack.queue.clone()), ledger.clone());

    wait_for("the order to settle", secs(120), || a.handle.settled() + b.handle.settled() == 1).await;
    wait_for("both copies deleted", secs(120), || stack.queue.stats_now().backlog() == 0).await;
    let settled = record(&ledger, order_id).await;
    assert_eq!(settled.status, OrderStatus::Completed);
    assert_eq!(settled.charges, 1, "{settled:?}");
    let stats = [a.handle.stats(), b.handle.stats()];
    assert!(
        stats.iter().map(|s| s.claimed_elsewhere + s.duplicates).sum::<u64>() >= 1,
        "the second copy met the first claim: {stats:?}"
    );
    assert_eq!(stack.dead_letter.stats_now().backlog(), 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// A worker frozen at `point` with one order in hand is killed; a new worker (sharing only the bus and the
/// ledger) finishes the order. Returns the order's final record and the new worker's gate charges.
async fn crash_at(point: CrashPoint) -> (OrderRecord, u64) {
    let stack = stack(VISIBILITY, 5);
    let ledger = Arc::new(EmbeddedLedger::default());
    let (order_id, body) = order_body();
    stack.queue.send(OutgoingMessage::new(body)).unwrap();
    let first = Running::start_with_ledger(
        config(1, secs(3), VISIBILITY),
        Arc::new(stack.queue.clone()),
        ledger.clone(),
    );
    let reached = first.handle.freeze_at(point);
    tokio::time::timeout(secs(60), reached.notified()).await.expect("the worker reaches the crash point");
    first.kill().await;
    assert_eq!(stack.queue.stats_now().backlog(), 1, "the message is still in the queue");

    let second = Running::start_with_ledger(
        config(1, secs(3), VISIBILITY),
        Arc::new(stack.queue.clone()),
        ledger.clone(),
    );
    wait_for("the queue to empty", secs(300), || stack.queue.stats_now().backlog() == 0).await;
    let charged_by_second = second.handle.charged();
    second.shutdown().await;
    assert_eq!(stack.dead_letter.stats_now().backlog(), 0, "nothing dead-lettered");
    (record(&ledger, order_id).await, charged_by_second)
}

#[tokio::test(start_paused = true)]
async fn a_crash_before_the_charge_lets_the_next_worker_charge_once() {
    let (settled, charged_by_second) = crash_at(CrashPoint::BeforeCharge).await;
    assert_eq!(settled.status, OrderStatus::Completed);
    assert_eq!((settled.charges, settled.attempts), (1, 2), "{settled:?}");
    assert_eq!(charged_by_second, 1, "the first worker never reached the gateway");
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_the_charge_settles_with_the_recorded_payment() {
    let (settled, charged_by_second) = crash_at(CrashPoint::AfterCharge).await;
    assert_eq!(settled.status, OrderStatus::Completed);
    assert_eq!((settled.charges, settled.attempts), (1, 2), "{settled:?}");
    assert_eq!(charged_by_second, 0, "the second worker replayed the recorded payment");
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_the_status_write_only_deletes() {
    let (settled, charged_by_second) = crash_at(CrashPoint::AfterSettle).await;
    assert_eq!(settled.status, OrderStatus::Completed);
    assert_eq!((settled.charges, settled.attempts), (1, 1), "never claimed again: {settled:?}");
    assert_eq!(charged_by_second, 0);
}

// Deletes fail for longer than the delete retries last after a successful charge: the message comes back, to
// a new worker process with an empty dedupe window, and is not charged again.
#[tokio::test(start_paused = true)]
async fn deletes_failing_after_a_charge_cause_no_second_charge() {
    let stack = stack(VISIBILITY, 5);
    let ledger = Arc::new(EmbeddedLedger::default());
    let (order_id, body) = order_body();
    stack.queue.send(OutgoingMessage::new(body)).unwrap();
    let observed = Observed::new(stack.queue.clone());
    *observed.failing_deletes.lock().unwrap() =
        Some(BusError::Transient { code: "InternalError".into(), message: "deletes are down".into() });
    let first = Running::start_with_ledger(config(1, secs(3), VISIBILITY), observed.clone(), ledger.clone());
    wait_for("the payment", secs(10), || first.handle.settled() == 1).await;
    wait_for("the delete retries to give up", secs(60), || first.handle.stats().delete_failures >= 1).await;
    first.shutdown().await;
    *observed.failing_deletes.lock().unwrap() = None;
    assert_eq!(stack.queue.stats_now().backlog(), 1, "the undeleted message is still queued");

    let second = Running::start_with_ledger(config(1, secs(3), VISIBILITY), observed.clone(), ledger.clone());
    wait_for("the redelivery to be deleted", secs(120), || stack.queue.stats_now().backlog() == 0).await;
    let stats = second.handle.stats();
    assert_eq!((stats.charged, stats.duplicates), (0, 1), "{stats:?}");
    second.shutdown().await;
    let settled = record(&ledger, order_id).await;
    assert_eq!((settled.status, settled.charges, settled.attempts), (OrderStatus::Completed, 1, 1));
}

// The ledger is down: nothing is charged without a claim, nothing is lost, and the orders go through once it
// recovers.
#[tokio::test(start_paused = true)]
async fn a_ledger_outage_charges_nothing_and_loses_nothing() {
    let stack = stack(VISIBILITY, 100);
    let ledger = Arc::new(EmbeddedLedger::default());
    ledger.fail_with(Some(LedgerError::Throttled("ProvisionedThroughputExceededException".into())));
    let ids: Vec<Uuid> = (0..5)
        .map(|_| {
            let (id, body) = order_body();
            stack.queue.send(OutgoingMessage::new(body)).unwrap();
            id
        })
        .collect();
    let worker = Running::start_with_ledger(
        config(5, SECOND, VISIBILITY),
        Arc::new(stack.queue.clone()),
        ledger.clone(),
    );
    wait_for("several failed claims", secs(120), || worker.handle.stats().ledger_errors >= 10).await;
    let during = worker.handle.stats();
    assert_eq!(
        (during.charged, during.completed + during.declined),
        (0, 0),
        "no charge without a claim: {during:?}"
    );
    assert_eq!(stack.queue.stats_now().backlog(), 5, "every message is still queued");

    ledger.fail_with(None);
    wait_for("recovery", secs(1200), || worker.handle.settled() == 5).await;
    wait_for("the deletes", SECOND, || stack.queue.stats_now().backlog() == 0).await;
    assert_eq!(worker.handle.charged(), 5);
    for id in ids {
        let settled = record(&ledger, id).await;
        assert_eq!((settled.status, settled.charges), (OrderStatus::Completed, 1));
    }
    assert_eq!(stack.dead_letter.stats_now().backlog(), 0);
    worker.shutdown().await;
}

/// The embedded ledger, except that the answer to the next claim is lost after the claim was written (a
/// timeout after DynamoDB applied the write).
struct LostClaimAnswer {
    inner: EmbeddedLedger,
    lose_next: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Ledger for LostClaimAnswer {
    async fn create(&self, order: &ledger::NewOrder) -> Result<bool, LedgerError> {
        self.inner.create(order).await
    }
    async fn get(&self, order_id: Uuid) -> Result<Option<OrderRecord>, LedgerError> {
        self.inner.get(order_id).await
    }
    async fn claim(&self, request: &ledger::ClaimRequest) -> Result<ledger::Claim, LedgerError> {
        let answer = self.inner.claim(request).await;
        if self.lose_next.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Err(LedgerError::Unavailable("timed out after the write".into()));
        }
        answer
    }
    async fn record_charge(
        &self,
        order_id: Uuid,
        payment: &ledger::PaymentRecord,
    ) -> Result<ledger::ChargeRecord, LedgerError> {
        self.inner.record_charge(order_id, payment).await
    }
    async fn settle(
        &self,
        order_id: Uuid,
        token: u32,
        worker: &str,
        settlement: &ledger::Settlement,
    ) -> Result<ledger::Settle, LedgerError> {
        self.inner.settle(order_id, token, worker, settlement).await
    }
    async fn release(&self, order_id: Uuid, token: u32, reason: &str) -> Result<bool, LedgerError> {
        self.inner.release(order_id, token, reason).await
    }
    async fn abandon(&self, order_id: Uuid, reason: &str) -> Result<bool, LedgerError> {
        self.inner.abandon(order_id, reason).await
    }
}

// A claim whose answer was lost is the worker's own on the next delivery: it does not wait out its own lease.
#[tokio::test(start_paused = true)]
async fn a_claim_whose_answer_was_lost_is_taken_up_by_its_worker() {
    let stack = stack(VISIBILITY, 5);
    let ledger = Arc::new(LostClaimAnswer {
        inner: EmbeddedLedger::default(),
        lose_next: std::sync::atomic::AtomicBool::new(true),
    });
    let (order_id, body) = order_body();
    stack.queue.send(OutgoingMessage::new(body)).unwrap();
    let started = tokio::time::Instant::now();
    let worker = Running::start_with_ledger(
        config(1, SECOND, VISIBILITY),
        Arc::new(stack.queue.clone()),
        ledger.clone(),
    );
    wait_for("the order to settle", secs(120), || worker.handle.settled() == 1).await;
    let stats = worker.handle.stats();
    assert_eq!((stats.ledger_errors, stats.claimed_elsewhere), (1, 0), "{stats:?}");
    assert!(
        started.elapsed() < VISIBILITY,
        "settled after the retry backoff, not the lease: {:?}",
        started.elapsed()
    );
    worker.shutdown().await;
    let settled = ledger.inner.get(order_id).await.unwrap().unwrap();
    assert_eq!((settled.status, settled.charges, settled.attempts), (OrderStatus::Completed, 1, 1));
}

mod registry {
    use chrono::Utc;
    use ledger::registry::WorkerEntry;

    use super::*;
    use crate::common::send_orders;

    async fn fleet(ledger: &EmbeddedLedger) -> Vec<WorkerEntry> {
        ledger.registry().expect("a registry").fleet(Utc::now()).await.expect("fleet")
    }

    // A running worker keeps its entry in the registry, with its consumers, rate and frontier, and takes
    // it out when it shuts down.
    #[tokio::test(start_paused = true)]
    async fn a_worker_heartbeats_its_entry_and_leaves_at_shutdown() {
        let stack = stack(VISIBILITY, 5);
        let ledger = Arc::new(EmbeddedLedger::default());
        let mut config = config(4, Duration::from_millis(100), VISIBILITY);
        config.worker_id = "w-registry".into();
        config.registry_interval = SECOND;
        let worker = Running::start_with_ledger(config, Arc::new(stack.queue.clone()), ledger.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let first = fleet(&ledger).await;
        assert_eq!(first.len(), 1, "registered at start: {first:?}");
        assert_eq!((first[0].rate, first[0].settled, first[0].frontier), (0.0, 0, None));

        send_orders(&stack.queue, 40);
        wait_for("the orders to settle", secs(60), || worker.handle.settled() == 40).await;
        tokio::time::sleep(secs(2)).await;
        let entry = fleet(&ledger).await.pop().expect("the worker's entry");
        assert_eq!(entry.worker_id, "w-registry");
        assert_eq!((entry.consumers, entry.gate_mode.as_str(), entry.settled), (4, "per-consumer", 40));
        assert_eq!(entry.timeout, secs(3), "three heartbeat intervals");
        assert_eq!(entry.breaker.as_deref(), Some("closed"), "the circuit breaker's state");
        assert!(entry.rate > 0.0, "{entry:?}");
        let service = entry.service_time.expect("a service time");
        assert!((0.1..1.0).contains(&service), "about one 100 ms payment: {entry:?}");
        let frontier = entry.frontier.expect("a frontier");
        assert!(frontier.settled_at >= frontier.accepted_at, "{frontier:?}");

        worker.shutdown().await;
        assert_eq!(fleet(&ledger).await, vec![], "gone at once after a graceful shutdown");
    }

    // A store that fails heartbeats does not stop the worker: its entry appears once the store is back.
    #[tokio::test(start_paused = true)]
    async fn failed_heartbeats_are_retried_next_tick() {
        let stack = stack(VISIBILITY, 5);
        let ledger = Arc::new(EmbeddedLedger::default());
        ledger.fail_with(Some(LedgerError::Unavailable("down".into())));
        let mut config = config(1, Duration::from_millis(100), VISIBILITY);
        config.registry_interval = SECOND;
        let worker = Running::start_with_ledger(config, Arc::new(stack.queue.clone()), ledger.clone());
        tokio::time::sleep(secs(3)).await;
        ledger.fail_with(None);
        assert_eq!(fleet(&ledger).await, vec![], "no heartbeat got through");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(fleet(&ledger).await.len(), 1, "the next tick registered the worker");
        assert!(!worker.task.is_finished());
        worker.shutdown().await;
    }
}
