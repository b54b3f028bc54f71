//! The receiver binary: flags and environment, logging, metrics, the SNS publisher, the DynamoDB ledger,
//! signals; then [`receiver::run`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use receiver::{AppState, Config};
use service_shell::ShellArgs;
use service_shell::logging::LogOutput;

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
    /// Port of /stats and /metrics (and /health), for operators and scrapers inside the deployment; the load
    /// balancer routes only to --port, where these paths answer 404.
    #[arg(long, env = "ADMIN_PORT", default_value_t = 9090)]
    admin_port: u16,
    /// ARN of the SNS topic accepted orders are published to. Required to serve.
    #[arg(long, env = "ORDERS_TOPIC_ARN")]
    topic_arn: Option<String>,
    /// DynamoDB table of the order ledger, where each order's record is written before it is published, so
    /// that GET /orders/{id} can answer for it. Required to serve.
    #[arg(long, env = "ORDERS_TABLE")]
    table: Option<String>,
    /// How long the ledger keeps an order's record after its last write (DynamoDB TTL).
    #[arg(long, env = "LEDGER_RETENTION", default_value = service_shell::defaults::duration(ledger::DEFAULT_RETENTION), value_parser = humantime::parse_duration)]
    ledger_retention: std::time::Duration,
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    shell: ShellArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.shell.check_health {
        service_shell::health::check_and_exit(args.port);
    }
    let (Some(topic_arn), Some(table)) = (args.topic_arn.clone(), args.table.clone()) else {
        let mut problems = Vec::new();
        if args.topic_arn.is_none() {
            problems.push(
                "no SNS topic to publish to: set ORDERS_TOPIC_ARN (or --topic-arn) to the orders topic's ARN.",
            );
        }
        if args.table.is_none() {
            problems.push(
                "no order ledger: set ORDERS_TABLE (or --table) to the orders DynamoDB table. Every accepted \
                 order is recorded there before it is published, so that GET /orders/{id} can answer for it.",
            );
        }
        service_shell::exit_misconfigured(&problems, service_shell::LOCAL_PIPELINE_HINT);
    };
    service_shell::logging::init(args.shell.log_format, "info", LogOutput::Stdout);
    tokio::runtime::Runtime::new()?.block_on(serve(args, topic_arn, table))
}

async fn serve(args: Args, topic_arn: String, table: String) -> anyhow::Result<()> {
    let metrics = service_shell::prometheus::install(receiver::METRIC_BUCKETS)?;
    let sdk = bus::aws::config_from_env().await;
    let publisher = bus::aws::AwsPublisher::new(&sdk, topic_arn.clone());
    let ledger = ledger::dynamodb::DynamoLedger::new(&sdk, table.clone(), args.ledger_retention);
    let config = Config { mode: "aws".into(), ..args.config };
    let state = AppState::new(config, Arc::new(publisher), Arc::new(ledger), Some(metrics));
    let address = SocketAddr::new(args.bind, args.port);
    let listener =
        tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding {address}"))?;
    let admin_address = SocketAddr::new(args.bind, args.admin_port);
    let admin_listener = tokio::net::TcpListener::bind(admin_address)
        .await
        .with_context(|| format!("binding the admin port {admin_address}"))?;
    tracing::info!(%address, %admin_address, %topic_arn, %table, "receiver listening");
    // The admin port keeps answering while the public one drains, and stops after it.
    let drained = tokio_util::sync::CancellationToken::new();
    let admin =
        tokio::spawn(receiver::serve_admin(admin_listener, state.clone(), drained.clone().cancelled_owned()));
    let served = receiver::run(listener, state, service_shell::shutdown::signal()).await;
    drained.cancel();
    served.context("serving HTTP")?;
    admin.await.context("admin server task")?.context("serving the admin port")?;
    tracing::info!("receiver stopped");
    Ok(())
}
