//! The worker's operational HTTP port: `/health`, `/stats`, `/metrics`.

use std::future::Future;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::WorkerHandle;

#[derive(Clone)]
struct HttpState {
    worker: WorkerHandle,
    metrics: Option<PrometheusHandle>,
}

/// The routes: `GET /health` (200 while the process serves; says whether it is draining), `GET /stats`
/// ([`WorkerStats`](crate::WorkerStats) as JSON) and `GET /metrics` (Prometheus text, when the binary
/// installed a recorder and passed its handle; 404 otherwise).
pub fn http_app(worker: WorkerHandle, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/metrics", get(prometheus))
        .with_state(HttpState { worker, metrics })
}

/// Serves [`http_app`] on `listener` until `shutdown` completes.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    worker: WorkerHandle,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, http_app(worker, metrics)).with_graceful_shutdown(shutdown).await
}

async fn health(State(state): State<HttpState>) -> Json<serde_json::Value> {
    let status = if state.worker.is_draining() { "draining" } else { "ok" };
    Json(json!({ "status": status }))
}

async fn stats(State(state): State<HttpState>) -> Json<crate::WorkerStats> {
    Json(state.worker.stats())
}

async fn prometheus(State(state): State<HttpState>) -> Response {
    let Some(metrics) = &state.metrics else {
        let body = Json(json!({ "error": "metrics are not enabled in this process" }));
        return (StatusCode::NOT_FOUND, body).into_response();
    };
    state.worker.publish_gauges();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()).into_response()
}
