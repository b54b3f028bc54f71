//! The one JSON shape of every error the receiver answers: `{"error": {"code", "message", "fields"?}}`, with
//! plain words only: what went wrong inside is logged with the request's `x-request-id`, never sent.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orders::FieldError;
use serde::Serialize;

/// An error answer: a status, a stable machine-readable `code`, a message for people, the failing fields of a
/// 422, and a `Retry-After` for 503s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable identifier clients can branch on (`validation_failed`, `overloaded`, ...).
    pub code: &'static str,
    /// What happened and what to do, for a person.
    pub message: String,
    /// Every failing field, for `validation_failed`.
    pub fields: Option<Vec<FieldError>>,
    /// When to try again, sent as `Retry-After` in whole seconds.
    pub retry_after: Option<Duration>,
    /// What went wrong inside (a broker's or store's own text, which can name accounts, roles and ARNs): logged
    /// with the request's id, never sent.
    pub detail: Option<String>,
}

/// An error answer's internal detail, carried in the response's extensions to the request middleware, which
/// logs it with the request id and drops it.
#[derive(Debug, Clone)]
pub(crate) struct ErrorDetail {
    pub(crate) code: &'static str,
    pub(crate) detail: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a [FieldError]>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), fields: None, retry_after: None, detail: None }
    }

    /// The same answer, with `detail` logged (never sent).
    pub fn with_detail(self, detail: impl std::fmt::Display) -> Self {
        Self { detail: Some(detail.to_string()), ..self }
    }

    /// 422 listing every failing field.
    pub fn validation(fields: Vec<FieldError>) -> Self {
        let message = format!("the order has {} invalid field(s); see `fields`", fields.len());
        Self {
            fields: Some(fields),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message)
        }
    }

    /// 503 with `Retry-After`: the receiver or what it depends on cannot take the request now.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: Duration) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }
}

impl ApiError {
    /// The JSON body, as sent: for storing an answer to replay it byte for byte.
    pub(crate) fn json_body(&self) -> String {
        let body =
            Body { error: Inner { code: self.code, message: &self.message, fields: self.fields.as_deref() } };
        serde_json::to_string(&body).expect("an error body always serializes")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            Body { error: Inner { code: self.code, message: &self.message, fields: self.fields.as_deref() } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(detail) = self.detail {
            response.extensions_mut().insert(ErrorDetail { code: self.code, detail });
        }
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry storm.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}
