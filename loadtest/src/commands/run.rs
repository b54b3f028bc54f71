//! `run`: one load, open (`--rate`) or closed (`--users`), against the sync or the async endpoint.

use anyhow::bail;
use loadgen::LoadModel;
use loadgen::closed_model::ClosedLoad;
use loadgen::idempotency::RetryPolicy;
use loadgen::open_model::OpenLoad;
use tokio_util::sync::CancellationToken;

use crate::cli::{Endpoint, Rate, RunArgs};
use crate::experiment::{self, ExperimentSettings, RunRequest};
use crate::pipeline::PipelineConfig;
use crate::results::ResultsDocument;
use crate::scenario::{TimeScale, describe_retry_policy};

/// Runs the load `args` describe (at real speed) on an embedded pipeline with `config`, or against
/// `--target`, and returns its results document.
pub async fn run(
    args: RunArgs,
    config: PipelineConfig,
    progress: bool,
    stop: &CancellationToken,
) -> anyhow::Result<ResultsDocument> {
    let model = match (args.rate, args.users) {
        (Some(Rate(rate)), None) => LoadModel::Open(OpenLoad {
            rate,
            duration: args.duration,
            max_connections: args.load.max_connections,
            timeout: args.timeout,
        }),
        (None, Some(users)) => LoadModel::Closed(ClosedLoad {
            users,
            spawn_rate: args.spawn_rate,
            wait: args.wait.0,
            duration: args.duration,
            timeout: args.timeout,
        }),
        _ => bail!("give either --rate (open model) or --users (closed model)"),
    };
    let environment = super::environment(&args.target, config).await?;
    let mut document = ResultsDocument::new("run", &environment.describe(), 1.0);
    document.idempotency_keys = args.load.idempotency_keys;
    if args.load.idempotency_keys {
        document.notes.push(format!(
            "Idempotency keys: {}.",
            describe_retry_policy(&RetryPolicy::default(), TimeScale::REAL)
        ));
    }
    let settings = ExperimentSettings {
        sample_every: args.sample_every,
        ..super::settings(environment, TimeScale::REAL, &args.load, progress)
    };
    let mode = match args.endpoint {
        Endpoint::Async => "async",
        Endpoint::Sync => "sync",
    };
    let request = RunRequest {
        scenario: "custom".into(),
        mode: mode.into(),
        lab_load: model,
        watch_drain: args.watch_drain,
        consumers: None,
    };
    let outcome = experiment::run(&settings, &request, stop).await?;
    document.runs.push(outcome.result);
    Ok(document)
}
