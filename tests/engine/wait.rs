//! `Engine::dispatch_and_wait`: committed on the calling thread when the engine is idle,
//! queued behind the events in progress otherwise (its outcomes are checked against the
//! model with the other receipts, in `outcomes.rs`); and the idle writer's filing of the
//! journal by aggregate.

use super::{create, open_gated, options, price, stream, TestResult};
use driftless::EventOutcome;

const T: u64 = 1_700_000_000_000;

#[test]
fn an_idle_engine_commits_on_the_calling_thread_and_a_dispatch_on_the_writer() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (engine, gate) = open_gated(&dir.path().join("dispatched.redb"), options())?;
    let receipt = engine.dispatch(create("listing-2", T + 1, 100_000))?;
    ensure_eq!(gate.wait_entered()?, "driftless-writer", "the thread that applied a dispatched event");
    gate.open()?;
    let report = receipt.wait()?;
    ensure!(report.outcome == EventOutcome::Applied, "dispatched: {:?}", report.outcome);
    engine.shutdown()?;

    let (engine, gate) = open_gated(&dir.path().join("waited.redb"), options())?;
    // The writer takes the flush only after its work at open; from then on it is idle.
    engine.flush()?;
    let report = std::thread::scope(|s| -> TestResult<_> {
        let caller = std::thread::Builder::new()
            .name("caller".into())
            .spawn_scoped(s, || engine.dispatch_and_wait(create("listing-1", T, 100_000)))?;
        ensure_eq!(gate.wait_entered()?, "caller", "the thread that applied the event of dispatch_and_wait");
        gate.open()?;
        Ok(caller.join().map_err(|_| "the calling thread panicked")??)
    })?;
    ensure!(report.outcome == EventOutcome::Applied, "first delivery: {:?}", report.outcome);
    // A second delivery is a duplicate, and applies nothing.
    let again = engine.dispatch_and_wait(create("listing-1", T, 100_000))?;
    ensure!(again.outcome == EventOutcome::Duplicate, "re-delivery: {:?}", again.outcome);
    ensure_eq!(engine.freshness_of("listing_card")?.applied, 1, "events listing_card applied");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_busy_engine_queues_the_event_behind_the_commit_in_progress() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (engine, gate) = open_gated(&dir.path().join("db.redb"), options())?;
    let first = engine.dispatch(create("listing-1", T, 100_000))?;
    gate.wait_entered()?;
    let second = std::thread::scope(|s| -> TestResult<_> {
        let waiting = s.spawn(|| engine.dispatch_and_wait(price("listing-1", T + 500, 90_000)));
        // The commit of the first event is held at the gate: the second cannot overtake it.
        std::thread::sleep(std::time::Duration::from_millis(50));
        ensure!(!waiting.is_finished(), "dispatch_and_wait returned while the writer was held");
        gate.open()?;
        Ok(waiting.join().map_err(|_| "the waiting thread panicked")??)
    })?;
    let first = first.wait()?;
    ensure!(first.outcome == EventOutcome::Applied, "creation: {:?}", first.outcome);
    // A price change before the creation would have been rejected by the business rules.
    ensure!(second.outcome == EventOutcome::Applied, "price change: {:?}", second.outcome);
    ensure!(
        first.position < second.position,
        "journal positions {:?} and {:?} are out of dispatch order",
        first.position,
        second.position
    );
    engine.shutdown()?;
    Ok(())
}

#[test]
fn an_idle_writer_files_the_journal_by_aggregate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = stream(5_000, 50, 5, 29);
    let engine = super::open_listings(&dir.path().join("db.redb"), options())?;
    let store = std::sync::Arc::clone(engine.store());
    // An aggregate with events on both sides of the first 4,000.
    let listing = events.last().map(|e| e.aggregate_id.clone()).ok_or("an empty stream")?;
    let before: Vec<_> = {
        let _ = engine.dispatch_batch(events.iter().take(4_000).cloned())?.wait()?;
        // Fewer than the idle writer files: left for later.
        engine.flush()?;
        let unfiled = store.unfiled_journal_entries();
        ensure!(unfiled > 3_000 && unfiled < 4_096, "{unfiled} unfiled entries after 4,000 events");
        store.journal_for_aggregate(&listing)?.into_iter().map(|e| e.position).collect()
    };
    let _ = engine.dispatch_batch(events.iter().skip(4_000).cloned())?.wait()?;
    super::wait_until("the idle writer filed the tail", || Ok(store.unfiled_journal_entries() == 0))?;
    let after: Vec<_> = store.journal_for_aggregate(&listing)?.into_iter().map(|e| e.position).collect();
    ensure!(after.len() > before.len(), "{listing} has no entries among the last 1,000 events");
    ensure_eq!(after.get(..before.len()), Some(before.as_slice()), "entries of the listing filed before");
    ensure!(after.windows(2).all(|w| w.first() < w.get(1)), "entries of {listing} out of journal order");
    engine.shutdown()?;
    Ok(())
}
