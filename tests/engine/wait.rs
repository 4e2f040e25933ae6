//! `Engine::dispatch_and_wait`: committed on the calling thread when the engine is idle,
//! queued behind the events in progress otherwise, with the outcomes of a dispatch; and the
//! idle writer's filing of the journal by aggregate.

use super::{ensure_matches_model, fold, open_gated, options, same_outcome, stream, TestResult};
use driftless::{
    ApplyError, Engine, EventOutcome, HandlerName, ProjectionContext, Projector, TableId, Views,
};
use driftless_listings::{DistrictStatsProjector, ListingCardProjector, ListingEvent, ListingEventKind};
use std::sync::Arc;

/// [`ListingCardProjector`], noting the name of the thread every `apply` runs on.
struct ThreadNoting {
    threads: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl Projector<ListingEvent> for ThreadNoting {
    fn handler_name(&self) -> HandlerName {
        ListingCardProjector.handler_name()
    }

    fn tables(&self) -> Vec<TableId> {
        ListingCardProjector.tables()
    }

    fn apply(
        &self,
        e: &ListingEvent,
        ctx: &ProjectionContext,
        views: &mut Views<'_>,
    ) -> Result<(), ApplyError> {
        let name = std::thread::current().name().unwrap_or("unnamed").to_string();
        self.threads.lock().push(name);
        ListingCardProjector.apply(e, ctx, views)
    }
}

fn created(listing: &str, at: u64) -> ListingEvent {
    ListingEvent::new(
        listing,
        at,
        ListingEventKind::ListingCreated { title: "Loft".into(), price: 100_000, district: "Mitte".into() },
    )
}

fn price_changed(listing: &str, at: u64, price: u64) -> ListingEvent {
    ListingEvent::new(listing, at, ListingEventKind::ListingPriceChanged { price })
}

#[test]
fn an_idle_engine_commits_on_the_calling_thread_and_a_dispatch_on_the_writer() -> TestResult {
    let dir = tempfile::tempdir()?;
    let threads = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let engine = Engine::builder(dir.path().join("db.redb"))
        .options(options())
        .projector(ThreadNoting { threads: Arc::clone(&threads) })
        .projector(DistrictStatsProjector)
        .open()?;
    // The writer takes the flush only after its work at open; from then on it is idle.
    engine.flush()?;
    let report = engine.dispatch_and_wait(created("listing-1", 1_700_000_000_000))?;
    ensure!(report.outcome == EventOutcome::Applied, "first delivery: {:?}", report.outcome);
    let report = engine.dispatch(created("listing-2", 1_700_000_000_001))?.wait()?;
    ensure!(report.outcome == EventOutcome::Applied, "dispatched: {:?}", report.outcome);
    let me = std::thread::current().name().unwrap_or("unnamed").to_string();
    let seen = threads.lock().clone();
    ensure_eq!(seen, vec![me, "driftless-writer".to_string()], "the threads that applied the two events");
    // A second delivery is a duplicate, and applies nothing.
    let again = engine.dispatch_and_wait(created("listing-1", 1_700_000_000_000))?;
    ensure!(again.outcome == EventOutcome::Duplicate, "re-delivery: {:?}", again.outcome);
    ensure_eq!(threads.lock().len(), 2, "applies after the re-delivery");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_busy_engine_queues_the_event_behind_the_commit_in_progress() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (engine, gate) = open_gated(&dir.path().join("db.redb"), options())?;
    let first = engine.dispatch(created("listing-1", 1_700_000_000_000))?;
    gate.wait_entered()?;
    let second = std::thread::scope(|s| -> TestResult<_> {
        let waiting =
            s.spawn(|| engine.dispatch_and_wait(price_changed("listing-1", 1_700_000_000_500, 90_000)));
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
fn a_stream_applied_one_event_at_a_time_matches_the_fold() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = stream(600, 40, 5, 23);
    let (model, outcomes) = fold(&events);
    let engine = super::open_listings(&dir.path().join("db.redb"), options())?;
    for (i, (event, want)) in events.iter().zip(&outcomes).enumerate() {
        let report = engine.dispatch_and_wait(event.clone())?;
        ensure!(
            same_outcome(&report.outcome, want),
            "event {i}: {:?}, the fold says {want:?}",
            report.outcome
        );
    }
    ensure_matches_model(&engine, &model)?;
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
