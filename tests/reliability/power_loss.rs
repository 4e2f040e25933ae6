//! Power loss, twice, at every operation.
//!
//! Injection: the engine runs on a [`SimDisk`] (see [`super::disk`]), which keeps a live
//! and a durable image of the file. The scenario opens an engine with immediate durability
//! on an empty disk (creating the database) and dispatches a small stream — creations,
//! price changes, publications, inquiries, re-deliveries, conflicting twins and a rejected
//! event — in several batches, waiting for each receipt, then shuts down. A reference run
//! counts its mutating operations (`write`, `set_len`, `sync_data`); then, for EVERY
//! operation N of it and each damage seed, the power goes at N, and the disk a reboot finds
//! (durable image plus each unsynced write kept, dropped or torn at a sector boundary) is:
//!
//! 1. reopened and checked directly, and
//! 2. for a few operations M of the recovery (spread from the first to the last of a clean
//!    recovery of that image), recovered by an engine (redb's repair, registration,
//!    catch-up, shutdown) that loses power AGAIN at M, and the disk the second reboot finds
//!    is reopened and checked.
//!
//! The check: the open succeeds (a database whose creation never completed may instead
//! give a clear `Corrupted`/`NotDriftless` error), redb's integrity check passes, every
//! batch whose receipt resolved before the power went is there, the read models are the
//! fold of exactly the first k batches (k = acknowledged batches, or one more when the power
//! went during a commit: never a partial batch), offsets and dead letters match, and
//! re-delivering every batch leaves the fold of the whole stream, each event applied once.
//!
//! `DRIFTLESS_POWERLOSS_SEEDS` (default 3: drop all, keep all, mixed with tears) and
//! `DRIFTLESS_POWERLOSS_SECOND_CRASHES` (default 3) scale the sweep.

use super::disk::{Fault, SimDisk};
use super::{env_count, no_panic, open_on, reopen_and_check, small_batches, Found, Life, TestResult};
use driftless_listings::ListingEvent;
use std::collections::BTreeMap;
use std::time::Instant;

/// The first life: open, dispatch every batch (waiting for each receipt), shut down; it
/// stops at the first failure.
fn first_life(disk: &SimDisk, batches: &[Vec<ListingEvent>]) -> Life {
    let mut life = Life::default();
    let Ok(engine) = open_on(disk) else { return life };
    life.opened = true;
    for batch in batches {
        let Ok(receipt) = engine.dispatch_batch(batch.iter().cloned()) else { break };
        life.dispatched += 1;
        match receipt.wait() {
            Ok(_) => life.acknowledged += 1,
            Err(_) => break,
        }
    }
    let _ = engine.shutdown();
    life
}

/// A restart after the first power loss: open (redb repairs the file, the projectors are
/// registered, handlers catch up), then shut down.
fn recovery(disk: &SimDisk) {
    if let Ok(engine) = open_on(disk) {
        let _ = engine.shutdown();
    }
}

/// `count` operations spread over `1..=last`.
fn spread(last: u64, count: usize) -> Vec<u64> {
    let count = count as u64;
    if count == 0 || last == 0 {
        return Vec::new();
    }
    if count == 1 {
        return vec![last.div_ceil(2)];
    }
    let mut out: Vec<u64> = (0..count).map(|i| 1 + i * (last - 1) / (count - 1)).collect();
    out.dedup();
    out
}

/// The damage seed of the second power loss: the first's mode, or a new random mix.
fn second_seed(seed: u64, m: u64) -> u64 {
    if seed < 2 {
        seed
    } else {
        seed.wrapping_mul(7919).wrapping_add(m) | 2
    }
}

#[test]
fn power_loss_at_every_operation_and_again_during_recovery_loses_no_acknowledged_batch() -> TestResult {
    let seeds = env_count("DRIFTLESS_POWERLOSS_SEEDS", 3)? as u64;
    let second_crashes = env_count("DRIFTLESS_POWERLOSS_SECOND_CRASHES", 3)?;
    let started = Instant::now();
    let batches = small_batches();

    let reference = SimDisk::new();
    let life = first_life(&reference, &batches);
    ensure_eq!(life.acknowledged, batches.len(), "batches acknowledged without a fault");
    let total = reference.ops();
    ensure!(reference.syncs() > batches.len(), "the scenario synced only {} times", reference.syncs());
    ensure_eq!(
        reopen_and_check(reference.crash_image(0)?, life, &batches)?,
        Found::Batches(batches.len()),
        "the reference run's durable image"
    );

    let mut cases = 0u64;
    let mut second_fired = 0u64;
    let mut found: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut found_twice: BTreeMap<&'static str, u64> = BTreeMap::new();
    for n in 1..=total {
        // The first life does not depend on the damage seed: run it once per operation.
        let disk = SimDisk::with_fault(Fault::CrashAt(n));
        let life = no_panic(&format!("power loss at operation {n}"), || Ok(first_life(&disk, &batches)))?;
        ensure!(disk.fired(), "power loss at operation {n}: the power never went");
        for seed in 0..seeds {
            let case = format!("power loss at operation {n} of {total}, damage seed {seed}");
            let image = disk.crash_image(seed)?;
            let got = no_panic(&case, || reopen_and_check(image.clone(), life, &batches))?;
            *found.entry(got.describe(life)).or_default() += 1;
            cases += 1;

            // How many operations a clean recovery of this image takes.
            let probe = SimDisk::from_image(image.clone(), Fault::None);
            no_panic(&case, || {
                recovery(&probe);
                Ok(())
            })?;
            for m in spread(probe.ops(), second_crashes) {
                let case = format!("{case}, then again at operation {m} of {} of the recovery", probe.ops());
                let disk = SimDisk::from_image(image.clone(), Fault::CrashAt(m));
                no_panic(&case, || {
                    recovery(&disk);
                    Ok(())
                })?;
                second_fired += u64::from(disk.fired());
                let image = disk.crash_image(second_seed(seed, m))?;
                let got = no_panic(&case, || reopen_and_check(image, life, &batches))?;
                *found_twice.entry(got.describe(life)).or_default() += 1;
                cases += 1;
            }
        }
    }
    println!(
        "power loss: {total} operations x {seeds} damage seeds, then {second_fired} second power losses \
         during recovery: {cases} crash images checked in {:.1?}, no acknowledged batch lost; \
         after one loss {found:?}; after two {found_twice:?}",
        started.elapsed()
    );
    Ok(())
}
