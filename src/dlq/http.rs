//! The dead-letter queue over HTTP, for operators and admin tools (mounted by [`crate::http`]).
//!
//! | method, path | what |
//! |---|---|
//! | `GET /v1/dlq?status=&operation=&limit=&before=` | rows, newest first |
//! | `GET /v1/dlq/stats` | counts by status, oldest pending age |
//! | `GET /v1/dlq/{id}` | one row |
//! | `POST /v1/dlq/{id}/retry[?now=true]` | requeue one row (with `now`, retry it at once) |
//! | `POST /v1/dlq/retry` | requeue every failed row |
//! | `DELETE /v1/dlq?older_than=7d&status=recovered` | purge old rows |
//!
//! With a JWT secret configured every endpoint needs a `service_role` token. Errors are
//! `{"error": {"code", "message"}}` with a stable code: `unauthorized` (401), `forbidden` (403),
//! `invalid_request` (400), `not_found` (404), `conflict` (409), `database_unavailable` (503),
//! `internal_error` (500). Database error text never reaches the client, except the messages of
//! the `walcast.dlq_*` functions, which are walcast's own.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::{DlqError, DlqErrorKind, ListFilter, Status, store};
use crate::auth::{Auth, AuthRejection, ServiceRole};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What the `/v1/dlq` endpoints need.
#[derive(Debug, Clone)]
pub struct DlqState {
    /// Database pool.
    pub pool: deadpool_postgres::Pool,
    /// Request counters.
    pub metrics: Arc<Metrics>,
    /// This node's name (the worker name of `retry?now=true`).
    pub node: String,
}

/// The routes, for a state that provides [`DlqState`] and [`Auth`].
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    DlqState: FromRef<S>,
    Auth: FromRef<S>,
{
    Router::new()
        .route("/v1/dlq", get(list).delete(purge))
        .route("/v1/dlq/stats", get(stats))
        .route("/v1/dlq/retry", post(retry_all))
        .route("/v1/dlq/{id}", get(show))
        .route("/v1/dlq/{id}/retry", post(retry))
}

/// Stable error codes of the `/v1/dlq` endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqApiErrorCode {
    /// Missing or invalid token. 401.
    Unauthorized,
    /// An `sb_…` API key that is not one of the server's keys. 401.
    InvalidApiKey,
    /// The token's role is not `service_role`. 403.
    Forbidden,
    /// A bad id, query parameter or value. 400.
    InvalidRequest,
    /// No such row. 404.
    NotFound,
    /// The row's state forbids the change. 409.
    Conflict,
    /// Postgres is unreachable or failing; retry. 503.
    DatabaseUnavailable,
    /// Anything else (logged). 500.
    InternalError,
}

impl DlqApiErrorCode {
    /// The code on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqApiErrorCode::Unauthorized => "unauthorized",
            DlqApiErrorCode::InvalidApiKey => "invalid_api_key",
            DlqApiErrorCode::Forbidden => "forbidden",
            DlqApiErrorCode::InvalidRequest => "invalid_request",
            DlqApiErrorCode::NotFound => "not_found",
            DlqApiErrorCode::Conflict => "conflict",
            DlqApiErrorCode::DatabaseUnavailable => "database_unavailable",
            DlqApiErrorCode::InternalError => "internal_error",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            DlqApiErrorCode::Unauthorized | DlqApiErrorCode::InvalidApiKey => {
                StatusCode::UNAUTHORIZED
            }
            DlqApiErrorCode::Forbidden => StatusCode::FORBIDDEN,
            DlqApiErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            DlqApiErrorCode::NotFound => StatusCode::NOT_FOUND,
            DlqApiErrorCode::Conflict => StatusCode::CONFLICT,
            DlqApiErrorCode::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            DlqApiErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A client-facing error of the `/v1/dlq` endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqApiError {
    /// Stable code.
    pub code: DlqApiErrorCode,
    /// What went wrong and what to do.
    pub message: String,
}

impl DlqApiError {
    /// An error with a code and message.
    fn new(code: DlqApiErrorCode, message: impl Into<String>) -> DlqApiError {
        DlqApiError {
            code,
            message: message.into(),
        }
    }
}

impl From<DlqError> for DlqApiError {
    fn from(e: DlqError) -> Self {
        let code = match e.kind() {
            DlqErrorKind::NotFound => DlqApiErrorCode::NotFound,
            DlqErrorKind::InvalidInput => DlqApiErrorCode::InvalidRequest,
            DlqErrorKind::Conflict => DlqApiErrorCode::Conflict,
            DlqErrorKind::Unavailable => DlqApiErrorCode::DatabaseUnavailable,
            DlqErrorKind::Database => DlqApiErrorCode::InternalError,
        };
        let message = match code {
            DlqApiErrorCode::DatabaseUnavailable => {
                tracing::warn!(error = %e, "dlq request: database unavailable");
                "the database is unavailable; retry later".to_owned()
            }
            DlqApiErrorCode::InternalError => {
                tracing::error!(error = %e, "dlq request failed");
                "the dead-letter queue query failed; see the walcast log".to_owned()
            }
            _ => e.to_string(),
        };
        DlqApiError { code, message }
    }
}

impl From<DlqApiError> for ApiError {
    fn from(e: DlqApiError) -> Self {
        ApiError::new(e.code.status(), e.code.as_str(), e.message)
    }
}

impl IntoResponse for DlqApiError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl From<AuthRejection> for DlqApiError {
    fn from(r: AuthRejection) -> Self {
        let code = match r {
            AuthRejection::Unauthorized(crate::auth::TokenProblem::UnknownApiKey) => {
                DlqApiErrorCode::InvalidApiKey
            }
            AuthRejection::Unauthorized(_) => DlqApiErrorCode::Unauthorized,
            AuthRejection::Forbidden { .. } => DlqApiErrorCode::Forbidden,
        };
        DlqApiError::new(code, r.message("use the dead-letter queue"))
    }
}

/// Counts the request and turns the result into a response.
fn respond(
    state: &DlqState,
    route: &'static str,
    result: Result<serde_json::Value, DlqApiError>,
) -> Response {
    let resp = match result {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    };
    state.metrics.http_request(route, resp.status().as_u16());
    resp
}

/// A pooled connection.
async fn connection(state: &DlqState) -> Result<deadpool_postgres::Object, DlqApiError> {
    state
        .pool
        .get()
        .await
        .map_err(|e| DlqApiError::from(DlqError::Pool(e)))
}

/// A row id from the path.
fn parse_id(raw: &str) -> Result<i64, DlqApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        DlqApiError::new(
            DlqApiErrorCode::InvalidRequest,
            format!("{raw:?} is not a dead letter id (a positive integer)"),
        )
    })
}

/// Query of `GET /v1/dlq`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Only this status.
    status: Option<String>,
    /// Only this operation.
    operation: Option<String>,
    /// At most this many rows (default 100, at most 1000).
    limit: Option<String>,
    /// Only ids below this one.
    before: Option<String>,
}

/// A query string that did not parse.
fn bad_query(e: impl std::fmt::Display) -> DlqApiError {
    DlqApiError::new(
        DlqApiErrorCode::InvalidRequest,
        format!("invalid query string: {e}"),
    )
}

/// `GET /v1/dlq`.
async fn list(
    State(state): State<DlqState>,
    role: Result<ServiceRole, AuthRejection>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result: Result<serde_json::Value, DlqApiError> = async {
        role?;
        let Query(q) = query.map_err(bad_query)?;
        let mut filter = ListFilter {
            status: q.status.as_deref().map(str::parse::<Status>).transpose()?,
            operation: q.operation,
            ..ListFilter::default()
        };
        if let Some(l) = q.limit {
            filter.limit = l.parse().map_err(|_| {
                DlqApiError::new(
                    DlqApiErrorCode::InvalidRequest,
                    format!("limit {l:?} is not a number"),
                )
            })?;
        }
        if let Some(b) = q.before {
            filter.before_id = Some(parse_id(&b)?);
        }
        let client = connection(&state).await?;
        let rows = store::list(&client, &filter).await?;
        let next_before = if rows.len() as i64 == filter.limit {
            rows.last().map(|r| r.id)
        } else {
            None
        };
        Ok(json!({ "count": rows.len(), "dead_letters": rows, "next_before": next_before }))
    }
    .await;
    respond(&state, "/v1/dlq", result)
}

/// `GET /v1/dlq/stats`.
async fn stats(
    State(state): State<DlqState>,
    role: Result<ServiceRole, AuthRejection>,
) -> Response {
    let result: Result<serde_json::Value, DlqApiError> = async {
        role?;
        let client = connection(&state).await?;
        let s = store::stats(&client).await?;
        Ok(json!(s))
    }
    .await;
    respond(&state, "/v1/dlq/stats", result)
}

/// `GET /v1/dlq/{id}`.
async fn show(
    State(state): State<DlqState>,
    role: Result<ServiceRole, AuthRejection>,
    Path(id): Path<String>,
) -> Response {
    let result: Result<serde_json::Value, DlqApiError> = async {
        role?;
        let id = parse_id(&id)?;
        let client = connection(&state).await?;
        Ok(json!(store::show(&client, id).await?))
    }
    .await;
    respond(&state, "/v1/dlq/{id}", result)
}

/// Query of `POST /v1/dlq/{id}/retry`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryQuery {
    /// `true`: retry at once and answer with the outcome.
    now: Option<String>,
}

/// `POST /v1/dlq/{id}/retry`.
async fn retry(
    State(state): State<DlqState>,
    role: Result<ServiceRole, AuthRejection>,
    Path(id): Path<String>,
    query: Result<Query<RetryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result: Result<serde_json::Value, DlqApiError> = async {
        role?;
        let id = parse_id(&id)?;
        let Query(q) = query.map_err(bad_query)?;
        let now = match q.now.as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") | Some("") => true,
            Some(other) => {
                return Err(DlqApiError::new(
                    DlqApiErrorCode::InvalidRequest,
                    format!("now={other:?}: use true or false"),
                ));
            }
        };
        let client = connection(&state).await?;
        let row = store::requeue(&client, id).await?;
        if !now {
            return Ok(json!(row));
        }
        let worker = format!("{}/http", state.node);
        let lease = super::RetryWorkerConfig::new(&worker).lease;
        let report = super::run_pass(&client, &worker, 1, Some(id), lease).await?;
        match report.rows.into_iter().next() {
            Some(after) => Ok(json!(after)),
            // Not claimable by this node (another worker took it, or its operation is not
            // retried automatically): answer with its current state.
            None => Ok(json!(store::show(&client, id).await?)),
        }
    }
    .await;
    respond(&state, "/v1/dlq/{id}/retry", result)
}

/// `POST /v1/dlq/retry`.
async fn retry_all(
    State(state): State<DlqState>,
    role: Result<ServiceRole, AuthRejection>,
) -> Response {
    let result: Result<serde_json::Value, DlqApiError> = async {
        role?;
        let client = connection(&state).await?;
        let rows = store::requeue_all(&client).await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        Ok(json!({ "requeued": ids.len(), "ids": ids }))
    }
    .await;
    respond(&state, "/v1/dlq/retry", result)
}

/// Query of `DELETE /v1/dlq`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeQuery {
    /// Age, e.g. `7d` (default `7d`).
    older_than: Option<String>,
    /// Comma-separated statuses (default `recovered`).
    status: Option<String>,
}

/// `DELETE /v1/dlq`.
async fn purge(
    State(state): State<DlqState>,
    role: Result<ServiceRole, AuthRejection>,
    query: Result<Query<PurgeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result: Result<serde_json::Value, DlqApiError> = async {
        role?;
        let Query(q) = query.map_err(bad_query)?;
        let older_than = crate::units::parse_duration(q.older_than.as_deref().unwrap_or("7d"))
            .map_err(|e| {
                DlqApiError::new(DlqApiErrorCode::InvalidRequest, format!("older_than: {e}"))
            })?;
        let statuses = q
            .status
            .as_deref()
            .unwrap_or("recovered")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse::<Status>)
            .collect::<Result<Vec<_>, _>>()?;
        let client = connection(&state).await?;
        let deleted = store::purge(&client, older_than, &statuses).await?;
        Ok(json!({ "deleted": deleted }))
    }
    .await;
    respond(&state, "/v1/dlq", result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_codes() {
        assert_eq!(parse_id("42").unwrap(), 42);
        assert!(parse_id("0").is_err());
        assert!(parse_id("abc").is_err());
        let e = DlqApiError::from(DlqError::invalid("bad"));
        assert_eq!(e.code.as_str(), "invalid_request");
        assert_eq!(e.code.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.message, "bad");
        let e = DlqApiError::from(DlqError::Conflict {
            message: "no".into(),
        });
        assert_eq!(e.code.status(), StatusCode::CONFLICT);
    }
}
