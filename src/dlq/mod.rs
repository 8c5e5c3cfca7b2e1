//! The dead-letter queue: work walcast could not complete, kept in `walcast.dead_letter_queue`
//! with its payload, the error, and a hint for operators, and retried when its policy allows.
//!
//! Owns the table `walcast.dead_letter_queue`; this module is the only Rust code that reads or
//! changes it, and it changes rows only through the SQL functions `walcast.dlq_*` (see
//! `docs/dlq.md`), which are atomic and safe under concurrency. Statements live in `sql/dlq/`.
//!
//! - [`DeadLetter`] is what a stage records: an operation (`ingest`, `deliver`), where it came
//!   from, the payload, a stable error code and message, an operator hint, and a [`RetryPolicy`].
//!   [`push`] writes it.
//! - [`list`], [`show`], [`stats`], [`requeue`], [`requeue_all`], [`purge`] serve the CLI
//!   (`walcast dlq ...`) and the HTTP endpoints (`/v1/dlq`, [`http`]).
//! - [`spawn_retry_worker`] starts the retry worker. It runs in one walcast node at a time: the
//!   node holding the Postgres advisory lock [`RETRY_LOCK_KEY`] on the worker's own connection.
//!   It claims due rows (`walcast.dlq_claim`), re-inserts `ingest` payloads through
//!   [`crate::events::insert_batch`] (idempotent on event id, so a repeated attempt never
//!   duplicates a row), and marks each row recovered or failed.
//!
//! Must not: retry an operation it does not know how to redo (`deliver` rows are `no_retry` and
//! kept for operators), write `public.monitoring_events` other than through
//! [`crate::events`], or pass database error text to HTTP clients except the messages of the
//! `walcast.dlq_*` functions themselves, which are walcast's own.

mod error;
pub(crate) mod http;
pub(crate) mod sink;
mod store;
mod worker;

pub use error::{DlqError, DlqErrorKind};
pub use store::{
    ListFilter, Stats, claim, list, mark_failed, mark_recovered, purge, push, requeue, requeue_all,
    show, stats,
};
pub use worker::{
    PassReport, RETRY_LOCK_KEY, RETRYABLE_OPERATIONS, RetryWorkerConfig, RetryWorkerStatus,
    retry_row, run_pass, spawn_retry_worker,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::EventRecord;

/// What failed. Stored as text in `operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Writing events to `public.monitoring_events`; the payload is a JSON array of events in
    /// the event model. Retried by the retry worker.
    Ingest,
    /// Delivering a WAL change to clients (e.g. a change walcast could not decode); the payload
    /// describes the change. Never retried automatically.
    Deliver,
}

impl Operation {
    /// The name stored in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Ingest => "ingest",
            Operation::Deliver => "deliver",
        }
    }

    /// The retry policy walcast uses for this operation unless told otherwise.
    pub fn default_policy(self) -> RetryPolicy {
        match self {
            Operation::Ingest => RetryPolicy::timed(),
            Operation::Deliver => RetryPolicy::NoRetry,
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a dead letter is retried; stored as `jsonb` (`{"kind": ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RetryPolicy {
    /// The retry worker retries it: the first time `backoff_base_secs` after the push, then
    /// after `backoff_base_secs * 2^(attempts - 1)` (at most `backoff_max_secs`), until
    /// `max_attempts` attempts failed; then the row is `failed`.
    TimedRetry {
        /// Attempts before giving up (1-1000).
        #[serde(default = "default_max_attempts")]
        max_attempts: u32,
        /// First delay, seconds.
        #[serde(default = "default_backoff_base_secs")]
        backoff_base_secs: f64,
        /// Longest delay, seconds.
        #[serde(default = "default_backoff_max_secs")]
        backoff_max_secs: f64,
    },
    /// Waits for an operator (`walcast dlq retry <id>`), then gets one retry round.
    ManualRetry,
    /// Never retried: kept for inspection (status `failed` from the start).
    NoRetry,
}

/// Default `max_attempts` of [`RetryPolicy::TimedRetry`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default `backoff_base_secs` of [`RetryPolicy::TimedRetry`].
pub const DEFAULT_BACKOFF_BASE_SECS: f64 = 30.0;
/// Default `backoff_max_secs` of [`RetryPolicy::TimedRetry`].
pub const DEFAULT_BACKOFF_MAX_SECS: f64 = 3600.0;

/// Serde default for `max_attempts`.
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// Serde default for `backoff_base_secs`.
fn default_backoff_base_secs() -> f64 {
    DEFAULT_BACKOFF_BASE_SECS
}

/// Serde default for `backoff_max_secs`.
fn default_backoff_max_secs() -> f64 {
    DEFAULT_BACKOFF_MAX_SECS
}

impl RetryPolicy {
    /// `timed_retry` with the defaults (5 attempts, 30 s doubling up to 1 h).
    pub fn timed() -> RetryPolicy {
        RetryPolicy::TimedRetry {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_base_secs: DEFAULT_BACKOFF_BASE_SECS,
            backoff_max_secs: DEFAULT_BACKOFF_MAX_SECS,
        }
    }

    /// The policy's name: `timed_retry`, `manual_retry` or `no_retry`.
    pub fn kind(&self) -> &'static str {
        match self {
            RetryPolicy::TimedRetry { .. } => "timed_retry",
            RetryPolicy::ManualRetry => "manual_retry",
            RetryPolicy::NoRetry => "no_retry",
        }
    }
}

/// A row's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for `next_attempt_at`, or for an operator when that is empty.
    Pending,
    /// Claimed by a worker that is retrying it.
    Retrying,
    /// Its work is done.
    Recovered,
    /// Gave up (attempts used up, or never retryable): needs an operator.
    Failed,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Retrying,
        Status::Recovered,
        Status::Failed,
    ];

    /// The name stored in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Retrying => "retrying",
            Status::Recovered => "recovered",
            Status::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = DlqError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                DlqError::invalid(format!(
                    "unknown status {s:?}: use pending, retrying, recovered or failed"
                ))
            })
    }
}

/// Something walcast could not do, to record with [`push`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// What failed.
    pub operation: Operation,
    /// Where it came from: the node name, or the producer.
    pub source: String,
    /// What to retry or inspect (for `ingest`: a JSON array of events in the event model).
    pub payload: Value,
    /// A stable short code: a walcast error code (e.g. `rejected`) or a Postgres SQLSTATE.
    pub error_code: String,
    /// What went wrong, for operators. Never includes secrets.
    pub error_message: String,
    /// What an operator should do; `None` stores a default hint for the policy.
    pub hint: Option<String>,
    /// How it is retried.
    pub retry_policy: RetryPolicy,
}

impl DeadLetter {
    /// A failed ingest write of `events` (retried with the default `timed_retry` policy).
    pub fn ingest(
        source: impl Into<String>,
        events: &[&EventRecord],
        error_code: impl Into<String>,
        error_message: impl Into<String>,
    ) -> DeadLetter {
        DeadLetter {
            operation: Operation::Ingest,
            source: source.into(),
            payload: events_payload(events),
            error_code: error_code.into(),
            error_message: error_message.into(),
            hint: Some(
                "walcast retries these events with backoff (idempotent by id); if the error is \
                 the data itself, fix the constraint or the producer, then `walcast dlq retry <id> --now`"
                    .to_owned(),
            ),
            retry_policy: Operation::Ingest.default_policy(),
        }
    }

    /// A WAL change walcast could not deliver (kept with `no_retry` for operators).
    pub fn deliver(
        source: impl Into<String>,
        change: Value,
        error_code: impl Into<String>,
        error_message: impl Into<String>,
    ) -> DeadLetter {
        DeadLetter {
            operation: Operation::Deliver,
            source: source.into(),
            payload: change,
            error_code: error_code.into(),
            error_message: error_message.into(),
            hint: Some(
                "clients did not receive this change; inspect it, check the table's columns and \
                 walcast's version, then `walcast dlq purge --status failed` once handled"
                    .to_owned(),
            ),
            retry_policy: Operation::Deliver.default_policy(),
        }
    }
}

/// Events as the payload of an `ingest` dead letter: a JSON array in the event model
/// (`id`, `event_type`, `timestamp` as RFC 3339, `source`, `data`, `metadata`).
pub fn events_payload(events: &[&EventRecord]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "id": e.id,
                    "event_type": e.event_type,
                    "timestamp": e.timestamp.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    "source": e.source,
                    "data": e.data,
                    "metadata": e.metadata,
                })
            })
            .collect(),
    )
}

/// One row of `walcast.dead_letter_queue`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterRow {
    /// Row id.
    pub id: i64,
    /// What failed (`ingest`, `deliver`, ...).
    pub operation: String,
    /// Where it came from.
    pub source: String,
    /// The payload.
    pub payload: Value,
    /// The latest error's code.
    pub error_code: String,
    /// The latest error's message.
    pub error_message: String,
    /// What an operator should do.
    pub hint: String,
    /// How it is retried.
    pub retry_policy: RetryPolicy,
    /// State.
    pub status: Status,
    /// Attempts since it was pushed or last requeued.
    pub attempts: i32,
    /// Manual requeues.
    pub requeues: i32,
    /// When it is due (pending), or when the worker's lease ends (retrying).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the last attempt started.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The worker that claimed it last.
    pub claimed_by: Option<String>,
    /// When it was pushed.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was recovered.
    pub recovered_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_as_tagged_json() {
        let t = RetryPolicy::timed();
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["kind"], "timed_retry");
        assert_eq!(v["max_attempts"], 5);
        assert_eq!(serde_json::from_value::<RetryPolicy>(v).unwrap(), t);
        let short: RetryPolicy =
            serde_json::from_str(r#"{"kind":"timed_retry","max_attempts":2}"#).unwrap();
        assert_eq!(
            short,
            RetryPolicy::TimedRetry {
                max_attempts: 2,
                backoff_base_secs: DEFAULT_BACKOFF_BASE_SECS,
                backoff_max_secs: DEFAULT_BACKOFF_MAX_SECS
            }
        );
        assert_eq!(
            serde_json::to_value(RetryPolicy::NoRetry).unwrap(),
            serde_json::json!({"kind": "no_retry"})
        );
        assert_eq!(Operation::Deliver.default_policy().kind(), "no_retry");
    }

    #[test]
    fn statuses_parse() {
        for st in Status::ALL {
            assert_eq!(st.as_str().parse::<Status>().unwrap(), st);
        }
        assert!("done".parse::<Status>().is_err());
    }

    #[test]
    fn ingest_payload_is_the_event_model() {
        let e = EventRecord {
            id: uuid::Uuid::nil(),
            event_type: "cpu".into(),
            timestamp: DateTime::parse_from_rfc3339("2026-11-23T18:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            source: "host-1".into(),
            data: serde_json::Map::new(),
            metadata: serde_json::Map::new(),
        };
        let d = DeadLetter::ingest("node1", &[&e], "rejected", "no");
        assert_eq!(
            d.payload,
            serde_json::json!([{
                "id": "00000000-0000-0000-0000-000000000000",
                "event_type": "cpu",
                "timestamp": "2026-11-23T18:00:00Z",
                "source": "host-1",
                "data": {},
                "metadata": {}
            }])
        );
        assert_eq!(d.retry_policy.kind(), "timed_retry");
    }
}
