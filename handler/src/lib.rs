//! Smartcache: a dataset behind a fast, cached HTTP API, run as an Azure Functions custom handler.
//!
//! # Layout
//! - [`config`]: settings from the environment, read once at start-up.
//! - [`datasets`]: dataset declarations (`datasets/*.toml`), typed values, and the value rules
//!   that imports and writes share (`datasets::rules`).
//! - [`query`]: a request's query string as typed filters, sort, limit and cursor; its canonical
//!   text is what cache keys are made of.
//! - [`storage`]: the `Storage` trait and the SQL backends (SQLite, PostgreSQL, MySQL/MariaDB,
//!   SQL Server).
//! - [`import`]: CSV → typed rows → a storage's staging area → atomic swap.
//! - [`blob`]: CSV blobs streamed from Azure Blob Storage (SAS, Shared Key or Entra ID).
//! - [`identity`]: Entra ID tokens from one lazily created credential per instance.
//! - [`http`]: the axum router, built from one endpoint table shared with the OpenAPI document and
//!   checked against `functions/*/function.json`.
//! - [`app`]: wiring: settings → catalog → storage → router → listener.
//! - [`server`]: the listener of `handler serve`: hyper's HTTP/1 server with timeouts (header,
//!   idle, write progress) and a cap on open connections.
//! - [`auth`]: accounts, tokens, Firebase, and the sign-in limits (`auth::limits`).
//! - [`cache`]: cache-aside of finished responses in process or in Redis, exact invalidation.
//! - [`breaker`]: the circuit breaker that skips a failing Redis or database for a moment.
//! - [`cli`]: the `handler` subcommands.
//! - [`telemetry`]: logs (JSON lines when serving), OpenTelemetry traces and metrics to
//!   Application Insights or OTLP.

pub mod app;
pub mod auth;
pub mod blob;
pub mod breaker;
pub mod cache;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod http;
pub mod identity;
pub mod import;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod query;
pub mod server;
pub mod storage;
pub mod telemetry;
