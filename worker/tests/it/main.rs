//! The worker's integration tests, in one test binary (one link, one process): faults, the circuit breaker, the order ledger,
//! and the HTTP port and binary.

mod breaker;
mod common;
mod faults;
mod http;
mod ledger;
