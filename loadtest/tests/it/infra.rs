//! `loadtest infra up` / `infra down` against moto server, through the real binary.
//!
//! Run with `scripts/test.sh` (it starts moto and sets `MOTO_ENDPOINT`). Each run uses its own name prefix,
//! so it shares moto with the other tests.

use std::process::Command;

use ledger::dynamodb::DynamoLedger;
use ledger::{DEFAULT_RETENTION, Ledger, LedgerError};

const NEEDS_MOTO: &str = "MOTO_ENDPOINT is not set: these tests need a moto server; run scripts/test.sh";

fn loadtest(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest")).args(args).output().expect("running loadtest");
    assert!(output.status.success(), "loadtest {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn infra_up_creates_the_ledger_table_and_prints_its_name() {
    let endpoint = std::env::var("MOTO_ENDPOINT").expect(NEEDS_MOTO);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let name = format!("infra-{}-{nanos}", std::process::id());
    let up = loadtest(&["infra", "up", "--endpoint", &endpoint, "--name", &name]);
    let table = format!("{name}-orders");
    for key in ["ORDERS_TOPIC_ARN=", "ORDERS_QUEUE_URL=", "ORDERS_DLQ_URL="] {
        assert!(up.lines().any(|line| line.starts_with(key)), "{key} missing from:\n{up}");
    }
    assert!(up.lines().any(|line| line == format!("ORDERS_TABLE={table}")), "{up}");

    // The table exists: a lookup (of the nil id, which no order has) answers "no such order", not "no table".
    let config = bus::aws::config_for_emulator(&endpoint).await;
    let ledger = DynamoLedger::new(&config, &table, DEFAULT_RETENTION);
    assert_eq!(ledger.get(Default::default()).await, Ok(None));

    assert_eq!(loadtest(&["infra", "up", "--endpoint", &endpoint, "--name", &name]), up, "up is idempotent");

    let down = loadtest(&["infra", "down", "--endpoint", &endpoint, "--name", &name]);
    assert!(down.lines().any(|line| line == format!("deleted {table}")), "{down}");
    let gone = ledger.get(Default::default()).await;
    assert!(
        matches!(&gone, Err(LedgerError::Fatal { code, .. }) if code == "ResourceNotFoundException"),
        "{gone:?}"
    );
}
