//! Turns pgoutput logical replication messages into walcast's change model.
//!
//! This module owns the pgoutput wire format ([`pgoutput`]), the relation/type cache, the
//! conversion of Postgres text values to JSON ([`value`]) and the stateful [`Decoder`] that
//! assigns each row change its [`Cursor`]. It is pure: it never does I/O, never talks to
//! Postgres or clients, never filters tables and never panics on input.

pub(crate) mod change;
pub(crate) mod decoder;
pub(crate) mod error;
pub mod pgoutput;
pub(crate) mod relation_cache;
pub(crate) mod size;
pub(crate) mod value;

pub use change::*;
pub use decoder::{Decoded, Decoder, pg_micros_to_utc};
pub use error::DecodeError;
pub use size::Size;
