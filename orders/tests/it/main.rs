//! The orders crate's integration tests, in one test binary (one link, one process).

mod payment_gate;
