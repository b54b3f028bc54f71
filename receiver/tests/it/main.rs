//! The receiver's integration tests, in one test binary (one link, one process): the HTTP API over real
//! sockets, and the binary itself.

mod async_orders;
mod bad_input;
mod binary;
mod common;
mod idempotency;
mod metrics;
mod order_eta;
mod order_ledger;
mod request_ids;
mod slow_clients;
mod sync_orders;
