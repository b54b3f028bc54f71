//! The commands, one module each, and what they share: where the load goes (an embedded pipeline or a
//! deployed stack), the experiment's settings and time scale, and saving a results document.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use loadgen::client::Target;
use loadgen::idempotency::RetryPolicy;

use crate::cli::{LoadArgs, TargetArgs};
use crate::experiment::{Environment, ExperimentSettings};
use crate::pipeline::PipelineConfig;
use crate::probe::{Probes, WorkerUrl};
use crate::render;
use crate::results::{ResultsDocument, write_all};
use crate::scenario::TimeScale;

pub mod autoscale;
pub mod compare;
pub mod dashboard;
pub mod dlq;
pub mod infra;
pub mod outage;
pub mod run;
pub mod scale;
pub mod up;

/// The experiment's settings from the command line, with a 1 s timeline.
pub(crate) fn settings(
    environment: Environment,
    time_scale: TimeScale,
    load: &LoadArgs,
    progress: bool,
) -> ExperimentSettings {
    ExperimentSettings {
        environment,
        time_scale,
        drain_cap: load.drain_cap,
        late_threshold: load.late_threshold,
        sample_every: Duration::from_secs(1),
        progress,
        idempotency: load.idempotency_keys.then(RetryPolicy::default),
    }
}

/// The default time scale: 60 embedded (100 with --quick), 1 against a deployed stack, which cannot be
/// compressed.
pub(crate) fn time_scale(
    asked: Option<f64>,
    quick: bool,
    environment: &Environment,
) -> anyhow::Result<TimeScale> {
    match (environment, asked) {
        (Environment::Deployed { .. }, Some(k)) if k != 1.0 => {
            bail!(
                "--time-scale applies to the embedded pipeline only: a deployed stack runs on its own clock"
            )
        }
        (Environment::Deployed { .. }, _) => Ok(TimeScale::REAL),
        (Environment::Embedded(_), Some(k)) if !(k >= 1.0 && k.is_finite()) => {
            bail!("--time-scale must be ≥ 1")
        }
        (Environment::Embedded(_), Some(k)) => Ok(TimeScale::new(k)),
        (Environment::Embedded(_), None) => Ok(TimeScale::new(if quick { 100.0 } else { 60.0 })),
    }
}

/// Where the load goes: an embedded pipeline with `config`, or the deployed stack at `--target` (its queue
/// and worker probed when their URLs are given), for which `config` holds the settings Little's law needs.
pub(crate) async fn environment(target: &TargetArgs, config: PipelineConfig) -> anyhow::Result<Environment> {
    let Some(url) = &target.target else { return Ok(Environment::Embedded(config)) };
    let resolved = Target::resolve(url).await?;
    let mut probes = Probes::default();
    if let Some(queue_url) = &target.queue_url {
        let sdk = bus::aws::config_from_env().await;
        probes.queue = Some(Arc::new(bus::aws::AwsConsumer::new(&sdk, queue_url.clone())));
    }
    if let Some(worker_url) = &target.worker_url {
        probes.worker = Some(Arc::new(WorkerUrl::new(&Target::resolve(worker_url).await?)));
    }
    Ok(Environment::Deployed {
        target: resolved,
        probes,
        consumers: config.consumers,
        payment_latency: config.payment.latency,
    })
}

/// Writes the document, its CSVs and its HTML report into a new sub-directory of `results_dir`.
pub(crate) fn save(results_dir: &Path, document: &ResultsDocument) -> anyhow::Result<()> {
    let dir =
        results_dir.join(format!("{}-{}", document.command, document.created_at.format("%Y%m%d-%H%M%S")));
    let html = render::html::report(document);
    let written =
        write_all(&dir, document, &html).with_context(|| format!("writing results to {}", dir.display()))?;
    println!("results: {} ({} files; open report.html in a browser)", dir.display(), written.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_scale_defaults_and_limits() {
        let embedded = Environment::Embedded(PipelineConfig::default());
        assert_eq!(time_scale(None, false, &embedded).unwrap().factor(), 60.0);
        assert_eq!(time_scale(None, true, &embedded).unwrap().factor(), 100.0);
        assert!(time_scale(Some(0.5), false, &embedded).is_err());
        let deployed = Environment::Deployed {
            target: Target::local("127.0.0.1:1".parse().unwrap()),
            probes: Probes::default(),
            consumers: 1,
            payment_latency: Duration::from_secs(3),
        };
        assert_eq!(time_scale(None, false, &deployed).unwrap(), TimeScale::REAL);
        assert!(time_scale(Some(60.0), false, &deployed).is_err(), "a deployed stack keeps its clock");
    }
}
