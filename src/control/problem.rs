//! The one place control API errors become HTTP responses: RFC 9457 problem details, with
//! every config error listed with its field path.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::Denied;
use crate::config::ConfigErrors;

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    pub errors: Option<ConfigErrors>,
    /// Seconds for a `Retry-After` field, for a refusal that passes.
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self { status, detail: detail.into(), errors: None, retry_after: None }
    }

    /// With `Retry-After: seconds`.
    pub fn retry_after(self, seconds: u32) -> Self {
        Self { retry_after: Some(seconds), ..self }
    }

    /// 422: the config (or the change) is invalid; nothing changed.
    pub fn invalid(errors: ConfigErrors) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: "the config is invalid: nothing changed".into(),
            errors: Some(errors),
            retry_after: None,
        }
    }
}

impl From<Denied> for Problem {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unknown => {
                Self::new(StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer <token>` is required")
            }
            Denied::Forbidden => Self::new(StatusCode::FORBIDDEN, "this token's role may not make this call"),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(errors) = &self.errors {
            body["errors"] = errors
                .errors
                .iter()
                .map(|e| json!({ "path": e.path, "line": e.line, "column": e.column, "message": e.message }))
                .collect();
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
