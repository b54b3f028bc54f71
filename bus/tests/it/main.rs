//! The bus crate's integration tests, in one test binary (one link, one process): the embedded adapter's
//! SQS/SNS semantics and the aws adapter against moto server.

mod aws_moto;
mod embedded_dead_letters;
mod embedded_long_poll;
mod embedded_model;
mod embedded_queue;
mod embedded_topic;
