//! The embedded pipeline as `up` runs it: orders posted over HTTP reach the worker through the embedded
//! SNS → SQS, the probes see the queue and the worker (in process and over the worker's HTTP port), and the
//! worker's CPU time is measured from its own threads.

use std::time::Duration;

use loadgen::LoadModel;
use loadgen::client::Target;
use loadgen::open_model::OpenLoad;
use loadtest::experiment::{Environment, RunRequest};
use loadtest::pipeline::{EmbeddedPipeline, PipelineConfig};
use loadtest::probe::{Probes, WorkerUrl};
use loadtest::runner::{self, RunPlan};
use loadtest::scenario::order_bodies;
use orders::PaymentConfig;
use tokio_util::sync::CancellationToken;

use crate::helpers::{plan, settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_flow_through_the_embedded_pipeline_and_the_probes_see_them() {
    let config = PipelineConfig {
        consumers: 4,
        payment: PaymentConfig {
            latency: Duration::from_millis(2),
            decline_rate: 0.0,
            ..PaymentConfig::default()
        },
        worker_port: Some(0),
        ..PipelineConfig::default()
    };
    let pipeline = EmbeddedPipeline::start(&config).await.unwrap();
    let target = Target::local(pipeline.receiver);
    let spec = target.request(hyper::Method::POST, "/orders/async", order_bodies(16, 1));
    let model = LoadModel::Open(OpenLoad {
        rate: 500.0,
        duration: Duration::from_millis(400),
        max_connections: 64,
        timeout: Duration::from_secs(5),
    });
    let plan = RunPlan {
        drain: Some(runner::DrainPlan {
            consumers: 4,
            payment_latency: config.payment.latency,
            cap: Duration::from_secs(20),
        }),
        ..plan("pipeline", target, spec, model, Duration::from_millis(50), Duration::from_millis(5))
    };
    let result = runner::execute(&plan, &pipeline.probes(), &CancellationToken::new()).await;

    assert_eq!(result.outcomes.accepted, 200, "{:?}", result.outcomes);
    let drain = result.queue.and_then(|q| q.drain).expect("the queue is watched");
    assert!(drain.finished && drain.remaining == 0, "{drain:?}");
    assert_eq!(result.worker.as_ref().and_then(|w| w.processed), Some(200), "every order processed");
    assert!(result.timeline.iter().any(|p| p.queue_backlog.is_some()), "queue depth in the timeline");

    // The worker's /stats over HTTP, as `--worker-url` reads a deployed worker.
    let worker_url = Target::local(pipeline.worker_http.expect("served"));
    let probes = Probes { queue: None, worker: Some(std::sync::Arc::new(WorkerUrl::new(&worker_url))) };
    let stats = probes.worker_stats().await.expect("GET /stats answers");
    assert_eq!(stats.processed, Some(200));
    assert_eq!(stats.end_to_end_ms.unwrap()["count"], 200);

    if cfg!(target_os = "linux") {
        assert!(pipeline.worker_cpu_time().is_some(), "the worker's own threads are found by name");
    }
    pipeline.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_request_uses_a_fresh_time_scaled_pipeline_with_its_own_consumers() {
    // 3 s payments at K = 100 are 30 ms; 20 consumers drain 60 orders in ~90 ms (Little's law). A lab timeout
    // of 100 s (1 s on the run's clock), not the lab's 10 s (100 ms): a loaded machine's stalls must not turn
    // the orders into timeouts.
    let environment = Environment::Embedded(PipelineConfig {
        payment: PaymentConfig { decline_rate: 0.0, ..PaymentConfig::default() },
        ..PipelineConfig::default()
    });
    let settings = settings(environment, 100.0, Duration::from_secs(20), Duration::from_millis(5));
    let request = RunRequest {
        scenario: "custom".into(),
        mode: "async".into(),
        lab_load: LoadModel::Open(OpenLoad {
            rate: 6.0,
            duration: Duration::from_secs(10),
            max_connections: 64,
            timeout: Duration::from_secs(100),
        }),
        watch_drain: true,
        consumers: Some(20),
    };
    let outcome = loadtest::experiment::run(&settings, &request, &CancellationToken::new()).await.unwrap();
    let result = outcome.result;
    assert_eq!(result.outcomes.accepted, 60);
    let drain = result.queue.unwrap().drain.unwrap();
    assert_eq!((drain.consumers, drain.payment_latency_ms), (20, 30.0), "time-scaled settings: {drain:?}");
    assert!(drain.finished);
    if cfg!(target_os = "linux") {
        assert!(outcome.worker_cpu_cores.is_some() && outcome.rss_mib.is_some());
    }
}
