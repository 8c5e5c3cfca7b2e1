//! `POST /v1/events`: one object, an array, or NDJSON; `201 {"ids": [...]}` after commit.
//!
//! Authentication comes before anything else about the request: with a JWT secret configured,
//! only a `service_role` token may write. Errors use ingest's stable codes ([`IngestErrorCode`])
//! in the shared envelope ([`crate::error::ApiError`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::{Batcher, BodyFormat, Durability, IngestError, IngestErrorCode, parse_body};
use crate::auth::{Auth, AuthRejection, ServiceRole};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What the ingest endpoint needs.
#[derive(Debug, Clone)]
pub struct IngestState {
    /// The batcher events are submitted to.
    pub batcher: Batcher,
    /// Request and rejection counters.
    pub metrics: Arc<Metrics>,
    /// Largest request body (`--max-body`).
    pub max_body: usize,
    /// Most events in one request (`--max-events`).
    pub max_events: usize,
}

/// The route, for a state that provides [`IngestState`] and [`Auth`].
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    IngestState: FromRef<S>,
    Auth: FromRef<S>,
{
    Router::new().route("/v1/events", post(post_events))
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        ApiError::new(e.code.status(), e.code.as_str(), e.message)
            .with("index", e.index)
            .with("field", e.field)
    }
}

/// An ingest error as an HTTP response.
impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// An authentication refusal in ingest's codes.
impl From<AuthRejection> for IngestError {
    fn from(r: AuthRejection) -> Self {
        let code = match r {
            AuthRejection::Unauthorized(crate::auth::TokenProblem::UnknownApiKey) => {
                IngestErrorCode::InvalidApiKey
            }
            AuthRejection::Unauthorized(_) => IngestErrorCode::Unauthorized,
            AuthRejection::Forbidden { .. } => IngestErrorCode::Forbidden,
        };
        IngestError::new(code, r.message("write events"))
    }
}

/// `POST /v1/events`.
async fn post_events(
    State(state): State<IngestState>,
    role: Result<ServiceRole, AuthRejection>,
    req: Request,
) -> Response {
    let result = match role {
        Ok(_) => ingest(&state, req).await,
        Err(r) => Err(r.into()),
    };
    let status = match &result {
        Ok((_, Durability::DeadLetter)) => StatusCode::ACCEPTED,
        Ok(_) => StatusCode::CREATED,
        Err(e) => e.code.status(),
    };
    state.metrics.http_request("/v1/events", status.as_u16());
    match result {
        Ok((ids, durable)) => (
            status,
            axum::Json(json!({ "ids": ids, "count": ids.len(), "durable": durable.as_str() })),
        )
            .into_response(),
        Err(e) => {
            state.metrics.events_rejected.add(e.code.as_str(), 1);
            e.into_response()
        }
    }
}

/// Validates, batches and commits one request; returns the ids.
async fn ingest(
    state: &IngestState,
    req: Request,
) -> Result<(Vec<String>, Durability), IngestError> {
    let (parts, body) = req.into_parts();
    let format = BodyFormat::from_content_type(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )?;
    let limit = state.max_body;
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large(limit));
    }
    let bytes = axum::body::to_bytes(Body::new(body), limit)
        .await
        .map_err(|_| too_large(limit))?;
    let events = parse_body(&bytes, format, state.max_events, chrono::Utc::now())?;
    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    let durable = state.batcher.submit(events).await?;
    Ok((ids, durable))
}

/// The `payload_too_large` error.
fn too_large(limit: usize) -> IngestError {
    IngestError::new(
        IngestErrorCode::PayloadTooLarge,
        format!(
            "the body is larger than {limit} bytes (--max-body): split it into smaller requests"
        ),
    )
}
