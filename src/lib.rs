//! walcast: the Postgres table `monitoring_events` as a live, loss-free event stream.
//!
//! ```text
//! producers ─POST /v1/events─► ingest (validate, adaptive batches) ─► Postgres monitoring_events
//!                               └ on failure: breaker → retry → spool → DLQ          │ WAL
//! replication::reader (sole slot owner, confirms LSN only after hand-off) ◄───────────┘
//!    └► decode (pgoutput → Change, pure) ─► hub (filters, encode once, bounded ring)
//!          ├► protocol::json     ─► ws::plain    ─► /ws                     (plain JSON, resumable)
//!          └► protocol::realtime ─► ws::realtime ─► /realtime/v1/websocket  (Supabase Phoenix v1/v2)
//! side: flags (SQL, snapshot) · dlq (SQL) · metrics (/metrics) · validate · admin (pgwire, psql)
//!       · cli · cluster (private Postgres for `dev` and tests)
//! ```
//!
//! Modules in pipeline order:
//! - [`ingest`]: `POST /v1/events`, validation, adaptive batching, producer-facing error codes.
//! - [`events`]: the event record and the only code that writes `public.monitoring_events`.
//! - [`replication`]: the replication reader, the resume window, replays, slot checks.
//! - [`decode`]: pgoutput bytes → [`decode::Change`]; pure, no I/O.
//! - [`hub`]: fan-out ring, subscription filters, encode-once frames.
//! - [`protocol`]: wire formats; pure, no I/O.
//! - [`ws`]: WebSocket sessions (plain and Realtime); [`realtime_auth`]: Realtime JWT checks and
//!   the batched RLS check.
//! - [`dlq`]: the dead-letter queue (`walcast.dead_letter_queue`), its retry worker, `/v1/dlq`.
//! - [`http`]: router and small handlers; [`app`]: wiring and ordered shutdown.
//! - [`config`], [`cli`], [`cmd`]: command line → validated config → subcommands.
//! - [`db`]: pool and embedded migrations; [`auth`]: JWTs; [`metrics`]; [`cluster`].
//! - [`flags`]: feature flags (broadcaster mode, Realtime rollout), snapshot refreshed by NOTIFY.
//! - [`validate`]: do both WebSocket paths deliver the same changes as the table? The
//!   `walcast validate` comparison and the server's continuous, sampled check.
//! - [`admin`]: the client registry, `GET /v1/status`, and the Postgres-protocol admin console.
//!
//! Invariants: `decode` and `protocol` do no I/O; only `replication` speaks the replication
//! protocol and only its reader confirms LSNs; each table has one owning module; every channel
//! is bounded; a slow client never slows the reader or other clients.

pub mod access;
pub(crate) mod admin;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod db;
pub mod decode;
pub mod dlq;
pub(crate) mod endpoint;
pub(crate) mod error;
pub mod events;
pub mod filter;
pub mod flags;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod ingest;
pub(crate) mod json;
pub mod metrics;
pub mod realtime;
pub mod replication;
pub(crate) mod supervise;
pub(crate) mod units;
pub mod validate;
pub mod ws;
