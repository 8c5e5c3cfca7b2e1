//! Ingest: `POST /v1/events` — validate, batch adaptively, write to Postgres, answer after commit.
//!
//! Owns the producer-facing error codes ([`error`]), body parsing and validation ([`parse`]) and
//! the adaptive batcher ([`batcher`]). Writes go through [`crate::events`], the only module that
//! touches `public.monitoring_events`.

pub(crate) mod batcher;
pub(crate) mod breaker;
pub(crate) mod error;
pub(crate) mod http;
mod jsonb_size;
pub(crate) mod metrics_events;
pub(crate) mod parse;
pub(crate) mod request;
pub(crate) mod spool;
pub(crate) mod writer;

pub use batcher::Batcher;
pub use breaker::{Breaker, BreakerConfig};
pub use error::{IngestError, IngestErrorCode};
pub use parse::{BodyFormat, parse_body};
pub use request::Durability;
pub use spool::Spool;
pub use writer::{DeadLetterSink, Writer, WriterConfig};
