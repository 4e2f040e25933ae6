//! Damaged stored values: a flipped byte, a length prefix claiming gigabytes.

use super::support::{
    fast_options, prepare, prepare_all, projectors, Faults, Op, TestError, TestResult, COUNT, LOG, LOGS, SUM,
    SUMS,
};
use driftless_domain::Upcasters;
use driftless_domain::{CodecError, Timestamp};
use driftless_storage::StoreWriter;
use driftless_storage::{EventOutcome, HandlerOutcome, ReadAnswer, ReadError, ReadRepository, Registry};
use std::time::{Duration, Instant};

fn seeded() -> Result<(tempfile::TempDir, StoreWriter, Registry<Op>), TestError> {
    let dir = tempfile::tempdir()?;
    let store = StoreWriter::open(dir.path().join("c.redb"), fast_options())?;
    let registry = store.register(projectors(&Faults::default())?, &[], Upcasters::new())?;
    let events =
        prepare_all(&[Op::new("a", "k0", 1, 5), Op::new("b", "k1", 2, 3), Op::new("c", "k2", 3, 4)])?;
    store.project(&registry, &events, Timestamp(10))?;
    Ok((dir, store, registry))
}

fn ready<K, V>(answer: ReadAnswer<K, V>) -> Result<ReadRepository<K, V>, TestError> {
    match answer {
        ReadAnswer::Ready(repo) => Ok(repo),
        ReadAnswer::UseSourceOfTruth { read_model, .. } => Err(format!("{read_model} is not serving").into()),
    }
}

/// An envelope with a valid checksum around an arbitrary body.
fn envelope(body: &[u8]) -> Result<Vec<u8>, CodecError> {
    driftless_domain::codec::seal(body)
}

#[test]
fn a_flipped_byte_is_a_checksum_error_on_get_iteration_and_scan() -> TestResult {
    let (_dir, store, _registry) = seeded()?;
    let original = store.raw_row("sums", b"k0")?.ok_or("the row of k0 is missing")?;
    ensure!(original.len() > 9, "an envelope is at least 10 bytes: {original:?}");

    // Every byte, flipped in turn, is caught.
    for at in 0..original.len() {
        let mut damaged = original.clone();
        if let Some(b) = damaged.get_mut(at) {
            *b ^= 0x10;
        }
        store.tamper_row("sums", b"k0", Some(&damaged))?;
        let repo = ready(store.read(&SUMS)?)?;
        match repo.get(&"k0".to_string()) {
            Err(ReadError::Codec { table, source }) => {
                ensure_eq!(table, "sums", "the error names the table");
                ensure!(
                    matches!(source, CodecError::Checksum | CodecError::UnknownVersion { .. }),
                    "flipping byte {at} gave {source:?}"
                );
            }
            other => return Err(format!("flipping byte {at} read back as {other:?}").into()),
        }
    }

    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    if let Some(b) = damaged.get_mut(middle) {
        *b ^= 0x01;
    }
    store.tamper_row("sums", b"k0", Some(&damaged))?;
    let repo = ready(store.read(&SUMS)?)?;
    let err = repo.get(&"k0".to_string()).err().ok_or("a damaged row read back fine")?;
    ensure!(matches!(err, ReadError::Codec { source: CodecError::Checksum, .. }), "get: {err:?}");
    let text = err.to_string();
    ensure!(text.contains("sums") && text.contains("checksum"), "an unclear message: {text}");
    ensure_eq!(repo.get(&"k1".to_string())?, Some(3), "an intact row beside it");

    let items: Vec<_> = repo.iter()?.collect();
    ensure_eq!(items.len(), 3, "iteration yields every row");
    let mut bad = 0;
    for item in &items {
        match item {
            Ok((k, _)) => ensure!(k != "k0", "the damaged row iterated as a value"),
            Err(ReadError::Codec { source: CodecError::Checksum, .. }) => bad += 1,
            Err(other) => return Err(format!("iteration: {other:?}").into()),
        }
    }
    ensure_eq!(bad, 1, "damaged rows seen by iteration");

    let scan = store.scan_values()?;
    ensure!(scan.checked >= 3, "the scan checked only {} values", scan.checked);
    ensure_eq!(scan.damaged.len(), 1, "damaged values found by the scan: {:?}", scan.damaged);
    let (table, key, reason) = scan.damaged.first().cloned().ok_or("no damaged value")?;
    ensure_eq!((table.as_str(), key.as_str()), ("rm.sums", "k0"), "the damaged value's place");
    ensure!(reason.contains("checksum"), "the scan's reason: {reason}");
    Ok(())
}

#[test]
fn a_projector_reading_a_damaged_row_dead_letters_the_event() -> TestResult {
    let (_dir, store, registry) = seeded()?;
    let original = store.raw_row("sums", b"k0")?.ok_or("the row of k0 is missing")?;
    let mut damaged = original.clone();
    if let Some(b) = damaged.get_mut(2) {
        *b ^= 0x80;
    }
    store.tamper_row("sums", b"k0", Some(&damaged))?;

    let ev = prepare(Op::new("d", "k0", 4, 10))?;
    let report = store.project(&registry, std::slice::from_ref(&ev), Timestamp(20))?;
    let event = report.events.first().ok_or("no report")?;
    ensure_eq!(event.outcome, EventOutcome::Applied, "count and log still apply it");
    let sum = registry.handler_index(SUM).ok_or("no sum handler")?;
    match event.handlers.get(sum) {
        Some(HandlerOutcome::DeadLettered { reason }) => {
            ensure!(reason.contains("checksum") && reason.contains("sums"), "the reason: {reason}");
        }
        other => return Err(format!("sum's outcome: {other:?}").into()),
    }
    let letter = store.dead_letter(SUM, "d")?.ok_or("no dead letter")?;
    ensure!(letter.reason.contains("checksum"), "the dead letter's reason: {}", letter.reason);
    ensure!(store.offset("d", SUM)?.is_none(), "sum recorded an offset for an event it could not apply");
    ensure!(
        store.offset("d", COUNT)?.is_some() && store.offset("d", LOG)?.is_some(),
        "the others applied it"
    );
    ensure_eq!(store.raw_row("sums", b"k0")?, Some(damaged), "the damaged row was left alone");

    // Repaired, the retry applies it exactly once.
    store.tamper_row("sums", b"k0", Some(&original))?;
    let retried =
        store.retry_dead_letter(&registry, sum, "d", Timestamp(30))?.ok_or("the letter vanished")?;
    ensure_eq!(retried.outcome, EventOutcome::Applied, "the retry");
    ensure_eq!(ready(store.read(&SUMS)?)?.get(&"k0".to_string())?, Some(15), "k0 after the retry");
    ensure!(store.dead_letters(None)?.is_empty(), "dead letters remain");
    ensure!(store.scan_values()?.damaged.is_empty(), "damage remains");
    Ok(())
}

#[test]
fn a_length_prefix_claiming_gigabytes_is_refused_without_allocating() -> TestResult {
    let (_dir, store, registry) = seeded()?;
    // logs rows are Vec<String>. bincode varint: 0xFD then a u64 length.
    let mut huge_vec = vec![0xFDu8];
    huge_vec.extend_from_slice(&(1u64 << 40).to_le_bytes());
    huge_vec.extend_from_slice(b"\x01a");
    let mut huge_string = vec![0x01u8, 0xFD];
    huge_string.extend_from_slice(&(1u64 << 34).to_le_bytes());
    huge_string.extend_from_slice(b"abc");
    let mut huge_u32_string = vec![0x01u8, 0xFC];
    huge_u32_string.extend_from_slice(&u32::MAX.to_le_bytes());
    huge_u32_string.extend_from_slice(b"abc");

    for (name, body) in [("vec", huge_vec), ("string", huge_string), ("u32 string", huge_u32_string)] {
        let bytes = envelope(&body)?;
        store.tamper_row("logs", b"k1", Some(&bytes))?;
        let started = Instant::now();
        let repo = ready(store.read(&LOGS)?)?;
        let got = repo.get(&"k1".to_string());
        ensure!(
            matches!(got, Err(ReadError::Codec { source: CodecError::Decode { .. }, .. })),
            "the {name} length prefix read back as {got:?}"
        );
        let iterated: Vec<_> = repo.iter()?.filter(Result::is_err).collect();
        ensure_eq!(iterated.len(), 1, "iteration over a {name} length prefix");
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "refusing the {name} prefix took {:?}",
            started.elapsed()
        );
    }

    // The projector that reads the row dead-letters the event instead of allocating.
    let ev = prepare(Op::new("e", "k1", 5, 1))?;
    let started = Instant::now();
    let report = store.project(&registry, std::slice::from_ref(&ev), Timestamp(20))?;
    ensure!(started.elapsed() < Duration::from_secs(5), "the projection took {:?}", started.elapsed());
    let log = registry.handler_index(LOG).ok_or("no log handler")?;
    let outcome = report.events.first().and_then(|e| e.handlers.get(log));
    ensure!(
        matches!(outcome, Some(HandlerOutcome::DeadLettered { reason }) if reason.contains("logs")),
        "log's outcome: {outcome:?}"
    );
    Ok(())
}
