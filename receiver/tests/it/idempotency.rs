//! `Idempotency-Key` on the order endpoints, over real HTTP on port 0: a client's retry never creates a second
//! order.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{ScriptedPublisher, TestServer, client, eventually, order};
use async_trait::async_trait;
use bus::{BusError, EntryResult, MessageId, OutgoingMessage, Publisher};
use orders::{PaymentConfig, WireMessage};
use receiver::Config;
use uuid::Uuid;

/// One answer: status, the replay header, the body.
#[derive(Debug)]
struct Keyed {
    status: u16,
    replayed: bool,
    body: String,
}

impl Keyed {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn order_id(&self) -> String {
        self.json()["order_id"].as_str().unwrap_or_else(|| panic!("no order_id: {}", self.body)).to_owned()
    }

    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

async fn post(server: &TestServer, endpoint: &str, key: &str, body: &str) -> Keyed {
    let response = client()
        .post(server.url(endpoint))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
        .expect("the receiver answers");
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    Keyed { status, replayed, body: response.text().await.unwrap() }
}

/// Distinct order ids among the published messages.
fn published_orders(messages: impl IntoIterator<Item = OutgoingMessage>) -> HashSet<Uuid> {
    messages.into_iter().map(|m| WireMessage::parse(&m.body).unwrap().order.order_id).collect()
}

// 1. Two POSTs with one key: one order, one publish; the second is a replay with the same body.
#[tokio::test]
async fn a_retry_with_the_same_key_replays_the_first_answer() {
    let publisher = Arc::new(ScriptedPublisher::new());
    let server = TestServer::start(Config::default(), publisher.clone()).await;
    let first = post(&server, "/orders/async", "k-1", &order(1)).await;
    let second = post(&server, "/orders/async", "\"k-1\"", &order(1)).await;
    assert_eq!((first.status, first.replayed), (202, false));
    assert_eq!((second.status, second.replayed), (202, true));
    assert_eq!(second.body, first.body, "byte for byte");
    assert_eq!(publisher.calls().concat().len(), 1, "one publish");
    assert_eq!(server.ledger.len(), 1, "one order record");
    // Without a key, the same body is a new order each time.
    let unkeyed =
        crate::common::client().post(server.url("/orders/async")).header("content-type", "application/json");
    unkeyed.body(order(1)).send().await.unwrap();
    assert_eq!(publisher.calls().concat().len(), 2);
}

// 2. Fifty concurrent POSTs with one key: one order published; every answer the original, a replay or a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_publish_one_order() {
    // The broker is held until the other 49 have been answered, so the burst overlaps the first request
    // however slowly it arrives.
    let publisher = Arc::new(ScriptedPublisher::new().held());
    let server = Arc::new(TestServer::start(Config::default(), publisher.clone()).await);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let server = Arc::clone(&server);
            tokio::spawn(async move { post(&server, "/orders/async", "k-50", &order(7)).await })
        })
        .collect();
    eventually("one publish held and the other 49 answered", 2000, || {
        publisher.calls_started() == 1 && tasks.iter().filter(|task| task.is_finished()).count() == 49
    })
    .await;
    publisher.release();
    let answers: Vec<Keyed> = futures_join(tasks.into_iter()).await;
    assert_eq!(publisher.calls().concat().len(), 1, "exactly one publish");
    let originals: Vec<_> = answers.iter().filter(|a| a.status == 202 && !a.replayed).collect();
    assert_eq!(originals.len(), 1, "{answers:?}");
    for answer in &answers {
        match (answer.status, answer.replayed) {
            (202, true) => assert_eq!(answer.body, originals[0].body),
            (202, false) => {}
            (409, false) => assert_eq!(answer.code(), "idempotency_key_in_use"),
            other => panic!("unexpected answer {other:?}: {}", answer.body),
        }
    }
    assert!(answers.iter().any(|a| a.status == 409), "the burst overlapped the first request");
}

async fn futures_join<T: Send + 'static>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut all = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        all.push(task.await.unwrap());
    }
    all
}

// 3. Another payload under the key is 422; the same order with its JSON keys reordered is a replay.
#[tokio::test]
async fn another_order_under_a_key_is_refused_and_reordered_json_is_the_same_order() {
    let publisher = Arc::new(ScriptedPublisher::new());
    let server = TestServer::start(Config::default(), publisher.clone()).await;
    let first = post(&server, "/orders/async", "k-3", &order(3)).await;
    assert_eq!(first.status, 202);
    let other = post(&server, "/orders/async", "k-3", &order(4)).await;
    assert_eq!((other.status, other.code().as_str()), (422, "idempotency_key_reused"));
    let reordered = r#"{"items": [{"price": 49.990, "quantity": 2, "product_id": "PROD-001"},
        {"quantity": 1, "product_id": "PROD-002", "price": 0.1}], "customer_id": 3}"#;
    let again = post(&server, "/orders/async", "k-3", reordered).await;
    assert_eq!((again.status, again.replayed, again.order_id()), (202, true, first.order_id()));
    assert_eq!(publisher.calls().concat().len(), 1);
}

/// A bus that keeps every message it is sent at once, and acknowledges the first `slow` calls only after
/// `delay`: a publish that times out after it reached the bus.
struct SlowAck {
    received: Mutex<Vec<OutgoingMessage>>,
    slow: Mutex<usize>,
    delay: Duration,
}

#[async_trait]
impl Publisher for SlowAck {
    async fn publish(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
        self.received.lock().unwrap().push(message);
        let slow = {
            let mut slow = self.slow.lock().unwrap();
            let was = *slow;
            *slow = was.saturating_sub(1);
            was > 0
        };
        if slow {
            tokio::time::sleep(self.delay).await;
        }
        Ok("id".into())
    }

    async fn publish_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<MessageId>>, BusError> {
        let mut results = Vec::new();
        for message in messages {
            results.push(self.publish(message).await);
        }
        Ok(results)
    }
}

// 4. A publish that reaches the bus but is not acknowledged in time, then the retry with the key: one order.
#[tokio::test(start_paused = true)]
async fn a_retry_after_an_unknown_outcome_creates_no_second_order() {
    let bus =
        Arc::new(SlowAck { received: Mutex::default(), slow: Mutex::new(1), delay: Duration::from_secs(10) });
    let config = Config { publish_timeout: Duration::from_millis(300), ..Config::default() };
    let server = TestServer::start(config, bus.clone()).await;
    let first = post(&server, "/orders/async", "k-4", &order(5)).await;
    assert_eq!((first.status, first.code().as_str()), (503, "outcome_unknown"));
    let retry = post(&server, "/orders/async", "k-4", &order(5)).await;
    assert_eq!((retry.status, retry.replayed), (202, false));
    let ids = published_orders(bus.received.lock().unwrap().clone());
    assert_eq!(ids.len(), 1, "one order in total, whatever number of copies: {ids:?}");
    assert_eq!(ids.into_iter().next().unwrap().to_string(), retry.order_id());
    let record = server.ledger.records();
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].status, orders::OrderStatus::Pending, "not marked failed: it may be processed");
    let replay = post(&server, "/orders/async", "k-4", &order(5)).await;
    assert_eq!((replay.status, replay.replayed, replay.order_id()), (202, true, retry.order_id()));
}

// 5. After the retention the key places a new order.
#[tokio::test(start_paused = true)]
async fn a_key_expires_after_its_retention() {
    let publisher = Arc::new(ScriptedPublisher::new());
    let config = Config { idempotency_retention: Duration::from_secs(60), ..Config::default() };
    let server = TestServer::start(config, publisher.clone()).await;
    let first = post(&server, "/orders/async", "k-5", &order(6)).await;
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(post(&server, "/orders/async", "k-5", &order(6)).await.replayed);
    tokio::time::advance(Duration::from_secs(2)).await;
    let later = post(&server, "/orders/async", "k-5", &order(6)).await;
    assert_eq!((later.status, later.replayed), (202, false));
    assert_ne!(later.order_id(), first.order_id(), "a new order");
    assert_eq!(publisher.calls().concat().len(), 2);
}

// 6. A validation error is not stored: the same key with a corrected body goes through; a malformed key is 400.
#[tokio::test]
async fn validation_errors_are_not_stored_and_malformed_keys_are_refused() {
    let publisher = Arc::new(ScriptedPublisher::new());
    let server = TestServer::start(Config::default(), publisher.clone()).await;
    let invalid = post(&server, "/orders/async", "k-6", r#"{"customer_id": 0, "items": []}"#).await;
    assert_eq!(invalid.status, 422);
    let corrected = post(&server, "/orders/async", "k-6", &order(8)).await;
    assert_eq!((corrected.status, corrected.replayed), (202, false));
    for bad in ["\"unterminated", "two words", &"k".repeat(256)] {
        let answer = post(&server, "/orders/async", bad, &order(8)).await;
        assert_eq!((answer.status, answer.code().as_str()), (400, "invalid_idempotency_key"), "{bad:?}");
    }
    assert_eq!(publisher.calls().concat().len(), 1);
}

// A refused publish is not stored either: the retry under the key goes through, as a new order.
#[tokio::test]
async fn a_refused_publish_is_not_stored() {
    let publisher = Arc::new(ScriptedPublisher::new().failing(|m| m.body.contains("\"customer_id\":13")));
    let server = TestServer::start(Config::default(), publisher.clone()).await;
    let refused = post(&server, "/orders/async", "k-7", &order(13)).await;
    assert_eq!((refused.status, refused.code().as_str()), (503, "bus_unavailable"));
    let other = post(&server, "/orders/async", "k-7", &order(14)).await;
    assert_eq!((other.status, other.replayed), (202, false), "the key was forgotten");
}

// The sync endpoint: a client that gives up mid-payment and retries with its key is charged once.
#[tokio::test]
async fn a_sync_retry_after_a_disconnect_is_charged_once() {
    let config = Config {
        payment: PaymentConfig {
            latency: Duration::from_millis(300),
            decline_rate: 0.0,
            ..PaymentConfig::default()
        },
        ..Config::default()
    };
    let server = TestServer::start(config, Arc::new(ScriptedPublisher::new())).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(50)).build().unwrap();
    let gave_up = impatient
        .post(server.url("/orders/sync"))
        .header("content-type", "application/json")
        .header("idempotency-key", "s-1")
        .body(order(9))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out mid-payment");
    let during = post(&server, "/orders/sync", "s-1", &order(9)).await;
    assert_eq!((during.status, during.code().as_str()), (409, "idempotency_key_in_use"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retry = post(&server, "/orders/sync", "s-1", &order(9)).await;
    assert_eq!((retry.status, retry.replayed), (200, true), "{}", retry.body);
    assert_eq!(server.state.gate().charged(), 1, "charged once");
}
