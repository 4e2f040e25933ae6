//! Catch-up of a new handler, rebuilds (after a rename, under an open snapshot) and the kill
//! switch, at the storage level.

use super::support::{
    fast_options, prepare_all, projectors, Faults, Op, Sum, Tables, TestError, TestResult, COUNT, HANDLERS,
    LOG, SUM, SUMS,
};
use driftless_domain::Upcasters;
use driftless_domain::{codec, Projector, Timestamp};
use driftless_storage::StoreWriter;
use driftless_storage::{EventOutcome, HandlerOutcome, KillSwitch, ReadAnswer, Registry};
use std::collections::BTreeSet;
use std::sync::Arc;

/// `n` events over five keys, starting at id number `from`; every seventh fails for `log`
/// and every eleventh for `sum`.
fn events(from: u64, n: u64) -> Vec<Op> {
    (from..from + n)
        .map(|i| {
            let op =
                Op::new(&format!("e{i}"), &format!("k{}", i % 5), i, i64::try_from(i % 9).unwrap_or(0) - 3);
            match (i % 7 == 0, i % 11 == 0) {
                (true, true) => op.failing(&[LOG, SUM]),
                (true, false) => op.failing(&[LOG]),
                (false, true) => op.failing(&[SUM]),
                (false, false) => op,
            }
        })
        .collect()
}

/// The tables that `handlers` give over `ops` when each applies every event it does not
/// fail on, once, in order.
fn fold(ops: &[Op], handlers: &[&str]) -> Tables {
    let mut t = Tables::default();
    let mut seen = BTreeSet::new();
    for op in ops {
        let id = op.id.clone().unwrap_or_default();
        if !seen.insert(id.clone()) {
            continue;
        }
        for h in handlers {
            if !op.fails_for(h) {
                t.apply(h, &id, op);
            }
        }
    }
    t
}

fn outcome_of(report: &driftless_storage::EventReport, handler: usize) -> Option<HandlerOutcome> {
    report.handlers.iter().find(|(i, _)| *i == handler).map(|(_, o)| o.clone())
}

fn index(registry: &Registry<Op>, name: &str) -> Result<usize, TestError> {
    registry.handler_index(name).ok_or_else(|| format!("no handler {name}").into())
}

#[test]
fn a_handler_registered_later_catches_up_to_the_others() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = StoreWriter::open(dir.path().join("catch.redb"), fast_options())?;
    let faults = Faults::default();
    let mut first_two = projectors(&faults)?;
    first_two.truncate(2);
    let early = store.register(first_two, &[], Upcasters::new())?;
    let before = events(0, 60);
    for (n, chunk) in before.chunks(13).enumerate() {
        store.project(&early, &prepare_all(chunk)?, Timestamp(100 + n as u64))?;
    }
    // Re-deliveries too: they must not reach the journal twice for the late handler.
    store.project(&early, &prepare_all(before.get(..20).unwrap_or_default())?, Timestamp(150))?;

    let registry = store.register(projectors(&faults)?, &[], Upcasters::new())?;
    ensure!(registry.needs_rebuild.is_empty(), "a new handler with a new table needs no rebuild");
    let log = index(&registry, LOG)?;
    ensure!(store.behind(&registry, log)?, "the new handler is not behind");

    // While it is behind, live events are deferred for it and applied by the others.
    let live = events(60, 10);
    let report = store.project(&registry, &prepare_all(&live)?, Timestamp(200))?;
    for r in &report.events {
        ensure_eq!(outcome_of(r, log), Some(HandlerOutcome::Deferred), "log's outcome for {}", r.event_id);
    }
    ensure!(Tables::read(&store)?.logs.is_empty(), "log wrote while behind");

    let replay = store.catch_up(&registry, log, &|| Timestamp(300))?;
    ensure!(!store.behind(&registry, log)?, "still behind after catching up");
    let all: Vec<Op> = before.iter().chain(&live).cloned().collect();
    ensure_eq!(Tables::read(&store)?, fold(&all, &HANDLERS), "tables after catching up");
    // Every journal entry is replayed: an event that some handler failed was journaled at
    // each delivery, so the log handler meets (and fails) e0 twice but applies e11 once.
    let journal = store.journal_range(1, usize::MAX)?;
    ensure_eq!(replay.replayed, journal.len() as u64, "entries replayed");
    ensure_eq!(journal.len() as u64, store.journal_head()?, "journal entries");
    let fails = |id: &str| all.iter().any(|op| op.id.as_deref() == Some(id) && op.fails_for(LOG));
    let mut failed = 0u64;
    for entry in &journal {
        let op: Op = codec::stable_decode(&entry.body)?;
        failed += u64::from(fails(driftless_domain::Event::event_id(&op).as_str()));
    }
    let applied = all.iter().filter(|op| !op.fails_for(LOG)).count() as u64;
    ensure_eq!(replay.applied, applied, "events applied by the catch-up");
    ensure_eq!(replay.dead_lettered, failed, "failed attempts during the catch-up");
    let e0 = store.dead_letter(LOG, "e0")?.ok_or("no dead letter of e0")?;
    ensure_eq!(e0.attempts, 2, "attempts of e0, journaled twice");
    for op in &all {
        let id = op.id.clone().unwrap_or_default();
        let offset = store.offset(&id, LOG)?;
        ensure_eq!(
            offset.map(|o| o.applied_at),
            (!op.fails_for(LOG)).then_some(Timestamp(300)),
            "log's offset of {id}"
        );
        ensure_eq!(store.dead_letter(LOG, &id)?.is_some(), op.fails_for(LOG), "log's dead letter of {id}");
        // The others' offsets were not disturbed by the late handler.
        ensure!(store.offset(&id, COUNT)?.is_some(), "count lost its offset of {id}");
    }

    // Caught up, it applies live events again, and a second catch-up has nothing to do.
    let more = events(70, 5);
    let report = store.project(&registry, &prepare_all(&more)?, Timestamp(400))?;
    ensure!(
        report.events.iter().all(|r| outcome_of(r, log) != Some(HandlerOutcome::Deferred)),
        "log is still deferred: {report:?}"
    );
    ensure_eq!(store.catch_up(&registry, log, &|| Timestamp(500))?.replayed, 0, "a second catch-up");
    let all: Vec<Op> = all.into_iter().chain(more).collect();
    ensure_eq!(Tables::read(&store)?, fold(&all, &HANDLERS), "tables at the end");
    Ok(())
}

fn renamed_projectors(faults: &Faults) -> Result<Vec<Arc<dyn Projector<Op>>>, TestError> {
    let mut ps = projectors(faults)?;
    if let Some(first) = ps.first_mut() {
        *first = Arc::new(Sum::named("sum_v2", faults)?);
    }
    Ok(ps)
}

#[test]
fn a_renamed_handler_needs_a_rebuild_which_gives_the_right_table() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rename.redb");
    let faults = Faults::default();
    let ops = events(0, 50);
    {
        let store = StoreWriter::open(&path, fast_options())?;
        let registry = store.register(projectors(&faults)?, &[], Upcasters::new())?;
        store.project(&registry, &prepare_all(&ops)?, Timestamp(100))?;
    }
    let store = StoreWriter::open(&path, fast_options())?;
    let registry = store.register(renamed_projectors(&faults)?, &[], Upcasters::new())?;
    let names: Vec<&str> = registry.needs_rebuild.iter().map(|h| h.as_str()).collect();
    ensure_eq!(names, vec!["sum_v2"], "handlers needing a rebuild");
    let sum = index(&registry, "sum_v2")?;

    // Until rebuilt, the renamed handler does not write into the table it inherited.
    let live = events(50, 5);
    let report = store.project(&registry, &prepare_all(&live)?, Timestamp(150))?;
    ensure!(
        report.events.iter().all(|r| outcome_of(r, sum) == Some(HandlerOutcome::Deferred)),
        "the renamed handler projected before its rebuild: {report:?}"
    );
    ensure_eq!(Tables::read(&store)?.sums, fold(&ops, &[SUM]).sums, "the inherited table before the rebuild");

    let mut calls = Vec::new();
    let replay = store.rebuild(&registry, sum, Timestamp(200), &mut |done, head| calls.push((done, head)))?;
    let head = store.journal_head()?;
    ensure_eq!(calls.last().copied(), Some((head, head)), "the last progress report");
    ensure_eq!(replay.replayed, head, "entries replayed");
    let all: Vec<Op> = ops.iter().chain(&live).cloned().collect();
    ensure_eq!(Tables::read(&store)?, fold(&all, &HANDLERS), "tables after the rebuild");
    for op in &all {
        let id = op.id.clone().unwrap_or_default();
        ensure_eq!(store.offset(&id, "sum_v2")?.is_some(), !op.fails_for(SUM), "sum_v2's offset of {id}");
        ensure_eq!(
            store.dead_letter("sum_v2", &id)?.is_some(),
            op.fails_for(SUM),
            "sum_v2's dead letter of {id}"
        );
    }
    let owner = store.read_model_records()?.into_iter().find(|(n, _)| n == "sums").map(|(_, r)| r.owner);
    ensure_eq!(owner.as_deref(), Some("sum_v2"), "the owner of sums after the rebuild");
    ensure!(!store.behind(&registry, sum)?, "behind after the rebuild");

    drop(registry);
    drop(store);
    let store = StoreWriter::open(&path, fast_options())?;
    let registry = store.register(renamed_projectors(&faults)?, &[], Upcasters::new())?;
    ensure!(registry.needs_rebuild.is_empty(), "still needs a rebuild: {:?}", registry.needs_rebuild);
    let more = events(55, 5);
    let report = store.project(&registry, &prepare_all(&more)?, Timestamp(300))?;
    ensure!(
        report.events.iter().all(|r| r.outcome == EventOutcome::Applied),
        "after the rebuild: {report:?}"
    );
    let all: Vec<Op> = all.into_iter().chain(more).collect();
    ensure_eq!(Tables::read(&store)?, fold(&all, &HANDLERS), "tables after reopening");
    Ok(())
}

#[test]
fn a_rebuild_under_an_open_snapshot_leaves_the_snapshot_alone() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = StoreWriter::open(dir.path().join("snap.redb"), fast_options())?;
    let registry = store.register(projectors(&Faults::default())?, &[], Upcasters::new())?;
    let ops = events(0, 40);
    store.project(&registry, &prepare_all(&ops)?, Timestamp(100))?;
    let right = fold(&ops, &HANDLERS).sums;

    // Drift the table behind the projector's back: one wrong row, one extra, one missing.
    store.tamper_row("sums", b"k0", Some(&codec::encode(&999i64)?))?;
    store.tamper_row("sums", b"zz", Some(&codec::encode(&1i64)?))?;
    store.tamper_row("sums", b"k1", None)?;
    let ReadAnswer::Ready(snapshot) = store.read(&SUMS)? else { return Err("sums is not serving".into()) };
    ensure_eq!(snapshot.get(&"k0".to_string())?, Some(999), "the drifted row");

    let sum = index(&registry, SUM)?;
    store.rebuild(&registry, sum, Timestamp(200), &mut |_, _| {})?;

    // The snapshot opened before the rebuild still sees the old rows...
    ensure_eq!(snapshot.get(&"k0".to_string())?, Some(999), "k0 in the old snapshot");
    ensure_eq!(snapshot.get(&"zz".to_string())?, Some(1), "zz in the old snapshot");
    ensure_eq!(snapshot.get(&"k1".to_string())?, None, "k1 in the old snapshot");
    ensure_eq!(snapshot.len()?, right.len() as u64, "rows in the old snapshot");
    // ...and a new read sees the rebuilt table.
    ensure_eq!(Tables::read(&store)?.sums, right, "sums after the rebuild");
    ensure_eq!(Tables::read(&store)?, fold(&ops, &HANDLERS), "every table after the rebuild");
    Ok(())
}

#[test]
fn the_kill_switch_pauses_serves_the_source_of_truth_and_survives_a_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kill.redb");
    let faults = Faults::default();
    let [b0, b1, b2, b3] = [events(0, 10), events(10, 10), events(20, 10), events(30, 10)];
    let switch = KillSwitch { engaged_at: Timestamp(77), pause_projection: true };
    {
        let store = StoreWriter::open(&path, fast_options())?;
        let registry = store.register(projectors(&faults)?, &[], Upcasters::new())?;
        let sum = index(&registry, SUM)?;
        store.project(&registry, &prepare_all(&b0)?, Timestamp(100))?;
        store.set_kill_switch("sums", Some(switch))?;
        match store.read(&SUMS)? {
            ReadAnswer::UseSourceOfTruth { read_model, since } => {
                ensure_eq!((read_model.as_str(), since), ("sums", Timestamp(77)), "the answer");
            }
            ReadAnswer::Ready(_) => return Err("sums serves with its kill switch engaged".into()),
        }
        let report = store.project(&registry, &prepare_all(&b1)?, Timestamp(200))?;
        for r in &report.events {
            ensure_eq!(
                outcome_of(r, sum),
                Some(HandlerOutcome::Deferred),
                "sum's outcome for {}",
                r.event_id
            );
        }
        ensure_eq!(store.catch_up(&registry, sum, &|| Timestamp(250))?.replayed, 0, "catch-up while paused");
        ensure!(store.handler_record(SUM)?.is_some_and(|r| r.paused), "sum is not recorded as paused");
    }
    let store = StoreWriter::open(&path, fast_options())?;
    let registry = store.register(projectors(&faults)?, &[], Upcasters::new())?;
    let sum = index(&registry, SUM)?;
    ensure_eq!(store.kill_switch("sums")?, Some(switch), "the kill switch after reopening");
    ensure!(matches!(store.read(&SUMS)?, ReadAnswer::UseSourceOfTruth { .. }), "sums serves after reopening");
    let report = store.project(&registry, &prepare_all(&b2)?, Timestamp(300))?;
    ensure!(
        report.events.iter().all(|r| outcome_of(r, sum) == Some(HandlerOutcome::Deferred)),
        "sum projected while paused after reopening"
    );

    store.set_kill_switch("sums", None)?;
    let stale = Tables::read(&store)?;
    ensure_eq!(stale.sums, fold(&b0, &[SUM]).sums, "sums right after the release");
    // Released but behind: still deferred until it catches up.
    let report = store.project(&registry, &prepare_all(&b3)?, Timestamp(400))?;
    ensure!(
        report.events.iter().all(|r| outcome_of(r, sum) == Some(HandlerOutcome::Deferred)),
        "sum projected live before catching up"
    );
    store.catch_up(&registry, sum, &|| Timestamp(500))?;
    let all: Vec<Op> = [b0, b1, b2, b3].concat();
    ensure_eq!(Tables::read(&store)?, fold(&all, &HANDLERS), "tables after the release and catch-up");
    ensure!(!store.behind(&registry, sum)?, "behind after catching up");

    drop(registry);
    drop(store);
    let store = StoreWriter::open(&path, fast_options())?;
    ensure_eq!(store.kill_switch("sums")?, None, "the released kill switch after reopening");
    ensure_eq!(Tables::read(&store)?, fold(&all, &HANDLERS), "tables after reopening");
    Ok(())
}

#[test]
fn a_kill_switch_without_pause_keeps_projecting_and_pausing_needs_the_journal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = StoreWriter::open(dir.path().join("switch.redb"), fast_options())?;
    let registry = store.register(projectors(&Faults::default())?, &[], Upcasters::new())?;
    let count = index(&registry, COUNT)?;
    let switch = KillSwitch { engaged_at: Timestamp(5), pause_projection: false };
    store.set_kill_switch("counts", Some(switch))?;
    ensure!(
        matches!(store.read(&super::support::COUNTS)?, ReadAnswer::UseSourceOfTruth { .. }),
        "counts serves with its kill switch engaged"
    );
    let ops = events(1, 6);
    let report = store.project(&registry, &prepare_all(&ops)?, Timestamp(10))?;
    ensure!(
        report.events.iter().all(|r| outcome_of(r, count) != Some(HandlerOutcome::Deferred)),
        "count was paused by a kill switch that does not pause: {report:?}"
    );
    store.set_kill_switch("counts", None)?;
    ensure_eq!(Tables::read(&store)?, fold(&ops, &HANDLERS), "tables after the release");
    match store.set_kill_switch("nope", Some(switch)) {
        Err(driftless_storage::CommitError::UnknownReadModel(name)) => ensure_eq!(name, "nope", "the name"),
        other => return Err(format!("a kill switch of an unknown read model: {other:?}").into()),
    }

    // Without a journal there is nothing to catch up from: pausing and rebuilding refuse.
    let options = driftless_storage::StoreOptions { journal: false, ..fast_options() };
    let bare = StoreWriter::open(dir.path().join("bare.redb"), options)?;
    let registry = bare.register(projectors(&Faults::default())?, &[], Upcasters::new())?;
    let paused = KillSwitch { engaged_at: Timestamp(5), pause_projection: true };
    ensure!(
        matches!(bare.set_kill_switch("sums", Some(paused)), Err(driftless_storage::CommitError::NoJournal)),
        "pausing without a journal"
    );
    ensure!(
        matches!(
            bare.rebuild(&registry, index(&registry, SUM)?, Timestamp(6), &mut |_, _| {}),
            Err(driftless_storage::CommitError::NoJournal)
        ),
        "rebuilding without a journal"
    );
    Ok(())
}

#[test]
fn a_rebuild_applies_an_event_journaled_twice_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let faults = Faults::default();
    let store = StoreWriter::open(dir.path().join("twice.redb"), fast_options())?;
    let registry = store.register(projectors(&faults)?, &[], Upcasters::new())?;
    let sum = index(&registry, SUM)?;
    let x = Op::new("x", "k0", 1_000, 7).failing(&HANDLERS);
    let y = Op::new("y", "k0", 1_001, 5);
    // Every handler fails on x: it is journaled, and nobody applies it.
    store.project(&registry, &prepare_all(&[x.clone(), y])?, Timestamp(10))?;
    ensure!(store.offset("x", SUM)?.is_none(), "sum applied x while failing");
    // Healed, the re-delivery is journaled again and applied by every handler.
    faults.set_healed(true);
    let report = store.project(&registry, &prepare_all(std::slice::from_ref(&x))?, Timestamp(20))?;
    let positions: Vec<_> = report.events.iter().map(|e| e.position).collect();
    ensure_eq!(positions, vec![Some(3)], "the re-delivery's journal position");
    let healed = Tables::read(&store)?;
    ensure_eq!(healed.sums.get("k0"), Some(&12), "sum of k0 before the rebuild");

    let applied_at = |id: &str| -> Result<Option<Timestamp>, TestError> {
        Ok(store.offset(id, SUM)?.map(|o| o.applied_at))
    };
    ensure_eq!((applied_at("x")?, applied_at("y")?), (Some(Timestamp(20)), Some(Timestamp(10))), "offsets");

    // The rebuild meets x twice: it applies the first entry and skips the second. The
    // offsets it applies again keep the time they were first applied at.
    for round in 0..2 {
        let r = store.rebuild(&registry, sum, Timestamp(30 + round), &mut |_, _| {})?;
        ensure_eq!((r.replayed, r.applied, r.dead_lettered), (3, 2, 0), "rebuild {round} of sum, healed");
        ensure_eq!(Tables::read(&store)?, healed, "tables after rebuild {round} of sum, healed");
        ensure_eq!(
            (applied_at("x")?, applied_at("y")?),
            (Some(Timestamp(20)), Some(Timestamp(10))),
            "offsets after rebuild {round}"
        );
        ensure!(store.dead_letters(Some(SUM))?.is_empty(), "dead letters of sum after rebuild {round}");
    }

    // Failing again, the rebuild dead-letters x at both entries and keeps the others' marks.
    faults.set_healed(false);
    let r = store.rebuild(&registry, sum, Timestamp(40), &mut |_, _| {})?;
    ensure_eq!((r.replayed, r.applied, r.dead_lettered), (3, 1, 2), "rebuild of sum, failing");
    let mut want = healed.clone();
    want.sums.insert("k0".into(), 5);
    ensure_eq!(Tables::read(&store)?, want, "tables after the rebuild of sum, failing");
    ensure!(store.offset("x", SUM)?.is_none(), "sum kept x though it failed");
    ensure!(store.offset("x", COUNT)?.is_some(), "the rebuild of sum touched count's mark");
    let letters: Vec<_> =
        store.dead_letters(Some(SUM))?.into_iter().map(|d| (d.event_id, d.position)).collect();
    ensure_eq!(letters, vec![("x".to_string(), 3)], "dead letters of sum");

    // Healed again: x is applied once more, at its first entry, and as it had no offset
    // before this rebuild, its offset has the rebuild's time.
    faults.set_healed(true);
    let r = store.rebuild(&registry, sum, Timestamp(50), &mut |_, _| {})?;
    ensure_eq!((r.replayed, r.applied, r.dead_lettered), (3, 2, 0), "rebuild of sum, healed again");
    ensure_eq!(Tables::read(&store)?, healed, "tables after the last rebuild");
    ensure_eq!(
        (applied_at("x")?, applied_at("y")?),
        (Some(Timestamp(50)), Some(Timestamp(10))),
        "offsets after the last rebuild"
    );
    ensure_eq!(
        store.offset("y", COUNT)?.map(|o| o.applied_at),
        Some(Timestamp(10)),
        "count's offset of y, through every rebuild of sum"
    );
    Ok(())
}
