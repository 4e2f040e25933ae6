//! The two projectors of the sample domain.

use crate::event::ListingEvent;
use crate::model::{
    decide, DistrictStats, Effect, ListingMembership, ListingStatus, Rejection, DISTRICT_LISTINGS,
    DISTRICT_STATS, LISTING_CARD,
};
use driftless_domain::{ApplyError, HandlerName, ProjectionContext, Projector, TableId, Views};

/// The handler name of [`ListingCardProjector`].
pub const LISTING_CARD_HANDLER: &str = "listing_card";
/// The handler name of [`DistrictStatsProjector`].
pub const DISTRICT_STATS_HANDLER: &str = "district_stats";

#[expect(clippy::expect_used, reason = "the names are constants, checked by a unit test")]
fn handler(name: &'static str) -> HandlerName {
    HandlerName::new(name).expect("a constant handler name is valid")
}

fn rejected(rejection: Rejection) -> ApplyError {
    ApplyError::rejected(rejection.to_string())
}

/// Projects every event onto `listing_card`: one card per listing.
#[derive(Debug, Default, Clone, Copy)]
pub struct ListingCardProjector;

impl Projector<ListingEvent> for ListingCardProjector {
    fn handler_name(&self) -> HandlerName {
        handler(LISTING_CARD_HANDLER)
    }

    fn tables(&self) -> Vec<TableId> {
        vec![LISTING_CARD.id()]
    }

    fn apply(
        &self,
        event: &ListingEvent,
        _ctx: &ProjectionContext,
        views: &mut Views<'_>,
    ) -> Result<(), ApplyError> {
        let mut cards = views.table(&LISTING_CARD)?;
        let key = &event.aggregate_id;
        let card = cards.get(key)?;
        let effect = decide(key, card.as_ref().map(|c| c.status), &event.kind).map_err(rejected)?;
        match effect.apply_to_card(key, card) {
            Some(card) => cards.put(key, &card)?,
            None => return Err(rejected(Rejection::Missing { listing_id: key.clone() })),
        }
        Ok(())
    }
}

/// Projects every event onto `district_stats`, keeping each listing's district and status
/// in its own helper table `district_stats_listings`.
#[derive(Debug, Default, Clone, Copy)]
pub struct DistrictStatsProjector;

impl Projector<ListingEvent> for DistrictStatsProjector {
    fn handler_name(&self) -> HandlerName {
        handler(DISTRICT_STATS_HANDLER)
    }

    fn tables(&self) -> Vec<TableId> {
        vec![DISTRICT_STATS.id(), DISTRICT_LISTINGS.id()]
    }

    fn apply(
        &self,
        event: &ListingEvent,
        _ctx: &ProjectionContext,
        views: &mut Views<'_>,
    ) -> Result<(), ApplyError> {
        let key = &event.aggregate_id;
        let membership = views.table(&DISTRICT_LISTINGS)?.get(key)?;
        let effect = decide(key, membership.as_ref().map(|m| m.status), &event.kind).map_err(rejected)?;
        let membership = match (effect, membership) {
            (Effect::Create { district, .. }, _) => {
                ListingMembership { district: district.to_owned(), status: ListingStatus::Draft }
            }
            (_, Some(m)) => m,
            (_, None) => return Err(rejected(Rejection::Missing { listing_id: key.clone() })),
        };
        let after = effect.status_after(membership.status);
        if after != membership.status || matches!(effect, Effect::Create { .. }) {
            let updated = ListingMembership { status: after, ..membership.clone() };
            views.table(&DISTRICT_LISTINGS)?.put(key, &updated)?;
        }
        if effect.touches_stats() {
            let mut stats_table = views.table(&DISTRICT_STATS)?;
            let mut stats = stats_table
                .get(&membership.district)?
                .unwrap_or_else(|| DistrictStats::empty(&membership.district));
            effect.apply_to_stats(&mut stats);
            stats_table.put(&membership.district, &stats)?;
        }
        Ok(())
    }
}

/// Both projectors of the sample domain, ready to register with an engine.
#[must_use]
pub fn projectors() -> Vec<Box<dyn Projector<ListingEvent>>> {
    vec![Box::new(ListingCardProjector), Box::new(DistrictStatsProjector)]
}
