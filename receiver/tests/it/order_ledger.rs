//! The receiver's side of the order ledger over real HTTP: the record is written before the publish and read
//! back by `GET /orders/{id}`, a ledger outage publishes nothing, and an order that was not accepted is marked
//! failed (with retries, and within the shutdown).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::{HookedLedger, ScriptedPublisher, TestServer, client, eventually, order};
use bus::Consumer;
use bus::embedded::{EmbeddedStack, StackConfig};
use ledger::embedded::EmbeddedLedger;
use ledger::{LedgerError, OrderRecord};
use orders::{OrderStatus, WireMessage};
use receiver::Config;
use uuid::Uuid;

/// The only record in the ledger.
fn only_record(ledger: &EmbeddedLedger) -> OrderRecord {
    let records = ledger.records();
    assert_eq!(records.len(), 1, "{records:?}");
    records.into_iter().next().unwrap()
}

/// Whether the ledger's only record is failed (polled by `eventually`).
fn only_record_failed(ledger: &EmbeddedLedger) -> bool {
    ledger.records().first().is_some_and(|record| record.status == OrderStatus::Failed)
}

#[tokio::test]
async fn an_accepted_order_can_be_read_back_at_once() {
    let stack = EmbeddedStack::new(StackConfig::default());
    let server = TestServer::start(Config::default(), Arc::new(stack.topic.clone())).await;
    let client = client();

    let accepted = server.post_order(&client, "/orders/async", &order(1234)).await;
    assert_eq!(accepted.status, 202, "{}", accepted.json);
    let order_id = accepted.json["order_id"].as_str().unwrap().to_owned();

    // No wait between the 202 and the lookup: the record was written before the publish.
    let found = server.get(&client, &format!("/orders/{order_id}")).await;
    assert_eq!(found.status, 200, "{}", found.json);
    assert_eq!(found.content_type.as_deref(), Some("application/json"));
    let record = &found.json;
    assert_eq!(record["order_id"], order_id.as_str());
    assert_eq!(record["status"], "pending");
    assert_eq!(record["customer_id"], 1234);
    assert_eq!(record["total"], "100.08");
    assert_eq!(record["item_count"], 2);
    assert_eq!((record["charges"].as_u64(), record["attempts"].as_u64()), (Some(0), Some(0)));
    assert_eq!(record["accepted_at"], accepted.json["accepted_at"]);
    assert!(record["last_error"].is_null() && record["payment_outcome"].is_null(), "{record}");
    let parsed: OrderRecord =
        serde_json::from_value(found.json.clone()).expect("the API shape is the record");
    assert_eq!(parsed, only_record(&server.ledger));

    let received = stack.queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(WireMessage::parse(&received[0].body).unwrap().order.order_id.to_string(), order_id);
}

#[tokio::test]
async fn unknown_and_malformed_ids_get_json_errors() {
    let stack = EmbeddedStack::new(StackConfig::default());
    let server = TestServer::start(Config::default(), Arc::new(stack.topic)).await;
    let client = client();

    let unknown = server.get(&client, &format!("/orders/{}", Uuid::now_v7())).await;
    assert_eq!((unknown.status, unknown.error_code()), (404, "order_not_found"));
    assert_eq!(unknown.content_type.as_deref(), Some("application/json"));
    let malformed = server.get(&client, "/orders/not-a-uuid").await;
    assert_eq!((malformed.status, malformed.error_code()), (400, "invalid_order_id"));
    let truncated = server.get(&client, "/orders/0190b5c4-5d3e-7a2b-9c1d-2e3f4a5b6c7").await;
    assert_eq!((truncated.status, truncated.error_code()), (400, "invalid_order_id"));
    let empty = server.get(&client, "/orders/").await;
    assert_eq!((empty.status, empty.error_code()), (404, "not_found"));

    let response = client.post(server.url(&format!("/orders/{}", Uuid::now_v7()))).send().await.unwrap();
    let wrong_method = crate::common::Answer::read(response).await;
    assert_eq!((wrong_method.status, wrong_method.error_code()), (405, "method_not_allowed"));
    assert!(server.ledger.is_empty());
}

#[tokio::test]
async fn a_ledger_outage_answers_503_and_publishes_nothing() {
    let publisher = Arc::new(ScriptedPublisher::new());
    let config = Config { retry_after: Duration::from_secs(3), ..Config::default() };
    let server = TestServer::start(config, publisher.clone()).await;
    let client = client();

    // Throttling refuses the write; an unavailable store may or may not have applied it.
    for error in
        [LedgerError::Throttled("slow down".into()), LedgerError::Unavailable("connection reset".into())]
    {
        server.ledger.fail_with(Some(error));
        let refused = server.post_order(&client, "/orders/async", &order(1)).await;
        assert_eq!((refused.status, refused.error_code()), (503, "ledger_unavailable"));
        assert_eq!(refused.retry_after.as_deref(), Some("3"));
        let lookup = server.get(&client, &format!("/orders/{}", Uuid::now_v7())).await;
        assert_eq!((lookup.status, lookup.error_code()), (503, "ledger_unavailable"));
        assert_eq!(lookup.retry_after.as_deref(), Some("3"));
    }
    assert_eq!(publisher.calls_started(), 0, "nothing was published while the ledger was down");

    server.ledger.fail_with(None);
    let accepted = server.post_order(&client, "/orders/async", &order(2)).await;
    assert_eq!(accepted.status, 202, "{}", accepted.json);
    assert_eq!(publisher.batch_sizes(), [1]);
    assert_eq!(only_record(&server.ledger).customer_id, 2, "the refused orders left no record");
    let stats = server.state.stats().async_orders;
    assert_eq!((stats.ledger_failures, stats.failed, stats.accepted), (2, 0, 1));
}

#[tokio::test]
async fn a_refused_publish_marks_the_record_failed() {
    let publisher = Arc::new(ScriptedPublisher::new().failing(|_| true));
    let server = TestServer::start(Config::default(), publisher).await;
    let client = client();

    let refused = server.post_order(&client, "/orders/async", &order(7)).await;
    assert_eq!((refused.status, refused.error_code()), (503, "bus_unavailable"));
    eventually("the record is marked failed", 2000, || only_record_failed(&server.ledger)).await;

    let record = only_record(&server.ledger);
    let last_error = record.last_error.as_deref().unwrap_or_default();
    assert!(last_error.contains("publish to the bus failed"), "{last_error}");
    assert_eq!((record.customer_id, record.charges, record.attempts), (7, 0, 0));
    let found = server.get(&client, &format!("/orders/{}", record.order_id)).await;
    assert_eq!((found.status, &found.json["status"]), (200, &"failed".into()));
    assert_eq!(found.json["last_error"], last_error);
    let stats = server.state.stats().async_orders;
    assert_eq!((stats.failed, stats.abandon_failures, stats.ledger_failures), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_unacknowledged_publish_marks_the_record_failed() {
    let publisher = Arc::new(ScriptedPublisher::new().held());
    let config = Config { publish_timeout: Duration::from_millis(300), ..Config::default() };
    let server = TestServer::start(config, publisher.clone()).await;

    let refused = server.post_order(&client(), "/orders/async", &order(1)).await;
    assert_eq!((refused.status, refused.error_code()), (503, "outcome_unknown"));
    eventually("the record is marked failed", 400, || only_record_failed(&server.ledger)).await;
    let last_error = only_record(&server.ledger).last_error.unwrap_or_default();
    // The broker call and the request time out together; either may report it.
    assert!(last_error.contains("timed out") || last_error.contains("did not acknowledge"), "{last_error}");
}

#[tokio::test]
async fn a_client_that_leaves_before_the_acknowledgement_leaves_a_failed_record() {
    let publisher = Arc::new(ScriptedPublisher::new().held());
    let server = Arc::new(TestServer::start(Config::default(), publisher.clone()).await);
    let impatient = tokio::spawn({
        let server = server.clone();
        async move { server.post_order(&client(), "/orders/async", &order(1)).await }
    });
    eventually("the publish is in flight", 2000, || publisher.calls_started() == 1).await;
    assert_eq!(only_record(&server.ledger).status, OrderStatus::Pending);

    impatient.abort();
    eventually("the record is marked failed", 2000, || only_record_failed(&server.ledger)).await;
    let last_error = only_record(&server.ledger).last_error.unwrap_or_default();
    assert!(last_error.contains("client went away"), "{last_error}");
    publisher.release();
}

#[tokio::test]
async fn lookups_are_not_held_back_by_the_order_endpoints_limit() {
    // The only async slot is taken by an order whose publish is stalled.
    let publisher = Arc::new(ScriptedPublisher::new().held());
    let config = Config { max_async_in_flight: 1, ..Config::default() };
    let server = Arc::new(TestServer::start(config, publisher.clone()).await);
    let client = client();
    let stalled = tokio::spawn({
        let (server, client) = (server.clone(), client.clone());
        async move { server.post_order(&client, "/orders/async", &order(1)).await }
    });
    eventually("the publish is in flight", 2000, || publisher.calls_started() == 1).await;

    let shed = server.post_order(&client, "/orders/async", &order(2)).await;
    assert_eq!((shed.status, shed.error_code()), (503, "overloaded"));
    let order_id = only_record(&server.ledger).order_id;
    let found = server.get(&client, &format!("/orders/{order_id}")).await;
    assert_eq!((found.status, &found.json["status"]), (200, &"pending".into()));

    publisher.release();
    assert_eq!(stalled.await.unwrap().status, 202);
}

/// A receiver whose publishes all fail and whose abandons fail `failures` times with `error`.
async fn with_flaky_abandons(error: LedgerError, failures: u32) -> (TestServer, Arc<HookedLedger>) {
    let records = Arc::new(EmbeddedLedger::default());
    let flaky = Arc::new(HookedLedger::new(records.clone()).failing_abandons(error, failures));
    let publisher = Arc::new(ScriptedPublisher::new().failing(|_| true));
    (TestServer::start_with_ledger(Config::default(), publisher, records, flaky.clone()).await, flaky)
}

#[tokio::test(start_paused = true)]
async fn marking_failed_is_retried_with_backoff() {
    let (server, flaky) = with_flaky_abandons(LedgerError::Throttled("slow down".into()), 3).await;
    let started = tokio::time::Instant::now();
    let refused = server.post_order(&client(), "/orders/async", &order(1)).await;
    assert_eq!(refused.status, 503);
    eventually("the record is marked failed", 1000, || only_record_failed(&server.ledger)).await;
    assert_eq!(flaky.abandon_calls.load(Ordering::SeqCst), 4, "three failures, then the write");
    // Backoff of 100, 200 and 400 ms, each jittered by ±50 %.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(350) && waited < Duration::from_millis(1100), "{waited:?}");
    assert_eq!(server.state.stats().async_orders.abandon_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_record_that_cannot_be_marked_failed_is_counted_and_stays_pending() {
    for (error, calls) in [
        (LedgerError::Unavailable("down".into()), 5),
        (LedgerError::Fatal { code: "AccessDeniedException".into(), message: "no".into() }, 1),
    ] {
        let (server, flaky) = with_flaky_abandons(error.clone(), u32::MAX).await;
        let refused = server.post_order(&client(), "/orders/async", &order(1)).await;
        assert_eq!(refused.status, 503);
        eventually("marking failed is given up", 1000, || {
            server.state.stats().async_orders.abandon_failures == 1
        })
        .await;
        assert_eq!(flaky.abandon_calls.load(Ordering::SeqCst), calls, "{error}: only retryable errors retry");
        assert_eq!(
            only_record(&server.ledger).status,
            OrderStatus::Pending,
            "it stays pending until it expires"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_records_to_be_marked_failed() {
    let (mut server, flaky) = with_flaky_abandons(LedgerError::Throttled("slow down".into()), 2).await;
    let refused = server.post_order(&client(), "/orders/async", &order(1)).await;
    assert_eq!(refused.status, 503);
    server.signal_shutdown();
    let ran = tokio::time::timeout(Duration::from_secs(30), &mut server.server).await;
    ran.expect("run returns").unwrap().expect("clean shutdown");
    assert_eq!(flaky.abandon_calls.load(Ordering::SeqCst), 3);
    assert_eq!(only_record(&server.ledger).status, OrderStatus::Failed, "marked before run returned");
}
