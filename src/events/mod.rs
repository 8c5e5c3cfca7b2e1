//! The event store: [`EventRecord`] and the only code that writes `public.monitoring_events`.
//!
//! Writes are one multi-row `INSERT ... SELECT FROM unnest(...)` per batch, so a batch is one
//! statement and one transaction. `on conflict (id) do nothing` makes a retry with the same ids
//! idempotent.

use chrono::{DateTime, Utc};
use deadpool_postgres::ClientWrapper;
use serde_json::{Map, Value};
use tokio_postgres::types::Json;
use uuid::Uuid;

/// The batch insert statement.
const INSERT_BATCH_SQL: &str = include_str!("../../sql/events/insert_batch.sql");

/// A validated event, ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Primary key (producer-supplied or a fresh UUIDv7).
    pub id: Uuid,
    /// Event type, e.g. `cpu` or `cache.hit_rate`.
    pub event_type: String,
    /// When the event happened.
    pub timestamp: DateTime<Utc>,
    /// Who produced it.
    pub source: String,
    /// Payload (a JSON object).
    pub data: Map<String, Value>,
    /// Extra metadata (a JSON object).
    pub metadata: Map<String, Value>,
}

/// Inserts a batch of events in one statement. Rows whose id already exists are skipped.
/// Returns the number of rows actually inserted.
pub async fn insert_batch(
    client: &ClientWrapper,
    events: &[&EventRecord],
) -> Result<u64, tokio_postgres::Error> {
    let stmt = client.prepare_cached(INSERT_BATCH_SQL).await?;
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut timestamps = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut data = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    for e in events {
        ids.push(e.id);
        types.push(e.event_type.as_str());
        timestamps.push(e.timestamp);
        sources.push(e.source.as_str());
        data.push(Json(&e.data));
        metadata.push(Json(&e.metadata));
    }
    client
        .execute(
            &stmt,
            &[&ids, &types, &timestamps, &sources, &data, &metadata],
        )
        .await
}
