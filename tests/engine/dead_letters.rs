//! Rejected events become dead letters; a retry after the state changed applies them; a
//! discard drops them.

use super::{cards, ensure_matches_model, open_listings, options, TestResult};
use driftless::EventOutcome;
use driftless_listings::{ListingEvent, ListingEventKind, ListingModel, Outcome};

const HANDLERS: [&str; 2] = ["listing_card", "district_stats"];

fn event(id: &str, at: u64, kind: ListingEventKind) -> ListingEvent {
    ListingEvent::new(id, at, kind)
}

fn create(id: &str, at: u64) -> ListingEvent {
    event(
        id,
        at,
        ListingEventKind::ListingCreated {
            title: "Loft".into(),
            price: 250_000.into(),
            district: "Wedding".into(),
        },
    )
}

fn inquiry(id: &str, at: u64, inquiry_id: &str) -> ListingEvent {
    event(id, at, ListingEventKind::InquiryReceived { inquiry_id: inquiry_id.into() })
}

#[test]
fn a_retry_after_the_state_changed_applies_the_dead_letter() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open_listings(&dir.path().join("db.redb"), options())?;
    let early = inquiry("l-1", 1, "q-1");
    let report = engine.dispatch(early.clone())?.wait()?;
    let EventOutcome::Rejected { reason } = &report.outcome else {
        return Err(format!("expected a rejection, got {:?}", report.outcome).into());
    };
    ensure_eq!(reason, "listing l-1 does not exist", "the reason");

    let letters = engine.dead_letters(None)?;
    ensure_eq!(letters.len(), 2, "one dead letter per handler");
    for h in HANDLERS {
        let letter = letters.iter().find(|d| d.handler == h).ok_or("a missing dead letter")?;
        ensure_eq!(letter.event_id, early.event_id, "the dead letter's event");
        ensure_eq!(letter.reason, "listing l-1 does not exist", "the dead letter's reason");
        ensure_eq!(letter.attempts, 1, "attempts");
        ensure_eq!(engine.freshness_of(h)?.dead_letters, 1, "dead letters in freshness of {h}");
    }

    // A retry while the state is unchanged fails again and counts the attempt: the event is
    // delivered once more, and both handlers try it.
    ensure_eq!(engine.retry_dead_letters(None)?, (1, 0), "retried and fixed");
    for letter in engine.dead_letters(None)? {
        ensure_eq!(letter.attempts, 2, "attempts after a failed retry");
    }

    // Create and publish: now the inquiry is valid.
    engine.dispatch(create("l-1", 2))?.wait()?;
    engine.dispatch(event("l-1", 3, ListingEventKind::ListingPublished))?.wait()?;
    // Retrying listing_card's dead letter delivers the event again: every handler that has
    // not applied it tries it, so district_stats's dead letter goes too.
    ensure_eq!(
        engine.retry_dead_letters(Some("listing_card"))?,
        (1, 1),
        "retried and fixed for listing_card"
    );
    ensure!(engine.dead_letters(None)?.is_empty(), "no dead letters left");
    ensure_eq!(engine.retry_dead_letters(None)?, (0, 0), "nothing left to retry");
    for h in HANDLERS {
        ensure_eq!(engine.freshness_of(h)?.dead_letters, 0, "dead letters in freshness of {h}");
    }

    // The rows are those of the stream in which the inquiry came after the publication.
    let mut model = ListingModel::new();
    for e in [create("l-1", 2), event("l-1", 3, ListingEventKind::ListingPublished), early.clone()] {
        ensure_eq!(model.apply(&e), Outcome::Applied, "the model applies {}", e.event_id);
    }
    ensure_matches_model(&engine, &model)?;
    let card = cards(&engine)?.remove("l-1").ok_or("no card")?;
    ensure_eq!((card.inquiries, card.version), (1, 3), "the card's inquiries and version");

    // Applied now: a re-delivery is a duplicate, and a retry of nothing is nothing.
    ensure_eq!(engine.dispatch(early.clone())?.wait()?.outcome, EventOutcome::Duplicate, "a re-delivery");
    ensure!(engine.retry_dead_letter("listing_card", &early.event_id)?.is_none(), "no dead letter to retry");
    ensure!(engine.retry_dead_letter("nobody", &early.event_id).is_err(), "an unknown handler");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_redelivery_after_the_state_changed_clears_the_dead_letter() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open_listings(&dir.path().join("db.redb"), options())?;
    let early = event("l-1", 1, ListingEventKind::ListingPriceChanged { price: 9 });
    ensure!(
        matches!(engine.dispatch(early.clone())?.wait()?.outcome, EventOutcome::Rejected { .. }),
        "rejected"
    );
    engine.dispatch(create("l-1", 2))?.wait()?;
    ensure_eq!(engine.dead_letters(None)?.len(), 2, "dead letters before the re-delivery");
    ensure_eq!(engine.dispatch(early)?.wait()?.outcome, EventOutcome::Applied, "the re-delivery");
    ensure!(engine.dead_letters(None)?.is_empty(), "the re-delivery cleared the dead letters");
    for h in HANDLERS {
        ensure_eq!(engine.freshness_of(h)?.dead_letters, 0, "dead letters in freshness of {h}");
    }
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_discarded_dead_letter_is_gone() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = open_listings(&dir.path().join("db.redb"), options())?;
    let stray = inquiry("l-9", 1, "q-9");
    ensure!(
        matches!(engine.dispatch(stray.clone())?.wait()?.outcome, EventOutcome::Rejected { .. }),
        "rejected"
    );
    ensure!(engine.discard_dead_letter("listing_card", &stray.event_id)?, "discarded");
    ensure!(!engine.discard_dead_letter("listing_card", &stray.event_id)?, "discarded twice");
    ensure_eq!(engine.freshness_of("listing_card")?.dead_letters, 0, "listing_card's dead letters");
    ensure_eq!(engine.freshness_of("district_stats")?.dead_letters, 1, "district_stats's dead letters");
    ensure!(engine.discard_dead_letter("district_stats", &stray.event_id)?, "discarded");
    ensure!(engine.dead_letters(None)?.is_empty(), "no dead letters left");
    ensure_eq!(engine.retry_dead_letters(None)?, (0, 0), "nothing to retry");
    // Discarding does not apply it: the read models are untouched.
    ensure_matches_model(&engine, &ListingModel::new())?;
    engine.shutdown()?;
    Ok(())
}
