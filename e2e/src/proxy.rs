//! An HTTP proxy in front of moto that counts AWS API requests per service and operation.
//!
//! The children's SDKs are pointed at it with `AWS_ENDPOINT_URL`; it forwards every request unchanged (moto
//! does not check signatures) and counts it. Counting on the wire includes the SDK's own retries: it is what
//! AWS would bill. The retries are also counted apart (the SDK's `amz-sdk-request: attempt=N` header), so a
//! test can tell the calls the code made from the ones a slow answer added. Operations are named
//! `service:Operation` (`sqs:ReceiveMessage`, `sns:PublishBatch`, `dynamodb:UpdateItem`), so a test can total
//! a service ([`RequestCounts::service`]) as AWS bills it. It also tells empty receives (long polls that
//! found nothing) from receives that delivered messages: empty receives are the fixed cost of idle pollers
//! (one per poller per 20 s), the rest is the cost that grows with orders.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

/// The largest request body forwarded: a PublishBatch or SendMessage is at most 256 KiB of payload, which
/// the Query protocol's URL encoding can triple.
const MAX_FORWARDED_BODY: usize = 4 * 1024 * 1024;

/// What the proxy has counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests received, by operation (`sqs:ReceiveMessage`, `sns:PublishBatch`, `dynamodb:PutItem`, ...),
    /// counted when they arrive (a long poll still waiting is counted).
    pub by_operation: BTreeMap<String, u64>,
    /// The SDK's retries (attempt 2 and later of one call), by operation: included in `by_operation`.
    pub retries: BTreeMap<String, u64>,
    /// ReceiveMessage calls answered without messages.
    pub empty_receives: u64,
    /// ReceiveMessage calls still waiting for an answer when the snapshot was taken.
    pub receives_waiting: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.by_operation.values().sum()
    }

    /// Requests to one service (`"sqs"`, `"sns"`, `"dynamodb"`).
    pub fn service(&self, service: &str) -> u64 {
        self.by_operation
            .iter()
            .filter(|(operation, _)| service_of(operation) == service)
            .map(|(_, count)| count)
            .sum()
    }

    /// Requests per service, for reports.
    pub fn by_service(&self) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        for (operation, count) in &self.by_operation {
            *totals.entry(service_of(operation).to_owned()).or_default() += count;
        }
        totals
    }

    /// Requests of one operation (`"dynamodb:GetItem"`).
    pub fn operation(&self, operation: &str) -> u64 {
        self.by_operation.get(operation).copied().unwrap_or(0)
    }

    /// The SDK's retries of one operation, included in [`RequestCounts::operation`].
    pub fn retries(&self, operation: &str) -> u64 {
        self.retries.get(operation).copied().unwrap_or(0)
    }

    /// Receives that delivered nothing, counting the ones still waiting as empty: only meaningful once the
    /// queue is empty, when a waiting long poll has nothing left to deliver.
    pub fn idle_receives(&self) -> u64 {
        self.empty_receives + self.receives_waiting
    }

    /// The requests made since an earlier snapshot (with the receives waiting now).
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            by_operation: difference(&self.by_operation, &earlier.by_operation),
            retries: difference(&self.retries, &earlier.retries),
            empty_receives: self.empty_receives - earlier.empty_receives,
            receives_waiting: self.receives_waiting,
        }
    }
}

/// `now - earlier` per operation, without the operations that did not grow.
fn difference(now: &BTreeMap<String, u64>, earlier: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(operation, &count)| (operation.clone(), count - earlier.get(operation).copied().unwrap_or(0)))
        .filter(|(_, count)| *count > 0)
        .collect()
}

type Counts = Arc<Mutex<RequestCounts>>;

#[derive(Clone)]
struct Forwarding {
    upstream: String,
    client: reqwest::Client,
    counts: Counts,
}

/// A running counting proxy; stops when dropped.
pub struct CountingProxy {
    url: String,
    counts: Counts,
    server: JoinHandle<()>,
}

impl CountingProxy {
    /// Starts a proxy on a loopback port forwarding to `upstream` (e.g. moto's `http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> CountingProxy {
        let counts = Counts::default();
        let forwarding = Forwarding {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            counts: Arc::clone(&counts),
        };
        let app = Router::new().fallback(forward).with_state(forwarding);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("the proxy's address"));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the counting proxy stopped");
        });
        CountingProxy { url, counts, server }
    }

    /// The endpoint to give the SDK (`AWS_ENDPOINT_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests counted so far.
    pub fn counts(&self) -> RequestCounts {
        lock(&self.counts).clone()
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn forward(State(forwarding): State<Forwarding>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match to_bytes(body, MAX_FORWARDED_BODY).await {
        Ok(body) => body,
        Err(error) => return (StatusCode::PAYLOAD_TOO_LARGE, error.to_string()).into_response(),
    };
    let operation = operation(&parts.headers, &body);
    let receive = operation == "sqs:ReceiveMessage";
    {
        let mut counts = lock(&forwarding.counts);
        if is_retry(&parts.headers) {
            *counts.retries.entry(operation.clone()).or_default() += 1;
        }
        *counts.by_operation.entry(operation).or_default() += 1;
        counts.receives_waiting += u64::from(receive);
    }
    let answered = |empty: bool| {
        if receive {
            let mut counts = lock(&forwarding.counts);
            counts.receives_waiting -= 1;
            counts.empty_receives += u64::from(empty);
        }
    };

    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let mut upstream_request =
        forwarding.client.request(parts.method, format!("{}{path}", forwarding.upstream));
    for (name, value) in &parts.headers {
        if ![header::HOST, header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION]
            .contains(name)
        {
            upstream_request = upstream_request.header(name, value);
        }
    }
    let upstream_response = match upstream_request.body(body).send().await {
        Ok(response) => response,
        Err(error) => {
            answered(true);
            return (StatusCode::BAD_GATEWAY, error.to_string()).into_response();
        }
    };
    let status = upstream_response.status();
    let headers = upstream_response.headers().clone();
    let body = match upstream_response.bytes().await {
        Ok(body) => body,
        Err(error) => {
            answered(true);
            return (StatusCode::BAD_GATEWAY, error.to_string()).into_response();
        }
    };
    answered(!delivered_messages(&body));
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if ![header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION].contains(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

fn lock(counts: &Counts) -> std::sync::MutexGuard<'_, RequestCounts> {
    counts.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a ReceiveMessage answer (JSON: `{"Messages": [...]}`, or `{}` when there were none) holds messages.
fn delivered_messages(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|answer| answer.get("Messages")?.as_array().map(|messages| !messages.is_empty()))
        .unwrap_or(false)
}

/// Whether the SDK marked the request as a retry: `amz-sdk-request: attempt=2; max=3`.
fn is_retry(headers: &HeaderMap) -> bool {
    headers
        .get("amz-sdk-request")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').find_map(|part| part.trim().strip_prefix("attempt=")))
        .and_then(|attempt| attempt.parse::<u32>().ok())
        .is_some_and(|attempt| attempt > 1)
}

/// The service of an operation name (`sqs` of `sqs:ReceiveMessage`).
fn service_of(operation: &str) -> &str {
    operation.split_once(':').map_or(operation, |(service, _)| service)
}

/// The AWS operation of a request, as `service:Operation`. The JSON protocols name it in `X-Amz-Target`:
/// `AmazonSQS.<Operation>` (SQS), `DynamoDB_20120810.<Operation>` (DynamoDB); SNS speaks the Query protocol,
/// with `Action=<Operation>` in a form body. Any other service is named by its SigV4 credential scope.
fn operation(headers: &HeaderMap, body: &[u8]) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|value| value.to_str().ok()) {
        let (prefix, name) = target.rsplit_once('.').unwrap_or(("", target));
        let service = match prefix {
            "AmazonSQS" => "sqs".to_owned(),
            _ if prefix.starts_with("DynamoDB_") => "dynamodb".to_owned(),
            _ => signed_service(headers).unwrap_or_else(|| "unknown".to_owned()),
        };
        return format!("{service}:{name}");
    }
    let form = String::from_utf8_lossy(body);
    match form.split('&').find_map(|pair| pair.strip_prefix("Action=")) {
        Some(action) => {
            format!("{}:{action}", signed_service(headers).unwrap_or_else(|| "sns".to_owned()))
        }
        None => "unknown".to_owned(),
    }
}

/// The service a SigV4 request was signed for: `Credential=<key>/<date>/<region>/<service>/aws4_request`.
fn signed_service(headers: &HeaderMap) -> Option<String> {
    let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let credential = authorization.split("Credential=").nth(1)?;
    let scope = credential.split([',', ' ']).next()?;
    scope.split('/').nth(3).filter(|service| !service.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_operations_by_service() {
        let mut sqs = HeaderMap::new();
        sqs.insert("x-amz-target", "AmazonSQS.DeleteMessageBatch".parse().unwrap());
        assert_eq!(operation(&sqs, b"{}"), "sqs:DeleteMessageBatch");
        let mut dynamodb = HeaderMap::new();
        dynamodb.insert("x-amz-target", "DynamoDB_20120810.UpdateItem".parse().unwrap());
        assert_eq!(operation(&dynamodb, b"{}"), "dynamodb:UpdateItem");
        assert_eq!(
            operation(&HeaderMap::new(), b"Action=PublishBatch&Version=2010-03-31"),
            "sns:PublishBatch"
        );
        assert_eq!(operation(&HeaderMap::new(), b"Version=2010-03-31&Action=Publish"), "sns:Publish");
        assert_eq!(operation(&HeaderMap::new(), b""), "unknown");

        // Other services are named by the scope their request was signed for.
        let mut other = HeaderMap::new();
        other.insert(
            header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=test/20261201/us-east-1/kinesis/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=abc"
                .parse()
                .unwrap(),
        );
        other.insert("x-amz-target", "Kinesis_20131202.PutRecords".parse().unwrap());
        assert_eq!(operation(&other, b"{}"), "kinesis:PutRecords");
        other.remove("x-amz-target");
        assert_eq!(operation(&other, b"Action=ListStreams"), "kinesis:ListStreams");
    }

    #[test]
    fn totals_by_service() {
        let counts = RequestCounts {
            by_operation: BTreeMap::from([
                ("dynamodb:GetItem".to_owned(), 2),
                ("dynamodb:PutItem".to_owned(), 3),
                ("sns:PublishBatch".to_owned(), 1),
                ("sqs:ReceiveMessage".to_owned(), 4),
                ("sqs:DeleteMessageBatch".to_owned(), 5),
            ]),
            ..RequestCounts::default()
        };
        assert_eq!((counts.service("dynamodb"), counts.service("sns"), counts.service("sqs")), (5, 1, 9));
        assert_eq!(counts.service("kinesis"), 0);
        assert_eq!(counts.operation("dynamodb:GetItem"), 2);
        assert_eq!(counts.operation("dynamodb:DeleteItem"), 0);
        let expected =
            [("dynamodb", 5), ("sns", 1), ("sqs", 9)].map(|(service, count)| (service.to_owned(), count));
        assert_eq!(counts.by_service(), BTreeMap::from(expected));
        assert_eq!(counts.by_service().values().sum::<u64>(), counts.total());
    }

    #[test]
    fn tells_retries_from_first_attempts() {
        let attempt = |value: &str| {
            HeaderMap::from_iter([("amz-sdk-request".parse().unwrap(), value.parse().unwrap())])
        };
        assert!(!is_retry(&attempt("attempt=1; max=3")));
        assert!(is_retry(&attempt("attempt=2; max=3")));
        assert!(is_retry(&attempt("ttl=20261202T033000Z; attempt=3; max=3")));
        assert!(!is_retry(&HeaderMap::new()));
    }

    #[test]
    fn tells_empty_receives_from_deliveries() {
        assert!(delivered_messages(br#"{"Messages":[{"MessageId":"m"}]}"#));
        assert!(!delivered_messages(br#"{"Messages":[]}"#));
        assert!(!delivered_messages(b"{}"));
    }

    #[test]
    fn counts_waiting_receives_as_idle() {
        let earlier = RequestCounts {
            by_operation: BTreeMap::from([("sqs:ReceiveMessage".to_owned(), 4)]),
            retries: BTreeMap::from([("sqs:ReceiveMessage".to_owned(), 1)]),
            empty_receives: 1,
            receives_waiting: 2,
        };
        let now = RequestCounts {
            by_operation: BTreeMap::from([("sqs:ReceiveMessage".to_owned(), 10)]),
            retries: BTreeMap::from([("sqs:ReceiveMessage".to_owned(), 3)]),
            empty_receives: 3,
            receives_waiting: 2,
        };
        let since = now.since(&earlier);
        assert_eq!(since.total(), 6);
        assert_eq!(since.retries("sqs:ReceiveMessage"), 2);
        assert_eq!(since.idle_receives(), 2 + 2);
    }
}
