//! The Supabase Realtime protocol (Phoenix channels) spoken on `/realtime/v1/websocket`.
//!
//! This module owns every byte of that protocol: the frame layouts of serializer versions
//! `1.0.0` (JSON objects) and `2.0.0` (JSON arrays plus binary broadcast frames), the `phx_join`
//! payload and its defaults, the `postgres_changes` bindings and change payloads, broadcast and
//! presence payloads, and the exact error and system texts Realtime clients show their users
//! (user documentation: `docs/realtime.md`).
//!
//! It never does I/O, never uses Tokio, keeps no connection state and never decides what to send
//! when: the session in `crate::realtime` does that and calls in here for the bytes. Parsers
//! never panic on client input; they return typed errors.
//!
//! - [`frame`]: frame envelopes for both serializer versions, binary kinds 3 and 4.
//! - [`join`]: topics and the `phx_join` payload (including the legacy topic form).
//! - [`binding`]: `postgres_changes` bindings, filters, binding ids and their error texts.
//! - [`payload`]: the change `data` object and the per-channel change frames.
//! - [`presence`]: presence `track`/`untrack` requests, `presence_state` and `presence_diff`.
//! - [`cluster`]: batches of broadcasts carried between walcast nodes in WAL messages
//!   (`--cluster-broadcast`).
//! - [`text`]: error reasons, token problems and `system` message payloads.

pub(crate) mod binding;
#[cfg(test)]
mod fixtures;
pub mod frame;
pub(crate) mod join;
pub mod payload;
pub(crate) mod presence;
pub mod cluster;
pub(crate) mod text;

pub use binding::{Binding, BindingError, BindingRequest, EventFilter};
pub use frame::{ClientMessage, FrameError, PayloadEncoding, UserBroadcast, Vsn};
pub use join::{JoinConfig, JoinRequest, TopicError};
pub use text::{JoinError, TokenProblem};

/// The topic prefix of every Realtime channel.
pub const TOPIC_PREFIX: &str = "realtime:";

/// The topic of socket-level messages (heartbeats).
pub const PHOENIX_TOPIC: &str = "phoenix";

/// Most channels one socket may join.
pub const MAX_CHANNELS: usize = 100;

/// Idle timeout: a socket that sends nothing for this long is closed (the Phoenix default;
/// Realtime clients send a heartbeat every 25 s).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Largest `record`/`old_record` sent in full, in bytes of JSON; above it the change carries
/// `Error 413: Payload Too Large` and only the small fields.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Largest JSON value kept in a record that exceeded [`MAX_RECORD_BYTES`], in bytes.
pub const MAX_TRUNCATED_FIELD_BYTES: usize = 64;

/// Presence `track`/`untrack` calls one channel may make per [`PRESENCE_WINDOW`].
pub const PRESENCE_CALLS_PER_WINDOW: usize = 5;

/// The window of [`PRESENCE_CALLS_PER_WINDOW`].
pub const PRESENCE_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// `access_token` refreshes of one channel are applied at most once per this window (the newest
/// one received inside it is applied when it ends), as Supabase Realtime throttles them.
pub const TOKEN_REFRESH_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
