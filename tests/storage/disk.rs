//! What a projected event costs on disk. Run with `--nocapture` to see the figures.

use super::support::{fast_options, prepare_all, projectors, Faults, Op, TestResult};
use driftless_domain::Timestamp;
use driftless_domain::Upcasters;
use driftless_storage::StoreWriter;

#[test]
fn disk_cost_per_event_is_reported_and_sane() -> TestResult {
    const EVENTS: u64 = 5_000;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cost.redb");
    let store = StoreWriter::open(&path, fast_options())?;
    let registry = store.register(projectors(&Faults::default())?, &[], Upcasters::new())?;
    let ops: Vec<Op> = (0..EVENTS)
        .map(|i| Op::new(&format!("evt-{i:06}"), &format!("key-{:03}", i % 100), 1_700_000_000_000 + i, 1))
        .collect();
    for (n, chunk) in ops.chunks(500).enumerate() {
        store.project(&registry, &prepare_all(chunk)?, Timestamp(1_800_000_000_000 + n as u64))?;
    }
    drop(registry);
    // The journal answers per aggregate, whether or not its per-aggregate index is filed yet.
    let entries = store.journal_for_aggregate("key-007")?;
    ensure_eq!(entries.len(), (EVENTS / 100) as usize, "journal entries of key-007");
    ensure!(
        entries.windows(2).all(|w| w.first().map(|e| e.position) < w.get(1).map(|e| e.position)),
        "the entries of key-007 are not in journal order"
    );
    ensure!(entries.iter().all(|e| e.aggregate_id == "key-007"), "an entry of another aggregate");
    ensure_eq!(store.journal_aggregates(1_000)?.len(), 100, "aggregates in the journal");
    let figures = store.table_figures()?;
    println!("disk cost of {EVENTS} events:");
    println!(
        "{:<36} {:>8} {:>12} {:>12} {:>12} {:>10}",
        "table", "entries", "stored", "metadata", "fragmented", "B/event"
    );
    for f in &figures {
        println!(
            "{:<36} {:>8} {:>12} {:>12} {:>12} {:>10.1}",
            f.table,
            f.entries,
            f.stored_bytes,
            f.metadata_bytes,
            f.fragmented_bytes,
            f.stored_bytes as f64 / EVENTS as f64
        );
    }
    drop(store);
    let file = std::fs::metadata(&path)?.len();
    println!("file: {file} bytes, {:.1} bytes per event", file as f64 / EVENTS as f64);

    let find = |name: &str| figures.iter().find(|f| f.table == name).ok_or(format!("no figures for {name}"));
    let index = find("driftless.event_index")?;
    ensure_eq!(index.entries, EVENTS, "event_index rows");
    ensure!(
        index.stored_bytes / EVENTS < 200,
        "event_index stores {} bytes per event",
        index.stored_bytes / EVENTS
    );
    let journal = find("driftless.journal")?;
    ensure_eq!(journal.entries, EVENTS, "journal rows");
    ensure!(
        journal.stored_bytes / EVENTS < 400,
        "the journal stores {} bytes per event",
        journal.stored_bytes / EVENTS
    );
    ensure_eq!(find("rm.sums")?.entries, 100, "sums rows");
    ensure_eq!(find("rm.counts")?.entries, 100, "counts rows");
    ensure_eq!(find("driftless.dead_letters")?.entries, 0, "dead letters");
    ensure!(file / EVENTS < 4_096, "the file takes {} bytes per event", file / EVENTS);
    Ok(())
}
