//! A panicking projector is dead-lettered without harming the engine; freshness under an
//! injected clock.

use super::{create, ensure_matches_model, fold, leaderboard_view, options, TestResult};
use driftless::{
    ApplyError, Engine, EventOutcome, HandlerName, HandlerOutcome, HandlerOutcomes, ManualClock,
    ProjectionContext, Projector, TableDef, TableId, Timestamp, Views,
};
use driftless_listings::{
    projectors, ListingEvent, ListingModel, DISTRICT_STATS_HANDLER, LISTING_CARD_HANDLER,
};
use std::sync::Arc;

const PANICKY_LOG: TableDef<String, u64> = TableDef::new("panicky_log", 1);

/// Logs every listing it sees; panics in `apply` (after writing) for listings named
/// `boom…`, and in `handles` for listings named `trap…`.
struct Panicky {
    name: HandlerName,
}

impl Projector<ListingEvent> for Panicky {
    fn handler_name(&self) -> HandlerName {
        self.name.clone()
    }

    fn tables(&self) -> Vec<TableId> {
        vec![PANICKY_LOG.id()]
    }

    #[expect(clippy::panic, reason = "the test needs a projector that panics")]
    fn handles(&self, event: &ListingEvent) -> bool {
        if event.aggregate_id.starts_with("trap") {
            panic!("a trap in handles for {}", event.aggregate_id);
        }
        true
    }

    #[expect(clippy::panic, reason = "the test needs a projector that panics")]
    fn apply(
        &self,
        e: &ListingEvent,
        _: &ProjectionContext,
        views: &mut Views<'_>,
    ) -> Result<(), ApplyError> {
        views.table(&PANICKY_LOG)?.put(&e.aggregate_id, &e.occurred_at)?;
        if e.aggregate_id.starts_with("boom") {
            panic!("boom in apply for {}", e.aggregate_id);
        }
        Ok(())
    }
}

fn open_with_panicky(path: &std::path::Path) -> TestResult<Engine<ListingEvent>> {
    let mut builder = Engine::builder(path).options(options());
    for p in projectors() {
        builder = builder.projector_arc(Arc::from(p));
    }
    Ok(builder.projector(Panicky { name: HandlerName::new("panicky")? }).open()?)
}

/// Checks that `event` was applied by the sample projectors and dead-lettered by the
/// panicking one, which left nothing behind.
fn ensure_panic_dead_lettered(
    engine: &Engine<ListingEvent>,
    event: &ListingEvent,
    outcome: &EventOutcome,
    handlers: &HandlerOutcomes,
) -> TestResult {
    ensure_eq!(*outcome, EventOutcome::Applied, "the outcome of {}", event.event_id);
    let panicky = engine.handlers().iter().position(|h| h == "panicky").ok_or("no panicky handler")?;
    match handlers.get(panicky) {
        Some(HandlerOutcome::DeadLettered { reason }) => {
            ensure!(reason.contains("panicked"), "the reason says it panicked: {reason}");
        }
        other => return Err(format!("the panicking handler's outcome: {other:?}").into()),
    }
    let letters = engine.dead_letters(Some("panicky"))?;
    let letter = letters.iter().find(|d| d.event_id == event.event_id).ok_or("no dead letter")?;
    ensure!(letter.reason.contains("panicked"), "the dead letter's reason: {}", letter.reason);
    ensure!(
        engine.store().raw_row("panicky_log", event.aggregate_id.as_bytes())?.is_none(),
        "the panicking apply left a row behind"
    );
    Ok(())
}

#[test]
fn a_projector_panicking_in_apply_is_dead_lettered_and_the_engine_goes_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open_with_panicky(&dir.path().join("db.redb"))?;
    let events = [create("l-1", 1, 100_000), create("boom-1", 2, 100_000), create("l-2", 3, 100_000)];
    let mut model = ListingModel::new();
    for e in &events {
        model.apply(e);
        let report = engine.dispatch(e.clone())?.wait()?;
        if e.aggregate_id.starts_with("boom") {
            ensure_panic_dead_lettered(&engine, e, &report.outcome, &report.handlers)?;
        } else {
            ensure_eq!(report.outcome, EventOutcome::Applied, "the outcome of {}", e.event_id);
        }
    }
    // In one batch, the panic costs only its own (event, handler).
    let batch = [create("l-3", 4, 100_000), create("boom-2", 5, 100_000), create("l-4", 6, 100_000)];
    let reports = engine.dispatch_batch(batch.iter().cloned())?.wait()?;
    for (e, report) in batch.iter().zip(&reports) {
        model.apply(e);
        if e.aggregate_id.starts_with("boom") {
            ensure_panic_dead_lettered(&engine, e, &report.outcome, &report.handlers)?;
        } else {
            ensure_eq!(report.outcome, EventOutcome::Applied, "the outcome of {}", e.event_id);
            ensure!(engine.store().raw_row("panicky_log", e.aggregate_id.as_bytes())?.is_some(), "logged");
        }
    }
    ensure!(engine.store().poisoned().is_none(), "the engine is not poisoned");
    engine.flush()?;
    ensure_matches_model(&engine, &model)?;
    ensure_eq!(engine.dead_letters(Some("panicky"))?.len(), 2, "dead letters of the panicking handler");
    ensure_eq!(engine.dead_letters(Some(LISTING_CARD_HANDLER))?.len(), 0, "dead letters of listing_card");
    ensure_eq!(engine.freshness_of("panicky_log")?.dead_letters, 2, "dead letters in freshness");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_projector_panicking_in_handles_is_dead_lettered_and_the_engine_goes_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open_with_panicky(&dir.path().join("db.redb"))?;
    let events = [create("l-1", 1, 100_000), create("trap-1", 2, 100_000), create("l-2", 3, 100_000)];
    let (mut model, _) = fold(&events);
    let reports = engine.dispatch_batch(events.iter().cloned())?.wait()?;
    for (e, report) in events.iter().zip(&reports) {
        if e.aggregate_id.starts_with("trap") {
            ensure_panic_dead_lettered(&engine, e, &report.outcome, &report.handlers)?;
        } else {
            ensure_eq!(report.outcome, EventOutcome::Applied, "the outcome of {}", e.event_id);
        }
    }
    ensure!(engine.store().poisoned().is_none(), "the engine is not poisoned");
    let after = create("l-3", 4, 100_000);
    model.apply(&after);
    ensure_eq!(engine.dispatch(after)?.wait()?.outcome, EventOutcome::Applied, "the engine goes on");
    ensure_matches_model(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}

#[test]
fn freshness_follows_the_injected_clock() -> TestResult {
    const NOW: u64 = 1_800_000_000_000;
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(Timestamp(NOW));
    let mut builder =
        Engine::builder(dir.path().join("db.redb")).options(options()).clock(Arc::new(clock.clone()));
    for p in projectors() {
        builder = builder.projector_arc(Arc::from(p));
    }
    let engine = builder.view(leaderboard_view()).open()?;

    let f = engine.freshness_of("listing_card")?;
    ensure!(f.seconds.is_none() && f.commit_lag_ms.is_none(), "nothing applied yet: {f:?}");
    ensure_eq!(f.header_value(), None, "no header before the first event");

    let report = engine.dispatch(create("l-1", NOW - 5_000, 100_000))?.wait()?;
    ensure_eq!(report.outcome, EventOutcome::Applied, "the outcome");
    for read_model in ["listing_card", "district_stats"] {
        let f = engine.freshness_of(read_model)?;
        ensure_eq!(f.commit_lag_ms, Some(5_000), "the commit lag of {read_model}");
        ensure_eq!(f.seconds, Some(5.0), "the age of {read_model}");
        ensure_eq!(f.header_value().as_deref(), Some("5"), "the header of {read_model}");
        ensure!(f.caught_up && f.applied == 1, "{read_model}: {f:?}");
    }
    clock.advance(2_000);
    let f = engine.freshness_of(LISTING_CARD_HANDLER)?;
    ensure_eq!(f.seconds, Some(7.0), "the age after 2 s");
    ensure_eq!(f.commit_lag_ms, Some(5_000), "the commit lag does not age");
    ensure_eq!(f.header_value().as_deref(), Some("7"), "the header after 2 s");
    clock.advance(500);
    ensure_eq!(
        engine.freshness_of(DISTRICT_STATS_HANDLER)?.header_value().as_deref(),
        Some("8"),
        "rounded up"
    );

    // An event applied late: the lag is applied-at minus occurred-at.
    let report = engine.dispatch(create("l-2", NOW - 60_000, 100_000))?.wait()?;
    ensure_eq!(report.outcome, EventOutcome::Applied, "the outcome");
    let f = engine.freshness_of(LISTING_CARD_HANDLER)?;
    ensure_eq!(f.commit_lag_ms, Some(62_500), "the lag of the late event");
    ensure_eq!(f.seconds, Some(7.5), "the age is that of the newest event");

    // A view's age is the time since its refresh.
    let f = engine.freshness_of("district_leaderboard")?;
    ensure!(f.seconds.is_none(), "never refreshed: {f:?}");
    engine.refresh_views()?;
    clock.advance(3_000);
    let f = engine.freshness_of("district_leaderboard")?;
    ensure_eq!(f.seconds, Some(3.0), "the view's age");
    ensure_eq!(f.header_value().as_deref(), Some("3"), "the view's header");

    // A paused read model is not caught up once an event passes it by: no header.
    let engine = {
        engine.shutdown()?;
        let mut builder = Engine::builder(dir.path().join("db.redb"))
            .options(driftless::EngineOptions { kill_switch_pauses_projection: true, ..options() })
            .clock(Arc::new(clock.clone()));
        for p in projectors() {
            builder = builder.projector_arc(Arc::from(p));
        }
        builder.view(leaderboard_view()).open()?
    };
    engine.set_kill_switch("listing_card", true)?;
    engine.dispatch(create("l-3", NOW, 100_000))?.wait()?;
    let f = engine.freshness_of("listing_card")?;
    ensure!(!f.caught_up && f.switched_off, "paused and passed by: {f:?}");
    ensure_eq!(f.header_value(), None, "no header while not caught up");
    engine.set_kill_switch("listing_card", false)?;
    let f = engine.freshness_of("listing_card")?;
    ensure!(f.caught_up && f.applied == 3, "caught up on release: {f:?}");
    ensure_eq!(f.seconds, Some(5.5), "the age after catching up");
    engine.shutdown()?;
    Ok(())
}
