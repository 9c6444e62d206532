use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = handler::cli::Cli::parse();
    handler::app::init_logging();
    match cli.run().await {
        Ok(code) => code,
        Err(error) => {
            // One clear sentence (with its causes), no backtrace.
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
