//! The ledger in process memory, with the same conditional rules as the DynamoDB adapter.
//!
//! Records sit in a few mutex-guarded shards keyed by order id; each port call takes one shard's lock for its
//! whole check-and-write, which is what a conditional write is. Time is tokio time anchored to the wall clock
//! at creation, so leases and expiry follow `tokio::time::pause()` in tests. Expired records read as absent
//! (as a careful reader of DynamoDB treats an item its TTL has not yet removed) and are dropped on the next
//! write to their shard's sweep.
//!
//! The worker registry is one small map beside the shards; an entry past its expiry is ignored by `fleet` and
//! dropped by the next heartbeat.
//!
//! [`EmbeddedLedger::fail_with`] makes every call fail, for tests of what callers do when the ledger is down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orders::{OrderStatus, PaymentOutcome};
use uuid::Uuid;

use crate::idempotency::{IdempotencyKeys, KeyBegin, KeyRequest, StoredResponse};
use crate::registry::{WorkerEntry, WorkerRegistry};
use crate::{
    ChargeRecord, Claim, ClaimRequest, DEFAULT_RETENTION, Ledger, LedgerError, NewOrder, OrderRecord,
    PaymentRecord, Settle, Settlement, expiry,
};

/// Shards of the record map: enough that the receiver's writes and the workers' claims rarely meet on one lock.
const SHARDS: usize = 16;

/// The in-process ledger. Share it with `Arc`.
#[derive(Debug)]
pub struct EmbeddedLedger {
    shards: Box<[Mutex<Shard>]>,
    retention: Duration,
    clock: Clock,
    /// Whether [`EmbeddedLedger::fail_with`] set an error: one atomic load per call when it did not.
    failing: AtomicBool,
    failure: Mutex<Option<LedgerError>>,
    keys: Mutex<Keys>,
    /// The worker registry by worker id: a handful of entries, swept of expired ones on each heartbeat.
    workers: Mutex<HashMap<String, WorkerEntry>>,
}

/// Idempotency key records, swept of expired ones like a shard.
#[derive(Debug, Default)]
struct Keys {
    records: HashMap<String, KeyRecord>,
    sweep_at: usize,
}

/// One idempotency key's record.
#[derive(Debug, Clone)]
struct KeyRecord {
    fingerprint: String,
    order_id: Uuid,
    state: KeyState,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
enum KeyState {
    Locked { until: DateTime<Utc> },
    Unlocked,
    Done(StoredResponse),
}

/// One lock's worth of records.
#[derive(Debug, Default)]
struct Shard {
    records: HashMap<Uuid, OrderRecord>,
    /// The size at which the next sweep of expired records runs.
    sweep_at: usize,
}

/// A shard sweeps expired records once it holds this many, and then at twice what the last sweep left.
const FIRST_SWEEP: usize = 1024;

/// Wall-clock time that advances with tokio's clock.
#[derive(Debug)]
struct Clock {
    wall: DateTime<Utc>,
    origin: tokio::time::Instant,
}

impl Clock {
    fn now(&self) -> DateTime<Utc> {
        crate::expiry(self.wall, self.origin.elapsed())
    }
}

impl Default for EmbeddedLedger {
    fn default() -> Self {
        Self::new(DEFAULT_RETENTION)
    }
}

impl EmbeddedLedger {
    /// An empty ledger keeping each record for `retention` after its last write. Call within a tokio runtime
    /// only if its clock is to be paused.
    pub fn new(retention: Duration) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard { sweep_at: FIRST_SWEEP, ..Shard::default() }))
                .collect(),
            retention,
            clock: Clock { wall: Utc::now(), origin: tokio::time::Instant::now() },
            failing: AtomicBool::new(false),
            failure: Mutex::new(None),
            keys: Mutex::new(Keys { sweep_at: FIRST_SWEEP, ..Keys::default() }),
            workers: Mutex::new(HashMap::new()),
        }
    }

    /// The ledger's current time: the wall clock at creation plus tokio time elapsed since.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Makes every call fail with `error` until called with `None`: an outage or throttling of the store.
    pub fn fail_with(&self, error: Option<LedgerError>) {
        let mut failure = lock(&self.failure);
        self.failing.store(error.is_some(), Ordering::Release);
        *failure = error;
    }

    /// Every live record, for tests and experiments (a scan: never on a request path).
    pub fn records(&self) -> Vec<OrderRecord> {
        let now = self.now();
        self.shards
            .iter()
            .flat_map(|shard| {
                lock(shard).records.values().filter(|r| r.expires_at > now).cloned().collect::<Vec<_>>()
            })
            .collect()
    }

    /// Live records, without copying them.
    pub fn len(&self) -> usize {
        let now = self.now();
        self.shards
            .iter()
            .map(|shard| lock(shard).records.values().filter(|r| r.expires_at > now).count())
            .sum()
    }

    /// Whether no live record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_failure(&self) -> Result<(), LedgerError> {
        if !self.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*lock(&self.failure) {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// Runs `write` on the order's live record (or `None`) under its shard's lock.
    fn with_record<T>(
        &self,
        order_id: Uuid,
        write: impl FnOnce(&mut Option<OrderRecord>, DateTime<Utc>) -> T,
    ) -> Result<T, LedgerError> {
        self.check_failure()?;
        let now = self.now();
        let mut shard = lock(&self.shards[shard_of(order_id)]);
        let mut record = shard.records.remove(&order_id).filter(|record| record.expires_at > now);
        let answer = write(&mut record, now);
        if let Some(record) = record {
            shard.records.insert(order_id, record);
            if shard.records.len() >= shard.sweep_at {
                shard.records.retain(|_, record| record.expires_at > now);
                shard.sweep_at = (shard.records.len() * 2).max(FIRST_SWEEP);
            }
        }
        Ok(answer)
    }
}

fn shard_of(order_id: Uuid) -> usize {
    // UUIDv7's last bytes are random.
    usize::from(order_id.as_bytes()[15]) % SHARDS
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    async fn create(&self, order: &NewOrder) -> Result<bool, LedgerError> {
        let retention = self.retention;
        self.with_record(order.order_id, |record, now| {
            if record.is_some() {
                return false;
            }
            *record = Some(OrderRecord::pending(order, now, retention));
            true
        })
    }

    async fn get(&self, order_id: Uuid) -> Result<Option<OrderRecord>, LedgerError> {
        self.check_failure()?;
        let now = self.now();
        let shard = lock(&self.shards[shard_of(order_id)]);
        Ok(shard.records.get(&order_id).filter(|record| record.expires_at > now).cloned())
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, LedgerError> {
        let retention = self.retention;
        self.with_record(request.order.order_id, |slot, now| {
            let record = slot.get_or_insert_with(|| OrderRecord::pending(&request.order, now, retention));
            if record.is_settled() && !record.is_claimable(now) {
                return Claim::Settled(record.clone());
            }
            if !record.is_claimable(now) {
                return Claim::Busy(record.clone());
            }
            record.status = OrderStatus::Processing;
            record.attempts += 1;
            record.worker = Some(request.worker.clone());
            record.lease_expires_at = Some(expiry(now, request.lease));
            touch(record, now, retention);
            Claim::Won { token: record.attempts, record: record.clone() }
        })
    }

    async fn record_charge(
        &self,
        order_id: Uuid,
        payment: &PaymentRecord,
    ) -> Result<ChargeRecord, LedgerError> {
        let retention = self.retention;
        self.with_record(order_id, |slot, now| {
            let Some(record) = slot else {
                return Err(LedgerError::Rejected(format!("no record of order {order_id} to charge")));
            };
            if let Some(first) = record.payment() {
                return Ok(ChargeRecord::AlreadyRecorded(first));
            }
            record.payment_outcome = Some(payment.outcome);
            record.payment_reference = Some(payment.reference.clone());
            if payment.outcome == PaymentOutcome::Approved {
                record.charges += 1;
            }
            touch(record, now, retention);
            Ok(ChargeRecord::Recorded(record.clone()))
        })?
    }

    async fn settle(
        &self,
        order_id: Uuid,
        token: u32,
        worker: &str,
        settlement: &Settlement,
    ) -> Result<Settle, LedgerError> {
        let retention = self.retention;
        self.with_record(order_id, |slot, now| match slot {
            Some(record) if record.status == OrderStatus::Processing && record.attempts == token => {
                record.status = settlement.status();
                record.worker = Some(worker.to_owned());
                record.lease_expires_at = None;
                if let Settlement::Failed(reason) = settlement {
                    record.last_error = Some(reason.clone());
                }
                touch(record, now, retention);
                Settle::Settled(record.clone())
            }
            other => Settle::Fenced(other.clone()),
        })
    }

    async fn release(&self, order_id: Uuid, token: u32, reason: &str) -> Result<bool, LedgerError> {
        let retention = self.retention;
        self.with_record(order_id, |slot, now| match slot {
            Some(record) if record.status == OrderStatus::Processing && record.attempts == token => {
                record.lease_expires_at = Some(now);
                record.last_error = Some(reason.to_owned());
                touch(record, now, retention);
                true
            }
            _ => false,
        })
    }

    async fn abandon(&self, order_id: Uuid, reason: &str) -> Result<bool, LedgerError> {
        let retention = self.retention;
        self.with_record(order_id, |slot, now| match slot {
            Some(record) if record.status == OrderStatus::Pending => {
                record.status = OrderStatus::Failed;
                record.last_error = Some(reason.to_owned());
                touch(record, now, retention);
                true
            }
            _ => false,
        })
    }

    fn registry(&self) -> Option<&dyn WorkerRegistry> {
        Some(self)
    }
}

#[async_trait]
impl WorkerRegistry for EmbeddedLedger {
    async fn heartbeat(&self, entry: &WorkerEntry) -> Result<(), LedgerError> {
        self.check_failure()?;
        let now = self.now();
        let mut workers = lock(&self.workers);
        workers.retain(|_, entry| entry.is_live(now));
        workers.insert(entry.worker_id.clone(), entry.clone());
        Ok(())
    }

    async fn fleet(&self, now: DateTime<Utc>) -> Result<Vec<WorkerEntry>, LedgerError> {
        self.check_failure()?;
        Ok(lock(&self.workers).values().filter(|entry| entry.is_live(now)).cloned().collect())
    }
}

fn touch(record: &mut OrderRecord, now: DateTime<Utc>, retention: Duration) {
    record.updated_at = now;
    record.expires_at = expiry(now, retention);
}

#[async_trait]
impl IdempotencyKeys for EmbeddedLedger {
    async fn begin(&self, request: &KeyRequest) -> Result<KeyBegin, LedgerError> {
        self.check_failure()?;
        let now = self.now();
        let mut keys = lock(&self.keys);
        let lock_until = expiry(now, request.lock);
        let live = keys.records.get_mut(&request.key).filter(|record| record.expires_at > now);
        let answer = match live {
            None => {
                let record = KeyRecord {
                    fingerprint: request.fingerprint.clone(),
                    order_id: request.order_id,
                    state: KeyState::Locked { until: lock_until },
                    expires_at: expiry(lock_until, request.retention),
                };
                keys.records.insert(request.key.clone(), record);
                KeyBegin::Proceed { order_id: request.order_id, resumed: false }
            }
            Some(record) if record.fingerprint != request.fingerprint => KeyBegin::Mismatch,
            Some(record) => match &record.state {
                KeyState::Done(response) => KeyBegin::Replay(response.clone()),
                KeyState::Locked { until } if *until > now => KeyBegin::InFlight,
                KeyState::Locked { .. } | KeyState::Unlocked => {
                    record.state = KeyState::Locked { until: lock_until };
                    record.expires_at = expiry(lock_until, request.retention);
                    KeyBegin::Proceed { order_id: record.order_id, resumed: true }
                }
            },
        };
        if keys.records.len() >= keys.sweep_at {
            keys.records.retain(|_, record| record.expires_at > now);
            keys.sweep_at = (keys.records.len() * 2).max(FIRST_SWEEP);
        }
        Ok(answer)
    }

    async fn complete(
        &self,
        key: &str,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<(), LedgerError> {
        self.check_failure()?;
        let now = self.now();
        if let Some(record) = lock(&self.keys).records.get_mut(key) {
            record.state = KeyState::Done(response.clone());
            record.expires_at = expiry(now, retention);
        }
        Ok(())
    }

    async fn unlock(&self, key: &str) -> Result<(), LedgerError> {
        self.check_failure()?;
        if let Some(record) = lock(&self.keys).records.get_mut(key)
            && matches!(record.state, KeyState::Locked { .. })
        {
            record.state = KeyState::Unlocked;
        }
        Ok(())
    }

    async fn forget(&self, key: &str) -> Result<(), LedgerError> {
        self.check_failure()?;
        let mut keys = lock(&self.keys);
        if keys.records.get(key).is_some_and(|record| matches!(record.state, KeyState::Locked { .. })) {
            keys.records.remove(key);
        }
        Ok(())
    }
}
