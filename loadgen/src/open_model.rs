//! The open model: requests arrive at a constant rate whatever the server does, as real customers do.
//!
//! Request `i` has an *intended* send time, `start + i / rate`. A pacer task releases each request (a
//! ticket) at its intended time; lanes, each owning one keep-alive connection, take tickets in order and send
//! them. When every lane is busy, tickets wait and a new lane is opened, up to `max_connections`. Latency is
//! measured from the intended time, never from the actual send, so a slow server cannot hide its latency by
//! slowing the generator down (no coordinated omission); how late each request was sent is recorded apart, as
//! the scheduling lag, and sends later than the late threshold are counted.
//!
//! The pacer is a task on the same runtime as the lanes, woken by a kernel timer (a Linux timerfd in the
//! runtime's own event loop) rather than tokio's timer wheel, whose 1 ms resolution is too coarse for 10,000
//! requests/s (one every 100 µs). Why not a pacer thread (the first version): every release then had to wake
//! the runtime's thread as well as its own, two wake-ups per tick instead of one, and on a 2-core VM the second
//! put about 1 % of sends over a millisecond late. Each tick releases every ticket that is due, so lag never
//! accumulates. Elsewhere than Linux the pacer falls back to tokio's timer (1 ms resolution).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{Connection, RequestSpec, Target};
use crate::idempotency;
use crate::outcome::{FailureKind, Outcome};
use crate::recorder::Recorder;

/// How many lanes are connected before the first request is due: enough for modest rates without any lane
/// opening on the request path; more are opened as soon as tickets wait.
const INITIAL_LANES: usize = 4;

/// The pacer's shortest sleep. Tickets due within it are released together, so a request is at most this late
/// because of batching (plus the OS's wake-up latency): well inside the 1 ms lag budget.
const PACER_QUANTUM: Duration = Duration::from_micros(200);

/// An open-model load.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenLoad {
    /// Requests per second.
    pub rate: f64,
    /// How long requests keep being scheduled.
    pub duration: Duration,
    /// The most requests in flight at once (one connection each). Needs to be at least rate × the slowest
    /// expected latency, or requests will be sent late (and counted as such).
    pub max_connections: usize,
    /// A request with no answer after this long is a timeout (and a request that could not even be sent
    /// within this long of its intended time is `not_sent`).
    pub timeout: Duration,
}

impl OpenLoad {
    /// The number of requests the schedule holds: rate × duration, rounded.
    pub fn scheduled(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).round() as u64
    }
}

/// What the open model did, beyond what the recorder measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRun {
    /// Requests in the schedule.
    pub scheduled: u64,
    /// Connections (lanes) opened: the concurrency the load needed.
    pub connections: usize,
}

struct Schedule {
    start: Instant,
    interval_nanos: f64,
    total: u64,
}

impl Schedule {
    fn intended(&self, index: u64) -> Instant {
        self.start + Duration::from_nanos((index as f64 * self.interval_nanos) as u64)
    }
}

struct Shared {
    schedule: Schedule,
    /// One permit per released ticket; the pacer adds them, lanes take them.
    tickets: Semaphore,
    /// The next ticket index to hand out.
    next: AtomicU64,
    /// Tickets whose outcome is recorded; the run is over when all are.
    answered: AtomicU64,
    all_answered: Notify,
    lanes: AtomicUsize,
    /// Lanes spawned but not yet waiting for tickets (still connecting).
    starting: AtomicUsize,
    max_lanes: usize,
    target: Target,
    spec: RequestSpec,
    recorder: Arc<Recorder>,
    timeout: Duration,
}

/// Runs an open-model load to its end (or until `stop` is cancelled), then waits for requests in flight.
pub async fn run(
    load: &OpenLoad,
    target: &Target,
    spec: &RequestSpec,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) -> OpenRun {
    assert!(load.rate > 0.0 && load.max_connections > 0, "rate and max_connections must be positive");
    let initial = INITIAL_LANES.min(load.max_connections);
    let mut connections = Vec::with_capacity(initial);
    for lane in 0..initial {
        let mut connection = Connection::new(target.addr_for(lane));
        // A failure here is retried on the lane's first request, and recorded there.
        let _ = connection.connect().await;
        connections.push(connection);
    }
    let shared = Arc::new(Shared {
        schedule: Schedule {
            start: Instant::now(),
            interval_nanos: 1e9 / load.rate,
            total: load.scheduled(),
        },
        tickets: Semaphore::new(0),
        next: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        all_answered: Notify::new(),
        lanes: AtomicUsize::new(initial),
        starting: AtomicUsize::new(0),
        max_lanes: load.max_connections,
        target: target.clone(),
        spec: spec.clone(),
        recorder,
        timeout: load.timeout,
    });
    let tracker = TaskTracker::new();
    for (id, connection) in connections.into_iter().enumerate() {
        tracker.spawn(lane(Arc::clone(&shared), id, connection));
    }
    let stopped = stop.clone();
    // Spawned, not awaited in place: the caller may be a `block_on` thread outside the runtime's workers, and
    // the pacer belongs on the threads the lanes run on.
    let pacer = tokio::spawn(pace(Arc::clone(&shared), tracker.clone(), stop));
    if let Err(error) = pacer.await {
        tracing::error!(%error, "the pacer failed");
        shared.tickets.close();
    }
    // The run is over when every ticket has its outcome, not when every lane has ended: a lane still
    // connecting (a dropped SYN is retried after a whole second) has nothing left to do.
    if shared.answered.load(Ordering::Acquire) < shared.schedule.total {
        tokio::select! {
            _ = shared.all_answered.notified() => {}
            _ = stopped.cancelled() => {}
        }
    }
    shared.tickets.close();
    tracker.close();
    // After a stop, requests in flight get their timeout to finish; lanes still connecting are left behind.
    let _ = tokio::time::timeout(shared.timeout, tracker.wait()).await;
    OpenRun { scheduled: shared.schedule.total, connections: shared.lanes.load(Ordering::Relaxed) }
}

/// Releases tickets at their intended times; opens lanes when released tickets find none waiting.
async fn pace(shared: Arc<Shared>, tracker: TaskTracker, stop: CancellationToken) {
    let schedule = &shared.schedule;
    // One tick per ticket, but never more often than a quantum: at 100,000 requests/s a wake-up per ticket
    // would eat a core.
    let period = Duration::from_nanos(schedule.interval_nanos as u64).max(PACER_QUANTUM);
    let mut ticks = match Ticks::every(period) {
        Ok(ticks) => ticks,
        Err(error) => {
            tracing::error!(%error, "cannot create the pacer's timer");
            shared.tickets.close();
            return;
        }
    };
    let mut released = 0;
    while released < schedule.total {
        let elapsed = schedule.start.elapsed().as_nanos() as f64;
        let due = ((elapsed / schedule.interval_nanos) as u64 + 1).min(schedule.total);
        if due > released {
            shared.tickets.add_permits((due - released) as usize);
            released = due;
            open_lanes_for_waiting_tickets(&shared, &tracker);
        }
        if released < schedule.total {
            tokio::select! {
                ticked = ticks.next() => {
                    if let Err(error) = ticked {
                        tracing::error!(%error, "the pacer's timer failed");
                        shared.tickets.close();
                        return;
                    }
                }
                () = stop.cancelled() => break,
            }
        }
    }
    if stop.is_cancelled() {
        shared.tickets.close();
    } else {
        // One end-of-schedule ticket per lane: a lane drawing an index past the schedule stops.
        shared.tickets.add_permits(shared.max_lanes);
    }
}

fn open_lanes_for_waiting_tickets(shared: &Arc<Shared>, tracker: &TaskTracker) {
    let waiting = shared.tickets.available_permits();
    let starting = shared.starting.load(Ordering::Acquire);
    let lanes = shared.lanes.load(Ordering::Relaxed);
    // At most double the lanes per wake-up: a brief stall must not open hundreds of connections at once, yet
    // a server that stays slow gets the concurrency it needs within a few wake-ups (4 → 512 in 7).
    let growth = lanes.max(1);
    let wanted = waiting.saturating_sub(starting).min(growth).min(shared.max_lanes - lanes);
    for id in lanes..lanes + wanted {
        shared.starting.fetch_add(1, Ordering::AcqRel);
        let mut connection = Connection::new(shared.target.addr_for(id));
        let lane_shared = Arc::clone(shared);
        tracker.spawn(async move {
            // A failed or slow connect is retried, and recorded, on the lane's first request.
            let _ = tokio::time::timeout(lane_shared.timeout, connection.connect()).await;
            lane_shared.starting.fetch_sub(1, Ordering::AcqRel);
            lane(lane_shared, id, connection).await;
        });
    }
    shared.lanes.store(lanes + wanted, Ordering::Relaxed);
}

/// The pacer's clock: a periodic kernel timer in the runtime's event loop, with the kernel's precision.
#[cfg(target_os = "linux")]
struct Ticks {
    timer: tokio::io::unix::AsyncFd<TimerFd>,
}

/// A timerfd, for `AsyncFd` (which asks for `AsRawFd`).
#[cfg(target_os = "linux")]
struct TimerFd(nix::sys::timerfd::TimerFd);

#[cfg(target_os = "linux")]
impl std::os::fd::AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

#[cfg(target_os = "linux")]
impl Ticks {
    /// Ticks every `period`, the first one `period` from now. Must be called within a tokio runtime.
    fn every(period: Duration) -> std::io::Result<Self> {
        use nix::sys::time::{TimeSpec, TimeValLike};
        use nix::sys::timerfd::{ClockId, Expiration, TimerFlags, TimerSetTimeFlags};
        let timer = nix::sys::timerfd::TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        let period = TimeSpec::nanoseconds(i64::try_from(period.as_nanos()).unwrap_or(i64::MAX));
        timer.set(Expiration::Interval(period), TimerSetTimeFlags::empty())?;
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: `TimerFd` owns its descriptor (an `OwnedFd` inside nix's `TimerFd`), which stays open and the
        // same for as long as the `AsyncFd` owns the `TimerFd`; `as_raw_fd` always returns it.
        #[allow(unsafe_code)]
        let timer = unsafe { tokio::io::unix::AsyncFd::register_with_interest(TimerFd(timer), interest) }?;
        Ok(Self { timer })
    }

    /// Waits for the next tick (returns at once if ticks were missed meanwhile).
    async fn next(&mut self) -> std::io::Result<()> {
        loop {
            let mut ready = self.timer.readable().await?;
            // Reading the timer clears it; EAGAIN means the readiness was stale.
            match ready.try_io(|timer| timer.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Elsewhere, tokio's timer: 1 ms resolution, so sends at high rates are up to a millisecond late.
#[cfg(not(target_os = "linux"))]
struct Ticks {
    interval: tokio::time::Interval,
}

#[cfg(not(target_os = "linux"))]
impl Ticks {
    fn every(period: Duration) -> std::io::Result<Self> {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Ok(Self { interval })
    }

    async fn next(&mut self) -> std::io::Result<()> {
        self.interval.tick().await;
        Ok(())
    }
}

async fn lane(shared: Arc<Shared>, id: usize, mut connection: Connection) {
    loop {
        match shared.tickets.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_closed) => return,
        }
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if index >= shared.schedule.total {
            return;
        }
        let intended = shared.schedule.intended(index);
        let lag = Instant::now().saturating_duration_since(intended);
        if lag >= shared.timeout {
            shared.recorder.finished(id, lag, Outcome::Failed(FailureKind::NotSent), None);
        } else {
            shared.recorder.sent(id, Some(lag));
            if let Some(policy) = shared.spec.idempotency() {
                let keyed =
                    idempotency::send(&mut connection, &shared.spec, index, shared.timeout, policy).await;
                shared.recorder.finished_keyed(id, intended.elapsed(), &keyed, Some(lag));
            } else {
                let outcome = connection.exchange(shared.spec.build(index), shared.timeout).await;
                shared.recorder.finished(id, intended.elapsed(), outcome, Some(lag));
            }
        }
        if shared.answered.fetch_add(1, Ordering::AcqRel) + 1 == shared.schedule.total {
            // Stores a permit if the run is not waiting yet, so the last answer is never missed.
            shared.all_answered.notify_one();
        }
    }
}
