//! The server's state as the router holds it: one narrow state per feature, and the `FromRef`
//! impls that hand each handler only its feature's part.
//!
//! A leaf of the HTTP layer: it imports the features' state types; no feature imports it.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::admin::NodeView;
use crate::auth::Auth;
use crate::dlq::http::DlqState;
use crate::flags::http::FlagsState;
use crate::ingest::http::IngestState;
use crate::realtime::RealtimeState;
use crate::ws::WsState;

/// Every feature's state.
#[derive(Debug, Clone)]
pub struct AppState {
    /// How requests are authenticated.
    pub auth: Auth,
    /// The node as the operator surface and health checks see it.
    pub node: Arc<NodeView>,
    /// `POST /v1/events`.
    pub ingest: IngestState,
    /// `/v1/dlq`.
    pub dlq: DlqState,
    /// `/v1/flags`.
    pub flags: FlagsState,
    /// `/ws`.
    pub ws: WsState,
    /// `/realtime/v1/websocket`.
    pub realtime: RealtimeState,
}

/// Hands handlers their feature's part of [`AppState`].
macro_rules! from_ref {
    ($($ty:ty => $field:ident),* $(,)?) => {
        $(impl FromRef<AppState> for $ty {
            fn from_ref(s: &AppState) -> Self {
                s.$field.clone()
            }
        })*
    };
}

from_ref! {
    Auth => auth,
    Arc<NodeView> => node,
    IngestState => ingest,
    DlqState => dlq,
    FlagsState => flags,
    WsState => ws,
    RealtimeState => realtime,
}
