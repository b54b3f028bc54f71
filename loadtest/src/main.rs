//! loadtest binary: parses the command line, sets up logging, and hands over to `loadtest::cli::execute`.

use clap::Parser;
use loadtest::cli::Cli;
use service_shell::logging::LogOutput;

/// mimalloc, as the receiver and worker binaries use: the embedded runs host both services in this process,
/// and the generator allocates per request; glibc's free lists were a visible share of both.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Quiet by default: the tables are the output (stdout). RUST_LOG=info shows the services' logs.
    service_shell::logging::init(cli.log_format, "warn", LogOutput::Stderr);
    loadtest::cli::execute(cli).await
}
