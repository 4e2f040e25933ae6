//! Shutting down (or dropping) an engine with events still queued loses none of them.

use super::{
    ensure_applied_counts, ensure_matches_model, fold, open_gated, open_listings, options, same_outcome,
    stream, TestResult,
};
use driftless::{Engine, EngineOptions, Receipt};
use driftless_listings::{ListingEvent, Outcome};
use std::path::Path;

const EVENTS: usize = 1_200;

/// Queues the whole stream behind a writer held in its first commit, then lets it go and
/// stops the engine at once with `stop`. Every receipt must resolve as committed.
fn stop_with_events_queued(path: &Path, stop: impl FnOnce(Engine<ListingEvent>) -> TestResult) -> TestResult {
    let events = stream(EVENTS, 120, 6, 61);
    let (model, outcomes) = fold(&events);
    let (engine, gate) =
        open_gated(path, EngineOptions { queue_capacity: 2 * EVENTS, max_batch_events: 100, ..options() })?;
    let mut receipts: Vec<(Receipt, &Outcome)> = Vec::with_capacity(events.len());
    let mut pending = events.iter().zip(&outcomes);
    let (first, expected) = pending.next().ok_or("an empty stream")?;
    receipts.push((engine.dispatch(first.clone())?, expected));
    gate.wait_entered()?;
    for (event, expected) in pending {
        receipts.push((engine.dispatch(event.clone())?, expected));
    }
    ensure_eq!(engine.queued(), events.len() - 1, "events queued behind the held commit");
    gate.open()?;
    stop(engine)?;
    for (n, (receipt, expected)) in receipts.into_iter().enumerate() {
        let report = receipt.wait().map_err(|e| format!("receipt {n}: {e}"))?;
        ensure!(same_outcome(&report.outcome, expected), "event {n}: {:?} vs {expected:?}", report.outcome);
    }
    let engine = open_listings(path, options())?;
    engine.flush()?;
    ensure_matches_model(&engine, &model)?;
    ensure_applied_counts(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}

#[test]
fn shutdown_commits_every_queued_event() -> TestResult {
    let dir = tempfile::tempdir()?;
    stop_with_events_queued(&dir.path().join("db.redb"), |engine| Ok(engine.shutdown()?))
}

#[test]
fn drop_commits_every_queued_event() -> TestResult {
    let dir = tempfile::tempdir()?;
    stop_with_events_queued(&dir.path().join("db.redb"), |engine| {
        drop(engine);
        Ok(())
    })
}

#[test]
fn shutdown_with_batches_queued_and_immediate_durability() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.redb");
    let events = stream(EVENTS, 120, 6, 62);
    let (model, outcomes) = fold(&events);
    let engine = open_listings(
        &path,
        EngineOptions { durability: driftless::Durability::Immediate, max_batch_events: 50, ..options() },
    )?;
    let receipt = engine.dispatch_batch(events.iter().cloned())?;
    engine.shutdown()?;
    let reports = receipt.wait()?;
    ensure_eq!(reports.len(), events.len(), "one report per event");
    for (report, expected) in reports.iter().zip(&outcomes) {
        ensure!(same_outcome(&report.outcome, expected), "{:?} vs {expected:?}", report.outcome);
    }
    let engine = open_listings(&path, options())?;
    ensure_matches_model(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}
