//! The worker's HTTP port (`/health`, `/stats`, `/metrics`) and its binary (`--help`, the missing-queue
//! message, `--check-health`), over real sockets bound to port 0.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{Running, config, send_orders, stack, wait_for};
use worker::{Worker, WorkerStats};

const VISIBILITY: Duration = Duration::from_secs(30);

async fn serve(
    handle: worker::WorkerHandle,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(worker::serve_http(listener, handle, metrics, std::future::pending()));
    format!("http://{address}")
}

#[tokio::test]
async fn health_stats_and_metrics_describe_the_running_worker() {
    // A local recorder, so the test neither needs nor disturbs a global one.
    let recorder = service_shell::prometheus::builder(worker::METRIC_BUCKETS).unwrap().build_recorder();
    let prometheus = recorder.handle();
    let stack = stack(VISIBILITY, 5);
    send_orders(&stack.queue, 3);
    let worker = metrics::with_local_recorder(&recorder, || {
        Worker::new(
            config(2, Duration::from_millis(60), VISIBILITY),
            Arc::new(stack.queue.clone()),
            Arc::new(ledger::embedded::EmbeddedLedger::default()),
        )
    });
    let handle = worker.handle();
    let base = serve(handle.clone(), Some(prometheus)).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    wait_for("three orders", Duration::from_secs(30), || handle.settled() == 3).await;

    let client = reqwest::Client::new();
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<serde_json::Value>().await.unwrap()["status"], "ok");

    let stats: WorkerStats = client.get(format!("{base}/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (stats.received, stats.completed, stats.consumers, stats.free_slots),
        (3, 3, 2, 2),
        "{stats:?}"
    );
    assert_eq!(stats.gate_mode, "per-consumer");
    assert_eq!((stats.processing_ms.count, stats.end_to_end_ms.count), (3, 3));
    assert!(stats.processing_ms.p50 >= 60.0 && stats.processing_ms.max < 1_000.0, "{stats:?}");
    assert!(stats.end_to_end_ms.p50 >= stats.processing_ms.p50, "end to end includes processing: {stats:?}");

    let raw: serde_json::Value =
        client.get(format!("{base}/stats")).send().await.unwrap().json().await.unwrap();
    for field in ["in_flight", "utilization", "processing_rate", "retried", "dead_lettered", "declined"] {
        assert!(raw.get(field).is_some(), "/stats has {field}");
    }
    assert_eq!(raw["breaker"]["state"], "closed", "/stats shows the breaker: {raw}");
    for field in ["count", "p50", "p95", "p99", "max"] {
        assert!(raw["end_to_end_ms"].get(field).is_some(), "end_to_end_ms has {field}");
    }

    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for expected in [
        "worker_messages_received_total 3",
        "worker_orders_completed_total 3",
        "worker_in_flight 0",
        "worker_consumers 2",
        "worker_processing_seconds_bucket{le=\"0.1\"} 3",
        "worker_end_to_end_seconds",
        "worker_breaker_state 0",
        "worker_breaker_transitions_total{to=\"open\"} 0",
    ] {
        assert!(text.contains(expected), "/metrics lacks {expected:?}:\n{text}");
    }

    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert!(handle.stats().draining);
}

#[tokio::test]
async fn metrics_without_a_recorder_is_a_clear_404() {
    let stack = stack(VISIBILITY, 5);
    let worker =
        Running::start(config(1, Duration::from_millis(10), VISIBILITY), Arc::new(stack.queue.clone()));
    let base = serve(worker.handle.clone(), None).await;
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains("metrics are not enabled"));
    worker.shutdown().await;
}

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_worker"));
    for variable in [
        "ORDERS_QUEUE_URL",
        "ORDERS_DLQ_URL",
        "ORDERS_TABLE",
        "PORT",
        "CHECK_HEALTH",
        "WORKER_CHECK_HEALTH",
        "GATE_MODE",
    ] {
        command.env_remove(variable);
    }
    command
}

#[test]
fn help_explains_every_gate_mode_and_flag_with_its_environment_variable() {
    let output = binary().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let explains = |mode: &str, sentence: &str| {
        help.lines()
            .any(|line| line.trim_start().starts_with(&format!("- {mode}:")) && line.contains(sentence))
    };
    assert!(explains("per-consumer", "Each consumer owns a single-slot payment gate"), "{help}");
    assert!(explains("shared", "All consumers share one gate"), "{help}");
    for variable in [
        "PORT",
        "ORDERS_QUEUE_URL",
        "ORDERS_DLQ_URL",
        "WORKER_CONSUMERS",
        "GATE_MODE",
        "GATE_SLOTS",
        "PAYMENT_LATENCY",
        "DECLINE_RATE",
        "SHUTDOWN_DEADLINE",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(&format!("[env: {variable}=")), "--help lacks {variable}:\n{help}");
    }
}

#[test]
fn without_a_queue_url_the_binary_says_what_to_set() {
    let output = binary().output().unwrap();
    assert_eq!(output.status.code(), Some(2), "a misconfiguration exits 2, as the receiver's does");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ORDERS_QUEUE_URL")
            && stderr.contains("ORDERS_TABLE")
            && stderr.contains("cargo run --release -p loadtest -- up"),
        "{stderr}"
    );
    let with_queue = binary().env("ORDERS_QUEUE_URL", "http://127.0.0.1:9/queue").output().unwrap();
    assert_eq!(with_queue.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&with_queue.stderr);
    assert!(
        stderr.contains("ORDERS_TABLE") && !stderr.contains("ORDERS_QUEUE_URL"),
        "only what is missing: {stderr}"
    );
}

#[test]
fn check_health_takes_the_shared_variable_and_still_the_deprecated_one() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for variable in ["CHECK_HEALTH", "WORKER_CHECK_HEALTH"] {
        let status = binary().env(variable, "true").env("PORT", closed.to_string()).status().unwrap();
        // 1: the check ran and found nothing listening (2 would mean it tried to serve without a queue).
        assert_eq!(status.code(), Some(1), "{variable}");
    }
    let help = String::from_utf8(binary().arg("--help").output().unwrap().stdout).unwrap();
    assert!(help.contains("Deprecated: use --check-health / CHECK_HEALTH"), "{help}");
}

#[tokio::test]
async fn check_health_exits_zero_only_when_the_port_answers_healthy() {
    let stack = stack(VISIBILITY, 5);
    let worker =
        Running::start(config(1, Duration::from_millis(10), VISIBILITY), Arc::new(stack.queue.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(worker::serve_http(listener, worker.handle.clone(), None, std::future::pending()));
    let healthy = tokio::task::spawn_blocking(move || {
        binary().args(["--check-health", "--port", &port.to_string()]).status().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(healthy.code(), Some(0));

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // nothing listens there any more
    let unhealthy = tokio::task::spawn_blocking(move || {
        binary().args(["--check-health", "--port", &closed.to_string()]).status().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(unhealthy.code(), Some(1));
    worker.shutdown().await;
}
