//! The HTTP side of the generator: a target, the requests sent to it, and keep-alive HTTP/1.1 connections.
//!
//! Built on hyper's connection API rather than a pooled client such as reqwest: each load lane owns exactly
//! one connection and sends one request at a time on it, so the pool is simply the set of lanes, sized by the
//! concurrency the load needs. No shared pool lock, no per-request spawn: the generator stays cheaper than the
//! server it measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::outcome::{FailureKind, Outcome};

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

    /// A request description for `path` under this target's base path.
    pub fn request(&self, method: Method, path: &str, bodies: Vec<Bytes>) -> RequestSpec {
        RequestSpec {
            method,
            path: format!("{}{}", self.base_path, path),
            authority: self.authority.clone(),
            bodies: bodies.into(),
        }
    }
}

/// What every request of a run looks like: method, path and a rotation of prepared bodies (JSON when not
/// empty). Bodies are prepared before the run so that building a request costs no serialisation.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    method: Method,
    path: String,
    authority: HeaderValue,
    bodies: Arc<[Bytes]>,
}

impl RequestSpec {
    /// The request path, including the target's base path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Builds request number `seq`; its body is the `seq`-th prepared body, round-robin.
    pub fn build(&self, seq: u64) -> Request<Full<Bytes>> {
        let body = if self.bodies.is_empty() {
            Bytes::new()
        } else {
            self.bodies[(seq % self.bodies.len() as u64) as usize].clone()
        };
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .header(HOST, &self.authority);
        if !body.is_empty() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        builder.body(Full::new(body)).expect("method, path and headers were validated when the spec was made")
    }
}

/// One keep-alive HTTP/1.1 connection to one address, opened on first use and reopened after a failure.
///
/// A request that times out or fails leaves the connection in an unknown state, so it is dropped and the
/// next request opens a fresh one (as browsers and Locust's sessions do).
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `addr`, not yet opened.
    pub fn new(addr: SocketAddr) -> Connection {
        Connection { addr, sender: None }
    }

    /// Opens the TCP connection and performs the HTTP/1.1 handshake, unless already open.
    pub async fn connect(&mut self) -> Result<(), std::io::Error> {
        if self.sender.as_ref().is_some_and(|sender| !sender.is_closed()) {
            return Ok(());
        }
        self.sender = None;
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or when `sender` is dropped.
            let _ = connection.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one request and reads the whole response, giving up after `timeout` (connecting included).
    pub async fn exchange(&mut self, request: Request<Full<Bytes>>, timeout: Duration) -> Outcome {
        match tokio::time::timeout(timeout, self.exchange_inner(request)).await {
            Ok(Ok(status)) => Outcome::from_status(status),
            Ok(Err(kind)) => {
                self.sender = None;
                Outcome::Failed(kind)
            }
            Err(_elapsed) => {
                self.sender = None;
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
        let fetched = tokio::time::timeout(timeout, async {
            self.connect().await.map_err(|_| FailureKind::Transport)?;
            let sender = self.sender.as_mut().expect("connect() leaves an open sender");
            sender.ready().await.map_err(|_| FailureKind::Transport)?;
            let response = sender.send_request(request).await.map_err(|_| FailureKind::Transport)?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|_| FailureKind::Transport)?;
            Ok((status, body.to_bytes()))
        })
        .await
        .unwrap_or(Err(FailureKind::Timeout));
        if fetched.is_err() {
            self.sender = None;
        }
        fetched
    }

    async fn exchange_inner(&mut self, request: Request<Full<Bytes>>) -> Result<StatusCode, FailureKind> {
        self.connect().await.map_err(|_| FailureKind::Transport)?;
        let sender = self.sender.as_mut().expect("connect() leaves an open sender");
        sender.ready().await.map_err(|_| FailureKind::Transport)?;
        let response = sender.send_request(request).await.map_err(|_| FailureKind::Transport)?;
        let status = response.status();
        let mut body = response.into_body();
        // Read the body to the end so that the connection can carry the next request.
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| FailureKind::Transport)?;
        }
        Ok(status)
    }
}
