//! Micro-benchmarks of the metrics registry: what a hot path pays per count, and what one
//! `GET /metrics` pays to render.
//!
//! Run: `cargo bench --bench metrics`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use walcast::metrics::{Metrics, PoolStats};

/// A plain counter (`deliveries`), a labeled counter with two labels (`http_requests` through
/// `Metrics::http_request`), one with one label (`events_rejected`), and a histogram.
fn hot_path(c: &mut Criterion) {
    let m = Metrics::default();
    let mut group = c.benchmark_group("metrics");
    group.bench_function("counter_inc", |b| b.iter(|| black_box(&m.deliveries).inc()));
    group.bench_function("labeled_counter_inc", |b| {
        b.iter(|| black_box(&m).http_request(black_box("/v1/events"), black_box(201)))
    });
    group.bench_function("labeled_counter_inc_one_label", |b| {
        b.iter(|| {
            black_box(&m)
                .events_rejected
                .add(black_box("invalid_event"), 1)
        })
    });
    group.bench_function("histogram_observe", |b| {
        b.iter(|| black_box(&m).ingest_flush_seconds.observe(black_box(0.003)))
    });
    group.finish();
}

/// A full render with every family populated as a busy server's would be: a few routes and
/// statuses, a few error codes, both protocols, observations in every histogram.
fn render(c: &mut Criterion) {
    let m = Metrics::default();
    for (route, status) in [
        ("/v1/events", 201),
        ("/v1/events", 202),
        ("/v1/events", 400),
        ("/v1/events", 401),
        ("/v1/dlq", 200),
        ("/v1/dlq/{id}", 404),
    ] {
        m.http_request(route, status);
    }
    for code in ["invalid_event", "unauthorized", "payload_too_large"] {
        m.events_rejected.add(code, 1);
    }
    m.decode_errors.add("truncated", 1);
    m.consistency_mismatches.add("json_field", 1);
    m.clients.add("ws", 10);
    m.clients.add("realtime", 10);
    for v in [0.001, 0.01, 0.1, 1.0] {
        m.ingest_flush_seconds.observe(v);
        m.realtime_rls_call_seconds.observe(v);
        m.ingest_batch_events.observe(v * 1000.0);
    }
    m.events_accepted.add(1_000_000);
    let pool = PoolStats {
        size: 8,
        available: 6,
        waiting: 0,
        max_size: 16,
    };
    let mut group = c.benchmark_group("metrics");
    group.bench_function("render", |b| b.iter(|| black_box(m.render(pool))));
    group.finish();
}

criterion_group! {
    name = metrics;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = hot_path, render
}
criterion_main!(metrics);
