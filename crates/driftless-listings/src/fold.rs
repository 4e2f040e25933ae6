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
    /// The same event (same id, same event as parsed) was already applied: no effect.
    Duplicate,
    /// Another event with the same id was already applied: no effect.
    Conflict {
        /// The shared event id.
        event_id: String,
    },
    /// The business rules refused it: no effect, and it is not remembered, so a
    /// re-delivery is tried again.
    Rejected(Rejection),
    /// It was applied to every read model.
    Applied,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Duplicate => f.write_str("a duplicate of an applied event, skipped"),
            Self::Conflict { event_id } => {
                write!(f, "a conflict: event id {event_id} was already applied with another payload")
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
/// as the contract says, deduplicating by event id.
///
/// It is what tests, reconcilers and fuzz targets compare the engine against. It keeps
/// every applied event (to tell a duplicate from a conflict) and counts what it saw in a
/// [`Summary`].
///
/// ```
/// use driftless_listings::{ListingEvent, ListingEventKind, ListingModel, Outcome};
///
/// let mut model = ListingModel::new();
/// let created = ListingEvent::new(
///     "l-1",
///     1,
///     ListingEventKind::ListingCreated { title: "Loft".into(), price: 100, district: "Mitte".into() },
/// );
/// assert_eq!(model.apply(&created), Outcome::Applied);
/// assert_eq!(model.apply(&created), Outcome::Duplicate);
/// assert_eq!(model.card("l-1").map(|c| c.version), Some(1));
/// assert_eq!(model.district("Mitte").map(|d| d.listings), Some(1));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ListingModel {
    cards: BTreeMap<String, ListingCard>,
    stats: BTreeMap<String, DistrictStats>,
    applied: HashMap<String, ListingEvent>,
    summary: Summary,
}

/// Another name for [`ListingModel`]: the fold of the contract.
pub type Fold = ListingModel;

impl ListingModel {
    /// An empty model.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event: duplicate, conflict, rejected or applied, in that order.
    pub fn apply(&mut self, event: &ListingEvent) -> Outcome {
        let outcome = self.decide_and_apply(event);
        self.summary.record(&outcome);
        outcome
    }

    fn decide_and_apply(&mut self, event: &ListingEvent) -> Outcome {
        if let Some(earlier) = self.applied.get(&event.event_id) {
            return if earlier == event {
                Outcome::Duplicate
            } else {
                Outcome::Conflict { event_id: event.event_id.clone() }
            };
        }
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
        self.applied.insert(event.event_id.clone(), event.clone());
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
        self.applied.get(event_id)
    }
}

/// Refolds one listing's card from its own events (in journal order), deduplicating by
/// event id, as a reconciler does to check a stored `listing_card` row.
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
///     ListingEvent::new("l-1", 1, ListingEventKind::ListingCreated { title: "Loft".into(), price: 5, district: "Mitte".into() }),
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
        model.apply(event);
    }
    model.cards.remove(listing_id)
}
