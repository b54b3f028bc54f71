//! Idempotency keys: a client's retry of a request never creates a second order.
//!
//! Semantics follow the IETF HTTPAPI draft "The Idempotency-Key HTTP Header Field" with Stripe's choices
//! where it leaves room. Each key has one record:
//!
//! ```text
//!   (none) ──begin──▶ locked (order id chosen) ──complete──▶ done (status + body kept until expiry)
//!                      │  ▲                └─forget──▶ (none)      (an answer that is not stored: 503 before
//!                      │  └─ begin after the lock lapsed                the order could have left the receiver)
//!                      └─unlock──▶ unlocked (order id kept): the next begin resumes with the same order id
//! ```
//!
//! The order id is chosen once, at the first `begin`, and every later attempt reuses it: a publish whose
//! outcome was unknown is published again under the same id, and the order ledger charges an order id once.
//! A record past its expiry counts as absent.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::LedgerError;

/// How long a completed key's answer is replayed: 24 hours, as Stripe keeps keys.
pub const DEFAULT_KEY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest key accepted, in characters (Stripe's limit).
pub const MAX_KEY_CHARS: usize = 255;

/// A request's claim on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequest {
    /// The key, scoped by the caller (endpoint and key), so one key on two endpoints is two keys.
    pub key: String,
    /// The fingerprint of the canonical request: the same key with another fingerprint is a misuse.
    pub fingerprint: String,
    /// The order id to use if the key is new.
    pub order_id: Uuid,
    /// How long the lock holds if this request dies without completing or unlocking: after it, a retry takes
    /// over. Longer than the request can take.
    pub lock: Duration,
    /// How long a completed answer is kept and replayed.
    pub retention: Duration,
}

/// The answer a key record keeps, replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: String,
}

/// What `begin` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyBegin {
    /// This request holds the key: process it under `order_id` (the request's own, or the one an earlier
    /// attempt chose and left unfinished).
    Proceed {
        /// The order id every attempt with this key uses.
        order_id: Uuid,
        /// Whether an earlier attempt chose the id (its outcome was unknown, or it died).
        resumed: bool,
    },
    /// Another request with this key is being processed now: 409, retry later.
    InFlight,
    /// The key was used for a different request: 422.
    Mismatch,
    /// The key's request finished: replay its answer.
    Replay(StoredResponse),
}

/// The store of idempotency keys. Each method is one conditional write (or read) of one key's record.
#[async_trait]
pub trait IdempotencyKeys: Send + Sync + 'static {
    /// Takes the key for this request, or says why not.
    async fn begin(&self, request: &KeyRequest) -> Result<KeyBegin, LedgerError>;

    /// Stores the answer of the request holding the key, to be replayed until `retention` has passed.
    async fn complete(
        &self,
        key: &str,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<(), LedgerError>;

    /// Lets go of the key but keeps its order id: the outcome is unknown, and a retry must reuse the id.
    async fn unlock(&self, key: &str) -> Result<(), LedgerError>;

    /// Forgets the key altogether: the request reached no outcome worth keeping (nothing left the receiver),
    /// so a retry starts afresh.
    async fn forget(&self, key: &str) -> Result<(), LedgerError>;
}
