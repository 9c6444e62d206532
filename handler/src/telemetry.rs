//! Logs, traces and metrics.
//!
//! - Logs: JSON lines on stdout while serving (what the Functions host forwards to its logs), or
//!   text on stderr for the other commands (their stdout is their output); `RUST_LOG` filters.
//! - Traces: every `tracing` span (a request, each database and Redis call under it) becomes an
//!   OpenTelemetry span, exported to Application Insights when
//!   `APPLICATIONINSIGHTS_CONNECTION_STRING` is set, else over OTLP/HTTP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is; a request continues the trace of its `traceparent` header.
//! - Metrics ([`metrics`]): request duration, cache outcomes, database call duration, warm-up
//!   results, exported the same way every 60 s (`OTEL_METRIC_EXPORT_INTERVAL`).
//!
//! Export never slows a request: spans wait in a bounded queue (2,048; `OTEL_BSP_MAX_QUEUE_SIZE`)
//! that a thread of the SDK drains in batches; when the endpoint is slow or down the queue fills
//! and new spans are dropped instead of waiting. The SDK counts them and says so in the log: a
//! warning when dropping starts, `dropped_span_count` at shutdown.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::TelemetrySettings;

/// Where the output of this process goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `serve`, `demo`: JSON lines on stdout.
    Server,
    /// Every other command: text on stderr.
    Command,
}

/// The exporters, flushed and stopped by [`Telemetry::shutdown`].
#[derive(Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Sends what is still queued (at most a few seconds), then stops the exporters.
    pub async fn shutdown(self) {
        // The SDK's shutdown blocks until its export thread is done, and that thread's HTTP
        // calls run on this runtime: wait off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(traces) = self.traces {
                let _ = traces.shutdown();
            }
            if let Some(metrics) = self.metrics {
                let _ = metrics.shutdown();
            }
        })
        .await;
    }
}

/// Which exporter the environment asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Exporter {
    ApplicationInsights(String),
    Otlp(String),
    None,
}

impl Exporter {
    pub fn from_settings(settings: &TelemetrySettings) -> Exporter {
        match (&settings.application_insights, &settings.otlp_endpoint) {
            (Some(connection_string), _) => {
                Exporter::ApplicationInsights(connection_string.expose().to_owned())
            }
            (None, Some(endpoint)) => Exporter::Otlp(endpoint.clone()),
            (None, None) => Exporter::None,
        }
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Exporter {
        Exporter::from_settings(&TelemetrySettings::from_lookup(lookup))
    }
}

/// Sets up logging and, when configured, trace and metric export. Call once, inside the runtime.
pub fn init(output: Output, settings: &TelemetrySettings) -> Telemetry {
    let exporter = Exporter::from_settings(settings);
    let (telemetry, error) = match exporters(&exporter, settings.metric_export_interval) {
        Ok(telemetry) => (telemetry, None),
        // Telemetry must not stop the service: log why, and serve without export.
        Err(error) => (Telemetry::default(), Some(error)),
    };
    let filter = || {
        let chosen = settings.log_filter.as_deref().map(EnvFilter::try_new);
        chosen.and_then(Result::ok).unwrap_or_else(|| {
            // The SDK's own diagnostics only when they matter (dropped spans are a warning).
            EnvFilter::new("info,sqlx=warn,opentelemetry=warn,opentelemetry_sdk=warn")
        })
    };
    let logs = match output {
        Output::Server => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .with_filter(filter())
            .boxed(),
        Output::Command => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let traces = telemetry.traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("smartcache"))
            // Spans only from our code and the levels RUST_LOG lets through.
            .with_filter(filter())
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    if let Some(metrics) = &telemetry.metrics {
        opentelemetry::global::set_meter_provider(metrics.clone());
        metrics::EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    if let Some(error) = error {
        tracing::error!(error = format!("{error:#}"), "telemetry export is off");
    }
    telemetry
}

fn resource() -> Resource {
    Resource::builder()
        .with_service_name("smartcache")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

fn exporters(exporter: &Exporter, interval: Duration) -> anyhow::Result<Telemetry> {
    let client = ExportClient::new()?;
    let telemetry = match exporter {
        Exporter::None => return Ok(Telemetry::default()),
        Exporter::ApplicationInsights(connection_string) => {
            let mut export =
                opentelemetry_application_insights::Exporter::new_from_connection_string(
                    connection_string,
                    client,
                )
                .map_err(|e| anyhow::anyhow!("APPLICATIONINSIGHTS_CONNECTION_STRING: {e}"))?;
            // The connection string parser makes every endpoint https; a local stand-in of the
            // ingestion endpoint (tests, an emulator) speaks plain http on loopback.
            if let Some(local) = loopback_ingestion_endpoint(connection_string) {
                #[allow(deprecated)]
                {
                    export = export
                        .with_endpoint(&local)
                        .map_err(|e| anyhow::anyhow!("IngestionEndpoint: {e}"))?;
                }
            }
            Telemetry {
                traces: Some(
                    SdkTracerProvider::builder()
                        .with_resource(resource())
                        .with_batch_exporter(export.clone())
                        .build(),
                ),
                metrics: Some(
                    SdkMeterProvider::builder()
                        .with_resource(resource())
                        .with_reader(
                            PeriodicReader::builder(export)
                                .with_interval(interval)
                                .build(),
                        )
                        .build(),
                ),
            }
        }
        Exporter::Otlp(_) => {
            use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
            // The endpoint comes from OTEL_EXPORTER_OTLP_ENDPOINT (with /v1/traces and
            // /v1/metrics appended by the exporter).
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client.clone())
                .with_protocol(Protocol::HttpBinary)
                .build()
                .context("OTEL_EXPORTER_OTLP_ENDPOINT")?;
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(Protocol::HttpBinary)
                .build()
                .context("OTEL_EXPORTER_OTLP_ENDPOINT")?;
            Telemetry {
                traces: Some(
                    SdkTracerProvider::builder()
                        .with_resource(resource())
                        .with_batch_exporter(spans)
                        .build(),
                ),
                metrics: Some(
                    SdkMeterProvider::builder()
                        .with_resource(resource())
                        .with_reader(
                            PeriodicReader::builder(metrics)
                                .with_interval(interval)
                                .build(),
                        )
                        .build(),
                ),
            }
        }
    };
    Ok(telemetry)
}

/// `IngestionEndpoint=http://127.0.0.1:…` (or `localhost`), kept as plain http.
fn loopback_ingestion_endpoint(connection_string: &str) -> Option<String> {
    connection_string.split(';').find_map(|part| {
        let (name, value) = part.split_once('=')?;
        let value = value.trim();
        let loopback =
            value.starts_with("http://127.0.0.1") || value.starts_with("http://localhost");
        (name.trim().eq_ignore_ascii_case("IngestionEndpoint") && loopback)
            .then(|| value.trim_end_matches('/').to_owned())
    })
}

/// The exporters' HTTP client: the project's reqwest (one TLS stack), its calls run on the
/// service's runtime although the SDK's export thread makes them.
#[derive(Debug, Clone)]
struct ExportClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl ExportClient {
    fn new() -> anyhow::Result<ExportClient> {
        crate::tls::install_provider();
        Ok(ExportClient {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("cannot create the telemetry HTTP client")?,
            runtime: tokio::runtime::Handle::try_current()
                .context("telemetry starts inside the runtime")?,
        })
    }
}

#[async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move {
                let (parts, body) = request.into_parts();
                let response = client
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await?;
                let mut answer = http::Response::builder().status(response.status());
                if let Some(headers) = answer.headers_mut() {
                    *headers = response.headers().clone();
                }
                let body = response.bytes().await?;
                Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
            })
            .await?
    }
}

/// The service's metrics, created on first use from the global meter provider (a no-op one
/// when nothing is exported).
pub mod metrics {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Whether a meter provider exports what is recorded. Without one, the per-request metrics
    /// are not even built (their attributes are four allocations a request: ~2% of a cache hit).
    pub(super) static EXPORTING: AtomicBool = AtomicBool::new(false);

    use opentelemetry::KeyValue;
    use opentelemetry::metrics::{Counter, Histogram};

    /// Whether per-request metrics are recorded (a meter provider exports them).
    pub fn exporting() -> bool {
        EXPORTING.load(Ordering::Relaxed)
    }

    struct Instruments {
        request_duration: Histogram<f64>,
        cache_outcomes: Counter<u64>,
        db_duration: Histogram<f64>,
        warmups: Counter<u64>,
    }

    fn instruments() -> &'static Instruments {
        static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
        INSTRUMENTS.get_or_init(|| {
            let meter = opentelemetry::global::meter("smartcache");
            Instruments {
                request_duration: meter
                    .f64_histogram("http.server.request.duration")
                    .with_unit("s")
                    .with_description("Duration of HTTP requests")
                    .build(),
                cache_outcomes: meter
                    .u64_counter("smartcache.cache.outcomes")
                    .with_description("Cached-data answers by outcome: HIT, MISS, STALE, BYPASS")
                    .build(),
                db_duration: meter
                    .f64_histogram("db.client.operation.duration")
                    .with_unit("s")
                    .with_description("Duration of database calls")
                    .build(),
                warmups: meter
                    .u64_counter("smartcache.warmup.results")
                    .with_description("Cache warm-up results: refreshed, fresh, failed")
                    .build(),
            }
        })
    }

    pub fn request(method: &str, route: &str, status: u16, elapsed: Duration) {
        if !EXPORTING.load(Ordering::Relaxed) {
            return;
        }
        instruments().request_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("http.route", route.to_owned()),
                KeyValue::new("http.response.status_code", i64::from(status)),
            ],
        );
    }

    pub fn cache_outcome(outcome: &str, dataset: &str) {
        if !EXPORTING.load(Ordering::Relaxed) {
            return;
        }
        instruments().cache_outcomes.add(
            1,
            &[
                KeyValue::new("cache.outcome", outcome.to_owned()),
                KeyValue::new("dataset", dataset.to_owned()),
            ],
        );
    }

    pub fn db_call(system: &'static str, operation: &'static str, elapsed: Duration) {
        instruments().db_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("db.system", system),
                KeyValue::new("db.operation.name", operation),
            ],
        );
    }

    pub fn warmup(refreshed: u64, fresh: u64, failed: u64) {
        let warmups = &instruments().warmups;
        for (result, count) in [
            ("refreshed", refreshed),
            ("fresh", fresh),
            ("failed", failed),
        ] {
            warmups.add(count, &[KeyValue::new("result", result)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_picks_one_exporter() {
        let lookup = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Exporter::from_lookup(lookup(&[])), Exporter::None);
        assert_eq!(
            Exporter::from_lookup(lookup(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])),
            Exporter::Otlp("http://c:4318".into())
        );
        // Application Insights wins when both are set; blank values count as unset.
        assert_eq!(
            Exporter::from_lookup(lookup(&[
                (
                    "APPLICATIONINSIGHTS_CONNECTION_STRING",
                    "InstrumentationKey=k"
                ),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ])),
            Exporter::ApplicationInsights("InstrumentationKey=k".into())
        );
        assert_eq!(
            Exporter::from_lookup(lookup(&[("APPLICATIONINSIGHTS_CONNECTION_STRING", " ")])),
            Exporter::None
        );
        assert_eq!(
            loopback_ingestion_endpoint(
                "InstrumentationKey=k;IngestionEndpoint=http://127.0.0.1:9/;LiveEndpoint=x"
            )
            .as_deref(),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(
            loopback_ingestion_endpoint(
                "InstrumentationKey=k;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/"
            ),
            None
        );
    }
}
