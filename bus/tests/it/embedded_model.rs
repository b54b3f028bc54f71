//! Model-based check of the embedded queue: random interleavings of send, receive, delete and change-visibility
//! (with current and stale receipt handles), dead-lettering and clock advances. After every step, and after a
//! final drain, every message sent is in exactly one place: deleted, in the queue (visible or in flight), or in
//! the dead-letter queue. Nothing is lost, nothing is delivered while it should be invisible, and a stale handle
//! never changes anything.

use std::collections::HashSet;
use std::time::Duration;

use bus::embedded::{EmbeddedQueue, QueueConfig, Redrive};
use bus::{BusError, Consumer, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tokio::time::Instant;

const VISIBILITY: Duration = Duration::from_secs(30);
const MAX_RECEIVE_COUNT: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Send,
    Receive { max: usize },
    Delete { pick: usize, stale: bool },
    ChangeVisibility { pick: usize, stale: bool, secs: u64 },
    SendToDeadLetter,
    Advance { secs: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        4 => (1..=10usize).prop_map(|max| Op::Receive { max }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, stale)| Op::Delete { pick, stale }),
        2 => (any::<usize>(), any::<bool>(), 0..=60u64)
            .prop_map(|(pick, stale, secs)| Op::ChangeVisibility { pick, stale, secs }),
        1 => Just(Op::SendToDeadLetter),
        3 => (0..=45u64).prop_map(|secs| Op::Advance { secs }),
    ]
}

/// Where the model knows (or narrows down) a message to be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    /// Visible in the queue.
    Visible,
    /// In flight in the queue until the deadline.
    InFlight { deadline: Instant },
    /// Visible with `MAX_RECEIVE_COUNT` receives used up: still in the queue, or moved to the DLQ by a receive
    /// that passed over it. The model does not assume an order in which receives look at messages.
    Exhausted,
    /// In the dead-letter queue.
    DeadLetter,
    /// Deleted by a successful delete.
    Deleted,
}

#[derive(Debug)]
struct Tracked {
    body: String,
    place: Place,
    receive_count: u32,
    /// Every handle this message was received with, oldest first.
    handles: Vec<ReceiptHandle>,
}

struct Model {
    messages: Vec<Tracked>,
    /// How many exhausted messages are known to have been moved to the DLQ without knowing which ones.
    unattributed_moves: u64,
}

impl Model {
    /// What the queue does lazily: in-flight messages past their deadline are visible again.
    fn expire(&mut self, now: Instant) {
        for message in &mut self.messages {
            if let Place::InFlight { deadline } = message.place
                && deadline <= now
            {
                message.place = if message.receive_count >= MAX_RECEIVE_COUNT {
                    Place::Exhausted
                } else {
                    Place::Visible
                };
            }
        }
    }

    fn index_of(&self, body: &str) -> usize {
        self.messages.iter().position(|m| m.body == body).unwrap_or_else(|| panic!("unknown message {body}"))
    }

    fn count(&self, predicate: impl Fn(Place) -> bool) -> u64 {
        self.messages.iter().filter(|m| predicate(m.place)).count() as u64
    }

    /// Picks a handle of a received message: its latest, or (if it has one) an older, stale one.
    fn handle(&self, pick: usize, stale: bool) -> Option<(usize, ReceiptHandle, bool)> {
        let received: Vec<usize> =
            (0..self.messages.len()).filter(|&i| !self.messages[i].handles.is_empty()).collect();
        let index = *received.get(pick % received.len().max(1))?;
        let handles = &self.messages[index].handles;
        if stale && handles.len() > 1 {
            Some((index, handles[pick % (handles.len() - 1)].clone(), true))
        } else {
            Some((index, handles.last().cloned()?, false))
        }
    }
}

fn assert_invalid_handle(result: &Result<(), BusError>, what: &str) {
    assert!(
        matches!(result, Err(BusError::ReceiptHandleInvalid(_))),
        "{what}: expected ReceiptHandleInvalid, got {result:?}"
    );
}

/// Checks one receive's messages against the model and records them as in flight.
fn record_receive(model: &mut Model, received: &[ReceivedMessage], now: Instant, max: usize) {
    assert!(received.len() <= max);
    let mut seen = HashSet::new();
    for message in received {
        let index = model.index_of(&message.body);
        assert!(seen.insert(index), "{} delivered twice in one receive", message.body);
        let tracked = &mut model.messages[index];
        assert_eq!(
            tracked.place,
            Place::Visible,
            "{} delivered while it should not be (deleted, in flight, dead-lettered or out of receives)",
            tracked.body
        );
        assert_eq!(message.receive_count, tracked.receive_count + 1);
        tracked.receive_count += 1;
        tracked.handles.push(message.receipt_handle.clone());
        tracked.place = Place::InFlight { deadline: now + VISIBILITY };
    }
}

async fn run(ops: Vec<Op>) {
    let dead_letter = EmbeddedQueue::new("dlq", QueueConfig::default());
    let queue = EmbeddedQueue::new(
        "q",
        QueueConfig {
            visibility_timeout: VISIBILITY,
            redrive: Some(Redrive { dead_letter: dead_letter.clone(), max_receive_count: MAX_RECEIVE_COUNT }),
            ..QueueConfig::default()
        },
    );
    let mut model = Model { messages: Vec::new(), unattributed_moves: 0 };

    for op in ops {
        let now = Instant::now();
        model.expire(now);
        let dead_letters_before = dead_letter.stats_now().backlog();
        match op {
            Op::Send => {
                let body = format!("m{}", model.messages.len());
                queue.send(OutgoingMessage::new(body.clone())).unwrap();
                model.messages.push(Tracked {
                    body,
                    place: Place::Visible,
                    receive_count: 0,
                    handles: Vec::new(),
                });
            }
            Op::SendToDeadLetter => {
                let body = format!("m{}", model.messages.len());
                queue.send_to_dead_letter(OutgoingMessage::new(body.clone())).await.unwrap();
                model.messages.push(Tracked {
                    body,
                    place: Place::DeadLetter,
                    receive_count: 0,
                    handles: Vec::new(),
                });
            }
            Op::Receive { max } => {
                let received = queue.receive(max, Duration::ZERO).await.unwrap();
                record_receive(&mut model, &received, now, max);
                model.unattributed_moves += dead_letter.stats_now().backlog() - dead_letters_before;
                let exhausted = model.count(|p| p == Place::Exhausted);
                assert!(
                    model.unattributed_moves <= exhausted,
                    "{} moved to the DLQ but only {exhausted} were out of receives",
                    model.unattributed_moves
                );
                if received.len() < max {
                    // A short receive looked at everything visible, so it moved every exhausted message.
                    assert_eq!(
                        model.count(|p| p == Place::Visible),
                        0,
                        "a receive returned {} of {max} while messages were visible",
                        received.len()
                    );
                    assert_eq!(
                        model.unattributed_moves, exhausted,
                        "a short receive moves every exhausted message"
                    );
                }
                if model.unattributed_moves == exhausted {
                    for message in &mut model.messages {
                        if message.place == Place::Exhausted {
                            message.place = Place::DeadLetter;
                        }
                    }
                    model.unattributed_moves = 0;
                }
            }
            Op::Delete { pick, stale } => {
                let Some((index, handle, is_stale)) = model.handle(pick, stale) else { continue };
                let result = queue.delete(handle).await;
                let tracked = &mut model.messages[index];
                match (is_stale, tracked.place) {
                    (true, _) | (false, Place::Deleted | Place::DeadLetter) => {
                        assert_invalid_handle(&result, "delete with a stale or dead handle")
                    }
                    (false, Place::Visible | Place::InFlight { .. }) => {
                        result.unwrap();
                        tracked.place = Place::Deleted;
                    }
                    (false, Place::Exhausted) => match result {
                        Ok(()) => tracked.place = Place::Deleted,
                        Err(BusError::ReceiptHandleInvalid(_)) => {
                            assert!(model.unattributed_moves > 0, "an exhausted message vanished unmoved");
                            model.unattributed_moves -= 1;
                            tracked.place = Place::DeadLetter;
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    },
                }
            }
            Op::ChangeVisibility { pick, stale, secs } => {
                let Some((index, handle, is_stale)) = model.handle(pick, stale) else { continue };
                let result = queue.change_visibility(handle, Duration::from_secs(secs)).await;
                let tracked = &mut model.messages[index];
                match (is_stale, tracked.place) {
                    (false, Place::InFlight { .. }) => {
                        result.unwrap();
                        tracked.place = Place::InFlight { deadline: now + Duration::from_secs(secs) };
                    }
                    _ => assert_invalid_handle(&result, "change visibility of a message not in flight"),
                }
            }
            Op::Advance { secs } => tokio::time::advance(Duration::from_secs(secs)).await,
        }

        // Conservation after every step, from the queues' own counters.
        model.expire(Instant::now());
        let stats = queue.stats_now();
        let in_flight = model.count(|p| matches!(p, Place::InFlight { .. }));
        let visible = model.count(|p| p == Place::Visible);
        let exhausted = model.count(|p| p == Place::Exhausted);
        let dead = model.count(|p| p == Place::DeadLetter);
        let deleted = model.count(|p| p == Place::Deleted);
        assert_eq!(stats.in_flight, in_flight, "in flight");
        assert_eq!(stats.dead_letter, Some(dead_letter.stats_now().backlog()));
        let dlq = stats.dead_letter.unwrap();
        assert_eq!(stats.visible, visible + exhausted - model.unattributed_moves, "visible");
        assert_eq!(dlq, dead + model.unattributed_moves, "dead letters");
        assert_eq!(
            stats.visible + stats.in_flight + dlq + deleted,
            model.messages.len() as u64,
            "every message is in exactly one place"
        );
    }

    // Drain: make everything visible, receive all of the queue, then all of the dead-letter queue.
    tokio::time::advance(Duration::from_secs(60 * 60)).await;
    model.expire(Instant::now());
    let mut from_queue = Vec::new();
    loop {
        let received = queue.receive(10, Duration::ZERO).await.unwrap();
        if received.is_empty() {
            break;
        }
        from_queue.extend(received);
    }
    let mut from_dead_letter = Vec::new();
    loop {
        let received = dead_letter.receive(10, Duration::ZERO).await.unwrap();
        if received.is_empty() {
            break;
        }
        from_dead_letter.extend(received);
    }
    let queue_bodies: HashSet<_> = from_queue.iter().map(|m| m.body.clone()).collect();
    let dead_bodies: HashSet<_> = from_dead_letter.iter().map(|m| m.body.clone()).collect();
    assert_eq!(queue_bodies.len(), from_queue.len(), "duplicate delivery in the drain");
    assert_eq!(dead_bodies.len(), from_dead_letter.len(), "duplicate in the dead-letter queue");
    for message in &model.messages {
        let (in_queue, in_dead) = (queue_bodies.contains(&message.body), dead_bodies.contains(&message.body));
        match message.place {
            Place::Deleted => assert!(!in_queue && !in_dead, "deleted {} came back", message.body),
            Place::Visible => assert!(in_queue && !in_dead, "{} lost from the queue", message.body),
            Place::Exhausted | Place::DeadLetter => {
                assert!(!in_queue && in_dead, "{} should be in the dead-letter queue", message.body)
            }
            Place::InFlight { .. } => unreachable!("an hour later nothing is in flight"),
        }
    }
    assert_eq!(
        queue_bodies.len() + dead_bodies.len() + model.count(|p| p == Place::Deleted) as usize,
        model.messages.len(),
        "nothing unknown appeared"
    );
}

proptest! {
    // Failing cases are saved next to this file (`<module>.proptest-regressions`). proptest's default would put
    // them in `tests/proptest-regressions/` now that the tests share a `main.rs`.
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_message_is_lost_or_duplicated(ops in proptest::collection::vec(op(), 1..80)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
