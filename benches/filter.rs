//! `Filter::matches`, run for every change and every subscription: an `eq` on a text column, a
//! numeric comparison, and an `eq` on a jsonb column (compared as compact JSON text).
//!
//! The row is the `public.monitoring_events` insert of `fixture` plus an integer `severity`
//! column (the table has no numeric column; filters apply to any published table).
//! `cargo bench --bench filter`; figures in BENCHMARKS.md ("Micro-benchmarks").

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
// walcast paths in one place, so a module move is fixed here (and in `fixture`).
use walcast::decode::Change;
use walcast::filter::{Condition, Filter};

mod fixture;

/// A filter with the one condition `condition`.
fn filter(condition: &str) -> Filter {
    Filter {
        conditions: vec![Condition::parse(condition).expect("valid filter")],
        ..Filter::default()
    }
}

/// The fixture insert with `severity = 3`.
fn change() -> Change {
    let mut change = fixture::insert_change();
    let record = change.record.as_mut().expect("an insert has a record");
    record.values.insert("severity".into(), json!(3));
    change
}

fn matches(c: &mut Criterion) {
    let change = change();
    // The exact compact JSON walcast sends for `data`, so the comparison runs to the end.
    let data = serde_json::to_string(&change.record.as_ref().expect("record").values["data"])
        .expect("serialises");
    let cases = [
        ("text_eq", filter(&format!("source=eq.{}", fixture::SOURCE))),
        ("number_gte", filter("severity=gte.3")),
        ("jsonb_eq", filter(&format!("data=eq.{data}"))),
    ];
    let mut group = c.benchmark_group("filter_matches");
    for (name, filter) in &cases {
        assert!(filter.matches(&change), "{name} must match the row");
        group.bench_function(*name, |b| b.iter(|| filter.matches(black_box(&change))));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the whole file takes about 10 s.
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = matches
}
criterion_main!(benches);
