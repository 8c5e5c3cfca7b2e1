//! The `/ws` protocol: parsing, encoding and reading back.

use std::sync::Arc;

use chrono::{TimeZone, Timelike as _, Utc};
use serde_json::json;

use serde_json::Value;

use super::client::*;
use super::read::*;
use super::server::*;
use super::*;
use crate::decode::{Change, Cursor, Operation, Row};
use crate::decode::{Lsn, Relation};
use crate::filter::FilterOp;
use crate::filter::{Condition, Filter};
use crate::json::push_str as push_json_str;

fn cursor(lsn: u64, index: u32) -> Cursor {
    Cursor {
        commit_lsn: Lsn(lsn),
        index,
    }
}

fn row(value: Value) -> Row {
    let Value::Object(values) = value else {
        panic!("test rows are objects")
    };
    Row {
        values,
        unchanged_toast: Vec::new(),
    }
}

fn change(op: Operation, record: Option<Row>, old_record: Option<Row>) -> Change {
    Change {
        cursor: cursor(0x16_B374_D848, 2),
        xid: 900,
        commit_ts: Utc
            .with_ymd_and_hms(2026, 11, 23, 18, 2, 0)
            .unwrap()
            .with_nanosecond(123_456_000)
            .unwrap(),
        relation: Arc::new(Relation {
            oid: 16384,
            schema: "public".into(),
            table: "monitoring_events".into(),
            replica_identity: b'f',
            columns: Arc::from(Vec::new()),
        }),
        op,
        record,
        old_record,
    }
}

fn sample_row() -> Row {
    row(json!({
        "created_at": "2026-11-23T18:02:00.000000Z",
        "data": {"cores": 8, "usage": 93.5},
        "event_type": "cpu",
        "id": "0195c1de-0000-7000-8000-000000000001",
        "metadata": null,
        "source": "host-1",
        "timestamp": "2026-11-23T18:01:59.123456Z"
    }))
}

fn parse_err(text: &str) -> ProtocolError {
    parse_client_frame(text).expect_err(text)
}

fn assert_err(text: &str, code: ErrorCode, message: &str, r#ref: Option<&str>) {
    let e = parse_err(text);
    assert_eq!(e.code, code, "{text}: {}", e.message);
    assert_eq!(e.message, message, "{text}");
    assert_eq!(e.r#ref.as_deref(), r#ref, "{text}");
}

#[test]
fn subscribe_with_everything() {
    let frame = parse_client_frame(
        r#"{"type":"subscribe","id":"a","event_type":["cpu","mem"],"source":"host-1",
            "ops":["INSERT","update","INSERT"],"filters":["severity=gte.3","source=in.(a,b)"]}"#,
    )
    .unwrap();
    let ClientFrame::Subscribe(req) = frame else {
        panic!("not a subscribe: {frame:?}")
    };
    assert_eq!(req.id, "a");
    assert_eq!(req.filter.event_types, ["cpu", "mem"]);
    assert_eq!(req.filter.sources, ["host-1"]);
    assert_eq!(req.filter.ops, [Operation::Insert, Operation::Update]);
    assert_eq!(req.filter.conditions.len(), 2);
    assert_eq!(req.filter.conditions[0].op, FilterOp::Gte);
    assert_eq!(req.filter.conditions[1].to_string(), "source=in.(a,b)");
}

#[test]
fn subscribe_minimal_matches_everything() {
    let frame = parse_client_frame(r#"{"type":"subscribe","id":"x","source":null}"#).unwrap();
    assert_eq!(
        frame,
        ClientFrame::Subscribe(SubscribeRequest {
            id: "x".into(),
            filter: Filter::default(),
            since: None,
            tables: None,
        })
    );
    // `since` resumes as part of the subscribe; a malformed one is `invalid_cursor`.
    let c = Cursor {
        commit_lsn: Lsn(0x16_B374_D848),
        index: 2,
    };
    let frame = parse_client_frame(&format!(
        r#"{{"type":"subscribe","id":"x","since":"{}"}}"#,
        c.encode()
    ))
    .unwrap();
    assert!(
        matches!(frame, ClientFrame::Subscribe(SubscribeRequest { since: Some(s), .. }) if s == c)
    );
    let e = parse_client_frame(r#"{"type":"subscribe","id":"x","since":"nope"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidCursor);
    assert_eq!(e.r#ref.as_deref(), Some("x"));
    let long_id = "é".repeat(64);
    let frame = parse_client_frame(&format!(r#"{{"type":"subscribe","id":"{long_id}"}}"#));
    assert!(
        frame.is_ok(),
        "64 characters are allowed even if more bytes"
    );
}

#[test]
fn other_client_frames() {
    assert_eq!(
        parse_client_frame(r#"{"type":"unsubscribe","id":"a"}"#).unwrap(),
        ClientFrame::Unsubscribe { id: "a".into() }
    );
    let c = cursor(0x16_B374_D848, 2);
    assert_eq!(
        parse_client_frame(&format!(r#"{{"type":"resume","cursor":"{c}"}}"#)).unwrap(),
        ClientFrame::Resume { cursor: c }
    );
    assert_eq!(
        parse_client_frame(r#"{"type":"ping","ref":"p1"}"#).unwrap(),
        ClientFrame::Ping {
            r#ref: Some("p1".into())
        }
    );
    assert_eq!(
        parse_client_frame(r#"{"type":"ping"}"#).unwrap(),
        ClientFrame::Ping { r#ref: None }
    );
    assert_eq!(
        parse_client_frame(r#" {"ref":null,"type":"ping"} "#).unwrap(),
        ClientFrame::Ping { r#ref: None }
    );
}

#[test]
fn bad_json_errors() {
    let e = parse_err("{\"type\":");
    assert_eq!(e.code, ErrorCode::BadJson);
    assert!(
        e.message
            .starts_with("frame is not valid JSON (EOF while parsing"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .ends_with("): send one JSON object per text frame")
    );
    assert_eq!(e.r#ref, None);
    assert_eq!(parse_err("").code, ErrorCode::BadJson);
    assert_err(
        r#"["subscribe"]"#,
        ErrorCode::BadJson,
        "frame is an array, not a JSON object: send one JSON object with a `type` field per \
         text frame",
        None,
    );
    assert_err(
        "42",
        ErrorCode::BadJson,
        "frame is a number, not a JSON object: send one JSON object with a `type` field per \
         text frame",
        None,
    );
}

#[test]
fn type_errors() {
    assert_err(
        r#"{"id":"a"}"#,
        ErrorCode::BadRequest,
        "missing field `type`: expected subscribe, unsubscribe, resume or ping",
        None,
    );
    assert_err(
        r#"{"type":7}"#,
        ErrorCode::BadRequest,
        "field `type` must be a string, got a number: expected subscribe, unsubscribe, \
         resume or ping",
        None,
    );
    assert_err(
        r#"{"type":"subscribed","id":"a"}"#,
        ErrorCode::UnknownType,
        "unknown frame type `subscribed`: expected subscribe, unsubscribe, resume or ping",
        None,
    );
    let long = "t".repeat(100);
    let e = parse_err(&format!(r#"{{"type":"{long}"}}"#));
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert!(e.message.contains(&format!("`{}...`", "t".repeat(64))));
}

#[test]
fn subscribe_errors() {
    let hint = "give the subscription an id of 1 to 64 characters, e.g. \"id\":\"cpu-alerts\"";
    assert_err(
        r#"{"type":"subscribe"}"#,
        ErrorCode::BadRequest,
        &format!("missing field `id` in subscribe frame: {hint}"),
        None,
    );
    assert_err(
        r#"{"type":"subscribe","id":5}"#,
        ErrorCode::BadRequest,
        "field `id` in subscribe frame must be a string, got a number",
        None,
    );
    assert_err(
        r#"{"type":"subscribe","id":null}"#,
        ErrorCode::BadRequest,
        "field `id` in subscribe frame must be a string, got null",
        None,
    );
    assert_err(
        r#"{"type":"subscribe","id":""}"#,
        ErrorCode::BadRequest,
        "field `id` in subscribe frame must be 1 to 64 characters long, got 0",
        None,
    );
    assert_err(
        &format!(r#"{{"type":"subscribe","id":"{}"}}"#, "x".repeat(65)),
        ErrorCode::BadRequest,
        "field `id` in subscribe frame must be 1 to 64 characters long, got 65",
        None,
    );
    assert_err(
        r#"{"type":"subscribe","id":"a","event_type":3}"#,
        ErrorCode::BadRequest,
        "field `event_type` in subscribe frame must be a string or an array of strings, got \
         a number",
        Some("a"),
    );
    assert_err(
        r#"{"type":"subscribe","id":"a","source":[]}"#,
        ErrorCode::BadRequest,
        "field `source` in subscribe frame is an empty array: leave it out to match \
         everything",
        Some("a"),
    );
    assert_err(
        r#"{"type":"subscribe","id":"a","source":["h",true]}"#,
        ErrorCode::BadRequest,
        "item 2 of field `source` in subscribe frame must be a string, got a boolean",
        Some("a"),
    );
    let many: Vec<String> = (0..101).map(|i| format!("\"s{i}\"")).collect();
    assert_err(
        &format!(
            r#"{{"type":"subscribe","id":"a","event_type":[{}]}}"#,
            many.join(",")
        ),
        ErrorCode::BadRequest,
        "field `event_type` in subscribe frame has 101 items: at most 100 are allowed",
        Some("a"),
    );
    assert_err(
        r#"{"type":"subscribe","id":"a","ops":["INSERT","UPSERT"]}"#,
        ErrorCode::BadRequest,
        "item 2 of field `ops` in subscribe frame is `UPSERT`: use INSERT, UPDATE, DELETE \
         or TRUNCATE",
        Some("a"),
    );
    assert_err(
        r#"{"type":"subscribe","id":"a","filters":"source=likes.x"}"#,
        ErrorCode::InvalidFilter,
        "unknown operator `likes` in filter `source=likes.x`: use eq, neq, lt, lte, gt, gte, \
         in, like, ilike, is, match, imatch or isdistinct (each may follow `not.`)",
        Some("a"),
    );
    assert_err(
        r#"{"type":"subscribe","id":"a","filters":["source=eq.x",{"col":"x"}]}"#,
        ErrorCode::BadRequest,
        "item 2 of field `filters` in subscribe frame must be a string, got an object",
        Some("a"),
    );
    let filters: Vec<String> = (0..33).map(|i| format!("\"c{i}=eq.1\"")).collect();
    assert_err(
        &format!(
            r#"{{"type":"subscribe","id":"a","filters":[{}]}}"#,
            filters.join(",")
        ),
        ErrorCode::BadRequest,
        "field `filters` in subscribe frame has 33 items: at most 32 are allowed",
        Some("a"),
    );
    assert_err(
        r#"{"type":"subscribe","id":"a","filter":"source=eq.x"}"#,
        ErrorCode::BadRequest,
        "unknown field `filter` in subscribe frame: its fields are type, id, event_type, \
         source, ops, filters, table and since",
        Some("a"),
    );
}

#[test]
fn subscribe_with_tables() {
    let tables = |text: &str| match parse_client_frame(text).unwrap() {
        ClientFrame::Subscribe(req) => req.tables,
        other => panic!("not a subscribe: {other:?}"),
    };
    let names = |v: Option<Vec<TableName>>| {
        v.map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    assert_eq!(
        names(tables(r#"{"type":"subscribe","id":"a","table":"orders"}"#)),
        Some(vec!["public.orders".to_owned()])
    );
    assert_eq!(
        names(tables(
            r#"{"type":"subscribe","id":"a","table":["app.notes","app.*","orders","public.orders"]}"#
        )),
        Some(vec![
            "app.notes".to_owned(),
            "app.*".to_owned(),
            "public.orders".to_owned()
        ])
    );
    // `*` is every table, like leaving the field out.
    assert_eq!(
        tables(r#"{"type":"subscribe","id":"a","table":["orders","*"]}"#),
        None
    );
    assert_eq!(tables(r#"{"type":"subscribe","id":"a"}"#), None);
    assert_err(
        r#"{"type":"subscribe","id":"a","table":["orders","a.b.c"]}"#,
        ErrorCode::InvalidFilter,
        "item 2 of field `table` in subscribe frame is `a.b.c` (unexpected `.c` after the \
         table name: use schema.table): use `schema.table`, `table` (schema public), \
         `schema.*` or `*`",
        Some("a"),
    );
    assert_err(
        r#"{"type":"subscribe","id":"a","table":[]}"#,
        ErrorCode::BadRequest,
        "field `table` in subscribe frame is an empty array: leave it out to match everything",
        Some("a"),
    );
}

#[test]
fn unsubscribe_resume_and_ping_errors() {
    assert_err(
        r#"{"type":"unsubscribe"}"#,
        ErrorCode::BadRequest,
        "missing field `id` in unsubscribe frame: give the subscription an id of 1 to 64 \
         characters, e.g. \"id\":\"cpu-alerts\"",
        None,
    );
    assert_err(
        r#"{"type":"unsubscribe","id":"a","all":true}"#,
        ErrorCode::BadRequest,
        "unknown field `all` in unsubscribe frame: its fields are type and id",
        Some("a"),
    );
    assert_err(
        r#"{"type":"resume"}"#,
        ErrorCode::BadRequest,
        "missing field `cursor` in resume frame: pass back a cursor exactly as walcast sent it",
        None,
    );
    assert_err(
        r#"{"type":"resume","cursor":12}"#,
        ErrorCode::BadRequest,
        "field `cursor` in resume frame must be a string, got a number",
        None,
    );
    assert_err(
        r#"{"type":"resume","cursor":"16/B374D848"}"#,
        ErrorCode::InvalidCursor,
        "invalid cursor \"16/B374D848\": pass back a cursor exactly as walcast sent it",
        None,
    );
    assert_err(
        r#"{"type":"ping","ref":1}"#,
        ErrorCode::BadRequest,
        "field `ref` in ping frame must be a string, got a number",
        None,
    );
    assert_err(
        &format!(r#"{{"type":"ping","ref":"{}"}}"#, "r".repeat(65)),
        ErrorCode::BadRequest,
        "field `ref` in ping frame must be 1 to 64 characters long, got 65",
        None,
    );
    assert_err(
        r#"{"type":"ping","ref":"p","x":1}"#,
        ErrorCode::BadRequest,
        "unknown field `x` in ping frame: its fields are type and ref",
        Some("p"),
    );
}

#[test]
fn session_error_constructors() {
    let e = ProtocolError::duplicate_subscription("a");
    assert_eq!(
        encode_error(&e),
        r#"{"type":"error","code":"duplicate_subscription","message":"subscription `a` already exists on this connection: unsubscribe it first or use another id","ref":"a"}"#
    );
    let e = ProtocolError::unknown_subscription("b");
    assert_eq!(
        encode_error(&e),
        r#"{"type":"error","code":"unknown_subscription","message":"no subscription `b` on this connection: nothing was unsubscribed","ref":"b"}"#
    );
    let e = ProtocolError::too_many_subscriptions("c", 16);
    assert_eq!(e.code, ErrorCode::TooManySubscriptions);
    assert_eq!(
        e.message,
        "subscription `c` was refused: this connection already has the maximum of 16 \
         subscriptions; unsubscribe one first or merge their filters"
    );
    assert_eq!(e.r#ref.as_deref(), Some("c"));
    let e = ProtocolError::internal("replay failed");
    assert_eq!(
        encode_error(&e),
        r#"{"type":"error","code":"internal","message":"internal error: replay failed","ref":null}"#
    );
    let e: ProtocolError = Condition::parse("x").unwrap_err().into();
    assert_eq!(e.code, ErrorCode::InvalidFilter);
    assert_eq!(e.to_string(), format!("invalid_filter: {}", e.message));
}

#[test]
fn error_codes_round_trip() {
    let names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "bad_json",
            "unknown_type",
            "bad_request",
            "invalid_filter",
            "invalid_cursor",
            "duplicate_subscription",
            "unknown_subscription",
            "too_many_subscriptions",
            "cursor_expired",
            "unauthorized",
            "forbidden",
            "busy",
            "internal"
        ]
    );
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_name(code.as_str()), Some(code));
        let text = encode_error(&ProtocolError::new(code, "m").with_ref(Some("r".into())));
        let ServerFrame::Error(frame) = parse_server_frame(&text).unwrap() else {
            panic!("{text}")
        };
        assert_eq!(frame.error_code(), Some(code));
        assert_eq!(frame.message, "m");
        assert_eq!(frame.r#ref.as_deref(), Some("r"));
    }
    assert_eq!(ErrorCode::from_name("nope"), None);
}

#[test]
fn event_encoding_is_exact_and_deterministic() {
    let c = change(Operation::Insert, Some(sample_row()), None);
    let text = encode_event(&c);
    assert_eq!(
        text,
        concat!(
            r#"{"type":"event","cursor":"00000016b374d84800000002","op":"INSERT","#,
            r#""schema":"public","table":"monitoring_events","#,
            r#""commit_ts":"2026-11-23T18:02:00.123456Z","#,
            r#""record":{"created_at":"2026-11-23T18:02:00.000000Z","#,
            r#""data":{"cores":8,"usage":93.5},"event_type":"cpu","#,
            r#""id":"0195c1de-0000-7000-8000-000000000001","metadata":null,"#,
            r#""source":"host-1","timestamp":"2026-11-23T18:01:59.123456Z"},"#,
            r#""old_record":null}"#
        )
    );
    assert_eq!(encode_event(&c), text);
    let parsed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed["record"], Value::Object(sample_row().values));
}

#[test]
fn event_round_trips_through_the_client_parser() {
    let mut record = sample_row();
    record.values.remove("data");
    record.unchanged_toast = vec!["data".into()];
    let mut old = sample_row();
    old.values.insert("source".into(), json!("host-0"));
    let c = change(Operation::Update, Some(record.clone()), Some(old.clone()));
    let text = encode_event(&c);
    assert!(text.ends_with(r#","unchanged_toast":["data"]}"#), "{text}");
    let ServerFrame::Event(event) = parse_server_frame(&text).unwrap() else {
        panic!("{text}")
    };
    assert_eq!(
        event,
        EventFrame {
            cursor: c.cursor,
            op: "UPDATE".into(),
            schema: "public".into(),
            table: "monitoring_events".into(),
            commit_ts: "2026-11-23T18:02:00.123456Z".into(),
            record: Some(record.values),
            old_record: Some(old.values),
            unchanged_toast: vec!["data".into()],
        }
    );
    assert_eq!(event.operation(), Some(Operation::Update));

    for (op, record, old) in [
        (Operation::Delete, None, Some(sample_row())),
        (Operation::Truncate, None, None),
        (Operation::Insert, Some(Row::default()), None),
    ] {
        let c = change(op, record.clone(), old.clone());
        let text = encode_event(&c);
        assert!(!text.contains("unchanged_toast"));
        let ServerFrame::Event(event) = parse_server_frame(&text).unwrap() else {
            panic!("{text}")
        };
        assert_eq!(event.operation(), Some(op));
        assert_eq!(event.record, record.map(|r| r.values));
        assert_eq!(event.old_record, old.map(|r| r.values));
        assert!(event.unchanged_toast.is_empty());
    }
}

#[test]
fn unchanged_toast_is_listed_once() {
    let mut record = row(json!({"id": 1}));
    record.unchanged_toast = vec!["data".into(), "metadata".into()];
    let mut old = row(json!({"id": 1}));
    old.unchanged_toast = vec!["metadata".into(), "extra".into()];
    let text = encode_event(&change(Operation::Update, Some(record), Some(old)));
    assert!(
        text.ends_with(r#","unchanged_toast":["data","metadata","extra"]}"#),
        "{text}"
    );
}

#[test]
fn odd_strings_are_escaped() {
    let odd = [
        "plain",
        "",
        "quote \" backslash \\ slash /",
        "new\nline\r\ttab\u{8}\u{c}",
        "nul \u{0} unit \u{1f} del \u{7f}",
        "unicode é ✓ 🦀 \u{2028}\u{2029}",
        "\\u0041 not an escape",
    ];
    for s in odd {
        let mut out = String::new();
        push_json_str(&mut out, s);
        assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, s);
    }
    let mut r = row(json!({}));
    for (i, s) in odd.iter().enumerate() {
        r.values.insert(format!("k{i}{s}"), json!(s));
    }
    let mut c = change(Operation::Insert, Some(r.clone()), None);
    c.relation = Arc::new(Relation {
        schema: "we\"ird".into(),
        table: "t\\\n".into(),
        ..(*c.relation).clone()
    });
    let ServerFrame::Event(event) = parse_server_frame(&encode_event(&c)).unwrap() else {
        panic!()
    };
    assert_eq!(event.schema, "we\"ird");
    assert_eq!(event.table, "t\\\n");
    assert_eq!(event.record, Some(r.values));

    let text = encode_subscribed("a\"b\n");
    assert_eq!(text, r#"{"type":"subscribed","id":"a\"b\n"}"#);
    assert_eq!(
        parse_server_frame(&text).unwrap(),
        ServerFrame::Subscribed {
            id: "a\"b\n".into()
        }
    );
}

#[test]
fn control_frames_encode_and_parse_back() {
    let c = cursor(0x16_B374_D848, 2);
    let cases = [
        (
            encode_welcome("0.1.0", 15_000),
            r#"{"type":"welcome","protocol":1,"server":"walcast 0.1.0","heartbeat_ms":15000}"#,
            ServerFrame::Welcome {
                protocol: 1,
                server: "walcast 0.1.0".into(),
                heartbeat_ms: 15_000,
            },
        ),
        (
            encode_subscribed("a"),
            r#"{"type":"subscribed","id":"a"}"#,
            ServerFrame::Subscribed { id: "a".into() },
        ),
        (
            encode_unsubscribed("a"),
            r#"{"type":"unsubscribed","id":"a"}"#,
            ServerFrame::Unsubscribed { id: "a".into() },
        ),
        (
            encode_resumed(c, 42),
            r#"{"type":"resumed","cursor":"00000016b374d84800000002","replayed":42}"#,
            ServerFrame::Resumed {
                cursor: c,
                replayed: 42,
            },
        ),
        (
            encode_pong(Some("p1")),
            r#"{"type":"pong","ref":"p1"}"#,
            ServerFrame::Pong {
                r#ref: Some("p1".into()),
            },
        ),
        (
            encode_pong(None),
            r#"{"type":"pong","ref":null}"#,
            ServerFrame::Pong { r#ref: None },
        ),
        (
            encode_heartbeat(Some(c)),
            r#"{"type":"heartbeat","cursor":"00000016b374d84800000002"}"#,
            ServerFrame::Heartbeat { cursor: Some(c) },
        ),
        (
            encode_heartbeat(None),
            r#"{"type":"heartbeat","cursor":null}"#,
            ServerFrame::Heartbeat { cursor: None },
        ),
    ];
    for (text, expected_text, expected) in cases {
        assert_eq!(text, expected_text);
        assert_eq!(parse_server_frame(&text).unwrap(), expected);
    }
}

#[test]
fn cursor_expired_frame() {
    let requested = cursor(0x10, 0);
    let oldest = cursor(0x20, 3);
    let text = encode_cursor_expired(requested, Some(oldest));
    assert_eq!(
        text,
        concat!(
            r#"{"type":"error","code":"cursor_expired","message":"cursor "#,
            r#"000000000000001000000000 is older than the retention window: "#,
            r#"the oldest cursor still available is 000000000000002000000003; "#,
            r#"resume from it to get every change still retained, knowing that changes "#,
            r#"in between are lost","ref":null,"oldest":"000000000000002000000003"}"#
        )
    );
    let ServerFrame::Error(frame) = parse_server_frame(&text).unwrap() else {
        panic!()
    };
    assert_eq!(frame.error_code(), Some(ErrorCode::CursorExpired));
    assert_eq!(frame.oldest, Some(oldest));
    assert_eq!(
        frame.message,
        cursor_expired_error(requested, Some(oldest)).message
    );

    let text = encode_cursor_expired(requested, None);
    assert!(text.ends_with(r#"carry on without resuming","ref":null,"oldest":null}"#));
    let ServerFrame::Error(frame) = parse_server_frame(&text).unwrap() else {
        panic!()
    };
    assert_eq!(frame.oldest, None);
}

#[test]
fn lagged_frame() {
    let c = cursor(0x16_B374_D848, 2);
    let text = encode_lagged(Some(c));
    assert_eq!(
        text,
        concat!(
            r#"{"type":"lagged","cursor":"00000016b374d84800000002","message":"#,
            r#""this connection fell further behind than its queue allows and is being "#,
            r#"closed (code 4008): reconnect, subscribe again and resume from cursor "#,
            r#"00000016b374d84800000002"}"#
        )
    );
    let ServerFrame::Lagged { cursor, message } = parse_server_frame(&text).unwrap() else {
        panic!()
    };
    assert_eq!(cursor, Some(c));
    assert!(message.contains("resume from cursor 00000016b374d84800000002"));
    let ServerFrame::Lagged { cursor, message } = parse_server_frame(&encode_lagged(None)).unwrap()
    else {
        panic!()
    };
    assert_eq!(cursor, None);
    assert!(message.contains("before any event was delivered"));
}

#[test]
fn server_parser_tolerates_new_fields_and_reports_bad_frames() {
    assert_eq!(
        parse_server_frame(r#"{"type":"subscribed","id":"a","extra":1}"#).unwrap(),
        ServerFrame::Subscribed { id: "a".into() }
    );
    let e = parse_server_frame(r#"{"type":"presence"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownType);
    let e = parse_server_frame(r#"{"type":"event","cursor":"zz"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidCursor);
    let e = parse_server_frame(r#"{"type":"resumed","cursor":"000000000000001000000000"}"#)
        .unwrap_err();
    assert_eq!(
        e.message,
        "missing field `replayed` in resumed frame: walcast always sends it"
    );
    let e = parse_server_frame("nope").unwrap_err();
    assert_eq!(e.code, ErrorCode::BadJson);
}
