//! The store and the listing projectors against the reference model, on arbitrary
//! sequences of operations, across an upgrade of the event type.
//!
//! The input: its first byte says how the store starts: odd, as the previous release ran it
//! ("release 1": the version-1 event type, `ListingEventV1`, journaled at schema version 1,
//! no upcasters); even, as this release runs it ("release 2": `ListingEvent` at schema
//! version 2 with `embed::upcasters`). The rest is an `arbitrary` list of steps.
//!
//! The operations: deliver a batch of events from a small space of listings and ids,
//! re-deliver an earlier event, deliver an earlier id with another payload (another time,
//! or after the upgrade another currency), make projectors fail on chosen events (besides
//! the business rules' own rejections), close and reopen the store on the same bytes, retry
//! every dead letter, healed or not, and upgrade: reopen a release-1 store in release 2. Release 1
//! delivers VND prices only (version 1 has no currency); after the upgrade, earlier events
//! are delivered again as version-2 events, and dead letters of release 1 are retried
//! through the upcasters. Every open checks the stored events as an engine does
//! (`check_stored_events`), and upcasts exactly the version-1 events the model expects.
//!
//! The model: the first payload accepted under each event id (applied or rejected, with the
//! schema version its hash is recorded at: version 1's until the same payload is delivered
//! again after the upgrade), which makes any later delivery of another payload a conflict;
//! one [`ListingModel`] per handler, fed exactly the events that handler applied (a handler
//! decides over its own tables, so its rows are the fold of what it applied); and the
//! contract's [`ListingModel`] fed every delivery, which the store must match exactly while
//! no injected failure has fired (and on conflicts always). After every step the read
//! models, the reported outcomes, the offsets, the dead letters (body and schema version as
//! the store records them), the journal (each body read through the upcasters at its
//! recorded version), its head and the handler records must agree with the model, and every
//! stored value must pass its checksum.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use driftless_domain::{
    codec, ApplyError, Event, EventId, HandlerName, PayloadHash, PreparedEvent, ProjectionContext, Projector,
    TableId, Timestamp, Upcasters, Views,
};
use driftless_listings::v1::{ListingEventKindV1, ListingEventV1};
use driftless_listings::{
    embed, Currency, DistrictStatsProjector, ListingCardProjector, ListingEvent, ListingEventKind,
    ListingModel, Money, Outcome, DISTRICT_STATS, LISTING_CARD,
};
use driftless_storage::{
    BatchReport, Durability, EventOutcome, EventReport, HandlerOutcome, ReadAnswer, Registry, StorageBackend,
    Store, StoreOptions, StoreWriter, StoredEventsCheck, MAX_EVENT_BYTES,
};
use libfuzzer_sys::fuzz_target;
use redb::backends::InMemoryBackend;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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
    /// An earlier id with another payload: another time, or (after the upgrade, for a
    /// `ListingCreated`) another currency.
    Conflict {
        pick: u8,
        currency: bool,
    },
    Reopen,
    Retry {
        heal: bool,
    },
    /// Reopens a store of release 1 in release 2 (nothing before it journaled anything, or
    /// once it runs release 2).
    Upgrade,
}

const HANDLERS: [&str; 2] =
    [driftless_listings::LISTING_CARD_HANDLER, driftless_listings::DISTRICT_STATS_HANDLER];
const MAX_STEPS: usize = 40;
const MAX_BATCH: usize = 8;
/// The schema version of the previous release's event type.
const V1: u32 = 1;
/// The schema version of the current one.
const V2: u32 = ListingEvent::SCHEMA_VERSION;

fn upcasters() -> &'static Upcasters<ListingEvent> {
    static UPCASTERS: OnceLock<Upcasters<ListingEvent>> = OnceLock::new();
    UPCASTERS.get_or_init(embed::upcasters)
}

fn event_of(ev: &Ev, release: u32) -> ListingEvent {
    let listing = format!("l{}", ev.listing % 4);
    // Version 1 of the contract knows no currency: its prices are VND.
    let currency = if release == V1 {
        Currency::VND
    } else {
        [Currency::VND, Currency::EUR, Currency::USD][usize::from(ev.value >> 4) % 3]
    };
    let kind = match ev.kind % 5 {
        0 => ListingEventKind::ListingCreated {
            title: format!("Flat {}", ev.value % 2),
            price: Money::new(u64::from(ev.value % 4) * 100, currency),
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

/// The event as the previous release delivered it. Only VND prices exist at version 1.
fn to_v1(e: &ListingEvent) -> ListingEventV1 {
    let kind = match &e.kind {
        ListingEventKind::ListingCreated { title, price, district } => {
            assert_eq!(price.currency, Currency::VND, "harness bug: a version-1 event with a currency");
            ListingEventKindV1::ListingCreated { title: title.clone(), price: price.amount, district: district.clone() }
        }
        ListingEventKind::ListingPriceChanged { price } => ListingEventKindV1::ListingPriceChanged { price: *price },
        ListingEventKind::ListingPublished => ListingEventKindV1::ListingPublished,
        ListingEventKind::ListingArchived => ListingEventKindV1::ListingArchived,
        ListingEventKind::InquiryReceived { inquiry_id } => {
            ListingEventKindV1::InquiryReceived { inquiry_id: inquiry_id.clone() }
        }
    };
    ListingEventV1 {
        event_id: e.event_id.clone(),
        aggregate_id: e.aggregate_id.clone(),
        occurred_at: e.occurred_at,
        kind,
    }
}

/// The stable encoding of `e` at schema `version`: what the journal and dead letters hold.
fn body_at(version: u32, e: &ListingEvent) -> Vec<u8> {
    if version == V1 {
        codec::stable_encode(&to_v1(e)).expect("a version-1 event encodes")
    } else {
        codec::stable_encode(e).expect("an event encodes")
    }
}

/// The payload hash of `e` at schema `version`.
fn hash_at(version: u32, e: &ListingEvent) -> PayloadHash {
    PayloadHash::of_bytes(&body_at(version, e))
}

/// The previous release's event type: `ListingEventV1` at schema version 1, with the
/// stable encoding of the type it wraps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct EventV1(ListingEventV1);

impl Event for EventV1 {
    const SCHEMA_VERSION: u32 = V1;

    fn aggregate_id(&self) -> &str {
        &self.0.aggregate_id
    }

    fn event_name(&self) -> &str {
        match &self.0.kind {
            ListingEventKindV1::ListingCreated { .. } => "ListingCreated",
            ListingEventKindV1::ListingPriceChanged { .. } => "ListingPriceChanged",
            ListingEventKindV1::ListingPublished => "ListingPublished",
            ListingEventKindV1::ListingArchived => "ListingArchived",
            ListingEventKindV1::InquiryReceived { .. } => "InquiryReceived",
        }
    }

    fn occurred_at(&self) -> Timestamp {
        Timestamp(self.0.occurred_at)
    }

    /// The stored id, as the current event type says it.
    fn event_id(&self) -> EventId {
        ListingEvent::from(self.0.clone()).event_id()
    }
}

/// A projector of the previous release: the current one, fed the event made current, so
/// that both releases write the same rows.
struct Release1<P>(P);

impl<P: Projector<ListingEvent>> Projector<EventV1> for Release1<P> {
    fn handler_name(&self) -> HandlerName {
        self.0.handler_name()
    }

    fn tables(&self) -> Vec<TableId> {
        self.0.tables()
    }

    fn apply(&self, e: &EventV1, ctx: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
        self.0.apply(&ListingEvent::from(e.0.clone()), ctx, views)
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

/// The projectors registered, by release.
enum Registered {
    Release1(Registry<EventV1>),
    Release2(Registry<ListingEvent>),
}

struct Harness {
    disk: Arc<InMemoryBackend>,
    plan: Arc<Plan>,
    release: u32,
    writer: Option<StoreWriter>,
    registry: Option<Registered>,
}

impl Harness {
    fn new(plan: &Arc<Plan>, release: u32) -> Self {
        Self { disk: Arc::new(InMemoryBackend::new()), plan: plan.clone(), release, writer: None, registry: None }
    }

    /// Closes the store and opens it again on the same bytes in `release`, as an engine of
    /// that release opens it: upgrading, checking the stored events, registering.
    fn open(&mut self, release: u32) -> StoredEventsCheck {
        self.registry = None;
        if let Some(writer) = self.writer.take() {
            writer.close().expect("the store closes");
        }
        self.release = release;
        let options = StoreOptions {
            durability: Durability::Eventual,
            journal: true,
            cache_bytes: Some(1 << 20),
            check_integrity_on_open: true,
            max_event_bytes: MAX_EVENT_BYTES,
        };
        let disk = Disk(self.disk.clone());
        let card = |plan: &Arc<Plan>| Flaky { inner: ListingCardProjector, index: 0, plan: plan.clone() };
        let stats = |plan: &Arc<Plan>| Flaky { inner: DistrictStatsProjector, index: 1, plan: plan.clone() };
        let (writer, checked, registered, rebuilds) = if release == V1 {
            let upcasters = Upcasters::<EventV1>::new();
            let writer =
                StoreWriter::open_with_backend_upgrading(disk, options, &upcasters).expect("release 1 opens");
            let checked = writer.check_stored_events(&upcasters).expect("release 1 reads its stored events");
            let projectors: Vec<Arc<dyn Projector<EventV1>>> =
                vec![Arc::new(Release1(card(&self.plan))), Arc::new(Release1(stats(&self.plan)))];
            let registry = writer.register(projectors, &[], upcasters).expect("release 1 registers");
            let rebuilds = registry.needs_rebuild.len();
            (writer, checked, Registered::Release1(registry), rebuilds)
        } else {
            let writer = StoreWriter::open_with_backend_upgrading(disk, options, upcasters())
                .expect("release 2 opens");
            let checked = writer.check_stored_events(upcasters()).expect("release 2 reads every stored event");
            let projectors: Vec<Arc<dyn Projector<ListingEvent>>> =
                vec![Arc::new(card(&self.plan)), Arc::new(stats(&self.plan))];
            let registry = writer.register(projectors, &[], embed::upcasters()).expect("release 2 registers");
            let rebuilds = registry.needs_rebuild.len();
            (writer, checked, Registered::Release2(registry), rebuilds)
        };
        assert_eq!(rebuilds, 0, "registering release {release} asked for rebuilds");
        self.writer = Some(writer);
        self.registry = Some(registered);
        checked
    }

    fn store(&self) -> &Store {
        self.writer.as_ref().expect("open")
    }

    /// Delivers a batch of events in one commit, as the open release's event type.
    fn project(&self, batch: &[ListingEvent], now: Timestamp) -> BatchReport {
        let writer = self.writer.as_ref().expect("open");
        match self.registry.as_ref().expect("registered") {
            Registered::Release1(registry) => {
                let prepared: Vec<_> = batch
                    .iter()
                    .map(|e| PreparedEvent::new(EventV1(to_v1(e))).expect("an event prepares"))
                    .collect();
                writer.project(registry, &prepared, now).expect("a batch commits")
            }
            Registered::Release2(registry) => {
                let prepared: Vec<_> =
                    batch.iter().map(|e| PreparedEvent::new(e.clone()).expect("an event prepares")).collect();
                writer.project(registry, &prepared, now).expect("a batch commits")
            }
        }
    }

    fn retry(&self, handler: &str, event_id: &str, now: Timestamp) -> Option<EventReport> {
        let writer = self.writer.as_ref().expect("open");
        match self.registry.as_ref().expect("registered") {
            Registered::Release1(registry) => {
                let i = registry.handler_index(handler).expect("a known handler");
                writer.retry_dead_letter(registry, i, event_id, now).expect("a retry commits")
            }
            Registered::Release2(registry) => {
                let i = registry.handler_index(handler).expect("a known handler");
                writer.retry_dead_letter(registry, i, event_id, now).expect("a retry commits")
            }
        }
    }
}

/// The first payload accepted under an id, and the schema version its hash is recorded at.
#[derive(Debug, Clone)]
struct First {
    event: ListingEvent,
    version: u32,
}

#[derive(Debug, Clone)]
struct Entry {
    event: ListingEvent,
    version: u32,
    accepted_at: Timestamp,
}

#[derive(Debug, Clone)]
struct Letter {
    reason: String,
    attempts: u32,
    event: ListingEvent,
    position: u64,
    version: u32,
    first_failed_at: Timestamp,
    last_failed_at: Timestamp,
}

struct Model {
    /// The release the store runs: the schema version of what it writes.
    release: u32,
    /// Per handler: the fold of exactly the events it applied.
    folds: [ListingModel; 2],
    /// The contract: every delivery, as one consumer.
    contract: ListingModel,
    /// Whether an injected failure has fired (the contract model no longer applies).
    diverged: bool,
    first: BTreeMap<String, First>,
    dead: BTreeMap<(String, String), Letter>,
    /// The journal, position 1 first.
    journal: Vec<Entry>,
    applied: [u64; 2],
    /// The release whose upcasters last checked the stored events, and up to which position.
    checked: Option<(u32, u64)>,
}

impl Model {
    fn new(release: u32) -> Self {
        Self {
            release,
            folds: Default::default(),
            contract: ListingModel::new(),
            diverged: false,
            first: BTreeMap::new(),
            dead: BTreeMap::new(),
            journal: Vec::new(),
            applied: [0; 2],
            checked: None,
        }
    }

    fn head(&self) -> u64 {
        self.journal.len() as u64
    }

    /// What opening the store in `release` checks of its stored events: the entries at an
    /// older schema version journaled since the last check with the same upcasters, and
    /// every dead letter at an older version.
    fn open(&mut self, release: u32) -> StoredEventsCheck {
        self.release = release;
        let from = match self.checked {
            Some((r, upto)) if r == release => upto + 1,
            _ => 1,
        };
        let journal_entries_upcast = self
            .journal
            .iter()
            .zip(1u64..)
            .filter(|(e, position)| *position >= from && e.version < release)
            .count() as u64;
        let dead_letters_upcast = self.dead.values().filter(|l| l.version < release).count() as u64;
        self.checked = Some((release, self.head()));
        StoredEventsCheck { journal_entries_upcast, dead_letters_upcast }
    }

    fn deliver(&mut self, e: &ListingEvent, plan: &Plan, now: Timestamp) -> EventReport {
        let id = e.event_id.clone();
        let contract = self.contract.apply(e);
        let event_id = e.event_id();
        if let Some(first) = self.first.get(&id) {
            if first.event != *e {
                if first.version == V1 && self.release == V2 { eprintln!("TRACE conflict-v1-recorded"); }
                assert_eq!(contract, Outcome::Conflict { event_id: id.clone() }, "the contract on {id}");
                return EventReport {
                    event_id,
                    position: None,
                    outcome: EventOutcome::Conflict { recorded: hash_at(first.version, &first.event) },
                    handlers: Vec::new().into(),
                };
            }
        }
        assert!(!matches!(contract, Outcome::Conflict { .. }), "the contract saw a conflict on {id}, the store none");
        // A new id records its payload at the release's version; the same payload delivered
        // by release 2 rehashes a row recorded at version 1.
        self.first
            .entry(id.clone())
            .and_modify(|f| { if f.version == V1 && self.release == V2 { eprintln!("TRACE rehash"); } f.version = self.release })
            .or_insert_with(|| First { event: e.clone(), version: self.release });
        let already: Vec<bool> = self.folds.iter().map(|f| f.applied_event(&id).is_some()).collect();
        let position = if already.iter().any(|done| !done) {
            self.journal.push(Entry { event: e.clone(), version: self.release, accepted_at: now });
            Some(self.head())
        } else {
            None
        };
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
                            version: self.release,
                            first_failed_at: now,
                            last_failed_at: now,
                        });
                        letter.reason.clone_from(&reason);
                        letter.attempts += 1;
                        letter.event = e.clone();
                        letter.position = position.unwrap_or(0);
                        letter.version = self.release;
                        letter.last_failed_at = now;
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
                Outcome::Conflict { .. } => unreachable!("checked above"),
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

/// What the store and the model say of a dead letter.
type LetterFacts = (String, u32, Vec<u8>, u64, String, u32, Timestamp, Timestamp);

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
    for (id, first) in &model.first {
        for (h, name) in HANDLERS.iter().enumerate() {
            let got = store.offset(id, name).expect("an offset reads").map(|o| o.payload_hash);
            let want = model.folds[h].applied_event(id).map(|applied| {
                assert_eq!(applied, &first.event, "model bug: {name} applied another payload of {id}");
                hash_at(first.version, &first.event)
            });
            assert_eq!(got, want, "offset of ({id}, {name}) after step {step}");
        }
    }
    let letters = store.dead_letters(None).expect("dead letters read");
    for d in &letters {
        let read = upcasters().decode(d.schema_version, &d.body);
        let want = model.dead.get(&(d.handler.clone(), d.event_id.clone())).map(|l| &l.event);
        assert_eq!(read.as_ref().ok(), want, "the dead letter of ({}, {}) after step {step}", d.handler, d.event_id);
    }
    let got: BTreeMap<(String, String), LetterFacts> = letters
        .into_iter()
        .map(|d| {
            let facts = (
                d.reason,
                d.attempts,
                d.body,
                d.position,
                d.event_name,
                d.schema_version,
                d.first_failed_at,
                d.last_failed_at,
            );
            ((d.handler, d.event_id), facts)
        })
        .collect();
    let want: BTreeMap<(String, String), LetterFacts> = model
        .dead
        .iter()
        .map(|(k, l)| {
            let facts = (
                l.reason.clone(),
                l.attempts,
                body_at(l.version, &l.event),
                l.position,
                l.event.kind.name().to_owned(),
                l.version,
                l.first_failed_at,
                l.last_failed_at,
            );
            (k.clone(), facts)
        })
        .collect();
    assert_eq!(got, want, "dead letters after step {step}");
    assert_eq!(store.journal_head().expect("the head reads"), model.head(), "journal head after step {step}");
    let journal = store.journal_range(1, usize::MAX).expect("the journal reads");
    assert_eq!(journal.len(), model.journal.len(), "journal length after step {step}");
    for (entry, (want, position)) in journal.iter().zip(model.journal.iter().zip(1u64..)) {
        let read = upcasters().decode(entry.schema_version, &entry.body);
        assert_eq!(read.as_ref(), Ok(&want.event), "journal entry {position} read back after step {step}");
        let got = (
            entry.position,
            entry.schema_version,
            entry.event_name.as_str(),
            entry.aggregate_id.as_str(),
            entry.occurred_at,
            entry.accepted_at,
        );
        let expected = (
            position,
            want.version,
            want.event.kind.name(),
            want.event.aggregate_id.as_str(),
            Timestamp(want.event.occurred_at),
            want.accepted_at,
        );
        assert_eq!(got, expected, "journal entry {position} after step {step}");
        assert_eq!(entry.body, body_at(want.version, &want.event), "journal body {position} after step {step}");
    }
    for (h, name) in HANDLERS.iter().enumerate() {
        let rec = store.handler_record(name).expect("a record reads").expect("a record exists");
        assert_eq!(rec.applied, model.applied[h], "applied count of {name} after step {step}");
        let dead = model.dead.keys().filter(|(n, _)| n == name).count() as u64;
        assert_eq!(rec.dead_letters, dead, "dead-letter count of {name} after step {step}");
        assert_eq!(rec.seen, model.head(), "journal progress of {name} after step {step}");
    }
    let scan = store.scan_values().expect("the scan runs");
    assert!(scan.damaged.is_empty(), "damaged values after step {step}: {:?}", scan.damaged);
}

fuzz_target!(|data: &[u8]| {
    let Some((&start, rest)) = data.split_first() else { return };
    let Ok(steps) = Vec::<Step>::arbitrary_take_rest(Unstructured::new(rest)) else { return };
    // Odd: the store starts as the previous release ran it.
    let release = if start & 1 == 1 { V1 } else { V2 };
    let plan = Arc::new(Plan::default());
    let mut harness = Harness::new(&plan, release);
    let mut model = Model::new(release);
    assert_eq!(harness.open(release), model.open(release), "stored events checked at the first open");
    let mut history: Vec<ListingEvent> = Vec::new();
    for (n, step) in steps.iter().take(MAX_STEPS).enumerate() {
        let now = Timestamp(1_000_000 + n as u64);
        let release = harness.release;
        let batch: Vec<ListingEvent> = match step {
            Step::Deliver(evs) => evs
                .iter()
                .take(MAX_BATCH)
                .map(|ev| {
                    let e = event_of(ev, release);
                    plan.set(&e.event_id, if ev.fail % 8 == 7 { (ev.fail >> 3) % 3 + 1 } else { 0 });
                    e
                })
                .collect(),
            Step::Redeliver(i) if !history.is_empty() => {
                vec![history[usize::from(*i) % history.len()].clone()]
            }
            Step::Conflict { pick, currency } if !history.is_empty() => {
                let mut e = history[usize::from(*pick) % history.len()].clone();
                // Same id, another payload.
                match &mut e.kind {
                    ListingEventKind::ListingCreated { price, .. } if *currency && release == V2 => {
                        price.currency =
                            if price.currency == Currency::VND { Currency::EUR } else { Currency::VND };
                    }
                    _ => e.occurred_at += 1,
                }
                vec![e]
            }
            Step::Redeliver(_) | Step::Conflict { .. } => Vec::new(),
            // An upgrade of an empty store is the same as starting in release 2.
            Step::Upgrade if release == V2 || model.head() == 0 => Vec::new(),
            Step::Reopen | Step::Upgrade => {
                let release = if matches!(step, Step::Upgrade) { V2 } else { release };
                if matches!(step, Step::Upgrade) { eprintln!("TRACE upgrade head={} dead={}", model.head(), model.dead.len()); }
                let got = harness.open(release);
                assert_eq!(got, model.open(release), "stored events checked by release {release} at step {n}");
                Vec::new()
            }
            Step::Retry { heal } => {
                plan.healed.store(*heal, Ordering::SeqCst);
                for letter in harness.store().dead_letters(None).expect("dead letters read") {
                    if release == V2 && letter.schema_version == V1 { eprintln!("TRACE retry-v1-letter"); }
                    let got = harness.retry(&letter.handler, &letter.event_id, now);
                    let key = (letter.handler.clone(), letter.event_id.clone());
                    let want = model.dead.get(&key).map(|l| l.event.clone()).map(|e| model.deliver(&e, &plan, now));
                    assert_eq!(got, want, "retry of {key:?} at step {n}");
                }
                plan.healed.store(false, Ordering::SeqCst);
                Vec::new()
            }
        };
        if !batch.is_empty() {
            let report = harness.project(&batch, now);
            assert_eq!(report.events.len(), batch.len());
            for (e, got) in batch.iter().zip(&report.events) {
                let want = model.deliver(e, &plan, now);
                assert_eq!(*got, want, "report of {} at step {n} (release {release})", e.event_id);
            }
            history.extend(batch);
        }
        compare(harness.store(), &model, n);
    }
});
