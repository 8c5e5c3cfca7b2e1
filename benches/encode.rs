//! Encoding one change for the wire, once per change (the bytes are shared by every
//! subscriber): the `/ws` event frame, the Realtime change object (`data`), and the Realtime
//! `postgres_changes` frame that wraps it per channel.
//!
//! The change is a `public.monitoring_events` insert or update with a ~300-byte jsonb `data`.
//! `cargo bench --bench encode`; figures in BENCHMARKS.md ("Micro-benchmarks").

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
// walcast paths in one place, so a module move is fixed here (and in `fixture`).
use walcast::catalog::TableFacts;
use walcast::realtime::protocol::Vsn;
use walcast::realtime::protocol::payload::{encode_change_data, encode_change_frame};
use walcast::ws::protocol::encode_event;

mod fixture;

/// What the server knows about `public.monitoring_events` (type names, primary key, RLS on).
fn facts() -> TableFacts {
    let column = |name: &str, type_name: &str| (name.to_owned(), type_name.to_owned());
    TableFacts {
        oid: 1,
        schema: "public".into(),
        table: "monitoring_events".into(),
        published: true,
        rls_enabled: true,
        columns: vec![
            column("id", "uuid"),
            column("event_type", "text"),
            column("timestamp", "timestamptz"),
            column("source", "text"),
            column("data", "jsonb"),
            column("metadata", "jsonb"),
            column("created_at", "timestamptz"),
        ],
        primary_key: vec!["id".into()],
    }
}

/// `/ws`: the `event` frame.
fn ws_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_encode_event");
    for (name, change) in [
        ("insert", fixture::insert_change()),
        ("update", fixture::update_change()),
    ] {
        group.bench_function(name, |b| b.iter(|| encode_event(black_box(&change))));
    }
    group.finish();
}

/// Realtime: the change object (`schema`, `table`, `columns`, `record`, ...).
fn realtime_change_data(c: &mut Criterion) {
    let facts = facts();
    let mut group = c.benchmark_group("realtime_encode_change_data");
    for (name, change) in [
        ("insert", fixture::insert_change()),
        ("update", fixture::update_change()),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| encode_change_data(black_box(&change), Some(&facts)))
        });
    }
    group.finish();
}

/// Realtime: the per-channel `postgres_changes` frame around an encoded change object.
fn realtime_change_frame(c: &mut Criterion) {
    let data = encode_change_data(&fixture::insert_change(), Some(&facts()));
    let mut group = c.benchmark_group("realtime_encode_change_frame");
    for (name, vsn) in [("v1", Vsn::V1), ("v2", Vsn::V2)] {
        group.bench_function(name, |b| {
            b.iter(|| encode_change_frame(vsn, black_box("realtime:bench"), &[42], &data))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the whole file takes about 20 s.
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = ws_event, realtime_change_data, realtime_change_frame
}
criterion_main!(benches);
