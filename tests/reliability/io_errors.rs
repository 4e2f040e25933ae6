//! I/O errors at every operation: once (a transient EIO) and from then on (a full or dead
//! disk), as a generic error and as ENOSPC.
//!
//! Injection: the engine runs on a [`SimDisk`] (see [`super::disk`]) that fails its N-th
//! mutating operation (`write`, `set_len`, `sync_data`) with [`Fault::FailOnce`] or
//! [`Fault::FailFrom`], the error being `io::Error::other("injected I/O failure …")` or
//! `io::Error::from_raw_os_error(28)` (ENOSPC). Two starting points: an empty disk (the
//! open creates the database) and the bytes of a database that was killed after its first
//! batch (the open repairs it). The life opens an engine, dispatches the remaining batches
//! waiting for each receipt, and shuts down; a reference run counts its operations, and N
//! sweeps all of them, so failures land in the open (creation, repair, registration), in
//! every commit, and in the shutdown (redb's close). A second sweep, from the killed
//! database, uses a 16 KiB page cache, so that redb also writes pages out in the middle of a
//! transaction.
//!
//! What must hold: the first error the user sees (from the open, a receipt or the
//! shutdown) names the failure in its text; after a failed commit the engine is poisoned —
//! a later dispatch is refused with `DispatchError::Poisoned`, the shutdown returns
//! `EngineError::Poisoned` — and nothing panics; a failing close makes the shutdown return
//! the error; a disk that keeps failing is always reported (only a single failed write that
//! redb retried with success may go unreported). Then the same bytes, reopened without
//! faults as a restarted process would find them, hold the fold of exactly the
//! acknowledged batches (or one more, when the failed commit reached the disk before the
//! error), pass redb's integrity check, and after re-delivering the stream hold its fold,
//! every event applied once.

use super::disk::{ErrorKind, Fault, SimDisk};
use super::{no_panic, open_on, open_with_cache, reopen_and_check, small_batches, Found, Life, TestResult};
use driftless::{DispatchBatchError, DispatchError, EngineError, NotCommitted};
use driftless_listings::ListingEvent;
use std::collections::BTreeMap;
use std::time::Instant;

/// Where the first error surfaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Surfaced {
    /// `open_with_backend` returned it.
    Open,
    /// A dispatch was refused as poisoned: the engine's startup (catch-up) failed.
    Startup,
    /// A receipt resolved with `NotCommitted::CommitFailed`.
    Commit,
    /// `shutdown` returned it.
    Shutdown,
    /// Nobody saw an error: redb retried the failed write later, with success.
    Nowhere,
}

fn ensure_names(text: &str, kind: ErrorKind, what: &str) -> TestResult {
    if text.contains(kind.marker()) {
        Ok(())
    } else {
        Err(format!("{what} does not name the failure ({:?}): {text:?}", kind.marker()).into())
    }
}

/// Runs one life on `disk` from batch `from`, checking every error the user sees.
fn life(
    disk: &SimDisk,
    batches: &[Vec<ListingEvent>],
    from: usize,
    kind: ErrorKind,
    cache: Option<usize>,
) -> TestResult<(Life, Surfaced)> {
    let mut life = Life { opened: false, acknowledged: from, dispatched: from };
    let engine = match open_with_cache(disk, cache) {
        Ok(engine) => engine,
        Err(e) => {
            ensure_names(&e.to_string(), kind, "the open's error")?;
            // A database that existed before is still a database.
            life.opened = from > 0;
            return Ok((life, Surfaced::Open));
        }
    };
    life.opened = true;
    let mut surfaced = None;
    for batch in batches.iter().skip(from) {
        let receipt = match engine.dispatch_batch(batch.iter().cloned()) {
            Ok(r) => r,
            Err(DispatchBatchError { error: DispatchError::Poisoned(failure), .. }) => {
                ensure_names(&failure, kind, "the refused dispatch's error")?;
                surfaced = Some(Surfaced::Startup);
                break;
            }
            Err(e) => return Err(format!("a dispatch failed without poisoning: {e}").into()),
        };
        life.dispatched += 1;
        match receipt.wait() {
            Ok(_) => life.acknowledged += 1,
            Err(NotCommitted::CommitFailed(failure)) => {
                ensure_names(&failure, kind, "the receipt's error")?;
                surfaced = Some(Surfaced::Commit);
                break;
            }
            Err(e) => return Err(format!("a receipt resolved with {e}").into()),
        }
    }
    if surfaced.is_some() {
        // Poisoned: every later dispatch is refused, naming the first failure.
        let probe = batches.first().and_then(|b| b.first()).cloned().ok_or("an empty stream")?;
        match engine.dispatch(probe) {
            Err(DispatchError::Poisoned(failure)) => {
                ensure_names(&failure, kind, "a later dispatch's error")?
            }
            Err(e) => return Err(format!("a dispatch after the failure said {e}").into()),
            Ok(_) => return Err("a dispatch after the failure was accepted".into()),
        }
        ensure!(engine.store().poisoned().is_some(), "the store is not poisoned after the failure");
    }
    match engine.shutdown() {
        Ok(()) => {
            ensure!(surfaced.is_none(), "the shutdown of a poisoned engine said Ok");
        }
        Err(EngineError::Poisoned(failure)) => {
            ensure_names(&failure, kind, "the shutdown's error")?;
            surfaced.get_or_insert(Surfaced::Shutdown);
        }
        // The close failed.
        Err(e @ EngineError::Commit(_)) => {
            ensure!(surfaced.is_none(), "a poisoned engine's shutdown said {e}");
            ensure_names(&e.to_string(), kind, "the shutdown's error")?;
            surfaced = Some(Surfaced::Shutdown);
        }
        Err(e) => return Err(format!("the shutdown said {e}").into()),
    }
    Ok((life, surfaced.unwrap_or(Surfaced::Nowhere)))
}

/// The bytes of a database killed (never closed) after its first batch was committed.
fn killed_after_first_batch(batches: &[Vec<ListingEvent>]) -> TestResult<Vec<u8>> {
    let disk = SimDisk::new();
    let engine = open_on(&disk)?;
    engine.dispatch_batch(batches.first().cloned().unwrap_or_default())?.wait()?;
    let image = disk.live_image();
    engine.shutdown()?;
    Ok(image)
}

/// Fails every operation of the life in turn, in both modes, with both errors, from the
/// killed database (and from an empty disk), and checks each case.
fn sweep(cache: Option<usize>, label: &str, from_empty: bool) -> TestResult {
    let started = Instant::now();
    let batches = small_batches();
    let mut starts = vec![("a killed database", killed_after_first_batch(&batches)?, 1)];
    if from_empty {
        starts.insert(0, ("an empty disk", Vec::new(), 0usize));
    }
    let mut cases = 0u64;
    let mut surfaced: BTreeMap<String, u64> = BTreeMap::new();
    let mut found: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut totals = Vec::new();
    for (start, image, from) in &starts {
        let reference = SimDisk::from_image(image.clone(), Fault::None);
        let (done, seen) = life(&reference, &batches, *from, ErrorKind::Generic, cache)?;
        ensure!(
            seen == Surfaced::Nowhere && done.acknowledged == batches.len(),
            "the reference run from {start} stopped: {seen:?}, {done:?}"
        );
        let total = reference.ops();
        totals.push(total);
        for n in 1..=total {
            for kind in [ErrorKind::Generic, ErrorKind::NoSpace] {
                for (mode, fault) in
                    [("once", Fault::FailOnce(n, kind)), ("always", Fault::FailFrom(n, kind))]
                {
                    let case =
                        format!("{label}, {start}: {kind:?} failing {mode} at operation {n} of {total}");
                    let disk = SimDisk::from_image(image.clone(), fault);
                    let (done, seen) = no_panic(&case, || life(&disk, &batches, *from, kind, cache))?;
                    ensure!(disk.fired(), "{case}: the failure never fired");
                    ensure!(
                        seen != Surfaced::Nowhere || mode == "once",
                        "{case}: a disk failing from then on was never reported"
                    );
                    // A restarted process finds what the failed one wrote.
                    let got = no_panic(&case, || reopen_and_check(disk.live_image(), done, &batches))?;
                    if got == Found::NoDatabase {
                        ensure!(seen == Surfaced::Open, "{case}: no database, yet the open succeeded");
                    }
                    *surfaced.entry(format!("{seen:?} ({mode})")).or_default() += 1;
                    *found.entry(got.describe(done)).or_default() += 1;
                    cases += 1;
                }
            }
        }
    }
    println!(
        "I/O errors ({label}): {totals:?} operations (from {}) x 2 \
         errors (generic, ENOSPC) x 2 modes (once, always): {cases} cases in {:.1?}; the error surfaced \
         at {surfaced:?}; a clean reopen found {found:?}",
        starts.iter().map(|(s, ..)| *s).collect::<Vec<_>>().join(", "),
        started.elapsed()
    );
    Ok(())
}

#[test]
fn an_io_error_at_any_operation_is_reported_poisons_and_loses_nothing() -> TestResult {
    sweep(driftless::EngineOptions::default().cache_bytes, "default cache", true)
}

#[test]
fn with_a_tiny_cache_io_errors_inside_transactions_are_reported_too() -> TestResult {
    // A 16 KiB page cache makes redb write pages out while a transaction runs, so failures
    // also hit writes before the commit (and a failed write may be retried by redb, with
    // success). From the killed database only: creating one is the same as above.
    sweep(Some(16 * 1024), "16 KiB cache", false)
}

/// Every event dispatched on its own (one message each), all in flight at once, so that
/// the writer gathers many messages into a commit while it processes them. With a 16 KiB
/// page cache redb writes pages out while events are processed, so failures also land
/// between two messages of one commit. Returns, per receipt, `None` for a commit and the
/// failure's text otherwise; an answer other than a commit or a failed commit is an error.
fn singles_in_flight(disk: &SimDisk, events: &[ListingEvent]) -> TestResult<Option<Vec<Option<String>>>> {
    let Ok(engine) = open_with_cache(disk, Some(16 * 1024)) else { return Ok(None) };
    let mut receipts = Vec::new();
    for event in events {
        match engine.dispatch(event.clone()) {
            Ok(r) => receipts.push(r),
            Err(DispatchError::Poisoned(_)) => break,
            Err(e) => return Err(format!("a dispatch failed without poisoning: {e}").into()),
        }
    }
    let mut answers = Vec::new();
    for receipt in receipts {
        match receipt.wait() {
            Ok(_) => answers.push(None),
            Err(NotCommitted::CommitFailed(failure)) => answers.push(Some(failure)),
            Err(e) => return Err(format!("a receipt resolved with {e}").into()),
        }
    }
    drop(engine.shutdown());
    Ok(Some(answers))
}

#[test]
fn every_message_of_a_failed_commit_is_answered_with_the_failure() -> TestResult {
    let batches = small_batches();
    let image = killed_after_first_batch(&batches)?;
    let events: Vec<ListingEvent> = batches.iter().skip(1).flatten().cloned().collect();
    let reference = SimDisk::from_image(image.clone(), Fault::None);
    let answers = singles_in_flight(&reference, &events)?.ok_or("the reference open failed")?;
    ensure!(answers.iter().all(Option::is_none), "the reference run failed: {answers:?}");
    let mut failed_receipts = 0usize;
    for n in 1..=reference.ops() {
        let case = format!("failing from operation {n} of {}", reference.ops());
        let disk = SimDisk::from_image(image.clone(), Fault::FailFrom(n, ErrorKind::Generic));
        let Some(answers) = no_panic(&case, || singles_in_flight(&disk, &events))? else { continue };
        for failure in answers.iter().flatten() {
            ensure_names(failure, ErrorKind::Generic, &format!("{case}: a receipt's error"))?;
            failed_receipts += 1;
        }
    }
    ensure!(failed_receipts > 0, "no receipt saw a failure");
    Ok(())
}
