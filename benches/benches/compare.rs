//! Prints driftless side by side with the hand-written baselines, all measured in one run.
//!
//! ```text
//! cargo bench -p driftless-benches --bench compare
//! ```
//!
//! Environment: `DRIFTLESS_BENCH_EVENTS` (default 200,000 events over events/20 listings),
//! `DRIFTLESS_BENCH_RUNS` (default 3; every figure is the median of the runs),
//! `DRIFTLESS_BENCH_RSS_EVENTS` (default 2,000,000; 0 skips the memory run).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use driftless_benches::{
    applied_events, driftless_ingest, driftless_point_reads, ingest_in_slices, listing_cards, lookup_keys,
    open_engine, peak_rss_bytes, producer_parts, quantile_ms, rebuild_listing_card, reconcile_fixture,
    reconcile_listing_card, redb_point_reads, run_producers, workload, Error, RedbBaseline, SqliteBaseline,
    FILL_BATCH, PRODUCERS,
};
use driftless_listings::ListingEvent;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn timed(n: usize, f: impl FnOnce() -> Result<(), Error>) -> Result<f64, Error> {
    let t = Instant::now();
    f()?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

struct Row {
    case: String,
    a: Option<f64>,
    b: Option<f64>,
    d: f64,
    unit: &'static str,
}

fn print_rows(rows: &[Row]) {
    println!(
        "\n{:<46} {:>12} {:>12} {:>12} {:>7} {:>7}  unit",
        "case", "A redb", "B sqlite", "driftless", "vs A", "vs B"
    );
    for r in rows {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let ratio = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}x", r.d / v));
        println!(
            "{:<46} {:>12} {:>12} {:>12.0} {:>7} {:>7}  {}",
            r.case,
            f(r.a),
            f(r.b),
            r.d,
            ratio(r.a),
            ratio(r.b),
            r.unit
        );
    }
}

/// Ingests `stream` into new databases, `batch` events per commit. With `keep`, the last
/// run's databases are returned, filled, for the figures that need a filled database.
fn ingest_row(
    stream: &[ListingEvent],
    batch: usize,
    runs: usize,
    keep: bool,
) -> Result<(Row, Option<Filled>), Error> {
    let n = stream.len();
    let (mut a, mut b, mut d) = (Vec::new(), Vec::new(), Vec::new());
    let mut kept = None;
    for run in 0..runs {
        let dir = tempfile::tempdir()?;
        let base = RedbBaseline::create(&dir.path().join("a.redb"))?;
        a.push(timed(n, || base.ingest(stream, batch))?);
        let mut sq = SqliteBaseline::create(&dir.path().join("b.sqlite"))?;
        b.push(timed(n, || sq.ingest(stream, batch))?);
        let engine = open_engine(&dir.path().join("d.redb"), batch)?;
        let owned = stream.to_vec();
        d.push(timed(n, || driftless_ingest(&engine, owned, batch))?);
        if keep && run + 1 == runs {
            kept = Some(Filled::new(dir, base, sq, engine)?);
        } else {
            drop((base, sq));
            engine.shutdown()?;
        }
    }
    let row = Row {
        case: format!("ingest, {batch} events/commit ({n} events)"),
        a: Some(median(a)),
        b: Some(median(b)),
        d: median(d),
        unit: "events/s",
    };
    Ok((row, kept))
}

/// The three databases filled with the whole stream at 1,000 events per commit (the last
/// run of that ingest row), shared by the re-delivery, read, disk and rebuild figures.
struct Filled {
    dir: tempfile::TempDir,
    base: RedbBaseline,
    sq: SqliteBaseline,
    engine: driftless::Engine<ListingEvent>,
}

impl Filled {
    fn new(
        dir: tempfile::TempDir,
        base: RedbBaseline,
        sq: SqliteBaseline,
        engine: driftless::Engine<ListingEvent>,
    ) -> Result<Self, Error> {
        // As an idle moment would: the whole journal filed by aggregate, for the disk figures.
        engine.store().file_aggregates()?;
        Ok(Self { dir, base, sq, engine })
    }
}

/// Re-delivers every event that was applied (see [`applied_events`]).
fn redelivery_row(filled: &mut Filled, stream: &[ListingEvent], runs: usize) -> Result<Row, Error> {
    let applied = applied_events(stream);
    let again = applied.as_slice();
    let n = again.len();
    let (mut a, mut b, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(timed(n, || filled.base.ingest(again, FILL_BATCH))?);
        b.push(timed(n, || filled.sq.ingest(again, FILL_BATCH))?);
        let owned = again.to_vec();
        d.push(timed(n, || driftless_ingest(&filled.engine, owned, FILL_BATCH))?);
    }
    Ok(Row {
        case: format!("re-delivery of every applied event ({n} events)"),
        a: Some(median(a)),
        b: Some(median(b)),
        d: median(d),
        unit: "events/s",
    })
}

fn reads_row(filled: &Filled, stream: &[ListingEvent], runs: usize) -> Result<Row, Error> {
    let lookups = lookup_keys(stream, 200_000);
    let (mut a, mut d) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let reader = filled.base.reader()?;
        a.push(timed(lookups.len(), || {
            redb_point_reads(&reader, &lookups);
            Ok(())
        })?);
        let repo = listing_cards(&filled.engine)?;
        d.push(timed(lookups.len(), || driftless_point_reads(&repo, &lookups))?);
    }
    Ok(Row {
        case: format!("point reads of listing_card ({} reads)", lookups.len()),
        a: Some(median(a)),
        b: None,
        d: median(d),
        unit: "reads/s",
    })
}

/// 8 producer threads, each keeping up to `window` receipts in flight and waiting for every
/// one of them, each run on a new database. Returns the medians over `runs` runs of events/s
/// and of each run's p50 and p99 dispatch-to-commit latency, in ms.
fn concurrent(stream: &[ListingEvent], window: usize, runs: usize) -> Result<(f64, f64, f64), Error> {
    let (mut rates, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let engine = Arc::new(open_engine(&dir.path().join("d.redb"), FILL_BATCH)?);
        let parts = producer_parts(stream, PRODUCERS);
        let t = Instant::now();
        let mut lat: Vec<Duration> = run_producers(&engine, parts, window);
        rates.push(stream.len() as f64 / t.elapsed().as_secs_f64());
        lat.sort();
        p50s.push(quantile_ms(&lat, 0.5));
        p99s.push(quantile_ms(&lat, 0.99));
        Arc::try_unwrap(engine).map_err(|_| "engine still shared")?.shutdown()?;
    }
    Ok((median(rates), median(p50s), median(p99s)))
}

fn rebuild_rate(engine: &driftless::Engine<ListingEvent>, events: usize, runs: usize) -> Result<f64, Error> {
    let mut v = Vec::new();
    for _ in 0..runs {
        v.push(timed(events, || rebuild_listing_card(engine))?);
    }
    Ok(median(v))
}

/// Full reconciliation of `listing_card` with the refold reconciler: keys checked per
/// second, the median of `runs` runs over one database of `n_events` events over
/// `listings` listings.
fn reconcile_rate(listings: usize, n_events: usize, runs: usize) -> Result<(f64, u64), Error> {
    let dir = tempfile::tempdir()?;
    let (engine, harness) = reconcile_fixture(&dir.path().join("d.redb"), listings, n_events)?;
    let (mut rates, mut keys) = (Vec::new(), 0);
    for _ in 0..runs {
        let t = Instant::now();
        keys = reconcile_listing_card(&harness)?;
        rates.push(keys as f64 / t.elapsed().as_secs_f64());
    }
    drop(harness);
    engine.shutdown()?;
    Ok((median(rates), keys))
}

/// The disk figures of the freshly filled databases, as lines to print.
fn disk_figures(filled: &Filled, events: usize) -> Result<Vec<String>, Error> {
    let dir = filled.dir.path();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let figures = filled.engine.store().table_figures()?;
    let n = events as f64;
    let mut out = vec![
        format!("\ndisk bytes per applied event ({events} events)"),
        format!(
            "  whole file: A redb {:.0}, B sqlite {:.0} (+wal), driftless {:.0}",
            size(&dir.join("a.redb")) as f64 / n,
            (size(&dir.join("b.sqlite")) + size(&dir.join("b.sqlite-wal"))) as f64 / n,
            size(&dir.join("d.redb")) as f64 / n
        ),
        format!("  {:<40} {:>10} {:>14} {:>14}", "driftless table", "rows", "stored B/event", "meta B/event"),
    ];
    for f in figures {
        out.push(format!(
            "  {:<40} {:>10} {:>14.1} {:>14.1}",
            f.table,
            f.entries,
            f.stored_bytes as f64 / n,
            f.metadata_bytes as f64 / n
        ));
    }
    Ok(out)
}

fn rss_child(events: usize) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let engine = open_engine(&dir.path().join("d.redb"), 1000)?;
    // Slices of 10,000 events, so that what is measured is the engine and not the bench's
    // own copy of the stream (slices of 100,000 events add about 70 MiB).
    ingest_in_slices(&engine, events, 10_000)?;
    engine.shutdown()?;
    println!("RSS {}", peak_rss_bytes().unwrap_or(0));
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        let n = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
        return rss_child(n);
    }
    let events = env("DRIFTLESS_BENCH_EVENTS", 200_000);
    let runs = env("DRIFTLESS_BENCH_RUNS", 3).max(1);
    let rss_events = env("DRIFTLESS_BENCH_RSS_EVENTS", 2_000_000);
    let listings = (events / 20).max(100);
    let started = Instant::now();
    let stream = workload(events, listings, 7);
    println!(
        "workload: {events} events over {listings} listings; each figure is the median of {runs} runs, all in this one process"
    );
    let mut rows = Vec::new();
    // One event per commit: 2,000 commits take under a second per system, so one stall of
    // the disk moves a run; three times the runs make its median steadier.
    rows.push(ingest_row(&stream[..2_000.min(events)], 1, runs * 3, false)?.0);
    let mut filled = None;
    for batch in [100usize, 1_000, 10_000] {
        let (row, kept) = ingest_row(&stream, batch, runs, batch == FILL_BATCH)?;
        rows.push(row);
        filled = filled.or(kept);
    }
    let mut filled = filled.ok_or("no ingest row kept its databases")?;
    let disk = disk_figures(&filled, stream.len())?;
    rows.push(redelivery_row(&mut filled, &stream, runs)?);
    rows.push(reads_row(&filled, &stream, runs)?);
    print_rows(&rows);

    println!("\ndriftless only");
    // The rebuild uses the databases filled above; they are dropped before the producer
    // runs, which make databases of their own.
    println!(
        "  rebuild of listing_card from the journal: {:>10.0} events/s",
        rebuild_rate(&filled.engine, stream.len(), runs)?
    );
    let Filled { dir, base, sq, engine } = filled;
    engine.shutdown()?;
    drop((base, sq, dir));
    for window in [1usize, 64] {
        let (rate, p50, p99) =
            concurrent(&stream[..stream.len().min(if window == 1 { 20_000 } else { events })], window, runs)?;
        println!(
            "  8 producers, {window:>3} receipts in flight each: {rate:>10.0} events/s, dispatch-to-commit p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
    }
    let reconcile_listings = env("DRIFTLESS_BENCH_RECONCILE_LISTINGS", 100_000);
    let (rate, keys) = reconcile_rate(reconcile_listings, reconcile_listings * 4, runs)?;
    println!("  full refold reconciliation of listing_card: {rate:>10.0} keys/s ({keys} keys)");
    for line in disk {
        println!("{line}");
    }
    if rss_events > 0 {
        let exe = std::env::current_exe()?;
        let out = std::process::Command::new(exe).args(["--rss-child", &rss_events.to_string()]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let rss: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("RSS "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        println!(
            "\npeak RSS while ingesting {rss_events} events (1,000 per commit, separate process): {:.1} MiB",
            rss as f64 / (1024.0 * 1024.0)
        );
    }
    println!("\ntotal bench time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
