//! loadtest binary: parses the command line, sets up logging, and hands over to `loadtest::cli::execute`.

use clap::Parser;
use loadtest::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc, as the receiver and worker binaries use: the embedded runs host both services in this process,
/// and the generator allocates per request; glibc's free lists were a visible share of both.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Quiet by default: the tables are the output. RUST_LOG=info shows the services' logs.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    loadtest::cli::execute(cli).await
}
