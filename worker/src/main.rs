//! The worker service: consumes the orders queue on SQS, pays each order, and serves `/health`, `/stats` and
//! `/metrics`. Everything is configured by flags or their environment variables (`worker --help`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use service_shell::ShellArgs;
use service_shell::logging::LogOutput;
use tokio::sync::watch;
use worker::{Worker, WorkerArgs};

/// mimalloc instead of glibc malloc: every message allocates a task, its body and its parse, and mimalloc
/// takes about a tenth less CPU per message (worker/benches/throughput.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Consumes orders from an SQS queue and takes each through the simulated payment gate, N at a time.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Port of the HTTP server (/health, /stats, /metrics).
    #[arg(long, env = "PORT", default_value_t = 8081)]
    port: u16,

    /// Address the HTTP server binds to.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    bind: IpAddr,

    /// URL of the SQS queue to consume (the AWS endpoint comes from the SDK's standard AWS_ENDPOINT_URL).
    #[arg(long, env = "ORDERS_QUEUE_URL")]
    queue_url: Option<String>,

    /// URL of the dead-letter queue that poison messages are moved to, with their reason.
    #[arg(long, env = "ORDERS_DLQ_URL")]
    dlq_url: Option<String>,

    /// DynamoDB table of the order ledger, where each order is claimed before it is charged (required: it is
    /// what keeps any number of workers from charging an order twice).
    #[arg(long, env = "ORDERS_TABLE")]
    table: Option<String>,

    /// How long the ledger keeps an order's record after its last write (DynamoDB TTL).
    #[arg(long, env = "LEDGER_RETENTION", default_value = service_shell::defaults::duration(ledger::DEFAULT_RETENTION), value_parser = humantime::parse_duration)]
    ledger_retention: std::time::Duration,

    #[command(flatten)]
    worker: WorkerArgs,

    #[command(flatten)]
    shell: ShellArgs,

    /// Deprecated: use --check-health / CHECK_HEALTH, the same for every service. Still honoured.
    #[arg(long = "worker-check-health", env = "WORKER_CHECK_HEALTH")]
    deprecated_check_health: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.shell.check_health || args.deprecated_check_health {
        service_shell::health::check_and_exit(args.port);
    }
    let (Some(queue_url), Some(table)) = (args.queue_url.clone(), args.table.clone()) else {
        let mut problems = Vec::new();
        if args.queue_url.is_none() {
            problems.push(
                "no queue to consume: set ORDERS_QUEUE_URL (or --queue-url) to the SQS queue URL, and \
                 ORDERS_DLQ_URL (or --dlq-url) to its dead-letter queue.",
            );
        }
        if args.table.is_none() {
            problems.push(
                "no order ledger: set ORDERS_TABLE (or --table) to the orders DynamoDB table. Without it, workers \
                 in different processes could charge one order twice.",
            );
        }
        service_shell::exit_misconfigured(&problems, service_shell::LOCAL_PIPELINE_HINT);
    };
    service_shell::logging::init(args.shell.log_format, "info", LogOutput::Stdout);
    tokio::runtime::Runtime::new()?.block_on(serve(args, queue_url, table))
}

async fn serve(args: Args, queue_url: String, table: String) -> anyhow::Result<()> {
    let sdk = bus::aws::config_from_env().await;
    let ledger = ledger::dynamodb::DynamoLedger::new(&sdk, table, args.ledger_retention);
    let mut consumer = bus::aws::AwsConsumer::new(&sdk, queue_url);
    match &args.dlq_url {
        Some(dlq_url) => consumer = consumer.with_dead_letter_queue(dlq_url.clone()),
        None => tracing::warn!(
            "no --dlq-url / ORDERS_DLQ_URL: poison messages cannot be dead-lettered by the worker and will \
             cycle until the queue's redrive policy moves them"
        ),
    }

    let metrics = service_shell::prometheus::install(worker::METRIC_BUCKETS)?;
    let worker = Worker::new(args.worker.config(), Arc::new(consumer), Arc::new(ledger));
    let handle = worker.handle();

    let address = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the HTTP port {address}"))?;
    tracing::info!(%address, "serving /health, /stats, /metrics");

    // HTTP keeps serving while the worker drains, and stops once it has finished.
    let (drained, mut drained_rx) = watch::channel(false);
    let http = tokio::spawn(worker::serve_http(listener, handle, Some(metrics), async move {
        let _ = drained_rx.wait_for(|done| *done).await;
    }));
    let outcome = worker.run(service_shell::shutdown::signal()).await;
    let _ = drained.send(true);
    http.await.context("HTTP server task")?.context("HTTP server")?;
    outcome.context("worker")?;
    Ok(())
}
