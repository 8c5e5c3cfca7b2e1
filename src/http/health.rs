//! The node's own small endpoints: the dashboard page (`/`), liveness (`/healthz`), readiness
//! (`/readyz`: database, migrations, replication) and Prometheus metrics (`/metrics`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::admin::NodeView;
use crate::metrics::PoolStats;
use crate::supervise::TaskState;

/// The routes, for a state that provides the [`NodeView`].
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<NodeView>: FromRef<S>,
{
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The live dashboard page, embedded in the binary.
const DASHBOARD_HTML: &str = include_str!("../dashboard/index.html");

/// The dashboard's Content-Security-Policy: its one inline script by hash, nothing from
/// elsewhere, connections only to this origin, never framed.
fn dashboard_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let script = DASHBOARD_HTML
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script);
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        )
    })
}

/// `GET /`: the dashboard, with headers that keep it from being framed, sniffed or fed
/// scripts from elsewhere.
async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, dashboard_csp()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        DASHBOARD_HTML,
    )
}

/// `GET /healthz`: the process is alive.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers, migrations are current, the reader streams.
async fn readyz(State(state): State<Arc<NodeView>>) -> Response {
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
    let tasks: serde_json::Map<String, serde_json::Value> = state
        .tasks
        .snapshot()
        .into_iter()
        .map(|(name, s)| {
            let v = match s {
                TaskState::Running => json!("ok"),
                TaskState::Stopped(why) => json!(format!("stopped: {why}")),
            };
            (name.to_owned(), v)
        })
        .collect();
    ready &= state.tasks.all_running();
    checks.insert("tasks".into(), serde_json::Value::Object(tasks));
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
async fn metrics(State(state): State<Arc<NodeView>>, headers: axum::http::HeaderMap) -> Response {
    if let Some(want) = state.config.metrics_token.as_ref().map(|t| t.expose()) {
        let given = crate::auth::bearer_token(&headers).unwrap_or("");
        // Compared in constant time: the token is a shared secret.
        let same = given.len() == want.len()
            && given
                .bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return crate::error::ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "GET /metrics needs Authorization: Bearer <--metrics-token>",
            )
            .into_response();
        }
    }
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
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}
