//! Tests: `POST /v1/events` — body formats, stored values, idempotent ids, every error code,
//! all-or-nothing requests, shared writes under concurrency, batch tiers, Postgres-side
//! rejections, and the health, readiness and metrics endpoints.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{self, Walcast};

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

/// A minimal valid event.
fn ev(event_type: &str, source: &str) -> Value {
    json!({"event_type": event_type, "source": source})
}

/// POSTs a JSON value to /v1/events.
async fn post_json(w: &Walcast, body: &Value) -> (u16, Value) {
    support::post(&w.url("/v1/events"), JSON, None, body.to_string()).await
}

/// The ids of a 201 answer, checked against the expected count.
fn ids_of(status: u16, body: &Value, n: usize) -> Vec<String> {
    assert_eq!(status, 201, "expected 201, got {status}: {body}");
    assert_eq!(body["count"], json!(n), "count in {body}");
    assert_eq!(body["durable"], "database", "{body}");
    let ids: Vec<String> = body["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids in {body}"))
        .iter()
        .map(|v| v.as_str().expect("id string").to_owned())
        .collect();
    assert_eq!(ids.len(), n, "ids in {body}");
    for id in &ids {
        let u = uuid::Uuid::parse_str(id).unwrap_or_else(|_| panic!("id {id} is not a UUID"));
        assert!(!u.is_nil(), "nil id in {body}");
    }
    ids
}

/// Asserts an error answer: status, code, index, field, and that the message contains `msg`.
#[track_caller]
fn assert_error(
    what: &str,
    got: &(u16, Value),
    status: u16,
    code: &str,
    index: Option<u64>,
    field: Option<&str>,
    msg: &str,
) {
    let (s, b) = got;
    let e = &b["error"];
    assert_eq!(*s, status, "{what}: status; body {b}");
    assert_eq!(e["code"], code, "{what}: code; body {b}");
    assert_eq!(e["index"].as_u64(), index, "{what}: index; body {b}");
    assert_eq!(e["field"].as_str(), field, "{what}: field; body {b}");
    let m = e["message"].as_str().unwrap_or_default();
    assert!(
        m.contains(msg),
        "{what}: message {m:?} should contain {msg:?}"
    );
}

/// The value of one exposition line `series value` in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `metric`, or a failure that shows the metrics text.
#[track_caller]
fn metric_or_fail(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
}

/// GET /metrics.
async fn metrics_text(w: &Walcast) -> String {
    let (s, t) = support::get(&w.url("/metrics")).await;
    assert_eq!(s, 200, "/metrics: {t}");
    t
}

/// A POST sent over a raw socket: lets a test omit Content-Type, send a chunked body (no
/// Content-Length) or use the `apikey` header. Returns (status, JSON body).
async fn raw_post(
    addr: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunked: bool,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect walcast");
    let mut head = format!("POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    }
    let mut out = head.into_bytes();
    if chunked {
        for c in body.chunks(700) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(body);
    }
    // The server may answer before reading the whole body; a failed write is fine then.
    let _ = s.write_all(&out).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "no answer within 30s; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
        if let Some(r) = parse_response(&buf) {
            return r;
        }
    }
    parse_response(&buf).unwrap_or_else(|| {
        panic!(
            "incomplete HTTP response: {:?}",
            String::from_utf8_lossy(&buf)
        )
    })
}

/// Parses a complete HTTP/1.1 response (Content-Length or chunked); None while incomplete.
fn parse_response(buf: &[u8]) -> Option<(u16, Value)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let rest = &buf[end + 4..];
    let body: Vec<u8> = if let Some(len) = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    }) {
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut p = rest;
        loop {
            let nl = p.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&p[..nl]).ok()?.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            if p.len() < nl + 2 + size + 2 {
                return None;
            }
            out.extend_from_slice(&p[nl + 2..nl + 2 + size]);
            p = &p[nl + 2 + size + 2..];
        }
        out
    } else {
        return None;
    };
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_are_stored_with_their_values() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let c = db.client().await;

    // One object with every field.
    let given_id = uuid::Uuid::now_v7().to_string();
    let one = json!({
        "id": given_id,
        "event_type": "cpu",
        "source": "host-1",
        "timestamp": "2026-01-02T03:04:05.123456+02:00",
        "data": {"load": 0.75, "cores": [1, 2], "nested": {"ok": true, "s": "ü"}},
        "metadata": {"region": "eu"}
    });
    let ids = ids_of_post(&w, JSON, &one.to_string(), 1).await;
    assert_eq!(ids, std::slice::from_ref(&given_id), "a given id is kept");
    let row = c
        .query_one(
            "select event_type, source, data, metadata, \"timestamp\" from monitoring_events where id = $1",
            &[&uuid::Uuid::parse_str(&given_id).unwrap()],
        )
        .await
        .expect("row of the single object");
    assert_eq!(row.get::<_, String>(0), "cpu");
    assert_eq!(row.get::<_, String>(1), "host-1");
    assert_eq!(row.get::<_, Value>(2), one["data"]);
    assert_eq!(row.get::<_, Value>(3), one["metadata"]);
    let ts: chrono::DateTime<chrono::Utc> = row.get(4);
    assert_eq!(ts.to_rfc3339(), "2026-01-02T01:04:05.123456+00:00");

    // No timestamp: now. No id: a fresh UUIDv7. No data/metadata: {}.
    let before = chrono::Utc::now();
    let ids = ids_of_post(&w, JSON, &ev("mem", "host-2").to_string(), 1).await;
    let after = chrono::Utc::now();
    let id = uuid::Uuid::parse_str(&ids[0]).unwrap();
    assert_eq!(id.get_version_num(), 7, "server ids are UUIDv7: {id}");
    let row = c
        .query_one(
            "select \"timestamp\", data::text, metadata::text, created_at from monitoring_events where id = $1",
            &[&id],
        )
        .await
        .expect("row without timestamp");
    let ts: chrono::DateTime<chrono::Utc> = row.get(0);
    let slack = chrono::Duration::seconds(1);
    assert!(
        ts >= before - slack && ts <= after + slack,
        "default timestamp {ts} not within {before}..{after}"
    );
    assert_eq!(row.get::<_, String>(1), "{}");
    assert_eq!(row.get::<_, String>(2), "{}");
    let created: chrono::DateTime<chrono::Utc> = row.get(3);
    assert!(
        created >= before - slack && created <= after + slack,
        "created_at {created}"
    );

    // Unix seconds as timestamp.
    let ids = ids_of_post(
        &w,
        JSON,
        &json!({"event_type": "unix", "source": "s", "timestamp": 1_700_000_000.25}).to_string(),
        1,
    )
    .await;
    let ts: chrono::DateTime<chrono::Utc> = c
        .query_one(
            "select \"timestamp\" from monitoring_events where id = $1",
            &[&uuid::Uuid::parse_str(&ids[0]).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ts.to_rfc3339(), "2023-11-14T22:13:20.250+00:00");
    // The earliest timestamp Postgres stores (4714-11-24 BC) is accepted as is.
    let ids = ids_of_post(
        &w,
        JSON,
        &json!({"event_type": "unix", "source": "s", "timestamp": -210_866_803_200_i64})
            .to_string(),
        1,
    )
    .await;
    let ts: String = c
        .query_one(
            "select \"timestamp\"::text from monitoring_events where id = $1",
            &[&uuid::Uuid::parse_str(&ids[0]).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        ts.starts_with("4714-11-24 00:00:00") && ts.ends_with(" BC"),
        "{ts}"
    );

    // A JSON array (with a charset parameter) keeps the order of its events.
    let long_type = "t".repeat(128);
    let long_source = "s".repeat(256);
    let arr = json!([
        {"event_type": "a1", "source": "arr", "data": {"i": 0}},
        {"event_type": "a2", "source": "arr", "data": {"i": 1}},
        {"event_type": long_type, "source": long_source, "data": {"i": 2}}
    ]);
    let ids = ids_of_post(&w, "application/json; charset=utf-8", &arr.to_string(), 3).await;
    for (i, id) in ids.iter().enumerate() {
        let row = c
            .query_one(
                "select event_type, source, (data->>'i')::int from monitoring_events where id = $1",
                &[&uuid::Uuid::parse_str(id).unwrap()],
            )
            .await
            .unwrap_or_else(|e| panic!("array event {i} ({id}) not stored: {e}"));
        assert_eq!(
            row.get::<_, String>(0),
            arr[i]["event_type"].as_str().unwrap()
        );
        assert_eq!(row.get::<_, String>(1), arr[i]["source"].as_str().unwrap());
        assert_eq!(row.get::<_, i32>(2), i as i32);
    }

    // NDJSON with a blank line and CRLF line ends; also the application/ndjson alias.
    let nd = "{\"event_type\":\"n1\",\"source\":\"nd\",\"data\":{\"k\":\"v\"}}\r\n\n\
              {\"event_type\":\"n2\",\"source\":\"nd\",\"metadata\":{\"m\":1}}\n\
              {\"event_type\":\"n3\",\"source\":\"nd\"}";
    let ids = ids_of_post(&w, NDJSON, nd, 3).await;
    let rows = c
        .query(
            "select id::text, event_type, data::text, metadata::text from monitoring_events \
             where source = 'nd' order by event_type",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        [
            (
                ids[0].clone(),
                "n1".into(),
                r#"{"k": "v"}"#.into(),
                "{}".into()
            ),
            (
                ids[1].clone(),
                "n2".into(),
                "{}".into(),
                r#"{"m": 1}"#.into()
            ),
            (ids[2].clone(), "n3".into(), "{}".into(), "{}".into()),
        ]
    );
    ids_of_post(
        &w,
        "application/ndjson",
        "{\"event_type\":\"n4\",\"source\":\"nd\"}\n",
        1,
    )
    .await;
    assert_eq!(db.count().await, 1 + 1 + 1 + 1 + 3 + 3 + 1);

    // Health, readiness and metrics on the same server.
    let (s, t) = support::get(&w.url("/healthz")).await;
    assert_eq!(s, 200, "/healthz: {t}");
    assert_eq!(
        serde_json::from_str::<Value>(&t).ok(),
        Some(json!({"status": "ok"}))
    );
    let (s, t) = support::get(&w.url("/readyz")).await;
    assert_eq!(s, 200, "/readyz: {t}");
    let ready: Value = serde_json::from_str(&t).expect("readyz json");
    assert_eq!(ready["status"], "ready", "{ready}");
    for check in ["database", "migrations", "replication"] {
        assert_eq!(ready["checks"][check], "ok", "check {check} in {ready}");
    }
    let m = metrics_text(&w).await;
    assert_eq!(metric_or_fail(&m, "walcast_events_accepted_total"), 11.0);
    assert!(
        metric_or_fail(&m, "walcast_ingest_flush_seconds_bucket{le=\"+Inf\"}") >= 1.0,
        "{m}"
    );
    assert_eq!(metric_or_fail(&m, "walcast_ingest_batch_events_sum"), 11.0);
    assert!(
        metric_or_fail(&m, "walcast_pool_connections_size") >= 1.0,
        "{m}"
    );
    assert!(
        metric_or_fail(
            &m,
            "walcast_http_requests_total{route=\"/v1/events\",status=\"201\"}"
        ) >= 6.0
    );
    // Rejections are counted by code.
    let bad = post_json(&w, &json!({"event_type": "x"})).await;
    assert_eq!(bad.0, 422, "{}", bad.1);
    let m = metrics_text(&w).await;
    assert_eq!(
        metric_or_fail(&m, "walcast_events_rejected_total{code=\"invalid_event\"}"),
        1.0
    );
    w.stop(&db).await;
}

/// POSTs a body with a content type and returns the ids of the 201 answer.
async fn ids_of_post(w: &Walcast, content_type: &str, body: &str, n: usize) -> Vec<String> {
    let (s, b) = support::post(&w.url("/v1/events"), content_type, None, body.to_owned()).await;
    ids_of(s, &b, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_make_retries_idempotent() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let id = "0190f0e6-4b7e-7c4e-9a8b-123456789abc";
    let first = json!({"id": id, "event_type": "retry", "source": "p", "data": {"try": 1}});
    for attempt in 1..=3 {
        let mut body = first.clone();
        body["data"]["try"] = json!(attempt);
        let (s, b) = post_json(&w, &body).await;
        assert_eq!(ids_of(s, &b, 1), [id], "attempt {attempt}");
    }
    let c = db.client().await;
    let rows = c
        .query(
            "select (data->>'try')::int from monitoring_events where id = $1",
            &[&uuid::Uuid::parse_str(id).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "a retried id must be stored once");
    assert_eq!(rows[0].get::<_, i32>(0), 1, "the first write wins");
    // A batch mixing the known id and a new one: both answered, only the new one added.
    let (s, b) = post_json(&w, &json!([first, ev("retry", "p")])).await;
    let ids = ids_of(s, &b, 2);
    assert_eq!(ids[0], id);
    assert_eq!(db.count().await, 2);
    // The same new id twice in one request: one row.
    let twice =
        json!({"id": "0190f0e6-4b7e-7c4e-9a8b-000000000002", "event_type": "dup", "source": "p"});
    let (s, b) = post_json(&w, &json!([twice, twice])).await;
    ids_of(s, &b, 2);
    assert_eq!(
        db.count().await,
        3,
        "a duplicated id inside one request is stored once"
    );
    w.stop(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_its_code_status_and_position() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let url = w.url("/v1/events");
    let post = |ct: &'static str, body: String| {
        let url = url.clone();
        async move { support::post(&url, ct, None, body).await }
    };
    let with = |extra: Value| {
        let mut e = ev("cpu", "h1");
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e.to_string()
    };

    // 400 malformed_json
    assert_error(
        "truncated JSON",
        &post(JSON, "{\"event_type\":".into()).await,
        400,
        "malformed_json",
        None,
        None,
        "malformed JSON at line 1 column",
    );
    assert_error(
        "a JSON number",
        &post(JSON, "42".into()).await,
        400,
        "malformed_json",
        None,
        None,
        "must be a JSON object (one event) or an array of objects",
    );
    assert_error(
        "bad NDJSON line",
        &post(
            NDJSON,
            "{\"event_type\":\"a\",\"source\":\"s\"}\n{oops}\n".into(),
        )
        .await,
        400,
        "malformed_json",
        Some(1),
        None,
        "malformed JSON on NDJSON line 2 column",
    );

    // 422 empty_batch
    for (what, ct, body) in [
        ("empty array", JSON, "[]"),
        ("blank NDJSON", NDJSON, "\n  \n"),
        ("empty NDJSON", NDJSON, ""),
    ] {
        assert_error(
            what,
            &post(ct, body.into()).await,
            422,
            "empty_batch",
            None,
            None,
            "the request holds no event",
        );
    }

    // 422 invalid_event: (what, body, index, field, message)
    let long_type = "x".repeat(129);
    let long_source = "y".repeat(257);
    let big_data = json!({"blob": "d".repeat(1 << 20)});
    let big_meta = json!({"blob": "m".repeat(64 << 10)});
    let invalid: Vec<(&str, String, u64, &str, String)> = vec![
        (
            "missing source",
            json!({"event_type": "a"}).to_string(),
            0,
            "source",
            "event 0: source is required".into(),
        ),
        (
            "missing event_type at index 2",
            json!([ev("a", "s"), ev("b", "s"), {"source": "s"}]).to_string(),
            2,
            "event_type",
            "event 2: event_type is required".into(),
        ),
        (
            "null event_type",
            json!({"event_type": null, "source": "s"}).to_string(),
            0,
            "event_type",
            "event 0: event_type is required".into(),
        ),
        (
            "blank event_type",
            json!({"event_type": "  ", "source": "s"}).to_string(),
            0,
            "event_type",
            "event 0: event_type must not be empty".into(),
        ),
        (
            "empty source",
            json!({"event_type": "a", "source": ""}).to_string(),
            0,
            "source",
            "event 0: source must not be empty".into(),
        ),
        (
            "event_type too long",
            json!({"event_type": long_type, "source": "s"}).to_string(),
            0,
            "event_type",
            "event 0: event_type has 129 characters; the limit is 128".into(),
        ),
        (
            "source too long",
            json!({"event_type": "a", "source": long_source}).to_string(),
            0,
            "source",
            "event 0: source has 257 characters; the limit is 256".into(),
        ),
        (
            "source not a string",
            json!({"event_type": "a", "source": 5}).to_string(),
            0,
            "source",
            "event 0: source must be a string".into(),
        ),
        (
            "unknown field",
            with(json!({"colour": "red"})),
            0,
            "colour",
            "event 0: unknown field \"colour\"".into(),
        ),
        (
            "bad timestamp",
            with(json!({"timestamp": "yesterday"})),
            0,
            "timestamp",
            "event 0: timestamp \"yesterday\" is not RFC 3339".into(),
        ),
        (
            "timestamp of the wrong type",
            with(json!({"timestamp": true})),
            0,
            "timestamp",
            "event 0: timestamp must be an RFC 3339 string or Unix seconds".into(),
        ),
        (
            "numeric timestamp before Postgres' range (4713 BC)",
            with(json!({"timestamp": -210_866_803_201_i64})),
            0,
            "timestamp",
            "event 0: numeric timestamp -210866803201 is out of range".into(),
        ),
        (
            "bad id",
            with(json!({"id": "nope"})),
            0,
            "id",
            "event 0: id \"nope\" is not a UUID".into(),
        ),
        (
            "id of the wrong type",
            with(json!({"id": 7})),
            0,
            "id",
            "event 0: id must be a UUID string".into(),
        ),
        (
            "data an array",
            with(json!({"data": [1, 2]})),
            0,
            "data",
            "event 0: data must be a JSON object".into(),
        ),
        (
            "metadata a string",
            with(json!({"metadata": "x"})),
            0,
            "metadata",
            "event 0: metadata must be a JSON object".into(),
        ),
        (
            "data over 1 MiB",
            with(json!({"data": big_data})),
            0,
            "data",
            format!(
                "event 0: data is {} bytes of JSON; the limit is 1048576",
                // Postgres prints `{"blob": "..."}`: one byte more than compact JSON.
                big_data.to_string().len() + 1
            ),
        ),
        (
            "metadata over 64 KiB",
            with(json!({"metadata": big_meta})),
            0,
            "metadata",
            format!(
                "event 0: metadata is {} bytes of JSON; the limit is 65536",
                big_meta.to_string().len() + 1
            ),
        ),
        (
            "NUL in data",
            with(json!({"data": {"k": "a\u{0}b"}})),
            0,
            "data",
            "event 0: data contains a \\u0000 character".into(),
        ),
    ];
    for (what, body, index, field, msg) in &invalid {
        assert_error(
            what,
            &post(JSON, body.clone()).await,
            422,
            "invalid_event",
            Some(*index),
            Some(field),
            msg,
        );
    }
    // An array element that is not an object: the event is at fault, no field is.
    assert_error(
        "array element not an object",
        &post(JSON, json!([ev("a", "s"), 3]).to_string()).await,
        422,
        "invalid_event",
        Some(1),
        None,
        "event 1 is not a JSON object",
    );
    // NDJSON reports the index of the event (blank lines do not count).
    assert_error(
        "NDJSON invalid event",
        &post(
            NDJSON,
            format!("{}\n\n{}\n", ev("a", "s"), json!({"event_type": "b"})),
        )
        .await,
        422,
        "invalid_event",
        Some(1),
        Some("source"),
        "event 1: source is required",
    );

    // 415 unsupported_media_type
    assert_error(
        "text/plain",
        &post("text/plain", ev("a", "s").to_string()).await,
        415,
        "unsupported_media_type",
        None,
        None,
        "unsupported Content-Type \"text/plain\"",
    );
    assert_error(
        "no Content-Type",
        &raw_post(&w.addr, &[], ev("a", "s").to_string().as_bytes(), false).await,
        415,
        "unsupported_media_type",
        None,
        None,
        "missing Content-Type",
    );

    // All or nothing: one bad event among 50 writes none of them (JSON array and NDJSON).
    let mut batch: Vec<Value> = (0..50)
        .map(|i| json!({"event_type": "b", "source": "s", "data": {"i": i}}))
        .collect();
    batch[37]["timestamp"] = json!("not a time");
    assert_error(
        "bad event 37 of 50",
        &post(JSON, Value::Array(batch.clone()).to_string()).await,
        422,
        "invalid_event",
        Some(37),
        Some("timestamp"),
        "event 37: timestamp",
    );
    let nd: Vec<String> = batch.iter().map(Value::to_string).collect();
    assert_error(
        "bad NDJSON event 37 of 50",
        &post(NDJSON, nd.join("\n")).await,
        422,
        "invalid_event",
        Some(37),
        Some("timestamp"),
        "event 37: timestamp",
    );
    assert_eq!(db.count().await, 0, "a rejected request must write nothing");

    // Every rejection is counted under its code.
    let m = metrics_text(&w).await;
    for (code, n) in [
        ("malformed_json", 3),
        ("empty_batch", 3),
        ("invalid_event", invalid.len() + 4),
        ("unsupported_media_type", 2),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("walcast_events_rejected_total{{code=\"{code}\"}}")
            ),
            Some(n as f64),
            "rejections with code {code}:\n{m}"
        );
    }
    assert_eq!(metric(&m, "walcast_events_accepted_total"), Some(0.0));
    // The fixed batch goes through.
    batch[37]["timestamp"] = json!("2026-11-23T18:00:00Z");
    let (s, b) = post_json(&w, &Value::Array(batch)).await;
    ids_of(s, &b, 50);
    assert_eq!(db.count().await, 50);
    w.stop(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_event_count_limits() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &["--max-body", "2KiB", "--max-events", "3"]).await;
    let big =
        json!({"event_type": "big", "source": "s", "data": {"blob": "z".repeat(2100)}}).to_string();
    assert!(big.len() > 2048);

    // Over the limit with a Content-Length, and chunked without one.
    assert_error(
        "2 KiB + body",
        &support::post(&w.url("/v1/events"), JSON, None, big.clone()).await,
        413,
        "payload_too_large",
        None,
        None,
        "the body is larger than 2048 bytes (--max-body)",
    );
    assert_error(
        "chunked 2 KiB + body",
        &raw_post(&w.addr, &[("Content-Type", JSON)], big.as_bytes(), true).await,
        413,
        "payload_too_large",
        None,
        None,
        "larger than 2048 bytes",
    );
    // Exactly at the limit is fine.
    let mut exact = json!({"event_type": "edge", "source": "s", "data": {"blob": ""}});
    let pad = 2048 - exact.to_string().len();
    exact["data"]["blob"] = json!("e".repeat(pad));
    assert_eq!(exact.to_string().len(), 2048);
    let (s, b) = post_json(&w, &exact).await;
    ids_of(s, &b, 1);
    // A small chunked body is fine too.
    let (s, b) = raw_post(
        &w.addr,
        &[("Content-Type", JSON)],
        ev("chunked", "s").to_string().as_bytes(),
        true,
    )
    .await;
    ids_of(s, &b, 1);

    // Event count.
    let four: Vec<Value> = (0..4).map(|_| ev("n", "s")).collect();
    assert_error(
        "4 events in a JSON array",
        &post_json(&w, &Value::Array(four.clone())).await,
        413,
        "too_many_events",
        None,
        None,
        "more than 3 events in one request",
    );
    let nd: Vec<String> = four.iter().map(Value::to_string).collect();
    assert_error(
        "4 NDJSON lines",
        &support::post(&w.url("/v1/events"), NDJSON, None, nd.join("\n")).await,
        413,
        "too_many_events",
        None,
        None,
        "more than 3 events in one request",
    );
    let (s, b) = post_json(&w, &Value::Array(four[..3].to_vec())).await;
    ids_of(s, &b, 3);
    assert_eq!(db.count().await, 5, "only the accepted requests are stored");
    let m = metrics_text(&w).await;
    assert_eq!(
        metric(
            &m,
            "walcast_events_rejected_total{code=\"payload_too_large\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "walcast_events_rejected_total{code=\"too_many_events\"}"
        ),
        Some(2.0),
        "{m}"
    );
    w.stop(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_requires_a_service_role_token() {
    let db = support::fresh_db().await;
    let w = Walcast::start_with_env(&db, &[], &[("WALCAST_JWT_SECRET", support::SECRET)]).await;
    let url = w.url("/v1/events");
    let body = ev("auth", "s").to_string();
    let post = |token: Option<String>| {
        let (url, body) = (url.clone(), body.clone());
        async move { support::post(&url, JSON, token.as_deref(), body).await }
    };
    let hour = Duration::from_secs(3600);
    let mint = |role: &str| walcast::auth::mint(support::SECRET, role, hour).expect("mint");
    let expired = walcast::auth::mint_claims(
        support::SECRET,
        &walcast::auth::Claims {
            role: "service_role".into(),
            exp: chrono::Utc::now().timestamp() - 60,
            iat: None,
            iss: None,
            sub: None,
            extra: Default::default(),
        },
    )
    .unwrap();
    let other_secret =
        walcast::auth::mint("another-secret-another-secret-0123", "service_role", hour).unwrap();

    let unauthorized = [
        ("no token", None, "missing token"),
        (
            "garbage token",
            Some("not.a.jwt".to_owned()),
            "invalid token",
        ),
        ("wrong secret", Some(other_secret), "invalid token"),
        ("expired token", Some(expired), "token has expired"),
    ];
    for (what, token, msg) in unauthorized {
        assert_error(
            what,
            &post(token).await,
            401,
            "unauthorized",
            None,
            None,
            msg,
        );
    }
    // Authentication comes before anything else about the request.
    assert_error(
        "no token and text/plain",
        &support::post(&url, "text/plain", None, "x").await,
        401,
        "unauthorized",
        None,
        None,
        "missing token",
    );
    for role in ["anon", "authenticated"] {
        assert_error(
            role,
            &post(Some(mint(role))).await,
            403,
            "forbidden",
            None,
            None,
            &format!("role \"{role}\" may not write events"),
        );
    }
    assert_eq!(db.count().await, 0);

    let (s, b) = post(Some(mint("service_role"))).await;
    ids_of(s, &b, 1);
    // Supabase-style `apikey` header.
    let key = mint("service_role");
    let (s, b) = raw_post(
        &w.addr,
        &[("Content-Type", JSON), ("apikey", &key)],
        body.as_bytes(),
        false,
    )
    .await;
    ids_of(s, &b, 1);
    assert_eq!(db.count().await, 2);
    let m = metrics_text(&w).await;
    assert_eq!(
        metric(&m, "walcast_events_rejected_total{code=\"unauthorized\"}"),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "walcast_events_rejected_total{code=\"forbidden\"}"),
        Some(2.0),
        "{m}"
    );
    w.stop(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_writes() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let url = w.url("/v1/events");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(40));
    let tasks: Vec<_> = (0..40)
        .map(|r| {
            let (url, barrier) = (url.clone(), std::sync::Arc::clone(&barrier));
            tokio::spawn(async move {
                let body: Vec<Value> = (0..5)
                    .map(|i| json!({"event_type": "load", "source": format!("p{r}"), "data": {"i": i}}))
                    .collect();
                barrier.wait().await;
                support::post(&url, JSON, None, Value::Array(body).to_string()).await
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let (s, b) = t.await.expect("request task");
        all.extend(ids_of(s, &b, 5));
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 200, "ids must be distinct");
    assert_eq!(db.count().await, 200);
    let per_source: i64 = db
        .client()
        .await
        .query_one(
            "select count(*) from (select source from monitoring_events group by source having count(*) = 5) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(per_source, 40, "every request stored whole");

    let m = metrics_text(&w).await;
    let writes = metric_or_fail(&m, "walcast_ingest_batch_events_count");
    assert_eq!(
        metric_or_fail(&m, "walcast_ingest_batch_events_sum"),
        200.0,
        "{m}"
    );
    assert_eq!(
        metric_or_fail(&m, "walcast_events_accepted_total"),
        200.0,
        "{m}"
    );
    assert!(
        writes < 40.0,
        "40 concurrent requests took {writes} writes: requests did not share transactions\n{m}"
    );
    w.stop(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_delay_writes_without_eager_flush() {
    let (db_lazy, db_eager) = tokio::join!(support::fresh_db(), support::fresh_db());
    let (lazy, eager) = tokio::join!(
        Walcast::start(
            &db_lazy,
            &[
                "--tier-low",
                "10@2s",
                "--tier-high",
                "5@30s",
                "--eager-flush",
                "false"
            ]
        ),
        Walcast::start(&db_eager, &["--tier-low", "10@30s"])
    );
    let timed = |w: &Walcast, body: Value| {
        let url = w.url("/v1/events");
        async move {
            let t = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(15),
                support::post(&url, JSON, None, body.to_string()),
            )
            .await
            .unwrap_or_else(|_| panic!("no answer within 15s to {body}"));
            (r, t.elapsed())
        }
    };

    // Without eager flushing, one low-tier event waits for its tier's MAX_WAIT (2s).
    let ((s, b), took) = timed(&lazy, ev("health_check", "h")).await;
    ids_of(s, &b, 1);
    assert!(
        took >= Duration::from_millis(1500),
        "a lone health_check was answered after {took:?}; expected to wait ~2s for the low tier"
    );
    assert_eq!(db_lazy.count().await, 1);
    // A full tier is written at once (5 high-tier events; MAX_WAIT would be 30s).
    let five: Vec<Value> = (0..5).map(|_| ev("metrics.cpu", "h")).collect();
    let ((s, b), _) = timed(&lazy, Value::Array(five)).await;
    ids_of(s, &b, 5);

    // With eager flushing (default), an idle server writes at once (MAX_WAIT would be 30s).
    let ((s, b), _) = timed(&eager, ev("health_check", "h")).await;
    ids_of(s, &b, 1);
    assert_eq!(db_eager.count().await, 1);
    tokio::join!(lazy.stop(&db_lazy), eager.stop(&db_eager));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rejections_fail_only_their_request() {
    let db = support::fresh_db().await;
    let c = db.client().await;
    c.batch_execute(
        "create function public.reject_poison() returns trigger language plpgsql as $$
         begin
           if new.event_type = 'poison' then
             raise exception 'secret database detail' using errcode = 'check_violation',
               constraint = 'no_poison';
           end if;
           return new;
         end $$;
         create trigger reject_poison before insert on public.monitoring_events
           for each row execute function public.reject_poison();",
    )
    .await
    .expect("create trigger");
    // Without eager flushing and with a 1s medium tier, concurrent requests share one write.
    let w = Walcast::start(&db, &["--eager-flush", "false", "--tier-medium", "1000@1s"]).await;
    let url = w.url("/v1/events");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|r| {
            let (url, barrier) = (url.clone(), std::sync::Arc::clone(&barrier));
            tokio::spawn(async move {
                let second = if r == 7 { "poison" } else { "fine" };
                let body = json!([ev("fine", &format!("p{r}")), ev(second, &format!("p{r}"))]);
                barrier.wait().await;
                support::post(&url, JSON, None, body.to_string()).await
            })
        })
        .collect();
    let mut poisoned_ids = Vec::new();
    for (r, t) in tasks.into_iter().enumerate() {
        let (s, b) = t.await.expect("request task");
        if r == 7 {
            // Postgres refuses the request: it is kept in the dead-letter queue, not written.
            assert_eq!(s, 202, "the poisoned request: {b}");
            assert_eq!(b["durable"], "dead_letter", "{b}");
            assert!(
                !b.to_string().contains("secret database detail"),
                "database text leaked: {b}"
            );
            poisoned_ids = b["ids"].as_array().cloned().unwrap_or_default();
            assert_eq!(poisoned_ids.len(), 2, "{b}");
        } else {
            ids_of(s, &b, 2);
        }
    }
    assert_eq!(
        db.count().await,
        38,
        "all requests but the poisoned one are stored"
    );
    let p7: i64 = c
        .query_one(
            "select count(*) from monitoring_events where source = 'p7'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        p7, 0,
        "the poisoned request's good event must not be written"
    );
    let letters = c
        .query(
            "select operation, error_code, error_message, payload from walcast.dead_letter_queue",
            &[],
        )
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), 1, "one dead letter for the poisoned request");
    let (op, code, msg, payload): (String, String, String, Value) = (
        letters[0].get(0),
        letters[0].get(1),
        letters[0].get(2),
        letters[0].get(3),
    );
    assert_eq!(op, "ingest");
    assert_eq!(code, "sqlstate_23514");
    assert!(
        msg.contains("secret database detail"),
        "operators see the error: {msg}"
    );
    let stored: Vec<Value> = payload
        .as_array()
        .unwrap_or_else(|| panic!("payload {payload}"))
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(
        stored, poisoned_ids,
        "the dead letter holds the request's events"
    );
    let m = metrics_text(&w).await;
    // The shared write failed once, then the poisoned request failed alone.
    assert!(
        metric_or_fail(&m, "walcast_ingest_flush_errors_total") >= 2.0,
        "the poisoned request was not part of a shared write:\n{m}"
    );
    assert_eq!(
        metric_or_fail(&m, "walcast_events_accepted_total"),
        38.0,
        "{m}"
    );

    // When even the dead-letter queue refuses, the producer gets 422 `rejected`.
    c.batch_execute(
        "create function walcast.refuse_letters() returns trigger language plpgsql as $$
         begin raise exception 'dlq unavailable'; end $$;
         create trigger refuse_letters before insert on walcast.dead_letter_queue
           for each row execute function walcast.refuse_letters();",
    )
    .await
    .expect("create dlq trigger");
    let got = post_json(&w, &json!([ev("fine", "alone"), ev("poison", "alone")])).await;
    assert_error(
        "poison with the dead-letter queue refusing",
        &got,
        422,
        "rejected",
        None,
        None,
        "postgres rejected the events (constraint no_poison); nothing of this request was written",
    );
    assert!(
        !got.1.to_string().contains("secret database detail"),
        "database text leaked: {}",
        got.1
    );
    assert_eq!(db.count().await, 38);
    let m = metrics_text(&w).await;
    assert_eq!(
        metric(&m, "walcast_events_rejected_total{code=\"rejected\"}"),
        Some(1.0),
        "{m}"
    );
    w.stop(&db).await;
}

/// The size Postgres measures in the table's size checks: `octet_length(x::jsonb::text)`.
async fn pg_text_len(c: &tokio_postgres::Client, v: &Value) -> usize {
    let n: i32 = c
        .query_one("select octet_length($1::jsonb::text)", &[v])
        .await
        .expect("octet_length")
        .get(0);
    n as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_match_the_database_checks() {
    let db = support::fresh_db().await;
    let w = Walcast::start(&db, &[]).await;
    let c = db.client().await;

    // Exactly at the limit as Postgres measures it is stored; one byte more is invalid_event.
    for (field, limit) in [("data", 1usize << 20), ("metadata", 64 << 10)] {
        let blob = |n: usize| json!({"blob": "x".repeat(n)});
        let n = limit - pg_text_len(&c, &blob(0)).await;
        assert_eq!(pg_text_len(&c, &blob(n)).await, limit);
        let mut e = ev("edge", field);
        e[field] = blob(n);
        let (s, b) = post_json(&w, &e).await;
        ids_of(s, &b, 1);
        e[field] = blob(n + 1);
        assert_error(
            &format!("{field} one byte over"),
            &post_json(&w, &e).await,
            422,
            "invalid_event",
            Some(0),
            Some(field),
            &format!(
                "event 0: {field} is {} bytes of JSON; the limit is {limit}",
                limit + 1
            ),
        );
    }

    // Compact JSON under 1 MiB that Postgres prints (`", "`, `": "`) over 1 MiB: walcast must
    // say invalid_event for the field, not let the database reject it.
    let mut many = serde_json::Map::new();
    for i in 0..87_000 {
        many.insert(format!("k{i:06}"), json!(i % 10));
    }
    let many = Value::Object(many);
    assert!(many.to_string().len() < 1 << 20);
    let pg = pg_text_len(&c, &many).await;
    assert!(pg > 1 << 20, "{pg}");
    let mut e = ev("many", "s");
    e["data"] = many;
    assert_error(
        "87000 keys",
        &post_json(&w, &e).await,
        422,
        "invalid_event",
        Some(0),
        Some("data"),
        &format!("event 0: data is {pg} bytes of JSON; the limit is 1048576"),
    );
    // Numbers with exponents, which Postgres prints in full.
    let huge = json!({"n": vec![1e300; 3500]});
    assert!(huge.to_string().len() < 64 << 10);
    let pg = pg_text_len(&c, &huge).await;
    assert!(pg > 1 << 20, "{pg}");
    let mut e = ev("huge", "s");
    e["data"] = huge;
    assert_error(
        "3500 x 1e300",
        &post_json(&w, &e).await,
        422,
        "invalid_event",
        Some(0),
        Some("data"),
        &format!("event 0: data is {pg} bytes of JSON; the limit is 1048576"),
    );
    assert_eq!(db.count().await, 2);
    let m = metrics_text(&w).await;
    assert_eq!(
        metric(&m, "walcast_events_rejected_total{code=\"rejected\"}"),
        None,
        "{m}"
    );
    w.stop(&db).await;
}
