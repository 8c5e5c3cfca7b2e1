//! pgoutput decoding of a `public.monitoring_events` row: the wire parse alone
//! (`pgoutput::parse`), and the whole decoder step to a [`Change`] (parse, relation cache,
//! text → JSON of every column, cursor).
//!
//! `cargo bench --bench decode`; figures in BENCHMARKS.md ("Micro-benchmarks").

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
// walcast paths in one place, so a module move is fixed here (and in `fixture`).
use walcast::decode::pgoutput;

mod fixture;

/// Parsing the message bytes into a borrowed message (no JSON, no relation lookup).
fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("pgoutput_parse");
    for (name, bytes) in [
        ("insert", fixture::insert_bytes()),
        ("update", fixture::update_bytes()),
    ] {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| pgoutput::parse(black_box(&bytes)).expect("parses"))
        });
    }
    group.finish();
}

/// The decoder: message bytes → `Change` through the relation cache (what the reader does for
/// every row change).
fn decode_to_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_to_change");
    for (name, bytes) in [
        ("insert", fixture::insert_bytes()),
        ("update", fixture::update_bytes()),
    ] {
        // One long transaction: each decode takes the next cursor index.
        let mut decoder = fixture::decoder();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| decoder.decode(black_box(&bytes)).expect("decodes"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the whole file takes about 15 s.
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = parse, decode_to_change
}
criterion_main!(benches);
