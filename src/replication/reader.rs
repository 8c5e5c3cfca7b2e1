//! The replication reader: the one task that owns the slot.
//!
//! It checks the server, creates the slot when missing, streams pgoutput, decodes each message,
//! hands every change to the hub, and confirms LSNs. It is the only code that sends standby
//! status updates (through the transport's `update_applied_lsn`), and it confirms a position
//! only when every change before it has been handed to the hub *and* the resume window
//! ([`super::retention`]) no longer needs it. After any loss (Postgres restart, network cut) it
//! reconnects with exponential backoff and jitter and re-streams from the confirmed position;
//! the hub drops what it already has, so sessions see no duplicate.
//!
//! With a [`MessageRoute`] it also streams the broadcast message table from its own
//! publication and hands those rows to the route's bounded queue instead of the hub (never
//! waiting: a full queue drops the row and says so in the log).
//!
//! With a [`RelayRoute`] it hands transactional logical decoding messages of the route's prefix
//! (`pg_logical_emit_message`, broadcasts between walcast nodes) to the route's bounded queue,
//! never waiting either. Each is handed over once per process: messages the stream repeats
//! after a reconnect, and those committed before this process first streamed, are skipped.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgwire_replication::{Lsn as PgLsn, ReplicationClient, ReplicationEvent};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::error::ReplicationError;
use super::retention::Window;
use super::settings::ReplicationSettings;
use super::slot;
use crate::decode::{Cursor, Decoded, Decoder, Lsn};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the confirmed position is recomputed and sent.
const CONFIRM_INTERVAL: Duration = Duration::from_millis(500);

/// What the reader reports about itself (readiness, admin, metrics).
#[derive(Debug, Default)]
pub struct ReaderStatus {
    /// The stream is up.
    streaming: AtomicBool,
    /// Confirmed LSN.
    confirmed: AtomicU64,
    /// Last LSN received.
    received: AtomicU64,
    /// The slot's confirmed position when this process first connected: the start of the
    /// resume window before anything was published.
    window_start: AtomicU64,
    /// The newest commit LSN whose transaction can no longer be replayed (see
    /// [`ReaderStatus::oldest_resumable`]).
    expired_through: AtomicU64,
    /// Last error text, for operators.
    last_error: Mutex<Option<String>>,
}

impl ReaderStatus {
    /// The stream is up.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }
    /// The confirmed LSN.
    pub fn confirmed(&self) -> Lsn {
        Lsn(self.confirmed.load(Ordering::Relaxed))
    }
    /// The slot's confirmed position when this process first streamed (0: not yet streamed).
    pub fn window_start(&self) -> Lsn {
        Lsn(self.window_start.load(Ordering::Relaxed))
    }
    /// The oldest cursor a client may resume after: every transaction committed after it is
    /// still retained by the slot (`None` before the stream first started).
    pub fn oldest_resumable(&self) -> Option<Cursor> {
        if self.window_start.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(Cursor {
            commit_lsn: Lsn(self.expired_through.load(Ordering::Relaxed)),
            index: u32::MAX,
        })
    }
    /// The last received LSN.
    pub fn received(&self) -> Lsn {
        Lsn(self.received.load(Ordering::Relaxed))
    }
    /// The last error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Records an error.
    fn set_error(&self, e: &ReplicationError) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(crate::error::error_chain(e));
    }
}

/// The reader's configuration.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// SQL connection URL (checks, slot creation).
    pub database_url: String,
    /// Replication connection facts.
    pub settings: ReplicationSettings,
    /// Slot name.
    pub slot: String,
    /// Resume window in time.
    pub retention: Duration,
    /// Resume window in WAL bytes.
    pub retention_bytes: u64,
    /// Node name (source of dead letters).
    pub node: String,
    /// Where undecodable WAL messages go (a task stores them in the dead-letter queue), so a
    /// bad message never stalls the slot. (An import from a side system on purpose: the
    /// reader hands the letter over and never waits on the dead-letter table.)
    pub dead_letters: Option<tokio::sync::mpsc::Sender<crate::dlq::DeadLetter>>,
    /// Where rows of the broadcast message table go (Broadcast from Database), if anywhere.
    pub messages: Option<MessageRoute>,
    /// Where logical decoding messages of one prefix go (broadcasts between nodes), if
    /// anywhere.
    pub relay: Option<RelayRoute>,
}

/// Transactional logical decoding messages with one prefix, handed to a queue (never to the
/// hub).
#[derive(Debug, Clone)]
pub struct RelayRoute {
    /// The prefix the writer passed to `pg_logical_emit_message`.
    pub prefix: String,
    /// The queue.
    pub tx: tokio::sync::mpsc::Sender<WalMessage>,
}

/// A transactional logical decoding message, as the reader routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalMessage {
    /// The commit LSN of its transaction.
    pub commit_lsn: Lsn,
    /// Its own LSN.
    pub lsn: Lsn,
    /// Its content.
    pub content: Vec<u8>,
}

/// Rows of one table streamed from their own publication and handed to a queue, never to the
/// hub (`realtime.messages`, delivered as broadcasts).
#[derive(Debug, Clone)]
pub struct MessageRoute {
    /// The table's publication; streamed only when it exists.
    pub publication: String,
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// The queue.
    pub tx: tokio::sync::mpsc::Sender<crate::decode::Change>,
}

impl MessageRoute {
    /// Whether `change` belongs to the routed table.
    fn owns(&self, change: &crate::decode::Change) -> bool {
        *change.relation.schema == *self.schema && *change.relation.table == *self.table
    }
}

/// The reader task's state.
pub struct Reader {
    /// Configuration.
    config: ReaderConfig,
    /// Where changes go.
    hub: Hub,
    /// Metrics.
    metrics: Arc<Metrics>,
    /// Status for others.
    status: Arc<ReaderStatus>,
    /// Resume window; `None` before the first session.
    window: Option<Window>,
    /// The slot existed during this process's life (a later "created" means it was replaced).
    slot_seen: bool,
    /// The window's old edge, for the task that records it (`window_store`).
    edge: tokio::sync::watch::Sender<(u64, u64)>,
    /// The commit LSN of the transaction being streamed (between Begin and Commit).
    open_commit: Option<u64>,
    /// The (commit LSN, LSN) of the last message handed to the relay route, or of the stream's
    /// start when this process first streamed: messages at or before it are not handed again.
    relayed_through: (u64, u64),
}

impl Reader {
    /// A reader; call [`Reader::run`] on a spawned task.
    pub fn new(
        config: ReaderConfig,
        hub: Hub,
        metrics: Arc<Metrics>,
        status: Arc<ReaderStatus>,
    ) -> Self {
        Reader {
            config,
            hub,
            metrics,
            status,
            window: None,
            slot_seen: false,
            edge: tokio::sync::watch::Sender::new((0, 0)),
            open_commit: None,
            relayed_through: (0, 0),
        }
    }

    /// Streams until `shutdown`; returns an error only for fatal problems.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ReplicationError> {
        let saver = tokio::spawn(super::window_store::run_saver(
            self.config.database_url.clone(),
            self.config.slot.clone(),
            self.edge.subscribe(),
        ));
        let result = self.run_sessions(shutdown).await;
        saver.abort();
        result
    }

    /// [`Reader::run`]'s loop: sessions, reconnecting after transient errors.
    async fn run_sessions(&mut self, shutdown: CancellationToken) -> Result<(), ReplicationError> {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let result = self.session(&shutdown).await;
            self.status.streaming.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && !shutdown.is_cancelled() => {
                    self.status.set_error(&e);
                    self.metrics.replication_reconnects.inc();
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = BACKOFF_MIN;
                    }
                    let jitter = rand::random_range(0.5..1.5);
                    let delay = backoff.mul_f64(jitter);
                    tracing::warn!(error = %crate::error::error_chain(&e), delay_ms = delay.as_millis() as u64, "replication stream lost; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(_) if shutdown.is_cancelled() => return Ok(()),
                Err(e) => {
                    self.status.set_error(&e);
                    return Err(e);
                }
            }
        }
    }

    /// One connection: checks, slot, stream until error or shutdown.
    async fn session(&mut self, shutdown: &CancellationToken) -> Result<(), ReplicationError> {
        let (client, conn) = tokio_postgres::connect(&self.config.database_url, NoTls)
            .await
            .map_err(ReplicationError::Sql)?;
        let conn_task = tokio::spawn(conn);
        let database = slot::preflight(&client, &self.config.settings.publication).await?;
        // A slot this reader used and that is gone was dropped outside walcast: its position,
        // and the resume window, are lost. Stop without creating a new one, so the operator
        // sees the gap instead of a fresh slot hiding it.
        if self.slot_seen && slot::status(&client, &self.config.slot).await?.is_none() {
            return Err(ReplicationError::SlotReplaced {
                slot: self.config.slot.clone(),
                detail: "it no longer existed when walcast reconnected".into(),
            });
        }
        let (st, created) = slot::ensure(&client, &self.config.slot, &database).await?;
        // A new slot has no window yet; an existing one may have its edge recorded by an
        // earlier process.
        let slot_confirmed = st.confirmed().map(|l| l.0).unwrap_or(0);
        let recorded = if created {
            super::window_store::forget(&client, &self.config.slot).await?;
            None
        } else if self.window.is_none() {
            super::window_store::load(&client, &self.config.slot, slot_confirmed).await?
        } else {
            None
        };
        let mut publications = vec![self.config.settings.publication.clone()];
        if let Some(route) = &self.config.messages {
            if slot::publication_exists(&client, &route.publication).await? {
                publications.push(route.publication.clone());
            } else {
                tracing::warn!(publication = %route.publication, "the publication of realtime.messages is missing (run `walcast migrate`); broadcasts from the database are not delivered");
            }
        }
        drop(client);
        conn_task.abort();
        if created && self.slot_seen {
            return Err(ReplicationError::SlotReplaced {
                slot: self.config.slot.clone(),
                detail: "it no longer existed when walcast reconnected".into(),
            });
        }
        self.slot_seen = true;
        let confirmed = st.confirmed().map(|l| l.0).unwrap_or(0);
        if let Some(w) = &self.window
            && confirmed > w.confirmed()
        {
            return Err(ReplicationError::SlotReplaced {
                slot: self.config.slot.clone(),
                detail: format!(
                    "its confirmed position is {} but walcast confirmed only {}",
                    Lsn(confirmed),
                    Lsn(w.confirmed())
                ),
            });
        }
        if self.window.is_none() {
            let current: Lsn = st.current_lsn.parse().unwrap_or_default();
            self.hub.set_floor(Cursor {
                commit_lsn: current,
                index: 0,
            });
            // Messages between nodes committed before this process streamed are history.
            self.relayed_through = (current.0, 0);
            let mut window = Window::new(
                confirmed,
                self.config.retention,
                self.config.retention_bytes,
            );
            if let Some(edge) = recorded {
                window.restore_expired_through(edge.0);
            }
            self.status.confirmed.store(confirmed, Ordering::Relaxed);
            self.status
                .expired_through
                .store(window.expired_through(), Ordering::Relaxed);
            self.status.window_start.store(confirmed, Ordering::Relaxed);
            self.edge
                .send_replace((window.expired_through(), window.confirmed()));
            self.window = Some(window);
        }
        let ack = self
            .window
            .as_ref()
            .map(Window::confirmed)
            .unwrap_or(confirmed);
        let mut cfg = self
            .config
            .settings
            .session(&self.config.slot, 0, Some(ack));
        cfg.publication = publications.into();
        let mut repl = ReplicationClient::connect(cfg)
            .await
            .map_err(ReplicationError::Stream)?;
        tokio::select! {
            r = repl.wait_started() => r.map_err(ReplicationError::Stream)?,
            _ = shutdown.cancelled() => return Ok(()),
        }
        self.status.streaming.store(true, Ordering::Relaxed);
        tracing::info!(slot = %self.config.slot, confirmed = %Lsn(ack), "replication stream started");
        let result = self.stream(&mut repl, shutdown).await;
        if result.is_ok() {
            // Final status: only what has been handed off and the window allows.
            if let Some(w) = self.window.as_mut() {
                let server_end = self.status.received.load(Ordering::Relaxed);
                repl.update_applied_lsn(PgLsn(w.confirm_target(server_end, Instant::now())));
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), repl.shutdown()).await;
        } else {
            repl.abort();
        }
        result
    }

    /// The event loop of one stream.
    async fn stream(
        &mut self,
        repl: &mut ReplicationClient,
        shutdown: &CancellationToken,
    ) -> Result<(), ReplicationError> {
        let mut decoder = Decoder::new();
        let mut tick = tokio::time::interval(CONFIRM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut server_end: u64 = self.status.received.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                biased;
                // PRIORITY 1: shutdown.
                _ = shutdown.cancelled() => return Ok(()),
                // PRIORITY 2: the stream.
                ev = repl.recv() => {
                    let Some(ev) = ev.map_err(ReplicationError::Stream)? else {
                        return Err(ReplicationError::Stream(pgwire_replication::PgWireError::Io(
                            Arc::new(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "replication stream ended")),
                        )));
                    };
                    self.handle_event(&mut decoder, ev, &mut server_end);
                }
                // PRIORITY 3: confirm.
                _ = tick.tick() => self.confirm(repl, server_end),
            }
        }
    }

    /// Handles one transport event.
    fn handle_event(&mut self, decoder: &mut Decoder, ev: ReplicationEvent, server_end: &mut u64) {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.open_commit = Some(final_lsn.0);
                decoder.begin(Lsn(final_lsn.0), xid, commit_time_micros)
            }
            ReplicationEvent::XLogData { wal_end, data, .. } => {
                *server_end = (*server_end).max(wal_end.0);
                match decoder.decode(&data) {
                    Ok(Decoded::Change(c)) => self.publish(c),
                    Ok(Decoded::Changes(cs)) => cs.into_iter().for_each(|c| self.publish(c)),
                    Ok(_) => {}
                    Err(e) => {
                        self.metrics.decode_errors.add(e.code(), 1);
                        tracing::error!(error = %e, lsn = %Lsn(wal_end.0), "a WAL message could not be decoded; storing it in the dead-letter queue and telling /ws clients of the gap");
                        self.dead_letter(&data, wal_end.0, &e);
                        let gap = decoder.gap(&e, Lsn(wal_end.0), chrono::Utc::now());
                        self.publish(gap);
                    }
                }
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                *server_end = (*server_end).max(end_lsn.0);
                self.open_commit = None;
                if let Err(e) = decoder.commit(Lsn(lsn.0), Lsn(end_lsn.0), commit_time_micros) {
                    self.metrics.decode_errors.add(e.code(), 1);
                    tracing::error!(error = %e, "commit without a transaction");
                }
                self.metrics.replication_transactions.inc();
                if let Some(w) = self.window.as_mut() {
                    w.committed(lsn.0, end_lsn.0, Instant::now());
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                *server_end = (*server_end).max(wal_end.0);
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => self.relay(transactional, lsn.0, &prefix, content.to_vec()),
            ReplicationEvent::StoppedAt { .. } => {}
        }
        self.status.received.store(*server_end, Ordering::Relaxed);
        self.metrics
            .replication_received_lsn
            .set(*server_end as i64);
    }

    /// Hands an undecodable message to the dead-letter task (never waits).
    fn dead_letter(&self, data: &[u8], lsn: u64, e: &crate::decode::DecodeError) {
        let Some(tx) = &self.config.dead_letters else {
            return;
        };
        let shown = &data[..data.len().min(4096)];
        let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
        let payload = serde_json::json!({
            "lsn": Lsn(lsn).to_string(),
            "slot": self.config.slot,
            "message_bytes": data.len(),
            "message_hex": hex,
        });
        let letter = crate::dlq::DeadLetter::deliver(
            self.config.node.clone(),
            payload,
            format!("decode_{}", e.code()),
            e.to_string(),
        );
        if tx.try_send(letter).is_err() {
            tracing::error!(
                "dead-letter queue for WAL messages is full; the message is only logged"
            );
        }
    }

    /// Hands one change to the hub, or a row of the routed message table to its queue.
    fn publish(&self, change: crate::decode::Change) {
        if let Some(route) = &self.config.messages
            && route.owns(&change)
        {
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(c)) = route.tx.try_send(change)
            {
                self.metrics.db_broadcasts_dropped.inc();
                tracing::warn!(lsn = %c.cursor.commit_lsn, "the queue of broadcasts from the database is full; a message is not delivered");
            }
            return;
        }
        self.metrics.replication_changes.inc();
        self.hub.publish(change);
    }

    /// Hands a logical decoding message of the relay route's prefix to its queue (never
    /// waits). Non-transactional messages have no commit position to keep them in order with
    /// the others, so walcast never writes them and skips them here.
    fn relay(&mut self, transactional: bool, lsn: u64, prefix: &str, content: Vec<u8>) {
        let Some(route) = &self.config.relay else {
            return;
        };
        if prefix != route.prefix {
            return;
        }
        let Some(commit) = self.open_commit.filter(|_| transactional) else {
            tracing::debug!(lsn = %Lsn(lsn), "a non-transactional message with walcast's relay prefix was skipped");
            return;
        };
        let at = (commit, lsn);
        if at <= self.relayed_through {
            return;
        }
        self.relayed_through = at;
        let msg = WalMessage {
            commit_lsn: Lsn(commit),
            lsn: Lsn(lsn),
            content,
        };
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(m)) = route.tx.try_send(msg) {
            self.metrics
                .cluster_broadcasts_dropped
                .add("receive_queue", 1);
            tracing::warn!(lsn = %m.lsn, "the queue of broadcasts from other nodes is full; a batch is not delivered");
        }
    }

    /// Recomputes and sends the confirmed position.
    fn confirm(&mut self, repl: &ReplicationClient, server_end: u64) {
        let Some(w) = self.window.as_mut() else {
            return;
        };
        let target = w.confirm_target(server_end, Instant::now());
        repl.update_applied_lsn(PgLsn(target));
        self.status.confirmed.store(target, Ordering::Relaxed);
        self.status
            .expired_through
            .store(w.expired_through(), Ordering::Relaxed);
        self.edge.send_if_modified(|e| {
            let now = (w.expired_through(), target);
            let changed = *e != now;
            *e = now;
            changed
        });
        self.metrics.replication_confirmed_lsn.set(target as i64);
        self.metrics
            .slot_lag_bytes
            .set(server_end.saturating_sub(target) as i64);
    }
}
