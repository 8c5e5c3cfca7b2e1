//! The plain JSON protocol of the `/ws` endpoint: one JSON object per WebSocket text frame,
//! told apart by its `"type"` field (user documentation: `docs/protocol-ws.md`).
//!
//! This module owns the frame formats and the error codes and messages clients see:
//! [`parse_client_frame`] turns what a client sends into a [`ClientFrame`], the `encode_*`
//! functions build what the server sends, and [`parse_server_frame`] reads those back for
//! walcast's own client (`walcast tail`) and tests. It never does I/O, keeps no connection state
//! and never decides when a frame is sent; the WebSocket sessions do.
//!
//! Event frames carry nothing specific to a connection, so a change is encoded once by
//! [`encode_event`] and the same text goes to every client that wants it.

use std::fmt::{self, Write as _};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::decode::{Change, Cursor, Operation, Row};
use crate::filter::{Condition, Filter, FilterError};

/// Version of this protocol, sent in the `welcome` frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// WebSocket close code sent after a `lagged` frame: the client fell too far behind.
pub const LAGGED_CLOSE_CODE: u16 = 4008;

/// Longest subscription id (and ping `ref`), in characters.
pub const MAX_ID_CHARS: usize = 64;

/// Most values a subscribe frame may list in `event_type` or `source`.
pub const MAX_LIST_ITEMS: usize = 100;

/// Most column filters one subscription may have.
pub const MAX_FILTERS: usize = 32;

/// The frame types a client may send, for error messages.
const CLIENT_TYPES: &str = "subscribe, unsubscribe, resume or ping";

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
    /// Something went wrong inside walcast.
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownType,
        ErrorCode::BadRequest,
        ErrorCode::InvalidFilter,
        ErrorCode::InvalidCursor,
        ErrorCode::DuplicateSubscription,
        ErrorCode::UnknownSubscription,
        ErrorCode::TooManySubscriptions,
        ErrorCode::CursorExpired,
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

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// Start receiving the changes that match a filter.
    Subscribe(SubscribeRequest),
    /// Stop a subscription.
    Unsubscribe {
        /// The id given when subscribing.
        id: String,
    },
    /// Replay every matching change after this cursor, then carry on live.
    Resume {
        /// The last cursor the client received.
        cursor: Cursor,
    },
    /// Ask for a `pong`.
    Ping {
        /// Echoed back in the `pong`.
        r#ref: Option<String>,
    },
}

/// A subscribe frame: the subscription's id and what it wants.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeRequest {
    /// Client-chosen id, 1 to [`MAX_ID_CHARS`] characters, unique on the connection.
    pub id: String,
    /// Which changes the subscription receives.
    pub filter: Filter,
    /// Resume after this cursor as part of the subscribe (replay, then live, in order).
    pub since: Option<Cursor>,
}

/// Parses one text frame sent by a client.
///
/// Errors carry the code and message for the `error` frame, with `ref` set to the subscription
/// id (or ping `ref`) when the frame has a usable one.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, ProtocolError> {
    let (kind, obj) = parse_object(text, CLIENT_TYPES)?;
    match kind.as_str() {
        "subscribe" => {
            let r#ref = usable_ref(&obj, "id");
            parse_subscribe(Fields::new(obj, "subscribe")).map_err(|e| e.with_ref(r#ref))
        }
        "unsubscribe" => {
            let r#ref = usable_ref(&obj, "id");
            parse_unsubscribe(Fields::new(obj, "unsubscribe")).map_err(|e| e.with_ref(r#ref))
        }
        "resume" => parse_resume(Fields::new(obj, "resume")),
        "ping" => {
            let r#ref = usable_ref(&obj, "ref");
            parse_ping(Fields::new(obj, "ping")).map_err(|e| e.with_ref(r#ref))
        }
        other => Err(ProtocolError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown frame type `{}`: expected {CLIENT_TYPES}",
                shorten(other)
            ),
        )),
    }
}

/// Parses JSON text into an object and removes its string `type` field.
fn parse_object(text: &str, expected: &str) -> Result<(String, Map<String, Value>), ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(
            ErrorCode::BadJson,
            format!("frame is not valid JSON ({e}): send one JSON object per text frame"),
        )
    })?;
    let mut obj = match value {
        Value::Object(obj) => obj,
        other => {
            return Err(ProtocolError::new(
                ErrorCode::BadJson,
                format!(
                    "frame is {}, not a JSON object: send one JSON object with a `type` field \
                     per text frame",
                    json_kind(&other)
                ),
            ));
        }
    };
    match obj.remove("type") {
        Some(Value::String(kind)) => Ok((kind, obj)),
        None => Err(ProtocolError::new(
            ErrorCode::BadRequest,
            format!("missing field `type`: expected {expected}"),
        )),
        Some(other) => Err(ProtocolError::new(
            ErrorCode::BadRequest,
            format!(
                "field `type` must be a string, got {}: expected {expected}",
                json_kind(&other)
            ),
        )),
    }
}

/// The value of a string field usable as an error `ref`: 1 to [`MAX_ID_CHARS`] characters.
fn usable_ref(obj: &Map<String, Value>, field: &str) -> Option<String> {
    obj.get(field)
        .and_then(Value::as_str)
        .filter(|s| id_length_ok(s))
        .map(str::to_owned)
}

/// Whether a subscription id or ping ref has an allowed length.
fn id_length_ok(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= MAX_ID_CHARS
}

/// Reads a subscribe frame.
fn parse_subscribe(mut f: Fields) -> Result<ClientFrame, ProtocolError> {
    let id = f.id()?;
    let event_types = f.string_list("event_type", MAX_LIST_ITEMS)?;
    let sources = f.string_list("source", MAX_LIST_ITEMS)?;
    let mut ops = Vec::new();
    for (i, name) in f.string_list("ops", 4 * MAX_LIST_ITEMS)?.iter().enumerate() {
        let op = parse_operation(name).ok_or_else(|| {
            f.bad(format!(
                "item {} of {} is `{}`: use INSERT, UPDATE, DELETE or TRUNCATE",
                i + 1,
                f.field("ops"),
                shorten(name)
            ))
        })?;
        if !ops.contains(&op) {
            ops.push(op);
        }
    }
    let mut conditions = Vec::new();
    for text in f.string_list("filters", MAX_FILTERS)? {
        conditions.push(Condition::parse(&text)?);
    }
    let since = f
        .optional_cursor("since")
        .map_err(|e| e.with_ref(Some(id.clone())))?;
    f.reject_unknown("type, id, event_type, source, ops, filters and since")?;
    Ok(ClientFrame::Subscribe(SubscribeRequest {
        id,
        since,
        filter: Filter {
            event_types,
            sources,
            ops,
            conditions,
        },
    }))
}

/// Reads an unsubscribe frame.
fn parse_unsubscribe(mut f: Fields) -> Result<ClientFrame, ProtocolError> {
    let id = f.id()?;
    f.reject_unknown("type and id")?;
    Ok(ClientFrame::Unsubscribe { id })
}

/// Reads a resume frame.
fn parse_resume(mut f: Fields) -> Result<ClientFrame, ProtocolError> {
    let text = f.string("cursor", "pass back a cursor exactly as walcast sent it")?;
    f.reject_unknown("type and cursor")?;
    let cursor = Cursor::decode(&text)
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidCursor, e.to_string()))?;
    Ok(ClientFrame::Resume { cursor })
}

/// Reads a ping frame.
fn parse_ping(mut f: Fields) -> Result<ClientFrame, ProtocolError> {
    let r#ref = f.optional_string("ref")?;
    if let Some(r) = &r#ref
        && !id_length_ok(r)
    {
        return Err(f.bad(format!(
            "{} must be 1 to {MAX_ID_CHARS} characters long, got {}",
            f.field("ref"),
            r.chars().count()
        )));
    }
    f.reject_unknown("type and ref")?;
    Ok(ClientFrame::Ping { r#ref })
}

/// Looks an operation up by its SQL name, ignoring ASCII case: `INSERT`, `update`, ...
pub fn parse_operation(name: &str) -> Option<Operation> {
    [
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
    ]
    .into_iter()
    .find(|op| op.as_str().eq_ignore_ascii_case(name))
}

/// The fields of one frame being read, with its type for error messages.
struct Fields {
    /// Fields not read yet.
    obj: Map<String, Value>,
    /// The frame's `type`.
    frame: &'static str,
}

impl Fields {
    /// Starts reading the fields of a frame of type `frame`.
    fn new(obj: Map<String, Value>, frame: &'static str) -> Self {
        Fields { obj, frame }
    }

    /// A `bad_request` error.
    fn bad(&self, message: String) -> ProtocolError {
        ProtocolError::new(ErrorCode::BadRequest, message)
    }

    /// "field `name` in <type> frame", the subject of error messages.
    fn field(&self, name: &str) -> String {
        format!("field `{name}` in {} frame", self.frame)
    }

    /// The error for a field of the wrong JSON type.
    fn wrong_type(&self, name: &str, expected: &str, got: &Value) -> ProtocolError {
        ProtocolError::new(
            ErrorCode::BadRequest,
            format!(
                "{} must be {expected}, got {}",
                self.field(name),
                json_kind(got)
            ),
        )
    }

    /// Removes a required field; `hint` says what to put there when it is missing.
    fn required(&mut self, name: &str, hint: &str) -> Result<Value, ProtocolError> {
        self.obj.remove(name).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::BadRequest,
                format!("missing field `{name}` in {} frame: {hint}", self.frame),
            )
        })
    }

    /// Removes an optional field; JSON `null` counts as absent.
    fn optional(&mut self, name: &str) -> Option<Value> {
        self.obj.remove(name).filter(|v| !v.is_null())
    }

    /// A required string field.
    fn string(&mut self, name: &str, hint: &str) -> Result<String, ProtocolError> {
        match self.required(name, hint)? {
            Value::String(s) => Ok(s),
            other => Err(self.wrong_type(name, "a string", &other)),
        }
    }

    /// An optional string field.
    fn optional_string(&mut self, name: &str) -> Result<Option<String>, ProtocolError> {
        match self.optional(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(name, "a string", &other)),
        }
    }

    /// The required `id` of a subscription: a string of 1 to [`MAX_ID_CHARS`] characters.
    fn id(&mut self) -> Result<String, ProtocolError> {
        let id = self.string(
            "id",
            "give the subscription an id of 1 to 64 characters, e.g. \"id\":\"cpu-alerts\"",
        )?;
        if id_length_ok(&id) {
            Ok(id)
        } else {
            Err(self.bad(format!(
                "{} must be 1 to {MAX_ID_CHARS} characters long, got {}",
                self.field("id"),
                id.chars().count()
            )))
        }
    }

    /// An optional field holding a string or a non-empty array of at most `max` strings;
    /// absent gives an empty list.
    fn string_list(&mut self, name: &str, max: usize) -> Result<Vec<String>, ProtocolError> {
        let expected = "a string or an array of strings";
        match self.optional(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s]),
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    return Err(self.bad(format!(
                        "{} is an empty array: leave it out to match everything",
                        self.field(name)
                    )));
                }
                if items.len() > max {
                    return Err(self.bad(format!(
                        "{} has {} items: at most {max} are allowed",
                        self.field(name),
                        items.len()
                    )));
                }
                let mut list = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) => list.push(s),
                        other => {
                            return Err(self.bad(format!(
                                "item {} of {} must be a string, got {}",
                                i + 1,
                                self.field(name),
                                json_kind(&other)
                            )));
                        }
                    }
                }
                Ok(list)
            }
            Some(other) => Err(self.wrong_type(name, expected, &other)),
        }
    }

    /// Fails when fields are left that the frame does not have; `allowed` lists those it has.
    fn reject_unknown(&self, allowed: &str) -> Result<(), ProtocolError> {
        match self.obj.keys().next() {
            None => Ok(()),
            Some(name) => Err(self.bad(format!(
                "unknown field `{}` in {} frame: its fields are {allowed}",
                shorten(name),
                self.frame
            ))),
        }
    }

    /// A required unsigned integer field.
    fn u64(&mut self, name: &str) -> Result<u64, ProtocolError> {
        let value = self.required(name, "walcast always sends it")?;
        value
            .as_u64()
            .ok_or_else(|| self.wrong_type(name, "a non-negative integer", &value))
    }

    /// A required cursor field.
    fn cursor(&mut self, name: &str) -> Result<Cursor, ProtocolError> {
        let text = self.string(name, "walcast always sends it")?;
        Cursor::decode(&text)
            .map_err(|e| ProtocolError::new(ErrorCode::InvalidCursor, e.to_string()))
    }

    /// An optional cursor field (`null` when absent).
    fn optional_cursor(&mut self, name: &str) -> Result<Option<Cursor>, ProtocolError> {
        self.optional_string(name)?
            .map(|text| {
                Cursor::decode(&text)
                    .map_err(|e| ProtocolError::new(ErrorCode::InvalidCursor, e.to_string()))
            })
            .transpose()
    }

    /// An optional object field (`null` when absent).
    fn optional_object(&mut self, name: &str) -> Result<Option<Map<String, Value>>, ProtocolError> {
        match self.optional(name) {
            None => Ok(None),
            Some(Value::Object(obj)) => Ok(Some(obj)),
            Some(other) => Err(self.wrong_type(name, "an object or null", &other)),
        }
    }
}

/// "a string", "an array", ... for error messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Client text quoted in a message, cut to 64 characters so errors stay short.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}...", &s[..end]),
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding: frames the server sends.
// ---------------------------------------------------------------------------------------------

/// Encodes a change as an `event` frame.
///
/// Fields in order: `type`, `cursor`, `op`, `schema`, `table`, `commit_ts` (RFC 3339 UTC with
/// microseconds), `record`, `old_record` (objects or `null`), then `unchanged_toast` (names of
/// columns left out of the row images because Postgres did not resend their unchanged TOAST
/// value) only when there are any. The same change always gives the same text.
pub fn encode_event(change: &Change) -> String {
    let capacity = 160
        + change.relation.schema.len()
        + change.relation.table.len()
        + change.record.as_ref().map_or(0, estimate_row)
        + change.old_record.as_ref().map_or(0, estimate_row);
    let mut out = String::with_capacity(capacity);
    out.push_str("{\"type\":\"event\",\"cursor\":");
    push_cursor(&mut out, change.cursor);
    out.push_str(",\"op\":\"");
    out.push_str(change.op.as_str());
    out.push_str("\",\"schema\":");
    push_json_str(&mut out, &change.relation.schema);
    out.push_str(",\"table\":");
    push_json_str(&mut out, &change.relation.table);
    out.push_str(",\"commit_ts\":");
    push_timestamp(&mut out, &change.commit_ts);
    out.push_str(",\"record\":");
    push_row(&mut out, change.record.as_ref());
    out.push_str(",\"old_record\":");
    push_row(&mut out, change.old_record.as_ref());
    let toast = change
        .record
        .iter()
        .chain(change.old_record.iter())
        .flat_map(|row| row.unchanged_toast.iter());
    let mut first = true;
    for (i, name) in toast.clone().enumerate() {
        // A column listed by both images is sent once.
        if toast.clone().take(i).any(|seen| seen == name) {
            continue;
        }
        out.push_str(if first { ",\"unchanged_toast\":[" } else { "," });
        first = false;
        push_json_str(&mut out, name);
    }
    if !first {
        out.push(']');
    }
    out.push('}');
    out
}

/// A rough size of a row's JSON text, to size the output buffer once.
fn estimate_row(row: &Row) -> usize {
    row.values
        .iter()
        .map(|(name, value)| {
            name.len()
                + 4
                + match value {
                    Value::String(s) => s.len() + 2,
                    Value::Array(_) | Value::Object(_) => 128,
                    _ => 24,
                }
        })
        .sum::<usize>()
        + 2
}

/// Encodes the `welcome` frame sent when a connection opens.
pub fn encode_welcome(version: &str, heartbeat_ms: u64) -> String {
    let mut out = String::with_capacity(96);
    let _ = write!(
        out,
        "{{\"type\":\"welcome\",\"protocol\":{PROTOCOL_VERSION},\"server\":"
    );
    push_json_str(&mut out, &format!("walcast {version}"));
    let _ = write!(out, ",\"heartbeat_ms\":{heartbeat_ms}}}");
    out
}

/// Encodes `subscribed`, the answer to a successful subscribe.
pub fn encode_subscribed(id: &str) -> String {
    encode_with_id("subscribed", id)
}

/// Encodes `unsubscribed`, the answer to a successful unsubscribe.
pub fn encode_unsubscribed(id: &str) -> String {
    encode_with_id("unsubscribed", id)
}

/// `{"type":kind,"id":id}`.
fn encode_with_id(kind: &str, id: &str) -> String {
    let mut out = String::with_capacity(32 + id.len());
    out.push_str("{\"type\":\"");
    out.push_str(kind);
    out.push_str("\",\"id\":");
    push_json_str(&mut out, id);
    out.push('}');
    out
}

/// Encodes `resumed`: the replay after `cursor` is done and held `replayed` events.
pub fn encode_resumed(cursor: Cursor, replayed: u64) -> String {
    let mut out = String::with_capacity(80);
    out.push_str("{\"type\":\"resumed\",\"cursor\":");
    push_cursor(&mut out, cursor);
    let _ = write!(out, ",\"replayed\":{replayed}}}");
    out
}

/// Encodes `pong`, echoing the ping's `ref` (or `null`).
pub fn encode_pong(r#ref: Option<&str>) -> String {
    let mut out = String::with_capacity(32);
    out.push_str("{\"type\":\"pong\",\"ref\":");
    push_opt_str(&mut out, r#ref);
    out.push('}');
    out
}

/// Encodes `heartbeat` with the last cursor delivered on the connection (or `null`).
pub fn encode_heartbeat(cursor: Option<Cursor>) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("{\"type\":\"heartbeat\",\"cursor\":");
    push_opt_cursor(&mut out, cursor);
    out.push('}');
    out
}

/// Encodes an `error` frame.
pub fn encode_error(error: &ProtocolError) -> String {
    let mut out = String::with_capacity(64 + error.message.len());
    push_error_start(&mut out, error.code, &error.message, error.r#ref.as_deref());
    out.push('}');
    out
}

/// The `cursor_expired` error for a resume from `requested` when the oldest cursor still
/// available is `oldest` (`None` when nothing is retained).
pub fn cursor_expired_error(requested: Cursor, oldest: Option<Cursor>) -> ProtocolError {
    let message = match oldest {
        Some(oldest) => format!(
            "cursor {requested} is older than the retention window: the oldest cursor still \
             available is {oldest}; resume from it to get every change still retained, knowing \
             that changes in between are lost"
        ),
        None => format!(
            "cursor {requested} is older than the retention window and no change is retained \
             yet: carry on without resuming"
        ),
    };
    ProtocolError::new(ErrorCode::CursorExpired, message)
}

/// Encodes the `cursor_expired` error frame, which also has an `oldest` field (`null` when
/// nothing is retained).
pub fn encode_cursor_expired(requested: Cursor, oldest: Option<Cursor>) -> String {
    let error = cursor_expired_error(requested, oldest);
    let mut out = String::with_capacity(96 + error.message.len());
    push_error_start(&mut out, error.code, &error.message, None);
    out.push_str(",\"oldest\":");
    push_opt_cursor(&mut out, oldest);
    out.push('}');
    out
}

/// Encodes `lagged`, sent just before closing with [`LAGGED_CLOSE_CODE`] a connection that fell
/// too far behind; `cursor` is the last one delivered on it.
pub fn encode_lagged(cursor: Option<Cursor>) -> String {
    let message = match cursor {
        Some(cursor) => format!(
            "this connection fell further behind than its queue allows and is being closed \
             (code {LAGGED_CLOSE_CODE}): reconnect, subscribe again and resume from cursor \
             {cursor}"
        ),
        None => format!(
            "this connection fell further behind than its queue allows before any event was \
             delivered and is being closed (code {LAGGED_CLOSE_CODE}): reconnect and subscribe \
             again"
        ),
    };
    let mut out = String::with_capacity(64 + message.len());
    out.push_str("{\"type\":\"lagged\",\"cursor\":");
    push_opt_cursor(&mut out, cursor);
    out.push_str(",\"message\":");
    push_json_str(&mut out, &message);
    out.push('}');
    out
}

/// Writes `{"type":"error","code":..,"message":..,"ref":..` (without the closing brace).
fn push_error_start(out: &mut String, code: ErrorCode, message: &str, r#ref: Option<&str>) {
    out.push_str("{\"type\":\"error\",\"code\":\"");
    out.push_str(code.as_str());
    out.push_str("\",\"message\":");
    push_json_str(out, message);
    out.push_str(",\"ref\":");
    push_opt_str(out, r#ref);
}

/// Writes a row image as a JSON object, or `null`.
fn push_row(out: &mut String, row: Option<&Row>) {
    let Some(row) = row else {
        out.push_str("null");
        return;
    };
    out.push('{');
    for (i, (name, value)) in row.values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, name);
        out.push(':');
        // serde_json's compact form, written straight into `out`.
        let _ = write!(out, "{value}");
    }
    out.push('}');
}

/// Writes a quoted cursor.
fn push_cursor(out: &mut String, cursor: Cursor) {
    out.push('"');
    out.push_str(&cursor.encode());
    out.push('"');
}

/// Writes a quoted cursor, or `null`.
fn push_opt_cursor(out: &mut String, cursor: Option<Cursor>) {
    match cursor {
        Some(cursor) => push_cursor(out, cursor),
        None => out.push_str("null"),
    }
}

/// Writes a JSON string, or `null`.
fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    }
}

/// Writes a timestamp as a quoted RFC 3339 UTC string with microseconds.
fn push_timestamp(out: &mut String, ts: &DateTime<Utc>) {
    out.push('"');
    out.push_str(&ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    out.push('"');
}

/// Writes `s` as a quoted JSON string, escaping `"`, `\` and control characters.
fn push_json_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Escaped bytes are ASCII, so `i` is always a character boundary.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

// ---------------------------------------------------------------------------------------------
// Client side: reading what the server sends.
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Timelike as _};
    use serde_json::json;

    use super::*;
    use crate::decode::{Lsn, Relation};
    use crate::filter::FilterOp;

    fn cursor(lsn: u64, index: u32) -> Cursor {
        Cursor {
            commit_lsn: Lsn(lsn),
            index,
        }
    }

    fn row(value: Value) -> Row {
        let Value::Object(values) = value else {
            panic!("test rows are objects")
        };
        Row {
            values,
            unchanged_toast: Vec::new(),
        }
    }

    fn change(op: Operation, record: Option<Row>, old_record: Option<Row>) -> Change {
        Change {
            cursor: cursor(0x16_B374_D848, 2),
            xid: 900,
            commit_ts: Utc
                .with_ymd_and_hms(2026, 11, 23, 18, 2, 0)
                .unwrap()
                .with_nanosecond(123_456_000)
                .unwrap(),
            relation: Arc::new(Relation {
                oid: 16384,
                schema: "public".into(),
                table: "monitoring_events".into(),
                replica_identity: b'f',
                columns: Arc::from(Vec::new()),
            }),
            op,
            record,
            old_record,
        }
    }

    fn sample_row() -> Row {
        row(json!({
            "created_at": "2026-11-23T18:02:00.000000Z",
            "data": {"cores": 8, "usage": 93.5},
            "event_type": "cpu",
            "id": "0195c1de-0000-7000-8000-000000000001",
            "metadata": null,
            "source": "host-1",
            "timestamp": "2026-11-23T18:01:59.123456Z"
        }))
    }

    fn parse_err(text: &str) -> ProtocolError {
        parse_client_frame(text).expect_err(text)
    }

    fn assert_err(text: &str, code: ErrorCode, message: &str, r#ref: Option<&str>) {
        let e = parse_err(text);
        assert_eq!(e.code, code, "{text}: {}", e.message);
        assert_eq!(e.message, message, "{text}");
        assert_eq!(e.r#ref.as_deref(), r#ref, "{text}");
    }

    #[test]
    fn subscribe_with_everything() {
        let frame = parse_client_frame(
            r#"{"type":"subscribe","id":"a","event_type":["cpu","mem"],"source":"host-1",
                "ops":["INSERT","update","INSERT"],"filters":["severity=gte.3","source=in.(a,b)"]}"#,
        )
        .unwrap();
        let ClientFrame::Subscribe(req) = frame else {
            panic!("not a subscribe: {frame:?}")
        };
        assert_eq!(req.id, "a");
        assert_eq!(req.filter.event_types, ["cpu", "mem"]);
        assert_eq!(req.filter.sources, ["host-1"]);
        assert_eq!(req.filter.ops, [Operation::Insert, Operation::Update]);
        assert_eq!(req.filter.conditions.len(), 2);
        assert_eq!(req.filter.conditions[0].op, FilterOp::Gte);
        assert_eq!(req.filter.conditions[1].to_string(), "source=in.(a,b)");
    }

    #[test]
    fn subscribe_minimal_matches_everything() {
        let frame = parse_client_frame(r#"{"type":"subscribe","id":"x","source":null}"#).unwrap();
        assert_eq!(
            frame,
            ClientFrame::Subscribe(SubscribeRequest {
                id: "x".into(),
                filter: Filter::default(),
                since: None,
            })
        );
        // `since` resumes as part of the subscribe; a malformed one is `invalid_cursor`.
        let c = Cursor {
            commit_lsn: Lsn(0x16_B374_D848),
            index: 2,
        };
        let frame = parse_client_frame(&format!(
            r#"{{"type":"subscribe","id":"x","since":"{}"}}"#,
            c.encode()
        ))
        .unwrap();
        assert!(
            matches!(frame, ClientFrame::Subscribe(SubscribeRequest { since: Some(s), .. }) if s == c)
        );
        let e = parse_client_frame(r#"{"type":"subscribe","id":"x","since":"nope"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidCursor);
        assert_eq!(e.r#ref.as_deref(), Some("x"));
        let long_id = "é".repeat(64);
        let frame = parse_client_frame(&format!(r#"{{"type":"subscribe","id":"{long_id}"}}"#));
        assert!(
            frame.is_ok(),
            "64 characters are allowed even if more bytes"
        );
    }

    #[test]
    fn other_client_frames() {
        assert_eq!(
            parse_client_frame(r#"{"type":"unsubscribe","id":"a"}"#).unwrap(),
            ClientFrame::Unsubscribe { id: "a".into() }
        );
        let c = cursor(0x16_B374_D848, 2);
        assert_eq!(
            parse_client_frame(&format!(r#"{{"type":"resume","cursor":"{c}"}}"#)).unwrap(),
            ClientFrame::Resume { cursor: c }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ping","ref":"p1"}"#).unwrap(),
            ClientFrame::Ping {
                r#ref: Some("p1".into())
            }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping { r#ref: None }
        );
        assert_eq!(
            parse_client_frame(r#" {"ref":null,"type":"ping"} "#).unwrap(),
            ClientFrame::Ping { r#ref: None }
        );
    }

    #[test]
    fn bad_json_errors() {
        let e = parse_err("{\"type\":");
        assert_eq!(e.code, ErrorCode::BadJson);
        assert!(
            e.message
                .starts_with("frame is not valid JSON (EOF while parsing"),
            "{}",
            e.message
        );
        assert!(
            e.message
                .ends_with("): send one JSON object per text frame")
        );
        assert_eq!(e.r#ref, None);
        assert_eq!(parse_err("").code, ErrorCode::BadJson);
        assert_err(
            r#"["subscribe"]"#,
            ErrorCode::BadJson,
            "frame is an array, not a JSON object: send one JSON object with a `type` field per \
             text frame",
            None,
        );
        assert_err(
            "42",
            ErrorCode::BadJson,
            "frame is a number, not a JSON object: send one JSON object with a `type` field per \
             text frame",
            None,
        );
    }

    #[test]
    fn type_errors() {
        assert_err(
            r#"{"id":"a"}"#,
            ErrorCode::BadRequest,
            "missing field `type`: expected subscribe, unsubscribe, resume or ping",
            None,
        );
        assert_err(
            r#"{"type":7}"#,
            ErrorCode::BadRequest,
            "field `type` must be a string, got a number: expected subscribe, unsubscribe, \
             resume or ping",
            None,
        );
        assert_err(
            r#"{"type":"subscribed","id":"a"}"#,
            ErrorCode::UnknownType,
            "unknown frame type `subscribed`: expected subscribe, unsubscribe, resume or ping",
            None,
        );
        let long = "t".repeat(100);
        let e = parse_err(&format!(r#"{{"type":"{long}"}}"#));
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert!(e.message.contains(&format!("`{}...`", "t".repeat(64))));
    }

    #[test]
    fn subscribe_errors() {
        let hint = "give the subscription an id of 1 to 64 characters, e.g. \"id\":\"cpu-alerts\"";
        assert_err(
            r#"{"type":"subscribe"}"#,
            ErrorCode::BadRequest,
            &format!("missing field `id` in subscribe frame: {hint}"),
            None,
        );
        assert_err(
            r#"{"type":"subscribe","id":5}"#,
            ErrorCode::BadRequest,
            "field `id` in subscribe frame must be a string, got a number",
            None,
        );
        assert_err(
            r#"{"type":"subscribe","id":null}"#,
            ErrorCode::BadRequest,
            "field `id` in subscribe frame must be a string, got null",
            None,
        );
        assert_err(
            r#"{"type":"subscribe","id":""}"#,
            ErrorCode::BadRequest,
            "field `id` in subscribe frame must be 1 to 64 characters long, got 0",
            None,
        );
        assert_err(
            &format!(r#"{{"type":"subscribe","id":"{}"}}"#, "x".repeat(65)),
            ErrorCode::BadRequest,
            "field `id` in subscribe frame must be 1 to 64 characters long, got 65",
            None,
        );
        assert_err(
            r#"{"type":"subscribe","id":"a","event_type":3}"#,
            ErrorCode::BadRequest,
            "field `event_type` in subscribe frame must be a string or an array of strings, got \
             a number",
            Some("a"),
        );
        assert_err(
            r#"{"type":"subscribe","id":"a","source":[]}"#,
            ErrorCode::BadRequest,
            "field `source` in subscribe frame is an empty array: leave it out to match \
             everything",
            Some("a"),
        );
        assert_err(
            r#"{"type":"subscribe","id":"a","source":["h",true]}"#,
            ErrorCode::BadRequest,
            "item 2 of field `source` in subscribe frame must be a string, got a boolean",
            Some("a"),
        );
        let many: Vec<String> = (0..101).map(|i| format!("\"s{i}\"")).collect();
        assert_err(
            &format!(
                r#"{{"type":"subscribe","id":"a","event_type":[{}]}}"#,
                many.join(",")
            ),
            ErrorCode::BadRequest,
            "field `event_type` in subscribe frame has 101 items: at most 100 are allowed",
            Some("a"),
        );
        assert_err(
            r#"{"type":"subscribe","id":"a","ops":["INSERT","UPSERT"]}"#,
            ErrorCode::BadRequest,
            "item 2 of field `ops` in subscribe frame is `UPSERT`: use INSERT, UPDATE, DELETE \
             or TRUNCATE",
            Some("a"),
        );
        assert_err(
            r#"{"type":"subscribe","id":"a","filters":"source=like.x"}"#,
            ErrorCode::InvalidFilter,
            "unknown operator `like` in filter `source=like.x`: use eq, neq, lt, lte, gt, gte \
             or in",
            Some("a"),
        );
        assert_err(
            r#"{"type":"subscribe","id":"a","filters":["source=eq.x",{"col":"x"}]}"#,
            ErrorCode::BadRequest,
            "item 2 of field `filters` in subscribe frame must be a string, got an object",
            Some("a"),
        );
        let filters: Vec<String> = (0..33).map(|i| format!("\"c{i}=eq.1\"")).collect();
        assert_err(
            &format!(
                r#"{{"type":"subscribe","id":"a","filters":[{}]}}"#,
                filters.join(",")
            ),
            ErrorCode::BadRequest,
            "field `filters` in subscribe frame has 33 items: at most 32 are allowed",
            Some("a"),
        );
        assert_err(
            r#"{"type":"subscribe","id":"a","filter":"source=eq.x"}"#,
            ErrorCode::BadRequest,
            "unknown field `filter` in subscribe frame: its fields are type, id, event_type, \
             source, ops, filters and since",
            Some("a"),
        );
    }

    #[test]
    fn unsubscribe_resume_and_ping_errors() {
        assert_err(
            r#"{"type":"unsubscribe"}"#,
            ErrorCode::BadRequest,
            "missing field `id` in unsubscribe frame: give the subscription an id of 1 to 64 \
             characters, e.g. \"id\":\"cpu-alerts\"",
            None,
        );
        assert_err(
            r#"{"type":"unsubscribe","id":"a","all":true}"#,
            ErrorCode::BadRequest,
            "unknown field `all` in unsubscribe frame: its fields are type and id",
            Some("a"),
        );
        assert_err(
            r#"{"type":"resume"}"#,
            ErrorCode::BadRequest,
            "missing field `cursor` in resume frame: pass back a cursor exactly as walcast sent it",
            None,
        );
        assert_err(
            r#"{"type":"resume","cursor":12}"#,
            ErrorCode::BadRequest,
            "field `cursor` in resume frame must be a string, got a number",
            None,
        );
        assert_err(
            r#"{"type":"resume","cursor":"16/B374D848"}"#,
            ErrorCode::InvalidCursor,
            "invalid cursor \"16/B374D848\": pass back a cursor exactly as walcast sent it",
            None,
        );
        assert_err(
            r#"{"type":"ping","ref":1}"#,
            ErrorCode::BadRequest,
            "field `ref` in ping frame must be a string, got a number",
            None,
        );
        assert_err(
            &format!(r#"{{"type":"ping","ref":"{}"}}"#, "r".repeat(65)),
            ErrorCode::BadRequest,
            "field `ref` in ping frame must be 1 to 64 characters long, got 65",
            None,
        );
        assert_err(
            r#"{"type":"ping","ref":"p","x":1}"#,
            ErrorCode::BadRequest,
            "unknown field `x` in ping frame: its fields are type and ref",
            Some("p"),
        );
    }

    #[test]
    fn session_error_constructors() {
        let e = ProtocolError::duplicate_subscription("a");
        assert_eq!(
            encode_error(&e),
            r#"{"type":"error","code":"duplicate_subscription","message":"subscription `a` already exists on this connection: unsubscribe it first or use another id","ref":"a"}"#
        );
        let e = ProtocolError::unknown_subscription("b");
        assert_eq!(
            encode_error(&e),
            r#"{"type":"error","code":"unknown_subscription","message":"no subscription `b` on this connection: nothing was unsubscribed","ref":"b"}"#
        );
        let e = ProtocolError::too_many_subscriptions("c", 16);
        assert_eq!(e.code, ErrorCode::TooManySubscriptions);
        assert_eq!(
            e.message,
            "subscription `c` was refused: this connection already has the maximum of 16 \
             subscriptions; unsubscribe one first or merge their filters"
        );
        assert_eq!(e.r#ref.as_deref(), Some("c"));
        let e = ProtocolError::internal("replay failed");
        assert_eq!(
            encode_error(&e),
            r#"{"type":"error","code":"internal","message":"internal error: replay failed","ref":null}"#
        );
        let e: ProtocolError = Condition::parse("x").unwrap_err().into();
        assert_eq!(e.code, ErrorCode::InvalidFilter);
        assert_eq!(e.to_string(), format!("invalid_filter: {}", e.message));
    }

    #[test]
    fn error_codes_round_trip() {
        let names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad_json",
                "unknown_type",
                "bad_request",
                "invalid_filter",
                "invalid_cursor",
                "duplicate_subscription",
                "unknown_subscription",
                "too_many_subscriptions",
                "cursor_expired",
                "internal"
            ]
        );
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
            let text = encode_error(&ProtocolError::new(code, "m").with_ref(Some("r".into())));
            let ServerFrame::Error(frame) = parse_server_frame(&text).unwrap() else {
                panic!("{text}")
            };
            assert_eq!(frame.error_code(), Some(code));
            assert_eq!(frame.message, "m");
            assert_eq!(frame.r#ref.as_deref(), Some("r"));
        }
        assert_eq!(ErrorCode::from_name("nope"), None);
    }

    #[test]
    fn event_encoding_is_exact_and_deterministic() {
        let c = change(Operation::Insert, Some(sample_row()), None);
        let text = encode_event(&c);
        assert_eq!(
            text,
            concat!(
                r#"{"type":"event","cursor":"00000016b374d84800000002","op":"INSERT","#,
                r#""schema":"public","table":"monitoring_events","#,
                r#""commit_ts":"2026-11-23T18:02:00.123456Z","#,
                r#""record":{"created_at":"2026-11-23T18:02:00.000000Z","#,
                r#""data":{"cores":8,"usage":93.5},"event_type":"cpu","#,
                r#""id":"0195c1de-0000-7000-8000-000000000001","metadata":null,"#,
                r#""source":"host-1","timestamp":"2026-11-23T18:01:59.123456Z"},"#,
                r#""old_record":null}"#
            )
        );
        assert_eq!(encode_event(&c), text);
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["record"], Value::Object(sample_row().values));
    }

    #[test]
    fn event_round_trips_through_the_client_parser() {
        let mut record = sample_row();
        record.values.remove("data");
        record.unchanged_toast = vec!["data".into()];
        let mut old = sample_row();
        old.values.insert("source".into(), json!("host-0"));
        let c = change(Operation::Update, Some(record.clone()), Some(old.clone()));
        let text = encode_event(&c);
        assert!(text.ends_with(r#","unchanged_toast":["data"]}"#), "{text}");
        let ServerFrame::Event(event) = parse_server_frame(&text).unwrap() else {
            panic!("{text}")
        };
        assert_eq!(
            event,
            EventFrame {
                cursor: c.cursor,
                op: "UPDATE".into(),
                schema: "public".into(),
                table: "monitoring_events".into(),
                commit_ts: "2026-11-23T18:02:00.123456Z".into(),
                record: Some(record.values),
                old_record: Some(old.values),
                unchanged_toast: vec!["data".into()],
            }
        );
        assert_eq!(event.operation(), Some(Operation::Update));

        for (op, record, old) in [
            (Operation::Delete, None, Some(sample_row())),
            (Operation::Truncate, None, None),
            (Operation::Insert, Some(Row::default()), None),
        ] {
            let c = change(op, record.clone(), old.clone());
            let text = encode_event(&c);
            assert!(!text.contains("unchanged_toast"));
            let ServerFrame::Event(event) = parse_server_frame(&text).unwrap() else {
                panic!("{text}")
            };
            assert_eq!(event.operation(), Some(op));
            assert_eq!(event.record, record.map(|r| r.values));
            assert_eq!(event.old_record, old.map(|r| r.values));
            assert!(event.unchanged_toast.is_empty());
        }
    }

    #[test]
    fn unchanged_toast_is_listed_once() {
        let mut record = row(json!({"id": 1}));
        record.unchanged_toast = vec!["data".into(), "metadata".into()];
        let mut old = row(json!({"id": 1}));
        old.unchanged_toast = vec!["metadata".into(), "extra".into()];
        let text = encode_event(&change(Operation::Update, Some(record), Some(old)));
        assert!(
            text.ends_with(r#","unchanged_toast":["data","metadata","extra"]}"#),
            "{text}"
        );
    }

    #[test]
    fn odd_strings_are_escaped() {
        let odd = [
            "plain",
            "",
            "quote \" backslash \\ slash /",
            "new\nline\r\ttab\u{8}\u{c}",
            "nul \u{0} unit \u{1f} del \u{7f}",
            "unicode é ✓ 🦀 \u{2028}\u{2029}",
            "\\u0041 not an escape",
        ];
        for s in odd {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s);
        }
        let mut r = row(json!({}));
        for (i, s) in odd.iter().enumerate() {
            r.values.insert(format!("k{i}{s}"), json!(s));
        }
        let mut c = change(Operation::Insert, Some(r.clone()), None);
        c.relation = Arc::new(Relation {
            schema: "we\"ird".into(),
            table: "t\\\n".into(),
            ..(*c.relation).clone()
        });
        let ServerFrame::Event(event) = parse_server_frame(&encode_event(&c)).unwrap() else {
            panic!()
        };
        assert_eq!(event.schema, "we\"ird");
        assert_eq!(event.table, "t\\\n");
        assert_eq!(event.record, Some(r.values));

        let text = encode_subscribed("a\"b\n");
        assert_eq!(text, r#"{"type":"subscribed","id":"a\"b\n"}"#);
        assert_eq!(
            parse_server_frame(&text).unwrap(),
            ServerFrame::Subscribed {
                id: "a\"b\n".into()
            }
        );
    }

    #[test]
    fn control_frames_encode_and_parse_back() {
        let c = cursor(0x16_B374_D848, 2);
        let cases = [
            (
                encode_welcome("0.1.0", 15_000),
                r#"{"type":"welcome","protocol":1,"server":"walcast 0.1.0","heartbeat_ms":15000}"#,
                ServerFrame::Welcome {
                    protocol: 1,
                    server: "walcast 0.1.0".into(),
                    heartbeat_ms: 15_000,
                },
            ),
            (
                encode_subscribed("a"),
                r#"{"type":"subscribed","id":"a"}"#,
                ServerFrame::Subscribed { id: "a".into() },
            ),
            (
                encode_unsubscribed("a"),
                r#"{"type":"unsubscribed","id":"a"}"#,
                ServerFrame::Unsubscribed { id: "a".into() },
            ),
            (
                encode_resumed(c, 42),
                r#"{"type":"resumed","cursor":"00000016b374d84800000002","replayed":42}"#,
                ServerFrame::Resumed {
                    cursor: c,
                    replayed: 42,
                },
            ),
            (
                encode_pong(Some("p1")),
                r#"{"type":"pong","ref":"p1"}"#,
                ServerFrame::Pong {
                    r#ref: Some("p1".into()),
                },
            ),
            (
                encode_pong(None),
                r#"{"type":"pong","ref":null}"#,
                ServerFrame::Pong { r#ref: None },
            ),
            (
                encode_heartbeat(Some(c)),
                r#"{"type":"heartbeat","cursor":"00000016b374d84800000002"}"#,
                ServerFrame::Heartbeat { cursor: Some(c) },
            ),
            (
                encode_heartbeat(None),
                r#"{"type":"heartbeat","cursor":null}"#,
                ServerFrame::Heartbeat { cursor: None },
            ),
        ];
        for (text, expected_text, expected) in cases {
            assert_eq!(text, expected_text);
            assert_eq!(parse_server_frame(&text).unwrap(), expected);
        }
    }

    #[test]
    fn cursor_expired_frame() {
        let requested = cursor(0x10, 0);
        let oldest = cursor(0x20, 3);
        let text = encode_cursor_expired(requested, Some(oldest));
        assert_eq!(
            text,
            concat!(
                r#"{"type":"error","code":"cursor_expired","message":"cursor "#,
                r#"000000000000001000000000 is older than the retention window: "#,
                r#"the oldest cursor still available is 000000000000002000000003; "#,
                r#"resume from it to get every change still retained, knowing that changes "#,
                r#"in between are lost","ref":null,"oldest":"000000000000002000000003"}"#
            )
        );
        let ServerFrame::Error(frame) = parse_server_frame(&text).unwrap() else {
            panic!()
        };
        assert_eq!(frame.error_code(), Some(ErrorCode::CursorExpired));
        assert_eq!(frame.oldest, Some(oldest));
        assert_eq!(
            frame.message,
            cursor_expired_error(requested, Some(oldest)).message
        );

        let text = encode_cursor_expired(requested, None);
        assert!(text.ends_with(r#"carry on without resuming","ref":null,"oldest":null}"#));
        let ServerFrame::Error(frame) = parse_server_frame(&text).unwrap() else {
            panic!()
        };
        assert_eq!(frame.oldest, None);
    }

    #[test]
    fn lagged_frame() {
        let c = cursor(0x16_B374_D848, 2);
        let text = encode_lagged(Some(c));
        assert_eq!(
            text,
            concat!(
                r#"{"type":"lagged","cursor":"00000016b374d84800000002","message":"#,
                r#""this connection fell further behind than its queue allows and is being "#,
                r#"closed (code 4008): reconnect, subscribe again and resume from cursor "#,
                r#"00000016b374d84800000002"}"#
            )
        );
        let ServerFrame::Lagged { cursor, message } = parse_server_frame(&text).unwrap() else {
            panic!()
        };
        assert_eq!(cursor, Some(c));
        assert!(message.contains("resume from cursor 00000016b374d84800000002"));
        let ServerFrame::Lagged { cursor, message } =
            parse_server_frame(&encode_lagged(None)).unwrap()
        else {
            panic!()
        };
        assert_eq!(cursor, None);
        assert!(message.contains("before any event was delivered"));
    }

    #[test]
    fn server_parser_tolerates_new_fields_and_reports_bad_frames() {
        assert_eq!(
            parse_server_frame(r#"{"type":"subscribed","id":"a","extra":1}"#).unwrap(),
            ServerFrame::Subscribed { id: "a".into() }
        );
        let e = parse_server_frame(r#"{"type":"presence"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        let e = parse_server_frame(r#"{"type":"event","cursor":"zz"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidCursor);
        let e = parse_server_frame(r#"{"type":"resumed","cursor":"000000000000001000000000"}"#)
            .unwrap_err();
        assert_eq!(
            e.message,
            "missing field `replayed` in resumed frame: walcast always sends it"
        );
        let e = parse_server_frame("nope").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
    }
}
