//! Reading server frames, for walcast's own client (`walcast tail`, `walcast validate`) and
//! tests.

use serde_json::{Map, Value};

use super::client::{Fields, parse_object, parse_operation, shorten};
use super::{ErrorCode, ProtocolError};
use crate::decode::{Cursor, Operation};

/// A frame sent by the server, as read by a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    /// First frame of every connection.
    Welcome {
        /// Protocol version ([`PROTOCOL_VERSION`]).
        protocol: u64,
        /// `walcast <version>`.
        server: String,
        /// How often heartbeats come, in milliseconds.
        heartbeat_ms: u64,
    },
    /// A subscribe succeeded.
    Subscribed {
        /// The subscription's id.
        id: String,
    },
    /// An unsubscribe succeeded.
    Unsubscribed {
        /// The subscription's id.
        id: String,
    },
    /// A resume's replay is complete.
    Resumed {
        /// The cursor the client resumed from.
        cursor: Cursor,
        /// How many events the replay sent.
        replayed: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's `ref`.
        r#ref: Option<String>,
    },
    /// A change.
    Event(EventFrame),
    /// The connection is alive.
    Heartbeat {
        /// Last cursor delivered on the connection.
        cursor: Option<Cursor>,
    },
    /// A request failed.
    Error(ErrorFrame),
    /// The client fell too far behind; the server closes the connection next.
    Lagged {
        /// Last cursor delivered: resume from it after reconnecting.
        cursor: Option<Cursor>,
        /// Explanation for people.
        message: String,
    },
}

/// An `event` frame as read by a client.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFrame {
    /// Position of the change; resume from it to get what follows.
    pub cursor: Cursor,
    /// `INSERT`, `UPDATE`, `DELETE` or `TRUNCATE` (see [`EventFrame::operation`]).
    pub op: String,
    /// Schema of the changed table.
    pub schema: String,
    /// Name of the changed table.
    pub table: String,
    /// Commit time of the transaction, RFC 3339 UTC.
    pub commit_ts: String,
    /// New row image (INSERT, UPDATE).
    pub record: Option<Map<String, Value>>,
    /// Old row image (DELETE; UPDATE when the table sends it).
    pub old_record: Option<Map<String, Value>>,
    /// Columns left out of the row images because their TOAST value did not change.
    pub unchanged_toast: Vec<String>,
}

impl EventFrame {
    /// The operation, when `op` is one walcast knows.
    pub fn operation(&self) -> Option<Operation> {
        parse_operation(&self.op)
    }
}

/// An `error` frame as read by a client.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorFrame {
    /// The error code as sent (see [`ErrorFrame::error_code`]).
    pub code: String,
    /// Explanation for people.
    pub message: String,
    /// Id or ref of the request the error answers.
    pub r#ref: Option<String>,
    /// For `cursor_expired`: the oldest cursor still available.
    pub oldest: Option<Cursor>,
}

impl ErrorFrame {
    /// The code, when it is one this version of walcast knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_name(&self.code)
    }
}

/// Parses one text frame sent by a walcast server. Fields this version does not know are
/// ignored, so newer servers can add some; an unknown `type` gives an `unknown_type` error.
pub fn parse_server_frame(text: &str) -> Result<ServerFrame, ProtocolError> {
    const SERVER_TYPES: &str = "welcome, subscribed, unsubscribed, resumed, pong, event, \
                                heartbeat, error or lagged";
    let (kind, obj) = parse_object(text, SERVER_TYPES)?;
    let sent = "walcast always sends it";
    Ok(match kind.as_str() {
        "welcome" => {
            let mut f = Fields::new(obj, "welcome");
            ServerFrame::Welcome {
                protocol: f.u64("protocol")?,
                server: f.string("server", sent)?,
                heartbeat_ms: f.u64("heartbeat_ms")?,
            }
        }
        "subscribed" => ServerFrame::Subscribed {
            id: Fields::new(obj, "subscribed").string("id", sent)?,
        },
        "unsubscribed" => ServerFrame::Unsubscribed {
            id: Fields::new(obj, "unsubscribed").string("id", sent)?,
        },
        "resumed" => {
            let mut f = Fields::new(obj, "resumed");
            ServerFrame::Resumed {
                cursor: f.cursor("cursor")?,
                replayed: f.u64("replayed")?,
            }
        }
        "pong" => ServerFrame::Pong {
            r#ref: Fields::new(obj, "pong").optional_string("ref")?,
        },
        "event" => {
            let mut f = Fields::new(obj, "event");
            ServerFrame::Event(EventFrame {
                cursor: f.cursor("cursor")?,
                op: f.string("op", sent)?,
                schema: f.string("schema", sent)?,
                table: f.string("table", sent)?,
                commit_ts: f.string("commit_ts", sent)?,
                record: f.optional_object("record")?,
                old_record: f.optional_object("old_record")?,
                unchanged_toast: f.string_list("unchanged_toast", usize::MAX)?,
            })
        }
        "heartbeat" => ServerFrame::Heartbeat {
            cursor: Fields::new(obj, "heartbeat").optional_cursor("cursor")?,
        },
        "error" => {
            let mut f = Fields::new(obj, "error");
            ServerFrame::Error(ErrorFrame {
                code: f.string("code", sent)?,
                message: f.string("message", sent)?,
                r#ref: f.optional_string("ref")?,
                oldest: f.optional_cursor("oldest")?,
            })
        }
        "lagged" => {
            let mut f = Fields::new(obj, "lagged");
            ServerFrame::Lagged {
                cursor: f.optional_cursor("cursor")?,
                message: f.string("message", sent)?,
            }
        }
        other => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!(
                    "unknown frame type `{}`: expected {SERVER_TYPES}",
                    shorten(other)
                ),
            ));
        }
    })
}
