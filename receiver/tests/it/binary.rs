//! The `receiver` binary itself: a clear refusal without a topic or a ledger table, `--check-health`, and exit 0
//! after SIGTERM (no broker or table is contacted: nothing is published).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::TestServer;
use bus::embedded::{EmbeddedStack, StackConfig};
use receiver::Config;

const BINARY: &str = env!("CARGO_BIN_EXE_receiver");

/// An environment with no AWS or receiver settings leaking in from the machine.
fn receiver_command() -> Command {
    let mut command = Command::new(BINARY);
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn without_a_topic_it_says_what_to_set_and_fails() {
    let output = receiver_command().output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ORDERS_TOPIC_ARN"), "{stderr}");
    assert!(stderr.contains("cargo run --release -p loadtest -- up"), "{stderr}");
}

#[test]
fn without_a_ledger_table_it_says_what_to_set_and_fails() {
    let output = receiver_command()
        .env("ORDERS_TOPIC_ARN", "arn:aws:sns:us-east-1:000000000000:orders")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ORDERS_TABLE"), "{stderr}");
    assert!(!stderr.contains("ORDERS_TOPIC_ARN"), "only what is missing: {stderr}");
}

#[tokio::test]
async fn check_health_exits_0_when_healthy_and_1_otherwise() {
    let stack = EmbeddedStack::new(StackConfig::default());
    let server = TestServer::start(Config::default(), Arc::new(stack.topic)).await;
    let port = server.address.port().to_string();
    let healthy = tokio::task::spawn_blocking(move || {
        receiver_command().args(["--check-health", "--port", &port]).status().unwrap()
    });
    assert_eq!(healthy.await.unwrap().code(), Some(0));

    let closed_port = free_port().to_string();
    let unhealthy = receiver_command().env("PORT", closed_port).arg("--check-health").status().unwrap();
    assert_eq!(unhealthy.code(), Some(1));
}

#[test]
fn sigterm_stops_it_cleanly_with_exit_0() {
    let port = free_port();
    let child = receiver_command()
        .env("PORT", port.to_string())
        .env("ADMIN_PORT", free_port().to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("ORDERS_TOPIC_ARN", "arn:aws:sns:us-east-1:000000000000:orders")
        .env("ORDERS_TABLE", "orders")
        .env("LEDGER_RETENTION", "7days") // as the task definition sets it
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let started = Instant::now();
    loop {
        let check = receiver_command().env("PORT", port.to_string()).arg("--check-health").status().unwrap();
        if check.success() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the receiver never became healthy");
        std::thread::sleep(Duration::from_millis(50));
    }

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let logs = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).expect("LOG_FORMAT=json logs JSON lines"))
        .collect();
    // The one JSON shape of every service: the event's fields at the top level.
    assert!(
        lines.iter().any(|line| line["message"] == "SIGTERM received" && line["level"] == "INFO"),
        "{logs}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
