//! The table as the reference of `walcast validate`: the database's clock for the window, and
//! the rows created inside it.
//!
//! Reads `public.monitoring_events`, never writes it; its statements live in `sql/validate/`.
//! Rows come as `to_jsonb(row)`, so timestamps carry a `+00:00` offset where walcast writes
//! `Z`: the comparison treats both as the same instant.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use super::compare::{ReferenceRow, Window};
use super::error::ValidateError;
use crate::decode::Row;
use crate::filter::Filter;

/// `sql/validate/reference_rows.sql`.
const REFERENCE_ROWS_SQL: &str = include_str!("../../sql/validate/reference_rows.sql");
/// `sql/validate/clock.sql`.
const CLOCK_SQL: &str = include_str!("../../sql/validate/clock.sql");

/// Most rows one run reads.
pub const MAX_REFERENCE_ROWS: i64 = 1_000_000;

/// A connection to the database holding the table.
#[derive(Debug)]
pub struct Reference {
    /// The SQL client.
    client: Client,
    /// Its connection task.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reference {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reference {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Result<Reference, ValidateError> {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(ValidateError::Database)?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "validate: reference connection ended");
            }
        });
        Ok(Reference { client, task })
    }

    /// The database's clock (the clock that stamps commits).
    pub async fn now(&self) -> Result<DateTime<Utc>, ValidateError> {
        let row = self
            .client
            .query_one(CLOCK_SQL, &[])
            .await
            .map_err(ValidateError::Database)?;
        row.try_get(0).map_err(ValidateError::Database)
    }

    /// Rows created inside `window` that `filter` accepts.
    pub async fn rows(
        &self,
        window: Window,
        filter: &Filter,
    ) -> Result<Vec<ReferenceRow>, ValidateError> {
        let rows = self
            .client
            .query(
                REFERENCE_ROWS_SQL,
                &[&window.start, &window.end, &MAX_REFERENCE_ROWS],
            )
            .await
            .map_err(ValidateError::Database)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let value: Value = r.try_get(0).map_err(ValidateError::Database)?;
            let Value::Object(values) = value else {
                continue;
            };
            let row = Row {
                values,
                unchanged_toast: Vec::new(),
            };
            if !filter.matches_row(&row) {
                continue;
            }
            let Some(id) = row.values.get("id").and_then(Value::as_str) else {
                continue;
            };
            out.push(ReferenceRow {
                id: id.to_owned(),
                values: row.values.clone(),
            });
        }
        Ok(out)
    }
}
