//! The client registry: one entry per connected WebSocket session, for operators.
//!
//! A session registers when it starts ([`ClientRegistry::register`]) and gets a
//! [`ClientHandle`]; dropping the handle removes the entry, so a session that ends in any way
//! leaves the registry. The registry map is locked only on connect, disconnect and when a
//! subscription or channel is added or removed; the per-delivery update
//! ([`ClientHandle::delivered`]) touches only the session's own entry.
//!
//! What an entry holds is safe to show to operators (`/v1/status`, the admin console): the
//! protocol, the peer address, the connect time, subscription ids with their filters as text,
//! and counters. Never row data or tokens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::decode::Cursor;
use crate::endpoint::Endpoint;

/// One subscription (`/ws`) or joined channel (Realtime) of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionInfo {
    /// The subscription id (`/ws`) or the channel topic (Realtime).
    pub id: String,
    /// What it receives, as text (filters, bindings); never row data or tokens.
    pub filter: String,
    /// It receives every change of `public.monitoring_events`, unfiltered and with every
    /// column: two such subscriptions must receive the same number of changes.
    pub everything: bool,
}

/// Where a session is in the change stream: what it examined and what it delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Progress {
    /// The newest change the session examined (delivered or skipped); `None` before any.
    #[serde(serialize_with = "serialize_cursor")]
    pub position: Option<Cursor>,
    /// Row changes (INSERT, UPDATE, DELETE) the session delivered since it connected.
    pub delivered: u64,
    /// Bumped whenever subscriptions change or the session replays (resume), so that counts
    /// taken at two moments are comparable only when it did not change in between.
    pub generation: u64,
}

/// Writes a cursor in its client text form.
fn serialize_cursor<S: serde::Serializer>(c: &Option<Cursor>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_str(&c.encode()),
        None => s.serialize_none(),
    }
}

/// The registry's record of one session.
#[derive(Debug)]
pub struct ClientEntry {
    /// Registry id, unique for the process's life.
    pub id: u64,
    /// The endpoint the session is connected to.
    pub protocol: Endpoint,
    /// Peer address, when the server knows it.
    pub peer: Option<SocketAddr>,
    /// When the session started.
    pub connected_at: DateTime<Utc>,
    /// All frames written (changes, replies, heartbeats, broadcasts).
    frames_sent: AtomicU64,
    /// Subscriptions or channels.
    subscriptions: Mutex<Vec<SubscriptionInfo>>,
    /// Stream position and change deliveries, updated once per delivered batch.
    progress: Mutex<Progress>,
}

/// A point-in-time copy of one entry.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSnapshot {
    /// Registry id.
    pub id: u64,
    /// The endpoint the session is connected to.
    pub protocol: Endpoint,
    /// Peer address.
    pub peer: Option<String>,
    /// When the session started.
    pub connected_at: DateTime<Utc>,
    /// All frames written.
    pub frames_sent: u64,
    /// Row changes (INSERT, UPDATE, DELETE) delivered.
    pub changes_sent: u64,
    /// Subscriptions or channels.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// Stream position, deliveries and generation.
    #[serde(skip)]
    pub progress: Progress,
}

impl ClientSnapshot {
    /// The session has exactly one subscription and it receives everything.
    pub fn receives_everything(&self) -> bool {
        self.subscriptions.len() == 1 && self.subscriptions[0].everything
    }
}

/// Every connected session.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    /// The next id.
    next_id: AtomicU64,
    /// Entries by id.
    entries: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
}

/// Locks a mutex; a poisoned lock still holds valid data here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClientRegistry {
    /// Registers a session; the entry lives as long as the returned handle.
    pub fn register(
        self: &Arc<Self>,
        protocol: Endpoint,
        peer: Option<SocketAddr>,
    ) -> ClientHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ClientEntry {
            id,
            protocol,
            peer,
            connected_at: Utc::now(),
            frames_sent: AtomicU64::new(0),
            subscriptions: Mutex::new(Vec::new()),
            progress: Mutex::new(Progress::default()),
        });
        lock(&self.entries).insert(id, Arc::clone(&entry));
        ClientHandle {
            registry: Arc::clone(self),
            entry,
        }
    }

    /// Number of sessions per protocol.
    pub fn counts(&self) -> BTreeMap<Endpoint, usize> {
        let mut out = BTreeMap::from([(Endpoint::Ws, 0), (Endpoint::Realtime, 0)]);
        for e in lock(&self.entries).values() {
            *out.entry(e.protocol).or_default() += 1;
        }
        out
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// No session is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies of at most `limit` entries, oldest first.
    pub fn snapshot(&self, limit: usize) -> Vec<ClientSnapshot> {
        let entries: Vec<Arc<ClientEntry>> =
            lock(&self.entries).values().take(limit).cloned().collect();
        entries.iter().map(|e| e.snapshot()).collect()
    }
}

impl ClientEntry {
    /// A point-in-time copy.
    pub fn snapshot(&self) -> ClientSnapshot {
        let progress = *lock(&self.progress);
        ClientSnapshot {
            id: self.id,
            protocol: self.protocol,
            peer: self.peer.map(|p| p.to_string()),
            connected_at: self.connected_at,
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            changes_sent: progress.delivered,
            subscriptions: lock(&self.subscriptions).clone(),
            progress,
        }
    }
}

/// A session's registration; dropping it unregisters the session.
#[derive(Debug)]
pub struct ClientHandle {
    /// The registry.
    registry: Arc<ClientRegistry>,
    /// This session's entry.
    entry: Arc<ClientEntry>,
}

impl ClientHandle {
    /// The registry id.
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    /// Counts `n` frames written (any kind).
    pub fn sent(&self, n: usize) {
        self.entry
            .frames_sent
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records a delivered batch: `n` row changes (INSERT, UPDATE, DELETE; not TRUNCATE, which
    /// only `/ws` sends), the session now at `position`.
    pub fn delivered(&self, n: usize, position: Option<Cursor>) {
        let mut p = lock(&self.entry.progress);
        p.delivered += n as u64;
        if position.is_some() {
            p.position = position;
        }
    }

    /// The session replayed changes (resume): counts taken before are not comparable.
    pub fn replayed(&self) {
        lock(&self.entry.progress).generation += 1;
    }

    /// Adds or replaces the subscription with this id.
    pub fn subscribe(&self, info: SubscriptionInfo) {
        {
            let mut subs = lock(&self.entry.subscriptions);
            subs.retain(|s| s.id != info.id);
            subs.push(info);
        }
        self.replayed();
    }

    /// Removes the subscription with this id.
    pub fn unsubscribe(&self, id: &str) {
        lock(&self.entry.subscriptions).retain(|s| s.id != id);
        self.replayed();
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        lock(&self.registry.entries).remove(&self.entry.id);
    }
}

/// A `/ws` subscription filter as operators read it: `*` for everything, else its parts, e.g.
/// `event_type in (cpu, mem) and source in (host-1) and ops (INSERT) and data=neq.{}`.
pub fn describe_filter(filter: &crate::filter::Filter) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !filter.event_types.is_empty() {
        parts.push(format!("event_type in ({})", filter.event_types.join(", ")));
    }
    if !filter.sources.is_empty() {
        parts.push(format!("source in ({})", filter.sources.join(", ")));
    }
    if !filter.ops.is_empty() {
        let ops: Vec<&str> = filter.ops.iter().map(|o| o.as_str()).collect();
        parts.push(format!("ops ({})", ops.join(", ")));
    }
    parts.extend(filter.conditions.iter().map(ToString::to_string));
    if parts.is_empty() {
        "*".to_owned()
    } else {
        parts.join(" and ")
    }
}

/// Whether a `/ws` filter lets every row change (INSERT, UPDATE, DELETE) through.
pub fn filter_is_everything(filter: &crate::filter::Filter) -> bool {
    use crate::decode::Operation;
    filter.ignores_rows()
        && (filter.ops.is_empty()
            || [Operation::Insert, Operation::Update, Operation::Delete]
                .iter()
                .all(|op| filter.ops.contains(op)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_as_long_as_their_handle() {
        let reg = Arc::new(ClientRegistry::default());
        let a = reg.register(Endpoint::Ws, Some("127.0.0.1:5000".parse().unwrap()));
        let b = reg.register(Endpoint::Realtime, None);
        assert_ne!(a.id(), b.id());
        assert_eq!(reg.counts()[&Endpoint::Ws], 1);
        assert_eq!(reg.counts()[&Endpoint::Realtime], 1);
        a.subscribe(SubscriptionInfo {
            id: "s1".into(),
            filter: "*".into(),
            everything: true,
        });
        a.delivered(3, None);
        a.sent(4);
        let snap = reg.snapshot(10);
        assert_eq!(snap[0].changes_sent, 3);
        assert_eq!(snap[0].frames_sent, 4);
        assert!(snap[0].receives_everything());
        assert_eq!(snap[0].peer.as_deref(), Some("127.0.0.1:5000"));
        a.unsubscribe("s1");
        assert!(reg.snapshot(10)[0].subscriptions.is_empty());
        drop(a);
        assert_eq!(reg.len(), 1);
        drop(b);
        assert!(reg.is_empty());
    }
}
