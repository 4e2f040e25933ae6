//! What the integrity check at open costs: engine opens of sample-domain databases of
//! several sizes, without and with the check, with the file in the operating system's page
//! cache (warm) and dropped from it first (cold).
//!
//! ```text
//! cargo run --release -p driftless-benches --example open_check
//! ```
//!
//! Environment: `DRIFTLESS_OPEN_CHECK_EVENTS` (default `50000,200000,1000000`: the sizes, in
//! events over events/20 listings), `DRIFTLESS_OPEN_CHECK_DIR` (where the databases are
//! made; default the current directory, which should be on the disk being measured). Each
//! figure is the median of 5 opens. Dropping a file from the cache uses GNU `dd`
//! (`iflag=nocache`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use driftless_benches::{driftless_ingest, workload, Error};
use driftless_listings::ListingEvent;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 5;

fn open(path: &Path, check: bool) -> Result<driftless::Engine<ListingEvent>, Error> {
    let mut b = driftless::Engine::builder(path).check_integrity_on_open(check);
    for p in driftless_listings::projectors() {
        b = b.projector_arc(std::sync::Arc::from(p));
    }
    Ok(b.open()?)
}

/// Advises the kernel to drop the file's cached pages (`count=0` reads nothing).
fn drop_from_cache(path: &Path) -> Result<(), Error> {
    let status = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()?;
    if !status.success() {
        return Err(format!("dd could not drop {} from the cache", path.display()).into());
    }
    Ok(())
}

/// The median time of opening the engine, in milliseconds.
fn median_open_ms(path: &Path, check: bool, cold: bool) -> Result<f64, Error> {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        if cold {
            drop_from_cache(path)?;
        } else {
            std::fs::read(path)?;
        }
        let started = Instant::now();
        let engine = open(path, check)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        engine.shutdown()?;
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

fn main() -> Result<(), Error> {
    let sizes: Vec<usize> = std::env::var("DRIFTLESS_OPEN_CHECK_EVENTS")
        .unwrap_or_else(|_| "50000,200000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir_in(std::env::var("DRIFTLESS_OPEN_CHECK_DIR").unwrap_or_else(|_| ".".into()))?;
    println!(
        "{:>9} {:>8} {:>6} {:>12} {:>12} {:>10} {:>8}",
        "events", "MiB", "cache", "unchecked", "checked", "check", "ms/MiB"
    );
    for events in sizes {
        let path = dir.path().join(format!("{events}.redb"));
        {
            let engine = open(&path, true)?;
            let stream = workload(events, (events / 20).max(1), 7);
            for chunk in stream.chunks(10_000) {
                driftless_ingest(&engine, chunk.to_vec(), 1000)?;
            }
            engine.shutdown()?;
        }
        let mib = std::fs::metadata(&path)?.len() as f64 / f64::from(1 << 20);
        for cold in [false, true] {
            let unchecked = median_open_ms(&path, false, cold)?;
            let checked = median_open_ms(&path, true, cold)?;
            let check = checked - unchecked;
            println!(
                "{events:>9} {mib:>8.1} {:>6} {unchecked:>10.1}ms {checked:>10.1}ms {check:>8.1}ms {:>8.2}",
                if cold { "cold" } else { "warm" },
                check / mib
            );
        }
    }
    Ok(())
}
