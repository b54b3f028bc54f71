//! The autoscaling simulation's qualitative result, end to end on the embedded stack with the quick preset's
//! watch: scaling the worker fleet on backlog per task reaches its peak task count sooner than scaling it on
//! CPU, and drains the flash sale sooner; both drain every order.

use std::time::Duration;

use loadgen::LoadModel;
use loadgen::open_model::OpenLoad;
use loadtest::autoscaling::AutoscaleSettings;
use loadtest::experiment::Environment;
use loadtest::pipeline::PipelineConfig;
use tokio_util::sync::CancellationToken;

use crate::helpers::settings;

/// The quick preset's time scale: 3 s payments take 30 ms, a metric minute 0.6 s.
const TEST_TIME_SCALE: f64 = 100.0;

/// The flash sale and the tasks both shrunk tenfold (6 orders/s for 60 s, one consumer per task instead of
/// 60/s and ten): the same backlog per task against its target (20 instead of 200), so the same scaling, at a
/// rate (600 orders/s on the fast clock) an unoptimised test build accepts on a busy 2-core machine.
const TEST_RATE: f64 = 6.0;
const TEST_CONSUMERS: usize = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_autoscale_scales_on_backlog_sooner_and_drains_sooner_than_on_cpu() {
    let autoscale = AutoscaleSettings { consumers_per_task: TEST_CONSUMERS, ..AutoscaleSettings::default() }
        .with_after_drain(None, true);
    let environment =
        Environment::Embedded(PipelineConfig { consumers: TEST_CONSUMERS, ..PipelineConfig::default() });
    let settings = settings(environment, TEST_TIME_SCALE, Duration::from_secs(60), Duration::from_millis(1));
    // A lab minute of timeout (600 ms here): a slow accept on a starved machine is not a lost order.
    let sale = LoadModel::Open(OpenLoad {
        rate: TEST_RATE,
        duration: Duration::from_secs(60),
        max_connections: 1024,
        timeout: Duration::from_secs(60),
    });
    let document = loadtest::commands::autoscale::autoscale_policies(
        &settings,
        &autoscale,
        &sale,
        true,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let summary = loadtest::render::autoscale::text(&document);
    println!("{summary}");

    let report = document.autoscale.as_ref().expect("autoscale results");
    let [backlog, cpu] = &report.policies[..] else { panic!("two policies: {:?}", report.policies) };
    assert_eq!((backlog.policy.as_str(), cpu.policy.as_str()), ("backlog-per-task", "cpu"));
    for policy in [backlog, cpu] {
        // Most of the sale's 360 orders: a starved machine may keep the generator from sending a few in time.
        assert!(policy.accepted >= 240, "{}: {} orders accepted", policy.policy, policy.accepted);
        assert!(policy.drained, "{} drained the queue", policy.policy);
        assert!(
            policy.processed >= policy.accepted && policy.dead_lettered == 0,
            "{}: nothing lost: {} accepted, {} settled, {} dead-lettered",
            policy.policy,
            policy.accepted,
            policy.processed,
            policy.dead_lettered
        );
        let last = policy.timeline.last().expect("a fleet timeline");
        assert_eq!(last.queue_backlog, 0, "{}: empty at the end", policy.policy);
        assert!(
            policy.peak_tasks > autoscale.min_tasks,
            "{} scaled out: {:?}",
            policy.policy,
            policy.decisions
        );
    }
    assert!(
        backlog.peak_tasks_at_lab_s < cpu.peak_tasks_at_lab_s,
        "backlog per task reaches its peak ({} tasks at {:.0} s) before CPU does ({} at {:.0} s)",
        backlog.peak_tasks,
        backlog.peak_tasks_at_lab_s,
        cpu.peak_tasks,
        cpu.peak_tasks_at_lab_s
    );
    let (backlog_drain, cpu_drain) = (backlog.drain_lab_s.unwrap(), cpu.drain_lab_s.unwrap());
    assert!(
        backlog_drain < cpu_drain,
        "backlog per task drains sooner ({backlog_drain:.0} s) than CPU ({cpu_drain:.0} s)"
    );
    assert!(
        backlog.decisions[0].to_tasks > cpu.decisions[0].to_tasks,
        "the first scale-out sizes the fleet for the backlog, CPU's only for saturation: {:?} vs {:?}",
        backlog.decisions[0],
        cpu.decisions[0]
    );
    assert!(summary.contains("acceptable_latency_seconds = 60"), "{summary}");

    // The files: JSON with the policies and Terraform variables, a fleet CSV per policy, charts in the report.
    let dir = std::env::temp_dir().join(format!("loadtest-autoscale-{}", std::process::id()));
    let html = loadtest::render::html::report(&document);
    let written = loadtest::results::write_all(&dir, &document, &html).unwrap();
    assert_eq!(written.len(), document.runs.len() + 2 + 2, "a load CSV and a fleet CSV per policy");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["command"], "autoscale");
    assert_eq!(json["autoscale"]["policies"].as_array().unwrap().len(), 2);
    assert_eq!(json["autoscale"]["terraform"][3]["name"], "worker_min_count");
    let csv = std::fs::read_to_string(dir.join("fleet-cpu.csv")).unwrap();
    assert!(csv.starts_with("t_lab_s,phase,desired_tasks,"), "{}", &csv[..80.min(csv.len())]);
    assert!(html.contains("Running worker tasks") && html.contains("Backlog (visible + in flight)"));
    std::fs::remove_dir_all(&dir).unwrap();
}
