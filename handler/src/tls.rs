//! The process's one TLS stack: rustls on ring, shared by sqlx, redis, reqwest (Firebase, Blob
//! Storage, Entra ID, telemetry export) and tiberius.

/// reqwest is built without a crypto provider (so that the project has one TLS stack): makes
/// ring the process default, once, before the first TLS client is built.
pub fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
