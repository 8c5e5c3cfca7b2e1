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
use walcast::filter::{ColumnTexts, Condition, Filter};

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

/// Filter cost per change: a row whose `data` is a 100 KB jsonb document (2000 small objects),
/// matched by 2 clients with 256 conditions each on `data`. Every condition's value is the
/// first 20 kB of the document's compact text followed by a different byte, so none matches
/// and each comparison must read 20 kB before it knows (the worst a filter value that fits the
/// 64 KiB client frame can do).
///
/// - `per_condition`: each comparison writes the document's text up to the first difference
///   (`Filter::matches` without a cache; walcast's matching until this change).
/// - `shared_text`: one `ColumnTexts` for the change, shared by both clients' filters (what the
///   hub hands every session): the text is made once, then each comparison is a `memcmp`.
fn amplification(c: &mut Criterion) {
    let doc = serde_json::Value::Array(
        (0..2000)
            .map(|i| json!({"id": i, "name": format!("item-{i:05}"), "tags": ["a", "b"], "v": 0.5}))
            .collect(),
    );
    let doc = json!({ "items": doc });
    let text = doc.to_string();
    assert!(text.len() > 90_000, "{}", text.len());
    let mut change = fixture::insert_change();
    change
        .record
        .as_mut()
        .expect("an insert has a record")
        .values
        .insert("data".into(), doc);
    let prefix = &text[..20_000];
    let clients: Vec<Vec<Filter>> = (0..2)
        .map(|k| {
            (0..256)
                .map(|i| filter(&format!("data=eq.{prefix}#{k}-{i}")))
                .collect()
        })
        .collect();
    let mut group = c.benchmark_group("filter_2_clients_x_256_on_100kb_jsonb");
    group.bench_function("per_condition", |b| {
        b.iter(|| {
            clients
                .iter()
                .map(|fs| fs.iter().any(|f| f.matches(black_box(&change))))
                .filter(|m| *m)
                .count()
        })
    });
    group.bench_function("shared_text", |b| {
        b.iter(|| {
            let texts = ColumnTexts::new();
            let n = clients
                .iter()
                .map(|fs| {
                    fs.iter()
                        .any(|f| f.matches_with(black_box(&change), &texts))
                })
                .filter(|m| *m)
                .count();
            assert_eq!(texts.made(), 1);
            n
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the whole file takes about 10 s.
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = matches, amplification
}
criterion_main!(benches);
