//! [`DeadLetters`] over SQS: peek by receiving, redrive with SQS's move task, or by copying where the move
//! task is not available (local emulators: moto 5 answers `StartMessageMoveTask` with a bare HTTP 500, no
//! error code, because it does not implement it).

use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use tokio::time::Instant;

use super::AwsConsumer;
use super::batch::{EntryAnswers, match_entries};
use super::consumer::{failed_entry, sqs_attributes};
use super::error::{Call, from_sdk_error};
use crate::dead_letters::{Progress, peek, redrive_by_copy};
use crate::{
    BusError, DeadLetter, DeadLetters, EntryResult, MessageId, OutgoingMessage, Publisher, RedriveEvent,
    RedriveMethod, RedriveOptions, RedriveReport, check_batch_size, check_message,
};

/// How long each receive of a peek waits: SQS's short polls sample a subset of its servers and may answer
/// empty while messages are there; one second of long poll sees them all.
const PEEK_WAIT: Duration = Duration::from_secs(1);

/// An SQS queue and its dead-letter queue.
///
/// Needs, on the dead-letter queue: `sqs:ReceiveMessage`, `sqs:ChangeMessageVisibility`,
/// `sqs:DeleteMessage`, `sqs:GetQueueAttributes`, `sqs:StartMessageMoveTask`, `sqs:ListMessageMoveTasks`; on
/// the source queue: `sqs:SendMessage` and `sqs:GetQueueAttributes`.
#[derive(Debug, Clone)]
pub struct AwsDeadLetters {
    /// The dead-letter queue, consumed (its client serves every call).
    dead_letter: AwsConsumer,
    queue_url: String,
}

impl AwsDeadLetters {
    /// The source queue `queue_url` and its dead-letter queue `dead_letter_url`, with `config` (see
    /// [`super::config_from_env`]).
    pub fn new(config: &SdkConfig, queue_url: impl Into<String>, dead_letter_url: impl Into<String>) -> Self {
        Self { dead_letter: AwsConsumer::new(config, dead_letter_url), queue_url: queue_url.into() }
    }

    fn client(&self) -> &aws_sdk_sqs::Client {
        self.dead_letter.client()
    }

    async fn queue_arn(&self, queue_url: &str) -> Result<String, BusError> {
        let output = self
            .client()
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|error| from_sdk_error(error, Call::new("sqs:GetQueueAttributes", queue_url)))?;
        output.attributes().and_then(|all| all.get(&QueueAttributeName::QueueArn)).cloned().ok_or_else(|| {
            BusError::IncompleteResponse(format!("GetQueueAttributes on {queue_url} answered no QueueArn"))
        })
    }

    /// Starts a move task from the dead-letter queue to the source queue (named explicitly: SQS's default,
    /// "the original source", does not exist for messages a consumer sent to the dead-letter queue itself).
    async fn start_move_task(&self, source_arn: &str, destination_arn: &str) -> MoveTaskStart {
        let answer = self
            .client()
            .start_message_move_task()
            .source_arn(source_arn)
            .destination_arn(destination_arn)
            .send()
            .await;
        interpret_start(answer.map(|output| output.task_handle().map(str::to_owned)), source_arn)
    }

    /// Watches the most recent move task of `source_arn` (SQS runs one at a time per queue: ours) until it
    /// completes or fails.
    async fn watch_move_task(
        &self,
        source_arn: &str,
        options: &RedriveOptions,
        progress: Progress<'_>,
    ) -> Result<u64, BusError> {
        let call = Call::new("sqs:ListMessageMoveTasks", source_arn);
        loop {
            tokio::time::sleep(options.poll_interval).await;
            let output = self
                .client()
                .list_message_move_tasks()
                .source_arn(source_arn)
                .max_results(1)
                .send()
                .await
                .map_err(|error| from_sdk_error(error, call))?;
            let Some(task) = output.results().first() else { continue };
            let status = task.status().unwrap_or("UNKNOWN").to_owned();
            let moved = u64::try_from(task.approximate_number_of_messages_moved()).unwrap_or(0);
            let to_move = task.approximate_number_of_messages_to_move().and_then(|n| u64::try_from(n).ok());
            progress(&RedriveEvent::MoveTask { status: status.clone(), moved, to_move });
            match status.as_str() {
                "COMPLETED" => return Ok(moved),
                "FAILED" | "CANCELLED" => {
                    return Err(BusError::Fatal {
                        code: format!("MoveTask{}", if status == "FAILED" { "Failed" } else { "Cancelled" }),
                        message: format!(
                            "the move task from {source_arn} stopped {status} after {moved} messages: {}",
                            task.failure_reason().unwrap_or("no reason given")
                        ),
                    });
                }
                _ => {}
            }
        }
    }
}

#[async_trait]
impl DeadLetters for AwsDeadLetters {
    /// Receives with the dead-letter queue's own visibility timeout, then sets each listed message's
    /// visibility to zero so it is visible again at once (see [`crate::dead_letters`]).
    async fn list(&self, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        peek(&self.dead_letter, max, PEEK_WAIT).await
    }

    /// SQS's move task unless `options.force_fallback`, or unless the endpoint does not support it (then the
    /// copy, with a [`RedriveEvent::FallingBack`] saying why).
    async fn redrive(
        &self,
        options: &RedriveOptions,
        progress: Progress<'_>,
    ) -> Result<RedriveReport, BusError> {
        let started = Instant::now();
        let sender = SendToQueue { client: self.client().clone(), queue_url: self.queue_url.clone() };
        if options.force_fallback {
            progress(&RedriveEvent::FallingBack { why: "asked for".into() });
            return redrive_by_copy(&self.dead_letter, &sender, options, progress).await;
        }
        let dead_letter_arn = self.queue_arn(self.dead_letter.queue_url()).await?;
        let queue_arn = self.queue_arn(&self.queue_url).await?;
        match self.start_move_task(&dead_letter_arn, &queue_arn).await {
            MoveTaskStart::Started { task_handle } => {
                tracing::info!(%task_handle, "SQS move task started");
                let moved = self.watch_move_task(&dead_letter_arn, options, progress).await?;
                Ok(RedriveReport {
                    method: RedriveMethod::MoveTask,
                    moved,
                    delete_failures: 0,
                    left_behind: 0,
                    duration_seconds: started.elapsed().as_secs_f64(),
                })
            }
            MoveTaskStart::Unsupported { why } => {
                progress(&RedriveEvent::FallingBack { why });
                redrive_by_copy(&self.dead_letter, &sender, options, progress).await
            }
            MoveTaskStart::Failed(error) => Err(error),
        }
    }
}

/// What a `StartMessageMoveTask` call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MoveTaskStart {
    /// The task runs; SQS's handle for it.
    Started {
        /// `TaskHandle` (empty if SQS left it out).
        task_handle: String,
    },
    /// The endpoint does not implement move tasks: copy instead.
    Unsupported {
        /// What the endpoint answered.
        why: String,
    },
    /// A real refusal (access denied, the source is not a dead-letter queue, a task already running): copying
    /// would not be the right answer either, so it is reported.
    Failed(BusError),
}

/// Error codes by which an endpoint says it does not know an operation.
const UNSUPPORTED_CODES: &[&str] =
    &["UnsupportedOperation", "InvalidAction", "NotImplemented", "UnknownOperationException"];

/// Decides between the move task and the copy from `StartMessageMoveTask`'s answer.
///
/// Unsupported: an error code saying the operation is unknown, HTTP 501 (LocalStack's "not yet
/// implemented"), or a 5xx without any error code (moto's unhandled `NotImplementedError`, an HTML page; AWS
/// itself always sends a code). Anything else with a code is a real refusal.
pub(crate) fn interpret_start<E>(
    answer: Result<Option<String>, SdkError<E, aws_sdk_sqs::config::http::HttpResponse>>,
    source_arn: &str,
) -> MoveTaskStart
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let error = match answer {
        Ok(task_handle) => return MoveTaskStart::Started { task_handle: task_handle.unwrap_or_default() },
        Err(error) => error,
    };
    let status = error.raw_response().map(|response| response.status().as_u16());
    let code = error.code().map(|code| code.strip_prefix("AWS.SimpleQueueService.").unwrap_or(code));
    let unsupported = match (code, status) {
        (Some(code), _) if UNSUPPORTED_CODES.contains(&code) => true,
        (_, Some(501)) => true,
        (None, Some(status)) => status >= 500,
        _ => false,
    };
    if unsupported {
        let why = match code {
            Some(code) => format!("StartMessageMoveTask is not supported here ({code}, HTTP {status:?})"),
            None => format!(
                "StartMessageMoveTask is not supported here (HTTP {} without an error code)",
                status.map_or_else(|| "?".to_owned(), |status| status.to_string())
            ),
        };
        MoveTaskStart::Unsupported { why }
    } else {
        MoveTaskStart::Failed(from_sdk_error(error, Call::new("sqs:StartMessageMoveTask", source_arn)))
    }
}

/// SendMessageBatch to one queue, as the copy's [`Publisher`].
struct SendToQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

#[async_trait]
impl Publisher for SendToQueue {
    async fn publish(&self, message: OutgoingMessage) -> Result<MessageId, BusError> {
        let mut results = self.publish_batch(vec![message]).await?;
        results.pop().unwrap_or_else(|| Err(BusError::IncompleteResponse("no result for the send".into())))
    }

    /// Each entry sent once; per-entry failures come back classified, as for every batch call of the port.
    async fn publish_batch(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<EntryResult<MessageId>>, BusError> {
        check_batch_size(messages.len())?;
        let call = Call::new("sqs:SendMessage", &self.queue_url);
        let mut batch = EntryAnswers::new(messages.len());
        let mut entries = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            let entry = check_message(message).and_then(|()| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&message.body)
                    .set_message_attributes(sqs_attributes(&message.attributes)?)
                    .build()
                    .map_err(|error| BusError::InvalidParameter(error.to_string()))
            });
            match entry {
                Ok(entry) => entries.push(entry),
                Err(error) => batch.record(i, Err(error)),
            }
        }
        let indices = batch.unanswered();
        if indices.is_empty() {
            return batch.finish();
        }
        let sent =
            self.client.send_message_batch().queue_url(&self.queue_url).set_entries(Some(entries)).send();
        match sent.await {
            Ok(output) => {
                let succeeded =
                    output.successful().iter().map(|entry| (entry.id(), entry.message_id().to_owned()));
                let failed = output.failed().iter().map(failed_entry);
                for (i, result) in match_entries(&indices, succeeded, failed, call) {
                    batch.record(i, result);
                }
            }
            Err(error) => batch.record_call_failure(&indices, from_sdk_error(error, call)),
        }
        batch.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::scripted_endpoint::ScriptedEndpoint;

    /// What moto 5.2 answers to `StartMessageMoveTask` (Werkzeug's page for an unhandled
    /// `NotImplementedError`), byte for byte.
    const MOTO_NOT_IMPLEMENTED: &str = "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n\
        <h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was unable to complete \
        your request. Either the server is overloaded or there is an error in the application.</p>\n";

    const DLQ_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:orders-dlq";

    async fn start_against(status: &'static str, content_type: &'static str, body: &str) -> MoveTaskStart {
        let endpoint = ScriptedEndpoint::start_with_status(status, content_type, body.to_owned()).await;
        let client = aws_sdk_sqs::Client::new(&endpoint.config().await);
        let answer = client.start_message_move_task().source_arn(DLQ_ARN).send().await;
        interpret_start(answer.map(|output| output.task_handle().map(str::to_owned)), DLQ_ARN)
    }

    #[tokio::test]
    async fn moto_s_answer_means_unsupported() {
        let decision =
            start_against("500 INTERNAL SERVER ERROR", "text/html; charset=utf-8", MOTO_NOT_IMPLEMENTED)
                .await;
        assert!(
            matches!(&decision, MoveTaskStart::Unsupported { why } if why.contains("HTTP 500 without an error code")),
            "{decision:?}"
        );
    }

    #[tokio::test]
    async fn a_started_task_is_watched() {
        let decision =
            start_against("200 OK", "application/x-amz-json-1.0", r#"{"TaskHandle":"task-1"}"#).await;
        assert_eq!(decision, MoveTaskStart::Started { task_handle: "task-1".into() });
    }

    #[tokio::test]
    async fn a_refusal_with_a_code_is_reported_not_copied_around() {
        let denied = r#"{"__type":"com.amazonaws.sqs#AccessDenied","message":"not allowed"}"#;
        let decision = start_against("403 Forbidden", "application/x-amz-json-1.0", denied).await;
        assert!(
            matches!(&decision, MoveTaskStart::Failed(BusError::Fatal { code, .. }) if code == "AccessDenied"),
            "{decision:?}"
        );
        let not_a_dlq = r#"{"__type":"com.amazonaws.sqs#InvalidParameterValue","message":"Source queue must be configured as a Dead Letter Queue."}"#;
        let decision = start_against("400 Bad Request", "application/x-amz-json-1.0", not_a_dlq).await;
        assert!(matches!(&decision, MoveTaskStart::Failed(BusError::InvalidParameter(_))), "{decision:?}");
    }

    #[tokio::test]
    async fn an_unknown_operation_code_means_unsupported() {
        let unknown = r#"{"__type":"com.amazonaws.sqs#UnsupportedOperation","message":"no"}"#;
        let decision = start_against("400 Bad Request", "application/x-amz-json-1.0", unknown).await;
        assert!(matches!(&decision, MoveTaskStart::Unsupported { .. }), "{decision:?}");
        let localstack = r#"{"__type":"InternalFailure","message":"API action 'StartMessageMoveTask' for service 'sqs' not yet implemented"}"#;
        let decision = start_against("501 Not Implemented", "application/x-amz-json-1.0", localstack).await;
        assert!(matches!(&decision, MoveTaskStart::Unsupported { .. }), "{decision:?}");
    }
}
