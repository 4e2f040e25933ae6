//! Reliability: what survives a killed process, a power loss and a failing disk.
//!
//! Every test here holds the engine to one promise — every acknowledged event is applied
//! exactly once per projector, whatever happens to the process or the disk — over the
//! sample listings domain, and checks it the same way: the read models must equal the
//! reference fold ([`ListingModel`]) of exactly a prefix of the stream that contains every
//! acknowledged event, the offset index must hold one row per applied event, each handler
//! must count each applied event once, and re-delivering the stream must leave the fold of
//! the whole stream.
//!
//! | module | fault | how it is injected |
//! |---|---|---|
//! | [`kill`] | the process dies | the test binary re-runs itself as a child writer; SIGKILL |
//! | [`kill`] | two processes, one file | the parent opens the file the child holds |
//! | [`power_loss`] | power loss, twice | [`disk::SimDisk`]: unsynced writes kept, dropped, torn |
//! | [`io_errors`] | EIO, ENOSPC | [`disk::SimDisk`] fails one operation, or all from one on |
//!
//! Counts are small by default (the module takes about a minute in debug on two cores) and
//! grow with environment variables for the documented runs: `DRIFTLESS_KILL_RUNS`,
//! `DRIFTLESS_KILL_EVENTS`, `DRIFTLESS_KILL_WINDOW_MS`, `DRIFTLESS_KILL_SEED`,
//! `DRIFTLESS_POWERLOSS_SEEDS` and `DRIFTLESS_POWERLOSS_SECOND_CRASHES` (the I/O-error sweep
//! is exhaustive already). Each test prints a one-line summary (shown with `--nocapture`).

use disk::{Fault, SimDisk};
use driftless::{Durability, Engine, EngineOptions, OpenError, Projector, Store, Timestamp};
use driftless_domain::PreparedEvent;
use driftless_domain::Upcasters;
use driftless_listings::{
    generate_events, projectors, DistrictStats, GenConfig, ListingCard, ListingEvent, ListingEventKind,
    ListingModel, Outcome, DISTRICT_STATS, DISTRICT_STATS_HANDLER, GENERATED_START_MILLIS, LISTING_CARD,
    LISTING_CARD_HANDLER,
};
use driftless_storage::StoreWriter;
use driftless_storage::{ReadAnswer, StoreOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub(crate) use crate::TestResult;

pub(crate) mod disk;
mod io_errors;
mod kill;
mod power_loss;

/// The two handlers of the sample domain.
pub(crate) const HANDLERS: [&str; 2] = [LISTING_CARD_HANDLER, DISTRICT_STATS_HANDLER];

/// A count from the environment variable `name`, or `default` when it is unset.
///
/// # Errors
/// When the variable is set but is not a number.
pub(crate) fn env_count(name: &str, default: usize) -> TestResult<usize> {
    match std::env::var(name) {
        Ok(v) => Ok(v.trim().parse().map_err(|e| format!("{name}={v:?} is not a count: {e}"))?),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(format!("{name}: {e}").into()),
    }
}

/// The sample projectors, ready for [`Store::register`] or an engine builder.
pub(crate) fn listing_projectors() -> Vec<Arc<dyn Projector<ListingEvent>>> {
    projectors().into_iter().map(Arc::from).collect()
}

/// The reference fold of `events`, with each event's outcome in order.
pub(crate) fn fold(events: &[ListingEvent]) -> (ListingModel, Vec<Outcome>) {
    let mut model = ListingModel::new();
    let outcomes = events.iter().map(|e| model.apply(e)).collect();
    (model, outcomes)
}

fn rows<K, V>(store: &Store, def: &driftless::TableDef<K, V>) -> TestResult<BTreeMap<K, V>>
where
    K: driftless::ViewKey + Ord,
    V: driftless::ViewValue,
{
    match store.read(def)? {
        ReadAnswer::Ready(repo) => Ok(repo.iter()?.collect::<Result<BTreeMap<K, V>, _>>()?),
        ReadAnswer::UseSourceOfTruth { read_model, .. } => {
            Err(format!("{read_model} is switched off").into())
        }
    }
}

/// The two projected read models of a store.
pub(crate) fn read_models(
    store: &Store,
) -> TestResult<(BTreeMap<String, ListingCard>, BTreeMap<String, DistrictStats>)> {
    Ok((rows(store, &LISTING_CARD)?, rows(store, &DISTRICT_STATS)?))
}

/// How many distinct event ids the fold accepted: every id whose first delivery was applied
/// or rejected (the store keeps an offset row for each).
pub(crate) fn accepted_ids(events: &[ListingEvent], outcomes: &[Outcome]) -> u64 {
    let ids: BTreeSet<&str> = events
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| matches!(o, Outcome::Applied | Outcome::Rejected(_)))
        .map(|(e, _)| e.event_id.as_str())
        .collect();
    ids.len() as u64
}

/// What the store says was accepted and applied: event ids with an offset row, and each
/// handler's count of applied events.
fn applied_figures(store: &Store) -> TestResult<(u64, BTreeMap<String, u64>)> {
    let records = store.handler_records()?;
    let counts = records.into_iter().map(|(name, rec)| (name, rec.applied)).collect();
    Ok((store.offset_count()?, counts))
}

/// Checks that the store holds exactly `model`: both read models row for row (listing
/// versions count the events applied to each listing, so an event applied twice shows),
/// one offset-index row per accepted event id (`accepted`), and each handler's applied
/// count.
pub(crate) fn ensure_state(store: &Store, model: &ListingModel, accepted: u64, what: &str) -> TestResult {
    let (cards, stats) = read_models(store)?;
    let want_cards = model.listing_cards();
    if cards != want_cards {
        let differ: Vec<&String> = want_cards
            .keys()
            .chain(cards.keys())
            .filter(|k| cards.get(*k) != want_cards.get(*k))
            .take(3)
            .collect();
        let first = differ.first().map(|k| (cards.get(*k), want_cards.get(*k)));
        return Err(format!(
            "{what}: listing_card differs from the fold ({} rows, the fold has {}; differing keys \
             {differ:?}; first stored vs folded: {first:?})",
            cards.len(),
            want_cards.len()
        )
        .into());
    }
    ensure_eq!(stats, model.district_stats(), "{what}: district_stats differs from the fold");
    let applied = model.summary().applied;
    let (offsets, counts) = applied_figures(store)?;
    ensure_eq!(offsets, accepted, "{what}: event ids with offset rows vs events the fold accepted");
    for h in HANDLERS {
        ensure_eq!(counts.get(h).copied(), Some(applied), "{what}: events {h} counts as applied");
    }
    Ok(())
}

/// Checks that the store holds the fold of `events[..cut]` for one of the ascending
/// `cuts` — read models, offsets, applied counts and dead letters — and returns that cut:
/// no batch is half-applied, none applied twice.
pub(crate) fn ensure_some_prefix(
    store: &Store,
    events: &[ListingEvent],
    cuts: &[usize],
    what: &str,
) -> TestResult<usize> {
    let (offsets, _) = applied_figures(store)?;
    let letters = dead_letter_set(store)?;
    let mut model = ListingModel::new();
    let mut rejected = BTreeSet::new();
    let mut accepted = BTreeSet::new();
    let mut folded = 0;
    let mut seen = Vec::new();
    for &cut in cuts {
        for e in events.get(folded..cut).ok_or("a cut past the end of the stream")? {
            let outcome = model.apply(e);
            if matches!(outcome, Outcome::Applied | Outcome::Rejected(_)) {
                accepted.insert(e.event_id.clone());
            }
            match outcome {
                Outcome::Rejected(_) => {
                    rejected.extend(HANDLERS.iter().map(|h| (h.to_string(), e.event_id.clone())));
                }
                Outcome::Applied => {
                    for h in HANDLERS {
                        rejected.remove(&(h.to_string(), e.event_id.clone()));
                    }
                }
                _ => {}
            }
        }
        folded = cut;
        let count = accepted.len() as u64;
        seen.push((cut, count, rejected.len()));
        if count == offsets && rejected == letters {
            ensure_state(store, &model, count, &format!("{what} (as the fold of the first {cut} events)"))?;
            return Ok(cut);
        }
        if count > offsets {
            break;
        }
    }
    Err(format!(
        "{what}: {offsets} event ids with offset rows and {} dead letters are no allowed prefix of \
         the stream (cut, accepted, dead letters): {seen:?}",
        letters.len()
    )
    .into())
}

fn dead_letter_set(store: &Store) -> TestResult<BTreeSet<(String, String)>> {
    Ok(store.dead_letters(None)?.into_iter().map(|d| (d.handler, d.event_id)).collect())
}

/// Checks the offsets of `events[i]` for each `i` in `indices`, by the outcome `outcomes[i]`
/// of the fold of the whole stream: an applied event (or a duplicate or conflicting twin of
/// one) has an offset for both handlers, a rejected one has none and a dead letter for both.
pub(crate) fn ensure_offsets(
    store: &Store,
    events: &[ListingEvent],
    outcomes: &[Outcome],
    indices: impl IntoIterator<Item = usize>,
    what: &str,
) -> TestResult<usize> {
    let mut checked = 0;
    for i in indices {
        let (Some(e), Some(outcome)) = (events.get(i), outcomes.get(i)) else {
            return Err(format!("{what}: no event {i}").into());
        };
        for h in HANDLERS {
            let offset = store.offset(&e.event_id, h)?;
            match outcome {
                Outcome::Applied | Outcome::Duplicate | Outcome::Conflict { .. } => ensure!(
                    offset.is_some(),
                    "{what}: acknowledged event {i} ({}, {outcome}) has no offset for {h}",
                    e.event_id
                ),
                Outcome::Rejected(_) => {
                    ensure!(offset.is_none(), "{what}: rejected event {i} ({}) has an offset", e.event_id);
                    ensure!(
                        store.dead_letter(h, &e.event_id)?.is_some(),
                        "{what}: rejected event {i} ({}) has no dead letter for {h}",
                        e.event_id
                    );
                }
            }
        }
        checked += 1;
    }
    Ok(checked)
}

/// Checks that the dead letters are exactly the rejected events among `events` (for both
/// handlers).
pub(crate) fn ensure_dead_letters(store: &Store, events: &[ListingEvent], what: &str) -> TestResult {
    let (_, outcomes) = fold(events);
    let want: BTreeSet<(String, String)> = events
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, Outcome::Rejected(_)))
        .flat_map(|(e, _)| HANDLERS.iter().map(|h| (h.to_string(), e.event_id.clone())))
        .collect();
    ensure_eq!(dead_letter_set(store)?, want, "{what}: dead letters");
    Ok(())
}

/// The small stream of the power-loss and I/O-error sweeps, in 5 batches: creations, price
/// changes, publications, inquiries, re-deliveries, conflicting twins and one rejected
/// event.
pub(crate) fn small_batches() -> Vec<Vec<ListingEvent>> {
    let mut events = generate_events(GenConfig {
        events: 34,
        listings: 6,
        districts: 3,
        seed: 5,
        redeliveries: 0.2,
        conflicts: 2,
        invalid_lines: 0,
    });
    // An inquiry for a listing nobody created: rejected, dead-lettered.
    let stray = ListingEvent::new(
        "listing-999999",
        GENERATED_START_MILLIS + 1,
        ListingEventKind::InquiryReceived { inquiry_id: "stray".into() },
    );
    events.insert(events.len() / 2, stray);
    let size = events.len().div_ceil(5);
    events.chunks(size).map(<[ListingEvent]>::to_vec).collect()
}

/// An engine over the sample projectors, with immediate durability, on a simulated disk.
pub(crate) fn open_on(disk: &SimDisk) -> Result<Engine<ListingEvent>, driftless::BuildError> {
    open_with_cache(disk, EngineOptions::default().cache_bytes)
}

/// As [`open_on`], with a page cache of `cache_bytes`.
pub(crate) fn open_with_cache(
    disk: &SimDisk,
    cache_bytes: Option<usize>,
) -> Result<Engine<ListingEvent>, driftless::BuildError> {
    let options =
        EngineOptions { durability: Durability::Immediate, cache_bytes, ..EngineOptions::default() };
    let mut builder = Engine::builder("<simulated disk>").options(options);
    for p in listing_projectors() {
        builder = builder.projector_arc(p);
    }
    builder.open_with_backend(disk.clone())
}

/// How far a life of the engine got before its fault.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Life {
    /// Whether the engine opened (so the database was created and durably initialised).
    pub(crate) opened: bool,
    /// Batches whose receipts resolved.
    pub(crate) acknowledged: usize,
    /// Batches handed to the engine.
    pub(crate) dispatched: usize,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Found {
    /// No database: its creation never completed, and the open said so clearly.
    NoDatabase,
    /// The database, holding this many batches before re-delivery.
    Batches(usize),
}

impl Found {
    /// What the finding means, against what the life acknowledged.
    pub(crate) fn describe(self, life: Life) -> &'static str {
        match self {
            Found::NoDatabase => "no database (its creation never completed)",
            Found::Batches(k) if k == life.acknowledged => "the acknowledged batches",
            Found::Batches(_) => "the acknowledged batches and the one in flight",
        }
    }
}

/// Reopens `image` without faults and checks it against what the first life acknowledged.
pub(crate) fn reopen_and_check(
    image: Vec<u8>,
    life: Life,
    batches: &[Vec<ListingEvent>],
) -> TestResult<Found> {
    let disk = SimDisk::from_image(image, Fault::None);
    // The checker's own commits need no syncs.
    let options = StoreOptions { durability: Durability::Eventual, ..StoreOptions::default() };
    let mut store = match StoreWriter::open_with_backend(disk, options) {
        Ok(store) => store,
        Err(e) => {
            ensure!(!life.opened, "the database was created, yet reopening it failed: {e}");
            ensure!(
                matches!(e, OpenError::Corrupted { .. } | OpenError::NotDriftless { .. }),
                "reopening a half-created database gave an unclear error: {e:?}"
            );
            return Ok(Found::NoDatabase);
        }
    };
    ensure!(store.check_integrity()?, "redb's integrity check failed after the fault");
    let registry = store.register(listing_projectors(), &[], Upcasters::new())?;
    ensure!(registry.needs_rebuild.is_empty(), "the reopened database asks for rebuilds");
    let events: Vec<ListingEvent> = batches.iter().flatten().cloned().collect();
    let (full, outcomes) = fold(&events);
    let ends: Vec<usize> = batches
        .iter()
        .scan(0, |end, b| {
            *end += b.len();
            Some(*end)
        })
        .collect();
    let end_of = |k: usize| if k == 0 { 0 } else { ends.get(k - 1).copied().unwrap_or(events.len()) };
    let cuts: Vec<usize> = (life.acknowledged..=life.dispatched).map(end_of).collect();
    let cut = ensure_some_prefix(&store, &events, &cuts, "before re-delivery")?;
    ensure_offsets(&store, &events, &outcomes, 0..end_of(life.acknowledged), "acknowledged batches")?;
    // Re-deliver the whole stream, in one commit.
    let prepared = events.iter().cloned().map(PreparedEvent::new).collect::<Result<Vec<_>, _>>()?;
    store.project(&registry, &prepared, Timestamp(GENERATED_START_MILLIS + 10_000))?;
    ensure_state(&store, &full, accepted_ids(&events, &outcomes), "after re-delivery")?;
    ensure_dead_letters(&store, &events, "after re-delivery")?;
    ensure!(store.check_integrity()?, "redb's integrity check failed after re-delivery");
    Ok(Found::Batches(ends.iter().position(|&e| e == cut).map_or(0, |p| p + 1)))
}

/// The text of a caught panic.
pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_string())
}

/// Runs one case, turning a panic into an error that names the case.
pub(crate) fn no_panic<T>(case: &str, f: impl FnOnce() -> TestResult<T>) -> TestResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| format!("{case}: {e}").into()),
        Err(panic) => Err(format!("{case}: panicked: {}", panic_text(&panic)).into()),
    }
}
