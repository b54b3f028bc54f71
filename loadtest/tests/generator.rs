//! The generator measured against loopback servers with known behaviour (bound to port 0): schedules kept,
//! queueing delay reported, percentiles right, users and wait times respected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use hyper::Method;
use loadtest::client::{RequestSpec, Target};
use loadtest::closed_model::{ClosedLoad, WaitRange};
use loadtest::open_model::OpenLoad;
use loadtest::probe::Probes;
use loadtest::results::RunResult;
use loadtest::runner::{self, LoadModel, RunPlan};
use tokio_util::sync::CancellationToken;

/// How the test server answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Every request takes this long, all in parallel.
    Delay(Duration),
    /// One request at a time, each taking this long: capacity is 1 / delay.
    Serial(Duration),
    /// Every tenth request takes `slow`, the others `fast`.
    Bimodal { fast: Duration, slow: Duration },
}

#[derive(Clone)]
struct ServerState {
    behaviour: Behaviour,
    serial: Arc<tokio::sync::Mutex<()>>,
    seen: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

async fn handle(State(state): State<ServerState>) -> &'static str {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let n = state.seen.fetch_add(1, Ordering::SeqCst);
    match state.behaviour {
        Behaviour::Delay(delay) => tokio::time::sleep(delay).await,
        Behaviour::Serial(delay) => {
            let _turn = state.serial.lock().await;
            tokio::time::sleep(delay).await;
        }
        Behaviour::Bimodal { fast, slow } => tokio::time::sleep(if n % 10 == 9 { slow } else { fast }).await,
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    "ok"
}

struct TestServer {
    addr: SocketAddr,
    state: ServerState,
}

async fn serve(behaviour: Behaviour) -> TestServer {
    let state = ServerState {
        behaviour,
        serial: Arc::default(),
        seen: Arc::default(),
        in_flight: Arc::default(),
        max_in_flight: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/work", post(handle)).with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TestServer { addr, state }
}

fn spec(target: &Target) -> RequestSpec {
    target.request(Method::POST, "/work", vec![bytes::Bytes::from_static(b"{}")])
}

/// One measurement at a time: these tests judge timing, and parallel tests on a 2-core machine would
/// measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(server: &TestServer, model: LoadModel, late_threshold: Duration) -> RunResult {
    let _alone = SERIAL.lock().await;
    let target = Target::local(server.addr);
    let plan = RunPlan {
        scenario: "test".into(),
        mode: "plain".into(),
        spec: spec(&target),
        target,
        model,
        sample_every: Duration::from_millis(100),
        late_threshold,
        drain: None,
        progress: false,
    };
    runner::execute(&plan, &Probes::default(), &CancellationToken::new()).await
}

fn open(rate: f64, duration: Duration, max_connections: usize) -> LoadModel {
    LoadModel::Open(OpenLoad { rate, duration, max_connections, timeout: Duration::from_secs(10) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_keeps_its_schedule_against_a_slow_server_and_reports_the_queueing_delay() {
    // Capacity 50/s (20 ms, one at a time), offered 100/s for 1 s: the 100th request is intended at 0.99 s but
    // answered at about 2 s, so honest latencies climb to about 1 s while every send stays on time.
    let server = serve(Behaviour::Serial(Duration::from_millis(20))).await;
    let result = run(&server, open(100.0, Duration::from_secs(1), 200), Duration::from_millis(10)).await;

    // Kept schedule: lags of milliseconds (a busy 2-core machine adds some), where a generator waiting for
    // answers would fall behind by up to a second.
    let schedule = result.schedule.expect("open model reports its schedule");
    assert_eq!((schedule.scheduled, result.sent, result.outcomes.accepted), (100, 100, 100), "{result:#?}");
    assert!(schedule.lag.p99_ms < 25.0, "sends kept their schedule: {:?}", schedule.lag);
    assert!(schedule.lag.max_ms < 100.0, "no send fell behind: {:?}", schedule.lag);
    assert!(schedule.late <= 10, "at most a few sends late: {schedule:?}");
    assert!(schedule.connections >= 20, "lanes were opened for waiting requests: {schedule:?}");
    // The last request (intended at 0.99 s) is answered when the run ends, after ~1 s of queueing in the
    // server; its latency must say so, measured from its intended time.
    let queued_ms = (result.load_duration_s - 0.99) * 1000.0;
    assert!(queued_ms > 800.0, "the server needed ~2 s for 1 s of requests: {}", result.load_duration_s);
    assert!(
        (result.latency.max_ms - queued_ms).abs() < 100.0,
        "the last request's latency is its queueing, {queued_ms:.0} ms: {:?}",
        result.latency
    );
    assert!(result.latency.p50_ms > 350.0, "queueing shows in the median: {:?}", result.latency);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_counts_late_sends_and_keeps_their_wait_in_the_latency() {
    // One connection and a 20 ms server: at most 50/s can be sent, but 100/s are due. The sends fall behind;
    // each request's latency still counts from its intended time.
    let server = serve(Behaviour::Delay(Duration::from_millis(20))).await;
    let result = run(&server, open(100.0, Duration::from_millis(500), 1), Duration::from_millis(5)).await;

    let schedule = result.schedule.unwrap();
    assert_eq!(result.outcomes.accepted, 50, "{result:#?}");
    assert_eq!(server.state.max_in_flight.load(Ordering::SeqCst), 1);
    assert!(schedule.late >= 40, "most sends were late: {schedule:?}");
    assert!(schedule.lag.max_ms > 350.0, "the last send waited ~0.5 s: {:?}", schedule.lag);
    assert!(result.latency.max_ms > 350.0, "and that wait is in its latency: {:?}", result.latency);
    assert!(result.latency.min_ms >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentiles_match_a_server_with_a_fixed_delay() {
    let server = serve(Behaviour::Delay(Duration::from_millis(50))).await;
    let result = run(&server, open(300.0, Duration::from_secs(2), 100), Duration::from_millis(5)).await;

    // Tolerance above the delay: tokio's timer rounds the server's sleep up to the next millisecond, and a
    // shared 2-core machine adds scheduling noise, mostly to the tail. Wrong percentile arithmetic (a mean, the
    // wrong end of the distribution) would still land far outside.
    let latency = result.latency;
    assert_eq!(latency.count, 600);
    assert!(latency.min_ms >= 50.0, "{latency:?}");
    assert!((50.0..60.0).contains(&latency.p50_ms), "{latency:?}");
    assert!((50.0..100.0).contains(&latency.p99_ms), "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentiles_separate_the_fast_nine_tenths_from_the_slow_tenth() {
    let server =
        serve(Behaviour::Bimodal { fast: Duration::from_millis(10), slow: Duration::from_millis(100) }).await;
    let result = run(&server, open(400.0, Duration::from_secs(2), 100), Duration::from_millis(5)).await;

    // 10% are slow, so the median sits with the fast ones and p95/p99 with the slow ones (p90 is the boundary).
    let latency = result.latency;
    assert_eq!(latency.count, 800);
    assert!((10.0..20.0).contains(&latency.p50_ms), "{latency:?}");
    assert!((100.0..150.0).contains(&latency.p95_ms), "{latency:?}");
    assert!((100.0..180.0).contains(&latency.p99_ms), "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_runs_exactly_the_users_asked_for() {
    // No pause between requests and a 50 ms server: each user has one request in flight all the time.
    let server = serve(Behaviour::Delay(Duration::from_millis(50))).await;
    let model = LoadModel::Closed(ClosedLoad {
        users: 4,
        spawn_rate: 1000.0,
        wait: WaitRange { min: Duration::ZERO, max: Duration::ZERO },
        duration: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
    });
    let result = run(&server, model, Duration::from_millis(5)).await;

    assert_eq!(server.state.max_in_flight.load(Ordering::SeqCst), 4, "never more than the users");
    let done = result.outcomes.accepted;
    assert!((64..=80).contains(&done), "4 users × 1 s ÷ 50 ms ≈ 80 requests, got {done}");
    assert!(result.abandoned <= 4, "at most one in flight per user at the end: {}", result.abandoned);
    assert!(result.schedule.is_none(), "the closed model has no schedule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_pauses_for_the_wait_time_between_requests() {
    // A fast server and a 100 ms pause: each user manages about 10 requests a second.
    let server = serve(Behaviour::Delay(Duration::ZERO)).await;
    let model = LoadModel::Closed(ClosedLoad {
        users: 2,
        spawn_rate: 1000.0,
        wait: WaitRange { min: Duration::from_millis(80), max: Duration::from_millis(120) },
        duration: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
    });
    let result = run(&server, model, Duration::from_millis(5)).await;

    let done = result.outcomes.accepted;
    assert!((16..=22).contains(&done), "2 users × 1 s ÷ ~100 ms ≈ 20 requests, got {done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_starts_users_at_the_spawn_rate() {
    // 5 users at 5 per second in a 1 s run against a 100 ms server: user i starts at i × 200 ms, so the users
    // send 10 + 8 + 6 + 4 + 2 = 30 requests, not the 50 all-at-once users would.
    let server = serve(Behaviour::Delay(Duration::from_millis(100))).await;
    let model = LoadModel::Closed(ClosedLoad {
        users: 5,
        spawn_rate: 5.0,
        wait: WaitRange { min: Duration::ZERO, max: Duration::ZERO },
        duration: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
    });
    let result = run(&server, model, Duration::from_millis(5)).await;

    let started = result.sent;
    assert!((26..=34).contains(&started), "≈30 requests sent, got {started}");
    let users: Vec<u64> = result.timeline.iter().filter_map(|p| p.users).collect();
    assert!(users.first().is_some_and(|&u| u <= 2), "few users at first: {users:?}");
    assert!(users.contains(&5), "all five later: {users:?}");
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
    let result = run(&server, model, Duration::from_millis(5)).await;

    assert_eq!((result.outcomes.timeout, result.outcomes.total()), (5, 5), "{:?}", result.outcomes);
    assert!(
        (200.0..260.0).contains(&result.latency.p50_ms),
        "timeouts take the timeout: {:?}",
        result.latency
    );
}
