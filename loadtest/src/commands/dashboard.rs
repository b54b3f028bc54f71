//! `dashboard`: the live page of a deployed stack (`--target`, `--queue-url`, `--dlq-url`, `--table`,
//! `--worker-url`), and the same page started beside the commands that run a pipeline (`up`, `run`,
//! `compare`, `scale`, `outage`, `autoscale`), which follows each embedded pipeline they start.

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::{DashboardArgs, DashboardFlags, TargetArgs};
use crate::dashboard::{
    DEFAULT_INTERVAL, DEPLOYED_INTERVAL, Dashboard, DashboardConfig, DeployedStack, Follow, Source,
};

/// Runs `loadtest dashboard` until `stop`: the page of the deployed stack `args` names.
pub async fn dashboard(
    args: &DashboardArgs,
    flags: &DashboardFlags,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let stack = DeployedStack {
        target: args.target.clone(),
        queue_url: args.queue_url.clone(),
        dlq_url: args.dlq_url.clone(),
        table: args.table.clone(),
        worker_url: args.worker_url.clone(),
    };
    let missing: Vec<&str> = [
        ("--target (order lookups)", stack.target.is_none() && stack.table.is_none()),
        ("--queue-url (backlog)", stack.queue_url.is_none()),
        ("--dlq-url (DLQ list and redrive)", stack.dlq_url.is_none()),
        ("--table (workers, lookups with ETA)", stack.table.is_none()),
        ("--worker-url (settled counts, latency)", stack.worker_url.is_none()),
    ]
    .into_iter()
    .filter_map(|(flag, absent)| absent.then_some(flag))
    .collect();
    let config = DashboardConfig { port: flags.dashboard_port, interval: args.interval };
    let dashboard = Dashboard::start(Source::Deployed(stack), config)
        .with_context(|| format!("binding the dashboard's port {} on 127.0.0.1", flags.dashboard_port))?;
    println!("dashboard: {}   (Ctrl-C stops it)", dashboard.url());
    if !missing.is_empty() {
        println!("  panels left empty without: {}", missing.join(", "));
    }
    stop.cancelled().await;
    finish(dashboard).await;
    Ok(())
}

/// What a command with `--target` watches: the deployed stack it drives, else this process's newest embedded
/// pipeline.
pub fn source_for(target: &TargetArgs) -> Source {
    match &target.target {
        None => Source::Embedded(Follow::Newest),
        Some(url) => Source::Deployed(DeployedStack {
            target: Some(url.clone()),
            queue_url: target.queue_url.clone(),
            worker_url: target.worker_url.clone(),
            ..DeployedStack::default()
        }),
    }
}

/// Starts the dashboard beside a command and prints its URL, unless `--no-dashboard`. A port already taken
/// (another `loadtest` running) only warns: the command runs without its dashboard.
pub fn start_beside(flags: &DashboardFlags, source: Source) -> Option<Dashboard> {
    if flags.no_dashboard {
        return None;
    }
    let interval = match source {
        Source::Embedded(_) => DEFAULT_INTERVAL,
        Source::Deployed(_) => DEPLOYED_INTERVAL,
    };
    match Dashboard::start(source, DashboardConfig { port: flags.dashboard_port, interval }) {
        Ok(dashboard) => {
            println!("dashboard: {}   (live; --no-dashboard turns it off)", dashboard.url());
            Some(dashboard)
        }
        Err(error) => {
            eprintln!(
                "dashboard not started: 127.0.0.1:{}: {error} (--dashboard-port 0 takes any free port)",
                flags.dashboard_port
            );
            None
        }
    }
}

/// Stops the dashboard and says what it cost: its thread's CPU time against its wall time.
pub async fn finish(dashboard: Dashboard) {
    let (cpu, wall) = (dashboard.cpu_time(), dashboard.uptime());
    dashboard.shutdown().await;
    if let Some(cpu) = cpu {
        eprintln!(
            "dashboard: {:.2} s of CPU over {:.0} s ({:.2} % of one core)",
            cpu.as_secs_f64(),
            wall.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
        );
    }
}
