//! The experiment's qualitative result, checked end to end on the embedded pipeline with the quick preset:
//! under the flash sale the async design accepts everything and the sync one almost nothing, and the queue
//! drains in the time Little's law predicts.

use std::time::Duration;

use loadtest::experiment::{Environment, ExperimentSettings};
use loadtest::pipeline::PipelineConfig;
use loadtest::results::RunResult;
use loadtest::scenario::TimeScale;
use tokio_util::sync::CancellationToken;

/// The quick preset's time scale, lowered for unoptimised test builds, which cannot accept the preset's
/// 6,000 orders/s; the queueing maths is the same at any scale.
const TEST_TIME_SCALE: f64 = 25.0;

fn run<'a>(runs: &'a [RunResult], name: &str) -> &'a RunResult {
    runs.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no run {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_compare_reproduces_the_flash_sale_result_and_littles_law() {
    let settings = ExperimentSettings {
        environment: Environment::Embedded(PipelineConfig::default()),
        time_scale: TimeScale::new(TEST_TIME_SCALE),
        drain_cap: Duration::from_secs(120),
        late_threshold: Duration::from_millis(1),
        sample_every: Duration::from_secs(1),
        progress: false,
    };
    let document = loadtest::compare::compare(&settings, 1024, true, &CancellationToken::new()).await.unwrap();
    let summary = loadtest::compare::render(&document);
    println!("{summary}");

    let flash_async = run(&document.runs, "flash-sale-open/async");
    let flash_sync = run(&document.runs, "flash-sale-open/sync");
    assert_eq!(flash_async.outcomes.total(), 600, "10 lab seconds at 60 orders/s");
    assert!(flash_async.accepted_pct >= 99.0, "async accepts the flash sale: {:?}", flash_async.outcomes);
    assert!(flash_sync.accepted_pct <= 10.0, "sync collapses under it: {:?}", flash_sync.outcomes);
    assert!(flash_sync.outcomes.timeout > 500, "mostly by timing out: {:?}", flash_sync.outcomes);

    let queue = flash_async.queue.expect("the embedded queue is observed");
    let drain = queue.drain.expect("the flash sale's drain is watched");
    assert!(queue.backlog_at_load_end > 500, "one consumer leaves a backlog: {queue:?}");
    assert!(drain.finished, "{drain:?}");
    let ratio = drain.measured_s / drain.predicted_s;
    assert!((0.85..=1.15).contains(&ratio), "drain within 15% of Little's law: {drain:?} (ratio {ratio:.3})");

    let e2e = flash_async.worker.as_ref().and_then(|w| w.end_to_end_ms.clone()).expect("worker stats");
    assert!(e2e["count"].as_u64().unwrap() >= 590, "the worker processed the orders: {e2e}");
    assert_eq!(document.comparisons.len(), 3, "one comparison per scenario");
    assert!(summary.contains("drain predicted s (Little)"), "{summary}");
}
