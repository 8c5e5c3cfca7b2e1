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

/// The socket's write half, as both session kinds hold it.
pub type SocketSink =
    futures::stream::SplitSink<axum::extract::ws::WebSocket, axum::extract::ws::Message>;

/// A write did not complete within [`WRITE_TIMEOUT`] or failed: the peer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerGone;

/// Maps a timed write's outcome.
fn timed<E>(r: Result<Result<(), E>, tokio::time::error::Elapsed>) -> Result<(), PeerGone> {
    match r {
        Ok(Ok(())) => Ok(()),
        _ => Err(PeerGone),
    }
}

/// Queues a frame without flushing, within [`WRITE_TIMEOUT`].
pub async fn feed(sink: &mut SocketSink, msg: axum::extract::ws::Message) -> Result<(), PeerGone> {
    use futures::SinkExt;
    timed(tokio::time::timeout(WRITE_TIMEOUT, sink.feed(msg)).await)
}

/// Flushes queued frames, within [`WRITE_TIMEOUT`].
pub async fn flush(sink: &mut SocketSink) -> Result<(), PeerGone> {
    use futures::SinkExt;
    timed(tokio::time::timeout(WRITE_TIMEOUT, sink.flush()).await)
}

/// Sends one text frame now, within [`WRITE_TIMEOUT`].
pub async fn send_text(sink: &mut SocketSink, text: String) -> Result<(), PeerGone> {
    use futures::SinkExt;
    let msg = axum::extract::ws::Message::Text(axum::extract::ws::Utf8Bytes::from(text));
    timed(tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await)
}
