//! Registering projectors and views with a database: handler slots, table ownership and
//! schema fingerprints.

use crate::error::{caller, contain, CommitError, RegisterError};
use crate::schema::{physical, HandlerRecord, ReadModelKind, ReadModelRecord, HANDLERS, META, READ_MODELS};
use crate::store::Store;
use driftless_domain::{
    codec, Event, Fingerprint, FingerprintScheme, HandlerName, PreparedEvent, Projector, TableId, TableSlot,
    UpcastError, Upcasters,
};
use redb::{ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

const META_NEXT_SLOT: &str = "next_handler_slot";

/// A projector registered with a store: its slot and the table slots it may reach.
pub struct RegisteredHandler<E> {
    pub(crate) name: HandlerName,
    pub(crate) slot: u32,
    pub(crate) projector: Arc<dyn Projector<E>>,
    pub(crate) tables: Vec<TableSlot>,
}

impl<E> RegisteredHandler<E> {
    /// The handler name.
    #[must_use]
    pub fn name(&self) -> &HandlerName {
        &self.name
    }

    /// The tables it owns.
    pub fn table_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.tables.iter().map(|t| t.id.name)
    }
}

/// The projectors and views of one engine, bound to one store.
pub struct Registry<E> {
    pub(crate) handlers: Vec<RegisteredHandler<E>>,
    /// Every projected table, indexed by table slot.
    pub(crate) tables: Vec<TableId>,
    /// Handlers whose tables must be rebuilt before use: their schema changed, or they
    /// were renamed and inherit tables written by another handler.
    pub needs_rebuild: Vec<HandlerName>,
    /// How events stored under older schema versions are read.
    pub(crate) upcasters: Arc<Upcasters<E>>,
}

impl<E> std::fmt::Debug for Registry<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.handlers.iter().map(|h| h.name.as_str()).collect();
        f.debug_struct("Registry")
            .field("handlers", &names)
            .field("needs_rebuild", &self.needs_rebuild)
            .finish()
    }
}

impl<E: Event> Registry<E> {
    /// The registered handlers in registration order.
    #[must_use]
    pub fn handlers(&self) -> &[RegisteredHandler<E>] {
        &self.handlers
    }

    /// The index of the handler named `name`.
    #[must_use]
    pub fn handler_index(&self, name: &str) -> Option<usize> {
        self.handlers.iter().position(|h| h.name.as_str() == name)
    }

    /// The handler owning the table `table`.
    #[must_use]
    pub fn owner_of(&self, table: &str) -> Option<&RegisteredHandler<E>> {
        self.handlers.iter().find(|h| h.tables.iter().any(|t| t.id.name == table))
    }

    /// The upcasters events stored under older schema versions are read with.
    #[must_use]
    pub fn upcasters(&self) -> &Arc<Upcasters<E>> {
        &self.upcasters
    }

    /// A stored event (a journal entry's or dead letter's body, written at schema
    /// `version`) as a current, prepared event. `what` names it for an error.
    ///
    /// # Errors
    /// [`CommitError::Unreadable`] when it cannot be read at the current version; the
    /// application's own code panicking on the way is such an error too.
    pub(crate) fn prepare(
        &self,
        version: u32,
        body: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<PreparedEvent<E>, CommitError> {
        let prepared = catch_unwind(AssertUnwindSafe(|| -> Result<PreparedEvent<E>, UpcastError> {
            if version == E::SCHEMA_VERSION {
                return PreparedEvent::from_body(body).map_err(|source| UpcastError::Decode {
                    version,
                    reads_as: std::any::type_name::<E>(),
                    source,
                });
            }
            let event = self.upcasters.decode(version, body)?;
            PreparedEvent::new(event).map_err(|source| UpcastError::Decode {
                version,
                reads_as: std::any::type_name::<E>(),
                source,
            })
        }));
        let result = prepared.unwrap_or_else(|panic| {
            Err(UpcastError::Panicked {
                version,
                message: driftless_domain::panic_text(&*panic)
                    .unwrap_or_else(|| "a non-text panic payload".to_owned()),
            })
        });
        result.map_err(|source| CommitError::Unreadable { what: what(), source })
    }
}

impl Store {
    /// Registers projectors and materialized views, assigning each handler a persistent
    /// slot and recording each table's owner and schema fingerprint.
    ///
    /// # Errors
    /// [`RegisterError`] for duplicate handler names, a table declared twice, an invalid
    /// table name, or a storage failure.
    pub(crate) fn register<E: Event>(
        &self,
        projectors: Vec<Arc<dyn Projector<E>>>,
        views: &[(TableId, String)],
        upcasters: Arc<Upcasters<E>>,
    ) -> Result<Registry<E>, RegisterError> {
        contain(
            "register",
            |reason| self.poison(format!("register: {reason}")),
            || {
                let mut owners: HashMap<&'static str, String> = HashMap::new();
                let mut seen_handlers: Vec<HandlerName> = Vec::new();
                for p in &projectors {
                    let name = caller(|| p.handler_name());
                    if seen_handlers.contains(&name) {
                        return Err(RegisterError::DuplicateHandler(name));
                    }
                    for t in caller(|| p.tables()) {
                        claim(&mut owners, t, name.as_str())?;
                    }
                    seen_handlers.push(name);
                }
                for (t, view) in views {
                    claim(&mut owners, *t, view)?;
                }

                let txn = self.begin_write().map_err(commit_to_register)?;
                let mut handlers = Vec::with_capacity(projectors.len());
                let mut all_tables: Vec<TableId> = Vec::new();
                let mut needs_rebuild = Vec::new();
                // A storage failure inside the transaction poisons the store like a failed commit:
                // redb may already have written part of it.
                let written = (|| -> Result<(), RegisterError> {
                    // Each table alone first: a damaged page can make redb panic in
                    // `open_table` with the transaction's table lock held, and closing tables
                    // open meanwhile then panics again, aborting the process (commits, which
                    // run far more often, close them one at a time instead: see `Opening`).
                    drop(txn.open_table(META)?);
                    drop(txn.open_table(HANDLERS)?);
                    drop(txn.open_table(READ_MODELS)?);
                    for table in owners.keys() {
                        drop(txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&physical(table)))?);
                    }
                    let mut meta = txn.open_table(META)?;
                    let mut handler_table = txn.open_table(HANDLERS)?;
                    let mut rm_table = txn.open_table(READ_MODELS)?;
                    let mut next_slot: u32 = match meta.get(META_NEXT_SLOT)? {
                        Some(b) => codec::decode(b.value())?,
                        None => 0,
                    };
                    for projector in projectors {
                        let name = caller(|| projector.handler_name());
                        let declared = caller(|| projector.tables());
                        let existing: Option<HandlerRecord> = match handler_table.get(name.as_str())? {
                            Some(b) => Some(codec::decode(b.value())?),
                            None => None,
                        };
                        let mut record = existing.unwrap_or_else(|| {
                            let slot = next_slot;
                            next_slot = next_slot.saturating_add(1);
                            HandlerRecord {
                                slot,
                                seen: 0,
                                applied: 0,
                                last_occurred_at: None,
                                last_applied_at: None,
                                last_commit_lag_ms: None,
                                dead_letters: 0,
                                tables: Vec::new(),
                                paused: false,
                            }
                        });
                        let mut rebuild = false;
                        let mut slots = Vec::with_capacity(declared.len());
                        for t in &declared {
                            let prior: Option<ReadModelRecord> = match rm_table.get(t.name)? {
                                Some(b) => Some(codec::decode(b.value())?),
                                None => None,
                            };
                            let fingerprint = t.fingerprint();
                            match prior {
                                Some(p) if p.owner != name.as_str() => {
                                    tracing::warn!(table = t.name, handler = %name, owner = %p.owner, "read model needs a rebuild: it was written by another handler");
                                    rebuild = true;
                                }
                                Some(p) if same_fingerprint(&p, fingerprint) => {}
                                Some(mut p)
                                    if !self.journal_enabled() && trusted_format_1(&p, t, fingerprint) =>
                                {
                                    // Nothing to rebuild from: format 1's rule (the row type's
                                    // name and version) is taken at its word, once.
                                    p.fingerprint = fingerprint.bytes;
                                    p.fingerprint_scheme = fingerprint.scheme;
                                    rm_table.insert(t.name, codec::encode(&p)?.as_slice())?;
                                }
                                Some(p) => {
                                    if p.fingerprint_scheme == FingerprintScheme::Named
                                        && fingerprint.scheme == FingerprintScheme::Shape
                                    {
                                        tracing::warn!(table = t.name, handler = %name, "read model needs a rebuild: its fingerprint was recorded by type name (format 1), which cannot tell whether the row's shape changed");
                                    } else {
                                        tracing::warn!(table = t.name, handler = %name, "read model needs a rebuild: its row type changed");
                                    }
                                    rebuild = true;
                                }
                                None => {
                                    let rec = ReadModelRecord {
                                        owner: name.to_string(),
                                        kind: ReadModelKind::Projected,
                                        fingerprint: fingerprint.bytes,
                                        kill_switch: None,
                                        refreshed_at: None,
                                        fingerprint_scheme: fingerprint.scheme,
                                    };
                                    rm_table.insert(t.name, codec::encode(&rec)?.as_slice())?;
                                }
                            }
                            let physical_name = physical(t.name);
                            txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&physical_name))?;
                            slots.push(TableSlot { id: *t, slot: all_tables.len() });
                            all_tables.push(*t);
                        }
                        record.tables = declared.iter().map(|t| t.name.to_string()).collect();
                        handler_table.insert(name.as_str(), codec::encode(&record)?.as_slice())?;
                        if rebuild {
                            needs_rebuild.push(name.clone());
                        }
                        handlers.push(RegisteredHandler {
                            name,
                            slot: record.slot,
                            projector,
                            tables: slots,
                        });
                    }
                    for (t, view) in views {
                        let prior: Option<ReadModelRecord> = match rm_table.get(t.name)? {
                            Some(b) => Some(codec::decode(b.value())?),
                            None => None,
                        };
                        let fingerprint = t.fingerprint();
                        let changed = prior
                            .as_ref()
                            .is_some_and(|p| !same_fingerprint(p, fingerprint) || p.owner != *view);
                        let mut rec = prior.unwrap_or(ReadModelRecord {
                            owner: view.clone(),
                            kind: ReadModelKind::View,
                            fingerprint: fingerprint.bytes,
                            kill_switch: None,
                            refreshed_at: None,
                            fingerprint_scheme: fingerprint.scheme,
                        });
                        let physical_name = physical(t.name);
                        if changed {
                            // A view is refreshed from its sources, not rebuilt: emptied until then.
                            txn.delete_table(TableDefinition::<&[u8], &[u8]>::new(&physical_name))?;
                            rec.fingerprint = fingerprint.bytes;
                            rec.fingerprint_scheme = fingerprint.scheme;
                            rec.owner = view.clone();
                            rec.refreshed_at = None;
                        }
                        txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&physical_name))?;
                        rm_table.insert(t.name, codec::encode(&rec)?.as_slice())?;
                    }
                    meta.insert(META_NEXT_SLOT, codec::encode(&next_slot)?.as_slice())?;
                    Ok(())
                })();
                if let Err(RegisterError::Storage(failure)) = &written {
                    self.poison(failure.message());
                }
                written?;
                self.commit(txn).map_err(commit_to_register)?;
                let erased: Arc<dyn std::any::Any + Send + Sync> = Arc::clone(&upcasters) as _;
                *self.upcasters.lock() = Some(erased);
                Ok(Registry { handlers, tables: all_tables, needs_rebuild, upcasters })
            },
        )
    }
}

/// Whether a stored record's fingerprint is the declared one.
fn same_fingerprint(record: &ReadModelRecord, declared: Fingerprint) -> bool {
    record.fingerprint_scheme == declared.scheme && record.fingerprint == declared.bytes
}

/// Whether a format-1 record (fingerprinted by type name) matches the declared table by
/// format 1's rule: the same key and row type names and version.
fn trusted_format_1(record: &ReadModelRecord, declared: &TableId, fingerprint: Fingerprint) -> bool {
    record.fingerprint_scheme == FingerprintScheme::Named
        && fingerprint.scheme == FingerprintScheme::Shape
        && record.fingerprint == declared.named_fingerprint()
}

fn claim(owners: &mut HashMap<&'static str, String>, t: TableId, owner: &str) -> Result<(), RegisterError> {
    t.validate().map_err(|source| RegisterError::InvalidTable { name: t.name.to_string(), source })?;
    if let Some(first) = owners.get(t.name) {
        return Err(RegisterError::TableOwnedTwice {
            table: t.name.to_string(),
            first: first.clone(),
            second: owner.to_string(),
        });
    }
    owners.insert(t.name, owner.to_string());
    Ok(())
}

fn commit_to_register(e: CommitError) -> RegisterError {
    match e {
        CommitError::Poisoned(p) => RegisterError::Poisoned(p),
        CommitError::Codec(c) => RegisterError::Codec(c),
        CommitError::Storage(s) => RegisterError::Storage(s),
        CommitError::Corrupted { what, reason } => RegisterError::Corrupted { what, reason },
        other => RegisterError::Storage(crate::error::StorageFailure::new(other)),
    }
}
