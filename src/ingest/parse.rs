//! Request bodies to validated events: one JSON object, a JSON array, or NDJSON.
//!
//! Validation is all-or-nothing: the first invalid event rejects the whole request, with its
//! index and field, and nothing of the request is written.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::{IngestError, IngestErrorCode};
use super::jsonb_size::jsonb_text_len;
use crate::events::EventRecord;

/// Longest accepted `event_type`, in characters.
pub const MAX_EVENT_TYPE_CHARS: usize = 128;
/// Longest accepted `source`, in characters.
pub const MAX_SOURCE_CHARS: usize = 256;
/// Largest accepted `data`, as serialized JSON bytes.
pub const MAX_DATA_BYTES: usize = 1 << 20;
/// Largest accepted `metadata`, as serialized JSON bytes.
pub const MAX_METADATA_BYTES: usize = 64 << 10;

/// The earliest `timestamptz` Postgres stores (4714-11-24 00:00:00 UTC BC), in Unix
/// microseconds; an earlier one would pass validation and then fail the database write.
const PG_MIN_TIMESTAMP_MICROS: i64 = -210_866_803_200_000_000;

/// The body's format, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`: one object or an array of objects.
    Json,
    /// `application/x-ndjson` (or `application/ndjson`, `application/jsonl`): one object per line.
    Ndjson,
}

impl BodyFormat {
    /// The format for a Content-Type header value, or an `unsupported_media_type` error.
    pub fn from_content_type(value: Option<&str>) -> Result<Self, IngestError> {
        let mime = value
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/json" => Ok(BodyFormat::Json),
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines" => Ok(BodyFormat::Ndjson),
            "" => Err(IngestError::new(
                IngestErrorCode::UnsupportedMediaType,
                "missing Content-Type: send application/json (an event or an array of events) or application/x-ndjson (one event per line)",
            )),
            other => Err(IngestError::new(
                IngestErrorCode::UnsupportedMediaType,
                format!(
                    "unsupported Content-Type {other:?}: send application/json (an event or an array of events) or application/x-ndjson (one event per line)"
                ),
            )),
        }
    }
}

/// Parses and validates a body into events. `max_events` bounds the count.
///
/// The body is read straight into per-event field slots ([`RawEvent`]) rather than a generic
/// JSON tree per event; the whole body is read before any event is validated, so a malformed
/// body is reported as `malformed_json` even when an earlier event is invalid.
pub fn parse_body(
    body: &[u8],
    format: BodyFormat,
    max_events: usize,
    now: DateTime<Utc>,
) -> Result<Vec<EventRecord>, IngestError> {
    let items: Vec<RawItem> = match format {
        BodyFormat::Json => match serde_json::from_slice::<RawBody>(body) {
            Ok(RawBody::Array(items)) => items,
            Ok(RawBody::Object(event)) => vec![RawItem(Some(*event))],
            Ok(RawBody::Other) => {
                return Err(IngestError::new(
                    IngestErrorCode::MalformedJson,
                    "the body must be a JSON object (one event) or an array of objects",
                ));
            }
            Err(e) => {
                return Err(IngestError::new(
                    IngestErrorCode::MalformedJson,
                    format!(
                        "malformed JSON at line {} column {}: {}",
                        e.line(),
                        e.column(),
                        classify(&e)
                    ),
                ));
            }
        },
        BodyFormat::Ndjson => {
            let mut out = Vec::new();
            for (i, line) in body.split(|b| *b == b'\n').enumerate() {
                let trimmed = trim_ascii(line);
                if trimmed.is_empty() {
                    continue;
                }
                if out.len() >= max_events {
                    return Err(too_many(max_events));
                }
                let item: RawItem = serde_json::from_slice(trimmed).map_err(|e| IngestError {
                    code: IngestErrorCode::MalformedJson,
                    message: format!(
                        "malformed JSON on NDJSON line {} column {}: {}",
                        i + 1,
                        e.column(),
                        classify(&e)
                    ),
                    index: Some(out.len()),
                    field: None,
                })?;
                out.push(item);
            }
            out
        }
    };
    if items.is_empty() {
        return Err(IngestError::new(
            IngestErrorCode::EmptyBatch,
            "the request holds no event: send at least one",
        ));
    }
    if items.len() > max_events {
        return Err(too_many(max_events));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| validate_item(i, item, now))
        .collect()
}

/// The `too_many_events` error.
fn too_many(max: usize) -> IngestError {
    IngestError::new(
        IngestErrorCode::TooManyEvents,
        format!("more than {max} events in one request: split it into smaller requests"),
    )
}

/// A short description of a serde_json error without its position suffix.
fn classify(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Trims ASCII whitespace (and a CR) from both ends.
fn trim_ascii(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// A whole `application/json` body as read, before validation.
enum RawBody {
    /// An array: one item per element.
    Array(Vec<RawItem>),
    /// A single object: one event.
    Object(Box<RawEvent>),
    /// Any other JSON value (rejected: a body is an object or an array).
    Other,
}

/// One element of a body as read, before validation: the members of a JSON object, or `None`
/// for any other JSON value (rejected as "not a JSON object").
struct RawItem(Option<RawEvent>);

/// The members of one event object, each in its own slot, as the producer sent them.
///
/// Reading into slots gives the same outcome as reading the object into a JSON map first: a
/// repeated member keeps its last value, and of several unknown members the one reported is
/// the first in byte order of the names.
#[derive(Debug, Default)]
struct RawEvent {
    /// `id`, if present (`null` included).
    id: Option<Value>,
    /// `event_type`, if present.
    event_type: Option<Value>,
    /// `timestamp`, if present.
    timestamp: Option<Value>,
    /// `source`, if present.
    source: Option<Value>,
    /// `data`, if present.
    data: Option<Value>,
    /// `metadata`, if present.
    metadata: Option<Value>,
    /// The smallest member name that is not an event field, if any.
    unknown: Option<String>,
}

impl RawEvent {
    /// Stores one member.
    fn set(&mut self, key: EventKey, value: Value) {
        let slot = match key {
            EventKey::Id => &mut self.id,
            EventKey::EventType => &mut self.event_type,
            EventKey::Timestamp => &mut self.timestamp,
            EventKey::Source => &mut self.source,
            EventKey::Data => &mut self.data,
            EventKey::Metadata => &mut self.metadata,
            EventKey::Unknown(name) => {
                if self.unknown.as_ref().is_none_or(|u| name < *u) {
                    self.unknown = Some(name);
                }
                return;
            }
        };
        *slot = Some(value);
    }
}

/// A member name of an event object.
#[derive(Debug)]
enum EventKey {
    /// `id`.
    Id,
    /// `event_type`.
    EventType,
    /// `timestamp`.
    Timestamp,
    /// `source`.
    Source,
    /// `data`.
    Data,
    /// `metadata`.
    Metadata,
    /// Anything else.
    Unknown(String),
}

impl EventKey {
    /// The key for a member name.
    fn from_name(name: &str) -> EventKey {
        match name {
            "id" => EventKey::Id,
            "event_type" => EventKey::EventType,
            "timestamp" => EventKey::Timestamp,
            "source" => EventKey::Source,
            "data" => EventKey::Data,
            "metadata" => EventKey::Metadata,
            other => EventKey::Unknown(other.to_owned()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for EventKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Reads a member name without allocating for the known ones.
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = EventKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EventKey, E> {
                Ok(EventKey::from_name(v))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Reads the members of an object into a [`RawEvent`].
fn read_event<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<RawEvent, A::Error> {
    let mut raw = RawEvent::default();
    while let Some(key) = map.next_key::<EventKey>()? {
        let value: Value = map.next_value()?;
        raw.set(key, value);
    }
    Ok(raw)
}

/// Reads (and checks) the elements of an array that is not used.
fn skip_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    // Read as JSON values, not skipped bytes, so the body is checked exactly as strictly
    // (UTF-8 included) as any other value.
    while seq.next_element::<Value>()?.is_some() {}
    Ok(())
}

/// Implements the scalar `visit_*` methods of a visitor as "some other value".
macro_rules! other_scalars {
    ($other:expr) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

impl<'de> serde::Deserialize<'de> for RawItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Reads one element of a body.
        struct ItemVisitor;
        impl<'de> serde::de::Visitor<'de> for ItemVisitor {
            type Value = RawItem;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawItem, A::Error> {
                read_event(map).map(|e| RawItem(Some(e)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawItem, A::Error> {
                skip_seq(seq).map(|()| RawItem(None))
            }
            other_scalars!(RawItem(None));
        }
        d.deserialize_any(ItemVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for RawBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Reads a whole `application/json` body.
        struct BodyVisitor;
        impl<'de> serde::de::Visitor<'de> for BodyVisitor {
            type Value = RawBody;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawBody, A::Error> {
                read_event(map).map(|e| RawBody::Object(Box::new(e)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawBody, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(item) = seq.next_element::<RawItem>()? {
                    items.push(item);
                }
                Ok(RawBody::Array(items))
            }
            other_scalars!(RawBody::Other);
        }
        d.deserialize_any(BodyVisitor)
    }
}

/// Validates one element of a body.
fn validate_item(
    index: usize,
    item: RawItem,
    now: DateTime<Utc>,
) -> Result<EventRecord, IngestError> {
    let RawItem(Some(raw)) = item else {
        // The event itself is at fault, not one of its fields: no `field`.
        return Err(IngestError {
            field: None,
            ..IngestError::invalid(index, "", format!("event {index} is not a JSON object"))
        });
    };
    if let Some(key) = &raw.unknown {
        return Err(IngestError::invalid(
            index,
            key,
            format!(
                "event {index}: unknown field {key:?}; an event has id, event_type, timestamp, source, data and metadata (put anything else in data or metadata)"
            ),
        ));
    }
    let event_type = required_text(raw.event_type, index, "event_type", MAX_EVENT_TYPE_CHARS)?;
    let source = required_text(raw.source, index, "source", MAX_SOURCE_CHARS)?;
    let id = match raw.id {
        None | Some(Value::Null) => fresh_id(),
        Some(Value::String(s)) => Uuid::parse_str(&s).map_err(|_| {
            IngestError::invalid(
                index,
                "id",
                format!("event {index}: id {s:?} is not a UUID"),
            )
        })?,
        Some(_) => {
            return Err(IngestError::invalid(
                index,
                "id",
                format!("event {index}: id must be a UUID string"),
            ));
        }
    };
    let timestamp = match raw.timestamp {
        None | Some(Value::Null) => now,
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                IngestError::invalid(
                    index,
                    "timestamp",
                    format!(
                        "event {index}: timestamp {s:?} is not RFC 3339 (e.g. 2026-11-23T18:00:00Z)"
                    ),
                )
            })?,
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(|secs| {
                DateTime::from_timestamp_micros((secs * 1e6) as i64)
                    .filter(|t| secs.is_finite() && t.timestamp_micros() >= PG_MIN_TIMESTAMP_MICROS)
            })
            .ok_or_else(|| {
                IngestError::invalid(
                    index,
                    "timestamp",
                    format!("event {index}: numeric timestamp {n} is out of range"),
                )
            })?,
        Some(_) => {
            return Err(IngestError::invalid(
                index,
                "timestamp",
                format!("event {index}: timestamp must be an RFC 3339 string or Unix seconds"),
            ));
        }
    };
    let data = object_field(raw.data, index, "data", MAX_DATA_BYTES)?;
    let metadata = object_field(raw.metadata, index, "metadata", MAX_METADATA_BYTES)?;
    Ok(EventRecord {
        id,
        event_type,
        timestamp,
        source,
        data,
        metadata,
    })
}

/// A required, non-empty, bounded string field.
fn required_text(
    value: Option<Value>,
    index: usize,
    field: &str,
    max_chars: usize,
) -> Result<String, IngestError> {
    match value {
        Some(Value::String(s)) => {
            let trimmed_empty = s.trim().is_empty();
            let chars = s.chars().count();
            if trimmed_empty {
                Err(IngestError::invalid(
                    index,
                    field,
                    format!("event {index}: {field} must not be empty"),
                ))
            } else if chars > max_chars {
                Err(IngestError::invalid(
                    index,
                    field,
                    format!(
                        "event {index}: {field} has {chars} characters; the limit is {max_chars}"
                    ),
                ))
            } else if s.contains('\0') {
                Err(IngestError::invalid(
                    index,
                    field,
                    format!("event {index}: {field} must not contain NUL characters"),
                ))
            } else {
                Ok(s)
            }
        }
        None | Some(Value::Null) => Err(IngestError::invalid(
            index,
            field,
            format!("event {index}: {field} is required"),
        )),
        Some(_) => Err(IngestError::invalid(
            index,
            field,
            format!("event {index}: {field} must be a string"),
        )),
    }
}

/// An optional JSON-object field with a size bound.
fn object_field(
    value: Option<Value>,
    index: usize,
    field: &str,
    max_bytes: usize,
) -> Result<Map<String, Value>, IngestError> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            let size = jsonb_text_len(&m);
            if size > max_bytes {
                return Err(IngestError::invalid(
                    index,
                    field,
                    format!(
                        "event {index}: {field} is {size} bytes of JSON; the limit is {max_bytes}"
                    ),
                ));
            }
            if m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)) {
                return Err(IngestError::invalid(
                    index,
                    field,
                    format!(
                        "event {index}: {field} contains a \\u0000 character, which Postgres jsonb cannot store"
                    ),
                ));
            }
            Ok(m)
        }
        Some(_) => Err(IngestError::invalid(
            index,
            field,
            format!("event {index}: {field} must be a JSON object"),
        )),
    }
}

/// A new time-ordered UUIDv7 for an event sent without an id: [`Uuid::now_v7`].
///
/// Ids from one process are strictly increasing: uuid's shared v7 context keeps a 42-bit
/// counter per millisecond (seeded at random at each new millisecond, with headroom; RFC 9562,
/// section 6.2, method 1) and moves on to the next millisecond if it runs out. The other bits
/// are random, from uuid's `fast-rng` source (a thread-local generator seeded from the kernel,
/// so no kernel call per id), so ids from different nodes do not collide.
fn fresh_id() -> Uuid {
    Uuid::now_v7()
}

/// True when any string (key or value) holds a NUL character.
fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T18:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn parse(body: &str, f: BodyFormat) -> Result<Vec<EventRecord>, IngestError> {
        parse_body(body.as_bytes(), f, 100, now())
    }

    #[test]
    fn accepts_object_array_and_ndjson() {
        let one = parse(
            r#"{"event_type":"cpu","source":"h1","data":{"v":1}}"#,
            BodyFormat::Json,
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].timestamp, now());
        assert_eq!(one[0].data, json!({"v":1}).as_object().unwrap().clone());
        assert_eq!(one[0].id.get_version_num(), 7);
        let arr = parse(
            r#"[{"event_type":"a","source":"s"},{"event_type":"b","source":"s","timestamp":"2026-01-01T00:00:00+02:00"}]"#,
            BodyFormat::Json,
        )
        .unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[1].timestamp.to_rfc3339(), "2025-12-31T22:00:00+00:00");
        let nd = parse(
            "{\"event_type\":\"a\",\"source\":\"s\"}\n\n{\"event_type\":\"b\",\"source\":\"s\",\"id\":\"0190f0e6-4b7e-7c4e-9a8b-123456789abc\"}\r\n",
            BodyFormat::Ndjson,
        )
        .unwrap();
        assert_eq!(nd.len(), 2);
        assert_eq!(nd[1].id.to_string(), "0190f0e6-4b7e-7c4e-9a8b-123456789abc");
    }

    #[test]
    fn reports_index_and_field() {
        let e = parse(
            r#"[{"event_type":"a","source":"s"},{"event_type":"","source":"s"}]"#,
            BodyFormat::Json,
        )
        .unwrap_err();
        assert_eq!(e.code, IngestErrorCode::InvalidEvent);
        assert_eq!(e.index, Some(1));
        assert_eq!(e.field.as_deref(), Some("event_type"));
        assert_eq!(e.message, "event 1: event_type must not be empty");

        let e = parse(r#"{"event_type":"a"}"#, BodyFormat::Json).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("source"));
        assert_eq!(e.message, "event 0: source is required");

        let e = parse(
            r#"{"event_type":"a","source":"s","data":[1]}"#,
            BodyFormat::Json,
        )
        .unwrap_err();
        assert_eq!(e.message, "event 0: data must be a JSON object");

        let e = parse(
            r#"{"event_type":"a","source":"s","colour":"red"}"#,
            BodyFormat::Json,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("colour"));

        let e = parse(
            r#"{"event_type":"a","source":"s","timestamp":"yesterday"}"#,
            BodyFormat::Json,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("timestamp"));

        let e = parse(
            r#"{"event_type":"a","source":"s","id":"nope"}"#,
            BodyFormat::Json,
        )
        .unwrap_err();
        assert_eq!(e.message, "event 0: id \"nope\" is not a UUID");

        let e = parse(
            r#"{"event_type":"a","source":"s","data":{"k":"\u0000"}}"#,
            BodyFormat::Json,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("data"));
    }

    #[test]
    fn malformed_empty_and_too_many() {
        let e = parse("{\"event_type\":", BodyFormat::Json).unwrap_err();
        assert_eq!(e.code, IngestErrorCode::MalformedJson);
        assert!(
            e.message.starts_with("malformed JSON at line 1"),
            "{}",
            e.message
        );
        let e = parse(
            "{\"event_type\":\"a\",\"source\":\"s\"}\nnot json\n",
            BodyFormat::Ndjson,
        )
        .unwrap_err();
        assert_eq!(e.code, IngestErrorCode::MalformedJson);
        assert_eq!(e.index, Some(1));
        assert!(e.message.contains("line 2"));
        assert_eq!(
            parse("[]", BodyFormat::Json).unwrap_err().code,
            IngestErrorCode::EmptyBatch
        );
        assert_eq!(
            parse("42", BodyFormat::Json).unwrap_err().code,
            IngestErrorCode::MalformedJson
        );
        let many = format!(
            "[{}]",
            vec![r#"{"event_type":"a","source":"s"}"#; 101].join(",")
        );
        assert_eq!(
            parse(&many, BodyFormat::Json).unwrap_err().code,
            IngestErrorCode::TooManyEvents
        );
    }

    #[test]
    fn members_are_read_like_a_json_map() {
        // A repeated member keeps its last value.
        let e = parse(
            r#"{"event_type":"a","event_type":"b","source":"s","source":"t"}"#,
            BodyFormat::Json,
        )
        .unwrap();
        assert_eq!((e[0].event_type.as_str(), e[0].source.as_str()), ("b", "t"));
        // Of several unknown members, the first in byte order is reported.
        let e = parse(
            r#"{"zeta":1,"event_type":"a","Beta":2,"alpha":3,"source":"s"}"#,
            BodyFormat::Json,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("Beta"));
        // Escaped member names are compared unescaped.
        let e = parse(
            r#"{"event\u005ftype":"a","source":"s","\u0064ata":{"k":1}}"#,
            BodyFormat::Json,
        )
        .unwrap();
        assert_eq!(e[0].event_type, "a");
        assert_eq!(e[0].data, json!({"k":1}).as_object().unwrap().clone());
        // An unknown member is reported before a missing required one.
        let e = parse(r#"{"x":1}"#, BodyFormat::Json).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("x"));
        // Explicit nulls mean "absent" for id, timestamp, data and metadata.
        let e = parse(
            r#"{"event_type":"a","source":"s","id":null,"timestamp":null,"data":null,"metadata":null}"#,
            BodyFormat::Json,
        )
        .unwrap();
        assert_eq!(e[0].timestamp, now());
        assert!(e[0].data.is_empty() && e[0].metadata.is_empty());
        let e = parse(r#"{"event_type":null,"source":"s"}"#, BodyFormat::Json).unwrap_err();
        assert_eq!(e.message, "event 0: event_type is required");
    }

    #[test]
    fn non_objects_and_malformed_bodies() {
        for (i, item) in ["1", "\"x\"", "null", "true", "[1,{}]", "2.5"]
            .iter()
            .enumerate()
        {
            let body = format!(r#"[{{"event_type":"a","source":"s"}},{item}]"#);
            let e = parse(&body, BodyFormat::Json).unwrap_err();
            assert_eq!(e.code, IngestErrorCode::InvalidEvent, "{i}");
            assert_eq!(e.index, Some(1));
            assert_eq!(e.field, None);
            assert_eq!(e.message, "event 1 is not a JSON object");
        }
        for body in ["1", "\"x\"", "null", "true"] {
            let e = parse(body, BodyFormat::Json).unwrap_err();
            assert_eq!(e.code, IngestErrorCode::MalformedJson);
            assert_eq!(
                e.message,
                "the body must be a JSON object (one event) or an array of objects"
            );
        }
        // Malformed JSON anywhere wins over an invalid event before it.
        let e = parse(r#"[{"event_type":""},{"event_type":"#, BodyFormat::Json).unwrap_err();
        assert_eq!(e.code, IngestErrorCode::MalformedJson);
        let e = parse(r#"[{"event_type":"a","source":"s"}] x"#, BodyFormat::Json).unwrap_err();
        assert_eq!(e.code, IngestErrorCode::MalformedJson);
        // Invalid UTF-8 inside an element that is not an object is malformed JSON too.
        let mut body = br#"[{"event_type":"a","source":"s"},["#.to_vec();
        body.extend_from_slice(b"\"\xff\"]]");
        let e = parse_body(&body, BodyFormat::Json, 100, now()).unwrap_err();
        assert_eq!(e.code, IngestErrorCode::MalformedJson);
        let e = parse("[1]\n", BodyFormat::Ndjson).unwrap_err();
        assert_eq!(e.message, "event 0 is not a JSON object");
    }

    #[test]
    fn fresh_ids_are_increasing_uuid_v7() {
        let before = Utc::now().timestamp_millis() as u64;
        let ids: Vec<Uuid> = (0..10_000).map(|_| fresh_id()).collect();
        let after = Utc::now().timestamp_millis() as u64 + 1;
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
        }
        for id in [ids[0], ids[9_999]] {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!((before..=after).contains(&ms), "{before} {ms} {after}");
        }
        let e = parse(
            "[{\"event_type\":\"a\",\"source\":\"s\"},{\"event_type\":\"a\",\"source\":\"s\"}]",
            BodyFormat::Json,
        )
        .unwrap();
        assert!(e[0].id < e[1].id);
    }

    #[test]
    fn float_sizes_without_exponent_are_the_literal() {
        let m = json!({"a": 0.5, "b": -12.25, "c": 1e-7});
        assert_eq!(
            jsonb_text_len(m.as_object().unwrap()),
            r#"{"a": 0.5, "b": -12.25, "c": 0.0000001}"#.len()
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            BodyFormat::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            BodyFormat::Json
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("application/x-ndjson")).unwrap(),
            BodyFormat::Ndjson
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("text/plain"))
                .unwrap_err()
                .code,
            IngestErrorCode::UnsupportedMediaType
        );
        assert_eq!(
            BodyFormat::from_content_type(None).unwrap_err().code,
            IngestErrorCode::UnsupportedMediaType
        );
    }

    #[test]
    fn data_size_counts_numbers_as_postgres_prints_them() {
        let e = parse(
            &json!({"event_type": "a", "source": "s", "data": {"n": vec![1e300; 3500]}})
                .to_string(),
            BodyFormat::Json,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("data"));
    }
}
