//! The generator's integration tests, one binary: models measured against loopback servers with known
//! behaviour (bound to port 0).

mod closed_model;
mod helpers;
mod open_model;
