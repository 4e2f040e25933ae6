//! The built-in reconciler of per-aggregate read models: refold the journal, compare.

use crate::port::{ReconcileFailure, ReconcileSession, Reconciler};
use driftless_domain::codec;
use driftless_domain::{Event, ReconcileMode, ReconcileResult, SampleKey, TableDef, Upcasters, ViewValue};
use driftless_storage::{EventBodies, Snapshot, Store};
use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// The longest rendering of one row in a drift reason, in characters.
const MAX_ROW_TEXT: usize = 300;

type FoldFn<E, V> = dyn Fn(&[E]) -> Option<V> + Send + Sync;

/// Reconciles a read model whose key is the aggregate id and whose row is a fold of that
/// aggregate's events.
///
/// For a key it reads the aggregate's events from the journal
/// ([`Store::journal_for_aggregate`], journal order), decodes them as `E` (upcasting those
/// stored at an older schema version with the upcasters registered with the store's
/// projectors, [`Store::upcasters`]), folds them into
/// the expected row (`None`: no row) and compares it with the stored row (read raw,
/// ignoring the kill switch). A missing, extra, different or damaged stored row is drift,
/// with a reason such as
/// `stored row differs: Card { price: 500 } vs expected Card { price: 450 }`. A journal
/// event that does not decode is an error (the source of truth is unreadable), not drift.
///
/// Its keys are the aggregate ids found in the table or in the journal, in byte order. The
/// harness's workers check a chunk of keys through one [`ReconcileSession`], which reads
/// them all in one snapshot.
///
/// ```no_run
/// # use driftless_domain::{Event, TableDef, Timestamp};
/// # use driftless_reconciler::RefoldReconciler;
/// # use driftless_storage::{StoreOptions, StoreWriter};
/// # use std::sync::Arc;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Priced { listing: String, at: u64, price: u64 }
/// # impl Event for Priced {
/// #     fn aggregate_id(&self) -> &str { &self.listing }
/// #     fn event_name(&self) -> &str { "Priced" }
/// #     fn occurred_at(&self) -> Timestamp { Timestamp(self.at) }
/// # }
/// const PRICES: TableDef<String, u64> = TableDef::new("prices", 1);
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let writer = StoreWriter::open("prices.redb", StoreOptions::default())?;
/// let reconciler = RefoldReconciler::new(Arc::clone(writer.store()), PRICES, |events: &[Priced]| events.last().map(|e| e.price));
/// # Ok(()) }
/// ```
pub struct RefoldReconciler<E, V> {
    store: Arc<Store>,
    table: TableDef<String, V>,
    fold: Box<FoldFn<E, V>>,
    marker: PhantomData<fn(E)>,
}

impl<E: Event, V: ViewValue + PartialEq> RefoldReconciler<E, V> {
    /// A reconciler of `table` in `store` that expects each row to be `fold` of its
    /// aggregate's events (in journal order).
    #[must_use]
    pub fn new(
        store: Arc<Store>,
        table: TableDef<String, V>,
        fold: impl Fn(&[E]) -> Option<V> + Send + Sync + 'static,
    ) -> Self {
        Self { store, table, fold: Box::new(fold), marker: PhantomData }
    }

    /// The row the journal says `key` should have.
    ///
    /// # Errors
    /// [`ReconcileFailure`] when the journal cannot be read or an event does not decode.
    pub fn expected_row(&self, key: &str) -> Result<Option<V>, ReconcileFailure> {
        let mut session = RefoldSession::new(self);
        let snapshot = self.store.snapshot()?;
        session.expected_row_in(&snapshot, key)
    }
}

/// A [`RefoldReconciler`]'s session: one snapshot, taken at its first key, for all its keys,
/// and buffers reused from key to key.
struct RefoldSession<'r, E, V> {
    reconciler: &'r RefoldReconciler<E, V>,
    snapshot: Option<Snapshot>,
    bodies: EventBodies,
    /// How events stored under older schema versions are read: the upcasters registered
    /// with the store's projectors.
    upcasters: Arc<Upcasters<E>>,
}

impl<'r, E: Event, V: ViewValue + PartialEq> RefoldSession<'r, E, V> {
    fn new(reconciler: &'r RefoldReconciler<E, V>) -> Self {
        let upcasters = reconciler.store.upcasters::<E>();
        Self { reconciler, snapshot: None, bodies: EventBodies::new(), upcasters }
    }

    /// The row the journal says `key` should have, as of `snapshot`.
    fn expected_row_in(&mut self, snapshot: &Snapshot, key: &str) -> Result<Option<V>, ReconcileFailure> {
        if !self.reconciler.store.journal_enabled() {
            return Err(ReconcileFailure::NoJournal);
        }
        self.bodies.clear();
        snapshot.aggregate_bodies(key, &mut self.bodies)?;
        let events = self
            .bodies
            .iter()
            .map(|(version, body)| self.upcasters.decode(version, body))
            .collect::<Result<Vec<E>, _>>()?;
        Ok((self.reconciler.fold)(&events))
    }
}

impl<E: Event, V: ViewValue + PartialEq> ReconcileSession for RefoldSession<'_, E, V> {
    fn reconcile(&mut self, key: &SampleKey) -> Result<ReconcileResult, ReconcileFailure> {
        // The journal and the row are read in one snapshot, so that a commit between the
        // two reads cannot look like drift.
        let snapshot = match self.snapshot.take() {
            Some(snapshot) => snapshot,
            None => self.reconciler.store.snapshot()?,
        };
        let checked = self.expected_row_in(&snapshot, key).and_then(|expected| {
            compare_row_in(
                &snapshot,
                self.reconciler.table.name(),
                key,
                expected,
                "the journal folds to no row",
            )
        });
        self.snapshot = Some(snapshot);
        checked
    }
}

impl<E, V> fmt::Debug for RefoldReconciler<E, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefoldReconciler").field("table", &self.table).finish_non_exhaustive()
    }
}

impl<E: Event, V: ViewValue + PartialEq> Reconciler for RefoldReconciler<E, V> {
    fn read_model(&self) -> &str {
        self.table.name()
    }

    fn list_sample_keys(
        &self,
        _mode: ReconcileMode,
        sample_budget: usize,
    ) -> Result<Vec<SampleKey>, ReconcileFailure> {
        if !self.store.journal_enabled() {
            return Err(ReconcileFailure::NoJournal);
        }
        // File the journal's tail in the per-aggregate index first, so that each key's
        // refold reads its events through the index instead of scanning the tail. This writes
        // only that index, never a read model.
        self.store.file_aggregates().map_err(|e| ReconcileFailure::other(e.to_string()))?;
        // Both sources are in byte order, so the first `sample_budget` keys of their union
        // are among the first `sample_budget` of each.
        let mut keys: BTreeSet<SampleKey> = BTreeSet::new();
        for raw_key in self.store.raw_keys(self.table.name(), sample_budget)? {
            match String::from_utf8(raw_key) {
                Ok(key) => {
                    keys.insert(key);
                }
                Err(e) => tracing::warn!(
                    read_model = self.table.name(),
                    key = %String::from_utf8_lossy(e.as_bytes()),
                    "a stored key is not UTF-8, so it is not an aggregate id; it is not reconciled"
                ),
            }
        }
        keys.extend(self.store.journal_aggregates(sample_budget)?);
        Ok(keys.into_iter().take(sample_budget).collect())
    }

    fn reconcile(&self, key: &SampleKey) -> Result<ReconcileResult, ReconcileFailure> {
        RefoldSession::new(self).reconcile(key)
    }

    fn session(&self) -> Option<Box<dyn ReconcileSession + '_>> {
        Some(Box::new(RefoldSession::new(self)))
    }
}

/// Compares the stored row of `key` in `read_model` with the `expected` one: in sync when
/// both are absent or equal; otherwise a drift whose reason names both rows. A stored row
/// that fails to decode (its checksum, say) is a drift too. `why_none` says why no row is
/// expected, for the reason of a row that should not exist.
///
/// # Errors
/// [`ReconcileFailure::Read`] when the row cannot be read.
pub fn compare_row<V: ViewValue + PartialEq>(
    store: &Store,
    read_model: &str,
    key: &SampleKey,
    expected: Option<V>,
    why_none: &str,
) -> Result<ReconcileResult, ReconcileFailure> {
    compare_row_in(&store.snapshot()?, read_model, key, expected, why_none)
}

/// [`compare_row`], reading the stored row in `snapshot`: the one `expected` was computed
/// in, so that nothing committed in between is taken for drift.
///
/// # Errors
/// [`ReconcileFailure::Read`] when the row cannot be read.
pub fn compare_row_in<V: ViewValue + PartialEq>(
    snapshot: &Snapshot,
    read_model: &str,
    key: &SampleKey,
    expected: Option<V>,
    why_none: &str,
) -> Result<ReconcileResult, ReconcileFailure> {
    let stored = match snapshot.raw_row(read_model, key.as_bytes())? {
        None => None,
        Some(bytes) => match codec::decode::<V>(&bytes) {
            Ok(row) => Some(row),
            Err(e) => {
                return Ok(ReconcileResult::drifted(key.clone(), format!("the stored row is damaged: {e}")))
            }
        },
    };
    Ok(match (stored, expected) {
        (None, None) => ReconcileResult::in_sync(key.clone()),
        (Some(s), Some(x)) if s == x => ReconcileResult::in_sync(key.clone()),
        (Some(s), Some(x)) => ReconcileResult::drifted(
            key.clone(),
            format!("stored row differs: {} vs expected {}", show(&s), show(&x)),
        ),
        (None, Some(x)) => {
            ReconcileResult::drifted(key.clone(), format!("row missing: expected {}", show(&x)))
        }
        (Some(s), None) => {
            ReconcileResult::drifted(key.clone(), format!("row present but {why_none}: stored {}", show(&s)))
        }
    })
}

/// The Debug rendering of `row`, cut to [`MAX_ROW_TEXT`] characters.
fn show(row: &impl fmt::Debug) -> String {
    let text = format!("{row:?}");
    match text.char_indices().nth(MAX_ROW_TEXT) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or_default()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::show;

    #[test]
    fn long_rows_are_cut_on_a_character_boundary() {
        assert_eq!(show(&5u64), "5");
        let long = "é".repeat(400);
        let shown = show(&long);
        assert!(shown.ends_with('…'));
        assert_eq!(shown.chars().count(), super::MAX_ROW_TEXT + 1);
    }
}
