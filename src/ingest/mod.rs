//! Ingest: `POST /v1/events` — validate, batch adaptively, write to Postgres, answer after commit.
//!
//! Owns the producer-facing error codes ([`error`]), body parsing and validation ([`parse`]) and
//! the adaptive batcher ([`batcher`]). Writes go through [`crate::events`], the only module that
//! touches `public.monitoring_events`.

pub mod batcher;
pub mod breaker;
pub mod error;
pub mod http;
pub mod metrics_events;
pub mod parse;
pub mod request;
pub mod spool;
pub mod writer;

pub use batcher::{Batcher, Tier};
pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use error::{IngestError, IngestErrorCode};
pub use parse::{BodyFormat, parse_body};
pub use request::Durability;
pub use spool::Spool;
pub use writer::{DeadLetterSink, Writer, WriterConfig};
