//! `Idempotency-Key` on `POST /orders/async` and `POST /orders/sync`: a client's retry never creates a second
//! order (IETF draft-ietf-httpapi-idempotency-key-header-09, with Stripe's choices where it leaves room).
//!
//! - The key is an sf-string (`"abc"`) or a bare token (`abc`), 1 to 255 characters; anything else is 400.
//! - Keys are scoped by endpoint. The same key with the same order (compared by a fingerprint of the
//!   canonical order, so reordered JSON keys or `49.990` for `49.99` are the same order) replays the first
//!   answer, status and body, with `Idempotent-Replayed: true`; with another order it is 422; while the first
//!   request is still being processed it is 409 with `Retry-After`.
//! - Only answers that came from processing are stored: 202, 200 and 402. Validation errors never reach the
//!   key; 503s and 504s are not stored, so the retry goes through. An order whose publish outcome is unknown
//!   keeps its id under the key: the retry publishes the same order id, and the ledger charges an id once.
//! - A keyed request runs on a task of its own, so a client that goes away mid-request leaves the key
//!   completed or unlocked, never half-done.
//! - Stored answers expire after [`crate::Config::idempotency_retention`] (24 h by default); after that the
//!   key places a new order.

use std::fmt::Write as _;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ledger::idempotency::{KeyBegin, KeyRequest, MAX_KEY_CHARS, StoredResponse};
use orders::{Order, OrderRequest};
use sha2::{Digest, Sha256};
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use crate::error::ApiError;
use crate::records::{self, Operation};
use crate::routes::{self, Placement};
use crate::state::AppState;

/// The request header.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The response header marking a replayed answer.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// How much longer than the request itself can take a key stays locked if its request dies: then a retry
/// takes over. A live request finishes well within its lock.
const LOCK_MARGIN: Duration = Duration::from_secs(5);

/// A valid `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The request's key, if it sent one; 400 if it is malformed or sent twice.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else { return Ok(None) };
        if values.next().is_some() {
            return Err(malformed("send one Idempotency-Key header, not several"));
        }
        parse(value.as_bytes()).map(|key| Some(Self(key))).map_err(malformed)
    }
}

fn malformed(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
        format!("invalid Idempotency-Key: {why}"),
    )
}

/// An sf-string (`"…"` with `\"` and `\\` escapes, printable ASCII) or a bare token of visible ASCII.
fn parse(value: &[u8]) -> Result<String, &'static str> {
    let key = match value {
        [b'"', inner @ .., b'"'] => {
            let mut key = String::with_capacity(inner.len());
            let mut bytes = inner.iter();
            while let Some(&byte) = bytes.next() {
                match byte {
                    b'\\' => match bytes.next() {
                        Some(&escaped @ (b'"' | b'\\')) => key.push(char::from(escaped)),
                        _ => return Err("in a quoted key, a backslash escapes only \" or \\"),
                    },
                    b'"' => return Err("a quote inside a quoted key must be escaped"),
                    0x20..=0x7e => key.push(char::from(byte)),
                    _ => return Err("a key is printable ASCII"),
                }
            }
            key
        }
        bare => {
            if !bare.iter().all(|byte| (0x21..=0x7e).contains(byte) && *byte != b'"') {
                return Err("a key is a quoted string or a token of visible ASCII without quotes or spaces");
            }
            String::from_utf8(bare.to_vec()).map_err(|_| "a key is printable ASCII")?
        }
    };
    match key.chars().count() {
        0 => Err("the key is empty"),
        n if n > MAX_KEY_CHARS => Err("a key is at most 255 characters"),
        _ => Ok(key),
    }
}

/// SHA-256 of the canonical order (customer and items as the validated request holds them, amounts exact):
/// the same order sent with reordered keys, other whitespace or `49.990` for `49.99` has the same fingerprint.
pub(crate) fn fingerprint(request: &OrderRequest) -> String {
    let canonical = serde_json::to_string(&(request.customer_id, &request.items))
        .expect("a validated order always serializes");
    Sha256::digest(canonical.as_bytes()).iter().fold(String::with_capacity(64), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// Takes the key, or answers for it: 409, 422, a replay, or 503 if the store cannot be reached.
async fn begin(
    state: &AppState,
    key: String,
    request: &OrderRequest,
    lock: Duration,
) -> Result<(String, Uuid, bool), Response> {
    let claim = KeyRequest {
        key,
        fingerprint: fingerprint(request),
        order_id: Uuid::now_v7(),
        lock: lock + LOCK_MARGIN,
        retention: state.config().idempotency_retention,
    };
    let timeout = state.config().ledger_timeout;
    match records::call(Operation::Key, timeout, state.keys().begin(&claim)).await {
        Ok(KeyBegin::Proceed { order_id, resumed }) => Ok((claim.key, order_id, resumed)),
        Ok(KeyBegin::InFlight) => Err(ApiError {
            retry_after: Some(state.config().retry_after),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            )
        }
        .into_response()),
        Ok(KeyBegin::Mismatch) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different order; use a new key for a new order",
        )
        .into_response()),
        Ok(KeyBegin::Replay(stored)) => Err(replay(stored)),
        Err(error) => {
            tracing::warn!(%error, "an idempotency key could not be taken; answered 503");
            Err(routes::ledger_unavailable(
                state,
                "the request could not be checked for a retry; retry later",
            )
            .into_response())
        }
    }
}

/// `POST /orders/async` with a key: place the order under the key's order id, store the 202.
pub(crate) async fn accept_async(
    state: AppState,
    key: IdempotencyKey,
    request: OrderRequest,
    admitted: OwnedSemaphorePermit,
) -> Response {
    let lock = state.config().publish_timeout + state.config().ledger_timeout * 2;
    keyed(
        state,
        format!("async:{}", key.0),
        request,
        admitted,
        lock,
        |state, key, order, resumed| async move {
            match routes::place(&state, order, Placement::Keyed { resumed }).await {
                Ok(accepted) => {
                    let body = serde_json::to_string(&accepted).expect("an answer always serializes");
                    store(&state, &key, StatusCode::ACCEPTED, body).await
                }
                Err(not_placed) => {
                    release(&state, &key, not_placed.may_be_processed).await;
                    not_placed.error.into_response()
                }
            }
        },
    )
    .await
}

/// `POST /orders/sync` with a key: pay under the key's order id, store the 200 or 402; 504 and 503 charged
/// nothing and are not stored.
pub(crate) async fn pay_sync(
    state: AppState,
    key: IdempotencyKey,
    request: OrderRequest,
    admitted: OwnedSemaphorePermit,
) -> Response {
    let lock = state.config().sync_timeout + state.config().payment.latency;
    keyed(state, format!("sync:{}", key.0), request, admitted, lock, |state, key, order, _| async move {
        match routes::charge_sync(&state, order).await {
            Ok(completed) => {
                let body = serde_json::to_string(&completed).expect("an answer always serializes");
                store(&state, &key, StatusCode::OK, body).await
            }
            Err(declined) if declined.status == StatusCode::PAYMENT_REQUIRED => {
                store(&state, &key, declined.status, declined.json_body()).await
            }
            Err(error) => {
                release(&state, &key, false).await;
                error.into_response()
            }
        }
    })
    .await
}

/// Takes `key` (or answers for it), then runs `work` on the order under the key's order id, on a task of its
/// own that holds the admission permit: a client that goes away leaves the key completed or released.
async fn keyed<Work, Done>(
    state: AppState,
    key: String,
    request: OrderRequest,
    admitted: OwnedSemaphorePermit,
    lock: Duration,
    work: Work,
) -> Response
where
    Work: FnOnce(AppState, String, Order, bool) -> Done + Send + 'static,
    Done: Future<Output = Response> + Send + 'static,
{
    let (key, order_id, resumed) = match begin(&state, key, &request, lock).await {
        Ok(taken) => taken,
        Err(answer) => return answer,
    };
    let task = state.background().spawn({
        let state = state.clone();
        async move {
            let _admitted = admitted;
            work(state, key, Order { order_id, ..Order::new(request) }, resumed).await
        }
    });
    task.await.unwrap_or_else(|_| internal("a keyed request's task stopped"))
}

/// Lets go of a key whose request stored no answer: unlocked with its order id kept if the order may still be
/// processed, forgotten otherwise. If the store cannot be reached the lock lapses by itself.
async fn release(state: &AppState, key: &str, may_be_processed: bool) {
    let released =
        if may_be_processed { state.keys().unlock(key).await } else { state.keys().forget(key).await };
    if let Err(error) = released {
        tracing::warn!(%error, "could not release an idempotency key; it frees itself when its lock lapses");
    }
}

/// Stores the answer under the key and sends it. If it cannot be stored the answer still goes out; the key
/// stays locked until its lock lapses, and a retry after that resumes the same order id.
async fn store(state: &AppState, key: &str, status: StatusCode, body: String) -> Response {
    let stored = StoredResponse { status: status.as_u16(), body };
    let retention = state.config().idempotency_retention;
    let timeout = state.config().ledger_timeout;
    if let Err(error) =
        records::call(Operation::Key, timeout, state.keys().complete(key, &stored, retention)).await
    {
        tracing::warn!(%error, "could not store an idempotent answer; a retry resumes the same order");
    }
    json(status, stored.body)
}

/// A stored answer, again.
fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = json(status, stored.body);
    response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

fn json(status: StatusCode, body: String) -> Response {
    let mut response = (status, Body::from(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A task that panicked: a bug, never an input's fault.
fn internal(what: &str) -> Response {
    tracing::error!("{what}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({"error": {"code": "internal", "message": what}})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tokens_or_sf_strings() {
        assert_eq!(parse(b"abc-123_x.y"), Ok("abc-123_x.y".into()));
        assert_eq!(
            parse(br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#),
            Ok("8e03978e-40d5-43e8-bc93-6894a57f9324".into())
        );
        assert_eq!(parse(br#""a \"b\" \\ c""#), Ok(r#"a "b" \ c"#.into()));
        for bad in [&b""[..], b"\"\"", b"a b", b"\"a\\x\"", b"\"a\"b\"", "é".as_bytes(), b"a\tb"] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse("k".repeat(255).as_bytes()).is_ok());
        assert!(parse("k".repeat(256).as_bytes()).is_err());
    }

    #[test]
    fn the_fingerprint_is_of_the_order_not_its_bytes() {
        let a = OrderRequest::from_json(
            br#"{"customer_id": 1, "items": [{"product_id": "P", "quantity": 2, "price": 49.99}]}"#,
        )
        .unwrap();
        let b = OrderRequest::from_json(
            br#"{"items": [{"price": 49.990, "quantity": 2, "product_id": "P"}], "customer_id": 1}"#,
        )
        .unwrap();
        let c = OrderRequest::from_json(
            br#"{"customer_id": 1, "items": [{"product_id": "P", "quantity": 3, "price": 49.99}]}"#,
        )
        .unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
        assert_eq!(fingerprint(&a).len(), 64);
    }
}
