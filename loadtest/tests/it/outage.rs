//! The outage experiment end to end on the embedded stack, with the quick preset's clock: the payment gateway
//! down for two lab minutes under a flash sale, the worker crashing and poison mixed in. With the circuit
//! breaker no order is dead-lettered; without it orders are, and a redrive recovers them; in both, nothing is
//! lost and nothing charged twice.

use std::time::Duration;

use loadgen::LoadModel;
use loadgen::open_model::OpenLoad;
use loadtest::experiment::Environment;
use loadtest::outage::{OutageSettings, outage_experiment};
use loadtest::pipeline::PipelineConfig;
use tokio_util::sync::CancellationToken;

use crate::helpers::settings;

/// The quick preset's time scale: 3 s payments take 30 ms, the two-minute outage 1.2 s.
const TEST_TIME_SCALE: f64 = 100.0;
/// A sale an unoptimised test build accepts on a busy 2-core machine (1,000 orders/s on the fast clock), and
/// the consumers to keep up with it (10/s × 3 s needs 30).
const TEST_RATE: f64 = 10.0;
const TEST_CONSUMERS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_outage_dead_letters_nothing_with_the_breaker_and_loses_nothing_either_way() {
    let outage = OutageSettings {
        starts_after: Duration::from_secs(10),
        lasts: Duration::from_secs(120),
        consumers: TEST_CONSUMERS,
        crash_every: Some(Duration::from_secs(50)),
        poison_share: 0.05,
    };
    let environment =
        Environment::Embedded(PipelineConfig { consumers: TEST_CONSUMERS, ..PipelineConfig::default() });
    let settings = settings(environment, TEST_TIME_SCALE, Duration::from_secs(60), Duration::from_millis(1));
    // A lab minute of timeout: a slow accept on a starved machine is not a lost order.
    let sale = LoadModel::Open(OpenLoad {
        rate: TEST_RATE,
        duration: Duration::from_secs(20),
        max_connections: 1024,
        timeout: Duration::from_secs(60),
    });
    let (runs, report) = outage_experiment(&settings, &outage, &sale, &CancellationToken::new())
        .await
        .expect("the experiment");
    let mut document = loadtest::results::ResultsDocument::new("outage", "embedded", TEST_TIME_SCALE);
    document.runs = runs;
    document.outage = Some(report.clone());
    println!("{}", loadtest::render::outage::text(&document));

    let [with, without] = &report.runs[..] else { panic!("two variants: {:?}", report.runs) };
    assert_eq!((with.variant.as_str(), without.variant.as_str()), ("breaker", "no-breaker"));
    for run in [with, without] {
        assert!(run.accepted >= 150, "{}: most of the 200 orders accepted: {run:?}", run.variant);
        assert_eq!(
            (run.lost, run.charged_twice),
            (0, 0),
            "{}: nothing lost or charged twice: {run:?}",
            run.variant
        );
        assert_eq!(run.poison_sent, 10);
        assert_eq!(
            run.poison_dead_lettered, run.poison_sent,
            "{}: poison lands in the DLQ: {run:?}",
            run.variant
        );
        assert!(run.crashes >= 1, "{}: the worker crashed: {run:?}", run.variant);
        assert_eq!(run.settled + run.dead_lettered, run.recorded, "{}: {run:?}", run.variant);
    }
    assert_eq!(with.dead_lettered, 0, "the breaker keeps the outage out of the DLQ: {with:?}");
    assert!(with.breaker_opened >= 1 && with.breaker_open_s > 0.0, "{with:?}");
    assert!(with.redrive.is_none());
    assert!(without.dead_lettered > 0, "without the breaker the outage dead-letters orders: {without:?}");
    assert_eq!(without.breaker_transitions, 0);
    let redrive = without.redrive.as_ref().expect("the run without the breaker ends with a redrive");
    assert_eq!(
        redrive.recovered, without.dead_lettered,
        "every dead-lettered order settled after the redrive"
    );
    assert_eq!((redrive.lost, redrive.charged_twice), (0, 0));

    let html = loadtest::render::html::report(&document);
    assert!(html.contains("Payment-gateway outage") && html.contains("gateway down"), "the report's section");
}
