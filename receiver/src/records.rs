//! The receiver's side of the order ledger: every call bounded by [`crate::Config::ledger_timeout`] and counted
//! when it fails, and the records of orders that were not accepted marked failed off the request path.
//!
//! `POST /orders/async` writes an order's pending record before it publishes the order. When the order is then
//! not accepted (its publish failed or timed out, its client went away before the bus acknowledged, or the
//! ledger write itself failed in a way that may have written), nobody was answered 202 and no worker may ever
//! see the message, so the record is marked failed ([`ledger::Ledger::abandon`]) instead of staying pending
//! until it expires. That takes a ledger round trip and perhaps retries, so it runs on a task of its own: the
//! client gets its 503 at once, and the shutdown waits for these tasks within its deadline.

use std::time::Duration;

use bus::BusError;
use chrono::{DateTime, Utc};
use ledger::{LedgerError, OrderRecord};
use serde::Serialize;
use uuid::Uuid;

use crate::batcher::PublishError;
use crate::state::AppState;

/// The answer of `GET /orders/{id}`: the order's record and, while it is pending or processing, `eta`, when
/// it will probably be settled (RFC 3339). `eta` is null once the order is settled, and while the worker
/// registry gives no estimate (no live worker, or none that settled an order in the last minute).
#[derive(Debug, Serialize)]
pub(crate) struct OrderAnswer {
    #[serde(flatten)]
    pub(crate) record: OrderRecord,
    pub(crate) eta: Option<DateTime<Utc>>,
}

/// Tries at marking one unaccepted order failed (5): enough to ride out a throttling spell or a few lost
/// answers, few enough that a ledger outage does not pile up retrying tasks for long.
const ABANDON_ATTEMPTS: u32 = 5;

/// The wait before the second try, doubled before each later one (100 ms: about 1.5 s of waiting over the five
/// tries). Each wait is jittered by ±50 % so the records of a burst of failed publishes are not retried in
/// lockstep against a store that is already struggling.
const ABANDON_FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Which ledger call failed: the `operation` label of `receiver_ledger_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Get,
    Abandon,
    Key,
    /// A read of the worker registry, for order ETAs.
    Fleet,
}

impl Operation {
    fn label(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Get => "get",
            Operation::Abandon => "abandon",
            Operation::Key => "idempotency_key",
            Operation::Fleet => "fleet",
        }
    }
}

/// Runs one ledger call for at most `timeout` (no answer in time is [`LedgerError::Unavailable`]: the call may
/// still have its effect) and counts a failure in `receiver_ledger_failures_total`.
pub(crate) async fn call<T>(
    operation: Operation,
    timeout: Duration,
    call: impl Future<Output = Result<T, LedgerError>>,
) -> Result<T, LedgerError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => {
            count_failure(operation, kind(&error));
            Err(error)
        }
        Err(_) => {
            count_failure(operation, "timeout");
            Err(LedgerError::Unavailable(format!("no answer within {timeout:?}")))
        }
    }
}

/// Counts one failed ledger call. Only failures are counted: the lookup of a labelled counter costs more than
/// a successful embedded write, so it stays off the path of healthy requests.
pub(crate) fn count_failure(operation: Operation, kind: &'static str) {
    metrics::counter!("receiver_ledger_failures_total", "operation" => operation.label(), "kind" => kind)
        .increment(1);
}

/// The `kind` label of a ledger error.
fn kind(error: &LedgerError) -> &'static str {
    match error {
        LedgerError::Throttled(_) => "throttled",
        LedgerError::Unavailable(_) => "unavailable",
        LedgerError::Fatal { .. } => "fatal",
        LedgerError::Rejected(_) => "rejected",
        LedgerError::Corrupt(_) => "corrupt",
    }
}

/// Whether a failed write may nevertheless have been applied (a timeout, a lost answer). Throttling and the
/// other errors are refusals: nothing was written.
pub(crate) fn may_have_written(error: &LedgerError) -> bool {
    matches!(error, LedgerError::Unavailable(_))
}

/// Why an order whose record was (or may have been) written was not accepted.
#[derive(Debug)]
pub(crate) enum Unaccepted {
    /// The ledger write failed but may have been applied.
    WriteFailed(LedgerError),
    /// The bus refused the publish, or did not acknowledge it in time.
    PublishFailed(PublishError),
    /// The request ended between the ledger write and the bus's acknowledgement: its client went away.
    RequestDropped,
}

impl Unaccepted {
    /// The record's `last_error`, which `GET /orders/{id}` shows its client: plain words, never the store's or
    /// the broker's own text (it can name accounts, roles and ARNs); [`Unaccepted::detail`] goes to the log.
    fn reason(&self) -> &'static str {
        match self {
            Unaccepted::WriteFailed(_) => {
                "not accepted: the ledger write failed; the client was answered 503"
            }
            Unaccepted::PublishFailed(PublishError::TimedOut(_) | PublishError::Bus(BusError::Timeout)) => {
                "not accepted: the bus did not acknowledge the publish in time; the client was answered 503"
            }
            Unaccepted::PublishFailed(PublishError::ShuttingDown) => {
                "not accepted: the receiver was shutting down; the client was answered 503"
            }
            Unaccepted::PublishFailed(_) => {
                "not accepted: the publish to the bus failed; the client was answered 503"
            }
            Unaccepted::RequestDropped => {
                "not accepted: the client went away before the bus acknowledged the publish"
            }
        }
    }

    /// What went wrong inside, for the log.
    fn detail(&self) -> String {
        match self {
            Unaccepted::WriteFailed(error) => error.to_string(),
            Unaccepted::PublishFailed(error) => error.to_string(),
            Unaccepted::RequestDropped => "the request was dropped".to_owned(),
        }
    }

    /// Logs that the record was not pending: a worker got the order first, or there is no record.
    fn log_not_pending(&self, order_id: Uuid) {
        match self {
            // The common case: the failed write had written nothing.
            Unaccepted::WriteFailed(_) => {
                tracing::debug!(%order_id, "the failed ledger write left no record")
            }
            Unaccepted::PublishFailed(error) => tracing::warn!(
                %order_id, %error,
                "the publish was reported failed, but a worker had already claimed the order: it reached the bus \
                 after all and is processed, although its client was answered 503"
            ),
            Unaccepted::RequestDropped => tracing::info!(
                %order_id,
                "the client went away before the acknowledgement, but a worker already has the order: it is \
                 processed"
            ),
        }
    }
}

/// Held by `POST /orders/async` from just before its ledger write until the bus acknowledged. If the request
/// ends in between without saying why (the server dropped it because its client went away), the record is
/// marked failed as [`Unaccepted::RequestDropped`]. Costs nothing on the way to a 202.
pub(crate) struct Unpublished<'a> {
    state: &'a AppState,
    order_id: Uuid,
    armed: bool,
}

impl<'a> Unpublished<'a> {
    pub(crate) fn new(state: &'a AppState, order_id: Uuid) -> Self {
        Self { state, order_id, armed: true }
    }

    /// Nothing to mark: the bus acknowledged, or the write certainly did not happen.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }

    /// The order was not accepted: mark its record failed in the background.
    pub(crate) fn not_accepted(mut self, why: Unaccepted) {
        self.armed = false;
        mark_failed_in_background(self.state, self.order_id, why);
    }
}

impl Drop for Unpublished<'_> {
    fn drop(&mut self) {
        if self.armed {
            mark_failed_in_background(self.state, self.order_id, Unaccepted::RequestDropped);
        }
    }
}

/// Spawns [`mark_failed`] on the state's background tracker, which the shutdown waits for.
fn mark_failed_in_background(state: &AppState, order_id: Uuid, why: Unaccepted) {
    // A request can be dropped while its runtime shuts down; `tokio::spawn` would panic outside one.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!(
            %order_id, ?why,
            "no runtime to mark an unaccepted order failed on: it stays pending until it expires"
        );
        return;
    };
    state.background().spawn_on(mark_failed(state.clone(), order_id, why), &runtime);
}

/// Marks the order's record failed, retrying errors worth retrying with backoff; logs at error level and
/// counts `abandon_failures` if it cannot, since the record then stays pending until it expires.
async fn mark_failed(state: AppState, order_id: Uuid, why: Unaccepted) {
    let reason = why.reason();
    let timeout = state.config().ledger_timeout;
    let mut backoff = ABANDON_FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match call(Operation::Abandon, timeout, state.ledger().abandon(order_id, reason)).await {
            Ok(true) => {
                tracing::info!(%order_id, %reason, detail = %why.detail(), "marked an unaccepted order failed");
                return;
            }
            Ok(false) => {
                why.log_not_pending(order_id);
                return;
            }
            Err(error) if error.is_retryable() && attempt < ABANDON_ATTEMPTS => {
                tracing::debug!(%order_id, %error, attempt, "marking an unaccepted order failed; retrying");
                tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(error) => {
                state.count_abandon_failure();
                tracing::error!(
                    %order_id, %error, attempts = attempt, %reason,
                    "could not mark an unaccepted order failed: its record stays pending until it expires"
                );
                return;
            }
        }
    }
}
