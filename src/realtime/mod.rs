//! The Supabase Realtime endpoint: `GET /realtime/v1/websocket` (also `/socket/websocket`).
//!
//! One home for the feature:
//! - [`protocol`]: every byte of the protocol (Phoenix frames v1/v2, `phx_join`, bindings,
//!   change payloads, presence, error texts); pure, no I/O.
//! - `session`: one task per socket: its loop, its channels (join, token refresh), the
//!   delivery of changes through the row gate ([`crate::access`]), and broadcast and presence.
//! - [`bus`]: broadcast and presence between sockets of this node.
//! - [`cluster`]: broadcast across nodes (`--cluster-broadcast`): a copy of each broadcast
//!   written to the WAL, and the other nodes' copies read from it to the bus.
//! - [`private`]: who may read and write private channels (`realtime.messages` policies).
//! - [`resume`]: where channels of clients connected with a `resume_id` resume (positions kept
//!   in Postgres).
//! - [`dbcast`]: Broadcast from Database (`realtime.send` and friends, from the WAL to the bus)
//!   and the partitions of walcast's `realtime.messages`.
//! - [`messages`]: stored broadcasts (`persist`, replay at join).
//! - `rest`: broadcast over HTTP (`/api/broadcast`, `/api/broadcast/:topic/events/:event`) and
//!   `/api/ping`.
//!
//! The upgrade handler checks the `apikey` JWT *before* upgrading and refuses with an HTTP error
//! body the way Realtime does. A session serves Phoenix channels over one socket: heartbeats,
//! `phx_join`/`phx_leave`, `postgres_changes` from the hub (the same hub, and so the same
//! changes, as `/ws`), `access_token` refresh and expiry, broadcast and presence. It never
//! touches pgoutput. Writes are batched like `/ws`; a client that falls behind the hub's ring or
//! overflows its bus inbox is told so on every channel and disconnected.

pub(crate) mod bus;
pub(crate) mod cluster;
pub(crate) mod dbcast;
pub(crate) mod messages;
pub(crate) mod private;
pub mod protocol;
mod rest;
pub mod resume;
mod session;

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, FromRef, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures::StreamExt;
use serde_json::json;

use self::bus::Bus;
use self::private::PrivateChannels;
use self::protocol::{TokenProblem, Vsn};
use crate::access::{ClaimsGroup, RlsGate};
use crate::auth::{Auth, Verifier};
use crate::endpoint::Endpoint;
use crate::ws::socket::{FRAME_ENVELOPE, MAX_WRITE_BUFFER, READ_BUFFER};

/// The error body when walcast runs without any way to verify tokens.
pub const NO_SECRET_MESSAGE: &str = "The Realtime endpoint needs a way to verify tokens: start \
     walcast with the project's JWT secret (--jwt-secret), its signing keys (--jwks-url or \
     --jwks-file) or its API keys (--publishable-keys, --secret-keys)";

/// What Realtime sessions need: the row gate, private-channel checks, the bus, and the node's
/// hub, flags, registry, auth and shutdown signal.
#[derive(Debug, Clone)]
pub struct RealtimeState {
    /// Row visibility for roles other than `service_role`.
    pub gate: Arc<RlsGate>,
    /// Private channel read and write checks.
    pub private: Arc<PrivateChannels>,
    /// Broadcast and presence between sockets of this node.
    pub bus: Arc<Bus>,
    /// Copies of broadcasts for the other nodes (a no-op without `--cluster-broadcast`).
    pub relay: cluster::Relay,
    /// Stored broadcasts (`persist`, replay).
    pub messages: Arc<messages::MessageStore>,
    /// Live changes.
    pub hub: crate::hub::Hub,
    /// Counters.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Feature flags (the broadcaster mode decides whether this endpoint serves).
    pub flags: crate::flags::Flags,
    /// Every connected session.
    pub clients: Arc<crate::admin::ClientRegistry>,
    /// Token checks.
    pub auth: Auth,
    /// How often joined channels' role privileges are asked again.
    pub role_recheck: std::time::Duration,
    /// Largest broadcast payload a client may send, in bytes.
    pub max_payload: usize,
    /// Per-socket rates.
    pub limits: crate::config::RealtimeLimits,
    /// What joins may ask for.
    pub joins: crate::config::RealtimeJoins,
    /// Cancelled when the server shuts down.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Resume positions of channels joined by clients with a `resume_id`.
    pub resumes: Arc<resume::Resumes>,
    /// Replays from the WAL (shared with `/ws`: one cap, `--max-replays`).
    pub replays: crate::replication::Replays,
    /// The reader's status (is it streaming, where the resume window starts).
    pub reader: Arc<crate::replication::ReaderStatus>,
}

/// An accepted token, as a channel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The `role` claim.
    pub role: String,
    /// The `exp` claim, seconds since the Unix epoch.
    pub exp: i64,
    /// Role and claims, shared by every subscriber holding equal claims.
    pub group: Arc<ClaimsGroup>,
    /// Whose positions a resume may use: the `sub` claim, or `role:<role>` without one.
    pub subject: String,
}

impl TokenClaims {
    /// Whether the role sees every change without the gate.
    pub fn is_service_role(&self) -> bool {
        self.role == crate::auth::SERVICE_ROLE
    }
}

impl From<crate::auth::Token> for TokenClaims {
    fn from(token: crate::auth::Token) -> Self {
        TokenClaims {
            group: ClaimsGroup::of(&token),
            subject: match &token.sub {
                Some(sub) => sub.clone(),
                None => format!("role:{}", token.role),
            },
            role: token.role,
            exp: token.exp,
        }
    }
}

/// Checks a token at `now` (seconds since the Unix epoch) with the server's one policy and the
/// keys at hand (sessions use [`Verifier::verify`], which may read the JWKS again first).
pub fn verify_token(
    verifier: &Verifier,
    token: &str,
    now: i64,
) -> Result<TokenClaims, TokenProblem> {
    verifier.verify_cached(token, now).map(TokenClaims::from)
}

/// The routes, for a state that provides [`RealtimeState`].
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    RealtimeState: FromRef<S>,
{
    Router::new()
        .route("/realtime/v1/websocket", get(realtime_handler))
        .route("/socket/websocket", get(realtime_handler))
        .merge(rest::routes())
}

/// An HTTP refusal with a Realtime-style `{"error": ...}` body.
fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// `GET /realtime/v1/websocket?apikey=<JWT or sb_ key>&vsn=1.0.0|2.0.0`: checks the client
/// address's session cap and the token, then upgrades.
pub async fn realtime_handler(
    State(state): State<RealtimeState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    place: Option<Extension<crate::http::server::ConnPermit>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Outside the node's broadcaster mode: refuse before upgrading (open sessions stay).
    if let Err(refused) = state.flags.check(Endpoint::Realtime) {
        return axum::response::IntoResponse::into_response(refused);
    }
    // One more session for this client address, before any token work (Supabase's 429).
    let session_place = match place.as_ref().map(|p| p.open_session(&headers)) {
        None => None,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            state.metrics.connections_refused.add("sessions_per_ip", 1);
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                protocol::text::TOO_MANY_CONNECTED_USERS,
            );
        }
    };
    let mut apikey = None;
    let mut vsn = None;
    let mut resume_id = None;
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match &*k {
            "apikey" => apikey = Some(v.into_owned()),
            "vsn" => vsn = Some(v.into_owned()),
            "resume_id" => resume_id = Some(v.into_owned()),
            _ => {}
        }
    }
    // `params: { resume_id }` of realtime-js: where this client's channels resume.
    let resume_id = match resume_id.as_deref().map(resume::parse_resume_id) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let vsn = match Vsn::from_query(vsn.as_deref()) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Some(verifier) = state.auth.verifier().cloned() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, NO_SECRET_MESSAGE);
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let token = header("x-api-key")
        .or(apikey)
        .or_else(|| header("apikey"))
        .unwrap_or_default();
    // The socket's one credential: an API key (supabase-js sends `sb_publishable_…` here) or
    // a JWT; user tokens come later, in join payloads and `access_token` messages.
    if let Err(p) = verifier.verify(&token, crate::auth::unix_now()).await {
        return refuse(StatusCode::UNAUTHORIZED, p.connect_message());
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    ws.max_message_size(state.max_payload + FRAME_ENVELOPE)
        .read_buffer_size(READ_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            // The connection's places under the caps are held until the session ends.
            let _place = (place, session_place);
            state.metrics.clients.add("realtime", 1);
            let client = state
                .clients
                .register(Endpoint::Realtime, peer.map(|Extension(ConnectInfo(a))| a));
            let (sink, stream) = socket.split();
            let mut session = session::Session::new(
                sink,
                stream,
                state,
                vsn,
                verifier,
                token.trim().into(),
                client,
            )
            .with_resume_id(resume_id);
            session.run().await;
        })
}
