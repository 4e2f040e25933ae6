//! # driftless-storage
//!
//! The one crate of driftless that names redb. It owns the file format: the tables, the
//! record layouts, the atomic projection commit, the journal, dead letters, read
//! repositories and the metadata that makes a restart forget nothing.
//!
//! The central operation is [`StoreWriter::project`]: a batch of events and every
//! registered projector in ONE redb write transaction, so that an event's offset and its
//! read-model writes commit together or not at all. The [`StoreWriter`] is the one handle
//! that writes read models; it dereferences to the [`Store`], which only reads them and can
//! be shared.
//!
//! ```
//! use driftless_domain::{ApplyError, Event, HandlerName, Projector, ProjectionContext, TableDef, TableId,
//!     Timestamp, Views, PreparedEvent};
//! use driftless_storage::{ReadAnswer, StoreOptions, StoreWriter};
//! use driftless_domain::Upcasters;
//! use std::sync::Arc;
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Deposited { account: String, at: u64, amount: u64 }
//! impl Event for Deposited {
//!     fn aggregate_id(&self) -> &str { &self.account }
//!     fn event_name(&self) -> &str { "Deposited" }
//!     fn occurred_at(&self) -> Timestamp { Timestamp(self.at) }
//! }
//!
//! const BALANCES: TableDef<String, u64> = TableDef::new("balances", 1);
//! struct Balances;
//! impl Projector<Deposited> for Balances {
//!     fn handler_name(&self) -> HandlerName { HandlerName::new("balances").expect("valid name") }
//!     fn tables(&self) -> Vec<TableId> { vec![BALANCES.id()] }
//!     fn apply(&self, e: &Deposited, _: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
//!         let mut t = views.table(&BALANCES)?;
//!         let now = t.get(&e.account)?.unwrap_or(0);
//!         t.put(&e.account, &(now + e.amount))?;
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = StoreWriter::open(dir.path().join("bank.redb"), StoreOptions::default())?;
//! let registry = store.register::<Deposited>(vec![Arc::new(Balances)], &[], Upcasters::new())?;
//! let e = PreparedEvent::new(Deposited { account: "a".into(), at: 1, amount: 5 })?;
//! store.project(&registry, &[e.clone(), e], Timestamp(10))?; // the second is a duplicate
//! let ReadAnswer::Ready(balances) = store.read(&BALANCES)? else { unreachable!() };
//! assert_eq!(balances.get(&"a".to_string())?, Some(5));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod check;
mod commit;
mod error;
mod isolate;
mod outcomes;
mod read;
mod registry;
mod schema;
mod schemas;
mod store;
mod upgrade;
mod writer;

pub use check::StoredEventsCheck;
pub use commit::{
    BatchReport, Delivery, EventOutcome, EventReport, Feed, HandlerOutcome, ReplayReport,
    AGGREGATE_FILING_MAX,
};
pub use error::{CommitError, OpenError, Poisoned, ReadError, RegisterError, StorageFailure};
pub use outcomes::{HandlerOutcomes, HandlerOutcomesIter};
pub use read::{EventBodies, RawRow, ReadAnswer, ReadRepository, Snapshot, TableFigures, ValueScan};
pub use registry::{RegisteredHandler, Registry};
pub use schema::{
    DeadLetter, EventSchema, HandlerRecord, JournalEntry, KillSwitch, ReadModelKind, ReadModelRecord,
    FORMAT_VERSION, OLDEST_FORMAT_VERSION,
};
pub use store::{Durability, Store, StoreOptions, MAX_EVENT_BYTES};
pub use upgrade::LegacyEvents;
pub use writer::StoreWriter;

/// redb's storage-backend trait, re-exported for fault-injection harnesses.
pub use redb::StorageBackend;
