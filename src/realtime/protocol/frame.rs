//! Frame envelopes of the two serializer versions a Realtime client may ask for with `vsn`.
//!
//! - `1.0.0`: every frame is a text frame holding one JSON object. Clients send
//!   `{"topic","event","payload","ref","join_ref"}`; the server sends
//!   `{"topic","event","payload","ref"}` (never a `join_ref`).
//! - `2.0.0`: text frames hold a JSON array `[join_ref, ref, topic, event, payload]` in both
//!   directions. Broadcasts may also travel as binary frames: clients send kind 3
//!   ("user broadcast push"), the server sends kind 4 ("user broadcast"). Every length field of a
//!   binary frame is one byte, so each length-prefixed field holds at most 255 bytes.
//!
//! Parsing is total: malformed input gives a [`FrameError`], never a panic.

use crate::json::{push_opt_str, push_str as push_json_str};
use serde_json::Value;

/// Most bytes a length-prefixed field of a binary frame can hold.
pub const MAX_BINARY_FIELD: usize = 255;

/// Kind byte of a client push in binary form (accepted by Phoenix, never sent by Realtime
/// clients; walcast refuses it).
pub const KIND_PUSH: u8 = 0;
/// Kind byte of a client broadcast ("user broadcast push"), client to server.
pub const KIND_USER_BROADCAST_PUSH: u8 = 3;
/// Kind byte of a broadcast ("user broadcast"), server to client.
pub const KIND_USER_BROADCAST: u8 = 4;

/// Which serializer the client asked for with the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    /// `1.0.0` (the default when `vsn` is absent): JSON objects.
    V1,
    /// `2.0.0`: JSON arrays and binary broadcast frames.
    V2,
}

impl Vsn {
    /// Reads the `vsn` query parameter; absent means `1.0.0`.
    pub fn from_query(vsn: Option<&str>) -> Result<Vsn, FrameError> {
        match vsn {
            None | Some("1.0.0") => Ok(Vsn::V1),
            Some("2.0.0") => Ok(Vsn::V2),
            Some(other) => Err(FrameError::UnsupportedVsn(other.to_owned())),
        }
    }

    /// The version as written in `vsn`.
    pub fn as_str(self) -> &'static str {
        match self {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The `vsn` query parameter names no serializer walcast speaks.
    #[error("unsupported serializer version {0:?}: use vsn=1.0.0 or vsn=2.0.0")]
    UnsupportedVsn(String),
    /// A text frame is not JSON.
    #[error("the frame is not JSON")]
    NotJson,
    /// A `1.0.0` text frame is not a JSON object.
    #[error("a vsn 1.0.0 frame must be a JSON object")]
    NotObject,
    /// A `2.0.0` text frame is not an array of at least five elements.
    #[error("a vsn 2.0.0 frame must be a JSON array [join_ref, ref, topic, event, payload]")]
    NotArray,
    /// A field has the wrong JSON type.
    #[error("field `{0}` has the wrong type")]
    FieldType(&'static str),
    /// A required field is missing.
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    /// A binary frame is empty.
    #[error("empty binary frame")]
    EmptyBinary,
    /// A binary frame of a kind this side does not accept.
    #[error("binary frames of kind {0} are not accepted")]
    UnsupportedKind(u8),
    /// A binary frame ends before its header or fields do.
    #[error("binary frame of kind {kind} is truncated: {needed} bytes needed, {got} present")]
    Truncated {
        /// The frame kind.
        kind: u8,
        /// Bytes the header announced.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// A string field of a binary frame is not UTF-8.
    #[error("field `{0}` of a binary frame is not UTF-8")]
    NotUtf8(&'static str),
    /// A binary frame's metadata is not a JSON object.
    #[error("the metadata of a binary broadcast is not a JSON object")]
    BadMetadata,
    /// A binary frame's payload encoding byte is neither 0 nor 1.
    #[error("unknown payload encoding {0}: expected 0 (binary) or 1 (JSON)")]
    BadEncoding(u8),
    /// A payload marked as JSON is not JSON.
    #[error("the payload of a binary broadcast is marked JSON but is not JSON")]
    BadJsonPayload,
    /// A field is too long for a one-byte length prefix.
    #[error("field `{field}` is {len} bytes long: binary frames allow at most 255")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

/// One message a client sent, in either serializer version.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientMessage {
    /// The ref of the channel's `phx_join` (absent on heartbeats).
    pub join_ref: Option<String>,
    /// The message's own ref, echoed in the reply.
    pub r#ref: Option<String>,
    /// `phoenix` or `realtime:<name>`.
    pub topic: String,
    /// `phx_join`, `heartbeat`, `broadcast`, ...
    pub event: String,
    /// The payload (an empty object when the client sent none).
    pub payload: Value,
}

/// How the payload of a binary broadcast is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadEncoding {
    /// Raw bytes (encoding byte 0).
    Binary,
    /// JSON text (encoding byte 1).
    Json,
}

impl PayloadEncoding {
    /// The encoding byte.
    pub fn byte(self) -> u8 {
        match self {
            PayloadEncoding::Binary => 0,
            PayloadEncoding::Json => 1,
        }
    }

    /// Reads an encoding byte.
    pub fn from_byte(b: u8) -> Result<Self, FrameError> {
        match b {
            0 => Ok(PayloadEncoding::Binary),
            1 => Ok(PayloadEncoding::Json),
            other => Err(FrameError::BadEncoding(other)),
        }
    }
}

/// A broadcast in binary form: kind 3 from a client (with refs) or kind 4 to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserBroadcast {
    /// The sender's channel join ref (kind 3 only).
    pub join_ref: Option<String>,
    /// The push ref, for an `ack` reply (kind 3 only).
    pub r#ref: Option<String>,
    /// The channel topic, `realtime:<name>`.
    pub topic: String,
    /// The user's event name.
    pub event: String,
    /// Metadata as compact JSON object text; `None` when empty.
    pub metadata: Option<String>,
    /// How `payload` is encoded.
    pub encoding: PayloadEncoding,
    /// The user's payload bytes.
    pub payload: Vec<u8>,
}

/// Reads one text frame.
pub fn parse_text(vsn: Vsn, text: &str) -> Result<ClientMessage, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|_| FrameError::NotJson)?;
    match vsn {
        Vsn::V1 => parse_object(value),
        Vsn::V2 => parse_array(value),
    }
}

/// A `1.0.0` object frame.
fn parse_object(value: Value) -> Result<ClientMessage, FrameError> {
    let Value::Object(mut map) = value else {
        return Err(FrameError::NotObject);
    };
    let topic = required_string(map.remove("topic"), "topic")?;
    let event = required_string(map.remove("event"), "event")?;
    let r#ref = optional_ref(map.remove("ref"), "ref")?;
    let join_ref = optional_ref(map.remove("join_ref"), "join_ref")?;
    let payload = payload_or_empty(map.remove("payload"));
    Ok(ClientMessage {
        join_ref,
        r#ref,
        topic,
        event,
        payload,
    })
}

/// A `2.0.0` array frame; elements after the fifth are ignored.
fn parse_array(value: Value) -> Result<ClientMessage, FrameError> {
    let Value::Array(items) = value else {
        return Err(FrameError::NotArray);
    };
    if items.len() < 5 {
        return Err(FrameError::NotArray);
    }
    let mut items = items.into_iter();
    let mut next = || items.next().unwrap_or(Value::Null);
    let join_ref = optional_ref(Some(next()), "join_ref")?;
    let r#ref = optional_ref(Some(next()), "ref")?;
    let topic = required_string(Some(next()), "topic")?;
    let event = required_string(Some(next()), "event")?;
    let payload = payload_or_empty(Some(next()));
    Ok(ClientMessage {
        join_ref,
        r#ref,
        topic,
        event,
        payload,
    })
}

/// A required string field.
fn required_string(v: Option<Value>, field: &'static str) -> Result<String, FrameError> {
    match v {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(FrameError::MissingField(field)),
        Some(_) => Err(FrameError::FieldType(field)),
    }
}

/// A ref: a string, a number (kept as its decimal text) or null.
fn optional_ref(v: Option<Value>, field: &'static str) -> Result<Option<String>, FrameError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(FrameError::FieldType(field)),
    }
}

/// The payload, or `{}` when absent or null.
fn payload_or_empty(v: Option<Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v) => v,
    }
}

/// Reads one binary frame a client sent. Only kind 3 (broadcast) is accepted.
pub fn parse_binary(bytes: &[u8]) -> Result<UserBroadcast, FrameError> {
    let (&kind, rest) = bytes.split_first().ok_or(FrameError::EmptyBinary)?;
    if kind != KIND_USER_BROADCAST_PUSH {
        return Err(FrameError::UnsupportedKind(kind));
    }
    let mut reader = Reader { kind, rest };
    let header = reader.take(6)?;
    let (join_ref_len, ref_len, topic_len, event_len, meta_len, encoding) = (
        usize::from(header[0]),
        usize::from(header[1]),
        usize::from(header[2]),
        usize::from(header[3]),
        usize::from(header[4]),
        header[5],
    );
    let encoding = PayloadEncoding::from_byte(encoding)?;
    let join_ref = reader.string(join_ref_len, "join_ref")?;
    let r#ref = reader.string(ref_len, "ref")?;
    let topic = reader.string(topic_len, "topic")?;
    let event = reader.string(event_len, "event")?;
    let metadata = reader.take(meta_len)?;
    let metadata = parse_metadata(metadata)?;
    let payload = reader.rest.to_vec();
    if encoding == PayloadEncoding::Json
        && serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err()
    {
        return Err(FrameError::BadJsonPayload);
    }
    Ok(UserBroadcast {
        join_ref: Some(join_ref).filter(|s| !s.is_empty()),
        r#ref: Some(r#ref).filter(|s| !s.is_empty()),
        topic,
        event,
        metadata,
        encoding,
        payload,
    })
}

/// Reads a server kind-4 frame (walcast's tests and tools use it to check what was sent).
pub fn parse_server_binary(bytes: &[u8]) -> Result<UserBroadcast, FrameError> {
    let (&kind, rest) = bytes.split_first().ok_or(FrameError::EmptyBinary)?;
    if kind != KIND_USER_BROADCAST {
        return Err(FrameError::UnsupportedKind(kind));
    }
    let mut reader = Reader { kind, rest };
    let header = reader.take(4)?;
    let (topic_len, event_len, meta_len) = (
        usize::from(header[0]),
        usize::from(header[1]),
        usize::from(header[2]),
    );
    let encoding = PayloadEncoding::from_byte(header[3])?;
    let topic = reader.string(topic_len, "topic")?;
    let event = reader.string(event_len, "event")?;
    let metadata = parse_metadata(reader.take(meta_len)?)?;
    Ok(UserBroadcast {
        join_ref: None,
        r#ref: None,
        topic,
        event,
        metadata,
        encoding,
        payload: reader.rest.to_vec(),
    })
}

/// Metadata bytes: empty, or a JSON object (kept as compact text).
fn parse_metadata(bytes: &[u8]) -> Result<Option<String>, FrameError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) if map.is_empty() => Ok(None),
        Ok(v @ Value::Object(_)) => Ok(Some(v.to_string())),
        _ => Err(FrameError::BadMetadata),
    }
}

/// A cursor over the bytes of a binary frame.
struct Reader<'a> {
    /// The frame kind, for errors.
    kind: u8,
    /// What is left.
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Takes `n` bytes or reports the truncation.
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(FrameError::Truncated {
                kind: self.kind,
                needed: n,
                got: self.rest.len(),
            }),
        }
    }

    /// Takes an `n`-byte UTF-8 string.
    fn string(&mut self, n: usize, field: &'static str) -> Result<String, FrameError> {
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| FrameError::NotUtf8(field))
    }
}

/// Checks that a field fits a one-byte length prefix.
fn short_len(field: &'static str, bytes: &[u8]) -> Result<u8, FrameError> {
    u8::try_from(bytes.len()).map_err(|_| FrameError::FieldTooLong {
        field,
        len: bytes.len(),
    })
}

/// Encodes a kind-4 broadcast frame for a `2.0.0` client.
pub fn encode_user_broadcast(
    topic: &str,
    event: &str,
    metadata: Option<&str>,
    encoding: PayloadEncoding,
    payload: &[u8],
) -> Result<Vec<u8>, FrameError> {
    let metadata = metadata.unwrap_or("").as_bytes();
    let topic_len = short_len("topic", topic.as_bytes())?;
    let event_len = short_len("event", event.as_bytes())?;
    let meta_len = short_len("metadata", metadata)?;
    let mut out =
        Vec::with_capacity(5 + topic.len() + event.len() + metadata.len() + payload.len());
    out.extend_from_slice(&[
        KIND_USER_BROADCAST,
        topic_len,
        event_len,
        meta_len,
        encoding.byte(),
    ]);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(metadata);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Encodes a kind-3 broadcast push, the way a Realtime client sends one (walcast's tests use
/// it to act as a client).
pub fn encode_user_broadcast_push(b: &UserBroadcast) -> Result<Vec<u8>, FrameError> {
    let join_ref = b.join_ref.as_deref().unwrap_or("").as_bytes();
    let r#ref = b.r#ref.as_deref().unwrap_or("").as_bytes();
    let metadata = b.metadata.as_deref().unwrap_or("").as_bytes();
    let mut out = vec![
        KIND_USER_BROADCAST_PUSH,
        short_len("join_ref", join_ref)?,
        short_len("ref", r#ref)?,
        short_len("topic", b.topic.as_bytes())?,
        short_len("event", b.event.as_bytes())?,
        short_len("metadata", metadata)?,
        b.encoding.byte(),
    ];
    for part in [
        join_ref,
        r#ref,
        b.topic.as_bytes(),
        b.event.as_bytes(),
        metadata,
        &b.payload,
    ] {
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// The envelope fields of a frame the server sends.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The channel's join ref (`2.0.0` only; `1.0.0` never sends it).
    pub join_ref: Option<&'a str>,
    /// The ref of the request answered, or of the join for `phx_close`/`phx_error`.
    pub r#ref: Option<&'a str>,
    /// The topic.
    pub topic: &'a str,
    /// The event.
    pub event: &'a str,
}

/// Encodes a frame around a payload that is already JSON text.
pub fn encode(vsn: Vsn, env: Envelope<'_>, payload_json: &str) -> String {
    let mut out = String::with_capacity(48 + env.topic.len() + payload_json.len());
    match vsn {
        Vsn::V1 => {
            out.push_str("{\"topic\":");
            push_json_str(&mut out, env.topic);
            out.push_str(",\"event\":");
            push_json_str(&mut out, env.event);
            out.push_str(",\"payload\":");
            out.push_str(payload_json);
            out.push_str(",\"ref\":");
            push_opt_str(&mut out, env.r#ref);
            out.push('}');
        }
        Vsn::V2 => {
            out.push('[');
            push_opt_str(&mut out, env.join_ref);
            out.push(',');
            push_opt_str(&mut out, env.r#ref);
            out.push(',');
            push_json_str(&mut out, env.topic);
            out.push(',');
            push_json_str(&mut out, env.event);
            out.push(',');
            out.push_str(payload_json);
            out.push(']');
        }
    }
    out
}

/// A `phx_reply` with a status and a response that is already JSON text.
pub fn encode_reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    r#ref: Option<&str>,
    topic: &str,
    ok: bool,
    response_json: &str,
) -> String {
    let status = if ok { "ok" } else { "error" };
    let payload = format!("{{\"status\":\"{status}\",\"response\":{response_json}}}");
    encode(
        vsn,
        Envelope {
            join_ref,
            r#ref,
            topic,
            event: "phx_reply",
        },
        &payload,
    )
}

/// An error `phx_reply` whose response is `{"reason": reason}`.
pub fn encode_error_reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    r#ref: Option<&str>,
    topic: &str,
    reason: &str,
) -> String {
    let response = serde_json::json!({ "reason": reason }).to_string();
    encode_reply(vsn, join_ref, r#ref, topic, false, &response)
}

/// A channel push (`system`, `presence_state`): the channel's join ref, no ref.
pub fn encode_push(
    vsn: Vsn,
    join_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> String {
    encode(
        vsn,
        Envelope {
            join_ref,
            r#ref: None,
            topic,
            event,
        },
        payload_json,
    )
}

/// `phx_close` (`close == true`) or `phx_error` for a channel: ref and join ref are both the
/// channel's join ref, the payload is `{}`.
pub fn encode_channel_end(vsn: Vsn, join_ref: Option<&str>, topic: &str, close: bool) -> String {
    encode(
        vsn,
        Envelope {
            join_ref,
            r#ref: join_ref,
            topic,
            event: if close { "phx_close" } else { "phx_error" },
        },
        "{}",
    )
}

/// A broadcast to every member of a topic (`postgres_changes`, `broadcast`, `presence_diff`):
/// no join ref, no ref.
pub fn encode_fastlane(vsn: Vsn, topic: &str, event: &str, payload_json: &str) -> String {
    encode(
        vsn,
        Envelope {
            join_ref: None,
            r#ref: None,
            topic,
            event,
        },
        payload_json,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vsn_query() {
        assert_eq!(Vsn::from_query(None).unwrap(), Vsn::V1);
        assert_eq!(Vsn::from_query(Some("1.0.0")).unwrap(), Vsn::V1);
        assert_eq!(Vsn::from_query(Some("2.0.0")).unwrap(), Vsn::V2);
        assert_eq!(
            Vsn::from_query(Some("3.0.0")),
            Err(FrameError::UnsupportedVsn("3.0.0".into()))
        );
        assert_eq!(Vsn::V2.as_str(), "2.0.0");
    }

    #[test]
    fn parses_v1_objects() {
        let m = parse_text(
            Vsn::V1,
            r#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"1","join_ref":"1"}"#,
        )
        .unwrap();
        assert_eq!(m.topic, "realtime:room1");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.r#ref.as_deref(), Some("1"));
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.payload, json!({"config": {}}));
        // No join_ref, numeric ref, no payload.
        let m = parse_text(
            Vsn::V1,
            r#"{"topic":"phoenix","event":"heartbeat","ref":7}"#,
        )
        .unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.r#ref.as_deref(), Some("7"));
        assert_eq!(m.payload, json!({}));
        assert_eq!(parse_text(Vsn::V1, "[1]"), Err(FrameError::NotObject));
        assert_eq!(parse_text(Vsn::V1, "{"), Err(FrameError::NotJson));
        assert_eq!(
            parse_text(Vsn::V1, r#"{"event":"x"}"#),
            Err(FrameError::MissingField("topic"))
        );
        assert_eq!(
            parse_text(Vsn::V1, r#"{"topic":1,"event":"x"}"#),
            Err(FrameError::FieldType("topic"))
        );
        assert_eq!(
            parse_text(Vsn::V1, r#"{"topic":"t","event":"x","ref":[]}"#),
            Err(FrameError::FieldType("ref"))
        );
    }

    #[test]
    fn parses_v2_arrays() {
        let m = parse_text(Vsn::V2, r#"[null,"5","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(m.join_ref, None);
        assert_eq!(m.r#ref.as_deref(), Some("5"));
        assert_eq!(m.topic, "phoenix");
        assert_eq!(m.event, "heartbeat");
        // Extra trailing elements are tolerated.
        let m = parse_text(Vsn::V2, r#"["1","2","realtime:a","broadcast",{"a":1},"x"]"#).unwrap();
        assert_eq!(m.payload, json!({"a": 1}));
        for bad in [
            r#"[null,"5","phoenix","heartbeat"]"#,
            r#"{"topic":"phoenix"}"#,
            "3",
        ] {
            assert_eq!(parse_text(Vsn::V2, bad), Err(FrameError::NotArray), "{bad}");
        }
        assert_eq!(
            parse_text(Vsn::V2, r#"[null,"5",null,"heartbeat",{}]"#),
            Err(FrameError::MissingField("topic"))
        );
        assert_eq!(
            parse_text(Vsn::V2, r#"[{},"5","phoenix","heartbeat",{}]"#),
            Err(FrameError::FieldType("join_ref"))
        );
    }

    #[test]
    fn encodes_the_three_v2_shapes() {
        assert_eq!(
            encode_reply(
                Vsn::V2,
                Some("1"),
                Some("1"),
                "realtime:room1",
                true,
                r#"{"postgres_changes":[]}"#
            ),
            r#"["1","1","realtime:room1","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]"#
        );
        assert_eq!(
            encode_reply(Vsn::V2, None, Some("5"), "phoenix", true, "{}"),
            r#"[null,"5","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            encode_push(Vsn::V2, Some("2"), "realtime:room1", "presence_state", "{}"),
            r#"["2",null,"realtime:room1","presence_state",{}]"#
        );
        assert_eq!(
            encode_fastlane(Vsn::V2, "realtime:room1", "broadcast", r#"{"a":1}"#),
            r#"[null,null,"realtime:room1","broadcast",{"a":1}]"#
        );
        assert_eq!(
            encode_channel_end(Vsn::V2, Some("2"), "realtime:room1", true),
            r#"["2","2","realtime:room1","phx_close",{}]"#
        );
        assert_eq!(
            encode_channel_end(Vsn::V2, Some("2"), "realtime:room1", false),
            r#"["2","2","realtime:room1","phx_error",{}]"#
        );
        assert_eq!(
            encode_error_reply(Vsn::V2, Some("1"), Some("1"), "foo", "unmatched topic"),
            r#"["1","1","foo","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
    }

    #[test]
    fn encodes_v1_objects_without_join_ref() {
        let reply = encode_reply(
            Vsn::V1,
            Some("1"),
            Some("1"),
            "realtime:room1",
            true,
            r#"{"postgres_changes":[]}"#,
        );
        assert_eq!(
            reply,
            r#"{"topic":"realtime:room1","event":"phx_reply","payload":{"status":"ok","response":{"postgres_changes":[]}},"ref":"1"}"#
        );
        assert_eq!(
            encode_fastlane(
                Vsn::V1,
                "realtime:room1",
                "broadcast",
                r#"{"event":"ping","payload":{"n":1},"type":"broadcast"}"#
            ),
            r#"{"topic":"realtime:room1","event":"broadcast","payload":{"event":"ping","payload":{"n":1},"type":"broadcast"},"ref":null}"#
        );
        // Topics with characters that need escaping stay valid JSON.
        let f = encode_fastlane(Vsn::V1, "realtime:a\"b", "x", "{}");
        let v: Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["topic"], "realtime:a\"b");
    }

    /// The spec's example: join_ref "1", ref "2", topic `realtime:r`, event `e`, `{"a":1}`.
    #[test]
    fn binary_kind_3_and_4_test_vector() {
        let mut push = vec![3u8, 1, 1, 10, 1, 0, 1];
        push.extend_from_slice(b"12realtime:re{\"a\":1}");
        let b = parse_binary(&push).unwrap();
        assert_eq!(b.join_ref.as_deref(), Some("1"));
        assert_eq!(b.r#ref.as_deref(), Some("2"));
        assert_eq!(b.topic, "realtime:r");
        assert_eq!(b.event, "e");
        assert_eq!(b.metadata, None);
        assert_eq!(b.encoding, PayloadEncoding::Json);
        assert_eq!(b.payload, b"{\"a\":1}");
        assert_eq!(encode_user_broadcast_push(&b).unwrap(), push);

        let out = encode_user_broadcast(&b.topic, &b.event, None, b.encoding, &b.payload).unwrap();
        let mut want = vec![4u8, 10, 1, 0, 1];
        want.extend_from_slice(b"realtime:re{\"a\":1}");
        assert_eq!(out, want);
        let back = parse_server_binary(&out).unwrap();
        assert_eq!(back.topic, "realtime:r");
        assert_eq!(back.payload, b"{\"a\":1}");
    }

    /// Test vector 13: `03 01 01 0E 04 00 01 "2" "6" "realtime:room1" "ping" {"n":1}`.
    #[test]
    fn binary_round_trip_vector_13() {
        let mut push = vec![3u8, 1, 1, 14, 4, 0, 1];
        push.extend_from_slice(b"26realtime:room1ping{\"n\":1}");
        let b = parse_binary(&push).unwrap();
        assert_eq!(
            (b.join_ref.as_deref(), b.r#ref.as_deref()),
            (Some("2"), Some("6"))
        );
        let out = encode_user_broadcast(&b.topic, &b.event, None, b.encoding, &b.payload).unwrap();
        let mut want = vec![4u8, 14, 4, 0, 1];
        want.extend_from_slice(b"realtime:room1ping{\"n\":1}");
        assert_eq!(out, want);
    }

    #[test]
    fn binary_metadata_and_raw_payloads() {
        let b = UserBroadcast {
            join_ref: Some("1".into()),
            r#ref: None,
            topic: "realtime:x".into(),
            event: "bin".into(),
            metadata: Some(r#"{"id":"abc"}"#.into()),
            encoding: PayloadEncoding::Binary,
            payload: vec![0, 255, 1],
        };
        let bytes = encode_user_broadcast_push(&b).unwrap();
        assert_eq!(parse_binary(&bytes).unwrap(), b);
        let out = encode_user_broadcast(
            &b.topic,
            &b.event,
            b.metadata.as_deref(),
            b.encoding,
            &b.payload,
        )
        .unwrap();
        let back = parse_server_binary(&out).unwrap();
        assert_eq!(back.metadata.as_deref(), Some(r#"{"id":"abc"}"#));
        assert_eq!(back.payload, vec![0, 255, 1]);
    }

    #[test]
    fn bad_binary_frames_are_typed_errors() {
        assert_eq!(parse_binary(&[]), Err(FrameError::EmptyBinary));
        assert_eq!(
            parse_binary(&[0, 1, 1]),
            Err(FrameError::UnsupportedKind(0))
        );
        assert_eq!(parse_binary(&[4, 1]), Err(FrameError::UnsupportedKind(4)));
        assert_eq!(
            parse_binary(&[3, 1, 1]),
            Err(FrameError::Truncated {
                kind: 3,
                needed: 6,
                got: 2
            })
        );
        // Header announces a 10-byte topic that is not there.
        assert_eq!(
            parse_binary(&[3, 0, 0, 10, 1, 0, 1, b'a']),
            Err(FrameError::Truncated {
                kind: 3,
                needed: 10,
                got: 1
            })
        );
        assert_eq!(
            parse_binary(&[3, 0, 0, 1, 1, 0, 7, b't', b'e']),
            Err(FrameError::BadEncoding(7))
        );
        assert_eq!(
            parse_binary(&[3, 0, 0, 1, 1, 0, 1, 0xff, b'e']),
            Err(FrameError::NotUtf8("topic"))
        );
        assert_eq!(
            parse_binary(&[3, 0, 0, 1, 1, 2, 0, b't', b'e', b'[', b']']),
            Err(FrameError::BadMetadata)
        );
        assert_eq!(
            parse_binary(&[3, 0, 0, 1, 1, 0, 1, b't', b'e', b'{']),
            Err(FrameError::BadJsonPayload)
        );
        assert_eq!(
            parse_server_binary(&[4, 9]).unwrap_err(),
            FrameError::Truncated {
                kind: 4,
                needed: 4,
                got: 1
            }
        );
        let long = "x".repeat(256);
        assert_eq!(
            encode_user_broadcast(&long, "e", None, PayloadEncoding::Json, b"{}"),
            Err(FrameError::FieldTooLong {
                field: "topic",
                len: 256
            })
        );
        assert_eq!(
            encode_user_broadcast("t", &long, None, PayloadEncoding::Json, b"{}"),
            Err(FrameError::FieldTooLong {
                field: "event",
                len: 256
            })
        );
        // Every prefix of a valid frame fails cleanly.
        let mut push = vec![3u8, 1, 1, 14, 4, 0, 1];
        push.extend_from_slice(b"26realtime:room1ping{\"n\":1}");
        for n in 0..push.len() {
            assert!(parse_binary(&push[..n]).is_err(), "prefix {n}");
        }
    }
}
