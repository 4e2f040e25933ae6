//! The kill switch under load, with and without pausing projection.

use super::{
    ensure_applied_counts, ensure_matches_model, fold, joined, open_listings, options, stream, wait_until,
    TestResult,
};
use driftless::{Engine, EngineOptions, ReadAnswer};
use driftless_listings::{ListingCard, ListingEvent, ListingEventKind, LISTING_CARD};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

const TOGGLES_AT_LEAST: u64 = 30;

fn open(path: &Path, pause: bool) -> TestResult<Engine<ListingEvent>> {
    open_listings(path, EngineOptions { kill_switch_pauses_projection: pause, ..options() })
}

fn switched_off(engine: &Engine<ListingEvent>) -> TestResult<bool> {
    Ok(matches!(engine.read(&LISTING_CARD)?, ReadAnswer::UseSourceOfTruth { .. }))
}

fn card(engine: &Engine<ListingEvent>, id: &str) -> TestResult<Option<ListingCard>> {
    match engine.store().raw_row("listing_card", id.as_bytes())? {
        Some(bytes) => Ok(Some(driftless::codec::decode(&bytes)?)),
        None => Ok(None),
    }
}

#[test]
fn the_kill_switch_without_pausing_projection() -> TestResult {
    chaos(false)
}

#[test]
fn the_kill_switch_pausing_projection() -> TestResult {
    chaos(true)
}

fn chaos(pause: bool) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.redb");
    let events = stream(1_500, 150, 6, 51 + u64::from(pause));
    let (model, _) = fold(&events);
    let engine = open(&path, pause)?;

    // First, one event while switched off, step by step.
    let (first, rest) = events.split_first().ok_or("an empty stream")?;
    engine.set_kill_switch("listing_card", true)?;
    let switch = engine.kill_switch("listing_card")?.ok_or("the switch is engaged")?;
    ensure_eq!(switch.pause_projection, pause, "the switch records whether it pauses");
    ensure!(switched_off(&engine)?, "reads answer UseSourceOfTruth once engaged");
    engine.dispatch(first.clone())?.wait()?;
    let f = engine.freshness_of("listing_card")?;
    ensure!(f.switched_off, "freshness says switched off: {f:?}");
    ensure_eq!(f.caught_up, !pause, "caught up while engaged");
    ensure_eq!(f.header_value().is_some(), !pause, "a freshness header while engaged");
    ensure_eq!(card(&engine, &first.aggregate_id)?.is_some(), !pause, "the card projected while engaged");
    engine.set_kill_switch("listing_card", false)?;
    ensure!(!switched_off(&engine)?, "reads are served once released");
    ensure!(engine.freshness_of("listing_card")?.caught_up, "caught up once released");
    ensure!(card(&engine, &first.aggregate_id)?.is_some(), "the card after release");

    // Then the chaos: a producer, a toggler and a reader. `generation` is a sequence
    // lock: odd while a toggle is under way; `generation / 2` toggles are done, and the
    // switch is engaged after an odd number of them.
    let generation = AtomicU64::new(0);
    let producing = AtomicBool::new(true);
    let stable_reads = AtomicUsize::new(0);
    let last_checked = AtomicU64::new(0);
    let toggling = AtomicBool::new(true);
    std::thread::scope(|s| -> TestResult {
        let producer = s.spawn(|| -> TestResult {
            let result = (|| -> TestResult {
                let mut receipts = Vec::new();
                for e in rest {
                    receipts.push(engine.dispatch(e.clone())?);
                    if receipts.len() == 16 {
                        for r in receipts.drain(..) {
                            r.wait()?;
                        }
                    }
                }
                for r in receipts {
                    r.wait()?;
                }
                Ok(())
            })();
            producing.store(false, Ordering::SeqCst);
            result
        });
        let toggler = s.spawn(|| -> TestResult {
            let result = (|| -> TestResult {
                let mut toggles = 0u64;
                while producing.load(Ordering::SeqCst) || toggles < TOGGLES_AT_LEAST || toggles % 2 == 1 {
                    let engage = toggles.is_multiple_of(2);
                    generation.fetch_add(1, Ordering::SeqCst);
                    engine.set_kill_switch("listing_card", engage)?;
                    let now = generation.fetch_add(1, Ordering::SeqCst) + 1;
                    toggles += 1;
                    ensure_eq!(switched_off(&engine)?, engage, "the answer right after toggle {toggles}");
                    ensure_eq!(
                        engine.kill_switch("listing_card")?.is_some(),
                        engage,
                        "the switch after {toggles}"
                    );
                    if !engage {
                        let f = engine.freshness_of("listing_card")?;
                        ensure!(f.caught_up && !f.switched_off, "caught up after release {toggles}: {f:?}");
                    }
                    // Let the reader check this state too before it changes again.
                    wait_until("the reader checked the state", || {
                        Ok(last_checked.load(Ordering::SeqCst) == now)
                    })?;
                }
                Ok(())
            })();
            toggling.store(false, Ordering::SeqCst);
            result
        });
        let reader = s.spawn(|| -> TestResult {
            while toggling.load(Ordering::SeqCst) {
                let before = generation.load(Ordering::SeqCst);
                if before % 2 == 1 {
                    std::thread::yield_now();
                    continue;
                }
                let switch = engine.kill_switch("listing_card")?;
                let off = switched_off(&engine)?;
                if generation.load(Ordering::SeqCst) != before {
                    continue;
                }
                let engaged = (before / 2) % 2 == 1;
                ensure_eq!(switch.is_some(), engaged, "the switch read at generation {before}");
                ensure_eq!(off, engaged, "the answer read at generation {before}");
                stable_reads.fetch_add(1, Ordering::SeqCst);
                last_checked.store(before, Ordering::SeqCst);
            }
            Ok(())
        });
        joined(producer.join())?;
        joined(toggler.join())?;
        joined(reader.join())?;
        Ok(())
    })?;
    ensure!(stable_reads.load(Ordering::SeqCst) as u64 >= TOGGLES_AT_LEAST, "the reader checked every state");
    ensure!(generation.load(Ordering::SeqCst) >= 2 * TOGGLES_AT_LEAST, "the switch was toggled");

    // Nothing lost, nothing applied twice.
    engine.flush()?;
    ensure!(!switched_off(&engine)?, "released at the end");
    ensure_matches_model(&engine, &model)?;
    ensure_applied_counts(&engine, &model)?;
    let f = engine.freshness_of("listing_card")?;
    ensure_eq!(f.dead_letters, model.summary().rejected, "dead letters of listing_card");

    // The switch survives a restart, pausing included.
    engine.set_kill_switch("listing_card", true)?;
    engine.shutdown()?;
    let engine = open(&path, pause)?;
    engine.flush()?;
    ensure!(switched_off(&engine)?, "still switched off after reopening");
    ensure_eq!(engine.freshness_of("listing_card")?.caught_up, !pause, "caught up after reopening");
    let late = rest.last().ok_or("a short stream")?;
    let created = ListingEvent::new(
        "listing-after-restart",
        late.occurred_at + 1,
        ListingEventKind::ListingCreated {
            title: "Loft".into(),
            price: 1_000.into(),
            district: "Mitte".into(),
        },
    );
    engine.dispatch(created.clone())?.wait()?;
    ensure_eq!(card(&engine, &created.aggregate_id)?.is_some(), !pause, "projected while still engaged");
    engine.set_kill_switch("listing_card", false)?;
    ensure!(!switched_off(&engine)?, "served after release");
    let mut model = model;
    model.apply(&created);
    ensure_matches_model(&engine, &model)?;
    ensure_applied_counts(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}

#[test]
fn outcomes_while_projection_is_paused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open(&dir.path().join("db.redb"), true)?;
    let created = |id: &str, at: u64| {
        ListingEvent::new(
            id,
            at,
            ListingEventKind::ListingCreated {
                title: "Loft".into(),
                price: 1_000.into(),
                district: "Mitte".into(),
            },
        )
    };
    let before = created("l-1", 1);
    ensure_eq!(engine.dispatch(before.clone())?.wait()?.outcome, driftless::EventOutcome::Applied, "before");
    engine.set_kill_switch("listing_card", true)?;

    // Already applied by every handler: a duplicate, paused or not, and not journaled.
    let head = engine.store().journal_head()?;
    let report = engine.dispatch(before)?.wait()?;
    ensure_eq!(report.outcome, driftless::EventOutcome::Duplicate, "a re-delivery of an applied event");
    ensure_eq!(report.position, None, "a duplicate's journal position");
    ensure_eq!(engine.store().journal_head()?, head, "the journal head after a duplicate");

    // New: applied by district_stats; listing_card gets it on release.
    let during = created("l-2", 2);
    ensure_eq!(engine.dispatch(during.clone())?.wait()?.outcome, driftless::EventOutcome::Applied, "new");
    // Its re-delivery is still needed by the paused handler.
    ensure_eq!(engine.dispatch(during)?.wait()?.outcome, driftless::EventOutcome::Deferred, "needed later");
    engine.set_kill_switch("listing_card", false)?;
    ensure!(card(&engine, "l-2")?.is_some(), "the paused handler caught up");
    let f = engine.freshness_of("listing_card")?;
    ensure!(f.caught_up && f.applied == 2, "listing_card after release: {f:?}");
    engine.shutdown()?;
    Ok(())
}
