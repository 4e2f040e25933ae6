//! The promotion state machine of a read model, and when to page.

use super::{DriftPolicy, ReconcileError, RunSummary, RunVerdict};
use crate::ids::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The default number of consecutive clean runs that promote a shadow read model.
pub const DEFAULT_PROMOTE_AFTER_CLEAN_RUNS: u32 = 3;
/// The default number of consecutive breaching runs that page (and demote).
pub const DEFAULT_PAGE_AFTER_BREACHES: u32 = 2;

/// Where a read model stands.
///
/// ```text
///            K clean runs in a row          N breaches in a row (pages)
///   Shadow ─────────────────────────▶ Promoted ─────────────────────────▶ Demoted
///     ▲                                                                      │
///     └──────────────────────────── rebuilt() ───────────────────────────────┘
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromotionState {
    /// New or rebuilt: reconciled, but not yet trusted.
    #[default]
    Shadow,
    /// Trusted: it passed [`PromotionPolicy::promote_after_clean_runs`] clean runs in a row.
    Promoted,
    /// Was promoted, then breached [`PromotionPolicy::page_after_breaches`] times in a row;
    /// only a rebuild ([`ReadModelHealth::rebuilt`]) brings it back (to shadow).
    Demoted,
}

impl PromotionState {
    /// `"shadow"`, `"promoted"` or `"demoted"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Shadow => "shadow",
            Self::Promoted => "promoted",
            Self::Demoted => "demoted",
        }
    }
}

impl fmt::Display for PromotionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PromotionState {
    type Err = ReconcileError;

    /// Reads `"shadow"`, `"promoted"` or `"demoted"`, ignoring ASCII case and surrounding
    /// whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        [Self::Shadow, Self::Promoted, Self::Demoted]
            .into_iter()
            .find(|state| t.eq_ignore_ascii_case(state.as_str()))
            .ok_or_else(|| ReconcileError::UnknownState { input: s.to_owned() })
    }
}

/// How many runs in a row promote, and how many page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PromotionPolicy {
    /// Consecutive clean runs that promote a shadow read model (default 3; 0 acts as 1).
    pub promote_after_clean_runs: u32,
    /// Consecutive breaching runs that page, and demote a promoted read model (default 2;
    /// 0 acts as 1).
    pub page_after_breaches: u32,
}

impl PromotionPolicy {
    /// Promote after 3 clean runs, page after 2 breaches.
    pub const DEFAULT: Self = Self {
        promote_after_clean_runs: DEFAULT_PROMOTE_AFTER_CLEAN_RUNS,
        page_after_breaches: DEFAULT_PAGE_AFTER_BREACHES,
    };

    const fn promote_threshold(&self) -> u32 {
        if self.promote_after_clean_runs == 0 {
            1
        } else {
            self.promote_after_clean_runs
        }
    }

    const fn page_threshold(&self) -> u32 {
        if self.page_after_breaches == 0 {
            1
        } else {
            self.page_after_breaches
        }
    }
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A change of promotion state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transition {
    /// The state before.
    pub from: PromotionState,
    /// The state after.
    pub to: PromotionState,
}

/// What observing one run decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Observation {
    /// Whether to page someone about this read model now.
    pub page: bool,
    /// The state change this run caused, if any.
    pub transition: Option<Transition>,
}

/// The last run observed by [`ReadModelHealth::record_run`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LastRun {
    /// When the run finished.
    pub at: Timestamp,
    /// Its counts.
    pub summary: RunSummary,
    /// What it said about the read model.
    pub verdict: RunVerdict,
}

/// The persisted reconciliation health of one read model: its promotion state and streaks.
///
/// Rules ([`Self::observe`]):
///
/// * A clean run resets the breach streak and extends the clean streak; a breach resets the
///   clean streak and extends the breach streak.
/// * Shadow → Promoted when the clean streak reaches
///   [`PromotionPolicy::promote_after_clean_runs`].
/// * A page is raised when the breach streak *reaches* [`PromotionPolicy::page_after_breaches`]
///   — once per streak, in every state (a drifting shadow model is a projector bug worth
///   knowing about too). Further breaches of the same streak do not page again; after a clean
///   run has reset the streak, reaching the threshold again pages again.
/// * Promoted → Demoted at that same moment (the run that pages).
/// * A demoted model stays demoted however many clean runs follow; only
///   [`Self::rebuilt`] takes it back to shadow, from where it must earn promotion again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReadModelHealth {
    /// Where the read model stands.
    pub state: PromotionState,
    /// Clean runs in a row, up to the latest.
    pub consecutive_clean: u32,
    /// Breaching runs in a row, up to the latest.
    pub consecutive_breaches: u32,
    /// The latest run recorded with [`Self::record_run`].
    pub last_run: Option<LastRun>,
}

impl ReadModelHealth {
    /// A shadow read model with no runs.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one run's outcome (`breach` or clean) to the streaks and the state.
    pub fn observe(&mut self, breach: bool, policy: &PromotionPolicy) -> Observation {
        if breach {
            let before = self.consecutive_breaches;
            self.consecutive_clean = 0;
            self.consecutive_breaches = before.saturating_add(1);
            let threshold = policy.page_threshold();
            let reached = self.consecutive_breaches >= threshold;
            let demote = reached && self.state == PromotionState::Promoted;
            let transition = if demote { self.move_to(PromotionState::Demoted) } else { None };
            // `demote` also pages when the threshold was lowered in the middle of a streak.
            Observation { page: (reached && before < threshold) || demote, transition }
        } else {
            self.consecutive_breaches = 0;
            self.consecutive_clean = self.consecutive_clean.saturating_add(1);
            let promote =
                self.state == PromotionState::Shadow && self.consecutive_clean >= policy.promote_threshold();
            let transition = if promote { self.move_to(PromotionState::Promoted) } else { None };
            Observation { page: false, transition }
        }
    }

    /// Records a finished run: assesses it with `drift`, stores it as [`Self::last_run`],
    /// and observes it — a [`RunVerdict::Clean`] run as clean, a [`RunVerdict::Breach`] as a
    /// breach. An [`RunVerdict::Inconclusive`] run leaves streaks and state alone (it
    /// neither promotes nor pages).
    pub fn record_run(
        &mut self,
        at: Timestamp,
        summary: RunSummary,
        drift: &DriftPolicy,
        promotion: &PromotionPolicy,
    ) -> Observation {
        let verdict = drift.assess(&summary);
        self.last_run = Some(LastRun { at, summary, verdict });
        match verdict {
            RunVerdict::Clean => self.observe(false, promotion),
            RunVerdict::Breach => self.observe(true, promotion),
            RunVerdict::Inconclusive => Observation::default(),
        }
    }

    /// The read model was rebuilt from the journal: both streaks restart from zero, and a
    /// demoted model goes back to shadow (the returned transition). A shadow or promoted
    /// model keeps its state.
    pub fn rebuilt(&mut self) -> Option<Transition> {
        self.consecutive_clean = 0;
        self.consecutive_breaches = 0;
        if self.state == PromotionState::Demoted {
            self.move_to(PromotionState::Shadow)
        } else {
            None
        }
    }

    fn move_to(&mut self, to: PromotionState) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        (from != to).then_some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::ReconcileMode;
    use PromotionState::{Demoted, Promoted, Shadow};

    const POLICY: PromotionPolicy = PromotionPolicy::DEFAULT;

    fn t(from: PromotionState, to: PromotionState) -> Option<Transition> {
        Some(Transition { from, to })
    }

    /// Plays `script` ('c' clean, 'b' breach, 'r' rebuilt) from `start`, checking after each
    /// step the state, whether it paged and the transition.
    fn play(
        start: ReadModelHealth,
        script: &[(char, PromotionState, bool, Option<Transition>)],
    ) -> ReadModelHealth {
        let mut h = start;
        for (step, &(what, state, page, transition)) in script.iter().enumerate() {
            let got = match what {
                'c' => h.observe(false, &POLICY),
                'b' => h.observe(true, &POLICY),
                _ => Observation { page: false, transition: h.rebuilt() },
            };
            assert_eq!(got, Observation { page, transition }, "step {step} ({what})");
            assert_eq!(h.state, state, "state after step {step} ({what})");
        }
        h
    }

    fn promoted() -> ReadModelHealth {
        let mut h = ReadModelHealth::new();
        for _ in 0..3 {
            h.observe(false, &POLICY);
        }
        assert_eq!(h.state, Promoted);
        h
    }

    fn demoted() -> ReadModelHealth {
        let mut h = promoted();
        h.observe(true, &POLICY);
        h.observe(true, &POLICY);
        assert_eq!(h.state, Demoted);
        h
    }

    #[test]
    fn three_clean_runs_promote_a_shadow_model() {
        let h = play(
            ReadModelHealth::new(),
            &[
                ('c', Shadow, false, None),
                ('c', Shadow, false, None),
                ('c', Promoted, false, t(Shadow, Promoted)),
            ],
        );
        assert_eq!((h.consecutive_clean, h.consecutive_breaches), (3, 0));
        // Further clean runs change nothing.
        play(h, &[('c', Promoted, false, None), ('c', Promoted, false, None)]);
    }

    #[test]
    fn a_breach_restarts_the_clean_streak() {
        let h = play(
            ReadModelHealth::new(),
            &[
                ('c', Shadow, false, None),
                ('c', Shadow, false, None),
                ('b', Shadow, false, None),
                ('c', Shadow, false, None),
                ('c', Shadow, false, None),
                ('c', Promoted, false, t(Shadow, Promoted)),
            ],
        );
        assert_eq!(h.consecutive_clean, 3);
    }

    #[test]
    fn the_second_breach_in_a_row_pages_and_demotes() {
        let h = play(promoted(), &[('b', Promoted, false, None), ('b', Demoted, true, t(Promoted, Demoted))]);
        assert_eq!((h.consecutive_clean, h.consecutive_breaches), (0, 2));
    }

    #[test]
    fn a_clean_run_between_breaches_restarts_the_breach_streak() {
        let h = play(
            promoted(),
            &[
                ('b', Promoted, false, None),
                ('c', Promoted, false, None),
                ('b', Promoted, false, None),
                ('c', Promoted, false, None),
                ('b', Promoted, false, None),
                ('b', Demoted, true, t(Promoted, Demoted)),
            ],
        );
        assert_eq!(h.consecutive_breaches, 2);
    }

    #[test]
    fn a_streak_pages_once_and_pages_again_after_a_reset() {
        play(
            demoted(),
            &[
                ('b', Demoted, false, None),
                ('b', Demoted, false, None),
                ('c', Demoted, false, None),
                ('b', Demoted, false, None),
                ('b', Demoted, true, None),
                ('b', Demoted, false, None),
            ],
        );
    }

    #[test]
    fn a_drifting_shadow_model_pages_but_is_not_demoted() {
        play(
            ReadModelHealth::new(),
            &[('b', Shadow, false, None), ('b', Shadow, true, None), ('b', Shadow, false, None)],
        );
    }

    #[test]
    fn a_demoted_model_needs_a_rebuild_before_it_can_be_promoted_again() {
        let h = play(
            demoted(),
            &[
                ('c', Demoted, false, None),
                ('c', Demoted, false, None),
                ('c', Demoted, false, None),
                ('c', Demoted, false, None),
                ('r', Shadow, false, t(Demoted, Shadow)),
            ],
        );
        assert_eq!((h.consecutive_clean, h.consecutive_breaches), (0, 0));
        play(
            h,
            &[
                ('c', Shadow, false, None),
                ('c', Shadow, false, None),
                ('c', Promoted, false, t(Shadow, Promoted)),
            ],
        );
    }

    #[test]
    fn rebuilding_a_shadow_or_promoted_model_only_resets_streaks() {
        let mut h = ReadModelHealth::new();
        h.observe(false, &POLICY);
        h.observe(false, &POLICY);
        assert_eq!(h.rebuilt(), None);
        assert_eq!((h.state, h.consecutive_clean), (Shadow, 0));
        // The two clean runs before the rebuild no longer count.
        play(
            h,
            &[
                ('c', Shadow, false, None),
                ('c', Shadow, false, None),
                ('c', Promoted, false, t(Shadow, Promoted)),
            ],
        );

        let mut p = promoted();
        p.observe(true, &POLICY);
        assert_eq!(p.rebuilt(), None);
        assert_eq!((p.state, p.consecutive_breaches), (Promoted, 0));
        // The breach before the rebuild no longer counts towards paging.
        play(p, &[('b', Promoted, false, None), ('b', Demoted, true, t(Promoted, Demoted))]);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let eager = PromotionPolicy { promote_after_clean_runs: 0, page_after_breaches: 0 };
        let mut h = ReadModelHealth::new();
        assert_eq!(h.observe(false, &eager), Observation { page: false, transition: t(Shadow, Promoted) });
        assert_eq!(h.observe(true, &eager), Observation { page: true, transition: t(Promoted, Demoted) });
        assert_eq!(h.observe(true, &eager), Observation { page: false, transition: None });
    }

    #[test]
    fn custom_thresholds() {
        let patient = PromotionPolicy { promote_after_clean_runs: 5, page_after_breaches: 3 };
        let mut h = ReadModelHealth::new();
        for run in 1..=5 {
            let o = h.observe(false, &patient);
            assert_eq!(o.transition.is_some(), run == 5, "run {run}");
        }
        for run in 1..=4 {
            let o = h.observe(true, &patient);
            assert_eq!(o.page, run == 3, "breach {run}");
            assert_eq!(o.transition, if run == 3 { t(Promoted, Demoted) } else { None }, "breach {run}");
        }
    }

    #[test]
    fn lowering_the_threshold_mid_streak_still_demotes_and_pages() {
        let lax = PromotionPolicy { promote_after_clean_runs: 3, page_after_breaches: 10 };
        let mut h = promoted();
        for _ in 0..4 {
            assert_eq!(h.observe(true, &lax), Observation::default());
        }
        assert_eq!(h.observe(true, &POLICY), Observation { page: true, transition: t(Promoted, Demoted) });
    }

    #[test]
    fn streaks_saturate_instead_of_overflowing() {
        let mut h = ReadModelHealth { consecutive_breaches: u32::MAX, ..ReadModelHealth::new() };
        assert_eq!(h.observe(true, &POLICY), Observation::default());
        assert_eq!(h.consecutive_breaches, u32::MAX);
        let mut h = ReadModelHealth { consecutive_clean: u32::MAX, state: Demoted, ..ReadModelHealth::new() };
        assert_eq!(h.observe(false, &POLICY), Observation::default());
        assert_eq!(h.consecutive_clean, u32::MAX);
    }

    #[test]
    fn record_run_assesses_and_remembers_the_run() {
        let drift = DriftPolicy::default();
        let mut h = ReadModelHealth::new();
        let clean = RunSummary {
            sampled: 1_000,
            drifted: 1,
            ..RunSummary::new("listing_card", ReconcileMode::Sampled)
        };
        let bad = RunSummary { drifted: 2, ..clean.clone() };
        let unsure = RunSummary { errors: 4, ..clean.clone() };

        for _ in 0..2 {
            assert_eq!(h.record_run(Timestamp(1), clean.clone(), &drift, &POLICY), Observation::default());
        }
        // An inconclusive run neither promotes nor breaks the streak.
        assert_eq!(h.record_run(Timestamp(2), unsure.clone(), &drift, &POLICY), Observation::default());
        assert_eq!(h.consecutive_clean, 2);
        assert_eq!(
            h.last_run,
            Some(LastRun { at: Timestamp(2), summary: unsure, verdict: RunVerdict::Inconclusive })
        );
        assert_eq!(
            h.record_run(Timestamp(3), clean, &drift, &POLICY),
            Observation { page: false, transition: t(Shadow, Promoted) }
        );
        assert_eq!(h.record_run(Timestamp(4), bad.clone(), &drift, &POLICY), Observation::default());
        assert_eq!(
            h.record_run(Timestamp(5), bad.clone(), &drift, &POLICY),
            Observation { page: true, transition: t(Promoted, Demoted) }
        );
        assert_eq!(h.last_run, Some(LastRun { at: Timestamp(5), summary: bad, verdict: RunVerdict::Breach }));
    }

    #[test]
    fn health_round_trips_through_the_codec() -> Result<(), crate::codec::CodecError> {
        let mut h = promoted();
        h.record_run(
            Timestamp(1_700_000_000_000),
            RunSummary {
                read_model: "listing_card".into(),
                mode: ReconcileMode::Full,
                sampled: 5_000,
                drifted: 7,
                errors: 1,
            },
            &DriftPolicy::default(),
            &POLICY,
        );
        h.observe(true, &POLICY);
        for health in [ReadModelHealth::new(), promoted(), demoted(), h] {
            let bytes = crate::codec::encode(&health)?;
            assert_eq!(crate::codec::decode::<ReadModelHealth>(&bytes)?, health);
        }
        Ok(())
    }

    #[test]
    fn states_read_and_print_as_their_names() -> Result<(), ReconcileError> {
        for state in [Shadow, Promoted, Demoted] {
            assert_eq!(state.as_str().parse::<PromotionState>()?, state);
            assert_eq!(state.to_string(), state.as_str());
        }
        assert_eq!(" PROMOTED ".parse::<PromotionState>()?, Promoted);
        assert_eq!(
            "retired".parse::<PromotionState>(),
            Err(ReconcileError::UnknownState { input: "retired".into() })
        );
        assert_eq!(PromotionState::default(), Shadow);
        Ok(())
    }
}
