//! The reference model: a pure, in-memory fold of the whole contract, dedupe included.

use crate::event::ListingEvent;
use crate::model::{decide, DistrictStats, ListingCard, Rejection};
use crate::parse::{parse_line, MalformedLine};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// What became of one well-formed event, in the contract's order of precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The same event (same id, same event as parsed and normalised) was already applied:
    /// no effect.
    Duplicate,
    /// The first delivery of this id (applied or rejected) had another payload: no effect.
    Conflict {
        /// The shared event id.
        event_id: String,
    },
    /// The business rules refused it: no effect. Its payload is now the id's, so a
    /// re-delivery of the same event is tried again and one of another payload is a
    /// conflict.
    Rejected(Rejection),
    /// It was applied to every read model.
    Applied,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Duplicate => f.write_str("a duplicate of an applied event, skipped"),
            Self::Conflict { event_id } => {
                write!(f, "a conflict: event id {event_id} was first delivered with another payload")
            }
            Self::Rejected(reason) => write!(f, "rejected: {reason}"),
            Self::Applied => f.write_str("applied"),
        }
    }
}

/// Counts of an ingestion run. `lines` is the sum of the other five.
///
/// Serializes as the JSON object `{"lines", "applied", "duplicates", "conflicts",
/// "rejected", "malformed"}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Summary {
    /// Lines read.
    pub lines: u64,
    /// Events applied.
    pub applied: u64,
    /// Duplicates skipped.
    pub duplicates: u64,
    /// Conflicts skipped.
    pub conflicts: u64,
    /// Events the business rules rejected.
    pub rejected: u64,
    /// Malformed lines.
    pub malformed: u64,
}

impl Summary {
    /// Counts one line with a well-formed event and its outcome.
    pub fn record(&mut self, outcome: &Outcome) {
        self.lines = self.lines.saturating_add(1);
        let counter = match outcome {
            Outcome::Duplicate => &mut self.duplicates,
            Outcome::Conflict { .. } => &mut self.conflicts,
            Outcome::Rejected(_) => &mut self.rejected,
            Outcome::Applied => &mut self.applied,
        };
        *counter = counter.saturating_add(1);
    }

    /// Counts one malformed line.
    pub fn record_malformed(&mut self) {
        self.lines = self.lines.saturating_add(1);
        self.malformed = self.malformed.saturating_add(1);
    }

    /// The summary as a JSON object with exactly the fields `lines`, `applied`,
    /// `duplicates`, `conflicts`, `rejected` and `malformed`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("lines".into(), Value::from(self.lines));
        out.insert("applied".into(), Value::from(self.applied));
        out.insert("duplicates".into(), Value::from(self.duplicates));
        out.insert("conflicts".into(), Value::from(self.conflicts));
        out.insert("rejected".into(), Value::from(self.rejected));
        out.insert("malformed".into(), Value::from(self.malformed));
        Value::Object(out)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lines: {} applied, {} duplicates, {} conflicts, {} rejected, {} malformed",
            self.lines, self.applied, self.duplicates, self.conflicts, self.rejected, self.malformed
        )
    }
}

/// The reference model of the sample domain: folds events into both read models exactly
/// as the contract (version 2) says, deduplicating by event id.
///
/// It is what tests, reconcilers and fuzz targets compare the engine against. It keeps
/// the payload that fixed each event id (the first well-formed delivery, applied or
/// rejected) and whether it was applied, to tell a duplicate, a conflict and a retry
/// apart, and counts what it saw in a [`Summary`].
///
/// [`ListingModel::apply`] judges deliveries, as ingestion does; [`ListingModel::replay`]
/// folds a journal, which holds only the deliveries an engine accepted.
///
/// ```
/// use driftless_listings::{Currency, ListingEvent, ListingEventKind, ListingModel, Money, Outcome};
///
/// let mut model = ListingModel::new();
/// let created = ListingEvent::new(
///     "l-1",
///     1,
///     ListingEventKind::ListingCreated {
///         title: "Loft".into(),
///         price: Money::new(100, Currency::EUR),
///         district: "Mitte".into(),
///     },
/// );
/// assert_eq!(model.apply(&created), Outcome::Applied);
/// assert_eq!(model.apply(&created), Outcome::Duplicate);
/// assert_eq!(model.card("l-1").map(|c| (c.version, c.currency)), Some((1, Currency::EUR)));
/// assert_eq!(model.district("Mitte").map(|d| d.listings), Some(1));
///
/// // A rejected delivery fixes its id's payload too.
/// let early = ListingEvent::new("l-2", 5, ListingEventKind::ListingPublished).with_event_id("p-2");
/// assert!(matches!(model.apply(&early), Outcome::Rejected(_)));
/// let other = ListingEvent::new("l-2", 6, ListingEventKind::ListingArchived).with_event_id("p-2");
/// assert_eq!(model.apply(&other), Outcome::Conflict { event_id: "p-2".into() });
/// ```
#[derive(Debug, Clone, Default)]
pub struct ListingModel {
    cards: BTreeMap<String, ListingCard>,
    stats: BTreeMap<String, DistrictStats>,
    /// By event id: the payload that fixed it, and whether it was applied.
    seen: HashMap<String, Seen>,
    summary: Summary,
}

/// The payload that fixed an event id, and whether it was applied.
#[derive(Debug, Clone)]
struct Seen {
    event: ListingEvent,
    applied: bool,
}

/// Another name for [`ListingModel`]: the fold of the contract.
pub type Fold = ListingModel;

impl ListingModel {
    /// An empty model.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one delivered event: duplicate, conflict, rejected or applied, in that
    /// order.
    ///
    /// The first delivery of an event id, applied or rejected, fixes its payload. A later
    /// delivery of the same event is a duplicate if that id was applied and is tried again
    /// if it was rejected; one of another payload is a conflict either way.
    pub fn apply(&mut self, event: &ListingEvent) -> Outcome {
        let outcome = match self.seen.get(&event.event_id) {
            Some(seen) if seen.event != *event => Outcome::Conflict { event_id: event.event_id.clone() },
            Some(seen) if seen.applied => Outcome::Duplicate,
            _ => self.try_rules(event),
        };
        let applied = outcome == Outcome::Applied;
        match self.seen.get_mut(&event.event_id) {
            Some(seen) => seen.applied |= applied,
            None => {
                self.seen.insert(event.event_id.clone(), Seen { event: event.clone(), applied });
            }
        }
        self.summary.record(&outcome);
        outcome
    }

    /// Folds one event as a journal holds it, in journal order: a duplicate if its id was
    /// applied with the same payload, a conflict if it was applied with another; otherwise
    /// it is tried against the rules.
    ///
    /// A journal holds only what an engine accepted, never a conflict, so for a journal
    /// written under contract version 2 this gives what [`ListingModel::apply`] gave when
    /// the events were delivered. It also refolds a journal written under version 1, whose
    /// release let a payload that was rejected first be followed by another, applied,
    /// under the same id: that outcome stands, as the upgraded database keeps it.
    pub fn replay(&mut self, event: &ListingEvent) -> Outcome {
        let outcome = match self.seen.get(&event.event_id) {
            Some(seen) if seen.applied && seen.event == *event => Outcome::Duplicate,
            Some(seen) if seen.applied => Outcome::Conflict { event_id: event.event_id.clone() },
            _ => self.try_rules(event),
        };
        if outcome == Outcome::Applied {
            self.seen.insert(event.event_id.clone(), Seen { event: event.clone(), applied: true });
        } else if !self.seen.contains_key(&event.event_id) {
            self.seen.insert(event.event_id.clone(), Seen { event: event.clone(), applied: false });
        }
        self.summary.record(&outcome);
        outcome
    }

    /// The business rules and their effect on both read models: `Applied` or `Rejected`.
    fn try_rules(&mut self, event: &ListingEvent) -> Outcome {
        let id = &event.aggregate_id;
        let card = self.cards.get(id);
        let effect = match decide(id, card.map(|c| c.status), &event.kind) {
            Ok(effect) => effect,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        let Some(card) = effect.apply_to_card(id, card.cloned()) else {
            return Outcome::Rejected(Rejection::Missing { listing_id: id.clone() });
        };
        if effect.touches_stats() {
            let stats = self
                .stats
                .entry(card.district.clone())
                .or_insert_with(|| DistrictStats::empty(&card.district));
            effect.apply_to_stats(stats);
        }
        self.cards.insert(id.clone(), card);
        Outcome::Applied
    }

    /// Parses and applies one line, counting it in the summary either way.
    ///
    /// # Errors
    /// [`MalformedLine`] when the line is not a well-formed event (nothing is applied).
    pub fn apply_line(&mut self, line: &str) -> Result<Outcome, MalformedLine> {
        match parse_line(line) {
            Ok(event) => Ok(self.apply(&event)),
            Err(malformed) => {
                self.summary.record_malformed();
                Err(malformed)
            }
        }
    }

    /// Counts a malformed line read elsewhere (e.g. from [`parse_jsonl`]).
    ///
    /// [`parse_jsonl`]: crate::parse_jsonl
    pub fn record_malformed(&mut self) {
        self.summary.record_malformed();
    }

    /// The counts of everything applied, skipped and refused so far.
    #[must_use]
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// All `listing_card` rows, by listing id.
    #[must_use]
    pub fn listing_cards(&self) -> BTreeMap<String, ListingCard> {
        self.cards.clone()
    }

    /// All `district_stats` rows, by district.
    #[must_use]
    pub fn district_stats(&self) -> BTreeMap<String, DistrictStats> {
        self.stats.clone()
    }

    /// The card of one listing.
    #[must_use]
    pub fn card(&self, listing_id: &str) -> Option<&ListingCard> {
        self.cards.get(listing_id)
    }

    /// The figures of one district.
    #[must_use]
    pub fn district(&self, district: &str) -> Option<&DistrictStats> {
        self.stats.get(district)
    }

    /// Iterates over the cards in key order without cloning them.
    pub fn cards(&self) -> impl Iterator<Item = &ListingCard> {
        self.cards.values()
    }

    /// Iterates over the district figures in key order without cloning them.
    pub fn districts(&self) -> impl Iterator<Item = &DistrictStats> {
        self.stats.values()
    }

    /// The applied event with this id, if any.
    #[must_use]
    pub fn applied_event(&self, event_id: &str) -> Option<&ListingEvent> {
        self.seen.get(event_id).filter(|seen| seen.applied).map(|seen| &seen.event)
    }

    /// The payload that fixed this event id, applied or rejected, if it was delivered.
    #[must_use]
    pub fn accepted_event(&self, event_id: &str) -> Option<&ListingEvent> {
        self.seen.get(event_id).map(|seen| &seen.event)
    }
}

/// Refolds one listing's card from its own journal entries (in journal order) with
/// [`ListingModel::replay`], deduplicating by event id, as a reconciler does to check a
/// stored `listing_card` row.
///
/// The listing is the aggregate of the first event; events of other aggregates are
/// ignored. `None` when no `ListingCreated` of it is applied. The result equals the card
/// of the whole-stream fold as long as event ids do not collide across aggregates, which
/// default ids never do (they contain the aggregate id).
///
/// ```
/// use driftless_listings::{fold_listing, ListingEvent, ListingEventKind, ListingStatus};
///
/// let events = [
///     ListingEvent::new("l-1", 1, ListingEventKind::ListingCreated { title: "Loft".into(), price: 5.into(), district: "Mitte".into() }),
///     ListingEvent::new("l-1", 2, ListingEventKind::ListingPublished),
///     ListingEvent::new("l-1", 2, ListingEventKind::ListingPublished),
/// ];
/// let card = fold_listing(&events);
/// assert_eq!(card.map(|c| (c.status, c.version)), Some((ListingStatus::Published, 2)));
/// ```
#[must_use]
pub fn fold_listing(events: &[ListingEvent]) -> Option<ListingCard> {
    let listing_id = &events.first()?.aggregate_id;
    let mut model = ListingModel::new();
    for event in events.iter().filter(|e| &e.aggregate_id == listing_id) {
        model.replay(event);
    }
    model.cards.remove(listing_id)
}
