//! The open model: schedules kept whatever the server does, queueing delay reported from the intended send
//! times, percentiles right, timeouts classified.
//!
//! Bounds on wall-clock figures hold on a loaded 2-core machine: they judge what a wrong generator would get
//! wrong by far (a schedule lost by a second, a percentile from the wrong end), not the machine's noise.

use std::time::Duration;

use loadgen::LoadModel;
use loadgen::open_model::OpenLoad;

use crate::helpers::{Behaviour, measure, open, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_its_schedule_against_a_slow_server_and_reports_the_queueing_delay() {
    // Capacity 50/s (20 ms, one at a time), offered 100/s for 1 s: the 100th request is intended at 0.99 s but
    // answered at about 2 s, so honest latencies climb to about 1 s while every send stays on time.
    let server = serve(Behaviour::Serial(Duration::from_millis(20))).await;
    let measured =
        measure(&server, open(100.0, Duration::from_secs(1), 200), Duration::from_millis(50)).await;
    let (run, totals, lag) = (measured.open(), &measured.totals, measured.lag());

    // Kept schedule: a generator waiting for answers would send request i at ~20i ms instead of 10i ms, so
    // nearly every send would be late and the last by a second, its lag tracking its latency. Ours are on
    // time but for the machine's stalls (lags of milliseconds, up to a few hundred on a loaded 2-core machine),
    // whatever the queue in the server.
    assert_eq!((run.scheduled, totals.sent, totals.outcomes.accepted), (100, 100, 100), "{run:?} {totals:?}");
    assert!(run.connections >= 20, "lanes were opened for waiting requests: {run:?}");
    let queued_ms = (measured.elapsed.as_secs_f64() - 0.99) * 1000.0;
    let latency = measured.latency();
    assert!(queued_ms > 800.0, "the server needed ~2 s for 1 s of requests: {:?}", measured.elapsed);
    assert!(lag.p50_ms < 50.0, "most sends kept their schedule: {lag:?}");
    assert!(totals.late < 50, "fewer than half the sends more than 50 ms late: {}", totals.late);
    assert!(
        lag.max_ms < queued_ms / 2.0,
        "no send fell behind with the server's queue ({queued_ms:.0} ms): {lag:?}"
    );
    assert!(lag.mean_ms * 4.0 < latency.mean_ms, "lags are not the latencies: {lag:?} {latency:?}");
    // The last request (intended at 0.99 s) is answered when the load ends, after ~1 s of queueing in the
    // server; its latency must say so, measured from its intended time (from its send it would be ~20 ms).
    assert!(
        (latency.max_ms - queued_ms).abs() < 250.0,
        "the last request's latency is its queueing, {queued_ms:.0} ms: {latency:?}"
    );
    assert!(latency.p50_ms > 350.0, "queueing shows in the median: {latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_late_sends_and_keeps_their_wait_in_the_latency() {
    // One connection and a 20 ms server: at most 50/s can be sent, but 100/s are due. The sends fall behind;
    // each request's latency still counts from its intended time.
    let server = serve(Behaviour::Delay(Duration::from_millis(20))).await;
    let measured =
        measure(&server, open(100.0, Duration::from_millis(500), 1), Duration::from_millis(5)).await;
    let (totals, lag, latency) = (&measured.totals, measured.lag(), measured.latency());

    assert_eq!(totals.outcomes.accepted, 50, "{totals:?}");
    assert_eq!(server.max_in_flight(), 1);
    assert!(totals.late >= 40, "most sends were late: {}", totals.late);
    assert!(lag.max_ms > 350.0, "the last send waited ~0.5 s: {lag:?}");
    assert!(latency.max_ms > 350.0, "and that wait is in its latency: {latency:?}");
    assert!(latency.min_ms >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentiles_match_a_server_with_a_fixed_delay() {
    let server = serve(Behaviour::Delay(Duration::from_millis(50))).await;
    let measured = measure(&server, open(300.0, Duration::from_secs(2), 100), Duration::from_millis(5)).await;

    // Never below the delay; above it only by what tokio's timer (rounding the server's sleep up to the next
    // millisecond) and a loaded 2-core machine add: a little to the median, stalls of a few hundred
    // milliseconds to the tail. Wrong percentile arithmetic (the wrong end of the distribution, a unit off)
    // would land far outside.
    let latency = measured.latency();
    assert_eq!(latency.count, 600);
    assert!(latency.min_ms >= 50.0, "{latency:?}");
    assert!((50.0..100.0).contains(&latency.p50_ms), "{latency:?}");
    assert!((latency.p50_ms..500.0).contains(&latency.p99_ms), "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentiles_separate_the_fast_nine_tenths_from_the_slow_tenth() {
    let server =
        serve(Behaviour::Bimodal { fast: Duration::from_millis(10), slow: Duration::from_millis(100) }).await;
    let measured = measure(&server, open(400.0, Duration::from_secs(2), 100), Duration::from_millis(5)).await;

    // 10% are slow, so the median sits with the fast ones (well under the slow 100 ms) and p95/p99 with the
    // slow ones (p90 is the boundary). Stalls of a loaded 2-core machine reach the tail (a few hundred
    // milliseconds), not the median.
    let latency = measured.latency();
    assert_eq!(latency.count, 800);
    assert!((10.0..50.0).contains(&latency.p50_ms), "{latency:?}");
    assert!((100.0..500.0).contains(&latency.p95_ms), "{latency:?}");
    assert!((latency.p95_ms..=latency.max_ms).contains(&latency.p99_ms), "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_classified_and_timed() {
    let server = serve(Behaviour::Delay(Duration::from_secs(5))).await;
    let model = LoadModel::Open(OpenLoad {
        rate: 20.0,
        duration: Duration::from_millis(250),
        max_connections: 50,
        timeout: Duration::from_millis(200),
    });
    let measured = measure(&server, model, Duration::from_millis(5)).await;

    let (outcomes, latency) = (measured.totals.outcomes, measured.latency());
    assert_eq!((outcomes.timeout, outcomes.total()), (5, 5), "{outcomes:?}");
    // At least the timeout, and nowhere near the server's 5 s: the request was given up, not waited for.
    assert!((200.0..1000.0).contains(&latency.p50_ms), "timeouts take the timeout: {latency:?}");
}
