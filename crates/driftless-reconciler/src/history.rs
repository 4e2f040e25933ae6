//! The bounded history of reconciliation runs and promotion changes, kept per read model
//! in the store's metadata records.

use crate::report::{DriftedKey, ReadModelReport};
use driftless_domain::reconcile::{metric_names as m, RunVerdict, Transition, PPM};
use driftless_domain::{PromotionState, ReadModelHealth, ReconcileMode, Timestamp};
use driftless_storage::{CommitError, ReadError, Store};
use serde::{Deserialize, Serialize};

/// How many runs, and how many promotion changes, a read model's history keeps (the
/// oldest are dropped first).
pub const HISTORY_RUNS: usize = 50;
/// How many drifted keys each recorded run keeps, with their reasons.
pub const HISTORY_DRIFTED_KEYS: usize = 10;
/// The longest reason a recorded drifted key keeps, in characters (longer ones are cut and
/// end with `…`).
pub const HISTORY_REASON_CHARS: usize = 300;

/// The metadata key of a read model's [`ReconcileHistory`]: `history/{read_model}`.
#[must_use]
pub fn history_key(read_model: &str) -> String {
    format!("history/{read_model}")
}

/// One finished reconciliation run of one read model, as its history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunRecord {
    /// When the run was recorded, by the harness's clock.
    pub at: Timestamp,
    /// Sampled or full.
    pub mode: ReconcileMode,
    /// Keys checked to a verdict.
    pub sampled: u64,
    /// Keys found drifted.
    pub drifted: u64,
    /// Keys that could not be checked.
    pub errors: u64,
    /// The breach threshold the run was judged by, in parts per million.
    pub breach_ppm: u64,
    /// Whether the drift breached it.
    pub breach: bool,
    /// What the run said about the read model.
    pub verdict: RunVerdict,
    /// The promotion state after the run.
    pub state: PromotionState,
    /// The state change the run caused, if any.
    pub transition: Option<Transition>,
    /// Whether the run paged.
    pub paged: bool,
    /// Wall time of the run in milliseconds.
    pub duration_ms: u64,
    /// The first drifted keys with their reasons, at most [`HISTORY_DRIFTED_KEYS`], each
    /// reason at most [`HISTORY_REASON_CHARS`] characters.
    pub drifted_keys: Vec<DriftedKey>,
}

impl RunRecord {
    /// The record of a finished run's report, at `at`, judged against `breach_ppm`.
    #[must_use]
    pub fn of_report(report: &ReadModelReport, at: Timestamp, breach_ppm: u64) -> Self {
        Self {
            at,
            mode: report.mode,
            sampled: report.sampled,
            drifted: report.drifted,
            errors: report.errors,
            breach_ppm,
            breach: report.breach,
            verdict: report.verdict,
            state: report.state,
            transition: report.transition,
            paged: report.paged,
            duration_ms: report.duration_ms,
            drifted_keys: report
                .drifted_keys
                .iter()
                .take(HISTORY_DRIFTED_KEYS)
                .map(|d| DriftedKey { key: d.key.clone(), reason: shorten(&d.reason) })
                .collect(),
        }
    }

    /// `drifted / sampled` (0 when nothing was checked).
    #[must_use]
    pub fn drift_ratio(&self) -> f64 {
        if self.sampled == 0 {
            0.0
        } else {
            self.drifted as f64 / self.sampled as f64
        }
    }

    /// The breach threshold as a ratio (`0.001` for the default 0.1 %).
    #[must_use]
    pub fn breach_ratio(&self) -> f64 {
        self.breach_ppm as f64 / PPM as f64
    }
}

/// What changed a read model's promotion state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TransitionCause {
    /// A reconciliation run in this mode.
    Run(ReconcileMode),
    /// A rebuild from the journal.
    Rebuild,
}

/// One change of promotion state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TransitionRecord {
    /// When, by the clock of whoever recorded it.
    pub at: Timestamp,
    /// The state before.
    pub from: PromotionState,
    /// The state after.
    pub to: PromotionState,
    /// What caused it.
    pub cause: TransitionCause,
}

/// A read model's reconciliation history: its last [`HISTORY_RUNS`] recorded runs and its
/// last [`HISTORY_RUNS`] promotion changes, oldest first. Runs that were interrupted are
/// not recorded (as they are not in the health).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReconcileHistory {
    /// Recorded runs, oldest first.
    pub runs: Vec<RunRecord>,
    /// Promotion changes, oldest first.
    pub transitions: Vec<TransitionRecord>,
}

impl ReconcileHistory {
    /// The latest recorded run.
    #[must_use]
    pub fn latest(&self) -> Option<&RunRecord> {
        self.runs.last()
    }

    /// The latest run that found drifted keys.
    #[must_use]
    pub fn latest_drift(&self) -> Option<&RunRecord> {
        self.runs.iter().rev().find(|r| !r.drifted_keys.is_empty())
    }

    fn push_run(&mut self, run: RunRecord) {
        if let Some(t) = run.transition {
            let cause = TransitionCause::Run(run.mode);
            self.push_transition(TransitionRecord { at: run.at, from: t.from, to: t.to, cause });
        }
        push_bounded(&mut self.runs, run);
    }

    fn push_transition(&mut self, transition: TransitionRecord) {
        push_bounded(&mut self.transitions, transition);
    }
}

fn push_bounded<T>(items: &mut Vec<T>, item: T) {
    items.push(item);
    if items.len() > HISTORY_RUNS {
        let excess = items.len() - HISTORY_RUNS;
        items.drain(..excess);
    }
}

/// `reason` cut to [`HISTORY_REASON_CHARS`] characters.
fn shorten(reason: &str) -> String {
    match reason.char_indices().nth(HISTORY_REASON_CHARS) {
        None => reason.to_owned(),
        Some((cut, _)) => {
            let mut short = reason.get(..cut).unwrap_or_default().to_owned();
            short.push('…');
            short
        }
    }
}

/// The stored history of `read_model` (empty when it was never reconciled).
///
/// # Errors
/// [`ReadError`] when it cannot be read.
pub fn history(store: &Store, read_model: &str) -> Result<ReconcileHistory, ReadError> {
    Ok(store.meta_get::<ReconcileHistory>(&history_key(read_model))?.unwrap_or_default())
}

/// Appends a finished run to the history of its read model.
pub(crate) fn record_run(store: &Store, run: RunRecord, read_model: &str) -> Result<(), CommitError> {
    store.meta_update(&history_key(read_model), |current: Option<ReconcileHistory>| {
        let mut history = current.unwrap_or_default();
        history.push_run(run);
        (Some(history), ())
    })
}

/// Records in `store` that `read_model` was rebuilt from the journal at `at`: its streaks
/// restart, and a demoted model goes back to shadow (the returned transition, also kept in
/// its [`ReconcileHistory`]), where it must earn promotion again. The engine calls this
/// after every rebuild.
///
/// # Errors
/// [`CommitError`] when the health or the history cannot be written.
pub fn record_rebuild_at(
    store: &Store,
    read_model: &str,
    at: Timestamp,
) -> Result<Option<Transition>, CommitError> {
    let key = crate::harness::health_key(read_model);
    let transition = store.meta_update(&key, |current: Option<ReadModelHealth>| {
        let mut health = current.unwrap_or_default();
        let transition = health.rebuilt();
        (Some(health), transition)
    })?;
    if let Some(t) = transition {
        store.meta_update(&history_key(read_model), |current: Option<ReconcileHistory>| {
            let mut history = current.unwrap_or_default();
            history.push_transition(TransitionRecord {
                at,
                from: t.from,
                to: t.to,
                cause: TransitionCause::Rebuild,
            });
            (Some(history), ())
        })?;
        metrics::counter!(m::PROMOTIONS_TOTAL, m::LABEL_READ_MODEL => read_model.to_owned(), m::LABEL_TO => t.to.as_str())
            .increment(1);
        tracing::info!(read_model, from = %t.from, to = %t.to, "the rebuilt read model is back in shadow");
    }
    Ok(transition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FnReconciler, ReconcileHarness};
    use driftless_domain::{ManualClock, ReconcileResult};
    use driftless_storage::{Durability, StoreOptions, StoreWriter};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    /// A harness, its store and clock, and the writer that keeps the file open.
    type Fixture = (ReconcileHarness, Arc<Store>, ManualClock, StoreWriter);

    /// A harness over one read model, "cards", of 1 000 keys, of which the first
    /// `drifted` keys drift.
    fn harness(dir: &tempfile::TempDir, drifted: Arc<AtomicU64>) -> TestResult<Fixture> {
        let options = StoreOptions { durability: Durability::Eventual, ..StoreOptions::default() };
        let writer = StoreWriter::open(dir.path().join("db.redb"), options)?;
        let store = Arc::clone(writer.store());
        let cards = FnReconciler::new(
            "cards",
            |_mode, budget| Ok((0..1_000).map(|i| format!("key-{i:04}")).take(budget).collect()),
            move |key| {
                let n: u64 = key.trim_start_matches("key-").parse().unwrap_or(u64::MAX);
                Ok(if n < drifted.load(Ordering::SeqCst) {
                    ReconcileResult::drifted(key.clone(), format!("price {n} vs expected {}", n + 1))
                } else {
                    ReconcileResult::in_sync(key.clone())
                })
            },
        );
        let clock = ManualClock::new(Timestamp(1_000));
        let harness = ReconcileHarness::builder(Arc::clone(&store), Arc::new(clock.clone()))
            .reconciler(Arc::new(cards))
            .owner("history-test")
            .build()?;
        Ok((harness, store, clock, writer))
    }

    #[test]
    fn runs_and_promotion_changes_are_recorded_with_their_figures() -> TestResult {
        let dir = tempfile::tempdir()?;
        let drifted = Arc::new(AtomicU64::new(0));
        let (harness, store, clock, _writer) = harness(&dir, Arc::clone(&drifted))?;
        assert_eq!(harness.history("cards")?, ReconcileHistory::default());
        for _ in 0..3 {
            clock.advance(60_000);
            harness.run_once(ReconcileMode::Full, None, None)?;
        }
        drifted.store(25, Ordering::SeqCst);
        for _ in 0..2 {
            clock.advance(60_000);
            harness.run_once(ReconcileMode::Full, None, None)?;
        }
        let history = harness.history("cards")?;
        assert_eq!(history, super::history(&store, "cards")?);
        assert_eq!(history.runs.len(), 5);
        let times: Vec<u64> = history.runs.iter().map(|r| r.at.0).collect();
        assert_eq!(times, [61_000, 121_000, 181_000, 241_000, 301_000]);
        let first = history.runs.first().ok_or("no first run")?;
        assert_eq!(
            (first.sampled, first.drifted, first.breach, first.verdict),
            (1_000, 0, false, RunVerdict::Clean)
        );
        assert_eq!(first.breach_ppm, 1_000);
        let last = history.latest().ok_or("no last run")?;
        assert_eq!((last.sampled, last.drifted, last.breach, last.paged), (1_000, 25, true, true));
        assert!((last.drift_ratio() - 0.025).abs() < 1e-12);
        assert!((last.breach_ratio() - 0.001).abs() < 1e-12);
        assert_eq!(last.state, PromotionState::Demoted);
        assert_eq!(last.drifted_keys.len(), HISTORY_DRIFTED_KEYS);
        let first_key = last.drifted_keys.first().ok_or("no drifted key")?;
        assert_eq!(
            (first_key.key.as_str(), first_key.reason.as_str()),
            ("key-0000", "price 0 vs expected 1")
        );
        let changes: Vec<(PromotionState, PromotionState, TransitionCause, u64)> =
            history.transitions.iter().map(|t| (t.from, t.to, t.cause, t.at.0)).collect();
        assert_eq!(
            changes,
            [
                (
                    PromotionState::Shadow,
                    PromotionState::Promoted,
                    TransitionCause::Run(ReconcileMode::Full),
                    181_000
                ),
                (
                    PromotionState::Promoted,
                    PromotionState::Demoted,
                    TransitionCause::Run(ReconcileMode::Full),
                    301_000
                ),
            ]
        );

        // A rebuild takes it back to shadow, and says so in the history.
        clock.advance(1_000);
        let back = harness.mark_rebuilt("cards")?;
        assert_eq!(back.map(|t| t.to), Some(PromotionState::Shadow));
        let history = harness.history("cards")?;
        let rebuilt = history.transitions.last().ok_or("no transition")?;
        assert_eq!(
            (rebuilt.cause, rebuilt.to, rebuilt.at.0),
            (TransitionCause::Rebuild, PromotionState::Shadow, 302_000)
        );
        assert_eq!(history.latest_drift().map(|r| r.drifted), Some(25));
        Ok(())
    }

    #[test]
    fn the_history_keeps_the_last_runs_only() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (harness, _store, clock, _writer) = harness(&dir, Arc::new(AtomicU64::new(0)))?;
        for _ in 0..HISTORY_RUNS + 7 {
            clock.advance(1_000);
            harness.run_once(ReconcileMode::Sampled, None, None)?;
        }
        let history = harness.history("cards")?;
        assert_eq!(history.runs.len(), HISTORY_RUNS);
        // The oldest seven were dropped: the first kept is the eighth run.
        assert_eq!(history.runs.first().map(|r| r.at.0), Some(1_000 + 8 * 1_000));
        assert_eq!(history.latest().map(|r| r.at.0), Some(1_000 + (HISTORY_RUNS as u64 + 7) * 1_000));
        assert_eq!(history.transitions.len(), 1, "one promotion after three clean runs");
        Ok(())
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let reason = "é".repeat(HISTORY_REASON_CHARS + 5);
        let short = shorten(&reason);
        assert_eq!(short.chars().count(), HISTORY_REASON_CHARS + 1);
        assert!(short.ends_with('…'));
        assert_eq!(shorten("short"), "short");
    }
}
