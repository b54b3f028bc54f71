//! loadtest's integration tests, one binary: the embedded pipeline under load, the quick experiment end to
//! end, idempotency keys through a run and its results, and `infra` against moto server.

mod compare;
mod helpers;
mod idempotency;
mod infra;
mod pipeline;
