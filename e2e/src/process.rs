//! A service binary running as a child process.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// Environment variables of the test process that would redirect or re-authenticate the children's SDK;
/// removed so the children talk to the endpoint the test gives them, with the dummy credentials it gives them.
const INHERITED_AWS_SETTINGS: &[&str] = &[
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_SNS",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
];

/// A running `receiver` or `worker`. Dropping it kills the process (SIGKILL) and reaps it, so no process
/// outlives a test, failed or not.
pub struct Service {
    name: String,
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Service {
    /// Starts `binary` (from [`crate::bin_dir`]) with `args`, serving HTTP on `port`, and AWS endpoint
    /// `aws_endpoint` with dummy credentials. Output goes to a log file, shown when a wait fails.
    pub fn start(binary: &str, args: &[String], port: u16, aws_endpoint: &str) -> Service {
        let path = crate::bin_dir().join(binary);
        assert!(
            path.is_file(),
            "{} does not exist: build the binaries first (`cargo build --workspace --bins`; scripts/test.sh does)",
            path.display()
        );
        let log = std::env::temp_dir().join(format!("orderflow-e2e-{binary}-{port}.log"));
        let output = File::create(&log).expect("create the child's log file");
        let mut command = Command::new(&path);
        command
            .args(args)
            .env("PORT", port.to_string())
            // The receiver's admin port (/stats, /metrics): any free one, so services and runs never collide.
            .env("ADMIN_PORT", crate::free_port().to_string())
            .env("BIND_ADDR", "127.0.0.1")
            .env("AWS_ENDPOINT_URL", aws_endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log file handle"))
            .stderr(output);
        for name in INHERITED_AWS_SETTINGS {
            command.env_remove(name);
        }
        let child = command.spawn().unwrap_or_else(|error| panic!("start {}: {error}", path.display()));
        Service { name: format!("{binary}:{port}"), child: Some(child), port, log }
    }

    /// The service's HTTP base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The last lines of the service's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until `GET /health` answers 200; panics with the service's log if it exits or takes too long.
    pub async fn wait_healthy(&mut self, http: &reqwest::Client, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                panic!("{} exited with {status} before becoming healthy:\n{}", self.name, self.log_tail());
            }
            let health =
                http.get(format!("{}/health", self.url())).timeout(Duration::from_secs(1)).send().await;
            if health.is_ok_and(|response| response.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not healthy after {timeout:?}:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the process with SIGKILL, as a crash or an out-of-memory kill would: no shutdown code runs.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    /// Kills the process; shows its log when the test is failing, and deletes the log otherwise.
    fn drop(&mut self) {
        self.kill_hard();
        if std::thread::panicking() {
            eprintln!("--- last output of {} ({}) ---\n{}", self.name, self.log.display(), self.log_tail());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
