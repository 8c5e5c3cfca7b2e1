//! walcast: Postgres tables (first of all `monitoring_events`) as a live, loss-free event stream.
//!
//! ```text
//! producers ─POST /v1/events─► ingest (validate, adaptive batches) ─► Postgres monitoring_events
//!                               └ on failure: breaker → retry → spool → DLQ          │ WAL
//! replication::reader (sole slot owner, confirms LSN only after hand-off) ◄───────────┘
//!    └► decode (pgoutput → Change, pure) ─► hub (encode once per format, ring bounded in changes and bytes)
//!          ├► ws       /ws                     plain JSON, cursors, resume     ┐ auth: one verifier
//!          └► realtime /realtime/v1/websocket  Supabase Phoenix v1/v2          ┘ rows: access (RLS gate)
//! side: flags (SQL, snapshot) · dlq (SQL) · metrics (/metrics) · validate · admin (pgwire, psql)
//!       · supervise · cli/cmd · cluster (private Postgres for `dev` and tests)
//! ```
//!
//! One home per feature, in pipeline order (each exports only what others need):
//! - [`ingest`]: `POST /v1/events` (its handler, validation, adaptive batching, the resilient
//!   writer with breaker, retry and spool, producer-facing error codes, the metrics persister).
//! - [`events`]: the event record and the only code that writes `public.monitoring_events`.
//! - [`replication`]: the replication reader, the resume window, replays, slot checks.
//! - [`decode`]: pgoutput bytes → [`decode::Change`]; pure, no I/O.
//! - [`hub`]: the fan-out ring, bounded in changes and in bytes per client; frames encoded once
//!   per wire format by the encoder a session passes in (the hub knows no protocol); filter
//!   texts made once per change.
//! - [`filter`]: subscription filters (`column=op.value`, event types, sources, operations),
//!   shared by both endpoints and the validator.
//! - [`ws`]: what both WebSocket endpoints share ([`ws::socket`]: limits, close codes, timed
//!   writes) and the `/ws` endpoint ([`ws::protocol`], pure; its session).
//! - [`realtime`]: the Supabase Realtime endpoint ([`realtime::protocol`], pure; sessions,
//!   channels, deliveries, broadcast and presence, broadcast across nodes through the WAL,
//!   private channels).
//! - [`access`]: row visibility under the role's own RLS policies and column privileges, one
//!   batched call for every waiting check.
//! - [`auth`]: the one token verifier (the JWT secret, a JWKS of signing keys kept fresh, the
//!   `sb_publishable_…`/`sb_secret_…` API keys), credentials read from requests, the
//!   `ServiceRole` extractor.
//! - [`dlq`]: the dead-letter queue (`walcast.dead_letter_queue`), its retry worker, `/v1/dlq`.
//! - [`flags`]: feature flags (broadcaster mode, Realtime rollout), snapshot refreshed by NOTIFY.
//! - [`metrics`]: every metric, declared once, rendered on `/metrics`.
//! - [`validate`]: do both WebSocket paths deliver the same changes as the table?
//! - [`admin`]: the client registry, `GET /v1/status`, the Postgres-protocol admin console.
//! - [`http`]: composes the feature routers; the app state is a leaf of narrow states.
//! - [`app`]: wiring and ordered shutdown; [`supervise`]: every long-running task watched.
//! - [`config`], [`cli`], [`cmd`], [`units`]: command line → validated config → subcommands.
//! - [`db`]: pool and embedded migrations; [`cluster`]: a private Postgres for `dev` and tests.
//! - Leaves: [`catalog`] (table facts), [`endpoint`] (the two endpoints' names), [`error`]
//!   (error chains, the HTTP error envelope), [`json`] (the JSON string writer).
//!
//! Invariants: `decode`, `ws::protocol` and `realtime::protocol` do no I/O; only `replication`
//! speaks the replication protocol and only its reader confirms LSNs; each table has one owning
//! module; every channel is bounded; a slow client never slows the reader or other clients; no
//! module imports another that imports it back.

// Pipeline order.
pub(crate) mod ingest;
pub mod events;
pub mod replication;
pub mod decode;
pub(crate) mod hub;
pub mod filter;
pub mod ws;
pub mod realtime;
pub mod access;
pub mod auth;
// Side systems.
pub mod dlq;
pub mod flags;
pub mod metrics;
pub mod validate;
pub(crate) mod admin;
pub(crate) mod http;
pub mod app;
pub(crate) mod supervise;
// Command line and setup.
pub mod config;
pub mod cli;
pub mod cmd;
pub(crate) mod units;
pub mod db;
pub mod cluster;
// Leaves.
pub mod catalog;
pub(crate) mod endpoint;
pub(crate) mod error;
pub(crate) mod json;
