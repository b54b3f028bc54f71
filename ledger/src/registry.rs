//! The worker registry: every worker process keeps one small entry in the ledger's store, rewritten by its
//! heartbeat, so the fleet (who is consuming, how fast, how far through the backlog) can be read in one call.
//!
//! Cost is bounded by the number of workers, never by orders: one unconditional write per worker per heartbeat
//! interval, and one read of every live entry per [`WorkerRegistry::fleet`]. An entry counts as gone once
//! `last_seen + timeout` has passed, whether or not the store has deleted it yet (DynamoDB's TTL lags by days),
//! so a crashed worker drops out of the fleet by itself.
//!
//! The entries feed the order ETA ([`crate::eta`]) and operators' dashboards.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::LedgerError;

/// Heartbeats missed before an entry counts as gone (3): one lost write does not drop a live worker.
pub const MISSED_HEARTBEATS: u32 = 3;

/// One worker's entry, as its last heartbeat wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerEntry {
    /// The worker's id (its name in order records): the entry's key.
    pub worker_id: String,
    /// Orders the worker processes at once.
    pub consumers: u32,
    /// How its consumers reach the payment gateway (`per-consumer`, `shared`).
    pub gate_mode: String,
    /// Its circuit breaker's state (`closed`, `open`, `half-open`), if it has one.
    pub breaker: Option<String>,
    /// Orders settled per second over the last minute.
    pub rate: f64,
    /// Orders settled since the worker started.
    pub settled: u64,
    /// Mean time from receiving an order to settling it over the last minute, in seconds; `None` until an
    /// order settled in that minute.
    pub service_time: Option<f64>,
    /// How far through the backlog the worker is (see [`Frontier`]); `None` until it settled an order.
    pub frontier: Option<Frontier>,
    /// When the worker started.
    pub started_at: DateTime<Utc>,
    /// When the entry was written.
    pub last_seen: DateTime<Utc>,
    /// How long after `last_seen` the worker counts as gone: [`MISSED_HEARTBEATS`] × its heartbeat interval.
    #[serde(with = "millis")]
    pub timeout: Duration,
}

/// A worker's frontier: the newest `accepted_at` among the orders it settled, and how fast that moves. Orders
/// are taken from the queue roughly oldest first, so orders accepted before the frontier are (nearly all)
/// settled, and the frontier's speed says how fast the backlog behind it is worked off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Frontier {
    /// The newest `accepted_at` among the orders the worker settled.
    pub accepted_at: DateTime<Utc>,
    /// When the order that set `accepted_at` was settled: the time the frontier stood there.
    pub settled_at: DateTime<Utc>,
    /// Seconds of `accepted_at` the frontier advanced per second of `settled_at` over the last minute (1 when
    /// the fleet keeps up, below 1 while a backlog grows, above 1 while it drains); the last such measure if the
    /// frontier stood still meanwhile, `None` before it moved twice.
    pub speed: Option<f64>,
}

impl WorkerEntry {
    /// When the entry stops counting: `last_seen + timeout`.
    pub fn expires_at(&self) -> DateTime<Utc> {
        crate::expiry(self.last_seen, self.timeout)
    }

    /// Whether the worker counts as live at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires_at() > now
    }

    /// The same entry, gone at once: what a worker writes when it shuts down gracefully.
    pub fn departed(&self, now: DateTime<Utc>) -> Self {
        Self { last_seen: now, timeout: Duration::ZERO, ..self.clone() }
    }
}

/// The registry's port, served by both ledger adapters beside the order records.
#[async_trait]
pub trait WorkerRegistry: Send + Sync + 'static {
    /// Writes the worker's entry whole (one unconditional write), replacing its previous one. The entry
    /// expires at [`WorkerEntry::expires_at`].
    async fn heartbeat(&self, entry: &WorkerEntry) -> Result<(), LedgerError>;

    /// The entries live at `now` (see [`WorkerEntry::is_live`]), in no particular order. One read of the
    /// registry, however many orders the store holds.
    async fn fleet(&self, now: DateTime<Utc>) -> Result<Vec<WorkerEntry>, LedgerError>;
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
