//! SDK errors mapped to [`BusError`], keeping the AWS error code and saying what an operator should do.
//!
//! By the time an error reaches this mapping the SDK has already retried throttling, 5xx and timeouts with
//! backoff (its standard retry mode, three attempts), so a [`BusError::Transient`] here means "still failing,
//! try again later", not "try again now".

use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::BusError;

/// What a call was doing, for error messages: the IAM action it needs and the resource it touched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    /// The IAM action, e.g. `sns:Publish`.
    pub action: &'static str,
    /// The topic ARN or queue URL.
    pub resource: &'a str,
}

impl<'a> Call<'a> {
    pub(crate) fn new(action: &'static str, resource: &'a str) -> Self {
        Self { action, resource }
    }
}

/// Maps an SDK error from any SNS or SQS operation.
pub(crate) fn from_sdk_error<E>(error: SdkError<E>, call: Call<'_>) -> BusError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &error {
        SdkError::TimeoutError(_) => BusError::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => BusError::Timeout,
        SdkError::ServiceError(service) => classify(
            service.err().code().unwrap_or("Unknown"),
            service.err().message().unwrap_or_default(),
            service.raw().status().as_u16(),
            call,
        ),
        SdkError::ConstructionFailure(_) => BusError::Fatal {
            code: "ConstructionFailure".into(),
            message: format!(
                "could not build the {} request ({}); check the AWS region and credentials configuration",
                call.action,
                DisplayErrorContext(&error)
            ),
        },
        SdkError::DispatchFailure(_) => BusError::Transient {
            code: "DispatchFailure".into(),
            message: format!("{} on {}: {}", call.action, call.resource, DisplayErrorContext(&error)),
        },
        _ => BusError::Transient {
            code: "ResponseError".into(),
            message: format!("{} on {}: {}", call.action, call.resource, DisplayErrorContext(&error)),
        },
    }
}

/// Codes, beyond the SDK's own throttling and transient lists, that mean "retry later": SQS's and SNS's KMS
/// throttling, SQS's in-flight limit (`OverLimit`: 120,000 messages received and not yet deleted), and the
/// generic server-side failures.
const RETRYABLE_CODES: &[&str] =
    &["KmsThrottled", "KMSThrottling", "OverLimit", "InternalError", "InternalFailure", "ServiceUnavailable"];

/// Codes meaning the credentials themselves were rejected (as opposed to lacking a permission).
const CREDENTIAL_CODES: &[&str] = &[
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidSecurity",
];

/// Codes meaning the caller lacks an IAM (or KMS key) permission.
const ACCESS_DENIED_CODES: &[&str] =
    &["AccessDenied", "AccessDeniedException", "AuthorizationError", "KMSAccessDenied", "KmsAccessDenied"];

/// Codes meaning the topic or queue does not exist (in this account, region, or endpoint).
const NOT_FOUND_CODES: &[&str] =
    &["NotFound", "NotFoundException", "QueueDoesNotExist", "NonExistentQueue", "ResourceNotFoundException"];

/// Codes meaning a receipt handle is malformed, or no longer designates an in-flight delivery.
const STALE_RECEIPT_CODES: &[&str] = &["ReceiptHandleIsInvalid", "MessageNotInflight"];

/// Codes for requests that broke a documented limit or format.
const INVALID_REQUEST_CODES: &[&str] = &[
    "MissingParameter",
    "BatchRequestTooLong",
    "TooManyEntriesInBatchRequest",
    "EmptyBatchRequest",
    "BatchEntryIdsNotDistinct",
    "ValidationError",
];

/// Classifies an AWS error code (from a whole call, or from one entry of a batch).
pub(crate) fn classify(code: &str, message: &str, http_status: u16, call: Call<'_>) -> BusError {
    // SQS's JSON protocol reports some codes in their legacy query form, "AWS.SimpleQueueService.<Code>".
    let short = code.strip_prefix("AWS.SimpleQueueService.").unwrap_or(code);
    let owned = || (code.to_owned(), message.to_owned());
    if THROTTLING_ERRORS.contains(&short)
        || TRANSIENT_ERRORS.contains(&short)
        || RETRYABLE_CODES.contains(&short)
        || http_status >= 500
    {
        let (code, message) = owned();
        BusError::Transient { code, message }
    } else if CREDENTIAL_CODES.contains(&short) {
        BusError::Fatal {
            code: code.to_owned(),
            message: format!(
                "{message}: the AWS credentials were rejected; check AWS_PROFILE / AWS_ACCESS_KEY_ID or the task role"
            ),
        }
    } else if ACCESS_DENIED_CODES.contains(&short) || http_status == 403 {
        BusError::Fatal {
            code: code.to_owned(),
            message: format!(
                "{message}: the caller's IAM policy must allow {} on {}",
                call.action, call.resource
            ),
        }
    } else if NOT_FOUND_CODES.contains(&short) {
        BusError::Fatal {
            code: code.to_owned(),
            message: format!(
                "{message}: {} does not exist for this account, region and endpoint; check the ARN/URL, \
                 AWS_REGION and AWS_ENDPOINT_URL (for an emulator, create it with `loadtest infra up`)",
                call.resource
            ),
        }
    } else if STALE_RECEIPT_CODES.contains(&short) {
        BusError::ReceiptHandleInvalid(format!("{code}: {message}"))
    } else if short.starts_with("Invalid") || INVALID_REQUEST_CODES.contains(&short) {
        BusError::InvalidParameter(format!("{code}: {message}"))
    } else {
        let (code, message) = owned();
        BusError::Fatal { code, message }
    }
}

/// Classifies a failed entry of a batch call (`BatchResultErrorEntry`): AWS marks each with `SenderFault`;
/// an entry that was not the sender's fault is worth retrying whatever its code.
pub(crate) fn classify_entry(
    code: &str,
    message: Option<&str>,
    sender_fault: bool,
    call: Call<'_>,
) -> BusError {
    let message = message.unwrap_or_default();
    if sender_fault {
        // A sender fault is never retryable, even when its code looks like a server error.
        match classify(code, message, 400, call) {
            BusError::Transient { code, message } => BusError::Fatal { code, message },
            other => other,
        }
    } else {
        BusError::Transient { code: code.to_owned(), message: message.to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLISH: Call<'static> = Call { action: "sns:Publish", resource: "arn:aws:sns:us-east-1:1:orders" };

    #[test]
    fn throttling_and_server_errors_are_retryable_and_keep_the_code() {
        for (code, status) in
            [("Throttling", 400), ("RequestThrottled", 400), ("KmsThrottled", 400), ("X", 503)]
        {
            match classify(code, "slow down", status, PUBLISH) {
                BusError::Transient { code: kept, .. } => assert_eq!(kept, code),
                other => panic!("{code}: {other:?}"),
            }
        }
        let legacy = classify("AWS.SimpleQueueService.RequestThrottled", "", 400, PUBLISH);
        assert!(legacy.is_retryable(), "{legacy:?}");
    }

    #[test]
    fn access_denied_names_the_missing_permission() {
        let error = classify("AuthorizationError", "User is not authorized", 403, PUBLISH);
        let BusError::Fatal { code, message } = &error else { panic!("{error:?}") };
        assert_eq!(code, "AuthorizationError");
        assert!(message.contains("sns:Publish on arn:aws:sns:us-east-1:1:orders"), "{message}");
        assert!(!error.is_retryable());
    }

    #[test]
    fn missing_resources_say_what_to_check() {
        let call = Call::new("sqs:ReceiveMessage", "http://localhost/1/orders");
        let error = classify("AWS.SimpleQueueService.NonExistentQueue", "gone", 400, call);
        let BusError::Fatal { code, message } = &error else { panic!("{error:?}") };
        assert_eq!(code, "AWS.SimpleQueueService.NonExistentQueue");
        assert!(
            message.contains("http://localhost/1/orders") && message.contains("AWS_ENDPOINT_URL"),
            "{message}"
        );
    }

    #[test]
    fn stale_receipts_and_bad_parameters_have_their_own_variants() {
        let call = Call::new("sqs:DeleteMessage", "q");
        assert!(matches!(
            classify("ReceiptHandleIsInvalid", "", 400, call),
            BusError::ReceiptHandleInvalid(_)
        ));
        assert!(matches!(
            classify("AWS.SimpleQueueService.MessageNotInflight", "", 400, call),
            BusError::ReceiptHandleInvalid(_)
        ));
        assert!(matches!(classify("InvalidParameterValue", "", 400, call), BusError::InvalidParameter(_)));
        assert!(matches!(classify("SomethingNew", "", 400, call), BusError::Fatal { .. }));
        assert!(matches!(classify("InvalidClientTokenId", "", 403, call), BusError::Fatal { .. }));
    }

    #[test]
    fn batch_entries_follow_the_sender_fault_flag() {
        let call = Call::new("sqs:DeleteMessage", "q");
        assert!(classify_entry("InternalError", None, false, call).is_retryable());
        assert!(classify_entry("AnythingElse", Some("hm"), false, call).is_retryable());
        assert!(!classify_entry("InternalError", None, true, call).is_retryable());
        assert!(matches!(
            classify_entry("ReceiptHandleIsInvalid", Some("stale"), true, call),
            BusError::ReceiptHandleInvalid(_)
        ));
    }
}
