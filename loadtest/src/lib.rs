//! loadtest: a load generator worth using, and the sync-vs-async order-pipeline experiment built on it.
//!
//! - [`open_model`]: constant arrival rate, latency from each request's *intended* send time (no coordinated
//!   omission), late sends counted; [`closed_model`]: Locust-style users with spawn rate and wait range.
//! - [`client`]: keep-alive HTTP/1.1 connections on hyper, one per lane, so the generator is never the
//!   bottleneck.
//! - [`recorder`]: HDR histograms and per-interval timelines; [`outcome`]: failure classes;
//!   [`idempotency`]: `Idempotency-Key` on every order and retries with the same key, when asked.
//! - [`runner`]: one run with its sampler, queue/worker probes ([`probe`]), progress bar ([`progress`]) and
//!   drain watch; [`results`]: the JSON schema (documented in `loadtest/RESULTS.md`) and CSV timelines;
//!   [`report`]: the offline HTML report with SVG charts.
//! - [`pipeline`]: the whole order pipeline in one process on the embedded bus (receiver, SNS → SQS, worker);
//!   [`scenario`]: the original lab's scenarios and the time scale; [`experiment`]: one run on a fresh pipeline
//!   or a deployed stack; [`compare`] and [`scale`]: the two experiments; [`cli`]: the command line.

pub mod cli;
pub mod client;
pub mod closed_model;
pub mod compare;
pub mod experiment;
pub mod idempotency;
pub mod open_model;
pub mod outcome;
pub mod pipeline;
pub mod probe;
pub mod progress;
pub mod recorder;
pub mod report;
pub mod results;
pub mod runner;
pub mod scale;
pub mod scenario;
