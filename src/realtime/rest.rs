//! Broadcast over HTTP, as Supabase Realtime serves it to backends and to realtime-js:
//!
//! - `POST /realtime/v1/api/broadcast` with `{"messages":[{topic, event, payload, private}]}`
//!   (what `channel.send()` falls back to before the channel is joined);
//! - `POST /realtime/v1/api/broadcast/:topic/events/:event` with a JSON body (the payload) or an
//!   `application/octet-stream` body (a binary payload), `?private=true` for a private topic
//!   (what `channel.httpSend()` uses); with `persist=true` or `persist[ttl]=N` on a private
//!   topic the message is also stored in `realtime.messages`, where replay finds it;
//! - `GET /realtime/v1/api/ping`: `{"message":"Success"}`.
//!
//! The same routes answer without the `/realtime/v1` prefix (a client pointed at the socket's
//! own path). Every request needs a token (the `Authorization: Bearer` user token, else the
//! `apikey` header), checked like the socket's. A message goes to the members of the topic on
//! this node through the [`Bus`](super::bus::Bus), exactly like a broadcast pushed on a socket:
//! the same payload limit, the same `realtime.messages` write policies on private topics. With
//! `--cluster-broadcast` a copy also goes to the other walcast nodes
//! ([`cluster`](super::cluster)). The answer is `202 Accepted` with an empty body.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRef, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::bus::{BroadcastBody, TopicKey};
use super::messages::StoredPayload;
use super::private::ChannelExtension;
use super::protocol::frame::PayloadEncoding;
use super::{RealtimeState, TokenClaims};
use crate::auth::{self, extract::Credentials};
use crate::endpoint::Endpoint;

/// Most messages one batch request may carry.
pub const MAX_BATCH_MESSAGES: usize = 100;

/// The routes, for a state that provides [`RealtimeState`].
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    RealtimeState: FromRef<S>,
{
    let mut router = Router::new();
    for prefix in ["/realtime/v1/api", "/api"] {
        router = router
            .route(&format!("{prefix}/broadcast"), post(batch))
            .route(
                &format!("{prefix}/broadcast/{{topic}}/events/{{event}}"),
                post(one),
            )
            .route(&format!("{prefix}/ping"), get(ping));
    }
    // Each handler reads its body itself, after the token, up to its own limit (`read_body`).
    router.layer(DefaultBodyLimit::disable())
}

/// Reads a request body of at most `limit` bytes (read only after the credentials were
/// checked, so an unauthenticated client cannot make walcast read anything); `what` names the
/// limit in the refusal.
async fn read_body(body: Body, limit: usize, what: &str) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_size_exceeded",
            format!("{what} is larger than {limit} bytes"),
        )
    })
}

/// Why a request is refused.
#[derive(Debug)]
enum Refusal {
    /// The node's broadcaster mode does not serve the Realtime endpoint.
    Mode(crate::flags::ModeDisabled),
    /// Realtime's `{"error": text}` body plus walcast's stable `code`.
    Plain {
        /// HTTP status.
        status: StatusCode,
        /// Stable code.
        code: &'static str,
        /// Text.
        message: String,
    },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Mode(m) => m.into_response(),
            Refusal::Plain {
                status,
                code,
                message,
            } => (
                status,
                axum::Json(json!({ "error": message, "code": code })),
            )
                .into_response(),
        }
    }
}

/// A [`Refusal::Plain`] as a response.
fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    refusal(status, code, message).into_response()
}

/// A [`Refusal::Plain`].
fn refusal(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::Plain {
        status,
        code,
        message: message.into(),
    }
}

/// The request's credentials, checked (a user JWT in `Authorization: Bearer` decides, else the
/// `apikey`: a JWT or a configured `sb_` key); or the refusal.
async fn authenticate(
    state: &RealtimeState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<TokenClaims, Refusal> {
    state
        .flags
        .check(Endpoint::Realtime)
        .map_err(Refusal::Mode)?;
    let Some(verifier) = state.auth.verifier() else {
        return Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_secret",
            super::NO_SECRET_MESSAGE,
        ));
    };
    let credentials = Credentials::read(headers, query);
    auth::extract::authenticate(verifier, &credentials, auth::unix_now())
        .await
        .map(TokenClaims::from)
        .map_err(|p| {
            refusal(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                p.connect_message(),
            )
        })
}

/// `GET /api/ping`.
async fn ping(
    State(state): State<RealtimeState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match authenticate(&state, &headers, query.as_deref()).await {
        Ok(_) => axum::Json(json!({"message": "Success"})).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// One message of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchMessage {
    /// The topic without `realtime:` (a leading `realtime:` is accepted too).
    topic: String,
    /// The user's event name.
    event: String,
    /// Any JSON value.
    #[serde(default)]
    payload: Value,
    /// A private topic.
    #[serde(default)]
    private: bool,
    /// Accepted for compatibility (always a broadcast).
    #[serde(default, rename = "type")]
    _type: Option<String>,
}

/// The batch body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    /// The messages.
    messages: Vec<BatchMessage>,
}

/// The full topic for a client-given one (`room` or `realtime:room`).
fn full_topic(topic: &str) -> String {
    let sub = topic.strip_prefix("realtime:").unwrap_or(topic);
    format!("realtime:{sub}")
}

/// Checks a topic and event name; the refusal text otherwise.
fn check_names(topic: &str, event: &str) -> Result<(), String> {
    let sub = topic.strip_prefix("realtime:").unwrap_or(topic);
    if sub.is_empty() || sub.len() > 255 {
        return Err("topic must be 1 to 255 characters".into());
    }
    if event.is_empty() || event.len() > 255 {
        return Err("event must be 1 to 255 characters".into());
    }
    Ok(())
}

/// Whether the token may write broadcasts on the topic: always on public topics and for
/// `service_role`; on other private topics the `realtime.messages` policies decide.
async fn may_write(
    state: &RealtimeState,
    claims: &TokenClaims,
    key: &TopicKey,
) -> Result<bool, Refusal> {
    if !key.private || claims.is_service_role() {
        return Ok(true);
    }
    let sub = key.topic.strip_prefix("realtime:").unwrap_or(&key.topic);
    state
        .private
        .write(&claims.group, sub, ChannelExtension::Broadcast)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, kind = e.kind(), "realtime REST broadcast: private write check failed");
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "authorization_unavailable",
                "the channel's policies could not be checked; retry later",
            )
        })
}

/// `POST /api/broadcast`: every message is checked first (shape, names, payload size); then
/// each is sent. A message to a private topic the token may not write is skipped, as Supabase
/// Realtime skips it; the request still answers 202.
async fn batch(
    State(state): State<RealtimeState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let claims = match authenticate(&state, &headers, query.as_deref()).await {
        Ok(c) => c,
        Err(refused) => return refused.into_response(),
    };
    let max_body = state.max_payload.saturating_mul(4).max(1 << 20);
    let body = match read_body(body, max_body, "the request body").await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_message",
                format!(
                    "expected {{\"messages\":[{{\"topic\",\"event\",\"payload\",\"private\"}}]}}: {e}"
                ),
            );
        }
    };
    if batch.messages.len() > MAX_BATCH_MESSAGES {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_too_large",
            format!("at most {MAX_BATCH_MESSAGES} messages per request"),
        );
    }
    let mut ready = Vec::with_capacity(batch.messages.len());
    for (i, m) in batch.messages.into_iter().enumerate() {
        if let Err(e) = check_names(&m.topic, &m.event) {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_message",
                format!("message {i}: {e}"),
            );
        }
        let payload = json!({"type": "broadcast", "event": m.event, "payload": m.payload});
        let text = payload.to_string();
        if text.len() > state.max_payload {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_size_exceeded",
                format!(
                    "message {i}: the payload is larger than {} bytes",
                    state.max_payload
                ),
            );
        }
        let key = TopicKey {
            private: m.private,
            topic: full_topic(&m.topic),
        };
        ready.push((key, text));
    }
    let budget = state.limits.channel_messages_per_second;
    let mut dropped = 0usize;
    for (key, text) in ready {
        match may_write(&state, &claims, &key).await {
            Ok(true) if !state.bus.admit_unjoined(&key, budget, Instant::now()) => {
                dropped += 1;
            }
            Ok(true) => {
                let body = BroadcastBody::Json(text);
                state.relay.send(&key, &body);
                state.bus.publish(&key, body);
            }
            Ok(false) => {
                tracing::debug!(topic = %key.topic, role = %claims.role, "realtime REST broadcast: write refused by policy; skipped");
            }
            Err(refused) => return refused.into_response(),
        }
    }
    if dropped > 0 {
        state
            .metrics
            .realtime_rate_limited
            .add("channel_messages", dropped as u64);
        return too_many_messages(format!(
            "{dropped} message(s) over the channel's budget of {budget} per second were not sent"
        ));
    }
    StatusCode::ACCEPTED.into_response()
}

/// 429 with Supabase's text and a detail of what was not sent.
fn too_many_messages(detail: String) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({
            "error": "Too many messages per second",
            "code": "too_many_messages",
            "detail": detail,
        })),
    )
        .into_response()
}

/// `POST /api/broadcast/:topic/events/:event[?private=true]`: the body is the payload (JSON,
/// or raw bytes with `application/octet-stream`).
async fn one(
    State(state): State<RealtimeState>,
    Path((topic, event)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let claims = match authenticate(&state, &headers, query.as_deref()).await {
        Ok(c) => c,
        Err(refused) => return refused.into_response(),
    };
    if let Err(e) = check_names(&topic, &event) {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "invalid_message", e);
    }
    let mut private = false;
    let mut persist = false;
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match &*k {
            "private" => private = v == "true",
            // `persist=true` or `persist[ttl]=N`: store it for replay (private topics only).
            "persist" => persist = v == "true",
            k if k.starts_with("persist[") => persist = true,
            _ => {}
        }
    }
    let body = match read_body(body, state.max_payload, "the payload").await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/octet-stream"));
    let (body, stored) = if binary {
        let bytes = body.to_vec();
        let stored = StoredPayload::Binary(bytes.clone());
        let body = BroadcastBody::Binary {
            event: event.clone(),
            metadata: None,
            encoding: PayloadEncoding::Binary,
            payload: bytes,
        };
        (body, stored)
    } else {
        let payload: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_message",
                    format!("the body is not JSON (send application/octet-stream for bytes): {e}"),
                );
            }
        };
        let body = BroadcastBody::Json(
            json!({"type": "broadcast", "event": event, "payload": payload}).to_string(),
        );
        (body, StoredPayload::Json(payload))
    };
    let key = TopicKey {
        private,
        topic: full_topic(&topic),
    };
    match may_write(&state, &claims, &key).await {
        Ok(true) => {
            let budget = state.limits.channel_messages_per_second;
            if !state.bus.admit_unjoined(&key, budget, Instant::now()) {
                state
                    .metrics
                    .realtime_rate_limited
                    .add("channel_messages", 1);
                return too_many_messages(format!(
                    "the channel's budget is {budget} messages per second"
                ));
            }
            // Stored first, so a replay that starts once this is accepted finds it. Replay
            // serves private topics only: a public one is relayed without being stored.
            if persist
                && private
                && let Err(e) = state.messages.store(&topic, &event, stored).await
            {
                tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), "realtime REST broadcast: could not store a message sent with persist");
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unable_to_store",
                    super::protocol::text::PERSIST_FAILED.to_owned(),
                );
            }
            // A stored message reaches the other nodes as its `realtime.messages` row.
            if !(persist && private) {
                state.relay.send(&key, &body);
            }
            state.bus.publish(&key, body);
            StatusCode::ACCEPTED.into_response()
        }
        Ok(false) => refuse(
            StatusCode::FORBIDDEN,
            "unauthorized",
            format!(
                "Unauthorized: You do not have permissions to write to this Channel topic: {}",
                key.topic.strip_prefix("realtime:").unwrap_or(&key.topic)
            ),
        ),
        Err(refused) => refused.into_response(),
    }
}
