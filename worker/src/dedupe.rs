//! Remembering which orders this worker has recently settled, so that a redelivered message is not charged
//! twice.
//!
//! SQS delivers at least once: a message comes back if its delete was lost or late, and SNS may deliver a
//! publish twice. The window is bounded and in memory, so it only covers this worker and its recent past; a
//! shared store is the next step when several workers must agree.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use uuid::Uuid;

/// The business outcome of an order's payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Paid.
    Completed,
    /// Refused by the payment processor.
    Declined,
}

/// What the dedupe window says about an order about to be processed.
pub(crate) enum Claim<'a> {
    /// Not seen recently: process it, then [`ClaimGuard::settle`].
    New(ClaimGuard<'a>),
    /// Another delivery of the same order is being processed right now.
    InProgress,
    /// Already settled: do not charge again.
    Settled(Settled),
}

/// The bounded set of orders in progress or recently settled.
pub(crate) struct RecentOrders {
    capacity: usize,
    inner: Mutex<Window>,
}

struct Window {
    /// foldhash, not the default SipHash: order ids are server-made UUIDs, not attacker-chosen keys, and
    /// hashing is a visible share of the worker's CPU per message at ten thousand consumers.
    state: HashMap<Uuid, State, foldhash::fast::RandomState>,
    /// Settled ids, oldest first: the eviction order.
    settled: VecDeque<Uuid>,
}

enum State {
    InProgress,
    Settled(Settled),
}

impl RecentOrders {
    /// A window remembering up to `capacity` settled orders (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // Sized up front (a few MB at the default): growing a large map rehashes it under the lock, a pause
        // every consumer would wait through.
        let window = Window {
            state: HashMap::with_capacity_and_hasher(capacity + capacity / 8, Default::default()),
            settled: VecDeque::with_capacity(capacity + 1),
        };
        Self { capacity, inner: Mutex::new(window) }
    }

    /// Claims an order for processing, unless it is in progress or already settled.
    pub(crate) fn claim(&self, order_id: Uuid) -> Claim<'_> {
        let mut window = self.lock();
        match window.state.entry(order_id) {
            Entry::Occupied(entry) => match entry.get() {
                State::InProgress => Claim::InProgress,
                State::Settled(settled) => Claim::Settled(*settled),
            },
            Entry::Vacant(entry) => {
                entry.insert(State::InProgress);
                Claim::New(ClaimGuard { orders: self, order_id, settled: false })
            }
        }
    }

    /// Settled orders remembered right now.
    #[cfg(test)]
    fn settled_len(&self) -> usize {
        self.lock().settled.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // The window stays consistent even if a holder panicked: every update is a single map operation.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An order claimed for processing. Dropping it unsettled (a transient failure, a release at shutdown, a
/// cancelled task) forgets the claim, so a later delivery is processed normally.
pub(crate) struct ClaimGuard<'a> {
    orders: &'a RecentOrders,
    order_id: Uuid,
    settled: bool,
}

impl ClaimGuard<'_> {
    /// Records the order's outcome; later deliveries of it are recognised as duplicates.
    pub(crate) fn settle(mut self, outcome: Settled) {
        self.settled = true;
        let mut window = self.orders.lock();
        window.state.insert(self.order_id, State::Settled(outcome));
        window.settled.push_back(self.order_id);
        while window.settled.len() > self.orders.capacity {
            if let Some(oldest) = window.settled.pop_front() {
                window.state.remove(&oldest);
            }
        }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.orders.lock().state.remove(&self.order_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_order_is_recognised_until_evicted() {
        let orders = RecentOrders::new(2);
        let [a, b, c] = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        for (id, outcome) in [(a, Settled::Completed), (b, Settled::Declined)] {
            match orders.claim(id) {
                Claim::New(guard) => guard.settle(outcome),
                _ => panic!("first claim must be new"),
            }
        }
        assert!(matches!(orders.claim(a), Claim::Settled(Settled::Completed)));
        assert!(matches!(orders.claim(b), Claim::Settled(Settled::Declined)));
        match orders.claim(c) {
            Claim::New(guard) => guard.settle(Settled::Completed),
            _ => panic!("c is new"),
        }
        assert_eq!(orders.settled_len(), 2);
        assert!(matches!(orders.claim(a), Claim::New(_)), "the oldest was evicted");
        assert!(matches!(orders.claim(c), Claim::Settled(_)));
    }

    #[test]
    fn a_claim_in_progress_blocks_duplicates_and_is_forgotten_when_dropped() {
        let orders = RecentOrders::new(10);
        let id = Uuid::now_v7();
        let guard = match orders.claim(id) {
            Claim::New(guard) => guard,
            _ => panic!("new"),
        };
        assert!(matches!(orders.claim(id), Claim::InProgress));
        drop(guard);
        assert!(matches!(orders.claim(id), Claim::New(_)), "an unsettled claim leaves no trace");
        assert_eq!(orders.settled_len(), 0);
    }
}
