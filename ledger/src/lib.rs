//! The order ledger: one record per accepted order, so that an order can be looked up and is charged at most
//! once, whatever crashes or duplicate deliveries happen, across any number of worker processes.
//!
//! The *port* is [`Ledger`]; two adapters implement it:
//!
//! - [`embedded`]: in-process, with the same conditional semantics. It is the default wherever the bus is
//!   embedded (tests, the load tool's in-process pipeline), and it runs on tokio time so leases and expiry
//!   follow `tokio::time::pause()`.
//! - [`dynamodb`]: one DynamoDB item per order, every rule a conditional write.
//!
//! The life of a record, and the write that makes each step (a step whose condition fails changes nothing):
//!
//! ```text
//!  receiver: create ──▶ pending ──claim (lease, token)──▶ processing ──settle (token)──▶ completed | declined | failed
//!            (absent)      │          ▲  lease expired ──┘      │
//!                          └─abandon─▶ failed (publish failed)   ├─ release (token): lease ends now
//!                                                                └─ gateway: record_charge (once per order)
//! ```
//!
//! - A status never goes backwards: `create` needs no record, `claim` a pending one or a processing one whose
//!   lease has expired, `settle` and `release` the claim's fencing token, `abandon` a pending one. A late or duplicate write
//!   finds its condition false and changes nothing.
//! - The fencing token of a claim is its number: `attempts` after the claim. A settle carrying an older token
//!   (a worker whose lease expired and was claimed again) is refused.
//! - The payment gateway's record of charges lives in the same record ([`Ledger::record_charge`]): the first
//!   outcome recorded for an order is the only one; charging again returns it and charges nothing. `charges`
//!   is incremented (never set) by each approved charge, so a double charge would show as 2.
//!
//! The same store holds the [worker registry](registry) (one entry per worker process, rewritten by its
//! heartbeat), reached through [`Ledger::registry`], and [`eta`] estimates an order's completion from it.
//!
//! The ledger knows orders (the domain) but nothing of the bus.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orders::{Money, Order, OrderStatus, PaymentOutcome};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod dynamodb;
pub mod embedded;
pub mod eta;
mod gateway;
pub mod idempotency;
pub mod registry;

pub use gateway::{ChargeError, Charged, IdempotentGateway};

/// How long a record is kept after its last write: 7 days, longer than the queue's retention (4 days), so a
/// redelivered message always finds its order's record. A message redriven from the dead-letter queue more
/// than 7 days after its order's last write finds none and is processed as a new order.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// What the receiver knows of an order when it accepts it: the start of its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The order's id (the record's key).
    pub order_id: Uuid,
    /// The paying customer.
    pub customer_id: u64,
    /// The order's total.
    pub total: Money,
    /// How many lines the order has.
    pub item_count: u32,
    /// When the receiver accepted the order.
    pub accepted_at: DateTime<Utc>,
}

impl NewOrder {
    /// The record's start for an order accepted at `accepted_at`.
    pub fn of(order: &Order, accepted_at: DateTime<Utc>) -> Self {
        Self {
            order_id: order.order_id,
            customer_id: order.customer_id,
            total: order.total,
            item_count: u32::try_from(order.items.len()).unwrap_or(u32::MAX),
            accepted_at,
        }
    }
}

/// The payment gateway's decision for an order, as recorded once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// What the gateway decided.
    #[serde(with = "outcome_name")]
    pub outcome: PaymentOutcome,
    /// The gateway's reference for the payment, quoted to customers and support.
    pub reference: String,
}

/// One order's record, as stored and as `GET /orders/{id}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The order's id.
    pub order_id: Uuid,
    /// The paying customer.
    pub customer_id: u64,
    /// The order's total, as the decimal string of the API (`"100.28"`).
    pub total: Money,
    /// How many lines the order has.
    pub item_count: u32,
    /// Where the order is: `pending → processing → completed | declined | failed`.
    pub status: OrderStatus,
    /// When the receiver accepted the order.
    pub accepted_at: DateTime<Utc>,
    /// When the record last changed.
    pub updated_at: DateTime<Utc>,
    /// How many times a worker claimed the order; also the fencing token of the latest claim.
    pub attempts: u32,
    /// How many times the payment gateway actually charged the order. More than 1 is a double charge.
    pub charges: u32,
    /// The gateway's outcome (`approved` or `declined`), once it decided.
    #[serde(with = "optional_outcome_name")]
    pub payment_outcome: Option<PaymentOutcome>,
    /// The gateway's payment reference, once it decided.
    pub payment_reference: Option<String>,
    /// The last error that held the order up (a failed payment attempt, a failed publish).
    pub last_error: Option<String>,
    /// The worker that owns the order (processing) or settled it.
    pub worker: Option<String>,
    /// While processing: when the owner's claim lapses and another worker may claim the order.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When the record may be deleted (DynamoDB's TTL attribute; it may linger past it).
    pub expires_at: DateTime<Utc>,
}

impl OrderRecord {
    /// The pending record of a newly accepted order.
    pub fn pending(order: &NewOrder, now: DateTime<Utc>, retention: Duration) -> Self {
        Self {
            order_id: order.order_id,
            customer_id: order.customer_id,
            total: order.total,
            item_count: order.item_count,
            status: OrderStatus::Pending,
            accepted_at: order.accepted_at,
            updated_at: now,
            attempts: 0,
            charges: 0,
            payment_outcome: None,
            payment_reference: None,
            last_error: None,
            worker: None,
            lease_expires_at: None,
            expires_at: expiry(now, retention),
        }
    }

    /// The gateway's recorded decision, if it made one.
    pub fn payment(&self) -> Option<PaymentRecord> {
        Some(PaymentRecord { outcome: self.payment_outcome?, reference: self.payment_reference.clone()? })
    }

    /// Whether the order reached a final status.
    pub fn is_settled(&self) -> bool {
        is_settled(self.status)
    }

    /// Whether a worker may claim the order at `now`.
    pub fn is_claimable(&self, now: DateTime<Utc>) -> bool {
        match self.status {
            // A failed order is claimed again only when its message is redriven from the dead-letter queue.
            OrderStatus::Pending | OrderStatus::Failed => true,
            OrderStatus::Processing => self.lease_expires_at.is_none_or(|lease| lease <= now),
            _ => false,
        }
    }
}

/// Whether a status is final.
pub fn is_settled(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Completed | OrderStatus::Declined | OrderStatus::Failed)
}

/// `now + retention`, saturating far in the future.
pub fn expiry(now: DateTime<Utc>, retention: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(retention).ok().and_then(|r| now.checked_add_signed(r)).unwrap_or(now)
}

/// A worker's request to own an order while it takes payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The order, as the message carried it: the record is created from it if the receiver's write is
    /// missing (a publish whose answer was lost, a record removed by its expiry).
    pub order: NewOrder,
    /// Who claims: the worker's id, recorded as the owner.
    pub worker: String,
    /// How long the claim holds before another worker may take the order over.
    pub lease: Duration,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This worker owns the order under `token` until the lease lapses. The record may already carry a
    /// payment (an earlier owner charged, then crashed): settle with it rather than charging.
    Won {
        /// The fencing token to settle with.
        token: u32,
        /// The record after the claim.
        record: OrderRecord,
    },
    /// Another worker owns the order and its lease has not lapsed: charge nothing, leave the message for later.
    Busy(OrderRecord),
    /// The order is settled: charge nothing, delete the message.
    Settled(OrderRecord),
}

/// A final status with what led to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The gateway approved the payment.
    Completed,
    /// The gateway declined the payment.
    Declined,
    /// The worker gave up on the order (its message goes to the dead-letter queue), with the last error.
    Failed(String),
}

impl Settlement {
    /// The settlement for a gateway outcome.
    pub fn of(outcome: PaymentOutcome) -> Self {
        match outcome {
            PaymentOutcome::Approved => Settlement::Completed,
            PaymentOutcome::Declined => Settlement::Declined,
        }
    }

    /// The status it writes.
    pub fn status(&self) -> OrderStatus {
        match self {
            Settlement::Completed => OrderStatus::Completed,
            Settlement::Declined => OrderStatus::Declined,
            Settlement::Failed(_) => OrderStatus::Failed,
        }
    }
}

/// The answer to a settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// The status was written.
    Settled(OrderRecord),
    /// The token is not the latest claim's, or the order is no longer processing: nothing was written. The
    /// record as it is (or `None` if there is none).
    Fenced(Option<OrderRecord>),
}

/// The answer to the gateway's charge record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeRecord {
    /// This charge is the order's payment.
    Recorded(OrderRecord),
    /// The order already had a payment: this one is void, and the first is the answer.
    AlreadyRecorded(PaymentRecord),
}

/// What can go wrong talking to the ledger's storage. Conditions that fail are not errors: they are answers
/// ([`Claim`], [`Settle`], [`ChargeRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The store is throttling (DynamoDB `ProvisionedThroughputExceededException`, `ThrottlingException`,
    /// `RequestLimitExceeded`): back off and retry.
    #[error("ledger throttled: {0}")]
    Throttled(String),
    /// A passing failure (timeout, 5xx, connection reset): the write may or may not have happened; retry.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// A failure retrying will not fix (missing table, access denied): an operator must act.
    #[error("ledger refused {code}: {message}")]
    Fatal {
        /// The store's error code.
        code: String,
        /// What it said.
        message: String,
    },
    /// The call makes no sense for the record as it is (a charge for an order with no record).
    #[error("{0}")]
    Rejected(String),
    /// A stored item could not be read as a record.
    #[error("corrupt ledger record: {0}")]
    Corrupt(String),
}

impl LedgerError {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LedgerError::Throttled(_) | LedgerError::Unavailable(_))
    }
}

/// The order ledger's port. Every method is one conditional read-modify-write of one order's record (one
/// DynamoDB request), so concurrent callers in any number of processes cannot interleave inside it.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Writes the pending record of a newly accepted order. `Ok(false)` if a record with that id exists
    /// already (it is left unchanged).
    async fn create(&self, order: &NewOrder) -> Result<bool, LedgerError>;

    /// The order's record, or `None` for an unknown or expired id. One key lookup.
    async fn get(&self, order_id: Uuid) -> Result<Option<OrderRecord>, LedgerError>;

    /// Claims the order for `request.worker`: a pending order, an order with no record, a processing one
    /// whose lease has lapsed, or a failed one (its message was dead-lettered and has been redriven) becomes
    /// processing under a new fencing token. Completed and declined orders stay settled.
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, LedgerError>;

    /// The payment gateway's record of a charge: writes `payment` as the order's payment unless it has one
    /// already, incrementing `charges` if it was approved. The record must exist.
    async fn record_charge(
        &self,
        order_id: Uuid,
        payment: &PaymentRecord,
    ) -> Result<ChargeRecord, LedgerError>;

    /// Settles an order claimed under `token` by `worker`.
    async fn settle(
        &self,
        order_id: Uuid,
        token: u32,
        worker: &str,
        settlement: &Settlement,
    ) -> Result<Settle, LedgerError>;

    /// Gives up a claim made under `token` without settling: the order stays processing but its lease ends now,
    /// so the next delivery of its message claims it at once, and `reason` becomes its `last_error` (a payment
    /// that failed transiently, a shutdown). `Ok(false)` if the token is no longer the latest claim's.
    async fn release(&self, order_id: Uuid, token: u32, reason: &str) -> Result<bool, LedgerError>;

    /// Marks a pending order failed with `reason` (its publish failed, so no worker will ever see it).
    /// `Ok(false)` if it is no longer pending (a worker got it after all) or has no record.
    async fn abandon(&self, order_id: Uuid, reason: &str) -> Result<bool, LedgerError>;

    /// The worker registry kept in the same store, so whoever holds a ledger (a worker's heartbeat, the
    /// receiver's ETA) reaches it without a second handle. Both adapters have one; a ledger without (a test
    /// double) answers `None`, and its holders go without registry.
    fn registry(&self) -> Option<&dyn registry::WorkerRegistry> {
        None
    }
}

/// Everything the receiver keeps in the ledger's store: order records and idempotency keys. Both adapters are
/// one; this names the pair so a service can hold one `Arc<dyn Store>`.
pub trait Store: Ledger + idempotency::IdempotencyKeys {}

impl<T: Ledger + idempotency::IdempotencyKeys> Store for T {}

/// `approved` / `declined`, the names the API and the store use.
pub fn outcome_name(outcome: PaymentOutcome) -> &'static str {
    match outcome {
        PaymentOutcome::Approved => "approved",
        PaymentOutcome::Declined => "declined",
    }
}

/// The inverse of [`outcome_name`].
pub fn parse_outcome(name: &str) -> Option<PaymentOutcome> {
    match name {
        "approved" => Some(PaymentOutcome::Approved),
        "declined" => Some(PaymentOutcome::Declined),
        _ => None,
    }
}

/// The lower-case name of a status, as the API and the store write it.
pub fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Pending => "pending",
        OrderStatus::Processing => "processing",
        OrderStatus::Completed => "completed",
        OrderStatus::Declined => "declined",
        OrderStatus::Failed => "failed",
    }
}

/// The inverse of [`status_name`].
pub fn parse_status(name: &str) -> Option<OrderStatus> {
    [
        OrderStatus::Pending,
        OrderStatus::Processing,
        OrderStatus::Completed,
        OrderStatus::Declined,
        OrderStatus::Failed,
    ]
    .into_iter()
    .find(|status| status_name(*status) == name)
}

mod outcome_name {
    use orders::PaymentOutcome;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(outcome: &PaymentOutcome, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(super::outcome_name(*outcome))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PaymentOutcome, D::Error> {
        let name = String::deserialize(d)?;
        super::parse_outcome(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown outcome {name:?}")))
    }
}

mod optional_outcome_name {
    use orders::PaymentOutcome;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        outcome: &Option<PaymentOutcome>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match outcome {
            Some(outcome) => s.serialize_some(super::outcome_name(*outcome)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PaymentOutcome>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|name| {
                super::parse_outcome(&name)
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown outcome {name:?}")))
            })
            .transpose()
    }
}
