//! `up`: the whole pipeline on the embedded bus until Ctrl-C, with the URLs and curl lines to try it.

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::UpArgs;
use crate::pipeline::{EmbeddedPipeline, PipelineConfig};

/// Starts the pipeline with `config` on the ports of `args`, prints how to reach it, and shuts it down
/// gracefully when `stop` is cancelled.
pub async fn up(args: &UpArgs, config: PipelineConfig, stop: &CancellationToken) -> anyhow::Result<()> {
    let config = PipelineConfig {
        receiver_port: args.port,
        receiver_admin_port: Some(args.admin_port),
        worker_port: Some(args.worker_port),
        ..config
    };
    let pipeline = EmbeddedPipeline::start(&config).await.context("starting the embedded pipeline")?;
    let receiver = format!("http://{}", pipeline.receiver);
    println!(
        "orderflow is up on the embedded bus ({} consumer(s), {:?} payments).",
        config.consumers, config.payment.latency
    );
    println!("  receiver: {receiver}   (POST /orders/async, POST /orders/sync, GET /orders/{{id}}, /health)");
    if let Some(admin) = pipeline.receiver_admin {
        println!("  receiver admin: http://{admin}   (GET /stats, /metrics)");
    }
    if let Some(worker) = pipeline.worker_http {
        println!("  worker:   http://{worker}   (GET /stats, /metrics, /health)");
    }
    println!(
        "  try: curl -s -XPOST {receiver}/orders/async -H 'content-type: application/json' \\\n        \
         -d '{{\"customer_id\":1234,\"items\":[{{\"product_id\":\"PROD-001\",\"quantity\":2,\"price\":49.99}}]}}'"
    );
    println!(
        "  then: curl -s {receiver}/orders/<order_id from the answer>   (its status, attempts and charges)"
    );
    println!("Ctrl-C stops it.");
    stop.cancelled().await;
    pipeline.shutdown().await;
    Ok(())
}
