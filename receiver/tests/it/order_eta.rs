//! `GET /orders/{id}`'s `eta`: null without a live worker, a time ahead while a live worker drains the queue,
//! null once the order is settled; and the worker registry is read about once a second, not per lookup.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::{HookedLedger, TestServer, client, order};
use bus::embedded::{EmbeddedStack, StackConfig};
use chrono::{DateTime, Utc};
use ledger::embedded::EmbeddedLedger;
use ledger::registry::{Frontier, WorkerEntry};
use ledger::{Claim, ClaimRequest, Ledger, NewOrder, OrderRecord, Settlement};
use receiver::Config;

/// A live worker settling 5 orders/s of 0.2 s each, whose frontier stands 10 s behind now and keeps pace.
fn draining_worker() -> WorkerEntry {
    let now = Utc::now();
    WorkerEntry {
        worker_id: "w1".into(),
        consumers: 1,
        gate_mode: "per-consumer".into(),
        breaker: None,
        rate: 5.0,
        settled: 300,
        service_time: Some(0.2),
        frontier: Some(Frontier {
            accepted_at: now - chrono::Duration::seconds(10),
            settled_at: now,
            speed: Some(1.0),
        }),
        started_at: now,
        last_seen: now,
        timeout: Duration::from_secs(60),
    }
}

async fn accept(server: &TestServer) -> String {
    let accepted = server.post_order(&client(), "/orders/async", &order(7)).await;
    assert_eq!(accepted.status, 202, "{}", accepted.json);
    accepted.json["order_id"].as_str().unwrap().to_owned()
}

async fn lookup(server: &TestServer, order_id: &str) -> serde_json::Value {
    let found = server.get(&client(), &format!("/orders/{order_id}")).await;
    assert_eq!(found.status, 200, "{}", found.json);
    found.json
}

#[tokio::test]
async fn eta_is_null_without_a_live_worker() {
    let stack = EmbeddedStack::new(StackConfig::default());
    let server = TestServer::start(Config::default(), Arc::new(stack.topic.clone())).await;
    let order_id = accept(&server).await;
    let record = lookup(&server, &order_id).await;
    assert_eq!(record["status"], "pending");
    assert!(record.get("eta").is_some_and(serde_json::Value::is_null), "{record}");
}

#[tokio::test]
async fn eta_is_ahead_while_a_worker_drains_and_null_once_settled() {
    let stack = EmbeddedStack::new(StackConfig::default());
    let server = TestServer::start(Config::default(), Arc::new(stack.topic.clone())).await;
    let registry = server.ledger.registry().unwrap();
    registry.heartbeat(&draining_worker()).await.unwrap();

    let order_id = accept(&server).await;
    let record = lookup(&server, &order_id).await;
    assert_eq!(record["status"], "pending");
    let eta: DateTime<Utc> = record["eta"].as_str().expect("an RFC 3339 eta").parse().unwrap();
    let accepted: DateTime<Utc> = record["accepted_at"].as_str().unwrap().parse().unwrap();
    // 10 s of backlog ahead at speed 1: settled about 10 s after its acceptance.
    let after = (eta - accepted).as_seconds_f64();
    assert!(eta > Utc::now() && (9.0..11.0).contains(&after), "eta {eta}, accepted {accepted}");
    let parsed: OrderRecord = serde_json::from_value(record).expect("the record's fields are all there");
    assert_eq!(parsed.order_id.to_string(), order_id);

    let order = NewOrder { order_id: parsed.order_id, ..new_order_of(&parsed) };
    let request = ClaimRequest { order, worker: "w1".into(), lease: Duration::from_secs(30) };
    let Claim::Won { token, .. } = server.ledger.claim(&request).await.unwrap() else { panic!("claim") };
    let processing = lookup(&server, &order_id).await;
    assert_eq!(processing["status"], "processing");
    let eta: DateTime<Utc> = processing["eta"].as_str().expect("an eta while processing").parse().unwrap();
    assert!(eta > Utc::now() - chrono::Duration::seconds(1), "about one service time away: {eta}");

    server.ledger.settle(parsed.order_id, token, "w1", &Settlement::Completed).await.unwrap();
    let settled = lookup(&server, &order_id).await;
    assert_eq!(settled["status"], "completed");
    assert!(settled.get("eta").is_some_and(serde_json::Value::is_null), "{settled}");
}

fn new_order_of(record: &OrderRecord) -> NewOrder {
    NewOrder {
        order_id: record.order_id,
        customer_id: record.customer_id,
        total: record.total,
        item_count: record.item_count,
        accepted_at: record.accepted_at,
    }
}

#[tokio::test]
async fn the_registry_is_read_about_once_a_second_however_many_lookups() {
    let stack = EmbeddedStack::new(StackConfig::default());
    let records = Arc::new(EmbeddedLedger::default());
    let counting = Arc::new(HookedLedger::new(records.clone()));
    let server = TestServer::start_with_ledger(
        Config::default(),
        Arc::new(stack.topic.clone()),
        records,
        counting.clone(),
    )
    .await;
    server.ledger.registry().unwrap().heartbeat(&draining_worker()).await.unwrap();
    let order_id = accept(&server).await;

    let started = std::time::Instant::now();
    let url = server.url(&format!("/orders/{order_id}"));
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (client, url) = (client(), url.clone());
        lookups.spawn(async move {
            let answer: serde_json::Value = client.get(url).send().await.unwrap().json().await.unwrap();
            answer["eta"].is_string()
        });
    }
    let answers = lookups.join_all().await;
    assert!(answers.iter().all(|has_eta| *has_eta), "every lookup has an eta");
    let reads = counting.fleet_reads.load(Ordering::SeqCst);
    let allowed = 1 + started.elapsed().as_secs() as u32;
    assert!((1..=allowed).contains(&reads), "{reads} registry reads for 50 lookups (at most {allowed})");
}
