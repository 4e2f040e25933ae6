//! What a run reports, and the page it may raise.

use driftless_domain::reconcile::{RunVerdict, Transition};
use driftless_domain::{PromotionState, ReconcileMode, RunSummary, SampleKey, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The most drifted keys a [`ReadModelReport`] lists (the counts are always complete).
pub const MAX_REPORTED_DRIFTS: usize = 1_000;
/// The most failed keys a [`ReadModelReport`] lists.
pub const MAX_REPORTED_FAILURES: usize = 100;
/// The most drifted keys a [`Page`] lists.
pub const MAX_PAGED_DRIFTS: usize = 10;

/// A key whose stored row differs from its replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftedKey {
    /// The key.
    pub key: SampleKey,
    /// Why it drifted, as the reconciler said.
    pub reason: String,
}

/// How a key failed to be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The reconciler returned an error.
    Error,
    /// The reconciler panicked.
    Panic,
    /// The reconciler did not answer within the per-key timeout.
    Timeout,
    /// The key was never checked (no worker left, or listing failed).
    NotChecked,
}

impl FailureKind {
    /// `"error"`, `"panic"`, `"timeout"` or `"not_checked"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::NotChecked => "not_checked",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key (or the listing of keys, `key: None`) that could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFailure {
    /// The key, or `None` when listing the keys failed.
    pub key: Option<SampleKey>,
    /// How it failed.
    pub kind: FailureKind,
    /// Why.
    pub reason: String,
}

/// Why a run did nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SkipReason {
    /// Another run holds the reconciliation lease until `until`.
    LeaseHeld {
        /// The owner named by the lease.
        owner: String,
        /// When the lease expires unless renewed.
        until: Timestamp,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LeaseHeld { owner, until } => {
                write!(f, "another reconciliation run, owned by {owner}, holds the lease until {until}")
            }
        }
    }
}

/// Why a run stopped before checking every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Interruption {
    /// The scheduler was stopped during the run.
    Cancelled,
    /// The lease expired and was taken by another run.
    LeaseLost,
}

impl fmt::Display for Interruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cancelled => "the run was cancelled because the scheduler stopped",
            Self::LeaseLost => "the run stopped because its lease was lost to another run",
        })
    }
}

/// The outcome of reconciling one read model in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReadModelReport {
    /// The read model.
    pub read_model: String,
    /// Sampled or full.
    pub mode: ReconcileMode,
    /// Keys checked to a verdict (errors excluded).
    pub sampled: u64,
    /// Keys found drifted.
    pub drifted: u64,
    /// Keys that could not be checked (errors, panics, timeouts; 1 for a failed listing).
    pub errors: u64,
    /// `drifted / sampled` (0 when nothing was checked).
    pub drift_ratio: f64,
    /// Whether the drift breached the policy.
    pub breach: bool,
    /// What the run says about the read model.
    pub verdict: RunVerdict,
    /// The promotion state after the run.
    pub state: PromotionState,
    /// The state change this run caused, if any.
    pub transition: Option<Transition>,
    /// Whether the pager was called.
    pub paged: bool,
    /// The drifted keys with reasons, in the order the reconciler listed them, at most
    /// [`MAX_REPORTED_DRIFTS`].
    pub drifted_keys: Vec<DriftedKey>,
    /// The failed keys, at most [`MAX_REPORTED_FAILURES`].
    pub failures: Vec<KeyFailure>,
    /// Wall time of the run in milliseconds.
    pub duration_ms: u64,
    /// Set when the run stopped early; such a run is not recorded in the read model's
    /// health (it neither promotes nor pages).
    pub interrupted: Option<Interruption>,
}

impl ReadModelReport {
    /// The run's counts as the domain's [`RunSummary`].
    #[must_use]
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            read_model: self.read_model.clone(),
            mode: self.mode,
            sampled: self.sampled,
            drifted: self.drifted,
            errors: self.errors,
        }
    }
}

/// The outcome of one reconciliation run (one mode, one or all read models).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunReport {
    /// Sampled or full.
    pub mode: ReconcileMode,
    /// The cadence slot the run is for (unix ms), `None` for a manual run without one.
    pub slot: Option<u64>,
    /// When the run started, by the harness's clock.
    pub started_at: Timestamp,
    /// Set when the run did nothing, and why.
    pub skipped: Option<SkipReason>,
    /// Set when the run stopped before reconciling every read model.
    pub interrupted: Option<Interruption>,
    /// One report per read model reconciled, in registry order.
    pub read_models: Vec<ReadModelReport>,
}

impl RunReport {
    pub(crate) fn new(mode: ReconcileMode, slot: Option<u64>, started_at: Timestamp) -> Self {
        Self { mode, slot, started_at, skipped: None, interrupted: None, read_models: Vec::new() }
    }

    /// Whether the run was skipped (see [`Self::skipped`]).
    #[must_use]
    pub fn is_skipped(&self) -> bool {
        self.skipped.is_some()
    }

    /// The report of `read_model`, if it was reconciled.
    #[must_use]
    pub fn read_model(&self, read_model: &str) -> Option<&ReadModelReport> {
        self.read_models.iter().find(|r| r.read_model == read_model)
    }
}

/// An alert raised when a read model has breached the drift policy
/// [`PromotionPolicy::page_after_breaches`](driftless_domain::PromotionPolicy) times in a
/// row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Page {
    /// The read model.
    pub read_model: String,
    /// The mode of the run that paged.
    pub mode: ReconcileMode,
    /// When, by the harness's clock.
    pub at: Timestamp,
    /// The promotion state after the run.
    pub state: PromotionState,
    /// The state change of the run (promoted → demoted when it demoted the model).
    pub transition: Option<Transition>,
    /// Breaching runs in a row.
    pub consecutive_breaches: u32,
    /// The counts of the run that paged.
    pub summary: RunSummary,
    /// The breach threshold in parts per million.
    pub breach_ppm: u64,
    /// The first drifted keys, at most [`MAX_PAGED_DRIFTS`].
    pub drifted_keys: Vec<DriftedKey>,
}

impl fmt::Display for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the read model {} drifted beyond {:.3} % in {} runs in a row: {} of {} keys ({:.3} %) in the latest {} run",
            self.read_model,
            self.breach_ppm as f64 / 10_000.0,
            self.consecutive_breaches,
            self.summary.drifted,
            self.summary.sampled,
            self.summary.drift_ratio() * 100.0,
            self.mode,
        )?;
        if self.transition.is_some_and(|t| t.to == PromotionState::Demoted) {
            f.write_str("; it is demoted, so its queries are answered from the source of truth")?;
        } else {
            write!(f, "; it stays {}", self.state)?;
        }
        if let Some(first) = self.drifted_keys.first() {
            write!(f, "; e.g. {}: {}", first.key, first.reason)?;
        }
        Ok(())
    }
}

/// Where pages go (an on-call system, a log, a test's channel).
pub trait Pager: Send + Sync + 'static {
    /// Raises `alert`. Called from the thread running the reconciliation; a panic is caught
    /// and logged.
    fn page(&self, alert: &Page);
}

/// The default [`Pager`]: logs the page at error level with `tracing`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogPager;

impl Pager for LogPager {
    fn page(&self, alert: &Page) {
        tracing::error!(
            read_model = %alert.read_model,
            mode = %alert.mode,
            state = %alert.state,
            drifted = alert.summary.drifted,
            sampled = alert.summary.sampled,
            "PAGE: {alert}"
        );
    }
}
