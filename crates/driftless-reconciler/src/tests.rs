//! Tests of the harness, the scheduler and the refold reconciler, with an injected
//! [`ManualClock`], a fake reconciler whose keys and drift the test controls, and a real
//! store in a temporary directory. Nothing sleeps; the hang tests wait at most a few
//! per-key timeouts of 50 ms.

use crate::*;
use crossbeam_channel as cc;
use driftless_domain::reconcile::{
    metric_names, RunVerdict, Transition, DAY_MILLIS, HOUR_MILLIS, MINUTE_MILLIS,
};
use driftless_domain::{
    codec, ApplyError, Clock, Event, HandlerName, ManualClock, PreparedEvent, ProjectionContext, Projector,
    PromotionState, ReconcileMode, ReconcilePolicy, ReconcileResult, SampleKey, TableDef, TableId, Timestamp,
    Views,
};
use driftless_storage::StoreWriter;
use driftless_storage::{Durability, Store, StoreOptions};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use PromotionState::{Demoted, Promoted, Shadow};
use ReconcileMode::{Full, Sampled};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// 2024-01-01 00:00 UTC, a Monday.
const T0: u64 = 1_704_067_200_000;
/// The default sampled cadence's time of day, 03:17.
const AT_0317: u64 = 3 * HOUR_MILLIS + 17 * MINUTE_MILLIS;
/// The default full cadence's time of day, 04:30 (on Sundays: day 6, 13, 20 … after T0).
const AT_0430: u64 = 4 * HOUR_MILLIS + 30 * MINUTE_MILLIS;
/// The longest a test waits for another thread.
const PATIENCE: Duration = Duration::from_secs(10);

fn day(n: u64) -> u64 {
    T0 + n * DAY_MILLIS
}

fn open(dir: &tempfile::TempDir) -> Result<Arc<Store>, driftless_storage::OpenError> {
    open_with(dir, true)
}

fn open_with(dir: &tempfile::TempDir, journal: bool) -> Result<Arc<Store>, driftless_storage::OpenError> {
    let options = StoreOptions { durability: Durability::Eventual, journal, ..StoreOptions::default() };
    Ok(Arc::clone(StoreWriter::open(dir.path().join("db.redb"), options)?.store()))
}

fn key(i: usize) -> String {
    format!("key-{i:05}")
}

/// A reconciler whose population, drift, errors, panics and hangs the test controls.
struct Fake {
    name: String,
    keys: Vec<SampleKey>,
    drifted: Mutex<BTreeSet<SampleKey>>,
    failing: BTreeSet<SampleKey>,
    panicking: BTreeSet<SampleKey>,
    /// Keys that wait on `gate` (all keys when `gate_all`).
    hanging: BTreeSet<SampleKey>,
    gate_all: bool,
    gate: Option<cc::Receiver<()>>,
    entered: Option<cc::Sender<SampleKey>>,
    list_failure: Option<&'static str>,
    list_panics: bool,
    /// Listing waits on `gate`.
    list_hangs: bool,
    listed_with: Mutex<Vec<(ReconcileMode, usize)>>,
    checked: Mutex<Vec<SampleKey>>,
}

impl Fake {
    fn new(name: &str, population: usize) -> Self {
        Self {
            name: name.to_owned(),
            keys: (0..population).map(key).collect(),
            drifted: Mutex::new(BTreeSet::new()),
            failing: BTreeSet::new(),
            panicking: BTreeSet::new(),
            hanging: BTreeSet::new(),
            gate_all: false,
            gate: None,
            entered: None,
            list_failure: None,
            list_panics: false,
            list_hangs: false,
            listed_with: Mutex::new(Vec::new()),
            checked: Mutex::new(Vec::new()),
        }
    }

    fn drift(self, keys: impl IntoIterator<Item = SampleKey>) -> Self {
        self.set_drifted(keys);
        self
    }

    fn set_drifted(&self, keys: impl IntoIterator<Item = SampleKey>) {
        *self.drifted.lock() = keys.into_iter().collect();
    }

    fn gated(mut self, gate: cc::Receiver<()>, entered: cc::Sender<SampleKey>) -> Self {
        self.gate = Some(gate);
        self.entered = Some(entered);
        self
    }

    /// How many `reconcile` calls were made.
    fn calls(&self) -> usize {
        self.checked.lock().len()
    }

    /// The distinct keys `reconcile` was called with.
    fn checked(&self) -> BTreeSet<SampleKey> {
        self.checked.lock().iter().cloned().collect()
    }
}

/// `fake` as the trait object a harness registers.
fn rec(fake: &Arc<Fake>) -> Arc<dyn Reconciler> {
    Arc::clone(fake) as Arc<dyn Reconciler>
}

// The fake panics on purpose, to test that the harness catches it.
#[allow(clippy::panic)]
impl Reconciler for Fake {
    fn read_model(&self) -> &str {
        &self.name
    }

    fn list_sample_keys(
        &self,
        mode: ReconcileMode,
        budget: usize,
    ) -> Result<Vec<SampleKey>, ReconcileFailure> {
        self.listed_with.lock().push((mode, budget));
        if self.list_hangs {
            if let Some(gate) = &self.gate {
                let _ = gate.recv_timeout(PATIENCE);
            }
        }
        if self.list_panics {
            std::panic::panic_any("the listing blew up");
        }
        if let Some(message) = self.list_failure {
            return Err(ReconcileFailure::other(message));
        }
        Ok(self.keys.iter().take(budget).cloned().collect())
    }

    fn reconcile(&self, key: &SampleKey) -> Result<ReconcileResult, ReconcileFailure> {
        self.checked.lock().push(key.clone());
        if self.gate_all || self.hanging.contains(key) {
            if let Some(entered) = &self.entered {
                let _ = entered.send(key.clone());
            }
            if let Some(gate) = &self.gate {
                let _ = gate.recv_timeout(PATIENCE);
            }
        }
        if self.panicking.contains(key) {
            std::panic::panic_any(format!("the replay of {key} blew up"));
        }
        if self.failing.contains(key) {
            return Err(ReconcileFailure::other(format!("the journal of {key} is unreadable")));
        }
        Ok(if self.drifted.lock().contains(key) {
            ReconcileResult::drifted(key.clone(), format!("{key}: price 500 vs expected 450"))
        } else {
            ReconcileResult::in_sync(key.clone())
        })
    }
}

/// A pager that keeps its pages.
#[derive(Default)]
struct RecordingPager(Mutex<Vec<Page>>);

impl Pager for RecordingPager {
    fn page(&self, alert: &Page) {
        self.0.lock().push(alert.clone());
    }
}

/// A pager that sends its pages to a channel.
struct ChannelPager(cc::Sender<Page>);

impl Pager for ChannelPager {
    fn page(&self, alert: &Page) {
        let _ = self.0.send(alert.clone());
    }
}

fn builder(store: &Arc<Store>, clock: &ManualClock, fakes: &[Arc<dyn Reconciler>]) -> HarnessBuilder {
    ReconcileHarness::builder(Arc::clone(store), Arc::new(clock.clone()))
        .reconcilers(fakes.iter().cloned())
        .owner("test")
}

fn only(report: &RunReport) -> Result<&ReadModelReport, String> {
    match report.read_models.as_slice() {
        [one] => Ok(one),
        other => Err(format!("expected one read-model report, got {}", other.len())),
    }
}

fn drifted_set(report: &ReadModelReport) -> BTreeSet<SampleKey> {
    report.drifted_keys.iter().map(|d| d.key.clone()).collect()
}

// ---------------------------------------------------------------------------------------
// Synthetic drift
// ---------------------------------------------------------------------------------------

#[test]
fn full_mode_finds_exactly_the_tampered_keys() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let tampered: BTreeSet<SampleKey> = (0..3_000).step_by(173).map(key).collect();
    let fake = Arc::new(Fake::new("cards", 3_000).drift(tampered.clone()));
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[rec(&fake)]).build()?;

    let report = harness.run_once(Full, None, None)?;
    let cards = only(&report)?;
    assert_eq!(tampered.len(), 18);
    assert_eq!((cards.sampled, cards.drifted, cards.errors), (3_000, 18, 0));
    assert_eq!(drifted_set(cards), tampered);
    assert_eq!(fake.calls(), 3_000);
    assert!(cards.drifted_keys.iter().all(|d| d.reason == format!("{}: price 500 vs expected 450", d.key)));
    // In key order.
    assert!(cards.drifted_keys.windows(2).all(|w| matches!(w, [a, b] if a.key < b.key)));
    assert!(cards.breach);
    assert_eq!(cards.verdict, RunVerdict::Breach);
    assert!((cards.drift_ratio - 18.0 / 3_000.0).abs() < 1e-12);
    assert_eq!(report.skipped, None);
    assert_eq!(harness.lease()?, None, "the lease is released after the run");
    Ok(())
}

#[test]
fn sampled_mode_finds_drift_at_the_expected_rate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    // 10 % of 20 000 keys drifted; a sampled run checks 1 % = 200 of them.
    let tampered: BTreeSet<SampleKey> = (0..20_000).step_by(10).map(key).collect();
    let fake = Arc::new(Fake::new("cards", 20_000).drift(tampered.clone()));
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[rec(&fake)]).build()?;

    let report = harness.run_once(Sampled, None, Some(day(1) + AT_0317))?;
    let cards = only(&report)?;
    assert_eq!(cards.sampled, 200);
    assert_eq!(fake.calls(), 200);
    // Binomial(200, 0.1): mean 20, standard deviation 4.24; 20 ± 13 is beyond 3 sd.
    assert!((7..=33).contains(&cards.drifted), "{} drifted of 200", cards.drifted);
    assert!(drifted_set(cards).is_subset(&tampered));
    assert!(fake.checked().iter().all(|k| fake.keys.contains(k)));

    // Over 20 slots (4 000 checks, expected 400, sd 19) the rate is 10 % within 3 sd.
    let mut total = 0;
    for n in 2..22 {
        total += only(&harness.run_once(Sampled, None, Some(day(n) + AT_0317))?)?.drifted;
    }
    assert!((343..=457).contains(&total), "{total} drifted of 4 000");
    Ok(())
}

#[test]
fn a_slot_checks_the_same_keys_and_another_slot_others() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let fake = Arc::new(Fake::new("cards", 5_000));
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[rec(&fake)]).build()?;
    let slot = day(3) + AT_0317;

    harness.run_once(Sampled, None, Some(slot))?;
    let first = fake.checked();
    fake.checked.lock().clear();
    harness.run_once(Sampled, None, Some(slot))?;
    let again = fake.checked();
    fake.checked.lock().clear();
    harness.run_once(Sampled, None, Some(slot + DAY_MILLIS))?;
    let next_day = fake.checked();

    assert_eq!(first.len(), 50);
    assert_eq!(first, again, "a retried slot re-checks the same keys");
    assert_ne!(first, next_day);

    // A fixed seed source checks the same keys whatever the slot.
    let fixed = builder(&store, &ManualClock::new(Timestamp(T0)), &[rec(&fake)])
        .seed_source(SeedSource::Fixed(7))
        .build()?;
    fake.checked.lock().clear();
    fixed.run_once(Sampled, None, Some(1))?;
    let a = fake.checked();
    fake.checked.lock().clear();
    fixed.run_once(Sampled, None, Some(2))?;
    assert_eq!(a, fake.checked());
    Ok(())
}

#[test]
fn a_breach_is_strictly_more_than_a_tenth_of_a_percent() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let fake = Arc::new(Fake::new("cards", 2_000).drift([key(5), key(1_500)]));
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[rec(&fake)]).build()?;

    let at_limit = harness.run_once(Full, None, None)?;
    let at_limit = only(&at_limit)?;
    assert_eq!((at_limit.sampled, at_limit.drifted), (2_000, 2));
    assert!(!at_limit.breach, "2 of 2 000 is exactly 0.1 %");
    assert_eq!(at_limit.verdict, RunVerdict::Clean);

    fake.set_drifted([key(5), key(1_500), key(1_999)]);
    let above = harness.run_once(Full, None, None)?;
    let above = only(&above)?;
    assert_eq!(above.drifted, 3);
    assert!(above.breach, "3 of 2 000 is above 0.1 %");
    assert_eq!(harness.health("cards")?.consecutive_breaches, 1);
    Ok(())
}

#[test]
fn the_budget_caps_full_runs_and_sampled_runs_list_the_population() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let fake = Arc::new(Fake::new("cards", 500));
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[rec(&fake)])
        .sample_budget(120)
        .population_limit(5_000)
        .build()?;

    assert_eq!(only(&harness.run_once(Full, None, None)?)?.sampled, 120);
    assert_eq!(fake.checked(), (0..120).map(key).collect());
    // 500 keys sampled at 1 % with a floor of 20: 20 keys, drawn from all 500.
    assert_eq!(only(&harness.run_once(Sampled, None, Some(1))?)?.sampled, 20);
    assert_eq!(*fake.listed_with.lock(), vec![(Full, 120), (Sampled, 5_000)]);

    // A budget below the sample size caps the sample too.
    let tight = builder(&store, &ManualClock::new(Timestamp(T0)), &[rec(&fake)]).sample_budget(3).build()?;
    assert_eq!(only(&tight.run_once(Sampled, None, Some(1))?)?.sampled, 3);
    Ok(())
}

#[test]
fn errors_are_counted_apart_from_drift_and_do_not_count_as_clean() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let mut fake = Fake::new("cards", 100).drift([key(50)]);
    fake.failing = [key(1), key(2), key(3)].into();
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[Arc::new(fake)]).build()?;

    let report = harness.run_once(Full, None, None)?;
    let cards = only(&report)?;
    assert_eq!((cards.sampled, cards.drifted, cards.errors), (97, 1, 3));
    assert!(cards.breach, "1 of 97 is above 0.1 %");
    let failed: Vec<_> = cards.failures.iter().map(|f| (f.key.clone(), f.kind)).collect();
    assert_eq!(
        failed,
        vec![
            (Some(key(1)), FailureKind::Error),
            (Some(key(2)), FailureKind::Error),
            (Some(key(3)), FailureKind::Error)
        ]
    );
    assert!(cards.failures.iter().all(|f| f.reason.contains("is unreadable")));

    // Without drift, errors make the run inconclusive: it neither promotes nor breaks a streak.
    let mut clean = Fake::new("clean", 100);
    clean.failing = [key(9)].into();
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[Arc::new(clean)]).build()?;
    for _ in 0..4 {
        let report = harness.run_once(Full, None, None)?;
        assert_eq!(only(&report)?.verdict, RunVerdict::Inconclusive);
    }
    let health = harness.health("clean")?;
    assert_eq!((health.state, health.consecutive_clean, health.consecutive_breaches), (Shadow, 0, 0));
    Ok(())
}

#[test]
fn a_failed_or_panicking_listing_is_one_error_and_the_run_goes_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let mut broken = Fake::new("broken", 10);
    broken.list_failure = Some("the table is gone");
    let mut exploding = Fake::new("exploding", 10);
    exploding.list_panics = true;
    let fine = Fake::new("fine", 10);
    let harness = builder(
        &store,
        &ManualClock::new(Timestamp(T0)),
        &[Arc::new(broken), Arc::new(exploding), Arc::new(fine)],
    )
    .build()?;

    let report = harness.run_once(Full, None, None)?;
    assert_eq!(report.read_models.len(), 3);
    let broken = report.read_model("broken").ok_or("no broken report")?;
    assert_eq!((broken.sampled, broken.errors), (0, 1));
    assert_eq!(
        broken.failures,
        vec![KeyFailure {
            key: None,
            kind: FailureKind::Error,
            reason: "the reconciler failed: the table is gone".into()
        }]
    );
    let exploding = report.read_model("exploding").ok_or("no exploding report")?;
    assert_eq!(exploding.failures.first().map(|f| f.kind), Some(FailureKind::Panic));
    assert!(exploding.failures.first().is_some_and(|f| f.reason.contains("the listing blew up")));
    assert_eq!(report.read_model("fine").map(|r| (r.sampled, r.errors)), Some((10, 0)));
    Ok(())
}

#[test]
fn a_hanging_listing_times_out_and_the_run_goes_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let (gate_tx, gate_rx) = cc::bounded::<()>(0);
    let (entered_tx, _entered_rx) = cc::unbounded();
    let mut stuck = Fake::new("stuck", 10).gated(gate_rx, entered_tx);
    stuck.list_hangs = true;
    let harness =
        builder(&store, &ManualClock::new(Timestamp(T0)), &[Arc::new(stuck), Arc::new(Fake::new("fine", 4))])
            .list_timeout(Duration::from_millis(50))
            .build()?;

    let started = Instant::now();
    let report = harness.run_once(Full, None, None)?;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let stuck = report.read_model("stuck").ok_or("no report")?;
    assert_eq!((stuck.sampled, stuck.errors, stuck.verdict), (0, 1, RunVerdict::Inconclusive));
    assert_eq!(
        stuck.failures.iter().map(|f| (f.key.clone(), f.kind)).collect::<Vec<_>>(),
        vec![(None, FailureKind::Timeout)]
    );
    assert_eq!(report.read_model("fine").map(|r| r.sampled), Some(4));
    drop(gate_tx);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Promotion
// ---------------------------------------------------------------------------------------

#[test]
fn three_clean_runs_promote_a_shadow_model() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let harness =
        builder(&store, &ManualClock::new(Timestamp(T0)), &[Arc::new(Fake::new("cards", 50))]).build()?;
    assert_eq!(harness.health("cards")?.state, Shadow);

    let mut states = Vec::new();
    let mut transitions = Vec::new();
    for _ in 0..4 {
        let report = harness.run_once(Sampled, None, None)?;
        let cards = only(&report)?;
        states.push(cards.state);
        transitions.push(cards.transition);
    }
    assert_eq!(states, vec![Shadow, Shadow, Promoted, Promoted]);
    assert_eq!(transitions, vec![None, None, Some(Transition { from: Shadow, to: Promoted }), None]);
    let health = harness.health("cards")?;
    assert_eq!(health.consecutive_clean, 4);
    assert_eq!(health.last_run.map(|r| (r.summary.sampled, r.verdict)), Some((20, RunVerdict::Clean)));
    Ok(())
}

/// A harness over one fake, promoted by three clean full runs.
fn promoted_harness(
    store: &Arc<Store>,
    fake: &Arc<Fake>,
    pager: &Arc<RecordingPager>,
    demoted: &Arc<Mutex<Vec<String>>>,
) -> Result<ReconcileHarness, Box<dyn std::error::Error>> {
    let hook_log = Arc::clone(demoted);
    let rec: Arc<dyn Reconciler> = fake.clone();
    let harness = builder(store, &ManualClock::new(Timestamp(T0)), &[rec])
        .pager(pager.clone())
        .on_demote(Arc::new(move |read_model: &str| hook_log.lock().push(read_model.to_owned())))
        .build()?;
    fake.set_drifted([]);
    for _ in 0..3 {
        harness.run_once(Full, None, None)?;
    }
    assert_eq!(harness.health(&fake.name)?.state, Promoted);
    Ok(harness)
}

#[test]
fn two_breaches_in_a_row_page_and_demote_a_promoted_model() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let fake = Arc::new(Fake::new("cards", 1_000));
    let pager = Arc::new(RecordingPager::default());
    let demoted = Arc::new(Mutex::new(Vec::new()));
    let harness = promoted_harness(&store, &fake, &pager, &demoted)?;

    fake.set_drifted((0..100).map(key));
    let first = harness.run_once(Full, None, None)?;
    let first = only(&first)?;
    assert!(first.breach);
    assert_eq!((first.state, first.paged, first.transition), (Promoted, false, None));
    assert!(pager.0.lock().is_empty());

    let second = harness.run_once(Full, None, None)?;
    let second = only(&second)?;
    assert_eq!(second.state, Demoted);
    assert_eq!(second.transition, Some(Transition { from: Promoted, to: Demoted }));
    assert!(second.paged);
    assert_eq!(*demoted.lock(), vec!["cards".to_owned()]);
    {
        let pages = pager.0.lock();
        let [page] = pages.as_slice() else { return Err(format!("{} pages", pages.len()).into()) };
        assert_eq!(page.read_model, "cards");
        assert_eq!(page.consecutive_breaches, 2);
        assert_eq!((page.summary.sampled, page.summary.drifted), (1_000, 100));
        assert_eq!(page.drifted_keys.len(), MAX_PAGED_DRIFTS);
        let text = page.to_string();
        assert!(text.starts_with("the read model cards drifted beyond 0.100 % in 2 runs in a row"), "{text}");
        assert!(text.contains("100 of 1000 keys (10.000 %)"), "{text}");
        assert!(text.contains("it is demoted"), "{text}");
    }

    // A third breach neither pages again nor calls the hook again.
    let third = harness.run_once(Full, None, None)?;
    assert!(!only(&third)?.paged);
    assert_eq!(pager.0.lock().len(), 1);
    assert_eq!(demoted.lock().len(), 1);
    Ok(())
}

#[test]
fn a_rebuild_takes_a_demoted_model_back_to_shadow() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let fake = Arc::new(Fake::new("cards", 100));
    let pager = Arc::new(RecordingPager::default());
    let demoted = Arc::new(Mutex::new(Vec::new()));
    let harness = promoted_harness(&store, &fake, &pager, &demoted)?;
    fake.set_drifted([key(0)]);
    harness.run_once(Full, None, None)?;
    harness.run_once(Full, None, None)?;
    assert_eq!(harness.health("cards")?.state, Demoted);

    // Clean runs do not bring it back; a rebuild does.
    fake.set_drifted([]);
    for _ in 0..3 {
        assert_eq!(only(&harness.run_once(Full, None, None)?)?.state, Demoted);
    }
    assert_eq!(harness.mark_rebuilt("cards")?, Some(Transition { from: Demoted, to: Shadow }));
    let health = harness.health("cards")?;
    assert_eq!((health.state, health.consecutive_clean, health.consecutive_breaches), (Shadow, 0, 0));
    assert_eq!(harness.mark_rebuilt("cards")?, None, "a shadow model stays shadow");

    let mut states = Vec::new();
    for _ in 0..3 {
        states.push(only(&harness.run_once(Full, None, None)?)?.state);
    }
    assert_eq!(states, vec![Shadow, Shadow, Promoted]);
    Ok(())
}

#[test]
fn health_survives_a_reopen_of_the_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let store = open(&dir)?;
        let fake = Arc::new(Fake::new("cards", 100));
        let pager = Arc::new(RecordingPager::default());
        let harness = promoted_harness(&store, &fake, &pager, &Arc::new(Mutex::new(Vec::new())))?;
        fake.set_drifted([key(1)]);
        harness.run_once(Full, None, None)?;
        assert_eq!(harness.health("cards")?.consecutive_breaches, 1);
    }
    // Harness and store dropped: reopen.
    let store = open(&dir)?;
    let fake = Arc::new(Fake::new("cards", 100).drift([key(1)]));
    let pager = Arc::new(RecordingPager::default());
    let harness =
        builder(&store, &ManualClock::new(Timestamp(T0)), &[rec(&fake)]).pager(pager.clone()).build()?;
    let health = harness.health("cards")?;
    assert_eq!((health.state, health.consecutive_breaches), (Promoted, 1));
    // The breach streak carried over: one more breach demotes and pages.
    let report = harness.run_once(Full, None, None)?;
    assert_eq!(only(&report)?.state, Demoted);
    assert_eq!(pager.0.lock().len(), 1);
    drop(harness);
    drop(store);

    let store = open(&dir)?;
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[fake]).build()?;
    assert_eq!(harness.health("cards")?.state, Demoted);
    harness.mark_rebuilt("cards")?;
    drop(harness);
    drop(store);
    let store = open(&dir)?;
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[]).build()?;
    assert_eq!(harness.health("cards")?.state, Shadow);
    Ok(())
}

#[test]
fn a_drifting_shadow_model_pages_but_is_not_demoted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let fake = Arc::new(Fake::new("cards", 100).drift([key(3), key(4)]));
    let pager = Arc::new(RecordingPager::default());
    let demoted = Arc::new(Mutex::new(Vec::<String>::new()));
    let hook_log = Arc::clone(&demoted);
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[fake])
        .pager(pager.clone())
        .on_demote(Arc::new(move |rm: &str| hook_log.lock().push(rm.to_owned())))
        .build()?;
    let paged: Vec<bool> = (0..3)
        .map(|_| harness.run_once(Full, None, None).map(|r| r.read_models.iter().any(|c| c.paged)))
        .collect::<Result<_, _>>()?;
    assert_eq!(paged, vec![false, true, false]);
    assert_eq!(harness.health("cards")?.state, Shadow);
    assert!(demoted.lock().is_empty());
    assert!(pager.0.lock().first().is_some_and(|p| p.to_string().contains("it stays shadow")));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Harness integration
// ---------------------------------------------------------------------------------------

#[test]
fn lease_contention_lets_exactly_one_run_go() -> TestResult {
    const THREADS: usize = 6;
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let clock = ManualClock::new(Timestamp(T0));
    let (gate_tx, gate_rx) = cc::bounded::<()>(0);
    let (entered_tx, entered_rx) = cc::unbounded();
    let mut fake = Fake::new("cards", 4).gated(gate_rx, entered_tx);
    fake.gate_all = true;
    let fake: Arc<dyn Reconciler> = Arc::new(fake);

    let barrier = Arc::new(Barrier::new(THREADS));
    let (done_tx, done_rx) = cc::unbounded();
    let mut threads = Vec::new();
    for i in 0..THREADS {
        let harness = builder(&store, &clock, &[Arc::clone(&fake)])
            .owner(format!("owner-{i}"))
            .key_timeout(PATIENCE * 2)
            .build()?;
        let barrier = Arc::clone(&barrier);
        let done = done_tx.clone();
        threads.push(std::thread::spawn(move || {
            barrier.wait();
            let report = harness.run_once(Full, None, None).map_err(|e| e.to_string());
            let _ = done.send((i, report));
        }));
    }
    // The winner is stuck behind the gate, so every other thread must find the lease held.
    let mut skipped_by = BTreeSet::new();
    for _ in 0..THREADS - 1 {
        let (i, report) = done_rx.recv_timeout(PATIENCE)?;
        let report = report?;
        let Some(SkipReason::LeaseHeld { owner, until }) = report.skipped else {
            return Err(format!("thread {i} ran instead of skipping").into());
        };
        assert!(owner.starts_with("owner-") && owner != format!("owner-{i}"));
        assert_eq!(until, Timestamp(T0 + 600_000));
        assert!(report.read_models.is_empty());
        skipped_by.insert(owner);
    }
    assert_eq!(skipped_by.len(), 1, "every skip names the same holder");
    entered_rx.recv_timeout(PATIENCE)?;
    drop(gate_tx);
    let (winner, report) = done_rx.recv_timeout(PATIENCE)?;
    let report = report?;
    assert_eq!(skipped_by.into_iter().next(), Some(format!("owner-{winner}")));
    assert!(!report.is_skipped());
    assert_eq!(only(&report)?.sampled, 4);
    for t in threads {
        t.join().map_err(|_| "a contender panicked")?;
    }
    assert_eq!(ReconcileHarness::builder(store, Arc::new(clock)).build()?.lease()?, None);
    Ok(())
}

#[test]
fn a_restarted_harness_skips_while_the_lease_lives() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(Timestamp(day(1) + AT_0317 + 1));
    {
        // A process crashed in the middle of a run, leaving its lease behind.
        let store = open(&dir)?;
        let crashed = Lease {
            owner: "host-a".into(),
            token: 42,
            acquired_at: Timestamp(day(1)),
            until: Timestamp(day(1) + HOUR_MILLIS * 4),
        };
        store.meta_update(LEASE_KEY, |_: Option<Lease>| (Some(crashed), ()))?;
        // It had installed its schedule at T0.
        store.meta_update(&schedule_key(Sampled), |_: Option<u64>| (Some(T0), ()))?;
        store.meta_update(&schedule_key(Full), |_: Option<u64>| (Some(T0), ()))?;
    }
    let store = open(&dir)?;
    let fake = Arc::new(Fake::new("cards", 10));
    // Even with the same owner id, the new process does not share the dead one's lease.
    let harness = builder(&store, &clock, &[rec(&fake)]).owner("host-a").build()?;

    let report = harness.run_once(Full, None, None)?;
    assert_eq!(
        report.skipped,
        Some(SkipReason::LeaseHeld { owner: "host-a".into(), until: Timestamp(day(1) + HOUR_MILLIS * 4) })
    );
    assert_eq!(
        report.skipped.map(|s| s.to_string()).as_deref(),
        Some("another reconciliation run, owned by host-a, holds the lease until 1704168000000ms")
    );
    assert!(fake.checked().is_empty());

    // The scheduler's tick skips too, without claiming the due slot.
    let reports = harness.tick()?;
    assert_eq!(reports.len(), 1);
    assert!(reports.iter().all(RunReport::is_skipped));
    assert_eq!(harness.last_slot(Sampled)?, Some(T0));

    // Once the lease expires the slot runs.
    clock.set(Timestamp(day(1) + HOUR_MILLIS * 4));
    let reports = harness.tick()?;
    assert_eq!(
        reports.iter().map(|r| (r.mode, r.slot, r.is_skipped())).collect::<Vec<_>>(),
        vec![(Sampled, Some(day(1) + AT_0317), false)]
    );
    assert_eq!(fake.calls(), 10);
    assert_eq!(harness.lease()?, None);
    Ok(())
}

#[test]
fn an_operator_can_break_a_stale_lease() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let stale = Lease {
        owner: "gone".into(),
        token: 1,
        acquired_at: Timestamp(T0),
        until: Timestamp(T0 + DAY_MILLIS),
    };
    store.meta_update(LEASE_KEY, |_: Option<Lease>| (Some(stale.clone()), ()))?;
    let harness =
        builder(&store, &ManualClock::new(Timestamp(T0)), &[Arc::new(Fake::new("cards", 3))]).build()?;
    assert!(harness.run_once(Full, None, None)?.is_skipped());
    assert_eq!(harness.lease()?, Some(stale.clone()));
    assert_eq!(harness.break_lease()?, Some(stale));
    assert!(!harness.run_once(Full, None, None)?.is_skipped());
    Ok(())
}

#[test]
fn a_run_whose_lease_is_taken_stops_and_is_not_recorded() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let clock = ManualClock::new(Timestamp(T0));
    let thief =
        Lease { owner: "thief".into(), token: 7, acquired_at: Timestamp(T0), until: Timestamp(day(9)) };
    let (thief_store, thief_clock, stolen) = (Arc::clone(&store), clock.clone(), thief.clone());
    // While the first key is checked, a day passes (the lease expires) and another run
    // takes the lease.
    let cards = FnReconciler::new(
        "cards",
        |_, budget| Ok((0..50).map(key).take(budget).collect()),
        move |k| {
            if *k == key(0) {
                thief_clock.advance(DAY_MILLIS);
                let stolen = stolen.clone();
                thief_store
                    .meta_update(LEASE_KEY, |_: Option<Lease>| (Some(stolen), ()))
                    .map_err(|e| ReconcileFailure::other(e.to_string()))?;
            }
            Ok(ReconcileResult::in_sync(k.clone()))
        },
    );
    let harness =
        builder(&store, &clock, &[Arc::new(cards), Arc::new(Fake::new("next", 3))]).workers(1).build()?;

    let report = harness.run_once(Full, None, None)?;
    assert_eq!(report.interrupted, Some(Interruption::LeaseLost));
    let cards = only(&report)?;
    assert_eq!(cards.interrupted, Some(Interruption::LeaseLost));
    assert!(cards.sampled < 50);
    assert_eq!(harness.health("cards")?.last_run, None, "an interrupted run is not recorded");
    assert_eq!(harness.lease()?, Some(thief), "the thief's lease is left alone");
    Ok(())
}

#[test]
fn the_first_start_installs_a_marker_so_past_slots_do_not_run() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let clock = ManualClock::new(Timestamp(T0 + 12 * HOUR_MILLIS));
    let fake = Arc::new(Fake::new("cards", 10));
    let harness = builder(&store, &clock, &[rec(&fake)]).build()?;

    assert_eq!(harness.last_slot(Sampled)?, None);
    assert!(harness.tick()?.is_empty(), "today's 03:17 passed before the install");
    assert_eq!(harness.last_slot(Sampled)?, Some(T0 + 12 * HOUR_MILLIS));
    assert_eq!(harness.last_slot(Full)?, Some(T0 + 12 * HOUR_MILLIS));
    assert!(fake.checked().is_empty());
    assert_eq!(harness.next_slot_after(clock.now()), day(1) + AT_0317);

    clock.set(Timestamp(day(1) + AT_0317));
    let reports = harness.tick()?;
    assert_eq!(
        reports.iter().map(|r| (r.mode, r.slot)).collect::<Vec<_>>(),
        vec![(Sampled, Some(day(1) + AT_0317))]
    );
    assert_eq!(only(reports.first().ok_or("no report")?)?.sampled, 10);
    assert!(harness.tick()?.is_empty(), "a slot runs once");
    Ok(())
}

#[test]
fn a_forward_clock_jump_runs_each_mode_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let clock = ManualClock::new(Timestamp(T0));
    let fake = Arc::new(Fake::new("cards", 10));
    let harness = builder(&store, &clock, &[rec(&fake)]).build()?;
    assert!(harness.tick()?.is_empty());

    // Nineteen days pass at once: 19 sampled slots and 2 full slots went by.
    clock.set(Timestamp(day(19) + 12 * HOUR_MILLIS));
    let reports = harness.tick()?;
    assert_eq!(
        reports.iter().map(|r| (r.mode, r.slot)).collect::<Vec<_>>(),
        vec![(Sampled, Some(day(19) + AT_0317)), (Full, Some(day(13) + AT_0430))]
    );
    assert_eq!(fake.calls(), 20);
    assert!(harness.tick()?.is_empty());
    assert_eq!(harness.due(clock.now())?, vec![]);
    Ok(())
}

#[test]
fn a_backward_clock_jump_runs_nothing_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let clock = ManualClock::new(Timestamp(T0));
    let fake = Arc::new(Fake::new("cards", 10));
    let harness = builder(&store, &clock, &[rec(&fake)]).build()?;
    harness.tick()?;
    clock.set(Timestamp(day(1) + AT_0317));
    assert_eq!(harness.tick()?.len(), 1);

    for back in [T0 + 10 * HOUR_MILLIS, day(1) + AT_0317 - 1, day(1) + AT_0317, day(1) + 23 * HOUR_MILLIS] {
        clock.set(Timestamp(back));
        assert!(harness.tick()?.is_empty(), "at {back}");
    }
    assert_eq!(fake.calls(), 10);
    clock.set(Timestamp(day(2) + AT_0317));
    assert_eq!(harness.tick()?.iter().map(|r| r.slot).collect::<Vec<_>>(), vec![Some(day(2) + AT_0317)]);
    Ok(())
}

#[test]
fn a_slot_missed_while_asleep_runs_once_and_never_after_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(Timestamp(T0));
    let fake = Arc::new(Fake::new("cards", 10));
    {
        let store = open(&dir)?;
        let harness = builder(&store, &clock, &[rec(&fake)]).build()?;
        harness.tick()?;
        // Asleep through Tuesday's, Wednesday's and Thursday's slots; awake Thursday 10:00.
        clock.set(Timestamp(day(3) + 10 * HOUR_MILLIS));
        let reports = harness.tick()?;
        assert_eq!(
            reports.iter().map(|r| (r.mode, r.slot)).collect::<Vec<_>>(),
            vec![(Sampled, Some(day(3) + AT_0317))]
        );
    }
    // Restarted (same clock): the slot is recorded in the database, so it does not run again.
    let store = open(&dir)?;
    let harness = builder(&store, &clock, &[rec(&fake)]).build()?;
    assert_eq!(harness.last_slot(Sampled)?, Some(day(3) + AT_0317));
    assert!(harness.tick()?.is_empty());
    assert_eq!(fake.calls(), 10);
    Ok(())
}

/// A [`Fake`] that checks its keys through sessions, logging which session checked which key.
struct Sessions {
    fake: Fake,
    opened: std::sync::atomic::AtomicUsize,
    log: Mutex<Vec<(usize, SampleKey)>>,
    /// Keys checked without a session.
    alone: Mutex<Vec<SampleKey>>,
}

struct Session<'a> {
    owner: &'a Sessions,
    id: usize,
}

impl Reconciler for Sessions {
    fn read_model(&self) -> &str {
        self.fake.read_model()
    }

    fn list_sample_keys(
        &self,
        mode: ReconcileMode,
        budget: usize,
    ) -> Result<Vec<SampleKey>, ReconcileFailure> {
        self.fake.list_sample_keys(mode, budget)
    }

    fn reconcile(&self, key: &SampleKey) -> Result<ReconcileResult, ReconcileFailure> {
        self.alone.lock().push(key.clone());
        self.fake.reconcile(key)
    }

    fn session(&self) -> Option<Box<dyn ReconcileSession + '_>> {
        let id = self.opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(Box::new(Session { owner: self, id }))
    }
}

impl ReconcileSession for Session<'_> {
    fn reconcile(&mut self, key: &SampleKey) -> Result<ReconcileResult, ReconcileFailure> {
        self.owner.log.lock().push((self.id, key.clone()));
        self.owner.fake.reconcile(key)
    }
}

#[test]
fn workers_check_a_chunk_through_one_session_and_replace_it_after_a_panic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let mut fake = Fake::new("cards", 300);
    fake.panicking = [key(7), key(130)].into();
    fake.failing = [key(8)].into();
    let sessions = Arc::new(Sessions {
        fake: fake.drift([key(9)]),
        opened: 0.into(),
        log: Mutex::new(Vec::new()),
        alone: Mutex::new(Vec::new()),
    });
    let harness =
        builder(&store, &ManualClock::new(Timestamp(T0)), &[Arc::clone(&sessions) as Arc<dyn Reconciler>])
            .build()?;

    let report = harness.run_once(Full, None, None)?;
    let cards = only(&report)?;
    assert_eq!((cards.sampled, cards.drifted, cards.errors), (297, 1, 3));
    assert_eq!(drifted_set(cards), [key(9)].into());
    assert!(sessions.alone.lock().is_empty(), "keys checked without a session");
    let log = sessions.log.lock().clone();
    // Every key was checked once, through a session shared with other keys.
    let checked: Vec<SampleKey> = log.iter().map(|(_, k)| k.clone()).collect();
    assert_eq!(checked.len(), 300);
    assert_eq!(checked.iter().cloned().collect::<BTreeSet<_>>().len(), 300);
    let mut per_session = std::collections::BTreeMap::<usize, Vec<SampleKey>>::new();
    for (id, k) in &log {
        per_session.entry(*id).or_default().push(k.clone());
    }
    assert!(per_session.len() < 300 / 2, "{} sessions for 300 keys", per_session.len());
    assert!(per_session.values().all(|keys| keys.len() <= 64), "a session outlived its chunk");
    // A session that panicked checked nothing after the key it panicked on.
    for panicked in [key(7), key(130)] {
        let owner = per_session.values().find(|keys| keys.contains(&panicked)).ok_or("an unchecked key")?;
        assert_eq!(owner.last(), Some(&panicked), "a session was used after it panicked");
    }
    Ok(())
}

#[test]
fn a_panicking_reconciler_is_an_error_and_the_run_completes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let mut fake = Fake::new("cards", 50);
    fake.panicking = [key(7), key(30)].into();
    let other = Fake::new("other", 5);
    let harness =
        builder(&store, &ManualClock::new(Timestamp(T0)), &[Arc::new(fake), Arc::new(other)]).build()?;

    let report = harness.run_once(Full, None, None)?;
    let cards = report.read_model("cards").ok_or("no cards report")?;
    assert_eq!((cards.sampled, cards.drifted, cards.errors), (48, 0, 2));
    assert_eq!(cards.verdict, RunVerdict::Inconclusive);
    assert!(cards.failures.iter().all(|f| f.kind == FailureKind::Panic));
    assert!(cards.failures.iter().any(
        |f| f.key.as_deref() == Some("key-00007") && f.reason.contains("the replay of key-00007 blew up")
    ));
    assert_eq!(report.read_model("other").map(|r| r.sampled), Some(5));
    Ok(())
}

#[test]
fn a_hanging_reconciler_times_out_and_the_run_completes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let (gate_tx, gate_rx) = cc::bounded::<()>(0);
    let (entered_tx, _entered_rx) = cc::unbounded();
    let mut fake = Fake::new("cards", 30).gated(gate_rx, entered_tx);
    fake.hanging = [key(4)].into();
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[Arc::new(fake)])
        .key_timeout(Duration::from_millis(50))
        .build()?;

    let started = Instant::now();
    let report = harness.run_once(Full, None, None)?;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let cards = only(&report)?;
    assert_eq!((cards.sampled, cards.errors), (29, 1));
    assert_eq!(
        cards.failures.iter().map(|f| (f.key.clone(), f.kind)).collect::<Vec<_>>(),
        vec![(Some(key(4)), FailureKind::Timeout)]
    );
    assert!(cards.failures.iter().all(|f| f.reason.contains("did not answer within 50 ms")));
    drop(gate_tx); // lets the abandoned worker finish
    Ok(())
}

#[test]
fn a_key_hanging_inside_a_chunk_loses_neither_its_neighbours_nor_their_outcomes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let (gate_tx, gate_rx) = cc::bounded::<()>(0);
    let (entered_tx, _entered_rx) = cc::unbounded();
    // 800 keys on 2 workers go out in chunks of 50: key 130 sits in the middle of a chunk,
    // with finished keys before it and unchecked ones after it.
    let mut fake = Fake::new("cards", 800).gated(gate_rx, entered_tx).drift([key(129), key(131)]);
    fake.hanging = [key(130)].into();
    let fake = Arc::new(fake);
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[rec(&fake)])
        .key_timeout(Duration::from_millis(50))
        .workers(2)
        .build()?;

    let report = harness.run_once(Full, None, None)?;
    let cards = only(&report)?;
    assert_eq!((cards.sampled, cards.drifted, cards.errors), (799, 2, 1));
    assert_eq!(
        cards.failures.iter().map(|f| (f.key.clone(), f.kind)).collect::<Vec<_>>(),
        vec![(Some(key(130)), FailureKind::Timeout)]
    );
    // Every key was asked exactly once: none was checked twice after the hand-back.
    assert_eq!((fake.calls(), fake.checked().len()), (800, 800));
    drop(gate_tx);
    Ok(())
}

#[test]
fn hung_workers_are_replaced_up_to_the_allowance() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let (gate_tx, gate_rx) = cc::bounded::<()>(0);
    let (entered_tx, _entered_rx) = cc::unbounded();

    // Three hung keys with two workers: both workers hang, so do one of their two
    // replacements; the other replacement checks the remaining 17 keys.
    let mut some = Fake::new("some", 20).gated(gate_rx.clone(), entered_tx.clone());
    some.hanging = [key(0), key(1), key(2)].into();
    // Every key hangs: two workers and two replacements hang, the rest are not checked.
    let mut all = Fake::new("all", 10).gated(gate_rx, entered_tx);
    all.gate_all = true;
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[Arc::new(some), Arc::new(all)])
        .key_timeout(Duration::from_millis(50))
        .workers(2)
        .max_abandoned_workers(2)
        .build()?;

    let started = Instant::now();
    let report = harness.run_once(Full, None, None)?;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let some = report.read_model("some").ok_or("no report")?;
    assert_eq!((some.sampled, some.errors), (17, 3));
    assert!(some.failures.iter().all(|f| f.kind == FailureKind::Timeout));
    let all = report.read_model("all").ok_or("no report")?;
    assert_eq!((all.sampled, all.errors), (0, 10));
    let kinds: Vec<FailureKind> = all.failures.iter().map(|f| f.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == FailureKind::Timeout).count(), 4);
    assert_eq!(kinds.iter().filter(|k| **k == FailureKind::NotChecked).count(), 6);
    assert!(
        all.failures
            .iter()
            .any(|f| f.reason
                == "not checked: 4 workers were abandoned on hung keys and no replacement is left")
    );
    drop(gate_tx);
    Ok(())
}

fn counter_value(
    snapshot: &[(CompositeKey, DebugValue)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<u64> {
    snapshot.iter().find_map(|(key, value)| {
        let k = key.key();
        let matches = key.kind() == MetricKind::Counter
            && k.name() == name
            && k.labels().count() == labels.len()
            && labels.iter().all(|(lk, lv)| k.labels().any(|l| l.key() == *lk && l.value() == *lv));
        match value {
            DebugValue::Counter(v) if matches => Some(*v),
            _ => None,
        }
    })
}

#[test]
fn metrics_are_recorded_through_the_facade() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let cards = Arc::new(Fake::new("cards", 100));
    let mut broken = Fake::new("broken", 10);
    broken.failing = [key(9)].into();
    let harness =
        builder(&store, &ManualClock::new(Timestamp(T0)), &[cards.clone(), Arc::new(broken)]).build()?;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();

    metrics::with_local_recorder(&recorder, || -> TestResult {
        describe_metrics();
        // Three clean runs promote cards; two breaches demote it; a rebuild makes it shadow.
        for _ in 0..3 {
            harness.run_once(Full, None, None)?;
        }
        cards.set_drifted([key(1), key(2)]);
        for _ in 0..2 {
            harness.run_once(Full, None, None)?;
        }
        harness.mark_rebuilt("cards")?;
        harness.run_once(Sampled, Some("broken"), None)?;
        Ok(())
    })?;

    let snapshot: Vec<(CompositeKey, DebugValue)> =
        snapshotter.snapshot().into_vec().into_iter().map(|(k, _, _, v)| (k, v)).collect();
    let cards = ("read_model", "cards");
    let broken = ("read_model", "broken");
    let full = ("mode", "full");
    let sampled = ("mode", "sampled");
    let expected = [
        (metric_names::SAMPLES_TOTAL, vec![cards, full], 500),
        (metric_names::DRIFT_TOTAL, vec![cards, full], 4),
        (metric_names::ERRORS_TOTAL, vec![cards], 0),
        (metric_names::BREACHES_TOTAL, vec![cards], 2),
        (metric_names::PROMOTIONS_TOTAL, vec![cards, ("to", "promoted")], 1),
        (metric_names::PROMOTIONS_TOTAL, vec![cards, ("to", "demoted")], 1),
        (metric_names::PROMOTIONS_TOTAL, vec![cards, ("to", "shadow")], 1),
        (metric_names::SAMPLES_TOTAL, vec![broken, full], 45),
        (metric_names::SAMPLES_TOTAL, vec![broken, sampled], 9),
        (metric_names::DRIFT_TOTAL, vec![broken, sampled], 0),
        (metric_names::ERRORS_TOTAL, vec![broken], 6),
    ];
    for (name, labels, value) in expected {
        assert_eq!(counter_value(&snapshot, name, &labels), Some(value), "{name} {labels:?}");
    }
    assert_eq!(counter_value(&snapshot, metric_names::BREACHES_TOTAL, &[broken]), None);
    let durations: usize = snapshot
        .iter()
        .filter(|(k, _)| k.key().name() == metric_names::RUN_DURATION_SECONDS)
        .map(|(_, v)| match v {
            DebugValue::Histogram(values) => values.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(durations, 11);
    Ok(())
}

#[test]
fn an_empty_registry_is_a_no_op() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let clock = ManualClock::new(Timestamp(T0));
    let harness = builder(&store, &clock, &[]).build()?;
    let report = harness.run_once(Full, None, None)?;
    assert_eq!(report, RunReport::new(Full, None, Timestamp(T0)));
    assert!(!report.is_skipped());
    assert_eq!(harness.lease()?, None);
    assert!(harness.read_models().is_empty());

    harness.tick()?;
    clock.set(Timestamp(day(1) + AT_0317));
    let reports = harness.tick()?;
    assert_eq!(reports.len(), 1);
    assert!(reports.iter().all(|r| r.read_models.is_empty() && !r.is_skipped()));
    assert!(harness.tick()?.is_empty());
    Ok(())
}

#[test]
fn one_read_model_can_be_run_and_an_unknown_one_is_an_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let a = Arc::new(Fake::new("a", 5));
    let b = Arc::new(Fake::new("b", 5));
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[a.clone(), b.clone()]).build()?;
    assert_eq!(harness.read_models(), vec!["a", "b"]);

    let report = harness.run_once(Full, Some("b"), None)?;
    assert_eq!(report.read_models.iter().map(|r| r.read_model.as_str()).collect::<Vec<_>>(), vec!["b"]);
    assert!(a.checked().is_empty());
    let err = harness.run_once(Full, Some("nope"), None).err().ok_or("no error")?;
    assert!(matches!(err, HarnessError::UnknownReadModel { ref name } if name == "nope"));
    assert_eq!(err.to_string(), "no reconciler is registered for the read model \"nope\"");
    Ok(())
}

#[test]
fn the_builder_refuses_bad_settings() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let clock = ManualClock::new(Timestamp(T0));
    let a: Arc<dyn Reconciler> = Arc::new(Fake::new("a", 1));
    let again: Arc<dyn Reconciler> = Arc::new(Fake::new("a", 2));
    let cases = [
        (
            builder(&store, &clock, &[a.clone(), again]).build().err(),
            BuildError::DuplicateReadModel { name: "a".into() },
        ),
        (builder(&store, &clock, &[]).workers(0).build().err(), BuildError::NoWorkers),
        (builder(&store, &clock, &[]).key_timeout(Duration::ZERO).build().err(), BuildError::ZeroTimeout),
        (
            builder(&store, &clock, &[]).lease_ttl(Duration::from_micros(10)).build().err(),
            BuildError::ZeroLeaseTtl,
        ),
        (builder(&store, &clock, &[]).owner("  ").build().err(), BuildError::EmptyOwner),
    ];
    for (got, want) in cases {
        assert_eq!(got, Some(want));
    }
    assert_eq!(
        BuildError::DuplicateReadModel { name: "a".into() }.to_string(),
        "two reconcilers are registered for the read model \"a\"; a read model has one reconciler"
    );
    assert!(builder(&store, &clock, &[a]).workers(1).build().is_ok());
    Ok(())
}

#[test]
fn the_scheduler_starts_and_stops_promptly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let clock = ManualClock::new(Timestamp(T0));
    let harness = Arc::new(builder(&store, &clock, &[Arc::new(Fake::new("cards", 3))]).build()?);

    let handle = Arc::clone(&harness).start_scheduler()?;
    assert!(handle.is_running());
    let started = Instant::now();
    handle.stop();
    assert!(started.elapsed() < Duration::from_secs(2), "stop took {:?}", started.elapsed());

    // Dropping the handle stops and joins too.
    let handle = Arc::clone(&harness).start_scheduler()?;
    let started = Instant::now();
    drop(handle);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(Arc::strong_count(&harness), 1, "the scheduler thread let go of the harness");
    Ok(())
}

#[test]
fn the_scheduler_runs_a_due_slot_on_its_thread() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let clock = ManualClock::new(Timestamp(T0));
    // Every key drifts and the first breach pages: the page marks the end of the run.
    let fake = Arc::new(Fake::new("cards", 3).drift((0..3).map(key)));
    let (page_tx, page_rx) = cc::unbounded();
    let mut policy = ReconcilePolicy::default();
    policy.promotion.page_after_breaches = 1;
    let harness = Arc::new(
        builder(&store, &clock, &[rec(&fake)])
            .policy(policy)
            .pager(Arc::new(ChannelPager(page_tx)))
            .build()?,
    );
    harness.tick()?;
    clock.set(Timestamp(day(1) + AT_0317 + 5));

    let handle = Arc::clone(&harness).start_scheduler()?;
    let page = page_rx.recv_timeout(PATIENCE)?;
    handle.stop();
    assert_eq!((page.read_model.as_str(), page.mode, page.summary.drifted), ("cards", Sampled, 3));
    assert_eq!(fake.checked(), (0..3).map(key).collect());
    assert_eq!(harness.last_slot(Sampled)?, Some(day(1) + AT_0317));
    assert_eq!(harness.health("cards")?.last_run.map(|r| r.summary.sampled), Some(3));
    assert_eq!(harness.lease()?, None);
    assert!(page_rx.try_recv().is_err(), "the slot ran once");
    Ok(())
}

#[test]
fn stopping_the_scheduler_cancels_a_run_in_progress() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let clock = ManualClock::new(Timestamp(T0));
    let (gate_tx, gate_rx) = cc::bounded::<()>(0);
    let (entered_tx, entered_rx) = cc::unbounded();
    let mut fake = Fake::new("cards", 10).gated(gate_rx, entered_tx);
    fake.gate_all = true;
    let harness = Arc::new(builder(&store, &clock, &[Arc::new(fake)]).key_timeout(PATIENCE * 3).build()?);
    harness.tick()?;
    clock.set(Timestamp(day(1) + AT_0317));

    let handle = Arc::clone(&harness).start_scheduler()?;
    entered_rx.recv_timeout(PATIENCE)?;
    let started = Instant::now();
    handle.stop();
    assert!(started.elapsed() < Duration::from_secs(2), "stop took {:?}", started.elapsed());
    drop(gate_tx);
    // The interrupted run is not recorded, its lease is released, its slot stays claimed.
    assert_eq!(harness.health("cards")?.last_run, None);
    assert_eq!(harness.lease()?, None);
    assert_eq!(harness.last_slot(Sampled)?, Some(day(1) + AT_0317));
    Ok(())
}

#[test]
fn errors_and_reports_read_as_sentences() {
    assert_eq!(
        ReconcileFailure::NoJournal.to_string(),
        "the database keeps no journal, so the read model cannot be replayed"
    );
    assert_eq!(
        BuildError::NoWorkers.to_string(),
        "the worker count is zero; a harness needs at least one worker thread"
    );
    assert_eq!(Interruption::Cancelled.to_string(), "the run was cancelled because the scheduler stopped");
    assert_eq!(FailureKind::NotChecked.to_string(), "not_checked");
    assert_eq!(health_key("cards"), "health/cards");
    assert_eq!(schedule_key(Full), "schedule/full");
}

// ---------------------------------------------------------------------------------------
// Refold
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Priced {
    listing: String,
    at: u64,
    price: u64,
}

impl Event for Priced {
    fn aggregate_id(&self) -> &str {
        &self.listing
    }
    fn event_name(&self) -> &str {
        "Priced"
    }
    fn occurred_at(&self) -> Timestamp {
        Timestamp(self.at)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Card {
    price: u64,
    changes: u32,
}

const CARDS: TableDef<String, Card> = TableDef::new("cards", 1);

fn fold_cards(events: &[Priced]) -> Option<Card> {
    let last = events.last()?;
    Some(Card { price: last.price, changes: u32::try_from(events.len()).unwrap_or(u32::MAX) })
}

struct CardsProjector(HandlerName);

impl Projector<Priced> for CardsProjector {
    fn handler_name(&self) -> HandlerName {
        self.0.clone()
    }
    fn tables(&self) -> Vec<TableId> {
        vec![CARDS.id()]
    }
    fn apply(&self, e: &Priced, _: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
        let mut t = views.table(&CARDS)?;
        let changes = t.get(&e.listing)?.map_or(0, |c| c.changes);
        t.put(&e.listing, &Card { price: e.price, changes: changes + 1 })?;
        Ok(())
    }
}

/// A store with `listings` listings priced twice each (`listing-NNN`: 100 + n, then 200 + n).
fn projected_store(
    dir: &tempfile::TempDir,
    listings: usize,
) -> Result<StoreWriter, Box<dyn std::error::Error>> {
    let options = StoreOptions { durability: Durability::Eventual, ..StoreOptions::default() };
    let store = StoreWriter::open(dir.path().join("db.redb"), options)?;
    let projector: Arc<dyn Projector<Priced>> = Arc::new(CardsProjector(HandlerName::new("cards")?));
    let registry = store.register::<Priced>(vec![projector], &[], driftless_domain::Upcasters::new())?;
    let mut events = Vec::new();
    for round in 1..=2u64 {
        for n in 0..listings as u64 {
            events.push(PreparedEvent::new(Priced {
                listing: format!("listing-{n:03}"),
                at: round,
                price: round * 100 + n,
            })?);
        }
    }
    store.project(&registry, &events, Timestamp(T0))?;
    Ok(store)
}

fn refold(store: &Arc<Store>) -> RefoldReconciler<Priced, Card> {
    RefoldReconciler::new(Arc::clone(store), CARDS, fold_cards)
}

#[test]
fn refold_finds_a_tampered_row_and_passes_an_untouched_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = projected_store(&dir, 3)?;
    let r = refold(store.store());
    assert_eq!(r.read_model(), "cards");
    assert_eq!(r.expected_row("listing-001")?, Some(Card { price: 201, changes: 2 }));

    store.tamper_row("cards", b"listing-001", Some(&codec::encode(&Card { price: 500, changes: 2 })?))?;
    assert_eq!(r.reconcile(&"listing-000".to_owned())?, ReconcileResult::in_sync("listing-000"));
    assert_eq!(
        r.reconcile(&"listing-001".to_owned())?,
        ReconcileResult::drifted(
            "listing-001",
            "stored row differs: Card { price: 500, changes: 2 } vs expected Card { price: 201, changes: 2 }"
        )
    );
    Ok(())
}

#[test]
fn refold_reports_missing_extra_and_damaged_rows() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = projected_store(&dir, 3)?;
    let r = refold(store.store());
    store.tamper_row("cards", b"listing-002", None)?;
    store.tamper_row("cards", b"ghost", Some(&codec::encode(&Card { price: 1, changes: 1 })?))?;
    let mut damaged = codec::encode(&Card { price: 200, changes: 2 })?;
    if let Some(byte) = damaged.get_mut(2) {
        *byte ^= 0x40;
    }
    store.tamper_row("cards", b"listing-000", Some(&damaged))?;

    let reason = |k: &str| r.reconcile(&k.to_owned()).map(|res| res.reason.unwrap_or_default());
    assert_eq!(reason("listing-002")?, "row missing: expected Card { price: 202, changes: 2 }");
    assert_eq!(
        reason("ghost")?,
        "row present but the journal folds to no row: stored Card { price: 1, changes: 1 }"
    );
    assert_eq!(
        reason("listing-000")?,
        "the stored row is damaged: the stored value fails its checksum: it was changed after it was written"
    );
    assert_eq!(r.reconcile(&"nobody".to_owned())?, ReconcileResult::in_sync("nobody"));
    Ok(())
}

#[test]
fn refold_lists_the_keys_of_the_table_and_the_journal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = projected_store(&dir, 3)?;
    store.tamper_row("cards", b"listing-001", None)?; // still in the journal
    store.tamper_row("cards", b"extra", Some(&codec::encode(&Card { price: 1, changes: 1 })?))?;
    let r = refold(store.store());
    assert_eq!(
        r.list_sample_keys(Full, usize::MAX)?,
        vec!["extra", "listing-000", "listing-001", "listing-002"]
    );
    assert_eq!(r.list_sample_keys(Sampled, 2)?, vec!["extra", "listing-000"]);
    assert_eq!(r.list_sample_keys(Full, 0)?, Vec::<String>::new());
    Ok(())
}

#[test]
fn a_full_run_over_refold_finds_exactly_the_tampered_rows() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = projected_store(&dir, 200)?;
    let tampered: BTreeSet<String> = ["listing-007", "listing-100", "listing-199"].map(String::from).into();
    for k in &tampered {
        store.tamper_row("cards", k.as_bytes(), Some(&codec::encode(&Card { price: 0, changes: 9 })?))?;
    }
    let harness =
        builder(store.store(), &ManualClock::new(Timestamp(T0)), &[Arc::new(refold(store.store()))])
            .workers(4)
            .build()?;
    let report = harness.run_once(Full, None, None)?;
    let cards = only(&report)?;
    assert_eq!((cards.sampled, cards.drifted, cards.errors), (200, 3, 0));
    assert_eq!(drifted_set(cards), tampered);
    assert!(cards.drifted_keys.iter().all(|d| d.reason.starts_with("stored row differs: Card { price: 0")));
    Ok(())
}

#[test]
fn refold_counts_an_unreadable_journal_as_an_error() -> TestResult {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Wide {
        fields: [u64; 32],
    }
    impl Event for Wide {
        fn aggregate_id(&self) -> &str {
            "wide"
        }
        fn event_name(&self) -> &str {
            "Wide"
        }
        fn occurred_at(&self) -> Timestamp {
            Timestamp(0)
        }
    }
    let dir = tempfile::tempdir()?;
    let store = projected_store(&dir, 1)?;
    let wrong: RefoldReconciler<Wide, Card> =
        RefoldReconciler::new(Arc::clone(store.store()), CARDS, |_| None);
    let err = wrong.reconcile(&"listing-000".to_owned()).err().ok_or("decoded")?;
    assert!(matches!(err, ReconcileFailure::Upcast(driftless_domain::UpcastError::Decode { .. })), "{err}");
    assert!(err.to_string().starts_with("a journal event cannot be read as a current one: "), "{err}");

    let no_journal_dir = tempfile::tempdir()?;
    let bare = open_with(&no_journal_dir, false)?;
    let r = refold(&bare);
    assert!(matches!(r.list_sample_keys(Full, 10), Err(ReconcileFailure::NoJournal)));
    assert!(matches!(r.reconcile(&"x".to_owned()), Err(ReconcileFailure::NoJournal)));
    Ok(())
}

#[test]
fn the_default_policy_is_used_unless_given() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir)?;
    let harness = builder(&store, &ManualClock::new(Timestamp(T0)), &[]).build()?;
    assert_eq!(harness.policy(), &ReconcilePolicy::default());
    assert_eq!(harness.owner(), "test");
    Ok(())
}
