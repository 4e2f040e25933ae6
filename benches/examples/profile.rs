//! One measured operation at a time, for a profiler: run it under `perf record` and read
//! where the time goes without the rest of the comparison in the way.
//!
//! ```sh
//! cargo build --release -p driftless-benches --example profile
//! perf record -e cpu-clock --call-graph dwarf target/release/examples/profile ingest
//! ```
//!
//! Operations (each prints its rate for every round; `PROFILE_ROUNDS` sets the rounds,
//! default 5):
//! - `ingest`: 200,000 events over 10,000 listings, 1,000 per commit, into a new database;
//! - `single`: one event per commit, 2,000 events: baseline A, then driftless through
//!   `dispatch_and_wait` and through `dispatch` and the receipt, synced and not;
//! - `redeliver`: the same stream ingested once, then every applied event delivered again;
//! - `reads`: point reads of `listing_card`, raw redb get-and-decode against the read
//!   repository, and the cost of checking one stored value's checksum;
//! - `rebuild`: a rebuild of `listing_card` from a 200,000-entry journal, with the
//!   process's CPU time per event;
//! - `reconcile`: full refold reconciliation of a 100,000-row `listing_card`, with the
//!   process's CPU time per key;
//! - `producers`: 8 producer threads, 64 receipts in flight each, 200,000 events; prints
//!   the dispatch-to-commit latency percentiles and the writer's CPU time per event;
//! - `rss EVENTS CACHE_MIB`: peak RSS of ingesting EVENTS events, generated in slices of
//!   10,000, with a page cache of CACHE_MIB MiB.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use driftless::Durability;
use driftless_benches::{
    applied_events, driftless_ingest, driftless_point_reads, filled_engine, filled_redb, listing_cards,
    lookup_keys, open_engine, open_engine_with, peak_rss_bytes, process_cpu_nanos, producer_parts,
    quantile_ms, rebuild_listing_card, reconcile_fixture, reconcile_listing_card, redb_point_reads,
    run_producers, this_thread_cpu_nanos, thread_cpu_nanos, workload, Error, RedbBaseline, PRODUCERS,
};
use std::sync::Arc;
use std::time::Instant;

fn rounds() -> usize {
    std::env::var("PROFILE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5)
}

fn arg(n: usize) -> Option<usize> {
    std::env::args().nth(n).and_then(|v| v.parse().ok())
}

/// CPU nanoseconds per event of each thread that ran since `before`, e.g.
/// `driftless-write 812, profile 640`.
fn cpu_per_event(before: &[(String, u64)], events: usize) -> String {
    let mut parts = Vec::new();
    for (name, now) in thread_cpu_nanos() {
        let was = before.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
        let ns = now.saturating_sub(was) as f64 / events as f64;
        if ns >= 1.0 {
            parts.push(format!("{name} {ns:.0}"));
        }
    }
    parts.join(", ")
}

/// The whole process's CPU time since `before` (from [`process_cpu_nanos`]) per unit of
/// work, in µs: threads that have exited since are counted.
fn process_cpu_per(before: Option<u64>, units: u64) -> String {
    match (before, process_cpu_nanos()) {
        (Some(b), Some(a)) => format!("{:.2} µs", a.saturating_sub(b) as f64 / 1e3 / units.max(1) as f64),
        _ => "unknown".into(),
    }
}

fn per_second(n: usize, since: Instant) -> f64 {
    n as f64 / since.elapsed().as_secs_f64()
}

fn ingest() -> Result<(), Error> {
    let stream = workload(200_000, 10_000, 7);
    for _ in 0..rounds() {
        let dir = tempfile::tempdir()?;
        let engine = open_engine(&dir.path().join("d.redb"), 1000)?;
        let owned = stream.clone();
        let before = thread_cpu_nanos();
        let t = Instant::now();
        driftless_ingest(&engine, owned, 1000)?;
        let rate = per_second(stream.len(), t);
        println!("ingest: {rate:.0} events/s; CPU ns per event: {}", cpu_per_event(&before, stream.len()));
        engine.shutdown()?;
    }
    Ok(())
}

fn single() -> Result<(), Error> {
    let stream = workload(2_000, 100, 7);
    // CPU µs per event of this thread, which runs A's commits and those of
    // `dispatch_and_wait` (time waiting for the disk is not CPU time).
    let cpu_us = |before: Option<u64>| match (before, this_thread_cpu_nanos()) {
        (Some(b), Some(a)) => a.saturating_sub(b) as f64 / 1e3 / stream.len() as f64,
        _ => f64::NAN,
    };
    for _ in 0..rounds() {
        let dir = tempfile::tempdir()?;
        let base = RedbBaseline::create(&dir.path().join("a.redb"))?;
        let (t, cpu) = (Instant::now(), this_thread_cpu_nanos());
        base.ingest(&stream, 1)?;
        let a = stream.len() as f64 / t.elapsed().as_secs_f64();
        let a_cpu = cpu_us(cpu);
        drop(base);
        // Microseconds per event: `dispatch_and_wait`, then `dispatch` and the receipt (two
        // thread hand-offs), synced and not.
        let (mut us, mut d_cpu) = (Vec::new(), f64::NAN);
        for (n, durability) in [Durability::Immediate, Durability::Eventual].into_iter().enumerate() {
            for and_wait in [true, false] {
                let engine =
                    open_engine_with(&dir.path().join(format!("d{n}{and_wait}.redb")), 1, durability)?;
                let owned = stream.clone();
                let (t, cpu) = (Instant::now(), this_thread_cpu_nanos());
                for e in owned {
                    if and_wait {
                        engine.dispatch_and_wait(e)?;
                    } else {
                        engine.dispatch(e)?.wait()?;
                    }
                }
                us.push(t.elapsed().as_secs_f64() * 1e6 / stream.len() as f64);
                if us.len() == 1 {
                    d_cpu = cpu_us(cpu);
                }
                engine.shutdown()?;
            }
        }
        let a_us = 1e6 / a;
        println!(
            "one event per commit, µs per event: A {a_us:.0} (CPU {a_cpu:.0}); synced: dispatch_and_wait {:.0} \
             ({:.2}x A; CPU {d_cpu:.0}), dispatch+wait {:.0}; not synced: dispatch_and_wait {:.0}, dispatch+wait {:.0}",
            us[0],
            a_us / us[0],
            us[1],
            us[2],
            us[3]
        );
    }
    Ok(())
}

fn redeliver() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let stream = workload(200_000, 10_000, 7);
    let engine = filled_engine(&dir.path().join("d.redb"), &stream)?;
    let applied = applied_events(&stream);
    for _ in 0..rounds() {
        let owned = applied.clone();
        let before = thread_cpu_nanos();
        let t = Instant::now();
        driftless_ingest(&engine, owned, 1000)?;
        let rate = per_second(applied.len(), t);
        println!(
            "re-delivery: {rate:.0} events/s; CPU ns per event: {}",
            cpu_per_event(&before, applied.len())
        );
    }
    engine.shutdown()?;
    Ok(())
}

fn reads() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let stream = workload(200_000, 10_000, 7);
    let base = filled_redb(&dir.path().join("a.redb"), &stream)?;
    let engine = filled_engine(&dir.path().join("d.redb"), &stream)?;
    let keys = lookup_keys(&stream, 200_000);
    for _ in 0..rounds() {
        let reader = base.reader()?;
        let t = Instant::now();
        redb_point_reads(&reader, &keys);
        let raw = per_second(keys.len(), t);
        let repo = listing_cards(&engine)?;
        let t = Instant::now();
        driftless_point_reads(&repo, &keys)?;
        let ours = per_second(keys.len(), t);
        println!("reads: raw {raw:.0}/s, repository {ours:.0}/s, ratio {:.3}", ours / raw);
    }
    let first = keys.first().ok_or("no keys")?;
    let stored = engine.store().raw_row("listing_card", first.as_bytes())?.ok_or("no row")?;
    let n = 1_000_000u32;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(driftless::codec::verify(std::hint::black_box(&stored))?);
    }
    println!(
        "checksum of one {}-byte row: {:.0} ns",
        stored.len(),
        t.elapsed().as_nanos() as f64 / f64::from(n)
    );
    engine.shutdown()?;
    Ok(())
}

fn rebuild() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let stream = workload(200_000, 10_000, 7);
    let engine = filled_engine(&dir.path().join("d.redb"), &stream)?;
    for _ in 0..rounds() {
        let (t, cpu) = (Instant::now(), process_cpu_nanos());
        rebuild_listing_card(&engine)?;
        let rate = per_second(stream.len(), t);
        // The writer's CPU time, as nothing else runs.
        let per_event = process_cpu_per(cpu, stream.len() as u64);
        println!("rebuild: {rate:.0} events/s, process CPU per event {per_event}");
    }
    engine.shutdown()?;
    Ok(())
}

fn reconcile() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let (engine, harness) = reconcile_fixture(&dir.path().join("d.redb"), 100_000, 400_000)?;
    for _ in 0..rounds() {
        let (t, cpu) = (Instant::now(), process_cpu_nanos());
        let keys = reconcile_listing_card(&harness)?;
        let wall = t.elapsed().as_secs_f64();
        // The workers exit with the run; their CPU time is counted.
        let per_key = process_cpu_per(cpu, keys);
        println!("reconcile: {:.0} keys/s ({keys} keys), process CPU per key {per_key}", keys as f64 / wall);
    }
    drop(harness);
    engine.shutdown()?;
    Ok(())
}

fn producers() -> Result<(), Error> {
    let stream = workload(200_000, 10_000, 7);
    for _ in 0..rounds() {
        let dir = tempfile::tempdir()?;
        let engine = Arc::new(open_engine(&dir.path().join("d.redb"), 1000)?);
        let before = thread_cpu_nanos();
        let t = Instant::now();
        let mut lat = run_producers(&engine, producer_parts(&stream, PRODUCERS), 64);
        let rate = per_second(stream.len(), t);
        let cpu = cpu_per_event(&before, stream.len());
        lat.sort();
        let ms = |q: f64| quantile_ms(&lat, q);
        println!(
            "producers: {rate:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; CPU ns/event: {cpu}",
            ms(0.5),
            ms(0.99),
            ms(1.0)
        );
        Arc::try_unwrap(engine).map_err(|_| "engine still shared")?.shutdown()?;
    }
    Ok(())
}

fn rss(events: usize, cache_mib: usize) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let mut builder =
        driftless::Engine::builder(dir.path().join("d.redb")).options(driftless::EngineOptions {
            cache_bytes: Some(cache_mib << 20),
            max_batch_events: 1000,
            ..Default::default()
        });
    for p in driftless_listings::projectors() {
        builder = builder.projector_arc(Arc::from(p));
    }
    let engine = builder.open()?;
    let t = Instant::now();
    driftless_benches::ingest_in_slices(&engine, events, 10_000)?;
    let rate = per_second(events, t);
    engine.shutdown()?;
    let rss = peak_rss_bytes().unwrap_or(0) as f64 / f64::from(1u32 << 20);
    println!("rss: {events} events, {cache_mib} MiB cache: peak {rss:.1} MiB, {rate:.0} events/s");
    Ok(())
}

fn main() -> Result<(), Error> {
    match std::env::args().nth(1).as_deref() {
        Some("ingest") => ingest(),
        Some("single") => single(),
        Some("redeliver") => redeliver(),
        Some("reads") => reads(),
        Some("rebuild") => rebuild(),
        Some("reconcile") => reconcile(),
        Some("producers") => producers(),
        Some("rss") => {
            rss(arg(2).unwrap_or(2_000_000), arg(3).unwrap_or(driftless::DEFAULT_CACHE_BYTES >> 20))
        }
        _ => {
            Err("usage: profile ingest|single|redeliver|reads|rebuild|reconcile|producers|rss [EVENTS [CACHE_MIB]]"
                .into())
        }
    }
}
