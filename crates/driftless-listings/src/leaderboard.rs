//! The materialized view of the sample domain: districts ranked by inquiries.
//!
//! Unlike the two projected read models, `district_leaderboard` is not kept up to date
//! event by event: a refresh job rebuilds it from `district_stats` on a schedule. This
//! module holds its pure part, the ranking.

use crate::model::DistrictStats;
use driftless_domain::TableDef;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A row of `district_leaderboard`, keyed by rank.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaderboardRow {
    /// 1 for the district with the most inquiries.
    pub rank: u64,
    /// The district.
    pub district: String,
    /// Its inquiries.
    pub inquiries: u64,
    /// Its listings.
    pub listings: u64,
    /// Its published listings.
    pub published: u64,
}

impl LeaderboardRow {
    /// The row as a JSON object with exactly the fields `rank`, `district`, `inquiries`,
    /// `listings` and `published`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut row = Map::new();
        row.insert("rank".into(), Value::from(self.rank));
        row.insert("district".into(), Value::from(self.district.as_str()));
        row.insert("inquiries".into(), Value::from(self.inquiries));
        row.insert("listings".into(), Value::from(self.listings));
        row.insert("published".into(), Value::from(self.published));
        Value::Object(row)
    }
}

/// The `district_leaderboard` materialized view, keyed by rank.
pub const DISTRICT_LEADERBOARD: TableDef<u64, LeaderboardRow> = TableDef::new("district_leaderboard", 1);

/// Ranks districts by inquiries, most first; ties go to the district name in ascending
/// byte order. Ranks start at 1 and are unique.
///
/// ```
/// use driftless_listings::{leaderboard, DistrictStats};
///
/// let stats = [
///     DistrictStats { district: "Mitte".into(), listings: 3, published: 2, inquiries: 4 },
///     DistrictStats { district: "Kreuzberg".into(), listings: 1, published: 1, inquiries: 4 },
///     DistrictStats { district: "Wedding".into(), listings: 5, published: 1, inquiries: 9 },
/// ];
/// let ranked: Vec<_> = leaderboard(stats).into_iter().map(|r| (r.rank, r.district)).collect();
/// assert_eq!(ranked, [(1, "Wedding".to_owned()), (2, "Kreuzberg".to_owned()), (3, "Mitte".to_owned())]);
/// ```
#[must_use]
pub fn leaderboard(stats: impl IntoIterator<Item = DistrictStats>) -> Vec<LeaderboardRow> {
    let mut stats: Vec<DistrictStats> = stats.into_iter().collect();
    stats.sort_by(|a, b| b.inquiries.cmp(&a.inquiries).then_with(|| a.district.cmp(&b.district)));
    (1u64..)
        .zip(stats)
        .map(|(rank, s)| LeaderboardRow {
            rank,
            district: s.district,
            inquiries: s.inquiries,
            listings: s.listings,
            published: s.published,
        })
        .collect()
}
