//! The retry worker: one per deployment, elected with a Postgres advisory lock.
//!
//! Every walcast node starts the worker; each takes a connection out of the pool for itself and
//! tries `pg_try_advisory_lock(RETRY_LOCK_KEY)` on it. The node that gets the lock retries dead
//! letters; the others try again every `lock_retry`. The lock belongs to the connection's
//! session, so a node that dies or loses its connection releases it and another node takes over.
//!
//! The holder claims due rows in batches (`walcast.dlq_claim`, `for update skip locked`), redoes
//! each row's operation, and marks it recovered or failed. Only [`RETRYABLE_OPERATIONS`] are
//! claimed. Between polls that found nothing it waits with exponential backoff and jitter
//! (`poll_min` doubling to `poll_max`). A row whose worker dies mid-attempt stays `retrying`
//! until its lease ends, then becomes claimable again; attempts are idempotent (events are
//! inserted with `on conflict (id) do nothing`), so a repeated attempt never duplicates a row.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{ClientWrapper, Object, Pool};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::error::is_transient_state;
use super::store::{claim, mark_failed, mark_recovered};
use super::{DeadLetterRow, DlqError, Status};
use crate::events::{self, EventRecord};

/// The advisory lock key of the retry worker (the bytes of `walcdlq1`). Advisory locks are per
/// database, so deployments on different databases never compete.
pub const RETRY_LOCK_KEY: i64 = 0x7761_6c63_646c_7131;

/// The operations the worker knows how to redo.
pub const RETRYABLE_OPERATIONS: &[&str] = &["ingest"];

/// Try the advisory lock.
const TRY_LOCK_SQL: &str = include_str!("../../sql/dlq/try_lock.sql");
/// Release the advisory lock.
const UNLOCK_SQL: &str = include_str!("../../sql/dlq/unlock.sql");

/// Settings of the retry worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryWorkerConfig {
    /// Name recorded in `claimed_by` (the node name).
    pub worker: String,
    /// Rows claimed per poll.
    pub batch_size: u32,
    /// Wait after a poll that found work, and the first wait after one that found none.
    pub poll_min: Duration,
    /// Longest wait between polls that find nothing.
    pub poll_max: Duration,
    /// How often a node without the lock tries to take it.
    pub lock_retry: Duration,
    /// How long a claimed row belongs to this worker before others may claim it again.
    pub lease: Duration,
}

impl RetryWorkerConfig {
    /// Defaults for node `node`: batches of 100, polls every 1 s backing off to 30 s, lock
    /// retries every 10 s, 5-minute leases.
    pub fn new(node: &str) -> RetryWorkerConfig {
        RetryWorkerConfig {
            worker: node.to_owned(),
            batch_size: 100,
            poll_min: Duration::from_secs(1),
            poll_max: Duration::from_secs(30),
            lock_retry: Duration::from_secs(10),
            lease: Duration::from_secs(300),
        }
    }
}

/// What the worker has done, readable while it runs (metrics, tests, readiness).
#[derive(Debug, Default)]
pub struct RetryWorkerStatus {
    /// True while this node holds the lock.
    holds_lock: AtomicBool,
    /// Polls run.
    passes: AtomicU64,
    /// Rows recovered.
    recovered: AtomicU64,
    /// Attempts that failed.
    failed_attempts: AtomicU64,
    /// Polls that failed (database errors).
    errors: AtomicU64,
}

impl RetryWorkerStatus {
    /// True while this node's worker holds the lock and retries rows.
    pub fn holds_lock(&self) -> bool {
        self.holds_lock.load(Ordering::Relaxed)
    }

    /// Polls run so far.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    /// Rows recovered so far.
    pub fn recovered(&self) -> u64 {
        self.recovered.load(Ordering::Relaxed)
    }

    /// Attempts that failed so far.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }

    /// Polls that failed with a database error so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// The rows one pass claimed, in their state after the attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassReport {
    /// Each claimed row after its attempt.
    pub rows: Vec<DeadLetterRow>,
}

impl PassReport {
    /// Rows claimed.
    pub fn claimed(&self) -> usize {
        self.rows.len()
    }

    /// Rows recovered.
    pub fn recovered(&self) -> usize {
        self.count(Status::Recovered)
    }

    /// Rows whose attempt failed (pending again, or failed for good).
    pub fn failed(&self) -> usize {
        self.claimed() - self.recovered()
    }

    /// Rows in `status`.
    fn count(&self, status: Status) -> usize {
        self.rows.iter().filter(|r| r.status == status).count()
    }
}

/// Starts the retry worker; it runs until `shutdown` is cancelled, then releases the lock.
pub fn spawn_retry_worker(
    pool: Pool,
    config: RetryWorkerConfig,
    status: Arc<RetryWorkerStatus>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(pool, config, status, shutdown))
}

/// Why the worker left a connection.
enum Exit {
    /// Shutdown.
    Stop,
    /// The connection failed; take a new one.
    Lost,
}

/// The worker task: take a connection, take the lock, retry rows; start over when the
/// connection fails.
async fn run(
    pool: Pool,
    config: RetryWorkerConfig,
    status: Arc<RetryWorkerStatus>,
    shutdown: CancellationToken,
) {
    loop {
        let got = tokio::select! {
            biased;
            // PRIORITY 1: shutdown.
            _ = shutdown.cancelled() => return,
            // PRIORITY 2: a connection of our own.
            r = pool.get() => r,
        };
        match got {
            Ok(obj) => {
                // Out of the pool for good: the lock lives and dies with this session.
                let client = Object::take(obj);
                match lead(&client, &config, &status, &shutdown).await {
                    Exit::Stop => return,
                    Exit::Lost => status.holds_lock.store(false, Ordering::Relaxed),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "dlq retry worker has no database connection");
            }
        }
        if !sleep_or_cancel(jitter(config.lock_retry), &shutdown).await {
            return;
        }
    }
}

/// On one connection: wait for the lock, then retry rows until shutdown or a failure.
async fn lead(
    client: &ClientWrapper,
    config: &RetryWorkerConfig,
    status: &RetryWorkerStatus,
    shutdown: &CancellationToken,
) -> Exit {
    loop {
        let locked = tokio::select! {
            biased;
            // PRIORITY 1: shutdown.
            _ = shutdown.cancelled() => return Exit::Stop,
            // PRIORITY 2: the lock.
            r = client.query_one(TRY_LOCK_SQL, &[&RETRY_LOCK_KEY]) => r,
        };
        match locked.map(|r| r.try_get::<_, bool>(0)) {
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "dlq retry worker could not try the lock");
                return Exit::Lost;
            }
        }
        if !sleep_or_cancel(jitter(config.lock_retry), shutdown).await {
            return Exit::Stop;
        }
    }
    status.holds_lock.store(true, Ordering::Relaxed);
    tracing::info!(worker = %config.worker, "dlq retry worker holds the lock; retrying dead letters here");
    let mut wait = config.poll_min;
    loop {
        // A pass runs to its end: claimed rows never wait for their lease to expire.
        if shutdown.is_cancelled() {
            release(client, status).await;
            return Exit::Stop;
        }
        status.passes.fetch_add(1, Ordering::Relaxed);
        let pass = run_pass(
            client,
            &config.worker,
            config.batch_size,
            None,
            config.lease,
        )
        .await;
        match pass {
            Ok(report) => {
                status
                    .recovered
                    .fetch_add(report.recovered() as u64, Ordering::Relaxed);
                status
                    .failed_attempts
                    .fetch_add(report.failed() as u64, Ordering::Relaxed);
                if report.claimed() > 0 {
                    tracing::info!(
                        claimed = report.claimed(),
                        recovered = report.recovered(),
                        failed = report.failed(),
                        "dlq retry pass"
                    );
                }
                if report.claimed() >= config.batch_size as usize {
                    // A full batch: more is probably due.
                    wait = config.poll_min;
                    continue;
                }
                wait = if report.claimed() > 0 {
                    config.poll_min
                } else {
                    (wait * 2).min(config.poll_max)
                };
            }
            Err(e) => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, kind = e.kind().as_str(), "dlq retry pass failed");
                if e.is_transient() || client.is_closed() {
                    status.holds_lock.store(false, Ordering::Relaxed);
                    return Exit::Lost;
                }
                wait = (wait * 2).min(config.poll_max);
            }
        }
        if !sleep_or_cancel(jitter(wait), shutdown).await {
            release(client, status).await;
            return Exit::Stop;
        }
    }
}

/// Releases the lock (the session ending would too; this is for a prompt hand-over).
async fn release(client: &ClientWrapper, status: &RetryWorkerStatus) {
    let unlock = client.query_one(UNLOCK_SQL, &[&RETRY_LOCK_KEY]);
    match tokio::time::timeout(Duration::from_secs(2), unlock).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "dlq retry worker could not release the lock"),
        Err(_) => tracing::debug!("dlq retry worker timed out releasing the lock"),
    }
    status.holds_lock.store(false, Ordering::Relaxed);
    tracing::info!("dlq retry worker released the lock");
}

/// Claims up to `batch` due rows of [`RETRYABLE_OPERATIONS`] (only `only_id` when given) and
/// retries each once. Used by the worker and by `walcast dlq retry --now`. A database error
/// while recording an attempt ends the pass; claimed rows left behind become claimable again
/// when their lease ends.
pub async fn run_pass(
    client: &ClientWrapper,
    worker: &str,
    batch: u32,
    only_id: Option<i64>,
    lease: Duration,
) -> Result<PassReport, DlqError> {
    let rows = claim(
        client,
        batch,
        worker,
        Some(RETRYABLE_OPERATIONS),
        only_id,
        lease,
    )
    .await?;
    let mut report = PassReport {
        rows: Vec::with_capacity(rows.len()),
    };
    for row in rows {
        report.rows.push(retry_row(client, &row).await?);
    }
    Ok(report)
}

/// Redoes the operation of one claimed (`retrying`) row and records the outcome; returns the
/// row after. Errs only when the outcome could not be recorded.
pub async fn retry_row(
    client: &ClientWrapper,
    row: &DeadLetterRow,
) -> Result<DeadLetterRow, DlqError> {
    if row.operation != "ingest" {
        return mark_failed(
            client,
            row.id,
            "unsupported_operation",
            &format!("walcast cannot retry operation {:?}", row.operation),
            Some("inspect the payload and handle it by hand, then purge the row"),
            true,
        )
        .await;
    }
    let events = match ingest_events(&row.payload) {
        Ok(ev) => ev,
        Err(message) => {
            return mark_failed(
                client,
                row.id,
                "invalid_payload",
                &message,
                Some("the payload is not a JSON array of events in the event model; it cannot be retried"),
                true,
            )
            .await;
        }
    };
    let refs: Vec<&EventRecord> = events.iter().collect();
    match events::insert_batch(client, &refs).await {
        Ok(inserted) => {
            tracing::info!(
                id = row.id,
                events = refs.len(),
                inserted,
                "dead letter recovered"
            );
            mark_recovered(client, row.id).await
        }
        Err(e) => {
            let Some(db) = e.as_db_error() else {
                return Err(DlqError::Unavailable(e));
            };
            tracing::warn!(id = row.id, error = %e, "dead letter retry failed");
            let state = db.code().code();
            if is_transient_state(state) {
                return mark_failed(
                    client,
                    row.id,
                    "database_unavailable",
                    "the database failed to write the events; walcast retries later",
                    None,
                    false,
                )
                .await;
            }
            let constraint = db
                .constraint()
                .map(|c| format!(" (constraint {c})"))
                .unwrap_or_default();
            mark_failed(
                client,
                row.id,
                state,
                &format!("{}{constraint}", db.message()),
                Some(&format!(
                    "Postgres rejected the events (SQLSTATE {state}); fix the data or the constraint, \
                     then `walcast dlq retry {} --now`",
                    row.id
                )),
                false,
            )
            .await
        }
    }
}

/// One event as stored in an `ingest` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEvent {
    /// Event id (required: it makes the retry idempotent).
    id: Uuid,
    /// Event type.
    event_type: String,
    /// When it happened (RFC 3339).
    timestamp: DateTime<Utc>,
    /// Who produced it.
    source: String,
    /// Payload object.
    #[serde(default)]
    data: Map<String, Value>,
    /// Metadata object.
    #[serde(default)]
    metadata: Map<String, Value>,
}

/// The events of an `ingest` payload: a JSON array of events (or one event object).
fn ingest_events(payload: &Value) -> Result<Vec<EventRecord>, String> {
    let items: Vec<Value> = match payload {
        Value::Array(a) => a.clone(),
        Value::Object(_) => vec![payload.clone()],
        _ => return Err("the payload is neither an array of events nor an event".to_owned()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value::<StoredEvent>(v)
                .map(|e| EventRecord {
                    id: e.id,
                    event_type: e.event_type,
                    timestamp: e.timestamp,
                    source: e.source,
                    data: e.data,
                    metadata: e.metadata,
                })
                .map_err(|e| format!("event {i} of the payload is invalid: {e}"))
        })
        .collect()
}

/// `d` scaled by a random factor in [0.8, 1.2), so nodes do not poll in step.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.8..1.2);
    d.mul_f64(f)
}

/// Sleeps for `d`; false when `shutdown` was cancelled first.
async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_into_events() {
        let v = serde_json::json!([{
            "id": "01a2099c-fafe-729d-8e3e-10cb18edea75",
            "event_type": "cpu",
            "timestamp": "2026-11-23T18:00:00Z",
            "source": "h",
            "data": {"a": 1}
        }]);
        let ev = ingest_events(&v).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event_type, "cpu");
        assert_eq!(ev[0].data["a"], 1);
        assert!(ev[0].metadata.is_empty());
        let one = ingest_events(&v[0]).unwrap();
        assert_eq!(one, ev);

        let no_id = serde_json::json!([{"event_type": "cpu", "timestamp": "2026-11-23T18:00:00Z", "source": "h"}]);
        assert!(ingest_events(&no_id).unwrap_err().contains("event 0"));
        let extra = serde_json::json!([{
            "id": "01a2099c-fafe-729d-8e3e-10cb18edea75", "event_type": "cpu",
            "timestamp": "2026-11-23T18:00:00Z", "source": "h", "x": 1
        }]);
        assert!(ingest_events(&extra).is_err());
        assert!(ingest_events(&serde_json::json!("x")).is_err());
    }

    #[test]
    fn jitter_stays_near() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(8) && d < Duration::from_secs(12),
                "{d:?}"
            );
        }
    }

    #[test]
    fn lock_key_spells_its_name() {
        assert_eq!(&RETRY_LOCK_KEY.to_be_bytes(), b"walcdlq1");
    }
}
