//! The embedded pipelines of this process, as the dashboard sees them: [`EmbeddedPipeline::start`] publishes a
//! [`LivePipeline`] of itself here, so a dashboard started once follows each fresh pipeline an experiment
//! starts (compare and scale start one per run) without being told.
//!
//! [`EmbeddedPipeline::start`]: crate::pipeline::EmbeddedPipeline::start

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use bus::embedded::EmbeddedStack;
use ledger::embedded::EmbeddedLedger;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use worker::WorkerHandle;

/// What the dashboard reads of one embedded pipeline: cheap clones of its parts, no copy of its data.
#[derive(Clone)]
pub struct LivePipeline {
    /// Numbered in start order by [`publish`]: tells one pipeline from the next when their counters restart.
    pub id: u64,
    /// The receiver's address: order lookups, and how a dashboard pins one pipeline.
    pub receiver: SocketAddr,
    /// The receiver's state, for its counters (accepted, sync paid and timed out).
    pub receiver_state: receiver::AppState,
    /// The topic, queue and DLQ.
    pub stack: EmbeddedStack,
    /// The ledger: order records and the worker registry.
    pub ledger: Arc<EmbeddedLedger>,
    /// The pipeline's running worker now (a crash replaces it).
    pub worker: Arc<dyn Fn() -> WorkerHandle + Send + Sync>,
    /// Cancelled when the pipeline shuts down.
    pub stopped: CancellationToken,
}

impl LivePipeline {
    /// Whether the pipeline still runs.
    pub fn is_live(&self) -> bool {
        !self.stopped.is_cancelled()
    }
}

/// The pipelines started in this process and not yet seen stopped, oldest first.
static PIPELINES: LazyLock<watch::Sender<Vec<LivePipeline>>> = LazyLock::new(|| watch::channel(Vec::new()).0);

/// Publishes a pipeline that just started (its `id` is assigned here), and forgets the stopped ones.
pub fn publish(mut pipeline: LivePipeline) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    pipeline.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    PIPELINES.send_modify(|pipelines| {
        pipelines.retain(LivePipeline::is_live);
        pipelines.push(pipeline);
    });
}

/// Which of the process's pipelines a dashboard follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// The newest one still running: whatever the command runs now.
    Newest,
    /// The one whose receiver listens at this address (a test's own, among other tests' pipelines).
    Receiver(SocketAddr),
}

/// The pipeline `follow` designates now, if one runs. Stopped pipelines are forgotten on the way, so their
/// stores are not kept alive by the list.
pub fn current(follow: Follow) -> Option<LivePipeline> {
    PIPELINES.send_if_modified(|pipelines| {
        let before = pipelines.len();
        pipelines.retain(LivePipeline::is_live);
        pipelines.len() != before
    });
    let pipelines = PIPELINES.borrow();
    match follow {
        Follow::Newest => pipelines.last().cloned(),
        Follow::Receiver(address) => pipelines.iter().rev().find(|p| p.receiver == address).cloned(),
    }
}
