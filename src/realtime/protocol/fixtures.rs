//! Test fixtures shared by the bindings' and the payloads' tests.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use super::binding::{BindingRequest, bind};
use crate::catalog::TableFacts;
use crate::decode::value::oid;
use crate::decode::{Change, Column, Cursor, Lsn, Operation, Relation, Row};

pub(super) fn facts() -> TableFacts {
    TableFacts {
        oid: 1,
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

pub(super) fn req(v: Value) -> BindingRequest {
    BindingRequest::from_value(&v).unwrap()
}

pub(super) fn bind_err(v: Value) -> String {
    bind(&req(v), &[facts()]).unwrap_err().to_string()
}

pub(super) fn relation(replica_identity: u8) -> Arc<Relation> {
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

pub(super) fn row(v: Value) -> Row {
    Row {
        values: v.as_object().unwrap().clone(),
        unchanged_toast: Vec::new(),
    }
}

pub(super) fn change(op: Operation, record: Option<Row>, old: Option<Row>) -> Change {
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

pub(super) fn full_row() -> Value {
    json!({"id":"0195f0c4-0000-7000-8000-000000000001","event_type":"cpu","source":"host-1",
           "severity":3,"timestamp":"2026-08-21T10:00:00.5Z","data":{"v":1}})
}
