//! A projector added later catches up from the journal; a renamed one is rebuilt.

use super::{
    cards, ensure_applied_counts, ensure_matches_model, fold, open_listings, options, stats, stream,
    wait_until, Renamed, TestResult,
};
use driftless::{Engine, HandlerName};
use driftless_listings::{DistrictStatsProjector, ListingCardProjector, ListingEvent, ListingModel};

/// Projects `events` with `listing_card` only, then closes the engine.
fn project_cards_only(path: &std::path::Path, events: &[ListingEvent]) -> TestResult {
    let engine = Engine::builder(path).options(options()).projector(ListingCardProjector).open()?;
    engine.dispatch_batch(events.iter().cloned())?.wait()?;
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_projector_added_later_catches_up_from_the_journal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.redb");
    let all = stream(1_700, 150, 6, 21);
    let events = all.get(..1_500).ok_or("a short stream")?;
    let (model, _) = fold(events);
    project_cards_only(&path, events)?;

    let engine = open_listings(&path, options())?;
    wait_until("district_stats is caught up", || Ok(engine.freshness_of("district_stats")?.caught_up))?;
    ensure_matches_model(&engine, &model)?;
    ensure_applied_counts(&engine, &model)?;
    let rejected = model.summary().rejected;
    ensure_eq!(
        engine.dead_letters(Some("district_stats"))?.len() as u64,
        rejected,
        "dead letters of the newcomer"
    );
    ensure_eq!(
        engine.dead_letters(Some("listing_card"))?.len() as u64,
        rejected,
        "dead letters of the first"
    );

    // Both go on together, each event once.
    let (model, outcomes) = fold(&all);
    let reports = engine.dispatch_batch(all.iter().skip(events.len()).cloned())?.wait()?;
    for (report, expected) in reports.iter().zip(outcomes.iter().skip(events.len())) {
        ensure!(super::same_outcome(&report.outcome, expected), "{:?} vs {expected:?}", report.outcome);
    }
    ensure_matches_model(&engine, &model)?;
    ensure_applied_counts(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_flush_after_open_waits_for_the_catch_up() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.redb");
    let events = stream(800, 80, 5, 22);
    let (model, _) = fold(&events);
    project_cards_only(&path, &events)?;

    let engine = open_listings(&path, options())?;
    engine.flush()?;
    let f = engine.freshness_of("district_stats")?;
    ensure!(f.caught_up, "district_stats is caught up after a flush: {f:?}");
    ensure_eq!(stats(&engine)?, model.district_stats(), "district_stats after a flush");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_renamed_handler_rebuilds_its_tables_without_applying_twice() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db.redb");
    let all = stream(1_400, 120, 6, 23);
    let events = all.get(..1_200).ok_or("a short stream")?;
    let (model, _) = fold(events);
    {
        let engine = open_listings(&path, options())?;
        engine.dispatch_batch(events.iter().cloned())?.wait()?;
        ensure_matches_model(&engine, &model)?;
        engine.shutdown()?;
    }

    let renamed = Renamed { name: HandlerName::new("listing_card_v2")? };
    let engine = Engine::builder(&path)
        .options(options())
        .projector(renamed)
        .projector(DistrictStatsProjector)
        .open()?;
    engine.flush()?;
    ensure_eq!(engine.handlers(), ["listing_card_v2", "district_stats"], "the registered handlers");
    let f = engine.freshness_of("listing_card")?;
    ensure_eq!(f.owner, "listing_card_v2", "the owner of listing_card");
    ensure!(f.caught_up, "the renamed handler is caught up: {f:?}");
    ensure_matches_model(&engine, &model)?;
    ensure_applied_counts(&engine, &model)?;

    // The renamed handler goes on from where the journal ends, once per event.
    let (model, _) = fold(&all);
    engine.dispatch_batch(all.iter().skip(events.len()).cloned())?.wait()?;
    ensure_matches_model(&engine, &model)?;
    ensure_applied_counts(&engine, &model)?;
    engine.shutdown()?;

    // Reopening under the new name is a plain restart: nothing is rebuilt or re-applied.
    let engine = Engine::builder(&path)
        .options(options())
        .projector(Renamed { name: HandlerName::new("listing_card_v2")? })
        .projector(DistrictStatsProjector)
        .open()?;
    engine.flush()?;
    ensure_matches_model(&engine, &model)?;
    ensure_applied_counts(&engine, &model)?;
    ensure_card_versions(&cards(&engine)?, &model)?;
    engine.shutdown()?;
    Ok(())
}

/// A card's version counts the events applied to it: a double application would show.
fn ensure_card_versions(
    cards: &std::collections::BTreeMap<String, driftless_listings::ListingCard>,
    model: &ListingModel,
) -> TestResult {
    for (id, card) in cards {
        let expected = model.card(id).map(|c| c.version);
        ensure_eq!(Some(card.version), expected, "the version of {id}");
    }
    Ok(())
}
