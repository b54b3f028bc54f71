//! The embedded SNS/SQS broker (in progress).
