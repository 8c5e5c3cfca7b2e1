//! The `postgres_changes` change payload: [`encode_change_data`] builds the change object
//! (`schema, table, commit_timestamp, type, columns, record, old_record, errors`) once per
//! change; [`encode_change_frame`] wraps it per channel with that channel's topic and matching
//! binding `ids`.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::frame::{Vsn, encode_fastlane};
use super::{MAX_RECORD_BYTES, MAX_TRUNCATED_FIELD_BYTES};
use crate::catalog::TableFacts;
use crate::decode::value::oid;
use crate::decode::{Change, Column, Operation, Row};
use crate::json::push_str as push_json_str;

/// The type name (`pg_type.typname`) of a built-in type.
pub fn builtin_type_name(type_oid: u32) -> Option<&'static str> {
    Some(match type_oid {
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        142 => "xml",
        199 => "_json",
        650 => "cidr",
        700 => "float4",
        701 => "float8",
        774 => "macaddr8",
        790 => "money",
        829 => "macaddr",
        869 => "inet",
        1000 => "_bool",
        1001 => "_bytea",
        1005 => "_int2",
        1007 => "_int4",
        1009 => "_text",
        1014 => "_bpchar",
        1015 => "_varchar",
        1016 => "_int8",
        1021 => "_float4",
        1022 => "_float8",
        1028 => "_oid",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1115 => "_timestamp",
        1182 => "_date",
        1184 => "timestamptz",
        1185 => "_timestamptz",
        1186 => "interval",
        1231 => "_numeric",
        1266 => "timetz",
        1560 => "bit",
        1562 => "varbit",
        1700 => "numeric",
        2950 => "uuid",
        2951 => "_uuid",
        3614 => "tsvector",
        3802 => "jsonb",
        3807 => "_jsonb",
        _ => return None,
    })
}

/// The change object for one change: `{schema, table, commit_timestamp, type, columns,
/// record?, old_record?, errors}`.
///
/// `facts` describes the change's table when known: its type names, primary key and whether
/// row level security is on. Without it, the replica identity key stands in for the primary key
/// and row level security is assumed on (the stricter choice).
///
/// - INSERT: `record`. UPDATE: `record` and `old_record` (the previous values with
///   `REPLICA IDENTITY FULL`, else the primary key of the new row). DELETE: `old_record`,
///   reduced to the primary key when row level security is on.
/// - Unchanged TOAST values in an UPDATE are filled from `old_record` when it has them.
/// - A record over [`MAX_RECORD_BYTES`] keeps only values of at most
///   [`MAX_TRUNCATED_FIELD_BYTES`] bytes and `errors` says `Error 413: Payload Too Large`.
pub fn encode_change_data(change: &Change, facts: Option<&TableFacts>) -> String {
    encode_change_data_for(change, facts, None)
}

/// Like [`encode_change_data`], limited to the `allowed` columns (those a role may `SELECT`);
/// `None` allows every column. `columns`, `record` and `old_record` all leave the others out.
pub fn encode_change_data_for(
    change: &Change,
    facts: Option<&TableFacts>,
    allowed: Option<&[String]>,
) -> String {
    let rel = &change.relation;
    let columns: Vec<&Column> = rel
        .columns
        .iter()
        .filter(|c| allowed.is_none_or(|a| a.iter().any(|n| *n == *c.name)))
        .collect();
    let columns = columns.as_slice();
    let pk: Vec<&str> = match facts {
        Some(f) if !f.primary_key.is_empty() => f.primary_key.iter().map(String::as_str).collect(),
        _ => rel
            .columns
            .iter()
            .filter(|c| c.is_key)
            .map(|c| &*c.name)
            .collect(),
    };
    let rls_enabled = facts.is_none_or(|f| f.rls_enabled);
    let mut out = String::with_capacity(256);
    out.push_str("{\"schema\":");
    push_json_str(&mut out, &rel.schema);
    out.push_str(",\"table\":");
    push_json_str(&mut out, &rel.table);
    out.push_str(",\"commit_timestamp\":\"");
    out.push_str(&commit_timestamp(&change.commit_ts));
    out.push_str("\",\"type\":\"");
    out.push_str(change.op.as_str());
    out.push_str("\",\"columns\":[");
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        push_json_str(&mut out, &c.name);
        out.push_str(",\"type\":");
        match builtin_type_name(c.type_oid).or_else(|| facts.and_then(|f| f.type_name(&c.name))) {
            Some(t) => push_json_str(&mut out, t),
            None => push_json_str(&mut out, &c.type_oid.to_string()),
        }
        out.push('}');
    }
    out.push(']');
    let mut too_large = false;
    let empty = Row::default();
    match change.op {
        Operation::Insert => {
            let record = change.record.as_ref().unwrap_or(&empty);
            too_large |= push_record(&mut out, "record", columns, record, None, None);
        }
        Operation::Update => {
            let record = change.record.as_ref().unwrap_or(&empty);
            let old = change.old_record.as_ref();
            too_large |= push_record(&mut out, "record", columns, record, old, None);
            match old {
                Some(old) => {
                    too_large |= push_record(&mut out, "old_record", columns, old, None, None)
                }
                None => {
                    too_large |=
                        push_record(&mut out, "old_record", columns, record, None, Some(&pk))
                }
            }
        }
        Operation::Delete => {
            let old = change.old_record.as_ref().unwrap_or(&empty);
            // Under row level security a DELETE keeps the primary key only: nothing at all for
            // a table without one (whatever its replica identity sends).
            let no_key = Vec::new();
            let only = match facts {
                Some(f) if f.primary_key.is_empty() => rls_enabled.then_some(&no_key),
                _ => rls_enabled.then_some(&pk),
            };
            too_large |= push_record(&mut out, "old_record", columns, old, None, only);
        }
        Operation::Truncate | Operation::Gap => {}
    }
    if too_large {
        out.push_str(",\"errors\":[\"Error 413: Payload Too Large\"]}");
    } else {
        out.push_str(",\"errors\":null}");
    }
    out
}

/// The error Supabase Realtime puts in `errors` for an INSERT or UPDATE of a table without a
/// primary key: the row cannot be checked against a role's policies.
pub const NO_PRIMARY_KEY_ERROR: &str = "Error 400: Bad Request, no primary key";

/// The change object a role other than `service_role` gets for an INSERT or UPDATE of a table
/// without a primary key, as Supabase Realtime sends it: no values at all (`columns` empty,
/// `record` and an UPDATE's `old_record` empty objects, `commit_timestamp` null) and
/// `errors: ["Error 400: Bad Request, no primary key"]`.
pub fn encode_no_primary_key(change: &Change) -> String {
    let rel = &change.relation;
    let mut out = String::with_capacity(160);
    out.push_str("{\"schema\":");
    push_json_str(&mut out, &rel.schema);
    out.push_str(",\"table\":");
    push_json_str(&mut out, &rel.table);
    out.push_str(",\"commit_timestamp\":null,\"type\":\"");
    out.push_str(change.op.as_str());
    out.push_str("\",\"columns\":[],\"record\":{}");
    if change.op == Operation::Update {
        out.push_str(",\"old_record\":{}");
    }
    out.push_str(",\"errors\":[");
    push_json_str(&mut out, NO_PRIMARY_KEY_ERROR);
    out.push_str("]}");
    out
}

/// `2026-08-21T10:00:00.123Z`: UTC, milliseconds.
pub fn commit_timestamp(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Appends `,"key":{...}` for a row in column order. `fill` supplies unchanged TOAST values,
/// `only` limits the columns. Returns true when the row was too large and was cut down.
fn push_record(
    out: &mut String,
    key: &str,
    columns: &[&Column],
    row: &Row,
    fill: Option<&Row>,
    only: Option<&Vec<&str>>,
) -> bool {
    let start = out.len();
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    let body_start = out.len();
    write_row(out, columns, row, fill, only, usize::MAX);
    if out.len() - body_start <= MAX_RECORD_BYTES {
        return false;
    }
    out.truncate(start);
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    write_row(out, columns, row, fill, only, MAX_TRUNCATED_FIELD_BYTES);
    true
}

/// Writes a row object, skipping values longer than `max_value` bytes of JSON.
fn write_row(
    out: &mut String,
    columns: &[&Column],
    row: &Row,
    fill: Option<&Row>,
    only: Option<&Vec<&str>>,
    max_value: usize,
) {
    out.push('{');
    let mut first = true;
    for c in columns {
        let name: &str = &c.name;
        if only.is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        let value = row
            .values
            .get(name)
            .or_else(|| fill.and_then(|f| f.values.get(name)));
        let Some(value) = value else { continue };
        let text = value_json(c.type_oid, value);
        if text.len() > max_value {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(out, name);
        out.push(':');
        out.push_str(&text);
    }
    out.push('}');
}

/// A value as JSON text; `timestamptz` values are written with a `+00:00` offset, as Postgres
/// renders them in JSON.
fn value_json(type_oid: u32, value: &Value) -> String {
    if type_oid == oid::TIMESTAMPTZ
        && let Value::String(s) = value
        && let Some(base) = s.strip_suffix('Z')
    {
        let mut out = String::with_capacity(s.len() + 8);
        push_json_str(&mut out, &format!("{base}+00:00"));
        return out;
    }
    value.to_string()
}

/// A `postgres_changes` frame for one channel: `{"ids":[...],"data":<data>}`.
pub fn encode_change_frame(vsn: Vsn, topic: &str, ids: &[u32], data: &str) -> String {
    let mut payload = String::with_capacity(24 + ids.len() * 10 + data.len());
    payload.push_str("{\"ids\":[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            payload.push(',');
        }
        let _ = write!(payload, "{id}");
    }
    payload.push_str("],\"data\":");
    payload.push_str(data);
    payload.push('}');
    encode_fastlane(vsn, topic, "postgres_changes", &payload)
}

/// A change frame for a legacy channel: the event is the operation, the payload the change
/// object itself.
pub fn encode_legacy_change_frame(vsn: Vsn, topic: &str, op: Operation, data: &str) -> String {
    encode_fastlane(vsn, topic, op.as_str(), data)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use serde_json::json;

    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn insert_payload() {
        let c = change(Operation::Insert, Some(row(full_row())), None);
        let data: Value = serde_json::from_str(&encode_change_data(&c, Some(&facts()))).unwrap();
        assert_eq!(
            data,
            json!({
                "schema":"public","table":"monitoring_events",
                "commit_timestamp":"2026-08-21T10:00:00.123Z","type":"INSERT",
                "columns":[{"name":"id","type":"uuid"},{"name":"event_type","type":"text"},
                           {"name":"source","type":"text"},{"name":"severity","type":"int4"},
                           {"name":"timestamp","type":"timestamptz"},{"name":"data","type":"jsonb"}],
                "record":{"id":"0195f0c4-0000-7000-8000-000000000001","event_type":"cpu",
                          "source":"host-1","severity":3,"timestamp":"2026-08-21T10:00:00.5+00:00",
                          "data":{"v":1}},
                "errors":null
            })
        );
        assert!(data.get("old_record").is_none());
    }

    #[test]
    fn update_and_delete_payloads() {
        let id = full_row()["id"].clone();
        // Default identity: old_record is the primary key of the new row.
        let c = change(Operation::Update, Some(row(full_row())), None);
        let data: Value = serde_json::from_str(&encode_change_data(&c, Some(&facts()))).unwrap();
        assert_eq!(data["type"], "UPDATE");
        assert_eq!(data["old_record"], json!({"id": id}));
        assert_eq!(data["record"]["source"], "host-1");

        // Full identity: the previous values; unchanged TOAST filled from them.
        let mut new = row(
            json!({"id": id, "event_type":"cpu", "source":"host-2", "severity": 3,
                                 "timestamp":"2026-08-21T10:00:00Z"}),
        );
        new.unchanged_toast.push(Arc::from("data"));
        let c = change(Operation::Update, Some(new), Some(row(full_row())));
        let data: Value = serde_json::from_str(&encode_change_data(&c, Some(&facts()))).unwrap();
        assert_eq!(data["record"]["data"], json!({"v":1}));
        assert_eq!(data["record"]["source"], "host-2");
        assert_eq!(data["old_record"]["source"], "host-1");

        // DELETE with RLS on: primary key only, whatever the identity sent.
        let c = change(Operation::Delete, None, Some(row(full_row())));
        let data: Value = serde_json::from_str(&encode_change_data(&c, Some(&facts()))).unwrap();
        assert_eq!(data["old_record"], json!({"id": id}));
        assert!(data.get("record").is_none());
        assert_eq!(data["errors"], Value::Null);
        // RLS off: everything sent.
        let mut f = facts();
        f.rls_enabled = false;
        let data: Value = serde_json::from_str(&encode_change_data(&c, Some(&f))).unwrap();
        assert_eq!(data["old_record"]["source"], "host-1");
        // Unknown table: primary key from the replica identity, RLS assumed.
        let data: Value = serde_json::from_str(&encode_change_data(&c, None)).unwrap();
        assert_eq!(data["old_record"], json!({"id": id}));
    }

    #[test]
    fn allowed_columns_limit_the_payload() {
        let c = change(Operation::Insert, Some(row(full_row())), None);
        let allowed = vec!["id".to_string(), "source".to_string()];
        let data: Value =
            serde_json::from_str(&encode_change_data_for(&c, Some(&facts()), Some(&allowed)))
                .unwrap();
        assert_eq!(
            data["columns"],
            json!([{"name":"id","type":"uuid"},{"name":"source","type":"text"}])
        );
        assert_eq!(
            data["record"],
            json!({"id": full_row()["id"], "source": "host-1"})
        );
    }

    #[test]
    fn oversize_records_keep_small_fields() {
        let mut v = full_row();
        v["data"] = json!({"blob": "x".repeat(MAX_RECORD_BYTES)});
        let c = change(Operation::Insert, Some(row(v)), None);
        let text = encode_change_data(&c, Some(&facts()));
        assert!(text.len() < 4096);
        let data: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(data["errors"], json!(["Error 413: Payload Too Large"]));
        assert!(data["record"].get("data").is_none());
        assert_eq!(data["record"]["source"], "host-1");
    }

    #[test]
    fn tables_without_a_primary_key() {
        let c = change(Operation::Update, Some(row(full_row())), None);
        let data: Value = serde_json::from_str(&encode_no_primary_key(&c)).unwrap();
        assert_eq!(
            data,
            json!({"schema":"public","table":"monitoring_events","commit_timestamp":null,
                   "type":"UPDATE","columns":[],"record":{},"old_record":{},
                   "errors":["Error 400: Bad Request, no primary key"]})
        );
        // A DELETE under row level security keeps nothing of the old row.
        let mut keyless = facts();
        keyless.primary_key.clear();
        let c = change(Operation::Delete, None, Some(row(full_row())));
        let data: Value = serde_json::from_str(&encode_change_data(&c, Some(&keyless))).unwrap();
        assert_eq!(data["old_record"], json!({}));
    }

    #[test]
    fn frames() {
        let data = r#"{"type":"INSERT"}"#;
        assert_eq!(
            encode_change_frame(Vsn::V2, "realtime:room1", &[1, 2], data),
            r#"[null,null,"realtime:room1","postgres_changes",{"ids":[1,2],"data":{"type":"INSERT"}}]"#
        );
        assert_eq!(
            encode_change_frame(Vsn::V1, "realtime:room1", &[7], data),
            r#"{"topic":"realtime:room1","event":"postgres_changes","payload":{"ids":[7],"data":{"type":"INSERT"}},"ref":null}"#
        );
        assert_eq!(
            encode_legacy_change_frame(Vsn::V1, "realtime:public", Operation::Delete, data),
            r#"{"topic":"realtime:public","event":"DELETE","payload":{"type":"INSERT"},"ref":null}"#
        );
    }

    #[test]
    fn type_names() {
        assert_eq!(builtin_type_name(oid::INT8), Some("int8"));
        assert_eq!(builtin_type_name(oid::TEXT_ARRAY), Some("_text"));
        assert_eq!(builtin_type_name(123_456), None);
        assert_eq!(
            commit_timestamp(&Utc.with_ymd_and_hms(2025, 11, 19, 0, 22, 40).unwrap()),
            "2025-11-19T00:22:40.000Z"
        );
    }
}
