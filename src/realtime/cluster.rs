//! Broadcast across nodes (`--cluster-broadcast`): a broadcast accepted on one walcast node
//! reaches the members of its topic on every node, with the WAL as the bus.
//!
//! The accepting node delivers to its own members at once, as without the option, and hands a
//! copy to [`Relay::send`]. A writer task ([`spawn_relay_writer_task`]) takes the copies from a
//! bounded queue ([`SEND_QUEUE`]) and writes them, several per round trip, as one transactional
//! logical decoding message per batch (`pg_logical_emit_message(true, 'walcast.broadcast', ...)`,
//! layout in [`crate::realtime::protocol::cluster`]) on its own connection. Every node's
//! replication reader streams such messages (pgoutput with `messages` on) and hands them to a
//! bounded queue ([`RECEIVE_QUEUE`]); the receive task ([`spawn_relay_receive_task`]) skips
//! the batches this process wrote (their origin is its own random id, so there is no echo) and
//! publishes the others on the local [`Bus`] as broadcasts no local member sent: every member
//! of the topic receives them, whatever its `self` setting.
//!
//! Why transactional: the message is decoded at its transaction's commit, which is flushed
//! before the write returns, so a batch reaches other nodes as soon as it is durable, and all
//! nodes see batches in one order (commit order). One writer connection writes batches one
//! after the other, so broadcasts from one sender on one topic arrive everywhere in the order
//! the node accepted them. (A non-transactional message is not flushed by Postgres 15 and may
//! wait for the WAL writer.)
//!
//! Losses are counted, never waited for: when the send queue is full, or the database refuses
//! the write or cannot be reached, local delivery still happens and the copy for the other
//! nodes is dropped (`walcast_cluster_broadcasts_dropped_total`, a warning in the log). After a
//! failed write the writer waits [`RETRY_AFTER`] before connecting again and drops what arrives
//! meanwhile. Broadcasts sent with `persist` that were stored in `realtime.messages` are not
//! relayed: the row already reaches every node as Broadcast from Database.
//!
//! Presence crosses nodes through the same writer: the [`Bus`] hands every local track and
//! untrack (a leave untracks) to [`Relay::send_entry`], in order, and the receive task applies
//! other nodes' entries to the bus's table of remote presences, which sends `presence_diff` to
//! local members and merges them into `presence_state`. Liveness: the writer writes a batch,
//! empty if it has nothing else, every `--cluster-presence-ttl` / 3 (the `alive`); the receive
//! task notes when it last read a batch from each node and, once a second, drops all presences
//! of nodes silent for longer than the TTL (their members get the leaves). A node's alives
//! carry a hello until it has read one of its own batches back (then its slot is in place and
//! the answers reach it). When a node reads a batch from a node it does not know (it started,
//! or came back after it was given up), or a hello, it announces its own presences again, at
//! most [`MAX_SYNC`] of them; a node that comes back without a hello is also sent a hello so
//! that it announces its presences again. Announcing again is idempotent (same references).
//! Limits: a presence change dropped at a full queue or a failed write is lost until the next
//! announce (a remote member may linger until its node dies or it tracks again); a node stalled
//! for longer than the TTL loses its presences on the other nodes until it writes again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

use super::bus::{BroadcastBody, Bus, TopicKey};
use super::protocol::cluster::{self as wire, Entry, RelayedBody, RelayedBroadcast};
use crate::metrics::Metrics;
use crate::replication::WalMessage;

/// The prefix of walcast's logical decoding messages between nodes.
pub const RELAY_PREFIX: &str = "walcast.broadcast";

/// Broadcasts waiting for the writer. At the default channel budget (100 per second per
/// topic) this is several seconds of a busy node's traffic: enough to ride out a slow commit,
/// small enough (a few MiB of typical payloads) that a database outage does not pile up memory.
pub const SEND_QUEUE: usize = 4096;
/// Bytes the queue for the other nodes may hold, in KiB: at the default `--max-payload`
/// (256 KiB) a few hundred large broadcasts, or the whole count of small ones; the count alone
/// would let 4096 large ones pin a gigabyte while the database is slow.
pub const SEND_QUEUE_KIB: u32 = 64 << 10;

/// Batches the reader may queue for the receive task. The task only decodes and queues frames
/// on the bus without waiting, so it keeps up with anything the reader decodes; 1024 batches
/// absorb a burst from many nodes.
pub const RECEIVE_QUEUE: usize = 1024;

/// Most broadcasts in one batch (one WAL message, one round trip).
pub const MAX_BATCH: usize = 256;

/// A batch is closed once its entries reach this many bytes (one `--max-payload` broadcast may
/// exceed it alone). Keeps one WAL message, and every node's decoding of it, small.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// After a failed write, how long the writer drops broadcasts before it connects again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Most of its presences a node announces again at once (when another node appears or asks);
/// half the send queue, so the announce leaves room for broadcasts. Presences beyond it reach
/// a newly started node only when they are tracked again.
pub const MAX_SYNC: usize = SEND_QUEUE / 2;

/// Most other nodes whose liveness a node follows; a batch from one more is ignored for
/// presence. Every process draws a new id, so restarts count until their old id expires.
pub const MAX_NODES: usize = 1024;

/// How often the receive task looks for silent nodes.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Longest wait for a connection or for one write.
pub const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// The statement that writes one batch (`$1`: prefix, `$2`: the batch).
const RELAY_SQL: &str = include_str!("../../sql/realtime/relay_broadcasts.sql");

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The database URL does not parse.
    #[error("the database URL is not valid")]
    Url(#[source] tokio_postgres::Error),
    /// No connection.
    #[error("could not connect to Postgres to relay broadcasts to the other nodes")]
    Connect(#[source] tokio_postgres::Error),
    /// The write failed.
    #[error("Postgres refused a batch of broadcasts for the other nodes")]
    Write(#[source] tokio_postgres::Error),
    /// Connecting or writing took longer than [`DB_TIMEOUT`].
    #[error("Postgres did not answer within {DB_TIMEOUT:?}")]
    Timeout,
}

impl ClusterError {
    /// A low-cardinality label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterError::Url(_) => "url",
            ClusterError::Connect(_) => "connect",
            ClusterError::Write(_) => "write",
            ClusterError::Timeout => "timeout",
        }
    }
}

/// What [`Relay::send`] needs when the option is on.
#[derive(Debug)]
struct RelayTx {
    /// The writer's queue.
    tx: mpsc::Sender<(Entry, OwnedSemaphorePermit)>,
    /// The queue's byte budget, in KiB ([`SEND_QUEUE_KIB`]).
    bytes: Arc<Semaphore>,
    /// Counters.
    metrics: Arc<Metrics>,
    /// Set while copies are being dropped at the full queue (one warning per episode).
    dropping: AtomicBool,
    /// Set once this node read one of its own batches back: its slot is in place, so what
    /// other nodes write in answer to its hello reaches it (until then every alive says hello).
    heard_self: Arc<AtomicBool>,
}

/// The handle sessions and the REST API use to relay a broadcast to the other nodes; does
/// nothing unless `--cluster-broadcast` is on.
#[derive(Debug, Clone, Default)]
pub struct Relay(Option<Arc<RelayTx>>);

impl Relay {
    /// A handle that relays nothing (one node).
    pub fn off() -> Self {
        Relay(None)
    }

    /// A handle that queues copies for the writer, and the writer's end of the queue.
    pub fn on(metrics: Arc<Metrics>) -> (Self, RelayRx) {
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let inner = RelayTx {
            tx,
            bytes: Arc::new(Semaphore::new(SEND_QUEUE_KIB as usize)),
            metrics,
            dropping: AtomicBool::new(false),
            heard_self: Arc::new(AtomicBool::new(false)),
        };
        (Relay(Some(Arc::new(inner))), RelayRx(rx))
    }

    /// Whether broadcasts are relayed.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The flag the receive task sets once this node read its own batch back (the writer
    /// stops saying hello then); `None` when off.
    pub fn heard_self(&self) -> Option<Arc<AtomicBool>> {
        self.0.as_ref().map(|r| Arc::clone(&r.heard_self))
    }

    /// Queues a copy of a broadcast just delivered on this node for the other nodes; never
    /// waits (a full queue drops the copy, counts it and warns once per episode).
    pub fn send(&self, key: &TopicKey, body: &BroadcastBody) {
        if self.0.is_none() {
            return;
        }
        let body = match body {
            BroadcastBody::Json(json) => RelayedBody::Json(json.clone()),
            BroadcastBody::Binary {
                event,
                metadata,
                encoding,
                payload,
            } => RelayedBody::User {
                event: event.clone(),
                metadata: metadata.clone(),
                encoding: *encoding,
                payload: payload.clone(),
            },
        };
        self.send_entry(Entry::Broadcast(RelayedBroadcast {
            private: key.private,
            topic: key.topic.clone(),
            body,
        }));
    }

    /// Queues an entry (a broadcast, a presence change, a hello) for the other nodes; never
    /// waits (a full queue drops it, counts it and warns once per episode).
    pub fn send_entry(&self, entry: Entry) {
        let Some(r) = &self.0 else {
            return;
        };
        let kib = u32::try_from(entry.size().div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, SEND_QUEUE_KIB);
        let queued = Arc::clone(&r.bytes)
            .try_acquire_many_owned(kib)
            .ok()
            .and_then(|share| r.tx.try_send((entry, share)).ok());
        match queued {
            Some(()) => r.dropping.store(false, Ordering::Relaxed),
            None => {
                r.metrics.cluster_broadcasts_dropped.add("send_queue", 1);
                if !r.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        queue = SEND_QUEUE,
                        "the queue of broadcasts and presence changes for the other nodes is full; they stay on this node only until it drains"
                    );
                }
            }
        }
    }
}

/// The writer's end of the queue: entries come out with their share of the byte budget given
/// back.
#[derive(Debug)]
pub struct RelayRx(mpsc::Receiver<(Entry, OwnedSemaphorePermit)>);

impl RelayRx {
    /// The next entry; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Entry> {
        self.0.recv().await.map(|(entry, _share)| entry)
    }

    /// The next entry if one is queued.
    pub fn try_recv(&mut self) -> Result<Entry, mpsc::error::TryRecvError> {
        self.0.try_recv().map(|(entry, _share)| entry)
    }
}

/// The body members receive for a relayed body.
fn bus_body(body: RelayedBody) -> BroadcastBody {
    match body {
        RelayedBody::Json(json) => BroadcastBody::Json(json),
        RelayedBody::User {
            event,
            metadata,
            encoding,
            payload,
        } => BroadcastBody::Binary {
            event,
            metadata,
            encoding,
            payload,
        },
    }
}

/// Takes entries from `rx` after `first` into one encoded batch (at most [`MAX_BATCH`]
/// entries and about [`MAX_BATCH_BYTES`]); returns it and how many entries it holds, and
/// how many could not be encoded.
fn collect_batch(origin: u64, first: Entry, rx: &mut RelayRx) -> (Vec<u8>, u16, u64) {
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut refused = 0u64;
    let mut next = Some(first);
    while let Some(b) = next.take() {
        let mark = entries.len();
        match wire::encode_entry(&b, &mut entries) {
            Ok(()) => count += 1,
            Err(e) => {
                entries.truncate(mark);
                refused += 1;
                tracing::warn!(error = %e, "a broadcast or presence could not be relayed to the other nodes");
            }
        }
        if usize::from(count) < MAX_BATCH && entries.len() < MAX_BATCH_BYTES {
            next = rx.try_recv().ok();
        }
    }
    let mut batch = wire::encode_header(origin, count);
    batch.extend_from_slice(&entries);
    (batch, count, refused)
}

/// The writer's connection and its prepared statement.
struct Writer {
    /// The database URL.
    url: String,
    /// The open connection, if any.
    conn: Option<(Client, Statement, JoinHandle<()>)>,
    /// After a failure: no new connection before this instant.
    resting_until: Option<Instant>,
}

impl Writer {
    /// Opens a connection and prepares the statement.
    async fn connect(&self) -> Result<(Client, Statement, JoinHandle<()>), ClusterError> {
        let mut config: tokio_postgres::Config = self.url.parse().map_err(ClusterError::Url)?;
        if config.get_application_name().is_none() {
            config.application_name("walcast-cluster-broadcast");
        }
        config.connect_timeout(DB_TIMEOUT);
        let (client, conn) = tokio::time::timeout(DB_TIMEOUT, config.connect(NoTls))
            .await
            .map_err(|_| ClusterError::Timeout)?
            .map_err(ClusterError::Connect)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let stmt = tokio::time::timeout(DB_TIMEOUT, client.prepare(RELAY_SQL))
            .await
            .map_err(|_| ClusterError::Timeout)?
            .map_err(ClusterError::Write)?;
        Ok((client, stmt, task))
    }

    /// Writes one batch, connecting first when needed.
    async fn write(&mut self, batch: &[u8]) -> Result<(), ClusterError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let Some((client, stmt, _)) = &self.conn else {
            return Err(ClusterError::Timeout);
        };
        let result =
            tokio::time::timeout(DB_TIMEOUT, client.execute(stmt, &[&RELAY_PREFIX, &batch]))
                .await
                .map_err(|_| ClusterError::Timeout)
                .and_then(|r| r.map(|_| ()).map_err(ClusterError::Write));
        if result.is_err()
            && let Some((_, _, task)) = self.conn.take()
        {
            task.abort();
        }
        result
    }

    /// Writes an `alive` batch (no entries, or a hello), unless resting after a failure.
    async fn alive(&mut self, batch: &[u8]) {
        if self.resting_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match self.write(batch).await {
            Ok(()) => {}
            Err(e) => {
                if self.resting_until.is_none() {
                    tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), "this node could not tell the other nodes it is alive; they drop its presences after --cluster-presence-ttl");
                }
                self.resting_until = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }

    /// Writes a batch of `count` broadcasts, or drops it while resting after a failure;
    /// counts either way.
    async fn handle(&mut self, batch: &[u8], count: u16, metrics: &Metrics) {
        let n = u64::from(count);
        if n == 0 {
            return;
        }
        if self.resting_until.is_some_and(|t| Instant::now() < t) {
            metrics.cluster_broadcasts_dropped.add("write", n);
            return;
        }
        match self.write(batch).await {
            Ok(()) => {
                if self.resting_until.take().is_some() {
                    tracing::info!("broadcasts reach the other nodes again");
                }
                metrics.cluster_broadcasts_sent.add(n);
            }
            Err(e) => {
                metrics.cluster_broadcasts_dropped.add("write", n);
                if self.resting_until.is_none() {
                    tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), broadcasts = n, "broadcasts could not be written for the other nodes; they were delivered on this node only");
                }
                self.resting_until = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }
}

/// Starts the task that writes relayed entries from `rx` to the WAL on its own connection
/// to `database_url`, tagged with this process's `origin`, and an `alive` batch every
/// `alive_every`, with a hello until `heard_self` is set (this node's slot has read one of its
/// batches, so answers to the hello reach it). On `token` it writes what is already queued
/// (once) and ends.
pub fn spawn_relay_writer_task(
    mut rx: RelayRx,
    database_url: String,
    origin: u64,
    alive_every: Duration,
    heard_self: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut writer = Writer {
            url: database_url,
            conn: None,
            resting_until: None,
        };
        let mut alive = tokio::time::interval(alive_every);
        alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                // PRIORITY 1: shutdown.
                _ = token.cancelled() => break,
                // PRIORITY 2: the next entry.
                b = rx.recv() => match b {
                    Some(b) => b,
                    None => return,
                },
                // PRIORITY 3: tell the other nodes this one is alive.
                _ = alive.tick() => {
                    let hello = !heard_self.load(Ordering::Relaxed);
                    let mut batch = wire::encode_header(origin, u16::from(hello));
                    if hello {
                        let _ = wire::encode_entry(&Entry::Hello, &mut batch);
                    }
                    writer.alive(&batch).await;
                    continue;
                }
            };
            let (batch, count, refused) = collect_batch(origin, first, &mut rx);
            metrics.cluster_broadcasts_dropped.add("write", refused);
            writer.handle(&batch, count, &metrics).await;
        }
        // What sessions queued before they closed.
        while let Ok(first) = rx.try_recv() {
            let (batch, count, refused) = collect_batch(origin, first, &mut rx);
            metrics.cluster_broadcasts_dropped.add("write", refused);
            writer.handle(&batch, count, &metrics).await;
        }
        if let Some((_, _, task)) = writer.conn.take() {
            task.abort();
        }
    })
}

/// When this node last read a batch from each other node (presence liveness).
#[derive(Debug)]
pub struct Liveness {
    /// Nodes are given up after this long without a batch.
    ttl: Duration,
    /// When this process started following (it announced itself with a hello then).
    started: Instant,
    /// Each known node's last batch.
    seen: std::collections::HashMap<u64, Instant>,
}

/// What reading a batch from a node means for presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A node already followed.
    Known,
    /// A node not followed until now: announce this node's presences to it.
    New,
    /// More nodes than [`MAX_NODES`]: ignored.
    Full,
}

impl Liveness {
    /// Follows nodes, giving them up after `ttl` of silence.
    pub fn new(ttl: Duration, now: Instant) -> Self {
        Liveness {
            ttl,
            started: now,
            seen: std::collections::HashMap::new(),
        }
    }

    /// Notes a batch from `origin` at `now`.
    pub fn saw(&mut self, origin: u64, now: Instant) -> Seen {
        if let Some(t) = self.seen.get_mut(&origin) {
            *t = now;
            return Seen::Known;
        }
        if self.seen.len() >= MAX_NODES {
            return Seen::Full;
        }
        self.seen.insert(origin, now);
        Seen::New
    }

    /// Whether a node new to this one may have lost this node's presences before (this node
    /// is older than the TTL, so the node is not new to it because it just started).
    pub fn settled(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) > self.ttl
    }

    /// Removes and returns the nodes silent for longer than the TTL at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let ttl = self.ttl;
        let mut gone = Vec::new();
        self.seen.retain(|o, t| {
            let alive = now.saturating_duration_since(*t) <= ttl;
            if !alive {
                gone.push(*o);
            }
            alive
        });
        gone
    }
}

/// Applies one remote presence entry to the bus.
fn apply_presence(bus: &Bus, origin: u64, p: wire::RelayedPresence) {
    let key = TopicKey {
        private: p.private,
        topic: p.topic,
    };
    match p.meta {
        None => bus.remote_untrack(&key, origin, p.member, &p.key),
        Some(meta) => {
            let payload = match serde_json::from_str::<serde_json::Value>(&meta.payload) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => {
                    tracing::warn!(
                        origin = format!("{origin:016x}"),
                        "a presence from another node has a payload that is not a JSON object; skipped"
                    );
                    return;
                }
            };
            if !bus.remote_track(&key, origin, p.member, &p.key, meta.phx_ref, payload) {
                tracing::warn!(
                    max = crate::realtime::bus::MAX_REMOTE_PRESENCES,
                    "the table of presences from other nodes is full; a presence was ignored"
                );
            }
        }
    }
}

/// Announces this node's presences again (at most [`MAX_SYNC`]).
fn announce(bus: &Bus, relay: &Relay) {
    for e in bus.local_presences(MAX_SYNC) {
        relay.send_entry(e);
    }
}

/// Handles one batch from the reader: liveness, presence, broadcasts.
fn receive_batch(
    m: &WalMessage,
    bus: &Bus,
    relay: &Relay,
    origin: u64,
    live: &mut Liveness,
    metrics: &Metrics,
) {
    if wire::origin(&m.content).is_ok_and(|o| o == origin) {
        if let Some(flag) = relay.heard_self() {
            flag.store(true, Ordering::Relaxed);
        }
        return;
    }
    let batch = match wire::decode(&m.content) {
        Ok(b) => b,
        Err(e) => {
            metrics.cluster_broadcasts_dropped.add("decode", 1);
            tracing::warn!(error = %e, kind = e.kind(), lsn = %m.lsn, "a batch of broadcasts from another node could not be read; skipped");
            return;
        }
    };
    let now = Instant::now();
    let seen = live.saw(batch.origin, now);
    let hello = batch.entries.iter().any(|e| matches!(e, Entry::Hello));
    if seen == Seen::New || hello {
        announce(bus, relay);
    }
    if seen == Seen::New && !hello && live.settled(now) {
        // It came back after this node gave it up: ask for its presences again.
        relay.send_entry(Entry::Hello);
    }
    for e in batch.entries {
        match e {
            Entry::Broadcast(b) => {
                let key = TopicKey {
                    private: b.private,
                    topic: b.topic,
                };
                metrics.cluster_broadcasts_received.inc();
                bus.publish(&key, bus_body(b.body));
            }
            Entry::Presence(p) if seen != Seen::Full => apply_presence(bus, batch.origin, p),
            Entry::Presence(_) | Entry::Hello => {}
        }
    }
}

/// Starts the task that delivers broadcasts and presence changes from other nodes (`rx`, from
/// the reader) to the members of their topics on this node; batches from `origin` (this
/// process) are skipped. Once a second it drops the presences of nodes silent for longer than
/// `ttl`. Announces go out through `relay`. It ends when the reader, the only sender, is gone.
pub fn spawn_relay_receive_task(
    mut rx: mpsc::Receiver<WalMessage>,
    bus: Arc<Bus>,
    relay: Relay,
    origin: u64,
    ttl: Duration,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut live = Liveness::new(ttl, Instant::now());
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                // PRIORITY 1: the next batch (ends with the reader).
                m = rx.recv() => match m {
                    Some(m) => receive_batch(&m, &bus, &relay, origin, &mut live, &metrics),
                    None => return,
                },
                // PRIORITY 2: give up silent nodes.
                _ = sweep.tick() => {
                    for gone in live.expire(Instant::now()) {
                        let n = bus.drop_origin(gone);
                        if n > 0 {
                            tracing::info!(origin = format!("{gone:016x}"), presences = n, "a walcast node went silent; its presences left");
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Lsn;
    use crate::realtime::bus::{BusEvent, Inbox};
    use crate::realtime::protocol::frame::PayloadEncoding;

    fn key(private: bool) -> TopicKey {
        TopicKey {
            private,
            topic: "realtime:room".into(),
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_too() {
        let metrics = Arc::new(Metrics::default());
        let (relay, mut rx) = Relay::on(Arc::clone(&metrics));
        let big = format!("\"{}\"", "x".repeat(256 << 10));
        let fits = (SEND_QUEUE_KIB as usize) / (256 + 1);
        for _ in 0..fits + 10 {
            relay.send(&key(false), &BroadcastBody::Json(big.clone()));
        }
        // Far below the count bound, the bytes bound refused the rest.
        assert!(fits + 10 < SEND_QUEUE);
        assert_eq!(metrics.cluster_broadcasts_dropped.get("send_queue"), 10);
        // Taking one gives its bytes back.
        rx.recv().await.expect("queued");
        relay.send(&key(false), &BroadcastBody::Json(big));
        assert_eq!(metrics.cluster_broadcasts_dropped.get("send_queue"), 10);
    }

    #[tokio::test]
    async fn copies_are_batched_in_order_and_a_full_queue_drops() {
        let metrics = Arc::new(Metrics::default());
        let (relay, mut rx) = Relay::on(Arc::clone(&metrics));
        for n in 0..3 {
            relay.send(&key(n == 1), &BroadcastBody::Json(format!("{{\"n\":{n}}}")));
        }
        let first = rx.recv().await.unwrap();
        let (bytes, count, refused) = collect_batch(42, first, &mut rx);
        assert_eq!((count, refused), (3, 0));
        let batch = wire::decode(&bytes).unwrap();
        assert_eq!(batch.origin, 42);
        let got: Vec<_> = batch
            .entries
            .iter()
            .map(|e| match e {
                Entry::Broadcast(b) => (b.private, b.body.clone()),
                other => panic!("a broadcast: {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            (0..3)
                .map(|n| (n == 1, RelayedBody::Json(format!("{{\"n\":{n}}}"))))
                .collect::<Vec<_>>()
        );
        for _ in 0..SEND_QUEUE + 2 {
            relay.send(&key(false), &BroadcastBody::Json("{}".into()));
        }
        assert_eq!(metrics.cluster_broadcasts_dropped.get("send_queue"), 2);
        Relay::off().send(&key(false), &BroadcastBody::Json("{}".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_nodes_expire_after_the_ttl() {
        let ttl = Duration::from_secs(3);
        let t0 = Instant::now();
        let mut live = Liveness::new(ttl, t0);
        assert_eq!(live.saw(1, t0), Seen::New);
        assert_eq!(live.saw(1, t0), Seen::Known);
        assert_eq!(live.saw(2, t0 + Duration::from_secs(2)), Seen::New);
        assert!(!live.settled(t0 + ttl));
        assert!(live.expire(t0 + ttl).is_empty());
        assert_eq!(live.expire(t0 + Duration::from_millis(3001)), [1]);
        assert_eq!(live.saw(2, t0 + Duration::from_secs(4)), Seen::Known);
        assert!(live.expire(t0 + Duration::from_secs(7)).is_empty());
        assert_eq!(live.expire(t0 + Duration::from_millis(7001)), [2]);
        // A node given up and heard again is new: announce to it.
        assert_eq!(live.saw(1, t0 + Duration::from_secs(8)), Seen::New);
        assert!(live.settled(t0 + Duration::from_secs(8)));
        for o in 0..MAX_NODES as u64 {
            live.saw(o + 100, t0);
        }
        assert_eq!(live.saw(99, t0), Seen::Full);
    }

    #[tokio::test(start_paused = true)]
    async fn remote_presence_joins_announces_and_leaves_when_its_node_goes_silent() {
        let metrics = Arc::new(Metrics::default());
        let bus = Arc::new(Bus::default());
        let (relay, mut out) = Relay::on(Arc::clone(&metrics));
        bus.set_relay(relay.clone());
        let (inbox, mut inbox_rx) = Inbox::new();
        let me = bus
            .join(&key(false), inbox, false, true, "mine".into())
            .member;
        bus.track(&key(false), me, serde_json::Map::new());
        let _ = out.try_recv().unwrap();
        let _ = inbox_rx.try_recv().unwrap();
        let (tx, rx) = mpsc::channel(8);
        let ttl = Duration::from_secs(3);
        let task =
            spawn_relay_receive_task(rx, Arc::clone(&bus), relay, 1, ttl, Arc::clone(&metrics));
        let track = wire::RelayBatch {
            origin: 2,
            entries: vec![Entry::Presence(wire::RelayedPresence {
                private: false,
                topic: "realtime:room".into(),
                member: 5,
                key: "theirs".into(),
                meta: Some(wire::RelayedMeta {
                    phx_ref: "X".into(),
                    payload: r#"{"n":1}"#.into(),
                }),
            })],
        };
        tx.send(WalMessage {
            commit_lsn: Lsn(1),
            lsn: Lsn(1),
            content: wire::encode(&track).unwrap(),
        })
        .await
        .unwrap();
        let d = inbox_rx.recv().await.unwrap();
        let BusEvent::PresenceDiff(p) = d.event else {
            panic!("a diff")
        };
        assert!(p.contains(r#""joins":{"theirs""#), "{p}");
        // A new node: this node announced its own presence for it.
        let Entry::Presence(mine) = out.try_recv().unwrap() else {
            panic!("an announce")
        };
        assert_eq!(mine.key, "mine");
        // Node 2 says nothing more: after the TTL its member leaves.
        let t = Instant::now();
        let d = inbox_rx.recv().await.unwrap();
        assert!(Instant::now() - t <= ttl + SWEEP_EVERY * 2);
        let BusEvent::PresenceDiff(p) = d.event else {
            panic!("a diff")
        };
        assert!(p.contains(r#""leaves":{"theirs""#), "{p}");
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_database_drops_copies_and_rests() {
        let metrics = Metrics::default();
        let mut writer = Writer {
            url: "postgres://nobody@127.0.0.1:1/none".into(),
            conn: None,
            resting_until: None,
        };
        writer.handle(b"batch", 3, &metrics).await;
        assert_eq!(metrics.cluster_broadcasts_dropped.get("write"), 3);
        assert!(writer.resting_until.is_some());
        // While it rests, batches are dropped at once, without connecting.
        writer.handle(b"batch", 2, &metrics).await;
        assert_eq!(metrics.cluster_broadcasts_dropped.get("write"), 5);
        assert_eq!(metrics.cluster_broadcasts_sent.get(), 0);
        assert!(writer.conn.is_none());
    }

    #[tokio::test]
    async fn other_nodes_batches_reach_every_member_and_own_ones_are_skipped() {
        let metrics = Arc::new(Metrics::default());
        let bus = Arc::new(Bus::default());
        let (inbox, mut inbox_rx) = Inbox::new();
        // A member that would not receive its own broadcasts still receives remote ones.
        bus.join(&key(true), inbox, false, false, "k".into());
        let (tx, rx) = mpsc::channel(8);
        let task = spawn_relay_receive_task(
            rx,
            Arc::clone(&bus),
            Relay::off(),
            1,
            Duration::from_secs(15),
            Arc::clone(&metrics),
        );
        let batch = |origin, event: &str| wire::RelayBatch {
            origin,
            entries: vec![Entry::Broadcast(RelayedBroadcast {
                private: true,
                topic: "realtime:room".into(),
                body: RelayedBody::User {
                    event: event.into(),
                    metadata: None,
                    encoding: PayloadEncoding::Binary,
                    payload: vec![1],
                },
            })],
        };
        let msg = |content| WalMessage {
            commit_lsn: Lsn(1),
            lsn: Lsn(1),
            content,
        };
        for m in [
            msg(wire::encode(&batch(1, "own")).unwrap()),
            msg(vec![9, 9]),
            msg(wire::encode(&batch(2, "remote")).unwrap()),
        ] {
            tx.send(m).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        let d = inbox_rx.try_recv().unwrap();
        let BusEvent::Broadcast(b) = d.event else {
            panic!("a broadcast")
        };
        let Some(axum::extract::ws::Message::Binary(frame)) =
            b.frame(crate::realtime::protocol::frame::Vsn::V2)
        else {
            panic!("binary frame")
        };
        assert!(frame.windows(6).any(|w| w == b"remote"));
        assert!(inbox_rx.try_recv().is_err(), "own batch skipped");
        assert_eq!(metrics.cluster_broadcasts_received.get(), 1);
        assert_eq!(metrics.cluster_broadcasts_dropped.get("decode"), 1);
    }
}
