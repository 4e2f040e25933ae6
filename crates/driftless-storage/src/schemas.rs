//! The event schemas journal entries refer to.
//!
//! A journal entry names the event name and schema version its body was written at by a
//! small id, so that the name is stored once, not in every entry. The schemas live in
//! `meta` under `schema/{id}` (eight hex digits), are read when the store opens, and a commit
//! that journals the first event of a new (name, version) writes its schema with it.

use crate::error::{CommitError, ReadError};
use crate::schema::{EventSchema, JournalRecord};
use crate::store::Store;
use driftless_domain::codec;
use redb::ReadableTable;
use std::collections::{BTreeMap, HashMap};

/// The prefix of the `meta` keys of event schemas.
pub(crate) const SCHEMA_PREFIX: &str = "schema/";

/// The `meta` key of schema `id`.
pub(crate) fn schema_key(id: u32) -> String {
    format!("{SCHEMA_PREFIX}{id:08x}")
}

/// The schemas known to a store, by id and by name.
#[derive(Debug, Default)]
pub(crate) struct Schemas {
    by_id: BTreeMap<u32, EventSchema>,
    by_name: HashMap<String, Vec<(u32, u32)>>,
}

impl Schemas {
    /// Reads every schema record from `meta`.
    pub(crate) fn load(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Self, ReadError> {
        let mut schemas = Self::default();
        for item in meta.range(SCHEMA_PREFIX..)? {
            let (k, v) = item?;
            let Some(hex) = k.value().strip_prefix(SCHEMA_PREFIX) else { break };
            let id = u32::from_str_radix(hex, 16).map_err(|_| ReadError::Codec {
                table: "driftless.meta".into(),
                source: driftless_domain::CodecError::Decode {
                    type_name: "an event schema id",
                    message: format!("the key {:?} has no hex id", k.value()),
                },
            })?;
            let schema: EventSchema = codec::decode(v.value())?;
            schemas.insert(id, schema);
        }
        Ok(schemas)
    }

    fn insert(&mut self, id: u32, schema: EventSchema) {
        self.by_name.entry(schema.name.clone()).or_default().push((schema.version, id));
        self.by_id.insert(id, schema);
    }

    /// Adds schemas a commit wrote.
    pub(crate) fn extend(&mut self, added: Vec<(u32, EventSchema)>) {
        for (id, schema) in added {
            self.insert(id, schema);
        }
    }

    /// The id of `(name, version)`.
    pub(crate) fn id_of(&self, name: &str, version: u32) -> Option<u32> {
        self.by_name.get(name)?.iter().find(|(v, _)| *v == version).map(|(_, id)| *id)
    }

    /// The id the next new schema gets.
    pub(crate) fn next_id(&self) -> u32 {
        self.by_id.keys().next_back().map_or(1, |id| id.saturating_add(1))
    }

    /// Schema `id`.
    pub(crate) fn get(&self, id: u32) -> Option<&EventSchema> {
        self.by_id.get(&id)
    }

    /// Every schema with its id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &EventSchema)> + '_ {
        self.by_id.iter().map(|(id, s)| (*id, s))
    }

    /// A copy of the schemas by id.
    pub(crate) fn by_id_map(&self) -> HashMap<u32, EventSchema> {
        self.by_id.iter().map(|(id, s)| (*id, s.clone())).collect()
    }

    /// Every schema, by id.
    pub(crate) fn all(&self) -> Vec<EventSchema> {
        self.by_id.values().cloned().collect()
    }
}

impl Store {
    /// The schema a journal record names.
    ///
    /// # Errors
    /// [`CommitError::Corrupted`] when the record is not at its position or names an
    /// unknown schema: the journal is damaged.
    pub(crate) fn journal_schema(
        &self,
        position: u64,
        record: &JournalRecord<'_>,
    ) -> Result<EventSchema, CommitError> {
        if record.position != position {
            return Err(CommitError::Corrupted {
                what: format!("reading the journal entry at position {position}"),
                reason: format!("it says it is at position {}", record.position),
            });
        }
        self.schemas.read().get(record.schema).cloned().ok_or_else(|| CommitError::Corrupted {
            what: format!("reading the journal entry at position {position}"),
            reason: format!("it names the unknown event schema #{}", record.schema),
        })
    }

    /// Every event schema the journal and dead letters have used: each event name with each
    /// schema version it was written at.
    #[must_use]
    pub fn event_schemas(&self) -> Vec<EventSchema> {
        self.schemas.read().all()
    }
}
