//! One Realtime socket: the loop, dispatch of client messages, and the socket-level replies
//! (heartbeats, lag, shutdown, channel closes). Generic over the socket's halves so that the
//! timers (idle timeout, token expiry) and lag can be tested with channels and paused time.
//!
//! - [`channel`]: joined channels: `phx_join`, bindings, `access_token`.
//! - [`relay`]: broadcast and presence: client pushes to the bus, bus deliveries to the client.
//! - [`deliver`]: live changes from the hub, through the row gate, to channels.
//! - [`resume`]: channels of a client with a `resume_id`: replay on join, saved positions.

mod channel;
mod deliver;
mod relay;
mod resume;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::channel::Channel;
use super::RealtimeState;
use super::TokenClaims;
use super::bus::{Delivery, Inbox};
use super::protocol::frame::{self, ClientMessage, Vsn};
use super::protocol::text::{self, JoinError, TokenProblem, system_payload};
use super::protocol::{IDLE_TIMEOUT, PHOENIX_TOPIC};
use crate::admin::clients::ClientHandle;
use crate::auth::Verifier;
use crate::decode::Cursor;
use crate::hub::{Format, Subscription};
use crate::ws::socket::{
    self, CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_LAGGED, CLOSE_POLICY, CLOSE_TOO_BIG, ClientSink,
    ClientStream, Clock, End, Outbox,
};

/// How long a socket closed for a rate limit is still read (and what it sends dropped) after
/// the close frame, until the client answers the close. Closing a socket with unread input
/// makes the kernel reset the connection, and a reset discards what the client has not read
/// yet: the "Too many messages per second" it is owed. A flooder's input is in flight when it
/// is cut; one second covers its round trip while bounding what a closed socket may cost.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Joins and messages counted in fixed one-second windows.
#[derive(Debug)]
struct RateWindow {
    /// When the current window started.
    start: Instant,
    /// Joins in it.
    joins: u32,
    /// Broadcast and presence messages in it.
    messages: u32,
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow {
            start: Instant::now(),
            joins: 0,
            messages: 0,
        }
    }
}

impl RateWindow {
    /// Starts a new window when a second has passed.
    fn roll(&mut self) {
        if self.start.elapsed() >= Duration::from_secs(1) {
            *self = RateWindow::default();
        }
    }

    /// Counts a join; the count in this second.
    fn count_join(&mut self) -> u32 {
        self.roll();
        self.joins = self.joins.saturating_add(1);
        self.joins
    }

    /// Counts a message; the count in this second.
    fn count_message(&mut self) -> u32 {
        self.roll();
        self.messages = self.messages.saturating_add(1);
        self.messages
    }
}

/// One connected Realtime client.
pub(super) struct Session<S, R> {
    /// Outgoing half, counted.
    out: Outbox<S>,
    /// Incoming half.
    stream: R,
    /// Shared state.
    state: RealtimeState,
    /// The client's serializer.
    vsn: Vsn,
    /// The server's token policy.
    verifier: Arc<Verifier>,
    /// The session's wall clock (token expiry).
    clock: Clock,
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
    /// Joins and messages in the current one-second window (rate limits).
    rate: RateWindow,
    /// The client's `resume_id`: its channels with bindings resume where they stopped.
    resume_id: Option<Arc<str>>,
    /// Client frames that arrived during a replay, handled after it.
    held: Vec<Message>,
}

impl<S, R> Drop for Session<S, R> {
    fn drop(&mut self) {
        for ch in &self.channels {
            self.state.bus.leave(&ch.key, ch.member);
        }
    }
}

impl<S: ClientSink, R: ClientStream> Session<S, R> {
    /// A session over a socket's halves.
    pub(super) fn new(
        sink: S,
        stream: R,
        state: RealtimeState,
        vsn: Vsn,
        verifier: Arc<Verifier>,
        connect_token: String,
        client: ClientHandle,
    ) -> Self {
        let hub = state.hub.subscribe(Format::Realtime);
        let position = hub.live_from;
        client.delivered(0, position);
        let (inbox, inbox_rx) = Inbox::new();
        Session {
            out: Outbox::new(sink, Arc::clone(&state.metrics), client, hub.backlog()),
            stream,
            state,
            vsn,
            verifier,
            clock: Clock::start(),
            connect_token,
            hub,
            position,
            inbox,
            inbox_rx,
            channels: Vec::new(),
            last_seen: Instant::now(),
            rate: RateWindow::default(),
            resume_id: None,
            held: Vec::new(),
        }
    }

    /// The client's `resume_id` (`?resume_id=` of the socket URL).
    pub(super) fn with_resume_id(mut self, id: Option<Arc<str>>) -> Self {
        self.resume_id = id;
        self
    }

    /// The session loop.
    pub(super) async fn run(&mut self) {
        let shutdown = self.state.shutdown.clone();
        let every = self.state.role_recheck;
        let mut recheck = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            let idle_at = self.last_seen + IDLE_TIMEOUT;
            let expiry = self.next_expiry();
            let pending = self.next_pending_token();
            let policed = self.channels.iter().any(|c| c.recheckable());
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
                item = self.hub.recv() => self.on_live(item).await,
                // PRIORITY 5: token expiry.
                _ = tokio::time::sleep_until(expiry.unwrap_or(idle_at)), if expiry.is_some() => {
                    self.on_expiry().await
                }
                // PRIORITY 5b: held token refreshes whose window ended.
                _ = tokio::time::sleep_until(pending.unwrap_or(idle_at)), if pending.is_some() => {
                    self.apply_pending_tokens(false).await
                }
                // PRIORITY 6: the roles' column privileges, asked again.
                _ = recheck.tick(), if policed => self.on_recheck().await,
                // PRIORITY 7: idle timeout.
                _ = tokio::time::sleep_until(idle_at) => {
                    let _ = self.close(CLOSE_IDLE, "idle timeout: no message from the client for 60 s").await;
                    Err(End::Closed)
                }
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
            if self.inbox.overflowed() {
                let _ = self.lagged().await;
                return;
            }
        }
    }

    /// Checks a token now, with the server's policy (an unknown `kid` may read the JWKS again).
    async fn verify(&self, token: &str) -> Result<TokenClaims, TokenProblem> {
        self.verifier
            .verify(token, self.clock.unix_secs())
            .await
            .map(TokenClaims::from)
    }

    /// When the earliest channel token expires.
    fn next_expiry(&self) -> Option<Instant> {
        let exp = self.channels.iter().map(|c| c.claims.exp).min()?;
        let now_ms = self.clock.unix_ms();
        let delay = exp.saturating_mul(1000).saturating_sub(now_ms).max(0);
        Some(Instant::now() + Duration::from_millis(u64::try_from(delay).unwrap_or(0)))
    }

    /// Handles one frame from the client.
    async fn on_client(&mut self, msg: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) if socket::is_too_big(&e) => {
                let _ = self
                    .close(CLOSE_TOO_BIG, "message too big: see the payload limit")
                    .await;
                return Err(End::Closed);
            }
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
            Message::Binary(_)
                if self.rate.count_message() > self.state.limits.messages_per_second =>
            {
                self.too_many_messages("messages").await
            }
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
                self.on_heartbeat_marks();
                return self
                    .reply_ok(m.join_ref.as_deref(), m.r#ref.as_deref(), PHOENIX_TOPIC)
                    .await;
            }
            return Ok(());
        }
        if m.event == "phx_join" {
            if self.rate.count_join() > self.state.limits.joins_per_second {
                return self.too_many_joins(&m).await;
            }
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
                self.reply_ok(m.join_ref.as_deref(), m.r#ref.as_deref(), &m.topic)
                    .await?;
                self.close_channel(i).await
            }
            "access_token" => self.on_access_token(i, &m.payload).await,
            "broadcast" | "presence"
                if self.rate.count_message() > self.state.limits.messages_per_second =>
            {
                self.too_many_messages("messages").await
            }
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

    /// Too many joins in one second: an error reply (Supabase's text), then the socket closes.
    async fn too_many_joins(&mut self, m: &ClientMessage) -> Result<(), End> {
        self.state.metrics.realtime_rate_limited.add("joins", 1);
        let reply = frame::encode_error_reply(
            self.vsn,
            m.join_ref.as_deref().or(m.r#ref.as_deref()),
            m.r#ref.as_deref(),
            &m.topic,
            text::TOO_MANY_JOINS,
        );
        let _ = self.send(reply).await;
        if self
            .close(CLOSE_POLICY, "too many joins per second")
            .await
            .is_ok()
        {
            self.linger().await;
        }
        Err(End::Closed)
    }

    /// Too many messages in one second (from this socket, or `kind` `channel_messages`: the
    /// most of a channel over its budget): "Too many messages per second" on every channel,
    /// then this socket (only) is closed; the other members of its channels carry on.
    async fn too_many_messages(&mut self, kind: &'static str) -> Result<(), End> {
        self.state.metrics.realtime_rate_limited.add(kind, 1);
        while !self.channels.is_empty() {
            if self.fail_channel(0, text::TOO_MANY_MESSAGES).await.is_err() {
                break;
            }
        }
        if self
            .close(CLOSE_POLICY, "too many messages per second")
            .await
            .is_ok()
        {
            self.linger().await;
        }
        Err(End::Closed)
    }

    /// After a close frame: reads and drops what the client still sends until it answers the
    /// close, the socket ends, or [`CLOSE_LINGER`] passes (see there).
    async fn linger(&mut self) {
        let deadline = Instant::now() + CLOSE_LINGER;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.stream.next()).await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    }

    /// Closes every channel whose token has expired (a held refresh is applied first).
    async fn on_expiry(&mut self) -> Result<(), End> {
        self.apply_pending_tokens(true).await?;
        let now = self.clock.unix_secs();
        while let Some(i) = self.channels.iter().position(|c| c.claims.exp <= now) {
            let seconds_ago = u64::try_from(now - self.channels[i].claims.exp).unwrap_or(0);
            let message = TokenProblem::Expired { seconds_ago }.live_message();
            self.fail_channel(i, &message).await?;
        }
        Ok(())
    }

    /// The client fell behind (in changes or bytes, or its broadcast inbox overflowed): lets
    /// go of the hub, says so on every channel and closes the socket.
    async fn lagged(&mut self) -> Result<(), End> {
        self.hub.release();
        self.out.unguard();
        self.state.metrics.clients_lagged.inc();
        for i in 0..self.channels.len() {
            let _ = self.system(i, "system", false, text::CLIENT_LAGGED).await;
        }
        if self
            .close(CLOSE_LAGGED, "lagged: reconnect and refetch")
            .await
            .is_ok()
        {
            self.confirm_close().await;
        }
        Err(End::Closed)
    }

    /// Server shutdown: a `system` message on every joined channel, then a going-away close of
    /// the socket. No `phx_close`: realtime-js keeps channels that were not closed one by one
    /// and joins them again when it reconnects (to this node restarted, or another one).
    async fn shutdown(&mut self) {
        for i in 0..self.channels.len() {
            let _ = self
                .system(i, "system", true, text::SERVER_DISCONNECT)
                .await;
        }
        if self
            .close(CLOSE_GOING_AWAY, "server shutting down")
            .await
            .is_ok()
        {
            self.confirm_close().await;
        }
    }

    /// A channel-level failure: `system` error, then `phx_close`.
    async fn fail_channel(&mut self, i: usize, message: &str) -> Result<(), End> {
        self.system(i, "system", false, message).await?;
        self.close_channel(i).await
    }

    /// Sends `phx_close` for channel `i` and forgets it.
    async fn close_channel(&mut self, i: usize) -> Result<(), End> {
        let ch = self.channels.remove(i);
        self.out.client.unsubscribe(&ch.topic);
        self.state.bus.leave(&ch.key, ch.member);
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
        self.out.feed(msg).await
    }

    /// Flushes queued frames, counting `n` deliveries.
    async fn flush(&mut self, n: usize) -> Result<(), End> {
        self.out.flush(n).await
    }

    /// An `ok` reply with an empty response (heartbeats, leaves, broadcast acks, presence).
    async fn reply_ok(
        &mut self,
        join_ref: Option<&str>,
        r#ref: Option<&str>,
        topic: &str,
    ) -> Result<(), End> {
        let reply = frame::encode_reply(self.vsn, join_ref, r#ref, topic, true, "{}");
        self.send(reply).await
    }

    /// Sends one frame now.
    async fn send(&mut self, text: String) -> Result<(), End> {
        self.out.send(text).await
    }

    /// Sends a close frame.
    async fn close(&mut self, code: u16, reason: &'static str) -> Result<(), End> {
        self.out.close(code, reason).await
    }
}
