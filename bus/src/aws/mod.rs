//! The port over real SNS and SQS, through the official AWS SDK for Rust.
//!
//! - [`AwsPublisher`] publishes to an SNS topic (PublishBatch for batches, Publish when alone).
//! - [`AwsConsumer`] consumes an SQS queue (long-polling ReceiveMessage, batch delete and visibility changes,
//!   SendMessage to the dead-letter queue, GetQueueAttributes for depth).
//! - [`AwsDeadLetters`] peeks at the dead-letter queue and redrives it (SQS's move task, or receive → send →
//!   delete where that is unavailable).
//! - [`provision`] creates the same topic, queues, policies and subscription as `terraform/`, against any
//!   SNS/SQS endpoint (moto, LocalStack, or AWS itself).
//!
//! Configuration is the SDK's standard chain ([`config_from_env`]): credentials, region, and the endpoint
//! override `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_SNS` / `AWS_ENDPOINT_URL_SQS`), so the same binaries run
//! against AWS, LocalStack or moto without a custom flag.
//!
//! Retries: the SDK retries a whole call that fails with throttling, a 5xx or a timeout (its standard retry
//! mode, three attempts) before an error reaches the caller. Entries of a batch call that fail on their own
//! are sent once and reported per entry; sending them again is the caller's decision (the worker's and the
//! receiver's batchers do it, the same way over the embedded bus).
//!
//! Local emulators are laxer than AWS (moto accepts 11-entry batches, empty bodies and oversized batches), so
//! this adapter checks AWS's limits itself before calling: a program that works here also works on AWS.

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_sqs::config::Credentials;

pub use aws_config::SdkConfig;

mod batch;
mod consumer;
mod dead_letters;
mod error;
pub mod provision;
mod publisher;
#[cfg(test)]
mod scripted_endpoint;

pub use consumer::AwsConsumer;
pub use dead_letters::AwsDeadLetters;
pub use publisher::AwsPublisher;

/// Loads the SDK configuration the standard way: environment, shared config files, container or instance
/// credentials, and the `AWS_ENDPOINT_URL*` overrides. This is what the deployed services use.
pub async fn config_from_env() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// Region used with a local emulator when none is configured; emulators accept any region.
const EMULATOR_DEFAULT_REGION: &str = "us-east-1";

/// Configuration for a local emulator (moto, LocalStack) at `endpoint_url`: static dummy credentials (emulators
/// accept any), the configured region or `us-east-1`. Never use it against AWS itself.
pub async fn config_for_emulator(endpoint_url: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint_url)
        .region(RegionProviderChain::default_provider().or_else(EMULATOR_DEFAULT_REGION))
        .credentials_provider(Credentials::new("test", "test", None, None, "orderflow-emulator"))
        .load()
        .await
}
