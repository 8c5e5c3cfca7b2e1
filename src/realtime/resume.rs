//! Resume on the Realtime endpoint: where each channel of a client that connected with
//! `?resume_id=…` may resume, kept in `walcast.realtime_resume_positions` (the only module that
//! touches that table; statements in `sql/resume/`).
//!
//! A channel is identified as the client sees it: (resume_id, topic, private, bindings). Its
//! saved position is a WAL cursor, so it survives a walcast restart and is understood by every
//! node reading the same primary. Sessions [`Resumes::note`] positions without waiting; one
//! task per node writes what was noted once per [`FLUSH_EVERY`] in one statement and deletes
//! positions older than the retention window. The session decides *which* position is safe to
//! note (see `docs/realtime.md`, "Resuming with resume_id"): never one the client may not have
//! received, so a resume repeats changes rather than losing them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::decode::{Cursor, Lsn};
use crate::metrics::Metrics;
use crate::realtime::protocol::binding::BindingRequest;

/// Shortest resume id: long enough that one guessed by chance is unlikely to collide.
pub const RESUME_ID_MIN: usize = 8;
/// Longest resume id: a UUID, a ULID or a base64 digest fit; the id is a key column.
pub const RESUME_ID_MAX: usize = 128;
/// How often noted positions are written. A position noted and not yet written when walcast
/// dies is lost: the channel then resumes from the position written before it (more repeats,
/// nothing missed). One second keeps that cost small and the writes to one statement per second.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often positions older than the retention window are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// Positions waiting to be written, at most. A channel noted once is updated in place; beyond
/// this many distinct channels per second, new ones are refused (a join then gets no resume)
/// and updates of written ones are dropped (they resume from their older, written position).
pub const MAX_PENDING: usize = 65_536;
/// Longest wait for a position to be read or written.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// `sql/resume/load.sql`.
const LOAD_SQL: &str = include_str!("../../sql/resume/load.sql");
/// `sql/resume/save.sql`.
const SAVE_SQL: &str = include_str!("../../sql/resume/save.sql");
/// `sql/resume/expire.sql`.
const EXPIRE_SQL: &str = include_str!("../../sql/resume/expire.sql");

/// Why a `resume_id` query parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeIdError {
    /// Too short or too long.
    #[error(
        "resume_id must be {RESUME_ID_MIN} to {RESUME_ID_MAX} characters long (got {0}): use a \
         stable random id the application keeps, such as a UUID"
    )]
    Length(usize),
    /// A character outside the allowed set.
    #[error(
        "resume_id may hold only letters, digits and - _ . : ~ + / = (found {0:?}): use a \
         stable random id the application keeps, such as a UUID"
    )]
    Character(char),
}

/// Checks a `resume_id` query parameter.
pub fn parse_resume_id(raw: &str) -> Result<Arc<str>, ResumeIdError> {
    let n = raw.chars().count();
    if !(RESUME_ID_MIN..=RESUME_ID_MAX).contains(&n) {
        return Err(ResumeIdError::Length(n));
    }
    if let Some(c) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:~+/=".contains(*c)))
    {
        return Err(ResumeIdError::Character(c));
    }
    Ok(Arc::from(raw))
}

/// A channel as its client identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResumeKey {
    /// The client's `resume_id`.
    pub resume_id: Arc<str>,
    /// The full topic (`realtime:<name>`).
    pub topic: String,
    /// Private channels are separate from public ones of the same name.
    pub private: bool,
    /// The bindings' canonical text ([`bindings_text`]).
    pub bindings: String,
}

/// The bindings of a channel as one canonical text: the same bindings give the same text
/// whatever the order of keys in the client's objects (the order of bindings counts, as it
/// does for their ids).
pub fn bindings_text(requests: &[BindingRequest]) -> String {
    let one = |r: &BindingRequest| {
        Value::Array(vec![
            r.event
                .as_deref()
                .map_or(Value::Null, |e| e.to_ascii_uppercase().into()),
            r.schema.clone().map_or(Value::Null, Value::String),
            r.table.clone().map_or(Value::Null, Value::String),
            r.filter.clone().map_or(Value::Null, Value::String),
            r.select.clone().unwrap_or(Value::Null),
        ])
    };
    Value::Array(requests.iter().map(one).collect()).to_string()
}

/// A saved position and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The token subject that saved it (`sub`, or `role:<role>`).
    pub subject: String,
    /// Everything up to and including this cursor was received.
    pub cursor: Cursor,
}

/// Why a position could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// No connection from the pool.
    #[error("no database connection for resume positions")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The statement failed.
    #[error("resume positions statement failed")]
    Query(#[source] tokio_postgres::Error),
    /// The database did not answer in time.
    #[error("resume positions statement took longer than {0:?}")]
    Timeout(Duration),
    /// A stored LSN that does not parse (the column is `pg_lsn`, so this is not expected).
    #[error("stored resume position {0:?} is not an LSN")]
    BadLsn(String),
}

impl ResumeError {
    /// A low-cardinality label.
    pub fn kind(&self) -> &'static str {
        match self {
            ResumeError::Pool(_) => "pool",
            ResumeError::Query(_) => "query",
            ResumeError::Timeout(_) => "timeout",
            ResumeError::BadLsn(_) => "bad_lsn",
        }
    }
}

/// The node's resume positions: noted by sessions, written by [`Resumes::run`].
#[derive(Debug)]
pub struct Resumes {
    /// walcast's own connections.
    pool: Pool,
    /// Noted and not yet written, at most [`MAX_PENDING`].
    pending: Mutex<HashMap<ResumeKey, Saved>>,
    /// Counters.
    metrics: Arc<Metrics>,
}

impl Resumes {
    /// Positions kept through `pool`.
    pub fn new(pool: Pool, metrics: Arc<Metrics>) -> Self {
        Resumes {
            pool,
            pending: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Locks the pending positions (a poisoned lock still holds valid data).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ResumeKey, Saved>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes a channel's position, written within [`FLUSH_EVERY`]; false when it was refused
    /// because [`MAX_PENDING`] other channels are waiting.
    pub fn note(&self, key: &ResumeKey, subject: &str, cursor: Cursor) -> bool {
        let mut pending = self.lock();
        if let Some(saved) = pending.get_mut(key) {
            saved.subject.clear();
            saved.subject.push_str(subject);
            saved.cursor = cursor;
            return true;
        }
        if pending.len() >= MAX_PENDING {
            drop(pending);
            self.metrics.resume_positions_dropped.inc();
            return false;
        }
        pending.insert(
            key.clone(),
            Saved {
                subject: subject.to_owned(),
                cursor,
            },
        );
        true
    }

    /// The channel's position: one noted here and not yet written, else the stored one.
    pub async fn load(&self, key: &ResumeKey) -> Result<Option<Saved>, ResumeError> {
        if let Some(saved) = self.lock().get(key) {
            return Ok(Some(saved.clone()));
        }
        let ask = async {
            let client = self.pool.get().await.map_err(ResumeError::Pool)?;
            client
                .query_opt(
                    LOAD_SQL,
                    &[&&*key.resume_id, &key.topic, &key.private, &key.bindings],
                )
                .await
                .map_err(ResumeError::Query)
        };
        let row = tokio::time::timeout(DB_TIMEOUT, ask)
            .await
            .map_err(|_| ResumeError::Timeout(DB_TIMEOUT))??;
        let Some(row) = row else { return Ok(None) };
        let lsn: String = row.get(1);
        let index: i64 = row.get(2);
        let commit_lsn: Lsn = lsn.parse().map_err(|_| ResumeError::BadLsn(lsn.clone()))?;
        Ok(Some(Saved {
            subject: row.get(0),
            cursor: Cursor {
                commit_lsn,
                index: u32::try_from(index).unwrap_or(u32::MAX),
            },
        }))
    }

    /// Writes what was noted, in one statement. On failure the positions are noted again
    /// (unless a newer one was noted meanwhile) for the next try.
    pub async fn flush(&self) -> Result<usize, ResumeError> {
        let batch: Vec<(ResumeKey, Saved)> =
            std::mem::take(&mut *self.lock()).into_iter().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.len();
        match self.write(&batch).await {
            Ok(()) => Ok(n),
            Err(e) => {
                let mut pending = self.lock();
                for (key, saved) in batch {
                    if pending.len() >= MAX_PENDING {
                        break;
                    }
                    pending.entry(key).or_insert(saved);
                }
                Err(e)
            }
        }
    }

    /// The upsert of `batch`.
    async fn write(&self, batch: &[(ResumeKey, Saved)]) -> Result<(), ResumeError> {
        let ids: Vec<&str> = batch.iter().map(|(k, _)| &*k.resume_id).collect();
        let topics: Vec<&str> = batch.iter().map(|(k, _)| k.topic.as_str()).collect();
        let private: Vec<bool> = batch.iter().map(|(k, _)| k.private).collect();
        let bindings: Vec<&str> = batch.iter().map(|(k, _)| k.bindings.as_str()).collect();
        let subjects: Vec<&str> = batch.iter().map(|(_, s)| s.subject.as_str()).collect();
        let lsns: Vec<String> = batch
            .iter()
            .map(|(_, s)| s.cursor.commit_lsn.to_string())
            .collect();
        let indexes: Vec<i64> = batch
            .iter()
            .map(|(_, s)| i64::from(s.cursor.index))
            .collect();
        let write = async {
            let client = self.pool.get().await.map_err(ResumeError::Pool)?;
            client
                .execute(
                    SAVE_SQL,
                    &[
                        &ids, &topics, &private, &bindings, &subjects, &lsns, &indexes,
                    ],
                )
                .await
                .map_err(ResumeError::Query)
        };
        tokio::time::timeout(DB_TIMEOUT, write)
            .await
            .map_err(|_| ResumeError::Timeout(DB_TIMEOUT))??;
        Ok(())
    }

    /// Deletes positions not saved for longer than `retention`.
    async fn expire(&self, retention: Duration) -> Result<u64, ResumeError> {
        let delete = async {
            let client = self.pool.get().await.map_err(ResumeError::Pool)?;
            client
                .execute(EXPIRE_SQL, &[&retention.as_secs_f64()])
                .await
                .map_err(ResumeError::Query)
        };
        tokio::time::timeout(DB_TIMEOUT, delete)
            .await
            .map_err(|_| ResumeError::Timeout(DB_TIMEOUT))?
    }

    /// The node's writer: writes noted positions every [`FLUSH_EVERY`] and deletes positions
    /// older than `retention` every minute, until `cancel`; then writes once more (sessions have
    /// ended by then and noted where their channels stopped).
    pub async fn run(self: Arc<Self>, retention: Duration, cancel: CancellationToken) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                // PRIORITY 1: shutdown, after a last write.
                _ = cancel.cancelled() => {
                    if let Err(e) = self.flush().await {
                        tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), "resume positions not written at shutdown");
                    }
                    return;
                }
                // PRIORITY 2: noted positions.
                _ = flush.tick() => {
                    if let Err(e) = self.flush().await {
                        tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), "resume positions not written; trying again");
                    }
                }
                // PRIORITY 3: old positions.
                _ = expire.tick() => match self.expire(retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "expired resume positions deleted"),
                    Err(e) => tracing::warn!(error = %crate::error::error_chain(&e), kind = e.kind(), "old resume positions not deleted"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(v: Value) -> BindingRequest {
        BindingRequest::from_value(&v).expect("object")
    }

    #[test]
    fn resume_ids_are_checked() {
        assert!(parse_resume_id("0b6f5a52-7d4e-4c1e-9a57-3f1f0f6f2c11").is_ok());
        assert!(parse_resume_id("abc:DEF_1.2~3+4/5=").is_ok());
        assert_eq!(parse_resume_id("short"), Err(ResumeIdError::Length(5)));
        assert_eq!(
            parse_resume_id(&"a".repeat(129)),
            Err(ResumeIdError::Length(129))
        );
        assert!(parse_resume_id(&"a".repeat(128)).is_ok());
        assert_eq!(
            parse_resume_id("has space here"),
            Err(ResumeIdError::Character(' '))
        );
        assert_eq!(
            parse_resume_id("quote'injection"),
            Err(ResumeIdError::Character('\''))
        );
        assert!(
            ResumeIdError::Length(3)
                .to_string()
                .contains("8 to 128 characters")
        );
    }

    #[test]
    fn bindings_text_ignores_key_order_but_not_meaning() {
        let a = request(serde_json::json!({"event": "insert", "schema": "public", "table": "t"}));
        let b = request(serde_json::json!({"table": "t", "schema": "public", "event": "INSERT"}));
        assert_eq!(bindings_text(std::slice::from_ref(&a)), bindings_text(&[b]));
        let c = request(serde_json::json!({"event": "INSERT", "schema": "public", "table": "u"}));
        assert_ne!(
            bindings_text(std::slice::from_ref(&a)),
            bindings_text(std::slice::from_ref(&c))
        );
        let f = request(
            serde_json::json!({"event": "INSERT", "schema": "public", "table": "t", "filter": "id=eq.1"}),
        );
        assert_ne!(bindings_text(std::slice::from_ref(&a)), bindings_text(&[f]));
        assert_ne!(
            bindings_text(&[a.clone(), c.clone()]),
            bindings_text(&[c, a])
        );
    }

    fn key(n: usize) -> ResumeKey {
        ResumeKey {
            resume_id: Arc::from("resume-id-1"),
            topic: format!("realtime:t{n}"),
            private: false,
            bindings: "[]".into(),
        }
    }

    fn cursor(lsn: u64) -> Cursor {
        Cursor {
            commit_lsn: Lsn(lsn),
            index: 0,
        }
    }

    #[tokio::test]
    async fn notes_update_in_place_and_are_bounded() {
        let pool = crate::db::pool("postgres://u@127.0.0.1:1/db", 1, "test").expect("pool");
        let metrics = Arc::new(Metrics::default());
        let r = Resumes::new(pool, Arc::clone(&metrics));
        assert!(r.note(&key(0), "alice", cursor(10)));
        assert!(r.note(&key(0), "alice", cursor(20)));
        assert_eq!(
            r.load(&key(0)).await.expect("pending").expect("noted"),
            Saved {
                subject: "alice".into(),
                cursor: cursor(20)
            }
        );
        for n in 1..MAX_PENDING {
            assert!(r.note(&key(n), "alice", cursor(1)));
        }
        assert!(
            !r.note(&key(MAX_PENDING), "alice", cursor(1)),
            "over the cap"
        );
        assert!(r.note(&key(0), "bob", cursor(30)), "updates still fit");
        assert_eq!(r.lock().len(), MAX_PENDING);
    }
}
