//! The worker service: consumes the orders queue on SQS, pays each order, and serves `/health`, `/stats` and
//! `/metrics`. Everything is configured by flags or their environment variables (`worker --help`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use orders::{GatewayFaults, PaymentConfig};
use tokio::sync::watch;
use worker::{GateMode, Worker, WorkerConfig, metric_names};

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
    #[arg(long, env = "LEDGER_RETENTION", default_value_t = humantime::Duration::from(ledger::DEFAULT_RETENTION))]
    ledger_retention: humantime::Duration,

    /// This worker's name in the ledger (owner of its claims), unique per process; random by default.
    #[arg(long, env = "WORKER_ID")]
    worker_id: Option<String>,

    /// Orders processed concurrently (processing slots).
    #[arg(long, env = "WORKER_CONSUMERS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    consumers: u32,

    /// How the consumers reach the payment processor.
    #[arg(long, env = "GATE_MODE", value_enum, default_value_t = GateModeArg::PerConsumer)]
    gate_mode: GateModeArg,

    /// Slots of the shared gate (payments at once), with --gate-mode shared.
    #[arg(long, env = "GATE_SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    gate_slots: u32,

    /// Time one payment takes ("3s", "100ms").
    #[arg(long, env = "PAYMENT_LATENCY", default_value = "3s", value_parser = humantime::parse_duration)]
    payment_latency: Duration,

    /// Fraction of payments the processor declines (0 to 1).
    #[arg(long, env = "DECLINE_RATE", default_value_t = 0.05)]
    decline_rate: f64,

    /// Fraction of payments that fail transiently after their full latency (0 to 1), to exercise retries.
    #[arg(long, env = "PAYMENT_ERROR_RATE", default_value_t = 0.0)]
    payment_error_rate: f64,

    /// Seed of the payment gates' random draws, for repeatable runs.
    #[arg(long, env = "PAYMENT_SEED", default_value_t = 0x5eed)]
    payment_seed: u64,

    /// After SIGTERM/SIGINT, how long in-flight payments may finish before their messages are released.
    #[arg(long, env = "SHUTDOWN_DEADLINE", default_value = "25s", value_parser = humantime::parse_duration)]
    shutdown_deadline: Duration,

    /// The queue's visibility timeout; the heartbeat extends messages whose processing could outlast it.
    #[arg(long, env = "VISIBILITY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    visibility_timeout: Duration,

    /// The queue's redrive maxReceiveCount: on its last allowed receive a failing message is dead-lettered
    /// with its reason. 0 leaves it to the redrive policy.
    #[arg(long, env = "MAX_RECEIVE_COUNT", default_value_t = 5)]
    max_receive_count: u32,

    /// Long-polling receivers feeding the consumers; 0 chooses one per ten consumers, at most 16.
    #[arg(long, env = "WORKER_POLLERS", default_value_t = 0)]
    pollers: usize,

    /// Recently settled order ids remembered, so redelivered orders are not charged twice.
    #[arg(long, env = "DEDUPE_CAPACITY", default_value_t = 100_000)]
    dedupe_capacity: usize,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Instead of serving, check http://127.0.0.1:PORT/health (2 s timeout) and exit 0 if healthy, 1 if not
    /// (the container health check; the runtime image has no curl).
    #[arg(long, env = "WORKER_CHECK_HEALTH")]
    check_health: bool,
}

/// How the consumers reach the payment processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GateModeArg {
    /// Each consumer owns a single-slot payment gate, so throughput grows with consumers (consumers / latency).
    PerConsumer,
    /// All consumers share one gate of --gate-slots slots, so throughput caps at slots / latency whatever
    /// the number of consumers.
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.check_health {
        let healthy = check_health(args.port).await;
        std::process::exit(if healthy { 0 } else { 1 });
    }
    init_tracing(args.log_format);

    let Some(queue_url) = args.queue_url.clone() else {
        bail!(
            "no queue to consume: set --queue-url or ORDERS_QUEUE_URL to the SQS queue URL (and --dlq-url or \
             ORDERS_DLQ_URL to its dead-letter queue). To run the whole pipeline locally on the embedded bus, \
             run `cargo run --release -p loadtest -- up`."
        );
    };
    let Some(table) = args.table.clone() else {
        bail!(
            "no order ledger: set --table or ORDERS_TABLE to the orders DynamoDB table. Without it, workers in \
             different processes could charge one order twice."
        );
    };
    let sdk = bus::aws::config_from_env().await;
    let ledger = ledger::dynamodb::DynamoLedger::new(&sdk, table, args.ledger_retention.into());
    let mut consumer = bus::aws::AwsConsumer::new(&sdk, queue_url);
    match &args.dlq_url {
        Some(dlq_url) => consumer = consumer.with_dead_letter_queue(dlq_url.clone()),
        None => tracing::warn!(
            "no --dlq-url / ORDERS_DLQ_URL: poison messages cannot be dead-lettered by the worker and will \
             cycle until the queue's redrive policy moves them"
        ),
    }

    let metrics = install_metrics()?;
    let worker = Worker::new(worker_config(&args), Arc::new(consumer), Arc::new(ledger));
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
    let outcome = worker.run(shutdown_signal()).await;
    let _ = drained.send(true);
    http.await.context("HTTP server task")?.context("HTTP server")?;
    outcome.context("worker")?;
    Ok(())
}

fn worker_config(args: &Args) -> WorkerConfig {
    let gate_mode = match args.gate_mode {
        GateModeArg::PerConsumer => GateMode::PerConsumer,
        GateModeArg::Shared => GateMode::Shared { slots: args.gate_slots as usize },
    };
    WorkerConfig {
        consumers: args.consumers as usize,
        gate_mode,
        payment: PaymentConfig {
            slots: 1,
            latency: args.payment_latency,
            decline_rate: args.decline_rate,
            seed: args.payment_seed,
            faults: GatewayFaults { error_rate: args.payment_error_rate, outage: None },
        },
        pollers: args.pollers,
        visibility_timeout: args.visibility_timeout,
        max_receive_count: args.max_receive_count,
        dedupe_capacity: args.dedupe_capacity,
        shutdown_deadline: args.shutdown_deadline,
        worker_id: args.worker_id.clone().unwrap_or_else(worker::default_worker_id),
        ..WorkerConfig::default()
    }
}

/// Installs the process-wide Prometheus recorder, with histogram buckets spanning a fast payment to a long
/// backlog, and keeps its histograms drained.
fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    const PROCESSING: &[f64] =
        &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 30.0, 60.0, 300.0];
    const END_TO_END: &[f64] =
        &[0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(metric_names::PROCESSING_SECONDS.into()), PROCESSING)?
        .set_buckets_for_metric(Matcher::Full(metric_names::END_TO_END_SECONDS.into()), END_TO_END)?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    // On its own thread, every second: folding many seconds of samples at once on a runtime worker is a pause
    // every in-flight message would wait through (receiver::spawn_metrics_upkeep measured it).
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                upkeep.run_upkeep();
            }
        })
        .context("starting the metrics upkeep thread")?;
    Ok(handle)
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Completes on SIGTERM (ECS stopping the task) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// GETs the local /health endpoint; true on 200 within 2 s.
async fn check_health(port: u16) -> bool {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(2)).build() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("health check: cannot build an HTTP client: {error}");
            return false;
        }
    };
    match client.get(format!("http://127.0.0.1:{port}/health")).send().await {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            eprintln!("health check: /health answered {}", response.status());
            false
        }
        Err(error) => {
            eprintln!("health check: {error}");
            false
        }
    }
}
