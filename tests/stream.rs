//! Tests: WAL → `/ws`. Rows written with SQL (or `generate_series`) must reach WebSocket clients
//! through logical replication: every operation, every filter, in commit order, exactly once,
//! across client disconnects, walcast crashes, Postgres crashes, slow clients, huge
//! transactions and expired cursors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::support::ws::{ResumingCollector, SeenEvent, WsClient};
use crate::support::{self, TestDb, Walcast};

/// Generous timeout for one expected frame.
const FRAME: Duration = Duration::from_secs(15);

/// Inserts one row (its own transaction) and returns its id.
async fn insert(c: &Client, event_type: &str, source: &str, ts: &str, data: Value) -> String {
    c.query_one(
        "insert into public.monitoring_events (event_type, source, \"timestamp\", data) \
         values ($1, $2, $3::text::timestamptz, $4) returning id::text",
        &[&event_type, &source, &ts, &data],
    )
    .await
    .expect("insert row")
    .get(0)
}

/// Inserts one row with a given id (its own transaction).
async fn insert_with_id(
    c: &Client,
    id: &str,
    event_type: &str,
) -> Result<u64, tokio_postgres::Error> {
    c.execute(
        "insert into public.monitoring_events (id, event_type, source) values ($1::text::uuid, $2, 'test')",
        &[&id, &event_type],
    )
    .await
}

/// Inserts one row with a default timestamp and data.
async fn insert_simple(c: &Client, event_type: &str, source: &str) -> String {
    insert(c, event_type, source, "2026-01-01T00:00:00Z", json!({})).await
}

/// The id of an event frame (`record.id`, else `old_record.id`).
fn id_of(f: &Value) -> Option<String> {
    f["record"]["id"]
        .as_str()
        .or_else(|| f["old_record"]["id"].as_str())
        .map(str::to_owned)
}

/// The commit LSN part of a cursor.
fn cursor_lsn(c: &str) -> u64 {
    assert!(
        c.len() == 24 && c.bytes().all(|b| b.is_ascii_hexdigit()),
        "cursor {c:?} is not 24 hex digits"
    );
    u64::from_str_radix(&c[..16], 16).expect("cursor lsn")
}

/// Parses Postgres' `X/Y` LSN text.
fn parse_pg_lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').expect("lsn text");
    (u64::from_str_radix(hi, 16).expect("lsn hi") << 32) | u64::from_str_radix(lo, 16).expect("lo")
}

/// Fails unless the cursors are strictly increasing (cursors compare as strings: fixed-width hex).
fn assert_increasing<'a>(cursors: impl IntoIterator<Item = &'a str>, what: &str) {
    let mut prev: Option<&str> = None;
    for (i, c) in cursors.into_iter().enumerate() {
        cursor_lsn(c);
        if let Some(p) = prev {
            assert!(
                c > p,
                "{what}: cursor #{i} {c} is not after the previous {p}"
            );
        }
        prev = Some(c);
    }
}

/// The last `n` lines of a log, for failure messages.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Ids in `expected` missing from `got`, and ids of `got` seen more than once (first few).
fn diff_ids(expected: &[String], got: &[SeenEvent]) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in got {
        if let Some(id) = &e.id {
            *counts.entry(id).or_default() += 1;
        }
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    let dups: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let exp: HashSet<&str> = expected.iter().map(String::as_str).collect();
    let extra: Vec<&&str> = counts.keys().filter(|id| !exp.contains(**id)).collect();
    format!(
        "expected {} ids, got {} events; missing {} (first: {:?}); duplicated {} (first: {:?}); unexpected {} (first: {:?})",
        expected.len(),
        got.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        dups.len(),
        dups.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>()
    )
}

/// Every id in the table (a set: no order).
async fn table_ids(c: &Client) -> HashSet<String> {
    c.query("select id::text from public.monitoring_events", &[])
        .await
        .expect("select ids")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// Reads events on `c` until the row with id `sentinel` arrives; returns the events before it.
async fn events_until(c: &mut WsClient, sentinel: &str, what: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next_frame(left).await {
            Some(f) if f["type"] == "event" => {
                if id_of(&f).as_deref() == Some(sentinel) {
                    return out;
                }
                out.push(f);
            }
            Some(f) => panic!("{what}: unexpected frame {f}"),
            None => panic!(
                "{what}: no sentinel (timeout/close {:?}) after {} events",
                c.closed,
                out.len()
            ),
        }
    }
    panic!("{what}: too many frames")
}

/// The slot's confirmed_flush_lsn.
async fn slot_confirmed(c: &Client, db: &TestDb) -> Option<u64> {
    let row = c
        .query_opt(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'walcast_' || $1::text",
            &[&db.node()],
        )
        .await
        .expect("slot query")?;
    row.get::<_, Option<String>>(0).map(|s| parse_pg_lsn(&s))
}

// ---------------------------------------------------------------------------------------------
// 1. A SQL insert becomes an event frame.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_insert_reaches_ws_client() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let mut c = WsClient::connect(&w.ws_url("/ws")).await;
    c.subscribe("all", json!({})).await;
    let sql = db.client().await;
    let row = sql
        .query_one(
            "insert into public.monitoring_events (event_type, source, \"timestamp\", data, metadata) \
             values ('cpu', 'host-1', '2026-11-23T19:01:59.123456+01:00', \
                     '{\"cores\": 8, \"usage\": 93.5, \"tags\": [\"a\", \"b\"], \"nested\": {\"x\": null}}', \
                     '{\"region\": \"eu\"}') \
             returning id::text, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .expect("insert");
    let id: String = row.get(0);
    let created_at: String = row.get(1);
    let evs = c.events(1, FRAME).await;
    let e = &evs[0];
    assert_eq!(e["type"], "event");
    assert_eq!(e["op"], "INSERT", "{e}");
    assert_eq!(e["schema"], "public", "{e}");
    assert_eq!(e["table"], "monitoring_events", "{e}");
    cursor_lsn(e["cursor"].as_str().expect("cursor"));
    let commit_ts = e["commit_ts"].as_str().expect("commit_ts is a string");
    let parsed = chrono::DateTime::parse_from_rfc3339(commit_ts).expect("commit_ts is RFC 3339");
    assert!(commit_ts.ends_with('Z'), "commit_ts in UTC: {commit_ts}");
    let age = chrono::Utc::now().signed_duration_since(parsed);
    assert!(
        age < chrono::TimeDelta::seconds(60) && age > chrono::TimeDelta::seconds(-60),
        "commit_ts {commit_ts} is not about now"
    );
    assert_eq!(e["old_record"], Value::Null, "{e}");
    // `created_at` is compared as an instant: walcast, like Postgres' JSON, writes no trailing
    // zeros in the fraction, while `to_char` writes all six digits.
    let mut record = e["record"].clone();
    let sent_created_at = record
        .as_object_mut()
        .and_then(|r| r.remove("created_at"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("created_at");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&sent_created_at).expect("RFC 3339"),
        chrono::DateTime::parse_from_rfc3339(&created_at).expect("RFC 3339"),
        "created_at of {e}"
    );
    let expected = json!({
        "id": id,
        "event_type": "cpu",
        "timestamp": "2026-11-23T18:01:59.123456Z",
        "source": "host-1",
        "data": {"cores": 8, "usage": 93.5, "tags": ["a", "b"], "nested": {"x": null}},
        "metadata": {"region": "eu"},
    });
    assert_eq!(record, expected, "record of {e}");
    assert!(e.get("unchanged_toast").is_none(), "{e}");
    c.expect_no_event(Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Filters.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_filters_select_rows() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let url = w.ws_url("/ws");
    // (name, subscribe fields, expected "OP:row" keys in commit order)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "event_type single",
            json!({"event_type": "cpu"}),
            vec!["INSERT:r1", "INSERT:r4"],
        ),
        (
            "event_type list",
            json!({"event_type": ["cpu", "disk"]}),
            vec!["INSERT:r1", "INSERT:r3", "INSERT:r4", "UPDATE:r3"],
        ),
        (
            "source",
            json!({"source": "host-2"}),
            vec!["INSERT:r3", "INSERT:r5", "UPDATE:r3"],
        ),
        (
            "source list",
            json!({"source": ["host-2", "host-3"]}),
            vec!["INSERT:r3", "INSERT:r4", "INSERT:r5", "UPDATE:r3"],
        ),
        (
            "ops list",
            json!({"ops": ["UPDATE", "DELETE"]}),
            vec!["UPDATE:r3", "DELETE:r5"],
        ),
        (
            "ops single lower case",
            json!({"ops": "insert"}),
            vec![
                "INSERT:r1",
                "INSERT:r2",
                "INSERT:r3",
                "INSERT:r4",
                "INSERT:r5",
            ],
        ),
        (
            "eq",
            json!({"filters": ["source=eq.host-1"]}),
            vec!["INSERT:r1", "INSERT:r2"],
        ),
        (
            "neq",
            json!({"filters": "source=neq.host-1"}),
            // DELETE's old_record holds only the id: a missing column never matches.
            vec!["INSERT:r3", "INSERT:r4", "INSERT:r5", "UPDATE:r3"],
        ),
        (
            "lt timestamp",
            json!({"filters": ["timestamp=lt.2026-01-03T00:00:00Z"]}),
            vec!["INSERT:r1", "INSERT:r2"],
        ),
        (
            "lte timestamp",
            json!({"filters": ["timestamp=lte.2026-01-03T00:00:00Z"]}),
            vec!["INSERT:r1", "INSERT:r2", "INSERT:r3", "UPDATE:r3"],
        ),
        (
            "gt timestamp with offset",
            json!({"filters": ["timestamp=gt.2026-01-03T01:00:00+01:00"]}),
            vec!["INSERT:r4", "INSERT:r5"],
        ),
        (
            "gte timestamp",
            json!({"filters": ["timestamp=gte.2026-01-03T00:00:00Z"]}),
            vec!["INSERT:r3", "INSERT:r4", "INSERT:r5", "UPDATE:r3"],
        ),
        (
            "in",
            json!({"filters": ["event_type=in.(mem,\"net\")"]}),
            vec!["INSERT:r2", "INSERT:r5"],
        ),
        (
            "lt on text",
            json!({"filters": ["source=lt.host-2"]}),
            vec!["INSERT:r1", "INSERT:r2"],
        ),
        (
            "not.like and a Postgres-style timestamp",
            json!({"filters": ["source=not.like.host-1%", "timestamp=gte.2026-01-03 00:00:00+00"]}),
            vec!["INSERT:r3", "INSERT:r4", "INSERT:r5", "UPDATE:r3"],
        ),
        (
            "all of event_type, source, ops and filters",
            json!({"event_type": ["cpu", "disk"], "source": ["host-1", "host-2", "host-3"],
                   "ops": ["INSERT"], "filters": ["source=neq.host-2", "timestamp=gte.2026-01-02T00:00:00Z"]}),
            vec!["INSERT:r4"],
        ),
    ];
    let mut clients = Vec::new();
    for (name, fields, _) in &cases {
        let mut c = WsClient::connect(&url).await;
        c.subscribe("f", fields.clone()).await;
        // Every connection also hears the sentinel, so it knows when everything was examined.
        c.subscribe("sentinel", json!({"event_type": "sentinel"}))
            .await;
        clients.push((name, c));
    }
    // Two subscriptions matching the same change: delivered once.
    let mut both = WsClient::connect(&url).await;
    both.subscribe("a", json!({"event_type": "cpu"})).await;
    both.subscribe("b", json!({"source": "host-1"})).await;
    both.subscribe("sentinel", json!({"event_type": "sentinel"}))
        .await;

    // An invalid filter: error, no subscription, connection still usable.
    let mut bad = WsClient::connect(&url).await;
    bad.send(json!({"type": "subscribe", "id": "bad", "filters": ["source=likes.host%"]}))
        .await;
    let e = bad.next_non_event(FRAME).await.expect("error frame");
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "invalid_filter", "{e}");
    assert_eq!(e["ref"], "bad", "{e}");
    let msg = e["message"].as_str().expect("message");
    assert!(
        msg.contains("likes")
            && msg.contains("source=likes.host%")
            && msg.contains("like, ilike, is, match, imatch or isdistinct"),
        "unhelpful message: {msg}"
    );
    bad.send(json!({"type": "subscribe", "id": "bad2", "filters": ["timestamp"]}))
        .await;
    let e = bad.next_non_event(FRAME).await.expect("error frame");
    assert_eq!(e["code"], "invalid_filter", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("column=op.value"),
        "unhelpful message: {e}"
    );
    bad.send(json!({"type": "subscribe", "id": "bad3", "filters": ["event_type=in.()"]}))
        .await;
    let e = bad.next_non_event(FRAME).await.expect("error frame");
    assert_eq!(e["code"], "invalid_filter", "{e}");
    bad.send(json!({"type": "ping", "ref": "p"})).await;
    let p = bad.next_non_event(FRAME).await.expect("pong");
    assert_eq!(p, json!({"type": "pong", "ref": "p"}));
    // "bad" was not created: the id is free.
    bad.subscribe("bad", json!({"event_type": "mem"})).await;
    bad.subscribe("sentinel", json!({"event_type": "sentinel"}))
        .await;

    let sql = db.client().await;
    let mut names: HashMap<String, &str> = HashMap::new();
    for (name, et, src, ts) in [
        ("r1", "cpu", "host-1", "2026-01-01T00:00:00Z"),
        ("r2", "mem", "host-1", "2026-01-02T00:00:00Z"),
        ("r3", "disk", "host-2", "2026-01-03T00:00:00Z"),
        ("r4", "cpu", "host-3", "2026-01-04T00:00:00Z"),
        ("r5", "net", "host-2", "2026-01-05T00:00:00Z"),
    ] {
        let id = insert(&sql, et, src, ts, json!({"row": name})).await;
        names.insert(id, name);
    }
    let r3 = names
        .iter()
        .find(|(_, n)| **n == "r3")
        .map(|(i, _)| i.clone())
        .expect("r3");
    let r5 = names
        .iter()
        .find(|(_, n)| **n == "r5")
        .map(|(i, _)| i.clone())
        .expect("r5");
    sql.execute(
        "update public.monitoring_events set data = '{\"updated\": true}' where id = $1::text::uuid",
        &[&r3],
    )
    .await
    .expect("update");
    sql.execute(
        "delete from public.monitoring_events where id = $1::text::uuid",
        &[&r5],
    )
    .await
    .expect("delete");
    let sentinel = insert(&sql, "sentinel", "zz", "2027-01-01T00:00:00Z", json!({})).await;

    let keys = |evs: &[Value]| -> Vec<String> {
        evs.iter()
            .map(|f| {
                let id = id_of(f).unwrap_or_default();
                format!(
                    "{}:{}",
                    f["op"].as_str().unwrap_or("?"),
                    names.get(&id).copied().unwrap_or("?")
                )
            })
            .collect()
    };
    let mut failures = Vec::new();
    for ((name, mut c), (_, fields, expected)) in clients.into_iter().zip(cases.iter()) {
        let evs = events_until(&mut c, &sentinel, name).await;
        let got = keys(&evs);
        if got != *expected {
            failures.push(format!(
                "{name} ({fields}): expected {expected:?}, got {got:?}"
            ));
        }
        assert_increasing(evs.iter().map(|f| f["cursor"].as_str().unwrap_or("")), name);
    }
    assert!(
        failures.is_empty(),
        "filter mismatches:\n{}",
        failures.join("\n")
    );

    let evs = events_until(&mut both, &sentinel, "two subscriptions").await;
    assert_eq!(
        keys(&evs),
        vec!["INSERT:r1", "INSERT:r2", "INSERT:r4"],
        "a change matching two subscriptions must arrive once"
    );
    let evs = events_until(&mut bad, &sentinel, "after invalid filters").await;
    assert_eq!(keys(&evs), vec!["INSERT:r2"]);
}

// ---------------------------------------------------------------------------------------------
// 3. UPDATE, DELETE, TRUNCATE.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_delete_truncate_in_commit_order() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let mut c = WsClient::connect(&w.ws_url("/ws")).await;
    c.subscribe("all", json!({})).await;
    let sql = db.client().await;
    let a = insert(
        &sql,
        "cpu",
        "host-1",
        "2026-01-01T00:00:00Z",
        json!({"v": 1}),
    )
    .await;
    let b = insert(
        &sql,
        "mem",
        "host-2",
        "2026-01-01T00:00:00Z",
        json!({"v": 2}),
    )
    .await;
    sql.execute(
        "update public.monitoring_events set source = 'host-x', data = '{\"v\": 10}' where id = $1::text::uuid",
        &[&a],
    )
    .await
    .expect("update");
    sql.execute(
        "delete from public.monitoring_events where id = $1::text::uuid",
        &[&b],
    )
    .await
    .expect("delete");
    // One transaction with several changes, including an update of the key.
    let new_a = uuid::Uuid::new_v4().to_string();
    sql.batch_execute(&format!(
        "begin;
         insert into public.monitoring_events (event_type, source) values ('t1', 's');
         update public.monitoring_events set id = '{new_a}' where id = '{a}';
         insert into public.monitoring_events (event_type, source) values ('t2', 's');
         commit;"
    ))
    .await
    .expect("multi-change transaction");
    sql.batch_execute("truncate public.monitoring_events")
        .await
        .expect("truncate");
    let evs = c.events(8, FRAME).await;
    let ops: Vec<&str> = evs
        .iter()
        .map(|f| f["op"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        ops,
        [
            "INSERT", "INSERT", "UPDATE", "DELETE", "INSERT", "UPDATE", "INSERT", "TRUNCATE"
        ],
        "events: {evs:?}"
    );
    assert_increasing(
        evs.iter().map(|f| f["cursor"].as_str().unwrap_or("")),
        "ops",
    );
    for f in &evs {
        assert_eq!(f["schema"], "public", "{f}");
        assert_eq!(f["table"], "monitoring_events", "{f}");
    }
    // UPDATE without key change, default replica identity: new row, no old row.
    let u = &evs[2];
    assert_eq!(u["record"]["id"], a.as_str(), "{u}");
    assert_eq!(u["record"]["source"], "host-x", "{u}");
    assert_eq!(u["record"]["data"], json!({"v": 10}), "{u}");
    assert_eq!(u["record"]["event_type"], "cpu", "{u}");
    assert_eq!(u["old_record"], Value::Null, "{u}");
    // DELETE: the old row holds only the key.
    let d = &evs[3];
    assert_eq!(d["record"], Value::Null, "{d}");
    assert_eq!(d["old_record"], json!({"id": b}), "{d}");
    // The multi-change transaction: one commit LSN, indexes 0, 1, 2.
    let tx: Vec<&str> = evs[4..7]
        .iter()
        .map(|f| f["cursor"].as_str().unwrap_or(""))
        .collect();
    assert!(
        tx.iter().all(|c| c[..16] == tx[0][..16]),
        "one transaction, one commit LSN: {tx:?}"
    );
    assert_eq!(
        tx.iter().map(|c| &c[16..]).collect::<Vec<_>>(),
        ["00000000", "00000001", "00000002"],
        "indexes inside the transaction"
    );
    assert_eq!(evs[4]["record"]["event_type"], "t1");
    assert_eq!(evs[6]["record"]["event_type"], "t2");
    assert_eq!(
        evs[4]["commit_ts"], evs[6]["commit_ts"],
        "same transaction, same commit_ts"
    );
    // Key update: the old key is sent.
    let k = &evs[5];
    assert_eq!(k["record"]["id"], new_a.as_str(), "{k}");
    assert_eq!(k["old_record"], json!({"id": a}), "{k}");
    // TRUNCATE: no rows.
    let t = &evs[7];
    assert_eq!(t["record"], Value::Null, "{t}");
    assert_eq!(t["old_record"], Value::Null, "{t}");

    // REPLICA IDENTITY FULL: UPDATE and DELETE carry the whole old row.
    sql.batch_execute("alter table public.monitoring_events replica identity full")
        .await
        .expect("replica identity full");
    let e = insert(
        &sql,
        "cpu",
        "host-9",
        "2026-01-01T00:00:00Z",
        json!({"v": 1}),
    )
    .await;
    sql.execute(
        "update public.monitoring_events set data = '{\"v\": 2}' where id = $1::text::uuid",
        &[&e],
    )
    .await
    .expect("update full");
    sql.execute(
        "delete from public.monitoring_events where id = $1::text::uuid",
        &[&e],
    )
    .await
    .expect("delete full");
    let evs2 = c.events(3, FRAME).await;
    assert_eq!(evs2[1]["op"], "UPDATE");
    assert_eq!(
        evs2[1]["old_record"]["data"],
        json!({"v": 1}),
        "{}",
        evs2[1]
    );
    assert_eq!(evs2[1]["old_record"]["source"], "host-9", "{}", evs2[1]);
    assert_eq!(evs2[1]["record"]["data"], json!({"v": 2}), "{}", evs2[1]);
    assert_eq!(evs2[2]["op"], "DELETE");
    assert_eq!(evs2[2]["old_record"], evs2[1]["record"], "{}", evs2[2]);
    assert!(
        evs2[0]["cursor"].as_str() > evs[7]["cursor"].as_str(),
        "cursors keep increasing"
    );
    assert_increasing(
        evs2.iter().map(|f| f["cursor"].as_str().unwrap_or("")),
        "full",
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Resume after a disconnect.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_replays_missed_rows_once() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let url = w.ws_url("/ws");
    let sub = json!({"event_type": "cpu"});
    let sql = db.client().await;
    let mut c = WsClient::connect(&url).await;
    c.subscribe("cpu", sub.clone()).await;
    let mut expected = Vec::new();
    for i in 0..3 {
        expected.push(insert_simple(&sql, "cpu", &format!("h{i}")).await);
        insert_simple(&sql, "mem", "m").await;
    }
    let first = c.events(3, FRAME).await;
    let first_ids: Vec<String> = first.iter().filter_map(id_of).collect();
    assert_eq!(first_ids, expected);
    let last = first[2]["cursor"].as_str().expect("cursor").to_owned();
    c.socket.close(None).await.expect("close");
    drop(c);

    // Missed while away: single-row transactions and a multi-row transaction.
    let mut missed = Vec::new();
    for i in 0..4 {
        insert_simple(&sql, "mem", "m").await;
        missed.push(insert_simple(&sql, "cpu", &format!("away{i}")).await);
    }
    let multi: Vec<String> = sql
        .query(
            "insert into public.monitoring_events (event_type, source) \
             select case when g % 2 = 0 then 'cpu' else 'mem' end, 'multi' || g from generate_series(1, 6) g \
             returning id::text, event_type",
            &[],
        )
        .await
        .expect("multi insert")
        .iter()
        .filter(|r| r.get::<_, String>(1) == "cpu")
        .map(|r| r.get(0))
        .collect();
    missed.extend(multi);
    insert_simple(&sql, "mem", "m").await;
    // Wait until walcast has streamed everything (a watcher sees the last row).
    let mut watch = WsClient::connect(&url).await;
    watch.subscribe("all", json!({})).await;
    let marker = insert_simple(&sql, "marker", "m").await;
    events_until(&mut watch, &marker, "watcher").await;

    let mut c = WsClient::connect(&url).await;
    c.subscribe("cpu", sub.clone()).await;
    let (replayed, resumed) = c.resume(&last, FRAME).await;
    let got: Vec<String> = replayed.iter().filter_map(id_of).collect();
    assert_eq!(
        got,
        missed,
        "replay after {last}: wrong ids (expected {} rows, got {})",
        missed.len(),
        got.len()
    );
    assert_eq!(resumed["cursor"], last.as_str(), "{resumed}");
    assert_eq!(resumed["replayed"], missed.len() as u64, "{resumed}");
    let mut all: Vec<&str> = first
        .iter()
        .map(|f| f["cursor"].as_str().unwrap_or(""))
        .collect();
    all.extend(replayed.iter().map(|f| f["cursor"].as_str().unwrap_or("")));
    assert_increasing(all.iter().copied(), "first connection + replay");
    // Live events continue after the replay, without a gap or repeat.
    let live1 = insert_simple(&sql, "cpu", "live1").await;
    insert_simple(&sql, "mem", "m").await;
    let live2 = insert_simple(&sql, "cpu", "live2").await;
    let live = c.events(2, FRAME).await;
    assert_eq!(
        live.iter().filter_map(id_of).collect::<Vec<_>>(),
        vec![live1, live2]
    );
    assert!(live[0]["cursor"].as_str() > replayed.last().and_then(|f| f["cursor"].as_str()));
    c.expect_no_event(Duration::from_millis(300)).await;

    // Resuming from a cursor in the middle of a transaction replays the rest of it.
    let mid = &replayed[4]; // the first cpu row of the multi-row transaction
    let mut c3 = WsClient::connect(&url).await;
    c3.subscribe("cpu", sub).await;
    let (again, resumed) = c3
        .resume(mid["cursor"].as_str().expect("cursor"), FRAME)
        .await;
    let got: Vec<String> = again.iter().filter_map(id_of).collect();
    let mut want: Vec<String> = missed[5..].to_vec();
    want.push(
        live[0]["record"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    want.push(
        live[1]["record"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    assert_eq!(got, want, "replay from a mid-transaction cursor");
    assert_eq!(resumed["replayed"], want.len() as u64);
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 of walcast under load.
// ---------------------------------------------------------------------------------------------

/// Inserts `n` single-row transactions (one every `pause`) on one connection; returns the ids in
/// commit order. `done` counts committed rows.
async fn steady_inserts(
    db: TestDb,
    n: usize,
    pause: Duration,
    done: Arc<AtomicUsize>,
) -> Vec<String> {
    let c = db.client().await;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(insert_simple(&c, "load", &format!("i{i}")).await);
        done.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walcast_kill9_under_load_then_resume_loses_nothing() {
    let db = support::fresh_db().await;
    let mut w = Walcast::start(&db, &[]).await;
    let url = w.ws_url("/ws");
    // The sentinel's id is known before it is inserted, so the collector can stop on it.
    let sentinel = uuid::Uuid::new_v4().to_string();
    let mut col = ResumingCollector::connect(&url, json!({})).await;
    let received = col.progress();
    let stop_at = sentinel.clone();
    let collector = tokio::spawn(async move {
        col.collect_until(Duration::from_secs(180), move |ev| {
            ev.id.as_deref() == Some(stop_at.as_str())
        })
        .await;
        col.finish().await
    });

    let committed = Arc::new(AtomicUsize::new(0));
    let inserter = tokio::spawn(steady_inserts(
        db.clone(),
        600,
        Duration::from_millis(5),
        Arc::clone(&committed),
    ));
    let t0 = Instant::now();
    assert!(
        support::wait_until(Duration::from_secs(60), || {
            let r = Arc::clone(&received);
            async move { r.load(Ordering::Relaxed) >= 100 }
        })
        .await,
        "the client never received 100 events; log:\n{}",
        tail(&w.log_text(), 40)
    );
    w.kill9();
    let at_kill = committed.load(Ordering::Relaxed);
    assert!(
        support::wait_until(Duration::from_secs(30), || {
            let c = Arc::clone(&committed);
            async move { c.load(Ordering::Relaxed) >= at_kill + 50 }
        })
        .await,
        "inserts stalled while walcast was down"
    );
    w.restart().await;
    let restarted_at = committed.load(Ordering::Relaxed);
    let ids = inserter.await.expect("inserter");
    let sql = db.client().await;
    insert_with_id(&sql, &sentinel, "sentinel")
        .await
        .expect("insert sentinel");
    let got = collector.await.expect("collector");
    let log = tail(&w.log_text(), 40);
    assert!(
        got.done,
        "collector did not see the sentinel: {}; notes {:?}; log:\n{log}",
        diff_ids(&ids, &got.events),
        got.notes
    );
    let load: Vec<SeenEvent> = got
        .events
        .iter()
        .filter(|e| e.id.as_ref().is_some_and(|i| *i != sentinel))
        .cloned()
        .collect();
    let load_ids: Vec<String> = load.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(
        load_ids,
        ids,
        "ids differ from the committed ones: {}; notes {:?}",
        diff_ids(&ids, &load),
        got.notes
    );
    assert_increasing(
        got.events.iter().map(|e| e.cursor.as_str()),
        "across the crash",
    );
    assert!(
        got.reconnects >= 1,
        "the client never had to reconnect: {:?}",
        got.notes
    );
    assert!(got.errors.is_empty(), "error frames: {:?}", got.errors);
    eprintln!(
        "kill9: {} rows, killed after {at_kill} committed, restarted after {restarted_at}, \
         reconnects {}, replayed {}, {:?} total",
        ids.len(),
        got.reconnects,
        got.replayed,
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Postgres crash (stop -m immediate) and restart under load.
// ---------------------------------------------------------------------------------------------

/// A SQL connection, or None when the server cannot be reached.
async fn try_sql(url: &str) -> Option<Client> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(c)
}

/// What the crash-tolerant inserter saw.
#[derive(Debug, Default)]
struct InsertLog {
    /// Inserts acknowledged by Postgres, in commit order.
    acked: Vec<String>,
    /// Inserts that failed (they may or may not have committed).
    uncertain: Vec<String>,
}

/// Inserts `n` single-row transactions with client-side ids, reconnecting after errors.
async fn inserts_through_outage(
    url: String,
    n: usize,
    errors: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
) -> InsertLog {
    let mut log = InsertLog::default();
    let mut client: Option<Client> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..n {
        while client.is_none() {
            assert!(Instant::now() < deadline, "Postgres did not come back");
            client = try_sql(&url).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        match insert_with_id(client.as_ref().expect("client"), &id, "load").await {
            Ok(_) => {
                log.acked.push(id);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                log.uncertain.push(id);
                errors.fetch_add(1, Ordering::Relaxed);
                client = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_and_restart_under_load_loses_nothing() {
    let dir = support::temp_dir("pgrestart");
    let cluster = support::start_cluster_blocking(&dir);
    let db = support::fresh_db_on(cluster.host(), cluster.port()).await;
    let w = Walcast::start(&db, &[]).await;
    let url = w.ws_url("/ws");
    let sentinel = uuid::Uuid::new_v4().to_string();
    let mut col = ResumingCollector::connect(&url, json!({})).await;
    let received = col.progress();
    let stop_at = sentinel.clone();
    let collector = tokio::spawn(async move {
        col.collect_until(Duration::from_secs(180), move |ev| {
            ev.id.as_deref() == Some(stop_at.as_str())
        })
        .await;
        col.finish().await
    });
    let errors = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let inserter = tokio::spawn(inserts_through_outage(
        db.url.clone(),
        600,
        Arc::clone(&errors),
        Arc::clone(&acked),
    ));
    let t0 = Instant::now();
    assert!(
        support::wait_until(Duration::from_secs(60), || {
            let r = Arc::clone(&received);
            async move { r.load(Ordering::Relaxed) >= 100 }
        })
        .await,
        "the client never received 100 events; log:\n{}",
        tail(&w.log_text(), 40)
    );
    cluster
        .stop(walcast::cluster::StopMode::Immediate)
        .await
        .expect("stop -m immediate");
    let stopped_at = acked.load(Ordering::Relaxed);
    assert!(
        support::wait_until(Duration::from_secs(10), || {
            let e = Arc::clone(&errors);
            async move { e.load(Ordering::Relaxed) >= 1 }
        })
        .await,
        "no insert failed while Postgres was down"
    );
    // Keep Postgres down until walcast has noticed: /readyz reports the stream down.
    let down_for = Instant::now();
    let ready_url = w.url("/readyz");
    let noticed = support::wait_until(Duration::from_secs(15), || {
        let u = ready_url.clone();
        async move { support::get(&u).await.0 != 200 }
    })
    .await;
    assert!(
        noticed,
        "walcast never reported the replication stream down"
    );
    cluster.restart().await.expect("restart postgres");
    let down_for = down_for.elapsed();
    let log = inserter.await.expect("inserter");
    let sql = db.client().await;
    insert_with_id(&sql, &sentinel, "sentinel")
        .await
        .expect("insert sentinel");
    let got = collector.await.expect("collector");
    let wlog = tail(&w.log_text(), 40);
    assert!(
        got.done,
        "collector did not see the sentinel: {}; notes {:?}; log:\n{wlog}",
        diff_ids(&log.acked, &got.events),
        got.notes
    );
    let mut w = w;
    assert!(
        matches!(w.child.try_wait(), Ok(None)),
        "walcast exited after the Postgres restart; log:\n{wlog}"
    );
    let (status, _) = support::get(&w.url("/readyz")).await;
    assert_eq!(status, 200, "walcast not ready again; log:\n{wlog}");
    assert!(
        w.log_text().contains("reconnecting"),
        "the reader never logged a reconnect; log:\n{wlog}"
    );

    let table: HashSet<String> = table_ids(&sql).await;
    let delivered: Vec<&SeenEvent> = got
        .events
        .iter()
        .filter(|e| e.id.as_deref() != Some(sentinel.as_str()))
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in &delivered {
        *counts.entry(e.id.as_deref().unwrap_or("")).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "delivered more than once: {dups:?}; notes {:?}",
        got.notes
    );
    let not_in_table: Vec<_> = counts.keys().filter(|id| !table.contains(**id)).collect();
    assert!(
        not_in_table.is_empty(),
        "delivered ids that are not in the table: {not_in_table:?}"
    );
    let acked_order: Vec<&str> = delivered
        .iter()
        .filter_map(|e| e.id.as_deref())
        .filter(|id| log.acked.iter().any(|a| a == id))
        .collect();
    assert_eq!(
        acked_order,
        log.acked.iter().map(String::as_str).collect::<Vec<_>>(),
        "acknowledged inserts must arrive exactly once, in commit order: {}; notes {:?}; log:\n{wlog}",
        diff_ids(&log.acked, &got.events),
        got.notes
    );
    let committed_uncertain: Vec<&String> = log
        .uncertain
        .iter()
        .filter(|id| table.contains(*id))
        .collect();
    let delivered_uncertain = log
        .uncertain
        .iter()
        .filter(|id| counts.contains_key(id.as_str()))
        .count();
    // Every committed row is streamed, including a failed-looking insert whose commit happened.
    let table_minus_sentinel = table.len() - 1;
    assert_eq!(
        delivered.len(),
        table_minus_sentinel,
        "every committed row must be delivered: table has {table_minus_sentinel}, delivered {}",
        delivered.len()
    );
    assert_increasing(
        got.events.iter().map(|e| e.cursor.as_str()),
        "across the Postgres restart",
    );
    eprintln!(
        "pg restart: acked {}, failed {} (committed anyway {}, delivered {delivered_uncertain}), \
         stopped after {stopped_at} acked, postgres down {down_for:?}, client reconnects {}, \
         replayed {}, total {:?}",
        log.acked.len(),
        log.uncertain.len(),
        committed_uncertain.len(),
        got.reconnects,
        got.replayed,
        t0.elapsed()
    );
    drop(w);
    let _ = cluster.stop(walcast::cluster::StopMode::Fast).await;
}

// ---------------------------------------------------------------------------------------------
// 7. A slow client is told `lagged` and closed; others get everything.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_gets_lagged_and_4008_others_unaffected() {
    const ROWS: i32 = 20_000;
    const TXNS: i32 = 4;
    const PAD: i32 = 1000;
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &["--client-queue", "64"]).await;
    let url = w.ws_url("/ws");
    // A subscribes, then does not read its socket until B is done.
    let mut a = WsClient::connect(&url).await;
    a.subscribe("all", json!({})).await;
    let sentinel = uuid::Uuid::new_v4().to_string();
    let mut b = ResumingCollector::connect(&url, json!({})).await;
    let b_progress = b.progress();
    let stop_at = sentinel.clone();
    let b_task = tokio::spawn(async move {
        b.collect_until(Duration::from_secs(240), move |ev| {
            ev.id.as_deref() == Some(stop_at.as_str())
        })
        .await;
        b.finish().await
    });
    let sql = db.client().await;
    let t0 = Instant::now();
    let per = ROWS / TXNS;
    for t in 0..TXNS {
        sql.execute(
            "insert into public.monitoring_events (event_type, source, data) \
             select 'bulk', 's' || g, jsonb_build_object('g', g, 'pad', repeat('x', $3)) \
             from generate_series($1::int, $2::int) g",
            &[&(t * per + 1), &((t + 1) * per), &PAD],
        )
        .await
        .expect("bulk insert");
    }
    insert_with_id(&sql, &sentinel, "sentinel")
        .await
        .expect("sentinel");
    let inserted = t0.elapsed();
    let got_b = b_task.await.expect("collector B");
    let b_done = t0.elapsed();
    let wlog = tail(&w.log_text(), 40);
    assert!(
        got_b.done,
        "B did not get everything (progress {}): notes {:?}; log:\n{wlog}",
        b_progress.load(Ordering::Relaxed),
        got_b.notes
    );
    let all: Vec<String> = sql
        .query(
            "select id::text from public.monitoring_events where event_type = 'bulk'",
            &[],
        )
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let b_bulk: Vec<SeenEvent> = got_b
        .events
        .iter()
        .filter(|e| e.id.as_deref() != Some(sentinel.as_str()))
        .cloned()
        .collect();
    let b_set: HashSet<&str> = b_bulk.iter().filter_map(|e| e.id.as_deref()).collect();
    assert!(
        b_bulk.len() == all.len() && b_set.len() == all.len(),
        "B: {}; lagged {}, reconnects {}, notes {:?}",
        diff_ids(&all, &b_bulk),
        got_b.lagged,
        got_b.reconnects,
        got_b.notes
    );
    assert_increasing(got_b.events.iter().map(|e| e.cursor.as_str()), "B");

    // Now A reads: what was buffered, then `lagged` with a cursor, then close 4008.
    let t_a = Instant::now();
    let mut a_events = Vec::new();
    let mut lagged = None;
    let mut lagged_after = Duration::ZERO;
    for _ in 0..(ROWS as usize + 10) {
        match a.next_raw(Duration::from_secs(20)).await {
            Some(f) if f["type"] == "event" => a_events.push(SeenEvent::from_frame(&f)),
            Some(f) if f["type"] == "lagged" => {
                lagged = Some(f);
                lagged_after = t_a.elapsed();
            }
            Some(f) if f["type"] == "heartbeat" => {}
            Some(f) => panic!("A: unexpected frame {f}"),
            None => break,
        }
    }
    let closed_after = t_a.elapsed();
    let lagged = lagged.unwrap_or_else(|| {
        panic!(
            "A got no lagged frame after {} events (close code {:?}, A stayed unread for {:?}); log:\n{wlog}",
            a_events.len(),
            a.closed,
            b_done
        )
    });
    assert_eq!(a.closed, Some(4008), "close code after lagged");
    let cursor = lagged["cursor"].as_str().expect("lagged cursor").to_owned();
    cursor_lsn(&cursor);
    assert!(
        lagged["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&cursor),
        "lagged message names the cursor: {lagged}"
    );
    assert!(
        a_events.len() < ROWS as usize,
        "A received everything ({}) yet was told lagged",
        a_events.len()
    );
    if let Some(last) = a_events.last() {
        assert!(
            cursor >= last.cursor,
            "lagged cursor {cursor} before A's last event {}",
            last.cursor
        );
    }
    assert_increasing(
        a_events.iter().map(|e| e.cursor.as_str()),
        "A before lagged",
    );
    // Resuming from the lagged cursor gives A exactly the rest.
    let mut a2 = WsClient::connect(&url).await;
    a2.subscribe("all", json!({})).await;
    let (rest, resumed) = a2.resume(&cursor, Duration::from_secs(120)).await;
    let mut a_all = a_events.clone();
    a_all.extend(rest.iter().map(SeenEvent::from_frame));
    let a_bulk: Vec<SeenEvent> = a_all
        .into_iter()
        .filter(|e| e.id.as_deref() != Some(sentinel.as_str()))
        .collect();
    let a_ids: Vec<&str> = a_bulk.iter().filter_map(|e| e.id.as_deref()).collect();
    let b_ids: Vec<&str> = b_bulk.iter().filter_map(|e| e.id.as_deref()).collect();
    assert!(
        a_ids == b_ids,
        "A (before lagged + resumed) differs from B: {}",
        diff_ids(&all, &a_bulk)
    );
    eprintln!(
        "slow client: {ROWS} rows of ~{PAD} B in {TXNS} txns inserted in {inserted:?}; B done after \
         {b_done:?} (lagged {}, reconnects {}); A read {} events then lagged at {cursor} after {lagged_after:?}, closed after {closed_after:?}; \
         resume replayed {} in {:?}",
        got_b.lagged,
        got_b.reconnects,
        a_events.len(),
        resumed["replayed"],
        t_a.elapsed() - closed_after
    );
}

// ---------------------------------------------------------------------------------------------
// 8. A 200,000-row transaction.
// ---------------------------------------------------------------------------------------------

/// Peak RSS allowed while streaming 200,000 rows. Holding the whole decoded transaction (a
/// `Change` with its row map, ~0.6 KiB, plus its ~0.3 KiB JSON frame per row) would need about
/// 180 MiB on top of the ~25 MiB baseline; streaming through the bounded buffers (a hub ring of
/// 8192 changes and 16 MiB, set here below the defaults so that the limit stays meaningful, the
/// 1024-change replay channel, at most 16 MiB of socket write buffer per client)
/// needs a few tens of MiB: 43 MiB was measured in a debug build. 128 MiB leaves 3x headroom
/// for allocator slack and still catches whole-transaction buffering.
const BULK_RSS_LIMIT_KIB: u64 = 128 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_of_200k_rows_reaches_client_with_bounded_memory() {
    const ROWS: usize = 200_000;
    let db = support::fresh_db().await;
    let w = Walcast::start(
        &db,
        &["--client-queue", "8192", "--client-queue-bytes", "16MiB"],
    )
    .await;
    let url = w.ws_url("/ws");
    let rss_start = w.rss_kib();
    let mut col = ResumingCollector::connect(&url, json!({"event_type": "bulk"})).await;
    let progress = col.progress();
    let collector = tokio::spawn(async move {
        col.collect(ROWS, Duration::from_secs(600)).await;
        col.finish().await
    });
    let sql = db.client().await;
    let t0 = Instant::now();
    let n = sql
        .execute(
            "insert into public.monitoring_events (event_type, source, data) \
             select 'bulk', 'gen', jsonb_build_object('i', g) from generate_series(1, $1::int) g",
            &[&(ROWS as i32)],
        )
        .await
        .expect("bulk insert");
    assert_eq!(n, ROWS as u64);
    let inserted = t0.elapsed();
    let got = collector.await.expect("collector");
    let elapsed = t0.elapsed();
    let peak = w.peak_rss_kib();
    let wlog = tail(&w.log_text(), 30);
    let mut seen: HashSet<&str> = HashSet::with_capacity(ROWS);
    let mut dups = 0usize;
    for e in &got.events {
        if !seen.insert(e.id.as_deref().unwrap_or("")) {
            dups += 1;
        }
    }
    assert!(
        got.done && seen.len() == ROWS,
        "got {} distinct of {ROWS} (progress {}, lagged {}, reconnects {}); notes {:?}; log:\n{wlog}",
        seen.len(),
        progress.load(Ordering::Relaxed),
        got.lagged,
        got.reconnects,
        got.notes
    );
    assert_eq!(
        dups, 0,
        "{dups} rows delivered twice; notes {:?}",
        got.notes
    );
    assert_eq!(got.events.len(), ROWS);
    let table = table_ids(&sql).await;
    assert!(
        seen.iter().all(|id| table.contains(*id)),
        "delivered ids that are not in the table"
    );
    assert_increasing(got.events.iter().map(|e| e.cursor.as_str()), "bulk");
    eprintln!(
        "200k: insert {inserted:?}, all delivered after {elapsed:?}, peak RSS {} MiB (start {} MiB), \
         lagged {}, reconnects {}, replayed {}",
        peak / 1024,
        rss_start / 1024,
        got.lagged,
        got.reconnects,
        got.replayed
    );
    assert!(
        peak < BULK_RSS_LIMIT_KIB,
        "walcast peak RSS {peak} KiB exceeds {BULK_RSS_LIMIT_KIB} KiB"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Cursors outside the resume window; invalid cursors.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_expired_or_invalid_cursor_is_refused() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &["--retention-bytes", "1KiB"]).await;
    let url = w.ws_url("/ws");
    let mut c = WsClient::connect(&url).await;
    c.subscribe("all", json!({})).await;
    let sql = db.client().await;
    let first = insert_simple(&sql, "cpu", "old").await;
    let ev = c.events(1, FRAME).await;
    assert_eq!(id_of(&ev[0]).as_deref(), Some(first.as_str()));
    let old = ev[0]["cursor"].as_str().expect("cursor").to_owned();
    let old_lsn = cursor_lsn(&old);
    // More than 1 KiB of WAL after it.
    for i in 0..20 {
        insert(
            &sql,
            "cpu",
            "filler",
            "2026-01-01T00:00:00Z",
            json!({"pad": "y".repeat(200), "i": i}),
        )
        .await;
    }
    c.events(20, FRAME).await;
    let mut confirmed = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut moved = false;
    while Instant::now() < deadline {
        confirmed = slot_confirmed(&sql, &db).await;
        if confirmed.is_some_and(|l| l > old_lsn) {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        moved,
        "slot never confirmed past {old} (confirmed {confirmed:?}); log:\n{}",
        tail(&w.log_text(), 30)
    );

    let mut n = WsClient::connect(&url).await;
    n.subscribe("all", json!({})).await;
    n.send(json!({"type": "resume", "cursor": old})).await;
    let e = n.next_non_event(FRAME).await.expect("error frame");
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "cursor_expired", "{e}");
    assert_eq!(e["ref"], Value::Null, "{e}");
    let oldest = e["oldest"]
        .as_str()
        .unwrap_or_else(|| panic!("oldest is a cursor: {e}"));
    assert!(
        cursor_lsn(oldest) > old_lsn,
        "oldest {oldest} must be after the expired cursor {old}"
    );
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&old) && msg.contains(oldest), "message: {msg}");
    // The connection stays usable and carries on live.
    n.send(json!({"type": "ping", "ref": "after-expired"}))
        .await;
    assert_eq!(
        n.next_non_event(FRAME).await,
        Some(json!({"type": "pong", "ref": "after-expired"}))
    );
    let live = insert_simple(&sql, "cpu", "live").await;
    let evs = n.events(1, FRAME).await;
    assert_eq!(
        id_of(&evs[0]).as_deref(),
        Some(live.as_str()),
        "live after cursor_expired"
    );

    // Invalid cursors.
    for bad in [
        "not-a-cursor",
        "16/B374D848",
        "zzzzzzzzzzzzzzzzzzzzzzzz",
        "",
    ] {
        n.send(json!({"type": "resume", "cursor": bad})).await;
        let e = n.next_non_event(FRAME).await.expect("error frame");
        assert_eq!(e["type"], "error", "{bad:?}: {e}");
        assert_eq!(e["code"], "invalid_cursor", "{bad:?}: {e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("exactly as walcast sent it"),
            "{bad:?}: unhelpful message {e}"
        );
    }
    n.send(json!({"type": "ping"})).await;
    assert_eq!(
        n.next_non_event(FRAME).await,
        Some(json!({"type": "pong", "ref": null}))
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Heartbeats.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_last_examined_cursor() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &["--heartbeat", "200ms"]).await;
    let url = w.ws_url("/ws");
    let (mut a, welcome) = WsClient::try_connect(&url, FRAME).await.expect("connect");
    assert_eq!(welcome["heartbeat_ms"], 200, "{welcome}");
    assert_eq!(welcome["protocol"], 1, "{welcome}");
    // A matches nothing that will be inserted: it only examines changes.
    a.subscribe("none", json!({"event_type": "never"})).await;
    let t0 = Instant::now();
    let mut beats = 0;
    for _ in 0..50 {
        let f = a
            .next_raw(Duration::from_secs(2))
            .await
            .expect("a heartbeat within 2 s");
        assert_eq!(f["type"], "heartbeat", "{f}");
        assert!(f["cursor"].is_null() || f["cursor"].is_string(), "{f}");
        beats += 1;
        if beats == 3 {
            break;
        }
    }
    let three = t0.elapsed();
    assert!(
        three < Duration::from_secs(3),
        "3 heartbeats took {three:?} at a 200 ms interval"
    );
    let mut b = WsClient::connect(&url).await;
    b.subscribe("all", json!({})).await;
    let sql = db.client().await;
    for round in 0..2 {
        insert_simple(&sql, "cpu", &format!("r{round}")).await;
        let ev = b.events(1, FRAME).await;
        let cursor = ev[0]["cursor"].as_str().expect("cursor").to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_seen = None;
        loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: no heartbeat with cursor {cursor}; last heartbeat cursor {last_seen:?}"
            );
            let f = a.next_raw(Duration::from_secs(2)).await.expect("heartbeat");
            assert_eq!(f["type"], "heartbeat", "A must get no event: {f}");
            if f["cursor"] == cursor.as_str() {
                break;
            }
            if let Some(c) = f["cursor"].as_str() {
                assert!(
                    c < cursor.as_str(),
                    "heartbeat cursor {c} is past the change {cursor}"
                );
            }
            last_seen = Some(f["cursor"].clone());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resume edge cases found while writing the tests above.
// ---------------------------------------------------------------------------------------------

/// The protocol says: subscribe, then resume. Live changes that arrive between the two are
/// delivered at once; the resume must not send them a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_live_events_delivers_each_change_once() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let url = w.ws_url("/ws");
    let sql = db.client().await;
    let mut c1 = WsClient::connect(&url).await;
    c1.subscribe("all", json!({})).await;
    let a = insert_simple(&sql, "cpu", "a").await;
    let ev_a = c1.events(1, FRAME).await;
    assert_eq!(id_of(&ev_a[0]).as_deref(), Some(a.as_str()));
    let cursor_a = ev_a[0]["cursor"].as_str().expect("cursor").to_owned();
    let b = insert_simple(&sql, "cpu", "b").await;
    c1.events(1, FRAME).await;

    // A reconnecting client subscribes; before its resume is sent, C is committed and delivered.
    let mut c2 = WsClient::connect(&url).await;
    c2.subscribe("all", json!({})).await;
    let c = insert_simple(&sql, "cpu", "c").await;
    let live = c2.events(1, FRAME).await;
    assert_eq!(id_of(&live[0]).as_deref(), Some(c.as_str()));
    let (replayed, resumed) = c2.resume(&cursor_a, FRAME).await;
    let mut got: Vec<String> = live.iter().filter_map(id_of).collect();
    got.extend(replayed.iter().filter_map(id_of));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &got {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    assert!(
        counts.get(b.as_str()) == Some(&1) && counts.get(c.as_str()) == Some(&1),
        "after resume from A every later change must arrive exactly once; got [live C] + replay \
         {:?} (resumed {resumed}); b={b} c={c}",
        replayed.iter().filter_map(id_of).collect::<Vec<_>>()
    );
}

/// After a walcast restart the hub is empty until the reader re-streams; a resume from a
/// cursor the slot has already confirmed past must still be refused, not silently accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_expired_cursor_right_after_restart_is_refused() {
    let db = support::fresh_db().await;
    let mut w = Walcast::start(&db, &["--retention-bytes", "1KiB"]).await;
    let url = w.ws_url("/ws");
    let mut c = WsClient::connect(&url).await;
    c.subscribe("all", json!({})).await;
    let sql = db.client().await;
    insert_simple(&sql, "cpu", "old").await;
    let old = c.events(1, FRAME).await[0]["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let mut fillers = Vec::new();
    for i in 0..20 {
        fillers.push(
            insert(
                &sql,
                "cpu",
                "filler",
                "2026-01-01T00:00:00Z",
                json!({"pad": "y".repeat(200), "i": i}),
            )
            .await,
        );
    }
    let last_filler = c.events(20, FRAME).await[19]["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    drop(c);
    // WAL of a table outside the publication moves the window past every published change, so
    // the restarted reader has nothing to re-stream and the hub stays empty.
    sql.batch_execute(
        "create table public.unpublished (x text);
         insert into public.unpublished select repeat('z', 1000) from generate_series(1, 20);",
    )
    .await
    .expect("unpublished WAL");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut confirmed = None;
    while Instant::now() < deadline {
        confirmed = slot_confirmed(&sql, &db).await;
        if confirmed.is_some_and(|l| l > cursor_lsn(&last_filler)) {
            break;
        }
        sql.batch_execute("insert into public.unpublished values ('tick')")
            .await
            .expect("tick");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        confirmed.is_some_and(|l| l > cursor_lsn(&last_filler)),
        "slot never confirmed past the last published change {last_filler} (confirmed {confirmed:x?}); log:\n{}",
        tail(&w.log_text(), 30)
    );
    w.restart().await;
    let mut n = WsClient::connect(&url).await;
    n.subscribe("all", json!({})).await;
    n.send(json!({"type": "resume", "cursor": old})).await;
    let f = n.next_non_event(FRAME).await.expect("answer to resume");
    assert_eq!(
        f["code"],
        "cursor_expired",
        "resume from {old} (slot confirmed {confirmed:?}, {} rows committed after it) must be \
         refused, got {f}",
        fillers.len()
    );
}

/// `cursor_expired` says which cursor to resume from to get everything still retained; resuming
/// from it must deliver the oldest retained change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_oldest_after_cursor_expired_gets_oldest_retained_change() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &["--retention", "1s"]).await;
    let url = w.ws_url("/ws");
    let mut c = WsClient::connect(&url).await;
    c.subscribe("all", json!({})).await;
    let sql = db.client().await;
    insert_simple(&sql, "cpu", "a").await;
    let cursor_a = c.events(1, FRAME).await[0]["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    // A leaves the window once it is older than 1 s and a newer transaction exists.
    let since_a = Instant::now();
    assert!(
        support::wait_until(Duration::from_secs(5), || async move {
            since_a.elapsed() > Duration::from_millis(1500)
        })
        .await
    );
    let b = insert_simple(&sql, "cpu", "b").await;
    let ev_b = c.events(1, FRAME).await;
    let cursor_b = ev_b[0]["cursor"].as_str().expect("cursor").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut confirmed = None;
    while Instant::now() < deadline {
        confirmed = slot_confirmed(&sql, &db).await;
        if confirmed.is_some_and(|l| l > cursor_lsn(&cursor_a)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        confirmed.is_some_and(|l| l > cursor_lsn(&cursor_a)),
        "slot never confirmed past {cursor_a}"
    );
    let mut n = WsClient::connect(&url).await;
    n.subscribe("all", json!({})).await;
    n.send(json!({"type": "resume", "cursor": cursor_a})).await;
    let e = n.next_non_event(FRAME).await.expect("cursor_expired");
    assert_eq!(e["code"], "cursor_expired", "{e}");
    let oldest = e["oldest"].as_str().expect("oldest").to_owned();
    // B is still retained (the slot re-sends it), so resuming from `oldest` must deliver it.
    let mut m = WsClient::connect(&url).await;
    m.subscribe("all", json!({})).await;
    m.send(json!({"type": "resume", "cursor": oldest})).await;
    let mut got = Vec::new();
    let resumed = loop {
        let f = m.next_frame(FRAME).await.expect("frame");
        match f["type"].as_str() {
            Some("event") => got.push(f),
            _ => break f,
        }
    };
    assert_eq!(
        got.iter().filter_map(id_of).collect::<Vec<_>>(),
        vec![b.clone()],
        "resume from oldest {oldest} (B's cursor {cursor_b}) must replay B, the oldest retained \
         change; got {resumed}"
    );
}

/// Changes a connection examined before it had a matching subscription were never sent to it:
/// a later `resume` must replay them (only changes already delivered may be skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_changes_examined_before_subscribing() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &["--heartbeat", "100ms"]).await;
    let url = w.ws_url("/ws");
    let sql = db.client().await;
    let mut c1 = WsClient::connect(&url).await;
    c1.subscribe("all", json!({})).await;
    insert_simple(&sql, "cpu", "a").await;
    let cursor_a = c1.events(1, FRAME).await[0]["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();

    /// Reads heartbeats until one reports `cursor` (the session has examined that change).
    async fn until_examined(c: &mut WsClient, cursor: &str) {
        for _ in 0..200 {
            let f = c.next_raw(FRAME).await.expect("heartbeat");
            assert_ne!(f["type"], "event", "no event expected yet: {f}");
            if f["type"] == "heartbeat" && f["cursor"] == cursor {
                return;
            }
        }
        panic!("no heartbeat reported {cursor}");
    }

    // No subscription yet: D is examined but not sent.
    let mut c2 = WsClient::connect(&url).await;
    let d = insert_simple(&sql, "mem", "d").await;
    let cursor_d = c1.events(1, FRAME).await[0]["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    until_examined(&mut c2, &cursor_d).await;
    // Subscribed to cpu only: M (mem) is examined but not sent.
    c2.subscribe("cpu", json!({"event_type": "cpu"})).await;
    let m = insert_simple(&sql, "mem", "m").await;
    let cursor_m = c1.events(1, FRAME).await[0]["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    until_examined(&mut c2, &cursor_m).await;
    // Now everything: the resume must send D and M, which this connection never got.
    c2.subscribe("mem", json!({"event_type": "mem"})).await;
    let (replayed, resumed) = c2.resume(&cursor_a, FRAME).await;
    assert_eq!(
        replayed.iter().filter_map(id_of).collect::<Vec<_>>(),
        vec![d, m],
        "resume from A must replay D and M (examined, never sent); got {resumed}"
    );
}

/// `since` in the subscribe frame resumes atomically: every change after the cursor, exactly
/// once and in cursor order, even with changes committed around the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_since_replays_in_cursor_order() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let url = w.ws_url("/ws");
    let sql = db.client().await;
    let mut c1 = WsClient::connect(&url).await;
    c1.subscribe("all", json!({})).await;
    sql.batch_execute("insert into monitoring_events (event_type, source) values ('a', 's1')")
        .await
        .expect("insert");
    let first = c1.events(1, Duration::from_secs(20)).await;
    let cursor = first[0]["cursor"].as_str().expect("cursor").to_owned();
    drop(c1);
    for i in 0..5 {
        sql.batch_execute(&format!(
            "insert into monitoring_events (event_type, source) values ('b', 's{i}')"
        ))
        .await
        .expect("insert");
    }
    let mut c2 = WsClient::connect(&url).await;
    c2.send(json!({"type": "subscribe", "id": "all", "since": cursor}))
        .await;
    let reply = c2
        .next_non_event(Duration::from_secs(10))
        .await
        .expect("subscribed");
    assert_eq!(reply["type"], "subscribed", "{reply}");
    for i in 5..8 {
        sql.batch_execute(&format!(
            "insert into monitoring_events (event_type, source) values ('c', 's{i}')"
        ))
        .await
        .expect("insert");
    }
    let mut got = Vec::new();
    let mut resumed = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Until every event and the `resumed` frame are in (it may come after the last event).
    while (got.len() < 8 || resumed.is_none()) && tokio::time::Instant::now() < deadline {
        match c2.next_frame(Duration::from_secs(10)).await {
            Some(f) if f["type"] == "event" => got.push(f),
            Some(f) if f["type"] == "resumed" => resumed = Some(f),
            Some(f) => panic!("unexpected frame {f}"),
            None => break,
        }
    }
    let sources: Vec<&str> = got
        .iter()
        .map(|e| e["record"]["source"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        sources,
        ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"],
        "all after the cursor, once, in order"
    );
    let cursors: Vec<&str> = got
        .iter()
        .map(|e| e["cursor"].as_str().unwrap_or(""))
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "cursor order: {cursors:?}"
    );
    assert!(cursors[0] > cursor.as_str());
    let resumed = resumed.expect("resumed frame");
    // Changes the reader had not yet handed to the hub when c2 subscribed arrive live instead.
    assert!(
        resumed["replayed"].as_u64().is_some_and(|n| n <= 5),
        "{resumed}"
    );
}
