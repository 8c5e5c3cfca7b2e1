//! Where a batch goes: Postgres first; on transient failure retry with backoff; with the circuit
//! breaker open (or the spool not yet drained) the durable spool; events Postgres rejects as
//! such (constraint violations, invalid values) to the dead-letter queue, never a retry loop.
//!
//! The replayer ([`Writer::run_replayer`]) drains the spool in order once the database takes
//! writes again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::breaker::{Breaker, BreakerState};
use super::error::{IngestError, IngestErrorCode};
use super::request::{Durability, Request};
use super::spool::{Spool, SpoolError};
use crate::events::{self, EventRecord};
use crate::metrics::Metrics;

/// How a database write failed.
#[derive(Debug)]
enum WriteFailure {
    /// The database is unreachable or failing; another try may work.
    Transient(String),
    /// Postgres rejects the rows themselves; retrying cannot help.
    Definite {
        /// SQLSTATE.
        sqlstate: String,
        /// Constraint name, if any.
        constraint: Option<String>,
        /// Server message (for operators: logs and the dead-letter row, never HTTP).
        message: String,
    },
}

/// Hands rejected events to the dead-letter queue. Implemented by the DLQ module.
pub trait DeadLetterSink: Send + Sync {
    /// Stores `events` with the error; returns an id for the response.
    fn push<'a>(
        &'a self,
        events: &'a [&'a EventRecord],
        error_code: &'a str,
        error_message: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<i64, String>>;
}

/// Retry and spool settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Attempts per write for transient errors (1 = no retry).
    pub attempts: u32,
    /// First retry delay (doubles, with jitter).
    pub retry_base: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            attempts: 3,
            retry_base: Duration::from_millis(50),
        }
    }
}

/// The resilient write path, shared by the batcher's writers and the replayer.
pub struct Writer {
    /// Connections.
    pool: Pool,
    /// Metrics.
    metrics: Arc<Metrics>,
    /// Breaker.
    pub breaker: Arc<Breaker>,
    /// Spool.
    pub spool: Arc<Spool>,
    /// Retry settings.
    config: WriterConfig,
    /// Dead-letter sink (None: rejected events fail the request with `rejected`).
    dead_letters: Option<Arc<dyn DeadLetterSink>>,
    /// Wakes the replayer after an append.
    spooled: tokio::sync::Notify,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("config", &self.config)
            .finish()
    }
}

impl Writer {
    /// A writer.
    pub fn new(
        pool: Pool,
        metrics: Arc<Metrics>,
        breaker: Arc<Breaker>,
        spool: Arc<Spool>,
        config: WriterConfig,
        dead_letters: Option<Arc<dyn DeadLetterSink>>,
    ) -> Self {
        metrics.spool_bytes.set(spool.len() as i64);
        Writer {
            pool,
            metrics,
            breaker,
            spool,
            config,
            dead_letters,
            spooled: tokio::sync::Notify::new(),
        }
    }

    /// Breaker state (for `/readyz` and metrics).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Writes one batch of requests and answers each producer.
    pub async fn write_batch(&self, batch: Vec<Request>) {
        let rows: Vec<&EventRecord> = batch.iter().flat_map(|r| r.events.iter()).collect();
        let outcome = self.write_rows(&rows).await;
        drop(rows);
        match outcome {
            Ok(d) => {
                for r in batch {
                    self.answer(r, Ok(d));
                }
            }
            Err(WriteFailure::Definite { .. }) if batch.len() > 1 => {
                // One request's events poison the shared statement: write each request alone.
                for r in batch {
                    let rows: Vec<&EventRecord> = r.events.iter().collect();
                    let res = match self.write_rows(&rows).await {
                        Ok(d) => Ok(d),
                        Err(f) => self.dead_letter(&rows, f).await,
                    };
                    drop(rows);
                    self.answer(r, res);
                }
            }
            Err(f) => {
                let first = batch.first().map(|r| r.events.iter().collect::<Vec<_>>());
                let res = match first {
                    Some(rows) => self.dead_letter(&rows, f).await,
                    None => Ok(Durability::Database),
                };
                for r in batch {
                    self.answer(r, res.clone());
                }
            }
        }
    }

    /// Counts and sends one answer.
    fn answer(&self, r: Request, res: Result<Durability, IngestError>) {
        if let Ok(d) = &res {
            let n = r.events.len() as u64;
            match d {
                Durability::Database => self.metrics.events_accepted.add(n),
                Durability::Spool => self.metrics.events_spooled.add(n),
                Durability::DeadLetter => self.metrics.events_dead_lettered.add(n),
            }
        }
        let _ = r.reply.send(res);
    }

    /// Database, or spool; a definite failure is returned for the caller to dead-letter.
    async fn write_rows(&self, rows: &[&EventRecord]) -> Result<Durability, WriteFailure> {
        if self.spool.is_empty() && self.breaker.allow() {
            match self.insert_with_retry(rows).await {
                Ok(()) => return Ok(Durability::Database),
                Err(f @ WriteFailure::Definite { .. }) => return Err(f),
                Err(WriteFailure::Transient(e)) => {
                    tracing::warn!(error = %e, events = rows.len(), "database write failed; spooling the batch");
                }
            }
        }
        self.append_to_spool(rows).await.map_err(|e| match e {
            SpoolError::Full { .. } => WriteFailure::Transient("spool full".into()),
            other => WriteFailure::Transient(other.to_string()),
        })?;
        Ok(Durability::Spool)
    }

    /// Appends to the spool on a blocking thread (write + fsync).
    async fn append_to_spool(&self, rows: &[&EventRecord]) -> Result<(), SpoolError> {
        let spool = Arc::clone(&self.spool);
        let owned: Vec<EventRecord> = rows.iter().map(|e| (*e).clone()).collect();
        let res = tokio::task::spawn_blocking(move || {
            let refs: Vec<&EventRecord> = owned.iter().collect();
            spool.append(&refs)
        })
        .await
        .unwrap_or_else(|e| {
            Err(SpoolError::Io {
                path: self.spool.path().to_owned(),
                source: std::io::Error::other(e.to_string()),
            })
        });
        if res.is_ok() {
            self.metrics.spool_bytes.set(self.spool.len() as i64);
            self.spooled.notify_one();
        }
        res
    }

    /// Sends a definite failure to the dead-letter queue (or fails the request without one).
    async fn dead_letter(
        &self,
        rows: &[&EventRecord],
        failure: WriteFailure,
    ) -> Result<Durability, IngestError> {
        match failure {
            WriteFailure::Transient(_) => Err(IngestError::new(
                IngestErrorCode::SpoolFull,
                "the database is unavailable and the local spool is full; nothing of this request was written, retry after a while",
            )),
            WriteFailure::Definite {
                sqlstate,
                constraint,
                message,
            } => {
                let detail = constraint
                    .as_ref()
                    .map(|c| format!(" (constraint {c})"))
                    .unwrap_or_default();
                if let Some(sink) = &self.dead_letters {
                    let code = format!("sqlstate_{sqlstate}");
                    match sink.push(rows, &code, &message).await {
                        Ok(_) => return Ok(Durability::DeadLetter),
                        Err(e) => {
                            tracing::error!(error = %e, "could not store rejected events in the dead-letter queue")
                        }
                    }
                }
                Err(IngestError::new(
                    IngestErrorCode::Rejected,
                    format!(
                        "postgres rejected the events{detail}; nothing of this request was written"
                    ),
                ))
            }
        }
    }

    /// One insert, retried with backoff and jitter on transient errors; feeds the breaker.
    async fn insert_with_retry(&self, rows: &[&EventRecord]) -> Result<(), WriteFailure> {
        let mut delay = self.config.retry_base;
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            match self.insert_once(rows).await {
                Ok(()) => {
                    self.breaker.on_success();
                    self.metrics.ingest_batch_events.observe(rows.len() as f64);
                    self.metrics
                        .ingest_flush_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(f @ WriteFailure::Definite { .. }) => {
                    // The database answered: it is healthy.
                    self.breaker.on_success();
                    self.metrics.ingest_flush_errors.inc();
                    return Err(f);
                }
                Err(WriteFailure::Transient(e)) => {
                    self.metrics.ingest_flush_errors.inc();
                    self.breaker.on_failure();
                    if attempt >= self.config.attempts || !self.breaker.allow() {
                        return Err(WriteFailure::Transient(e));
                    }
                    self.metrics.ingest_retries.inc();
                    tokio::time::sleep(delay.mul_f64(rand::random_range(0.5..1.5))).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// One insert statement.
    async fn insert_once(&self, rows: &[&EventRecord]) -> Result<(), WriteFailure> {
        let client = tokio::time::timeout(Duration::from_secs(5), self.pool.get())
            .await
            .map_err(|_| WriteFailure::Transient("timed out waiting for a connection".into()))?
            .map_err(|e| WriteFailure::Transient(crate::error::error_chain(&e)))?;
        match events::insert_batch(&client, rows).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let definite = e
                    .code()
                    .map(|c| {
                        let c = c.code();
                        // Class 22 (data exception) and 23 (integrity constraint violation).
                        c.starts_with("22") || c.starts_with("23")
                    })
                    .unwrap_or(false);
                if definite {
                    let db = e.as_db_error();
                    tracing::warn!(error = %e, events = rows.len(), "postgres rejected a batch");
                    Err(WriteFailure::Definite {
                        sqlstate: e.code().map(|c| c.code().to_owned()).unwrap_or_default(),
                        constraint: db.and_then(|d| d.constraint()).map(str::to_owned),
                        message: db
                            .map(|d| d.message().to_owned())
                            .unwrap_or_else(|| e.to_string()),
                    })
                } else {
                    Err(WriteFailure::Transient(crate::error::error_chain(&e)))
                }
            }
        }
    }

    /// Drains the spool into the table, in order, whenever the database takes writes.
    /// On shutdown it makes one last attempt, bounded by the caller's timeout.
    pub async fn run_replayer(self: Arc<Self>, shutdown: CancellationToken) {
        let mut offset = 0u64;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = self.replay_pass(&mut offset).await;
                    return;
                }
                _ = self.spooled.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if !self.spool.is_empty() {
                let _ = self.replay_pass(&mut offset).await;
            }
        }
    }

    /// Replays from `offset` to the end; truncates when caught up. Returns true when empty.
    async fn replay_pass(&self, offset: &mut u64) -> bool {
        if self.spool.is_empty() {
            *offset = 0;
            return true;
        }
        if !self.breaker.allow() {
            return false;
        }
        let started = Instant::now();
        loop {
            let spool = Arc::clone(&self.spool);
            let at = *offset;
            let rec = match tokio::task::spawn_blocking(move || spool.read_at(at)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the spool");
                    return false;
                }
                Err(_) => return false,
            };
            let Some(rec) = rec else {
                let spool = Arc::clone(&self.spool);
                let at = *offset;
                match tokio::task::spawn_blocking(move || spool.truncate_if_caught_up(at)).await {
                    Ok(Ok(true)) => {
                        *offset = 0;
                        self.metrics.spool_bytes.set(0);
                        tracing::info!(
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "spool replayed into the database and emptied"
                        );
                        return true;
                    }
                    Ok(Ok(false)) => continue,
                    _ => return false,
                }
            };
            let rows: Vec<&EventRecord> = rec.events.iter().collect();
            match self.insert_with_retry(&rows).await {
                Ok(()) => {
                    self.metrics.spool_replayed.add(rows.len() as u64);
                    *offset = rec.end;
                }
                Err(WriteFailure::Definite {
                    sqlstate, message, ..
                }) => {
                    if let Some(sink) = &self.dead_letters {
                        let code = format!("sqlstate_{sqlstate}");
                        if let Err(e) = sink.push(&rows, &code, &message).await {
                            tracing::error!(error = %e, "could not dead-letter a spooled batch; will retry");
                            return false;
                        }
                    } else {
                        tracing::error!(sqlstate = %sqlstate, events = rows.len(), "postgres rejects a spooled batch and no dead-letter queue is configured; dropping it from the spool");
                    }
                    *offset = rec.end;
                }
                Err(WriteFailure::Transient(e)) => {
                    tracing::warn!(error = %e, "spool replay paused: database unavailable");
                    return false;
                }
            }
        }
    }
}
