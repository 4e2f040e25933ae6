//! Backward compatibility: a database written by an earlier build still opens and reads.
//!
//! `tests/fixtures/listings-v1.redb` is a small sample-domain database in format version 1,
//! committed with the rows it must read back (`listings-v1.expected.json`). A format change
//! that cannot read it fails here. To write both files again (only for a deliberate new
//! fixture, never to make this test pass):
//!
//! ```text
//! DRIFTLESS_WRITE_FIXTURES=1 cargo test -p driftless-tests --test integration listings_v1
//! ```

use super::fixture::{build_at, fixture_events, listing_projectors, TestError, HANDLERS};
use driftless_domain::Upcasters;
use driftless_domain::{PreparedEvent, Timestamp};
use driftless_listings::{ListingEvent, ListingEventKind, ListingModel, DISTRICT_STATS, LISTING_CARD};
use driftless_storage::StoreWriter;
use driftless_storage::{EventOutcome, ReadAnswer, Store, StoreOptions, FORMAT_VERSION};
use serde_json::{json, Value};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn rows_json<V>(
    store: &Store,
    def: &driftless_domain::TableDef<String, V>,
    to_json: fn(&V) -> Value,
) -> Result<Vec<Value>, TestError>
where
    V: driftless_domain::ViewValue,
{
    match store.read(def)? {
        ReadAnswer::Ready(repo) => {
            let mut out = Vec::new();
            for row in repo.iter()? {
                out.push(to_json(&row?.1));
            }
            Ok(out)
        }
        ReadAnswer::UseSourceOfTruth { read_model, .. } => Err(format!("{read_model} is not serving").into()),
    }
}

/// What the fixture must read back as.
fn expected_of(store: &Store) -> Result<Value, TestError> {
    let head = store.journal_head()?;
    let dead: Vec<Value> =
        store.dead_letters(None)?.into_iter().map(|d| json!([d.handler, d.event_id, d.attempts])).collect();
    Ok(json!({
        "format_version": FORMAT_VERSION,
        "journal_head": head,
        "offset_count": store.offset_count()?,
        "dead_letters": dead,
        "listing_card": rows_json(store, &LISTING_CARD, |c| c.to_json())?,
        "district_stats": rows_json(store, &DISTRICT_STATS, |s| s.to_json())?,
    }))
}

fn write_fixture() -> Result<(), TestError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("listings-v1.redb");
    build_at(&path, &fixture_events(200, 5), 50)?;
    // redb's compaction shrinks the file to its pages in use; the format is unchanged.
    {
        let mut db = redb::Database::open(&path)?;
        while db.compact()? {}
    }
    let expected = {
        let store = StoreWriter::open(&path, StoreOptions::default())?;
        expected_of(&store)?
    };
    std::fs::create_dir_all(fixtures())?;
    std::fs::copy(&path, fixtures().join("listings-v1.redb"))?;
    std::fs::write(
        fixtures().join("listings-v1.expected.json"),
        serde_json::to_string_pretty(&expected)? + "\n",
    )?;
    Ok(())
}

#[test]
fn the_listings_v1_fixture_still_opens_and_reads_the_expected_rows() -> Result<(), TestError> {
    if std::env::var_os("DRIFTLESS_WRITE_FIXTURES").is_some() {
        write_fixture()?;
    }
    let committed = std::fs::read(fixtures().join("listings-v1.redb"))?;
    if committed.len() >= 200 * 1024 {
        return Err(format!("the fixture is {} bytes; keep it under 200 KiB", committed.len()).into());
    }
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("listings-v1.expected.json"))?)?;

    // Work on a copy: opening a database may write to it.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("copy.redb");
    std::fs::write(&path, &committed)?;
    let mut store = StoreWriter::open(&path, StoreOptions::default())?;
    let got = expected_of(&store)?;
    if got != expected {
        return Err(format!("the fixture reads back as\n{got:#}\nnot\n{expected:#}").into());
    }

    // The journal is complete and its bodies still decode: refolding them gives the rows.
    let head = store.journal_head()?;
    let journal = store.journal_range(1, usize::MAX)?;
    if journal.len() as u64 != head || journal.iter().zip(1..).any(|(e, p)| e.position != p) {
        return Err(format!("{} journal entries for head {head}", journal.len()).into());
    }
    let mut model = ListingModel::new();
    for entry in &journal {
        model.apply(&PreparedEvent::<ListingEvent>::from_encoded(entry.body.clone())?.event);
    }
    let refolded: Vec<Value> = model.cards().map(|c| c.to_json()).collect();
    if Some(&Value::Array(refolded)) != expected.get("listing_card") {
        return Err("refolding the journal does not give listing_card".into());
    }
    for h in HANDLERS {
        let rec = store.handler_record(h)?.ok_or("a handler record is missing")?;
        if rec.seen != head {
            return Err(format!("{h} has seen {} of {head}", rec.seen).into());
        }
    }
    let scan = store.scan_values()?;
    if !scan.damaged.is_empty() || scan.checked == 0 {
        return Err(format!("the scan: {scan:?}").into());
    }
    if !store.check_integrity()? {
        return Err("the fixture fails redb's integrity check".into());
    }

    // Registering today's projectors needs no rebuild (the schema fingerprints are stable),
    // and the file takes new events and recognises old ones.
    let registry = store.register(listing_projectors(), &[], Upcasters::new())?;
    if !registry.needs_rebuild.is_empty() {
        return Err(format!("the fixture needs rebuilds: {:?}", registry.needs_rebuild).into());
    }
    let old = PreparedEvent::<ListingEvent>::from_encoded(journal.first().ok_or("no journal")?.body.clone())?;
    let new = PreparedEvent::new(ListingEvent::new(
        "compat-listing",
        1_900_000_000_000,
        ListingEventKind::ListingCreated { title: "New".into(), price: 5.into(), district: "Mitte".into() },
    ))?;
    let report = store.project(&registry, &[old, new], Timestamp(1_900_000_000_001))?;
    let outcomes: Vec<&EventOutcome> = report.events.iter().map(|e| &e.outcome).collect();
    if outcomes != [&EventOutcome::Duplicate, &EventOutcome::Applied] {
        return Err(format!("outcomes on the old file: {outcomes:?}").into());
    }
    Ok(())
}
