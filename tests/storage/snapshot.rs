//! `Store::snapshot`: reads that see one moment of the file.

use super::support::{fast_options, prepare_all, projectors, Faults, Op, TestResult};
use driftless_domain::Upcasters;
use driftless_domain::{codec, Timestamp};
use driftless_storage::StoreWriter;

#[test]
fn a_snapshot_reads_the_journal_and_the_rows_as_they_were_when_it_was_taken() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = StoreWriter::open(dir.path().join("snap.redb"), fast_options())?;
    let registry = store.register(projectors(&Faults::default())?, &[], Upcasters::new())?;
    let first = [Op::new("e1", "k", 1, 5), Op::new("e2", "k", 2, 7)];
    store.project(&registry, &prepare_all(&first)?, Timestamp(10))?;

    let snapshot = store.snapshot()?;
    store.project(&registry, &prepare_all(&[Op::new("e3", "k", 3, 100)])?, Timestamp(20))?;
    store.file_aggregates()?;

    let sum = |row: Option<Vec<u8>>| -> Result<Option<i64>, codec::CodecError> {
        row.map(|bytes| codec::decode::<i64>(&bytes)).transpose()
    };
    ensure_eq!(sum(snapshot.raw_row("sums", b"k")?)?, Some(12), "the row in the snapshot");
    ensure_eq!(sum(store.raw_row("sums", b"k")?)?, Some(112), "the row now");
    let positions = |entries: Vec<driftless_storage::JournalEntry>| -> Vec<u64> {
        entries.into_iter().map(|e| e.position).collect()
    };
    ensure_eq!(positions(snapshot.journal_for_aggregate("k")?), vec![1, 2], "the journal in the snapshot");
    ensure_eq!(positions(store.journal_for_aggregate("k")?), vec![1, 2, 3], "the journal now");
    ensure_eq!(snapshot.raw_row("no_such_table", b"k")?, None, "a table that does not exist");
    Ok(())
}

#[test]
fn a_snapshot_gives_an_aggregates_bodies_filed_or_not_and_reads_many_keys_alike() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = StoreWriter::open(dir.path().join("bodies.redb"), fast_options())?;
    let registry = store.register(projectors(&Faults::default())?, &[], Upcasters::new())?;
    let early: Vec<Op> =
        (0..6).map(|i| Op::new(&format!("a{i}"), if i % 2 == 0 { "k" } else { "j" }, i as u64, 1)).collect();
    store.project(&registry, &prepare_all(&early)?, Timestamp(10))?;
    store.file_aggregates()?;
    // These stay in the journal's unfiled tail: the snapshot must find them there.
    let late = [Op::new("b0", "k", 10, 2), Op::new("b1", "m", 11, 3), Op::new("b2", "k", 12, 4)];
    store.project(&registry, &prepare_all(&late)?, Timestamp(20))?;
    ensure!(store.unfiled_journal_entries() > 0, "the late entries were filed");
    // `m` is only in the unfiled tail.
    ensure_eq!(store.journal_aggregates(10)?, vec!["j", "k", "m"], "the journal's aggregates");
    ensure_eq!(store.journal_aggregates(2)?, vec!["j", "k"], "the first two of them");

    let snapshot = store.snapshot()?;
    let mut bodies = driftless_storage::EventBodies::new();
    for aggregate in ["k", "j", "m", "none", "k"] {
        bodies.clear();
        snapshot.aggregate_bodies(aggregate, &mut bodies)?;
        let want: Vec<Vec<u8>> =
            store.journal_for_aggregate(aggregate)?.into_iter().map(|e| e.body).collect();
        let got: Vec<Vec<u8>> = bodies.iter().map(|(_, body)| body.to_vec()).collect();
        ensure_eq!(got, want, "the bodies of {aggregate}");
        ensure_eq!(bodies.len(), want.len(), "how many bodies {aggregate} has");
        ensure_eq!(bodies.is_empty(), want.is_empty(), "whether {aggregate} has bodies");
    }
    let ids = |aggregate: &str| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let mut bodies = driftless_storage::EventBodies::new();
        snapshot.aggregate_bodies(aggregate, &mut bodies)?;
        Ok(bodies
            .iter()
            .map(|(_, body)| codec::stable_decode::<Op>(body))
            .map(|op| op.map(|op| op.id.unwrap_or_default()))
            .collect::<Result<_, _>>()?)
    };
    ensure_eq!(
        ids("k")?,
        vec!["a0", "a2", "a4", "b0", "b2"],
        "k's events, filed then unfiled, in journal order"
    );

    // A commit after the snapshot is not seen by it, however many reads it has served.
    store.project(&registry, &prepare_all(&[Op::new("c0", "k", 13, 5)])?, Timestamp(30))?;
    ensure_eq!(ids("k")?.len(), 5, "k's events in the snapshot after a commit");
    ensure_eq!(store.journal_for_aggregate("k")?.len(), 6, "k's events now");
    // Reads of two read models through one snapshot each get their own rows.
    let sums = snapshot.raw_row("sums", b"k")?;
    ensure!(sums.is_some(), "no sums row of k");
    ensure_eq!(snapshot.raw_row("no_such_table", b"k")?, None, "a table that does not exist");
    ensure_eq!(snapshot.raw_row("sums", b"k")?, sums, "the sums row of k read again");
    Ok(())
}
