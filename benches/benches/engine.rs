//! Criterion benchmarks of every timing figure of the comparison table
//! (`benches/benches/compare.rs`), with the same shared operations from `driftless_benches`:
//!
//! - `ingest_{1,100,1000,10000}_per_commit/{a_redb,b_sqlite,driftless}`: ingest into a new
//!   database (200 events at 1 per commit, where every commit syncs; 20,000 otherwise);
//! - `redelivery/{a_redb,b_sqlite,driftless}`: every applied event of 20,000 delivered again;
//! - `point_reads_listing_card/{a_redb_raw,driftless}`: 20,000 reads of `listing_card`;
//! - `concurrent_producers/{8x1_in_flight,8x64_in_flight}`: 8 threads, each waiting for every
//!   receipt (2,000 and 20,000 events);
//! - `rebuild_listing_card/driftless`: rebuild from a journal of 20,000 events;
//! - `reconcile_full_listing_card/driftless`: full refold reconciliation of 10,000 rows.
//!
//! Throughput is in elements per second: events, reads or keys checked. Creating and filling
//! databases is outside the timed part. The sizes are smaller than the comparison binary's so
//! that the whole run stays short; peak RSS and disk bytes per event are not timings and are
//! measured by the comparison binary only.
//!
//! ```text
//! cargo bench -p driftless-benches --bench engine
//! ```
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use criterion::{
    criterion_group, criterion_main, BatchSize, Bencher, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use driftless_benches::{
    applied_events, driftless_ingest, driftless_point_reads, filled_engine, filled_redb, filled_sqlite,
    listing_cards, lookup_keys, open_engine, producer_parts, rebuild_listing_card, reconcile_fixture,
    reconcile_listing_card, redb_point_reads, run_producers, workload, RedbBaseline, SqliteBaseline,
    FILL_BATCH, PRODUCERS,
};
use driftless_listings::ListingEvent;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// Events of the ingest streams (and of the databases the other figures start from).
const EVENTS: usize = 20_000;
/// Events of the one-event-per-commit stream: every commit syncs.
const EVENTS_ONE_PER_COMMIT: usize = 200;
/// Listings of the streams: one for every 20 events, as in the comparison.
const LISTINGS: usize = EVENTS / 20;
/// Point reads per iteration.
const READS: usize = 20_000;
/// Rows of `listing_card` checked by the reconciliation (4 events per listing).
const RECONCILE_LISTINGS: usize = 10_000;

type Measurement = criterion::measurement::WallTime;

/// A group of 10 samples after a 1-second warm-up and `seconds` of measurement, with flat
/// sampling (the same number of iterations in every sample): an iteration that takes
/// longer than a tenth of the measurement time then runs 10 times, not 55.
fn group<'c>(
    c: &'c mut Criterion,
    name: &str,
    elements: usize,
    seconds: u64,
) -> BenchmarkGroup<'c, Measurement> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(seconds))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(elements as u64));
    g
}

fn tempdir() -> TempDir {
    tempfile::tempdir().unwrap()
}

/// Times `run` on what `open` makes in a new temporary directory, once per iteration.
/// Making it, and dropping it afterwards (closing the database), are not timed.
fn on_new_database<S>(b: &mut Bencher<'_>, open: impl Fn(&Path) -> S, mut run: impl FnMut(&mut S)) {
    b.iter_batched(
        || {
            let dir = tempdir();
            (open(dir.path()), dir)
        },
        |(mut state, dir)| {
            run(&mut state);
            (state, dir)
        },
        BatchSize::PerIteration,
    );
}

/// Ingest into a new database, `batch` events per commit, for A, B and driftless.
fn ingest_group(c: &mut Criterion, stream: &[ListingEvent], batch: usize, seconds: u64) {
    let mut g = group(c, &format!("ingest_{batch}_per_commit"), stream.len(), seconds);
    g.bench_function("a_redb", |b| {
        on_new_database(
            b,
            |d| RedbBaseline::create(&d.join("a.redb")).unwrap(),
            |base| {
                base.ingest(stream, batch).unwrap();
            },
        );
    });
    g.bench_function("b_sqlite", |b| {
        on_new_database(
            b,
            |d| SqliteBaseline::create(&d.join("b.sqlite")).unwrap(),
            |sq| {
                sq.ingest(stream, batch).unwrap();
            },
        );
    });
    g.bench_function("driftless", |b| {
        on_new_database(
            b,
            |d| (open_engine(&d.join("d.redb"), batch).unwrap(), stream.to_vec()),
            |(engine, events)| {
                driftless_ingest(engine, std::mem::take(events), batch).unwrap();
            },
        );
    });
    g.finish();
}

fn ingest(c: &mut Criterion) {
    let stream = workload(EVENTS, LISTINGS, 7);
    ingest_group(c, &stream[..EVENTS_ONE_PER_COMMIT], 1, 5);
    for batch in [100, 1_000, 10_000] {
        ingest_group(c, &stream, batch, 8);
    }
}

/// Every applied event delivered again to databases that hold them all. Nothing changes,
/// so the databases are filled once.
fn redelivery(c: &mut Criterion) {
    let stream = workload(EVENTS, LISTINGS, 7);
    let again = applied_events(&stream);
    let dir = tempdir();
    let base = filled_redb(&dir.path().join("a.redb"), &stream).unwrap();
    let mut sq = filled_sqlite(&dir.path().join("b.sqlite"), &stream).unwrap();
    let engine = filled_engine(&dir.path().join("d.redb"), &stream).unwrap();
    let mut g = group(c, "redelivery", again.len(), 5);
    g.bench_function("a_redb", |b| b.iter(|| base.ingest(&again, FILL_BATCH).unwrap()));
    g.bench_function("b_sqlite", |b| b.iter(|| sq.ingest(&again, FILL_BATCH).unwrap()));
    g.bench_function("driftless", |b| {
        b.iter_batched(
            || again.clone(),
            |events| driftless_ingest(&engine, events, FILL_BATCH).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    engine.shutdown().unwrap();
}

/// Point reads of `listing_card`: raw redb get and decode against the read repository.
fn point_reads(c: &mut Criterion) {
    let stream = workload(EVENTS, LISTINGS, 7);
    let keys = lookup_keys(&stream, READS);
    let dir = tempdir();
    let base = filled_redb(&dir.path().join("a.redb"), &stream).unwrap();
    let engine = filled_engine(&dir.path().join("d.redb"), &stream).unwrap();
    let mut g = group(c, "point_reads_listing_card", keys.len(), 5);
    let reader = base.reader().unwrap();
    g.bench_function("a_redb_raw", |b| b.iter(|| redb_point_reads(&reader, &keys)));
    let repo = listing_cards(&engine).unwrap();
    g.bench_function("driftless", |b| b.iter(|| driftless_point_reads(&repo, &keys).unwrap()));
    g.finish();
    drop(repo);
    engine.shutdown().unwrap();
}

/// 8 producer threads into a new database, each waiting for every receipt.
fn concurrent_producers(c: &mut Criterion) {
    let stream = workload(EVENTS, LISTINGS, 7);
    let mut g = group(c, "concurrent_producers", EVENTS, 8);
    for (window, events) in [(1usize, 2_000usize), (64, EVENTS)] {
        let part = &stream[..events];
        g.throughput(Throughput::Elements(events as u64));
        g.bench_function(format!("{PRODUCERS}x{window}_in_flight"), |b| {
            on_new_database(
                b,
                |d| {
                    (
                        Arc::new(open_engine(&d.join("d.redb"), FILL_BATCH).unwrap()),
                        producer_parts(part, PRODUCERS),
                    )
                },
                |(engine, parts)| {
                    run_producers(engine, std::mem::take(parts), window);
                },
            );
        });
    }
    g.finish();
}

/// Rebuild of `listing_card` from the journal; a rebuild leaves the same rows, so the
/// database is filled once.
fn rebuild(c: &mut Criterion) {
    let stream = workload(EVENTS, LISTINGS, 7);
    let dir = tempdir();
    let engine = filled_engine(&dir.path().join("d.redb"), &stream).unwrap();
    let mut g = group(c, "rebuild_listing_card", stream.len(), 5);
    g.bench_function("driftless", |b| b.iter(|| rebuild_listing_card(&engine).unwrap()));
    g.finish();
    engine.shutdown().unwrap();
}

/// Full refold reconciliation of `listing_card`, in keys checked per second; a run changes
/// no rows, so the database is filled once.
fn reconcile(c: &mut Criterion) {
    let dir = tempdir();
    let (engine, harness) =
        reconcile_fixture(&dir.path().join("d.redb"), RECONCILE_LISTINGS, RECONCILE_LISTINGS * 4).unwrap();
    let keys = reconcile_listing_card(&harness).unwrap();
    let mut g = group(c, "reconcile_full_listing_card", usize::try_from(keys).unwrap(), 5);
    g.bench_function("driftless", |b| b.iter(|| reconcile_listing_card(&harness).unwrap()));
    g.finish();
    drop(harness);
    engine.shutdown().unwrap();
}

criterion_group!(benches, ingest, redelivery, point_reads, concurrent_producers, rebuild, reconcile);
criterion_main!(benches);
