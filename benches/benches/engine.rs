//! Criterion benchmarks of the engine's hot paths.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use driftless_benches::{driftless_ingest, open_engine, workload};

fn ingest(c: &mut Criterion) {
    let stream = workload(20_000, 1_000, 7);
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10);
    g.throughput(Throughput::Elements(stream.len() as u64));
    g.bench_function("driftless_1000_per_commit", |b| {
        b.iter_with_setup(
            || {
                let dir = tempfile::tempdir().unwrap();
                let engine = open_engine(&dir.path().join("d.redb"), 1_000).unwrap();
                (dir, engine)
            },
            |(dir, engine)| {
                driftless_ingest(&engine, &stream, 1_000).unwrap();
                engine.shutdown().unwrap();
                drop(dir);
            },
        );
    });
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
