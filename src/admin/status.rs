//! `GET /v1/status`: one JSON document with the node's state, for dashboards and operators.
//!
//! It needs a `service_role` token (when a JWT secret is configured): the document holds
//! counts, positions, settings, client addresses and subscription filters (never row data or
//! tokens), which are the operator's business. The dead-letter summary needs a query; it is
//! cached and refreshed at most every [`DLQ_REFRESH`].

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::NodeView;
use super::clients::ClientSnapshot;
use crate::endpoint::Endpoint;
use crate::validate::ConsistencySnapshot;

/// Longest time a cached dead-letter summary is served.
pub const DLQ_REFRESH: Duration = Duration::from_secs(5);
/// How long one dead-letter summary query may take.
const DLQ_TIMEOUT: Duration = Duration::from_secs(2);
/// Most sessions listed in the document (counts are always complete).
pub const MAX_LISTED_SESSIONS: usize = 1000;

/// Process facts and caches behind `/v1/status`.
#[derive(Debug)]
pub struct StatusState {
    /// When the server started.
    pub started_at: DateTime<Utc>,
    /// The same, monotonic.
    started: Instant,
    /// The cached dead-letter summary.
    dlq: tokio::sync::Mutex<Option<CachedDlq>>,
}

/// A dead-letter summary and when it was read.
#[derive(Debug, Clone)]
struct CachedDlq {
    /// When it was read.
    at: Instant,
    /// The same, for people.
    read_at: DateTime<Utc>,
    /// The summary; `None` when the query failed.
    stats: Option<crate::dlq::Stats>,
}

impl Default for StatusState {
    fn default() -> Self {
        StatusState {
            started_at: Utc::now(),
            started: Instant::now(),
            dlq: tokio::sync::Mutex::new(None),
        }
    }
}

impl StatusState {
    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The dead-letter summary, at most [`DLQ_REFRESH`] old; `None` when it cannot be read.
    pub async fn dlq(&self, pool: &deadpool_postgres::Pool) -> Option<DlqDoc> {
        let mut cached = self.dlq.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|c| c.at.elapsed() < DLQ_REFRESH);
        if !fresh {
            let stats = tokio::time::timeout(DLQ_TIMEOUT, async {
                let client = pool.get().await.ok()?;
                crate::dlq::stats(&client).await.ok()
            })
            .await
            .ok()
            .flatten();
            *cached = Some(CachedDlq {
                at: Instant::now(),
                read_at: Utc::now(),
                stats,
            });
        }
        let c = cached.as_ref()?;
        c.stats.clone().map(|stats| DlqDoc {
            stats,
            read_at: c.read_at,
        })
    }
}

/// The dead-letter summary in the document.
#[derive(Debug, Clone, Serialize)]
pub struct DlqDoc {
    /// Counts by status and the queue's age.
    #[serde(flatten)]
    pub stats: crate::dlq::Stats,
    /// When it was read (cached up to [`DLQ_REFRESH`]).
    pub read_at: DateTime<Utc>,
}

/// The broadcaster mode.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcasterDoc {
    /// `direct`, `realtime` or `dual`.
    pub mode: &'static str,
    /// The rule that decided it (`env`, `rollout`, `unknown`, ...).
    pub source: &'static str,
}

/// Connected clients.
#[derive(Debug, Clone, Serialize)]
pub struct ClientsDoc {
    /// All sessions.
    pub total: usize,
    /// Sessions on `/ws`.
    pub ws: usize,
    /// Sessions on the Realtime endpoint.
    pub realtime: usize,
    /// The sessions, oldest first (at most [`MAX_LISTED_SESSIONS`]).
    pub sessions: Vec<ClientSnapshot>,
    /// More sessions exist than are listed.
    pub truncated: bool,
}

/// The replication stream.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationDoc {
    /// The stream is up.
    pub streaming: bool,
    /// The slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// Last WAL position received.
    pub received_lsn: String,
    /// WAL position confirmed to Postgres.
    pub confirmed_lsn: String,
    /// WAL bytes the slot retains behind the server's position (last measured).
    pub slot_lag_bytes: i64,
    /// Row changes decoded since start.
    pub changes: u64,
    /// Transactions decoded since start.
    pub transactions: u64,
    /// Reconnects since start.
    pub reconnects: u64,
    /// The newest cursor handed to the hub.
    pub last_cursor: Option<String>,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// The write path.
#[derive(Debug, Clone, Serialize)]
pub struct IngestDoc {
    /// Events committed to the table.
    pub accepted: u64,
    /// Events fsynced to the spool.
    pub spooled: u64,
    /// Events stored in the dead-letter queue.
    pub dead_lettered: u64,
    /// Events replayed from the spool into the table.
    pub spool_replayed: u64,
    /// Circuit breaker: `closed`, `half_open` or `open`.
    pub breaker: &'static str,
    /// Bytes waiting in the spool.
    pub spool_bytes: u64,
}

/// Deliveries to clients.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDoc {
    /// Change frames written to clients.
    pub delivered: u64,
    /// Clients closed because they fell behind.
    pub lagged: u64,
    /// Changes replayed to resuming clients.
    pub replayed: u64,
    /// Change frames encoded (once per change and format).
    pub encoded: u64,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusDoc {
    /// Node name.
    pub node: String,
    /// walcast's version.
    pub version: &'static str,
    /// When the server started.
    pub started_at: DateTime<Utc>,
    /// Seconds since then.
    pub uptime_secs: f64,
    /// The broadcaster mode.
    pub broadcaster: BroadcasterDoc,
    /// Connected clients.
    pub clients: ClientsDoc,
    /// The replication stream.
    pub replication: ReplicationDoc,
    /// The write path.
    pub ingest: IngestDoc,
    /// Deliveries.
    pub delivery: DeliveryDoc,
    /// The continuous consistency check.
    pub consistency: ConsistencySnapshot,
    /// The dead-letter queue (`null` when the database cannot be read).
    pub dlq: Option<DlqDoc>,
}

/// Builds the document.
pub async fn status(state: &NodeView) -> StatusDoc {
    let m = &state.metrics;
    let counts = state.clients.counts();
    let total = state.clients.len();
    let sessions = state.clients.snapshot(MAX_LISTED_SESSIONS);
    let mode = state.flags.mode();
    let dlq = state.status.dlq(&state.pool).await;
    StatusDoc {
        node: state.config.node.clone(),
        version: env!("CARGO_PKG_VERSION"),
        started_at: state.status.started_at,
        uptime_secs: state.status.uptime().as_secs_f64(),
        broadcaster: BroadcasterDoc {
            mode: mode.mode.as_str(),
            source: mode.evaluation.source.as_str(),
        },
        clients: ClientsDoc {
            total,
            ws: counts.get(&Endpoint::Ws).copied().unwrap_or(0),
            realtime: counts.get(&Endpoint::Realtime).copied().unwrap_or(0),
            truncated: sessions.len() < total,
            sessions,
        },
        replication: ReplicationDoc {
            streaming: state.reader.is_streaming(),
            slot: state.config.slot.clone(),
            publication: state.config.publication.clone(),
            received_lsn: state.reader.received().to_string(),
            confirmed_lsn: state.reader.confirmed().to_string(),
            slot_lag_bytes: m.slot_lag_bytes.get(),
            changes: m.replication_changes.get(),
            transactions: m.replication_transactions.get(),
            reconnects: m.replication_reconnects.get(),
            last_cursor: state.hub.last_published().map(|c| c.encode()),
            last_error: state.reader.last_error(),
        },
        ingest: IngestDoc {
            accepted: m.events_accepted.get(),
            spooled: m.events_spooled.get(),
            dead_lettered: m.events_dead_lettered.get(),
            spool_replayed: m.spool_replayed.get(),
            breaker: state.writer.breaker_state().as_str(),
            spool_bytes: state.writer.spool.len(),
        },
        delivery: DeliveryDoc {
            delivered: m.deliveries.get(),
            lagged: m.clients_lagged.get(),
            replayed: m.replayed_changes.get(),
            encoded: m.frames_encoded.get(),
        },
        consistency: state.consistency.snapshot(),
        dlq,
    }
}

/// The `/v1/status` route.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    std::sync::Arc<NodeView>: axum::extract::FromRef<S>,
    crate::auth::Auth: axum::extract::FromRef<S>,
{
    Router::new().route("/v1/status", get(status_handler))
}

/// `GET /v1/status`.
async fn status_handler(
    State(state): State<std::sync::Arc<NodeView>>,
    _role: crate::auth::ServiceRole,
) -> Response {
    let doc = status(&state).await;
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(doc),
    )
        .into_response()
}
