//! Client frames: what a `/ws` client sends (`subscribe`, `unsubscribe`, `resume`, `ping`),
//! parsed and validated field by field into a [`ClientFrame`].

use serde_json::{Map, Value};

use super::table::TableName;
use super::{CLIENT_TYPES, ErrorCode, MAX_FILTERS, MAX_ID_CHARS, MAX_LIST_ITEMS, ProtocolError};
use crate::decode::{Cursor, Operation};
use crate::filter::Filter;

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
    /// The tables it wants (`table`); `None`: every table its role may read.
    pub tables: Option<Vec<TableName>>,
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
pub(super) fn parse_object(
    text: &str,
    expected: &str,
) -> Result<(String, Map<String, Value>), ProtocolError> {
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
    let filter = Filter::from_parts(
        event_types,
        sources,
        ops,
        &f.string_list("filters", MAX_FILTERS)?,
    )?;
    let tables = parse_tables(&f.string_list("table", MAX_LIST_ITEMS)?)?;
    let since = f
        .optional_cursor("since")
        .map_err(|e| e.with_ref(Some(id.clone())))?;
    f.reject_unknown("type, id, event_type, source, ops, filters, table and since")?;
    Ok(ClientFrame::Subscribe(SubscribeRequest {
        id,
        since,
        filter,
        tables,
    }))
}

/// Reads the items of a `table` field: `None` when absent or when one item is `*` (every
/// table); duplicates are dropped.
fn parse_tables(items: &[String]) -> Result<Option<Vec<TableName>>, ProtocolError> {
    if items.is_empty() {
        return Ok(None);
    }
    let mut names: Vec<TableName> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match TableName::parse(item) {
            Ok(None) => return Ok(None),
            Ok(Some(name)) => {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            Err(why) => {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidFilter,
                    format!(
                        "item {} of field `table` in subscribe frame is `{}` ({why}): use \
                         `schema.table`, `table` (schema public), `schema.*` or `*`",
                        i + 1,
                        shorten(item)
                    ),
                ));
            }
        }
    }
    Ok(Some(names))
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
pub(super) struct Fields {
    /// Fields not read yet.
    obj: Map<String, Value>,
    /// The frame's `type`.
    frame: &'static str,
}

impl Fields {
    /// Starts reading the fields of a frame of type `frame`.
    pub(super) fn new(obj: Map<String, Value>, frame: &'static str) -> Self {
        Fields { obj, frame }
    }

    /// A `bad_request` error.
    pub(super) fn bad(&self, message: String) -> ProtocolError {
        ProtocolError::new(ErrorCode::BadRequest, message)
    }

    /// "field `name` in <type> frame", the subject of error messages.
    pub(super) fn field(&self, name: &str) -> String {
        format!("field `{name}` in {} frame", self.frame)
    }

    /// The error for a field of the wrong JSON type.
    pub(super) fn wrong_type(&self, name: &str, expected: &str, got: &Value) -> ProtocolError {
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
    pub(super) fn required(&mut self, name: &str, hint: &str) -> Result<Value, ProtocolError> {
        self.obj.remove(name).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::BadRequest,
                format!("missing field `{name}` in {} frame: {hint}", self.frame),
            )
        })
    }

    /// Removes an optional field; JSON `null` counts as absent.
    pub(super) fn optional(&mut self, name: &str) -> Option<Value> {
        self.obj.remove(name).filter(|v| !v.is_null())
    }

    /// A required string field.
    pub(super) fn string(&mut self, name: &str, hint: &str) -> Result<String, ProtocolError> {
        match self.required(name, hint)? {
            Value::String(s) => Ok(s),
            other => Err(self.wrong_type(name, "a string", &other)),
        }
    }

    /// An optional string field.
    pub(super) fn optional_string(&mut self, name: &str) -> Result<Option<String>, ProtocolError> {
        match self.optional(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(name, "a string", &other)),
        }
    }

    /// The required `id` of a subscription: a string of 1 to [`MAX_ID_CHARS`] characters.
    pub(super) fn id(&mut self) -> Result<String, ProtocolError> {
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
    pub(super) fn string_list(
        &mut self,
        name: &str,
        max: usize,
    ) -> Result<Vec<String>, ProtocolError> {
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
    pub(super) fn reject_unknown(&self, allowed: &str) -> Result<(), ProtocolError> {
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
    pub(super) fn u64(&mut self, name: &str) -> Result<u64, ProtocolError> {
        let value = self.required(name, "walcast always sends it")?;
        value
            .as_u64()
            .ok_or_else(|| self.wrong_type(name, "a non-negative integer", &value))
    }

    /// A required cursor field.
    pub(super) fn cursor(&mut self, name: &str) -> Result<Cursor, ProtocolError> {
        let text = self.string(name, "walcast always sends it")?;
        Cursor::decode(&text)
            .map_err(|e| ProtocolError::new(ErrorCode::InvalidCursor, e.to_string()))
    }

    /// An optional cursor field (`null` when absent).
    pub(super) fn optional_cursor(&mut self, name: &str) -> Result<Option<Cursor>, ProtocolError> {
        self.optional_string(name)?
            .map(|text| {
                Cursor::decode(&text)
                    .map_err(|e| ProtocolError::new(ErrorCode::InvalidCursor, e.to_string()))
            })
            .transpose()
    }

    /// An optional object field (`null` when absent).
    pub(super) fn optional_object(
        &mut self,
        name: &str,
    ) -> Result<Option<Map<String, Value>>, ProtocolError> {
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
pub(super) fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}...", &s[..end]),
    }
}
