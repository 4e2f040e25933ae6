//! The in-place upgrade of a file written in an older format.
//!
//! A file of an older format is upgraded when it is opened for writing with the
//! application's event type at hand (the engine always opens it so): in ONE write
//! transaction, so that a crash or an error leaves the file exactly as it was, and before
//! anything else reads or writes it. Every later format change adds its step here, from the
//! version before it; a file several versions behind goes through each step in the same
//! transaction.
//!
//! **Format 1 to 2.** Format 1 stored journal entries and dead letters without the schema
//! they were written at, kept an offset row only while some handler had applied the id,
//! sealed index rows without their keys and fingerprinted read models by type name. The
//! step:
//! - gives every journal entry and dead letter its schema: schema version 1 (format 1 knew
//!   no other) and the event's name, which needs the application's event type: each body
//!   is decoded as version 1 (through the registered upcasters, when the type is newer);
//! - records the first payload accepted under every journaled id that has no offset row
//!   (every handler rejected or deferred it), so that a later delivery of another payload
//!   under that id is a conflict; an id that has a row keeps it, so the outcomes format 1
//!   decided stand (an id whose second payload was applied after the first was rejected
//!   keeps the applied one), and its row points at the first journal entry of that payload;
//! - seals index rows and `event_ids` entries with their keys;
//! - marks every read model's fingerprint as a format-1 (type-name) fingerprint, which
//!   registration answers with one rebuild from the journal (see `registry.rs`).

use crate::error::OpenError;
use crate::schema::{
    canonical_time, index_key, DeadLetter, DeadLetterV1, EventSchema, FormatRecord, IndexRow, IndexRowV1,
    JournalRecord, JournalRecordV1, ReadModelRecord, ReadModelRecordV1, DEAD_LETTERS, EVENT_IDS, EVENT_INDEX,
    FORMAT_VERSION, JOURNAL, MAGIC, META, META_FORMAT, META_INDEX_PROBE, READ_MODELS,
};
use crate::schemas::schema_key;
use driftless_domain::{codec, Event, EventId, FingerprintScheme, PayloadHash, UpcastError, Upcasters};
use redb::ReadableTable;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// What an upgrade needs to know of the events an older file holds, which only the
/// application's event type can tell.
pub trait LegacyEvents {
    /// The id, name and time of the event stored as `body` at schema `version`.
    ///
    /// # Errors
    /// [`UpcastError`] when the body cannot be read at that version.
    fn describe(&self, version: u32, body: &[u8]) -> Result<(EventId, String, u64), UpcastError>;
}

impl<E: Event> LegacyEvents for Upcasters<E> {
    fn describe(&self, version: u32, body: &[u8]) -> Result<(EventId, String, u64), UpcastError> {
        let event = self.decode(version, body)?;
        let described = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (event.event_id(), event.event_name().to_owned(), event.occurred_at().0)
        }));
        described.map_err(|panic| UpcastError::Panicked {
            version,
            message: driftless_domain::panic_text(&*panic)
                .unwrap_or_else(|| "a non-text panic payload".into()),
        })
    }
}

/// How many journal entries the upgrade reads at a time.
const CHUNK: usize = 4096;

/// Upgrades the file from format `from` to [`FORMAT_VERSION`] in one write transaction.
pub(crate) fn upgrade(
    db: &crate::store::DbHandle,
    path: &Path,
    from: u32,
    events: &dyn LegacyEvents,
) -> Result<(), OpenError> {
    let failed = |reason: String| OpenError::UpgradeFailed { path: path.to_path_buf(), from, reason };
    let started = std::time::Instant::now();
    let txn = db.begin_write()?;
    if from == 1 {
        let report = from_1_to_2(&txn, events).map_err(|e| match e {
            StepError::Open(e) => e,
            StepError::Failed(reason) => failed(reason),
        })?;
        tracing::info!(
            journal_entries = report.entries,
            rows_recorded = report.rows_recorded,
            dead_letters = report.dead_letters,
            "upgraded format 1 to 2"
        );
    } else {
        return Err(failed(format!("no upgrade from format {from} is known")));
    }
    {
        let mut meta = txn.open_table(META)?;
        let record = FormatRecord { magic: MAGIC.into(), version: FORMAT_VERSION };
        let bytes = codec::encode(&record).map_err(|e| failed(e.to_string()))?;
        meta.insert(META_FORMAT, bytes.as_slice())?;
    }
    // The first durable commit since the open: on a thread of its own, as `Store::commit`
    // runs it, so that damage redb panics on twice ends in an error, not an abort.
    match crate::isolate::run("driftless-upgrade", move || txn.commit()) {
        Ok(committed) => committed?,
        Err(stopped) => {
            if matches!(stopped, crate::isolate::Stopped::Halted(_)) {
                db.halt();
            }
            return Err(OpenError::Corrupted { path: path.to_path_buf(), reason: stopped.to_string() });
        }
    }
    tracing::info!(
        from,
        to = FORMAT_VERSION,
        seconds = started.elapsed().as_secs_f64(),
        path = %path.display(),
        "the database file was upgraded in place"
    );
    Ok(())
}

enum StepError {
    Open(OpenError),
    Failed(String),
}

impl<E: Into<OpenError>> From<E> for StepError {
    fn from(e: E) -> Self {
        Self::Open(e.into())
    }
}

fn damaged(what: &str, e: impl std::fmt::Display) -> StepError {
    StepError::Failed(format!("{what} is damaged: {e}"))
}

#[derive(Default)]
struct Report {
    entries: u64,
    rows_recorded: u64,
    dead_letters: u64,
}

/// The schemas the upgrade hands out.
#[derive(Default)]
struct NewSchemas {
    ids: HashMap<String, u32>,
}

impl NewSchemas {
    /// The id of `(name, 1)`.
    fn id(&mut self, name: &str) -> u32 {
        let next = u32::try_from(self.ids.len()).unwrap_or(u32::MAX).saturating_add(1);
        *self.ids.entry(name.to_owned()).or_insert(next)
    }
}

fn from_1_to_2(txn: &redb::WriteTransaction, events: &dyn LegacyEvents) -> Result<Report, StepError> {
    let mut report = Report::default();
    // Index rows, by key, and explicit filing times, by id: read whole, written back sealed
    // with their keys once the journal has added the rows format 1 did not keep.
    let mut rows: BTreeMap<Vec<u8>, IndexRow> = BTreeMap::new();
    let mut ids: BTreeMap<String, u64> = BTreeMap::new();
    {
        let index = txn.open_table(EVENT_INDEX)?;
        for item in index.iter()? {
            let (k, v) = item?;
            let old: IndexRowV1 = codec::decode(v.value()).map_err(|e| damaged("an offset row", e))?;
            let row = IndexRow {
                position: old.position,
                applied_at: old.applied_at,
                hash: old.hash,
                applied: old.applied,
                version: 1,
                late: old.late,
            };
            rows.insert(k.value().to_vec(), row);
        }
        let table = txn.open_table(EVENT_IDS)?;
        for item in table.iter()? {
            let (k, v) = item?;
            let filed_at: u64 =
                codec::decode(v.value()).map_err(|e| damaged("an event id's filing time", e))?;
            ids.insert(k.value().to_owned(), filed_at);
        }
    }
    let mut schemas = NewSchemas::default();
    let mut seen: HashSet<EventId> = HashSet::new();
    // The journal, in chunks: read, then written back in the new layout.
    {
        let mut journal = txn.open_table(JOURNAL)?;
        let mut next = 1u64;
        loop {
            let mut chunk: Vec<(u64, Vec<u8>)> = Vec::with_capacity(CHUNK);
            for item in journal.range(next..)?.take(CHUNK) {
                let (k, v) = item?;
                chunk.push((k.value(), v.value().to_vec()));
            }
            let Some(&(last, _)) = chunk.last() else { break };
            for (position, bytes) in &chunk {
                let old: JournalRecordV1<'_> = codec::decode(bytes)
                    .map_err(|e| damaged(&format!("the journal entry at {position}"), e))?;
                let (id, name, _) = events.describe(1, old.body).map_err(|e| {
                    StepError::Failed(format!(
                        "the journal entry at position {position} (aggregate {}, written at schema version 1) \
                         cannot be read: {e}",
                        old.aggregate_id
                    ))
                })?;
                let schema = schemas.id(&name);
                let record = JournalRecord {
                    position: *position,
                    aggregate_id: old.aggregate_id,
                    occurred_at: old.occurred_at,
                    accepted_at: old.accepted_at,
                    schema,
                    body: old.body,
                };
                let hash = PayloadHash::of_bytes(old.body);
                if seen.insert(id.clone()) {
                    let recorded = record_first(&mut rows, &mut ids, &id, old.occurred_at.0, *position, hash);
                    report.rows_recorded += u64::from(recorded);
                } else if let Some(row) = find_row(&mut rows, &ids, &id) {
                    // A row whose payload first appears earlier than its position (a delivery
                    // rejected, then the same payload applied) points at that first entry.
                    if row.hash == hash.0 && *position < row.position {
                        row.position = *position;
                    }
                }
                let encoded = codec::encode(&record).map_err(|e| StepError::Failed(e.to_string()))?;
                journal.insert(*position, encoded.as_slice())?;
                report.entries += 1;
            }
            next = last.saturating_add(1);
        }
    }
    // Dead letters: their schema, and a row for an id no journal entry recorded (a store
    // without a journal).
    {
        let mut dead = txn.open_table(DEAD_LETTERS)?;
        let mut letters = Vec::new();
        for item in dead.iter()? {
            let (k, v) = item?;
            let (handler, event_id) = k.value();
            let old: DeadLetterV1 = codec::decode(v.value()).map_err(|e| damaged("a dead letter", e))?;
            letters.push(((handler.to_owned(), event_id.to_owned()), old));
        }
        for ((handler, event_id), old) in letters {
            let (id, name, occurred_at) = events.describe(1, &old.body).map_err(|e| {
                StepError::Failed(format!(
                    "the dead letter of {handler} for event {event_id} (written at schema version 1) cannot be read: {e}"
                ))
            })?;
            if seen.insert(id.clone()) {
                record_first(
                    &mut rows,
                    &mut ids,
                    &id,
                    occurred_at,
                    old.position,
                    PayloadHash::of_bytes(&old.body),
                );
            }
            let letter = DeadLetter {
                handler: old.handler,
                event_id: old.event_id,
                reason: old.reason,
                attempts: old.attempts,
                first_failed_at: old.first_failed_at,
                last_failed_at: old.last_failed_at,
                position: old.position,
                body: old.body,
                event_name: name,
                schema_version: 1,
            };
            let bytes = codec::encode(&letter).map_err(|e| StepError::Failed(e.to_string()))?;
            dead.insert((handler.as_str(), event_id.as_str()), bytes.as_slice())?;
            report.dead_letters += 1;
        }
    }
    // Index rows and filing times, sealed with their keys.
    {
        let mut index = txn.open_table(EVENT_INDEX)?;
        for (key, row) in &rows {
            let bytes = codec::encode_keyed(key, row).map_err(|e| StepError::Failed(e.to_string()))?;
            index.insert(key.as_slice(), bytes.as_slice())?;
        }
        let mut table = txn.open_table(EVENT_IDS)?;
        for (id, filed_at) in &ids {
            let bytes =
                codec::encode_keyed(id.as_bytes(), filed_at).map_err(|e| StepError::Failed(e.to_string()))?;
            table.insert(id.as_str(), bytes.as_slice())?;
        }
    }
    // Read-model records: format 1's fingerprints are type names.
    {
        let mut rm = txn.open_table(READ_MODELS)?;
        let mut records = Vec::new();
        for item in rm.iter()? {
            let (k, v) = item?;
            let old: ReadModelRecordV1 =
                codec::decode(v.value()).map_err(|e| damaged("a read-model record", e))?;
            records.push((k.value().to_owned(), old));
        }
        for (name, old) in records {
            let record = ReadModelRecord {
                owner: old.owner,
                kind: old.kind,
                fingerprint: old.fingerprint,
                kill_switch: old.kill_switch,
                refreshed_at: old.refreshed_at,
                fingerprint_scheme: FingerprintScheme::Named,
            };
            let bytes = codec::encode(&record).map_err(|e| StepError::Failed(e.to_string()))?;
            rm.insert(name.as_str(), bytes.as_slice())?;
        }
    }
    // The schemas the journal now names, and the index probe (see `META_INDEX_PROBE`).
    {
        let mut meta = txn.open_table(META)?;
        if let Some(key) = rows.keys().next_back() {
            let bytes = codec::encode(key).map_err(|e| StepError::Failed(e.to_string()))?;
            meta.insert(META_INDEX_PROBE, bytes.as_slice())?;
        }
        for (name, id) in &schemas.ids {
            let schema = EventSchema { name: name.clone(), version: 1 };
            let bytes = codec::encode(&schema).map_err(|e| StepError::Failed(e.to_string()))?;
            meta.insert(schema_key(*id).as_str(), bytes.as_slice())?;
        }
    }
    Ok(report)
}

/// The row of `id`, found as a commit finds it: under its explicit filing time, or under
/// the time its id carries.
fn find_row<'a>(
    rows: &'a mut BTreeMap<Vec<u8>, IndexRow>,
    ids: &BTreeMap<String, u64>,
    id: &EventId,
) -> Option<&'a mut IndexRow> {
    let at = ids.get(id.as_str()).copied().or_else(|| canonical_time(id.as_str()))?;
    rows.get_mut(&index_key(at, id.as_str()))
}

/// Records the first accepted payload of `id` (at `position`, with `hash` of its version-1
/// encoding) when the id has no row. Returns whether a row was added.
fn record_first(
    rows: &mut BTreeMap<Vec<u8>, IndexRow>,
    ids: &mut BTreeMap<String, u64>,
    id: &EventId,
    occurred_at: u64,
    position: u64,
    hash: PayloadHash,
) -> bool {
    if let Some(row) = find_row(rows, ids, id) {
        if row.hash == hash.0 && position < row.position {
            row.position = position;
        }
        return false;
    }
    let canonical = canonical_time(id.as_str());
    if canonical != Some(occurred_at) {
        ids.insert(id.as_str().to_owned(), occurred_at);
    }
    rows.insert(
        index_key(occurred_at, id.as_str()),
        IndexRow { position, applied_at: 0, hash: hash.0, applied: Vec::new(), version: 1, late: Vec::new() },
    );
    true
}
