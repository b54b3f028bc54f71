//! One load, open or closed, behind one type: what a caller chooses, runs and reads back.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::client::{RequestSpec, Target};
use crate::closed_model::{self, ClosedLoad, ClosedRun};
use crate::open_model::{self, OpenLoad, OpenRun};
use crate::recorder::Recorder;

/// The two ways of applying load.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadModel {
    /// Constant arrival rate (see [`crate::open_model`]).
    Open(OpenLoad),
    /// Locust-style users (see [`crate::closed_model`]).
    Closed(ClosedLoad),
}

/// What the model did, beyond what the recorder measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadEnd {
    /// How an open-model load ended.
    Open(OpenRun),
    /// How a closed-model load ended.
    Closed(ClosedRun),
}

impl LoadModel {
    /// How long the load is planned to run.
    pub fn duration(&self) -> Duration {
        match self {
            LoadModel::Open(load) => load.duration,
            LoadModel::Closed(load) => load.duration,
        }
    }

    /// Applies the load to `target` until its end (or until `stop` is cancelled), recording into `recorder`.
    /// `active_users` tracks the closed model's running users (it stays 0 for the open model).
    pub async fn run(
        &self,
        target: &Target,
        spec: &RequestSpec,
        recorder: Arc<Recorder>,
        active_users: Arc<AtomicUsize>,
        stop: CancellationToken,
    ) -> LoadEnd {
        match self {
            LoadModel::Open(load) => LoadEnd::Open(open_model::run(load, target, spec, recorder, stop).await),
            LoadModel::Closed(load) => {
                LoadEnd::Closed(closed_model::run(load, target, spec, recorder, active_users, stop).await)
            }
        }
    }
}
