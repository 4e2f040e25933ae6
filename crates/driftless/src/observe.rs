//! What the engine tells about itself: the state of each read model, the state gauges it
//! records through the `metrics` facade, the names of its metrics, and the `tracing` spans
//! of its rebuilds and catch-ups.

use crate::engine::Freshness;
use driftless_domain::reconcile::{PromotionState, ReadModelHealth};
use driftless_domain::{Event, Timestamp};
use driftless_reconciler::health_key;
use driftless_storage::{
    CommitError, KillSwitch, ReadError, ReadModelKind, Registry, ReplayReport, Store, StoreWriter,
};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tracing::field::Empty;

/// The names of the engine's metrics and labels (Prometheus conventions: counters end in
/// `_total`, durations are histograms in `_seconds`, a read model is always labelled
/// [`LABEL_READ_MODEL`](metric_names::LABEL_READ_MODEL)). The reconciler's own metrics are in
/// [`crate::reconcile::metric_names`].
pub mod metric_names {
    /// Counter: events committed, by [`LABEL_OUTCOME`] (`applied`, `duplicate`, `conflict`,
    /// `rejected`, `deferred`, `refused`).
    pub const EVENTS_TOTAL: &str = "driftless_events_total";
    /// Histogram: wall time of one commit's transaction.
    pub const COMMIT_SECONDS: &str = "driftless_commit_seconds";
    /// Histogram: events in one commit.
    pub const BATCH_EVENTS: &str = "driftless_batch_events";
    /// Histogram: wall time of one filing of the journal by aggregate.
    pub const FILING_SECONDS: &str = "driftless_filing_seconds";
    /// Counter: materialized-view refreshes, by [`LABEL_READ_MODEL`].
    pub const VIEW_REFRESHES_TOTAL: &str = "driftless_view_refreshes_total";
    /// Histogram: wall time of one view refresh, by [`LABEL_READ_MODEL`].
    pub const VIEW_REFRESH_SECONDS: &str = "driftless_view_refresh_seconds";
    /// Counter: rebuilds from the journal, by [`LABEL_HANDLER`].
    pub const REBUILDS_TOTAL: &str = "driftless_rebuilds_total";
    /// Histogram: wall time of one rebuild, by [`LABEL_HANDLER`].
    pub const REBUILD_SECONDS: &str = "driftless_rebuild_seconds";
    /// Counter: journal entries replayed, by [`LABEL_HANDLER`] and [`LABEL_KIND`]
    /// (`catch_up` or `rebuild`).
    pub const REPLAYED_EVENTS_TOTAL: &str = "driftless_replayed_events_total";

    /// Gauge: events dispatched and waiting for the writer.
    pub const QUEUE_EVENTS: &str = "driftless_queue_events";
    /// Gauge: messages waiting for the writer.
    pub const QUEUE_MESSAGES: &str = "driftless_queue_messages";
    /// Gauge: 1 once a storage failure has stopped the engine's writes.
    pub const POISONED: &str = "driftless_poisoned";
    /// Gauge: the last journal position handed out.
    pub const JOURNAL_HEAD: &str = "driftless_journal_head";
    /// Gauge: events a handler has applied, by [`LABEL_HANDLER`].
    pub const HANDLER_APPLIED_EVENTS: &str = "driftless_handler_applied_events";
    /// Gauge: the last journal position a handler processed, by [`LABEL_HANDLER`].
    pub const HANDLER_JOURNAL_POSITION: &str = "driftless_handler_journal_position";
    /// Gauge: seconds since the newest applied event happened (a view: since its refresh).
    pub const READ_MODEL_FRESHNESS_SECONDS: &str = "driftless_read_model_freshness_seconds";
    /// Gauge: from the newest applied event happening to its commit, in seconds.
    pub const READ_MODEL_COMMIT_LAG_SECONDS: &str = "driftless_read_model_commit_lag_seconds";
    /// Gauge: 1 when the read model has processed the whole journal.
    pub const READ_MODEL_CAUGHT_UP: &str = "driftless_read_model_caught_up";
    /// Gauge: dead letters waiting for the read model's handler.
    pub const READ_MODEL_DEAD_LETTERS: &str = "driftless_read_model_dead_letters";
    /// Gauge: 1 while the read model's kill switch is engaged.
    pub const READ_MODEL_SWITCHED_OFF: &str = "driftless_read_model_switched_off";
    /// Gauge: 1 for the read model's promotion state, by [`LABEL_STATE`] (projected read
    /// models only).
    pub const READ_MODEL_PROMOTION_STATE: &str = "driftless_read_model_promotion_state";
    /// Gauge: clean reconciliation runs in a row.
    pub const READ_MODEL_CLEAN_STREAK: &str = "driftless_read_model_clean_streak";
    /// Gauge: breaching reconciliation runs in a row.
    pub const READ_MODEL_BREACH_STREAK: &str = "driftless_read_model_breach_streak";

    /// Label: the read model.
    pub const LABEL_READ_MODEL: &str = "read_model";
    /// Label: the handler.
    pub const LABEL_HANDLER: &str = "handler";
    /// Label: an event's outcome.
    pub const LABEL_OUTCOME: &str = "outcome";
    /// Label: what replayed the journal, `catch_up` or `rebuild`.
    pub const LABEL_KIND: &str = "kind";
    /// Label: a promotion state.
    pub const LABEL_STATE: &str = "state";
}

use metric_names as m;

/// Where one read model stands: its freshness, its kill switch and, for a projected read
/// model, its reconciliation health (promotion state and streaks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReadModelState {
    /// Its freshness (name, owner, age, commit lag, caught up, dead letters, switched off).
    pub freshness: Freshness,
    /// Whether a projector or a materialized-view refresh writes it.
    pub view: bool,
    /// Its kill switch, while engaged.
    pub kill_switch: Option<KillSwitch>,
    /// Its persisted reconciliation health; `None` for a view, which is not reconciled.
    pub health: Option<ReadModelHealth>,
}

/// Freshness of every registered read model and view, as of `now`.
pub(crate) fn freshness<E: Event>(
    store: &Store,
    registry: &Registry<E>,
    now: Timestamp,
) -> Result<Vec<Freshness>, ReadError> {
    Ok(states(store, registry, now)?.into_iter().map(|s| s.freshness).collect())
}

/// The state of every registered read model and view, as of `now`.
pub(crate) fn states<E: Event>(
    store: &Store,
    registry: &Registry<E>,
    now: Timestamp,
) -> Result<Vec<ReadModelState>, ReadError> {
    let head = store.journal_head()?;
    let handlers = store.handler_records()?;
    let mut out = Vec::new();
    for (name, rec) in store.read_model_records()? {
        let state = match rec.kind {
            ReadModelKind::Projected => {
                let Some((_, h)) = handlers.iter().find(|(n, _)| *n == rec.owner) else { continue };
                if registry.handler_index(&rec.owner).is_none() {
                    continue;
                }
                let health = store.meta_get::<ReadModelHealth>(&health_key(&name))?.unwrap_or_default();
                ReadModelState {
                    freshness: Freshness {
                        read_model: name,
                        owner: rec.owner.clone(),
                        seconds: h.last_occurred_at.map(|t| seconds_between(t, now)),
                        commit_lag_ms: h.last_commit_lag_ms,
                        caught_up: !h.paused && h.seen >= head,
                        applied: h.applied,
                        dead_letters: h.dead_letters,
                        switched_off: rec.kill_switch.is_some(),
                    },
                    view: false,
                    kill_switch: rec.kill_switch,
                    health: Some(health),
                }
            }
            ReadModelKind::View => ReadModelState {
                freshness: Freshness {
                    read_model: name,
                    owner: rec.owner.clone(),
                    seconds: rec.refreshed_at.map(|t| seconds_between(t, now)),
                    commit_lag_ms: None,
                    caught_up: true,
                    applied: 0,
                    dead_letters: 0,
                    switched_off: rec.kill_switch.is_some(),
                },
                view: true,
                kill_switch: rec.kill_switch,
                health: None,
            },
        };
        out.push(state);
    }
    Ok(out)
}

fn seconds_between(then: Timestamp, now: Timestamp) -> f64 {
    now.millis_since(then) as f64 / 1000.0
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// How much is waiting for the writer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueDepth {
    pub(crate) events: usize,
    pub(crate) messages: usize,
}

/// Sets the state gauges on the installed recorder: the queue, the poison latch, the
/// journal head, per handler its applied events and journal position, per read model its
/// freshness, commit lag, catch-up, dead letters, kill switch and (projected read models)
/// promotion state and streaks.
pub(crate) fn record_gauges<E: Event>(
    store: &Store,
    registry: &Registry<E>,
    now: Timestamp,
    queue: QueueDepth,
) -> Result<(), ReadError> {
    metrics::gauge!(m::QUEUE_EVENTS).set(queue.events as f64);
    metrics::gauge!(m::QUEUE_MESSAGES).set(queue.messages as f64);
    metrics::gauge!(m::POISONED).set(flag(store.poisoned().is_some()));
    metrics::gauge!(m::JOURNAL_HEAD).set(store.journal_head()? as f64);
    for (handler, rec) in store.handler_records()? {
        if registry.handler_index(&handler).is_none() {
            continue;
        }
        metrics::gauge!(m::HANDLER_APPLIED_EVENTS, m::LABEL_HANDLER => handler.clone())
            .set(rec.applied as f64);
        metrics::gauge!(m::HANDLER_JOURNAL_POSITION, m::LABEL_HANDLER => handler).set(rec.seen as f64);
    }
    for s in states(store, registry, now)? {
        let f = &s.freshness;
        let rm = f.read_model.clone();
        if let Some(seconds) = f.seconds {
            metrics::gauge!(m::READ_MODEL_FRESHNESS_SECONDS, m::LABEL_READ_MODEL => rm.clone()).set(seconds);
        }
        if let Some(lag) = f.commit_lag_ms {
            metrics::gauge!(m::READ_MODEL_COMMIT_LAG_SECONDS, m::LABEL_READ_MODEL => rm.clone())
                .set(lag as f64 / 1000.0);
        }
        metrics::gauge!(m::READ_MODEL_CAUGHT_UP, m::LABEL_READ_MODEL => rm.clone()).set(flag(f.caught_up));
        metrics::gauge!(m::READ_MODEL_DEAD_LETTERS, m::LABEL_READ_MODEL => rm.clone())
            .set(f.dead_letters as f64);
        metrics::gauge!(m::READ_MODEL_SWITCHED_OFF, m::LABEL_READ_MODEL => rm.clone())
            .set(flag(f.switched_off));
        if let Some(health) = &s.health {
            for state in [PromotionState::Shadow, PromotionState::Promoted, PromotionState::Demoted] {
                metrics::gauge!(
                    m::READ_MODEL_PROMOTION_STATE,
                    m::LABEL_READ_MODEL => rm.clone(),
                    m::LABEL_STATE => state.as_str()
                )
                .set(flag(health.state == state));
            }
            metrics::gauge!(m::READ_MODEL_CLEAN_STREAK, m::LABEL_READ_MODEL => rm.clone())
                .set(f64::from(health.consecutive_clean));
            metrics::gauge!(m::READ_MODEL_BREACH_STREAK, m::LABEL_READ_MODEL => rm)
                .set(f64::from(health.consecutive_breaches));
        }
    }
    Ok(())
}

/// Rebuilds `handler` from the journal in a `rebuild` span with the figures of its
/// [`ReplayReport`], and counts and times it.
pub(crate) fn rebuild<E: Event>(
    writer: &StoreWriter,
    registry: &Registry<E>,
    handler: usize,
    now: Timestamp,
) -> Result<ReplayReport, CommitError> {
    let name = handler_name(registry, handler);
    let span = tracing::info_span!("rebuild", handler = %name, replayed = Empty, applied = Empty,
        dead_lettered = Empty, conflicts = Empty, seconds = Empty);
    let started = Instant::now();
    let report = span.in_scope(|| writer.rebuild(registry, handler, now, &mut |_, _| {}))?;
    let seconds = started.elapsed().as_secs_f64();
    record_replay(&span, &report, seconds);
    metrics::counter!(m::REBUILDS_TOTAL, m::LABEL_HANDLER => name.clone()).increment(1);
    metrics::histogram!(m::REBUILD_SECONDS, m::LABEL_HANDLER => name.clone()).record(seconds);
    count_replayed(name, "rebuild", &report);
    Ok(report)
}

/// Brings `handler` up to the journal head in a `catch_up` span with the figures of its
/// [`ReplayReport`], and counts the entries it replayed.
pub(crate) fn catch_up<E: Event>(
    writer: &StoreWriter,
    registry: &Registry<E>,
    handler: usize,
    now: &dyn Fn() -> Timestamp,
) -> Result<ReplayReport, CommitError> {
    let name = handler_name(registry, handler);
    let span = tracing::info_span!("catch_up", handler = %name, replayed = Empty, applied = Empty,
        dead_lettered = Empty, conflicts = Empty, seconds = Empty);
    let started = Instant::now();
    let report = span.in_scope(|| writer.catch_up(registry, handler, now))?;
    record_replay(&span, &report, started.elapsed().as_secs_f64());
    count_replayed(name, "catch_up", &report);
    Ok(report)
}

fn handler_name<E: Event>(registry: &Registry<E>, handler: usize) -> String {
    registry.handlers().get(handler).map(|h| h.name().to_string()).unwrap_or_default()
}

fn record_replay(span: &tracing::Span, report: &ReplayReport, seconds: f64) {
    span.record("replayed", report.replayed)
        .record("applied", report.applied)
        .record("dead_lettered", report.dead_lettered)
        .record("conflicts", report.conflicts)
        .record("seconds", seconds);
}

fn count_replayed(handler: String, kind: &'static str, report: &ReplayReport) {
    if report.replayed > 0 {
        metrics::counter!(m::REPLAYED_EVENTS_TOTAL, m::LABEL_HANDLER => handler, m::LABEL_KIND => kind)
            .increment(report.replayed);
    }
}

/// The events of one commit by outcome, for its span and counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OutcomeCounts {
    pub(crate) applied: u64,
    pub(crate) duplicate: u64,
    pub(crate) conflict: u64,
    pub(crate) rejected: u64,
    pub(crate) deferred: u64,
    pub(crate) refused: u64,
}

impl OutcomeCounts {
    /// Counts `reports` by outcome.
    pub(crate) fn of(reports: &[driftless_storage::EventReport]) -> Self {
        use driftless_storage::EventOutcome;
        let mut c = Self::default();
        for r in reports {
            match r.outcome {
                EventOutcome::Applied => c.applied += 1,
                EventOutcome::Duplicate => c.duplicate += 1,
                EventOutcome::Conflict { .. } => c.conflict += 1,
                EventOutcome::Rejected { .. } => c.rejected += 1,
                EventOutcome::Deferred => c.deferred += 1,
                EventOutcome::Refused { .. } => c.refused += 1,
            }
        }
        c
    }

    /// The counts by outcome label.
    pub(crate) fn labelled(&self) -> [(&'static str, u64); 6] {
        [
            ("applied", self.applied),
            ("duplicate", self.duplicate),
            ("conflict", self.conflict),
            ("rejected", self.rejected),
            ("deferred", self.deferred),
            ("refused", self.refused),
        ]
    }
}

/// Describes the engine's and the reconciler's metrics (units and help texts) to the
/// installed `metrics` recorder. Optional; call it once after installing a recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    driftless_reconciler::describe_metrics();
    describe_counter!(m::EVENTS_TOTAL, Unit::Count, "Events committed by this process, by outcome.");
    describe_histogram!(
        m::COMMIT_SECONDS,
        Unit::Seconds,
        "Wall time of one commit's transaction, from its start to its sync: processing its events and, for the writer, taking the messages that arrive meanwhile."
    );
    describe_histogram!(m::BATCH_EVENTS, Unit::Count, "Events in one commit.");
    describe_histogram!(
        m::FILING_SECONDS,
        Unit::Seconds,
        "Wall time of one filing of the journal by aggregate while the writer is idle."
    );
    describe_counter!(m::VIEW_REFRESHES_TOTAL, Unit::Count, "Materialized-view refreshes by this process.");
    describe_histogram!(
        m::VIEW_REFRESH_SECONDS,
        Unit::Seconds,
        "Wall time of one materialized-view refresh."
    );
    describe_counter!(
        m::REBUILDS_TOTAL,
        Unit::Count,
        "Rebuilds of a handler's read models from the journal."
    );
    describe_histogram!(m::REBUILD_SECONDS, Unit::Seconds, "Wall time of one rebuild.");
    describe_counter!(
        m::REPLAYED_EVENTS_TOTAL,
        Unit::Count,
        "Journal entries replayed by catch-ups and rebuilds."
    );
    describe_gauge!(m::QUEUE_EVENTS, Unit::Count, "Events dispatched and waiting for the writer.");
    describe_gauge!(m::QUEUE_MESSAGES, Unit::Count, "Messages waiting for the writer.");
    describe_gauge!(
        m::POISONED,
        "1 once a storage failure has stopped the engine's writes until it is reopened."
    );
    describe_gauge!(m::JOURNAL_HEAD, "The last journal position handed out.");
    describe_gauge!(m::HANDLER_APPLIED_EVENTS, Unit::Count, "Events a handler has applied.");
    describe_gauge!(m::HANDLER_JOURNAL_POSITION, "The last journal position a handler processed.");
    describe_gauge!(
        m::READ_MODEL_FRESHNESS_SECONDS,
        Unit::Seconds,
        "Since the newest applied event happened (views: since their refresh)."
    );
    describe_gauge!(
        m::READ_MODEL_COMMIT_LAG_SECONDS,
        Unit::Seconds,
        "From the newest applied event happening to its commit."
    );
    describe_gauge!(m::READ_MODEL_CAUGHT_UP, "1 when the read model has processed the whole journal.");
    describe_gauge!(
        m::READ_MODEL_DEAD_LETTERS,
        Unit::Count,
        "Dead letters waiting for the read model's handler."
    );
    describe_gauge!(m::READ_MODEL_SWITCHED_OFF, "1 while the read model's kill switch is engaged.");
    describe_gauge!(
        m::READ_MODEL_PROMOTION_STATE,
        "1 for the read model's current promotion state (shadow, promoted, demoted)."
    );
    describe_gauge!(m::READ_MODEL_CLEAN_STREAK, Unit::Count, "Clean reconciliation runs in a row.");
    describe_gauge!(m::READ_MODEL_BREACH_STREAK, Unit::Count, "Breaching reconciliation runs in a row.");
}

#[cfg(test)]
#[path = "observe_tests.rs"]
mod tests;
