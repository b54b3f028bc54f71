//! Idempotency keys in the ledger's table: one item per key, beside the orders.
//!
//! A key's item has the hash key `order_id` = `key#<scoped key>` (never a UUID, so it cannot meet an order),
//! and `key_fingerprint` S, `key_order_id` S, `key_state` S (`locked`, `unlocked`, `done`), `locked_until` N
//! (epoch ms), `response_status` N, `response_body` S, `expires_at` N (the table's TTL). Every call is one
//! conditional UpdateItem; `begin` on an item past its expiry takes a second, conditional PutItem, as `claim`
//! does for orders. `forget` expires the item at once instead of deleting it, so the receiver needs no
//! `DeleteItem`.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use uuid::Uuid;

use super::{DynamoLedger, EXPIRES_AT, Item, ORDER_ID, Reader, Write, epoch_ms, epoch_s, n, s};
use crate::idempotency::{IdempotencyKeys, KeyBegin, KeyRequest, StoredResponse};
use crate::{LedgerError, expiry};

const FINGERPRINT: &str = "key_fingerprint";
const KEY_ORDER_ID: &str = "key_order_id";
const STATE: &str = "key_state";
const LOCKED_UNTIL: &str = "locked_until";
const RESPONSE_STATUS: &str = "response_status";
const RESPONSE_BODY: &str = "response_body";

const LOCKED: &str = "locked";
const UNLOCKED: &str = "unlocked";
const DONE: &str = "done";

fn item_key(key: &str) -> AttributeValue {
    AttributeValue::S(format!("key#{key}"))
}

impl DynamoLedger {
    /// `begin` on an item past its expiry: a fresh locked item replaces it unless a live one got there first.
    async fn begin_over_expired(&self, request: &KeyRequest) -> Result<KeyBegin, LedgerError> {
        let now = Utc::now();
        let lock_until = expiry(now, request.lock);
        let item: Item = [
            (ORDER_ID.to_owned(), item_key(&request.key)),
            (FINGERPRINT.to_owned(), s(&request.fingerprint)),
            (KEY_ORDER_ID.to_owned(), s(&request.order_id.to_string())),
            (STATE.to_owned(), s(LOCKED)),
            (LOCKED_UNTIL.to_owned(), epoch_ms(lock_until)),
            (EXPIRES_AT.to_owned(), epoch_s(expiry(lock_until, request.retention))),
        ]
        .into_iter()
        .collect();
        match self.put_if_absent(item, now).await? {
            Ok(_) => Ok(KeyBegin::Proceed { order_id: request.order_id, resumed: false }),
            // A live item took its place meanwhile: answer as if it had been there all along.
            Err(Some(item)) => refused(&item, request),
            Err(None) => Ok(KeyBegin::InFlight),
        }
    }
}

/// Why a live key's item refused this request.
fn refused(item: &Item, request: &KeyRequest) -> Result<KeyBegin, LedgerError> {
    let reader = Reader { item, id: "idempotency key" };
    if reader.text(FINGERPRINT)? != request.fingerprint {
        return Ok(KeyBegin::Mismatch);
    }
    if reader.text(STATE)? == DONE {
        return Ok(KeyBegin::Replay(StoredResponse {
            status: reader.number(RESPONSE_STATUS)?,
            body: reader.text(RESPONSE_BODY)?.to_owned(),
        }));
    }
    Ok(KeyBegin::InFlight)
}

#[async_trait]
impl IdempotencyKeys for DynamoLedger {
    async fn begin(&self, request: &KeyRequest) -> Result<KeyBegin, LedgerError> {
        let now = Utc::now();
        let lock_until = expiry(now, request.lock);
        let values: Item = [
            (":fingerprint", s(&request.fingerprint)),
            (":order_id", s(&request.order_id.to_string())),
            (":locked", s(LOCKED)),
            (":unlocked", s(UNLOCKED)),
            (":lock_ms", epoch_ms(lock_until)),
            (":now_ms", epoch_ms(now)),
            (":now_s", epoch_s(now)),
            (":expires_s", epoch_s(expiry(lock_until, request.retention))),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let write = Write {
            update: format!(
                "SET #{FINGERPRINT} = :fingerprint, #{KEY_ORDER_ID} = if_not_exists(#{KEY_ORDER_ID}, :order_id), \
                 #{STATE} = :locked, #{LOCKED_UNTIL} = :lock_ms, #{EXPIRES_AT} = :expires_s"
            ),
            // New, or the same request's key left unlocked or with a lapsed lock (and not expired).
            condition: format!(
                "attribute_not_exists(#{ORDER_ID}) OR (#{EXPIRES_AT} > :now_s AND #{FINGERPRINT} = :fingerprint \
                 AND (#{STATE} = :unlocked OR (#{STATE} = :locked AND #{LOCKED_UNTIL} <= :now_ms)))"
            ),
            values,
        };
        match self.update(item_key(&request.key), write, true).await? {
            Ok(Some(item)) => {
                let reader = Reader { item: &item, id: "idempotency key" };
                let text = reader.text(KEY_ORDER_ID)?;
                let order_id =
                    Uuid::parse_str(text).map_err(|_| reader.corrupt(KEY_ORDER_ID, "is not a uuid"))?;
                Ok(KeyBegin::Proceed { order_id, resumed: order_id != request.order_id })
            }
            Ok(None) => Err(LedgerError::Corrupt("begin returned no item".into())),
            Err(Some(item)) => {
                let expires: i64 = Reader { item: &item, id: "idempotency key" }.number(EXPIRES_AT)?;
                if expires <= now.timestamp() {
                    self.begin_over_expired(request).await
                } else {
                    refused(&item, request)
                }
            }
            Err(None) => Ok(KeyBegin::InFlight),
        }
    }

    async fn complete(
        &self,
        key: &str,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<(), LedgerError> {
        let now = Utc::now();
        let values: Item = [
            (":done", s(DONE)),
            (":status", n(response.status)),
            (":body", s(&response.body)),
            (":expires_s", epoch_s(expiry(now, retention))),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let write = Write {
            update: format!(
                "SET #{STATE} = :done, #{RESPONSE_STATUS} = :status, #{RESPONSE_BODY} = :body, \
                 #{EXPIRES_AT} = :expires_s REMOVE #{LOCKED_UNTIL}"
            ),
            condition: format!("attribute_exists(#{ORDER_ID})"),
            values,
        };
        self.update(item_key(key), write, false)
            .await?
            .map_err(|_| LedgerError::Rejected(format!("no idempotency key {key:?} to complete")))?;
        Ok(())
    }

    async fn unlock(&self, key: &str) -> Result<(), LedgerError> {
        let values: Item = [(":unlocked", s(UNLOCKED)), (":locked", s(LOCKED))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let write = Write {
            update: format!("SET #{STATE} = :unlocked REMOVE #{LOCKED_UNTIL}"),
            condition: format!("#{STATE} = :locked"),
            values,
        };
        // A key no longer locked (completed meanwhile, or never begun) has nothing to unlock.
        let _ = self.update(item_key(key), write, false).await?;
        Ok(())
    }

    async fn forget(&self, key: &str) -> Result<(), LedgerError> {
        let values: Item =
            [(":zero", n(0)), (":locked", s(LOCKED))].into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let write = Write {
            update: format!("SET #{EXPIRES_AT} = :zero"),
            condition: format!("#{STATE} = :locked"),
            values,
        };
        let _ = self.update(item_key(key), write, false).await?;
        Ok(())
    }
}
