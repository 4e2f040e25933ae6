//! Read repositories and the read side of the store's bookkeeping.

use crate::error::{caller, contain_read, CommitError, ReadError};
use crate::schema::{
    canonical_time, index_key, physical, DeadLetter, EventSchema, HandlerRecord, IndexRow, JournalEntry,
    JournalHead, JournalRecord, KillSwitch, ReadModelRecord, DEAD_LETTERS, EVENT_IDS, EVENT_INDEX, HANDLERS,
    JOURNAL, JOURNAL_BY_AGGREGATE, META, META_AGGREGATES_INDEXED, META_HEAD, READ_MODELS,
};
use crate::store::Store;
use driftless_domain::{codec, OffsetRecord, TableDef, Timestamp, ViewKey, ViewValue};
use parking_lot::Mutex;
use redb::{
    ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

/// A read-only, typed view of one read model at one snapshot.
///
/// It has no write method: the only writers of a read model are its projector and, for a
/// materialized view, its refresh. Reads never block on the writer (snapshot isolation).
pub struct ReadRepository<K, V> {
    table: Option<RawTable>,
    name: String,
    marker: PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for ReadRepository<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadRepository").field("name", &self.name).finish()
    }
}

/// What opening a read model answered.
#[derive(Debug)]
pub enum ReadAnswer<K, V> {
    /// The read model is serving.
    Ready(ReadRepository<K, V>),
    /// Its kill switch is engaged: read the source of truth instead.
    UseSourceOfTruth {
        /// The read model.
        read_model: String,
        /// Since when.
        since: Timestamp,
    },
}

impl<K: ViewKey, V: ViewValue> ReadRepository<K, V> {
    /// The read model's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    fn decode_value(&self, bytes: &[u8]) -> Result<V, ReadError> {
        codec::decode(bytes).map_err(|source| ReadError::Codec { table: self.name.clone(), source })
    }

    fn decode_key(&self, bytes: &[u8]) -> Result<K, ReadError> {
        K::decode_key(bytes).map_err(|source| ReadError::Key { table: self.name.clone(), source })
    }

    /// The row under `key`.
    ///
    /// # Errors
    /// [`ReadError::Codec`] when the stored row is damaged, [`ReadError::Corrupted`] when
    /// the file around it is.
    pub fn get(&self, key: &K) -> Result<Option<V>, ReadError> {
        let Some(table) = &self.table else { return Ok(None) };
        contain_read("reading a row", || match table.get(key.key_bytes().as_ref())? {
            Some(v) => self.decode_value(v.value()).map(Some),
            None => Ok(None),
        })
    }

    /// How many rows there are.
    ///
    /// # Errors
    /// [`ReadError::Storage`] when storage fails.
    pub fn len(&self) -> Result<u64, ReadError> {
        match &self.table {
            Some(t) => contain_read("counting rows", || Ok(t.len()?)),
            None => Ok(0),
        }
    }

    /// Whether there are no rows.
    ///
    /// # Errors
    /// [`ReadError::Storage`] when storage fails.
    pub fn is_empty(&self) -> Result<bool, ReadError> {
        Ok(self.len()? == 0)
    }

    /// Every row in key order.
    ///
    /// # Errors
    /// [`ReadError::Storage`] when the iteration cannot start; each item may carry a
    /// [`ReadError::Codec`] for a damaged row.
    pub fn iter(&self) -> Result<impl Iterator<Item = Result<(K, V), ReadError>> + '_, ReadError> {
        self.range(..)
    }

    /// The rows whose keys fall in `range`, in key order.
    ///
    /// # Errors
    /// As [`Self::iter`].
    pub fn range<R: RangeBounds<K>>(
        &self,
        range: R,
    ) -> Result<impl Iterator<Item = Result<(K, V), ReadError>> + '_, ReadError> {
        let enc = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.to_key_bytes()),
            Bound::Excluded(k) => Bound::Excluded(k.to_key_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (start, end) = (enc(range.start_bound()), enc(range.end_bound()));
        let inner = match &self.table {
            Some(t) => {
                let s = match &start {
                    Bound::Included(v) => Bound::Included(v.as_slice()),
                    Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
                    Bound::Unbounded => Bound::Unbounded,
                };
                let e = match &end {
                    Bound::Included(v) => Bound::Included(v.as_slice()),
                    Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
                    Bound::Unbounded => Bound::Unbounded,
                };
                Some(contain_read("starting an iteration", || Ok(t.range::<&[u8]>((s, e))?))?)
            }
            None => None,
        };
        // Each step may walk into damaged pages: a contained panic ends the iteration
        // with an error.
        let mut inner = inner;
        let mut stopped = false;
        Ok(std::iter::from_fn(move || {
            if stopped {
                return None;
            }
            let step = contain_read("iterating", || {
                Ok(inner.as_mut().and_then(Iterator::next).map(|item| {
                    let (k, v) = item?;
                    Ok((self.decode_key(k.value())?, self.decode_value(v.value())?))
                }))
            });
            step.unwrap_or_else(|e| {
                stopped = true;
                Some(Err(e))
            })
        }))
    }
}

/// One stored row: its key bytes and its value envelope.
pub type RawRow = (Vec<u8>, Vec<u8>);

/// Per-table storage figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableFigures {
    /// The physical table name.
    pub table: String,
    /// Rows.
    pub entries: u64,
    /// Bytes of keys and values.
    pub stored_bytes: u64,
    /// Bytes of B-tree metadata.
    pub metadata_bytes: u64,
    /// Bytes lost to fragmentation.
    pub fragmented_bytes: u64,
}

/// Whether every stored value passed its checksum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ValueScan {
    /// Values checked.
    pub checked: u64,
    /// Values that failed (table, key as lossy text, error).
    pub damaged: Vec<(String, String, String)>,
}

fn get_meta_value<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, ReadError> {
    match table.get(key)? {
        Some(b) => Ok(Some(codec::decode(b.value())?)),
        None => Ok(None),
    }
}

/// Reads that see one moment of the file: see [`Store::snapshot`].
///
/// It opens each table it reads once, on first use, and keeps it open for its later reads:
/// many reads through one snapshot cost less than as many through [`Store`].
pub struct Snapshot {
    txn: redb::ReadTransaction,
    open: Mutex<OpenTables>,
    /// The event schemas as of when it was taken (a later one is never named in it).
    schemas: HashMap<u32, EventSchema>,
}

/// A journal record naming a schema the store does not know: damage.
fn unknown_schema(record: &JournalRecord<'_>) -> ReadError {
    ReadError::Corrupted {
        what: format!("reading the journal entry at position {}", record.position),
        reason: format!("it names the unknown event schema #{}", record.schema),
    }
}

/// A read model's table, read raw.
type RawTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// The tables a [`Snapshot`] has opened.
#[derive(Default)]
struct OpenTables {
    journal: Option<JournalTables>,
    /// The last read model read, and its table (`None` when it does not exist).
    rows: Option<(String, Option<RawTable>)>,
}

/// The journal as a [`Snapshot`] reads it by aggregate.
struct JournalTables {
    journal: ReadOnlyTable<u64, &'static [u8]>,
    by_aggregate: ReadOnlyTable<(&'static str, u64), ()>,
    /// The positions of the entries not yet filed in the per-aggregate index, by aggregate,
    /// in journal order (after every filed one).
    unfiled: HashMap<String, Vec<u64>>,
}

impl JournalTables {
    fn open(txn: &redb::ReadTransaction) -> Result<Self, ReadError> {
        let meta = txn.open_table(META)?;
        let journal = txn.open_table(JOURNAL)?;
        let by_aggregate = txn.open_table(JOURNAL_BY_AGGREGATE)?;
        let filed: u64 = get_meta_value(&meta, META_AGGREGATES_INDEXED)?.unwrap_or(0);
        let mut unfiled: HashMap<String, Vec<u64>> = HashMap::new();
        for item in journal.range(filed.saturating_add(1)..)? {
            let (_, v) = item?;
            let head: JournalHead = codec::decode_prefix(v.value()).map_err(journal_damaged)?;
            unfiled.entry(head.aggregate_id).or_default().push(head.position);
        }
        Ok(Self { journal, by_aggregate, unfiled })
    }

    /// Calls `visit` with each journal entry of `aggregate_id`, in journal order.
    fn for_each_entry(
        &self,
        aggregate_id: &str,
        mut visit: impl FnMut(JournalRecord<'_>) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        let mut entry_at = |position: u64| -> Result<(), ReadError> {
            if let Some(v) = self.journal.get(position)? {
                let record: JournalRecord<'_> = codec::decode(v.value()).map_err(journal_damaged)?;
                if record.position != position {
                    return Err(journal_misplaced(position, record.position));
                }
                visit(record)?;
            }
            Ok(())
        };
        for item in self.by_aggregate.range((aggregate_id, 0u64)..=(aggregate_id, u64::MAX))? {
            let (k, _) = item?;
            entry_at(k.value().1)?;
        }
        for &position in self.unfiled.get(aggregate_id).map(Vec::as_slice).unwrap_or_default() {
            entry_at(position)?;
        }
        Ok(())
    }
}

/// The table of a read model, `None` when it does not exist.
fn open_read_model(txn: &redb::ReadTransaction, read_model: &str) -> Result<Option<RawTable>, ReadError> {
    match txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&physical(read_model))) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn journal_damaged(source: driftless_domain::CodecError) -> ReadError {
    ReadError::Codec { table: "journal".into(), source }
}

/// A journal entry found at another position than it was written at.
fn journal_misplaced(position: u64, says: u64) -> ReadError {
    ReadError::Corrupted {
        what: format!("reading the journal entry at position {position}"),
        reason: format!("it says it is at position {says}"),
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

/// The stable encodings of several events, one after another in one buffer, each with the
/// schema version it was written at: what [`Snapshot::aggregate_bodies`] fills. Reused
/// across calls, it spares an allocation per event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventBodies {
    bytes: Vec<u8>,
    ends: Vec<(usize, u32)>,
}

impl EventBodies {
    /// An empty buffer.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// How many bodies it holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bodies with their schema versions, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u8])> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(end, version)| {
            let body = self.bytes.get(start..end).unwrap_or_default();
            start = end;
            (version, body)
        })
    }

    fn push(&mut self, version: u32, body: &[u8]) {
        self.bytes.extend_from_slice(body);
        self.ends.push((self.bytes.len(), version));
    }
}

impl Snapshot {
    fn new(txn: redb::ReadTransaction, schemas: HashMap<u32, EventSchema>) -> Self {
        Self { txn, open: Mutex::new(OpenTables::default()), schemas }
    }

    /// One raw row of a read model, ignoring its kill switch.
    ///
    /// # Errors
    /// [`ReadError::Storage`] when storage fails.
    pub fn raw_row(&self, read_model: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        contain_read("raw_row", || {
            let mut open = self.open.lock();
            let table = match &open.rows {
                Some((name, table)) if name == read_model => table,
                _ => {
                    let table = open_read_model(&self.txn, read_model)?;
                    &open.rows.insert((read_model.to_string(), table)).1
                }
            };
            let Some(table) = table else { return Ok(None) };
            Ok(table.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    /// Every journal entry of one aggregate, in journal order.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails or an entry is damaged.
    pub fn journal_for_aggregate(&self, aggregate_id: &str) -> Result<Vec<JournalEntry>, ReadError> {
        let mut out = Vec::new();
        self.with_journal("journal_for_aggregate", |journal| {
            journal.for_each_entry(aggregate_id, |record| {
                out.push(self.store_entry(record)?);
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// A stored journal record as a [`JournalEntry`], its schema named.
    fn store_entry(&self, record: JournalRecord<'_>) -> Result<JournalEntry, ReadError> {
        let schema = self.schemas.get(&record.schema).ok_or_else(|| unknown_schema(&record))?;
        Ok(JournalEntry {
            position: record.position,
            aggregate_id: record.aggregate_id.to_string(),
            occurred_at: record.occurred_at,
            accepted_at: record.accepted_at,
            event_name: schema.name.clone(),
            schema_version: schema.version,
            body: record.body.to_vec(),
        })
    }

    /// Adds the stable encodings of one aggregate's events to `bodies`, in journal order:
    /// [`Snapshot::journal_for_aggregate`] without the other fields, and without an
    /// allocation per event.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails or an entry is damaged.
    pub fn aggregate_bodies(&self, aggregate_id: &str, bodies: &mut EventBodies) -> Result<(), ReadError> {
        self.with_journal("aggregate_bodies", |journal| {
            journal.for_each_entry(aggregate_id, |record| {
                let version =
                    self.schemas.get(&record.schema).ok_or_else(|| unknown_schema(&record))?.version;
                bodies.push(version, record.body);
                Ok(())
            })
        })
    }

    /// Runs `read` on the journal's tables, opened on first use.
    fn with_journal(
        &self,
        what: &'static str,
        read: impl FnOnce(&JournalTables) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        contain_read(what, || {
            let mut open = self.open.lock();
            let journal = match &open.journal {
                Some(journal) => journal,
                None => open.journal.insert(JournalTables::open(&self.txn)?),
            };
            read(journal)
        })
    }
}

impl Store {
    /// Opens a read model for reading, checking its schema and its kill switch in the same
    /// snapshot.
    ///
    /// # Errors
    /// [`ReadError::UnknownReadModel`] when it was never registered,
    /// [`ReadError::SchemaChanged`] when it was stored with other types.
    pub fn read<K: ViewKey, V: ViewValue>(
        &self,
        def: &TableDef<K, V>,
    ) -> Result<ReadAnswer<K, V>, ReadError> {
        contain_read("read", || {
            let id = def.id();
            let txn = self.db.begin_read()?;
            let rm = txn.open_table(READ_MODELS)?;
            let rec: ReadModelRecord = get_meta_value(&rm, id.name)?
                .ok_or_else(|| ReadError::UnknownReadModel(id.name.to_string()))?;
            let fingerprint = id.fingerprint();
            if rec.fingerprint != fingerprint.bytes || rec.fingerprint_scheme != fingerprint.scheme {
                return Err(ReadError::SchemaChanged { table: id.name.to_string() });
            }
            if let Some(k) = rec.kill_switch {
                return Ok(ReadAnswer::UseSourceOfTruth {
                    read_model: id.name.to_string(),
                    since: k.engaged_at,
                });
            }
            let table = open_read_model(&txn, id.name)?;
            Ok(ReadAnswer::Ready(ReadRepository { table, name: id.name.to_string(), marker: PhantomData }))
        })
    }

    /// The rows of a read model as raw `(key, envelope)` pairs, ignoring its kill switch
    /// (for reconciliation, verification and export).
    ///
    /// # Errors
    /// [`ReadError::Storage`] when storage fails.
    pub fn raw_rows(&self, read_model: &str) -> Result<Vec<RawRow>, ReadError> {
        contain_read("raw_rows", || {
            let Some(table) = open_read_model(&self.db.begin_read()?, read_model)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// The first `limit` keys of a read model, in byte order, ignoring its kill switch:
    /// [`Store::raw_rows`] without the rows.
    ///
    /// # Errors
    /// [`ReadError::Storage`] when storage fails.
    pub fn raw_keys(&self, read_model: &str, limit: usize) -> Result<Vec<Vec<u8>>, ReadError> {
        contain_read("raw_keys", || {
            let Some(table) = open_read_model(&self.db.begin_read()?, read_model)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for item in table.iter()?.take(limit) {
                let (k, _) = item?;
                out.push(k.value().to_vec());
            }
            Ok(out)
        })
    }

    /// One raw row of a read model, ignoring its kill switch.
    ///
    /// # Errors
    /// [`ReadError::Storage`] when storage fails.
    pub fn raw_row(&self, read_model: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.snapshot()?.raw_row(read_model, key)
    }

    /// A consistent view of the file as of now, for several reads that must agree with one
    /// another (a read model's row and the journal it was folded from, say): every read
    /// through it sees the same commits, whatever commits in the meantime. Hold it briefly:
    /// while it is open, the pages it sees cannot be reused.
    ///
    /// # Errors
    /// [`ReadError::Storage`] when storage fails.
    pub fn snapshot(&self) -> Result<Snapshot, ReadError> {
        contain_read("snapshot", || {
            // The schemas are taken first: a commit adds a schema to them only after it
            // committed, so every schema the snapshot's journal names is among them.
            let schemas = self.schemas.read().by_id_map();
            Ok(Snapshot::new(self.db.begin_read()?, schemas))
        })
    }

    /// The last journal position handed out (0 when the journal is empty).
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn journal_head(&self) -> Result<u64, ReadError> {
        contain_read("journal_head", || {
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            Ok(get_meta_value(&meta, META_HEAD)?.unwrap_or(0))
        })
    }

    /// Up to `limit` journal entries from position `from` on.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails or an entry is damaged.
    pub fn journal_range(&self, from: u64, limit: usize) -> Result<Vec<JournalEntry>, ReadError> {
        contain_read("journal_range", || {
            let txn = self.db.begin_read()?;
            let journal = txn.open_table(JOURNAL)?;
            let schemas = self.schemas.read();
            let mut out = Vec::new();
            for item in journal.range(from..)?.take(limit) {
                let (k, v) = item?;
                let record: JournalRecord<'_> = codec::decode(v.value()).map_err(journal_damaged)?;
                if record.position != k.value() {
                    return Err(journal_misplaced(k.value(), record.position));
                }
                let schema = schemas.get(record.schema).ok_or_else(|| unknown_schema(&record))?;
                out.push(JournalEntry {
                    position: record.position,
                    aggregate_id: record.aggregate_id.to_string(),
                    occurred_at: record.occurred_at,
                    accepted_at: record.accepted_at,
                    event_name: schema.name.clone(),
                    schema_version: schema.version,
                    body: record.body.to_vec(),
                });
            }
            Ok(out)
        })
    }

    /// Every journal entry of one aggregate, in journal order.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails or an entry is damaged.
    pub fn journal_for_aggregate(&self, aggregate_id: &str) -> Result<Vec<JournalEntry>, ReadError> {
        self.snapshot()?.journal_for_aggregate(aggregate_id)
    }

    /// How many journal entries are not yet filed in the per-aggregate index, as of this
    /// store's last commit that journaled events or filed them (see
    /// [`Store::file_aggregates`]); 0 until the first, whatever an earlier process left.
    /// Reads nothing from the file.
    #[must_use]
    pub fn unfiled_journal_entries(&self) -> u64 {
        self.unfiled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The distinct aggregate ids in the journal, in byte order, up to `limit`.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn journal_aggregates(&self, limit: usize) -> Result<Vec<String>, ReadError> {
        let mut all = std::collections::BTreeSet::new();
        self.snapshot()?.with_journal("journal_aggregates", |journal| {
            let mut next: Option<String> = None;
            while all.len() < limit {
                let mut range = match &next {
                    Some(after) => journal.by_aggregate.range((after.as_str(), u64::MAX)..)?,
                    None => journal.by_aggregate.range::<(&str, u64)>(..)?,
                };
                let Some(item) = range.next() else { break };
                let (k, _) = item?;
                let (aggregate, _) = k.value();
                if next.as_deref() == Some(aggregate) {
                    break;
                }
                all.insert(aggregate.to_string());
                next = Some(aggregate.to_string());
            }
            // Entries not yet filed in the per-aggregate index.
            all.extend(journal.unfiled.keys().cloned());
            Ok(())
        })?;
        Ok(all.into_iter().take(limit).collect())
    }

    /// The stored record of one handler.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn handler_record(&self, handler: &str) -> Result<Option<HandlerRecord>, ReadError> {
        contain_read("handler_record", || {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(HANDLERS)?;
            get_meta_value(&t, handler)
        })
    }

    /// Every handler record, by name.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn handler_records(&self) -> Result<Vec<(String, HandlerRecord)>, ReadError> {
        contain_read("handler_records", || {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(HANDLERS)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.push((k.value().to_string(), codec::decode(v.value())?));
            }
            Ok(out)
        })
    }

    /// Every read-model record, by name.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn read_model_records(&self) -> Result<Vec<(String, ReadModelRecord)>, ReadError> {
        contain_read("read_model_records", || {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(READ_MODELS)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.push((k.value().to_string(), codec::decode(v.value())?));
            }
            Ok(out)
        })
    }

    /// The recorded offset of `(event_id, handler)`: when it was applied and the payload
    /// hash of what was applied.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn offset(&self, event_id: &str, handler: &str) -> Result<Option<OffsetRecord>, ReadError> {
        contain_read("offset", || {
            let Some(rec) = self.handler_record(handler)? else { return Ok(None) };
            let txn = self.db.begin_read()?;
            let index = txn.open_table(EVENT_INDEX)?;
            let ids = txn.open_table(EVENT_IDS)?;
            let filed_at = match ids.get(event_id)? {
                Some(b) => Some(codec::decode_keyed::<u64>(event_id.as_bytes(), b.value())?),
                None => canonical_time(event_id),
            };
            let Some(filed_at) = filed_at else { return Ok(None) };
            let key = index_key(filed_at, event_id);
            let Some(bytes) = index.get(key.as_slice())? else { return Ok(None) };
            let row: IndexRow = codec::decode_keyed(&key, bytes.value())?;
            Ok(row.has(rec.slot).then(|| OffsetRecord {
                applied_at: Timestamp(row.applied_at_of(rec.slot)),
                payload_hash: row.payload_hash(),
            }))
        })
    }

    /// How many event ids have at least one offset.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn offset_count(&self) -> Result<u64, ReadError> {
        contain_read("offset_count", || {
            let txn = self.db.begin_read()?;
            Ok(txn.open_table(EVENT_INDEX)?.len()?)
        })
    }

    /// Dead letters, of one handler or of all, in (handler, event id) order.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn dead_letters(&self, handler: Option<&str>) -> Result<Vec<DeadLetter>, ReadError> {
        contain_read("dead_letters", || {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(DEAD_LETTERS)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                let (h, _) = k.value();
                if handler.is_some_and(|want| want != h) {
                    continue;
                }
                out.push(codec::decode(v.value())?);
            }
            Ok(out)
        })
    }

    /// One dead letter.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn dead_letter(&self, handler: &str, event_id: &str) -> Result<Option<DeadLetter>, ReadError> {
        contain_read("dead_letter", || {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(DEAD_LETTERS)?;
            match t.get((handler, event_id))? {
                Some(v) => Ok(Some(codec::decode(v.value())?)),
                None => Ok(None),
            }
        })
    }

    /// Discards a dead letter without applying it. Returns whether it existed.
    ///
    /// # Errors
    /// [`CommitError`] when the write fails.
    pub(crate) fn discard_dead_letter(&self, handler: &str, event_id: &str) -> Result<bool, CommitError> {
        self.contain_write("discard_dead_letter", || {
            let txn = self.begin_write()?;
            let existed = {
                let mut t = txn.open_table(DEAD_LETTERS).map_err(|e| self.fail(e))?;
                let existed = t.remove((handler, event_id)).map_err(|e| self.fail(e))?.is_some();
                if existed {
                    let mut handlers = txn.open_table(HANDLERS).map_err(|e| self.fail(e))?;
                    let rec: Option<HandlerRecord> = match handlers.get(handler).map_err(|e| self.fail(e))? {
                        Some(b) => Some(codec::decode(b.value())?),
                        None => None,
                    };
                    if let Some(mut rec) = rec {
                        rec.dead_letters = rec.dead_letters.saturating_sub(1);
                        handlers
                            .insert(handler, codec::encode(&rec)?.as_slice())
                            .map_err(|e| self.fail(e))?;
                    }
                }
                existed
            };
            self.commit(txn)?;
            Ok(existed)
        })
    }

    /// Engages (`Some`) or releases (`None`) the kill switch of a read model. With
    /// `pause_projection`, the owning handler stops projecting while any of its tables has
    /// such a switch engaged (and then catches up from the journal). The state is persisted.
    ///
    /// # Errors
    /// [`CommitError::UnknownReadModel`]; [`CommitError::NoJournal`] when pausing without a
    /// journal to catch up from.
    pub(crate) fn set_kill_switch(
        &self,
        read_model: &str,
        switch: Option<KillSwitch>,
    ) -> Result<(), CommitError> {
        self.contain_write("set_kill_switch", || {
            if switch.is_some_and(|s| s.pause_projection) && !self.journal_enabled() {
                return Err(CommitError::NoJournal);
            }
            let txn = self.begin_write()?;
            {
                let mut rm = txn.open_table(READ_MODELS).map_err(|e| self.fail(e))?;
                let mut rec: ReadModelRecord = match rm.get(read_model).map_err(|e| self.fail(e))? {
                    Some(b) => codec::decode(b.value())?,
                    None => return Err(CommitError::UnknownReadModel(read_model.to_string())),
                };
                rec.kill_switch = switch;
                rm.insert(read_model, codec::encode(&rec)?.as_slice()).map_err(|e| self.fail(e))?;
                let mut handlers = txn.open_table(HANDLERS).map_err(|e| self.fail(e))?;
                let owner: Option<HandlerRecord> =
                    match handlers.get(rec.owner.as_str()).map_err(|e| self.fail(e))? {
                        Some(b) => Some(codec::decode(b.value())?),
                        None => None,
                    };
                if let Some(mut h) = owner {
                    // The handler pauses while any of its tables has a pausing switch engaged.
                    let mut paused = switch.is_some_and(|s| s.pause_projection);
                    for table in h.tables.iter().filter(|t| t.as_str() != read_model) {
                        if let Some(b) = rm.get(table.as_str()).map_err(|e| self.fail(e))? {
                            let other: ReadModelRecord = codec::decode(b.value())?;
                            paused |= other.kill_switch.is_some_and(|s| s.pause_projection);
                        }
                    }
                    h.paused = paused;
                    handlers
                        .insert(rec.owner.as_str(), codec::encode(&h)?.as_slice())
                        .map_err(|e| self.fail(e))?;
                }
            }
            self.commit(txn)
        })
    }

    /// The kill switch of a read model, if engaged.
    ///
    /// # Errors
    /// [`ReadError::UnknownReadModel`].
    pub fn kill_switch(&self, read_model: &str) -> Result<Option<KillSwitch>, ReadError> {
        contain_read("kill_switch", || {
            let txn = self.db.begin_read()?;
            let rm = txn.open_table(READ_MODELS)?;
            let rec: ReadModelRecord = get_meta_value(&rm, read_model)?
                .ok_or_else(|| ReadError::UnknownReadModel(read_model.to_string()))?;
            Ok(rec.kill_switch)
        })
    }

    /// Reads a named metadata record (leases, schedules, health), namespaced by the caller.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails or the record is damaged.
    pub fn meta_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ReadError> {
        contain_read("meta_get", || {
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            get_meta_value(&meta, &format!("x/{key}"))
        })
    }

    /// Reads, changes and writes a named metadata record in one write transaction:
    /// `update` gets the current value and returns the new one (`None` deletes it) and a
    /// result. Two callers never interleave, which makes it a compare-and-set.
    ///
    /// # Errors
    /// [`CommitError`] when the write fails.
    pub fn meta_update<T: Serialize + DeserializeOwned, R>(
        &self,
        key: &str,
        update: impl FnOnce(Option<T>) -> (Option<T>, R),
    ) -> Result<R, CommitError> {
        self.contain_write("meta_update", || {
            let key = format!("x/{key}");
            let txn = self.begin_write()?;
            let (result, changed) = {
                let mut meta = txn.open_table(META).map_err(|e| self.fail(e))?;
                let stored: Option<Vec<u8>> =
                    meta.get(key.as_str()).map_err(|e| self.fail(e))?.map(|b| b.value().to_vec());
                let current: Option<T> = stored.as_deref().map(codec::decode).transpose()?;
                let (next, result) = caller(|| update(current));
                let next = next.map(|v| codec::encode(&v)).transpose()?;
                let changed = next != stored;
                if changed {
                    match &next {
                        Some(v) => meta.insert(key.as_str(), v.as_slice()).map(drop),
                        None => meta.remove(key.as_str()).map(drop),
                    }
                    .map_err(|e| self.fail(e))?;
                }
                (result, changed)
            };
            // An update that changes nothing is not committed (and costs no sync).
            if changed {
                self.commit(txn)?;
            } else {
                txn.abort().map_err(|e| self.fail(e))?;
            }
            Ok(result)
        })
    }

    /// Writes a row of a read model behind its projector's back, with a valid envelope.
    ///
    /// This exists to demonstrate and test drift detection; nothing else should call it.
    ///
    /// # Errors
    /// [`CommitError`] when the write fails.
    #[cfg(feature = "chaos")]
    pub(crate) fn tamper_row(
        &self,
        read_model: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), CommitError> {
        self.contain_write("tamper_row", || {
            let txn = self.begin_write()?;
            {
                let name = physical(read_model);
                let mut t =
                    txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)).map_err(|e| self.fail(e))?;
                match value {
                    Some(v) => t.insert(key, v).map(drop),
                    None => t.remove(key).map(drop),
                }
                .map_err(|e| self.fail(e))?;
            }
            self.commit(txn)
        })
    }

    /// Storage figures of every table, for disk-cost reports.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn table_figures(&self) -> Result<Vec<TableFigures>, ReadError> {
        contain_read("table_figures", || {
            let txn = self.db.begin_read()?;
            let mut out = Vec::new();
            for handle in txn.list_tables()? {
                let name = redb::TableHandle::name(&handle).to_string();
                let figures = |stats: redb::TableStats, entries: u64| TableFigures {
                    table: name.clone(),
                    entries,
                    stored_bytes: stats.stored_bytes(),
                    metadata_bytes: stats.metadata_bytes(),
                    fragmented_bytes: stats.fragmented_bytes(),
                };
                let row = if name == JOURNAL.name() {
                    let t = txn.open_table(JOURNAL)?;
                    figures(t.stats()?, t.len()?)
                } else if name == JOURNAL_BY_AGGREGATE.name() {
                    let t = txn.open_table(JOURNAL_BY_AGGREGATE)?;
                    figures(t.stats()?, t.len()?)
                } else if name == DEAD_LETTERS.name() {
                    let t = txn.open_table(DEAD_LETTERS)?;
                    figures(t.stats()?, t.len()?)
                } else if name.starts_with("rm.") || name == EVENT_INDEX.name() {
                    let t = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&name))?;
                    figures(t.stats()?, t.len()?)
                } else {
                    let t = txn.open_table(TableDefinition::<&str, &[u8]>::new(&name))?;
                    figures(t.stats()?, t.len()?)
                };
                out.push(row);
            }
            Ok(out)
        })
    }

    /// Checks the envelope (version and checksum) of every stored value in every table.
    ///
    /// # Errors
    /// [`ReadError`] when storage fails.
    pub fn scan_values(&self) -> Result<ValueScan, ReadError> {
        contain_read("scan_values", || {
            let txn = self.db.begin_read()?;
            let mut scan = ValueScan::default();
            let mut check = |table: &str, key: String, value: &[u8], keyed: Option<&[u8]>| {
                scan.checked += 1;
                let verified = match keyed {
                    Some(raw_key) => codec::verify_keyed(raw_key, value),
                    None => codec::verify(value),
                };
                if let Err(e) = verified {
                    scan.damaged.push((table.to_string(), key, e.to_string()));
                }
            };
            for handle in txn.list_tables()? {
                let name = redb::TableHandle::name(&handle).to_string();
                if name == JOURNAL_BY_AGGREGATE.name() {
                    continue;
                } else if name == JOURNAL.name() {
                    for item in txn.open_table(JOURNAL)?.iter()? {
                        let (k, v) = item?;
                        check(&name, k.value().to_string(), v.value(), None);
                    }
                } else if name == DEAD_LETTERS.name() {
                    for item in txn.open_table(DEAD_LETTERS)?.iter()? {
                        let (k, v) = item?;
                        let (h, id) = k.value();
                        check(&name, format!("{h}/{id}"), v.value(), None);
                    }
                } else if name.starts_with("rm.") || name == EVENT_INDEX.name() {
                    let keyed = name == EVENT_INDEX.name();
                    for item in txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&name))?.iter()? {
                        let (k, v) = item?;
                        let raw_key = k.value();
                        check(
                            &name,
                            String::from_utf8_lossy(raw_key).into_owned(),
                            v.value(),
                            keyed.then_some(raw_key),
                        );
                    }
                } else {
                    let keyed = name == EVENT_IDS.name();
                    for item in txn.open_table(TableDefinition::<&str, &[u8]>::new(&name))?.iter()? {
                        let (k, v) = item?;
                        let raw_key = k.value();
                        check(&name, raw_key.to_string(), v.value(), keyed.then_some(raw_key.as_bytes()));
                    }
                }
            }
            Ok(scan)
        })
    }
}
