//! The HTTP surface: composes each feature's router and nothing else.
//!
//! Each feature owns its routes and handlers and takes only the state it needs through axum's
//! `FromRef` ([`state`]): ingest (`/v1/events`), the dead-letter and flag APIs, `/v1/status`,
//! both WebSocket endpoints, and the small node endpoints of [`health`] (`/`, `/healthz`,
//! `/readyz`, `/metrics`). Every HTTP API answers errors in one envelope ([`crate::error::ApiError`]); database
//! text never reaches a client. [`server`] accepts connections under the total cap and the
//! per-address caps of [`per_ip`] (which also decides whose `X-Forwarded-For` is believed).

pub(crate) mod health;
pub(crate) mod per_ip;
pub(crate) mod server;
pub(crate) mod state;

use axum::Router;

pub use state::AppState;

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(crate::ingest::http::routes())
        .merge(crate::ws::session::routes())
        .merge(crate::realtime::routes())
        .merge(crate::flags::http::routes())
        .merge(crate::dlq::http::routes())
        .merge(crate::admin::status::routes())
        .with_state(state)
}
