//! Server frames: what walcast sends on `/ws`, written by hand in a fixed field order so that a
//! change is encoded once and the same text goes to every client.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::{ErrorCode, LAGGED_CLOSE_CODE, PROTOCOL_VERSION, ProtocolError};
use crate::decode::{Change, Cursor, Operation, Row};
use crate::json::{push_opt_str, push_str as push_json_str};

/// Encodes a change as an `event` frame.
///
/// Fields in order: `type`, `cursor`, `op`, `schema`, `table`, `commit_ts` (RFC 3339 UTC with
/// microseconds), `record`, `old_record` (objects or `null`), then `unchanged_toast` (names of
/// columns left out of the row images because Postgres did not resend their unchanged TOAST
/// value) only when there are any. The same change always gives the same text.
pub fn encode_event(change: &Change) -> String {
    if change.op == Operation::Gap {
        return encode_gap(change);
    }
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

/// The size of a row's JSON text, to size the output buffer once (exact but for numbers, which
/// are counted at their longest): a buffer grown by doubling could hold up to twice the frame
/// for as long as the frame is queued.
fn estimate_row(row: &Row) -> usize {
    row.json_len()
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

/// A `gap` frame: a WAL message at this position could not be decoded, so a change may be
/// missing here (the message is kept in the dead-letter queue).
/// `{"type":"gap","cursor":..,"commit_ts":..,"lsn":..,"code":..,"message":..}`.
pub fn encode_gap(change: &Change) -> String {
    let field = |name: &str| {
        change
            .record
            .as_ref()
            .and_then(|r| r.values.get(name))
            .and_then(|v| v.as_str())
            .unwrap_or("")
    };
    let mut out = String::with_capacity(160 + field("message").len());
    out.push_str("{\"type\":\"gap\",\"cursor\":");
    push_cursor(&mut out, change.cursor);
    out.push_str(",\"commit_ts\":");
    push_timestamp(&mut out, &change.commit_ts);
    out.push_str(",\"lsn\":");
    push_json_str(&mut out, field("lsn"));
    out.push_str(",\"code\":");
    push_json_str(&mut out, field("code"));
    out.push_str(",\"message\":");
    push_json_str(&mut out, field("message"));
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

/// Writes a timestamp as a quoted RFC 3339 UTC string with microseconds.
fn push_timestamp(out: &mut String, ts: &DateTime<Utc>) {
    out.push('"');
    out.push_str(&ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    out.push('"');
}
