//! Presence and broadcast payloads on a channel.
//!
//! Presence: a client pushes event `presence` with `{"type":"presence","event":"track",
//! "payload":{...}}` or `"event":"untrack"`. The server describes who is present as
//! `{"<key>":{"metas":[{"phx_ref":"...", ...payload}]}}` in `presence_state` (on join) and
//! as `{"joins":{...},"leaves":{...}}` in `presence_diff`; an updated meta carries
//! `phx_ref_prev`.
//!
//! Broadcast: a client pushes event `broadcast` with `{"type":"broadcast","event":"e",
//! "payload":{...}}` (or binary kind 3); other members receive the same object. A binary
//! broadcast sent to a `1.0.0` client becomes `{"event","payload","type":"broadcast"[,"meta"]}`.

use serde_json::{Map, Value};

use super::text::PRESENCE_NOT_A_MAP;
use crate::json::push_str as push_json_str;

/// A presence request from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceRequest {
    /// Start (or update) tracking with this payload.
    Track(Map<String, Value>),
    /// Stop tracking.
    Untrack,
}

/// Why a presence push was refused; [`PresenceError::reason`] is the reply's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// `track` with a payload that is not an object.
    #[error("Presence track payload must be a map")]
    NotAMap,
    /// An `event` other than `track`/`untrack`.
    #[error("unknown presence event {0:?}: use track or untrack")]
    UnknownEvent(String),
}

impl PresenceError {
    /// The reason sent in the error reply.
    pub fn reason(&self) -> String {
        match self {
            PresenceError::NotAMap => PRESENCE_NOT_A_MAP.to_owned(),
            other => other.to_string(),
        }
    }
}

/// Reads the payload of a `presence` push.
pub fn parse_presence(payload: &Value) -> Result<PresenceRequest, PresenceError> {
    let event = payload.get("event").and_then(Value::as_str).unwrap_or("");
    match event {
        "track" => match payload.get("payload") {
            Some(Value::Object(m)) => Ok(PresenceRequest::Track(m.clone())),
            None | Some(Value::Null) => Ok(PresenceRequest::Track(Map::new())),
            Some(_) => Err(PresenceError::NotAMap),
        },
        "untrack" => Ok(PresenceRequest::Untrack),
        other => Err(PresenceError::UnknownEvent(other.to_owned())),
    }
}

/// One presence of a key: the tracker's payload plus its `phx_ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceMeta {
    /// Unique reference of this presence.
    pub phx_ref: String,
    /// The reference this one replaced, on an update.
    pub phx_ref_prev: Option<String>,
    /// The payload passed to `track`.
    pub payload: Map<String, Value>,
}

impl PresenceMeta {
    /// Appends the meta object: `{"phx_ref":..,["phx_ref_prev":..,] ...payload}`.
    fn write(&self, out: &mut String) {
        out.push_str("{\"phx_ref\":");
        push_json_str(out, &self.phx_ref);
        if let Some(prev) = &self.phx_ref_prev {
            out.push_str(",\"phx_ref_prev\":");
            push_json_str(out, prev);
        }
        for (k, v) in &self.payload {
            if k == "phx_ref" || k == "phx_ref_prev" {
                continue;
            }
            out.push(',');
            push_json_str(out, k);
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push('}');
    }
}

/// Appends `{"key":{"metas":[...]}, ...}`.
fn write_presences<'a>(
    out: &mut String,
    entries: impl IntoIterator<Item = (&'a str, &'a [PresenceMeta])>,
) {
    out.push('{');
    let mut first = true;
    for (key, metas) in entries {
        if metas.is_empty() {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(out, key);
        out.push_str(":{\"metas\":[");
        for (i, m) in metas.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            m.write(out);
        }
        out.push_str("]}");
    }
    out.push('}');
}

/// The `presence_state` payload.
pub fn encode_presence_state<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a [PresenceMeta])>,
) -> String {
    let mut out = String::new();
    write_presences(&mut out, entries);
    out
}

/// The `presence_diff` payload for one key: what joined and what left.
pub fn encode_presence_diff(key: &str, joins: &[PresenceMeta], leaves: &[PresenceMeta]) -> String {
    let mut out = String::from("{\"joins\":");
    write_presences(&mut out, [(key, joins)]);
    out.push_str(",\"leaves\":");
    write_presences(&mut out, [(key, leaves)]);
    out.push('}');
    out
}

/// What a `broadcast` push carries, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastPush {
    /// The user's event name.
    pub event: String,
}

/// Why a broadcast push was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    /// The payload is not an object with a string `event`.
    #[error("a broadcast payload must be an object with a string `event`")]
    BadPayload,
}

/// Checks the payload of a text `broadcast` push (the object is forwarded as it is).
pub fn parse_broadcast(payload: &Value) -> Result<BroadcastPush, BroadcastError> {
    match payload.get("event") {
        Some(Value::String(e)) => Ok(BroadcastPush { event: e.clone() }),
        _ => Err(BroadcastError::BadPayload),
    }
}

/// The key realtime-js 2.119 adds to a broadcast to have it stored for replay (`persist`,
/// `true` or `{"ttl": seconds}`): a request to the server, never relayed to receivers.
pub const PERSIST_KEY: &str = "persist";

/// Whether a `persist` value asks to store the broadcast: `true` or `{"ttl": seconds}`.
fn asks_to_store(persist: Option<&Value>) -> bool {
    matches!(persist, Some(Value::Bool(true) | Value::Object(_)))
}

/// Removes `persist` from a text broadcast push's payload object; whether it asked to store
/// the broadcast.
pub fn strip_persist(payload: &mut Value) -> bool {
    let removed = payload.as_object_mut().and_then(|o| o.remove(PERSIST_KEY));
    asks_to_store(removed.as_ref())
}

/// Removes `persist` from a binary broadcast's metadata JSON: the metadata left (`None` when
/// nothing else is), and whether it asked to store the broadcast. Metadata that is not a JSON
/// object is kept as it is.
pub fn strip_persist_metadata(meta: Option<String>) -> (Option<String>, bool) {
    let Some(text) = meta else {
        return (None, false);
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(mut o)) => match o.remove(PERSIST_KEY) {
            None => (Some(text), false),
            Some(persist) => (
                (!o.is_empty()).then(|| Value::Object(o).to_string()),
                asks_to_store(Some(&persist)),
            ),
        },
        _ => (Some(text), false),
    }
}

/// A binary-origin broadcast as JSON for `1.0.0` clients:
/// `{"event":..,"payload":..,"type":"broadcast"[,"meta":..]}`. `payload_json` must be JSON text.
pub fn encode_broadcast_json(event: &str, payload_json: &str, meta_json: Option<&str>) -> String {
    let mut out = String::from("{\"event\":");
    push_json_str(&mut out, event);
    out.push_str(",\"payload\":");
    out.push_str(payload_json);
    out.push_str(",\"type\":\"broadcast\"");
    if let Some(meta) = meta_json {
        out.push_str(",\"meta\":");
        out.push_str(meta);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_is_never_relayed() {
        let mut p = serde_json::json!({"type":"broadcast","event":"e","payload":{"persist":1},"persist":true});
        assert!(strip_persist(&mut p));
        assert_eq!(
            p,
            serde_json::json!({"type":"broadcast","event":"e","payload":{"persist":1}})
        );
        assert!(!strip_persist(&mut p));
        assert_eq!(
            strip_persist_metadata(Some(r#"{"persist":true}"#.into())),
            (None, true)
        );
        assert_eq!(
            strip_persist_metadata(Some(r#"{"persist":{"ttl":5},"k":1}"#.into())),
            (Some(r#"{"k":1}"#.to_owned()), true)
        );
        assert_eq!(
            strip_persist_metadata(Some(r#"{"persist":false}"#.into())),
            (None, false)
        );
        assert_eq!(
            strip_persist_metadata(Some("x".into())),
            (Some("x".to_owned()), false)
        );
        assert_eq!(strip_persist_metadata(None), (None, false));
        let mut p = serde_json::json!({"event":"e","persist":false});
        assert!(!strip_persist(&mut p), "persist: false stores nothing");
        assert_eq!(p, serde_json::json!({"event":"e"}));
    }
    use serde_json::json;

    fn meta(r: &str, payload: Value) -> PresenceMeta {
        PresenceMeta {
            phx_ref: r.into(),
            phx_ref_prev: None,
            payload: payload.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn presence_requests() {
        assert_eq!(
            parse_presence(&json!({"type":"presence","event":"track","payload":{"n":"A"}})),
            Ok(PresenceRequest::Track(
                json!({"n":"A"}).as_object().unwrap().clone()
            ))
        );
        assert_eq!(
            parse_presence(&json!({"type":"presence","event":"untrack"})),
            Ok(PresenceRequest::Untrack)
        );
        let e =
            parse_presence(&json!({"type":"presence","event":"track","payload":[1]})).unwrap_err();
        assert_eq!(e.reason(), "Presence track payload must be a map");
        assert!(matches!(
            parse_presence(&json!({"event":"x"})),
            Err(PresenceError::UnknownEvent(_))
        ));
    }

    #[test]
    fn presence_state_and_diff() {
        let a = meta("r1", json!({"n":"A"}));
        let state: Value =
            serde_json::from_str(&encode_presence_state([("u1", std::slice::from_ref(&a))]))
                .unwrap();
        assert_eq!(state, json!({"u1":{"metas":[{"phx_ref":"r1","n":"A"}]}}));
        assert_eq!(encode_presence_state([]), "{}");

        let diff: Value =
            serde_json::from_str(&encode_presence_diff("u1", std::slice::from_ref(&a), &[]))
                .unwrap();
        assert_eq!(
            diff,
            json!({"joins":{"u1":{"metas":[{"phx_ref":"r1","n":"A"}]}},"leaves":{}})
        );
        let mut b = meta("r2", json!({"n":"B"}));
        b.phx_ref_prev = Some("r1".into());
        let diff: Value = serde_json::from_str(&encode_presence_diff(
            "u1",
            std::slice::from_ref(&b),
            std::slice::from_ref(&a),
        ))
        .unwrap();
        assert_eq!(diff["joins"]["u1"]["metas"][0]["phx_ref_prev"], "r1");
        assert_eq!(diff["leaves"]["u1"]["metas"][0]["phx_ref"], "r1");
    }

    #[test]
    fn broadcasts() {
        assert_eq!(
            parse_broadcast(&json!({"type":"broadcast","event":"e","payload":{"a":1}})),
            Ok(BroadcastPush { event: "e".into() })
        );
        assert_eq!(
            parse_broadcast(&json!({"type":"broadcast"})),
            Err(BroadcastError::BadPayload)
        );
        assert_eq!(
            encode_broadcast_json("ping", r#"{"n":1}"#, None),
            r#"{"event":"ping","payload":{"n":1},"type":"broadcast"}"#
        );
        assert_eq!(
            encode_broadcast_json("ping", "1", Some(r#"{"id":"x"}"#)),
            r#"{"event":"ping","payload":1,"type":"broadcast","meta":{"id":"x"}}"#
        );
    }
}
