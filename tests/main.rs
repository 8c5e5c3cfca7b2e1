//! walcast's integration tests: one binary, real Postgres, real walcast processes.
//!
//! The harness ([`support`]) starts one throwaway Postgres cluster for the whole binary from the
//! system binaries (a reaper process stops it when the binary exits), gives every test a fresh
//! database, and runs walcast as a child process on a free port. Tests that restart Postgres
//! start a cluster of their own.

mod support;

/// The admin console over the Postgres protocol (psql, tokio-postgres) and `GET /v1/status`.
mod admin;
/// The command line: help texts, config errors, emit, keys, slot.
mod cli;
/// Several nodes on one database: broadcast across nodes (`--cluster-broadcast`: once, no echo,
/// `self`, REST, order, private topics, `persist`, a reconnected reader, the default off), and
/// a `/ws` cursor and a Realtime `resume_id` moving from a killed node to another.
mod cluster;
/// The dashboard page in headless Chromium: live rows, source switch, filters, settings, resume, screenshot.
mod dashboard;
/// The dead-letter queue: SQL functions, concurrent claims, retry worker and lock, CLI, /v1/dlq.
mod dlq;
/// Limits at the edge: sessions and connections per address, trusted proxies, timeouts before
/// and between requests, the per-channel message budget.
mod edge;
/// Feature flags: SQL/Rust parity, rollouts, precedence, NOTIFY refresh, broadcaster modes, API, CLI.
mod flags;
/// The Realtime row level security gate on its own: batched calls, an asker going away mid-call.
mod gate;
/// POST /v1/events: formats, errors, batching, idempotence, health and metrics endpoints.
mod ingest;
/// Today's Supabase keys: ES256/RS256 tokens from a JWKS file or URL (rotation, revocation,
/// refusals, refresh budget), publishable/secret API keys on the HTTP APIs, /ws and Realtime.
mod keys;
/// walcast serving as a role that is neither a superuser nor bypasses row level security.
mod least_privilege;
/// Memory bounded in bytes: a stalled client (both endpoints) cut at its byte budget, readers
/// unaffected, resume without loss, RSS back.
mod memory;
/// Migrations: apply, idempotence, the Supabase copy.
mod migrations;
/// Supabase Realtime endpoint: upgrade auth, v1/v2 frames, postgres_changes, RLS, broadcast, presence.
mod realtime;
/// The real @supabase/realtime-js client (node) against walcast: changes, filters, RLS, tokens,
/// broadcast, presence, reconnect.
mod realtime_js;
/// Resume on the Realtime endpoint (`resume_id`): replay after a drop, live without a gap,
/// another subject or an expired position, row security during replays.
mod resume;
/// Nothing acknowledged is lost: Postgres crash, kill -9 with Postgres down, SIGTERM.
mod resilience;
/// WAL → /ws: filters, operations, resume, lag, faults, cursor expiry.
mod stream;
/// Every table of the publication on both endpoints: per-table policies and column
/// privileges, bindings on schema/table/`*`, the `/ws` table filter, a table without a primary
/// key, `ALTER PUBLICATION ... ADD TABLE` while running, one gate call for many tables.
mod tables;
/// Trust at the edge: each attack on an endpoint and the refusal it gets.
mod trust;
/// `walcast validate` (clean run, injected gap, quiet window) and the server's continuous check.
mod validate;
