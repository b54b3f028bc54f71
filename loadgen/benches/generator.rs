//! Is the generator ever the bottleneck? Measured against `wrk` in the same run, on the same static endpoint.
//!
//! A trivial axum route runs in this process on its own single-threaded runtime. Then, alternating:
//! 1. `wrk -t1 -c64` saturates it: the reference rate R (mean of two runs, before and after ours);
//! 2. the open model on a current-thread runtime (one thread, like `wrk -t1`) and 64 connections like wrk, is
//!    asked for R requests/s: the rate it achieves must be ≥ 0.7 × R;
//! 3. the open model at 10,000 requests/s: its scheduling lag (actual send − intended send) p99 must be < 1 ms.
//!
//! Run: `cargo bench -p loadgen --bench generator` (needs `wrk`: `apt-get install -y wrk`).
//! `BENCH_SECONDS` (default 5) sets each measurement's length. Exits non-zero when a floor is missed.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use hyper::Method;
use loadgen::client::Target;
use loadgen::open_model::{self, OpenLoad, OpenRun};
use loadgen::recorder::{LatencySummary, Measurements, Recorder};
use tokio_util::sync::CancellationToken;

/// The allocator the loadtest binary uses, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Connections for both wrk and the generator.
const CONNECTIONS: usize = 64;
/// The rate at which scheduling lag is judged.
const LAG_RATE: f64 = 10_000.0;

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let duration = Duration::from_secs(seconds);
    let addr = start_static_server();
    let url = format!("http://{addr}/static");

    let only_generator = std::env::var("BENCH_ONLY_GENERATOR").is_ok();
    let wrk_before = if only_generator { 90_000.0 } else { wrk(&url, duration) };
    let generator = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let saturated = generator.block_on(open_model(addr, wrk_before, duration));
    let wrk_after = if only_generator { 90_000.0 } else { wrk(&url, duration) };
    let paced = generator.block_on(open_model(addr, LAG_RATE, duration));

    let wrk_rate = (wrk_before + wrk_after) / 2.0;
    let ratio = saturated.accepted_per_s() / wrk_rate;
    let lag = paced.lag();
    println!("static endpoint, {CONNECTIONS} connections, {seconds} s per measurement, 1 client thread each");
    println!(
        "wrk:                    {wrk_before:>10.0} req/s before, {wrk_after:>10.0} after (mean {wrk_rate:.0})"
    );
    println!(
        "open model at wrk rate: {:>10.0} req/s = {ratio:.2} × wrk   (floor 0.70)  [{} failed, lag p99 {:.3} ms]",
        saturated.accepted_per_s(),
        saturated.totals.outcomes.failed(),
        saturated.lag().p99_ms,
    );
    println!(
        "open model at {LAG_RATE:.0}/s: {:>7.0} req/s, lag p50 {:.3} ms, p99 {:.3} ms (floor < 1 ms), max {:.3} ms, \
         {} late > 1 ms of {}; latency p50 {:.3} ms p99 {:.3} ms",
        paced.accepted_per_s(),
        lag.p50_ms,
        lag.p99_ms,
        lag.max_ms,
        paced.totals.late,
        paced.totals.sent,
        paced.latency().p50_ms,
        paced.latency().p99_ms,
    );
    let ok = ratio >= 0.7 && lag.p99_ms < 1.0 && saturated.totals.outcomes.failed() == 0;
    println!("{}", if ok { "PASS" } else { "FAIL" });
    std::process::exit(if ok { 0 } else { 1 });
}

fn start_static_server() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("static-server".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = Router::new().route("/static", get(|| async { "ok" }));
                axum::serve(listener, app).await.unwrap();
            });
        })
        .expect("spawn the server thread");
    rx.recv().unwrap()
}

/// wrk's requests/s against `url`.
fn wrk(url: &str, duration: Duration) -> f64 {
    let output = Command::new("wrk")
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{}s", duration.as_secs()), url])
        .output()
        .expect("wrk is installed (apt-get install -y wrk)");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|rate| rate.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"))
}

/// What one open-model load measured.
struct Measured {
    totals: Measurements,
    seconds: f64,
}

impl Measured {
    fn accepted_per_s(&self) -> f64 {
        self.totals.outcomes.accepted as f64 / self.seconds
    }

    fn lag(&self) -> LatencySummary {
        LatencySummary::of(&self.totals.lag)
    }

    fn latency(&self) -> LatencySummary {
        LatencySummary::of(&self.totals.latency)
    }
}

/// The open model at `rate` for `duration` against the static route, as `loadtest run` applies it (1 ms late
/// threshold, 10 s timeout).
async fn open_model(addr: SocketAddr, rate: f64, duration: Duration) -> Measured {
    let target = Target::local(addr);
    let spec = target.request(Method::GET, "/static", Vec::new());
    let load = OpenLoad { rate, duration, max_connections: CONNECTIONS, timeout: Duration::from_secs(10) };
    let recorder = Arc::new(Recorder::new(Duration::from_millis(1)));
    let start = Instant::now();
    let _: OpenRun =
        open_model::run(&load, &target, &spec, Arc::clone(&recorder), CancellationToken::new()).await;
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    Measured { totals: recorder.take_interval(), seconds }
}
