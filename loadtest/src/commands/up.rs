//! `up`: the whole pipeline on the embedded bus until Ctrl-C, with the URLs and curl lines to try it, and the
//! load tool's control API (the embedded dead-letter queue, for `loadtest dlq`).

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::UpArgs;
use crate::commands::dlq;
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
    let control_listener = TcpListener::bind(("127.0.0.1", args.control_port))
        .await
        .with_context(|| format!("binding the control port {}", args.control_port))?;
    let control = control_listener.local_addr()?;
    let control_task = tokio::spawn(dlq::serve_control(
        control_listener,
        Arc::new(pipeline.stack.clone()) as Arc<dyn bus::DeadLetters>,
        stop.clone(),
    ));
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
        "  control:  http://{control}   (GET /dlq, POST /dlq/redrive; `loadtest dlq list|redrive` uses it)"
    );
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
    if let Ok(Err(error)) = control_task.await {
        tracing::warn!(%error, "control API stopped with an error");
    }
    Ok(())
}
