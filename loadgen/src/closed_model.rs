//! The closed model: a fixed number of users, each sending a request, waiting for the answer, pausing, and
//! sending the next — exactly what Locust does, so results compare with the original lab's.
//!
//! A slow server slows the users down, so the offered load falls as latency rises; that is why the open model
//! exists too. Latency here is measured from each request's send. Users are started at `spawn_rate` per second;
//! at the end of the run requests still in flight are abandoned, as Locust does, and counted apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Connection, RequestSpec, Target};
use crate::idempotency::{self, Keyed};
use crate::outcome::Outcome;
use crate::recorder::Recorder;

/// The pause a user takes between an answer and its next request, drawn uniformly from `min..=max`
/// (Locust's `between(min, max)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitRange {
    /// Shortest pause.
    pub min: Duration,
    /// Longest pause.
    pub max: Duration,
}

impl WaitRange {
    /// Draws one pause.
    pub fn draw(&self) -> Duration {
        let (min, max) = (self.min.as_nanos() as u64, self.max.as_nanos().max(self.min.as_nanos()) as u64);
        Duration::from_nanos(fastrand::u64(min..=max))
    }
}

/// A closed-model load.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedLoad {
    /// Concurrent users (each with its own keep-alive connection).
    pub users: usize,
    /// Users started per second until all run.
    pub spawn_rate: f64,
    /// Pause between an answer and the next request.
    pub wait: WaitRange,
    /// Run time, counted from the first user's start.
    pub duration: Duration,
    /// A request with no answer after this long is a timeout.
    pub timeout: Duration,
}

/// What the closed model did, beyond what the recorder measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedRun {
    /// Requests still in flight when the run ended, dropped unanswered and not counted as outcomes.
    pub abandoned: u64,
}

/// Runs a closed-model load to its end (or until `stop` is cancelled). `active_users` tracks how many users
/// are running, for timelines and progress.
pub async fn run(
    load: &ClosedLoad,
    target: &Target,
    spec: &RequestSpec,
    recorder: Arc<Recorder>,
    active_users: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> ClosedRun {
    let start = Instant::now();
    let deadline = start + load.duration;
    let sequence = Arc::new(AtomicU64::new(0));
    let abandoned = Arc::new(AtomicU64::new(0));
    let tracker = TaskTracker::new();
    for id in 0..load.users {
        let user = User {
            id,
            spec: spec.clone(),
            connection: Connection::new(target.addr_for(id)),
            recorder: Arc::clone(&recorder),
            sequence: Arc::clone(&sequence),
            abandoned: Arc::clone(&abandoned),
            active_users: Arc::clone(&active_users),
            wait: load.wait,
            timeout: load.timeout,
            deadline,
        };
        let starts_at = start
            + Duration::from_secs_f64(id as f64 / load.spawn_rate.max(f64::MIN_POSITIVE)).min(load.duration);
        let stop = stop.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep_until(starts_at) => user.run(stop).await,
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    ClosedRun { abandoned: abandoned.load(Ordering::Relaxed) }
}

/// How a user's request ended: a plain exchange, or a keyed request with its retries.
enum Answer {
    Plain(Outcome),
    Keyed(Keyed),
}

struct User {
    id: usize,
    spec: RequestSpec,
    connection: Connection,
    recorder: Arc<Recorder>,
    sequence: Arc<AtomicU64>,
    abandoned: Arc<AtomicU64>,
    active_users: Arc<AtomicUsize>,
    wait: WaitRange,
    timeout: Duration,
    deadline: Instant,
}

impl User {
    async fn run(mut self, stop: CancellationToken) {
        self.active_users.fetch_add(1, Ordering::Relaxed);
        let end = tokio::time::sleep_until(self.deadline);
        tokio::pin!(end);
        while Instant::now() < self.deadline {
            let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
            let (connection, spec, timeout) = (&mut self.connection, &self.spec, self.timeout);
            let sent_at = Instant::now();
            self.recorder.sent(self.id, None);
            let answer = async move {
                match spec.idempotency() {
                    None => Answer::Plain(connection.exchange(spec.build(seq), timeout).await),
                    Some(policy) => {
                        Answer::Keyed(idempotency::send(connection, spec, seq, timeout, policy).await)
                    }
                }
            };
            let answer = tokio::select! {
                answer = answer => answer,
                _ = &mut end => {
                    self.abandoned.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                _ = stop.cancelled() => break,
            };
            match answer {
                Answer::Plain(outcome) => self.recorder.finished(self.id, sent_at.elapsed(), outcome, None),
                // The latency of a keyed request covers all its attempts.
                Answer::Keyed(keyed) => {
                    self.recorder.finished_keyed(self.id, sent_at.elapsed(), &keyed, None)
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.wait.draw()) => {}
                _ = &mut end => break,
                _ = stop.cancelled() => break,
            }
        }
        self.active_users.fetch_sub(1, Ordering::Relaxed);
    }
}
