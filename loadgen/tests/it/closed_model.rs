//! The closed model: exactly the users asked for, started at the spawn rate, pausing between requests.
//!
//! A loaded machine only slows users down, so counts are bounded above by what the model allows at best (a
//! hard bound) and below within a factor of the expected count.

use std::time::Duration;

use loadgen::LoadModel;
use loadgen::closed_model::{ClosedLoad, WaitRange};

use crate::helpers::{Behaviour, measure, serve};

fn closed(users: usize, spawn_rate: f64, wait: WaitRange, duration: Duration) -> LoadModel {
    LoadModel::Closed(ClosedLoad { users, spawn_rate, wait, duration, timeout: Duration::from_secs(10) })
}

const NO_WAIT: WaitRange = WaitRange { min: Duration::ZERO, max: Duration::ZERO };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_exactly_the_users_asked_for() {
    // No pause between requests and a 50 ms server: each user has one request in flight all the time.
    let server = serve(Behaviour::Delay(Duration::from_millis(50))).await;
    let measured =
        measure(&server, closed(4, 1000.0, NO_WAIT, Duration::from_secs(1)), Duration::from_millis(5)).await;

    assert_eq!(server.max_in_flight(), 4, "never more than the users, and all of them at once");
    // Each request takes at least 50 ms, so a user finishes at most 20 in its second: at most 80 in all. A
    // loaded machine stretches each exchange, so at least half of that.
    let done = measured.totals.outcomes.accepted;
    assert!((40..=80).contains(&done), "4 users × 1 s ÷ 50 ms ≈ 80 requests, got {done}");
    let abandoned = measured.closed().abandoned;
    assert!(abandoned <= 4, "at most one in flight per user at the end: {abandoned}");
    assert_eq!(measured.totals.lag.len(), 0, "the closed model has no schedule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_for_the_wait_time_between_requests() {
    // A fast server and a 100 ms pause: each user manages about 10 requests a second.
    let server = serve(Behaviour::Delay(Duration::ZERO)).await;
    let wait = WaitRange { min: Duration::from_millis(80), max: Duration::from_millis(120) };
    let measured =
        measure(&server, closed(2, 1000.0, wait, Duration::from_secs(1)), Duration::from_millis(5)).await;

    // Every pause is at least 80 ms, so a user sends at most 1 + 1000 ÷ 80 = 13 requests in its second (26 for
    // both); without pauses it would send thousands. At least half the expected 20.
    let done = measured.totals.outcomes.accepted;
    assert!((10..=26).contains(&done), "2 users × 1 s ÷ ~100 ms ≈ 20 requests, got {done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_users_at_the_spawn_rate() {
    // 5 users at 5 per second in a 1 s run against a 100 ms server: user i starts at i × 200 ms, so the users
    // send at most 10 + 8 + 6 + 4 + 2 = 30 requests, not the 50 all-at-once users would.
    let server = serve(Behaviour::Delay(Duration::from_millis(100))).await;
    let measured =
        measure(&server, closed(5, 5.0, NO_WAIT, Duration::from_secs(1)), Duration::from_millis(5)).await;

    let started = measured.totals.sent;
    assert!((15..=34).contains(&started), "≈30 requests sent, got {started}");
    // No sample shows more users than the spawn rate allows by its time (samples are timed from before the
    // load began, so they are never early), an early one shows few, and all five run later.
    let users = &measured.users;
    for &(at, running) in users {
        let allowed = (at.as_secs_f64() * 5.0).floor() as usize + 1;
        assert!(running <= allowed, "{running} users at {at:?}, at most {allowed} by then: {users:?}");
    }
    assert!(users.iter().any(|&(at, running)| at < Duration::from_millis(500) && running < 5), "{users:?}");
    assert!(users.iter().any(|&(_, running)| running == 5), "all five later: {users:?}");
}
