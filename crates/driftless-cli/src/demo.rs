//! `driftless demo`: the whole story on a generated marketplace stream, then the upgrade
//! of a database the previous release wrote.
//!
//! The demo writes only a database it made itself. Its database carries a marker, so a
//! second `driftless demo` on the same path replaces the first one's database; a path
//! holding anything else (a database with ingested data, a file that is not a driftless
//! database) is refused with a sentence saying what to do. The upgrade step writes a copy
//! of the database shipped in `assets/` next to it (`<db>.upgrade.redb`), refusing to
//! replace a file already there, and removes it when the step ends.

use crate::config::{DemoConfig, ReadModel};
use crate::db::{self, CliPager, ListingEngine};
use crate::error::CliError;
use crate::ingest::{ingest_lines, summary_words, Notice};
use crate::ops::{rebuild_handler, tamper};
use crate::out::{count, count_usize, plural, utc, Align, Out};
use crate::query::{ready, table_of};
use crate::reconcile::{report_row, report_table, run_once};
use crate::{progress, status};
use driftless::reconcile::{ReconcileHarness, ReconcileMode};
use driftless::{Clock, EngineOptions, EventOutcome, OpenError, ReadAnswer, SystemClock, Timestamp};
use driftless_listings::{
    generate, parse_line, GenConfig, LeaderboardRow, ListingCard, ListingModel, DISTRICT_LEADERBOARD,
    DISTRICT_STATS, LISTING_CARD,
};
use driftless_storage::{StoreOptions, StoreWriter, FORMAT_VERSION};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The metadata key marking a database the demo made.
const MARKER_KEY: &str = "demo/marker";

/// A small database the previous release wrote: format 1, contract version 1 (see
/// `assets/README.md` for how it was made).
const PREVIOUS_RELEASE_DATABASE: &[u8] = include_bytes!("../assets/format1-listings.redb");

/// A line of the events that database holds, as contract version 1 wrote them: a bare
/// integer price (`assets/format1-listings/a.jsonl`, line 1).
const VERSION_1_LINE: &str = r#"{"aggregate_id": "L1", "event": "ListingCreated", "occurred_at": 1700000000010, "payload": {"title": "Sunny loft", "price": 420000, "district": "Mitte"}}"#;

/// A line of contract version 2: a new listing priced in euros.
const VERSION_2_LINE: &str = r#"{"aggregate_id": "L10", "event": "ListingCreated", "occurred_at": 1700000000900, "payload": {"title": "Penthouse by the park", "price": {"amount": 385000, "currency": "EUR"}, "district": "Mitte"}}"#;

/// What the marker records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DemoMarker {
    seed: u64,
    events: u64,
}

/// A clock that starts where the generated stream ends and runs at the wall clock's pace,
/// so that freshness and commit lags read as if the stream were live.
struct StreamClock {
    offset_ms: u64,
}

impl Clock for StreamClock {
    fn now(&self) -> Timestamp {
        Timestamp(SystemClock.now().0.saturating_sub(self.offset_ms))
    }
}

/// Makes room for the demo's database: nothing there, or an earlier demo's database (which
/// is removed). Returns how the database was found.
fn prepare_database(path: &Path) -> Result<&'static str, CliError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok("new"),
        Err(e) => return Err(CliError::io(format!("could not look at {}", path.display()), e)),
        Ok(meta) if meta.is_dir() => {
            return Err(CliError::Failed(format!(
                "{} is a directory; give the demo a database file with --db",
                path.display()
            )))
        }
        Ok(_) => {}
    }
    let options = driftless_storage::StoreOptions { cache_bytes: Some(16 << 20), ..Default::default() };
    let store = match driftless_storage::StoreWriter::open_upgrading(
        path,
        options,
        &driftless_listings::embed::upcasters(),
    ) {
        Ok(store) => store,
        Err(OpenError::NotDriftless { .. }) => {
            return Err(CliError::Failed(format!(
                "{} exists and is not a driftless database, so the demo leaves it alone; \
                 run `driftless demo --db other.redb` or move it away",
                path.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let marker: Option<DemoMarker> = store.meta_get(MARKER_KEY)?;
    let head = store.journal_head()?;
    drop(store);
    if marker.is_none() && head > 0 {
        return Err(CliError::Failed(format!(
            "the database {} already holds data that the demo did not write; run `driftless demo --db other.redb`, \
             or delete it to let the demo use it",
            path.display()
        )));
    }
    std::fs::remove_file(path).map_err(|e| {
        CliError::io(format!("could not remove the earlier demo database {}", path.display()), e)
    })?;
    Ok("replacing the earlier demo database")
}

/// Notices kept for the story: the first few of each kind, and how many there were.
#[derive(Default)]
struct Notices {
    malformed: Vec<Notice>,
    conflicts: Vec<Notice>,
    rejected: Vec<Notice>,
}

impl Notices {
    const KEEP: usize = 2;

    fn add(&mut self, n: &Notice) {
        let list = match n {
            Notice::Malformed { .. } => &mut self.malformed,
            Notice::Conflict { .. } => &mut self.conflicts,
            Notice::Rejected { .. } => &mut self.rejected,
        };
        if list.len() < Self::KEEP {
            list.push(n.clone());
        }
    }
}

fn heading(out: &mut Out, text: &str) -> Result<(), CliError> {
    out.blank()?;
    out.line(text)?;
    out.flush()
}

fn runs(
    harness: &ReconcileHarness,
    out: &mut Out,
    plan: &[(&str, ReconcileMode)],
) -> Result<Vec<driftless::reconcile::RunReport>, CliError> {
    let mut table = report_table(&[("run", Align::Right)], 2);
    let mut reports = Vec::new();
    for (label, mode) in plan {
        let report = run_once(harness, *mode, None)?;
        for r in &report.read_models {
            let mut cells = vec![(*label).to_string()];
            cells.extend(report_row(r));
            table.row(cells);
        }
        reports.push(report);
    }
    out.table(&table)?;
    out.flush()?;
    Ok(reports)
}

fn listing_state(harness: &ReconcileHarness) -> Result<String, CliError> {
    Ok(harness.health(LISTING_CARD.name())?.state.to_string())
}

/// `driftless demo`.
pub fn run(
    db_path: &Path,
    cfg: DemoConfig,
    metrics: Option<&PrometheusHandle>,
    out: &mut Out,
) -> Result<(), CliError> {
    let started = Instant::now();
    UpgradeCopy::ensure_room(db_path)?;
    let found = prepare_database(db_path)?;
    let gen = GenConfig {
        events: cfg.events,
        listings: cfg.listings,
        districts: cfg.districts,
        seed: cfg.seed,
        redeliveries: 0.02,
        conflicts: 5,
        invalid_lines: 8,
    };
    out.line("driftless demo: a property-listings marketplace, projected exactly once into one redb file")?;
    out.line(format!("  database  {} ({found})", db_path.display()))?;
    out.line(format!(
        "  stream    {} over {} in {} (seed {}), plus about {} re-deliveries, \
         {} conflicting and {} malformed lines",
        plural(cfg.events, "event", "events"),
        plural(cfg.listings, "listing", "listings"),
        plural(cfg.districts, "district", "districts"),
        cfg.seed,
        count_usize(cfg.events / 50),
        gen.conflicts,
        gen.invalid_lines
    ))?;
    out.flush()?;

    // The stream, parsed once, and the reference model's verdict on it.
    let lines = generate(gen);
    let mut model = ListingModel::new();
    let mut last_event_at = 0u64;
    let mut parsed = Vec::with_capacity(lines.len());
    for (n, line) in (1u64..).zip(&lines) {
        let result = parse_line(line);
        match &result {
            Ok(event) => {
                last_event_at = last_event_at.max(event.occurred_at);
                model.apply(event);
            }
            Err(_) => model.record_malformed(),
        }
        parsed.push((n, result));
    }
    drop(lines);
    let now = SystemClock.now().0;
    let clock = Arc::new(StreamClock { offset_ms: now.saturating_sub(last_event_at.saturating_add(1_500)) });
    let engine = db::open(db_path, EngineOptions::default(), Some(clock))?;
    engine.store().meta_update(MARKER_KEY, |_: Option<DemoMarker>| {
        (Some(DemoMarker { seed: cfg.seed, events: cfg.events as u64 }), ())
    })?;

    heading(out, "1. Ingest: every line through the engine, in batches of up to 1,000 events per commit")?;
    let total = parsed.len() as u64;
    let bar = progress::lines(total, "ingesting");
    let mut notices = Notices::default();
    let ingest_started = Instant::now();
    let result = ingest_lines(
        &engine,
        parsed.into_iter().map(|(n, r)| (n, r.map_err(driftless_listings::JsonlError::Malformed))),
        EngineOptions::default().max_batch_events,
        &mut |n| notices.add(n),
        &mut |done| bar.set_position(done),
    );
    bar.finish_and_clear();
    let summary = result?;
    let took = ingest_started.elapsed().as_secs_f64();
    out.line(format!(
        "  {} in {:.2} s ({} lines/s)",
        summary_words(&summary),
        took,
        count((summary.lines as f64 / took.max(1e-9)) as u64)
    ))?;
    out.line("  what the engine said about some of them:")?;
    let mut shown: Vec<&Notice> =
        notices.malformed.iter().chain(&notices.conflicts).chain(&notices.rejected).collect();
    shown.sort_by_key(|n| n.line());
    for n in shown {
        out.line(format!("    {n}"))?;
    }
    check_against_model(&engine, &model, &summary)?;
    out.line(format!(
        "  the reference model (ListingModel) agrees: the same counts, and all {} and {} are equal",
        plural(model.cards().count(), "listing card", "listing cards"),
        plural(model.districts().count(), "district row", "district rows")
    ))?;
    engine.refresh_views()?;

    heading(out, "2. Read models: snapshots that never wait for the writer")?;
    let ranking: Vec<LeaderboardRow> = ready(&engine, &DISTRICT_LEADERBOARD)?
        .iter()?
        .take(5)
        .map(|r| r.map(|(_, row)| row))
        .collect::<Result<_, _>>()?;
    out.line("  district_leaderboard (a materialized view of district_stats), top 5:")?;
    out.table(&table_of(&ranking, 4))?;
    let mut cards: Vec<ListingCard> =
        ready(&engine, &LISTING_CARD)?.iter()?.map(|r| r.map(|(_, c)| c)).collect::<Result<_, _>>()?;
    cards.sort_by(|a, b| b.inquiries.cmp(&a.inquiries).then_with(|| a.listing_id.cmp(&b.listing_id)));
    cards.truncate(3);
    out.line("  listing_card, the 3 most asked-about listings:")?;
    out.table(&table_of(&cards, 4))?;

    heading(out, "3. Freshness (the demo's clock starts where the stream ends, as if it were live)")?;
    out.table(&status::freshness_table(&engine.freshness()?, 2))?;

    heading(out, "4. Reconciliation: re-check the read models against a refold of the journal")?;
    let pager = Arc::new(CliPager::default());
    let harness = db::harness(&engine, pager.clone())?;
    runs(
        &harness,
        out,
        &[("1", ReconcileMode::Sampled), ("2", ReconcileMode::Full), ("3", ReconcileMode::Full)],
    )?;
    out.line(format!(
        "  no drift; after 3 clean runs in a row a read model is promoted (trusted): listing_card is {}",
        listing_state(&harness)?
    ))?;

    let rows = (cfg.listings / 1_000 + 1).max(5).min(model.cards().count());
    heading(
        out,
        &format!("5. Chaos: change {rows} listing_card rows behind the projector's back (valid envelopes, wrong prices)"),
    )?;
    let changed = tamper(&engine, ReadModel::ListingCard, rows, cfg.seed)?;
    for t in &changed {
        out.line(format!("  {}: {} {} -> {}", t.key, t.field, count(t.before), count(t.after)))?;
    }
    out.line("  the drift policy breaches above 0.1 % drifted keys; 2 breaches in a row page and demote")?;
    let reports = runs(&harness, out, &[("4", ReconcileMode::Full), ("5", ReconcileMode::Full)])?;
    if let Some(r) = reports.first().and_then(|run| run.read_model(LISTING_CARD.name())) {
        out.line(format!(
            "  run 4: drift detected in {} keys (a breach), e.g. {}",
            count(r.drifted),
            r.drifted_keys.first().map(|d| format!("{}: {}", d.key, d.reason)).unwrap_or_default()
        ))?;
    }
    let pages = pager.take();
    if pages.is_empty() {
        return Err(CliError::Failed("the second breach did not page; the demo's story is broken".into()));
    }
    for page in &pages {
        out.line(format!("  run 5: the pager was called (it writes to standard error and the log): {page}"))?;
    }
    out.line(format!("  listing_card is {} now, and its kill switch is engaged:", listing_state(&harness)?))?;
    match engine.read(&LISTING_CARD)? {
        ReadAnswer::UseSourceOfTruth { read_model, since } => out.line(format!(
            "  a query of {read_model} answers \"use the source of truth\" since {} (`driftless query` exits with status 3)",
            utc(since)
        ))?,
        ReadAnswer::Ready(_) => {
            return Err(CliError::Failed("the demoted read model still answers queries; the kill switch did not engage".into()))
        }
    }

    heading(out, "6. Rebuild listing_card from the journal, without downtime")?;
    let rebuilt = rebuild_handler(&engine, ReadModel::ListingCard)?;
    out.line(format!(
        "  replayed {} journal entries ({} applied); listing_card is back in {}; kill switch released: {}",
        count(rebuilt.replayed),
        count(rebuilt.applied),
        rebuilt.state,
        if rebuilt.released_kill_switches.is_empty() { "no" } else { "yes" }
    ))?;
    runs(&harness, out, &[("6", ReconcileMode::Full)])?;
    out.line(format!(
        "  clean again; listing_card is {} and must earn promotion with 3 clean runs",
        listing_state(&harness)?
    ))?;
    drop(harness);

    heading(out, "7. Metrics (Prometheus text format): this run's counters and the database's gauges")?;
    status::record_state(&engine)?;
    match metrics {
        Some(handle) => {
            handle.run_upkeep();
            for line in handle.render().lines() {
                out.line(format!("  {line}"))?;
            }
        }
        None => out.line("  (no metrics recorder could be installed in this process)")?,
    }
    engine.shutdown()?;

    heading(out, "8. Upgrade: a database the previous release wrote (format 1, contract version 1)")?;
    upgrade_step(db_path, out)?;

    let db = db_path.display();
    heading(out, "Next commands to try")?;
    for (cmd, what) in [
        (format!("driftless query listing_card --db {db} | head"), "the cards, in key order"),
        (format!("driftless query district_stats Mitte --json --db {db}"), "one row as JSON"),
        (format!("driftless freshness --db {db}"), "how fresh each read model is"),
        (format!("driftless chaos tamper --read-model district_stats --rows 2 --db {db}"), "more chaos"),
        (format!("driftless reconcile --mode full --db {db}"), "find it"),
        (format!("driftless verify --db {db}"), "integrity, checksums and a full reconciliation"),
        (format!("driftless dead-letters --db {db}"), "the events the business rules rejected"),
        (format!("driftless run --db {db}"), "serve: scheduled reconciliation and view refreshes"),
    ] {
        out.line(format!("  {cmd:<75} # {what}"))?;
    }
    out.blank()?;
    out.line(format!("demo finished in {:.1} s", started.elapsed().as_secs_f64()))?;
    Ok(())
}

/// The copy of [`PREVIOUS_RELEASE_DATABASE`] the upgrade step works on, removed when it is
/// dropped (so also when the step fails half-way).
struct UpgradeCopy {
    path: PathBuf,
}

impl UpgradeCopy {
    /// Where the copy for the demo's database at `db_path` goes: `<db>.upgrade.redb`.
    fn path_for(db_path: &Path) -> PathBuf {
        let mut name = db_path.as_os_str().to_owned();
        name.push(".upgrade.redb");
        PathBuf::from(name)
    }

    /// The refusal when something is at the copy's path already.
    fn in_the_way(path: &Path) -> CliError {
        CliError::Failed(format!(
            "{} exists, and the demo writes the previous release's sample database there for its upgrade step; \
             remove it (a demo stopped half-way leaves it behind) or run `driftless demo --db other.redb`",
            path.display()
        ))
    }

    /// Refuses, before the demo starts, when something is at the copy's path already.
    fn ensure_room(db_path: &Path) -> Result<(), CliError> {
        let path = Self::path_for(db_path);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Err(Self::in_the_way(&path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CliError::io(format!("could not look at {}", path.display()), e)),
        }
    }

    /// Writes the copy at `<db>.upgrade.redb`, refusing to replace a file already there.
    fn write(db_path: &Path) -> Result<Self, CliError> {
        let path = Self::path_for(db_path);
        let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Self::in_the_way(&path)),
            Err(e) => return Err(CliError::io(format!("could not create {}", path.display()), e)),
        };
        // From here on the file is the demo's: dropping the guard removes it.
        let copy = Self { path };
        file.write_all(PREVIOUS_RELEASE_DATABASE)
            .and_then(|()| file.sync_all())
            .map_err(|e| CliError::io(format!("could not write {}", copy.path.display()), e))?;
        Ok(copy)
    }

    /// Removes the copy, saying so if that fails (the guard's own attempt on drop then
    /// finds nothing or fails as quietly as it always does).
    fn remove(self) -> Result<(), CliError> {
        std::fs::remove_file(&self.path)
            .map_err(|e| CliError::io(format!("could not remove {}", self.path.display()), e))
    }
}

impl Drop for UpgradeCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The format version of the database at `path`, read without upgrading it.
fn format_of(path: &Path) -> Result<u32, CliError> {
    match StoreWriter::open(path, StoreOptions::default()) {
        Ok(store) => {
            store.close()?;
            Ok(FORMAT_VERSION)
        }
        Err(OpenError::UpgradeRequired { found, .. }) => Ok(found),
        Err(e) => Err(e.into()),
    }
}

/// The outcome of one event line in the contract's words.
fn outcome_words(outcome: &EventOutcome) -> String {
    match outcome {
        EventOutcome::Applied | EventOutcome::Deferred => "applied".into(),
        EventOutcome::Duplicate => "a duplicate".into(),
        EventOutcome::Conflict { .. } => "a conflict".into(),
        EventOutcome::Rejected { reason } => format!("rejected: {reason}"),
        EventOutcome::Refused { reason } => format!("refused: {reason}"),
    }
}

/// Step 8: the previous release's database opened by this one.
fn upgrade_step(db_path: &Path, out: &mut Out) -> Result<(), CliError> {
    let copy = UpgradeCopy::write(db_path)?;
    let before = format_of(&copy.path)?;
    out.line(format!(
        "  {}: a copy of the small database that ships with the CLI, made by the previous release's `driftless ingest`",
        copy.path.display()
    ))?;
    let engine = db::open(&copy.path, EngineOptions::default(), None)?;
    out.line(format!(
        "  format {before} before; opening it, the engine upgraded the file in place ({} journal entries kept) and,",
        count(engine.store().journal_head()?)
    ))?;
    out.line("  as listing_card rows gained `currency`, rebuilt listing_card from the journal through the upcaster")?;
    out.line("  (contract version 1 -> 2: a price without a currency is in VND)")?;
    if engine.kill_switch(LISTING_CARD.name())?.is_some() {
        out.line("  listing_card's kill switch, engaged by the previous release, is still engaged; the demo releases it:")?;
        engine.set_kill_switch(LISTING_CARD.name(), false)?;
    }
    let cards: Vec<ListingCard> =
        ready(&engine, &LISTING_CARD)?.iter()?.map(|r| r.map(|(_, c)| c)).collect::<Result<_, _>>()?;
    let currencies: BTreeSet<String> = cards.iter().map(|c| c.currency.to_string()).collect();
    out.table(&table_of(cards.get(..3).unwrap_or(&cards), 4))?;
    out.line(format!(
        "    ... {} in all, in {}",
        plural(cards.len(), "card", "cards"),
        currencies.into_iter().collect::<Vec<_>>().join(", ")
    ))?;

    for (what, line) in [
        ("a line of contract version 1 that it holds", VERSION_1_LINE),
        ("a new line of version 2, priced in EUR", VERSION_2_LINE),
    ] {
        let event = parse_line(line)
            .map_err(|e| CliError::Failed(format!("the demo's event line is malformed: {e}")))?;
        let report = engine.dispatch(event)?.wait()?;
        out.line(format!("  ingesting {what}: {}", outcome_words(&report.outcome)))?;
        out.line(format!("    {line}"))?;
    }
    let new_card = ready(&engine, &LISTING_CARD)?.get(&"L10".to_string())?;
    out.table(&table_of(new_card.as_slice(), 4))?;
    engine.shutdown()?;
    let after = format_of(&copy.path)?;
    let shown = copy.path.display().to_string();
    copy.remove()?;
    out.line(format!("  format {after} after; {shown} removed"))?;
    out.flush()
}

/// Fails unless the engine's counts and rows equal the reference model's.
fn check_against_model(
    engine: &ListingEngine,
    model: &ListingModel,
    summary: &driftless_listings::Summary,
) -> Result<(), CliError> {
    if *summary != model.summary() {
        return Err(CliError::Failed(format!(
            "the engine's counts ({}) differ from the reference model's ({})",
            summary_words(summary),
            summary_words(&model.summary())
        )));
    }
    let cards = ready(engine, &LISTING_CARD)?;
    let stored = cards.iter()?.collect::<Result<Vec<_>, _>>()?;
    let expected = model.listing_cards();
    if stored.len() != expected.len() || stored.iter().any(|(k, v)| expected.get(k) != Some(v)) {
        return Err(CliError::Failed("the listing cards differ from the reference model's".into()));
    }
    let stats = ready(engine, &DISTRICT_STATS)?;
    let stored = stats.iter()?.collect::<Result<Vec<_>, _>>()?;
    let expected = model.district_stats();
    if stored.len() != expected.len() || stored.iter().any(|(k, v)| expected.get(k) != Some(v)) {
        return Err(CliError::Failed("the district figures differ from the reference model's".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_clock_runs_behind_the_wall_clock_by_its_offset() {
        let clock = StreamClock { offset_ms: 1_000 };
        let wall = SystemClock.now().0;
        let shifted = clock.now().0;
        assert!(shifted + 1_000 <= wall + 5 && shifted + 1_000 + 5_000 >= wall);
    }
}
