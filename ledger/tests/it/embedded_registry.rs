//! The worker registry on the embedded adapter: heartbeats replace an entry, and an entry drops out of the
//! fleet once its timeout has passed since its last heartbeat.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger::Ledger;
use ledger::embedded::EmbeddedLedger;
use ledger::registry::{Frontier, WorkerEntry};

/// An entry last seen at `last_seen`, counting as gone 15 s later.
pub(crate) fn entry(worker_id: &str, last_seen: DateTime<Utc>, settled: u64) -> WorkerEntry {
    WorkerEntry {
        worker_id: worker_id.into(),
        consumers: 4,
        gate_mode: "per-consumer".into(),
        breaker: None,
        rate: 2.5,
        settled,
        service_time: Some(0.4),
        frontier: Some(Frontier { accepted_at: last_seen, settled_at: last_seen, speed: Some(1.0) }),
        started_at: last_seen,
        last_seen,
        timeout: Duration::from_secs(15),
    }
}

#[tokio::test(start_paused = true)]
async fn an_entry_is_replaced_by_each_heartbeat_and_drops_out_after_its_timeout() {
    let ledger = EmbeddedLedger::default();
    let registry = ledger.registry().expect("the embedded ledger serves the registry");
    assert_eq!(registry.fleet(ledger.now()).await.unwrap(), vec![]);

    registry.heartbeat(&entry("w1", ledger.now(), 1)).await.unwrap();
    registry.heartbeat(&entry("w2", ledger.now(), 7)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let beat = entry("w1", ledger.now(), 40);
    registry.heartbeat(&beat).await.unwrap();
    let mut fleet = registry.fleet(ledger.now()).await.unwrap();
    fleet.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    assert_eq!(fleet.len(), 2, "{fleet:?}");
    assert_eq!(fleet[0], beat, "the heartbeat replaced w1's entry");

    // w2 was last seen 15 s ago: gone. w1 5 s ago: live.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fleet = registry.fleet(ledger.now()).await.unwrap();
    assert_eq!(fleet.iter().map(|e| e.worker_id.as_str()).collect::<Vec<_>>(), ["w1"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(registry.fleet(ledger.now()).await.unwrap(), vec![], "w1's timeout has passed too");
}

#[tokio::test(start_paused = true)]
async fn a_departed_entry_is_gone_at_once() {
    let ledger = EmbeddedLedger::default();
    let registry = ledger.registry().unwrap();
    let live = entry("w1", ledger.now(), 3);
    registry.heartbeat(&live).await.unwrap();
    assert_eq!(registry.fleet(ledger.now()).await.unwrap().len(), 1);
    registry.heartbeat(&live.departed(ledger.now())).await.unwrap();
    assert_eq!(registry.fleet(ledger.now()).await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_failing_store_fails_heartbeats_and_fleet_reads() {
    let ledger = EmbeddedLedger::default();
    ledger.fail_with(Some(ledger::LedgerError::Unavailable("down".into())));
    let registry = ledger.registry().unwrap();
    assert!(registry.heartbeat(&entry("w1", ledger.now(), 0)).await.is_err());
    assert!(registry.fleet(ledger.now()).await.is_err());
}
