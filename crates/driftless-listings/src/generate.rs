//! A deterministic, realistic event stream for demos, benchmarks and tests.

use crate::event::{Currency, ListingEvent, ListingEventKind, Money, MAX_SAFE_INTEGER};
use crate::model::ListingStatus;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// The first `occurred_at` of a generated stream (2023-11-14, in Unix milliseconds).
pub const GENERATED_START_MILLIS: u64 = 1_700_000_000_000;

/// Mixed into the seed of the generator's second random stream (how events look).
const STYLE_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The shape of a generated stream.
///
/// The stream has `events` distinct well-formed events, then extra lines mixed in after
/// them: `redeliveries × events` re-deliveries of applied events (duplicates),
/// `conflicts` events reusing the id of an applied event with another payload, and
/// `invalid_lines` malformed lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenConfig {
    /// Distinct events (the base stream).
    pub events: usize,
    /// Listings created over the stream (at least 1 is used).
    pub listings: usize,
    /// Districts the listings are spread over (at least 1 is used).
    pub districts: usize,
    /// The seed: the same configuration always gives the same lines.
    pub seed: u64,
    /// Re-deliveries as a fraction of `events` (0.02 = 2 %); each is a copy of an applied
    /// event placed somewhere after it.
    pub redeliveries: f64,
    /// Lines that reuse the event id of an applied event with another payload, placed
    /// somewhere after it.
    pub conflicts: usize,
    /// Malformed lines (bad JSON, missing or out-of-range fields, unknown events, ...).
    pub invalid_lines: usize,
}

impl Default for GenConfig {
    /// 10 000 events over 1 000 listings in 12 districts, 2 % re-deliveries, 5 conflicts
    /// and 5 malformed lines, seed 42.
    fn default() -> Self {
        Self {
            events: 10_000,
            listings: 1_000,
            districts: 12,
            seed: 42,
            redeliveries: 0.02,
            conflicts: 5,
            invalid_lines: 5,
        }
    }
}

const DISTRICTS: [&str; 24] = [
    "Mitte",
    "Kreuzberg",
    "Friedrichshain",
    "Prenzlauer Berg",
    "Neukölln",
    "Charlottenburg",
    "Schöneberg",
    "Wedding",
    "Moabit",
    "Pankow",
    "Treptow",
    "Köpenick",
    "Lichtenberg",
    "Steglitz",
    "Zehlendorf",
    "Spandau",
    "Tempelhof",
    "Reinickendorf",
    "Wilmersdorf",
    "Friedenau",
    "Weißensee",
    "Lichterfelde",
    "Marzahn",
    "Hellersdorf",
];

const ADJECTIVES: [&str; 12] = [
    "Bright",
    "Quiet",
    "Renovated",
    "Spacious",
    "Cosy",
    "Sunny",
    "Modern",
    "Charming",
    "Top-floor",
    "Garden",
    "Altbau",
    "Airy",
];

const KINDS: [&str; 5] = ["flat", "loft", "apartment", "studio", "maisonette"];

/// The name of district number `index`: the Berlin districts, then the same names with a
/// number (`Mitte 2`, ...).
fn district_name(index: usize) -> String {
    let base = DISTRICTS.get(index % DISTRICTS.len()).copied().unwrap_or("Mitte");
    match index / DISTRICTS.len() {
        0 => base.to_owned(),
        round => format!("{base} {}", round + 1),
    }
}

/// One generated line before it is rendered.
#[derive(Debug, Clone)]
enum Line {
    /// A well-formed event; `explicit_id` says whether the line carries its event id, and
    /// `price_object` whether a VND price is written as an object (other currencies always
    /// are).
    Event { event: ListingEvent, explicit_id: bool, price_object: bool },
    /// A malformed line.
    Invalid(String),
}

impl Line {
    fn render(&self) -> String {
        match self {
            Line::Event { event, explicit_id, price_object } => {
                let plain = || if *explicit_id { event.to_json_line() } else { event.to_json_line_compact() };
                let ListingEventKind::ListingCreated { price, .. } = &event.kind else { return plain() };
                if !*price_object || price.currency != Currency::VND {
                    return plain();
                }
                let mut value = event.to_json();
                if let Value::Object(line) = &mut value {
                    if !*explicit_id && event.has_default_id() {
                        line.remove("event_id");
                    }
                    if let Some(Value::Object(payload)) = line.get_mut("payload") {
                        let object =
                            serde_json::json!({"amount": price.amount, "currency": price.currency.as_str()});
                        payload.insert("price".into(), object);
                    }
                }
                value.to_string()
            }
            Line::Invalid(text) => text.clone(),
        }
    }
}

struct Listing {
    id: String,
    status: ListingStatus,
    price: u64,
}

struct Generator {
    rng: ChaCha8Rng,
    /// Draws how events look rather than what happens (currencies, the form of a VND
    /// price), apart from `rng`, so that they leave the stream's story as it was.
    style: ChaCha8Rng,
    now: u64,
    inquiries: u64,
    listings: Vec<Listing>,
    /// Indices of listings that are not archived.
    live: Vec<usize>,
    /// Indices of archived listings.
    archived: Vec<usize>,
}

fn clamp_probability(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

impl Generator {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < clamp_probability(p)
    }

    /// A uniform index below `n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.random_range(0..n)
        }
    }

    fn tick(&mut self) -> u64 {
        self.now = self.now.saturating_add(self.rng.random_range(1..=5u64)).min(MAX_SAFE_INTEGER);
        self.now
    }

    fn create(&mut self, districts: usize) -> ListingEvent {
        let number = self.listings.len() + 1;
        let id = format!("listing-{number:06}");
        // Skewed towards the first districts, so that the leaderboard has a shape.
        let u: f64 = self.rng.random();
        let district = district_name(((u * u * districts as f64) as usize).min(districts.saturating_sub(1)));
        let rooms = self.rng.random_range(1..=5u64);
        let adjective = ADJECTIVES.choose(&mut self.rng).copied().unwrap_or("Bright");
        let kind = KINDS.choose(&mut self.rng).copied().unwrap_or("flat");
        let title = format!("{adjective} {rooms}-room {kind}");
        let amount = rooms * self.rng.random_range(60..=180u64) * 1_000;
        let currency = match self.style.random::<f64>() {
            r if r < 0.2 => Currency::EUR,
            r if r < 0.3 => Currency::USD,
            _ => Currency::VND,
        };
        // Some drafts are abandoned: nothing more ever happens to them.
        if self.live.is_empty() || !self.chance(0.08) {
            self.live.push(self.listings.len());
        }
        self.listings.push(Listing { id: id.clone(), status: ListingStatus::Draft, price: amount });
        let at = self.tick();
        let price = Money::new(amount, currency);
        ListingEvent::new(id, at, ListingEventKind::ListingCreated { title, price, district })
    }

    fn inquiry(&mut self, listing: usize) -> Option<ListingEvent> {
        let id = self.listings.get(listing)?.id.clone();
        self.inquiries += 1;
        let inquiry_id = format!("inq-{:07}", self.inquiries);
        let at = self.tick();
        Some(ListingEvent::new(id, at, ListingEventKind::InquiryReceived { inquiry_id }))
    }

    /// The next event of a live listing (picked at `slot` of `live`), by its status.
    fn act(&mut self, slot: usize, p_archive: f64) -> Option<ListingEvent> {
        let index = *self.live.get(slot)?;
        let roll: f64 = self.rng.random();
        let status = self.listings.get(index)?.status;
        let kind = match status {
            _ if roll < p_archive => {
                self.live.swap_remove(slot);
                self.archived.push(index);
                ListingEventKind::ListingArchived
            }
            ListingStatus::Draft if roll < p_archive + 0.25 => self.price_change(index)?,
            ListingStatus::Draft => ListingEventKind::ListingPublished,
            ListingStatus::Published if roll < p_archive + 0.12 => self.price_change(index)?,
            ListingStatus::Published | ListingStatus::Archived => return self.inquiry(index),
        };
        let listing = self.listings.get_mut(index)?;
        match kind {
            ListingEventKind::ListingArchived => listing.status = ListingStatus::Archived,
            ListingEventKind::ListingPublished => listing.status = ListingStatus::Published,
            _ => {}
        }
        let id = listing.id.clone();
        let at = self.tick();
        Some(ListingEvent::new(id, at, kind))
    }

    fn price_change(&mut self, index: usize) -> Option<ListingEventKind> {
        let percent = self.rng.random_range(85..=110u64);
        let listing = self.listings.get_mut(index)?;
        let price = (listing.price / 100 * percent / 1_000 * 1_000).max(1_000);
        listing.price = price;
        Some(ListingEventKind::ListingPriceChanged { price })
    }

    /// A malformed line of one of several kinds, about a real listing where it names one.
    fn invalid_line(&mut self, at: u64) -> String {
        let pick = self.below(self.listings.len());
        let id = self.listings.get(pick).map_or("listing-000001", |l| l.id.as_str()).to_owned();
        match self.below(10) {
            0 => String::new(),
            1 => {
                format!(r#"{{"aggregate_id":"{id}","event":"ListingPublished","occurred_at":{at},"payload":"#)
            }
            2 => format!(r#"["{id}","ListingPublished",{at}]"#),
            3 => format!(
                r#"{{"aggregate_id":"{id}","event":"ListingPriceChanged","occurred_at":{at},"payload":{{}}}}"#
            ),
            4 => format!(
                r#"{{"aggregate_id":"{id}","event":"ListingTeleported","occurred_at":{at},"payload":{{}}}}"#
            ),
            5 => format!(
                r#"{{"aggregate_id":"{id}","event":"ListingPriceChanged","occurred_at":{at},"payload":{{"price":-1000}}}}"#
            ),
            6 => format!(
                r#"{{"aggregate_id":"{id}","event":"ListingCreated","occurred_at":{at},"payload":{{"title":"{}","price":1000,"district":"Mitte"}}}}"#,
                "x".repeat(201)
            ),
            7 => format!(
                r#"{{"aggregate_id":"{id}","event":"ListingArchived","occurred_at":"{at}","payload":{{}}}}"#
            ),
            8 => "null".to_owned(),
            _ => format!(
                r#"{{"aggregate_id":"{id}","event":"ListingPublished","occurred_at":{at},"payload":[]}}"#
            ),
        }
    }
}

/// A conflicting twin of an applied event: same id, another payload (for a creation, with
/// `other_currency`, the same amount in another currency). `None` for events without a
/// payload (their twin would be the same event).
fn conflicting(event: &ListingEvent, bump: u64, other_currency: bool) -> Option<ListingEvent> {
    let kind = match &event.kind {
        ListingEventKind::ListingCreated { title, price, district } => ListingEventKind::ListingCreated {
            title: title.clone(),
            price: match (other_currency, price.currency) {
                (true, Currency::VND) => Money::new(price.amount, Currency::EUR),
                (true, _) => Money::new(price.amount, Currency::VND),
                (false, _) => {
                    Money::new(price.amount.saturating_add(bump).min(MAX_SAFE_INTEGER), price.currency)
                }
            },
            district: district.clone(),
        },
        ListingEventKind::ListingPriceChanged { price } => {
            ListingEventKind::ListingPriceChanged { price: price.saturating_add(bump).min(MAX_SAFE_INTEGER) }
        }
        ListingEventKind::InquiryReceived { inquiry_id } => {
            ListingEventKind::InquiryReceived { inquiry_id: format!("{inquiry_id}-bis") }
        }
        ListingEventKind::ListingPublished | ListingEventKind::ListingArchived => return None,
    };
    let twin = ListingEvent { kind, ..event.clone() };
    (twin != *event).then_some(twin)
}

fn build(config: GenConfig) -> Vec<Line> {
    let listings_target = config.listings.max(1);
    let districts = config.districts.max(1);
    let events = config.events;
    let mut g = Generator {
        rng: ChaCha8Rng::seed_from_u64(config.seed),
        style: ChaCha8Rng::seed_from_u64(config.seed ^ STYLE_SEED),
        now: GENERATED_START_MILLIS,
        inquiries: 0,
        listings: Vec::new(),
        live: Vec::new(),
        archived: Vec::new(),
    };
    // Enough archiving that some listings end archived, not so much that all do.
    let p_archive = (0.3 * listings_target as f64 / events.max(1) as f64).clamp(0.001, 0.05);

    let mut base: Vec<ListingEvent> = Vec::with_capacity(events);
    // Indices into `base` of events the rules accept (with a payload, for conflicts).
    let mut applied: Vec<usize> = Vec::with_capacity(events);
    let mut applied_with_payload: Vec<usize> = Vec::new();
    for step in 0..events {
        // Create listings at a pace that has them all by the middle of the stream.
        let due = ((step as u128 + 1) * 2 * listings_target as u128).div_ceil(events as u128);
        let created = g.listings.len();
        let may_create = created < listings_target;
        let late_inquiry = !g.archived.is_empty() && ((g.live.is_empty() && !may_create) || g.chance(0.01));
        let (event, accepted) = if may_create && ((created as u128) < due || g.live.is_empty()) {
            (Some(g.create(districts)), true)
        } else if late_inquiry {
            // An inquiry for a listing archived meanwhile: the rules refuse it.
            let pick = g.below(g.archived.len());
            let index = g.archived.get(pick).copied().unwrap_or(0);
            (g.inquiry(index), false)
        } else {
            let slot = g.below(g.live.len());
            (g.act(slot, p_archive), true)
        };
        let Some(event) = event else { continue };
        if accepted {
            applied.push(base.len());
            if !matches!(event.kind, ListingEventKind::ListingPublished | ListingEventKind::ListingArchived) {
                applied_with_payload.push(base.len());
            }
        }
        base.push(event);
    }

    // Extra lines, each placed before base line `position` (or at the end).
    let n = base.len();
    let mut extras: Vec<Vec<Line>> = (0..=n).map(|_| Vec::new()).collect();
    // A fraction above 1 re-delivers events several times over (capped at 100 times).
    let fraction = if config.redeliveries.is_finite() { config.redeliveries.clamp(0.0, 100.0) } else { 0.0 };
    let redeliveries = (events as f64 * fraction).round() as usize;
    for _ in 0..redeliveries {
        let Some(&original) = applied.choose(&mut g.rng) else { break };
        let Some(event) = base.get(original).cloned() else { continue };
        let position = g.rng.random_range(original + 1..=n);
        let explicit_id = g.chance(0.5);
        let price_object = g.style.random_bool(0.5);
        if let Some(bucket) = extras.get_mut(position) {
            bucket.push(Line::Event { event, explicit_id, price_object });
        }
    }
    for _ in 0..config.conflicts {
        let Some(&original) = applied_with_payload.choose(&mut g.rng) else { break };
        let bump = g.rng.random_range(1..=50u64) * 1_000;
        let other_currency = g.style.random_bool(0.3);
        let Some(twin) = base.get(original).and_then(|e| conflicting(e, bump, other_currency)) else {
            continue;
        };
        let position = g.rng.random_range(original + 1..=n);
        let explicit_id = g.chance(0.5);
        let price_object = g.style.random_bool(0.5);
        if let Some(bucket) = extras.get_mut(position) {
            bucket.push(Line::Event { event: twin, explicit_id, price_object });
        }
    }
    for _ in 0..config.invalid_lines {
        let position = g.rng.random_range(0..=n);
        let at = base.get(position).map_or(g.now, |e| e.occurred_at);
        let line = g.invalid_line(at);
        if let Some(bucket) = extras.get_mut(position) {
            bucket.push(Line::Invalid(line));
        }
    }

    let mut lines = Vec::with_capacity(n + extras.iter().map(Vec::len).sum::<usize>());
    let mut extras = extras.into_iter();
    for event in base {
        lines.extend(extras.next().unwrap_or_default());
        let explicit_id = g.chance(0.5);
        let price_object = g.style.random_bool(0.25);
        lines.push(Line::Event { event, explicit_id, price_object });
    }
    lines.extend(extras.flatten());
    lines
}

/// Generates a stream of JSON lines (without newlines), deterministically from the seed.
///
/// Listings are created (all of them by the middle of the stream), published, re-priced,
/// asked about, and some archived; about 1 % of events are late inquiries for a listing
/// archived meanwhile, which the rules reject. Times start at
/// [`GENERATED_START_MILLIS`] and grow by 1 to 5 ms per event, so no two distinct events
/// share a default id; event ids are the default ones, written out on about half the
/// lines. About 70 % of listings are priced in `VND`, 20 % in `EUR` and 10 % in `USD`;
/// prices in `EUR` and `USD` are written as objects `{"amount", "currency"}`, those in
/// `VND` mostly as bare integers and otherwise as objects (the same event either way).
/// Some conflicting lines give a creation's amount in another currency. Districts are Berlin's (`Mitte`, `Kreuzberg`, `Neukölln`, ...), numbered
/// (`Mitte 2`) past the 24 real ones.
///
/// ```
/// use driftless_listings::{generate, GenConfig, ListingModel};
///
/// let config = GenConfig { events: 500, listings: 50, districts: 5, seed: 7, redeliveries: 0.1, conflicts: 3, invalid_lines: 4 };
/// let lines = generate(config);
/// assert_eq!(lines, generate(config));
/// let mut model = ListingModel::new();
/// for line in &lines {
///     let _ = model.apply_line(line);
/// }
/// let summary = model.summary();
/// assert_eq!((summary.duplicates, summary.conflicts, summary.malformed), (50, 3, 4));
/// ```
#[must_use]
pub fn generate(config: GenConfig) -> Vec<String> {
    build(config).iter().map(Line::render).collect()
}

/// The well-formed events of [`generate`]'s stream, in order: the same stream without its
/// malformed lines, as events (re-deliveries and conflicts included).
#[must_use]
pub fn generate_events(config: GenConfig) -> Vec<ListingEvent> {
    build(config)
        .into_iter()
        .filter_map(|line| match line {
            Line::Event { event, .. } => Some(event),
            Line::Invalid(_) => None,
        })
        .collect()
}
