//! The tables of a driftless database and the records stored in them.
//!
//! Every value is a [`driftless_domain::codec`] envelope (version byte, bincode body,
//! checksum). Keys are raw bytes or strings so that their byte order is meaningful. See
//! `docs/FORMAT.md` for the layout byte by byte.

use driftless_domain::{PayloadHash, Timestamp};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

/// The format version this build writes. Files with a larger version are refused; files of
/// an older version are upgraded in place when an engine opens them (see `upgrade.rs`).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build upgrades from.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// The magic string of the format record.
pub const MAGIC: &str = "driftless";

/// `meta`: format record, journal head, and small named records (leases, schedules).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("driftless.meta");
/// `handlers`: handler name -> [`HandlerRecord`].
pub(crate) const HANDLERS: TableDefinition<&str, &[u8]> = TableDefinition::new("driftless.handlers");
/// `read_models`: table name -> [`ReadModelRecord`].
pub(crate) const READ_MODELS: TableDefinition<&str, &[u8]> = TableDefinition::new("driftless.read_models");
/// `event_index` (the `projection_offset` record): [`index_key`] -> [`IndexRow`].
///
/// Keys are time-ordered (`occurred_at` big-endian, then the event id), so the rows a batch
/// adds land together at the end of the tree instead of on a random page each.
pub(crate) const EVENT_INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("driftless.event_index");
/// `event_ids`: event id -> the `occurred_at` its index row is filed under, for ids whose
/// time [`canonical_time`] cannot derive (explicit ids, or a time that differs from it).
pub(crate) const EVENT_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("driftless.event_ids");
/// `journal`: position -> [`JournalEntry`].
pub(crate) const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("driftless.journal");
/// `journal_by_aggregate`: (aggregate id, position) -> ().
pub(crate) const JOURNAL_BY_AGGREGATE: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("driftless.journal_by_aggregate");
/// `dead_letters`: (handler, event id) -> [`DeadLetter`].
pub(crate) const DEAD_LETTERS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("driftless.dead_letters");
/// The meta key of the format record.
pub(crate) const META_FORMAT: &str = "format";
/// The meta key of the journal head (the last position handed out).
pub(crate) const META_HEAD: &str = "journal_head";
/// The meta key of the index probe: the key of an index row the last commit that wrote
/// index rows wrote. Opening checks that the index holds it, which a tree whose root was
/// redirected to an older version of itself (damage in redb's table of tables, not verified
/// when the open check is off) does not.
pub(crate) const META_INDEX_PROBE: &str = "index_probe";
/// The meta key of the last journal position filed in `journal_by_aggregate`.
pub(crate) const META_AGGREGATES_INDEXED: &str = "aggregates_indexed";

/// The key of an event's index row: its filing time, big-endian, then its id.
pub(crate) fn index_key(filed_at: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    index_key_into(filed_at, id, &mut k);
    k
}

/// As [`index_key`], into a buffer that is cleared first.
pub(crate) fn index_key_into(filed_at: u64, id: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&filed_at.to_be_bytes());
    out.extend_from_slice(id.as_bytes());
}

/// The time an id derived by default (`"{aggregate}:{millis}:{name}"`) carries: the
/// second-to-last `:`-separated part, when it is a plain decimal number.
///
/// Any pure function of the id would keep lookups correct (an id whose event was filed
/// under another time gets an `event_ids` entry); this one makes default ids need none.
pub(crate) fn canonical_time(id: &str) -> Option<u64> {
    let bytes = id.as_bytes();
    let last = bytes.iter().rposition(|b| *b == b':')?;
    let before = bytes.get(..last)?;
    let prev = before.iter().rposition(|b| *b == b':')?;
    let millis = id.get(prev + 1..last)?;
    if millis.is_empty() || millis.len() > 20 || !millis.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if millis.len() > 1 && millis.starts_with('0') {
        return None;
    }
    millis.parse().ok()
}

/// The physical name of a read-model table.
pub(crate) fn physical(name: &str) -> String {
    format!("rm.{name}")
}

/// The physical name of a read model's shadow table during a rebuild.
pub(crate) fn shadow(name: &str) -> String {
    format!("rm.{name}.shadow")
}

/// Identifies the file as a driftless database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FormatRecord {
    pub magic: String,
    pub version: u32,
}

/// The exactly-once record of one event id: the payload first accepted under it, which
/// handlers applied it, and when. A row exists for every id that was ever accepted (journaled
/// or, without a journal, projected), whatever its handlers did with it, so that a later
/// delivery of another payload under the id is a conflict even when no handler applied the
/// first. Stored in a keyed envelope: a row found under another key than its own fails its
/// checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexRow {
    /// The journal position of the first accepted delivery (0 without a journal).
    pub position: u64,
    /// When the first handler applied it (0 while none has).
    pub applied_at: u64,
    /// blake3 of the first accepted delivery's stable encoding at schema `version`.
    pub hash: [u8; 32],
    /// Bit `slot` is set when the handler with that slot applied the event.
    pub applied: Vec<u8>,
    /// The schema version `hash` was computed at.
    pub version: u32,
    /// Handlers that applied it at another time than `applied_at` (catch-up, retry).
    pub late: Vec<(u32, u64)>,
}

impl IndexRow {
    pub(crate) fn has(&self, slot: u32) -> bool {
        has_bit(&self.applied, slot)
    }

    pub(crate) fn set(&mut self, slot: u32, at: u64) {
        let (byte, bit) = bit_of(slot);
        if self.applied.len() <= byte {
            self.applied.resize(byte + 1, 0);
        }
        if let Some(b) = self.applied.get_mut(byte) {
            *b |= bit;
        }
        if at != self.applied_at {
            self.late.retain(|(s, _)| *s != slot);
            self.late.push((slot, at));
        }
    }

    pub(crate) fn clear(&mut self, slot: u32) {
        let (byte, bit) = bit_of(slot);
        if let Some(b) = self.applied.get_mut(byte) {
            *b &= !bit;
        }
        self.late.retain(|(s, _)| *s != slot);
        while self.applied.last() == Some(&0) {
            self.applied.pop();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.applied.iter().all(|b| *b == 0)
    }

    pub(crate) fn applied_at_of(&self, slot: u32) -> u64 {
        self.late.iter().find(|(s, _)| *s == slot).map_or(self.applied_at, |(_, at)| *at)
    }

    pub(crate) fn payload_hash(&self) -> PayloadHash {
        PayloadHash(self.hash)
    }
}

/// The leading fields of a stored [`IndexRow`], borrowed from its bytes: what tells a
/// re-delivery from a new event, read without allocating.
#[derive(Deserialize)]
pub(crate) struct IndexRowHead<'a> {
    _position: u64,
    _applied_at: u64,
    pub hash: [u8; 32],
    #[serde(borrow)]
    pub applied: &'a [u8],
}

impl IndexRowHead<'_> {
    pub(crate) fn has(&self, slot: u32) -> bool {
        has_bit(self.applied, slot)
    }
}

/// Whether bit `slot` of an applied-handlers bitset is set.
fn has_bit(applied: &[u8], slot: u32) -> bool {
    let (byte, bit) = bit_of(slot);
    applied.get(byte).is_some_and(|b| b & bit != 0)
}

fn bit_of(slot: u32) -> (usize, u8) {
    let byte = usize::try_from(slot / 8).unwrap_or(usize::MAX);
    (byte, 1u8 << (slot % 8))
}

/// One accepted delivery, in dispatch order, as readers see it.
///
/// The body is the event's stable encoding at `schema_version` of its type, which holds its
/// id, name and time; the entry repeats only what storage needs without knowing the event
/// type. Decode it with the engine's upcasters (`Upcasters::decode`) to get a current event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The global position (1, 2, 3, ...).
    pub position: u64,
    /// The aggregate id.
    pub aggregate_id: String,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// When it was accepted.
    pub accepted_at: Timestamp,
    /// The event's name.
    pub event_name: String,
    /// The schema version of the event type the body was written at.
    pub schema_version: u32,
    /// The event's stable encoding.
    pub body: Vec<u8>,
}

/// A journal entry as stored (format 2): its schema by id.
#[derive(Serialize, Deserialize)]
pub(crate) struct JournalRecord<'a> {
    pub position: u64,
    #[serde(borrow)]
    pub aggregate_id: &'a str,
    pub occurred_at: Timestamp,
    pub accepted_at: Timestamp,
    /// The key of its [`EventSchema`] in `event_schemas`.
    pub schema: u32,
    #[serde(borrow)]
    pub body: &'a [u8],
}

/// A journal entry as format 1 stored it: no schema (every such event is version 1).
#[derive(Serialize, Deserialize)]
pub(crate) struct JournalRecordV1<'a> {
    pub position: u64,
    #[serde(borrow)]
    pub aggregate_id: &'a str,
    pub occurred_at: Timestamp,
    pub accepted_at: Timestamp,
    #[serde(borrow)]
    pub body: &'a [u8],
}

/// The leading fields of a stored journal entry (the same in both formats).
#[derive(Deserialize)]
pub(crate) struct JournalHead {
    pub position: u64,
    pub aggregate_id: String,
}

/// The name and schema version of an event type's encoding, as journal entries refer to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventSchema {
    /// The event's name ([`driftless_domain::Event::event_name`]).
    pub name: String,
    /// The schema version of the event type ([`driftless_domain::Event::SCHEMA_VERSION`]).
    pub version: u32,
}

/// Progress and freshness marks of one handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerRecord {
    /// The handler's bit in every offset-index row; never reused.
    pub slot: u32,
    /// The last journal position this handler has processed.
    pub seen: u64,
    /// How many events it has applied.
    pub applied: u64,
    /// Newest `occurred_at` among the events it applied.
    pub last_occurred_at: Option<Timestamp>,
    /// When it last applied an event.
    pub last_applied_at: Option<Timestamp>,
    /// The lag (applied-at minus occurred-at) of the last event it applied, in ms.
    pub last_commit_lag_ms: Option<u64>,
    /// How many dead letters it has.
    pub dead_letters: u64,
    /// The tables it owns.
    pub tables: Vec<String>,
    /// Whether projection is paused (by a kill switch).
    pub paused: bool,
}

/// How a read model is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadModelKind {
    /// Written by a projector.
    Projected,
    /// Written by a materialized-view refresh.
    View,
}

/// The kill switch of a read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillSwitch {
    /// When it was engaged.
    pub engaged_at: Timestamp,
    /// Whether projection into the read model is paused while engaged.
    pub pause_projection: bool,
}

/// What the database knows of one read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadModelRecord {
    /// The owning handler or view.
    pub owner: String,
    /// How it is written.
    pub kind: ReadModelKind,
    /// The schema fingerprint of its key and row types.
    pub fingerprint: [u8; 16],
    /// Engaged kill switch, if any.
    pub kill_switch: Option<KillSwitch>,
    /// When a view was last refreshed.
    pub refreshed_at: Option<Timestamp>,
    /// How `fingerprint` was made (see [`driftless_domain::FingerprintScheme`]).
    pub fingerprint_scheme: driftless_domain::FingerprintScheme,
}

/// A read-model record as format 1 stored it.
#[derive(Deserialize)]
pub(crate) struct ReadModelRecordV1 {
    pub owner: String,
    pub kind: ReadModelKind,
    pub fingerprint: [u8; 16],
    pub kill_switch: Option<KillSwitch>,
    pub refreshed_at: Option<Timestamp>,
}

/// An event a handler could not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The handler.
    pub handler: String,
    /// The event id.
    pub event_id: String,
    /// The error text of the last failure.
    pub reason: String,
    /// How many times applying it failed.
    pub attempts: u32,
    /// First failure.
    pub first_failed_at: Timestamp,
    /// Last failure.
    pub last_failed_at: Timestamp,
    /// Journal position of the last failed delivery (0 without a journal).
    pub position: u64,
    /// The event's stable encoding, so that it can be retried without the journal.
    pub body: Vec<u8>,
    /// The event's name.
    pub event_name: String,
    /// The schema version of the event type `body` was written at.
    pub schema_version: u32,
}

/// A dead letter as format 1 stored it.
#[derive(Deserialize)]
pub(crate) struct DeadLetterV1 {
    pub handler: String,
    pub event_id: String,
    pub reason: String,
    pub attempts: u32,
    pub first_failed_at: Timestamp,
    pub last_failed_at: Timestamp,
    pub position: u64,
    pub body: Vec<u8>,
}

/// An index row as format 1 stored it: a row only while some handler had applied the id.
#[derive(Deserialize)]
pub(crate) struct IndexRowV1 {
    pub position: u64,
    pub applied_at: u64,
    pub hash: [u8; 32],
    pub applied: Vec<u8>,
    pub late: Vec<(u32, u64)>,
}

#[cfg(test)]
mod tests {
    use super::{canonical_time, IndexRow, IndexRowHead};
    use driftless_domain::codec;

    #[test]
    fn the_head_of_a_stored_index_row_reads_as_the_row() -> Result<(), driftless_domain::CodecError> {
        let mut row = IndexRow {
            position: 9,
            applied_at: 5,
            hash: [7; 32],
            applied: Vec::new(),
            version: 1,
            late: Vec::new(),
        };
        row.set(0, 5);
        row.set(9, 6);
        row.set(17, 5);
        let bytes = codec::encode_keyed(b"k", &row)?;
        let head: IndexRowHead<'_> = codec::decode_prefix_keyed(b"k", &bytes)?;
        assert_eq!(head.hash, row.hash);
        assert_eq!(head.applied, row.applied.as_slice());
        for slot in 0..40 {
            assert_eq!(head.has(slot), row.has(slot), "slot {slot}");
        }
        let mut damaged = bytes.clone();
        if let Some(b) = damaged.get_mut(12) {
            *b ^= 1;
        }
        assert!(codec::decode_prefix_keyed::<IndexRowHead<'_>>(b"k", &damaged).is_err());
        assert!(codec::decode_prefix_keyed::<IndexRowHead<'_>>(b"j", &bytes).is_err());
        Ok(())
    }

    #[test]
    fn canonical_time_reads_the_time_of_a_default_id() {
        let cases: &[(&str, Option<u64>)] = &[
            ("listing-7:1700000000123:ListingCreated", Some(1_700_000_000_123)),
            ("a:b:5:Name", Some(5)),
            ("a:0:X", Some(0)),
            (":5:", Some(5)),
            ("a:05:X", None),
            ("a:5x:X", None),
            ("a::X", None),
            ("5:X", None),
            ("plain-id", None),
            ("a:99999999999999999999999:X", None),
        ];
        for (id, want) in cases {
            assert_eq!(canonical_time(id), *want, "{id}");
        }
    }
}
