//! Receipts report what the reference model says, event by event.

use super::{
    create, ensure_matches_model, fold, open_listings, options, price, same_outcome, stream, TestResult,
};
use driftless::{
    ApplyError, Engine, EngineOptions, EventOutcome, EventReport, HandlerName, HandlerOutcome,
    ProjectionContext, Projector, TableDef, TableId, Views,
};
use driftless_listings::{generate_events, projectors, GenConfig, ListingEvent, ListingEventKind, Outcome};
use std::sync::Arc;

fn inquiry(id: &str, at: u64, inquiry_id: &str) -> ListingEvent {
    ListingEvent::new(id, at, ListingEventKind::InquiryReceived { inquiry_id: inquiry_id.into() })
}

fn simple(id: &str, at: u64, kind: ListingEventKind) -> ListingEvent {
    ListingEvent::new(id, at, kind)
}

/// A stream that exercises every outcome, including the corner cases: the first delivery
/// of an id fixes its payload even when it is rejected (a re-delivery of the same event is
/// tried again, one of another payload is a conflict), and an id already applied is a
/// conflict whatever the aggregate.
fn every_outcome() -> Vec<ListingEvent> {
    use ListingEventKind::{ListingArchived, ListingPublished};
    vec![
        create("a", 1, 100),
        create("a", 1, 100),
        create("a", 1, 999),
        inquiry("a", 2, "q-1"),
        simple("a", 3, ListingPublished),
        simple("a", 3, ListingPublished),
        inquiry("a", 2, "q-1"),
        inquiry("a", 2, "q-1"),
        inquiry("a", 2, "q-other"),
        price("b", 4, 5),
        price("b", 4, 6),
        create("b", 5, 200),
        price("b", 4, 7),
        price("b", 4, 5),
        simple("a", 6, ListingArchived),
        simple("a", 7, ListingArchived),
        price("a", 8, 1),
        create("a", 9, 100),
        create("c", 10, 300).with_event_id(create("a", 1, 100).event_id),
        simple("b", 11, ListingPublished),
        inquiry("b", 12, "q-2"),
        simple("c", 13, ListingPublished),
    ]
}

/// The report agrees with the model's outcome, overall and for each of the two handlers.
fn ensure_report(n: usize, report: &EventReport, expected: &Outcome, event: &ListingEvent) -> TestResult {
    ensure!(
        same_outcome(&report.outcome, expected),
        "event {n} ({}): the engine said {:?}, the model {expected:?}",
        event.event_id,
        report.outcome
    );
    ensure_eq!(report.event_id.as_str(), event.event_id.as_str(), "the report's event {n}");
    let handlers: Vec<&HandlerOutcome> = report.handlers.iter().map(|(_, o)| o).collect();
    match expected {
        Outcome::Applied => ensure!(
            handlers.len() == 2 && handlers.iter().all(|o| **o == HandlerOutcome::Applied),
            "event {n}: every handler applies it: {handlers:?}"
        ),
        Outcome::Duplicate => ensure!(
            handlers.len() == 2 && handlers.iter().all(|o| **o == HandlerOutcome::Duplicate),
            "event {n}: every handler skips it: {handlers:?}"
        ),
        Outcome::Rejected(r) => ensure!(
            handlers.len() == 2
                && handlers.iter().all(
                    |o| matches!(o, HandlerOutcome::DeadLettered { reason } if *reason == r.to_string())
                ),
            "event {n}: every handler dead-letters it: {handlers:?}"
        ),
        Outcome::Conflict { .. } => ensure!(handlers.is_empty(), "event {n}: no handler runs: {handlers:?}"),
    }
    Ok(())
}

#[test]
fn every_outcome_one_event_at_a_time() -> TestResult {
    let events = every_outcome();
    let (_, outcomes) = fold(&events);
    for kind in ["applied", "duplicate", "conflict", "rejected"] {
        let count = outcomes
            .iter()
            .filter(|o| match o {
                Outcome::Applied => kind == "applied",
                Outcome::Duplicate => kind == "duplicate",
                Outcome::Conflict { .. } => kind == "conflict",
                Outcome::Rejected(_) => kind == "rejected",
            })
            .count();
        ensure!(count >= 3, "the stream has {count} {kind} events");
    }
    one_at_a_time(&events, false)?;
    one_at_a_time(&events, true)
}

#[test]
fn a_generated_stream_through_dispatch_and_wait_reports_what_the_model_says() -> TestResult {
    one_at_a_time(&stream(600, 40, 5, 23), true)
}

/// Delivers `events` one at a time, each waited for — through `dispatch` and the receipt,
/// or through `dispatch_and_wait` when `and_wait` — and checks every report and the read
/// models against the model.
fn one_at_a_time(events: &[ListingEvent], and_wait: bool) -> TestResult {
    let dir = tempfile::tempdir()?;
    let (model, outcomes) = fold(events);
    let engine = open_listings(&dir.path().join("db.redb"), options())?;
    for (n, (event, expected)) in events.iter().zip(&outcomes).enumerate() {
        let report = if and_wait {
            engine.dispatch_and_wait(event.clone())?
        } else {
            engine.dispatch(event.clone())?.wait()?
        };
        ensure_report(n, &report, expected, event)?;
    }
    ensure_matches_model(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}

#[test]
fn every_outcome_in_one_commit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = every_outcome();
    let (model, outcomes) = fold(&events);
    let engine = open_listings(&dir.path().join("db.redb"), options())?;
    let reports = engine.dispatch_batch(events.iter().cloned())?.wait()?;
    ensure_eq!(reports.len(), events.len(), "one report per event");
    for (n, ((event, expected), report)) in events.iter().zip(&outcomes).zip(&reports).enumerate() {
        ensure_report(n, report, expected, event)?;
    }
    ensure_matches_model(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_generated_stream_in_batches_reports_the_model_outcomes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = generate_events(GenConfig {
        events: 1_500,
        listings: 100,
        districts: 6,
        seed: 91,
        redeliveries: 0.2,
        conflicts: 25,
        invalid_lines: 0,
    });
    let (model, outcomes) = fold(&events);
    let summary = model.summary();
    ensure!(
        summary.duplicates > 0 && summary.conflicts > 0 && summary.rejected > 0,
        "the stream exercises every outcome: {summary}"
    );
    let engine =
        open_listings(&dir.path().join("db.redb"), EngineOptions { max_batch_events: 64, ..options() })?;
    let reports = engine.dispatch_batch(events.iter().cloned())?.wait()?;
    for (n, ((event, expected), report)) in events.iter().zip(&outcomes).zip(&reports).enumerate() {
        ensure_report(n, report, expected, event)?;
    }
    ensure_matches_model(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}

const ARCHIVE_LOG: TableDef<String, u64> = TableDef::new("archive_log", 1);

/// Interested only in archivals.
struct ArchiveLog {
    name: HandlerName,
}

impl Projector<ListingEvent> for ArchiveLog {
    fn handler_name(&self) -> HandlerName {
        self.name.clone()
    }

    fn tables(&self) -> Vec<TableId> {
        vec![ARCHIVE_LOG.id()]
    }

    fn handles(&self, event: &ListingEvent) -> bool {
        matches!(event.kind, ListingEventKind::ListingArchived)
    }

    fn apply(
        &self,
        e: &ListingEvent,
        _: &ProjectionContext,
        views: &mut Views<'_>,
    ) -> Result<(), ApplyError> {
        views.table(&ARCHIVE_LOG)?.put(&e.aggregate_id, &e.occurred_at)?;
        Ok(())
    }
}

#[test]
fn an_event_every_interested_handler_rejects_is_rejected() -> TestResult {
    // A projector that is not interested in an event does not make it "applied" when
    // every projector that is interested rejects it.
    let dir = tempfile::tempdir()?;
    let mut builder = Engine::builder(dir.path().join("db.redb")).options(options());
    for p in projectors() {
        builder = builder.projector_arc(Arc::from(p));
    }
    let engine = builder.projector(ArchiveLog { name: HandlerName::new("archive_log")? }).open()?;
    let stray = inquiry("nobody", 1, "q-1");
    let report = engine.dispatch(stray.clone())?.wait()?;
    ensure!(
        matches!(&report.outcome, EventOutcome::Rejected { reason } if reason == "listing nobody does not exist"),
        "an inquiry for a missing listing: {:?}",
        report.outcome
    );
    ensure_eq!(engine.dead_letters(None)?.len(), 2, "dead letters of the interested handlers");
    // Accepted by the interested ones, it is applied, and the others record it as processed.
    let report = engine.dispatch(create("a", 2, 100))?.wait()?;
    ensure_eq!(report.outcome, EventOutcome::Applied, "a creation");
    ensure!(report.handlers.iter().any(|(_, o)| *o == HandlerOutcome::NotHandled), "not handled by the log");
    // Only the uninterested handler sees it at all: it is processed, i.e. applied.
    let only_log = Engine::builder(dir.path().join("log.redb"))
        .options(options())
        .projector(ArchiveLog { name: HandlerName::new("archive_log")? })
        .open()?;
    let report = only_log.dispatch(stray)?.wait()?;
    ensure_eq!(report.outcome, EventOutcome::Applied, "an event nobody is interested in");
    only_log.shutdown()?;
    engine.shutdown()?;
    Ok(())
}
