//! The reconciler port: what the harness asks of each read model, and a closure adapter.

use driftless_domain::{CodecError, ReconcileMode, ReconcileResult, SampleKey};
use driftless_storage::ReadError;
use std::fmt;

/// Re-checks one read model against its source of truth. Read-only.
///
/// The harness calls [`Self::list_sample_keys`] once per run, draws the keys to check, and
/// calls [`Self::reconcile`] for each of them from its worker threads (so both must be
/// callable concurrently). A key whose row differs from its replay is a *drift*, reported
/// as an `Ok` [`ReconcileResult::drifted`]; a key that cannot be checked is an `Err`, which
/// the harness counts apart from drift and which never ends the run. A panic in either
/// method is caught and counted as an error; a [`Self::reconcile`] call that outlives the
/// harness's per-key timeout is counted as an error and abandoned (see
/// [`crate::ReconcileHarness`]).
pub trait Reconciler: Send + Sync + 'static {
    /// The read model's name (unique among the harness's reconcilers).
    fn read_model(&self) -> &str;

    /// The keys of the read model, in a stable order, distinct, at most `sample_budget` of
    /// them.
    ///
    /// * In [`ReconcileMode::Full`] the harness passes the run's sample budget: return the
    ///   whole population, cut to that many keys.
    /// * In [`ReconcileMode::Sampled`] the harness passes its population limit (at least the
    ///   budget) and draws the sample itself with
    ///   [`SamplingPolicy::choose_sample`](driftless_domain::SamplingPolicy::choose_sample):
    ///   return the whole population up to that many keys, so that the draw is uniform.
    ///
    /// # Errors
    /// [`ReconcileFailure`] when the keys cannot be listed; the run of this read model then
    /// checks nothing and counts one error.
    fn list_sample_keys(
        &self,
        mode: ReconcileMode,
        sample_budget: usize,
    ) -> Result<Vec<SampleKey>, ReconcileFailure>;

    /// Compares the stored row of `key` with the row its replay produces.
    ///
    /// # Errors
    /// [`ReconcileFailure`] when the key cannot be checked (a storage failure, an
    /// undecodable event). A damaged *stored row* is drift, not an error.
    fn reconcile(&self, key: &SampleKey) -> Result<ReconcileResult, ReconcileFailure>;

    /// A session that checks several keys in a row on one worker thread, for a reconciler
    /// that can share work between them: one read snapshot and its open tables, say.
    ///
    /// The harness's workers take keys in chunks of up to 64. A worker asks for a session
    /// when it starts a chunk, checks each key of the chunk through it in turn (with the
    /// same timeout and panic handling as [`Self::reconcile`]), and drops it when the chunk
    /// is done or a check panicked; so a session holds what it keeps (a snapshot delays the
    /// reuse of the file's freed pages) for one chunk at most. The default, `None`, checks
    /// every key with [`Self::reconcile`].
    fn session(&self) -> Option<Box<dyn ReconcileSession + '_>> {
        None
    }
}

/// Checks keys for one worker thread: see [`Reconciler::session`].
pub trait ReconcileSession {
    /// As [`Reconciler::reconcile`]. Each key must be checked as consistently as there: a
    /// session may see the database as it was when the session began, but never a row and
    /// its source of truth as of two different moments.
    ///
    /// # Errors
    /// As [`Reconciler::reconcile`].
    fn reconcile(&mut self, key: &SampleKey) -> Result<ReconcileResult, ReconcileFailure>;
}

/// Why a reconciler could not list its keys or check one key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileFailure {
    /// The database could not be read.
    #[error("the reconciler could not read the database: {0}")]
    Read(#[from] ReadError),
    /// An event of the journal (the source of truth) does not decode.
    #[error("a journal event could not be decoded: {0}")]
    Codec(#[from] CodecError),
    /// An event of the journal cannot be read as a current one (its schema version has no
    /// upcaster, or it does not decode as its version's type).
    #[error("a journal event cannot be read as a current one: {0}")]
    Upcast(#[from] driftless_domain::UpcastError),
    /// The database keeps no journal, so there is nothing to replay.
    #[error("the database keeps no journal, so the read model cannot be replayed")]
    NoJournal,
    /// Any other failure, described by its message.
    #[error("the reconciler failed: {message}")]
    Other {
        /// What went wrong.
        message: String,
    },
}

impl ReconcileFailure {
    /// A failure described by `message`.
    #[must_use]
    pub fn other(message: impl Into<String>) -> Self {
        Self::Other { message: message.into() }
    }
}

type ListFn = dyn Fn(ReconcileMode, usize) -> Result<Vec<SampleKey>, ReconcileFailure> + Send + Sync;
type CheckFn = dyn Fn(&SampleKey) -> Result<ReconcileResult, ReconcileFailure> + Send + Sync;

/// A [`Reconciler`] made of two closures, for read models with their own replay logic
/// (aggregations across aggregates, views).
///
/// ```
/// use driftless_domain::{ReconcileMode, ReconcileResult};
/// use driftless_reconciler::{FnReconciler, Reconciler};
///
/// let r = FnReconciler::new(
///     "district_stats",
///     |_mode, budget| Ok(["north", "south"].iter().take(budget).map(|s| s.to_string()).collect()),
///     |key| Ok(ReconcileResult::in_sync(key.clone())),
/// );
/// assert_eq!(r.read_model(), "district_stats");
/// assert_eq!(r.list_sample_keys(ReconcileMode::Full, 1)?, vec!["north".to_string()]);
/// # Ok::<(), driftless_reconciler::ReconcileFailure>(())
/// ```
pub struct FnReconciler {
    name: String,
    list: Box<ListFn>,
    check: Box<CheckFn>,
}

impl FnReconciler {
    /// A reconciler of `read_model` that lists keys with `list` (see
    /// [`Reconciler::list_sample_keys`]) and checks one with `check`.
    #[must_use]
    pub fn new(
        read_model: impl Into<String>,
        list: impl Fn(ReconcileMode, usize) -> Result<Vec<SampleKey>, ReconcileFailure> + Send + Sync + 'static,
        check: impl Fn(&SampleKey) -> Result<ReconcileResult, ReconcileFailure> + Send + Sync + 'static,
    ) -> Self {
        Self { name: read_model.into(), list: Box::new(list), check: Box::new(check) }
    }
}

impl fmt::Debug for FnReconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnReconciler").field("read_model", &self.name).finish_non_exhaustive()
    }
}

impl Reconciler for FnReconciler {
    fn read_model(&self) -> &str {
        &self.name
    }

    fn list_sample_keys(
        &self,
        mode: ReconcileMode,
        sample_budget: usize,
    ) -> Result<Vec<SampleKey>, ReconcileFailure> {
        (self.list)(mode, sample_budget)
    }

    fn reconcile(&self, key: &SampleKey) -> Result<ReconcileResult, ReconcileFailure> {
        (self.check)(key)
    }
}
