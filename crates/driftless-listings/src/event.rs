//! The events of the listings marketplace.

use driftless_domain::{Event, EventId, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

/// The largest integer a JSON number carries exactly: 2^53 - 1. `price` and `occurred_at`
/// are limited to `0..=MAX_SAFE_INTEGER`, so that every JSON reader agrees on them.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A currency: exactly 3 ASCII uppercase letters, such as `EUR` (an ISO 4217 code; the
/// letters are checked, not the list of codes).
///
/// Its serde form is the 3-letter string, in JSON and in the stable encoding alike. Reading
/// JSON checks it. The stable encoding is read back as written, without the check: it was
/// checked when the event was parsed, and a row or event type whose `Deserialize` accepts
/// what it reads can be traced, so that a read model's fingerprint follows its shape.
///
/// ```
/// use driftless_listings::Currency;
///
/// let eur: Currency = "EUR".parse()?;
/// assert_eq!(eur, Currency::EUR);
/// assert_eq!(eur.as_str(), "EUR");
/// assert!("eur".parse::<Currency>().is_err());
/// assert!("EURO".parse::<Currency>().is_err());
/// # Ok::<(), driftless_listings::CurrencyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// Why a text is not a [`Currency`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a currency: a currency is exactly 3 ASCII uppercase letters, such as EUR")]
pub struct CurrencyError {
    /// The text refused.
    pub text: String,
}

impl Currency {
    /// The Vietnamese đồng: the currency of every price of contract version 1, and of a
    /// price given as a bare integer.
    pub const VND: Self = Self(*b"VND");
    /// The euro.
    pub const EUR: Self = Self(*b"EUR");
    /// The US dollar.
    pub const USD: Self = Self(*b"USD");

    /// The currency of `code`.
    ///
    /// # Errors
    /// [`CurrencyError`] unless `code` is exactly 3 ASCII uppercase letters.
    pub fn new(code: &str) -> Result<Self, CurrencyError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(CurrencyError { text: code.to_owned() }),
        }
    }

    /// The 3-letter code.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Always 3 ASCII letters: `new` and the constants are the only ways in.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Self::new(code)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Code;
        impl serde::de::Visitor<'_> for Code {
            type Value = Currency;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a currency: exactly 3 ASCII uppercase letters")
            }

            fn visit_str<E: serde::de::Error>(self, code: &str) -> Result<Currency, E> {
                Currency::new(code).map_err(E::custom)
            }
        }
        /// The stable encoding: the bytes as written (see the type's documentation).
        struct Stored;
        impl serde::de::Visitor<'_> for Stored {
            type Value = Currency;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a currency code")
            }

            fn visit_str<E: serde::de::Error>(self, code: &str) -> Result<Currency, E> {
                let mut bytes = [b'?'; 3];
                for (slot, b) in bytes.iter_mut().zip(code.bytes()) {
                    *slot = b;
                }
                Ok(Currency(bytes))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(Code)
        } else {
            deserializer.deserialize_str(Stored)
        }
    }
}

/// An amount of money: a whole number of units of `currency`, `0..=MAX_SAFE_INTEGER`.
///
/// In a JSON line it is either a bare integer (the amount in [`Currency::VND`], as version
/// 1 of the contract wrote every price) or an object `{"amount": 5, "currency": "EUR"}`;
/// both forms of a VND amount are the same `Money`.
///
/// ```
/// use driftless_listings::{Currency, Money};
///
/// assert_eq!(Money::from(5), Money::new(5, Currency::VND));
/// assert_eq!(Money::new(5, Currency::VND).to_json(), serde_json::json!(5));
/// assert_eq!(
///     Money::new(5, Currency::EUR).to_json(),
///     serde_json::json!({"amount": 5, "currency": "EUR"})
/// );
/// assert_eq!(Money::new(420_000, Currency::EUR).to_string(), "420000 EUR");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// How many units, `0..=MAX_SAFE_INTEGER`.
    pub amount: u64,
    /// Of which currency.
    pub currency: Currency,
}

impl Money {
    /// `amount` units of `currency`.
    #[must_use]
    pub const fn new(amount: u64, currency: Currency) -> Self {
        Self { amount, currency }
    }

    /// The price in its JSON line form: the bare amount for [`Currency::VND`], an object
    /// `{"amount", "currency"}` otherwise.
    #[must_use]
    pub fn to_json(&self) -> Value {
        if self.currency == Currency::VND {
            return Value::from(self.amount);
        }
        let mut object = Map::new();
        object.insert("amount".into(), Value::from(self.amount));
        object.insert("currency".into(), Value::from(self.currency.as_str()));
        Value::Object(object)
    }
}

impl From<u64> for Money {
    /// An amount in [`Currency::VND`], as a bare integer price means.
    fn from(amount: u64) -> Self {
        Self::new(amount, Currency::VND)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

/// One event of a listing's life, as the write model publishes it.
///
/// The serde derive of this struct is the event's *stable encoding*: the journal stores it
/// and the payload hash is computed over it. It covers the event id, the aggregate, the
/// time and the kind with its payload, and nothing of the JSON text the event was parsed
/// from, so key order, white space, ignored fields and the form of a VND price (`5` or
/// `{"amount": 5, "currency": "VND"}`) never change the hash.
///
/// This is version 2 of the encoding ([`Event::SCHEMA_VERSION`]): `ListingCreated`'s price
/// became [`Money`]. Version 1 is kept as [`ListingEventV1`](crate::v1::ListingEventV1),
/// and [`embed::upcasters`](crate::embed::upcasters) reads journal entries written at it.
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
        /// Its asking price: an amount `0..=MAX_SAFE_INTEGER` in a currency.
        price: Money,
        /// The district it is in, 1 to 100 characters.
        district: String,
    },
    /// The asking price changed.
    ListingPriceChanged {
        /// The new amount, `0..=MAX_SAFE_INTEGER`, in the listing's currency.
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

    /// The payload as a JSON object (empty for events without one). A price in
    /// [`Currency::VND`] is written as a bare integer, any other as an object (see
    /// [`Money::to_json`]).
    #[must_use]
    pub fn payload_json(&self) -> Value {
        let mut payload = Map::new();
        match self {
            Self::ListingCreated { title, price, district } => {
                payload.insert("title".into(), Value::from(title.as_str()));
                payload.insert("price".into(), price.to_json());
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
    /// Version 2: `ListingCreated`'s price is [`Money`] (version 1: an integer).
    const SCHEMA_VERSION: u32 = 2;

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

/// Version 1 of the event's stable encoding, as the release before contract version 2
/// journaled it: `ListingCreated`'s price was a bare integer (in VND, as version 2 reads it).
///
/// These types exist to read old journal entries and dead letters: they are exactly the
/// earlier `ListingEvent` and `ListingEventKind` (same fields, same order, same types, same
/// variants), so that their serde form decodes what that release wrote.
/// [`embed::upcasters`](crate::embed::upcasters) registers the step from them to the current
/// [`ListingEvent`] (`From<ListingEventV1>`).
///
/// ```
/// use driftless_listings::v1::{ListingEventKindV1, ListingEventV1};
/// use driftless_listings::{Currency, ListingEvent, ListingEventKind, Money};
///
/// let old = ListingEventV1 {
///     event_id: "l-1:1:ListingCreated".into(),
///     aggregate_id: "l-1".into(),
///     occurred_at: 1,
///     kind: ListingEventKindV1::ListingCreated { title: "Loft".into(), price: 5, district: "Mitte".into() },
/// };
/// let new = ListingEvent::from(old);
/// assert_eq!(
///     new.kind,
///     ListingEventKind::ListingCreated { title: "Loft".into(), price: Money::new(5, Currency::VND), district: "Mitte".into() }
/// );
/// ```
pub mod v1 {
    use super::{ListingEvent, ListingEventKind, Money};
    use serde::{Deserialize, Serialize};

    /// A listing event at schema version 1.
    #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub struct ListingEventV1 {
        /// The event's identity.
        pub event_id: String,
        /// The listing the event belongs to.
        pub aggregate_id: String,
        /// When it happened, in Unix milliseconds.
        pub occurred_at: u64,
        /// What happened, with its payload.
        pub kind: ListingEventKindV1,
    }

    /// What happened to a listing, at schema version 1.
    #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum ListingEventKindV1 {
        /// A new listing was drafted.
        ListingCreated {
            /// Its title.
            title: String,
            /// Its asking price, in VND.
            price: u64,
            /// The district it is in.
            district: String,
        },
        /// The asking price changed.
        ListingPriceChanged {
            /// The new price.
            price: u64,
        },
        /// A draft listing went live.
        ListingPublished,
        /// The listing was taken off the market for good.
        ListingArchived,
        /// Someone asked about a published listing.
        InquiryReceived {
            /// The inquiry's id.
            inquiry_id: String,
        },
    }

    impl From<ListingEventKindV1> for ListingEventKind {
        /// The same event at version 2: a version-1 price is an amount in VND.
        fn from(old: ListingEventKindV1) -> Self {
            match old {
                ListingEventKindV1::ListingCreated { title, price, district } => {
                    Self::ListingCreated { title, price: Money::from(price), district }
                }
                ListingEventKindV1::ListingPriceChanged { price } => Self::ListingPriceChanged { price },
                ListingEventKindV1::ListingPublished => Self::ListingPublished,
                ListingEventKindV1::ListingArchived => Self::ListingArchived,
                ListingEventKindV1::InquiryReceived { inquiry_id } => Self::InquiryReceived { inquiry_id },
            }
        }
    }

    impl From<ListingEventV1> for ListingEvent {
        /// The same event at version 2, with its id, aggregate and time unchanged.
        fn from(old: ListingEventV1) -> Self {
            Self {
                event_id: old.event_id,
                aggregate_id: old.aggregate_id,
                occurred_at: old.occurred_at,
                kind: old.kind.into(),
            }
        }
    }
}
