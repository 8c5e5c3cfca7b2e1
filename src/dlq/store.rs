//! The statements of `sql/dlq/`: every read and change of `walcast.dead_letter_queue`.
//!
//! Changes go through the `walcast.dlq_*` functions only; reads select from the table. Each
//! function takes a plain [`tokio_postgres::Client`], so a pooled connection (through deref)
//! or a dedicated one both work.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::{DeadLetter, DeadLetterRow, DlqError, RetryPolicy, Status};

/// `walcast.dlq_push`.
const PUSH_SQL: &str = include_str!("../../sql/dlq/push.sql");
/// `walcast.dlq_claim`.
const CLAIM_SQL: &str = include_str!("../../sql/dlq/claim.sql");
/// `walcast.dlq_mark_recovered`.
const MARK_RECOVERED_SQL: &str = include_str!("../../sql/dlq/mark_recovered.sql");
/// `walcast.dlq_mark_failed`.
const MARK_FAILED_SQL: &str = include_str!("../../sql/dlq/mark_failed.sql");
/// `walcast.dlq_requeue`.
const REQUEUE_SQL: &str = include_str!("../../sql/dlq/requeue.sql");
/// `walcast.dlq_cleanup`.
const CLEANUP_SQL: &str = include_str!("../../sql/dlq/cleanup.sql");
/// `walcast.dlq_stats`.
const STATS_SQL: &str = include_str!("../../sql/dlq/stats.sql");
/// Newest rows first, filtered.
const LIST_SQL: &str = include_str!("../../sql/dlq/list.sql");
/// One row.
const SHOW_SQL: &str = include_str!("../../sql/dlq/show.sql");

/// Most rows one [`list`] returns.
pub const MAX_LIST_LIMIT: i64 = 1000;

/// Records a dead letter; returns its id.
pub async fn push(client: &Client, letter: &DeadLetter) -> Result<i64, DlqError> {
    let policy = policy_json(&letter.retry_policy)?;
    let row = client
        .query_one(
            PUSH_SQL,
            &[
                &letter.operation.as_str(),
                &letter.source,
                &Json(&letter.payload),
                &letter.error_code,
                &letter.error_message,
                &letter.hint,
                &Json(&policy),
            ],
        )
        .await
        .map_err(DlqError::from_pg)?;
    row.try_get(0).map_err(|e| decode("id", e))
}

/// Which rows [`list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only ids below this one (paging: pass the last id of the previous page).
    pub before_id: Option<i64>,
    /// At most this many rows (1-1000).
    pub limit: i64,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            status: None,
            operation: None,
            before_id: None,
            limit: 100,
        }
    }
}

/// Rows matching `filter`, newest first.
pub async fn list(client: &Client, filter: &ListFilter) -> Result<Vec<DeadLetterRow>, DlqError> {
    if !(1..=MAX_LIST_LIMIT).contains(&filter.limit) {
        return Err(DlqError::invalid(format!(
            "limit {} must be from 1 to {MAX_LIST_LIMIT}",
            filter.limit
        )));
    }
    let status = filter.status.map(Status::as_str);
    let rows = client
        .query(
            LIST_SQL,
            &[&status, &filter.operation, &filter.before_id, &filter.limit],
        )
        .await
        .map_err(DlqError::from_pg)?;
    rows.iter().map(row_of).collect()
}

/// One row; [`DlqError::NotFound`] when there is none.
pub async fn show(client: &Client, id: i64) -> Result<DeadLetterRow, DlqError> {
    let row = client
        .query_opt(SHOW_SQL, &[&id])
        .await
        .map_err(DlqError::from_pg)?;
    match row {
        Some(r) => row_of(&r),
        None => Err(DlqError::NotFound {
            message: format!("dead letter {id} does not exist"),
        }),
    }
}

/// Counts by status and the queue's age.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Rows waiting for their next attempt or for an operator.
    pub pending: i64,
    /// Rows a worker is retrying.
    pub retrying: i64,
    /// Rows whose work is done.
    pub recovered: i64,
    /// Rows that need an operator.
    pub failed: i64,
    /// All rows.
    pub total: i64,
    /// When the oldest pending row was pushed.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Its age in seconds.
    pub oldest_pending_age_secs: Option<f64>,
    /// When the next row is due (or a worker's lease ends).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// `walcast.dlq_stats()`.
pub async fn stats(client: &Client) -> Result<Stats, DlqError> {
    let r = client
        .query_one(STATS_SQL, &[])
        .await
        .map_err(DlqError::from_pg)?;
    Ok(Stats {
        pending: col(&r, "pending")?,
        retrying: col(&r, "retrying")?,
        recovered: col(&r, "recovered")?,
        failed: col(&r, "failed")?,
        total: col(&r, "total")?,
        oldest_pending_at: col(&r, "oldest_pending_at")?,
        oldest_pending_age_secs: col(&r, "oldest_pending_age_secs")?,
        next_attempt_at: col(&r, "next_attempt_at")?,
    })
}

/// Manual retry of one row: back to pending, due now, with a fresh attempt budget. Fails with
/// [`DlqError::NotFound`], or [`DlqError::Conflict`] when the row is recovered, being retried,
/// or `no_retry`.
pub async fn requeue(client: &Client, id: i64) -> Result<DeadLetterRow, DlqError> {
    let rows = client
        .query(REQUEUE_SQL, &[&Some(id)])
        .await
        .map_err(DlqError::from_pg)?;
    match rows.first() {
        Some(r) => row_of(r),
        None => Err(DlqError::NotFound {
            message: format!("dead letter {id} does not exist"),
        }),
    }
}

/// Manual retry of every failed row and every `manual_retry` row waiting for an operator
/// (`no_retry` rows excepted); returns the requeued rows.
pub async fn requeue_all(client: &Client) -> Result<Vec<DeadLetterRow>, DlqError> {
    let rows = client
        .query(REQUEUE_SQL, &[&None::<i64>])
        .await
        .map_err(DlqError::from_pg)?;
    rows.iter().map(row_of).collect()
}

/// Deletes rows in `statuses` (not `retrying`) last changed more than `older_than` ago;
/// returns how many.
pub async fn purge(
    client: &Client,
    older_than: Duration,
    statuses: &[Status],
) -> Result<u64, DlqError> {
    let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    let r = client
        .query_one(CLEANUP_SQL, &[&older_than.as_secs_f64(), &statuses])
        .await
        .map_err(DlqError::from_pg)?;
    let n: i64 = r.try_get(0).map_err(|e| decode("count", e))?;
    Ok(n.max(0) as u64)
}

/// Claims up to `batch` due rows for `worker` (see `walcast.dlq_claim`): only `operations`
/// when given, only `only_id` when given; each claimed row is `retrying` until `lease` ends.
pub async fn claim(
    client: &Client,
    batch: u32,
    worker: &str,
    operations: Option<&[&str]>,
    only_id: Option<i64>,
    lease: Duration,
) -> Result<Vec<DeadLetterRow>, DlqError> {
    let batch = i32::try_from(batch).unwrap_or(i32::MAX);
    let rows = client
        .query(
            CLAIM_SQL,
            &[&batch, &worker, &operations, &only_id, &lease.as_secs_f64()],
        )
        .await
        .map_err(DlqError::from_pg)?;
    rows.iter().map(row_of).collect()
}

/// Marks a row recovered (idempotent).
pub async fn mark_recovered(client: &Client, id: i64) -> Result<DeadLetterRow, DlqError> {
    let r = client
        .query_one(MARK_RECOVERED_SQL, &[&id])
        .await
        .map_err(DlqError::from_pg)?;
    row_of(&r)
}

/// Records a failed attempt of a claimed row: back to pending after a backoff while its policy
/// allows, `failed` otherwise or when `give_up`.
pub async fn mark_failed(
    client: &Client,
    id: i64,
    error_code: &str,
    error_message: &str,
    hint: Option<&str>,
    give_up: bool,
) -> Result<DeadLetterRow, DlqError> {
    let r = client
        .query_one(
            MARK_FAILED_SQL,
            &[&id, &error_code, &error_message, &hint, &give_up],
        )
        .await
        .map_err(DlqError::from_pg)?;
    row_of(&r)
}

/// A policy as the `jsonb` the functions expect.
fn policy_json(policy: &RetryPolicy) -> Result<Value, DlqError> {
    serde_json::to_value(policy)
        .map_err(|e| DlqError::invalid(format!("retry policy is not representable: {e}")))
}

/// A column of `r`.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    r: &'a Row,
    column: &'static str,
) -> Result<T, DlqError> {
    r.try_get(column).map_err(|e| decode(column, e))
}

/// A column that could not be read.
fn decode(column: &'static str, e: tokio_postgres::Error) -> DlqError {
    DlqError::Decode {
        column,
        detail: e.to_string(),
    }
}

/// A table row.
pub(crate) fn row_of(r: &Row) -> Result<DeadLetterRow, DlqError> {
    let status: String = col(r, "status")?;
    let status = status.parse::<Status>().map_err(|_| DlqError::Decode {
        column: "status",
        detail: status.clone(),
    })?;
    let policy: Value = col::<Json<Value>>(r, "retry_policy")?.0;
    let retry_policy: RetryPolicy =
        serde_json::from_value(policy.clone()).map_err(|_| DlqError::Decode {
            column: "retry_policy",
            detail: policy.to_string(),
        })?;
    Ok(DeadLetterRow {
        id: col(r, "id")?,
        operation: col(r, "operation")?,
        source: col(r, "source")?,
        payload: col::<Json<Value>>(r, "payload")?.0,
        error_code: col(r, "error_code")?,
        error_message: col(r, "error_message")?,
        hint: col(r, "hint")?,
        retry_policy,
        status,
        attempts: col(r, "attempts")?,
        requeues: col(r, "requeues")?,
        next_attempt_at: col(r, "next_attempt_at")?,
        last_attempt_at: col(r, "last_attempt_at")?,
        claimed_by: col(r, "claimed_by")?,
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
        recovered_at: col(r, "recovered_at")?,
    })
}
