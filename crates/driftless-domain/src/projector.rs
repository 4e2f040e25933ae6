//! Projectors, the context they are applied with, and the views they write through.
//!
//! A projector never touches storage directly. `apply` receives a [`Views`], which reaches
//! only the tables the projector declared and buffers every write in a [`WriteSet`]. Only
//! the storage layer turns a write set into committed rows, in the same transaction as the
//! event's offset, and only after `apply` returned `Ok`: a failing `apply` leaves nothing
//! behind. Code that builds a `Views` of its own can call `apply`, but its writes land in
//! its own write set and nowhere else.

use crate::codec::{self, CodecError};
use crate::event::{Event, PayloadHash};
use crate::ids::{EventId, HandlerName, Timestamp};
use crate::table::{KeyDecodeError, TableDef, TableId, ViewKey, ViewValue};
use std::collections::BTreeMap;
use std::marker::PhantomData;

/// What a projector is told about the event it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionContext {
    /// The event's id.
    pub event_id: EventId,
    /// The projector's handler name.
    pub handler: HandlerName,
    /// When the event happened.
    pub occurred_at: Timestamp,
    /// When it is being applied (the commit's clock reading).
    pub applied_at: Timestamp,
    /// blake3 of the event's stable encoding.
    pub payload_hash: PayloadHash,
    /// The event's position in the journal (0 when the engine keeps no journal).
    pub position: u64,
}

/// An error raised while reading or writing a view.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The projector asked for a table it did not declare.
    #[error("handler {handler} did not declare the table {table}, so it cannot reach it")]
    TableNotOwned {
        /// The projector.
        handler: String,
        /// The table it asked for.
        table: &'static str,
    },
    /// The projector declared the table with other key or row types.
    #[error("the table {table} was declared with other key or row types than the ones used")]
    TypeMismatch {
        /// The table.
        table: &'static str,
    },
    /// A row is too large to store.
    #[error("a row of {table} is too large to store: {len} bytes, more than the {limit} allowed")]
    TooLarge {
        /// The table.
        table: String,
        /// The row's encoded length.
        len: usize,
        /// The most a stored value may hold.
        limit: usize,
    },
    /// A stored row did not decode.
    #[error("a row of {table} is unreadable: {source}")]
    Codec {
        /// The table.
        table: String,
        /// What the codec said.
        #[source]
        source: CodecError,
    },
    /// A stored key did not decode.
    #[error("a key of {table} is unreadable: {source}")]
    Key {
        /// The table.
        table: String,
        /// What the key decoder said.
        #[source]
        source: KeyDecodeError,
    },
    /// The storage layer failed.
    #[error("reading {table} failed: {source}")]
    Storage {
        /// The table.
        table: String,
        /// The storage error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why `apply` did not apply an event.
///
/// Either way the event's writes are discarded, no offset is recorded and the event is kept
/// as a dead letter with this error's text; a later re-delivery or a retry tries it again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The event is not valid in the read model's current state (a business rule refused it).
    #[error("{0}")]
    Rejected(String),
    /// A view could not be read or written.
    #[error(transparent)]
    View(#[from] ViewError),
}

impl ApplyError {
    /// A business-rule rejection with the given reason.
    #[must_use]
    pub fn rejected(reason: impl Into<String>) -> Self {
        Self::Rejected(reason.into())
    }
}

/// A projector: turns events into rows of the read-model tables it owns.
///
/// Implementations keep no state of their own between events (all state lives in their
/// tables), never deduplicate (the engine does) and never call `apply` themselves; callers
/// go through the engine's `dispatch`.
pub trait Projector<E: Event>: Send + Sync + 'static {
    /// The stable handler name. Changing it makes this a new projector.
    fn handler_name(&self) -> HandlerName;

    /// The tables this projector owns and may reach. No other projector may declare them.
    fn tables(&self) -> Vec<TableId>;

    /// Whether this projector wants the event at all (default: every event).
    fn handles(&self, _event: &E) -> bool {
        true
    }

    /// Applies one event. Writes go through `views`; an `Err` discards them.
    ///
    /// # Errors
    /// [`ApplyError`] when the event cannot be applied in the current state.
    fn apply(&self, event: &E, ctx: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError>;
}

/// Read access to rows committed before the current batch, supplied by the storage layer.
pub trait CommittedRows {
    /// The stored envelope of `key` in the table at `slot`, if any.
    ///
    /// # Errors
    /// [`ViewError::Storage`] when storage fails.
    fn get(&self, slot: usize, key: &[u8]) -> Result<Option<Vec<u8>>, ViewError>;
}

/// One table a [`Views`] may reach: its identity and its slot in the write set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSlot {
    /// The table.
    pub id: TableId,
    /// Its index in the write set and in [`CommittedRows`].
    pub slot: usize,
}

/// One buffered write: `Some(envelope)` to store, `None` to delete.
pub type Write = Option<Vec<u8>>;

/// The buffered writes of a batch: the writes of applied events per table, and the
/// pending writes of the event being applied.
#[derive(Debug, Default)]
pub struct WriteSet {
    applied: Vec<BTreeMap<Vec<u8>, Write>>,
    pending: Vec<(usize, Vec<u8>, Write)>,
    /// About how many bytes the kept writes hold (see [`WriteSet::buffered_bytes`]).
    bytes: usize,
}

/// What one kept write is counted as in [`WriteSet::buffered_bytes`]: its key and body,
/// and about what a map entry and two vectors cost besides.
fn write_bytes(key_len: usize, write: &Write) -> usize {
    const ENTRY: usize = 64;
    ENTRY + key_len + write.as_ref().map_or(0, Vec::len)
}

impl WriteSet {
    /// An empty write set over `tables` table slots.
    #[must_use]
    pub fn new(tables: usize) -> Self {
        Self { applied: (0..tables).map(|_| BTreeMap::new()).collect(), pending: Vec::new(), bytes: 0 }
    }

    /// A view handle for one projector, reaching only `tables`, reading through this write
    /// set onto `committed`.
    pub fn views<'a>(
        &'a mut self,
        handler: &'a HandlerName,
        tables: &'a [TableSlot],
        committed: &'a dyn CommittedRows,
    ) -> Views<'a> {
        Views { set: self, handler, tables, committed }
    }

    /// Keeps the pending writes of the event just applied.
    pub fn keep_pending(&mut self) {
        for (slot, key, write) in self.pending.drain(..) {
            if let Some(table) = self.applied.get_mut(slot) {
                let key_len = key.len();
                let added = write_bytes(key_len, &write);
                let replaced = table.insert(key, write).map_or(0, |old| write_bytes(key_len, &old));
                self.bytes = self.bytes.saturating_add(added).saturating_sub(replaced);
            }
        }
    }

    /// Discards the pending writes of an event whose `apply` failed.
    pub fn discard_pending(&mut self) {
        self.pending.clear();
    }

    /// Whether any write is buffered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.applied.iter().all(BTreeMap::is_empty)
    }

    /// About how many bytes of memory the kept writes hold: their keys and bodies and a
    /// fixed cost per row. A caller that keeps a write set across many events (a rebuild)
    /// takes it when this grows too large.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the kept writes, per table slot in key order, leaving the set empty.
    pub fn take(&mut self) -> Vec<BTreeMap<Vec<u8>, Write>> {
        self.pending.clear();
        self.bytes = 0;
        let n = self.applied.len();
        std::mem::replace(&mut self.applied, (0..n).map(|_| BTreeMap::new()).collect())
    }

    fn lookup(&self, slot: usize, key: &[u8]) -> Option<&Write> {
        if let Some((_, _, w)) = self.pending.iter().rev().find(|(s, k, _)| *s == slot && k == key) {
            return Some(w);
        }
        self.applied.get(slot).and_then(|t| t.get(key))
    }
}

/// The handle a projector writes through: reaches only its declared tables.
pub struct Views<'a> {
    set: &'a mut WriteSet,
    handler: &'a HandlerName,
    tables: &'a [TableSlot],
    committed: &'a dyn CommittedRows,
}

impl std::fmt::Debug for Views<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").field("handler", self.handler).field("tables", &self.tables).finish()
    }
}

impl<'a> Views<'a> {
    /// The table `def`, if this projector declared it.
    ///
    /// # Errors
    /// [`ViewError::TableNotOwned`] for a table the projector did not declare,
    /// [`ViewError::TypeMismatch`] when it was declared with other types.
    pub fn table<K: ViewKey, V: ViewValue>(
        &mut self,
        def: &TableDef<K, V>,
    ) -> Result<TableMut<'_, 'a, K, V>, ViewError> {
        let id = def.id();
        let Some(found) = self.tables.iter().find(|t| t.id.name == id.name) else {
            return Err(ViewError::TableNotOwned { handler: self.handler.to_string(), table: id.name });
        };
        if !found.id.same_types(&id) {
            return Err(ViewError::TypeMismatch { table: id.name });
        }
        Ok(TableMut { slot: found.slot, name: id.name, views: self, marker: PhantomData })
    }
}

/// One declared table inside `apply`: get, put and remove rows.
pub struct TableMut<'v, 'a, K, V> {
    views: &'v mut Views<'a>,
    slot: usize,
    name: &'static str,
    marker: PhantomData<fn() -> (K, V)>,
}

impl<K: ViewKey, V: ViewValue> TableMut<'_, '_, K, V> {
    /// The row stored under `key`, including writes made earlier in the same batch.
    ///
    /// # Errors
    /// [`ViewError::Codec`] when the stored row is damaged, [`ViewError::Storage`] when
    /// storage fails.
    pub fn get(&self, key: &K) -> Result<Option<V>, ViewError> {
        let key = key.key_bytes();
        let stored = match self.views.set.lookup(self.slot, &key) {
            Some(Some(body)) => {
                return codec::stable_decode(body)
                    .map(Some)
                    .map_err(|source| ViewError::Codec { table: self.name.to_string(), source });
            }
            Some(None) => return Ok(None),
            None => self.views.committed.get(self.slot, &key)?,
        };
        stored.map(|b| self.decode(&b)).transpose()
    }

    /// Stores `value` under `key`.
    ///
    /// # Errors
    /// [`ViewError::Codec`] when the value cannot be encoded.
    pub fn put(&mut self, key: &K, value: &V) -> Result<(), ViewError> {
        let mut body = Vec::with_capacity(64);
        codec::stable_encode_into(value, &mut body)
            .map_err(|source| ViewError::Codec { table: self.name.to_string(), source })?;
        if body.len() > codec::MAX_BODY_LEN {
            return Err(ViewError::TooLarge {
                table: self.name.to_string(),
                len: body.len(),
                limit: codec::MAX_BODY_LEN,
            });
        }
        self.views.set.pending.push((self.slot, key.to_key_bytes(), Some(body)));
        Ok(())
    }

    /// Deletes the row under `key`, if any.
    pub fn remove(&mut self, key: &K) {
        self.views.set.pending.push((self.slot, key.to_key_bytes(), None));
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, ViewError> {
        codec::decode(bytes).map_err(|source| ViewError::Codec { table: self.name.to_string(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Committed(HashMap<(usize, Vec<u8>), Vec<u8>>);
    impl CommittedRows for Committed {
        fn get(&self, slot: usize, key: &[u8]) -> Result<Option<Vec<u8>>, ViewError> {
            Ok(self.0.get(&(slot, key.to_vec())).cloned())
        }
    }

    const A: TableDef<String, u64> = TableDef::new("a", 1);
    const B: TableDef<String, u64> = TableDef::new("b", 1);

    fn slots() -> Vec<TableSlot> {
        vec![TableSlot { id: A.id(), slot: 0 }]
    }

    #[test]
    fn pending_writes_are_visible_then_kept_or_discarded() -> Result<(), Box<dyn std::error::Error>> {
        let mut committed = HashMap::new();
        committed.insert((0, b"k".to_vec()), codec::encode(&1u64)?);
        let committed = Committed(committed);
        let handler = HandlerName::new("h")?;
        let tables = slots();
        let mut set = WriteSet::new(1);
        {
            let mut views = set.views(&handler, &tables, &committed);
            let mut t = views.table(&A)?;
            assert_eq!(t.get(&"k".to_string())?, Some(1));
            t.put(&"k".to_string(), &2)?;
            assert_eq!(t.get(&"k".to_string())?, Some(2));
        }
        set.discard_pending();
        {
            let mut views = set.views(&handler, &tables, &committed);
            let mut t = views.table(&A)?;
            assert_eq!(t.get(&"k".to_string())?, Some(1));
            t.remove(&"k".to_string());
            assert_eq!(t.get(&"k".to_string())?, None);
        }
        set.keep_pending();
        let taken = set.take();
        assert_eq!(taken.first().and_then(|t| t.get(b"k".as_slice())), Some(&None));
        assert!(set.is_empty());
        Ok(())
    }

    #[test]
    fn buffered_bytes_count_each_kept_row_once() -> Result<(), Box<dyn std::error::Error>> {
        let committed = Committed(HashMap::new());
        let handler = HandlerName::new("h")?;
        let tables = slots();
        let mut set = WriteSet::new(1);
        let put = |set: &mut WriteSet, key: &str, value: u64| -> Result<(), ViewError> {
            let mut views = set.views(&handler, &tables, &committed);
            views.table(&A)?.put(&key.to_string(), &value)?;
            set.keep_pending();
            Ok(())
        };
        put(&mut set, "k", 1)?;
        let one = set.buffered_bytes();
        assert!(one > 1);
        // Rewriting a row replaces its count; a second row adds its own.
        for v in 2..50 {
            put(&mut set, "k", v)?;
        }
        assert_eq!(set.buffered_bytes(), one);
        put(&mut set, "j", 1)?;
        assert_eq!(set.buffered_bytes(), 2 * one);
        // A discarded write is not counted; a removal is counted without a body.
        {
            let mut views = set.views(&handler, &tables, &committed);
            views.table(&A)?.put(&"x".to_string(), &1)?;
        }
        set.discard_pending();
        assert_eq!(set.buffered_bytes(), 2 * one);
        {
            let mut views = set.views(&handler, &tables, &committed);
            views.table(&A)?.remove(&"k".to_string());
        }
        set.keep_pending();
        assert!(set.buffered_bytes() < 2 * one);
        set.take();
        assert_eq!(set.buffered_bytes(), 0);
        Ok(())
    }

    #[test]
    fn undeclared_tables_are_out_of_reach() -> Result<(), Box<dyn std::error::Error>> {
        let committed = Committed(HashMap::new());
        let handler = HandlerName::new("h")?;
        let tables = slots();
        let mut set = WriteSet::new(1);
        let mut views = set.views(&handler, &tables, &committed);
        assert!(matches!(views.table(&B), Err(ViewError::TableNotOwned { table: "b", .. })));
        const A_AS_I64: TableDef<String, i64> = TableDef::new("a", 1);
        assert!(matches!(views.table(&A_AS_I64), Err(ViewError::TypeMismatch { .. })));
        Ok(())
    }
}
