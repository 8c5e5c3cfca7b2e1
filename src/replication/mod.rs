//! Replication: the only code that speaks the streaming replication protocol.
//!
//! - [`reader`]: the single task that owns the slot, streams pgoutput, hands changes to the hub
//!   and confirms LSNs — only after hand-off, and only as far as the resume window allows.
//! - [`retention`]: the resume window (which LSN may be confirmed), pure logic.
//! - [`replay`]: re-reads the window for a resuming client from a temporary copy of the slot.
//! - [`slot`]: checks before streaming, slot creation, status and drop.
//! - [`window_store`]: the window's old edge, kept in Postgres across restarts.
//! - [`settings`]: connection facts derived from the database URL.
//!
//! The transport is the `pgwire-replication` crate (pgoutput proto_version 1: only committed
//! transactions arrive, in commit order); decoding is walcast's own [`crate::decode`]. Nothing
//! outside this module sees the transport's types.

pub(crate) mod error;
pub(crate) mod reader;
pub(crate) mod replay;
pub(crate) mod retention;
pub(crate) mod settings;
pub(crate) mod slot;
pub(crate) mod window_store;

pub use error::ReplicationError;
pub use reader::{MessageRoute, Reader, ReaderConfig, ReaderStatus, RelayRoute, WalMessage};
pub use replay::{ReplayPermit, ReplayRx, Replays, spawn_replay};
pub use settings::ReplicationSettings;
