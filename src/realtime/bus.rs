//! The process-wide registry of Realtime channel topics: broadcast and presence between the
//! sockets of one walcast node.
//!
//! Each Realtime session owns one bounded inbox ([`SESSION_QUEUE`] deliveries). Joining a
//! channel registers a member (inbox, `self` flag, presence key) under the topic; public and
//! private channels of the same name are different topics. Sending never blocks: a delivery that
//! does not fit in an inbox is dropped and the inbox is marked overflowed, and the session then
//! tells its client and closes. Broadcast frames are encoded at most once per wire form and
//! shared by every recipient.
//!
//! The bus never touches sockets and never crosses nodes by itself: with `--cluster-broadcast`
//! broadcasts from other nodes arrive through [`super::cluster`] and are published here like
//! broadcasts no local member sent. Presence crosses nodes the same way: the bus hands every
//! local track and untrack to the cluster [`Relay`] (in order, under its lock), and keeps the
//! presences other nodes announced ([`Bus::remote_track`], at most [`MAX_REMOTE_PRESENCES`])
//! beside the local ones, so `presence_state` and `presence_diff` cover every node. A topic
//! stays while it has members or presences.
//!
//! Each topic also keeps its per-second message budget ([`Bus::admit`]): client messages are
//! counted in fixed one-second windows, per topic and per member. Over the budget a message is
//! not relayed, and the member that sent the most in the window is named the offender (its
//! session closes it); the others only lose what was over the budget.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::{Message, Utf8Bytes};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use super::cluster::Relay;
use crate::realtime::protocol::cluster::{Entry, RelayedMeta, RelayedPresence};
use crate::realtime::protocol::frame::{self, PayloadEncoding, Vsn};
use crate::realtime::protocol::presence::{
    PresenceMeta, encode_broadcast_json, encode_presence_diff, encode_presence_state,
};

/// Deliveries one session may have queued. A client that reads slower than its channels
/// broadcast for this many messages is disconnected rather than buffered without bound; 1024
/// covers bursts of a busy room while keeping a session's worst case at a few MiB.
pub const SESSION_QUEUE: usize = 1024;

/// Presences from other nodes this node keeps, over all topics. Each is a few hundred bytes
/// (key, reference, payload up to `--max-payload`), so 100 000 bounds the table at tens of MiB;
/// beyond it further remote tracks are ignored (a warning in the log).
pub const MAX_REMOTE_PRESENCES: usize = 100_000;

/// A channel membership, unique in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(u64);

/// Who tracked a presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A member on this node.
    Local(MemberId),
    /// A membership on another node (that node's random id, its member id).
    Remote(u64, u64),
}

/// A topic: the channel name plus whether the channel is private.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    /// Private channels are separate from public ones of the same name.
    pub private: bool,
    /// The full topic, `realtime:<name>`.
    pub topic: String,
}

/// The sending half of a session's inbox.
#[derive(Debug, Clone)]
pub struct Inbox {
    /// Deliveries to the session.
    tx: mpsc::Sender<Delivery>,
    /// Set when a delivery was dropped because the inbox was full.
    overflow: Arc<AtomicBool>,
}

impl Inbox {
    /// A new inbox and its receiving half.
    pub fn new() -> (Inbox, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        (
            Inbox {
                tx,
                overflow: Arc::new(AtomicBool::new(false)),
            },
            rx,
        )
    }

    /// Whether a delivery was dropped.
    pub fn overflowed(&self) -> bool {
        self.overflow.load(Ordering::Relaxed)
    }

    /// Queues a delivery without waiting; a full inbox marks the overflow.
    fn deliver(&self, d: Delivery) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(d) {
            self.overflow.store(true, Ordering::Relaxed);
        }
    }
}

/// Something for one member of a topic.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The recipient membership (the session looks up its channel by it).
    pub member: MemberId,
    /// What happened.
    pub event: BusEvent,
}

/// What a member receives.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A broadcast from another member (or from itself with `self`).
    Broadcast(Arc<Broadcast>),
    /// A `presence_diff` payload (JSON text).
    PresenceDiff(Arc<str>),
}

/// What a broadcast carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BroadcastBody {
    /// A text push: the whole payload object (`{"type":"broadcast","event",...}`) as JSON.
    Json(String),
    /// A binary push (kind 3).
    Binary {
        /// The user's event.
        event: String,
        /// Metadata JSON, if any.
        metadata: Option<String>,
        /// Payload encoding.
        encoding: PayloadEncoding,
        /// Payload bytes.
        payload: Vec<u8>,
    },
}

/// One broadcast with its frames, encoded on first use per wire form.
#[derive(Debug)]
pub struct Broadcast {
    /// The topic.
    topic: String,
    /// The content.
    body: BroadcastBody,
    /// The id of the `realtime.messages` row it was read from (Broadcast from Database), so
    /// that a channel that replayed the message at its join does not receive it twice.
    stored_id: Option<Arc<str>>,
    /// The frame for `1.0.0` clients (`None`: not expressible, e.g. raw binary payloads).
    v1: OnceLock<Option<Message>>,
    /// The frame for `2.0.0` clients.
    v2: OnceLock<Option<Message>>,
}

impl Broadcast {
    /// A broadcast on `topic`.
    pub fn new(topic: String, body: BroadcastBody) -> Self {
        Broadcast {
            topic,
            body,
            stored_id: None,
            v1: OnceLock::new(),
            v2: OnceLock::new(),
        }
    }

    /// A broadcast read from the `realtime.messages` row `id`.
    pub fn stored(topic: String, body: BroadcastBody, id: Arc<str>) -> Self {
        Broadcast {
            stored_id: Some(id),
            ..Broadcast::new(topic, body)
        }
    }

    /// The id of the `realtime.messages` row it was read from, if any.
    pub fn stored_id(&self) -> Option<&str> {
        self.stored_id.as_deref()
    }

    /// The frame for a client of serializer `vsn`, or `None` when it cannot receive this one.
    pub fn frame(&self, vsn: Vsn) -> Option<Message> {
        let cell = match vsn {
            Vsn::V1 => &self.v1,
            Vsn::V2 => &self.v2,
        };
        cell.get_or_init(|| self.encode(vsn)).clone()
    }

    /// Encodes the frame for `vsn`.
    fn encode(&self, vsn: Vsn) -> Option<Message> {
        let text = |payload: &str| {
            Message::Text(Utf8Bytes::from(frame::encode_fastlane(
                vsn,
                &self.topic,
                "broadcast",
                payload,
            )))
        };
        match &self.body {
            BroadcastBody::Json(payload) => Some(text(payload)),
            BroadcastBody::Binary {
                event,
                metadata,
                encoding,
                payload,
            } => {
                if vsn == Vsn::V2
                    && let Ok(bytes) = frame::encode_user_broadcast(
                        &self.topic,
                        event,
                        metadata.as_deref(),
                        *encoding,
                        payload,
                    )
                {
                    return Some(Message::Binary(bytes.into()));
                }
                // As JSON text: `1.0.0` clients, or fields too long for a binary frame.
                if *encoding != PayloadEncoding::Json {
                    return None;
                }
                let payload = std::str::from_utf8(payload).ok()?;
                Some(text(&encode_broadcast_json(
                    event,
                    payload,
                    metadata.as_deref(),
                )))
            }
        }
    }
}

/// One member of a topic.
#[derive(Debug)]
struct Member {
    /// Its id.
    id: MemberId,
    /// Its session's inbox.
    inbox: Inbox,
    /// Receives its own broadcasts.
    self_broadcast: bool,
    /// Receives presence diffs.
    presence: bool,
    /// Its presence key.
    presence_key: String,
    /// Messages it sent in the topic's window: (window number, count).
    sent: (u64, u32),
}

/// A topic's message count in the current one-second window.
#[derive(Debug, Default)]
struct RateWindow {
    /// When the window started (`None`: no message yet).
    start: Option<Instant>,
    /// The window's number, so that members' counts from older windows read as zero.
    number: u64,
    /// Messages in the window.
    total: u32,
    /// The member that sent the most in the window, and how many.
    top: Option<(MemberId, u32)>,
}

impl RateWindow {
    /// Starts a new window when a second has passed since this one started.
    fn roll(&mut self, now: Instant) {
        let fresh = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1));
        if fresh {
            *self = RateWindow {
                start: Some(now),
                number: self.number.wrapping_add(1),
                total: 0,
                top: None,
            };
        }
    }
}

/// What the channel's budget says about one client message ([`Bus::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the budget: relay it.
    Relay,
    /// Over the budget: do not relay it; the sender is not the heaviest and keeps its socket.
    Drop,
    /// Over the budget and the sender sent the most in this second: close it.
    Offender,
}

/// A topic's members and presences.
#[derive(Debug, Default)]
struct Topic {
    /// Members in join order.
    members: Vec<Member>,
    /// Presence metas by key, each with who tracked it (local and remote).
    presences: BTreeMap<String, Vec<(Owner, PresenceMeta)>>,
    /// Client messages in the current second.
    rate: RateWindow,
}

impl Topic {
    /// Sends a presence diff to every presence-enabled member.
    fn announce(&self, key: &str, joins: &[PresenceMeta], leaves: &[PresenceMeta]) {
        let payload: Arc<str> = Arc::from(encode_presence_diff(key, joins, leaves));
        for m in self.members.iter().filter(|m| m.presence) {
            m.inbox.deliver(Delivery {
                member: m.id,
                event: BusEvent::PresenceDiff(Arc::clone(&payload)),
            });
        }
    }

    /// Whether the topic can go (no members, no presences).
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.presences.is_empty()
    }

    /// Removes the owner's presence, if any; returns the meta removed.
    fn drop_presence(&mut self, owner: Owner, key: &str) -> Option<PresenceMeta> {
        let metas = self.presences.get_mut(key)?;
        let i = metas.iter().position(|(m, _)| *m == owner)?;
        let (_, meta) = metas.remove(i);
        if metas.is_empty() {
            self.presences.remove(key);
        }
        Some(meta)
    }

    /// The `presence_state` payload.
    fn state(&self) -> String {
        let grouped: Vec<(&str, Vec<PresenceMeta>)> = self
            .presences
            .iter()
            .map(|(k, metas)| (k.as_str(), metas.iter().map(|(_, m)| m.clone()).collect()))
            .collect();
        encode_presence_state(grouped.iter().map(|(k, m)| (*k, m.as_slice())))
    }
}

/// The registry (see the module docs).
#[derive(Debug, Default)]
pub struct Bus {
    /// Topics with at least one member or presence.
    topics: Mutex<HashMap<TopicKey, Topic>>,
    /// The next member id.
    next_id: AtomicU64,
    /// Where local presence changes go to reach the other nodes (`--cluster-broadcast`).
    relay: OnceLock<Relay>,
    /// Presences from other nodes, over all topics (at most [`MAX_REMOTE_PRESENCES`]).
    remote_count: AtomicU64,
}

/// A presence this node tracks, as the other nodes learn it.
fn relayed(key: &TopicKey, member: MemberId, pkey: &str, meta: Option<&PresenceMeta>) -> Entry {
    Entry::Presence(RelayedPresence {
        private: key.private,
        topic: key.topic.clone(),
        member: member.0,
        key: pkey.to_owned(),
        meta: meta.map(|m| RelayedMeta {
            phx_ref: m.phx_ref.clone(),
            payload: Value::Object(m.payload.clone()).to_string(),
        }),
    })
}

/// What joining returns.
#[derive(Debug)]
pub struct Joined {
    /// The new membership.
    pub member: MemberId,
    /// The `presence_state` payload, when presence is enabled.
    pub presence_state: Option<String>,
}

/// A fresh presence reference.
fn new_phx_ref() -> String {
    format!("F{:016x}", rand::random::<u64>())
}

impl Bus {
    /// Hands local presence changes to `relay` from now on (set once, at start).
    pub fn set_relay(&self, relay: Relay) {
        let _ = self.relay.set(relay);
    }

    /// Queues a local presence change for the other nodes, if presence crosses nodes.
    fn share(&self, entry: impl FnOnce() -> Entry) {
        if let Some(r) = self.relay.get().filter(|r| r.is_on()) {
            r.send_entry(entry());
        }
    }

    /// Locks the topics (a poisoned lock still holds consistent maps).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TopicKey, Topic>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a member to a topic.
    pub fn join(
        &self,
        key: &TopicKey,
        inbox: Inbox,
        self_broadcast: bool,
        presence: bool,
        presence_key: String,
    ) -> Joined {
        let id = MemberId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut topics = self.lock();
        let topic = topics.entry(key.clone()).or_default();
        topic.members.push(Member {
            id,
            inbox,
            self_broadcast,
            presence,
            presence_key,
            sent: (0, 0),
        });
        Joined {
            member: id,
            presence_state: presence.then(|| topic.state()),
        }
    }

    /// Removes a member; its presence (if tracked) leaves.
    pub fn leave(&self, key: &TopicKey, member: MemberId) {
        let mut topics = self.lock();
        let Some(topic) = topics.get_mut(key) else {
            return;
        };
        let Some(i) = topic.members.iter().position(|m| m.id == member) else {
            return;
        };
        let gone = topic.members.remove(i);
        if let Some(meta) = topic.drop_presence(Owner::Local(member), &gone.presence_key) {
            topic.announce(&gone.presence_key, &[], &[meta]);
            self.share(|| relayed(key, member, &gone.presence_key, None));
        }
        if topic.is_empty() {
            topics.remove(key);
        }
    }

    /// Counts a message sent to a topic from outside it (HTTP broadcast) against the topic's
    /// budget; whether it may be relayed. A topic without members takes anything (it goes
    /// nowhere).
    pub fn admit_unjoined(&self, key: &TopicKey, budget: u32, now: Instant) -> bool {
        let mut topics = self.lock();
        let Some(topic) = topics.get_mut(key) else {
            return true;
        };
        topic.rate.roll(now);
        topic.rate.total = topic.rate.total.saturating_add(1);
        topic.rate.total <= budget
    }

    /// Counts a message a member sends on a topic against the topic's budget of `budget`
    /// messages per second and says what to do with it.
    pub fn admit(&self, key: &TopicKey, member: MemberId, budget: u32, now: Instant) -> Admission {
        let mut topics = self.lock();
        let Some(topic) = topics.get_mut(key) else {
            return Admission::Relay;
        };
        topic.rate.roll(now);
        let window = topic.rate.number;
        let Some(m) = topic.members.iter_mut().find(|m| m.id == member) else {
            return Admission::Relay;
        };
        if m.sent.0 != window {
            m.sent = (window, 0);
        }
        m.sent.1 = m.sent.1.saturating_add(1);
        let mine = m.sent.1;
        let rate = &mut topic.rate;
        rate.total = rate.total.saturating_add(1);
        if rate.top.is_none_or(|(_, most)| mine > most) {
            rate.top = Some((member, mine));
        }
        if rate.total <= budget {
            Admission::Relay
        } else if rate.top.is_some_and(|(heaviest, _)| heaviest == member) {
            Admission::Offender
        } else {
            Admission::Drop
        }
    }

    /// Sends a broadcast to every member except the sender (unless it asked for `self`).
    /// Returns how many members it was queued for.
    pub fn broadcast(&self, key: &TopicKey, from: MemberId, body: BroadcastBody) -> usize {
        self.fan_out(key, from, || Broadcast::new(key.topic.clone(), body))
    }

    /// Queues the broadcast `make` builds (only when the topic has members) for every member
    /// except `from` (unless it asked for `self`); how many.
    fn fan_out(&self, key: &TopicKey, from: MemberId, make: impl FnOnce() -> Broadcast) -> usize {
        let topics = self.lock();
        let Some(topic) = topics.get(key) else {
            return 0;
        };
        let msg = Arc::new(make());
        let mut n = 0;
        for m in &topic.members {
            if m.id == from && !m.self_broadcast {
                continue;
            }
            m.inbox.deliver(Delivery {
                member: m.id,
                event: BusEvent::Broadcast(Arc::clone(&msg)),
            });
            n += 1;
        }
        n
    }

    /// Sends a broadcast that no member sent (REST, the server) to every member of the topic.
    /// Returns how many members it was queued for.
    pub fn publish(&self, key: &TopicKey, body: BroadcastBody) -> usize {
        self.broadcast(key, MemberId(u64::MAX), body)
    }

    /// Sends a broadcast read from the `realtime.messages` row `id` to every member of the
    /// topic. Returns how many members it was queued for.
    pub fn publish_stored(&self, key: &TopicKey, body: BroadcastBody, id: Arc<str>) -> usize {
        self.fan_out(key, MemberId(u64::MAX), || {
            Broadcast::stored(key.topic.clone(), body, id)
        })
    }

    /// Turns presence diffs on for a member that joined without them (a `track` on a channel
    /// joined with `presence.enabled: false`); returns the `presence_state` payload to send it
    /// first, or `None` when it already had presence (or is gone).
    pub fn enable_presence(&self, key: &TopicKey, member: MemberId) -> Option<String> {
        let mut topics = self.lock();
        let topic = topics.get_mut(key)?;
        let m = topic.members.iter_mut().find(|m| m.id == member)?;
        if m.presence {
            return None;
        }
        m.presence = true;
        Some(topic.state())
    }

    /// Tracks (or updates) the member's presence. A payload equal to the tracked one changes
    /// nothing. Whether the member itself receives diffs is its own setting
    /// ([`Bus::enable_presence`]).
    pub fn track(&self, key: &TopicKey, member: MemberId, payload: Map<String, Value>) {
        let mut topics = self.lock();
        let Some(topic) = topics.get_mut(key) else {
            return;
        };
        let Some(m) = topic.members.iter().find(|m| m.id == member) else {
            return;
        };
        let pkey = m.presence_key.clone();
        let metas = topic.presences.entry(pkey.clone()).or_default();
        let previous = match metas.iter().position(|(id, _)| *id == Owner::Local(member)) {
            Some(i) if metas[i].1.payload == payload => return,
            Some(i) => Some(metas.remove(i).1),
            None => None,
        };
        let meta = PresenceMeta {
            phx_ref: new_phx_ref(),
            phx_ref_prev: previous.as_ref().map(|p| p.phx_ref.clone()),
            payload,
        };
        metas.push((Owner::Local(member), meta.clone()));
        let leaves: Vec<PresenceMeta> = previous.into_iter().collect();
        topic.announce(&pkey, std::slice::from_ref(&meta), &leaves);
        self.share(|| relayed(key, member, &pkey, Some(&meta)));
    }

    /// Stops tracking the member's presence.
    pub fn untrack(&self, key: &TopicKey, member: MemberId) {
        let mut topics = self.lock();
        let Some(topic) = topics.get_mut(key) else {
            return;
        };
        let Some(pkey) = topic
            .members
            .iter()
            .find(|m| m.id == member)
            .map(|m| m.presence_key.clone())
        else {
            return;
        };
        if let Some(meta) = topic.drop_presence(Owner::Local(member), &pkey) {
            topic.announce(&pkey, &[], &[meta]);
            self.share(|| relayed(key, member, &pkey, None));
        }
    }

    /// Up to `limit` presences tracked on this node, as track entries for the other nodes
    /// (a node announces them again when another node appears or asks).
    pub fn local_presences(&self, limit: usize) -> Vec<Entry> {
        let topics = self.lock();
        let mut out = Vec::new();
        for (key, topic) in topics.iter() {
            for (pkey, metas) in &topic.presences {
                for (owner, meta) in metas {
                    if out.len() >= limit {
                        return out;
                    }
                    if let Owner::Local(member) = owner {
                        out.push(relayed(key, *member, pkey, Some(meta)));
                    }
                }
            }
        }
        out
    }

    /// Records a presence another node (`origin`) tracked, or its update, and sends the diff
    /// to the topic's members here. The same reference again (a node announcing its presences
    /// anew) changes nothing. Returns `false` when the table is full and it was ignored.
    pub fn remote_track(
        &self,
        key: &TopicKey,
        origin: u64,
        member: u64,
        pkey: &str,
        phx_ref: String,
        payload: Map<String, Value>,
    ) -> bool {
        let owner = Owner::Remote(origin, member);
        let mut topics = self.lock();
        let known = topics
            .get(key)
            .and_then(|t| t.presences.get(pkey))
            .and_then(|metas| metas.iter().find(|(o, _)| *o == owner));
        if known.is_some_and(|(_, m)| m.phx_ref == phx_ref) {
            return true;
        }
        if known.is_none() {
            if self.remote_count.load(Ordering::Relaxed) >= MAX_REMOTE_PRESENCES as u64 {
                return false;
            }
            self.remote_count.fetch_add(1, Ordering::Relaxed);
        }
        let topic = topics.entry(key.clone()).or_default();
        let previous = topic.drop_presence(owner, pkey);
        let meta = PresenceMeta {
            phx_ref,
            phx_ref_prev: previous.as_ref().map(|p| p.phx_ref.clone()),
            payload,
        };
        topic
            .presences
            .entry(pkey.to_owned())
            .or_default()
            .push((owner, meta.clone()));
        let leaves: Vec<PresenceMeta> = previous.into_iter().collect();
        topic.announce(pkey, std::slice::from_ref(&meta), &leaves);
        true
    }

    /// Removes a presence another node untracked, and sends the leave to the topic's members.
    pub fn remote_untrack(&self, key: &TopicKey, origin: u64, member: u64, pkey: &str) {
        let mut topics = self.lock();
        let Some(topic) = topics.get_mut(key) else {
            return;
        };
        if let Some(meta) = topic.drop_presence(Owner::Remote(origin, member), pkey) {
            self.remote_count.fetch_sub(1, Ordering::Relaxed);
            topic.announce(pkey, &[], &[meta]);
        }
        if topic.is_empty() {
            topics.remove(key);
        }
    }

    /// Removes every presence of node `origin` (it stopped answering) and sends the leaves;
    /// how many left.
    pub fn drop_origin(&self, origin: u64) -> usize {
        let mut topics = self.lock();
        let mut gone = 0;
        for topic in topics.values_mut() {
            let mut leaves: Vec<(String, Vec<PresenceMeta>)> = Vec::new();
            topic.presences.retain(|pkey, metas| {
                let mut left = Vec::new();
                metas.retain(|(o, m)| {
                    let theirs = matches!(o, Owner::Remote(from, _) if *from == origin);
                    if theirs {
                        left.push(m.clone());
                    }
                    !theirs
                });
                if !left.is_empty() {
                    leaves.push((pkey.clone(), left));
                }
                !metas.is_empty()
            });
            for (pkey, left) in leaves {
                gone += left.len();
                topic.announce(&pkey, &[], &left);
            }
        }
        topics.retain(|_, t| !t.is_empty());
        self.remote_count.fetch_sub(gone as u64, Ordering::Relaxed);
        gone
    }

    /// Topics with members or presences (for tests and metrics).
    pub fn topic_count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(t: &str) -> TopicKey {
        TopicKey {
            private: false,
            topic: t.into(),
        }
    }

    fn text(m: Message) -> String {
        match m {
            Message::Text(t) => t.to_string(),
            other => panic!("not text: {other:?}"),
        }
    }

    #[tokio::test]
    async fn broadcast_self_and_isolation() {
        let bus = Bus::default();
        let (a_in, mut a_rx) = Inbox::new();
        let (b_in, mut b_rx) = Inbox::new();
        let (c_in, mut c_rx) = Inbox::new();
        let k = key("realtime:room1");
        let a = bus.join(&k, a_in, false, false, "a".into()).member;
        let b = bus.join(&k, b_in, false, false, "b".into()).member;
        let private = TopicKey {
            private: true,
            topic: "realtime:room1".into(),
        };
        bus.join(&private, c_in, false, false, "c".into());
        let body =
            BroadcastBody::Json(r#"{"type":"broadcast","event":"e","payload":{"a":1}}"#.into());
        assert_eq!(bus.broadcast(&k, a, body), 1);
        let d = b_rx.try_recv().unwrap();
        assert_eq!(d.member, b);
        let BusEvent::Broadcast(msg) = d.event else {
            panic!("not a broadcast")
        };
        assert_eq!(
            text(msg.frame(Vsn::V2).unwrap()),
            r#"[null,null,"realtime:room1","broadcast",{"type":"broadcast","event":"e","payload":{"a":1}}]"#
        );
        assert!(a_rx.try_recv().is_err());
        assert!(c_rx.try_recv().is_err());
        bus.leave(&k, a);
        bus.leave(&k, b);
        assert_eq!(bus.topic_count(), 1);
    }

    #[test]
    fn binary_broadcast_frames() {
        let msg = Broadcast::new(
            "realtime:room1".into(),
            BroadcastBody::Binary {
                event: "ping".into(),
                metadata: None,
                encoding: PayloadEncoding::Json,
                payload: br#"{"n":1}"#.to_vec(),
            },
        );
        let Message::Binary(b) = msg.frame(Vsn::V2).unwrap() else {
            panic!("v2 gets binary")
        };
        let mut want = vec![4u8, 14, 4, 0, 1];
        want.extend_from_slice(b"realtime:room1ping{\"n\":1}");
        assert_eq!(&b[..], &want[..]);
        assert_eq!(
            text(msg.frame(Vsn::V1).unwrap()),
            r#"{"topic":"realtime:room1","event":"broadcast","payload":{"event":"ping","payload":{"n":1},"type":"broadcast"},"ref":null}"#
        );
        let raw = Broadcast::new(
            "realtime:room1".into(),
            BroadcastBody::Binary {
                event: "bin".into(),
                metadata: None,
                encoding: PayloadEncoding::Binary,
                payload: vec![1, 2],
            },
        );
        assert!(raw.frame(Vsn::V1).is_none());
        assert!(raw.frame(Vsn::V2).is_some());
    }

    #[tokio::test]
    async fn presence_track_update_untrack_leave() {
        let bus = Bus::default();
        let k = key("realtime:room1");
        let (a_in, mut a_rx) = Inbox::new();
        let (b_in, mut b_rx) = Inbox::new();
        let a = bus.join(&k, a_in, false, true, "u1".into());
        assert_eq!(a.presence_state.as_deref(), Some("{}"));
        let b = bus.join(&k, b_in, false, true, "u2".into());
        bus.track(&k, a.member, json!({"n":"A"}).as_object().unwrap().clone());
        for rx in [&mut a_rx, &mut b_rx] {
            let BusEvent::PresenceDiff(p) = rx.try_recv().unwrap().event else {
                panic!("diff expected")
            };
            let v: Value = serde_json::from_str(&p).unwrap();
            assert_eq!(v["joins"]["u1"]["metas"][0]["n"], "A");
            assert_eq!(v["leaves"], json!({}));
        }
        // Same payload: nothing. New payload: join with phx_ref_prev and a leave.
        bus.track(&k, a.member, json!({"n":"A"}).as_object().unwrap().clone());
        assert!(b_rx.try_recv().is_err());
        bus.track(&k, a.member, json!({"n":"B"}).as_object().unwrap().clone());
        let BusEvent::PresenceDiff(p) = b_rx.try_recv().unwrap().event else {
            panic!("diff expected")
        };
        let v: Value = serde_json::from_str(&p).unwrap();
        assert!(v["joins"]["u1"]["metas"][0]["phx_ref_prev"].is_string());
        assert_eq!(v["leaves"]["u1"]["metas"][0]["n"], "A");
        // A third member sees the current state.
        let (c_in, _c_rx) = Inbox::new();
        let c = bus.join(&k, c_in, false, true, "u3".into());
        let state: Value = serde_json::from_str(c.presence_state.as_deref().unwrap()).unwrap();
        assert_eq!(state["u1"]["metas"][0]["n"], "B");
        // Leaving untracks.
        bus.leave(&k, a.member);
        let mut last = None;
        while let Ok(d) = b_rx.try_recv() {
            last = Some(d);
        }
        let BusEvent::PresenceDiff(p) = last.unwrap().event else {
            panic!("diff expected")
        };
        let v: Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["leaves"]["u1"]["metas"][0]["n"], "B");
        bus.untrack(&k, b.member);
    }

    #[tokio::test]
    async fn tracking_without_presence_enables_it_once_on_request() {
        let bus = Bus::default();
        let k = key("realtime:room2");
        let (a_in, mut a_rx) = Inbox::new();
        let a = bus.join(&k, a_in, false, false, "u1".into());
        assert_eq!(a.presence_state, None);
        bus.track(&k, a.member, json!({"n":"A"}).as_object().unwrap().clone());
        assert!(a_rx.try_recv().is_err(), "no diffs without presence");
        let state: Value =
            serde_json::from_str(&bus.enable_presence(&k, a.member).unwrap()).unwrap();
        assert_eq!(state["u1"]["metas"][0]["n"], "A");
        assert_eq!(bus.enable_presence(&k, a.member), None);
        bus.untrack(&k, a.member);
        assert!(matches!(
            a_rx.try_recv().unwrap().event,
            BusEvent::PresenceDiff(_)
        ));
    }

    #[test]
    fn the_channel_budget_names_the_heaviest_sender_only() {
        let bus = Bus::default();
        let k = key("realtime:busy");
        let (a_in, _a_rx) = Inbox::new();
        let (b_in, _b_rx) = Inbox::new();
        let calm = bus.join(&k, a_in, false, false, "a".into()).member;
        let flood = bus.join(&k, b_in, false, false, "b".into()).member;
        let t0 = Instant::now();
        assert_eq!(bus.admit(&k, calm, 5, t0), Admission::Relay);
        for _ in 0..4 {
            assert_eq!(bus.admit(&k, flood, 5, t0), Admission::Relay);
        }
        // Over the budget: the heaviest sender is the offender, the calm one only loses its
        // message, for the rest of the second.
        assert_eq!(bus.admit(&k, flood, 5, t0), Admission::Offender);
        assert_eq!(bus.admit(&k, calm, 5, t0), Admission::Drop);
        bus.leave(&k, flood);
        assert_eq!(bus.admit(&k, calm, 5, t0), Admission::Drop);
        // A new second: a new budget.
        let t1 = t0 + Duration::from_millis(1000);
        for _ in 0..5 {
            assert_eq!(bus.admit(&k, calm, 5, t1), Admission::Relay);
        }
        assert_eq!(bus.admit(&k, calm, 5, t1), Admission::Offender);
        // Topics are counted apart.
        let (c_in, _c_rx) = Inbox::new();
        let other = key("realtime:quiet");
        let c = bus.join(&other, c_in, false, false, "c".into()).member;
        assert_eq!(bus.admit(&other, c, 5, t1), Admission::Relay);
    }

    fn diff(rx: &mut mpsc::Receiver<Delivery>) -> Value {
        let BusEvent::PresenceDiff(p) = rx.try_recv().expect("a diff").event else {
            panic!("diff expected")
        };
        serde_json::from_str(&p).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn remote_presences_merge_with_local_ones_and_leave_with_their_node() {
        let bus = Bus::default();
        let k = key("realtime:room");
        // A remote presence on a topic without members here is kept for later joiners.
        assert!(bus.remote_track(&k, 7, 1, "r1", "R1".into(), obj(json!({"n":1}))));
        assert_eq!(bus.topic_count(), 1);
        let (a_in, mut a_rx) = Inbox::new();
        let a = bus.join(&k, a_in, false, true, "local".into());
        let state: Value = serde_json::from_str(a.presence_state.as_deref().unwrap()).unwrap();
        assert_eq!(state["r1"]["metas"][0]["phx_ref"], "R1");
        assert_eq!(state["r1"]["metas"][0]["n"], 1);
        bus.track(&k, a.member, obj(json!({"n":"A"})));
        let _ = diff(&mut a_rx);
        // The same reference again (a node announcing anew) changes nothing.
        assert!(bus.remote_track(&k, 7, 1, "r1", "R1".into(), obj(json!({"n":1}))));
        assert!(a_rx.try_recv().is_err());
        // An update: join with phx_ref_prev, leave of the old meta.
        assert!(bus.remote_track(&k, 7, 1, "r1", "R2".into(), obj(json!({"n":2}))));
        let v = diff(&mut a_rx);
        assert_eq!(v["joins"]["r1"]["metas"][0]["phx_ref_prev"], "R1");
        assert_eq!(v["leaves"]["r1"]["metas"][0]["phx_ref"], "R1");
        // Another node's presence under the same key, then an untrack.
        assert!(bus.remote_track(&k, 8, 1, "r1", "S1".into(), obj(json!({}))));
        let _ = diff(&mut a_rx);
        bus.remote_untrack(&k, 8, 1, "r1");
        assert_eq!(diff(&mut a_rx)["leaves"]["r1"]["metas"][0]["phx_ref"], "S1");
        // Local presences are what this node announces; remote ones are not.
        let local = bus.local_presences(10);
        assert_eq!(local.len(), 1);
        assert!(matches!(&local[0], Entry::Presence(p) if p.key == "local" && p.meta.is_some()));
        assert!(bus.local_presences(0).is_empty());
        // Node 7 goes silent: its presences leave; local ones stay.
        assert_eq!(bus.drop_origin(7), 1);
        let v = diff(&mut a_rx);
        assert_eq!(v["leaves"]["r1"]["metas"][0]["phx_ref"], "R2");
        assert_eq!(v["joins"], json!({}));
        let (b_in, _b_rx) = Inbox::new();
        let b = bus.join(&k, b_in, false, true, "b".into());
        let state: Value = serde_json::from_str(b.presence_state.as_deref().unwrap()).unwrap();
        assert!(state.get("r1").is_none());
        assert_eq!(state["local"]["metas"][0]["n"], "A");
        assert_eq!(bus.drop_origin(7), 0);
        // The topic goes with its last member and presence.
        bus.leave(&k, a.member);
        bus.leave(&k, b.member);
        assert_eq!(bus.topic_count(), 0);
        assert_eq!(bus.remote_count.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn local_presence_changes_go_to_the_relay_in_order() {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let (relay, mut rx) = Relay::on(metrics);
        let bus = Bus::default();
        bus.set_relay(relay);
        let k = key("realtime:room");
        let (a_in, _a_rx) = Inbox::new();
        let a = bus.join(&k, a_in, false, true, "u".into()).member;
        bus.track(&k, a, obj(json!({"n":1})));
        bus.track(&k, a, obj(json!({"n":1})));
        bus.untrack(&k, a);
        bus.track(&k, a, obj(json!({"n":2})));
        bus.leave(&k, a);
        let mut got = Vec::new();
        while let Ok(Entry::Presence(p)) = rx.try_recv() {
            assert_eq!((p.member, p.key.as_str()), (a.0, "u"));
            got.push(p.meta.map(|m| m.payload));
        }
        assert_eq!(
            got,
            [
                Some(r#"{"n":1}"#.to_owned()),
                None,
                Some(r#"{"n":2}"#.to_owned()),
                None
            ]
        );
    }

    #[test]
    fn the_remote_table_is_bounded() {
        let bus = Bus::default();
        let k = key("realtime:room");
        bus.remote_count
            .store(MAX_REMOTE_PRESENCES as u64, Ordering::Relaxed);
        assert!(!bus.remote_track(&k, 1, 1, "k", "r".into(), Map::new()));
        assert_eq!(bus.topic_count(), 0);
    }

    #[test]
    fn full_inbox_marks_overflow() {
        let bus = Bus::default();
        let k = key("realtime:r");
        let (a_in, _a_rx) = Inbox::new();
        let (b_in, _b_rx) = Inbox::new();
        let overflow = b_in.clone();
        let a = bus.join(&k, a_in, false, false, "a".into()).member;
        bus.join(&k, b_in, false, false, "b".into());
        for _ in 0..SESSION_QUEUE {
            bus.broadcast(&k, a, BroadcastBody::Json("{}".into()));
        }
        assert!(!overflow.overflowed());
        bus.broadcast(&k, a, BroadcastBody::Json("{}".into()));
        assert!(overflow.overflowed());
    }
}
