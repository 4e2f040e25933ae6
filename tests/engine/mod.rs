//! Black-box tests of the engine facade (`driftless::Engine`) over the sample listings
//! domain: concurrency and backpressure, catch-up and renames, rebuilds and views under
//! concurrent reads, the kill switch, shutdown, failures, dead letters and outcomes.

use driftless::{
    ApplyError, Engine, EngineOptions, EventOutcome, HandlerName, ProjectionContext, Projector, ReadAnswer,
    TableId, View, ViewSource, Views,
};
use driftless_listings::{
    leaderboard, projectors, DistrictStats, DistrictStatsProjector, GenConfig, LeaderboardRow, ListingCard,
    ListingCardProjector, ListingEvent, ListingModel, Outcome, DISTRICT_LEADERBOARD, DISTRICT_STATS,
    LISTING_CARD,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use crate::TestResult;

mod catch_up;
mod concurrency;
mod dead_letters;
mod edges;
mod evolution;
mod failures;
mod kill_switch;
mod outcomes;
mod ownership;
mod rebuild;
mod shutdown;
mod views;
mod wait;

/// How long a bounded wait loop polls before giving up.
const DEADLINE: Duration = Duration::from_secs(20);

/// How long a gated projector waits to be released before giving up (so a failing test
/// never hangs).
const GATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings for tests where durability is not the point: no fsync, a small queue.
fn options() -> EngineOptions {
    EngineOptions {
        queue_capacity: 16,
        durability: driftless::Durability::Eventual,
        ..EngineOptions::default()
    }
}

/// A generated stream without malformed lines.
fn stream(events: usize, listings: usize, districts: usize, seed: u64) -> Vec<ListingEvent> {
    driftless_listings::generate_events(GenConfig {
        events,
        listings,
        districts,
        seed,
        redeliveries: 0.05,
        conflicts: 6,
        invalid_lines: 0,
    })
}

/// The reference fold of `events` and each event's outcome, in order.
fn fold(events: &[ListingEvent]) -> (ListingModel, Vec<Outcome>) {
    let mut model = ListingModel::new();
    let outcomes = events.iter().map(|e| model.apply(e)).collect();
    (model, outcomes)
}

/// An engine over the two sample projectors with the given settings.
fn open_listings(path: &Path, options: EngineOptions) -> TestResult<Engine<ListingEvent>> {
    let mut builder = Engine::builder(path).options(options);
    for p in projectors() {
        builder = builder.projector_arc(Arc::from(p));
    }
    Ok(builder.open()?)
}

/// An engine with both sample projectors whose `listing_card` projector waits at a gate
/// inside every commit until it is opened, so that a test can hold the writer still.
fn open_gated(path: &Path, options: EngineOptions) -> TestResult<(Engine<ListingEvent>, Gate)> {
    let (gated, gate) = Gated::new(ListingCardProjector);
    let engine =
        Engine::builder(path).options(options).projector(gated).projector(DistrictStatsProjector).open()?;
    Ok((engine, gate))
}

/// A `ListingCreated` of a loft in Mitte.
fn create(listing: &str, at: u64, price: u64) -> ListingEvent {
    ListingEvent::new(
        listing,
        at,
        driftless_listings::ListingEventKind::ListingCreated {
            title: "Loft".into(),
            price: price.into(),
            district: "Mitte".into(),
        },
    )
}

/// A `ListingPriceChanged`.
fn price(listing: &str, at: u64, price: u64) -> ListingEvent {
    ListingEvent::new(listing, at, driftless_listings::ListingEventKind::ListingPriceChanged { price })
}

/// Every row of a serving read model, in key order.
fn rows<K, V>(engine: &Engine<ListingEvent>, def: &driftless::TableDef<K, V>) -> TestResult<BTreeMap<K, V>>
where
    K: driftless::ViewKey + Ord,
    V: driftless::ViewValue,
{
    match engine.read(def)? {
        ReadAnswer::Ready(repo) => Ok(repo.iter()?.collect::<Result<BTreeMap<K, V>, _>>()?),
        ReadAnswer::UseSourceOfTruth { read_model, .. } => {
            Err(format!("{read_model} is switched off").into())
        }
    }
}

/// Every `listing_card` row.
fn cards(engine: &Engine<ListingEvent>) -> TestResult<BTreeMap<String, ListingCard>> {
    rows(engine, &LISTING_CARD)
}

/// Every `district_stats` row.
fn stats(engine: &Engine<ListingEvent>) -> TestResult<BTreeMap<String, DistrictStats>> {
    rows(engine, &DISTRICT_STATS)
}

/// Both projected read models equal the model's fold.
fn ensure_matches_model(engine: &Engine<ListingEvent>, model: &ListingModel) -> TestResult {
    let (cards, stats) = (cards(engine)?, stats(engine)?);
    ensure!(
        cards == model.listing_cards(),
        "listing_card differs from the fold ({} rows, the fold has {})",
        cards.len(),
        model.listing_cards().len()
    );
    ensure!(
        stats == model.district_stats(),
        "district_stats differs from the fold: {stats:?} != {:?}",
        model.district_stats()
    );
    Ok(())
}

/// The per-handler applied counts of both read models equal the model's.
fn ensure_applied_counts(engine: &Engine<ListingEvent>, model: &ListingModel) -> TestResult {
    for read_model in ["listing_card", "district_stats"] {
        let f = engine.freshness_of(read_model)?;
        ensure_eq!(f.applied, model.summary().applied, "events applied by the owner of {read_model}");
    }
    Ok(())
}

/// Whether an engine outcome is the outcome the reference model gives.
fn same_outcome(engine: &EventOutcome, model: &Outcome) -> bool {
    match (engine, model) {
        (EventOutcome::Applied, Outcome::Applied)
        | (EventOutcome::Duplicate, Outcome::Duplicate)
        | (EventOutcome::Conflict { .. }, Outcome::Conflict { .. }) => true,
        (EventOutcome::Rejected { reason }, Outcome::Rejected(rejection)) => *reason == rejection.to_string(),
        _ => false,
    }
}

/// Polls `condition` until it holds, failing after [`DEADLINE`].
fn wait_until(what: &str, mut condition: impl FnMut() -> TestResult<bool>) -> TestResult {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if condition()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

/// Turns a panicked thread into an error.
fn joined<T>(r: std::thread::Result<TestResult<T>>) -> TestResult<T> {
    r.map_err(|_| "a test thread panicked")?
}

/// The refresh of `district_leaderboard`: `district_stats` ranked by [`leaderboard`].
fn leaderboard_view() -> impl driftless::MaterializedView {
    View::new(DISTRICT_LEADERBOARD, |src: &ViewSource<'_>| {
        let stats = src.read_model(&DISTRICT_STATS)?;
        let rows = stats
            .iter()
            .map_err(|e| e.to_string())?
            .map(|r| r.map(|(_, v)| v))
            .collect::<Result<Vec<DistrictStats>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(leaderboard(rows).into_iter().map(|r| (r.rank, r)).collect::<Vec<(u64, LeaderboardRow)>>())
    })
}

/// A projector that behaves as `inner` but blocks in its first `apply` until released, so
/// that a test can hold a commit (and the thread running it) still.
struct Gated<P> {
    inner: P,
    gate: parking_lot::Mutex<Option<(crossbeam_channel::Sender<String>, crossbeam_channel::Receiver<()>)>>,
}

/// The test's side of a [`Gated`] projector.
struct Gate {
    entered: crossbeam_channel::Receiver<String>,
    release: crossbeam_channel::Sender<()>,
}

impl Gate {
    /// Waits until a commit is blocked in the gated projector; returns the name of the
    /// thread that runs it.
    fn wait_entered(&self) -> TestResult<String> {
        Ok(self.entered.recv_timeout(GATE_TIMEOUT).map_err(|_| "no commit reached the gate")?)
    }

    /// Lets the writer go on.
    fn open(&self) -> TestResult {
        self.release.send(()).map_err(|_| "the gated projector is gone")?;
        Ok(())
    }
}

impl<P> Gated<P> {
    fn new(inner: P) -> (Self, Gate) {
        let (entered_tx, entered_rx) = crossbeam_channel::bounded(1);
        let (release_tx, release_rx) = crossbeam_channel::bounded(1);
        let gated = Self { inner, gate: parking_lot::Mutex::new(Some((entered_tx, release_rx))) };
        (gated, Gate { entered: entered_rx, release: release_tx })
    }
}

impl<P: Projector<ListingEvent>> Projector<ListingEvent> for Gated<P> {
    fn handler_name(&self) -> HandlerName {
        self.inner.handler_name()
    }

    fn tables(&self) -> Vec<TableId> {
        self.inner.tables()
    }

    fn handles(&self, event: &ListingEvent) -> bool {
        self.inner.handles(event)
    }

    fn apply(
        &self,
        e: &ListingEvent,
        ctx: &ProjectionContext,
        views: &mut Views<'_>,
    ) -> Result<(), ApplyError> {
        let gate = self.gate.lock().take();
        if let Some((entered, release)) = gate {
            let _ = entered.send(std::thread::current().name().unwrap_or("unnamed").to_string());
            let _ = release.recv_timeout(GATE_TIMEOUT);
        }
        self.inner.apply(e, ctx, views)
    }
}

/// [`ListingCardProjector`] under another handler name.
struct Renamed {
    name: HandlerName,
}

impl Projector<ListingEvent> for Renamed {
    fn handler_name(&self) -> HandlerName {
        self.name.clone()
    }

    fn tables(&self) -> Vec<TableId> {
        ListingCardProjector.tables()
    }

    fn apply(
        &self,
        e: &ListingEvent,
        ctx: &ProjectionContext,
        views: &mut Views<'_>,
    ) -> Result<(), ApplyError> {
        ListingCardProjector.apply(e, ctx, views)
    }
}
