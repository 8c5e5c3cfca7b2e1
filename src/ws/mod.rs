//! WebSocket sessions: the axum upgrade handlers and the per-client loops.
//!
//! [`plain`] serves `/ws` (the JSON protocol of [`crate::protocol::json`]). Sessions read from the
//! hub and write to their socket; they never touch pgoutput. Writes are batched: a session queues
//! every ready frame (up to [`WRITE_BATCH`]) and flushes once.

pub mod plain;
pub mod realtime;

pub use plain::ws_handler;

/// Frames written per flush.
pub const WRITE_BATCH: usize = 256;
/// A write that cannot complete in this time closes the connection (the peer stopped reading).
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Read buffer per connection: clients send only small control frames, and the default
/// (128 KiB) would dominate the memory of idle connections.
pub const READ_BUFFER: usize = 4 << 10;
/// Largest message a client may send.
pub const MAX_CLIENT_MESSAGE: usize = 64 << 10;
/// Bytes tungstenite may buffer for a slow socket before writes fail.
pub const MAX_WRITE_BUFFER: usize = 16 << 20;
/// Most subscriptions on one connection.
pub const MAX_SUBSCRIPTIONS: usize = 100;
