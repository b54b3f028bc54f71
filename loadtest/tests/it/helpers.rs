//! What the tests share: a run plan without drain watch or progress bar, and experiment settings.

use std::time::Duration;

use loadgen::LoadModel;
use loadgen::client::{RequestSpec, Target};
use loadtest::experiment::{Environment, ExperimentSettings};
use loadtest::runner::RunPlan;
use loadtest::scenario::TimeScale;

/// A plan to run `model` with `spec` against `target` as `scenario/async`, without watching a drain or
/// drawing progress; the timeline is sampled every `sample_every`.
pub fn plan(
    scenario: &str,
    target: Target,
    spec: RequestSpec,
    model: LoadModel,
    sample_every: Duration,
    late_threshold: Duration,
) -> RunPlan {
    RunPlan {
        scenario: scenario.into(),
        mode: "async".into(),
        spec,
        target,
        model,
        sample_every,
        late_threshold,
        drain: None,
        progress: false,
    }
}

/// Experiment settings on time scale `k`, without keys or progress bar, the timeline sampled every second and
/// drains watched for at most `drain_cap`.
pub fn settings(
    environment: Environment,
    k: f64,
    drain_cap: Duration,
    late_threshold: Duration,
) -> ExperimentSettings {
    ExperimentSettings {
        environment,
        time_scale: TimeScale::new(k),
        drain_cap,
        late_threshold,
        sample_every: Duration::from_secs(1),
        progress: false,
        idempotency: None,
    }
}
