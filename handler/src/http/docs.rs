//! `GET /api/docs`: Swagger UI on this server's OpenAPI document, from assets compiled into the
//! binary (`assets/swagger-ui`, vendored from npm): it works offline and loads nothing from
//! elsewhere, which the page's Content-Security-Policy enforces.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::data::{Accepted, Coding};
use super::error::ApiError;
use crate::service::ServiceError;

/// The vendored Swagger UI's version (`assets/swagger-ui/README.md`); part of every asset's ETag.
pub const SWAGGER_UI_VERSION: &str = "5.35.0";

/// Scripts and styles from this server only; Swagger UI draws icons as `data:` images and sets
/// inline styles; requests go to this origin only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One served file: its bytes, and a gzipped copy made on first use.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    gzipped: OnceLock<Vec<u8>>,
}

/// What `GET /api/docs/{asset}` serves.
pub const ASSET_NAMES: [&str; 3] = ["swagger-ui-bundle.js", "swagger-ui.css", "docs.js"];

static ASSETS: [Asset; 3] = [
    Asset {
        name: "swagger-ui-bundle.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js"),
        gzipped: OnceLock::new(),
    },
    Asset {
        name: "swagger-ui.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/swagger-ui/swagger-ui.css"),
        gzipped: OnceLock::new(),
    },
    Asset {
        name: "docs.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("docs.js"),
        gzipped: OnceLock::new(),
    },
];

/// `GET /api/docs`: the page.
pub async fn page() -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("docs.html"),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /api/docs/{asset}`: one of the page's scripts or styles, gzipped when the client takes
/// it, revalidated by an ETag naming the Swagger UI and service versions.
pub async fn asset(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = super::data::path_params(path)?;
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return Err(ApiError::Service(ServiceError::NotFound(format!(
            "no documentation asset {:?}",
            name.chars().take(64).collect::<String>()
        ))));
    };
    let etag = format!(
        "\"{}-{}-{}\"",
        asset.name,
        SWAGGER_UI_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ASCII"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    let revalidated = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if revalidated {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    let body: &'static [u8] = match Accepted::from_headers(&request_headers).choose(false) {
        Coding::Identity => asset.bytes,
        _ => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            asset.gzipped.get_or_init(|| gzip(asset.bytes))
        }
    };
    Ok((StatusCode::OK, headers, body).into_response())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compiled-in files are the vendored ones, byte for byte, as `SHA256SUMS` records.
    #[test]
    fn the_vendored_assets_match_their_recorded_checksums() {
        use sha2::Digest as _;
        let sums = include_str!("../../assets/swagger-ui/SHA256SUMS");
        let mut checked = 0;
        for line in sums.lines() {
            let (sum, name) = line.split_once("  ").expect("sha256sum's format");
            let asset = ASSETS.iter().find(|a| a.name == name).expect("served");
            assert_eq!(hex(&sha2::Sha256::digest(asset.bytes)), sum, "{name}");
            checked += 1;
        }
        assert_eq!(checked, 2);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_asset_names_are_the_served_ones() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        assert_eq!(names, ASSET_NAMES);
    }

    #[test]
    fn the_page_names_only_assets_that_are_served() {
        let page = include_str!("docs.html");
        for reference in page.split("/api/docs/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(ASSETS.iter().any(|a| a.name == name), "{name}");
        }
    }
}
