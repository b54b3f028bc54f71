//! `POST /orders/sync` over real HTTP, on a paused clock: 200/402/503/504, throughput = slots / latency, and a
//! client that disconnects while queued gives up its place without leaking a slot.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{TestServer, client, eventually, order};
use bus::embedded::{EmbeddedStack, StackConfig};
use orders::PaymentConfig;
use receiver::Config;
use tokio::time::Instant;

fn config(slots: usize, latency: Duration, decline_rate: f64, sync_timeout: Duration) -> Config {
    Config {
        sync_timeout,
        payment: PaymentConfig { latency, decline_rate, ..PaymentConfig::default() },
        payment_slots: slots,
        ..Config::default()
    }
}

async fn start(config: Config) -> Arc<TestServer> {
    let stack = EmbeddedStack::new(StackConfig::default());
    Arc::new(TestServer::start(config, Arc::new(stack.topic)).await)
}

#[tokio::test(start_paused = true)]
async fn paid_order_answers_200_after_the_payment_latency() {
    let server = start(config(1, Duration::from_secs(3), 0.0, Duration::from_secs(10))).await;
    let started = Instant::now();
    let answer = server.post_order(&client(), "/orders/sync", &order(42)).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["status"], "completed");
    assert_eq!(answer.json["total"], "100.08");
    assert_eq!(answer.json["waited_ms"], 0);
    assert!(answer.json["order_id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert_eq!(started.elapsed().as_secs(), 3);
    assert_eq!(server.state.stats().sync_orders.completed, 1);
}

#[tokio::test(start_paused = true)]
async fn declined_payment_answers_402() {
    let server = start(config(1, Duration::from_secs(3), 1.0, Duration::from_secs(10))).await;
    let answer = server.post_order(&client(), "/orders/sync", &order(42)).await;
    assert_eq!(answer.status, 402);
    assert_eq!(answer.error_code(), "payment_declined");
    assert_eq!(server.state.stats().sync_orders.declined, 1);
}

#[tokio::test(start_paused = true)]
async fn gateway_outage_answers_503_with_retry_after() {
    let server = start(config(1, Duration::from_secs(3), 0.0, Duration::from_secs(10))).await;
    server.state.gate().set_outage(true);
    let answer = server.post_order(&client(), "/orders/sync", &order(42)).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.error_code(), "payment_unavailable");
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
}

#[tokio::test(start_paused = true)]
async fn waiting_past_the_deadline_answers_504() {
    // Answered within 4 s: a 3 s payment must start within 1 s.
    let server = start(config(1, Duration::from_secs(3), 0.0, Duration::from_secs(4))).await;
    let client = client();
    let first = tokio::spawn({
        let (server, client) = (server.clone(), client.clone());
        async move { server.post_order(&client, "/orders/sync", &order(1)).await }
    });
    eventually("the first payment holds the slot", 100, || server.state.gate().busy() == 1).await;

    let started = Instant::now();
    let second = server.post_order(&client, "/orders/sync", &order(2)).await;
    assert_eq!(second.status, 504, "{}", second.json);
    assert_eq!(second.error_code(), "payment_timeout");
    assert_eq!(started.elapsed(), Duration::from_secs(1), "gave up exactly at the deadline");
    assert_eq!(first.await.unwrap().status, 200);
    let stats = server.state.stats().sync_orders;
    assert_eq!((stats.completed, stats.timed_out), (1, 1));
}

/// Closed-loop clients keep every slot busy; throughput is then exactly `slots / latency`.
async fn completions_in(slots: usize, latency: Duration, clients: usize, window: Duration) -> u64 {
    let server = start(config(slots, latency, 0.0, Duration::from_secs(3600))).await;
    let stop_at = Instant::now() + window;
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (server, client) = (server.clone(), client());
            tokio::spawn(async move {
                let mut completed_in_window = 0u64;
                while Instant::now() < stop_at {
                    let answer = server.post_order(&client, "/orders/sync", &order(i as u64 + 1)).await;
                    assert_eq!(answer.status, 200);
                    if Instant::now() <= stop_at {
                        completed_in_window += 1;
                    }
                }
                completed_in_window
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    total
}

#[tokio::test(start_paused = true)]
async fn sync_throughput_is_slots_over_latency() {
    // 1 slot × 3 s: 20 a minute, however many clients queue.
    assert_eq!(completions_in(1, Duration::from_secs(3), 8, Duration::from_secs(60)).await, 20);
    // 4 slots × 100 ms: 40 a second.
    assert_eq!(completions_in(4, Duration::from_millis(100), 16, Duration::from_secs(1)).await, 40);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_disconnects_gives_up_its_place_and_leaks_no_slot() {
    let server = start(config(1, Duration::from_secs(3), 0.0, Duration::from_secs(30))).await;
    let client = client();
    let first = tokio::spawn({
        let (server, client) = (server.clone(), client.clone());
        async move { server.post_order(&client, "/orders/sync", &order(1)).await }
    });
    eventually("the first payment holds the slot", 100, || server.state.gate().busy() == 1).await;

    let impatient = tokio::spawn({
        let (server, client) = (server.clone(), client.clone());
        async move { server.post_order(&client, "/orders/sync", &order(2)).await }
    });
    eventually("the second payment queues", 100, || server.state.gate().waiting() == 1).await;
    impatient.abort();
    eventually("the abandoned payment left the queue", 100, || {
        server.state.gate().waiting() == 0 && server.state.stats().sync_orders.in_flight == 1
    })
    .await;

    assert_eq!(first.await.unwrap().status, 200);
    // The slot came back: the next order is paid at once, without waiting.
    let started = Instant::now();
    let next = server.post_order(&client, "/orders/sync", &order(3)).await;
    assert_eq!(next.status, 200);
    assert_eq!(next.json["waited_ms"], 0);
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    let gate = server.state.gate();
    assert_eq!((gate.busy(), gate.waiting()), (0, 0));
    let stats = server.state.stats().sync_orders;
    assert_eq!((stats.completed, stats.abandoned), (2, 1), "every request counted once: {stats:?}");
}

/// Every sync answer, 200 or 504, arrives within the sync timeout (9 s by default), under the usual 10 s
/// client timeout: a payment that could not finish in time never starts, so no client is left hanging.
#[tokio::test(start_paused = true)]
async fn every_sync_answer_beats_the_client_timeout() {
    let config = Config::default();
    assert_eq!(config.sync_timeout, Duration::from_secs(9), "1 s under the lab's 10 s client timeout");
    let server =
        start(Config { payment: PaymentConfig { decline_rate: 0.0, ..config.payment.clone() }, ..config })
            .await;
    let client = client();
    let started = Instant::now();
    let requests: Vec<_> = (1..=5)
        .map(|customer| {
            let (server, client) = (server.clone(), client.clone());
            tokio::spawn(async move {
                let answer = server.post_order(&client, "/orders/sync", &order(customer)).await;
                (answer.status, started.elapsed())
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        let (status, took) = request.await.unwrap();
        assert!(took <= Duration::from_secs(9), "answered {status} after {took:?}");
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 504, 504, 504],
        "one slot: payments at 0 s and 4 s; none may start after 5 s"
    );
}
