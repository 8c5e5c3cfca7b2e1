//! The dead-letter sinks other stages use: ingest hands over events Postgres rejects, the
//! replication reader hands over WAL messages it cannot decode.

use std::sync::Arc;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{DeadLetter, push};
use crate::events::EventRecord;
use crate::ingest::DeadLetterSink;

/// Ingest's sink: stores rejected batches as `ingest` dead letters (retried by the worker).
pub struct IngestSink {
    /// Connections.
    pub pool: Pool,
    /// Node name, stored as the source.
    pub node: String,
}

impl DeadLetterSink for IngestSink {
    fn push<'a>(
        &'a self,
        events: &'a [&'a EventRecord],
        error_code: &'a str,
        error_message: &'a str,
    ) -> BoxFuture<'a, Result<i64, String>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let letter = DeadLetter::ingest(self.node.clone(), events, error_code, error_message);
            push(&client, &letter).await.map_err(|e| e.to_string())
        })
    }
}

/// Capacity of the queue from the replication reader to the delivery sink task.
pub const DELIVER_QUEUE: usize = 256;

/// Starts the task that stores `deliver` dead letters handed over by the replication reader
/// (which must never wait on the database). Returns the sender half and the task, which ends
/// when every sender is gone.
pub fn spawn_deliver_sink(pool: Pool) -> (mpsc::Sender<DeadLetter>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<DeadLetter>(DELIVER_QUEUE);
    let pool = Arc::new(pool);
    let task = tokio::spawn(async move {
        while let Some(letter) = rx.recv().await {
            let mut delay = std::time::Duration::from_millis(200);
            for _ in 0..10 {
                let res = match pool.get().await {
                    Ok(c) => push(&c, &letter).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match res {
                    Ok(id) => {
                        tracing::warn!(
                            id,
                            "stored an undecodable WAL message in the dead-letter queue"
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not store a dead letter; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(10));
                    }
                }
            }
        }
    });
    (tx, task)
}
