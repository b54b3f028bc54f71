//! The worker's processing slots and the payment gates behind them.
//!
//! A slot is reserved *before* a message is received, and the receive asks for no more messages than slots
//! were reserved. So a received message never waits for a slot while its visibility timeout runs out: it is
//! processed the moment it arrives.

use std::sync::{Arc, Mutex};

use orders::{PaymentConfig, PaymentGate};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::GateMode;

/// `consumers` processing slots, and their gates.
pub(crate) struct Slots {
    capacity: usize,
    free: Arc<Semaphore>,
    /// One poller at a time gathers slots, so the slots freed by a finishing wave go to one receive of up to
    /// ten messages instead of being spread one by one over every poller.
    gathering: tokio::sync::Mutex<()>,
    gates: Gates,
}

enum Gates {
    /// One single-slot gate per processing slot; a slot takes an idle gate for as long as it lives. Gates
    /// are small (an `Arc` around a semaphore), so ten thousand of them cost about a megabyte.
    PerConsumer { all: Box<[PaymentGate]>, idle: Mutex<Vec<usize>> },
    /// One gate for every slot.
    Shared(PaymentGate),
}

impl Slots {
    /// `consumers` slots with gates as `mode` says, each gate built from `payment`.
    pub(crate) fn new(consumers: usize, mode: GateMode, payment: &PaymentConfig) -> Self {
        let gates = match mode {
            GateMode::PerConsumer => {
                let all: Box<[PaymentGate]> = (0..consumers)
                    .map(|index| {
                        PaymentGate::new(PaymentConfig {
                            slots: 1,
                            // Each gate draws its own declines and errors, yet the whole worker stays repeatable.
                            seed: payment.seed.wrapping_add(index as u64),
                            ..payment.clone()
                        })
                    })
                    .collect();
                Gates::PerConsumer { all, idle: Mutex::new((0..consumers).rev().collect()) }
            }
            GateMode::Shared { slots } => {
                Gates::Shared(PaymentGate::new(PaymentConfig { slots, ..payment.clone() }))
            }
        };
        Self {
            capacity: consumers,
            free: Arc::new(Semaphore::new(consumers)),
            gathering: Default::default(),
            gates,
        }
    }

    /// The number of slots.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits until at least one slot is free, then reserves it and every other slot free right now, up to
    /// `max`.
    pub(crate) async fn reserve(self: &Arc<Self>, max: usize) -> Vec<Slot> {
        let _turn = self.gathering.lock().await;
        let first = Arc::clone(&self.free).acquire_owned().await.expect("the slot semaphore is never closed");
        let mut permits = vec![first];
        while permits.len() < max {
            match Arc::clone(&self.free).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        permits.into_iter().map(|permit| self.slot(permit)).collect()
    }

    fn slot(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let gate = match &self.gates {
            Gates::PerConsumer { idle, .. } => {
                // A slot holds one of `capacity` permits, so at most `capacity` gates are out at once.
                let index = lock(idle).pop().expect("an idle gate exists for every free slot");
                Some(index)
            }
            Gates::Shared(_) => None,
        };
        Slot { slots: Arc::clone(self), gate, _permit: permit }
    }

    /// Every gate, to switch a simulated outage or to count charges.
    pub(crate) fn gates(&self) -> &[PaymentGate] {
        match &self.gates {
            Gates::PerConsumer { all, .. } => all,
            Gates::Shared(gate) => std::slice::from_ref(gate),
        }
    }
}

/// One reserved processing slot, with its gate. Dropping it frees both.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    gate: Option<usize>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// The payment gate this slot pays through.
    pub(crate) fn gate(&self) -> &PaymentGate {
        match (&self.slots.gates, self.gate) {
            (Gates::PerConsumer { all, .. }, Some(index)) => &all[index],
            (Gates::Shared(gate), _) => gate,
            (Gates::PerConsumer { .. }, None) => unreachable!("per-consumer slots always hold a gate"),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let (Gates::PerConsumer { idle, .. }, Some(index)) = (&self.slots.gates, self.gate) {
            lock(idle).push(index);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reserves_no_more_than_free_and_frees_on_drop() {
        let slots = Arc::new(Slots::new(15, GateMode::PerConsumer, &PaymentConfig::default()));
        let first = slots.reserve(10).await;
        assert_eq!(first.len(), 10);
        let second = slots.reserve(10).await;
        assert_eq!(second.len(), 5, "only five were free");
        let gates: std::collections::HashSet<_> =
            first.iter().chain(&second).map(|slot| slot.gate() as *const PaymentGate).collect();
        assert_eq!(gates.len(), 15, "every slot has its own gate");
        let waiting = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.reserve(10).await.len() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing is free: the reservation waits");
        drop(first);
        assert_eq!(waiting.await.unwrap(), 10);
    }

    #[tokio::test]
    async fn shared_mode_has_one_gate_with_k_slots() {
        let slots = Arc::new(Slots::new(4, GateMode::Shared { slots: 2 }, &PaymentConfig::default()));
        let reserved = slots.reserve(10).await;
        assert_eq!(reserved.len(), 4);
        assert!(std::ptr::eq(reserved[0].gate(), reserved[3].gate()));
        assert_eq!(reserved[0].gate().slots(), 2);
        assert_eq!(slots.gates().len(), 1);
    }
}
