//! JSON request bodies: `Content-Type` checked (415), size bounded by `MAX_BODY_BYTES` (413)
//! before anything is parsed, malformed JSON a 400, anything but an object a 422.

use axum::extract::{FromRequest, Request};
use axum::http::header;

use super::{ApiError, AppState};

/// A request body that is a JSON object.
pub struct JsonBody {
    pub fields: serde_json::Map<String, serde_json::Value>,
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let headers = request.headers();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !is_json(content_type) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.limits.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        // The length header may be absent or lie: the read itself stops at the limit, and at
        // the body timeout (a client trickling its body holds no task for long).
        let read = axum::body::to_bytes(request.into_body(), limit);
        let bytes = tokio::time::timeout(state.limits.body_timeout, read)
            .await
            .map_err(|_| ApiError::BodyTimeout)?
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::MalformedBody(format!("the body is not valid JSON: {e}")))?;
        match value {
            serde_json::Value::Object(fields) => Ok(JsonBody { fields }),
            _ => Err(ApiError::unprocessable(vec![(
                "body".into(),
                "must be a JSON object".into(),
            )])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_media_types_are_recognised() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json(""));
    }
}
