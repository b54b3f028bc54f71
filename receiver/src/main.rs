//! The receiver binary: flags and environment, logging, metrics, the SNS publisher, the DynamoDB ledger,
//! signals; then [`receiver::run`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use orders::PaymentConfig;
use receiver::{AppState, Config};

/// mimalloc instead of glibc malloc: each order allocates its request, parse, wire message and response, and
/// on two cores glibc's free lists cost the receiver a measurable share of its CPU (receiver/benches/http.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// HTTP front door of orderflow: accepts orders and publishes them to SNS (`POST /orders/async`), or takes
/// payment synchronously as the baseline (`POST /orders/sync`).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// ARN of the SNS topic accepted orders are published to. Required to serve.
    #[arg(long, env = "ORDERS_TOPIC_ARN")]
    topic_arn: Option<String>,
    /// DynamoDB table of the order ledger, where each order's record is written before it is published, so
    /// that GET /orders/{id} can answer for it. Required to serve.
    #[arg(long, env = "ORDERS_TABLE")]
    table: Option<String>,
    /// How long the ledger keeps an order's record after its last write (DynamoDB TTL).
    #[arg(long, env = "LEDGER_RETENTION", default_value_t = humantime::Duration::from(ledger::DEFAULT_RETENTION))]
    ledger_retention: humantime::Duration,
    /// How long one ledger call (write, lookup) may take before the request answers 503.
    #[arg(long, env = "LEDGER_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    ledger_timeout: Duration,
    /// How long `POST /orders/sync` waits for a payment slot before answering 504.
    #[arg(long, env = "SYNC_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    sync_timeout: Duration,
    /// How long one payment holds its slot in the sync endpoint's gate.
    #[arg(long, env = "PAYMENT_LATENCY", default_value = "3s", value_parser = humantime::parse_duration)]
    payment_latency: Duration,
    /// Payments the sync endpoint's gate processes at once.
    #[arg(long, env = "PAYMENT_SLOTS", default_value_t = 1)]
    payment_slots: usize,
    /// Fraction of sync payments declined (402).
    #[arg(long, env = "DECLINE_RATE", default_value_t = 0.05)]
    decline_rate: f64,
    /// How long a request waits for SNS to acknowledge its publish before answering 503.
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    publish_timeout: Duration,
    /// How long a partial publish batch waits for more orders while another batch is in flight.
    #[arg(long, env = "BATCH_LINGER", default_value = "2ms", value_parser = humantime::parse_duration)]
    batch_linger: Duration,
    /// Publish calls to SNS in flight at once.
    #[arg(long, env = "MAX_BATCHES_IN_FLIGHT", default_value_t = 16)]
    max_batches_in_flight: usize,
    /// `POST /orders/async` requests handled at once; more are shed with 503.
    #[arg(long, env = "MAX_ASYNC_IN_FLIGHT", default_value_t = 1024)]
    max_async_in_flight: usize,
    /// `POST /orders/sync` requests handled at once; more are shed with 503.
    #[arg(long, env = "MAX_SYNC_IN_FLIGHT", default_value_t = 1024)]
    max_sync_in_flight: usize,
    /// `Retry-After` sent with 503 answers.
    #[arg(long, env = "RETRY_AFTER", default_value = "1s", value_parser = humantime::parse_duration)]
    retry_after: Duration,
    /// After SIGTERM/SIGINT, how long in-flight requests and pending publishes get to finish.
    #[arg(long, env = "SHUTDOWN_DEADLINE", default_value = "20s", value_parser = humantime::parse_duration)]
    shutdown_deadline: Duration,
    /// How long the answer to a request with an Idempotency-Key is replayed to retries with that key.
    #[arg(long, env = "IDEMPOTENCY_RETENTION", default_value_t = humantime::Duration::from(ledger::idempotency::DEFAULT_KEY_RETENTION))]
    idempotency_retention: humantime::Duration,
    /// Log format: human-readable text, or one JSON object per line for log collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Instead of serving, GET http://127.0.0.1:$PORT/health (2 s timeout) and exit 0 on 200, 1 otherwise:
    /// the container health check (the runtime image has no curl).
    #[arg(long, env = "CHECK_HEALTH")]
    check_health: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.check_health {
        let healthy = tokio::runtime::Runtime::new()?.block_on(check_health(args.port));
        std::process::exit(if healthy { 0 } else { 1 });
    }
    let (Some(topic_arn), Some(table)) = (args.topic_arn.clone(), args.table.clone()) else {
        if args.topic_arn.is_none() {
            eprintln!(
                "error: no SNS topic to publish to: set ORDERS_TOPIC_ARN (or --topic-arn) to the orders \
                 topic's ARN."
            );
        }
        if args.table.is_none() {
            eprintln!(
                "error: no order ledger: set ORDERS_TABLE (or --table) to the orders DynamoDB table. Every \
                 accepted order is recorded there before it is published, so that GET /orders/{{id}} can \
                 answer for it."
            );
        }
        eprintln!(
            "To run the whole pipeline locally on the embedded bus instead: cargo run --release -p loadtest -- up"
        );
        std::process::exit(2);
    };
    init_tracing(args.log_format);
    tokio::runtime::Runtime::new()?.block_on(serve(args, topic_arn, table))
}

async fn serve(args: Args, topic_arn: String, table: String) -> anyhow::Result<()> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("seconds".into()),
            &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("receiver_publish_batch_size".into()),
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
        )?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    receiver::spawn_metrics_upkeep(metrics.clone());

    let sdk = bus::aws::config_from_env().await;
    let publisher = bus::aws::AwsPublisher::new(&sdk, topic_arn.clone());
    let ledger = ledger::dynamodb::DynamoLedger::new(&sdk, table.clone(), args.ledger_retention.into());
    let config = Config {
        mode: "aws".into(),
        sync_timeout: args.sync_timeout,
        payment: PaymentConfig {
            slots: args.payment_slots,
            latency: args.payment_latency,
            decline_rate: args.decline_rate,
            ..PaymentConfig::default()
        },
        publish_timeout: args.publish_timeout,
        ledger_timeout: args.ledger_timeout,
        batch_linger: args.batch_linger,
        max_batches_in_flight: args.max_batches_in_flight,
        max_async_in_flight: args.max_async_in_flight,
        max_sync_in_flight: args.max_sync_in_flight,
        retry_after: args.retry_after,
        shutdown_deadline: args.shutdown_deadline,
        idempotency_retention: args.idempotency_retention.into(),
    };
    let state = AppState::new(config, Arc::new(publisher), Arc::new(ledger), Some(metrics));
    let address = SocketAddr::new(args.bind, args.port);
    let listener =
        tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding {address}"))?;
    tracing::info!(%address, %topic_arn, %table, "receiver listening");
    receiver::run(listener, state, shutdown_signal()).await.context("serving HTTP")?;
    tracing::info!("receiver stopped");
    Ok(())
}

/// Completes on SIGTERM (ECS stopping the task) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT will stop the receiver");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

async fn check_health(port: u16) -> bool {
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(2)).build() else { return false };
    let url = format!("http://127.0.0.1:{port}/health");
    matches!(client.get(url).send().await, Ok(response) if response.status() == reqwest::StatusCode::OK)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
