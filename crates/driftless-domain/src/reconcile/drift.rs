//! When a run's drift is a breach.

use super::{ReconcileMode, ReconcileResult};
use serde::{Deserialize, Serialize};

/// Parts per million in one: the unit of [`DriftPolicy::breach_ppm`].
pub const PPM: u64 = 1_000_000;
/// The default breach threshold: 1 000 parts per million, i.e. 0.1 %.
pub const DEFAULT_BREACH_PPM: u64 = 1_000;

/// When the drift of a run is a breach.
///
/// A run breaches when its drift ratio is *strictly greater* than the threshold: with the
/// default 0.1 %, 1 drifted key in 1 000 is not a breach and 2 in 1 000 are. The comparison
/// is `drifted × 1 000 000 > sampled × breach_ppm` in 128-bit integers, so it is exact and
/// cannot overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DriftPolicy {
    /// The largest drift ratio that is not a breach, in parts per million (1 000 = 0.1 %).
    pub breach_ppm: u64,
}

impl DriftPolicy {
    /// A breach above 0.1 % drift.
    pub const DEFAULT: Self = Self { breach_ppm: DEFAULT_BREACH_PPM };

    /// The threshold as a ratio (0.001 for the default), for display.
    #[must_use]
    pub fn breach_ratio(&self) -> f64 {
        self.breach_ppm as f64 / PPM as f64
    }

    /// Whether the run's drift ratio is strictly greater than the threshold. A run that
    /// checked no key is never a breach.
    #[must_use]
    pub fn is_breach(&self, summary: &RunSummary) -> bool {
        summary.sampled != 0
            && u128::from(summary.drifted) * u128::from(PPM)
                > u128::from(summary.sampled) * u128::from(self.breach_ppm)
    }

    /// What the run says about the read model: a breach (whatever its errors), otherwise
    /// inconclusive when any key could not be checked, otherwise clean.
    #[must_use]
    pub fn assess(&self, summary: &RunSummary) -> RunVerdict {
        if self.is_breach(summary) {
            RunVerdict::Breach
        } else if summary.errors > 0 {
            RunVerdict::Inconclusive
        } else {
            RunVerdict::Clean
        }
    }
}

impl Default for DriftPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a run says about a read model; see [`DriftPolicy::assess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunVerdict {
    /// Drift within the threshold and every key checked: counts towards promotion.
    Clean,
    /// Drift above the threshold: counts towards paging and demotion.
    Breach,
    /// No breach, but some keys could not be checked: counts neither way
    /// ([`super::ReadModelHealth::record_run`] leaves the streaks alone).
    Inconclusive,
}

impl RunVerdict {
    /// `"clean"`, `"breach"` or `"inconclusive"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Breach => "breach",
            Self::Inconclusive => "inconclusive",
        }
    }
}

/// The counts of one reconciliation run of one read model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunSummary {
    /// The read model checked.
    pub read_model: String,
    /// Sampled or full.
    pub mode: ReconcileMode,
    /// Keys checked to a verdict (in sync or drifted); errors are not included.
    pub sampled: u64,
    /// Keys found drifted (at most `sampled`).
    pub drifted: u64,
    /// Keys that could not be checked (e.g. the replay failed).
    pub errors: u64,
}

impl RunSummary {
    /// A summary of nothing checked yet.
    #[must_use]
    pub fn new(read_model: impl Into<String>, mode: ReconcileMode) -> Self {
        Self { read_model: read_model.into(), mode, sampled: 0, drifted: 0, errors: 0 }
    }

    /// Counts one checked key.
    pub fn record(&mut self, result: &ReconcileResult) {
        self.sampled = self.sampled.saturating_add(1);
        if result.is_drifted() {
            self.drifted = self.drifted.saturating_add(1);
        }
    }

    /// Counts one key that could not be checked.
    pub fn record_error(&mut self) {
        self.errors = self.errors.saturating_add(1);
    }

    /// A summary of `results`, plus `errors` keys that could not be checked.
    #[must_use]
    pub fn tally<'a>(
        read_model: impl Into<String>,
        mode: ReconcileMode,
        results: impl IntoIterator<Item = &'a ReconcileResult>,
        errors: u64,
    ) -> Self {
        let mut summary = Self::new(read_model, mode);
        for result in results {
            summary.record(result);
        }
        summary.errors = errors;
        summary
    }

    /// `drifted / sampled`, or 0.0 when nothing was checked. For display and gauges; the
    /// breach decision ([`DriftPolicy::is_breach`]) uses exact integers instead.
    #[must_use]
    pub fn drift_ratio(&self) -> f64 {
        if self.sampled == 0 {
            0.0
        } else {
            self.drifted as f64 / self.sampled as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn summary(sampled: u64, drifted: u64) -> RunSummary {
        RunSummary {
            read_model: "listing_card".into(),
            mode: ReconcileMode::Sampled,
            sampled,
            drifted,
            errors: 0,
        }
    }

    #[test]
    fn the_default_threshold_is_strictly_more_than_a_tenth_of_a_percent() {
        // (sampled, drifted, breach)
        let cases = [
            (1_000, 0, false),
            (1_000, 1, false),
            (1_000, 2, true),
            (999, 1, true),
            (1_001, 1, false),
            (2_000, 2, false),
            (2_000, 3, true),
            (0, 0, false),
            (1, 0, false),
            (1, 1, true),
            (20, 1, true),
            (1_000_000, 1_000, false),
            (1_000_000, 1_001, true),
            (u64::MAX, 0, false),
            (u64::MAX, u64::MAX / 1_000, false),
            (u64::MAX, u64::MAX / 1_000 + 1, true),
            (u64::MAX, u64::MAX, true),
        ];
        let policy = DriftPolicy::default();
        for (sampled, drifted, breach) in cases {
            assert_eq!(policy.is_breach(&summary(sampled, drifted)), breach, "{drifted} of {sampled}");
        }
    }

    #[test]
    fn other_thresholds() {
        let zero = DriftPolicy { breach_ppm: 0 };
        assert!(!zero.is_breach(&summary(1_000, 0)));
        assert!(zero.is_breach(&summary(1_000_000, 1)));
        let one_percent = DriftPolicy { breach_ppm: 10_000 };
        assert!(!one_percent.is_breach(&summary(100, 1)));
        assert!(one_percent.is_breach(&summary(100, 2)));
        let never = DriftPolicy { breach_ppm: PPM };
        assert!(!never.is_breach(&summary(10, 10)));
        let huge = DriftPolicy { breach_ppm: u64::MAX };
        assert!(!huge.is_breach(&summary(u64::MAX, u64::MAX)));
    }

    #[test]
    fn nothing_checked_is_no_breach_and_zero_drift() {
        let empty = summary(0, 0);
        assert_eq!(empty.drift_ratio(), 0.0);
        assert!(!DriftPolicy::default().is_breach(&empty));
        assert_eq!(DriftPolicy::default().assess(&empty), RunVerdict::Clean);
    }

    #[test]
    fn drift_ratio_is_drifted_over_sampled() {
        assert_eq!(summary(1_000, 1).drift_ratio(), 0.001);
        assert_eq!(summary(4, 1).drift_ratio(), 0.25);
        assert_eq!(summary(7, 7).drift_ratio(), 1.0);
        assert_eq!(DriftPolicy::default().breach_ratio(), 0.001);
    }

    #[test]
    fn verdicts_weigh_breaches_before_errors() {
        let policy = DriftPolicy::default();
        let mut s = summary(1_000, 1);
        assert_eq!(policy.assess(&s), RunVerdict::Clean);
        s.errors = 1;
        assert_eq!(policy.assess(&s), RunVerdict::Inconclusive);
        s.drifted = 5;
        assert_eq!(policy.assess(&s), RunVerdict::Breach);
        let all_errors = RunSummary { errors: 30, ..summary(0, 0) };
        assert_eq!(policy.assess(&all_errors), RunVerdict::Inconclusive);
        assert_eq!(RunVerdict::Inconclusive.as_str(), "inconclusive");
    }

    #[test]
    fn summaries_count_results() {
        let results = [
            ReconcileResult::in_sync("a"),
            ReconcileResult::drifted("b", "price differs"),
            ReconcileResult::in_sync("c"),
        ];
        let s = RunSummary::tally("listing_card", ReconcileMode::Full, &results, 2);
        assert_eq!(
            s,
            RunSummary {
                read_model: "listing_card".into(),
                mode: ReconcileMode::Full,
                sampled: 3,
                drifted: 1,
                errors: 2
            }
        );
        let mut by_hand = RunSummary::new("listing_card", ReconcileMode::Full);
        for r in &results {
            by_hand.record(r);
        }
        by_hand.record_error();
        by_hand.record_error();
        assert_eq!(by_hand, s);
    }

    proptest! {
        #[test]
        fn integer_decision_agrees_with_floats_away_from_the_edge(sampled in 1u64..10_000_000, drifted in 0u64..20_000, ppm in 0u64..2_000_000) {
            let policy = DriftPolicy { breach_ppm: ppm };
            let ratio = drifted as f64 / sampled as f64;
            let threshold = ppm as f64 / 1e6;
            if (ratio - threshold).abs() > 1e-9 {
                prop_assert_eq!(policy.is_breach(&summary(sampled, drifted)), ratio > threshold);
            }
        }

        #[test]
        fn more_drift_never_undoes_a_breach(sampled in 1u64..1_000_000, drifted in 0u64..1_000_000, ppm in 0u64..1_000_000) {
            let policy = DriftPolicy { breach_ppm: ppm };
            if policy.is_breach(&summary(sampled, drifted)) {
                prop_assert!(policy.is_breach(&summary(sampled, drifted + 1)));
            }
            if !policy.is_breach(&summary(sampled, drifted)) {
                prop_assert!(!policy.is_breach(&summary(sampled + 1, drifted)));
            }
        }
    }
}
