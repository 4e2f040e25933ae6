//! The reconciliation harness: lease, worker pool, drift policy, promotion, paging,
//! metrics.

use crate::history::{self, record_rebuild_at, ReconcileHistory, RunRecord};
use crate::pool::{self, KeyOutcome, Listing, PoolConfig, PoolEnd};
use crate::port::Reconciler;
use crate::report::{
    DriftedKey, Interruption, KeyFailure, LogPager, Page, Pager, ReadModelReport, RunReport, SkipReason,
    MAX_PAGED_DRIFTS, MAX_REPORTED_DRIFTS, MAX_REPORTED_FAILURES,
};
use crossbeam_channel::Receiver;
use driftless_domain::reconcile::{metric_names as m, sample_seed, Observation, Transition};
use driftless_domain::{
    Clock, PromotionState, ReadModelHealth, ReconcileMode, ReconcilePolicy, RunSummary, Timestamp,
};
use driftless_storage::{CommitError, ReadError, Store};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The metadata key of the reconciliation lease.
pub const LEASE_KEY: &str = "lease/reconcile";

/// The metadata key of a read model's persisted [`ReadModelHealth`]: `health/{read_model}`.
#[must_use]
pub fn health_key(read_model: &str) -> String {
    format!("health/{read_model}")
}

/// The metadata key of the last cadence slot claimed for `mode`: `schedule/{mode}`.
#[must_use]
pub fn schedule_key(mode: ReconcileMode) -> String {
    format!("schedule/{mode}")
}

/// The default number of worker threads.
pub const DEFAULT_WORKERS: usize = 2;
/// The default per-key timeout.
pub const DEFAULT_KEY_TIMEOUT: Duration = Duration::from_secs(5);
/// The default listing timeout.
pub const DEFAULT_LIST_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The default most keys one read model's run checks.
pub const DEFAULT_SAMPLE_BUDGET: usize = 100_000;
/// The default most keys listed as the population of a sampled run.
pub const DEFAULT_POPULATION_LIMIT: usize = 10_000_000;
/// The default lease time to live (renewed during a run).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10 * 60);
/// The default longest the scheduler sleeps before looking at the clock again.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// The default number of abandoned (hung) workers one read model's run replaces.
pub const DEFAULT_MAX_ABANDONED_WORKERS: usize = 8;

/// Called with the read model's name when a run demotes it (promoted → demoted); the
/// engine engages the read model's kill switch here.
pub type DemotionHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The reconciliation lease as stored under [`LEASE_KEY`]: one run at a time per database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The owner id of the harness that holds it (for reports and logs).
    pub owner: String,
    /// A value unique to the holding run: two runs never share a lease, even with the same
    /// owner id, and a restarted process waits for its predecessor's lease to expire.
    pub token: u64,
    /// When it was taken.
    pub acquired_at: Timestamp,
    /// When it expires unless renewed.
    pub until: Timestamp,
}

/// Where a sampled run's seed comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SeedSource {
    /// [`sample_seed`]`(read_model, slot)`: the run's cadence slot, or for a manual run
    /// without a slot the clock's now. A retried slot re-checks the same keys.
    #[default]
    Slot,
    /// [`sample_seed`]`(read_model, seed)` for every run: the same keys every time (tests,
    /// reproducible audits).
    Fixed(u64),
}

/// Why a harness could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two reconcilers name the same read model.
    #[error("two reconcilers are registered for the read model {name:?}; a read model has one reconciler")]
    DuplicateReadModel {
        /// The read model.
        name: String,
    },
    /// The worker count is zero.
    #[error("the worker count is zero; a harness needs at least one worker thread")]
    NoWorkers,
    /// The per-key or the listing timeout is zero.
    #[error("a reconciliation timeout is zero; give each key and each listing some time")]
    ZeroTimeout,
    /// The lease time to live is shorter than a millisecond.
    #[error("the lease time to live is shorter than a millisecond; a lease must outlive its run")]
    ZeroLeaseTtl,
    /// The owner id is empty.
    #[error("the owner id is empty; name the harness so that a held lease says who holds it")]
    EmptyOwner,
}

/// Why a harness operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// No reconciler is registered for the read model asked for.
    #[error("no reconciler is registered for the read model {name:?}")]
    UnknownReadModel {
        /// The name asked for.
        name: String,
    },
    /// Reconciliation state could not be read from the database.
    #[error("the reconciliation state could not be read from the database: {0}")]
    Read(#[from] ReadError),
    /// Reconciliation state could not be written to the database.
    #[error("the reconciliation state could not be written to the database: {0}")]
    Commit(#[from] CommitError),
    /// The scheduler thread could not be started.
    #[error("the reconciliation scheduler thread could not be started: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Builds a [`ReconcileHarness`]; see [`ReconcileHarness::builder`].
pub struct HarnessBuilder {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    reconcilers: Vec<Arc<dyn Reconciler>>,
    policy: ReconcilePolicy,
    owner: String,
    workers: usize,
    key_timeout: Duration,
    list_timeout: Duration,
    sample_budget: usize,
    population_limit: usize,
    seed_source: SeedSource,
    pager: Arc<dyn Pager>,
    on_demote: Option<DemotionHook>,
    lease_ttl: Duration,
    poll_interval: Duration,
    max_abandoned_workers: usize,
}

impl fmt::Debug for HarnessBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HarnessBuilder")
            .field("read_models", &self.reconcilers.iter().map(|r| r.read_model()).collect::<Vec<_>>())
            .field("owner", &self.owner)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl HarnessBuilder {
    /// Adds a reconciler.
    #[must_use]
    pub fn reconciler(mut self, reconciler: Arc<dyn Reconciler>) -> Self {
        self.reconcilers.push(reconciler);
        self
    }

    /// Adds reconcilers.
    #[must_use]
    pub fn reconcilers(mut self, reconcilers: impl IntoIterator<Item = Arc<dyn Reconciler>>) -> Self {
        self.reconcilers.extend(reconcilers);
        self
    }

    /// The sampling, drift, promotion and cadence policy (default: [`ReconcilePolicy::default`]).
    #[must_use]
    pub fn policy(mut self, policy: ReconcilePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The owner id written into the lease (default `driftless-{process id}`).
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Worker threads per run (default [`DEFAULT_WORKERS`]).
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How long one key may take (default [`DEFAULT_KEY_TIMEOUT`]); measured on the
    /// monotonic wall clock, not the injected clock.
    #[must_use]
    pub fn key_timeout(mut self, timeout: Duration) -> Self {
        self.key_timeout = timeout;
        self
    }

    /// How long listing a read model's keys may take (default [`DEFAULT_LIST_TIMEOUT`]);
    /// a listing that outlives it is abandoned and counted as one error.
    #[must_use]
    pub fn list_timeout(mut self, timeout: Duration) -> Self {
        self.list_timeout = timeout;
        self
    }

    /// The most keys one read model's run checks (default [`DEFAULT_SAMPLE_BUDGET`]).
    #[must_use]
    pub fn sample_budget(mut self, budget: usize) -> Self {
        self.sample_budget = budget;
        self
    }

    /// The most keys listed as a sampled run's population (default
    /// [`DEFAULT_POPULATION_LIMIT`]; never less than the sample budget).
    #[must_use]
    pub fn population_limit(mut self, limit: usize) -> Self {
        self.population_limit = limit;
        self
    }

    /// Where sampled runs take their seed (default [`SeedSource::Slot`]).
    #[must_use]
    pub fn seed_source(mut self, source: SeedSource) -> Self {
        self.seed_source = source;
        self
    }

    /// Where pages go (default [`LogPager`]).
    #[must_use]
    pub fn pager(mut self, pager: Arc<dyn Pager>) -> Self {
        self.pager = pager;
        self
    }

    /// Called when a run demotes a read model (default: nothing).
    #[must_use]
    pub fn on_demote(mut self, hook: DemotionHook) -> Self {
        self.on_demote = Some(hook);
        self
    }

    /// The lease time to live, by the injected clock (default [`DEFAULT_LEASE_TTL`]). A
    /// run renews it every third of it.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The longest the scheduler thread sleeps before reading the clock again (default
    /// [`DEFAULT_POLL_INTERVAL`]); it bounds how late a clock jump or a freed lease is
    /// noticed.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How many abandoned (hung) workers one read model's run replaces (default
    /// [`DEFAULT_MAX_ABANDONED_WORKERS`]). When every worker is stuck and the replacements
    /// are used up, the run's remaining keys count as errors
    /// ([`FailureKind::NotChecked`](crate::FailureKind::NotChecked)).
    #[must_use]
    pub fn max_abandoned_workers(mut self, max: usize) -> Self {
        self.max_abandoned_workers = max;
        self
    }

    /// The harness.
    ///
    /// # Errors
    /// [`BuildError`] for two reconcilers of one read model, zero workers, a zero timeout
    /// or lease time, or an empty owner id.
    pub fn build(self) -> Result<ReconcileHarness, BuildError> {
        let mut seen = BTreeSet::new();
        for r in &self.reconcilers {
            if !seen.insert(r.read_model().to_owned()) {
                return Err(BuildError::DuplicateReadModel { name: r.read_model().to_owned() });
            }
        }
        if self.workers == 0 {
            return Err(BuildError::NoWorkers);
        }
        if self.key_timeout.is_zero() || self.list_timeout.is_zero() {
            return Err(BuildError::ZeroTimeout);
        }
        if self.lease_ttl.as_millis() == 0 {
            return Err(BuildError::ZeroLeaseTtl);
        }
        if self.owner.trim().is_empty() {
            return Err(BuildError::EmptyOwner);
        }
        Ok(ReconcileHarness {
            store: self.store,
            clock: self.clock,
            reconcilers: self.reconcilers,
            policy: self.policy,
            owner: self.owner,
            pool: PoolConfig {
                workers: self.workers,
                key_timeout: self.key_timeout,
                max_abandoned: self.max_abandoned_workers,
            },
            list_timeout: self.list_timeout,
            sample_budget: self.sample_budget,
            population_limit: self.population_limit.max(self.sample_budget),
            seed_source: self.seed_source,
            pager: self.pager,
            on_demote: self.on_demote,
            lease_ttl_ms: u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX),
            poll_interval: self.poll_interval.max(Duration::from_millis(1)),
        })
    }
}

/// Runs reconciliation: the only place in driftless that starts reconciliation threads.
///
/// # A run
///
/// [`Self::run_once`] takes the lease ([`LEASE_KEY`], a compare-and-set in the database:
/// a run whose lease is held by another, unexpired run is *skipped*, not failed), then for
/// each read model:
///
/// 1. lists its keys (on a thread of its own, within the listing timeout) and picks the
///    ones to check: in full mode the first `sample_budget`;
///    in sampled mode a [`SamplingPolicy`](driftless_domain::SamplingPolicy) draw seeded
///    by [`sample_seed`]`(read_model, slot)` (see [`SeedSource`]);
/// 2. checks them on a pool of named threads (`driftless-reconcile-N`, started for the
///    read model's run and joined at its end) fed over a bounded channel. A drift is a result; an error, a panic (caught) or a call that outlives the
///    per-key timeout is counted as an error and never ends the run. A worker stuck past
///    the timeout is **abandoned**: its key is a timeout, the thread is detached (it exits
///    when its call returns, if ever — until then it keeps its reconciler, and what that
///    holds, alive), and a replacement is started, at most `max_abandoned_workers` per
///    run; when every worker is stuck and none is left, the keys still unchecked count as
///    errors. So a hung reconciler costs about one timeout per wave, never the run;
/// 3. applies the drift policy and the promotion state machine to the persisted
///    [`ReadModelHealth`] ([`health_key`]), pages through the [`Pager`] when that says so,
///    calls the demotion hook on promoted → demoted, records the metrics of
///    [`metric_names`](driftless_domain::reconcile::metric_names), logs transitions, and
///    appends the run to the read model's [`ReconcileHistory`] ([`Self::history`]). The
///    run is a `tracing` span, `reconcile`, with its figures as fields.
///
/// The lease is renewed during the run and released at its end (also on an early return).
///
/// # Schedules
///
/// [`Self::due`] and [`Self::tick`] run the cadences of the policy; [`Self::start_scheduler`]
/// drives them from a thread. A slot is **claimed in the database before it runs** (at most
/// once): it never runs twice, across restarts and clock jumps, and a run that crashes is
/// not retried — the next slot checks again.
///
/// Times of leases and schedules come from the injected [`Clock`]; per-key timeouts and
/// run durations are measured on the monotonic wall clock.
pub struct ReconcileHarness {
    pub(crate) store: Arc<Store>,
    pub(crate) clock: Arc<dyn Clock>,
    reconcilers: Vec<Arc<dyn Reconciler>>,
    pub(crate) policy: ReconcilePolicy,
    owner: String,
    pool: PoolConfig,
    list_timeout: Duration,
    sample_budget: usize,
    population_limit: usize,
    seed_source: SeedSource,
    pager: Arc<dyn Pager>,
    on_demote: Option<DemotionHook>,
    lease_ttl_ms: u64,
    pub(crate) poll_interval: Duration,
}

impl fmt::Debug for ReconcileHarness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconcileHarness")
            .field("read_models", &self.read_models())
            .field("owner", &self.owner)
            .field("workers", &self.pool.workers)
            .field("key_timeout", &self.pool.key_timeout)
            .field("sample_budget", &self.sample_budget)
            .finish_non_exhaustive()
    }
}

/// A held lease; released on drop.
pub(crate) struct LeaseGuard<'a> {
    harness: &'a ReconcileHarness,
    token: u64,
    next_renewal: Timestamp,
    lost: bool,
}

impl LeaseGuard<'_> {
    /// Renews the lease when a third of its time has passed; false once it is lost.
    pub(crate) fn keep_alive(&mut self) -> bool {
        if self.lost {
            return false;
        }
        let now = self.harness.clock.now();
        if now < self.next_renewal {
            return true;
        }
        let until = Timestamp(now.0.saturating_add(self.harness.lease_ttl_ms));
        let token = self.token;
        let renewed = self.harness.store.meta_update(LEASE_KEY, |current: Option<Lease>| match current {
            Some(lease) if lease.token == token => (Some(Lease { until, ..lease }), true),
            other => (other, false),
        });
        match renewed {
            Ok(true) => {
                self.next_renewal = Timestamp(now.0.saturating_add(self.harness.lease_ttl_ms / 3));
                true
            }
            Ok(false) => {
                tracing::warn!(owner = %self.harness.owner, "the reconciliation lease was lost to another run");
                self.lost = true;
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "the reconciliation lease could not be renewed");
                self.lost = true;
                false
            }
        }
    }
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        let token = self.token;
        let released = self.harness.store.meta_update(LEASE_KEY, |current: Option<Lease>| match current {
            Some(lease) if lease.token == token => (None, ()),
            other => (other, ()),
        });
        if let Err(e) = released {
            tracing::error!(error = %e, "the reconciliation lease could not be released; it expires on its own");
        }
    }
}

/// A lease token unique to this run (random per process, counted within it).
fn new_token() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ReconcileHarness {
    /// A builder over `store`, reading time from `clock`, with the documented defaults and
    /// no reconcilers.
    #[must_use]
    pub fn builder(store: Arc<Store>, clock: Arc<dyn Clock>) -> HarnessBuilder {
        HarnessBuilder {
            store,
            clock,
            reconcilers: Vec::new(),
            policy: ReconcilePolicy::default(),
            owner: format!("driftless-{}", std::process::id()),
            workers: DEFAULT_WORKERS,
            key_timeout: DEFAULT_KEY_TIMEOUT,
            list_timeout: DEFAULT_LIST_TIMEOUT,
            sample_budget: DEFAULT_SAMPLE_BUDGET,
            population_limit: DEFAULT_POPULATION_LIMIT,
            seed_source: SeedSource::Slot,
            pager: Arc::new(LogPager),
            on_demote: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_abandoned_workers: DEFAULT_MAX_ABANDONED_WORKERS,
        }
    }

    /// The registered read models, in registry order.
    #[must_use]
    pub fn read_models(&self) -> Vec<&str> {
        self.reconcilers.iter().map(|r| r.read_model()).collect()
    }

    /// The owner id written into the lease.
    #[must_use]
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The policy.
    #[must_use]
    pub fn policy(&self) -> &ReconcilePolicy {
        &self.policy
    }

    /// Reconciles `read_model` (or every registered read model) once in `mode`, for the
    /// cadence `slot` if any (it only seeds the sample; see [`SeedSource`]). A manual run
    /// does not claim a schedule slot.
    ///
    /// With no reconciler registered it does nothing and returns an empty report. When
    /// another run holds the lease, it returns a report with
    /// [`skipped`](RunReport::skipped) set.
    ///
    /// # Errors
    /// [`HarnessError::UnknownReadModel`] for a name without a reconciler;
    /// [`HarnessError::Read`] / [`HarnessError::Commit`] when the lease or health cannot be
    /// read or written. Reconciler errors are never errors of the run.
    pub fn run_once(
        &self,
        mode: ReconcileMode,
        read_model: Option<&str>,
        slot: Option<u64>,
    ) -> Result<RunReport, HarnessError> {
        let targets = self.targets(read_model)?;
        let mut report = RunReport::new(mode, slot, self.clock.now());
        if targets.is_empty() {
            return Ok(report);
        }
        let mut lease = match self.acquire_lease()? {
            Ok(lease) => lease,
            Err(skip) => {
                report.skipped = Some(skip);
                return Ok(report);
            }
        };
        self.run_targets(&mut lease, &targets, &mut report, &crossbeam_channel::never())?;
        drop(lease);
        Ok(report)
    }

    /// The persisted health of `read_model` (a new shadow health when none is stored).
    ///
    /// # Errors
    /// [`HarnessError::Read`] when it cannot be read.
    pub fn health(&self, read_model: &str) -> Result<ReadModelHealth, HarnessError> {
        Ok(self.store.meta_get::<ReadModelHealth>(&health_key(read_model))?.unwrap_or_default())
    }

    /// Records that `read_model` was rebuilt from the journal: its streaks restart, and a
    /// demoted model goes back to shadow (the returned transition), where it must earn
    /// promotion again.
    ///
    /// # Errors
    /// [`HarnessError::Commit`] when the health cannot be written.
    pub fn mark_rebuilt(&self, read_model: &str) -> Result<Option<Transition>, HarnessError> {
        Ok(record_rebuild_at(&self.store, read_model, self.clock.now())?)
    }

    /// The reconciliation history of `read_model`: its last recorded runs with their
    /// figures and drifted keys, and its promotion changes (see [`ReconcileHistory`]).
    ///
    /// # Errors
    /// [`HarnessError::Read`] when it cannot be read.
    pub fn history(&self, read_model: &str) -> Result<ReconcileHistory, HarnessError> {
        Ok(history::history(&self.store, read_model)?)
    }

    /// The lease currently stored, if any (it may have expired).
    ///
    /// # Errors
    /// [`HarnessError::Read`] when it cannot be read.
    pub fn lease(&self) -> Result<Option<Lease>, HarnessError> {
        Ok(self.store.meta_get::<Lease>(LEASE_KEY)?)
    }

    /// Removes the stored lease whoever holds it, for an operator who knows its holder is
    /// gone (a crashed process otherwise blocks runs until its lease expires). Returns the
    /// lease removed.
    ///
    /// # Errors
    /// [`HarnessError::Commit`] when it cannot be written.
    pub fn break_lease(&self) -> Result<Option<Lease>, HarnessError> {
        let broken = self.store.meta_update(LEASE_KEY, |current: Option<Lease>| (None, current))?;
        if let Some(lease) = &broken {
            tracing::warn!(owner = %lease.owner, until = %lease.until, "the reconciliation lease was broken by hand");
        }
        Ok(broken)
    }

    fn targets(&self, read_model: Option<&str>) -> Result<Vec<Arc<dyn Reconciler>>, HarnessError> {
        match read_model {
            None => Ok(self.reconcilers.clone()),
            Some(name) => self
                .reconcilers
                .iter()
                .find(|r| r.read_model() == name)
                .map(|r| vec![Arc::clone(r)])
                .ok_or_else(|| HarnessError::UnknownReadModel { name: name.to_owned() }),
        }
    }

    pub(crate) fn all_targets(&self) -> Vec<Arc<dyn Reconciler>> {
        self.reconcilers.clone()
    }

    /// Takes the lease, or says who holds it.
    pub(crate) fn acquire_lease(&self) -> Result<Result<LeaseGuard<'_>, SkipReason>, HarnessError> {
        let now = self.clock.now();
        let token = new_token();
        let mine = Lease {
            owner: self.owner.clone(),
            token,
            acquired_at: now,
            until: Timestamp(now.0.saturating_add(self.lease_ttl_ms)),
        };
        let outcome = self.store.meta_update(LEASE_KEY, |current: Option<Lease>| match current {
            Some(held) if held.until > now => (Some(held.clone()), Err(held)),
            _ => (Some(mine), Ok(())),
        })?;
        match outcome {
            Ok(()) => Ok(Ok(LeaseGuard {
                harness: self,
                token,
                next_renewal: Timestamp(now.0.saturating_add(self.lease_ttl_ms / 3)),
                lost: false,
            })),
            Err(held) => {
                tracing::warn!(
                    owner = %self.owner,
                    holder = %held.owner,
                    until = %held.until,
                    "reconciliation skipped: another run holds the lease"
                );
                Ok(Err(SkipReason::LeaseHeld { owner: held.owner, until: held.until }))
            }
        }
    }

    /// Reconciles `targets` under `lease`, appending to `report`.
    pub(crate) fn run_targets(
        &self,
        lease: &mut LeaseGuard<'_>,
        targets: &[Arc<dyn Reconciler>],
        report: &mut RunReport,
        cancel: &Receiver<()>,
    ) -> Result<(), HarnessError> {
        let seed_slot = match self.seed_source {
            SeedSource::Slot => report.slot.unwrap_or(report.started_at.0),
            SeedSource::Fixed(seed) => seed,
        };
        for target in targets {
            if !lease.keep_alive() {
                report.interrupted = Some(Interruption::LeaseLost);
                break;
            }
            if cancelled(cancel) {
                report.interrupted = Some(Interruption::Cancelled);
                break;
            }
            let rm = self.run_read_model(target, report.mode, seed_slot, lease, cancel)?;
            let interrupted = rm.interrupted;
            report.read_models.push(rm);
            if interrupted.is_some() {
                report.interrupted = interrupted;
                break;
            }
        }
        Ok(())
    }

    fn run_read_model(
        &self,
        reconciler: &Arc<dyn Reconciler>,
        mode: ReconcileMode,
        seed_slot: u64,
        lease: &mut LeaseGuard<'_>,
        cancel: &Receiver<()>,
    ) -> Result<ReadModelReport, HarnessError> {
        let started = Instant::now();
        let name = reconciler.read_model().to_owned();
        let span = tracing::info_span!(
            "reconcile",
            read_model = %name,
            %mode,
            sampled = tracing::field::Empty,
            drifted = tracing::field::Empty,
            errors = tracing::field::Empty,
            drift_ratio = tracing::field::Empty,
            verdict = tracing::field::Empty,
            state = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let _entered = span.enter();
        let mut summary = RunSummary::new(name.clone(), mode);
        let mut drifted_keys: Vec<DriftedKey> = Vec::new();
        let mut failures: Vec<KeyFailure> = Vec::new();
        tracing::debug!(read_model = %name, %mode, "reconciling");

        let limit = match mode {
            ReconcileMode::Full => self.sample_budget,
            ReconcileMode::Sampled => self.population_limit,
        };
        let mut end = PoolEnd::Completed;
        match pool::list_keys(reconciler, mode, limit, self.list_timeout, cancel) {
            Listing::Cancelled => end = PoolEnd::Cancelled,
            Listing::Done(Err((kind, reason))) => {
                tracing::warn!(read_model = %name, %reason, "the keys could not be listed");
                summary.record_error();
                failures.push(KeyFailure { key: None, kind, reason });
            }
            Listing::Done(Ok(mut keys)) => {
                let keys = match mode {
                    ReconcileMode::Full => {
                        keys.truncate(self.sample_budget);
                        keys
                    }
                    ReconcileMode::Sampled => self.policy.sampling.choose_sample(
                        keys,
                        mode,
                        self.sample_budget,
                        sample_seed(&name, seed_slot),
                    ),
                };
                let keys = Arc::new(keys);
                let (outcomes, pool_end) = pool::check_keys(
                    reconciler,
                    Arc::clone(&keys),
                    self.pool,
                    &mut || lease.keep_alive(),
                    cancel,
                );
                end = pool_end;
                for (key, outcome) in keys.iter().zip(outcomes) {
                    match outcome {
                        Some(KeyOutcome::Checked(result)) => {
                            summary.record(&result);
                            if result.is_drifted() && drifted_keys.len() < MAX_REPORTED_DRIFTS {
                                let reason = result.reason.unwrap_or_else(|| "drifted".to_owned());
                                drifted_keys.push(DriftedKey { key: key.clone(), reason });
                            }
                        }
                        Some(KeyOutcome::Failed { kind, reason }) => {
                            summary.record_error();
                            if failures.len() < MAX_REPORTED_FAILURES {
                                failures.push(KeyFailure { key: Some(key.clone()), kind, reason });
                            }
                        }
                        None => {}
                    }
                }
            }
        }
        let duration = started.elapsed();
        let drift = self.policy.drift;
        let breach = drift.is_breach(&summary);
        let verdict = drift.assess(&summary);
        let mut report = ReadModelReport {
            read_model: name.clone(),
            mode,
            sampled: summary.sampled,
            drifted: summary.drifted,
            errors: summary.errors,
            drift_ratio: summary.drift_ratio(),
            breach,
            verdict,
            state: PromotionState::Shadow,
            transition: None,
            paged: false,
            drifted_keys,
            failures,
            duration_ms: millis(duration),
            interrupted: match end {
                PoolEnd::Completed => None,
                PoolEnd::Cancelled => Some(Interruption::Cancelled),
                PoolEnd::Stopped => Some(Interruption::LeaseLost),
            },
        };
        span.record("sampled", summary.sampled)
            .record("drifted", summary.drifted)
            .record("errors", summary.errors)
            .record("drift_ratio", summary.drift_ratio())
            .record("verdict", verdict.as_str())
            .record("duration_ms", report.duration_ms);
        if let Some(why) = report.interrupted {
            report.state = self.health(&name)?.state;
            tracing::warn!(read_model = %name, %mode, checked = summary.sampled, "{why}; the run is not recorded");
            return Ok(report);
        }

        let now = self.clock.now();
        let promotion = self.policy.promotion;
        let (health, observation): (ReadModelHealth, Observation) =
            self.store.meta_update(&health_key(&name), |current: Option<ReadModelHealth>| {
                let mut health = current.unwrap_or_default();
                let observation = health.record_run(now, summary.clone(), &drift, &promotion);
                (Some(health.clone()), (health, observation))
            })?;
        report.state = health.state;
        report.transition = observation.transition;
        span.record("state", health.state.as_str());

        self.record_metrics(&summary, breach, observation.transition, duration);
        tracing::info!(
            read_model = %name,
            %mode,
            sampled = summary.sampled,
            drifted = summary.drifted,
            errors = summary.errors,
            drift_ratio = summary.drift_ratio(),
            verdict = verdict.as_str(),
            state = %health.state,
            "reconciled"
        );
        if breach {
            tracing::warn!(
                read_model = %name,
                %mode,
                drifted = summary.drifted,
                sampled = summary.sampled,
                streak = health.consecutive_breaches,
                "the drift breaches the policy"
            );
        }
        if let Some(t) = observation.transition {
            tracing::warn!(read_model = %name, from = %t.from, to = %t.to, "the read model changed promotion state");
        }
        if observation.page {
            let page = Page {
                read_model: name.clone(),
                mode,
                at: now,
                state: health.state,
                transition: observation.transition,
                consecutive_breaches: health.consecutive_breaches,
                summary: summary.clone(),
                breach_ppm: drift.breach_ppm,
                drifted_keys: report.drifted_keys.iter().take(MAX_PAGED_DRIFTS).cloned().collect(),
            };
            if catch_unwind(AssertUnwindSafe(|| self.pager.page(&page))).is_err() {
                tracing::error!(read_model = %name, "the pager panicked; the page was: {page}");
            }
            report.paged = true;
        }
        if observation
            .transition
            .is_some_and(|t| t.from == PromotionState::Promoted && t.to == PromotionState::Demoted)
        {
            if let Some(hook) = &self.on_demote {
                if catch_unwind(AssertUnwindSafe(|| hook(&name))).is_err() {
                    tracing::error!(read_model = %name, "the demotion hook panicked");
                }
            }
        }
        history::record_run(&self.store, RunRecord::of_report(&report, now, drift.breach_ppm), &name)?;
        Ok(report)
    }

    fn record_metrics(
        &self,
        summary: &RunSummary,
        breach: bool,
        transition: Option<Transition>,
        duration: Duration,
    ) {
        let rm = summary.read_model.clone();
        let mode = summary.mode.as_str();
        metrics::counter!(m::SAMPLES_TOTAL, m::LABEL_READ_MODEL => rm.clone(), m::LABEL_MODE => mode)
            .increment(summary.sampled);
        metrics::counter!(m::DRIFT_TOTAL, m::LABEL_READ_MODEL => rm.clone(), m::LABEL_MODE => mode)
            .increment(summary.drifted);
        metrics::counter!(m::ERRORS_TOTAL, m::LABEL_READ_MODEL => rm.clone()).increment(summary.errors);
        if breach {
            metrics::counter!(m::BREACHES_TOTAL, m::LABEL_READ_MODEL => rm.clone()).increment(1);
        }
        if let Some(t) = transition {
            metrics::counter!(m::PROMOTIONS_TOTAL, m::LABEL_READ_MODEL => rm.clone(), m::LABEL_TO => t.to.as_str())
                .increment(1);
        }
        metrics::histogram!(m::RUN_DURATION_SECONDS, m::LABEL_READ_MODEL => rm, m::LABEL_MODE => mode)
            .record(duration.as_secs_f64());
    }
}

/// Whether `cancel` has fired (a message or a disconnection).
pub(crate) fn cancelled(cancel: &Receiver<()>) -> bool {
    !matches!(cancel.try_recv(), Err(crossbeam_channel::TryRecvError::Empty))
}

/// Records in `store` that `read_model` was rebuilt from the journal, now by the system
/// clock: see [`record_rebuild_at`], which takes the time from the caller's clock.
///
/// # Errors
/// [`driftless_storage::CommitError`] when the health cannot be written.
pub fn record_rebuild(
    store: &Store,
    read_model: &str,
) -> Result<Option<Transition>, driftless_storage::CommitError> {
    record_rebuild_at(store, read_model, driftless_domain::SystemClock.now())
}

/// Describes the reconciler's metrics to the installed `metrics` recorder (units and help
/// texts). Optional; call it once after installing a recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(m::SAMPLES_TOTAL, metrics::Unit::Count, "Keys re-checked by reconciliation.");
    metrics::describe_counter!(m::DRIFT_TOTAL, metrics::Unit::Count, "Keys found drifted by reconciliation.");
    metrics::describe_counter!(
        m::BREACHES_TOTAL,
        metrics::Unit::Count,
        "Runs whose drift breached the policy."
    );
    metrics::describe_counter!(m::PROMOTIONS_TOTAL, metrics::Unit::Count, "Promotion-state transitions.");
    metrics::describe_counter!(m::ERRORS_TOTAL, metrics::Unit::Count, "Keys that could not be checked.");
    metrics::describe_histogram!(
        m::RUN_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Wall time of one read model's reconciliation run."
    );
}
