//! Consistency validation: do the two WebSocket paths deliver the same changes as the table?
//!
//! Two users:
//! - `walcast validate` ([`crate::cmd::validate`]) subscribes on `/ws` and on the Realtime
//!   endpoint ([`observe`]), optionally reads the table over the same window ([`mod@reference`]),
//!   and compares everything ([`mod@compare`], pure) into a report ([`report`]): matched, missing,
//!   duplicated and out-of-order changes per path, field mismatches, latency per path. The bar
//!   is 100 %.
//! - The server's continuous check ([`consistency`]): a sampled, in-process version that runs
//!   every `--validate-interval`, encodes hub changes through both wire encoders, decodes them
//!   back and compares; it also compares the delivery counters of clients on both paths.
//!   Results go to `/metrics`, `/v1/status` and the admin console.
//!
//! Must not: write `public.monitoring_events` (the CLI inserts test events only through
//! `POST /v1/events`), slow the hub (the checker is an ordinary, bounded subscriber), or report
//! row values from the server (findings name fields and cursors only).

pub(crate) mod compare;
pub(crate) mod consistency;
mod error;
pub mod observe;
pub(crate) mod reference;
pub(crate) mod report;

pub use compare::{CompareInput, Endpoint, Observation, ReferenceRow, Report, Window, compare};
pub use consistency::{Consistency, ConsistencySnapshot, ConsistencyTask, spawn_consistency_task};
pub use error::ValidateError;
