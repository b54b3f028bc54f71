//! `GET /metrics` with a Prometheus recorder, as the binary has. The recorder is this test's own, not the
//! global one: the other tests of this binary run servers in the same process, and would count into a global
//! recorder.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{client, order};
use bus::embedded::{EmbeddedStack, StackConfig};
use ledger::LedgerError;
use orders::PaymentConfig;
use receiver::{AppState, Config};

#[tokio::test]
async fn metrics_cover_requests_publishing_the_ledger_and_the_gate() {
    let recorder = service_shell::prometheus::builder(receiver::METRIC_BUCKETS).unwrap().build_recorder();
    let handle = recorder.handle();
    // The default for this thread only. `#[tokio::test]` runs the server's tasks on this same thread (a
    // current-thread runtime), so they record here and nothing else does.
    let _local = metrics::set_default_local_recorder(&recorder);
    let stack = EmbeddedStack::new(StackConfig::default());
    let config = Config {
        payment: PaymentConfig {
            latency: Duration::from_millis(10),
            decline_rate: 0.0,
            ..PaymentConfig::default()
        },
        ..Config::default()
    };
    let ledger = Arc::new(ledger::embedded::EmbeddedLedger::default());
    let state = AppState::new(config, Arc::new(stack.topic.clone()), ledger.clone(), Some(handle));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = format!("http://{}", admin_listener.local_addr().unwrap());
    tokio::spawn(receiver::serve_admin(admin_listener, state.clone(), std::future::pending()));
    tokio::spawn(receiver::run(listener, state, std::future::pending()));
    let client = client();
    let post = |path: &str, body: String| {
        client.post(format!("{base}{path}")).header("content-type", "application/json").body(body).send()
    };

    let accepted = post("/orders/async", order(1)).await.unwrap();
    assert_eq!(accepted.status(), 202);
    let order_id =
        accepted.json::<serde_json::Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned();
    assert_eq!(client.get(format!("{base}/orders/{order_id}")).send().await.unwrap().status(), 200);
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(client.get(format!("{base}/orders/{unknown}")).send().await.unwrap().status(), 404);
    ledger.fail_with(Some(LedgerError::Throttled("slow down".into())));
    assert_eq!(post("/orders/async", order(3)).await.unwrap().status(), 503);
    ledger.fail_with(None);
    assert_eq!(post("/orders/async", "{}".into()).await.unwrap().status(), 422);
    assert_eq!(post("/orders/sync", order(2)).await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{base}/nowhere/{}", 7)).send().await.unwrap().status(), 404);

    assert_eq!(
        client.get(format!("{base}/metrics")).send().await.unwrap().status(),
        404,
        "not on the public port"
    );
    let response = client.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for expected in [
        r#"receiver_http_requests_total{route="/orders/async",status="202"} 1"#,
        r#"receiver_http_requests_total{route="/orders/async",status="422"} 1"#,
        r#"receiver_http_requests_total{route="/orders/sync",status="200"} 1"#,
        r#"receiver_http_requests_total{route="unmatched",status="404"} 1"#,
        r#"receiver_http_requests_total{route="/orders/{id}",status="200"} 1"#,
        r#"receiver_http_requests_total{route="/orders/{id}",status="404"} 1"#,
        r#"receiver_http_requests_total{route="/orders/async",status="503"} 1"#,
        r#"receiver_ledger_failures_total{operation="create",kind="throttled"} 1"#,
        r#"receiver_http_request_duration_seconds_count{route="/orders/async",status="202"} 1"#,
        "receiver_publish_batch_size_count 1",
        r#"receiver_publish_duration_seconds_count{outcome="ok"} 1"#,
        "receiver_payment_gate_wait_seconds_count 1",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}
