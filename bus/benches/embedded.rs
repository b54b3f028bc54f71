//! Throughput and memory floors of the embedded broker, on one core (a current-thread runtime).
//!
//! Run with `cargo bench -p bus --bench embedded`. It prints its figures and exits non-zero if a floor is missed:
//!
//! - publish (through the topic) -> receive(10) -> delete_batch(10) sustains at least 500,000 messages/s on an
//!   empty queue;
//! - with 1,000,000 messages queued it is at most 2x slower (the data structures do not degrade with depth);
//! - 1,000,000 queued 300-byte messages take less than 1 GiB (growth of VmRSS in /proc/self/status).
//!
//! Each rate is the best of a few short runs, so a moment of contention from other processes on a shared
//! machine does not decide the result.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bus::embedded::{Delivery, EmbeddedQueue, EmbeddedTopic, QueueConfig};
use bus::{Consumer, MAX_BATCH_ENTRIES, OutgoingMessage, Publisher};

/// Body size of every message: about the size of one serialized order.
const BODY_BYTES: usize = 300;
/// The throughput floor on an empty queue.
const FLOOR_MESSAGES_PER_SECOND: f64 = 500_000.0;
/// The depth for the "deep queue" run and the memory measurement.
const DEEP: usize = 1_000_000;
/// How much slower the deep queue may be than the empty one.
const MAX_DEEP_SLOWDOWN: f64 = 2.0;
/// The memory ceiling for `DEEP` queued messages.
const MEMORY_CEILING_BYTES: u64 = 1 << 30;
/// Messages per timed run: long enough to average out, short enough that the whole bench takes seconds.
const MESSAGES_PER_RUN: usize = 1_000_000;
/// Timed runs per measurement; the best counts.
const RUNS: usize = 3;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let failures = runtime.block_on(measure());
    if failures.is_empty() {
        println!("all floors met");
        ExitCode::SUCCESS
    } else {
        for failure in &failures {
            eprintln!("FLOOR MISSED: {failure}");
        }
        ExitCode::FAILURE
    }
}

/// A topic with one raw subscription, as in production.
fn pipeline() -> (EmbeddedTopic, EmbeddedQueue) {
    let topic = EmbeddedTopic::new("orders");
    let queue = EmbeddedQueue::new("orders", QueueConfig::default());
    topic.subscribe(&queue, Delivery::Raw);
    (topic, queue)
}

async fn measure() -> Vec<String> {
    let mut failures = Vec::new();
    let body = "x".repeat(BODY_BYTES);

    // Memory first, while the process is small: fill a queue to DEEP and watch VmRSS grow.
    let (deep_topic, deep_queue) = pipeline();
    let rss_before = resident_bytes();
    let started = Instant::now();
    for _ in 0..DEEP {
        deep_topic.publish(OutgoingMessage::new(body.clone())).await.expect("publish");
    }
    let fill_time = started.elapsed();
    let rss_after = resident_bytes();
    let grown = rss_after.saturating_sub(rss_before);
    assert_eq!(deep_queue.stats_now().visible, DEEP as u64);
    println!(
        "memory: {DEEP} queued {BODY_BYTES}-byte messages add {:.0} MiB of RSS ({} bytes/message; \
         filled in {:.2} s); ceiling {} MiB",
        mib(grown),
        grown / DEEP as u64,
        fill_time.as_secs_f64(),
        mib(MEMORY_CEILING_BYTES),
    );
    if grown >= MEMORY_CEILING_BYTES {
        failures.push(format!(
            "{DEEP} messages took {:.0} MiB, ceiling {} MiB",
            mib(grown),
            mib(MEMORY_CEILING_BYTES)
        ));
    }

    let deep_rate = best_rate(&deep_topic, &deep_queue, &body).await;
    assert_eq!(deep_queue.stats_now().visible, DEEP as u64, "the cycle keeps the depth");
    drop((deep_topic, deep_queue));

    let (topic, queue) = pipeline();
    let empty_rate = best_rate(&topic, &queue, &body).await;
    assert_eq!(queue.stats_now().backlog(), 0);

    println!(
        "throughput (publish -> receive(10) -> delete_batch, one core): empty {:.0} msg/s (floor {:.0}); \
         {DEEP} deep {:.0} msg/s ({:.2}x slower, allowed {MAX_DEEP_SLOWDOWN}x)",
        empty_rate,
        FLOOR_MESSAGES_PER_SECOND,
        deep_rate,
        empty_rate / deep_rate,
    );
    if empty_rate < FLOOR_MESSAGES_PER_SECOND {
        failures.push(format!("empty-queue rate {empty_rate:.0} msg/s < {FLOOR_MESSAGES_PER_SECOND:.0}"));
    }
    if empty_rate / deep_rate > MAX_DEEP_SLOWDOWN {
        failures.push(format!(
            "{DEEP}-deep rate {deep_rate:.0} msg/s is {:.2}x slower than empty ({empty_rate:.0})",
            empty_rate / deep_rate
        ));
    }
    failures
}

/// The best rate of `RUNS` timed runs (after a warm-up run) of the publish -> receive -> delete cycle.
async fn best_rate(topic: &EmbeddedTopic, queue: &EmbeddedQueue, body: &str) -> f64 {
    cycle(topic, queue, body, MESSAGES_PER_RUN / 10).await;
    let mut best = 0.0_f64;
    for _ in 0..RUNS {
        let elapsed = cycle(topic, queue, body, MESSAGES_PER_RUN).await;
        best = best.max(MESSAGES_PER_RUN as f64 / elapsed.as_secs_f64());
    }
    best
}

/// Publishes, receives and deletes `messages` messages in batches of ten, as a worker would.
async fn cycle(topic: &EmbeddedTopic, queue: &EmbeddedQueue, body: &str, messages: usize) -> Duration {
    let started = Instant::now();
    for _ in 0..messages / MAX_BATCH_ENTRIES {
        for _ in 0..MAX_BATCH_ENTRIES {
            topic.publish(OutgoingMessage::new(body)).await.expect("publish");
        }
        let received = queue.receive(MAX_BATCH_ENTRIES, Duration::ZERO).await.expect("receive");
        assert_eq!(received.len(), MAX_BATCH_ENTRIES);
        let handles = received.into_iter().map(|message| message.receipt_handle).collect();
        let results = queue.delete_batch(handles).await.expect("delete");
        assert!(results.iter().all(Result::is_ok));
    }
    started.elapsed()
}

/// Resident set size of this process, from /proc/self/status.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status (Linux only)");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
