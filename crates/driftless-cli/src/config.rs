//! Validated settings: the raw flags of [`crate::args`] turned into typed values, with a
//! one-sentence usage error (exit status 2) for anything clap could not check.

use crate::error::CliError;
use driftless_listings::{DISTRICT_LEADERBOARD, DISTRICT_STATS, LISTING_CARD};

/// A read model of the sample domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadModel {
    /// `listing_card`, keyed by listing id.
    ListingCard,
    /// `district_stats`, keyed by district.
    DistrictStats,
    /// `district_leaderboard`, a materialized view keyed by rank.
    DistrictLeaderboard,
}

impl ReadModel {
    /// Every read model.
    pub const ALL: [Self; 3] = [Self::ListingCard, Self::DistrictStats, Self::DistrictLeaderboard];
    /// The projected read models: those with a reconciler and a handler.
    pub const PROJECTED: [Self; 2] = [Self::ListingCard, Self::DistrictStats];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ListingCard => LISTING_CARD.name(),
            Self::DistrictStats => DISTRICT_STATS.name(),
            Self::DistrictLeaderboard => DISTRICT_LEADERBOARD.name(),
        }
    }

    /// Reads `text` as one of `allowed`.
    pub fn parse(text: &str, allowed: &[Self], what: &str) -> Result<Self, CliError> {
        allowed.iter().copied().find(|rm| rm.name() == text).ok_or_else(|| {
            CliError::Usage(format!("{what} {text:?} is unknown; it must be {}", one_of(allowed)))
        })
    }
}

/// `a, b or c` of the names of `models`.
fn one_of(models: &[ReadModel]) -> String {
    let names: Vec<&str> = models.iter().map(|m| m.name()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => (*last).to_string(),
        None => String::new(),
    }
}

/// A handler of the sample domain: its name is that of its main read model.
pub fn parse_handler(text: &str) -> Result<ReadModel, CliError> {
    ReadModel::parse(text, &ReadModel::PROJECTED, "the handler")
}

/// `ingest` settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `None` for standard input.
    pub file: Option<std::path::PathBuf>,
    /// Events per commit.
    pub batch: usize,
    /// JSON output.
    pub json: bool,
}

/// The engine's default batch size.
pub const DEFAULT_BATCH: usize = 1_000;
/// The largest `--batch` accepted.
pub const MAX_BATCH: usize = 1_000_000;

impl IngestConfig {
    /// Validates `ingest`'s flags.
    pub fn from_args(args: &crate::args::IngestArgs) -> Result<Self, CliError> {
        let batch = args.batch.unwrap_or(DEFAULT_BATCH);
        if !(1..=MAX_BATCH).contains(&batch) {
            return Err(CliError::Usage(format!("--batch must be from 1 to {MAX_BATCH}, not {batch}")));
        }
        let file = match args.file.as_str() {
            "-" => None,
            "" => return Err(CliError::Usage("the file name is empty; give a path or `-`".into())),
            path => Some(std::path::PathBuf::from(path)),
        };
        Ok(Self { file, batch, json: args.json })
    }
}

/// `demo` settings.
#[derive(Debug, Clone, Copy)]
pub struct DemoConfig {
    /// Distinct events.
    pub events: usize,
    /// Listings.
    pub listings: usize,
    /// Districts.
    pub districts: usize,
    /// Seed.
    pub seed: u64,
}

/// The fewest events a demo takes.
pub const MIN_DEMO_EVENTS: usize = 100;
/// The most events a demo takes.
pub const MAX_DEMO_EVENTS: usize = 5_000_000;

impl DemoConfig {
    /// Validates `demo`'s flags: about 20 events per listing, 24 districts (fewer for a
    /// small stream, so that each has a few listings).
    pub fn from_args(args: &crate::args::DemoArgs) -> Result<Self, CliError> {
        if !(MIN_DEMO_EVENTS..=MAX_DEMO_EVENTS).contains(&args.events) {
            return Err(CliError::Usage(format!(
                "--events must be from {MIN_DEMO_EVENTS} to {MAX_DEMO_EVENTS}, not {}",
                args.events
            )));
        }
        let listings = (args.events / 20).max(5);
        let districts = (listings / 5).clamp(1, 24);
        Ok(Self { events: args.events, listings, districts, seed: args.seed })
    }
}

/// `run` settings.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    /// Between view refreshes.
    pub refresh: std::time::Duration,
    /// Where to serve HTTP, if anywhere.
    pub listen: Option<std::net::SocketAddr>,
    /// Whether a non-loopback `listen` address is allowed.
    pub allow_remote: bool,
}

impl RunConfig {
    /// Validates `run`'s flags.
    pub fn from_args(args: &crate::args::RunArgs) -> Result<Self, CliError> {
        if !(1..=86_400).contains(&args.refresh_secs) {
            return Err(CliError::Usage(format!(
                "--refresh-secs must be from 1 to 86400, not {}",
                args.refresh_secs
            )));
        }
        Ok(Self {
            refresh: std::time::Duration::from_secs(args.refresh_secs),
            listen: args.listen,
            allow_remote: args.allow_remote,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_models_are_named_and_refused_in_one_sentence() {
        assert_eq!(ReadModel::parse("listing_card", &ReadModel::ALL, "x").ok(), Some(ReadModel::ListingCard));
        let err =
            ReadModel::parse("cards", &ReadModel::PROJECTED, "the read model").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("the read model \"cards\" is unknown; it must be listing_card or district_stats")
        );
        assert!(parse_handler("district_leaderboard").is_err());
    }

    #[test]
    fn demo_sizes_scale_with_events() {
        let c = DemoConfig::from_args(&crate::args::DemoArgs { events: 50_000, seed: 1 }).ok();
        assert_eq!(c.map(|c| (c.listings, c.districts)), Some((2_500, 24)));
        let small = DemoConfig::from_args(&crate::args::DemoArgs { events: 100, seed: 1 }).ok();
        assert_eq!(small.map(|c| (c.listings, c.districts)), Some((5, 1)));
        assert!(DemoConfig::from_args(&crate::args::DemoArgs { events: 99, seed: 1 }).is_err());
    }
}
