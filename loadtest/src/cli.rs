//! The command line: `up`, `run`, `compare`, `scale`, `infra` and `dlq`, every flag also read from an environment
//! variable. The clap types and the dispatch to [`crate::commands`]; `main.rs` only parses and calls
//! [`execute`].

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use loadgen::closed_model::WaitRange;
use tokio_util::sync::CancellationToken;

use crate::autoscaling::AutoscaleSettings;
use crate::commands;
use crate::dashboard::{Follow, Source};
use crate::outage::OutageSettings;
use crate::pipeline::PipelineConfig;
use crate::render;

/// Load generator and the sync-vs-async order-pipeline experiment.
///
/// Without --target, every command runs the whole pipeline in this process on the embedded bus (receiver,
/// SNS→SQS, worker). With --target, it drives a deployed stack.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Directory that receives a sub-directory per command run (results.json, timeline CSVs, report.html).
    #[arg(long, env = "LOADTEST_RESULTS_DIR", default_value = "results", global = true)]
    pub results_dir: PathBuf,
    /// Do not draw live progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long, env = "LOADTEST_NO_PROGRESS", global = true)]
    pub no_progress: bool,
    /// Log format on stderr: text or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = service_shell::LogFormat::Text, global = true)]
    pub log_format: service_shell::LogFormat,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub dashboard: DashboardFlags,
}

/// The live dashboard that `up`, `run`, `compare`, `scale`, `outage` and `autoscale` start beside their work.
#[derive(Debug, Clone, Args)]
pub struct DashboardFlags {
    /// Loopback port of the live dashboard (0: any free port). `loadtest dashboard` serves on it too.
    #[arg(long, env = "LOADTEST_DASHBOARD_PORT", default_value_t = crate::dashboard::DEFAULT_PORT, global = true)]
    pub dashboard_port: u16,
    /// Do not start the live dashboard beside the command.
    #[arg(long, env = "LOADTEST_NO_DASHBOARD", global = true)]
    pub no_dashboard: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline locally (embedded bus) until Ctrl-C, and print its URLs.
    Up(UpArgs),
    /// One load against the sync or async endpoint: open model (--rate) or closed model (--users).
    Run(RunArgs),
    /// The classic experiment: sync vs async under the lab's scenarios, side by side (the main job).
    Compare(CompareArgs),
    /// The worker-scaling sweep under the flash sale (1, 5, 20, 100, 200 consumers).
    Scale(ScaleArgs),
    /// Autoscaling the worker fleet on backlog per task (Terraform's policy) vs on CPU, simulated on the
    /// embedded stack: task count and backlog over time, drain time, oldest message age, task-minutes.
    Autoscale(AutoscaleArgs),
    /// A flash sale with the payment gateway down for a window (and optionally worker crashes and poison),
    /// with the worker's circuit breaker and without it, side by side.
    Outage(OutageArgs),
    /// Create or delete the SNS/SQS resources of terraform/ on an emulator endpoint (moto, LocalStack).
    Infra(InfraArgs),
    /// Look at the dead-letter queue, or move it back to the orders queue: SQS with --queue-url, else the
    /// embedded pipeline of a running `loadtest up` (through its control API).
    Dlq(DlqArgs),
    /// The live dashboard of a deployed stack (backlog, rates, latency, workers, order lookup, DLQ), on
    /// loopback (--dashboard-port). The other commands start it for their own pipeline.
    Dashboard(DashboardArgs),
}

/// `dashboard`: what to watch; each address given fills its panels.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Base URL of the deployed receiver: order lookups (forwarded to its GET /orders/{id}) when no --table.
    #[arg(long, env = "LOADTEST_TARGET")]
    pub target: Option<String>,
    /// SQS URL of the orders queue: the backlog. Credentials, region and AWS_ENDPOINT_URL come from the
    /// standard AWS chain.
    #[arg(long, env = "ORDERS_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// SQS URL of its dead-letter queue: the DLQ's list and redrive (with --queue-url).
    #[arg(long, env = "ORDERS_DLQ_URL", requires = "queue_url")]
    pub dlq_url: Option<String>,
    /// The ledger's DynamoDB table: the worker registry, and order lookups with their ETA.
    #[arg(long, env = "ORDERS_TABLE")]
    pub table: Option<String>,
    /// Base URL of a deployed worker: its /stats (settled counts, end-to-end latency).
    #[arg(long, env = "WORKER_URL")]
    pub worker_url: Option<String>,
    /// Time between two samples (each is an SQS call, a DynamoDB read and an HTTP call).
    #[arg(
        long,
        env = "LOADTEST_DASHBOARD_INTERVAL",
        default_value = service_shell::defaults::duration(crate::dashboard::DEPLOYED_INTERVAL),
        value_parser = humantime::parse_duration,
    )]
    pub interval: Duration,
}

/// Where the load goes (default: a pipeline in this process).
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Base URL of a deployed receiver (e.g. the load balancer Terraform outputs). Without it, an embedded
    /// pipeline runs in this process.
    #[arg(long, env = "LOADTEST_TARGET")]
    pub target: Option<String>,
    /// SQS queue URL of the deployed stack, to sample queue depth (uses the standard AWS credential chain).
    #[arg(long, env = "ORDERS_QUEUE_URL", requires = "target")]
    pub queue_url: Option<String>,
    /// Base URL of a deployed worker, to read its /stats (end-to-end latency, processed count).
    #[arg(long, env = "WORKER_URL", requires = "target")]
    pub worker_url: Option<String>,
}

/// The pipeline's settings: used to build the embedded pipeline, and with --target as the deployed stack's
/// settings for Little's-law predictions. Lab time (a time scale divides them). The same flags, environment
/// variables and defaults as the worker and receiver binaries.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub gate: worker::GateArgs,
    /// The simulated payment processor of the worker's gates and the sync endpoint's one-slot gate.
    #[command(flatten)]
    pub payment: orders::PaymentConfig,
    /// How long the sync endpoint waits for the payment slot before answering 504.
    #[arg(
        long,
        env = "SYNC_TIMEOUT",
        default_value = service_shell::defaults::duration(receiver::Config::default().sync_timeout),
        value_parser = humantime::parse_duration,
    )]
    pub sync_timeout: Duration,
}

impl PipelineArgs {
    fn config(&self) -> PipelineConfig {
        PipelineConfig {
            consumers: self.gate.consumers as usize,
            gate_mode: self.gate.gate_mode(),
            payment: self.payment.clone(),
            sync_timeout: self.sync_timeout,
            ..PipelineConfig::default()
        }
    }
}

/// `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Loopback port of the receiver.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Loopback port of the worker's /health, /stats, /metrics.
    #[arg(long, env = "WORKER_PORT", default_value_t = 8081)]
    pub worker_port: u16,
    /// Loopback port of the receiver's /stats and /metrics (its admin port, as the receiver binary has).
    #[arg(long, env = "ADMIN_PORT", default_value_t = 9090)]
    pub admin_port: u16,
    /// Loopback port of the load tool's control API (GET /dlq, POST /dlq/redrive), which `loadtest dlq` uses.
    #[arg(long, env = "LOADTEST_CONTROL_PORT", default_value_t = commands::dlq::DEFAULT_CONTROL_PORT)]
    pub control_port: u16,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pipeline: PipelineArgs,
}

/// Which endpoint to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Endpoint {
    /// `POST /orders/async`: accept, publish, 202.
    Async,
    /// `POST /orders/sync`: wait for the payment, 200/402/504.
    Sync,
}

/// Settings common to every load.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The most requests in flight at once (open model; one connection each). Must cover rate × worst
    /// latency, or sends fall behind (reported as late).
    #[arg(long, env = "LOADTEST_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Open model: a send later than this after its intended time counts as late.
    #[arg(long, env = "LOADTEST_LATE_THRESHOLD", default_value = "1ms", value_parser = humantime::parse_duration)]
    pub late_threshold: Duration,
    /// After the load, watch the queue drain for at most this long (real time), then extrapolate.
    #[arg(long, env = "LOADTEST_DRAIN_CAP", default_value = "10m", value_parser = humantime::parse_duration)]
    pub drain_cap: Duration,
    /// Send a fresh Idempotency-Key (a UUIDv4) with every order, and retry a 503, a 409, a timeout or a
    /// connection error with the same key and body, as a careful client would: Retry-After honoured up to 5 s,
    /// jittered backoff, at most 5 attempts. Reports retries, replays and duplicate orders; latency then covers
    /// every attempt. compare applies it to its async runs only.
    #[arg(long, env = "LOADTEST_IDEMPOTENCY_KEYS")]
    pub idempotency_keys: bool,
}

/// `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The endpoint to load.
    #[arg(long, env = "LOADTEST_ENDPOINT", default_value = "async")]
    pub endpoint: Endpoint,
    /// Open model: requests per second (`60`, `60/s`, `3600/min`).
    #[arg(long, env = "LOADTEST_RATE", conflicts_with = "users", required_unless_present = "users")]
    pub rate: Option<Rate>,
    /// Closed model: concurrent users (Locust-style).
    #[arg(long, env = "LOADTEST_USERS")]
    pub users: Option<usize>,
    /// Closed model: users started per second.
    #[arg(long, env = "LOADTEST_SPAWN_RATE", default_value_t = 10.0)]
    pub spawn_rate: f64,
    /// Closed model: pause between a user's requests, `MIN..MAX` or a fixed `D`.
    #[arg(long, env = "LOADTEST_WAIT", default_value = "100ms..500ms")]
    pub wait: WaitArg,
    /// How long to apply the load.
    #[arg(long, env = "LOADTEST_DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Request timeout (the lab's load balancer: 10 s).
    #[arg(long, env = "LOADTEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Timeline resolution.
    #[arg(long, env = "LOADTEST_SAMPLE_EVERY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// After the load, watch the queue until it is empty (up to --drain-cap).
    #[arg(long, env = "LOADTEST_WATCH_DRAIN")]
    pub watch_drain: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub load: LoadArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: TargetArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pipeline: PipelineArgs,
}

/// `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Time compression K (payment latency ÷ K, rates × K, durations ÷ K). Default 60 on the embedded pipeline
    /// (the 3 h one-worker drain takes 3 min), 1 with --target (a deployed stack keeps its own clock).
    #[arg(long, env = "LOADTEST_TIME_SCALE")]
    pub time_scale: Option<f64>,
    /// CI preset: K = 100 (unless given) and every scenario shortened to 10 lab seconds.
    #[arg(long, env = "LOADTEST_QUICK")]
    pub quick: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub load: LoadArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: TargetArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pipeline: PipelineArgs,
}

/// `scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Consumer counts to sweep.
    #[arg(long, env = "LOADTEST_SCALE_CONSUMERS", value_delimiter = ',', default_value = "1,5,20,100,200")]
    pub consumers_list: Vec<usize>,
    /// Time compression K, as for `compare` (default 60 embedded, 1 with --target).
    #[arg(long, env = "LOADTEST_TIME_SCALE")]
    pub time_scale: Option<f64>,
    /// CI preset: K = 100 (unless given) and a 10 lab-second flash sale.
    #[arg(long, env = "LOADTEST_QUICK")]
    pub quick: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub load: LoadArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: TargetArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub pipeline: PipelineArgs,
}

/// `outage`. Lab time throughout (a time scale divides it); defaults from [`OutageSettings::default`].
#[derive(Debug, Args)]
pub struct OutageArgs {
    /// Time compression K, as for `compare`: default 60, 100 with --quick.
    #[arg(long, env = "LOADTEST_TIME_SCALE")]
    pub time_scale: Option<f64>,
    /// CI preset: K = 100 (unless given) and a 20 s sale with the gateway down from 10 s for 2 minutes.
    #[arg(long, env = "LOADTEST_QUICK")]
    pub quick: bool,
    /// Accepted for symmetry with the other experiments, refused: the outage is injected into the embedded
    /// gateway, which a deployed stack does not have.
    #[arg(long, env = "LOADTEST_TARGET")]
    pub target: Option<String>,
    /// Orders per second of the sale (`60`, `60/s`, `3600/min`). Default: the lab's flash sale, 60/s.
    #[arg(long, env = "LOADTEST_RATE")]
    pub rate: Option<Rate>,
    /// How long the sale lasts. Default: the flash sale's 60 s (20 s with --quick).
    #[arg(long, env = "LOADTEST_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// When the payment gateway goes down, from the start of the sale.
    #[arg(
        long,
        env = "OUTAGE_START",
        default_value = service_shell::defaults::duration(OutageSettings::default().starts_after),
        value_parser = humantime::parse_duration,
    )]
    pub outage_start: Duration,
    /// How long the gateway stays down.
    #[arg(
        long,
        env = "OUTAGE_LENGTH",
        default_value = service_shell::defaults::duration(OutageSettings::default().lasts),
        value_parser = humantime::parse_duration,
    )]
    pub outage_length: Duration,
    /// Worker consumers: enough to keep up with the sale while the gateway is up.
    #[arg(
        long,
        env = "WORKER_CONSUMERS",
        default_value_t = OutageSettings::default().consumers as u32,
        value_parser = clap::value_parser!(u32).range(1..=100_000),
    )]
    pub consumers: u32,
    /// Crash the worker this often (abort it, no graceful stop, then start a new one). Default: never.
    #[arg(long, env = "OUTAGE_CRASH_EVERY", value_parser = humantime::parse_duration)]
    pub crash_every: Option<Duration>,
    /// Poison messages (not orders) mixed into the queue, as a share of the sale's orders (0 to 1).
    #[arg(
        long,
        env = "OUTAGE_POISON_SHARE",
        default_value_t = OutageSettings::default().poison_share,
        value_parser = orders::parse_fraction,
    )]
    pub poison_share: f64,
    /// The simulated payment processor (lab time).
    #[command(flatten)]
    pub payment: orders::PaymentConfig,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub load: LoadArgs,
}

impl OutageArgs {
    /// The experiment's settings from these flags.
    pub fn settings(&self) -> OutageSettings {
        OutageSettings {
            starts_after: if self.quick { Duration::from_secs(10) } else { self.outage_start },
            lasts: self.outage_length,
            consumers: self.consumers as usize,
            crash_every: self.crash_every,
            poison_share: self.poison_share,
        }
    }
}

/// `autoscale`. Lab time throughout (a time scale divides it); each default mirrors `terraform/variables.tf`
/// or AWS's behaviour, from [`AutoscaleSettings::default`].
#[derive(Debug, Args)]
pub struct AutoscaleArgs {
    /// Time compression K, as for `compare`: default 60, 100 with --quick.
    #[arg(long, env = "LOADTEST_TIME_SCALE")]
    pub time_scale: Option<f64>,
    /// CI preset: K = 100 (unless given), and the watch ends once the late scale-outs have landed after the
    /// drain (--after-drain defaults to the metric period + delay + start-up) instead of after the scale-in.
    #[arg(long, env = "LOADTEST_QUICK")]
    pub quick: bool,
    /// Orders per second of the load (`60`, `60/s`, `3600/min`). Default: the lab's flash sale, 60/s.
    #[arg(long, env = "LOADTEST_RATE")]
    pub rate: Option<Rate>,
    /// How long the load lasts. Default: the flash sale's 60 s.
    #[arg(long, env = "LOADTEST_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Consumers (processing slots) per worker task: Terraform's worker_consumers.
    #[arg(
        long,
        env = "WORKER_CONSUMERS",
        default_value_t = AutoscaleSettings::default().consumers_per_task,
        value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u32).range(1..), |n| n as usize),
    )]
    pub consumers: usize,
    /// Fewest worker tasks (at least 1; the fleet starts here): Terraform's worker_min_count.
    #[arg(long, env = "AUTOSCALE_MIN_TASKS", default_value_t = AutoscaleSettings::default().min_tasks)]
    pub min_tasks: usize,
    /// Most worker tasks: Terraform's worker_max_count.
    #[arg(long, env = "AUTOSCALE_MAX_TASKS", default_value_t = AutoscaleSettings::default().max_tasks)]
    pub max_tasks: usize,
    /// Longest an order should wait in the queue: Terraform's acceptable_latency_seconds. The backlog-per-task
    /// target is this × consumers ÷ payment latency.
    #[arg(
        long,
        env = "ACCEPTABLE_LATENCY",
        default_value = service_shell::defaults::duration(AutoscaleSettings::default().acceptable_latency),
        value_parser = humantime::parse_duration,
    )]
    pub acceptable_latency: Duration,
    /// Wait after a scale-out before the next: Terraform's scale_out_cooldown_seconds.
    #[arg(
        long,
        env = "SCALE_OUT_COOLDOWN",
        default_value = service_shell::defaults::duration(AutoscaleSettings::default().scale_out_cooldown),
        value_parser = humantime::parse_duration,
    )]
    pub scale_out_cooldown: Duration,
    /// Wait after a scale-in before the next: Terraform's scale_in_cooldown_seconds.
    #[arg(
        long,
        env = "SCALE_IN_COOLDOWN",
        default_value = service_shell::defaults::duration(AutoscaleSettings::default().scale_in_cooldown),
        value_parser = humantime::parse_duration,
    )]
    pub scale_in_cooldown: Duration,
    /// One metric datapoint per period (CloudWatch: a minute for SQS and Container Insights).
    #[arg(
        long,
        env = "AUTOSCALE_METRIC_PERIOD",
        default_value = service_shell::defaults::duration(AutoscaleSettings::default().metric_period),
        value_parser = humantime::parse_duration,
    )]
    pub metric_period: Duration,
    /// How late a datapoint reaches the policy after its period ends.
    #[arg(
        long,
        env = "AUTOSCALE_METRIC_DELAY",
        default_value = service_shell::defaults::duration(AutoscaleSettings::default().metric_delay),
        value_parser = humantime::parse_duration,
    )]
    pub metric_delay: Duration,
    /// Consecutive datapoints above the target before a scale-out (AWS target tracking's high alarm).
    #[arg(
        long,
        env = "AUTOSCALE_SCALE_OUT_DATAPOINTS",
        default_value_t = AutoscaleSettings::default().scale_out_datapoints
    )]
    pub scale_out_datapoints: usize,
    /// Consecutive datapoints below 90 % of the target before a scale-in (AWS target tracking's low alarm).
    #[arg(
        long,
        env = "AUTOSCALE_SCALE_IN_DATAPOINTS",
        default_value_t = AutoscaleSettings::default().scale_in_datapoints
    )]
    pub scale_in_datapoints: usize,
    /// From a scale-out to the new task taking orders (about a minute on Fargate).
    #[arg(
        long,
        env = "AUTOSCALE_STARTUP_DELAY",
        default_value = service_shell::defaults::duration(AutoscaleSettings::default().startup_delay),
        value_parser = humantime::parse_duration,
    )]
    pub startup_delay: Duration,
    /// The CPU policy's target utilization, percent (the policy run for contrast; not in terraform/).
    #[arg(long, env = "AUTOSCALE_CPU_TARGET", default_value_t = AutoscaleSettings::default().cpu_target_percent)]
    pub cpu_target: f64,
    /// After the queue drained, watch at most this long for the scale-in (the watch ends sooner once the fleet
    /// is back at its minimum). Default 20m; with --quick, the metric period + delay + start-up.
    #[arg(long, env = "AUTOSCALE_AFTER_DRAIN", value_parser = humantime::parse_duration)]
    pub after_drain: Option<Duration>,
    /// The simulated payment processor of every task (its latency is one order's processing time: Terraform's
    /// payment_latency_seconds).
    #[command(flatten)]
    pub payment: orders::PaymentConfig,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub load: LoadArgs,
    /// Not supported: autoscale runs the fleet in this process on the embedded stack (a deployed stack's
    /// scaling is AWS's); given, the command stops with an explanation.
    #[arg(long, env = "LOADTEST_TARGET")]
    pub target: Option<String>,
}

impl AutoscaleArgs {
    /// The simulation's settings from these flags.
    pub fn settings(&self) -> AutoscaleSettings {
        let defaults = AutoscaleSettings::default();
        AutoscaleSettings {
            consumers_per_task: self.consumers,
            min_tasks: self.min_tasks,
            max_tasks: self.max_tasks,
            acceptable_latency: self.acceptable_latency,
            scale_out_cooldown: self.scale_out_cooldown,
            scale_in_cooldown: self.scale_in_cooldown,
            metric_period: self.metric_period,
            metric_delay: self.metric_delay,
            scale_out_datapoints: self.scale_out_datapoints,
            scale_in_datapoints: self.scale_in_datapoints,
            startup_delay: self.startup_delay,
            cpu_target_percent: self.cpu_target,
            after_drain: defaults.after_drain,
        }
        .with_after_drain(self.after_drain, self.quick)
    }
}

/// `infra`.
#[derive(Debug, Args)]
pub struct InfraArgs {
    /// Create or delete.
    #[command(subcommand)]
    pub action: InfraAction,
}

/// `infra up` / `infra down`.
#[derive(Debug, Subcommand)]
pub enum InfraAction {
    /// Create (or find) the topic, queue, DLQ, policies, subscription and ledger table; print the env lines to
    /// copy.
    Up(InfraTarget),
    /// Delete them.
    Down(InfraTarget),
}

/// The emulator and the names.
#[derive(Debug, Args)]
pub struct InfraTarget {
    /// SNS/SQS/DynamoDB endpoint of the emulator (e.g. http://127.0.0.1:5000 for moto).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint: String,
    /// Name prefix, like Terraform's var.name: topic, queue and ledger table `{name}-orders`, DLQ
    /// `{name}-orders-dlq`.
    #[arg(long, env = "INFRA_NAME", default_value = "orderflow")]
    pub name: String,
    /// Receives before SQS moves a message to the DLQ.
    #[arg(long, env = "MAX_RECEIVE_COUNT", default_value_t = 5)]
    pub max_receive_count: u32,
    /// The queue's visibility timeout.
    #[arg(long, env = "VISIBILITY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub visibility_timeout: Duration,
}

/// `dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// List or redrive.
    #[command(subcommand)]
    pub action: DlqAction,
}

/// `dlq list` / `dlq redrive`.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// Peek at the dead-lettered orders (they stay in the DLQ): reason, receive count, age, order id.
    List(DlqListArgs),
    /// Move every dead-lettered order back to the orders queue (SQS's move task where available).
    Redrive(DlqRedriveArgs),
}

/// Which queues: SQS (with --queue-url and --dlq-url) or a running `loadtest up`.
#[derive(Debug, Clone, Args)]
pub struct DlqTarget {
    /// SQS URL of the orders queue. Credentials, region and AWS_ENDPOINT_URL come from the standard AWS chain.
    /// Without it, the embedded pipeline of `loadtest up` at --control-url.
    #[arg(long, env = "ORDERS_QUEUE_URL", requires = "dlq_url")]
    pub queue_url: Option<String>,
    /// SQS URL of its dead-letter queue.
    #[arg(long, env = "ORDERS_DLQ_URL", requires = "queue_url")]
    pub dlq_url: Option<String>,
    /// Control API of a running `loadtest up` (its --control-port).
    #[arg(long, env = "LOADTEST_CONTROL_URL", default_value = commands::dlq::default_control_url())]
    pub control_url: String,
}

/// `dlq list`.
#[derive(Debug, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: DlqTarget,
    /// The most messages to show (each is received once more by the peek).
    #[arg(long, env = "LOADTEST_DLQ_MAX", default_value_t = 50)]
    pub max: usize,
    /// Print JSON (one array) instead of the table.
    #[arg(long, env = "LOADTEST_DLQ_JSON")]
    pub json: bool,
}

/// `dlq redrive`.
#[derive(Debug, Args)]
pub struct DlqRedriveArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub target: DlqTarget,
    /// Move by receive → send → delete even where SQS's move task is available.
    #[arg(long, env = "LOADTEST_DLQ_FALLBACK")]
    pub fallback: bool,
    /// How long to wait for DLQ messages that are in flight (received by someone, or by an interrupted
    /// redrive) before stopping and reporting them as left behind. Longer than the DLQ's visibility timeout.
    #[arg(
        long,
        env = "LOADTEST_DLQ_IN_FLIGHT_WAIT",
        default_value = service_shell::defaults::duration(bus::RedriveOptions::default().in_flight_wait),
        value_parser = humantime::parse_duration,
    )]
    pub in_flight_wait: Duration,
}

/// A request rate: `60`, `60/s`, `3600/m`, `3600/min`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

impl FromStr for Rate {
    type Err = String;
    fn from_str(text: &str) -> Result<Rate, String> {
        let (number, per) = text.split_once('/').unwrap_or((text, "s"));
        let seconds = match per.trim() {
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown rate unit {other:?}: use /s, /min or /h")),
        };
        let value: f64 = number.trim().parse().map_err(|_| format!("{number:?} is not a number"))?;
        if !(value > 0.0 && value.is_finite()) {
            return Err("a rate must be positive".into());
        }
        Ok(Rate(value / seconds))
    }
}

/// A wait range: `100ms..500ms` or a fixed `200ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitArg(pub WaitRange);

impl FromStr for WaitArg {
    type Err = String;
    fn from_str(text: &str) -> Result<WaitArg, String> {
        let parse = |t: &str| humantime::parse_duration(t.trim()).map_err(|e| format!("{t:?}: {e}"));
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (parse(min)?, parse(max)?),
            None => (parse(text)?, parse(text)?),
        };
        if min > max {
            return Err("the wait range's minimum is above its maximum".into());
        }
        Ok(WaitArg(WaitRange { min, max }))
    }
}

/// Runs a parsed command line; returns when it is done (or interrupted with Ctrl-C).
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: finishing up (Ctrl-C again to quit at once)");
                stop.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    let progress = !cli.no_progress;
    let dashboard = match &cli.command {
        Command::Up(_) | Command::Outage(_) | Command::Autoscale(_) => {
            commands::dashboard::start_beside(&cli.dashboard, Source::Embedded(Follow::Newest))
        }
        Command::Run(RunArgs { target, .. })
        | Command::Compare(CompareArgs { target, .. })
        | Command::Scale(ScaleArgs { target, .. }) => {
            commands::dashboard::start_beside(&cli.dashboard, commands::dashboard::source_for(target))
        }
        Command::Infra(_) | Command::Dlq(_) | Command::Dashboard(_) => None,
    };
    let outcome = match cli.command {
        Command::Up(args) => {
            let config = args.pipeline.config();
            commands::up::up(&args, config, &stop).await
        }
        Command::Run(args) => {
            let config = args.pipeline.config();
            let document = commands::run::run(args, config, progress, &stop).await?;
            println!("{}", render::text::runs(&document));
            commands::save(&cli.results_dir, &document)
        }
        Command::Compare(args) => {
            let environment = commands::environment(&args.target, args.pipeline.config()).await?;
            let scale = commands::time_scale(args.time_scale, args.quick, &environment)?;
            let settings = commands::settings(environment, scale, &args.load, progress);
            let document =
                commands::compare::compare(&settings, args.load.max_connections, args.quick, &stop).await?;
            println!("{}", render::text::comparison(&document));
            commands::save(&cli.results_dir, &document)
        }
        Command::Scale(args) => {
            let environment = commands::environment(&args.target, args.pipeline.config()).await?;
            let scale = commands::time_scale(args.time_scale, args.quick, &environment)?;
            let settings = commands::settings(environment, scale, &args.load, progress);
            let document = commands::scale::scale(
                &settings,
                &args.consumers_list,
                args.load.max_connections,
                args.quick,
                &stop,
            )
            .await?;
            println!("{}", render::text::scaling(&document));
            commands::save(&cli.results_dir, &document)
        }
        Command::Autoscale(args) => {
            let document = commands::autoscale::execute(&args, progress, &stop).await?;
            println!("{}", render::autoscale::text(&document));
            commands::save(&cli.results_dir, &document)
        }
        Command::Outage(args) => {
            let document = commands::outage::execute(&args, progress, &stop).await?;
            println!("{}", render::outage::text(&document));
            commands::save(&cli.results_dir, &document)
        }
        Command::Infra(args) => commands::infra::infra(args).await,
        Command::Dlq(args) => commands::dlq::dlq(args).await,
        Command::Dashboard(args) => commands::dashboard::dashboard(&args, &cli.dashboard, &stop).await,
    };
    if let Some(dashboard) = dashboard {
        commands::dashboard::finish(dashboard).await;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!("60".parse::<Rate>().unwrap(), Rate(60.0));
        assert_eq!("60/s".parse::<Rate>().unwrap(), Rate(60.0));
        assert_eq!("3600/min".parse::<Rate>().unwrap(), Rate(60.0));
        assert!("0/s".parse::<Rate>().is_err());
        assert!("60/fortnight".parse::<Rate>().is_err());
    }

    #[test]
    fn waits_parse_as_ranges_or_fixed() {
        let WaitArg(range) = "100ms..500ms".parse().unwrap();
        assert_eq!((range.min, range.max), (Duration::from_millis(100), Duration::from_millis(500)));
        let WaitArg(fixed) = "2s".parse().unwrap();
        assert_eq!((fixed.min, fixed.max), (Duration::from_secs(2), Duration::from_secs(2)));
        assert!("500ms..100ms".parse::<WaitArg>().is_err());
    }

    #[test]
    fn every_flag_has_an_env_var_and_the_commands_parse() {
        use clap::CommandFactory;
        fn check(command: &clap::Command) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version"].contains(&id) || arg.is_positional() {
                    continue;
                }
                assert!(arg.get_env().is_some(), "--{id} of `{}` has no env var", command.get_name());
            }
            command.get_subcommands().for_each(check);
        }
        Cli::command().debug_assert();
        check(&Cli::command());
        let cli = Cli::try_parse_from(["loadtest", "run", "--rate", "60/s", "--endpoint", "sync"]).unwrap();
        assert!(matches!(cli.command, Command::Run(RunArgs { rate: Some(Rate(60.0)), .. })));
        assert!(Cli::try_parse_from(["loadtest", "run", "--rate", "5", "--users", "3"]).is_err());
        let keyed = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Run(run) => run.load.idempotency_keys,
            Command::Compare(compare) => compare.load.idempotency_keys,
            other => panic!("{other:?}"),
        };
        assert!(keyed(&["loadtest", "run", "--rate", "5", "--idempotency-keys"]));
        assert!(keyed(&["loadtest", "compare", "--quick", "--idempotency-keys"]));
        assert!(!keyed(&["loadtest", "compare"]), "the main job sends no keys");
        assert!(
            Cli::try_parse_from(["loadtest", "compare", "--queue-url", "http://q"]).is_err(),
            "needs --target"
        );
    }
}
