//! # driftless-reconciler
//!
//! Reconciliation of driftless read models against their source of truth, and the only
//! place in driftless that starts reconciliation threads.
//!
//! * [`Reconciler`] is the port: a read model lists its keys and re-checks one key
//!   (read-only). [`RefoldReconciler`] implements it for per-aggregate read models by
//!   refolding the journal; [`FnReconciler`] adapts two closures.
//! * [`ReconcileHarness`] runs reconciliations: a database lease so that one run goes at a
//!   time, a pool of named worker threads with a per-key timeout (a hung or panicking
//!   reconciler costs an error, never the run), the drift policy and the promotion state
//!   machine of [`driftless_domain::reconcile`] persisted per read model, pages through a
//!   [`Pager`], a demotion hook, metrics through the `metrics` facade and logs through
//!   `tracing`. Each finished run is kept in the read model's bounded
//!   [`ReconcileHistory`] ([`ReconcileHarness::history`]): the last [`HISTORY_RUNS`] runs
//!   with their figures and drifted keys, and the promotion changes.
//! * [`ReconcileHarness::tick`] and [`ReconcileHarness::start_scheduler`] run the cadences
//!   of the policy: a slot missed while the machine slept runs once, no slot runs twice.
//!
//! ```
//! use driftless_domain::{ManualClock, PromotionState, ReconcileMode, ReconcileResult, Timestamp};
//! use driftless_reconciler::{FnReconciler, ReconcileHarness};
//! use driftless_storage::{Durability, StoreOptions, StoreWriter};
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let options = StoreOptions { durability: Durability::Eventual, ..StoreOptions::default() };
//! let writer = StoreWriter::open(dir.path().join("db.redb"), options)?;
//! let store = Arc::clone(writer.store());
//!
//! // A read model of 1 000 keys of which key-7 drifted.
//! let cards = FnReconciler::new(
//!     "cards",
//!     |_mode, budget| Ok((0..1_000).map(|i| format!("key-{i}")).take(budget).collect()),
//!     |key| Ok(if key == "key-7" {
//!         ReconcileResult::drifted(key.clone(), "price 500 vs expected 450")
//!     } else {
//!         ReconcileResult::in_sync(key.clone())
//!     }),
//! );
//! let harness = ReconcileHarness::builder(store, Arc::new(ManualClock::new(Timestamp(0))))
//!     .reconciler(Arc::new(cards))
//!     .owner("example")
//!     .build()?;
//!
//! let report = harness.run_once(ReconcileMode::Full, None, None)?;
//! let cards = report.read_model("cards").ok_or("no report")?;
//! assert_eq!((cards.sampled, cards.drifted, cards.errors), (1_000, 1, 0));
//! assert!(!cards.breach); // 0.1 % is not more than 0.1 %
//! assert_eq!(cards.drifted_keys.first().map(|d| d.key.as_str()), Some("key-7"));
//! assert_eq!(harness.health("cards")?.state, PromotionState::Shadow); // 1 clean run of 3
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod harness;
mod history;
mod pool;
mod port;
mod refold;
mod report;
mod schedule;

pub use harness::{
    describe_metrics, health_key, record_rebuild, schedule_key, BuildError, DemotionHook, HarnessBuilder,
    HarnessError, Lease, ReconcileHarness, SeedSource, DEFAULT_KEY_TIMEOUT, DEFAULT_LEASE_TTL,
    DEFAULT_LIST_TIMEOUT, DEFAULT_MAX_ABANDONED_WORKERS, DEFAULT_POLL_INTERVAL, DEFAULT_POPULATION_LIMIT,
    DEFAULT_SAMPLE_BUDGET, DEFAULT_WORKERS, LEASE_KEY,
};
pub use history::{
    history, history_key, record_rebuild_at, ReconcileHistory, RunRecord, TransitionCause, TransitionRecord,
    HISTORY_DRIFTED_KEYS, HISTORY_REASON_CHARS, HISTORY_RUNS,
};
pub use port::{FnReconciler, ReconcileFailure, ReconcileSession, Reconciler};
pub use refold::{compare_row, compare_row_in, RefoldReconciler};
pub use report::{
    DriftedKey, FailureKind, Interruption, KeyFailure, LogPager, Page, Pager, ReadModelReport, RunReport,
    SkipReason, MAX_PAGED_DRIFTS, MAX_REPORTED_DRIFTS, MAX_REPORTED_FAILURES,
};
pub use schedule::SchedulerHandle;

#[cfg(test)]
mod tests;
