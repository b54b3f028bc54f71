//! `tracing` set-up: one text shape and one JSON shape for every binary, so a log pipeline parses one format.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level next to `timestamp`, `level` and `target`.
    Json,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// A service's stdout, which its container runtime collects.
    Stdout,
    /// stderr, for a command whose stdout is its output (the load tool's tables).
    Stderr,
}

/// Installs the global subscriber, filtered by `RUST_LOG` or else `default_filter` (`"info"` for services; the
/// load tool keeps quiet with `"warn"`).
///
/// # Panics
/// If a global subscriber is already installed: a binary calls this once, first thing.
pub fn init(format: LogFormat, default_filter: &str, output: LogOutput) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(move || -> Box<dyn std::io::Write> {
            match output {
                LogOutput::Stdout => Box::new(std::io::stdout()),
                LogOutput::Stderr => Box::new(std::io::stderr()),
            }
        });
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
