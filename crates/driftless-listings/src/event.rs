//! The events of the listings marketplace.

use driftless_domain::{Event, EventId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The largest integer a JSON number carries exactly: 2^53 - 1. `price` and `occurred_at`
/// are limited to `0..=MAX_SAFE_INTEGER`, so that every JSON reader agrees on them.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// One event of a listing's life, as the write model publishes it.
///
/// The serde derive of this struct is the event's *stable encoding*: the journal stores it
/// and the payload hash is computed over it. It covers the event id, the aggregate, the
/// time and the kind with its payload, and nothing of the JSON text the event was parsed
/// from, so key order, white space and ignored fields never change the hash.
///
/// The event id is always stored. When a JSON line has none it is derived as
/// `"{aggregate_id}:{occurred_at}:{event}"`, so an explicit id equal to that default and an
/// absent one give the same event.
///
/// ```
/// use driftless_domain::Event;
/// use driftless_listings::{ListingEvent, ListingEventKind};
///
/// let e = ListingEvent::new("listing-1", 1_000, ListingEventKind::ListingPublished);
/// assert_eq!(e.event_id, "listing-1:1000:ListingPublished");
/// assert_eq!(e.event_name(), "ListingPublished");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListingEvent {
    /// The event's identity: explicit in the JSON line, or the default derivation.
    pub event_id: String,
    /// The listing the event belongs to.
    pub aggregate_id: String,
    /// When it happened, in Unix milliseconds.
    pub occurred_at: u64,
    /// What happened, with its payload.
    pub kind: ListingEventKind,
}

/// What happened to a listing, with the event's payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListingEventKind {
    /// A new listing was drafted.
    ListingCreated {
        /// Its title, 1 to 200 characters.
        title: String,
        /// Its asking price, `0..=MAX_SAFE_INTEGER`.
        price: u64,
        /// The district it is in, 1 to 100 characters.
        district: String,
    },
    /// The asking price changed.
    ListingPriceChanged {
        /// The new price, `0..=MAX_SAFE_INTEGER`.
        price: u64,
    },
    /// A draft listing went live.
    ListingPublished,
    /// The listing was taken off the market for good.
    ListingArchived,
    /// Someone asked about a published listing.
    InquiryReceived {
        /// The inquiry's id, 1 to 128 bytes.
        inquiry_id: String,
    },
}

impl ListingEventKind {
    /// Every event name, in the order the contract lists them.
    pub const NAMES: [&'static str; 5] =
        ["ListingCreated", "ListingPriceChanged", "ListingPublished", "ListingArchived", "InquiryReceived"];

    /// The event's name, e.g. `ListingCreated`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::ListingCreated { .. } => "ListingCreated",
            Self::ListingPriceChanged { .. } => "ListingPriceChanged",
            Self::ListingPublished => "ListingPublished",
            Self::ListingArchived => "ListingArchived",
            Self::InquiryReceived { .. } => "InquiryReceived",
        }
    }

    /// The payload as a JSON object (empty for events without one).
    #[must_use]
    pub fn payload_json(&self) -> Value {
        let mut payload = Map::new();
        match self {
            Self::ListingCreated { title, price, district } => {
                payload.insert("title".into(), Value::from(title.as_str()));
                payload.insert("price".into(), Value::from(*price));
                payload.insert("district".into(), Value::from(district.as_str()));
            }
            Self::ListingPriceChanged { price } => {
                payload.insert("price".into(), Value::from(*price));
            }
            Self::ListingPublished | Self::ListingArchived => {}
            Self::InquiryReceived { inquiry_id } => {
                payload.insert("inquiry_id".into(), Value::from(inquiry_id.as_str()));
            }
        }
        Value::Object(payload)
    }
}

/// The default event id of the contract: `"{aggregate_id}:{occurred_at}:{event}"`.
#[must_use]
pub fn default_event_id(aggregate_id: &str, occurred_at: u64, event_name: &str) -> String {
    EventId::derive(aggregate_id, Timestamp(occurred_at), event_name).as_str().to_owned()
}

impl ListingEvent {
    /// An event with the default event id.
    #[must_use]
    pub fn new(aggregate_id: impl Into<String>, occurred_at: u64, kind: ListingEventKind) -> Self {
        let aggregate_id = aggregate_id.into();
        let event_id = default_event_id(&aggregate_id, occurred_at, kind.name());
        Self { event_id, aggregate_id, occurred_at, kind }
    }

    /// The same event with an explicit event id.
    #[must_use]
    pub fn with_event_id(mut self, event_id: impl Into<String>) -> Self {
        self.event_id = event_id.into();
        self
    }

    /// Whether the stored event id is the default derivation (so a JSON line may omit it).
    #[must_use]
    pub fn has_default_id(&self) -> bool {
        self.event_id == default_event_id(&self.aggregate_id, self.occurred_at, self.kind.name())
    }

    /// The event in its JSON line form (an object with `aggregate_id`, `event`,
    /// `occurred_at`, `payload` and `event_id`).
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut line = Map::new();
        line.insert("aggregate_id".into(), Value::from(self.aggregate_id.as_str()));
        line.insert("event".into(), Value::from(self.kind.name()));
        line.insert("occurred_at".into(), Value::from(self.occurred_at));
        line.insert("payload".into(), self.kind.payload_json());
        line.insert("event_id".into(), Value::from(self.event_id.as_str()));
        Value::Object(line)
    }

    /// The event as one JSON line (without the newline), event id included; [`parse_line`]
    /// reads it back as the same event.
    ///
    /// [`parse_line`]: crate::parse_line
    #[must_use]
    pub fn to_json_line(&self) -> String {
        self.to_json().to_string()
    }

    /// The event as one JSON line without `event_id` when the id is the default one (the
    /// form most write models emit); with it otherwise.
    #[must_use]
    pub fn to_json_line_compact(&self) -> String {
        let mut value = self.to_json();
        if self.has_default_id() {
            if let Value::Object(map) = &mut value {
                map.remove("event_id");
            }
        }
        value.to_string()
    }
}

impl Event for ListingEvent {
    fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }

    fn event_name(&self) -> &str {
        self.kind.name()
    }

    fn occurred_at(&self) -> Timestamp {
        Timestamp(self.occurred_at)
    }

    /// The stored event id.
    fn event_id(&self) -> EventId {
        match EventId::new(self.event_id.as_str()) {
            Ok(id) => id,
            // `EventId::new` refuses control characters, which the sample domain's contract
            // allows; the id is then taken over verbatim through its serde form, so that it
            // stays the identity the line gave.
            Err(_) => serde_json::from_value(Value::from(self.event_id.as_str())).unwrap_or_else(|_| {
                EventId::derive(&self.aggregate_id, self.occurred_at(), self.kind.name())
            }),
        }
    }
}
