//! A circuit breaker around the payment gateway that pauses the worker's receives while the gateway is down.
//!
//! ```text
//!            failure rate ≥ threshold over the window (≥ minimum calls)
//!   closed ────────────────────────────────────────────────────────────▶ open ── wait (grows ×2, capped, jittered)
//!     ▲                                                                  ▲  │
//!     │ every probe succeeded                     a probe failed         │  ▼
//!     └──────────────────────────────── half-open ───────────────────────┘
//!                                 (only `probes` messages are received)
//! ```
//!
//! The semantics are Resilience4j's (a count-based sliding window, a failure-rate threshold, a minimum number
//! of calls, a wait in open, permitted calls in half-open); the consumer side is Spring Cloud AWS's
//! back-pressure handler and MassTransit's kill switch: while open the pollers do not receive at all, so an
//! outage spends no message's receive count and nothing drifts towards the dead-letter queue.
//!
//! In half-open a poller receives only as many messages as there are probe permits ([`Probe`]); a probe that
//! never reaches the gateway (a duplicate, poison, a message claimed elsewhere) gives its permit back when it
//! is dropped, and so does a call abandoned before its verdict ([`Call`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// The breaker's tuning. `Default` is what the worker runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Off: every call goes through and failures only follow the retry backoff (the behaviour a worker had
    /// before it had a breaker; experiments use it for contrast).
    pub enabled: bool,
    /// The failure rate (0–1) over the window at which the breaker opens. Half is Resilience4j's default: a
    /// gateway failing that often is down, not flaky.
    pub failure_rate: f64,
    /// How many of the latest payment calls the failure rate is computed over. Small enough that one worker
    /// (a payment every few seconds per consumer) notices an outage within a minute.
    pub window: usize,
    /// Calls needed in the window before the rate counts, so a couple of early failures do not open it.
    pub minimum_calls: usize,
    /// The first wait in open before probing; each reopening doubles it.
    pub open_wait: Duration,
    /// The longest wait in open, so a recovered gateway is noticed within this long.
    pub max_open_wait: Duration,
    /// Payments let through in half-open; all must succeed to close.
    pub probes: usize,
    /// Start half-open: a worker proves the gateway with the probes before it takes full batches, so a worker
    /// (re)started during an outage spends only the probes' receives instead of a window's worth.
    pub start_probing: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_rate: 0.5,
            window: 20,
            minimum_calls: 10,
            open_wait: Duration::from_secs(10),
            max_open_wait: Duration::from_secs(60),
            probes: 3,
            start_probing: true,
        }
    }
}

impl BreakerConfig {
    /// Checks the settings that would make the breaker never open or never close.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err("breaker failure rate must be above 0 and at most 1".into());
        }
        if self.window == 0 || self.minimum_calls == 0 || self.minimum_calls > self.window {
            return Err("breaker minimum calls must be between 1 and the window".into());
        }
        if self.probes == 0 {
            return Err("breaker probes must be at least 1".into());
        }
        if self.open_wait.is_zero() || self.max_open_wait < self.open_wait {
            return Err("breaker open wait must be positive and at most the max open wait".into());
        }
        Ok(())
    }

    /// The wait in open after `reopenings` consecutive failed probes: `open_wait × 2^reopenings`, capped,
    /// then jittered down by up to a fifth so that a fleet of workers does not probe in step.
    fn wait(&self, reopenings: u32) -> Duration {
        let ceiling = self.open_wait.saturating_mul(1u32 << reopenings.min(20)).min(self.max_open_wait);
        ceiling.mul_f64(1.0 - JITTER * fastrand::f64())
    }
}

/// The share of an open wait that jitter may take off.
const JITTER: f64 = 0.2;

/// The breaker's state, as `/stats`, the metrics and the logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Payments go through; their outcomes fill the window.
    Closed,
    /// The gateway is considered down: no receives, held messages go back to the queue with a delay.
    Open,
    /// A few probe payments decide whether to close or reopen.
    HalfOpen,
}

impl BreakerState {
    /// The name used in logs and the registry.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// The value of the `worker_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// The breaker in `/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerStats {
    /// Whether the worker runs with a breaker at all.
    pub enabled: bool,
    /// The current state.
    pub state: BreakerState,
    /// State changes so far.
    pub transitions: u64,
    /// Times it opened (from closed or half-open).
    pub opened: u64,
    /// Total time spent open or half-open, in milliseconds (the current stretch included).
    pub time_open_ms: u64,
    /// The failure rate over the current closed window (0 while it holds fewer than the minimum calls).
    pub failure_rate: f64,
    /// Messages handed back to the queue with a delay because the breaker was not closed.
    pub deferred: u64,
}

/// Whether a payment may go ahead.
pub(crate) enum Admission {
    /// Pay, and [`record`](Breaker::record) the verdict on this call.
    Go(Call),
    /// Do not pay: hand the message back to the queue for at least this long.
    Rejected {
        /// Until the breaker will next probe.
        retry_after: Duration,
    },
}

/// A payment let through by the breaker; dropping it without a verdict (shutdown, a ledger error, a crash)
/// returns a half-open probe permit.
pub(crate) struct Call {
    breaker: Option<Arc<Breaker>>,
    generation: u64,
}

/// A half-open probe permit, handed out with the receive allowance and carried by the message it was
/// received for. Dropped unused, it goes back to the breaker.
pub(crate) struct Probe {
    breaker: Arc<Breaker>,
    generation: u64,
}

/// The circuit breaker. Cheap to share; every method takes a short lock.
pub(crate) struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// Bumped on every transition, so waiting pollers wake and re-ask.
    changes: watch::Sender<u64>,
    state_gauge: metrics::Gauge,
    opened_counter: metrics::Counter,
    half_opened_counter: metrics::Counter,
    closed_counter: metrics::Counter,
    deferred_counter: metrics::Counter,
}

struct Inner {
    state: Phase,
    /// Which stretch of a state a call or probe belongs to: verdicts from an earlier one are ignored.
    generation: u64,
    transitions: u64,
    opened: u64,
    time_open: Duration,
    /// When the current open/half-open stretch began.
    open_since: Option<Instant>,
    deferred: u64,
}

enum Phase {
    Closed { outcomes: VecDeque<bool>, failures: usize },
    Open { until: Instant, reopenings: u32 },
    HalfOpen { permits: usize, succeeded: usize, reopenings: u32 },
}

impl Breaker {
    /// A breaker, half-open if `config.start_probing`, else closed. Its metric handles come from the recorder
    /// installed now.
    pub(crate) fn new(config: BreakerConfig) -> Arc<Self> {
        let (changes, _) = watch::channel(0);
        let transitions =
            |to: &'static str| metrics::counter!("worker_breaker_transitions_total", "to" => to);
        let breaker = Self {
            inner: Mutex::new(Inner {
                state: if config.enabled && config.start_probing {
                    Phase::HalfOpen { permits: config.probes, succeeded: 0, reopenings: 0 }
                } else {
                    Phase::Closed { outcomes: VecDeque::with_capacity(config.window), failures: 0 }
                },
                generation: 0,
                transitions: 0,
                opened: 0,
                time_open: Duration::ZERO,
                open_since: None,
                deferred: 0,
            }),
            config,
            changes,
            state_gauge: metrics::gauge!("worker_breaker_state"),
            opened_counter: transitions("open"),
            half_opened_counter: transitions("half-open"),
            closed_counter: transitions("closed"),
            deferred_counter: metrics::counter!("worker_breaker_deferred_total"),
        };
        let initial = breaker.lock().state.name();
        breaker.state_gauge.set(initial.gauge());
        Arc::new(breaker)
    }

    /// The state now (an open breaker whose wait is over is half-open).
    pub(crate) fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.advance(&mut inner, Instant::now());
        inner.state.name()
    }

    /// A snapshot for `/stats`.
    pub(crate) fn stats(&self) -> BreakerStats {
        let now = Instant::now();
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let failure_rate = match &inner.state {
            Phase::Closed { outcomes, failures } if outcomes.len() >= self.config.minimum_calls => {
                *failures as f64 / outcomes.len() as f64
            }
            _ => 0.0,
        };
        BreakerStats {
            enabled: self.config.enabled,
            state: inner.state.name(),
            transitions: inner.transitions,
            opened: inner.opened,
            time_open_ms: (inner.time_open + inner.open_since.map_or(Duration::ZERO, |since| now - since))
                .as_millis() as u64,
            failure_rate,
            deferred: inner.deferred,
        }
    }

    /// How many messages a poller may receive now, at most `max`; waits while the breaker is open, and in
    /// half-open while every probe permit is out. In half-open the allowance comes as probe permits, one per
    /// message to receive.
    pub(crate) async fn allowance(self: &Arc<Self>, max: usize) -> Allowance {
        if !self.config.enabled {
            return Allowance::Closed(max);
        }
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            let wake_at = {
                let mut inner = self.lock();
                let now = Instant::now();
                self.advance(&mut inner, now);
                let generation = inner.generation;
                match &mut inner.state {
                    Phase::Closed { .. } => return Allowance::Closed(max),
                    Phase::HalfOpen { permits, .. } if *permits > 0 => {
                        let taken = (*permits).min(max);
                        *permits -= taken;
                        let probes =
                            (0..taken).map(|_| Probe { breaker: Arc::clone(self), generation }).collect();
                        return Allowance::Probes(probes);
                    }
                    Phase::HalfOpen { .. } => None,
                    Phase::Open { until, .. } => Some(*until),
                }
            };
            match wake_at {
                Some(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        _ = changes.changed() => {}
                    }
                }
                None => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    /// Completes when the breaker leaves the closed state (or at once if it is not closed): a poller drops
    /// a pending long poll then, so it does not take messages it would only hand back.
    pub(crate) async fn opened(&self) {
        if !self.config.enabled {
            return std::future::pending().await;
        }
        let mut changes = self.changes.subscribe();
        loop {
            if !matches!(self.lock().state, Phase::Closed { .. }) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Whether a payment may go ahead now. A message received in half-open carries its `probe`; any other
    /// message is held back until the breaker closes.
    pub(crate) fn admit(self: &Arc<Self>, probe: Option<Probe>) -> Admission {
        if !self.config.enabled {
            return Admission::Go(Call { breaker: None, generation: 0 });
        }
        let now = Instant::now();
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let generation = inner.generation;
        let retry_after = match &inner.state {
            Phase::Closed { .. } => {
                drop(inner);
                drop(probe);
                return Admission::Go(Call { breaker: Some(Arc::clone(self)), generation });
            }
            Phase::HalfOpen { .. } => match probe {
                Some(mut probe) if probe.generation == generation => {
                    // The permit passes from the probe to the call.
                    probe.generation = u64::MAX;
                    return Admission::Go(Call { breaker: Some(Arc::clone(self)), generation });
                }
                _ => self.config.open_wait,
            },
            Phase::Open { until, .. } => *until - now,
        };
        inner.deferred += 1;
        self.deferred_counter.increment(1);
        Admission::Rejected { retry_after }
    }

    /// Records the verdict of a payment let through by [`admit`](Self::admit): `true` if the gateway answered
    /// (approved or declined), `false` if it failed. Returns the state afterwards.
    pub(crate) fn record(&self, mut call: Call, succeeded: bool) -> BreakerState {
        let Some(breaker) = call.breaker.take() else {
            return BreakerState::Closed;
        };
        debug_assert!(std::ptr::eq(Arc::as_ptr(&breaker), self));
        let now = Instant::now();
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        if call.generation != inner.generation {
            return inner.state.name();
        }
        let config = &self.config;
        match &mut inner.state {
            Phase::Closed { outcomes, failures } => {
                if outcomes.len() == config.window && outcomes.pop_front() == Some(false) {
                    *failures -= 1;
                }
                outcomes.push_back(succeeded);
                if !succeeded {
                    *failures += 1;
                }
                let calls = outcomes.len();
                if calls >= config.minimum_calls && *failures as f64 >= config.failure_rate * calls as f64 {
                    let rate = *failures as f64 / calls as f64;
                    let wait = config.wait(0);
                    self.transition(&mut inner, Phase::Open { until: now + wait, reopenings: 0 }, now);
                    tracing::warn!(
                        failure_rate = rate,
                        calls,
                        ?wait,
                        "payment gateway failing: circuit breaker open; receives paused, held orders go back to the queue"
                    );
                }
            }
            Phase::HalfOpen { succeeded: ok, reopenings, .. } => {
                if succeeded {
                    *ok += 1;
                    if *ok >= config.probes {
                        let fresh =
                            Phase::Closed { outcomes: VecDeque::with_capacity(config.window), failures: 0 };
                        self.transition(&mut inner, fresh, now);
                        tracing::info!(
                            probes = config.probes,
                            "payment gateway answering: circuit breaker closed; receiving again"
                        );
                    }
                } else {
                    let reopenings = *reopenings + 1;
                    let wait = config.wait(reopenings);
                    self.transition(&mut inner, Phase::Open { until: now + wait, reopenings }, now);
                    tracing::warn!(?wait, "probe payment failed: circuit breaker open again");
                }
            }
            Phase::Open { .. } => {}
        }
        inner.state.name()
    }

    /// Moves an open breaker whose wait is over to half-open.
    fn advance(&self, inner: &mut Inner, now: Instant) {
        if let Phase::Open { until, reopenings } = inner.state
            && now >= until
        {
            let half_open = Phase::HalfOpen { permits: self.config.probes, succeeded: 0, reopenings };
            self.transition(inner, half_open, now);
            tracing::info!(
                probes = self.config.probes,
                "circuit breaker half-open: probing the payment gateway"
            );
        }
    }

    fn transition(&self, inner: &mut Inner, to: Phase, now: Instant) {
        let from = inner.state.name();
        let to_state = to.name();
        inner.state = to;
        inner.generation += 1;
        inner.transitions += 1;
        match to_state {
            BreakerState::Open => {
                inner.opened += 1;
                self.opened_counter.increment(1);
                inner.open_since.get_or_insert(now);
            }
            BreakerState::HalfOpen => self.half_opened_counter.increment(1),
            BreakerState::Closed => {
                self.closed_counter.increment(1);
                if let Some(since) = inner.open_since.take() {
                    inner.time_open += now - since;
                }
            }
        }
        debug_assert_ne!(from, to_state);
        self.state_gauge.set(to_state.gauge());
        self.changes.send_modify(|count| *count += 1);
    }

    /// Gives a half-open permit back, if the stretch it was taken in is still current.
    fn give_back(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if let Phase::HalfOpen { permits, .. } = &mut inner.state {
            *permits += 1;
            drop(inner);
            self.changes.send_modify(|count| *count += 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Phase {
    fn name(&self) -> BreakerState {
        match self {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// What a poller may receive.
pub(crate) enum Allowance {
    /// Up to this many messages, as usual.
    Closed(usize),
    /// One message per probe permit.
    Probes(Vec<Probe>),
}

impl Allowance {
    /// How many messages to ask for.
    pub(crate) fn count(&self) -> usize {
        match self {
            Allowance::Closed(count) => *count,
            Allowance::Probes(probes) => probes.len(),
        }
    }

    /// The probe permit for each received message, in order (none when closed); permits left over are
    /// returned as the allowance drops.
    pub(crate) fn into_probes(self) -> impl Iterator<Item = Option<Probe>> {
        let probes = match self {
            Allowance::Closed(_) => Vec::new(),
            Allowance::Probes(probes) => probes,
        };
        probes.into_iter().map(Some).chain(std::iter::repeat_with(|| None))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.generation != u64::MAX {
            self.breaker.give_back(self.generation);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take() {
            breaker.give_back(self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            failure_rate: 0.5,
            window: 10,
            minimum_calls: 4,
            open_wait: Duration::from_secs(10),
            max_open_wait: Duration::from_secs(60),
            probes: 2,
            start_probing: false,
        }
    }

    fn call(breaker: &Arc<Breaker>) -> Call {
        match breaker.admit(None) {
            Admission::Go(call) => call,
            Admission::Rejected { .. } => panic!("rejected in {:?}", breaker.state()),
        }
    }

    fn outcomes(breaker: &Arc<Breaker>, verdicts: &[bool]) -> BreakerState {
        let mut state = breaker.state();
        for &ok in verdicts {
            state = breaker.record(call(breaker), ok);
        }
        state
    }

    async fn probes(breaker: &Arc<Breaker>) -> Vec<Probe> {
        match breaker.allowance(10).await {
            Allowance::Probes(probes) => probes,
            Allowance::Closed(_) => panic!("closed"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_threshold_and_not_below_it_or_below_the_minimum_calls() {
        let breaker = Breaker::new(config());
        assert_eq!(outcomes(&breaker, &[false, false, false]), BreakerState::Closed, "3 calls < minimum 4");
        assert_eq!(outcomes(&breaker, &[false]), BreakerState::Open, "4 of 4 failed");

        let breaker = Breaker::new(config());
        let below = [true, true, false, true, false, true, true, true, false, true];
        assert_eq!(outcomes(&breaker, &below), BreakerState::Closed, "3 of 10 failed: below 50 %");
        assert_eq!(outcomes(&breaker, &[false]), BreakerState::Closed, "4 of 10 (the oldest true slid out)");
        assert_eq!(outcomes(&breaker, &[false]), BreakerState::Open, "5 of 10 failed: at the threshold");
        assert_eq!(breaker.stats().opened, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn open_rejects_until_the_wait_ends_then_half_open_admits_only_the_probes() {
        let breaker = Breaker::new(config());
        outcomes(&breaker, &[false; 4]);
        let Admission::Rejected { retry_after } = breaker.admit(None) else { panic!("open admits nothing") };
        assert!(
            retry_after >= Duration::from_secs(8) && retry_after <= Duration::from_secs(10),
            "{retry_after:?}"
        );

        let waiting = tokio::spawn({
            let breaker = Arc::clone(&breaker);
            async move { breaker.allowance(10).await.count() }
        });
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(!waiting.is_finished(), "no receives while open");
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(waiting.await.unwrap(), 2, "half-open: exactly the two probes");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);

        // Both permits are out (the spawned task dropped its probes, which gave them back).
        let mut held = probes(&breaker).await;
        assert_eq!(held.len(), 2);
        let no_more = tokio::time::timeout(Duration::from_secs(30), breaker.allowance(10)).await;
        assert!(no_more.is_err(), "no third probe while two are out");
        assert!(
            matches!(breaker.admit(None), Admission::Rejected { .. }),
            "a non-probe message is held back"
        );

        // A probe that never reached the gateway returns its permit.
        drop(held.pop());
        assert_eq!(probes(&breaker).await.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_closes_when_every_probe_succeeds() {
        let breaker = Breaker::new(config());
        outcomes(&breaker, &[false; 4]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut held = probes(&breaker).await;
        let first = match breaker.admit(held.pop()) {
            Admission::Go(call) => call,
            Admission::Rejected { .. } => panic!("a probe goes through"),
        };
        assert_eq!(breaker.record(first, true), BreakerState::HalfOpen, "one of two probes");
        let Admission::Go(second) = breaker.admit(held.pop()) else {
            panic!("the second probe goes through")
        };
        assert_eq!(breaker.record(second, true), BreakerState::Closed);
        assert_eq!(breaker.allowance(10).await.count(), 10);
        let stats = breaker.stats();
        assert_eq!((stats.transitions, stats.opened), (3, 1));
        assert_eq!(stats.time_open_ms, 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_with_a_longer_wait_up_to_the_cap() {
        let breaker = Breaker::new(config());
        outcomes(&breaker, &[false; 4]);
        let mut waits = Vec::new();
        let mut opened_at = Instant::now();
        for _ in 0..5 {
            let mut held = probes(&breaker).await;
            waits.push(opened_at.elapsed());
            let Admission::Go(call) = breaker.admit(held.pop()) else { panic!("probe") };
            assert_eq!(breaker.record(call, false), BreakerState::Open);
            opened_at = Instant::now();
        }
        // Timers end on a whole millisecond, so a wait can read up to 1 ms long.
        let at_most = |secs| Duration::from_secs(secs) + Duration::from_millis(1);
        assert!(waits[0] >= Duration::from_secs(8) && waits[0] <= at_most(10), "{waits:?}");
        for pair in waits.windows(2).take(2) {
            assert!(pair[1] > pair[0], "each reopening waits longer: {waits:?}");
        }
        assert!(waits.iter().all(|wait| *wait <= at_most(60)), "capped: {waits:?}");
        assert!(waits[4] >= Duration::from_secs(48), "at the cap, minus jitter: {waits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn verdicts_from_an_earlier_stretch_are_ignored() {
        let breaker = Breaker::new(config());
        let late = call(&breaker);
        outcomes(&breaker, &[false; 4]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _probes = probes(&breaker).await;
        assert_eq!(breaker.record(late, false), BreakerState::HalfOpen, "a call from the closed stretch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probing_start_receives_only_the_probes_until_they_succeed() {
        let breaker = Breaker::new(BreakerConfig { start_probing: true, ..config() });
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let mut held = probes(&breaker).await;
        assert_eq!(held.len(), 2, "only the probes");
        for _ in 0..2 {
            let Admission::Go(call) = breaker.admit(held.pop()) else { panic!("a probe goes through") };
            breaker.record(call, true);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.stats().time_open_ms, 0, "starting is not an outage");
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_breaker_never_opens() {
        let breaker = Breaker::new(BreakerConfig { enabled: false, ..config() });
        assert_eq!(outcomes(&breaker, &[false; 50]), BreakerState::Closed);
        assert_eq!(breaker.allowance(10).await.count(), 10);
    }
}
