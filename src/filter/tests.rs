//! Filter grammar, matching and the comparison of values.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::decode::{Cursor, Lsn, Relation};

fn row(value: Value) -> Row {
    let Value::Object(values) = value else {
        panic!("test rows are objects")
    };
    Row {
        values,
        unchanged_toast: Vec::new(),
    }
}

fn event_row() -> Row {
    row(json!({
        "id": "0195c1de-0000-7000-8000-000000000001",
        "event_type": "cpu",
        "timestamp": "2026-11-23T18:01:59.123456Z",
        "source": "host-1",
        "data": {"cores": 8, "tags": ["a", "b"], "usage": 93.5},
        "metadata": {"ok": true},
        "created_at": "2026-11-23T18:02:00.000000Z",
        "severity": 3,
        "ratio": 0.25,
        "big": 18446744073709551615u64,
        "active": true,
        "note": null,
        "label": "Hello, world"
    }))
}

fn cond(s: &str) -> Condition {
    Condition::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn check(s: &str) -> bool {
    cond(s).matches(&event_row())
}

fn change(op: Operation, record: Option<Row>, old_record: Option<Row>) -> Change {
    Change {
        cursor: Cursor {
            commit_lsn: Lsn(0x10),
            index: 0,
        },
        xid: 7,
        commit_ts: Utc.with_ymd_and_hms(2026, 11, 23, 18, 2, 0).unwrap(),
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

#[test]
fn parses_each_operator() {
    for (text, op) in [
        ("source=eq.host-1", FilterOp::Eq),
        ("source=neq.host-1", FilterOp::Neq),
        ("severity=lt.3", FilterOp::Lt),
        ("severity=lte.3", FilterOp::Lte),
        ("severity=gt.3", FilterOp::Gt),
        ("severity=gte.3", FilterOp::Gte),
    ] {
        let c = cond(text);
        assert_eq!(c.op, op);
        assert!(matches!(c.value, FilterValue::Scalar(_)));
        assert_eq!(c.to_string(), text);
    }
    let c = cond("event_type=in.(cpu,mem)");
    assert_eq!(c.column, "event_type");
    assert_eq!(c.op, FilterOp::In);
    let FilterValue::List(items) = &c.value else {
        panic!("in has a list")
    };
    let texts: Vec<_> = items.iter().map(FilterScalar::text).collect();
    assert_eq!(texts, ["cpu", "mem"]);
}

#[test]
fn value_is_everything_after_the_operator() {
    let c = cond("label=eq.a.b=c");
    let FilterValue::Scalar(v) = &c.value else {
        panic!()
    };
    assert_eq!(v.text(), "a.b=c");
    let c = cond("label=eq.");
    let FilterValue::Scalar(v) = &c.value else {
        panic!()
    };
    assert_eq!(v.text(), "");
}

#[test]
fn string_comparisons() {
    assert!(check("source=eq.host-1"));
    assert!(!check("source=eq.host-2"));
    assert!(!check("source=eq.HOST-1"));
    assert!(check("source=neq.host-2"));
    assert!(!check("source=neq.host-1"));
    assert!(check("source=lt.host-2"));
    assert!(check("source=lte.host-1"));
    assert!(!check("source=lt.host-1"));
    assert!(check("source=gt.host-0"));
    assert!(check("source=gt.host-"));
    assert!(check("source=gte.host-1"));
    assert!(!check("source=gt.host-1"));
    assert!(check("label=eq.Hello, world"));
}

#[test]
fn numeric_comparisons() {
    assert!(check("severity=eq.3"));
    assert!(check("severity=eq.3.0"));
    assert!(check("severity=neq.4"));
    assert!(check("severity=lt.10"), "numeric, not lexicographic");
    assert!(check("severity=gt.-1"));
    assert!(check("severity=gte.3"));
    assert!(check("severity=lte.3"));
    assert!(!check("severity=gt.3"));
    assert!(check("ratio=lt.0.5"));
    assert!(!check("ratio=gt.2.5e-1"));
    assert!(check("ratio=eq.2.5e-1"));
    assert!(check("big=eq.18446744073709551615"), "u64 compared exactly");
    assert!(check("big=gt.18446744073709551614"));
    assert!(check("big=lt.1e20"));
    // A non-numeric filter value against a number compares the JSON text.
    assert!(check("severity=lt.abc"));
    assert!(!check("severity=eq.three"));
    // NaN and infinities are not numbers here.
    assert!(check("severity=lt.inf"));
}

#[test]
fn string_column_with_number_filter_compares_text() {
    let r = row(json!({"code": "100"}));
    assert!(cond("code=eq.100").matches(&r));
    assert!(
        cond("code=lt.42").matches(&r),
        "text order: \"100\" < \"42\""
    );
}

#[test]
fn boolean_comparisons() {
    assert!(check("active=eq.true"));
    assert!(!check("active=eq.false"));
    assert!(check("active=neq.false"));
    assert!(check("active=gt.false"));
    assert!(!check("active=lt.false"));
    // Not a boolean literal: text comparison of `true`.
    assert!(!check("active=eq.TRUE"));
    assert!(check("active=gt.TRUE"));
}

#[test]
fn timestamp_comparisons() {
    assert!(check("timestamp=eq.2026-11-23T18:01:59.123456Z"));
    assert!(check("timestamp=eq.2026-11-23T19:01:59.123456+01:00"));
    assert!(check("timestamp=gt.2026-11-23T18:00:00Z"));
    assert!(check("timestamp=lt.2026-11-23T18:02:00Z"));
    assert!(check("timestamp=lte.2026-11-23T18:01:59.123456Z"));
    assert!(!check("timestamp=gt.2026-11-23T18:01:59.123456Z"));
    // Chronological, not textual: 17:30 UTC-01:00 is 18:30 UTC.
    assert!(check("timestamp=lt.2026-11-23T17:30:00-01:00"));
    assert!(check("created_at=gte.2026-11-23T18:02:00Z"));
    // A filter that is not a full timestamp compares as text.
    assert!(check("timestamp=gt.2026-11-23"));
    assert!(check("timestamp=lt.2026-11-24"));
}

#[test]
fn jsonb_comparisons_use_compact_json() {
    assert!(check("metadata=eq.{\"ok\":true}"));
    assert!(!check("metadata=eq.{\"ok\": true}"));
    assert!(check("metadata=neq.{}"));
    assert!(check(
        "data=eq.{\"cores\":8,\"tags\":[\"a\",\"b\"],\"usage\":93.5}"
    ));
    assert!(check("data=gt.{\"cores\":7"));
    assert!(check("data=lt.{\"cores\":9"));
    assert!(
        check("data=gt.{\"cores\":8"),
        "longer text with equal prefix"
    );
    let r = row(json!({"tags": ["x", "y"]}));
    assert!(cond("tags=eq.[\"x\",\"y\"]").matches(&r));
    assert!(cond("tags=in.(\"[\\\"x\\\",\\\"y\\\"]\",z)").matches(&r));
}

#[test]
fn missing_and_null_never_match() {
    for op in ["eq", "neq", "lt", "lte", "gt", "gte"] {
        assert!(!check(&format!("note={op}.x")), "null with {op}");
        assert!(!check(&format!("nope={op}.x")), "missing with {op}");
    }
    assert!(!check("note=in.(null,x)"));
    assert!(!check("nope=in.(x)"));
}

#[test]
fn in_lists() {
    assert!(check("event_type=in.(mem,cpu)"));
    assert!(!check("event_type=in.(mem,disk)"));
    assert!(check("severity=in.(1,3.0,5)"));
    assert!(check("active=in.(false,true)"));
    assert!(check("timestamp=in.(2026-11-23T19:01:59.123456+01:00)"));
    assert!(check("label=in.(\"Hello, world\",x)"));
    assert!(
        check("source=in.( mem , host-1 )"),
        "unquoted items are trimmed"
    );
    assert!(check("source=in.(x,\"host-1\")"));
    assert!(
        !check("source=in.(\" host-1\")"),
        "quoted items keep spaces"
    );
}

#[test]
fn in_list_quoting() {
    let c = cond(r#"source=in.("a,b",c,"say \"hi\"","back\\slash","",  "(x)" )"#);
    let FilterValue::List(items) = &c.value else {
        panic!()
    };
    let texts: Vec<_> = items.iter().map(FilterScalar::text).collect();
    assert_eq!(texts, ["a,b", "c", "say \"hi\"", "back\\slash", "", "(x)"]);
    let printed = c.to_string();
    assert_eq!(
        printed,
        r#"source=in.("a,b",c,"say \"hi\"","back\\slash","","(x)")"#
    );
    assert_eq!(cond(&printed), c);
    let r = row(json!({"source": "a,b"}));
    assert!(c.matches(&r));
}

#[test]
fn in_list_size_limit() {
    let items: Vec<String> = (0..MAX_IN_ITEMS).map(|i| i.to_string()).collect();
    let ok = format!("severity=in.({})", items.join(","));
    assert!(cond(&ok).matches(&event_row()));
    let too_many = format!("severity=in.({},100)", items.join(","));
    assert_eq!(
        Condition::parse(&too_many).unwrap_err(),
        FilterError::TooManyInItems { filter: too_many }
    );
}

#[test]
fn column_names() {
    assert!(Condition::parse("_a1=eq.x").is_ok());
    assert!(Condition::parse("A_b=eq.x").is_ok());
    let max = "c".repeat(MAX_COLUMN_LEN);
    assert!(Condition::parse(&format!("{max}=eq.x")).is_ok());
}

fn err(s: &str) -> String {
    let e = Condition::parse(s).unwrap_err();
    assert_eq!(e.code(), "invalid_filter");
    e.to_string()
}

#[test]
fn parse_errors_say_what_is_wrong() {
    assert_eq!(
        err(""),
        "empty filter: expected `column=op.value`, e.g. `source=eq.host-1`"
    );
    assert_eq!(
        err("source"),
        "filter `source` has no `=`: expected `column=op.value`, e.g. `source=eq.host-1`"
    );
    assert_eq!(
        err("=eq.x"),
        "filter `=eq.x` has no column name before `=`: expected `column=op.value`"
    );
    let long = format!("{}=eq.x", "c".repeat(64));
    assert_eq!(
        err(&long),
        format!("column name in filter `{long}` is 64 bytes long: at most 63 bytes are allowed")
    );
    assert_eq!(
        err("1source=eq.x"),
        "invalid column name `1source` in filter `1source=eq.x`: use a letter or `_` \
         followed by letters, digits or `_`"
    );
    assert_eq!(
        err("data->>cpu=eq.x"),
        "invalid column name `data->>cpu` in filter `data->>cpu=eq.x`: use a letter or `_` \
         followed by letters, digits or `_`"
    );
    assert_eq!(
        err("source=host-1"),
        "filter `source=host-1` has no operator: expected `column=op.value` with op one of \
         eq, neq, lt, lte, gt, gte, in, like, ilike, is, match, imatch or isdistinct"
    );
    assert_eq!(
        err("source=.x"),
        "filter `source=.x` has no operator: expected `column=op.value` with op one of \
         eq, neq, lt, lte, gt, gte, in, like, ilike, is, match, imatch or isdistinct"
    );
    assert_eq!(
        err("source=EQ.x"),
        "unknown operator `EQ` in filter `source=EQ.x`: use eq, neq, lt, lte, gt, gte, in, \
         like, ilike, is, match, imatch or isdistinct (each may follow `not.`)"
    );
    assert_eq!(
        err("source=in.a,b"),
        "`in` filter `source=in.a,b` needs a parenthesised list: expected `column=in.(a,b,c)`"
    );
    assert_eq!(
        err("source=in.(a,b"),
        "`in` filter `source=in.(a,b` needs a parenthesised list: expected `column=in.(a,b,c)`"
    );
    assert_eq!(
        err("source=in.()"),
        "the `in` list of filter `source=in.()` is empty: give between 1 and 100 items"
    );
    assert_eq!(
        err("source=in.( )"),
        "the `in` list of filter `source=in.( )` is empty: give between 1 and 100 items"
    );
    assert_eq!(
        err("source=in.(a,,b)"),
        "item 2 of the `in` list in filter `source=in.(a,,b)` is empty: write `\"\"` for an \
         empty string"
    );
    assert_eq!(
        err("source=in.(a,)"),
        "item 2 of the `in` list in filter `source=in.(a,)` is empty: write `\"\"` for an \
         empty string"
    );
    assert_eq!(
        err("source=in.(a,\"b)"),
        "item 2 of the `in` list in filter `source=in.(a,\"b)` opens a `\"` that is never \
         closed: end the item with `\"`"
    );
    assert_eq!(
        err("source=in.(\"a\"b)"),
        "unexpected `b` after the closing quote of item 1 in filter `source=in.(\"a\"b)`: \
         expected `,` or `)`"
    );
    assert_eq!(
        err("source=in.(a\"b)"),
        "item 1 of the `in` list in filter `source=in.(a\"b)` has a `\"` inside it: put the \
         whole item in double quotes and write an inner quote as `\\\"`"
    );
    assert!(err(&format!("s=in.({})", "x,".repeat(100) + "x")).contains("more than 100"));
}

#[test]
fn empty_filter_matches_everything() {
    let f = Filter::default();
    assert!(f.matches(&change(Operation::Insert, Some(event_row()), None)));
    assert!(f.matches(&change(
        Operation::Delete,
        None,
        Some(row(json!({"id": 1})))
    )));
    assert!(f.matches(&change(Operation::Truncate, None, None)));
    assert!(f.matches(&change(Operation::Update, None, None)));
}

#[test]
fn event_types_sources_and_ops() {
    let f = Filter {
        event_types: vec!["mem".into(), "cpu".into()],
        sources: vec!["host-1".into()],
        ops: vec![Operation::Insert, Operation::Update],
        conditions: vec![cond("severity=gte.3")],
    };
    assert!(f.matches(&change(Operation::Insert, Some(event_row()), None)));
    assert!(f.matches(&change(Operation::Update, Some(event_row()), None)));
    assert!(!f.matches(&change(Operation::Delete, None, Some(event_row()))));
    let mut other = event_row();
    other.values.insert("source".into(), json!("host-2"));
    assert!(!f.matches(&change(Operation::Insert, Some(other), None)));
    let mut other = event_row();
    other.values.insert("event_type".into(), json!("disk"));
    assert!(!f.matches(&change(Operation::Insert, Some(other), None)));
    let mut other = event_row();
    other.values.insert("severity".into(), json!(2));
    assert!(!f.matches(&change(Operation::Insert, Some(other), None)));
    let mut other = event_row();
    other.values.insert("event_type".into(), Value::Null);
    assert!(!f.matches(&change(Operation::Insert, Some(other), None)));
    assert!(!f.matches(&change(Operation::Insert, None, None)));
}

#[test]
fn delete_checks_old_record() {
    let f = Filter {
        sources: vec!["host-1".into()],
        ..Filter::default()
    };
    let other = row(json!({"source": "host-2"}));
    assert!(f.matches(&change(Operation::Delete, None, Some(event_row()))));
    assert!(!f.matches(&change(
        Operation::Delete,
        Some(event_row()),
        Some(other.clone())
    )));
    // UPDATE checks the new image, not the old one.
    assert!(f.matches(&change(
        Operation::Update,
        Some(event_row()),
        Some(other.clone())
    )));
    assert!(!f.matches(&change(Operation::Update, Some(other), Some(event_row()))));
    // Key-only old image (default replica identity): no source column, no match.
    let key_only = row(json!({"id": "0195c1de-0000-7000-8000-000000000001"}));
    assert!(!f.matches(&change(Operation::Delete, None, Some(key_only))));
}

#[test]
fn truncate_ignores_row_requirements() {
    let truncate = change(Operation::Truncate, None, None);
    let f = Filter {
        event_types: vec!["cpu".into()],
        sources: vec!["host-1".into()],
        conditions: vec![cond("severity=gt.100")],
        ..Filter::default()
    };
    assert!(f.matches(&truncate));
    let inserts_only = Filter {
        ops: vec![Operation::Insert],
        ..f.clone()
    };
    assert!(!inserts_only.matches(&truncate));
    let with_truncate = Filter {
        ops: vec![Operation::Truncate],
        ..f
    };
    assert!(with_truncate.matches(&truncate));
    assert!(!with_truncate.matches(&change(Operation::Insert, Some(event_row()), None)));
}

#[test]
fn other_tables_follow_the_same_rules() {
    let mut c = change(
        Operation::Insert,
        Some(row(json!({"source": "host-1"}))),
        None,
    );
    c.relation = Arc::new(Relation {
        schema: "audit".into(),
        table: "other".into(),
        ..(*c.relation).clone()
    });
    let f = Filter {
        sources: vec!["host-1".into()],
        ..Filter::default()
    };
    assert!(f.matches(&c));
    assert!(Filter::default().matches(&c));
}

#[test]
fn a_json_comparison_stops_once_the_order_is_known() {
    use std::io::Write as _;
    let mut sink = CompareSink {
        rest: b"[1,2]",
        ord: Ordering::Equal,
    };
    assert!(sink.write(b"[1").is_ok(), "equal so far: keep going");
    assert!(sink.write(b",3").is_err(), "decided: stop the serializer");
    assert_eq!(sink.finish(), Ordering::Greater);
    // A large document that differs early compares correctly (and is not written out).
    let big = serde_json::json!({"a": "x".repeat(1 << 20)});
    assert_eq!(compare_json_text(&big, r#"{"b""#), Ordering::Less);
    assert_eq!(compare_json_text(&big, r#"{"a":"xx"}"#), Ordering::Greater);
}

/// A change whose relation lists every column of `record` (so the text cache has a slot each).
fn change_with_columns(record: Row) -> Change {
    let mut c = change(Operation::Insert, Some(record.clone()), None);
    let columns: Vec<crate::decode::Column> = record
        .values
        .keys()
        .map(|name| crate::decode::Column {
            name: name.as_str().into(),
            type_oid: crate::decode::value::oid::JSONB,
            type_modifier: -1,
            is_key: false,
        })
        .collect();
    c.relation = Arc::new(Relation {
        columns: columns.into(),
        ..(*c.relation).clone()
    });
    c
}

#[test]
fn a_columns_compact_text_is_made_once_per_change_for_every_filter_of_every_client() {
    // A 100 kB jsonb `data`, and two clients with 256 conditions each, all of which compare the
    // whole document as text: each shares a long prefix with it and differs at the end.
    let doc = json!({"blob": "y".repeat(100_000), "n": 1});
    let text = doc.to_string();
    let change = change_with_columns(row(json!({
        "data": doc,
        "metadata": {"k": "v"},
        "source": "host-1",
    })));
    let prefix = &text[..text.len() - 2];
    let client = |k: usize| -> Vec<Filter> {
        (0..256)
            .map(|i| Filter {
                conditions: vec![if i % 2 == 0 {
                    cond(&format!("data=eq.{prefix}#{k}{i}"))
                } else {
                    cond(r#"metadata=neq.{"k":"v"}"#)
                }],
                ..Filter::default()
            })
            .collect()
    };
    let clients = [client(0), client(1)];
    let texts = ColumnTexts::new();
    for filters in &clients {
        assert!(!filters.iter().any(|f| f.matches_with(&change, &texts)));
    }
    assert_eq!(texts.made(), 2, "one text per compared column");
    assert_eq!(texts.bytes(), text.len() + r#"{"k":"v"}"#.len());
    // The same answers as without the cache, and an equal text still matches.
    let exact = Filter {
        conditions: vec![cond(&format!("data=eq.{text}"))],
        ..Filter::default()
    };
    assert!(exact.matches_with(&change, &texts));
    assert!(exact.matches(&change));
    assert_eq!(texts.made(), 2);
    // A text column needs no text: strings are compared as they are.
    let by_source = Filter {
        conditions: vec![cond("source=eq.host-1")],
        ..Filter::default()
    };
    let fresh = ColumnTexts::new();
    assert!(by_source.matches_with(&change, &fresh));
    assert_eq!(fresh.made(), 0);
}

/// A row of `(column, value)` pairs.
fn row_of(pairs: &[(&str, serde_json::Value)]) -> Row {
    let mut r = Row::default();
    for (k, v) in pairs {
        r.values.insert((*k).into(), v.clone());
    }
    r
}

#[test]
fn the_2026_operators_follow_sql() {
    use serde_json::json;
    let row = row_of(&[
        ("source", json!("host-12")),
        ("flag", json!(true)),
        ("off", json!(false)),
        ("nothing", json!(null)),
        ("n", json!(42)),
        ("data", json!({"k": "Value"})),
        ("id", json!("0195c1de-0000-7000-8000-00000000000a")),
        ("at", json!("2026-11-23T18:00:00.000000Z")),
        ("multi", json!("a\nb")),
    ]);
    let m = |f: &str| Condition::parse(f).unwrap().matches(&row);
    // like / ilike: % and _, escapes, case.
    assert!(m("source=like.host-%"));
    assert!(m("source=like.host-1_"));
    assert!(!m("source=like.host-1"));
    assert!(!m("source=like.HOST-%"));
    assert!(m("source=ilike.HOST-%"));
    assert!(m(r"source=like.host\-12"));
    assert!(m("multi=like.a%b"), "% spans newlines");
    assert!(!m("source=like.%.%"), "a regex dot is literal in LIKE");
    // match / imatch.
    assert!(m("source=match.^host-[0-9]+$"));
    assert!(!m("source=match.^HOST"));
    assert!(m("source=imatch.^HOST"));
    assert!(
        m("data=match.Value"),
        "non-text values match on their JSON text"
    );
    // is.
    assert!(m("nothing=is.null"));
    assert!(!m("source=is.null"));
    assert!(m("flag=is.true") && m("off=is.false") && m("nothing=is.unknown"));
    assert!(!m("flag=is.false"));
    assert!(m("source=not.is.null"));
    // isdistinct: NULL is distinct from a value.
    assert!(m("nothing=isdistinct.x"));
    assert!(m("source=isdistinct.host-1"));
    assert!(!m("source=isdistinct.host-12"));
    // not.: negates; unknown (NULL) stays unknown.
    assert!(m("source=not.eq.host-1"));
    assert!(!m("source=not.eq.host-12"));
    assert!(m("source=not.in.(a,b)"));
    assert!(!m("nothing=not.eq.x"), "not of unknown is unknown");
    assert!(!m("nothing=neq.x"));
    assert!(m("n=not.gt.50") && !m("n=not.lt.50"));
    assert!(m("source=not.like.db-%"));
    // A missing column never matches, negated or not.
    assert!(!m("absent=not.eq.x") && !m("absent=is.null"));
    // Quoted values the PostgREST way.
    let row2 = row_of(&[("source", json!("a,b")), ("q", json!("say \"hi\""))]);
    let m2 = |f: &str| Condition::parse(f).unwrap().matches(&row2);
    assert!(m2(r#"source=eq."a,b""#));
    assert!(m2(r#"q=eq."say \"hi\"""#));
    // UUIDs compare as UUIDs; Postgres-style timestamps compare as instants.
    assert!(m("id=eq.0195C1DE-0000-7000-8000-00000000000A"));
    assert!(m("at=eq.2026-11-23 18:00:00+00"));
    assert!(m("at=gt.2026-11-23 17:59:59.5+00"));
    assert!(m("at=lt.2026-11-23 13:00:01-05"));
}

#[test]
fn the_2026_operators_refuse_bad_values_by_name() {
    let err = |f: &str| Condition::parse(f).unwrap_err().to_string();
    assert_eq!(
        err("flag=is.maybe"),
        "`is` filter `flag=is.maybe` takes null, true, false or unknown"
    );
    assert!(err("source=match.(unclosed").starts_with("invalid pattern in filter"));
    assert!(err(r"source=like.ends\").contains("escape character"));
    let long = format!("source=match.{}", "a".repeat(MAX_PATTERN_LEN + 1));
    assert!(err(&long).contains("at most 512"));
    // A pattern that compiles too big is refused, not run.
    let big = format!("source=match.{}", "(a{1,1000}){1,1000}");
    assert!(err(&big).contains("64 KiB"), "{}", err(&big));
    // Everyday patterns, Unicode classes included, fit the bound.
    for ok in [
        r"source=match.^\w+-\d+$",
        r"source=imatch.^[[:alpha:]]+\s*\S+",
        "source=ilike.%é%",
    ] {
        Condition::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    assert!(err(r#"source=eq."open"#).contains("not closed"));
    assert!(err(r#"source=eq."a"b"#).contains("not closed"));
}

#[test]
fn the_2026_conditions_print_back() {
    for f in [
        "source=not.eq.x",
        "source=like.host-%",
        "flag=is.null",
        "source=not.imatch.^a",
        r#"source=eq."a,b""#,
        "source=isdistinct.y",
    ] {
        let c = Condition::parse(f).unwrap();
        assert_eq!(c.to_string(), f);
        assert_eq!(Condition::parse(&c.to_string()).unwrap(), c);
    }
}
