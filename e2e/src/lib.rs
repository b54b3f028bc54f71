//! Harness for the end-to-end tests: the real `receiver` and `worker` binaries run as separate OS processes
//! against moto server (SNS, SQS and the DynamoDB order ledger), with their AWS traffic going through a proxy
//! that counts requests.
//!
//! - [`Service`] starts a binary and kills it when dropped (even when a test panics), or on demand with
//!   SIGKILL ([`Service::kill_hard`]) to simulate a crash.
//! - [`CountingProxy`] forwards HTTP to moto and counts requests per AWS service and operation, so a test can
//!   state how many API calls each order cost: SQS bills per request, SNS per publish, DynamoDB per request
//!   unit (one per single-item request of a small item).
//! - [`cost`] turns those counts into requests per order by service and dollars per million orders.
//!
//! The binaries are taken from `ORDERFLOW_BIN_DIR`, or else from the target directory the test itself was
//! built into (`target/debug` normally); `scripts/test.sh` builds them before running the tests.

use std::path::PathBuf;

pub mod cost;
mod process;
mod proxy;

pub use process::Service;
pub use proxy::{CountingProxy, RequestCounts};

/// Where the `receiver` and `worker` executables are: `ORDERFLOW_BIN_DIR`, or the profile directory holding
/// the running test executable (`<target>/debug/deps/<test>` -> `<target>/debug`), which honours
/// `CARGO_TARGET_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ORDERFLOW_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let test_executable = std::env::current_exe().expect("the test executable's path");
    test_executable
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("the test executable lives in <target>/<profile>/deps")
}

/// A loopback port that was free a moment ago, for a child process that must be told its port up front.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("the ephemeral port").port()
}

/// moto's endpoint from `MOTO_ENDPOINT`; panics with instructions when it is unset.
pub fn moto_endpoint() -> String {
    std::env::var("MOTO_ENDPOINT")
        .expect("MOTO_ENDPOINT is not set: end-to-end tests need a moto server; run scripts/test.sh")
}
