//! Every knob of the receiver, with the reason for its default.

use std::time::Duration;

use orders::PaymentConfig;

/// The largest request body accepted, 64 KiB. A maximal valid order (100 items) is far smaller; anything bigger
/// is refused with 413 before it is buffered, so a client cannot make the receiver hold megabytes per request.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How the receiver behaves. `Config::default()` is what the binary runs with when no flag is given.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// What `/stats` reports as `mode`: the bus orders are published to (`embedded` or `aws`), so an operator
    /// reading the numbers knows which deployment produced them.
    pub mode: String,
    /// How long `POST /orders/sync` waits for a payment slot before answering 504 (10 s, the original lab's
    /// client timeout). Once the payment has started it runs to its decision.
    pub sync_timeout: Duration,
    /// The process-wide payment gate behind `POST /orders/sync` (1 slot, 3 s, 5 % declines).
    pub payment: PaymentConfig,
    /// How long a request waits for the broker to acknowledge its publish before answering 503 (5 s). Bounded so
    /// a stalled broker turns into fast, retryable errors instead of piling up requests.
    pub publish_timeout: Duration,
    /// How long one call to the order ledger may take before it counts as failed (2 s): the write of
    /// `POST /orders/async` (503 after it), the lookup of `GET /orders/{id}` (503), and each try at marking an
    /// unaccepted order failed. Bounded so a stalled store turns into fast, retryable errors, and so lookups,
    /// which have no concurrency limit, cannot pile up behind it.
    pub ledger_timeout: Duration,
    /// How long the micro-batcher holds a partial batch while another batch is in flight, hoping to fill it
    /// (2 ms). When nothing is in flight it sends at once, so an idle receiver adds no latency.
    pub batch_linger: Duration,
    /// Publish calls allowed in flight at once (16). One call at a time would cap throughput at
    /// `10 / broker latency`; several overlap the broker's round trips.
    pub max_batches_in_flight: usize,
    /// `POST /orders/async` requests handled at once (1024); beyond it requests are shed with 503 before their
    /// body is read. This bounds the memory held by requests whatever the offered load.
    pub max_async_in_flight: usize,
    /// `POST /orders/sync` requests handled (mostly: waiting for the gate) at once (1024); beyond it 503.
    pub max_sync_in_flight: usize,
    /// The `Retry-After` sent with every 503 (1 s): long enough to let a burst pass, short enough for a client to
    /// retry promptly.
    pub retry_after: Duration,
    /// After a shutdown signal, how long in-flight requests and pending publishes get to finish (20 s, inside
    /// the 30 s ECS gives a task between SIGTERM and SIGKILL).
    pub shutdown_deadline: Duration,
    /// How long the answer to a request with an `Idempotency-Key` is kept and replayed (24 h, as Stripe keeps
    /// keys): a client retrying within it never creates a second order.
    pub idempotency_retention: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: "embedded".into(),
            sync_timeout: Duration::from_secs(10),
            payment: PaymentConfig::default(),
            publish_timeout: Duration::from_secs(5),
            ledger_timeout: Duration::from_secs(2),
            batch_linger: Duration::from_millis(2),
            max_batches_in_flight: 16,
            max_async_in_flight: 1024,
            max_sync_in_flight: 1024,
            retry_after: Duration::from_secs(1),
            shutdown_deadline: Duration::from_secs(20),
            idempotency_retention: ledger::idempotency::DEFAULT_KEY_RETENTION,
        }
    }
}
