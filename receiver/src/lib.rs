//! The receiver: the HTTP front door of orderflow.
//!
//! - `POST /orders/async` validates an order, writes its pending record to the order ledger
//!   ([`ledger::Ledger`]), publishes it to the bus through a micro-batcher ([`PublishBatcher`]) and answers
//!   `202 Accepted` only once the bus has acknowledged it (503 with `Retry-After` otherwise: an order is never
//!   claimed that was not published).
//! - `GET /orders/{id}` answers the order's ledger record: 200 with it, 404 `order_not_found`, 400
//!   `invalid_order_id` for an id that is not a UUID, 503 `ledger_unavailable`. One key lookup; not subject to
//!   the order endpoints' concurrency limits.
//! - `POST /orders/sync` is the synchronous baseline: it waits for the process-wide payment gate with a deadline
//!   and answers 200 (paid), 402 (declined) or 504 (no slot in time). Its throughput is `slots / latency`.
//! - `GET /health`; and on a separate admin port ([`admin_app`], which the load balancer does not reach):
//!   `GET /stats` ([`ReceiverStats`]), `GET /metrics` (Prometheus text).
//!
//! Every error is `{"error": {"code", "message", "fields"?}}` ([`ApiError`]). Each order endpoint has a
//! concurrency limit beyond which requests get a fast 503 instead of queueing without bound.
//!
//! # What each failure of `POST /orders/async` leaves behind
//!
//! The record is written *before* the publish, so that the order can be looked up the moment its 202 is sent
//! (read-your-writes). The client is told 202 only if both the write and the publish succeeded.
//!
//! 1. **The ledger write fails** (an error, no answer within [`Config::ledger_timeout`], or the id is taken):
//!    503 `ledger_unavailable` with `Retry-After`, nothing is published, and there is no record. If the write
//!    failed in a way that may have been applied after all (a timeout, a lost answer), the record is marked
//!    failed as in 2, so it does not linger as pending.
//! 2. **The write succeeded, the publish was refused or timed out**: 503 (`bus_unavailable`, or
//!    `shutting_down`), and the record is marked `failed` with the reason in `last_error` by a background task
//!    ([`ledger::Ledger::abandon`], a few retries with backoff). A timed-out publish may still reach SNS; the
//!    worker then finds a failed order and deletes the message without charging: the client was told "not
//!    accepted" and is never charged. The one race: a worker that claims the order before the abandon lands
//!    processes it (the abandon changes nothing and is logged at warn level), although its client was told 503.
//! 3. **The write and the publish succeeded, but the client went away before the 202 reached it**: the 202 is
//!    lost, the order is processed, and `GET /orders/{id}` shows it. A client that goes away *before* the bus
//!    acknowledged is treated as 2 (its unsent message is dropped, its record marked failed).
//! 4. **The publish failed and marking the record failed failed too** (the ledger is down as well, every retry
//!    spent): the record stays `pending` until it expires ([`ledger::DEFAULT_RETENTION`] after its write).
//!    Each such order is logged at error level with its id and counted in `async.abandon_failures` of
//!    `/stats` and `receiver_unaccepted_left_pending_total`.
//!
//! Ledger failures are counted in `async.ledger_failures` (503s of `POST /orders/async`) and, by operation and
//! kind, in `receiver_ledger_failures_total`.
//!
//! The binary is a thin shell around [`run`]: it parses flags (the tuning ones are [`Config`]), installs the
//! metrics recorder with [`METRIC_BUCKETS`], builds the SNS publisher and the DynamoDB ledger, and turns
//! SIGTERM/SIGINT into the shutdown future ([`service_shell`]).

use std::future::Future;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use service_shell::prometheus::{Buckets, MetricName, bucket_sets};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod batcher;
mod config;
mod error;
mod idempotency;
mod records;
mod request_metrics;
mod routes;
mod server;
mod state;

pub use config::{Config, MAX_BODY_BYTES};
pub use error::ApiError;
pub use state::{AppState, AsyncStats, ReceiverStats, SyncStats};

/// The buckets of the receiver's histograms, for [`service_shell::prometheus::install`] in every process that
/// hosts a receiver: latencies from half a millisecond (an answer) to 30 s (a stalled publish), and publish batch
/// sizes 1 to 10.
pub const METRIC_BUCKETS: &[Buckets] = &[
    Buckets {
        metric: MetricName::Exact("receiver_http_request_duration_seconds"),
        bounds: bucket_sets::CALL_SECONDS,
    },
    Buckets {
        metric: MetricName::Exact("receiver_publish_duration_seconds"),
        bounds: bucket_sets::CALL_SECONDS,
    },
    Buckets {
        metric: MetricName::Exact("receiver_payment_gate_wait_seconds"),
        bounds: bucket_sets::CALL_SECONDS,
    },
    Buckets { metric: MetricName::Exact("receiver_publish_batch_size"), bounds: bucket_sets::BATCH_ENTRIES },
];

/// The receiver's public routes (the orders API and `/health`), with request metrics, the body limit and JSON
/// 404/405 answers. `/stats` and `/metrics` are not among them: they are on [`admin_app`], a port the load
/// balancer does not route to.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/orders/async", post(routes::accept_async))
        .route("/orders/sync", post(routes::pay_sync))
        .route("/orders/{id}", get(routes::get_order))
        .route("/health", get(routes::health))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::record_request))
        .with_state(state)
}

/// The operators' routes, for a port only the inside of the deployment reaches: `/stats`, `/metrics` (rendered
/// on request, outside the order endpoints' admission limits) and `/health`.
pub fn admin_app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/stats", get(routes::stats))
        .route("/metrics", get(routes::metrics_text))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::record_request))
        .with_state(state)
}

/// Serves [`admin_app`] on `listener` until `shutdown` completes, then stops at once: it holds no work that
/// needs draining.
pub async fn serve_admin(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, admin_app(state)).with_graceful_shutdown(shutdown).await
}

/// Serves [`app`] on `listener` until `shutdown` completes, then shuts down gracefully: stops accepting
/// connections, lets in-flight requests finish, flushes pending publishes, and lets the records of unaccepted
/// orders be marked failed, all within [`Config::shutdown_deadline`] of the signal.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = CancellationToken::new();
    let state_for_server = state.clone();
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    };
    let limits = server::ConnectionLimits {
        header_read_timeout: state.config().header_read_timeout,
        max_connections: state.config().max_connections,
    };
    let server = async move {
        server::serve(listener, app(state_for_server), limits, signal).await;
        Ok::<(), std::io::Error>(())
    };
    tokio::pin!(server);
    let deadline = tokio::select! {
        result = &mut server => {
            // Only an I/O error ends the server before the signal; still flush what was accepted.
            let deadline = Instant::now() + state.config().shutdown_deadline;
            state.batcher().close(deadline).await;
            state.finish_background(deadline).await;
            return result;
        }
        () = stopping.cancelled() => Instant::now() + state.config().shutdown_deadline,
    };
    tracing::info!(deadline = ?state.config().shutdown_deadline, "shutting down: finishing in-flight requests");
    match tokio::time::timeout_at(deadline, &mut server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("in-flight requests did not finish before the shutdown deadline"),
    }
    if state.batcher().close(deadline).await {
        tracing::info!("shutdown complete: every pending publish was flushed");
    } else {
        tracing::warn!("pending publishes did not finish before the shutdown deadline");
    }
    if !state.finish_background(deadline).await {
        tracing::error!(
            "some unaccepted orders were not marked failed before the shutdown deadline: they stay pending until \
             they expire"
        );
    }
    Ok(())
}
