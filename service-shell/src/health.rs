//! The `--check-health` mode: the container health check, run as the service binary itself.

use std::time::Duration;

/// The environment variable that turns `--check-health` on, the same for every service.
pub const CHECK_HEALTH_ENV: &str = "CHECK_HEALTH";

/// How long the check waits for `/health`: well inside the container health check's own timeout.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// GETs `http://127.0.0.1:{port}/health` and exits the process: 0 on 200, 1 otherwise (with the reason on
/// stderr), as a container health check expects.
pub fn check_and_exit(port: u16) -> ! {
    let healthy = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(check(port)),
        Err(error) => {
            eprintln!("health check: cannot start a runtime: {error}");
            false
        }
    };
    std::process::exit(if healthy { 0 } else { 1 })
}

/// Whether `http://127.0.0.1:{port}/health` answers 200 within [`CHECK_TIMEOUT`].
pub async fn check(port: u16) -> bool {
    let client = match reqwest::Client::builder().timeout(CHECK_TIMEOUT).build() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("health check: cannot build an HTTP client: {error}");
            return false;
        }
    };
    match client.get(format!("http://127.0.0.1:{port}/health")).send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => true,
        Ok(response) => {
            eprintln!("health check: /health answered {}", response.status());
            false
        }
        Err(error) => {
            eprintln!("health check: {error}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers every connection with `status_line` once.
    async fn answering(status_line: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let answer =
                    format!("HTTP/1.1 {status_line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn healthy_only_on_200() {
        assert!(super::check(answering("200 OK").await).await);
        assert!(!super::check(answering("503 Service Unavailable").await).await);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(!super::check(closed).await, "nothing listens");
    }
}
