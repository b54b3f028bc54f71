//! Loopback test servers with known behaviour, and one measured load against them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use hyper::Method;
use loadgen::client::{RequestSpec, Target};
use loadgen::closed_model::ClosedRun;
use loadgen::open_model::{OpenLoad, OpenRun};
use loadgen::recorder::{LatencySummary, Measurements, Recorder};
use loadgen::{LoadEnd, LoadModel};
use tokio_util::sync::CancellationToken;

/// How the test server answers.
#[derive(Clone, Copy)]
pub enum Behaviour {
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

/// A running test server.
pub struct TestServer {
    addr: SocketAddr,
    state: ServerState,
}

impl TestServer {
    /// The most requests the server had in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Serves `POST /work` on a loopback port, answering as `behaviour` says.
pub async fn serve(behaviour: Behaviour) -> TestServer {
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

/// What one load did: the recorder's totals, the model's own account, and the closed model's users over time.
pub struct Measured {
    /// Everything recorded during the load.
    pub totals: Measurements,
    end: LoadEnd,
    /// From just before the load started to its end.
    pub elapsed: Duration,
    /// Running users sampled every 100 ms, each with the time it was read, counted from before the load
    /// started (so never earlier than the model's own clock).
    pub users: Vec<(Duration, usize)>,
}

impl Measured {
    /// Latency of every finished request.
    pub fn latency(&self) -> LatencySummary {
        LatencySummary::of(&self.totals.latency)
    }

    /// Scheduling lag of the sends (open model).
    pub fn lag(&self) -> LatencySummary {
        LatencySummary::of(&self.totals.lag)
    }

    /// The open model's account of the load.
    pub fn open(&self) -> OpenRun {
        match self.end {
            LoadEnd::Open(run) => run,
            LoadEnd::Closed(_) => panic!("an open-model load was expected"),
        }
    }

    /// The closed model's account of the load.
    pub fn closed(&self) -> ClosedRun {
        match self.end {
            LoadEnd::Closed(run) => run,
            LoadEnd::Open(_) => panic!("a closed-model load was expected"),
        }
    }
}

/// One measurement at a time: these tests judge timing, and parallel tests on a 2-core machine would
/// measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Applies `model` to the server's `POST /work`, counting sends later than `late_threshold` as late.
pub async fn measure(server: &TestServer, model: LoadModel, late_threshold: Duration) -> Measured {
    let _alone = SERIAL.lock().await;
    let target = Target::local(server.addr);
    let spec: RequestSpec = target.request(Method::POST, "/work", vec![bytes::Bytes::from_static(b"{}")]);
    let recorder = Arc::new(Recorder::new(late_threshold));
    let active_users = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let load =
        model.run(&target, &spec, Arc::clone(&recorder), Arc::clone(&active_users), CancellationToken::new());
    tokio::pin!(load);
    let mut users = Vec::new();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let end = loop {
        tokio::select! {
            end = &mut load => break end,
            _ = every.tick() => {
                let running = active_users.load(Ordering::Relaxed);
                users.push((start.elapsed(), running));
            }
        }
    };
    let elapsed = start.elapsed();
    Measured { totals: recorder.take_interval(), end, elapsed, users }
}

/// An open-model load with a 10 s request timeout.
pub fn open(rate: f64, duration: Duration, max_connections: usize) -> LoadModel {
    LoadModel::Open(OpenLoad { rate, duration, max_connections, timeout: Duration::from_secs(10) })
}
