//! Spawning the worker's tasks so that they can be awaited at shutdown and die with the worker.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns tasks into a tracker (so shutdown can wait for them) and ties them to a kill token (so dropping the
/// worker's `run` future, like a crash, stops them where they are without further side effects).
#[derive(Clone)]
pub(crate) struct Spawner {
    tracker: TaskTracker,
    kill: CancellationToken,
}

impl Spawner {
    pub(crate) fn new(kill: CancellationToken) -> Self {
        Self { tracker: TaskTracker::new(), kill }
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let kill = self.kill.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = kill.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Tasks still running.
    pub(crate) fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Waits for every task spawned so far and any spawned later; call once no more will be spawned.
    pub(crate) async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}
