//! Model-based property test of the projection commit.
//!
//! Random sequences of deliveries (with re-deliveries, conflicting payloads and failing
//! handlers), reopens and dead-letter retries run against a real store and against a plain
//! in-memory model. After every step the read models, the offsets, the dead letters, the
//! journal head, the handler records and the reported outcomes must agree.

use super::support::{
    fast_options, panic_reason, prepare, projectors, refusal, Faults, Op, Tables, TestError, TestResult,
    COUNT, COUNTS, HANDLERS, LOG, LOGS, SUMS,
};
use driftless_domain::Upcasters;
use driftless_domain::{
    EventId, HandlerName, InMemoryOffsetStore, OffsetStore, PayloadHash, PreparedEvent, Timestamp,
};
use driftless_storage::StoreWriter;
use driftless_storage::{
    EventOutcome, EventReport, HandlerOutcome, HandlerOutcomes, KillSwitch, Registry, Store,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
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
    /// Engage a pausing kill switch on a handler's table: it defers events until resumed.
    Pause(usize),
    /// Release the switch of a handler and catch it up from the journal.
    Resume(usize),
    /// Rebuild a handler's table from the journal, with the projectors healed or not.
    Rebuild { handler: usize, heal: bool },
}
fn spec() -> impl Strategy<Value = Spec> {
    let variant = prop_oneof![8 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8)];
    let fail = prop_oneof![6 => Just(0u8), 3 => 1u8..8];
    (0u8..12, variant, fail).prop_map(|(id, variant, fail)| Spec { id, variant, fail })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => proptest::collection::vec(spec(), 1..5).prop_map(Step::Deliver),
        3 => any::<usize>().prop_map(Step::Redeliver),
        2 => any::<usize>().prop_map(Step::Conflict),
        1 => Just(Step::Reopen),
        2 => any::<bool>().prop_map(|heal| Step::Retry { heal }),
        1 => (0..HANDLERS.len()).prop_map(Step::Pause),
        1 => (0..HANDLERS.len()).prop_map(Step::Resume),
        1 => ((0..HANDLERS.len()), any::<bool>()).prop_map(|(handler, heal)| Step::Rebuild { handler, heal }),
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

#[derive(Debug, Default, Clone)]
struct HandlerState {
    /// Events applied (reset by a rebuild).
    applied: u64,
    /// The last journal position processed.
    seen: u64,
    /// Whether a pausing kill switch is engaged.
    paused: bool,
}

/// The model: offsets in an [`InMemoryOffsetStore`], read models, dead letters, the journal
/// and the first payload accepted under each event id in plain collections.
#[derive(Debug, Default)]
struct Model {
    offsets: InMemoryOffsetStore,
    tables: Tables,
    dead: BTreeMap<(String, String), ModelDead>,
    /// The journal: the event at position `i + 1`.
    journal: Vec<PreparedEvent<Op>>,
    /// The first payload accepted under each id: applied or rejected, it is the one that
    /// counts; any other is a conflict.
    accepted: BTreeMap<String, PayloadHash>,
    handlers: BTreeMap<String, HandlerState>,
    /// During a rebuild, the rebuilt handler's dead letters from before it: one the replay
    /// records again keeps its attempts and times.
    prior_dead: BTreeMap<(String, String), ModelDead>,
}

fn handler(name: &str) -> Result<HandlerName, TestError> {
    Ok(HandlerName::new(name)?)
}

impl Model {
    fn head(&self) -> u64 {
        self.journal.len() as u64
    }

    fn state(&mut self, h: &str) -> &mut HandlerState {
        self.handlers.entry(h.to_string()).or_default()
    }

    fn recorded(&self, id: &EventId) -> Result<Vec<Option<PayloadHash>>, TestError> {
        let mut out = Vec::new();
        for h in HANDLERS {
            out.push(self.offsets.get(id, &handler(h)?)?.map(|r| r.payload_hash));
        }
        Ok(out)
    }

    /// Applies `ev` as handler `h`, or dead-letters it. Returns the handler's outcome.
    /// `applied_at` is the time recorded for a new offset.
    fn attempt(
        &mut self,
        h: &str,
        ev: &PreparedEvent<Op>,
        position: u64,
        now: Timestamp,
        applied_at: Timestamp,
        healed: bool,
    ) -> Result<HandlerOutcome, TestError> {
        let id = ev.id.as_str();
        let key = (h.to_string(), id.to_string());
        if h == COUNT && ev.event.amount == 0 {
            let outcome = self.offsets.record_if_absent(&ev.id, &handler(h)?, ev.hash, applied_at)?;
            ensure_eq!(outcome, driftless_domain::OffsetOutcome::Applied, "the model applies only new pairs");
            self.dead.remove(&key);
            return Ok(HandlerOutcome::NotHandled);
        }
        if !healed && ev.event.fails_for(h) {
            let reason = if h == LOG { panic_reason(id) } else { refusal(h, id) };
            if let Some(earlier) = self.prior_dead.get(&key) {
                let mut letter = earlier.clone();
                letter.event = ev.clone();
                letter.reason.clone_from(&reason);
                letter.position = position;
                self.dead.insert(key, letter);
                return Ok(HandlerOutcome::DeadLettered { reason });
            }
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
        let outcome = self.offsets.record_if_absent(&ev.id, &handler(h)?, ev.hash, applied_at)?;
        ensure_eq!(outcome, driftless_domain::OffsetOutcome::Applied, "the model applies only new pairs");
        self.dead.remove(&key);
        self.state(h).applied += 1;
        Ok(HandlerOutcome::Applied)
    }

    /// A live delivery through every handler (`healed`: whether the projectors ignore
    /// `fail_for`) in a batch that began at journal head `start_head`.
    fn deliver(
        &mut self,
        ev: &PreparedEvent<Op>,
        now: Timestamp,
        healed: bool,
        start_head: u64,
    ) -> Result<EventReport, TestError> {
        if let Some(&first) = self.accepted.get(ev.id.as_str()) {
            if first != ev.hash {
                return Ok(EventReport {
                    event_id: ev.id.clone(),
                    position: None,
                    outcome: EventOutcome::Conflict { recorded: first },
                    handlers: HandlerOutcomes::default(),
                });
            }
        }
        let new = self.accepted.insert(ev.id.to_string(), ev.hash).is_none();
        let recorded = self.recorded(&ev.id)?;
        let position = if new || recorded.iter().any(Option::is_none) {
            self.journal.push(ev.clone());
            Some(self.head())
        } else {
            None
        };
        let mut handlers = Vec::new();
        for (i, (h, rec)) in HANDLERS.iter().zip(&recorded).enumerate() {
            let state = self.state(h).clone();
            let outcome = if rec.is_some() {
                HandlerOutcome::Duplicate
            } else if state.paused || state.seen < start_head {
                HandlerOutcome::Deferred
            } else {
                self.attempt(h, ev, position.unwrap_or(0), now, now, healed)?
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

    /// What a batch does to the handlers' progress at its end: every handler that was
    /// neither paused nor behind has seen the whole journal.
    fn end_batch(&mut self, start_head: u64) {
        let head = self.head();
        for h in HANDLERS {
            let state = self.state(h);
            if !state.paused && state.seen >= start_head {
                state.seen = head;
            }
        }
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
        let start_head = self.head();
        let report = self.deliver(&letter.event, now, healed, start_head)?;
        self.end_batch(start_head);
        Ok(Some(report))
    }

    /// Replays journal entries `from..=head` for handler `h`; `kept` gives an offset the
    /// handler had before a rebuild the time it was first applied at.
    fn replay(
        &mut self,
        h: &str,
        from: u64,
        now: Timestamp,
        healed: bool,
        kept: &BTreeMap<String, Timestamp>,
    ) -> Result<(), TestError> {
        let head = self.head();
        for position in from..=head {
            let Some(ev) =
                usize::try_from(position).ok().and_then(|p| self.journal.get(p.wrapping_sub(1))).cloned()
            else {
                continue;
            };
            ensure_eq!(
                self.accepted.get(ev.id.as_str()),
                Some(&ev.hash),
                "the journal holds a conflicting entry"
            );
            if self.offsets.get(&ev.id, &handler(h)?)?.is_none() {
                let applied_at = kept.get(ev.id.as_str()).copied().unwrap_or(now);
                self.attempt(h, &ev, position, now, applied_at, healed)?;
            }
            self.state(h).seen = position;
        }
        Ok(())
    }

    /// Releases the handler's pause and catches it up.
    fn resume(&mut self, h: &str, now: Timestamp) -> TestResult {
        self.state(h).paused = false;
        let from = self.state(h).seen + 1;
        self.replay(h, from, now, false, &BTreeMap::new())
    }

    /// Rebuilds the handler from the whole journal.
    fn rebuild(&mut self, h: &str, now: Timestamp, healed: bool) -> TestResult {
        let name = handler(h)?;
        let mut kept = BTreeMap::new();
        for id in self.accepted.keys() {
            let event_id = EventId::new(id.clone())?;
            if let Some(offset) = self.offsets.get(&event_id, &name)? {
                kept.insert(id.clone(), offset.applied_at);
            }
        }
        for id in kept.keys() {
            self.offsets.remove(&EventId::new(id.clone())?, &name);
        }
        self.prior_dead = self
            .dead
            .iter()
            .filter(|((owner, _), _)| owner == h)
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        self.dead.retain(|(owner, _), _| owner != h);
        self.tables.clear(h);
        let state = self.state(h);
        state.applied = 0;
        state.seen = 0;
        let replayed = self.replay(h, 1, now, healed, &kept);
        self.prior_dead.clear();
        replayed
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
    if any(&HandlerOutcome::Deferred) {
        return EventOutcome::Deferred;
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

/// Every row of a read model, read raw (whatever its kill switch says).
fn raw_table<V: serde::de::DeserializeOwned>(
    store: &Store,
    name: &str,
) -> Result<BTreeMap<String, V>, TestError> {
    let mut out = BTreeMap::new();
    for (k, v) in store.raw_rows(name)? {
        out.insert(String::from_utf8(k)?, driftless_domain::codec::decode(&v)?);
    }
    Ok(out)
}

/// Compares everything observable with the model.
fn compare(store: &Store, model: &Model, step: usize) -> TestResult {
    let tables = Tables {
        sums: raw_table(store, SUMS.name())?,
        counts: raw_table(store, COUNTS.name())?,
        logs: raw_table(store, LOGS.name())?,
    };
    ensure_eq!(tables, model.tables, "read models after step {step}");

    for id in model.accepted.keys() {
        let event_id = EventId::new(id.clone())?;
        for h in HANDLERS {
            let got = store.offset(id, h)?;
            let want = model.offsets.get(&event_id, &handler(h)?)?;
            ensure_eq!(got, want, "offset of ({id}, {h}) after step {step}");
        }
    }
    // One offset row per id ever accepted, applied or not.
    ensure_eq!(store.offset_count()?, model.accepted.len() as u64, "event ids recorded after step {step}");

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

    ensure_eq!(store.journal_head()?, model.head(), "journal head after step {step}");
    let journal = store.journal_range(1, usize::MAX)?;
    let got: Vec<(u64, PayloadHash)> =
        journal.iter().map(|e| (e.position, PayloadHash::of_bytes(&e.body))).collect();
    let want: Vec<(u64, PayloadHash)> = model.journal.iter().zip(1..).map(|(e, p)| (p, e.hash)).collect();
    ensure_eq!(got, want, "journal after step {step}");
    for h in HANDLERS {
        let rec = store.handler_record(h)?.ok_or("a handler record is missing")?;
        let state = model.handlers.get(h).cloned().unwrap_or_default();
        let dead = model.dead.keys().filter(|(name, _)| name == h).count() as u64;
        ensure_eq!(rec.dead_letters, dead, "dead-letter count of {h} after step {step}");
        ensure_eq!(rec.applied, state.applied, "applied count of {h} after step {step}");
        ensure_eq!(rec.seen, state.seen, "journal progress of {h} after step {step}");
        ensure_eq!(rec.paused, state.paused, "pause of {h} after step {step}");
    }
    Ok(())
}

/// The table of each handler, in [`HANDLERS`] order.
const TABLES: [&str; 3] = ["sums", "counts", "logs"];

fn run(steps: &[Step], coverage: &mut Coverage) -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = Faults::default();
    let mut harness = Harness::open(&dir.path().join("model.redb"), &faults)?;
    let mut model = Model::default();
    let mut history: Vec<Op> = Vec::new();
    let name_of = |i: usize| HANDLERS.get(i).copied().ok_or("no such handler");
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
            Step::Pause(i) => {
                let (store, _) = harness.parts()?;
                let table = TABLES.get(*i).ok_or("no such table")?;
                store.set_kill_switch(table, Some(KillSwitch { engaged_at: now, pause_projection: true }))?;
                model.state(name_of(*i)?).paused = true;
                coverage.paused += 1;
                Vec::new()
            }
            Step::Resume(i) => {
                let (store, registry) = harness.parts()?;
                let table = TABLES.get(*i).ok_or("no such table")?;
                store.set_kill_switch(table, None)?;
                let report = store.catch_up(registry, *i, &|| now)?;
                ensure_eq!(report.conflicts, 0, "conflicts in the catch-up at step {n}");
                coverage.caught_up += report.replayed;
                model.resume(name_of(*i)?, now)?;
                Vec::new()
            }
            Step::Rebuild { handler: i, heal } => {
                let (store, registry) = harness.parts()?;
                faults.set_healed(*heal);
                let report = store.rebuild(registry, *i, now, &mut |_, _| {});
                faults.set_healed(false);
                ensure_eq!(report?.conflicts, 0, "conflicts in the rebuild at step {n}");
                model.rebuild(name_of(*i)?, now, *heal)?;
                coverage.rebuilt += 1;
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
            let start_head = model.head();
            for (ev, got) in prepared.iter().zip(&report.events) {
                let first = model.accepted.get(ev.id.as_str()).copied();
                if first.is_some_and(|h| h != ev.hash) && model.recorded(&ev.id)?.iter().all(Option::is_none)
                {
                    coverage.conflict_unapplied += 1;
                }
                let want = model.deliver(ev, now, false, start_head)?;
                ensure_eq!(*got, want, "report of {} at step {n}", ev.id);
                coverage.count(got, false);
            }
            model.end_batch(start_head);
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
    deferred: u64,
    paused: u64,
    caught_up: u64,
    rebuilt: u64,
    /// A conflict with a payload no handler applied (all rejected or deferred it).
    conflict_unapplied: u64,
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
        if report.handlers.iter().any(|(_, o)| *o == HandlerOutcome::Deferred) {
            self.deferred += 1;
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
            self.deferred,
            self.paused,
            self.caught_up,
            self.rebuilt,
            self.conflict_unapplied,
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
        // A paused handler defers; another payload under a deferred id is a conflict.
        Step::Pause(1),
        Step::Deliver(vec![s(4, 0, 0), s(5, 0, 0b010)]),
        Step::Deliver(vec![s(4, 1, 0)]),
        Step::Retry { heal: true },
        Step::Resume(1),
        // A rejected-only id, then another payload under it: a conflict.
        Step::Deliver(vec![s(6, 0, 0b111)]),
        Step::Deliver(vec![s(6, 1, 0)]),
        Step::Rebuild { handler: 0, heal: true },
        Step::Rebuild { handler: 2, heal: false },
        Step::Deliver(vec![s(6, 1, 0), s(6, 0, 0)]),
        Step::Reopen,
        Step::Rebuild { handler: 1, heal: false },
    ];
    let mut coverage = Coverage::default();
    run(&steps, &mut coverage)?;
    ensure!(coverage.all_met(), "the fixed sequence missed a case: {coverage:?}");
    Ok(())
}
