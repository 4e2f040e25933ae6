//! The store and the listing projectors against the reference model, on arbitrary
//! sequences of operations.
//!
//! The operations: deliver a batch of events from a small space of listings and ids,
//! re-deliver an earlier event, deliver an earlier id with another payload (a conflict),
//! make projectors fail on chosen events (besides the business rules' own rejections),
//! close and reopen the store on the same bytes, and retry every dead letter, healed or not.
//!
//! The model: one [`ListingModel`] per handler, fed exactly the events that handler applied
//! (a handler decides over its own tables, so its rows are the fold of what it applied), and
//! the contract's [`ListingModel`] fed every delivery, which the store must match exactly
//! while no injected failure has fired. After every step the read models, the reported
//! outcomes, the offsets, the dead letters, the journal head and the handler records must
//! agree with the model, and every stored value must pass its checksum.
#![no_main]

use driftless_storage::StoreWriter;
use driftless_domain::Upcasters;
use arbitrary::Arbitrary;
use driftless_domain::{
    ApplyError, Event, HandlerName, PayloadHash, PreparedEvent, ProjectionContext, Projector, TableId,
    Timestamp, Views,
};
use driftless_listings::{
    DistrictStatsProjector, ListingCardProjector, ListingEvent, ListingEventKind, ListingModel, Outcome,
    DISTRICT_STATS, LISTING_CARD,
};
use driftless_storage::{
    Durability, EventOutcome, EventReport, HandlerOutcome, ReadAnswer, Registry, StorageBackend, Store,
    StoreOptions,
};
use libfuzzer_sys::fuzz_target;
use redb::backends::InMemoryBackend;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One event, from a small space so that ids and listings collide often.
#[derive(Arbitrary, Debug, Clone)]
struct Ev {
    listing: u8,
    kind: u8,
    value: u8,
    at: u8,
    id: u8,
    /// 1 in 8: bit 0 makes `listing_card` fail on it, bit 1 `district_stats`.
    fail: u8,
}

#[derive(Arbitrary, Debug, Clone)]
enum Step {
    Deliver(Vec<Ev>),
    Redeliver(u8),
    Conflict(u8),
    Reopen,
    Retry { heal: bool },
}

const HANDLERS: [&str; 2] =
    [driftless_listings::LISTING_CARD_HANDLER, driftless_listings::DISTRICT_STATS_HANDLER];
const MAX_STEPS: usize = 48;
const MAX_BATCH: usize = 8;

fn event_of(ev: &Ev) -> ListingEvent {
    let listing = format!("l{}", ev.listing % 4);
    let kind = match ev.kind % 5 {
        0 => ListingEventKind::ListingCreated {
            title: format!("Flat {}", ev.value % 2),
            price: (u64::from(ev.value % 4) * 100).into(),
            district: format!("D{}", ev.value % 3),
        },
        1 => ListingEventKind::ListingPriceChanged { price: u64::from(ev.value % 8) * 50 },
        2 => ListingEventKind::ListingPublished,
        3 => ListingEventKind::ListingArchived,
        _ => ListingEventKind::InquiryReceived { inquiry_id: format!("q{}", ev.value % 4) },
    };
    let event = ListingEvent::new(listing, u64::from(ev.at % 16), kind);
    // A quarter of the events carry one of a few explicit ids.
    if ev.id % 4 == 0 {
        event.with_event_id(format!("x{}", (ev.id / 4) % 4))
    } else {
        event
    }
}

/// Which handlers fail on which event ids; healed, nothing fails.
#[derive(Debug, Default)]
struct Plan {
    fail: Mutex<HashMap<String, u8>>,
    healed: AtomicBool,
}

impl Plan {
    fn fails(&self, handler: usize, id: &str) -> bool {
        !self.healed.load(Ordering::SeqCst)
            && self.fail.lock().expect("plan lock").get(id).is_some_and(|m| m & (1 << handler) != 0)
    }

    fn set(&self, id: &str, mask: u8) {
        self.fail.lock().expect("plan lock").insert(id.to_string(), mask);
    }
}

fn injected(handler: usize, id: &str) -> String {
    format!("injected failure of {} on {id}", HANDLERS[handler])
}

/// A listing projector that fails where the plan says.
struct Flaky<P> {
    inner: P,
    index: usize,
    plan: Arc<Plan>,
}

impl<P: Projector<ListingEvent>> Projector<ListingEvent> for Flaky<P> {
    fn handler_name(&self) -> HandlerName {
        self.inner.handler_name()
    }

    fn tables(&self) -> Vec<TableId> {
        self.inner.tables()
    }

    fn apply(
        &self,
        e: &ListingEvent,
        ctx: &ProjectionContext,
        views: &mut Views<'_>,
    ) -> Result<(), ApplyError> {
        if self.plan.fails(self.index, &e.event_id) {
            return Err(ApplyError::rejected(injected(self.index, &e.event_id)));
        }
        self.inner.apply(e, ctx, views)
    }
}

/// The "disk": bytes that outlive every store opened on them.
#[derive(Debug)]
struct Disk(Arc<InMemoryBackend>);

impl StorageBackend for Disk {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }
}

struct Harness {
    disk: Arc<InMemoryBackend>,
    plan: Arc<Plan>,
    store: Option<Store>,
    registry: Option<Registry<ListingEvent>>,
}

impl Harness {
    fn new(plan: &Arc<Plan>) -> Self {
        let mut h =
            Self { disk: Arc::new(InMemoryBackend::new()), plan: plan.clone(), store: None, registry: None };
        h.reopen();
        h
    }

    fn reopen(&mut self) {
        self.registry = None;
        self.store = None;
        let options = StoreOptions {
            durability: Durability::Eventual,
            journal: true,
            cache_bytes: Some(1 << 20),
            check_integrity_on_open: true,
        };
        let store = StoreWriter::open_with_backend(Disk(self.disk.clone()), options).expect("the store opens");
        let projectors: Vec<Arc<dyn Projector<ListingEvent>>> = vec![
            Arc::new(Flaky { inner: ListingCardProjector, index: 0, plan: self.plan.clone() }),
            Arc::new(Flaky { inner: DistrictStatsProjector, index: 1, plan: self.plan.clone() }),
        ];
        let registry = store.register(projectors, &[], Upcasters::new()).expect("the projectors register");
        assert!(registry.needs_rebuild.is_empty(), "re-registering asked for rebuilds");
        self.store = Some(store);
        self.registry = Some(registry);
    }

    fn parts(&self) -> (&Store, &Registry<ListingEvent>) {
        (self.store.as_ref().expect("open"), self.registry.as_ref().expect("registered"))
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Letter {
    reason: String,
    attempts: u32,
    event: ListingEvent,
    position: u64,
}

#[derive(Default)]
struct Model {
    /// Per handler: the fold of exactly the events it applied.
    folds: [ListingModel; 2],
    /// The contract: every delivery, as one consumer.
    contract: ListingModel,
    /// Whether an injected failure has fired (the contract model no longer applies).
    diverged: bool,
    dead: BTreeMap<(String, String), Letter>,
    head: u64,
    applied: [u64; 2],
    ids: BTreeSet<String>,
}

fn hash_of(e: &ListingEvent) -> PayloadHash {
    PayloadHash::of_bytes(&driftless_domain::codec::stable_encode(e).expect("an event encodes"))
}

impl Model {
    fn deliver(&mut self, e: &ListingEvent, plan: &Plan) -> EventReport {
        let id = e.event_id.clone();
        self.ids.insert(id.clone());
        let contract = self.contract.apply(e);
        let applied: Vec<Option<&ListingEvent>> = self.folds.iter().map(|f| f.applied_event(&id)).collect();
        let event_id = e.event_id();
        if let Some(other) = applied.iter().flatten().find(|x| **x != e) {
            let recorded = hash_of(other);
            if !self.diverged {
                assert_eq!(contract, Outcome::Conflict { event_id: id.clone() }, "the contract on {id}");
            }
            return EventReport {
                event_id,
                position: None,
                outcome: EventOutcome::Conflict { recorded },
                handlers: Vec::new().into(),
            };
        }
        let position = if applied.iter().any(Option::is_none) {
            self.head += 1;
            Some(self.head)
        } else {
            None
        };
        let already: Vec<bool> = applied.iter().map(Option::is_some).collect();
        let mut handlers = Vec::new();
        for (h, done) in already.into_iter().enumerate() {
            let outcome = if done {
                HandlerOutcome::Duplicate
            } else {
                let failure = if plan.fails(h, &id) {
                    self.diverged = true;
                    Some(injected(h, &id))
                } else {
                    match self.folds[h].apply(e) {
                        Outcome::Applied => None,
                        Outcome::Rejected(r) => Some(r.to_string()),
                        other => panic!("model bug: handler {h} saw {other:?} for {id}"),
                    }
                };
                let key = (HANDLERS[h].to_string(), id.clone());
                match failure {
                    None => {
                        self.applied[h] += 1;
                        self.dead.remove(&key);
                        HandlerOutcome::Applied
                    }
                    Some(reason) => {
                        let letter = self.dead.entry(key).or_insert_with(|| Letter {
                            reason: String::new(),
                            attempts: 0,
                            event: e.clone(),
                            position: 0,
                        });
                        letter.reason.clone_from(&reason);
                        letter.attempts += 1;
                        letter.event = e.clone();
                        letter.position = position.unwrap_or(0);
                        HandlerOutcome::DeadLettered { reason }
                    }
                }
            };
            handlers.push((h, outcome));
        }
        let outcome = if handlers.iter().any(|(_, o)| *o == HandlerOutcome::Applied) {
            EventOutcome::Applied
        } else if let Some((_, HandlerOutcome::DeadLettered { reason })) =
            handlers.iter().find(|(_, o)| matches!(o, HandlerOutcome::DeadLettered { .. }))
        {
            EventOutcome::Rejected { reason: reason.clone() }
        } else {
            EventOutcome::Duplicate
        };
        if !self.diverged {
            let want = match &contract {
                Outcome::Applied => EventOutcome::Applied,
                Outcome::Duplicate => EventOutcome::Duplicate,
                Outcome::Rejected(r) => EventOutcome::Rejected { reason: r.to_string() },
                Outcome::Conflict { .. } => panic!("the contract saw a conflict the handlers did not"),
            };
            assert_eq!(outcome, want, "the handlers and the contract disagree on {id}");
        }
        EventReport { event_id, position, outcome, handlers: handlers.into() }
    }
}

fn read_all<V: driftless_domain::ViewValue>(
    store: &Store,
    def: &driftless_domain::TableDef<String, V>,
) -> BTreeMap<String, V> {
    match store.read(def).expect("the read model opens") {
        ReadAnswer::Ready(repo) => {
            repo.iter().expect("iteration starts").map(|row| row.expect("a row reads")).collect()
        }
        ReadAnswer::UseSourceOfTruth { read_model, .. } => panic!("{read_model} is not serving"),
    }
}

fn compare(store: &Store, model: &Model, step: usize) {
    let cards = read_all(store, &LISTING_CARD);
    assert_eq!(cards, model.folds[0].listing_cards(), "listing_card after step {step}");
    let stats = read_all(store, &DISTRICT_STATS);
    assert_eq!(stats, model.folds[1].district_stats(), "district_stats after step {step}");
    if !model.diverged {
        assert_eq!(cards, model.contract.listing_cards(), "listing_card vs the contract after step {step}");
        assert_eq!(
            stats,
            model.contract.district_stats(),
            "district_stats vs the contract after step {step}"
        );
    }
    for id in &model.ids {
        for (h, name) in HANDLERS.iter().enumerate() {
            let got = store.offset(id, name).expect("an offset reads").map(|o| o.payload_hash);
            let want = model.folds[h].applied_event(id).map(hash_of);
            assert_eq!(got, want, "offset of ({id}, {name}) after step {step}");
        }
    }
    let got: BTreeMap<(String, String), (String, u32, PayloadHash, u64)> = store
        .dead_letters(None)
        .expect("dead letters read")
        .into_iter()
        .map(|d| {
            ((d.handler, d.event_id), (d.reason, d.attempts, PayloadHash::of_bytes(&d.body), d.position))
        })
        .collect();
    let want: BTreeMap<(String, String), (String, u32, PayloadHash, u64)> = model
        .dead
        .iter()
        .map(|(k, l)| (k.clone(), (l.reason.clone(), l.attempts, hash_of(&l.event), l.position)))
        .collect();
    assert_eq!(got, want, "dead letters after step {step}");
    assert_eq!(store.journal_head().expect("the head reads"), model.head, "journal head after step {step}");
    for (h, name) in HANDLERS.iter().enumerate() {
        let rec = store.handler_record(name).expect("a record reads").expect("a record exists");
        assert_eq!(rec.applied, model.applied[h], "applied count of {name} after step {step}");
        let dead = model.dead.keys().filter(|(n, _)| n == name).count() as u64;
        assert_eq!(rec.dead_letters, dead, "dead-letter count of {name} after step {step}");
        assert_eq!(rec.seen, model.head, "journal progress of {name} after step {step}");
    }
    let scan = store.scan_values().expect("the scan runs");
    assert!(scan.damaged.is_empty(), "damaged values after step {step}: {:?}", scan.damaged);
}

fn prepare(e: &ListingEvent) -> PreparedEvent<ListingEvent> {
    PreparedEvent::new(e.clone()).expect("an event prepares")
}

fuzz_target!(|steps: Vec<Step>| {
    let plan = Arc::new(Plan::default());
    let mut harness = Harness::new(&plan);
    let mut model = Model::default();
    let mut history: Vec<ListingEvent> = Vec::new();
    for (n, step) in steps.iter().take(MAX_STEPS).enumerate() {
        let now = Timestamp(1_000_000 + n as u64);
        let batch: Vec<ListingEvent> = match step {
            Step::Deliver(evs) => evs
                .iter()
                .take(MAX_BATCH)
                .map(|ev| {
                    let e = event_of(ev);
                    plan.set(&e.event_id, if ev.fail % 8 == 7 { (ev.fail >> 3) % 3 + 1 } else { 0 });
                    e
                })
                .collect(),
            Step::Redeliver(i) if !history.is_empty() => {
                vec![history[usize::from(*i) % history.len()].clone()]
            }
            Step::Conflict(i) if !history.is_empty() => {
                let mut e = history[usize::from(*i) % history.len()].clone();
                // Same id, another payload.
                e.occurred_at += 1;
                vec![e]
            }
            Step::Redeliver(_) | Step::Conflict(_) => Vec::new(),
            Step::Reopen => {
                harness.reopen();
                Vec::new()
            }
            Step::Retry { heal } => {
                plan.healed.store(*heal, Ordering::SeqCst);
                let (store, registry) = harness.parts();
                for letter in store.dead_letters(None).expect("dead letters read") {
                    let i = registry.handler_index(&letter.handler).expect("a known handler");
                    let got =
                        store.retry_dead_letter(registry, i, &letter.event_id, now).expect("a retry commits");
                    let key = (letter.handler.clone(), letter.event_id.clone());
                    let want =
                        model.dead.get(&key).map(|l| l.event.clone()).map(|e| model.deliver(&e, &plan));
                    assert_eq!(got, want, "retry of {key:?} at step {n}");
                }
                plan.healed.store(false, Ordering::SeqCst);
                Vec::new()
            }
        };
        if !batch.is_empty() {
            let (store, registry) = harness.parts();
            let prepared: Vec<_> = batch.iter().map(prepare).collect();
            let report = store.project(registry, &prepared, now).expect("a batch commits");
            assert_eq!(report.events.len(), batch.len());
            for (e, got) in batch.iter().zip(&report.events) {
                let want = model.deliver(e, &plan);
                assert_eq!(*got, want, "report of {} at step {n}", e.event_id);
            }
            history.extend(batch);
        }
        compare(harness.parts().0, &model, n);
    }
});
