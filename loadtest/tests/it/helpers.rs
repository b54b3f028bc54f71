//! What the tests share: a run plan without drain watch or progress bar, experiment settings, and headless
//! Chromium for the browser tests.

use std::time::Duration;

use loadgen::LoadModel;
use loadgen::client::{RequestSpec, Target};
use loadtest::experiment::{Environment, ExperimentSettings};
use loadtest::runner::RunPlan;
use loadtest::scenario::TimeScale;

/// A plan to run `model` with `spec` against `target` as `scenario/async`, without watching a drain or
/// drawing progress; the timeline is sampled every `sample_every`.
pub fn plan(
    scenario: &str,
    target: Target,
    spec: RequestSpec,
    model: LoadModel,
    sample_every: Duration,
    late_threshold: Duration,
) -> RunPlan {
    RunPlan {
        scenario: scenario.into(),
        mode: "async".into(),
        spec,
        target,
        model,
        sample_every,
        late_threshold,
        drain: None,
        progress: false,
    }
}

/// Experiment settings on time scale `k`, without keys or progress bar, the timeline sampled every second and
/// drains watched for at most `drain_cap`.
pub fn settings(
    environment: Environment,
    k: f64,
    drain_cap: Duration,
    late_threshold: Duration,
) -> ExperimentSettings {
    ExperimentSettings {
        environment,
        time_scale: TimeScale::new(k),
        drain_cap,
        late_threshold,
        sample_every: Duration::from_secs(1),
        progress: false,
        idempotency: None,
    }
}

/// The browser: `$CHROMIUM`, else Debian's. Missing, the test fails (never skips): scripts/test.sh installs it.
pub fn chromium() -> std::path::PathBuf {
    let path =
        std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), std::path::PathBuf::from);
    assert!(
        path.exists(),
        "no Chromium at {}: run scripts/test.sh (it installs Debian's chromium), or set CHROMIUM",
        path.display()
    );
    path
}

/// Longest a Chromium run may take before it is killed and the test fails.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(90);

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=…`) in a fresh profile, and
/// returns its stdout; kills it past the deadline.
pub async fn run_chromium(url: &str, args: &[String]) -> String {
    let profile = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-profile-{}", uuid::Uuid::new_v4()));
    let child = tokio::process::Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting chromium");
    let output = tokio::time::timeout(CHROMIUM_DEADLINE, child.wait_with_output())
        .await
        .expect("chromium finished within its deadline (it is killed otherwise)")
        .expect("chromium ran");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}
