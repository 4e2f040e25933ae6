//! A small, self-contained test domain for the storage tests.
//!
//! One event type, [`Op`], and three projectors:
//!
//! * `sum` keeps per-key sums in `sums` (and deletes a row whose sum becomes zero),
//! * `count` keeps per-key event counts in `counts` (and does not handle events of amount
//!   zero),
//! * `log` keeps, per key, the ids of the events it applied, in `logs` — so an event applied
//!   twice shows up as a repeated id.
//!
//! An event names in `fail_for` the handlers that must fail on it: `sum` and `count` return
//! [`ApplyError::rejected`], `log` panics. Each of them writes its rows *before* failing, so
//! a test also proves that the writes of a failed `apply` are discarded. A shared [`Faults`]
//! switch "heals" the projectors: while healed, `fail_for` is ignored (that is how a
//! dead-letter retry can succeed although the stored event still names the handler).

use driftless_domain::{
    ApplyError, CodecError, Event, EventId, HandlerName, NameError, PreparedEvent, ProjectionContext,
    Projector, TableDef, TableId, Timestamp, ViewKey, ViewValue, Views,
};
use driftless_storage::{ReadAnswer, Store, StoreOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The error type of every test.
pub type TestError = Box<dyn std::error::Error>;
/// The result type of every test.
pub type TestResult = Result<(), TestError>;

/// The test event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Op {
    /// The aggregate, and the key of every read-model row the event touches.
    pub key: String,
    /// When it happened (ms).
    pub at: u64,
    /// An explicit event id; `None` derives `"{key}:{at}:Op"`.
    pub id: Option<String>,
    /// What `sum` adds.
    pub amount: i64,
    /// Handlers whose `apply` must fail on this event.
    pub fail_for: Vec<String>,
}

impl Op {
    /// An event with an explicit id that every handler applies.
    pub fn new(id: &str, key: &str, at: u64, amount: i64) -> Self {
        Self { key: key.into(), at, id: Some(id.into()), amount, fail_for: Vec::new() }
    }

    /// The same event, failing for `handlers`.
    pub fn failing(mut self, handlers: &[&str]) -> Self {
        self.fail_for = handlers.iter().map(|h| (*h).to_string()).collect();
        self
    }

    /// Whether `handler` must fail on this event.
    pub fn fails_for(&self, handler: &str) -> bool {
        self.fail_for.iter().any(|h| h == handler)
    }
}

impl Event for Op {
    fn aggregate_id(&self) -> &str {
        &self.key
    }

    fn event_name(&self) -> &str {
        "Op"
    }

    fn occurred_at(&self) -> Timestamp {
        Timestamp(self.at)
    }

    fn event_id(&self) -> EventId {
        let derived = || EventId::derive(&self.key, Timestamp(self.at), "Op");
        match &self.id {
            Some(id) => EventId::new(id.clone()).unwrap_or_else(|_| derived()),
            None => derived(),
        }
    }
}

/// Prepares an event (id, stable encoding, hash).
pub fn prepare(op: Op) -> Result<PreparedEvent<Op>, CodecError> {
    PreparedEvent::new(op)
}

/// Prepares every event of a slice.
pub fn prepare_all(ops: &[Op]) -> Result<Vec<PreparedEvent<Op>>, CodecError> {
    ops.iter().cloned().map(PreparedEvent::new).collect()
}

/// Per-key sums.
pub const SUMS: TableDef<String, i64> = TableDef::new("sums", 1);
/// Per-key counts.
pub const COUNTS: TableDef<String, u64> = TableDef::new("counts", 1);
/// Per-key ids of applied events.
pub const LOGS: TableDef<String, Vec<String>> = TableDef::new("logs", 1);

/// The handler name of the sum projector.
pub const SUM: &str = "sum";
/// The handler name of the count projector.
pub const COUNT: &str = "count";
/// The handler name of the log projector.
pub const LOG: &str = "log";
/// The handlers in registration order (their index in the registry).
pub const HANDLERS: [&str; 3] = [SUM, COUNT, LOG];

/// A switch shared by the test and its projectors.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    healed: Arc<AtomicBool>,
}

impl Faults {
    /// While healed, `fail_for` is ignored.
    pub fn set_healed(&self, healed: bool) {
        self.healed.store(healed, Ordering::SeqCst);
    }

    /// Whether a projector playing `role` (`sum`, `count` or `log`, whatever its handler
    /// name) must fail on `op`.
    fn must_fail(&self, op: &Op, role: &str) -> bool {
        !self.healed.load(Ordering::SeqCst) && op.fails_for(role)
    }
}

/// The reason `sum` or `count` gives when it refuses an event.
pub fn refusal(handler: &str, event_id: &str) -> String {
    format!("{handler} refuses {event_id}")
}

/// The dead-letter reason of the panicking `log` projector.
pub fn panic_reason(event_id: &str) -> String {
    format!("the projector panicked: log panics on {event_id}")
}

/// Keeps per-key sums; deletes a row whose sum becomes zero. Under any handler name it
/// fails on the events whose `fail_for` names `sum`.
pub struct Sum {
    name: HandlerName,
    faults: Faults,
}

impl Sum {
    /// The projector under another handler name (to test renames).
    pub fn named(name: &str, faults: &Faults) -> Result<Self, NameError> {
        Ok(Self { name: HandlerName::new(name)?, faults: faults.clone() })
    }
}

impl Projector<Op> for Sum {
    fn handler_name(&self) -> HandlerName {
        self.name.clone()
    }

    fn tables(&self) -> Vec<TableId> {
        vec![SUMS.id()]
    }

    fn apply(&self, op: &Op, ctx: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
        let mut sums = views.table(&SUMS)?;
        let now = sums.get(&op.key)?.unwrap_or(0) + op.amount;
        if now == 0 {
            sums.remove(&op.key);
        } else {
            sums.put(&op.key, &now)?;
        }
        if self.faults.must_fail(op, SUM) {
            return Err(ApplyError::rejected(refusal(self.name.as_str(), ctx.event_id.as_str())));
        }
        Ok(())
    }
}

/// Keeps per-key event counts.
pub struct Count {
    name: HandlerName,
    faults: Faults,
}

impl Projector<Op> for Count {
    fn handler_name(&self) -> HandlerName {
        self.name.clone()
    }

    fn tables(&self) -> Vec<TableId> {
        vec![COUNTS.id()]
    }

    /// Events of amount zero do not count.
    fn handles(&self, op: &Op) -> bool {
        op.amount != 0
    }

    fn apply(&self, op: &Op, ctx: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
        let mut counts = views.table(&COUNTS)?;
        let now = counts.get(&op.key)?.unwrap_or(0) + 1;
        counts.put(&op.key, &now)?;
        if self.faults.must_fail(op, COUNT) {
            return Err(ApplyError::rejected(refusal(self.name.as_str(), ctx.event_id.as_str())));
        }
        Ok(())
    }
}

/// Keeps per-key ids of applied events; panics on the events that name it.
pub struct Log {
    name: HandlerName,
    faults: Faults,
}

impl Projector<Op> for Log {
    fn handler_name(&self) -> HandlerName {
        self.name.clone()
    }

    fn tables(&self) -> Vec<TableId> {
        vec![LOGS.id()]
    }

    #[allow(clippy::panic, reason = "this projector exists to prove that a panicking apply is contained")]
    fn apply(&self, op: &Op, ctx: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
        let mut logs = views.table(&LOGS)?;
        let mut ids = logs.get(&op.key)?.unwrap_or_default();
        ids.push(ctx.event_id.to_string());
        logs.put(&op.key, &ids)?;
        if self.faults.must_fail(op, LOG) {
            panic!("log panics on {}", ctx.event_id);
        }
        Ok(())
    }
}

/// The three projectors, in [`HANDLERS`] order.
pub fn projectors(faults: &Faults) -> Result<Vec<Arc<dyn Projector<Op>>>, NameError> {
    Ok(vec![
        Arc::new(Sum::named(SUM, faults)?),
        Arc::new(Count { name: HandlerName::new(COUNT)?, faults: faults.clone() }),
        Arc::new(Log { name: HandlerName::new(LOG)?, faults: faults.clone() }),
    ])
}

/// Fast options for tests: commits are not synced.
pub fn fast_options() -> StoreOptions {
    StoreOptions { durability: driftless_storage::Durability::Eventual, ..StoreOptions::default() }
}

/// Every row of a read model, which must be serving.
pub fn read_all<K: ViewKey + Ord, V: ViewValue>(
    store: &Store,
    def: &TableDef<K, V>,
) -> Result<BTreeMap<K, V>, TestError> {
    match store.read(def)? {
        ReadAnswer::Ready(repo) => {
            let mut out = BTreeMap::new();
            for row in repo.iter()? {
                let (k, v) = row?;
                out.insert(k, v);
            }
            Ok(out)
        }
        ReadAnswer::UseSourceOfTruth { read_model, .. } => {
            Err(format!("the read model {read_model} is not serving").into())
        }
    }
}

/// The read models a stream of events gives when each handler applies exactly the events
/// in its set, once each, in stream order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    /// `sums`.
    pub sums: BTreeMap<String, i64>,
    /// `counts`.
    pub counts: BTreeMap<String, u64>,
    /// `logs`.
    pub logs: BTreeMap<String, Vec<String>>,
}

impl Tables {
    /// Reads the three tables of a store.
    pub fn read(store: &Store) -> Result<Self, TestError> {
        Ok(Self {
            sums: read_all(store, &SUMS)?,
            counts: read_all(store, &COUNTS)?,
            logs: read_all(store, &LOGS)?,
        })
    }

    /// Empties the table of `handler` (as a rebuild starts).
    pub fn clear(&mut self, handler: &str) {
        match handler {
            SUM => self.sums.clear(),
            COUNT => self.counts.clear(),
            LOG => self.logs.clear(),
            _ => {}
        }
    }

    /// Applies `op` (with id `id`) as `handler` would (`count` skips what it does not handle).
    pub fn apply(&mut self, handler: &str, id: &str, op: &Op) {
        match handler {
            SUM => {
                let now = self.sums.get(&op.key).copied().unwrap_or(0) + op.amount;
                if now == 0 {
                    self.sums.remove(&op.key);
                } else {
                    self.sums.insert(op.key.clone(), now);
                }
            }
            COUNT if op.amount != 0 => *self.counts.entry(op.key.clone()).or_insert(0) += 1,
            LOG => self.logs.entry(op.key.clone()).or_default().push(id.to_string()),
            _ => {}
        }
    }
}
