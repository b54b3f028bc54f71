//! What a worker can be tuned with, and why each knob exists.

use std::time::Duration;

use orders::PaymentConfig;
use service_shell::defaults;

use crate::breaker::BreakerConfig;

/// How the worker's processing slots reach the payment processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GateMode {
    /// Every processing slot owns a single-slot payment gate, so throughput grows with the number of consumers
    /// (`consumers / latency`). This is what the classic scaling experiment measures.
    #[default]
    PerConsumer,
    /// All processing slots share one gate with `slots` slots, so throughput caps at `slots / latency` however
    /// many consumers there are: adding servers does not help a serial bottleneck.
    Shared {
        /// Payments the shared gate takes at once.
        slots: usize,
    },
}

impl GateMode {
    /// The name used on the command line, in `/stats` and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            GateMode::PerConsumer => "per-consumer",
            GateMode::Shared { .. } => "shared",
        }
    }

    /// Payment slots per gate: one per consumer's gate, or the shared gate's slots.
    pub fn slots_per_gate(&self) -> usize {
        match self {
            GateMode::PerConsumer => 1,
            GateMode::Shared { slots } => *slots,
        }
    }
}

/// Exponential backoff with jitter: the delay doubles with each attempt up to `max`, and is drawn from the
/// upper half of that range so that many clients failing together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub base: Duration,
    /// The cap: no delay is longer than this.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry): `min(max, base × 2^attempt)`, jittered
    /// uniformly into its upper half.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << attempt.min(30)).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Everything a [`Worker`](crate::Worker) needs to know. `Default` matches the deployed service: one consumer
/// with its own gate, a 3 s payment, the queue's 30 s visibility timeout and redrive after 5 receives.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Orders processed concurrently (processing slots). At `latency` per payment the worker completes at most
    /// `consumers / latency` orders a second in [`GateMode::PerConsumer`].
    pub consumers: usize,
    /// Whether each consumer has its own payment gate or all share one.
    pub gate_mode: GateMode,
    /// The simulated payment processor: latency, decline rate, seed and faults. Its `slots` field is ignored:
    /// the gate mode decides how many slots each gate has.
    pub payment: PaymentConfig,
    /// Long-polling receivers feeding the processing slots; 0 picks one per ten consumers, at most
    /// [`AUTO_POLLERS_MAX`]. More pollers hide receive latency (one AWS receive takes tens of milliseconds).
    pub pollers: usize,
    /// How long one receive waits for messages (SQS long polling, at most 20 s). Long waits mean few empty
    /// receives, which is cheaper and quieter.
    pub receive_wait: Duration,
    /// The queue's visibility timeout. It must match the queue: the heartbeat extends a message's visibility
    /// by this much when processing could outlast it.
    pub visibility_timeout: Duration,
    /// The queue's redrive `maxReceiveCount`. A message that fails transiently on its last allowed receive is
    /// dead-lettered by the worker itself, with the reason recorded (the queue's redrive, which records none,
    /// stays the backstop). 0 leaves dead-lettering entirely to the redrive policy.
    pub max_receive_count: u32,
    /// Visibility given to a message whose payment failed transiently, by receive count: the queue redelivers
    /// it after this delay instead of at once, so an outage is not hammered.
    pub retry_backoff: Backoff,
    /// Pause between failed receives, by consecutive failures: a broker outage is not turned into a hot loop.
    pub poll_backoff: Backoff,
    /// Longest time a delete or visibility change waits for nine others to share its batch call. Short,
    /// because a processed message is redelivered if its delete is late.
    pub batch_flush_interval: Duration,
    /// Recently finished order ids remembered, so a redelivered order is not charged twice.
    pub dedupe_capacity: usize,
    /// After a shutdown signal, how long in-flight payments may run before their messages are released.
    /// 25 s fits inside ECS's 30 s stop timeout.
    pub shutdown_deadline: Duration,
    /// This worker's name in the order ledger (the owner of its claims, the settler of its orders), so an
    /// operator can tell which process handled an order. It must be unique per process (the default is): a
    /// worker takes a claim carrying its own name as its own.
    pub worker_id: String,
    /// The circuit breaker around the payment gateway: while the gateway is down the worker stops receiving,
    /// so an outage does not spend receive counts and move the backlog to the dead-letter queue.
    pub breaker: BreakerConfig,
    /// How often the worker rewrites its entry in the ledger's worker registry (who consumes, how fast, how
    /// far through the backlog: what order ETAs are computed from). One write per interval, whatever the
    /// order rate; the entry counts as gone after three intervals without one.
    pub registry_interval: Duration,
}

/// How the consumers reach the payment processor, as a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GateModeArg {
    /// Each consumer owns a single-slot payment gate, so throughput grows with consumers (consumers / latency).
    PerConsumer,
    /// All consumers share one gate of --gate-slots slots, so throughput caps at slots / latency whatever the
    /// number of consumers.
    Shared,
}

/// The processing slots and their payment gates: the flags every host of a worker takes (the worker binary, the
/// load tool's in-process pipeline).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct GateArgs {
    /// Orders processed concurrently (processing slots).
    #[arg(
        long,
        env = "WORKER_CONSUMERS",
        default_value_t = WorkerConfig::default().consumers as u32,
        value_parser = clap::value_parser!(u32).range(1..=100_000),
    )]
    pub consumers: u32,
    /// How the consumers reach the payment processor.
    #[arg(long, env = "GATE_MODE", value_enum, default_value_t = GateModeArg::PerConsumer)]
    pub gate_mode: GateModeArg,
    /// Slots of the shared gate (payments at once), with --gate-mode shared.
    #[arg(long, env = "GATE_SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub gate_slots: u32,
}

impl GateArgs {
    /// The gate mode these flags choose.
    pub fn gate_mode(&self) -> GateMode {
        match self.gate_mode {
            GateModeArg::PerConsumer => GateMode::PerConsumer,
            GateModeArg::Shared => GateMode::Shared { slots: self.gate_slots as usize },
        }
    }
}

/// The worker binary's tuning flags; [`WorkerArgs::config`] turns them into a [`WorkerConfig`], whose `Default`
/// is where each flag's default comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub gate: GateArgs,
    /// The simulated payment processor (its slots come from the gate mode).
    #[command(flatten)]
    pub payment: PaymentConfig,
    /// Long-polling receivers feeding the consumers; 0 chooses one per ten consumers, at most 16.
    #[arg(long, env = "WORKER_POLLERS", default_value_t = WorkerConfig::default().pollers)]
    pub pollers: usize,
    /// The queue's visibility timeout; the heartbeat extends messages whose processing could outlast it.
    #[arg(
        long,
        env = "VISIBILITY_TIMEOUT",
        default_value = defaults::duration(WorkerConfig::default().visibility_timeout),
        value_parser = humantime::parse_duration,
    )]
    pub visibility_timeout: Duration,
    /// The queue's redrive maxReceiveCount: on its last allowed receive a failing message is dead-lettered
    /// with its reason. 0 leaves it to the redrive policy.
    #[arg(long, env = "MAX_RECEIVE_COUNT", default_value_t = WorkerConfig::default().max_receive_count)]
    pub max_receive_count: u32,
    /// Recently settled order ids remembered, so redelivered orders are not charged twice.
    #[arg(long, env = "DEDUPE_CAPACITY", default_value_t = WorkerConfig::default().dedupe_capacity)]
    pub dedupe_capacity: usize,
    /// After SIGTERM/SIGINT, how long in-flight payments may finish before their messages are released.
    #[arg(
        long,
        env = "SHUTDOWN_DEADLINE",
        default_value = defaults::duration(WorkerConfig::default().shutdown_deadline),
        value_parser = humantime::parse_duration,
    )]
    pub shutdown_deadline: Duration,
    /// This worker's name in the ledger (owner of its claims), unique per process; random by default.
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub breaker: BreakerArgs,
    /// How often the worker heartbeats its entry in the ledger's worker registry (one write each); it counts
    /// as gone after three intervals without one.
    #[arg(
        long,
        env = "REGISTRY_INTERVAL",
        default_value = defaults::duration(WorkerConfig::default().registry_interval),
        value_parser = humantime::parse_duration,
    )]
    pub registry_interval: Duration,
}

/// The circuit breaker's flags (see [`BreakerConfig`], where each default comes from).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct BreakerArgs {
    /// Run without the circuit breaker: during a gateway outage messages then follow the retry backoff and,
    /// out of receives, go to the dead-letter queue.
    #[arg(long, env = "NO_BREAKER")]
    pub no_breaker: bool,
    /// Failure rate (0–1) over the window of recent payments at which the breaker opens and receives pause.
    #[arg(
        long,
        env = "BREAKER_FAILURE_RATE",
        default_value_t = BreakerConfig::default().failure_rate,
        value_parser = orders::parse_fraction,
    )]
    pub breaker_failure_rate: f64,
    /// Recent payments the failure rate is computed over.
    #[arg(
        long,
        env = "BREAKER_WINDOW",
        default_value_t = BreakerConfig::default().window as u32,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub breaker_window: u32,
    /// Payments needed in the window before the failure rate counts.
    #[arg(
        long,
        env = "BREAKER_MINIMUM_CALLS",
        default_value_t = BreakerConfig::default().minimum_calls as u32,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub breaker_minimum_calls: u32,
    /// First wait in open before probing the gateway; doubles with each failed probe.
    #[arg(
        long,
        env = "BREAKER_OPEN_WAIT",
        default_value = defaults::duration(BreakerConfig::default().open_wait),
        value_parser = humantime::parse_duration,
    )]
    pub breaker_open_wait: Duration,
    /// Longest wait in open: a recovered gateway is noticed within this long.
    #[arg(
        long,
        env = "BREAKER_MAX_OPEN_WAIT",
        default_value = defaults::duration(BreakerConfig::default().max_open_wait),
        value_parser = humantime::parse_duration,
    )]
    pub breaker_max_open_wait: Duration,
    /// Probe payments let through in half-open; all must succeed to close the breaker.
    #[arg(
        long,
        env = "BREAKER_PROBES",
        default_value_t = BreakerConfig::default().probes as u32,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub breaker_probes: u32,
    /// Start with the breaker closed instead of half-open: take full batches at once rather than proving the
    /// gateway with the probes first (a worker restarted during an outage then spends a window's receives).
    #[arg(long, env = "BREAKER_START_CLOSED")]
    pub breaker_start_closed: bool,
}

impl BreakerArgs {
    /// The breaker these flags describe.
    pub fn config(&self) -> BreakerConfig {
        BreakerConfig {
            enabled: !self.no_breaker,
            failure_rate: self.breaker_failure_rate,
            window: self.breaker_window as usize,
            minimum_calls: self.breaker_minimum_calls as usize,
            open_wait: self.breaker_open_wait,
            max_open_wait: self.breaker_max_open_wait,
            probes: self.breaker_probes as usize,
            start_probing: !self.breaker_start_closed,
        }
    }
}

impl WorkerArgs {
    /// The worker's configuration: these flags over [`WorkerConfig::default`].
    pub fn config(&self) -> WorkerConfig {
        WorkerConfig {
            consumers: self.gate.consumers as usize,
            gate_mode: self.gate.gate_mode(),
            payment: self.payment.clone(),
            pollers: self.pollers,
            visibility_timeout: self.visibility_timeout,
            max_receive_count: self.max_receive_count,
            dedupe_capacity: self.dedupe_capacity,
            shutdown_deadline: self.shutdown_deadline,
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            breaker: self.breaker.config(),
            registry_interval: self.registry_interval,
            ..WorkerConfig::default()
        }
    }
}

/// The most pollers chosen automatically (see [`WorkerConfig::pollers`]).
pub const AUTO_POLLERS_MAX: usize = 16;

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            consumers: 1,
            gate_mode: GateMode::PerConsumer,
            payment: PaymentConfig::default(),
            pollers: 0,
            receive_wait: bus::MAX_WAIT,
            visibility_timeout: bus::QueueSettings::default().visibility_timeout,
            max_receive_count: bus::QueueSettings::default().max_receive_count,
            retry_backoff: Backoff { base: Duration::from_secs(5), max: Duration::from_secs(15 * 60) },
            poll_backoff: Backoff { base: Duration::from_millis(100), max: Duration::from_secs(20) },
            batch_flush_interval: Duration::from_millis(10),
            dedupe_capacity: 100_000,
            shutdown_deadline: Duration::from_secs(25),
            worker_id: default_worker_id(),
            breaker: BreakerConfig::default(),
            registry_interval: Duration::from_secs(5),
        }
    }
}

/// `worker-` and eight random hex digits: unique enough to tell processes apart in the ledger.
pub fn default_worker_id() -> String {
    format!("worker-{:08x}", fastrand::u32(..))
}

impl WorkerConfig {
    /// The number of pollers to run: [`pollers`](Self::pollers), or one per ten consumers when it is 0.
    pub fn effective_pollers(&self) -> usize {
        match self.pollers {
            0 => self.consumers.div_ceil(bus::MAX_BATCH_ENTRIES).clamp(1, AUTO_POLLERS_MAX),
            n => n,
        }
    }

    /// How long a claim on an order holds in the ledger, counted from the message's receipt: the visibility
    /// timeout, so an order whose worker died is claimable again by the time the queue redelivers it.
    pub fn claim_lease(&self) -> Duration {
        self.visibility_timeout
    }

    /// Checks what would make the worker misbehave rather than fail loudly.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.consumers == 0 {
            return Err("consumers must be at least 1".into());
        }
        if self.gate_mode.slots_per_gate() == 0 {
            return Err("a shared gate needs at least 1 slot".into());
        }
        if self.receive_wait > bus::MAX_WAIT {
            return Err(format!("receive wait {:?} is over SQS's 20 s maximum", self.receive_wait));
        }
        if self.visibility_timeout.is_zero() || self.visibility_timeout > bus::MAX_VISIBILITY {
            return Err("visibility timeout must be between 1 s and 12 h".into());
        }
        if self.worker_id.is_empty() {
            return Err("worker id must not be empty".into());
        }
        if self.registry_interval.is_zero() {
            return Err("registry interval must be more than 0".into());
        }
        if !(0.0..=1.0).contains(&self.payment.decline_rate) {
            return Err("decline rate must be between 0 and 1".into());
        }
        self.breaker.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let backoff = Backoff { base: Duration::from_secs(2), max: Duration::from_secs(60) };
        for _ in 0..200 {
            let first = backoff.delay(0);
            assert!(first >= Duration::from_secs(1) && first <= Duration::from_secs(2), "{first:?}");
            let third = backoff.delay(2);
            assert!(third >= Duration::from_secs(4) && third <= Duration::from_secs(8), "{third:?}");
            let capped = backoff.delay(40);
            assert!(capped >= Duration::from_secs(30) && capped <= Duration::from_secs(60), "{capped:?}");
        }
        let draws: std::collections::HashSet<_> = (0..50).map(|_| backoff.delay(3)).collect();
        assert!(draws.len() > 10, "jitter spreads retries");
    }

    #[test]
    fn pollers_scale_with_consumers_but_stay_few() {
        let with = |consumers| WorkerConfig { consumers, ..WorkerConfig::default() }.effective_pollers();
        assert_eq!((with(1), with(10), with(11), with(200), with(10_000)), (1, 1, 2, 16, 16));
        assert_eq!(WorkerConfig { pollers: 3, ..WorkerConfig::default() }.effective_pollers(), 3);
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert!(WorkerConfig::default().validate().is_ok());
        assert!(WorkerConfig { consumers: 0, ..WorkerConfig::default() }.validate().is_err());
        let shared_none =
            WorkerConfig { gate_mode: GateMode::Shared { slots: 0 }, ..WorkerConfig::default() };
        assert!(shared_none.validate().is_err());
        let long_wait = WorkerConfig { receive_wait: Duration::from_secs(21), ..WorkerConfig::default() };
        assert!(long_wait.validate().is_err());
    }
}
