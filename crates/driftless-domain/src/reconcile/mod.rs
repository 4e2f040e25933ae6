//! Reconciliation policy: which keys to re-check, when a run counts as drift, when to page,
//! when a read model is promoted or demoted, and when runs are due.
//!
//! Everything here is pure: no I/O, no threads, no wall clock. The reconciler feeds it
//! numbers (populations, counts, unix milliseconds) and persists what it returns.
//!
//! * [`sampling`](SamplingPolicy): how many keys a run checks ([`sample_size`]) and which
//!   ones ([`choose_sample`], [`choose_indices`]), reproducibly from a seed ([`sample_seed`]).
//! * [`DriftPolicy`]: whether a [`RunSummary`] is a breach (more than 0.1 % drift by
//!   default), in exact integer arithmetic.
//! * [`ReadModelHealth`]: the persisted promotion state machine
//!   (shadow → promoted → demoted → shadow) and when to page.
//! * [`Cadence`]: the UTC schedules of sampled and full runs, and [`due_slot`], which runs a
//!   slot missed while the machine slept once, and never runs a slot twice.
//! * [`metric_names`]: the names of the reconciler's metrics.
//!
//! ```
//! use driftless_domain::reconcile::{
//!     choose_sample, DriftPolicy, PromotionPolicy, ReadModelHealth, ReconcileMode, RunSummary,
//! };
//!
//! let keys: Vec<String> = (0..5_000).map(|i| format!("listing-{i}")).collect();
//! let sample = choose_sample(keys, ReconcileMode::Sampled, usize::MAX, 42);
//! assert_eq!(sample.len(), 50); // 1 % of 5 000
//!
//! let mut summary = RunSummary::new("listing_card", ReconcileMode::Sampled);
//! summary.sampled = 1_000;
//! summary.drifted = 1; // exactly 0.1 %: not a breach
//! assert!(!DriftPolicy::default().is_breach(&summary));
//!
//! let mut health = ReadModelHealth::new();
//! for _ in 0..3 {
//!     health.observe(false, &PromotionPolicy::default());
//! }
//! assert_eq!(health.state.as_str(), "promoted");
//! ```

mod cadence;
mod drift;
mod promotion;
mod sampling;

pub use cadence::{
    due_slot, initial_marker, Cadence, Weekday, DAY_MILLIS, HOUR_MILLIS, MINUTE_MILLIS, WEEK_MILLIS,
};
pub use drift::{DriftPolicy, RunSummary, RunVerdict, DEFAULT_BREACH_PPM, PPM};
pub use promotion::{
    LastRun, Observation, PromotionPolicy, PromotionState, ReadModelHealth, Transition,
    DEFAULT_PAGE_AFTER_BREACHES, DEFAULT_PROMOTE_AFTER_CLEAN_RUNS,
};
pub use sampling::{
    choose_indices, choose_sample, sample_seed, sample_size, SamplingPolicy, DEFAULT_FLOOR,
    DEFAULT_FRACTION_PPM,
};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The key of one read-model row, as the reconciler displays and samples it.
pub type SampleKey = String;

/// Why a reconciliation setting or stored value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// The text is not a [`ReconcileMode`].
    #[error("{input:?} is not a reconcile mode: expected \"sampled\" or \"full\"")]
    UnknownMode {
        /// The text given.
        input: String,
    },
    /// The text is not a [`PromotionState`].
    #[error("{input:?} is not a promotion state: expected \"shadow\", \"promoted\" or \"demoted\"")]
    UnknownState {
        /// The text given.
        input: String,
    },
    /// The text is not a [`Weekday`].
    #[error("{input:?} is not a weekday: expected mon, tue, wed, thu, fri, sat or sun")]
    UnknownWeekday {
        /// The text given.
        input: String,
    },
    /// A cadence hour was 24 or more.
    #[error("hour {hour} is out of range: a cadence hour is 0 to 23 (UTC)")]
    HourOutOfRange {
        /// The hour given.
        hour: u8,
    },
    /// A cadence minute was 60 or more.
    #[error("minute {minute} is out of range: a cadence minute is 0 to 59")]
    MinuteOutOfRange {
        /// The minute given.
        minute: u8,
    },
    /// The text does not have the shape of a cadence.
    #[error("{input:?} is not a cadence ({problem}): expected \"daily@HH:MM\" or \"weekly@DAY@HH:MM\", UTC")]
    MalformedCadence {
        /// The text given.
        input: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// How a reconciliation run picks the keys it re-checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconcileMode {
    /// A seeded random sample: 1 % of the keys, at least 20 (see [`SamplingPolicy`]).
    Sampled,
    /// Every key (up to the run's budget).
    Full,
}

impl ReconcileMode {
    /// `"sampled"` or `"full"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sampled => "sampled",
            Self::Full => "full",
        }
    }
}

impl fmt::Display for ReconcileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReconcileMode {
    type Err = ReconcileError;

    /// Reads `"sampled"` or `"full"`, ignoring ASCII case and surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("sampled") {
            Ok(Self::Sampled)
        } else if t.eq_ignore_ascii_case("full") {
            Ok(Self::Full)
        } else {
            Err(ReconcileError::UnknownMode { input: s.to_owned() })
        }
    }
}

/// The outcome of re-checking one key: the stored row against the row a replay produces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReconcileResult {
    /// The key checked.
    pub key: SampleKey,
    /// Whether the stored row equals the replayed one.
    pub in_sync: bool,
    /// Why the key drifted (`None` when in sync).
    pub reason: Option<String>,
}

impl ReconcileResult {
    /// The key's stored row matches its replay.
    #[must_use]
    pub fn in_sync(key: impl Into<SampleKey>) -> Self {
        Self { key: key.into(), in_sync: true, reason: None }
    }

    /// The key's stored row differs from its replay, for `reason` (e.g. "missing row",
    /// "field price differs").
    #[must_use]
    pub fn drifted(key: impl Into<SampleKey>, reason: impl Into<String>) -> Self {
        Self { key: key.into(), in_sync: false, reason: Some(reason.into()) }
    }

    /// Whether the key drifted.
    #[must_use]
    pub const fn is_drifted(&self) -> bool {
        !self.in_sync
    }
}

/// Every reconciliation setting in one place, with the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconcilePolicy {
    /// How many keys a sampled run checks.
    pub sampling: SamplingPolicy,
    /// When a run is a breach.
    pub drift: DriftPolicy,
    /// When a read model is promoted, and when to page.
    pub promotion: PromotionPolicy,
    /// When sampled runs are due (default daily at 03:17 UTC).
    pub sampled_cadence: Cadence,
    /// When full runs are due (default weekly on Sunday at 04:30 UTC).
    pub full_cadence: Cadence,
}

impl ReconcilePolicy {
    /// The cadence of runs in `mode`.
    #[must_use]
    pub const fn cadence(&self, mode: ReconcileMode) -> &Cadence {
        match mode {
            ReconcileMode::Sampled => &self.sampled_cadence,
            ReconcileMode::Full => &self.full_cadence,
        }
    }
}

impl Default for ReconcilePolicy {
    fn default() -> Self {
        Self {
            sampling: SamplingPolicy::default(),
            drift: DriftPolicy::default(),
            promotion: PromotionPolicy::default(),
            sampled_cadence: Cadence::DEFAULT_SAMPLED,
            full_cadence: Cadence::DEFAULT_FULL,
        }
    }
}

/// The names of the reconciler's metrics (Prometheus style), and of their labels.
pub mod metric_names {
    /// Counter: keys re-checked, labelled by [`LABEL_READ_MODEL`] and [`LABEL_MODE`].
    pub const SAMPLES_TOTAL: &str = "driftless_reconcile_samples_total";
    /// Counter: keys found drifted, labelled by [`LABEL_READ_MODEL`] and [`LABEL_MODE`].
    pub const DRIFT_TOTAL: &str = "driftless_reconcile_drift_total";
    /// Counter: runs whose drift ratio breached the policy, labelled by [`LABEL_READ_MODEL`].
    pub const BREACHES_TOTAL: &str = "driftless_reconcile_breaches_total";
    /// Counter: promotion-state transitions, labelled by [`LABEL_READ_MODEL`] and [`LABEL_TO`].
    pub const PROMOTIONS_TOTAL: &str = "driftless_reconcile_promotions_total";
    /// Counter: keys that could not be checked, labelled by [`LABEL_READ_MODEL`].
    pub const ERRORS_TOTAL: &str = "driftless_reconcile_errors_total";
    /// Histogram: wall time of one run in seconds, labelled by [`LABEL_READ_MODEL`] and
    /// [`LABEL_MODE`].
    pub const RUN_DURATION_SECONDS: &str = "driftless_reconcile_run_duration_seconds";

    /// Label: the read model's name.
    pub const LABEL_READ_MODEL: &str = "read_model";
    /// Label: the run's mode, [`super::ReconcileMode::as_str`].
    pub const LABEL_MODE: &str = "mode";
    /// Label: the state a transition went to, [`super::PromotionState::as_str`].
    pub const LABEL_TO: &str = "to";

    /// Every metric name above.
    pub const ALL: [&str; 6] =
        [SAMPLES_TOTAL, DRIFT_TOTAL, BREACHES_TOTAL, PROMOTIONS_TOTAL, ERRORS_TOTAL, RUN_DURATION_SECONDS];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_and_print_as_their_names() -> Result<(), ReconcileError> {
        for (text, mode) in [
            ("sampled", ReconcileMode::Sampled),
            ("full", ReconcileMode::Full),
            ("  Full ", ReconcileMode::Full),
            ("SAMPLED", ReconcileMode::Sampled),
        ] {
            assert_eq!(text.parse::<ReconcileMode>()?, mode, "{text:?}");
        }
        for mode in [ReconcileMode::Sampled, ReconcileMode::Full] {
            assert_eq!(mode.as_str().parse::<ReconcileMode>()?, mode);
            assert_eq!(mode.to_string(), mode.as_str());
        }
        for bad in ["", "sample", "fulll", "random"] {
            assert_eq!(
                bad.parse::<ReconcileMode>(),
                Err(ReconcileError::UnknownMode { input: bad.to_owned() })
            );
        }
        Ok(())
    }

    #[test]
    fn results_say_whether_the_key_drifted() {
        let ok = ReconcileResult::in_sync("k1");
        assert_eq!(ok, ReconcileResult { key: "k1".into(), in_sync: true, reason: None });
        assert!(!ok.is_drifted());
        let bad = ReconcileResult::drifted("k2", "missing row");
        assert_eq!(bad.reason.as_deref(), Some("missing row"));
        assert!(!bad.in_sync);
        assert!(bad.is_drifted());
    }

    #[test]
    fn metric_names_are_distinct_and_prefixed() {
        let mut names = metric_names::ALL.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), metric_names::ALL.len());
        for name in metric_names::ALL {
            assert!(name.starts_with("driftless_reconcile_"), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
        }
        assert_eq!(metric_names::SAMPLES_TOTAL, "driftless_reconcile_samples_total");
        assert_eq!(metric_names::RUN_DURATION_SECONDS, "driftless_reconcile_run_duration_seconds");
    }

    #[test]
    fn the_default_policy_has_the_documented_values() {
        let p = ReconcilePolicy::default();
        assert_eq!(p.sampling, SamplingPolicy { fraction_ppm: 10_000, floor: 20 });
        assert_eq!(p.drift.breach_ppm, 1_000);
        assert_eq!(p.promotion, PromotionPolicy { promote_after_clean_runs: 3, page_after_breaches: 2 });
        assert_eq!(p.cadence(ReconcileMode::Sampled).to_string(), "daily@03:17");
        assert_eq!(p.cadence(ReconcileMode::Full).to_string(), "weekly@sun@04:30");
    }

    #[test]
    fn the_policy_round_trips_through_the_codec() -> Result<(), crate::codec::CodecError> {
        let p = ReconcilePolicy::default();
        let bytes = crate::codec::encode(&p)?;
        assert_eq!(crate::codec::decode::<ReconcilePolicy>(&bytes)?, p);
        Ok(())
    }

    #[test]
    fn errors_read_as_sentences() {
        let e = ReconcileError::HourOutOfRange { hour: 24 };
        assert_eq!(e.to_string(), "hour 24 is out of range: a cadence hour is 0 to 23 (UTC)");
        let e = ReconcileError::UnknownMode { input: "x".into() };
        assert_eq!(e.to_string(), "\"x\" is not a reconcile mode: expected \"sampled\" or \"full\"");
    }
}
