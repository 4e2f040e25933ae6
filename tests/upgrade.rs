//! Files written by an earlier release are users' data: a file of format 1 opens with this
//! release, upgraded in place, and keeps everything it held.
//!
//! `fixtures/format1/` holds a database the last format-1 release wrote through its own
//! command line, with what that release said it held (`README.md` there tells how it was
//! made). `fixtures/listings-v1.redb` is an older format-1 file of the same domain, with the
//! rows it read back (`listings-v1.expected.json`).

use crate::reliability::disk::{Fault, SimDisk};
use crate::TestResult;
use driftless::reconcile::{health_key, PromotionState, ReadModelHealth};
use driftless::{BuildError, Durability, EngineOptions, EventOutcome, OpenError};
use driftless_listings::embed::{engine_builder, upcasters};
use driftless_listings::{
    parse_line, DistrictStats, ListingCard, ListingEvent, DISTRICT_STATS, LISTING_CARD,
};
use driftless_storage::{Store, StoreOptions, StoreWriter, FORMAT_VERSION};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn format1(name: &str) -> PathBuf {
    fixtures().join("format1").join(name)
}

/// A copy of a fixture database to work on (opening a database writes to it).
fn copy(fixture: &Path, dir: &tempfile::TempDir) -> TestResult<PathBuf> {
    let path = dir.path().join("copy.redb");
    std::fs::copy(fixture, &path)?;
    Ok(path)
}

fn json_lines(path: &Path) -> TestResult<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().filter(|l| !l.is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?)
}

fn options() -> EngineOptions {
    EngineOptions { durability: Durability::Eventual, ..EngineOptions::default() }
}

/// Every row of a read model, read raw (its kill switch may be engaged).
fn raw_rows<V: serde::de::DeserializeOwned>(store: &Store, name: &str) -> TestResult<BTreeMap<String, V>> {
    let mut out = BTreeMap::new();
    for (k, v) in store.raw_rows(name)? {
        out.insert(String::from_utf8(k)?, driftless::codec::decode(&v)?);
    }
    Ok(out)
}

/// The rows the previous release printed, as this release's rows: `listing_card` gained
/// `currency`, `VND` for every price of contract version 1.
fn cards_of(lines: &[Value]) -> TestResult<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for line in lines {
        let mut row = line.as_object().ok_or("a row that is not an object")?.clone();
        row.insert("currency".into(), Value::from("VND"));
        let id = row.get("listing_id").and_then(Value::as_str).ok_or("a row without an id")?.to_owned();
        out.insert(id, Value::Object(row));
    }
    Ok(out)
}

#[test]
fn the_fixtures_of_the_cli_and_the_tests_are_the_same_file() -> TestResult {
    let cli = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/driftless-cli/assets/format1-listings.redb");
    ensure!(std::fs::read(cli)? == std::fs::read(format1("format1.redb"))?, "the two copies differ");
    Ok(())
}

#[test]
fn a_format_1_file_is_refused_without_the_event_type_and_left_as_it_was() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = copy(&format1("format1.redb"), &dir)?;
    match StoreWriter::open(&path, StoreOptions::default()) {
        Err(e @ OpenError::UpgradeRequired { found: 1, .. }) => {
            ensure!(e.to_string().contains("upgrades it in place"), "{e}");
        }
        other => {
            return Err(format!("a format-1 file opened without an upgrade: {:?}", other.map(drop)).into())
        }
    }
    // An engine whose event type cannot read version 1 (no upcaster): the upgrade fails and
    // writes nothing; with the upcaster it then succeeds.
    let refused = driftless::Engine::<ListingEvent>::builder(&path).options(options()).open();
    match refused {
        Err(BuildError::Open(e @ OpenError::UpgradeFailed { from: 1, .. })) => {
            let text = e.to_string();
            ensure!(text.contains("journal entry at position 1"), "{text}");
            ensure!(text.contains("register one from version 1"), "{text}");
        }
        other => return Err(format!("the upgrade without an upcaster: {:?}", other.map(drop)).into()),
    }
    ensure!(
        matches!(StoreWriter::open(&path, StoreOptions::default()), Err(OpenError::UpgradeRequired { .. })),
        "a failed upgrade changed the format"
    );
    engine_builder(&path).options(options()).open()?.shutdown()?;
    StoreWriter::open(&path, StoreOptions::default())?;
    Ok(())
}

#[test]
fn the_format_1_fixture_upgrades_in_place_and_keeps_everything() -> TestResult {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(format1("expected-store.json"))?)?;
    let dir = tempfile::tempdir()?;
    let path = copy(&format1("format1.redb"), &dir)?;
    let engine = engine_builder(&path).options(options()).open()?;
    engine.flush()?;
    let store = engine.store();

    // The journal: every entry, at schema version 1, read as the events of today.
    let journal = store.journal_range(1, usize::MAX)?;
    let want = expected.get("journal").and_then(Value::as_array).ok_or("no journal")?;
    ensure_eq!(journal.len(), want.len(), "journal entries");
    ensure_eq!(store.journal_head()?, want.len() as u64, "journal head");
    for (entry, want) in journal.iter().zip(want) {
        let field = |name: &str| want.get(name).and_then(Value::as_u64).ok_or(format!("no {name}"));
        ensure_eq!(entry.position, field("position")?, "a position");
        ensure_eq!(entry.occurred_at.0, field("occurred_at")?, "occurred_at of {}", entry.position);
        ensure_eq!(entry.accepted_at.0, field("accepted_at")?, "accepted_at of {}", entry.position);
        ensure_eq!(entry.schema_version, 1, "the schema version of {}", entry.position);
        let event = engine.upcasters().decode(entry.schema_version, &entry.body)?;
        ensure_eq!(entry.event_name, event.kind.name(), "the name of {}", entry.position);
        let line = want.get("line").and_then(Value::as_str).ok_or("no line")?;
        ensure_eq!(event, parse_line(line)?, "the event at {}", entry.position);
    }

    // Offsets: every one the old release recorded, with its time and payload hash; and one
    // row more for each id every handler rejected, recorded now.
    let offsets = expected.get("offsets").and_then(Value::as_array).ok_or("no offsets")?;
    let mut applied_ids = BTreeSet::new();
    for o in offsets {
        let text = |name: &str| o.get(name).and_then(Value::as_str).ok_or(format!("no {name}"));
        let (id, handler) = (text("event_id")?, text("handler")?);
        let got = store.offset(id, handler)?.ok_or(format!("no offset of ({id}, {handler})"))?;
        ensure_eq!(Some(got.applied_at.0), o.get("applied_at").and_then(Value::as_u64), "applied_at of {id}");
        ensure_eq!(got.payload_hash.to_hex(), text("payload_hash")?, "payload hash of {id}");
        applied_ids.insert(id.to_owned());
    }
    let letters = json_lines(&format1("dead_letters.jsonl"))?;
    let rejected_only: BTreeSet<&str> = letters
        .iter()
        .filter_map(|l| l.get("event_id").and_then(Value::as_str))
        .filter(|id| !applied_ids.contains(*id))
        .collect();
    ensure_eq!(store.offset_count()?, (applied_ids.len() + rejected_only.len()) as u64, "offset rows");

    // Dead letters, as the old release listed them, now with their schema.
    let mut got_letters = store.dead_letters(None)?;
    got_letters.sort_by(|a, b| (&a.handler, &a.event_id).cmp(&(&b.handler, &b.event_id)));
    ensure_eq!(got_letters.len(), letters.len(), "dead letters");
    for (got, want) in got_letters.iter().zip(&letters) {
        let n = |name: &str| want.get(name).and_then(Value::as_u64);
        let t = |name: &str| want.get(name).and_then(Value::as_str);
        ensure_eq!(Some(got.handler.as_str()), t("handler"), "a dead letter's handler");
        ensure_eq!(Some(got.event_id.as_str()), t("event_id"), "a dead letter's id");
        ensure_eq!(Some(got.reason.as_str()), t("reason"), "the reason of {}", got.event_id);
        ensure_eq!(Some(u64::from(got.attempts)), n("attempts"), "attempts of {}", got.event_id);
        ensure_eq!(Some(got.first_failed_at.0), n("first_failed_at"), "first failure of {}", got.event_id);
        ensure_eq!(Some(got.position), n("position"), "position of {}", got.event_id);
        // The rebuild at open recorded it again, encoded at the current schema version.
        ensure_eq!(got.schema_version, 2, "the schema version of {}", got.event_id);
        ensure!(!got.event_name.is_empty(), "a dead letter without its event's name");
    }

    // Handler records, read-model records with both kill switches, reconciliation health.
    for h in expected.get("handlers").and_then(Value::as_array).ok_or("no handlers")? {
        let name = h.get("name").and_then(Value::as_str).ok_or("a handler without a name")?;
        let rec = store.handler_record(name)?.ok_or(format!("no record of {name}"))?;
        let n = |field: &str| h.get(field).and_then(Value::as_u64);
        ensure_eq!(Some(u64::from(rec.slot)), n("slot"), "slot of {name}");
        ensure_eq!(Some(rec.seen), n("seen"), "progress of {name}");
        ensure_eq!(Some(rec.applied), n("applied"), "applied count of {name}");
        ensure_eq!(Some(rec.dead_letters), n("dead_letters"), "dead letters of {name}");
        ensure_eq!(rec.last_occurred_at.map(|t| t.0), n("last_occurred_at"), "last event of {name}");
        ensure!(!rec.paused, "{name} is paused");
    }
    let records: BTreeMap<String, driftless_storage::ReadModelRecord> =
        store.read_model_records()?.into_iter().collect();
    for rm in expected.get("read_models").and_then(Value::as_array).ok_or("no read models")? {
        let name = rm.get("name").and_then(Value::as_str).ok_or("a read model without a name")?;
        let rec = records.get(name).ok_or(format!("no record of {name}"))?;
        ensure_eq!(Some(rec.owner.as_str()), rm.get("owner").and_then(Value::as_str), "owner of {name}");
        let switch = rm.get("kill_switch").filter(|v| !v.is_null());
        ensure_eq!(
            rec.kill_switch.map(|k| (k.engaged_at.0, k.pause_projection)),
            switch.map(|s| (
                s.get("engaged_at").and_then(Value::as_u64).unwrap_or(0),
                s.get("pause_projection").and_then(Value::as_bool).unwrap_or(true)
            )),
            "kill switch of {name}"
        );
    }
    for h in expected.get("health").and_then(Value::as_array).ok_or("no health")? {
        let rm = h.get("read_model").and_then(Value::as_str).ok_or("a health record without a name")?;
        let got: ReadModelHealth = store.meta_get(&health_key(rm))?.ok_or(format!("no health of {rm}"))?;
        let state: PromotionState = h.get("state").and_then(Value::as_str).ok_or("no state")?.parse()?;
        ensure_eq!(got.state, state, "promotion state of {rm}");
        ensure_eq!(
            Some(u64::from(got.consecutive_clean)),
            h.get("consecutive_clean").and_then(Value::as_u64),
            ""
        );
        ensure_eq!(
            Some(u64::from(got.consecutive_breaches)),
            h.get("consecutive_breaches").and_then(Value::as_u64),
            ""
        );
    }

    // The rows: listing_card answers with `currency` (rebuilt through the upcaster);
    // district_stats, rebuilt too (format 1 fingerprinted it by type name), is the fold of
    // the journal: the two rows that release changed behind its projector's back hold the
    // journal's values again (its promotion state stays demoted until a rebuild is asked for
    // on purpose).
    let cards: BTreeMap<String, ListingCard> = raw_rows(store, LISTING_CARD.name())?;
    let cards: BTreeMap<String, Value> = cards.into_iter().map(|(k, c)| (k, c.to_json())).collect();
    ensure_eq!(cards, cards_of(&json_lines(&format1("listing_card.jsonl"))?)?, "listing_card");
    let stats: BTreeMap<String, DistrictStats> = raw_rows(store, DISTRICT_STATS.name())?;
    let stats: Vec<Value> = stats.values().map(DistrictStats::to_json).collect();
    ensure_eq!(stats, json_lines(&format1("district_stats.jsonl"))?, "district_stats");

    // Re-ingesting what that release ingested: duplicates, the rejected lines tried again
    // (and rejected again), the conflicts conflicts — including the payload of `shared-id`
    // that it rejected before applying another: the applied one stands.
    let outcomes = |file: &str| -> TestResult<BTreeMap<&'static str, usize>> {
        let mut counts = BTreeMap::new();
        let mut events = Vec::new();
        for line in std::fs::read_to_string(format1(file))?.lines() {
            match parse_line(line) {
                Ok(e) => events.push(e),
                Err(_) => *counts.entry("malformed").or_insert(0) += 1,
            }
        }
        for report in engine.dispatch_batch(events)?.wait()? {
            let key = match report.outcome {
                EventOutcome::Applied => "applied",
                EventOutcome::Duplicate => "duplicate",
                EventOutcome::Conflict { .. } => "conflict",
                EventOutcome::Rejected { .. } => "rejected",
                EventOutcome::Deferred | EventOutcome::Refused { .. } => "other",
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        Ok(counts)
    };
    ensure_eq!(
        outcomes("a.jsonl")?,
        BTreeMap::from([("conflict", 2), ("duplicate", 28), ("malformed", 1), ("rejected", 1)]),
        "a.jsonl again"
    );
    ensure_eq!(outcomes("b.jsonl")?, BTreeMap::from([("duplicate", 8), ("rejected", 1)]), "b.jsonl again");
    // Contract version 2: the same price with its currency spelled out is the same event;
    // another currency is another payload.
    let line = r#"{"aggregate_id":"L1","event":"ListingCreated","occurred_at":1700000000010,"payload":{"title":"Sunny loft","district":"Mitte","price":"#;
    let same = parse_line(&format!(r#"{line}{{"amount":420000,"currency":"VND"}}}}}}"#))?;
    let other = parse_line(&format!(r#"{line}{{"amount":420000,"currency":"EUR"}}}}}}"#))?;
    ensure_eq!(
        engine.dispatch_and_wait(same)?.outcome,
        EventOutcome::Duplicate,
        "the same price, spelled out"
    );
    ensure!(
        matches!(engine.dispatch_and_wait(other)?.outcome, EventOutcome::Conflict { .. }),
        "another currency"
    );
    engine.shutdown()?;

    // The file is of this format now: it opens without an upgrade.
    let store = StoreWriter::open(&path, StoreOptions::default())?;
    ensure_eq!(store.event_schemas().iter().map(|s| s.version).max(), Some(2), "schema versions");
    ensure_eq!(FORMAT_VERSION, 2, "the format this build writes");
    Ok(())
}

#[test]
fn the_older_format_1_fixture_upgrades_too() -> TestResult {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("listings-v1.expected.json"))?)?;
    let dir = tempfile::tempdir()?;
    let path = copy(&fixtures().join("listings-v1.redb"), &dir)?;
    let engine = engine_builder(&path).options(options()).open()?;
    engine.flush()?;
    let store = engine.store();
    ensure_eq!(Some(store.journal_head()?), expected.get("journal_head").and_then(Value::as_u64), "head");
    let cards: BTreeMap<String, ListingCard> = raw_rows(store, LISTING_CARD.name())?;
    let want = cards_of(expected.get("listing_card").and_then(Value::as_array).ok_or("no cards")?)?;
    let got: BTreeMap<String, Value> = cards.into_iter().map(|(k, c)| (k, c.to_json())).collect();
    ensure_eq!(got, want, "listing_card");
    let stats: BTreeMap<String, DistrictStats> = raw_rows(store, DISTRICT_STATS.name())?;
    let got: Vec<Value> = stats.values().map(DistrictStats::to_json).collect();
    ensure_eq!(Some(&Value::Array(got)), expected.get("district_stats"), "district_stats");
    let letters: Vec<Value> = store
        .dead_letters(None)?
        .into_iter()
        .map(|d| serde_json::json!([d.handler, d.event_id, d.attempts]))
        .collect();
    ensure_eq!(Some(&Value::Array(letters)), expected.get("dead_letters"), "dead letters");
    // Every old event is a duplicate when delivered again.
    let events: Vec<ListingEvent> = store
        .journal_range(1, usize::MAX)?
        .iter()
        .map(|e| upcasters().decode(e.schema_version, &e.body))
        .collect::<Result<_, _>>()?;
    ensure!(!events.is_empty(), "an empty journal");
    let again = engine.dispatch_batch(events)?.wait()?;
    ensure!(
        again.iter().all(|r| matches!(
            r.outcome,
            EventOutcome::Duplicate | EventOutcome::Rejected { .. } | EventOutcome::Conflict { .. }
        )),
        "an old event was applied again"
    );
    engine.shutdown()?;
    // Every value of the upgraded file passes its checksum, and redb's check passes.
    let mut store = StoreWriter::open(&path, StoreOptions::default())?;
    let scan = store.scan_values()?;
    ensure!(scan.damaged.is_empty() && scan.checked > 0, "the scan: {scan:?}");
    ensure!(store.check_integrity()?, "the upgraded file fails redb's integrity check");
    Ok(())
}

#[test]
fn a_power_loss_during_the_upgrade_leaves_format_1_or_format_2_whole() -> TestResult {
    let image = std::fs::read(format1("format1.redb"))?;
    // How many disk operations an upgrade (with the open that follows) takes.
    let clean = SimDisk::from_image(image.clone(), Fault::None);
    engine_builder("unused").options(options()).open_with_backend(clean.clone())?.shutdown()?;
    let total = clean.ops();
    ensure!(total > 3, "the upgrade took {total} operations");
    let (mut old, mut new) = (0, 0);
    for at in 1..=total {
        for seed in [0, 1, 2] {
            let disk = SimDisk::from_image(image.clone(), Fault::CrashAt(at));
            let _ = engine_builder("unused")
                .options(options())
                .open_with_backend(disk.clone())
                .map(|e| e.shutdown());
            let after = SimDisk::from_image(disk.crash_image(seed)?, Fault::None);
            match StoreWriter::open_with_backend(after.clone(), StoreOptions::default()) {
                Err(OpenError::UpgradeRequired { found: 1, .. }) => old += 1,
                Ok(store) => {
                    ensure_eq!(store.journal_head()?, 37, "the journal after a loss at {at}");
                    ensure!(
                        store.event_schemas().iter().all(|s| s.version == 1),
                        "schemas after a loss at {at}"
                    );
                    new += 1;
                }
                Err(e) => {
                    return Err(format!("after a power loss at operation {at} (seed {seed}): {e}").into())
                }
            }
            // Either way, the engine opens it and it holds everything.
            let engine = engine_builder("unused").options(options()).open_with_backend(after)?;
            engine.flush()?;
            ensure_eq!(engine.store().journal_head()?, 37, "the journal after a loss at {at}, reopened");
            ensure_eq!(engine.dead_letters(None)?.len(), 4, "dead letters after a loss at {at}");
            engine.shutdown()?;
        }
    }
    ensure!(old > 0 && new > 0, "losses before and after the upgrade's commit: {old} and {new}");
    Ok(())
}
