//! The payment gate's contract, on tokio's paused clock: throughput is slots / latency, waiting is FIFO, a
//! dropped waiter never leaks a slot, deadlines hold, and faults are what the configuration says.

use std::time::Duration;

use orders::{
    GatewayFaults, Order, OrderRequest, OutageWindow, PaymentConfig, PaymentError, PaymentGate,
    PaymentOutcome,
};
use tokio::time::Instant;

fn order() -> Order {
    Order::new(
        OrderRequest::from_json(
            br#"{"customer_id": 1, "items": [{"product_id": "P", "quantity": 1, "price": 1}]}"#,
        )
        .unwrap(),
    )
}

fn gate(slots: usize, latency_ms: u64) -> PaymentGate {
    PaymentGate::new(PaymentConfig {
        slots,
        latency: Duration::from_millis(latency_ms),
        decline_rate: 0.0,
        ..PaymentConfig::default()
    })
}

#[tokio::test(start_paused = true)]
async fn throughput_is_slots_over_latency() {
    for slots in [1, 3] {
        let gate = gate(slots, 3000);
        let start = Instant::now();
        let payments: Vec<_> = (0..6)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.pay(&order()).await })
            })
            .collect();
        for payment in payments {
            assert_eq!(payment.await.unwrap().unwrap().outcome, PaymentOutcome::Approved);
        }
        // 6 payments through `slots` slots of 3 s each.
        assert_eq!(start.elapsed(), Duration::from_secs(3 * 6 / slots as u64));
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_come_first_served() {
    let gate = gate(1, 100);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..5 {
        let (gate, done_tx) = (gate.clone(), done_tx.clone());
        tokio::spawn(async move {
            gate.pay(&order()).await.unwrap();
            done_tx.send(n).unwrap();
        });
        tokio::task::yield_now().await; // enqueue in this order
    }
    drop(done_tx);
    let mut finished = Vec::new();
    while let Some(n) = done_rx.recv().await {
        finished.push(n);
    }
    assert_eq!(finished, [0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn dropped_waiter_leaves_the_queue_and_leaks_no_slot() {
    let gate = gate(1, 1000);
    let first = tokio::spawn({
        let gate = gate.clone();
        async move { gate.pay(&order()).await }
    });
    tokio::task::yield_now().await;
    let abandoned = tokio::spawn({
        let gate = gate.clone();
        async move { gate.pay(&order()).await }
    });
    tokio::task::yield_now().await;
    assert_eq!((gate.busy(), gate.waiting()), (1, 1));

    abandoned.abort(); // its HTTP client went away
    let _ = abandoned.await;
    assert_eq!(gate.waiting(), 0);

    first.await.unwrap().unwrap();
    assert_eq!(gate.busy(), 0);
    // The slot is free again: a new payment starts without waiting.
    let receipt = gate.pay(&order()).await.unwrap();
    assert_eq!(receipt.waited, Duration::ZERO);
    assert_eq!(gate.charged(), 2);
}

#[tokio::test(start_paused = true)]
async fn pay_before_gives_up_at_the_deadline_without_charging() {
    let gate = gate(1, 3000);
    let busy = tokio::spawn({
        let gate = gate.clone();
        async move { gate.pay(&order()).await }
    });
    tokio::task::yield_now().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let result = gate.pay_before(&order(), deadline).await;
    assert_eq!(result, Err(PaymentError::DeadlineExceeded { waited: Duration::from_secs(2) }));
    assert_eq!(gate.waiting(), 0);
    busy.await.unwrap().unwrap();
    assert_eq!(gate.charged(), 1);

    // With room before the deadline, it waits and pays.
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(gate.pay_before(&order(), deadline).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn declines_follow_the_seeded_rate() {
    let run = |seed| async move {
        let gate = PaymentGate::new(PaymentConfig {
            latency: Duration::from_millis(1),
            decline_rate: 0.05,
            seed,
            ..PaymentConfig::default()
        });
        let mut outcomes = Vec::new();
        for _ in 0..2000 {
            outcomes.push(gate.pay(&order()).await.unwrap().outcome);
        }
        outcomes
    };
    let first = run(42).await;
    assert_eq!(first, run(42).await, "same seed, same decisions");
    assert_ne!(first, run(43).await, "another seed, other decisions");
    let declined = first.iter().filter(|o| **o == PaymentOutcome::Declined).count();
    assert!((60..=140).contains(&declined), "about 5% of 2000 declined, got {declined}");
}

#[tokio::test(start_paused = true)]
async fn planned_outage_fails_fast_then_recovers() {
    let gate = PaymentGate::new(PaymentConfig {
        latency: Duration::from_millis(100),
        decline_rate: 0.0,
        faults: GatewayFaults {
            error_rate: 0.0,
            outage: Some(OutageWindow {
                starts_after: Duration::from_secs(1),
                lasts: Duration::from_secs(2),
            }),
        },
        ..PaymentConfig::default()
    });
    assert!(gate.pay(&order()).await.is_ok(), "before the outage");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    assert!(matches!(gate.pay(&order()).await, Err(PaymentError::GatewayUnavailable(_))));
    assert_eq!(start.elapsed(), Duration::ZERO, "an outage fails at once");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(gate.pay(&order()).await.is_ok(), "after the outage");
    assert_eq!(gate.charged(), 2);
}

#[tokio::test(start_paused = true)]
async fn outage_switch_and_error_rate() {
    let gate = gate(1, 10);
    gate.set_outage(true);
    assert!(matches!(gate.pay(&order()).await, Err(PaymentError::GatewayUnavailable(_))));
    gate.set_outage(false);
    assert!(gate.pay(&order()).await.is_ok());

    let flaky = PaymentGate::new(PaymentConfig {
        latency: Duration::from_millis(10),
        decline_rate: 0.0,
        faults: GatewayFaults { error_rate: 0.5, outage: None },
        ..PaymentConfig::default()
    });
    let mut failures = 0;
    for _ in 0..400 {
        if flaky.pay(&order()).await.is_err() {
            failures += 1;
        }
    }
    assert!((150..=250).contains(&failures), "about half fail, got {failures}");
    assert_eq!(flaky.charged(), 400 - failures);
}
