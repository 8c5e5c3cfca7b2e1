//! Broadcast and presence: client pushes go to the bus (after the private channel's write
//! check), bus deliveries go to the client.

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use tokio::time::Instant;

use super::Session;
use serde_json::Value;

use crate::realtime::bus::{Admission, BroadcastBody, BusEvent, Delivery};
use crate::realtime::messages::StoredPayload;
use crate::realtime::private::ChannelExtension;
use crate::realtime::protocol::frame::{self, ClientMessage, PayloadEncoding, UserBroadcast};
use crate::realtime::protocol::presence::{
    PresenceRequest, parse_broadcast, parse_presence, strip_persist, strip_persist_metadata,
};
use crate::realtime::protocol::text::{self, JoinError};
use crate::realtime::protocol::{PRESENCE_CALLS_PER_WINDOW, PRESENCE_WINDOW};
use crate::ws::socket::{ClientSink, ClientStream, End, WRITE_BATCH};

impl<S: ClientSink, R: ClientStream> Session<S, R> {
    /// Whether channel `i`'s token may write `extension` messages: always on public channels
    /// and for `service_role`; on other private channels the `realtime.messages` policies
    /// decide, asked once per channel and token. A failed check refuses this write only.
    pub(super) async fn may_write(&mut self, i: usize, extension: ChannelExtension) -> bool {
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
            .state
            .private
            .write(&group, &ch.sub_topic, extension)
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

    /// Counts a client message on channel `i` against the channel's budget
    /// (`--max-channel-messages-per-second`, over all its sockets). `Ok(true)`: relay it.
    /// `Ok(false)`: over the budget, not relayed; a client waiting for a reply (`wants_reply`)
    /// gets an error reply "Too many messages per second", the socket stays. `Err`: this socket
    /// sent the most in this second and is closed with "Too many messages per second".
    pub(super) async fn within_channel_budget(
        &mut self,
        i: usize,
        join_ref: Option<&str>,
        r#ref: Option<&str>,
        wants_reply: bool,
    ) -> Result<bool, End> {
        let ch = &self.channels[i];
        let budget = self.state.limits.channel_messages_per_second;
        match self
            .state
            .bus
            .admit(&ch.key, ch.member, budget, Instant::now())
        {
            Admission::Relay => Ok(true),
            Admission::Drop => {
                self.state.metrics.channel_messages_dropped.inc();
                if !wants_reply {
                    return Ok(false);
                }
                let topic = ch.topic.clone();
                let reply = frame::encode_error_reply(
                    self.vsn,
                    join_ref,
                    r#ref,
                    &topic,
                    text::TOO_MANY_MESSAGES,
                );
                self.send(reply).await.map(|()| false)
            }
            Admission::Offender => {
                self.state.metrics.channel_messages_dropped.inc();
                self.too_many_messages("channel_messages")
                    .await
                    .map(|()| false)
            }
        }
    }

    /// A text `broadcast` push on channel `i`. On a private channel whose policies refuse the
    /// write it is dropped without a reply, as Supabase Realtime does.
    pub(super) async fn on_text_broadcast(
        &mut self,
        i: usize,
        mut m: ClientMessage,
    ) -> Result<(), End> {
        let ack = self.channels[i].ack;
        if !self
            .within_channel_budget(i, m.join_ref.as_deref(), m.r#ref.as_deref(), ack)
            .await?
        {
            return Ok(());
        }
        // Stored broadcasts are asked with `persist`; it is not part of what receivers get.
        let persist = strip_persist(&mut m.payload);
        let Ok(push) = parse_broadcast(&m.payload) else {
            tracing::debug!("realtime: dropped a broadcast without an event");
            return Ok(());
        };
        let payload = m.payload.to_string();
        if payload.len() > self.state.max_payload {
            return self
                .payload_too_large(i, m.join_ref.as_deref(), m.r#ref.as_deref(), &m.topic)
                .await;
        }
        if !self.may_write(i, ChannelExtension::Broadcast).await {
            return Ok(());
        }
        let stored = !persist || {
            let user_payload = m.payload.get("payload").cloned().unwrap_or(Value::Null);
            self.persist(i, &push.event, StoredPayload::Json(user_payload))
                .await
        };
        let ch = &self.channels[i];
        let body = BroadcastBody::Json(payload);
        self.relay(i, persist && stored, &body);
        self.state.bus.broadcast(&ch.key, ch.member, body);
        self.acknowledge(i, m.join_ref.as_deref(), m.r#ref.as_deref(), stored)
            .await
    }

    /// A binary (kind 3) broadcast push.
    pub(super) async fn on_binary_broadcast(&mut self, b: UserBroadcast) -> Result<(), End> {
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
        let ack = self.channels[i].ack;
        if !self
            .within_channel_budget(i, b.join_ref.as_deref(), b.r#ref.as_deref(), ack)
            .await?
        {
            return Ok(());
        }
        if b.payload.len() > self.state.max_payload {
            return self
                .payload_too_large(i, b.join_ref.as_deref(), b.r#ref.as_deref(), &b.topic)
                .await;
        }
        if !self.may_write(i, ChannelExtension::Broadcast).await {
            return Ok(());
        }
        let (metadata, persist) = strip_persist_metadata(b.metadata);
        let stored = !persist || {
            let payload = match b.encoding {
                PayloadEncoding::Json => serde_json::from_slice(&b.payload)
                    .map(StoredPayload::Json)
                    .unwrap_or_else(|_| StoredPayload::Binary(b.payload.clone())),
                PayloadEncoding::Binary => StoredPayload::Binary(b.payload.clone()),
            };
            self.persist(i, &b.event, payload).await
        };
        let ch = &self.channels[i];
        let body = BroadcastBody::Binary {
            event: b.event,
            metadata,
            encoding: b.encoding,
            payload: b.payload,
        };
        self.relay(i, persist && stored, &body);
        self.state.bus.broadcast(&ch.key, ch.member, body);
        self.acknowledge(i, b.join_ref.as_deref(), b.r#ref.as_deref(), stored)
            .await
    }

    /// Hands a copy of a broadcast on channel `i` to the other nodes (`--cluster-broadcast`),
    /// unless it was sent with `persist` and stored in `realtime.messages` on a private
    /// channel: that row reaches every node as Broadcast from Database already.
    fn relay(&self, i: usize, persisted: bool, body: &BroadcastBody) {
        let ch = &self.channels[i];
        if persisted && ch.key.private {
            return;
        }
        self.state.relay.send(&ch.key, body);
    }

    /// Stores a broadcast sent with `persist` on channel `i` in `realtime.messages`, where a
    /// later join's replay finds it. Replay serves private channels only, so a public
    /// channel's broadcast is relayed without being stored. Whether it is stored (or needed
    /// no storing).
    async fn persist(&self, i: usize, event: &str, payload: StoredPayload) -> bool {
        let ch = &self.channels[i];
        if !ch.key.private {
            return true;
        }
        match self
            .state
            .messages
            .store(&ch.sub_topic, event, payload)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), "realtime: a broadcast sent with persist could not be stored");
                false
            }
        }
    }

    /// With `ack`: `ok`, or, when a broadcast sent with `persist` could not be stored, an
    /// error reply saying so (realtime-js hands its text to the sender).
    async fn acknowledge(
        &mut self,
        i: usize,
        join_ref: Option<&str>,
        r#ref: Option<&str>,
        stored: bool,
    ) -> Result<(), End> {
        let ch = &self.channels[i];
        if !ch.ack {
            return Ok(());
        }
        let topic = ch.topic.clone();
        if stored {
            return self.reply_ok(join_ref, r#ref, &topic).await;
        }
        let reply = frame::encode_reply(
            self.vsn,
            join_ref,
            r#ref,
            &topic,
            false,
            &serde_json::json!({ "error": text::PERSIST_FAILED }).to_string(),
        );
        self.send(reply).await
    }

    /// A broadcast over the payload limit: not relayed; with `ack`, an error reply
    /// `payload_size_exceeded` (as Supabase answers); the socket stays open.
    pub(super) async fn payload_too_large(
        &mut self,
        i: usize,
        join_ref: Option<&str>,
        r#ref: Option<&str>,
        topic: &str,
    ) -> Result<(), End> {
        self.state.metrics.broadcasts_too_large.inc();
        if !self.channels[i].ack {
            return Ok(());
        }
        let reply = frame::encode_reply(
            self.vsn,
            join_ref,
            r#ref,
            topic,
            false,
            "\"payload_size_exceeded\"",
        );
        self.send(reply).await
    }

    /// A `presence` push on channel `i`.
    pub(super) async fn on_presence(&mut self, i: usize, m: ClientMessage) -> Result<(), End> {
        if !self
            .within_channel_budget(i, m.join_ref.as_deref(), m.r#ref.as_deref(), true)
            .await?
        {
            return Ok(());
        }
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
        // A track on a channel joined without presence turns presence on for it (where the
        // private channel's policies let it read presence), and `presence_state` follows the
        // reply, as Supabase Realtime re-syncs it.
        let enable = matches!(request, Ok(PresenceRequest::Track(_)))
            && !self.channels[i].presence
            && self.may_read_presence(i).await;
        let mut state = None;
        let ch = &mut self.channels[i];
        let reply = match request {
            Ok(PresenceRequest::Track(payload)) => {
                self.state.bus.track(&ch.key, ch.member, payload);
                if enable {
                    state = self.state.bus.enable_presence(&ch.key, ch.member);
                    ch.presence = true;
                }
                Ok(())
            }
            Ok(PresenceRequest::Untrack) => {
                self.state.bus.untrack(&ch.key, ch.member);
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
        self.send(text).await?;
        if let Some(state) = state {
            let ch = &self.channels[i];
            let push = frame::encode_push(
                self.vsn,
                ch.join_ref.as_deref(),
                &ch.topic,
                "presence_state",
                &state,
            );
            self.send(push).await?;
        }
        Ok(())
    }

    /// Whether channel `i`'s token may receive presence: always on public channels and for
    /// `service_role`; on other private channels the `realtime.messages` read policies decide.
    async fn may_read_presence(&self, i: usize) -> bool {
        let ch = &self.channels[i];
        if !ch.policed() {
            return true;
        }
        match self
            .state
            .private
            .access(&ch.claims.group, &ch.sub_topic, true)
            .await
        {
            Ok(crate::realtime::private::ChannelAccess::Read { presence, .. }) => presence,
            Ok(crate::realtime::private::ChannelAccess::NoPolicies) => false,
            Err(e) => {
                tracing::warn!(error = %e, kind = e.kind(), "realtime: private presence check failed");
                false
            }
        }
    }

    /// Sends channel `i` the stored broadcasts its join asked to replay (none for a client
    /// that cannot receive them, such as raw bytes on `1.0.0`).
    pub(super) async fn send_replayed(&mut self, i: usize) -> Result<(), End> {
        let frames: Vec<Message> = match &self.channels[i].replayed {
            Some(r) => r
                .messages
                .iter()
                .filter_map(|b| b.frame(self.vsn))
                .collect(),
            None => return Ok(()),
        };
        let n = frames.len();
        for msg in frames {
            self.feed(msg).await?;
        }
        self.flush(n).await
    }

    /// Delivers bus messages: the first and whatever else is queued, then flushes once.
    pub(super) async fn on_deliveries(&mut self, first: Delivery) -> Result<(), End> {
        let mut next = Some(first);
        let mut queued = 0usize;
        while let Some(d) = next.take() {
            if let Some(ch) = self.channels.iter().find(|c| c.member == d.member) {
                let msg = match d.event {
                    // Already sent by the channel's replay.
                    BusEvent::Broadcast(b)
                        if ch.replayed.as_ref().is_some_and(|r| r.suppresses(&b)) =>
                    {
                        None
                    }
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
}
