//! Materialized views: read models rebuilt from a source by a refresh function.

use driftless_domain::{codec, TableDef, TableId, ViewKey, ViewValue};
use driftless_storage::{JournalEntry, RawRow, ReadAnswer, ReadRepository, Store};

/// What a refresh function may read: other read models and the journal.
pub struct ViewSource<'a> {
    pub(crate) store: &'a Store,
}

impl std::fmt::Debug for ViewSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewSource").finish_non_exhaustive()
    }
}

impl ViewSource<'_> {
    /// A read model to refresh from.
    ///
    /// # Errors
    /// A text error when it cannot be read or its kill switch is engaged (a view is not
    /// refreshed from a read model that is not trusted).
    pub fn read_model<K: ViewKey, V: ViewValue>(
        &self,
        def: &TableDef<K, V>,
    ) -> Result<ReadRepository<K, V>, String> {
        match self.store.read(def).map_err(|e| e.to_string())? {
            ReadAnswer::Ready(r) => Ok(r),
            ReadAnswer::UseSourceOfTruth { read_model, .. } => {
                Err(format!("the source read model {read_model} is switched off"))
            }
        }
    }

    /// Up to `limit` journal entries from position `from` on.
    ///
    /// # Errors
    /// A text error when the journal cannot be read.
    pub fn journal(&self, from: u64, limit: usize) -> Result<Vec<JournalEntry>, String> {
        self.store.journal_range(from, limit).map_err(|e| e.to_string())
    }
}

/// A materialized view, type-erased for the engine.
pub trait MaterializedView: Send + Sync + 'static {
    /// The view's table.
    fn table(&self) -> TableId;

    /// Computes every row of the view as `(key bytes, value envelope)` pairs.
    ///
    /// # Errors
    /// A text error; the view keeps its previous rows.
    fn refresh(&self, source: &ViewSource<'_>) -> Result<Vec<RawRow>, String>;
}

/// A typed materialized view: a table and a refresh function over a [`ViewSource`].
pub struct View<K, V, F> {
    def: TableDef<K, V>,
    refresh: F,
}

impl<K: ViewKey, V: ViewValue, F> View<K, V, F>
where
    F: Fn(&ViewSource<'_>) -> Result<Vec<(K, V)>, String> + Send + Sync + 'static,
{
    /// A view stored in `def`, computed by `refresh`.
    pub fn new(def: TableDef<K, V>, refresh: F) -> Self {
        Self { def, refresh }
    }
}

impl<K: ViewKey, V: ViewValue, F> MaterializedView for View<K, V, F>
where
    F: Fn(&ViewSource<'_>) -> Result<Vec<(K, V)>, String> + Send + Sync + 'static,
{
    fn table(&self) -> TableId {
        self.def.id()
    }

    fn refresh(&self, source: &ViewSource<'_>) -> Result<Vec<RawRow>, String> {
        let rows = (self.refresh)(source)?;
        rows.into_iter()
            .map(|(k, v)| Ok((k.to_key_bytes(), codec::encode(&v).map_err(|e| e.to_string())?)))
            .collect()
    }
}
