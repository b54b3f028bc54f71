//! The worker service's autoscaling, simulated on the embedded stack: a fleet of real workers (tasks of
//! `consumers` slots each) on one embedded queue and ledger, started after a start-up delay and stopped
//! gracefully on scale-in, under a target-tracking policy that sees the queue's metric once a period and late.
//!
//! - [`policy`]: the decision alone (datapoints in, desired task count out), Terraform's defaults and target
//!   formula; pure, tested with hand-worked tables.
//! - [`fleet`]: the simulation: the tasks, the metric's sampling and delay, the timeline and the figures of
//!   one policy's run.

pub mod fleet;
pub mod policy;

pub use policy::{AutoscaleSettings, PolicyKind, TargetTracking};
