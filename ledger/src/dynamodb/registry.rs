//! The worker registry in the ledger's table: one item, `order_id` = [`REGISTRY_KEY`], holding one map
//! attribute per worker.
//!
//! Why one item. The table's only key is the hash key `order_id`: entries cannot share a partition key and be
//! told apart by a sort key, a Scan would read every order, and a secondary index would change the table and
//! grant `dynamodb:Query`, which the deployment forbids (every access is by key). One item needs neither:
//! - a heartbeat is one unconditional UpdateItem, `SET #<entry> = :entry, #expires_at = :expires`, which
//!   creates the item if it is missing and leaves the other workers' entries alone;
//! - the fleet is one GetItem of that item.
//!
//! The item's key `worker-registry` is no UUID, so it can never meet an order (nor an idempotency key's
//! `key#…`). Each entry is the attribute `worker#<worker id>`, a map: `worker_id` S, `consumers` N,
//! `gate_mode` S, `breaker` S, `rate` N, `settled` N, `service_time` N (seconds), `frontier_accepted_at` N and
//! `frontier_settled_at` N (epoch ms), `frontier_speed` N, `started_at` S and `last_seen` S (RFC 3339),
//! `timeout_ms` N; absent optional fields are absent. The item's `expires_at` (the table's TTL) is pushed
//! [`REGISTRY_RETENTION`] ahead by every heartbeat, so DynamoDB deletes the item once no worker has written
//! for that long. Entries of workers that stopped without leaving (crashes) stay in the item until a
//! heartbeat finds them past their timeout and removes them: the heartbeat returns the item (at no extra
//! cost), and one more UpdateItem, only then, removes the dead entries. `fleet` ignores dead entries itself.
//!
//! Costs: a write costs one unit per KB of the whole item (about 0.3 KB per worker), so a heartbeat costs
//! `⌈0.3 × workers⌉` write units: 1 for up to 3 workers, 6 for 20; the GetItem half a unit per 4 KB. Bounded by
//! the fleet, never by orders. (An item holds 400 KB: over a thousand workers.)

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chrono::{DateTime, Utc};

use super::{
    DynamoLedger, EXPIRES_AT, Item, ORDER_ID, Reader, epoch_ms, epoch_s, from_sdk_error, n, s, timestamp,
};
use crate::registry::{Frontier, WorkerEntry, WorkerRegistry};
use crate::{LedgerError, expiry};

/// The `order_id` of the registry's item.
pub const REGISTRY_KEY: &str = "worker-registry";

/// How long the registry's item outlives its last heartbeat before DynamoDB's TTL deletes it (1 day).
const REGISTRY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The prefix of an entry's attribute name.
const ENTRY_PREFIX: &str = "worker#";

const WORKER_ID: &str = "worker_id";
const CONSUMERS: &str = "consumers";
const GATE_MODE: &str = "gate_mode";
const BREAKER: &str = "breaker";
const RATE: &str = "rate";
const SETTLED: &str = "settled";
const SERVICE_TIME: &str = "service_time";
const FRONTIER_ACCEPTED_AT: &str = "frontier_accepted_at";
const FRONTIER_SETTLED_AT: &str = "frontier_settled_at";
const FRONTIER_SPEED: &str = "frontier_speed";
const STARTED_AT: &str = "started_at";
const LAST_SEEN: &str = "last_seen";
const TIMEOUT_MS: &str = "timeout_ms";

fn registry_key() -> AttributeValue {
    AttributeValue::S(REGISTRY_KEY.to_owned())
}

fn entry_name(worker_id: &str) -> String {
    format!("{ENTRY_PREFIX}{worker_id}")
}

/// A measure as a DynamoDB number: finite (DynamoDB has no NaN or infinity), non-negative.
fn measure(value: f64) -> AttributeValue {
    n(if value.is_finite() { value.max(0.0) } else { 0.0 })
}

/// An entry as the map it is stored as.
fn to_map(entry: &WorkerEntry) -> Item {
    let mut item = Item::from([
        (WORKER_ID.into(), s(&entry.worker_id)),
        (CONSUMERS.into(), n(entry.consumers)),
        (GATE_MODE.into(), s(&entry.gate_mode)),
        (RATE.into(), measure(entry.rate)),
        (SETTLED.into(), n(entry.settled)),
        (STARTED_AT.into(), timestamp(entry.started_at)),
        (LAST_SEEN.into(), timestamp(entry.last_seen)),
        (TIMEOUT_MS.into(), n(u64::try_from(entry.timeout.as_millis()).unwrap_or(u64::MAX))),
    ]);
    let frontier = entry.frontier.as_ref();
    let optional = [
        (BREAKER, entry.breaker.as_deref().map(s)),
        (SERVICE_TIME, entry.service_time.map(measure)),
        (FRONTIER_ACCEPTED_AT, frontier.map(|f| epoch_ms(f.accepted_at))),
        (FRONTIER_SETTLED_AT, frontier.map(|f| epoch_ms(f.settled_at))),
        (FRONTIER_SPEED, frontier.and_then(|f| f.speed).map(measure)),
    ];
    item.extend(optional.into_iter().filter_map(|(name, value)| Some((name.to_owned(), value?))));
    item
}

/// Reads an entry's map; anything missing or malformed is [`LedgerError::Corrupt`].
fn from_map(item: &Item) -> Result<WorkerEntry, LedgerError> {
    let id = item.get(WORKER_ID).and_then(|v| v.as_s().ok()).map_or("?", String::as_str);
    let item = Reader { item, id };
    let millis = |name: &str, ms: i64| item.epoch(name, ms, DateTime::from_timestamp_millis);
    let frontier = match (
        item.optional_number::<i64>(FRONTIER_ACCEPTED_AT)?,
        item.optional_number::<i64>(FRONTIER_SETTLED_AT)?,
    ) {
        (Some(accepted), Some(settled)) => Some(Frontier {
            accepted_at: millis(FRONTIER_ACCEPTED_AT, accepted)?,
            settled_at: millis(FRONTIER_SETTLED_AT, settled)?,
            speed: item.optional_number(FRONTIER_SPEED)?,
        }),
        _ => None,
    };
    Ok(WorkerEntry {
        worker_id: item.text(WORKER_ID)?.to_owned(),
        consumers: item.number(CONSUMERS)?,
        gate_mode: item.text(GATE_MODE)?.to_owned(),
        breaker: item.optional_text(BREAKER)?.map(str::to_owned),
        rate: item.number(RATE)?,
        settled: item.number(SETTLED)?,
        service_time: item.optional_number(SERVICE_TIME)?,
        frontier,
        started_at: item.time(STARTED_AT)?,
        last_seen: item.time(LAST_SEEN)?,
        timeout: std::time::Duration::from_millis(item.number(TIMEOUT_MS)?),
    })
}

/// The entries of the registry's item, each with its attribute name; an entry that cannot be read is skipped
/// (and logged), so one bad entry does not hide the fleet.
fn entries(item: &Item) -> Vec<(&str, WorkerEntry)> {
    item.iter()
        .filter(|(name, _)| name.starts_with(ENTRY_PREFIX))
        .filter_map(|(name, value)| {
            let read = match value {
                AttributeValue::M(map) => from_map(map),
                other => Err(LedgerError::Corrupt(format!("registry entry {name} is not a map: {other:?}"))),
            };
            read.inspect_err(|error| tracing::warn!(%error, "skipping an unreadable worker registry entry"))
                .ok()
                .map(|entry| (name.as_str(), entry))
        })
        .collect()
}

#[async_trait]
impl WorkerRegistry for DynamoLedger {
    async fn heartbeat(&self, entry: &WorkerEntry) -> Result<(), LedgerError> {
        let keep_until = expiry(entry.last_seen, REGISTRY_RETENTION).max(entry.expires_at());
        let written = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(ORDER_ID, registry_key())
            .update_expression("SET #entry = :entry, #expires_at = :expires_s")
            .expression_attribute_names("#entry", entry_name(&entry.worker_id))
            .expression_attribute_names("#expires_at", EXPIRES_AT)
            .expression_attribute_values(":entry", AttributeValue::M(to_map(entry)))
            .expression_attribute_values(":expires_s", epoch_s(keep_until))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|error| from_sdk_error(&error, self.call("dynamodb:UpdateItem")))?;
        let Some(item) = written.attributes else { return Ok(()) };
        let dead: Vec<String> = entries(&item)
            .into_iter()
            .filter(|(_, other)| !other.is_live(entry.last_seen))
            .map(|(name, _)| name.to_owned())
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        // Dead entries never come back (a worker id is one process's), so no condition is needed.
        let placeholders: Vec<String> = (0..dead.len()).map(|i| format!("#dead{i}")).collect();
        let names = placeholders.iter().cloned().zip(dead.iter().cloned()).collect();
        self.client
            .update_item()
            .table_name(&self.table)
            .key(ORDER_ID, registry_key())
            .update_expression(format!("REMOVE {}", placeholders.join(", ")))
            .set_expression_attribute_names(Some(names))
            .send()
            .await
            .map_err(|error| from_sdk_error(&error, self.call("dynamodb:UpdateItem")))?;
        tracing::debug!(removed = ?dead, "removed dead entries from the worker registry");
        Ok(())
    }

    async fn fleet(&self, now: DateTime<Utc>) -> Result<Vec<WorkerEntry>, LedgerError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(ORDER_ID, registry_key())
            .send()
            .await
            .map_err(|error| from_sdk_error(&error, self.call("dynamodb:GetItem")))?;
        let Some(item) = output.item else { return Ok(Vec::new()) };
        Ok(entries(&item).into_iter().map(|(_, entry)| entry).filter(|entry| entry.is_live(now)).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry() -> WorkerEntry {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        WorkerEntry {
            worker_id: "worker-0000002a".into(),
            consumers: 10,
            gate_mode: "per-consumer".into(),
            breaker: Some("half-open".into()),
            rate: 3.25,
            settled: 1234,
            service_time: Some(0.5),
            frontier: Some(Frontier {
                accepted_at: at("2026-12-01T10:00:00.123Z"),
                settled_at: at("2026-12-01T10:00:04.5Z"),
                speed: Some(0.75),
            }),
            started_at: at("2026-12-01T09:00:00Z"),
            last_seen: at("2026-12-01T10:00:05.250Z"),
            timeout: Duration::from_secs(15),
        }
    }

    #[test]
    fn entries_round_trip_as_maps() {
        let entry = entry();
        let map = to_map(&entry);
        assert_eq!(map[LAST_SEEN], s("2026-12-01T10:00:05.250Z"));
        assert_eq!(map[FRONTIER_ACCEPTED_AT], n(1_796_119_200_123_i64));
        assert_eq!(from_map(&map), Ok(entry.clone()));

        let bare = WorkerEntry { breaker: None, service_time: None, frontier: None, ..entry };
        let map = to_map(&bare);
        assert_eq!(map.len(), 8, "absent optional fields are absent attributes: {map:?}");
        assert_eq!(from_map(&map), Ok(bare));
    }

    #[test]
    fn the_registry_item_yields_its_readable_entries() {
        let item = Item::from([
            (ORDER_ID.into(), registry_key()),
            (EXPIRES_AT.into(), n(1)),
            (entry_name("worker-0000002a"), AttributeValue::M(to_map(&entry()))),
            (entry_name("broken"), s("not a map")),
        ]);
        let found = entries(&item);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0], ("worker#worker-0000002a", entry()));
    }

    #[test]
    fn measures_that_are_not_numbers_are_written_as_zero() {
        let entry = WorkerEntry { rate: f64::NAN, ..entry() };
        assert_eq!(to_map(&entry)[RATE], n(0.0));
    }
}
