//! The `/ws` session: subscriptions, live changes, resume, heartbeats, lag handling.
//!
//! Position bookkeeping: `position` is the cursor of the newest change this session has
//! *examined* (delivered, or skipped because no subscription matched). Every change after it is
//! still to come, so it is what heartbeats and `lagged` frames report, and what a client may
//! resume from.

use std::sync::Arc;

use axum::Extension;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::protocol::{self as json, ClientFrame, ErrorCode, ProtocolError, TableName};
use super::socket::{
    self, CLOSE_GOING_AWAY, CLOSE_LAGGED, CLOSE_POLICY, CLOSE_TOO_BIG, ClientSink, ClientStream,
    Clock, End, MAX_CLIENT_MESSAGE, MAX_CONDITIONS, MAX_SUBSCRIPTIONS, MAX_WRITE_BUFFER, Outbox,
    READ_BUFFER, WRITE_BATCH, WRITE_BATCH_BYTES,
};
use super::viewer::{self, RoleView, Verdict};
// Sessions register in the operator surface's client registry (admin owns it; it imports no
// session code).
use crate::access::{GateError, RlsGate};
use crate::admin::clients::{self, ClientHandle, SubscriptionInfo};
use crate::auth::Auth;
use crate::catalog::{REALTIME_SCHEMA, REALTIME_TABLE};
use crate::decode::{Change, Cursor, Operation};
use crate::endpoint::Endpoint;
use crate::filter::{ColumnTexts, Filter};
use crate::hub::{Format, HubItem, Subscription};
use crate::replication::{ReaderStatus, Replays, ReplicationError};

/// Most replayed changes held at once for one role's batched row check (each may be a large
/// row, so the batch is kept small; `service_role` replays are not held at all).
const ROLE_REPLAY_BATCH: usize = 32;

/// What `/ws` sessions need.
#[derive(Debug, Clone)]
pub struct WsState {
    /// Live changes.
    pub hub: crate::hub::Hub,
    /// Delivery counters.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The reader's status (is it streaming, where the resume window starts).
    pub reader: Arc<ReaderStatus>,
    /// Replays of changes before a connection's live stream (`resume`, `since`).
    pub replays: Replays,
    /// Feature flags (the broadcaster mode decides whether `/ws` serves).
    pub flags: crate::flags::Flags,
    /// Every connected session.
    pub clients: Arc<crate::admin::ClientRegistry>,
    /// Heartbeat interval.
    pub heartbeat: std::time::Duration,
    /// How often a role's privileges are asked again.
    pub role_recheck: std::time::Duration,
    /// Cancelled when the server shuts down.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Token checks.
    pub auth: Auth,
    /// Row visibility for roles other than `service_role`.
    pub gate: Arc<RlsGate>,
}

/// The route, for a state that provides [`WsState`].
pub fn routes<St>() -> axum::Router<St>
where
    St: Clone + Send + Sync + 'static,
    WsState: axum::extract::FromRef<St>,
{
    axum::Router::new().route("/ws", axum::routing::get(ws_handler))
}

/// `GET /ws`: upgrades to the plain JSON protocol.
pub async fn ws_handler(
    State(state): State<WsState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    place: Option<Extension<crate::http::server::ConnPermit>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Outside the node's broadcaster mode: refuse before upgrading (open sessions stay).
    if let Err(refused) = state.flags.check(Endpoint::Ws) {
        return refused.into_response();
    }
    // One more session for this client address, before any token or database work.
    let session_place = match place.as_ref().map(|p| p.open_session(&headers)) {
        None => None,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            state.metrics.connections_refused.add("sessions_per_ip", 1);
            return crate::error::ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                crate::http::per_ip::OVER_CAP_CODE,
                crate::http::per_ip::OVER_CAP_MESSAGE,
            )
            .into_response();
        }
    };
    // Who is connecting, before the upgrade: a refusal is a plain HTTP answer.
    let viewer = match viewer::authorize(
        &state.auth,
        &state.gate,
        &headers,
        query.as_deref(),
        crate::auth::unix_now(),
    )
    .await
    {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            // The connection's places under the caps are held until the session ends.
            let _place = (place, session_place);
            state.metrics.clients.add("ws", 1);
            state.metrics.ws_clients.add(1);
            let client = state
                .clients
                .register(Endpoint::Ws, peer.map(|Extension(ConnectInfo(a))| a));
            let (sink, stream) = socket.split();
            let mut session = Session::new(sink, stream, state.clone(), client, viewer);
            session.run().await;
            state.metrics.ws_clients.add(-1);
        })
}

/// One subscription of a connection.
#[derive(Debug)]
struct Sub {
    /// The client's id for it.
    id: String,
    /// Which changes (event types, sources, operations, column conditions).
    filter: Filter,
    /// Which tables (`table`); `None`: every table.
    tables: Option<Vec<TableName>>,
}

impl Sub {
    /// Whether the change passes the subscription's tables and filter.
    fn matches(&self, change: &Change, texts: &ColumnTexts) -> bool {
        let rel = &change.relation;
        self.tables
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n.covers(&rel.schema, &rel.table)))
            && self.filter.matches_with(change, texts)
    }
}

/// One connected `/ws` client, over any socket halves.
struct Session<S, R> {
    /// Outgoing half, counted.
    out: Outbox<S>,
    /// Incoming half.
    stream: R,
    /// Server state.
    state: WsState,
    /// Live changes.
    sub: Subscription,
    /// Newest examined cursor (see module docs).
    position: Option<Cursor>,
    /// Oldest change examined live on this connection: changes from it up to `position` were
    /// already delivered (or filtered out) here, so a later `resume` does not send them again.
    live_first: Option<Cursor>,
    /// Subscriptions, in the order they were made.
    filters: Vec<Sub>,
    /// What the client may see: `None`, everything; a role, what its policies allow.
    viewer: Option<RoleView>,
    /// The session's wall clock (token expiry).
    clock: Clock,
}

impl<S: ClientSink, R: ClientStream> Session<S, R> {
    /// A session over a socket's halves.
    fn new(
        sink: S,
        stream: R,
        state: WsState,
        client: ClientHandle,
        viewer: Option<RoleView>,
    ) -> Self {
        let sub = state.hub.subscribe(Format::Ws);
        let position = sub.live_from;
        client.delivered(0, position);
        Session {
            out: Outbox::new(sink, Arc::clone(&state.metrics), client, sub.backlog()),
            stream,
            state,
            sub,
            position,
            live_first: None,
            filters: Vec::new(),
            viewer,
            clock: Clock::start(),
        }
    }

    /// The session loop.
    async fn run(&mut self) {
        let hb = self.state.heartbeat;
        let welcome = json::encode_welcome(env!("CARGO_PKG_VERSION"), hb.as_millis() as u64);
        if self.send(welcome).await.is_err() {
            return;
        }
        let shutdown = self.state.shutdown.clone();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + hb, hb);
        let every = self.state.role_recheck;
        let mut recheck = tokio::time::interval_at(Instant::now() + every, every);
        let expiry = self.viewer.as_ref().map(|v| {
            let ms = v
                .exp
                .saturating_mul(1000)
                .saturating_sub(self.clock.unix_ms());
            Instant::now() + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        });
        let limited = self.viewer.is_some();
        loop {
            let step = tokio::select! {
                biased;
                // PRIORITY 1: shutdown.
                _ = shutdown.cancelled() => {
                    let _ = self.close(CLOSE_GOING_AWAY, "server shutting down").await;
                    return;
                }
                // PRIORITY 2: the client.
                msg = self.stream.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.on_client_text(&t).await,
                    Some(Ok(Message::Binary(_))) => self.send_error(ProtocolError {
                        code: ErrorCode::BadJson,
                        message: "binary frames are not part of the /ws protocol: send JSON text frames".into(),
                        r#ref: None,
                    }).await,
                    Some(Err(e)) if socket::is_too_big(&e) => {
                        let _ = self.close(CLOSE_TOO_BIG, "message too big: /ws frames are small JSON objects").await;
                        Err(End::Closed)
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Err(End::Gone),
                    Some(Ok(_)) => Ok(()),
                },
                // PRIORITY 3: live changes.
                item = self.sub.recv() => self.on_live(item).await,
                // PRIORITY 4: heartbeat.
                _ = heartbeat.tick() => self.send(json::encode_heartbeat(self.position)).await,
                // PRIORITY 5: the token expires (roles other than service_role).
                _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                    self.refuse(ErrorCode::Unauthorized, "token has expired: reconnect with a fresh token and resume from the cursor").await
                }
                // PRIORITY 6: the role's privileges, asked again.
                _ = recheck.tick(), if limited => self.on_recheck().await,
            };
            match step {
                Ok(()) => {}
                // Over the byte budget: cut like a lagged client (the socket is still open).
                Err(End::OverBudget) => {
                    self.state.metrics.clients_over_budget.inc();
                    let _ = self.lagged().await;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Delivers one live item and whatever else is ready, then flushes once.
    async fn on_live(&mut self, first: Result<Arc<HubItem>, RecvError>) -> Result<(), End> {
        let first = match first {
            Ok(i) => i,
            Err(RecvError::Lagged(_)) => return self.lagged().await,
            Err(RecvError::Closed) => return Err(End::Closed),
        };
        // More than its byte budget was published after the change it just took: it is too far
        // behind (the change itself is not delivered; the `lagged` cursor is before it).
        if self.sub.backlog().over() {
            return Err(End::OverBudget);
        }
        let before = self.position;
        // The item and whatever else is ready, each examined once, until the batch holds
        // WRITE_BATCH frames or WRITE_BATCH_BYTES.
        let mut items = Vec::new();
        let mut held = 0u64;
        let mut lagged = false;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            // Matching is this task's work: let others run between changes when its share of
            // the runtime is used up.
            tokio::task::consume_budget().await;
            if self.position.is_none_or(|p| item.change.cursor > p) {
                self.position = Some(item.change.cursor);
                self.live_first.get_or_insert(item.change.cursor);
                if self
                    .filters
                    .iter()
                    .any(|f| f.matches(&item.change, &item.texts))
                {
                    held += item.bytes();
                    items.push(item);
                }
            }
            if items.len() < WRITE_BATCH && held < WRITE_BATCH_BYTES {
                next = match self.sub.try_recv() {
                    Ok(i) => Some(i),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                        lagged = true;
                        None
                    }
                    Err(_) => None,
                };
            }
        }
        // The newest change of the batch that was fed (or hidden from the role), for the
        // `lagged` cursor when the budget runs out halfway.
        let mut done_to = None;
        let (queued, rows) = match self.feed_live(&items, &mut done_to, before).await {
            Ok(counts) => counts,
            Err(End::OverBudget) => {
                self.position = done_to.or(before);
                return Err(End::OverBudget);
            }
            Err(e) => return Err(e),
        };
        let flushed = self.flush(queued).await;
        self.out.client.delivered(rows, self.position);
        flushed?;
        if lagged {
            return self.lagged().await;
        }
        Ok(())
    }

    /// Feeds the frames of a batch (what this client may see of them), without flushing;
    /// returns the frames fed and the row changes among them (the client registry counts
    /// those; TRUNCATE is `/ws` only). `done_to` follows the newest change handled.
    async fn feed_live(
        &mut self,
        items: &[Arc<HubItem>],
        done_to: &mut Option<Cursor>,
        before: Option<Cursor>,
    ) -> Result<(usize, usize), End> {
        let changes: Vec<&Change> = items.iter().map(|i| &i.change).collect();
        let verdicts = self.verdicts(&changes, before).await?;
        let mut queued = 0usize;
        let mut rows = 0usize;
        for (item, verdict) in items.iter().zip(verdicts) {
            let frame = match verdict {
                Verdict::Skip => {
                    *done_to = Some(item.change.cursor);
                    continue;
                }
                Verdict::Shared => item.ws_frame(&self.state.metrics, json::encode_event),
                Verdict::Own(seen) => json::encode_event(&seen).into(),
            };
            self.feed(Message::Text(frame)).await?;
            *done_to = Some(item.change.cursor);
            queued += 1;
            rows += usize::from(!matches!(
                item.change.op,
                Operation::Truncate | Operation::Gap
            ));
        }
        Ok((queued, rows))
    }

    /// What this client may see of each change (everything without a role view). A failed
    /// check ends the session with an `internal` error: the client resumes from its cursor.
    async fn verdicts(
        &mut self,
        changes: &[&Change],
        resume: Option<Cursor>,
    ) -> Result<Vec<Verdict>, End> {
        let Some(view) = &self.viewer else {
            return Ok(vec![Verdict::Shared; changes.len()]);
        };
        // A slow database holds the session here: its budget still counts.
        let checked = {
            let step = std::pin::pin!(async {
                Ok(viewer::verdicts(&self.state.gate, view, changes).await)
            });
            self.out.guarded(step).await?
        };
        match checked {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), "/ws: row level security check failed");
                // Nothing of this batch was sent: the client resumes after what came before it.
                let message = match resume {
                    Some(c) => format!(
                        "the row level security check failed: reconnect and resume from cursor {}",
                        c.encode()
                    ),
                    None => "the row level security check failed: reconnect".to_owned(),
                };
                let _ = self
                    .send_error(ProtocolError {
                        code: ErrorCode::Internal,
                        message,
                        r#ref: None,
                    })
                    .await;
                let _ = self.close(1011, "row level security check failed").await;
                Err(End::Closed)
            }
        }
    }

    /// Asks the role's privileges again: a revoked column or table stops now (deliveries read
    /// the answer); a role that may no longer read any published table is disconnected.
    async fn on_recheck(&mut self) -> Result<(), End> {
        let Some(view) = &self.viewer else {
            return Ok(());
        };
        let refused = match self.state.gate.recheck_role(&view.role).await {
            Ok(tables) if !tables.is_empty() => return Ok(()),
            Ok(_) => GateError::Denied {
                role: view.role.clone(),
                what: "any table of walcast's publication".to_owned(),
            },
            Err(e @ (GateError::Denied { .. } | GateError::Privileged { .. })) => e,
            // A transient failure keeps what is known: the next check asks again.
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), "/ws: role re-check failed");
                return Ok(());
            }
        };
        self.refuse(ErrorCode::Forbidden, &refused.to_string())
            .await
    }

    /// Checks a subscription's `table` field against the publication and the role: every
    /// table it names must be published (`invalid_filter`), and a role other than
    /// `service_role` must be able to read it and it must have a primary key (`forbidden`);
    /// a `schema.*` item must cover a published table (one the role may read).
    async fn check_tables(&self, names: &[TableName]) -> Result<(), ProtocolError> {
        let gate = &self.state.gate;
        let asked = std::time::Instant::now();
        let unavailable = |e: GateError| {
            tracing::warn!(error = %e, kind = e.kind(), "/ws: table check failed");
            ProtocolError::new(
                ErrorCode::Internal,
                "the table check cannot reach Postgres: subscribe again shortly",
            )
        };
        let mut tables = gate.tables().await.map_err(unavailable)?;
        let covered = |tables: &crate::catalog::Tables, n: &TableName| {
            tables
                .all()
                .iter()
                .filter(|t| n.covers(&t.schema, &t.table))
                .cloned()
                .collect::<Vec<_>>()
        };
        for name in names {
            let mut on = covered(&tables, name);
            if on.is_empty() {
                // Perhaps added to the publication since the facts were read.
                tables = gate.tables_read_after(asked).await.map_err(unavailable)?;
                on = covered(&tables, name);
            }
            if on.is_empty() {
                let (what, hint) = match &name.table {
                    Some(_) => (
                        "is not in",
                        format!(
                            "add it with ALTER PUBLICATION {} ADD TABLE {name}, or check the name (names are compared exactly; quote one holding a dot)",
                            gate.publication()
                        ),
                    ),
                    None => ("has no table in", "check the schema name".to_owned()),
                };
                return Err(ProtocolError::new(
                    ErrorCode::InvalidFilter,
                    format!(
                        "table {name} {what} walcast's publication {}: {hint}",
                        gate.publication()
                    ),
                ));
            }
            let Some(view) = &self.viewer else { continue };
            let mut readable = false;
            for t in &on {
                let access = match gate
                    .role_tables_knowing(&view.role, t.oid, tables.started())
                    .await
                {
                    Ok(a) => a,
                    Err(e @ GateError::Privileged { .. }) => {
                        return Err(ProtocolError::new(ErrorCode::Forbidden, e.to_string()));
                    }
                    Err(e) => return Err(unavailable(e)),
                };
                let ok = access.get(t.oid).is_some() && t.has_primary_key();
                if name.is_one_table() && !ok {
                    let why = if access.get(t.oid).is_none() {
                        format!("role {:?} may not read {}", view.role, t.qualified())
                    } else {
                        format!(
                            "{} has no primary key, so its rows cannot be checked against the \
                             row level security policies of role {:?}: only service_role \
                             receives them",
                            t.qualified(),
                            view.role
                        )
                    };
                    return Err(ProtocolError::new(ErrorCode::Forbidden, why));
                }
                readable |= ok;
            }
            if !readable {
                return Err(ProtocolError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "role {:?} may not read any table of {name} that has a primary key",
                        view.role
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether a subscription with these tables receives the events table and nothing else
    /// (what the client registry calls "everything"); without a `table` field, when the events
    /// table is the only published one as far as walcast knows.
    fn events_table_only(&self, tables: Option<&[TableName]>) -> bool {
        match tables {
            Some([one]) => {
                one.table.as_deref() == Some(REALTIME_TABLE) && one.schema == REALTIME_SCHEMA
            }
            Some(_) => false,
            None => self.state.gate.tables_now().is_none_or(|t| {
                t.all()
                    .iter()
                    .all(|f| f.schema == REALTIME_SCHEMA && f.table == REALTIME_TABLE)
            }),
        }
    }

    /// Sends an error frame and closes with 1008 (policy violation).
    async fn refuse(&mut self, code: ErrorCode, message: &str) -> Result<(), End> {
        let _ = self
            .send_error(ProtocolError {
                code,
                message: message.to_owned(),
                r#ref: None,
            })
            .await;
        let _ = self.close(CLOSE_POLICY, "not authorized").await;
        Err(End::Closed)
    }

    /// The client fell behind the hub's ring (in changes or in bytes): let go of the ring, say
    /// so with the resume cursor, and close.
    async fn lagged(&mut self) -> Result<(), End> {
        self.sub.release();
        self.out.unguard();
        self.state.metrics.clients_lagged.inc();
        let _ = self.send(json::encode_lagged(self.position)).await;
        let _ = self
            .close(CLOSE_LAGGED, "lagged: reconnect and resume from the cursor")
            .await;
        Err(End::Closed)
    }

    /// Handles one client text frame.
    async fn on_client_text(&mut self, text: &str) -> Result<(), End> {
        let frame = match json::parse_client_frame(text) {
            Ok(f) => f,
            Err(e) => return self.send_error(e).await,
        };
        match frame {
            ClientFrame::Subscribe(req) => {
                if self.filters.iter().any(|f| f.id == req.id) {
                    return self
                        .send_error(ProtocolError {
                            code: ErrorCode::DuplicateSubscription,
                            message: format!("subscription {:?} already exists: unsubscribe it first or pick another id", req.id),
                            r#ref: Some(req.id),
                        })
                        .await;
                }
                if self.filters.len() >= MAX_SUBSCRIPTIONS {
                    return self
                        .send_error(ProtocolError {
                            code: ErrorCode::TooManySubscriptions,
                            message: format!(
                                "at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
                            ),
                            r#ref: Some(req.id),
                        })
                        .await;
                }
                let conditions: usize = self
                    .filters
                    .iter()
                    .map(|f| f.filter.conditions.len())
                    .sum::<usize>()
                    + req.filter.conditions.len();
                if conditions > MAX_CONDITIONS {
                    return self
                        .send_error(ProtocolError {
                            code: ErrorCode::TooManySubscriptions,
                            message: format!(
                                "at most {MAX_CONDITIONS} filter conditions per connection, over all its subscriptions"
                            ),
                            r#ref: Some(req.id),
                        })
                        .await;
                }
                if let Some(tables) = &req.tables
                    && let Err(e) = self.check_tables(tables).await
                {
                    return self.send_error(e.with_ref(Some(req.id))).await;
                }
                let reply = json::encode_subscribed(&req.id);
                let mut filter = clients::describe_filter(&req.filter);
                if let Some(tables) = &req.tables {
                    let names: Vec<String> = tables.iter().map(ToString::to_string).collect();
                    filter = format!("table in ({}) {filter}", names.join(", "));
                }
                // A role other than service_role sees only what its policies allow: never
                // "everything", and the registry names the role.
                let (filter, everything) = match &self.viewer {
                    None => (
                        filter,
                        clients::filter_is_everything(&req.filter)
                            && self.events_table_only(req.tables.as_deref()),
                    ),
                    Some(v) => (format!("role={} {filter}", v.role), false),
                };
                self.out.client.subscribe(SubscriptionInfo {
                    id: req.id.clone(),
                    filter,
                    everything,
                });
                self.filters.push(Sub {
                    id: req.id,
                    filter: req.filter,
                    tables: req.tables,
                });
                // Changes examined so far were checked without this subscription, so they were
                // not all sent: only changes examined from now on count as delivered to a
                // later `resume`.
                self.live_first = None;
                self.send(reply).await?;
                // `since` resumes at once: no live change is sent before the replay, so the
                // connection sees every change after the cursor in order.
                match req.since {
                    Some(cursor) => self.resume(cursor).await,
                    None => Ok(()),
                }
            }
            ClientFrame::Unsubscribe { id } => {
                let before = self.filters.len();
                self.filters.retain(|f| f.id != id);
                if self.filters.len() == before {
                    return self
                        .send_error(ProtocolError {
                            code: ErrorCode::UnknownSubscription,
                            message: format!("no subscription {id:?} on this connection"),
                            r#ref: Some(id),
                        })
                        .await;
                }
                self.out.client.unsubscribe(&id);
                self.send(json::encode_unsubscribed(&id)).await
            }
            ClientFrame::Ping { r#ref } => self.send(json::encode_pong(r#ref.as_deref())).await,
            ClientFrame::Resume { cursor } => self.resume(cursor).await,
        }
    }

    /// Replays every matching change after `after` up to the live stream, then carries on live.
    ///
    /// A replay runs to its end. Meanwhile the live stream waits in the ring; if it passes the
    /// byte budget, the session lets go of it (freeing the ring) and, after the replay and its
    /// `resumed` frame, is cut with `lagged` at the replay's end: the client resumes from there.
    async fn resume(&mut self, after: Cursor) -> Result<(), End> {
        let r = self.resume_from(after).await;
        self.out.set_soft(false);
        r
    }

    /// [`Session::resume`]'s work.
    async fn resume_from(&mut self, after: Cursor) -> Result<(), End> {
        if self.filters.is_empty() {
            return self
                .send_error(ProtocolError {
                    code: ErrorCode::BadRequest,
                    message: "send subscribe frames before resume: the replay delivers only what your subscriptions match".into(),
                    r#ref: None,
                })
                .await;
        }
        // A replay holds a replication connection: at most --max-replays run at once. Asked
        // before anything changes, so a busy answer leaves the connection as it was.
        let Some(permit) = self.state.replays.try_permit() else {
            self.state.metrics.replays_busy.inc();
            return self
                .send_error(ProtocolError {
                    code: ErrorCode::Busy,
                    message: format!(
                        "{} replays are running (--max-replays): send resume again in a second",
                        self.state.replays.max()
                    ),
                    r#ref: None,
                })
                .await;
        };
        // Counts before and after a replay are not comparable (consistency check).
        self.out.client.replayed();
        // Subscribe afresh: everything after `until` arrives through the new receiver.
        self.state.hub.resubscribe(&mut self.sub);
        let until = self.sub.last;
        let mut replayed = 0u64;
        if let Some(until) = until.filter(|u| after < *u) {
            // Writes and waits of the replay run to their end whatever the budget.
            self.out.set_soft(true);
            let mut live_lost = false;
            let mut rx = self.state.replays.replay(permit, after, until);
            // For a role, matching changes wait here (at most ROLE_REPLAY_BATCH) so that its
            // rows are checked in one call per batch; everything else is sent as it comes.
            let batch_max = if self.viewer.is_some() {
                ROLE_REPLAY_BATCH
            } else {
                1
            };
            let mut batch: Vec<Change> = Vec::new();
            // Where a client resumes if the row check of the next batch fails.
            let mut resume_point = Some(after);
            // Frames fed since the last flush.
            let mut queued = 0usize;
            loop {
                // The live backlog grows while the replay runs: over the budget, let it go.
                if !live_lost && self.out.take_exceeded() {
                    self.sub.release();
                    self.out.unguard();
                    live_lost = true;
                }
                let step = std::pin::pin!(async { Ok(rx.recv().await) });
                let next = self.out.guarded(step).await?;
                let (change, failure) = match next {
                    None => (None, None),
                    Some(Ok(c)) => (Some(c), None),
                    Some(Err(e)) => (None, Some(e)),
                };
                let done = change.is_none();
                if let Some(change) = change {
                    let seen = self.live_first.is_some_and(|first| change.cursor >= first)
                        && self.position.is_some_and(|p| change.cursor <= p);
                    // One text cache per replayed change, shared by the connection's filters.
                    let texts = ColumnTexts::new();
                    if !seen && self.filters.iter().any(|f| f.matches(&change, &texts)) {
                        batch.push(change);
                    }
                }
                if !batch.is_empty() && (done || batch.len() >= batch_max) {
                    let sent = self.feed_replayed(&batch, resume_point).await?;
                    resume_point = batch.last().map(|c| c.cursor).or(resume_point);
                    batch.clear();
                    queued += sent;
                    replayed += sent as u64;
                }
                if done || queued >= WRITE_BATCH {
                    self.flush(queued).await?;
                    queued = 0;
                }
                match failure {
                    None if done => break,
                    None => {}
                    Some(ReplicationError::CursorExpired { oldest }) => {
                        self.position = Some(until);
                        self.send(json::encode_cursor_expired(after, Some(oldest)))
                            .await?;
                        // Without its live stream the session cannot go on: `lagged` at `until`.
                        return if live_lost {
                            Err(End::OverBudget)
                        } else {
                            Ok(())
                        };
                    }
                    Some(e) => {
                        tracing::warn!(error = %crate::error::error_chain(&e), "replay failed");
                        let _ = self
                            .send_error(ProtocolError {
                                code: ErrorCode::Internal,
                                message: "replay failed; reconnect and resume again".into(),
                                r#ref: None,
                            })
                            .await;
                        let _ = self.close(1011, "replay failed").await;
                        return Err(End::Closed);
                    }
                }
            }
            self.state.metrics.replayed_changes.add(replayed);
            self.position = Some(until);
            self.out.client.delivered(replayed as usize, self.position);
            if live_lost || self.out.take_exceeded() {
                // The live stream was let go: the client resumes from the replay's end.
                self.send(json::encode_resumed(after, replayed)).await?;
                return Err(End::OverBudget);
            }
        } else {
            // Nothing published after the cursor yet: whatever follows it arrives live, as the
            // reader streams from the start of the window. Refuse cursors before that start.
            if until.is_none() && !self.wait_streaming().await {
                return self
                    .send_error(ProtocolError {
                        code: ErrorCode::Internal,
                        message: "the replication stream is not up yet; resume again shortly"
                            .into(),
                        r#ref: None,
                    })
                    .await;
            }
            let start = self.state.reader.window_start();
            let oldest = Cursor {
                commit_lsn: crate::decode::Lsn(start.0.saturating_sub(1)),
                index: u32::MAX,
            };
            if until.is_none() && after < oldest {
                self.position = self.sub.live_from;
                return self
                    .send(json::encode_cursor_expired(after, Some(oldest)))
                    .await;
            }
            self.position = Some(match until {
                Some(u) => u.max(after),
                None => after,
            });
            self.out.client.delivered(0, self.position);
        }
        self.send(json::encode_resumed(after, replayed)).await
    }

    /// Feeds a batch of replayed changes (what this client may see of them), without flushing;
    /// returns how many frames were fed.
    async fn feed_replayed(
        &mut self,
        batch: &[Change],
        resume: Option<Cursor>,
    ) -> Result<usize, End> {
        let changes: Vec<&Change> = batch.iter().collect();
        let verdicts = self.verdicts(&changes, resume).await?;
        let mut queued = 0usize;
        for (change, verdict) in batch.iter().zip(verdicts) {
            let text = match verdict {
                Verdict::Skip => None,
                Verdict::Shared => Some(json::encode_event(change)),
                Verdict::Own(seen) => Some(json::encode_event(&seen)),
            };
            if let Some(text) = text {
                self.feed(Message::Text(text.into())).await?;
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Waits (bounded) until the replication reader streams.
    async fn wait_streaming(&self) -> bool {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.state.reader.is_streaming() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Queues a frame without flushing.
    async fn feed(&mut self, msg: Message) -> Result<(), End> {
        self.out.feed(msg).await
    }

    /// Flushes queued frames, counting `n` deliveries.
    async fn flush(&mut self, n: usize) -> Result<(), End> {
        self.out.flush(n).await
    }

    /// Sends one frame now.
    async fn send(&mut self, text: String) -> Result<(), End> {
        self.out.send(text).await
    }

    /// Sends an error frame; the connection stays open.
    async fn send_error(&mut self, e: ProtocolError) -> Result<(), End> {
        self.send(json::encode_error(&e)).await
    }

    /// Sends a close frame.
    async fn close(&mut self, code: u16, reason: &'static str) -> Result<(), End> {
        self.out.close(code, reason).await
    }
}

#[cfg(test)]
mod tests {
    //! The `/ws` session's heartbeats, lag and shutdown, over a channel socket with paused
    //! time: no database, no network.

    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::decode::Change;
    use crate::flags::{EnvTier, FlagSet, Flags};
    use crate::hub::Hub;
    use crate::metrics::Metrics;
    use crate::replication::ReplicationSettings;
    use crate::ws::socket::testing::{Peer, socket};

    /// State on a database that is never reached, with a hub of `capacity` changes.
    fn state(capacity: usize) -> WsState {
        state_with(capacity, u64::MAX, Arc::default())
    }

    /// Like [`state`], with a client byte budget and the hub's metrics.
    fn state_with(capacity: usize, client_bytes: u64, hub_metrics: Arc<Metrics>) -> WsState {
        let url = "postgres://nobody@127.0.0.1:1/none";
        WsState {
            hub: Hub::new(capacity, client_bytes, hub_metrics),
            metrics: Arc::default(),
            reader: Arc::default(),
            replays: Replays::new(
                ReplicationSettings::from_url(url, "walcast_events", "test").unwrap(),
                "walcast_test".into(),
                2,
            ),
            flags: Flags::new("test", EnvTier::default(), FlagSet::default()),
            clients: Arc::default(),
            heartbeat: Duration::from_secs(15),
            role_recheck: Duration::from_secs(60),
            shutdown: tokio_util::sync::CancellationToken::new(),
            auth: Auth::default(),
            gate: Arc::new(RlsGate::new(
                crate::db::pool(url, 1, "test").unwrap(),
                "walcast_events",
            )),
        }
    }

    /// A running session and the client's end, past the welcome frame.
    async fn start(state: &WsState) -> Peer {
        start_as(state, None).await
    }

    /// A running session whose socket holds at most about `frames` unread frames.
    async fn start_holding(state: &WsState, frames: usize) -> Peer {
        let (sink, stream, mut peer) = crate::ws::socket::testing::socket_holding(frames);
        let client = state.clients.register(Endpoint::Ws, None);
        let mut session = Session::new(sink, stream, state.clone(), client, None);
        tokio::spawn(async move { session.run().await });
        assert_eq!(peer.next_json().await["type"], "welcome");
        peer
    }

    /// A change whose `data` holds `n` bytes of text.
    fn big(lsn: u64, n: usize) -> Change {
        let mut c = Change::sample(lsn);
        c.record
            .as_mut()
            .unwrap()
            .values
            .insert("data".into(), serde_json::json!({ "pad": "x".repeat(n) }));
        c
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_over_its_byte_budget_is_cut_with_lagged_and_frees_the_ring() {
        // 1 MiB budget, rows of 100 kB (charged about 200 kB with their /ws frame), a socket
        // that holds 2 frames, and a ring that could hold a thousand of these rows.
        let hub_metrics = Arc::new(Metrics::default());
        let state = state_with(1024, 1 << 20, Arc::clone(&hub_metrics));
        let mut peer = start_holding(&state, 2).await;
        peer.send(r#"{"type":"subscribe","id":"all"}"#).await;
        assert_eq!(peer.next_json().await["type"], "subscribed");
        // The client stops reading; rows keep coming.
        for lsn in 1..=40 {
            state.hub.publish(big(lsn, 100_000));
            tokio::task::yield_now().await;
        }
        // Cut while its socket is still full: the ring lets go of every row at once.
        for _ in 0..1000 {
            if state.metrics.clients_over_budget.get() == 1 && hub_metrics.hub_bytes.get() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(state.metrics.clients_over_budget.get(), 1);
        assert_eq!(
            hub_metrics.hub_bytes.get(),
            0,
            "rows still held after the cut"
        );
        // The client reads again: the rows its socket held, then `lagged` and 4008.
        let mut events = Vec::new();
        let lagged = loop {
            let f = peer.next_json().await;
            match f["type"].as_str() {
                Some("event") => events.push(f["cursor"].as_str().unwrap().to_owned()),
                Some("lagged") => break f,
                _ => panic!("unexpected frame {f}"),
            }
        };
        assert_eq!(peer.next_close().await, CLOSE_LAGGED);
        assert!(!events.is_empty() && events.len() < 40, "{}", events.len());
        // Its cursor is the last row it was sent: resuming from it loses nothing.
        assert_eq!(lagged["cursor"].as_str(), events.last().map(String::as_str));
        assert_eq!(state.metrics.clients_lagged.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_client_is_not_cut_by_rows_larger_than_its_budget_share() {
        // Each row is charged about a third of the budget; the client reads as they come.
        let state = state_with(1024, 1 << 20, Arc::default());
        let mut peer = start(&state).await;
        peer.send(r#"{"type":"subscribe","id":"all"}"#).await;
        assert_eq!(peer.next_json().await["type"], "subscribed");
        for lsn in 1..=50 {
            state.hub.publish(big(lsn, 150_000));
            let f = peer.next_json().await;
            assert_eq!(f["type"], "event", "{f}");
        }
        assert_eq!(state.metrics.clients_over_budget.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_reaches_every_subscription_whatever_its_filters() {
        let state = state(16);
        let mut peer = start(&state).await;
        peer.send(r#"{"type":"subscribe","id":"narrow","event_type":"never","ops":["DELETE"]}"#)
            .await;
        assert_eq!(peer.next_json().await["type"], "subscribed");
        let mut decoder = crate::decode::Decoder::new();
        decoder.begin(crate::decode::Lsn(0x500), 7, 0);
        let error = crate::decode::DecodeError::UnknownRelation(4242);
        let gap = decoder.gap(
            &error,
            crate::decode::Lsn(0x4f0),
            chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
        );
        let cursor = gap.cursor.encode();
        state.hub.publish(gap);
        let f = peer.next_json().await;
        assert_eq!(f["type"], "gap", "{f}");
        assert_eq!(f["cursor"], cursor.as_str());
        assert_eq!(f["code"], error.code());
        assert_eq!(f["lsn"], "0/4F0");
        assert!(f["message"].as_str().unwrap().contains("4242"), "{f}");
    }

    /// Like [`start`], for a client that is not `service_role`.
    async fn start_as(state: &WsState, viewer: Option<RoleView>) -> Peer {
        let (sink, stream, mut peer) = socket();
        let client = state.clients.register(Endpoint::Ws, None);
        let mut session = Session::new(sink, stream, state.clone(), client, viewer);
        tokio::spawn(async move { session.run().await });
        assert_eq!(peer.next_json().await["type"], "welcome");
        peer
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_come_at_the_configured_interval() {
        let state = state(16);
        let mut peer = start(&state).await;
        let started = Instant::now();
        for n in 1..=3u32 {
            let hb = peer.next_json().await;
            assert_eq!(hb["type"], "heartbeat", "{hb}");
            assert_eq!(started.elapsed(), state.heartbeat * n);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_token_ends_the_connection_with_unauthorized_and_1008() {
        let state = state(16);
        let view = RoleView {
            role: "authenticated".into(),
            exp: chrono::Utc::now().timestamp() + 30,
            group: Arc::new(crate::access::ClaimsGroup {
                role: "authenticated".into(),
                claims_json: "{}".into(),
            }),
        };
        let started = Instant::now();
        let mut peer = start_as(&state, Some(view)).await;
        // Heartbeats keep coming until the token expires.
        let mut error = None;
        while error.is_none() {
            let f = peer.next_json().await;
            if f["type"] == "error" {
                error = Some(f);
            } else {
                assert_eq!(f["type"], "heartbeat", "{f}");
            }
        }
        let error = error.unwrap();
        assert_eq!(error["code"], "unauthorized", "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("token has expired"),
            "{error}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(29) && waited <= Duration::from_secs(31),
            "closed after {waited:?}"
        );
        assert_eq!(peer.next_close().await, CLOSE_POLICY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_behind_the_ring_gets_lagged_with_its_cursor_then_4008() {
        let state = state(4);
        let mut peer = start(&state).await;
        peer.send(r#"{"type":"subscribe","id":"all"}"#).await;
        assert_eq!(peer.next_json().await["type"], "subscribed");
        for lsn in 1..=10 {
            state.hub.publish(Change::sample(lsn));
        }
        let lagged = peer.next_json().await;
        assert_eq!(lagged["type"], "lagged", "{lagged}");
        assert_eq!(peer.next_close().await, CLOSE_LAGGED);
        assert_eq!(state.metrics.clients_lagged.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_arrive_in_order_and_shutdown_goes_away() {
        let state = state(16);
        let mut peer = start(&state).await;
        peer.send(r#"{"type":"subscribe","id":"all"}"#).await;
        assert_eq!(peer.next_json().await["type"], "subscribed");
        for lsn in 1..=3 {
            state.hub.publish(Change::sample(lsn));
        }
        let mut cursors = Vec::new();
        for _ in 0..3 {
            let event = peer.next_json().await;
            assert_eq!(event["type"], "event", "{event}");
            cursors.push(event["cursor"].as_str().unwrap().to_owned());
        }
        let mut sorted = cursors.clone();
        sorted.sort();
        assert_eq!(cursors, sorted);
        state.shutdown.cancel();
        assert_eq!(peer.next_close().await, CLOSE_GOING_AWAY);
    }

    #[test]
    fn a_sessions_future_stays_small() {
        // Every connection, idle or not, holds its session's future: it is most of the
        // per-connection cost (about 13 KiB in all). A blocking step wrapped for the byte
        // budget must not copy the step into the future (4.1 KiB before the budgets, 13 KiB
        // when it did; 4.6 KiB now, in a debug build).
        let state = state(16);
        let (sink, stream, _peer) = socket();
        let client = state.clients.register(Endpoint::Ws, None);
        let mut session = Session::new(sink, stream, state, client, None);
        let size = std::mem::size_of_val(&session.run());
        assert!(size < 6 << 10, "a /ws session's future is {size} bytes");
    }
}
