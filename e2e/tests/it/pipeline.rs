//! The whole pipeline with separate OS processes: the real `receiver` and `worker` binaries, moto server as
//! SNS/SQS and as the DynamoDB table of the order ledger, orders over HTTP. Run with `scripts/test.sh` (it
//! starts moto, sets `MOTO_ENDPOINT` and builds the binaries first).

use std::collections::BTreeMap;
use std::time::Duration;

use bus::Consumer;
use bus::aws::provision::{ProvisionSpec, Provisioned, provision};
use bus::aws::{AwsConsumer, config_for_emulator};
use e2e::cost::{DYNAMODB_WRITES, PerOrder};
use e2e::{CountingProxy, RequestCounts, Service, free_port, moto_endpoint};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long the binaries get to start (a cold debug binary loading its AWS configuration).
const STARTUP: Duration = Duration::from_secs(20);

/// The final statuses of an order's record.
const TERMINAL: &[&str] = &["completed", "declined", "failed"];

/// Held by each test for its whole run, so the tests use moto one at a time even when the harness runs them
/// in parallel (`scripts/test.sh` does). moto serves requests about one at a time (150-200 DynamoDB
/// requests/s here), so a second test would slow every ledger call of the first, toward the SDK's 5 s attempt
/// timeout, and change the batching being measured.
static MOTO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's own resources on moto, uniquely named so tests can share a server: topic, queue and DLQ, and
/// the ledger's table.
struct Stack {
    bus: Provisioned,
    table: String,
}

async fn provision_stack(test: &str, visibility_timeout: Duration) -> Stack {
    let config = config_for_emulator(&moto_endpoint()).await;
    let name = format!("{test}-{}", uuid::Uuid::new_v4().simple());
    let mut spec = ProvisionSpec::named(&name);
    spec.visibility_timeout = visibility_timeout;
    let bus = provision(&config, &spec).await.expect("provision the stack in moto");
    let table = format!("{name}-orders");
    ledger::dynamodb::create_table(&config, &table).await.expect("create the ledger table in moto");
    Stack { bus, table }
}

/// A consumer talking to moto directly (not through the counting proxy), to look at the queues.
async fn observer(stack: &Stack) -> AwsConsumer {
    let config = config_for_emulator(&moto_endpoint()).await;
    AwsConsumer::new(&config, &stack.bus.queue_url).with_dead_letter_queue(&stack.bus.dead_letter_url)
}

async fn start_receiver(http: &reqwest::Client, stack: &Stack, aws_endpoint: &str) -> Service {
    let args = ["--topic-arn", &stack.bus.topic_arn, "--table", &stack.table].map(str::to_owned);
    let mut receiver = Service::start("receiver", &args, free_port(), aws_endpoint);
    receiver.wait_healthy(http, STARTUP).await;
    receiver
}

/// How often the workers write their worker registry entry: one ledger write each, not an order's.
const REGISTRY_INTERVAL: Duration = Duration::from_secs(5);

fn worker_args(stack: &Stack, consumers: u32, payment_latency: &str, visibility: Duration) -> Vec<String> {
    [
        ("--queue-url", stack.bus.queue_url.clone()),
        ("--dlq-url", stack.bus.dead_letter_url.clone()),
        ("--table", stack.table.clone()),
        ("--consumers", consumers.to_string()),
        ("--payment-latency", payment_latency.to_owned()),
        ("--decline-rate", "0.1".to_owned()),
        ("--visibility-timeout", format!("{}s", visibility.as_secs())),
        ("--registry-interval", format!("{}s", REGISTRY_INTERVAL.as_secs())),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    // Full batches from the start: the tests count payments in flight from the first receive.
    .chain(["--breaker-start-closed".to_owned()])
    .collect()
}

async fn start_worker(http: &reqwest::Client, args: &[String], aws_endpoint: &str) -> Service {
    let mut worker = Service::start("worker", args, free_port(), aws_endpoint);
    worker.wait_healthy(http, STARTUP).await;
    worker
}

/// POSTs `count` orders, `concurrency` at a time; returns the `order_id`s of those answered 202 Accepted.
async fn post_orders(
    http: &reqwest::Client,
    receiver: &Service,
    count: u64,
    concurrency: usize,
) -> Vec<String> {
    let url = format!("{}/orders/async", receiver.url());
    let mut accepted = Vec::new();
    let mut statuses = BTreeMap::new();
    let customers: Vec<u64> = (1..=count).collect();
    for wave in customers.chunks(concurrency) {
        let mut requests = JoinSet::new();
        for &customer_id in wave {
            let body = serde_json::json!({
                "customer_id": customer_id,
                "items": [{ "product_id": "PROD-001", "quantity": 2, "price": 49.99 }],
            });
            let request = http.post(&url).json(&body).send();
            requests.spawn(async move {
                let response = request.await.expect("POST /orders/async");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap_or(Value::Null))
            });
        }
        while let Some(answer) = requests.join_next().await {
            let (status, body) = answer.expect("request task");
            *statuses.entry(status).or_insert(0) += 1;
            if status == 202 {
                let order_id =
                    body["order_id"].as_str().unwrap_or_else(|| panic!("a 202 names its order: {body}"));
                accepted.push(order_id.to_owned());
            }
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
/// its final statistics. Give it more than the visibility timeout: a duplicate delivery (moto's concurrent
/// receives make them, as SQS may) stays in flight until its retry backoff or visibility runs out.
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

/// The ledger records of `ids`, by `GET /orders/{id}` on the receiver, 20 lookups at a time.
async fn order_records(
    http: &reqwest::Client,
    receiver: &Service,
    ids: &[String],
) -> BTreeMap<String, Value> {
    let mut records = BTreeMap::new();
    for chunk in ids.chunks(20) {
        let mut lookups = JoinSet::new();
        for id in chunk {
            let request = http.get(format!("{}/orders/{id}", receiver.url())).send();
            let id = id.clone();
            lookups.spawn(async move {
                let response = request.await.expect("GET /orders/{id}");
                let status = response.status().as_u16();
                (id, status, response.json::<Value>().await.unwrap_or(Value::Null))
            });
        }
        while let Some(lookup) = lookups.join_next().await {
            let (id, status, record) = lookup.expect("lookup task");
            assert_eq!(status, 200, "GET /orders/{id} of an accepted order: {record}");
            records.insert(id, record);
        }
    }
    records
}

fn status(record: &Value) -> &str {
    record["status"].as_str().unwrap_or("?")
}

/// Polls the receiver until every order's record is terminal, or `timeout`; returns the records as last seen.
async fn wait_records_terminal(
    http: &reqwest::Client,
    receiver: &Service,
    ids: &[String],
    timeout: Duration,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + timeout;
    let mut records = BTreeMap::new();
    let mut open = ids.to_vec();
    loop {
        records.extend(order_records(http, receiver, &open).await);
        open.retain(|id| !TERMINAL.contains(&status(&records[id])));
        if open.is_empty() || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every record terminal, charged once if completed and never otherwise. A record breaking the rule is shown
/// with what tells who charged it (status, attempts, worker, payment reference), so a double charge leaves
/// its evidence in the failure.
fn assert_charged_once(records: &BTreeMap<String, Value>) {
    let broken: Vec<String> = records
        .iter()
        .filter(|(_, record)| {
            let expected = u64::from(status(record) == "completed");
            !TERMINAL.contains(&status(record)) || record["charges"].as_u64() != Some(expected)
        })
        .map(|(id, record)| {
            format!(
                "{id}: status {}, charges {}, attempts {}, worker {}, payment_reference {}, payment_outcome {}, \
                 last_error {}, updated_at {}",
                record["status"],
                record["charges"],
                record["attempts"],
                record["worker"],
                record["payment_reference"],
                record["payment_outcome"],
                record["last_error"],
                record["updated_at"]
            )
        })
        .collect();
    assert!(
        broken.is_empty(),
        "{} of {} orders are not terminal with one charge per completed order (none otherwise):\n{}",
        broken.len(),
        records.len(),
        broken.join("\n")
    );
}

/// How many records have each status.
fn count_by_status(records: &BTreeMap<String, Value>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for record in records.values() {
        *counts.entry(status(record).to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The ledger agrees with a lone worker's own count: one record per order it settled, with the same outcome.
fn assert_ledger_matches_worker(records: &BTreeMap<String, Value>, stats: &Value) {
    assert_charged_once(records);
    let by_status = count_by_status(records);
    let count = |status: &str| by_status.get(status).copied().unwrap_or(0);
    assert_eq!(
        (count("completed"), count("declined")),
        (stats["completed"].as_u64().unwrap(), stats["declined"].as_u64().unwrap()),
        "ledger {by_status:?} vs worker {stats}"
    );
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn every_accepted_order_is_processed_and_the_queue_ends_empty() {
    const ORDERS: u64 = 200;
    let _serial = MOTO.lock().await;
    let http = reqwest::Client::new();
    let stack = provision_stack("e2e-all", Duration::from_secs(30)).await;
    // One proxy per process, so each one's requests are counted apart.
    let receiver_proxy = CountingProxy::start(&moto_endpoint()).await;
    let worker_proxy = CountingProxy::start(&moto_endpoint()).await;
    let worker =
        start_worker(&http, &worker_args(&stack, 50, "1s", Duration::from_secs(30)), worker_proxy.url())
            .await;
    let receiver = start_receiver(&http, &stack, receiver_proxy.url()).await;
    let (receiver_before, worker_before) = (receiver_proxy.counts(), worker_proxy.counts());

    let ids = post_orders(&http, &receiver, ORDERS, 50).await;
    let accepted = ids.len() as u64;
    assert_eq!(accepted, ORDERS, "moto is slow but not this slow: every order should be accepted");

    let stats = wait_settled(&http, &worker, accepted, Duration::from_secs(120)).await;
    assert_settled_once(&stats, accepted);
    let queue = wait_queue_empty(&observer(&stack).await, Duration::from_secs(45)).await;
    assert_eq!((queue.visible, queue.in_flight, queue.dead_letter), (0, 0, Some(0)), "{queue:?}");

    // The worker consumes while orders arrive, so receives and deletes batch only what is there at that moment.
    let receiver_requests = receiver_proxy.counts().since(&receiver_before);
    let worker_requests = worker_proxy.counts().since(&worker_before);
    report_requests("live (worker running during the burst)", accepted, &receiver_requests, &worker_requests);
    assert_eq!(receiver_requests.operation("dynamodb:PutItem"), accepted, "one PutItem per accepted order");
    assert_batched_at_most_one_call_per_order(&receiver_requests, &worker_requests, accepted);

    // Looked up after the counts were taken: these GETs are not part of an order's cost.
    assert_ledger_matches_worker(&order_records(&http, &receiver, &ids).await, &stats);
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn draining_a_backlog_receives_full_batches_and_writes_the_ledger_3_times_per_order() {
    const ORDERS: u64 = 200;
    let _serial = MOTO.lock().await;
    let http = reqwest::Client::new();
    let stack = provision_stack("e2e-backlog", Duration::from_secs(30)).await;
    let receiver_proxy = CountingProxy::start(&moto_endpoint()).await;
    let receiver = start_receiver(&http, &stack, receiver_proxy.url()).await;
    let before = receiver_proxy.counts();

    // A flash sale: orders arrive faster than any worker pays them, and queue up. The worker then has a slot
    // for every order (consumers = rate x latency, the lab's sizing rule), so it can receive in full batches.
    let ids = post_orders(&http, &receiver, ORDERS, 50).await;
    let accepted = ids.len() as u64;
    assert_eq!(accepted, ORDERS, "every order should be accepted");
    let after_posts = receiver_proxy.counts();
    // The worker's own proxy counts its whole path, from its start after the POSTs to the end of the drain.
    let worker_proxy = CountingProxy::start(&moto_endpoint()).await;
    let worker_started = std::time::Instant::now();
    let worker =
        start_worker(&http, &worker_args(&stack, 200, "1s", Duration::from_secs(30)), worker_proxy.url())
            .await;

    let stats = wait_settled(&http, &worker, accepted, Duration::from_secs(120)).await;
    assert_settled_once(&stats, accepted);
    let queue = wait_queue_empty(&observer(&stack).await, Duration::from_secs(45)).await;
    assert_eq!((queue.visible, queue.in_flight, queue.dead_letter), (0, 0, Some(0)), "{queue:?}");

    let receiver_requests = after_posts.since(&before);
    let worker_requests = worker_proxy.counts();
    // The worker's registry heartbeats (one at its start, then one per interval) are not per order.
    let heartbeats =
        (worker_started.elapsed().as_secs_f64() / REGISTRY_INTERVAL.as_secs_f64()).ceil() as u64 + 1;
    let (_, worker_path) = report_requests(
        "backlog (worker drains a queue of 200)",
        accepted,
        &receiver_requests,
        &worker_requests,
    );
    // The receiver's path: one conditional PutItem per accepted order, nothing read.
    assert_eq!(receiver_requests.operation("dynamodb:PutItem"), accepted, "{receiver_requests:?}");
    assert_eq!(receiver_requests.service("dynamodb"), accepted, "{receiver_requests:?}");
    // The worker's path: claim, record the charge, settle (three conditional UpdateItems), and no reads: a
    // failed condition returns the item, so nothing is read first. Beyond the three, only what a slow moto
    // adds, each counted: the SDK's retry of a write whose answer outlasted its 5 s attempt timeout, and one
    // claim per delivery that found its order claimed or settled already (a retried claim finds its own).
    let stats = worker_stats(&http, &worker).await;
    let writes: u64 = DYNAMODB_WRITES.iter().map(|operation| worker_requests.operation(operation)).sum();
    let retried: u64 = DYNAMODB_WRITES.iter().map(|operation| worker_requests.retries(operation)).sum();
    let redelivered = stats["claimed_elsewhere"].as_u64().unwrap() + stats["duplicates"].as_u64().unwrap();
    eprintln!(
        "ledger writes on the worker's path: {writes} for {accepted} orders ({retried} SDK retries, \
         {redelivered} deliveries of orders claimed or settled already, at most {heartbeats} registry heartbeats)"
    );
    assert!(
        writes - retried <= 3 * accepted + redelivered + heartbeats,
        "at most 3 ledger writes per order: {writes} writes, {retried} retries, {redelivered} redeliveries, \
         {heartbeats} heartbeats; {stats}"
    );
    assert_eq!(worker_path.dynamodb_reads, 0.0, "no ledger reads on the worker's path: {worker_path}");
    // Full receive batches from the backlog: a tenth of a receive per order, plus the idle long polls, and at
    // most one receive for each delivery of an order claimed or settled already.
    let receives =
        worker_requests.operation("sqs:ReceiveMessage").saturating_sub(worker_requests.idle_receives());
    assert!(
        receives * 100 <= accepted * 15 + redelivered * 100,
        "{receives} receives that delivered, for {accepted} orders and {redelivered} redeliveries"
    );
    assert_batched_at_most_one_call_per_order(&receiver_requests, &worker_requests, accepted);

    let records = order_records(&http, &receiver, &ids).await;
    assert_ledger_matches_worker(&records, &stats);
    let lookups = receiver_proxy.counts().since(&after_posts);
    assert_eq!(
        lookups.operation("dynamodb:GetItem"),
        accepted,
        "one GetItem per GET /orders/{{id}}: {lookups:?}"
    );
    // The pricing counts one write unit per write: true for items under 1 KB. A record's JSON is larger than
    // its item (quotes, null fields, timestamps where the item has epoch numbers).
    let largest = records.values().map(|record| record.to_string().len()).max().unwrap_or(0);
    assert!(largest < 1024, "a record's JSON is {largest} bytes: its item may be over 1 KB (2 write units)");
}

/// SNS and SQS (the ledger's requests are asserted apart): publishes and deletes are batched, so never more
/// than one call per order, nor receives that delivered. SDK retries aside, as they depend on moto's speed.
///
/// Before the ledger, full batches held SNS + SQS to 0.345-0.35 requests per order in the backlog test and
/// under 1 in the live one. With it, moto (serving its DynamoDB requests one at a time) spaces the orders out
/// before the receiver's 2 ms publish window and the worker's 10 ms delete window, which then catch one to
/// three orders each: 1.0-1.2 per order measured in the backlog test, about 1.5 in the live one.
fn assert_batched_at_most_one_call_per_order(receiver: &RequestCounts, worker: &RequestCounts, orders: u64) {
    let first_attempts = |counts: &RequestCounts, operations: &[&str]| -> u64 {
        operations.iter().map(|operation| counts.operation(operation) - counts.retries(operation)).sum()
    };
    let publishes = first_attempts(receiver, &["sns:Publish", "sns:PublishBatch"]);
    let deletes = first_attempts(worker, &["sqs:DeleteMessage", "sqs:DeleteMessageBatch"]);
    let receives = first_attempts(worker, &["sqs:ReceiveMessage"]).saturating_sub(worker.idle_receives());
    assert!(publishes <= orders, "{publishes} publish calls for {orders} orders: {receiver:?}");
    assert!(deletes <= orders, "{deletes} delete calls for {orders} orders: {worker:?}");
    assert!(receives <= orders, "{receives} receives that delivered, for {orders} orders: {worker:?}");
}

/// Every accepted order settled (paid or declined) exactly once, none dead-lettered.
fn assert_settled_once(stats: &Value, accepted: u64) {
    assert_eq!(settled(stats), accepted, "every accepted order settled; worker: {stats}");
    assert_eq!(stats["charged"].as_u64(), Some(accepted), "no order charged twice: {stats}");
    assert_eq!(stats["dead_lettered"].as_u64(), Some(0), "{stats}");
}

/// Prints the AWS requests of the receiver's path and of the worker's path (counted by their own proxies), by
/// operation and per order by service, with DynamoDB split into reads and writes, and what a million orders
/// cost at list prices (`e2e::cost`). Returns the per-order figures of each path. Call it once the queue is
/// empty: the idle receives are then the long polls that found nothing.
fn report_requests(
    scenario: &str,
    orders: u64,
    receiver: &RequestCounts,
    worker: &RequestCounts,
) -> (PerOrder, PerOrder) {
    let (receiver_path, worker_path) = (PerOrder::of(receiver, orders), PerOrder::of(worker, orders));
    let both = receiver_path.plus(&worker_path);
    let idle = both.sqs_idle;
    eprintln!(
        "AWS requests, {scenario}, {orders} orders:\n  \
         receiver path: {:?}, SDK retries {:?}\n  \
         worker path:   {:?}, SDK retries {:?}, {} idle receives\n  \
         per order, receiver path: {receiver_path}\n  \
         per order, worker path:   {worker_path}\n  \
         per order, both:          {both}\n  \
         SNS + SQS per order: {:.3}, {:.3} without the idle receives\n  \
         per million orders at list prices (idle receives included): {}",
        receiver.by_operation,
        receiver.retries,
        worker.by_operation,
        worker.retries,
        worker.idle_receives(),
        both.messaging(),
        both.messaging() - idle,
        both.dollars_per_million_orders()
    );
    (receiver_path, worker_path)
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn a_worker_killed_mid_payment_loses_nothing() {
    const ORDERS: u64 = 8;
    let _serial = MOTO.lock().await;
    let visibility = Duration::from_secs(3);
    let http = reqwest::Client::new();
    let stack = provision_stack("e2e-kill", visibility).await;
    let endpoint = moto_endpoint();
    let receiver = start_receiver(&http, &stack, &endpoint).await;
    let ids = post_orders(&http, &receiver, ORDERS, ORDERS as usize).await;
    assert_eq!(ids.len() as u64, ORDERS);

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
    let queue = wait_queue_empty(&queue, Duration::from_secs(20)).await;
    assert_eq!((queue.visible, queue.in_flight, queue.dead_letter), (0, 0, Some(0)), "{queue:?}");
    assert_ledger_matches_worker(&order_records(&http, &receiver, &ids).await, &stats);
}

/// Polls a worker until it has orders in flight, then gives them a quarter of their 1 s payment so the kill
/// lands between claim and settle; returns the worker's stats at that moment.
async fn wait_mid_payment(http: &reqwest::Client, worker: &Service, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = worker_stats(http, worker).await;
        if stats["in_flight"].as_u64().unwrap_or(0) > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let stats = worker_stats(http, worker).await;
            if stats["in_flight"].as_u64().unwrap_or(0) > 0 {
                return stats;
            }
        }
        assert!(Instant::now() < deadline, "worker never had an order in flight: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test.sh"]
async fn two_workers_one_killed_twice_charge_every_order_once() {
    const ORDERS: u64 = 100;
    let _serial = MOTO.lock().await;
    // Short, so the killed worker's messages come back within seconds; the claims' lease is the same.
    let visibility = Duration::from_secs(3);
    let http = reqwest::Client::new();
    let stack = provision_stack("e2e-two", visibility).await;
    let endpoint = moto_endpoint();
    let receiver = start_receiver(&http, &stack, &endpoint).await;
    // The same settings for every process; each is named, as each new process would be, so the records tell
    // which one settled them.
    let args = |name: &str| {
        let mut args = worker_args(&stack, 20, "1s", visibility);
        args.extend(["--worker-id".to_owned(), name.to_owned()]);
        args
    };
    let worker_b = start_worker(&http, &args("worker-b"), &endpoint).await;
    let mut worker_a = start_worker(&http, &args("worker-a1"), &endpoint).await;

    let ids = post_orders(&http, &receiver, ORDERS, 50).await;
    assert_eq!(ids.len() as u64, ORDERS, "every order should be accepted");

    for (killed, next) in [("worker-a1", "worker-a2"), ("worker-a2", "worker-a3")] {
        let at_kill = wait_mid_payment(&http, &worker_a, Duration::from_secs(60)).await;
        worker_a.kill_hard();
        eprintln!(
            "killed {killed} (SIGKILL) with {} orders in flight, {} settled by it",
            at_kill["in_flight"],
            settled(&at_kill)
        );
        worker_a = start_worker(&http, &args(next), &endpoint).await;
    }

    let records = wait_records_terminal(&http, &receiver, &ids, Duration::from_secs(120)).await;
    assert_charged_once(&records);
    let queue = wait_queue_empty(&observer(&stack).await, Duration::from_secs(20)).await;
    assert_eq!((queue.visible, queue.in_flight, queue.dead_letter), (0, 0, Some(0)), "{queue:?}");

    let attempts: u64 = records.values().map(|record| record["attempts"].as_u64().unwrap_or(0)).sum();
    let reclaimed = records.values().filter(|record| record["attempts"].as_u64() > Some(1)).count();
    let charges: u64 = records.values().map(|record| record["charges"].as_u64().unwrap_or(0)).sum();
    let mut by_worker = BTreeMap::new();
    for record in records.values() {
        *by_worker.entry(record["worker"].as_str().unwrap_or("?").to_owned()).or_insert(0) += 1;
    }
    let (b, a) = (worker_stats(&http, &worker_b).await, worker_stats(&http, &worker_a).await);
    eprintln!(
        "two workers, one killed twice, {ORDERS} orders: {:?}; {charges} charges; {attempts} claims in all \
         ({reclaimed} orders claimed more than once); settled by {by_worker:?}; surviving workers: worker-b \
         replayed {} payments and found {} orders claimed elsewhere, worker-a3 replayed {} and found {}",
        count_by_status(&records),
        b["replayed_payments"],
        b["claimed_elsewhere"],
        a["replayed_payments"],
        a["claimed_elsewhere"]
    );
    assert!(
        attempts > ORDERS,
        "the kills left claimed orders for another process to claim again: {attempts}"
    );
}
