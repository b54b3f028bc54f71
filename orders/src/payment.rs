//! The simulated payment processor: a few slots, each busy for seconds per payment.
//!
//! This is the bottleneck the project is about. With one slot and 3 s per payment it completes 20 payments a
//! minute, whatever arrives; the synchronous endpoint makes clients wait in its queue, the asynchronous design
//! lets a queue absorb the burst and adds workers (each with its own gate) to drain it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::Order;

/// How the simulated processor behaves. Every binary that hosts a gate takes these as flags (flatten it into
/// its clap `Args`); the flags' defaults are [`PaymentConfig::default`].
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct PaymentConfig {
    /// Payments processed at once. One reproduces the original lab's serial processor. Not a flag here: each
    /// host decides its gates' slots (the receiver's `--payment-slots`, the worker's gate mode).
    #[arg(skip = PaymentConfig::default().slots)]
    pub slots: usize,
    /// Time one payment holds its slot ("3s", "100ms"): 3 s in the original lab. Throughput is
    /// `slots / latency`.
    #[arg(
        long = "payment-latency",
        env = "PAYMENT_LATENCY",
        default_value = humantime::format_duration(PaymentConfig::default().latency).to_string(),
        value_parser = humantime::parse_duration,
    )]
    pub latency: Duration,
    /// Fraction of payments declined (0 to 1; a business outcome), 0.05 as in the lab's 95.2% success.
    #[arg(
        long = "decline-rate",
        env = "DECLINE_RATE",
        default_value_t = PaymentConfig::default().decline_rate,
        value_parser = parse_fraction,
    )]
    pub decline_rate: f64,
    /// Seed of the gate's random draws, so runs and tests are repeatable.
    #[arg(long = "payment-seed", env = "PAYMENT_SEED", default_value_t = PaymentConfig::default().seed)]
    pub seed: u64,
    /// Simulated downstream failures, for outage experiments.
    #[command(flatten)]
    pub faults: GatewayFaults,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            slots: 1,
            latency: Duration::from_secs(3),
            decline_rate: 0.05,
            seed: 0x5eed,
            faults: GatewayFaults::default(),
        }
    }
}

/// Transient gateway failures to simulate. The default is none.
#[derive(Debug, Clone, PartialEq, Default, clap::Args)]
pub struct GatewayFaults {
    /// Fraction of payments that fail transiently after taking their full latency (0 to 1; a gateway timeout),
    /// to exercise retries.
    #[arg(
        long = "payment-error-rate",
        env = "PAYMENT_ERROR_RATE",
        default_value_t = GatewayFaults::default().error_rate,
        value_parser = parse_fraction,
    )]
    pub error_rate: f64,
    /// A period, counted from the gate's creation, during which every payment fails at once (an outage).
    #[arg(skip)]
    pub outage: Option<OutageWindow>,
}

/// Parses a fraction flag (a rate or share): a number from 0 to 1. Shared by every flag that takes one.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim().parse().map_err(|error| format!("{error}"))?;
    if (0.0..=1.0).contains(&value) { Ok(value) } else { Err(format!("{value} is not between 0 and 1")) }
}

/// A planned outage of the payment gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutageWindow {
    /// How long after the gate's creation the outage begins.
    pub starts_after: Duration,
    /// How long it lasts.
    pub lasts: Duration,
}

/// What the processor decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// The payment went through.
    Approved,
    /// The processor said no. Final: retrying does not change it.
    Declined,
}

/// A payment that reached a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentReceipt {
    /// The decision.
    pub outcome: PaymentOutcome,
    /// How long the payment waited for a free slot before it started.
    pub waited: Duration,
}

/// A payment that reached no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// No slot became free before the caller's deadline; nothing was charged.
    #[error("no payment slot became free within {waited:?}")]
    DeadlineExceeded {
        /// How long the payment waited.
        waited: Duration,
    },
    /// The gateway failed; nothing was charged and a later retry can succeed.
    #[error("payment gateway unavailable: {0}")]
    GatewayUnavailable(String),
}

/// The simulated payment processor. Cheap to clone: clones share the same slots.
///
/// Waiting is first-come first-served (tokio's fair [`Semaphore`]), and a waiting payment whose future is
/// dropped, say because its HTTP client went away, leaves the queue at once and never holds a slot.
#[derive(Debug, Clone)]
pub struct PaymentGate {
    inner: Arc<Gate>,
}

#[derive(Debug)]
struct Gate {
    config: PaymentConfig,
    slots: Semaphore,
    created: Instant,
    forced_outage: AtomicBool,
    random: Mutex<fastrand::Rng>,
    waiting: AtomicUsize,
    busy: AtomicUsize,
    charged: AtomicU64,
}

impl PaymentGate {
    /// A gate with `config.slots` free slots (at least one).
    pub fn new(config: PaymentConfig) -> Self {
        let slots = config.slots.max(1);
        Self {
            inner: Arc::new(Gate {
                slots: Semaphore::new(slots),
                created: Instant::now(),
                forced_outage: AtomicBool::new(false),
                random: Mutex::new(fastrand::Rng::with_seed(config.seed)),
                waiting: AtomicUsize::new(0),
                busy: AtomicUsize::new(0),
                charged: AtomicU64::new(0),
                config: PaymentConfig { slots, ..config },
            }),
        }
    }

    /// Waits for a slot, however long it takes, then takes the payment.
    pub async fn pay(&self, order: &Order) -> Result<PaymentReceipt, PaymentError> {
        self.pay_inner(order, None).await
    }

    /// Like [`pay`](Self::pay), but gives up with [`PaymentError::DeadlineExceeded`] if no slot is free by
    /// `deadline`. Once a payment has started it runs to its decision.
    pub async fn pay_before(&self, order: &Order, deadline: Instant) -> Result<PaymentReceipt, PaymentError> {
        self.pay_inner(order, Some(deadline)).await
    }

    async fn pay_inner(
        &self,
        _order: &Order,
        deadline: Option<Instant>,
    ) -> Result<PaymentReceipt, PaymentError> {
        let gate = &*self.inner;
        let started = Instant::now();
        let slot = {
            let _waiting = CountWhileAlive::new(&gate.waiting);
            match deadline {
                None => gate.slots.acquire().await,
                Some(deadline) => tokio::time::timeout_at(deadline, gate.slots.acquire())
                    .await
                    .map_err(|_| PaymentError::DeadlineExceeded { waited: started.elapsed() })?,
            }
        };
        let _slot = slot.map_err(|_| PaymentError::GatewayUnavailable("payment gate is closed".into()))?;
        let _busy = CountWhileAlive::new(&gate.busy);
        let waited = started.elapsed();
        if self.in_outage() {
            return Err(PaymentError::GatewayUnavailable("gateway outage (simulated)".into()));
        }
        tokio::time::sleep(gate.config.latency).await;
        let (error_draw, decline_draw) = {
            let mut random = gate.random.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            (random.f64(), random.f64())
        };
        if error_draw < gate.config.faults.error_rate {
            return Err(PaymentError::GatewayUnavailable("gateway timed out (simulated)".into()));
        }
        gate.charged.fetch_add(1, Ordering::Relaxed);
        let outcome = if decline_draw < gate.config.decline_rate {
            PaymentOutcome::Declined
        } else {
            PaymentOutcome::Approved
        };
        Ok(PaymentReceipt { outcome, waited })
    }

    fn in_outage(&self) -> bool {
        let gate = &*self.inner;
        let planned = gate.config.faults.outage.is_some_and(|window| {
            let since = gate.created.elapsed();
            since >= window.starts_after && since < window.starts_after + window.lasts
        });
        planned || gate.forced_outage.load(Ordering::Relaxed)
    }

    /// Turns a simulated gateway outage on or off now, on top of any planned [`OutageWindow`].
    pub fn set_outage(&self, on: bool) {
        self.inner.forced_outage.store(on, Ordering::Relaxed);
    }

    /// Payments waiting for a slot right now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Slots taking a payment right now.
    pub fn busy(&self) -> usize {
        self.inner.busy.load(Ordering::Relaxed)
    }

    /// How many payments can run at once.
    pub fn slots(&self) -> usize {
        self.inner.config.slots
    }

    /// How long one payment takes once it has a slot.
    pub fn latency(&self) -> Duration {
        self.inner.config.latency
    }

    /// Payments that reached a decision (approved or declined) since the gate was created.
    pub fn charged(&self) -> u64 {
        self.inner.charged.load(Ordering::Relaxed)
    }
}

/// Counts itself in a gauge for as long as it lives, so every exit path (return, error, cancelled future)
/// takes itself out again.
struct CountWhileAlive<'a>(&'a AtomicUsize);

impl<'a> CountWhileAlive<'a> {
    fn new(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for CountWhileAlive<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
