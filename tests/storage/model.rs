//! Model-based property test of the projection commit.
//!
//! Random sequences of deliveries (with re-deliveries, conflicting payloads and failing
//! handlers), reopens and dead-letter retries run against a real store and against a plain
//! in-memory model. After every step the read models, the offsets, the dead letters, the
//! journal head, the handler records and the reported outcomes must agree.

use super::support::{
    fast_options, panic_reason, prepare, projectors, refusal, Faults, Op, Tables, TestError, TestResult,
    COUNT, HANDLERS, LOG,
};
use driftless_domain::Upcasters;
use driftless_domain::{
    EventId, HandlerName, InMemoryOffsetStore, OffsetStore, PayloadHash, PreparedEvent, Timestamp,
};
use driftless_storage::StoreWriter;
use driftless_storage::{EventOutcome, EventReport, HandlerOutcome, HandlerOutcomes, Registry, Store};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One generated event: which id, which payload variant, which handlers fail.
#[derive(Debug, Clone)]
struct Spec {
    id: u8,
    variant: u8,
    fail: u8,
}

#[derive(Debug, Clone)]
enum Step {
    /// Deliver a batch of events in one `project`.
    Deliver(Vec<Spec>),
    /// Deliver an earlier event again, unchanged.
    Redeliver(usize),
    /// Deliver an earlier event's id with another payload.
    Conflict(usize),
    /// Drop the store, open it again and register the projectors again.
    Reopen,
    /// Retry every dead letter, with the projectors healed or not.
    Retry { heal: bool },
}

fn spec() -> impl Strategy<Value = Spec> {
    let variant = prop_oneof![8 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)];
    let fail = prop_oneof![6 => Just(0u8), 3 => 1u8..8];
    (0u8..12, variant, fail).prop_map(|(id, variant, fail)| Spec { id, variant, fail })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => proptest::collection::vec(spec(), 1..5).prop_map(Step::Deliver),
        3 => any::<usize>().prop_map(Step::Redeliver),
        1 => any::<usize>().prop_map(Step::Conflict),
        1 => Just(Step::Reopen),
        2 => any::<bool>().prop_map(|heal| Step::Retry { heal }),
    ]
}

/// The event a spec stands for. Ids 0..8 are explicit (`e0`..`e7`); 8 and 9 derive their id
/// from key and time, so their variants are distinct events; 10 is explicitly the id that
/// its variant 0 would derive (so its other variants carry another time than the id), and
/// 11 is explicit and shaped like a derived id whose time is never the event's.
fn op_of(spec: &Spec) -> Op {
    let n = u64::from(spec.id);
    let v = u64::from(spec.variant);
    let amount = i64::from(u8::try_from((n * 7 + v * 5) % 11).unwrap_or(0)) - 5;
    Op {
        key: format!("k{}", n % 3),
        at: 1_000 + n * 10 + v,
        id: match spec.id {
            0..8 => Some(format!("e{}", spec.id)),
            10 => Some("k1:1100:Op".to_string()),
            11 => Some("odd:5:Op".to_string()),
            _ => None,
        },
        amount,
        fail_for: HANDLERS
            .iter()
            .enumerate()
            .filter(|(bit, _)| spec.fail & (1 << bit) != 0)
            .map(|(_, h)| (*h).to_string())
            .collect(),
    }
}

#[derive(Debug, Clone)]
struct ModelDead {
    event: PreparedEvent<Op>,
    reason: String,
    attempts: u32,
    first_failed_at: Timestamp,
    last_failed_at: Timestamp,
    position: u64,
}

#[derive(Debug, Default)]
struct HandlerCounters {
    applied: u64,
}

/// The model: offsets in an [`InMemoryOffsetStore`], read models and dead letters in maps.
#[derive(Debug, Default)]
struct Model {
    offsets: InMemoryOffsetStore,
    tables: Tables,
    dead: BTreeMap<(String, String), ModelDead>,
    head: u64,
    ids: BTreeSet<String>,
    counters: BTreeMap<String, HandlerCounters>,
}

fn handler(name: &str) -> Result<HandlerName, TestError> {
    Ok(HandlerName::new(name)?)
}

impl Model {
    fn recorded(&self, id: &EventId) -> Result<Vec<Option<PayloadHash>>, TestError> {
        let mut out = Vec::new();
        for h in HANDLERS {
            out.push(self.offsets.get(id, &handler(h)?)?.map(|r| r.payload_hash));
        }
        Ok(out)
    }

    /// Applies `ev` as handler `h`, or dead-letters it. Returns the handler's outcome.
    fn attempt(
        &mut self,
        h: &str,
        ev: &PreparedEvent<Op>,
        position: u64,
        now: Timestamp,
        healed: bool,
    ) -> Result<HandlerOutcome, TestError> {
        let id = ev.id.as_str();
        let key = (h.to_string(), id.to_string());
        if h == COUNT && ev.event.amount == 0 {
            let outcome = self.offsets.record_if_absent(&ev.id, &handler(h)?, ev.hash, now)?;
            ensure_eq!(outcome, driftless_domain::OffsetOutcome::Applied, "the model applies only new pairs");
            self.dead.remove(&key);
            return Ok(HandlerOutcome::NotHandled);
        }
        if !healed && ev.event.fails_for(h) {
            let reason = if h == LOG { panic_reason(id) } else { refusal(h, id) };
            let letter = self.dead.entry(key).or_insert_with(|| ModelDead {
                event: ev.clone(),
                reason: String::new(),
                attempts: 0,
                first_failed_at: now,
                last_failed_at: now,
                position,
            });
            letter.event = ev.clone();
            letter.reason.clone_from(&reason);
            letter.attempts += 1;
            letter.last_failed_at = now;
            letter.position = position;
            return Ok(HandlerOutcome::DeadLettered { reason });
        }
        self.tables.apply(h, id, &ev.event);
        let outcome = self.offsets.record_if_absent(&ev.id, &handler(h)?, ev.hash, now)?;
        ensure_eq!(outcome, driftless_domain::OffsetOutcome::Applied, "the model applies only new pairs");
        self.dead.remove(&key);
        self.counters.entry(h.to_string()).or_default().applied += 1;
        Ok(HandlerOutcome::Applied)
    }

    /// A live delivery through every handler (`healed`: whether the projectors ignore
    /// `fail_for`).
    fn deliver(
        &mut self,
        ev: &PreparedEvent<Op>,
        now: Timestamp,
        healed: bool,
    ) -> Result<EventReport, TestError> {
        self.ids.insert(ev.id.to_string());
        let recorded = self.recorded(&ev.id)?;
        if let Some(&other) = recorded.iter().flatten().find(|h| **h != ev.hash) {
            return Ok(EventReport {
                event_id: ev.id.clone(),
                position: None,
                outcome: EventOutcome::Conflict { recorded: other },
                handlers: HandlerOutcomes::default(),
            });
        }
        let position = if recorded.iter().any(Option::is_none) {
            self.head += 1;
            Some(self.head)
        } else {
            None
        };
        let mut handlers = Vec::new();
        for (i, (h, rec)) in HANDLERS.iter().zip(&recorded).enumerate() {
            let outcome = if rec.is_some() {
                HandlerOutcome::Duplicate
            } else {
                self.attempt(h, ev, position.unwrap_or(0), now, healed)?
            };
            handlers.push((i, outcome));
        }
        Ok(EventReport {
            event_id: ev.id.clone(),
            position,
            outcome: summary(&handlers),
            handlers: handlers.into(),
        })
    }

    /// A dead-letter retry: the stored event delivered again, through every handler (the
    /// ones that applied it see a duplicate). `None` when there is no such dead letter (an
    /// earlier retry of the same event cleared it).
    fn retry(
        &mut self,
        h: &str,
        id: &str,
        now: Timestamp,
        healed: bool,
    ) -> Result<Option<EventReport>, TestError> {
        let Some(letter) = self.dead.get(&(h.to_string(), id.to_string())).cloned() else { return Ok(None) };
        self.deliver(&letter.event, now, healed).map(Some)
    }
}

/// The overall outcome: applied if any handler applied it; rejected if every handler that
/// tried it failed (a handler not interested in it did not try); applied if some handler
/// merely recorded it as not handled; a duplicate if no handler ran.
fn summary(handlers: &[(usize, HandlerOutcome)]) -> EventOutcome {
    let any = |want: &HandlerOutcome| handlers.iter().any(|(_, o)| o == want);
    if any(&HandlerOutcome::Applied) {
        return EventOutcome::Applied;
    }
    if let Some((_, HandlerOutcome::DeadLettered { reason })) =
        handlers.iter().find(|(_, o)| matches!(o, HandlerOutcome::DeadLettered { .. }))
    {
        return EventOutcome::Rejected { reason: reason.clone() };
    }
    if any(&HandlerOutcome::NotHandled) {
        return EventOutcome::Applied;
    }
    EventOutcome::Duplicate
}

struct Harness {
    path: std::path::PathBuf,
    faults: Faults,
    store: Option<StoreWriter>,
    registry: Option<Registry<Op>>,
}

impl Harness {
    fn open(path: &Path, faults: &Faults) -> Result<Self, TestError> {
        let mut h = Self { path: path.to_path_buf(), faults: faults.clone(), store: None, registry: None };
        h.reopen()?;
        Ok(h)
    }

    fn reopen(&mut self) -> TestResult {
        self.registry = None;
        self.store = None;
        let store = StoreWriter::open(&self.path, fast_options())?;
        let registry = store.register(projectors(&self.faults)?, &[], Upcasters::new())?;
        ensure!(
            registry.needs_rebuild.is_empty(),
            "re-registering asked for rebuilds: {:?}",
            registry.needs_rebuild
        );
        self.store = Some(store);
        self.registry = Some(registry);
        Ok(())
    }

    fn parts(&self) -> Result<(&StoreWriter, &Registry<Op>), TestError> {
        match (&self.store, &self.registry) {
            (Some(s), Some(r)) => Ok((s, r)),
            _ => Err("the store is not open".into()),
        }
    }
}

/// Compares everything observable with the model.
fn compare(store: &Store, model: &Model, step: usize) -> TestResult {
    let tables = Tables::read(store)?;
    ensure_eq!(tables, model.tables, "read models after step {step}");

    let mut with_offsets = 0u64;
    for id in &model.ids {
        let event_id = EventId::new(id.clone())?;
        let mut any = false;
        for h in HANDLERS {
            let got = store.offset(id, h)?;
            let want = model.offsets.get(&event_id, &handler(h)?)?;
            ensure_eq!(got, want, "offset of ({id}, {h}) after step {step}");
            any |= got.is_some();
        }
        with_offsets += u64::from(any);
    }
    ensure_eq!(store.offset_count()?, with_offsets, "event ids with offsets after step {step}");

    let got: Vec<_> = store
        .dead_letters(None)?
        .into_iter()
        .map(|d| {
            (
                (d.handler, d.event_id),
                (
                    d.reason,
                    d.attempts,
                    d.first_failed_at,
                    d.last_failed_at,
                    d.position,
                    PayloadHash::of_bytes(&d.body),
                ),
            )
        })
        .collect();
    let want: Vec<_> = model
        .dead
        .iter()
        .map(|(k, d)| {
            (
                k.clone(),
                (d.reason.clone(), d.attempts, d.first_failed_at, d.last_failed_at, d.position, d.event.hash),
            )
        })
        .collect();
    ensure_eq!(got, want, "dead letters after step {step}");

    ensure_eq!(store.journal_head()?, model.head, "journal head after step {step}");
    for h in HANDLERS {
        let rec = store.handler_record(h)?.ok_or("a handler record is missing")?;
        let dead = model.dead.keys().filter(|(name, _)| name == h).count() as u64;
        ensure_eq!(rec.dead_letters, dead, "dead-letter count of {h} after step {step}");
        let applied = model.counters.get(h).map_or(0, |c| c.applied);
        ensure_eq!(rec.applied, applied, "applied count of {h} after step {step}");
        ensure_eq!(rec.seen, model.head, "journal progress of {h} after step {step}");
    }
    Ok(())
}

fn run(steps: &[Step], coverage: &mut Coverage) -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = Faults::default();
    let mut harness = Harness::open(&dir.path().join("model.redb"), &faults)?;
    let mut model = Model::default();
    let mut history: Vec<Op> = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let now = Timestamp(1_000_000 + n as u64);
        let batch: Vec<Op> = match step {
            Step::Deliver(specs) => specs.iter().map(op_of).collect(),
            Step::Redeliver(i) => {
                history.get(i.checked_rem(history.len()).unwrap_or(0)).cloned().into_iter().collect()
            }
            Step::Conflict(i) => history
                .get(i.checked_rem(history.len()).unwrap_or(0))
                .cloned()
                .map(|mut op| {
                    op.amount += 1_000;
                    op
                })
                .into_iter()
                .collect(),
            Step::Reopen => {
                harness.reopen()?;
                coverage.reopened += 1;
                Vec::new()
            }
            Step::Retry { heal } => {
                let (store, registry) = harness.parts()?;
                faults.set_healed(*heal);
                let letters = store.dead_letters(None)?;
                let mut result = Ok(());
                for letter in letters {
                    let i = registry
                        .handler_index(&letter.handler)
                        .ok_or("a dead letter of an unknown handler")?;
                    let got = store.retry_dead_letter(registry, i, &letter.event_id, now);
                    let want = model.retry(&letter.handler, &letter.event_id, now, *heal);
                    result = (|| {
                        let got = got?;
                        if let Some(report) = &got {
                            coverage.count(report, true);
                        }
                        ensure_eq!(
                            got,
                            want?,
                            "retry of ({}, {}) at step {n}",
                            letter.handler,
                            letter.event_id
                        );
                        Ok::<(), TestError>(())
                    })();
                    if result.is_err() {
                        break;
                    }
                }
                faults.set_healed(false);
                result?;
                Vec::new()
            }
        };
        if !batch.is_empty() {
            let (store, registry) = harness.parts()?;
            let prepared: Vec<PreparedEvent<Op>> =
                batch.iter().cloned().map(prepare).collect::<Result<_, _>>()?;
            let report = store.project(registry, &prepared, now)?;
            ensure_eq!(report.committed_at, now, "commit time of step {n}");
            ensure_eq!(report.events.len(), prepared.len(), "reports of step {n}");
            for (ev, got) in prepared.iter().zip(&report.events) {
                let want = model.deliver(ev, now, false)?;
                ensure_eq!(*got, want, "report of {} at step {n}", ev.id);
                coverage.count(got, false);
            }
            history.extend(batch);
        }
        let (store, _) = harness.parts()?;
        compare(store, &model, n)?;
    }
    Ok(())
}

/// How often each case was met, over a whole property run.
#[derive(Debug, Default)]
struct Coverage {
    applied: u64,
    duplicate: u64,
    conflict: u64,
    rejected: u64,
    partly_failed: u64,
    retried_applied: u64,
    retried_rejected: u64,
    reopened: u64,
    not_handled: u64,
}

impl Coverage {
    fn count(&mut self, report: &EventReport, retry: bool) {
        match (&report.outcome, retry) {
            (EventOutcome::Applied, false) => self.applied += 1,
            (EventOutcome::Applied, true) => self.retried_applied += 1,
            (EventOutcome::Duplicate, _) => self.duplicate += 1,
            (EventOutcome::Conflict { .. }, _) => self.conflict += 1,
            (EventOutcome::Rejected { .. }, false) => self.rejected += 1,
            (EventOutcome::Rejected { .. }, true) => self.retried_rejected += 1,
            (EventOutcome::Deferred | EventOutcome::Refused { .. }, _) => {}
        }
        let failed = report.handlers.iter().any(|(_, o)| matches!(o, HandlerOutcome::DeadLettered { .. }));
        if failed && report.outcome == EventOutcome::Applied {
            self.partly_failed += 1;
        }
        if report.handlers.iter().any(|(_, o)| *o == HandlerOutcome::NotHandled) {
            self.not_handled += 1;
        }
    }

    fn all_met(&self) -> bool {
        [
            self.applied,
            self.duplicate,
            self.conflict,
            self.rejected,
            self.partly_failed,
            self.retried_applied,
            self.retried_rejected,
            self.reopened,
            self.not_handled,
        ]
        .iter()
        .all(|n| *n > 0)
    }
}

#[test]
fn the_store_behaves_like_the_model() -> TestResult {
    let config = ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let coverage = std::cell::RefCell::new(Coverage::default());
    let result = runner.run(&proptest::collection::vec(step(), 1..30), |steps| {
        run(&steps, &mut coverage.borrow_mut()).map_err(|e| TestCaseError::fail(e.to_string()))
    });
    if let Err(e) = result {
        return Err(format!("{e}").into());
    }
    let coverage = coverage.into_inner();
    println!("model test coverage: {coverage:?}");
    ensure!(coverage.all_met(), "the generator missed a case: {coverage:?}");
    Ok(())
}

/// A fixed sequence that hits every branch of the model at least once, so that a weak
/// random draw cannot hide a missing case.
#[test]
fn a_fixed_sequence_covers_every_case() -> TestResult {
    let s = |id, variant, fail| Spec { id, variant, fail };
    let steps = vec![
        Step::Deliver(vec![s(0, 0, 0), s(1, 0, 0b001), s(2, 0, 0b111), s(0, 0, 0), s(2, 0, 0b111)]),
        Step::Deliver(vec![s(0, 1, 0), s(3, 0, 0b100), s(8, 0, 0), s(8, 1, 0), s(7, 0, 0b011)]),
        // An explicit id carrying another time than the event's, then its other payloads.
        Step::Deliver(vec![s(10, 1, 0), s(10, 0, 0), s(11, 0, 0), s(11, 2, 0)]),
        Step::Retry { heal: false },
        Step::Reopen,
        Step::Deliver(vec![s(2, 0, 0b111), s(2, 1, 0)]),
        Step::Conflict(0),
        Step::Retry { heal: true },
        Step::Redeliver(5),
        Step::Reopen,
        Step::Deliver(vec![s(1, 0, 0b001), s(3, 0, 0b100)]),
    ];
    let mut coverage = Coverage::default();
    run(&steps, &mut coverage)?;
    ensure!(coverage.all_met(), "the fixed sequence missed a case: {coverage:?}");
    Ok(())
}
