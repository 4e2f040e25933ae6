//! The projection commit: a batch of events and the registered projectors in one redb
//! write transaction, with exactly-once bookkeeping per (event, handler).

use crate::error::{caller, contain, panic_message, CommitError};
use crate::outcomes::HandlerOutcomes;
use crate::registry::Registry;
use crate::schema::{
    canonical_time, index_key, index_key_into, physical, shadow, DeadLetter, EventSchema, HandlerRecord,
    IndexRow, IndexRowHead, JournalHead, JournalRecord, ReadModelRecord, DEAD_LETTERS, EVENT_IDS,
    EVENT_INDEX, HANDLERS, JOURNAL, JOURNAL_BY_AGGREGATE, META, META_AGGREGATES_INDEXED, META_HEAD,
    META_INDEX_PROBE, READ_MODELS,
};
use crate::schemas::schema_key;
use crate::store::Store;
use driftless_domain::{
    codec, ApplyError, CommittedRows, Event, EventId, PayloadHash, PreparedEvent, ProjectionContext,
    Timestamp, ViewError, WriteSet,
};
use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction};
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What happened to one event for one handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// Applied now.
    Applied,
    /// Already applied with the same payload: skipped.
    Duplicate,
    /// The projector does not handle this kind of event; recorded as processed.
    NotHandled,
    /// `apply` failed: nothing of it was written and it is kept as a dead letter.
    DeadLettered {
        /// The error text.
        reason: String,
    },
    /// The handler is paused or catching up; it will reach the event from the journal.
    Deferred,
}

/// What happened to one event, across handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// At least one handler applied it (see the per-handler outcomes for the rest).
    Applied,
    /// Every handler had already applied it with the same payload.
    Duplicate,
    /// Its id was already applied with a different payload: skipped and reported.
    Conflict {
        /// The hash of what was applied first.
        recorded: PayloadHash,
    },
    /// Every handler that tried it failed; it is kept as a dead letter.
    Rejected {
        /// The first handler's error text.
        reason: String,
    },
    /// Accepted into the journal; the handlers that need it are paused or catching up.
    Deferred,
    /// Not accepted: nothing of it was journaled or applied, and its id stays free. The
    /// reason says why: its encoding does not read back as the same event (a serde shape
    /// bincode cannot round-trip), it is too large to store, or the event's own code
    /// (`aggregate_id`, `occurred_at`, `event_name`, `Serialize`) panicked.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The report of one event in a committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventReport {
    /// The event id.
    pub event_id: EventId,
    /// Its journal position, when it was journaled by this commit or replayed from it.
    pub position: Option<u64>,
    /// The overall outcome.
    pub outcome: EventOutcome,
    /// Per handler, by index in the registry.
    pub handlers: HandlerOutcomes,
}

/// An event's outcome in a batch, before its report is given the event's id.
struct Processed {
    position: Option<u64>,
    outcome: EventOutcome,
    handlers: HandlerOutcomes,
}

impl Processed {
    fn report(self, event_id: EventId) -> EventReport {
        EventReport { event_id, position: self.position, outcome: self.outcome, handlers: self.handlers }
    }
}

/// An event handed to [`StoreWriter::project`](crate::StoreWriter::project), and where its report's id comes from.
///
/// A shared reference gives its report a copy of the id. A mutable reference hands the id
/// over to the report and leaves the event with the empty id ([`EventId::default`]): the
/// way to project events that are dropped afterwards, which spares copying every id.
pub trait Delivery<E> {
    /// The event.
    fn event(&self) -> &PreparedEvent<E>;
    /// The id its report carries.
    fn into_id(self) -> EventId;
}

impl<E> Delivery<E> for &PreparedEvent<E> {
    fn event(&self) -> &PreparedEvent<E> {
        self
    }

    fn into_id(self) -> EventId {
        self.id.clone()
    }
}

impl<E> Delivery<E> for &mut PreparedEvent<E> {
    fn event(&self) -> &PreparedEvent<E> {
        self
    }

    fn into_id(self) -> EventId {
        std::mem::take(&mut self.id)
    }
}

/// Where [`StoreWriter::project_with`](crate::StoreWriter::project_with) takes its deliveries: each one is processed as it is
/// pushed, in the batch's transaction.
pub struct Feed<'f, E> {
    batch: &'f mut dyn Process<E>,
    reports: Vec<EventReport>,
}

impl<E> Feed<'_, E> {
    /// Processes one delivery in the batch. Its report is the next in the batch's report.
    ///
    /// # Errors
    /// [`CommitError`] when the transaction cannot go on; the batch is then abandoned.
    pub fn push<D: Delivery<E>>(&mut self, delivery: D) -> Result<(), CommitError> {
        let processed = self.batch.process_live(delivery.event())?;
        self.reports.push(processed.report(delivery.into_id()));
        Ok(())
    }

    /// How many deliveries have been pushed.
    #[must_use]
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// Whether nothing has been pushed yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }
}

/// A batch of new deliveries, as a [`Feed`] sees it.
trait Process<E> {
    fn process_live(&mut self, ev: &PreparedEvent<E>) -> Result<Processed, CommitError>;
}

impl<E: Event> Process<E> for Batch<'_, '_, E> {
    fn process_live(&mut self, ev: &PreparedEvent<E>) -> Result<Processed, CommitError> {
        // Contained on its own: the feed around it is the caller's code, whose panics are
        // the caller's, while a panic in here is the storage engine's.
        let store = self.store;
        store.contain_write("project", || self.process(ev, None))
    }
}

/// The report of one committed batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// One report per event, in order.
    pub events: Vec<EventReport>,
    /// The clock reading the batch was committed with.
    pub committed_at: Timestamp,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// New deliveries: journal them and hand out positions.
    Live,
    /// Entries read back from the journal (catch-up, rebuild): positions are known.
    Replay,
}

type RawTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

struct Committed<'b, 't> {
    tables: &'b [Option<RawTable<'t>>],
}

impl CommittedRows for Committed<'_, '_> {
    fn get(&self, slot: usize, key: &[u8]) -> Result<Option<Vec<u8>>, ViewError> {
        let Some(Some(table)) = self.tables.get(slot) else {
            return Ok(None);
        };
        // redb may panic on a damaged page: that is a storage failure (which fails the
        // commit), not a failure of the projector calling this.
        match catch_unwind(AssertUnwindSafe(|| table.get(key).map(|g| g.map(|v| v.value().to_vec())))) {
            Ok(got) => got
                .map_err(|e| ViewError::Storage { table: format!("table slot {slot}"), source: Box::new(e) }),
            Err(panic) => Err(ViewError::Storage {
                table: format!("table slot {slot}"),
                source: Box::new(std::io::Error::other(format!(
                    "the storage engine stopped on an inconsistency in the file: {}",
                    panic_message(&*panic)
                ))),
            }),
        }
    }
}

/// What [`Batch::lookup`] found.
enum Lookup {
    /// A stored row that every handler of the batch applied with the event's payload.
    AppliedByAll,
    /// The row, if there is one.
    Row(Option<IndexRow>),
}

/// What [`Batch::locate`] found.
enum Located {
    /// As [`Lookup::AppliedByAll`].
    AppliedByAll,
    /// The row's key, the row if there is one, and whether a new row needs an `event_ids`
    /// entry.
    Row { key: Vec<u8>, row: Option<IndexRow>, needs_id_entry: bool },
}

/// A batch's tables while they are being opened.
///
/// redb opens a table under its transaction's table lock, and panics on some damaged pages
/// while it holds it. The lock is then poisoned, so closing any table already open panics
/// too, and a panic while the first one unwinds aborts the process. [`Opening::open`]
/// therefore stops the first panic, closes the tables opened so far one at a time (each
/// close's own panic stopped too), and only then lets the first panic go on, to be
/// contained as damage like any other of redb's.
#[derive(Default)]
struct Opening<'t> {
    meta: Option<Table<'t, &'static str, &'static [u8]>>,
    handlers: Option<Table<'t, &'static str, &'static [u8]>>,
    index: Option<Table<'t, &'static [u8], &'static [u8]>>,
    ids: Option<Table<'t, &'static str, &'static [u8]>>,
    dead: Option<Table<'t, (&'static str, &'static str), &'static [u8]>>,
    journal: Option<Table<'t, u64, &'static [u8]>>,
    by_aggregate: Option<Table<'t, (&'static str, u64), ()>>,
    rm: Vec<Option<RawTable<'t>>>,
}

impl Opening<'_> {
    /// Runs `fill`, which opens the tables into this; see the type's documentation for a
    /// panic.
    fn open(&mut self, fill: impl FnOnce(&mut Self) -> Result<(), CommitError>) -> Result<(), CommitError> {
        match catch_unwind(AssertUnwindSafe(|| fill(self))) {
            Ok(result) => result,
            Err(panic) => {
                close_contained(self.meta.take());
                close_contained(self.handlers.take());
                close_contained(self.index.take());
                close_contained(self.ids.take());
                close_contained(self.dead.take());
                close_contained(self.journal.take());
                close_contained(self.by_aggregate.take());
                for table in std::mem::take(&mut self.rm) {
                    close_contained(table);
                }
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// Drops (closes) `table`, stopping a panic of its close: see [`Opening`].
fn close_contained<T>(table: T) {
    drop(catch_unwind(AssertUnwindSafe(move || drop(table))));
}

/// The open tables and buffered writes of one write transaction.
struct Batch<'t, 'r, E> {
    store: &'t Store,
    reg: &'r Registry<E>,
    subset: Vec<usize>,
    /// The index-row bit of each handler in `subset`.
    slots: Vec<u32>,
    records: Vec<HandlerRecord>,
    original_records: Vec<HandlerRecord>,
    wrote: bool,
    start_head: u64,
    head: u64,
    now: Timestamp,
    mode: Mode,
    meta: Table<'t, &'static str, &'static [u8]>,
    handlers_t: Table<'t, &'static str, &'static [u8]>,
    index: Table<'t, &'static [u8], &'static [u8]>,
    ids: Table<'t, &'static str, &'static [u8]>,
    has_explicit_ids: bool,
    journal: Option<Table<'t, u64, &'static [u8]>>,
    by_aggregate: Option<Table<'t, (&'static str, u64), ()>>,
    dead: Table<'t, (&'static str, &'static str), &'static [u8]>,
    rm: Vec<Option<RawTable<'t>>>,
    index_overlay: BTreeMap<Vec<u8>, Option<IndexRow>>,
    ids_overlay: BTreeMap<String, u64>,
    dead_overlay: BTreeMap<(String, String), Option<DeadLetter>>,
    dead_filter: Option<Option<HashSet<u64>>>,
    /// The slot of the handler a rebuild replays the journal for (see [`Batch::process`]).
    rebuilding: Option<u32>,
    /// Event schemas first used by this batch, written with it (see [`crate::schemas`]).
    new_schemas: Vec<(u32, EventSchema)>,
    /// The key of an index row this batch wrote, recorded as the index's probe (see
    /// `META_INDEX_PROBE`).
    probe: Option<Vec<u8>>,
    /// In a rebuild, the first applied-at times of offsets the replay cleared and has not
    /// applied again yet, by index key: an id whose first journal entry is rejected by the
    /// replay and a later one applied keeps the time it was first applied at.
    cleared_at: HashMap<Vec<u8>, u64>,
    /// In a rebuild, the handler's dead letters from before it, by event id: one the
    /// replay records again keeps its attempts and times (replaying history is not a new
    /// attempt); one it does not record again is gone with the rebuild.
    prior_dead: HashMap<String, DeadLetter>,
    ws: WriteSet,
    scratch: Vec<u8>,
    /// The index key of the event being looked up.
    key: Vec<u8>,
    /// The stored index's greatest key, its row checked (`None` inside: the index is
    /// empty), read at the first miss and forgotten when the batch writes the index (see
    /// [`Batch::check_index_neighbours`]).
    index_tail: OnceCell<Option<Vec<u8>>>,
    /// The stable encoding of the event being accepted, at the current schema version.
    body: Vec<u8>,
}

fn decode_opt<T: serde::de::DeserializeOwned>(
    bytes: Option<redb::AccessGuard<'_, &[u8]>>,
) -> Result<Option<T>, CommitError> {
    Ok(match bytes {
        Some(b) => Some(codec::decode(b.value())?),
        None => None,
    })
}

/// A journal entry being replayed: where it is and how it was stored.
#[derive(Clone, Copy)]
pub(crate) struct Stored {
    /// Its position.
    pub position: u64,
    /// The schema version of its body.
    pub version: u32,
    /// blake3 of its body as stored.
    pub hash: PayloadHash,
}

/// Whether a delivery carries the payload first accepted under its id.
enum Same {
    Yes,
    /// Yes, judged by upcasting the row's older payload; the row now records the current
    /// version's hash and must be written.
    Upgraded,
    No,
}

/// What the event's own code says of it, asked once per delivery.
struct Facts<'e> {
    occurred_at: u64,
    aggregate_id: &'e str,
    name: &'e str,
}

impl<'e> Facts<'e> {
    /// Asks the event, turning a panic of its code into the reason to refuse it.
    fn of<E: Event>(event: &'e E) -> Result<Self, String> {
        catch_unwind(AssertUnwindSafe(|| Facts {
            occurred_at: event.occurred_at().0,
            aggregate_id: event.aggregate_id(),
            name: event.event_name(),
        }))
        .map_err(|panic| format!("the event's own code panicked: {}", panic_message(&*panic)))
    }
}

/// The report of an event that was not accepted.
fn refused(reason: String) -> Processed {
    Processed {
        position: None,
        outcome: EventOutcome::Refused { reason },
        handlers: HandlerOutcomes::default(),
    }
}

/// The most bytes of a dead letter's reason that are kept.
const MAX_REASON_LEN: usize = 4 << 10;

/// `reason`, cut on a character boundary to at most [`MAX_REASON_LEN`] bytes.
fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_LEN {
        return reason.to_owned();
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", reason.get(..end).unwrap_or_default())
}

/// The damage found next to a key that a lookup missed.
fn damaged_near(what: &str, source: codec::CodecError) -> CommitError {
    CommitError::Corrupted {
        what: format!("looking up {what}"),
        reason: format!("a record next to it is filed under a key it was not written for ({source})"),
    }
}

impl<'t, 'r, E: Event> Batch<'t, 'r, E> {
    fn open(
        store: &'t Store,
        txn: &'t WriteTransaction,
        reg: &'r Registry<E>,
        subset: Vec<usize>,
        mode: Mode,
        now: Timestamp,
        shadow_tables: bool,
    ) -> Result<Self, CommitError> {
        let f = |e: redb::TableError| store.fail(e);
        let mut o = Opening::default();
        o.open(|o| {
            o.meta = Some(txn.open_table(META).map_err(f)?);
            o.handlers = Some(txn.open_table(HANDLERS).map_err(f)?);
            o.index = Some(txn.open_table(EVENT_INDEX).map_err(f)?);
            o.ids = Some(txn.open_table(EVENT_IDS).map_err(f)?);
            o.dead = Some(txn.open_table(DEAD_LETTERS).map_err(f)?);
            if store.journal_enabled() {
                o.journal = Some(txn.open_table(JOURNAL).map_err(f)?);
                o.by_aggregate = Some(txn.open_table(JOURNAL_BY_AGGREGATE).map_err(f)?);
            }
            o.rm = (0..reg.tables.len()).map(|_| None).collect();
            for &i in &subset {
                for t in reg.handlers.get(i).map(|h| h.tables.as_slice()).unwrap_or_default() {
                    let name = if shadow_tables { shadow(t.id.name) } else { physical(t.id.name) };
                    let table = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&name)).map_err(f)?;
                    if let Some(slot) = o.rm.get_mut(t.slot) {
                        *slot = Some(table);
                    }
                }
            }
            Ok(())
        })?;
        let Opening {
            meta: Some(meta),
            handlers: Some(handlers_t),
            index: Some(index),
            ids: Some(ids),
            dead: Some(dead),
            journal,
            by_aggregate,
            rm,
        } = o
        else {
            return Err(CommitError::Corrupted {
                what: "opening a batch's tables".into(),
                reason: "a table opened without error is missing".into(),
            });
        };
        let has_explicit_ids = !ids.is_empty().map_err(|e| store.fail(e))?;
        let head: u64 = decode_opt(meta.get(META_HEAD).map_err(|e| store.fail(e))?)?.unwrap_or(0);
        let mut records = Vec::with_capacity(subset.len());
        for &i in &subset {
            let Some(h) = reg.handlers.get(i) else {
                return Err(CommitError::UnknownHandler(format!("#{i}")));
            };
            let rec: HandlerRecord = decode_opt(handlers_t.get(h.name.as_str()).map_err(|e| store.fail(e))?)?
                .ok_or_else(|| CommitError::UnknownHandler(h.name.to_string()))?;
            records.push(rec);
        }
        let slots = subset.iter().filter_map(|&i| reg.handlers.get(i).map(|h| h.slot)).collect();
        Ok(Self {
            store,
            reg,
            subset,
            slots,
            original_records: records.clone(),
            records,
            wrote: false,
            start_head: head,
            head,
            now,
            mode,
            meta,
            handlers_t,
            index,
            ids,
            has_explicit_ids,
            journal,
            by_aggregate,
            dead,
            rm,
            index_overlay: BTreeMap::new(),
            ids_overlay: BTreeMap::new(),
            dead_overlay: BTreeMap::new(),
            // The filter of the previous batch, when there was one: a superset of the
            // stored dead letters, since only a batch adds them and this one adds to it.
            dead_filter: store.dead_filter.lock().take().map(Some),
            rebuilding: None,
            new_schemas: Vec::new(),
            probe: None,
            cleared_at: HashMap::new(),
            prior_dead: HashMap::new(),
            ws: WriteSet::new(reg.tables.len()),
            scratch: Vec::with_capacity(256),
            key: Vec::with_capacity(64),
            index_tail: OnceCell::new(),
            body: Vec::with_capacity(256),
        })
    }

    /// The index row at the key in `self.key`: the batch's own version, or the stored one.
    /// With `check_applied`, a stored row is first read in place, and a row that every
    /// handler of the batch applied with `ev`'s payload is reported as such without being
    /// decoded: a re-delivery, the most common event to see twice, costs one lookup and no
    /// allocation. (Rows this batch changed go the full way.)
    ///
    /// A miss is checked against the rows on either side of the key: a row whose key was
    /// damaged (so that it no longer sorts where it was written) is next to where its old
    /// key would be, and fails its keyed checksum there, so a damaged index is reported as
    /// damage instead of passing an event already applied for a new one.
    fn lookup(&self, ev: &PreparedEvent<E>, check_applied: bool) -> Result<Lookup, CommitError> {
        if let Some(row) = self.index_overlay.get(self.key.as_slice()) {
            return Ok(Lookup::Row(row.clone()));
        }
        let key = self.key.as_slice();
        let Some(stored) = self.index.get(key).map_err(|e| self.store.fail(e))? else {
            self.check_index_neighbours(key, ev)?;
            return Ok(Lookup::Row(None));
        };
        if check_applied {
            let head: IndexRowHead<'_> = codec::decode_prefix_keyed(key, stored.value())?;
            if head.hash == ev.hash.0 && self.slots.iter().all(|&slot| head.has(slot)) {
                return Ok(Lookup::AppliedByAll);
            }
        }
        Ok(Lookup::Row(Some(codec::decode_keyed(key, stored.value())?)))
    }

    /// See [`Batch::lookup`]: the rows just before and just after `key` must pass their
    /// keyed checksums and sort before and after it. A damaged separator in a branch page
    /// sends a lookup to the wrong leaf; the neighbours found from there are then out of
    /// order around the key (the tree's walk to the next leaf returns the key itself, or one
    /// on the wrong side of it).
    ///
    /// A key above the stored index's greatest key (the common case of a stream whose
    /// times increase) has that row as its only neighbour: the row is read and checked once
    /// per batch, by a walk down the right edge of the tree that no separator steers, and
    /// the key is checked against it without another lookup.
    fn check_index_neighbours(&self, key: &[u8], ev: &PreparedEvent<E>) -> Result<(), CommitError> {
        let fail = |e| self.store.fail(e);
        let what = || format!("the offsets of event {}", ev.id);
        let tail = match self.index_tail.get() {
            Some(tail) => tail,
            None => {
                let tail = match self.index.last().map_err(fail)? {
                    Some((k, v)) => {
                        codec::verify_keyed(k.value(), v.value()).map_err(|e| damaged_near(&what(), e))?;
                        Some(k.value().to_vec())
                    }
                    None => None,
                };
                self.index_tail.get_or_init(|| tail)
            }
        };
        if tail.as_deref().is_none_or(|greatest| key > greatest) {
            return Ok(());
        }
        let before = self.index.range::<&[u8]>(..key).map_err(fail)?.next_back();
        let after = self.index.range::<&[u8]>(key..).map_err(fail)?.next();
        for (item, below) in [(before, true), (after, false)] {
            let Some(item) = item else { continue };
            let (k, v) = item.map_err(fail)?;
            let found = k.value();
            if (below && found >= key) || (!below && found <= key) {
                return Err(CommitError::Corrupted {
                    what: format!("looking up {}", what()),
                    reason: "the index is out of order around its key: a branch page is damaged".into(),
                });
            }
            codec::verify_keyed(found, v.value()).map_err(|e| damaged_near(&what(), e))?;
        }
        Ok(())
    }

    /// The filing time of an id in `event_ids`, if it has one. A miss for an id whose
    /// time is not in the id itself is checked like an index miss ([`Batch::lookup`]).
    fn explicit_time(&self, id: &str, canonical: Option<u64>) -> Result<Option<u64>, CommitError> {
        let fail = |e| self.store.fail(e);
        match self.ids.get(id).map_err(fail)? {
            Some(v) => Ok(Some(codec::decode_keyed(id.as_bytes(), v.value())?)),
            None => {
                if canonical.is_none() {
                    let before = self.ids.range::<&str>(..id).map_err(fail)?.next_back();
                    let after = self.ids.range::<&str>(id..).map_err(fail)?.next();
                    for item in [before, after].into_iter().flatten() {
                        let (k, v) = item.map_err(fail)?;
                        codec::verify_keyed(k.value().as_bytes(), v.value())
                            .map_err(|e| damaged_near(&format!("where event {id} is filed"), e))?;
                    }
                }
                Ok(None)
            }
        }
    }

    /// Finds the index row of `ev`'s id: where it is filed, the row, and whether a new row
    /// filed at its `occurred_at` needs an `event_ids` entry to be found again. With
    /// `check_applied`, see [`Batch::lookup`].
    fn locate(
        &mut self,
        ev: &PreparedEvent<E>,
        occurred_at: u64,
        check_applied: bool,
    ) -> Result<Located, CommitError> {
        let id = ev.id.as_str();
        let canonical_at = canonical_time(id);
        let explicit = match self.ids_overlay.get(id) {
            Some(t) => Some(*t),
            None if self.has_explicit_ids => self.explicit_time(id, canonical_at)?,
            None => None,
        };
        // An id with an `event_ids` entry is filed at that time, found or not; otherwise a
        // default id is looked for at the time it carries.
        let canonical = if explicit.is_some() { None } else { canonical_at };
        if let Some(t) = explicit.or(canonical) {
            index_key_into(t, id, &mut self.key);
            match self.lookup(ev, check_applied)? {
                Lookup::AppliedByAll => return Ok(Located::AppliedByAll),
                Lookup::Row(None) if explicit.is_none() => {}
                Lookup::Row(row) => {
                    return Ok(Located::Row { key: self.key.clone(), row, needs_id_entry: false })
                }
            }
        }
        Ok(Located::Row {
            key: index_key(occurred_at, id),
            row: None,
            needs_id_entry: canonical != Some(occurred_at),
        })
    }

    fn load_dead(&self, handler: &str, id: &str) -> Result<Option<DeadLetter>, CommitError> {
        if let Some(d) = self.dead_overlay.get(&(handler.to_string(), id.to_string())) {
            return Ok(d.clone());
        }
        decode_opt(self.dead.get((handler, id)).map_err(|e| self.store.fail(e))?)
    }

    /// The schema id of `(name, version)`, taking a new one (written with the batch) the
    /// first time it is used.
    fn schema_id(&mut self, name: &str, version: u32) -> u32 {
        if let Some(id) = self.store.schemas.read().id_of(name, version) {
            return id;
        }
        if let Some((id, _)) = self.new_schemas.iter().find(|(_, s)| s.name == name && s.version == version) {
            return *id;
        }
        let next = self.store.schemas.read().next_id();
        let id = next.saturating_add(u32::try_from(self.new_schemas.len()).unwrap_or(u32::MAX));
        self.new_schemas.push((id, EventSchema { name: name.to_owned(), version }));
        id
    }

    /// Whether `ev` carries the payload recorded in `row`. A row recorded at an older schema
    /// version is compared after upcasting: the journal entry it points at is read, upcast
    /// and hashed at the current version; when it matches, the row takes the current hash.
    /// `stored` is the journal entry `ev` was replayed from, if any: when it was stored at
    /// the row's version, its stored hash is compared directly.
    fn same_payload(
        &mut self,
        row: &mut IndexRow,
        ev: &PreparedEvent<E>,
        stored: Option<Stored>,
    ) -> Result<Same, CommitError> {
        if row.hash == ev.hash.0 {
            return Ok(Same::Yes);
        }
        if let Some(s) = stored {
            if s.version == row.version {
                return Ok(if s.hash.0 == row.hash { Same::Yes } else { Same::No });
            }
        }
        if row.version == E::SCHEMA_VERSION || row.position == 0 {
            return Ok(Same::No);
        }
        let Some(journal) = self.journal.as_ref() else { return Ok(Same::No) };
        let Some(bytes) = journal.get(row.position).map_err(|e| self.store.fail(e))? else {
            return Ok(Same::No);
        };
        let record: JournalRecord<'_> = codec::decode(bytes.value())?;
        let schema = self.store.journal_schema(row.position, &record)?;
        let first = self.reg.upcasters.decode(schema.version, record.body).map_err(|source| {
            CommitError::Unreadable {
                what: format!(
                    "the journal entry at position {} ({}, schema version {})",
                    row.position, schema.name, schema.version
                ),
                source,
            }
        })?;
        let hash = PayloadHash::of_bytes(&codec::stable_encode(&first)?);
        if hash != ev.hash {
            return Ok(Same::No);
        }
        row.hash = hash.0;
        row.version = E::SCHEMA_VERSION;
        Ok(Same::Upgraded)
    }

    /// Encodes `ev` into `self.body` for a journal entry or a dead letter, turning a panic
    /// of its `Serialize` into the reason to refuse it.
    fn encode_body(&mut self, ev: &PreparedEvent<E>) -> Result<Result<(), String>, CommitError> {
        self.body.clear();
        let body = &mut self.body;
        match catch_unwind(AssertUnwindSafe(|| ev.encode_into(body))) {
            Ok(Ok(())) => Ok(Ok(())),
            Ok(Err(e)) => Ok(Err(format!("the event could not be encoded: {e}"))),
            Err(panic) => Ok(Err(format!("the event's own code panicked: {}", panic_message(&*panic)))),
        }
    }

    /// Why a new event cannot be accepted, if it cannot: it must fit in a stored value
    /// with its journal entry or dead letter around it, and its encoding must read back
    /// as itself.
    fn refusal(&self, ev: &PreparedEvent<E>, facts: &Facts<'_>) -> Option<String> {
        let limit = self.store.max_event_bytes();
        let size =
            self.body.len().saturating_add(facts.aggregate_id.len()).saturating_add(ev.id.as_str().len());
        if size > limit {
            return Some(format!(
                "the event is too large to store: {size} bytes with its aggregate id and event id, \
                 more than the {limit} allowed"
            ));
        }
        match catch_unwind(AssertUnwindSafe(|| PreparedEvent::<E>::check_reads_back(&self.body))) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!(
                "the event's encoding does not read back as the same event, so it could never be \
                 replayed ({e}); see the serde shapes driftless supports"
            )),
            Err(panic) => Some(format!("the event's own code panicked: {}", panic_message(&*panic))),
        }
    }

    /// Processes one delivery: a new one (`stored` is `None`) or a journal entry replayed
    /// by a catch-up or rebuild.
    fn process(&mut self, ev: &PreparedEvent<E>, stored: Option<Stored>) -> Result<Processed, CommitError> {
        let facts = match Facts::of(&ev.event) {
            Ok(facts) => facts,
            Err(reason) => return Ok(refused(reason)),
        };
        let known_position = stored.map_or(0, |s| s.position);
        let (key, mut row, needs_id_entry) =
            match self.locate(ev, facts.occurred_at, self.mode == Mode::Live)? {
                Located::Row { key, row, needs_id_entry } => (key, row, needs_id_entry),
                Located::AppliedByAll => {
                    return Ok(Processed {
                        position: None,
                        outcome: EventOutcome::Duplicate,
                        handlers: HandlerOutcomes::same_for(&self.subset, HandlerOutcome::Duplicate),
                    })
                }
            };
        let id = ev.id.as_str();
        // A rebuild starts the handler afresh without first clearing its bit in every index
        // row (a rewrite of every row): its bit from before the rebuild is cleared here, at
        // the id's first journal entry, which is never after the row's position. A bit set
        // by the rebuild itself is at or after that position.
        //
        // Where the replay applies the id again, the offset keeps the time it was first
        // applied at, so that a row the rebuild leaves as it was is not written again:
        // `before` is the row as it was before its bit was cleared (`None`: not cleared), to
        // compare with at the end.
        let mut before = None;
        let mut kept_at = None;
        if let (Some(slot), Some(r)) = (self.rebuilding, row.as_mut()) {
            if r.has(slot) && (r.position == 0 || known_position <= r.position) {
                before = Some(r.clone());
                kept_at = Some(r.applied_at_of(slot));
                r.clear(slot);
            } else if !r.has(slot) {
                kept_at = self.cleared_at.get(&key).copied();
            }
        }
        let was_new = row.is_none();
        let mut changed = false;
        if let Some(r) = row.as_mut() {
            match self.same_payload(r, ev, stored)? {
                Same::Yes => {}
                Same::Upgraded => changed = true,
                Same::No => {
                    let recorded = r.payload_hash();
                    if before.is_some() {
                        self.remember_cleared(&key, kept_at);
                        self.index_overlay.insert(key, row);
                    }
                    return Ok(Processed {
                        position: None,
                        outcome: EventOutcome::Conflict { recorded },
                        handlers: HandlerOutcomes::default(),
                    });
                }
            }
        }
        let needed = self
            .subset
            .iter()
            .any(|&i| self.reg.handlers.get(i).is_some_and(|h| !row.as_ref().is_some_and(|r| r.has(h.slot))));
        // A new event, or one some handler still needs, is accepted: encoded once, for its
        // journal entry and any dead letter.
        let encoded = match self.mode {
            Mode::Live if was_new || needed => {
                if let Err(reason) = self.encode_body(ev)? {
                    return Ok(refused(reason));
                }
                if was_new {
                    if let Some(reason) = self.refusal(ev, &facts) {
                        return Ok(refused(reason));
                    }
                }
                true
            }
            _ => false,
        };
        let position = match self.mode {
            Mode::Live if encoded && self.journal.is_some() => {
                self.head += 1;
                let schema = self.schema_id(facts.name, E::SCHEMA_VERSION);
                self.append_journal(&facts, schema, self.head)?;
                Some(self.head)
            }
            Mode::Live => None,
            Mode::Replay => Some(known_position),
        };
        if was_new {
            // The first accepted payload of the id, recorded whatever its handlers do.
            row = Some(IndexRow {
                position: position.unwrap_or(0),
                applied_at: 0,
                hash: ev.hash.0,
                applied: Vec::new(),
                version: E::SCHEMA_VERSION,
                late: Vec::new(),
            });
            changed = true;
            if needs_id_entry {
                self.ids_overlay.insert(id.to_string(), facts.occurred_at);
            }
        }
        let mut outcomes = Vec::with_capacity(self.subset.len());
        for k in 0..self.subset.len() {
            let (Some(&i), Some(rec)) = (self.subset.get(k), self.records.get(k)) else { continue };
            let Some(h) = self.reg.handlers.get(i) else { continue };
            let deferred = match self.mode {
                Mode::Live => rec.paused || rec.seen < self.start_head,
                Mode::Replay => known_position <= rec.seen,
            };
            // A handler that already applied the event skips it as a duplicate, paused or
            // not: it does not need it from the journal later.
            if row.as_ref().is_some_and(|r| r.has(h.slot)) {
                outcomes.push((i, HandlerOutcome::Duplicate));
                continue;
            }
            if deferred {
                outcomes.push((i, HandlerOutcome::Deferred));
                continue;
            }
            let pos = position.unwrap_or(0);
            // `handles` is projector code too: a panic in it dead-letters the event, as one
            // in `apply` does, instead of failing the whole commit.
            let wanted = catch_unwind(AssertUnwindSafe(|| h.projector.handles(&ev.event)));
            let result = if let Err(panic) = &wanted {
                Err(panic_text(panic))
            } else if matches!(wanted, Ok(true)) {
                let ctx = ProjectionContext {
                    event_id: ev.id.clone(),
                    handler: h.name.clone(),
                    occurred_at: Timestamp(facts.occurred_at),
                    applied_at: self.now,
                    payload_hash: ev.hash,
                    position: pos,
                };
                let committed = Committed { tables: &self.rm };
                let mut views = self.ws.views(&h.name, &h.tables, &committed);
                let projector = &h.projector;
                match catch_unwind(AssertUnwindSafe(|| projector.apply(&ev.event, &ctx, &mut views))) {
                    Ok(Ok(())) => Ok(true),
                    Ok(Err(ApplyError::View(ViewError::Storage { table, source }))) => {
                        self.ws.discard_pending();
                        return Err(self.store.fail(ViewError::Storage { table, source }));
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(panic) => Err(panic_text(&panic)),
                }
            } else {
                Ok(false)
            };
            match result {
                Ok(handled) => {
                    self.ws.keep_pending();
                    let at = kept_at.unwrap_or(self.now.0);
                    if self.rebuilding == Some(h.slot) && !self.cleared_at.is_empty() {
                        self.cleared_at.remove(&key);
                    }
                    if let Some(r) = row.as_mut() {
                        if r.is_empty() {
                            r.applied_at = at;
                            r.late.clear();
                        }
                        if self.rebuilding == Some(h.slot) && (r.position == 0 || pos < r.position) {
                            r.position = pos;
                        }
                        r.set(h.slot, at);
                    }
                    changed = true;
                    if let Some(rec) = self.records.get_mut(k) {
                        if handled {
                            let occurred = Timestamp(facts.occurred_at);
                            rec.applied += 1;
                            rec.last_occurred_at =
                                Some(rec.last_occurred_at.map_or(occurred, |o| o.max(occurred)));
                            rec.last_applied_at = Some(self.now);
                            rec.last_commit_lag_ms = Some(self.now.millis_since(occurred));
                        }
                    }
                    self.clear_dead_letter(k, i, id)?;
                    outcomes.push((
                        i,
                        if handled { HandlerOutcome::Applied } else { HandlerOutcome::NotHandled },
                    ));
                }
                Err(reason) => {
                    self.ws.discard_pending();
                    let reason = bounded_reason(&reason);
                    self.record_dead_letter(k, i, ev, &facts, encoded, pos, &reason)?;
                    outcomes.push((i, HandlerOutcome::DeadLettered { reason }));
                }
            }
        }
        // A row the rebuild cleared and did not apply again keeps its first time for a
        // later entry of the id.
        if before.is_some() && self.rebuilding.is_some_and(|slot| !row.as_ref().is_some_and(|r| r.has(slot)))
        {
            self.remember_cleared(&key, kept_at);
        }
        // A row the rebuild cleared is written unless it ended as it was.
        let rewritten = match &before {
            Some(b) => row.as_ref() != Some(b),
            None => changed,
        };
        if rewritten {
            self.index_overlay.insert(key, row);
        }
        if self.mode == Mode::Replay {
            for rec in &mut self.records {
                rec.seen = rec.seen.max(known_position);
            }
        }
        Ok(Processed { position, outcome: summarize(&outcomes), handlers: outcomes.into() })
    }

    /// Up to `limit` journal entries from `from` to `upto`, decoded (and upcast) as current
    /// events, with where and how each was stored.
    fn read_entries(
        &self,
        from: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(Stored, PreparedEvent<E>)>, CommitError> {
        let journal = self.journal.as_ref().ok_or(CommitError::NoJournal)?;
        let mut out = Vec::with_capacity(limit.min(upto.saturating_sub(from).saturating_add(1) as usize));
        for item in journal.range(from..=upto).map_err(|e| self.store.fail(e))?.take(limit) {
            let (k, v) = item.map_err(|e| self.store.fail(e))?;
            let position = k.value();
            let record: JournalRecord<'_> = codec::decode(v.value())?;
            let schema = self.store.journal_schema(position, &record)?;
            let ev = self.reg.prepare(schema.version, record.body, || {
                format!(
                    "the journal entry at position {position} ({}, schema version {})",
                    schema.name, schema.version
                )
            })?;
            let hash = if schema.version == E::SCHEMA_VERSION {
                ev.hash
            } else {
                PayloadHash::of_bytes(record.body)
            };
            out.push((Stored { position, version: schema.version, hash }, ev));
        }
        Ok(out)
    }

    /// Appends the event encoded in `self.body` to the journal at `position`.
    fn append_journal(&mut self, facts: &Facts<'_>, schema: u32, position: u64) -> Result<(), CommitError> {
        let Some(journal) = self.journal.as_mut() else { return Ok(()) };
        let entry = JournalRecord {
            position,
            aggregate_id: facts.aggregate_id,
            occurred_at: Timestamp(facts.occurred_at),
            accepted_at: self.now,
            schema,
            body: &self.body,
        };
        self.scratch.clear();
        codec::encode_into(&entry, &mut self.scratch)?;
        journal.insert(position, self.scratch.as_slice()).map_err(|e| self.store.fail(e))?;
        Ok(())
    }

    /// Keeps the first applied-at time of an offset the rebuild cleared and has not
    /// applied again, for a later journal entry of the same id ([`Batch::cleared_at`]).
    fn remember_cleared(&mut self, key: &[u8], at: Option<u64>) {
        if let Some(at) = at {
            self.cleared_at.insert(key.to_vec(), at);
        }
    }

    fn clear_dead_letter(&mut self, k: usize, i: usize, id: &str) -> Result<(), CommitError> {
        let (Some(rec), Some(h)) = (self.records.get(k), self.reg.handlers.get(i)) else { return Ok(()) };
        if rec.dead_letters == 0 {
            return Ok(());
        }
        let name = h.name.as_str();
        if self.dead_filter.is_none() {
            self.dead_filter = Some(self.build_dead_filter()?);
        }
        // The filter holds every stored dead letter and every one this batch recorded, so a
        // key it lacks has none to clear: at most a removal by this batch, already done.
        if let Some(Some(filter)) = &self.dead_filter {
            if !filter.contains(&dead_key_hash(name, id)) {
                return Ok(());
            }
        }
        let exists = match self.dead_overlay.get(&(name.to_string(), id.to_string())) {
            Some(d) => d.is_some(),
            None => self.dead.get((name, id)).map_err(|e| self.store.fail(e))?.is_some(),
        };
        if exists {
            self.dead_overlay.insert((name.to_string(), id.to_string()), None);
            if let Some(rec) = self.records.get_mut(k) {
                rec.dead_letters = rec.dead_letters.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// Hashes of every dead letter's key, stored or recorded by this batch, so that applying
    /// an event rarely needs a lookup to learn it has no dead letter to clear. `None` when
    /// there are too many. Dead letters recorded later are added as they are recorded.
    fn build_dead_filter(&self) -> Result<Option<HashSet<u64>>, CommitError> {
        let total: u64 = self.records.iter().map(|r| r.dead_letters).sum();
        if total > DEAD_FILTER_MAX {
            return Ok(None);
        }
        let mut filter = HashSet::with_capacity(usize::try_from(total).unwrap_or(0));
        for item in self.dead.iter().map_err(|e| self.store.fail(e))? {
            let (k, _) = item.map_err(|e| self.store.fail(e))?;
            let (h, i) = k.value();
            filter.insert(dead_key_hash(h, i));
        }
        // Dead letters of this batch not yet flushed: once flushed they are in the table,
        // and the filter must hold them as it holds those stored before.
        for ((h, i), letter) in &self.dead_overlay {
            if letter.is_some() {
                filter.insert(dead_key_hash(h, i));
            }
        }
        Ok(Some(filter))
    }

    #[expect(clippy::too_many_arguments, reason = "the parts of one dead letter, all at hand in `process`")]
    fn record_dead_letter(
        &mut self,
        k: usize,
        i: usize,
        ev: &PreparedEvent<E>,
        facts: &Facts<'_>,
        encoded: bool,
        position: u64,
        reason: &str,
    ) -> Result<(), CommitError> {
        let Some(h) = self.reg.handlers.get(i) else { return Ok(()) };
        let name = h.name.to_string();
        tracing::debug!(handler = %name, event_id = %ev.id, %reason, "event dead-lettered");
        // The current version's encoding: what a retry decodes.
        let body = if encoded {
            self.body.clone()
        } else {
            match catch_unwind(AssertUnwindSafe(|| ev.encoding())) {
                Ok(body) => body?,
                Err(panic) => {
                    return Err(CommitError::Corrupted {
                        what: "encoding a replayed event for its dead letter".into(),
                        reason: panic_message(&*panic),
                    })
                }
            }
        };
        let prior = self.load_dead(&name, ev.id.as_str())?;
        // A rebuild replays history, which is no new attempt: a dead letter the handler had
        // before keeps its attempts and times, with what the replay says of it now.
        if let Some(earlier) = self.prior_dead.get(ev.id.as_str()) {
            let mut letter = earlier.clone();
            letter.reason = reason.to_string();
            letter.position = position;
            letter.body = body;
            letter.event_name = facts.name.to_owned();
            letter.schema_version = E::SCHEMA_VERSION;
            if prior.is_none() {
                if let Some(rec) = self.records.get_mut(k) {
                    rec.dead_letters += 1;
                }
            }
            if let Some(Some(filter)) = self.dead_filter.as_mut() {
                filter.insert(dead_key_hash(&name, ev.id.as_str()));
            }
            self.dead_overlay.insert((name, ev.id.to_string()), Some(letter));
            return Ok(());
        }
        let letter = match prior {
            Some(mut d) => {
                d.attempts = d.attempts.saturating_add(1);
                d.reason = reason.to_string();
                d.last_failed_at = self.now;
                d.position = position;
                d.body = body;
                d.event_name = facts.name.to_owned();
                d.schema_version = E::SCHEMA_VERSION;
                d
            }
            None => {
                if let Some(rec) = self.records.get_mut(k) {
                    rec.dead_letters += 1;
                }
                DeadLetter {
                    handler: name.clone(),
                    event_id: ev.id.to_string(),
                    reason: reason.to_string(),
                    attempts: 1,
                    first_failed_at: self.now,
                    last_failed_at: self.now,
                    position,
                    body,
                    event_name: facts.name.to_owned(),
                    schema_version: E::SCHEMA_VERSION,
                }
            }
        };
        if let Some(Some(filter)) = self.dead_filter.as_mut() {
            filter.insert(dead_key_hash(&name, ev.id.as_str()));
        }
        self.dead_overlay.insert((name, ev.id.to_string()), Some(letter));
        Ok(())
    }

    /// Writes the buffered rows, index rows, journal keys and dead letters into the
    /// transaction, in key order.
    fn flush(&mut self) -> Result<(), CommitError> {
        self.flush_rows()?;
        self.flush_bookkeeping()
    }

    /// Writes the buffered read-model rows into the transaction, in key order.
    fn flush_rows(&mut self) -> Result<(), CommitError> {
        let store = self.store;
        self.wrote |= !self.ws.is_empty();
        for (slot, rows) in self.ws.take().into_iter().enumerate() {
            let Some(Some(table)) = self.rm.get_mut(slot) else { continue };
            for (key, write) in rows {
                match write {
                    Some(body) => {
                        self.scratch.clear();
                        codec::seal_into(&body, &mut self.scratch)?;
                        table.insert(key.as_slice(), self.scratch.as_slice()).map(drop)
                    }
                    None => table.remove(key.as_slice()).map(drop),
                }
                .map_err(|e| store.fail(e))?;
            }
        }
        Ok(())
    }

    /// Writes the buffered index rows, journal keys and dead letters into the transaction,
    /// in key order. Index rows and `event_ids` entries are sealed with their keys.
    fn flush_bookkeeping(&mut self) -> Result<(), CommitError> {
        let store = self.store;
        self.wrote |=
            !self.index_overlay.is_empty() || !self.ids_overlay.is_empty() || !self.dead_overlay.is_empty();
        if !self.index_overlay.is_empty() {
            self.index_tail = OnceCell::new();
        }
        for (key, row) in std::mem::take(&mut self.index_overlay) {
            match row {
                Some(row) => {
                    self.scratch.clear();
                    codec::encode_keyed_into(&key, &row, &mut self.scratch)?;
                    let inserted = self.index.insert(key.as_slice(), self.scratch.as_slice()).map(drop);
                    self.probe = Some(key);
                    inserted
                }
                None => self.index.remove(key.as_slice()).map(drop),
            }
            .map_err(|e| store.fail(e))?;
        }
        for (id, filed_at) in std::mem::take(&mut self.ids_overlay) {
            let bytes = codec::encode_keyed(id.as_bytes(), &filed_at)?;
            self.ids.insert(id.as_str(), bytes.as_slice()).map_err(|e| store.fail(e))?;
            self.has_explicit_ids = true;
        }
        for ((handler, id), letter) in std::mem::take(&mut self.dead_overlay) {
            match letter {
                Some(d) => {
                    let bytes = codec::encode(&d)?;
                    self.dead.insert((handler.as_str(), id.as_str()), bytes.as_slice()).map(drop)
                }
                None => self.dead.remove((handler.as_str(), id.as_str())).map(drop),
            }
            .map_err(|e| store.fail(e))?;
        }
        Ok(())
    }

    /// Flushes and records handler progress, the journal head and the event schemas first
    /// used. Returns whether the transaction changed anything (a batch of duplicates does
    /// not, and need not be committed) and the new schemas, to be known once it commits.
    fn finish(mut self) -> Result<(bool, Vec<(u32, EventSchema)>), CommitError> {
        self.flush()?;
        let store = self.store;
        for (k, &i) in self.subset.iter().enumerate() {
            let (Some(h), Some(rec)) = (self.reg.handlers.get(i), self.records.get_mut(k)) else { continue };
            if self.mode == Mode::Live && !rec.paused && rec.seen >= self.start_head {
                rec.seen = self.head;
            }
            if self.original_records.get(k) == Some(rec) {
                continue;
            }
            self.wrote = true;
            let bytes = codec::encode(rec)?;
            self.handlers_t.insert(h.name.as_str(), bytes.as_slice()).map_err(|e| store.fail(e))?;
        }
        if let Some(key) = self.probe.take() {
            let bytes = codec::encode(&key)?;
            self.meta.insert(META_INDEX_PROBE, bytes.as_slice()).map_err(|e| store.fail(e))?;
        }
        for (id, schema) in &self.new_schemas {
            let bytes = codec::encode(schema)?;
            self.meta.insert(schema_key(*id).as_str(), bytes.as_slice()).map_err(|e| store.fail(e))?;
            self.wrote = true;
        }
        if self.head != self.start_head {
            let bytes = codec::encode(&self.head)?;
            self.meta.insert(META_HEAD, bytes.as_slice()).map_err(|e| store.fail(e))?;
            if let (Some(journal), Some(by_aggregate)) = (self.journal.as_ref(), self.by_aggregate.as_mut()) {
                let filed: u64 =
                    decode_opt(self.meta.get(META_AGGREGATES_INDEXED).map_err(|e| store.fail(e))?)?
                        .unwrap_or(0);
                let mut unfiled = self.head.saturating_sub(filed);
                if unfiled >= AGGREGATE_FILING_MAX {
                    file_aggregates(store, journal, by_aggregate, filed, self.head)?;
                    let bytes = codec::encode(&self.head)?;
                    self.meta.insert(META_AGGREGATES_INDEXED, bytes.as_slice()).map_err(|e| store.fail(e))?;
                    unfiled = 0;
                }
                // Set under the write lock, so commits set it in commit order.
                store.unfiled.store(unfiled, std::sync::atomic::Ordering::SeqCst);
            }
            self.wrote = true;
        }
        let new_schemas = std::mem::take(&mut self.new_schemas);
        Ok((self.wrote, new_schemas))
    }
}

impl<E> Drop for Batch<'_, '_, E> {
    /// Hands the dead-letter filter of a batch of new deliveries on to the next batch. It
    /// stays a superset of the stored dead letters whether or not this batch commits:
    /// removals leave their hashes behind (a false positive costs one lookup), and such a
    /// batch opens its transaction itself, so a filter it built saw no removal that an abort
    /// could undo. Catch-up and rebuild batches, which remove dead letters earlier in their
    /// transaction, drop theirs; the next batch builds a new one when it needs it.
    fn drop(&mut self) {
        if self.mode != Mode::Live {
            return;
        }
        if let Some(Some(filter)) = self.dead_filter.take() {
            if filter.len() as u64 <= DEAD_FILTER_MAX {
                *self.store.dead_filter.lock() = Some(filter);
            }
        }
    }
}

/// The most dead letters for which a batch keeps a filter of key hashes.
const DEAD_FILTER_MAX: u64 = 200_000;

fn dead_key_hash(handler: &str, id: &str) -> u64 {
    use std::hash::BuildHasher;
    DEAD_FILTER_HASHER.hash_one((handler, id))
}

/// A fixed hasher: the filter lives for one batch, so its keys need no secret seed.
const DEAD_FILTER_HASHER: std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher> =
    std::hash::BuildHasherDefault::new();

fn summarize(outcomes: &[(usize, HandlerOutcome)]) -> EventOutcome {
    let any = |f: fn(&HandlerOutcome) -> bool| outcomes.iter().any(|(_, o)| f(o));
    if any(|o| matches!(o, HandlerOutcome::Applied)) {
        return EventOutcome::Applied;
    }
    // A handler not interested in the event did not try it: it does not make an event
    // that every interested handler rejected "applied".
    if let Some((_, HandlerOutcome::DeadLettered { reason })) =
        outcomes.iter().find(|(_, o)| matches!(o, HandlerOutcome::DeadLettered { .. }))
    {
        return EventOutcome::Rejected { reason: reason.clone() };
    }
    if any(|o| matches!(o, HandlerOutcome::Deferred)) {
        return EventOutcome::Deferred;
    }
    if any(|o| matches!(o, HandlerOutcome::NotHandled)) {
        return EventOutcome::Applied;
    }
    EventOutcome::Duplicate
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let msg =
        driftless_domain::panic_text(&**panic).unwrap_or_else(|| "a non-text panic payload".to_string());
    format!("the projector panicked: {msg}")
}

/// The most journal entries left unfiled in `journal_by_aggregate`: a commit that reaches
/// it files them all, inside the commit.
///
/// Filing in bulk keeps the per-aggregate index off the per-event write path: thousands of
/// sorted inserts touch each of its pages about once, where one insert per event would
/// dirty a random page per event. The engine files whenever its writer is idle
/// ([`Store::file_aggregates`]), so this bound is reached only under load without a pause;
/// there a filing inside a commit delays that commit by tens of milliseconds, so it is
/// rare. Entries not yet filed are found by scanning the journal's tail.
pub const AGGREGATE_FILING_MAX: u64 = 131_072;

/// Files journal entries `(after, upto]` in the per-aggregate index, in key order.
fn file_aggregates(
    store: &Store,
    journal: &Table<'_, u64, &'static [u8]>,
    by_aggregate: &mut Table<'_, (&'static str, u64), ()>,
    after: u64,
    upto: u64,
) -> Result<(), CommitError> {
    let mut keys: Vec<(String, u64)> = Vec::new();
    for item in journal.range(after.saturating_add(1)..=upto).map_err(|e| store.fail(e))? {
        let (_, v) = item.map_err(|e| store.fail(e))?;
        let head: JournalHead = codec::decode_prefix(v.value())?;
        keys.push((head.aggregate_id, head.position));
    }
    keys.sort_unstable();
    for (aggregate, position) in keys {
        by_aggregate.insert((aggregate.as_str(), position), ()).map_err(|e| store.fail(e))?;
    }
    Ok(())
}

/// How many journal entries one catch-up or rebuild step reads at a time.
const REPLAY_CHUNK: usize = 4096;

/// About how many bytes of read-model rows a rebuild keeps buffered before it writes them
/// into its transaction (see [`WriteSet::buffered_bytes`]).
const REBUILD_ROW_BUFFER: usize = 32 << 20;

/// What a catch-up or rebuild did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Journal entries read.
    pub replayed: u64,
    /// Events applied.
    pub applied: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Journal entries whose payload differs from the one first accepted under their event
    /// id: skipped, never applied (each is logged). Only a journal written before format 2,
    /// which recorded payloads only once a handler applied them, holds such entries.
    pub conflicts: u64,
}

impl ReplayReport {
    fn count(&mut self, r: &Processed, id: &EventId, position: u64) {
        self.replayed += 1;
        if let EventOutcome::Conflict { recorded } = &r.outcome {
            self.conflicts += 1;
            tracing::warn!(
                event_id = %id,
                position,
                recorded = %recorded.to_hex(),
                "a journal entry conflicts with the payload first accepted under its id; it is skipped"
            );
        }
        for (_, o) in &r.handlers {
            match o {
                HandlerOutcome::Applied => self.applied += 1,
                HandlerOutcome::DeadLettered { .. } => self.dead_lettered += 1,
                _ => {}
            }
        }
    }
}

impl Store {
    /// Runs a write that may panic inside redb on a damaged file: a panic poisons the store
    /// (redb may have written part of the transaction) and becomes
    /// [`CommitError::Corrupted`].
    pub(crate) fn contain_write<T>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> Result<T, CommitError>,
    ) -> Result<T, CommitError> {
        contain(what, |reason| self.poison(format!("{what}: {reason}")), f)
    }

    /// Projects a batch of new deliveries through every registered projector in ONE write
    /// transaction.
    ///
    /// For each (event, handler): a duplicate is skipped; an id already applied with
    /// another payload is a conflict (skipped, reported); otherwise `apply` runs. A failing
    /// or panicking `apply` leaves no offset and no write for that event and handler, and
    /// records a dead letter; the rest of the batch commits.
    ///
    /// # Errors
    /// [`CommitError`] when the transaction cannot be committed; nothing of the batch is
    /// then written, and storage failures poison the store.
    pub(crate) fn project<E: Event, D: Delivery<E>>(
        &self,
        reg: &Registry<E>,
        events: impl IntoIterator<Item = D>,
        now: Timestamp,
    ) -> Result<BatchReport, CommitError> {
        let events = events.into_iter();
        let capacity = events.size_hint().0;
        self.project_with(reg, now, capacity, |feed| events.into_iter().try_for_each(|d| feed.push(d)))
    }

    /// Projects new deliveries in ONE write transaction, as [`Store::project`] does, taking
    /// them from `feed` one at a time: each is processed as soon as it is pushed, so a
    /// caller gathering deliveries from several senders need not hold the first until the
    /// last has arrived. The transaction commits once `feed` returns `Ok`; the report has
    /// one entry per delivery pushed, in order (`capacity` is how many are expected).
    ///
    /// # Errors
    /// As [`Store::project`]. An error from `feed` abandons the batch: nothing of it is
    /// written, and the error is returned.
    pub(crate) fn project_with<E: Event>(
        &self,
        reg: &Registry<E>,
        now: Timestamp,
        capacity: usize,
        feed: impl FnOnce(&mut Feed<'_, E>) -> Result<(), CommitError>,
    ) -> Result<BatchReport, CommitError> {
        self.contain_write("project", || {
            let txn = self.begin_write()?;
            let mut batch =
                Batch::open(self, &txn, reg, (0..reg.handlers.len()).collect(), Mode::Live, now, false)?;
            let mut fed = Feed { batch: &mut batch, reports: Vec::with_capacity(capacity) };
            // On an error the transaction is dropped, which abandons it: its error is the
            // one to report, not a second one from aborting a transaction that failed.
            crate::error::caller(|| feed(&mut fed))?;
            let reports = fed.reports;
            let (wrote, new_schemas) = batch.finish()?;
            if wrote {
                self.commit(txn)?;
                self.schemas.write().extend(new_schemas);
            } else {
                txn.abort().map_err(|e| self.fail(e))?;
            }
            Ok(BatchReport { events: reports, committed_at: now })
        })
    }

    /// Whether the handler has processed every journal entry (and is not paused).
    ///
    /// # Errors
    /// [`CommitError`] when its record cannot be read.
    pub fn behind<E: Event>(&self, reg: &Registry<E>, handler: usize) -> Result<bool, CommitError> {
        let h =
            reg.handlers.get(handler).ok_or_else(|| CommitError::UnknownHandler(format!("#{handler}")))?;
        let rec = self
            .handler_record(h.name.as_str())?
            .ok_or_else(|| CommitError::UnknownHandler(h.name.to_string()))?;
        Ok(rec.seen < self.journal_head()?)
    }

    /// Brings one handler up to the journal head, in transactions of a few thousand
    /// entries. A paused handler is left alone.
    ///
    /// # Errors
    /// [`CommitError`] as for [`Store::project`].
    pub(crate) fn catch_up<E: Event>(
        &self,
        reg: &Registry<E>,
        handler: usize,
        now: &dyn Fn() -> Timestamp,
    ) -> Result<ReplayReport, CommitError> {
        self.contain_write("catch_up", || {
            let mut report = ReplayReport::default();
            loop {
                let txn = self.begin_write()?;
                let mut batch =
                    Batch::open(self, &txn, reg, vec![handler], Mode::Replay, caller(now), false)?;
                // The handler's progress and the journal are read in the transaction that
                // uses them.
                let Some(rec) = batch.records.first() else { return Ok(report) };
                if rec.paused || rec.seen >= batch.head {
                    return Ok(report);
                }
                let (from, upto) = (rec.seen + 1, batch.head);
                let entries = batch.read_entries(from, upto, REPLAY_CHUNK)?;
                if entries.is_empty() {
                    return Ok(report);
                }
                for (stored, ev) in &entries {
                    let r = batch.process(ev, Some(*stored))?;
                    report.count(&r, &ev.id, stored.position);
                }
                batch.finish()?;
                self.commit(txn)?;
            }
        })
    }

    /// Retries a dead letter: delivers the stored event again, as a new delivery. Handlers
    /// that applied it skip it as a duplicate; the others (the dead letter's handler among
    /// them) try it again, and success removes their dead letters. Like any delivery that
    /// some handler still needs, it is journaled, so a later rebuild or catch-up replays the
    /// retry too and does not undo it.
    ///
    /// # Errors
    /// [`CommitError`] as for [`Store::project`]; `Ok(None)` when there is no such dead
    /// letter.
    pub(crate) fn retry_dead_letter<E: Event>(
        &self,
        reg: &Registry<E>,
        handler: usize,
        event_id: &str,
        now: Timestamp,
    ) -> Result<Option<EventReport>, CommitError> {
        let h =
            reg.handlers.get(handler).ok_or_else(|| CommitError::UnknownHandler(format!("#{handler}")))?;
        let Some(letter) = self.dead_letter(h.name.as_str(), event_id)? else { return Ok(None) };
        let ev = reg.prepare(letter.schema_version, &letter.body, || {
            format!(
                "the dead letter of {} for event {} ({}, schema version {})",
                letter.handler, letter.event_id, letter.event_name, letter.schema_version
            )
        })?;
        Ok(self.project(reg, std::slice::from_ref(&ev), now)?.events.pop())
    }

    /// Rebuilds one handler's read models from the journal without downtime: the handler's
    /// offsets and dead letters are reset, every journal entry is projected into shadow
    /// tables, and the shadows replace the live tables — all in ONE write transaction, so a
    /// reader sees the old tables until the commit and the new ones after it.
    ///
    /// An offset the handler had before keeps its applied-at time where the replay applies
    /// the event again; an event it applies for the first time (a dead letter that now
    /// succeeds) gets `now`.
    ///
    /// # Errors
    /// [`CommitError::NoJournal`] without a journal; otherwise as [`Store::project`].
    pub(crate) fn rebuild<E: Event>(
        &self,
        reg: &Registry<E>,
        handler: usize,
        now: Timestamp,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ReplayReport, CommitError> {
        self.contain_write("rebuild", || {
            if !self.journal_enabled() {
                return Err(CommitError::NoJournal);
            }
            let h = reg
                .handlers
                .get(handler)
                .ok_or_else(|| CommitError::UnknownHandler(format!("#{handler}")))?;
            let name = h.name.as_str();
            let txn = self.begin_write()?;
            let f = |e: redb::TableError| self.fail(e);
            // Reset the handler: its dead letters and progress. Its bits in the index rows
            // are cleared as the replay meets them (see `Batch::process`).
            // A dead letter the replay records again keeps its history (see `prior_dead`).
            let mut prior_dead = HashMap::new();
            {
                let mut dead = txn.open_table(DEAD_LETTERS).map_err(f)?;
                for item in dead.range::<(&str, &str)>((name, "")..).map_err(|e| self.fail(e))? {
                    let (k, v) = item.map_err(|e| self.fail(e))?;
                    let (hn, id) = k.value();
                    if hn != name {
                        break;
                    }
                    let letter: DeadLetter = codec::decode(v.value())?;
                    prior_dead.insert(id.to_string(), letter);
                }
                for id in prior_dead.keys() {
                    dead.remove((name, id.as_str())).map_err(|e| self.fail(e))?;
                }
                let mut handlers_t = txn.open_table(HANDLERS).map_err(f)?;
                let mut rec: HandlerRecord = decode_opt(handlers_t.get(name).map_err(|e| self.fail(e))?)?
                    .ok_or_else(|| CommitError::UnknownHandler(name.to_string()))?;
                rec.seen = 0;
                rec.applied = 0;
                rec.dead_letters = 0;
                rec.last_occurred_at = None;
                rec.last_applied_at = None;
                rec.last_commit_lag_ms = None;
                handlers_t.insert(name, codec::encode(&rec)?.as_slice()).map_err(|e| self.fail(e))?;
                for t in &h.tables {
                    let s = shadow(t.id.name);
                    txn.delete_table(TableDefinition::<&[u8], &[u8]>::new(&s)).map_err(f)?;
                }
            }
            // Project the whole journal into the shadow tables.
            let mut report = ReplayReport::default();
            {
                let mut batch = Batch::open(self, &txn, reg, vec![handler], Mode::Replay, now, true)?;
                batch.rebuilding = Some(h.slot);
                batch.prior_dead = prior_dead;
                // The journal head is read in this transaction, so that nothing committed
                // before it is left out.
                let head = batch.head;
                let mut next = 1u64;
                while next <= head {
                    let entries = batch.read_entries(next, head, REPLAY_CHUNK)?;
                    let Some(last) = entries.last().map(|(stored, _)| stored.position) else { break };
                    for (stored, ev) in &entries {
                        let r = batch.process(ev, Some(*stored))?;
                        report.count(&r, &ev.id, stored.position);
                    }
                    // The bookkeeping of each chunk is written as it is done, while the
                    // rows are kept until they take too much memory: a row most events
                    // touch is then written once or a few times, not once per chunk, and
                    // read back from the buffer rather than from the table.
                    batch.flush_bookkeeping()?;
                    if batch.ws.buffered_bytes() > REBUILD_ROW_BUFFER {
                        batch.flush_rows()?;
                    }
                    caller(|| progress(last, head));
                    next = last + 1;
                }
                batch.finish()?;
            }
            // Swap the shadows in.
            {
                let mut rm = txn.open_table(READ_MODELS).map_err(f)?;
                for t in &h.tables {
                    let live = physical(t.id.name);
                    let s = shadow(t.id.name);
                    txn.delete_table(TableDefinition::<&[u8], &[u8]>::new(&live)).map_err(f)?;
                    txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&s)).map_err(f)?;
                    txn.rename_table(
                        TableDefinition::<&[u8], &[u8]>::new(&s),
                        TableDefinition::<&[u8], &[u8]>::new(&live),
                    )
                    .map_err(f)?;
                    let prior: Option<ReadModelRecord> =
                        decode_opt(rm.get(t.id.name).map_err(|e| self.fail(e))?)?;
                    let fingerprint = t.id.fingerprint();
                    let rec = ReadModelRecord {
                        owner: name.to_string(),
                        kind: crate::schema::ReadModelKind::Projected,
                        fingerprint: fingerprint.bytes,
                        kill_switch: prior.and_then(|p| p.kill_switch),
                        refreshed_at: None,
                        fingerprint_scheme: fingerprint.scheme,
                    };
                    rm.insert(t.id.name, codec::encode(&rec)?.as_slice()).map_err(|e| self.fail(e))?;
                }
            }
            self.commit(txn)?;
            tracing::info!(
                handler = name,
                replayed = report.replayed,
                applied = report.applied,
                "rebuild committed"
            );
            Ok(report)
        })
    }

    /// Files every journal entry not yet in the per-aggregate index, in its own write
    /// transaction (a commit files them too once [`AGGREGATE_FILING_MAX`] have
    /// accumulated). Returns the position filed up to.
    ///
    /// # Errors
    /// As [`StoreWriter::project`](crate::StoreWriter::project).
    pub fn file_aggregates(&self) -> Result<u64, CommitError> {
        self.contain_write("file_aggregates", || {
            if !self.journal_enabled() {
                return Ok(0);
            }
            let txn = self.begin_write()?;
            let head = {
                let f = |e: redb::TableError| self.fail(e);
                let mut meta = txn.open_table(META).map_err(f)?;
                let journal = txn.open_table(JOURNAL).map_err(f)?;
                let mut by_aggregate = txn.open_table(JOURNAL_BY_AGGREGATE).map_err(f)?;
                let head: u64 = decode_opt(meta.get(META_HEAD).map_err(|e| self.fail(e))?)?.unwrap_or(0);
                let filed: u64 =
                    decode_opt(meta.get(META_AGGREGATES_INDEXED).map_err(|e| self.fail(e))?)?.unwrap_or(0);
                if filed >= head {
                    return Ok(head);
                }
                file_aggregates(self, &journal, &mut by_aggregate, filed, head)?;
                meta.insert(META_AGGREGATES_INDEXED, codec::encode(&head)?.as_slice())
                    .map_err(|e| self.fail(e))?;
                self.unfiled.store(0, std::sync::atomic::Ordering::SeqCst);
                head
            };
            self.commit(txn)?;
            Ok(head)
        })
    }

    /// Replaces every row of a materialized view in one write transaction: a reader sees
    /// the old rows or the new ones, never a mix.
    ///
    /// # Errors
    /// [`CommitError::UnknownReadModel`] when `view` is not a registered view; otherwise
    /// as [`Store::project`].
    pub(crate) fn replace_view(
        &self,
        view: &str,
        rows: &[(Vec<u8>, Vec<u8>)],
        now: Timestamp,
    ) -> Result<(), CommitError> {
        self.contain_write("replace_view", || {
            let txn = self.begin_write()?;
            let f = |e: redb::TableError| self.fail(e);
            {
                let mut rm = txn.open_table(READ_MODELS).map_err(f)?;
                let mut rec: ReadModelRecord = decode_opt(rm.get(view).map_err(|e| self.fail(e))?)?
                    .ok_or_else(|| CommitError::UnknownReadModel(view.to_string()))?;
                if rec.kind != crate::schema::ReadModelKind::View {
                    return Err(CommitError::UnknownReadModel(view.to_string()));
                }
                let live = physical(view);
                txn.delete_table(TableDefinition::<&[u8], &[u8]>::new(&live)).map_err(f)?;
                let mut table = txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&live)).map_err(f)?;
                for (k, v) in rows {
                    table.insert(k.as_slice(), v.as_slice()).map_err(|e| self.fail(e))?;
                }
                rec.refreshed_at = Some(now);
                rm.insert(view, codec::encode(&rec)?.as_slice()).map_err(|e| self.fail(e))?;
            }
            self.commit(txn)
        })
    }
}
