//! The admin API's error shape and request-body extractor.
//!
//! One JSON error body everywhere (the proxy's shape plus field details):
//! `{"error": "<code>", "message": "...", "status": 422, "details": [{"path": "routes[0].path", "message": "..."}]}`.
//!
//! Bodies: `application/json` only (415 otherwise), at most
//! [`MAX_BODY_BYTES`] (413), whole within [`BODY_TIMEOUT`] (408), malformed JSON → 400, a value of the wrong type
//! or an unknown field → 422 naming the field.

use crate::config::ConfigErrors;
use crate::store::StoreError;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// One problem with one field.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field, e.g. `routes[0].upstream` or `methods[1]`.
    pub path: String,
    pub message: String,
}

/// The error body of every admin endpoint.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `not_found`, `invalid_config`.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// Field-level problems (validation errors).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422 for one field.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> ApiError {
        let (path, message) = (path.into(), message.into());
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid",
            message: if path.is_empty() {
                message.clone()
            } else {
                format!("{path}: {message}")
            },
            details: vec![FieldError { path, message }],
        }
    }
}

impl From<ConfigErrors> for ApiError {
    fn from(e: ConfigErrors) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_config",
            message: format!("the change would make the config invalid: {e}").replace('\n', "; "),
            details: e
                .0
                .into_iter()
                .map(|e| FieldError {
                    path: e.path,
                    message: e.message,
                })
                .collect(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (status, code) = match &e {
            StoreError::Conflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            StoreError::Invalid(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_invalid"),
        };
        if status != StatusCode::CONFLICT {
            tracing::error!("admin write failed: {e}");
        }
        ApiError::new(status, code, e.to_string())
    }
}

/// A blocking task (compiling a config) that panicked or was cancelled.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
            status: self.status.as_u16(),
            details: self.details,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        resp
    }
}

/// The media type of a request body (lowercase, without parameters).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

/// Time allowed for a whole request body to arrive.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads a whole body, bounded: 413 beyond [`MAX_BODY_BYTES`], 408 when it
/// does not arrive within [`BODY_TIMEOUT`].
pub async fn read_body(req: Request) -> Result<bytes::Bytes, ApiError> {
    read_body_limited(req, MAX_BODY_BYTES).await
}

/// [`read_body`] with another size limit.
pub async fn read_body_limited(req: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    };
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(too_large());
    }
    let read = axum::body::to_bytes(req.into_body(), limit);
    let Ok(result) = tokio::time::timeout(BODY_TIMEOUT, read).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        ));
    };
    result.map_err(|e| {
        let is_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if is_limit {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("cannot read the request body: {e}"),
            )
        }
    })
}

/// Parses JSON into `T`: syntax errors → 400, type errors and unknown
/// fields → 422 with the field path.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: Result<T, _> = {
        let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(p.to_string());
        let ignored = serde_ignored::Deserializer::new(&mut de, &mut on_unknown);
        serde_path_to_error::deserialize(ignored)
    };
    let value = match value {
        Ok(v) => {
            de.end().map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("the body is not valid JSON: {e}"),
                )
            })?;
            v
        }
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(match inner.classify() {
                serde_json::error::Category::Data => ApiError::invalid(
                    if path == "." { String::new() } else { path },
                    inner.to_string(),
                ),
                _ => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("the body is not valid JSON: {inner}"),
                ),
            });
        }
    };
    if !unknown.is_empty() {
        let mut err = ApiError::invalid(unknown[0].clone(), "unknown field");
        err.message = format!("unknown field(s): {}", unknown.join(", "));
        err.details = unknown
            .into_iter()
            .map(|path| FieldError {
                path,
                message: "unknown field".into(),
            })
            .collect();
        return Err(err);
    }
    Ok(value)
}

/// A JSON request body, checked as described in the module docs.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        match media_type(req.headers()).as_deref() {
            Some("application/json") => {}
            other => {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "expected Content-Type: application/json, got {}",
                        other.unwrap_or("none")
                    ),
                ))
            }
        }
        let body = read_body(req).await?;
        parse_json(&body).map(ApiJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    #[test]
    fn json_errors_are_classified() {
        let e = parse_json::<RouteConfig>(b"{\"path\": ").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse_json::<RouteConfig>(b"{\"path\": \"/a\", \"methods\": 5}").unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.details[0].path, "methods");
        let e = parse_json::<RouteConfig>(b"{\"path\": \"/a\", \"upstrem\": \"x\"}").unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.details[0].path, "upstrem");
        let e = parse_json::<RouteConfig>(b"{\"path\": \"/a\"} x").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(parse_json::<RouteConfig>(b"{\"path\": \"/a\"}").is_ok());
    }
}
