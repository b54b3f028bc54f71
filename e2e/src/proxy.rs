//! An HTTP proxy in front of moto that counts AWS API requests per operation.
//!
//! The children's SDKs are pointed at it with `AWS_ENDPOINT_URL`; it forwards every request unchanged (moto
//! does not check signatures) and counts it. Counting on the wire includes the SDK's own retries: it is what
//! AWS would bill. It also tells empty receives (long polls that found nothing) from receives that delivered
//! messages: empty receives are the fixed cost of idle pollers (one per poller per 20 s), the rest is the cost
//! that grows with orders.

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
    /// Requests received, by operation (`sqs:ReceiveMessage`, `sns:PublishBatch`, ...), counted when they
    /// arrive (a long poll still waiting is counted).
    pub by_operation: BTreeMap<String, u64>,
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

    /// Receives that delivered nothing, counting the ones still waiting as empty: only meaningful once the
    /// queue is empty, when a waiting long poll has nothing left to deliver.
    pub fn idle_receives(&self) -> u64 {
        self.empty_receives + self.receives_waiting
    }

    /// The requests made since an earlier snapshot (with the receives waiting now).
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        let by_operation = self
            .by_operation
            .iter()
            .map(|(operation, &count)| {
                (operation.clone(), count - earlier.by_operation.get(operation).copied().unwrap_or(0))
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        RequestCounts {
            by_operation,
            empty_receives: self.empty_receives - earlier.empty_receives,
            receives_waiting: self.receives_waiting,
        }
    }
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

/// The AWS operation of a request: SQS speaks JSON with `X-Amz-Target: AmazonSQS.<Operation>`, SNS speaks the
/// Query protocol with `Action=<Operation>` in a form body.
fn operation(headers: &HeaderMap, body: &[u8]) -> String {
    if let Some(target) = headers.get("x-amz-target").and_then(|value| value.to_str().ok()) {
        let name = target.rsplit('.').next().unwrap_or(target);
        return format!("sqs:{name}");
    }
    let form = String::from_utf8_lossy(body);
    match form.split('&').find_map(|pair| pair.strip_prefix("Action=")) {
        Some(action) => format!("sns:{action}"),
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sqs_and_sns_operations() {
        let mut sqs = HeaderMap::new();
        sqs.insert("x-amz-target", "AmazonSQS.DeleteMessageBatch".parse().unwrap());
        assert_eq!(operation(&sqs, b"{}"), "sqs:DeleteMessageBatch");
        assert_eq!(
            operation(&HeaderMap::new(), b"Action=PublishBatch&Version=2010-03-31"),
            "sns:PublishBatch"
        );
        assert_eq!(operation(&HeaderMap::new(), b"Version=2010-03-31&Action=Publish"), "sns:Publish");
        assert_eq!(operation(&HeaderMap::new(), b""), "unknown");
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
            empty_receives: 1,
            receives_waiting: 2,
        };
        let now = RequestCounts {
            by_operation: BTreeMap::from([("sqs:ReceiveMessage".to_owned(), 10)]),
            empty_receives: 3,
            receives_waiting: 2,
        };
        let since = now.since(&earlier);
        assert_eq!(since.total(), 6);
        assert_eq!(since.idle_receives(), 2 + 2);
    }
}
