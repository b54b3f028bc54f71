//! The HTTP side of the generator: a target, the requests sent to it, and keep-alive HTTP/1.1 connections.
//!
//! Built on hyper's connection API rather than a pooled client such as reqwest: each load lane owns exactly
//! one connection and sends one request at a time on it, so the pool is simply the set of lanes, sized by the
//! concurrency the load needs. No shared pool lock, no per-request spawn: the generator stays cheaper than the
//! server it measures.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::idempotency::RetryPolicy;
use crate::outcome::{FailureKind, Outcome};

/// The request header that makes a retry safe (IETF draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Why a target URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL does not parse or is not `http://host[:port][/path]`.
    #[error("target URL {url:?} is not usable: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host name does not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host and port looked up.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
}

/// Where load goes: resolved socket addresses plus the `Host` header and the base path of the service.
#[derive(Debug, Clone)]
pub struct Target {
    addrs: Arc<[SocketAddr]>,
    authority: HeaderValue,
    base_path: String,
    url: String,
}

impl Target {
    /// Parses and resolves an `http://` URL once, up front, so that DNS never sits on the request path. A load
    /// balancer with several addresses gets its lanes spread across all of them.
    pub async fn resolve(url: &str) -> Result<Target, TargetError> {
        let invalid =
            |reason: &str| TargetError::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
        let uri: hyper::Uri =
            url.parse().map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "https is not supported by the generator; use the load balancer's http:// listener",
                ));
            }
            _ => return Err(invalid("expected http://host[:port][/path]")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?.clone();
        let host_port = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&host_port)
            .await
            .map_err(|source| TargetError::Resolve { host: host_port.clone(), source })?
            .collect();
        if addrs.is_empty() {
            return Err(TargetError::Resolve {
                host: host_port,
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Target {
            addrs: addrs.into(),
            authority: HeaderValue::from_str(authority.as_str()).map_err(|e| invalid(&e.to_string()))?,
            base_path,
            url: url.trim_end_matches('/').to_owned(),
        })
    }

    /// A target on a local socket address (tests, the embedded stack).
    pub fn local(addr: SocketAddr) -> Target {
        Target {
            addrs: Arc::new([addr]),
            authority: HeaderValue::from_str(&addr.to_string()).expect("a socket address is a valid header"),
            base_path: String::new(),
            url: format!("http://{addr}"),
        }
    }

    /// The URL as given (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address lane `lane` connects to: lanes are spread round-robin over the resolved addresses.
    pub fn addr_for(&self, lane: usize) -> SocketAddr {
        self.addrs[lane % self.addrs.len()]
    }

    /// A request description for `path` (starting with `/`) under this target's base path.
    ///
    /// # Panics
    /// When `path` is not a valid URI path: paths are written in code, not taken from users.
    pub fn request(&self, method: Method, path: &str, bodies: Vec<Bytes>) -> RequestSpec {
        let path = format!("{}{}", self.base_path, path);
        let uri = path.parse().unwrap_or_else(|error| panic!("request path {path:?} is invalid: {error}"));
        RequestSpec {
            method,
            path,
            uri,
            authority: self.authority.clone(),
            bodies: bodies.into(),
            idempotency: None,
        }
    }
}

/// What every request of a run looks like: method, path, a rotation of prepared bodies (JSON when not
/// empty), and whether each carries an idempotency key. Bodies are prepared before the run so that building a
/// request costs no serialisation.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    method: Method,
    path: String,
    uri: hyper::Uri,
    authority: HeaderValue,
    bodies: Arc<[Bytes]>,
    idempotency: Option<RetryPolicy>,
}

impl RequestSpec {
    /// The request path, including the target's base path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The same requests, each with a fresh `Idempotency-Key` and retried with it as `policy` says (see
    /// [`crate::idempotency`]). Without this, requests carry no key and are never retried.
    pub fn with_idempotency_keys(mut self, policy: RetryPolicy) -> RequestSpec {
        self.idempotency = Some(policy);
        self
    }

    /// How keyed requests are retried, when requests carry keys.
    pub fn idempotency(&self) -> Option<&RetryPolicy> {
        self.idempotency.as_ref()
    }

    /// Builds request number `seq`; its body is the `seq`-th prepared body, round-robin.
    pub fn build(&self, seq: u64) -> Request<Full<Bytes>> {
        let body = if self.bodies.is_empty() {
            Bytes::new()
        } else {
            self.bodies[(seq % self.bodies.len() as u64) as usize].clone()
        };
        let has_body = !body.is_empty();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.authority.clone());
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        request
    }

    /// Request number `seq` carrying `key` as its `Idempotency-Key`: the body [`RequestSpec::build`] gives
    /// for `seq`, so a retry is the very same request.
    pub fn build_keyed(&self, seq: u64, key: &HeaderValue) -> Request<Full<Bytes>> {
        let mut request = self.build(seq);
        request.headers_mut().insert(IDEMPOTENCY_KEY, key.clone());
        request
    }
}

/// One keep-alive HTTP/1.1 connection to one address, opened on first use and reopened after a failure.
///
/// The connection is driven inside the task that uses it (no separate connection task, so no cross-task hop
/// per request): every exchange polls hyper's connection future alongside the request. A request that times
/// out or fails leaves the connection in an unknown state, so it is dropped and the next request opens a
/// fresh one (as browsers and Locust's sessions do).
pub struct Connection {
    addr: SocketAddr,
    open: Option<Open>,
}

type Http1Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

struct Open {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Pin<Box<Http1Driver>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("addr", &self.addr).field("open", &self.open.is_some()).finish()
    }
}

impl Connection {
    /// A connection to `addr`, not yet opened.
    pub fn new(addr: SocketAddr) -> Connection {
        Connection { addr, open: None }
    }

    /// Opens the TCP connection and performs the HTTP/1.1 handshake, unless it is open already. An idle
    /// connection the server has closed meanwhile (keep-alive timeout) is noticed here and replaced.
    pub async fn connect(&mut self) -> Result<(), std::io::Error> {
        if let Some(open) = &mut self.open {
            let mut context = Context::from_waker(Waker::noop());
            if open.driver.as_mut().poll(&mut context).is_pending() {
                return Ok(());
            }
            self.open = None;
        }
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        self.open = Some(Open { sender, driver: Box::pin(driver) });
        Ok(())
    }

    /// Sends one request and reads the whole response, giving up after `timeout` (connecting included).
    pub async fn exchange(&mut self, request: Request<Full<Bytes>>, timeout: Duration) -> Outcome {
        let exchanged = tokio::time::timeout(
            timeout,
            self.round_trip(request, |response| async move {
                // Read the body to the end so that the connection can carry the next request.
                let mut body = response.into_body();
                while let Some(frame) = body.frame().await {
                    frame?;
                }
                Ok(())
            }),
        )
        .await;
        match exchanged {
            Ok(Ok((status, ()))) => Outcome::from_status(status),
            Ok(Err(kind)) => Outcome::Failed(kind),
            Err(_elapsed) => {
                self.open = None;
                Outcome::Failed(FailureKind::Timeout)
            }
        }
    }

    /// Sends one request and returns the status and the whole body (for small documents such as `/stats`).
    pub async fn fetch(
        &mut self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), FailureKind> {
        let fetched = tokio::time::timeout(
            timeout,
            self.round_trip(request, |response| async move {
                Ok(response.into_body().collect().await?.to_bytes())
            }),
        )
        .await;
        fetched.unwrap_or_else(|_elapsed| {
            self.open = None;
            Err(FailureKind::Timeout)
        })
    }

    /// Sends one request and returns the whole answer, headers included (for keyed requests, whose retries
    /// depend on `Retry-After` and whose replays are marked by a header).
    pub async fn fetch_response(
        &mut self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, FailureKind> {
        let fetched = tokio::time::timeout(
            timeout,
            self.round_trip(request, |response| async move {
                let (parts, body) = response.into_parts();
                Ok(Response::from_parts(parts, body.collect().await?.to_bytes()))
            }),
        )
        .await;
        match fetched {
            Ok(answer) => answer.map(|(_status, response)| response),
            Err(_elapsed) => {
                self.open = None;
                Err(FailureKind::Timeout)
            }
        }
    }

    /// Connects if needed, sends `request` and hands the response to `read_body`, driving the connection all
    /// along. Drops the connection on any failure or when the server closes it.
    async fn round_trip<T, F, Fut>(
        &mut self,
        request: Request<Full<Bytes>>,
        read_body: F,
    ) -> Result<(StatusCode, T), FailureKind>
    where
        F: FnOnce(Response<Incoming>) -> Fut,
        Fut: Future<Output = Result<T, hyper::Error>>,
    {
        self.connect().await.map_err(|_| FailureKind::Transport)?;
        let open = self.open.as_mut().expect("connect() leaves an open connection");
        let sender = &mut open.sender;
        let exchange = async move {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            Ok::<_, hyper::Error>((status, read_body(response).await?))
        };
        let (result, connection_ended) = drive(&mut open.driver, exchange).await;
        if connection_ended || !matches!(result, Some(Ok(_))) {
            self.open = None;
        }
        match result {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(_)) | None => Err(FailureKind::Transport),
        }
    }
}

/// Polls `work` to completion while driving the connection, in this task. Returns the work's output (`None`
/// when the connection ended first) and whether the connection ended.
async fn drive<T>(driver: &mut Pin<Box<Http1Driver>>, work: impl Future<Output = T>) -> (Option<T>, bool) {
    let mut work = pin!(work);
    let mut ended = false;
    std::future::poll_fn(|context| {
        // Work, driver, work: the work queues the request the driver then writes, and the driver delivers the
        // response (and body) the work waits for, all in one poll rather than through a wake-up of this task
        // for each hand-over.
        if let Poll::Ready(output) = work.as_mut().poll(context) {
            return Poll::Ready(Some(output));
        }
        if !ended && driver.as_mut().poll(context).is_ready() {
            ended = true;
        }
        match work.as_mut().poll(context) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if ended => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
    .map_or((None, true), |output| (Some(output), ended))
}
