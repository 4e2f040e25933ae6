//! Exactly-once at the edges: no single input stops the line, no conflict is swallowed,
//! and only storage failures poison.

use super::{create, options, price, TestResult};
use driftless::{
    ApplyError, DispatchError, Engine, EngineOptions, Event, EventId, EventOutcome, HandlerName,
    NotCommitted, ProjectionContext, Projector, ReadAnswer, TableDef, TableId, Timestamp, ViewError, Views,
    MAX_EVENT_BYTES,
};
use driftless_listings::{ListingEvent, LISTING_CARD};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// An event carrying a blob, with an explicit id; `occurred_at` panics for a marked one
/// (application code that runs inside the writer).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Blob {
    id: String,
    key: String,
    bytes: Vec<u8>,
    /// Rows this big are written by the projector.
    row: usize,
    panics: bool,
}

impl Blob {
    fn new(id: &str, bytes: usize) -> Self {
        Self { id: id.into(), key: "k".into(), bytes: vec![7; bytes], row: 1, panics: false }
    }
}

impl Event for Blob {
    fn aggregate_id(&self) -> &str {
        &self.key
    }
    fn event_name(&self) -> &str {
        "Blob"
    }
    #[allow(clippy::panic, reason = "an event whose own code panics inside the writer")]
    fn occurred_at(&self) -> Timestamp {
        if self.panics {
            panic!("occurred_at of {} panics", self.id);
        }
        Timestamp(1)
    }
    fn event_id(&self) -> EventId {
        EventId::new(self.id.clone()).unwrap_or_default()
    }
}

const ROWS: TableDef<String, Vec<u8>> = TableDef::new("rows", 1);

/// Writes a row of `row` bytes per event.
struct Rows(HandlerName);

impl Projector<Blob> for Rows {
    fn handler_name(&self) -> HandlerName {
        self.0.clone()
    }
    fn tables(&self) -> Vec<TableId> {
        vec![ROWS.id()]
    }
    fn apply(&self, e: &Blob, _: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
        views.table(&ROWS)?.put(&e.id, &vec![1u8; e.row])?;
        Ok(())
    }
}

fn blobs(path: &std::path::Path, options: EngineOptions) -> TestResult<Engine<Blob>> {
    Ok(Engine::builder(path).options(options).projector(Rows(HandlerName::new("rows")?)).open()?)
}

fn rows(engine: &Engine<Blob>) -> TestResult<usize> {
    match engine.read(&ROWS)? {
        ReadAnswer::Ready(repo) => Ok(usize::try_from(repo.len()?)?),
        ReadAnswer::UseSourceOfTruth { .. } => Err("rows is switched off".into()),
    }
}

#[test]
fn an_event_too_large_to_store_is_refused_at_dispatch_and_the_line_goes_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = blobs(&dir.path().join("b.redb"), options())?;
    // Larger than any stored value may be: refused before it is queued, naming the limit.
    let huge = Blob::new("huge", MAX_EVENT_BYTES + 1);
    match engine.dispatch(huge.clone()) {
        Err(e @ DispatchError::TooLarge { .. }) => {
            let text = e.to_string();
            ensure!(text.contains("too large") && text.contains(&MAX_EVENT_BYTES.to_string()), "{text}");
        }
        other => return Err(format!("a huge event: {:?}", other.map(drop)).into()),
    }
    // The engine goes on, and so does a batch around a refused event.
    ensure_eq!(engine.dispatch_and_wait(Blob::new("small", 10))?.outcome, EventOutcome::Applied, "after");
    match engine.dispatch_batch([Blob::new("a", 1), huge, Blob::new("b", 1)]) {
        Err(e) => {
            ensure!(matches!(e.error, DispatchError::TooLarge { .. }), "{e}");
            let queued = e.into_queued().wait()?;
            ensure_eq!(queued.len(), 1, "the events queued before the refused one");
        }
        Ok(_) => return Err("a batch with a huge event was queued whole".into()),
    }
    ensure!(engine.store().poisoned().is_none(), "a refusal poisoned the engine");
    ensure_eq!(rows(&engine)?, 2, "rows");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn the_event_size_limit_is_configurable_within_safe_bounds() -> TestResult {
    let dir = tempfile::tempdir()?;
    let small = EngineOptions { max_event_bytes: 1_000, ..options() };
    let engine = blobs(&dir.path().join("b.redb"), small)?;
    ensure!(
        matches!(engine.dispatch(Blob::new("x", 2_000)), Err(DispatchError::TooLarge { limit: 1_000, .. })),
        ""
    );
    ensure_eq!(engine.dispatch_and_wait(Blob::new("y", 500))?.outcome, EventOutcome::Applied, "a small one");
    engine.shutdown()?;
    for bad in [0, MAX_EVENT_BYTES + 1] {
        let options = EngineOptions { max_event_bytes: bad, ..options() };
        match blobs(&dir.path().join("c.redb"), options) {
            Err(e) => {
                let text = e.to_string();
                ensure!(text.contains("max_event_bytes"), "{text}");
            }
            Ok(_) => return Err(format!("max_event_bytes {bad} was taken").into()),
        }
    }
    Ok(())
}

#[test]
fn a_row_too_large_to_store_dead_letters_its_event_and_the_line_goes_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = blobs(&dir.path().join("b.redb"), options())?;
    let mut big = Blob::new("big-row", 1);
    big.row = driftless::codec::MAX_BODY_LEN + 1;
    match engine.dispatch_and_wait(big)?.outcome {
        EventOutcome::Rejected { reason } => ensure!(reason.contains("too large to store"), "{reason}"),
        other => return Err(format!("a row too large: {other:?}").into()),
    }
    ensure!(engine.store().poisoned().is_none(), "a row too large poisoned the engine");
    ensure_eq!(
        engine.dispatch_and_wait(Blob::new("next", 1))?.outcome,
        EventOutcome::Applied,
        "the next event"
    );
    ensure_eq!(engine.dead_letters(None)?.len(), 1, "dead letters");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_panic_in_the_events_own_code_inside_the_writer_refuses_it_without_poisoning() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = blobs(&dir.path().join("b.redb"), options())?;
    let mut bad = Blob::new("bad", 1);
    bad.panics = true;
    match engine.dispatch(bad)?.wait()?.outcome {
        EventOutcome::Refused { reason } => ensure!(reason.contains("occurred_at of bad panics"), "{reason}"),
        other => return Err(format!("a panicking event: {other:?}").into()),
    }
    ensure!(engine.store().poisoned().is_none(), "the application's panic poisoned the engine");
    ensure_eq!(
        engine.dispatch_and_wait(Blob::new("good", 1))?.outcome,
        EventOutcome::Applied,
        "the next event"
    );
    ensure_eq!(engine.store().journal_head()?, 1, "journal entries");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_failed_commit_does_not_claim_that_nothing_was_written() {
    // A failed sync cannot promise that: the batch may be in the file or not.
    let text = NotCommitted::CommitFailed("the sync failed".into()).to_string();
    assert!(!text.contains("nothing of the batch"), "{text}");
    assert!(text.contains("deliver it again"), "{text}");
}

#[test]
fn a_conflict_with_a_payload_every_handler_rejected_is_reported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = super::open_listings(&dir.path().join("l.redb"), options())?;
    // A price change of a listing that does not exist yet: every handler rejects it.
    let first = price("a", 5, 100).with_event_id("shared");
    ensure!(
        matches!(engine.dispatch_and_wait(first.clone())?.outcome, EventOutcome::Rejected { .. }),
        "first"
    );
    // Another payload under the same id: a conflict, not applied.
    let other = create("a", 6, 300).with_event_id("shared");
    ensure!(
        matches!(engine.dispatch_and_wait(other)?.outcome, EventOutcome::Conflict { .. }),
        "other payload"
    );
    ensure!(cards_empty(&engine)?, "the conflicting payload was applied");
    // The first payload again: tried again (still rejected: nothing to change the price of).
    ensure!(matches!(engine.dispatch_and_wait(first)?.outcome, EventOutcome::Rejected { .. }), "first again");
    // A rebuild does not let the other payload win.
    engine.rebuild("listing_card")?;
    ensure!(cards_empty(&engine)?, "the rebuild applied the conflicting payload");
    engine.shutdown()?;
    Ok(())
}

fn cards_empty(engine: &Engine<ListingEvent>) -> TestResult<bool> {
    match engine.read(&LISTING_CARD)? {
        ReadAnswer::Ready(repo) => Ok(repo.is_empty()?),
        ReadAnswer::UseSourceOfTruth { .. } => Err("listing_card is switched off".into()),
    }
}

#[test]
fn a_conflict_with_a_deferred_payload_is_reported_and_catch_up_applies_the_first() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = EngineOptions { kill_switch_pauses_projection: true, ..options() };
    let engine = super::open_listings(&dir.path().join("l.redb"), options)?;
    engine.set_kill_switch("listing_card", true)?;
    engine.set_kill_switch("district_stats", true)?;
    let first = create("a", 5, 100).with_event_id("shared");
    ensure_eq!(engine.dispatch_and_wait(first)?.outcome, EventOutcome::Deferred, "first, while paused");
    let other = create("a", 5, 999).with_event_id("shared");
    ensure!(
        matches!(engine.dispatch_and_wait(other)?.outcome, EventOutcome::Conflict { .. }),
        "other payload"
    );
    engine.set_kill_switch("listing_card", false)?;
    engine.set_kill_switch("district_stats", false)?;
    let ReadAnswer::Ready(cards) = engine.read(&LISTING_CARD)? else { return Err("switched off".into()) };
    ensure_eq!(cards.get(&"a".to_string())?.map(|c| c.price), Some(100), "the first payload, caught up");
    engine.shutdown()?;
    Ok(())
}

/// Nothing outside the engine's writer writes a read model: the store an engine hands out
/// reads only. (`Store` has no `project`, `rebuild`, `replace_view` or `tamper_row`; the
/// compile-fail examples on `Store` show it.)
#[test]
fn the_store_an_engine_hands_out_cannot_write_read_models() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = super::open_listings(&dir.path().join("l.redb"), options())?;
    let store: &Arc<driftless::Store> = engine.store();
    // What it can do: read, and keep its own records (reconciliation health, leases).
    ensure_eq!(store.journal_head()?, 0, "an empty journal");
    store.meta_update("probe", |_: Option<u64>| (Some(1u64), ()))?;
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_view_error_that_is_not_storage_does_not_poison() -> TestResult {
    // A row type mismatch is the projector's error: dead-lettered, not a poisoned engine.
    struct Wrong(HandlerName);
    const WRONG: TableDef<String, u64> = TableDef::new("rows", 1);
    impl Projector<Blob> for Wrong {
        fn handler_name(&self) -> HandlerName {
            self.0.clone()
        }
        fn tables(&self) -> Vec<TableId> {
            vec![ROWS.id()]
        }
        fn apply(&self, e: &Blob, _: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
            match views.table(&WRONG) {
                Err(ViewError::TypeMismatch { .. }) => {
                    Err(ApplyError::rejected(format!("{} mismatched", e.id)))
                }
                Err(e) => Err(e.into()),
                Ok(_) => Ok(()),
            }
        }
    }
    let dir = tempfile::tempdir()?;
    let engine = Engine::builder(dir.path().join("w.redb"))
        .options(options())
        .projector(Wrong(HandlerName::new("w")?))
        .open()?;
    ensure!(
        matches!(engine.dispatch_and_wait(Blob::new("x", 1))?.outcome, EventOutcome::Rejected { .. }),
        ""
    );
    ensure!(engine.store().poisoned().is_none(), "poisoned");
    engine.shutdown()?;
    Ok(())
}
