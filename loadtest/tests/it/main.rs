//! loadtest's integration tests, one binary: the embedded pipeline under load, the quick experiments end to
//! end (compare, autoscale, outage), idempotency keys through a run and its results, and `infra` against moto server.

mod autoscale;
mod compare;
mod dashboard;
mod dlq;
mod helpers;
mod idempotency;
mod infra;
mod outage;
mod pipeline;
mod report_browser;
