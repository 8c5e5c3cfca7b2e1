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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

use super::bus::{BroadcastBody, Bus, TopicKey};
use super::protocol::cluster::{self as wire, RelayedBody, RelayedBroadcast};
use crate::metrics::Metrics;
use crate::replication::WalMessage;

/// The prefix of walcast's logical decoding messages between nodes.
pub const RELAY_PREFIX: &str = "walcast.broadcast";

/// Broadcasts waiting for the writer. At the default channel budget (100 per second per
/// topic) this is several seconds of a busy node's traffic: enough to ride out a slow commit,
/// small enough (a few MiB of typical payloads) that a database outage does not pile up memory.
pub const SEND_QUEUE: usize = 4096;

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
    tx: mpsc::Sender<RelayedBroadcast>,
    /// Counters.
    metrics: Arc<Metrics>,
    /// Set while copies are being dropped at the full queue (one warning per episode).
    dropping: AtomicBool,
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
    pub fn on(metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<RelayedBroadcast>) {
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let inner = RelayTx {
            tx,
            metrics,
            dropping: AtomicBool::new(false),
        };
        (Relay(Some(Arc::new(inner))), rx)
    }

    /// Whether broadcasts are relayed.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Queues a copy of a broadcast just delivered on this node for the other nodes; never
    /// waits (a full queue drops the copy, counts it and warns once per episode).
    pub fn send(&self, key: &TopicKey, body: &BroadcastBody) {
        let Some(r) = &self.0 else {
            return;
        };
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
        let copy = RelayedBroadcast {
            private: key.private,
            topic: key.topic.clone(),
            body,
        };
        match r.tx.try_send(copy) {
            Ok(()) => r.dropping.store(false, Ordering::Relaxed),
            Err(_) => {
                r.metrics.cluster_broadcasts_dropped.add("send_queue", 1);
                if !r.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        queue = SEND_QUEUE,
                        "the queue of broadcasts for the other nodes is full; they are delivered on this node only until it drains"
                    );
                }
            }
        }
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

/// Takes broadcasts from `rx` after `first` into one encoded batch (at most [`MAX_BATCH`]
/// entries and about [`MAX_BATCH_BYTES`]); returns it and how many broadcasts it holds, and
/// how many could not be encoded.
fn collect_batch(
    origin: u64,
    first: RelayedBroadcast,
    rx: &mut mpsc::Receiver<RelayedBroadcast>,
) -> (Vec<u8>, u16, u64) {
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
                tracing::warn!(error = %e, "a broadcast could not be relayed to the other nodes");
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

/// Starts the task that writes relayed broadcasts from `rx` to the WAL on its own connection
/// to `database_url`, tagged with this process's `origin`. On `token` it writes what is
/// already queued (once) and ends.
pub fn spawn_relay_writer_task(
    mut rx: mpsc::Receiver<RelayedBroadcast>,
    database_url: String,
    origin: u64,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut writer = Writer {
            url: database_url,
            conn: None,
            resting_until: None,
        };
        loop {
            let first = tokio::select! {
                biased;
                // PRIORITY 1: shutdown.
                _ = token.cancelled() => break,
                // PRIORITY 2: the next broadcast.
                b = rx.recv() => match b {
                    Some(b) => b,
                    None => return,
                },
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

/// Starts the task that delivers broadcasts from other nodes (`rx`, from the reader) to the
/// members of their topics on this node; batches from `origin` (this process) are skipped.
/// It ends when the reader, the only sender, is gone.
pub fn spawn_relay_receive_task(
    mut rx: mpsc::Receiver<WalMessage>,
    bus: Arc<Bus>,
    origin: u64,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if wire::origin(&m.content).is_ok_and(|o| o == origin) {
                continue;
            }
            let batch = match wire::decode(&m.content) {
                Ok(b) => b,
                Err(e) => {
                    metrics.cluster_broadcasts_dropped.add("decode", 1);
                    tracing::warn!(error = %e, kind = e.kind(), lsn = %m.lsn, "a batch of broadcasts from another node could not be read; skipped");
                    continue;
                }
            };
            for b in batch.broadcasts {
                let key = TopicKey {
                    private: b.private,
                    topic: b.topic,
                };
                metrics.cluster_broadcasts_received.inc();
                bus.publish(&key, bus_body(b.body));
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
            .broadcasts
            .iter()
            .map(|b| (b.private, b.body.clone()))
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
        let task = spawn_relay_receive_task(rx, Arc::clone(&bus), 1, Arc::clone(&metrics));
        let batch = |origin, event: &str| wire::RelayBatch {
            origin,
            broadcasts: vec![RelayedBroadcast {
                private: true,
                topic: "realtime:room".into(),
                body: RelayedBody::User {
                    event: event.into(),
                    metadata: None,
                    encoding: PayloadEncoding::Binary,
                    payload: vec![1],
                },
            }],
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
