//! `outage`: the flash sale with the payment gateway down for a window, with the worker's circuit breaker and
//! without it, side by side (see [`crate::outage`]); printed by [`crate::render::outage::text`].

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use crate::cli::OutageArgs;
use crate::commands::autoscale::flash_sale;
use crate::experiment::{Environment, ExperimentSettings};
use crate::outage::{OutageSettings, outage_experiment};
use crate::pipeline::PipelineConfig;
use crate::results::ResultsDocument;

/// The sale's length with --quick, lab time: long enough to be under way when the gateway goes down at 10 s.
const QUICK_SALE: std::time::Duration = std::time::Duration::from_secs(20);

/// The command line's `outage`: checks the flags, runs both variants, returns the document.
pub(crate) async fn execute(
    args: &OutageArgs,
    progress: bool,
    stop: &CancellationToken,
) -> anyhow::Result<ResultsDocument> {
    if args.target.is_some() {
        bail!(
            "outage switches the payment gateway of the embedded pipeline off and on, which a deployed stack \
             does not let a load tool do: drop --target"
        );
    }
    let outage = args.settings();
    let environment = Environment::Embedded(PipelineConfig {
        consumers: outage.consumers,
        payment: args.payment.clone(),
        ..PipelineConfig::default()
    });
    let scale = super::time_scale(args.time_scale, args.quick, &environment)?;
    let settings = super::settings(environment, scale, &args.load, progress);
    let duration = args.duration.or(args.quick.then_some(QUICK_SALE));
    let load = flash_sale(args.load.max_connections, args.rate.map(|rate| rate.0), duration);
    let (runs, report) = outage_experiment(&settings, &outage, &load, stop).await?;
    let mut document = ResultsDocument::new("outage", "embedded", scale.factor());
    document.notes = notes(&settings, &outage);
    document.runs = runs;
    document.outage = Some(report);
    Ok(document)
}

/// What a reader must know to read the figures.
fn notes(settings: &ExperimentSettings, outage: &OutageSettings) -> Vec<String> {
    let k = settings.time_scale.factor();
    let breaker = worker::BreakerConfig::default();
    let mut notes = vec![format!(
        "Embedded pipeline, {} consumers, the payment gateway down from {} s to {} s of the sale (lab time). \
         Each variant runs on a fresh pipeline: the worker's circuit breaker on (failure rate ≥ {:.0} % over {} \
         payments, at least {}; {} s first wait, doubling up to {} s; {} probes), then off. The queue allows {} \
         receives before the dead-letter queue.",
        outage.consumers,
        outage.starts_after.as_secs(),
        (outage.starts_after + outage.lasts).as_secs(),
        breaker.failure_rate * 100.0,
        breaker.window,
        breaker.minimum_calls,
        breaker.open_wait.as_secs(),
        breaker.max_open_wait.as_secs(),
        breaker.probes,
        bus::QueueSettings::default().max_receive_count,
    )];
    if k > 1.0 {
        notes.push(format!(
            "Time-scaled run, K = {k}: payments, visibility timeouts, retry backoffs and the breaker's waits run \
             {k}× faster; every time below is lab time (measured × {k})."
        ));
    }
    if let Some(every) = outage.crash_every {
        notes.push(format!(
            "The worker crashes (is aborted, then replaced) every {} s of lab time.",
            every.as_secs()
        ));
    }
    if outage.poison_share > 0.0 {
        notes.push(format!(
            "Poison messages ({:.1} % of the orders) go straight into the queue; they belong in the dead-letter \
             queue and are counted apart from orders.",
            outage.poison_share * 100.0
        ));
    }
    notes.push(
        "Lost = accepted orders neither settled nor in the dead-letter queue at the end; charged twice = orders \
         the ledger saw charged more than once. Both must be 0. The run without the breaker ends with a redrive \
         of its dead-letter queue."
            .to_owned(),
    );
    notes
}
