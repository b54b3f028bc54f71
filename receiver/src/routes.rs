//! The HTTP endpoints.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bus::{ATTR_SCHEMA_VERSION, BusError, OutgoingMessage};
use chrono::{DateTime, Utc};
use ledger::NewOrder;
use orders::{
    Money, Order, OrderRequest, OrderStatus, PaymentError, PaymentOutcome, RequestError, WIRE_VERSION,
    WireMessage,
};
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use uuid::Uuid;

use crate::MAX_BODY_BYTES;
use crate::batcher::PublishError;
use crate::error::{ApiError, ErrorDetail};
use crate::idempotency::{self, IdempotencyKey};
use crate::records::{self, Operation, Unaccepted, Unpublished};
use crate::request_metrics::Route;
use crate::state::{AppState, Endpoint};

/// How long a client may take to send its body (10 s): a client trickling bytes would otherwise hold its
/// connection, one of the capped many, for as long as it likes.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The 202 answer of `POST /orders/async`.
#[derive(Debug, Serialize)]
pub(crate) struct Accepted {
    order_id: Uuid,
    status: OrderStatus,
    message: &'static str,
    accepted_at: DateTime<Utc>,
}

/// The 200 answer of `POST /orders/sync`.
#[derive(Debug, Serialize)]
pub(crate) struct Completed {
    order_id: Uuid,
    status: OrderStatus,
    message: &'static str,
    total: Money,
    waited_ms: u64,
}

/// `POST /orders/async`: validate, write the order's pending record, publish, and answer 202 only once the bus
/// has acknowledged the order. See the crate docs for what each failure leaves behind. With an
/// `Idempotency-Key`, [`idempotency::accept_async`] takes over once the body is valid.
pub(crate) async fn accept_async(State(state): State<AppState>, request: Request) -> Response {
    let (key, admitted, order) = match admit(&state, Endpoint::Async, request).await {
        Ok(admitted) => admitted,
        Err(error) => return error.into_response(),
    };
    match key {
        Some(key) => idempotency::accept_async(state, key, order, admitted).await,
        None => {
            let placed = place(&state, Order::new(order), Placement::Unkeyed).await;
            drop(admitted);
            match placed {
                Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
                Err(not_placed) => not_placed.error.into_response(),
            }
        }
    }
}

/// What both order endpoints do first: check the `Idempotency-Key` (400 if malformed), read and validate the
/// order (counted as invalid if it is not), then take an admission permit (503 at the limit). The body is read
/// before the permit is taken, so a client trickling it holds its connection, not one of the permits.
async fn admit(
    state: &AppState,
    endpoint: Endpoint,
    request: Request,
) -> Result<(Option<IdempotencyKey>, OwnedSemaphorePermit, OrderRequest), ApiError> {
    let key = IdempotencyKey::from_headers(request.headers())?;
    let invalid = match endpoint {
        Endpoint::Async => &state.counters().async_invalid,
        Endpoint::Sync => &state.counters().sync_invalid,
    };
    let order = read_order(request).await.inspect_err(|_| count(invalid))?;
    let admitted = state.admit(endpoint)?;
    Ok((key, admitted, order))
}

/// Whether a placement is retried under an idempotency key, which decides what a failure leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// No key: an order that was not answered 202 is marked failed, so a late publish is never charged.
    Unkeyed,
    /// Under a key: a publish whose outcome is unknown leaves the order as it is, and the key's retry
    /// publishes the same order id again. `resumed`: an earlier attempt with this key chose the id.
    Keyed {
        /// Whether an earlier attempt chose the order id (and may have published it).
        resumed: bool,
    },
}

/// An order that was not answered 202.
pub(crate) struct NotPlaced {
    /// The answer.
    pub(crate) error: ApiError,
    /// Whether the order may still be processed (its publish may have reached the bus): a retry under its key
    /// must reuse its id.
    pub(crate) may_be_processed: bool,
}

/// Writes the order's pending record, publishes it, and returns the 202 body once the bus acknowledged it.
pub(crate) async fn place(
    state: &AppState,
    order: Order,
    placement: Placement,
) -> Result<Accepted, NotPlaced> {
    let counters = state.counters();
    let resumed = placement == Placement::Keyed { resumed: true };
    let refused = |error| NotPlaced { error, may_be_processed: resumed };
    let wire = WireMessage::new(order, Utc::now());

    // The record before the publish: `GET /orders/{id}` finds the order the moment the 202 is sent.
    let unpublished = Unpublished::new(state, wire.order.order_id);
    let record = NewOrder::of(&wire.order, wire.accepted_at);
    let timeout = state.config().ledger_timeout;
    match records::call(Operation::Create, timeout, state.ledger().create(&record)).await {
        Ok(true) => {}
        // A retry under a key of an order an earlier attempt recorded (and may have published).
        Ok(false) if resumed => {}
        Ok(false) => {
            // Another order's record: leave it alone.
            unpublished.disarm();
            count(&counters.async_ledger_failures);
            records::count_failure(Operation::Create, "conflict");
            tracing::error!(order_id = %record.order_id, "a new order's id is already in the ledger");
            return Err(refused(ledger_unavailable(state, "the order's id was taken; retry for a new one")));
        }
        Err(error) => {
            count(&counters.async_ledger_failures);
            tracing::warn!(order_id = %record.order_id, %error, "cannot record an order; answered 503");
            if records::may_have_written(&error) && !resumed {
                unpublished.not_accepted(Unaccepted::WriteFailed(error));
            } else {
                unpublished.disarm();
            }
            return Err(refused(ledger_unavailable(
                state,
                "the order was not accepted because it could not be recorded; nothing was queued, retry later",
            )));
        }
    }

    let message =
        OutgoingMessage::new(wire.to_json()).with_attribute(ATTR_SCHEMA_VERSION, WIRE_VERSION.to_string());
    match state.batcher().publish(message).await {
        Ok(_) => unpublished.disarm(),
        Err(error) => {
            count(&counters.async_failed);
            let unknown = outcome_unknown(&error);
            let answer = publish_failed(&error, wire.order.order_id, state);
            return Err(match placement {
                Placement::Unkeyed => {
                    unpublished.not_accepted(Unaccepted::PublishFailed(error));
                    NotPlaced { error: answer, may_be_processed: unknown }
                }
                // Under a key, an order that may have reached the bus is left as it is: the retry publishes
                // the same id again, and the ledger charges an id once.
                Placement::Keyed { resumed } if unknown || resumed => {
                    unpublished.disarm();
                    NotPlaced { error: answer, may_be_processed: true }
                }
                Placement::Keyed { .. } => {
                    unpublished.not_accepted(Unaccepted::PublishFailed(error));
                    NotPlaced { error: answer, may_be_processed: false }
                }
            });
        }
    }
    count(&counters.async_accepted);
    Ok(Accepted {
        order_id: wire.order.order_id,
        status: wire.order.status,
        message: "order accepted; it will be processed asynchronously",
        accepted_at: wire.accepted_at,
    })
}

/// Whether a failed publish may nevertheless have reached the bus: no acknowledgement in time, or the
/// receiver stopping while the call was out.
fn outcome_unknown(error: &PublishError) -> bool {
    matches!(
        error,
        PublishError::TimedOut(_) | PublishError::ShuttingDown | PublishError::Bus(BusError::Timeout)
    )
}

fn publish_failed(error: &PublishError, order_id: Uuid, state: &AppState) -> ApiError {
    let retry_after = state.config().retry_after;
    match error {
        PublishError::ShuttingDown => ApiError::unavailable(
            "shutting_down",
            "the receiver is shutting down; retry shortly (with the same Idempotency-Key, if you sent one)",
            retry_after,
        ),
        error if outcome_unknown(error) => ApiError::unavailable(
            "outcome_unknown",
            format!(
                "the bus did not acknowledge order {order_id} in time, so whether it was accepted is unknown; \
                 retrying with the same Idempotency-Key is safe and never creates a second order"
            ),
            retry_after,
        ),
        error => ApiError::unavailable(
            "bus_unavailable",
            "the order was not accepted because it could not be queued; retry later",
            retry_after,
        )
        .with_detail(error),
    }
}

/// 503 `ledger_unavailable`: the store's own error is logged, not sent, since it can name tables and roles.
pub(crate) fn ledger_unavailable(state: &AppState, message: &'static str) -> ApiError {
    ApiError::unavailable("ledger_unavailable", message, state.config().retry_after)
}

/// `GET /orders/{id}`: the order's ledger record, by one key lookup, with its `eta` while it is pending or
/// processing (from the worker registry, read at most once a second). Outside the order endpoints' admission
/// limits, since a lookup is cheap and bounded by [`crate::Config::ledger_timeout`].
pub(crate) async fn get_order(State(state): State<AppState>, request: Request) -> Response {
    // The route is `/orders/{id}`: the id is the rest of the path, taken as sent (a UUID needs no escapes).
    let id = request.uri().path().strip_prefix("/orders/").unwrap_or_default();
    let Ok(order_id) = Uuid::try_parse(id) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_order_id",
            "an order id is a UUID, as returned in `order_id` by POST /orders/async",
        )
        .into_response();
    };
    match records::call(Operation::Get, state.config().ledger_timeout, state.ledger().get(order_id)).await {
        Ok(Some(record)) => {
            let eta = state.eta(&record).await;
            (StatusCode::OK, Json(records::OrderAnswer { record, eta })).into_response()
        }
        Ok(None) => ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("no order {order_id}: never accepted, or its record has expired"),
        )
        .into_response(),
        Err(error) => {
            tracing::warn!(%order_id, %error, "an order could not be looked up; answered 503");
            ledger_unavailable(&state, "the order could not be looked up; retry later").into_response()
        }
    }
}

/// `POST /orders/sync`: validate, wait for the process-wide payment gate (up to the sync timeout), pay, answer.
/// With an `Idempotency-Key`, [`idempotency::pay_sync`] takes over once the body is valid.
pub(crate) async fn pay_sync(State(state): State<AppState>, request: Request) -> Response {
    let (key, admitted, order) = match admit(&state, Endpoint::Sync, request).await {
        Ok(admitted) => admitted,
        Err(error) => return error.into_response(),
    };
    match key {
        Some(key) => idempotency::pay_sync(state, key, order, admitted).await,
        None => {
            // If the client disconnects, this future is dropped and the payment leaves the gate's queue with it.
            let paid = charge_sync(&state, Order::new(order)).await;
            drop(admitted);
            match paid {
                Ok(completed) => (StatusCode::OK, Json(completed)).into_response(),
                Err(error) => error.into_response(),
            }
        }
    }
}

/// Waits for the gate (up to the sync timeout) and pays: 200's body, or 402, 504 or 503.
pub(crate) async fn charge_sync(state: &AppState, order: Order) -> Result<Completed, ApiError> {
    let counters = state.counters();
    // The answer is due within the sync timeout, so a payment must start early enough to finish by then.
    let config = state.config();
    let deadline = Instant::now() + config.sync_timeout.saturating_sub(config.payment.latency);
    let mut unanswered = CountedIfDropped::new(&counters.sync_abandoned);
    let payment = state.gate().pay_before(&order, deadline).await;
    unanswered.disarm();
    let waited = match &payment {
        Ok(receipt) => Some(receipt.waited),
        Err(PaymentError::DeadlineExceeded { waited }) => Some(*waited),
        Err(PaymentError::GatewayUnavailable(_)) => None,
    };
    if let Some(waited) = waited {
        metrics::histogram!("receiver_payment_gate_wait_seconds").record(waited.as_secs_f64());
    }
    match payment {
        Ok(receipt) if receipt.outcome == PaymentOutcome::Approved => {
            count(&counters.sync_completed);
            Ok(Completed {
                order_id: order.order_id,
                status: OrderStatus::Completed,
                message: "payment completed",
                total: order.total,
                waited_ms: u64::try_from(receipt.waited.as_millis()).unwrap_or(u64::MAX),
            })
        }
        Ok(_declined) => {
            count(&counters.sync_declined);
            Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "payment_declined",
                format!("the payment for order {} was declined", order.order_id),
            ))
        }
        Err(PaymentError::DeadlineExceeded { waited }) => {
            count(&counters.sync_timed_out);
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "payment_timeout",
                format!("no payment slot became free within {waited:?}; nothing was charged"),
            ))
        }
        Err(PaymentError::GatewayUnavailable(reason)) => {
            count(&counters.sync_unavailable);
            Err(ApiError::unavailable(
                "payment_unavailable",
                "the payment gateway is unavailable; nothing was charged, retry later",
                state.config().retry_after,
            )
            .with_detail(reason))
        }
    }
}

/// Checks the content type, reads the body (at most [`MAX_BODY_BYTES`]) and validates it.
async fn read_order(request: Request) -> Result<OrderRequest, ApiError> {
    if !is_json(request.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the order as JSON with `Content-Type: application/json`",
        ));
    }
    let body = tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(request, &()))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
            )
        })?
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the body must be at most {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", rejection.body_text())
            }
        })?;
    OrderRequest::from_json(&body).map_err(|error| match error {
        RequestError::Malformed(reason) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {reason}"),
        ),
        RequestError::Invalid(fields) => ApiError::validation(fields),
    })
}

/// `application/json`, with or without parameters such as `charset=utf-8`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counts a request whose handler was dropped before it was disarmed: the client went away mid-wait, and the
/// guard's drop is the only code that still runs.
struct CountedIfDropped<'a> {
    counter: &'a AtomicU64,
    armed: bool,
}

impl<'a> CountedIfDropped<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        Self { counter, armed: true }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CountedIfDropped<'_> {
    fn drop(&mut self) {
        if self.armed {
            count(self.counter);
        }
    }
}

/// `GET /health`: cheap liveness for the load balancer and the container health check.
pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /stats`: counters as JSON ([`crate::ReceiverStats`]).
pub(crate) async fn stats(State(state): State<AppState>) -> Json<crate::ReceiverStats> {
    Json(state.stats())
}

/// `GET /metrics`: the Prometheus text exposition of the recorder the binary installed.
pub(crate) async fn metrics_text(State(state): State<AppState>) -> Response {
    match state.metrics() {
        Some(handle) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
        }
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "no metrics recorder is installed in this process",
        )
        .into_response(),
    }
}

/// Any other path.
pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A known path with the wrong method (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// Records every request's count and latency by route and status.
pub(crate) async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = Route::of(request.uri().path());
    let request_id = request_id_of(&request);
    let started = Instant::now();
    let mut response = next.run(request).await;
    state.request_metrics().record(route, response.status(), started.elapsed());
    if let Some(ErrorDetail { code, detail }) = response.extensions_mut().remove::<ErrorDetail>() {
        let request_id = request_id.to_str().unwrap_or_default();
        if response.status().is_server_error() {
            tracing::warn!(request_id, status = response.status().as_u16(), code, detail, "request failed");
        } else {
            tracing::debug!(request_id, status = response.status().as_u16(), code, detail, "request refused");
        }
    }
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

/// The header that names a request in both directions: a client may send its own, and every answer carries one.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// The longest client-sent request id kept; a longer or non-printable one is replaced by a fresh UUID.
const MAX_REQUEST_ID_CHARS: usize = 128;

/// The client's `x-request-id` when it is printable ASCII of a sane length, otherwise a new UUID: the id the
/// answer carries and the logs name, so a client can quote it.
fn request_id_of(request: &Request) -> HeaderValue {
    request
        .headers()
        .get(REQUEST_ID)
        .filter(|value| {
            let bytes = value.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= MAX_REQUEST_ID_CHARS
                && bytes.iter().all(|byte| byte.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&Uuid::new_v4().to_string()).expect("a UUID is a valid header value")
        })
}
