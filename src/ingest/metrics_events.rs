//! The metrics persister: walcast's own counters written periodically as events
//! (`event_type` `walcast.metrics`, `source` the node) through the same resilient ingest path as
//! any producer's events — so dashboards see them in the stream, and a database outage loses
//! none of them (they wait in the spool like everything else).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::Batcher;
use crate::events::EventRecord;
use crate::metrics::Metrics;

/// Event type of the persisted snapshots.
pub const METRICS_EVENT_TYPE: &str = "walcast.metrics";

/// Builds one snapshot event.
pub fn snapshot(metrics: &Metrics, node: &str, breaker: &str) -> EventRecord {
    let data = json!({
        "events_accepted": metrics.events_accepted.get(),
        "events_spooled": metrics.events_spooled.get(),
        "events_dead_lettered": metrics.events_dead_lettered.get(),
        "ingest_flush_errors": metrics.ingest_flush_errors.get(),
        "changes_decoded": metrics.replication_changes.get(),
        "transactions_decoded": metrics.replication_transactions.get(),
        "replication_reconnects": metrics.replication_reconnects.get(),
        "deliveries": metrics.deliveries.get(),
        "clients": metrics.ws_clients.get(),
        "clients_lagged": metrics.clients_lagged.get(),
        "slot_lag_bytes": metrics.slot_lag_bytes.get(),
        "spool_bytes": metrics.spool_bytes.get(),
        "breaker": breaker,
    });
    EventRecord {
        id: uuid::Uuid::now_v7(),
        event_type: METRICS_EVENT_TYPE.to_owned(),
        timestamp: chrono::Utc::now(),
        source: node.to_owned(),
        data: match data {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        metadata: Map::new(),
    }
}

/// Writes a snapshot every `interval` until `shutdown`, then one last one.
pub async fn run(
    metrics: Arc<Metrics>,
    batcher: Batcher,
    writer: Arc<crate::ingest::Writer>,
    node: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        let last = tokio::select! {
            biased;
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let event = snapshot(&metrics, &node, writer.breaker_state().as_str());
        if let Err(e) = batcher.submit(vec![event]).await {
            tracing::warn!(error = %e, "could not persist a metrics snapshot");
        }
        if last {
            return;
        }
    }
}
