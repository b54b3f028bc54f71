//! The original lab's scenarios and defaults, and the time scale that lets them run in minutes.
//!
//! Everything here is in *lab time* (3 s payments, 60 orders/s, 60 s runs). A [`TimeScale`] of K compresses it:
//! durations and latencies ÷ K, rates × K. Queueing behaviour is unchanged — utilisation (rate × latency),
//! backlog counts and the ratios between drain time and run time stay the same — only the clock runs K times
//! faster.

use std::time::Duration;

use bytes::Bytes;
use loadgen::LoadModel;
use loadgen::closed_model::{ClosedLoad, WaitRange};
use loadgen::idempotency::RetryPolicy;
use loadgen::open_model::OpenLoad;

/// The lab's payment time: one order every 3 s per slot.
pub const LAB_PAYMENT_LATENCY: Duration = Duration::from_secs(3);
/// The lab's request timeout (its load balancer's), and the sync endpoint's wait for the payment slot.
pub const LAB_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The lab's Locust wait between a user's requests: `between(0.1, 0.5)`.
pub const LAB_WAIT: WaitRange =
    WaitRange { min: Duration::from_millis(100), max: Duration::from_millis(500) };
/// The lab's flash-sale arrival rate, orders per second.
pub const LAB_FLASH_SALE_RATE: f64 = 60.0;

/// Time compression: K lab seconds pass in one real second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale(f64);

impl TimeScale {
    /// Real time.
    pub const REAL: TimeScale = TimeScale(1.0);

    /// A time scale of `k` (at least 1).
    pub fn new(k: f64) -> TimeScale {
        TimeScale(if k.is_finite() { k.max(1.0) } else { 1.0 })
    }

    /// K.
    pub fn factor(self) -> f64 {
        self.0
    }

    /// A lab duration on this scale.
    pub fn duration(self, lab: Duration) -> Duration {
        lab.div_f64(self.0)
    }

    /// A lab rate (per second) on this scale.
    pub fn rate(self, lab: f64) -> f64 {
        lab * self.0
    }

    /// A load model written in lab time, on this scale.
    pub fn load(self, lab: &LoadModel) -> LoadModel {
        match lab {
            LoadModel::Open(load) => LoadModel::Open(OpenLoad {
                rate: self.rate(load.rate),
                duration: self.duration(load.duration),
                timeout: self.duration(load.timeout),
                ..load.clone()
            }),
            LoadModel::Closed(load) => LoadModel::Closed(ClosedLoad {
                spawn_rate: self.rate(load.spawn_rate),
                wait: WaitRange { min: self.duration(load.wait.min), max: self.duration(load.wait.max) },
                duration: self.duration(load.duration),
                timeout: self.duration(load.timeout),
                ..load.clone()
            }),
        }
    }
}

/// A retry policy (whose durations are lab time) in words, for a results document's notes; on a time scale
/// K > 1 it says that those durations are divided by K on the run's clock.
pub fn describe_retry_policy(policy: &RetryPolicy, scale: TimeScale) -> String {
    let clock = if scale.factor() > 1.0 { " lab time, ÷ K on the run's clock" } else { "" };
    format!(
        "orders carry an Idempotency-Key, and a 503, a 409, a timeout or a connection error is retried with the \
         same key and body (at most {} attempts, Retry-After honoured up to {} ms{clock}, jittered backoff); \
         each keyed order counts once, with its last attempt's outcome and a latency that covers every attempt",
        policy.max_attempts,
        policy.retry_after_cap.as_millis()
    )
}

/// One of the lab's scenarios, in lab time.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Short name used in run names and files.
    pub name: &'static str,
    /// What it represents, for tables.
    pub title: &'static str,
    /// The load, in lab time.
    pub load: LoadModel,
    /// Whether to watch the queue drain after the async run (the lab's queue-problem run).
    pub watch_drain: bool,
}

/// The lab's scenarios: normal traffic (5 users, 30 s), the flash sale at 60 orders/s for 60 s (open model),
/// and the flash sale as 20 Locust users for 60 s. `quick` shortens every run to 10 lab seconds (for CI).
pub fn lab_scenarios(max_connections: usize, quick: bool) -> Vec<Scenario> {
    let length = |lab_seconds: u64| Duration::from_secs(if quick { 10 } else { lab_seconds });
    vec![
        Scenario {
            name: "normal",
            title: "normal traffic: 5 users (spawn 1/s), wait 100-500 ms",
            load: LoadModel::Closed(ClosedLoad {
                users: 5,
                spawn_rate: 1.0,
                wait: LAB_WAIT,
                duration: length(30),
                timeout: LAB_REQUEST_TIMEOUT,
            }),
            watch_drain: false,
        },
        Scenario {
            name: "flash-sale-open",
            title: "flash sale: 60 orders/s, open model",
            load: LoadModel::Open(OpenLoad {
                rate: LAB_FLASH_SALE_RATE,
                duration: length(60),
                max_connections,
                timeout: LAB_REQUEST_TIMEOUT,
            }),
            watch_drain: true,
        },
        Scenario {
            name: "flash-sale-users",
            title: "flash sale: 20 users (spawn 10/s), wait 100-500 ms",
            load: LoadModel::Closed(ClosedLoad {
                users: 20,
                spawn_rate: 10.0,
                wait: LAB_WAIT,
                duration: length(60),
                timeout: LAB_REQUEST_TIMEOUT,
            }),
            watch_drain: false,
        },
    ]
}

/// A published figure of the original lab, for the reference column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabFigures {
    /// Requests sent.
    pub requests: u64,
    /// Success percentage.
    pub accepted_pct: f64,
    /// Average latency, ms.
    pub avg_ms: Option<f64>,
    /// Median, ms.
    pub p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Maximum, ms.
    pub max_ms: Option<f64>,
    /// Queue backlog after the run.
    pub peak_backlog: Option<u64>,
    /// Drain time with one worker, seconds.
    pub drain_s: Option<f64>,
}

/// The lab's published figures for a scenario and mode (Go on ECS Fargate, Locust 2.16), where it published
/// any. Its async flash sale ran ~60 orders/s (60 users), which the open-model scenario reproduces.
pub fn lab_figures(scenario: &str, mode: &str) -> Option<LabFigures> {
    let none = LabFigures {
        requests: 0,
        accepted_pct: 0.0,
        avg_ms: None,
        p50_ms: None,
        p95_ms: None,
        p99_ms: None,
        max_ms: None,
        peak_backlog: None,
        drain_s: None,
    };
    match (scenario, mode) {
        ("normal", "sync") => Some(LabFigures {
            requests: 147,
            accepted_pct: 95.2,
            avg_ms: Some(3047.0),
            p50_ms: Some(3020.0),
            p99_ms: Some(3150.0),
            ..none
        }),
        ("flash-sale-users", "sync") => Some(LabFigures {
            requests: 1203,
            accepted_pct: 2.1,
            avg_ms: Some(8247.0),
            p95_ms: Some(10_098.0),
            ..none
        }),
        ("flash-sale-open", "async") => Some(LabFigures {
            requests: 3614,
            accepted_pct: 100.0,
            avg_ms: Some(47.0),
            p50_ms: Some(45.0),
            p99_ms: Some(81.0),
            max_ms: Some(89.0),
            peak_backlog: Some(3594),
            drain_s: Some(3580.0 * 3.0),
            ..none
        }),
        _ => None,
    }
}

/// Order bodies shaped like the lab's Locust tasks: a random customer, one to three items of `PROD-001` ..
/// `PROD-100`, quantities 1-5, prices with two decimals. A fixed seed makes runs repeatable.
pub fn order_bodies(count: usize, seed: u64) -> Vec<Bytes> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|_| {
            let items: Vec<String> = (0..rng.usize(1..=3))
                .map(|_| {
                    format!(
                        r#"{{"product_id":"PROD-{:03}","quantity":{},"price":{}.{:02}}}"#,
                        rng.u32(1..=100),
                        rng.u32(1..=5),
                        rng.u32(1..=199),
                        rng.u32(0..100)
                    )
                })
                .collect();
            Bytes::from(format!(r#"{{"customer_id":{},"items":[{}]}}"#, rng.u64(1..=10_000), items.join(",")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_scale_divides_times_and_multiplies_rates() {
        let scale = TimeScale::new(60.0);
        let flash = &lab_scenarios(1024, false)[1].load;
        let LoadModel::Open(load) = scale.load(flash) else { panic!("open") };
        assert_eq!(load.rate, 3600.0);
        assert_eq!(load.duration, Duration::from_secs(1));
        assert_eq!(load.timeout, Duration::from_millis(166) + Duration::from_nanos(666_667));
        assert_eq!(load.scheduled(), 3600, "the same number of orders as the lab");
        let normal = &lab_scenarios(1024, false)[0].load;
        let LoadModel::Closed(users) = scale.load(normal) else { panic!("closed") };
        assert_eq!((users.users, users.spawn_rate), (5, 60.0));
        assert_eq!(users.wait.max, Duration::from_nanos(8_333_333));
        assert_eq!(TimeScale::new(0.0).factor(), 1.0, "never slower than real time");
    }

    #[test]
    fn order_bodies_are_valid_orders() {
        for body in order_bodies(50, 7) {
            let order = orders::OrderRequest::from_json(&body);
            assert!(order.is_ok(), "{:?}: {order:?}", String::from_utf8_lossy(&body));
        }
        assert_eq!(order_bodies(3, 1), order_bodies(3, 1), "seeded");
    }
}
