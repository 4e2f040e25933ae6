//! # driftless-listings
//!
//! The sample domain of driftless — a property-listings marketplace — and the model of how
//! an application embeds driftless. The CLI (`ingest`, `demo`), the integration tests, the
//! benchmarks and the fuzz targets all use it. Everything here but [`embed`] is pure: no I/O
//! beyond reading a caller's [`BufRead`](std::io::BufRead), no threads, no storage.
//!
//! An embedding application brings four things, and this crate shows each:
//!
//! 1. **An event type** implementing [`driftless_domain::Event`]: [`ListingEvent`].
//! 2. **A way to read events** from wherever the write model publishes them: JSON Lines
//!    here, [`parse_line`] and [`parse_jsonl`].
//! 3. **Read models and the projectors that keep them**: [`LISTING_CARD`] and
//!    [`DISTRICT_STATS`], kept by [`ListingCardProjector`] and [`DistrictStatsProjector`]
//!    (see [`projectors`]).
//! 4. **A reference model** to check them against: [`ListingModel`], the pure fold of the
//!    whole contract, which tests compare the engine with and reconcilers refold listings
//!    with ([`fold_listing`]).
//!
//! ## The events
//!
//! Each line of an event file is one JSON object:
//!
//! | field | type | rule |
//! |---|---|---|
//! | `aggregate_id` | string | required, 1..=128 bytes: the listing id |
//! | `event` | string | required: `ListingCreated`, `ListingPriceChanged`, `ListingPublished`, `ListingArchived` or `InquiryReceived` |
//! | `occurred_at` | integer | required, Unix milliseconds, 0..=2^53-1 |
//! | `payload` | object | required (may be `{}`), fields by event below |
//! | `event_id` | string | optional, 1..=256 bytes; default `"{aggregate_id}:{occurred_at}:{event}"` |
//!
//! | event | payload |
//! |---|---|
//! | `ListingCreated` | `title`: string 1..=200 characters; `price`: integer 0..=2^53-1 (an amount in `VND`) or object `{"amount": integer 0..=2^53-1, "currency": 3 ASCII uppercase letters}`; `district`: string 1..=100 characters |
//! | `ListingPriceChanged` | `price`: integer 0..=2^53-1, the new amount in the listing's currency |
//! | `ListingPublished` | none |
//! | `ListingArchived` | none |
//! | `InquiryReceived` | `inquiry_id`: string 1..=128 bytes |
//!
//! Unknown fields, at the top level, in a payload or in a price object, are ignored
//! (forward compatibility). Anything else — bad JSON, a missing or wrongly typed field, an
//! unknown event name, a value out of range, a price of another shape, a currency that is
//! not 3 ASCII uppercase letters, an empty line — is *malformed*: [`parse_line`] says
//! exactly what is wrong ([`MalformedLine`]), nothing of the line is applied, and
//! ingestion goes on.
//!
//! The event id is always stored in the event: an absent one is derived, so a line with an
//! explicit id equal to the default and a line without one are the same event. A price is
//! parsed into [`Money`] (an amount and a [`Currency`]), so `"price": 5` and
//! `"price": {"amount": 5, "currency": "VND"}` are the same event. The serde form of
//! [`ListingEvent`] is its stable encoding, over which driftless computes the payload
//! hash; it holds the event as parsed and normalised, so key order, white space, ignored
//! fields and the form of a VND price never make two deliveries differ.
//!
//! ## Schema versions
//!
//! This is version 2 of the contract, and of [`ListingEvent`]'s stable encoding
//! (`SCHEMA_VERSION = 2`): version 1 had a bare integer price. A database written under
//! version 1 keeps working: its journal entries are read as [`v1::ListingEventV1`] and
//! upcast with their price in `VND` ([`embed::upcasters`], which [`embed::engine_builder`]
//! registers), and `listing_card`, whose rows gained `currency`, is rebuilt from the
//! journal when the database opens.
//!
//! ## What happens to each event
//!
//! The first well-formed delivery of an event id — applied *or* rejected — fixes its
//! payload. In file order, each well-formed event is, in this order of precedence:
//!
//! 1. a **duplicate** if an event with the same id and the same content was already
//!    *applied* — skipped;
//! 2. a **conflict** if the first delivery of its id had another payload, whether that
//!    delivery was applied or rejected — skipped and reported with the id;
//! 3. **rejected** if the business rules refuse it in the current state — no effect on any
//!    read model, kept as a dead letter with the reason; it was never applied, so a
//!    re-delivery of the same event is tried again;
//! 4. **applied** otherwise.
//!
//! The engine does the first two (it records the first accepted payload of every event id
//! and compares payload hashes); projectors never deduplicate. The rules, shared by every consumer
//! through [`decide`] (a listing is *missing* until its `ListingCreated` is applied):
//!
//! | event | rejected when | `listing_card` | `district_stats[district]` |
//! |---|---|---|---|
//! | `ListingCreated` | listing exists | new row: title, price (amount), currency, district, status `draft`, inquiries 0, version 1 | `listings` += 1 |
//! | `ListingPriceChanged` | missing, or `archived` | price := new amount (currency unchanged); version += 1 | — |
//! | `ListingPublished` | missing, or status is not `draft` | status := `published`; version += 1 | `published` += 1 |
//! | `ListingArchived` | missing, or `archived` | status := `archived`; version += 1 | `published` -= 1 if it was published |
//! | `InquiryReceived` | missing, or status is not `published` | inquiries += 1; version += 1 | `inquiries` += 1 |
//!
//! ## The read models
//!
//! * `listing_card` ([`LISTING_CARD`]), keyed by listing id, rows [`ListingCard`]:
//!   `{"listing_id", "title", "price", "currency", "district", "status", "inquiries", "version"}`
//!   (`price` is the integer amount, `currency` its 3-letter code).
//! * `district_stats` ([`DISTRICT_STATS`]), keyed by district, rows [`DistrictStats`]:
//!   `{"district", "listings", "published", "inquiries"}`.
//! * `district_leaderboard` ([`DISTRICT_LEADERBOARD`]), a *materialized view* rebuilt
//!   periodically from `district_stats` by [`leaderboard`]: districts by inquiries, most
//!   first, ties by name.
//!
//! A projector reaches only the tables it declares, so the district projector cannot read
//! `listing_card` to learn a listing's district and status: it keeps its own copy in a
//! helper table, `district_stats_listings` ([`DISTRICT_LISTINGS`]). Both projectors decide
//! with the same rules over their own state, so they accept and reject exactly the same
//! events, and an event is either applied by both or by neither.
//!
//! ## Example
//!
//! Parse lines and fold them with the reference model:
//!
//! ```
//! use driftless_listings::{parse_line, ListingModel, ListingStatus, Outcome};
//!
//! let lines = [
//!     r#"{"aggregate_id":"listing-1","event":"ListingCreated","occurred_at":1700000000000,
//!        "payload":{"title":"Bright 2-room flat","price":{"amount":420000,"currency":"EUR"},"district":"Neukölln"}}"#,
//!     r#"{"event":"ListingPublished","aggregate_id":"listing-1","occurred_at":1700000000005,"payload":{}}"#,
//!     r#"{"aggregate_id":"listing-1","event":"InquiryReceived","occurred_at":1700000000009,
//!        "payload":{"inquiry_id":"q-1","channel":"web"}}"#,
//!     // The same publication again, this time with its (default) id written out.
//!     r#"{"aggregate_id":"listing-1","event":"ListingPublished","occurred_at":1700000000005,"payload":{},
//!        "event_id":"listing-1:1700000000005:ListingPublished"}"#,
//! ];
//! let mut model = ListingModel::new();
//! let outcomes: Vec<Outcome> = lines
//!     .iter()
//!     .map(|line| parse_line(&line.replace('\n', " ")).map(|event| model.apply(&event)))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(outcomes, [Outcome::Applied, Outcome::Applied, Outcome::Applied, Outcome::Duplicate]);
//!
//! let card = model.card("listing-1").cloned().ok_or("no card")?;
//! assert_eq!((card.status, card.inquiries, card.version), (ListingStatus::Published, 1, 3));
//! assert_eq!(
//!     card.to_json(),
//!     serde_json::json!({"listing_id": "listing-1", "title": "Bright 2-room flat", "price": 420000,
//!         "currency": "EUR", "district": "Neukölln", "status": "published", "inquiries": 1, "version": 3})
//! );
//! let stats = model.district("Neukölln").cloned().ok_or("no stats")?;
//! assert_eq!((stats.listings, stats.published, stats.inquiries), (1, 1, 1));
//!
//! // An inquiry for a listing nobody created is rejected, with the reason.
//! let stray = parse_line(r#"{"aggregate_id":"listing-9","event":"InquiryReceived","occurred_at":1,"payload":{"inquiry_id":"q-2"}}"#)?;
//! assert_eq!(model.apply(&stray).to_string(), "rejected: listing listing-9 does not exist");
//! assert_eq!(
//!     model.summary().to_json(),
//!     serde_json::json!({"lines": 5, "applied": 3, "duplicates": 1, "conflicts": 0, "rejected": 1, "malformed": 0})
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Embedding
//!
//! [`embed`] wires the domain into driftless: [`embed::engine_builder`] registers both
//! projectors and the `district_leaderboard` view, and [`embed::reconcilers`] gives the
//! reconcilers a harness checks the read models with. In short:
//!
//! ```no_run
//! use driftless::reconcile::ReconcileMode;
//! use driftless_listings::embed::{engine_builder, reconcilers};
//! use driftless_listings::{generate_events, GenConfig};
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = engine_builder("listings.redb").open()?;           // projectors + view
//! engine.dispatch_batch(generate_events(GenConfig::default()))?.wait()?; // exactly once
//! engine.refresh_views()?;                                          // the leaderboard
//! let harness = engine.reconciliation().reconcilers(reconcilers(Arc::clone(engine.store()))).build()?;
//! let report = harness.run_once(ReconcileMode::Sampled, None, None)?; // drift check
//! # let _ = report; Ok(()) }
//! ```
//!
//! [`generate`] makes realistic, deterministic streams for demos and tests.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod embed;
mod event;
mod fold;
mod generate;
mod leaderboard;
mod model;
mod parse;
mod projectors;

#[cfg(test)]
mod tests;

pub use embed::{engine_builder, reconcilers};
pub use event::v1;
pub use event::{
    default_event_id, Currency, CurrencyError, ListingEvent, ListingEventKind, Money, MAX_SAFE_INTEGER,
};
pub use fold::{fold_listing, Fold, ListingModel, Outcome, Summary};
pub use generate::{generate, generate_events, GenConfig, GENERATED_START_MILLIS};
pub use leaderboard::{leaderboard, LeaderboardRow, DISTRICT_LEADERBOARD};
pub use model::{
    decide, DistrictStats, Effect, ListingCard, ListingMembership, ListingStatus, Rejection,
    DISTRICT_LISTINGS, DISTRICT_STATS, LISTING_CARD,
};
pub use parse::{
    parse_jsonl, parse_line, parse_object, JsonlError, JsonlLines, LengthUnit, MalformedLine, MAX_LINE_BYTES,
};
pub use projectors::{
    projectors, DistrictStatsProjector, ListingCardProjector, DISTRICT_STATS_HANDLER, LISTING_CARD_HANDLER,
};
