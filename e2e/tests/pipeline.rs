//! The whole pipeline with separate OS processes: the real `receiver` and `worker` binaries, moto server as
//! SNS/SQS, orders over HTTP. Run with `scripts/test.sh` (it starts moto, sets `MOTO_ENDPOINT` and builds the
//! binaries first).

use std::collections::BTreeMap;
use std::time::Duration;

use bus::Consumer;
use bus::aws::provision::{ProvisionSpec, Provisioned, provision};
use bus::aws::{AwsConsumer, config_for_emulator};
use e2e::{CountingProxy, RequestCounts, Service, free_port, moto_endpoint};
use serde_json::Value;
use tokio::time::Instant;

/// How long the binaries get to start (a cold debug binary loading its AWS configuration).
const STARTUP: Duration = Duration::from_secs(20);

async fn provision_stack(test: &str, visibility_timeout: Duration) -> Provisioned {
    let config = config_for_emulator(&moto_endpoint()).await;
    let mut spec = ProvisionSpec::named(&format!("{test}-{}", uuid::Uuid::new_v4().simple()));
    spec.visibility_timeout = visibility_timeout;
    provision(&config, &spec).await.expect("provision the stack in moto")
}

/// A consumer talking to moto directly (not through the counting proxy), to look at the queues.
async fn observer(stack: &Provisioned) -> AwsConsumer {
    let config = config_for_emulator(&moto_endpoint()).await;
    AwsConsumer::new(&config, &stack.queue_url).with_dead_letter_queue(&stack.dead_letter_url)
}

async fn start_receiver(http: &reqwest::Client, stack: &Provisioned, aws_endpoint: &str) -> Service {
    let args = vec!["--topic-arn".to_owned(), stack.topic_arn.clone()];
    let mut receiver = Service::start("receiver", &args, free_port(), aws_endpoint);
    receiver.wait_healthy(http, STARTUP).await;
    receiver
}

fn worker_args(
    stack: &Provisioned,
    consumers: u32,
    payment_latency: &str,
    visibility: Duration,
) -> Vec<String> {
    [
        ("--queue-url", stack.queue_url.clone()),
        ("--dlq-url", stack.dead_letter_url.clone()),
        ("--consumers", consumers.to_string()),
        ("--payment-latency", payment_latency.to_owned()),
        ("--decline-rate", "0.1".to_owned()),
        ("--visibility-timeout", format!("{}s", visibility.as_secs())),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

async fn start_worker(http: &reqwest::Client, args: &[String], aws_endpoint: &str) -> Service {
    let mut worker = Service::start("worker", args, free_port(), aws_endpoint);
    worker.wait_healthy(http, STARTUP).await;
    worker
}

/// POSTs `count` orders, `concurrency` at a time; returns how many were answered 202 Accepted.
async fn post_orders(http: &reqwest::Client, receiver: &Service, count: u64, concurrency: usize) -> u64 {
    let url = format!("{}/orders/async", receiver.url());
    let mut accepted = 0;
    let mut statuses = BTreeMap::new();
    let customers: Vec<u64> = (1..=count).collect();
    for wave in customers.chunks(concurrency) {
        let requests = wave.iter().map(|&customer_id| {
            let body = serde_json::json!({
                "customer_id": customer_id,
                "items": [{ "product_id": "PROD-001", "quantity": 2, "price": 49.99 }],
            });
            http.post(&url).json(&body).send()
        });
        let mut handles = Vec::new();
        for request in requests {
            handles.push(tokio::spawn(request));
        }
        for handle in handles {
            let status = handle.await.expect("request task").expect("POST /orders/async").status().as_u16();
            *statuses.entry(status).or_insert(0) += 1;
            accepted += u64::from(status == 202);
        }
    }
    eprintln!("POST /orders/async answers: {statuses:?}");
    accepted
}

async fn worker_stats(http: &reqwest::Client, worker: &Service) -> Value {
    let response = http.get(format!("{}/stats", worker.url())).send().await.expect("GET worker /stats");
    response.json().await.expect("worker /stats is JSON")
}

fn settled(stats: &Value) -> u64 {
    stats["completed"].as_u64().unwrap() + stats["declined"].as_u64().unwrap()
}

/// Polls the worker until it has settled `expected` orders.
async fn wait_settled(http: &reqwest::Client, worker: &Service, expected: u64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = worker_stats(http, worker).await;
        if settled(&stats) >= expected || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the queue until nothing is visible or in flight (deletes may still be in a batch window), then returns
/// its final statistics.
async fn wait_queue_empty(queue: &AwsConsumer, timeout: Duration) -> bus::QueueStats {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = queue.stats().await.expect("queue stats");
        if stats.backlog() == 0 || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn every_accepted_order_is_processed_and_the_queue_ends_empty() {
    const ORDERS: u64 = 200;
    let http = reqwest::Client::new();
    let stack = provision_stack("e2e-all", Duration::from_secs(30)).await;
    let proxy = CountingProxy::start(&moto_endpoint()).await;
    let worker =
        start_worker(&http, &worker_args(&stack, 50, "1s", Duration::from_secs(30)), proxy.url()).await;
    let receiver = start_receiver(&http, &stack, proxy.url()).await;
    let before = proxy.counts();

    let accepted = post_orders(&http, &receiver, ORDERS, 50).await;
    assert_eq!(accepted, ORDERS, "moto is slow but not this slow: every order should be accepted");

    let stats = wait_settled(&http, &worker, accepted, Duration::from_secs(120)).await;
    assert_settled_once(&stats, accepted);
    let queue = wait_queue_empty(&observer(&stack).await, Duration::from_secs(10)).await;
    assert_eq!((queue.visible, queue.in_flight, queue.dead_letter), (0, 0, Some(0)), "{queue:?}");

    // The worker consumes while orders arrive, so receives and deletes batch only what is there at that moment.
    let (all, _) = report_requests("live (worker running during the burst)", accepted, &before, &proxy);
    assert!(all <= 1.0, "batching should keep AWS requests well under one per order: {all:.3}");
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn draining_a_backlog_costs_under_0_4_aws_requests_per_order() {
    const ORDERS: u64 = 200;
    let http = reqwest::Client::new();
    let stack = provision_stack("e2e-backlog", Duration::from_secs(30)).await;
    let proxy = CountingProxy::start(&moto_endpoint()).await;
    let receiver = start_receiver(&http, &stack, proxy.url()).await;
    let before = proxy.counts();

    // A flash sale: orders arrive faster than any worker pays them, and queue up. The worker then has a slot
    // for every order (consumers = rate x latency, the lab's sizing rule), so it can receive in full batches.
    let accepted = post_orders(&http, &receiver, ORDERS, 50).await;
    assert_eq!(accepted, ORDERS, "every order should be accepted");
    let worker =
        start_worker(&http, &worker_args(&stack, 200, "1s", Duration::from_secs(30)), proxy.url()).await;

    let stats = wait_settled(&http, &worker, accepted, Duration::from_secs(120)).await;
    assert_settled_once(&stats, accepted);
    let queue = wait_queue_empty(&observer(&stack).await, Duration::from_secs(10)).await;
    assert_eq!((queue.visible, queue.in_flight, queue.dead_letter), (0, 0, Some(0)), "{queue:?}");

    // Full batches everywhere would be 0.3 per order (a tenth each for publish, receive and delete); measured on
    // moto: 0.345-0.35 without the idle long polls, about 0.43 with them (16 pollers each waiting once).
    let (all, working) = report_requests("backlog (worker drains a queue of 200)", accepted, &before, &proxy);
    assert!(working <= 0.4, "draining a backlog should cost under 0.4 AWS requests per order: {working:.3}");
    assert!(all <= 0.5, "idle long polls included, under 0.5 AWS requests per order: {all:.3}");
}

/// Every accepted order settled (paid or declined) exactly once, none dead-lettered.
fn assert_settled_once(stats: &Value, accepted: u64) {
    assert_eq!(settled(stats), accepted, "every accepted order settled; worker: {stats}");
    assert_eq!(stats["charged"].as_u64(), Some(accepted), "no order charged twice: {stats}");
    assert_eq!(stats["dead_lettered"].as_u64(), Some(0), "{stats}");
}

/// Prints the AWS requests made since `before`, by operation and per order, and returns the figures per order:
/// all requests, and all but the idle long polls (a fixed cost of one per poller per 20 s, whatever the load).
/// Call it once the queue is empty.
fn report_requests(scenario: &str, orders: u64, before: &RequestCounts, proxy: &CountingProxy) -> (f64, f64) {
    let requests = proxy.counts().since(before);
    let per_order = |count: u64| count as f64 / orders as f64;
    let (total, idle) = (requests.total(), requests.idle_receives());
    eprintln!(
        "AWS requests, {scenario}, {orders} orders: {:?}, of which {idle} idle receives; \
         {:.3} requests per order, {:.3} without the idle receives",
        requests.by_operation,
        per_order(total),
        per_order(total - idle)
    );
    (per_order(total), per_order(total - idle))
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn a_worker_killed_mid_payment_loses_nothing() {
    const ORDERS: u64 = 8;
    let visibility = Duration::from_secs(3);
    let http = reqwest::Client::new();
    let stack = provision_stack("e2e-kill", visibility).await;
    let endpoint = moto_endpoint();
    let receiver = start_receiver(&http, &stack, &endpoint).await;
    assert_eq!(post_orders(&http, &receiver, ORDERS, ORDERS as usize).await, ORDERS);

    // Every order gets its own consumer, so all payments (2 s each) run at once.
    let args = worker_args(&stack, ORDERS as u32, "2s", visibility);
    let mut first = start_worker(&http, &args, &endpoint).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let in_payment = loop {
        let stats = worker_stats(&http, &first).await;
        if stats["in_flight"].as_u64() == Some(ORDERS) || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    first.kill_hard();
    assert_eq!(in_payment["in_flight"].as_u64(), Some(ORDERS), "all orders were mid-payment: {in_payment}");
    assert_eq!(settled(&in_payment), 0, "killed before any payment finished: {in_payment}");

    let queue = observer(&stack).await;
    let after_kill = queue.stats().await.expect("queue stats");
    assert_eq!(
        after_kill.backlog(),
        ORDERS,
        "the killed worker's messages are still in the queue: {after_kill:?}"
    );

    let second = start_worker(&http, &args, &endpoint).await;
    let stats = wait_settled(&http, &second, ORDERS, Duration::from_secs(60)).await;
    assert_eq!(settled(&stats), ORDERS, "the new worker settled every order: {stats}");
    assert_eq!(stats["dead_lettered"].as_u64(), Some(0), "{stats}");
    let queue = wait_queue_empty(&queue, Duration::from_secs(10)).await;
    assert_eq!((queue.visible, queue.in_flight, queue.dead_letter), (0, 0, Some(0)), "{queue:?}");
}
