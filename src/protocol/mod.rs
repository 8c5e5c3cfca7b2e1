//! Wire formats walcast speaks with WebSocket clients.
//!
//! This module owns the text of the frames: parsing what clients send and encoding what the
//! server sends, with the error codes and messages clients see. It never does I/O, never holds
//! connection state and never decides what to send when: the WebSocket sessions do that and
//! call in here for the bytes.
//!
//! - [`json`]: walcast's own protocol on `/ws`, one JSON object per text frame (described for
//!   users in `docs/protocol-ws.md`).

pub mod json;
pub mod realtime;
