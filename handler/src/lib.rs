//! Smartcache: a dataset behind a fast, cached HTTP API, run as an Azure Functions custom handler.
//!
//! # Layout
//!
//! Layers, lowest first. A module uses only modules of lower layers: a request goes down through
//! them and nothing calls back up (`tests/architecture.rs` reads every `crate::…` path and fails
//! on one that points up or sideways, and on any cycle).
//!
//! | layer | module | owns |
//! |---|---|---|
//! | 0 | [`config`] | every setting, read once at start-up from the environment; `Secret` |
//! | 1 | [`tls`] | the process's one TLS stack (rustls on ring) |
//! | 1 | [`breaker`] | the circuit breaker that skips a failing Redis or database for a moment |
//! | 2 | [`telemetry`] | logs (JSON lines when serving), OpenTelemetry traces and metrics |
//! | 2 | [`identity`] | Entra ID tokens from one lazily created credential per instance |
//! | 3 | [`datasets`] | declarations (`datasets/*.toml`), typed values and rows, the value rules; a declaration inferred from a CSV |
//! | 4 | [`query`] | a query string as typed filters, sort, limit, cursor; its canonical text |
//! | 5 | [`storage`] | the `Storage` trait and the SQL engines (SQLite, PostgreSQL, MySQL, SQL Server); the service's own tables |
//! | 5 | [`cache`] | cache-aside of finished answers, in process or in Redis; answer-aware invalidation, writes recorded before they commit |
//! | 6 | [`import`] | CSV → typed rows → a storage's staging area → atomic swap, or a sync of the rows that differ; rejections grouped |
//! | 6 | [`auth`] | accounts, tokens, Firebase, sign-in limits |
//! | 7 | [`blob`] | CSV blobs streamed from Azure Blob Storage (SAS, Shared Key or Entra ID); their versions |
//! | 8 | [`service`] | what the API does: reads, writes, imports, warm-up, sync of declared blobs, accounts; one span each |
//! | 9 | [`server`] | the listener of `handler serve`: timeouts and connection caps |
//! | 9 | [`http`] | the axum router from one endpoint table (its two hottest GETs matched before it); handlers; problem+json; OpenAPI; Swagger UI docs |
//! | 10 | [`app`] | wiring: settings → catalog → storage → router → listener |
//! | 10 | `lambda` | the same router under AWS Lambda (feature `lambda`) |
//! | 11 | [`cli`] | the `handler` subcommands (`datasets init` reads a CSV as `import` does) |

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
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod tls;
