//! Checking, when an engine opens, that every stored event can be read as a current one.

use crate::error::CommitError;
use crate::schema::{DeadLetter, JournalRecord, DEAD_LETTERS, JOURNAL, META, META_HEAD};
use crate::store::Store;
use driftless_domain::{codec, Event, UpcastError, Upcasters};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The `meta` key of what the last check covered.
const META_CHECKED: &str = "upcasts_checked";

/// What the last check of stored events covered: the chain it used and the journal up to
/// which it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Checked {
    signature: [u8; 16],
    upto: u64,
}

/// What [`crate::StoreWriter::check_stored_events`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredEventsCheck {
    /// Journal entries decoded and upcast (those stored at an older schema version).
    pub journal_entries_upcast: u64,
    /// Dead letters decoded and upcast.
    pub dead_letters_upcast: u64,
}

impl Store {
    pub(crate) fn check_stored_events<E: Event>(
        &self,
        upcasters: &Upcasters<E>,
    ) -> Result<StoredEventsCheck, CommitError> {
        let current = E::SCHEMA_VERSION;
        let type_name = std::any::type_name::<E>();
        let mut report = StoredEventsCheck::default();
        // Schema versions first: cheap, and they name what is missing.
        let old: HashMap<u32, (String, u32)> = {
            let schemas = self.schemas.read();
            let mut old = HashMap::new();
            for (id, schema) in schemas.iter() {
                if schema.version == current {
                    continue;
                }
                let what =
                    || format!("the journal entries of {} at schema version {}", schema.name, schema.version);
                if schema.version > current {
                    let source = UpcastError::Newer { version: schema.version, current, type_name };
                    return Err(CommitError::Unreadable { what: what(), source });
                }
                if !upcasters.reads(schema.version) {
                    let missing = (schema.version..current)
                        .find(|v| !upcasters.versions().any(|have| have == *v))
                        .unwrap_or(schema.version);
                    let source = UpcastError::Missing { version: missing, current, type_name };
                    return Err(CommitError::Unreadable { what: what(), source });
                }
                old.insert(id, (schema.name.clone(), schema.version));
            }
            old
        };
        let signature = upcasters.signature();
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let head: u64 = match meta.get(META_HEAD)? {
            Some(b) => codec::decode(b.value())?,
            None => 0,
        };
        let checked: Option<Checked> = match meta.get(META_CHECKED)? {
            Some(b) => Some(codec::decode(b.value())?),
            None => None,
        };
        let from = match checked {
            Some(c) if c.signature == signature => c.upto.saturating_add(1),
            _ => 1,
        };
        if !old.is_empty() && from <= head {
            let journal = txn.open_table(JOURNAL)?;
            for item in journal.range(from..=head)? {
                let (k, v) = item?;
                let position = k.value();
                let record: JournalRecord<'_> = codec::decode(v.value())?;
                let Some((name, version)) = old.get(&record.schema) else { continue };
                upcasters.decode(*version, record.body).map_err(|source| CommitError::Unreadable {
                    what: format!(
                        "the journal entry at position {position} ({name}, schema version {version})"
                    ),
                    source,
                })?;
                report.journal_entries_upcast += 1;
            }
        }
        let dead = txn.open_table(DEAD_LETTERS)?;
        for item in dead.iter()? {
            let (_, v) = item?;
            let letter: DeadLetter = codec::decode(v.value())?;
            if letter.schema_version == current {
                continue;
            }
            upcasters.decode(letter.schema_version, &letter.body).map_err(|source| {
                CommitError::Unreadable {
                    what: format!(
                        "the dead letter of {} for event {} ({}, schema version {})",
                        letter.handler, letter.event_id, letter.event_name, letter.schema_version
                    ),
                    source,
                }
            })?;
            report.dead_letters_upcast += 1;
        }
        drop((dead, meta, txn));
        let done = Checked { signature, upto: head };
        if checked != Some(done) {
            self.contain_write("check_stored_events", || {
                let txn = self.begin_write()?;
                {
                    let mut meta = txn.open_table(META).map_err(|e| self.fail(e))?;
                    meta.insert(META_CHECKED, codec::encode(&done)?.as_slice()).map_err(|e| self.fail(e))?;
                }
                self.commit(txn)
            })?;
        }
        Ok(report)
    }
}
