//! `autoscale`: scaling the worker fleet on backlog per task (Terraform's policy) against scaling it on CPU,
//! simulated on the embedded stack under the flash sale. For each policy: task count and backlog over time,
//! peak backlog, drain time, the oldest message's age and task-minutes, with the Terraform variables the
//! settings correspond to; printed by [`crate::render::autoscale::text`].

use std::time::Duration;

use anyhow::bail;
use loadgen::LoadModel;
use tokio_util::sync::CancellationToken;

use crate::autoscaling::fleet::simulate;
use crate::autoscaling::policy::backlog_per_task_target;
use crate::autoscaling::{AutoscaleSettings, PolicyKind};
use crate::cli::AutoscaleArgs;
use crate::experiment::{Environment, ExperimentSettings};
use crate::pipeline::PipelineConfig;
use crate::results::{AutoscaleReport, AutoscaleSettingsReport, ResultsDocument, TerraformVariable};
use crate::scenario::{describe_retry_policy, lab_scenarios};

/// The command line's `autoscale`: checks the flags, runs both policies, returns the document.
pub(crate) async fn execute(
    args: &AutoscaleArgs,
    progress: bool,
    stop: &CancellationToken,
) -> anyhow::Result<ResultsDocument> {
    if args.target.is_some() {
        bail!(
            "autoscale simulates the worker fleet in this process on the embedded stack, and cannot drive a \
             deployed stack (whose scaling AWS does): drop --target"
        );
    }
    let autoscale = args.settings();
    if let Err(problem) = autoscale.validate() {
        bail!("{problem}");
    }
    let environment = Environment::Embedded(PipelineConfig {
        consumers: autoscale.consumers_per_task,
        payment: args.payment.clone(),
        ..PipelineConfig::default()
    });
    let scale = super::time_scale(args.time_scale, args.quick, &environment)?;
    let settings = super::settings(environment, scale, &args.load, progress);
    let load = flash_sale(args.load.max_connections, args.rate.map(|rate| rate.0), args.duration);
    Ok(autoscale_policies(&settings, &autoscale, &load, args.quick, stop).await?)
}

/// The load: the lab's open-model flash sale (60 orders/s for 60 s), with its rate and length replaced when
/// given. Lab time.
pub fn flash_sale(max_connections: usize, rate: Option<f64>, duration: Option<Duration>) -> LoadModel {
    let flash = lab_scenarios(max_connections, false)
        .into_iter()
        .find(|scenario| scenario.name == "flash-sale-open")
        .expect("a lab scenario");
    match flash.load {
        LoadModel::Open(load) => LoadModel::Open(loadgen::open_model::OpenLoad {
            rate: rate.unwrap_or(load.rate),
            duration: duration.unwrap_or(load.duration),
            ..load
        }),
        closed => closed,
    }
}

/// Runs `lab_load` once per policy on a fresh embedded pipeline whose fleet scales under it, and returns the
/// results document (a run and a policy result each, and the Terraform variables).
pub async fn autoscale_policies(
    settings: &ExperimentSettings,
    autoscale: &AutoscaleSettings,
    lab_load: &LoadModel,
    quick: bool,
    stop: &CancellationToken,
) -> std::io::Result<ResultsDocument> {
    let Environment::Embedded(lab) = &settings.environment else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "autoscale simulates the fleet on the embedded stack only",
        ));
    };
    let payment_latency = lab.payment.latency;
    let mut document = ResultsDocument::new("autoscale", "embedded", settings.time_scale.factor());
    document.idempotency_keys = settings.idempotency.is_some();
    document.notes = notes(settings, autoscale, payment_latency, lab_load, quick);
    let mut policies = Vec::new();
    for kind in PolicyKind::ALL {
        if stop.is_cancelled() {
            break;
        }
        let run = simulate(settings, autoscale, kind, lab_load, stop).await?;
        document.runs.push(run.result);
        policies.push(run.policy);
    }
    document.autoscale = Some(AutoscaleReport {
        settings: settings_report(autoscale, payment_latency),
        terraform: terraform_variables(autoscale, payment_latency),
        policies,
    });
    Ok(document)
}

/// The `terraform/variables.tf` variables that reproduce these settings in the deployed stack (with
/// `worker_autoscaling_enabled = true`, its default).
pub fn terraform_variables(
    settings: &AutoscaleSettings,
    payment_latency: Duration,
) -> Vec<TerraformVariable> {
    [
        ("worker_consumers", settings.consumers_per_task as f64),
        ("payment_latency_seconds", payment_latency.as_secs_f64()),
        ("acceptable_latency_seconds", settings.acceptable_latency.as_secs_f64()),
        ("worker_min_count", settings.min_tasks as f64),
        ("worker_max_count", settings.max_tasks as f64),
        ("scale_out_cooldown_seconds", settings.scale_out_cooldown.as_secs_f64()),
        ("scale_in_cooldown_seconds", settings.scale_in_cooldown.as_secs_f64()),
    ]
    .into_iter()
    .map(|(name, value)| TerraformVariable { name: name.to_owned(), value })
    .collect()
}

fn settings_report(settings: &AutoscaleSettings, payment_latency: Duration) -> AutoscaleSettingsReport {
    AutoscaleSettingsReport {
        consumers_per_task: settings.consumers_per_task,
        payment_latency_s: payment_latency.as_secs_f64(),
        min_tasks: settings.min_tasks,
        max_tasks: settings.max_tasks,
        acceptable_latency_s: settings.acceptable_latency.as_secs_f64(),
        backlog_per_task_target: backlog_per_task_target(settings, payment_latency),
        cpu_target_percent: settings.cpu_target_percent,
        scale_out_cooldown_s: settings.scale_out_cooldown.as_secs_f64(),
        scale_in_cooldown_s: settings.scale_in_cooldown.as_secs_f64(),
        metric_period_s: settings.metric_period.as_secs_f64(),
        metric_delay_s: settings.metric_delay.as_secs_f64(),
        scale_out_datapoints: settings.scale_out_datapoints,
        scale_in_datapoints: settings.scale_in_datapoints,
        startup_delay_s: settings.startup_delay.as_secs_f64(),
        after_drain_s: settings.after_drain.as_secs_f64(),
    }
}

/// What a reader must know to read the figures.
fn notes(
    settings: &ExperimentSettings,
    autoscale: &AutoscaleSettings,
    payment_latency: Duration,
    lab_load: &LoadModel,
    quick: bool,
) -> Vec<String> {
    let k = settings.time_scale.factor();
    let mut notes = vec![format!(
        "Embedded stack in one process: the receiver, the embedded SNS→SQS and ledger, and a fleet of {} to {} \
         worker tasks of {} consumers each (the first task is the pipeline's worker), {} ms payments. Load: {} \
         orders/s for {} s against /orders/async (lab time).",
        autoscale.min_tasks,
        autoscale.max_tasks,
        autoscale.consumers_per_task,
        payment_latency.as_millis(),
        match lab_load {
            LoadModel::Open(load) => load.rate,
            LoadModel::Closed(_) => f64::NAN,
        },
        lab_load.duration().as_secs_f64(),
    )];
    if k > 1.0 {
        notes.push(format!(
            "Time-scaled run, K = {k}: every lab duration (payments, metric period and delay, start-up, cooldowns) \
             is divided by {k} and rates multiplied by {k}. The fleet's figures (minutes, task-minutes, ages) are \
             converted back to lab time; the runs' tables are on the run's clock."
        ));
    }
    notes.push(
        "Each policy sees one datapoint a metric period, late by the metric delay; backlog per task is visible \
         orders ÷ running tasks (Terraform's metric math), and a task's CPU is modelled as its busy consumers ÷ \
         its consumers, since the worker's CPU follows its processing. Task-minutes count starting, running and \
         stopping tasks until the watch ends."
            .to_owned(),
    );
    if quick {
        notes.push(format!(
            "Quick preset: the watch ends {} lab seconds after the drain (late scale-outs land, the scale-in is \
             not waited for), so task-minutes stop short of the scale-in.",
            autoscale.after_drain.as_secs_f64()
        ));
    }
    if let Some(policy) = settings.idempotency {
        notes.push(format!("Idempotency keys: {}.", describe_retry_policy(&policy, settings.time_scale)));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terraform_variables_are_terraforms_names_and_defaults() {
        let payment_latency = orders::PaymentConfig::default().latency;
        let variables = terraform_variables(&AutoscaleSettings::default(), payment_latency);
        let terraform = include_str!("../../../terraform/variables.tf");
        for variable in &variables {
            let declared = format!("variable \"{}\" {{", variable.name);
            let at = terraform.find(&declared).unwrap_or_else(|| panic!("{declared} not in variables.tf"));
            let block = &terraform[at..];
            let default =
                block.lines().find(|line| line.trim_start().starts_with("default")).expect("a default");
            let value: f64 = default.split('=').nth(1).unwrap().trim().parse().unwrap();
            assert_eq!(value, variable.value, "{} mirrors terraform/variables.tf", variable.name);
        }
        assert_eq!(variables.len(), 7);
    }

    #[test]
    fn the_load_is_the_flash_sale_unless_told() {
        let LoadModel::Open(sale) = flash_sale(64, None, None) else { panic!("open model") };
        assert_eq!((sale.rate, sale.duration, sale.max_connections), (60.0, Duration::from_secs(60), 64));
        let LoadModel::Open(custom) = flash_sale(64, Some(12.0), Some(Duration::from_secs(30))) else {
            panic!("open model")
        };
        assert_eq!((custom.rate, custom.duration), (12.0, Duration::from_secs(30)));
    }
}
