//! The `handler` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};

use crate::app::{Application, Context};
use crate::config::Settings;
use crate::datasets::ImportMode;
use crate::import::ImportOptions;
use crate::query::Query;
use crate::service::ImportFrom;

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
    /// Serve a file's bytes from memory on every path, with no cache logic: the baseline of the
    /// cache benchmark (bench/run.sh), on the same HTTP stack.
    #[command(hide = true)]
    BenchStatic {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        port: u16,
        /// Sent as `Content-Encoding` (the file then holds bytes already so encoded).
        #[arg(long)]
        content_encoding: Option<String>,
    },
    /// Recompute the hottest cached answers that are missing or near expiry (what the
    /// WarmCache timer function does); useful with REDIS_URL, where hot keys are shared.
    Warm,
    /// Import again each dataset whose declaration names a blob (`[import] blob`) if the blob
    /// changed since its last sync (what the SyncDatasets timer function does).
    Sync,
    /// Import a CSV file or Azure blob (optionally .gz) into a dataset, replacing its rows.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["file", "blob"])))]
    Import {
        /// The dataset, as named in its declaration under DATASETS_DIR.
        #[arg(long)]
        dataset: String,
        /// The CSV file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The blob's URL, streamed (never held in memory whole): with a SAS in its query, or
        /// the account key of AZURE_STORAGE_CONNECTION_STRING, or the Entra ID identity.
        /// `-` reads it from standard input (a SAS on the command line shows in `ps`).
        #[arg(long)]
        blob: Option<String>,
        /// Write every rejected line here as CSV: its line number, column, reason and value,
        /// then its fields under the file's own header (fix them and import them again).
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
        /// `replace` every row (and every cached answer), or `sync`: change only the rows that
        /// differ by key, ending only the cached answers they change. Default: the dataset's
        /// `[import] mode`, else replace.
        #[arg(long)]
        mode: Option<ImportMode>,
    },
    /// Write dataset declarations.
    Datasets {
        #[command(subcommand)]
        action: DatasetsCommand,
    },
    /// Manage accounts: the first admin is made here, never through the API.
    Users {
        #[command(subcommand)]
        action: UsersCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DatasetsCommand {
    /// Read a CSV file (optionally .gz) whole and write a commented declaration that imports it:
    /// column types, missing values, lists, lengths, a key, filters and sorts.
    Init {
        /// The CSV file.
        #[arg(long)]
        file: PathBuf,
        /// The dataset's name (default: made from the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Where to write the declaration (default: datasets/<name>.toml).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace the declaration if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create an account, reading its password from standard input (never an argument, which
    /// other users of the machine could see).
    Create {
        #[arg(long)]
        email: String,
        /// Read the password from standard input (required).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Make the account an admin.
        #[arg(long)]
        admin: bool,
    },
    /// Make an existing account an admin.
    Promote {
        #[arg(long)]
        email: String,
    },
    /// Make an admin a plain user again; takes effect on their next request.
    Demote {
        #[arg(long)]
        email: String,
    },
    /// Stop an account from signing in or using its tokens, at once.
    Deactivate {
        #[arg(long)]
        email: String,
    },
    /// Let a deactivated account sign in again.
    Activate {
        #[arg(long)]
        email: String,
    },
}

impl Cli {
    /// Servers log JSON lines on stdout (the Functions host forwards them); the other commands
    /// keep stdout for their output and log text on stderr.
    pub fn output(&self) -> crate::telemetry::Output {
        match self.command {
            Command::Serve | Command::Demo => crate::telemetry::Output::Server,
            _ => crate::telemetry::Output::Command,
        }
    }

    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        // The benchmark baseline needs no settings, database or cache.
        let command = match self.command {
            Command::BenchStatic {
                file,
                port,
                content_encoding,
            } => return bench_static(&file, port, content_encoding).await,
            // Writing a declaration needs no settings either.
            Command::Datasets {
                action:
                    DatasetsCommand::Init {
                        file,
                        name,
                        out,
                        force,
                    },
            } => return datasets_init(&file, name.as_deref(), out, force),
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
            Command::Import {
                dataset,
                file,
                blob,
                rejects,
                mode,
            } => {
                let options = ImportOptions {
                    show_progress: true,
                    rejects,
                    mode,
                };
                run_import(
                    &context,
                    &dataset,
                    file.as_deref(),
                    blob.as_deref(),
                    &options,
                )
                .await
            }
            Command::Users { action } => users(&context, action).await,
            Command::Datasets { .. } => unreachable!("handled before the settings are read"),
            Command::BenchStatic {
                file,
                port,
                content_encoding,
            } => bench_static(&file, port, content_encoding).await,
            Command::Sync => {
                let report = context.service.sync_datasets().await;
                let total = format!(
                    "sync: {} synced, {} unchanged, {} failed",
                    report.synced, report.unchanged, report.failed
                );
                Ok(print_run(&report.lines(), &total, report.failed))
            }
            Command::Warm => {
                let report = context.service.warm(crate::service::WARM_LIMIT).await;
                let total = format!(
                    "warmed: {} refreshed, {} fresh, {} failed",
                    report.refreshed, report.fresh, report.failed
                );
                Ok(print_run(&report.lines, &total, report.failed))
            }
        }
    }
}

/// A timer's run done from the command line: its lines, then its total; failing if any part did.
fn print_run(lines: &[String], total: &str, failed: usize) -> ExitCode {
    for line in lines {
        println!("{line}");
    }
    println!("{total}");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn serve(context: Context, started: Instant) -> anyhow::Result<ExitCode> {
    #[cfg(feature = "lambda")]
    if crate::lambda::is_lambda() {
        tracing::info!("serving Lambda events");
        crate::lambda::run(context.app_state()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let address = std::net::SocketAddr::new(context.settings.bind_address, context.settings.port);
    let app = Application::bind_to(context.app_state(), address)
        .await?
        .with_connection_limits(context.settings.connections.clone());
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
    let storage = &context.service.storage;
    for dataset in context.service.catalog.iter() {
        let migrated = storage.migrate(dataset).await.with_context(|| {
            format!(
                "cannot create the tables of {} in the {} database",
                dataset.name,
                storage.backend()
            )
        })?;
        // Also what an earlier migration, cut short, left to fill.
        let finished = storage
            .fill_keys(dataset)
            .await
            .with_context(|| format!("cannot fill the hidden keys of {}", dataset.name))?;
        let filled = migrated.keys_filled + finished.keys_filled;
        if filled > 0 {
            context.service.cache.purge(&dataset.name).await.map_err(|_| {
                anyhow::anyhow!(
                    "filled {filled} hidden keys of {name}, but could not purge its cached answers: \
                     purge them (DELETE /api/admin/cache?dataset={name}) once the cache is back",
                    name = dataset.name
                )
            })?;
        }
        println!(
            "migrated {} ({}){}",
            dataset.name,
            storage.backend(),
            match filled {
                0 => String::new(),
                n => format!("; filled the case-insensitive keys of {n} rows"),
            }
        );
    }
    Ok(())
}

async fn demo_setup(context: &Context) -> anyhow::Result<()> {
    migrate(context).await?;
    for dataset in context.service.catalog.iter() {
        let Some(file) = &dataset.source_file else {
            continue;
        };
        if context
            .service
            .storage
            .count(dataset, &Query::every_row(dataset))
            .await?
            > 0
        {
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
        let from = ImportFrom::File(file.clone());
        let options = ImportOptions {
            show_progress: true,
            ..ImportOptions::default()
        };
        let report = context
            .service
            .import(&dataset.name, from, &options)
            .await?;
        println!("{}", report.summary());
    }
    Ok(())
}

async fn run_import(
    context: &Context,
    name: &str,
    file: Option<&std::path::Path>,
    blob: Option<&str>,
    options: &ImportOptions,
) -> anyhow::Result<ExitCode> {
    let from = match (file, blob) {
        (Some(file), _) => ImportFrom::File(file.to_owned()),
        // `-`: the URL from standard input, so that a SAS stays out of `ps` and shell history.
        (None, Some("-")) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the blob URL from standard input")?;
            ImportFrom::Blob(line.trim().to_owned())
        }
        (None, Some(url)) => ImportFrom::Blob(url.to_owned()),
        (None, None) => anyhow::bail!("give --file or --blob"),
    };
    let report = context.service.import(name, from, options).await?;
    if let Some(peak) = peak_memory_mib() {
        eprintln!("peak memory: {peak} MiB");
    }
    // One line per (column, reason), not per rejected line: the lines go to --rejects.
    if report.rejected > 0 {
        eprintln!("rejected {} lines, by reason:", report.rejected);
        for group in report.grouped() {
            eprintln!("  {group}");
        }
        match &options.rejects {
            Some(path) => eprintln!("every rejected line is in {}", path.display()),
            None => eprintln!("every rejected line, with its reason: --rejects FILE"),
        }
    }
    println!("{}", report.summary());
    Ok(ExitCode::SUCCESS)
}

/// `handler datasets init`: reads the whole file the way an import does and writes the
/// declaration its rows suggest (see [`crate::datasets::infer`]).
fn datasets_init(
    file: &std::path::Path,
    name: Option<&str>,
    out: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    use crate::datasets::infer::{Inferrer, dataset_name, thousands};
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = dataset_name(name, &file_name)?;
    let out = out.unwrap_or_else(|| PathBuf::from("datasets").join(format!("{name}.toml")));
    if out.exists() && !force {
        anyhow::bail!(
            "{} exists already: give --force to replace it, or --out",
            out.display()
        );
    }
    let source = crate::import::ImportSource::file(file)?;
    let mut csv = crate::import::csv_reader(source.reader, source.gzipped);
    let mut inferrer = Inferrer::new(crate::import::header_names(&mut csv)?);
    let mut record = csv::ByteRecord::new();
    loop {
        match csv.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => match error.kind() {
                csv::ErrorKind::Io(_) => {
                    return Err(anyhow!(error).context(format!("cannot read {}", file.display())));
                }
                _ => {
                    let line = error.position().map_or(0, |p| p.line());
                    inferrer.malformed(line, error.to_string());
                    continue;
                }
            },
        }
        let line = record.position().map_or(0, |p| p.line());
        let fields: Result<Vec<&str>, _> = record.iter().map(std::str::from_utf8).collect();
        match fields {
            Ok(fields) => inferrer.observe(&fields, line),
            Err(_) => inferrer.malformed(line, "not valid UTF-8".into()),
        }
    }
    let inference = inferrer.finish();
    // `source_file` only when the CSV sits beside the declaration, where a relative name works.
    let beside = match (file.parent(), out.parent()) {
        (Some(a), Some(b)) => std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok(),
        _ => false,
    };
    let text = inference.render(&name, &file_name, beside.then_some(file_name.as_str()));
    crate::datasets::parse_declaration(&text, out.parent())
        .context("the declaration written is not valid (a bug in datasets init)")?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&out, text).with_context(|| format!("cannot write {}", out.display()))?;
    if inference.malformed > 0 {
        eprintln!(
            "warning: {} records of {} will be rejected by any import (see the declaration's first comments)",
            thousands(inference.malformed),
            file.display()
        );
    }
    println!(
        "wrote {} ({} columns) from {} rows of {}",
        out.display(),
        inference.columns.len(),
        thousands(inference.rows),
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The process's peak resident memory (Linux), which an import of any size keeps flat.
fn peak_memory_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

async fn users(context: &Context, action: UsersCommand) -> anyhow::Result<ExitCode> {
    use crate::auth::{Role, password};
    use crate::storage::{NewUser, StorageError, UserLookup, UserUpdate};
    let storage = &context.service.storage;
    let (email, change) = match action {
        UsersCommand::Create { email, admin, .. } => {
            let email = crate::auth::check_email(&email).map_err(|e| anyhow!("{e}"))?;
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            if let Some(reason) = password::policy_violation(password) {
                anyhow::bail!("the password {reason}");
            }
            let role = if admin { Role::Admin } else { Role::User };
            let created = match context.service.auth.as_deref() {
                // With Firebase, the account is made there too, so that it can sign in.
                Some(auth) if auth.provider() == crate::config::AuthProvider::Firebase => {
                    let user = auth
                        .create_vouched(&email, password)
                        .await
                        .map_err(|e| anyhow!("{e}"))?;
                    let change = UserUpdate {
                        role: Some(role.as_str().to_owned()),
                        active: None,
                    };
                    storage.update_user(user.id, change).await
                }
                _ => {
                    let user = NewUser {
                        email: email.clone(),
                        password_hash: Some(password::hash(password)?),
                        firebase_uid: None,
                        role: role.as_str().to_owned(),
                    };
                    storage.create_user(user).await
                }
            };
            let user = match created {
                Err(StorageError::Conflict) => {
                    anyhow::bail!("an account with the email {email} exists already")
                }
                other => other.context("cannot create the account")?,
            };
            println!("created {} {} (id {})", user.role, user.email, user.id);
            return Ok(ExitCode::SUCCESS);
        }
        UsersCommand::Promote { email } => (
            email,
            UserUpdate {
                role: Some("admin".into()),
                active: None,
            },
        ),
        UsersCommand::Demote { email } => (
            email,
            UserUpdate {
                role: Some("user".into()),
                active: None,
            },
        ),
        UsersCommand::Deactivate { email } => (
            email,
            UserUpdate {
                role: None,
                active: Some(false),
            },
        ),
        UsersCommand::Activate { email } => (
            email,
            UserUpdate {
                role: None,
                active: Some(true),
            },
        ),
    };
    let user = storage
        .find_user(UserLookup::Email(email.clone()))
        .await
        .context("cannot read the accounts table")?
        .ok_or_else(|| anyhow!("there is no account with the email {email}"))?;
    let user = storage.update_user(user.id, change).await?;
    let state = if user.active { "active" } else { "deactivated" };
    println!("{} is now {} ({state})", user.email, user.role);
    Ok(ExitCode::SUCCESS)
}

async fn bench_static(
    file: &std::path::Path,
    port: u16,
    content_encoding: Option<String>,
) -> anyhow::Result<ExitCode> {
    use axum::http::{HeaderMap, HeaderValue, header};
    let body = bytes::Bytes::from(
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(encoding) = content_encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_str(&encoding)?);
    }
    let router = axum::Router::new().fallback(move || {
        let (headers, body) = (headers.clone(), body.clone());
        async move { (headers, body) }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    // The same listener as `serve`, so that a comparison measures the cache logic only.
    let limits = crate::config::ConnectionLimits::default();
    let local = crate::config::TrustedProxies::default().with_loopback();
    crate::server::serve(listener, router, limits, local, std::future::pending()).await?;
    Ok(ExitCode::SUCCESS)
}
