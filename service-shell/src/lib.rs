//! The service shell: what every orderflow binary (receiver, worker, the load tool's in-process stack and the
//! benches) runs inside, defined once so the copies cannot drift apart.
//!
//! - [`logging`]: `tracing` set-up with one text and one JSON shape, chosen by `LOG_FORMAT`.
//! - [`shutdown`]: the future that completes on SIGTERM (ECS stopping a task) or SIGINT (Ctrl-C).
//! - [`health`]: the `--check-health` mode a container health check runs (the runtime image has no curl).
//! - [`prometheus`]: the process-wide Prometheus recorder with named histogram bucket sets, and its upkeep.
//! - [`defaults`]: flag defaults read from a config's `Default`, so each default is written once.
//!
//! [`ShellArgs`] gathers the flags every service takes; binaries flatten it into their own `Args`.

pub mod defaults;
pub mod health;
pub mod logging;
pub mod prometheus;
pub mod shutdown;

pub use logging::LogFormat;

/// The flags every service binary takes, with the same names and environment variables everywhere.
#[derive(Debug, Clone, clap::Args)]
pub struct ShellArgs {
    /// Log format: human-readable text, or one JSON object per line (event fields at the top level) for log
    /// collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Instead of serving, GET http://127.0.0.1:$PORT/health (2 s timeout) and exit 0 on 200, 1 otherwise: the
    /// container health check (the runtime image has no curl).
    #[arg(long, env = health::CHECK_HEALTH_ENV)]
    pub check_health: bool,
}

/// The exit code for a service started without what it needs: 2, as clap exits on a usage error, so a
/// supervisor can tell a misconfiguration from a crash.
pub const MISCONFIGURED_EXIT_CODE: i32 = 2;

/// Exits with [`MISCONFIGURED_EXIT_CODE`] after printing each problem on stderr as `error: …`, then
/// `suggestion` (what to run instead), before logging is set up.
pub fn exit_misconfigured(problems: &[&str], suggestion: &str) -> ! {
    for problem in problems {
        eprintln!("error: {problem}");
    }
    eprintln!("{suggestion}");
    std::process::exit(MISCONFIGURED_EXIT_CODE)
}

/// What to run to try orderflow without AWS: every service's misconfiguration message ends with it.
pub const LOCAL_PIPELINE_HINT: &str =
    "To run the whole pipeline locally on the embedded bus instead: cargo run --release -p loadtest -- up";
