//! The comparison behind `walcast validate`: observations of both WebSocket paths, and
//! optionally the table, in; a [`Report`] out. Pure: no I/O, no clock. One cohesive job (the
//! pairing rules, the problem kinds and the latency summary are read together), hence one file
//! of about 700 lines of code and 300 of tests.
//!
//! How changes are told apart. Neither path carries the other's identity (the Realtime protocol
//! has no cursor), so a change is keyed by its operation, the row's `id`, and, for UPDATE and
//! DELETE, its commit time in milliseconds (the precision of the Realtime payload). An INSERT is
//! keyed by the row id alone (ids are unique). Within a key, the n-th change of one path is
//! paired with the n-th of the other.
//!
//! - **Duplicates**: on `/ws`, a cursor seen twice; on the Realtime path, the same key with the
//!   same record more often than `/ws` delivered it (at least once).
//! - **Missing**: a change one path has and the other lacks, or a row the table holds (inserted
//!   during the window) that a path lacks.
//! - **Out of order**: on `/ws`, a cursor lower than one received before it; on the Realtime
//!   path, the same with each change's `/ws` cursor (commit time order when `/ws` has nothing).
//! - **Mismatches**: record fields that differ between the paths, or between a path's last
//!   image of a row and the table, by field. Timestamps compare as instants, so
//!   `2026-11-23T18:00:00Z` equals `2026-11-23T18:00:00+00:00`.
//! - **Latency**: receive time − commit time, per path, as p50/p95/p99.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::decode::Cursor;
pub use crate::endpoint::Endpoint;

/// Most problem examples a report lists.
pub const MAX_EXAMPLES: usize = 20;

/// One change as a client received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub op: String,
    /// The row's `id` (from `record`, or `old_record` for DELETE).
    pub id: Option<String>,
    /// Commit time as the path reported it.
    pub commit_ts: DateTime<Utc>,
    /// When the client received it.
    pub received_at: DateTime<Utc>,
    /// The `/ws` cursor (the Realtime path has none).
    pub cursor: Option<Cursor>,
    /// New row image.
    pub record: Option<Map<String, Value>>,
    /// Old row image (often only the key).
    pub old_record: Option<Map<String, Value>>,
    /// The path left large values out (Realtime `errors`: payload too large).
    pub truncated: bool,
}

/// A row of the table read with SQL: the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceRow {
    /// The row's `id`.
    pub id: String,
    /// Its columns, converted to JSON the way walcast converts WAL values.
    pub values: Map<String, Value>,
}

/// The commit-time window compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Changes committed before this are ignored.
    pub start: DateTime<Utc>,
    /// Changes committed after this are ignored, unless the table reference holds their row.
    pub end: DateTime<Utc>,
}

/// What the comparison gets.
#[derive(Debug, Clone, Default)]
pub struct CompareInput {
    /// Changes received on `/ws`, in arrival order.
    pub ws: Vec<Observation>,
    /// Changes received on the Realtime path, in arrival order.
    pub realtime: Vec<Observation>,
    /// Rows inserted during the window, read from the table (`None`: no reference).
    pub reference: Option<Vec<ReferenceRow>>,
    /// The window (`None`: everything counts).
    pub window: Option<Window>,
}

/// A number per path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PerPath<T> {
    /// `/ws`.
    pub ws: T,
    /// The Realtime path.
    pub realtime: T,
}

impl<T> PerPath<T> {
    /// The value of one path.
    pub fn get(&self, p: Endpoint) -> &T {
        match p {
            Endpoint::Ws => &self.ws,
            Endpoint::Realtime => &self.realtime,
        }
    }

    /// The value of one path, mutably.
    pub fn get_mut(&mut self, p: Endpoint) -> &mut T {
        match p {
            Endpoint::Ws => &mut self.ws,
            Endpoint::Realtime => &mut self.realtime,
        }
    }
}

/// Latency percentiles of one path, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

/// Field mismatches of one field between two sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldMismatch {
    /// `record.<column>` or `old_record.<column>`.
    pub field: String,
    /// `ws/realtime`, `ws/table` or `realtime/table`.
    pub between: String,
    /// How many changes (or rows) differ there.
    pub count: u64,
}

/// One problem, as an example for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `missing`, `duplicate`, `out_of_order` or `mismatch`.
    pub kind: &'static str,
    /// The path concerned (`ws`, `realtime`), or the pair for mismatches.
    pub path: String,
    /// Operation.
    pub op: String,
    /// Row id.
    pub id: String,
    /// What exactly.
    pub detail: String,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Distinct changes compared (seen on a path, or in the table).
    pub compared: u64,
    /// Changes present once on both paths with equal fields (and equal to the table).
    pub matched: u64,
    /// `matched / compared` (1 when nothing was compared).
    pub match_ratio: f64,
    /// Changes received per path (all, before the window is applied).
    pub received: PerPath<u64>,
    /// Rows in the table reference (`None`: no reference).
    pub reference_rows: Option<u64>,
    /// Changes a path lacks.
    pub missing: PerPath<u64>,
    /// Changes a path delivered more than once (extra copies).
    pub duplicates: PerPath<u64>,
    /// Changes a path delivered after a later one.
    pub out_of_order: PerPath<u64>,
    /// Field mismatches, by field and sources.
    pub mismatches: Vec<FieldMismatch>,
    /// Sum of `mismatches` counts.
    pub mismatch_total: u64,
    /// Latency per path.
    pub latency_ms: PerPath<Latency>,
    /// Up to [`MAX_EXAMPLES`] problems.
    pub examples: Vec<Problem>,
}

impl Report {
    /// Nothing missing, duplicated, out of order or mismatched.
    pub fn ok(&self) -> bool {
        self.problem_count() == 0
    }

    /// Missing + duplicates + out of order + mismatches, over both paths.
    pub fn problem_count(&self) -> u64 {
        self.missing.ws
            + self.missing.realtime
            + self.duplicates.ws
            + self.duplicates.realtime
            + self.out_of_order.ws
            + self.out_of_order.realtime
            + self.mismatch_total
    }
}

/// How a change is identified across paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    /// Operation.
    op: String,
    /// Row id.
    id: String,
    /// Commit time in milliseconds; `None` for INSERT.
    ts_ms: Option<i64>,
}

impl Observation {
    /// The cross-path key.
    fn key(&self) -> Key {
        Key {
            op: self.op.clone(),
            id: self.id.clone().unwrap_or_default(),
            ts_ms: (self.op != "INSERT").then(|| self.commit_ts.timestamp_millis()),
        }
    }

    /// Whether `record` holds every column: an INSERT's image that nothing was cut from.
    fn is_complete(&self) -> bool {
        self.op == "INSERT" && !self.truncated
    }

    /// The record's content, normalized, for telling copies apart.
    fn fingerprint(&self) -> String {
        match &self.record {
            Some(r) => canonical(&Value::Object(r.clone())),
            None => String::new(),
        }
    }
}

/// Whether two JSON values are equal, timestamps compared as instants (recursively).
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y || same_instant(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| values_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Two strings that parse as the same RFC 3339 instant.
fn same_instant(a: &str, b: &str) -> bool {
    match (parse_instant(a), parse_instant(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// An RFC 3339 timestamp (also with a `+00` offset, as Postgres writes it).
pub fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    if s.len() < 20 || !s.as_bytes()[4].eq(&b'-') {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // `+00` without minutes.
    let fixed = format!("{s}:00");
    DateTime::parse_from_rfc3339(&fixed)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A canonical text of a value: keys sorted, timestamps as UTC microseconds.
fn canonical(v: &Value) -> String {
    fn walk(v: &Value) -> Value {
        match v {
            Value::String(s) => match parse_instant(s) {
                Some(t) => Value::String(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
                None => v.clone(),
            },
            Value::Array(a) => Value::Array(a.iter().map(walk).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), walk(v))).collect())
            }
            other => other.clone(),
        }
    }
    // Keys are sorted at write time, independent of the map's own ordering.
    let mut out = String::new();
    write_sorted(&walk(v), &mut out);
    out
}

/// Writes JSON with object keys in sorted order.
fn write_sorted(v: &Value, out: &mut String) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_sorted(&o[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Latency summary of samples in milliseconds.
pub fn latency(mut samples: Vec<f64>) -> Latency {
    samples.sort_by(f64::total_cmp);
    Latency {
        count: samples.len() as u64,
        p50: percentile(&samples, 0.50),
        p95: percentile(&samples, 0.95),
        p99: percentile(&samples, 0.99),
        max: samples.last().copied(),
    }
}

/// Collects counts and examples while comparing.
#[derive(Default)]
struct Tally {
    /// Missing per path.
    missing: PerPath<u64>,
    /// Duplicates per path.
    duplicates: PerPath<u64>,
    /// Out of order per path.
    out_of_order: PerPath<u64>,
    /// Mismatches by (field, between).
    mismatches: BTreeMap<(String, String), u64>,
    /// Examples.
    examples: Vec<Problem>,
}

impl Tally {
    /// Records an example (bounded).
    fn example(&mut self, kind: &'static str, path: &str, op: &str, id: &str, detail: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(Problem {
                kind,
                path: path.to_owned(),
                op: op.to_owned(),
                id: id.to_owned(),
                detail,
            });
        }
    }

    /// Records a field mismatch.
    fn mismatch(&mut self, field: String, between: &str) {
        *self
            .mismatches
            .entry((field, between.to_owned()))
            .or_default() += 1;
    }
}

/// Compares two row images; returns the fields that differ. A field only one side has counts
/// when `complete` (that side should have every field) says so.
fn diff_rows(
    section: &str,
    a: Option<&Map<String, Value>>,
    b: Option<&Map<String, Value>>,
    a_complete: bool,
    b_complete: bool,
) -> Vec<String> {
    let empty = Map::new();
    let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if !values_equal(x, y) => out.push(format!("{section}.{k}")),
            (Some(_), None) if b_complete => out.push(format!("{section}.{k}")),
            (None, Some(_)) if a_complete => out.push(format!("{section}.{k}")),
            _ => {}
        }
    }
    out
}

/// Runs the comparison.
pub fn compare(input: &CompareInput) -> Report {
    let reference_ids: HashSet<&str> = input
        .reference
        .iter()
        .flatten()
        .map(|r| r.id.as_str())
        .collect();
    let in_window = |o: &Observation| -> bool {
        let Some(w) = input.window else { return true };
        let ts = o.commit_ts.timestamp_millis();
        if ts < w.start.timestamp_millis() {
            return false;
        }
        ts <= w.end.timestamp_millis()
            || (o.op == "INSERT" && o.id.as_deref().is_some_and(|id| reference_ids.contains(id)))
    };
    let ws: Vec<&Observation> = input.ws.iter().filter(|o| in_window(o)).collect();
    let rt: Vec<&Observation> = input.realtime.iter().filter(|o| in_window(o)).collect();
    let mut tally = Tally::default();

    // 1. Duplicates. `/ws`: the same cursor again (or the same key and record without one).
    let mut seen_cursors = HashSet::new();
    let mut ws_multiplicity: HashMap<(Key, String), u64> = HashMap::new();
    let mut ws_unique: Vec<&Observation> = Vec::new();
    let mut ws_seen_content: HashSet<(Key, String)> = HashSet::new();
    for o in &ws {
        let fresh = match o.cursor {
            Some(c) => seen_cursors.insert(c),
            None => ws_seen_content.insert((o.key(), o.fingerprint())),
        };
        if fresh {
            *ws_multiplicity
                .entry((o.key(), o.fingerprint()))
                .or_default() += 1;
            ws_unique.push(o);
        } else {
            tally.duplicates.ws += 1;
            let detail = format!(
                "delivered again (cursor {})",
                o.cursor.map(|c| c.encode()).unwrap_or_default()
            );
            tally.example(
                "duplicate",
                "ws",
                &o.op,
                o.id.as_deref().unwrap_or(""),
                detail,
            );
        }
    }
    // The Realtime path: the same key and record more often than `/ws` has it (at least once).
    let mut rt_counts: HashMap<(Key, String), u64> = HashMap::new();
    let mut rt_unique: Vec<&Observation> = Vec::new();
    for o in &rt {
        let k = (o.key(), o.fingerprint());
        let allowed = ws_multiplicity.get(&k).copied().unwrap_or(1).max(1);
        let n = rt_counts.entry(k).or_default();
        *n += 1;
        if *n > allowed {
            tally.duplicates.realtime += 1;
            tally.example(
                "duplicate",
                "realtime",
                &o.op,
                o.id.as_deref().unwrap_or(""),
                "the same change delivered again".into(),
            );
        } else {
            rt_unique.push(o);
        }
    }

    // 2. Pair by key, in arrival order.
    let mut groups: BTreeMap<Key, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (i, o) in ws_unique.iter().enumerate() {
        groups.entry(o.key()).or_default().0.push(i);
    }
    for (i, o) in rt_unique.iter().enumerate() {
        groups.entry(o.key()).or_default().1.push(i);
    }
    let mut compared = 0u64;
    let mut matched_events: Vec<(String, bool)> = Vec::new();
    let mut rt_partner: HashMap<usize, usize> = HashMap::new();
    for (key, (w, r)) in &groups {
        for slot in 0..w.len().max(r.len()) {
            compared += 1;
            match (w.get(slot), r.get(slot)) {
                (Some(&wi), Some(&ri)) => {
                    rt_partner.insert(ri, wi);
                    let a = ws_unique[wi];
                    let b = rt_unique[ri];
                    // Only an INSERT's image has every column (an UPDATE leaves out unchanged
                    // TOAST values).
                    let mut fields = diff_rows(
                        "record",
                        a.record.as_ref(),
                        b.record.as_ref(),
                        a.is_complete(),
                        b.is_complete(),
                    );
                    fields.extend(diff_rows(
                        "old_record",
                        a.old_record.as_ref(),
                        b.old_record.as_ref(),
                        false,
                        false,
                    ));
                    let clean = fields.is_empty();
                    for f in fields {
                        tally.example(
                            "mismatch",
                            "ws/realtime",
                            &key.op,
                            &key.id,
                            format!("{f} differs"),
                        );
                        tally.mismatch(f, "ws/realtime");
                    }
                    matched_events.push((key.id.clone(), clean));
                }
                (Some(_), None) => {
                    tally.missing.realtime += 1;
                    tally.example(
                        "missing",
                        "realtime",
                        &key.op,
                        &key.id,
                        "received on ws only".into(),
                    );
                }
                (None, Some(_)) => {
                    tally.missing.ws += 1;
                    tally.example(
                        "missing",
                        "ws",
                        &key.op,
                        &key.id,
                        "received on realtime only".into(),
                    );
                }
                (None, None) => {}
            }
        }
    }

    // 3. The table: every row inserted during the window must have reached both paths, and
    //    each path's last image of it must equal the table.
    let mut table_mismatch_ids: HashSet<String> = HashSet::new();
    if let Some(reference) = &input.reference {
        let inserted = |list: &[&Observation], id: &str| {
            list.iter()
                .any(|o| o.op == "INSERT" && o.id.as_deref() == Some(id))
        };
        for row in reference {
            let on_ws = inserted(&ws_unique, &row.id);
            let on_rt = inserted(&rt_unique, &row.id);
            if !on_ws && !on_rt {
                compared += 1;
                tally.missing.ws += 1;
                tally.missing.realtime += 1;
                tally.example(
                    "missing",
                    "ws",
                    "INSERT",
                    &row.id,
                    "in the table, on neither path".into(),
                );
            }
            for (path, list) in [(Endpoint::Ws, &ws_unique), (Endpoint::Realtime, &rt_unique)] {
                let last = list.iter().rev().find(|o| o.id.as_deref() == Some(&row.id));
                let Some(last) = last else { continue };
                if last.op == "DELETE" {
                    continue;
                }
                let between = format!("{}/table", path.as_str());
                for f in diff_rows(
                    "record",
                    last.record.as_ref(),
                    Some(&row.values),
                    last.is_complete(),
                    true,
                ) {
                    tally.example(
                        "mismatch",
                        &between,
                        &last.op,
                        &row.id,
                        format!("{f} differs"),
                    );
                    tally.mismatch(f, &between);
                    table_mismatch_ids.insert(row.id.clone());
                }
            }
        }
    }
    let matched = matched_events
        .iter()
        .filter(|(id, clean)| *clean && !table_mismatch_ids.contains(id))
        .count() as u64;

    // 4. Order: `/ws` by cursor; the Realtime path by its partners' cursors.
    let mut max: Option<Cursor> = None;
    for o in &ws_unique {
        if let Some(c) = o.cursor {
            if max.is_some_and(|m| c < m) {
                tally.out_of_order.ws += 1;
                tally.example(
                    "out_of_order",
                    "ws",
                    &o.op,
                    o.id.as_deref().unwrap_or(""),
                    format!("cursor {} after a later one", c.encode()),
                );
            }
            max = max.max(Some(c));
        }
    }
    let have_cursors = ws_unique.iter().any(|o| o.cursor.is_some());
    let mut max_cursor: Option<Cursor> = None;
    let mut max_ts: Option<i64> = None;
    for (i, o) in rt_unique.iter().enumerate() {
        let late = if have_cursors {
            let Some(c) = rt_partner.get(&i).and_then(|&w| ws_unique[w].cursor) else {
                continue;
            };
            let late = max_cursor.is_some_and(|m| c < m);
            max_cursor = max_cursor.max(Some(c));
            late
        } else {
            let ts = o.commit_ts.timestamp_millis();
            let late = max_ts.is_some_and(|m| ts < m);
            max_ts = max_ts.max(Some(ts));
            late
        };
        if late {
            tally.out_of_order.realtime += 1;
            tally.example(
                "out_of_order",
                "realtime",
                &o.op,
                o.id.as_deref().unwrap_or(""),
                "delivered after a change committed later".into(),
            );
        }
    }

    // 5. Latency (the Realtime path's commit time has milliseconds only: use the partner's).
    let ms = |o: &Observation, commit: DateTime<Utc>| {
        (o.received_at - commit).num_microseconds().unwrap_or(0) as f64 / 1000.0
    };
    let ws_lat: Vec<f64> = ws_unique.iter().map(|o| ms(o, o.commit_ts)).collect();
    let rt_lat: Vec<f64> = rt_unique
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let commit = rt_partner
                .get(&i)
                .map_or(o.commit_ts, |&w| ws_unique[w].commit_ts);
            ms(o, commit)
        })
        .collect();

    let mismatches: Vec<FieldMismatch> = tally
        .mismatches
        .iter()
        .map(|((field, between), count)| FieldMismatch {
            field: field.clone(),
            between: between.clone(),
            count: *count,
        })
        .collect();
    let mismatch_total = mismatches.iter().map(|m| m.count).sum();
    Report {
        compared,
        matched,
        match_ratio: if compared == 0 {
            1.0
        } else {
            matched as f64 / compared as f64
        },
        received: PerPath {
            ws: input.ws.len() as u64,
            realtime: input.realtime.len() as u64,
        },
        reference_rows: input.reference.as_ref().map(|r| r.len() as u64),
        missing: tally.missing,
        duplicates: tally.duplicates,
        out_of_order: tally.out_of_order,
        mismatches,
        mismatch_total,
        latency_ms: PerPath {
            ws: latency(ws_lat),
            realtime: latency(rt_lat),
        },
        examples: tally.examples,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::decode::Lsn;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("object expected"),
        }
    }

    fn row(id: &str, source: &str) -> Map<String, Value> {
        obj(json!({"id": id, "source": source, "data": {"load": 1},
                   "timestamp": "2026-11-23T18:00:00.123456Z"}))
    }

    /// An INSERT on `/ws` with cursor `n`, committed at `n` ms, received 5 ms later.
    fn ws(n: u64, id: &str) -> Observation {
        Observation {
            op: "INSERT".into(),
            id: Some(id.into()),
            commit_ts: t(n as i64),
            received_at: t(n as i64 + 5),
            cursor: Some(Cursor {
                commit_lsn: Lsn(100 + n),
                index: 0,
            }),
            record: Some(row(id, "h")),
            old_record: None,
            truncated: false,
        }
    }

    /// The same change on the Realtime path, received 7 ms after commit, `+00:00` timestamps.
    fn rt(n: u64, id: &str) -> Observation {
        let mut r = row(id, "h");
        r.insert(
            "timestamp".into(),
            json!("2026-11-23T18:00:00.123456+00:00"),
        );
        Observation {
            op: "INSERT".into(),
            id: Some(id.into()),
            commit_ts: t(n as i64),
            received_at: t(n as i64 + 7),
            cursor: None,
            record: Some(r),
            old_record: None,
            truncated: false,
        }
    }

    fn both(n: u64) -> (Vec<Observation>, Vec<Observation>) {
        let ids: Vec<String> = (0..n).map(|i| format!("id{i}")).collect();
        (
            ids.iter()
                .enumerate()
                .map(|(i, id)| ws(i as u64, id))
                .collect(),
            ids.iter()
                .enumerate()
                .map(|(i, id)| rt(i as u64, id))
                .collect(),
        )
    }

    #[test]
    fn identical_paths_match_fully() {
        let (w, r) = both(10);
        let report = compare(&CompareInput {
            ws: w,
            realtime: r,
            ..Default::default()
        });
        assert_eq!(report.compared, 10);
        assert_eq!(report.matched, 10);
        assert_eq!(report.match_ratio, 1.0);
        assert!(report.ok(), "{report:#?}");
    }

    #[test]
    fn nothing_compared_is_ok() {
        let report = compare(&CompareInput::default());
        assert_eq!((report.compared, report.matched), (0, 0));
        assert_eq!(report.match_ratio, 1.0);
        assert!(report.ok());
    }

    #[test]
    fn a_gap_is_missing_on_that_path() {
        let (mut w, r) = both(10);
        w.remove(3);
        w.remove(6);
        let report = compare(&CompareInput {
            ws: w,
            realtime: r,
            ..Default::default()
        });
        assert_eq!(report.missing.ws, 2);
        assert_eq!(report.missing.realtime, 0);
        assert_eq!(report.matched, 8);
        assert!(!report.ok());
        assert!(
            report
                .examples
                .iter()
                .any(|p| p.kind == "missing" && p.id == "id3")
        );
    }

    #[test]
    fn the_table_finds_what_both_paths_lost() {
        let (mut w, mut r) = both(3);
        w.remove(2);
        r.remove(2);
        let reference = (0..3)
            .map(|i| ReferenceRow {
                id: format!("id{i}"),
                values: row(&format!("id{i}"), "h"),
            })
            .collect();
        let report = compare(&CompareInput {
            ws: w,
            realtime: r,
            reference: Some(reference),
            window: None,
        });
        assert_eq!(report.missing, PerPath { ws: 1, realtime: 1 });
        assert_eq!(report.compared, 3);
        assert_eq!(report.reference_rows, Some(3));
    }

    #[test]
    fn duplicates_are_counted_per_path() {
        let (mut w, mut r) = both(4);
        w.push(w[1].clone());
        r.push(r[2].clone());
        r.push(r[2].clone());
        let report = compare(&CompareInput {
            ws: w,
            realtime: r,
            ..Default::default()
        });
        assert_eq!(report.duplicates, PerPath { ws: 1, realtime: 2 });
        assert_eq!(report.missing, PerPath::default());
        assert_eq!(
            report.out_of_order,
            PerPath::default(),
            "a copy is not a reorder"
        );
        assert!(!report.ok());
    }

    #[test]
    fn two_updates_in_one_transaction_are_not_duplicates() {
        let mut a = ws(1, "x");
        a.op = "UPDATE".into();
        let mut b = a.clone();
        b.cursor = Some(Cursor {
            commit_lsn: Lsn(101),
            index: 1,
        });
        b.record
            .as_mut()
            .unwrap()
            .insert("source".into(), json!("h2"));
        let mut ra = rt(1, "x");
        ra.op = "UPDATE".into();
        let mut rb = ra.clone();
        rb.record
            .as_mut()
            .unwrap()
            .insert("source".into(), json!("h2"));
        let report = compare(&CompareInput {
            ws: vec![a, b],
            realtime: vec![ra, rb],
            ..Default::default()
        });
        assert!(report.ok(), "{report:#?}");
        assert_eq!(report.matched, 2);
    }

    #[test]
    fn reordering_is_found_on_both_paths() {
        let (mut w, mut r) = both(5);
        w.swap(1, 3);
        r.swap(0, 4);
        let report = compare(&CompareInput {
            ws: w,
            realtime: r,
            ..Default::default()
        });
        assert_eq!(report.out_of_order.ws, 2, "{report:#?}");
        assert!(report.out_of_order.realtime >= 1);
        assert_eq!(report.missing, PerPath::default());
    }

    #[test]
    fn field_mismatches_are_named() {
        let (w, mut r) = both(3);
        r[1].record
            .as_mut()
            .unwrap()
            .insert("data".into(), json!({"load": 2}));
        let reference = vec![ReferenceRow {
            id: "id2".into(),
            values: {
                let mut v = row("id2", "h");
                v.insert("source".into(), json!("other"));
                v
            },
        }];
        let report = compare(&CompareInput {
            ws: w,
            realtime: r,
            reference: Some(reference),
            window: None,
        });
        let get = |field: &str, between: &str| {
            report
                .mismatches
                .iter()
                .find(|m| m.field == field && m.between == between)
                .map(|m| m.count)
        };
        assert_eq!(get("record.data", "ws/realtime"), Some(1), "{report:#?}");
        assert_eq!(get("record.source", "ws/table"), Some(1));
        assert_eq!(get("record.source", "realtime/table"), Some(1));
        assert_eq!(report.mismatch_total, 3);
        assert_eq!(report.matched, 1);
        assert!(!report.ok());
    }

    #[test]
    fn timestamps_compare_as_instants() {
        assert!(values_equal(
            &json!("2026-11-23T18:00:00.5Z"),
            &json!("2026-11-23T18:00:00.500+00:00")
        ));
        assert!(values_equal(
            &json!({"t": "2026-11-23T18:00:00Z"}),
            &json!({"t": "2026-11-23T19:00:00+01:00"})
        ));
        assert!(!values_equal(
            &json!("2026-11-23T18:00:00Z"),
            &json!("2026-11-23T18:00:01Z")
        ));
        assert!(!values_equal(&json!("a"), &json!("b")));
    }

    #[test]
    fn latency_percentiles_use_nearest_rank() {
        let l = latency((1..=100).map(f64::from).rev().collect());
        assert_eq!(l.count, 100);
        assert_eq!(l.p50, Some(50.0));
        assert_eq!(l.p95, Some(95.0));
        assert_eq!(l.p99, Some(99.0));
        assert_eq!(l.max, Some(100.0));
        assert_eq!(latency(vec![]).p50, None);
        let one = latency(vec![3.0]);
        assert_eq!((one.p50, one.p99), (Some(3.0), Some(3.0)));
        let (w, r) = both(4);
        let report = compare(&CompareInput {
            ws: w,
            realtime: r,
            ..Default::default()
        });
        assert_eq!(report.latency_ms.ws.p50, Some(5.0));
        assert_eq!(report.latency_ms.realtime.p99, Some(7.0));
    }

    #[test]
    fn the_window_bounds_what_counts() {
        let (w, mut r) = both(10);
        // A change before the window reached only one path: not counted.
        r.remove(0);
        let report = compare(&CompareInput {
            ws: w,
            realtime: r,
            reference: None,
            window: Some(Window {
                start: t(1),
                end: t(8),
            }),
        });
        assert_eq!(report.compared, 8, "{report:#?}");
        assert!(report.ok());
    }
}
