//! Embedding driftless: the sample domain wired into an engine and a reconciliation
//! harness, as the CLI, the integration tests and the benchmarks use it.
//!
//! * [`engine_builder`] registers both projectors and the `district_leaderboard`
//!   materialized view ([`leaderboard_view`]).
//! * [`reconcilers`] gives one reconciler per projected read model: `listing_card` is
//!   refolded listing by listing from the journal ([`listing_card_reconciler`]);
//!   `district_stats` depends on every listing, so its expected rows are one fold of the
//!   whole journal, computed once per journal head and shared by every key of a run
//!   ([`district_stats_reconciler`]).
//!
//! ```
//! use driftless::reconcile::ReconcileMode;
//! use driftless::{EventOutcome, ReadAnswer};
//! use driftless_listings::embed::{engine_builder, reconcilers};
//! use driftless_listings::{generate_events, GenConfig, LISTING_CARD};
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let engine = engine_builder(dir.path().join("listings.redb")).open()?;
//! let config = GenConfig { events: 300, listings: 30, districts: 4, ..GenConfig::default() };
//! let reports = engine.dispatch_batch(generate_events(config))?.wait()?;
//! assert!(reports.iter().any(|r| r.outcome == EventOutcome::Applied));
//! engine.refresh_views()?;
//!
//! let ReadAnswer::Ready(cards) = engine.read(&LISTING_CARD)? else { return Err("switched off".into()) };
//! assert_eq!(cards.len()?, 30);
//!
//! let harness = engine.reconciliation().reconcilers(reconcilers(Arc::clone(engine.store()))).build()?;
//! let run = harness.run_once(ReconcileMode::Full, None, None)?;
//! assert!(run.read_models.iter().all(|r| r.drifted == 0 && r.errors == 0));
//! # Ok(()) }
//! ```

use crate::event::v1::ListingEventV1;
use crate::event::ListingEvent;
use crate::fold::{fold_listing, ListingModel};
use crate::leaderboard::{leaderboard, LeaderboardRow, DISTRICT_LEADERBOARD};
use crate::model::{DistrictStats, ListingCard, DISTRICT_STATS, LISTING_CARD};
use crate::projectors::projectors;
use driftless::reconcile::{
    compare_row, FnReconciler, ReconcileFailure, ReconcileMode, ReconcileResult, Reconciler,
    RefoldReconciler, SampleKey,
};
use driftless::{EngineBuilder, MaterializedView, Store, Upcasters, View, ViewSource};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// How many journal entries [`district_stats_reconciler`] reads at a time.
const JOURNAL_CHUNK: usize = 4_096;

/// An engine builder for the database at `path` with the sample domain registered: the
/// `listing_card` and `district_stats` projectors and the `district_leaderboard` view.
/// Settings (durability, batch size, clock, view refresh interval) can still be changed on
/// the returned builder.
pub fn engine_builder(path: impl Into<PathBuf>) -> EngineBuilder<ListingEvent> {
    let mut builder = EngineBuilder::new(path).view(leaderboard_view()).upcasters(upcasters());
    for projector in projectors() {
        builder = builder.projector_arc(Arc::from(projector));
    }
    builder
}

/// How the journal's older events of the sample domain are read: one step per schema
/// version of [`ListingEvent`]. Version 1 ([`ListingEventV1`], a `ListingCreated` price
/// without a currency) becomes version 2 with its price in VND.
///
/// ```
/// use driftless::codec;
/// use driftless_listings::embed::upcasters;
/// use driftless_listings::v1::{ListingEventKindV1, ListingEventV1};
/// use driftless_listings::{Currency, ListingEventKind, Money};
///
/// let old = ListingEventV1 {
///     event_id: "l-1:1:ListingCreated".into(),
///     aggregate_id: "l-1".into(),
///     occurred_at: 1,
///     kind: ListingEventKindV1::ListingCreated { title: "Loft".into(), price: 5, district: "Mitte".into() },
/// };
/// let stored = codec::stable_encode(&old)?;
/// let event = upcasters().decode(1, &stored)?;
/// assert!(matches!(event.kind, ListingEventKind::ListingCreated { price, .. } if price == Money::new(5, Currency::VND)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn upcasters() -> Upcasters<ListingEvent> {
    Upcasters::new().upcast(1, |old: ListingEventV1| ListingEvent::from(old))
}

/// The `district_leaderboard` materialized view: `district_stats` ranked by [`leaderboard`],
/// keyed by rank. Its refresh fails (and the view keeps its rows) while `district_stats`
/// is switched off.
#[must_use]
pub fn leaderboard_view() -> impl MaterializedView {
    View::new(DISTRICT_LEADERBOARD, |source: &ViewSource<'_>| {
        let stats = source.read_model(&DISTRICT_STATS)?;
        let rows = stats
            .iter()
            .map_err(|e| e.to_string())?
            .map(|row| row.map(|(_, stats)| stats))
            .collect::<Result<Vec<DistrictStats>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(leaderboard(rows).into_iter().map(|row| (row.rank, row)).collect::<Vec<(u64, LeaderboardRow)>>())
    })
}

/// One reconciler per projected read model of the sample domain, in registry order:
/// [`listing_card_reconciler`] and [`district_stats_reconciler`].
#[must_use]
pub fn reconcilers(store: Arc<Store>) -> Vec<Arc<dyn Reconciler>> {
    vec![Arc::new(listing_card_reconciler(Arc::clone(&store))), Arc::new(district_stats_reconciler(store))]
}

/// The reconciler of `listing_card`: each card is refolded from its listing's journal
/// entries with [`fold_listing`].
#[must_use]
pub fn listing_card_reconciler(store: Arc<Store>) -> RefoldReconciler<ListingEvent, ListingCard> {
    RefoldReconciler::new(store, LISTING_CARD, |events: &[ListingEvent]| fold_listing(events))
}

/// The expected `district_stats` rows, as of one journal head.
type Expected = Arc<BTreeMap<String, DistrictStats>>;

/// The journal fold behind [`district_stats_reconciler`], memoised by journal head.
struct DistrictFold {
    store: Arc<Store>,
    /// How journal entries of older schema versions are read.
    upcasters: Upcasters<ListingEvent>,
    memo: Mutex<Option<(u64, Expected)>>,
}

impl DistrictFold {
    /// The expected rows: [`ListingModel::replay`] over the whole journal, each entry read
    /// at its schema version through the upcasters. The fold is
    /// memoised with the journal head it read up to (the journal only grows, so a head
    /// names one content). With `fresh`, a memo older than the current head is refolded;
    /// without, any memo is used as it is.
    fn expected(&self, fresh: bool) -> Result<Expected, ReconcileFailure> {
        if !self.store.journal_enabled() {
            return Err(ReconcileFailure::NoJournal);
        }
        // Held while folding, so that concurrent workers wait for one fold instead of each
        // doing their own.
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        if !fresh {
            if let Some((_, expected)) = memo.as_ref() {
                return Ok(Arc::clone(expected));
            }
        }
        let head = self.store.journal_head()?;
        if let Some((at, expected)) = memo.as_ref() {
            if *at == head {
                return Ok(Arc::clone(expected));
            }
        }
        let mut model = ListingModel::new();
        let mut next = 1u64;
        while next <= head {
            let entries = self.store.journal_range(next, JOURNAL_CHUNK)?;
            let Some(last) = entries.last().map(|e| e.position) else { break };
            for entry in entries.iter().filter(|e| e.position <= head) {
                model.replay(&self.upcasters.decode(entry.schema_version, &entry.body)?);
            }
            next = last.saturating_add(1);
        }
        let expected = Arc::new(model.district_stats());
        *memo = Some((head, Arc::clone(&expected)));
        Ok(expected)
    }

    /// The keys of a run: this is where a run folds the journal (within the harness's
    /// listing timeout), so that checking a key only looks the fold up.
    fn keys(&self, budget: usize) -> Result<Vec<SampleKey>, ReconcileFailure> {
        let mut keys: BTreeSet<SampleKey> = self.expected(true)?.keys().cloned().collect();
        for (raw_key, _) in self.store.raw_rows(DISTRICT_STATS.name())? {
            match String::from_utf8(raw_key) {
                Ok(key) => {
                    keys.insert(key);
                }
                Err(e) => tracing::warn!(
                    key = %String::from_utf8_lossy(e.as_bytes()),
                    "a district_stats key is not UTF-8, so it is not a district; it is not reconciled"
                ),
            }
        }
        Ok(keys.into_iter().take(budget).collect())
    }

    fn check(&self, key: &SampleKey) -> Result<ReconcileResult, ReconcileFailure> {
        let result = self.compare(key, &self.expected(false)?)?;
        if result.is_drifted() {
            // Events may have been applied since the run folded the journal: compare again
            // with a fold up to the current head before calling it drift.
            return self.compare(key, &self.expected(true)?);
        }
        Ok(result)
    }

    fn compare(&self, key: &SampleKey, expected: &Expected) -> Result<ReconcileResult, ReconcileFailure> {
        compare_row(
            &self.store,
            DISTRICT_STATS.name(),
            key,
            expected.get(key).cloned(),
            "no listing of the journal is in this district",
        )
    }
}

/// The reconciler of `district_stats`.
///
/// A district's figures depend on every listing in it, so a key cannot be refolded on its
/// own: the expected rows are [`ListingModel::replay`] over the whole journal (entries of
/// older schema versions read through [`upcasters`]), computed
/// once per run (when the keys are listed, and only if the journal grew since the last
/// fold) and compared row by row with the stored ones; a row that differs is compared
/// again with a fold up to the current journal head, so that events applied during the
/// run are not taken for drift. Its keys are the union of the stored
/// districts and the expected ones, in byte order; a missing, extra, different or damaged
/// stored row is drift.
#[must_use]
pub fn district_stats_reconciler(store: Arc<Store>) -> FnReconciler {
    let fold = Arc::new(DistrictFold { store, upcasters: upcasters(), memo: Mutex::new(None) });
    let lister = Arc::clone(&fold);
    FnReconciler::new(
        DISTRICT_STATS.name(),
        move |_mode: ReconcileMode, budget| lister.keys(budget),
        move |key| fold.check(key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate_events, GenConfig};
    use driftless::codec;
    use driftless::reconcile::{ReconcileHarness, ReconcileMode};
    use driftless::{Durability, Engine, ReadAnswer};
    use std::collections::BTreeSet;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn open(dir: &tempfile::TempDir) -> Result<Engine<ListingEvent>, driftless::BuildError> {
        engine_builder(dir.path().join("db.redb")).durability(Durability::Eventual).open()
    }

    fn config() -> GenConfig {
        GenConfig { events: 600, listings: 40, districts: 5, seed: 3, ..GenConfig::default() }
    }

    fn harness(engine: &Engine<ListingEvent>) -> Result<ReconcileHarness, Box<dyn std::error::Error>> {
        Ok(engine.reconciliation().reconcilers(reconcilers(Arc::clone(engine.store()))).build()?)
    }

    #[test]
    fn the_view_ranks_districts_and_a_clean_database_reconciles_clean() -> TestResult {
        let dir = tempfile::tempdir()?;
        let engine = open(&dir)?;
        engine.dispatch_batch(generate_events(config()))?.wait()?;
        engine.refresh_views()?;
        let ReadAnswer::Ready(board) = engine.read(&DISTRICT_LEADERBOARD)? else {
            return Err("the leaderboard is switched off".into());
        };
        assert_eq!(board.len()?, 5);
        assert_eq!(board.get(&1)?.map(|r| r.rank), Some(1));
        let report = harness(&engine)?.run_once(ReconcileMode::Full, None, None)?;
        let checked: Vec<(&str, u64, u64, u64)> = report
            .read_models
            .iter()
            .map(|r| (r.read_model.as_str(), r.sampled, r.drifted, r.errors))
            .collect();
        assert_eq!(checked, [("listing_card", 40, 0, 0), ("district_stats", 5, 0, 0)]);
        Ok(())
    }

    #[test]
    fn changed_missing_and_extra_district_rows_are_drift() -> TestResult {
        let dir = tempfile::tempdir()?;
        let engine = open(&dir)?;
        engine.dispatch_batch(generate_events(config()))?.wait()?;
        let store = engine.store();
        let rows = store.raw_rows(DISTRICT_STATS.name())?;
        let [(changed, value), (removed, _), ..] = rows.as_slice() else {
            return Err("fewer than 2 districts".into());
        };
        let mut stats: DistrictStats = codec::decode(value)?;
        stats.inquiries += 7;
        engine.chaos_tamper_row(DISTRICT_STATS.name(), changed, Some(&codec::encode(&stats)?))?;
        engine.chaos_tamper_row(DISTRICT_STATS.name(), removed, None)?;
        let extra = DistrictStats::empty("Atlantis");
        engine.chaos_tamper_row(DISTRICT_STATS.name(), b"Atlantis", Some(&codec::encode(&extra)?))?;

        let report = harness(&engine)?.run_once(ReconcileMode::Full, Some(DISTRICT_STATS.name()), None)?;
        let r = report.read_model(DISTRICT_STATS.name()).ok_or("no report")?;
        assert_eq!((r.sampled, r.drifted, r.errors), (6, 3, 0));
        let keys: BTreeSet<Vec<u8>> = r.drifted_keys.iter().map(|d| d.key.clone().into_bytes()).collect();
        let expected: BTreeSet<Vec<u8>> = [changed.clone(), removed.clone(), b"Atlantis".to_vec()].into();
        assert_eq!(keys, expected);
        Ok(())
    }

    #[test]
    fn the_district_fold_is_computed_once_per_journal_head() -> TestResult {
        let dir = tempfile::tempdir()?;
        let engine = open(&dir)?;
        let events = generate_events(config());
        let (first, rest) = events.split_at(300);
        engine.dispatch_batch(first.to_vec())?.wait()?;
        let fold = DistrictFold {
            store: Arc::clone(engine.store()),
            upcasters: upcasters(),
            memo: Mutex::new(None),
        };
        let a = fold.expected(true)?;
        assert!(Arc::ptr_eq(&a, &fold.expected(true)?), "the same head folds once");
        engine.dispatch_batch(rest.to_vec())?.wait()?;
        assert!(Arc::ptr_eq(&a, &fold.expected(false)?), "without `fresh` the memo stands");
        let b = fold.expected(true)?;
        assert!(!Arc::ptr_eq(&a, &b), "a longer journal is folded again");
        let mut model = ListingModel::new();
        for e in &events {
            model.apply(e);
        }
        assert_eq!(*b, model.district_stats());
        Ok(())
    }
}
