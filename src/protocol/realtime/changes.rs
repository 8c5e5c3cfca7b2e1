//! `postgres_changes`: bindings, their ids, their error texts, and the change payload.
//!
//! A binding is one entry of `config.postgres_changes`: `{event, schema, table, filter}`.
//! [`bind`] checks it against the tables walcast publishes ([`TableFacts`]) and turns it into a
//! [`Binding`] that matches changes, or a [`BindingError`] whose text is what the client receives
//! in a `system` message. Filters use the column filter syntax of [`crate::hub::filter`]
//! (`column=op.value`, ops `eq, neq, lt, lte, gt, gte, in`); several conditions may be joined
//! with `,` (all must hold).
//!
//! [`encode_change_data`] builds the change object (`schema, table, commit_timestamp, type,
//! columns, record, old_record, errors`) once per change; [`encode_change_frame`] wraps it per
//! channel with that channel's topic and matching binding `ids`.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::frame::{Vsn, encode_fastlane, push_json_str};
use super::{MAX_RECORD_BYTES, MAX_TRUNCATED_FIELD_BYTES};
use crate::decode::value::oid;
use crate::decode::{Change, Column, Operation, Row};
use crate::hub::filter::{Condition, FilterError};

/// One entry of `config.postgres_changes`, as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRequest {
    /// `event`: `*`, `INSERT`, `UPDATE`, `DELETE` (anything else means `*`).
    pub event: Option<String>,
    /// `schema`.
    pub schema: Option<String>,
    /// `table`.
    pub table: Option<String>,
    /// `filter`.
    pub filter: Option<String>,
    /// `select` (column selection), which walcast does not support.
    pub select: Option<Value>,
    /// The object exactly as sent; the join reply echoes it with an `id` added.
    pub echo: Map<String, Value>,
}

impl BindingRequest {
    /// Reads a binding object; `None` when it is not an object. Fields of the wrong type are
    /// treated as absent.
    pub fn from_value(v: &Value) -> Option<BindingRequest> {
        let map = v.as_object()?;
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
        Some(BindingRequest {
            event: text("event"),
            schema: text("schema"),
            table: text("table"),
            filter: text("filter"),
            select: map.get("select").filter(|v| !v.is_null()).cloned(),
            echo: map.clone(),
        })
    }

    /// The binding id: a non-negative 27-bit number derived from the parameters, so identical
    /// bindings get the same id.
    pub fn id(&self) -> u32 {
        // FNV-1a over the fields, each preceded by a presence marker.
        let mut hash: u32 = 0x811c_9dc5;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                hash ^= u32::from(b);
                hash = hash.wrapping_mul(0x0100_0193);
            }
        };
        for field in [&self.event, &self.schema, &self.table, &self.filter] {
            match field {
                Some(s) => {
                    feed(&[1]);
                    feed(s.as_bytes());
                    feed(&[0]);
                }
                None => feed(&[2]),
            }
        }
        hash & 0x07ff_ffff
    }

    /// The event filter this binding asks for.
    pub fn event_filter(&self) -> EventFilter {
        EventFilter::parse(self.event.as_deref())
    }

    /// Schema and table patterns (`*` for any): a table alone means schema `public`, a schema
    /// alone means every table. `None` when neither is given.
    pub fn scope(&self) -> Option<(&str, &str)> {
        match (self.schema.as_deref(), self.table.as_deref()) {
            (None | Some(""), None | Some("")) => None,
            (None | Some(""), Some(t)) => Some(("public", t)),
            (Some(s), None | Some("")) => Some((s, "*")),
            (Some(s), Some(t)) => Some((s, t)),
        }
    }

    /// The parameters as error texts show them:
    /// `[event: *, schema: public, table: t, filters: [{"id", "eq", "1"}], select: nil]`.
    pub fn describe(&self) -> String {
        let (schema, table) = self.scope().unwrap_or(("", ""));
        render_params(
            self.event_filter(),
            schema,
            table,
            self.filter.as_deref().unwrap_or(""),
            self.select.as_ref(),
        )
    }
}

/// Which operations a binding wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventFilter {
    /// `*`: inserts, updates and deletes.
    All,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
}

impl EventFilter {
    /// Reads `event` (any case); anything unknown means [`EventFilter::All`].
    pub fn parse(event: Option<&str>) -> EventFilter {
        match event {
            Some(e) if e.eq_ignore_ascii_case("insert") => EventFilter::Insert,
            Some(e) if e.eq_ignore_ascii_case("update") => EventFilter::Update,
            Some(e) if e.eq_ignore_ascii_case("delete") => EventFilter::Delete,
            _ => EventFilter::All,
        }
    }

    /// The event as written in error texts.
    pub fn as_str(self) -> &'static str {
        match self {
            EventFilter::All => "*",
            EventFilter::Insert => "INSERT",
            EventFilter::Update => "UPDATE",
            EventFilter::Delete => "DELETE",
        }
    }

    /// Whether a change operation passes. TRUNCATE never does.
    pub fn accepts(self, op: Operation) -> bool {
        match (self, op) {
            (_, Operation::Truncate) => false,
            (EventFilter::All, _) => true,
            (EventFilter::Insert, Operation::Insert)
            | (EventFilter::Update, Operation::Update)
            | (EventFilter::Delete, Operation::Delete) => true,
            _ => false,
        }
    }
}

/// What walcast knows about one table it publishes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableFacts {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Whether the table is in walcast's publication.
    pub published: bool,
    /// Whether row level security is enabled on the table.
    pub rls_enabled: bool,
    /// Columns in table order: name and type name (`pg_type.typname`).
    pub columns: Vec<(String, String)>,
    /// Primary key column names.
    pub primary_key: Vec<String>,
}

impl TableFacts {
    /// Whether the table has a column of that name.
    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|(c, _)| c == name)
    }

    /// The type name of a column, if known.
    pub fn type_name(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, t)| t.as_str())
    }
}

/// Why a binding cannot be subscribed; the text is sent as a `postgres_changes` `system` error
/// and the channel stays joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// Neither `schema` nor `table` was given.
    #[error(
        "No subscription params provided. Please provide at least a `schema` or `table` to \
         subscribe to: {params}"
    )]
    NoParams {
        /// The binding as sent, as JSON.
        params: String,
    },
    /// The filter does not split into column, operator and value.
    #[error("Error parsing `filter` params: {}", inspect_list(parts))]
    FilterParse {
        /// The pieces that were found.
        parts: Vec<String>,
    },
    /// An `in` value without parentheses.
    #[error("Error parsing `filter` params: `in` filter value must be wrapped by parentheses")]
    InNeedsParentheses,
    /// No published table matches the schema and table.
    #[error(
        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled \
         for the given connect parameters: {params}"
    )]
    NotPublished {
        /// The parameters, as `[event: *, schema: public, table: t, filters: [], select: nil]`.
        params: String,
    },
    /// The parameters parse but cannot be subscribed (unknown column, bad `in` list, `select`,
    /// a role that may not read the table).
    #[error(
        "Unable to subscribe to changes with given parameters. An exception happened so please \
         check your connect parameters: {params}. Exception: {cause}"
    )]
    Exception {
        /// The parameters, as in [`BindingError::NotPublished`].
        params: String,
        /// What is wrong.
        cause: String,
    },
}

/// Writes a list of strings the way the error texts show them: `["foo", "1"]`.
fn inspect_list(parts: &[String]) -> String {
    let mut out = String::from("[");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_json_str(&mut out, p);
    }
    out.push(']');
    out
}

/// A subscribed binding: matches changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The id sent in the join reply and in each change's `ids`.
    pub id: u32,
    /// Which operations.
    pub event: EventFilter,
    /// Schema, or `None` for any.
    pub schema: Option<String>,
    /// Table, or `None` for any.
    pub table: Option<String>,
    /// Conditions that must all hold (on `record`, or on `old_record` for DELETE).
    pub conditions: Vec<Condition>,
}

impl Binding {
    /// Whether the change matches this binding. TRUNCATE never does.
    pub fn matches(&self, change: &Change) -> bool {
        if !self.event.accepts(change.op) {
            return false;
        }
        if self
            .schema
            .as_deref()
            .is_some_and(|s| s != &*change.relation.schema)
            || self
                .table
                .as_deref()
                .is_some_and(|t| t != &*change.relation.table)
        {
            return false;
        }
        if self.conditions.is_empty() {
            return true;
        }
        let row = match change.op {
            Operation::Insert | Operation::Update => change.record.as_ref(),
            Operation::Delete => change.old_record.as_ref(),
            Operation::Truncate => None,
        };
        row.is_some_and(|row| self.conditions.iter().all(|c| c.matches(row)))
    }
}

/// Checks a binding against the published tables and builds it.
pub fn bind(req: &BindingRequest, tables: &[TableFacts]) -> Result<Binding, BindingError> {
    let event = req.event_filter();
    let Some((schema, table)) = req.scope() else {
        return Err(BindingError::NoParams {
            params: Value::Object(req.echo.clone()).to_string(),
        });
    };
    let filter = req.filter.as_deref().unwrap_or("");
    let params = req.describe();
    let conditions = parse_filter(filter).map_err(|e| match e {
        BindingError::Exception { cause, .. } => BindingError::Exception {
            params: params.clone(),
            cause,
        },
        other => other,
    })?;
    let wild = |p: &str| (p != "*").then(|| p.to_owned());
    let binding = Binding {
        id: req.id(),
        event,
        schema: wild(schema),
        table: wild(table),
        conditions,
    };
    if req.select.is_some() {
        return Err(BindingError::Exception {
            params,
            cause: "column selection (`select`) is not supported by walcast".into(),
        });
    }
    let matched: Vec<&TableFacts> = tables
        .iter()
        .filter(|t| t.published)
        .filter(|t| binding.schema.as_deref().is_none_or(|s| s == t.schema))
        .filter(|t| binding.table.as_deref().is_none_or(|n| n == t.table))
        .collect();
    if matched.is_empty() {
        return Err(BindingError::NotPublished { params });
    }
    for c in &binding.conditions {
        if !matched.iter().all(|t| t.has_column(&c.column)) {
            return Err(BindingError::Exception {
                params,
                cause: format!("invalid column for filter {}", c.column),
            });
        }
    }
    Ok(binding)
}

/// Parses a filter: empty or blank means none; `,` before another `column=` starts another
/// condition.
fn parse_filter(filter: &str) -> Result<Vec<Condition>, BindingError> {
    if filter.trim().is_empty() {
        return Ok(Vec::new());
    }
    split_conditions(filter)
        .into_iter()
        .map(parse_condition)
        .collect()
}

/// Splits at commas outside parentheses and double quotes that are followed by `column=`.
fn split_conditions(filter: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in filter.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            ',' if !quoted && depth == 0 && starts_condition(&filter[i + 1..]) => {
                parts.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&filter[start..]);
    parts
}

/// Whether `s` starts with `identifier=`.
fn starts_condition(s: &str) -> bool {
    let s = s.trim_start_matches(' ');
    let ident = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    ident > 0 && !s.as_bytes()[0].is_ascii_digit() && s.as_bytes().get(ident) == Some(&b'=')
}

/// Parses one `column=op.value`, mapping errors to the client texts.
fn parse_condition(segment: &str) -> Result<Condition, BindingError> {
    let segment = segment.trim_start_matches(' ');
    Condition::parse(segment).map_err(|e| match e {
        FilterError::Empty | FilterError::MissingEquals { .. } => BindingError::FilterParse {
            parts: vec![segment.to_owned()],
        },
        FilterError::MissingOperator { .. } | FilterError::UnknownOperator { .. } => {
            let rest = segment.split_once('=').map_or("", |(_, r)| r);
            BindingError::FilterParse {
                parts: rest.splitn(2, '.').map(str::to_owned).collect(),
            }
        }
        FilterError::InListSyntax { .. } => BindingError::InNeedsParentheses,
        // `bind` fills in the parameters.
        other => BindingError::Exception {
            params: String::new(),
            cause: other.to_string(),
        },
    })
}

/// `[event: *, schema: public, table: t, filters: [{"id", "eq", "1"}], select: nil]`.
fn render_params(
    event: EventFilter,
    schema: &str,
    table: &str,
    filter: &str,
    select: Option<&Value>,
) -> String {
    let mut out = format!(
        "[event: {}, schema: {schema}, table: {table}, filters: [",
        event.as_str()
    );
    let segments = if filter.trim().is_empty() {
        Vec::new()
    } else {
        split_conditions(filter)
    };
    for (i, seg) in segments.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let seg = seg.trim_start_matches(' ');
        let (column, rest) = seg.split_once('=').unwrap_or((seg, ""));
        let (op, value) = rest.split_once('.').unwrap_or((rest, ""));
        out.push('{');
        push_json_str(&mut out, column);
        out.push_str(", ");
        push_json_str(&mut out, op);
        out.push_str(", ");
        push_json_str(&mut out, value);
        out.push('}');
    }
    out.push_str("], select: ");
    match select {
        None => out.push_str("nil"),
        Some(v) => out.push_str(&v.to_string()),
    }
    out.push(']');
    out
}

/// The join reply's response: `{"postgres_changes":[{"id":..,<binding as sent>}, ...]}`.
pub fn encode_join_response(requests: &[BindingRequest]) -> String {
    let mut out = String::from("{\"postgres_changes\":[");
    for (i, req) in requests.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"id\":{}", req.id());
        for (k, v) in &req.echo {
            if k == "id" {
                continue;
            }
            out.push(',');
            push_json_str(&mut out, k);
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

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
            let only = rls_enabled.then_some(&pk);
            too_large |= push_record(&mut out, "old_record", columns, old, None, only);
        }
        Operation::Truncate => {}
    }
    if too_large {
        out.push_str(",\"errors\":[\"Error 413: Payload Too Large\"]}");
    } else {
        out.push_str(",\"errors\":null}");
    }
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

    use super::*;
    use crate::decode::{Cursor, Lsn, Relation};

    fn facts() -> TableFacts {
        TableFacts {
            schema: "public".into(),
            table: "monitoring_events".into(),
            published: true,
            rls_enabled: true,
            columns: vec![
                ("id".into(), "uuid".into()),
                ("event_type".into(), "text".into()),
                ("source".into(), "text".into()),
                ("severity".into(), "int4".into()),
                ("timestamp".into(), "timestamptz".into()),
                ("data".into(), "jsonb".into()),
            ],
            primary_key: vec!["id".into()],
        }
    }

    fn req(v: Value) -> BindingRequest {
        BindingRequest::from_value(&v).unwrap()
    }

    fn bind_err(v: Value) -> String {
        bind(&req(v), &[facts()]).unwrap_err().to_string()
    }

    fn relation(replica_identity: u8) -> Arc<Relation> {
        let col = |name: &str, type_oid: u32, is_key: bool| Column {
            name: Arc::from(name),
            type_oid,
            type_modifier: -1,
            is_key,
        };
        Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: "monitoring_events".into(),
            replica_identity,
            columns: vec![
                col("id", oid::UUID, true),
                col("event_type", oid::TEXT, false),
                col("source", oid::TEXT, false),
                col("severity", oid::INT4, false),
                col("timestamp", oid::TIMESTAMPTZ, false),
                col("data", oid::JSONB, false),
            ]
            .into(),
        })
    }

    fn row(v: Value) -> Row {
        Row {
            values: v.as_object().unwrap().clone(),
            unchanged_toast: Vec::new(),
        }
    }

    fn change(op: Operation, record: Option<Row>, old: Option<Row>) -> Change {
        Change {
            cursor: Cursor {
                commit_lsn: Lsn(0x10),
                index: 0,
            },
            xid: 1,
            commit_ts: Utc.with_ymd_and_hms(2026, 8, 21, 10, 0, 0).unwrap()
                + chrono::Duration::microseconds(123_456),
            relation: relation(b'd'),
            op,
            record,
            old_record: old,
        }
    }

    fn full_row() -> Value {
        json!({"id":"0195f0c4-0000-7000-8000-000000000001","event_type":"cpu","source":"host-1",
               "severity":3,"timestamp":"2026-08-21T10:00:00.5Z","data":{"v":1}})
    }

    #[test]
    fn ids_are_stable_27_bit_numbers() {
        let a = req(json!({"event":"*","schema":"public","table":"todos"}));
        let b = req(json!({"table":"todos","schema":"public","event":"*"}));
        let c = req(json!({"event":"*","schema":"public","table":"todos","filter":"id=eq.1"}));
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        for r in [&a, &c] {
            assert!(r.id() < (1 << 27));
        }
        // Absent and empty differ.
        let d = req(json!({"event":"*","schema":"public","table":"todos","filter":""}));
        assert_ne!(a.id(), d.id());
    }

    #[test]
    fn event_filters() {
        assert_eq!(EventFilter::parse(Some("insert")), EventFilter::Insert);
        assert_eq!(EventFilter::parse(Some("UPDATE")), EventFilter::Update);
        assert_eq!(EventFilter::parse(Some("Delete")), EventFilter::Delete);
        assert_eq!(EventFilter::parse(Some("*")), EventFilter::All);
        assert_eq!(EventFilter::parse(Some("bogus")), EventFilter::All);
        assert_eq!(EventFilter::parse(None), EventFilter::All);
        assert!(!EventFilter::All.accepts(Operation::Truncate));
        assert!(EventFilter::Insert.accepts(Operation::Insert));
        assert!(!EventFilter::Insert.accepts(Operation::Update));
    }

    #[test]
    fn join_response_echoes_bindings_with_ids() {
        let reqs = vec![
            req(json!({"event":"*","schema":"public","table":"todos","filter":"id=eq.1"})),
            req(json!({"event":"INSERT","schema":"public"})),
        ];
        let v: Value = serde_json::from_str(&encode_join_response(&reqs)).unwrap();
        assert_eq!(
            v,
            json!({"postgres_changes":[
                {"id": reqs[0].id(), "event":"*","schema":"public","table":"todos","filter":"id=eq.1"},
                {"id": reqs[1].id(), "event":"INSERT","schema":"public"}
            ]})
        );
        assert_eq!(encode_join_response(&[]), r#"{"postgres_changes":[]}"#);
        assert!(encode_join_response(&reqs[..1]).starts_with(r#"{"postgres_changes":[{"id":"#));
    }

    #[test]
    fn binding_error_texts() {
        assert_eq!(
            bind_err(
                json!({"event":"*","schema":"public","table":"monitoring_events","filter":"id=foo.1"})
            ),
            "Error parsing `filter` params: [\"foo\", \"1\"]"
        );
        assert_eq!(
            bind_err(
                json!({"event":"*","schema":"public","table":"monitoring_events","filter":"undefined"})
            ),
            "Error parsing `filter` params: [\"undefined\"]"
        );
        assert_eq!(
            bind_err(json!({"schema":"public","table":"monitoring_events","filter":"id=eq"})),
            "Error parsing `filter` params: [\"eq\"]"
        );
        assert_eq!(
            bind_err(json!({"schema":"public","table":"monitoring_events","filter":"id=in.1,2"})),
            "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
        );
        assert_eq!(
            bind_err(json!({"event":"*","schema":"public","table":"nope"})),
            "Unable to subscribe to changes with given parameters. Please check Realtime is \
             enabled for the given connect parameters: [event: *, schema: public, table: nope, \
             filters: [], select: nil]"
        );
        assert_eq!(
            bind_err(json!({"event":"INSERT","table":"nope","filter":"id=eq.1"})),
            "Unable to subscribe to changes with given parameters. Please check Realtime is \
             enabled for the given connect parameters: [event: INSERT, schema: public, table: \
             nope, filters: [{\"id\", \"eq\", \"1\"}], select: nil]"
        );
        assert_eq!(
            bind_err(json!({"schema":"public","table":"monitoring_events","filter":"bad=eq.1"})),
            "Unable to subscribe to changes with given parameters. An exception happened so \
             please check your connect parameters: [event: *, schema: public, table: \
             monitoring_events, filters: [{\"bad\", \"eq\", \"1\"}], select: nil]. Exception: \
             invalid column for filter bad"
        );
        let e = bind_err(json!({"event":"*"}));
        assert!(
            e.starts_with(
                "No subscription params provided. Please provide at least a `schema` or `table` \
                 to subscribe to: "
            ),
            "{e}"
        );
        let e = bind_err(json!({"schema":"public","select":["id"]}));
        assert!(
            e.contains("select: [\"id\"]") && e.contains("Exception: column selection"),
            "{e}"
        );
        let e = bind_err(json!({"schema":"public","filter":"id=in.()"}));
        assert!(e.contains("filters: [{\"id\", \"in\", \"()\"}]"), "{e}");
        assert!(e.contains("Exception: the `in` list"), "{e}");
        // Not published at all.
        let mut f = facts();
        f.published = false;
        assert!(matches!(
            bind(&req(json!({"schema":"public"})), &[f]),
            Err(BindingError::NotPublished { .. })
        ));
    }

    #[test]
    fn schema_and_table_rules() {
        let ok = |v: Value| bind(&req(v), &[facts()]).unwrap();
        let b = ok(json!({"schema":"public"}));
        assert_eq!((b.schema.as_deref(), b.table), (Some("public"), None));
        let b = ok(json!({"table":"monitoring_events"}));
        assert_eq!(b.schema.as_deref(), Some("public"));
        let b = ok(json!({"schema":"*","table":"*"}));
        assert_eq!((b.schema, b.table), (None, None));
        let b = ok(json!({"schema":"public","table":"monitoring_events","filter":"  "}));
        assert!(b.conditions.is_empty());
        assert!(bind(&req(json!({"schema":"other"})), &[facts()]).is_err());
    }

    #[test]
    fn filters_and_matching() {
        let b = bind(
            &req(json!({"event":"INSERT","schema":"public","table":"monitoring_events","filter":"severity=gte.3"})),
            &[facts()],
        )
        .unwrap();
        assert!(b.matches(&change(Operation::Insert, Some(row(full_row())), None)));
        let mut low = full_row();
        low["severity"] = json!(1);
        assert!(!b.matches(&change(Operation::Insert, Some(row(low)), None)));
        assert!(!b.matches(&change(Operation::Update, Some(row(full_row())), None)));
        assert!(!b.matches(&change(Operation::Truncate, None, None)));

        let check = |filter: &str, v: Value| {
            bind(&req(json!({"schema":"public","filter":filter})), &[facts()])
                .unwrap()
                .matches(&change(Operation::Insert, Some(row(v)), None))
        };
        for (f, want) in [
            ("source=eq.host-1", true),
            ("source=neq.host-1", false),
            ("severity=lt.4", true),
            ("severity=lte.3", true),
            ("severity=gt.3", false),
            ("event_type=in.(mem,cpu)", true),
            ("event_type=in.(mem)", false),
            ("source=eq.host-1,severity=eq.3", true),
            ("source=eq.host-1,severity=eq.4", false),
            ("event_type=in.(x,cpu),source=eq.host-1", true),
        ] {
            assert_eq!(check(f, full_row()), want, "{f}");
        }
        // A comma not followed by `column=` belongs to the value.
        let mut v = full_row();
        v["source"] = json!("a,b");
        assert!(check("source=eq.a,b", v));

        // DELETE filters look at old_record; a missing column never matches.
        let b = bind(
            &req(json!({"schema":"public","filter":"source=eq.host-1"})),
            &[facts()],
        )
        .unwrap();
        let key_only = row(json!({"id": full_row()["id"]}));
        assert!(!b.matches(&change(Operation::Delete, None, Some(key_only))));
        assert!(b.matches(&change(Operation::Delete, None, Some(row(full_row())))));
    }

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
