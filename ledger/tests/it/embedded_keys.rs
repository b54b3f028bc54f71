//! The embedded ledger's idempotency keys, rule by rule, on the paused clock.

use std::time::Duration;

use ledger::embedded::EmbeddedLedger;
use ledger::idempotency::{IdempotencyKeys, KeyBegin, KeyRequest, StoredResponse};
use uuid::Uuid;

const LOCK: Duration = Duration::from_secs(10);
const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

fn request(key: &str, fingerprint: &str) -> KeyRequest {
    KeyRequest {
        key: key.into(),
        fingerprint: fingerprint.into(),
        order_id: Uuid::now_v7(),
        lock: LOCK,
        retention: RETENTION,
    }
}

fn accepted() -> StoredResponse {
    StoredResponse { status: 202, body: r#"{"order_id":"x"}"#.into() }
}

#[tokio::test(start_paused = true)]
async fn a_new_key_proceeds_then_blocks_then_replays() {
    let keys = EmbeddedLedger::default();
    let first = request("k", "f");
    assert_eq!(
        keys.begin(&first).await.unwrap(),
        KeyBegin::Proceed { order_id: first.order_id, resumed: false }
    );
    assert_eq!(keys.begin(&request("k", "f")).await.unwrap(), KeyBegin::InFlight);
    assert_eq!(keys.begin(&request("k", "other")).await.unwrap(), KeyBegin::Mismatch);
    keys.complete("k", &accepted(), RETENTION).await.unwrap();
    assert_eq!(keys.begin(&request("k", "f")).await.unwrap(), KeyBegin::Replay(accepted()));
    assert_eq!(keys.begin(&request("k", "other")).await.unwrap(), KeyBegin::Mismatch);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_outcome_resumes_with_the_same_order_id() {
    let keys = EmbeddedLedger::default();
    let first = request("k", "f");
    keys.begin(&first).await.unwrap();
    keys.unlock("k").await.unwrap();
    let retry = request("k", "f");
    assert_eq!(
        keys.begin(&retry).await.unwrap(),
        KeyBegin::Proceed { order_id: first.order_id, resumed: true }
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_holders_lock_lapses_and_the_retry_resumes() {
    let keys = EmbeddedLedger::default();
    let first = request("k", "f");
    keys.begin(&first).await.unwrap();
    tokio::time::advance(LOCK - Duration::from_millis(1)).await;
    assert_eq!(keys.begin(&request("k", "f")).await.unwrap(), KeyBegin::InFlight);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        keys.begin(&request("k", "f")).await.unwrap(),
        KeyBegin::Proceed { order_id: first.order_id, resumed: true }
    );
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_key_starts_afresh() {
    let keys = EmbeddedLedger::default();
    keys.begin(&request("k", "f")).await.unwrap();
    keys.forget("k").await.unwrap();
    let fresh = request("k", "other");
    assert_eq!(
        keys.begin(&fresh).await.unwrap(),
        KeyBegin::Proceed { order_id: fresh.order_id, resumed: false }
    );
}

#[tokio::test(start_paused = true)]
async fn a_completed_key_expires_after_its_retention() {
    let keys = EmbeddedLedger::default();
    keys.begin(&request("k", "f")).await.unwrap();
    keys.complete("k", &accepted(), RETENTION).await.unwrap();
    tokio::time::advance(RETENTION - Duration::from_secs(1)).await;
    assert_eq!(keys.begin(&request("k", "f")).await.unwrap(), KeyBegin::Replay(accepted()));
    tokio::time::advance(Duration::from_secs(1)).await;
    let later = request("k", "f");
    assert_eq!(
        keys.begin(&later).await.unwrap(),
        KeyBegin::Proceed { order_id: later.order_id, resumed: false }
    );
}
