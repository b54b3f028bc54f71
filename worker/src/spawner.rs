//! Spawning the worker's tasks so that shutdown can wait for them and a dropped worker leaves none behind.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns tasks into a tracker, so shutdown can wait for them.
#[derive(Clone)]
pub(crate) struct Spawner {
    tracker: TaskTracker,
    /// When set, every task stops at once when this token is cancelled: dropping the worker's `run` future, like
    /// a crash, stops them where they are without further side effects.
    kill: Option<CancellationToken>,
}

impl Spawner {
    /// Tasks that stop at once when `kill` is cancelled (pollers, batchers).
    pub(crate) fn killable(kill: CancellationToken) -> Self {
        Self { tracker: TaskTracker::new(), kill: Some(kill) }
    }

    /// Tasks that watch for the kill themselves. Processing tasks do, at their payment, which keeps a second
    /// cancellation wait off the path every message takes.
    pub(crate) fn self_stopping() -> Self {
        Self { tracker: TaskTracker::new(), kill: None }
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        match self.kill.clone() {
            Some(kill) => {
                self.tracker.spawn(async move {
                    kill.run_until_cancelled(task).await;
                });
            }
            None => {
                self.tracker.spawn(task);
            }
        }
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
