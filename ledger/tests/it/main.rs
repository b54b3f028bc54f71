//! The ledger crate's integration tests, in one test binary (one link, one process): the embedded adapter's
//! rules and model, and the DynamoDB adapter against moto server.

mod dynamodb_moto;
mod embedded_keys;
mod embedded_model;
mod embedded_registry;
