//! `driftless query`: the rows of a read model, in ascending key order.

use crate::config::ReadModel;
use crate::db::{self, ListingEngine};
use crate::error::CliError;
use crate::live::Live;
use crate::out::{count, Align, Out, Table};
use driftless::{ReadAnswer, ReadRepository, TableDef, ViewKey, ViewValue};
use driftless_listings::{
    DistrictStats, LeaderboardRow, ListingCard, DISTRICT_LEADERBOARD, DISTRICT_STATS, LISTING_CARD,
};
use std::path::Path;

/// A row that can be printed. Its JSON form is its serde form, which has exactly the
/// contract's fields, in the contract's order (checked by a unit test against the
/// domain's `to_json`).
pub trait Row {
    /// The table's columns.
    fn columns() -> Vec<(&'static str, Align)>;
    /// The row's cells.
    fn cells(&self) -> Vec<String>;
}

impl Row for ListingCard {
    fn columns() -> Vec<(&'static str, Align)> {
        vec![
            ("listing_id", Align::Left),
            ("title", Align::Left),
            ("price", Align::Right),
            ("currency", Align::Left),
            ("district", Align::Left),
            ("status", Align::Left),
            ("inquiries", Align::Right),
            ("version", Align::Right),
        ]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.listing_id.clone(),
            self.title.clone(),
            count(self.price),
            self.currency.to_string(),
            self.district.clone(),
            self.status.to_string(),
            count(self.inquiries),
            count(self.version),
        ]
    }
}

impl Row for DistrictStats {
    fn columns() -> Vec<(&'static str, Align)> {
        vec![
            ("district", Align::Left),
            ("listings", Align::Right),
            ("published", Align::Right),
            ("inquiries", Align::Right),
        ]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.district.clone(), count(self.listings), count(self.published), count(self.inquiries)]
    }
}

impl Row for LeaderboardRow {
    fn columns() -> Vec<(&'static str, Align)> {
        vec![
            ("rank", Align::Right),
            ("district", Align::Left),
            ("inquiries", Align::Right),
            ("listings", Align::Right),
            ("published", Align::Right),
        ]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            count(self.rank),
            self.district.clone(),
            count(self.inquiries),
            count(self.listings),
            count(self.published),
        ]
    }
}

/// Opens a read model for reading, or says it is switched off.
pub fn ready<K: ViewKey, V: ViewValue>(
    engine: &ListingEngine,
    def: &TableDef<K, V>,
) -> Result<ReadRepository<K, V>, CliError> {
    match engine.read(def)? {
        ReadAnswer::Ready(repo) => Ok(repo),
        ReadAnswer::UseSourceOfTruth { read_model, since } => {
            Err(CliError::SwitchedOff { read_model, since: crate::out::utc(since) })
        }
    }
}

/// A table of `rows`.
pub fn table_of<R: Row>(rows: &[R], indent: usize) -> Table {
    let columns = R::columns();
    let mut table = Table::new(&columns).indent(indent);
    for row in rows {
        table.row(row.cells());
    }
    table
}

fn print<K: ViewKey, V: ViewValue + Row>(
    engine: &ListingEngine,
    def: &TableDef<K, V>,
    key: Option<K>,
    key_text: Option<&str>,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let repo = ready(engine, def)?;
    if let Some(key) = key {
        let row = repo.get(&key)?.ok_or_else(|| CliError::NotFound {
            read_model: def.name().to_string(),
            key: key_text.unwrap_or_default().to_string(),
        })?;
        if json {
            out.json(&row)?;
        } else {
            out.table(&table_of(std::slice::from_ref(&row), 0))?;
        }
        return Ok(());
    }
    if json {
        for row in repo.iter()? {
            let (_, row) = row?;
            out.json(&row)?;
        }
        return Ok(());
    }
    let rows = repo.iter()?.map(|r| r.map(|(_, v)| v)).collect::<Result<Vec<V>, _>>()?;
    if rows.is_empty() {
        out.line(format!("{} has no rows", def.name()))?;
    } else {
        out.table(&table_of(&rows, 0))?;
    }
    Ok(())
}

/// `driftless query`.
pub fn run(
    db_path: &Path,
    read_model: &str,
    key: Option<&str>,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let read_model = ReadModel::parse(read_model, &ReadModel::ALL, "the read model")?;
    let engine = match db::open_or_live(db_path)? {
        db::Source::Local(engine) => engine,
        db::Source::Live(live) => {
            return match read_model {
                ReadModel::ListingCard => print_live::<ListingCard>(&live, &LISTING_CARD, key, json, out),
                ReadModel::DistrictStats => {
                    print_live::<DistrictStats>(&live, &DISTRICT_STATS, key, json, out)
                }
                ReadModel::DistrictLeaderboard => {
                    if let Some(text) = key {
                        rank_of(text)?;
                    }
                    print_live::<LeaderboardRow>(&live, &DISTRICT_LEADERBOARD, key, json, out)
                }
            };
        }
    };
    let owned = key.map(str::to_string);
    match read_model {
        ReadModel::ListingCard => print(&engine, &LISTING_CARD, owned, key, json, out),
        ReadModel::DistrictStats => print(&engine, &DISTRICT_STATS, owned, key, json, out),
        ReadModel::DistrictLeaderboard => {
            let rank = key.map(rank_of).transpose()?;
            print(&engine, &DISTRICT_LEADERBOARD, rank, key, json, out)
        }
    }
}

/// A `district_leaderboard` key: a rank.
fn rank_of(text: &str) -> Result<u64, CliError> {
    text.parse::<u64>().map_err(|_| {
        CliError::Usage(format!(
            "the key of district_leaderboard is a rank, a whole number from 1, not {text:?}"
        ))
    })
}

/// As [`print`], with the rows asked of the process serving the database.
fn print_live<V: ViewValue + Row + serde::Serialize>(
    live: &Live,
    def: &TableDef<impl ViewKey, V>,
    key: Option<&str>,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let name = def.name();
    let rows: Vec<V> = match key {
        Some(key) => {
            let row = live
                .row::<V>(name, key)?
                .ok_or_else(|| CliError::NotFound { read_model: name.to_string(), key: key.to_string() })?;
            vec![row]
        }
        None => live.rows(name)?,
    };
    if json {
        for row in &rows {
            out.json(row)?;
        }
    } else if rows.is_empty() {
        out.line(format!("{name} has no rows"))?;
    } else {
        out.table(&table_of(&rows, 0))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftless_listings::{Currency, ListingStatus};

    /// The serde form printed by `query --json` is the contract's row.
    #[test]
    fn serde_rows_are_the_contract_rows() -> Result<(), serde_json::Error> {
        let card = ListingCard {
            listing_id: "l-1".into(),
            title: "Loft".into(),
            price: 5,
            currency: Currency::EUR,
            district: "Mitte".into(),
            status: ListingStatus::Published,
            inquiries: 2,
            version: 4,
        };
        assert_eq!(serde_json::to_value(&card)?, card.to_json());
        let stats = DistrictStats { district: "Mitte".into(), listings: 3, published: 1, inquiries: 9 };
        assert_eq!(serde_json::to_value(&stats)?, stats.to_json());
        let row =
            LeaderboardRow { rank: 1, district: "Mitte".into(), inquiries: 9, listings: 3, published: 1 };
        assert_eq!(serde_json::to_value(&row)?, row.to_json());
        assert_eq!(
            serde_json::to_string(&card)?,
            r#"{"listing_id":"l-1","title":"Loft","price":5,"currency":"EUR","district":"Mitte","status":"published","inquiries":2,"version":4}"#
        );
        Ok(())
    }
}
