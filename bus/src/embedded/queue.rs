//! An in-process queue with SQS standard-queue semantics.
//!
//! Layout, chosen so every call is O(log n) or better however deep the queue is:
//!
//! - one `std::sync::Mutex` per queue around [`QueueState`], never held across an `.await`;
//! - messages live in a [`Slab`]: a dense vector whose freed slots are reused, so a deep queue costs little
//!   more than its messages and a steady publish/delete flow keeps touching the same, cached slots. Each message
//!   also carries a per-queue sequence number that is never reused, which tells a message from a later one
//!   that reused its slot;
//! - visible messages wait in a FIFO of `(slot, seq)`. Deleting a visible message (allowed with its latest
//!   receipt handle) or expiring it leaves its entry behind; receive skips entries whose message is gone;
//! - in-flight messages are indexed by `(visibility deadline, slot)` in a `BTreeSet`, so the next due message is
//!   the first entry. Entries are removed explicitly on delete: a lazily invalidated heap would keep an entry
//!   for every deleted message until its deadline (at 500,000 messages/s and 30 s, 15 million entries);
//! - retention is indexed by `(enqueue time, slot)` the same way. Arrival order is not enough: a message moved
//!   to the dead-letter queue keeps its original, older enqueue time;
//! - a receipt handle encodes `(queue, slot, seq, receive count)`: a handle from before a redelivery carries an
//!   older receive count and is rejected in O(1) without touching the redelivered copy;
//! - counters (visible) and index sizes (in flight) make `stats` O(1).
//!
//! Timers are lazy: every operation first makes due in-flight messages visible again and drops messages past
//! retention. A long-polling receiver sleeps until a message arrives (a [`Notify`] permit per message) or the
//! earliest visibility deadline passes, whichever is first, and is woken to look again when a receive or a
//! visibility change brings an earlier deadline within its wait. It never spins.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use slab::Slab;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    BusError, Consumer, EntryResult, MAX_BATCH_ENTRIES, MAX_DELAY, MAX_VISIBILITY, MAX_WAIT, MessageId,
    OutgoingMessage, QueueStats, ReceiptHandle, ReceivedMessage, VisibilityChange, check_batch_size,
};

/// SQS caps `maxReceiveCount` in a redrive policy at 1,000.
const MAX_RECEIVE_COUNT_LIMIT: u32 = 1_000;

/// Settings of one [`EmbeddedQueue`] (SQS queue attributes).
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How long a received message stays invisible before it is delivered again, unless deleted or extended
    /// (SQS `VisibilityTimeout`, default 30 s, at most 12 h).
    pub visibility_timeout: Duration,
    /// How long a message is kept, counted from when it was first enqueued; older messages vanish, received or
    /// not (SQS `MessageRetentionPeriod`, default 4 days).
    pub retention: Duration,
    /// Where messages go after too many receives (SQS `RedrivePolicy`); `None` keeps redelivering forever.
    pub redrive: Option<Redrive>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let settings = crate::QueueSettings::default();
        Self { visibility_timeout: settings.visibility_timeout, retention: settings.retention, redrive: None }
    }
}

/// A redrive policy: after `max_receive_count` receives, the next receive moves the message to `dead_letter`
/// instead of delivering it (what SQS does).
#[derive(Debug, Clone)]
pub struct Redrive {
    /// The dead-letter queue.
    pub dead_letter: EmbeddedQueue,
    /// How many times a message may be received before it is moved (1 to 1,000).
    pub max_receive_count: u32,
}

/// An in-process SQS standard queue. Cloning gives another handle to the same queue.
#[derive(Clone)]
pub struct EmbeddedQueue {
    shared: Arc<Shared>,
}

/// What every handle of one queue shares.
struct Shared {
    name: String,
    redrive: Option<Redrive>,
    state: Mutex<QueueState>,
    /// One permit per message that became visible, so long-polling receivers wake at once.
    arrivals: Notify,
}

/// The queue's fixed settings.
#[derive(Debug, Clone, Copy)]
struct Rules {
    /// Random per queue; part of message ids and receipt handles, so a handle from another queue is rejected.
    tag: u64,
    visibility_timeout: Duration,
    retention: Duration,
    max_receive_count: Option<u32>,
}

/// The mutable part of a queue. Every method takes `now` so time is read once per call.
struct QueueState {
    rules: Rules,
    /// Every message in the queue (visible or in flight), by slot.
    messages: Slab<StoredMessage>,
    /// Visible messages in delivery order, as `(slot, seq)`. May hold entries of messages since deleted or
    /// expired; see the module docs.
    visible: VecDeque<(usize, u64)>,
    /// How many messages are visible (the FIFO's length minus its stale entries).
    visible_count: usize,
    /// In-flight messages by `(visibility deadline, slot)`.
    in_flight: BTreeSet<(Instant, usize)>,
    /// Every message by `(enqueue time, slot)`, for retention and the oldest message's age.
    by_age: BTreeSet<(Instant, usize)>,
    /// The next message's sequence number; never reused.
    next_seq: u64,
    /// While set, every port call fails with this error.
    failure: Option<BusError>,
}

/// A message as the queue keeps it.
struct StoredMessage {
    /// Unique within the queue, unlike the slot.
    seq: u64,
    id: Uuid,
    body: String,
    attributes: BTreeMap<String, String>,
    /// When the message was first enqueued, on tokio time (kept when moved to the dead-letter queue).
    enqueued_at: Instant,
    /// Wall clock at the first enqueue, for display only.
    sent_at: SystemTime,
    /// Receives so far; the latest receipt handle carries this number.
    receive_count: u32,
    /// Set while the message is in flight.
    lease: Option<Lease>,
}

/// The current receive of an in-flight message.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// When it was received: SQS caps the total invisibility since then at 12 hours.
    received_at: Instant,
    /// When it becomes visible again.
    deadline: Instant,
}

impl EmbeddedQueue {
    /// Creates an empty queue.
    ///
    /// # Panics
    /// If the config is outside what SQS accepts: a visibility timeout over 12 hours, a zero retention, or a
    /// `max_receive_count` outside 1 to 1,000. These are programming errors, not runtime conditions.
    pub fn new(name: &str, config: QueueConfig) -> Self {
        assert!(
            config.visibility_timeout <= MAX_VISIBILITY,
            "queue {name}: visibility timeout {:?} is over the SQS maximum of 12 h",
            config.visibility_timeout
        );
        assert!(!config.retention.is_zero(), "queue {name}: retention must be positive");
        if let Some(redrive) = &config.redrive {
            assert!(
                (1..=MAX_RECEIVE_COUNT_LIMIT).contains(&redrive.max_receive_count),
                "queue {name}: max_receive_count {} is outside 1..={MAX_RECEIVE_COUNT_LIMIT}",
                redrive.max_receive_count
            );
        }
        let rules = Rules {
            tag: Uuid::new_v4().as_u64_pair().0,
            visibility_timeout: config.visibility_timeout,
            retention: config.retention,
            max_receive_count: config.redrive.as_ref().map(|redrive| redrive.max_receive_count),
        };
        let state = QueueState {
            rules,
            messages: Slab::new(),
            visible: VecDeque::new(),
            visible_count: 0,
            in_flight: BTreeSet::new(),
            by_age: BTreeSet::new(),
            next_seq: 1,
            failure: None,
        };
        Self {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                redrive: config.redrive,
                state: Mutex::new(state),
                arrivals: Notify::new(),
            }),
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Sends a message straight to this queue (SQS `SendMessage`), bypassing any topic.
    pub fn send(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
        self.send_delayed(message, Duration::ZERO)
    }

    /// Sends a message straight to this queue, invisible for `delay` (SQS `SendMessage` with `DelaySeconds`;
    /// clamped to [`MAX_DELAY`], 15 minutes, as SQS caps it). Until then no receive sees it, and
    /// [`Consumer::stats`] counts it as in flight (SQS reports it apart, as `ApproximateNumberOfMessagesDelayed`;
    /// the port has no such count, and a delayed message is still work to do). Unlike SQS, the delay is not
    /// rounded to whole seconds.
    pub fn send_delayed(&self, message: OutgoingMessage, delay: Duration) -> Result<MessageId, BusError> {
        crate::check_message(&message)?;
        let delay = delay.min(MAX_DELAY);
        let now = Instant::now();
        let (id, wake_sleepers) = {
            let mut state = self.shared.lock();
            state.check_failure()?;
            state.expire(now);
            let earliest_before = state.next_deadline();
            let id = state.enqueue_delayed(message.body, message.attributes, now, SystemTime::now(), delay);
            (id, deadline_moved_earlier(earliest_before, state.next_deadline(), now))
        };
        if delay.is_zero() {
            self.shared.arrivals.notify_one();
        } else if wake_sleepers {
            // A long poll sleeping past the new message's deadline must look again then.
            self.shared.arrivals.notify_waiters();
        }
        Ok(id.to_string())
    }

    /// The queue's depth now, without going through the port (so injected failures do not apply).
    pub fn stats_now(&self) -> QueueStats {
        let now = Instant::now();
        let mut stats = {
            let mut state = self.shared.lock();
            state.expire(now);
            state.stats(now)
        };
        if let Some(redrive) = &self.shared.redrive {
            // Our lock is released first: two queue locks are never held at once, so no lock order to get wrong.
            stats.dead_letter = Some(redrive.dead_letter.stats_now().backlog());
        }
        stats
    }

    /// Makes every port call on this queue fail with `failure` until called again with `None`; for testing
    /// how consumers cope with broker errors. Messages already in the queue are kept.
    pub fn inject_failure(&self, failure: Option<BusError>) {
        self.shared.lock().failure = failure;
    }

    /// Whether both handles are to the same queue.
    pub(crate) fn is_same_queue(&self, other: &EmbeddedQueue) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Adds a message delivered by a topic subscription. SNS retries delivery to SQS until it succeeds, so
    /// injected failures do not apply here.
    pub(crate) fn deliver(&self, body: String, attributes: BTreeMap<String, String>, sent_at: SystemTime) {
        let now = Instant::now();
        {
            let mut state = self.shared.lock();
            state.expire(now);
            state.enqueue(body, attributes, now, sent_at);
        }
        self.shared.arrivals.notify_one();
    }

    /// Takes messages moved here from a queue that redrives to this one.
    fn accept_dead_letters(&self, messages: Vec<StoredMessage>) {
        let now = Instant::now();
        let count = messages.len();
        {
            let mut state = self.shared.lock();
            state.expire(now);
            for message in messages {
                state.insert_moved(message);
            }
        }
        for _ in 0..count {
            self.shared.arrivals.notify_one();
        }
    }

    /// One pass of a receive: takes what is visible now and moves over-received messages to the dead-letter
    /// queue. Also returns the earliest visibility deadline, so a long poll knows when to look again.
    fn receive_once(&self, max_messages: usize) -> Result<(Vec<ReceivedMessage>, Option<Instant>), BusError> {
        let now = Instant::now();
        let mut dead = Vec::new();
        let (received, next_deadline, wake_sleepers) = {
            let mut state = self.shared.lock();
            state.check_failure()?;
            state.expire(now);
            let earliest_before = state.next_deadline();
            let received = state.take_visible(max_messages, now, &mut dead);
            let next_deadline = state.next_deadline();
            (received, next_deadline, deadline_moved_earlier(earliest_before, next_deadline, now))
        };
        if wake_sleepers {
            self.shared.arrivals.notify_waiters();
        }
        if !dead.is_empty() {
            let redrive =
                self.shared.redrive.as_ref().expect("messages are only moved under a redrive policy");
            redrive.dead_letter.accept_dead_letters(dead);
        }
        Ok((received, next_deadline))
    }
}

impl fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedQueue").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

impl Shared {
    /// Locks the state. No code panics while holding the lock, so a poisoned lock still holds consistent state;
    /// carrying on beats turning one panic into a panic in every consumer.
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Consumer for EmbeddedQueue {
    async fn receive(&self, max_messages: usize, wait: Duration) -> Result<Vec<ReceivedMessage>, BusError> {
        if !(1..=MAX_BATCH_ENTRIES).contains(&max_messages) {
            return Err(BusError::InvalidParameter(format!(
                "max_messages must be 1 to {MAX_BATCH_ENTRIES}, not {max_messages}"
            )));
        }
        if wait > MAX_WAIT {
            return Err(BusError::InvalidParameter(format!(
                "wait must be at most {MAX_WAIT:?} (SQS WaitTimeSeconds <= 20), not {wait:?}"
            )));
        }
        let give_up_at = Instant::now() + wait;
        loop {
            // Register for arrivals before looking, so a message sent between the look and the sleep still
            // wakes us.
            let arrival = self.shared.arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();

            let (received, next_deadline) = self.receive_once(max_messages)?;
            if !received.is_empty() || Instant::now() >= give_up_at {
                return Ok(received);
            }
            let look_again_at = next_deadline.map_or(give_up_at, |deadline| deadline.min(give_up_at));
            tokio::select! {
                () = &mut arrival => {}
                () = tokio::time::sleep_until(look_again_at) => {}
            }
        }
    }

    async fn delete_batch(&self, handles: Vec<ReceiptHandle>) -> Result<Vec<EntryResult<()>>, BusError> {
        check_batch_size(handles.len())?;
        let now = Instant::now();
        let mut state = self.shared.lock();
        state.check_failure()?;
        state.expire(now);
        Ok(handles.iter().map(|handle| state.delete(handle)).collect())
    }

    async fn change_visibility_batch(
        &self,
        changes: Vec<VisibilityChange>,
    ) -> Result<Vec<EntryResult<()>>, BusError> {
        check_batch_size(changes.len())?;
        let now = Instant::now();
        let (results, wake_sleepers) = {
            let mut state = self.shared.lock();
            state.check_failure()?;
            state.expire(now);
            let earliest_before = state.next_deadline();
            let results: Vec<_> = changes.iter().map(|change| state.change_visibility(change, now)).collect();
            (results, deadline_moved_earlier(earliest_before, state.next_deadline(), now))
        };
        if wake_sleepers {
            self.shared.arrivals.notify_waiters();
        }
        Ok(results)
    }

    async fn send_to_dead_letter(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
        self.shared.lock().check_failure()?;
        match &self.shared.redrive {
            Some(redrive) => redrive.dead_letter.send(message),
            None => Err(BusError::Fatal {
                code: "NoDeadLetterQueue".into(),
                message: format!(
                    "queue {} has no redrive policy, so there is nowhere to send a dead letter; \
                     configure QueueConfig::redrive",
                    self.shared.name
                ),
            }),
        }
    }

    async fn stats(&self) -> Result<QueueStats, BusError> {
        self.shared.lock().check_failure()?;
        Ok(self.stats_now())
    }

    /// [`EmbeddedQueue::send_delayed`] to this queue: a new message, receive count 0.
    async fn requeue(&self, message: OutgoingMessage, delay: Duration) -> Result<MessageId, BusError> {
        self.send_delayed(message, delay)
    }
}

impl QueueState {
    fn check_failure(&self) -> Result<(), BusError> {
        match &self.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }

    /// Drops messages past retention and makes in-flight messages whose deadline has passed visible again.
    fn expire(&mut self, now: Instant) {
        while let Some(&(enqueued_at, slot)) = self.by_age.first() {
            if now.saturating_duration_since(enqueued_at) < self.rules.retention {
                break;
            }
            self.remove(slot);
        }
        while let Some(&(deadline, slot)) = self.in_flight.first() {
            if deadline > now {
                break;
            }
            self.in_flight.pop_first();
            let message = &mut self.messages[slot];
            message.lease = None;
            self.visible.push_back((slot, message.seq));
            self.visible_count += 1;
        }
    }

    fn enqueue(
        &mut self,
        body: String,
        attributes: BTreeMap<String, String>,
        now: Instant,
        sent_at: SystemTime,
    ) -> Uuid {
        let id = message_id(self.rules.tag, self.next_seq);
        self.insert_moved(StoredMessage {
            seq: 0,
            id,
            body,
            attributes,
            enqueued_at: now,
            sent_at,
            receive_count: 0,
            lease: None,
        });
        id
    }

    /// Enqueues a new message that stays invisible until `now + delay`: it waits in the in-flight index under
    /// a lease no receipt handle matches (receive count 0 is never handed out), and the usual expiry makes it
    /// visible. With no delay it is visible at once.
    fn enqueue_delayed(
        &mut self,
        body: String,
        attributes: BTreeMap<String, String>,
        now: Instant,
        sent_at: SystemTime,
        delay: Duration,
    ) -> Uuid {
        if delay.is_zero() {
            return self.enqueue(body, attributes, now, sent_at);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = message_id(self.rules.tag, seq);
        let deadline = now + delay;
        let slot = self.messages.insert(StoredMessage {
            seq,
            id,
            body,
            attributes,
            enqueued_at: now,
            sent_at,
            receive_count: 0,
            lease: Some(Lease { received_at: now, deadline }),
        });
        self.by_age.insert((now, slot));
        self.in_flight.insert((deadline, slot));
        id
    }

    /// Inserts a message as visible with a fresh sequence number, keeping its id and enqueue time (which a
    /// moved message brings along).
    fn insert_moved(&mut self, mut message: StoredMessage) {
        let seq = self.next_seq;
        self.next_seq += 1;
        message.seq = seq;
        message.receive_count = 0;
        message.lease = None;
        let enqueued_at = message.enqueued_at;
        let slot = self.messages.insert(message);
        self.by_age.insert((enqueued_at, slot));
        self.visible.push_back((slot, seq));
        self.visible_count += 1;
    }

    /// Removes a message wherever it is, keeping the indexes and counters exact.
    fn remove(&mut self, slot: usize) -> StoredMessage {
        let message = self.messages.remove(slot);
        self.by_age.remove(&(message.enqueued_at, slot));
        match message.lease {
            Some(lease) => {
                self.in_flight.remove(&(lease.deadline, slot));
            }
            // Its entry stays in the visible FIFO; receive skips it.
            None => self.visible_count -= 1,
        }
        message
    }

    /// Receives up to `max` visible messages; messages already received `max_receive_count` times go to `dead`.
    fn take_visible(
        &mut self,
        max: usize,
        now: Instant,
        dead: &mut Vec<StoredMessage>,
    ) -> Vec<ReceivedMessage> {
        let mut received = Vec::new();
        while received.len() < max {
            let Some((slot, seq)) = self.visible.pop_front() else { break };
            // A stale entry: the message was deleted or expired, and its slot may hold another one by now.
            let Some(message) = self.messages.get_mut(slot).filter(|message| message.seq == seq) else {
                continue;
            };
            debug_assert!(message.lease.is_none(), "a message in the visible FIFO is never in flight");
            if self.rules.max_receive_count.is_some_and(|limit| message.receive_count >= limit) {
                dead.push(self.remove(slot));
                continue;
            }
            message.receive_count += 1;
            let deadline = now + self.rules.visibility_timeout;
            message.lease = Some(Lease { received_at: now, deadline });
            self.in_flight.insert((deadline, slot));
            self.visible_count -= 1;
            received.push(ReceivedMessage {
                message_id: message.id.to_string(),
                receipt_handle: Receipt {
                    tag: self.rules.tag,
                    slot: slot as u64,
                    seq,
                    receive_count: message.receive_count,
                }
                .encode(),
                body: message.body.clone(),
                attributes: message.attributes.clone(),
                receive_count: message.receive_count,
                sent_at: message.sent_at,
            });
        }
        received
    }

    /// The earliest time an in-flight message becomes visible again.
    fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.first().map(|&(deadline, _)| deadline)
    }

    /// Finds the message a handle refers to, if the handle is for this queue and is the latest receive.
    fn resolve(&self, handle: &ReceiptHandle) -> Result<usize, BusError> {
        let receipt =
            Receipt::decode(&handle.0).filter(|receipt| receipt.tag == self.rules.tag).ok_or_else(|| {
                BusError::ReceiptHandleInvalid(format!("{handle} is not a handle of this queue"))
            })?;
        let slot = usize::try_from(receipt.slot).ok();
        match slot.and_then(|slot| self.messages.get(slot)).filter(|message| message.seq == receipt.seq) {
            Some(message) if message.receive_count == receipt.receive_count => {
                Ok(slot.expect("found by slot"))
            }
            Some(_) => Err(BusError::ReceiptHandleInvalid(format!(
                "{handle} is stale: the message was received again since"
            ))),
            None => Err(BusError::ReceiptHandleInvalid(format!(
                "{handle}: the message is no longer in the queue (deleted, expired or dead-lettered)"
            ))),
        }
    }

    /// Deletes the message of the latest receive; like SQS, that works even if its visibility has run out, as
    /// long as nobody received it again.
    fn delete(&mut self, handle: &ReceiptHandle) -> EntryResult<()> {
        let slot = self.resolve(handle)?;
        self.remove(slot);
        Ok(())
    }

    fn change_visibility(&mut self, change: &VisibilityChange, now: Instant) -> EntryResult<()> {
        if change.timeout > MAX_VISIBILITY {
            return Err(BusError::InvalidParameter(format!(
                "visibility timeout {:?} is over the SQS maximum of 12 h",
                change.timeout
            )));
        }
        let slot = self.resolve(&change.receipt_handle)?;
        let message = &mut self.messages[slot];
        let Some(lease) = &mut message.lease else {
            return Err(BusError::ReceiptHandleInvalid(format!(
                "{}: the message is not in flight (its visibility timeout ran out)",
                change.receipt_handle
            )));
        };
        let deadline = now + change.timeout;
        if deadline.duration_since(lease.received_at) > MAX_VISIBILITY {
            return Err(BusError::InvalidParameter(format!(
                "a message may stay invisible at most 12 h after it was received; extending by {:?} \
                 would pass that",
                change.timeout
            )));
        }
        self.in_flight.remove(&(lease.deadline, slot));
        lease.deadline = deadline;
        self.in_flight.insert((deadline, slot));
        Ok(())
    }

    fn stats(&self, now: Instant) -> QueueStats {
        QueueStats {
            visible: self.visible_count as u64,
            in_flight: self.in_flight.len() as u64,
            oldest_age: self
                .by_age
                .first()
                .map(|&(enqueued_at, _)| now.saturating_duration_since(enqueued_at)),
            dead_letter: None,
        }
    }
}

/// Whether sleeping long polls must wake and look again because the earliest visibility deadline moved earlier
/// than they may be sleeping until. A poll sleeps until that deadline or its own end, and no poll lasts longer
/// than [`MAX_WAIT`]: a deadline further out concerns nobody yet, so with the default 30 s visibility a receive
/// wakes no one.
fn deadline_moved_earlier(before: Option<Instant>, after: Option<Instant>, now: Instant) -> bool {
    after.is_some_and(|after| after < now + MAX_WAIT && before.is_none_or(|before| after < before))
}

/// A UUID-shaped message id, unique per queue and sequence number: cheaper than drawing randomness per message.
pub(crate) fn message_id(tag: u64, seq: u64) -> Uuid {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&tag.to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    // Sets the version and variant bits; they fall in the tag and in the top bits of a sequence number that
    // never gets that large, so ids stay unique.
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// What a receipt handle encodes: 56 hex digits of queue tag, slot, sequence number and receive count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Receipt {
    tag: u64,
    slot: u64,
    seq: u64,
    receive_count: u32,
}

impl Receipt {
    const LEN: usize = 16 + 16 + 16 + 8;

    fn encode(self) -> ReceiptHandle {
        ReceiptHandle(format!(
            "{:016x}{:016x}{:016x}{:08x}",
            self.tag, self.slot, self.seq, self.receive_count
        ))
    }

    fn decode(handle: &str) -> Option<Self> {
        if handle.len() != Self::LEN || !handle.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        let receipt = Self {
            tag: u64::from_str_radix(&handle[..16], 16).ok()?,
            slot: u64::from_str_radix(&handle[16..32], 16).ok()?,
            seq: u64::from_str_radix(&handle[32..48], 16).ok()?,
            receive_count: u32::from_str_radix(&handle[48..], 16).ok()?,
        };
        // Receive counts start at 1: a zero count was never handed out.
        (receipt.receive_count > 0).then_some(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_round_trips_and_rejects_garbage() {
        let receipt = Receipt { tag: u64::MAX, slot: 3, seq: 42, receive_count: 7 };
        assert_eq!(Receipt::decode(&receipt.encode().0), Some(receipt));
        assert_eq!(Receipt::decode(""), None);
        assert_eq!(Receipt::decode("not a handle"), None);
        let mut plus = receipt.encode().0;
        plus.replace_range(0..1, "+");
        assert_eq!(Receipt::decode(&plus), None, "from_str_radix would accept a sign; we must not");
        let zero = Receipt { receive_count: 0, ..receipt }.encode().0;
        assert_eq!(Receipt::decode(&zero), None, "a handle with receive count 0 was never issued");
    }

    #[test]
    fn message_ids_are_unique_and_uuid_shaped() {
        let a = message_id(7, 1);
        let b = message_id(7, 2);
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(Uuid::parse_str(&a.to_string()), Ok(a));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_fifo_entries_are_skipped_and_counters_stay_exact() {
        let queue = EmbeddedQueue::new("q", QueueConfig::default());
        for n in 0..3 {
            queue.send(OutgoingMessage::new(format!("m{n}"))).unwrap();
        }
        // Receive all three, let them time out, and delete the middle one while it is visible again.
        let received = queue.receive(10, Duration::ZERO).await.unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        queue.delete(received[1].receipt_handle.clone()).await.unwrap();
        let stats = queue.stats_now();
        assert_eq!((stats.visible, stats.in_flight), (2, 0));
        {
            let state = queue.shared.lock();
            assert_eq!(state.visible.len(), 3, "the deleted message's number is left behind");
            assert_eq!(state.messages.len(), 2);
            assert_eq!(state.by_age.len(), 2);
        }
        let again = queue.receive(10, Duration::ZERO).await.unwrap();
        let bodies: Vec<_> = again.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["m0", "m2"]);
        assert!(queue.shared.lock().visible.is_empty(), "receive drained the stale entry");
    }
}
