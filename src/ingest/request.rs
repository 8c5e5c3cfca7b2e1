//! What flows between the batcher and the writer: a producer's request and the durability it
//! was answered with. A leaf of `ingest`, so the batcher and the writer import it, not each other.

use std::time::Instant;

use tokio::sync::oneshot;

use super::error::IngestError;
use crate::events::EventRecord;

/// One producer request waiting for its write.
#[derive(Debug)]
pub struct Request {
    /// The validated events.
    pub events: Vec<EventRecord>,
    /// Answered once the events are durable (or failed).
    pub reply: oneshot::Sender<Result<Durability, IngestError>>,
    /// When it was queued.
    pub queued_at: Instant,
}

/// Where accepted events are durable when the producer is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Committed to `monitoring_events`.
    Database,
    /// Fsynced to the local spool; replayed into the table when Postgres is back.
    Spool,
    /// Postgres rejects these events; they wait in the dead-letter queue for an operator.
    DeadLetter,
}

impl Durability {
    /// As sent in responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Database => "database",
            Durability::Spool => "spool",
            Durability::DeadLetter => "dead_letter",
        }
    }
}
