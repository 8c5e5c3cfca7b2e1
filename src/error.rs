//! How errors leave walcast: [`error_chain`] renders a chain of causes on one line for logs
//! and status fields; [`ApiError`] is the one JSON error envelope of every HTTP API,
//! `{"error": {"code", "message", ...}}`.
//!
//! Each layer keeps its own typed error (`kind()`, `is_transient()`), and each HTTP surface its
//! own stable codes (ingest's [`crate::ingest::IngestErrorCode`], the dead-letter and flag APIs'
//! codes), turned into an [`ApiError`] at the edge; this module only writes them. A 503 carries
//! `Retry-After: 1`. Database text never reaches an [`ApiError`]: callers pass walcast's own
//! messages. (The Realtime endpoint answers with Supabase's own shape, `{"error": "..."}`.)
//! A leaf: imports nothing of walcast.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// A client-visible error of an HTTP API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code.
    pub code: &'static str,
    /// What went wrong and how to fix it.
    pub message: String,
    /// More fields of the `error` object (an event index, a hint, ...), in order.
    pub details: Map<String, Value>,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds a field to the `error` object.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), Value::from(self.code));
        error.insert("message".into(), Value::from(self.message.as_str()));
        for (k, v) in &self.details {
            error.insert(k.clone(), v.clone());
        }
        let mut body = Map::new();
        body.insert("error".into(), Value::Object(error));
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// An error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_joins_every_cause() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }

    #[test]
    fn envelope_has_code_message_and_details() {
        let e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", "bad")
            .with("index", 2)
            .with("field", Value::Null);
        assert_eq!(
            e.body(),
            json!({"error": {"code": "invalid_event", "message": "bad", "index": 2, "field": null}})
        );
        let r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "x", "y").into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
