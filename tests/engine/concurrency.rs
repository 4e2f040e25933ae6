//! Concurrent producers, re-deliveries, backpressure and a full queue.

use super::{
    ensure_applied_counts, ensure_matches_model, fold, joined, open_gated, open_listings, options,
    same_outcome, stream, wait_until, TestResult,
};
use driftless::{DispatchError, Engine, EngineOptions, EventOutcome, Receipt, WhenFull};
use driftless_listings::{ListingEvent, Outcome};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const PRODUCERS: usize = 4;
const CAPACITY: usize = 4;
/// How many receipts a producer has in flight before it waits on them.
const WINDOW: usize = 8;
/// Every how many events a producer re-delivers an applied event of another producer.
const REDELIVER_EVERY: usize = 5;

/// The producer an aggregate belongs to: every event of a listing goes through one
/// producer, in stream order, so the business rules decide as in the fold.
fn producer_of(event: &ListingEvent) -> usize {
    event.aggregate_id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)))
        % PRODUCERS
}

/// What one producer saw.
#[derive(Default)]
struct Tally {
    resolved: usize,
    redelivered: usize,
}

#[test]
fn concurrent_producers_with_redeliveries_apply_every_event_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = stream(2_000, 200, 8, 11);
    let (model, outcomes) = fold(&events);
    let engine = open_listings(
        &dir.path().join("db.redb"),
        EngineOptions { queue_capacity: CAPACITY, when_full: WhenFull::Block, ..options() },
    )?;
    // Events whose receipt said Applied, by producer: what the others re-deliver.
    let applied: Vec<parking_lot::Mutex<Vec<ListingEvent>>> =
        (0..PRODUCERS).map(|_| parking_lot::Mutex::new(Vec::new())).collect();
    let running = AtomicUsize::new(PRODUCERS);
    let max_queued = AtomicUsize::new(0);
    let samples = AtomicUsize::new(0);

    let tallies: Vec<Tally> = std::thread::scope(|s| -> TestResult<Vec<Tally>> {
        let sampler = s.spawn(|| {
            while running.load(Ordering::SeqCst) > 0 {
                max_queued.fetch_max(engine.queued(), Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
                std::thread::yield_now();
            }
        });
        let handles: Vec<_> = (0..PRODUCERS)
            .map(|me| {
                let (engine, events, outcomes, applied, running) =
                    (&engine, &events, &outcomes, &applied, &running);
                s.spawn(move || -> TestResult<Tally> {
                    let result = produce(me, engine, events, outcomes, applied);
                    running.fetch_sub(1, Ordering::SeqCst);
                    result
                })
            })
            .collect();
        let tallies = handles.into_iter().map(|h| joined(h.join())).collect::<TestResult<Vec<_>>>();
        sampler.join().map_err(|_| "the sampler panicked")?;
        tallies
    })?;

    let resolved: usize = tallies.iter().map(|t| t.resolved).sum();
    let redelivered: usize = tallies.iter().map(|t| t.redelivered).sum();
    ensure_eq!(resolved, events.len() + redelivered, "every receipt resolves");
    ensure!(redelivered >= events.len() / REDELIVER_EVERY / 2, "too few re-deliveries: {redelivered}");
    ensure!(samples.load(Ordering::SeqCst) > 0, "the queue was never sampled");
    let max = max_queued.load(Ordering::SeqCst);
    ensure!(max <= CAPACITY, "the queue held {max} messages, more than its capacity {CAPACITY}");
    ensure_matches_model(&engine, &model)?;
    ensure_applied_counts(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}

/// Dispatches this producer's share of the stream in windows, checking each outcome
/// against the fold, and re-delivers events the other producers already had applied.
fn produce(
    me: usize,
    engine: &Engine<ListingEvent>,
    events: &[ListingEvent],
    outcomes: &[Outcome],
    applied: &[parking_lot::Mutex<Vec<ListingEvent>>],
) -> TestResult<Tally> {
    let own = applied.get(me).ok_or("no such producer")?;
    let mut tally = Tally::default();
    let mut window: Vec<(ListingEvent, &Outcome, Receipt)> = Vec::with_capacity(WINDOW);
    let mine = events.iter().zip(outcomes).filter(|(e, _)| producer_of(e) == me);
    for (n, (event, expected)) in mine.enumerate() {
        window.push((event.clone(), expected, engine.dispatch(event.clone())?));
        if window.len() == WINDOW {
            settle(&mut window, &mut tally, own)?;
        }
        if n % REDELIVER_EVERY == REDELIVER_EVERY - 1 {
            let other = applied.get((me + 1 + n % (PRODUCERS - 1)) % PRODUCERS).ok_or("no such producer")?;
            let again = {
                let pool = other.lock();
                pool.get((n * 7_919) % pool.len().max(1)).cloned()
            };
            if let Some(again) = again {
                let report = engine.dispatch(again.clone())?.wait()?;
                ensure_eq!(report.outcome, EventOutcome::Duplicate, "a re-delivery of {}", again.event_id);
                tally.resolved += 1;
                tally.redelivered += 1;
            }
        }
    }
    settle(&mut window, &mut tally, own)?;
    Ok(tally)
}

fn settle(
    window: &mut Vec<(ListingEvent, &Outcome, Receipt)>,
    tally: &mut Tally,
    applied: &parking_lot::Mutex<Vec<ListingEvent>>,
) -> TestResult {
    for (event, expected, receipt) in window.drain(..) {
        let report = receipt.wait()?;
        ensure!(
            same_outcome(&report.outcome, expected),
            "{}: the engine said {:?}, the fold {expected:?}",
            event.event_id,
            report.outcome
        );
        tally.resolved += 1;
        if report.outcome == EventOutcome::Applied {
            applied.lock().push(event);
        }
    }
    Ok(())
}

#[test]
fn a_full_queue_fails_fast_with_when_full_fail_and_flush_still_waits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = stream(40, 5, 2, 3);
    let (model, outcomes) = fold(&events);
    let (engine, gate) = open_gated(
        &dir.path().join("db.redb"),
        EngineOptions { queue_capacity: 2, when_full: WhenFull::Fail, ..options() },
    )?;
    let mut pending = events.iter().zip(&outcomes);
    let mut receipts = Vec::new();
    let (first, first_outcome) = pending.next().ok_or("an empty stream")?;
    receipts.push((first_outcome, engine.dispatch(first.clone())?));
    gate.wait_entered()?;
    // The writer is stuck in a commit: two messages fit in the queue, the third does not.
    for _ in 0..2 {
        let (event, outcome) = pending.next().ok_or("a short stream")?;
        receipts.push((outcome, engine.dispatch(event.clone())?));
    }
    ensure_eq!(engine.queued(), 2, "messages waiting");
    let (refused, _) = pending.next().ok_or("a short stream")?;
    match engine.dispatch(refused.clone()) {
        Err(DispatchError::QueueFull { capacity }) => ensure_eq!(capacity, 2, "the capacity reported"),
        other => return Err(format!("expected QueueFull, got {other:?}").into()),
    }
    ensure_eq!(engine.queued(), 2, "messages waiting after a refusal");

    // A flush asked for while the queue is full waits for room and then for the commits;
    // it does not report a shutdown.
    let started = AtomicBool::new(false);
    std::thread::scope(|s| -> TestResult {
        let flusher = s.spawn(|| {
            started.store(true, Ordering::SeqCst);
            engine.flush()
        });
        wait_until("the flush is under way", || Ok(started.load(Ordering::SeqCst)))?;
        gate.open()?;
        flusher.join().map_err(|_| "the flusher panicked")??;
        Ok(())
    })?;
    ensure_eq!(engine.queued(), 0, "messages waiting after the flush");
    for (expected, receipt) in receipts {
        let report = receipt.wait()?;
        ensure!(same_outcome(&report.outcome, expected), "{:?} vs {expected:?}", report.outcome);
    }
    // The refused event was not taken: dispatching the rest (it included) gives the fold.
    for (event, expected) in events.iter().zip(&outcomes).skip(3) {
        let report = loop {
            match engine.dispatch(event.clone()) {
                Ok(r) => break r.wait()?,
                Err(DispatchError::QueueFull { .. }) => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        };
        ensure!(same_outcome(&report.outcome, expected), "{:?} vs {expected:?}", report.outcome);
    }
    ensure_matches_model(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}

#[test]
fn the_queue_is_bounded_in_events_as_well_as_in_messages() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = stream(40, 5, 2, 3);
    let (model, outcomes) = fold(&events);
    let (engine, gate) = open_gated(
        &dir.path().join("db.redb"),
        EngineOptions { queue_capacity: 100, queue_events: 5, when_full: WhenFull::Fail, ..options() },
    )?;
    let first = events.first().ok_or("an empty stream")?;
    let mut receipts = vec![engine.dispatch(first.clone())?];
    gate.wait_entered()?;
    // The writer is stuck in a commit. One batch of 3 and two single events fill the 5
    // events of room, though 97 message slots are left.
    let batch = engine.dispatch_batch(events.get(1..4).ok_or("a short stream")?.iter().cloned())?;
    for event in events.get(4..6).ok_or("a short stream")? {
        receipts.push(engine.dispatch(event.clone())?);
    }
    ensure_eq!((engine.queued(), engine.queued_events()), (3, 5), "messages and events waiting");
    let refused = events.get(6).ok_or("a short stream")?;
    match engine.dispatch(refused.clone()) {
        Err(DispatchError::QueueFull { capacity }) => ensure_eq!(capacity, 5, "the capacity reported"),
        other => return Err(format!("expected QueueFull, got {other:?}").into()),
    }
    ensure_eq!(engine.queued_events(), 5, "events waiting after a refusal");
    gate.open()?;
    engine.flush()?;
    ensure_eq!(engine.queued_events(), 0, "events waiting after the flush");
    let mut reports = Vec::new();
    reports.push(receipts.remove(0).wait()?);
    reports.extend(batch.wait()?);
    for receipt in receipts {
        reports.push(receipt.wait()?);
    }
    for (report, expected) in reports.iter().zip(&outcomes) {
        ensure!(same_outcome(&report.outcome, expected), "{:?} vs {expected:?}", report.outcome);
    }
    // A batch larger than the bound is taken when nothing else waits.
    let rest = engine.dispatch_batch(events.iter().skip(6).cloned())?.wait()?;
    for (report, expected) in rest.iter().zip(outcomes.iter().skip(6)) {
        ensure!(same_outcome(&report.outcome, expected), "{:?} vs {expected:?}", report.outcome);
    }
    ensure_matches_model(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_producer_blocked_on_queued_events_goes_on_when_the_writer_takes_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = stream(40, 5, 2, 3);
    let (model, _) = fold(&events);
    let (engine, gate) = open_gated(
        &dir.path().join("db.redb"),
        EngineOptions { queue_capacity: 100, queue_events: 4, when_full: WhenFull::Block, ..options() },
    )?;
    let first = events.first().ok_or("an empty stream")?;
    let head = engine.dispatch(first.clone())?;
    gate.wait_entered()?;
    let waiting = engine.dispatch_batch(events.get(1..5).ok_or("a short stream")?.iter().cloned())?;
    ensure_eq!(engine.queued_events(), 4, "events waiting");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| -> TestResult {
        let producer =
            s.spawn(|| -> Result<Vec<driftless::EventReport>, Box<dyn std::error::Error + Send + Sync>> {
                let reports = engine.dispatch_batch(events.iter().skip(5).cloned())?.wait()?;
                done.store(true, Ordering::SeqCst);
                Ok(reports)
            });
        // The producer cannot queue while the writer holds the first commit.
        std::thread::sleep(std::time::Duration::from_millis(200));
        ensure!(!done.load(Ordering::SeqCst), "the producer went past a full queue");
        ensure_eq!(engine.queued_events(), 4, "events waiting while the producer blocks");
        gate.open()?;
        let reports = producer.join().map_err(|_| "the producer panicked")?.map_err(|e| e.to_string())?;
        ensure_eq!(reports.len(), events.len() - 5, "reports of the blocked batch");
        Ok(())
    })?;
    head.wait()?;
    waiting.wait()?;
    ensure_matches_model(&engine, &model)?;
    engine.shutdown()?;
    Ok(())
}
