//! The Supabase Realtime session: `GET /realtime/v1/websocket` (also `/socket/websocket`).
//!
//! The upgrade handler checks the `apikey` JWT *before* upgrading and refuses with an HTTP error
//! body the way Realtime does. A session then serves Phoenix channels over one socket:
//! heartbeats, `phx_join`/`phx_leave`, `postgres_changes` from the hub (the same hub, and so the
//! same changes, as `/ws`), `access_token` refresh and expiry, and broadcast and presence
//! between sockets of this node through [`bus`].
//!
//! The session owns its channels and decides what to send when; every byte comes from
//! [`crate::protocol::realtime`], row visibility from [`crate::realtime_auth::RlsGate`]. It
//! never touches pgoutput. Writes are batched like `/ws`; a client that falls behind the hub's
//! ring or overflows its bus inbox is told so on every channel and disconnected.

pub mod bus;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use self::bus::{BroadcastBody, Bus, BusEvent, Delivery, Inbox, MemberId, TopicKey};
use super::{MAX_CLIENT_MESSAGE, MAX_WRITE_BUFFER, WRITE_BATCH, WRITE_TIMEOUT};
use crate::admin::clients::{ClientHandle, Protocol, SubscriptionInfo};
use crate::decode::{Change, Cursor, Lsn, Operation};
use crate::http::AppState;
use crate::hub::{HubItem, Subscription};
use crate::protocol::realtime::changes::{
    self, Binding, BindingError, BindingRequest, encode_change_data, encode_change_data_for,
};
use crate::protocol::realtime::frame::{self, ClientMessage, UserBroadcast, Vsn};
use crate::protocol::realtime::join::{TopicError, parse_join, sub_topic};
use crate::protocol::realtime::presence::{PresenceRequest, parse_broadcast, parse_presence};
use crate::protocol::realtime::text::{self, JoinError, TokenProblem, system_payload};
use crate::protocol::realtime::{
    IDLE_TIMEOUT, MAX_CHANNELS, PHOENIX_TOPIC, PRESENCE_CALLS_PER_WINDOW, PRESENCE_WINDOW,
};
use crate::realtime_auth::{
    Ask, ChannelExtension, ClaimsGroup, GateError, REALTIME_SCHEMA, REALTIME_TABLE, RlsGate,
    TokenClaims, verify_token,
};

/// Close code after the client fell behind (same as `/ws`).
pub const CLOSE_LAGGED: u16 = 4008;
/// Close code on server shutdown.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code after [`IDLE_TIMEOUT`] without a message from the client.
pub const CLOSE_IDLE: u16 = 1000;

/// The error body when walcast runs without a JWT secret.
pub const NO_SECRET_MESSAGE: &str = "The Realtime endpoint needs a JWT secret: start walcast with \
     --jwt-secret (or WALCAST_JWT_SECRET) set to the project's JWT secret";

/// Realtime state shared by every session: the row level security gate and the topic bus.
#[derive(Debug)]
pub struct RealtimeState {
    /// Row visibility for roles other than `service_role`.
    pub gate: RlsGate,
    /// Broadcast and presence between sockets of this node.
    pub bus: Bus,
}

impl RealtimeState {
    /// Shared state checking rows on `pool` for walcast's `publication`, counting the gate's
    /// calls in `metrics`.
    pub fn new(
        pool: deadpool_postgres::Pool,
        publication: &str,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        RealtimeState {
            gate: RlsGate::new(pool, publication).with_metrics(metrics),
            bus: Bus::default(),
        }
    }
}

/// An HTTP refusal with a Realtime-style `{"error": ...}` body.
fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// `GET /realtime/v1/websocket?apikey=<JWT>&vsn=1.0.0|2.0.0`: checks the token, then upgrades.
pub async fn realtime_handler(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Outside the node's broadcaster mode: refuse before upgrading (open sessions stay).
    if let Err(refused) = state.flags.check(crate::flags::Path::Realtime) {
        return axum::response::IntoResponse::into_response(refused);
    }
    let mut apikey = None;
    let mut vsn = None;
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match &*k {
            "apikey" => apikey = Some(v.into_owned()),
            "vsn" => vsn = Some(v.into_owned()),
            _ => {}
        }
    }
    let vsn = match Vsn::from_query(vsn.as_deref()) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Some(secret) = state.config.jwt_secret.clone() else {
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
    if let Err(p) = verify_token(&secret, &token, unix_now()) {
        return refuse(StatusCode::UNAUTHORIZED, p.connect_message());
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(super::READ_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            state.metrics.clients.add("realtime", 1);
            let client = state
                .clients
                .register(Protocol::Realtime, peer.map(|Extension(ConnectInfo(a))| a));
            let mut session = Session::new(socket, state, vsn, secret, token.trim().into(), client);
            session.run().await;
        })
}

/// Why a session step stopped the session.
#[derive(Debug)]
enum End {
    /// The peer went away or a write failed.
    Gone,
    /// The session closed the socket.
    Closed,
}

/// One joined channel.
#[derive(Debug)]
struct Channel {
    /// `realtime:<name>`.
    topic: String,
    /// `<name>`.
    sub_topic: String,
    /// The ref of its `phx_join`.
    join_ref: Option<String>,
    /// Its bus topic.
    key: TopicKey,
    /// Its bus membership.
    member: MemberId,
    /// `broadcast.ack`.
    ack: bool,
    /// Joined without `config`: legacy change events.
    legacy: bool,
    /// The token in effect.
    token: String,
    /// Its claims.
    claims: TokenClaims,
    /// The bindings as requested.
    requests: Vec<BindingRequest>,
    /// The subscribed bindings (empty when the subscription failed).
    bindings: Vec<Binding>,
    /// The columns its role may read; `None`: all (the shared payload is sent).
    columns: Option<Arc<[String]>>,
    /// Times of recent presence calls, for the rate limit.
    presence_calls: VecDeque<Instant>,
    /// `presence.enabled`.
    presence: bool,
    /// Whether the policies let its token broadcast, once asked.
    may_broadcast: Option<bool>,
    /// Whether the policies let its token track presence, once asked.
    may_track: Option<bool>,
}

impl Channel {
    /// A private channel joined under the `realtime.messages` policies (not as
    /// `service_role`): broadcasts and tracks are checked for write permission.
    fn policed(&self) -> bool {
        self.key.private && !self.claims.is_service_role()
    }

    /// How the client registry shows this channel: its bindings and role, and whether it
    /// receives every change of the events table with every column.
    fn registry_info(&self) -> SubscriptionInfo {
        let bindings: Vec<String> = self.requests.iter().map(|r| r.describe()).collect();
        let filter = if bindings.is_empty() {
            format!("role={} (broadcast/presence only)", self.claims.role)
        } else {
            format!("role={} {}", self.claims.role, bindings.join("; "))
        };
        let everything = !self.legacy
            && self.claims.is_service_role()
            && self.columns.is_none()
            && self.bindings.iter().any(|b| {
                b.event == changes::EventFilter::All
                    && b.conditions.is_empty()
                    && b.schema.as_deref().is_none_or(|s| s == REALTIME_SCHEMA)
                    && b.table.as_deref().is_none_or(|t| t == REALTIME_TABLE)
            });
        SubscriptionInfo {
            id: self.topic.clone(),
            filter,
            everything,
        }
    }

    /// Ids of the bindings matching a change, each once, in binding order.
    fn matching_ids(&self, change: &Change) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::new();
        for b in &self.bindings {
            if !ids.contains(&b.id) && b.matches(change) {
                ids.push(b.id);
            }
        }
        ids
    }
}

/// A successful `postgres_changes` subscription.
#[derive(Debug, Clone, Default)]
struct Subscribed {
    /// The bindings.
    bindings: Vec<Binding>,
    /// The columns the role may read; `None`: all.
    columns: Option<Arc<[String]>>,
}

/// A change matched by a channel, waiting for the gate.
struct Hit {
    /// Index into the batch.
    item: usize,
    /// Index into the channels.
    channel: usize,
    /// Matching binding ids.
    ids: Vec<u32>,
    /// The gate question, when the role is not `service_role` and the row is not a DELETE.
    check: Option<(Lsn, Arc<ClaimsGroup>, Uuid)>,
}

/// One connected Realtime client.
struct Session {
    /// Outgoing half.
    sink: SplitSink<WebSocket, Message>,
    /// Incoming half.
    stream: SplitStream<WebSocket>,
    /// Server state.
    state: AppState,
    /// Realtime shared state.
    rt: Arc<RealtimeState>,
    /// The client's serializer.
    vsn: Vsn,
    /// The server's JWT secret.
    secret: String,
    /// The connect-time token (used by joins without `access_token`).
    connect_token: String,
    /// Live changes.
    hub: Subscription,
    /// The newest change examined; older ones (re-streamed after a reader reconnect, or
    /// committed before walcast started) are skipped.
    position: Option<Cursor>,
    /// This session's bus inbox (sending half, cloned into each membership).
    inbox: Inbox,
    /// Bus deliveries.
    inbox_rx: mpsc::Receiver<Delivery>,
    /// Joined channels.
    channels: Vec<Channel>,
    /// When the client last sent anything.
    last_seen: Instant,
    /// This session in the client registry (unregistered when the session ends).
    client: ClientHandle,
}

impl Drop for Session {
    fn drop(&mut self) {
        for ch in &self.channels {
            self.rt.bus.leave(&ch.key, ch.member);
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The primary key of a change's new row (the gate's question).
fn row_id(change: &Change) -> Option<Uuid> {
    change
        .record
        .as_ref()?
        .values
        .get("id")?
        .as_str()?
        .parse()
        .ok()
}

impl Session {
    /// A session over an upgraded socket.
    fn new(
        socket: WebSocket,
        state: AppState,
        vsn: Vsn,
        secret: String,
        connect_token: String,
        client: ClientHandle,
    ) -> Self {
        let (sink, stream) = socket.split();
        let hub = state.hub.subscribe();
        let position = hub.live_from;
        client.delivered(0, position);
        let (inbox, inbox_rx) = Inbox::new();
        Session {
            sink,
            stream,
            rt: Arc::clone(&state.realtime),
            state,
            vsn,
            secret,
            connect_token,
            hub,
            position,
            inbox,
            inbox_rx,
            channels: Vec::new(),
            last_seen: Instant::now(),
            client,
        }
    }

    /// The session loop.
    async fn run(&mut self) {
        let shutdown = self.state.shutdown.clone();
        loop {
            let idle_at = self.last_seen + IDLE_TIMEOUT;
            let expiry = self.next_expiry();
            let step = tokio::select! {
                biased;
                // PRIORITY 1: shutdown.
                _ = shutdown.cancelled() => {
                    self.shutdown().await;
                    return;
                }
                // PRIORITY 2: the client.
                msg = self.stream.next() => self.on_client(msg).await,
                // PRIORITY 3: broadcast and presence from other sockets.
                Some(d) = self.inbox_rx.recv() => self.on_deliveries(d).await,
                // PRIORITY 4: live changes.
                item = self.hub.rx.recv() => self.on_live(item).await,
                // PRIORITY 5: token expiry.
                _ = tokio::time::sleep_until(expiry.unwrap_or(idle_at)), if expiry.is_some() => {
                    self.on_expiry().await
                }
                // PRIORITY 6: idle timeout.
                _ = tokio::time::sleep_until(idle_at) => {
                    let _ = self.close(CLOSE_IDLE, "idle timeout: no message from the client for 60 s").await;
                    Err(End::Closed)
                }
            };
            if step.is_err() {
                return;
            }
            if self.inbox.overflowed() {
                let _ = self.lagged().await;
                return;
            }
        }
    }

    /// When the earliest channel token expires.
    fn next_expiry(&self) -> Option<Instant> {
        let exp = self.channels.iter().map(|c| c.claims.exp).min()?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let delay = exp.saturating_mul(1000).saturating_sub(now_ms).max(0);
        Some(Instant::now() + Duration::from_millis(u64::try_from(delay).unwrap_or(0)))
    }

    /// Handles one frame from the client.
    async fn on_client(&mut self, msg: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        let msg = match msg {
            Some(Ok(m)) => m,
            None | Some(Err(_)) => return Err(End::Gone),
        };
        self.last_seen = Instant::now();
        match msg {
            Message::Text(t) => match frame::parse_text(self.vsn, &t) {
                Ok(m) => self.on_message(m).await,
                Err(e) => {
                    tracing::debug!(error = %e, "realtime: dropped an unreadable frame");
                    Ok(())
                }
            },
            Message::Binary(b) => match frame::parse_binary(&b) {
                Ok(ub) => self.on_binary_broadcast(ub).await,
                Err(e) => {
                    tracing::debug!(error = %e, "realtime: dropped an unreadable binary frame");
                    Ok(())
                }
            },
            Message::Close(_) => Err(End::Gone),
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        }
    }

    /// Dispatches one client message.
    async fn on_message(&mut self, m: ClientMessage) -> Result<(), End> {
        if m.topic == PHOENIX_TOPIC {
            if m.event == "heartbeat" {
                let reply = frame::encode_reply(
                    self.vsn,
                    m.join_ref.as_deref(),
                    m.r#ref.as_deref(),
                    PHOENIX_TOPIC,
                    true,
                    "{}",
                );
                return self.send(reply).await;
            }
            return Ok(());
        }
        if m.event == "phx_join" {
            return self.on_join(m).await;
        }
        let Some(i) = self.channel_index(&m.topic) else {
            let reply = frame::encode_error_reply(
                self.vsn,
                m.join_ref.as_deref(),
                m.r#ref.as_deref(),
                &m.topic,
                &JoinError::UnmatchedTopic.reason(),
            );
            return self.send(reply).await;
        };
        match m.event.as_str() {
            "phx_leave" => {
                let reply = frame::encode_reply(
                    self.vsn,
                    m.join_ref.as_deref(),
                    m.r#ref.as_deref(),
                    &m.topic,
                    true,
                    "{}",
                );
                self.send(reply).await?;
                self.close_channel(i).await
            }
            "access_token" => self.on_access_token(i, &m.payload).await,
            "broadcast" => self.on_text_broadcast(i, m).await,
            "presence" => self.on_presence(i, m).await,
            other => {
                tracing::debug!(event = other, "realtime: ignored a channel event");
                Ok(())
            }
        }
    }

    /// The index of the channel joined on `topic`.
    fn channel_index(&self, topic: &str) -> Option<usize> {
        self.channels.iter().position(|c| c.topic == topic)
    }

    /// `phx_join`.
    async fn on_join(&mut self, m: ClientMessage) -> Result<(), End> {
        let join_ref = m.join_ref.clone().or_else(|| m.r#ref.clone());
        let vsn = self.vsn;
        let refuse = |reason: String| {
            frame::encode_error_reply(
                vsn,
                join_ref.as_deref(),
                m.r#ref.as_deref(),
                &m.topic,
                &reason,
            )
        };
        let sub = match sub_topic(&m.topic) {
            Ok(s) => s.to_owned(),
            Err(TopicError::Unmatched) => {
                return self.send(refuse(JoinError::UnmatchedTopic.reason())).await;
            }
            Err(TopicError::NameRequired) => {
                return self
                    .send(refuse(JoinError::TopicNameRequired.reason()))
                    .await;
            }
        };
        // A second join of the same topic replaces the first.
        if let Some(i) = self.channel_index(&m.topic) {
            self.close_channel(i).await?;
        }
        if self.channels.len() >= MAX_CHANNELS {
            return self.send(refuse(JoinError::TooManyChannels.reason())).await;
        }
        let req = parse_join(&sub, &m.payload);
        if !req.problems.is_empty() {
            tracing::debug!(problems = ?req.problems, "realtime: join payload values ignored");
        }
        let token = req
            .access_token
            .clone()
            .unwrap_or_else(|| self.connect_token.clone());
        // The connect token was checked at upgrade, but it may have expired since.
        let claims = match verify_token(&self.secret, &token, unix_now()) {
            Ok(c) => c,
            Err(p) => return self.send(refuse(p.join_error().reason())).await,
        };
        let config = req.config;
        if config.private && !claims.is_service_role() {
            let access = self
                .rt
                .gate
                .private_channel_access(&claims.group, &sub, config.presence_enabled)
                .await;
            let refused = match access {
                Ok(a) if a.may_join() => None,
                // Denied by the policies, or no `realtime.messages`: service_role only.
                Ok(_) => Some(JoinError::Unauthorized {
                    sub_topic: sub.clone(),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "realtime: private channel check failed");
                    Some(JoinError::DatabaseUnavailable)
                }
            };
            if let Some(error) = refused {
                return self.send(refuse(error.reason())).await;
            }
        }
        let subscription = if config.postgres_changes.is_empty() {
            None
        } else {
            Some(self.subscribe(&config.postgres_changes, &claims).await)
        };
        let response = if config.legacy {
            "{}".to_owned()
        } else {
            changes::encode_join_response(&config.postgres_changes)
        };
        let reply = frame::encode_reply(
            self.vsn,
            join_ref.as_deref(),
            m.r#ref.as_deref(),
            &m.topic,
            true,
            &response,
        );
        self.send(reply).await?;
        let key = TopicKey {
            private: config.private,
            topic: m.topic.clone(),
        };
        let presence_key = config
            .presence_key
            .clone()
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let joined = self.rt.bus.join(
            &key,
            self.inbox.clone(),
            config.broadcast_self,
            config.presence_enabled,
            presence_key,
        );
        let subscribed = match &subscription {
            Some(Ok(s)) => s.clone(),
            _ => Subscribed::default(),
        };
        self.channels.push(Channel {
            topic: m.topic.clone(),
            sub_topic: sub,
            join_ref,
            key,
            member: joined.member,
            ack: config.broadcast_ack,
            legacy: config.legacy,
            token,
            claims,
            requests: config.postgres_changes,
            bindings: subscribed.bindings,
            columns: subscribed.columns,
            presence_calls: VecDeque::new(),
            presence: config.presence_enabled,
            may_broadcast: None,
            may_track: None,
        });
        let i = self.channels.len() - 1;
        self.client.subscribe(self.channels[i].registry_info());
        if let Some(state) = joined.presence_state {
            let push = frame::encode_push(
                self.vsn,
                self.channels[i].join_ref.as_deref(),
                &m.topic,
                "presence_state",
                &state,
            );
            self.send(push).await?;
        }
        if let Some(result) = subscription {
            self.announce_subscription(i, result.map(|_| ())).await?;
        }
        Ok(())
    }

    /// Checks bindings against the published table and the role; the error is the client text.
    async fn subscribe(
        &self,
        requests: &[BindingRequest],
        claims: &TokenClaims,
    ) -> Result<Subscribed, String> {
        let facts = match self.rt.gate.table_facts().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), "realtime: cannot read table facts");
                return Err(text::DATABASE_UNAVAILABLE.to_owned());
            }
        };
        let mut bindings = Vec::with_capacity(requests.len());
        for r in requests {
            let b = changes::bind(r, std::slice::from_ref(&*facts)).map_err(|e| e.to_string())?;
            bindings.push(b);
        }
        let mut columns = None;
        if !claims.is_service_role() {
            match self.rt.gate.check_role(&claims.group).await {
                Ok(c) => columns = c,
                Err(e @ GateError::Denied { .. }) => {
                    let params = requests.first().map(|r| r.describe()).unwrap_or_default();
                    return Err(BindingError::Exception {
                        params,
                        cause: e.to_string(),
                    }
                    .to_string());
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "realtime: role check failed");
                    return Err(text::DATABASE_UNAVAILABLE.to_owned());
                }
            }
        }
        Ok(Subscribed { bindings, columns })
    }

    /// Sends the `postgres_changes` system message for channel `i`.
    async fn announce_subscription(
        &mut self,
        i: usize,
        result: Result<(), String>,
    ) -> Result<(), End> {
        match result {
            Ok(()) => {
                self.system(i, "postgres_changes", true, text::SUBSCRIBED_TO_POSTGRES)
                    .await
            }
            Err(message) => self.system(i, "postgres_changes", false, &message).await,
        }
    }

    /// `access_token` on channel `i`: no reply on success; a bad token closes the channel.
    async fn on_access_token(&mut self, i: usize, payload: &Value) -> Result<(), End> {
        let Some(token) = payload
            .get("access_token")
            .and_then(Value::as_str)
            .map(str::trim)
        else {
            return Ok(());
        };
        if token.is_empty() || token.starts_with("sb_") || token == self.channels[i].token {
            return Ok(());
        }
        let claims = match verify_token(&self.secret, token, unix_now()) {
            Ok(c) => c,
            Err(p) => return self.fail_channel(i, &p.live_message()).await,
        };
        let ch = &self.channels[i];
        if ch.key.private && !claims.is_service_role() && ch.claims.group != claims.group {
            let access = self
                .rt
                .gate
                .private_channel_access(&claims.group, &ch.sub_topic, ch.presence)
                .await;
            match access {
                Ok(a) if a.may_join() => {}
                Ok(_) => {
                    let message = text::read_revoked(&ch.sub_topic);
                    return self.fail_channel(i, &message).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = e.kind(), "realtime: private channel check failed");
                    return self.fail_channel(i, text::DATABASE_UNAVAILABLE).await;
                }
            }
        }
        let ch = &mut self.channels[i];
        if ch.claims.group != claims.group {
            // Write permission is asked again with the new claims.
            ch.may_broadcast = None;
            ch.may_track = None;
        }
        let regroup = ch.claims.group != claims.group && !ch.requests.is_empty();
        let requests = ch.requests.clone();
        self.channels[i].token = token.to_owned();
        if regroup {
            let result = self.subscribe(&requests, &claims).await;
            let subscribed = result.clone().unwrap_or_default();
            let ch = &mut self.channels[i];
            ch.claims = claims;
            ch.bindings = subscribed.bindings;
            ch.columns = subscribed.columns;
            self.client.subscribe(self.channels[i].registry_info());
            self.announce_subscription(i, result.map(|_| ())).await?;
        } else {
            self.channels[i].claims = claims;
            self.client.subscribe(self.channels[i].registry_info());
        }
        Ok(())
    }

    /// Whether channel `i`'s token may write `extension` messages: always on public channels
    /// and for `service_role`; on other private channels the `realtime.messages` policies
    /// decide, asked once per channel and token. A failed check refuses this write only.
    async fn may_write(&mut self, i: usize, extension: ChannelExtension) -> bool {
        let ch = &self.channels[i];
        if !ch.policed() {
            return true;
        }
        let known = match extension {
            ChannelExtension::Broadcast => ch.may_broadcast,
            ChannelExtension::Presence => ch.may_track,
        };
        if let Some(may) = known {
            return may;
        }
        let group = Arc::clone(&ch.claims.group);
        let asked = self
            .rt
            .gate
            .private_channel_write(&group, &ch.sub_topic, extension)
            .await;
        match asked {
            Ok(may) => {
                let ch = &mut self.channels[i];
                match extension {
                    ChannelExtension::Broadcast => ch.may_broadcast = Some(may),
                    ChannelExtension::Presence => ch.may_track = Some(may),
                }
                may
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), "realtime: private channel write check failed");
                false
            }
        }
    }

    /// A text `broadcast` push on channel `i`. On a private channel whose policies refuse the
    /// write it is dropped without a reply, as Supabase Realtime does.
    async fn on_text_broadcast(&mut self, i: usize, m: ClientMessage) -> Result<(), End> {
        if parse_broadcast(&m.payload).is_err() {
            tracing::debug!("realtime: dropped a broadcast without an event");
            return Ok(());
        }
        if !self.may_write(i, ChannelExtension::Broadcast).await {
            return Ok(());
        }
        let ch = &self.channels[i];
        let body = BroadcastBody::Json(m.payload.to_string());
        self.rt.bus.broadcast(&ch.key, ch.member, body);
        if ch.ack {
            let reply = frame::encode_reply(
                self.vsn,
                m.join_ref.as_deref(),
                m.r#ref.as_deref(),
                &m.topic,
                true,
                "{}",
            );
            return self.send(reply).await;
        }
        Ok(())
    }

    /// A binary (kind 3) broadcast push.
    async fn on_binary_broadcast(&mut self, b: UserBroadcast) -> Result<(), End> {
        let Some(i) = self.channel_index(&b.topic) else {
            let reply = frame::encode_error_reply(
                self.vsn,
                b.join_ref.as_deref(),
                b.r#ref.as_deref(),
                &b.topic,
                &JoinError::UnmatchedTopic.reason(),
            );
            return self.send(reply).await;
        };
        if !self.may_write(i, ChannelExtension::Broadcast).await {
            return Ok(());
        }
        let ch = &self.channels[i];
        let body = BroadcastBody::Binary {
            event: b.event,
            metadata: b.metadata,
            encoding: b.encoding,
            payload: b.payload,
        };
        self.rt.bus.broadcast(&ch.key, ch.member, body);
        if ch.ack {
            let reply = frame::encode_reply(
                self.vsn,
                b.join_ref.as_deref(),
                b.r#ref.as_deref(),
                &b.topic,
                true,
                "{}",
            );
            return self.send(reply).await;
        }
        Ok(())
    }

    /// A `presence` push on channel `i`.
    async fn on_presence(&mut self, i: usize, m: ClientMessage) -> Result<(), End> {
        let now = Instant::now();
        let calls = &mut self.channels[i].presence_calls;
        while calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= PRESENCE_WINDOW)
        {
            calls.pop_front();
        }
        if calls.len() >= PRESENCE_CALLS_PER_WINDOW {
            return self.fail_channel(i, text::PRESENCE_RATE_LIMIT).await;
        }
        calls.push_back(now);
        let request = parse_presence(&m.payload);
        // A track the private channel's policies refuse is dropped without a reply.
        if matches!(request, Ok(PresenceRequest::Track(_)))
            && !self.may_write(i, ChannelExtension::Presence).await
        {
            return Ok(());
        }
        let ch = &self.channels[i];
        let reply = match request {
            Ok(PresenceRequest::Track(payload)) => {
                self.rt.bus.track(&ch.key, ch.member, payload);
                Ok(())
            }
            Ok(PresenceRequest::Untrack) => {
                self.rt.bus.untrack(&ch.key, ch.member);
                Ok(())
            }
            Err(e) => Err(e.reason()),
        };
        let text = match reply {
            Ok(()) => frame::encode_reply(
                self.vsn,
                m.join_ref.as_deref(),
                m.r#ref.as_deref(),
                &m.topic,
                true,
                "{}",
            ),
            Err(reason) => frame::encode_error_reply(
                self.vsn,
                m.join_ref.as_deref(),
                m.r#ref.as_deref(),
                &m.topic,
                &reason,
            ),
        };
        self.send(text).await
    }

    /// Delivers bus messages: the first and whatever else is queued, then flushes once.
    async fn on_deliveries(&mut self, first: Delivery) -> Result<(), End> {
        let mut next = Some(first);
        let mut queued = 0usize;
        while let Some(d) = next.take() {
            if let Some(ch) = self.channels.iter().find(|c| c.member == d.member) {
                let msg = match d.event {
                    BusEvent::Broadcast(b) => b.frame(self.vsn),
                    BusEvent::PresenceDiff(payload) => Some(Message::Text(Utf8Bytes::from(
                        frame::encode_fastlane(self.vsn, &ch.topic, "presence_diff", &payload),
                    ))),
                };
                if let Some(msg) = msg {
                    self.feed(msg).await?;
                    queued += 1;
                }
            }
            if queued < WRITE_BATCH {
                next = self.inbox_rx.try_recv().ok();
            }
        }
        self.flush(queued).await
    }

    /// Delivers live changes: the first item and whatever else is ready.
    async fn on_live(&mut self, first: Result<Arc<HubItem>, RecvError>) -> Result<(), End> {
        let mut items = match first {
            Ok(i) => vec![i],
            Err(RecvError::Lagged(_)) => return self.lagged().await,
            Err(RecvError::Closed) => return Err(End::Closed),
        };
        let mut lagged = false;
        while items.len() < WRITE_BATCH {
            match self.hub.rx.try_recv() {
                Ok(i) => items.push(i),
                Err(TryRecvError::Lagged(_)) => {
                    lagged = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let delivered = self.deliver_changes(&items).await?;
        self.client.delivered(delivered, self.position);
        if lagged {
            return self.lagged().await;
        }
        Ok(())
    }

    /// Matches a batch of changes against every channel, asks the gate once per (commit,
    /// claims group), and sends one frame per matching channel and change; returns how many.
    async fn deliver_changes(&mut self, items: &[Arc<HubItem>]) -> Result<usize, End> {
        // 0. Skip what was already examined.
        let mut fresh = Vec::with_capacity(items.len());
        for item in items {
            if self.position.is_none_or(|p| item.change.cursor > p) {
                self.position = Some(item.change.cursor);
                fresh.push(Arc::clone(item));
            }
        }
        let items = fresh.as_slice();
        if self.channels.iter().all(|c| c.bindings.is_empty()) {
            return Ok(0);
        }
        // 1. Match.
        let mut hits: Vec<Hit> = Vec::new();
        let mut asks: HashMap<(Lsn, Arc<ClaimsGroup>), (u32, Vec<Uuid>)> = HashMap::new();
        for (ii, item) in items.iter().enumerate() {
            let change = &item.change;
            if &*change.relation.schema != REALTIME_SCHEMA
                || &*change.relation.table != REALTIME_TABLE
            {
                continue;
            }
            for (ci, ch) in self.channels.iter().enumerate() {
                let ids = ch.matching_ids(change);
                if ids.is_empty() {
                    continue;
                }
                let check = if ch.claims.is_service_role() || change.op == Operation::Delete {
                    None
                } else {
                    // A row without a readable id cannot be checked, so it is not sent.
                    let Some(id) = row_id(change) else { continue };
                    let key = (change.cursor.commit_lsn, Arc::clone(&ch.claims.group));
                    asks.entry(key.clone())
                        .or_insert_with(|| (change.xid, Vec::new()))
                        .1
                        .push(id);
                    Some((key.0, key.1, id))
                };
                hits.push(Hit {
                    item: ii,
                    channel: ci,
                    ids,
                    check,
                });
            }
        }
        if hits.is_empty() {
            return Ok(0);
        }
        // 2. Ask the gate.
        let mut visible: HashMap<(Lsn, Arc<ClaimsGroup>), HashSet<Uuid>> = HashMap::new();
        let mut failed: HashSet<Arc<ClaimsGroup>> = HashSet::new();
        let asks: Vec<_> = asks.into_iter().collect();
        let questions: Vec<Ask<'_>> = asks
            .iter()
            .map(|((lsn, group), (xid, ids))| Ask {
                group,
                lsn: *lsn,
                xid: *xid,
                ids,
            })
            .collect();
        let answers = self.rt.gate.visible_all(&questions).await;
        for (((lsn, group), _), answer) in asks.iter().zip(answers) {
            match answer {
                Ok(v) => {
                    visible.insert((*lsn, Arc::clone(group)), v);
                }
                Err(e) => {
                    tracing::debug!(error = %e, kind = e.kind(), lsn = %lsn, "realtime: row level security check failed");
                    failed.insert(Arc::clone(group));
                }
            }
        }
        // 3. Encode and send.
        let facts = self.rt.gate.cached_table_facts();
        let mut frames = Vec::with_capacity(hits.len());
        for hit in hits {
            if let Some((lsn, group, id)) = hit.check {
                let seen = visible
                    .get(&(lsn, group))
                    .is_some_and(|set| set.contains(&id));
                if !seen {
                    continue;
                }
            }
            let item = &items[hit.item];
            let ch = &self.channels[hit.channel];
            let table_facts = |c: &Change| {
                facts
                    .as_deref()
                    .filter(|f| f.schema == *c.relation.schema && f.table == *c.relation.table)
            };
            let data: Arc<str> = match &ch.columns {
                // Column privileges differ from the shared payload: encode for this channel.
                Some(cols) => Arc::from(encode_change_data_for(
                    &item.change,
                    table_facts(&item.change),
                    Some(cols),
                )),
                None => item.realtime_data(&self.state.metrics, |c| {
                    encode_change_data(c, table_facts(c))
                }),
            };
            frames.push(if ch.legacy {
                changes::encode_legacy_change_frame(self.vsn, &ch.topic, item.change.op, &data)
            } else {
                changes::encode_change_frame(self.vsn, &ch.topic, &hit.ids, &data)
            });
        }
        let n = frames.len();
        for f in frames {
            self.feed(Message::Text(Utf8Bytes::from(f))).await?;
        }
        self.flush(n).await?;
        // 4. Channels whose rows could not be checked are closed: they would miss changes.
        if !failed.is_empty() {
            while let Some(i) = self
                .channels
                .iter()
                .position(|c| failed.contains(&c.claims.group) && !c.claims.is_service_role())
            {
                self.fail_channel(i, text::DATABASE_UNAVAILABLE).await?;
            }
        }
        Ok(n)
    }

    /// Closes every channel whose token has expired.
    async fn on_expiry(&mut self) -> Result<(), End> {
        let now = unix_now();
        while let Some(i) = self.channels.iter().position(|c| c.claims.exp <= now) {
            let seconds_ago = u64::try_from(now - self.channels[i].claims.exp).unwrap_or(0);
            let message = TokenProblem::Expired { seconds_ago }.live_message();
            self.fail_channel(i, &message).await?;
        }
        Ok(())
    }

    /// The client fell behind: says so on every channel and closes the socket.
    async fn lagged(&mut self) -> Result<(), End> {
        self.state.metrics.clients_lagged.inc();
        for i in 0..self.channels.len() {
            let _ = self.system(i, "system", false, text::CLIENT_LAGGED).await;
        }
        let _ = self
            .close(CLOSE_LAGGED, "lagged: reconnect and refetch")
            .await;
        Err(End::Closed)
    }

    /// Server shutdown: a `system` message and `phx_close` on every joined channel, then a
    /// going-away close of the socket.
    async fn shutdown(&mut self) {
        for i in 0..self.channels.len() {
            let _ = self
                .system(i, "system", true, text::SERVER_DISCONNECT)
                .await;
        }
        while !self.channels.is_empty() {
            if self.close_channel(0).await.is_err() {
                break;
            }
        }
        let _ = self.close(CLOSE_GOING_AWAY, "server shutting down").await;
    }

    /// A channel-level failure: `system` error, then `phx_close`.
    async fn fail_channel(&mut self, i: usize, message: &str) -> Result<(), End> {
        self.system(i, "system", false, message).await?;
        self.close_channel(i).await
    }

    /// Sends `phx_close` for channel `i` and forgets it.
    async fn close_channel(&mut self, i: usize) -> Result<(), End> {
        let ch = self.channels.remove(i);
        self.client.unsubscribe(&ch.topic);
        self.rt.bus.leave(&ch.key, ch.member);
        let close = frame::encode_channel_end(self.vsn, ch.join_ref.as_deref(), &ch.topic, true);
        self.send(close).await
    }

    /// Sends a `system` message on channel `i`.
    async fn system(
        &mut self,
        i: usize,
        extension: &str,
        ok: bool,
        message: &str,
    ) -> Result<(), End> {
        let ch = &self.channels[i];
        let payload = system_payload(extension, ok, message, &ch.sub_topic);
        let push = frame::encode_push(
            self.vsn,
            ch.join_ref.as_deref(),
            &ch.topic,
            "system",
            &payload,
        );
        self.send(push).await
    }

    /// Queues a frame without flushing.
    async fn feed(&mut self, msg: Message) -> Result<(), End> {
        super::feed(&mut self.sink, msg)
            .await
            .map_err(|_| End::Gone)
    }

    /// Flushes queued frames, counting `n` deliveries.
    async fn flush(&mut self, n: usize) -> Result<(), End> {
        if n == 0 {
            return Ok(());
        }
        self.state.metrics.deliveries.add(n as u64);
        self.client.sent(n);
        super::flush(&mut self.sink).await.map_err(|_| End::Gone)
    }

    /// Sends one text frame now.
    async fn send(&mut self, text: String) -> Result<(), End> {
        self.client.sent(1);
        super::send_text(&mut self.sink, text)
            .await
            .map_err(|_| End::Gone)
    }

    /// Sends a close frame.
    async fn close(&mut self, code: u16, reason: &'static str) -> Result<(), End> {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        match tokio::time::timeout(WRITE_TIMEOUT, self.sink.send(Message::Close(Some(frame)))).await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }
}
