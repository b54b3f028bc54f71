//! Every answer names its request (`x-request-id`, the client's own when it sent a sane one), and error bodies
//! carry plain words only: a broker's text, which can name accounts and roles, goes to the log.

use std::sync::Arc;

use async_trait::async_trait;
use bus::embedded::{EmbeddedStack, StackConfig};
use bus::{BusError, EntryResult, MessageId, OutgoingMessage, Publisher};
use orders::OrderStatus;
use receiver::Config;

use crate::common::{Answer, TestServer, client, eventually, order};

/// What AWS says when a role may not publish: an account id and a role ARN in the message.
const AWS_REFUSAL: &str = "User: arn:aws:sts::123456789012:assumed-role/orderflow-receiver-task/abc is not authorized to perform: \
     SNS:Publish on resource: arn:aws:sns:us-east-1:123456789012:orderflow-orders";

/// A broker that refuses every publish with [`AWS_REFUSAL`].
struct RefusingBroker;

#[async_trait]
impl Publisher for RefusingBroker {
    async fn publish(&self, _message: OutgoingMessage) -> Result<MessageId, BusError> {
        Err(BusError::Fatal { code: "AuthorizationError".into(), message: AWS_REFUSAL.into() })
    }

    async fn publish_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<MessageId>>, BusError> {
        Ok(messages
            .iter()
            .map(|_| Err(BusError::Fatal { code: "AuthorizationError".into(), message: AWS_REFUSAL.into() }))
            .collect())
    }
}

#[tokio::test]
async fn every_answer_names_its_request_and_keeps_a_sane_client_id() {
    let stack = EmbeddedStack::new(StackConfig::default());
    let server = TestServer::start(Config::default(), Arc::new(stack.topic)).await;
    let client = client();
    let send = |request_id: Option<&str>, path: &str| {
        let mut request = client.get(server.url(path));
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };

    let fresh = Answer::read(send(None, "/health").await.unwrap()).await;
    let other = Answer::read(send(None, "/no/such/path").await.unwrap()).await;
    assert_eq!(other.status, 404);
    assert!(fresh.request_id.parse::<uuid::Uuid>().is_ok(), "a fresh UUID: {}", fresh.request_id);
    assert_ne!(fresh.request_id, other.request_id, "one id per request");

    let kept = Answer::read(send(Some("checkout-7f3a"), "/health").await.unwrap()).await;
    assert_eq!(kept.request_id, "checkout-7f3a", "the client's own id is kept");
    let too_long = "x".repeat(129);
    let replaced = Answer::read(send(Some(&too_long), "/health").await.unwrap()).await;
    assert!(replaced.request_id.parse::<uuid::Uuid>().is_ok(), "an over-long id is replaced");
    let spaced = Answer::read(send(Some("two words"), "/health").await.unwrap()).await;
    assert!(spaced.request_id.parse::<uuid::Uuid>().is_ok(), "a non-printable id is replaced");
}

#[tokio::test]
async fn a_brokers_own_words_never_reach_the_client() {
    let server = TestServer::start(Config::default(), Arc::new(RefusingBroker)).await;
    let answer = server.post_order(&client(), "/orders/async", &order(1)).await;
    assert_eq!(answer.status, 503, "{}", answer.json);
    assert_eq!(answer.error_code(), "bus_unavailable");
    let body = answer.json.to_string();
    for secret in ["123456789012", "arn:", "assumed-role", "AuthorizationError"] {
        assert!(!body.contains(secret), "the body leaks {secret:?}: {body}");
    }

    // Nor does the order's record, which GET /orders/{id} shows its client.
    let failed =
        || server.ledger.records().first().is_some_and(|record| record.status == OrderStatus::Failed);
    eventually("the record is marked failed", 2000, failed).await;
    let record = server.get(&client(), &format!("/orders/{}", server.ledger.records()[0].order_id)).await;
    let last_error = record.json["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(last_error.contains("publish to the bus failed"), "{last_error}");
    for secret in ["123456789012", "arn:", "assumed-role", "AuthorizationError"] {
        assert!(!last_error.contains(secret), "the record leaks {secret:?}: {last_error}");
    }
}
