//! The continuous consistency check inside the server, and the snapshot it leaves for
//! `/v1/status`, the admin console and `/metrics`.
//!
//! Every `--validate-interval` a task ([`spawn_consistency_task`]) subscribes to the hub like any
//! session, takes a bounded sample of the changes published during a short window
//! ([`SAMPLE_MAX`] changes, at most [`SAMPLE_WINDOW`]), and for each one ([`check_change`]):
//! encodes it with the `/ws` encoder and the Realtime change payload encoder — the same
//! functions the sessions use —, decodes both back, and compares each with the change and with
//! each other. It also compares the delivery counters of connected clients
//! ([`check_delivery`]): two clients, one per path, that both receive every change and were at
//! the same stream position at both ends of an interval must have delivered the same number of
//! changes in between.
//!
//! Cheap by construction: the task is just another hub subscriber (the reader never waits for
//! it; if it falls behind the ring it skips ahead), the sample is bounded, and it sleeps between
//! runs. Findings carry kinds, fields and cursors, never row values.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::compare::{parse_instant, values_equal};
use crate::access::RlsGate;
use crate::admin::clients::{ClientRegistry, ClientSnapshot, Progress};
use crate::catalog::TableFacts;
use crate::decode::{Change, Operation};
use crate::endpoint::Endpoint;
use crate::hub::{Format, Hub, HubItem};
use crate::metrics::Metrics;
use crate::realtime::protocol::payload::encode_change_data;
use crate::ws::protocol::{self as json, ServerFrame};

/// Most changes one run checks.
pub const SAMPLE_MAX: usize = 256;
/// Longest time one run waits for changes.
pub const SAMPLE_WINDOW: Duration = Duration::from_secs(2);
/// Most bytes of changes (as the hub charges them) one sample holds.
pub const SAMPLE_BYTES: u64 = 4 << 20;
/// Most clients one delivery comparison looks at.
const DELIVERY_CLIENTS_MAX: usize = 10_000;

/// What kind of inconsistency was found (also the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// The `/ws` event frame does not decode.
    JsonDecode,
    /// The decoded `/ws` frame differs from the change.
    JsonField,
    /// The Realtime change payload does not decode.
    RealtimeDecode,
    /// The decoded Realtime payload differs from the change.
    RealtimeField,
    /// The two wire formats disagree on a field.
    CrossPath,
    /// Clients on both paths that receive everything delivered different numbers of changes.
    Delivery,
}

impl MismatchKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchKind::JsonDecode => "json_decode",
            MismatchKind::JsonField => "json_field",
            MismatchKind::RealtimeDecode => "realtime_decode",
            MismatchKind::RealtimeField => "realtime_field",
            MismatchKind::CrossPath => "cross_path",
            MismatchKind::Delivery => "delivery",
        }
    }
}

/// One inconsistency in one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Kind.
    pub kind: MismatchKind,
    /// The field (`record.source`, `commit_ts`, ...), or `frame`.
    pub field: String,
}

/// The outcome of the delivery comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not enough clients: one on each path that receives every change is needed.
    #[default]
    NotApplicable,
    /// Clients were at different positions; nothing comparable this time.
    Skipped,
    /// Equal counts.
    Ok,
    /// Different counts.
    Mismatch,
}

/// The last delivery comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct DeliveryCheck {
    /// Outcome.
    pub state: DeliveryState,
    /// Clients compared.
    pub clients: u64,
    /// What was compared, for people.
    pub detail: String,
}

/// The newest mismatch, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MismatchNote {
    /// When it was found.
    pub at: DateTime<Utc>,
    /// Kind.
    pub kind: MismatchKind,
    /// Field.
    pub field: String,
    /// The change's cursor (empty for delivery mismatches).
    pub cursor: String,
}

/// What the checker has found so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsistencySnapshot {
    /// The checker runs (`--validate-interval` is not 0).
    pub enabled: bool,
    /// Seconds between runs.
    pub interval_secs: Option<f64>,
    /// Runs so far.
    pub runs: u64,
    /// Changes checked so far.
    pub checked_total: u64,
    /// Mismatches so far (all kinds).
    pub mismatches_total: u64,
    /// Mismatches so far, by kind.
    pub mismatches: BTreeMap<String, u64>,
    /// Share of the last sample without a mismatch (1 when it was empty).
    pub match_ratio: f64,
    /// When the last run ended.
    pub last_run_at: Option<DateTime<Utc>>,
    /// Changes in the last sample.
    pub last_sample: u64,
    /// Changes of the last sample with at least one mismatch.
    pub last_sample_mismatched: u64,
    /// The newest mismatch.
    pub last_mismatch: Option<MismatchNote>,
    /// The last delivery comparison.
    pub delivery: DeliveryCheck,
}

/// The shared snapshot (`Arc<Consistency>` in the server state).
#[derive(Debug)]
pub struct Consistency {
    /// The snapshot, replaced at the end of each run.
    state: Mutex<ConsistencySnapshot>,
}

impl Consistency {
    /// A checker running every `interval` (`None`: off).
    pub fn new(interval: Option<Duration>) -> Self {
        Consistency {
            state: Mutex::new(ConsistencySnapshot {
                enabled: interval.is_some(),
                interval_secs: interval.map(|d| d.as_secs_f64()),
                runs: 0,
                checked_total: 0,
                mismatches_total: 0,
                mismatches: BTreeMap::new(),
                match_ratio: 1.0,
                last_run_at: None,
                last_sample: 0,
                last_sample_mismatched: 0,
                last_mismatch: None,
                delivery: DeliveryCheck::default(),
            }),
        }
    }

    /// A copy of the snapshot.
    pub fn snapshot(&self) -> ConsistencySnapshot {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records one run.
    fn record(&self, run: &RunOutcome) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.runs += 1;
        s.checked_total += run.checked;
        for (kind, field, cursor) in &run.findings {
            s.mismatches_total += 1;
            *s.mismatches.entry(kind.as_str().to_owned()).or_default() += 1;
            s.last_mismatch = Some(MismatchNote {
                at: run.at,
                kind: *kind,
                field: field.clone(),
                cursor: cursor.clone(),
            });
        }
        s.match_ratio = run.ratio();
        s.last_run_at = Some(run.at);
        s.last_sample = run.checked;
        s.last_sample_mismatched = run.mismatched;
        s.delivery = run.delivery.clone();
    }
}

/// One run's results.
#[derive(Debug)]
struct RunOutcome {
    /// When it ended.
    at: DateTime<Utc>,
    /// Changes checked.
    checked: u64,
    /// Changes with a finding.
    mismatched: u64,
    /// Findings: kind, field, cursor.
    findings: Vec<(MismatchKind, String, String)>,
    /// Delivery comparison.
    delivery: DeliveryCheck,
}

impl RunOutcome {
    /// Share of the sample without a finding.
    fn ratio(&self) -> f64 {
        if self.checked == 0 {
            1.0
        } else {
            (self.checked - self.mismatched) as f64 / self.checked as f64
        }
    }
}

/// Compares two row images field by field; every field of `expected` must be in `got` when
/// `complete`, and every field of `got` must equal `expected` (or `fill`, for values Realtime
/// fills in from the old image).
fn diff(
    section: &str,
    got: &Map<String, Value>,
    expected: &Map<String, Value>,
    fill: Option<&Map<String, Value>>,
    complete: bool,
    out: &mut Vec<String>,
) {
    for (k, v) in got {
        let want = expected.get(k).or_else(|| fill.and_then(|f| f.get(k)));
        if !want.is_some_and(|w| values_equal(v, w)) {
            out.push(format!("{section}.{k}"));
        }
    }
    if complete {
        for k in expected.keys() {
            if !got.contains_key(k) {
                out.push(format!("{section}.{k}"));
            }
        }
    }
}

/// An object field of a JSON object (`None` when absent or `null`).
fn object<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    o.get(key).and_then(Value::as_object)
}

/// Encodes one change with both wire encoders, decodes both, and compares them with the change
/// and with each other. `facts` describes the change's table as the Realtime sessions see it.
pub fn check_change(change: &Change, facts: Option<&TableFacts>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut push = |kind: MismatchKind, fields: Vec<String>| {
        findings.extend(fields.into_iter().map(|field| Finding { kind, field }));
    };
    let empty = Map::new();
    let record = change.record.as_ref().map(|r| &r.values);
    let old = change.old_record.as_ref().map(|r| &r.values);

    // The `/ws` event frame.
    let ws = match json::parse_server_frame(&json::encode_event(change)) {
        Ok(ServerFrame::Event(ev)) => {
            let mut f = Vec::new();
            if ev.cursor != change.cursor {
                f.push("cursor".to_owned());
            }
            if ev.op != change.op.as_str() {
                f.push("op".to_owned());
            }
            if ev.schema != *change.relation.schema {
                f.push("schema".to_owned());
            }
            if ev.table != *change.relation.table {
                f.push("table".to_owned());
            }
            if parse_instant(&ev.commit_ts) != Some(change.commit_ts) {
                f.push("commit_ts".to_owned());
            }
            for (section, got, want) in [
                ("record", ev.record.as_ref(), record),
                ("old_record", ev.old_record.as_ref(), old),
            ] {
                match (got, want) {
                    (Some(g), Some(w)) => diff(section, g, w, None, true, &mut f),
                    (None, None) => {}
                    _ => f.push(section.to_owned()),
                }
            }
            push(MismatchKind::JsonField, f);
            Some(ev)
        }
        _ => {
            push(MismatchKind::JsonDecode, vec!["frame".to_owned()]);
            None
        }
    };

    // The Realtime change payload.
    let data = encode_change_data(change, facts);
    let rt = match serde_json::from_str::<Value>(&data) {
        Ok(Value::Object(o)) => {
            let mut f = Vec::new();
            let text = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("");
            if text("schema") != &*change.relation.schema {
                f.push("schema".to_owned());
            }
            if text("table") != &*change.relation.table {
                f.push("table".to_owned());
            }
            if text("type") != change.op.as_str() {
                f.push("type".to_owned());
            }
            let ts = parse_instant(text("commit_timestamp")).map(|t| t.timestamp_millis());
            if ts != Some(change.commit_ts.timestamp_millis()) {
                f.push("commit_timestamp".to_owned());
            }
            let truncated = o.get("errors").is_some_and(|e| !e.is_null());
            match change.op {
                Operation::Insert | Operation::Update => match object(&o, "record") {
                    Some(g) => diff(
                        "record",
                        g,
                        record.unwrap_or(&empty),
                        old,
                        !truncated,
                        &mut f,
                    ),
                    None => f.push("record".to_owned()),
                },
                Operation::Delete | Operation::Truncate | Operation::Gap => {}
            }
            if matches!(change.op, Operation::Update | Operation::Delete) {
                // The old image may be reduced to the primary key; what it has must be right.
                match object(&o, "old_record") {
                    Some(g) => {
                        let want = old.or(record).unwrap_or(&empty);
                        diff("old_record", g, want, None, false, &mut f);
                    }
                    None => f.push("old_record".to_owned()),
                }
            }
            push(MismatchKind::RealtimeField, f);
            Some(o)
        }
        _ => {
            push(MismatchKind::RealtimeDecode, vec!["payload".to_owned()]);
            None
        }
    };

    // The two formats against each other, on the fields both carry.
    if let (Some(ev), Some(o)) = (ws, rt) {
        let mut f = Vec::new();
        for section in ["record", "old_record"] {
            let a = if section == "record" {
                ev.record.as_ref()
            } else {
                ev.old_record.as_ref()
            };
            if let (Some(a), Some(b)) = (a, object(&o, section)) {
                for (k, v) in b {
                    if a.get(k).is_some_and(|w| !values_equal(v, w)) {
                        f.push(format!("{section}.{k}"));
                    }
                }
            }
        }
        push(MismatchKind::CrossPath, f);
    }
    findings
}

/// Compares the delivery counters of clients that receive every change, between two
/// registry snapshots (`before`: progress by client id, taken one interval earlier).
pub fn check_delivery(
    before: &HashMap<u64, (Endpoint, Progress)>,
    now: &[ClientSnapshot],
) -> DeliveryCheck {
    let eligible: Vec<(&ClientSnapshot, &Progress)> = now
        .iter()
        .filter(|c| c.receives_everything())
        .filter_map(|c| {
            before
                .get(&c.id)
                .filter(|(_, p)| p.generation == c.progress.generation)
                .map(|(_, p)| (c, p))
        })
        .collect();
    let has = |proto: Endpoint| eligible.iter().any(|(c, _)| c.protocol == proto);
    if !has(Endpoint::Ws) || !has(Endpoint::Realtime) {
        return DeliveryCheck {
            state: DeliveryState::NotApplicable,
            clients: eligible.len() as u64,
            detail: "needs a /ws and a Realtime client that both receive every change, \
                     connected for a whole interval"
                .into(),
        };
    }
    let same = |f: &dyn Fn(&(&ClientSnapshot, &Progress)) -> Option<crate::decode::Cursor>| {
        let first = f(&eligible[0]);
        eligible.iter().all(|e| f(e) == first)
    };
    if !same(&|(_, p)| p.position) || !same(&|(c, _)| c.progress.position) {
        return DeliveryCheck {
            state: DeliveryState::Skipped,
            clients: eligible.len() as u64,
            detail: "clients were at different stream positions".into(),
        };
    }
    let deltas: Vec<(Endpoint, u64, u64)> = eligible
        .iter()
        .map(|(c, p)| {
            (
                c.protocol,
                c.id,
                c.progress.delivered.saturating_sub(p.delivered),
            )
        })
        .collect();
    let first = deltas[0].2;
    if deltas.iter().all(|d| d.2 == first) {
        DeliveryCheck {
            state: DeliveryState::Ok,
            clients: deltas.len() as u64,
            detail: format!("each client delivered {first} changes"),
        }
    } else {
        let parts: Vec<String> = deltas
            .iter()
            .map(|(p, id, d)| format!("{}#{id}: {d}", p.as_str()))
            .collect();
        DeliveryCheck {
            state: DeliveryState::Mismatch,
            clients: deltas.len() as u64,
            detail: format!("different delivery counts: {}", parts.join(", ")),
        }
    }
}

/// Progress by client id, for the next delivery comparison.
fn progress_map(now: &[ClientSnapshot]) -> HashMap<u64, (Endpoint, Progress)> {
    now.iter()
        .map(|c| (c.id, (c.protocol, c.progress)))
        .collect()
}

/// What the checker task needs.
#[derive(Debug, Clone)]
pub struct ConsistencyTask {
    /// The hub to sample.
    pub hub: Hub,
    /// Where the counters go.
    pub metrics: Arc<Metrics>,
    /// Connected clients.
    pub clients: Arc<ClientRegistry>,
    /// The row gate (its table facts, as the Realtime sessions encode with them).
    pub gate: Arc<RlsGate>,
    /// The shared snapshot.
    pub consistency: Arc<Consistency>,
    /// Time between runs.
    pub interval: Duration,
}

/// Starts the checker; it stops when `token` is cancelled.
pub fn spawn_consistency_task(task: ConsistencyTask, token: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(task.run(token))
}

impl ConsistencyTask {
    /// The task loop.
    async fn run(self, token: CancellationToken) {
        let mut before = progress_map(&self.clients.snapshot(DELIVERY_CLIENTS_MAX));
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                // PRIORITY 1: shutdown.
                _ = token.cancelled() => return,
                // PRIORITY 2: the next run.
                _ = tick.tick() => {}
            }
            let sample = self.take_sample(&token).await;
            let now = self.clients.snapshot(DELIVERY_CLIENTS_MAX);
            let delivery = check_delivery(&before, &now);
            before = progress_map(&now);
            // The facts the Realtime sessions encode with (read again when stale; without a
            // database, whatever was read last).
            let tables = match self.gate.tables().await {
                Ok(t) => Some(t),
                Err(_) => self.gate.tables_now(),
            };
            let outcome = self.check(&sample, delivery, tables.as_deref());
            self.consistency.record(&outcome);
            if !outcome.findings.is_empty() {
                tracing::warn!(
                    mismatches = outcome.findings.len(),
                    checked = outcome.checked,
                    "consistency check found mismatches (see /v1/status)"
                );
            }
        }
    }

    /// Changes published during at most [`SAMPLE_WINDOW`], at most [`SAMPLE_MAX`] of them and
    /// at most [`SAMPLE_BYTES`] (a sample of large rows is a few rows, not 256).
    async fn take_sample(&self, token: &CancellationToken) -> Vec<Arc<HubItem>> {
        let mut sub = self.hub.subscribe(Format::None);
        let deadline = tokio::time::Instant::now() + SAMPLE_WINDOW;
        let mut items = Vec::new();
        let mut held = 0u64;
        while items.len() < SAMPLE_MAX && held < SAMPLE_BYTES {
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                r = sub.recv() => match r {
                    Ok(item) => {
                        held += item.bytes();
                        items.push(item);
                    }
                    // Behind the ring: skip ahead; this is a sample.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                },
            }
        }
        items
    }

    /// Checks a sample and records the counters.
    fn check(
        &self,
        sample: &[Arc<HubItem>],
        delivery: DeliveryCheck,
        tables: Option<&crate::catalog::Tables>,
    ) -> RunOutcome {
        let mut findings = Vec::new();
        let mut mismatched = 0;
        for item in sample {
            let c = &item.change;
            let rel = &c.relation;
            let table_facts = tables.and_then(|t| t.of(rel.oid, &rel.schema, &rel.table));
            let found = check_change(c, table_facts);
            if !found.is_empty() {
                mismatched += 1;
            }
            findings.extend(
                found
                    .into_iter()
                    .map(|f| (f.kind, f.field, c.cursor.encode())),
            );
        }
        if delivery.state == DeliveryState::Mismatch {
            findings.push((MismatchKind::Delivery, "changes_sent".into(), String::new()));
        }
        let m = &self.metrics;
        m.consistency_checked.add(sample.len() as u64);
        for (kind, _, _) in &findings {
            m.consistency_mismatches.add(kind.as_str(), 1);
        }
        let outcome = RunOutcome {
            at: Utc::now(),
            checked: sample.len() as u64,
            mismatched,
            findings,
            delivery,
        };
        m.consistency_match_ratio_ppm
            .set((outcome.ratio() * 1e6).round() as i64);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::admin::clients::SubscriptionInfo;
    use crate::decode::{Column, Cursor, Lsn, Relation, Row};

    fn relation() -> Arc<Relation> {
        let col = |name: &str, type_oid: u32, is_key: bool| Column {
            name: name.into(),
            type_oid,
            type_modifier: -1,
            is_key,
        };
        Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: "monitoring_events".into(),
            replica_identity: b'd',
            columns: Arc::from(vec![
                col("id", 2950, true),
                col("event_type", 25, false),
                col("timestamp", 1184, false),
                col("source", 25, false),
                col("data", 3802, false),
            ]),
        })
    }

    fn change(op: Operation) -> Change {
        let values = json!({
            "id": "0195c1de-0000-7000-8000-000000000001",
            "event_type": "cpu",
            "timestamp": "2026-11-23T18:01:59.123456Z",
            "source": "host-1",
            "data": {"load": 0.5, "tags": ["a"]},
        });
        let Value::Object(values) = values else {
            unreachable!()
        };
        let row = Row {
            values,
            unchanged_toast: Vec::new(),
        };
        let key = Row {
            values: row
                .values
                .iter()
                .filter(|(k, _)| *k == "id")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            unchanged_toast: Vec::new(),
        };
        Change {
            cursor: Cursor {
                commit_lsn: Lsn(0x16_B374_D848),
                index: 2,
            },
            xid: 7,
            commit_ts: Utc.timestamp_micros(1_795_000_000_123_456).unwrap(),
            relation: relation(),
            op,
            record: (op != Operation::Delete).then(|| row.clone()),
            old_record: (op == Operation::Delete).then_some(key),
        }
    }

    #[test]
    fn both_encoders_agree_with_the_change() {
        for op in [Operation::Insert, Operation::Update, Operation::Delete] {
            let c = change(op);
            assert_eq!(check_change(&c, None), vec![], "{op:?}");
        }
    }

    #[test]
    fn differences_are_named_by_field() {
        let want = json!({"id": "a", "ts": "2026-11-23T18:00:00Z", "n": 1});
        let got = json!({"id": "a", "ts": "2026-11-23T18:00:00+00:00", "n": 2});
        let (Value::Object(want), Value::Object(got)) = (want, got) else {
            unreachable!()
        };
        let mut out = Vec::new();
        diff("record", &got, &want, None, true, &mut out);
        assert_eq!(out, vec!["record.n".to_owned()]);
        let mut partial = got.clone();
        partial.remove("n");
        out.clear();
        diff("record", &partial, &want, None, true, &mut out);
        assert_eq!(
            out,
            vec!["record.n".to_owned()],
            "a missing field counts when complete"
        );
        out.clear();
        diff("old_record", &partial, &want, None, false, &mut out);
        assert!(out.is_empty(), "a reduced old image is fine");
    }

    #[test]
    fn a_payload_cut_for_size_is_not_a_mismatch() {
        let mut c = change(Operation::Insert);
        let big = "x".repeat(crate::realtime::protocol::MAX_RECORD_BYTES + 10);
        c.record
            .as_mut()
            .unwrap()
            .values
            .insert("source".into(), json!(big));
        assert_eq!(check_change(&c, None), vec![]);
    }

    fn snap(id: u64, protocol: Endpoint, delivered: u64, pos: u64) -> ClientSnapshot {
        ClientSnapshot {
            id,
            protocol,
            peer: None,
            connected_at: Utc::now(),
            frames_sent: 0,
            changes_sent: delivered,
            subscriptions: vec![SubscriptionInfo {
                id: "s".into(),
                filter: "*".into(),
                everything: true,
            }],
            progress: Progress {
                position: Some(Cursor {
                    commit_lsn: Lsn(pos),
                    index: 0,
                }),
                delivered,
                generation: 1,
            },
        }
    }

    #[test]
    fn delivery_counts_are_compared_only_when_comparable() {
        let before = progress_map(&[
            snap(1, Endpoint::Ws, 10, 5),
            snap(2, Endpoint::Realtime, 4, 5),
        ]);
        let ok = check_delivery(
            &before,
            &[
                snap(1, Endpoint::Ws, 13, 9),
                snap(2, Endpoint::Realtime, 7, 9),
            ],
        );
        assert_eq!(ok.state, DeliveryState::Ok, "{ok:?}");
        let bad = check_delivery(
            &before,
            &[
                snap(1, Endpoint::Ws, 13, 9),
                snap(2, Endpoint::Realtime, 6, 9),
            ],
        );
        assert_eq!(bad.state, DeliveryState::Mismatch);
        let moving = check_delivery(
            &before,
            &[
                snap(1, Endpoint::Ws, 13, 9),
                snap(2, Endpoint::Realtime, 6, 8),
            ],
        );
        assert_eq!(moving.state, DeliveryState::Skipped);
        let alone = check_delivery(&before, &[snap(1, Endpoint::Ws, 13, 9)]);
        assert_eq!(alone.state, DeliveryState::NotApplicable);
    }

    #[test]
    fn the_snapshot_accumulates_runs() {
        let c = Consistency::new(Some(Duration::from_secs(30)));
        c.record(&RunOutcome {
            at: Utc::now(),
            checked: 4,
            mismatched: 1,
            findings: vec![(MismatchKind::CrossPath, "record.data".into(), "c".into())],
            delivery: DeliveryCheck::default(),
        });
        let s = c.snapshot();
        assert!(s.enabled);
        assert_eq!((s.runs, s.checked_total, s.mismatches_total), (1, 4, 1));
        assert_eq!(s.match_ratio, 0.75);
        assert_eq!(s.mismatches["cross_path"], 1);
    }
}
