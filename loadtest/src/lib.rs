//! loadtest: the sync-vs-async order-pipeline experiment, and the command-line load tool around it. The load
//! itself comes from the `loadgen` crate (open and closed models, keep-alive connections, HDR histograms).
//!
//! - [`runner`]: one run with its sampler, queue/worker probes ([`probe`]), progress bar ([`progress`]) and
//!   drain watch; [`results`]: the JSON schema (documented in `loadtest/RESULTS.md`).
//! - [`render`]: the results as terminal text, the offline HTML report with SVG charts, and CSV timelines.
//! - [`pipeline`]: the whole order pipeline in one process on the embedded bus (receiver, SNS → SQS, worker);
//!   [`scenario`]: the original lab's scenarios and the time scale; [`experiment`]: one run on a fresh pipeline
//!   or a deployed stack.
//! - [`commands`]: `up`, `run`, `compare` and `scale` (the two experiments), `infra`; [`cli`]: the command
//!   line and its dispatch.
//! - [`outage`]: the payment-gateway outage experiment (circuit breaker on and off, crashes, poison), for
//!   `outage`.
//! - [`autoscaling`]: the worker fleet's autoscaling (backlog per task vs CPU) simulated on the embedded
//!   stack, for `autoscale`.
//! - [`dashboard`]: the live web page of the pipeline (Server-Sent Events on loopback), which `up`, `run`,
//!   `compare`, `scale`, `outage` and `autoscale` start, and `dashboard` serves for a deployed stack.

pub mod autoscaling;
pub mod cli;
pub mod commands;
pub mod dashboard;
pub mod experiment;
pub mod outage;
pub mod pipeline;
pub mod probe;
pub mod progress;
pub mod render;
pub mod results;
pub mod runner;
pub mod scenario;
