//! The read models, their tables, and the business rules every consumer shares.

use crate::event::{Currency, ListingEventKind, Money};
use driftless_domain::TableDef;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Where a listing is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListingStatus {
    /// Created, not yet visible.
    Draft,
    /// Live: it can receive inquiries.
    Published,
    /// Off the market for good.
    Archived,
}

impl ListingStatus {
    /// The status as the JSON rows spell it: `draft`, `published` or `archived`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Published => "published",
            Self::Archived => "archived",
        }
    }
}

impl fmt::Display for ListingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row of `listing_card`: what a listing page shows, keyed by listing id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListingCard {
    /// The listing's id (its aggregate id).
    pub listing_id: String,
    /// Its title.
    pub title: String,
    /// Its current price: the amount, in `currency`.
    pub price: u64,
    /// The currency of its price, fixed by its `ListingCreated` (`VND` for a price written
    /// as a bare integer).
    pub currency: Currency,
    /// Its district.
    pub district: String,
    /// Its status.
    pub status: ListingStatus,
    /// How many inquiries it received.
    pub inquiries: u64,
    /// How many events were applied to it (1 after `ListingCreated`).
    pub version: u64,
}

impl ListingCard {
    /// The row as a JSON object with exactly the fields `listing_id`, `title`, `price`,
    /// `currency`, `district`, `status`, `inquiries` and `version`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut row = Map::new();
        row.insert("listing_id".into(), Value::from(self.listing_id.as_str()));
        row.insert("title".into(), Value::from(self.title.as_str()));
        row.insert("price".into(), Value::from(self.price));
        row.insert("currency".into(), Value::from(self.currency.as_str()));
        row.insert("district".into(), Value::from(self.district.as_str()));
        row.insert("status".into(), Value::from(self.status.as_str()));
        row.insert("inquiries".into(), Value::from(self.inquiries));
        row.insert("version".into(), Value::from(self.version));
        Value::Object(row)
    }
}

/// A row of `district_stats`: the figures of one district, keyed by district name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DistrictStats {
    /// The district's name.
    pub district: String,
    /// Listings ever created in it (archived ones included).
    pub listings: u64,
    /// Listings in it that are published now.
    pub published: u64,
    /// Inquiries received by its listings.
    pub inquiries: u64,
}

impl DistrictStats {
    /// A district with no listings yet.
    #[must_use]
    pub fn empty(district: impl Into<String>) -> Self {
        Self { district: district.into(), listings: 0, published: 0, inquiries: 0 }
    }

    /// The row as a JSON object with exactly the fields `district`, `listings`,
    /// `published` and `inquiries`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut row = Map::new();
        row.insert("district".into(), Value::from(self.district.as_str()));
        row.insert("listings".into(), Value::from(self.listings));
        row.insert("published".into(), Value::from(self.published));
        row.insert("inquiries".into(), Value::from(self.inquiries));
        Value::Object(row)
    }
}

/// A row of the district projector's private helper table: the district and status of one
/// listing, keyed by listing id.
///
/// A projector reaches only its own tables, so `district_stats` keeps its own copy of what
/// it needs to know about each listing instead of reading `listing_card`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListingMembership {
    /// The listing's district.
    pub district: String,
    /// The listing's status.
    pub status: ListingStatus,
}

/// The `listing_card` read model, keyed by listing id.
///
/// Its rows gained `currency` with contract version 2: the row type's shape changed, so
/// its fingerprint did, and a database with rows of the old shape rebuilds `listing_card`
/// from its journal when it opens.
pub const LISTING_CARD: TableDef<String, ListingCard> = TableDef::new("listing_card", 1);
/// The `district_stats` read model, keyed by district name.
pub const DISTRICT_STATS: TableDef<String, DistrictStats> = TableDef::new("district_stats", 1);
/// The district projector's helper table: each listing's district and status, keyed by
/// listing id.
pub const DISTRICT_LISTINGS: TableDef<String, ListingMembership> =
    TableDef::new("district_stats_listings", 1);

/// Why the business rules refuse an event in the current state.
///
/// Every consumer of the rules (both projectors and [`ListingModel`]) decides through
/// [`decide`], so they refuse exactly the same events with exactly the same reasons.
///
/// [`ListingModel`]: crate::ListingModel
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// `ListingCreated` for a listing that exists.
    #[error("listing {listing_id} already exists")]
    AlreadyExists {
        /// The listing.
        listing_id: String,
    },
    /// Any other event for a listing whose `ListingCreated` was never applied.
    #[error("listing {listing_id} does not exist")]
    Missing {
        /// The listing.
        listing_id: String,
    },
    /// `ListingPriceChanged` for an archived listing.
    #[error("listing {listing_id} is archived, so its price cannot change")]
    PriceOfArchived {
        /// The listing.
        listing_id: String,
    },
    /// `ListingPublished` for a listing that is not a draft.
    #[error("listing {listing_id} is {status}, not a draft, so it cannot be published")]
    NotDraft {
        /// The listing.
        listing_id: String,
        /// Its status.
        status: ListingStatus,
    },
    /// `ListingArchived` for an archived listing.
    #[error("listing {listing_id} is already archived")]
    AlreadyArchived {
        /// The listing.
        listing_id: String,
    },
    /// `InquiryReceived` for a listing that is not published.
    #[error("listing {listing_id} is {status}, not published, so it cannot receive inquiries")]
    NotPublished {
        /// The listing.
        listing_id: String,
        /// Its status.
        status: ListingStatus,
    },
}

/// What an accepted event does, as [`decide`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect<'e> {
    /// A new draft listing.
    Create {
        /// Its title.
        title: &'e str,
        /// Its price, with its currency.
        price: Money,
        /// Its district.
        district: &'e str,
    },
    /// The price changes.
    ChangePrice {
        /// The new amount, in the listing's currency.
        price: u64,
    },
    /// The draft goes live.
    Publish,
    /// The listing is archived.
    Archive {
        /// Whether it was published until now (so its district's `published` drops).
        was_published: bool,
    },
    /// One more inquiry.
    Inquiry,
}

/// The business rules: what `kind` does to the listing `listing_id`, given its current
/// status (`None` while its `ListingCreated` has not been applied).
///
/// # Errors
/// The [`Rejection`] when the rules refuse the event in that state.
///
/// ```
/// use driftless_listings::{decide, Effect, ListingEventKind, ListingStatus};
///
/// let inquiry = ListingEventKind::InquiryReceived { inquiry_id: "q-1".into() };
/// assert_eq!(decide("l-1", Some(ListingStatus::Published), &inquiry), Ok(Effect::Inquiry));
/// let refused = decide("l-1", Some(ListingStatus::Draft), &inquiry).map_err(|r| r.to_string());
/// assert_eq!(refused, Err("listing l-1 is draft, not published, so it cannot receive inquiries".to_owned()));
/// ```
pub fn decide<'e>(
    listing_id: &str,
    status: Option<ListingStatus>,
    kind: &'e ListingEventKind,
) -> Result<Effect<'e>, Rejection> {
    use ListingStatus::{Archived, Draft, Published};
    let id = || listing_id.to_owned();
    match (kind, status) {
        (ListingEventKind::ListingCreated { title, price, district }, None) => {
            Ok(Effect::Create { title, price: *price, district })
        }
        (ListingEventKind::ListingCreated { .. }, Some(_)) => {
            Err(Rejection::AlreadyExists { listing_id: id() })
        }
        (_, None) => Err(Rejection::Missing { listing_id: id() }),
        (ListingEventKind::ListingPriceChanged { .. }, Some(Archived)) => {
            Err(Rejection::PriceOfArchived { listing_id: id() })
        }
        (ListingEventKind::ListingPriceChanged { price }, Some(_)) => {
            Ok(Effect::ChangePrice { price: *price })
        }
        (ListingEventKind::ListingPublished, Some(Draft)) => Ok(Effect::Publish),
        (ListingEventKind::ListingPublished, Some(status)) => {
            Err(Rejection::NotDraft { listing_id: id(), status })
        }
        (ListingEventKind::ListingArchived, Some(Archived)) => {
            Err(Rejection::AlreadyArchived { listing_id: id() })
        }
        (ListingEventKind::ListingArchived, Some(status)) => {
            Ok(Effect::Archive { was_published: status == Published })
        }
        (ListingEventKind::InquiryReceived { .. }, Some(Published)) => Ok(Effect::Inquiry),
        (ListingEventKind::InquiryReceived { .. }, Some(status)) => {
            Err(Rejection::NotPublished { listing_id: id(), status })
        }
    }
}

impl Effect<'_> {
    /// Applies the effect to a listing's card (`None` before `Create`), returning the new
    /// card.
    #[must_use]
    pub fn apply_to_card(&self, listing_id: &str, card: Option<ListingCard>) -> Option<ListingCard> {
        if let Effect::Create { title, price, district } = *self {
            return Some(ListingCard {
                listing_id: listing_id.to_owned(),
                title: title.to_owned(),
                price: price.amount,
                currency: price.currency,
                district: district.to_owned(),
                status: ListingStatus::Draft,
                inquiries: 0,
                version: 1,
            });
        }
        let mut card = card?;
        match *self {
            Effect::Create { .. } => {}
            Effect::ChangePrice { price } => card.price = price,
            Effect::Publish => card.status = ListingStatus::Published,
            Effect::Archive { .. } => card.status = ListingStatus::Archived,
            Effect::Inquiry => card.inquiries = card.inquiries.saturating_add(1),
        }
        card.version = card.version.saturating_add(1);
        Some(card)
    }

    /// Applies the effect to the listing's district figures.
    pub fn apply_to_stats(&self, stats: &mut DistrictStats) {
        match *self {
            Effect::Create { .. } => stats.listings = stats.listings.saturating_add(1),
            Effect::ChangePrice { .. } | Effect::Archive { was_published: false } => {}
            Effect::Publish => stats.published = stats.published.saturating_add(1),
            Effect::Archive { was_published: true } => stats.published = stats.published.saturating_sub(1),
            Effect::Inquiry => stats.inquiries = stats.inquiries.saturating_add(1),
        }
    }

    /// Whether the effect changes the district figures at all.
    #[must_use]
    pub fn touches_stats(&self) -> bool {
        !matches!(self, Effect::ChangePrice { .. } | Effect::Archive { was_published: false })
    }

    /// The listing's status after the effect, given the one before.
    #[must_use]
    pub fn status_after(&self, before: ListingStatus) -> ListingStatus {
        match self {
            Effect::Create { .. } => ListingStatus::Draft,
            Effect::Publish => ListingStatus::Published,
            Effect::Archive { .. } => ListingStatus::Archived,
            Effect::ChangePrice { .. } | Effect::Inquiry => before,
        }
    }
}
