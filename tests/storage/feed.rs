//! `Store::project_with`: deliveries pushed one at a time into one transaction.

use super::support::{fast_options, prepare_all, projectors, Faults, Op, Tables, TestResult, LOG, SUM};
use driftless_domain::Upcasters;
use driftless_domain::{EventId, Timestamp};
use driftless_storage::StoreWriter;
use driftless_storage::{CommitError, EventOutcome};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Twelve events over three keys; the fifth fails for `log` and the ninth for `sum`.
fn ops() -> Vec<Op> {
    (0..12u64)
        .map(|i| {
            let op = Op::new(&format!("e{i}"), &format!("k{}", i % 3), i, i64::try_from(i).unwrap_or(0) - 4);
            match i {
                4 => op.failing(&[LOG]),
                8 => op.failing(&[SUM]),
                _ => op,
            }
        })
        .collect()
}

#[test]
fn a_fed_batch_commits_what_the_same_batch_projected_at_once_commits() -> TestResult {
    let faults = Faults::default();
    let (at_once_dir, fed_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let at_once = StoreWriter::open(at_once_dir.path().join("a.redb"), fast_options())?;
    let fed = StoreWriter::open(fed_dir.path().join("f.redb"), fast_options())?;
    let (reg_a, reg_f) = (
        at_once.register(projectors(&faults)?, &[], Upcasters::new())?,
        fed.register(projectors(&faults)?, &[], Upcasters::new())?,
    );
    // The second half delivers the first again, with one conflicting payload.
    let mut all = ops();
    all.extend(ops().into_iter().take(6));
    if let Some(op) = all.last_mut() {
        op.amount += 100;
    }
    let expected = at_once.project(&reg_a, &prepare_all(&all)?, Timestamp(10))?;

    let mut events = prepare_all(&all)?;
    let mut lens = Vec::new();
    let report = fed.project_with(&reg_f, Timestamp(10), 4, |feed| {
        // Shared references copy the ids, mutable ones hand them over: both in one batch.
        let (first, rest) = events.split_at_mut(5);
        for ev in first.iter() {
            feed.push(ev)?;
        }
        lens.push(feed.len());
        for ev in rest.iter_mut() {
            feed.push(ev)?;
        }
        lens.push(feed.len());
        Ok(())
    })?;
    ensure_eq!(lens, vec![5, all.len()], "deliveries counted by the feed");
    ensure_eq!(report, expected, "the fed batch's report");
    ensure!(
        report.events.last().is_some_and(|r| matches!(r.outcome, EventOutcome::Conflict { .. })),
        "the changed payload is not a conflict: {report:?}"
    );
    ensure!(
        events.get(..5).is_some_and(|s| s.iter().all(|e| !e.id.as_str().is_empty()))
            && events.get(5..).is_some_and(|s| s.iter().all(|e| e.id == EventId::default())),
        "ids were not copied from shared references and taken from mutable ones"
    );
    ensure_eq!(Tables::read(&fed)?, Tables::read(&at_once)?, "read models");
    ensure_eq!(fed.journal_range(1, usize::MAX)?, at_once.journal_range(1, usize::MAX)?, "journal");
    Ok(())
}

#[test]
fn a_feed_that_fails_or_panics_writes_nothing_and_leaves_the_store_usable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = StoreWriter::open(dir.path().join("f.redb"), fast_options())?;
    let faults = Faults::default();
    let reg = store.register(projectors(&faults)?, &[], Upcasters::new())?;
    let events = prepare_all(&ops())?;

    let failed = store.project_with(&reg, Timestamp(10), 0, |feed| {
        for ev in &events {
            feed.push(ev)?;
        }
        Err(CommitError::UnknownHandler("stop".into()))
    });
    ensure!(
        matches!(&failed, Err(CommitError::UnknownHandler(s)) if s == "stop"),
        "the feed's own error is not the one returned: {failed:?}"
    );

    let panicked = catch_unwind(AssertUnwindSafe(|| {
        store.project_with(&reg, Timestamp(10), 0, |feed| {
            for ev in &events {
                feed.push(ev)?;
            }
            #[expect(clippy::panic, reason = "the test needs a feed that panics")]
            {
                panic!("the feed's own bug")
            }
        })
    }));
    let message = panicked.err().and_then(|p| p.downcast_ref::<&str>().map(|s| (*s).to_string()));
    ensure_eq!(message.as_deref(), Some("the feed's own bug"), "the feed's panic, passed on as it was");

    ensure!(store.poisoned().is_none(), "a feed's failure poisoned the store");
    ensure_eq!(store.journal_head()?, 0, "journal head after two abandoned batches");
    ensure_eq!(Tables::read(&store)?, Tables::default(), "read models after two abandoned batches");
    ensure!(store.offset("e0", SUM)?.is_none(), "an offset of an abandoned batch");

    let report = store.project(&reg, &events, Timestamp(20))?;
    ensure!(
        report.events.iter().all(|r| !matches!(r.outcome, EventOutcome::Duplicate)),
        "events of the abandoned batches count as applied: {report:?}"
    );
    ensure_eq!(store.journal_head()?, events.len() as u64, "journal head after projecting them");
    Ok(())
}
