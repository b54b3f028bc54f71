//! The long-polling receivers: ask the circuit breaker how many messages may be received, reserve that many
//! free slots, receive at most that many messages, hand each to a slot.

use std::sync::Arc;

use bus::{MAX_BATCH_ENTRIES, VisibilityChange};
use tokio::time::{Instant, sleep};

use crate::breaker::Allowance;
use crate::process::Processor;
use crate::spawner::Spawner;

/// Receives for as long as the future is polled; the worker stops it by dropping it, which cancels a pending
/// long poll at once.
pub(crate) async fn poll(processor: Arc<Processor>, processing: Spawner, poller: usize) {
    let shared = Arc::clone(&processor.shared);
    let mut consecutive_failures = 0;
    loop {
        // While the breaker is open this waits: no receive is made, so no receive count is spent.
        let allowance = shared.breaker.allowance(MAX_BATCH_ENTRIES).await;
        let slots = shared.slots.reserve(allowance.count()).await;
        let receive = processor.consumer.receive(slots.len(), shared.config.receive_wait);
        let received = match allowance {
            // A long poll pending when the breaker opens is dropped, so it takes no message it would hand back.
            Allowance::Closed(_) => tokio::select! {
                received = receive => received,
                () = shared.breaker.opened() => continue,
            },
            Allowance::Probes(_) => receive.await,
        };
        match received {
            Ok(mut messages) => {
                consecutive_failures = 0;
                let received_at = Instant::now();
                if !messages.is_empty() {
                    shared.stats.receives.add(1);
                    shared.stats.received.add(messages.len() as u64);
                }
                if messages.len() > slots.len() {
                    // A broker must not do this; if it does, hand the extras straight back.
                    tracing::error!(
                        asked = slots.len(),
                        got = messages.len(),
                        "receive returned too many messages"
                    );
                    for extra in messages.split_off(slots.len()) {
                        let release = VisibilityChange {
                            receipt_handle: extra.receipt_handle,
                            timeout: Default::default(),
                        };
                        processor.visibility.submit(release);
                    }
                }
                // Unused slots and probe permits (fewer messages than reserved) are freed as they drop.
                for ((slot, message), probe) in slots.into_iter().zip(messages).zip(allowance.into_probes()) {
                    processing.spawn(Arc::clone(&processor).process(slot, message, received_at, probe));
                }
            }
            Err(error) => {
                drop(slots);
                shared.stats.poll_errors.add(1);
                let pause = shared.config.poll_backoff.delay(consecutive_failures);
                consecutive_failures = consecutive_failures.saturating_add(1);
                tracing::warn!(poller, %error, ?pause, consecutive_failures, "receive failed; backing off");
                sleep(pause).await;
            }
        }
    }
}
