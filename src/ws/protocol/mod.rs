//! The plain JSON protocol of the `/ws` endpoint: one JSON object per WebSocket text frame,
//! told apart by its `"type"` field (user documentation: `docs/protocol-ws.md`).
//!
//! This module owns the frame formats and the error codes and messages clients see:
//! [`parse_client_frame`] (`client`) turns what a client sends into a [`ClientFrame`], the
//! `encode_*` functions (`server`) build what the server sends, and [`parse_server_frame`]
//! (`read`) reads those back for walcast's own client (`walcast tail`) and tests. It never does I/O, keeps no connection state
//! and never decides when a frame is sent; the WebSocket sessions do.
//!
//! Event frames carry nothing specific to a connection, so a change is encoded once by
//! [`encode_event`] and the same text goes to every client that wants it.

mod client;
mod read;
mod server;
mod table;

use std::fmt;

use crate::filter::FilterError;

pub use super::socket::CLOSE_LAGGED as LAGGED_CLOSE_CODE;
pub use client::{ClientFrame, SubscribeRequest, parse_client_frame, parse_operation};
pub use read::{ErrorFrame, EventFrame, ServerFrame, parse_server_frame};
pub use server::*;
pub use table::TableName;

/// Version of this protocol, sent in the `welcome` frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest subscription id (and ping `ref`), in characters.
pub const MAX_ID_CHARS: usize = 64;

/// Most values a subscribe frame may list in `event_type` or `source`.
pub const MAX_LIST_ITEMS: usize = 100;

/// Most column filters one subscription may have.
pub const MAX_FILTERS: usize = 32;

/// The frame types a client may send, for error messages.
pub(crate) const CLIENT_TYPES: &str = "subscribe, unsubscribe, resume or ping";

/// Stable error codes of `error` frames. Clients may rely on these; messages may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not JSON, or not a JSON object.
    BadJson,
    /// The `type` field names no frame walcast knows.
    UnknownType,
    /// A field is missing, has the wrong type, or is not allowed; the message says which.
    BadRequest,
    /// A column filter of a subscription does not parse.
    InvalidFilter,
    /// A cursor is not one walcast issued.
    InvalidCursor,
    /// A subscription with that id already exists on this connection.
    DuplicateSubscription,
    /// No subscription with that id exists on this connection.
    UnknownSubscription,
    /// The connection already has as many subscriptions as the server allows.
    TooManySubscriptions,
    /// The cursor to resume from is older than the retention window.
    CursorExpired,
    /// The connection's token expired; reconnect with a fresh one.
    Unauthorized,
    /// The connection's role may no longer read the table.
    Forbidden,
    /// Too many replays are running; send `resume` again shortly.
    Busy,
    /// Something went wrong inside walcast.
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownType,
        ErrorCode::BadRequest,
        ErrorCode::InvalidFilter,
        ErrorCode::InvalidCursor,
        ErrorCode::DuplicateSubscription,
        ErrorCode::UnknownSubscription,
        ErrorCode::TooManySubscriptions,
        ErrorCode::CursorExpired,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Busy,
        ErrorCode::Internal,
    ];

    /// The code as sent on the wire, e.g. `bad_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidFilter => "invalid_filter",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::DuplicateSubscription => "duplicate_subscription",
            ErrorCode::UnknownSubscription => "unknown_subscription",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::CursorExpired => "cursor_expired",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
        }
    }

    /// Looks a code up by its wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error to report to the client in an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// What is wrong and what is expected instead, for people.
    pub message: String,
    /// The subscription id (or ping `ref`) of the request the error answers, if known.
    pub r#ref: Option<String>,
}

impl ProtocolError {
    /// An error with no `ref`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            r#ref: None,
        }
    }

    /// The same error answering the request with this id or `ref`.
    pub fn with_ref(mut self, r#ref: Option<String>) -> Self {
        self.r#ref = r#ref;
        self
    }

    /// `duplicate_subscription`: a subscribe frame reused an id that is still subscribed.
    pub fn duplicate_subscription(id: &str) -> Self {
        ProtocolError::new(
            ErrorCode::DuplicateSubscription,
            format!(
                "subscription `{id}` already exists on this connection: unsubscribe it first or \
                 use another id"
            ),
        )
        .with_ref(Some(id.to_owned()))
    }

    /// `unknown_subscription`: an unsubscribe frame named an id that is not subscribed.
    pub fn unknown_subscription(id: &str) -> Self {
        ProtocolError::new(
            ErrorCode::UnknownSubscription,
            format!("no subscription `{id}` on this connection: nothing was unsubscribed"),
        )
        .with_ref(Some(id.to_owned()))
    }

    /// `too_many_subscriptions`: the connection already has `limit` subscriptions.
    pub fn too_many_subscriptions(id: &str, limit: usize) -> Self {
        ProtocolError::new(
            ErrorCode::TooManySubscriptions,
            format!(
                "subscription `{id}` was refused: this connection already has the maximum of \
                 {limit} subscriptions; unsubscribe one first or merge their filters"
            ),
        )
        .with_ref(Some(id.to_owned()))
    }

    /// `internal`: walcast failed to serve a request; `what` says what failed.
    pub fn internal(what: impl fmt::Display) -> Self {
        ProtocolError::new(ErrorCode::Internal, format!("internal error: {what}"))
    }
}

impl From<FilterError> for ProtocolError {
    fn from(error: FilterError) -> Self {
        ProtocolError::new(ErrorCode::InvalidFilter, error.to_string())
    }
}

#[cfg(test)]
mod tests;
