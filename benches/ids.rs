//! Micro-benchmark of the id walcast gives an event sent without one: `uuid::Uuid::now_v7()`
//! (process-wide ordered through uuid's shared v7 context).
//!
//! The figure depends on uuid's random source: `fast-rng` (a thread-local generator seeded from
//! the kernel) or, without it, one `getrandom` call per id. BENCHMARKS.md ("Micro-benchmarks:
//! ids and metrics") has both, measured by running this bench with and without the feature.
//!
//! Run: `cargo bench --bench ids`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use uuid::Uuid;

/// One id at a time, one thread.
fn now_v7(c: &mut Criterion) {
    let mut group = c.benchmark_group("ids");
    group.throughput(Throughput::Elements(1));
    group.bench_function("now_v7", |b| b.iter(|| black_box(Uuid::now_v7())));
    group.finish();
}

/// Two threads drawing ids at once (the machine has two cores): the shared v7 context is one
/// lock, as the concurrent ingest requests of one process would see it.
fn now_v7_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("ids");
    group.throughput(Throughput::Elements(2));
    group.bench_function("now_v7_two_threads", |b| {
        b.iter_custom(|iters| {
            let started = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters {
                            black_box(Uuid::now_v7());
                        }
                    });
                }
            });
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group! {
    name = ids;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = now_v7, now_v7_two_threads
}
criterion_main!(ids);
