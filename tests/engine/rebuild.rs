//! A rebuild swaps the read model in at once: readers see the old table or the new one.

use super::{fold, joined, options, stream, TestResult};
use driftless::{
    ApplyError, Engine, HandlerName, ProjectionContext, Projector, ReadAnswer, ReadRepository, TableId, Views,
};
use driftless_listings::{ListingCard, ListingCardProjector, ListingEvent, LISTING_CARD};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// `listing_card` with a switchable bug: while `buggy` is set it ignores every listing
/// whose number is odd. Fixing the bug and rebuilding is the rebuild's reason to exist.
struct SometimesBuggy {
    buggy: Arc<AtomicBool>,
}

fn skipped(listing_id: &str) -> bool {
    listing_id.bytes().last().is_some_and(|b| b % 2 == 1)
}

impl Projector<ListingEvent> for SometimesBuggy {
    fn handler_name(&self) -> HandlerName {
        ListingCardProjector.handler_name()
    }

    fn tables(&self) -> Vec<TableId> {
        ListingCardProjector.tables()
    }

    fn handles(&self, event: &ListingEvent) -> bool {
        !(self.buggy.load(Ordering::SeqCst) && skipped(&event.aggregate_id))
    }

    fn apply(
        &self,
        e: &ListingEvent,
        ctx: &ProjectionContext,
        views: &mut Views<'_>,
    ) -> Result<(), ApplyError> {
        ListingCardProjector.apply(e, ctx, views)
    }
}

fn snapshot(repo: &ReadRepository<String, ListingCard>) -> TestResult<BTreeMap<String, ListingCard>> {
    Ok(repo.iter()?.collect::<Result<BTreeMap<_, _>, _>>()?)
}

#[test]
fn readers_see_the_whole_old_table_or_the_whole_rebuilt_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = stream(3_000, 300, 8, 31);
    let (model, _) = fold(&events);
    let after: BTreeMap<String, ListingCard> = model.listing_cards();
    let before: BTreeMap<String, ListingCard> =
        after.iter().filter(|(id, _)| !skipped(id)).map(|(k, v)| (k.clone(), v.clone())).collect();
    ensure!(before.len() < after.len() && !before.is_empty(), "the bug must make a difference");

    let buggy = Arc::new(AtomicBool::new(true));
    let engine = Engine::builder(dir.path().join("db.redb"))
        .options(options())
        .projector(SometimesBuggy { buggy: Arc::clone(&buggy) })
        .open()?;
    engine.dispatch_batch(events.iter().cloned())?.wait()?;
    let ReadAnswer::Ready(old) = engine.read(&LISTING_CARD)? else {
        return Err("listing_card is switched off".into());
    };
    ensure!(snapshot(&old)? == before, "the buggy table");

    buggy.store(false, Ordering::SeqCst);
    let done = AtomicBool::new(false);
    let (seen_old, seen_new) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let report = std::thread::scope(|s| -> TestResult<driftless::ReplayReport> {
        let reader = s.spawn(|| -> TestResult {
            // Keep reading until the rebuild is done and one more snapshot was checked.
            loop {
                let finished = done.load(Ordering::SeqCst);
                let ReadAnswer::Ready(repo) = engine.read(&LISTING_CARD)? else {
                    return Err("listing_card is switched off".into());
                };
                let rows = snapshot(&repo)?;
                let count = repo.len()?;
                ensure_eq!(count, rows.len() as u64, "len() and the rows of one snapshot");
                if rows == before {
                    seen_old.fetch_add(1, Ordering::SeqCst);
                } else if rows == after {
                    seen_new.fetch_add(1, Ordering::SeqCst);
                } else {
                    return Err(format!(
                        "a snapshot with {} rows is neither the old table ({}) nor the rebuilt one ({})",
                        rows.len(),
                        before.len(),
                        after.len()
                    )
                    .into());
                }
                if finished {
                    return Ok(());
                }
            }
        });
        let report = engine.rebuild("listing_card");
        done.store(true, Ordering::SeqCst);
        joined(reader.join())?;
        Ok(report?)
    })?;
    ensure!(seen_new.load(Ordering::SeqCst) > 0, "the reader saw the rebuilt table");
    ensure_eq!(report.replayed, engine.store().journal_head()?, "journal entries replayed");
    ensure_eq!(report.applied, model.summary().applied, "events applied by the rebuild");
    ensure_eq!(report.dead_lettered, model.summary().rejected, "events dead-lettered by the rebuild");

    // A snapshot opened before the rebuild still reads the old table, whole.
    ensure!(snapshot(&old)? == before, "the old snapshot after the rebuild");
    ensure_eq!(old.len()?, before.len() as u64, "the old snapshot's length");
    let ReadAnswer::Ready(new) = engine.read(&LISTING_CARD)? else {
        return Err("listing_card is switched off".into());
    };
    ensure!(snapshot(&new)? == after, "the rebuilt table");
    let f = engine.freshness_of("listing_card")?;
    ensure!(f.caught_up, "caught up after the rebuild: {f:?}");
    ensure_eq!(f.applied, model.summary().applied, "applied after the rebuild");
    ensure_eq!(f.dead_letters, model.summary().rejected, "dead letters after the rebuild");
    drop((old, new));
    engine.shutdown()?;
    Ok(())
}
