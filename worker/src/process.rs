//! What happens to one received message: parse, deduplicate, pay (with a visibility heartbeat), and settle.
//!
//! | outcome                              | what the queue sees                                              |
//! |--------------------------------------|------------------------------------------------------------------|
//! | paid or declined                     | deleted (batched)                                                |
//! | already settled (duplicate)          | deleted, not charged again                                       |
//! | same order in progress here          | visible again after a backoff, then recognised as a duplicate    |
//! | gateway failure                      | visible again after a backoff growing with the receive count     |
//! | gateway failure, last allowed receive| sent to the DLQ with the reason, then deleted                    |
//! | unparseable or invalid (poison)      | sent to the DLQ with the reason, then deleted                    |
//! | shutdown deadline passed             | visible again at once (visibility 0) for another worker          |

use std::sync::Arc;
use std::time::Duration;

use bus::{
    ATTR_DEAD_LETTER_REASON, Consumer, OutgoingMessage, ReceiptHandle, ReceivedMessage, VisibilityChange,
};
use chrono::Utc;
use orders::{Order, PaymentError, PaymentGate, PaymentOutcome, PaymentReceipt, WireMessage};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::batcher::Batcher;
use crate::dedupe::{Claim, Settled};
use crate::slots::Slot;
use crate::{Shared, WorkerConfig};

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

/// How the payment phase of a message ended.
enum Payment {
    Finished(Result<PaymentReceipt, PaymentError>),
    Abandoned,
    Killed,
}

impl Processor {
    fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// Processes one message in its slot. `received_at` is when the receive returned: the visibility timeout
    /// started just before.
    pub(crate) async fn process(self: Arc<Self>, slot: Slot, message: ReceivedMessage, received_at: Instant) {
        let in_flight = InFlight::enter(&self.shared.stats.in_flight);
        self.settle(&slot, message, received_at).await;
        // Out of the in-flight count before the slot is free, so `in_flight` never exceeds the slots.
        drop(in_flight);
        drop(slot);
    }

    async fn settle(&self, slot: &Slot, message: ReceivedMessage, received_at: Instant) {
        let stats = &self.shared.stats;
        let wire = match WireMessage::parse(&message.body) {
            Ok(wire) => wire,
            Err(error) => return self.dead_letter(message, format!("poison message: {error}")).await,
        };
        let claim = match self.shared.recent.claim(wire.order.order_id) {
            Claim::New(claim) => claim,
            Claim::Settled(outcome) => {
                stats.duplicates.add(1);
                tracing::info!(order_id = %wire.order.order_id, ?outcome, "duplicate delivery of a settled order; not charged again");
                return self.deleter.submit(message.receipt_handle);
            }
            Claim::InProgress => {
                stats.retried.add(1);
                tracing::debug!(order_id = %wire.order.order_id, "same order in progress; postponing this delivery");
                return self.retry_later(&message);
            }
        };
        match self.pay(slot.gate(), &wire.order, &message, received_at).await {
            Payment::Finished(Ok(receipt)) => {
                let settled = match receipt.outcome {
                    PaymentOutcome::Approved => Settled::Completed,
                    PaymentOutcome::Declined => Settled::Declined,
                };
                // Remember before deleting: if the delete is lost, the redelivery is recognised.
                claim.settle(settled);
                match settled {
                    Settled::Completed => stats.completed.add(1),
                    Settled::Declined => stats.declined.add(1),
                }
                stats.processing.record(received_at.elapsed());
                let end_to_end = (Utc::now() - wire.accepted_at).to_std().unwrap_or_default();
                stats.end_to_end.record(end_to_end);
                self.deleter.submit(message.receipt_handle);
            }
            Payment::Finished(Err(error)) => {
                drop(claim);
                let allowed = self.config().max_receive_count;
                if allowed > 0 && message.receive_count >= allowed {
                    let reason =
                        format!("payment failed on all {} allowed deliveries; last error: {error}", allowed);
                    self.dead_letter(message, reason).await;
                } else {
                    stats.retried.add(1);
                    tracing::info!(order_id = %wire.order.order_id, receive_count = message.receive_count, %error,
                        "payment failed transiently; the queue will redeliver after a backoff");
                    self.retry_later(&message);
                }
            }
            Payment::Killed => {}
            Payment::Abandoned => {
                drop(claim);
                stats.released.add(1);
                let release =
                    VisibilityChange { receipt_handle: message.receipt_handle, timeout: Duration::ZERO };
                if let Err(error) = self.visibility.submit_and_wait(release).await {
                    tracing::warn!(%error, "could not release a message; it returns after its visibility timeout");
                }
            }
        }
    }

    /// Pays, extending the message's visibility whenever it is about to expire, until the payment finishes,
    /// the shutdown deadline abandons it, or the worker is killed. Each extension completes before the next step, so no extension
    /// can land after the message's delete or release.
    async fn pay(
        &self,
        gate: &PaymentGate,
        order: &Order,
        message: &ReceivedMessage,
        received_at: Instant,
    ) -> Payment {
        let visibility = self.config().visibility_timeout;
        // Extend when two thirds of the visibility have passed, leaving a third for the call itself.
        let lead = visibility / 3;
        let mut visible_until = received_at + visibility;
        let mut heartbeat = true;
        let payment = gate.pay(order);
        tokio::pin!(payment);
        loop {
            let extend_at = visible_until - lead;
            tokio::select! {
                biased;
                result = &mut payment => return Payment::Finished(result),
                () = self.abandon.cancelled() => {
                    return if self.kill.is_cancelled() { Payment::Killed } else { Payment::Abandoned };
                }
                () = sleep_until(extend_at), if heartbeat => {
                    let change = VisibilityChange { receipt_handle: message.receipt_handle.clone(), timeout: visibility };
                    let asked = Instant::now();
                    match self.visibility.submit_and_wait(change).await {
                        Ok(()) => {
                            visible_until = asked + visibility;
                            self.shared.stats.heartbeats.add(1);
                        }
                        Err(error) => {
                            // Usually a stale handle: the message was already redelivered. Keep paying; the
                            // dedupe window recognises the other delivery if it comes here.
                            heartbeat = false;
                            tracing::warn!(order_id = %order.order_id, %error, "could not extend visibility");
                        }
                    }
                }
            }
        }
    }

    /// Leaves the message for a later redelivery, after a backoff growing with its receive count.
    fn retry_later(&self, message: &ReceivedMessage) {
        let attempt = message.receive_count.saturating_sub(1);
        let timeout = self.config().retry_backoff.delay(attempt).min(bus::MAX_VISIBILITY);
        self.visibility.submit(VisibilityChange { receipt_handle: message.receipt_handle.clone(), timeout });
    }

    /// Moves a message to the dead-letter queue with the reason attached, then deletes it. If the DLQ is
    /// unreachable the message is retried later instead (and the queue's redrive remains the backstop).
    async fn dead_letter(&self, message: ReceivedMessage, reason: String) {
        let stats = &self.shared.stats;
        let mut copy = OutgoingMessage::new(message.body.clone());
        copy.attributes = message.attributes.clone();
        copy.attributes.insert(ATTR_DEAD_LETTER_REASON.into(), reason.clone());
        match self.consumer.send_to_dead_letter(copy).await {
            Ok(_) => {
                stats.dead_lettered.add(1);
                tracing::warn!(message_id = %message.message_id, %reason, "message moved to the dead-letter queue");
                self.deleter.submit(message.receipt_handle);
            }
            Err(error) => {
                stats.retried.add(1);
                tracing::warn!(message_id = %message.message_id, %error, "could not dead-letter; retrying later");
                self.retry_later(&message);
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
