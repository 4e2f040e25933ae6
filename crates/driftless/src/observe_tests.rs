//! The engine's gauges, spans and reconciliation history, observed through a debugging
//! `metrics` recorder and a `tracing` layer that keeps every closed span with its fields.

use super::metric_names as m;
use crate::reconcile::{FnReconciler, PromotionState, ReconcileMode, ReconcileResult, TransitionCause};
use crate::{
    ApplyError, Engine, EngineOptions, Event, HandlerName, ManualClock, ProjectionContext, Projector,
    TableDef, TableId, Timestamp, View, Views,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const T0: u64 = 1_700_000_000_000;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Moved {
    id: String,
    at: u64,
    amount: u64,
    bad: bool,
}

impl Event for Moved {
    fn aggregate_id(&self) -> &str {
        &self.id
    }
    fn event_name(&self) -> &str {
        "Moved"
    }
    fn occurred_at(&self) -> Timestamp {
        Timestamp(self.at)
    }
}

/// A projector summing amounts per id into `table`; a `bad` event is rejected.
struct Totals {
    name: &'static str,
    table: TableDef<String, u64>,
}

impl Projector<Moved> for Totals {
    fn handler_name(&self) -> HandlerName {
        HandlerName::new(self.name).unwrap_or_else(|_| unreachable!("a valid name"))
    }
    fn tables(&self) -> Vec<TableId> {
        vec![self.table.id()]
    }
    fn apply(&self, e: &Moved, _: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
        if e.bad {
            return Err(ApplyError::rejected("a bad movement"));
        }
        let mut t = views.table(&self.table)?;
        let total = t.get(&e.id)?.unwrap_or(0);
        t.put(&e.id, &(total + e.amount))?;
        Ok(())
    }
}

fn moved(id: &str, at: u64, amount: u64, bad: bool) -> Moved {
    Moved { id: id.to_owned(), at, amount, bad }
}

/// An engine over one `Totals` projector named `name` (table of the same name), with the
/// clock at `T0` and no periodic gauges.
fn engine(
    dir: &tempfile::TempDir,
    name: &'static str,
    table: TableDef<String, u64>,
) -> TestResult<(Engine<Moved>, ManualClock)> {
    let clock = ManualClock::new(Timestamp(T0));
    let options = EngineOptions { gauge_interval: None, ..EngineOptions::default() };
    let engine = Engine::builder(dir.path().join("db.redb"))
        .options(options)
        .clock(Arc::new(clock.clone()))
        .projector(Totals { name, table })
        .open()?;
    Ok((engine, clock))
}

fn gauge(
    snapshot: &[(metrics_util::CompositeKey, DebugValue)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    snapshot.iter().find_map(|(k, v)| {
        let key = k.key();
        let matches = key.name() == name
            && key.labels().count() == labels.len()
            && labels.iter().all(|(n, val)| key.labels().any(|l| l.key() == *n && l.value() == *val));
        match v {
            DebugValue::Gauge(g) if matches => Some(g.into_inner()),
            _ => None,
        }
    })
}

#[test]
fn the_engine_records_its_state_gauges_and_keeps_the_reconciliation_history() -> TestResult {
    const CARDS: TableDef<String, u64> = TableDef::new("gauged", 1);
    let dir = tempfile::tempdir()?;
    let (engine, clock) = engine(&dir, "gauged", CARDS)?;
    engine
        .dispatch_batch(vec![moved("a", T0 - 5_000, 3, false), moved("b", T0 - 9_000, 4, false)])?
        .wait()?;
    let rejected = engine.dispatch(moved("c", T0 - 8_000, 1, true))?.wait()?;
    assert!(matches!(rejected.outcome, crate::EventOutcome::Rejected { .. }));

    let drifting = Arc::new(AtomicBool::new(false));
    let drift = Arc::clone(&drifting);
    let reconciler = FnReconciler::new(
        "gauged",
        |_, budget| Ok(["a", "b"].iter().map(|k| (*k).to_owned()).take(budget).collect()),
        move |key| {
            Ok(if drift.load(Ordering::SeqCst) && key.as_str() == "b" {
                ReconcileResult::drifted(key.clone(), "total 4 vs expected 5")
            } else {
                ReconcileResult::in_sync(key.clone())
            })
        },
    );
    let harness = engine.reconciliation().reconciler(Arc::new(reconciler)).owner("gauge-test").build()?;
    for _ in 0..3 {
        clock.advance(1_000);
        harness.run_once(ReconcileMode::Full, None, None)?;
    }

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || engine.record_gauges())?;
    let snapshot: Vec<_> = snapshotter.snapshot().into_vec().into_iter().map(|(k, _, _, v)| (k, v)).collect();
    let rm = [(m::LABEL_READ_MODEL, "gauged")];
    // The newest applied event happened at T0 - 5 s; three runs advanced the clock 3 s.
    assert_eq!(gauge(&snapshot, m::READ_MODEL_FRESHNESS_SECONDS, &rm), Some(8.0));
    assert_eq!(gauge(&snapshot, m::READ_MODEL_CAUGHT_UP, &rm), Some(1.0));
    assert_eq!(gauge(&snapshot, m::READ_MODEL_DEAD_LETTERS, &rm), Some(1.0));
    assert_eq!(gauge(&snapshot, m::READ_MODEL_SWITCHED_OFF, &rm), Some(0.0));
    assert_eq!(gauge(&snapshot, m::READ_MODEL_CLEAN_STREAK, &rm), Some(3.0));
    assert_eq!(gauge(&snapshot, m::READ_MODEL_BREACH_STREAK, &rm), Some(0.0));
    assert!(gauge(&snapshot, m::READ_MODEL_COMMIT_LAG_SECONDS, &rm).is_some());
    for (state, value) in [("promoted", 1.0), ("shadow", 0.0), ("demoted", 0.0)] {
        let labels = [(m::LABEL_READ_MODEL, "gauged"), (m::LABEL_STATE, state)];
        assert_eq!(gauge(&snapshot, m::READ_MODEL_PROMOTION_STATE, &labels), Some(value), "{state}");
    }
    let handler = [(m::LABEL_HANDLER, "gauged")];
    assert_eq!(gauge(&snapshot, m::HANDLER_APPLIED_EVENTS, &handler), Some(2.0));
    assert_eq!(gauge(&snapshot, m::QUEUE_EVENTS, &[]), Some(0.0));
    assert_eq!(gauge(&snapshot, m::POISONED, &[]), Some(0.0));
    assert_eq!(gauge(&snapshot, m::JOURNAL_HEAD, &[]), Some(3.0));

    // Two breaching runs demote it; the demotion engages the kill switch.
    drifting.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        clock.advance(1_000);
        harness.run_once(ReconcileMode::Full, None, None)?;
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || engine.record_gauges())?;
    let snapshot: Vec<_> = snapshotter.snapshot().into_vec().into_iter().map(|(k, _, _, v)| (k, v)).collect();
    assert_eq!(gauge(&snapshot, m::READ_MODEL_BREACH_STREAK, &rm), Some(2.0));
    assert_eq!(gauge(&snapshot, m::READ_MODEL_SWITCHED_OFF, &rm), Some(1.0));
    let demoted = [(m::LABEL_READ_MODEL, "gauged"), (m::LABEL_STATE, "demoted")];
    assert_eq!(gauge(&snapshot, m::READ_MODEL_PROMOTION_STATE, &demoted), Some(1.0));

    // The history, through the engine.
    let history = engine.reconcile_history("gauged")?;
    let figures: Vec<(u64, u64, bool)> =
        history.runs.iter().map(|r| (r.sampled, r.drifted, r.breach)).collect();
    assert_eq!(figures, [(2, 0, false), (2, 0, false), (2, 0, false), (2, 1, true), (2, 1, true)]);
    let last = history.latest().ok_or("no run recorded")?;
    assert_eq!(last.drifted_keys.first().map(|d| d.reason.as_str()), Some("total 4 vs expected 5"));
    let changes: Vec<(PromotionState, TransitionCause)> =
        history.transitions.iter().map(|t| (t.to, t.cause)).collect();
    let full = TransitionCause::Run(ReconcileMode::Full);
    assert_eq!(changes, [(PromotionState::Promoted, full), (PromotionState::Demoted, full)]);
    let states = engine.read_model_states()?;
    let state = states.iter().find(|s| s.freshness.read_model == "gauged").ok_or("no state")?;
    assert_eq!(state.health.as_ref().map(|h| h.state), Some(PromotionState::Demoted));
    assert!(state.kill_switch.is_some());

    // A rebuild takes it back to shadow, in the history too.
    engine.rebuild("gauged")?;
    let history = engine.reconcile_history("gauged")?;
    assert_eq!(
        history.transitions.last().map(|t| (t.to, t.cause)),
        Some((PromotionState::Shadow, TransitionCause::Rebuild))
    );
    assert!(engine.reconcile_history("never_reconciled")?.runs.is_empty());
    engine.shutdown()?;
    Ok(())
}

/// A closed span: its name and fields as text.
type Closed = (String, BTreeMap<String, String>);

/// Keeps every span's fields while it is open, and every closed span.
#[derive(Default)]
struct Capture {
    open: Mutex<BTreeMap<u64, Closed>>,
    closed: Mutex<Vec<Closed>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct Layer(Arc<Capture>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Layer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.open.lock().insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some((_, fields)) = self.0.open.lock().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn on_close(&self, id: Id, _: Context<'_, S>) {
        if let Some(span) = self.0.open.lock().remove(&id.into_u64()) {
            self.0.closed.lock().push(span);
        }
    }
}

/// The process's capture, installed as the global subscriber once (the writer thread's
/// spans are seen only by a global one).
fn capture() -> Option<&'static Arc<Capture>> {
    static CAPTURE: OnceLock<Option<Arc<Capture>>> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Arc::new(Capture::default());
            let subscriber = tracing_subscriber::registry().with(Layer(Arc::clone(&capture)));
            tracing::subscriber::set_global_default(subscriber).ok().map(|()| capture)
        })
        .as_ref()
}

fn closed_spans(capture: &Capture, name: &str, field: &str, value: &str) -> Vec<BTreeMap<String, String>> {
    capture
        .closed
        .lock()
        .iter()
        .filter(|(n, f)| n == name && f.get(field).is_some_and(|v| v == value))
        .map(|(_, f)| f.clone())
        .collect()
}

fn number(fields: &BTreeMap<String, String>, name: &str) -> Option<f64> {
    fields.get(name).and_then(|v| v.parse().ok())
}

#[test]
fn commits_rebuilds_catch_ups_refreshes_and_runs_are_spans_with_their_figures() -> TestResult {
    const SPANNED: TableDef<String, u64> = TableDef::new("spanned", 1);
    const SPANNED_VIEW: TableDef<String, u64> = TableDef::new("spanned_view", 1);
    let capture = capture().ok_or("a global subscriber was already installed")?;
    let dir = tempfile::tempdir()?;
    let (engine, _clock) = engine(&dir, "spanned", SPANNED)?;
    let events: Vec<Moved> = (0..7).map(|i| moved(&format!("k{i}"), T0 - 1_000 + i, 1, false)).collect();
    engine.dispatch_batch(events)?.wait()?;
    engine.rebuild("spanned")?;
    engine.shutdown()?;

    // Reopened with a view: the handler catches up at open, and the view is refreshed.
    let clock = ManualClock::new(Timestamp(T0));
    let view = View::new(SPANNED_VIEW, |source: &crate::ViewSource<'_>| {
        let rows = source.read_model(&SPANNED)?;
        let n = rows.len().map_err(|e| e.to_string())?;
        Ok(vec![("rows".to_owned(), n)])
    });
    let engine = Engine::builder(dir.path().join("db.redb"))
        .clock(Arc::new(clock))
        .projector(Totals { name: "spanned", table: SPANNED })
        .view(view)
        .open()?;
    engine.flush()?;
    engine.refresh_view("spanned_view")?;
    let reconciler = FnReconciler::new(
        "spanned",
        |_, budget| Ok((0..7).map(|i| format!("k{i}")).take(budget).collect()),
        |key| {
            Ok(if key.as_str() == "k3" {
                ReconcileResult::drifted(key.clone(), "off")
            } else {
                ReconcileResult::in_sync(key.clone())
            })
        },
    );
    let harness = engine.reconciliation().reconciler(Arc::new(reconciler)).owner("span-test").build()?;
    harness.run_once(ReconcileMode::Full, None, None)?;
    engine.shutdown()?;

    let commits: f64 = capture
        .closed
        .lock()
        .iter()
        .filter(|(n, f)| n == "commit" && f.contains_key("seconds"))
        .filter_map(|(_, f)| number(f, "applied"))
        .sum();
    assert!(commits >= 7.0, "the commit spans count the applied events: {commits}");
    let rebuilds = closed_spans(capture, "rebuild", "handler", "spanned");
    let rebuild = rebuilds.first().ok_or("no rebuild span")?;
    assert_eq!((number(rebuild, "replayed"), number(rebuild, "applied")), (Some(7.0), Some(7.0)));
    assert!(number(rebuild, "seconds").is_some());
    let catch_ups = closed_spans(capture, "catch_up", "handler", "spanned");
    assert!(catch_ups.iter().all(|c| number(c, "replayed").is_some()), "{catch_ups:?}");
    assert!(!catch_ups.is_empty(), "no catch-up span");
    let refreshes = closed_spans(capture, "view_refresh", "read_model", "spanned_view");
    assert!(refreshes.iter().any(|r| number(r, "rows") == Some(1.0)), "{refreshes:?}");
    let runs = closed_spans(capture, "reconcile", "read_model", "spanned");
    let run = runs.first().ok_or("no reconcile span")?;
    assert_eq!((number(run, "sampled"), number(run, "drifted")), (Some(7.0), Some(1.0)));
    assert_eq!(run.get("verdict").map(String::as_str), Some("breach"));
    assert_eq!(run.get("state").map(String::as_str), Some("shadow"));
    Ok(())
}

#[test]
fn the_writer_records_the_gauges_on_its_own() -> TestResult {
    const PERIODIC: TableDef<String, u64> = TableDef::new("periodic", 1);
    static SNAPSHOTTER: OnceLock<Option<metrics_util::debugging::Snapshotter>> = OnceLock::new();
    // The writer thread records to the global recorder, installed once for this binary.
    let snapshotter = SNAPSHOTTER
        .get_or_init(|| {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            recorder.install().ok().map(|()| snapshotter)
        })
        .as_ref()
        .ok_or("a global recorder was already installed")?;
    let dir = tempfile::tempdir()?;
    let options = EngineOptions {
        gauge_interval: Some(std::time::Duration::from_millis(10)),
        ..EngineOptions::default()
    };
    let engine = Engine::builder(dir.path().join("db.redb"))
        .options(options)
        .clock(Arc::new(ManualClock::new(Timestamp(T0))))
        .projector(Totals { name: "periodic", table: PERIODIC })
        .open()?;
    engine.dispatch(moved("a", T0 - 2_000, 1, false))?.wait()?;
    let rm = [(m::LABEL_READ_MODEL, "periodic")];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let snapshot: Vec<_> =
            snapshotter.snapshot().into_vec().into_iter().map(|(k, _, _, v)| (k, v)).collect();
        if gauge(&snapshot, m::READ_MODEL_FRESHNESS_SECONDS, &rm) == Some(2.0) {
            assert_eq!(gauge(&snapshot, m::READ_MODEL_CAUGHT_UP, &rm), Some(1.0));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the writer never recorded the gauges");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    engine.shutdown()?;
    Ok(())
}
