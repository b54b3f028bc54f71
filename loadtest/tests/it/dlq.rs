//! `loadtest dlq list|redrive`: against a running pipeline's control API (the embedded stack), and against
//! moto server, where the redrive falls back to receive → send → delete, is interrupted halfway, is run
//! again, and a real worker then charges every order once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bus::aws::provision::{ProvisionSpec, provision};
use bus::aws::{AwsConsumer, AwsDeadLetters, config_for_emulator};
use bus::embedded::{EmbeddedStack, StackConfig};
use bus::{
    ATTR_DEAD_LETTER_REASON, ATTR_SCHEMA_VERSION, Consumer, DeadLetter, DeadLetters, OutgoingMessage,
    RedriveEvent, RedriveOptions,
};
use chrono::Utc;
use ledger::Ledger;
use ledger::embedded::EmbeddedLedger;
use orders::{Order, OrderRequest, OrderStatus, PaymentConfig, WireMessage};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const NEEDS_MOTO: &str = "MOTO_ENDPOINT is not set: these tests need a moto server; run scripts/test.sh";
const REASON: &str = "payment gateway unavailable after 5 attempts";

/// A fresh order's id and its wire message, as the receiver publishes it and the worker dead-letters it:
/// the body unchanged, the schema version, and the reason.
fn dead_lettered_order() -> (Uuid, OutgoingMessage) {
    let request = OrderRequest::from_json(
        br#"{"customer_id": 7, "items": [{"product_id": "PROD-001", "quantity": 2, "price": 49.99}]}"#,
    )
    .expect("valid request");
    let order = Order::new(request);
    let message = OutgoingMessage::new(WireMessage::new(order.clone(), Utc::now()).to_json())
        .with_attribute(ATTR_SCHEMA_VERSION, orders::WIRE_VERSION.to_string())
        .with_attribute(ATTR_DEAD_LETTER_REASON, REASON);
    (order.order_id, message)
}

/// Runs the load tool with `args` (and no queue URLs from the environment unless given); its stdout.
async fn loadtest(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .env_remove("ORDERS_QUEUE_URL")
        .env_remove("ORDERS_DLQ_URL")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("running loadtest");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    assert!(
        output.status.success(),
        "loadtest {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn order_ids(letters: &[DeadLetter]) -> BTreeSet<Uuid> {
    letters.iter().map(|letter| WireMessage::parse(&letter.body).expect("an order").order.order_id).collect()
}

#[tokio::test]
async fn dlq_commands_list_and_redrive_the_embedded_pipeline_through_its_control_api() {
    let stack = EmbeddedStack::new(StackConfig::default());
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        let (id, message) = dead_lettered_order();
        stack.queue.send_to_dead_letter(message).await.expect("dead-letter");
        ids.insert(id);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(loadtest::commands::dlq::serve_control(
        listener,
        Arc::new(stack.clone()) as Arc<dyn DeadLetters>,
        stop.clone(),
    ));

    let json = loadtest(&["dlq", "list", "--control-url", &control, "--json"], &[]).await;
    let listed: Vec<DeadLetter> = serde_json::from_str(&json).expect("a JSON list");
    assert_eq!(order_ids(&listed), ids);
    assert!(listed.iter().all(|letter| letter.reason.as_deref() == Some(REASON)), "{listed:?}");
    let table = loadtest(&["dlq", "list", "--control-url", &control], &[]).await;
    for id in &ids {
        assert!(table.lines().any(|line| line.contains(&id.to_string()) && line.contains(REASON)), "{table}");
    }

    let redrive = loadtest(&["dlq", "redrive", "--control-url", &control], &[]).await;
    assert!(redrive.contains("moved 3 message(s)"), "{redrive}");
    assert_eq!(stack.dead_letter.stats_now().backlog(), 0);
    assert_eq!(stack.queue.stats_now().visible, 3);
    stop.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn an_interrupted_fallback_redrive_loses_nothing_and_a_worker_charges_each_order_once() {
    let endpoint = std::env::var("MOTO_ENDPOINT").expect(NEEDS_MOTO);
    let config = config_for_emulator(&endpoint).await;
    let visibility = Duration::from_secs(3);
    let spec = ProvisionSpec {
        visibility_timeout: visibility,
        ..ProvisionSpec::named(&format!("dlq-{}", Uuid::new_v4().simple()))
    };
    let stack = provision(&config, &spec).await.expect("provisioning against moto");
    // The DLQ's own visibility timeout short too, so an interrupted batch comes back within seconds.
    aws_sdk_sqs::Client::new(&config)
        .set_queue_attributes()
        .queue_url(&stack.dead_letter_url)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, "3")
        .send()
        .await
        .expect("DLQ visibility");
    let consumer = AwsConsumer::new(&config, &stack.queue_url).with_dead_letter_queue(&stack.dead_letter_url);
    let dead_letter = AwsConsumer::new(&config, &stack.dead_letter_url);
    let mut ids = BTreeSet::new();
    for _ in 0..20 {
        let (id, message) = dead_lettered_order();
        consumer.send_to_dead_letter(message).await.expect("dead-letter");
        ids.insert(id);
    }
    let aws_env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let queues = ["--queue-url", stack.queue_url.as_str(), "--dlq-url", stack.dead_letter_url.as_str()];

    let json = loadtest(&[&["dlq", "list", "--json", "--max", "50"][..], &queues].concat(), &aws_env).await;
    let listed: Vec<DeadLetter> = serde_json::from_str(&json).expect("a JSON list");
    assert_eq!(order_ids(&listed), ids, "all 20, with their reason");
    assert!(listed.iter().all(|letter| letter.reason.as_deref() == Some(REASON)));

    // Interrupted right after the first batch was sent, before (or while) it is deleted from the DLQ.
    let tools = AwsDeadLetters::new(&config, &stack.queue_url, &stack.dead_letter_url);
    let options = RedriveOptions { force_fallback: true, ..RedriveOptions::default() };
    let copied = tokio::sync::Notify::new();
    let on_event = |event: &RedriveEvent| {
        if matches!(event, RedriveEvent::Copied { .. }) {
            copied.notify_one();
        }
    };
    tokio::select! {
        biased;
        () = copied.notified() => {}
        report = tools.redrive(&options, &on_event) => panic!("should have been interrupted: {report:?}"),
    }
    let source = consumer.stats().await.expect("stats");
    assert!((1..20).contains(&source.visible), "the first batch only: {source:?}");

    // Again, through the command and without --fallback: moto has no move task, so it falls back by itself.
    let redrive =
        loadtest(&[&["dlq", "redrive", "--in-flight-wait", "30s"][..], &queues].concat(), &aws_env).await;
    assert!(redrive.contains("falling back") && redrive.contains("without an error code"), "{redrive}");
    assert!(redrive.contains("by receive → send → delete"), "{redrive}");
    let left = dead_letter.stats().await.expect("DLQ stats");
    assert_eq!((left.visible, left.in_flight), (0, 0), "none left behind: {redrive}");
    let back = consumer.stats().await.expect("stats");
    assert!(back.visible >= 20, "every order at least once: {back:?}");

    // A real worker drains the queue with the embedded ledger: every order settled, charged once.
    let ledger = Arc::new(EmbeddedLedger::default());
    let worker_config = worker::WorkerConfig {
        consumers: 4,
        payment: PaymentConfig {
            latency: Duration::from_millis(5),
            decline_rate: 0.0,
            ..PaymentConfig::default()
        },
        visibility_timeout: visibility,
        receive_wait: Duration::from_secs(1),
        ..worker::WorkerConfig::default()
    };
    let worker =
        worker::Worker::new(worker_config, Arc::new(consumer.clone()), ledger.clone() as Arc<dyn Ledger>);
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone().cancelled_owned()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut settled = 0;
        for id in &ids {
            if ledger
                .get(*id)
                .await
                .expect("ledger")
                .is_some_and(|record| record.status == OrderStatus::Completed)
            {
                settled += 1;
            }
        }
        let stats = consumer.stats().await.expect("stats");
        if settled == ids.len() && stats.visible + stats.in_flight == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{settled} of 20 settled, queue {stats:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    running.await.expect("worker task").expect("worker run");
    for id in &ids {
        let record = ledger.get(*id).await.expect("ledger").expect("a record");
        assert_eq!((record.status, record.charges), (OrderStatus::Completed, 1), "{record:?}");
    }
    let left = dead_letter.stats().await.expect("DLQ stats");
    assert_eq!((left.visible, left.in_flight), (0, 0), "nothing dead-lettered again");
}
