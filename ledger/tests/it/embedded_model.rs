//! The embedded ledger under random interleavings of what workers do to an order: claim, charge, settle, crash,
//! lease expiry and duplicate delivery. After every step: no status goes backwards and no order is charged
//! twice; at the end every order is settled or claimable, and a surviving worker settles them all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ledger::embedded::EmbeddedLedger;
use ledger::{
    ChargeRecord, Claim, ClaimRequest, Ledger, NewOrder, OrderRecord, PaymentRecord, Settle, Settlement,
};
use orders::{Money, OrderStatus, PaymentOutcome};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use uuid::Uuid;

const ORDERS: usize = 3;
const WORKERS: usize = 3;
const LEASE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
enum Step {
    /// A delivery of an order's message to a worker (a first delivery, a redelivery or a duplicate).
    Deliver { worker: usize, order: usize },
    /// The worker's gateway call returns a decision.
    Charge { worker: usize, approved: bool },
    /// The worker writes its settlement.
    Settle { worker: usize },
    /// The worker dies and restarts with nothing in hand.
    Crash { worker: usize },
    /// Time passes (leases lapse).
    Advance { millis: u64 },
    /// A worker settles with a token from before its last claim (a zombie).
    StaleSettle { worker: usize, order: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..WORKERS, 0..ORDERS).prop_map(|(worker, order)| Step::Deliver { worker, order }),
        2 => (0..WORKERS, any::<bool>()).prop_map(|(worker, approved)| Step::Charge { worker, approved }),
        2 => (0..WORKERS).prop_map(|worker| Step::Settle { worker }),
        1 => (0..WORKERS).prop_map(|worker| Step::Crash { worker }),
        1 => (0..150u64).prop_map(|millis| Step::Advance { millis }),
        1 => (0..WORKERS, 0..ORDERS).prop_map(|(worker, order)| Step::StaleSettle { worker, order }),
    ]
}

/// What a worker holds between steps.
#[derive(Debug, Clone)]
enum Hand {
    Idle,
    Claimed { order: usize, token: u32 },
    Charged { order: usize, token: u32, outcome: PaymentOutcome },
}

fn rank(status: OrderStatus) -> u8 {
    match status {
        OrderStatus::Pending => 0,
        OrderStatus::Processing => 1,
        _ => 2,
    }
}

struct Harness {
    ledger: EmbeddedLedger,
    orders: Vec<NewOrder>,
    hands: Vec<Hand>,
    last_seen: HashMap<Uuid, OrderStatus>,
    settled_as: HashMap<Uuid, OrderStatus>,
}

impl Harness {
    async fn new() -> Self {
        let ledger = EmbeddedLedger::default();
        let orders: Vec<NewOrder> = (0..ORDERS)
            .map(|i| NewOrder {
                order_id: Uuid::now_v7(),
                customer_id: i as u64 + 1,
                total: Money::from_cents(100),
                item_count: 1,
                accepted_at: Utc::now(),
            })
            .collect();
        // The receiver writes the first two; the third arrives with no record (a lost receiver write).
        for order in &orders[..2] {
            assert!(ledger.create(order).await.unwrap());
        }
        Self {
            ledger,
            orders,
            hands: vec![Hand::Idle; WORKERS],
            last_seen: HashMap::new(),
            settled_as: HashMap::new(),
        }
    }

    fn request(&self, worker: usize, order: usize) -> ClaimRequest {
        ClaimRequest { order: self.orders[order].clone(), worker: format!("w{worker}"), lease: LEASE }
    }

    async fn apply(&mut self, step: &Step) {
        match *step {
            Step::Deliver { worker, order } => {
                if !matches!(self.hands[worker], Hand::Idle) {
                    return;
                }
                match self.ledger.claim(&self.request(worker, order)).await.unwrap() {
                    Claim::Won { token, record } => {
                        assert_eq!(record.status, OrderStatus::Processing);
                        assert_eq!(token, record.attempts);
                        self.hands[worker] = match record.payment() {
                            Some(payment) => Hand::Charged { order, token, outcome: payment.outcome },
                            None => Hand::Claimed { order, token },
                        };
                    }
                    Claim::Busy(record) => assert!(!record.is_claimable(self.ledger.now())),
                    Claim::Settled(record) => assert!(record.is_settled()),
                }
            }
            Step::Charge { worker, approved } => {
                let Hand::Claimed { order, token } = self.hands[worker] else { return };
                let outcome = if approved { PaymentOutcome::Approved } else { PaymentOutcome::Declined };
                let payment = PaymentRecord { outcome, reference: format!("pay-{worker}-{token}") };
                let order_id = self.orders[order].order_id;
                let outcome = match self.ledger.record_charge(order_id, &payment).await.unwrap() {
                    ChargeRecord::Recorded(record) => {
                        assert_eq!(record.payment(), Some(payment));
                        outcome
                    }
                    ChargeRecord::AlreadyRecorded(first) => first.outcome,
                };
                self.hands[worker] = Hand::Charged { order, token, outcome };
            }
            Step::Settle { worker } => {
                let Hand::Charged { order, token, outcome } = self.hands[worker] else { return };
                self.hands[worker] = Hand::Idle;
                let order_id = self.orders[order].order_id;
                let settle = self
                    .ledger
                    .settle(order_id, token, &format!("w{worker}"), &Settlement::of(outcome))
                    .await
                    .unwrap();
                if let Settle::Settled(record) = settle {
                    assert_eq!(record.payment().map(|p| p.outcome), Some(outcome));
                }
            }
            Step::Crash { worker } => self.hands[worker] = Hand::Idle,
            Step::Advance { millis } => tokio::time::advance(Duration::from_millis(millis)).await,
            Step::StaleSettle { worker, order } => {
                let order_id = self.orders[order].order_id;
                let Some(record) = self.ledger.get(order_id).await.unwrap() else { return };
                if record.attempts == 0 {
                    return;
                }
                let stale = record.attempts - 1;
                let answer = self
                    .ledger
                    .settle(order_id, stale, &format!("w{worker}"), &Settlement::Failed("zombie".into()))
                    .await
                    .unwrap();
                assert!(matches!(answer, Settle::Fenced(_)), "a stale token settled: {answer:?}");
            }
        }
    }

    /// The invariants that hold after every step.
    async fn check(&mut self) {
        for order in &self.orders {
            let Some(record) = self.ledger.get(order.order_id).await.unwrap() else {
                assert!(!self.last_seen.contains_key(&order.order_id), "a record disappeared");
                continue;
            };
            check_record(&record);
            if let Some(before) = self.last_seen.insert(order.order_id, record.status) {
                assert!(rank(before) <= rank(record.status), "{before:?} went back to {:?}", record.status);
            }
            if record.is_settled() {
                let first = *self.settled_as.entry(order.order_id).or_insert(record.status);
                assert_eq!(first, record.status, "a settled order changed its final status");
            }
        }
    }
}

fn check_record(record: &OrderRecord) {
    assert!(record.charges <= 1, "charged {} times: {record:?}", record.charges);
    let approved = record.payment_outcome == Some(PaymentOutcome::Approved);
    assert_eq!(record.charges, u32::from(approved), "charges must match the recorded payment: {record:?}");
    match record.status {
        OrderStatus::Completed => assert!(approved),
        OrderStatus::Declined => assert_eq!(record.payment_outcome, Some(PaymentOutcome::Declined)),
        OrderStatus::Processing => assert!(record.lease_expires_at.is_some()),
        _ => {}
    }
}

proptest! {
    // Failing cases are saved next to this file (`<module>.proptest-regressions`). proptest's default would put
    // them in `tests/proptest-regressions/` now that the tests share a `main.rs`.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_interleaving_charges_twice_or_goes_backwards(steps in prop::collection::vec(step(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let mut harness = Harness::new().await;
            for step in &steps {
                harness.apply(step).await;
                harness.check().await;
            }
            // Every order is settled, or claimable once the leases of the dead have lapsed.
            tokio::time::advance(LEASE).await;
            let now = harness.ledger.now();
            for order in &harness.orders {
                if let Some(record) = harness.ledger.get(order.order_id).await.unwrap() {
                    assert!(record.is_settled() || record.is_claimable(now), "stuck: {record:?}");
                }
            }
            // A surviving worker finishes every order, charging none of them twice.
            let survivor = Arc::new(harness.ledger);
            let gateway = ledger::IdempotentGateway::new(
                orders::PaymentGate::new(orders::PaymentConfig { latency: Duration::ZERO, ..Default::default() }),
                Arc::clone(&survivor) as Arc<dyn Ledger>,
            );
            for new in &harness.orders {
                let request = ClaimRequest { order: new.clone(), worker: "survivor".into(), lease: LEASE };
                if let Claim::Won { token, record } = survivor.claim(&request).await.unwrap() {
                    let order = order_for(new);
                    let charged = gateway.charge(&order, record.payment()).await.unwrap();
                    let settled = survivor
                        .settle(new.order_id, token, "survivor", &Settlement::of(charged.payment.outcome))
                        .await
                        .unwrap();
                    assert!(matches!(settled, Settle::Settled(_)));
                }
                let record = survivor.get(new.order_id).await.unwrap().expect("claimed, so recorded");
                assert!(record.is_settled(), "{record:?}");
                check_record(&record);
            }
        });
    }
}

/// An order with the id and customer of `new`, for the gate.
fn order_for(new: &NewOrder) -> orders::Order {
    let request = orders::OrderRequest::from_json(
        format!(
            r#"{{"customer_id": {}, "items": [{{"product_id": "P", "quantity": 1, "price": 1.00}}]}}"#,
            new.customer_id
        )
        .as_bytes(),
    )
    .unwrap();
    orders::Order { order_id: new.order_id, ..orders::Order::new(request) }
}

/// Many tasks on a multi-threaded runtime claim one order at once: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_have_one_winner() {
    for _ in 0..50 {
        let ledger = Arc::new(EmbeddedLedger::default());
        let order = NewOrder {
            order_id: Uuid::now_v7(),
            customer_id: 1,
            total: Money::from_cents(1),
            item_count: 1,
            accepted_at: Utc::now(),
        };
        ledger.create(&order).await.unwrap();
        let claims: Vec<_> = (0..8)
            .map(|worker| {
                let (ledger, order) = (Arc::clone(&ledger), order.clone());
                tokio::spawn(async move {
                    let request =
                        ClaimRequest { order, worker: format!("w{worker}"), lease: Duration::from_secs(30) };
                    ledger.claim(&request).await.unwrap()
                })
            })
            .collect();
        let mut won = 0;
        for claim in claims {
            if matches!(claim.await.unwrap(), Claim::Won { .. }) {
                won += 1;
            }
        }
        assert_eq!(won, 1);
    }
}
