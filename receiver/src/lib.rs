//! The receiver: the HTTP front door of orderflow.
//!
//! - `POST /orders/async` validates an order, publishes it to the bus through a micro-batcher
//!   ([`PublishBatcher`]) and answers `202 Accepted` only once the bus has acknowledged it (503 with
//!   `Retry-After` otherwise: an order is never claimed that was not published).
//! - `POST /orders/sync` is the synchronous baseline: it waits for the process-wide payment gate with a deadline
//!   and answers 200 (paid), 402 (declined) or 504 (no slot in time). Its throughput is `slots / latency`.
//! - `GET /health`, `GET /stats` ([`ReceiverStats`]), `GET /metrics` (Prometheus text).
//!
//! Every error is `{"error": {"code", "message", "fields"?}}` ([`ApiError`]). Each order endpoint has a
//! concurrency limit beyond which requests get a fast 503 instead of queueing without bound.
//!
//! The binary is a thin shell around [`run`]: it parses flags, installs the metrics recorder, picks the bus, and
//! turns SIGTERM/SIGINT into the shutdown future.

use std::future::{Future, IntoFuture};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod batcher;
mod config;
mod error;
mod request_metrics;
mod routes;
mod state;

pub use batcher::{BatcherSettings, PublishBatcher, PublishCounters, PublishError};
pub use config::{Config, MAX_BODY_BYTES};
pub use error::ApiError;
pub use state::{AppState, AsyncStats, ReceiverStats, SyncStats};

/// How often [`spawn_metrics_upkeep`] folds recorded samples into the Prometheus histograms (1 s).
pub const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts a thread that folds the Prometheus recorder's raw samples into its histograms every
/// [`METRICS_UPKEEP_INTERVAL`], so memory stays flat when nobody scrapes `/metrics`.
///
/// Why a thread and why every second: the recorder keeps every sample until upkeep; at 70,000 requests/s, five
/// seconds of them took tens of milliseconds to fold, and on a runtime worker that pause landed in the request
/// latency tail (p99 at 10,000 orders/s went from ~3 ms to 12–23 ms in receiver/benches/http.rs). On its own
/// thread the OS preempts it instead.
pub fn spawn_metrics_upkeep(handle: metrics_exporter_prometheus::PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(METRICS_UPKEEP_INTERVAL);
            handle.run_upkeep();
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the metrics upkeep thread; /metrics memory will grow until scraped");
    }
}

/// The receiver's routes, with request metrics, the body limit and JSON 404/405 answers.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/orders/async", post(routes::accept_async))
        .route("/orders/sync", post(routes::pay_sync))
        .route("/health", get(routes::health))
        .route("/stats", get(routes::stats))
        .route("/metrics", get(routes::metrics_text))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::record_request))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then shuts down gracefully: stops accepting
/// connections, lets in-flight requests finish, and flushes pending publishes, all within
/// [`Config::shutdown_deadline`] of the signal.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = CancellationToken::new();
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    };
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(signal).into_future();
    tokio::pin!(server);
    let deadline = tokio::select! {
        result = &mut server => {
            // Only an I/O error ends the server before the signal; still flush what was accepted.
            let deadline = Instant::now() + state.config().shutdown_deadline;
            state.batcher().close(deadline).await;
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
    Ok(())
}
