//! Settings of the platform the process runs on, read apart from [`super::Settings`] because
//! they are needed before it (telemetry starts first) or deep inside a lazily made client (the
//! Azure credential). None of them can fail: an unset or unreadable value turns the feature off.

use std::time::Duration;

use super::Secret;
use super::vars::Vars;

/// Where traces and metrics go.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `APPLICATIONINSIGHTS_CONNECTION_STRING` (wins over OTLP when both are set).
    pub application_insights: Option<Secret>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// `OTEL_METRIC_EXPORT_INTERVAL`, in milliseconds (default a minute).
    pub metric_export_interval: Duration,
    /// `RUST_LOG`: which logs and spans are kept.
    pub log_filter: Option<String>,
}

impl TelemetrySettings {
    pub fn from_env() -> Self {
        TelemetrySettings::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let vars = Vars::new(lookup);
        TelemetrySettings {
            application_insights: vars
                .non_empty("APPLICATIONINSIGHTS_CONNECTION_STRING")
                .map(Secret::new),
            otlp_endpoint: vars.non_empty("OTEL_EXPORTER_OTLP_ENDPOINT"),
            metric_export_interval: vars
                .non_empty("OTEL_METRIC_EXPORT_INTERVAL")
                .and_then(|v| v.trim().parse().ok())
                .map_or(Duration::from_secs(60), Duration::from_millis),
            log_filter: vars.non_empty("RUST_LOG"),
        }
    }
}

/// Which Entra ID credential the instance has.
#[derive(Debug, Clone, Default)]
pub struct IdentitySettings {
    /// `AZURE_FEDERATED_TOKEN_FILE`: workload identity (AKS).
    pub workload_identity: bool,
    /// `IDENTITY_ENDPOINT` or `MSI_ENDPOINT`: a managed identity (App Service, Functions,
    /// Container Apps).
    pub managed_identity: bool,
    /// `AZURE_CLIENT_ID`: which user-assigned managed identity.
    pub client_id: Option<String>,
}

impl IdentitySettings {
    pub fn from_env() -> Self {
        let vars = Vars::new(|name: &str| std::env::var(name).ok());
        IdentitySettings {
            workload_identity: vars.non_empty("AZURE_FEDERATED_TOKEN_FILE").is_some(),
            managed_identity: vars.non_empty("IDENTITY_ENDPOINT").is_some()
                || vars.non_empty("MSI_ENDPOINT").is_some(),
            client_id: vars.non_empty("AZURE_CLIENT_ID"),
        }
    }
}

/// Whether the AWS Lambda runtime started this process (`AWS_LAMBDA_RUNTIME_API`).
pub fn started_by_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}
