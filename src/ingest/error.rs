//! Ingest errors and their client-facing form: a stable code, an HTTP status, and a message.
//!
//! Every error a producer can cause maps to one [`IngestErrorCode`]; the JSON body is
//! `{"error": {"code", "message", "index", "field"}}`. Database error text never reaches clients:
//! it is logged, and the client sees a stable code.

use axum::http::StatusCode;
use serde::Serialize;

/// Stable error codes of `POST /v1/events` (documented in README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestErrorCode {
    /// The body is not valid JSON / NDJSON. HTTP 400.
    MalformedJson,
    /// An event fails validation (see `index` and `field`). HTTP 422.
    InvalidEvent,
    /// The body holds no event. HTTP 422.
    EmptyBatch,
    /// The body is larger than the configured limit. HTTP 413.
    PayloadTooLarge,
    /// More events than the configured limit in one request. HTTP 413.
    TooManyEvents,
    /// Content-Type is not JSON or NDJSON. HTTP 415.
    UnsupportedMediaType,
    /// Missing or invalid credentials. HTTP 401.
    Unauthorized,
    /// An `sb_…` API key that is not one of the server's keys. HTTP 401.
    InvalidApiKey,
    /// Valid credentials without the right role. HTTP 403.
    Forbidden,
    /// Postgres rejected the events themselves (e.g. a constraint). HTTP 422.
    Rejected,
    /// The server is shutting down. HTTP 503.
    ShuttingDown,
    /// The database is down and the local spool is full. HTTP 503 with Retry-After.
    SpoolFull,
}

impl IngestErrorCode {
    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            IngestErrorCode::MalformedJson => "malformed_json",
            IngestErrorCode::InvalidEvent => "invalid_event",
            IngestErrorCode::EmptyBatch => "empty_batch",
            IngestErrorCode::PayloadTooLarge => "payload_too_large",
            IngestErrorCode::TooManyEvents => "too_many_events",
            IngestErrorCode::UnsupportedMediaType => "unsupported_media_type",
            IngestErrorCode::Unauthorized => "unauthorized",
            IngestErrorCode::InvalidApiKey => "invalid_api_key",
            IngestErrorCode::Forbidden => "forbidden",
            IngestErrorCode::Rejected => "rejected",
            IngestErrorCode::ShuttingDown => "shutting_down",
            IngestErrorCode::SpoolFull => "spool_full",
        }
    }

    /// The HTTP status for this code.
    pub fn status(self) -> StatusCode {
        match self {
            IngestErrorCode::MalformedJson => StatusCode::BAD_REQUEST,
            IngestErrorCode::InvalidEvent
            | IngestErrorCode::EmptyBatch
            | IngestErrorCode::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
            IngestErrorCode::PayloadTooLarge | IngestErrorCode::TooManyEvents => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestErrorCode::Unauthorized | IngestErrorCode::InvalidApiKey => {
                StatusCode::UNAUTHORIZED
            }
            IngestErrorCode::Forbidden => StatusCode::FORBIDDEN,
            IngestErrorCode::ShuttingDown | IngestErrorCode::SpoolFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// A client-facing ingest error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct IngestError {
    /// Stable code.
    pub code: IngestErrorCode,
    /// Human-readable explanation: what is wrong and what is expected.
    pub message: String,
    /// Zero-based index of the offending event in the request, when one event is at fault.
    pub index: Option<usize>,
    /// The offending field, when one field is at fault.
    pub field: Option<String>,
}

impl IngestError {
    /// An error with only a code and a message.
    pub fn new(code: IngestErrorCode, message: impl Into<String>) -> Self {
        IngestError {
            code,
            message: message.into(),
            index: None,
            field: None,
        }
    }

    /// An `invalid_event` error for one field of one event.
    pub fn invalid(index: usize, field: &str, message: impl Into<String>) -> Self {
        IngestError {
            code: IngestErrorCode::InvalidEvent,
            message: message.into(),
            index: Some(index),
            field: Some(field.to_owned()),
        }
    }

    /// The JSON body `{"error": {...}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.code.as_str(),
                "message": self.message,
                "index": self.index,
                "field": self.field,
            }
        })
    }
}
