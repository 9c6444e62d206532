use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc: per-request allocations (rows, JSON, headers) cost far fewer instructions than in
/// glibc's malloc, which also stalls in `malloc_consolidate` (bench/README.md, issue 14).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // The Lambda runtime starts the binary without arguments: that means `serve`.
    let cli = if std::env::args_os().len() == 1 && handler::config::started_by_lambda() {
        handler::cli::Cli::parse_from(["handler", "serve"])
    } else {
        handler::cli::Cli::parse()
    };
    let telemetry_settings = handler::config::TelemetrySettings::from_env();
    let telemetry = handler::telemetry::init(cli.output(), &telemetry_settings);
    let code = match cli.run().await {
        Ok(code) => code,
        Err(error) => {
            // One clear sentence (with its causes), no backtrace.
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    };
    telemetry.shutdown().await;
    code
}
