//! Looking inside the system under load: the queue's depth and the worker's statistics.
//!
//! The queue is read through the bus port's `Consumer::stats` (the embedded queue in process, or SQS through
//! `bus::aws` with `--queue-url`), so visible and in-flight messages are counted the same way everywhere. The
//! worker is read from its `/stats` JSON, over HTTP (`--worker-url`) or straight from an in-process handle.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bus::{Consumer, QueueStats};
use hyper::Method;
use loadgen::client::{Connection, RequestSpec, Target};
use serde::{Deserialize, Serialize};

/// How long a probe may take before the sample is skipped: a stuck probe must not stall the timeline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Something that can report the worker's `/stats` JSON.
#[async_trait]
pub trait WorkerStatsSource: Send + Sync + 'static {
    /// The worker's statistics, or `None` when they cannot be read right now.
    async fn stats(&self) -> Option<serde_json::Value>;
}

/// The worker's statistics read over HTTP from `GET {url}/stats`.
pub struct WorkerUrl {
    request: RequestSpec,
    connection: tokio::sync::Mutex<Connection>,
}

impl WorkerUrl {
    /// A stats reader for the worker at `target` (its base URL, e.g. `http://10.0.10.5:8081`).
    pub fn new(target: &Target) -> WorkerUrl {
        WorkerUrl {
            request: target.request(Method::GET, "/stats", Vec::new()),
            connection: tokio::sync::Mutex::new(Connection::new(target.addr_for(0))),
        }
    }
}

#[async_trait]
impl WorkerStatsSource for WorkerUrl {
    async fn stats(&self) -> Option<serde_json::Value> {
        let mut connection = self.connection.lock().await;
        let (status, body) = connection.fetch(self.request.build(0), PROBE_TIMEOUT).await.ok()?;
        if !status.is_success() {
            return None;
        }
        serde_json::from_slice(&body).ok()
    }
}

/// The probes available for a run; either may be absent (a deployed stack without `--queue-url`).
#[derive(Clone, Default)]
pub struct Probes {
    /// The orders queue.
    pub queue: Option<Arc<dyn Consumer>>,
    /// The worker.
    pub worker: Option<Arc<dyn WorkerStatsSource>>,
}

impl Probes {
    /// The queue's depth now, or `None` (no queue probe, or it failed or timed out).
    pub async fn queue_stats(&self) -> Option<QueueStats> {
        let queue = self.queue.as_ref()?;
        tokio::time::timeout(PROBE_TIMEOUT, queue.stats()).await.ok()?.ok()
    }

    /// The worker's statistics now, or `None`.
    pub async fn worker_stats(&self) -> Option<WorkerSnapshot> {
        let worker = self.worker.as_ref()?;
        let raw = tokio::time::timeout(PROBE_TIMEOUT, worker.stats()).await.ok()??;
        Some(WorkerSnapshot::from_json(raw))
    }
}

/// The parts of the worker's `/stats` the load tool uses, plus the whole JSON as it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    /// Orders finished with a business outcome (completed + declined): what drains the queue.
    pub processed: Option<u64>,
    /// End-to-end latency (accepted_at → processed) as the worker reports it: `{count,p50,p95,p99,max}` in ms.
    pub end_to_end_ms: Option<serde_json::Value>,
    /// Processing time per order, as the worker reports it.
    pub processing_ms: Option<serde_json::Value>,
    /// The whole `/stats` document.
    pub raw: serde_json::Value,
}

impl WorkerSnapshot {
    /// Picks the known fields out of the worker's `/stats` JSON; unknown shapes leave them `None`.
    pub fn from_json(raw: serde_json::Value) -> WorkerSnapshot {
        let count = |name: &str| raw.get(name).and_then(serde_json::Value::as_u64);
        let processed = match (count("completed"), count("declined")) {
            (Some(completed), declined) => Some(completed + declined.unwrap_or(0)),
            (None, _) => None,
        };
        WorkerSnapshot {
            processed,
            end_to_end_ms: raw.get("end_to_end_ms").cloned(),
            processing_ms: raw.get("processing_ms").cloned(),
            raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_snapshot_counts_completed_and_declined_as_processed() {
        let snapshot = WorkerSnapshot::from_json(serde_json::json!({
            "completed": 95, "declined": 5, "end_to_end_ms": {"count": 100, "p50": 3.0}
        }));
        assert_eq!(snapshot.processed, Some(100));
        assert_eq!(snapshot.end_to_end_ms.unwrap()["count"], 100);
        assert_eq!(WorkerSnapshot::from_json(serde_json::json!({"other": 1})).processed, None);
    }
}
