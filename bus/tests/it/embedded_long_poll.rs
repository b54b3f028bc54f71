//! Long polling on the embedded queue: a waiting receive returns the moment a message is available (sent, or
//! back from flight), waits the full time otherwise, and sleeps rather than spins. All on a paused clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bus::embedded::{EmbeddedQueue, QueueConfig};
use bus::{Consumer, MAX_WAIT, OutgoingMessage};
use tokio::time::{Instant, advance, sleep};

fn queue() -> EmbeddedQueue {
    EmbeddedQueue::new("orders", QueueConfig::default())
}

/// Counts how often the wrapped future is polled: a long poll that sleeps is polled a handful of times, one
/// that spins is polled without end.
struct CountPolls<F> {
    inner: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for CountPolls<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn an_empty_long_poll_waits_the_full_time_without_spinning() {
    let queue = queue();
    let polls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let receive = CountPolls { inner: Box::pin(queue.receive(10, MAX_WAIT)), polls: polls.clone() };
    let received = receive.await.unwrap();
    assert!(received.is_empty());
    assert_eq!(started.elapsed(), MAX_WAIT);
    let polls = polls.load(Ordering::Relaxed);
    assert!(polls <= 3, "a sleeping long poll is polled a few times, not {polls}");
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_wakes_the_moment_a_message_is_sent() {
    let queue = queue();
    let sender = queue.clone();
    tokio::spawn(async move {
        sleep(Duration::from_secs(5)).await;
        sender.send(OutgoingMessage::new("late")).unwrap();
    });
    let started = Instant::now();
    let received = queue.receive(10, MAX_WAIT).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, "late");
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_wakes_when_an_in_flight_message_times_out() {
    let queue = queue();
    queue.send(OutgoingMessage::new("m")).unwrap();
    let first = queue.receive(1, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    advance(Duration::from_secs(15)).await;

    let started = Instant::now();
    let polls = Arc::new(AtomicUsize::new(0));
    let receive = CountPolls { inner: Box::pin(queue.receive(10, MAX_WAIT)), polls: polls.clone() };
    let again = receive.await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(15), "woke at the 30 s visibility deadline");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    assert!(polls.load(Ordering::Relaxed) <= 3);
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_wakes_when_a_message_is_given_back() {
    let queue = queue();
    queue.send(OutgoingMessage::new("m")).unwrap();
    let handle = queue.receive(1, Duration::ZERO).await.unwrap().remove(0).receipt_handle;
    let giver = queue.clone();
    tokio::spawn(async move {
        sleep(Duration::from_secs(2)).await;
        giver.change_visibility(handle, Duration::ZERO).await.unwrap();
    });
    let started = Instant::now();
    let received = queue.receive(10, MAX_WAIT).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(received.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_notices_a_deadline_moved_earlier() {
    let queue = queue();
    queue.send(OutgoingMessage::new("m")).unwrap();
    let handle = queue.receive(1, Duration::ZERO).await.unwrap().remove(0).receipt_handle;
    let changer = queue.clone();
    tokio::spawn(async move {
        sleep(Duration::from_secs(1)).await;
        changer.change_visibility(handle, Duration::from_secs(4)).await.unwrap();
    });
    let started = Instant::now();
    let received = queue.receive(10, MAX_WAIT).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(5), "1 s until the change, then the new 4 s deadline");
    assert_eq!(received.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_sleeping_long_poll_hears_of_a_visibility_timeout_shorter_than_its_wait() {
    // Two pollers, one message: one takes it and never deletes it; the other must get it back when its 5 s
    // visibility runs out, not when its own 20 s wait ends.
    let queue = EmbeddedQueue::new(
        "q",
        QueueConfig { visibility_timeout: Duration::from_secs(5), ..QueueConfig::default() },
    );
    let pollers: Vec<_> = (0..2)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let received = queue.receive(1, MAX_WAIT).await.unwrap();
                (received.first().map(|m| m.receive_count), started.elapsed())
            })
        })
        .collect();
    sleep(Duration::from_secs(1)).await;
    queue.send(OutgoingMessage::new("m")).unwrap();
    let mut outcomes = Vec::new();
    for poller in pollers {
        outcomes.push(poller.await.unwrap());
    }
    outcomes.sort();
    assert_eq!(outcomes, [(Some(1), Duration::from_secs(1)), (Some(2), Duration::from_secs(6))]);
}

#[tokio::test(start_paused = true)]
async fn every_waiting_receiver_gets_one_of_a_burst() {
    let queue = queue();
    let receivers: Vec<_> = (0..4)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let received = queue.receive(1, MAX_WAIT).await.unwrap();
                (received.len(), started.elapsed())
            })
        })
        .collect();
    tokio::task::yield_now().await;
    sleep(Duration::from_secs(1)).await;
    for n in 0..4 {
        queue.send(OutgoingMessage::new(n.to_string())).unwrap();
    }
    for receiver in receivers {
        let (count, waited) = receiver.await.unwrap();
        assert_eq!(count, 1);
        assert_eq!(waited, Duration::from_secs(1));
    }
    assert_eq!(queue.stats_now().in_flight, 4);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_long_poll_does_not_swallow_the_wakeup() {
    let queue = queue();
    let patient = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.receive(1, MAX_WAIT).await.unwrap() })
    };
    // A second receiver that gives up (its future is dropped) just as the message arrives.
    let impatient = queue.receive(1, MAX_WAIT);
    let sender = queue.clone();
    tokio::spawn(async move {
        sleep(Duration::from_secs(3)).await;
        sender.send(OutgoingMessage::new("m")).unwrap();
    });
    let _ = tokio::time::timeout(Duration::from_secs(3), impatient).await;
    let started = Instant::now();
    let received = patient.await.unwrap();
    let stats = queue.stats_now();
    // Whoever took it, the message is not stuck visible while a receiver sleeps.
    assert_eq!(received.len() as u64 + stats.visible, 1, "{stats:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}
