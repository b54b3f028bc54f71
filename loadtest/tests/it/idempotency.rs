//! Idempotency keys against loopback servers (bound to port 0) that play the receiver's key semantics: every
//! order carries a key, retries reuse it with the same body, and the retries, replays and duplicate orders
//! counted by the generator match what the server saw and did.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use hyper::Method;
use hyper::body::Frame;
use loadgen::LoadModel;
use loadgen::client::{RequestSpec, Target};
use loadgen::closed_model::{ClosedLoad, WaitRange};
use loadgen::idempotency::RetryPolicy;
use loadgen::open_model::OpenLoad;
use loadtest::probe::Probes;
use loadtest::results::{ResultsDocument, RunResult};
use loadtest::runner;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::plan;

/// How the test server treats the attempts of a key.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// By the key's arrival index `i`: the first attempt answers 503 `outcome_unknown` naming the order, except
    /// for `i % 4 == 1`, whose order is accepted but whose answer is lost (the connection breaks). The second
    /// attempt answers 409 (still in flight) when `i % 3 == 0`; otherwise the order is accepted, or its stored
    /// answer replayed. Always the same order id per key.
    Honest,
    /// The first attempt answers 503 `outcome_unknown` naming an order; the retry creates a new one.
    Buggy,
    /// The first attempt takes `first` and is accepted; attempts meanwhile get 409, later ones the replay.
    SlowFirst { first: Duration },
}

/// One key as the server knows it.
struct KeyRecord {
    index: u64,
    attempts: u32,
    order_id: Uuid,
    body: Bytes,
    completed: bool,
}

#[derive(Default)]
struct Seen {
    keys: HashMap<String, KeyRecord>,
    /// Requests that carried no key.
    unkeyed: u64,
    /// Keys that were not a quoted UUIDv4.
    malformed: u64,
    /// Retries whose body differed from the first attempt's.
    mismatched: u64,
    /// Answers sent with `Idempotent-Replayed: true`.
    replays: u64,
    /// Orders created, counted per key (a correct server creates one per key).
    created: u64,
}

#[derive(Clone)]
struct Server {
    script: Script,
    seen: Arc<Mutex<Seen>>,
    requests: Arc<AtomicU64>,
}

impl Server {
    fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.seen.lock().unwrap())
    }

    /// Keyed attempts the server received.
    fn keyed_attempts(&self) -> u64 {
        self.seen(|seen| seen.keys.values().map(|key| u64::from(key.attempts)).sum())
    }
}

/// An answer body that fails after the headers: hyper aborts the connection, as a crash mid-answer would.
struct BrokenBody;

impl hyper::body::Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other("the answer is lost"))))
    }
}

/// Marks the key's order created (once) and its answer stored.
fn complete(server: &Server, key: &str) {
    let mut seen = server.seen.lock().unwrap();
    let record = seen.keys.get_mut(key).unwrap();
    let first = !record.completed;
    record.completed = true;
    seen.created += u64::from(first);
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn accepted(order_id: Uuid, replayed: bool) -> Response {
    let mut answer =
        json(StatusCode::ACCEPTED, serde_json::json!({"order_id": order_id, "status": "accepted"}));
    if replayed {
        answer.headers_mut().insert("idempotent-replayed", "true".parse().unwrap());
    }
    answer
}

fn unavailable(status: StatusCode, code: &str, order_id: Uuid) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": "retry later", "order_id": order_id}});
    let mut answer = json(status, body);
    answer.headers_mut().insert("retry-after", "1".parse().unwrap());
    answer
}

/// The key of a request: a Structured Field string (`"..."`) or a bare token, as the receiver accepts.
fn key_of(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("idempotency-key")?.to_str().ok()?;
    Some(value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value).to_owned())
}

async fn handle(State(server): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    server.requests.fetch_add(1, Ordering::SeqCst);
    let Some(key) = key_of(&headers) else {
        server.seen.lock().unwrap().unkeyed += 1;
        return accepted(Uuid::new_v4(), false);
    };
    let (index, attempt, order_id, completed) = {
        let mut seen = server.seen.lock().unwrap();
        let seen = &mut *seen;
        if !headers["idempotency-key"].to_str().unwrap().starts_with('"')
            || !Uuid::parse_str(&key).is_ok_and(|uuid| uuid.get_version_num() == 4)
        {
            seen.malformed += 1;
        }
        let next = seen.keys.len() as u64;
        let record = seen.keys.entry(key.clone()).or_insert_with(|| KeyRecord {
            index: next,
            attempts: 0,
            order_id: Uuid::new_v4(),
            body: body.clone(),
            completed: false,
        });
        record.attempts += 1;
        if record.body != body {
            seen.mismatched += 1;
            return json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": {"code": "key_reused"}}),
            );
        }
        (record.index, record.attempts, record.order_id, record.completed)
    };
    let replay = |server: &Server| {
        server.seen.lock().unwrap().replays += 1;
        accepted(order_id, true)
    };
    match server.script {
        Script::Honest => match attempt {
            _ if completed => replay(&server),
            1 if index % 4 == 1 => {
                complete(&server, &key);
                Response::builder().status(StatusCode::ACCEPTED).body(Body::new(BrokenBody)).unwrap()
            }
            1 => unavailable(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown", order_id),
            2 if index % 3 == 0 => unavailable(StatusCode::CONFLICT, "in_flight", order_id),
            _ => {
                complete(&server, &key);
                accepted(order_id, false)
            }
        },
        Script::Buggy => match attempt {
            1 => unavailable(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown", order_id),
            _ => {
                server.seen.lock().unwrap().created += 1;
                accepted(Uuid::new_v4(), false)
            }
        },
        Script::SlowFirst { first } => match attempt {
            _ if completed => replay(&server),
            1 => {
                // Completed apart from the answer, which the client may no longer wait for.
                let (worker, key) = (server.clone(), key.clone());
                let finish = tokio::spawn(async move {
                    tokio::time::sleep(first).await;
                    complete(&worker, &key);
                });
                let _ = finish.await;
                accepted(order_id, false)
            }
            _ => unavailable(StatusCode::CONFLICT, "in_flight", order_id),
        },
    }
}

async fn serve(script: Script) -> (SocketAddr, Server) {
    let server = Server { script, seen: Arc::default(), requests: Arc::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/orders/async", post(handle)).with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, server)
}

/// Short pauses, so that the tests take milliseconds per retry: the server's `Retry-After: 1` is cut to the
/// cap, which the counts do not depend on.
fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        retry_after_cap: Duration::from_millis(20),
    }
}

fn spec(addr: SocketAddr, keys: Option<RetryPolicy>) -> RequestSpec {
    let bodies = loadtest::scenario::order_bodies(8, 3);
    let spec = Target::local(addr).request(Method::POST, "/orders/async", bodies);
    match keys {
        Some(policy) => spec.with_idempotency_keys(policy),
        None => spec,
    }
}

async fn run(addr: SocketAddr, spec: RequestSpec, model: LoadModel) -> RunResult {
    let plan =
        plan("keys", Target::local(addr), spec, model, Duration::from_millis(100), Duration::from_millis(50));
    runner::execute(&plan, &Probes::default(), &CancellationToken::new()).await
}

fn open(rate: f64, duration: Duration, timeout: Duration) -> LoadModel {
    LoadModel::Open(OpenLoad { rate, duration, max_connections: 64, timeout })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_reuse_the_key_and_the_counters_match_what_the_server_did() {
    let (addr, server) = serve(Script::Honest).await;
    let result = run(
        addr,
        spec(addr, Some(quick_policy())),
        open(60.0, Duration::from_secs(1), Duration::from_secs(10)),
    )
    .await;
    let keys = result.idempotency.expect("a keyed run reports its counters");

    // Every order carried a well-formed key, one key per order, and every retry reused its key and body.
    assert_eq!(result.sent, 60);
    server.seen(|seen| {
        assert_eq!((seen.unkeyed, seen.malformed, seen.mismatched), (0, 0, 0));
        assert_eq!(seen.keys.len(), 60, "one fresh key per order");
        // The script decides each key's attempts: 3 when its second attempt got a 409, else 2.
        for key in seen.keys.values() {
            let expected = if key.index % 4 != 1 && key.index % 3 == 0 { 3 } else { 2 };
            assert_eq!(key.attempts, expected, "key #{}", key.index);
        }
        assert_eq!(seen.created, 60, "one order per key");
    });
    // Each order counts once, with its last attempt's outcome.
    assert_eq!(result.outcomes.accepted, 60, "{:?}", result.outcomes);
    assert_eq!(result.outcomes.total(), 60);
    assert_eq!(keys.keyed_requests, 60);
    assert_eq!(keys.retries, server.keyed_attempts() - 60, "retries are the extra attempts the server saw");
    assert_eq!(keys.replays, server.seen(|seen| seen.replays));
    assert_eq!(keys.replays, 15, "the keys whose first answer was lost got the stored answer replayed");
    assert_eq!(keys.duplicate_orders, 0, "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_users_retry_with_their_keys_too() {
    let (addr, server) = serve(Script::Honest).await;
    let model = LoadModel::Closed(ClosedLoad {
        users: 3,
        spawn_rate: 1000.0,
        wait: WaitRange { min: Duration::from_millis(5), max: Duration::from_millis(5) },
        duration: Duration::from_millis(800),
        timeout: Duration::from_secs(10),
    });
    let result = run(addr, spec(addr, Some(quick_policy())), model).await;
    let keys = result.idempotency.unwrap();

    assert!(keys.keyed_requests > 10, "{keys:?}");
    assert_eq!(keys.keyed_requests, result.outcomes.total());
    assert_eq!(result.outcomes.accepted, result.outcomes.total(), "{:?}", result.outcomes);
    server.seen(|seen| assert_eq!((seen.unkeyed, seen.malformed, seen.mismatched), (0, 0, 0)));
    // Requests cut off by the end of the run had attempts the server saw but the run did not count.
    let extra_attempts = server.keyed_attempts() - server.seen(|seen| seen.keys.len() as u64);
    assert!(keys.retries >= keys.keyed_requests && keys.retries <= extra_attempts, "{keys:?}");
    assert_eq!(keys.duplicate_orders, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_is_retried_and_the_whole_request_is_timed() {
    // The first attempt outlives the client's 300 ms timeout; the retries meet 409s until it completes, then
    // its stored answer. Generous margins: each key has ~1 s of retries for a first attempt of 350 ms.
    let (addr, server) = serve(Script::SlowFirst { first: Duration::from_millis(350) }).await;
    let policy = RetryPolicy { retry_after_cap: Duration::from_millis(200), ..quick_policy() };
    let timeout = Duration::from_millis(300);
    let result = run(addr, spec(addr, Some(policy)), open(20.0, Duration::from_millis(500), timeout)).await;
    let keys = result.idempotency.unwrap();

    assert_eq!(
        result.outcomes.accepted, 10,
        "the final outcome is the last attempt's: {:?}",
        result.outcomes
    );
    assert_eq!(result.outcomes.timeout, 0);
    assert_eq!((keys.keyed_requests, keys.replays, keys.duplicate_orders), (10, 10, 0), "{keys:?}");
    assert_eq!(keys.retries, server.keyed_attempts() - 10);
    assert!(keys.retries >= 10, "at least one retry per order: {keys:?}");
    server.seen(|seen| assert_eq!((seen.unkeyed, seen.created, seen.keys.len()), (0, 10, 10)));
    // Latency covers the whole keyed request: the timed-out attempt and the retries after it.
    assert!(result.latency.min_ms >= 300.0, "{:?}", result.latency);
    assert!(result.accepted_latency.min_ms >= 300.0, "{:?}", result.accepted_latency);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_creates_a_second_order_on_retry_is_caught() {
    let (addr, server) = serve(Script::Buggy).await;
    let result = run(
        addr,
        spec(addr, Some(quick_policy())),
        open(20.0, Duration::from_millis(500), Duration::from_secs(10)),
    )
    .await;
    let keys = result.idempotency.unwrap();

    assert_eq!(result.outcomes.accepted, 10);
    assert_eq!((keys.keyed_requests, keys.retries, keys.replays), (10, 10, 0), "{keys:?}");
    assert_eq!(keys.duplicate_orders, 10, "every key was answered with a second order id: {keys:?}");
    assert_eq!(server.seen(|seen| seen.created), 10);

    // The terminal summary and results.json say so.
    let mut document = ResultsDocument::new("run", "test", 1.0);
    document.idempotency_keys = true;
    document.runs.push(result);
    let summary = loadtest::render::text::runs(&document);
    assert!(summary.contains("10 retries, 0 replays, 10 duplicate orders created"), "{summary}");
    let json = serde_json::to_value(&document).unwrap();
    assert_eq!(json["idempotency_keys"], true);
    let counts = &json["runs"][0]["idempotency"];
    assert_eq!(
        (&counts["keyed_requests"], &counts["retries"], &counts["replays"], &counts["duplicate_orders"]),
        (&10.into(), &10.into(), &0.into(), &10.into()),
        "{counts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_nothing_changes() {
    let (addr, server) = serve(Script::Honest).await;
    let result =
        run(addr, spec(addr, None), open(40.0, Duration::from_millis(500), Duration::from_secs(10))).await;

    assert_eq!(result.outcomes.accepted, 20);
    assert!(result.idempotency.is_none(), "no counters without keys");
    assert_eq!(server.seen(|seen| (seen.unkeyed, seen.keys.len())), (20, 0), "no key sent");
    assert_eq!(server.requests.load(Ordering::SeqCst), 20, "and nothing retried");
    let mut document = ResultsDocument::new("run", "test", 1.0);
    document.runs.push(result);
    assert!(!loadtest::render::text::runs(&document).contains("idempotency"));
    assert_eq!(serde_json::to_value(&document).unwrap()["runs"][0]["idempotency"], serde_json::Value::Null);
}
