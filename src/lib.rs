//! walcast: the Postgres table `monitoring_events` as a live, loss-free event stream.
//!
//! ```text
//! producers ─POST /v1/events─► ingest (validate, adaptive batches) ─► Postgres monitoring_events
//!                                                                            │ WAL (publication)
//! replication::reader (sole slot owner, confirms LSN only after hand-off) ◄──┘
//!    └► decode (pgoutput → Change, pure) ─► hub (filters, encode once, bounded ring)
//!          └► protocol::json ─► ws::plain ─► /ws   (plain JSON, resumable)
//! side: metrics (/metrics) · cli · cluster (private Postgres for `dev` and tests)
//! ```
//!
//! Modules in pipeline order:
//! - [`ingest`]: `POST /v1/events`, validation, adaptive batching, producer-facing error codes.
//! - [`events`]: the event record and the only code that writes `public.monitoring_events`.
//! - [`replication`]: the replication reader, the resume window, replays, slot checks.
//! - [`decode`]: pgoutput bytes → [`decode::Change`]; pure, no I/O.
//! - [`hub`]: fan-out ring, subscription filters, encode-once frames.
//! - [`protocol`]: wire formats; pure, no I/O.
//! - [`ws`]: WebSocket sessions.
//! - [`http`]: router and small handlers; [`app`]: wiring and ordered shutdown.
//! - [`config`], [`cli`], [`cmd`]: command line → validated config → subcommands.
//! - [`db`]: pool and embedded migrations; [`auth`]: JWTs; [`metrics`]; [`cluster`].
//!
//! Invariants: `decode` and `protocol` do no I/O; only `replication` speaks the replication
//! protocol and only its reader confirms LSNs; each table has one owning module; every channel
//! is bounded; a slow client never slows the reader or other clients.

pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod db;
pub mod decode;
pub mod events;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod protocol;
pub mod replication;
pub mod ws;
