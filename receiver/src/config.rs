//! Every knob of the receiver, with the reason for its default.

use std::time::Duration;

use orders::PaymentConfig;
use service_shell::defaults;

/// The largest request body accepted, 64 KiB. A maximal valid order (100 items) is far smaller; anything bigger
/// is refused with 413 before it is buffered, so a client cannot make the receiver hold megabytes per request.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How the receiver behaves: the binary's tuning flags (flatten it into a clap `Args`). `Config::default()` is
/// what the binary runs with when no flag is given, and the flags' defaults are read from it.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Config {
    /// What `/stats` reports as `mode`: the bus orders are published to (`embedded` or `aws`), so an operator
    /// reading the numbers knows which deployment produced them. Set by the host, not a flag.
    #[arg(skip = Config::default().mode)]
    pub mode: String,
    /// The longest `POST /orders/sync` takes to answer: a payment that cannot start early enough to finish
    /// within it gets a 504 instead. 9 s: a margin of 1 s under the usual 10 s client timeout (the original
    /// lab's), and far under the load balancer's 60 s idle timeout, so a client sees the 504, never a dropped
    /// connection.
    #[arg(long, env = "SYNC_TIMEOUT", default_value = defaults::duration(Config::default().sync_timeout), value_parser = humantime::parse_duration)]
    pub sync_timeout: Duration,
    /// The simulated payment processor behind `POST /orders/sync` (its `slots` come from
    /// [`payment_slots`](Self::payment_slots)).
    #[command(flatten)]
    pub payment: PaymentConfig,
    /// Payments the sync endpoint's process-wide gate processes at once (1, the lab's serial processor).
    #[arg(long, env = "PAYMENT_SLOTS", default_value_t = Config::default().payment_slots)]
    pub payment_slots: usize,
    /// How long a request waits for the broker to acknowledge its publish before answering 503. Bounded so a
    /// stalled broker turns into fast, retryable errors instead of piling up requests.
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = defaults::duration(Config::default().publish_timeout), value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,
    /// How long one call to the order ledger may take before it counts as failed: the write of
    /// `POST /orders/async` (503 after it), the lookup of `GET /orders/{id}` (503), and each try at marking an
    /// unaccepted order failed. Bounded so a stalled store turns into fast, retryable errors, and so lookups,
    /// which have no concurrency limit, cannot pile up behind it.
    #[arg(long, env = "LEDGER_TIMEOUT", default_value = defaults::duration(Config::default().ledger_timeout), value_parser = humantime::parse_duration)]
    pub ledger_timeout: Duration,
    /// How long the micro-batcher holds a partial batch while another batch is in flight, hoping to fill it.
    /// When nothing is in flight it sends at once, so an idle receiver adds no latency.
    #[arg(long, env = "BATCH_LINGER", default_value = defaults::duration(Config::default().batch_linger), value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,
    /// Publish calls to the broker in flight at once. One call at a time would cap throughput at
    /// `10 / broker latency`; several overlap the broker's round trips.
    #[arg(long, env = "MAX_BATCHES_IN_FLIGHT", default_value_t = Config::default().max_batches_in_flight)]
    pub max_batches_in_flight: usize,
    /// `POST /orders/async` requests handled at once, counted from when the body has arrived (a slow body holds
    /// a connection, never one of these); beyond it requests are shed with 503.
    #[arg(long, env = "MAX_ASYNC_IN_FLIGHT", default_value_t = Config::default().max_async_in_flight)]
    pub max_async_in_flight: usize,
    /// `POST /orders/sync` requests handled (mostly: waiting for the gate) at once; beyond it 503.
    #[arg(long, env = "MAX_SYNC_IN_FLIGHT", default_value_t = Config::default().max_sync_in_flight)]
    pub max_sync_in_flight: usize,
    /// How long a client may take to send a request's headers before its connection is closed: a client that
    /// trickles them (slowloris) cannot hold a connection for ever.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = defaults::duration(Config::default().header_read_timeout), value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Connections open at once on the public port; one more is closed at once. With the body limit it bounds
    /// the memory that requests still arriving can hold (4,096 × 64 KiB = 256 MiB at worst).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = Config::default().max_connections)]
    pub max_connections: usize,
    /// The `Retry-After` sent with every 503: long enough to let a burst pass, short enough for a client to retry
    /// promptly.
    #[arg(long, env = "RETRY_AFTER", default_value = defaults::duration(Config::default().retry_after), value_parser = humantime::parse_duration)]
    pub retry_after: Duration,
    /// After SIGTERM/SIGINT, how long in-flight requests and pending publishes get to finish (inside the 30 s
    /// ECS gives a task between SIGTERM and SIGKILL).
    #[arg(long, env = "SHUTDOWN_DEADLINE", default_value = defaults::duration(Config::default().shutdown_deadline), value_parser = humantime::parse_duration)]
    pub shutdown_deadline: Duration,
    /// How long the answer to a request with an `Idempotency-Key` is kept and replayed to retries with that key
    /// (24 h, as Stripe keeps keys): a client retrying within it never creates a second order.
    #[arg(long, env = "IDEMPOTENCY_RETENTION", default_value = defaults::duration(Config::default().idempotency_retention), value_parser = humantime::parse_duration)]
    pub idempotency_retention: Duration,
    /// How long one read of the worker registry serves the ETAs of `GET /orders/{id}`: under any lookup load the
    /// registry is read about once per this per receiver, and an estimate is at most this much older than it.
    #[arg(long, env = "FLEET_REFRESH", default_value = defaults::duration(Config::default().fleet_refresh), value_parser = humantime::parse_duration)]
    pub fleet_refresh: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: "embedded".into(),
            sync_timeout: Duration::from_secs(9),
            payment: PaymentConfig::default(),
            payment_slots: 1,
            publish_timeout: Duration::from_secs(5),
            ledger_timeout: Duration::from_secs(2),
            batch_linger: Duration::from_millis(2),
            max_batches_in_flight: 16,
            max_async_in_flight: 1024,
            max_sync_in_flight: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            retry_after: Duration::from_secs(1),
            shutdown_deadline: Duration::from_secs(20),
            idempotency_retention: ledger::idempotency::DEFAULT_KEY_RETENTION,
            fleet_refresh: Duration::from_secs(1),
        }
    }
}

impl Config {
    /// The sync endpoint's payment gate: [`payment`](Self::payment) with [`payment_slots`](Self::payment_slots).
    pub fn sync_gate(&self) -> PaymentConfig {
        PaymentConfig { slots: self.payment_slots, ..self.payment.clone() }
    }
}
