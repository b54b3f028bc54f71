//! The worker's integration tests, in one test binary (one link, one process): faults, the order ledger,
//! and the HTTP port and binary.

mod common;
mod faults;
mod http;
mod ledger;
