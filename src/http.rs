//! HTTP surface: the router, shared state, and the small handlers (ingest, health, metrics).
//!
//! WebSocket upgrades are handled in [`crate::ws`]; this module only mounts them. Client-visible
//! errors come from the stable codes of [`crate::ingest::error`]; database text never reaches a
//! client.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use deadpool_postgres::Pool;
use serde_json::json;

use crate::auth;
use crate::config::ServerConfig;
use crate::hub::Hub;
use crate::ingest::{
    Batcher, BodyFormat, Durability, IngestError, IngestErrorCode, Writer, parse_body,
};
use crate::metrics::{Metrics, PoolStats};
use crate::replication::{ReaderStatus, ReplicationSettings};
use tokio_util::sync::CancellationToken;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<ServerConfig>,
    /// Database pool.
    pub pool: Pool,
    /// Ingest batcher.
    pub batcher: Batcher,
    /// The resilient write path (breaker, spool).
    pub writer: Arc<Writer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Fan-out hub.
    pub hub: Hub,
    /// Replication reader status.
    pub reader: Arc<ReaderStatus>,
    /// Replication connection facts (replays for resuming clients).
    pub replication: ReplicationSettings,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Feature flags (broadcaster mode, Realtime rollout); lock-free snapshot.
    pub flags: crate::flags::Flags,
    /// Supabase Realtime endpoint state: the row level security gate and the broadcast bus.
    pub realtime: Arc<crate::ws::realtime::RealtimeState>,
    /// Every connected WebSocket session (for `/v1/status` and the admin console).
    pub clients: Arc<crate::admin::ClientRegistry>,
    /// What the continuous consistency check found.
    pub consistency: Arc<crate::validate::Consistency>,
    /// Start time and cached summaries behind `/v1/status`.
    pub status: Arc<crate::admin::status::StatusState>,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws", get(crate::ws::ws_handler))
        .route(
            "/realtime/v1/websocket",
            get(crate::ws::realtime::realtime_handler),
        )
        .route(
            "/socket/websocket",
            get(crate::ws::realtime::realtime_handler),
        )
        .merge(crate::flags::api::routes())
        .merge(crate::dlq::http::routes())
        .merge(crate::admin::status::routes())
        .with_state(state)
}

/// An ingest error as an HTTP response.
impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let mut resp = (self.code.status(), axum::Json(self.body())).into_response();
        if self.code.status() == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Extracts a bearer token (or Supabase-style `apikey` header).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// With a JWT secret configured, ingest requires a `service_role` token.
fn check_ingest_auth(config: &ServerConfig, headers: &HeaderMap) -> Result<(), IngestError> {
    let Some(secret) = &config.jwt_secret else {
        return Ok(());
    };
    let token = bearer_token(headers).ok_or_else(|| {
        IngestError::new(
            IngestErrorCode::Unauthorized,
            auth::AuthError::Missing.to_string(),
        )
    })?;
    let claims = auth::verify(secret, token)
        .map_err(|e| IngestError::new(IngestErrorCode::Unauthorized, e.to_string()))?;
    if claims.role != "service_role" {
        return Err(IngestError::new(
            IngestErrorCode::Forbidden,
            format!(
                "role {:?} may not write events: use a service_role key (`walcast keys`)",
                claims.role
            ),
        ));
    }
    Ok(())
}

/// `POST /v1/events`: one object, an array, or NDJSON; `201 {"ids": [...]}` after commit.
async fn post_events(State(state): State<AppState>, req: Request) -> Response {
    let result = ingest(&state, req).await;
    let status = match &result {
        Ok((_, Durability::DeadLetter)) => StatusCode::ACCEPTED,
        Ok(_) => StatusCode::CREATED,
        Err(e) => e.code.status(),
    };
    state.metrics.http_request("/v1/events", status.as_u16());
    match result {
        Ok((ids, durable)) => {
            let status = match durable {
                Durability::DeadLetter => StatusCode::ACCEPTED,
                _ => StatusCode::CREATED,
            };
            (
                status,
                axum::Json(json!({ "ids": ids, "count": ids.len(), "durable": durable.as_str() })),
            )
                .into_response()
        }
        Err(e) => {
            state.metrics.events_rejected.add(e.code.as_str(), 1);
            e.into_response()
        }
    }
}

/// Validates, batches and commits one request; returns the ids.
async fn ingest(state: &AppState, req: Request) -> Result<(Vec<String>, Durability), IngestError> {
    let (parts, body) = req.into_parts();
    check_ingest_auth(&state.config, &parts.headers)?;
    let format = BodyFormat::from_content_type(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )?;
    let limit = state.config.max_body;
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
    let events = parse_body(&bytes, format, state.config.max_events, chrono::Utc::now())?;
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

/// The live dashboard page, embedded in the binary.
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");

/// `GET /`: the dashboard.
async fn dashboard() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DASHBOARD_HTML,
    )
}

/// `GET /healthz`: the process is alive.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers, migrations are current, the reader streams.
async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    match state.pool.get().await {
        Ok(client) => {
            checks.insert("database".into(), json!("ok"));
            let latest = crate::db::latest_version();
            match crate::db::applied_version(&client).await {
                Ok(Some(v)) if v >= latest => {
                    checks.insert("migrations".into(), json!("ok"));
                }
                Ok(v) => {
                    ready = false;
                    checks.insert(
                        "migrations".into(),
                        json!(format!(
                            "behind: applied {:?}, expected {latest}; run `walcast migrate`",
                            v
                        )),
                    );
                }
                Err(_) => {
                    ready = false;
                    checks.insert("migrations".into(), json!("unknown"));
                }
            }
        }
        Err(_) => {
            ready = false;
            checks.insert("database".into(), json!("unreachable"));
        }
    }
    let breaker = state.writer.breaker_state();
    checks.insert("breaker".into(), json!(breaker.as_str()));
    checks.insert("spool_bytes".into(), json!(state.writer.spool.len()));
    let streaming = state.reader.is_streaming();
    checks.insert(
        "replication".into(),
        json!(if streaming { "ok" } else { "connecting" }),
    );
    ready &= streaming;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(
            json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks }),
        ),
    )
        .into_response()
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<AppState>) -> Response {
    let s = state.pool.status();
    state
        .metrics
        .breaker_state
        .set(state.writer.breaker_state().gauge());
    let text = state.metrics.render(PoolStats {
        size: s.size,
        available: s.available,
        waiting: s.waiting,
        max_size: s.max_size,
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
