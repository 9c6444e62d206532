//! The `handler` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};

use crate::app::{Application, Context};
use crate::config::Settings;
use crate::import;

#[derive(Debug, Parser)]
#[command(
    name = "handler",
    version,
    about = "Smartcache: a dataset behind a fast, cached HTTP API"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API on 127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT (else $PORT, else 7071).
    Serve,
    /// Create the tables, import the bundled data of every empty dataset, and serve.
    Demo,
    /// Create or update the tables and indexes of every dataset.
    Migrate,
    /// Import a CSV file (optionally .gz) into a dataset, replacing its rows.
    /// Serve a file's bytes from memory on every path, with no cache logic: the baseline of the
    /// cache benchmark (bench/run.sh), on the same HTTP stack.
    #[command(hide = true)]
    BenchStatic {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        port: u16,
    },
    /// Recompute the hottest cached answers that are missing or near expiry (what the
    /// WarmCache timer function does); useful with REDIS_URL, where hot keys are shared.
    Warm,
    Import {
        /// The dataset, as named in its declaration under DATASETS_DIR.
        #[arg(long)]
        dataset: String,
        /// The CSV file.
        #[arg(long)]
        file: PathBuf,
    },
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        // The benchmark baseline needs no settings, database or cache.
        let command = match self.command {
            Command::BenchStatic { file, port } => return bench_static(&file, port).await,
            other => other,
        };
        let context = Context::from_settings(Settings::from_env()?)?;
        match command {
            Command::Serve => serve(context, started).await,
            Command::Demo => {
                demo_setup(&context).await?;
                serve(context, started).await
            }
            Command::Migrate => {
                migrate(&context).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Import { dataset, file } => run_import(&context, &dataset, &file).await,
            Command::BenchStatic { file, port } => bench_static(&file, port).await,
            Command::Warm => {
                let report = crate::http::warm(&context.state, crate::http::WARM_LIMIT).await;
                for line in &report.lines {
                    println!("{line}");
                }
                println!(
                    "warmed: {} refreshed, {} fresh, {} failed",
                    report.refreshed, report.fresh, report.failed
                );
                Ok(if report.failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
        }
    }
}

async fn serve(context: Context, started: Instant) -> anyhow::Result<ExitCode> {
    let app = Application::bind(context.state, context.settings.port).await?;
    tracing::info!(
        port = app.port(),
        database = %context.settings.database_url,
        ready_ms = started.elapsed().as_secs_f64() * 1000.0,
        "listening on http://127.0.0.1:{}/api",
        app.port()
    );
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

async fn migrate(context: &Context) -> anyhow::Result<()> {
    let storage = &context.state.storage;
    for dataset in context.state.catalog.iter() {
        storage.migrate(dataset).await.with_context(|| {
            format!(
                "cannot create the tables of {} in the {} database",
                dataset.name,
                storage.backend()
            )
        })?;
        println!("migrated {} ({})", dataset.name, storage.backend());
    }
    Ok(())
}

async fn demo_setup(context: &Context) -> anyhow::Result<()> {
    migrate(context).await?;
    for dataset in context.state.catalog.iter() {
        let Some(file) = &dataset.source_file else {
            continue;
        };
        if context.state.storage.count(dataset).await? > 0 {
            continue;
        }
        if !file.exists() {
            println!(
                "{}: no data ({} is missing), serving it empty",
                dataset.name,
                file.display()
            );
            continue;
        }
        let report =
            import::import_file(context.state.storage.as_ref(), dataset, file, true).await?;
        println!("{}", report.summary());
    }
    Ok(())
}

async fn run_import(
    context: &Context,
    name: &str,
    file: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let catalog = &context.state.catalog;
    let dataset = catalog.get(name).ok_or_else(|| {
        anyhow!(
            "there is no dataset named {name:?}; declared: {}",
            catalog.names().collect::<Vec<_>>().join(", ")
        )
    })?;
    let storage = context.state.storage.as_ref();
    let report = import::import_file(storage, dataset, file, true).await?;
    // Every cached answer of the dataset predates the new rows. With REDIS_URL this reaches the
    // serving instances; an in-process cache lives in the server, which holds its own answers.
    if context.state.cache.purge(&dataset.name).await.is_err() {
        eprintln!(
            "warning: the cache could not be told; cached answers of {name} expire by their TTL"
        );
    }
    for rejection in &report.rejections {
        eprintln!("rejected line {}: {}", rejection.line, rejection.reason);
    }
    if report.rejected > report.rejections.len() as u64 {
        eprintln!(
            "... and {} more rejected lines",
            report.rejected - report.rejections.len() as u64
        );
    }
    println!("{}", report.summary());
    Ok(ExitCode::SUCCESS)
}

async fn bench_static(file: &std::path::Path, port: u16) -> anyhow::Result<ExitCode> {
    let body = bytes::Bytes::from(
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let router = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, router).await?;
    Ok(ExitCode::SUCCESS)
}
