//! The embedded broker: an in-process SNS topic fanning out to in-process SQS-like queues.
//!
//! It exists so the whole pipeline runs (and is tested) on one machine with the semantics that matter in
//! production: at-least-once delivery, visibility timeouts, receipt handles that go stale on redelivery, receive
//! counts, redrive to a dead-letter queue, long polling, retention, and SNS/SQS size and batch limits. All
//! timing runs on tokio time, so tests can `tokio::time::pause()` and skip through visibility timeouts.
//!
//! - [`EmbeddedTopic`] implements [`Publisher`](crate::Publisher): SNS `Publish` / `PublishBatch`.
//! - [`EmbeddedQueue`] implements [`Consumer`](crate::Consumer): SQS `ReceiveMessage`, `DeleteMessageBatch`,
//!   `ChangeMessageVisibilityBatch`, plus a synchronous [`EmbeddedQueue::send`] (SQS `SendMessage`).
//! - [`EmbeddedStack`] wires them the way `terraform/` does: topic -> raw subscription -> queue -> DLQ.
//!
//! Both handles are cheap to clone (an `Arc` inside) and can fail on demand ([`EmbeddedQueue::inject_failure`],
//! [`EmbeddedTopic::inject_failure`]) so other crates can test their behaviour under broker errors.

mod queue;
mod topic;

pub use queue::{EmbeddedQueue, QueueConfig, Redrive};

use crate::QueueSettings;
pub use topic::{Delivery, EmbeddedTopic};

/// The topic's name in an [`EmbeddedStack`], as `terraform/` names it.
pub const STACK_TOPIC_NAME: &str = "orders";
/// The queue's name in an [`EmbeddedStack`], as `terraform/` names it.
pub const STACK_QUEUE_NAME: &str = "orders";
/// The dead-letter queue's name in an [`EmbeddedStack`], as `terraform/` names it.
pub const STACK_DEAD_LETTER_NAME: &str = "orders-dlq";

/// Settings of an [`EmbeddedStack`]: the production queue settings, [`QueueSettings`].
pub type StackConfig = QueueSettings;

/// Exactly what `terraform/` builds: a topic, a raw subscription to the orders queue, and redrive from that
/// queue to a dead-letter queue after `max_receive_count` receives.
#[derive(Debug, Clone)]
pub struct EmbeddedStack {
    /// The topic the receiver publishes accepted orders to.
    pub topic: EmbeddedTopic,
    /// The queue the workers consume.
    pub queue: EmbeddedQueue,
    /// Where messages go after too many receives, or when a consumer declares them poison.
    pub dead_letter: EmbeddedQueue,
}

impl EmbeddedStack {
    /// Builds the topic, the queue with its redrive policy, the dead-letter queue, and the raw subscription.
    ///
    /// # Panics
    /// If `config` is outside what SQS accepts (see [`EmbeddedQueue::new`]).
    pub fn new(config: StackConfig) -> Self {
        let dead_letter = EmbeddedQueue::new(
            STACK_DEAD_LETTER_NAME,
            QueueConfig {
                visibility_timeout: config.visibility_timeout,
                retention: config.dead_letter_retention,
                redrive: None,
            },
        );
        let queue = EmbeddedQueue::new(
            STACK_QUEUE_NAME,
            QueueConfig {
                visibility_timeout: config.visibility_timeout,
                retention: config.retention,
                redrive: Some(Redrive {
                    dead_letter: dead_letter.clone(),
                    max_receive_count: config.max_receive_count,
                }),
            },
        );
        let topic = EmbeddedTopic::new(STACK_TOPIC_NAME);
        topic.subscribe(&queue, Delivery::Raw);
        Self { topic, queue, dead_letter }
    }
}
