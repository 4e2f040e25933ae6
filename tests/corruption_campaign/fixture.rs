//! The fixture database of the campaign, and everything that can be read back from one.
//!
//! The fixture is a sample-domain database: a few hundred generated events (re-deliveries,
//! conflicts and rule rejections among them) projected by both listing projectors, with the
//! journal, in several durable commits. [`Snapshot`] is everything the public read API
//! returns about such a database; the campaign compares every damaged image with it.

use driftless_domain::Upcasters;
use driftless_domain::{OffsetRecord, PreparedEvent, Projector, TableDef, Timestamp, ViewValue};
use driftless_listings::{
    generate_events, DistrictStats, DistrictStatsProjector, GenConfig, ListingCard, ListingCardProjector,
    ListingEvent, ListingMembership, ListingModel, DISTRICT_LISTINGS, DISTRICT_STATS, DISTRICT_STATS_HANDLER,
    LISTING_CARD, LISTING_CARD_HANDLER,
};
use driftless_storage::StoreWriter;
use driftless_storage::{
    DeadLetter, Durability, HandlerRecord, JournalEntry, ReadAnswer, ReadModelRecord, Store, StoreOptions,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The error type of the campaign's tests.
pub type TestError = Box<dyn std::error::Error>;

/// The handlers of the sample domain, in registration order.
pub const HANDLERS: [&str; 2] = [LISTING_CARD_HANDLER, DISTRICT_STATS_HANDLER];

/// Both listing projectors.
pub fn listing_projectors() -> Vec<Arc<dyn Projector<ListingEvent>>> {
    vec![Arc::new(ListingCardProjector), Arc::new(DistrictStatsProjector)]
}

/// Whether damaged copies are opened with the integrity check at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenCheck {
    /// With it, as by default: damage in any page of the committed trees is refused at open.
    On,
    /// Without it: damage is met by the reads and writes that touch it.
    Off,
}

/// Options for opening damaged copies: unsynced commits and a small page cache.
pub fn probe_options(check: OpenCheck) -> StoreOptions {
    StoreOptions {
        durability: Durability::Eventual,
        journal: true,
        cache_bytes: Some(4 << 20),
        check_integrity_on_open: check == OpenCheck::On,
        ..StoreOptions::default()
    }
}

/// Every how-manyth aggregate [`Snapshot::read`] reads the journal of.
const AGGREGATE_SAMPLE: usize = 7;
/// Every how-manyth event id [`Snapshot::read`] reads the offsets of.
const OFFSET_SAMPLE: usize = 7;

/// Everything the public read API says about a sample-domain database.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `listing_card` (`None`: not serving).
    pub cards: Option<BTreeMap<String, ListingCard>>,
    /// `district_stats` (`None`: not serving).
    pub stats: Option<BTreeMap<String, DistrictStats>>,
    /// `district_stats_listings` (`None`: not serving).
    pub members: Option<BTreeMap<String, ListingMembership>>,
    /// The journal head.
    pub head: u64,
    /// Every journal entry from position 1.
    pub journal: Vec<JournalEntry>,
    /// The distinct aggregates of the journal.
    pub aggregates: Vec<String>,
    /// Per aggregate (a sample), the positions of its journal entries.
    pub by_aggregate: BTreeMap<String, Vec<u64>>,
    /// Every dead letter.
    pub dead: Vec<DeadLetter>,
    /// Every handler record.
    pub handlers: Vec<(String, HandlerRecord)>,
    /// Every read-model record.
    pub read_models: Vec<(String, ReadModelRecord)>,
    /// The offset of every (event id, handler), for a sample of the queried ids.
    pub offsets: BTreeMap<(String, String), Option<OffsetRecord>>,
    /// How many event ids have an offset.
    pub offset_count: u64,
}

/// A read that failed: which one, and what it said.
#[derive(Debug, Clone)]
pub struct ReadFailure {
    /// The read, e.g. `journal_range`.
    pub step: &'static str,
    /// The error's text.
    pub error: String,
}

fn fail<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> ReadFailure {
    move |e| ReadFailure { step, error: e.to_string() }
}

fn read_model<V: ViewValue + PartialEq>(
    store: &Store,
    def: &TableDef<String, V>,
    step: &'static str,
) -> Result<Option<BTreeMap<String, V>>, ReadFailure> {
    match store.read(def).map_err(fail(step))? {
        ReadAnswer::Ready(repo) => {
            let mut rows = BTreeMap::new();
            for row in repo.iter().map_err(fail(step))? {
                let (k, v) = row.map_err(fail(step))?;
                rows.insert(k, v);
            }
            // `get` and `len` agree with the iteration.
            let len = repo.len().map_err(fail(step))?;
            if len != rows.len() as u64 {
                return Err(ReadFailure { step, error: format!("len says {len}, iteration {}", rows.len()) });
            }
            for (k, v) in &rows {
                let got = repo.get(k).map_err(fail(step))?;
                if got.as_ref() != Some(v) {
                    return Err(ReadFailure { step, error: format!("get({k:?}) disagrees with iteration") });
                }
            }
            Ok(Some(rows))
        }
        ReadAnswer::UseSourceOfTruth { .. } => Ok(None),
    }
}

impl Snapshot {
    /// Reads everything, stopping at the first read that fails. `ids` are the event ids
    /// whose offsets are read.
    ///
    /// # Errors
    /// The first failing read.
    pub fn read(store: &Store, ids: &[String]) -> Result<Self, ReadFailure> {
        let cards = read_model(store, &LISTING_CARD, "read listing_card")?;
        let stats = read_model(store, &DISTRICT_STATS, "read district_stats")?;
        let members = read_model(store, &DISTRICT_LISTINGS, "read district_stats_listings")?;
        let head = store.journal_head().map_err(fail("journal_head"))?;
        let journal = store.journal_range(1, usize::MAX).map_err(fail("journal_range"))?;
        let aggregates = store.journal_aggregates(usize::MAX).map_err(fail("journal_aggregates"))?;
        // A spread sample of aggregates: each lookup scans the journal's unfiled tail.
        let mut by_aggregate = BTreeMap::new();
        for aggregate in aggregates.iter().step_by(AGGREGATE_SAMPLE) {
            let entries = store.journal_for_aggregate(aggregate).map_err(fail("journal_for_aggregate"))?;
            by_aggregate.insert(aggregate.clone(), entries.iter().map(|e| e.position).collect());
        }
        let dead = store.dead_letters(None).map_err(fail("dead_letters"))?;
        let handlers = store.handler_records().map_err(fail("handler_records"))?;
        let read_models = store.read_model_records().map_err(fail("read_model_records"))?;
        let mut offsets = BTreeMap::new();
        for id in ids.iter().step_by(OFFSET_SAMPLE) {
            for handler in HANDLERS {
                let offset = store.offset(id, handler).map_err(fail("offset"))?;
                offsets.insert((id.clone(), handler.to_string()), offset);
            }
        }
        let offset_count = store.offset_count().map_err(fail("offset_count"))?;
        Ok(Self {
            cards,
            stats,
            members,
            head,
            journal,
            aggregates,
            by_aggregate,
            dead,
            handlers,
            read_models,
            offsets,
            offset_count,
        })
    }

    /// The first field that differs from `other`, for reports.
    pub fn first_difference(&self, other: &Self) -> &'static str {
        if self.cards != other.cards {
            "listing_card"
        } else if self.stats != other.stats {
            "district_stats"
        } else if self.members != other.members {
            "district_stats_listings"
        } else if self.head != other.head {
            "journal head"
        } else if self.journal != other.journal {
            "journal"
        } else if self.aggregates != other.aggregates || self.by_aggregate != other.by_aggregate {
            "journal by aggregate"
        } else if self.dead != other.dead {
            "dead letters"
        } else if self.handlers != other.handlers {
            "handler records"
        } else if self.read_models != other.read_models {
            "read-model records"
        } else if self.offsets != other.offsets || self.offset_count != other.offset_count {
            "offsets"
        } else {
            "nothing"
        }
    }
}

/// A built fixture: the closed database's bytes and what it held after each commit.
pub struct Fixture {
    /// The database file as it was when closed.
    pub bytes: Vec<u8>,
    /// The state after each commit, oldest first; the last is the final state.
    pub history: Vec<Snapshot>,
    /// The event ids whose offsets are compared.
    pub ids: Vec<String>,
    /// The reference model fed every event.
    pub model: ListingModel,
    /// Every event of the fixture, in order.
    pub events: Vec<ListingEvent>,
    /// Whether each event, delivered again to the undamaged database in one batch, is
    /// applied by some handler: a damaged copy may apply none of them instead (it fails),
    /// but never one that the undamaged copy applies no more (a second application).
    pub reapplied: Vec<bool>,
}

impl Fixture {
    /// The final state.
    pub fn last(&self) -> Option<&Snapshot> {
        self.history.last()
    }
}

/// The event stream of a fixture.
pub fn fixture_events(events: usize, seed: u64) -> Vec<ListingEvent> {
    generate_events(GenConfig {
        events,
        listings: (events / 8).max(1),
        districts: 6,
        seed,
        redeliveries: 0.05,
        conflicts: 3,
        invalid_lines: 0,
    })
}

/// Builds a fixture database at `path` from `events`, committing `batch` events at a time
/// with durable commits, and checks it against the reference model.
///
/// # Errors
/// When a step fails or the database disagrees with the model.
pub fn build_at(path: &Path, events: &[ListingEvent], batch: usize) -> Result<Fixture, TestError> {
    let mut model = ListingModel::new();
    let mut history = Vec::new();
    let mut ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    ids.sort();
    ids.dedup();
    {
        let store =
            StoreWriter::open(path, StoreOptions { cache_bytes: Some(4 << 20), ..StoreOptions::default() })?;
        let registry = store.register(listing_projectors(), &[], Upcasters::new())?;
        history.push(Snapshot::read(&store, &ids).map_err(|f| format!("{f:?}"))?);
        for (n, chunk) in events.chunks(batch.max(1)).enumerate() {
            let prepared: Vec<PreparedEvent<ListingEvent>> =
                chunk.iter().cloned().map(PreparedEvent::new).collect::<Result<_, _>>()?;
            store.project(&registry, &prepared, Timestamp(1_800_000_000_000 + n as u64))?;
            for e in chunk {
                model.apply(e);
            }
            history.push(Snapshot::read(&store, &ids).map_err(|f| format!("{f:?}"))?);
        }
        let last = history.last().ok_or("no snapshot")?;
        if last.cards.as_ref() != Some(&model.listing_cards()) {
            return Err("the fixture's listing_card differs from the reference model".into());
        }
        if last.stats.as_ref() != Some(&model.district_stats()) {
            return Err("the fixture's district_stats differs from the reference model".into());
        }
        let scan = store.scan_values()?;
        if !scan.damaged.is_empty() {
            return Err(format!("the fresh fixture has damaged values: {:?}", scan.damaged).into());
        }
    }
    let bytes = std::fs::read(path)?;
    let reapplied = {
        let dir = tempfile::tempdir()?;
        let copy = dir.path().join("redelivered.redb");
        std::fs::write(&copy, &bytes)?;
        let store =
            StoreWriter::open(&copy, StoreOptions { cache_bytes: Some(4 << 20), ..StoreOptions::default() })?;
        let registry = store.register(listing_projectors(), &[], Upcasters::new())?;
        redeliver(&store, &registry, events)?
    };
    Ok(Fixture { bytes, history, ids, model, events: events.to_vec(), reapplied })
}

/// Delivers `events` again in one batch; for each, whether some handler applied it.
///
/// # Errors
/// When the batch does not commit.
pub fn redeliver(
    store: &StoreWriter,
    registry: &driftless_storage::Registry<ListingEvent>,
    events: &[ListingEvent],
) -> Result<Vec<bool>, TestError> {
    let prepared: Vec<PreparedEvent<ListingEvent>> =
        events.iter().cloned().map(PreparedEvent::new).collect::<Result<_, _>>()?;
    let report = store.project(registry, &prepared, Timestamp(1_850_000_000_000))?;
    Ok(report
        .events
        .iter()
        .map(|r| r.handlers.iter().any(|(_, o)| *o == driftless_storage::HandlerOutcome::Applied))
        .collect())
}
