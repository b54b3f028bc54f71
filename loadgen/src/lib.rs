//! loadgen: an HTTP load generator that is never the bottleneck and never hides a slow server's latency.
//!
//! - [`open_model`]: constant arrival rate, latency from each request's *intended* send time (no coordinated
//!   omission), late sends counted; [`closed_model`]: Locust-style users with spawn rate and wait range;
//!   [`LoadModel`] is either, run with [`LoadModel::run`].
//! - [`client`]: keep-alive HTTP/1.1 connections on hyper, one per lane, and the requests sent on them.
//! - [`idempotency`]: an `Idempotency-Key` on every request and retries with the same key, when asked.
//! - [`recorder`]: HDR histograms, sharded so that many lanes record at once, taken interval by interval;
//!   [`outcome`]: the failure classes.
//!
//! It is a crate of its own, apart from the `loadtest` tool and its experiment, so that anything measuring an
//! HTTP service (the receiver's benchmark, the load tool) shares one generator: it knows HTTP and nothing of
//! orders, queues or the pipeline, and depends on none of the services it loads.

pub mod client;
pub mod closed_model;
pub mod idempotency;
mod load;
pub mod open_model;
pub mod outcome;
pub mod recorder;

pub use load::{LoadEnd, LoadModel};
