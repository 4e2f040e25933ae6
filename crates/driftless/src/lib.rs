//! # driftless
//!
//! An embedded CQRS read-model engine. Hand it domain events; it runs your projectors and
//! keeps query-shaped read models in one local redb file, applying every event **exactly
//! once** per projector — across crashes, re-deliveries and restarts.
//!
//! - [`Engine::dispatch`] queues an event (a queue bounded in messages and in events:
//!   backpressure, not unbounded memory) and returns a [`Receipt`] to wait on for read-your-writes.
//!   [`Engine::dispatch_and_wait`] dispatches and waits in one call, committing on the
//!   calling thread when nothing else is queued.
//! - One writer thread groups queued events into batches and commits each batch, offsets
//!   and read-model writes together, in ONE redb write transaction; one commit at a time.
//! - A re-delivered event is a duplicate; the same id with another payload is a conflict; a
//!   projector that fails or panics leaves nothing behind and the event becomes a dead
//!   letter, while the rest of the batch commits.
//! - Reads go through read-only [`ReadRepository`] handles on snapshots and never wait for
//!   the writer.
//! - A journal of accepted events feeds catch-up of new handlers, rebuilds without downtime
//!   and refold reconciliation.
//!
//! ## Embedding example
//!
//! ```
//! use driftless::{ApplyError, Engine, Event, HandlerName, ProjectionContext, Projector, ReadAnswer,
//!     TableDef, TableId, Timestamp, Views, EventOutcome};
//!
//! // 1. Your events: any serde type with an aggregate id, a name and a time.
//! #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
//! enum Account { Opened { id: String, at: u64 }, Deposited { id: String, at: u64, amount: u64 } }
//!
//! impl Event for Account {
//!     fn aggregate_id(&self) -> &str {
//!         match self { Account::Opened { id, .. } | Account::Deposited { id, .. } => id }
//!     }
//!     fn event_name(&self) -> &str {
//!         match self { Account::Opened { .. } => "Opened", Account::Deposited { .. } => "Deposited" }
//!     }
//!     fn occurred_at(&self) -> Timestamp {
//!         match self { Account::Opened { at, .. } | Account::Deposited { at, .. } => Timestamp(*at) }
//!     }
//! }
//!
//! // 2. A read model: a typed table.
//! const BALANCES: TableDef<String, u64> = TableDef::new("balances", 1);
//!
//! // 3. A projector that owns it. It reaches only the tables it declares.
//! struct Balances;
//! impl Projector<Account> for Balances {
//!     fn handler_name(&self) -> HandlerName { HandlerName::new("balances").expect("a valid name") }
//!     fn tables(&self) -> Vec<TableId> { vec![BALANCES.id()] }
//!     fn apply(&self, e: &Account, _: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
//!         let mut t = views.table(&BALANCES)?;
//!         match e {
//!             Account::Opened { id, .. } => t.put(id, &0)?,
//!             Account::Deposited { id, amount, .. } => {
//!                 let Some(balance) = t.get(id)? else {
//!                     return Err(ApplyError::rejected(format!("account {id} is not open")));
//!                 };
//!                 t.put(id, &(balance + amount))?;
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("bank.redb");
//! // 4. Open the engine and dispatch.
//! let engine = Engine::builder(&path).projector(Balances).open()?;
//! engine.dispatch(Account::Opened { id: "a".into(), at: 1 })?.wait()?;
//! let deposit = Account::Deposited { id: "a".into(), at: 2, amount: 30 };
//! assert_eq!(engine.dispatch(deposit.clone())?.wait()?.outcome, EventOutcome::Applied);
//! // A re-delivery is recognised and skipped.
//! assert_eq!(engine.dispatch(deposit)?.wait()?.outcome, EventOutcome::Duplicate);
//! // A deposit into an unknown account is rejected and kept as a dead letter.
//! let bad = engine.dispatch(Account::Deposited { id: "zz".into(), at: 3, amount: 1 })?.wait()?;
//! assert!(matches!(bad.outcome, EventOutcome::Rejected { .. }));
//! assert_eq!(engine.dead_letters(None)?.len(), 1);
//!
//! // 5. Read: a snapshot, never blocked by the writer.
//! let ReadAnswer::Ready(balances) = engine.read(&BALANCES)? else { unreachable!("not switched off") };
//! assert_eq!(balances.get(&"a".to_string())?, Some(30));
//!
//! // 6. The kill switch tells readers to go to the source of truth instead.
//! engine.set_kill_switch("balances", true)?;
//! assert!(matches!(engine.read(&BALANCES)?, ReadAnswer::UseSourceOfTruth { .. }));
//! engine.set_kill_switch("balances", false)?;
//!
//! // 7. Rebuild from the journal without downtime, then shut down cleanly.
//! engine.rebuild("balances")?;
//! engine.shutdown()?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod engine;
mod error;
mod observe;
mod room;
mod view;

/// Reconciliation: the reconciler port, the harness, the refold reconciler and the policy
/// (sampling, drift, cadences, promotion). Build a harness with [`Engine::reconciliation`].
pub mod reconcile {
    pub use driftless_domain::reconcile::*;
    pub use driftless_reconciler::*;
}

pub use engine::{
    BatchReceipt, Engine, EngineBuilder, EngineOptions, Freshness, Receipt, WhenFull, DEFAULT_CACHE_BYTES,
    DEFAULT_GAUGE_INTERVAL, DEFAULT_QUEUE_EVENTS,
};
pub use error::{
    BuildError, DispatchBatchError, DispatchError, DispatchWaitError, EngineError, NotCommitted,
};
pub use observe::{describe_metrics, metric_names, ReadModelState};
pub use view::{MaterializedView, View, ViewSource};

pub use driftless_domain::{
    codec, ApplyError, Clock, CodecError, Event, EventId, HandlerName, ManualClock, PayloadHash,
    ProjectionContext, Projector, SystemClock, TableDef, TableId, TableMut, Timestamp, UpcastError,
    Upcasters, ViewError, ViewKey, ViewValue, Views,
};
pub use driftless_storage::{
    BatchReport, CommitError, DeadLetter, Delivery, Durability, EventBodies, EventOutcome, EventReport,
    EventSchema, Feed, HandlerOutcome, HandlerOutcomes, JournalEntry, KillSwitch, OpenError, ReadAnswer,
    ReadError, ReadRepository, ReplayReport, Snapshot, Store, MAX_EVENT_BYTES,
};
