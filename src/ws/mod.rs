//! WebSockets: what both endpoints share ([`socket`]), and the `/ws` endpoint itself.
//!
//! `/ws` speaks walcast's plain JSON protocol ([`protocol`], pure) in a [`session`] per
//! client: subscriptions with filters, live changes from the hub, resume from a cursor,
//! heartbeats, lag handling. Sessions read from the hub and write to their socket; they never
//! touch pgoutput. Writes are batched: a session queues every ready frame (up to
//! [`socket::WRITE_BATCH`]) and flushes once. The Realtime endpoint lives in
//! [`crate::realtime`] and uses [`socket`] too.

pub mod protocol;
pub(crate) mod session;
pub(crate) mod socket;
pub(crate) mod viewer;

pub use session::{WsState, ws_handler};
