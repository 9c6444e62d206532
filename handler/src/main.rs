use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = handler::cli::Cli::parse();
    let telemetry = handler::telemetry::init(cli.output());
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
