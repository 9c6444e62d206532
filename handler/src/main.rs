use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    // The Lambda runtime starts the binary without arguments: that means `serve`.
    let cli =
        if std::env::args_os().len() == 1 && std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
            handler::cli::Cli::parse_from(["handler", "serve"])
        } else {
            handler::cli::Cli::parse()
        };
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
