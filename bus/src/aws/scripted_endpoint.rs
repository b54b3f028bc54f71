//! A one-answer HTTP endpoint for testing what the adapter makes of a broker's answer (per-entry failures,
//! entries left out) that no emulator produces on demand. Test-only.

use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Answers every request with one scripted status (`200 OK` unless told) and body, and records the request bodies.
pub(crate) struct ScriptedEndpoint {
    /// The endpoint URL to configure the SDK with.
    pub(crate) url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl ScriptedEndpoint {
    /// Starts listening on a free loopback port; every answer has `content_type` and `body`.
    pub(crate) async fn start(content_type: &'static str, body: String) -> Self {
        Self::start_with_status("200 OK", content_type, body).await
    }

    /// Like [`Self::start`], answering with `status` (e.g. `500 INTERNAL SERVER ERROR`) instead of `200 OK`.
    pub(crate) async fn start_with_status(
        status: &'static str,
        content_type: &'static str,
        body: String,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (recorded, body) = (Arc::clone(&recorded), body.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    // One connection may carry several requests (keep-alive).
                    while let Some(request) = read_request(&mut read).await {
                        recorded.lock().unwrap().push(request);
                        let answer = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
                             x-amzn-requestid: scripted\r\n\r\n{body}",
                            body.len()
                        );
                        if write.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { url, requests }
    }

    /// The bodies of the requests received so far.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// SDK configuration for this endpoint: a fixed region and dummy credentials.
    pub(crate) async fn config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "scripted"))
            .load()
            .await
    }
}

/// Reads one HTTP/1.1 request and returns its body; `None` when the connection closes.
async fn read_request(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; content_length];
    read.read_exact(&mut body).await.ok()?;
    String::from_utf8(body).ok()
}
