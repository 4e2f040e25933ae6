//! `Store::snapshot`: reads that see one moment of the file.

use super::support::{fast_options, prepare_all, projectors, Faults, Op, TestResult};
use driftless_domain::{codec, Timestamp};
use driftless_storage::Store;

#[test]
fn a_snapshot_reads_the_journal_and_the_rows_as_they_were_when_it_was_taken() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("snap.redb"), fast_options())?;
    let registry = store.register(projectors(&Faults::default())?, &[])?;
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
