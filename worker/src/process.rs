//! What happens to one received message: parse, deduplicate, claim in the ledger, pay (with a visibility
//! heartbeat), settle in the ledger, delete.
//!
//! | outcome                              | what the queue sees                                              |
//! |--------------------------------------|------------------------------------------------------------------|
//! | paid or declined                     | deleted (batched)                                                |
//! | already settled (duplicate, redrive) | deleted, not charged again                                       |
//! | same order in progress here          | visible again after a backoff, then recognised as a duplicate    |
//! | claimed by a live worker elsewhere   | left alone: visible again after its visibility timeout           |
//! | payment recorded by an earlier claim | settled with that payment, deleted; nothing charged              |
//! | ledger error                         | visible again after a backoff; nothing charged                   |
//! | gateway failure                      | visible again after a backoff growing with the receive count     |
//! | gateway failure, last allowed receive| sent to the DLQ with the reason, then deleted                    |
//! | breaker not closed (gateway down)    | visible again when the breaker next probes; nothing failed       |
//! | … on the last allowed receive        | a fresh copy requeued with that delay (receive count 0), deleted |
//! | unparseable or invalid (poison)      | sent to the DLQ with the reason, then deleted                    |
//! | shutdown deadline passed             | visible again at once (visibility 0) for another worker          |

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bus::{
    ATTR_DEAD_LETTER_REASON, BusError, Consumer, OutgoingMessage, ReceiptHandle, ReceivedMessage,
    VisibilityChange,
};
use chrono::Utc;
use ledger::{
    ChargeError, Charged, ClaimRequest, IdempotentGateway, NewOrder, PaymentRecord, Settle, Settlement,
};
use orders::{Order, OrderStatus, PaymentGate, PaymentOutcome, WireMessage};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::batcher::Batcher;
use crate::breaker::{Admission, BreakerState, Probe};
use crate::dedupe::{Claim, Settled};
use crate::slots::Slot;
use crate::{CrashPoint, Shared, WorkerConfig};
use ledger::Claim as LedgerClaim;

/// Processes messages for one run of the worker.
pub(crate) struct Processor {
    pub(crate) shared: Arc<Shared>,
    pub(crate) consumer: Arc<dyn Consumer>,
    pub(crate) deleter: Batcher<ReceiptHandle>,
    pub(crate) visibility: Batcher<VisibilityChange>,
    /// Cancelled when the shutdown deadline passes (unfinished payments stop and their messages are released),
    /// and, as a child of `kill`, when the worker is killed (they stop and do nothing more).
    pub(crate) abandon: CancellationToken,
    /// Cancelled when the worker's `run` future is dropped: a crash.
    pub(crate) kill: CancellationToken,
}

/// The share of the heartbeat's lead (a third of the visibility timeout) one extension call may take: half, so a
/// call that times out still leaves time for a retry before the message shows again.
const HEARTBEAT_CALL_BOUND: f64 = 0.5;

/// A visibility extension in flight, polled beside the payment.
type Extension<'a> = Pin<Box<dyn Future<Output = Result<(), BusError>> + Send + 'a>>;

/// How the payment phase of a message ended.
enum Payment {
    Finished(Result<Charged, ChargeError>),
    Abandoned,
    Killed,
}

impl Processor {
    fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// Processes one message in its slot. `received_at` is when the receive returned: the visibility timeout
    /// started just before.
    /// `probe` is the breaker's half-open permit the message was received with, if any.
    pub(crate) async fn process(
        self: Arc<Self>,
        slot: Slot,
        message: ReceivedMessage,
        received_at: Instant,
        probe: Option<Probe>,
    ) {
        let in_flight = InFlight::enter(&self.shared.stats.in_flight);
        self.settle(&slot, message, received_at, probe).await;
        // Out of the in-flight count before the slot is free, so `in_flight` never exceeds the slots.
        drop(in_flight);
        drop(slot);
    }

    async fn settle(
        &self,
        slot: &Slot,
        message: ReceivedMessage,
        received_at: Instant,
        probe: Option<Probe>,
    ) {
        let stats = &self.shared.stats;
        let wire = match WireMessage::parse(&message.body) {
            Ok(wire) => wire,
            Err(error) => {
                if self.dead_letter(message, format!("poison message: {error}")).await {
                    stats.poison.add(1);
                }
                return;
            }
        };
        let order_id = wire.order.order_id;
        let window = match self.shared.recent.claim(order_id) {
            Claim::New(claim) => claim,
            Claim::Settled(outcome) => {
                stats.duplicates.add(1);
                tracing::info!(%order_id, ?outcome, "duplicate delivery of a settled order; not charged again");
                return self.deleter.submit(message.receipt_handle);
            }
            Claim::InProgress => {
                stats.retried.add(1);
                tracing::debug!(%order_id, "same order in progress; postponing this delivery");
                return self.retry_later(&message);
            }
        };
        let request = ClaimRequest {
            order: NewOrder::of(&wire.order, wire.accepted_at),
            worker: self.config().worker_id.clone(),
            // The lease lapses with this delivery's visibility, so the message's next delivery can claim.
            lease: self.config().claim_lease().saturating_sub(received_at.elapsed()),
        };
        let (token, recorded) = match self.shared.ledger.claim(&request).await {
            Ok(LedgerClaim::Won { token, record }) => (token, record.payment()),
            Ok(LedgerClaim::Settled(record)) => {
                window.settle(settled_as(record.status));
                stats.duplicates.add(1);
                tracing::info!(%order_id, status = ?record.status, "order already settled; deleted without charging");
                return self.deleter.submit(message.receipt_handle);
            }
            // Our own claim: a claim whose answer was lost (a timeout after DynamoDB applied it) and was
            // retried. Only this process carries its worker id, and its dedupe window says no other slot here
            // holds the order.
            Ok(LedgerClaim::Busy(record)) if record.worker.as_deref() == Some(request.worker.as_str()) => {
                (record.attempts, record.payment())
            }
            Ok(LedgerClaim::Busy(record)) => {
                stats.claimed_elsewhere.add(1);
                tracing::info!(%order_id, owner = ?record.worker, lease_expires_at = ?record.lease_expires_at,
                    "order claimed by another worker; leaving this delivery for later");
                return;
            }
            Err(error) => {
                stats.ledger_errors.add(1);
                stats.retried.add(1);
                tracing::warn!(%order_id, %error, "ledger claim failed; retrying after a backoff, nothing charged");
                return self.retry_later(&message);
            }
        };
        let call = match self.shared.breaker.admit(probe) {
            Admission::Go(call) => call,
            Admission::Rejected { retry_after } => {
                drop(window);
                self.release_claim(
                    order_id,
                    token,
                    "held back: the payment gateway's circuit breaker is open",
                )
                .await;
                return self.hand_back(message, retry_after).await;
            }
        };
        self.checkpoint(CrashPoint::BeforeCharge).await;
        let (payment, visible_until) =
            self.pay(slot.gate(), recorded, &wire.order, &message, received_at).await;
        // The gateway's verdict feeds the breaker; a ledger failure or an abandoned payment says nothing of it.
        let breaker = match &payment {
            Payment::Finished(Ok(_)) => self.shared.breaker.record(call, true),
            Payment::Finished(Err(ChargeError::Gateway(_))) => self.shared.breaker.record(call, false),
            _ => {
                drop(call);
                self.shared.breaker.state()
            }
        };
        match payment {
            Payment::Finished(Ok(charged)) => {
                self.checkpoint(CrashPoint::AfterCharge).await;
                if charged.replayed {
                    stats.replayed_payments.add(1);
                }
                let outcome = charged.payment.outcome;
                let worker = &self.config().worker_id;
                match self.shared.ledger.settle(order_id, token, worker, &Settlement::of(outcome)).await {
                    Ok(Settle::Settled(_)) => {}
                    Ok(Settle::Fenced(current)) if current.as_ref().is_some_and(|r| r.is_settled()) => {
                        tracing::info!(%order_id, "another worker settled this order first");
                    }
                    Ok(Settle::Fenced(current)) => {
                        stats.claimed_elsewhere.add(1);
                        tracing::info!(%order_id, owner = ?current.and_then(|r| r.worker),
                            "claim taken over by another worker; leaving this delivery for later");
                        return;
                    }
                    Err(error) => {
                        // The payment is recorded: the next claim settles with it and charges nothing.
                        stats.ledger_errors.add(1);
                        stats.retried.add(1);
                        tracing::warn!(%order_id, %error, "ledger settle failed; retrying after a backoff");
                        return self.retry_later(&message);
                    }
                }
                self.checkpoint(CrashPoint::AfterSettle).await;
                let settled = match outcome {
                    PaymentOutcome::Approved => Settled::Completed,
                    PaymentOutcome::Declined => Settled::Declined,
                };
                // Remember before deleting: if the delete is lost, the redelivery is recognised cheaply.
                window.settle(settled);
                match settled {
                    Settled::Completed => stats.completed.add(1),
                    Settled::Declined => stats.declined.add(1),
                }
                stats.processing.record(received_at.elapsed());
                let end_to_end = (Utc::now() - wire.accepted_at).to_std().unwrap_or_default();
                stats.end_to_end.record(end_to_end);
                self.shared.progress.record(wire.accepted_at, end_to_end, received_at.elapsed());
                // Retried while the message stays hidden: once it shows again, its redelivery is deleted
                // without charging anyway.
                self.deleter.submit_until(message.receipt_handle, visible_until);
            }
            Payment::Finished(Err(error)) => {
                drop(window);
                if matches!(error, ChargeError::Ledger(_)) {
                    stats.ledger_errors.add(1);
                }
                let allowed = self.config().max_receive_count;
                if breaker != BreakerState::Closed {
                    // The gateway is down, not this order: it waits in the queue without spending receives.
                    stats.retried.add(1);
                    tracing::warn!(%order_id, receive_count = message.receive_count, %error,
                        "payment failed while the gateway is down; retrying once the circuit breaker closes");
                    self.release_claim(order_id, token, &error.to_string()).await;
                    let retry_after = self.config().breaker.open_wait;
                    self.hand_back(message, retry_after).await;
                } else if allowed > 0 && message.receive_count >= allowed {
                    let reason =
                        format!("payment failed on all {} allowed deliveries; last error: {error}", allowed);
                    let failed = Settlement::Failed(reason.clone());
                    if self.dead_letter(message, reason).await {
                        let worker = &self.config().worker_id;
                        if let Err(error) = self.shared.ledger.settle(order_id, token, worker, &failed).await
                        {
                            tracing::warn!(%order_id, %error, "could not record the failed order in the ledger");
                        }
                    }
                } else {
                    stats.retried.add(1);
                    tracing::warn!(%order_id, receive_count = message.receive_count, %error,
                        "payment failed transiently; retrying after a backoff");
                    self.release_claim(order_id, token, &error.to_string()).await;
                    self.retry_later(&message);
                }
            }
            Payment::Killed => {}
            Payment::Abandoned => {
                drop(window);
                stats.released.add(1);
                self.release_claim(order_id, token, "released at shutdown before the payment finished").await;
                let release =
                    VisibilityChange { receipt_handle: message.receipt_handle, timeout: Duration::ZERO };
                if let Err(error) = self.visibility.submit_and_wait(release).await {
                    tracing::warn!(%error, "could not release a message; it returns after its visibility timeout");
                }
            }
        }
    }

    /// Ends this worker's claim now, so the order's next delivery can claim it at once instead of waiting out
    /// the lease. If the ledger cannot be reached the lease simply runs out.
    async fn release_claim(&self, order_id: uuid::Uuid, token: u32, reason: &str) {
        if let Err(error) = self.shared.ledger.release(order_id, token, reason).await {
            self.shared.stats.ledger_errors.add(1);
            tracing::warn!(%order_id, %error, "could not release the claim; it lapses with its lease");
        }
    }

    /// Where a test froze this worker: processing that reaches the point stops there for good.
    async fn checkpoint(&self, point: CrashPoint) {
        if let Some((frozen, reached)) = self.shared.freeze.get()
            && *frozen == point
        {
            reached.notify_one();
            std::future::pending::<()>().await;
        }
    }

    /// Pays, extending the message's visibility whenever it is about to expire, until the payment finishes,
    /// the shutdown deadline abandons it, or the worker is killed. Returns how the payment ended and until when
    /// the message is known to stay invisible.
    ///
    /// The heartbeat runs beside the payment and the shutdown signal, never in their way: each extension call
    /// is bounded by [`HEARTBEAT_CALL_BOUND`] of the lead, a transient failure is retried while the message is
    /// still invisible, and only a permanent one (a stale receipt handle: the message was redelivered) ends it.
    /// An extension still in flight when the payment ends completes before the next step, so none lands after
    /// the message's delete or release.
    async fn pay(
        &self,
        gate: &PaymentGate,
        recorded: Option<PaymentRecord>,
        order: &Order,
        message: &ReceivedMessage,
        received_at: Instant,
    ) -> (Payment, Instant) {
        let visibility = self.config().visibility_timeout;
        // Extend when two thirds of the visibility have passed, leaving a third for the call and its retries.
        let lead = visibility / 3;
        let call_bound = lead.mul_f64(HEARTBEAT_CALL_BOUND);
        let mut visible_until = received_at + visibility;
        let mut next_extension = Some(visible_until - lead);
        let mut failures = 0;
        let mut extension: Option<Extension<'_>> = None;
        let mut asked = Instant::now();
        let gateway = IdempotentGateway::new(gate.clone(), Arc::clone(&self.shared.ledger));
        let payment = gateway.charge(order, recorded);
        tokio::pin!(payment);
        let ended = loop {
            tokio::select! {
                biased;
                result = &mut payment => break Payment::Finished(result),
                () = self.abandon.cancelled() => {
                    if self.kill.is_cancelled() {
                        return (Payment::Killed, visible_until);
                    }
                    break Payment::Abandoned;
                }
                result = async { extension.as_mut().expect("polled only while in flight").await },
                    if extension.is_some() =>
                {
                    extension = None;
                    match result {
                        Ok(()) => {
                            visible_until = asked + visibility;
                            next_extension = Some(visible_until - lead);
                            failures = 0;
                            self.shared.stats.heartbeats.add(1);
                        }
                        Err(error) if error.is_retryable() && Instant::now() + call_bound < visible_until => {
                            failures += 1;
                            let pause = self.config().poll_backoff.delay(failures - 1).min(call_bound);
                            next_extension = Some(Instant::now() + pause);
                            tracing::warn!(order_id = %order.order_id, %error, failures,
                                "could not extend visibility; retrying while the message is still hidden");
                        }
                        Err(error) => {
                            // A stale handle (the message was already redelivered) or no time left: keep paying;
                            // the ledger's claim and the gateway's charge record keep the other delivery from
                            // charging again.
                            next_extension = None;
                            tracing::warn!(order_id = %order.order_id, %error,
                                "could not extend visibility; the message may be redelivered meanwhile");
                        }
                    }
                }
                () = sleep_until(next_extension.unwrap_or_else(Instant::now)),
                    if extension.is_none() && next_extension.is_some() =>
                {
                    let change =
                        VisibilityChange { receipt_handle: message.receipt_handle.clone(), timeout: visibility };
                    asked = Instant::now();
                    let visibility_batcher = &self.visibility;
                    extension = Some(Box::pin(async move {
                        tokio::time::timeout(call_bound, visibility_batcher.submit_and_wait(change))
                            .await
                            .unwrap_or(Err(BusError::Timeout))
                    }));
                }
            }
        };
        if let Some(in_flight) = extension
            && in_flight.await.is_ok()
        {
            visible_until = asked + visibility;
            self.shared.stats.heartbeats.add(1);
        }
        (ended, visible_until)
    }

    /// Gives a message back to the queue, untouched by the failure, for at least `delay` (jittered up by a fifth
    /// so that held messages do not return in one wave): the breaker is not closed. A message on its last allowed
    /// receive would go to the dead-letter queue on its next one, so a fresh copy with a new receive count is
    /// requeued instead and the original deleted; a copy delivered twice is harmless, the ledger charges once.
    async fn hand_back(&self, message: ReceivedMessage, delay: Duration) {
        let delay = delay.mul_f64(1.0 + 0.2 * fastrand::f64()).clamp(Duration::from_secs(1), bus::MAX_DELAY);
        let allowed = self.config().max_receive_count;
        if allowed > 0 && message.receive_count >= allowed {
            let mut copy = OutgoingMessage::new(message.body.clone());
            copy.attributes = message.attributes.clone();
            match self.consumer.requeue(copy, delay).await {
                Ok(_) => {
                    tracing::debug!(message_id = %message.message_id, ?delay,
                        "out of receives while the gateway is down: requeued a fresh copy");
                    return self.deleter.submit(message.receipt_handle);
                }
                Err(error) => {
                    tracing::warn!(message_id = %message.message_id, %error,
                        "could not requeue a message on its last receive; giving it back as it is");
                }
            }
        }
        tracing::debug!(message_id = %message.message_id, ?delay, "held back while the gateway is down");
        self.visibility.submit(VisibilityChange { receipt_handle: message.receipt_handle, timeout: delay });
    }

    /// Leaves the message for a later redelivery, after a backoff growing with its receive count.
    fn retry_later(&self, message: &ReceivedMessage) {
        let attempt = message.receive_count.saturating_sub(1);
        let timeout = self.config().retry_backoff.delay(attempt).min(bus::MAX_VISIBILITY);
        self.visibility.submit(VisibilityChange { receipt_handle: message.receipt_handle.clone(), timeout });
    }

    /// Moves a message to the dead-letter queue with the reason attached, then deletes it; `true` if it was
    /// moved. If the DLQ is unreachable the message is retried later instead (and the queue's redrive remains
    /// the backstop).
    async fn dead_letter(&self, message: ReceivedMessage, reason: String) -> bool {
        let stats = &self.shared.stats;
        let mut copy = OutgoingMessage::new(message.body.clone());
        copy.attributes = message.attributes.clone();
        copy.attributes.insert(ATTR_DEAD_LETTER_REASON.into(), reason.clone());
        match self.consumer.send_to_dead_letter(copy).await {
            Ok(_) => {
                stats.dead_lettered.add(1);
                tracing::error!(message_id = %message.message_id, %reason, "message failed: moved to the dead-letter queue");
                self.deleter.submit(message.receipt_handle);
                true
            }
            Err(error) => {
                stats.retried.add(1);
                tracing::warn!(message_id = %message.message_id, %error, "could not dead-letter; retrying later");
                self.retry_later(&message);
                false
            }
        }
    }
}

/// Counts a message in flight for as long as it is processed, whatever way processing ends.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The dedupe window's name for a settled ledger status.
fn settled_as(status: OrderStatus) -> Settled {
    match status {
        OrderStatus::Declined => Settled::Declined,
        _ => Settled::Completed,
    }
}
